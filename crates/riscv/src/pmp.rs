//! Physical memory protection: keeps the hypervisor's own memory out of reach of S/U and
//! VS/VU accesses, whatever the G-stage tables say (defence in depth), while leaving the
//! rest of the address space to the G-stage tables.

use diosix_addr::{Hpa, Range};

const R: usize = 1;
const W: usize = 2;
const X: usize = 4;
const TOR: usize = 1 << 3;

/// Programs PMP entries 0-2 on this hart:
/// `[0, hv.start())` RWX, `hv` no access, `[hv.end(), top)` RWX.
///
/// # Safety
/// `hv` must cover the hypervisor image, stacks, heap and trap frames, and its ends
/// must be 4-byte aligned. M-mode is unaffected (the entries are not locked).
pub unsafe fn protect_hypervisor(hv: Range<Hpa>) {
    let cfg = (R | W | X | TOR) | (TOR << 8) | ((R | W | X | TOR) << 16);
    // pmpaddr holds bits 55:2 of an address; on RV64 both fit a usize.
    let (start, end) = (
        (hv.start().raw() >> 2) as usize,
        (hv.end().raw() >> 2) as usize,
    );
    // SAFETY: the caller guarantees the range; unlocked entries never restrict M-mode,
    // so the hypervisor keeps running whatever we write here.
    unsafe {
        crate::csr::pmpaddr0::write(start);
        crate::csr::pmpaddr1::write(end);
        crate::csr::pmpaddr2::write(usize::MAX >> 10);
        crate::csr::pmpcfg0::write(cfg);
    }
}
