//! The hart's programmable counters (`mhpmcounter3..31`, `mhpmevent3..31`,
//! `mcountinhibit`), which only M-mode can program: probed once at boot, then loaded
//! with each vCPU's SBI PMU counters.

/// `mcountinhibit`.
const MCOUNTINHIBIT: usize = 0x320;
/// `mhpmevent3`; `mhpmevent n` is `0x320 + n`.
const MHPMEVENT0: usize = 0x320;
/// `mhpmcounter3`; `mhpmcounter n` is `0xb00 + n`.
const MHPMCOUNTER0: usize = 0xb00;
/// `mip.LCOFIP` (Sscofpmf's local counter-overflow interrupt).
pub const LCOFIP: usize = 1 << 13;

/// Runs `$body` with `$n` bound as a constant to the runtime counter number `$idx`
/// (3..=31), so each CSR access names its CSR in the instruction; other numbers do
/// nothing and give the default.
macro_rules! with_counter {
    ($idx:expr, $n:ident => $body:expr) => {
        with_counter!(@arms $idx, $n, $body;
            3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
    };
    (@arms $idx:expr, $n:ident, $body:expr; $($k:literal)*) => {
        match $idx {
            $($k => {
                const $n: usize = $k;
                $body
            })*
            _ => Default::default(),
        }
    };
}

/// Reads CSR `$base + n` for a counter number `n` (3..=31; 0 for other numbers).
macro_rules! read_indexed {
    ($base:expr, $n:expr) => {
        with_counter!($n, N => {
            let v: usize;
            // SAFETY: reading a counter or its selector has no side effects; `n` is a
            // counter M-mode has (the caller probed it, or it reads as zero).
            unsafe {
                core::arch::asm!("csrr {v}, {c}", v = out(reg) v, c = const $base + N,
                    options(nomem, nostack))
            };
            v as u64
        })
    };
}

/// Reads `mhpmcounter n` (3..=31; 0 for other numbers).
pub fn read_counter(n: usize) -> u64 {
    read_indexed!(MHPMCOUNTER0, n)
}

/// Reads `mhpmevent n` (3..=31; 0 for other numbers).
pub fn read_event(n: usize) -> u64 {
    read_indexed!(MHPMEVENT0, n)
}

/// Writes `mhpmcounter n` and `mhpmevent n` (3..=31; other numbers are ignored).
///
/// # Safety
/// `n` must be a counter [`probe`] found; `event` must not count in M-mode what the
/// hypervisor relies on (counters are only ever the guests').
pub unsafe fn write(n: usize, value: u64, event: u64) {
    with_counter!(n, N => {
        // SAFETY: the caller's contract; the counter exists.
        unsafe {
            core::arch::asm!(
                "csrw {e}, {ev}",
                "csrw {c}, {val}",
                e = const MHPMEVENT0 + N,
                c = const MHPMCOUNTER0 + N,
                ev = in(reg) event as usize,
                val = in(reg) value as usize,
                options(nomem, nostack),
            )
        }
    })
}

/// Writes `mcountinhibit`.
///
/// # Safety
/// M-mode; the hart has `mcountinhibit` ([`probe`] found counters).
pub unsafe fn set_inhibit(mask: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("csrw {c}, {v}", c = const MCOUNTINHIBIT, v = in(reg) mask,
            options(nomem, nostack))
    };
}

/// How many of `mhpmcounter3..` (at most `max`, in order) this hart has with a
/// writable counter and event selector and `mcountinhibit`, and the counters' width
/// in bits. Every probed counter is left zero, selecting no event.
///
/// # Safety
/// M-mode with interrupts off, before any counter is in use (the probes write the
/// counters, and trap on a hart without them: the trap is caught).
pub unsafe fn probe(max: usize) -> (usize, u32) {
    // SAFETY (for each probe below): M-mode, interrupts off (the caller's contract);
    // nothing uses these counters yet.
    if crate::csr::probe_csr!(MCOUNTINHIBIT, 0usize).is_none() {
        return (0, 0);
    }
    let mut bits = 0;
    let mut n = 0;
    while n < max.min(29) {
        let k = 3 + n;
        let counter = with_counter!(k, N => crate::csr::probe_csr!(MHPMCOUNTER0 + N, usize::MAX));
        // Event 0 counts nothing; 1 is written to see that the selector is writable.
        let event = with_counter!(k, N => crate::csr::probe_csr!(MHPMEVENT0 + N, 1usize));
        if counter.is_some() && event.is_some() {
            // SAFETY: both CSRs exist (their probes did not trap); this zeroes them.
            unsafe { write(k, 0, 0) };
        }
        match (counter, event) {
            (Some(c), Some(e)) if c != 0 && e != 0 => {
                bits = c.trailing_ones();
                n += 1;
            }
            _ => break,
        }
    }
    (n, bits)
}
