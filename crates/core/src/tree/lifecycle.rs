//! A VM's life after admission: START, STOP and RESUME of a child, REBOOT, and
//! termination of a whole subtree (EXIT, a kill by the parent, a fatal fault), each
//! reported to the parent as an event.
//!
//! A terminated subtree leaves the tree at once: what every VM in it held is returned,
//! children before parents, for the host to release, and every ancestor's counts drop
//! by the same amount.

use alloc::vec::Vec;

use diosix_abi::{exit_code, limits};

use super::{
    EventKind, EventRecord, KilledVm, SbiError, SubtreeUsage, Termination, VmId, VmState, VmTree,
};

impl VmTree {
    // ----- events to the parent -----

    fn push_event(&mut self, to: VmId, e: EventRecord) {
        if let Some(n) = self.get_mut(to) {
            n.events.push(e, limits::EVENT_QUEUE_DEPTH);
        }
        self.touch_events(to);
    }

    /// Notes that `vm`'s event queue changed, for [`Self::take_event_edges`].
    pub(super) fn touch_events(&mut self, vm: VmId) {
        if let Some(n) = self.get_mut(vm) {
            if !n.events_touched {
                n.events_touched = true;
                self.events_touched.push(vm);
            }
        }
    }

    /// Whether any event queue changed since [`Self::take_event_edges`] last ran.
    #[inline]
    pub fn has_event_changes(&self) -> bool {
        !self.events_touched.is_empty()
    }

    /// Reports (through `rose(vm)`) each VM whose event queue stopped being empty
    /// since the last call, so the hypervisor can raise its event interrupt: an edge
    /// per filling of the queue, not one per event. Emptying is noted (so the next
    /// event is an edge again) but not reported: a guest that emptied its queue before
    /// it took the interrupt finds nothing to do. Work is bounded by the number of live
    /// VMs whose queues changed.
    pub fn take_event_edges(&mut self, mut rose: impl FnMut(VmId)) {
        if self.events_touched.is_empty() {
            return;
        }
        // Popped, not taken: the list keeps its allocation for the next call.
        while let Some(vm) = self.events_touched.pop() {
            let Some(n) = self.get_mut(vm) else {
                // Gone since: so is its interrupt.
                continue;
            };
            n.events_touched = false;
            let waiting = !n.events.is_empty();
            if waiting != n.event_line {
                n.event_line = waiting;
                if waiting {
                    rose(vm);
                }
            }
        }
    }

    fn notify_parent(&mut self, vm: VmId, kind: EventKind) {
        if let Some(n) = self.get(vm) {
            if let Some(p) = n.parent {
                let cid = n.cid_in_parent;
                self.push_event(p, EventRecord { kind, cid });
            }
        }
    }

    // ----- start, stop, resume -----

    /// STOP: a running child becomes stopped. `AlreadyStopped` if it is; `InvalidState`
    /// if it was never started.
    pub fn stop_child(&mut self, caller: VmId, cid: u64) -> Result<VmId, SbiError> {
        let child = self.resolve_child(caller, cid)?;
        let n = self.node_mut(child)?;
        match n.state {
            VmState::Running => n.state = VmState::Stopped,
            VmState::Stopped => return Err(SbiError::AlreadyStopped),
            VmState::Created => return Err(SbiError::InvalidState),
        }
        self.notify_parent(child, EventKind::ChildStopped);
        Ok(child)
    }

    /// RESUME: a stopped child runs again. `AlreadyStarted` if it runs; `InvalidState`
    /// if it was never started (use START).
    pub fn resume_child(&mut self, caller: VmId, cid: u64) -> Result<VmId, SbiError> {
        let child = self.resolve_child(caller, cid)?;
        let n = self.node_mut(child)?;
        match n.state {
            VmState::Stopped => n.state = VmState::Running,
            VmState::Running => return Err(SbiError::AlreadyStarted),
            VmState::Created => return Err(SbiError::InvalidState),
        }
        self.notify_parent(child, EventKind::ChildStarted);
        Ok(child)
    }

    /// START: a child created paused starts running. `AlreadyStarted` otherwise.
    pub fn start_child(&mut self, caller: VmId, cid: u64) -> Result<VmId, SbiError> {
        let child = self.resolve_child(caller, cid)?;
        let n = self.node_mut(child)?;
        if n.state != VmState::Created {
            return Err(SbiError::AlreadyStarted);
        }
        n.state = VmState::Running;
        self.notify_parent(child, EventKind::ChildStarted);
        Ok(child)
    }

    // ----- reboot -----

    /// Resets `vm` to the state it was created or forked in: its descendants (which did
    /// not exist then) are terminated and returned for release, its queues and console
    /// input are emptied, its state returns to the initial one, and its parent gets a
    /// `ChildRebooted` event. Its own pages stay charged: the host restores their
    /// contents. Console output is kept so the parent can still read what led up to it.
    pub fn reboot(&mut self, vm: VmId) -> Result<Termination, SbiError> {
        let n = self.node(vm)?;
        let children: Vec<VmId> = n.children.values().copied().collect();
        let mut t = Termination::default();
        for c in children {
            t.killed.extend(self.remove_subtree(c).killed);
        }
        let n = self.node_mut(vm)?;
        n.state = n.initial_state;
        n.lanes.clear();
        n.ipc_waiters.clear();
        n.events.clear();
        n.console_in.clear();
        let is_root = n.parent.is_none();
        self.touch_events(vm);
        self.notify_parent(vm, EventKind::ChildRebooted);
        // Also drop what the parent had not yet read from this VM: it was sent by the
        // guest as it was before the reboot.
        if let Some((p, cid)) = self
            .get(vm)
            .and_then(|n| n.parent.map(|p| (p, n.cid_in_parent)))
        {
            if let Some(pn) = self.get_mut(p) {
                pn.lanes.remove(&cid);
                pn.events
                    .retain(|e| !(e.cid == cid && e.kind == EventKind::Message));
            }
            self.touch_events(p);
        }
        t.restart_host = is_root;
        Ok(t)
    }

    /// The checks of [`exec`](Self::exec), changing nothing; returns the new charge in
    /// pages.
    pub fn check_exec(
        &self,
        vm: VmId,
        ram_pages: u64,
        table_pages: u64,
        vcpus: u32,
        priority: u32,
    ) -> Result<u64, SbiError> {
        let n = self.node(vm)?;
        if n.parent.is_none() {
            return Err(SbiError::Denied);
        }
        let pages = ram_pages
            .checked_add(table_pages)
            .ok_or(SbiError::InvalidParam)?;
        if pages > n.quota.ram_pages || vcpus > n.quota.vcpus || priority > n.quota.max_priority {
            return Err(SbiError::Denied);
        }
        Ok(pages)
    }

    /// EXEC by `vm` of an image needing `ram_pages` + `table_pages` pages, `vcpus`
    /// vCPUs at `priority`. Checks, in order: not the Root VM (`Denied`: its end
    /// restarts the host); the new charge within its own quota — RAM and table pages,
    /// vCPUs, priority (each `Denied`). Then, as REBOOT does, its children end (returned
    /// for release), its queues are emptied and its parent gets `ChildRebooted`; its
    /// own charge becomes the new one and it runs. Its quota, trust, CID and parent
    /// stay.
    pub fn exec(
        &mut self,
        vm: VmId,
        ram_pages: u64,
        table_pages: u64,
        vcpus: u32,
        priority: u32,
    ) -> Result<Termination, SbiError> {
        let pages = self.check_exec(vm, ram_pages, table_pages, vcpus, priority)?;
        let mut t = self.reboot(vm)?;
        t.restart_host = false;
        let n = self.node_mut(vm)?;
        let old_pages = n.own.ram_pages.saturating_add(n.own.table_pages);
        let old_vcpus = n.own.vcpus;
        n.own = super::Usage {
            ram_pages,
            table_pages,
            vcpus,
        };
        n.priority = priority;
        n.state = VmState::Running;
        n.initial_state = VmState::Running;
        // Its children are gone, so its subtree holds only itself: the change in its
        // own charge is the change along the path to the root.
        let grow = SubtreeUsage {
            pages: pages.saturating_sub(old_pages),
            vcpus: vcpus.saturating_sub(old_vcpus),
            descendants: 0,
        };
        let shrink = SubtreeUsage {
            pages: old_pages.saturating_sub(pages),
            vcpus: old_vcpus.saturating_sub(vcpus),
            descendants: 0,
        };
        self.propagate(vm, grow, true);
        self.propagate(vm, shrink, false);
        Ok(t)
    }

    /// REBOOT of a child by its parent.
    pub fn reboot_child(
        &mut self,
        caller: VmId,
        cid: u64,
    ) -> Result<(VmId, Termination), SbiError> {
        let child = self.resolve_child(caller, cid)?;
        Ok((child, self.reboot(child)?))
    }

    // ----- termination -----

    /// Removes `vm` and its subtree, returning what they held; fixes every ancestor's
    /// counts and the parent's bookkeeping, but queues no event.
    pub(super) fn remove_subtree(&mut self, vm: VmId) -> Termination {
        let Some(n) = self.get(vm) else {
            return Termination::default();
        };
        let parent = n.parent;
        let cid = n.cid_in_parent;
        let delta = SubtreeUsage {
            pages: n.subtree.pages,
            vcpus: n.subtree.vcpus,
            descendants: n.subtree.descendants.saturating_add(1),
        };
        let order = self.post_order(vm);
        let mut killed = Vec::with_capacity(order.len());
        for id in order {
            if let Some(dead) = self.release_slot(id) {
                killed.push(KilledVm {
                    id,
                    ram_pages: dead.own.ram_pages,
                    table_pages: dead.own.table_pages,
                    vcpus: dead.own.vcpus,
                    trusted: dead.trusted,
                    parent: dead.parent,
                });
            }
        }
        let mut ended_waits = Vec::new();
        if let Some(p) = parent {
            if let Some(pn) = self.get_mut(p) {
                pn.children.remove(&cid);
                // Its unread messages and the notices about them die with it.
                pn.lanes.remove(&cid);
                pn.events
                    .retain(|e| !(e.cid == cid && e.kind == EventKind::Message));
                // And so do the parent's waits for a message from it alone.
                pn.ipc_waiters.retain(|w| {
                    let from_it = w.from == Some(cid);
                    if from_it {
                        ended_waits.push((p, *w));
                    }
                    !from_it
                });
            }
            self.touch_events(p);
            self.propagate(p, delta, false);
        }
        Termination {
            killed,
            restart_host: parent.is_none(),
            ended_waits,
        }
    }

    /// Terminates `vm` and its whole subtree (EXIT, a kill by the parent, a fatal fault,
    /// an SRST shutdown). Every page and vCPU returns to the ancestors' budgets at once;
    /// the parent gets a `ChildTerminated` event with `code`. If `vm` is the Root VM the
    /// whole tree is gone and `restart_host` is set.
    pub fn kill_subtree(&mut self, vm: VmId, code: u64) -> Result<Termination, SbiError> {
        let n = self.node(vm)?;
        let parent = n.parent;
        let cid = n.cid_in_parent;
        let t = self.remove_subtree(vm);
        if let Some(p) = parent {
            self.push_event(
                p,
                EventRecord {
                    kind: EventKind::ChildTerminated { exit_code: code },
                    cid,
                },
            );
        }
        Ok(t)
    }

    /// Kills a child of `caller` (EXIT with a child's CID).
    pub fn kill_child(
        &mut self,
        caller: VmId,
        cid: u64,
        code: u64,
    ) -> Result<Termination, SbiError> {
        let child = self.resolve_child(caller, cid)?;
        self.kill_subtree(child, code)
    }

    /// Removes a child whose creation the host could not complete, with no event: it
    /// never ran, so as far as anyone can tell it never existed (its CID stays used).
    pub fn discard_child(&mut self, child: VmId) -> Termination {
        self.remove_subtree(child)
    }

    /// A fatal fault in `vm`: terminate it with [`exit_code::FATAL_FAULT`].
    pub fn fatal_fault(&mut self, vm: VmId) -> Result<Termination, SbiError> {
        self.kill_subtree(vm, exit_code::FATAL_FAULT)
    }
}
