//! `cargo xtask disk new FILE SIZE [--from DIR] [--force]`: a raw disk image with an
//! ext4 filesystem, for `cargo xtask run --disk FILE`. The Root VM mounts it at
//! `/var/lib/diosix` (`rootvm/initramfs/etc/init.d/rcS`).
//!
//! Made by the host's `mke2fs` (e2fsprogs) on a sparse file, so it needs no root, no
//! loop device and no mount; `--from DIR` copies DIR's files into it (`mke2fs -d`).
use crate::{process, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The filesystem label of the disks made here.
const LABEL: &str = "diosix";

const USAGE: &str = "usage: cargo xtask disk new FILE SIZE [--from DIR] [--force]
  FILE     the raw image to create (refused if it exists, unless --force)
  SIZE     bytes, or with K, M, G or T (powers of 1024), e.g. 256M
  --from   copy DIR's files into the new filesystem's root";

/// `cargo xtask disk ...`.
pub fn cmd_disk(args: &[String]) -> Result<()> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    if sub != "new" {
        return Err(format!("unknown `disk {sub}`\n{USAGE}"));
    }
    let (mut positional, mut from, mut force) = (Vec::new(), None, false);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--from" => from = Some(PathBuf::from(it.next().ok_or("--from needs a DIR")?)),
            "--force" => force = true,
            o if o.starts_with("--") => return Err(format!("unknown option `{o}`\n{USAGE}")),
            _ => positional.push(a.as_str()),
        }
    }
    let [file, size] = positional[..] else {
        return Err(USAGE.into());
    };
    let size = parse_size(size)?;
    let file = Path::new(file);
    new_disk(file, size, from.as_deref(), force)?;
    println!(
        "xtask: wrote {} ({} MiB, ext4, label {LABEL}); boot with: cargo xtask run --disk {}",
        file.display(),
        size >> 20,
        file.display()
    );
    Ok(())
}

/// A size in bytes: a number, optionally followed by K, M, G or T (powers of 1024; an
/// optional `iB` or `B` after it).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("bad size `{s}` (examples: 256M, 1G)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("bad size `{s}` (examples: 256M, 1G)"))
}

/// Creates `file` (`size` bytes, sparse) holding a new ext4 filesystem labelled
/// [`LABEL`], with `from`'s files in it if given.
pub fn new_disk(file: &Path, size: u64, from: Option<&Path>, force: bool) -> Result<()> {
    // mke2fs refuses less; a few MiB is the least that makes sense with a journal.
    const MIN: u64 = 8 << 20;
    if size < MIN {
        return Err(format!("disk size {size} is below the minimum of 8M"));
    }
    if !size.is_multiple_of(4096) {
        return Err(format!("disk size {size} is not a multiple of 4K"));
    }
    if let Some(dir) = from {
        if !dir.is_dir() {
            return Err(format!("--from {}: not a directory", dir.display()));
        }
    }
    if file.exists() && !force {
        return Err(format!(
            "{} exists; pass --force to replace it",
            file.display()
        ));
    }
    let mke2fs = ensure_mke2fs()?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let made = fs::File::create(file).and_then(|f| f.set_len(size));
    made.map_err(|e| format!("creating {}: {e}", file.display()))?;
    let mut cmd = Command::new(mke2fs);
    // -F: it is a file, not a block device; -m 0: no blocks reserved for root (a data
    // disk); the root directory owned by root whoever runs this.
    cmd.args(["-q", "-F", "-t", "ext4", "-L", LABEL, "-m", "0"])
        .args(["-E", "root_owner=0:0"]);
    if let Some(dir) = from {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(file);
    process::run_quiet(&mut cmd).inspect_err(|_| {
        // A half-made image must not be mistaken for a disk.
        let _ = fs::remove_file(file);
    })
}

/// `file` as an absolute path, if it is an existing regular file (for `--disk`).
pub fn existing_image(file: &Path) -> Result<PathBuf> {
    let meta = fs::metadata(file).map_err(|e| {
        format!(
            "--disk {}: {e} (make one with `cargo xtask disk new`)",
            file.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!("--disk {}: not a regular file", file.display()));
    }
    fs::canonicalize(file).map_err(|e| format!("--disk {}: {e}", file.display()))
}

/// The host's `mke2fs`. When it is missing, `cargo xtask setup`'s installation
/// (which has e2fsprogs among its packages) runs first.
fn ensure_mke2fs() -> Result<PathBuf> {
    if let Some(p) = find_mke2fs() {
        return Ok(p);
    }
    crate::setup::ensure_all()?;
    find_mke2fs().ok_or_else(|| {
        "mke2fs not found after `cargo xtask setup`; install e2fsprogs (1.43 or later)".into()
    })
}

/// `mke2fs` on `$PATH` or in the sbin directories (not on an ordinary user's `$PATH`).
fn find_mke2fs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mke2fs"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
