//! The hart's programmable counters as the running vCPU's SBI PMU state says: probed
//! at boot (the same on every hart), loaded when a vCPU with counters runs, saved
//! (and stopped) when it leaves, cleared when one without follows one with, so a
//! count never leaks from one vCPU to another. `cycle`, `time` and `instret` stay
//! free-running and readable by every guest.

use core::sync::atomic::{AtomicBool, Ordering};
use diosix_core::hostfdt::HostPlatform;
use diosix_core::sbi::pmu::{mhpmevent, PmuHost, PmuState, MAX_HW_COUNTERS};
use diosix_riscv::pmu as hw;

/// What every vCPU is offered (set once at boot).
static HOST: spin::Once<PmuHost> = spin::Once::new();

/// Probes the boot hart's counters and reads which events they count.
pub fn init(host: &HostPlatform, vs_mode: bool) {
    // SAFETY: at boot, M-mode with interrupts off, no counter in use yet.
    let (n, bits) = unsafe { hw::probe(MAX_HW_COUNTERS) };
    let sscofpmf = n > 0 && host.harts.iter().all(|h| h.has_extension("sscofpmf"));
    let pmu = PmuHost {
        // Counters no event can use are not offered.
        hw_counters: if host.pmu_events.ranges.is_empty() {
            0
        } else {
            n
        },
        hw_bits: bits,
        sscofpmf,
        vs_mode,
        events: host.pmu_events.clone(),
    };
    log::info!(
        "PMU for guests: {} hardware counters ({} bits{}), {} firmware counters",
        pmu.hw_counters,
        bits,
        if sscofpmf { ", Sscofpmf" } else { "" },
        diosix_core::sbi::pmu::FW_COUNTERS
    );
    // Overflow interrupts for guests: behind PMP straight through mideleg; under H
    // only where `hvien` (Ssaia on every hart) lets `hvip` inject LCOFI.
    let overflow = pmu.sscofpmf
        && pmu.hw_counters > 0
        && (!vs_mode || host.harts.iter().all(|h| h.has_extension("ssaia")));
    OVERFLOW.store(overflow, Ordering::Relaxed);
    MVIEN.store(
        overflow && vs_mode && host.harts.iter().all(|h| h.has_extension("smaia")),
        Ordering::Relaxed,
    );
    if overflow && vs_mode {
        crate::guestmode::add_vs_interrupts(hw::LCOFIP);
    }
    HOST.call_once(|| pmu);
}

/// Whether guests get counter-overflow interrupts (set once at boot).
static OVERFLOW: AtomicBool = AtomicBool::new(false);

/// Whether `mvien` takes LCOFI too (under H, with Smaia): see [`hart_setup_h`].
static MVIEN: AtomicBool = AtomicBool::new(false);

/// This hart's part in delivering counter overflows to VS-mode guests, under H: the
/// `mie` bits to enable (LCOFIE, so an overflow traps to M-mode, which injects it
/// through `hvip`), after setting `hvien` so `hvip` carries it. With Smaia,
/// `mvien` takes LCOFI as well: QEMU 10 masks a VS-mode read of `sip` with
/// `mideleg | mvien`, so without it the guest never sees the injected bit (the
/// hardware's own LCOFI stays M-level: `mideleg` bit 13 stays clear).
///
/// # Safety
/// At hart setup, in M-mode with interrupts off.
pub unsafe fn hart_setup_h() -> usize {
    if !guest_overflow() {
        return 0;
    }
    // SAFETY: the caller's contract; these bits only route LCOFI as described.
    unsafe {
        diosix_riscv::csr::hvien::write(hw::LCOFIP);
        if MVIEN.load(Ordering::Relaxed) {
            diosix_riscv::csr::mvien::write(hw::LCOFIP);
        }
    }
    hw::LCOFIP
}

/// What every vCPU is offered.
pub fn host() -> &'static PmuHost {
    HOST.get().expect("PMU probed at boot")
}

/// Whether guests get counter-overflow interrupts (and are told about Sscofpmf):
/// behind PMP LCOFI is delegated straight to the guest's S-mode; under H (where
/// `hideleg` cannot delegate it) it is taken in M-mode and injected through `hvip`,
/// which needs Ssaia's `hvien` on every hart. Its pending bit is switched with the
/// vCPU either way.
pub fn guest_overflow() -> bool {
    OVERFLOW.load(Ordering::Relaxed)
}

/// A counter overflowed while a guest ran (LCOFI taken in M-mode, under H): the
/// interrupt is the running vCPU's, injected through `hvip` (the guest's clear of
/// `sip.LCOFIP` clears it there).
pub fn overflow_interrupt() {
    // SAFETY: the pending bit moves from the hart's M-level view to the running
    // guest's VS-level one (LCOFI is only enabled in M-mode where that is done).
    unsafe { diosix_riscv::csr::mip::clear_bits(hw::LCOFIP) };
    crate::guestmode::mode().raise(hw::LCOFIP);
}

/// `mcounteren`/`hcounteren` bits for the counters guests may read directly:
/// `hpmcounter(3 + i)` for each hardware counter.
pub fn counter_enable_bits() -> usize {
    HOST.get().map_or(0, all_stopped)
}

/// `mcountinhibit` with every guest counter stopped (`cycle` and `instret` run on).
fn all_stopped(host: &PmuHost) -> usize {
    ((1usize << host.hw_counters) - 1) << 3
}

/// The set bits of `mask`, lowest first (a switch touches only the counters in use).
fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(i)
    })
}

/// In a hart's `live` mask: `mip.LCOFIP` may be a vCPU's.
const LIVE_OVERFLOW: u32 = 1 << 31;

/// Loads `state` into this hart if it uses counters, or if the hart still holds
/// another vCPU's (`live`, updated: bit `i` for `mhpmcounter(3 + i)`, and
/// [`LIVE_OVERFLOW`]).
#[inline]
pub fn load(live: &mut u32, state: Option<&PmuState>) {
    // On every switch: nothing to do unless counters are, or were, in use.
    if *live != 0 || state.is_some_and(PmuState::in_use) {
        reload(live, state.unwrap_or(&PmuState::EMPTY));
    }
}

/// [`load`] when there is something to load or clear.
#[inline(never)]
fn reload(live: &mut u32, state: &PmuState) {
    let host = host();
    if host.hw_counters == 0 {
        // Nothing to load, and maybe no `mcountinhibit` to write (the HiFive
        // Unleashed's U54 has none).
        *live = 0;
        return;
    }
    let counters = (1u32 << host.hw_counters) - 1;
    let configured = state.hw_configured & counters;
    let touched = (*live | configured) & counters;
    let mut running = 0usize;
    // SAFETY: the counters below were probed; each is loaded with a selector the
    // core built (with MINH wherever the hart can filter) or cleared, stopped first
    // so no count runs on while half of it is written.
    unsafe {
        hw::set_inhibit(all_stopped(host));
        // Every selector cleared before any is set: a hart may let one counter only
        // count a given event (QEMU ignores a second mapping, and keeps a counter's
        // old one until its selector is zeroed), and the previous vCPU may have had
        // this one's event on another counter.
        for i in bits(touched) {
            hw::write(3 + i, 0, 0);
        }
        for i in bits(configured) {
            let c = &state.hw[i];
            hw::write(3 + i, c.value, c.mhpmevent);
            running |= usize::from(c.running) << (3 + i);
        }
        hw::set_inhibit(all_stopped(host) & !running);
        if host.sscofpmf {
            // An overflow interrupt belongs to the vCPU whose counter overflowed.
            if state.overflow_pending {
                diosix_riscv::csr::mip::set_bits(hw::LCOFIP);
            } else {
                diosix_riscv::csr::mip::clear_bits(hw::LCOFIP);
            }
        }
    }
    *live = configured
        | if host.sscofpmf && state.in_use() {
            LIVE_OVERFLOW
        } else {
            0
        };
}

/// Stops this hart's counters and reads the vCPU's configured ones (values, overflow
/// flags, a pending overflow interrupt) back into `state`.
#[inline]
pub fn save(state: &mut PmuState) {
    if state.in_use() {
        save_counters(state);
    }
}

#[inline(never)]
fn save_counters(state: &mut PmuState) {
    let host = host();
    if host.hw_counters == 0 {
        return;
    }
    // SAFETY: stopping the guest counters; they are the running vCPU's.
    unsafe { hw::set_inhibit(all_stopped(host)) };
    for i in bits(state.hw_configured & ((1u32 << host.hw_counters) - 1)) {
        let c = &mut state.hw[i];
        c.value = hw::read_counter(3 + i);
        c.mhpmevent = (c.mhpmevent & !mhpmevent::OF) | (hw::read_event(3 + i) & mhpmevent::OF);
    }
    if host.sscofpmf {
        state.overflow_pending = diosix_riscv::csr::mip::read() & hw::LCOFIP != 0;
        // SAFETY: the interrupt is the vCPU's, saved above; an idle hart's WFI must
        // not wake for it.
        unsafe { diosix_riscv::csr::mip::clear_bits(hw::LCOFIP) };
    }
}
