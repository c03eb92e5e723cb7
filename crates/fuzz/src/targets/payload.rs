//! The `DSXPAYLD` container (`diosix_core::payload::Payload::parse`): the Root VM's
//! payload at boot, and any SPAWN image that starts with the magic.

use diosix_core::payload::{
    encode, Payload, PayloadError, PayloadIndex, PayloadSpec, BLOB_ALIGN, ENTRY_SIZE, HEADER_SIZE,
    INDEX_WINDOW, KIND_CMDLINE, KIND_INITRD, KIND_KERNEL, MAGIC, MAX_CMDLINE_BYTES, MAX_ENTRIES,
};

use super::{label, le32, le64, loader, mix, Target};
use crate::mutate::Field;
use crate::rng::Rng;

/// The target.
pub struct PayloadTarget;

/// A command line: mostly printable ASCII, sometimes multi-byte UTF-8, sometimes long.
pub fn cmdline(rng: &mut Rng, max_log2: u32) -> String {
    let n = rng.small(max_log2);
    let pieces = [
        "console=hvc0 ",
        "earlycon=sbi ",
        "root=/dev/ram ",
        "init=/init ",
        "ü",
        "€",
        "🦀",
        "\u{7f}",
        " ",
        "=",
    ];
    let mut s = String::with_capacity(n);
    while s.len() < n {
        if rng.coin() {
            s.push_str(pieces[rng.below(pieces.len())]);
        } else {
            s.push(char::from(rng.range(0x20, 0x7e) as u8));
        }
    }
    s
}

/// A kernel for a payload: an ELF, an `Image`, or a few random bytes.
pub fn kernel(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => loader::gen_elf(rng, 0x8000_0000),
        1 => loader::gen_image(rng),
        _ => {
            let n = 1 + rng.small(12);
            rng.bytes(n)
        }
    }
}

/// A payload made by the build tool's own encoder. Command lines longer than
/// [`MAX_CMDLINE_BYTES`] are refused by `encode`; such a payload is then written with an
/// acceptable command line and its entry's size raised past the cap afterwards.
pub fn encoded(rng: &mut Rng, cmdline_log2: u32) -> Vec<u8> {
    let k = kernel(rng);
    let initrd = rng.coin().then(|| {
        let n = rng.small(13);
        rng.bytes(n)
    });
    let c = rng.coin().then(|| cmdline(rng, cmdline_log2));
    let mut spec = PayloadSpec {
        kernel: &k,
        initrd: initrd.as_deref(),
        cmdline: c.as_deref(),
        vcpus: if rng.coin() {
            rng.range(0, 8) as u32
        } else {
            rng.next_u32()
        },
        ram_mib: if rng.coin() {
            rng.range(0, 512) as u32
        } else {
            rng.next_u32()
        },
    };
    let too_long = c.as_ref().is_some_and(|c| c.len() > MAX_CMDLINE_BYTES);
    if too_long {
        spec.cmdline = c.as_deref().map(|c| {
            let mut n = MAX_CMDLINE_BYTES;
            while !c.is_char_boundary(n) {
                n -= 1;
            }
            &c[..n]
        });
    }
    let mut b = match encode(&spec) {
        Ok(b) => b,
        Err(e) => panic!("encode refused a valid spec: {e}"),
    };
    if too_long {
        // The command line is the last entry: claim the long length, pad the bytes.
        let count = le32(&b, 12) as usize;
        let e = HEADER_SIZE + (count - 1) * ENTRY_SIZE;
        let n = c.as_ref().map_or(0, String::len);
        let off = le64(&b, e + 8) as usize;
        b[e + 16..e + 24].copy_from_slice(&(n as u64).to_le_bytes());
        b.resize(off + n, b' ');
        let total = b.len() as u64;
        b[16..24].copy_from_slice(&total.to_le_bytes());
    }
    b
}

/// A payload with a hand-made entry table: odd counts, kinds, offsets and sizes.
fn handmade(rng: &mut Rng) -> Vec<u8> {
    let count = if rng.one_in(8) {
        rng.range(0, u64::from(MAX_ENTRIES) + 2) as u32
    } else {
        rng.range(1, 4) as u32
    };
    let table_end = HEADER_SIZE + count as usize * ENTRY_SIZE;
    let first = table_end.next_multiple_of(BLOB_ALIGN);
    let blobs = 1 + rng.below(4);
    let len = first + blobs * BLOB_ALIGN + rng.small(12);
    let mut b = rng.bytes(len);
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&count.to_le_bytes());
    let total = if rng.one_in(4) {
        rng.range(0, len as u64 + 8)
    } else {
        len as u64
    };
    b[16..24].copy_from_slice(&total.to_le_bytes());
    b[32..64].fill(0);
    for i in 0..count as usize {
        let e = HEADER_SIZE + i * ENTRY_SIZE;
        if e + ENTRY_SIZE > b.len() {
            break;
        }
        let kind = match rng.below(8) {
            0 => rng.next_u32(),
            1 => 0,
            _ => *rng.pick(&[KIND_KERNEL, KIND_INITRD, KIND_CMDLINE]),
        };
        let off = if rng.one_in(6) {
            rng.next_u64() >> rng.below(64)
        } else {
            (first + rng.below(blobs) * BLOB_ALIGN) as u64
        };
        let size = if rng.one_in(6) {
            rng.next_u64() >> rng.below(64)
        } else {
            rng.range(0, BLOB_ALIGN as u64 + 16)
        };
        b[e..e + 4].copy_from_slice(&kind.to_le_bytes());
        b[e + 4..e + 8].fill(0);
        b[e + 8..e + 16].copy_from_slice(&off.to_le_bytes());
        b[e + 16..e + 24].copy_from_slice(&size.to_le_bytes());
    }
    b
}

/// Header and entry-table fields at `base`.
pub fn payload_fields(b: &[u8], base: usize, out: &mut Vec<Field>) {
    for (at, w) in [(8, 4), (12, 4), (16, 8), (24, 4), (28, 4)] {
        out.push(Field::le(base + at, w));
    }
    let count = le32(b, base + 12).min(MAX_ENTRIES + 1) as usize;
    for i in 0..count {
        let e = base + HEADER_SIZE + i * ENTRY_SIZE;
        for (at, w) in [(0, 4), (4, 4), (8, 8), (16, 8)] {
            out.push(Field::le(e + at, w));
        }
    }
}

impl Target for PayloadTarget {
    fn name(&self) -> &'static str {
        "payload"
    }
    fn about(&self) -> &'static str {
        "DSXPAYLD container: Payload::parse, blobs checked against the input, re-encoded round trip"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(3) {
            handmade(rng)
        } else {
            encoded(rng, 10)
        }
    }
    fn fields(&self, b: &[u8], out: &mut Vec<Field>) {
        payload_fields(b, 0, out);
    }
    fn max_len(&self) -> usize {
        256 * 1024
    }
    fn fixup(&self, b: &mut Vec<u8>, rng: &mut Rng) {
        if b.len() >= 24 && rng.one_in(2) {
            let n = b.len() as u64;
            b[16..24].copy_from_slice(&n.to_le_bytes());
        }
    }
    fn run(&self, input: &[u8]) -> u64 {
        // The index alone, from the header window, as the hypervisor reads a payload
        // that is not contiguous in host memory: the same answer as from all the bytes.
        let len = input.len();
        let index = PayloadIndex::parse(input, len);
        let windowed = PayloadIndex::parse(&input[..len.min(INDEX_WINDOW)], len);
        assert_eq!(windowed, index, "index from the window differs");
        // Fewer bytes than the contract asks for must still be safe.
        if let Ok(short) = PayloadIndex::parse(&input[..len.min(HEADER_SIZE + 40)], len) {
            let total = le64(input, 16) as usize;
            assert!(total <= len && short.kernel.end <= total);
        }
        let parsed = Payload::parse(input);
        if let Ok(p) = &parsed {
            let i = index
                .as_ref()
                .expect("a payload parses but its index does not");
            assert_eq!(offset_in(input, p.kernel), (i.kernel.start, i.kernel.end));
        }
        match parsed {
            Err(PayloadError::CmdlineTooLong(n)) => {
                assert!(n > MAX_CMDLINE_BYTES as u64);
                label(1, &"too long")
            }
            Err(e) => label(1, &e),
            Ok(p) => check(input, &p),
        }
    }
}

/// Offset of `blob` inside `input`; panics if it is not a sub-slice.
fn offset_in(input: &[u8], blob: &[u8]) -> (usize, usize) {
    let base = input.as_ptr() as usize;
    let at = (blob.as_ptr() as usize).wrapping_sub(base);
    assert!(
        at <= input.len() && blob.len() <= input.len() - at,
        "blob outside the input"
    );
    (at, at + blob.len())
}

/// What `Payload::parse` promises about a payload it accepts.
pub fn check(input: &[u8], p: &Payload<'_>) -> u64 {
    let total = le64(input, 16) as usize;
    let count = le32(input, 12) as usize;
    let table_end = HEADER_SIZE + count * ENTRY_SIZE;
    assert!(!p.kernel.is_empty(), "empty kernel accepted");
    let mut spans = Vec::new();
    let blobs = [Some(p.kernel), p.initrd, p.cmdline.map(str::as_bytes)];
    for blob in blobs.into_iter().flatten() {
        let (s, e) = offset_in(input, blob);
        assert!(e <= total, "blob past the declared total size");
        assert!(s >= table_end, "blob inside the header or entry table");
        assert_eq!(s % BLOB_ALIGN, 0, "blob not {BLOB_ALIGN}-aligned");
        if s < e {
            assert!(
                spans.iter().all(|&(a, b)| e <= a || b <= s),
                "blobs overlap"
            );
            spans.push((s, e));
        }
    }
    if let Some(c) = p.cmdline {
        assert!(!c.contains('\0'), "command line with NUL");
        assert!(c.len() <= MAX_CMDLINE_BYTES, "command line over the cap");
    }
    // The build tool's encoder writes what the parser reads.
    let spec = PayloadSpec {
        kernel: p.kernel,
        initrd: p.initrd,
        cmdline: p.cmdline,
        vcpus: p.vcpus,
        ram_mib: p.ram_mib,
    };
    crate::alloc::untracked(|| {
        let again = encode(&spec).expect("an accepted payload re-encodes");
        assert_eq!(Payload::parse(&again).as_ref(), Ok(p), "round trip differs");
    });
    let l = mix(label(2, &"ok"), u64::from(p.initrd.is_some()));
    mix(l, u64::from(p.cmdline.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_payloads_parse_and_check() {
        let mut rng = Rng::new(3);
        let mut ok = 0;
        for _ in 0..300 {
            let b = PayloadTarget.generate(&mut rng);
            PayloadTarget.run(&b);
            ok += usize::from(Payload::parse(&b).is_ok());
        }
        assert!(ok > 100, "{ok}");
    }
}
