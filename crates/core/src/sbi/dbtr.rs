//! SBI debug triggers (DBTR, SBI 3.0): a vCPU's hardware breakpoints and watchpoints,
//! kept per vCPU and loaded into the hart's Sdtrig triggers when it runs.
//!
//! Only what can be given to a guest without reaching outside it is accepted: match
//! control type 6 (`mcontrol6`) triggers on addresses (`select` 0) that raise a
//! breakpoint exception (`action` 0) in the guest's own supervisor or user mode, no
//! chains, no `tdata3` (textra) conditions. The guest's `s`/`u` bits mean its own
//! modes: under H they are loaded as the hardware's `vs`/`vu` bits, so a trigger never
//! fires in the hypervisor or in another VM; behind PMP as `s`/`u`. A guest's logical
//! trigger `i` is the hart's trigger `i`.

use super::SbiRet;
use crate::addr::Gpa;
use diosix_abi::{fid, SbiError};

/// The most triggers a vCPU may have (the hart's count, capped).
pub const MAX_TRIGGERS: usize = 8;

/// `tdata1` fields of an `mcontrol6` trigger (Sdtrig 1.0).
pub mod tdata1 {
    /// `type` (bits 63:60).
    pub const TYPE_SHIFT: u32 = 60;
    /// `mcontrol6`.
    pub const TYPE_MCONTROL6: u64 = 6;
    /// `dmode`: the trigger belongs to debug mode.
    pub const DMODE: u64 = 1 << 59;
    /// `uncertain`, `hit1`, `hit0`: status bits the hardware sets.
    pub const STATUS: u64 = (1 << 26) | (1 << 25) | (1 << 22);
    /// `vs`: fires in VS-mode.
    pub const VS: u64 = 1 << 24;
    /// `vu`: fires in VU-mode.
    pub const VU: u64 = 1 << 23;
    /// `select`: match data rather than the address.
    pub const SELECT: u64 = 1 << 21;
    /// `action` (bits 15:12): 0 raises a breakpoint exception.
    pub const ACTION: u64 = 0xf << 12;
    /// `chain`.
    pub const CHAIN: u64 = 1 << 11;
    /// `match` (bits 10:7): 0 equal, 1 NAPOT, 2 at least, 3 less than.
    pub const MATCH: u64 = 0xf << 7;
    /// `m`: fires in M-mode.
    pub const M: u64 = 1 << 6;
    /// `uncertainen`.
    pub const UNCERTAINEN: u64 = 1 << 5;
    /// `s`: fires in (the guest's) S-mode.
    pub const S: u64 = 1 << 4;
    /// `u`: fires in (the guest's) U-mode.
    pub const U: u64 = 1 << 3;
    /// `execute`, `store`, `load`.
    pub const ACCESS: u64 = 0b111;
    /// The mode bits a guest sets.
    pub const MODES: u64 = S | U;
}

/// One installed trigger, as its vCPU configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// `tdata1` in the guest's terms, with its `s`/`u` bits as installed (the saved
    /// copy that enable restores).
    pub tdata1: u64,
    /// `tdata2`: the address.
    pub tdata2: u64,
    /// Disabled triggers keep their configuration with their mode bits off.
    pub enabled: bool,
}

impl Trigger {
    /// `tdata1` as the guest reads it back: mode bits clear while disabled.
    pub fn guest_tdata1(&self) -> u64 {
        if self.enabled {
            self.tdata1
        } else {
            self.tdata1 & !tdata1::MODES
        }
    }

    /// `tdata1` for the hart: the guest's `s`/`u` become `vs`/`vu` when the guest runs
    /// in VS-mode, and nothing else of the mode bits is ever set.
    pub fn hart_tdata1(&self, vs_mode: bool) -> u64 {
        let t = self.guest_tdata1();
        let modes = t & tdata1::MODES;
        let t = t & !tdata1::MODES;
        if !vs_mode {
            return t | modes;
        }
        let mut hw = t;
        if modes & tdata1::S != 0 {
            hw |= tdata1::VS;
        }
        if modes & tdata1::U != 0 {
            hw |= tdata1::VU;
        }
        hw
    }

    /// `trig_state`: hardware index (the same), have_hw_trig, the saved mode bits,
    /// mapped.
    pub fn state_word(&self, idx: usize) -> u64 {
        let saved = self.tdata1 & tdata1::MODES; // s at bit 4 -> bit 2, u at 3 -> 1
        ((idx as u64) << 8) | (1 << 5) | (saved >> 2) | 1
    }
}

/// One vCPU's debug-trigger state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbtrState {
    /// The shared memory, if set.
    pub shmem: Option<Gpa>,
    /// Installed triggers by logical index.
    pub triggers: [Option<Trigger>; MAX_TRIGGERS],
}

impl DbtrState {
    /// Whether any trigger is installed.
    pub fn any(&self) -> bool {
        self.triggers.iter().any(Option::is_some)
    }
}

/// What the decoder needs from the hypervisor for DBTR.
pub trait DebugTriggers {
    /// Triggers the vCPU may use (0 where the host has no usable Sdtrig).
    fn dbtr_max(&self) -> usize;
    /// The calling vCPU's state.
    fn dbtr_state(&mut self) -> &mut DbtrState;
    /// Whether `[gpa, gpa+len)` is guest RAM the caller may read and write.
    fn dbtr_shmem_ok(&mut self, gpa: Gpa, len: u64) -> bool;
    /// Reads the caller's memory.
    fn dbtr_read(&mut self, gpa: Gpa, out: &mut [u8]) -> Result<(), SbiError>;
    /// Writes the caller's memory.
    fn dbtr_write(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), SbiError>;
    /// Loads the (changed) state into the hart the caller runs on.
    fn dbtr_apply(&mut self);
}

/// Bytes per trigger entry in the shared memory (four XLEN words).
const ENTRY: u64 = 32;

/// Checks a guest trigger configuration: NOT_SUPPORTED for what Diosix does not
/// offer (other types, chains, data match, other actions, textra), INVALID_PARAM for
/// what no guest may ask (debug mode, M-mode, VS/VU bits, a zero trigger).
pub fn check_config(t1: u64, t3: u64) -> Result<(), SbiError> {
    use tdata1::*;
    if t1 >> TYPE_SHIFT != TYPE_MCONTROL6 {
        return Err(SbiError::NotSupported);
    }
    if t1 & (DMODE | M | VS | VU) != 0 || t1 & ACCESS == 0 {
        return Err(SbiError::InvalidParam);
    }
    if t1 & (SELECT | ACTION | CHAIN | UNCERTAINEN) != 0
        || (t1 & MATCH) >> 7 == 1
        || (t1 & MATCH) >> 7 > 3
        || t1 & (0x7 << 16) != 0
        || t3 != 0
    {
        return Err(SbiError::NotSupported);
    }
    Ok(())
}

fn le(b: &[u8], word: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[word * 8..word * 8 + 8]);
    u64::from_le_bytes(w)
}

/// The triggers a base and mask name (bit `i` of `mask`: trigger `base + i`); every
/// one must be installed (INVALID_PARAM otherwise).
fn selected(s: &DbtrState, max: usize, base: usize, mask: usize) -> Result<u64, SbiError> {
    let mut set = 0u64;
    for bit in 0..usize::BITS as usize {
        if mask & (1 << bit) == 0 {
            continue;
        }
        let idx = base.checked_add(bit).ok_or(SbiError::InvalidParam)?;
        if idx >= max || s.triggers[idx].is_none() {
            return Err(SbiError::InvalidParam);
        }
        set |= 1 << idx;
    }
    Ok(set)
}

/// Decodes one DBTR call. Never inlined: its stack arrays and register use would
/// otherwise be paid by every SBI call's entry (the null call grew by 20 instructions).
#[inline(never)]
pub fn dispatch<E: DebugTriggers + ?Sized>(env: &mut E, function: usize, a: [usize; 3]) -> SbiRet {
    use fid::dbtr::*;
    let max = env.dbtr_max().min(MAX_TRIGGERS);
    match function {
        NUM_TRIGGERS => {
            let t1 = a[0] as u64;
            if t1 == 0 {
                return SbiRet::ok(max);
            }
            // Every hart trigger can take any configuration this accepts.
            SbiRet::ok(if check_config(t1, 0).is_ok() { max } else { 0 })
        }
        SET_SHMEM => {
            let [lo, hi, flags] = a;
            if flags != 0 {
                return SbiRet::error(SbiError::InvalidParam);
            }
            if lo == usize::MAX && hi == usize::MAX {
                env.dbtr_state().shmem = None;
                return SbiRet::ok(0);
            }
            if lo % 8 != 0 {
                return SbiRet::error(SbiError::InvalidParam);
            }
            let len = max as u64 * ENTRY;
            if hi != 0 || max == 0 || !env.dbtr_shmem_ok(Gpa::new(lo as u64), len) {
                return SbiRet::error(SbiError::InvalidAddress);
            }
            env.dbtr_state().shmem = Some(Gpa::new(lo as u64));
            SbiRet::ok(0)
        }
        READ_TRIGGERS => {
            let Some(shmem) = env.dbtr_state().shmem else {
                return SbiRet::error(SbiError::NoShmem);
            };
            let [base, count, _] = a;
            if base >= max || count > max - base {
                return SbiRet::error(SbiError::BadRange);
            }
            for i in 0..count {
                let t = env.dbtr_state().triggers[base + i];
                let words = match t {
                    Some(t) => [t.state_word(base + i), t.guest_tdata1(), t.tdata2, 0],
                    None => [0; 4],
                };
                let mut bytes = [0u8; ENTRY as usize];
                for (w, v) in words.iter().enumerate() {
                    bytes[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                let at = Gpa::new(shmem.raw() + i as u64 * ENTRY);
                if let Err(e) = env.dbtr_write(at, &bytes) {
                    return SbiRet::error(e);
                }
            }
            SbiRet::ok(0)
        }
        INSTALL_TRIGGERS | UPDATE_TRIGGERS => {
            let Some(shmem) = env.dbtr_state().shmem else {
                return SbiRet::error(SbiError::NoShmem);
            };
            let count = a[0];
            if count > max {
                return SbiRet::error(SbiError::BadRange);
            }
            // Every entry is read and checked before any trigger changes, so a failure
            // leaves the vCPU's triggers as they were.
            let mut entries = [(0u64, 0u64, 0u64); MAX_TRIGGERS];
            for (i, e) in entries.iter_mut().enumerate().take(count) {
                let mut b = [0u8; ENTRY as usize];
                let at = Gpa::new(shmem.raw() + i as u64 * ENTRY);
                if let Err(err) = env.dbtr_read(at, &mut b) {
                    return SbiRet {
                        error: err.code(),
                        value: i,
                    };
                }
                if let Err(err) = check_config(le(&b, 1), le(&b, 3)) {
                    return SbiRet {
                        error: err.code(),
                        value: i,
                    };
                }
                *e = (le(&b, 0), le(&b, 1), le(&b, 2));
            }
            let mut next = env.dbtr_state().triggers;
            let mut assigned = [0usize; MAX_TRIGGERS];
            for (i, &(idx, t1, t2)) in entries.iter().enumerate().take(count) {
                let slot = if function == INSTALL_TRIGGERS {
                    match (0..max).find(|&j| next[j].is_none()) {
                        Some(j) => j,
                        None => {
                            return SbiRet {
                                error: SbiError::Failed.code(),
                                value: i,
                            }
                        }
                    }
                } else {
                    let Ok(j) = usize::try_from(idx) else {
                        return SbiRet {
                            error: SbiError::InvalidParam.code(),
                            value: i,
                        };
                    };
                    if j >= max {
                        return SbiRet {
                            error: SbiError::InvalidParam.code(),
                            value: i,
                        };
                    }
                    if next[j].is_none() {
                        return SbiRet {
                            error: SbiError::Failed.code(),
                            value: i,
                        };
                    }
                    j
                };
                next[slot] = Some(Trigger {
                    tdata1: t1,
                    tdata2: t2,
                    enabled: true,
                });
                assigned[i] = slot;
            }
            if function == INSTALL_TRIGGERS {
                for (i, &slot) in assigned.iter().enumerate().take(count) {
                    let at = Gpa::new(shmem.raw() + i as u64 * ENTRY);
                    if let Err(err) = env.dbtr_write(at, &(slot as u64).to_le_bytes()) {
                        return SbiRet {
                            error: err.code(),
                            value: i,
                        };
                    }
                }
            }
            env.dbtr_state().triggers = next;
            env.dbtr_apply();
            SbiRet::ok(0)
        }
        UNINSTALL_TRIGGERS | ENABLE_TRIGGERS | DISABLE_TRIGGERS => {
            let [base, mask, _] = a;
            let set = match selected(env.dbtr_state(), max, base, mask) {
                Ok(s) => s,
                Err(e) => return SbiRet::error(e),
            };
            let s = env.dbtr_state();
            for i in 0..MAX_TRIGGERS {
                if set & (1 << i) == 0 {
                    continue;
                }
                match function {
                    UNINSTALL_TRIGGERS => s.triggers[i] = None,
                    _ => {
                        if let Some(t) = s.triggers[i].as_mut() {
                            t.enabled = function == ENABLE_TRIGGERS;
                        }
                    }
                }
            }
            env.dbtr_apply();
            SbiRet::ok(0)
        }
        _ => SbiRet::error(SbiError::NotSupported),
    }
}
