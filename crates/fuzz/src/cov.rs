//! Coverage feedback on stable Rust.
//!
//! Built with `RUSTFLAGS="-C instrument-coverage"` (stable since Rust 1.60) and the
//! `coverage` feature, every instrumented code region of this binary — the fuzzed
//! crates included — increments a 64-bit counter in the profiler runtime's counter
//! section. The engine zeroes the counters before an input and reads them after it,
//! bucketing each count as AFL does (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+). An
//! input that reaches a (region, bucket) pair no earlier input reached is kept in the
//! corpus. Without the feature, [`Coverage::available`] is false and only the
//! harness's outcome label guides the corpus.

/// The counter section of this process, or nothing when not instrumented.
pub struct Coverage {
    #[cfg(feature = "coverage")]
    counters: &'static mut [u64],
}

#[cfg(feature = "coverage")]
#[allow(unsafe_code)]
mod imp {
    extern "C" {
        // compiler-rt's profiler runtime (linked by `-C instrument-coverage`): the
        // bounds of the `__llvm_prf_cnts` section holding every region counter.
        fn __llvm_profile_begin_counters() -> *mut u8;
        fn __llvm_profile_end_counters() -> *mut u8;
    }

    pub fn counters() -> &'static mut [u64] {
        // SAFETY: the runtime returns the start and end of the counter section, a
        // static array of 8-byte counters (Rust's coverage instrumentation does not use
        // single-byte counters) that lives for the whole process. Only the engine's
        // single thread creates this slice, once; the instrumented code increments the
        // same memory, but never while the engine reads or clears it (the harness runs
        // on this thread between those accesses).
        unsafe {
            let begin = __llvm_profile_begin_counters();
            let end = __llvm_profile_end_counters();
            let bytes = (end as usize).saturating_sub(begin as usize);
            if begin.is_null() || bytes < 8 || begin as usize % 8 != 0 {
                return &mut [];
            }
            core::slice::from_raw_parts_mut(begin.cast::<u64>(), bytes / 8)
        }
    }
}

/// AFL's hit-count buckets, one bit each.
#[cfg_attr(not(feature = "coverage"), allow(dead_code))]
fn bucket(count: u64) -> u8 {
    match count {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        _ => 128,
    }
}

impl Coverage {
    /// The counters of this process (taken once; see the module documentation).
    pub fn new() -> Self {
        Coverage {
            #[cfg(feature = "coverage")]
            counters: imp::counters(),
        }
    }

    /// Number of counters (0 when not instrumented).
    pub fn len(&self) -> usize {
        #[cfg(feature = "coverage")]
        return self.counters.len();
        #[cfg(not(feature = "coverage"))]
        0
    }

    /// True when counters are available.
    pub fn available(&self) -> bool {
        self.len() > 0
    }

    /// Zeroes every counter, before an input runs.
    pub fn reset(&mut self) {
        #[cfg(feature = "coverage")]
        self.counters.fill(0);
    }

    /// Folds the counters of the input that just ran into `seen` (one byte of bucket
    /// bits per counter); returns how many new (counter, bucket) pairs it reached.
    pub fn merge(&self, seen: &mut Vec<u8>) -> usize {
        #[allow(unused_mut)]
        let mut new = 0;
        #[cfg(feature = "coverage")]
        {
            if seen.len() != self.counters.len() {
                seen.resize(self.counters.len(), 0);
            }
            for (s, &c) in seen.iter_mut().zip(self.counters.iter()) {
                if c != 0 {
                    let b = bucket(c);
                    if *s & b == 0 {
                        *s |= b;
                        new += 1;
                    }
                }
            }
        }
        #[cfg(not(feature = "coverage"))]
        let _ = seen;
        new
    }

    /// Counters that have ever been non-zero in `seen`.
    pub fn covered(seen: &[u8]) -> usize {
        seen.iter().filter(|&&b| b != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_single_bits_and_monotonic() {
        let mut last = 0;
        for c in [1u64, 2, 3, 4, 8, 16, 32, 128, u64::MAX] {
            let b = bucket(c);
            assert_eq!(b.count_ones(), 1);
            assert!(b >= last);
            last = b;
        }
        assert_eq!(bucket(0), 0);
    }
}
