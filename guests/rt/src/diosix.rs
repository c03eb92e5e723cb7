//! Client of the Diosix SBI extension (EID `0x0A000005`): the one place the test guests
//! turn its functions into `ecall`s.
//!
//! * [`call`]: the raw call, any register values (for the checks that pass malformed
//!   arguments on purpose);
//! * [`Client`]: one typed method per function, with every number from
//!   [`diosix_abi`]. A guest implements the trait's three required methods to say how
//!   its calls are made and which of its memory the hypervisor reads and writes; the
//!   typed methods are provided;
//! * [`Direct`]: the plain client, one `ecall` per call and two static buffers, for
//!   guests that make their calls from one hart.
//!
//! Structures go through memory at the start of the client's structure buffer, in
//! their C layout, which on this little-endian target is exactly the encoding the ABI
//! defines ([`SpawnArgs::to_le_bytes`] ...); results are read back from there. Methods return the raw [`SbiRet`], or the
//! decoded result with the raw error code, so callers can check each code against
//! `docs/sbi-extension.md`.

use crate::mem::{Pages, Region};
use crate::sbi::{self, SbiRet};
use diosix_abi::{
    cid, ext, DeviceSpec, DeviceState, Event, HvInfo, IpcRecvArgs, IpcSendArgs, QueueState,
    QuotaArgs, SpawnArgs, VmInfo,
};

/// Raw call of function `fid` with a0..a5 = `args`.
///
/// # Safety
///
/// As for [`sbi::sbi_call`]: whatever memory the arguments name, the hypervisor may
/// read or write, and EXIT of the caller does not return.
pub unsafe fn call(fid: usize, args: [usize; 6]) -> SbiRet {
    // SAFETY: forwarded contract.
    unsafe { sbi::sbi_call(ext::EID, fid, args) }
}

/// How a guest makes its Diosix extension calls, and the typed calls on top.
///
/// # Safety
///
/// Implementors promise that [`Client::call`] makes the ecall of function `fid` with
/// `args` as given (it may keep records around it) and is sound for every argument the
/// provided methods pass; and that the regions returned by [`Client::structs`],
/// [`Client::data`] and [`Client::list`] are memory the hypervisor may write during
/// any call this client makes, with the structure buffer overlapping neither of the
/// others.
pub unsafe trait Client {
    /// Makes call `fid` with a0..a5 = `args`, whatever their values.
    fn call(&self, fid: usize, args: [usize; 6]) -> SbiRet;

    /// Where argument and result structures go (at least 256 bytes, 8-byte aligned).
    fn structs(&self) -> Region;

    /// Where messages and console data go.
    fn data(&self) -> Region;

    /// Where LIST_CHILDREN writes its list (by default, the data buffer).
    fn list(&self) -> Region {
        self.data()
    }

    /// A call with two arguments (a2..a5 = 0).
    fn call2(&self, fid: usize, a0: usize, a1: usize) -> SbiRet {
        self.call(fid, [a0, a1, 0, 0, 0, 0])
    }

    /// A call with a0 = the GPA of `bytes`, copied into the structure buffer at `off`
    /// (which may be misaligned on purpose), a1 = 0.
    fn call_struct(&self, fid: usize, bytes: &[u8], off: usize) -> SbiRet {
        let s = self.structs();
        s.write(off, bytes);
        self.call2(fid, s.addr() + off, 0)
    }

    /// EXIT of `target` (a child, or [`cid::SELF`]) with exit code `code`.
    fn exit(&self, target: u64, code: u64) -> SbiRet {
        self.call2(ext::FID_EXIT, target as usize, code as usize)
    }

    /// EXIT of the caller itself; never returns.
    fn exit_self(&self, code: u64) -> ! {
        self.exit(cid::SELF, code);
        loop {
            crate::csr::wfi();
        }
    }

    /// YIELD.
    fn yield_now(&self) -> SbiRet {
        self.call2(ext::FID_YIELD, 0, 0)
    }

    /// FORK with flags `fl` (any bits). Returns twice: in the parent with the child's
    /// CID in `value`, in the clone with error and value 0.
    fn fork(&self, fl: u64) -> SbiRet {
        self.call2(ext::FID_FORK, fl as usize, 0)
    }

    /// DROP_TRUST of the caller.
    fn drop_trust(&self) -> SbiRet {
        self.call2(ext::FID_DROP_TRUST, 0, 0)
    }

    /// A call with a0 = the GPA of `a`, copied to the start of the structure buffer,
    /// a1 = 0.
    fn call_with<T: Abi>(&self, fid: usize, a: &T) -> SbiRet {
        let s = self.structs();
        put(s, a);
        self.call2(fid, s.addr(), 0)
    }

    /// SPAWN with `a`; the new child's CID in `value`.
    fn spawn(&self, a: &SpawnArgs) -> SbiRet {
        self.call_with(ext::FID_SPAWN, a)
    }

    /// EXEC with `a`: the caller becomes the image `a` describes in its own memory
    /// (returns only if refused).
    fn exec(&self, a: &SpawnArgs) -> SbiRet {
        self.call_with(ext::FID_EXEC, a)
    }

    /// GET_INFO about the caller, decoded.
    fn info(&self) -> Result<VmInfo, isize> {
        let s = self.structs();
        s.fill(0, VmInfo::SIZE, 0xA5);
        let r = self.call2(ext::FID_GET_INFO, s.addr(), VmInfo::SIZE);
        r.is_ok().then(|| get(s)).ok_or(r.error)
    }

    /// SET_QUOTA with `q`.
    fn set_quota(&self, q: &QuotaArgs) -> SbiRet {
        self.call_with(ext::FID_SET_QUOTA, q)
    }

    /// IPC_SEND with explicit arguments.
    fn ipc_send_args(&self, a: &IpcSendArgs) -> SbiRet {
        self.call_with(ext::FID_IPC_SEND, a)
    }

    /// IPC_SEND of `msg` (copied into the data buffer) to `to`.
    fn ipc_send(&self, to: u64, msg: &[u8]) -> SbiRet {
        let d = self.data();
        d.write(0, msg);
        self.ipc_send_args(&IpcSendArgs {
            size: IpcSendArgs::SIZE as u32,
            flags: 0,
            cid: to,
            data_gpa: d.addr() as u64,
            len: msg.len() as u64,
        })
    }

    /// IPC_RECV with explicit arguments; also returns the structure as the hypervisor
    /// left it (the sender and length are written back on success).
    fn ipc_recv_args(&self, a: &IpcRecvArgs) -> (SbiRet, IpcRecvArgs) {
        let r = self.call_with(ext::FID_IPC_RECV, a);
        (r, get(self.structs()))
    }

    /// IPC_RECV into the data buffer (at most `max_len` bytes, and no more than the
    /// buffer holds) with sender filter `filter` and flags `fl`:
    /// `Ok(Some((sender, len)))` when a message was received, which is then at the
    /// start of the data buffer; `Ok(None)` when none waits.
    fn ipc_recv(
        &self,
        filter: u64,
        fl: u32,
        max_len: usize,
    ) -> Result<Option<(u64, usize)>, isize> {
        let d = self.data();
        let (r, out) = self.ipc_recv_args(&IpcRecvArgs {
            size: IpcRecvArgs::SIZE as u32,
            flags: fl,
            cid: filter,
            buf_gpa: d.addr() as u64,
            max_len: max_len.min(d.len()) as u64,
            out_len: 0,
        });
        if !r.is_ok() {
            return Err(r.error);
        }
        if r.value == 0 {
            return Ok(None);
        }
        Ok(Some((out.cid, out.out_len as usize)))
    }

    /// IPC_CALL: sends `msg` (copied into the data buffer) to `to` and sleeps until
    /// `to` answers (at most `cap` bytes, and no more than the buffer holds):
    /// `Ok(Some(len))` with the answer at the start of the data buffer, `Ok(None)` if
    /// an interrupt ended the wait first.
    fn ipc_call(&self, to: u64, msg: &[u8], cap: usize) -> Result<Option<usize>, isize> {
        let d = self.data();
        d.write(0, msg);
        let r = self.call(
            ext::FID_IPC_CALL,
            [to as usize, d.addr(), msg.len(), cap.min(d.len()), 0, 0],
        );
        if !r.is_ok() {
            return Err(r.error);
        }
        Ok(r.value.checked_sub(1))
    }

    /// POLL_EVENT: `Ok(None)` when no event waits.
    fn poll_event(&self) -> Result<Option<Event>, isize> {
        let s = self.structs();
        s.fill(0, Event::SIZE, 0);
        let r = self.call2(ext::FID_POLL_EVENT, s.addr(), Event::SIZE);
        if !r.is_ok() {
            return Err(r.error);
        }
        if r.value == 0 {
            return Ok(None);
        }
        Ok(Some(get(s)))
    }

    /// GET_HV_INFO, decoded.
    fn hv_info(&self) -> Result<HvInfo, isize> {
        let s = self.structs();
        s.fill(0, HvInfo::SIZE, 0xA5);
        let r = self.call2(ext::FID_GET_HV_INFO, s.addr(), HvInfo::SIZE);
        r.is_ok().then(|| get(s)).ok_or(r.error)
    }

    /// CHILD_MEM_READ: `len` bytes of `child`'s RAM at `child_gpa` into the caller's
    /// at `gpa`.
    fn child_mem_read(&self, child: u64, child_gpa: usize, gpa: usize, len: usize) -> SbiRet {
        self.call(
            ext::FID_CHILD_MEM_READ,
            [child as usize, child_gpa, gpa, len, 0, 0],
        )
    }

    /// CHILD_MEM_WRITE: `len` bytes of the caller's at `gpa` into `child`'s RAM at
    /// `child_gpa`.
    fn child_mem_write(&self, child: u64, child_gpa: usize, gpa: usize, len: usize) -> SbiRet {
        self.call(
            ext::FID_CHILD_MEM_WRITE,
            [child as usize, child_gpa, gpa, len, 0, 0],
        )
    }

    /// DEVICE_STATE of `child`'s device `device`, answered in the data buffer: the
    /// state and the number of bytes written (its queue states follow it there, 32
    /// bytes each, from offset [`DeviceState::SIZE`]).
    fn device_state(&self, child: u64, device: usize) -> Result<(DeviceState, usize), isize> {
        let d = self.data();
        d.fill(0, 512, 0xA5);
        let r = self.call(
            ext::FID_DEVICE_STATE,
            [child as usize, device, d.addr(), 512, 0, 0],
        );
        r.is_ok().then(|| (get(d), r.value)).ok_or(r.error)
    }

    /// Queue `q` of the last [`Client::device_state`] answer.
    fn queue_state(&self, q: usize) -> QueueState {
        let at = DeviceState::SIZE + q * QueueState::SIZE;
        get(self.data().sub(at, QueueState::SIZE))
    }

    /// DEVICE_RAISE `what` (`RAISE_*` bits) on `child`'s device `device`.
    fn device_raise(&self, child: u64, device: usize, what: u64) -> SbiRet {
        self.call(
            ext::FID_DEVICE_RAISE,
            [child as usize, device, what as usize, 0, 0, 0],
        )
    }

    /// MAP_CHILD_MEM: `size` bytes of the caller's memory at `gpa` appear in `child`
    /// at `child_gpa` with permissions `perms` ([`diosix_abi::flags::MAP_READ`] ...).
    fn map_child_mem(
        &self,
        child: u64,
        child_gpa: usize,
        gpa: usize,
        size: usize,
        perms: u64,
    ) -> SbiRet {
        self.call(
            ext::FID_MAP_CHILD_MEM,
            [child as usize, child_gpa, gpa, size, perms as usize, 0],
        )
    }

    /// UNMAP_CHILD_MEM of the caller's `[gpa, gpa + size)`.
    fn unmap_child_mem(&self, gpa: usize, size: usize) -> SbiRet {
        self.call2(ext::FID_UNMAP_CHILD_MEM, gpa, size)
    }

    /// START of a child created paused, at `entry` with a1 = `dtb`.
    fn start(&self, child: u64, entry: usize, dtb: usize) -> SbiRet {
        self.call(ext::FID_START, [child as usize, entry, dtb, 0, 0, 0])
    }

    /// STOP of `child`.
    fn stop(&self, child: u64) -> SbiRet {
        self.call2(ext::FID_STOP, child as usize, 0)
    }

    /// RESUME of `child`.
    fn resume(&self, child: u64) -> SbiRet {
        self.call2(ext::FID_RESUME, child as usize, 0)
    }

    /// REBOOT of `child`.
    fn reboot(&self, child: u64) -> SbiRet {
        self.call2(ext::FID_REBOOT, child as usize, 0)
    }

    /// CONSOLE_READ from `child` into the data buffer (at most `len` bytes, and no
    /// more than the buffer holds); `value` = bytes read.
    fn console_read(&self, child: u64, len: usize) -> SbiRet {
        let d = self.data();
        self.call(
            ext::FID_CONSOLE_READ,
            [child as usize, d.addr(), len.min(d.len()), 0, 0, 0],
        )
    }

    /// CONSOLE_WRITE of `bytes` (copied into the data buffer, clipped to it) to
    /// `child`; `value` = bytes accepted.
    fn console_write(&self, child: u64, bytes: &[u8]) -> SbiRet {
        let d = self.data();
        d.write(0, bytes);
        self.call(
            ext::FID_CONSOLE_WRITE,
            [child as usize, d.addr(), bytes.len().min(d.len()), 0, 0, 0],
        )
    }

    /// DROP_CHILD_TRUST of `child`.
    fn drop_child_trust(&self, child: u64) -> SbiRet {
        self.call2(ext::FID_DROP_CHILD_TRUST, child as usize, 0)
    }

    /// GET_CHILD_INFO about `target` ([`cid::SELF`] or a child), decoded.
    fn child_info(&self, target: u64) -> Result<VmInfo, isize> {
        let s = self.structs();
        s.fill(0, VmInfo::SIZE, 0xA5);
        let r = self.call(
            ext::FID_GET_CHILD_INFO,
            [target as usize, s.addr(), VmInfo::SIZE, 0, 0, 0],
        );
        r.is_ok().then(|| get(s)).ok_or(r.error)
    }

    /// LIST_CHILDREN into `out` (at most its length, and no more than the list buffer
    /// holds); returns the number of live children, which may be more.
    fn list_children(&self, out: &mut [u64]) -> Result<usize, isize> {
        let l = self.list();
        let cap = out.len().min(l.len() / 8);
        let r = self.call2(ext::FID_LIST_CHILDREN, l.addr(), cap);
        if !r.is_ok() {
            return Err(r.error);
        }
        for (i, o) in out.iter_mut().enumerate().take(cap.min(r.value)) {
            *o = l.u64_at(i * 8);
        }
        Ok(r.value)
    }

    /// MAP_HOST_MMIO (trusted VMs): host `[hpa, hpa + size)` at the caller's `gpa`.
    fn map_host_mmio(&self, hpa: usize, gpa: usize, size: usize) -> SbiRet {
        self.call(ext::FID_MAP_HOST_MMIO, [hpa, gpa, size, 0, 0, 0])
    }

    /// ROUTE_IRQ (trusted VMs) of host interrupt `irq` to the caller.
    fn route_irq(&self, irq: usize) -> SbiRet {
        self.call2(ext::FID_ROUTE_IRQ, irq, 0)
    }

    /// RELEASE_DEVICE (trusted VMs): the device `which` names (`by`: a
    /// `flags::DEVICE_BY_*`) goes back to the caller's parent's pool.
    fn release_device(&self, by: u64, which: usize) -> SbiRet {
        self.call2(ext::FID_RELEASE_DEVICE, by as usize, which)
    }
}

/// An ABI structure the client passes through memory as it is: C layout, every field
/// an integer and naturally aligned, no padding (the ABI crate checks this of every
/// structure), so on a little-endian target its bytes in memory are its encoding
/// (`to_le_bytes`), and any bytes the hypervisor writes are a valid value.
///
/// # Safety
///
/// Only for such structures.
pub unsafe trait Abi: Copy {}

// SAFETY: ABI structures, as the trait requires.
unsafe impl Abi for SpawnArgs {}
// SAFETY: as above.
unsafe impl Abi for QuotaArgs {}
// SAFETY: as above.
unsafe impl Abi for VmInfo {}
// SAFETY: as above.
unsafe impl Abi for IpcSendArgs {}
// SAFETY: as above.
unsafe impl Abi for IpcRecvArgs {}
// SAFETY: as above.
unsafe impl Abi for Event {}
// SAFETY: as above.
unsafe impl Abi for HvInfo {}
// SAFETY: as above.
unsafe impl Abi for DeviceState {}
// SAFETY: as above.
unsafe impl Abi for QueueState {}
// SAFETY: as above.
unsafe impl Abi for DeviceSpec {}

const _: () = assert!(
    cfg!(target_endian = "little"),
    "structures are passed in their in-memory layout, which must be the ABI's little-endian encoding"
);

/// Copies `v` to the start of `s` (which must hold it, aligned).
fn put<T: Abi>(s: Region, v: &T) {
    assert!(s.len() >= size_of::<T>() && s.addr().is_multiple_of(align_of::<T>()));
    // SAFETY: inside the region (checked) and aligned; the region is memory set aside
    // for the hypervisor to read and write (the contract of `Region::new`).
    unsafe { (s.addr() as *mut T).write_volatile(*v) }
}

/// The structure at the start of `s` (which must hold it, aligned).
fn get<T: Abi>(s: Region) -> T {
    assert!(s.len() >= size_of::<T>() && s.addr().is_multiple_of(align_of::<T>()));
    // SAFETY: as in `put`; any bytes are a valid `T` (the contract of `Abi`).
    unsafe { (s.addr() as *const T).read_volatile() }
}

/// `SpawnArgs` for a new child from the image at `gpa` (`len` bytes) with `pages` of
/// RAM, `vcpus` vCPUs and priority `prio`; no flags, quotas left to their defaults.
pub fn spawn_args(gpa: usize, len: usize, pages: u64, vcpus: u32, prio: u32) -> SpawnArgs {
    SpawnArgs {
        size: SpawnArgs::SIZE as u32,
        image_gpa: gpa as u64,
        image_size: len as u64,
        ram_pages: pages,
        vcpus,
        priority: prio,
        ..SpawnArgs::default()
    }
}

/// A `DeviceSpec` for SPAWN's device list: virtio device `device_id` with one queue of
/// at most `queue_max` entries, no features beyond the transport's, no configuration.
pub fn device_spec(device_id: u32, queue_max: u32) -> DeviceSpec {
    DeviceSpec {
        size: DeviceSpec::SIZE as u32,
        device_id,
        queue_count: 1,
        queue_max,
        ..DeviceSpec::default()
    }
}

/// `QuotaArgs` for `target` that change nothing yet (every field 0, no flags).
pub fn quota_args(target: u64) -> QuotaArgs {
    QuotaArgs {
        size: QuotaArgs::SIZE as u32,
        cid: target,
        ..QuotaArgs::default()
    }
}

/// Bytes of [`Direct`]'s structure buffer.
pub const STRUCT_BYTES: usize = 4096;
/// Bytes of [`Direct`]'s data buffer.
pub const DATA_BYTES: usize = 8192;

static STRUCTS: Pages<STRUCT_BYTES> = Pages::new();
static DATA: Pages<DATA_BYTES> = Pages::new();

/// The plain client: each call is one `ecall`, through two page-aligned static
/// buffers ([`STRUCT_BYTES`] for structures, [`DATA_BYTES`] for data).
#[derive(Clone, Copy, Debug)]
pub struct Direct(());

impl Direct {
    /// The client.
    ///
    /// # Safety
    ///
    /// The guest makes its [`Direct`] calls, and uses the regions of
    /// [`Client::structs`] and [`Client::data`], from one hart at a time; and every
    /// address it passes to [`Client::call`] or [`Client::call2`] is memory of its own
    /// that the hypervisor may write (such as these buffers), or one the hypervisor
    /// must refuse.
    pub const unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: `call` is the plain ecall; the buffers are statics used only through this
// client, from one hart at a time (the contract of `Direct::new`), and are disjoint.
unsafe impl Client for Direct {
    fn call(&self, fid: usize, args: [usize; 6]) -> SbiRet {
        // SAFETY: addresses are the client's buffers or ones the hypervisor refuses
        // (the contract of `Direct::new`).
        unsafe { call(fid, args) }
    }

    fn structs(&self) -> Region {
        // SAFETY: one hart at a time (the contract of `Direct::new`).
        unsafe { STRUCTS.region() }
    }

    fn data(&self) -> Region {
        // SAFETY: as for `structs`.
        unsafe { DATA.region() }
    }
}
