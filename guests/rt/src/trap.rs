//! A tiny trap handler: counts supervisor timer and software interrupts per hart.
//!
//! On a timer interrupt it pushes the deadline to "never" (set_timer(u64::MAX)), which
//! the SBI spec defines as clearing the pending timer; on a software interrupt it
//! clears `sip.SSIP`. Any exception is a bug in the guest and panics, except
//! breakpoints, access, misaligned and load/store page faults inside [`recovering`].

use crate::{csr, sbi, MAX_HARTS};
use core::sync::atomic::{AtomicUsize, Ordering};

static TIMER: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
/// Per hart: access and misaligned faults are skipped over, not fatal (see
/// [`recovering`]).
static RECOVER: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
/// Per hart: faults skipped over while recovering.
static RECOVERED: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
static SOFT: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];

// Saves the caller-saved integer registers (the Rust handler preserves the rest) and
// returns with sret. The handler is integer-only code, so FP registers need no saving.
core::arch::global_asm!(
    r#"
    .section .text.rt_trap, "ax"
    .globl __rt_trap_vector
    .p2align 2
__rt_trap_vector:
    addi    sp, sp, -128
    sd      ra, 0(sp)
    sd      t0, 8(sp)
    sd      t1, 16(sp)
    sd      t2, 24(sp)
    sd      a0, 32(sp)
    sd      a1, 40(sp)
    sd      a2, 48(sp)
    sd      a3, 56(sp)
    sd      a4, 64(sp)
    sd      a5, 72(sp)
    sd      a6, 80(sp)
    sd      a7, 88(sp)
    sd      t3, 96(sp)
    sd      t4, 104(sp)
    sd      t5, 112(sp)
    sd      t6, 120(sp)
    csrr    a0, scause
    csrr    a1, sepc
    csrr    a2, stval
    call    __rt_trap
    ld      ra, 0(sp)
    ld      t0, 8(sp)
    ld      t1, 16(sp)
    ld      t2, 24(sp)
    ld      a0, 32(sp)
    ld      a1, 40(sp)
    ld      a2, 48(sp)
    ld      a3, 56(sp)
    ld      a4, 64(sp)
    ld      a5, 72(sp)
    ld      a6, 80(sp)
    ld      a7, 88(sp)
    ld      t3, 96(sp)
    ld      t4, 104(sp)
    ld      t5, 112(sp)
    ld      t6, 120(sp)
    addi    sp, sp, 128
    sret
    "#
);

const INTERRUPT: usize = 1 << 63;

#[no_mangle]
extern "C" fn __rt_trap(scause: usize, sepc: usize, stval: usize) {
    let hart = crate::hart::id() % MAX_HARTS;
    match scause {
        c if c == INTERRUPT | 5 => {
            sbi::set_timer(u64::MAX);
            TIMER[hart].fetch_add(1, Ordering::AcqRel);
        }
        c if c == INTERRUPT | 1 => {
            csr::sip_clear(csr::SSI);
            SOFT[hart].fetch_add(1, Ordering::AcqRel);
        }
        // Breakpoint (3: a debug trigger), misaligned load/store (4, 6), load/store
        // access fault (5, 7) or load/store page fault (13, 15) while recovering: step
        // over the instruction (2 or 4 bytes; the code runs from RAM at its own
        // address, so sepc is readable).
        3..=7 | 13 | 15 if RECOVER[hart].load(Ordering::Acquire) != 0 => {
            RECOVERED[hart].fetch_add(1, Ordering::AcqRel);
            // SAFETY: sepc is the address of the instruction that just trapped.
            let low = unsafe { core::ptr::read_volatile(sepc as *const u16) };
            let len = if low & 3 == 3 { 4 } else { 2 };
            // SAFETY: resumes after that instruction; its destination keeps its value.
            unsafe { core::arch::asm!("csrw sepc, {}", in(reg) sepc + len, options(nostack)) };
        }
        _ => panic!("unexpected trap: scause {scause:#x} sepc {sepc:#x} stval {stval:#x}"),
    }
}

/// Points `stvec` at the runtime's handler (direct mode) on the calling hart.
pub fn install() {
    extern "C" {
        fn __rt_trap_vector();
    }
    let v = __rt_trap_vector as *const () as usize;
    // SAFETY: the vector is 4-byte aligned code that saves and restores every register
    // it and the Rust handler clobber.
    unsafe { core::arch::asm!("csrw stvec, {}", in(reg) v, options(nostack)) };
}

/// Runs `f` on this hart with load/store access faults, page faults and misaligned
/// accesses skipped over instead of fatal (the trap handler must be installed); returns how
/// many were skipped. For probing what a device does with accesses it may refuse.
pub fn recovering(f: impl FnOnce()) -> usize {
    let hart = crate::hart::id() % MAX_HARTS;
    let before = RECOVERED[hart].load(Ordering::Acquire);
    RECOVER[hart].store(1, Ordering::Release);
    f();
    RECOVER[hart].store(0, Ordering::Release);
    RECOVERED[hart].load(Ordering::Acquire) - before
}

/// Sets `sstatus.SIE`: interrupts enabled in `sie` are taken from now on.
pub fn enable() {
    csr::sstatus_set(csr::SSTATUS_SIE);
}

/// Clears `sstatus.SIE`.
pub fn disable() {
    csr::sstatus_clear(csr::SSTATUS_SIE);
}

/// Timer interrupts taken so far by `hart`.
pub fn timer_count(hart: usize) -> usize {
    TIMER[hart % MAX_HARTS].load(Ordering::Acquire)
}

/// Software interrupts (IPIs) taken so far by `hart`.
pub fn soft_count(hart: usize) -> usize {
    SOFT[hart % MAX_HARTS].load(Ordering::Acquire)
}

/// Idles in `wfi` until `cond` holds, taking interrupts through the handler meanwhile.
///
/// `cond` is checked with `sstatus.SIE` clear, so an interrupt arriving between the
/// check and `wfi` stays pending and makes `wfi` return at once, instead of being
/// handled just before `wfi` and leaving the hart asleep with nothing left to wake it.
/// Interrupts are enabled (`sstatus.SIE` set) on return.
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    loop {
        disable();
        if cond() {
            enable();
            return;
        }
        csr::wfi();
        enable();
    }
}
