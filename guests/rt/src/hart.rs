//! Harts: who am I, and starting other harts (or resuming this one) in Rust.

use crate::{sbi, MAX_HARTS};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The Rust function a hart runs when it next enters through the secondary entry
/// point (HSM start, or resume from a non-retentive suspend). 0 = none.
static ENTRY: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
/// The boot hart id, recorded before the guest's main runs.
static BOOT_HART: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Function run by a started hart: `(hartid, opaque)`. When it returns, the hart stops.
pub type HartFn = fn(usize, usize);

/// This hart's id (kept in `tp` since entry).
#[inline(always)]
pub fn id() -> usize {
    let v: usize;
    // SAFETY: reading tp has no side effects; the entry code stored the hart id there.
    unsafe { core::arch::asm!("mv {}, tp", out(reg) v, options(nomem, nostack)) };
    v
}

/// The hart that ran `_start`.
pub fn boot_hart() -> usize {
    BOOT_HART.load(Ordering::Relaxed)
}

pub(crate) fn mark_booted(hartid: usize) {
    BOOT_HART.store(hartid, Ordering::Relaxed);
}

/// Address of the runtime's secondary entry point (sets up the hart's stack, then
/// calls the function registered for it with a0 = hart id, a1 = opaque).
pub fn secondary_entry_addr() -> usize {
    extern "C" {
        fn __rt_secondary_entry();
    }
    __rt_secondary_entry as *const () as usize
}

/// Starts `hartid` (HSM hart_start) running `f(hartid, opaque)`.
pub fn start(hartid: usize, f: HartFn, opaque: usize) -> sbi::SbiRet {
    if hartid >= MAX_HARTS {
        return sbi::SbiRet {
            error: sbi::error::INVALID_PARAM,
            value: 0,
        };
    }
    ENTRY[hartid].store(f as usize, Ordering::Release);
    // SAFETY: the entry point is the runtime's, which sets up the hart's own stack
    // before running Rust.
    unsafe { sbi::hart_start(hartid, secondary_entry_addr(), opaque) }
}

/// Non-retentive suspend (type 0x8000_0000): on success the hart resumes in
/// `f(hartid, opaque)` on a fresh stack and this call never returns; it returns only
/// the SBI error if the suspend was refused.
pub fn suspend_non_retentive(f: HartFn, opaque: usize) -> sbi::SbiRet {
    let me = id();
    ENTRY[me].store(f as usize, Ordering::Release);
    // SAFETY: on success the hart restarts at the runtime entry with a fresh stack and
    // calls `f`; nothing on the current stack is referenced again.
    unsafe {
        sbi::sbi_call(
            sbi::eid::HSM,
            3,
            [0x8000_0000, secondary_entry_addr(), opaque, 0, 0, 0],
        )
    }
}

/// SBI SUSP system suspend of this VM with `sleep_type` (0 = SUSPEND_TO_RAM; the
/// upper 32 bits are the caller's to fill, the SBI ignores them): on success this hart
/// resumes in `f(hartid, opaque)` on a fresh stack and this never returns; otherwise
/// the error.
pub fn system_suspend(sleep_type: usize, f: HartFn, opaque: usize) -> sbi::SbiRet {
    system_suspend_at(sleep_type, secondary_entry_addr(), f, opaque)
}

/// [`system_suspend`] with an explicit resume address (for refusals of bad ones).
pub fn system_suspend_at(
    sleep_type: usize,
    resume: usize,
    f: HartFn,
    opaque: usize,
) -> sbi::SbiRet {
    let me = id();
    ENTRY[me].store(f as usize, Ordering::Release);
    // SAFETY: on success the hart restarts at `resume` (the runtime entry, with a fresh
    // stack, for the addresses callers expect to succeed); nothing on the current stack
    // is referenced again.
    unsafe { sbi::sbi_call(sbi::eid::SUSP, 0, [sleep_type, resume, opaque, 0, 0, 0]) }
}

/// Called by `__rt_secondary_entry` on a started or resumed hart.
#[no_mangle]
extern "C" fn __rt_secondary(hartid: usize, opaque: usize) -> ! {
    let f = ENTRY[hartid].load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `start`/`suspend_non_retentive` store into ENTRY, always a
        // valid `HartFn`.
        let f: HartFn = unsafe { core::mem::transmute::<usize, HartFn>(f) };
        f(hartid, opaque);
    }
    let ret = sbi::hart_stop();
    panic!("hart_stop failed: {:?}", ret);
}
