//! `/dev/diosix`: the [`Hypervisor`] calls as ioctls on the Root VM's driver
//! (`rootvm/driver/diosix_ioctl.h`).
//!
//! The argument structures are built as little-endian bytes with the ABI crate's codecs
//! rather than as `#[repr(C)]` Rust structs: the layout is then spelled out once, in the
//! offsets below, and checked against the C header by a test. Every structure starts
//! with the driver's `diosix_ioc_ret` (a0, a1 of the SBI call, 16 bytes).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use diosix_abi::{error, ext, flags, Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs};
use diosix_abi::{SpawnArgs, VmInfo};

use crate::hv::{CallError, CallResult, Hypervisor};

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

/// Size of `struct diosix_ioc_ret`.
const RET: usize = 16;

/// Sizes of the driver's structures, by the ioctl they belong to.
pub mod size {
    use super::RET;
    use diosix_abi::{Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs, SpawnArgs, VmInfo};
    /// `struct diosix_ioc_scalar`: ret, 5 arguments.
    pub const SCALAR: usize = RET + 5 * 8;
    /// `struct diosix_ioc_spawn` (SPAWN and EXEC): ret, args, image and dtb pointers.
    pub const SPAWN: usize = RET + SpawnArgs::SIZE + 16;
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
        ext::FID_RESERVED_11 | ext::FID_RESERVED_12 => return None,
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

    fn ioctl<const N: usize>(&self, fid: usize, buf: &mut Buf<N>) -> CallResult<()> {
        let req = request_for(fid).ok_or(CallError::Os(libc::ENOTTY))?;
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

impl Device {
    /// SPAWN or EXEC (`struct diosix_ioc_spawn`): `args` with its sizes filled in from
    /// `image` and `dtb`; returns a1.
    fn image_call(
        &self,
        fid: usize,
        args: &SpawnArgs,
        image: &[u8],
        dtb: Option<&[u8]>,
    ) -> CallResult<u64> {
        let mut a = *args;
        a.size = SpawnArgs::SIZE as u32;
        a.image_size = image.len() as u64;
        a.dtb_size = dtb.map_or(0, |d| d.len() as u64);
        // The driver fills the GPAs with those of its own copies.
        a.image_gpa = 0;
        a.dtb_gpa = 0;
        let mut b = Buf::<{ size::SPAWN }>::new();
        b.put(RET, &a.to_le_bytes());
        b.put_u64(RET + SpawnArgs::SIZE, ptr(image.as_ptr()));
        b.put_u64(
            RET + SpawnArgs::SIZE + 8,
            dtb.map_or(0, |d| ptr(d.as_ptr())),
        );
        self.ioctl(fid, &mut b)?;
        b.result()
    }
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

    fn spawn(&mut self, args: &SpawnArgs, image: &[u8], dtb: Option<&[u8]>) -> CallResult<u64> {
        self.image_call(ext::FID_SPAWN, args, image, dtb)
    }

    fn exec(&mut self, args: &SpawnArgs, image: &[u8]) -> CallResult<()> {
        let mut a = *args;
        a.cid = 0;
        self.image_call(ext::FID_EXEC, &a, image, None).map(|_| ())
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
        assert_eq!(size::SPAWN, 120);
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
        // _IOWR(0xD5, 4, 120)
        assert_eq!(request_for(ext::FID_SPAWN), Some(0xC078_D504));
        assert_eq!(request_for(ext::FID_STOP), Some(0xC038_D510));
        // EXEC takes SPAWN's structure: _IOWR(0xD5, 26, 120)
        assert_eq!(request_for(ext::FID_EXEC), Some(0xC078_D51A));
        assert_eq!(request_for(11), None);
        assert_eq!(request_for(ext::FID_COUNT), None);
        for (fid, _) in ext::FUNCTIONS {
            let req = request_for(*fid).unwrap();
            assert_eq!(req & 0xff, *fid as u64);
        }
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
        for (fid, name) in ext::FUNCTIONS {
            prog.push_str(&format!(
                "printf(\"{fid} %lu\\n\", (unsigned long)DIOSIX_IOC_{name});\n"
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
            let fid: usize = fid.parse().unwrap();
            assert_eq!(Some(req.parse().unwrap()), request_for(fid), "FID {fid}");
            n += 1;
        }
        assert_eq!(n, ext::FUNCTIONS.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
