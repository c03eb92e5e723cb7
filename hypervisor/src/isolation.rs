//! The isolation backend a VM holds: how its guest physical memory is kept apart from
//! everything else and translated, whatever the hardware mechanism.
//!
//! [`Vm::mem`](crate::vm::Vm) is a `Box<dyn Isolation>`: the VM tree, the SBI, the
//! scheduler and the copy-on-write fault path call this trait and never learn which
//! backend runs. Today the one backend is the G-stage table of the H extension
//! ([`crate::guestmem::GStageMemory`]); the PMP fallback for harts without H plugs in
//! here as a second implementation (contiguous RAM, translation by a bounds-checked
//! offset, `diosix_core::gstage::PmpOffsetMap`, and PMP entries as its [`Activation`]),
//! answering [`CowError::NotCow`] / an error from [`Isolation::fork`] for what it
//! cannot do without translation.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::sync::atomic::{AtomicU64, Ordering};
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::gstage::{AccessError, MapError, Perms};
use spin::Mutex;

/// What a hart loads to run a VM's vCPUs: the `hgatp` value selecting its G-stage
/// table and VMID, or (no H extension) the PMP entries bounding its RAM and MMIO.
#[derive(Clone, Debug)]
pub enum Activation {
    /// A G-stage table and VMID.
    GStage {
        /// The `hgatp` value.
        hgatp: usize,
    },
    /// PMP entries, shared with the VM's backend, which changes them as MMIO is
    /// mapped and unmapped.
    Pmp(Arc<PmpEntries>),
}

/// A VM's PMP entries (`(pmpcfg byte, pmpaddr)`, highest priority first) and a
/// generation that counts their changes, so a hart running one of its vCPUs notices
/// a change at its next trap ([`Activation::refresh`]).
#[derive(Debug)]
pub struct PmpEntries {
    entries: Mutex<Vec<(u8, u64)>>,
    generation: AtomicU64,
    /// Entries the harts implement (all of them are written on each load).
    implemented: usize,
}

impl PmpEntries {
    /// `entries` for harts with `implemented` PMP entries.
    pub fn new(entries: Vec<(u8, u64)>, implemented: usize) -> Self {
        Self {
            entries: Mutex::new(entries),
            generation: AtomicU64::new(1),
            implemented,
        }
    }

    /// Replaces the entries; every hart running the VM reloads them at its next trap
    /// (the caller makes sure that happens before it relies on the change: a
    /// shootdown).
    pub fn set(&self, entries: Vec<(u8, u64)>) {
        let mut e = self.entries.lock();
        *e = entries;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Writes them into this hart's PMP; returns the generation loaded.
    fn load(&self) -> u64 {
        let e = self.entries.lock();
        // SAFETY: the entries grant exactly this VM's RAM and the MMIO it holds
        // (`crate::pmpmem` plans them); the hypervisor's own memory is in no entry, so
        // S/U-mode cannot reach it. M-mode is unaffected: no entry is locked.
        unsafe { diosix_riscv::pmp::load(&e, self.implemented) };
        // PMP checks may be cached with translations.
        diosix_riscv::fence::sfence_vma_all();
        self.generation.load(Ordering::Acquire)
    }
}

impl Activation {
    /// The activation selecting a G-stage table through `hgatp`.
    #[inline]
    pub const fn gstage(hgatp: usize) -> Self {
        Self::GStage { hgatp }
    }

    /// Makes this VM's memory the only guest memory this hart's guest mode reaches,
    /// with every cached translation of earlier guests flushed. Returns what
    /// [`refresh`](Self::refresh) compares with later.
    #[inline]
    pub fn load(&self) -> u64 {
        match self {
            Self::GStage { hgatp } => {
                // SAFETY: hgatp comes from this VM's own backend
                // (`Isolation::activation`), so the guest that runs next sees only its
                // memory; both stages are flushed since VMIDs are reused after a VM
                // dies, and a vCPU may last have run here before its VM's mappings
                // changed.
                unsafe { diosix_riscv::csr::hgatp::write(*hgatp) };
                diosix_riscv::fence::hfence_gvma_all();
                diosix_riscv::fence::hfence_vvma_all();
                0
            }
            Self::Pmp(p) => p.load(),
        }
    }

    /// Before returning to a vCPU of this VM that loaded generation `loaded`: reloads
    /// the PMP entries if they changed since (G-stage changes are flushed by their
    /// writers instead).
    #[inline]
    pub fn refresh(&self, loaded: &mut u64) {
        if let Self::Pmp(p) = self {
            if p.generation.load(Ordering::Acquire) != *loaded {
                *loaded = p.load();
            }
        }
    }
}

/// Why a copy-on-write page could not be made writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CowError {
    /// The page is not copy-on-write (unmapped, outside RAM, or not readable).
    NotCow,
    /// No host frame for the private copy.
    OutOfMemory,
}

/// What a writer changed and must finish with [`crate::cow::finish`] before its vCPU
/// resumes: a local TLB flush, and the old frames it stopped mapping (released after a
/// shootdown).
#[derive(Default)]
pub struct Stale {
    pub(crate) flush_local: bool,
    /// W was taken away from pages other harts may still write through stale entries.
    pub(crate) shootdown: bool,
    pub(crate) frames: Vec<Hpa>,
}

impl Stale {
    /// Nothing changed yet.
    #[inline]
    pub const fn new() -> Self {
        Self {
            flush_local: false,
            shootdown: false,
            frames: Vec::new(),
        }
    }

    /// W was cleared on some of the VM's pages: every hart running it must flush
    /// before the write that needed that is over.
    #[inline]
    pub fn write_protected(&mut self) {
        self.flush_local = true;
        self.shootdown = true;
    }

    /// This hart's cached translations of the VM must go.
    #[inline]
    pub fn flush_local(&mut self) {
        self.flush_local = true;
    }

    /// `old` was replaced by a private copy: its share is released after the shootdown.
    #[inline]
    pub fn replaced(&mut self, old: Hpa) {
        self.frames.push(old);
    }
}

impl Drop for Stale {
    fn drop(&mut self) {
        if !self.frames.is_empty() {
            // A share never released keeps its frame allocated for ever: a bug, but not
            // one worth stopping the host for.
            log::error!(
                "copy-on-write: {} replaced frame(s) never released",
                self.frames.len()
            );
        }
    }
}

/// A VM's memory isolation (see the module documentation).
pub trait Isolation: Send {
    /// How harts switch to this memory for VMID `vmid`; `None` if the backend cannot
    /// use that VMID.
    fn activation(&self, vmid: u16) -> Option<Activation>;

    /// Translates one GPA: the HPA behind it and the guest's permissions.
    fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)>;

    /// Host chunks backing the guest buffer `[gpa, gpa+len)`, checked page by page
    /// against the guest's own permissions (W when `write`).
    fn chunks(
        &self,
        gpa: Gpa,
        len: u64,
        write: bool,
    ) -> Result<diosix_core::gstage::Chunks, AccessError>;

    /// Copies `bytes` into guest memory at `gpa` (every page must be guest-writable).
    fn write(&self, gpa: Gpa, bytes: &[u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        for (hpa, n) in self.chunks(gpa, bytes.len() as u64, true)? {
            let n = n as usize;
            // SAFETY: the chunk is guest RAM this VM owns, freshly translated by its
            // backend; `bytes` lives in hypervisor memory, so they cannot overlap.
            unsafe { diosix_riscv::physmem::copy_in(hpa, &bytes[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Copies guest memory at `gpa` into `out`.
    fn read(&self, gpa: Gpa, out: &mut [u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        for (hpa, n) in self.chunks(gpa, out.len() as u64, false)? {
            let n = n as usize;
            // SAFETY: as for write, in the other direction.
            unsafe { diosix_riscv::physmem::copy_out(hpa, &mut out[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Backs every region of `[gpa, gpa+len)` still lazily backed (guest RAM that
    /// costs nothing until touched) with zeroed frames, which its VM was charged for
    /// when it was made. Returns whether anything changed (the caller then flushes this
    /// hart's TLB, which may hold the old invalid entry). Callers bound `len` (a guest
    /// buffer clipped to the VM's RAM, or one copy step): the walk is per 2 MiB.
    fn populate(&mut self, gpa: Gpa, len: u64) -> Result<bool, CowError> {
        let _ = (gpa, len);
        Ok(false)
    }

    /// MAP_HOST_MMIO: maps host device registers `[hpa, hpa+len)` (page-aligned,
    /// checked by the caller to be a device the VM holds) at `gpa`, read/write, never
    /// executable. Refused over RAM, within a 2 MiB region RAM touches, or over another
    /// mapping.
    fn map_mmio(&mut self, gpa: Gpa, hpa: Hpa, len: u64) -> Result<(), MapError>;

    /// Removes the host MMIO mapped at `gpa` by [`map_mmio`](Self::map_mmio); false if
    /// there is none. The caller flushes the VM's harts.
    fn unmap_mmio(&mut self, gpa: Gpa) -> bool;

    /// The GPA ranges where host MMIO is mapped.
    fn mmio_ranges(&self) -> Vec<Range<Gpa>> {
        Vec::new()
    }

    /// Whether this memory is pinned at GPA = HPA (a VM driving DMA-capable devices).
    fn is_pinned(&self) -> bool {
        false
    }

    /// FORK: a copy of this memory for a clone. The caller has every vCPU of this VM
    /// off its hart except its own.
    fn fork(&mut self) -> Result<Box<dyn Isolation>, String>;

    /// MAP_CHILD_MEM: `child`'s `size` bytes at `child_gpa` become a copy of this
    /// memory's at `parent_gpa`, with `perms` for the child (which has never run). This
    /// memory's pages may lose W; the caller flushes its harts.
    fn share_into(
        &mut self,
        child: &mut dyn Isolation,
        parent_gpa: Gpa,
        child_gpa: Gpa,
        size: u64,
        perms: Perms,
    ) -> Result<(), MapError>;

    /// Makes the page containing `gpa` writable for its guest if it is copy-on-write,
    /// recording in `stale` what the caller must flush and release.
    fn break_cow(&mut self, gpa: Gpa, stale: &mut Stale) -> Result<(), CowError>;

    /// A guest's first access to a range it still shares after a FORK: gives it its own
    /// translation structures there. Returns whether anything changed (the caller then
    /// flushes this hart's TLB).
    fn materialize(&mut self, gpa: Gpa) -> Result<bool, CowError>;

    /// [`break_cow`](Self::break_cow) for every page of `[gpa, gpa+len)` inside `ram`
    /// that lacks W (pages outside it are left to the access check that follows).
    fn break_cow_range(
        &mut self,
        ram: Range<Gpa>,
        gpa: Gpa,
        len: u64,
        stale: &mut Stale,
    ) -> Result<(), CowError> {
        // Only the part inside RAM can be copy-on-write: the walk is bounded by the
        // VM's RAM however large or wrapping `len` is.
        let Some(end) = gpa.raw().checked_add(len) else {
            return Ok(());
        };
        let first = gpa.align_down(PAGE_SIZE).raw().max(ram.start().raw());
        let last = end.min(ram.end().raw());
        for page in (first..last).step_by(PAGE_SIZE as usize) {
            let at = Gpa::new(page);
            if self
                .translate(at)
                .is_some_and(|(_, p)| !p.contains(Perms::W))
            {
                self.break_cow(at, stale)?;
            }
        }
        Ok(())
    }

    /// Gives every page (RAM and tables) back to the host, except what other VMs
    /// still share.
    fn release(self: Box<Self>);

    /// For [`share_into`](Self::share_into) between two memories of one backend.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
