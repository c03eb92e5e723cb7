//! Builds the Linux Root VM (kernel, busybox, Lua, initramfs) from pinned Debian sources.
//!
//! The Root VM is a small Linux system the hypervisor boots first. Everything it is made of
//! is built here from source, so the image can be rebuilt and audited:
//!
//! 1. the tarballs named in `rootvm/sources.manifest` are fetched with apt (or taken from
//!    `$DIOSIX_SOURCES` for offline builds) and refused unless their SHA-256 matches the pin;
//! 2. Linux: `tinyconfig` + `rootvm/linux.config`, checked after `olddefconfig`;
//! 3. busybox, static, from `rootvm/busybox.config`;
//! 4. Lua 5.4, static;
//! 5. the guest initramfs (busybox, the tools, the kernel and `rootvm/guest-initramfs/`):
//!    the guest Linux `dsx run` starts when given no image;
//! 6. a gzip'd newc cpio initramfs from busybox, Lua, `rootvm/initramfs/`, the tools and
//!    the guest Linux (under `/usr/share/diosix/guests/`).
//!
//! Each output lives in [`cache_dir`] (outside the clone: the kernel tree alone is ~1.5 GB)
//! under a name derived from a hash of everything that went into it, so an unchanged
//! rebuild only re-hashes a few small files, and changing one input rebuilds only what
//! depends on it. Outputs are built in a `*.tmp.<pid>` directory and renamed into place
//! only once complete, so an interrupted or failed build is never mistaken for a good one.
//! See `docs/rootvm.md`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{process, Result};

/// Mixed into every cache key. Bump it when a change to this file changes what a step
/// produces, so outputs built by the old code are not reused.
const FORMAT_VERSION: &str = "diosix-rootvm-1";

/// Prefix of the cross toolchain (Debian's `gcc-riscv64-linux-gnu`).
const CROSS: &str = "riscv64-linux-gnu-";

/// The kernel command line the Root VM boots with. The initramfs has a `/init`, so no
/// `rdinit=` is needed; `hvc0` is the SBI debug console, the only console the Root VM has.
pub const DEFAULT_CMDLINE: &str = "console=hvc0 earlycon=sbi";

/// Number of `[rootvm] ... (step n/STEPS)` steps printed.
const STEPS: usize = 6;

/// Make targets for the kernel: `modules` too, so the tree has `Module.symvers` and
/// `modpost` for building out-of-tree modules against it later.
const LINUX_TARGETS: &[&str] = &["Image", "modules"];

/// Lua's own makefile target without readline or dlopen (neither exists in a static
/// binary), and the overrides that make it cross-compile and link statically.
const LUA_MAKE_ARGS: &[&str] = &[
    "posix",
    "CC=riscv64-linux-gnu-gcc -std=gnu99",
    "AR=riscv64-linux-gnu-ar rcu",
    "RANLIB=riscv64-linux-gnu-ranlib",
    "MYLDFLAGS=-static",
];

/// What the Root VM is booted from.
#[derive(Debug, Clone)]
pub struct RootVmArtifacts {
    /// The kernel, `arch/riscv/boot/Image` (the RISC-V boot image, loaded 2 MiB aligned).
    pub kernel_image: PathBuf,
    /// The initramfs: a gzip-compressed newc cpio archive.
    pub initramfs: PathBuf,
    /// The kernel command line to put in the device tree's `/chosen/bootargs`.
    pub cmdline: String,
    /// The configured and built kernel source tree, for building out-of-tree modules
    /// (`make -C <linux_tree> ARCH=riscv CROSS_COMPILE=riscv64-linux-gnu- M=...`).
    // allow: only the out-of-tree driver build (a later change) reads it.
    #[allow(dead_code)]
    pub linux_tree: PathBuf,
}

/// Where built Root VM components and downloaded sources are kept:
/// `$DIOSIX_CACHE`, else `$HOME/.cache/diosix`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DIOSIX_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("diosix")
}

/// Builds (or reuses from [`cache_dir`]) the Root VM kernel and initramfs.
///
/// Fails with a message naming the step and the fix when a tool is missing, a download
/// fails, a tarball's hash differs from `rootvm/sources.manifest`, or a compile fails.
pub fn build_linux_root_vm() -> Result<RootVmArtifacts> {
    let started = Instant::now();
    let repo = rootvm_dir();

    step(1, "checking the cross compiler and rootvm/sources.manifest");
    // The compiler's identity is part of every cache key: a different gcc means a
    // different binary, even from the same sources and config.
    let gcc_version = cross_gcc_version()?;
    let manifest = Manifest::load(&repo.join("sources.manifest"))?;
    fs::create_dir_all(cache_dir())
        .map_err(|e| format!("cannot create cache dir {}: {e}", cache_dir().display()))?;

    let linux_tree = build_linux(manifest.get("linux")?, &gcc_version, &repo)?;
    let busybox = build_busybox(manifest.get("busybox")?, &gcc_version, &repo)?;
    let lua = build_lua(manifest.get("lua")?, &gcc_version)?;
    let kernel_image = linux_tree.join("arch/riscv/boot/Image");
    // The management tools (dsx, diosix.ko; tools.rs), the driver built against this tree.
    let tools = crate::tools::initramfs_files(&linux_tree)?;
    // The guest Linux: the same kernel, a small initramfs with the tools and the kernel
    // (so a guest can start guests of its own; its initramfs is its own, retained).
    let mut guest_extra = tools.clone();
    guest_extra.extend(crate::tools::guest_files(&kernel_image, None));
    let guest_initramfs = build_initramfs(
        &InitramfsSpec {
            name: "guest-initramfs",
            step: 5,
            overlay_dir: repo.join("guest-initramfs"),
            lua: None,
        },
        &busybox,
        &guest_extra,
    )?;
    let mut extra = tools;
    extra.extend(crate::tools::guest_files(
        &kernel_image,
        Some(&guest_initramfs),
    ));
    let initramfs = build_initramfs(
        &InitramfsSpec {
            name: "initramfs",
            step: 6,
            overlay_dir: repo.join("initramfs"),
            lua: Some(&lua),
        },
        &busybox,
        &extra,
    )?;

    println!(
        "[rootvm] ready in {}: {} ({}), {} ({})",
        fmt_duration(started.elapsed()),
        kernel_image.display(),
        fmt_size(&kernel_image),
        initramfs.display(),
        fmt_size(&initramfs),
    );
    Ok(RootVmArtifacts {
        kernel_image,
        initramfs,
        cmdline: DEFAULT_CMDLINE.to_string(),
        linux_tree,
    })
}

/// `rootvm/` in the workspace: the manifest, configs and initramfs files.
fn rootvm_dir() -> PathBuf {
    crate::workspace_root().join("rootvm")
}

fn step(n: usize, what: &str) {
    println!("[rootvm] {what} (step {n}/{STEPS})...");
}

// ---------------------------------------------------------------------------------------
// Pinned sources
// ---------------------------------------------------------------------------------------

/// How a source tarball is obtained from apt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// A binary package shipping the tarball under `/usr/src` (linux-source-*).
    Deb,
    /// The upstream `.orig` tarball of a Debian source package.
    Dsc,
}

/// One line of `rootvm/sources.manifest`.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    method: Method,
    /// `package=version`, exactly as apt takes it.
    apt_spec: String,
    /// Debian version, e.g. `1:1.35.0-4+deb12u1`.
    version: String,
    sha256: String,
    /// File name of the tarball, in the cache, in `$DIOSIX_SOURCES`, and (for `Deb`)
    /// under `/usr/src` in the package.
    file: String,
}

impl Source {
    /// The upstream version (`1:1.35.0-4+deb12u1` -> `1.35.0`), for progress messages.
    fn upstream_version(&self) -> &str {
        let v = self
            .version
            .split_once(':')
            .map_or(&*self.version, |(_, v)| v);
        v.rsplit_once('-').map_or(v, |(v, _)| v)
    }
}

struct Manifest {
    sources: Vec<Source>,
}

impl Manifest {
    fn load(path: &Path) -> Result<Manifest> {
        let text = read_text(path)?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Manifest> {
        let mut sources = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: `{line}`", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, method, apt_spec, sha256, file] = fields[..] else {
                return Err(bad("expected `name method package=version sha256 file`"));
            };
            let method = match method {
                "deb" => Method::Deb,
                "dsc" => Method::Dsc,
                _ => return Err(bad("method must be `deb` or `dsc`")),
            };
            let Some((_, version)) = apt_spec.split_once('=') else {
                return Err(bad("the package must be pinned as package=version"));
            };
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the sha256 must be 64 hex digits"));
            }
            if file.contains('/') {
                return Err(bad("the file must be a plain file name"));
            }
            sources.push(Source {
                name: name.to_string(),
                method,
                apt_spec: apt_spec.to_string(),
                version: version.to_string(),
                sha256: sha256.to_ascii_lowercase(),
                file: file.to_string(),
            });
        }
        Ok(Manifest { sources })
    }

    fn get(&self, name: &str) -> Result<&Source> {
        self.sources
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("rootvm/sources.manifest has no `{name}` line"))
    }
}

/// Returns the verified tarball of `src` in the cache, fetching it first if needed:
/// from `$DIOSIX_SOURCES` if set, else with apt.
fn fetch_source(src: &Source) -> Result<PathBuf> {
    let dir = cache_dir().join("sources");
    let dest = dir.join(&src.file);
    if dest.is_file() {
        // Re-checked on every use: the cache is outside the repo and could be altered.
        if sha256_file(&dest)? == src.sha256 {
            return Ok(dest);
        }
        println!(
            "[rootvm]   cached {} does not match its pin; fetching it again",
            dest.display()
        );
        fs::remove_file(&dest).map_err(|e| format!("cannot remove {}: {e}", dest.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = fresh_tmp(&dest)?;

    let fetched = match std::env::var_os("DIOSIX_SOURCES").filter(|d| !d.is_empty()) {
        Some(offline) => {
            let path = PathBuf::from(&offline).join(&src.file);
            if !path.is_file() {
                return Err(format!(
                    "fetching {}: DIOSIX_SOURCES={} has no {} (put the pinned file there, \
                     or unset DIOSIX_SOURCES to download it with apt)",
                    src.name,
                    PathBuf::from(offline).display(),
                    src.file
                ));
            }
            println!("[rootvm]   using {}", path.display());
            path
        }
        None => apt_fetch(src, &tmp)?,
    };
    verify(&fetched, src)?;
    // Copy into the temp dir first (unless apt already put it there) so the final name
    // only ever appears, by rename, with verified contents.
    let staged = tmp.join(&src.file);
    if fetched != staged {
        fs::copy(&fetched, &staged)
            .map_err(|e| format!("cannot copy {}: {e}", fetched.display()))?;
    }
    fs::rename(&staged, &dest).map_err(|e| format!("cannot move {}: {e}", staged.display()))?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(dest)
}

/// Downloads `src` with apt into `tmp` and returns the path of its tarball there.
fn apt_fetch(src: &Source, tmp: &Path) -> Result<PathBuf> {
    let out = tmp.join(&src.file);
    match src.method {
        Method::Deb => {
            need_tools("fetching sources", &["apt-get", "dpkg-deb", "tar"])?;
            println!("[rootvm]   apt-get download {}", src.apt_spec);
            process::run_quiet(
                Command::new("apt-get")
                    .args(["download", &src.apt_spec])
                    .current_dir(tmp),
            )
            .map_err(|e| {
                format!(
                    "apt-get download {} failed: is bookworm-security or bookworm-backports in \
                     the apt sources (then `apt-get update`)? Offline, put {} in a directory \
                     and set DIOSIX_SOURCES to it.\n{e}",
                    src.apt_spec, src.file
                )
            })?;
            let deb = find_file(tmp, ".deb")?;
            // Only the tarball is taken out of the package; installing it would write
            // to /usr/src and need root.
            extract_from_deb(&deb, &format!("./usr/src/{}", src.file), &out)?;
            let _ = fs::remove_file(&deb);
        }
        Method::Dsc => {
            need_tools("fetching sources", &["apt-get"])?;
            println!("[rootvm]   apt-get source --download-only {}", src.apt_spec);
            process::run_quiet(
                Command::new("apt-get")
                    .args(["source", "--download-only", &src.apt_spec])
                    .current_dir(tmp),
            )
            .map_err(|e| {
                format!(
                    "apt-get source --download-only {} failed: are there `deb-src` entries for \
                     bookworm in the apt sources (then `apt-get update`)? Offline, put {} in a \
                     directory and set DIOSIX_SOURCES to it.\n{e}",
                    src.apt_spec, src.file
                )
            })?;
        }
    }
    if !out.is_file() {
        return Err(format!(
            "fetching {}: apt did not produce {} (does the manifest name the right file?)",
            src.apt_spec, src.file
        ));
    }
    Ok(out)
}

/// `dpkg-deb --fsys-tarfile deb | tar -xO member > out`.
fn extract_from_deb(deb: &Path, member: &str, out: &Path) -> Result<()> {
    let fail = |e: String| format!("extracting {member} from {}: {e}", deb.display());
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run dpkg-deb: {e}")))?;
    let pipe = dpkg.stdout.take().expect("stdout was piped");
    let file = fs::File::create(out).map_err(|e| fail(e.to_string()))?;
    let tar = Command::new("tar")
        .args(["-xO", member])
        .stdin(pipe)
        .stdout(file)
        .status()
        .map_err(|e| fail(format!("cannot run tar: {e}")))?;
    let dpkg = dpkg.wait().map_err(|e| fail(e.to_string()))?;
    if !dpkg.success() || !tar.success() {
        return Err(fail(format!("dpkg-deb: {dpkg}, tar: {tar}")));
    }
    Ok(())
}

/// Fails unless `path` has the SHA-256 pinned for `src`.
fn verify(path: &Path, src: &Source) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != src.sha256 {
        return Err(format!(
            "hash mismatch for {}:\n  expected sha256 {}\n  actual   sha256 {}\n\
             It is not the pinned {} ({}). If the pin was changed on purpose, update \
             rootvm/sources.manifest; otherwise remove the file and build again.",
            path.display(),
            src.sha256,
            actual,
            src.file,
            src.apt_spec
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Components
// ---------------------------------------------------------------------------------------

/// Builds Linux (or finds it cached) and returns the built source tree.
fn build_linux(src: &Source, gcc_version: &str, repo: &Path) -> Result<PathBuf> {
    let what = format!("linux {}", src.upstream_version());
    let fragment = read_text(&repo.join("linux.config"))?;
    let key = cache_key(&[
        FORMAT_VERSION,
        "linux",
        &src.sha256,
        &fragment,
        gcc_version,
        &LINUX_TARGETS.join(" "),
    ]);
    let out = cache_dir().join(format!("linux-{key}"));
    if out.join("arch/riscv/boot/Image").is_file() {
        println!("[rootvm] {what}: cached (step 2/{STEPS})");
        return Ok(out);
    }
    step(2, &format!("building {what}"));
    let started = Instant::now();
    need_tools(
        &format!("building {what}"),
        &["make", "gcc", "bc", "bison", "flex", "perl", "tar", "xz"],
    )?;
    let tarball = fetch_source(src)?;
    let tmp = fresh_tmp(&out)?;
    println!("[rootvm]   extracting {}", src.file);
    extract(&tarball, &tmp)?;

    let make = |args: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&tmp)
            .arg("ARCH=riscv")
            .arg(format!("CROSS_COMPILE={CROSS}"))
            .args(args)
            // Fixed build identity, so the same inputs give the same `uname -v`.
            .env("KBUILD_BUILD_USER", "diosix")
            .env("KBUILD_BUILD_HOST", "diosix")
            .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
            .env("LC_ALL", "C");
        cmd
    };
    println!("[rootvm]   configuring: tinyconfig + rootvm/linux.config");
    run_logged(
        &format!("{what}: make tinyconfig"),
        &mut make(&["tinyconfig"]),
        "linux-config",
        None,
    )?;
    // Appending the fragment and running olddefconfig is what merge_config.sh does; doing
    // it directly avoids depending on that script's output format.
    let config_path = tmp.join(".config");
    let mut config = read_text(&config_path)?;
    config.push('\n');
    config.push_str(&fragment);
    write_file(&config_path, config.as_bytes())?;
    run_logged(
        &format!("{what}: make olddefconfig"),
        &mut make(&["olddefconfig"]),
        "linux-config",
        None,
    )?;
    check_config(
        &read_text(&config_path)?,
        &fragment,
        "rootvm/linux.config",
        &what,
    )?;

    let jobs = format!("-j{}", jobs());
    let mut args = vec![jobs.as_str()];
    args.extend_from_slice(LINUX_TARGETS);
    run_logged(
        &format!("{what}: make {}", LINUX_TARGETS.join(" ")),
        &mut make(&args),
        "linux-build",
        Some(("linux", 960)),
    )?;
    commit(&tmp, &out)?;
    println!(
        "[rootvm] {what} built in {}",
        fmt_duration(started.elapsed())
    );
    Ok(out)
}

/// What the busybox step produces: the binary and the list of its applets' paths.
struct Busybox {
    binary: PathBuf,
    links: PathBuf,
}

/// Builds static busybox (or finds it cached).
fn build_busybox(src: &Source, gcc_version: &str, repo: &Path) -> Result<Busybox> {
    let what = format!("busybox {}", src.upstream_version());
    let config = read_text(&repo.join("busybox.config"))?;
    let key = cache_key(&[FORMAT_VERSION, "busybox", &src.sha256, &config, gcc_version]);
    let out = cache_dir().join(format!("busybox-{key}"));
    let result = Busybox {
        binary: out.join("busybox"),
        links: out.join("busybox.links"),
    };
    if result.binary.is_file() && result.links.is_file() {
        println!("[rootvm] {what}: cached (step 3/{STEPS})");
        return Ok(result);
    }
    step(3, &format!("building {what} (static)"));
    let started = Instant::now();
    need_tools(
        &format!("building {what}"),
        &["make", "gcc", "tar", "bzip2"],
    )?;
    let tarball = fetch_source(src)?;
    let tmp = fresh_tmp(&out)?;
    let tree = tmp.join("src");
    extract(&tarball, &tree)?;
    // busybox.config is a complete .config, so busybox's implicit oldconfig asks nothing.
    write_file(&tree.join(".config"), config.as_bytes())?;
    let make = |target: &str| {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&tree)
            .arg(format!("-j{}", jobs()))
            .arg(format!("CROSS_COMPILE={CROSS}"))
            .arg(target)
            .env("LC_ALL", "C");
        cmd
    };
    run_logged(
        &format!("{what}: make busybox"),
        &mut make("busybox"),
        "busybox-build",
        Some(("busybox", 640)),
    )?;
    // Separately: busybox.links needs headers the first make generates, and busybox's
    // makefile does not order the two targets in one parallel run.
    run_logged(
        &format!("{what}: make busybox.links"),
        &mut make("busybox.links"),
        "busybox-build",
        None,
    )?;
    check_config(
        &read_text(&tree.join(".config"))?,
        &config,
        "rootvm/busybox.config",
        &what,
    )?;
    for name in ["busybox", "busybox.links"] {
        fs::rename(tree.join(name), tmp.join(name))
            .map_err(|e| format!("{what}: cannot move {name} out of the build tree: {e}"))?;
    }
    // Only the two outputs are kept; the object files are not worth the space.
    fs::remove_dir_all(&tree).map_err(|e| format!("cannot remove {}: {e}", tree.display()))?;
    commit(&tmp, &out)?;
    println!(
        "[rootvm] {what} built in {}",
        fmt_duration(started.elapsed())
    );
    Ok(result)
}

/// Builds static Lua (or finds it cached) and returns the stripped `lua` binary.
fn build_lua(src: &Source, gcc_version: &str) -> Result<PathBuf> {
    let what = format!("lua {}", src.upstream_version());
    let key = cache_key(&[
        FORMAT_VERSION,
        "lua",
        &src.sha256,
        gcc_version,
        &LUA_MAKE_ARGS.join("\n"),
    ]);
    let out = cache_dir().join(format!("lua-{key}"));
    let binary = out.join("lua");
    if binary.is_file() {
        println!("[rootvm] {what}: cached (step 4/{STEPS})");
        return Ok(binary);
    }
    step(4, &format!("building {what} (static)"));
    let started = Instant::now();
    need_tools(&format!("building {what}"), &["make", "tar", "gzip"])?;
    let tarball = fetch_source(src)?;
    let tmp = fresh_tmp(&out)?;
    let tree = tmp.join("src");
    extract(&tarball, &tree)?;
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(tree.join("src"))
        .arg(format!("-j{}", jobs()))
        .args(LUA_MAKE_ARGS)
        .env("LC_ALL", "C");
    run_logged(
        &format!("{what}: make"),
        &mut cmd,
        "lua-build",
        Some(("lua", 40)),
    )?;
    let mut strip = Command::new(format!("{CROSS}strip"));
    strip
        .arg("-o")
        .arg(tmp.join("lua"))
        .arg(tree.join("src/lua"));
    run_logged(&format!("{what}: strip"), &mut strip, "lua-build", None)?;
    fs::remove_dir_all(&tree).map_err(|e| format!("cannot remove {}: {e}", tree.display()))?;
    commit(&tmp, &out)?;
    println!(
        "[rootvm] {what} built in {}",
        fmt_duration(started.elapsed())
    );
    Ok(binary)
}

/// One initramfs to assemble: the Root VM's, or the guest Linux's.
struct InitramfsSpec<'a> {
    /// Cache directory prefix and progress name (`initramfs`, `guest-initramfs`).
    name: &'a str,
    /// Its step number in the progress messages.
    step: usize,
    /// Our own files (`rootvm/initramfs/`, `rootvm/guest-initramfs/`).
    overlay_dir: PathBuf,
    /// `/usr/bin/lua`, if it has Lua.
    lua: Option<&'a Path>,
}

/// Assembles an initramfs (or finds it cached) and returns the `.cpio.gz`. `extra` are
/// built files to add (the tools, the guest Linux); like the overlay, they can replace
/// applet links.
fn build_initramfs(
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

// ---------------------------------------------------------------------------------------
// cpio (newc) writer
// ---------------------------------------------------------------------------------------

/// An initramfs entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// The initramfs contents, keyed by path without a leading `/`. A BTreeMap so the archive
/// is in a fixed order in which every directory comes before its contents.
#[derive(Debug, Default)]
struct Tree {
    entries: BTreeMap<String, (Node, u32)>,
}

impl Tree {
    fn dir(&mut self, path: &str, perm: u32) {
        self.node(path, Node::Dir, perm);
    }

    fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) {
        self.node(path, Node::File(data), perm);
    }

    /// Adds `path`, creating missing parent directories (mode 0755) first.
    fn node(&mut self, path: &str, node: Node, perm: u32) {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.and_then(Path::to_str).filter(|p| !p.is_empty()) {
            self.entries
                .entry(p.to_string())
                .or_insert((Node::Dir, 0o755));
            parent = Path::new(p).parent();
        }
        self.entries.insert(path.to_string(), (node, perm));
    }

    /// Writes the tree as a newc ("070701") cpio archive, owned by root, mtime 0.
    fn write_cpio(&self, w: &mut impl Write) -> std::io::Result<()> {
        for (ino, (path, (node, perm))) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040000, &[], (0, 0)),
                Node::File(d) => (0o100000, d, (0, 0)),
                Node::Symlink(t) => (0o120000, t.as_bytes(), (0, 0)),
                Node::CharDev { major, minor } => (0o020000, &[], (*major, *minor)),
            };
            let nlink = if *node == Node::Dir { 2 } else { 1 };
            let ino = u32::try_from(ino + 1).expect("fewer than 2^32 entries");
            cpio_entry(w, path, ino, kind | perm, nlink, data, rdev)?;
        }
        cpio_entry(w, "TRAILER!!!", 0, 0, 1, &[], (0, 0))
    }
}

/// One newc entry: a 110-byte ASCII header, the NUL-terminated name, the data, each
/// padded to 4 bytes.
fn cpio_entry(
    w: &mut impl Write,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) -> std::io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| std::io::Error::other(format!("{name}: too big for cpio")))?;
    let namesize = u32::try_from(name.len() + 1).expect("short names");
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, namesize, 0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])
}

/// Bytes needed to round `n` up to a multiple of 4.
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Checks that every `CONFIG_X=...` and `# CONFIG_X is not set` line of `fragment` holds
/// in `config`: Kconfig silently drops options whose dependencies are not met.
fn check_config(config: &str, fragment: &str, fragment_name: &str, what: &str) -> Result<()> {
    let actual: BTreeMap<&str, &str> = config
        .lines()
        .filter_map(|l| {
            if let Some(rest) = l
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                Some((rest, "n"))
            } else if l.starts_with("CONFIG_") {
                l.split_once('=')
            } else {
                None
            }
        })
        .collect();
    let mut dropped = Vec::new();
    for line in fragment.lines().map(str::trim) {
        let (name, want) = if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            (rest, "n")
        } else if line.starts_with("CONFIG_") {
            match line.split_once('=') {
                Some(nv) => nv,
                None => continue,
            }
        } else {
            continue;
        };
        let got = actual.get(name).copied().unwrap_or("n");
        if got != want {
            dropped.push(format!("  {line}   (final .config: {name}={got})"));
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: {} option(s) of {fragment_name} did not survive into the final .config \
         (a dependency is not enabled, or the option does not exist in this version); \
         enable the dependencies in {fragment_name} or drop the lines:\n{}",
        dropped.len(),
        dropped.join("\n")
    ))
}

/// The cross compiler's `--version` output, also proving it is installed.
fn cross_gcc_version() -> Result<String> {
    let gcc = format!("{CROSS}gcc");
    process::stdout(Command::new(&gcc).arg("--version")).ok_or_else(|| {
        format!(
            "{gcc} not found or not working: install gcc-riscv64-linux-gnu: run `cargo xtask setup`"
        )
    })
}

/// Fails naming the Debian package to install when one of `tools` is not on `PATH`.
fn need_tools(what: &str, tools: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing
        .iter()
        .map(|t| match *t {
            "xz" => "xz-utils",
            "apt-get" => "apt",
            "dpkg-deb" => "dpkg",
            "dpkg-source" => "dpkg-dev",
            other => other,
        })
        .collect();
    Err(format!(
        "{what}: {} not found: install {} (apt-get install {}): run `cargo xtask setup`",
        missing.join(", "),
        packages.join(", "),
        packages.join(" ")
    ))
}

/// Parallel jobs for make: `$DIOSIX_JOBS`, else the number of CPUs.
fn jobs() -> usize {
    std::env::var("DIOSIX_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|&j| j > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Unpacks a tarball (any compression GNU tar recognises) into `dir`, dropping the
/// top-level directory every one of ours has.
fn extract(tarball: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    process::run_quiet(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(dir)
            .arg("--strip-components=1"),
    )
    .map_err(|e| format!("extracting {}: {e}", tarball.display()))
}

/// Runs a long build command with its output going to `<cache>/logs/<log>.log`
/// (see [`process::run_logged`]).
///
/// With `progress = Some((name, expected))`, counts the compile/link lines make prints
/// and reports how far it is; `expected` is the first-run estimate, replaced by the real
/// count of the last successful build (kept in `<cache>/logs/progress/<name>`).
fn run_logged(
    what: &str,
    cmd: &mut Command,
    log: &str,
    progress: Option<(&str, usize)>,
) -> Result<()> {
    let logs = cache_dir().join("logs");
    let progress = progress.map(|(name, expected)| process::Progress {
        label: format!("[rootvm]   {name}"),
        counts: is_build_line,
        expected,
        count_file: logs.join("progress").join(name),
    });
    process::run_logged(what, cmd, &logs.join(format!("{log}.log")), progress)
}

/// Whether a line of make output reports one compiled or linked object: kbuild prints
/// `  CC      path` (also busybox); Lua's makefile echoes the compiler command itself.
fn is_build_line(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    matches!(
        first,
        "CC" | "AS" | "LD" | "AR" | "HOSTCC" | "HOSTLD" | "OBJCOPY"
    ) || first.starts_with(CROSS)
}

/// A fresh, empty temp dir next to `final_path`, named `<final>.tmp.<pid>`. Leftovers of
/// builds whose process is gone (killed, crashed) are removed first; those of running
/// builds are left alone.
pub(crate) fn fresh_tmp(final_path: &Path) -> Result<PathBuf> {
    let parent = final_path.parent().expect("cache paths have a parent");
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("cache names are UTF-8");
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let prefix = format!("{name}.tmp.");
    if let Ok(entries) = fs::read_dir(parent) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| format!("cannot remove {}: {e}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Moves a finished temp dir to its final name. If another build got there first, its
/// (identical-input) output is kept and ours dropped.
pub(crate) fn commit(tmp: &Path, final_path: &Path) -> Result<()> {
    if final_path.exists() {
        let _ = fs::remove_dir_all(tmp);
        return Ok(());
    }
    fs::rename(tmp, final_path).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            tmp.display(),
            final_path.display()
        )
    })
}

/// A short hex key over `parts`. Each part is length-prefixed so that moving text
/// between parts changes the key.
fn cache_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex(&h.finalize())[..24].to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The only file in `dir` whose name ends with `suffix`.
fn find_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .ok_or_else(|| format!("no *{suffix} in {}", dir.display()))
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn fmt_size(path: &Path) -> String {
    let bytes = fs::metadata(path).map_or(0, |m| m.len());
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_and_rejects_bad_lines() {
        let m = Manifest::parse(
            "# comment\n\nlua dsc lua5.4=5.4.4-3+deb12u1 \
             164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61 lua.tar.gz\n",
        )
        .unwrap();
        let lua = m.get("lua").unwrap();
        assert_eq!(lua.method, Method::Dsc);
        assert_eq!(lua.upstream_version(), "5.4.4");
        assert!(Manifest::parse("lua dsc lua5.4 abc f\n").is_err());
        assert!(Manifest::parse("lua zip lua5.4=1 abc f\n").is_err());
    }

    #[test]
    fn the_repo_manifest_pins_all_three_sources() {
        let m = Manifest::load(&rootvm_dir().join("sources.manifest")).unwrap();
        for name in ["linux", "busybox", "lua"] {
            m.get(name).unwrap();
        }
        assert_eq!(m.get("busybox").unwrap().upstream_version(), "1.35.0");
        assert_eq!(m.get("linux").unwrap().upstream_version(), "6.12.117");
    }

    #[test]
    fn check_config_reports_dropped_options() {
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=8\n";
        assert!(check_config(
            config,
            "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_B is not set\n",
            "f",
            "t"
        )
        .is_ok());
        let err =
            check_config(config, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n", "f", "t").unwrap_err();
        assert!(
            err.contains("CONFIG_B=y") && err.contains("CONFIG_C=y") && !err.contains("CONFIG_A=y")
        );
    }

    #[test]
    fn cpio_is_newc_with_parents_first_and_aligned() {
        let mut t = Tree::default();
        t.file("etc/init.d/rcS", b"#!/bin/sh\n".to_vec(), 0o755);
        t.node("dev/console", Node::CharDev { major: 5, minor: 1 }, 0o600);
        let mut out = Vec::new();
        t.write_cpio(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let pos = |n: &str| text.find(n).unwrap();
        assert!(
            pos("etc\0") < pos("etc/init.d\0") && pos("etc/init.d\0") < pos("etc/init.d/rcS\0")
        );
        assert!(text.starts_with("070701"));
        // 110-byte header + "TRAILER!!!\0" = 121 bytes, padded to 124.
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
        // dev/console header: mode 020600, rdev 5:1.
        let hdr_start = pos("dev/console\0") - 110;
        let hdr = &text[hdr_start..hdr_start + 110];
        assert_eq!(&hdr[14..22], "00002180");
        assert_eq!(&hdr[78..94], "0000000500000001");
    }

    #[test]
    fn cache_key_depends_on_part_boundaries() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        assert_eq!(cache_key(&["x"]), cache_key(&["x"]));
    }
}

/// The whole build, for trying it out before `cargo xtask build` calls it:
/// `cargo test -p xtask -- --ignored --nocapture rootvm::full_build`.
#[cfg(test)]
mod full_build {
    #[test]
    #[ignore = "builds Linux, busybox and Lua: minutes on a first run"]
    fn build_linux_root_vm() {
        match super::build_linux_root_vm() {
            Ok(a) => println!("ARTIFACTS {a:#?}"),
            Err(e) => panic!("{e}"),
        }
    }
}
