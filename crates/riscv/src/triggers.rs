//! Sdtrig debug triggers (`tselect`, `tdata1`, `tdata2`, `tdata3`), which only M-mode
//! can program: counted once at boot, then loaded with each vCPU's triggers (SBI DBTR).

/// `tselect`.
const TSELECT: usize = 0x7a0;
/// `tdata1`.
const TDATA1: usize = 0x7a1;
/// `tdata2`.
const TDATA2: usize = 0x7a2;
/// `tdata3`.
const TDATA3: usize = 0x7a3;
/// `mcontrol6` in `tdata1.type`.
const MCONTROL6: usize = 6 << 60;

/// How many of this hart's first `max` triggers can be `mcontrol6` triggers: indices
/// are probed in order until `tselect` does not take one, or its `tdata1` does not
/// take type 6. Each probed trigger is left cleared.
///
/// # Safety
/// M-mode with interrupts off, before any trigger is in use (the probes write
/// `tselect` and `tdata1`, and trap on a hart without them: the trap is caught).
pub unsafe fn probe(max: usize) -> usize {
    let mut n = 0;
    while n < max {
        match crate::csr::probe_csr!(TSELECT, n) {
            Some(v) if v == n => {}
            _ => break,
        }
        let t = crate::csr::probe_csr!(TDATA1, MCONTROL6);
        // SAFETY: the trigger exists (tselect took it); clearing it disables it.
        unsafe { write_selected(0, 0) };
        match t {
            Some(v) if v >> 60 == 6 => n += 1,
            _ => break,
        }
    }
    n
}

/// Programs trigger `index` (a probed one) with `tdata1` / `tdata2` (tdata3 zero);
/// `tdata1` 0 disables it.
///
/// # Safety
/// `index` must be below what [`probe`] counted, and `tdata1` must never match in
/// M-mode or debug mode (its `m` and `dmode` bits clear): the caller validated it.
pub unsafe fn program(index: usize, tdata1: usize, tdata2: usize) {
    // SAFETY: the trigger exists (caller's contract).
    unsafe {
        core::arch::asm!("csrw {c}, {v}", c = const TSELECT, v = in(reg) index, options(nostack));
        write_selected(tdata1, tdata2);
    }
}

/// Writes the selected trigger: disabled first, so it never matches on a half-written
/// address.
///
/// # Safety
/// As for [`program`], for the trigger `tselect` holds.
unsafe fn write_selected(tdata1: usize, tdata2: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        core::arch::asm!(
            "csrw {t1}, zero",
            "csrw {t3}, zero",
            "csrw {t2}, {d2}",
            "csrw {t1}, {d1}",
            t1 = const TDATA1,
            t2 = const TDATA2,
            t3 = const TDATA3,
            d1 = in(reg) tdata1,
            d2 = in(reg) tdata2,
            options(nostack),
        );
    }
}
