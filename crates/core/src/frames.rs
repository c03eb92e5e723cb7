//! The allocator of host RAM frames: guest RAM and G-stage page-table pages come from here.
//!
//! A thin, defensive wrapper round [`buddy_system_allocator::FrameAllocator`] (frame
//! number = HPA >> 12). The buddy allocator trusts its caller completely: overlapping
//! `add_frame` ranges or a double free silently corrupt its free lists. Since a corrupt
//! frame list would hand one frame to two guests, this wrapper keeps its own record of
//! what was added and what is live, and refuses anything that does not match.
//!
//! Allocations are exact: asking for 3 pages takes 3 pages, not the buddy's rounded-up 4
//! (the surplus is given straight back), so quota accounting matches what is charged.
//!
//! Frames are **not** zeroed here: this crate cannot touch memory. The caller must zero
//! (or fully overwrite) every frame before a guest or the page-table walker can see it,
//! or one guest's stale data would leak into another.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use buddy_system_allocator::FrameAllocator;
use core::fmt;

use crate::addr::{Hpa, Range, PAGE_SHIFT, PAGE_SIZE};

/// log2 of the largest block the buddy allocator handles, in frames (2^32 frames = 16 TiB).
const MAX_ORDER: usize = 32;
/// Largest single allocation (and largest alignment), in pages.
pub const MAX_ALLOC_PAGES: usize = 1 << MAX_ORDER;

/// Why a frame-allocator operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The range holds no whole page once trimmed to page boundaries.
    Empty,
    /// The range overlaps memory already handed to the allocator.
    Overlap,
    /// The address does not fit the machine's frame numbers.
    TooHigh,
    /// A free that does not match a live allocation exactly (double free, wrong size).
    NotAllocated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Empty => "range contains no whole page",
            FrameError::Overlap => "range overlaps memory already managed",
            FrameError::TooHigh => "address beyond the frame-number range",
            FrameError::NotAllocated => "free does not match a live allocation",
        })
    }
}

/// Host RAM frame allocator. See the module documentation.
pub struct HostFrames {
    buddy: FrameAllocator<{ MAX_ORDER + 1 }>,
    /// Frame ranges handed to us, as (first frame, frame count).
    added: Vec<(usize, usize)>,
    /// Live allocations: first frame -> page count.
    live: BTreeMap<usize, usize>,
    total: usize,
    used: usize,
}

impl Default for HostFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HostFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostFrames")
            .field("total_pages", &self.total)
            .field("free_pages", &self.free_pages())
            .field("live_allocations", &self.live.len())
            .finish()
    }
}

/// The buddy allocator only takes naturally aligned power-of-two blocks back, so an
/// arbitrary frame span is returned as the largest such blocks that tile it.
fn release_span(buddy: &mut FrameAllocator<{ MAX_ORDER + 1 }>, start: usize, count: usize) {
    let mut cur = start;
    let end = start + count;
    while cur < end {
        let align = if cur == 0 {
            MAX_ALLOC_PAGES
        } else {
            (1usize << cur.trailing_zeros()).min(MAX_ALLOC_PAGES)
        };
        let mut size = align;
        while size > end - cur {
            size >>= 1;
        }
        buddy.dealloc(cur, size);
        cur += size;
    }
}

impl HostFrames {
    /// An allocator that manages no memory yet.
    pub fn new() -> Self {
        Self {
            buddy: FrameAllocator::new(),
            added: Vec::new(),
            live: BTreeMap::new(),
            total: 0,
            used: 0,
        }
    }

    /// Hands `range` to the allocator, trimmed inwards to whole pages.
    ///
    /// Returns the number of pages added. Overlap with an earlier range is refused
    /// because the buddy allocator would otherwise hand out the same frame twice.
    pub fn add_range(&mut self, range: Range<Hpa>) -> Result<usize, FrameError> {
        let start = range.start.align_up(PAGE_SIZE).ok_or(FrameError::Empty)?;
        // `Range`'s fields are public, so do not trust `end()` not to overflow.
        let end = range
            .start
            .checked_add(range.len)
            .ok_or(FrameError::TooHigh)?
            .align_down(PAGE_SIZE);
        if end <= start {
            return Err(FrameError::Empty);
        }
        let first = usize::try_from(start.page_number()).map_err(|_| FrameError::TooHigh)?;
        let last = usize::try_from(end.page_number()).map_err(|_| FrameError::TooHigh)?;
        let count = last - first;
        if self
            .added
            .iter()
            .any(|&(s, c)| first < s + c && s < first + count)
        {
            return Err(FrameError::Overlap);
        }
        self.buddy.add_frame(first, last);
        self.added.push((first, count));
        self.total += count;
        Ok(count)
    }

    /// Allocates `pages` physically contiguous pages whose first page is aligned to
    /// `align_pages` pages (a power of two; 0 is treated as 1).
    ///
    /// The frames are not zeroed (see the module documentation). Returns `None` when
    /// no suitable block is free, `pages` is 0, or the request exceeds
    /// [`MAX_ALLOC_PAGES`] or has a non-power-of-two alignment.
    pub fn alloc(&mut self, pages: usize, align_pages: usize) -> Option<Hpa> {
        let align = align_pages.max(1);
        if pages == 0 || pages > MAX_ALLOC_PAGES || !align.is_power_of_two() {
            return None;
        }
        if align > MAX_ALLOC_PAGES {
            return None;
        }
        let block = pages.next_power_of_two().max(align);
        let first = self.buddy.alloc(block)?;
        if block > pages {
            release_span(&mut self.buddy, first + pages, block - pages);
        }
        self.live.insert(first, pages);
        self.used += pages;
        // Frame numbers came from HPAs we were given, so shifting back cannot overflow.
        Some(Hpa::new((first as u64) << PAGE_SHIFT))
    }

    /// Returns an allocation. `hpa` and `pages` must be exactly what [`alloc`](Self::alloc)
    /// returned and was asked for; anything else is refused rather than corrupting the
    /// free lists.
    pub fn free(&mut self, hpa: Hpa, pages: usize) -> Result<(), FrameError> {
        if !hpa.is_page_aligned() {
            return Err(FrameError::NotAllocated);
        }
        let first = usize::try_from(hpa.page_number()).map_err(|_| FrameError::NotAllocated)?;
        match self.live.get(&first) {
            Some(&n) if n == pages => {}
            _ => return Err(FrameError::NotAllocated),
        }
        self.live.remove(&first);
        release_span(&mut self.buddy, first, pages);
        self.used -= pages;
        Ok(())
    }

    /// Pages handed to the allocator in total.
    pub fn total_pages(&self) -> usize {
        self.total
    }

    /// Pages currently free.
    pub fn free_pages(&self) -> usize {
        self.total - self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hpa_range(start: u64, len: u64) -> Range<Hpa> {
        Range::new(Hpa::new(start), len).unwrap()
    }

    #[test]
    fn allocations_are_exact_and_aligned() {
        let mut a = HostFrames::new();
        assert_eq!(a.add_range(hpa_range(0x8000_0000, 0x100_0000)), Ok(4096));
        assert_eq!(a.total_pages(), 4096);
        let x = a.alloc(3, 1).unwrap();
        assert_eq!(a.free_pages(), 4093);
        let y = a.alloc(4, 4).unwrap();
        assert!(y.is_aligned(4 * PAGE_SIZE));
        let root = a.alloc(4, 4).unwrap();
        assert!(root.is_aligned(16 * 1024));
        let big = a.alloc(1, 512).unwrap();
        assert!(big.is_aligned(2 * 1024 * 1024));
        assert_eq!(a.free_pages(), 4096 - 3 - 4 - 4 - 1);
        for (h, p) in [(x, 3), (y, 4), (root, 4), (big, 1)] {
            a.free(h, p).unwrap();
        }
        assert_eq!(a.free_pages(), 4096);
        // Everything merged back: the whole 16 MiB is one block again.
        let all = a.alloc(4096, 4096).unwrap();
        assert_eq!(all, Hpa::new(0x8000_0000));
    }

    #[test]
    fn trims_to_pages_and_rejects_overlap() {
        let mut a = HostFrames::new();
        assert_eq!(a.add_range(hpa_range(0x1001, 0x2000)), Ok(1));
        assert_eq!(a.add_range(hpa_range(0x1001, 0x10)), Err(FrameError::Empty));
        assert_eq!(
            a.add_range(hpa_range(0x0, 0x3000)),
            Err(FrameError::Overlap)
        );
        assert_eq!(a.add_range(hpa_range(0x3000, 0x1000)), Ok(1));
    }

    #[test]
    fn refuses_bad_frees_and_requests() {
        let mut a = HostFrames::new();
        a.add_range(hpa_range(0x8000_0000, 0x10_0000)).unwrap();
        let x = a.alloc(2, 1).unwrap();
        assert_eq!(a.free(x, 1), Err(FrameError::NotAllocated));
        assert_eq!(
            a.free(Hpa::new(x.raw() + 1), 2),
            Err(FrameError::NotAllocated)
        );
        assert_eq!(a.free(x, 2), Ok(()));
        assert_eq!(a.free(x, 2), Err(FrameError::NotAllocated));
        assert_eq!(a.alloc(0, 1), None);
        assert_eq!(a.alloc(1, 3), None);
        assert_eq!(a.alloc(257, 1), None);
        assert_eq!(a.alloc(usize::MAX, 1), None);
        assert_eq!(a.free_pages(), 256);
    }

    proptest! {
        #[test]
        fn random_alloc_free_never_overlaps(ops in proptest::collection::vec((1usize..20, 0u32..4, any::<bool>()), 1..100)) {
            let mut a = HostFrames::new();
            a.add_range(hpa_range(0x8000_0000, 256 * PAGE_SIZE)).unwrap();
            let mut live: Vec<(Hpa, usize)> = Vec::new();
            for (pages, align_log, free_one) in ops {
                if free_one && !live.is_empty() {
                    let (h, p) = live.remove(pages % live.len());
                    prop_assert_eq!(a.free(h, p), Ok(()));
                } else if let Some(h) = a.alloc(pages, 1 << align_log) {
                    prop_assert!(h.is_aligned((1u64 << align_log) * PAGE_SIZE));
                    let end = h.raw() + pages as u64 * PAGE_SIZE;
                    prop_assert!(h.raw() >= 0x8000_0000 && end <= 0x8000_0000 + 256 * PAGE_SIZE);
                    for &(o, op) in &live {
                        let oend = o.raw() + op as u64 * PAGE_SIZE;
                        prop_assert!(end <= o.raw() || oend <= h.raw());
                    }
                    live.push((h, pages));
                }
                let used: usize = live.iter().map(|&(_, p)| p).sum();
                prop_assert_eq!(a.free_pages(), 256 - used);
            }
            for (h, p) in live {
                prop_assert_eq!(a.free(h, p), Ok(()));
            }
            prop_assert_eq!(a.alloc(256, 256), Some(Hpa::new(0x8000_0000)));
        }
    }
}
