//! What a VM may hold: admission of a new child (create, FORK, SPAWN), pages charged to a
//! VM after it was created, SET_QUOTA, and DROP_TRUST.
//!
//! Admission is by reservation (see [`super::quota`]): a VM's headroom is its quota minus
//! what it holds and the quotas it granted its children, so every check reads only the
//! parent's own node and its direct children. Everything a child holds is charged when
//! it is created, to it and to every ancestor's subtree counts.

use alloc::vec::Vec;

use diosix_abi::limits;

use super::{
    ChildRequest, Quota, QuotaChange, Reserved, SbiError, SubtreeUsage, Termination, Usage, VmId,
    VmNode, VmState, VmTree,
};

impl VmTree {
    // ----- reservation -----

    /// What `vm` has reserved: what it holds plus its children's quotas.
    pub fn reserved(&self, vm: VmId) -> Result<Reserved, SbiError> {
        let node = self.node(vm)?;
        self.reserved_excluding(node, None)
            .ok_or(SbiError::InvalidState)
    }

    fn reserved_excluding(&self, node: &VmNode, excluded: Option<u64>) -> Option<Reserved> {
        let mut r = Reserved {
            pages: node.own.pages()?,
            vcpus: node.own.vcpus,
            descendants: 0,
        };
        for (&c, &child) in &node.children {
            if Some(c) == excluded {
                continue;
            }
            let q = self.get(child)?.quota;
            r.pages = r.pages.checked_add(q.ram_pages)?;
            r.vcpus = r.vcpus.checked_add(q.vcpus)?;
            r.descendants = r
                .descendants
                .checked_add(1)?
                .checked_add(q.max_descendants)?;
        }
        Some(r)
    }

    // ----- admission -----

    /// The quota a request really asks for, with defaults filled in.
    fn effective_child_quota(req: &ChildRequest, pages: u64) -> Quota {
        let q = req.quota;
        Quota {
            ram_pages: if q.ram_pages == 0 { pages } else { q.ram_pages },
            vcpus: if q.vcpus == 0 { req.vcpus } else { q.vcpus },
            max_priority: if q.max_priority == 0 {
                req.priority
            } else {
                q.max_priority
            },
            max_depth: q.max_depth,
            max_descendants: q.max_descendants,
        }
    }

    /// Admission control for a new child of `parent` (or a replacement of the child with
    /// CID `replacing`, whose reservation is then not counted). Checks, in this order:
    ///
    /// 1. well-formed request: RAM, vCPUs and priority non-zero, quota within the ABI's
    ///    limits and at least what the child itself holds → `InvalidParam`;
    /// 2. trust: a trusted child only from a trusted parent → `Denied`;
    /// 3. priority: the child's priority and priority quota ≤ the parent's → `Denied`;
    /// 4. depth: the child's depth quota + 1 ≤ the parent's → `Denied`;
    /// 5. descendants: 1 + the child's descendant quota fits the parent's → `Denied`;
    /// 6. vCPUs: the child's vCPU quota fits the parent's headroom → `Denied`;
    /// 7. RAM: the child's page quota fits the parent's headroom → `Denied`.
    ///
    /// Returns the child's quota and pages.
    fn admit(
        &self,
        parent: &VmNode,
        req: &ChildRequest,
        replacing: Option<u64>,
    ) -> Result<(Quota, u64), SbiError> {
        let pages = req
            .ram_pages
            .checked_add(req.table_pages)
            .ok_or(SbiError::InvalidParam)?;
        if req.ram_pages == 0 || req.vcpus == 0 || req.priority == 0 {
            return Err(SbiError::InvalidParam);
        }
        let q = Self::effective_child_quota(req, pages);
        if !q.within_abi_limits()
            || req.priority > limits::MAX_PRIORITY
            || q.ram_pages < pages
            || q.vcpus < req.vcpus
            || q.max_priority < req.priority
            || q.max_descendants < q.max_depth
        {
            return Err(SbiError::InvalidParam);
        }
        if req.trusted && !parent.trusted {
            return Err(SbiError::Denied);
        }
        if q.max_priority > parent.quota.max_priority {
            return Err(SbiError::Denied);
        }
        if q.max_depth >= parent.quota.max_depth {
            return Err(SbiError::Denied);
        }
        let r = self
            .reserved_excluding(parent, replacing)
            .ok_or(SbiError::Denied)?;
        let desc = r
            .descendants
            .checked_add(1)
            .and_then(|d| d.checked_add(q.max_descendants));
        if desc.is_none_or(|d| d > parent.quota.max_descendants) {
            return Err(SbiError::Denied);
        }
        if r.vcpus
            .checked_add(q.vcpus)
            .is_none_or(|v| v > parent.quota.vcpus)
        {
            return Err(SbiError::Denied);
        }
        if r.pages
            .checked_add(q.ram_pages)
            .is_none_or(|p| p > parent.quota.ram_pages)
        {
            return Err(SbiError::Denied);
        }
        // Terminations are never dropped from the event queue, so they are bounded
        // here: no new child while a queue's worth of them waits unread.
        if parent.events.unread_terminations() >= limits::EVENT_QUEUE_DEPTH {
            return Err(SbiError::Denied);
        }
        Ok((q, pages))
    }

    /// Verifies that adding `delta` to the subtree usage of `from` and every ancestor
    /// keeps each within its quota. Reservation makes this always true; it is checked
    /// anyway so that no bug elsewhere can ever push a count past a quota.
    fn ancestors_allow(&self, from: VmId, delta: SubtreeUsage) -> bool {
        let mut cur = Some(from);
        while let Some(id) = cur {
            let Some(n) = self.get(id) else { return false };
            let ok = n
                .subtree
                .pages
                .checked_add(delta.pages)
                .is_some_and(|p| p <= n.quota.ram_pages)
                && n.subtree
                    .vcpus
                    .checked_add(delta.vcpus)
                    .is_some_and(|v| v <= n.quota.vcpus)
                && n.subtree
                    .descendants
                    .checked_add(delta.descendants)
                    .is_some_and(|d| d <= n.quota.max_descendants);
            if !ok {
                return false;
            }
            cur = n.parent;
        }
        true
    }

    /// Adds (or with `add == false` subtracts) `delta` along the path from `from` to the
    /// root. Callers have checked that it fits (adding) or is held (subtracting).
    pub(super) fn propagate(&mut self, from: VmId, delta: SubtreeUsage, add: bool) {
        let mut cur = Some(from);
        while let Some(id) = cur {
            let Some(n) = self.get_mut(id) else { return };
            if add {
                n.subtree.pages = n.subtree.pages.saturating_add(delta.pages);
                n.subtree.vcpus = n.subtree.vcpus.saturating_add(delta.vcpus);
                n.subtree.descendants = n.subtree.descendants.saturating_add(delta.descendants);
            } else {
                n.subtree.pages = n.subtree.pages.saturating_sub(delta.pages);
                n.subtree.vcpus = n.subtree.vcpus.saturating_sub(delta.vcpus);
                n.subtree.descendants = n.subtree.descendants.saturating_sub(delta.descendants);
            }
            cur = n.parent;
        }
    }

    /// Creates a child of `parent` after admission control. Checks, in this order:
    /// well-formed request (`InvalidParam`), then trust, priority, depth, descendants,
    /// vCPUs, RAM (each `Denied`), all against the parent's own quota and headroom only.
    /// All the child's pages and vCPUs are charged here, once, so it can never fail
    /// later for lack of memory. A refused request changes nothing (not even the next
    /// CID). Returns its id and CID.
    pub fn create_child(
        &mut self,
        parent: VmId,
        req: ChildRequest,
    ) -> Result<(VmId, u64), SbiError> {
        let p = self.node(parent)?;
        let (quota, pages) = self.admit(p, &req, None)?;
        let cid = p.next_child_cid;
        let next = cid.checked_add(1).ok_or(SbiError::Denied)?;
        let delta = SubtreeUsage {
            pages,
            vcpus: req.vcpus,
            descendants: 1,
        };
        if !self.ancestors_allow(parent, delta) {
            return Err(SbiError::Denied);
        }
        let depth = p.depth.saturating_add(1);
        let id = self.insert_child(parent, cid, depth, quota, pages, req);
        self.propagate(parent, delta, true);
        if let Ok(p) = self.node_mut(parent) {
            p.next_child_cid = next;
        }
        Ok((id, cid))
    }

    fn insert_child(
        &mut self,
        parent: VmId,
        cid: u64,
        depth: u32,
        quota: Quota,
        pages: u64,
        req: ChildRequest,
    ) -> VmId {
        let own = Usage {
            ram_pages: req.ram_pages,
            table_pages: req.table_pages,
            vcpus: req.vcpus,
        };
        let node = VmNode {
            parent: Some(parent),
            cid_in_parent: cid,
            name: req.name,
            state: req.initial_state,
            initial_state: req.initial_state,
            trusted: req.trusted,
            depth,
            ..VmNode::fresh(quota, own, pages, req.priority)
        };
        let id = self.alloc(node);
        if let Some(p) = self.get_mut(parent) {
            p.children.insert(cid, id);
        }
        id
    }

    /// The request FORK makes for a clone of `vm`: the same RAM and vCPUs, `table_pages`
    /// (the host's page tables for that RAM, plus what a fork-time snapshot may hold),
    /// all charged now so copy-on-write faults never need more; the same priority,
    /// trust unless `untrusted`, and a quota of exactly that (no children).
    pub fn fork_request(
        &self,
        vm: VmId,
        untrusted: bool,
        table_pages: u64,
    ) -> Result<ChildRequest, SbiError> {
        let n = self.node(vm)?;
        Ok(ChildRequest {
            ram_pages: n.own.ram_pages,
            table_pages,
            vcpus: n.own.vcpus,
            priority: n.priority,
            trusted: n.trusted && !untrusted,
            quota: Quota::default(),
            initial_state: VmState::Running,
            name: n.name.clone(),
        })
    }

    /// Replaces the child with CID `cid` by a new VM built from `req` (SPAWN with a CID):
    /// same CID, new [`VmId`]. Admission is checked as if the old child's reservation
    /// were already released, and nothing changes unless it passes. The old child and its
    /// subtree are returned for release; no event is queued (the parent asked for it).
    pub fn replace_child(
        &mut self,
        parent: VmId,
        cid: u64,
        req: ChildRequest,
    ) -> Result<(VmId, Termination), SbiError> {
        let old = self.resolve_child(parent, cid)?;
        let p = self.node(parent)?;
        let (quota, pages) = self.admit(p, &req, Some(cid))?;
        let depth = p.depth.saturating_add(1);
        let gone = self.remove_subtree(old);
        let delta = SubtreeUsage {
            pages,
            vcpus: req.vcpus,
            descendants: 1,
        };
        if !self.ancestors_allow(parent, delta) {
            // Unreachable under reservation; the old child is gone either way, which
            // the returned error makes the host report as a termination.
            return Err(SbiError::Failed);
        }
        let id = self.insert_child(parent, cid, depth, quota, pages, req);
        self.propagate(parent, delta, true);
        Ok((id, gone))
    }

    // ----- charging -----

    /// Charges `ram_pages` + `table_pages` more to `vm` itself (page-table growth, a
    /// memory hot-add). Fails with `Denied`, changing nothing, unless the VM's own
    /// headroom (quota minus what it holds and granted its children) covers it.
    pub fn charge(&mut self, vm: VmId, ram_pages: u64, table_pages: u64) -> Result<(), SbiError> {
        let n = self.node(vm)?;
        let add = ram_pages
            .checked_add(table_pages)
            .ok_or(SbiError::InvalidParam)?;
        let r = self.reserved_excluding(n, None).ok_or(SbiError::Denied)?;
        if r.pages
            .checked_add(add)
            .is_none_or(|p| p > n.quota.ram_pages)
        {
            return Err(SbiError::Denied);
        }
        let delta = SubtreeUsage {
            pages: add,
            vcpus: 0,
            descendants: 0,
        };
        if !self.ancestors_allow(vm, delta) {
            return Err(SbiError::Denied);
        }
        let n = self.node_mut(vm)?;
        n.own.ram_pages = n.own.ram_pages.saturating_add(ram_pages);
        n.own.table_pages = n.own.table_pages.saturating_add(table_pages);
        self.propagate(vm, delta, true);
        Ok(())
    }

    /// Returns pages `vm` no longer holds. Fails with `InvalidParam`, changing nothing,
    /// if it does not hold that many.
    pub fn uncharge(&mut self, vm: VmId, ram_pages: u64, table_pages: u64) -> Result<(), SbiError> {
        let n = self.node_mut(vm)?;
        let ram = n
            .own
            .ram_pages
            .checked_sub(ram_pages)
            .ok_or(SbiError::InvalidParam)?;
        let tables = n
            .own
            .table_pages
            .checked_sub(table_pages)
            .ok_or(SbiError::InvalidParam)?;
        n.own.ram_pages = ram;
        n.own.table_pages = tables;
        let delta = SubtreeUsage {
            pages: ram_pages.saturating_add(table_pages),
            vcpus: 0,
            descendants: 0,
        };
        self.propagate(vm, delta, false);
        Ok(())
    }

    // ----- quotas -----

    /// SET_QUOTA. Checks, in order:
    /// 1. `cid` resolves (`InvalidParam`); the parent is `Denied`;
    /// 2. new values within the ABI's limits (`InvalidParam`);
    /// 3. ceiling (`Denied`): on itself a VM may only lower; on a child, the new quota
    ///    must fit the caller's headroom (its quota minus what it holds and granted its
    ///    other children), priority ≤ the caller's, depth + 1 ≤ the caller's;
    /// 4. floor (`InvalidState`): never below what the target holds plus what it granted
    ///    its own children, nor below its own priority or its children's depth.
    pub fn set_quota(
        &mut self,
        caller: VmId,
        cid: u64,
        change: QuotaChange,
    ) -> Result<(), SbiError> {
        let target = self.resolve_self_or_child(caller, cid)?;
        let t = self.node(target)?;
        let new = change.apply(t.quota);
        if !new.within_abi_limits() {
            return Err(SbiError::InvalidParam);
        }
        if target == caller {
            let old = t.quota;
            if new.ram_pages > old.ram_pages
                || new.vcpus > old.vcpus
                || new.max_priority > old.max_priority
                || new.max_depth > old.max_depth
                || new.max_descendants > old.max_descendants
            {
                return Err(SbiError::Denied);
            }
        } else {
            let p = self.node(caller)?;
            let r = self
                .reserved_excluding(p, Some(t.cid_in_parent))
                .ok_or(SbiError::Denied)?;
            let desc_ok = r
                .descendants
                .checked_add(1)
                .and_then(|d| d.checked_add(new.max_descendants))
                .is_some_and(|d| d <= p.quota.max_descendants);
            let vcpu_ok = r
                .vcpus
                .checked_add(new.vcpus)
                .is_some_and(|v| v <= p.quota.vcpus);
            let ram_ok = r
                .pages
                .checked_add(new.ram_pages)
                .is_some_and(|v| v <= p.quota.ram_pages);
            if new.max_priority > p.quota.max_priority
                || new.max_depth >= p.quota.max_depth
                || !desc_ok
                || !vcpu_ok
                || !ram_ok
            {
                return Err(SbiError::Denied);
            }
        }
        let tr = self
            .reserved_excluding(t, None)
            .ok_or(SbiError::InvalidState)?;
        let mut prio_floor = t.priority;
        let mut depth_floor = 0;
        for &c in t.children.values() {
            let cq = self.node(c)?.quota;
            prio_floor = prio_floor.max(cq.max_priority);
            depth_floor = depth_floor.max(cq.max_depth.saturating_add(1));
        }
        if !tr.fits(&new) || new.max_priority < prio_floor || new.max_depth < depth_floor {
            return Err(SbiError::InvalidState);
        }
        self.node_mut(target)?.quota = new;
        Ok(())
    }

    // ----- trust -----

    /// Drops hardware trust of the caller itself (`cid` 1) or a child, irrevocably, and
    /// of the target's whole subtree, so that a trusted VM always has a trusted parent.
    /// Returns the VMs that lost trust (the host unmaps their MMIO and IRQ routes);
    /// dropping trust that is already gone is not an error.
    pub fn drop_trust(&mut self, caller: VmId, cid: u64) -> Result<Vec<VmId>, SbiError> {
        let target = self.resolve_self_or_child(caller, cid)?;
        let mut changed = Vec::new();
        for id in self.post_order(target) {
            if let Some(n) = self.get_mut(id) {
                if n.trusted {
                    n.trusted = false;
                    changed.push(id);
                }
            }
        }
        Ok(changed)
    }
}
