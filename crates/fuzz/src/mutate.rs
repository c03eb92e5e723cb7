//! Byte-level and structure-aware mutations.
//!
//! Every input is a byte string; a target says which of its bytes are integer fields
//! (header fields, offsets, lengths, counts) through [`Field`] hints, and whether its
//! integers are big- or little-endian. Mutations are stacked 1, 2, 4 or 8 deep.

use crate::rng::Rng;

/// An integer field of an input, for structure-aware mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset.
    pub at: usize,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    /// Big-endian (device trees) or little-endian (everything else).
    pub be: bool,
}

impl Field {
    /// A little-endian field.
    pub const fn le(at: usize, width: u8) -> Self {
        Field {
            at,
            width,
            be: false,
        }
    }
    /// A big-endian field.
    pub const fn be(at: usize, width: u8) -> Self {
        Field {
            at,
            width,
            be: true,
        }
    }
}

/// Values that tend to sit on boundaries: zero, one, sign bits, all-ones, page and
/// megapage sizes, the guest RAM base.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    24,
    32,
    56,
    64,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x1001,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x20_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x80_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_f000,
    0xffff_ffff_ffff_fffe,
    0xffff_ffff_ffff_ffff,
];

fn width_mask(width: u8) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(width))) - 1
    }
}

/// Reads a `width`-byte integer at `at` (zero-padded past the end).
pub fn read(b: &[u8], f: Field) -> u64 {
    let w = usize::from(f.width);
    let mut v = 0u64;
    for i in 0..w {
        let byte = u64::from(b.get(f.at.saturating_add(i)).copied().unwrap_or(0));
        if f.be {
            v = (v << 8) | byte;
        } else {
            v |= byte << (8 * i);
        }
    }
    v
}

/// Writes the low `width` bytes of `v` at `at`, clipped to the input.
pub fn write(b: &mut [u8], f: Field, v: u64) {
    let w = usize::from(f.width);
    for i in 0..w {
        let shift = if f.be { 8 * (w - 1 - i) } else { 8 * i };
        if let Some(dst) = b.get_mut(f.at.saturating_add(i)) {
            *dst = (v >> shift) as u8;
        }
    }
}

/// A value for a field: interesting, near its current value, related to the input's
/// length, or random.
fn value_for(rng: &mut Rng, b: &[u8], f: Field) -> u64 {
    let cur = read(b, f);
    let len = b.len() as u64;
    let v = match rng.below(8) {
        0..=2 => *rng.pick(INTERESTING),
        3 => {
            let d = rng.range(1, 64);
            if rng.coin() {
                cur.wrapping_add(d)
            } else {
                cur.wrapping_sub(d)
            }
        }
        4 => match rng.below(4) {
            0 => len,
            1 => len.wrapping_sub(1),
            2 => len + 1,
            _ => rng.range(0, len),
        },
        5 => cur ^ (1 << rng.below(64)),
        6 => cur.wrapping_mul(rng.range(2, 16)),
        _ => rng.next_u64(),
    };
    v & width_mask(f.width)
}

/// A random integer position in `b` of a random width.
fn random_field(rng: &mut Rng, b: &[u8], be: bool) -> Option<Field> {
    let width = *rng.pick(&[1u8, 2, 4, 4, 8, 8]);
    if b.len() < usize::from(width) {
        return None;
    }
    let mut at = rng.below(b.len() - usize::from(width) + 1);
    if rng.coin() {
        at &= !(usize::from(width) - 1);
    }
    // Mostly the target's byte order, sometimes the other.
    let be = if rng.one_in(4) { !be } else { be };
    Some(Field { at, width, be })
}

/// A random sub-range of `b` (non-empty when `b` is).
fn chunk(rng: &mut Rng, len: usize) -> (usize, usize) {
    if len == 0 {
        return (0, 0);
    }
    let start = rng.below(len);
    let max = len - start;
    let n = 1 + rng.small(12).min(max - 1);
    (start, start + n)
}

/// Applies one random mutation to `b`. `fields` are the target's hints for `b`,
/// `other` a second input to splice from, `max_len` the size cap.
pub fn mutate_once(
    rng: &mut Rng,
    b: &mut Vec<u8>,
    fields: &[Field],
    be: bool,
    other: &[u8],
    max_len: usize,
) {
    match rng.below(16) {
        // Structure-aware: a known integer field (header, offset, length, count).
        0..=3 if !fields.is_empty() => {
            let f = *rng.pick(fields);
            let v = value_for(rng, b, f);
            write(b, f, v);
        }
        // An interesting or nearby integer anywhere.
        0..=5 => {
            if let Some(f) = random_field(rng, b, be) {
                let v = value_for(rng, b, f);
                write(b, f, v);
            }
        }
        6 => {
            if !b.is_empty() {
                let i = rng.below(b.len() * 8);
                b[i / 8] ^= 1 << (i % 8);
            }
        }
        7 => {
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = if rng.coin() {
                    rng.byte()
                } else {
                    *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'/', b'@', b',', b':'])
                };
            }
        }
        // Truncate.
        8 => {
            if !b.is_empty() {
                let keep = if rng.coin() {
                    rng.below(b.len())
                } else {
                    b.len() - 1 - rng.small(8).min(b.len() - 1)
                };
                b.truncate(keep);
            }
        }
        // Grow: random or zero bytes at the end or in the middle.
        9 => {
            let n = 1 + rng.small(10);
            let at = if rng.coin() {
                b.len()
            } else {
                rng.below(b.len() + 1)
            };
            let fill = if rng.coin() { rng.bytes(n) } else { vec![0; n] };
            b.splice(at..at, fill);
        }
        // Delete a chunk.
        10 => {
            let (s, e) = chunk(rng, b.len());
            b.drain(s..e);
        }
        // Duplicate a chunk somewhere else (repeats nodes, entries, headers).
        11 => {
            let (s, e) = chunk(rng, b.len());
            let piece = b[s..e].to_vec();
            let mut at = rng.below(b.len() + 1);
            if rng.coin() {
                at &= !3;
            }
            b.splice(at..at, piece);
        }
        // Overwrite a chunk with a copy of another part.
        12 => {
            let (s, e) = chunk(rng, b.len());
            if e > s {
                let piece = b[s..e].to_vec();
                let at = rng.below(b.len());
                for (i, &v) in piece.iter().enumerate() {
                    if let Some(d) = b.get_mut(at + i) {
                        *d = v;
                    }
                }
            }
        }
        // Splice with another input: a prefix of one, the rest of the other.
        13 => {
            if !other.is_empty() {
                let cut = rng.below(b.len().min(other.len()) + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[cut.min(other.len())..]);
            }
        }
        // Overwrite a chunk at the same offset from the other input.
        14 => {
            let (s, e) = chunk(rng, other.len().min(b.len()));
            b[s..e].copy_from_slice(&other[s..e]);
        }
        // Fill a chunk with a constant.
        _ => {
            let (s, e) = chunk(rng, b.len());
            let v = *rng.pick(&[0u8, 0xff, 0x41]);
            b[s..e].fill(v);
        }
    }
    b.truncate(max_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_what_was_written() {
        let mut b = vec![0u8; 16];
        for f in [
            Field::le(3, 4),
            Field::be(3, 4),
            Field::le(8, 8),
            Field::be(0, 2),
        ] {
            write(&mut b, f, 0x1122_3344_5566_7788);
            assert_eq!(read(&b, f), 0x1122_3344_5566_7788 & width_mask(f.width));
        }
        assert_eq!(&b[0..2], &[0x77, 0x88]);
        // Clipped at the end, never out of bounds.
        write(&mut b, Field::le(14, 8), u64::MAX);
        assert_eq!(read(&b, Field::le(14, 2)), 0xffff);
    }

    #[test]
    fn mutations_respect_the_size_cap() {
        let mut rng = Rng::new(1);
        let other = vec![7u8; 300];
        let mut b = vec![1u8; 100];
        for _ in 0..10_000 {
            mutate_once(&mut rng, &mut b, &[Field::le(0, 4)], false, &other, 256);
            assert!(b.len() <= 256);
        }
    }
}
