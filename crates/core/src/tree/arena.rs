//! The node arena and everything that finds a VM in it: lookup by [`VmId`], resolution
//! of a caller-relative CID, and walks over a VM's subtree.
//!
//! Every node lives in a generation-checked slot: freeing a slot bumps its generation, so
//! a [`VmId`] of a dead VM stops resolving for good even after the slot is reused. A CID
//! is looked up among the caller's own children only, never in the arena at large.

use alloc::vec::Vec;

use diosix_abi::cid;

use super::{Quota, Resolved, SbiError, Slot, Usage, VmId, VmNode, VmTree};

impl VmTree {
    /// Builds a tree holding only the Root VM, which is trusted, running, and has
    /// `quota` (normally [`Quota::everything`]) and already holds `own`.
    ///
    /// Fails with `InvalidParam` if `quota` is above the ABI's limits, `own` does not fit
    /// in it, or `priority` is not in 1..=quota.max_priority.
    pub fn new(quota: Quota, own: Usage, priority: u32) -> Result<(Self, VmId), SbiError> {
        let pages = own.pages().ok_or(SbiError::InvalidParam)?;
        if !quota.within_abi_limits()
            || pages > quota.ram_pages
            || own.vcpus > quota.vcpus
            || priority == 0
            || priority > quota.max_priority
        {
            return Err(SbiError::InvalidParam);
        }
        let node = VmNode::fresh(quota, own, pages, priority);
        let mut tree = Self {
            slots: Vec::new(),
            free: Vec::new(),
            root: None,
            live: 0,
            events_touched: Vec::new(),
        };
        let id = tree.alloc(node);
        tree.root = Some(id);
        Ok((tree, id))
    }

    // ----- arena -----

    pub(super) fn alloc(&mut self, node: VmNode) -> VmId {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.node = Some(node);
                return VmId {
                    index,
                    generation: slot.generation,
                };
            }
        }
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 0,
            node: Some(node),
        });
        VmId {
            index,
            generation: 0,
        }
    }

    pub(super) fn release_slot(&mut self, id: VmId) -> Option<VmNode> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let node = slot.node.take()?;
        // A new generation makes every outstanding copy of `id` stale for good.
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.live -= 1;
        Some(node)
    }

    /// The node of a live VM, or `None` if `id` is stale.
    pub fn get(&self, id: VmId) -> Option<&VmNode> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.node.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: VmId) -> Option<&mut VmNode> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.node.as_mut()
    }

    /// The node of a live VM the caller of a tree operation passed in; a stale id is the
    /// host's mistake, reported as `Failed` rather than a panic.
    pub(super) fn node(&self, id: VmId) -> Result<&VmNode, SbiError> {
        self.get(id).ok_or(SbiError::Failed)
    }

    pub(super) fn node_mut(&mut self, id: VmId) -> Result<&mut VmNode, SbiError> {
        self.get_mut(id).ok_or(SbiError::Failed)
    }

    /// True while the VM lives.
    pub fn is_alive(&self, id: VmId) -> bool {
        self.get(id).is_some()
    }

    /// The Root VM, while it lives.
    pub fn root(&self) -> Option<VmId> {
        self.root.filter(|&r| self.is_alive(r))
    }

    /// Number of live VMs.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no VM lives (after the Root VM terminated).
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every live VM's id (arena order).
    pub fn ids(&self) -> impl Iterator<Item = VmId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.node.as_ref().map(|_| VmId {
                index: i as u32,
                generation: s.generation,
            })
        })
    }

    // ----- naming -----

    /// Resolves a CID relative to `caller`. Anything that is not the caller's parent,
    /// itself, or one of its live children is `InvalidParam`, found by a lookup among
    /// the caller's own children only (so neither the result nor the work done depends
    /// on VMs elsewhere). CID 0 of the Root VM names nothing.
    pub fn resolve(&self, caller: VmId, cid: u64) -> Result<Resolved, SbiError> {
        let node = self.node(caller)?;
        match cid {
            cid::PARENT => node
                .parent
                .map(Resolved::Parent)
                .ok_or(SbiError::InvalidParam),
            cid::SELF => Ok(Resolved::Myself(caller)),
            c => node
                .children
                .get(&c)
                .copied()
                .map(Resolved::Child)
                .ok_or(SbiError::InvalidParam),
        }
    }

    /// Resolves a CID that must name one of the caller's children: an unknown CID is
    /// `InvalidParam`, the parent or the caller itself is `Denied`.
    pub fn resolve_child(&self, caller: VmId, cid: u64) -> Result<VmId, SbiError> {
        match self.resolve(caller, cid)? {
            Resolved::Child(id) => Ok(id),
            Resolved::Parent(_) | Resolved::Myself(_) => Err(SbiError::Denied),
        }
    }

    /// Resolves a CID that must name the caller itself or one of its children.
    pub fn resolve_self_or_child(&self, caller: VmId, cid: u64) -> Result<VmId, SbiError> {
        match self.resolve(caller, cid)? {
            Resolved::Child(id) | Resolved::Myself(id) => Ok(id),
            Resolved::Parent(_) => Err(SbiError::Denied),
        }
    }

    /// Resolves a CID that must name the caller's parent or one of its children (an IPC
    /// peer): the caller itself is `InvalidParam`.
    pub fn resolve_peer(&self, caller: VmId, cid: u64) -> Result<VmId, SbiError> {
        match self.resolve(caller, cid)? {
            Resolved::Child(id) | Resolved::Parent(id) => Ok(id),
            Resolved::Myself(_) => Err(SbiError::InvalidParam),
        }
    }

    // ----- walks -----

    /// Levels of descendants that exist below `vm` now.
    pub fn depth_used(&self, vm: VmId) -> u32 {
        let mut deepest = 0;
        let Some(base) = self.get(vm).map(|n| n.depth) else {
            return 0;
        };
        let mut stack: Vec<VmId> = alloc::vec![vm];
        while let Some(v) = stack.pop() {
            if let Some(n) = self.get(v) {
                deepest = deepest.max(n.depth.saturating_sub(base));
                stack.extend(n.children.values().copied());
            }
        }
        deepest
    }

    /// The subtree under `vm`, children before parents.
    pub fn post_order(&self, vm: VmId) -> Vec<VmId> {
        let mut out = Vec::new();
        let mut stack = alloc::vec![(vm, false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                out.push(id);
                continue;
            }
            if let Some(n) = self.get(id) {
                stack.push((id, true));
                // Reverse so children come out in ascending CID order.
                for &c in n.children.values().rev() {
                    stack.push((c, false));
                }
            }
        }
        out
    }
}
