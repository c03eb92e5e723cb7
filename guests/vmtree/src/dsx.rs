//! Calls of the Diosix SBI extension (EID `0x0A000005`) for the VM-tree test guests.
//!
//! Shared by `vmtree` (the Root VM) and `vmchild` (its child), which includes this file
//! with `#[path]`. Structures go through page-aligned static buffers: the guests run
//! with paging off, so a static's address is its guest-physical address (GPA).
//!
//! Every function returns the raw [`SbiRet`] (or the decoded structure with the raw
//! error) so the callers can check each error code against `docs/sbi-extension.md`.
#![allow(dead_code)]

use core::cell::UnsafeCell;
use diosix_abi::{ext, Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs, SpawnArgs, VmInfo};
use diosix_guest_rt::sbi::{self, SbiRet};

#[allow(unused_imports)]
pub use diosix_abi::{cid, error, event, flags, limits, state};

/// The extension ID.
pub const EID: usize = ext::EID;

/// Page-aligned bytes the hypervisor reads and writes during calls.
///
/// Only one hart of each guest ever runs the test code, and the hypervisor only
/// touches the buffer during an `ecall` (which the compiler treats as reading and
/// writing any memory), so plain volatile copies in and out are enough.
#[repr(C, align(4096))]
pub struct Pages<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the test code runs on a single hart per guest (see the type's documentation);
// there is no concurrent access to share.
unsafe impl<const N: usize> Sync for Pages<N> {}

impl<const N: usize> Pages<N> {
    /// Zeroed buffer.
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }

    /// Its address, which is its GPA (paging is off).
    pub fn addr(&self) -> usize {
        self.0.get() as usize
    }

    /// Copies `data` in at `off` (clipped to the buffer).
    pub fn write(&self, off: usize, data: &[u8]) {
        let base = self.0.get() as *mut u8;
        for (i, &b) in data.iter().enumerate() {
            if off + i >= N {
                break;
            }
            // SAFETY: `off + i < N`, so the pointer is inside the buffer; single hart.
            unsafe { base.add(off + i).write_volatile(b) };
        }
    }

    /// Fills `[off, off + len)` with `b` (clipped to the buffer).
    pub fn fill(&self, off: usize, len: usize, b: u8) {
        let base = self.0.get() as *mut u8;
        for i in off..(off + len).min(N) {
            // SAFETY: `i < N`, inside the buffer; single hart.
            unsafe { base.add(i).write_volatile(b) };
        }
    }

    /// Copies out `out.len()` bytes from `off` (bytes past the end read as 0).
    pub fn read(&self, off: usize, out: &mut [u8]) {
        let base = self.0.get() as *const u8;
        for (i, o) in out.iter_mut().enumerate() {
            *o = if off + i < N {
                // SAFETY: `off + i < N`, inside the buffer; single hart.
                unsafe { base.add(off + i).read_volatile() }
            } else {
                0
            };
        }
    }
}

impl<const N: usize> Default for Pages<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Structures in (offset 0), out, and the deliberately misplaced ones.
pub static STRUCT: Pages<4096> = Pages::new();
/// Message and console data.
pub static DATA: Pages<8192> = Pages::new();

/// Raw call of function `fid`.
pub fn call(fid: usize, args: [usize; 6]) -> SbiRet {
    // SAFETY: every address the test guests pass points into their own statics (which
    // the hypervisor may read or write) or is deliberately invalid so that the call is
    // refused; none of these functions stops or suspends the calling hart, and EXIT of
    // itself never returns, which is what its callers expect.
    unsafe { sbi::sbi_call(EID, fid, args) }
}

/// A call with two arguments.
pub fn call2(fid: usize, a0: usize, a1: usize) -> SbiRet {
    call(fid, [a0, a1, 0, 0, 0, 0])
}

/// A call with a0 = the GPA of `bytes`, copied into [`STRUCT`] at `off`.
pub fn call_struct(fid: usize, bytes: &[u8], off: usize) -> SbiRet {
    STRUCT.write(off, bytes);
    call2(fid, STRUCT.addr() + off, 0)
}

/// EXIT: a0 = target CID, a1 = exit code.
pub fn exit(target: u64, code: u64) -> SbiRet {
    call2(ext::FID_EXIT, target as usize, code as usize)
}

/// YIELD.
pub fn yield_now() -> SbiRet {
    call2(ext::FID_YIELD, 0, 0)
}

/// FORK with `fl`.
pub fn fork(fl: u64) -> SbiRet {
    call2(ext::FID_FORK, fl as usize, 0)
}

/// DROP_TRUST.
pub fn drop_trust() -> SbiRet {
    call2(ext::FID_DROP_TRUST, 0, 0)
}

/// SPAWN with `a`, placed at `STRUCT + off`.
pub fn spawn_at(a: &SpawnArgs, off: usize) -> SbiRet {
    call_struct(ext::FID_SPAWN, &a.to_le_bytes(), off)
}

/// SPAWN with `a`.
pub fn spawn(a: &SpawnArgs) -> SbiRet {
    spawn_at(a, 0)
}

/// SET_QUOTA with `q`.
pub fn set_quota(q: &QuotaArgs) -> SbiRet {
    call_struct(ext::FID_SET_QUOTA, &q.to_le_bytes(), 0)
}

/// A zeroed `QuotaArgs` with the right size for `target`.
pub fn quota_args(target: u64) -> QuotaArgs {
    QuotaArgs {
        size: QuotaArgs::SIZE as u32,
        cid: target,
        ..QuotaArgs::default()
    }
}

/// Output-structure call `fid(a0 = gpa, a1 = size)`, for raw error checks.
pub fn out_call(fid: usize, gpa: usize, size: usize) -> SbiRet {
    call2(fid, gpa, size)
}

/// GET_INFO about the caller, decoded.
pub fn info() -> Result<VmInfo, isize> {
    STRUCT.fill(0, 256, 0xA5);
    let r = call2(ext::FID_GET_INFO, STRUCT.addr(), VmInfo::SIZE);
    decode(r, VmInfo::from_le_bytes)
}

/// GET_CHILD_INFO about `target` (1 or a child), decoded.
pub fn child_info(target: u64) -> Result<VmInfo, isize> {
    STRUCT.fill(0, 256, 0xA5);
    let r = call(
        ext::FID_GET_CHILD_INFO,
        [target as usize, STRUCT.addr(), VmInfo::SIZE, 0, 0, 0],
    );
    decode(r, VmInfo::from_le_bytes)
}

/// GET_HV_INFO, decoded.
pub fn hv_info() -> Result<HvInfo, isize> {
    STRUCT.fill(0, 256, 0xA5);
    let r = call2(ext::FID_GET_HV_INFO, STRUCT.addr(), HvInfo::SIZE);
    decode(r, HvInfo::from_le_bytes)
}

/// POLL_EVENT: `Ok(None)` when no event waits.
pub fn poll_event() -> Result<Option<Event>, isize> {
    STRUCT.fill(0, 64, 0);
    let r = call2(ext::FID_POLL_EVENT, STRUCT.addr(), Event::SIZE);
    if r.error != error::SUCCESS {
        return Err(r.error);
    }
    if r.value == 0 {
        return Ok(None);
    }
    let mut raw = [0u8; Event::SIZE];
    STRUCT.read(0, &mut raw);
    Ok(Event::from_le_bytes(&raw))
}

fn decode<T>(r: SbiRet, f: impl Fn(&[u8]) -> Option<T>) -> Result<T, isize> {
    if r.error != error::SUCCESS {
        return Err(r.error);
    }
    let mut raw = [0u8; 256];
    STRUCT.read(0, &mut raw);
    f(&raw).ok_or(error::FAILED)
}

/// IPC_SEND of `msg` (copied into [`DATA`]) to `to`.
pub fn ipc_send(to: u64, msg: &[u8]) -> SbiRet {
    DATA.write(0, msg);
    ipc_send_args(&IpcSendArgs {
        size: IpcSendArgs::SIZE as u32,
        flags: 0,
        cid: to,
        data_gpa: DATA.addr() as u64,
        len: msg.len() as u64,
    })
}

/// IPC_SEND with explicit arguments.
pub fn ipc_send_args(a: &IpcSendArgs) -> SbiRet {
    call_struct(ext::FID_IPC_SEND, &a.to_le_bytes(), 0)
}

/// IPC_RECV with explicit arguments; on success returns the struct written back.
pub fn ipc_recv_args(a: &IpcRecvArgs) -> (SbiRet, IpcRecvArgs) {
    let r = call_struct(ext::FID_IPC_RECV, &a.to_le_bytes(), 0);
    let mut raw = [0u8; IpcRecvArgs::SIZE];
    STRUCT.read(0, &mut raw);
    (r, IpcRecvArgs::from_le_bytes(&raw).unwrap_or_default())
}

/// IPC_RECV into `DATA` (up to `max_len`): `Ok(Some((sender, len)))` when a message was
/// received; the message is then at `DATA[..len]`.
pub fn ipc_recv(filter: u64, fl: u32, max_len: usize) -> Result<Option<(u64, usize)>, isize> {
    let (r, out) = ipc_recv_args(&IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: fl,
        cid: filter,
        buf_gpa: DATA.addr() as u64,
        max_len: max_len as u64,
        out_len: 0,
    });
    if r.error != error::SUCCESS {
        return Err(r.error);
    }
    if r.value == 0 {
        return Ok(None);
    }
    Ok(Some((out.cid, out.out_len as usize)))
}

/// CONSOLE_READ from `child` into `DATA` (up to `len` bytes).
pub fn console_read(child: u64, len: usize) -> SbiRet {
    call(
        ext::FID_CONSOLE_READ,
        [child as usize, DATA.addr(), len, 0, 0, 0],
    )
}

/// CONSOLE_WRITE of `data` (copied into `DATA`) to `child`.
pub fn console_write(child: u64, data: &[u8]) -> SbiRet {
    DATA.write(0, data);
    call(
        ext::FID_CONSOLE_WRITE,
        [child as usize, DATA.addr(), data.len(), 0, 0, 0],
    )
}

/// A `SpawnArgs` for a new child from the image at `gpa` (`len` bytes), with `pages`
/// of RAM, one vCPU and priority `prio`; quotas left to their defaults.
pub fn spawn_args(gpa: usize, len: usize, pages: u64, prio: u32) -> SpawnArgs {
    SpawnArgs {
        size: SpawnArgs::SIZE as u32,
        flags: 0,
        cid: 0,
        image_gpa: gpa as u64,
        image_size: len as u64,
        dtb_gpa: 0,
        dtb_size: 0,
        ram_pages: pages,
        vcpus: 1,
        priority: prio,
        quota_ram_pages: 0,
        quota_vcpus: 0,
        quota_max_priority: 0,
        quota_max_depth: 0,
        quota_max_descendants: 0,
    }
}

/// Formats into a fixed buffer (no allocator in the guests); text past the end is cut.
pub struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    /// Empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// As text (lossy: invalid UTF-8 gives "?").
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes()).unwrap_or("?")
    }
}

impl<const N: usize> Default for Line<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for Line<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < N {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Formats `args` into a [`Line`].
pub fn fmt_line<const N: usize>(args: core::fmt::Arguments) -> Line<N> {
    let mut l = Line::new();
    let _ = core::fmt::Write::write_fmt(&mut l, args);
    l
}

/// Name of an SBI error code, for messages.
pub fn err_name(e: isize) -> &'static str {
    error::name(e).unwrap_or("?")
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
