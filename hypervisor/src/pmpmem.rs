//! The PMP isolation backend, for harts without the H extension. A guest's RAM is one
//! contiguous block of host RAM that the guest sees at the same addresses (GPA = HPA:
//! with no second translation stage, the guest's own page tables hold host physical
//! addresses). Guest-physical accesses by the hypervisor are bounds-checked against
//! that block, and PMP entries give S/U-mode exactly the block and the MMIO windows
//! the VM holds: the hypervisor, every other VM and every other device are in no entry,
//! so a guest access to them is an access fault.
//!
//! What needs a translation stage cannot be done here. A FORK clone would have to run
//! at its parent's physical addresses, so [`Isolation::fork`] refuses it. A child's
//! copy of a parent's pages (MAP_CHILD_MEM) is a private copy at its own addresses, with
//! no per-page permissions (PMP grants the whole block read, write and execute).

use crate::isolation::{Activation, CowError, Isolation, PmpEntries, Stale};
use crate::mem;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::gstage::{AccessError, MapError, Perms, LAZY_REGION};
use diosix_core::pmp::{GrantRegion, PmpHart, PmpPlan};

/// Most host MMIO windows one VM may map (PMP entries run out long before).
const MAX_MMIO_RANGES: usize = 64;

/// A guest's RAM as one contiguous host block, bounded by PMP.
pub struct PmpMemory {
    /// The block: its GPAs are its HPAs.
    ram: Range<Gpa>,
    /// Host MMIO the VM holds, each at GPA = HPA.
    mmio: Vec<Range<Hpa>>,
    /// What harts load to run the VM (shared with its activation).
    entries: Arc<PmpEntries>,
    /// The harts' PMP.
    hart: PmpHart,
}

impl PmpMemory {
    /// `bytes` (a whole number of 2 MiB) of zeroed host RAM at one place, which the
    /// guest will see at the same addresses.
    pub fn new(bytes: u64) -> Result<Self, String> {
        let facts = crate::platform::pmp_facts().ok_or("no PMP on this machine")?;
        let hart = PmpHart {
            entries: u8::try_from(facts.entries).unwrap_or(u8::MAX),
            granularity_log2: facts.granularity_log2,
        };
        let pages = usize::try_from(bytes / PAGE_SIZE).map_err(|_| String::from("too large"))?;
        if pages == 0 || !bytes.is_multiple_of(LAZY_REGION) {
            return Err(format!(
                "{bytes} bytes is not a whole number of 2 MiB regions"
            ));
        }
        let region_pages = (LAZY_REGION / PAGE_SIZE) as usize;
        let hpa = mem::alloc_zeroed(&mut mem::frames(), pages, region_pages)
            .ok_or_else(|| format!("no contiguous {} MiB of host RAM", bytes >> 20))?;
        let give_back = |e: String| {
            if let Err(f) = mem::frames().free(hpa, pages) {
                log::error!("PMP RAM at {hpa}: not returned: {f}");
            }
            e
        };
        let ram = Range::new(Gpa::new(hpa.raw()), bytes)
            .ok_or_else(|| give_back(String::from("RAM range wraps")))?;
        let entries = plan(ram, &[], hart).map_err(give_back)?;
        Ok(Self {
            ram,
            mmio: Vec::new(),
            entries: Arc::new(PmpEntries::new(entries, facts.entries)),
            hart,
        })
    }

    /// The guest's RAM (its GPAs are its HPAs).
    pub fn ram(&self) -> Range<Gpa> {
        self.ram
    }

    /// The host block behind the RAM.
    fn host_ram(&self) -> Range<Hpa> {
        Range::new(Hpa::new(self.ram.start().raw()), self.ram.len())
            .expect("RAM was a valid range when made")
    }

    /// Plans the entries for the RAM and `mmio` and installs them.
    fn replan(&self, mmio: &[Range<Hpa>]) -> Result<(), MapError> {
        let entries = plan(self.ram, mmio, self.hart).map_err(|e| {
            log::warn!("PMP: {e}");
            MapError::OutOfTableFrames
        })?;
        self.entries.set(entries);
        Ok(())
    }
}

/// PMP entries granting `ram` (read, write, execute) and each of `mmio` (read, write).
fn plan(ram: Range<Gpa>, mmio: &[Range<Hpa>], hart: PmpHart) -> Result<Vec<(u8, u64)>, String> {
    let ram = Range::new(Hpa::new(ram.start().raw()), ram.len()).ok_or("RAM range wraps")?;
    let mut regions = vec![GrantRegion {
        range: ram,
        perms: Perms::RWX,
    }];
    regions.extend(mmio.iter().map(|&range| GrantRegion {
        range,
        perms: Perms::R | Perms::W,
    }));
    PmpPlan::new(&regions, hart, 0)
        .map(|p| p.entries().iter().map(|e| (e.cfg, e.addr)).collect())
        .map_err(|e| format!("{e:?}"))
}

impl Isolation for PmpMemory {
    fn activation(&self, _vmid: u16) -> Option<Activation> {
        Some(Activation::Pmp(self.entries.clone()))
    }

    fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        self.ram
            .contains(gpa)
            .then(|| (Hpa::new(gpa.raw()), Perms::RWX))
    }

    fn chunks(
        &self,
        gpa: Gpa,
        len: u64,
        _write: bool,
    ) -> Result<diosix_core::gstage::Chunks, AccessError> {
        let end = gpa.checked_add(len).ok_or(AccessError::Overflow)?;
        if len == 0 {
            return Ok(diosix_core::gstage::Chunks::new());
        }
        // Only RAM is ever a buffer: the device windows are not (as under G-stage).
        if !self.ram.contains(gpa) {
            return Err(AccessError::NotMapped(gpa));
        }
        if end.raw() > self.ram.end().raw() {
            return Err(AccessError::NotMapped(self.ram.end()));
        }
        Ok(smallvec::smallvec![(Hpa::new(gpa.raw()), len)])
    }

    fn map_mmio(&mut self, gpa: Gpa, hpa: Hpa, len: u64) -> Result<(), MapError> {
        // Without a translation stage a device is reachable only at its own address.
        if gpa.raw() != hpa.raw() {
            return Err(MapError::GpaOutOfRange);
        }
        let r = Range::new(hpa, len).ok_or(MapError::Overflow)?;
        if self.host_ram().overlaps(&r) {
            return Err(MapError::AlreadyMapped(gpa));
        }
        if self.mmio.iter().any(|m| m.overlaps(&r)) {
            return Err(MapError::AlreadyMapped(gpa));
        }
        if self.mmio.len() >= MAX_MMIO_RANGES {
            return Err(MapError::OutOfTableFrames);
        }
        let mut wanted = self.mmio.clone();
        wanted.push(r);
        self.replan(&wanted)?;
        self.mmio = wanted;
        Ok(())
    }

    fn unmap_mmio(&mut self, gpa: Gpa) -> bool {
        let Some(i) = self.mmio.iter().position(|m| m.start().raw() == gpa.raw()) else {
            return false;
        };
        let mut left = self.mmio.clone();
        left.remove(i);
        // Fewer regions always fit where more did.
        if self.replan(&left).is_err() {
            return false;
        }
        self.mmio = left;
        true
    }

    fn mmio_ranges(&self) -> Vec<Range<Gpa>> {
        self.mmio
            .iter()
            .filter_map(|r| Range::new(Gpa::new(r.start().raw()), r.len()))
            .collect()
    }

    fn is_pinned(&self) -> bool {
        true
    }

    fn fork(&mut self) -> Result<Box<dyn Isolation>, String> {
        Err(String::from(
            "FORK needs a translation stage (the H extension): a clone would have to run at its parent's physical addresses",
        ))
    }

    fn share_into(
        &mut self,
        child: &mut dyn Isolation,
        parent_gpa: Gpa,
        child_gpa: Gpa,
        size: u64,
        _perms: Perms,
    ) -> Result<(), MapError> {
        let child = child
            .as_any_mut()
            .downcast_mut::<PmpMemory>()
            .ok_or(MapError::BadPerms)?;
        let (from, to) = (
            self.chunks(parent_gpa, size, false)
                .map_err(|_| MapError::NotMapped(parent_gpa))?,
            child
                .chunks(child_gpa, size, true)
                .map_err(|_| MapError::NotMapped(child_gpa))?,
        );
        if let (Some(&(src, _)), Some(&(dst, _))) = (from.first(), to.first()) {
            // SAFETY: both are RAM blocks the hypervisor allocated, this VM's and the
            // (never run) child's own, distinct, and `size` bytes long from here (the
            // chunks were bounds-checked).
            unsafe { diosix_riscv::physmem::copy(dst, src, size) };
        }
        Ok(())
    }

    fn break_cow(&mut self, _gpa: Gpa, _stale: &mut Stale) -> Result<(), CowError> {
        Err(CowError::NotCow)
    }

    fn materialize(&mut self, _gpa: Gpa) -> Result<bool, CowError> {
        Ok(false)
    }

    fn release(self: Box<Self>) {
        let hpa = Hpa::new(self.ram.start().raw());
        let pages = (self.ram.len() / PAGE_SIZE) as usize;
        // The entries may outlive this memory in a VM's activation: grant nothing.
        self.entries.set(Vec::new());
        if let Err(e) = mem::frames().free(hpa, pages) {
            log::error!("PMP RAM at {hpa}: not returned: {e}");
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
