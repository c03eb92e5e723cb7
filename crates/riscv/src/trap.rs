//! M-mode trap entry and exit.
//!
//! Every trap (from a guest in VS/VU-mode, or a hypervisor fault in M-mode) enters
//! [`diosix_trap_entry`]. `mscratch` always holds a [`TrapFrame`]: the running vCPU's
//! own (so a switch between vCPUs copies no registers), or the hart's while none
//! runs; either names the hart ([`TrapFrame::hart`]) and its stack. The entry
//! code swaps it with `sp`, saves the registers a Rust call may clobber (ra, t*, a*)
//! and the interrupted `sp` into the frame, switches to the hart's hypervisor stack and
//! calls `diosix_fast_trap(a0, .., a7)` (provided by the binary) with the interrupted
//! a0-a7 still in place, so an SBI call's arguments reach it without a load (it finds
//! the frame in `mscratch`). If that returns non-zero
//! it has completed the trap without switching context (an SBI call that only answers,
//! say): the same registers are restored and `mret` resumes. Otherwise the remaining
//! registers (gp, tp, s0-s11, still the interrupted context's because Rust preserved
//! them) are saved too and `diosix_trap_handler(frame)` runs; when it returns, every
//! GPR is restored from the frame it returned and `mret` resumes whatever context the
//! handler left in the frame and in `mepc`/`mstatus`.

/// The GPRs of the interrupted context plus the hypervisor stack pointer and hart of
/// the hart that runs it. Offsets are fixed: the assembly below depends on them.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct TrapFrame {
    /// x0..x31; slot 0 is unused (x0 is hardwired to zero).
    pub regs: [u64; 32],
    /// Top of this hart's hypervisor stack, loaded on every trap.
    pub hv_sp: u64,
    /// The hart's own state (the binary's per-hart structure), for the handler to
    /// find it from `mscratch`; opaque here.
    pub hart: u64,
}

/// Register indices in [`TrapFrame::regs`].
pub mod reg {
    /// Return address.
    pub const RA: usize = 1;
    /// Stack pointer.
    pub const SP: usize = 2;
    /// a0: first argument / SBI error.
    pub const A0: usize = 10;
    /// a1: second argument / SBI value.
    pub const A1: usize = 11;
    /// a6: SBI function ID.
    pub const A6: usize = 16;
    /// a7: SBI extension ID.
    pub const A7: usize = 17;
}

impl TrapFrame {
    /// An all-zero frame whose traps run on the stack ending at `hv_sp`.
    pub const fn new(hv_sp: u64) -> Self {
        Self {
            regs: [0; 32],
            hv_sp,
            hart: 0,
        }
    }
}

/// The registers a call into Rust may clobber (ra, t0-t6, a0-a7): saved on every
/// trap, and all a trap handled by the fast path restores.
macro_rules! for_each_caller_saved_gpr {
    ($m:ident) => {
        concat!(
            $m!(1),
            $m!(5),
            $m!(6),
            $m!(7),
            $m!(10),
            $m!(11),
            $m!(12),
            $m!(13),
            $m!(14),
            $m!(15),
            $m!(16),
            $m!(17),
            $m!(28),
            $m!(29),
            $m!(30),
            $m!(31)
        )
    };
}
/// The rest (gp, tp, s0-s11): a Rust function preserves them, so they are the guest's
/// until the slow path saves them, and only it restores them.
macro_rules! for_each_callee_saved_gpr {
    ($m:ident) => {
        concat!(
            $m!(3),
            $m!(4),
            $m!(8),
            $m!(9),
            $m!(18),
            $m!(19),
            $m!(20),
            $m!(21),
            $m!(22),
            $m!(23),
            $m!(24),
            $m!(25),
            $m!(26),
            $m!(27)
        )
    };
}
macro_rules! save_gpr {
    ($n:literal) => {
        concat!("sd x", $n, ", ", $n, "*8(sp)\n")
    };
}
macro_rules! save_gpr_a0 {
    ($n:literal) => {
        concat!("sd x", $n, ", ", $n, "*8(a0)\n")
    };
}
macro_rules! load_gpr {
    ($n:literal) => {
        concat!("ld x", $n, ", ", $n, "*8(sp)\n")
    };
}

core::arch::global_asm!(
    // Call-frame information in .debug_frame (not loaded): a debugger's backtrace ends
    // at the trap entry, since what a trap interrupted is not a caller of the handler.
    ".cfi_sections .debug_frame",
    ".section .text.trap, \"ax\"",
    ".globl diosix_trap_entry",
    ".balign 4",
    "diosix_trap_entry:",
    ".cfi_startproc",
    ".cfi_undefined ra",
    // sp <- frame, mscratch <- interrupted sp
    "csrrw sp, mscratch, sp",
    for_each_caller_saved_gpr!(save_gpr),
    // t0 <- interrupted sp, and mscratch holds the frame again for the next trap
    "csrrw t0, mscratch, sp",
    "sd t0, 2*8(sp)",
    "ld sp, 32*8(sp)",
    // The fast path, with a0-a7 still the interrupted context's (an ecall's
    // arguments): a trap it completes returns to the same context, whose gp, tp and
    // s-registers no Rust code has changed (the calling convention preserves them).
    "call diosix_fast_trap",
    "bnez a0, 1f",
    // The slow path may switch context or read every register: save the rest first.
    "csrr a0, mscratch",
    for_each_callee_saved_gpr!(save_gpr_a0),
    "call diosix_trap_handler",
    // fall through: a0 = frame to resume
    ".globl diosix_trap_return",
    "diosix_trap_return:",
    "mv sp, a0",
    for_each_callee_saved_gpr!(load_gpr),
    for_each_caller_saved_gpr!(load_gpr),
    "ld sp, 2*8(sp)",
    "mret",
    "1:",
    "csrr sp, mscratch",
    for_each_caller_saved_gpr!(load_gpr),
    "ld sp, 2*8(sp)",
    "mret",
    ".cfi_endproc",
);

extern "C" {
    fn diosix_trap_entry();
    fn diosix_trap_return(frame: *mut TrapFrame) -> !;
}

/// The address to put in `mtvec` (direct mode).
pub fn trap_vector() -> usize {
    diosix_trap_entry as *const () as usize
}

/// Installs `frame` as this hart's trap frame and points `mtvec` at the trap entry.
///
/// # Safety
/// `frame` must stay valid and exclusive to this hart for as long as traps can occur.
pub unsafe fn install(frame: *mut TrapFrame) {
    // SAFETY: the caller guarantees the frame's lifetime; mtvec gets the 4-byte aligned
    // entry point in direct mode.
    unsafe {
        crate::csr::mscratch::write(frame as usize);
        crate::csr::mtvec::write(trap_vector());
    }
}

/// The trap frame `mscratch` holds (the entry swaps it out and back before calling
/// the handler, so it is there whenever the hypervisor runs).
pub fn installed_frame() -> *mut TrapFrame {
    crate::csr::mscratch::read() as *mut TrapFrame
}

/// Makes `frame` the one the next trap saves into and the trap return restores.
///
/// # Safety
/// `frame` must stay valid, and used by no other hart, until another is set; its
/// `hv_sp` and `hart` must be this hart's.
pub unsafe fn set_frame(frame: *mut TrapFrame) {
    // SAFETY: the caller's contract.
    unsafe { crate::csr::mscratch::write(frame as usize) };
}

/// Leaves the hypervisor: restores the frame's GPRs and `mret`s into the context set up
/// in `mepc`/`mstatus` (and the H-extension CSRs).
///
/// # Safety
/// `frame` must be this hart's installed trap frame, and the CSRs must describe a guest
/// context the hypervisor set up.
pub unsafe fn enter(frame: *mut TrapFrame) -> ! {
    // SAFETY: forwarded contract.
    unsafe { diosix_trap_return(frame) }
}
