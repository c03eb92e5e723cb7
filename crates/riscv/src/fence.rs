//! Memory and TLB fences, including the H extension's (encoded as raw words so the
//! assembler needs no H support).

/// `fence.i`: synchronise this hart's instruction fetches with prior stores.
#[inline]
pub fn fence_i() {
    // SAFETY: fence.i has no operands and only orders instruction fetch.
    unsafe { core::arch::asm!("fence.i") };
}

/// `hfence.vvma x0, x0`: flush this hart's VS-stage TLB entries for the VMID in `hgatp`.
#[inline]
pub fn hfence_vvma_all() {
    // SAFETY: a TLB flush only drops cached translations; it cannot break memory safety.
    unsafe { core::arch::asm!(".word 0x22000073") };
}

/// `hfence.gvma x0, x0`: flush this hart's G-stage TLB entries for every VMID.
#[inline]
pub fn hfence_gvma_all() {
    // SAFETY: a TLB flush only drops cached translations; it cannot break memory safety.
    unsafe { core::arch::asm!(".word 0x62000073") };
}

/// `sfence.vma x0, x0`: flush this hart's TLB entries for every address space (on
/// harts without H, the guests' own translations).
#[inline]
pub fn sfence_vma_all() {
    // SAFETY: a TLB flush only drops cached translations; it cannot break memory safety.
    unsafe { core::arch::asm!("sfence.vma") };
}

/// `fence rw, rw`: order all prior memory accesses before later ones.
#[inline]
pub fn fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}
