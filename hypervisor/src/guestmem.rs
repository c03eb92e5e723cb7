//! A guest's RAM: host pages mapped into its own G-stage table. The one place a GPA
//! becomes an HPA for the hypervisor's own accesses (`chunks`, `read`, `write`), and
//! where guest RAM is allocated, forked (copy-on-write, see `cow`), shared into a child
//! (MAP_CHILD_MEM) and given back.
//!
//! This is the VM's isolation backend: nothing outside this file and `cow.rs` (its
//! copy-on-write half) sees the G-stage table. A hart switches to a VM through its
//! [`Activation`], so the PMP fallback (harts without H) plugs in here: its own RAM
//! allocation, translation (`diosix_core::gstage::PmpOffsetMap`) and activation.

use crate::mem::{self, PhysTables, TableAlloc};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::gstage::{AccessError, GStageTable, MapError, Perms};

/// What [`GuestMemory::new`] (and the VM build) says when it was cancelled.
pub const CANCELLED: &str = "cancelled";

/// Largest backing block tried when allocating guest RAM (2 MiB).
const MAX_BLOCK_PAGES: usize = 512;

/// A guest's RAM: host pages mapped into its G-stage table.
///
/// The table is the only record of which frames the guest owns: RAM is allocated in
/// blocks but released page by page, because after a copy-on-write FORK any page of a
/// block may be shared, replaced by a private copy, or still the VM's own.
pub struct GuestMemory {
    /// The G-stage table (read by `cow`, the other half of this backend).
    pub(crate) table: GStageTable,
}

/// What a hart loads to run a VM's vCPUs: the `hgatp` value selecting its G-stage
/// table and VMID.
#[derive(Clone, Copy, Debug)]
pub struct Activation {
    hgatp: usize,
}

impl Activation {
    /// Makes this VM's memory the only guest memory this hart's guest mode reaches,
    /// with every cached translation of earlier guests flushed.
    pub fn load(&self) {
        // SAFETY: hgatp comes from this VM's own table (`GuestMemory::activation`), so
        // the guest that runs next sees only its memory; both stages are flushed since
        // VMIDs are reused after a VM dies, and a vCPU may last have run here before
        // its VM's mappings changed.
        unsafe { diosix_riscv::csr::hgatp::write(self.hgatp) };
        diosix_riscv::fence::hfence_gvma_all();
        diosix_riscv::fence::hfence_vvma_all();
    }
}

impl GuestMemory {
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

    /// How harts switch to this memory for VMID `vmid`; `None` if the VMID does not fit
    /// the hardware's field.
    pub fn activation(&self, vmid: u16) -> Option<Activation> {
        let hgatp = self.table.hgatp(vmid)?;
        Some(Activation {
            hgatp: usize::try_from(hgatp).ok()?,
        })
    }

    /// MAP_CHILD_MEM: `child`'s `size` bytes at `child_gpa` become a copy-on-write copy
    /// of this memory's at `parent_gpa`, with `perms` for the child. The child has never
    /// run, so no hart holds a translation to the frames it stops mapping: they are
    /// freed at once. This memory's pages lose W; the caller flushes its harts.
    pub fn share_into(
        &mut self,
        child: &mut GuestMemory,
        parent_gpa: Gpa,
        child_gpa: Gpa,
        size: u64,
        perms: Perms,
    ) -> Result<(), MapError> {
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

    /// Host chunks backing the guest buffer `[gpa, gpa+len)`, checked page by page.
    pub fn chunks(&self, gpa: Gpa, len: u64, write: bool) -> Result<Vec<(Hpa, u64)>, AccessError> {
        self.table.guest_chunks(&PhysTables, gpa, len, write)
    }

    /// Copies `bytes` into guest memory at `gpa`.
    pub fn write(&self, gpa: Gpa, bytes: &[u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        for (hpa, n) in self.chunks(gpa, bytes.len() as u64, true)? {
            let n = n as usize;
            // SAFETY: the chunk is guest RAM this VM owns, freshly translated by its
            // G-stage table; `bytes` lives in hypervisor memory, so they cannot overlap.
            unsafe { diosix_riscv::physmem::copy_in(hpa, &bytes[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Copies guest memory at `gpa` into `out`.
    pub fn read(&self, gpa: Gpa, out: &mut [u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        for (hpa, n) in self.chunks(gpa, out.len() as u64, false)? {
            let n = n as usize;
            // SAFETY: as for write, in the other direction.
            unsafe { diosix_riscv::physmem::copy_out(hpa, &mut out[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Translates one GPA (the G-stage walk).
    pub fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        self.table.translate(&PhysTables, gpa)
    }

    /// Copy-on-write FORK: a new guest memory sharing every leaf table (so every
    /// frame) with this one, in time independent of RAM size (see
    /// `diosix_core::gstage` `shared`). The caller has every vCPU of this VM off its
    /// hart except its own; this hart's G-stage TLB is flushed here, the others flush
    /// when they next load one.
    pub fn fork(&mut self) -> Result<Self, String> {
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
