//! The hart's debug triggers as the running vCPU's SBI DBTR state says: counted at
//! boot (the same on every hart), loaded when a vCPU with triggers runs, cleared when
//! one without follows one with (so a trigger never outlives its vCPU on a hart).

use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_core::sbi::dbtr::{DbtrState, MAX_TRIGGERS};

/// Triggers every vCPU may use (0 without usable Sdtrig).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Counts the boot hart's `mcontrol6` triggers (at most [`MAX_TRIGGERS`]).
pub fn init() {
    // SAFETY: at boot, M-mode with interrupts off, no trigger in use yet.
    let n = unsafe { diosix_riscv::triggers::probe(MAX_TRIGGERS) };
    COUNT.store(n, Ordering::Relaxed);
    if n > 0 {
        log::info!("debug triggers for guests (SBI DBTR): {n} per vCPU");
    }
}

/// Triggers each vCPU may use.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Loads `state` into this hart's triggers if it has any, or if the hart still holds
/// another vCPU's (`live`, updated). `vs_mode`: guests run in VS-mode (under H).
#[inline]
pub fn load(live: &mut bool, state: &DbtrState, vs_mode: bool) {
    // On every switch: nothing to do unless triggers are, or were, in use.
    if *live || state.any() {
        reload(live, state, vs_mode);
    }
}

/// [`load`] when there is something to load or clear.
#[inline(never)]
fn reload(live: &mut bool, state: &DbtrState, vs_mode: bool) {
    let any = state.any();
    for (i, t) in state.triggers.iter().take(count()).enumerate() {
        let (t1, t2) = t.map_or((0, 0), |t| (t.hart_tdata1(vs_mode), t.tdata2));
        // SAFETY: `i` is below the probed count; the core accepted only triggers
        // without `m`/`dmode`, whose mode bits name the guest's own modes.
        unsafe { diosix_riscv::triggers::program(i, t1 as usize, t2 as usize) };
    }
    *live = any;
}
