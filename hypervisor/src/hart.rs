//! Per-hart state. Each physical hart owns one [`HartLocal`] (its trap frame, the vCPU
//! it is running) and shares one [`HartShared`] (atomics other harts poke).

use crate::vcpu::Vcpu;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use diosix_riscv::csr;
use diosix_riscv::trap::TrapFrame;

/// Most harts this build brings up; later ones park. Must match `MAX_HARTS` in link.ld.
pub const MAX_HARTS: usize = 16;
/// Hypervisor stack bytes per hart. Must match `STACK_SIZE` in link.ld.
pub const STACK_SIZE: usize = 0x10000;

/// State only its own hart touches. `frame` must stay first: the trap entry's frame
/// pointer is also the pointer to this struct.
#[repr(C)]
pub struct HartLocal {
    /// The hart's own trap frame: `mscratch` points here while no vCPU runs (a
    /// running vCPU's traps save into its own frame, `GuestContext::frame`). Its
    /// `hv_sp` and `hart` are copied into each vCPU frame the hart loads.
    pub frame: TrapFrame,
    /// This hart's slot (index into per-hart arrays).
    pub slot: usize,
    /// The vCPU this hart is running, if any.
    pub current: Option<Box<Vcpu>>,
    /// `mtime` at which the current time slice ends.
    pub slice_end: u64,
    /// The hart's debug triggers hold a vCPU's (SBI DBTR): cleared on a switch to a
    /// vCPU without any.
    pub triggers_live: bool,
    /// Bit `i`: the hart's `mhpmcounter(3 + i)` holds a vCPU's counter (SBI PMU),
    /// cleared on a switch to a vCPU without it.
    pub pmu_live: u32,
    /// The hart's FP registers and `fcsr` are all zero (as a vCPU that never used FP
    /// has them), so loading such a vCPU can skip the FP restore.
    pub fp_zero: bool,
}

/// State other harts read or poke.
pub struct HartShared {
    /// Hardware hart ID (for the CLINT), valid once `online`.
    pub hart_id: AtomicUsize,
    /// The hart has finished its setup and schedules vCPUs.
    pub online: AtomicBool,
    /// Another hart asked this one to flush its VS-stage TLB and instruction cache.
    pub fence_request: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARED_INIT: HartShared = HartShared {
    hart_id: AtomicUsize::new(usize::MAX),
    online: AtomicBool::new(false),
    fence_request: AtomicBool::new(false),
};

/// Per-hart shared state, indexed by slot.
pub static SHARED: [HartShared; MAX_HARTS] = [SHARED_INIT; MAX_HARTS];

/// Harts idle in WFI, one bit per slot: a hart that makes a vCPU runnable wakes one.
pub static IDLE: AtomicUsize = AtomicUsize::new(0);

static mut LOCALS: [Option<HartLocal>; MAX_HARTS] = [const { None }; MAX_HARTS];

extern "C" {
    static __stacks_end: u8;
}

/// Sets up this hart: its local state, trap vector, delegation and counters.
pub fn init_this_hart(slot: usize, hart_id: usize) {
    // The linker symbol's address is the top of the stack area.
    let stacks_end = core::ptr::addr_of!(__stacks_end) as usize;
    let hv_sp = stacks_end - slot * STACK_SIZE;
    // SAFETY: slot is unique to this hart (claimed atomically at reset), so this hart
    // is the only one to touch LOCALS[slot].
    let local = unsafe {
        let locals = &mut *core::ptr::addr_of_mut!(LOCALS);
        locals[slot] = Some(HartLocal {
            frame: TrapFrame::new(hv_sp as u64),
            slot,
            current: None,
            slice_end: 0,
            triggers_live: false,
            pmu_live: 0,
            fp_zero: false,
        });
        locals[slot].as_mut().unwrap_unchecked()
    };
    // Every frame mscratch holds names its hart's local state (see `this_hart`).
    local.frame.hart = core::ptr::addr_of_mut!(*local) as u64;
    // SAFETY: the frame lives in a static for the rest of time and belongs to this hart.
    unsafe { diosix_riscv::trap::install(&mut local.frame) };
    crate::platform::init_hart_csrs();
    SHARED[slot].hart_id.store(hart_id, Ordering::Relaxed);
    SHARED[slot].online.store(true, Ordering::Release);
}

/// This hart's local state.
///
/// # Safety
/// The caller must not hold another reference obtained from this function (each trap
/// takes it once, at the top of the handler).
pub unsafe fn this_hart() -> &'static mut HartLocal {
    let frame = diosix_riscv::trap::installed_frame();
    // SAFETY: mscratch holds this hart's own frame or the running vCPU's, and either
    // names this hart's HartLocal in `hart` (set by init_this_hart, and by
    // `Vcpu::load` from the hart's frame); it lives in a static. Exclusivity is the
    // caller's contract.
    unsafe { &mut *((*frame).hart as *mut HartLocal) }
}

impl HartLocal {
    /// The running vCPU's registers as its last trap saved them (and as the trap
    /// return restores them); the hart's own frame's when none runs.
    pub fn guest_regs(&mut self) -> &mut [u64; 32] {
        match self.current.as_mut() {
            Some(v) => &mut v.ctx.frame.regs,
            None => &mut self.frame.regs,
        }
    }
}

/// Asks hart `slot` to look at its shared state (fences, newly runnable vCPUs).
pub fn kick(slot: usize) {
    let id = SHARED[slot].hart_id.load(Ordering::Relaxed);
    if id != usize::MAX {
        crate::platform::clint().send_msip(id);
    }
}

/// Wakes one idle hart, if there is one, so a newly runnable vCPU runs promptly.
pub fn wake_an_idle_hart() {
    // Ordered after our unlock of the run queue: a hart that found the queue locked
    // sets its IDLE bit and then re-checks the lock (`sched::next_vcpu`); one of the
    // two sides sees the other.
    core::sync::atomic::fence(Ordering::SeqCst);
    let idle = IDLE.load(Ordering::Acquire);
    if idle != 0 {
        kick(idle.trailing_zeros() as usize);
    }
}

/// Clears the kick (software interrupt) pending on hart `slot`, the calling hart: it
/// is looking at its shared state now.
pub fn clear_kick(slot: usize) {
    // Only when one is pending (`slot` is this hart, whose mip shows it): the CLINT
    // store is an MMIO write on every vCPU switch otherwise. A kick that lands just
    // after this check stays pending and is seen at the next look.
    if csr::mip::read() & csr::irq::MSIP != 0 {
        crate::platform::clint().clear_msip(SHARED[slot].hart_id.load(Ordering::Relaxed));
    }
}

/// Performs a remote fence another hart asked this one for. Flushing more than asked
/// (the whole VS-stage TLB of the running VMID, and the instruction cache) is always
/// correct.
pub fn service_fence_request(slot: usize) {
    if SHARED[slot].fence_request.swap(false, Ordering::AcqRel) {
        diosix_riscv::fence::fence_i();
        let mode = crate::guestmode::mode();
        mode.flush_guest_tlb();
        // Copy-on-write shootdowns ask for the G-stage one (in S-mode a changed PMP
        // is reloaded before the guest runs again: `Activation::refresh`).
        mode.flush_guest_memory();
    }
}

/// Asks every hart in `slots` except `my_slot` (and except `NOT_RUNNING`) for a fence
/// ([`service_fence_request`]) and waits until each has done it, serving requests aimed
/// at this hart meanwhile so two harts fencing each other cannot deadlock.
pub fn fence_other_harts(my_slot: usize, slots: impl IntoIterator<Item = usize>) {
    let mut waiting_on = 0usize;
    for slot in slots {
        if slot != crate::vcpu_shared::NOT_RUNNING && slot != my_slot && slot < SHARED.len() {
            SHARED[slot].fence_request.store(true, Ordering::SeqCst);
            kick(slot);
            waiting_on |= 1 << slot;
        }
    }
    while waiting_on != 0 {
        service_fence_request(my_slot);
        for (slot, shared) in SHARED.iter().enumerate() {
            if waiting_on & (1 << slot) != 0 && !shared.fence_request.load(Ordering::Acquire) {
                waiting_on &= !(1 << slot);
            }
        }
        core::hint::spin_loop();
    }
}
