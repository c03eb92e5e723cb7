//! Assembling an initramfs, the Root VM's or the guest Linux's: the directory skeleton,
//! `/dev/console`, busybox and its applet links, Lua (the Root VM's only), the built
//! tools and guest files, and our own files from `rootvm/initramfs/` or
//! `rootvm/guest-initramfs/`, written as a gzip'd newc cpio archive ([`super::cpio`])
//! that the same inputs always give byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::builds::Busybox;
use super::cache::{cache_dir, cache_key, commit, fresh_tmp, sha256_file, sha256_hex};
use super::cpio::{Node, Tree};
use super::util::{fmt_size, read_bytes, read_text};
use super::{step, FORMAT_VERSION, STEPS};
use crate::Result;

/// One initramfs to assemble: the Root VM's, or the guest Linux's.
pub(super) struct InitramfsSpec<'a> {
    /// Cache directory prefix and progress name (`initramfs`, `guest-initramfs`).
    pub(super) name: &'a str,
    /// Its step number in the progress messages.
    pub(super) step: usize,
    /// Our own files (`rootvm/initramfs/`, `rootvm/guest-initramfs/`).
    pub(super) overlay_dir: PathBuf,
    /// `/usr/bin/lua`, if it has Lua.
    pub(super) lua: Option<&'a Path>,
}

/// Assembles an initramfs (or finds it cached) and returns the `.cpio.gz`. `extra` are
/// built files to add (the tools, the guest Linux); like the overlay, they can replace
/// applet links.
pub(super) fn build_initramfs(
    spec: &InitramfsSpec<'_>,
    busybox: &Busybox,
    extra: &[crate::tools::InitramfsFile],
) -> Result<PathBuf> {
    let name = spec.name;
    let mut overlay = read_overlay(&spec.overlay_dir)?;
    for f in extra {
        overlay.insert(f.path.to_string(), (f.mode, read_bytes(&f.source)?));
    }
    let links = read_text(&busybox.links)?;
    let mut key_parts = vec![
        FORMAT_VERSION.to_string(),
        name.to_string(),
        sha256_file(&busybox.binary)?,
        links.clone(),
    ];
    if let Some(lua) = spec.lua {
        key_parts.push(sha256_file(lua)?);
    }
    for (path, (mode, data)) in &overlay {
        key_parts.push(format!("{path} {mode:o} {}", sha256_hex(data)));
    }
    let key = cache_key(&key_parts.iter().map(String::as_str).collect::<Vec<_>>());
    let out = cache_dir().join(format!("{name}-{key}"));
    let archive = out.join("initramfs.cpio.gz");
    if archive.is_file() {
        println!("[rootvm] {name}: cached (step {}/{STEPS})", spec.step);
        return Ok(archive);
    }
    step(spec.step, &format!("assembling the {name}"));

    let mut tree = Tree::default();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "var/log",
    ] {
        tree.dir(dir, 0o755);
    }
    tree.dir("root", 0o700);
    tree.dir("tmp", 0o1777);
    // The kernel opens /dev/console for init before anything is mounted; devtmpfs is
    // mounted over /dev later by rcS. Written as a cpio entry, so no root or mknod needed.
    tree.node("dev/console", Node::CharDev { major: 5, minor: 1 }, 0o600);
    tree.file("bin/busybox", read_bytes(&busybox.binary)?, 0o755);
    if let Some(lua) = spec.lua {
        tree.file("usr/bin/lua", read_bytes(lua)?, 0o755);
    }
    // The kernel runs /init from an initramfs; busybox picks the applet from argv[0].
    tree.node("init", Node::Symlink("/bin/busybox".into()), 0o777);
    for link in links.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = link.trim_start_matches('/');
        if path != "bin/busybox" {
            tree.node(path, Node::Symlink("/bin/busybox".into()), 0o777);
        }
    }
    // Our own files last, so they replace any applet link of the same name.
    for (path, (mode, data)) in overlay {
        tree.file(&path, data, mode);
    }

    let tmp = fresh_tmp(&out)?;
    let staged = tmp.join("initramfs.cpio.gz");
    let file = fs::File::create(&staged)
        .map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
    // mtime 0 in the gzip header (and in every cpio entry): the same inputs give the
    // same bytes.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(std::io::BufWriter::new(file), flate2::Compression::best());
    tree.write_cpio(&mut gz)
        .and_then(|()| gz.finish()?.flush())
        .map_err(|e| format!("writing {}: {e}", staged.display()))?;
    commit(&tmp, &out)?;
    println!("[rootvm] {name} assembled: {}", fmt_size(&archive));
    Ok(archive)
}

/// Reads every file under `rootvm/initramfs/` as (path in the archive -> (mode, data)).
/// Modes come from the execute bit only, which is all git keeps.
fn read_overlay(dir: &Path) -> Result<BTreeMap<String, (u32, Vec<u8>)>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) -> Result<()> {
        let entries =
            fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let path = entry.path();
            let meta =
                fs::metadata(&path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
            if meta.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("walk stays under root")
                .to_str()
                .ok_or_else(|| format!("{}: file names must be UTF-8", path.display()))?
                .to_string();
            let mode = if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
            {
                0o755
            } else {
                0o644
            };
            out.insert(rel, (mode, read_bytes(&path)?));
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    if !out.contains_key("etc/inittab") {
        return Err(format!("{} has no etc/inittab", dir.display()));
    }
    Ok(out)
}
