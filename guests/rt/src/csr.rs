//! The few supervisor CSRs the guests touch.

/// `sie`/`sip` bit of supervisor software interrupts.
pub const SSI: usize = 1 << 1;
/// `sie`/`sip` bit of supervisor timer interrupts.
pub const STI: usize = 1 << 5;
/// `sie`/`sip` bit of supervisor external interrupts.
pub const SEI: usize = 1 << 9;
/// `sstatus.SIE`.
pub const SSTATUS_SIE: usize = 1 << 1;

macro_rules! csr_fns {
    ($read:ident, $set:ident, $clear:ident, $csr:literal) => {
        /// Reads the CSR.
        #[inline(always)]
        pub fn $read() -> usize {
            let v: usize;
            // SAFETY: reading this CSR has no side effects.
            unsafe { core::arch::asm!(concat!("csrr {}, ", $csr), out(reg) v, options(nomem, nostack)) };
            v
        }
        /// Sets the given bits in the CSR.
        #[inline(always)]
        pub fn $set(bits: usize) {
            // SAFETY: the guests only set interrupt-enable/pending bits, which change
            // when interrupts are taken but never break memory safety.
            unsafe { core::arch::asm!(concat!("csrs ", $csr, ", {}"), in(reg) bits, options(nostack)) };
        }
        /// Clears the given bits in the CSR.
        #[inline(always)]
        pub fn $clear(bits: usize) {
            // SAFETY: as for setting.
            unsafe { core::arch::asm!(concat!("csrc ", $csr, ", {}"), in(reg) bits, options(nostack)) };
        }
    };
}

csr_fns!(sie, sie_set, sie_clear, "sie");
csr_fns!(sip, sip_set, sip_clear, "sip");
csr_fns!(sstatus, sstatus_set, sstatus_clear, "sstatus");

/// Reads `time`.
#[inline(always)]
pub fn time() -> u64 {
    let v: u64;
    // SAFETY: reading the time counter has no side effects.
    unsafe { core::arch::asm!("csrr {}, time", out(reg) v, options(nomem, nostack)) };
    v
}

/// Reads `instret`.
#[inline(always)]
pub fn instret() -> u64 {
    let v: u64;
    // SAFETY: reading the instruction counter has no side effects.
    unsafe { core::arch::asm!("csrr {}, instret", out(reg) v, options(nomem, nostack)) };
    v
}

/// Waits for an interrupt; returns when one is pending (even with `sstatus.SIE` clear).
#[inline(always)]
pub fn wfi() {
    // SAFETY: wfi only idles the hart until an interrupt is pending.
    unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
}

/// Full memory and instruction fence (`fence` + `fence.i`).
#[inline(always)]
pub fn fence_all() {
    // SAFETY: fences only order memory accesses and instruction fetch.
    unsafe { core::arch::asm!("fence rw, rw", "fence.i", options(nostack)) };
}
