//! Decode of one standard SBI call: the extension and function numbers (named in
//! `diosix_abi::{eid, fid}`), every argument check, then one call into the extension's
//! trait in [`super::env`].

use super::env::{
    Base, Caller, Console, FirmwareFeatures, Hsm, Ipi, LegacyMask, Reset, Rfence, SbiEnv,
    StealTime, SystemSuspend, Timer,
};
use super::{
    decode_hart_mask, eid, FenceKind, FwftFeature, HartSet, Reply, ResetType, SbiRet, Suspend,
    SPEC_VERSION,
};
use crate::addr::{Gpa, Gva};
use diosix_abi::{error, fid, SbiError};

/// An SBI extension this implementation provides: the caller's EID (a7) decided once,
/// for the dispatch, `probe_extension` and the trap's exit accounting alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// BASE.
    Base,
    /// TIME.
    Time,
    /// IPI.
    Ipi,
    /// RFENCE.
    Rfence,
    /// HSM.
    Hsm,
    /// SRST.
    Srst,
    /// DBCN.
    Dbcn,
    /// FWFT.
    Fwft,
    /// SUSP.
    Susp,
    /// STA.
    Sta,
    /// DBTR.
    Dbtr,
    /// PMU.
    Pmu,
    /// The Diosix extension.
    Diosix,
    /// A legacy (v0.1) call: its EID, from `LEGACY_SET_TIMER` to `LEGACY_SHUTDOWN`.
    Legacy(usize),
}

impl Extension {
    /// The extension `eid` names, `None` if this implementation has none by that EID.
    #[inline]
    pub const fn of(eid: usize) -> Option<Self> {
        Some(match eid {
            eid::BASE => Self::Base,
            eid::TIME => Self::Time,
            eid::IPI => Self::Ipi,
            eid::RFENCE => Self::Rfence,
            eid::HSM => Self::Hsm,
            eid::SRST => Self::Srst,
            eid::DBCN => Self::Dbcn,
            eid::FWFT => Self::Fwft,
            eid::SUSP => Self::Susp,
            eid::STA => Self::Sta,
            eid::DBTR => Self::Dbtr,
            eid::PMU => Self::Pmu,
            eid::DIOSIX => Self::Diosix,
            eid::LEGACY_SET_TIMER..=eid::LEGACY_SHUTDOWN => Self::Legacy(eid),
            _ => return None,
        })
    }
}

/// Extensions this implementation provides (for `probe_extension`).
pub fn extension_present(id: usize) -> bool {
    Extension::of(id).is_some()
}

/// Decodes and performs one SBI call. `regs` are a0..a7 of the caller.
pub fn dispatch(env: &mut dyn SbiEnv, regs: [usize; 8]) -> Reply {
    match Extension::of(regs[7]) {
        Some(ext) => dispatch_to(env, ext, regs),
        None => Reply::Sbi(SbiRet::error(SbiError::NotSupported)),
    }
}

/// [`dispatch`] of a call whose extension `ext` the caller has decoded from
/// `regs[7]` already ([`Extension::of`]).
#[inline]
pub fn dispatch_to<E: SbiEnv + ?Sized>(env: &mut E, ext: Extension, regs: [usize; 8]) -> Reply {
    let [a0, a1, a2, a3, a4, a5, fid, _] = regs;
    let ret = match ext {
        Extension::Base => base(env, fid, a0),
        Extension::Time => time(env, fid, a0),
        Extension::Ipi => ipi(env, fid, a0, a1),
        Extension::Rfence => rfence(env, fid, a0, a1),
        Extension::Hsm => hsm(env, fid, a0, a1, a2),
        Extension::Srst => srst(env, fid, a0, a1),
        Extension::Dbcn => dbcn(env, fid, a0, a1, a2),
        Extension::Fwft => fwft(env, fid, a0, a1, a2),
        Extension::Susp => susp(env, fid, a0, a1, a2),
        Extension::Sta => sta(env, fid, a0, a1, a2),
        Extension::Dbtr => super::dbtr::dispatch(env, fid, [a0, a1, a2]),
        Extension::Pmu => super::pmu::dispatch(env, fid, [a0, a1, a2, a3, a4]),
        Extension::Diosix => env.diosix_call(fid, [a0, a1, a2, a3, a4, a5]),
        Extension::Legacy(eid) => return legacy(env, eid, a0),
    };
    Reply::Sbi(ret)
}

fn base<E: Base + ?Sized>(env: &mut E, function: usize, a0: usize) -> SbiRet {
    use fid::base::*;
    match function {
        GET_SBI_SPEC_VERSION => SbiRet::ok(SPEC_VERSION),
        GET_SBI_IMPL_ID => SbiRet::ok(diosix_abi::SBI_IMPL_ID_DIOSIX),
        GET_SBI_IMPL_VERSION => SbiRet::ok(env.impl_version()),
        PROBE_EXTENSION => SbiRet::ok(extension_present(a0) as usize),
        GET_MVENDORID => SbiRet::ok(env.machine_ids().0),
        GET_MARCHID => SbiRet::ok(env.machine_ids().1),
        GET_MIMPID => SbiRet::ok(env.machine_ids().2),
        _ => SbiRet::error(SbiError::NotSupported),
    }
}

fn time<E: Timer + ?Sized>(env: &mut E, function: usize, deadline: usize) -> SbiRet {
    match function {
        fid::time::SET_TIMER => {
            env.set_timer(deadline as u64);
            SbiRet::ok(0)
        }
        _ => SbiRet::error(SbiError::NotSupported),
    }
}

fn ipi<E: Caller + Ipi + ?Sized>(env: &mut E, function: usize, mask: usize, base: usize) -> SbiRet {
    if function != fid::ipi::SEND_IPI {
        return SbiRet::error(SbiError::NotSupported);
    }
    SbiRet::from(decode_hart_mask(mask, base, env.vcpu_count()).map(|set| {
        env.send_ipi(set);
        0
    }))
}

fn rfence<E: Caller + Rfence + ?Sized>(
    env: &mut E,
    function: usize,
    mask: usize,
    base: usize,
) -> SbiRet {
    use fid::rfence::*;
    let kind = match function {
        REMOTE_FENCE_I => FenceKind::Instruction,
        REMOTE_SFENCE_VMA => FenceKind::Vma,
        REMOTE_SFENCE_VMA_ASID => FenceKind::VmaAsid,
        // HFENCE.GVMA/VVMA variants: guests are not given the H extension, so these
        // are not supported on any target hart (SBI spec, RFENCE chapter).
        _ => return SbiRet::error(SbiError::NotSupported),
    };
    SbiRet::from(decode_hart_mask(mask, base, env.vcpu_count()).map(|set| {
        env.remote_fence(set, kind);
        0
    }))
}

fn hsm<E: Caller + Hsm + ?Sized>(
    env: &mut E,
    function: usize,
    a0: usize,
    a1: usize,
    a2: usize,
) -> SbiRet {
    use fid::hsm::*;
    let hart_exists = |env: &E| a0 < env.vcpu_count();
    let result = match function {
        HART_START => {
            if !hart_exists(env) {
                return SbiRet::error(SbiError::InvalidParam);
            }
            env.hart_start(a0, Gpa::new(a1 as u64), a2)
        }
        HART_STOP => env.hart_stop(),
        HART_GET_STATUS => {
            if !hart_exists(env) {
                return SbiRet::error(SbiError::InvalidParam);
            }
            return SbiRet::ok(env.hart_status(a0) as usize);
        }
        HART_SUSPEND => {
            // `suspend_type` is a uint32_t: bits 63..32 are ignored, not refused.
            let how = match a0 as u32 {
                // Only the two default types exist here; everything else is either
                // reserved or platform-specific, and we define no platform types.
                0x0000_0000 => Suspend::Retentive,
                0x8000_0000 => Suspend::NonRetentive {
                    resume: Gpa::new(a1 as u64),
                    opaque: a2,
                },
                _ => return SbiRet::error(SbiError::InvalidParam),
            };
            env.hart_suspend(how)
        }
        _ => return SbiRet::error(SbiError::NotSupported),
    };
    SbiRet::from(result)
}

fn srst<E: Reset + ?Sized>(env: &mut E, function: usize, kind: usize, reason: usize) -> SbiRet {
    if function != fid::srst::SYSTEM_RESET {
        return SbiRet::error(SbiError::NotSupported);
    }
    // Both parameters are uint32_t: bits 63..32 are ignored, not refused.
    let (kind, reason) = (kind as u32, reason as u32);
    let kind = match kind {
        0 => ResetType::Shutdown,
        1 => ResetType::ColdReboot,
        2 => ResetType::WarmReboot,
        _ => return SbiRet::error(SbiError::InvalidParam),
    };
    // Reasons: 0 none, 1 system failure, 0xE000_0000.. SBI-implementation specific,
    // 0xF000_0000.. vendor specific (taken as "no reason"); everything else is reserved.
    let failure = match reason {
        0 => false,
        1 => true,
        0xE000_0000.. => false,
        _ => return SbiRet::error(SbiError::InvalidParam),
    };
    SbiRet::from(env.system_reset(kind, failure))
}

/// STA `set_shmem`. Checks, in order: the function (NOT_SUPPORTED); `flags` zero
/// (INVALID_PARAM); both halves all-ones: stop reporting; `lo` 64-byte aligned
/// (INVALID_PARAM); `hi` zero, as no guest has memory above 2^64 (INVALID_ADDRESS);
/// then the environment's check that the 64 bytes are writable RAM (INVALID_ADDRESS).
#[inline(never)]
fn sta<E: StealTime + ?Sized>(
    env: &mut E,
    function: usize,
    lo: usize,
    hi: usize,
    flags: usize,
) -> SbiRet {
    use fid::sta::{SET_SHMEM, SHMEM_SIZE};
    if function != SET_SHMEM {
        return SbiRet::error(SbiError::NotSupported);
    }
    if flags != 0 {
        return SbiRet::error(SbiError::InvalidParam);
    }
    let shmem = if lo == usize::MAX && hi == usize::MAX {
        None
    } else {
        if !(lo as u64).is_multiple_of(SHMEM_SIZE) {
            return SbiRet::error(SbiError::InvalidParam);
        }
        if hi != 0 {
            return SbiRet::error(SbiError::InvalidAddress);
        }
        Some(Gpa::new(lo as u64))
    };
    SbiRet::from(env.sta_set_shmem(shmem).map(|()| 0))
}

/// SUSP: `sleep_type` is a `uint32_t` (upper bits ignored). Only SUSPEND_TO_RAM (0)
/// exists here: reserved and platform-specific types are INVALID_PARAM; then the
/// environment's checks (other vCPUs stopped: DENIED; `resume_addr`: INVALID_ADDRESS).
/// On success the caller resumes at `resume_addr`, not after its ecall.
#[inline(never)]
fn susp<E: SystemSuspend + ?Sized>(
    env: &mut E,
    function: usize,
    sleep_type: usize,
    resume: usize,
    opaque: usize,
) -> SbiRet {
    if function != fid::susp::SUSPEND {
        return SbiRet::error(SbiError::NotSupported);
    }
    if sleep_type as u32 != fid::susp::SUSPEND_TO_RAM {
        return SbiRet::error(SbiError::InvalidParam);
    }
    SbiRet::from(
        env.system_suspend(Gpa::new(resume as u64), opaque)
            .map(|()| 0),
    )
}

/// FWFT: `feature` is a `uint32_t` (upper bits ignored). Checks, in order: the function
/// (NOT_SUPPORTED); the feature ID (reserved and platform-specific: DENIED; standard
/// but not implemented here: NOT_SUPPORTED); for SET, the flags (only LOCK:
/// INVALID_PARAM) and the value (0 or 1: INVALID_PARAM); the host's support
/// (NOT_SUPPORTED); the lock (DENIED_LOCKED); and MISALIGNED_EXC_DELEG = 0, which Diosix
/// refuses (DENIED: it has no misaligned-access emulator, so such exceptions always go
/// to the guest, as the spec's note on hypervisors allows).
#[inline(never)]
fn fwft<E: FirmwareFeatures + ?Sized>(
    env: &mut E,
    function: usize,
    feature: usize,
    value: usize,
    flags: usize,
) -> SbiRet {
    use fid::fwft::*;
    if function != SET && function != GET {
        return SbiRet::error(SbiError::NotSupported);
    }
    let id = feature as u32;
    let f = match id as usize {
        MISALIGNED_EXC_DELEG => FwftFeature::MisalignedExcDeleg,
        PTE_AD_HW_UPDATING => FwftFeature::PteAdHwUpdating,
        LANDING_PAD | SHADOW_STACK | DOUBLE_TRAP | POINTER_MASKING_PMLEN => {
            return SbiRet::error(SbiError::NotSupported)
        }
        _ => return SbiRet::error(SbiError::Denied),
    };
    if function == SET && (flags & !FLAG_LOCK != 0 || value > 1) {
        return SbiRet::error(SbiError::InvalidParam);
    }
    if !env.fwft_supported(f) {
        return SbiRet::error(SbiError::NotSupported);
    }
    let mut state = env.fwft_state();
    if function == GET {
        return SbiRet::ok(usize::from(state.value(f)));
    }
    if state.is_locked(f) {
        return SbiRet::error(SbiError::DeniedLocked);
    }
    if f == FwftFeature::MisalignedExcDeleg && value == 0 {
        return SbiRet::error(SbiError::Denied);
    }
    state.values[f as usize] = value as u8;
    state.locked[f as usize] = flags & FLAG_LOCK != 0;
    env.fwft_apply(state);
    SbiRet::ok(0)
}

/// Forms the buffer GPA of a DBCN call. On RV64 the address is `lo`; a non-zero `hi`
/// names memory above 2^64, which no guest has.
fn dbcn_buffer(lo: usize, hi: usize) -> Result<Gpa, SbiError> {
    if hi == 0 {
        Ok(Gpa::new(lo as u64))
    } else {
        Err(SbiError::InvalidParam)
    }
}

fn dbcn<E: Console + ?Sized>(
    env: &mut E,
    function: usize,
    a0: usize,
    a1: usize,
    a2: usize,
) -> SbiRet {
    use fid::dbcn::*;
    let len = a0 as u64;
    SbiRet::from(match function {
        CONSOLE_WRITE => dbcn_buffer(a1, a2).and_then(|gpa| env.console_write(gpa, len)),
        CONSOLE_READ => dbcn_buffer(a1, a2).and_then(|gpa| env.console_read(gpa, len)),
        CONSOLE_WRITE_BYTE => {
            env.console_write_byte(a0 as u8);
            Ok(0)
        }
        _ => Err(SbiError::NotSupported),
    })
}

/// The legacy hart mask: a pointer (a guest virtual address) to an `unsigned long`, or
/// null for every hart.
fn legacy_targets<E: Caller + LegacyMask + ?Sized>(
    env: &mut E,
    pointer: usize,
) -> Result<HartSet, SbiError> {
    let vcpus = env.vcpu_count();
    if pointer == 0 {
        return Ok(HartSet::all(vcpus));
    }
    let mask = env
        .read_legacy_mask(Gva::new(pointer as u64))
        .ok_or(SbiError::InvalidAddress)?;
    decode_hart_mask(mask, 0, vcpus)
}

fn legacy<E: SbiEnv + ?Sized>(env: &mut E, ext: usize, a0: usize) -> Reply {
    let done = |r: Result<(), SbiError>| r.map_or_else(SbiError::code, |()| error::SUCCESS);
    let code = match ext {
        eid::LEGACY_SET_TIMER => {
            env.set_timer(a0 as u64);
            error::SUCCESS
        }
        eid::LEGACY_CONSOLE_PUTCHAR => {
            env.console_write_byte(a0 as u8);
            error::SUCCESS
        }
        eid::LEGACY_CONSOLE_GETCHAR => env.console_getchar().map_or(-1, |b| b as isize),
        eid::LEGACY_CLEAR_IPI => {
            env.clear_ipi();
            error::SUCCESS
        }
        eid::LEGACY_SEND_IPI => done(legacy_targets(env, a0).map(|set| env.send_ipi(set))),
        eid::LEGACY_REMOTE_FENCE_I
        | eid::LEGACY_REMOTE_SFENCE_VMA
        | eid::LEGACY_REMOTE_SFENCE_VMA_ASID => {
            let kind = match ext {
                eid::LEGACY_REMOTE_FENCE_I => FenceKind::Instruction,
                eid::LEGACY_REMOTE_SFENCE_VMA => FenceKind::Vma,
                _ => FenceKind::VmaAsid,
            };
            done(legacy_targets(env, a0).map(|set| env.remote_fence(set, kind)))
        }
        eid::LEGACY_SHUTDOWN => done(env.system_reset(ResetType::Shutdown, false)),
        _ => error::NOT_SUPPORTED,
    };
    Reply::Legacy(code)
}
