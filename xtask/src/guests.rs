//! Builds the no_std test guests (`guests/<name>`, package `diosix-guest-<name>`).
use crate::{process, workspace_root, Result};
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

/// The target every guest is built for.
pub const GUEST_TARGET: &str = "riscv64gc-unknown-none-elf";

/// Guest crates under `guests/` (the runtime `rt` is a library, not a guest).
pub const GUESTS: &[&str] = &[
    "demo",
    "sbi-tests",
    "sbi-testing",
    "smp",
    "bench",
    "vmtree",
    "vmchild",
    "hostile",
    "virtio-hostile",
];

/// Cargo package name of guest `name`.
pub fn package(name: &str) -> String {
    format!("diosix-guest-{name}")
}

/// Builds guest `name` (release, riscv64) and returns the path of its ELF.
pub fn build_guest(name: &str) -> Result<PathBuf> {
    if !GUESTS.contains(&name) {
        return Err(format!(
            "unknown guest `{name}` (known: {})",
            GUESTS.join(", ")
        ));
    }
    let root = workspace_root();
    let mut cmd = Command::new(env!("CARGO"));
    if name == "vmtree" {
        // vmtree embeds vmchild's ELF (see guests/vmtree/build.rs).
        cmd.env("DIOSIX_VMCHILD_ELF", build_guest("vmchild")?);
    }
    let status = process::status(
        cmd.current_dir(&root)
            .args(["build", "--release", "--target", GUEST_TARGET, "-p"])
            .arg(package(name)),
    )
    .map_err(|e| format!("building guest {name}: {e}"))?;
    if !status.success() {
        return Err(format!("building guest {name}: cargo failed ({status})"));
    }
    let elf = root
        .join("target")
        .join(GUEST_TARGET)
        .join("release")
        .join(name);
    if !elf.is_file() {
        return Err(format!(
            "building guest {name}: {} missing after build",
            elf.display()
        ));
    }
    Ok(elf)
}

/// Builds guest `name` (release, riscv64) for an image that must be reproducible (the
/// Root VM's initramfs carries it, see `tools::test_guest_files`): with
/// [`crate::build::reproducible_rustflags`], in a target directory of its own under
/// the cargo target directory (`rootvm-guests/`, so the flags never make cargo
/// rebuild what [`build_guest`] built), then its debug sections stripped into `out`.
/// Returns `out`.
pub fn build_guest_reproducible(name: &str, out: &Path) -> Result<PathBuf> {
    if !GUESTS.contains(&name) {
        return Err(format!("unknown guest `{name}`"));
    }
    crate::setup::ensure_rust_targets()?;
    let target_dir = crate::cargo_target_dir().join("rootvm-guests");
    let status = process::status(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(["build", "--quiet", "--release", "--target", GUEST_TARGET])
            .arg("--target-dir")
            .arg(&target_dir)
            .arg("-p")
            .arg(package(name))
            .env_remove("RUSTFLAGS")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                crate::build::reproducible_rustflags()?.join("\x1f"),
            ),
    )
    .map_err(|e| format!("building guest {name}: {e}"))?;
    if !status.success() {
        return Err(format!("building guest {name}: cargo failed ({status})"));
    }
    let elf = target_dir.join(GUEST_TARGET).join("release").join(name);
    // Its symbols stay (for a debugger); the debug sections name build paths.
    process::run_quiet(
        Command::new(format!("{}strip", crate::rootvm::CROSS))
            .arg("--strip-debug")
            .arg("-o")
            .arg(out)
            .arg(&elf),
    )
    .map_err(|e| format!("stripping guest {name}: {e}"))?;
    Ok(out.to_path_buf())
}
