//! `diosix-workloads`, the Linux workload benchmarks `cargo xtask bench` runs in the
//! Root VM (`rootvm/workloads/diosix-workloads.c`): one small C program, compiled
//! static with the cross compiler, stripped, and put in the Root VM initramfs as
//! `/usr/bin/diosix-workloads`. `/etc/init.d/rcS` runs it, then powers off, when the
//! kernel command line has [`BENCH_CMDLINE_OPTION`].
//!
//! Kept in the cache under a key over the source, the flags and the compiler, like the
//! other steps, so changing the source rebuilds it (and so the initramfs).

use std::path::PathBuf;
use std::process::Command;

use super::cache::{cache_dir, cache_key, commit, fresh_tmp, sha256_file};
use super::util::fmt_size;
use super::{CROSS, FORMAT_VERSION};
use crate::tools::InitramfsFile;
use crate::{process, Result};

/// The kernel command-line option that makes the Root VM's `rcS` run the workloads and
/// power off instead of starting a login.
pub const BENCH_CMDLINE_OPTION: &str = "diosix.bench=workloads";

/// Where the program goes in the initramfs (without the leading `/`).
const INITRAMFS_PATH: &str = "usr/bin/diosix-workloads";

/// The source, in `rootvm/workloads/`.
const SOURCE: &str = "diosix-workloads.c";

/// The compiler flags, part of the cache key.
const CFLAGS: &[&str] = &["-static", "-O2", "-Wall", "-Wextra"];

/// Builds `diosix-workloads` (or finds it cached) and returns its initramfs entry.
pub(super) fn build_workloads(gcc_version: &str) -> Result<InitramfsFile> {
    let dir = super::rootvm_dir().join("workloads");
    let source = dir.join(SOURCE);
    let key = cache_key(&[
        FORMAT_VERSION,
        "diosix-workloads",
        &sha256_file(&source)?,
        &CFLAGS.join(" "),
        gcc_version,
    ]);
    let out = cache_dir().join(format!("diosix-workloads-{key}"));
    let binary = out.join("diosix-workloads");
    let file = |source: PathBuf| InitramfsFile {
        path: INITRAMFS_PATH,
        source,
        mode: 0o755,
    };
    if binary.is_file() {
        println!("[rootvm] diosix-workloads: cached");
        return Ok(file(binary));
    }
    println!("[rootvm] building diosix-workloads (static)...");
    let tmp = fresh_tmp(&out)?;
    // Absolute: gcc runs in the source directory ($DIOSIX_CACHE may be relative).
    let unstripped = std::path::absolute(tmp.join("diosix-workloads.unstripped"))
        .map_err(|e| format!("cannot resolve {}: {e}", tmp.display()))?;
    // Compiled in its directory under its bare name: the name goes into the symbol
    // table, and so into the build ID the link computes, which stripping keeps; a
    // full path would make each clone's binary (and initramfs) different.
    process::run_quiet(
        Command::new(format!("{CROSS}gcc"))
            .current_dir(&dir)
            .args(CFLAGS)
            .arg("-o")
            .arg(&unstripped)
            .arg(SOURCE)
            .env("LC_ALL", "C"),
    )
    .map_err(|e| format!("compiling {}: {e}", source.display()))?;
    process::run_quiet(
        Command::new(format!("{CROSS}strip"))
            .arg("-o")
            .arg(tmp.join("diosix-workloads"))
            .arg(&unstripped),
    )
    .map_err(|e| format!("stripping diosix-workloads: {e}"))?;
    std::fs::remove_file(&unstripped)
        .map_err(|e| format!("cannot remove {}: {e}", unstripped.display()))?;
    commit(&tmp, &out)?;
    println!("[rootvm] diosix-workloads built: {}", fmt_size(&binary));
    Ok(file(binary))
}
