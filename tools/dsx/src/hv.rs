//! The calls `dsx` makes, as a trait: [`crate::dev::Device`] implements it over
//! `/dev/diosix`, and the tests implement it with a fake hypervisor, so everything above
//! this layer runs in `cargo test` on the build host.

use diosix_abi::{ext, DeviceSpec, DeviceState, Event, HvInfo, QueueState, QuotaArgs};
use diosix_abi::{SpawnArgs, VmInfo};

/// Why a call did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The hypervisor answered with this SBI error code (a0).
    Sbi(i64),
    /// The driver (or the kernel, opening the device) refused with this errno before the
    /// hypervisor was called.
    Os(i32),
}

/// Result of one call.
pub type CallResult<T> = Result<T, CallError>;

/// One virtio device for a new child, as SPAWN declares it: the spec (its `size`,
/// `config_gpa` and `config_len` are filled in by whoever passes it on) and its
/// initial configuration bytes (at most `devices::MAX_CONFIG`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDecl {
    /// Device ID, features, queues.
    pub spec: DeviceSpec,
    /// The configuration space's initial bytes.
    pub config: Vec<u8>,
}

/// One method per Diosix SBI extension function `dsx` uses. CIDs are the caller's own
/// (0 = parent, 1 = itself, 2.. = its children).
pub trait Hypervisor {
    /// A function whose arguments are all scalars (a0..a4); returns a1.
    fn scalar(&mut self, fid: usize, args: [u64; 5]) -> CallResult<u64>;
    /// SPAWN: `args` with its GPAs and sizes filled in from `image`, `dtb` and
    /// `devices` (the child's virtio devices, at most `devices::MAX_DEVICES`); returns
    /// the child's CID.
    fn spawn(
        &mut self,
        args: &SpawnArgs,
        image: &[u8],
        dtb: Option<&[u8]>,
        devices: &[DeviceDecl],
    ) -> CallResult<u64>;
    /// EXEC: this VM becomes `image` (held in its own memory) with `args`' RAM, vCPUs
    /// and priority. On success the call does not return (this VM restarts as the
    /// image); `Ok` would mean the hypervisor answered success and came back.
    fn exec(&mut self, args: &SpawnArgs, image: &[u8]) -> CallResult<()>;
    /// GET_INFO (`cid` = `None`) or GET_CHILD_INFO.
    fn vm_info(&mut self, cid: Option<u64>) -> CallResult<VmInfo>;
    /// GET_HV_INFO.
    fn hv_info(&mut self) -> CallResult<HvInfo>;
    /// SET_QUOTA.
    fn set_quota(&mut self, args: &QuotaArgs) -> CallResult<()>;
    /// IPC_SEND of `data` to `cid`.
    fn ipc_send(&mut self, cid: u64, data: &[u8]) -> CallResult<()>;
    /// IPC_RECV into `buf`: `Some((sender, length))`, or `None` if nothing waits.
    fn ipc_recv(
        &mut self,
        filter: u64,
        exact: bool,
        buf: &mut [u8],
    ) -> CallResult<Option<(u64, usize)>>;
    /// POLL_EVENT: the oldest event, if any.
    fn poll_event(&mut self) -> CallResult<Option<Event>>;
    /// CONSOLE_READ from `cid` into `buf` (at most 4096 bytes); returns bytes read.
    fn console_read(&mut self, cid: u64, buf: &mut [u8]) -> CallResult<usize>;
    /// CONSOLE_WRITE of `data` (at most 4096 bytes) to `cid`; returns bytes accepted.
    fn console_write(&mut self, cid: u64, data: &[u8]) -> CallResult<usize>;
    /// LIST_CHILDREN into `out`; returns the number of live children (which may exceed
    /// `out.len()`).
    fn list_children(&mut self, out: &mut [u64]) -> CallResult<u64>;
    /// CHILD_MEM_READ: `buf.len()` (at most 64 KiB) bytes of child `cid`'s RAM at
    /// `gpa` into `buf`.
    fn child_mem_read(&mut self, cid: u64, gpa: u64, buf: &mut [u8]) -> CallResult<()>;
    /// CHILD_MEM_WRITE: `data` (at most 64 KiB) into child `cid`'s RAM at `gpa`.
    fn child_mem_write(&mut self, cid: u64, gpa: u64, data: &[u8]) -> CallResult<()>;
    /// DEVICE_STATE: child `cid`'s virtio device number `device` as its driver set it
    /// up, and its queues; takes (clears) the device's pending bits.
    fn device_state(&mut self, cid: u64, device: u64)
        -> CallResult<(DeviceState, Vec<QueueState>)>;
    /// DEVICE_RAISE: the interrupts `what` (`devices::RAISE_*` bits) of child `cid`'s
    /// device number `device`.
    fn device_raise(&mut self, cid: u64, device: u64, what: u64) -> CallResult<()> {
        self.scalar(ext::FID_DEVICE_RAISE, [cid, device, what, 0, 0])
            .map(|_| ())
    }
    /// Waits up to `timeout` for this VM's event queue to have something (a
    /// message, a child's end, ...), returning early when it may; callers poll again
    /// either way. By default it just sleeps.
    fn wait_for_events(&mut self, timeout: std::time::Duration) {
        std::thread::sleep(timeout);
    }
}
