//! After `add_range`, the host frame allocator never touches the heap (issue 9, item 7):
//! a counting global allocator sees no allocation, reallocation or free on this thread
//! while tens of thousands of mixed operations run — single pages, aligned blocks, table
//! roots, long unaligned runs, page-by-page `free_part` that splits allocations, refused
//! frees, and a fully fragmented memory.
//!
//! A test of its own (its own binary, one test), so nothing else runs on its thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use diosix_core::addr::{Hpa, Range, PAGE_SIZE};
use diosix_core::frames::HostFrames;

thread_local! {
    /// Heap calls made by this thread (a const-initialised `Cell` needs no allocation and
    /// no destructor, so the allocator can use it).
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = CALLS.try_with(|c| c.set(c.get() + 1));
}

fn calls() -> u64 {
    CALLS.with(Cell::get)
}

struct Counting;

// SAFETY: every method forwards its arguments unchanged to the system allocator, which
// upholds the `GlobalAlloc` contract; counting only bumps a thread-local integer.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// xorshift64: deterministic, allocation-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
}

fn range(start: u64, pages: u64) -> Range<Hpa> {
    Range::new(Hpa::new(start), pages * PAGE_SIZE).unwrap()
}

#[test]
fn no_heap_use_after_add_range() {
    // The counter works: a Vec allocates.
    let c0 = calls();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    assert!(calls() >= c0 + 2, "the counting allocator does not count");

    let mut a = HostFrames::new();
    // 64 MiB, a separate 8 MiB + 12 KiB off every alignment, and a range adjacent to
    // the first (merged with it).
    a.add_range(range(0x8000_0000, 16384)).unwrap();
    a.add_range(range(0x9020_3000, 2051)).unwrap();
    a.add_range(range(0x8400_0000, 1000)).unwrap();
    let total = a.total_pages();
    let heap = a.heap_bytes();
    // Bookkeeping of the test itself, allocated up front and never grown.
    let mut live: Vec<(Hpa, usize)> = Vec::with_capacity(40_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let before = calls();
    for _ in 0..60_000 {
        let r = rng.next();
        match r % 10 {
            0..=5 if live.len() < live.capacity() => {
                let (pages, align) = match (r >> 8) % 6 {
                    0 | 1 => (1, 1),
                    2 => (4, 4),
                    3 => (512, 512),
                    4 => (1 + (r >> 16) % 3000, 1),
                    _ => (1 + (r >> 16) % 100, 1 << ((r >> 32) % 8)),
                };
                if let Some(h) = a.alloc(pages, align) {
                    assert!(h.is_aligned(align as u64 * PAGE_SIZE));
                    live.push((h, pages));
                }
            }
            6 | 7 if !live.is_empty() => {
                let (h, n) = live.swap_remove((r >> 8) % live.len());
                assert_eq!(a.free(h, n), Ok(()));
            }
            8 if !live.is_empty() && live.len() < live.capacity() => {
                // One page out of an allocation: it splits in two.
                let i = (r >> 8) % live.len();
                let (h, n) = live[i];
                let p = (r >> 32) % n;
                let page = Hpa::new(h.raw() + p as u64 * PAGE_SIZE);
                assert_eq!(a.free_part(page, 1), Ok(()));
                live.swap_remove(i);
                if p > 0 {
                    live.push((h, p));
                }
                if p + 1 < n {
                    live.push((Hpa::new(page.raw() + PAGE_SIZE), n - p - 1));
                }
            }
            _ => {
                // Refused frees change nothing and allocate nothing either.
                let h = Hpa::new(0x8000_0000 + ((r >> 8) % 20_000) as u64 * PAGE_SIZE);
                let n = 1 + (r >> 40) % 4000;
                if !live.contains(&(h, n)) {
                    assert!(a.free(h, n).is_err());
                }
                let end = h.raw() + n as u64 * PAGE_SIZE;
                let free = |&(o, m): &(Hpa, usize)| {
                    o.raw() >= end || o.raw() + m as u64 * PAGE_SIZE <= h.raw()
                };
                if live.iter().all(free) {
                    assert!(a.free_part(h, n).is_err());
                }
            }
        }
        let used: usize = live.iter().map(|&(_, n)| n).sum();
        assert_eq!(a.free_pages(), total - used);
    }
    // Fragment everything: give all back, take every page singly (lowest first, so in
    // address order), then give back every other one.
    for (h, n) in live.drain(..) {
        assert_eq!(a.free(h, n), Ok(()));
    }
    while let Some(h) = a.alloc(1, 1) {
        live.push((h, 1));
    }
    assert_eq!(live.len(), total);
    for (h, _) in live.iter().skip(1).step_by(2) {
        assert_eq!(a.free_part(*h, 1), Ok(()));
    }
    assert_eq!(a.free_pages(), total / 2);
    assert!(a.alloc(2, 1).is_none());
    assert!(a.alloc(512, 512).is_none());
    assert_eq!(a.alloc(1, 1), Some(live[1].0));
    let after = calls();
    assert_eq!(after - before, 0, "heap calls after add_range");
    assert_eq!(a.heap_bytes(), heap);
}
