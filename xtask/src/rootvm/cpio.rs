//! A writer of newc ("070701") cpio archives, the format the kernel unpacks an initramfs
//! from: entries built in memory (directories, files, symlinks, character devices), all
//! owned by root with mtime 0, written parents first, so no root, `mknod` or host
//! `cpio` is needed and the same tree always gives the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// An initramfs entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// The initramfs contents, keyed by path without a leading `/`. A BTreeMap so the archive
/// is in a fixed order in which every directory comes before its contents.
#[derive(Debug, Default)]
pub(super) struct Tree {
    entries: BTreeMap<String, (Node, u32)>,
}

impl Tree {
    pub(super) fn dir(&mut self, path: &str, perm: u32) {
        self.node(path, Node::Dir, perm);
    }

    pub(super) fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) {
        self.node(path, Node::File(data), perm);
    }

    /// Adds `path`, creating missing parent directories (mode 0755) first.
    pub(super) fn node(&mut self, path: &str, node: Node, perm: u32) {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.and_then(Path::to_str).filter(|p| !p.is_empty()) {
            self.entries
                .entry(p.to_string())
                .or_insert((Node::Dir, 0o755));
            parent = Path::new(p).parent();
        }
        self.entries.insert(path.to_string(), (node, perm));
    }

    /// Writes the tree as a newc ("070701") cpio archive, owned by root, mtime 0.
    pub(super) fn write_cpio(&self, w: &mut impl Write) -> std::io::Result<()> {
        for (ino, (path, (node, perm))) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040000, &[], (0, 0)),
                Node::File(d) => (0o100000, d, (0, 0)),
                Node::Symlink(t) => (0o120000, t.as_bytes(), (0, 0)),
                Node::CharDev { major, minor } => (0o020000, &[], (*major, *minor)),
            };
            let nlink = if *node == Node::Dir { 2 } else { 1 };
            let ino = u32::try_from(ino + 1).expect("fewer than 2^32 entries");
            cpio_entry(w, path, ino, kind | perm, nlink, data, rdev)?;
        }
        cpio_entry(w, "TRAILER!!!", 0, 0, 1, &[], (0, 0))
    }
}

/// One newc entry: a 110-byte ASCII header, the NUL-terminated name, the data, each
/// padded to 4 bytes.
fn cpio_entry(
    w: &mut impl Write,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) -> std::io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| std::io::Error::other(format!("{name}: too big for cpio")))?;
    let namesize = u32::try_from(name.len() + 1).expect("short names");
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, namesize, 0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])
}

/// Bytes needed to round `n` up to a multiple of 4.
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_newc_with_parents_first_and_aligned() {
        let mut t = Tree::default();
        t.file("etc/init.d/rcS", b"#!/bin/sh\n".to_vec(), 0o755);
        t.node("dev/console", Node::CharDev { major: 5, minor: 1 }, 0o600);
        let mut out = Vec::new();
        t.write_cpio(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let pos = |n: &str| text.find(n).unwrap();
        assert!(
            pos("etc\0") < pos("etc/init.d\0") && pos("etc/init.d\0") < pos("etc/init.d/rcS\0")
        );
        assert!(text.starts_with("070701"));
        // 110-byte header + "TRAILER!!!\0" = 121 bytes, padded to 124.
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
        // dev/console header: mode 020600, rdev 5:1.
        let hdr_start = pos("dev/console\0") - 110;
        let hdr = &text[hdr_start..hdr_start + 110];
        assert_eq!(&hdr[14..22], "00002180");
        assert_eq!(&hdr[78..94], "0000000500000001");
    }
}
