//! `/dev/diosix`: the [`Hypervisor`] calls as ioctls on the Root VM's driver
//! (`rootvm/driver/diosix_ioctl.h`).
//!
//! The argument structures are built as little-endian bytes with the ABI crate's codecs
//! rather than as `#[repr(C)]` Rust structs: the layout is then spelled out once, in the
//! offsets below, and checked against the C header by a test. Every structure starts
//! with the driver's `diosix_ioc_ret` (a0, a1 of the SBI call, 16 bytes).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use diosix_abi::{devices, error, ext, flags, Event, HvInfo, IpcRecvArgs, IpcSendArgs};
use diosix_abi::{DeviceSpec, DeviceState, QueueState, QuotaArgs, SpawnArgs, VmInfo};

use crate::hv::{CallError, CallResult, DeviceDecl, Hypervisor};

/// The device node.
pub const PATH: &str = "/dev/diosix";
/// The driver's ioctl type byte (`DIOSIX_IOC_MAGIC`).
pub const MAGIC: u64 = 0xD5;
/// Largest SPAWN or EXEC image the driver accepts (`DIOSIX_SPAWN_MAX_IMAGE`, also the
/// hypervisor's EXEC limit); it stages the image page by page, so this bounds memory
/// use, not contiguity.
pub const SPAWN_MAX_IMAGE: usize = 64 << 20;
/// Largest SPAWN device tree (the hypervisor's limit, which the driver enforces too).
pub const SPAWN_MAX_DTB: usize = diosix_abi::limits::SPAWN_MAX_DTB;
/// Most CIDs one LIST_CHILDREN request returns (`DIOSIX_LIST_MAX`).
pub const LIST_MAX: usize = 512;
/// Most devices one SPAWN declares (`DIOSIX_SPAWN_MAX_DEVICES`).
pub const SPAWN_MAX_DEVICES: usize = devices::MAX_DEVICES;
/// Most configuration bytes of one device (`DIOSIX_SPAWN_MAX_CONFIG`).
pub const SPAWN_MAX_CONFIG: usize = devices::MAX_CONFIG;
/// The longest DEVICE_STATE answer (`DIOSIX_DEVICE_STATE_MAX`): the state and
/// `devices::MAX_QUEUES` queues.
pub const DEVICE_STATE_MAX: usize = DeviceState::SIZE + devices::MAX_QUEUES * QueueState::SIZE;

/// Size of `struct diosix_ioc_ret`.
const RET: usize = 16;

/// Sizes of the driver's structures, by the ioctl they belong to.
pub mod size {
    use super::RET;
    use diosix_abi::{Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs, SpawnArgs, VmInfo};
    /// `struct diosix_ioc_scalar`: ret, 5 arguments.
    pub const SCALAR: usize = RET + 5 * 8;
    /// `struct diosix_ioc_spawn` (SPAWN and EXEC): ret, args, image, dtb and devices
    /// pointers.
    pub const SPAWN: usize = RET + SpawnArgs::SIZE + 24;
    /// `struct diosix_ioc_vm_info`: ret, cid, info.
    pub const VM_INFO: usize = RET + 8 + VmInfo::SIZE;
    /// `struct diosix_ioc_quota`: ret, args.
    pub const QUOTA: usize = RET + QuotaArgs::SIZE;
    /// `struct diosix_ioc_ipc_send`: ret, args, data pointer.
    pub const IPC_SEND: usize = RET + IpcSendArgs::SIZE + 8;
    /// `struct diosix_ioc_ipc_recv`: ret, args, buffer pointer.
    pub const IPC_RECV: usize = RET + IpcRecvArgs::SIZE + 8;
    /// `struct diosix_ioc_event`: ret, event.
    pub const EVENT: usize = RET + Event::SIZE;
    /// `struct diosix_ioc_hv_info`: ret, info.
    pub const HV_INFO: usize = RET + HvInfo::SIZE;
    /// `struct diosix_ioc_console`: ret, cid, buffer pointer, length.
    pub const CONSOLE: usize = RET + 24;
    /// `struct diosix_ioc_list`: ret, array pointer, capacity.
    pub const LIST: usize = RET + 16;
    /// `struct diosix_ioc_child_mem`: ret, cid, child GPA, buffer pointer, length.
    pub const CHILD_MEM: usize = RET + 32;
    /// `struct diosix_ioc_device_state`: ret, cid, device, buffer pointer, length.
    pub const DEVICE_STATE: usize = RET + 32;
}

/// `_IOWR(DIOSIX_IOC_MAGIC, fid, size)` in the generic Linux encoding (riscv and x86
/// share it): direction in bits 31..30 (read | write = 3), size in 29..16, type in
/// 15..8, number in 7..0.
pub const fn request(fid: usize, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (MAGIC << 8) | fid as u64
}

/// The ioctl request for function `fid`, with its structure's size.
pub fn request_for(fid: usize) -> Option<u64> {
    let size = match fid {
        ext::FID_SPAWN | ext::FID_EXEC => size::SPAWN,
        ext::FID_GET_INFO | ext::FID_GET_CHILD_INFO => size::VM_INFO,
        ext::FID_SET_QUOTA => size::QUOTA,
        ext::FID_IPC_SEND => size::IPC_SEND,
        ext::FID_IPC_RECV => size::IPC_RECV,
        ext::FID_POLL_EVENT => size::EVENT,
        ext::FID_GET_HV_INFO => size::HV_INFO,
        ext::FID_CONSOLE_READ | ext::FID_CONSOLE_WRITE => size::CONSOLE,
        ext::FID_LIST_CHILDREN => size::LIST,
        ext::FID_CHILD_MEM_READ | ext::FID_CHILD_MEM_WRITE => size::CHILD_MEM,
        ext::FID_DEVICE_STATE => size::DEVICE_STATE,
        ext::FID_RESERVED_11 | ext::FID_RESERVED_12 => return None,
        // A call that may sleep in the hypervisor until an answer comes: the driver
        // offers none (a Linux CPU does not sleep there; processes wait with poll()).
        ext::FID_IPC_CALL => return None,
        f if f < ext::FID_COUNT => size::SCALAR,
        _ => return None,
    };
    Some(request(fid, size))
}

/// An ioctl argument buffer, 8-byte aligned like the C structures it stands for.
#[repr(C, align(8))]
struct Buf<const N: usize>([u8; N]);

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Buf([0; N])
    }

    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }

    /// a1, or the SBI error from a0.
    fn result(&self) -> CallResult<u64> {
        let a0 = self.u64_at(0) as i64;
        if a0 == error::SUCCESS as i64 {
            Ok(self.u64_at(8))
        } else {
            Err(CallError::Sbi(a0))
        }
    }
}

/// A user pointer as the driver takes it (`__u64`).
fn ptr(p: *const u8) -> u64 {
    p as usize as u64
}

/// An open `/dev/diosix`.
pub struct Device {
    file: File,
}

impl Device {
    /// CHILD_MEM_READ or CHILD_MEM_WRITE (`fid`) of `len` bytes at user address `buf`.
    fn child_mem(
        &mut self,
        fid: usize,
        cid: u64,
        gpa: u64,
        buf: u64,
        len: usize,
    ) -> CallResult<()> {
        let mut b = Buf::<{ size::CHILD_MEM }>::new();
        b.put_u64(RET, cid);
        b.put_u64(RET + 8, gpa);
        b.put_u64(RET + 16, buf);
        b.put_u64(RET + 24, len as u64);
        self.ioctl(fid, &mut b)?;
        b.result().map(|_| ())
    }

    /// Opens the device (root only: mode 0600 and CAP_SYS_ADMIN).
    pub fn open() -> CallResult<Device> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(PATH)
            .map(|file| Device { file })
            .map_err(|e| CallError::Os(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// The descriptor, for `poll(2)` over several devices ([`wait_any`]).
    fn fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }

    fn ioctl<const N: usize>(&self, fid: usize, buf: &mut Buf<N>) -> CallResult<()> {
        let req = request_for(fid).ok_or(CallError::Os(libc::ENOTTY))?;
        let _timed = stats::Timed::call(fid);
        debug_assert_eq!((req >> 16) & 0x3fff, N as u64, "buffer size of FID {fid}");
        // SAFETY: `buf` is a live, exclusively borrowed buffer of exactly the size
        // encoded in `req`, which is all the driver reads and writes through the
        // argument; user pointers inside it point at buffers the caller keeps alive for
        // the duration of this call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, buf.0.as_mut_ptr()) };
        if rc < 0 {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return Err(CallError::Os(errno));
        }
        Ok(())
    }
}

/// Waits up to `timeout` until one of `devices` reports `POLLIN` (a doorbell file:
/// see `DIOSIX_IOC_DEVICE_STATE`), one of `extra` is ready for the events it gives
/// (or has an error or hang-up to report: a device's own descriptor, such as a network
/// card's TAP, for input; a port forward's sockets, for input or output), or a signal
/// arrives. Returns those of `extra` with something to report, with what (`revents`),
/// in order.
pub fn wait_any(
    devices: &[Device],
    extra: &[crate::backend::PollFd],
    timeout: std::time::Duration,
) -> Vec<crate::backend::PollFd> {
    let _timed = stats::Timed::wait();
    let mut pfds: Vec<libc::pollfd> = devices
        .iter()
        .map(|d| libc::pollfd {
            fd: d.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .chain(extra.iter().map(|p| libc::pollfd {
            fd: p.fd,
            events: p.events,
            revents: 0,
        }))
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is a live array of exactly `pfds.len()` pollfds for the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return Vec::new();
    }
    pfds[devices.len()..]
        .iter()
        .filter(|p| p.revents != 0)
        .map(|p| crate::backend::PollFd {
            fd: p.fd,
            events: p.revents,
        })
        .collect()
}

/// SPAWN's device list as the driver takes it: `DeviceSpec`s back to back, each
/// `config_gpa` the user address of its configuration bytes (which must outlive the
/// ioctl: they are borrowed from `devices`).
fn device_list(devices: &[DeviceDecl]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(devices.len() * DeviceSpec::SIZE);
    for d in devices {
        let mut spec = d.spec;
        spec.size = DeviceSpec::SIZE as u32;
        spec.config_len = d.config.len() as u32;
        spec.config_gpa = if d.config.is_empty() {
            0
        } else {
            ptr(d.config.as_ptr())
        };
        raw.extend_from_slice(&spec.to_le_bytes());
    }
    raw
}

impl Device {
    /// SPAWN or EXEC (`struct diosix_ioc_spawn`): `args` with its sizes filled in from
    /// `image`, `dtb` and `devices`; returns a1.
    fn image_call(
        &self,
        fid: usize,
        args: &SpawnArgs,
        image: &[u8],
        dtb: Option<&[u8]>,
        devices: &[DeviceDecl],
    ) -> CallResult<u64> {
        // The driver's limits, so the answer is the same without the copies.
        if devices.len() > SPAWN_MAX_DEVICES
            || devices.iter().any(|d| d.config.len() > SPAWN_MAX_CONFIG)
        {
            return Err(CallError::Os(libc::E2BIG));
        }
        let mut a = *args;
        a.size = SpawnArgs::SIZE as u32;
        a.image_size = image.len() as u64;
        a.dtb_size = dtb.map_or(0, |d| d.len() as u64);
        a.device_count = devices.len() as u32;
        // The driver fills the GPAs with those of its own copies.
        a.image_gpa = 0;
        a.dtb_gpa = 0;
        a.devices_gpa = 0;
        // Kept alive until the ioctl returns: the driver reads it (and the configs
        // its entries point at) during the call.
        let list = device_list(devices);
        let mut b = Buf::<{ size::SPAWN }>::new();
        b.put(RET, &a.to_le_bytes());
        b.put_u64(RET + SpawnArgs::SIZE, ptr(image.as_ptr()));
        b.put_u64(
            RET + SpawnArgs::SIZE + 8,
            dtb.map_or(0, |d| ptr(d.as_ptr())),
        );
        if !devices.is_empty() {
            b.put_u64(RET + SpawnArgs::SIZE + 16, ptr(list.as_ptr()));
        }
        self.ioctl(fid, &mut b)?;
        b.result()
    }
}

/// A DEVICE_STATE answer of `len` bytes: the state, then as many of its
/// `queue_count` queues as the answer holds (never more than `devices::MAX_QUEUES`).
pub fn parse_device_state(bytes: &[u8]) -> Option<(DeviceState, Vec<QueueState>)> {
    let state = DeviceState::from_le_bytes(bytes)?;
    let queues = bytes
        .get(DeviceState::SIZE..)?
        .chunks_exact(QueueState::SIZE)
        .take((state.queue_count as usize).min(devices::MAX_QUEUES))
        .filter_map(QueueState::from_le_bytes)
        .collect();
    Some((state, queues))
}

impl Hypervisor for Device {
    fn scalar(&mut self, fid: usize, args: [u64; 5]) -> CallResult<u64> {
        let mut b = Buf::<{ size::SCALAR }>::new();
        for (i, a) in args.iter().enumerate() {
            b.put_u64(RET + 8 * i, *a);
        }
        self.ioctl(fid, &mut b)?;
        b.result()
    }

    fn spawn(
        &mut self,
        args: &SpawnArgs,
        image: &[u8],
        dtb: Option<&[u8]>,
        devices: &[DeviceDecl],
    ) -> CallResult<u64> {
        self.image_call(ext::FID_SPAWN, args, image, dtb, devices)
    }

    fn exec(&mut self, args: &SpawnArgs, image: &[u8]) -> CallResult<()> {
        let mut a = *args;
        a.cid = 0;
        self.image_call(ext::FID_EXEC, &a, image, None, &[])
            .map(|_| ())
    }

    fn device_state(
        &mut self,
        cid: u64,
        device: u64,
    ) -> CallResult<(DeviceState, Vec<QueueState>)> {
        let mut out = [0u8; DEVICE_STATE_MAX];
        let mut b = Buf::<{ size::DEVICE_STATE }>::new();
        b.put_u64(RET, cid);
        b.put_u64(RET + 8, device);
        b.put_u64(RET + 16, ptr(out.as_mut_ptr()));
        b.put_u64(RET + 24, out.len() as u64);
        self.ioctl(ext::FID_DEVICE_STATE, &mut b)?;
        let len = usize::try_from(b.result()?)
            .unwrap_or(usize::MAX)
            .min(out.len());
        parse_device_state(&out[..len]).ok_or(CallError::Os(libc::EIO))
    }

    fn vm_info(&mut self, cid: Option<u64>) -> CallResult<VmInfo> {
        let mut b = Buf::<{ size::VM_INFO }>::new();
        let fid = match cid {
            None => ext::FID_GET_INFO,
            Some(c) => {
                b.put_u64(RET, c);
                ext::FID_GET_CHILD_INFO
            }
        };
        self.ioctl(fid, &mut b)?;
        b.result()?;
        VmInfo::from_le_bytes(&b.0[RET + 8..]).ok_or(CallError::Os(libc::EIO))
    }

    fn hv_info(&mut self) -> CallResult<HvInfo> {
        let mut b = Buf::<{ size::HV_INFO }>::new();
        self.ioctl(ext::FID_GET_HV_INFO, &mut b)?;
        b.result()?;
        HvInfo::from_le_bytes(&b.0[RET..]).ok_or(CallError::Os(libc::EIO))
    }

    fn set_quota(&mut self, args: &QuotaArgs) -> CallResult<()> {
        let mut a = *args;
        a.size = QuotaArgs::SIZE as u32;
        let mut b = Buf::<{ size::QUOTA }>::new();
        b.put(RET, &a.to_le_bytes());
        self.ioctl(ext::FID_SET_QUOTA, &mut b)?;
        b.result().map(|_| ())
    }

    fn ipc_send(&mut self, cid: u64, data: &[u8]) -> CallResult<()> {
        let a = IpcSendArgs {
            size: IpcSendArgs::SIZE as u32,
            flags: 0,
            cid,
            data_gpa: 0,
            len: data.len() as u64,
        };
        let mut b = Buf::<{ size::IPC_SEND }>::new();
        b.put(RET, &a.to_le_bytes());
        b.put_u64(RET + IpcSendArgs::SIZE, ptr(data.as_ptr()));
        self.ioctl(ext::FID_IPC_SEND, &mut b)?;
        b.result().map(|_| ())
    }

    fn ipc_recv(
        &mut self,
        filter: u64,
        exact: bool,
        buf: &mut [u8],
    ) -> CallResult<Option<(u64, usize)>> {
        let a = IpcRecvArgs {
            size: IpcRecvArgs::SIZE as u32,
            flags: if exact { flags::IPC_RECV_EXACT } else { 0 },
            cid: filter,
            buf_gpa: 0,
            max_len: buf.len() as u64,
            out_len: 0,
        };
        let mut b = Buf::<{ size::IPC_RECV }>::new();
        b.put(RET, &a.to_le_bytes());
        b.put_u64(RET + IpcRecvArgs::SIZE, ptr(buf.as_mut_ptr()));
        self.ioctl(ext::FID_IPC_RECV, &mut b)?;
        if b.result()? != 1 {
            return Ok(None);
        }
        let out = IpcRecvArgs::from_le_bytes(&b.0[RET..]).ok_or(CallError::Os(libc::EIO))?;
        let len = usize::try_from(out.out_len)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        Ok(Some((out.cid, len)))
    }

    fn poll_event(&mut self) -> CallResult<Option<Event>> {
        let mut b = Buf::<{ size::EVENT }>::new();
        self.ioctl(ext::FID_POLL_EVENT, &mut b)?;
        if b.result()? != 1 {
            return Ok(None);
        }
        Event::from_le_bytes(&b.0[RET..])
            .map(Some)
            .ok_or(CallError::Os(libc::EIO))
    }

    fn console_read(&mut self, cid: u64, buf: &mut [u8]) -> CallResult<usize> {
        let mut b = Buf::<{ size::CONSOLE }>::new();
        b.put_u64(RET, cid);
        b.put_u64(RET + 8, ptr(buf.as_mut_ptr()));
        b.put_u64(RET + 16, buf.len() as u64);
        self.ioctl(ext::FID_CONSOLE_READ, &mut b)?;
        Ok((b.result()? as usize).min(buf.len()))
    }

    fn child_mem_read(&mut self, cid: u64, gpa: u64, buf: &mut [u8]) -> CallResult<()> {
        self.child_mem(
            ext::FID_CHILD_MEM_READ,
            cid,
            gpa,
            ptr(buf.as_mut_ptr()),
            buf.len(),
        )
    }

    fn child_mem_write(&mut self, cid: u64, gpa: u64, data: &[u8]) -> CallResult<()> {
        self.child_mem(
            ext::FID_CHILD_MEM_WRITE,
            cid,
            gpa,
            ptr(data.as_ptr()),
            data.len(),
        )
    }

    fn console_write(&mut self, cid: u64, data: &[u8]) -> CallResult<usize> {
        let mut b = Buf::<{ size::CONSOLE }>::new();
        b.put_u64(RET, cid);
        b.put_u64(RET + 8, ptr(data.as_ptr()));
        b.put_u64(RET + 16, data.len() as u64);
        self.ioctl(ext::FID_CONSOLE_WRITE, &mut b)?;
        Ok((b.result()? as usize).min(data.len()))
    }

    fn list_children(&mut self, out: &mut [u64]) -> CallResult<u64> {
        // The driver copies u64s in the machine's order, which is little-endian on
        // every target dsx builds for; read them back through bytes all the same.
        let cap = out.len().min(LIST_MAX);
        let mut raw = vec![0u8; cap * 8];
        let mut b = Buf::<{ size::LIST }>::new();
        b.put_u64(RET, ptr(raw.as_mut_ptr()));
        b.put_u64(RET + 8, cap as u64);
        self.ioctl(ext::FID_LIST_CHILDREN, &mut b)?;
        let count = b.result()?;
        for (slot, bytes) in out.iter_mut().zip(raw.chunks_exact(8)) {
            let mut v = [0u8; 8];
            v.copy_from_slice(bytes);
            *slot = u64::from_le_bytes(v);
        }
        Ok(count)
    }

    fn wait_for_events(&mut self, timeout: std::time::Duration) {
        // The driver reports POLLIN from the VM's event interrupt; without one (an
        // older hypervisor, a VM without a virtual PLIC) this just times out.
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_header() {
        // The DIOSIX_STATIC_ASSERTs at the end of diosix_ioctl.h.
        assert_eq!(size::SCALAR, 56);
        assert_eq!(size::SPAWN, 144);
        assert_eq!(size::DEVICE_STATE, 48);
        assert_eq!(size::CHILD_MEM, 48);
        assert_eq!(size::VM_INFO, 168);
        assert_eq!(size::QUOTA, 56);
        assert_eq!(size::IPC_SEND, 56);
        assert_eq!(size::IPC_RECV, 64);
        assert_eq!(size::EVENT, 48);
        assert_eq!(size::HV_INFO, 72);
        assert_eq!(size::CONSOLE, 40);
        assert_eq!(size::LIST, 32);
    }

    #[test]
    fn request_numbers_are_the_function_ids() {
        // _IOWR(0xD5, 4, 144)
        assert_eq!(request_for(ext::FID_SPAWN), Some(0xC090_D504));
        assert_eq!(request_for(ext::FID_STOP), Some(0xC038_D510));
        // EXEC takes SPAWN's structure: _IOWR(0xD5, 26, 144)
        assert_eq!(request_for(ext::FID_EXEC), Some(0xC090_D51A));
        // _IOWR(0xD5, 30, 48); DEVICE_RAISE is a scalar one: _IOWR(0xD5, 31, 56).
        assert_eq!(request_for(ext::FID_DEVICE_STATE), Some(0xC030_D51E));
        assert_eq!(request_for(ext::FID_DEVICE_RAISE), Some(0xC038_D51F));
        assert_eq!(request_for(11), None);
        assert_eq!(request_for(ext::FID_COUNT), None);
        assert_eq!(request_for(ext::FID_IPC_CALL), None);
        for (fid, _) in ext::FUNCTIONS
            .iter()
            .filter(|(f, _)| *f != ext::FID_IPC_CALL)
        {
            let req = request_for(*fid).unwrap();
            assert_eq!(req & 0xff, *fid as u64);
        }
    }

    #[test]
    fn device_lists_and_states_are_encoded_as_the_driver_reads_them() {
        let rng = DeviceDecl {
            spec: DeviceSpec {
                device_id: 4,
                queue_count: 1,
                queue_max: 64,
                config_gpa: 0x1234,
                ..DeviceSpec::default()
            },
            config: Vec::new(),
        };
        let blk = DeviceDecl {
            spec: DeviceSpec {
                device_id: 2,
                ..rng.spec
            },
            config: vec![1, 2, 3],
        };
        let list = [rng, blk];
        let raw = device_list(&list);
        assert_eq!(raw.len(), 2 * DeviceSpec::SIZE);
        let a = DeviceSpec::from_le_bytes(&raw).unwrap();
        let b = DeviceSpec::from_le_bytes(&raw[DeviceSpec::SIZE..]).unwrap();
        // Sizes set; no configuration: no pointer; else the user address of the bytes.
        assert_eq!(
            (a.size, a.device_id, a.config_gpa, a.config_len),
            (40, 4, 0, 0)
        );
        assert_eq!((b.size, b.device_id, b.config_len), (40, 2, 3));
        assert_eq!(b.config_gpa, ptr(list[1].config.as_ptr()));

        let state = DeviceState {
            size: 80,
            status: 0xf,
            queue_count: 1,
            resets: 2,
            ..DeviceState::default()
        };
        let q = QueueState {
            size: 64,
            ready: 1,
            desc: 0x8000_0000,
            driver: 0x8000_0400,
            device: 0x8000_0800,
        };
        let mut bytes = state.to_le_bytes().to_vec();
        bytes.extend_from_slice(&q.to_le_bytes());
        assert_eq!(parse_device_state(&bytes), Some((state, vec![q])));
        // A queue count beyond what was written, or beyond the ABI's: what is there.
        let many = DeviceState {
            queue_count: 99,
            ..state
        };
        let mut bytes = many.to_le_bytes().to_vec();
        bytes.extend_from_slice(&q.to_le_bytes());
        assert_eq!(parse_device_state(&bytes).unwrap().1, [q]);
        assert_eq!(parse_device_state(&bytes[..47]), None);
        assert_eq!(DEVICE_STATE_MAX, 304);
    }

    /// Compiles a C program against the real headers with the host compiler and
    /// compares every structure size and ioctl number with ours. Skipped when there is
    /// no C compiler.
    #[test]
    fn c_header_agrees() {
        use std::process::Command;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::temp_dir().join(format!("dsx-hdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut prog =
            String::from("#include <stdio.h>\n#include \"diosix_ioctl.h\"\nint main(void){\n");
        let offered: Vec<_> = ext::FUNCTIONS
            .iter()
            .filter(|(fid, _)| request_for(*fid).is_some())
            .collect();
        for (fid, name) in &offered {
            prog.push_str(&format!(
                "printf(\"{fid} %lu\\n\", (unsigned long)DIOSIX_IOC_{name});\n"
            ));
        }
        // The driver's own limits, which the generated header does not carry.
        let limits = [
            ("DIOSIX_SPAWN_MAX_DEVICES", SPAWN_MAX_DEVICES),
            ("DIOSIX_SPAWN_MAX_CONFIG", SPAWN_MAX_CONFIG),
            ("DIOSIX_DEVICE_MAX_QUEUES", devices::MAX_QUEUES),
            ("DIOSIX_DEVICE_STATE_MAX", DEVICE_STATE_MAX),
            ("DIOSIX_LIST_MAX", LIST_MAX),
            ("DIOSIX_SPAWN_MAX_IMAGE", SPAWN_MAX_IMAGE),
        ];
        for (name, _) in &limits {
            prog.push_str(&format!(
                "printf(\"{name} %lu\\n\", (unsigned long)({name}));\n"
            ));
        }
        prog.push_str("return 0;}\n");
        let src = dir.join("t.c");
        std::fs::write(&src, prog).unwrap();
        let exe = dir.join("t");
        let built = Command::new("cc")
            .arg("-std=c11")
            .arg("-I")
            .arg(root.join("rootvm/driver"))
            .arg("-I")
            .arg(root.join("crates/abi/include"))
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status();
        match built {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("the C header does not compile: {s}"),
            Err(_) => {
                eprintln!("no C compiler: skipped");
                return;
            }
        }
        let out = Command::new(&exe).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut n = 0;
        for line in text.lines() {
            let (fid, req) = line.split_once(' ').unwrap();
            if let Some((name, want)) = limits.iter().find(|(l, _)| *l == fid) {
                assert_eq!(req.parse::<usize>().unwrap(), *want, "{name}");
                continue;
            }
            let fid: usize = fid.parse().unwrap();
            assert_eq!(Some(req.parse().unwrap()), request_for(fid), "FID {fid}");
            n += 1;
        }
        assert_eq!(n, offered.len());
        // Every function but IPC_CALL, which the driver does not offer.
        assert_eq!(offered.len() + 1, ext::FUNCTIONS.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Where a backend's time goes: how many calls of each function it made and how long
/// they took, and how long it waited in `poll`, by the monotonic clock (which, under
/// QEMU's `-icount`, counts instructions). A backend logs them when it ends.
pub mod stats {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    /// Slots: one per function number below this, then the wait, then file I/O.
    const FIDS: usize = diosix_abi::ext::FID_COUNT;
    static COUNT: [AtomicU64; FIDS + 2] = [const { AtomicU64::new(0) }; FIDS + 2];
    static NANOS: [AtomicU64; FIDS + 2] = [const { AtomicU64::new(0) }; FIDS + 2];

    /// Counts the time until it is dropped.
    pub struct Timed {
        slot: usize,
        start: Instant,
    }

    impl Timed {
        /// An ioctl for function `fid`.
        pub fn call(fid: usize) -> Timed {
            Timed {
                slot: fid.min(FIDS - 1),
                start: Instant::now(),
            }
        }

        /// A wait for a doorbell.
        pub fn wait() -> Timed {
            Timed {
                slot: FIDS,
                start: Instant::now(),
            }
        }

        /// A read or write of a device's file.
        pub fn file() -> Timed {
            Timed {
                slot: FIDS + 1,
                start: Instant::now(),
            }
        }
    }

    impl Drop for Timed {
        fn drop(&mut self) {
            let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            COUNT[self.slot].fetch_add(1, Ordering::Relaxed);
            NANOS[self.slot].fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// One line: `NAME calls/µs total` for each function called, and the waits.
    pub fn summary() -> String {
        let mut parts = Vec::new();
        for (slot, (c, n)) in COUNT.iter().zip(&NANOS).enumerate() {
            let (c, n) = (c.load(Ordering::Relaxed), n.load(Ordering::Relaxed));
            if c == 0 {
                continue;
            }
            let name = if slot == FIDS {
                "wait"
            } else if slot == FIDS + 1 {
                "file"
            } else {
                diosix_abi::ext::FUNCTIONS
                    .iter()
                    .find(|(f, _)| *f == slot)
                    .map_or("?", |(_, n)| n)
            };
            parts.push(format!("{name} {c}/{}us", n / 1000));
        }
        parts.join(", ")
    }
}
