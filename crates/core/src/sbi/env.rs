//! What the hypervisor does for the standard SBI, one trait per extension (the shape
//! RustSBI uses), for one calling vCPU.
//!
//! [`dispatch`](super::dispatch) decodes and validates a call, then hands the
//! validated request to the one trait of its extension. Implementations trust their
//! arguments' *form* (hart sets name existing vCPUs, types are valid) but still own
//! every check that needs guest memory or vCPU state, and answer with an [`SbiError`].
//! [`SbiEnv`] is all of them together: what the hypervisor implements for an ecall.

use super::{FenceKind, FwftFeature, FwftState, HartSet, HartState, ResetType, SbiRet, Suspend};
use crate::addr::{Gpa, Gva};
use diosix_abi::SbiError;

/// Who is calling: the facts the decoder's own checks need.
pub trait Caller {
    /// Number of vCPUs of the calling VM.
    fn vcpu_count(&self) -> usize;
    /// The calling vCPU's hart index within its VM.
    fn this_hart(&self) -> usize;
}

/// Base extension: what the implementation reports about itself.
pub trait Base {
    /// Hypervisor version for `get_impl_version`.
    fn impl_version(&self) -> usize;
    /// mvendorid, marchid, mimpid as the guest should see them.
    fn machine_ids(&self) -> (usize, usize, usize);
}

/// Timer extension (and legacy `set_timer`).
pub trait Timer {
    /// Sets the calling vCPU's timer deadline (absolute `time` value) and clears its
    /// pending timer interrupt.
    fn set_timer(&mut self, deadline: u64);
}

/// IPI extension (and legacy `send_ipi` / `clear_ipi`).
pub trait Ipi {
    /// Makes a supervisor software interrupt pending on each target.
    fn send_ipi(&mut self, targets: HartSet);
    /// Clears the caller's pending supervisor software interrupt (legacy clear_ipi).
    fn clear_ipi(&mut self);
}

/// RFENCE extension (and the legacy remote fences).
pub trait Rfence {
    /// Performs a fence on each target and returns once all are done.
    fn remote_fence(&mut self, targets: HartSet, kind: FenceKind);
}

/// Hart state management extension.
pub trait Hsm {
    /// HSM state of a vCPU (which exists).
    fn hart_status(&self, hart: usize) -> HartState;
    /// Starts a stopped vCPU at `start` with a0 = hart, a1 = opaque. The environment
    /// validates `start` (`InvalidAddress`) and the state (`AlreadyAvailable`).
    fn hart_start(&mut self, hart: usize, start: Gpa, opaque: usize) -> Result<(), SbiError>;
    /// Stops the calling vCPU.
    fn hart_stop(&mut self) -> Result<(), SbiError>;
    /// Suspends the calling vCPU. For non-retentive suspend the environment validates
    /// the resume address (`InvalidAddress`).
    fn hart_suspend(&mut self, how: Suspend) -> Result<(), SbiError>;
}

/// Steal-time accounting extension: where the calling vCPU's steal time is reported.
pub trait StealTime {
    /// Reports the calling vCPU's steal time in the 64 bytes at `shmem` (64-byte
    /// aligned, checked) from now on, zeroing them first; `None` stops reporting. The
    /// environment checks the bytes are guest RAM the caller may write
    /// (`InvalidAddress`).
    fn sta_set_shmem(&mut self, shmem: Option<Gpa>) -> Result<(), SbiError>;
}

/// System suspend extension: SUSPEND_TO_RAM of the calling VM.
pub trait SystemSuspend {
    /// Suspends the calling VM: the caller's vCPU sleeps until an interrupt it enabled
    /// is pending, then resumes at `resume` with a0 = its hart, a1 = `opaque`, its
    /// MMU and interrupts off (as an HSM non-retentive suspend). The environment
    /// checks that every other vCPU of the VM is STOPPED (`Denied`), then `resume`
    /// (`InvalidAddress`).
    fn system_suspend(&mut self, resume: Gpa, opaque: usize) -> Result<(), SbiError>;
}

/// System reset extension (and legacy `shutdown`).
pub trait Reset {
    /// Resets or shuts down the calling VM (or the host, for the Root VM).
    fn system_reset(&mut self, kind: ResetType, failure: bool) -> Result<(), SbiError>;
}

/// Debug console extension (and legacy `console_putchar` / `console_getchar`).
pub trait Console {
    /// Writes the guest buffer `[gpa, gpa+len)` to the VM's console; returns bytes
    /// written. `InvalidParam` for a buffer outside the caller's RAM.
    fn console_write(&mut self, gpa: Gpa, len: u64) -> Result<usize, SbiError>;
    /// Reads up to `len` pending console bytes into the guest buffer; never blocks.
    fn console_read(&mut self, gpa: Gpa, len: u64) -> Result<usize, SbiError>;
    /// Writes one byte to the VM's console.
    fn console_write_byte(&mut self, byte: u8);
    /// One pending console input byte, if any; never blocks.
    fn console_getchar(&mut self) -> Option<u8>;
}

/// The legacy (v0.1) calls' one memory access: their hart-mask pointer.
pub trait LegacyMask {
    /// Reads the `unsigned long` at `gva`, a guest virtual address under the caller's
    /// current translation; `None` if the guest could not read it itself.
    fn read_legacy_mask(&mut self, gva: Gva) -> Option<usize>;
}

/// Firmware features extension (SBI 3.0): the calling vCPU's settings. The decoder
/// checks IDs, values, flags and locks; the environment says what the host can do and
/// keeps and applies the state.
pub trait FirmwareFeatures {
    /// Whether the host can provide `f` at all (hardware A/D updating needs Svadu).
    fn fwft_supported(&self, f: FwftFeature) -> bool;
    /// The calling vCPU's settings.
    fn fwft_state(&self) -> FwftState;
    /// Replaces the calling vCPU's settings (already validated) and applies them.
    fn fwft_apply(&mut self, state: FwftState);
}

/// The Diosix extension (EID `0x0A000005`), decoded by [`crate::tree::dispatch`].
pub trait DiosixExtension {
    /// Handles one call of the Diosix extension.
    fn diosix_call(&mut self, fid: usize, args: [usize; 6]) -> SbiRet;
}

/// Declares [`SbiEnv`] as the sum of the extension traits listed once, and implements
/// it for every type that has them all.
macro_rules! sbi_env {
    ($first:path $(, $rest:path)* $(,)?) => {
        /// Every extension's effects: what the hypervisor implements for one ecall.
        pub trait SbiEnv: $first $(+ $rest)* {}

        impl<T: $first $(+ $rest)*> SbiEnv for T {}
    };
}

sbi_env!(
    Caller,
    Base,
    Timer,
    Ipi,
    Rfence,
    Hsm,
    Reset,
    SystemSuspend,
    StealTime,
    super::dbtr::DebugTriggers,
    super::pmu::Pmu,
    Console,
    LegacyMask,
    FirmwareFeatures,
    DiosixExtension,
);
