//! Copy-on-write between G-stage tables: FORK in time independent of RAM size.
//!
//! FORK cannot afford a pass over every leaf (that costs ~120 instructions per 4 KiB
//! page, 8 M for 256 MiB). So it shares whole **leaf tables** (level 0, 2 MiB each):
//! each level-1 entry of the parent that points to a leaf table T becomes *invalid*
//! with the software bit `PTE_SHARED` set and T's PPN kept, in the parent and in the
//! child alike. The hardware ignores an invalid entry, so the first access by either
//! VM to that 2 MiB faults, and [`GStageTable::materialize`] gives the faulting table
//! its own leaf table:
//! - if others still hold T: a copy of T with W cleared in every leaf, each of whose
//!   frames gains one sharer;
//! - if this table holds T alone: T itself, with W cleared only on leaves whose frame
//!   is still shared elsewhere (no copy).
//!
//! FORK is then one pass over the level-1 entries (one per 2 MiB), and the per-page
//! work happens, 2 MiB at a time, only where a VM actually goes after the FORK.
//!
//! # Who counts what
//! One [`ShareCounts`] holds every count, keyed by host frame number:
//! - a shared leaf table's count is the number of level-1 entries naming it;
//! - a data frame's count is the number of leaf tables (own or shared) mapping it.
//!
//! A leaf table frame is never a data frame, so the two kinds never collide. A frame
//! absent from the counts is held once. The rules, all here so they are tested over
//! fake memory:
//! - FORK ([`fork_shared`](GStageTable::fork_shared)): every leaf table becomes
//!   shared and gains the child as holder; data counts do not change (the same leaf
//!   table still maps each frame once);
//! - first touch ([`materialize`](GStageTable::materialize)): as above;
//! - first write ([`make_writable`](GStageTable::make_writable)): W back if the frame
//!   is held once, else a private copy, and the old frame loses this sharer once no
//!   hart can still reach it through a stale TLB entry (the caller's job);
//! - teardown ([`release`](GStageTable::release)): each own leaf table unshares its
//!   frames; a shared one loses a holder, and the last holder's release unshares its
//!   frames and frees it.
//!
//! Inside a VM's RAM a leaf without W means copy-on-write: RAM is mapped RWX and only
//! these rules clear W.

use super::{
    indices, is_lazy, is_leaf, is_valid, leaf_pte, pte_table, shared_pte, shared_table, table_pte,
    GStageTable, MapError, Perms, TableFrames, TableMemory, GPA_LIMIT, PTE_READ_ONLY, PTE_W,
    ROOT_ENTRIES, ROOT_PAGES, TABLE_ENTRIES,
};
use crate::addr::{Gpa, Hpa, PAGE_SIZE};
use crate::shares::ShareCounts;
use alloc::vec::Vec;

/// What [`GStageTable::make_writable`] did to a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// It was writable already (another hart resolved the same fault first).
    AlreadyWritable,
    /// No one else maps its frame: W is back, nothing copied.
    Reclaimed,
    /// It now maps a private copy. `old` is the shared frame it mapped: this table still
    /// holds one share of it, which the caller releases
    /// ([`ShareCounts::unshare`], freeing `old` on `false`) once no hart can reach `old`
    /// through this table's stale TLB entries.
    Copied {
        /// The frame the page mapped before the copy.
        old: Hpa,
    },
}

impl GStageTable {
    /// Copy-on-write FORK: returns a new table mapping every page this one maps, to the
    /// same frames, by sharing every leaf table between the two (see the module
    /// documentation). Costs one pass over the level-1 entries, whatever the RAM size.
    ///
    /// All table pages the child needs now (its root and one level-1 table for each of
    /// this table's) are allocated first, so on failure nothing has changed. The caller
    /// must flush this table's G-stage TLB entries (HFENCE.GVMA) on every hart before
    /// relying on the sharing: until then they may still allow writes.
    pub fn fork_shared<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        shares: &mut ShareCounts,
    ) -> Result<GStageTable, MapError> {
        self.fork_shared_within(mem, frames, shares, 0..GPA_LIMIT)
    }

    /// [`fork_shared`](Self::fork_shared) of only the 2 MiB regions that overlap
    /// `[keep.start, keep.end)` (a VM's RAM): the child gets nothing of the others,
    /// which stay this table's own, untouched. That is how a VM's host MMIO mappings
    /// (never in a 2 MiB region its RAM touches) stay out of its clone.
    pub fn fork_shared_within<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        shares: &mut ShareCounts,
        keep: core::ops::Range<u64>,
    ) -> Result<GStageTable, MapError> {
        const REGION: u64 = 1 << 21;
        let mut child = GStageTable::new(frames)?;
        let mut pairs: Vec<(usize, Hpa, Hpa)> = Vec::new();
        for i2 in 0..ROOT_ENTRIES {
            let Some(l1) = Self::next_table(mem, self.root, i2) else {
                continue;
            };
            match Self::alloc_one(frames) {
                Ok(c1) => pairs.push((i2, l1, c1)),
                Err(e) => {
                    for (_, _, c1) in pairs {
                        frames.free_table(c1, 1);
                    }
                    frames.free_table(child.root, ROOT_PAGES);
                    return Err(e);
                }
            }
        }
        let mut tables: Vec<u64> = Vec::new();
        for (i2, l1, c1) in pairs {
            for i1 in 0..TABLE_ENTRIES {
                let region = ((i2 as u64) << 30) | ((i1 as u64) << 21);
                if region >= keep.end || region + REGION <= keep.start {
                    continue;
                }
                let e1 = mem.read_pte(l1, i1);
                let t = match shared_table(e1) {
                    Some(t) => t,
                    None if is_valid(e1) && !is_leaf(e1) => {
                        let t = pte_table(e1);
                        mem.write_pte(l1, i1, shared_pte(t));
                        self.table_pages -= 1;
                        t
                    }
                    None if is_lazy(e1) => {
                        // Not backed in the parent, so all zeroes: the clone backs its
                        // own copy when it first touches it.
                        mem.write_pte(c1, i1, e1);
                        continue;
                    }
                    None => continue,
                };
                mem.write_pte(c1, i1, shared_pte(t));
                tables.push(t.page_number());
            }
            // Filled in before it is linked, as in map_page.
            mem.write_pte(child.root, i2, table_pte(c1));
            child.table_pages += 1;
        }
        // Each leaf table gains the child as a holder; the parent already was one.
        shares.share(&tables);
        Ok(child)
    }

    /// Gives this table its own leaf table for the 2 MiB around `gpa` if that one is
    /// shared (see the module documentation). Returns whether anything changed.
    ///
    /// Only turns an invalid entry valid, so no TLB flush is needed for correctness;
    /// the caller flushes its own hart anyway (hardware may cache the invalid entry).
    /// On failure (no frame for the copy) nothing has changed.
    pub fn materialize<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        shares: &mut ShareCounts,
        gpa: Gpa,
    ) -> Result<bool, MapError> {
        if gpa.raw() >= GPA_LIMIT {
            return Ok(false);
        }
        let [i2, i1, _] = indices(gpa);
        let Some(l1) = Self::next_table(mem, self.root, i2) else {
            return Ok(false);
        };
        let Some(t) = shared_table(mem.read_pte(l1, i1)) else {
            return Ok(false);
        };
        if shares.is_shared(t.page_number()) {
            let own = Self::alloc_one(frames)?;
            let mut leaves: Vec<u64> = Vec::new();
            for i0 in 0..TABLE_ENTRIES {
                let pte = mem.read_pte(t, i0);
                if is_valid(pte) && is_leaf(pte) {
                    mem.write_pte(own, i0, pte & !PTE_W);
                    leaves.push(pte_table(pte).page_number());
                }
            }
            // The copy maps each frame once more; T is held once less (by others
            // still, so it stays).
            shares.share(&leaves);
            shares.unshare(t.page_number());
            mem.write_pte(l1, i1, table_pte(own));
        } else {
            // This table is T's last holder: take T over. A leaf may still have W from
            // before the FORK while another table (a copy of T) maps its frame too.
            for i0 in 0..TABLE_ENTRIES {
                let pte = mem.read_pte(t, i0);
                if is_valid(pte)
                    && pte & PTE_W != 0
                    && shares.is_shared(pte_table(pte).page_number())
                {
                    mem.write_pte(t, i0, pte & !PTE_W);
                }
            }
            mem.write_pte(l1, i1, table_pte(t));
        }
        self.table_pages += 1;
        Ok(true)
    }

    /// Makes the page containing `gpa` writable for the guest, the copy-on-write way:
    /// its leaf table becomes this table's own ([`materialize`](Self::materialize)),
    /// then W comes back if no other table maps the frame, or else `copy_page(frames,
    /// old)` returns a new frame holding a copy of `old` and the page maps that.
    ///
    /// Errors: [`MapError::NotMapped`] for a page not mapped or not readable (not
    /// copy-on-write), [`MapError::OutOfTableFrames`] or [`MapError::OutOfRamFrames`]
    /// when a frame is missing; the table is then unchanged except that the leaf table
    /// may have become its own.
    pub fn make_writable<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        shares: &mut ShareCounts,
        gpa: Gpa,
        copy_page: impl FnOnce(&mut F, Hpa) -> Option<Hpa>,
    ) -> Result<WriteOutcome, MapError> {
        let page = gpa.align_down(PAGE_SIZE);
        self.materialize(mem, frames, shares, page)?;
        let (l0, i0) = self.leaf_slot(mem, page).ok_or(MapError::NotMapped(page))?;
        let pte = mem.read_pte(l0, i0);
        if !is_valid(pte) || !is_leaf(pte) {
            return Err(MapError::NotMapped(page));
        }
        let perms = Perms::from_pte(pte);
        if perms.contains(Perms::W) {
            return Ok(WriteOutcome::AlreadyWritable);
        }
        if pte & PTE_READ_ONLY != 0 {
            return Err(MapError::ReadOnly(page));
        }
        if !perms.contains(Perms::R) {
            return Err(MapError::NotMapped(page));
        }
        let old = pte_table(pte);
        if !shares.is_shared(old.page_number()) {
            mem.write_pte(l0, i0, pte | PTE_W);
            return Ok(WriteOutcome::Reclaimed);
        }
        let copy = copy_page(frames, old).ok_or(MapError::OutOfRamFrames)?;
        mem.write_pte(l0, i0, leaf_pte(copy, perms | Perms::W));
        Ok(WriteOutcome::Copied { old })
    }

    /// MAP_CHILD_MEM: makes `dst`'s pages `[dst_gpa, dst_gpa + len)` copy-on-write copies
    /// of this table's pages `[src_gpa, src_gpa + len)`: `dst` maps the same frames, both
    /// without W, so the first write by either gives the writer its own copy. `perms`
    /// are `dst`'s: without W the pages are read-only for its guest for good (not even
    /// copy-on-write), without X not executable.
    ///
    /// Every page of both ranges must be mapped, and readable in this table
    /// ([`MapError::NotMapped`]); nothing changes unless they are (besides leaf tables
    /// becoming their tables' own). Returns `dst`'s previous frames that no table maps
    /// any more by passing each to `release_old` (with `frames`), which may free it at
    /// once only if `dst` has never run. The caller must also flush this table's TLB
    /// entries on every hart (W was cleared).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_range_into<M: TableMemory, F: TableFrames>(
        &mut self,
        dst: &mut GStageTable,
        mem: &mut M,
        frames: &mut F,
        shares: &mut ShareCounts,
        src_gpa: Gpa,
        dst_gpa: Gpa,
        len: u64,
        perms: Perms,
        mut release_old: impl FnMut(&mut F, Hpa),
    ) -> Result<(), MapError> {
        if !perms.is_valid_leaf() {
            return Err(MapError::BadPerms);
        }
        if !src_gpa.is_page_aligned()
            || !dst_gpa.is_page_aligned()
            || !len.is_multiple_of(PAGE_SIZE)
        {
            return Err(MapError::Misaligned);
        }
        src_gpa.checked_add(len).ok_or(MapError::Overflow)?;
        dst_gpa.checked_add(len).ok_or(MapError::Overflow)?;
        let page = |base: Gpa, i: u64| Gpa::new(base.raw() + i * PAGE_SIZE);
        let pages = len / PAGE_SIZE;
        // Everything checked before anything changes.
        for i in 0..pages {
            let (s, d) = (page(src_gpa, i), page(dst_gpa, i));
            self.materialize(mem, frames, shares, s)?;
            dst.materialize(mem, frames, shares, d)?;
            let readable = self
                .translate(mem, s)
                .is_some_and(|(_, p)| p.contains(Perms::R));
            if !readable {
                return Err(MapError::NotMapped(s));
            }
            if dst.translate(mem, d).is_none() {
                return Err(MapError::NotMapped(d));
            }
        }
        let bits = if perms.contains(Perms::W) {
            0
        } else {
            PTE_READ_ONLY
        };
        for i in 0..pages {
            let (s, d) = (page(src_gpa, i), page(dst_gpa, i));
            let (sl0, si0) = self.leaf_slot(mem, s).ok_or(MapError::NotMapped(s))?;
            let (dl0, di0) = dst.leaf_slot(mem, d).ok_or(MapError::NotMapped(d))?;
            let spte = mem.read_pte(sl0, si0);
            let frame = pte_table(spte);
            mem.write_pte(sl0, si0, spte & !PTE_W);
            let old = pte_table(mem.read_pte(dl0, di0));
            mem.write_pte(dl0, di0, leaf_pte(frame, perms.difference(Perms::W)) | bits);
            shares.share(&[frame.page_number()]);
            if !shares.unshare(old.page_number()) {
                release_old(frames, old);
            }
        }
        Ok(())
    }

    /// Tears the table down: frees every table page it holds, lets go of the leaf
    /// tables it shares, and returns the data frames that no other table maps any more
    /// (the caller frees them). Frames still mapped elsewhere just lose this sharer.
    ///
    /// The guest must no longer run anywhere, and stale TLB entries be flushed, before
    /// the returned frames or freed tables are reused.
    pub fn release<M: TableMemory, F: TableFrames>(
        self,
        mem: &M,
        frames: &mut F,
        shares: &mut ShareCounts,
    ) -> Vec<Hpa> {
        let mut last: Vec<Hpa> = Vec::new();
        self.release_with(mem, frames, shares, |_, f| last.push(f));
        last
    }

    /// [`release`](Self::release), handing each data frame no other table maps to
    /// `free_ram` (with `frames`) as it is found, in ascending GPA order, instead of
    /// collecting them: tearing down a large VM then needs no memory proportional to
    /// its RAM.
    pub fn release_with<M: TableMemory, F: TableFrames>(
        self,
        mem: &M,
        frames: &mut F,
        shares: &mut ShareCounts,
        mut free_ram: impl FnMut(&mut F, Hpa),
    ) {
        let drop_leaves = |t: Hpa,
                           shares: &mut ShareCounts,
                           frames: &mut F,
                           free_ram: &mut dyn FnMut(&mut F, Hpa)| {
            for i0 in 0..TABLE_ENTRIES {
                let pte = mem.read_pte(t, i0);
                if is_valid(pte) && is_leaf(pte) && !shares.unshare(pte_table(pte).page_number()) {
                    free_ram(frames, pte_table(pte));
                }
            }
        };
        for i2 in 0..ROOT_ENTRIES {
            let Some(l1) = Self::next_table(mem, self.root, i2) else {
                continue;
            };
            for i1 in 0..TABLE_ENTRIES {
                let e1 = mem.read_pte(l1, i1);
                if let Some(t) = shared_table(e1) {
                    if !shares.unshare(t.page_number()) {
                        drop_leaves(t, shares, frames, &mut free_ram);
                        frames.free_table(t, 1);
                    }
                } else if is_valid(e1) && !is_leaf(e1) {
                    let t = pte_table(e1);
                    drop_leaves(t, shares, frames, &mut free_ram);
                    frames.free_table(t, 1);
                }
            }
            frames.free_table(l1, 1);
        }
        frames.free_table(self.root, ROOT_PAGES);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{g, h, setup, Frames, Mem};
    use super::super::LAZY_REGION;
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    const RAM: u64 = 0x8000_0000;

    /// Fake data frames: contents are one u64 per frame.
    #[derive(Default)]
    struct Data {
        next: u64,
        content: HashMap<u64, u64>,
    }

    impl Data {
        fn alloc(&mut self) -> Hpa {
            self.next += PAGE_SIZE;
            let f = 0x40_0000_0000 + self.next;
            self.content.insert(f, 0);
            Hpa::new(f)
        }
    }

    fn fresh_vm(pages: &[u64], data: &mut Data) -> (Mem, Frames, GStageTable) {
        let (mut mem, mut frames, mut t) = setup();
        for &p in pages {
            let f = data.alloc();
            data.content.insert(f.raw(), p + 1);
            t.map_page(&mut mem, &mut frames, g(RAM + p * PAGE_SIZE), f, Perms::RWX)
                .unwrap();
        }
        (mem, frames, t)
    }

    #[test]
    fn fork_cost_does_not_depend_on_ram_size() {
        // 64 MiB: 32 leaf tables of 512 pages each.
        let mut data = Data::default();
        let pages: Vec<u64> = (0..16384).collect();
        let (mut mem, mut frames, mut t) = fresh_vm(&pages, &mut data);
        let mut shares = ShareCounts::new();
        let before = mem.1.get();
        let c = t.fork_shared(&mut mem, &mut frames, &mut shares).unwrap();
        // Two stores per leaf table (parent's entry, child's entry) and one to link the
        // child's level-1 table: none per page.
        assert_eq!(mem.1.get() - before, 2 * 32 + 1);
        assert_eq!(shares.shared_frames(), 32);
        // Both read the same frames, without W.
        for p in [0u64, 511, 512, 16383] {
            let gpa = g(RAM + p * PAGE_SIZE);
            let (hp, pp) = t.translate(&mem, gpa).unwrap();
            let (hc, pc) = c.translate(&mem, gpa).unwrap();
            assert_eq!(hp, hc);
            assert_eq!(pp, Perms::R | Perms::X);
            assert_eq!(pc, Perms::R | Perms::X);
            assert_eq!(data.content[&hp.raw()], p + 1);
        }
        // The parent's write copies; its first touch of that 2 MiB copies the leaf table.
        let out = t
            .make_writable(
                &mut mem,
                &mut frames,
                &mut shares,
                g(RAM + 5 * PAGE_SIZE),
                |_, old| {
                    let n = data.alloc();
                    let v = data.content[&old.raw()];
                    data.content.insert(n.raw(), v);
                    Some(n)
                },
            )
            .unwrap();
        let WriteOutcome::Copied { old } = out else {
            panic!("{out:?}")
        };
        assert!(shares.unshare(old.page_number()));
        // Mapping into a shared 2 MiB is refused until it is the table's own.
        assert_eq!(
            c.clone_for_test().map_page(
                &mut mem,
                &mut frames,
                g(RAM + 600 * PAGE_SIZE),
                h(0x1000),
                Perms::RWX
            ),
            Err(MapError::SharedTable(g(RAM + 600 * PAGE_SIZE)))
        );
        let mut freed: HashSet<u64> = HashSet::new();
        for f in c.release(&mem, &mut frames, &mut shares) {
            assert!(freed.insert(f.raw()));
        }
        for f in t.release(&mem, &mut frames, &mut shares) {
            assert!(freed.insert(f.raw()));
        }
        // Every data frame once (16384 originals and the copy), every table page back.
        assert_eq!(freed.len(), 16385);
        assert_eq!(frames.allocs, frames.frees);
        assert_eq!(shares.shared_frames(), 0);
    }

    #[test]
    fn fork_within_leaves_other_regions_to_the_parent() {
        let mut data = Data::default();
        // RAM pages in the first 2 MiB, and a "device" page 4 MiB below RAM.
        let (mut mem, mut frames, mut t) = fresh_vm(&[0, 1], &mut data);
        let device = g(RAM - 0x40_0000);
        t.map_page(
            &mut mem,
            &mut frames,
            device,
            h(0x1000_1000),
            Perms::R | Perms::W,
        )
        .unwrap();
        let mut shares = ShareCounts::new();
        let c = t
            .fork_shared_within(&mut mem, &mut frames, &mut shares, RAM..RAM + 0x20_0000)
            .unwrap();
        assert_eq!(c.translate(&mem, device), None);
        assert_eq!(
            t.translate(&mem, device),
            Some((h(0x1000_1000), Perms::R | Perms::W))
        );
        let (hp, _) = t.translate(&mem, g(RAM)).unwrap();
        assert_eq!(c.translate(&mem, g(RAM)).unwrap().0, hp);
        // Only the RAM leaf table is shared.
        assert_eq!(shares.shared_frames(), 1);
        assert_eq!(t.unmap_page(&mut mem, device), Some(h(0x1000_1000)));
        drop(c.release(&mem, &mut frames, &mut shares));
        drop(t.release(&mem, &mut frames, &mut shares));
        assert_eq!(frames.allocs, frames.frees);
    }

    #[test]
    fn fork_out_of_tables_changes_nothing() {
        let mut data = Data::default();
        // Two level-1 tables: needs root (1 alloc) + 2 level-1 tables.
        let (mut mem, mut frames, mut t) = fresh_vm(&[0, 1, 0x40000], &mut data);
        let mut shares = ShareCounts::new();
        for spare in 0..3 {
            let live = frames.allocs - frames.frees;
            frames.limit = Some(live + spare);
            let writes = mem.1.get();
            assert_eq!(
                t.fork_shared(&mut mem, &mut frames, &mut shares),
                Err(MapError::OutOfTableFrames)
            );
            assert_eq!(frames.allocs - frames.frees, live);
            assert_eq!(mem.1.get(), writes);
            assert_eq!(t.translate(&mem, g(RAM)).unwrap().1, Perms::RWX);
        }
        frames.limit = None;
        assert!(t.release(&mem, &mut frames, &mut shares).len() == 3);
        assert_eq!(frames.allocs, frames.frees);
    }

    #[test]
    fn copy_range_into_copies_on_write_and_keeps_read_only() {
        let mut data = Data::default();
        let (mut mem, mut frames, mut parent) = fresh_vm(&[0, 1, 2, 3], &mut data);
        let mut child = GStageTable::new(&mut frames).unwrap();
        for p in 0..4u64 {
            let f = data.alloc();
            child
                .map_page(&mut mem, &mut frames, g(RAM + p * PAGE_SIZE), f, Perms::RWX)
                .unwrap();
        }
        let mut shares = ShareCounts::new();
        let at = |p: u64| g(RAM + p * PAGE_SIZE);
        // Refusals change nothing: a page outside the child's RAM, bad permissions.
        assert_eq!(
            parent.copy_range_into(
                &mut child,
                &mut mem,
                &mut frames,
                &mut shares,
                at(0),
                at(3),
                2 * PAGE_SIZE,
                Perms::RWX,
                |_, _| panic!("nothing released on a refusal"),
            ),
            Err(MapError::NotMapped(at(4)))
        );
        assert_eq!(
            parent.copy_range_into(
                &mut child,
                &mut mem,
                &mut frames,
                &mut shares,
                at(0),
                at(0),
                PAGE_SIZE,
                Perms::W,
                |_, _| panic!("nothing released on a refusal"),
            ),
            Err(MapError::BadPerms)
        );
        assert_eq!(parent.translate(&mem, at(0)).unwrap().1, Perms::RWX);
        // Pages 0..2 of the parent become the child's 1..3: 1 writable, 2 read-only.
        let mut freed = Vec::new();
        parent
            .copy_range_into(
                &mut child,
                &mut mem,
                &mut frames,
                &mut shares,
                at(0),
                at(1),
                PAGE_SIZE,
                Perms::RWX,
                |_, f| freed.push(f),
            )
            .unwrap();
        assert_eq!(freed.len(), 1);
        let mut freed2 = Vec::new();
        parent
            .copy_range_into(
                &mut child,
                &mut mem,
                &mut frames,
                &mut shares,
                at(1),
                at(2),
                PAGE_SIZE,
                Perms::R,
                |_, f| freed2.push(f),
            )
            .unwrap();
        assert_eq!(freed2.len(), 1);
        let (f0, p0) = parent.translate(&mem, at(0)).unwrap();
        assert_eq!(p0, Perms::R | Perms::X);
        assert_eq!(
            child.translate(&mem, at(1)).unwrap(),
            (f0, Perms::R | Perms::X)
        );
        assert_eq!(child.translate(&mem, at(2)).unwrap().1, Perms::R);
        assert_eq!(data.content[&f0.raw()], 1);
        let mut copy = |frames: &mut Frames, old: Hpa| {
            let _ = frames;
            let n = data.alloc();
            let v = data.content[&old.raw()];
            data.content.insert(n.raw(), v);
            Some(n)
        };
        // The child's writable copy: its own frame on first write.
        let out = child
            .make_writable(&mut mem, &mut frames, &mut shares, at(1), &mut copy)
            .unwrap();
        assert_eq!(out, WriteOutcome::Copied { old: f0 });
        assert!(shares.unshare(f0.page_number()));
        // The parent, now the frame's only holder, just gets W back.
        assert_eq!(
            parent.make_writable(&mut mem, &mut frames, &mut shares, at(0), &mut copy),
            Ok(WriteOutcome::Reclaimed)
        );
        // The read-only one never becomes writable.
        assert_eq!(
            child.make_writable(&mut mem, &mut frames, &mut shares, at(2), &mut copy),
            Err(MapError::ReadOnly(at(2)))
        );
        let mut all: Vec<Hpa> = freed.into_iter().chain(freed2).collect();
        all.extend(child.release(&mem, &mut frames, &mut shares));
        all.extend(parent.release(&mem, &mut frames, &mut shares));
        all.sort_unstable();
        all.dedup();
        // 4 + 4 frames at the start, plus the child's copy.
        assert_eq!(all.len(), 9);
        assert_eq!(frames.allocs, frames.frees);
        assert_eq!(shares.shared_frames(), 0);
    }

    impl GStageTable {
        /// A second handle on the same tables, for refusals that change nothing.
        fn clone_for_test(&self) -> GStageTable {
            GStageTable {
                root: self.root,
                table_pages: self.table_pages,
            }
        }
    }

    /// Every data frame's count equals the leaf tables mapping it, every shared leaf
    /// table's count the level-1 entries naming it, and no frame mapped twice is
    /// writable through a table the hardware walks.
    fn check_counts(vms: &[Option<GStageTable>], mem: &Mem, shares: &ShareCounts) {
        let mut table_refs: HashMap<u64, u32> = HashMap::new();
        let mut leaf_tables: Vec<(Hpa, bool)> = Vec::new();
        for t in vms.iter().flatten() {
            for i2 in 0..ROOT_ENTRIES {
                let Some(l1) = GStageTable::next_table(mem, t.root, i2) else {
                    continue;
                };
                for i1 in 0..TABLE_ENTRIES {
                    let e1 = mem.read_pte(l1, i1);
                    if let Some(s) = shared_table(e1) {
                        let n = table_refs.entry(s.page_number()).or_insert(0);
                        if *n == 0 {
                            leaf_tables.push((s, true));
                        }
                        *n += 1;
                    } else if is_valid(e1) {
                        leaf_tables.push((pte_table(e1), false));
                    }
                }
            }
        }
        for (t, n) in &table_refs {
            assert_eq!(shares.count(*t), *n, "leaf table {t:#x}");
        }
        let mut frame_refs: HashMap<u64, u32> = HashMap::new();
        let mut writable: Vec<u64> = Vec::new();
        for (t, shared) in &leaf_tables {
            for i0 in 0..TABLE_ENTRIES {
                let pte = mem.read_pte(*t, i0);
                if is_valid(pte) && is_leaf(pte) {
                    let f = pte_table(pte).page_number();
                    *frame_refs.entry(f).or_insert(0) += 1;
                    if !shared && pte & PTE_W != 0 {
                        writable.push(f);
                    }
                }
            }
        }
        for (f, n) in &frame_refs {
            assert_eq!(shares.count(*f), *n, "frame {f:#x}");
        }
        for f in writable {
            assert_eq!(frame_refs[&f], 1, "frame {f:#x} writable while shared");
        }
        assert_eq!(
            shares.shared_frames(),
            table_refs.values().filter(|n| **n > 1).count()
                + frame_refs.values().filter(|n| **n > 1).count()
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Fork(usize),
        Write(usize, usize, u64),
        Read(usize, usize),
        Touch(usize, usize),
        Kill(usize),
        /// MAP_CHILD_MEM of one page: (from VM, page, to VM, page).
        CopyInto(usize, usize, usize, usize),
    }

    /// Pages spread over three leaf tables and a second GiB.
    const PAGES: [u64; 10] = [0, 1, 2, 511, 512, 513, 1100, 1101, 0x40000, 0x40001];

    fn op_strategy() -> impl Strategy<Value = Op> {
        let vm = 0usize..6;
        let page = 0usize..PAGES.len();
        prop_oneof![
            vm.clone().prop_map(Op::Fork),
            (vm.clone(), page.clone(), 1u64..1000).prop_map(|(v, p, x)| Op::Write(v, p, x)),
            (vm.clone(), page.clone()).prop_map(|(v, p)| Op::Read(v, p)),
            (vm.clone(), page.clone()).prop_map(|(v, p)| Op::Touch(v, p)),
            vm.clone().prop_map(Op::Kill),
            (vm.clone(), page.clone(), vm, page).prop_map(|(a, p, b, q)| Op::CopyInto(a, p, b, q)),
        ]
    }

    #[test]
    fn lazy_regions_are_unmapped_until_backed_and_forks_keep_them_lazy() {
        let mut data = Data::default();
        let (mut mem, mut frames, mut t) = fresh_vm(&[0], &mut data);
        let lazy = g(RAM + LAZY_REGION);
        assert_eq!(
            t.reserve_lazy(&mut mem, &mut frames, g(RAM + PAGE_SIZE)),
            Err(MapError::Misaligned)
        );
        // The first region already maps a page.
        assert_eq!(
            t.reserve_lazy(&mut mem, &mut frames, g(RAM)),
            Err(MapError::AlreadyMapped(g(RAM)))
        );
        let tables = t.table_pages();
        t.reserve_lazy(&mut mem, &mut frames, lazy).unwrap();
        assert_eq!(t.table_pages(), tables, "a lazy region holds no table");
        assert_eq!(
            t.reserve_lazy(&mut mem, &mut frames, lazy),
            Err(MapError::AlreadyMapped(lazy))
        );
        let last = g(lazy.raw() + LAZY_REGION - PAGE_SIZE);
        assert!(t.is_lazy(&mem, lazy) && t.is_lazy(&mem, last));
        assert!(!t.is_lazy(&mem, g(RAM)));
        assert_eq!(t.translate(&mem, last), None);

        // A fork copies the mark: each side backs its own region later.
        let mut shares = ShareCounts::new();
        let mut c = t.fork_shared(&mut mem, &mut frames, &mut shares).unwrap();
        assert!(c.is_lazy(&mem, last));
        let f = data.alloc();
        t.map_range(&mut mem, &mut frames, lazy, f, LAZY_REGION, Perms::RWX)
            .unwrap();
        assert!(!t.is_lazy(&mem, lazy));
        assert_eq!(t.translate(&mem, lazy), Some((f, Perms::RWX)));
        assert!(c.is_lazy(&mem, lazy), "the clone's region stays its own");
        assert_eq!(c.translate(&mem, lazy), None);
        // Materializing or copy-on-write in a lazy region changes nothing.
        assert_eq!(
            c.materialize(&mut mem, &mut frames, &mut shares, lazy),
            Ok(false)
        );
        assert_eq!(
            c.make_writable(&mut mem, &mut frames, &mut shares, lazy, |_, _| None),
            Err(MapError::NotMapped(lazy))
        );
        assert!(c.is_lazy(&mem, lazy));

        let mut freed = Vec::new();
        t.release_with(&mem, &mut frames, &mut shares, |_, h| freed.push(h));
        c.release_with(&mem, &mut frames, &mut shares, |_, h| freed.push(h));
        // The parent's backing frames and its first page come back; nothing else.
        assert_eq!(freed.len(), 1 + TABLE_ENTRIES);
        assert_eq!(frames.allocs, frames.frees);
        assert_eq!(shares.shared_frames(), 0);
    }

    proptest! {
        /// Random FORKs, writes, reads, first touches and teardowns: every VM reads
        /// what it wrote or inherited and nothing any other VM wrote, the counts stay
        /// exact, and when all are gone every frame and table page is back.
        #[test]
        fn forks_and_writes_match_a_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
            let mut data = Data::default();
            let (mut mem, mut frames, t0) = fresh_vm(&PAGES, &mut data);
            let mut live: HashSet<u64> = data.content.keys().copied().collect();
            let mut shares = ShareCounts::new();
            let mut vms: Vec<Option<GStageTable>> = vec![Some(t0)];
            let mut model: Vec<BTreeMap<u64, u64>> =
                vec![PAGES.iter().map(|p| (*p, p + 1)).collect()];
            for op in ops {
                match op {
                    Op::Fork(i) => {
                        let i = i % vms.len();
                        let room = vms.len() < 8;
                        if let Some(t) = vms[i].as_mut() {
                            if room {
                                let c = t.fork_shared(&mut mem, &mut frames, &mut shares).unwrap();
                                vms.push(Some(c));
                                let m = model[i].clone();
                                model.push(m);
                            }
                        }
                    }
                    Op::Write(i, p, x) => {
                        let i = i % vms.len();
                        let Some(t) = vms[i].as_mut() else { continue };
                        let gpa = g(RAM + PAGES[p] * PAGE_SIZE);
                        let out = t
                            .make_writable(&mut mem, &mut frames, &mut shares, gpa, |_, old| {
                                let n = data.alloc();
                                let v = data.content[&old.raw()];
                                data.content.insert(n.raw(), v);
                                Some(n)
                            })
                            .unwrap();
                        if let WriteOutcome::Copied { old } = out {
                            live.insert(t.translate(&mem, gpa).unwrap().0.raw());
                            if !shares.unshare(old.page_number()) {
                                prop_assert!(live.remove(&old.raw()));
                            }
                        }
                        let (hpa, perms) = t.translate(&mem, gpa).unwrap();
                        prop_assert_eq!(perms, Perms::RWX);
                        data.content.insert(hpa.raw(), x);
                        model[i].insert(PAGES[p], x);
                    }
                    Op::Read(i, p) => {
                        let i = i % vms.len();
                        let Some(t) = vms[i].as_ref() else { continue };
                        let hpa = t.translate(&mem, g(RAM + PAGES[p] * PAGE_SIZE)).unwrap().0;
                        prop_assert_eq!(data.content[&hpa.raw()], model[i][&PAGES[p]]);
                    }
                    Op::Touch(i, p) => {
                        let i = i % vms.len();
                        let Some(t) = vms[i].as_mut() else { continue };
                        t.materialize(&mut mem, &mut frames, &mut shares, g(RAM + PAGES[p] * PAGE_SIZE))
                            .unwrap();
                    }
                    Op::CopyInto(a, p, b, q) => {
                        let (a, b) = (a % vms.len(), b % vms.len());
                        if a == b || vms[a].is_none() || vms[b].is_none() {
                            continue;
                        }
                        let mut dst = vms[b].take().unwrap();
                        let src = vms[a].as_mut().unwrap();
                        let mut freed = Vec::new();
                        src.copy_range_into(
                            &mut dst,
                            &mut mem,
                            &mut frames,
                            &mut shares,
                            g(RAM + PAGES[p] * PAGE_SIZE),
                            g(RAM + PAGES[q] * PAGE_SIZE),
                            PAGE_SIZE,
                            Perms::RWX,
                            |_, f| freed.push(f),
                        )
                        .unwrap();
                        vms[b] = Some(dst);
                        for f in freed {
                            prop_assert!(live.remove(&f.raw()));
                        }
                        let v = model[a][&PAGES[p]];
                        model[b].insert(PAGES[q], v);
                    }
                    Op::Kill(i) => {
                        let i = i % vms.len();
                        if let Some(t) = vms[i].take() {
                            for f in t.release(&mem, &mut frames, &mut shares) {
                                prop_assert!(live.remove(&f.raw()));
                            }
                        }
                    }
                }
                check_counts(&vms, &mem, &shares);
                for (i, t) in vms.iter().enumerate() {
                    let Some(t) = t else { continue };
                    for p in PAGES {
                        let hpa = t.translate(&mem, g(RAM + p * PAGE_SIZE)).unwrap().0;
                        prop_assert!(live.contains(&hpa.raw()));
                        prop_assert_eq!(data.content[&hpa.raw()], model[i][&p]);
                    }
                }
            }
            for t in vms.into_iter().flatten() {
                for f in t.release(&mem, &mut frames, &mut shares) {
                    prop_assert!(live.remove(&f.raw()));
                }
            }
            prop_assert!(live.is_empty());
            prop_assert_eq!(frames.allocs, frames.frees);
            prop_assert_eq!(shares.shared_frames(), 0);
        }
    }
}
