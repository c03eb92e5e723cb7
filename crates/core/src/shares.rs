//! How many holders each host frame that copy-on-write FORK shares has.
//!
//! A frame absent from [`ShareCounts`] (count 0 in a dense range) is held once: its
//! holder may write it and frees it when done. One present has `count >= 2` holders,
//! each mapping it read-only. What a "holder" is depends on the frame: for a guest data
//! frame, a leaf table mapping it; for a leaf table shared after a FORK, a level-1
//! entry naming it (see `gstage`'s `shared` module, which applies the rules).
//!
//! The counts sit on the hottest copy-on-write paths (a first touch after FORK counts
//! 512 frames at once), so frames of host RAM are counted in **dense ranges**: one
//! `u32` per frame, handed over by the hypervisor at boot ([`add_dense`]), O(1) per
//! operation, like a kernel's per-page metadata. Frames outside every dense range go
//! to a sorted map (host tests use both).
//!
//! Frames are opaque numbers here (the hypervisor uses host page numbers, HPA >> 12).
//!
//! [`add_dense`]: ShareCounts::add_dense

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A host frame number, opaque here.
pub type Frame = u64;

/// Counters per block of a dense range: one 4 KiB page of `u32`s.
pub const BLOCK: usize = 1024;

/// Counters for `counts.len()` frames from `first` on; 0 = held once.
///
/// The counters arrive unzeroed and each [`BLOCK`] is zeroed on its first write: the
/// counters of 4 GiB of host RAM fill 4 MiB, whose zeroing up front cost 164 K
/// instructions of every boot, while a host shares frames of only a few blocks at a
/// time (the ones copy-on-write FORK touched).
#[derive(Debug)]
struct DenseRange {
    first: Frame,
    counts: &'static mut [u32],
    /// One bit per block: set once the block is zeroed (and so its counters valid).
    zeroed: Vec<u64>,
    /// Zeroes one block (the hypervisor's is a few `cbo.zero`s a page).
    zero: fn(&mut [u32]),
}

impl DenseRange {
    /// The index of `frame`'s counter, if this range counts it.
    #[inline]
    fn index(&self, frame: Frame) -> Option<usize> {
        let i = usize::try_from(frame.wrapping_sub(self.first)).ok()?;
        (frame >= self.first && i < self.counts.len()).then_some(i)
    }

    /// `frame`'s counter, which holds 0 until its block is zeroed.
    #[inline]
    fn get(&self, frame: Frame) -> Option<u32> {
        let i = self.index(frame)?;
        let b = i / BLOCK;
        let zeroed = self.zeroed.get(b / 64)? & (1 << (b % 64)) != 0;
        Some(if zeroed { *self.counts.get(i)? } else { 0 })
    }

    /// `frame`'s counter, its block zeroed first if need be.
    #[inline]
    fn get_mut(&mut self, frame: Frame) -> Option<&mut u32> {
        let i = self.index(frame)?;
        let b = i / BLOCK;
        if self.zeroed.get(b / 64)? & (1 << (b % 64)) == 0 {
            self.zero_block(b);
        }
        self.counts.get_mut(i)
    }

    /// Zeroes block `b` (a valid one) and marks it so: once per block.
    #[cold]
    #[inline(never)]
    fn zero_block(&mut self, b: usize) {
        let end = self.counts.len().min((b + 1) * BLOCK);
        if let Some(block) = self.counts.get_mut(b * BLOCK..end) {
            (self.zero)(block);
        }
        if let Some(w) = self.zeroed.get_mut(b / 64) {
            *w |= 1 << (b % 64);
        }
    }
}

/// Holder counts of shared frames. See the module documentation.
#[derive(Debug, Default)]
pub struct ShareCounts {
    dense: Vec<DenseRange>,
    /// Frames outside every dense range -> holders, always >= 2.
    sparse: BTreeMap<Frame, u32>,
    /// Frames with two or more holders, dense and sparse.
    shared: usize,
}

impl ShareCounts {
    /// No frame shared, no dense range.
    pub const fn new() -> Self {
        Self {
            dense: Vec::new(),
            sparse: BTreeMap::new(),
            shared: 0,
        }
    }

    /// Counts the frames `first .. first + counts.len()` in `counts` from now on.
    /// `counts` may hold anything: `zero` zeroes each block of [`BLOCK`] counters (a
    /// 4 KiB page; the last may be shorter) before its first use. The range
    /// must not overlap a dense range already added nor hold a frame already shared
    /// (both are refused, returning `false`).
    pub fn add_dense(
        &mut self,
        first: Frame,
        counts: &'static mut [u32],
        zero: fn(&mut [u32]),
    ) -> bool {
        let end = match first.checked_add(counts.len() as u64) {
            Some(e) => e,
            None => return false,
        };
        let overlaps = self
            .dense
            .iter()
            .any(|d| first < d.first + d.counts.len() as u64 && d.first < end);
        if overlaps || self.sparse.range(first..end).next().is_some() {
            return false;
        }
        let blocks = counts.len().div_ceil(BLOCK);
        self.dense.push(DenseRange {
            first,
            counts,
            zeroed: alloc::vec![0; blocks.div_ceil(64)],
            zero,
        });
        true
    }

    fn dense_slot(&mut self, frame: Frame) -> Option<&mut u32> {
        self.dense.iter_mut().find_map(|d| d.get_mut(frame))
    }

    /// One more holder for each of `frames` (a frame listed `n` times gains `n`).
    pub fn share(&mut self, frames: &[Frame]) {
        for &f in frames {
            match self.dense_slot(f) {
                Some(c) => {
                    if *c == 0 {
                        // The holder it had, plus this one.
                        *c = 2;
                        self.shared += 1;
                    } else {
                        *c = c.saturating_add(1);
                    }
                }
                None => match self.sparse.get_mut(&f) {
                    Some(c) => *c = c.saturating_add(1),
                    None => {
                        self.sparse.insert(f, 2);
                        self.shared += 1;
                    }
                },
            }
        }
    }

    /// Holders of `frame` (1 for a frame not shared).
    pub fn count(&self, frame: Frame) -> u32 {
        let dense = self.dense.iter().find_map(|d| d.get(frame));
        match dense {
            Some(0) => 1,
            Some(c) => c,
            None => self.sparse.get(&frame).copied().unwrap_or(1),
        }
    }

    /// Whether `frame` has another holder besides any one asking.
    pub fn is_shared(&self, frame: Frame) -> bool {
        self.count(frame) >= 2
    }

    /// One holder lets go of `frame`. Returns `true` if others still hold it (the frame
    /// must stay), `false` if the caller held it alone (the frame is its to free).
    pub fn unshare(&mut self, frame: Frame) -> bool {
        let left = match self.dense_slot(frame) {
            Some(c) if *c > 2 => {
                *c -= 1;
                return true;
            }
            Some(c) if *c == 2 => {
                *c = 0;
                true
            }
            Some(_) => return false,
            None => match self.sparse.get_mut(&frame) {
                Some(c) if *c > 2 => {
                    *c -= 1;
                    return true;
                }
                Some(_) => {
                    self.sparse.remove(&frame);
                    true
                }
                None => return false,
            },
        };
        self.shared -= 1;
        left
    }

    /// Number of frames with two or more holders.
    pub fn shared_frames(&self) -> usize {
        self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn fill_zero(block: &mut [u32]) {
        assert!(block.len() <= BLOCK);
        block.fill(0);
    }

    #[test]
    fn fork_fault_and_teardown() {
        let mut s = ShareCounts::new();
        s.share(&[10, 11, 12]);
        assert_eq!(s.count(10), 2);
        assert_eq!(s.count(99), 1);
        // A grandchild shares again.
        s.share(&[10, 11, 12]);
        assert_eq!(s.count(11), 3);
        // One VM copies 10 away; two still map it.
        assert!(s.unshare(10));
        assert_eq!(s.count(10), 2);
        assert!(s.unshare(10));
        assert!(!s.is_shared(10));
        // The last holder frees it.
        assert!(!s.unshare(10));
        assert_eq!(s.shared_frames(), 2);
    }

    #[test]
    fn dense_ranges_are_checked() {
        let mut s = ShareCounts::new();
        s.share(&[100]);
        assert!(!s.add_dense(90, Box::leak(vec![0u32; 20].into_boxed_slice()), fill_zero));
        assert!(s.add_dense(200, Box::leak(vec![0u32; 2].into_boxed_slice()), fill_zero));
        assert_eq!(s.count(201), 1);
        assert!(!s.add_dense(
            u64::MAX,
            Box::leak(vec![0u32; 2].into_boxed_slice()),
            fill_zero
        ));
        assert!(s.add_dense(0, Box::leak(vec![0u32; 50].into_boxed_slice()), fill_zero));
        assert!(!s.add_dense(49, Box::leak(vec![0u32; 2].into_boxed_slice()), fill_zero));
        s.share(&[7, 7, 100]);
        assert_eq!((s.count(7), s.count(100), s.shared_frames()), (3, 3, 2));
        assert!(s.unshare(7) && s.unshare(7) && !s.unshare(7));
        assert_eq!(s.shared_frames(), 1);
    }

    #[test]
    fn duplicates_in_one_share_count_each() {
        let mut s = ShareCounts::new();
        s.share(&[5, 3, 5, 5]);
        assert_eq!(s.count(5), 4);
        assert_eq!(s.count(3), 2);
        s.share(&[5]);
        assert_eq!(s.count(5), 5);
    }

    proptest! {
        /// Against a model holding every frame's count (1 = private).
        #[test]
        fn matches_a_counting_model(ops in proptest::collection::vec((proptest::collection::vec(0u64..16, 0..8), 0u64..16, any::<bool>()), 1..100), dense in any::<bool>()) {
            let mut s = ShareCounts::new();
            // Frame numbers 300 apart, so the dense range spans several blocks of
            // counters, which start as garbage: each must be zeroed on first use.
            let frame = |x: u64| x * 300;
            if dense {
                // Frames 4..12 (1200..3600) dense, the rest sparse.
                let garbage = vec![0xa5a5_a5a5u32; 2400].into_boxed_slice();
                prop_assert!(s.add_dense(frame(4), Box::leak(garbage), fill_zero));
            }
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (frames, one, do_share) in ops {
                if do_share {
                    let frames: Vec<u64> = frames.into_iter().map(frame).collect();
                    s.share(&frames);
                    for f in frames {
                        *model.entry(f).or_insert(1) += 1;
                    }
                } else {
                    let one = frame(one);
                    let m = model.get(&one).copied().unwrap_or(1);
                    prop_assert_eq!(s.unshare(one), m >= 2);
                    if m > 2 {
                        model.insert(one, m - 1);
                    } else {
                        model.remove(&one);
                    }
                }
                for f in (0..16).map(frame) {
                    let m = model.get(&f).copied().unwrap_or(1);
                    prop_assert_eq!(s.count(f), m);
                    prop_assert_eq!(s.is_shared(f), m >= 2);
                }
                prop_assert_eq!(s.shared_frames(), model.len());
            }
        }
    }
}
