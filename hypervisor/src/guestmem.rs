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
use diosix_core::gstage::{AccessError, GStageTable, MapError, Perms};

/// What [`GStageMemory::new`] (and the VM build) says when it was cancelled.
pub const CANCELLED: &str = "cancelled";

/// Largest backing block tried when allocating guest RAM (2 MiB).
const MAX_BLOCK_PAGES: usize = 512;

/// A guest's RAM: host pages mapped into its G-stage table.
///
/// The table is the only record of which frames the guest owns: RAM is allocated in
/// blocks but released page by page, because after a copy-on-write FORK any page of a
/// block may be shared, replaced by a private copy, or still the VM's own.
pub struct GStageMemory {
    /// The G-stage table (read by `cow`, the other half of this backend).
    pub(crate) table: GStageTable,
}

impl GStageMemory {
    /// Allocates and maps zeroed RAM for `ram` (page-aligned). Checks `cancelled`
    /// before each block of at most 2 MiB, and gives everything back if it holds.
    pub fn new(ram: Range<Gpa>, cancelled: &dyn Fn() -> bool) -> Result<Self, String> {
        let table = GStageTable::new(&mut TableAlloc(&mut mem::frames()))
            .map_err(|e| format!("G-stage root table: {e}"))?;
        let mut this = Self { table };
        let mut remaining = (ram.len() / PAGE_SIZE) as usize;
        let mut gpa = ram.start();
        let mut block = MAX_BLOCK_PAGES;
        while remaining > 0 {
            if cancelled() {
                this.destroy();
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
                    drop(frames);
                    this.destroy();
                    return Err(format!(
                        "out of host RAM for {} MiB of guest RAM",
                        ram.len() >> 20
                    ));
                }
                block /= 2;
                continue;
            };
            let len = want as u64 * PAGE_SIZE;
            if let Err(e) = this.table.map_range(
                &mut PhysTables,
                &mut TableAlloc(&mut frames),
                gpa,
                hpa,
                len,
                Perms::RWX,
            ) {
                // Not in the table, so destroy() cannot find it.
                let _ = frames.free(hpa, want);
                drop(frames);
                this.destroy();
                return Err(format!("mapping {gpa}: {e}"));
            }
            gpa = Gpa::new(gpa.raw() + len);
            remaining -= want;
        }
        Ok(this)
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
        Ok(Self { table })
    }

    /// Returns every page (RAM and tables) to the host allocator, except frames and
    /// leaf tables other VMs still share (they lose one sharer instead).
    pub fn destroy(self) {
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
