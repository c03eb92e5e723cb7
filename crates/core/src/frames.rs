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

    /// Returns `pages` pages starting at `hpa` from the middle, start or end of a live
    /// allocation (or all of it), so memory handed out in blocks can be given back page
    /// by page (copy-on-write guest RAM is released one frame at a time).
    ///
    /// The range must lie wholly inside one live allocation; anything else (a page that
    /// is free, or a range straddling two allocations) is refused with
    /// [`FrameError::NotAllocated`] and changes nothing. What is left of the allocation
    /// stays live as up to two smaller allocations, each of which may in turn be freed
    /// with [`free`](Self::free) or this.
    pub fn free_part(&mut self, hpa: Hpa, pages: usize) -> Result<(), FrameError> {
        if !hpa.is_page_aligned() || pages == 0 {
            return Err(FrameError::NotAllocated);
        }
        let first = usize::try_from(hpa.page_number()).map_err(|_| FrameError::NotAllocated)?;
        let end = first.checked_add(pages).ok_or(FrameError::NotAllocated)?;
        // The only allocation that can hold `first` is the last one starting at or before it.
        let (&start, &count) = self
            .live
            .range(..=first)
            .next_back()
            .ok_or(FrameError::NotAllocated)?;
        if end > start + count {
            return Err(FrameError::NotAllocated);
        }
        self.live.remove(&start);
        if first > start {
            self.live.insert(start, first - start);
        }
        if start + count > end {
            self.live.insert(end, start + count - end);
        }
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

    #[test]
    fn free_part_splits_and_refuses_what_is_not_live() {
        let mut a = HostFrames::new();
        a.add_range(hpa_range(0x8000_0000, 0x10_0000)).unwrap();
        let x = a.alloc(8, 8).unwrap();
        let y = a.alloc(4, 4).unwrap();
        let page = |h: Hpa, i: u64| Hpa::new(h.raw() + i * PAGE_SIZE);
        // Middle, then both ends, of x.
        assert_eq!(a.free_part(page(x, 3), 2), Ok(()));
        assert_eq!(a.free_pages(), 256 - 12 + 2);
        assert_eq!(a.free_part(page(x, 3), 1), Err(FrameError::NotAllocated));
        assert_eq!(a.free_part(page(x, 2), 2), Err(FrameError::NotAllocated));
        assert_eq!(a.free_part(x, 0), Err(FrameError::NotAllocated));
        assert_eq!(
            a.free_part(Hpa::new(x.raw() + 8), 1),
            Err(FrameError::NotAllocated)
        );
        // The pieces left are ordinary allocations now.
        assert_eq!(a.free(x, 3), Ok(()));
        assert_eq!(a.free_part(page(x, 7), 1), Ok(()));
        assert_eq!(a.free(page(x, 5), 2), Ok(()));
        // Never across two allocations, even adjacent ones.
        let z = a.alloc(1, 1).unwrap();
        let w = a.alloc(1, 1).unwrap();
        if w.raw() == z.raw() + PAGE_SIZE {
            assert_eq!(a.free_part(z, 2), Err(FrameError::NotAllocated));
        }
        assert_eq!(a.free_part(z, 1), Ok(()));
        assert_eq!(a.free_part(w, 1), Ok(()));
        assert_eq!(a.free_part(y, 4), Ok(()));
        assert_eq!(a.free_pages(), 256);
        assert_eq!(a.alloc(256, 256), Some(Hpa::new(0x8000_0000)));
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

        /// Random allocations and partial frees against a model that knows, page by
        /// page, which pages are live and which allocation (by start) each belongs to.
        #[test]
        fn free_part_matches_a_page_model(ops in proptest::collection::vec((1usize..24, 0usize..64, 1usize..24, any::<bool>()), 1..120)) {
            const BASE: u64 = 0x8000_0000;
            const N: usize = 256;
            let mut a = HostFrames::new();
            a.add_range(hpa_range(BASE, N as u64 * PAGE_SIZE)).unwrap();
            // owner[i] = Some(id) while page i is live, id unique per original allocation.
            let mut owner: Vec<Option<usize>> = vec![None; N];
            let mut next_id = 0;
            for (pages, at, len, do_free) in ops {
                if do_free {
                    let first = at % N;
                    let end = (first + len).min(N + 1);
                    let hpa = Hpa::new(BASE + first as u64 * PAGE_SIZE);
                    let n = end - first;
                    // Valid when every page is live, in one original allocation, and that
                    // allocation's pages are all still contiguous around the range (the
                    // allocator splits records, so "one record" is the contiguous live run
                    // of the same id).
                    let ok = end <= N
                        && owner[first].is_some()
                        && (first..end).all(|i| owner[i] == owner[first]);
                    let got = a.free_part(hpa, n);
                    prop_assert_eq!(got.is_ok(), ok, "free_part({:#x}, {})", hpa.raw(), n);
                    if ok {
                        for o in &mut owner[first..end] {
                            *o = None;
                        }
                    }
                } else if let Some(h) = a.alloc(pages, 1) {
                    let first = ((h.raw() - BASE) / PAGE_SIZE) as usize;
                    for o in &mut owner[first..first + pages] {
                        prop_assert!(o.is_none(), "page handed out twice");
                        *o = Some(next_id);
                    }
                    next_id += 1;
                }
                let used = owner.iter().filter(|o| o.is_some()).count();
                prop_assert_eq!(a.free_pages(), N - used);
            }
            // Free what is left, run by run.
            let mut i = 0;
            while i < N {
                if let Some(id) = owner[i] {
                    let mut j = i;
                    while j < N && owner[j] == Some(id) {
                        j += 1;
                    }
                    prop_assert_eq!(a.free_part(Hpa::new(BASE + i as u64 * PAGE_SIZE), j - i), Ok(()));
                    i = j;
                } else {
                    i += 1;
                }
            }
            prop_assert_eq!(a.alloc(N, N), Some(Hpa::new(BASE)));
        }
    }
}
