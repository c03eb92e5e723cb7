//! Where the Root VM's outputs are kept and how they are named: each lives in
//! [`cache_dir`] under `<name>-<key>`, the key a hash of everything that went into it
//! ([`cache_key`]), so an unchanged input finds its output and a changed one builds a new
//! one. Outputs are built in a `*.tmp.<pid>` directory ([`fresh_tmp`]) and renamed into
//! place only once complete ([`commit`]), so an interrupted or failed build is never
//! mistaken for a good one.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Result;

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
pub(crate) fn cache_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex(&h.finalize())[..24].to_string()
}

pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_depends_on_part_boundaries() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        assert_eq!(cache_key(&["x"]), cache_key(&["x"]));
        assert_eq!(cache_key(&["x"]).len(), 24);
    }
}
