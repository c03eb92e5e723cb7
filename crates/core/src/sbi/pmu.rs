//! SBI performance monitoring (PMU, SBI 2.0 chapter 11): a vCPU's counters, kept per
//! vCPU and loaded into the hart's `mhpmcounter`s while it runs.
//!
//! Counter indices a guest sees: first the hardware counters, guest counter `i` being
//! the hart's `mhpmcounter(3 + i)` (read by the guest directly as `hpmcounter(3 + i)`),
//! then [`FW_COUNTERS`] firmware counters, read through `counter_fw_read`. The fixed
//! `cycle` and `instret` counters are not offered through the PMU: they stay
//! free-running for every guest (Zicntr), so no VM can stop or rewrite them for
//! another.
//!
//! A hardware counter counts an event only if the host's device tree says it can
//! ([`HwEventMap`], from the `riscv,pmu` node's `riscv,event-to-mhpmcounters`), with
//! the selector from `riscv,event-to-mhpmevent` or, as the SBI specification
//! recommends, the zero-extended event index. Raw events (types 2 and 3) are not
//! offered: a raw selector is the host's business, not a guest's. With Sscofpmf the
//! hypervisor sets `MINH` on every counter (a guest counts its own work, not the
//! hypervisor's) and maps the guest's `SINH`/`UINH` requests onto the modes it runs in
//! (VS/VU under H); the guest's `MINH`, `VSINH` and `VUINH` requests name modes it
//! does not have and are ignored.
//!
//! Every call validates the whole counter set first and changes nothing on an invalid
//! index. As OpenSBI does, `counter_start` and `counter_stop` act on every counter of a
//! valid set and then report ALREADY_STARTED / ALREADY_STOPPED if any was.

use super::SbiRet;
use alloc::vec::Vec;
use diosix_abi::fid::pmu as spec;
use diosix_abi::SbiError;

/// The most hardware counters a vCPU may have (`mhpmcounter3..=31`).
pub const MAX_HW_COUNTERS: usize = 29;

/// Firmware counters each vCPU has.
pub const FW_COUNTERS: usize = 8;

/// `mhpmevent` bits of Sscofpmf: overflow, then the per-mode inhibits.
pub mod mhpmevent {
    /// `OF`: the counter overflowed (no further overflow interrupt while set).
    pub const OF: u64 = 1 << 63;
    /// `MINH`: not counted in M-mode.
    pub const MINH: u64 = 1 << 62;
    /// `SINH`: not counted in (H)S-mode.
    pub const SINH: u64 = 1 << 61;
    /// `UINH`: not counted in U-mode.
    pub const UINH: u64 = 1 << 60;
    /// `VSINH`: not counted in VS-mode.
    pub const VSINH: u64 = 1 << 59;
    /// `VUINH`: not counted in VU-mode.
    pub const VUINH: u64 = 1 << 58;
    /// Every bit above the event selector.
    pub const HIGH: u64 = 0xff << 56;
}

/// Which host counters count which hardware events: the host device tree's
/// `riscv,pmu` node. Counter masks are in host numbering (bit `n` is
/// `mhpmcounter n`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HwEventMap {
    /// `(first event_idx, last event_idx, host counter mask)`.
    pub ranges: Vec<(u32, u32, u32)>,
    /// `(event_idx, mhpmevent selector)` where the platform names one.
    pub selectors: Vec<(u32, u64)>,
}

impl HwEventMap {
    /// Host counters that can count `event_idx` (host numbering).
    pub fn counters_for(&self, event_idx: u32) -> u32 {
        self.ranges
            .iter()
            .filter(|(lo, hi, _)| (*lo..=*hi).contains(&event_idx))
            .fold(0, |m, (_, _, c)| m | c)
    }

    /// The `mhpmevent` selector for `event_idx` (without the Sscofpmf bits).
    pub fn selector(&self, event_idx: u32) -> u64 {
        self.selectors
            .iter()
            .find(|(e, _)| *e == event_idx)
            .map_or(event_idx as u64, |(_, s)| *s)
            & !mhpmevent::HIGH
    }
}

/// What the host gives every vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PmuHost {
    /// Hardware counters per vCPU (guest counter `i` is `mhpmcounter(3 + i)`).
    pub hw_counters: usize,
    /// Bits in each hardware counter.
    pub hw_bits: u32,
    /// The hart has Sscofpmf (mode filtering and overflow interrupts).
    pub sscofpmf: bool,
    /// Guests run in VS-mode (under H), so their modes are VS and VU.
    pub vs_mode: bool,
    /// Which events the counters count.
    pub events: HwEventMap,
}

impl PmuHost {
    fn hw(&self) -> usize {
        self.hw_counters.min(MAX_HW_COUNTERS)
    }

    /// Counters a guest sees in all.
    pub fn total(&self) -> usize {
        self.hw() + FW_COUNTERS
    }
}

/// A firmware event a counter can count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwEvent {
    /// One of the SBI's standard firmware events (code 0..=21).
    Standard(u16),
    /// `SBI_PMU_FW_PLATFORM` with a Diosix selector (`diosix_abi::pmu_platform`).
    Platform(u64),
}

/// One hardware counter of a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwCounter {
    /// The event counted (`event_idx`), 0 while the counter is free.
    pub event: u32,
    /// `mhpmevent` as loaded: selector, Sscofpmf filter bits, `OF`.
    pub mhpmevent: u64,
    /// The count (the hart's while the vCPU runs: see [`Pmu::pmu_sync`]).
    pub value: u64,
    /// Counting (not inhibited).
    pub running: bool,
}

/// One firmware counter of a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwCounter {
    /// The event counted; `None` while the counter is free.
    pub event: Option<FwEvent>,
    /// The count up to the last stop (or the initial value).
    pub value: u64,
    /// The event's total when the counter last started.
    pub started_at: u64,
    /// Counting.
    pub running: bool,
}

/// One vCPU's PMU counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmuState {
    /// Hardware counters by guest index.
    pub hw: [HwCounter; MAX_HW_COUNTERS],
    /// Firmware counters (guest index: hardware count + this index).
    pub fw: [FwCounter; FW_COUNTERS],
    /// Bit `i`: hardware counter `i` is configured (so switches touch the hart's
    /// counters only for vCPUs that use them).
    pub hw_configured: u32,
    /// A counter-overflow interrupt (LCOFI) was pending when the vCPU left its hart.
    pub overflow_pending: bool,
}

impl Default for PmuState {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl PmuState {
    /// No counter configured.
    pub const EMPTY: PmuState = PmuState {
        hw: [HwCounter {
            event: 0,
            mhpmevent: 0,
            value: 0,
            running: false,
        }; MAX_HW_COUNTERS],
        fw: [FwCounter {
            event: None,
            value: 0,
            started_at: 0,
            running: false,
        }; FW_COUNTERS],
        hw_configured: 0,
        overflow_pending: false,
    };

    /// Whether the vCPU has anything in the hart's counters: a configured hardware
    /// counter, or an overflow interrupt still pending.
    pub fn in_use(&self) -> bool {
        self.hw_configured != 0 || self.overflow_pending
    }

    /// Whether counter `idx` (hardware below `hw`, firmware from there) has an event.
    fn configured(&self, hw: usize, idx: usize) -> bool {
        if idx < hw {
            self.hw[idx].event != 0
        } else {
            self.fw[idx - hw].event.is_some()
        }
    }

    /// Whether counter `idx` is counting.
    fn running(&self, hw: usize, idx: usize) -> bool {
        if idx < hw {
            self.hw[idx].running
        } else {
            self.fw[idx - hw].running
        }
    }

    /// Bit `i`: hardware counter `i` is counting.
    pub fn hw_running(&self) -> u32 {
        self.hw
            .iter()
            .enumerate()
            .filter(|(_, c)| c.event != 0 && c.running)
            .fold(0, |m, (i, _)| m | 1 << i)
    }
}

/// What the decoder needs from the hypervisor for the PMU.
pub trait Pmu {
    /// The host's counters and events.
    fn pmu_host(&self) -> &PmuHost;
    /// The calling vCPU's counters.
    fn pmu_state(&mut self) -> &mut PmuState;
    /// Reads the hart's configured counters (values and `OF`) into the state: the
    /// hardware counters of a running vCPU live in the hart.
    fn pmu_sync(&mut self);
    /// Loads the (changed) state into the hart.
    fn pmu_apply(&mut self);
    /// How many times `event` has happened to the calling vCPU (monotonic).
    fn pmu_fw_count(&mut self, event: FwEvent) -> u64;
}

/// The counters a base and mask name, as a bit set of guest indices; INVALID_PARAM if
/// any does not exist.
fn counter_set(total: usize, base: usize, mask: usize) -> Result<u64, SbiError> {
    if mask == 0 {
        return Ok(0);
    }
    let top = base
        .checked_add((usize::BITS - 1 - mask.leading_zeros()) as usize)
        .ok_or(SbiError::InvalidParam)?;
    if top >= total {
        return Err(SbiError::InvalidParam);
    }
    Ok((mask as u64) << base)
}

/// Indices in `set`, lowest first.
fn members(set: u64) -> impl Iterator<Item = usize> {
    let mut rest = set;
    core::iter::from_fn(move || {
        if rest == 0 {
            return None;
        }
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        Some(i)
    })
}

/// A decoded `event_idx` (with its `event_data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Hardware(u32),
    Firmware(FwEvent),
}

/// Decodes `event_idx`: INVALID_PARAM for what is no event at all (reserved bits, an
/// unknown type or code), NOT_SUPPORTED for real events Diosix does not offer.
fn decode_event(event_idx: usize, event_data: u64) -> Result<Event, SbiError> {
    if event_idx >> 20 != 0 {
        return Err(SbiError::InvalidParam);
    }
    let (ty, code) = (event_idx >> 16, event_idx & 0xffff);
    match ty {
        spec::event_type::HARDWARE_GENERAL => {
            if code == spec::hardware_event::NO_EVENT || code > spec::hardware_event::REF_CPU_CYCLES
            {
                return Err(SbiError::InvalidParam);
            }
            Ok(Event::Hardware(event_idx as u32))
        }
        spec::event_type::HARDWARE_CACHE => {
            let (cache, op, result) = (code >> 3, (code >> 1) & 3, code & 1);
            if cache > spec::cache_event::NODE || op > spec::cache_operation::PREFETCH {
                return Err(SbiError::InvalidParam);
            }
            let _ = result;
            Ok(Event::Hardware(event_idx as u32))
        }
        spec::event_type::HARDWARE_RAW | spec::event_type::HARDWARE_RAW_V2 => {
            if code != 0 {
                return Err(SbiError::InvalidParam);
            }
            Err(SbiError::NotSupported)
        }
        spec::event_type::FIRMWARE => {
            if code <= spec::firmware_event::HFENCE_VVMA_ASID_RECEIVED {
                Ok(Event::Firmware(FwEvent::Standard(code as u16)))
            } else if code == spec::firmware_event::PLATFORM {
                if event_data < diosix_abi::pmu_platform::COUNT {
                    Ok(Event::Firmware(FwEvent::Platform(event_data)))
                } else {
                    Err(SbiError::NotSupported)
                }
            } else {
                Err(SbiError::InvalidParam)
            }
        }
        _ => Err(SbiError::InvalidParam),
    }
}

/// The Sscofpmf bits for a counter configured with `flags`: never counted in M-mode
/// (the hypervisor), and the guest's S/U inhibits on the modes it really runs in.
fn filter_bits(host: &PmuHost, flags: spec::flags::CounterCfgFlags) -> u64 {
    use mhpmevent::*;
    use spec::flags::CounterCfgFlags as F;
    if !host.sscofpmf {
        return 0;
    }
    let (s, u) = if host.vs_mode {
        // HS and U never run guest code: inhibited, as M is.
        (VSINH, VUINH)
    } else {
        (SINH, UINH)
    };
    let mut bits = MINH | if host.vs_mode { SINH | UINH } else { 0 };
    if flags.contains(F::SET_SINH) {
        bits |= s;
    }
    if flags.contains(F::SET_UINH) {
        bits |= u;
    }
    bits
}

/// Decodes one PMU call (`a`: a0..a4). Never inlined, for the same reason as DBTR's.
#[inline(never)]
pub fn dispatch<E: Pmu + ?Sized>(env: &mut E, function: usize, a: [usize; 5]) -> SbiRet {
    use spec::*;
    let (hw, total) = {
        let h = env.pmu_host();
        (h.hw(), h.total())
    };
    match function {
        NUM_COUNTERS => SbiRet::ok(total),
        COUNTER_GET_INFO => {
            let idx = a[0];
            if idx < hw {
                let bits = env.pmu_host().hw_bits.clamp(1, 64) as usize;
                SbiRet::ok(((bits - 1) << 12) | (0xc03 + idx))
            } else if idx < total {
                SbiRet::ok((1 << (usize::BITS - 1)) | (63 << 12))
            } else {
                SbiRet::error(SbiError::InvalidParam)
            }
        }
        COUNTER_CONFIG_MATCHING => config_matching(env, hw, total, a).into(),
        COUNTER_START => start(env, hw, total, a).into(),
        COUNTER_STOP => stop(env, hw, total, a).into(),
        COUNTER_FW_READ | COUNTER_FW_READ_HI => {
            let idx = a[0];
            let Some(f) = idx.checked_sub(hw).filter(|&f| f < FW_COUNTERS) else {
                return SbiRet::error(SbiError::InvalidParam);
            };
            let c = env.pmu_state().fw[f];
            let Some(ev) = c.event else {
                return SbiRet::error(SbiError::InvalidParam);
            };
            if function == COUNTER_FW_READ_HI {
                // RV64: the whole count fits the low read.
                return SbiRet::ok(0);
            }
            SbiRet::ok(fw_value(env, &c, ev) as usize)
        }
        // Snapshots are optional; without them the flags that need one answer NO_SHMEM.
        SNAPSHOT_SET_SHMEM => SbiRet::error(SbiError::NotSupported),
        _ => SbiRet::error(SbiError::NotSupported),
    }
}

fn fw_value<E: Pmu + ?Sized>(env: &mut E, c: &FwCounter, ev: FwEvent) -> u64 {
    if c.running {
        let now = env.pmu_fw_count(ev);
        c.value.wrapping_add(now.wrapping_sub(c.started_at))
    } else {
        c.value
    }
}

fn config_matching<E: Pmu + ?Sized>(
    env: &mut E,
    hw: usize,
    total: usize,
    a: [usize; 5],
) -> Result<usize, SbiError> {
    use spec::flags::CounterCfgFlags as F;
    let [base, mask, flags, event_idx, event_data] = a;
    let set = counter_set(total, base, mask)?;
    let flags = F::from_bits(flags).ok_or(SbiError::InvalidParam)?;
    let sscofpmf = env.pmu_host().sscofpmf;
    env.pmu_sync();
    let idx = if flags.contains(F::SKIP_MATCH) {
        // The caller names a counter it already configured (to clear or restart it).
        let idx = members(set).next().ok_or(SbiError::InvalidParam)?;
        if !env.pmu_state().configured(hw, idx) {
            return Err(SbiError::InvalidParam);
        }
        idx
    } else {
        match decode_event(event_idx, event_data as u64)? {
            Event::Hardware(ev) => {
                let (able, mhpmevent) = {
                    let host = env.pmu_host();
                    (
                        host.events.counters_for(ev) as u64 >> 3,
                        // OF set until started, as OpenSBI does: no overflow
                        // interrupt from a counter nobody has started.
                        host.events.selector(ev)
                            | filter_bits(host, flags)
                            | if sscofpmf { mhpmevent::OF } else { 0 },
                    )
                };
                let s = env.pmu_state();
                let free = members(set & able)
                    .filter(|&i| i < hw)
                    .find(|&i| s.hw[i].event == 0)
                    .ok_or(SbiError::NotSupported)?;
                let c = &mut s.hw[free];
                c.event = ev;
                c.mhpmevent = mhpmevent;
                c.running = false;
                s.hw_configured |= 1 << free;
                free
            }
            Event::Firmware(ev) => {
                let s = env.pmu_state();
                let free = members(set)
                    .filter(|&i| i >= hw)
                    .find(|&i| s.fw[i - hw].event.is_none())
                    .ok_or(SbiError::NotSupported)?;
                let c = &mut s.fw[free - hw];
                c.event = Some(ev);
                c.running = false;
                free
            }
        }
    };
    if flags.contains(F::CLEAR_VALUE) {
        let s = env.pmu_state();
        if idx < hw {
            s.hw[idx].value = 0;
        } else {
            s.fw[idx - hw].value = 0;
        }
    }
    if flags.contains(F::AUTO_START) {
        start_one(env, sscofpmf, hw, idx, None);
    }
    env.pmu_apply();
    Ok(idx)
}

/// Starts counter `idx` (configured, stopped), at `initial` if given; `sscofpmf`:
/// its overflow flag is cleared, arming the overflow interrupt.
fn start_one<E: Pmu + ?Sized>(
    env: &mut E,
    sscofpmf: bool,
    hw: usize,
    idx: usize,
    initial: Option<u64>,
) {
    if idx < hw {
        let c = &mut env.pmu_state().hw[idx];
        if let Some(v) = initial {
            c.value = v;
        }
        if sscofpmf {
            c.mhpmevent &= !mhpmevent::OF;
        }
        c.running = true;
    } else {
        let c = env.pmu_state().fw[idx - hw];
        let Some(ev) = c.event else { return };
        let now = env.pmu_fw_count(ev);
        let c = &mut env.pmu_state().fw[idx - hw];
        if let Some(v) = initial {
            c.value = v;
        }
        c.started_at = now;
        c.running = true;
    }
}

/// Validates a start/stop set: every member exists and is configured.
fn configured_set<E: Pmu + ?Sized>(
    env: &mut E,
    hw: usize,
    total: usize,
    base: usize,
    mask: usize,
) -> Result<u64, SbiError> {
    let set = counter_set(total, base, mask)?;
    let s = env.pmu_state();
    if members(set).all(|i| s.configured(hw, i)) {
        Ok(set)
    } else {
        Err(SbiError::InvalidParam)
    }
}

fn start<E: Pmu + ?Sized>(
    env: &mut E,
    hw: usize,
    total: usize,
    a: [usize; 5],
) -> Result<(), SbiError> {
    use spec::flags::CounterStartFlags as F;
    let [base, mask, flags, initial, _] = a;
    let set = configured_set(env, hw, total, base, mask)?;
    let flags = F::from_bits(flags).ok_or(SbiError::InvalidParam)?;
    if flags.contains(F::INIT_SNAPSHOT) {
        return Err(SbiError::NoShmem);
    }
    let initial = flags.contains(F::INIT_VALUE).then_some(initial as u64);
    let sscofpmf = env.pmu_host().sscofpmf;
    env.pmu_sync();
    let mut already = false;
    for i in members(set) {
        if env.pmu_state().running(hw, i) {
            already = true;
        } else {
            start_one(env, sscofpmf, hw, i, initial);
        }
    }
    env.pmu_apply();
    if already {
        Err(SbiError::AlreadyStarted)
    } else {
        Ok(())
    }
}

fn stop<E: Pmu + ?Sized>(
    env: &mut E,
    hw: usize,
    total: usize,
    a: [usize; 5],
) -> Result<(), SbiError> {
    use spec::flags::CounterStopFlags as F;
    let [base, mask, flags, _, _] = a;
    let set = configured_set(env, hw, total, base, mask)?;
    let flags = F::from_bits(flags).ok_or(SbiError::InvalidParam)?;
    if flags.contains(F::TAKE_SNAPSHOT) {
        return Err(SbiError::NoShmem);
    }
    env.pmu_sync();
    let mut already = false;
    for i in members(set) {
        if i < hw {
            let s = env.pmu_state();
            let c = &mut s.hw[i];
            already |= !c.running;
            c.running = false;
            if flags.contains(F::RESET) {
                *c = HwCounter::default();
                s.hw_configured &= !(1 << i);
            }
        } else {
            let c = env.pmu_state().fw[i - hw];
            if c.running {
                let v = c.event.map_or(c.value, |ev| fw_value(env, &c, ev));
                let c = &mut env.pmu_state().fw[i - hw];
                c.value = v;
                c.running = false;
            } else {
                already = true;
            }
            if flags.contains(F::RESET) {
                env.pmu_state().fw[i - hw] = FwCounter::default();
            }
        }
    }
    env.pmu_apply();
    if already {
        Err(SbiError::AlreadyStopped)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
