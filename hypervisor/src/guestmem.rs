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
}

impl GStageMemory {
    /// Allocates and maps zeroed RAM for `ram` (page-aligned) now. Checks `cancelled`
    /// before each block of at most 2 MiB, and gives everything back if it holds.
    pub fn new(ram: Range<Gpa>, cancelled: &dyn Fn() -> bool) -> Result<Self, String> {
        let mut this = Self::empty()?;
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
        let mut this = Self::empty()?;
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

    /// An empty table (its root only).
    fn empty() -> Result<Self, String> {
        let table = GStageTable::new(&mut TableAlloc(&mut mem::frames()))
            .map_err(|e| format!("G-stage root table: {e}"))?;
        Ok(Self {
            table,
            unbacked_pages: 0,
        })
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
            self.table
                .fork_shared(&mut PhysTables, &mut TableAlloc(&mut frames), &mut shares)
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
        })
    }

    /// Returns every page (RAM and tables) to the host allocator, except frames and
    /// leaf tables other VMs still share (they lose one sharer instead).
    pub fn destroy(self) {
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
    fn chunks(&self, gpa: Gpa, len: u64, write: bool) -> Result<Vec<(Hpa, u64)>, AccessError> {
        self.table.guest_chunks(&PhysTables, gpa, len, write)
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
