//! The hypervisor's own heap: a region reserved by the linker script, grown once at
//! boot by a share of host RAM ([`grow`]). It never grows after that: the Root VM's
//! vCPU and descendant quotas are sized from its total so that what guests can make
//! the hypervisor allocate always fits (`diosix_core::tree::quota::heap_bounded`).

use buddy_system_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

extern "C" {
    static __heap_start: u8;
    static __heap_end: u8;
}

/// Hands the linker-reserved heap region to the allocator.
///
/// # Safety
/// Call once, before the first allocation.
pub unsafe fn init() {
    let start = core::ptr::addr_of!(__heap_start) as usize;
    let end = core::ptr::addr_of!(__heap_end) as usize;
    // SAFETY: the symbols delimit a region link.ld reserves for the heap alone.
    unsafe { HEAP.lock().init(start, end - start) };
}

/// Adds `bytes` of host RAM at `hpa` to the heap, for good.
///
/// # Safety
/// The range must be RAM that nothing else uses, now or later (frames taken from the
/// allocator and never returned).
pub unsafe fn grow(hpa: diosix_core::addr::Hpa, bytes: usize) {
    let start = hpa.raw() as usize;
    // SAFETY: forwarded contract; M-mode addresses RAM physically.
    unsafe { HEAP.lock().add_to_heap(start, start + bytes) };
}

/// Bytes of the heap allocated now (as the allocator rounds them).
pub fn used_bytes() -> u64 {
    HEAP.lock().stats_alloc_actual() as u64
}

/// Bytes the heap manages in all.
pub fn total_bytes() -> u64 {
    HEAP.lock().stats_total_bytes() as u64
}
