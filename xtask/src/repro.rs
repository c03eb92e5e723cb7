//! `cargo xtask repro [--full] [--keep]`: shows that the image is reproducible by
//! building it twice, in two copies of this tree, and comparing the SHA-256 of the two
//! images and of their bills of materials.
//!
//! The two builds differ in everything that should not matter: the checkout's path
//! (`<tmp>/diosix-repro-<pid>/a/src` and `.../second-bb/src`, of different lengths),
//! the cargo target directory (`CARGO_TARGET_DIR`), the time they run at and the time
//! zone (`TZ`). They share what should matter: the sources (the files git knows,
//! tracked or not yet added, as they are in the working tree), the toolchains, and
//! `SOURCE_DATE_EPOCH` and the source revision (read once, here, from this checkout;
//! the copies have no `.git`). Outside a git checkout every file but `target/` is
//! copied. Each build is this xtask run as `build` with
//! `DIOSIX_WORKSPACE` naming its copy, so it builds exactly as `cargo xtask build` does
//! there: the image it checks is the one users build.
//!
//! - Default (cheap, in `cargo xtask test`): Linux, busybox and Lua come from the
//!   cache (`$DIOSIX_CACHE`, built first if missing), linked into each build's own
//!   empty cache; everything else (the hypervisor and `dsx` in a fresh target
//!   directory, `diosix.ko`, `diosix-workloads`, both initramfs archives, the payload
//!   and the bill of materials) is built twice. About two minutes.
//! - `--full`: each build starts from an empty cache of its own, so Linux, busybox and
//!   Lua are built twice as well (the pinned tarballs are taken from `$DIOSIX_SOURCES`,
//!   else from the cache when it has them, else fetched: they are verified against
//!   `rootvm/sources.manifest` either way). Some 20 minutes on 2 cores.
//!
//! The copies are removed afterwards unless the builds differ or `--keep` is given.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::rootvm::{self, sha256_file};
use crate::{process, sbom, workspace_root, Result, WORKSPACE_ENV};

/// The two builds: (directory name, `TZ`). The names differ in length so that a path
/// that leaks in shifts everything after it.
const BUILDS: [(&str, &str); 2] = [("a", "UTC"), ("second-bb", "Pacific/Chatham")];

/// Cache entries the cheap mode shares with the builds: the slow ones, built from the
/// pinned tarballs alone.
const SHARED_IN_CHEAP_MODE: &[&str] = &["linux-", "busybox-", "lua-"];

/// How the two builds get the Root VM's slow parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Linux, busybox and Lua from the shared cache.
    Cheap,
    /// Everything from scratch, in two empty caches.
    Full,
}

/// One build's outcome.
struct Built {
    dir: PathBuf,
    image_sha: String,
    sbom_sha: String,
    took: Duration,
}

/// `cargo xtask repro`.
pub fn cmd_repro(args: &[String]) -> Result<()> {
    let mut mode = Mode::Cheap;
    let mut keep = false;
    for a in args {
        match a.as_str() {
            "--full" => mode = Mode::Full,
            "--keep" => keep = true,
            other => {
                return Err(format!(
                    "repro: unknown option `{other}` (usage: cargo xtask repro [--full] [--keep])"
                ))
            }
        }
    }
    crate::setup::ensure_all()?;
    run(mode, keep)
}

/// The cheap mode, as `cargo xtask test` runs it.
pub fn ci() -> Result<()> {
    run(Mode::Cheap, false)
}

fn run(mode: Mode, keep: bool) -> Result<()> {
    let started = Instant::now();
    let epoch = sbom::source_date_epoch()?;
    let revision = sbom::source_revision();
    let shared = rootvm::cache_dir();
    if mode == Mode::Cheap {
        println!("repro: Linux, busybox and Lua from {}", shared.display());
        rootvm::build_linux_root_vm()?;
    }
    let base = std::env::temp_dir().join(format!("diosix-repro-{}", std::process::id()));
    if base.exists() {
        fs::remove_dir_all(&base).map_err(|e| format!("cannot remove {}: {e}", base.display()))?;
    }
    let files = source_files()?;
    let mut built = Vec::new();
    for (n, (name, tz)) in BUILDS.iter().enumerate() {
        let dir = base.join(name);
        let result = build_once(n + 1, &dir, tz, mode, &files, epoch, revision.as_deref());
        match result {
            Ok(b) => built.push(b),
            Err(e) => {
                return Err(format!(
                    "repro: build {} failed (kept in {}): {e}",
                    n + 1,
                    base.display()
                ))
            }
        }
    }
    let (a, b) = (&built[0], &built[1]);
    let mode_name = match mode {
        Mode::Cheap => "cached Linux, busybox and Lua",
        Mode::Full => "full, from empty caches",
    };
    println!("repro: {mode_name}, SOURCE_DATE_EPOCH={epoch:?}, revision {revision:?}");
    for (n, x) in built.iter().enumerate() {
        println!(
            "repro: build {}: diosix.elf sha256 {}  diosix.sbom.json sha256 {}  ({:.0} s, {})",
            n + 1,
            x.image_sha,
            x.sbom_sha,
            x.took.as_secs_f64(),
            x.dir.display()
        );
    }
    let mut why = Vec::new();
    if a.image_sha != b.image_sha {
        let ia = fs::read(a.dir.join("out/diosix.elf")).unwrap_or_default();
        let ib = fs::read(b.dir.join("out/diosix.elf")).unwrap_or_default();
        why.push(format!(
            "the images differ: {}",
            describe_difference(&ia, &ib)
        ));
    }
    if a.sbom_sha != b.sbom_sha {
        why.push(format!(
            "the bills of materials differ (diff {} {})",
            a.dir.join("out/diosix.sbom.json").display(),
            b.dir.join("out/diosix.sbom.json").display()
        ));
    }
    if !why.is_empty() {
        return Err(format!(
            "repro: NOT reproducible: {} (both builds kept under {})",
            why.join("; "),
            base.display()
        ));
    }
    println!(
        "repro: reproducible: both builds gave the same image and bill of materials ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    if keep {
        println!("repro: kept {}", base.display());
    } else {
        fs::remove_dir_all(&base).map_err(|e| format!("cannot remove {}: {e}", base.display()))?;
    }
    Ok(())
}

/// Copies the tree into `dir/src`, builds it there with its own target directory and
/// cache, and checks the bill of materials it wrote.
fn build_once(
    n: usize,
    dir: &Path,
    tz: &str,
    mode: Mode,
    files: &[PathBuf],
    epoch: Option<i64>,
    revision: Option<&str>,
) -> Result<Built> {
    let src = dir.join("src");
    let cache = dir.join("cache");
    let out = dir.join("out").join("diosix.elf");
    copy_tree(&workspace_root(), &src, files)?;
    fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this xtask: {e}"))?;
    let mut cmd = Command::new(me);
    cmd.current_dir(&src)
        .arg("build")
        .arg("--out")
        .arg(&out)
        .env(WORKSPACE_ENV, &src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("DIOSIX_CACHE", &cache)
        .env("TZ", tz);
    match epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e.to_string()),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    match revision {
        Some(r) => cmd.env(sbom::REVISION_ENV, r),
        None => cmd.env_remove(sbom::REVISION_ENV),
    };
    match mode {
        Mode::Cheap => share_slow_outputs(&rootvm::cache_dir(), &cache)?,
        Mode::Full => {
            if let Some(sources) = saved_sources()? {
                cmd.env("DIOSIX_SOURCES", sources);
            }
        }
    }
    println!(
        "repro: build {n} of 2 in {} (TZ={tz}, {})",
        src.display(),
        match mode {
            Mode::Cheap => "Linux, busybox and Lua cached",
            Mode::Full => "empty cache",
        }
    );
    let started = Instant::now();
    process::run(&format!("repro build {n}"), &mut cmd)?;
    let took = started.elapsed();
    let sbom_path = sbom::sbom_path(&out);
    let bom = sbom::read_and_validate(&sbom_path)?;
    sbom::check_lists_image_parts(&bom, true)?;
    Ok(Built {
        dir: dir.to_path_buf(),
        image_sha: sha256_file(&out)?,
        sbom_sha: sha256_file(&sbom_path)?,
        took,
    })
}

/// The files of the tree, relative to it: in a git checkout, what git tracks (as it is
/// in the working tree) and what it would track (untracked, not ignored); elsewhere
/// (an unpacked tarball), every file but those under `target/` and `.git/`.
fn source_files() -> Result<Vec<PathBuf>> {
    let root = workspace_root();
    let listed = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success());
    let mut files: Vec<PathBuf> = match listed {
        Some(out) => out
            .stdout
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            // Deleted in the working tree but still in the index: not part of this tree.
            .filter(|p| root.join(p).symlink_metadata().is_ok())
            .collect(),
        None => {
            let mut files = Vec::new();
            walk(&root, Path::new(""), &mut files)?;
            files
        }
    };
    files.sort();
    files.dedup();
    Ok(files)
}

/// Every file under `root/rel`, relative to `root`, but build output and `.git`.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == ".git" || (rel.as_os_str().is_empty() && name == "target") {
            continue;
        }
        let path = rel.join(&name);
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(root, &path, out)?,
            Ok(_) => out.push(path),
            Err(e) => return Err(format!("cannot stat {}: {e}", entry.path().display())),
        }
    }
    Ok(())
}

/// Copies `files` (relative to `from`) to `to`, keeping symlinks and permissions.
fn copy_tree(from: &Path, to: &Path, files: &[PathBuf]) -> Result<()> {
    for rel in files {
        let (src, dst) = (from.join(rel), to.join(rel));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let meta = src
            .symlink_metadata()
            .map_err(|e| format!("cannot stat {}: {e}", src.display()))?;
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
            std::os::unix::fs::symlink(&target, &dst)
                .map_err(|e| format!("cannot link {}: {e}", dst.display()))?;
        } else if meta.is_file() {
            fs::copy(&src, &dst)
                .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// Links the shared cache's Linux, busybox and Lua outputs and its tarballs into a
/// build's own cache, so only those come from earlier builds.
fn share_slow_outputs(shared: &Path, cache: &Path) -> Result<()> {
    let entries =
        fs::read_dir(shared).map_err(|e| format!("cannot read {}: {e}", shared.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let slow = SHARED_IN_CHEAP_MODE.iter().any(|p| name.starts_with(p));
        if (slow && !name.contains(".tmp.")) || name == "sources" {
            std::os::unix::fs::symlink(entry.path(), cache.join(name))
                .map_err(|e| format!("cannot link {name} into {}: {e}", cache.display()))?;
        }
    }
    Ok(())
}

/// Where the full mode's builds take the pinned tarballs from: `$DIOSIX_SOURCES` as
/// set, else the cache's copies when it has every one (each build verifies them
/// against the manifest all the same), else nowhere: they are fetched with apt.
fn saved_sources() -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os("DIOSIX_SOURCES").filter(|d| !d.is_empty()) {
        return Ok(Some(PathBuf::from(dir)));
    }
    let dir = rootvm::cache_dir().join("sources");
    let all_there = rootvm::pinned_sources()?
        .iter()
        .all(|s| dir.join(&s.file).is_file());
    Ok(all_there.then_some(dir))
}

/// Where two images first differ and how much: the byte offset, the ELF section (or
/// the appended Root VM payload) it falls in, and how many bytes differ in all.
fn describe_difference(a: &[u8], b: &[u8]) -> String {
    let Some(first) = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then_some(a.len().min(b.len())))
    else {
        return "no difference".into();
    };
    let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
    format!(
        "sizes {} and {} bytes, {differing} bytes differ, the first at offset {first:#x} ({})",
        a.len(),
        b.len(),
        section_at(a, first as u64)
    )
}

/// The name of the ELF section holding file offset `off`, or where else it is.
fn section_at(elf: &[u8], off: u64) -> String {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let lookup = || -> Option<String> {
        let shoff = u64_at(0x28)? as usize;
        let shentsize = u16_at(0x3a)? as usize;
        let shnum = u16_at(0x3c)? as usize;
        let strtab = shoff + u16_at(0x3e)? as usize * shentsize;
        let names = u64_at(strtab + 0x18)? as usize;
        for i in 0..shnum {
            let sh = shoff + i * shentsize;
            let (start, size) = (u64_at(sh + 0x18)?, u64_at(sh + 0x20)?);
            if (start..start + size).contains(&off) && u32_at(sh + 4)? != 8 {
                let name = names + u32_at(sh)? as usize;
                let end = elf[name..].iter().position(|&c| c == 0)?;
                return Some(format!(
                    "in section {}",
                    String::from_utf8_lossy(&elf[name..name + end])
                ));
            }
        }
        None
    };
    lookup().unwrap_or_else(|| {
        "outside the hypervisor's sections: in the Root VM payload or the ELF headers".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_located_in_sections() {
        // This test binary is an ELF: flip one byte in the middle of .text.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let mut other = me.clone();
        let at = me.len() / 3;
        other[at] ^= 0xff;
        let why = describe_difference(&me, &other);
        assert!(why.contains("1 bytes differ"), "{why}");
        assert!(why.contains(&format!("{at:#x}")), "{why}");
        assert!(why.contains("section") || why.contains("payload"), "{why}");
        assert_eq!(describe_difference(&me, &me), "no difference");
        assert!(describe_difference(&me, &me[..10]).contains("offset 0xa"));
    }

    #[test]
    fn the_source_files_include_the_manifest_and_no_build_output() {
        let files = source_files().unwrap();
        assert!(files.contains(&PathBuf::from("rootvm/sources.manifest")));
        assert!(files.contains(&PathBuf::from("Cargo.lock")));
        assert!(!files.iter().any(|f| f.starts_with("target")));
    }
}
