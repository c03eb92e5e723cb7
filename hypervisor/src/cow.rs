//! Copy-on-write guest RAM, the hypervisor's half (the rules themselves, tested on the
//! host, are in `diosix_core::gstage`'s `shared` module): FORK shares the parent's leaf
//! tables with the child, a VM's first access to a shared 2 MiB range gives it its own
//! leaf table with every page read-only ([`access_fault`]), and the first write to such
//! a page, by the guest (a store/AMO guest-page fault) or by the hypervisor on its
//! behalf (an SBI call filling a guest buffer), gives the writer a private copy or, if
//! no one else maps the frame any more, simply gives W back.
//!
//! Inside a VM's RAM range a leaf without W means "copy-on-write" (unless marked
//! read-only for good by MAP_CHILD_MEM): every RAM leaf is created RWX, and only
//! sharing clears W.
//!
//! # When a shared frame may be let go
//! Once VM A has its own copy of a shared frame F, another hart running one of A's
//! vCPUs may still hold a stale read-only TLB entry for F. Two things must not happen
//! while it does: A's writer must not resume (A's other vCPU would read F and miss A's
//! writes to the copy), and F's sharer count must not drop (the last other sharer would
//! then get F writable, and A would read that VM's data). So the writer, holding no
//! lock, asks every other hart running one of A's vCPUs for an HFENCE.GVMA and waits
//! for them all ([`shootdown`]), and only then releases its share of F ([`Stale`]).
//! Until then F keeps A's share, so a concurrent copy by another sharer at worst makes
//! one copy too many; it never frees or unshares F too early.
//!
//! Making a private frame writable again needs no shootdown: other harts can only hold
//! read-only entries for it, which at worst cause a spurious fault that finds W set.
//!
//! Lock order: a VM's memory, then [`mem::SHARES`], then the frame allocator.

use crate::guestmem::GStageMemory;
use crate::isolation::{CowError, Isolation, Stale};
use crate::mem;
use crate::mem::TableAlloc;
use crate::vm::Vm;
use core::sync::atomic::{fence, Ordering};
use diosix_core::addr::{Gpa, Hpa, PAGE_SIZE};
use diosix_core::gstage::{AccessError, MapError, Perms, WriteOutcome};

impl GStageMemory {
    /// Makes the page containing `gpa` writable if it is copy-on-write: W back on a
    /// frame no one else maps, a private copy of a shared one. A page already writable
    /// (another hart got there first) only needs the local flush.
    pub(crate) fn make_page_writable(
        &mut self,
        gpa: Gpa,
        stale: &mut Stale,
    ) -> Result<(), CowError> {
        stale.flush_local();
        let mut shares = mem::SHARES.lock();
        let mut frames = mem::frames();
        let out = self.table.make_writable(
            &mut mem::PhysTables,
            &mut TableAlloc(&mut frames),
            &mut shares,
            gpa,
            |frames, old| {
                // FORK charged every sharer a frame per page, so this only fails if the
                // host has been overcommitted some other way.
                let copy = frames.0.alloc(1, 1)?;
                // SAFETY: `copy` was just allocated to us; `old` is a frame this VM maps
                // read-only (so no one writes it while it is shared); distinct frames
                // do not overlap.
                unsafe { diosix_riscv::physmem::copy(copy, old, PAGE_SIZE) };
                Some(copy)
            },
        );
        match out {
            Ok(WriteOutcome::Copied { old }) => {
                stale.replaced(old);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(MapError::OutOfRamFrames | MapError::OutOfTableFrames) => {
                Err(CowError::OutOfMemory)
            }
            Err(_) => Err(CowError::NotCow),
        }
    }

    /// Gives this VM its own leaf table for the 2 MiB around `gpa` if it still shares
    /// it after a FORK (the guest touched that range for the first time). Returns
    /// whether it did; the caller flushes this hart's G-stage TLB.
    pub(crate) fn own_leaf_table(&mut self, gpa: Gpa) -> Result<bool, CowError> {
        let mut shares = mem::SHARES.lock();
        let mut frames = mem::frames();
        self.table
            .materialize(
                &mut mem::PhysTables,
                &mut TableAlloc(&mut frames),
                &mut shares,
                gpa,
            )
            .map_err(|_| CowError::OutOfMemory)
    }
}

/// Ends a write that changed mappings of `vm` on this hart (`my_slot`): flushes the
/// local G-stage TLB and, if frames were replaced, waits for every other hart running
/// one of `vm`'s vCPUs to flush too, then releases the replaced frames' shares. Must
/// be called with no lock held (see the module documentation).
#[inline]
pub fn finish(vm: &Vm, my_slot: usize, stale: Stale) {
    // Most calls change no mapping: nothing to do, and no call made.
    if stale.flush_local || stale.shootdown || !stale.frames.is_empty() {
        settle(vm, my_slot, stale);
    }
}

/// [`finish`] when the call changed mappings.
fn settle(vm: &Vm, my_slot: usize, mut stale: Stale) {
    if stale.flush_local {
        crate::guestmode::mode().flush_guest_memory();
    }
    if stale.frames.is_empty() && !stale.shootdown {
        return;
    }
    shootdown(vm, my_slot);
    let frames = core::mem::take(&mut stale.frames);
    let mut shares = mem::SHARES.lock();
    let mut host = mem::frames();
    for f in frames {
        if !shares.unshare(f.page_number()) {
            // Every other sharer copied it away meanwhile: it was ours alone.
            if let Err(e) = host.free_part(f, 1) {
                log::error!("copy-on-write: freeing {f}: {e}");
            }
        }
    }
}

/// Makes every hart other than `my_slot` that runs one of `vm`'s vCPUs execute
/// HFENCE.GVMA, and waits until each has (serving requests aimed at this hart
/// meanwhile, so harts shooting each other down cannot deadlock). A vCPU that is not
/// running flushes when it is next loaded.
fn shootdown(vm: &Vm, my_slot: usize) {
    // The new mappings are stored; a hart that reads them as not running yet stores
    // `running_on` after this and flushes in `Vcpu::load` after that.
    fence(Ordering::SeqCst);
    crate::hart::fence_other_harts(
        my_slot,
        vm.vcpus.iter().map(|v| v.running_on.load(Ordering::SeqCst)),
    );
}

/// A guest-page fault by `vm` at `gpa` on this hart for an access that needs `need`:
/// resolves it if the page is copy-on-write (the guest then retries the access). A
/// store (`need` has W) makes the page writable; a load or fetch only needs the leaf
/// table to be the VM's own. A fault on a page the VM may already access that way
/// (another hart resolved it first) resolves too.
pub fn access_fault(vm: &Vm, gpa: Gpa, need: Perms, my_slot: usize) -> Result<(), CowError> {
    let write = need.contains(Perms::W);
    if !vm.ram.contains(gpa) {
        return Err(CowError::NotCow);
    }
    let mut stale = Stale::new();
    let r = match vm.mem.lock().as_mut() {
        Some(m) => match m.populate(gpa, 1) {
            // The first touch of RAM that was never backed: backed now, zeroed.
            Ok(true) => {
                stale.flush_local();
                Ok(())
            }
            Ok(false) if write => m.break_cow(gpa, &mut stale),
            Ok(false) => m.materialize(gpa).and_then(|_| {
                stale.flush_local();
                // Readable now, or this is no copy-on-write fault: a guest that faults
                // again there must not loop for ever.
                m.translate(gpa)
                    .filter(|(_, p)| p.contains(need))
                    .map(|_| ())
                    .ok_or(CowError::NotCow)
            }),
            Err(e) => Err(e),
        },
        None => Err(CowError::NotCow),
    };
    finish(vm, my_slot, stale);
    r
}

impl Vm {
    /// Copies `bytes` into guest memory at `gpa`, first giving the VM its own copy of
    /// any copy-on-write page in the way. The caller must pass `stale` to
    /// [`finish`] before this VM's vCPU on this hart resumes.
    pub fn write(&self, gpa: Gpa, bytes: &[u8], stale: &mut Stale) -> Result<(), AccessError> {
        // Usually every page is backed and writable already: the write checks all of
        // them before it copies anything, so trying first is safe, and it changes no
        // mapping (nothing for `stale`).
        if let Some(m) = self.mem.lock().as_ref() {
            if m.write(gpa, bytes).is_ok() {
                return Ok(());
            }
        }
        self.make_writable(gpa, bytes.len() as u64, stale)?;
        // Backed by make_writable (the lock is dropped between, but the VM's memory
        // only ever becomes more backed).
        match self.mem.lock().as_ref() {
            Some(m) => m.write(gpa, bytes),
            None => Err(AccessError::NotMapped(gpa)),
        }
    }

    /// Copies `len` bytes of this VM's memory at `gpa` into `dst`'s at `dst_gpa`,
    /// frame to frame with no buffer between, writing as `dst`'s own store would
    /// (its copy-on-write pages in the way get their own copies first: the caller
    /// passes `stale` to [`finish`] for `dst`). Both VMs' memory locks are held for
    /// the copy, so no frame can be replaced or freed under it; the only callers hold
    /// the tree's lock, under which no other hart takes two memory locks, so the
    /// order (this VM, then `dst`) cannot deadlock. `len` is bounded by the caller
    /// (CHILD_MEM's cap).
    pub fn copy_into(
        &self,
        gpa: Gpa,
        dst: &Vm,
        dst_gpa: Gpa,
        len: u64,
        stale: &mut Stale,
    ) -> Result<(), AccessError> {
        if core::ptr::eq(self, dst) {
            // Not a CHILD_MEM case (a VM is never its own child); refused rather than
            // locking one lock twice.
            return Err(AccessError::NotMapped(dst_gpa));
        }
        // Usually both sides are backed and the destination writable already: tried
        // first, translating both before copying anything, so a failure changes
        // nothing (and no mapping changes for `stale`).
        if self.copy_mapped(gpa, dst, dst_gpa, len, false).is_ok() {
            return Ok(());
        }
        dst.make_writable(dst_gpa, len, stale)?;
        self.copy_mapped(gpa, dst, dst_gpa, len, true)
    }

    /// [`Vm::copy_into`] of memory mapped as it must be (the source backed, if
    /// `populate` after backing it here; the destination writable).
    fn copy_mapped(
        &self,
        gpa: Gpa,
        dst: &Vm,
        dst_gpa: Gpa,
        len: u64,
        populate: bool,
    ) -> Result<(), AccessError> {
        let mut src_guard = self.mem.lock();
        let src = src_guard.as_mut().ok_or(AccessError::NotMapped(gpa))?;
        if populate {
            self.populate_in_ram(src.as_mut(), gpa, len)?;
        }
        let dst_guard = dst.mem.lock();
        let dst_mem = dst_guard.as_ref().ok_or(AccessError::NotMapped(dst_gpa))?;
        // Within one page of RAM on each side (an IPC message, a ring index): one
        // translation each.
        if let (Some(fh), Some(th)) = (
            self.page_in_ram(src.as_ref(), gpa, len, Perms::R),
            dst.page_in_ram(dst_mem.as_ref(), dst_gpa, len, Perms::R | Perms::W),
        ) {
            // SAFETY: as below (both translated under their VMs' memory locks, held
            // until the copy ends).
            unsafe { diosix_riscv::physmem::copy(th, fh, len) };
            return Ok(());
        }
        let from = src.chunks(gpa, len, false)?;
        let to = dst_mem.chunks(dst_gpa, len, true)?;
        let (mut fi, mut ti) = (from.iter().copied(), to.iter().copied());
        let (mut f, mut t) = (fi.next(), ti.next());
        while let (Some((fh, fl)), Some((th, tl))) = (f, t) {
            let n = fl.min(tl);
            // SAFETY: both are guest RAM frames of their VMs, just translated under
            // their memory locks, which are held until the copy ends (no frame can be
            // replaced or freed meanwhile); two different VMs' writable and readable
            // frames never overlap (a frame shared copy-on-write is never writable).
            unsafe { diosix_riscv::physmem::copy(th, fh, n) };
            f = if n == fl {
                fi.next()
            } else {
                Some((
                    fh.checked_add(n).ok_or(AccessError::NotMapped(gpa))?,
                    fl - n,
                ))
            };
            t = if n == tl {
                ti.next()
            } else {
                Some((
                    th.checked_add(n).ok_or(AccessError::NotMapped(dst_gpa))?,
                    tl - n,
                ))
            };
        }
        Ok(())
    }

    /// The HPA of `[gpa, gpa + len)` if it lies within one page of this VM's RAM that
    /// the guest may access with `need`; `None` otherwise (the page-by-page path
    /// then decides, and names the error).
    fn page_in_ram(&self, m: &dyn Isolation, gpa: Gpa, len: u64, need: Perms) -> Option<Hpa> {
        if len == 0 || gpa.page_offset() + len > PAGE_SIZE || !self.ram.contains_span(gpa, len) {
            return None;
        }
        m.translate(gpa)
            .filter(|(_, perms)| perms.contains(need))
            .map(|(hpa, _)| hpa)
    }

    /// Breaks copy-on-write sharing for `[gpa, gpa+len)` and checks the guest may
    /// write all of it (what a later [`Vm::write`] there needs).
    pub fn make_writable(&self, gpa: Gpa, len: u64, stale: &mut Stale) -> Result<(), AccessError> {
        let mut guard = self.mem.lock();
        let m = guard.as_mut().ok_or(AccessError::NotMapped(gpa))?;
        self.populate_in_ram(m.as_mut(), gpa, len)?;
        m.break_cow_range(self.ram, gpa, len, stale)
            .map_err(|_| AccessError::NoPermission(gpa.align_down(PAGE_SIZE)))?;
        m.chunks(gpa, len, true).map(|_| ())
    }
}
