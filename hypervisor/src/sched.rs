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
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use diosix_core::runqueue::{Placement, RunQueue, Schedulable};
use diosix_core::sbi::{HartState, Suspend};
use diosix_riscv::csr;
use spin::{Mutex, MutexGuard};

/// A time slice (10 ms), in timer ticks.
pub fn slice_ticks() -> u64 {
    platform::host().timebase_frequency / 100
}

/// How soon (10 µs) a hart that found the run queue busy looks at it again.
fn retry_ticks() -> u64 {
    (platform::host().timebase_frequency / 100_000).max(1)
}

/// How many times a hart polls a busy run queue before giving way.
const QUEUE_SPIN_LIMIT: usize = 64;

// vCPUs stay boxed: they move between the queue and harts by pointer, not by copying
// their register and FP state.
static RUNQ: Mutex<RunQueue<Box<Vcpu>>> = Mutex::new(RunQueue::new());

/// Earliest timer deadline among waiting vCPUs, so running harts can wake them.
static EARLIEST_WAITER: AtomicU64 = AtomicU64::new(u64::MAX);

/// Takes the run queue lock if it is free or becomes free within a short spin.
///
/// The timer and idle paths use this instead of waiting for the lock: the holder
/// may be delayed far longer than its critical section (on real hardware by its own
/// M-mode interrupt handling; under QEMU's round-robin TCG, by being switched out
/// mid-section for the rest of the other hart's time slice, tens of milliseconds
/// that a spinning hart burns as guest-visible time). Those paths have something
/// better to do than wait: run their guest, or sleep until kicked.
fn try_lock_queue() -> Option<MutexGuard<'static, RunQueue<Box<Vcpu>>>> {
    for _ in 0..QUEUE_SPIN_LIMIT {
        if !RUNQ.is_locked() {
            if let Some(q) = RUNQ.try_lock() {
                return Some(q);
            }
        }
        core::hint::spin_loop();
    }
    RUNQ.try_lock()
}

/// Publishes the queue's earliest waiter deadline (after any change to its waiters),
/// under the queue lock.
fn publish_earliest(q: &RunQueue<Box<Vcpu>>) {
    EARLIEST_WAITER.store(q.earliest_deadline(), Ordering::Release);
}

/// A vCPU's `wait` decides its list: runnable, waiting (WFI or HSM suspend: runnable
/// again once an enabled interrupt is pending) or stopped (HSM-stopped: runnable again
/// only through hart_start).
impl Schedulable for Box<Vcpu> {
    fn priority(&self) -> u8 {
        self.priority
    }

    fn can_run(&self) -> bool {
        self.vm.can_run()
    }

    fn is_dead(&self) -> bool {
        // Its VM was terminated while this vCPU was running: dropped, not queued.
        self.vm.dead.load(Ordering::Acquire)
    }

    fn placement(&self) -> Placement {
        match self.ctx.wait {
            Wait::None => Placement::Runnable,
            Wait::Wfi | Wait::Suspend(_) | Wait::IpcRecv(_) => Placement::Waiting,
            Wait::Stopped => Placement::Stopped,
        }
    }

    fn has_wakeup(&self, now: u64) -> bool {
        Vcpu::has_wakeup(self, now)
    }

    fn wake_deadline(&self) -> u64 {
        self.timer_wake_deadline()
    }

    /// A waiter's wake-up: WFI continues after the WFI; a retentive suspend returns
    /// SUCCESS after its ecall; a non-retentive one restarts at its resume address; an
    /// IPC receive answers what its sender delivered (or, woken by an interrupt, the
    /// a1 = 0 it was left with).
    fn wake(&mut self) {
        if let Wait::IpcRecv(_) = self.ctx.wait {
            if let Some(ret) = self.shared.take_ipc_answer() {
                self.ctx.frame.regs[diosix_riscv::trap::reg::A0] = ret.error as u64;
                self.ctx.frame.regs[diosix_riscv::trap::reg::A1] = ret.value as u64;
            }
        }
        if self.ctx.sta.shmem.is_some() {
            self.ctx.sta.ready(platform::now());
        }
        if let Wait::Suspend(Suspend::NonRetentive { resume, opaque }) = self.ctx.wait {
            self.reset_to(resume, opaque as u64);
        }
        if matches!(self.ctx.wait, Wait::Suspend(_)) {
            self.shared.set_state(HartState::Started);
        }
        self.ctx.wait = Wait::None;
    }

    fn on_stopped(&mut self) {
        // Only now, with the vCPU where hart_start can find it, is it STOPPED.
        self.shared.set_state(HartState::Stopped);
    }
}

/// Adds a vCPU to the run queue (in the list its `wait` says) and wakes an idle hart
/// if it is runnable.
pub fn enqueue(vcpu: Box<Vcpu>) {
    let runnable = vcpu.ctx.wait == Wait::None;
    let mut q = RUNQ.lock();
    q.push(vcpu, platform::now());
    publish_earliest(&q);
    drop(q);
    if runnable {
        hart::wake_an_idle_hart();
    }
}

/// Makes a stopped vCPU runnable at `pc` (HSM hart_start). The caller has already
/// moved its HSM state to StartPending.
pub fn start_stopped(vm: &Arc<Vm>, index: usize, pc: diosix_core::addr::Gpa, opaque: u64) -> bool {
    let mut q = RUNQ.lock();
    let Some(mut v) = q.take_stopped(|v| Arc::ptr_eq(&v.vm, vm) && v.shared.index == index) else {
        return false;
    };
    v.hart_reset(pc, opaque);
    v.ctx.wait = Wait::None;
    v.shared.set_state(HartState::Started);
    q.push_runnable(v);
    drop(q);
    hart::wake_an_idle_hart();
    true
}

/// Copies the state of every queued vCPU of `vm` (for FORK, with the VM held so none
/// of them is running).
pub fn snapshot(vm: &Arc<Vm>) -> Vec<crate::vcpu::VcpuState> {
    let q = RUNQ.lock();
    q.iter()
        .filter(|v| Arc::ptr_eq(&v.vm, vm))
        .map(|v| v.clone_state())
        .collect()
}

/// Drops every queued vCPU of a terminated VM (running ones are dropped by their
/// hart when it next traps and finds the VM dead).
pub fn reap(vm: &Arc<Vm>) {
    let mut q = RUNQ.lock();
    q.retain(|v| !Arc::ptr_eq(&v.vm, vm));
    publish_earliest(&q);
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
    let woke = q.wake_waiters(platform::now()) > 0;
    publish_earliest(&q);
    drop(q);
    if woke {
        hart::wake_an_idle_hart();
    }
}

/// Puts this hart's current vCPU back in the queue, marked with `wait`, and loads the
/// next vCPU to run into the hart (idling in WFI until there is one).
pub fn switch_away(hart: &mut HartLocal, wait: Wait) {
    let Some(mut v) = hart.current.take() else {
        let next = next_vcpu(hart);
        run(hart, next);
        return;
    };
    v.save();
    // SAFETY: the hart's own frame (its stack and state) for any trap until the
    // next vCPU's load: the one leaving may run on another hart as soon as it is
    // queued.
    unsafe { diosix_riscv::trap::set_frame(&mut hart.frame) };
    if let Some(pmu) = v.ctx.pmu.as_deref_mut() {
        crate::pmu::save(pmu);
    }
    v.ctx.wait = wait;
    if wait == Wait::None && v.ctx.sta.shmem.is_some() {
        v.ctx.sta.ready(platform::now());
    }
    // What `next_vcpu` does before it looks at the queue, done first, so that one
    // hold of the queue lock both queues this vCPU and picks the next.
    before_picking(hart.slot);
    let now = platform::now();
    let mut q = RUNQ.lock();
    // Under the queue lock, so a FORK's hold never sees this vCPU neither running
    // nor queued (see `with_queue_locked`).
    v.shared.running_on.store(NOT_RUNNING, Ordering::Release);
    // The other waiters first, then this vCPU, whose own wake-up `push` looks at.
    q.wake_waiters(now);
    q.push(v, now);
    publish_earliest(&q);
    let next = q.pop_best();
    if let Some(n) = next.as_ref() {
        // Claimed before the queue is unlocked: see `with_queue_locked`.
        n.shared.running_on.store(hart.slot, Ordering::SeqCst);
    }
    drop(q);
    let next = match next {
        Some(n) => n,
        None => next_vcpu(hart),
    };
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
    let Some(mut q) = try_lock_queue() else {
        // Another hart is in the queue (a scheduling hart wakes the waiters itself):
        // run our guest on and look again shortly, rather than wait for it.
        let retry = now + retry_ticks();
        if now >= hart.slice_end {
            hart.slice_end = retry;
        }
        set_hart_timer(hart, EARLIEST_WAITER.load(Ordering::Acquire).max(retry));
        return;
    };
    q.wake_waiters(now);
    publish_earliest(&q);
    let (best, expired) = (q.best_priority(), now >= hart.slice_end);
    drop(q);
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
    set_hart_timer(hart, EARLIEST_WAITER.load(Ordering::Acquire));
}

/// Programs this hart's mtimecmp for its guest's deadline (unless the guest has its
/// own Sstc comparator), its slice end or `waiters`, whichever comes first.
fn set_hart_timer(hart: &HartLocal, waiters: u64) {
    let guest = match hart.current.as_ref() {
        Some(v) if !platform::guest_sstc() => v.ctx.timer_deadline,
        _ => u64::MAX,
    };
    platform::set_timer(guest.min(hart.slice_end).min(waiters));
}

fn run(hart: &mut HartLocal, mut v: Box<Vcpu>) {
    let now = platform::now();
    v.shared.running_on.store(hart.slot, Ordering::SeqCst);
    // A copy-on-write shootdown that read `running_on` before the store above skipped
    // this hart: the flush in `load` must then see the mappings it changed first.
    core::sync::atomic::fence(Ordering::SeqCst);
    v.load(&hart.frame, now, &mut hart.fp_zero);
    crate::triggers::load(
        &mut hart.triggers_live,
        &v.ctx.dbtr,
        !crate::guestmode::is_pmp(),
    );
    crate::pmu::load(&mut hart.pmu_live, v.ctx.pmu.as_deref());
    if v.ctx.sta.loaded(now, platform::host().timebase_frequency) {
        let vm = v.vm.clone();
        crate::steal::publish(&vm, hart.slot, &mut v.ctx.sta);
    }
    hart.current = Some(v);
    hart.slice_end = now + slice_ticks();
    program_timer(hart);
}

/// What an idle hart does with a pending machine external interrupt (set once at
/// boot by `crate::devices`, which sits above the scheduler).
static EXTERNAL_INTERRUPTS: spin::Once<fn(usize)> = spin::Once::new();

/// Sets what idle harts do with machine external interrupts: `handler(slot)`.
pub fn on_external_interrupts(handler: fn(usize)) {
    EXTERNAL_INTERRUPTS.call_once(|| handler);
}

/// Sleeps in WFI until an M-level interrupt is pending: the timer (a waiter's
/// deadline), a kick from another hart, or a host device.
///
/// WFI also ends at once while any interrupt enabled in `mie` is pending, and the
/// VS-level bits (aliases of `hie`, always enabled) hold the last vCPU's state: an
/// expired `vstimecmp` or an injected `hvip` bit, both saved with that vCPU. Left
/// enabled, they made an idle hart spin through this loop instead of sleeping (under
/// icount, taking instructions from the harts doing work: the Root VM's Linux reached
/// `/init` 4.5% later on 4 harts than it does now). Only M-level interrupts
/// decide a wake-up here; the scheduler reads the vCPUs' saved state itself. Out of
/// line: only idle harts come here, and inlined it cost every vCPU switch ten
/// instructions.
#[inline(never)]
fn wait_for_interrupt() {
    let enabled = csr::mie::read();
    // SAFETY: only narrows, then restores, which pending interrupts end the WFI;
    // M-mode interrupts stay globally disabled (MIE=0) so none traps here.
    unsafe {
        csr::mie::write(enabled & (csr::irq::MTIP | csr::irq::MSIP | csr::irq::MEIP));
        core::arch::asm!("wfi");
        csr::mie::write(enabled);
    }
}

/// What a hart does each time before it looks for a vCPU to run: takes its kick,
/// serves a fence request, and passes on a pending host interrupt (interrupts routed
/// to guests wake an idle hart's WFI too, MEIE). Only when the line is up: the
/// handler's PLIC claim is an MMIO read, on every switch otherwise.
fn before_picking(slot: usize) {
    hart::clear_kick(slot);
    crate::hart::service_fence_request(slot);
    if csr::mip::read() & csr::irq::MEIP != 0 {
        if let Some(handler) = EXTERNAL_INTERRUPTS.get() {
            handler(slot);
        }
    }
}

/// Takes the next runnable vCPU, sleeping in WFI while there is none.
fn next_vcpu(hart: &mut HartLocal) -> Box<Vcpu> {
    let bit = 1usize << hart.slot;
    loop {
        before_picking(hart.slot);
        let now = platform::now();
        let Some(mut q) = try_lock_queue() else {
            // Sleep rather than spin while another hart is in the queue: marked idle
            // first, so a hart that makes a vCPU runnable after this check kicks us
            // (it reads IDLE after unlocking; see `hart::wake_an_idle_hart`).
            IDLE.fetch_or(bit, Ordering::SeqCst);
            if RUNQ.is_locked() {
                let waiters = EARLIEST_WAITER.load(Ordering::Acquire);
                platform::set_timer(waiters.max(now + retry_ticks()));
                wait_for_interrupt();
            }
            IDLE.fetch_and(!bit, Ordering::AcqRel);
            continue;
        };
        q.wake_waiters(now);
        publish_earliest(&q);
        if let Some(v) = q.pop_best() {
            // Claimed before the queue is unlocked: see `with_queue_locked`.
            v.shared.running_on.store(hart.slot, Ordering::SeqCst);
            drop(q);
            return v;
        }
        IDLE.fetch_or(bit, Ordering::AcqRel);
        drop(q);
        platform::set_timer(EARLIEST_WAITER.load(Ordering::Acquire));
        wait_for_interrupt();
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
    unsafe { diosix_riscv::trap::enter(diosix_riscv::trap::installed_frame()) }
}
