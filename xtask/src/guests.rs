//! Builds the no_std test guests (`guests/<name>`, package `diosix-guest-<name>`).
use crate::{process, workspace_root, Result};
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
