//! The guest page-table walker (`diosix_core::vstage::translate_read`), which follows a
//! guest's own VS-stage tables for the legacy SBI calls' pointers.
//!
//! Input: vsatp, vsstatus, GVA (u64 each), a flags byte (bit 0: addresses with no
//! entry are unreadable rather than zero), then (GPA, PTE) pairs of u64: the guest
//! memory the walk may read.

use diosix_core::addr::{Gpa, Gva};
use diosix_core::vstage::{translate_read, VsFault, SSTATUS_SUM};

use super::{label, le64, mix, put64, Target};
use crate::mutate::Field;
use crate::rng::Rng;

/// The target.
pub struct VStage;

const HEAD: usize = 25;
const V: u64 = 1;
const R: u64 = 2;
const W: u64 = 4;
const X: u64 = 8;
const U: u64 = 16;
const A: u64 = 64;
const D: u64 = 128;

fn levels(mode: u64) -> Option<u32> {
    match mode {
        8 => Some(3),
        9 => Some(4),
        10 => Some(5),
        _ => None,
    }
}

fn pte(ppn: u64, bits: u64) -> u64 {
    (ppn << 10) | bits
}

impl Target for VStage {
    fn name(&self) -> &'static str {
        "vstage"
    }
    fn about(&self) -> &'static str {
        "guest VS-stage walker: vstage::translate_read over fuzzed Sv39/48/57 tables, bounded reads"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let mode = match rng.below(10) {
            0 => 0,
            1 => rng.range(0, 15),
            2..=5 => 8,
            6 | 7 => 9,
            _ => 10,
        };
        let lv = levels(mode).unwrap_or(3);
        let va_bits = 12 + 9 * lv;
        let mut va = rng.next_u64() & ((1u64 << va_bits) - 1);
        if !rng.one_in(8) && va >> (va_bits - 1) & 1 == 1 {
            va |= !((1u64 << va_bits) - 1); // canonical: sign-extended
        }
        let root = 0x8_0000 + rng.range(0, 0x100);
        let ppn = if rng.one_in(8) {
            rng.next_u64() & ((1 << 60) - 1)
        } else {
            root
        };
        let vsatp = (mode << 60) | ppn;
        let sum = if rng.coin() { SSTATUS_SUM } else { 0 };
        let mut b = Vec::new();
        put64(&mut b, vsatp);
        put64(&mut b, sum | if rng.one_in(8) { rng.next_u64() } else { 0 });
        put64(&mut b, va);
        b.push(rng.byte());
        // A walk down to a leaf at a random level, then some noise.
        let leaf_level = if rng.coin() {
            0
        } else {
            rng.below(lv as usize) as u32
        };
        let mut table = root;
        for level in (0..lv).rev() {
            let vpn = (va >> (12 + 9 * level)) & 0x1ff;
            let at = (table << 12) + vpn * 8;
            let entry = if level == leaf_level {
                let mut ppn = 0x8_0000 + rng.range(0, 0x1_0000);
                if !rng.one_in(4) {
                    ppn &= !((1u64 << (9 * level)) - 1);
                }
                let mut bits = V | R | A;
                for (bit, odds) in [(W, 2), (X, 2), (U, 3), (D, 2)] {
                    if rng.one_in(odds) {
                        bits |= bit;
                    }
                }
                if rng.one_in(6) {
                    bits ^= *rng.pick(&[V, R, A, W | R]);
                }
                pte(ppn, bits)
            } else {
                table = 0x9_0000 + rng.range(0, 0x100);
                let mut bits = V;
                if rng.one_in(8) {
                    bits |= *rng.pick(&[A, D, U, W]);
                }
                pte(table, bits)
            };
            put64(&mut b, at);
            put64(
                &mut b,
                if rng.one_in(16) {
                    rng.next_u64()
                } else {
                    entry
                },
            );
            if level == leaf_level {
                break;
            }
        }
        for _ in 0..rng.small(3) {
            put64(&mut b, (root << 12) + rng.range(0, 511) * 8);
            put64(&mut b, rng.next_u64());
        }
        b
    }
    fn fields(&self, b: &[u8], out: &mut Vec<Field>) {
        for at in [0, 8, 16] {
            out.push(Field::le(at, 8));
        }
        let mut at = HEAD;
        while at + 16 <= b.len() && out.len() < 64 {
            out.push(Field::le(at, 8));
            out.push(Field::le(at + 8, 8));
            out.push(Field::le(at + 8, 1));
            at += 16;
        }
    }
    fn max_len(&self) -> usize {
        HEAD + 16 * 64
    }
    fn run(&self, input: &[u8]) -> u64 {
        let vsatp = le64(input, 0);
        let vsstatus = le64(input, 8);
        let gva = Gva::new(le64(input, 16));
        let unreadable_holes = input.get(24).is_some_and(|f| f & 1 != 0);
        let mut mem: Vec<(u64, u64)> = input
            .get(HEAD..)
            .unwrap_or(&[])
            .chunks_exact(16)
            .map(|c| (le64(c, 0), le64(c, 8)))
            .collect();
        // The first entry for an address wins.
        mem.sort_by_key(|&(a, _)| a);
        mem.dedup_by_key(|&mut (a, _)| a);

        let mut reads: Vec<(u64, Option<u64>)> = Vec::new();
        let result = translate_read(vsatp, vsstatus, gva, |gpa: Gpa| {
            let v = match mem.binary_search_by_key(&gpa.raw(), |&(a, _)| a) {
                Ok(i) => Some(mem[i].1),
                Err(_) if unreadable_holes => None,
                Err(_) => Some(0),
            };
            reads.push((gpa.raw(), v));
            v
        });

        // The walk is bounded by the number of levels, and reads whole aligned PTEs.
        let mode = vsatp >> 60;
        let lv = levels(mode);
        assert!(
            reads.len() <= lv.unwrap_or(0) as usize,
            "{} reads for mode {mode}",
            reads.len()
        );
        assert!(
            reads.iter().all(|&(a, _)| a % 8 == 0),
            "misaligned PTE read"
        );
        match result {
            Ok(gpa) => {
                let Some(lv) = lv else {
                    assert_eq!(mode, 0, "mode {mode} translated");
                    assert_eq!(gpa.raw(), gva.raw(), "Bare is not identity");
                    return label(2, &"bare");
                };
                let va_bits = 12 + 9 * lv;
                let top = (gva.raw() as i64) >> (va_bits - 1);
                assert!(top == 0 || top == -1, "non-canonical GVA translated");
                assert_eq!(gpa.raw() & 0xfff, gva.raw() & 0xfff, "page offset changed");
                let leaf = reads.last().and_then(|r| r.1).expect("a leaf was read");
                assert!(leaf & (V | R | A) == V | R | A, "leaf {leaf:#x} not V/R/A");
                if leaf & U != 0 {
                    assert!(vsstatus & SSTATUS_SUM != 0, "U page read without SUM");
                }
                mix(label(3, &"ok"), reads.len() as u64)
            }
            Err(VsFault::UnsupportedMode(m)) => {
                assert!(m == mode && lv.is_none() && m != 0);
                label(4, &"mode")
            }
            Err(VsFault::TableUnreadable(at)) => {
                assert_eq!(reads.last(), Some(&(at.raw(), None)));
                mix(label(5, &"unreadable"), reads.len() as u64)
            }
            Err(VsFault::PageFault(g)) => {
                assert_eq!(g, gva);
                mix(label(6, &"fault"), reads.len() as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_walks_reach_every_outcome() {
        let mut rng = Rng::new(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let b = VStage.generate(&mut rng);
            let l = VStage.run(&b);
            seen.insert(l);
        }
        assert!(seen.len() > 8, "{}", seen.len());
    }
}
