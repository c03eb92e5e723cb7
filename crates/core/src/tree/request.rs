//! One Diosix-extension call decoded from its registers, once, at the boundary: every
//! guest physical address a [`Gpa`], the one host physical address an [`Hpa`], CIDs,
//! lengths and flags as the `u64` values the ABI gives them. Decoding cannot fail on
//! values (a register's 64 bits are always a valid address or number; what they may
//! name is checked later, in the order `dispatch` documents); only an unknown or
//! reserved function number is refused, with `NotSupported`.

use crate::addr::{Gpa, Hpa};
use diosix_abi::{ext, flags, SbiError};

/// A decoded call of the Diosix extension (see `docs/sbi-extension.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// EXIT: end the caller (`cid` SELF) or a child and its subtree.
    Exit {
        /// SELF or a child.
        cid: u64,
        /// Exit code reported to the parent.
        code: u64,
    },
    /// YIELD the rest of the time slice.
    Yield,
    /// FORK the caller.
    Fork {
        /// `FORK_*` flags.
        flags: u64,
    },
    /// DROP_TRUST of the caller itself.
    DropTrust,
    /// SPAWN a child from an image; the arguments are a `SpawnArgs` at `args`.
    Spawn {
        /// Where the `SpawnArgs` structure is.
        args: Gpa,
    },
    /// GET_INFO about the caller.
    GetInfo {
        /// Output `VmInfo`.
        out: Gpa,
        /// The caller's idea of its size.
        size: u64,
    },
    /// SET_QUOTA of a child; a `QuotaArgs` at `args`.
    SetQuota {
        /// Where the `QuotaArgs` structure is.
        args: Gpa,
    },
    /// IPC_SEND; an `IpcSendArgs` at `args`.
    IpcSend {
        /// Where the `IpcSendArgs` structure is.
        args: Gpa,
    },
    /// IPC_RECV; an `IpcRecvArgs` at `args`.
    IpcRecv {
        /// Where the `IpcRecvArgs` structure is.
        args: Gpa,
    },
    /// IPC_CALL: send `len` bytes at `buf` to peer `cid`, then wait for its answer
    /// into `[buf, buf + cap)`.
    IpcCall {
        /// The peer.
        cid: u64,
        /// The message, and where the answer goes.
        buf: Gpa,
        /// The message's length.
        len: u64,
        /// Room for the answer.
        cap: u64,
    },
    /// POLL_EVENT into an `Event` at `out`.
    PollEvent {
        /// Output `Event`.
        out: Gpa,
        /// The caller's idea of its size.
        size: u64,
    },
    /// GET_HV_INFO into an `HvInfo` at `out`.
    GetHvInfo {
        /// Output `HvInfo`.
        out: Gpa,
        /// The caller's idea of its size.
        size: u64,
    },
    /// MAP_CHILD_MEM: copy-on-write `size` bytes of the caller at `parent_gpa` into a
    /// never-started child at `child_gpa`.
    MapChildMem {
        /// The child.
        cid: u64,
        /// Where in the child.
        child_gpa: Gpa,
        /// Where in the caller.
        parent_gpa: Gpa,
        /// Bytes (whole pages).
        size: u64,
        /// `MAP_*` permissions for the child.
        perms: u64,
    },
    /// UNMAP_CHILD_MEM: the caller's range stops sharing frames with its children.
    UnmapChildMem {
        /// Where in the caller.
        parent_gpa: Gpa,
        /// Bytes (whole pages).
        size: u64,
    },
    /// START a created child at `entry` with `dtb` in a1.
    Start {
        /// The child.
        cid: u64,
        /// Entry point in the child.
        entry: Gpa,
        /// Device tree in the child.
        dtb: Gpa,
    },
    /// STOP a child.
    Stop {
        /// The child.
        cid: u64,
    },
    /// RESUME a stopped child.
    Resume {
        /// The child.
        cid: u64,
    },
    /// REBOOT a child.
    Reboot {
        /// The child.
        cid: u64,
    },
    /// CONSOLE_READ: a child's console output into the caller's buffer.
    ConsoleRead {
        /// The child.
        cid: u64,
        /// The caller's buffer.
        buf: Gpa,
        /// Its length.
        len: u64,
    },
    /// CONSOLE_WRITE: the caller's buffer into a child's console input.
    ConsoleWrite {
        /// The child.
        cid: u64,
        /// The caller's buffer.
        buf: Gpa,
        /// Its length.
        len: u64,
    },
    /// DROP_CHILD_TRUST.
    DropChildTrust {
        /// The child.
        cid: u64,
    },
    /// GET_CHILD_INFO into a `VmInfo` at `out`.
    GetChildInfo {
        /// The child.
        cid: u64,
        /// Output `VmInfo`.
        out: Gpa,
        /// The caller's idea of its size.
        size: u64,
    },
    /// LIST_CHILDREN: up to `capacity` CIDs into the array at `out`.
    ListChildren {
        /// Output array of `u64`.
        out: Gpa,
        /// Its length in entries.
        capacity: u64,
    },
    /// MAP_HOST_MMIO (trusted callers).
    MapHostMmio {
        /// The device's registers.
        hpa: Hpa,
        /// Where the caller wants them.
        gpa: Gpa,
        /// Bytes (whole pages).
        size: u64,
    },
    /// ROUTE_IRQ (trusted callers).
    RouteIrq {
        /// The host interrupt number.
        irq: u64,
    },
    /// EXEC: the caller becomes the image its memory holds.
    Exec {
        /// Where the `SpawnArgs` structure is.
        args: Gpa,
    },
    /// CHILD_MEM_READ or CHILD_MEM_WRITE: a copy between the caller's RAM and a
    /// direct child's.
    ChildMem {
        /// The child.
        cid: u64,
        /// Where in the child's RAM.
        child_gpa: Gpa,
        /// Where in the caller's RAM.
        own_gpa: Gpa,
        /// Bytes.
        len: u64,
        /// Into the child (WRITE) rather than out of it (READ).
        to_child: bool,
    },
    /// DEVICE_STATE: one of a child's virtio devices, its pending bits taken.
    DeviceState {
        /// The child.
        cid: u64,
        /// The device's index (its order in SPAWN's list).
        device: u64,
        /// Where the answer goes.
        out: Gpa,
        /// Room there, in bytes.
        size: u64,
    },
    /// DEVICE_RAISE: interrupts of one of a child's virtio devices.
    DeviceRaise {
        /// The child.
        cid: u64,
        /// The device's index.
        device: u64,
        /// `RAISE_*` bits.
        what: u64,
    },
    /// RELEASE_DEVICE (trusted callers).
    ReleaseDevice {
        /// How `which` names the device (`DEVICE_BY_*`).
        by: u64,
        /// A window's HPA or an interrupt number.
        which: u64,
    },
}

impl Request {
    /// Decodes function `fid` with arguments a0..a5. `NotSupported` for a function
    /// number this version does not define (including the reserved 11 and 12).
    pub fn decode(fid: usize, args: [usize; 6]) -> Result<Self, SbiError> {
        let [a0, a1, a2, a3, a4, _] = args.map(|x| x as u64);
        let gpa = Gpa::new;
        Ok(match fid {
            ext::FID_EXIT => Self::Exit { cid: a0, code: a1 },
            ext::FID_YIELD => Self::Yield,
            ext::FID_FORK => Self::Fork { flags: a0 },
            ext::FID_DROP_TRUST => Self::DropTrust,
            ext::FID_SPAWN => Self::Spawn { args: gpa(a0) },
            ext::FID_GET_INFO => Self::GetInfo {
                out: gpa(a0),
                size: a1,
            },
            ext::FID_SET_QUOTA => Self::SetQuota { args: gpa(a0) },
            ext::FID_IPC_SEND => Self::IpcSend { args: gpa(a0) },
            ext::FID_IPC_RECV => Self::IpcRecv { args: gpa(a0) },
            ext::FID_IPC_CALL => Self::IpcCall {
                cid: a0,
                buf: gpa(a1),
                len: a2,
                cap: a3,
            },
            ext::FID_POLL_EVENT => Self::PollEvent {
                out: gpa(a0),
                size: a1,
            },
            ext::FID_GET_HV_INFO => Self::GetHvInfo {
                out: gpa(a0),
                size: a1,
            },
            ext::FID_MAP_CHILD_MEM => Self::MapChildMem {
                cid: a0,
                child_gpa: gpa(a1),
                parent_gpa: gpa(a2),
                size: a3,
                perms: a4,
            },
            ext::FID_UNMAP_CHILD_MEM => Self::UnmapChildMem {
                parent_gpa: gpa(a0),
                size: a1,
            },
            ext::FID_START => Self::Start {
                cid: a0,
                entry: gpa(a1),
                dtb: gpa(a2),
            },
            ext::FID_STOP => Self::Stop { cid: a0 },
            ext::FID_RESUME => Self::Resume { cid: a0 },
            ext::FID_REBOOT => Self::Reboot { cid: a0 },
            ext::FID_CONSOLE_READ => Self::ConsoleRead {
                cid: a0,
                buf: gpa(a1),
                len: a2,
            },
            ext::FID_CONSOLE_WRITE => Self::ConsoleWrite {
                cid: a0,
                buf: gpa(a1),
                len: a2,
            },
            ext::FID_DROP_CHILD_TRUST => Self::DropChildTrust { cid: a0 },
            ext::FID_GET_CHILD_INFO => Self::GetChildInfo {
                cid: a0,
                out: gpa(a1),
                size: a2,
            },
            ext::FID_LIST_CHILDREN => Self::ListChildren {
                out: gpa(a0),
                capacity: a1,
            },
            ext::FID_MAP_HOST_MMIO => Self::MapHostMmio {
                hpa: Hpa::new(a0),
                gpa: gpa(a1),
                size: a2,
            },
            ext::FID_ROUTE_IRQ => Self::RouteIrq { irq: a0 },
            ext::FID_EXEC => Self::Exec { args: gpa(a0) },
            ext::FID_RELEASE_DEVICE => Self::ReleaseDevice { by: a0, which: a1 },
            ext::FID_CHILD_MEM_READ | ext::FID_CHILD_MEM_WRITE => Self::ChildMem {
                cid: a0,
                child_gpa: gpa(a1),
                own_gpa: gpa(a2),
                len: a3,
                to_child: fid == ext::FID_CHILD_MEM_WRITE,
            },
            ext::FID_DEVICE_STATE => Self::DeviceState {
                cid: a0,
                device: a1,
                out: gpa(a2),
                size: a3,
            },
            ext::FID_DEVICE_RAISE => Self::DeviceRaise {
                cid: a0,
                device: a1,
                what: a2,
            },
            _ => return Err(SbiError::NotSupported),
        })
    }

    /// Whether the hypervisor must hold the caller's other vCPUs still (off their
    /// harts) before carrying this out: only a FORK the tree may admit (valid flags),
    /// as it copies every vCPU's state. Calls refused on their arguments alone never
    /// make anyone wait.
    pub fn holds_caller_vcpus(&self) -> bool {
        matches!(self, Self::Fork { flags } if fork_flags_valid(*flags))
    }

    /// Whether this call needs the VM tree at all. UNMAP_CHILD_MEM acts on the
    /// caller's own memory only, for a time proportional to its length, and YIELD on
    /// the caller's vCPU only: the hypervisor runs them without the tree's lock
    /// (`handle_treeless_call`), so no other VM waits on them and a YIELD costs no
    /// lock round trip.
    pub fn needs_tree(&self) -> bool {
        !matches!(self, Self::UnmapChildMem { .. } | Self::Yield)
    }

    /// Whether this call only gives up the caller's hart: its reply is 0 and nothing
    /// else happens, so the hypervisor may answer it before looking anything up
    /// (YIELD, on every vCPU switch a guest asks for).
    pub fn only_yields(&self) -> bool {
        matches!(self, Self::Yield)
    }
}

/// FORK's flags hold only bits this version defines.
pub(super) fn fork_flags_valid(fl: u64) -> bool {
    fl & !flags::FORK_ALL == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_function_decodes_and_the_rest_are_not_supported() {
        for fid in 0..ext::FID_COUNT + 4 {
            let r = Request::decode(fid, [0; 6]);
            let reserved = fid == ext::FID_RESERVED_11 || fid == ext::FID_RESERVED_12;
            if fid < ext::FID_COUNT && !reserved {
                assert!(r.is_ok(), "fid {fid}");
            } else {
                assert_eq!(r, Err(SbiError::NotSupported), "fid {fid}");
            }
        }
        assert_eq!(
            Request::decode(usize::MAX, [0; 6]),
            Err(SbiError::NotSupported)
        );
    }

    #[test]
    fn addresses_keep_all_64_bits_and_their_space() {
        let r = Request::decode(ext::FID_MAP_HOST_MMIO, [usize::MAX, 1 << 63, 4096, 0, 0, 0]);
        assert_eq!(
            r,
            Ok(Request::MapHostMmio {
                hpa: Hpa::new(u64::MAX),
                gpa: Gpa::new(1 << 63),
                size: 4096
            })
        );
    }

    #[test]
    fn only_an_admissible_fork_holds_the_callers_vcpus() {
        let fork = |fl: usize| Request::decode(ext::FID_FORK, [fl, 0, 0, 0, 0, 0]).unwrap();
        assert!(fork(0).holds_caller_vcpus());
        assert!(fork(flags::FORK_ALL as usize).holds_caller_vcpus());
        assert!(!fork(1 << 40).holds_caller_vcpus());
        assert!(!Request::Yield.holds_caller_vcpus());
        let unmap = Request::decode(ext::FID_UNMAP_CHILD_MEM, [0; 6]).unwrap();
        assert!(!unmap.needs_tree());
        assert!(!Request::Yield.needs_tree());
        assert!(Request::Yield.only_yields());
        assert!(!Request::DropTrust.only_yields());
    }
}
