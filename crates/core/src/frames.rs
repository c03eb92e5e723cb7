//! The allocator of host RAM frames: guest RAM and G-stage page-table pages come from here.
//!
//! # Bookkeeping: bitmaps, allocated once
//! Each range handed to [`HostFrames::add_range`] becomes a *region* with four bitmaps,
//! allocated there and never resized (frame number = HPA >> 12; bit 0 of a region is a
//! frame number that is a multiple of 64, so each `u64` word covers 64 naturally aligned
//! frames, and frames of the word outside the range count as allocated for good):
//! - `used`: one bit per frame, set while the frame is allocated;
//! - `starts`: one bit per frame, set on the first frame of each live allocation, so
//!   allocations that touch keep their boundaries ([`free`](HostFrames::free) checks an
//!   exact match, [`free_part`](HostFrames::free_part) refuses a range across two);
//! - `some_free` and `all_free`: one bit per 64-frame word of `used` (the summary level):
//!   the word has a free frame / is entirely free. Searches skip full words 64 at a time
//!   and find whole free words (a 2 MiB block is 8 of them) without reading `used`.
//!
//! That is 2 bits per 4 KiB page plus 2 bits per 256 KiB, 65 KiB per GiB of host RAM,
//! taken from the heap at boot ([`heap_bytes`](HostFrames::heap_bytes) says how much).
//! **After the last `add_range`, no operation allocates from (or returns anything to) the
//! heap**, whatever guests do: allocation, `free` and `free_part` only flip bits in those
//! bitmaps (`tests/frames_no_heap.rs` checks it with a counting global allocator). So
//! forking, copy-on-write, page-table growth or fragmentation cannot grow the hypervisor
//! heap the Root VM's quotas are sized from.
//!
//! A range adjacent to an earlier one is merged with it into one region (at `add_range`
//! time), so an allocation may span ranges that touch, as with one larger range.
//!
//! # Placement: first fit
//! [`alloc`](HostFrames::alloc) returns the **lowest-addressed** run of free frames that
//! has the requested length and alignment (regions in address order, then within each).
//! Any run will do: `pages` need not be a power of two and is not rounded up, and an
//! unaligned request (`align_pages` 1) takes any free run of that length, so a large
//! buffer needs only that much contiguous free RAM, not a free power-of-two block.
//! Low-first placement keeps small allocations (page tables, copy-on-write copies)
//! packed at the bottom, leaving whole 2 MiB blocks free above them.
//!
//! Cost, per region searched: a request of at most 64 pages visits each 64-frame word
//! that has a free frame at most once (found through `some_free`; a few shift-and-mask
//! operations find a fitting run inside the word or one that crosses into the next). A
//! larger request can only start in the free top bits of a word, so it tries at most one
//! start per word and resumes past the first allocated frame a failed try meets; when it
//! is aligned to 64 pages or more, or is 128 pages or more, it jumps between words that
//! `all_free` marks. A per-region hint (no word below it has a free frame) starts every
//! search. Allocating or freeing `n` frames touches `n / 64 + 2` words. Nothing depends
//! on how many allocations are live.
//!
//! Allocations are exact: asking for 3 pages takes 3 pages, so quota accounting matches
//! what is charged.
//!
//! Frames are **not** zeroed here: this crate cannot touch memory. The caller must zero
//! (or fully overwrite) every frame before a guest or the page-table walker can see it,
//! or one guest's stale data would leak into another.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Hpa, Range, PAGE_SHIFT, PAGE_SIZE};

/// Largest single allocation (and largest alignment), in pages (2^32 pages = 16 TiB).
pub const MAX_ALLOC_PAGES: usize = 1 << 32;

/// Frames per bitmap word.
const BITS: usize = u64::BITS as usize;

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
    /// The heap has no room for the range's bitmaps (only `add_range` allocates).
    NoMemory,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Empty => "range contains no whole page",
            FrameError::Overlap => "range overlaps memory already managed",
            FrameError::TooHigh => "address beyond the frame-number range",
            FrameError::NotAllocated => "free does not match a live allocation",
            FrameError::NoMemory => "no heap for the frame bitmaps of this range",
        })
    }
}

/// Bits `lo..hi` of a word (`lo < hi <= 64`).
fn mask(lo: usize, hi: usize) -> u64 {
    (u64::MAX >> (BITS - (hi - lo))) << lo
}

/// The words holding bits `a..b` (`a < b`) of a bitmap, each with the mask of those bits.
fn words(a: usize, b: usize) -> impl Iterator<Item = (usize, u64)> {
    let (wa, wb) = (a / BITS, (b - 1) / BITS);
    (wa..=wb).map(move |w| {
        let lo = if w == wa { a % BITS } else { 0 };
        let hi = if w == wb { (b - 1) % BITS + 1 } else { BITS };
        (w, mask(lo, hi))
    })
}

/// Sets (or clears) bits `a..b` (`a < b`) of a bitmap.
fn fill_bits(map: &mut [u64], a: usize, b: usize, set: bool) {
    let apply = |x: &mut u64, m: u64| {
        if set {
            *x |= m
        } else {
            *x &= !m
        }
    };
    let (wa, wb) = (a / BITS, (b - 1) / BITS);
    let top = (b - 1) % BITS + 1;
    if wa == wb {
        apply(&mut map[wa], mask(a % BITS, top));
        return;
    }
    apply(&mut map[wa], mask(a % BITS, BITS));
    map[wa + 1..wb].fill(if set { u64::MAX } else { 0 });
    apply(&mut map[wb], mask(0, top));
}

/// ORs all of `src` into `dst` from bit `off` on (`src`'s set bits land inside `dst`).
fn or_bits(dst: &mut [u64], off: usize, src: &[u64]) {
    let (q, r) = (off / BITS, off % BITS);
    for (i, &x) in src.iter().enumerate() {
        if x == 0 {
            continue;
        }
        dst[q + i] |= x << r;
        if r > 0 {
            if let Some(d) = dst.get_mut(q + i + 1) {
                *d |= x >> (BITS - r);
            }
        }
    }
}

fn bit(map: &[u64], i: usize) -> bool {
    map[i / BITS] & (1 << (i % BITS)) != 0
}

/// The first set bit at or after `from`, if any.
fn scan(map: &[u64], from: usize) -> Option<usize> {
    let mut i = from / BITS;
    let mut bits = *map.get(i)? & (u64::MAX << (from % BITS));
    loop {
        if bits != 0 {
            return Some(i * BITS + bits.trailing_zeros() as usize);
        }
        i += 1;
        bits = *map.get(i)?;
    }
}

/// Bit `i` set when bits `i..i + n` of `free` are all set (`1 <= n <= 64`): `n - 1` shifts
/// done in O(log n) doubling steps.
fn fit_mask(free: u64, n: usize) -> u64 {
    let (mut m, mut have) = (free, 1);
    while have < n {
        let s = have.min(n - have);
        m &= m >> s;
        have += s;
    }
    m
}

/// A bitmap of `words` words, each `fill`, or `NoMemory`: the only place this module
/// allocates.
fn bitmap(words: usize, fill: u64) -> Result<Vec<u64>, FrameError> {
    let mut v = Vec::new();
    v.try_reserve_exact(words)
        .map_err(|_| FrameError::NoMemory)?;
    v.resize(words, fill);
    Ok(v)
}

/// One contiguous stretch of managed frames and its bitmaps (see the module docs).
/// Bit `i` of each per-frame map is frame `base + i`.
struct Region {
    /// Frame number of bit 0: a multiple of 64.
    base: usize,
    /// The managed frames are `first..end`; the others in the words are padding, set in
    /// `used` for good.
    first: usize,
    end: usize,
    /// Set: the frame is allocated (or padding).
    used: Vec<u64>,
    /// Set: the frame is the first of a live allocation.
    starts: Vec<u64>,
    /// Bit w: `used[w]` has a clear bit.
    some_free: Vec<u64>,
    /// Bit w: `used[w]` is all clear.
    all_free: Vec<u64>,
    /// No word below this one has a free frame.
    hint: usize,
    /// Free frames.
    free: usize,
}

impl Region {
    /// A region for frames `first..end`, all allocated; `parts` (regions inside it) are
    /// copied in, then `fresh` (a sub-range) is made free.
    fn build(
        first: usize,
        end: usize,
        parts: [Option<&Region>; 2],
        fresh: (usize, usize),
    ) -> Result<Self, FrameError> {
        // This runs over all of host RAM at boot: whole-slice fills and copies only, and
        // summary bits filled or copied in bulk, with only the words at the edges of the
        // fresh range summarised one by one.
        let base = first & !(BITS - 1);
        let nwords = (end - base).div_ceil(BITS);
        let mut r = Region {
            base,
            first,
            end,
            used: bitmap(nwords, 0)?,
            starts: bitmap(nwords, 0)?,
            some_free: bitmap(nwords.div_ceil(BITS), 0)?,
            all_free: bitmap(nwords.div_ceil(BITS), 0)?,
            hint: 0,
            free: fresh.1 - fresh.0,
        };
        if first > base {
            fill_bits(&mut r.used, 0, first - base, true);
        }
        if end - base < nwords * BITS {
            fill_bits(&mut r.used, end - base, nwords * BITS, true);
        }
        // The fresh range is free: the words wholly inside it are all free.
        let (fa, fb) = ((fresh.0 - base) / BITS, (fresh.1 - base - 1) / BITS);
        if fb > fa + 1 {
            fill_bits(&mut r.some_free, fa + 1, fb, true);
            fill_bits(&mut r.all_free, fa + 1, fb, true);
        }
        for p in parts.into_iter().flatten() {
            // Both bases are multiples of 64, so words map onto words. A part's first
            // and last words may be shared with the fresh range or the other part:
            // there, only its own frames are taken (its padding is set).
            let off = (p.base - base) / BITS;
            let n = p.used.len();
            for w in [0, n - 1] {
                r.used[off + w] |= p.used[w] & p.managed_mask(w);
                r.starts[off + w] |= p.starts[w];
            }
            if n > 2 {
                r.used[off + 1..off + n - 1].copy_from_slice(&p.used[1..n - 1]);
                r.starts[off + 1..off + n - 1].copy_from_slice(&p.starts[1..n - 1]);
            }
            or_bits(&mut r.some_free, off, &p.some_free);
            or_bits(&mut r.all_free, off, &p.all_free);
            r.free += p.free;
        }
        // A part's summary bits are right except in a word it shares, and it can share
        // only the fresh range's first or last word (the union has no other gap).
        r.summarise(fa);
        r.summarise(fb);
        r.hint = scan(&r.some_free, 0).unwrap_or(nwords);
        Ok(r)
    }

    /// The bits of word `w` that are managed frames (not padding).
    fn managed_mask(&self, w: usize) -> u64 {
        let lo = self.first.max(self.base + w * BITS) - self.base - w * BITS;
        let hi = self.end.min(self.base + (w + 1) * BITS) - self.base - w * BITS;
        if lo < hi {
            mask(lo, hi)
        } else {
            0
        }
    }

    /// Brings the summary bits of word `w` up to date.
    fn summarise(&mut self, w: usize) {
        let (s, b) = (w / BITS, 1u64 << (w % BITS));
        let u = self.used[w];
        if u != u64::MAX {
            self.some_free[s] |= b;
        } else {
            self.some_free[s] &= !b;
        }
        if u == 0 {
            self.all_free[s] |= b;
        } else {
            self.all_free[s] &= !b;
        }
    }

    /// Heap bytes held.
    fn heap_bytes(&self) -> usize {
        [&self.used, &self.starts, &self.some_free, &self.all_free]
            .iter()
            .map(|v| v.capacity() * core::mem::size_of::<u64>())
            .sum()
    }

    /// The first allocated bit in `a..b`.
    fn first_used(&self, a: usize, b: usize) -> Option<usize> {
        words(a, b).find_map(|(w, m)| {
            let u = self.used[w] & m;
            (u != 0).then(|| w * BITS + u.trailing_zeros() as usize)
        })
    }

    /// Every frame of `a..b` is allocated.
    fn all_used(&self, a: usize, b: usize) -> bool {
        words(a, b).all(|(w, m)| self.used[w] & m == m)
    }

    /// An allocation starts somewhere in `a..b`.
    fn any_start(&self, a: usize, b: usize) -> bool {
        a < b && words(a, b).any(|(w, m)| self.starts[w] & m != 0)
    }

    /// The smallest word index `>= w` whose first frame is aligned to `align` (>= 64).
    fn align_word(&self, w: usize, align: usize) -> Option<usize> {
        let wb = self.base / BITS;
        Some(wb.checked_add(w)?.checked_next_multiple_of(align / BITS)? - wb)
    }

    /// The lowest bit index where `n` free frames start at a frame number that is a
    /// multiple of `align` (a power of two), if any. See the module docs for the cost.
    fn find(&self, n: usize, align: usize) -> Option<usize> {
        let nwords = self.used.len();
        let mut w = self.hint;
        if n <= BITS {
            // Bits at multiples of `align` (the base is 64-aligned, so in-word offsets
            // are aligned as the frame numbers are); one bit in aligned words beyond.
            let pattern = if align >= BITS {
                1
            } else {
                u64::MAX / ((1u64 << align) - 1)
            };
            loop {
                w = scan(&self.some_free, w)?;
                if align > BITS {
                    let wa = self.align_word(w, align)?;
                    if wa != w {
                        w = wa;
                        continue;
                    }
                }
                let fits = fit_mask(!self.used[w], n) & pattern;
                if fits != 0 {
                    return Some(w * BITS + fits.trailing_zeros() as usize);
                }
                // A run that starts in this word's free top bits and ends in the next.
                if align < BITS && w + 1 < nwords {
                    let top = self.used[w].leading_zeros() as usize;
                    let next = (w + 1) * BITS;
                    let c = (next - top).next_multiple_of(align);
                    if top > 0
                        && c < next
                        && (c + n).saturating_sub(next)
                            <= (!self.used[w + 1]).trailing_ones() as usize
                    {
                        return Some(c);
                    }
                }
                w += 1;
            }
        }
        // More than a word: a run runs to the end of the word it starts in, so it starts
        // in that word's free top bits, at their first aligned frame (a later start in
        // the same word fails where this one does). One candidate per word.
        loop {
            let c = if align >= BITS {
                // Starts a word, and covers all of it: the word is all free.
                w = scan(&self.all_free, w)?;
                let wa = self.align_word(w, align)?;
                if wa != w {
                    w = wa;
                    continue;
                }
                w * BITS
            } else {
                if n >= 2 * BITS {
                    // The word after the start word is covered whole: all free.
                    w = scan(&self.all_free, w + 1)? - 1;
                }
                w = scan(&self.some_free, w)?;
                let top = self.used[w].leading_zeros() as usize;
                let next = (w + 1) * BITS;
                let c = (next - top).next_multiple_of(align);
                if top == 0 || c >= next {
                    w += 1;
                    continue;
                }
                c
            };
            if c.checked_add(n)? > nwords * BITS {
                return None;
            }
            match self.first_used(c, c + n) {
                None => return Some(c),
                // Every start before the allocated frame `q` covers it too.
                Some(q) => w = (w + 1).max(q / BITS),
            }
        }
    }

    /// Marks `n` frames from bit `i` as one allocation.
    fn take(&mut self, i: usize, n: usize) {
        fill_bits(&mut self.used, i, i + n, true);
        for w in i / BITS..=(i + n - 1) / BITS {
            self.summarise(w);
        }
        self.starts[i / BITS] |= 1 << (i % BITS);
        self.free -= n;
        if self.hint < self.used.len() && !bit(&self.some_free, self.hint) {
            self.hint = scan(&self.some_free, self.hint).unwrap_or(self.used.len());
        }
    }

    /// Marks `n` frames from bit `i` free (their allocation boundaries are the caller's).
    fn release(&mut self, i: usize, n: usize) {
        fill_bits(&mut self.used, i, i + n, false);
        for w in i / BITS..=(i + n - 1) / BITS {
            self.summarise(w);
        }
        self.free += n;
        self.hint = self.hint.min(i / BITS);
    }
}

/// Host RAM frame allocator. See the module documentation.
pub struct HostFrames {
    /// Sorted by address; disjoint and never adjacent (adjacent ranges are merged).
    regions: Vec<Region>,
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
        let live: u32 = self
            .regions
            .iter()
            .flat_map(|r| &r.starts)
            .map(|w| w.count_ones())
            .sum();
        f.debug_struct("HostFrames")
            .field("total_pages", &self.total)
            .field("free_pages", &self.free_pages())
            .field("live_allocations", &live)
            .field("regions", &self.regions.len())
            .finish()
    }
}

impl HostFrames {
    /// An allocator that manages no memory yet.
    pub const fn new() -> Self {
        Self {
            regions: Vec::new(),
            total: 0,
            used: 0,
        }
    }

    /// Hands `range` to the allocator, trimmed inwards to whole pages.
    ///
    /// Returns the number of pages added. Overlap with an earlier range is refused
    /// because the same frame would otherwise be handed out twice. This is the only
    /// operation that allocates from the heap: the range's bitmaps (see the module
    /// documentation; a range adjacent to earlier ones is merged with them, its bitmaps
    /// rebuilt). When the heap cannot hold them the range is refused with
    /// [`FrameError::NoMemory`] and nothing changes.
    pub fn add_range(&mut self, range: Range<Hpa>) -> Result<usize, FrameError> {
        let start = range.start().align_up(PAGE_SIZE).ok_or(FrameError::Empty)?;
        // `end()` cannot overflow: `Range::new` refused any range whose end would.
        let end = range.end().align_down(PAGE_SIZE);
        if end <= start {
            return Err(FrameError::Empty);
        }
        let first = usize::try_from(start.page_number()).map_err(|_| FrameError::TooHigh)?;
        let last = usize::try_from(end.page_number()).map_err(|_| FrameError::TooHigh)?;
        let count = last - first;
        if self.regions.iter().any(|r| first < r.end && r.first < last) {
            return Err(FrameError::Overlap);
        }
        // Regions are sorted, disjoint and not adjacent: at most one ends at `first`
        // (just before index `at`) and one starts at `last` (at `at`).
        let at = self.regions.partition_point(|r| r.first < first);
        let below = at.checked_sub(1).filter(|&i| self.regions[i].end == first);
        let above = Some(at).filter(|&i| self.regions.get(i).is_some_and(|r| r.first == last));
        let parts = [below, above].map(|i| i.map(|i| &self.regions[i]));
        let lo = parts[0].map_or(first, |r| r.first);
        let hi = parts[1].map_or(last, |r| r.end);
        let region = Region::build(lo, hi, parts, (first, last))?;
        if below.is_none() && above.is_none() {
            self.regions
                .try_reserve_exact(1)
                .map_err(|_| FrameError::NoMemory)?;
        }
        match (below, above) {
            (Some(b), Some(_)) => {
                self.regions[b] = region;
                self.regions.remove(b + 1);
            }
            (Some(i), None) | (None, Some(i)) => self.regions[i] = region,
            (None, None) => self.regions.insert(at, region),
        }
        self.total += count;
        Ok(count)
    }

    /// Allocates `pages` physically contiguous pages whose first page is aligned to
    /// `align_pages` pages (a power of two; 0 is treated as 1): the lowest-addressed such
    /// run of free pages (first fit; see the module documentation).
    ///
    /// The frames are not zeroed (see the module documentation). Returns `None` when
    /// no suitable run is free, `pages` is 0, or the request exceeds
    /// [`MAX_ALLOC_PAGES`] or has a non-power-of-two alignment. Never allocates from
    /// the heap.
    pub fn alloc(&mut self, pages: usize, align_pages: usize) -> Option<Hpa> {
        let align = align_pages.max(1);
        if pages == 0 || pages > MAX_ALLOC_PAGES || !align.is_power_of_two() {
            return None;
        }
        if align > MAX_ALLOC_PAGES {
            return None;
        }
        let (r, i) = self
            .regions
            .iter_mut()
            .filter(|r| r.free >= pages)
            .find_map(|r| r.find(pages, align).map(|i| (r, i)))?;
        r.take(i, pages);
        self.used += pages;
        // Frame numbers came from HPAs we were given, so shifting back cannot overflow.
        Some(Hpa::new(((r.base + i) as u64) << PAGE_SHIFT))
    }

    /// Marks the `pages` free pages at `hpa` as one live allocation, as if
    /// [`alloc`](Self::alloc) had returned them: memory the boot hands to the allocator
    /// with the rest of RAM but must keep for a while (the Root VM's payload, which
    /// [`free`](Self::free) then returns with no bitmap rebuilt). Refused with
    /// [`FrameError::NotAllocated`] unless every page is managed here and free. Never
    /// allocates from the heap.
    pub fn claim(&mut self, hpa: Hpa, pages: usize) -> Result<(), FrameError> {
        let (r, a, b) = self.locate(hpa, pages).ok_or(FrameError::NotAllocated)?;
        if r.first_used(a, b).is_some() {
            return Err(FrameError::NotAllocated);
        }
        r.take(a, pages);
        self.used += pages;
        Ok(())
    }

    /// The region holding all of frames `first..end`, with their bit indices there.
    fn locate(&mut self, hpa: Hpa, pages: usize) -> Option<(&mut Region, usize, usize)> {
        if !hpa.is_page_aligned() || pages == 0 {
            return None;
        }
        let first = usize::try_from(hpa.page_number()).ok()?;
        let end = first.checked_add(pages)?;
        let i = self
            .regions
            .partition_point(|r| r.first <= first)
            .checked_sub(1)?;
        let r = &mut self.regions[i];
        (end <= r.end).then(|| {
            let base = r.base;
            (r, first - base, end - base)
        })
    }

    /// Returns an allocation. `hpa` and `pages` must be exactly what [`alloc`](Self::alloc)
    /// returned and was asked for (or one whole piece [`free_part`](Self::free_part) left
    /// of an allocation); anything else is refused with [`FrameError::NotAllocated`] and
    /// changes nothing. Never allocates from the heap.
    pub fn free(&mut self, hpa: Hpa, pages: usize) -> Result<(), FrameError> {
        let (r, a, b) = self.locate(hpa, pages).ok_or(FrameError::NotAllocated)?;
        // Exactly one allocation: it starts at `a`, covers `a..b` with no other start
        // inside, and does not go on past `b`.
        let exact = bit(&r.starts, a)
            && r.all_used(a, b)
            && !r.any_start(a + 1, b)
            && (r.base + b == r.end || !bit(&r.used, b) || bit(&r.starts, b));
        if !exact {
            return Err(FrameError::NotAllocated);
        }
        r.starts[a / BITS] &= !(1 << (a % BITS));
        r.release(a, pages);
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
    /// with [`free`](Self::free) or this. Never allocates from the heap.
    pub fn free_part(&mut self, hpa: Hpa, pages: usize) -> Result<(), FrameError> {
        let (r, a, b) = self.locate(hpa, pages).ok_or(FrameError::NotAllocated)?;
        // Every allocated frame belongs to the allocation that starts at the nearest
        // start bit at or below it, so this is "inside one allocation".
        if !r.all_used(a, b) || r.any_start(a + 1, b) {
            return Err(FrameError::NotAllocated);
        }
        r.starts[a / BITS] &= !(1 << (a % BITS));
        // The allocation's tail past the range, if any, is an allocation of its own now.
        if r.base + b < r.end && bit(&r.used, b) {
            r.starts[b / BITS] |= 1 << (b % BITS);
        }
        r.release(a, pages);
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

    /// Heap bytes the allocator's bookkeeping holds. Only [`add_range`](Self::add_range)
    /// changes it (at boot); it is 65 KiB per GiB of RAM managed, plus a few hundred
    /// bytes per range.
    pub fn heap_bytes(&self) -> usize {
        self.regions.capacity() * core::mem::size_of::<Region>()
            + self.regions.iter().map(Region::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
impl HostFrames {
    /// Checks every region's summaries, padding, hint and free count against its
    /// `used` bitmap, and that start bits are only on allocated frames.
    fn check(&self) {
        let mut used = 0;
        for r in &self.regions {
            let n = r.used.len();
            assert_eq!(r.base % BITS, 0);
            assert_eq!(n, (r.end - r.base).div_ceil(BITS));
            for w in 0..n {
                let u = r.used[w];
                assert_eq!(u | r.managed_mask(w), u64::MAX, "padding of word {w}");
                assert_eq!(bit(&r.some_free, w), u != u64::MAX, "some_free of word {w}");
                assert_eq!(bit(&r.all_free, w), u == 0, "all_free of word {w}");
                assert_eq!(r.starts[w] & !u, 0, "start bit on a free frame in word {w}");
                if w < r.hint {
                    assert_eq!(u, u64::MAX, "a free frame below the hint");
                }
            }
            for s in [&r.some_free, &r.all_free] {
                for i in n..s.len() * BITS {
                    assert!(!bit(s, i), "summary bit past the last word");
                }
            }
            let free: usize = (0..n).map(|w| (!r.used[w]).count_ones() as usize).sum();
            assert_eq!(r.free, free);
            used += r.end - r.first - free;
        }
        assert_eq!(self.used, used);
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

    /// A claimed range is held like an allocation (never handed out) and freed like
    /// one; only wholly free, managed pages can be claimed.
    #[test]
    fn claimed_pages_are_held_then_freed() {
        let mut a = HostFrames::new();
        a.add_range(hpa_range(0x8000_0000, 0x10_0000)).unwrap();
        let page = |i: u64| Hpa::new(0x8000_0000 + i * PAGE_SIZE);
        assert_eq!(a.claim(page(1), 100), Ok(()));
        assert_eq!(a.free_pages(), 156);
        assert_eq!(a.claim(page(50), 1), Err(FrameError::NotAllocated));
        assert_eq!(a.claim(page(200), 57), Err(FrameError::NotAllocated));
        assert_eq!(
            a.claim(Hpa::new(0x9000_0000), 1),
            Err(FrameError::NotAllocated)
        );
        assert_eq!(a.claim(page(200), 0), Err(FrameError::NotAllocated));
        // Nothing allocated overlaps the claim.
        let mut got = Vec::new();
        while let Some(h) = a.alloc(1, 1) {
            assert!(!(page(1)..page(101)).contains(&h), "{h}");
            got.push(h);
        }
        assert_eq!(got.len(), 156);
        assert_eq!(a.free(page(1), 100), Ok(()));
        assert_eq!(a.free_pages(), 100);
        assert_eq!(a.alloc(100, 1), Some(page(1)));
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

    #[test]
    fn first_fit_takes_the_lowest_run_of_any_length() {
        let mut a = HostFrames::new();
        // 300 pages: a buddy allocator would need a free 512-page block for 299 pages.
        a.add_range(hpa_range(0x8000_0000, 300 * PAGE_SIZE))
            .unwrap();
        let page = |i: u64| Hpa::new(0x8000_0000 + i * PAGE_SIZE);
        assert_eq!(a.alloc(1, 1), Some(page(0)));
        assert_eq!(a.alloc(299, 1), Some(page(1)));
        assert_eq!(a.alloc(1, 1), None);
        assert_eq!(a.free(page(1), 299), Ok(()));
        // Lowest first, with alignment.
        assert_eq!(a.alloc(3, 1), Some(page(1)));
        assert_eq!(a.alloc(4, 4), Some(page(4)));
        assert_eq!(a.alloc(1, 1), Some(page(8)));
        assert_eq!(a.alloc(70, 1), Some(page(9)));
        assert_eq!(a.alloc(64, 64), Some(page(128)));
        // Pages 79..128 are free: 49 fit there, 50 only above the 64-page block.
        assert_eq!(a.alloc(49, 1), Some(page(79)));
        assert_eq!(a.free(page(79), 49), Ok(()));
        assert_eq!(a.alloc(50, 1), Some(page(192)));
        // With the block back, 60 pages fit across the word boundary at 128.
        assert_eq!(a.free(page(128), 64), Ok(()));
        assert_eq!(a.alloc(60, 1), Some(page(79)));
        assert_eq!(a.alloc(2, 2), Some(page(140)));
        assert_eq!(a.alloc(1, 1), Some(page(139)));
        // Free now: 142..192 (50) and 242..300 (58).
        assert_eq!(a.alloc(100, 1), None);
        assert_eq!(a.alloc(58, 1), Some(page(242)));
        assert_eq!(a.alloc(51, 1), None);
        assert_eq!(a.alloc(50, 1), Some(page(142)));
        assert_eq!(a.free_pages(), 0);
    }

    #[test]
    fn aligned_blocks_and_table_roots() {
        let mut a = HostFrames::new();
        // 8 MiB at 0x8020_3000: off every large alignment at both ends.
        a.add_range(hpa_range(0x8020_3000, 0x80_0000)).unwrap();
        assert_eq!(a.alloc(4, 4), Some(Hpa::new(0x8020_4000)));
        for block in [0x8040_0000, 0x8060_0000, 0x8080_0000] {
            assert_eq!(a.alloc(512, 512), Some(Hpa::new(block)));
        }
        assert_eq!(a.alloc(512, 512), None);
        assert_eq!(a.alloc(1, 1024), None);
        assert_eq!(a.alloc(1, 256), Some(Hpa::new(0x8030_0000)));
        // Left: 0x8020_3000 (1 page), 0x8020_8000.. (248), 0x8030_1000.. (255), and
        // 0x80a0_0000.. (3).
        assert_eq!(a.alloc(256, 1), None);
        assert_eq!(a.alloc(255, 1), Some(Hpa::new(0x8030_1000)));
        assert_eq!(a.alloc(249, 1), None);
        assert_eq!(a.alloc(248, 1), Some(Hpa::new(0x8020_8000)));
        assert_eq!(a.alloc(4, 1), None);
        assert_eq!(a.alloc(3, 1), Some(Hpa::new(0x80a0_0000)));
        assert_eq!(a.alloc(1, 1), Some(Hpa::new(0x8020_3000)));
        assert_eq!(a.free_pages(), 0);
    }

    #[test]
    fn adjacent_ranges_merge_and_allocations_span_them() {
        let page = |i: u64| Hpa::new(0x8000_0000 + i * PAGE_SIZE);
        let r =
            |from: u64, to: u64| hpa_range(0x8000_0000 + from * PAGE_SIZE, (to - from) * PAGE_SIZE);
        // Below, above, then the range that bridges them: one region in the end.
        let mut a = HostFrames::new();
        assert_eq!(a.add_range(r(10, 70)), Ok(60));
        assert_eq!(a.add_range(r(100, 200)), Ok(100));
        let x = a.alloc(5, 1).unwrap();
        assert_eq!(x, page(10));
        assert_eq!(a.alloc(61, 1), Some(page(100)));
        assert_eq!(a.add_range(r(69, 101)), Err(FrameError::Overlap));
        assert_eq!(a.add_range(r(70, 100)), Ok(30));
        a.check();
        assert_eq!(a.regions.len(), 1);
        assert_eq!(a.total_pages(), 190);
        assert_eq!(a.free_pages(), 190 - 66);
        // Allocations made before the merge keep their boundaries.
        assert_eq!(a.free(x, 4), Err(FrameError::NotAllocated));
        assert_eq!(a.free(x, 5), Ok(()));
        assert_eq!(a.alloc(90, 1), Some(page(10)));
        assert_eq!(a.free_part(page(99), 3), Err(FrameError::NotAllocated));
        assert_eq!(a.free(page(100), 61), Ok(()));
        assert_eq!(a.free(page(10), 90), Ok(()));
        assert_eq!(a.alloc(190, 1), Some(page(10)));
        // Ranges that share a 64-page word but do not touch stay apart.
        let mut b = HostFrames::new();
        b.add_range(r(0, 10)).unwrap();
        b.add_range(r(12, 20)).unwrap();
        assert_eq!(b.add_range(r(9, 11)), Err(FrameError::Overlap));
        assert_eq!(b.add_range(r(19, 21)), Err(FrameError::Overlap));
        assert_eq!(b.regions.len(), 2);
        assert_eq!(b.alloc(9, 1), Some(page(0)));
        assert_eq!(b.alloc(2, 1), Some(page(12)));
        assert_eq!(b.alloc(7, 1), None);
        assert_eq!(b.add_range(r(10, 11)), Ok(1));
        b.check();
        assert_eq!(b.regions.len(), 2);
        assert_eq!(b.alloc(2, 1), Some(page(9)));
        assert_eq!(b.free_pages(), 19 - 13);
    }

    #[test]
    fn fragmented_memory_single_pages_and_blocks() {
        // 64 MiB handed out page by page, every other page given back: no two free
        // pages touch, so nothing larger than a page can be allocated.
        const N: u64 = 16384;
        let mut a = HostFrames::new();
        a.add_range(hpa_range(0x8000_0000, N * PAGE_SIZE)).unwrap();
        let page = |i: u64| Hpa::new(0x8000_0000 + i * PAGE_SIZE);
        for i in 0..N {
            assert_eq!(a.alloc(1, 1), Some(page(i)));
        }
        assert_eq!(a.alloc(1, 1), None);
        for i in (1..N).step_by(2) {
            assert_eq!(a.free_part(page(i), 1), Ok(()));
        }
        assert_eq!(a.free_pages(), (N / 2) as usize);
        assert_eq!(a.alloc(2, 1), None);
        assert_eq!(a.alloc(1, 2), None);
        assert_eq!(a.alloc(512, 512), None);
        assert_eq!(a.alloc(1, 1), Some(page(1)));
        // Free one whole 2 MiB block near the top: it is found past the fragments.
        for i in (N - 1024..N - 512).step_by(2) {
            assert_eq!(a.free(page(i), 1), Ok(()));
        }
        assert_eq!(a.alloc(512, 512), Some(page(N - 1024)));
        assert_eq!(a.alloc(2, 1), None);
    }

    #[test]
    fn heap_use_is_fixed_by_add_range() {
        let mut a = HostFrames::new();
        assert_eq!(a.heap_bytes(), 0);
        a.add_range(hpa_range(0x8000_0000, 1 << 30)).unwrap();
        let bytes = a.heap_bytes();
        // 2 bits per page plus 2 per 64 pages: 65 KiB per GiB, and the region record.
        assert!((65 << 10..(65 << 10) + 256).contains(&bytes), "{bytes}");
        let x = a.alloc(1000, 1).unwrap();
        a.free_part(Hpa::new(x.raw() + 7 * PAGE_SIZE), 1).unwrap();
        assert_eq!(a.heap_bytes(), bytes);
        assert!(format!("{a:?}").contains("live_allocations: 2"));
    }

    proptest! {
        /// The word-level helpers against bit-by-bit models.
        #[test]
        fn bit_helpers_match_bit_models(
            words in proptest::collection::vec(any::<u64>(), 1..5),
            a in 0usize..320,
            len in 1usize..320,
            n in 1usize..=64,
            set in any::<bool>(),
        ) {
            let nbits = words.len() * BITS;
            let get = |m: &[u64], i: usize| m[i / BITS] >> (i % BITS) & 1 == 1;
            let b = (a + len).min(nbits);
            if a < b {
                let mut m = words.clone();
                fill_bits(&mut m, a, b, set);
                for i in 0..nbits {
                    let want = if (a..b).contains(&i) { set } else { get(&words, i) };
                    prop_assert_eq!(get(&m, i), want, "fill_bits bit {}", i);
                }
            }
            // or_bits: `words` shifted up by `a` bits into a larger map.
            let mut dst = vec![0u64; words.len() + a / BITS + 2];
            or_bits(&mut dst, a, &words);
            for i in 0..dst.len() * BITS {
                let want = i >= a && i - a < nbits && get(&words, i - a);
                prop_assert_eq!(get(&dst, i), want, "or_bits bit {}", i);
            }
            prop_assert_eq!(scan(&words, a), (a..nbits).find(|&i| get(&words, i)));
            let fits = fit_mask(words[0], n);
            for i in 0..BITS {
                let want = i + n <= BITS && (i..i + n).all(|j| get(&words, j));
                prop_assert_eq!(get(&[fits], i), want, "fit_mask bit {}", i);
            }
        }

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

        /// Layouts of up to four ranges (some adjacent, so merged; some sharing a word),
        /// added in any order, then random aligned allocations, exact and partial frees,
        /// and refused frees, against a page model. The allocator is first fit, so the
        /// model knows the exact answer to every request, including `None`.
        #[test]
        fn aligned_alloc_matches_a_first_fit_model(
            // Gaps mostly 0 (ranges that touch, merged) or small (sharing a word).
            layout in proptest::collection::vec(
                (prop_oneof![2 => Just(0u64), 1 => 1u64..80], prop_oneof![1u64..130, 1u64..1200]),
                1..5,
            ).prop_shuffle(),
            skew in 0u64..130,
            ops in proptest::collection::vec(
                (0u8..6, prop_oneof![1usize..5, 1usize..70, 60usize..700], 0u32..11, any::<usize>(), 1usize..80),
                1..150,
            ),
        ) {
            const BASE: u64 = 0x8000_0000;
            // Lay the ranges out in address order (by their shuffled position), then add
            // them in the shuffled order.
            let mut sorted = layout.clone();
            sorted.sort();
            let mut at = skew;
            let mut spans = Vec::new();
            for &(gap, len) in &sorted {
                at += gap;
                spans.push((at, at + len));
                at += len;
            }
            let span = at as usize;
            let mut managed = vec![false; span];
            let mut order: Vec<usize> = (0..spans.len()).collect();
            order.sort_by_key(|&i| layout.iter().position(|l| *l == sorted[i]).unwrap() * 8 + i);
            let mut a = HostFrames::new();
            for i in order {
                let (s, e) = spans[i];
                let got = a.add_range(hpa_range(BASE + s * PAGE_SIZE, (e - s) * PAGE_SIZE));
                prop_assert_eq!(got, Ok((e - s) as usize));
                for m in &mut managed[s as usize..e as usize] {
                    *m = true;
                }
                a.check();
            }
            let total = managed.iter().filter(|&&m| m).count();
            prop_assert_eq!(a.total_pages(), total);
            let frame0 = (BASE / PAGE_SIZE) as usize;
            let hpa = |i: usize| Hpa::new(BASE + i as u64 * PAGE_SIZE);
            let mut owner: Vec<Option<usize>> = vec![None; span];
            let mut next_id = 0;
            // Live allocations as the allocator sees them: maximal runs of one id.
            let runs = |owner: &[Option<usize>]| {
                let mut out = Vec::new();
                let mut i = 0;
                while i < owner.len() {
                    if let Some(id) = owner[i] {
                        let mut j = i;
                        while j < owner.len() && owner[j] == Some(id) {
                            j += 1;
                        }
                        out.push((i, j - i));
                        i = j;
                    } else {
                        i += 1;
                    }
                }
                out
            };
            for (kind, pages, align_log, pick, len) in ops {
                let live = runs(&owner);
                match kind {
                    0 | 1 => {
                        let align = 1usize << align_log;
                        // Free run length from each page, then the lowest aligned fit.
                        let mut run = vec![0usize; span + 1];
                        for i in (0..span).rev() {
                            run[i] = if managed[i] && owner[i].is_none() { run[i + 1] + 1 } else { 0 };
                        }
                        let want = (0..span).find(|&i| (frame0 + i) & (align - 1) == 0 && run[i] >= pages);
                        let got = a.alloc(pages, align);
                        prop_assert_eq!(got, want.map(hpa), "alloc({}, {})", pages, align);
                        if let Some(i) = want {
                            for o in &mut owner[i..i + pages] {
                                *o = Some(next_id);
                            }
                            next_id += 1;
                        }
                    }
                    2 if !live.is_empty() => {
                        let (i, n) = live[pick % live.len()];
                        prop_assert_eq!(a.free(hpa(i), n), Ok(()));
                        for o in &mut owner[i..i + n] {
                            *o = None;
                        }
                    }
                    3 if !live.is_empty() => {
                        // One page of a live allocation, as copy-on-write release does.
                        let (i, n) = live[pick % live.len()];
                        let p = i + (pick / 7) % n;
                        prop_assert_eq!(a.free_part(hpa(p), 1), Ok(()));
                        owner[p] = None;
                        // The tail is an allocation of its own now.
                        if p + 1 < i + n {
                            for o in &mut owner[p + 1..i + n] {
                                *o = Some(next_id);
                            }
                            next_id += 1;
                        }
                    }
                    4 => {
                        // An arbitrary free: refused unless it is one live allocation.
                        let i = pick % (span + 2);
                        let ok = live.contains(&(i, len));
                        prop_assert_eq!(a.free(hpa(i), len).is_ok(), ok, "free({}, {})", i, len);
                        if ok {
                            for o in &mut owner[i..i + len] {
                                *o = None;
                            }
                        }
                    }
                    _ => {
                        // An arbitrary partial free: refused unless inside one allocation.
                        let i = pick % (span + 2);
                        let ok = i + len <= span
                            && owner[i].is_some()
                            && live.iter().any(|&(s, n)| s <= i && i + len <= s + n);
                        prop_assert_eq!(a.free_part(hpa(i), len).is_ok(), ok, "free_part({}, {})", i, len);
                        if ok {
                            let (s, n) = *live.iter().find(|&&(s, n)| s <= i && i + len <= s + n).unwrap();
                            for o in &mut owner[i..i + len] {
                                *o = None;
                            }
                            if i + len < s + n {
                                for o in &mut owner[i + len..s + n] {
                                    *o = Some(next_id);
                                }
                                next_id += 1;
                            }
                        }
                    }
                }
                let used = owner.iter().filter(|o| o.is_some()).count();
                prop_assert_eq!(a.free_pages(), total - used);
                a.check();
            }
            for (i, n) in runs(&owner) {
                prop_assert_eq!(a.free(hpa(i), n), Ok(()));
            }
            prop_assert_eq!(a.free_pages(), total);
            // Everything free again: each contiguous stretch can be taken whole.
            for &(s, e) in &spans {
                let s = s as usize;
                let mut e = e as usize;
                if s > 0 && managed[s - 1] {
                    continue;
                }
                while e < span && managed[e] {
                    e += 1;
                }
                prop_assert_eq!(a.alloc(e - s, 1), Some(hpa(s)));
            }
            prop_assert_eq!(a.free_pages(), 0);
        }
    }
}
