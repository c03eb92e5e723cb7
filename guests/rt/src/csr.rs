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

/// Reads the user-level counter CSR `csr` (`cycle` 0xC00 to `hpmcounter31` 0xC1F, as
/// the SBI PMU's `counter_get_info` names them); `None` for any other number.
///
/// The CSR must be readable (the SBI implementation enables the counters it hands
/// out), or the read traps.
pub fn read_counter(csr: usize) -> Option<u64> {
    macro_rules! arms {
        ($($n:literal)*) => {
            match csr {
                $($n => {
                    let v: u64;
                    // SAFETY: reading a counter has no side effects.
                    unsafe {
                        core::arch::asm!("csrr {v}, {c}", v = out(reg) v, c = const $n,
                            options(nomem, nostack))
                    };
                    Some(v)
                })*
                _ => None,
            }
        };
    }
    arms!(0xc00 0xc01 0xc02 0xc03 0xc04 0xc05 0xc06 0xc07 0xc08 0xc09 0xc0a 0xc0b 0xc0c 0xc0d
        0xc0e 0xc0f 0xc10 0xc11 0xc12 0xc13 0xc14 0xc15 0xc16 0xc17 0xc18 0xc19 0xc1a 0xc1b 0xc1c
        0xc1d 0xc1e 0xc1f)
}

/// Counts loop iterations until `time` reaches `until`: exactly three instructions
/// per iteration (an add, a `time` read, a branch), so a counter of retired
/// instructions started just before can be checked against the count it returns.
#[inline(always)]
pub fn spin_counting(until: u64) -> u64 {
    let mut n: u64 = 0;
    // SAFETY: arithmetic and `time` reads only.
    unsafe {
        core::arch::asm!(
            "2:",
            "addi {n}, {n}, 1",
            "csrr {t}, time",
            "bltu {t}, {until}, 2b",
            n = inout(reg) n,
            t = out(reg) _,
            until = in(reg) until,
            options(nomem, nostack),
        )
    };
    n
}
