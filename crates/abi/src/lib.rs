//! The Diosix SBI ABI: standard SBI error codes, the implementation ID registered for
//! Diosix, and the Diosix extension's numbers and structures.
//!
//! This crate is shared, unchanged, by the hypervisor, the `no_std` test guests and the
//! Linux tools, so every side agrees on every number. The C header
//! `include/diosix_sbi.h` is generated from it (`cargo xtask cheader`), never edited by
//! hand.
//!
//! Structures passed through guest memory are C layout, little-endian, with every field
//! naturally aligned so there is no padding, and with an explicit `size` field so they can
//! grow in later ABI versions. Each has a `SIZE`, a `from_le_bytes` and a `to_le_bytes`
//! so the hypervisor reads them from raw guest bytes without `unsafe`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// SBI implementation ID registered for Diosix.
pub const SBI_IMPL_ID_DIOSIX: usize = sbi_spec::base::impl_id::DIOSIX;

/// Standard SBI error codes (SBI spec 2.0, table 1), as returned in a0. The numbers
/// come from the `sbi-spec` crate; [`SbiError`] is the same set as a type.
pub mod error {
    use sbi_spec::binary as spec;

    /// Completed successfully.
    pub const SUCCESS: isize = spec::RET_SUCCESS as isize;
    /// Failed.
    pub const FAILED: isize = spec::RET_ERR_FAILED as isize;
    /// Not supported.
    pub const NOT_SUPPORTED: isize = spec::RET_ERR_NOT_SUPPORTED as isize;
    /// Invalid parameter(s).
    pub const INVALID_PARAM: isize = spec::RET_ERR_INVALID_PARAM as isize;
    /// Denied or not allowed.
    pub const DENIED: isize = spec::RET_ERR_DENIED as isize;
    /// Invalid address(es).
    pub const INVALID_ADDRESS: isize = spec::RET_ERR_INVALID_ADDRESS as isize;
    /// Already available.
    pub const ALREADY_AVAILABLE: isize = spec::RET_ERR_ALREADY_AVAILABLE as isize;
    /// Already started.
    pub const ALREADY_STARTED: isize = spec::RET_ERR_ALREADY_STARTED as isize;
    /// Already stopped.
    pub const ALREADY_STOPPED: isize = spec::RET_ERR_ALREADY_STOPPED as isize;
    /// Shared memory not available.
    pub const NO_SHMEM: isize = spec::RET_ERR_NO_SHMEM as isize;
    /// Invalid state.
    pub const INVALID_STATE: isize = spec::RET_ERR_INVALID_STATE as isize;
    /// Bad (or invalid) range.
    pub const BAD_RANGE: isize = spec::RET_ERR_BAD_RANGE as isize;
    /// Failed due to timeout.
    pub const TIMEOUT: isize = spec::RET_ERR_TIMEOUT as isize;
    /// Input/output error.
    pub const IO: isize = spec::RET_ERR_IO as isize;
    /// Denied because the thing is locked (SBI 3.0; not in `sbi-spec` 0.0.9).
    pub const DENIED_LOCKED: isize = -14;

    /// The spec's name of an error code (`"DENIED"`), or `None` for a code the spec
    /// does not define.
    pub const fn name(code: isize) -> Option<&'static str> {
        Some(match code {
            SUCCESS => "SUCCESS",
            FAILED => "FAILED",
            NOT_SUPPORTED => "NOT_SUPPORTED",
            INVALID_PARAM => "INVALID_PARAM",
            DENIED => "DENIED",
            INVALID_ADDRESS => "INVALID_ADDRESS",
            ALREADY_AVAILABLE => "ALREADY_AVAILABLE",
            ALREADY_STARTED => "ALREADY_STARTED",
            ALREADY_STOPPED => "ALREADY_STOPPED",
            NO_SHMEM => "NO_SHMEM",
            INVALID_STATE => "INVALID_STATE",
            BAD_RANGE => "BAD_RANGE",
            TIMEOUT => "TIMEOUT",
            IO => "IO",
            DENIED_LOCKED => "DENIED_LOCKED",
            _ => return None,
        })
    }
}

/// Why an SBI call failed: one variant per standard error code, shared by the
/// standard extensions and the Diosix extension, on both sides of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SbiError {
    /// `FAILED`: the call could not complete for a reason no other code names (a full
    /// queue, or host work that failed after the request was admitted).
    Failed,
    /// `NOT_SUPPORTED`: unknown or reserved function, or a feature not provided.
    NotSupported,
    /// `INVALID_PARAM`: a malformed value, unknown flag bits, a name that names nothing
    /// the caller may name, a structure that is too small, a value above a ceiling.
    InvalidParam,
    /// `DENIED`: the caller may not do this (wrong kind of target, missing trust, a
    /// quota that does not allow it).
    Denied,
    /// `INVALID_ADDRESS`: an address or range outside the caller's memory, overflowing
    /// or misaligned.
    InvalidAddress,
    /// `ALREADY_AVAILABLE`: e.g. HSM start of a hart that is not stopped.
    AlreadyAvailable,
    /// `ALREADY_STARTED`: START or RESUME of a VM that is running.
    AlreadyStarted,
    /// `ALREADY_STOPPED`: STOP of a VM that is stopped.
    AlreadyStopped,
    /// `NO_SHMEM`: shared memory not available.
    NoShmem,
    /// `INVALID_STATE`: the target's state forbids the call.
    InvalidState,
    /// `BAD_RANGE`: e.g. a receive buffer shorter than the waiting message.
    BadRange,
    /// `TIMEOUT`: the operation timed out.
    Timeout,
    /// `IO`: an input/output error.
    Io,
    /// `DENIED_LOCKED`: e.g. FWFT set of a feature the caller locked.
    DeniedLocked,
}

impl SbiError {
    /// The SBI error code returned in a0.
    pub const fn code(self) -> isize {
        match self {
            Self::Failed => error::FAILED,
            Self::NotSupported => error::NOT_SUPPORTED,
            Self::InvalidParam => error::INVALID_PARAM,
            Self::Denied => error::DENIED,
            Self::InvalidAddress => error::INVALID_ADDRESS,
            Self::AlreadyAvailable => error::ALREADY_AVAILABLE,
            Self::AlreadyStarted => error::ALREADY_STARTED,
            Self::AlreadyStopped => error::ALREADY_STOPPED,
            Self::NoShmem => error::NO_SHMEM,
            Self::InvalidState => error::INVALID_STATE,
            Self::BadRange => error::BAD_RANGE,
            Self::Timeout => error::TIMEOUT,
            Self::Io => error::IO,
            Self::DeniedLocked => error::DENIED_LOCKED,
        }
    }

    /// The error an a0 value names: `None` for `SUCCESS` and for codes the spec does
    /// not define.
    pub const fn from_code(code: isize) -> Option<Self> {
        Some(match code {
            error::FAILED => Self::Failed,
            error::NOT_SUPPORTED => Self::NotSupported,
            error::INVALID_PARAM => Self::InvalidParam,
            error::DENIED => Self::Denied,
            error::INVALID_ADDRESS => Self::InvalidAddress,
            error::ALREADY_AVAILABLE => Self::AlreadyAvailable,
            error::ALREADY_STARTED => Self::AlreadyStarted,
            error::ALREADY_STOPPED => Self::AlreadyStopped,
            error::NO_SHMEM => Self::NoShmem,
            error::INVALID_STATE => Self::InvalidState,
            error::BAD_RANGE => Self::BadRange,
            error::TIMEOUT => Self::Timeout,
            error::IO => Self::Io,
            error::DENIED_LOCKED => Self::DeniedLocked,
            _ => return None,
        })
    }

    /// The spec's name of the code (`"DENIED"`).
    pub const fn name(self) -> &'static str {
        match error::name(self.code()) {
            Some(n) => n,
            None => "?",
        }
    }
}

/// Standard SBI extension IDs (SBI spec 2.0, from the `sbi-spec` crate), plus the
/// Diosix extension's.
pub mod eid {
    use sbi_spec::legacy;

    /// Legacy set_timer.
    pub const LEGACY_SET_TIMER: usize = legacy::LEGACY_SET_TIMER;
    /// Legacy console_putchar.
    pub const LEGACY_CONSOLE_PUTCHAR: usize = legacy::LEGACY_CONSOLE_PUTCHAR;
    /// Legacy console_getchar.
    pub const LEGACY_CONSOLE_GETCHAR: usize = legacy::LEGACY_CONSOLE_GETCHAR;
    /// Legacy clear_ipi.
    pub const LEGACY_CLEAR_IPI: usize = legacy::LEGACY_CLEAR_IPI;
    /// Legacy send_ipi.
    pub const LEGACY_SEND_IPI: usize = legacy::LEGACY_SEND_IPI;
    /// Legacy remote_fence_i.
    pub const LEGACY_REMOTE_FENCE_I: usize = legacy::LEGACY_REMOTE_FENCE_I;
    /// Legacy remote_sfence_vma.
    pub const LEGACY_REMOTE_SFENCE_VMA: usize = legacy::LEGACY_REMOTE_SFENCE_VMA;
    /// Legacy remote_sfence_vma_asid.
    pub const LEGACY_REMOTE_SFENCE_VMA_ASID: usize = legacy::LEGACY_REMOTE_SFENCE_VMA_ASID;
    /// Legacy shutdown.
    pub const LEGACY_SHUTDOWN: usize = legacy::LEGACY_SHUTDOWN;
    /// Base extension.
    pub const BASE: usize = sbi_spec::base::EID_BASE;
    /// Timer extension.
    pub const TIME: usize = sbi_spec::time::EID_TIME;
    /// IPI extension.
    pub const IPI: usize = sbi_spec::spi::EID_SPI;
    /// Remote fence extension.
    pub const RFENCE: usize = sbi_spec::rfnc::EID_RFNC;
    /// Hart state management.
    pub const HSM: usize = sbi_spec::hsm::EID_HSM;
    /// System reset.
    pub const SRST: usize = sbi_spec::srst::EID_SRST;
    /// Debug console.
    pub const DBCN: usize = sbi_spec::dbcn::EID_DBCN;
    /// System suspend.
    pub const SUSP: usize = sbi_spec::susp::EID_SUSP;
    /// Steal-time accounting.
    pub const STA: usize = sbi_spec::sta::EID_STA;
    /// Debug triggers (SBI 3.0).
    pub const DBTR: usize = sbi_spec::dbtr::EID_DBTR;
    /// Firmware features (SBI 3.0).
    pub const FWFT: usize = sbi_spec::fwft::EID_FWFT;
    /// Performance monitoring unit.
    pub const PMU: usize = sbi_spec::pmu::EID_PMU;
    /// The Diosix extension.
    pub const DIOSIX: usize = crate::ext::EID;
}

/// Function IDs of the standard extensions (SBI spec 2.0, from the `sbi-spec` crate),
/// one module per extension. The Diosix extension's are in [`ext`].
pub mod fid {
    /// Base extension (EID `0x10`).
    pub mod base {
        pub use sbi_spec::base::{
            GET_MARCHID, GET_MIMPID, GET_MVENDORID, GET_SBI_IMPL_ID, GET_SBI_IMPL_VERSION,
            GET_SBI_SPEC_VERSION, PROBE_EXTENSION,
        };
    }
    /// Timer extension.
    pub mod time {
        pub use sbi_spec::time::SET_TIMER;
    }
    /// IPI extension.
    pub mod ipi {
        pub use sbi_spec::spi::SEND_IPI;
    }
    /// Remote fence extension.
    pub mod rfence {
        pub use sbi_spec::rfnc::{
            REMOTE_FENCE_I, REMOTE_HFENCE_GVMA, REMOTE_HFENCE_GVMA_VMID, REMOTE_HFENCE_VVMA,
            REMOTE_HFENCE_VVMA_ASID, REMOTE_SFENCE_VMA, REMOTE_SFENCE_VMA_ASID,
        };
    }
    /// Hart state management extension.
    pub mod hsm {
        pub use sbi_spec::hsm::{HART_GET_STATUS, HART_START, HART_STOP, HART_SUSPEND};
    }
    /// System reset extension.
    pub mod srst {
        pub use sbi_spec::srst::SYSTEM_RESET;
    }
    /// Debug console extension.
    pub mod dbcn {
        pub use sbi_spec::dbcn::{CONSOLE_READ, CONSOLE_WRITE, CONSOLE_WRITE_BYTE};
    }
    /// Debug triggers extension (SBI 3.0).
    pub mod dbtr {
        pub use sbi_spec::dbtr::{
            DISABLE_TRIGGERS, ENABLE_TRIGGERS, INSTALL_TRIGGERS, NUM_TRIGGERS, READ_TRIGGERS,
            SET_SHMEM, UNINSTALL_TRIGGERS, UPDATE_TRIGGERS,
        };
    }
    /// Performance monitoring extension: functions, event types and codes, flags.
    pub mod pmu {
        pub use sbi_spec::pmu::*;
    }
    /// Steal-time accounting extension.
    pub mod sta {
        pub use sbi_spec::sta::SET_SHMEM;
        /// Bytes of the shared memory, and its alignment.
        pub const SHMEM_SIZE: u64 = 64;
    }
    /// System suspend extension.
    pub mod susp {
        pub use sbi_spec::susp::SUSPEND;
        /// The one sleep type every implementation of the extension has.
        pub const SUSPEND_TO_RAM: u32 = 0;
    }
    /// Firmware features extension (SBI 3.0): functions, feature IDs, the set flag.
    pub mod fwft {
        pub use sbi_spec::fwft::feature_type::{
            DOUBLE_TRAP, LANDING_PAD, MISALIGNED_EXC_DELEG, POINTER_MASKING_PMLEN,
            PTE_AD_HW_UPDATING, SHADOW_STACK,
        };
        pub use sbi_spec::fwft::{GET, SET};
        /// `sbi_fwft_set` flag: lock the feature until the hart is reset.
        pub const FLAG_LOCK: usize = 1;
        /// The first feature ID of the platform-specific ranges (local, then global at
        /// bit 31); IDs from here to the global standard range's start, and all above it,
        /// are not the SBI's own.
        pub const PLATFORM_LOCAL_START: u32 = 0x4000_0000;
        /// Bit 31 of a feature ID: a global (not per-hart) feature.
        pub const GLOBAL: u32 = 0x8000_0000;
    }
}

/// Diosix's platform firmware events: the `event_data` of a PMU counter configured
/// for `SBI_PMU_FW_PLATFORM` (event index `0xf_ffff`), each counting the calling
/// vCPU's exits to the hypervisor of one kind (see `docs/sbi.md`).
pub mod pmu_platform {
    /// Every exit from guest mode.
    pub const EXITS: u64 = 0;
    /// SBI calls (ecalls to the hypervisor), of every extension.
    pub const SBI_CALLS: u64 = 1;
    /// Timer interrupts taken while the vCPU ran (its timer, its slice's end).
    pub const TIMER_INTERRUPTS: u64 = 2;
    /// Software interrupts (kicks from other harts) taken while the vCPU ran.
    pub const SOFTWARE_INTERRUPTS: u64 = 3;
    /// Host device interrupts taken while the vCPU ran.
    pub const EXTERNAL_INTERRUPTS: u64 = 4;
    /// Guest-page faults (copy-on-write breaks, bad accesses).
    pub const GUEST_PAGE_FAULTS: u64 = 5;
    /// Virtual-instruction exceptions (WFI and emulated instructions).
    pub const VIRTUAL_INSTRUCTIONS: u64 = 6;
    /// How many selectors there are.
    pub const COUNT: u64 = 7;
}

/// The Diosix SBI extension (EID `0x0A000005`).
///
/// Function numbers 0..=10 and 13..=15 are the reference Diosix hypervisor's, with the
/// same meaning; 11 and 12 are reserved because the reference leaves them unpublished;
/// 16 onwards are ours. See `docs/sbi-extension.md` for every argument and error.
pub mod ext {
    /// Extension ID: firmware-specific range, low digits = implementation ID 5.
    pub const EID: usize = 0x0A00_0005;

    /// ABI version reported by GET_HV_INFO: major in bits 31..16, minor in bits 15..0.
    /// 1.1 added [`super::flags::IPC_RECV_WAIT`] and [`FID_IPC_CALL`].
    pub const ABI_VERSION: u32 = (1 << 16) | 1;

    /// Terminate a VM and its whole subtree. a0 = target CID (1 = self, >= 2 = a child),
    /// a1 = exit code. Self: never returns. Child: a1 = 0.
    pub const FID_EXIT: usize = 0;
    /// Give up the rest of the vCPU's time slice.
    pub const FID_YIELD: usize = 1;
    /// Clone the calling VM. a0 = flags ([`super::flags::FORK_UNTRUSTED`]). Parent gets
    /// the child's CID in a1; the child resumes with a0 = 0, a1 = 0.
    pub const FID_FORK: usize = 2;
    /// Irrevocably drop the caller's hardware trust (and its whole subtree's).
    pub const FID_DROP_TRUST: usize = 3;
    /// Create (or reset) a child from an image. a0 = GPA of [`super::SpawnArgs`].
    /// a1 = the child's CID.
    pub const FID_SPAWN: usize = 4;
    /// Fill a [`super::VmInfo`] about the caller. a0 = GPA, a1 = size of the buffer.
    pub const FID_GET_INFO: usize = 5;
    /// Change a quota. a0 = GPA of [`super::QuotaArgs`].
    pub const FID_SET_QUOTA: usize = 6;
    /// Send a message to the parent or a child. a0 = GPA of [`super::IpcSendArgs`].
    pub const FID_IPC_SEND: usize = 7;
    /// Receive a message. a0 = GPA of [`super::IpcRecvArgs`]; a1 = 1 if one was received.
    pub const FID_IPC_RECV: usize = 8;
    /// Take the oldest event. a0 = GPA of [`super::Event`], a1 = its size; a1 = 1 if an
    /// event was returned, else 0.
    pub const FID_POLL_EVENT: usize = 9;
    /// Fill a [`super::HvInfo`]. a0 = GPA, a1 = size of the buffer.
    pub const FID_GET_HV_INFO: usize = 10;
    /// Reserved (unpublished by the reference): always NOT_SUPPORTED.
    pub const FID_RESERVED_11: usize = 11;
    /// Reserved (unpublished by the reference): always NOT_SUPPORTED.
    pub const FID_RESERVED_12: usize = 12;
    /// Map caller memory into a child. a0 = child CID, a1 = child GPA, a2 = caller GPA,
    /// a3 = size, a4 = permissions ([`super::flags::MAP_READ`] ...).
    pub const FID_MAP_CHILD_MEM: usize = 13;
    /// Unmap caller memory from every child it was mapped into. a0 = caller GPA, a1 = size.
    pub const FID_UNMAP_CHILD_MEM: usize = 14;
    /// Start a child created paused. a0 = child CID, a1 = entry GPA, a2 = DTB GPA.
    pub const FID_START: usize = 15;
    /// Pause every vCPU of a child. a0 = child CID.
    pub const FID_STOP: usize = 16;
    /// Resume a stopped child. a0 = child CID.
    pub const FID_RESUME: usize = 17;
    /// Reboot a child back to the state it was created or forked in. a0 = child CID.
    pub const FID_REBOOT: usize = 18;
    /// Read a child's console output. a0 = child CID, a1 = buffer GPA, a2 = length;
    /// a1 = bytes read.
    pub const FID_CONSOLE_READ: usize = 19;
    /// Feed a child's console input. a0 = child CID, a1 = data GPA, a2 = length;
    /// a1 = bytes accepted.
    pub const FID_CONSOLE_WRITE: usize = 20;
    /// Irrevocably drop a child's hardware trust (and its subtree's). a0 = child CID.
    pub const FID_DROP_CHILD_TRUST: usize = 21;
    /// Fill a [`super::VmInfo`] about self or a child. a0 = CID, a1 = GPA, a2 = size.
    pub const FID_GET_CHILD_INFO: usize = 22;
    /// List the caller's live children's CIDs (u64 each, ascending). a0 = GPA,
    /// a1 = capacity in entries; a1 = number of live children.
    pub const FID_LIST_CHILDREN: usize = 23;
    /// Trusted VMs only: map host MMIO into the caller. a0 = HPA, a1 = GPA, a2 = size.
    pub const FID_MAP_HOST_MMIO: usize = 24;
    /// Trusted VMs only: route a host interrupt to the caller. a0 = interrupt number.
    pub const FID_ROUTE_IRQ: usize = 25;
    /// Replace the caller's own image with one in its memory and restart it, keeping
    /// its CID, parent, quota and trust. a0 = GPA of a [`super::SpawnArgs`] (`cid` 0,
    /// flags ⊆ `SPAWN_PAGE_LIST`). Does not return on success.
    pub const FID_EXEC: usize = 26;
    /// Trusted VMs only: give back one host device the caller holds, unmapped and
    /// unrouted, to its parent's pool (the host's, for the Root VM), where a trusted
    /// child of that parent may take it. a0 = how a1 names it
    /// ([`super::flags::DEVICE_BY_WINDOW`] or [`super::flags::DEVICE_BY_IRQ`]),
    /// a1 = the HPA of one of its register windows, or one of its interrupt numbers.
    pub const FID_RELEASE_DEVICE: usize = 27;
    /// Copy from a direct child's RAM into the caller's. a0 = child CID, a1 = child GPA,
    /// a2 = caller GPA, a3 = length (at most [`super::limits::CHILD_MEM_MAX`]);
    /// a1 = bytes copied (the length).
    pub const FID_CHILD_MEM_READ: usize = 28;
    /// Copy from the caller's RAM into a direct child's (breaking copy-on-write there
    /// as the child's own store would). Arguments and result as [`FID_CHILD_MEM_READ`].
    pub const FID_CHILD_MEM_WRITE: usize = 29;
    /// The state of one of a direct child's virtio devices (see [`super::devices`]),
    /// taking (clearing) its pending bits. a0 = child CID, a1 = device index, a2 = GPA
    /// of the output, a3 = its size (at least [`super::DeviceState::SIZE`] +
    /// `queue_count` × [`super::QueueState::SIZE`]). Writes a [`super::DeviceState`]
    /// followed by one [`super::QueueState`] per queue; a1 = bytes written.
    pub const FID_DEVICE_STATE: usize = 30;
    /// Raise interrupts of one of a direct child's virtio devices. a0 = child CID,
    /// a1 = device index, a2 = [`super::devices::RAISE_USED_BUFFER`] |
    /// [`super::devices::RAISE_CONFIG_CHANGE`] | [`super::devices::RAISE_NEEDS_RESET`]
    /// (at least one). a1 = 0.
    pub const FID_DEVICE_RAISE: usize = 31;
    /// Send a message to a peer and wait for its answer, in one call (ABI 1.1).
    /// a0 = the peer's CID (0 = parent, >= 2 = a child), a1 = GPA of a buffer that
    /// holds the message and receives the answer, a2 = the message's length, a3 = the
    /// buffer's length for the answer (both <= [`super::limits::IPC_MAX_MESSAGE`]).
    /// The message goes as IPC_SEND's would; then the oldest message from that peer
    /// is taken as an exact IPC_RECV with [`super::flags::IPC_RECV_WAIT`] would, the
    /// caller sleeping until one comes. a1 = the answer's length + 1, or 0 if an
    /// interrupt ended the wait first (the message was sent; the answer will be
    /// queued).
    pub const FID_IPC_CALL: usize = 32;
    /// One past the highest function number defined by this ABI version.
    pub const FID_COUNT: usize = 33;

    /// Every defined function: (number, name as in the documentation and C header).
    pub const FUNCTIONS: &[(usize, &str)] = &[
        (FID_EXIT, "EXIT"),
        (FID_YIELD, "YIELD"),
        (FID_FORK, "FORK"),
        (FID_DROP_TRUST, "DROP_TRUST"),
        (FID_SPAWN, "SPAWN"),
        (FID_GET_INFO, "GET_INFO"),
        (FID_SET_QUOTA, "SET_QUOTA"),
        (FID_IPC_SEND, "IPC_SEND"),
        (FID_IPC_RECV, "IPC_RECV"),
        (FID_POLL_EVENT, "POLL_EVENT"),
        (FID_GET_HV_INFO, "GET_HV_INFO"),
        (FID_MAP_CHILD_MEM, "MAP_CHILD_MEM"),
        (FID_UNMAP_CHILD_MEM, "UNMAP_CHILD_MEM"),
        (FID_START, "START"),
        (FID_STOP, "STOP"),
        (FID_RESUME, "RESUME"),
        (FID_REBOOT, "REBOOT"),
        (FID_CONSOLE_READ, "CONSOLE_READ"),
        (FID_CONSOLE_WRITE, "CONSOLE_WRITE"),
        (FID_DROP_CHILD_TRUST, "DROP_CHILD_TRUST"),
        (FID_GET_CHILD_INFO, "GET_CHILD_INFO"),
        (FID_LIST_CHILDREN, "LIST_CHILDREN"),
        (FID_MAP_HOST_MMIO, "MAP_HOST_MMIO"),
        (FID_ROUTE_IRQ, "ROUTE_IRQ"),
        (FID_EXEC, "EXEC"),
        (FID_RELEASE_DEVICE, "RELEASE_DEVICE"),
        (FID_CHILD_MEM_READ, "CHILD_MEM_READ"),
        (FID_CHILD_MEM_WRITE, "CHILD_MEM_WRITE"),
        (FID_DEVICE_STATE, "DEVICE_STATE"),
        (FID_DEVICE_RAISE, "DEVICE_RAISE"),
        (FID_IPC_CALL, "IPC_CALL"),
    ];
}

/// Context IDs (CIDs): always relative to the calling VM.
pub mod cid {
    /// The caller's parent.
    pub const PARENT: u64 = 0;
    /// The caller itself.
    pub const SELF: u64 = 1;
    /// The first CID given to a child; each parent numbers its children upwards from
    /// here and never reuses a number.
    pub const FIRST_CHILD: u64 = 2;
}

/// Limits fixed by this ABI version.
pub mod limits {
    /// Largest IPC message, in bytes.
    pub const IPC_MAX_MESSAGE: usize = 4096;
    /// Messages one sender may have queued at one receiver before sends are refused.
    pub const IPC_QUEUE_DEPTH: usize = 16;
    /// Events kept for a VM before the oldest are dropped (and counted).
    pub const EVENT_QUEUE_DEPTH: usize = 64;
    /// Bytes of a child's console output kept for its parent (oldest dropped, counted).
    pub const CONSOLE_OUT_RING: usize = 16384;
    /// Bytes of console input a parent may have queued for a child.
    pub const CONSOLE_IN_BUFFER: usize = 4096;
    /// Largest transfer of one CONSOLE_READ or CONSOLE_WRITE call.
    pub const CONSOLE_MAX_TRANSFER: usize = 4096;
    /// Largest copy of one CHILD_MEM_READ or CHILD_MEM_WRITE call.
    pub const CHILD_MEM_MAX: usize = 64 * 1024;
    /// Largest device tree a SPAWN may supply for its child (`dtb_size`).
    pub const SPAWN_MAX_DTB: usize = 256 * 1024;
    /// Largest image EXEC takes (the hypervisor lists its pages before moving them).
    pub const EXEC_MAX_IMAGE: u64 = 64 << 20;
    /// Highest scheduling priority. Priorities run from 1 (lowest) upwards; 0 is never a
    /// priority, so 0 can mean "unchanged" or "default" in argument structures.
    pub const MAX_PRIORITY: u32 = 255;
    /// Deepest possible tree below the Root VM.
    pub const MAX_TREE_DEPTH: u32 = 64;
    /// Most VMs the tree can hold below the Root VM.
    pub const MAX_DESCENDANTS: u32 = 65536;
    /// Most vCPUs any quota can grant.
    pub const MAX_VCPUS: u32 = 4096;
}

/// Exit codes the hypervisor itself reports in TERMINATED events.
pub mod exit_code {
    /// The VM shut itself down through SBI SRST (or the legacy shutdown call).
    pub const SHUTDOWN: u64 = 0;
    /// The VM died of a fatal fault (an unhandled trap the hypervisor cannot reflect).
    pub const FATAL_FAULT: u64 = u64::MAX;
    /// The VM died because an ancestor of it was terminated (never seen by the
    /// terminated VM's own parent, which dies too; reserved for tracing).
    pub const ANCESTOR_TERMINATED: u64 = u64::MAX - 1;
}

/// Flag bits of the extension's arguments and results.
pub mod flags {
    /// FORK a0: the child starts without hardware trust.
    pub const FORK_UNTRUSTED: u64 = 1 << 0;
    /// FORK a0: keep no fork-time snapshot of the child. It is charged only its RAM,
    /// page tables and vCPUs (not a second RAM's worth for the snapshot), and REBOOT of
    /// it answers `NOT_SUPPORTED`.
    pub const FORK_NO_SNAPSHOT: u64 = 1 << 1;
    /// Every FORK flag this ABI version defines.
    pub const FORK_ALL: u64 = FORK_UNTRUSTED | FORK_NO_SNAPSHOT;

    /// SpawnArgs.flags: give the child hardware trust (trusted callers only).
    pub const SPAWN_TRUSTED: u32 = 1 << 0;
    /// SpawnArgs.flags: create the child paused (state CREATED); the parent may
    /// MAP_CHILD_MEM into it, then START it.
    pub const SPAWN_PAUSED: u32 = 1 << 1;
    /// SpawnArgs.flags: `image_gpa` is the GPA of an array of little-endian u64 GPAs,
    /// one per 4 KiB page of the image in order (`ceil(image_size / 4096)` entries;
    /// each page-aligned and inside the caller's RAM). Lets a guest OS pass a large
    /// image from pages that are not physically contiguous.
    pub const SPAWN_PAGE_LIST: u32 = 1 << 2;
    /// Every SpawnArgs flag this ABI version defines.
    pub const SPAWN_ALL: u32 = SPAWN_TRUSTED | SPAWN_PAUSED | SPAWN_PAGE_LIST;

    /// RELEASE_DEVICE a0: a1 is the HPA of (the first page of) one of the device's
    /// register windows.
    pub const DEVICE_BY_WINDOW: u64 = 0;
    /// RELEASE_DEVICE a0: a1 is one of the device's host interrupt numbers.
    pub const DEVICE_BY_IRQ: u64 = 1;

    /// QuotaArgs.flags: apply `ram_pages` even when it is 0.
    pub const QUOTA_SET_RAM: u32 = 1 << 0;
    /// QuotaArgs.flags: apply `vcpus` even when it is 0.
    pub const QUOTA_SET_VCPUS: u32 = 1 << 1;
    /// QuotaArgs.flags: apply `max_priority` even when it is 0 (always invalid: 0 is
    /// not a priority; defined so every field has a bit).
    pub const QUOTA_SET_PRIORITY: u32 = 1 << 2;
    /// QuotaArgs.flags: apply `max_depth` even when it is 0 (no children allowed).
    pub const QUOTA_SET_DEPTH: u32 = 1 << 3;
    /// QuotaArgs.flags: apply `max_descendants` even when it is 0.
    pub const QUOTA_SET_DESCENDANTS: u32 = 1 << 4;
    /// Every QuotaArgs flag this ABI version defines.
    pub const QUOTA_ALL: u32 = QUOTA_SET_RAM
        | QUOTA_SET_VCPUS
        | QUOTA_SET_PRIORITY
        | QUOTA_SET_DEPTH
        | QUOTA_SET_DESCENDANTS;

    /// IpcRecvArgs.flags: `cid` is an exact sender (so 0 means the parent) rather than
    /// the reference's "0 = any sender".
    pub const IPC_RECV_EXACT: u32 = 1 << 0;
    /// IpcRecvArgs.flags: when no matching message waits, the calling vCPU sleeps in
    /// the call (off its hart) until one comes, which the sender's IPC_SEND then
    /// delivers straight into the buffer (a1 = 1, `cid` and `out_len` written back),
    /// or until an interrupt enabled in its `sie` is pending (a1 = 0: nothing
    /// received, as a WFI that ends). A message longer than `max_len` stays queued and
    /// ends the wait with BAD_RANGE. ABI 1.1.
    pub const IPC_RECV_WAIT: u32 = 1 << 1;
    /// Every IpcRecvArgs flag this ABI version defines.
    pub const IPC_RECV_ALL: u32 = IPC_RECV_EXACT | IPC_RECV_WAIT;

    /// VmInfo.flags: the VM has hardware trust.
    pub const INFO_TRUSTED: u32 = 1 << 0;
    /// VmInfo.flags: the VM is the Root VM (it has no parent).
    pub const INFO_ROOT: u32 = 1 << 1;

    /// MAP_CHILD_MEM a4: the child may read.
    pub const MAP_READ: u64 = 1 << 0;
    /// MAP_CHILD_MEM a4: the child may write.
    pub const MAP_WRITE: u64 = 1 << 1;
    /// MAP_CHILD_MEM a4: the child may execute.
    pub const MAP_EXEC: u64 = 1 << 2;
    /// Every MAP_CHILD_MEM permission bit.
    pub const MAP_ALL: u64 = MAP_READ | MAP_WRITE | MAP_EXEC;
}

/// Feature bits of [`HvInfo::features`].
pub mod features {
    /// The hart has the H extension; guests run in VS-mode.
    pub const HW_VIRT: u64 = 1 << 0;
    /// Guest memory is translated by G-stage (sv39x4) page tables.
    pub const GSTAGE: u64 = 1 << 1;
    /// FORK shares memory copy-on-write.
    pub const COW_FORK: u64 = 1 << 2;
    /// IPC_SEND / IPC_RECV are available.
    pub const IPC: u64 = 1 << 3;
    /// Consoles are routed through the tree (CONSOLE_READ / CONSOLE_WRITE).
    pub const CONSOLE: u64 = 1 << 4;
    /// Subtree quotas, including priority, depth and descendants.
    pub const QUOTAS: u64 = 1 << 5;
    /// No H extension: guests are isolated by PMP with offset translation.
    pub const PMP_FALLBACK: u64 = 1 << 6;
    /// MAP_HOST_MMIO / ROUTE_IRQ are available to trusted VMs.
    pub const HW_TRUST: u64 = 1 << 7;
}

/// Kinds of [`Event::kind`].
pub mod event {
    /// No event (never returned with a1 = 1).
    pub const NONE: u32 = 0;
    /// A child (and its subtree) terminated; `exit_code` is set.
    pub const CHILD_TERMINATED: u32 = 1;
    /// A child was stopped.
    pub const CHILD_STOPPED: u32 = 2;
    /// A child was started or resumed.
    pub const CHILD_STARTED: u32 = 3;
    /// A message from `cid` is waiting for IPC_RECV.
    pub const MESSAGE: u32 = 4;
    /// A child rebooted (by its parent or through its own SRST reboot).
    pub const CHILD_REBOOTED: u32 = 5;
}

/// A child's virtio devices: where the child finds them and what its parent's
/// backend learns and does through DEVICE_STATE and DEVICE_RAISE (see
/// `docs/devices.md`).
pub mod devices {
    /// Most virtio devices one child may have.
    pub const MAX_DEVICES: usize = 8;
    /// Most queues one device may have.
    pub const MAX_QUEUES: usize = 8;
    /// Largest queue size (QueueNumMax) a device may offer.
    pub const MAX_QUEUE_SIZE: u32 = 1024;
    /// Largest configuration space of a device, in bytes.
    pub const MAX_CONFIG: usize = 256;
    /// GPA of device 0's virtio-mmio register window in the child (where QEMU `virt`
    /// puts its first virtio-mmio transport); device *i* is at
    /// `MMIO_BASE + i × MMIO_STRIDE`.
    pub const MMIO_BASE: u64 = 0x1000_1000;
    /// Distance between two devices' windows (each window is this long).
    pub const MMIO_STRIDE: u64 = 0x1000;
    /// Interrupt of device 0 on the child's virtual PLIC; device *i* has `FIRST_IRQ + i`.
    pub const FIRST_IRQ: u32 = 1;
    /// [`super::DeviceState::pending`]: bit *q* (*q* < 8) is set when the child
    /// notified queue *q*; this bit when the device's state changed (its status,
    /// including a reset, a queue's readiness while live, or configuration bytes the
    /// child wrote): the backend re-reads it.
    pub const PENDING_STATE: u32 = 1 << 31;
    /// DEVICE_RAISE a2: the used-buffer interrupt (InterruptStatus bit 0).
    pub const RAISE_USED_BUFFER: u64 = 1 << 0;
    /// DEVICE_RAISE a2: the configuration-change interrupt (InterruptStatus bit 1).
    pub const RAISE_CONFIG_CHANGE: u64 = 1 << 1;
    /// DEVICE_RAISE a2: the device is broken (status DEVICE_NEEDS_RESET, and the
    /// configuration-change interrupt); the child's driver resets it.
    pub const RAISE_NEEDS_RESET: u64 = 1 << 2;
    /// Every DEVICE_RAISE bit.
    pub const RAISE_ALL: u64 = RAISE_USED_BUFFER | RAISE_CONFIG_CHANGE | RAISE_NEEDS_RESET;
}

/// Lifecycle states reported in [`VmInfo::state`].
pub mod state {
    /// Created paused: memory may be mapped in, waiting for START.
    pub const CREATED: u32 = 1;
    /// Running (its vCPUs are schedulable).
    pub const RUNNING: u32 = 2;
    /// Stopped by its parent: every vCPU paused.
    pub const STOPPED: u32 = 3;
}

/// How a field of an ABI structure is encoded, for the generated C header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// Field name, identical in Rust and C.
    pub name: &'static str,
    /// C type (`uint32_t` or `uint64_t`).
    pub c_type: &'static str,
    /// Byte offset from the start of the structure.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// An integer that can be a field of an ABI structure.
pub trait LeField: Copy {
    /// Encoded size in bytes.
    const SIZE: usize;
    /// C type name.
    const C_TYPE: &'static str;
    /// Decodes from the first `SIZE` bytes, or `None` if there are fewer.
    fn read_le(bytes: &[u8]) -> Option<Self>;
    /// Encodes into the first `SIZE` bytes of `out` (which callers size exactly).
    fn write_le(self, out: &mut [u8]);
}

macro_rules! le_field {
    ($ty:ty, $c:literal) => {
        impl LeField for $ty {
            const SIZE: usize = core::mem::size_of::<$ty>();
            const C_TYPE: &'static str = $c;
            fn read_le(bytes: &[u8]) -> Option<Self> {
                let raw: [u8; core::mem::size_of::<$ty>()] =
                    bytes.get(..Self::SIZE)?.try_into().ok()?;
                Some(<$ty>::from_le_bytes(raw))
            }
            fn write_le(self, out: &mut [u8]) {
                // Callers always pass a slice of exactly SIZE bytes from a SIZE'd array,
                // so this zip copies every byte; it cannot panic either way.
                for (dst, src) in out.iter_mut().zip(self.to_le_bytes()) {
                    *dst = src;
                }
            }
        }
    };
}
le_field!(u32, "uint32_t");
le_field!(u64, "uint64_t");

/// Fills in cumulative offsets (fields are laid out back to back, as C does when every
/// field is naturally aligned, which [`abi_struct!`] asserts at compile time).
const fn with_offsets<const N: usize>(mut fields: [FieldInfo; N]) -> [FieldInfo; N] {
    let mut offset = 0;
    let mut i = 0;
    while i < N {
        fields[i].offset = offset;
        offset += fields[i].size;
        i += 1;
    }
    fields
}

/// True when every field is naturally aligned and the total is a multiple of 8, i.e.
/// the C layout has no padding anywhere and matches our back-to-back encoding.
const fn layout_is_packed_and_aligned(fields: &[FieldInfo]) -> bool {
    let mut i = 0;
    let mut end = 0;
    while i < fields.len() {
        // Sizes are 4 or 8, so a mask tests divisibility (and works in const fn).
        if fields[i].offset & (fields[i].size - 1) != 0 {
            return false;
        }
        end = fields[i].offset + fields[i].size;
        i += 1;
    }
    end & 7 == 0
}

macro_rules! abi_struct {
    (
        $(#[$meta:meta])*
        $name:ident = $cname:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Encoded size in bytes (this ABI version).
            pub const SIZE: usize = 0 $( + <$ty as LeField>::SIZE )*;
            /// Name of the matching C struct in `diosix_sbi.h`.
            pub const C_NAME: &'static str = $cname;
            /// Every field with its C type, offset and size, in order.
            pub const FIELDS: &'static [FieldInfo] = &with_offsets([
                $( FieldInfo {
                    name: stringify!($field),
                    c_type: <$ty as LeField>::C_TYPE,
                    offset: 0,
                    size: <$ty as LeField>::SIZE,
                }, )*
            ]);

            /// Decodes from little-endian bytes. Extra trailing bytes (a newer, larger
            /// version of the structure) are ignored; `None` if `bytes` is too short.
            pub fn from_le_bytes(bytes: &[u8]) -> Option<Self> {
                let mut offset = 0usize;
                $(
                    let $field = <$ty as LeField>::read_le(bytes.get(offset..)?)?;
                    offset += <$ty as LeField>::SIZE;
                )*
                let _ = offset;
                Some(Self { $( $field, )* })
            }

            /// Encodes to little-endian bytes.
            pub fn to_le_bytes(&self) -> [u8; Self::SIZE] {
                let mut out = [0u8; Self::SIZE];
                let mut offset = 0usize;
                $(
                    let end = offset + <$ty as LeField>::SIZE;
                    if let Some(dst) = out.get_mut(offset..end) {
                        self.$field.write_le(dst);
                    }
                    offset = end;
                )*
                let _ = offset;
                out
            }
        }

        const _: () = assert!(
            layout_is_packed_and_aligned($name::FIELDS)
                && $name::SIZE == core::mem::size_of::<$name>()
        );
    };
}

abi_struct! {
    /// SPAWN arguments (read from a0's GPA). Quota fields left 0 take defaults: exactly
    /// what the child holds, its own priority, and no children.
    SpawnArgs = "diosix_spawn_args" {
        /// Size of the structure as the caller knows it; at least [`SpawnArgs::SIZE`].
        size: u32,
        /// [`flags::SPAWN_TRUSTED`], [`flags::SPAWN_PAUSED`]; other bits must be 0.
        flags: u32,
        /// 0 = create a new child; >= 2 = reset that child with this image.
        cid: u64,
        /// GPA (in the caller) of the guest image.
        image_gpa: u64,
        /// Image size in bytes.
        image_size: u64,
        /// GPA (in the caller) of the device tree for the child; 0 = generated.
        dtb_gpa: u64,
        /// Device tree size in bytes (0 when `dtb_gpa` is 0).
        dtb_size: u64,
        /// Guest RAM of the child, in 4 KiB pages (> 0).
        ram_pages: u64,
        /// vCPUs of the child (> 0).
        vcpus: u32,
        /// Scheduling priority of the child's vCPUs (1..=caller's max priority).
        priority: u32,
        /// Child subtree quota: RAM + page-table pages (0 = exactly what it holds).
        quota_ram_pages: u64,
        /// Child subtree quota: vCPUs (0 = exactly its own).
        quota_vcpus: u32,
        /// Child subtree quota: highest priority (0 = its own priority).
        quota_max_priority: u32,
        /// Child subtree quota: levels of descendants below it (0 = none).
        quota_max_depth: u32,
        /// Child subtree quota: number of descendants (0 = none).
        quota_max_descendants: u32,
        /// GPA (in the caller) of `device_count` [`DeviceSpec`]s: the child's virtio
        /// devices. Absent (a `size` of [`SpawnArgs::MIN_SIZE`]) means none.
        devices_gpa: u64,
        /// Number of [`DeviceSpec`]s at `devices_gpa` (at most
        /// [`devices::MAX_DEVICES`]).
        device_count: u32,
        /// Must be 0.
        reserved: u32,
    }
}

impl SpawnArgs {
    /// The smallest `size` a caller may give: the structure of ABI 1.0, without the
    /// device fields (which then read as 0).
    pub const MIN_SIZE: usize = 88;
}

abi_struct! {
    /// One virtio device of a child, as its parent declares it at SPAWN. The child sees
    /// a virtio-mmio (version 2) transport with these properties; the parent's backend
    /// serves it (DEVICE_STATE, DEVICE_RAISE, CHILD_MEM_READ / CHILD_MEM_WRITE).
    DeviceSpec = "diosix_device_spec" {
        /// Size of the structure as the caller knows it; at least [`DeviceSpec::SIZE`].
        size: u32,
        /// The virtio device ID (1 = network, 2 = block, 4 = entropy, ...; not 0).
        device_id: u32,
        /// Device feature bits offered (`VIRTIO_F_VERSION_1` is always added;
        /// `VIRTIO_F_NOTIFICATION_DATA` and `VIRTIO_F_RING_RESET` never offered).
        features: u64,
        /// Number of queues (1..=[`devices::MAX_QUEUES`]).
        queue_count: u32,
        /// QueueNumMax of every queue: a power of two, 1..=[`devices::MAX_QUEUE_SIZE`].
        queue_max: u32,
        /// GPA (in the caller) of the initial configuration space.
        config_gpa: u64,
        /// Its length in bytes (at most [`devices::MAX_CONFIG`]; 0 = none).
        config_len: u32,
        /// Must be 0.
        reserved: u32,
    }
}

abi_struct! {
    /// DEVICE_STATE result: one of a child's virtio devices as its driver set it up,
    /// followed in memory by `queue_count` [`QueueState`]s.
    DeviceState = "diosix_device_state" {
        /// Bytes written by the hypervisor (this structure and the queue states).
        size: u32,
        /// The device status register as the child's driver set it.
        status: u32,
        /// Features the driver accepted (valid once status has FEATURES_OK).
        driver_features: u64,
        /// Features the device offers.
        device_features: u64,
        /// What happened since the previous DEVICE_STATE (queue bits and
        /// [`devices::PENDING_STATE`]); taken: the call clears them.
        pending: u32,
        /// Configuration generation.
        config_generation: u32,
        /// Number of queues (as many [`QueueState`]s follow).
        queue_count: u32,
        /// Resets of the device since the child was spawned (its driver writing
        /// status 0, a REBOOT of the child): a backend whose count differs forgets
        /// everything it knew of the queues.
        resets: u32,
        /// The InterruptStatus register (what the child has not acknowledged yet).
        interrupt_status: u32,
        /// Reserved, 0.
        reserved: u32,
    }
}

abi_struct! {
    /// One queue of a [`DeviceState`]: where the child put it. Addresses are the
    /// child's GPAs as its driver wrote them, unchecked: the backend checks every
    /// access (CHILD_MEM_READ / CHILD_MEM_WRITE do).
    QueueState = "diosix_queue_state" {
        /// QueueNum (valid whenever `ready` is 1).
        size: u32,
        /// QueueReady: 1 when the backend may use the queue.
        ready: u32,
        /// GPA of the descriptor table.
        desc: u64,
        /// GPA of the available ring (driver area).
        driver: u64,
        /// GPA of the used ring (device area).
        device: u64,
    }
}

abi_struct! {
    /// SET_QUOTA arguments. A field that is 0 is left unchanged (the reference's rule)
    /// unless its `QUOTA_SET_*` bit is set in `flags`.
    QuotaArgs = "diosix_quota_args" {
        /// Size of the structure as the caller knows it; at least [`QuotaArgs::SIZE`].
        size: u32,
        /// `QUOTA_SET_*` bits; other bits must be 0.
        flags: u32,
        /// Target: 1 = self (only lower), >= 2 = a child; 0 (parent) is DENIED.
        cid: u64,
        /// RAM + page-table pages for the whole subtree.
        ram_pages: u64,
        /// vCPUs for the whole subtree.
        vcpus: u32,
        /// Highest priority any vCPU in the subtree may have.
        max_priority: u32,
        /// Levels of descendants allowed below the target.
        max_depth: u32,
        /// Number of descendants allowed below the target.
        max_descendants: u32,
    }
}

abi_struct! {
    /// GET_INFO / GET_CHILD_INFO result: quotas, usage and state of one VM.
    VmInfo = "diosix_vm_info" {
        /// Bytes written by the hypervisor ([`VmInfo::SIZE`]).
        size: u32,
        /// [`flags::INFO_TRUSTED`], [`flags::INFO_ROOT`].
        flags: u32,
        /// The CID the caller used (1 = itself).
        cid: u64,
        /// Quota: RAM + page-table pages for the subtree.
        ram_pages_max: u64,
        /// RAM + page-table pages held by the VM and its descendants.
        ram_pages_used: u64,
        /// Pages held by the VM itself plus the quotas granted to its children: what it
        /// can no longer hand out. `ram_pages_max - ram_pages_reserved` is its headroom.
        ram_pages_reserved: u64,
        /// Guest RAM pages of the VM itself.
        own_ram_pages: u64,
        /// Pages charged to the VM itself besides its RAM: its page tables and what the
        /// hypervisor keeps to reboot it (a spawned VM's image, a forked VM's fork-time
        /// snapshot).
        own_table_pages: u64,
        /// Quota: vCPUs in the subtree.
        vcpus_max: u32,
        /// vCPUs of the VM and its descendants.
        vcpus_used: u32,
        /// Own vCPUs plus the vCPU quotas granted to children.
        vcpus_reserved: u32,
        /// vCPUs of the VM itself.
        own_vcpus: u32,
        /// Quota: highest priority in the subtree.
        max_priority: u32,
        /// Priority of the VM's own vCPUs.
        priority: u32,
        /// Quota: levels of descendants allowed.
        max_depth: u32,
        /// Levels of descendants that exist now.
        depth_used: u32,
        /// Quota: number of descendants allowed.
        max_descendants: u32,
        /// Number of descendants that exist now.
        descendants_used: u32,
        /// Descendant slots granted to children (each child counts 1 + its quota).
        descendants_reserved: u32,
        /// Number of live direct children.
        child_count: u32,
        /// One of the [`state`] values.
        state: u32,
        /// Bytes of console output waiting for the parent to read.
        console_pending: u32,
        /// Bytes of console output dropped because the parent did not read in time.
        console_dropped: u64,
        /// GPA of the VM's first byte of RAM, in its own address space: 0x8000_0000
        /// under H; in PMP mode the host address of its block (GPA = HPA there), which
        /// a parent needs to START a paused child or MAP_CHILD_MEM into it.
        ram_gpa: u64,
        /// Where the VM's boot vCPU was set to start when it was built (SPAWN, EXEC or
        /// at boot): the loaded image's entry point. 0 for a FORK clone.
        entry_gpa: u64,
        /// Where the hypervisor put the VM's device tree when it was built. 0 for a
        /// FORK clone.
        dtb_gpa: u64,
    }
}

abi_struct! {
    /// IPC_SEND arguments.
    IpcSendArgs = "diosix_ipc_send_args" {
        /// Size of the structure as the caller knows it; at least [`IpcSendArgs::SIZE`].
        size: u32,
        /// Must be 0.
        flags: u32,
        /// Receiver: 0 = parent, >= 2 = a child (1, self, is INVALID_PARAM).
        cid: u64,
        /// GPA (in the caller) of the message.
        data_gpa: u64,
        /// Message length in bytes (<= [`limits::IPC_MAX_MESSAGE`]).
        len: u64,
    }
}

abi_struct! {
    /// IPC_RECV arguments; `cid` and `out_len` are written back on success.
    IpcRecvArgs = "diosix_ipc_recv_args" {
        /// Size of the structure as the caller knows it; at least [`IpcRecvArgs::SIZE`].
        size: u32,
        /// [`flags::IPC_RECV_EXACT`], [`flags::IPC_RECV_WAIT`]; other bits must be 0.
        flags: u32,
        /// In: sender filter (0 = any, unless IPC_RECV_EXACT). Out: the actual sender.
        cid: u64,
        /// GPA (in the caller) of the receive buffer.
        buf_gpa: u64,
        /// Buffer length in bytes. If the next matching message is longer, the call
        /// fails with BAD_RANGE and the message stays queued.
        max_len: u64,
        /// Out: length of the received message.
        out_len: u64,
    }
}

abi_struct! {
    /// POLL_EVENT result.
    Event = "diosix_event" {
        /// Bytes written by the hypervisor ([`Event::SIZE`]).
        size: u32,
        /// One of the [`event`] kinds.
        kind: u32,
        /// The CID (as the receiver names it) the event is about.
        cid: u64,
        /// Exit code, for [`event::CHILD_TERMINATED`]; otherwise 0.
        exit_code: u64,
        /// Events dropped (queue full) since the previous POLL_EVENT.
        dropped: u32,
        /// Reserved, 0.
        reserved: u32,
    }
}

abi_struct! {
    /// GET_HV_INFO result. RAM figures are the caller's own view (its quota and
    /// headroom), never host-wide numbers, so they reveal nothing about other VMs.
    HvInfo = "diosix_hv_info" {
        /// Bytes written by the hypervisor ([`HvInfo::SIZE`]).
        size: u32,
        /// [`ext::ABI_VERSION`].
        abi_version: u32,
        /// Hypervisor version: major << 32 | minor << 16 | patch.
        hv_version: u64,
        /// [`features`] bits.
        features: u64,
        /// Physical harts the hypervisor runs on.
        host_cores: u32,
        /// Reserved, 0.
        reserved: u32,
        /// Timer (`time` CSR) frequency in Hz.
        timer_freq_hz: u64,
        /// The caller's RAM quota in pages.
        ram_total_pages: u64,
        /// Pages the caller could still obtain (quota minus what it holds or granted).
        ram_free_pages: u64,
    }
}

/// Every ABI structure's C name, size and fields, for the header generator and tests.
pub const STRUCTS: &[(&str, usize, &[FieldInfo])] = &[
    (SpawnArgs::C_NAME, SpawnArgs::SIZE, SpawnArgs::FIELDS),
    (QuotaArgs::C_NAME, QuotaArgs::SIZE, QuotaArgs::FIELDS),
    (VmInfo::C_NAME, VmInfo::SIZE, VmInfo::FIELDS),
    (IpcSendArgs::C_NAME, IpcSendArgs::SIZE, IpcSendArgs::FIELDS),
    (IpcRecvArgs::C_NAME, IpcRecvArgs::SIZE, IpcRecvArgs::FIELDS),
    (Event::C_NAME, Event::SIZE, Event::FIELDS),
    (HvInfo::C_NAME, HvInfo::SIZE, HvInfo::FIELDS),
    (DeviceSpec::C_NAME, DeviceSpec::SIZE, DeviceSpec::FIELDS),
    (DeviceState::C_NAME, DeviceState::SIZE, DeviceState::FIELDS),
    (QueueState::C_NAME, QueueState::SIZE, QueueState::FIELDS),
];

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn reference_function_numbers_are_kept() {
        assert_eq!(ext::EID, 0x0A00_0005);
        let reference = [
            (0, "EXIT"),
            (1, "YIELD"),
            (2, "FORK"),
            (3, "DROP_TRUST"),
            (4, "SPAWN"),
            (5, "GET_INFO"),
            (6, "SET_QUOTA"),
            (7, "IPC_SEND"),
            (8, "IPC_RECV"),
            (9, "POLL_EVENT"),
            (10, "GET_HV_INFO"),
            (13, "MAP_CHILD_MEM"),
            (14, "UNMAP_CHILD_MEM"),
            (15, "START"),
        ];
        for (fid, name) in reference {
            assert!(ext::FUNCTIONS.contains(&(fid, name)), "{fid} {name}");
        }
        // Ours come after the reference's, unique, and below FID_COUNT.
        for (i, (fid, _)) in ext::FUNCTIONS.iter().enumerate() {
            assert!(*fid < ext::FID_COUNT);
            assert!(*fid != 11 && *fid != 12);
            for (other, _) in &ext::FUNCTIONS[i + 1..] {
                assert_ne!(fid, other);
            }
            if !reference.iter().any(|(r, _)| r == fid) {
                assert!(*fid >= 16);
            }
        }
    }

    #[test]
    fn sizes_are_pinned() {
        assert_eq!(SpawnArgs::SIZE, 104);
        assert_eq!(SpawnArgs::MIN_SIZE, 88);
        assert_eq!(DeviceSpec::SIZE, 40);
        assert_eq!(DeviceState::SIZE, 48);
        assert_eq!(QueueState::SIZE, 32);
        assert_eq!(QuotaArgs::SIZE, 40);
        assert_eq!(VmInfo::SIZE, 144);
        assert_eq!(IpcSendArgs::SIZE, 32);
        assert_eq!(IpcRecvArgs::SIZE, 40);
        assert_eq!(Event::SIZE, 32);
        assert_eq!(HvInfo::SIZE, 56);
        for (_, size, fields) in STRUCTS {
            let last = fields.last().unwrap();
            assert_eq!(last.offset + last.size, *size);
        }
    }

    #[test]
    fn offsets_match_repr_c() {
        fn check(fields: &[FieldInfo], name: &str, offset: usize) {
            let f = fields.iter().find(|f| f.name == name).unwrap();
            assert_eq!(f.offset, offset, "{name}");
        }
        check(SpawnArgs::FIELDS, "cid", offset_of!(SpawnArgs, cid));
        check(
            SpawnArgs::FIELDS,
            "ram_pages",
            offset_of!(SpawnArgs, ram_pages),
        );
        check(SpawnArgs::FIELDS, "vcpus", offset_of!(SpawnArgs, vcpus));
        check(
            SpawnArgs::FIELDS,
            "quota_max_descendants",
            offset_of!(SpawnArgs, quota_max_descendants),
        );
        check(
            QuotaArgs::FIELDS,
            "ram_pages",
            offset_of!(QuotaArgs, ram_pages),
        );
        check(
            QuotaArgs::FIELDS,
            "max_descendants",
            offset_of!(QuotaArgs, max_descendants),
        );
        check(VmInfo::FIELDS, "own_vcpus", offset_of!(VmInfo, own_vcpus));
        check(
            VmInfo::FIELDS,
            "console_dropped",
            offset_of!(VmInfo, console_dropped),
        );
        check(
            IpcRecvArgs::FIELDS,
            "out_len",
            offset_of!(IpcRecvArgs, out_len),
        );
        check(Event::FIELDS, "exit_code", offset_of!(Event, exit_code));
        check(
            HvInfo::FIELDS,
            "ram_free_pages",
            offset_of!(HvInfo, ram_free_pages),
        );
        check(HvInfo::FIELDS, "timer_freq_hz", 32);
        check(VmInfo::FIELDS, "console_dropped", 112);
        assert_eq!(size_of::<VmInfo>(), VmInfo::SIZE);
    }

    #[test]
    fn codec_round_trips_and_is_little_endian() {
        let e = Event {
            size: Event::SIZE as u32,
            kind: event::CHILD_TERMINATED,
            cid: 0x0102_0304_0506_0708,
            exit_code: 42,
            dropped: 3,
            reserved: 0,
        };
        let bytes = e.to_le_bytes();
        assert_eq!(&bytes[..4], &[32, 0, 0, 0]);
        assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Event::from_le_bytes(&bytes), Some(e));
        // Longer input (a future version) decodes; shorter does not.
        let mut long = [0xAAu8; 64];
        long[..Event::SIZE].copy_from_slice(&bytes);
        assert_eq!(Event::from_le_bytes(&long), Some(e));
        assert_eq!(Event::from_le_bytes(&bytes[..Event::SIZE - 1]), None);
        assert_eq!(Event::from_le_bytes(&[]), None);
    }

    #[test]
    fn flag_masks_cover_their_bits() {
        assert_eq!(flags::FORK_ALL, 3);
        assert_eq!(flags::SPAWN_ALL, 7);
        assert_eq!(flags::QUOTA_ALL, 0x1f);
        assert_eq!(flags::MAP_ALL, 7);
    }

    #[test]
    fn standard_numbers_match_the_spec_tables() {
        // SBI 2.0, table 1 and the extension chapters: a change in the crate the numbers
        // come from must not change what goes over the wire.
        assert_eq!((error::FAILED, error::DENIED, error::IO), (-1, -4, -13));
        assert_eq!(SBI_IMPL_ID_DIOSIX, 5);
        assert_eq!(eid::TIME, 0x5449_4D45);
        assert_eq!(eid::IPI, 0x0073_5049);
        assert_eq!(eid::RFENCE, 0x5246_4E43);
        assert_eq!(eid::HSM, 0x0048_534D);
        assert_eq!(eid::SRST, 0x5352_5354);
        assert_eq!(eid::DBCN, 0x4442_434E);
        assert_eq!(eid::LEGACY_SHUTDOWN, 8);
        assert_eq!(fid::hsm::HART_SUSPEND, 3);
        assert_eq!(fid::dbcn::CONSOLE_WRITE_BYTE, 2);
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in -14..=0 {
            match SbiError::from_code(code) {
                Some(e) => {
                    assert_eq!(e.code(), code);
                    assert_eq!(Some(e.name()), error::name(code));
                }
                None => assert_eq!(code, error::SUCCESS),
            }
        }
        assert_eq!(SbiError::from_code(-15), None);
        assert_eq!(SbiError::from_code(1), None);
    }
}
