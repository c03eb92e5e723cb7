//! How many VMs map each host frame that copy-on-write FORK shares.
//!
//! Only shared frames are recorded: a frame absent from [`ShareCounts`] is mapped by
//! exactly one VM (its owner may write it and frees it when done), one present is
//! mapped read-only by every one of its `count >= 2` sharers. Keeping private frames
//! out keeps the record proportional to what FORK actually shares, not to all of RAM.
//!
//! This is the whole rule set the hypervisor applies, kept free of hardware so it can be
//! tested here:
//! - FORK: [`share`](ShareCounts::share) every frame the parent maps (the child maps the
//!   same frames, so each gains one sharer);
//! - a write fault on a shared frame: copy it, then [`unshare`](ShareCounts::unshare)
//!   the old one (only once no hart can still reach it through a stale TLB entry);
//! - a write fault on a frame [`is_shared`](ShareCounts::is_shared) says is private:
//!   make it writable again, no copy;
//! - teardown: [`unshare`](ShareCounts::unshare) each frame; `false` means the VM held
//!   the last reference and must free the frame.
//!
//! Frames are opaque numbers here (the hypervisor uses host page numbers, HPA >> 12).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A host frame number, opaque here.
pub type Frame = u64;

/// Sharer counts of shared frames. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareCounts {
    /// Frame -> number of VMs mapping it, always >= 2.
    counts: BTreeMap<Frame, u32>,
}

impl ShareCounts {
    /// No frame shared.
    pub const fn new() -> Self {
        Self {
            counts: BTreeMap::new(),
        }
    }

    /// One more VM maps each of `frames` (a FORK child maps what its parent maps).
    ///
    /// A frame listed `n` times gains `n` sharers. Frames not yet shared are gathered,
    /// sorted and added in bulk, so forking a large VM costs one pass, not one tree
    /// insertion per page.
    pub fn share(&mut self, frames: &[Frame]) {
        let mut fresh: Vec<Frame> = Vec::new();
        for f in frames {
            match self.counts.get_mut(f) {
                Some(c) => *c = c.saturating_add(1),
                None => fresh.push(*f),
            }
        }
        // Guest RAM is allocated in ascending blocks, so this is usually sorted already
        // (and sorting it then costs one pass).
        fresh.sort_unstable();
        let mut runs: Vec<(Frame, u32)> = Vec::with_capacity(fresh.len());
        for f in fresh {
            match runs.last_mut() {
                Some((last, n)) if *last == f => *n = n.saturating_add(1),
                // The owner it had, plus this sharer.
                _ => runs.push((f, 2)),
            }
        }
        // Collecting sorted, distinct keys builds the tree bottom-up in one pass, and
        // `append` merges two trees in one pass (or just moves `added` into an empty
        // one): far cheaper than one insertion per page.
        let mut added: BTreeMap<Frame, u32> = runs.into_iter().collect();
        self.counts.append(&mut added);
    }

    /// Whether another VM also maps `frame`.
    pub fn is_shared(&self, frame: Frame) -> bool {
        self.counts.contains_key(&frame)
    }

    /// VMs mapping `frame` (1 for a frame not recorded: its owner alone).
    pub fn count(&self, frame: Frame) -> u32 {
        self.counts.get(&frame).copied().unwrap_or(1)
    }

    /// One VM stops mapping `frame`. Returns `true` if others still map it (the frame
    /// must stay), `false` if the caller held the only reference (the frame is its to
    /// free or keep).
    pub fn unshare(&mut self, frame: Frame) -> bool {
        match self.counts.get_mut(&frame) {
            Some(c) if *c > 2 => {
                *c -= 1;
                true
            }
            Some(_) => {
                self.counts.remove(&frame);
                true
            }
            None => false,
        }
    }

    /// Number of shared frames.
    pub fn shared_frames(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

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
        fn matches_a_counting_model(ops in proptest::collection::vec((proptest::collection::vec(0u64..16, 0..8), 0u64..16, any::<bool>()), 1..100)) {
            let mut s = ShareCounts::new();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (frames, one, do_share) in ops {
                if do_share {
                    s.share(&frames);
                    for f in frames {
                        *model.entry(f).or_insert(1) += 1;
                    }
                } else {
                    let m = model.get(&one).copied().unwrap_or(1);
                    prop_assert_eq!(s.unshare(one), m >= 2);
                    if m > 2 {
                        model.insert(one, m - 1);
                    } else {
                        model.remove(&one);
                    }
                }
                for f in 0..16 {
                    let m = model.get(&f).copied().unwrap_or(1);
                    prop_assert_eq!(s.count(f), m);
                    prop_assert_eq!(s.is_shared(f), m >= 2);
                }
                prop_assert_eq!(s.shared_frames(), model.len());
            }
        }
    }
}
