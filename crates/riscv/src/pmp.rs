//! Physical memory protection: keeps the hypervisor's own memory out of reach of S/U and
//! VS/VU accesses, whatever the G-stage tables say (defence in depth), while leaving the
//! rest of the address space to the G-stage tables.

const R: usize = 1;
const W: usize = 2;
const X: usize = 4;
const TOR: usize = 1 << 3;

/// Programs PMP entries 0-2 on this hart:
/// `[0, hv_start)` RWX, `[hv_start, hv_end)` no access, `[hv_end, top)` RWX.
///
/// # Safety
/// `hv_start..hv_end` must cover the hypervisor image, stacks, heap and trap frames, and
/// must be 4-byte aligned. M-mode is unaffected (the entries are not locked).
pub unsafe fn protect_hypervisor(hv_start: usize, hv_end: usize) {
    let cfg = (R | W | X | TOR) | (TOR << 8) | ((R | W | X | TOR) << 16);
    // SAFETY: the caller guarantees the range; unlocked entries never restrict M-mode,
    // so the hypervisor keeps running whatever we write here.
    unsafe {
        crate::csr::pmpaddr0::write(hv_start >> 2);
        crate::csr::pmpaddr1::write(hv_end >> 2);
        crate::csr::pmpaddr2::write(usize::MAX >> 10);
        crate::csr::pmpcfg0::write(cfg);
    }
}
