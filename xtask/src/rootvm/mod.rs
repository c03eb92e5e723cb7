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
//! 6. a gzip'd newc cpio initramfs from busybox, Lua, `rootvm/initramfs/`, the tools,
//!    `diosix-workloads` (the Linux workload benchmarks, `rootvm/workloads/`), the
//!    guest Linux and the test guests the QEMU cases run as children
//!    (`tools::TEST_GUESTS`; all under `/usr/share/diosix/guests/`).
//!
//! Each output lives in [`cache_dir`] (outside the clone: the kernel tree alone is ~1.5 GB)
//! under a name derived from a hash of everything that went into it, so an unchanged
//! rebuild only re-hashes a few small files, and changing one input rebuilds only what
//! depends on it. Outputs are built in a `*.tmp.<pid>` directory and renamed into place
//! only once complete, so an interrupted or failed build is never mistaken for a good one.
//! See `docs/rootvm.md`.
//!
//! One file per job:
//!
//! - `sources.rs`: `rootvm/sources.manifest`, fetching and verifying the tarballs;
//! - `builds.rs`: Linux, busybox and Lua;
//! - `initramfs.rs`: assembling an initramfs, written by `cpio.rs` (the newc writer);
//! - `cache.rs`: where outputs are kept, their hashed names, the build-then-rename;
//! - `workloads.rs`: `diosix-workloads`, the C program `cargo xtask bench` runs;
//! - `util.rs`: file, size and duration helpers, and the check for host tools.
//!
//! The commands are run by [`crate::process`] (quietly, or logged with progress).

mod builds;
mod cache;
mod cpio;
mod initramfs;
mod sources;
mod util;
mod workloads;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

pub use cache::cache_dir;
pub(crate) use cache::{cache_key, commit, fresh_tmp, hex, sha256_file};
pub use workloads::BENCH_CMDLINE_OPTION;

use builds::{build_busybox, build_linux, build_lua};
use initramfs::{build_initramfs, InitramfsSpec};
use sources::Manifest;
pub use sources::PinnedSource;
use util::{fmt_duration, fmt_size};

use crate::{process, Result};

/// Mixed into every cache key. Bump it when a change to this module (any file under
/// `xtask/src/rootvm/`) changes what a step produces, so outputs built by the old code
/// are not reused.
const FORMAT_VERSION: &str = "diosix-rootvm-1";

/// `SOURCE_DATE_EPOCH` for the Root VM's builds: what a build that would read the clock
/// (busybox's version banner, `BusyBox v1.35.0 (1970-01-01 00:00:00 UTC)`) uses
/// instead. Fixed rather than the commit's time, so a new commit does not rebuild the
/// kernel or busybox; the kernel's own `KBUILD_BUILD_TIMESTAMP` says the same date.
pub(crate) const BUILD_EPOCH: &str = "0";

/// The time zone the Root VM's programs are built in: kbuild and busybox's kconfig read
/// their fixed dates in the local one (see `builds.rs`).
pub(crate) const BUILD_TZ: &str = "UTC";

/// Prefix of the cross toolchain (Debian's `gcc-riscv64-linux-gnu`).
pub(crate) const CROSS: &str = "riscv64-linux-gnu-";

/// The kernel command line the Root VM boots with. The initramfs has a `/init`, so no
/// `rdinit=` is needed; `hvc0` is the SBI debug console, the only console the Root VM has.
pub const DEFAULT_CMDLINE: &str = "console=hvc0 earlycon=sbi";

/// Number of `[rootvm] ... (step n/STEPS)` steps printed.
const STEPS: usize = 6;

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
    /// What the Root VM was built from and of, for the bill of materials.
    pub provenance: RootVmProvenance,
}

/// What went into the Root VM: its pinned sources and the programs built from them and
/// from this repository, for the bill of materials (`sbom.rs`).
#[derive(Debug, Clone)]
pub struct RootVmProvenance {
    /// Every line of `rootvm/sources.manifest`.
    pub sources: Vec<PinnedSource>,
    /// The cross compiler's `--version` output.
    pub cross_gcc_version: String,
    /// Built files in the Root VM initramfs: (what, file), `what` one of `busybox`,
    /// `lua`, `dsx`, `diosix.ko`, `diosix-workloads`, `guest-initramfs`, or a test
    /// guest's name (`tools::TEST_GUESTS`).
    pub built: Vec<(&'static str, PathBuf)>,
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
    let mut built = vec![("busybox", busybox.binary.clone()), ("lua", lua.clone())];
    for (what, path) in [
        ("dsx", "usr/bin/dsx"),
        ("diosix.ko", "lib/modules/diosix.ko"),
    ] {
        if let Some(f) = tools.iter().find(|f| f.path == path) {
            built.push((what, f.source.clone()));
        }
    }
    built.push(("guest-initramfs", guest_initramfs.clone()));
    let mut extra = tools;
    // Only the Root VM's: `cargo xtask bench` runs it there (workloads.rs), and puts
    // it on the disk of the child it runs the disk benchmarks in.
    let workloads = workloads::build_workloads(&gcc_version)?;
    built.push(("diosix-workloads", workloads.source.clone()));
    extra.push(workloads);
    // Only the Root VM's too: the test guests the QEMU cases run as its children.
    for (name, file) in crate::tools::test_guest_files()? {
        built.push((name, file.source.clone()));
        extra.push(file);
    }
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
        provenance: RootVmProvenance {
            sources: manifest.sources().iter().map(|s| s.pinned()).collect(),
            cross_gcc_version: gcc_version,
            built,
        },
    })
}

/// Every source `rootvm/sources.manifest` pins.
pub fn pinned_sources() -> Result<Vec<PinnedSource>> {
    let manifest = Manifest::load(&rootvm_dir().join("sources.manifest"))?;
    Ok(manifest.sources().iter().map(|s| s.pinned()).collect())
}

/// `rootvm/` in the workspace: the manifest, configs and initramfs files.
fn rootvm_dir() -> PathBuf {
    crate::workspace_root().join("rootvm")
}

/// Prints that step `n` of [`STEPS`] starts.
fn step(n: usize, what: &str) {
    println!("[rootvm] {what} (step {n}/{STEPS})...");
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
