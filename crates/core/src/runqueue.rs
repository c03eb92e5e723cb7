//! The scheduler's run queue: strict priority between levels, first in first out
//! within a level, and waiters that become runnable when their wake-up is due.
//!
//! The queue holds every item that is not running, in one of three lists chosen by the
//! item's own [`Placement`]: runnable, waiting (for an interrupt or a timer deadline)
//! or stopped (until [`RunQueue::take_stopped`] restarts it). What an item is, when it
//! has a wake-up and what waking it does are the item's business ([`Schedulable`]):
//! the hypervisor queues boxed vCPUs, the host tests a small stand-in.
//!
//! Locking is the caller's too: the hypervisor keeps one queue behind a spin lock and
//! publishes [`RunQueue::earliest_deadline`] after each change, so harts can program
//! their timers for the next waiter without taking the lock.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Which list of the run queue an item belongs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Ready to run.
    Runnable,
    /// Waiting for a wake-up (an interrupt or its timer deadline).
    Waiting,
    /// Stopped: runnable again only through [`RunQueue::take_stopped`].
    Stopped,
}

/// What the run queue needs to know about the items it holds.
pub trait Schedulable {
    /// Its priority: higher runs first.
    fn priority(&self) -> u8;
    /// Whether it may be picked now (a runnable item whose VM is paused is passed over
    /// and keeps its place).
    fn can_run(&self) -> bool;
    /// Whether it is dropped instead of queued (its VM was terminated).
    fn is_dead(&self) -> bool;
    /// The list it belongs in when queued.
    fn placement(&self) -> Placement;
    /// Whether a waiting item should become runnable at time `now`.
    fn has_wakeup(&self, now: u64) -> bool;
    /// The time at which a waiting item may next have a wake-up without anything else
    /// happening (its timer deadline; `u64::MAX` for none).
    fn wake_deadline(&self) -> u64;
    /// Called once when a waiting item becomes runnable; afterwards its
    /// [`placement`](Self::placement) is `Runnable`.
    fn wake(&mut self);
    /// Called when an item enters the stopped list.
    fn on_stopped(&mut self);
}

/// Every item that is not running. See the module documentation.
#[derive(Debug)]
pub struct RunQueue<T> {
    runnable: VecDeque<T>,
    /// Waiting for a wake-up; runnable again through [`RunQueue::wake_waiters`].
    waiting: Vec<T>,
    /// Runnable again only through [`RunQueue::take_stopped`].
    stopped: Vec<T>,
    /// The earliest [`Schedulable::wake_deadline`] in `waiting`, `u64::MAX` if none.
    earliest: u64,
}

impl<T> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RunQueue<T> {
    /// An empty queue.
    pub const fn new() -> Self {
        Self {
            runnable: VecDeque::new(),
            waiting: Vec::new(),
            stopped: Vec::new(),
            earliest: u64::MAX,
        }
    }

    /// The earliest wake deadline among waiting items (`u64::MAX` if none), as of the
    /// last [`push`](Self::push), [`wake_waiters`](Self::wake_waiters) or
    /// [`retain`](Self::retain).
    pub fn earliest_deadline(&self) -> u64 {
        self.earliest
    }

    /// Runnable items, whether or not they may run now.
    pub fn runnable_len(&self) -> usize {
        self.runnable.len()
    }

    /// Waiting items.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Stopped items.
    pub fn stopped_len(&self) -> usize {
        self.stopped.len()
    }

    /// Every queued item: runnable ones in queue order, then waiting, then stopped.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.runnable
            .iter()
            .chain(self.waiting.iter())
            .chain(self.stopped.iter())
    }

    /// Removes and returns the first stopped item matching `pred`.
    pub fn take_stopped(&mut self, pred: impl FnMut(&T) -> bool) -> Option<T> {
        let i = self.stopped.iter().position(pred)?;
        Some(self.stopped.swap_remove(i))
    }

    /// Appends `item` to the runnable items as it is, without looking at its
    /// placement or whether it is dead (a stopped item being restarted).
    pub fn push_runnable(&mut self, item: T) {
        self.runnable.push_back(item);
    }
}

impl<T: Schedulable> RunQueue<T> {
    /// Queues `item` in the list its placement says, or drops it if it is dead. A
    /// waiting item whose wake-up is already due at `now` is woken and made runnable.
    pub fn push(&mut self, mut item: T, now: u64) {
        if item.is_dead() {
            return;
        }
        match item.placement() {
            Placement::Runnable => self.runnable.push_back(item),
            Placement::Stopped => {
                item.on_stopped();
                self.stopped.push(item);
            }
            Placement::Waiting => {
                if item.has_wakeup(now) {
                    item.wake();
                    self.runnable.push_back(item);
                } else {
                    self.waiting.push(item);
                }
            }
        }
        self.update_earliest();
    }

    /// Wakes every waiting item with a wake-up at `now` and appends it to the runnable
    /// items; returns how many were woken.
    pub fn wake_waiters(&mut self, now: u64) -> usize {
        let mut woken = 0;
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].has_wakeup(now) {
                let mut v = self.waiting.swap_remove(i);
                v.wake();
                self.runnable.push_back(v);
                woken += 1;
            } else {
                i += 1;
            }
        }
        self.update_earliest();
        woken
    }

    /// Removes and returns the first runnable item of the highest priority among those
    /// that may run.
    pub fn pop_best(&mut self) -> Option<T> {
        // One pass (this runs on every vCPU switch): the first of the highest priority.
        let mut best: Option<(usize, u8)> = None;
        for (i, v) in self.runnable.iter().enumerate() {
            if !v.can_run() {
                continue;
            }
            let p = v.priority();
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((i, p));
            }
        }
        match best?.0 {
            // The usual case (round robin within a priority): no elements to move.
            0 => self.runnable.pop_front(),
            i => self.runnable.remove(i),
        }
    }

    /// The highest priority among runnable items that may run.
    pub fn best_priority(&self) -> Option<u8> {
        self.runnable
            .iter()
            .filter(|v| v.can_run())
            .map(|v| v.priority())
            .max()
    }

    /// Keeps only the items (in every list) for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.runnable.retain(|v| keep(v));
        self.waiting.retain(|v| keep(v));
        self.stopped.retain(|v| keep(v));
        self.update_earliest();
    }

    fn update_earliest(&mut self) {
        self.earliest = self
            .waiting
            .iter()
            .map(|v| v.wake_deadline())
            .min()
            .unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A stand-in for a VM: whether its items may run, whether it is dead.
    #[derive(Debug, Default)]
    struct Vm {
        paused: Cell<bool>,
        dead: Cell<bool>,
    }

    /// A stand-in for a vCPU: woken by its deadline or by an interrupt.
    #[derive(Debug)]
    struct Item {
        id: u32,
        prio: u8,
        vm: Rc<Vm>,
        placement: Placement,
        deadline: u64,
        irq: Rc<Cell<bool>>,
        woken: u32,
        stopped: u32,
    }

    impl Item {
        fn new(id: u32, prio: u8) -> Self {
            Self {
                id,
                prio,
                vm: Rc::default(),
                placement: Placement::Runnable,
                deadline: u64::MAX,
                irq: Rc::default(),
                woken: 0,
                stopped: 0,
            }
        }

        fn of(mut self, vm: &Rc<Vm>) -> Self {
            self.vm = vm.clone();
            self
        }

        fn waiting_until(mut self, deadline: u64) -> Self {
            self.placement = Placement::Waiting;
            self.deadline = deadline;
            self
        }

        fn stopped(mut self) -> Self {
            self.placement = Placement::Stopped;
            self
        }
    }

    impl Schedulable for Item {
        fn priority(&self) -> u8 {
            self.prio
        }
        fn can_run(&self) -> bool {
            !self.vm.paused.get() && !self.vm.dead.get()
        }
        fn is_dead(&self) -> bool {
            self.vm.dead.get()
        }
        fn placement(&self) -> Placement {
            self.placement
        }
        fn has_wakeup(&self, now: u64) -> bool {
            self.deadline <= now || self.irq.get()
        }
        fn wake_deadline(&self) -> u64 {
            self.deadline
        }
        fn wake(&mut self) {
            assert_eq!(self.placement, Placement::Waiting, "only waiters are woken");
            self.placement = Placement::Runnable;
            self.woken += 1;
        }
        fn on_stopped(&mut self) {
            self.stopped += 1;
        }
    }

    /// Pops every item that may run, in order.
    fn drain(q: &mut RunQueue<Item>) -> Vec<u32> {
        core::iter::from_fn(|| q.pop_best()).map(|v| v.id).collect()
    }

    #[test]
    fn empty_queue() {
        let mut q = RunQueue::<Item>::new();
        assert_eq!(q.best_priority(), None);
        assert!(q.pop_best().is_none());
        assert_eq!(q.earliest_deadline(), u64::MAX);
        assert_eq!(q.wake_waiters(u64::MAX), 0);
        assert_eq!(q.iter().count(), 0);
        assert_eq!(RunQueue::<Item>::default().earliest_deadline(), u64::MAX);
    }

    #[test]
    fn highest_priority_first() {
        let mut q = RunQueue::new();
        for (id, prio) in [(1, 1), (2, 3), (3, 0), (4, 2), (5, 255)] {
            q.push(Item::new(id, prio), 0);
        }
        assert_eq!(q.best_priority(), Some(255));
        assert_eq!(drain(&mut q), [5, 2, 4, 1, 3]);
        assert_eq!(q.best_priority(), None);
    }

    #[test]
    fn fifo_within_a_priority() {
        let mut q = RunQueue::new();
        for id in 1..=4 {
            q.push(Item::new(id, 7), 0);
        }
        q.push(Item::new(10, 1), 0);
        q.push(Item::new(5, 7), 0);
        assert_eq!(drain(&mut q), [1, 2, 3, 4, 5, 10]);
    }

    #[test]
    fn round_robin_when_pushed_back() {
        let mut q = RunQueue::new();
        for id in 1..=3 {
            q.push(Item::new(id, 1), 0);
        }
        let mut order = Vec::new();
        for _ in 0..7 {
            let v = q.pop_best().unwrap();
            order.push(v.id);
            q.push(v, 0);
        }
        assert_eq!(order, [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(q.runnable_len(), 3);
    }

    #[test]
    fn items_that_may_not_run_are_passed_over_and_keep_their_place() {
        let held = Rc::new(Vm::default());
        let mut q = RunQueue::new();
        q.push(Item::new(1, 5).of(&held), 0);
        q.push(Item::new(2, 1), 0);
        q.push(Item::new(3, 5).of(&held), 0);
        q.push(Item::new(4, 1), 0);
        held.paused.set(true);
        // Only the low-priority items count while the VM is paused.
        assert_eq!(q.best_priority(), Some(1));
        assert_eq!(q.pop_best().unwrap().id, 2);
        held.paused.set(false);
        assert_eq!(q.best_priority(), Some(5));
        assert_eq!(drain(&mut q), [1, 3, 4]);
    }

    #[test]
    fn nothing_to_pop_when_no_item_may_run() {
        let held = Rc::new(Vm::default());
        let mut q = RunQueue::new();
        q.push(Item::new(1, 5).of(&held), 0);
        held.paused.set(true);
        assert_eq!(q.best_priority(), None);
        assert!(q.pop_best().is_none());
        assert_eq!(q.runnable_len(), 1);
    }

    #[test]
    fn dead_items_are_dropped_when_pushed() {
        let vm = Rc::new(Vm::default());
        vm.dead.set(true);
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).of(&vm), 0);
        q.push(Item::new(2, 1).of(&vm).waiting_until(10), 0);
        q.push(Item::new(3, 1).of(&vm).stopped(), 0);
        assert_eq!(q.iter().count(), 0);
        assert_eq!(q.earliest_deadline(), u64::MAX);
    }

    #[test]
    fn runnable_items_of_a_vm_killed_while_queued_are_not_picked() {
        let vm = Rc::new(Vm::default());
        let mut q = RunQueue::new();
        q.push(Item::new(1, 9).of(&vm), 0);
        q.push(Item::new(2, 1), 0);
        vm.dead.set(true);
        assert_eq!(q.pop_best().unwrap().id, 2);
        assert!(q.pop_best().is_none());
    }

    #[test]
    fn waiter_woken_at_its_deadline_and_not_before() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).waiting_until(100), 0);
        assert_eq!(q.waiting_len(), 1);
        assert!(q.pop_best().is_none());
        assert_eq!(q.wake_waiters(99), 0);
        assert!(q.pop_best().is_none());
        assert_eq!(q.wake_waiters(100), 1);
        let v = q.pop_best().unwrap();
        assert_eq!((v.id, v.woken, v.placement), (1, 1, Placement::Runnable));
        assert_eq!(q.waiting_len(), 0);
    }

    #[test]
    fn waiter_already_due_is_runnable_at_once() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).waiting_until(50), 50);
        assert_eq!((q.waiting_len(), q.runnable_len()), (0, 1));
        assert_eq!(q.earliest_deadline(), u64::MAX);
        assert_eq!(q.pop_best().unwrap().woken, 1);
    }

    #[test]
    fn waiter_woken_by_an_interrupt_before_its_deadline() {
        let mut q = RunQueue::new();
        let it = Item::new(1, 1).waiting_until(u64::MAX);
        let irq = it.irq.clone();
        q.push(it, 0);
        assert_eq!(q.wake_waiters(1_000), 0);
        irq.set(true);
        assert_eq!(q.wake_waiters(1_001), 1);
        assert_eq!(q.pop_best().unwrap().id, 1);
    }

    #[test]
    fn woken_waiters_join_behind_runnable_items_of_their_priority() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).waiting_until(10), 0);
        q.push(Item::new(2, 1), 0);
        q.wake_waiters(10);
        assert_eq!(drain(&mut q), [2, 1]);
    }

    #[test]
    fn woken_waiter_of_higher_priority_runs_first() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1), 0);
        q.push(Item::new(2, 4).waiting_until(10), 0);
        assert_eq!(q.best_priority(), Some(1));
        q.wake_waiters(10);
        assert_eq!(q.best_priority(), Some(4));
        assert_eq!(drain(&mut q), [2, 1]);
    }

    #[test]
    fn only_due_waiters_are_woken() {
        let mut q = RunQueue::new();
        for (id, deadline) in [(1, 30), (2, 10), (3, 20), (4, 40)] {
            q.push(Item::new(id, 1).waiting_until(deadline), 0);
        }
        assert_eq!(q.wake_waiters(25), 2);
        let mut woken = drain(&mut q);
        woken.sort_unstable();
        assert_eq!(woken, [2, 3]);
        assert_eq!(q.waiting_len(), 2);
        // Each woken exactly once.
        assert_eq!(q.wake_waiters(25), 0);
        assert_eq!(q.wake_waiters(40), 2);
        assert!(q.iter().all(|v| v.woken == 1));
    }

    #[test]
    fn earliest_deadline_follows_the_waiters() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).waiting_until(50), 0);
        assert_eq!(q.earliest_deadline(), 50);
        q.push(Item::new(2, 1).waiting_until(30), 0);
        q.push(Item::new(3, 1).waiting_until(40), 0);
        assert_eq!(q.earliest_deadline(), 30);
        // Runnable, stopped and no-timer items do not move it.
        q.push(Item::new(4, 1).waiting_until(u64::MAX), 0);
        q.push(Item::new(5, 1), 0);
        q.push(Item::new(6, 1).stopped(), 0);
        assert_eq!(q.earliest_deadline(), 30);
        q.wake_waiters(30);
        assert_eq!(q.earliest_deadline(), 40);
        q.wake_waiters(45);
        assert_eq!(q.earliest_deadline(), 50);
        q.wake_waiters(50);
        // Only the waiter without a timer is left.
        assert_eq!(q.waiting_len(), 1);
        assert_eq!(q.earliest_deadline(), u64::MAX);
    }

    #[test]
    fn earliest_deadline_after_retain() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).waiting_until(10), 0);
        q.push(Item::new(2, 1).waiting_until(20), 0);
        q.retain(|v| v.id != 1);
        assert_eq!(q.earliest_deadline(), 20);
        q.retain(|_| false);
        assert_eq!(q.earliest_deadline(), u64::MAX);
    }

    #[test]
    fn stopped_items_stay_until_taken() {
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).stopped(), 0);
        q.push(Item::new(2, 1).stopped(), 0);
        assert_eq!(q.stopped_len(), 2);
        assert!(q.iter().all(|v| v.stopped == 1));
        // Neither time nor an interrupt makes a stopped item runnable.
        assert_eq!(q.wake_waiters(u64::MAX), 0);
        assert!(q.pop_best().is_none());
        assert!(q.take_stopped(|v| v.id == 9).is_none());
        let mut v = q.take_stopped(|v| v.id == 2).unwrap();
        assert_eq!((v.id, v.woken), (2, 0));
        assert_eq!(q.stopped_len(), 1);
        v.placement = Placement::Runnable;
        q.push_runnable(v);
        assert_eq!(drain(&mut q), [2]);
        assert_eq!(q.stopped_len(), 1);
    }

    #[test]
    fn push_runnable_keeps_the_item_as_it_is() {
        let vm = Rc::new(Vm::default());
        let mut q = RunQueue::new();
        q.push_runnable(Item::new(1, 1).of(&vm).stopped());
        assert_eq!((q.runnable_len(), q.stopped_len()), (1, 0));
        assert_eq!(q.iter().next().unwrap().stopped, 0);
        vm.dead.set(true);
        assert_eq!(q.runnable_len(), 1);
    }

    #[test]
    fn retain_and_iter_cover_every_list() {
        let vm = Rc::new(Vm::default());
        let mut q = RunQueue::new();
        q.push(Item::new(1, 1).of(&vm), 0);
        q.push(Item::new(2, 1), 0);
        q.push(Item::new(3, 1).of(&vm).waiting_until(10), 0);
        q.push(Item::new(4, 1).waiting_until(20), 0);
        q.push(Item::new(5, 1).of(&vm).stopped(), 0);
        q.push(Item::new(6, 1).stopped(), 0);
        let ids: Vec<u32> = q.iter().map(|v| v.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(q.earliest_deadline(), 10);
        q.retain(|v| !Rc::ptr_eq(&v.vm, &vm));
        let ids: Vec<u32> = q.iter().map(|v| v.id).collect();
        assert_eq!(ids, [2, 4, 6]);
        assert_eq!(q.earliest_deadline(), 20);
    }

    proptest! {
        /// Against a model: pop_best gives the highest priority, the oldest first,
        /// skipping items of paused VMs; waiters join the runnable items once due.
        #[test]
        fn matches_a_model(ops in prop::collection::vec((0u8..5, 0u8..4, 0u64..50), 1..200)) {
            let paused = Rc::new(Vm::default());
            paused.paused.set(true);
            let mut q = RunQueue::new();
            // (id, priority, runs, deadline or None if runnable), in queue order.
            let mut runnable: Vec<(u32, u8, bool)> = Vec::new();
            let mut waiting: Vec<(u32, u8, bool, u64)> = Vec::new();
            let mut now = 0;
            for (id, (op, prio, arg)) in (0u32..).zip(ops) {
                match op {
                    0 | 1 => {
                        let runs = op == 0;
                        let it = Item::new(id, prio);
                        let it = if runs { it } else { it.of(&paused) };
                        q.push(it, now);
                        runnable.push((id, prio, runs));
                    }
                    2 => {
                        let deadline = now + arg;
                        q.push(Item::new(id, prio).waiting_until(deadline), now);
                        if deadline <= now {
                            runnable.push((id, prio, true));
                        } else {
                            waiting.push((id, prio, true, deadline));
                        }
                    }
                    3 => {
                        now += arg;
                        let woken = q.wake_waiters(now);
                        let due = waiting.iter().filter(|w| w.3 <= now).count();
                        prop_assert_eq!(woken, due);
                        // The order among waiters woken together is the queue's own;
                        // take it from the queue and check it is the due set.
                        let tail: Vec<u32> =
                            q.runnable.iter().skip(runnable.len()).map(|v| v.id).collect();
                        let mut expect: Vec<u32> =
                            waiting.iter().filter(|w| w.3 <= now).map(|w| w.0).collect();
                        let mut got = tail.clone();
                        got.sort_unstable();
                        expect.sort_unstable();
                        prop_assert_eq!(got, expect);
                        for id in tail {
                            let w = waiting.iter().find(|w| w.0 == id).unwrap();
                            runnable.push((w.0, w.1, w.2));
                        }
                        waiting.retain(|w| w.3 > now);
                    }
                    _ => {
                        let best = runnable.iter().filter(|r| r.2).map(|r| r.1).max();
                        prop_assert_eq!(q.best_priority(), best);
                        let expect = best.map(|b| {
                            let i = runnable.iter().position(|r| r.2 && r.1 == b).unwrap();
                            runnable.remove(i).0
                        });
                        prop_assert_eq!(q.pop_best().map(|v| v.id), expect);
                    }
                }
                let earliest = waiting.iter().map(|w| w.3).min().unwrap_or(u64::MAX);
                prop_assert_eq!(q.earliest_deadline(), earliest);
                prop_assert_eq!(q.runnable_len(), runnable.len());
                prop_assert_eq!(q.waiting_len(), waiting.len());
            }
        }
    }
}
