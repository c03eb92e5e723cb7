//! The G-stage isolation backend: a guest's RAM as host pages mapped into its own
//! sv39x4 G-stage table (H extension). Here guest RAM is allocated, translated for the
//! hypervisor's own accesses, forked (copy-on-write; the fault side is in `cow`),
//! shared into a child (MAP_CHILD_MEM) and given back. Nothing outside this file and
//! `cow.rs` sees the table: the rest of the hypervisor holds a `Box<dyn Isolation>`.

use crate::isolation::{Activation, CowError, Isolation, Stale};
use crate::mem::{self, PhysTables, TableAlloc};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::gstage::{AccessError, GStageTable, MapError, Perms, GPA_LIMIT, LAZY_REGION};

/// What [`GStageMemory::new`] (and the VM build) says when it was cancelled.
pub const CANCELLED: &str = "cancelled";

/// Largest backing block tried when allocating guest RAM (2 MiB).
const MAX_BLOCK_PAGES: usize = 512;

/// Most host MMIO ranges one VM may map (bounds the list kept per VM).
const MAX_MMIO_RANGES: usize = 256;

/// Host pages a lazily backed region will take when backed: its frames and its leaf
/// table.
const REGION_PROMISE: u64 = LAZY_REGION / PAGE_SIZE + 1;

/// A guest's RAM: host pages mapped into its G-stage table.
///
/// The table is the only record of which frames the guest owns: RAM is allocated in
/// blocks but released page by page, because after a copy-on-write FORK any page of a
/// block may be shared, replaced by a private copy, or still the VM's own.
pub struct GStageMemory {
    /// The G-stage table (read by `cow`, the other half of this backend).
    pub(crate) table: GStageTable,
    /// Host pages its lazily backed regions will take ([`REGION_PROMISE`] each, counted
    /// in `mem::count_unbacked`).
    unbacked_pages: u64,
    /// The guest's RAM: what a FORK shares with the clone (nothing else is).
    ram: Range<Gpa>,
    /// RAM mapped at GPA = HPA and never moved (a VM that programs DMA-capable
    /// devices): FORK and MAP_CHILD_MEM copy it for the other VM instead of sharing it
    /// copy-on-write, so no page of this VM is ever replaced under a device.
    pinned: bool,
    /// Host MMIO mapped into the guest (MAP_HOST_MMIO): `(gpa, hpa, len)`. Never RAM
    /// frames: unmapped before the table is released, never shared with a clone, and
    /// never a buffer the hypervisor reads or writes for the guest.
    mmio: Vec<(Gpa, Hpa, u64)>,
}

impl GStageMemory {
    /// Allocates and maps zeroed RAM for `ram` (page-aligned) now. Checks `cancelled`
    /// before each block of at most 2 MiB, and gives everything back if it holds.
    pub fn new(ram: Range<Gpa>, cancelled: &dyn Fn() -> bool) -> Result<Self, String> {
        let mut this = Self::empty(ram)?;
        if let Err(e) = this.back(ram.start(), ram.len(), cancelled) {
            this.destroy();
            return Err(e);
        }
        Ok(this)
    }

    /// Guest RAM for `ram` (page-aligned) that costs nothing until touched: every whole
    /// 2 MiB region is only marked in the table ([`GStageTable::reserve_lazy`]) and
    /// backed with zeroed frames by [`Isolation::populate`] on its first access (the
    /// guest's fault, or the hypervisor's own access for it); a partial region at
    /// either end is backed now. The VM is still charged for all of it when it is
    /// made, so a later first touch always finds its frames.
    pub fn new_lazy(ram: Range<Gpa>, cancelled: &dyn Fn() -> bool) -> Result<Self, String> {
        let mut this = Self::empty(ram)?;
        let (start, end) = (ram.start().raw(), ram.end().raw());
        let first = start.next_multiple_of(LAZY_REGION);
        let last = end / LAZY_REGION * LAZY_REGION;
        let result = if first < last {
            this.back(ram.start(), first - start, cancelled)
                .and_then(|()| {
                    let mut frames = mem::frames();
                    for region in (first..last).step_by(LAZY_REGION as usize) {
                        this.table
                            .reserve_lazy(
                                &mut PhysTables,
                                &mut TableAlloc(&mut frames),
                                Gpa::new(region),
                            )
                            .map_err(|e| format!("reserving {}: {e}", Gpa::new(region)))?;
                        this.unbacked_pages += REGION_PROMISE;
                        mem::count_unbacked(REGION_PROMISE, true);
                    }
                    Ok(())
                })
                .and_then(|()| this.back(Gpa::new(last), end - last, cancelled))
        } else {
            this.back(ram.start(), ram.len(), cancelled)
        };
        if let Err(e) = result {
            this.destroy();
            return Err(e);
        }
        Ok(this)
    }

    /// `bytes` of zeroed RAM (a whole number of 2 MiB regions) in one host block, mapped
    /// at GPA = HPA and pinned there: what a VM that drives DMA-capable host devices
    /// needs, since a device writes host physical addresses. Returns the memory and
    /// its range (the guest's RAM, the same in both address spaces).
    pub fn new_identity(bytes: u64) -> Result<(Self, Range<Gpa>), String> {
        let pages = usize::try_from(bytes / PAGE_SIZE).map_err(|_| String::from("too large"))?;
        if pages == 0 || !bytes.is_multiple_of(LAZY_REGION) {
            return Err(format!(
                "{bytes} bytes is not a whole number of 2 MiB regions"
            ));
        }
        let region_pages = (LAZY_REGION / PAGE_SIZE) as usize;
        let hpa = mem::alloc_zeroed(&mut mem::frames(), pages, region_pages)
            .ok_or_else(|| format!("no contiguous {} MiB of host RAM", bytes >> 20))?;
        let ram = Range::new(Gpa::new(hpa.raw()), bytes)
            .ok_or_else(|| String::from("RAM range wraps"))?;
        let mut this = match Self::empty(ram) {
            Ok(m) => m,
            Err(e) => {
                let _ = mem::frames().free(hpa, pages);
                return Err(e);
            }
        };
        this.pinned = true;
        let mapped = this.table.map_range(
            &mut PhysTables,
            &mut TableAlloc(&mut mem::frames()),
            ram.start(),
            hpa,
            bytes,
            Perms::RWX,
        );
        if let Err(e) = mapped {
            // What was mapped goes back through the table; the rest directly.
            this.destroy();
            return Err(format!("mapping identity RAM at {hpa}: {e}"));
        }
        Ok((this, ram))
    }

    /// An empty table (its root only) for a guest whose RAM is `ram`.
    pub(crate) fn empty(ram: Range<Gpa>) -> Result<Self, String> {
        let table = GStageTable::new(&mut TableAlloc(&mut mem::frames()))
            .map_err(|e| format!("G-stage root table: {e}"))?;
        Ok(Self {
            table,
            unbacked_pages: 0,
            ram,
            pinned: false,
            mmio: Vec::new(),
        })
    }

    /// A private, eagerly backed copy of this (pinned) memory for a clone: the clone
    /// takes the copy, so this VM's pages never move under its devices.
    fn fork_copied(&mut self) -> Result<Self, String> {
        let child = Self::new(self.ram, &|| false)?;
        let mut failed = None;
        let table = &self.table;
        table.for_each_leaf(&PhysTables, |gpa, hpa, _| {
            if failed.is_some() || !self.ram.contains(gpa) {
                return;
            }
            match child.table.translate(&PhysTables, gpa) {
                // SAFETY: `hpa` is this VM's RAM frame and `to` the clone's fresh one:
                // both host RAM the hypervisor allocated, distinct, page-sized.
                Some((to, _)) => unsafe { diosix_riscv::physmem::copy(to, hpa, PAGE_SIZE) },
                None => failed = Some(gpa),
            }
        });
        if let Some(gpa) = failed {
            child.destroy();
            return Err(format!("clone has no page at {gpa}"));
        }
        Ok(child)
    }

    /// Maps zeroed frames at `[gpa, gpa+len)` (page-aligned, unmapped or lazily
    /// backed), in blocks of at most 2 MiB, checking `cancelled` before each. On
    /// failure what was mapped stays mapped (the caller destroys, or logs).
    fn back(&mut self, gpa: Gpa, len: u64, cancelled: &dyn Fn() -> bool) -> Result<(), String> {
        let mut remaining = (len / PAGE_SIZE) as usize;
        let mut gpa = gpa;
        let mut block = MAX_BLOCK_PAGES;
        while remaining > 0 {
            if cancelled() {
                return Err(CANCELLED.into());
            }
            // Taken per block, so other harts' copy-on-write copies are not held up
            // while a large VM is zeroed.
            let mut frames = mem::frames();
            block = block
                .min(remaining.next_power_of_two())
                .min(MAX_BLOCK_PAGES);
            let want = block.min(remaining);
            let Some(hpa) = mem::alloc_zeroed(&mut frames, want, block) else {
                if block == 1 {
                    return Err(format!("out of host RAM at {gpa}"));
                }
                block /= 2;
                continue;
            };
            let len = want as u64 * PAGE_SIZE;
            if let Err(e) = self.table.map_range(
                &mut PhysTables,
                &mut TableAlloc(&mut frames),
                gpa,
                hpa,
                len,
                Perms::RWX,
            ) {
                // Not in the table, so destroy() cannot find it.
                let _ = frames.free(hpa, want);
                return Err(format!("mapping {gpa}: {e}"));
            }
            gpa = Gpa::new(gpa.raw() + len);
            remaining -= want;
        }
        Ok(())
    }

    /// Copy-on-write FORK: a new guest memory sharing every leaf table (so every
    /// frame) with this one, in time independent of RAM size (see
    /// `diosix_core::gstage` `shared`). The caller has every vCPU of this VM off its
    /// hart except its own; this hart's G-stage TLB is flushed here, the others flush
    /// when they next load one.
    pub fn fork_shared(&mut self) -> Result<Self, String> {
        let forked = {
            let mut shares = mem::SHARES.lock();
            let mut frames = mem::frames();
            // Only RAM: the host MMIO this VM holds stays its own.
            let keep = self.ram.start().raw()..self.ram.end().raw();
            self.table.fork_shared_within(
                &mut PhysTables,
                &mut TableAlloc(&mut frames),
                &mut shares,
                keep,
            )
        };
        let table = forked.map_err(|e| format!("G-stage tables for the clone: {e}"))?;
        // This VM's leaf tables are now reached only through invalid entries: the
        // writable translations cached from them must go.
        diosix_riscv::fence::hfence_gvma_all();
        // The clone has the same lazily backed regions, each its own to back.
        mem::count_unbacked(self.unbacked_pages, true);
        Ok(Self {
            table,
            unbacked_pages: self.unbacked_pages,
            ram: self.ram,
            pinned: false,
            mmio: Vec::new(),
        })
    }

    /// Returns every page (RAM and tables) to the host allocator, except frames and
    /// leaf tables other VMs still share (they lose one sharer instead).
    pub fn destroy(mut self) {
        // Device pages are not frames: out of the table before it is torn down.
        for (gpa, _, len) in core::mem::take(&mut self.mmio) {
            self.unmap_pages(gpa, len);
        }
        mem::count_unbacked(self.unbacked_pages, false);
        let mut shares = mem::SHARES.lock();
        let mut frames = mem::frames();
        // Frames come in GPA order, which for RAM still in the blocks it was built from
        // is HPA order too: contiguous runs go back in one call each, and nothing
        // proportional to the VM's RAM is allocated to tear it down.
        let mut run: Option<(Hpa, usize)> = None;
        self.table.release_with(
            &PhysTables,
            &mut TableAlloc(&mut frames),
            &mut shares,
            |frames, hpa| match run {
                Some((start, n)) if start.raw() + n as u64 * PAGE_SIZE == hpa.raw() => {
                    run = Some((start, n + 1));
                }
                _ => {
                    if let Some((start, n)) = run.replace((hpa, 1)) {
                        free_run(frames.0, start, n);
                    }
                }
            },
        );
        if let Some((start, n)) = run {
            free_run(&mut frames, start, n);
        }
    }
}

impl GStageMemory {
    /// Moves the frame behind the page at `gpa` (RAM of this memory, made private
    /// first if it is shared copy-on-write) into `to` at `to_gpa`: the frame changes
    /// owner, nothing is copied, and this memory no longer maps that page. What a
    /// copy-on-write break replaced goes in `stale` for the caller to release.
    pub(crate) fn move_page(
        &mut self,
        gpa: Gpa,
        to: &mut GStageMemory,
        to_gpa: Gpa,
        stale: &mut Stale,
    ) -> Result<(), String> {
        let fail = |what: &str| format!("{what} at {gpa}");
        self.populate(gpa, PAGE_SIZE)
            .map_err(|_| fail("no frame to back RAM"))?;
        self.own_leaf_table(gpa)
            .map_err(|_| fail("no frame for a leaf table"))?;
        if self
            .table
            .translate(&PhysTables, gpa)
            .is_some_and(|(_, p)| !p.contains(Perms::W))
        {
            self.make_page_writable(gpa, stale)
                .map_err(|_| fail("no frame for a private copy"))?;
        }
        let hpa = self
            .table
            .unmap_page(&mut PhysTables, gpa)
            .ok_or_else(|| fail("nothing mapped"))?;
        let mut frames = mem::frames();
        let mapped = to.table.map_page(
            &mut PhysTables,
            &mut TableAlloc(&mut frames),
            to_gpa,
            hpa,
            Perms::RWX,
        );
        if let Err(e) = mapped {
            // Held by neither table any more: back to the host.
            let _ = frames.free_part(hpa, 1);
            return Err(format!("{}: {e}", fail("moving")));
        }
        Ok(())
    }

    fn unmap_pages(&mut self, gpa: Gpa, len: u64) {
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            self.table
                .unmap_page(&mut PhysTables, Gpa::new(gpa.raw() + off));
        }
    }

    /// Whether `[gpa, gpa+len)` touches any host MMIO this VM has mapped.
    fn touches_mmio(&self, gpa: Gpa, len: u64) -> bool {
        let end = gpa.raw().saturating_add(len);
        self.mmio
            .iter()
            .any(|&(g, _, l)| gpa.raw() < g.raw() + l && g.raw() < end)
    }
}

impl Isolation for GStageMemory {
    /// How harts switch to this memory for VMID `vmid`; `None` if the VMID does not fit
    /// the hardware's field.
    fn activation(&self, vmid: u16) -> Option<Activation> {
        let hgatp = self.table.hgatp(vmid)?;
        Some(Activation::gstage(usize::try_from(hgatp).ok()?))
    }

    /// Translates one GPA (the G-stage walk).
    fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        self.table.translate(&PhysTables, gpa)
    }

    /// Host chunks backing the guest buffer `[gpa, gpa+len)`, checked page by page.
    fn chunks(
        &self,
        gpa: Gpa,
        len: u64,
        write: bool,
    ) -> Result<diosix_core::gstage::Chunks, AccessError> {
        // The hypervisor never reads or writes a device's registers for a guest (none
        // is mapped within RAM: `map_mmio` refuses that, so a buffer in RAM skips
        // the list).
        if !self.ram.contains_span(gpa, len) && self.touches_mmio(gpa, len) {
            return Err(AccessError::NotMapped(gpa));
        }
        self.table.guest_chunks(&PhysTables, gpa, len, write)
    }

    fn map_mmio(&mut self, gpa: Gpa, hpa: Hpa, len: u64) -> Result<(), MapError> {
        let region = |a: u64| a / LAZY_REGION;
        let (start, end) = (self.ram.start().raw(), self.ram.end().raw());
        let last = gpa
            .raw()
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(MapError::NotMapped(gpa))?
            - 1;
        // Never in a 2 MiB region RAM touches (those are what FORK shares), and never
        // over another mapping.
        if region(gpa.raw()) <= region(end - 1) && region(last) >= region(start) {
            return Err(MapError::AlreadyMapped(gpa));
        }
        if self.touches_mmio(gpa, len) || self.mmio.len() >= MAX_MMIO_RANGES {
            return Err(MapError::AlreadyMapped(gpa));
        }
        self.table.map_range(
            &mut PhysTables,
            &mut TableAlloc(&mut mem::frames()),
            gpa,
            hpa,
            len,
            Perms::R | Perms::W,
        )?;
        self.mmio.push((gpa, hpa, len));
        Ok(())
    }

    fn unmap_mmio(&mut self, gpa: Gpa) -> bool {
        let Some(i) = self.mmio.iter().position(|&(g, _, _)| g == gpa) else {
            return false;
        };
        let (g, _, len) = self.mmio.swap_remove(i);
        self.unmap_pages(g, len);
        true
    }

    fn is_pinned(&self) -> bool {
        self.pinned
    }

    fn mmio_ranges(&self) -> Vec<Range<Gpa>> {
        self.mmio
            .iter()
            .filter_map(|&(gpa, _, len)| Range::new(gpa, len))
            .collect()
    }

    fn populate(&mut self, gpa: Gpa, len: u64) -> Result<bool, CowError> {
        let Some(end) = gpa.raw().checked_add(len) else {
            return Ok(false);
        };
        let mut changed = false;
        let first = gpa.align_down(LAZY_REGION).raw();
        for region in (first..end.min(GPA_LIMIT)).step_by(LAZY_REGION as usize) {
            let at = Gpa::new(region);
            if self.table.is_lazy(&PhysTables, at) {
                let backed = self.back(at, LAZY_REGION, &|| false);
                // No longer promised once its mark is gone (even if backing failed
                // half-way: the frames it has are held, the rest is lost to the VM).
                if !self.table.is_lazy(&PhysTables, at) {
                    self.unbacked_pages -= REGION_PROMISE;
                    mem::count_unbacked(REGION_PROMISE, false);
                }
                backed.map_err(|e| {
                    log::error!("backing guest RAM at {at}: {e}");
                    CowError::OutOfMemory
                })?;
                changed = true;
            }
        }
        Ok(changed)
    }

    fn fork(&mut self) -> Result<Box<dyn Isolation>, String> {
        if self.pinned {
            return Ok(Box::new(self.fork_copied()?));
        }
        Ok(Box::new(self.fork_shared()?))
    }

    /// MAP_CHILD_MEM: `child`'s `size` bytes at `child_gpa` become a copy-on-write copy
    /// of this memory's at `parent_gpa`, with `perms` for the child. The child has never
    /// run, so no hart holds a translation to the frames it stops mapping: they are
    /// freed at once. This memory's pages lose W; the caller flushes its harts.
    fn share_into(
        &mut self,
        child: &mut dyn Isolation,
        parent_gpa: Gpa,
        child_gpa: Gpa,
        size: u64,
        perms: Perms,
    ) -> Result<(), MapError> {
        // Both sides of a copy-on-write share are G-stage tables: one backend runs
        // on the whole machine.
        let child = child
            .as_any_mut()
            .downcast_mut::<GStageMemory>()
            .ok_or(MapError::BadPerms)?;
        // Both sides must be backed to be shared (the caller bounded both ranges by
        // the VMs' RAM).
        for (m, gpa) in [(&mut *self, parent_gpa), (&mut *child, child_gpa)] {
            m.populate(gpa, size)
                .map_err(|_| MapError::OutOfRamFrames)?;
        }
        if self.pinned {
            return self.copy_into(child, parent_gpa, child_gpa, size, perms);
        }
        let mut shares = mem::SHARES.lock();
        let mut frames = mem::frames();
        self.table.copy_range_into(
            &mut child.table,
            &mut PhysTables,
            &mut TableAlloc(&mut frames),
            &mut shares,
            parent_gpa,
            child_gpa,
            size,
            perms,
            |frames, old| {
                if let Err(e) = frames.0.free_part(old, 1) {
                    log::error!("MAP_CHILD_MEM: frame {old} not returned: {e}");
                }
            },
        )
    }

    fn break_cow(&mut self, gpa: Gpa, stale: &mut Stale) -> Result<(), CowError> {
        self.make_page_writable(gpa, stale)
    }

    fn materialize(&mut self, gpa: Gpa) -> Result<bool, CowError> {
        self.own_leaf_table(gpa)
    }

    fn release(self: Box<Self>) {
        (*self).destroy();
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl GStageMemory {
    /// MAP_CHILD_MEM from pinned memory: the child gets a private copy with `perms`
    /// (both ranges backed and inside RAM: the caller checked).
    fn copy_into(
        &self,
        child: &mut GStageMemory,
        parent_gpa: Gpa,
        child_gpa: Gpa,
        size: u64,
        perms: Perms,
    ) -> Result<(), MapError> {
        for off in (0..size).step_by(PAGE_SIZE as usize) {
            let (from, to) = (
                Gpa::new(parent_gpa.raw() + off),
                Gpa::new(child_gpa.raw() + off),
            );
            let (src, _) = self
                .table
                .translate(&PhysTables, from)
                .ok_or(MapError::NotMapped(from))?;
            let (dst, _) = child
                .table
                .translate(&PhysTables, to)
                .ok_or(MapError::NotMapped(to))?;
            // SAFETY: both are RAM frames the hypervisor allocated, one this VM's and
            // one the (never run) child's own: distinct and page-sized.
            unsafe { diosix_riscv::physmem::copy(dst, src, PAGE_SIZE) };
            child.table.set_perms(&mut PhysTables, to, perms)?;
        }
        Ok(())
    }
}

/// Returns `n` contiguous guest RAM frames from `start`; a run that straddles two
/// allocations is refused as a whole and then returned page by page.
fn free_run(frames: &mut diosix_core::frames::HostFrames, start: Hpa, n: usize) {
    if frames.free_part(start, n).is_ok() {
        return;
    }
    for i in 0..n as u64 {
        let hpa = Hpa::new(start.raw() + i * PAGE_SIZE);
        if let Err(e) = frames.free_part(hpa, 1) {
            log::error!("guest RAM frame {hpa} not returned: {e}");
        }
    }
}
