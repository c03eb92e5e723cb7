//! Builds the hypervisor image with its embedded Root VM payload.
use crate::Result;
use std::path::PathBuf;

/// `cargo xtask build`: returns the path of the image written.
pub fn cmd_build(_args: &[String]) -> Result<PathBuf> {
    Err("not yet".into())
}

/// `cargo xtask run`.
pub fn cmd_run(_args: &[String]) -> Result<()> {
    Err("not yet".into())
}
