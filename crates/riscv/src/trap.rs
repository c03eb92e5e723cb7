//! M-mode trap entry and exit.
//!
//! Every trap (from a guest in VS/VU-mode, or a hypervisor fault in M-mode) enters
//! [`diosix_trap_entry`]. `mscratch` always holds this hart's [`TrapFrame`]; the entry
//! code swaps it with `sp`, saves the interrupted GPRs into the frame, switches to the
//! hart's hypervisor stack and calls `diosix_trap_handler(frame)` (provided by the
//! binary). When that returns, the frame's GPRs are restored and `mret` resumes
//! whatever context the handler left in the frame and in `mepc`/`mstatus`.

/// The GPRs of the interrupted context plus this hart's hypervisor stack pointer.
/// Offsets are fixed: the assembly below depends on them.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0..x31; slot 0 is unused (x0 is hardwired to zero).
    pub regs: [u64; 32],
    /// Top of this hart's hypervisor stack, loaded on every trap.
    pub hv_sp: u64,
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
        }
    }
}

macro_rules! for_each_saved_gpr {
    ($m:ident) => {
        concat!(
            $m!(1),
            $m!(3),
            $m!(4),
            $m!(5),
            $m!(6),
            $m!(7),
            $m!(8),
            $m!(9),
            $m!(10),
            $m!(11),
            $m!(12),
            $m!(13),
            $m!(14),
            $m!(15),
            $m!(16),
            $m!(17),
            $m!(18),
            $m!(19),
            $m!(20),
            $m!(21),
            $m!(22),
            $m!(23),
            $m!(24),
            $m!(25),
            $m!(26),
            $m!(27),
            $m!(28),
            $m!(29),
            $m!(30),
            $m!(31)
        )
    };
}
macro_rules! save_gpr {
    ($n:literal) => {
        concat!("sd x", $n, ", ", $n, "*8(sp)\n")
    };
}
macro_rules! load_gpr {
    ($n:literal) => {
        concat!("ld x", $n, ", ", $n, "*8(sp)\n")
    };
}

core::arch::global_asm!(
    ".section .text.trap, \"ax\"",
    ".globl diosix_trap_entry",
    ".balign 4",
    "diosix_trap_entry:",
    // sp <- frame, mscratch <- interrupted sp
    "csrrw sp, mscratch, sp",
    for_each_saved_gpr!(save_gpr),
    "csrr t0, mscratch",
    "sd t0, 2*8(sp)",
    // mscratch holds the frame again for the next trap
    "csrw mscratch, sp",
    "mv a0, sp",
    "ld sp, 32*8(sp)",
    "call diosix_trap_handler",
    // fall through: a0 = frame to resume
    ".globl diosix_trap_return",
    "diosix_trap_return:",
    "mv sp, a0",
    for_each_saved_gpr!(load_gpr),
    "ld sp, 2*8(sp)",
    "mret",
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

/// This hart's trap frame as [`install`] left it: `mscratch` holds it whenever the
/// hypervisor runs (the entry swaps it out and back before calling the handler).
pub fn installed_frame() -> *mut TrapFrame {
    crate::csr::mscratch::read() as *mut TrapFrame
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
