//! Small helpers the Root VM steps share: reading and writing files with errors that
//! name the path, sizes and durations for progress messages, and the check that the
//! host tools a step runs are installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Result;

/// Fails naming the Debian package to install when one of `tools` is not on `PATH`.
pub(super) fn need_tools(what: &str, tools: &[&str]) -> Result<()> {
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

/// The only file in `dir` whose name ends with `suffix`.
pub(super) fn find_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .ok_or_else(|| format!("no *{suffix} in {}", dir.display()))
}

pub(super) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub(super) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub(super) fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub(super) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

pub(super) fn fmt_size(path: &Path) -> String {
    let bytes = fs::metadata(path).map_or(0, |m| m.len());
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
