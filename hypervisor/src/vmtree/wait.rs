//! Waiting for the tree lock and for other harts, always in a way that can be broken
//! (see the module documentation of `vmtree`), and retiring dead VMs.

use crate::hart::{self};
use crate::sched;
use crate::vcpu_shared::NOT_RUNNING;
use crate::vm::Vm;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use diosix_core::tree::VmTree;

use super::*;

/// Takes `TREE` for a call by a vCPU of `vm` running on hart `slot`, serving fence
/// requests while it spins; `None` once `vm` is dead (whoever killed it may be waiting,
/// with `TREE` held, for this hart to leave the VM). Checked again under the lock, so
/// a vCPU of a VM that died or was rebooted never acts on the tree.
pub(super) fn lock_tree_for(vm: &Vm, slot: usize) -> Option<TreeGuard> {
    lock_tree_unless(slot, &|| vm.dead.load(Ordering::Acquire), u64::MAX).ok()
}

/// The tree, locked. When it is let go, the VMs whose event queue stopped being empty
/// meanwhile (`VmTree::take_event_edges`) have their event interrupt raised, after
/// the lock is released (the virtual PLICs and the run queue are never taken under
/// it from here).
pub(super) struct TreeGuard(Option<spin::MutexGuard<'static, Option<VmTree>>>);

impl core::ops::Deref for TreeGuard {
    type Target = Option<VmTree>;
    fn deref(&self) -> &Self::Target {
        // Some until drop.
        self.0.as_deref().unwrap_or(&None)
    }
}

impl core::ops::DerefMut for TreeGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_deref_mut()
            .expect("a tree guard is held until it is dropped")
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        let Some(guard) = self.0.take() else {
            return;
        };
        if guard.as_ref().is_some_and(VmTree::has_event_changes) {
            raise_event_edges(guard);
        }
        // Otherwise (most calls change no event queue) the lock just goes.
    }
}

/// The tail of a tree lock whose holder changed event queues: takes the edges, lets
/// the lock go, raises their VMs' event interrupts. Out of line, so its frame is not
/// paid by every call that takes the tree (nor by YIELD, which shares their path).
#[inline(never)]
fn raise_event_edges(mut guard: spin::MutexGuard<'static, Option<VmTree>>) {
    // A call fills the queue of a VM or two (a message's receiver): no heap
    // allocation for those.
    let mut rose: smallvec::SmallVec<[VmId; 4]> = smallvec::SmallVec::new();
    if let Some(t) = guard.as_mut() {
        t.take_event_edges(|vm| rose.push(vm));
    }
    drop(guard);
    for id in rose {
        if let Some(vm) = lookup(id) {
            crate::vplic::raise_events(&vm);
        }
    }
}

/// Why [`lock_tree_unless`] returned without the lock.
pub(super) enum NoLock {
    /// `give_up()` held.
    GaveUp,
    /// The deadline passed first.
    TimedOut,
}

/// Takes `TREE` on hart `slot`, serving fence requests while it spins, unless (before
/// or once it has the lock) `give_up()` holds, or the timer passes `deadline` first.
pub(super) fn lock_tree_unless(
    slot: usize,
    give_up: &dyn Fn() -> bool,
    deadline: u64,
) -> Result<TreeGuard, NoLock> {
    loop {
        if let Some(guard) = TREE.try_lock() {
            return if give_up() {
                Err(NoLock::GaveUp)
            } else {
                Ok(TreeGuard(Some(guard)))
            };
        }
        if give_up() {
            return Err(NoLock::GaveUp);
        }
        if deadline != u64::MAX && crate::platform::now() > deadline {
            return Err(NoLock::TimedOut);
        }
        crate::hart::service_fence_request(slot);
        core::hint::spin_loop();
    }
}

/// Waits until no vCPU of `vm` runs on another hart than `my_slot` (kicking those that
/// do, and serving fence requests meanwhile, so two harts waiting on each other cannot
/// deadlock). Gives up, returning false, as soon as `give_up()` holds.
///
/// Once the VM is held, stopped or dead, on a `true` return every other vCPU of `vm`
/// is in the run queue or gone (where FORK's snapshot finds it): the scheduler updates
/// `running_on` under the run-queue lock, so once a scan made under that lock finds
/// none running, none is between the queue and a hart, and none can be taken again.
pub(super) fn wait_off_harts(vm: &Vm, my_slot: usize, give_up: impl Fn() -> bool) -> bool {
    let others_running = || {
        let mut busy = false;
        for v in &vm.vcpus {
            let slot = v.running_on.load(Ordering::Acquire);
            if slot != NOT_RUNNING && slot != my_slot {
                hart::kick(slot);
                busy = true;
            }
        }
        busy
    };
    loop {
        if !others_running() && !sched::with_queue_locked(others_running) {
            return true;
        }
        if give_up() {
            return false;
        }
        crate::hart::service_fence_request(my_slot);
        core::hint::spin_loop();
    }
}

/// Ends a VM that is no longer in the registry (killed, or replaced by its rebooted
/// incarnation): marks it dead, takes its queued vCPUs away, waits (with `TREE` held)
/// until its running ones have left their harts, and returns its memory to the host.
/// Its charge in the tree is therefore never reused while it still holds frames.
///
/// The wait ends: a hart running one of its vCPUs is kicked and, in the guest, traps
/// and drops it; in the hypervisor, every wait it can be in gives up once the VM is
/// dead (`lock_tree_for`, a FORK hold, a STOP's wait), and fence requests from this
/// hart are served meanwhile.
pub(super) fn retire(vm: &Arc<Vm>, my_slot: usize) {
    stop_for_good(vm, my_slot);
    vm.release_memory();
}

/// Marks `vm` dead and waits until its vCPUs are off every hart (but this one), its
/// memory still whole.
pub(super) fn stop_for_good(vm: &Arc<Vm>, my_slot: usize) {
    vm.dead.store(true, Ordering::SeqCst);
    kick_running(vm, my_slot);
    sched::reap(vm);
    wait_off_harts(vm, my_slot, || false);
}

/// Kicks every hart running one of `vm`'s vCPUs, so it notices a new stop or death.
pub(super) fn kick_running(vm: &Vm, my_slot: usize) {
    for v in &vm.vcpus {
        let slot = v.running_on.load(Ordering::Acquire);
        if slot != NOT_RUNNING && slot != my_slot {
            hart::kick(slot);
        }
    }
}
