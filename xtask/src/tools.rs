//! Builds the Root VM's management tools: `dsx` (`tools/dsx`, a static riscv64 Linux
//! binary) and `diosix.ko` (`rootvm/driver`, built against the Root VM's kernel tree),
//! and the test guests it carries ([`TEST_GUESTS`]), and names where they go in the
//! initramfs.
//!
//! Like the rest of the Root VM (`rootvm/`), each output is kept in
//! [`rootvm::cache_dir`] under a key hashed from everything it is built from, built in a
//! `*.tmp.<pid>` directory and renamed into place only when complete. See `docs/dsx.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::rootvm::{self, cache_key, hex, sha256_file, CROSS};
use crate::{process, setup, workspace_root, Result};

/// Mixed into both cache keys; bump it when a change here changes what is produced.
/// (2: dsx built with its paths remapped, `build::reproducible_rustflags`.)
const FORMAT_VERSION: &str = "diosix-tools-2";

/// Rust target of the Root VM's userspace (glibc, linked statically).
pub const LINUX_TARGET: &str = "riscv64gc-unknown-linux-gnu";

/// Source directories whose contents decide the `dsx` binary (its own crate and the
/// workspace crates it depends on).
const DSX_INPUTS: &[&str] = &["tools/dsx", "crates/abi", "crates/core"];

/// A file the tools add to the Root VM initramfs.
#[derive(Debug, Clone)]
pub struct InitramfsFile {
    /// Path in the archive, without the leading `/`.
    pub path: &'static str,
    /// The built file.
    pub source: PathBuf,
    /// Permission bits.
    pub mode: u32,
}

/// Builds both tools (or finds them cached) and returns what goes into the initramfs:
/// `/usr/bin/dsx` and `/lib/modules/diosix.ko` (loaded by `/etc/init.d/rcS`).
pub fn initramfs_files(linux_tree: &Path) -> Result<Vec<InitramfsFile>> {
    Ok(vec![
        InitramfsFile {
            path: "usr/bin/dsx",
            source: build_dsx()?,
            mode: 0o755,
        },
        InitramfsFile {
            path: "lib/modules/diosix.ko",
            source: build_driver(linux_tree)?,
            mode: 0o644,
        },
    ])
}

/// The guest Linux's files in an initramfs, where `dsx run` without IMAGE looks for them
/// (`dsx`'s `GUEST_IMAGE` and `GUEST_INITRD`): `/usr/share/diosix/guests/Image`
/// (`kernel`) and, when given, `/usr/share/diosix/guests/initramfs.cpio.gz`. The Root VM gets both; the guest's own
/// initramfs gets only the kernel (its `/etc/init.d/rcS` links its retained initrd,
/// `/sys/firmware/initrd`, as `initramfs.cpio.gz`).
pub fn guest_files(kernel: &Path, initramfs: Option<&Path>) -> Vec<InitramfsFile> {
    let mut files = vec![InitramfsFile {
        path: "usr/share/diosix/guests/Image",
        source: kernel.to_path_buf(),
        mode: 0o644,
    }];
    if let Some(initramfs) = initramfs {
        files.push(InitramfsFile {
            path: "usr/share/diosix/guests/initramfs.cpio.gz",
            source: initramfs.to_path_buf(),
            mode: 0o644,
        });
    }
    files
}

/// The test guests the Root VM carries, for the QEMU cases that run them as its
/// children (`dsx run /usr/share/diosix/guests/NAME.elf`): (guest under `guests/`,
/// path in the initramfs).
pub const TEST_GUESTS: &[(&str, &str)] = &[(
    "virtio-hostile",
    "usr/share/diosix/guests/virtio-hostile.elf",
)];

/// Builds the [`TEST_GUESTS`] (reproducibly, debug sections stripped:
/// [`crate::guests::build_guest_reproducible`], into `rootvm-guests/` of the cargo
/// target directory) and returns each one's name and initramfs entry. Cargo decides
/// what to rebuild; the initramfs's cache key covers every file's contents, so a
/// changed guest makes a new initramfs.
pub fn test_guest_files() -> Result<Vec<(&'static str, InitramfsFile)>> {
    let dir = crate::cargo_target_dir().join("rootvm-guests");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    TEST_GUESTS
        .iter()
        .map(|&(name, path)| {
            println!("[tools] building guest {name}...");
            let source =
                crate::guests::build_guest_reproducible(name, &dir.join(format!("{name}.elf")))?;
            Ok((
                name,
                InitramfsFile {
                    path,
                    source,
                    mode: 0o644,
                },
            ))
        })
        .collect()
}

/// Builds `dsx` for riscv64 Linux, static and stripped, and returns its path in the
/// cache.
pub fn build_dsx() -> Result<PathBuf> {
    let root = workspace_root();
    let mut parts = vec![
        FORMAT_VERSION.to_string(),
        "dsx".to_string(),
        tool_version("rustc", &["-vV"])?,
        tool_version(&format!("{CROSS}gcc"), &["--version"])?,
        sha256_file(&root.join("Cargo.lock"))?,
        sha256_file(&root.join("Cargo.toml"))?,
    ];
    for dir in DSX_INPUTS {
        parts.push(hash_tree(&root, &root.join(dir))?);
    }
    let out = rootvm::cache_dir().join(format!("dsx-{}", key(&parts)));
    let binary = out.join("dsx");
    if binary.is_file() {
        println!("[tools] dsx: cached");
        return Ok(binary);
    }
    println!("[tools] building dsx ({LINUX_TARGET}, static)...");
    setup::ensure_rust_targets()?;
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        LINUX_TARGET.to_uppercase().replace('-', "_")
    );
    // Static, and with the build's paths remapped as in the hypervisor (panic messages
    // name source files). Given with --target, these flags reach only dsx and its
    // dependencies, not build scripts or proc-macros; the user's RUSTFLAGS are left out.
    let mut flags = vec!["-Ctarget-feature=+crt-static".to_string()];
    flags.extend(crate::build::reproducible_rustflags()?);
    let status = process::status(
        Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "-p", "dsx", "--target"])
            .arg(LINUX_TARGET)
            .env(&linker_var, format!("{CROSS}gcc"))
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f")),
    )
    .map_err(|e| format!("building dsx: {e}"))?;
    if !status.success() {
        return Err("building dsx failed (see the cargo output above)".into());
    }
    let built = crate::cargo_target_dir()
        .join(LINUX_TARGET)
        .join("release")
        .join("dsx");
    check_static(&built)?;
    let tmp = rootvm::fresh_tmp(&out)?;
    run(
        "stripping dsx",
        Command::new(format!("{CROSS}strip"))
            .arg("-o")
            .arg(tmp.join("dsx"))
            .arg(&built),
    )?;
    rootvm::commit(&tmp, &out)?;
    println!("[tools] dsx built: {} bytes", file_len(&binary));
    Ok(binary)
}

/// Builds `diosix.ko` against `linux_tree` (a configured kernel tree with
/// `Module.symvers`, i.e. `RootVmArtifacts::linux_tree`) and returns its path in the
/// cache.
pub fn build_driver(linux_tree: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let driver_dir = root.join("rootvm/driver");
    let header = root.join("crates/abi/include/diosix_sbi.h");
    let symvers = linux_tree.join("Module.symvers");
    if !symvers.is_file() {
        return Err(format!(
            "building diosix.ko: {} has no Module.symvers (the kernel must be built with \
             `make modules`)",
            linux_tree.display()
        ));
    }
    let parts = vec![
        FORMAT_VERSION.to_string(),
        "diosix.ko".to_string(),
        tool_version(&format!("{CROSS}gcc"), &["--version"])?,
        // The tree's directory name is its own cache key (sources, config, compiler);
        // the config and symbol versions are hashed too in case it was rebuilt in place.
        linux_tree.display().to_string(),
        sha256_file(&linux_tree.join(".config"))?,
        sha256_file(&symvers)?,
        hash_tree(&root, &driver_dir)?,
        sha256_file(&header)?,
    ];
    let out = rootvm::cache_dir().join(format!("diosix-ko-{}", key(&parts)));
    let module = out.join("diosix.ko");
    if module.is_file() {
        println!("[tools] diosix.ko: cached");
        return Ok(module);
    }
    println!(
        "[tools] building diosix.ko against {}...",
        linux_tree.display()
    );
    let tmp = rootvm::fresh_tmp(&out)?;
    // Built in a copy, so kbuild's objects never land in the source tree.
    let src = tmp.join("src");
    fs::create_dir_all(&src).map_err(|e| format!("cannot create {}: {e}", src.display()))?;
    for entry in read_dir_sorted(&driver_dir)? {
        if entry.is_file() {
            let name = entry.file_name().expect("files have names");
            copy(&entry, &src.join(name))?;
        }
    }
    copy(&header, &src.join("diosix_sbi.h"))?;
    run(
        "building diosix.ko",
        Command::new("make")
            .arg("-C")
            .arg(linux_tree)
            .arg("ARCH=riscv")
            .arg(format!("CROSS_COMPILE={CROSS}"))
            .arg(format!("M={}", src.display()))
            .arg("modules")
            .env("LC_ALL", "C"),
    )?;
    run(
        "stripping diosix.ko",
        Command::new(format!("{CROSS}strip"))
            .arg("--strip-debug")
            .arg("-o")
            .arg(tmp.join("diosix.ko"))
            .arg(src.join("diosix.ko")),
    )?;
    fs::remove_dir_all(&src).map_err(|e| format!("cannot remove {}: {e}", src.display()))?;
    rootvm::commit(&tmp, &out)?;
    println!("[tools] diosix.ko built: {} bytes", file_len(&module));
    Ok(module)
}

/// Fails unless `path` is an ELF without a program interpreter: the initramfs has no
/// dynamic loader or libc, so a dynamically linked `dsx` would not run there.
fn check_static(path: &Path) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = || format!("{} is not a 64-bit little-endian ELF", path.display());
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(bad());
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let ty = elf.get(at..at + 4).ok_or_else(bad)?;
        if u32::from_le_bytes(ty.try_into().expect("4 bytes")) == PT_INTERP {
            return Err(format!(
                "{} is dynamically linked; the Root VM needs it static (+crt-static)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Runs a short command, with its output shown only if it fails.
fn run(what: &str, cmd: &mut Command) -> Result<()> {
    process::run_quiet(cmd).map_err(|e| format!("{what}: {e}"))
}

/// The output of `tool args` (its version), proving it is installed.
fn tool_version(tool: &str, args: &[&str]) -> Result<String> {
    process::stdout(Command::new(tool).args(args))
        .ok_or_else(|| format!("{tool} not found or not working: run `cargo xtask setup`"))
}

/// The cache key over `parts` (see [`cache_key`]).
fn key(parts: &[String]) -> String {
    cache_key(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Hash of every file under `dir` (path relative to `root`, and contents), in a fixed
/// order. Directories named `target` are skipped: build output, not input.
fn hash_tree(root: &Path, dir: &Path) -> Result<String> {
    fn walk(root: &Path, dir: &Path, h: &mut Sha256) -> Result<()> {
        for path in read_dir_sorted(dir)? {
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                walk(root, &path, h)?;
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel = rel.to_string_lossy();
                h.update((rel.len() as u64).to_le_bytes());
                h.update(rel.as_bytes());
                h.update(sha256_file(&path)?.as_bytes());
            }
        }
        Ok(())
    }
    let mut h = Sha256::new();
    walk(root, dir, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    Ok(paths)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_files_are_under_guest_dir() {
        let files = guest_files(Path::new("/k"), Some(Path::new("/i")));
        assert_eq!(files.len(), 2);
        assert!(files
            .iter()
            .all(|f| f.path.starts_with("usr/share/diosix/guests/")));
        assert_eq!(guest_files(Path::new("/k"), None).len(), 1);
    }

    #[test]
    fn test_guests_are_guests_under_guest_dir() {
        for (name, path) in TEST_GUESTS {
            assert!(crate::guests::GUESTS.contains(name), "{name}");
            assert_eq!(*path, format!("usr/share/diosix/guests/{name}.elf"));
        }
    }

    #[test]
    fn static_check_reads_program_headers() {
        // This test binary is a host ELF linked dynamically (it has PT_INTERP).
        let me = std::env::current_exe().unwrap();
        if cfg!(target_os = "linux") && !cfg!(target_feature = "crt-static") {
            assert!(check_static(&me)
                .unwrap_err()
                .contains("dynamically linked"));
        }
        let dir = std::env::temp_dir().join(format!("xtask-tools-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        fs::write(&junk, b"not an elf").unwrap();
        assert!(check_static(&junk).unwrap_err().contains("not a 64-bit"));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn tree_hash_changes_with_contents() {
        let dir = std::env::temp_dir().join(format!("xtask-tree-{}", std::process::id()));
        fs::create_dir_all(dir.join("target")).unwrap();
        fs::write(dir.join("a"), b"1").unwrap();
        let h1 = hash_tree(&dir, &dir).unwrap();
        fs::write(dir.join("target/ignored"), b"x").unwrap();
        assert_eq!(hash_tree(&dir, &dir).unwrap(), h1);
        fs::write(dir.join("a"), b"2").unwrap();
        assert_ne!(hash_tree(&dir, &dir).unwrap(), h1);
        let _ = fs::remove_dir_all(dir);
    }
}
