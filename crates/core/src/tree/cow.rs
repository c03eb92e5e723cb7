//! Copy-on-write bookkeeping for FORK: which host frames back which guest pages, and how
//! many VMs share each frame.
//!
//! The rule that makes CoW safe is in the tree, not here: FORK charges the child a full
//! copy of the parent's RAM up front. This ledger shows why that is enough. Every VM maps
//! each of its RAM pages to exactly one frame, so the number of distinct frames in use is
//! never more than the sum of the VMs' RAM pages, which is what they were charged. A
//! write fault on a shared frame therefore always finds a frame to copy into (the host's
//! pool holds at least what was charged), and a fault on a frame no one else shares needs
//! no new frame at all.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{SbiError, VmId};

/// A host frame number (HPA >> 12), opaque here.
pub type FrameId = u64;

/// What the host must do to resolve a write fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CowAction {
    /// The frame is now the VM's alone: make the existing mapping writable.
    MakeWritable(FrameId),
    /// Copy `from` into the newly allocated `to` and map `to` writable.
    Copy {
        /// The shared frame (its share count has been decremented).
        from: FrameId,
        /// The VM's new private frame.
        to: FrameId,
    },
}

/// Frame sharing across VMs.
#[derive(Clone, Debug, Default)]
pub struct CowLedger {
    shares: BTreeMap<FrameId, u32>,
    pages: BTreeMap<VmId, Vec<FrameId>>,
}

impl CowLedger {
    /// Records a VM built from fresh frames (the Root VM, a spawned child), page `i`
    /// backed by `frames[i]`. `InvalidParam` if the VM is already known or a frame is
    /// already in use.
    pub fn add_vm(&mut self, vm: VmId, frames: Vec<FrameId>) -> Result<(), SbiError> {
        if self.pages.contains_key(&vm) || frames.iter().any(|f| self.shares.contains_key(f)) {
            return Err(SbiError::InvalidParam);
        }
        let mut seen = BTreeMap::new();
        for &f in &frames {
            if seen.insert(f, ()).is_some() {
                return Err(SbiError::InvalidParam);
            }
        }
        for &f in &frames {
            self.shares.insert(f, 1);
        }
        self.pages.insert(vm, frames);
        Ok(())
    }

    /// FORK: `child` maps every frame `parent` maps, read-only, sharing them.
    pub fn fork(&mut self, parent: VmId, child: VmId) -> Result<(), SbiError> {
        if self.pages.contains_key(&child) {
            return Err(SbiError::InvalidParam);
        }
        let frames = self
            .pages
            .get(&parent)
            .ok_or(SbiError::InvalidParam)?
            .clone();
        for f in &frames {
            if let Some(s) = self.shares.get_mut(f) {
                *s = s.saturating_add(1);
            }
        }
        self.pages.insert(child, frames);
        Ok(())
    }

    /// A write fault by `vm` on its page `page`. If the frame is shared, `alloc` supplies
    /// a new frame (it cannot run out: see the module documentation).
    pub fn write_fault(
        &mut self,
        vm: VmId,
        page: usize,
        alloc: impl FnOnce() -> FrameId,
    ) -> Result<CowAction, SbiError> {
        let frames = self.pages.get_mut(&vm).ok_or(SbiError::InvalidParam)?;
        let slot = frames.get_mut(page).ok_or(SbiError::InvalidAddress)?;
        let from = *slot;
        let shares = self.shares.get_mut(&from).ok_or(SbiError::Failed)?;
        if *shares <= 1 {
            return Ok(CowAction::MakeWritable(from));
        }
        let to = alloc();
        if self.shares.contains_key(&to) {
            return Err(SbiError::Failed);
        }
        if let Some(s) = self.shares.get_mut(&from) {
            *s -= 1;
        }
        self.shares.insert(to, 1);
        *slot = to;
        Ok(CowAction::Copy { from, to })
    }

    /// A VM died: drops its shares and returns the frames no one maps any more.
    pub fn release_vm(&mut self, vm: VmId) -> Vec<FrameId> {
        let mut freed = Vec::new();
        for f in self.pages.remove(&vm).unwrap_or_default() {
            if let Some(s) = self.shares.get_mut(&f) {
                *s = s.saturating_sub(1);
                if *s == 0 {
                    self.shares.remove(&f);
                    freed.push(f);
                }
            }
        }
        freed
    }

    /// Distinct frames in use.
    pub fn frames_in_use(&self) -> usize {
        self.shares.len()
    }

    /// Pages `vm` maps (its RAM size in pages).
    pub fn pages_of(&self, vm: VmId) -> usize {
        self.pages.get(&vm).map_or(0, Vec::len)
    }

    /// Pages mapped by all VMs together: an upper bound on frames in use.
    pub fn pages_mapped(&self) -> usize {
        self.pages.values().map(Vec::len).sum()
    }

    /// Checks internal consistency: each frame's share count equals the number of VM
    /// pages mapping it. For tests and debug assertions.
    pub fn is_consistent(&self) -> bool {
        let mut counted: BTreeMap<FrameId, u32> = BTreeMap::new();
        for frames in self.pages.values() {
            for &f in frames {
                *counted.entry(f).or_default() += 1;
            }
        }
        counted == self.shares
    }
}
