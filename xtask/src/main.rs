//! `cargo xtask`: builds, boots, tests and benchmarks Diosix.
//!
//! Every command installs what it is missing first (see [`setup`]) and says so.

mod bench;
mod build;
mod cheader;
mod devtests;
mod disk;
mod fuzz;
mod gdb;
mod guests;
#[cfg(test)]
mod layers;
mod process;
mod qemu;
mod repro;
mod rootvm;
mod sbom;
mod setup;
mod soak;
mod tests;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

/// Names another checkout for this xtask to build, instead of the one it was compiled
/// in: `cargo xtask repro` runs its two builds so, in copies of the tree (see [`repro`]).
pub const WORKSPACE_ENV: &str = "DIOSIX_WORKSPACE";

/// The workspace root: `$DIOSIX_WORKSPACE` if set, else the parent of this crate's
/// directory.
pub fn workspace_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(WORKSPACE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds for xtask's `cargo build`s: `$CARGO_TARGET_DIR`
/// (relative to the workspace, where xtask runs cargo), else `target/` in the workspace.
pub fn cargo_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Result type of every xtask step: errors are human-readable messages naming the step.
pub type Result<T> = std::result::Result<T, String>;

const HELP: &str = "\
cargo xtask <command> [options]

  run [--smp N] [--mem SIZE] [--disk FILE]... [--net] [--rng] [--opensbi] [--gdb] [build options]
                      build everything, then boot it in QEMU (interactive; Ctrl-a x quits);
                      --disk attaches a raw image as virtio-blk (repeatable), --net a
                      virtio-net (user networking; the guest's port 80 on a free host port
                      from 8080, printed), --rng a virtio-rng (/dev/hwrng), --opensbi boots the Root VM's Linux on QEMU's
                      OpenSBI instead of under Diosix (takes --cmdline TEXT); --gdb starts
                      QEMU halted with its GDB stub (then `cargo xtask gdb` attaches)
  gdb [--image FILE] [--remote HOST:PORT] [-- GDB-ARGS]
                      attach gdb-multiarch to a `run --gdb` (or `test --gdb CASE`) with the
                      hypervisor's and the Root VM kernel's symbols (docs/debugging.md)
  disk new FILE SIZE [--from DIR] [--force]
                      make a raw disk image (e.g. 256M) with an ext4 filesystem, DIR's
                      files in it; the Root VM mounts it at /var/lib/diosix
  build [--root-vm FILE] [--out OUT] [--demo]
                      build the hypervisor image (default: target/diosix.elf) with the
                      Linux Root VM, the demo guest (--demo), or FILE (ELF or Linux Image),
                      and its bill of materials beside it (target/diosix.sbom.json)
  repro [--full] [--keep]
                      build the image twice, in two copies of this tree, and compare
                      the SHA-256 of the images and bills of materials; Linux, busybox and
                      Lua come from the cache unless --full (empty caches, ~20 min)
  test [--gdb] [FILTER...]
                      every test: host unit tests, lints, then QEMU boot tests; FILTERs
                      pick QEMU cases; --gdb runs one case halted for `cargo xtask gdb`
  bench               instruction-count benchmarks, Diosix vs OpenSBI (-icount shift=0)
  soak [--minutes N] [--seed S] [--smp N]
                      the Linux soak test: random dsx operations on Linux children and
                      grandchildren for N minutes (default 10), then checks that RAM and
                      hypervisor heap are back and nothing was logged (docs/dsx.md)
  setup               install what the build needs (apt packages, rustup targets)
  cheader             regenerate crates/abi/include/diosix_sbi.h from the ABI crate
  fuzz [--iterations N] [--target NAME] [--seed S] [--no-coverage]
                      coverage-guided host fuzzing of every parser a guest or the firmware
                      feeds (default 1,000,000 inputs per target; see docs/fuzzing.md);
                      --list names the targets, --replay FILE --target NAME reruns a finding
  help                this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", Vec::new()),
    };
    let result = match cmd {
        "build" => build::cmd_build(&rest).map(|_| ()),
        "run" => qemu::cmd_run(&rest),
        "gdb" => gdb::cmd_gdb(&rest),
        "repro" => repro::cmd_repro(&rest),
        "disk" => disk::cmd_disk(&rest),
        "test" => tests::cmd_test(&rest),
        "bench" => bench::cmd_bench(&rest),
        "soak" => soak::cmd_soak(&rest),
        "setup" => setup::ensure_all(),
        "cheader" => cheader::cmd_cheader(&rest),
        "fuzz" => fuzz::cmd_fuzz(&rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
