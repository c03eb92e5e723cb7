//! The guest's own (VS-stage) page tables, walked by the hypervisor: GVA to GPA.
//!
//! A few SBI calls take a pointer the guest computed under its own paging (the legacy
//! v0.1 calls' hart-mask pointer). The hypervisor then has to do what the hart's
//! VS-stage walk would do for a supervisor read, following the privileged spec's
//! Sv39/Sv48/Sv57 rules: canonical addresses, valid PTEs, no W without R, aligned
//! superpages, U pages only with `sstatus.SUM`, and A set (the hypervisor never updates
//! a guest's page tables, so a clear A is a fault, as under Svade). Every table read
//! goes through `read_pte`, which reads guest memory by GPA (through the G-stage) and
//! fails for anything the guest could not read itself.

use crate::addr::{Gpa, Gva};
use crate::gstage::{PTE_A, PTE_R, PTE_U, PTE_V, PTE_W, PTE_X};

/// Bits 53:10 of a PTE: the physical page number.
const PPN_MASK: u64 = (1 << 44) - 1;

/// `vsstatus.SUM`: supervisor access to user pages allowed.
pub const SSTATUS_SUM: u64 = 1 << 18;

/// Why a GVA has no GPA for a supervisor read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsFault {
    /// The `vsatp` mode is not Bare, Sv39, Sv48 or Sv57.
    UnsupportedMode(u64),
    /// The guest's tables do not allow the read (what the hart would raise as a load
    /// page fault).
    PageFault(Gva),
    /// A page-table entry's GPA could not be read.
    TableUnreadable(Gpa),
}

/// The GPA a supervisor-mode read of `gva` reaches under `vsatp`, with `vsstatus`
/// supplying SUM. `read_pte` reads the 8-byte PTE at a GPA (`None` if the guest could
/// not read it there).
pub fn translate_read(
    vsatp: u64,
    vsstatus: u64,
    gva: Gva,
    mut read_pte: impl FnMut(Gpa) -> Option<u64>,
) -> Result<Gpa, VsFault> {
    let mode = vsatp >> 60;
    let levels: u32 = match mode {
        0 => return Ok(Gpa::new(gva.raw())),
        8 => 3,
        9 => 4,
        10 => 5,
        m => return Err(VsFault::UnsupportedMode(m)),
    };
    let va_bits = 12 + 9 * levels;
    let va = gva.raw();
    // Canonical: every bit above the top VPN bit equals it.
    let top = (va as i64) >> (va_bits - 1);
    if top != 0 && top != -1 {
        return Err(VsFault::PageFault(gva));
    }
    let fault = Err(VsFault::PageFault(gva));
    let mut table = (vsatp & PPN_MASK) << 12;
    for level in (0..levels).rev() {
        let vpn = (va >> (12 + 9 * level)) & 0x1ff;
        let at = Gpa::new(table + vpn * 8);
        let pte = read_pte(at).ok_or(VsFault::TableUnreadable(at))?;
        if pte & PTE_V == 0 || (pte & PTE_W != 0 && pte & PTE_R == 0) {
            return fault;
        }
        let ppn = (pte >> 10) & PPN_MASK;
        if pte & (PTE_R | PTE_X) == 0 {
            // A pointer to the next level.
            if level == 0 {
                return fault;
            }
            table = ppn << 12;
            continue;
        }
        // A leaf: readable, accessed, user only with SUM, superpages aligned.
        if pte & PTE_R == 0 || pte & PTE_A == 0 {
            return fault;
        }
        if pte & PTE_U != 0 && vsstatus & SSTATUS_SUM == 0 {
            return fault;
        }
        let low_ppn_bits = 9 * level;
        if ppn & ((1 << low_ppn_bits) - 1) != 0 {
            return fault;
        }
        let offset_bits = 12 + low_ppn_bits;
        let offset = va & ((1 << offset_bits) - 1);
        return Ok(Gpa::new((ppn << 12) | offset));
    }
    fault
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const V: u64 = PTE_V;
    const R: u64 = PTE_R;
    const W: u64 = PTE_W;
    const X: u64 = PTE_X;
    const U: u64 = PTE_U;
    const A: u64 = PTE_A;

    fn pte(pa: u64, bits: u64) -> u64 {
        ((pa >> 12) << 10) | bits
    }

    fn sv39(root: u64) -> u64 {
        (8 << 60) | (root >> 12)
    }

    #[test]
    fn sv39_walks_leaves_and_superpages() {
        let mut m: HashMap<u64, u64> = HashMap::new();
        let root = 0x8010_0000;
        let l1 = 0x8010_1000;
        let l0 = 0x8010_2000;
        // GiB page 3 -> 0x8000_0000 (identity-shifted).
        m.insert(root + 3 * 8, pte(0x8000_0000, V | R | W | X | A));
        // 0x0000_0000_4020_5000 via three levels -> 0x8030_0000.
        m.insert(root + 8, pte(l1, V));
        m.insert(l1 + 8, pte(l0, V));
        m.insert(l0 + 5 * 8, pte(0x8030_0000, V | R | A));
        // A 2 MiB page at VA 0x4040_0000 (l1 index 2), misaligned PPN.
        m.insert(l1 + 2 * 8, pte(0x8030_1000, V | R | A));
        // A user page at VA 0x4020_6000.
        m.insert(l0 + 6 * 8, pte(0x8031_0000, V | R | U | A));
        // Not accessed, write-only, not readable (X only).
        m.insert(l0 + 7 * 8, pte(0x8032_0000, V | R));
        m.insert(l0 + 8 * 8, pte(0x8033_0000, V | W | A));
        m.insert(l0 + 9 * 8, pte(0x8034_0000, V | X | A));
        let read = |g: Gpa| Some(m.get(&g.raw()).copied().unwrap_or(0));
        let satp = sv39(root);
        let t = |va: u64, sstatus: u64| translate_read(satp, sstatus, Gva::new(va), read);
        assert_eq!(t(0xC000_1234, 0), Ok(Gpa::new(0x8000_1234)));
        assert_eq!(t(0x4020_5678, 0), Ok(Gpa::new(0x8030_0678)));
        let pf = |va: u64| Err(VsFault::PageFault(Gva::new(va)));
        assert_eq!(t(0x4040_0000, 0), pf(0x4040_0000));
        assert_eq!(t(0x4020_6000, 0), pf(0x4020_6000));
        assert_eq!(t(0x4020_6008, SSTATUS_SUM), Ok(Gpa::new(0x8031_0008)));
        for va in [0x4020_7000, 0x4020_8000, 0x4020_9000, 0x4020_a000, 0x1000] {
            assert_eq!(t(va, SSTATUS_SUM), pf(va));
        }
        // Not canonical under Sv39.
        assert_eq!(t(0x0000_0040_0000_0000, 0), pf(0x0000_0040_0000_0000));
        // Bare: identity; unknown modes refused.
        assert_eq!(
            translate_read(0, 0, Gva::new(0x1234), read),
            Ok(Gpa::new(0x1234))
        );
        assert_eq!(
            translate_read(1 << 60, 0, Gva::new(0), read),
            Err(VsFault::UnsupportedMode(1))
        );
        // A table the guest cannot read.
        assert_eq!(
            translate_read(satp, 0, Gva::new(0x4020_5000), |_| None),
            Err(VsFault::TableUnreadable(Gpa::new(root + 8)))
        );
    }

    #[test]
    fn sv48_and_sv57_use_more_levels() {
        let mut m: HashMap<u64, u64> = HashMap::new();
        // Sv48: a 512 GiB region at index 1 of the root, then a GiB page.
        let root = 0x8010_0000;
        let l2 = 0x8010_1000;
        m.insert(root + 8, pte(l2, V));
        m.insert(l2 + 2 * 8, pte(0x8000_0000, V | R | A));
        let read = |g: Gpa| Some(m.get(&g.raw()).copied().unwrap_or(0));
        let va = (1u64 << 39) | (2 << 30) | 0x42;
        assert_eq!(
            translate_read((9 << 60) | (root >> 12), 0, Gva::new(va), read),
            Ok(Gpa::new(0x8000_0042))
        );
        // Sv57 reads five levels: the same entry is now a level-4 pointer to nowhere.
        assert_eq!(
            translate_read((10 << 60) | (root >> 12), 0, Gva::new(va), read),
            Err(VsFault::PageFault(Gva::new(va)))
        );
    }
}
