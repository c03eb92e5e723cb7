//! The container carrying the Root VM (kernel, optional initrd and command line, and a
//! little VM configuration) inside the hypervisor image.
//!
//! The build tool [`encode`]s it and places the bytes in their own ELF segment; the
//! hypervisor [`Payload::parse`]s them at boot. A corrupt payload (bad build, flipped
//! bits in flash) must produce a clear error, never a panic or an out-of-bounds read.
//!
//! Layout, all little-endian:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `b"DSXPAYLD"` |
//! | 8  | 4 | format version, [`FORMAT_VERSION`] |
//! | 12 | 4 | entry count |
//! | 16 | 8 | total size in bytes (header, entries and blobs) |
//! | 24 | 4 | vCPUs (0 = one per host hart) |
//! | 28 | 4 | RAM in MiB (0 = hypervisor default) |
//! | 32 | 32 | reserved, written as zero, ignored |
//!
//! then `entry count` entries of 24 bytes at offset 64: kind u32 ([`KIND_KERNEL`],
//! [`KIND_INITRD`], [`KIND_CMDLINE`]), reserved u32, offset u64 from the payload start,
//! size u64. Each blob starts on a 4096-byte boundary so the hypervisor could map it
//! in place. Bytes after `total size` (segment padding) are ignored.
//!
//! A payload is not only the build tool's output: a guest's SPAWN image may be one, so
//! every size in it is hostile. Blobs are borrowed, never copied, here; the command
//! line is the one blob the hypervisor copies into its own heap (into the guest's
//! device tree), so it is capped at [`MAX_CMDLINE_BYTES`].

use alloc::vec::Vec;
use core::fmt;

/// The first eight bytes of every payload.
pub const MAGIC: [u8; 8] = *b"DSXPAYLD";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_SIZE: usize = 64;
/// Entry size in bytes.
pub const ENTRY_SIZE: usize = 24;
/// Alignment of every blob.
pub const BLOB_ALIGN: usize = 4096;
/// More entries than this is corruption, not a payload (there are three kinds).
pub const MAX_ENTRIES: u32 = 16;
/// Entry kind: the Root VM's kernel image (ELF or raw RISC-V `Image`).
pub const KIND_KERNEL: u32 = 1;
/// Entry kind: an initial RAM disk.
pub const KIND_INITRD: u32 = 2;
/// Entry kind: the kernel command line, UTF-8 without NUL bytes.
pub const KIND_CMDLINE: u32 = 3;
/// The longest command line accepted, in bytes (without a terminating NUL).
///
/// The hypervisor copies the command line into its heap while it writes the guest's
/// device tree, and a SPAWN image's payload comes from a guest, so the length must be
/// bounded before anything is copied. One page: four times rv64 Linux's
/// `COMMAND_LINE_SIZE` (1024, and Linux truncates longer ones anyway), room enough for
/// other kernels, and small next to the 64 KiB a generated device tree may take
/// ([`crate::loader::DTB_RESERVE`]).
pub const MAX_CMDLINE_BYTES: usize = 4096;

/// Why a payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Fewer bytes than the header, the declared total size, or the entry table needs.
    Truncated,
    /// The magic is not `DSXPAYLD`.
    BadMagic,
    /// A format version this code does not understand.
    UnsupportedVersion(u32),
    /// The declared total size cannot hold the header.
    BadTotalSize(u64),
    /// More than [`MAX_ENTRIES`] entries.
    TooManyEntries(u32),
    /// Entry `index` has a kind this version does not define.
    UnknownKind {
        /// Entry number.
        index: u32,
        /// The kind found.
        kind: u32,
    },
    /// Entry `index` points outside the payload, or into the header or entry table.
    EntryOutOfBounds(u32),
    /// Entry `index`'s offset or size overflows.
    Overflow(u32),
    /// Entry `index`'s blob does not start on a 4096-byte boundary.
    Misaligned(u32),
    /// Entry `index`'s blob overlaps another blob.
    Overlap(u32),
    /// A second entry of this kind.
    Duplicate(u32),
    /// No kernel entry.
    MissingKernel,
    /// The kernel entry is empty.
    EmptyKernel,
    /// The command line is not UTF-8 or contains a NUL byte.
    BadCmdline,
    /// The command line is longer than [`MAX_CMDLINE_BYTES`] (its length in bytes).
    CmdlineTooLong(u64),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Truncated => f.write_str("payload truncated"),
            PayloadError::BadMagic => f.write_str("payload magic is not DSXPAYLD"),
            PayloadError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "payload format version {v} not supported (expected {FORMAT_VERSION})"
                )
            }
            PayloadError::BadTotalSize(s) => write!(f, "payload total size {s} is impossible"),
            PayloadError::TooManyEntries(n) => {
                write!(f, "payload has {n} entries (at most {MAX_ENTRIES})")
            }
            PayloadError::UnknownKind { index, kind } => {
                write!(f, "payload entry {index} has unknown kind {kind}")
            }
            PayloadError::EntryOutOfBounds(i) => write!(f, "payload entry {i} is out of bounds"),
            PayloadError::Overflow(i) => write!(f, "payload entry {i} offset/size overflows"),
            PayloadError::Misaligned(i) => {
                write!(f, "payload entry {i} is not {BLOB_ALIGN}-byte aligned")
            }
            PayloadError::Overlap(i) => write!(f, "payload entry {i} overlaps another entry"),
            PayloadError::Duplicate(k) => write!(f, "payload has two entries of kind {k}"),
            PayloadError::MissingKernel => f.write_str("payload has no kernel"),
            PayloadError::EmptyKernel => f.write_str("payload kernel is empty"),
            PayloadError::BadCmdline => {
                f.write_str("payload command line is not UTF-8 or contains NUL")
            }
            PayloadError::CmdlineTooLong(n) => {
                write!(
                    f,
                    "payload command line is {n} bytes (at most {MAX_CMDLINE_BYTES})"
                )
            }
        }
    }
}

/// What the build tool puts in a payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadSpec<'a> {
    /// The kernel image (must not be empty).
    pub kernel: &'a [u8],
    /// An optional initial RAM disk.
    pub initrd: Option<&'a [u8]>,
    /// An optional kernel command line (must not contain NUL).
    pub cmdline: Option<&'a str>,
    /// vCPUs for the Root VM; 0 = one per host hart.
    pub vcpus: u32,
    /// RAM for the Root VM in MiB; 0 = the hypervisor's default.
    pub ram_mib: u32,
}

/// A parsed payload, borrowing the blobs from the input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The kernel image.
    pub kernel: &'a [u8],
    /// The initial RAM disk, if any.
    pub initrd: Option<&'a [u8]>,
    /// The command line, if any.
    pub cmdline: Option<&'a str>,
    /// vCPUs for the Root VM; 0 = one per host hart.
    pub vcpus: u32,
    /// RAM for the Root VM in MiB; 0 = the hypervisor's default.
    pub ram_mib: u32,
}

fn align_up(x: usize) -> usize {
    x.div_ceil(BLOB_ALIGN) * BLOB_ALIGN
}

/// Serialises `spec` into the payload format. Used on the build host, where the inputs
/// are trusted, so this only refuses what [`Payload::parse`] would (an empty kernel, a
/// command line with NUL or longer than [`MAX_CMDLINE_BYTES`]).
pub fn encode(spec: &PayloadSpec<'_>) -> Result<Vec<u8>, PayloadError> {
    if spec.kernel.is_empty() {
        return Err(PayloadError::EmptyKernel);
    }
    if let Some(c) = spec.cmdline {
        if c.contains('\0') {
            return Err(PayloadError::BadCmdline);
        }
        if c.len() > MAX_CMDLINE_BYTES {
            return Err(PayloadError::CmdlineTooLong(c.len() as u64));
        }
    }
    let mut blobs: Vec<(u32, &[u8])> = alloc::vec![(KIND_KERNEL, spec.kernel)];
    if let Some(i) = spec.initrd {
        blobs.push((KIND_INITRD, i));
    }
    if let Some(c) = spec.cmdline {
        blobs.push((KIND_CMDLINE, c.as_bytes()));
    }

    let mut placed = Vec::with_capacity(blobs.len());
    let mut at = align_up(HEADER_SIZE + blobs.len() * ENTRY_SIZE);
    for &(kind, bytes) in &blobs {
        placed.push((kind, at, bytes));
        at = align_up(at + bytes.len());
    }
    let total = placed
        .last()
        .map_or(HEADER_SIZE, |&(_, off, b)| off + b.len());

    let mut out = alloc::vec![0u8; total];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(blobs.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&(total as u64).to_le_bytes());
    out[24..28].copy_from_slice(&spec.vcpus.to_le_bytes());
    out[28..32].copy_from_slice(&spec.ram_mib.to_le_bytes());
    for (i, &(kind, off, bytes)) in placed.iter().enumerate() {
        let e = HEADER_SIZE + i * ENTRY_SIZE;
        out[e..e + 4].copy_from_slice(&kind.to_le_bytes());
        out[e + 8..e + 16].copy_from_slice(&(off as u64).to_le_bytes());
        out[e + 16..e + 24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        out[off..off + bytes.len()].copy_from_slice(bytes);
    }
    Ok(out)
}

fn le_u32(b: &[u8], at: usize) -> Result<u32, PayloadError> {
    let s = b.get(at..at + 4).ok_or(PayloadError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u64(b: &[u8], at: usize) -> Result<u64, PayloadError> {
    let lo = le_u32(b, at)?;
    let hi = le_u32(b, at + 4)?;
    Ok(u64::from(lo) | (u64::from(hi) << 32))
}

/// Where a payload's blobs lie, as offsets into it: what [`PayloadIndex::parse`] reads
/// from the header and entry table alone (the first [`INDEX_WINDOW`] bytes at most), so
/// a payload need not be contiguous in memory to be checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadIndex {
    /// The kernel's bytes (non-empty).
    pub kernel: core::ops::Range<usize>,
    /// The initrd's bytes.
    pub initrd: Option<core::ops::Range<usize>>,
    /// The command line's bytes (at most [`MAX_CMDLINE_BYTES`]; check them with
    /// [`check_cmdline`]).
    pub cmdline: Option<core::ops::Range<usize>>,
    /// vCPUs for the Root VM; 0 = one per host hart.
    pub vcpus: u32,
    /// RAM for the Root VM in MiB; 0 = the hypervisor's default.
    pub ram_mib: u32,
}

/// Bytes of a payload's start that hold its header and the largest entry table.
pub const INDEX_WINDOW: usize = HEADER_SIZE + MAX_ENTRIES as usize * ENTRY_SIZE;

/// A payload command line's bytes as the string they must be: UTF-8 without NUL (it
/// becomes a NUL-terminated device-tree string, which an embedded NUL would cut).
pub fn check_cmdline(bytes: &[u8]) -> Result<&str, PayloadError> {
    let s = core::str::from_utf8(bytes).map_err(|_| PayloadError::BadCmdline)?;
    if s.contains('\0') {
        return Err(PayloadError::BadCmdline);
    }
    Ok(s)
}

impl PayloadIndex {
    /// Parses and checks the header and entry table of a payload of `len` bytes whose
    /// first bytes are `head` (all of them, or at least [`INDEX_WINDOW`]). Every blob is
    /// checked to lie inside the declared total size, which must fit in `len`. See the
    /// module documentation for the layout and [`PayloadError`] for what is refused.
    pub fn parse(head: &[u8], len: usize) -> Result<Self, PayloadError> {
        let head = &head[..head.len().min(len)];
        if head.len() < HEADER_SIZE {
            return Err(PayloadError::Truncated);
        }
        if head[0..8] != MAGIC {
            return Err(PayloadError::BadMagic);
        }
        let version = le_u32(head, 8)?;
        if version != FORMAT_VERSION {
            return Err(PayloadError::UnsupportedVersion(version));
        }
        let count = le_u32(head, 12)?;
        let total = le_u64(head, 16)?;
        let vcpus = le_u32(head, 24)?;
        let ram_mib = le_u32(head, 28)?;
        if total < HEADER_SIZE as u64 {
            return Err(PayloadError::BadTotalSize(total));
        }
        let total = usize::try_from(total).map_err(|_| PayloadError::Truncated)?;
        if total > len {
            return Err(PayloadError::Truncated);
        }
        if count > MAX_ENTRIES {
            return Err(PayloadError::TooManyEntries(count));
        }
        // Bounded by MAX_ENTRIES, so no overflow.
        let table_end = HEADER_SIZE + count as usize * ENTRY_SIZE;
        if table_end > total || table_end > head.len() {
            return Err(PayloadError::Truncated);
        }

        let mut kernel = None;
        let mut initrd = None;
        let mut cmdline = None;
        let mut spans: Vec<(usize, usize, u32)> = Vec::new();
        for index in 0..count {
            let e = HEADER_SIZE + index as usize * ENTRY_SIZE;
            let kind = le_u32(head, e)?;
            let off = le_u64(head, e + 8)?;
            let size = le_u64(head, e + 16)?;
            // Refused before anything looks at the bytes: the hypervisor copies the
            // command line into its heap, and a SPAWN image's payload is hostile.
            if kind == KIND_CMDLINE && size > MAX_CMDLINE_BYTES as u64 {
                return Err(PayloadError::CmdlineTooLong(size));
            }
            let end = off.checked_add(size).ok_or(PayloadError::Overflow(index))?;
            let (off, end) = match (usize::try_from(off), usize::try_from(end)) {
                (Ok(o), Ok(e)) => (o, e),
                _ => return Err(PayloadError::EntryOutOfBounds(index)),
            };
            if off < table_end || end > total {
                return Err(PayloadError::EntryOutOfBounds(index));
            }
            if off & (BLOB_ALIGN - 1) != 0 {
                return Err(PayloadError::Misaligned(index));
            }
            if spans.iter().any(|&(o, e, _)| off < e && o < end) {
                return Err(PayloadError::Overlap(index));
            }
            spans.push((off, end, index));
            let slot = match kind {
                KIND_KERNEL => &mut kernel,
                KIND_INITRD => &mut initrd,
                KIND_CMDLINE => &mut cmdline,
                _ => return Err(PayloadError::UnknownKind { index, kind }),
            };
            if slot.replace(off..end).is_some() {
                return Err(PayloadError::Duplicate(kind));
            }
        }

        let kernel = kernel.ok_or(PayloadError::MissingKernel)?;
        if kernel.is_empty() {
            return Err(PayloadError::EmptyKernel);
        }
        Ok(Self {
            kernel,
            // An empty initrd is no initrd (a guest told of a zero-byte one could
            // never be built: found by the fuzzer).
            initrd: initrd.filter(|r| !r.is_empty()),
            cmdline,
            vcpus,
            ram_mib,
        })
    }
}

impl<'a> Payload<'a> {
    /// Parses and fully validates a payload. See the module documentation for the
    /// layout and [`PayloadError`] for what is refused.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PayloadError> {
        let index = PayloadIndex::parse(bytes, bytes.len())?;
        // The index checked every range against the payload's total size, which fits
        // in `bytes`: these slices are in bounds.
        let blob = |r: core::ops::Range<usize>| bytes.get(r).ok_or(PayloadError::Truncated);
        let cmdline = match index.cmdline {
            Some(r) => Some(check_cmdline(blob(r)?)?),
            None => None,
        };
        Ok(Payload {
            kernel: blob(index.kernel)?,
            initrd: index.initrd.map(blob).transpose()?,
            cmdline,
            vcpus: index.vcpus,
            ram_mib: index.ram_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_empty_initrd_is_none() {
        let bytes = encode(&PayloadSpec {
            kernel: &[0x13; 64],
            initrd: Some(b""),
            ..PayloadSpec::default()
        })
        .unwrap();
        assert_eq!(Payload::parse(&bytes).unwrap().initrd, None);
    }

    #[test]
    fn the_index_needs_only_the_window() {
        let bytes = sample();
        let index = PayloadIndex::parse(&bytes[..INDEX_WINDOW], bytes.len()).unwrap();
        let p = Payload::parse(&bytes).unwrap();
        assert_eq!(&bytes[index.kernel.clone()], p.kernel);
        assert_eq!(index.initrd.clone().map(|r| &bytes[r]), p.initrd);
        let cmdline = check_cmdline(&bytes[index.cmdline.clone().unwrap()]).unwrap();
        assert_eq!(Some(cmdline), p.cmdline);
        // A payload claiming more bytes than there are is truncated.
        assert_eq!(
            PayloadIndex::parse(&bytes[..INDEX_WINDOW], bytes.len() - 1),
            Err(PayloadError::Truncated)
        );
    }

    fn sample() -> Vec<u8> {
        encode(&PayloadSpec {
            kernel: &[0x13; 5000],
            initrd: Some(b"initrd!"),
            cmdline: Some("console=hvc0 earlycon=sbi"),
            vcpus: 2,
            ram_mib: 256,
        })
        .unwrap()
    }

    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn round_trip_and_layout() {
        let b = sample();
        let p = Payload::parse(&b).unwrap();
        assert_eq!(p.kernel, &[0x13; 5000][..]);
        assert_eq!(p.initrd, Some(&b"initrd!"[..]));
        assert_eq!(p.cmdline, Some("console=hvc0 earlycon=sbi"));
        assert_eq!((p.vcpus, p.ram_mib), (2, 256));
        // Kernel at 4 KiB, initrd at 12 KiB (after 5000 bytes rounded up), cmdline next.
        assert_eq!(&b[64..68], &1u32.to_le_bytes());
        assert_eq!(&b[72..80], &4096u64.to_le_bytes());
        assert_eq!(&b[88 + 8..88 + 16], &12288u64.to_le_bytes());
        // Trailing segment padding is ignored.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0xff; 100]);
        assert_eq!(Payload::parse(&padded), Ok(p));
        // Kernel only.
        let k = encode(&PayloadSpec {
            kernel: b"k",
            ..Default::default()
        })
        .unwrap();
        let p = Payload::parse(&k).unwrap();
        assert_eq!((p.kernel, p.initrd, p.cmdline), (&b"k"[..], None, None));
    }

    #[test]
    fn encode_refuses_what_parse_would() {
        assert_eq!(
            encode(&PayloadSpec::default()),
            Err(PayloadError::EmptyKernel)
        );
        let bad = PayloadSpec {
            kernel: b"k",
            cmdline: Some("a\0b"),
            ..Default::default()
        };
        assert_eq!(encode(&bad), Err(PayloadError::BadCmdline));
    }

    #[test]
    fn corruption_is_reported() {
        let good = sample();
        let check = |f: &dyn Fn(&mut Vec<u8>), e: PayloadError| {
            let mut b = good.clone();
            f(&mut b);
            assert_eq!(Payload::parse(&b).err(), Some(e));
            assert!(!alloc::format!("{e}").is_empty());
        };
        check(&|b| b[0] = b'X', PayloadError::BadMagic);
        check(&|b| put_u32(b, 8, 2), PayloadError::UnsupportedVersion(2));
        check(&|b| b.truncate(b.len() - 1), PayloadError::Truncated);
        check(&|b| b.truncate(40), PayloadError::Truncated);
        check(&|b| put_u64(b, 16, 10), PayloadError::BadTotalSize(10));
        check(
            &|b| put_u32(b, 12, 1000),
            PayloadError::TooManyEntries(1000),
        );
        check(
            &|b| put_u32(b, 64 + 24, 9),
            PayloadError::UnknownKind { index: 1, kind: 9 },
        );
        check(&|b| put_u32(b, 64 + 24, 1), PayloadError::Duplicate(1));
        check(
            &|b| put_u64(b, 64 + 8, 0),
            PayloadError::EntryOutOfBounds(0),
        );
        check(&|b| put_u64(b, 64 + 8, 4097), PayloadError::Misaligned(0));
        check(
            &|b| put_u64(b, 64 + 16, u64::MAX),
            PayloadError::Overflow(0),
        );
        check(
            &|b| put_u64(b, 64 + 16, 1 << 20),
            PayloadError::EntryOutOfBounds(0),
        );
        check(&|b| put_u64(b, 64 + 24 + 8, 4096), PayloadError::Overlap(1));
        check(&|b| put_u32(b, 64, 2), PayloadError::Duplicate(2));
        check(
            &|b| {
                let n = b.len() as u64 + 1;
                put_u64(b, 16, n)
            },
            PayloadError::Truncated,
        );
        check(
            &|b| {
                // Shrink the table to one entry, no longer a kernel.
                put_u32(b, 64, KIND_INITRD);
                put_u32(b, 12, 1);
            },
            PayloadError::MissingKernel,
        );
        check(&|b| put_u64(b, 64 + 16, 0), PayloadError::EmptyKernel);
        check(
            &|b| {
                let off = u64::from_le_bytes(b[64 + 56..64 + 64].try_into().unwrap()) as usize;
                b[off] = 0xff;
            },
            PayloadError::BadCmdline,
        );
    }

    #[test]
    fn command_line_is_capped() {
        // Issue 9: a SPAWN image's payload carried a multi-MiB command line that the
        // hypervisor then copied into its heap twice; the cap refuses it at parse time.
        let max = "x".repeat(MAX_CMDLINE_BYTES);
        let spec = PayloadSpec {
            kernel: b"k",
            cmdline: Some(&max),
            ..Default::default()
        };
        let mut b = encode(&spec).unwrap();
        assert_eq!(
            Payload::parse(&b).map(|p| p.cmdline.map(str::len)),
            Ok(Some(MAX_CMDLINE_BYTES))
        );
        // One byte more, written by hand since `encode` refuses it too.
        b.push(b'x');
        let total = b.len() as u64;
        put_u64(&mut b, 16, total);
        let e = HEADER_SIZE + ENTRY_SIZE;
        assert_eq!(&b[e..e + 4], &KIND_CMDLINE.to_le_bytes());
        put_u64(&mut b, e + 16, MAX_CMDLINE_BYTES as u64 + 1);
        let err = PayloadError::CmdlineTooLong(MAX_CMDLINE_BYTES as u64 + 1);
        assert_eq!(Payload::parse(&b), Err(err));
        assert!(alloc::format!("{err}").contains("4096"));
        // A size far past the payload is still reported as too long, not out of bounds.
        put_u64(&mut b, e + 16, 64 << 20);
        assert_eq!(
            Payload::parse(&b),
            Err(PayloadError::CmdlineTooLong(64 << 20))
        );
        let long = "x".repeat(MAX_CMDLINE_BYTES + 1);
        let spec = PayloadSpec {
            cmdline: Some(&long),
            ..spec
        };
        assert_eq!(
            encode(&spec),
            Err(PayloadError::CmdlineTooLong(MAX_CMDLINE_BYTES as u64 + 1))
        );
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(
            kernel in prop::collection::vec(any::<u8>(), 1..9000),
            initrd in prop::option::of(prop::collection::vec(any::<u8>(), 0..5000)),
            cmdline in prop::option::of("[^\u{0}]{0,100}"),
            vcpus in any::<u32>(),
            ram_mib in any::<u32>(),
        ) {
            let spec = PayloadSpec {
                kernel: &kernel,
                initrd: initrd.as_deref(),
                cmdline: cmdline.as_deref(),
                vcpus,
                ram_mib,
            };
            let b = encode(&spec).unwrap();
            let p = Payload::parse(&b).unwrap();
            prop_assert_eq!(p.kernel, &kernel[..]);
            // An empty initrd is no initrd: the format has no way to say "empty".
            prop_assert_eq!(p.initrd, initrd.as_deref().filter(|i| !i.is_empty()));
            prop_assert_eq!(p.cmdline, cmdline.as_deref());
            prop_assert_eq!((p.vcpus, p.ram_mib), (vcpus, ram_mib));
        }

        #[test]
        fn mutations_never_panic(
            flips in prop::collection::vec((0usize..200, any::<u8>()), 0..8),
            cut in 0usize..20_000,
        ) {
            let mut b = sample();
            for (at, v) in flips {
                // Aim mostly at the header and entry table, where the structure lives.
                let at = at % b.len();
                b[at] = v;
            }
            b.truncate(cut);
            let _ = Payload::parse(&b);
        }

        #[test]
        fn random_bytes_never_panic(mut b in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Payload::parse(&b);
            if b.len() >= 16 {
                b[..8].copy_from_slice(&MAGIC);
                b[8..12].copy_from_slice(&1u32.to_le_bytes());
                let _ = Payload::parse(&b);
            }
        }
    }
}
