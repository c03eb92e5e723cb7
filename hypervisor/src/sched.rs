//! vCPU scheduling: one run queue shared by every hart; strict priority between
//! levels, round robin within a level, fixed time slices, idle harts asleep in WFI.
//!
//! A vCPU is owned by exactly one place: the run queue (runnable, waiting or
//! stopped) or the hart running it (`HartLocal::current`). The hot path — an SBI call
//! that returns to the same vCPU — takes no lock.

use crate::hart::{self, HartLocal, IDLE};
use crate::platform;
use crate::vcpu::{Vcpu, Wait};
use crate::vcpu_shared::NOT_RUNNING;
use crate::vm::Vm;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use diosix_core::sbi::{HartState, Suspend};
use spin::Mutex;

/// Time slice: 10 ms at the host's timebase.
/// A time slice, in timer ticks.
pub fn slice_ticks() -> u64 {
    platform::host().timebase_frequency / 100
}

// vCPUs stay boxed: they move between the queue and harts by pointer, not by copying
// their register and FP state.
#[allow(clippy::vec_box)]
struct RunQueue {
    runnable: VecDeque<Box<Vcpu>>,
    /// In WFI or HSM suspend: runnable again once an enabled interrupt is pending.
    waiting: Vec<Box<Vcpu>>,
    /// HSM-stopped: runnable again only through hart_start.
    stopped: Vec<Box<Vcpu>>,
}

static RUNQ: Mutex<RunQueue> = Mutex::new(RunQueue {
    runnable: VecDeque::new(),
    waiting: Vec::new(),
    stopped: Vec::new(),
});

/// Earliest timer deadline among waiting vCPUs, so running harts can wake them.
static EARLIEST_WAITER: AtomicU64 = AtomicU64::new(u64::MAX);

impl RunQueue {
    fn push(&mut self, vcpu: Box<Vcpu>, now: u64) {
        if vcpu.vm.dead.load(Ordering::Acquire) {
            // Its VM was terminated while this vCPU was running: drop it here.
            return;
        }
        match vcpu.ctx.wait {
            Wait::None => self.runnable.push_back(vcpu),
            Wait::Stopped => {
                // Only now, with the vCPU where hart_start can find it, is it STOPPED.
                vcpu.shared.set_state(HartState::Stopped);
                self.stopped.push(vcpu);
            }
            Wait::Wfi | Wait::Suspend(_) => {
                if vcpu.has_wakeup(now) {
                    self.runnable.push_back(wake(vcpu));
                } else {
                    self.waiting.push(vcpu);
                }
            }
        }
        self.update_earliest();
    }

    /// Moves waiters with a pending, enabled interrupt (or an expired timer) to the
    /// runnable queue.
    fn wake_waiters(&mut self, now: u64) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].has_wakeup(now) {
                let v = self.waiting.swap_remove(i);
                self.runnable.push_back(wake(v));
            } else {
                i += 1;
            }
        }
        self.update_earliest();
    }

    fn update_earliest(&self) {
        let earliest = self
            .waiting
            .iter()
            .map(|v| v.ctx.timer_deadline)
            .min()
            .unwrap_or(u64::MAX);
        EARLIEST_WAITER.store(earliest, Ordering::Release);
    }

    /// The first vCPU of the highest priority present whose VM may run.
    fn pop_best(&mut self) -> Option<Box<Vcpu>> {
        let best = self.best_priority()?;
        let i = self
            .runnable
            .iter()
            .position(|v| v.priority == best && v.vm.can_run())?;
        self.runnable.remove(i)
    }

    fn best_priority(&self) -> Option<u8> {
        self.runnable
            .iter()
            .filter(|v| v.vm.can_run())
            .map(|v| v.priority)
            .max()
    }
}

/// A waiter's wake-up: WFI continues after the WFI; a retentive suspend returns
/// SUCCESS after its ecall; a non-retentive one restarts at its resume address.
fn wake(mut v: Box<Vcpu>) -> Box<Vcpu> {
    if let Wait::Suspend(Suspend::NonRetentive { resume, opaque }) = v.ctx.wait {
        v.reset_to(resume, opaque as u64);
    }
    if matches!(v.ctx.wait, Wait::Suspend(_)) {
        v.shared.set_state(HartState::Started);
    }
    v.ctx.wait = Wait::None;
    v
}

/// Adds a vCPU to the run queue (in the list its `wait` says) and wakes an idle hart
/// if it is runnable.
pub fn enqueue(vcpu: Box<Vcpu>) {
    let runnable = vcpu.ctx.wait == Wait::None;
    RUNQ.lock().push(vcpu, platform::now());
    if runnable {
        hart::wake_an_idle_hart();
    }
}

/// Makes a stopped vCPU runnable at `pc` (HSM hart_start). The caller has already
/// moved its HSM state to StartPending.
pub fn start_stopped(vm: &Arc<Vm>, index: usize, pc: diosix_core::addr::Gpa, opaque: u64) -> bool {
    let mut q = RUNQ.lock();
    let Some(i) = q
        .stopped
        .iter()
        .position(|v| Arc::ptr_eq(&v.vm, vm) && v.shared.index == index)
    else {
        return false;
    };
    let mut v = q.stopped.swap_remove(i);
    v.reset_to(pc, opaque);
    v.ctx.wait = Wait::None;
    v.shared.set_state(HartState::Started);
    q.runnable.push_back(v);
    drop(q);
    hart::wake_an_idle_hart();
    true
}

/// Copies the state of every queued vCPU of `vm` (for FORK, with the VM held so none
/// of them is running).
pub fn snapshot(vm: &Arc<Vm>) -> Vec<crate::vcpu::VcpuState> {
    let q = RUNQ.lock();
    q.runnable
        .iter()
        .chain(q.waiting.iter())
        .chain(q.stopped.iter())
        .filter(|v| Arc::ptr_eq(&v.vm, vm))
        .map(|v| v.clone_state())
        .collect()
}

/// Drops every queued vCPU of a terminated VM (running ones are dropped by their
/// hart when it next traps and finds the VM dead).
pub fn reap(vm: &Arc<Vm>) {
    let mut q = RUNQ.lock();
    q.runnable.retain(|v| !Arc::ptr_eq(&v.vm, vm));
    q.waiting.retain(|v| !Arc::ptr_eq(&v.vm, vm));
    q.stopped.retain(|v| !Arc::ptr_eq(&v.vm, vm));
    q.update_earliest();
}

/// Runs `f` with the run queue locked. Every vCPU's `running_on` changes only under
/// this lock (when it is taken from the queue and when it is put back), so inside `f`
/// each vCPU is either queued or marked as running on its hart: none is in between.
pub fn with_queue_locked<T>(f: impl FnOnce() -> T) -> T {
    let _q = RUNQ.lock();
    f()
}

/// Re-checks waiters after another vCPU raised an interrupt for one of them.
pub fn poke_waiters() {
    let mut q = RUNQ.lock();
    let before = q.runnable.len();
    q.wake_waiters(platform::now());
    let woke = q.runnable.len() > before;
    drop(q);
    if woke {
        hart::wake_an_idle_hart();
    }
}

/// Puts this hart's current vCPU back in the queue, marked with `wait`, and loads the
/// next vCPU to run into the hart (idling in WFI until there is one).
pub fn switch_away(hart: &mut HartLocal, wait: Wait) {
    if let Some(mut v) = hart.current.take() {
        v.save(&hart.frame);
        v.ctx.wait = wait;
        // Under the queue lock, so a FORK's hold never sees this vCPU neither running
        // nor queued (see `with_queue_locked`).
        let mut q = RUNQ.lock();
        v.shared.running_on.store(NOT_RUNNING, Ordering::Release);
        q.push(v, platform::now());
    }
    let next = next_vcpu(hart);
    run(hart, next);
}

/// Called on every timer interrupt: latches expired guest timers, wakes waiters,
/// preempts the current vCPU at the end of its slice if another of at least its
/// priority is runnable, and reprograms this hart's timer.
pub fn tick(hart: &mut HartLocal) {
    let now = platform::now();
    if let Some(v) = hart.current.as_mut() {
        v.merge_pending_live(now);
    }
    let (best, expired) = {
        let mut q = RUNQ.lock();
        q.wake_waiters(now);
        (q.best_priority(), now >= hart.slice_end)
    };
    let prio = hart
        .current
        .as_ref()
        .filter(|v| v.vm.can_run())
        .map(|v| v.priority);
    let preempt = match (best, prio) {
        (Some(b), Some(p)) => b > p || (b == p && expired),
        (Some(_), None) => true,
        _ => false,
    };
    if preempt {
        switch_away(hart, Wait::None);
    } else {
        if expired {
            hart.slice_end = now + slice_ticks();
        }
        program_timer(hart);
    }
}

/// Programs this hart's mtimecmp for the next event it must notice.
pub fn program_timer(hart: &HartLocal) {
    let guest = hart
        .current
        .as_ref()
        .map_or(u64::MAX, |v| v.ctx.timer_deadline);
    let deadline = guest
        .min(hart.slice_end)
        .min(EARLIEST_WAITER.load(Ordering::Acquire));
    platform::set_timer(deadline);
}

fn run(hart: &mut HartLocal, mut v: Box<Vcpu>) {
    let now = platform::now();
    v.shared.running_on.store(hart.slot, Ordering::SeqCst);
    // A copy-on-write shootdown that read `running_on` before the store above skipped
    // this hart: the flush in `load` must then see the mappings it changed first.
    core::sync::atomic::fence(Ordering::SeqCst);
    v.load(&mut hart.frame, now);
    hart.current = Some(v);
    hart.slice_end = now + slice_ticks();
    program_timer(hart);
}

/// Takes the next runnable vCPU, sleeping in WFI while there is none.
fn next_vcpu(hart: &mut HartLocal) -> Box<Vcpu> {
    let bit = 1usize << hart.slot;
    loop {
        hart::clear_kick(hart.slot);
        crate::hart::service_fence_request(hart.slot);
        let now = platform::now();
        let mut q = RUNQ.lock();
        q.wake_waiters(now);
        if let Some(v) = q.pop_best() {
            // Claimed before the queue is unlocked: see `with_queue_locked`.
            v.shared.running_on.store(hart.slot, Ordering::SeqCst);
            drop(q);
            return v;
        }
        IDLE.fetch_or(bit, Ordering::AcqRel);
        drop(q);
        platform::set_timer(EARLIEST_WAITER.load(Ordering::Acquire));
        // SAFETY: wfi only waits; M-mode interrupts stay globally disabled (MIE=0),
        // so a pending MTIP/MSIP wakes us without trapping.
        unsafe { core::arch::asm!("wfi") };
        IDLE.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Each hart's scheduler entry after boot: finds a vCPU and enters it.
pub fn run_forever() -> ! {
    // SAFETY: called once per hart, outside any trap, after init_this_hart.
    let hart = unsafe { hart::this_hart() };
    let next = next_vcpu(hart);
    run(hart, next);
    // SAFETY: the frame is this hart's installed trap frame and run() set up the
    // guest context in the CSRs.
    unsafe { diosix_riscv::trap::enter(&mut hart.frame) }
}
