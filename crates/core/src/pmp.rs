//! PMP region planner for the PMP fallback.
//!
//! Harts without the H extension run a guest in S-mode, so no G-stage table stands
//! between the guest and host memory: PMP is the only isolation. This module turns the
//! regions a guest may touch (its RAM and the MMIO windows it owns) into the
//! pmpcfg/pmpaddr values that grant exactly those regions to S/U-mode, and evaluates
//! such a plan the way hardware does so the tests can check it against a model.
//!
//! Encoding follows the privileged spec's PMP chapter: pmpaddr holds bits 55:2 of an
//! address; a naturally aligned power-of-two region takes one NAPOT (or, for 4 bytes,
//! NA4) entry, anything else one TOR entry whose bottom is the previous entry's
//! pmpaddr. The plan never sets L, so M-mode (the hypervisor) is never restricted.

use alloc::vec::Vec;

use crate::addr::{Hpa, Range};
use crate::gstage::Perms;

/// Width of the pmpaddr address field on RV64: it holds bits 55:2 of an address.
const ADDR_BITS: u32 = 54;
/// The bits of a pmpaddr value that hardware implements.
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;
/// One past the highest address a PMP entry can reach (2^56).
const ADDR_LIMIT: u64 = 1 << (ADDR_BITS + 2);

/// What the planner needs to know about one hart's PMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmpHart {
    /// Number of implemented PMP entries, 1..=64.
    pub entries: u8,
    /// log2 of the PMP granule in bytes, i.e. G + 2: 2 for 4-byte granules, 12 for
    /// the 4 KiB granules of many SiFive parts.
    pub granularity_log2: u32,
}

impl PmpHart {
    /// Entries left for the guest once the hypervisor keeps `reserved` at the bottom
    /// of the priority order (the highest indices).
    ///
    /// A hart with no PMP is refused: the spec denies unmatched S/U accesses only
    /// when at least one entry is implemented, so without PMP a guest sees everything.
    pub fn available(self, reserved: u8) -> Result<usize, PmpError> {
        // A granule above 2^56 could not hold any reachable region.
        if self.entries == 0 || self.entries > 64 || !(2..=56).contains(&self.granularity_log2) {
            return Err(PmpError::BadHart);
        }
        self.entries
            .checked_sub(reserved)
            .map(usize::from)
            .ok_or(PmpError::BadHart)
    }
}

/// A region of host memory a guest may access, with the accesses it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRegion {
    /// The host-physical bytes granted.
    pub range: Range<Hpa>,
    /// R, W and/or X: RWX for guest RAM, RW for MMIO windows.
    pub perms: Perms,
}

/// One PMP entry: the byte for its pmpcfg slot and the value for its pmpaddr CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmpEntry {
    /// The pmpcfg byte: R, W, X, the A field and L.
    pub cfg: u8,
    /// The pmpaddr value (an address shifted right by 2, or a NAPOT encoding).
    pub addr: u64,
}

impl PmpEntry {
    /// pmpcfg: readable.
    pub const R: u8 = 1 << 0;
    /// pmpcfg: writable.
    pub const W: u8 = 1 << 1;
    /// pmpcfg: executable.
    pub const X: u8 = 1 << 2;
    /// pmpcfg A field: top of range, bottom is the previous entry's pmpaddr.
    pub const A_TOR: u8 = 1 << 3;
    /// pmpcfg A field: naturally aligned four-byte region.
    pub const A_NA4: u8 = 2 << 3;
    /// pmpcfg A field: naturally aligned power-of-two region of 8 bytes or more.
    pub const A_NAPOT: u8 = 3 << 3;
    /// pmpcfg: the whole A field (A = 0 is OFF).
    pub const A_MASK: u8 = 3 << 3;
    /// pmpcfg: locked, which would also bind M-mode; the planner never sets it.
    pub const L: u8 = 1 << 7;
    /// A disabled entry matching nothing, with pmpaddr 0.
    pub const OFF: PmpEntry = PmpEntry { cfg: 0, addr: 0 };
}

/// Why a set of regions cannot be planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmpError {
    /// The region at this index of the input is empty.
    Empty {
        /// Index into the caller's regions.
        index: usize,
    },
    /// The region's start or length is not a multiple of the hart's granule.
    Misaligned {
        /// Index into the caller's regions.
        index: usize,
    },
    /// The region's permissions are empty or W without R (reserved by the spec).
    BadPerms {
        /// Index into the caller's regions.
        index: usize,
    },
    /// The region ends beyond what pmpaddr can express (2^56, or 2^56 - 4 for TOR).
    OutOfReach {
        /// Index into the caller's regions.
        index: usize,
    },
    /// Two regions share bytes; which would win would depend on entry order.
    Overlap {
        /// The lower index of the pair.
        first: usize,
        /// The higher index of the pair.
        second: usize,
    },
    /// The regions need more entries than the guest may use.
    TooManyEntries {
        /// Entries the plan needs.
        needed: usize,
        /// Entries left after the hypervisor's reservation.
        available: usize,
    },
    /// The hart's PMP facts are impossible, or it reserves more entries than it has.
    BadHart,
}

/// The pmpcfg permission bits for `perms`.
fn cfg_perms(perms: Perms) -> u8 {
    let mut cfg = 0;
    for (p, bit) in [
        (Perms::R, PmpEntry::R),
        (Perms::W, PmpEntry::W),
        (Perms::X, PmpEntry::X),
    ] {
        if perms.contains(p) {
            cfg |= bit;
        }
    }
    cfg
}

/// The permissions a pmpcfg byte grants.
fn perms_of(cfg: u8) -> Perms {
    let mut perms = Perms::empty();
    for (p, bit) in [
        (Perms::R, PmpEntry::R),
        (Perms::W, PmpEntry::W),
        (Perms::X, PmpEntry::X),
    ] {
        if cfg & bit != 0 {
            perms |= p;
        }
    }
    perms
}

/// Validates `regions` for `hart` and hands the plan's entries to `emit` in priority
/// order, returning how many there are. [`entries_needed`] and [`PmpPlan::new`] both go
/// through here so that the SPAWN-time count and the plan can never disagree.
///
/// Regions go in ascending address order, which needs the fewest entries: a TOR region
/// can only borrow its bottom from an entry whose pmpaddr is its base, and only a TOR
/// region ending exactly there (or entry 0's implicit bottom of 0) has one; ascending
/// order puts every such neighbour directly before it.
fn layout(
    regions: &[GrantRegion],
    hart: PmpHart,
    mut emit: impl FnMut(PmpEntry),
) -> Result<usize, PmpError> {
    hart.available(0)?;
    let granule = 1u64 << hart.granularity_log2;
    for (index, r) in regions.iter().enumerate() {
        if r.range.is_empty() {
            return Err(PmpError::Empty { index });
        }
        if !r.perms.is_valid_leaf() {
            return Err(PmpError::BadPerms { index });
        }
        if !r.range.start().is_aligned(granule) || r.range.len() % granule != 0 {
            return Err(PmpError::Misaligned { index });
        }
        if r.range.end().raw() > ADDR_LIMIT {
            return Err(PmpError::OutOfReach { index });
        }
    }
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_unstable_by_key(|&i| regions[i].range.start());
    // Sorted by start, any overlap shows up between neighbours.
    for pair in order.windows(2) {
        if regions[pair[1]].range.start() < regions[pair[0]].range.end() {
            return Err(PmpError::Overlap {
                first: pair[0].min(pair[1]),
                second: pair[0].max(pair[1]),
            });
        }
    }

    let mut count = 0;
    // pmpaddr of the entry before the next one; 0 is entry 0's implicit TOR bottom.
    let mut prev = 0u64;
    for &index in &order {
        let r = &regions[index];
        let (base, len) = (r.range.start().raw(), r.range.len());
        let rwx = cfg_perms(r.perms);
        let entry = if len.is_power_of_two() && r.range.start().is_aligned(len) {
            // Only a 4-byte granule (G = 0) lets a 4-byte region through the alignment
            // check, so NA4 is never used where the spec makes it unavailable.
            if len == 4 {
                PmpEntry {
                    cfg: rwx | PmpEntry::A_NA4,
                    addr: base >> 2,
                }
            } else {
                PmpEntry {
                    cfg: rwx | PmpEntry::A_NAPOT,
                    addr: (base | (len / 2 - 1)) >> 2,
                }
            }
        } else {
            let top = r.range.end().raw() >> 2;
            if top > ADDR_MASK {
                return Err(PmpError::OutOfReach { index });
            }
            // TOR reads the previous pmpaddr whatever that entry's mode, so any entry
            // holding base >> 2 serves; otherwise an OFF entry supplies the bottom.
            if prev != base >> 2 {
                emit(PmpEntry {
                    cfg: 0,
                    addr: base >> 2,
                });
                count += 1;
            }
            PmpEntry {
                cfg: rwx | PmpEntry::A_TOR,
                addr: top,
            }
        };
        emit(entry);
        count += 1;
        prev = entry.addr;
    }
    Ok(count)
}

/// How many PMP entries [`PmpPlan::new`] would use for `regions` on `hart`, or the
/// error it would give for reasons other than the count. Meant for the SPAWN-time
/// check, before any memory is committed to the guest.
pub fn entries_needed(regions: &[GrantRegion], hart: PmpHart) -> Result<usize, PmpError> {
    layout(regions, hart, |_| {})
}

/// The PMP entries that give a guest exactly its regions, highest priority first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmpPlan {
    /// The entries the plan uses, for indices `0..entries.len()`.
    entries: Vec<PmpEntry>,
    /// Entries the guest may use: indices `0..available`.
    available: usize,
}

impl PmpPlan {
    /// Plans `regions` on `hart`, leaving the last `reserved` entries to the hypervisor.
    pub fn new(regions: &[GrantRegion], hart: PmpHart, reserved: u8) -> Result<Self, PmpError> {
        let available = hart.available(reserved)?;
        let mut entries = Vec::new();
        let needed = layout(regions, hart, |e| entries.push(e))?;
        if needed > available {
            return Err(PmpError::TooManyEntries { needed, available });
        }
        Ok(Self { entries, available })
    }

    /// A plan granting nothing: every guest entry OFF, for a hart between guests.
    pub fn all_off(hart: PmpHart, reserved: u8) -> Result<Self, PmpError> {
        Ok(Self {
            entries: Vec::new(),
            available: hart.available(reserved)?,
        })
    }

    /// The entries in use, index 0 first; their count is what [`entries_needed`] says.
    pub fn entries(&self) -> &[PmpEntry] {
        &self.entries
    }

    /// Entries the guest may use (the hart's entries less the reserved ones).
    pub fn available(&self) -> usize {
        self.available
    }

    /// Exactly [`available`](Self::available) entries to write to indices
    /// `0..available`: the plan, then OFF entries so that nothing a previous guest was
    /// granted survives. The last pmpaddr written is 0 when padded, which is what a
    /// TOR entry in the first reserved slot would see as its bottom.
    pub fn slots(&self) -> impl Iterator<Item = PmpEntry> + '_ {
        let pad = self.available.saturating_sub(self.entries.len());
        self.entries
            .iter()
            .copied()
            .chain(core::iter::repeat_n(PmpEntry::OFF, pad))
    }

    /// The bytes `[lo, hi)` entry `i` matches, as hardware decodes it.
    fn span(&self, i: usize) -> Option<(u64, u64)> {
        let e = self.entries[i];
        let addr = e.addr & ADDR_MASK;
        match e.cfg & PmpEntry::A_MASK {
            PmpEntry::A_TOR => {
                let lo = match i.checked_sub(1) {
                    Some(p) => (self.entries[p].addr & ADDR_MASK) << 2,
                    None => 0,
                };
                let hi = addr << 2;
                // A TOR entry whose bottom is not below its top matches nothing.
                (lo < hi).then_some((lo, hi))
            }
            PmpEntry::A_NA4 => Some((addr << 2, (addr << 2) + 4)),
            PmpEntry::A_NAPOT => {
                let ones = addr.trailing_ones();
                if ones >= ADDR_BITS {
                    return Some((0, ADDR_LIMIT));
                }
                let lo = (addr & !((1 << ones) - 1)) << 2;
                Some((lo, lo + (1 << (ones + 3))))
            }
            _ => None,
        }
    }

    /// The regions the plan grants, in priority order (OFF and empty entries left out).
    pub fn decode(&self) -> Vec<(Range<Hpa>, Perms)> {
        (0..self.entries.len())
            .filter_map(|i| {
                let (lo, hi) = self.span(i)?;
                Some((
                    Range::new(Hpa::new(lo), hi - lo)?,
                    perms_of(self.entries[i].cfg),
                ))
            })
            .collect()
    }

    /// Whether an S/U-mode `access` (R, W or X) to `hpa` succeeds under this plan: the
    /// lowest-numbered matching entry decides, and no match means denied. The reserved
    /// entries are assumed to grant S/U-mode nothing.
    pub fn allows(&self, hpa: Hpa, access: Perms) -> bool {
        (0..self.entries.len())
            .find(|&i| {
                self.span(i)
                    .is_some_and(|(lo, hi)| (lo..hi).contains(&hpa.raw()))
            })
            .is_some_and(|i| perms_of(self.entries[i].cfg).contains(access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G4: PmpHart = PmpHart {
        entries: 16,
        granularity_log2: 2,
    };
    const G4K: PmpHart = PmpHart {
        entries: 8,
        granularity_log2: 12,
    };
    const RW: Perms = Perms::R.union(Perms::W);

    fn region(start: u64, len: u64, perms: Perms) -> GrantRegion {
        GrantRegion {
            range: Range::new(Hpa::new(start), len).unwrap(),
            perms,
        }
    }

    fn e(cfg: u8, addr: u64) -> PmpEntry {
        PmpEntry { cfg, addr }
    }

    fn plan(regions: &[GrantRegion], hart: PmpHart) -> Vec<PmpEntry> {
        let p = PmpPlan::new(regions, hart, 0).unwrap();
        assert_eq!(entries_needed(regions, hart), Ok(p.entries().len()));
        p.entries().to_vec()
    }

    #[test]
    fn napot_encoding() {
        // 128 MiB of RAM and a 4 KiB UART, given high address first to show the sort.
        let got = plan(
            &[
                region(0x8000_0000, 0x800_0000, Perms::RWX),
                region(0x1000_0000, 0x1000, RW),
            ],
            G4K,
        );
        // (0x1000_0000 | 0x7ff) >> 2 and (0x8000_0000 | 0x3ff_ffff) >> 2.
        assert_eq!(got, [e(0x1b, 0x0400_01ff), e(0x1f, 0x20ff_ffff)]);
        // The smallest NAPOT region, 8 bytes: (0x100 | 3) >> 2.
        assert_eq!(plan(&[region(0x100, 8, Perms::R)], G4), [e(0x19, 0x40)]);
        // The whole reachable space is one NAPOT entry with 53 ones.
        assert_eq!(
            plan(&[region(0, 1 << 56, Perms::R)], G4),
            [e(0x19, (1 << 53) - 1)]
        );
    }

    #[test]
    fn tor_encoding() {
        // 12 KiB is not a power of two: an OFF bottom at base >> 2, then the top.
        let got = plan(&[region(0x8000_0000, 0x3000, Perms::RWX)], G4K);
        assert_eq!(got, [e(0, 0x2000_0000), e(0x0f, 0x2000_0c00)]);
        // 8 KiB at an address aligned to 4 KiB only is not natural either.
        let got = plan(&[region(0x8000_1000, 0x2000, RW)], G4K);
        assert_eq!(got, [e(0, 0x2000_0400), e(0x0b, 0x2000_0c00)]);
        // Entry 0's implicit bottom is 0, so a TOR region at 0 needs no OFF entry.
        assert_eq!(plan(&[region(0, 0x3000, Perms::X)], G4K), [e(0x0c, 0xc00)]);
    }

    #[test]
    fn tor_shares_a_bottom_with_the_region_below() {
        let got = plan(
            &[
                region(0x8000_3000, 0x3000, RW),
                region(0x8000_0000, 0x3000, Perms::RWX),
            ],
            G4K,
        );
        assert_eq!(
            got,
            [
                e(0, 0x2000_0000),
                e(0x0f, 0x2000_0c00),
                e(0x0b, 0x2000_1800)
            ]
        );
        // A NAPOT entry's pmpaddr is not its end, so the TOR above needs its own bottom.
        let got = plan(
            &[
                region(0x8000_0000, 0x1000, Perms::RWX),
                region(0x8000_1000, 0x2000, RW),
            ],
            G4K,
        );
        assert_eq!(
            got,
            [
                e(0x1f, 0x2000_01ff),
                e(0, 0x2000_0400),
                e(0x0b, 0x2000_0c00)
            ]
        );
        // A gap between two TOR regions also breaks the sharing.
        let r = [region(0x0, 0x3000, RW), region(0x4000, 0x3000, RW)];
        assert_eq!(entries_needed(&r, G4K), Ok(3));
    }

    #[test]
    fn granularity() {
        // G = 0: a 4-byte region is NA4, 12 bytes need TOR.
        assert_eq!(
            plan(&[region(0x1000_0004, 4, RW)], G4),
            [e(0x13, 0x0400_0001)]
        );
        assert_eq!(entries_needed(&[region(0x1000_0004, 12, RW)], G4), Ok(2));
        // G = 10 (4 KiB granules): sub-page starts or lengths are refused.
        let half = [region(0x8000_0000, 0x800, RW)];
        assert_eq!(
            PmpPlan::new(&half, G4K, 0),
            Err(PmpError::Misaligned { index: 0 })
        );
        let off = [region(0x8000_0800, 0x1000, RW)];
        assert_eq!(
            entries_needed(&off, G4K),
            Err(PmpError::Misaligned { index: 0 })
        );
        assert_eq!(entries_needed(&off, G4), Ok(2));
    }

    #[test]
    fn region_errors() {
        let ram = region(0x8000_0000, 0x1_0000, Perms::RWX);
        let empty = region(0x9000_0000, 0, RW);
        assert_eq!(
            entries_needed(&[ram, empty], G4K),
            Err(PmpError::Empty { index: 1 })
        );
        let w = region(0x9000_0000, 0x1000, Perms::W);
        assert_eq!(
            entries_needed(&[w], G4K),
            Err(PmpError::BadPerms { index: 0 })
        );
        let none = region(0x9000_0000, 0x1000, Perms::empty());
        assert_eq!(
            entries_needed(&[none], G4K),
            Err(PmpError::BadPerms { index: 0 })
        );
        let inside = region(0x8000_f000, 0x2000, RW);
        let overlap = Err(PmpError::Overlap {
            first: 0,
            second: 1,
        });
        assert_eq!(entries_needed(&[inside, ram], G4K), overlap);
        assert_eq!(entries_needed(&[ram, ram], G4K), overlap);
        let far = region((1 << 56) - 0x1000, 0x2000, RW);
        assert_eq!(
            entries_needed(&[far], G4K),
            Err(PmpError::OutOfReach { index: 0 })
        );
        // A TOR top of 2^56 does not fit pmpaddr; the same end as NAPOT does.
        let tor_top = region((1 << 56) - 0x3000, 0x3000, RW);
        assert_eq!(
            entries_needed(&[tor_top], G4K),
            Err(PmpError::OutOfReach { index: 0 })
        );
        let napot_top = region((1 << 56) - 0x4000, 0x4000, RW);
        assert_eq!(entries_needed(&[napot_top], G4K), Ok(1));
    }

    #[test]
    fn entry_counts_and_hart_errors() {
        let r: Vec<_> = (0..5)
            .map(|i| region(0x1000_0000 + i * 0x4000, 0x3000, RW))
            .collect();
        assert_eq!(entries_needed(&r, G4K), Ok(10));
        let tight = PmpHart {
            entries: 12,
            granularity_log2: 12,
        };
        assert!(PmpPlan::new(&r, tight, 2).is_ok());
        let needed = Err(PmpError::TooManyEntries {
            needed: 10,
            available: 9,
        });
        assert_eq!(PmpPlan::new(&r, tight, 3), needed);
        assert_eq!(entries_needed(&[], G4K), Ok(0));
        for (entries, g) in [(0, 12), (65, 12), (16, 1), (16, 57)] {
            let hart = PmpHart {
                entries,
                granularity_log2: g,
            };
            assert_eq!(entries_needed(&r, hart), Err(PmpError::BadHart));
        }
        assert_eq!(PmpPlan::all_off(G4K, 9), Err(PmpError::BadHart));
    }

    #[test]
    fn slots_pad_with_off_and_never_lock() {
        let off = PmpPlan::all_off(G4K, 2).unwrap();
        assert!(off.entries().is_empty());
        assert_eq!(off.slots().collect::<Vec<_>>(), [PmpEntry::OFF; 6]);
        assert!(!off.allows(Hpa::new(0x8000_0000), Perms::R));
        let p = PmpPlan::new(&[region(0x8000_0000, 0x3000, RW)], G4K, 2).unwrap();
        let slots: Vec<_> = p.slots().collect();
        assert_eq!(slots.len(), 6);
        assert_eq!(&slots[2..], [PmpEntry::OFF; 4]);
        assert!(slots.iter().all(|s| s.cfg & PmpEntry::L == 0));
    }

    #[test]
    fn decode_and_allows() {
        let ram = region(0x8000_0000, 0x3000, Perms::RWX);
        let uart = region(0x1000_0000, 0x1000, RW);
        let p = PmpPlan::new(&[ram, uart], G4K, 0).unwrap();
        assert_eq!(p.decode(), [(uart.range, RW), (ram.range, Perms::RWX)]);
        assert!(p.allows(Hpa::new(0x8000_0000), Perms::X));
        assert!(p.allows(Hpa::new(0x8000_2fff), Perms::W));
        assert!(!p.allows(Hpa::new(0x8000_3000), Perms::R));
        assert!(!p.allows(Hpa::new(0x7fff_ffff), Perms::R));
        assert!(p.allows(Hpa::new(0x1000_0ffc), Perms::W));
        assert!(!p.allows(Hpa::new(0x1000_0000), Perms::X));
    }

    /// Valid PMP permission sets (W without R is reserved).
    fn perms() -> impl Strategy<Value = Perms> {
        prop::sample::select(vec![
            Perms::R,
            RW,
            Perms::R | Perms::X,
            Perms::RWX,
            Perms::X,
        ])
    }

    /// Page-aligned, non-overlapping regions in shuffled order: (gap, length) in pages
    /// from a base that is sometimes 0 (for entry 0's implicit bottom), lengths from
    /// 1 to 8 pages so both NAPOT and TOR, adjacent and apart, all occur.
    fn regions() -> impl Strategy<Value = Vec<GrantRegion>> {
        let base = prop_oneof![
            Just(0u64),
            Just(0x8000_0000),
            (0u64..1 << 24).prop_map(|p| p << 12)
        ];
        (
            base,
            prop::collection::vec((0u64..4, 1u64..9, perms()), 0..8),
        )
            .prop_map(|(base, specs)| {
                let mut at = base;
                let mut out = Vec::new();
                for (gap, len, perms) in specs {
                    let start = at + (gap << 12);
                    out.push(region(start, len << 12, perms));
                    at = start + (len << 12);
                }
                out
            })
            .prop_shuffle()
    }

    proptest! {
        /// Either the plan fits and grants exactly the regions, or it reports
        /// TooManyEntries exactly when `entries_needed` exceeds what is available.
        #[test]
        fn plan_matches_model(
            regions in regions(),
            entries in 1u8..=16,
            g in 2u32..=12,
            reserved in 0u8..4,
            probes in prop::collection::vec((any::<prop::sample::Index>(), -8i64..8, any::<prop::sample::Index>()), 0..32),
        ) {
            let hart = PmpHart { entries: entries.max(reserved), granularity_log2: g };
            let available = usize::from(hart.entries - reserved);
            let needed = entries_needed(&regions, hart).unwrap();
            let plan = match PmpPlan::new(&regions, hart, reserved) {
                Err(err) => {
                    prop_assert_eq!(err, PmpError::TooManyEntries { needed, available });
                    prop_assert!(needed > available);
                    return Ok(());
                }
                Ok(plan) => plan,
            };
            prop_assert!(needed <= available);
            prop_assert_eq!(plan.entries().len(), needed);
            prop_assert!(plan.entries().iter().all(|e| e.cfg & 0xe0 == 0 && e.addr <= ADDR_MASK));
            // Probe around regions' ends, where an encoding slip would show, and at a
            // random byte inside each.
            let mut points: Vec<u64> = vec![0, 0x7fff_fffc, u64::MAX];
            for (idx, delta, inside) in &probes {
                if let Some(r) = regions.get(idx.index(regions.len().max(1))) {
                    let edge = if delta % 2 == 0 { r.range.start() } else { r.range.end() };
                    points.push(edge.raw().wrapping_add_signed(delta * 4));
                    points.push(r.range.start().raw() + inside.index(r.range.len() as usize) as u64);
                }
            }
            for a in points {
                for access in [Perms::R, Perms::W, Perms::X] {
                    let model = regions
                        .iter()
                        .any(|r| r.range.contains(Hpa::new(a)) && r.perms.contains(access));
                    prop_assert_eq!(plan.allows(Hpa::new(a), access), model, "{:#x} {:?}", a, access);
                }
            }
        }
    }
}
