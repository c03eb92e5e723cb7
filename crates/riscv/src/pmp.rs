//! Physical memory protection: keeps the hypervisor's own memory out of reach of S/U and
//! VS/VU accesses, whatever the G-stage tables say (defence in depth), while leaving the
//! rest of the address space to the G-stage tables.

use diosix_addr::{Hpa, Range};

const R: usize = 1;
const W: usize = 2;
const X: usize = 4;
const TOR: usize = 1 << 3;

/// Programs PMP entries 0-2 on this hart:
/// `[0, hv.start())` RWX, `hv` no access, `[hv.end(), top)` RWX.
///
/// # Safety
/// `hv` must cover the hypervisor image, stacks, heap and trap frames, and its ends
/// must be 4-byte aligned. M-mode is unaffected (the entries are not locked).
pub unsafe fn protect_hypervisor(hv: Range<Hpa>) {
    let cfg = (R | W | X | TOR) | (TOR << 8) | ((R | W | X | TOR) << 16);
    // pmpaddr holds bits 55:2 of an address; on RV64 both fit a usize.
    let (start, end) = (
        (hv.start().raw() >> 2) as usize,
        (hv.end().raw() >> 2) as usize,
    );
    // SAFETY: the caller guarantees the range; unlocked entries never restrict M-mode,
    // so the hypervisor keeps running whatever we write here.
    unsafe {
        crate::csr::pmpaddr0::write(start);
        crate::csr::pmpaddr1::write(end);
        crate::csr::pmpaddr2::write(usize::MAX >> 10);
        crate::csr::pmpcfg0::write(cfg);
    }
}

/// Most PMP entries the architecture allows.
pub const MAX_ENTRIES: usize = 64;

/// PMP entry configuration bits (one byte of a `pmpcfg` register).
pub mod cfg {
    /// Readable.
    pub const R: u8 = 1;
    /// Writable.
    pub const W: u8 = 2;
    /// Executable.
    pub const X: u8 = 4;
    /// Address matching off.
    pub const OFF: u8 = 0;
    /// Top of range: `[previous entry's address, this address)`.
    pub const TOR: u8 = 1 << 3;
    /// Naturally aligned power of two.
    pub const NAPOT: u8 = 3 << 3;
}

/// What this hart's PMP offers, found by [`probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmpFacts {
    /// Implemented entries (0, 16 or 64 on conforming harts; whatever is found).
    pub entries: usize,
    /// log2 of the smallest region in bytes (2 = 4-byte granularity, G = 0).
    pub granularity_log2: u32,
}

// `pmpaddrN` is CSR 0x3B0 + N; `pmpcfgK` (even K on RV64, 8 entries each) is 0x3A0 + K.
// CSR numbers are part of the instruction, so each index gets its own arm.
macro_rules! pmp_csrs {
    (addr: $($n:literal),*; cfg: $($k:literal),*) => {
        /// Writes all ones to `pmpaddr<i>` and reads it back; `None` if the CSR does not
        /// exist (the access traps: `mtvec` points past it meanwhile).
        ///
        /// # Safety
        /// M-mode with interrupts off (`mstatus.MIE` clear), before the hart's PMP is
        /// in use: clobbers the entry.
        unsafe fn try_pmpaddr(i: usize) -> Option<usize> {
            match i {
                // Clobbering the entry is allowed by the caller.
                $($n => crate::csr::probe_csr!(0x3B0 + $n, usize::MAX),)*
                _ => None,
            }
        }

        /// # Safety
        /// As [`load`]: changes what S/U-mode may access. `i` must be implemented.
        unsafe fn write_pmpaddr(i: usize, v: usize) {
            match i {
                $($n => {
                    // SAFETY: forwarded contract.
                    unsafe {
                        core::arch::asm!("csrw {c}, {v}", v = in(reg) v, c = const 0x3B0 + $n,
                            options(nomem, nostack))
                    }
                })*
                _ => {}
            }
        }

        /// # Safety
        /// As [`load`]. `k` is the even register number (entries `4k..4k+8`), and
        /// entry `4k` must be implemented.
        unsafe fn write_pmpcfg(k: usize, v: usize) {
            match k {
                $($k => {
                    // SAFETY: forwarded contract.
                    unsafe {
                        core::arch::asm!("csrw {c}, {v}", v = in(reg) v, c = const 0x3A0 + $k,
                            options(nomem, nostack))
                    }
                })*
                _ => {}
            }
        }
    };
}

pmp_csrs!(addr: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63; cfg: 0, 2, 4, 6, 8, 10, 12, 14);

/// Finds how many PMP entries this hart implements and their granularity, as the
/// privileged specification says to: an implemented `pmpaddr` keeps some of the ones
/// written to it, and with entry 0 off, the lowest bit that stays set in `pmpaddr0` is
/// G (regions are 2^(G+2) bytes at least). A `pmpaddr` CSR that traps (some harts
/// trap above their last entry instead of reading zero) ends the count too.
///
/// # Safety
/// M-mode with interrupts off, before the hart's PMP is set up, with nothing in
/// S/U-mode relying on it: every entry is left off.
pub unsafe fn probe() -> PmpFacts {
    // SAFETY: the caller lets us clobber the PMP; M-mode is unaffected (no lock bits).
    unsafe {
        if try_pmpaddr(0).is_none() {
            return PmpFacts {
                entries: 0,
                granularity_log2: 2,
            };
        }
        write_pmpcfg(0, 0);
        let mut entries = 0;
        for i in 0..MAX_ENTRIES {
            match try_pmpaddr(i) {
                Some(v) if v != 0 => entries = i + 1,
                _ => break,
            }
        }
        for k in (0..entries.div_ceil(4)).step_by(2) {
            write_pmpcfg(k, 0);
        }
        let g = try_pmpaddr(0).unwrap_or(0).trailing_zeros();
        for i in 0..entries {
            write_pmpaddr(i, 0);
        }
        PmpFacts {
            entries,
            granularity_log2: if entries == 0 { 2 } else { g + 2 },
        }
    }
}

/// Loads `entries` (`(pmpcfg byte, pmpaddr value)`, index 0 = highest priority) into
/// this hart's PMP and turns every other entry up to `implemented` off.
///
/// # Safety
/// Decides what S/U-mode (and guests) can reach: the entries must grant nothing the
/// code about to run there may not have. M-mode is unaffected (no entry is locked:
/// the caller never sets L).
pub unsafe fn load(entries: &[(u8, u64)], implemented: usize) {
    let n = implemented.min(MAX_ENTRIES);
    // SAFETY: forwarded contract.
    unsafe {
        for i in 0..n {
            let addr = entries.get(i).map_or(0, |&(_, a)| a as usize);
            write_pmpaddr(i, addr);
        }
        for k in (0..n.div_ceil(4)).step_by(2) {
            let mut word = 0usize;
            for b in 0..8 {
                let c = entries.get(k * 4 + b).map_or(0, |&(c, _)| c & !0x80);
                word |= (c as usize) << (8 * b);
            }
            write_pmpcfg(k, word);
        }
    }
}
