//! The hypervisor's own heap: a fixed region reserved by the linker script.

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
