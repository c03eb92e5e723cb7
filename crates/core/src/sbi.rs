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
//! `0xFFFF_FFFF_8000_0000`. DBCN `write_byte`'s `uint8_t` keeps only its low byte, as
//! does the legacy `console_putchar`'s `int`. Every other parameter of the extensions
//! here is `unsigned long` or `uint64_t` and is used whole.

use crate::addr::Gpa;
use diosix_abi::error;

/// Extension IDs (shared with the guests through the ABI crate).
pub use diosix_abi::eid;

/// SBI specification version implemented: 2.0 (major in bits 30:24).
pub const SPEC_VERSION: usize = 2 << 24;

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
        (0..MAX_VCPUS).filter(move |h| self.contains(*h))
    }
}

/// Decodes an SBI hart mask against a VM with `vcpus` vCPUs.
///
/// `base == usize::MAX` means every hart (the mask is ignored). Otherwise every set bit
/// `i` names hart `base + i`, which must exist: any bit naming a hart that does not is
/// INVALID_PARAM, as is an overflowing `base + i`.
pub fn decode_hart_mask(mask: usize, base: usize, vcpus: usize) -> Result<HartSet, isize> {
    if base == usize::MAX {
        return Ok(HartSet::all(vcpus));
    }
    let mut set = 0u64;
    for bit in 0..usize::BITS as usize {
        if mask & (1 << bit) == 0 {
            continue;
        }
        let hart = base.checked_add(bit).ok_or(error::INVALID_PARAM)?;
        if hart >= vcpus || hart >= MAX_VCPUS {
            return Err(error::INVALID_PARAM);
        }
        set |= 1 << hart;
    }
    Ok(HartSet(set))
}

/// What a remote fence must do on its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    /// `fence.i`.
    Instruction,
    /// `sfence.vma` (any range or ASID: the hypervisor flushes the VM's whole VS-stage).
    Vma,
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

/// The effects the hypervisor performs for SBI calls, for one calling vCPU.
///
/// Implementations trust their arguments' *form* (hart sets name existing vCPUs,
/// types are valid) but still own every check that needs guest memory.
pub trait SbiEnv {
    /// Number of vCPUs of the calling VM.
    fn vcpu_count(&self) -> usize;
    /// The calling vCPU's hart index within its VM.
    fn this_hart(&self) -> usize;
    /// Hypervisor version for `get_impl_version`.
    fn impl_version(&self) -> usize;
    /// mvendorid, marchid, mimpid as the guest should see them.
    fn machine_ids(&self) -> (usize, usize, usize);

    /// Sets the calling vCPU's timer deadline (absolute `time` value) and clears its
    /// pending timer interrupt.
    fn set_timer(&mut self, deadline: u64);
    /// Makes a supervisor software interrupt pending on each target.
    fn send_ipi(&mut self, targets: HartSet);
    /// Clears the caller's pending supervisor software interrupt (legacy clear_ipi).
    fn clear_ipi(&mut self);
    /// Performs a fence on each target and returns once all are done.
    fn remote_fence(&mut self, targets: HartSet, kind: FenceKind);

    /// HSM state of a vCPU (which exists).
    fn hart_status(&self, hart: usize) -> HartState;
    /// Starts a stopped vCPU at `start` with a0 = hart, a1 = opaque. The environment
    /// validates `start` (INVALID_ADDRESS) and the state (ALREADY_AVAILABLE).
    fn hart_start(&mut self, hart: usize, start: Gpa, opaque: usize) -> Result<(), isize>;
    /// Stops the calling vCPU.
    fn hart_stop(&mut self) -> Result<(), isize>;
    /// Suspends the calling vCPU. For non-retentive suspend the environment validates
    /// the resume address (INVALID_ADDRESS).
    fn hart_suspend(&mut self, how: Suspend) -> Result<(), isize>;

    /// Resets or shuts down the calling VM (or the host, for the Root VM).
    fn system_reset(&mut self, kind: ResetType, failure: bool) -> Result<(), isize>;

    /// Writes the guest buffer `[gpa, gpa+len)` to the VM's console; returns bytes
    /// written. Errors (INVALID_PARAM for a buffer outside the caller's RAM) come from
    /// the environment's G-stage check.
    fn console_write(&mut self, gpa: Gpa, len: u64) -> Result<usize, isize>;
    /// Reads up to `len` pending console bytes into the guest buffer; never blocks.
    fn console_read(&mut self, gpa: Gpa, len: u64) -> Result<usize, isize>;
    /// Writes one byte to the VM's console.
    fn console_write_byte(&mut self, byte: u8);
    /// One pending console input byte, if any; never blocks.
    fn console_getchar(&mut self) -> Option<u8>;
    /// Reads the `unsigned long` a legacy call's hart-mask pointer names (a guest
    /// virtual address under the caller's current translation).
    fn read_legacy_mask(&mut self, gva: usize) -> Option<usize>;

    /// Handles a call to the Diosix extension.
    fn diosix_call(&mut self, fid: usize, args: [usize; 6]) -> SbiRet;
}

/// Extensions this implementation provides (for `probe_extension`).
pub fn extension_present(id: usize) -> bool {
    matches!(
        id,
        eid::LEGACY_SET_TIMER
            ..=eid::LEGACY_SHUTDOWN
                | eid::BASE
                | eid::TIME
                | eid::IPI
                | eid::RFENCE
                | eid::HSM
                | eid::SRST
                | eid::DBCN
                | eid::DIOSIX
    )
}

/// Decodes and performs one SBI call. `regs` are a0..a7 of the caller.
pub fn dispatch(env: &mut dyn SbiEnv, regs: [usize; 8]) -> Reply {
    let [a0, a1, a2, a3, a4, a5, fid, ext] = regs;
    let ret = match ext {
        eid::BASE => base(env, fid, a0),
        eid::TIME => match fid {
            0 => {
                env.set_timer(a0 as u64);
                SbiRet::ok(0)
            }
            _ => SbiRet::err(error::NOT_SUPPORTED),
        },
        eid::IPI => match fid {
            0 => match decode_hart_mask(a0, a1, env.vcpu_count()) {
                Ok(set) => {
                    env.send_ipi(set);
                    SbiRet::ok(0)
                }
                Err(e) => SbiRet::err(e),
            },
            _ => SbiRet::err(error::NOT_SUPPORTED),
        },
        eid::RFENCE => rfence(env, fid, a0, a1),
        eid::HSM => hsm(env, fid, a0, a1, a2),
        eid::SRST => srst(env, fid, a0, a1),
        eid::DBCN => dbcn(env, fid, a0, a1, a2),
        eid::DIOSIX => env.diosix_call(fid, [a0, a1, a2, a3, a4, a5]),
        eid::LEGACY_SET_TIMER..=eid::LEGACY_SHUTDOWN => return legacy(env, ext, a0),
        _ => SbiRet::err(error::NOT_SUPPORTED),
    };
    Reply::Sbi(ret)
}

fn base(env: &mut dyn SbiEnv, fid: usize, a0: usize) -> SbiRet {
    match fid {
        0 => SbiRet::ok(SPEC_VERSION),
        1 => SbiRet::ok(diosix_abi::SBI_IMPL_ID_DIOSIX),
        2 => SbiRet::ok(env.impl_version()),
        3 => SbiRet::ok(extension_present(a0) as usize),
        4 => SbiRet::ok(env.machine_ids().0),
        5 => SbiRet::ok(env.machine_ids().1),
        6 => SbiRet::ok(env.machine_ids().2),
        _ => SbiRet::err(error::NOT_SUPPORTED),
    }
}

fn rfence(env: &mut dyn SbiEnv, fid: usize, mask: usize, base: usize) -> SbiRet {
    let kind = match fid {
        0 => FenceKind::Instruction,
        1 | 2 => FenceKind::Vma,
        // HFENCE.GVMA/VVMA variants: guests are not given the H extension, so these
        // are not supported on any target hart (SBI spec, RFENCE chapter).
        3..=6 => return SbiRet::err(error::NOT_SUPPORTED),
        _ => return SbiRet::err(error::NOT_SUPPORTED),
    };
    match decode_hart_mask(mask, base, env.vcpu_count()) {
        Ok(set) => {
            env.remote_fence(set, kind);
            SbiRet::ok(0)
        }
        Err(e) => SbiRet::err(e),
    }
}

fn hsm(env: &mut dyn SbiEnv, fid: usize, a0: usize, a1: usize, a2: usize) -> SbiRet {
    let result = match fid {
        0 => {
            if a0 >= env.vcpu_count() {
                return SbiRet::err(error::INVALID_PARAM);
            }
            env.hart_start(a0, Gpa::new(a1 as u64), a2)
        }
        1 => env.hart_stop(),
        2 => {
            if a0 >= env.vcpu_count() {
                return SbiRet::err(error::INVALID_PARAM);
            }
            return SbiRet::ok(env.hart_status(a0) as usize);
        }
        3 => {
            // `suspend_type` is a uint32_t: bits 63..32 are ignored, not refused.
            let how = match a0 as u32 {
                // Only the two default types exist here; everything else is either
                // reserved or platform-specific, and we define no platform types.
                0x0000_0000 => Suspend::Retentive,
                0x8000_0000 => Suspend::NonRetentive {
                    resume: Gpa::new(a1 as u64),
                    opaque: a2,
                },
                _ => return SbiRet::err(error::INVALID_PARAM),
            };
            env.hart_suspend(how)
        }
        _ => return SbiRet::err(error::NOT_SUPPORTED),
    };
    match result {
        Ok(()) => SbiRet::ok(0),
        Err(e) => SbiRet::err(e),
    }
}

fn srst(env: &mut dyn SbiEnv, fid: usize, kind: usize, reason: usize) -> SbiRet {
    if fid != 0 {
        return SbiRet::err(error::NOT_SUPPORTED);
    }
    // Both parameters are uint32_t: bits 63..32 are ignored, not refused.
    let (kind, reason) = (kind as u32, reason as u32);
    let kind = match kind {
        0 => ResetType::Shutdown,
        1 => ResetType::ColdReboot,
        2 => ResetType::WarmReboot,
        _ => return SbiRet::err(error::INVALID_PARAM),
    };
    // Reasons: 0 none, 1 system failure, 0xE000_0000.. SBI-implementation specific,
    // 0xF000_0000.. vendor specific (taken as "no reason"); everything else is reserved.
    let failure = match reason {
        0 => false,
        1 => true,
        0xE000_0000.. => false,
        _ => return SbiRet::err(error::INVALID_PARAM),
    };
    match env.system_reset(kind, failure) {
        Ok(()) => SbiRet::ok(0),
        Err(e) => SbiRet::err(e),
    }
}

/// Forms the buffer GPA of a DBCN call. On RV64 the address is `lo`; a non-zero `hi`
/// names memory above 2^64, which no guest has.
fn dbcn_buffer(lo: usize, hi: usize) -> Option<Gpa> {
    (hi == 0).then_some(Gpa::new(lo as u64))
}

fn dbcn(env: &mut dyn SbiEnv, fid: usize, a0: usize, a1: usize, a2: usize) -> SbiRet {
    let result = match fid {
        0 | 1 => {
            let Some(gpa) = dbcn_buffer(a1, a2) else {
                return SbiRet::err(error::INVALID_PARAM);
            };
            if fid == 0 {
                env.console_write(gpa, a0 as u64)
            } else {
                env.console_read(gpa, a0 as u64)
            }
        }
        2 => {
            env.console_write_byte(a0 as u8);
            Ok(0)
        }
        _ => return SbiRet::err(error::NOT_SUPPORTED),
    };
    match result {
        Ok(n) => SbiRet::ok(n),
        Err(e) => SbiRet::err(e),
    }
}

fn legacy(env: &mut dyn SbiEnv, ext: usize, a0: usize) -> Reply {
    let vcpus = env.vcpu_count();
    // Legacy calls take a pointer to a hart mask; a null pointer means every hart.
    let targets = |env: &mut dyn SbiEnv| -> Result<HartSet, isize> {
        if a0 == 0 {
            return Ok(HartSet::all(vcpus));
        }
        let mask = env.read_legacy_mask(a0).ok_or(error::INVALID_ADDRESS)?;
        decode_hart_mask(mask, 0, vcpus)
    };
    let code = match ext {
        eid::LEGACY_SET_TIMER => {
            env.set_timer(a0 as u64);
            0
        }
        eid::LEGACY_CONSOLE_PUTCHAR => {
            env.console_write_byte(a0 as u8);
            0
        }
        eid::LEGACY_CONSOLE_GETCHAR => env.console_getchar().map_or(-1, |b| b as isize),
        eid::LEGACY_CLEAR_IPI => {
            env.clear_ipi();
            0
        }
        eid::LEGACY_SEND_IPI => match targets(env) {
            Ok(set) => {
                env.send_ipi(set);
                0
            }
            Err(e) => e,
        },
        eid::LEGACY_REMOTE_FENCE_I
        | eid::LEGACY_REMOTE_SFENCE_VMA
        | eid::LEGACY_REMOTE_SFENCE_VMA_ASID => match targets(env) {
            Ok(set) => {
                let kind = if ext == eid::LEGACY_REMOTE_FENCE_I {
                    FenceKind::Instruction
                } else {
                    FenceKind::Vma
                };
                env.remote_fence(set, kind);
                0
            }
            Err(e) => e,
        },
        eid::LEGACY_SHUTDOWN => match env.system_reset(ResetType::Shutdown, false) {
            Ok(()) => 0,
            Err(e) => e,
        },
        _ => error::NOT_SUPPORTED,
    };
    Reply::Legacy(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A recording environment with 4 vCPUs and a fake console.
    #[derive(Default)]
    struct Fake {
        log: Vec<&'static str>,
        ipis: Vec<HartSet>,
        fences: Vec<(HartSet, FenceKind)>,
        timer: Option<u64>,
        written: Vec<(Gpa, u64)>,
        input: Vec<u8>,
        reset: Option<(ResetType, bool)>,
        legacy_mask: Option<usize>,
        suspends: Vec<Suspend>,
        bytes: Vec<u8>,
    }

    impl SbiEnv for Fake {
        fn vcpu_count(&self) -> usize {
            4
        }
        fn this_hart(&self) -> usize {
            0
        }
        fn impl_version(&self) -> usize {
            0x100
        }
        fn machine_ids(&self) -> (usize, usize, usize) {
            (1, 2, 3)
        }
        fn set_timer(&mut self, deadline: u64) {
            self.timer = Some(deadline);
        }
        fn send_ipi(&mut self, targets: HartSet) {
            self.ipis.push(targets);
        }
        fn clear_ipi(&mut self) {
            self.log.push("clear_ipi");
        }
        fn remote_fence(&mut self, targets: HartSet, kind: FenceKind) {
            self.fences.push((targets, kind));
        }
        fn hart_status(&self, hart: usize) -> HartState {
            if hart == 0 {
                HartState::Started
            } else {
                HartState::Stopped
            }
        }
        fn hart_start(&mut self, _hart: usize, _start: Gpa, _opaque: usize) -> Result<(), isize> {
            Ok(())
        }
        fn hart_stop(&mut self) -> Result<(), isize> {
            Ok(())
        }
        fn hart_suspend(&mut self, how: Suspend) -> Result<(), isize> {
            self.log.push("suspend");
            self.suspends.push(how);
            Ok(())
        }
        fn system_reset(&mut self, kind: ResetType, failure: bool) -> Result<(), isize> {
            self.reset = Some((kind, failure));
            Ok(())
        }
        fn console_write(&mut self, gpa: Gpa, len: u64) -> Result<usize, isize> {
            self.written.push((gpa, len));
            Ok(len as usize)
        }
        fn console_read(&mut self, _gpa: Gpa, _len: u64) -> Result<usize, isize> {
            Ok(0)
        }
        fn console_write_byte(&mut self, byte: u8) {
            self.bytes.push(byte);
        }
        fn console_getchar(&mut self) -> Option<u8> {
            self.input.pop()
        }
        fn read_legacy_mask(&mut self, _gva: usize) -> Option<usize> {
            self.legacy_mask
        }
        fn diosix_call(&mut self, fid: usize, _args: [usize; 6]) -> SbiRet {
            SbiRet::ok(fid)
        }
    }

    fn call(env: &mut Fake, ext: usize, fid: usize, args: [usize; 6]) -> Reply {
        let [a0, a1, a2, a3, a4, a5] = args;
        dispatch(env, [a0, a1, a2, a3, a4, a5, fid, ext])
    }

    fn sbi(env: &mut Fake, ext: usize, fid: usize, args: [usize; 6]) -> SbiRet {
        match call(env, ext, fid, args) {
            Reply::Sbi(r) => r,
            Reply::Legacy(_) => panic!("expected a standard reply"),
        }
    }

    #[test]
    fn base_reports_spec_2_and_impl_id_5() {
        let mut f = Fake::default();
        assert_eq!(sbi(&mut f, eid::BASE, 0, [0; 6]), SbiRet::ok(0x0200_0000));
        assert_eq!(sbi(&mut f, eid::BASE, 1, [0; 6]), SbiRet::ok(5));
        assert_eq!(
            sbi(&mut f, eid::BASE, 3, [eid::DBCN, 0, 0, 0, 0, 0]),
            SbiRet::ok(1)
        );
        assert_eq!(
            sbi(&mut f, eid::BASE, 3, [eid::DIOSIX, 0, 0, 0, 0, 0]),
            SbiRet::ok(1)
        );
        assert_eq!(
            sbi(&mut f, eid::BASE, 3, [0x504D55, 0, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(
            sbi(&mut f, eid::BASE, 7, [0; 6]),
            SbiRet::err(error::NOT_SUPPORTED)
        );
    }

    #[test]
    fn unknown_extension_and_function_are_not_supported() {
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, 0x1234_5678, 0, [0; 6]),
            SbiRet::err(error::NOT_SUPPORTED)
        );
        for ext in [
            eid::TIME,
            eid::IPI,
            eid::RFENCE,
            eid::HSM,
            eid::SRST,
            eid::DBCN,
        ] {
            assert_eq!(
                sbi(&mut f, ext, 99, [0; 6]),
                SbiRet::err(error::NOT_SUPPORTED),
                "{ext:#x}"
            );
        }
    }

    #[test]
    fn hart_masks_reject_harts_that_do_not_exist() {
        assert_eq!(decode_hart_mask(0b11, 0, 4), Ok(HartSet(0b11)));
        assert_eq!(decode_hart_mask(0b1, 3, 4), Ok(HartSet(0b1000)));
        assert_eq!(decode_hart_mask(0b1, 4, 4), Err(error::INVALID_PARAM));
        assert_eq!(decode_hart_mask(1 << 63, 0, 4), Err(error::INVALID_PARAM));
        assert_eq!(
            decode_hart_mask(0b10, usize::MAX - 1, 4),
            Err(error::INVALID_PARAM)
        );
        assert_eq!(decode_hart_mask(0, usize::MAX, 4), Ok(HartSet(0b1111)));
        assert_eq!(decode_hart_mask(0, 2, 4), Ok(HartSet(0)));
    }

    #[test]
    fn ipi_and_fences_validate_masks_first() {
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, eid::IPI, 0, [0b1, 7, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        assert!(f.ipis.is_empty());
        assert_eq!(
            sbi(&mut f, eid::IPI, 0, [0b101, 0, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(f.ipis, [HartSet(0b101)]);
        assert_eq!(
            sbi(&mut f, eid::RFENCE, 1, [0b1, 9, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        assert_eq!(
            sbi(&mut f, eid::RFENCE, 0, [0, usize::MAX, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(f.fences, [(HartSet(0b1111), FenceKind::Instruction)]);
        for fid in 3..=6 {
            assert_eq!(
                sbi(&mut f, eid::RFENCE, fid, [1, 0, 0, 0, 0, 0]),
                SbiRet::err(error::NOT_SUPPORTED)
            );
        }
    }

    #[test]
    fn hsm_checks_hart_ids_and_suspend_types() {
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, eid::HSM, 0, [4, 0x8020_0000, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        assert_eq!(
            sbi(&mut f, eid::HSM, 2, [usize::MAX, 0, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        assert_eq!(
            sbi(&mut f, eid::HSM, 2, [1, 0, 0, 0, 0, 0]),
            SbiRet::ok(HartState::Stopped as usize)
        );
        for bad in [
            1usize,
            0x1000_0000,
            0x7FFF_FFFF,
            0x8000_0001,
            0x9000_0000,
            0xFFFF_FFFF,
            (1 << 32) | 1,
            0xFFFF_FFFF_9000_0000,
        ] {
            assert_eq!(
                sbi(&mut f, eid::HSM, 3, [bad, 0, 0, 0, 0, 0]),
                SbiRet::err(error::INVALID_PARAM),
                "{bad:#x}"
            );
        }
        assert!(f.log.is_empty());
        assert_eq!(sbi(&mut f, eid::HSM, 3, [0, 0, 0, 0, 0, 0]), SbiRet::ok(0));
        assert_eq!(f.log, ["suspend"]);
    }

    #[test]
    fn hsm_suspend_type_ignores_bits_63_to_32() {
        // Issue 9: suspend_type is a uint32_t, so bits 63..32 are ignored; compiled C
        // passes 0x8000_0000 sign-extended. They used to be refused with INVALID_PARAM.
        let mut f = Fake::default();
        assert_eq!(
            sbi(
                &mut f,
                eid::HSM,
                3,
                [0xFFFF_FFFF_8000_0000, 0x8020_0000, 7, 0, 0, 0]
            ),
            SbiRet::ok(0)
        );
        assert_eq!(
            sbi(&mut f, eid::HSM, 3, [1 << 32, 0, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(
            sbi(&mut f, eid::HSM, 3, [0x1234_5678_0000_0000, 0, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(
            f.suspends,
            [
                Suspend::NonRetentive {
                    resume: Gpa::new(0x8020_0000),
                    opaque: 7
                },
                Suspend::Retentive,
                Suspend::Retentive
            ]
        );
    }

    #[test]
    fn srst_rejects_reserved_types_and_reasons() {
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, eid::SRST, 0, [3, 0, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        assert_eq!(
            sbi(&mut f, eid::SRST, 0, [0, 2, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        // Reserved and unimplemented vendor values, whatever the upper bits.
        for (kind, reason) in [
            (0xF000_0000, 0),
            ((1 << 32) | 3, 0),
            (0, 0xDFFF_FFFF),
            (0, 0xFFFF_FFFF_0000_0002),
        ] {
            assert_eq!(
                sbi(&mut f, eid::SRST, 0, [kind, reason, 0, 0, 0, 0]),
                SbiRet::err(error::INVALID_PARAM),
                "{kind:#x} {reason:#x}"
            );
        }
        assert_eq!(f.reset, None);
        assert_eq!(sbi(&mut f, eid::SRST, 0, [1, 1, 0, 0, 0, 0]), SbiRet::ok(0));
        assert_eq!(f.reset, Some((ResetType::ColdReboot, true)));
        assert_eq!(
            sbi(&mut f, eid::SRST, 0, [2, 0xE000_0000, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(f.reset, Some((ResetType::WarmReboot, false)));
    }

    #[test]
    fn srst_type_and_reason_ignore_bits_63_to_32() {
        // Issue 9: both are uint32_t, so bits 63..32 are ignored; they used to be
        // refused with INVALID_PARAM.
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, eid::SRST, 0, [0, 1 << 32, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(f.reset, Some((ResetType::Shutdown, false)));
        assert_eq!(
            sbi(
                &mut f,
                eid::SRST,
                0,
                [0xFFFF_FFFF_0000_0001, 0xFFFF_FFFF_0000_0001, 0, 0, 0, 0]
            ),
            SbiRet::ok(0)
        );
        assert_eq!(f.reset, Some((ResetType::ColdReboot, true)));
        assert_eq!(
            sbi(&mut f, eid::SRST, 0, [(7 << 32) | 2, 0, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(f.reset, Some((ResetType::WarmReboot, false)));
    }

    #[test]
    fn narrow_byte_parameters_keep_their_low_byte() {
        // DBCN write_byte takes a uint8_t and legacy console_putchar an int: only the
        // character's byte is used, whatever the rest of a0 holds.
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, eid::DBCN, 2, [0xFFFF_FFFF_FFFF_FF41, 0, 0, 0, 0, 0]),
            SbiRet::ok(0)
        );
        assert_eq!(
            call(
                &mut f,
                eid::LEGACY_CONSOLE_PUTCHAR,
                0,
                [0x1_0000_0142, 0, 0, 0, 0, 0]
            ),
            Reply::Legacy(0)
        );
        assert_eq!(f.bytes, b"AB");
    }

    proptest::proptest! {
        /// Every 32-bit parameter: a call with any bits 63..32 behaves exactly as the
        /// same call with them clear.
        #[test]
        fn bits_63_to_32_of_32_bit_parameters_never_matter(
            lo in proptest::prop_oneof![
                proptest::sample::select(vec![
                    0u32, 1, 2, 3, 0x8000_0000, 0x8000_0001, 0xE000_0000, 0xF000_0000,
                    u32::MAX,
                ]),
                proptest::num::u32::ANY,
            ],
            lo2 in proptest::num::u32::ANY,
            hi in proptest::num::u32::ANY,
            hi2 in proptest::num::u32::ANY,
        ) {
            let wide = |lo: u32, hi: u32| (u64::from(hi) << 32 | u64::from(lo)) as usize;
            let mut narrow_env = Fake::default();
            let mut wide_env = Fake::default();
            let cases = [
                (eid::HSM, 3, [lo as usize, 0x8020_0000, 9], [wide(lo, hi), 0x8020_0000, 9]),
                (eid::SRST, 0, [lo as usize, lo2 as usize, 0], [wide(lo, hi), wide(lo2, hi2), 0]),
                (eid::SRST, 0, [lo2 as usize % 3, lo as usize, 0],
                    [wide(lo2 % 3, hi), wide(lo, hi2), 0]),
            ];
            for (ext, fid, narrow, w) in cases {
                let a = sbi(&mut narrow_env, ext, fid, [narrow[0], narrow[1], narrow[2], 0, 0, 0]);
                let b = sbi(&mut wide_env, ext, fid, [w[0], w[1], w[2], 0, 0, 0]);
                proptest::prop_assert_eq!(a, b);
            }
            proptest::prop_assert_eq!(narrow_env.suspends, wide_env.suspends);
            proptest::prop_assert_eq!(narrow_env.reset, wide_env.reset);
        }
    }

    #[test]
    fn dbcn_rejects_high_address_bits() {
        let mut f = Fake::default();
        assert_eq!(
            sbi(&mut f, eid::DBCN, 0, [8, 0x8020_0000, 1, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM)
        );
        assert_eq!(
            sbi(&mut f, eid::DBCN, 0, [8, 0x8020_0000, 0, 0, 0, 0]),
            SbiRet::ok(8)
        );
        assert_eq!(f.written, [(Gpa::new(0x8020_0000), 8)]);
    }

    #[test]
    fn legacy_calls_reply_in_a0_only() {
        let mut f = Fake::default();
        assert_eq!(
            call(&mut f, eid::LEGACY_CONSOLE_GETCHAR, 0, [0; 6]),
            Reply::Legacy(-1)
        );
        f.input.push(b'x');
        assert_eq!(
            call(&mut f, eid::LEGACY_CONSOLE_GETCHAR, 0, [0; 6]),
            Reply::Legacy(b'x' as isize)
        );
        assert_eq!(
            call(&mut f, eid::LEGACY_SEND_IPI, 0, [0x1000, 0, 0, 0, 0, 0]),
            Reply::Legacy(error::INVALID_ADDRESS)
        );
        f.legacy_mask = Some(0b10);
        assert_eq!(
            call(&mut f, eid::LEGACY_SEND_IPI, 0, [0x1000, 0, 0, 0, 0, 0]),
            Reply::Legacy(0)
        );
        assert_eq!(f.ipis, [HartSet(0b10)]);
        f.legacy_mask = Some(0b10000);
        assert_eq!(
            call(&mut f, eid::LEGACY_SEND_IPI, 0, [0x1000, 0, 0, 0, 0, 0]),
            Reply::Legacy(error::INVALID_PARAM)
        );
        assert_eq!(
            call(&mut f, eid::LEGACY_SHUTDOWN, 0, [0; 6]),
            Reply::Legacy(0)
        );
        assert_eq!(f.reset, Some((ResetType::Shutdown, false)));
    }
}
