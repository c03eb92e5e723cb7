//! Standard SBI (spec 2.0) decode, argument validation and dispatch.
//!
//! The hypervisor's trap handler passes the caller's a0..a7 to [`dispatch`] together with
//! an [`SbiEnv`], which performs the effects (timers, IPIs, hart state, console). Every
//! check on guest-controlled values — hart masks, suspend and reset types, buffer
//! addresses — happens here, in safe code tested on the host; the environment only ever
//! sees validated requests.
//!
//! Parameters the specification declares 32 bits wide (HSM `suspend_type`, SRST
//! `reset_type` and `reset_reason`) are truncated to their low 32 bits at decode, never
//! refused for the upper ones: the spec's binary encoding chapter has the SBI
//! implementation use only the 32 bits of such data, and the RISC-V calling convention
//! passes a C `uint32_t` sign-extended, so `0x8000_0000` arrives from compiled code as
//! `0xFFFF_FFFF_8000_0000`. FWFT's `uint32_t feature` and SUSP's `uint32_t sleep_type`
//! are truncated the same way. DBCN
//! `write_byte`'s `uint8_t` keeps only its low byte, as does the legacy
//! `console_putchar`'s `int`. Every other parameter of the extensions
//! here is `unsigned long` or `uint64_t` and is used whole.

use crate::addr::Gpa;
use diosix_abi::error;
pub use diosix_abi::SbiError;

pub mod dbtr;
mod dispatch;
mod env;
pub mod pmu;

pub use dispatch::{dispatch, dispatch_to, extension_present, Extension};
pub use env::{
    Base, Caller, Console, DiosixExtension, FirmwareFeatures, Hsm, Ipi, LegacyMask, Reset, Rfence,
    SbiEnv, StealTime, SystemSuspend, Timer,
};

/// Extension IDs (shared with the guests through the ABI crate).
pub use diosix_abi::eid;

/// SBI specification version implemented: 2.0 (major in bits 30:24).
pub const SPEC_VERSION: usize = 2 << 24;

/// The FWFT features Diosix implements (SBI 3.0 chapter "Firmware Features"). Every
/// one is local (per vCPU) with values 0 and 1; the other standard features (landing
/// pad, shadow stack, double trap, pointer masking) answer NOT_SUPPORTED, reserved and
/// platform-specific IDs DENIED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FwftFeature {
    /// MISALIGNED_EXC_DELEG: misaligned load/store exceptions go to the guest's own
    /// handler.
    MisalignedExcDeleg = 0,
    /// PTE_AD_HW_UPDATING: the hardware sets A/D bits in the guest's page tables
    /// (Svadu).
    PteAdHwUpdating = 1,
}

impl FwftFeature {
    /// Every feature, by its index.
    pub const ALL: [FwftFeature; 2] = [Self::MisalignedExcDeleg, Self::PteAdHwUpdating];
}

/// One vCPU's FWFT settings: a value and a lock per [`FwftFeature`] (by index). A
/// hart reset (HSM start, a VM's reboot) returns it to [`FwftState::reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwftState {
    /// Each feature's value (0 or 1).
    pub values: [u8; 2],
    /// Each feature's lock.
    pub locked: [bool; 2],
}

impl FwftState {
    /// The reset values: misaligned exceptions delegated (Diosix always delegates
    /// them), hardware A/D updating off (the spec's reset value).
    pub const fn reset() -> Self {
        Self {
            values: [1, 0],
            locked: [false, false],
        }
    }

    /// The value of `f`.
    pub fn value(&self, f: FwftFeature) -> u8 {
        self.values[f as usize]
    }

    /// Whether `f` is locked.
    pub fn is_locked(&self, f: FwftFeature) -> bool {
        self.locked[f as usize]
    }
}

impl Default for FwftState {
    fn default() -> Self {
        Self::reset()
    }
}

/// The value pair an SBI call returns in a0 (error) and a1 (value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbiRet {
    /// Error code (a0).
    pub error: isize,
    /// Return value (a1).
    pub value: usize,
}

impl SbiRet {
    /// Success with a value.
    pub const fn ok(value: usize) -> Self {
        Self {
            error: error::SUCCESS,
            value,
        }
    }
    /// An error code, value 0.
    pub const fn err(code: isize) -> Self {
        Self {
            error: code,
            value: 0,
        }
    }
    /// The reply for an error.
    pub const fn error(e: SbiError) -> Self {
        Self::err(e.code())
    }
}

impl From<Result<usize, SbiError>> for SbiRet {
    fn from(r: Result<usize, SbiError>) -> Self {
        match r {
            Ok(v) => Self::ok(v),
            Err(e) => Self::error(e),
        }
    }
}

impl From<Result<(), SbiError>> for SbiRet {
    fn from(r: Result<(), SbiError>) -> Self {
        Self::from(r.map(|()| 0))
    }
}

/// What the caller sees after a call: a normal return in a0/a1, or a legacy-style
/// return that only sets a0 (a1 is left as the caller had it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Standard return: a0 = error, a1 = value.
    Sbi(SbiRet),
    /// Legacy v0.1 return: a0 only.
    Legacy(isize),
}

/// A set of vCPU indices within the calling VM (at most [`MAX_VCPUS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HartSet(pub u64);

/// The largest number of vCPUs a VM can have (one bit each in a [`HartSet`]).
pub const MAX_VCPUS: usize = 64;

impl HartSet {
    /// Every vCPU below `count`.
    pub fn all(count: usize) -> Self {
        if count >= MAX_VCPUS {
            Self(u64::MAX)
        } else {
            Self((1u64 << count) - 1)
        }
    }
    /// True if `hart` is in the set.
    pub fn contains(&self, hart: usize) -> bool {
        hart < MAX_VCPUS && self.0 & (1 << hart) != 0
    }
    /// The members, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        // Set bits only (an IPI to one hart should not cost 64 tests).
        let mut rest = self.0;
        core::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let h = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(h)
        })
    }
}

/// Decodes an SBI hart mask against a VM with `vcpus` vCPUs.
///
/// `base == usize::MAX` means every hart (the mask is ignored). Otherwise every set bit
/// `i` names hart `base + i`, which must exist: any bit naming a hart that does not is
/// INVALID_PARAM, as is an overflowing `base + i`.
pub fn decode_hart_mask(mask: usize, base: usize, vcpus: usize) -> Result<HartSet, SbiError> {
    if base == usize::MAX {
        return Ok(HartSet::all(vcpus));
    }
    if mask == 0 {
        return Ok(HartSet(0));
    }
    // Every set bit names a hart no higher than the highest one's: checking that one
    // checks them all, with no loop over the mask.
    let top = (usize::BITS - 1 - mask.leading_zeros()) as usize;
    let last = base.checked_add(top).ok_or(SbiError::InvalidParam)?;
    if last >= vcpus || last >= MAX_VCPUS {
        return Err(SbiError::InvalidParam);
    }
    // `last < MAX_VCPUS = 64`, so `base < 64` and the shift keeps every bit.
    Ok(HartSet((mask as u64) << base))
}

/// What a remote fence must do on its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    /// `fence.i`.
    Instruction,
    /// `sfence.vma` of a range (the hypervisor flushes the VM's whole VS-stage).
    Vma,
    /// `sfence.vma` of a range in one ASID (flushed the same way; told apart only for
    /// the PMU's firmware events).
    VmaAsid,
}

/// HSM hart states (SBI spec table 'HSM hart states').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum HartState {
    /// Running.
    Started = 0,
    /// Stopped.
    Stopped = 1,
    /// Start requested, not yet running.
    StartPending = 2,
    /// Stop requested.
    StopPending = 3,
    /// Suspended.
    Suspended = 4,
    /// Suspend requested.
    SuspendPending = 5,
    /// Resuming.
    ResumePending = 6,
}

/// A validated HSM suspend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suspend {
    /// Default retentive suspend: resume after the ecall once an interrupt is pending.
    Retentive,
    /// Default non-retentive suspend: resume at `resume` with a0 = hart, a1 = `opaque`.
    NonRetentive {
        /// Where the hart resumes.
        resume: Gpa,
        /// Passed back in a1.
        opaque: usize,
    },
}

/// A validated system reset request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetType {
    /// Shutdown.
    Shutdown,
    /// Cold reboot.
    ColdReboot,
    /// Warm reboot.
    WarmReboot,
}

#[cfg(test)]
mod tests;
