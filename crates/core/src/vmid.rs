//! G-stage VMID allocation: one bit per VMID, lowest free first, VMID 0 never handed
//! out. A freed VMID is handed out again; the hypervisor flushes the G-stage TLB on
//! every vCPU load, so no stale translation survives the reuse.

use crate::gstage::MAX_VMID;

/// Words of the bitmap: enough for every VMID `hgatp` can hold.
const WORDS: usize = (MAX_VMID as usize + 1).div_ceil(64);

/// The VMIDs in use. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmidAllocator {
    /// Bit `id % 64` of word `id / 64` is set while VMID `id` is in use (VMID 0
    /// always).
    used: [u64; WORDS],
    /// The largest VMID handed out.
    max: u16,
}

impl Default for VmidAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl VmidAllocator {
    /// Every VMID from 1 to [`MAX_VMID`] free.
    pub const fn new() -> Self {
        Self::with_max(MAX_VMID)
    }

    /// Every VMID from 1 to `max` free (`max` is capped at [`MAX_VMID`]), for hardware
    /// that implements fewer VMID bits.
    pub const fn with_max(max: u16) -> Self {
        let mut used = [0; WORDS];
        used[0] = 1;
        let max = if max > MAX_VMID { MAX_VMID } else { max };
        Self { used, max }
    }

    /// The largest VMID this allocator hands out.
    pub fn max(&self) -> u16 {
        self.max
    }

    /// Takes the lowest free VMID, or `None` if all of `1..=max` are in use.
    pub fn alloc(&mut self) -> Option<u16> {
        let (w, word) = self
            .used
            .iter_mut()
            .enumerate()
            .find(|(_, word)| **word != u64::MAX)?;
        let bit = (!*word).trailing_zeros() as usize;
        // Lower VMIDs are all in use, so none up to `max` is free if this one is past it.
        let id = u16::try_from(w * 64 + bit)
            .ok()
            .filter(|&id| id <= self.max)?;
        *word |= 1 << bit;
        Some(id)
    }

    /// Returns `vmid` to the free VMIDs. Freeing VMID 0, a VMID past `max` or one not
    /// in use changes nothing.
    pub fn free(&mut self, vmid: u16) {
        if vmid == 0 || vmid > self.max {
            return;
        }
        let i = usize::from(vmid);
        self.used[i / 64] &= !(1 << (i % 64));
    }

    /// Whether `vmid` is in use (VMID 0 always is).
    pub fn in_use(&self, vmid: u16) -> bool {
        let i = usize::from(vmid);
        self.used
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// How many VMIDs are in use, not counting VMID 0.
    pub fn count(&self) -> usize {
        let set: u32 = self.used.iter().map(|w| w.count_ones()).sum();
        set as usize - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn lowest_free_first_and_zero_never() {
        let mut a = VmidAllocator::new();
        assert!(a.in_use(0));
        assert_eq!(a.count(), 0);
        for want in 1..=200 {
            assert_eq!(a.alloc(), Some(want));
        }
        assert_eq!(a.count(), 200);
        // Including the multiples of 64.
        assert!(a.in_use(64) && a.in_use(128) && a.in_use(192));
    }

    #[test]
    fn every_vmid_up_to_the_maximum_then_none() {
        let mut a = VmidAllocator::new();
        assert_eq!(a.max(), MAX_VMID);
        let mut seen = BTreeSet::new();
        while let Some(id) = a.alloc() {
            assert!(id != 0 && id <= MAX_VMID);
            assert!(seen.insert(id), "VMID {id} handed out twice");
        }
        assert_eq!(seen.len(), usize::from(MAX_VMID));
        assert_eq!(a.count(), usize::from(MAX_VMID));
        assert_eq!(a.alloc(), None);
        assert_eq!(a.alloc(), None);
        // One freed: that one comes back, and only it.
        a.free(4321);
        assert_eq!(a.alloc(), Some(4321));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn smaller_maximum() {
        let mut a = VmidAllocator::with_max(3);
        assert_eq!(a.max(), 3);
        assert_eq!(
            [a.alloc(), a.alloc(), a.alloc()],
            [Some(1), Some(2), Some(3)]
        );
        assert_eq!(a.alloc(), None);
        assert!(!a.in_use(4));
        // Past the maximum: ignored.
        a.free(4);
        assert_eq!(a.alloc(), None);
        a.free(2);
        assert_eq!(a.alloc(), Some(2));

        let mut none = VmidAllocator::with_max(0);
        assert_eq!(none.alloc(), None);
        // A maximum past what hgatp holds is capped.
        assert_eq!(VmidAllocator::with_max(u16::MAX).max(), MAX_VMID);
        // A maximum ending exactly on a word.
        let mut a = VmidAllocator::with_max(63);
        assert_eq!((1..=63).map(|_| a.alloc()).last(), Some(Some(63)));
        assert_eq!(a.alloc(), None);
        let mut a = VmidAllocator::with_max(64);
        assert_eq!((1..=64).map(|_| a.alloc()).last(), Some(Some(64)));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn freed_vmids_are_reused_lowest_first() {
        let mut a = VmidAllocator::new();
        for _ in 0..100 {
            a.alloc();
        }
        a.free(70);
        a.free(5);
        a.free(64);
        assert!(!a.in_use(5));
        assert_eq!(a.count(), 97);
        assert_eq!(a.alloc(), Some(5));
        assert_eq!(a.alloc(), Some(64));
        assert_eq!(a.alloc(), Some(70));
        assert_eq!(a.alloc(), Some(101));
    }

    #[test]
    fn harmless_frees() {
        let mut a = VmidAllocator::new();
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(2));
        let before = a.clone();
        // VMID 0, never allocated, out of range, twice.
        a.free(0);
        a.free(3);
        a.free(9000);
        a.free(MAX_VMID);
        a.free(MAX_VMID + 1);
        a.free(u16::MAX);
        assert_eq!(a, before);
        assert!(a.in_use(0));
        assert!(!a.in_use(u16::MAX));
        a.free(1);
        a.free(1);
        assert_eq!(a.count(), 1);
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(3));
    }

    proptest! {
        /// Against a set: alloc gives the lowest free VMID in 1..=max, free forgets it.
        #[test]
        fn matches_a_set(max in 0u16..200, ops in prop::collection::vec(any::<Option<u16>>(), 1..400)) {
            let mut a = VmidAllocator::with_max(max);
            let mut used = BTreeSet::new();
            for op in ops {
                match op {
                    None => {
                        let expect = (1..=max).find(|id| !used.contains(id));
                        prop_assert_eq!(a.alloc(), expect);
                        used.extend(expect);
                    }
                    Some(id) => {
                        let id = id % 260;
                        a.free(id);
                        used.remove(&id);
                    }
                }
                prop_assert_eq!(a.count(), used.len());
            }
            prop_assert!(a.in_use(0));
            for id in 1..=max + 70 {
                prop_assert_eq!(a.in_use(id), used.contains(&id));
            }
        }
    }
}
