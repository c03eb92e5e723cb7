//! A counting global allocator: the largest single request and the peak of live heap
//! bytes while one input runs, so an input that makes a parser allocate absurdly is a
//! finding like a panic.
//!
//! A request above [`HARD_CAP`] is not passed on: its input is written to the findings
//! directory first (the process then aborts, as a failed allocation does), so even an
//! allocation that would take the machine down leaves a replayable file behind.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// Requests above this are refused outright (after saving the input).
pub const HARD_CAP: usize = 1 << 30;

/// The allocator; installed as `#[global_allocator]` in `main.rs`.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static CURRENT_PTR: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static SAVING: AtomicBool = AtomicBool::new(false);
/// Where an input that asked for more than [`HARD_CAP`] is written.
pub static ABORT_FILE: OnceLock<PathBuf> = OnceLock::new();

fn note(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
    LARGEST.fetch_max(size, Relaxed);
}

fn over_cap(size: usize) -> bool {
    if size <= HARD_CAP {
        return false;
    }
    if !SAVING.swap(true, Relaxed) {
        let ptr = CURRENT_PTR.load(Relaxed);
        let len = CURRENT_LEN.load(Relaxed);
        if let Some(path) = ABORT_FILE.get() {
            let input: &[u8] = if ptr.is_null() {
                &[]
            } else {
                // SAFETY: `track` stores the pointer and length of a slice that the
                // engine keeps alive (and unmodified) for as long as it is tracked.
                unsafe { core::slice::from_raw_parts(ptr, len) }
            };
            // Small allocations made here re-enter this allocator, which is fine.
            let _ = std::fs::write(path, input);
            eprintln!(
                "fuzz: an input asked for {size} bytes in one allocation; saved to {}",
                path.display()
            );
        }
    }
    true
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer
// unchanged; the counters are plain atomics and never affect what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return core::ptr::null_mut();
        }
        note(layout.size());
        // SAFETY: forwarded with the caller's valid layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return core::ptr::null_mut();
        }
        note(layout.size());
        // SAFETY: forwarded with the caller's valid layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `System` with this layout (every path above forwards).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_cap(new_size) {
            return core::ptr::null_mut();
        }
        let p = {
            // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            note(new_size);
        }
        p
    }
}

/// Heap use of one input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Largest single allocation (or reallocation) request.
    pub largest: usize,
    /// Peak live heap bytes above what was live when tracking started.
    pub peak: usize,
}

/// Starts measuring one input; `input` is what gets saved if it asks for more than
/// [`HARD_CAP`]. The caller must keep `input` alive and unchanged until [`finish`].
pub fn track(input: &[u8]) -> usize {
    CURRENT_PTR.store(input.as_ptr().cast_mut(), Relaxed);
    CURRENT_LEN.store(input.len(), Relaxed);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    LARGEST.store(0, Relaxed);
    base
}

/// The peak and largest figures so far, to be put back with [`restore`] after work
/// that should not count (capturing a backtrace loads debug information: tens of MiB).
pub fn snapshot() -> (usize, usize) {
    (PEAK.load(Relaxed), LARGEST.load(Relaxed))
}

/// Puts back figures taken with [`snapshot`].
pub fn restore((peak, largest): (usize, usize)) {
    PEAK.store(peak, Relaxed);
    LARGEST.store(largest, Relaxed);
}

/// Runs `f` (a harness's own cross-check, not the parser under test) without its heap
/// use counting towards the input's figures.
pub fn untracked<R>(f: impl FnOnce() -> R) -> R {
    let saved = snapshot();
    let r = f();
    restore(saved);
    r
}

/// Stops measuring; returns what the input used.
pub fn finish(base: usize) -> Usage {
    CURRENT_PTR.store(core::ptr::null_mut(), Relaxed);
    CURRENT_LEN.store(0, Relaxed);
    Usage {
        largest: LARGEST.load(Relaxed),
        peak: PEAK.load(Relaxed).saturating_sub(base),
    }
}
