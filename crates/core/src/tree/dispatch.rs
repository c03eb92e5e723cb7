//! The Diosix extension's SBI calls, decoded and carried out against a [`VmTree`] and an
//! [`ExtensionHost`] that supplies everything needing hardware.
//!
//! The hypervisor's SBI dispatcher calls [`handle_diosix_call`] for EID `0x0A000005`.
//! Arguments are guest-controlled, so nothing here panics on them: every conversion and
//! sum is checked, and structures are decoded from bytes with their ABI codecs.
//!
//! # Order of checks
//! Every function checks in this order and stops at the first failure, so the error a
//! guest sees is determined by its own arguments and its own position in the tree only:
//! 1. the CID argument (if any) resolves among the caller's own names: unknown →
//!    `INVALID_PARAM`, a kind the function does not accept (parent, or self on a
//!    child-only path) → `DENIED`;
//! 2. trust, for trusted-only functions → `DENIED`;
//! 3. a structure's GPA: 8-byte aligned and inside the caller's RAM → `INVALID_ADDRESS`;
//!    its `size` (field or argument) at least this version's → `INVALID_PARAM`; unknown
//!    flag bits → `INVALID_PARAM` (for structures that carry the CID, step 1 follows
//!    this step, as the CID is inside);
//! 4. scalar values (lengths, counts, priorities) → `INVALID_PARAM`;
//! 5. data buffers inside the caller's RAM (checked, overflow-free) → `INVALID_ADDRESS`;
//! 6. state, quota and queue room (see each function in `docs/sbi-extension.md`);
//! 7. the host's work; if it fails after the tree admitted the change, the change is
//!    undone (a new child is discarded, a rebooted one is terminated) → `FAILED`.

use alloc::vec;
use alloc::vec::Vec;

use diosix_abi::{
    cid as abicid, devices as abidev, flags, limits, DeviceSpec, DeviceState, Event, HvInfo,
    IpcRecvArgs, IpcSendArgs, QueueState, QuotaArgs, SpawnArgs, VmInfo,
};

use super::request::{fork_flags_valid, Request};
use super::{
    ChildRequest, HostFacts, IpcWaiter, KilledVm, Quota, QuotaChange, SbiError, Termination, VmId,
    VmState, VmTree, WaitingReceive,
};
use crate::addr::{Gpa, Hpa, PAGE_SIZE};
use crate::childdev::DeviceDef;
use crate::devices::DeviceRef;
use crate::gstage::table_pages_for;
use crate::sbi::SbiRet;

/// Where a VM's RAM starts and where it was built to boot, all GPAs of that VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmLayout {
    /// Its first byte of RAM.
    pub ram: Gpa,
    /// Its image's entry point; `None` for a FORK clone (it resumes where its parent
    /// was).
    pub entry: Option<Gpa>,
    /// Its device tree; `None` for a FORK clone.
    pub dtb: Option<Gpa>,
}

/// What the extension needs from the hypervisor proper. Implemented by the hypervisor
/// over real vCPUs and G-stage tables, and by a fake in the tests.
pub trait ExtensionHost {
    /// `Ok` when `[gpa, gpa + len)` lies wholly inside `vm`'s guest RAM (len 0: `gpa`
    /// itself must be inside or at its end); `InvalidAddress` otherwise.
    fn check_range(&self, vm: VmId, gpa: Gpa, len: u64) -> Result<(), SbiError>;
    /// Copies `buf.len()` bytes from `vm`'s memory at `gpa`; `InvalidAddress` if any of
    /// it is outside its RAM.
    fn read_guest(&mut self, vm: VmId, gpa: Gpa, buf: &mut [u8]) -> Result<(), SbiError>;
    /// Copies `data` into `vm`'s memory at `gpa`; `InvalidAddress` if any of it is
    /// outside its RAM (or not writable by the guest).
    fn write_guest(&mut self, vm: VmId, gpa: Gpa, data: &[u8]) -> Result<(), SbiError>;
    /// Copies `len` bytes (at most `limits::CHILD_MEM_MAX`, both ranges checked by the
    /// caller) from `from`'s memory at `from_gpa` into `to`'s at `to_gpa`, writing as
    /// `to`'s own store would. By default through a bounce buffer; the hypervisor
    /// copies frame to frame.
    fn copy_guest(
        &mut self,
        from: VmId,
        from_gpa: Gpa,
        to: VmId,
        to_gpa: Gpa,
        len: u64,
    ) -> Result<(), SbiError> {
        let mut buf = vec![0u8; to_usize(len)?];
        self.read_guest(from, from_gpa, &mut buf)?;
        self.write_guest(to, to_gpa, &buf)
    }
    /// The index of the vCPU making the call, in its VM.
    fn caller_vcpu(&self) -> usize {
        0
    }
    /// IPC_RECV with `IPC_RECV_WAIT` found nothing: the calling vCPU sleeps once the
    /// call returns (answering a1 = 0 unless a delivery ends the wait), and from now
    /// on [`claim_ipc_waiter`](Self::claim_ipc_waiter) with `ticket` may take it. It
    /// wakes, answering a1 = 0, when an interrupt enabled in its `sie` is pending and
    /// nobody has claimed it.
    fn wait_for_message(&mut self, _ticket: u64) {}
    /// Takes vCPU `vcpu` of `vm` out of its wait `ticket` for a delivery: true only if
    /// it still sleeps in it and nobody took it first; it then sleeps on until
    /// [`end_ipc_wait`](Self::end_ipc_wait).
    fn claim_ipc_waiter(&mut self, _vm: VmId, _vcpu: usize, _ticket: u64) -> bool {
        false
    }
    /// Ends the wait of vCPU `vcpu` of `vm`, claimed by this call: it resumes with
    /// `ret` as its IPC_RECV's answer.
    fn end_ipc_wait(&mut self, _vm: VmId, _vcpu: usize, _ret: SbiRet) {}
    /// Host pages the hypervisor keeps for a child SPAWN creates besides its RAM and
    /// page tables (the image it rebuilds the child from on REBOOT). Charged with the
    /// page tables, so quota headroom never promises memory the host has not got.
    fn kept_pages(&self, _args: &SpawnArgs) -> u64 {
        0
    }
    /// Static facts for GET_HV_INFO.
    fn facts(&self) -> HostFacts;
    /// Where `vm`'s RAM starts and where it was built to boot, for GET_INFO and
    /// GET_CHILD_INFO.
    fn layout(&self, vm: VmId) -> VmLayout;
    /// YIELD: end the calling vCPU's time slice.
    fn yield_vcpu(&mut self, vm: VmId);
    /// FORK: build `child` as a copy-on-write clone of `parent` (memory and the calling
    /// vCPU's state; the child's a0 and a1 read 0), keeping a copy-on-write snapshot of
    /// that state for REBOOT if `snapshot`. The tree has already charged it.
    fn fork_vm(
        &mut self,
        parent: VmId,
        child: VmId,
        child_cid: u64,
        snapshot: bool,
    ) -> Result<(), SbiError>;
    /// Whether the host can FORK at all. A host without a translation stage (the PMP
    /// fallback: guests see host physical addresses) cannot: a clone would have to
    /// run at its parent's addresses. FORK then answers `NOT_SUPPORTED` before
    /// anything is charged.
    fn can_fork(&self) -> bool {
        true
    }
    /// Whether REBOOT can put `vm` back (it has an image or a snapshot to return to).
    fn can_reboot(&self, _vm: VmId) -> bool {
        true
    }
    /// SPAWN: build `child` from the image described by `args` (GPAs in `parent`), with
    /// the virtio devices `devices` (checked, served by `parent`), and start it unless
    /// `SPAWN_PAUSED`. The tree has already charged it.
    fn spawn_vm(
        &mut self,
        parent: VmId,
        child: VmId,
        args: &SpawnArgs,
        devices: &[DeviceDef],
    ) -> Result<(), SbiError>;
    /// The bytes DEVICE_STATE writes for `vm`'s device `device`; `InvalidParam` if it
    /// has no such device.
    fn device_state_size(&self, _vm: VmId, _device: u64) -> Result<usize, SbiError> {
        Err(SbiError::InvalidParam)
    }
    /// DEVICE_STATE: `vm`'s device `device` and its queues, its pending bits taken;
    /// `InvalidParam` if it has no such device.
    fn take_device_state(
        &mut self,
        _vm: VmId,
        _device: u64,
    ) -> Result<(DeviceState, Vec<QueueState>), SbiError> {
        Err(SbiError::InvalidParam)
    }
    /// DEVICE_RAISE on `vm`'s device `device` (`what` already checked);
    /// `InvalidParam` if it has no such device.
    fn raise_device(&mut self, _vm: VmId, _device: u64, _what: u64) -> Result<(), SbiError> {
        Err(SbiError::InvalidParam)
    }
    /// START: start `vm`'s boot vCPU at `entry` with `dtb` in a1 (both GPAs of `vm`);
    /// `InvalidAddress` if they are outside its RAM.
    fn start_vm(&mut self, vm: VmId, entry: Gpa, dtb: Gpa) -> Result<(), SbiError>;
    /// STOP: pause every vCPU of `vm`.
    fn stop_vm(&mut self, vm: VmId);
    /// RESUME: let `vm`'s vCPUs run again.
    fn resume_vm(&mut self, vm: VmId);
    /// REBOOT: restore `vm`'s memory and vCPUs to the state it was created or forked in.
    fn reboot_vm(&mut self, vm: VmId) -> Result<(), SbiError>;
    /// EXEC: `vm` becomes the image `args` describe in its own memory and starts
    /// again; REBOOT returns it there. `InvalidAddress` (a page-list entry outside its
    /// RAM) or `Denied` (a host that must copy the image has not the pages for the
    /// copy) before anything changed; `Failed` once its old self is gone (it then ends
    /// with a fatal fault). `trusted`: whether `vm` holds hardware trust (it keeps it).
    fn exec_vm(&mut self, vm: VmId, args: &SpawnArgs, trusted: bool) -> Result<(), SbiError>;
    /// A VM died: stop its vCPUs and free its pages, page tables and vCPUs.
    fn release_vm(&mut self, killed: &KilledVm);
    /// `vm` lost hardware trust: unmap its host MMIO and stop routing IRQs to it, and
    /// give its devices to `parent`'s pool (`None`: the host's).
    fn revoke_hw_access(&mut self, vm: VmId, parent: Option<VmId>);
    /// MAP_CHILD_MEM: make `child`'s `size` bytes at `child_gpa` a copy-on-write copy of
    /// `parent`'s at `parent_gpa`, with `perms` (`MAP_*`) for the child. The child
    /// (never started) range must lie inside its RAM (`InvalidAddress`), whose pages
    /// and tables were charged when it was created.
    fn map_child_mem(
        &mut self,
        parent: VmId,
        child: VmId,
        child_gpa: Gpa,
        parent_gpa: Gpa,
        size: u64,
        perms: u64,
    ) -> Result<(), SbiError>;
    /// UNMAP_CHILD_MEM: `parent`'s range stops sharing frames with the children it was
    /// copied into: it gets its own copy now of each page still shared.
    fn unmap_child_mem(&mut self, parent: VmId, parent_gpa: Gpa, size: u64)
        -> Result<(), SbiError>;
    /// MAP_HOST_MMIO for a trusted VM whose parent is `parent`; `InvalidAddress`
    /// unless the HPA range is a device region the host lets guests own.
    fn map_host_mmio(
        &mut self,
        vm: VmId,
        parent: Option<VmId>,
        hpa: Hpa,
        gpa: Gpa,
        size: u64,
    ) -> Result<(), SbiError>;
    /// ROUTE_IRQ for a trusted VM whose parent is `parent`; `InvalidParam` for an
    /// interrupt that does not exist.
    fn route_irq(&mut self, vm: VmId, parent: Option<VmId>, irq: u64) -> Result<(), SbiError>;
    /// RELEASE_DEVICE for a trusted VM whose parent is `parent`: the device `named`
    /// goes, unmapped and unrouted before this returns, to `parent`'s pool (`None`:
    /// the host's). Errors as [`crate::devices::DeviceTable::release_device`].
    fn release_device(
        &mut self,
        vm: VmId,
        parent: Option<VmId>,
        named: DeviceRef,
    ) -> Result<(), SbiError>;
    /// The Root VM died: restart the machine.
    fn restart_host(&mut self);
}

/// Handles one call of the Diosix extension by `caller` (a live VM). `args` are a0..a5.
///
/// After EXIT of itself (or a REBOOT failure that killed it) the caller no longer
/// exists ([`VmTree::is_alive`] is false): the hypervisor must not resume it, and the
/// returned value is meaningless.
pub fn handle_diosix_call(
    tree: &mut VmTree,
    caller: VmId,
    fid: usize,
    args: [usize; 6],
    host: &mut dyn ExtensionHost,
) -> SbiRet {
    match Request::decode(fid, args) {
        Ok(req) => handle_request(tree, caller, &req, host),
        Err(e) => SbiRet::error(e),
    }
}

/// Carries out a decoded call by `caller` (a live VM), as [`handle_diosix_call`].
pub fn handle_request(
    tree: &mut VmTree,
    caller: VmId,
    req: &Request,
    host: &mut dyn ExtensionHost,
) -> SbiRet {
    if !tree.is_alive(caller) {
        return SbiRet::error(SbiError::Failed);
    }
    reply(call(tree, caller, req, host))
}

/// Handles a call for which [`Request::needs_tree`] is false, by `caller` (a live VM).
pub fn handle_treeless_call(caller: VmId, req: &Request, host: &mut dyn ExtensionHost) -> SbiRet {
    reply(match *req {
        Request::UnmapChildMem { parent_gpa, size } => {
            unmap_child_mem(caller, parent_gpa, size, host)
        }
        Request::Yield => {
            host.yield_vcpu(caller);
            Ok(0)
        }
        _ => Err(SbiError::Failed),
    })
}

/// The a0/a1 pair for a function's result (a value too wide for a register saturates;
/// no function returns one).
fn reply(r: Result<u64, SbiError>) -> SbiRet {
    SbiRet::from(r.map(|v| usize::try_from(v).unwrap_or(usize::MAX)))
}

fn call(
    tree: &mut VmTree,
    caller: VmId,
    req: &Request,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    match *req {
        Request::Exit { cid, code } => exit(tree, caller, cid, code, host),
        Request::Yield => {
            host.yield_vcpu(caller);
            Ok(0)
        }
        Request::Fork { flags } => fork(tree, caller, flags, host),
        Request::DropTrust => drop_trust(tree, caller, abicid::SELF, host),
        Request::Spawn { args } => spawn(tree, caller, args, host),
        Request::GetInfo { out, size } => info(tree, caller, abicid::SELF, out, size, host),
        Request::SetQuota { args } => set_quota(tree, caller, args, host),
        Request::IpcSend { args } => ipc_send(tree, caller, args, host),
        Request::IpcRecv { args } => ipc_recv(tree, caller, args, host),
        Request::IpcCall { cid, buf, len, cap } => {
            ipc_call(tree, caller, (cid, buf, len, cap), host)
        }
        Request::PollEvent { out, size } => poll_event(tree, caller, out, size, host),
        Request::GetHvInfo { out, size } => hv_info(tree, caller, out, size, host),
        Request::MapChildMem {
            cid,
            child_gpa,
            parent_gpa,
            size,
            perms,
        } => map_child_mem(tree, caller, cid, child_gpa, parent_gpa, size, perms, host),
        Request::UnmapChildMem { parent_gpa, size } => {
            unmap_child_mem(caller, parent_gpa, size, host)
        }
        Request::Start { cid, entry, dtb } => start(tree, caller, cid, entry, dtb, host),
        Request::Stop { cid } => {
            let child = tree.stop_child(caller, cid)?;
            host.stop_vm(child);
            Ok(0)
        }
        Request::Resume { cid } => {
            let child = tree.resume_child(caller, cid)?;
            host.resume_vm(child);
            Ok(0)
        }
        Request::Reboot { cid } => reboot(tree, caller, cid, host),
        Request::ConsoleRead { cid, buf, len } => console_read(tree, caller, cid, buf, len, host),
        Request::ChildMem {
            cid,
            child_gpa,
            own_gpa,
            len,
            to_child,
        } => child_mem(tree, caller, cid, child_gpa, own_gpa, len, to_child, host),
        Request::ConsoleWrite { cid, buf, len } => console_write(tree, caller, cid, buf, len, host),
        Request::DropChildTrust { cid } => {
            tree.resolve_child(caller, cid)?;
            drop_trust(tree, caller, cid, host)
        }
        Request::GetChildInfo { cid, out, size } => info(tree, caller, cid, out, size, host),
        Request::ListChildren { out, capacity } => list_children(tree, caller, out, capacity, host),
        Request::MapHostMmio { hpa, gpa, size } => {
            map_host_mmio(tree, caller, hpa, gpa, size, host)
        }
        Request::Exec { args } => exec(tree, caller, args, host),
        Request::RouteIrq { irq } => {
            require_trust(tree, caller)?;
            let parent = tree.get(caller).and_then(|n| n.parent());
            host.route_irq(caller, parent, irq)?;
            Ok(0)
        }
        Request::ReleaseDevice { by, which } => release_device(tree, caller, by, which, host),
        Request::DeviceState {
            cid,
            device,
            out,
            size,
        } => device_state(tree, caller, cid, device, out, size, host),
        Request::DeviceRaise { cid, device, what } => {
            let child = tree.resolve_child(caller, cid)?;
            if what == 0 || what & !abidev::RAISE_ALL != 0 {
                return Err(SbiError::InvalidParam);
            }
            host.raise_device(child, device, what)?;
            Ok(0)
        }
    }
}

/// A VM's own SRST reboot (not the Root VM's: that restarts the host). The VM goes
/// back to the state it was created or forked in, as REBOOT by its parent would put it
/// (the parent gets `CHILD_REBOOTED`), if the host can; a VM forked without a snapshot
/// ends as after an SRST shutdown (exit code `SHUTDOWN`), and one whose restore fails
/// ends with a fatal fault.
pub fn reboot_self(tree: &mut VmTree, vm: VmId, host: &mut dyn ExtensionHost) {
    if host.can_reboot(vm) {
        if let Ok(t) = tree.reboot(vm) {
            apply_termination(&t, host);
            if host.reboot_vm(vm).is_ok() {
                return;
            }
            if let Ok(t) = tree.fatal_fault(vm) {
                apply_termination(&t, host);
            }
            return;
        }
    }
    if let Ok(t) = tree.kill_subtree(vm, diosix_abi::exit_code::SHUTDOWN) {
        apply_termination(&t, host);
    }
}

// ----- helpers -----

/// Releases everything a termination freed, and restarts the host if the Root VM died.
pub fn apply_termination(t: &Termination, host: &mut dyn ExtensionHost) {
    for k in &t.killed {
        host.release_vm(k);
    }
    // A receive waiting for a dead child's message answers what a new one would.
    for (vm, w) in &t.ended_waits {
        if host.claim_ipc_waiter(*vm, w.vcpu, w.ticket) {
            host.end_ipc_wait(*vm, w.vcpu, SbiRet::error(SbiError::InvalidParam));
        }
    }
    if t.restart_host {
        host.restart_host();
    }
}

/// The end of a FORK or SPAWN the tree admitted as `child` (CID `cid`): the host's
/// `built` result, or, if the host could not build it, the admission undone (the child
/// discarded, nothing left charged) and the host's error.
fn admitted(
    tree: &mut VmTree,
    child: VmId,
    cid: u64,
    built: Result<(), SbiError>,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    if let Err(e) = built {
        let t = tree.discard_child(child);
        apply_termination(&t, host);
        return Err(e);
    }
    Ok(cid)
}

fn require_trust(tree: &VmTree, caller: VmId) -> Result<(), SbiError> {
    match tree.get(caller) {
        Some(n) if n.trusted() => Ok(()),
        Some(_) => Err(SbiError::Denied),
        None => Err(SbiError::Failed),
    }
}

/// Validates a data buffer: no overflow, wholly inside the caller's RAM.
fn check_buffer(host: &dyn ExtensionHost, vm: VmId, gpa: Gpa, len: u64) -> Result<(), SbiError> {
    gpa.checked_add(len).ok_or(SbiError::InvalidAddress)?;
    host.check_range(vm, gpa, len)
}

/// Reads `n` bytes of a structure at `gpa`: 8-byte aligned, inside the caller's RAM.
fn read_struct_bytes<const N: usize>(
    host: &mut dyn ExtensionHost,
    vm: VmId,
    gpa: Gpa,
) -> Result<[u8; N], SbiError> {
    if !gpa.is_aligned(8) {
        return Err(SbiError::InvalidAddress);
    }
    check_buffer(host, vm, gpa, N as u64)?;
    // On the stack: these structures are small and fixed, and read on every call.
    let mut buf = [0u8; N];
    host.read_guest(vm, gpa, &mut buf)?;
    Ok(buf)
}

/// Checks an output buffer for a structure of `need` bytes: the caller's `size` is at
/// least `need` (`InvalidParam`), the GPA aligned and inside its RAM (`InvalidAddress`).
fn check_out_struct(
    host: &dyn ExtensionHost,
    vm: VmId,
    gpa: Gpa,
    size: u64,
    need: usize,
) -> Result<(), SbiError> {
    if size < need as u64 {
        return Err(SbiError::InvalidParam);
    }
    if !gpa.is_aligned(8) {
        return Err(SbiError::InvalidAddress);
    }
    check_buffer(host, vm, gpa, need as u64)
}

fn to_usize(v: u64) -> Result<usize, SbiError> {
    usize::try_from(v).map_err(|_| SbiError::InvalidParam)
}

// ----- functions -----

fn exit(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    code: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let target = tree.resolve_self_or_child(caller, cid)?;
    let t = tree.kill_subtree(target, code)?;
    apply_termination(&t, host);
    Ok(0)
}

fn fork(
    tree: &mut VmTree,
    caller: VmId,
    fl: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    if !fork_flags_valid(fl) {
        return Err(SbiError::InvalidParam);
    }
    if !host.can_fork() {
        return Err(SbiError::NotSupported);
    }
    let snapshot = fl & flags::FORK_NO_SNAPSHOT == 0;
    let ram_pages = tree.node(caller)?.own.ram_pages;
    // The clone's own tables, plus (unless refused) the snapshot's worst case: every
    // page diverged from both VMs, so the snapshot alone holds a RAM's worth.
    let tables = table_pages_for(ram_pages);
    let table_pages = if snapshot {
        tables
            .checked_add(ram_pages)
            .and_then(|t| t.checked_add(tables))
            .ok_or(SbiError::Failed)?
    } else {
        tables
    };
    let req = tree.fork_request(caller, fl & flags::FORK_UNTRUSTED != 0, table_pages)?;
    let (child, cid) = tree.create_child(caller, req)?;
    let built = host.fork_vm(caller, child, cid, snapshot);
    admitted(tree, child, cid, built, host)
}

fn drop_trust(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    for vm in tree.drop_trust(caller, cid)? {
        let parent = tree.get(vm).and_then(|n| n.parent());
        host.revoke_hw_access(vm, parent);
    }
    Ok(0)
}

/// The checks SPAWN and EXEC share on a `SpawnArgs` (after its flags and `cid`):
/// sizes, counts, and that every buffer it names lies in the caller's RAM.
fn check_image_args(
    host: &mut dyn ExtensionHost,
    caller: VmId,
    s: &SpawnArgs,
) -> Result<(), SbiError> {
    let ram_bytes = s
        .ram_pages
        .checked_mul(PAGE_SIZE)
        .ok_or(SbiError::InvalidParam)?;
    if s.ram_pages == 0
        || s.vcpus == 0
        || s.priority == 0
        || s.image_size == 0
        || s.image_size > ram_bytes
        || (s.dtb_gpa == 0) != (s.dtb_size == 0)
        || s.dtb_size > limits::SPAWN_MAX_DTB as u64
    {
        return Err(SbiError::InvalidParam);
    }
    let image = Gpa::new(s.image_gpa);
    if s.flags & flags::SPAWN_PAGE_LIST != 0 {
        // The list itself: 8-byte aligned, one entry per image page, inside RAM. The
        // pages it names are checked by the host as it copies them.
        let list_len = s
            .image_size
            .div_ceil(PAGE_SIZE)
            .checked_mul(8)
            .ok_or(SbiError::InvalidParam)?;
        if !image.is_aligned(8) {
            return Err(SbiError::InvalidAddress);
        }
        check_buffer(host, caller, image, list_len)?;
    } else {
        check_buffer(host, caller, image, s.image_size)?;
    }
    if s.dtb_size != 0 {
        check_buffer(host, caller, Gpa::new(s.dtb_gpa), s.dtb_size)?;
    }
    Ok(())
}

fn spawn(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let s = read_spawn_args(host, caller, gpa)?;
    if s.flags & !flags::SPAWN_ALL != 0 {
        return Err(SbiError::InvalidParam);
    }
    if s.cid != 0 {
        tree.resolve_child(caller, s.cid)?;
    }
    check_image_args(host, caller, &s)?;
    let devices = read_devices(host, caller, &s)?;
    let req = ChildRequest {
        ram_pages: s.ram_pages,
        table_pages: table_pages_for(s.ram_pages)
            .checked_add(host.kept_pages(&s))
            .ok_or(SbiError::InvalidParam)?,
        vcpus: s.vcpus,
        priority: s.priority,
        trusted: s.flags & flags::SPAWN_TRUSTED != 0,
        quota: Quota {
            ram_pages: s.quota_ram_pages,
            vcpus: s.quota_vcpus,
            max_priority: s.quota_max_priority,
            max_depth: s.quota_max_depth,
            max_descendants: s.quota_max_descendants,
        },
        initial_state: if s.flags & flags::SPAWN_PAUSED != 0 {
            VmState::Created
        } else {
            VmState::Running
        },
        name: alloc::string::String::from("spawned"),
    };
    let (child, cid) = if s.cid == 0 {
        tree.create_child(caller, req)?
    } else {
        let (child, old) = tree.replace_child(caller, s.cid, req)?;
        apply_termination(&old, host);
        (child, s.cid)
    };
    let built = host.spawn_vm(caller, child, &s, &devices);
    admitted(tree, child, cid, built, host)
}

/// SPAWN's or EXEC's arguments: the structure of at least [`SpawnArgs::MIN_SIZE`]
/// bytes (aligned, in the caller's RAM, `InvalidAddress`; a smaller `size`,
/// `InvalidParam`), and its device fields only if the caller's `size` covers them
/// (they read 0 otherwise).
fn read_spawn_args(
    host: &mut dyn ExtensionHost,
    caller: VmId,
    gpa: Gpa,
) -> Result<SpawnArgs, SbiError> {
    let base = read_struct_bytes::<{ SpawnArgs::MIN_SIZE }>(host, caller, gpa)?;
    let mut raw = [0u8; SpawnArgs::SIZE];
    raw[..SpawnArgs::MIN_SIZE].copy_from_slice(&base);
    let size = raw
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes) as usize;
    if size < SpawnArgs::MIN_SIZE {
        return Err(SbiError::InvalidParam);
    }
    if size >= SpawnArgs::SIZE {
        raw = read_struct_bytes::<{ SpawnArgs::SIZE }>(host, caller, gpa)?;
    }
    SpawnArgs::from_le_bytes(&raw).ok_or(SbiError::InvalidParam)
}

/// SPAWN's device list: `reserved` 0 and at most `MAX_DEVICES` (`InvalidParam`); no
/// devices for a trusted child (`InvalidParam`: its host devices would sit where
/// QEMU `virt` puts virtio windows); the list aligned and in the caller's RAM
/// (`InvalidAddress`); each entry checked ([`DeviceDef::check`], `InvalidParam`),
/// then its configuration bytes read from the caller's RAM (`InvalidAddress`).
/// Bounded: at most 8 entries of at most 256 configuration bytes.
fn read_devices(
    host: &mut dyn ExtensionHost,
    caller: VmId,
    s: &SpawnArgs,
) -> Result<Vec<DeviceDef>, SbiError> {
    let count = s.device_count as usize;
    if s.reserved != 0 || count > abidev::MAX_DEVICES {
        return Err(SbiError::InvalidParam);
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    if s.flags & flags::SPAWN_TRUSTED != 0 {
        return Err(SbiError::InvalidParam);
    }
    let list = Gpa::new(s.devices_gpa);
    if !list.is_aligned(8) {
        return Err(SbiError::InvalidAddress);
    }
    check_buffer(host, caller, list, (count * DeviceSpec::SIZE) as u64)?;
    let mut defs = Vec::with_capacity(count);
    for i in 0..count {
        let at = Gpa::new(s.devices_gpa + (i * DeviceSpec::SIZE) as u64);
        let raw = read_struct_bytes::<{ DeviceSpec::SIZE }>(host, caller, at)?;
        let spec = DeviceSpec::from_le_bytes(&raw).ok_or(SbiError::InvalidParam)?;
        let (mut def, config_len) = DeviceDef::check(&spec)?;
        if config_len > 0 {
            let config_gpa = Gpa::new(spec.config_gpa);
            check_buffer(host, caller, config_gpa, config_len as u64)?;
            def.config = vec![0u8; config_len];
            host.read_guest(caller, config_gpa, &mut def.config)?;
        }
        defs.push(def);
    }
    Ok(defs)
}

/// DEVICE_STATE: the child (a direct one), the device (`InvalidParam`), the output
/// (aligned and its answer's length in the caller's RAM, `InvalidAddress`; `size` at
/// least that length, `InvalidParam`), then the state, taken. Returns the bytes
/// written.
#[allow(clippy::too_many_arguments)]
fn device_state(
    tree: &VmTree,
    caller: VmId,
    cid: u64,
    device: u64,
    out: Gpa,
    size: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let child = tree.resolve_child(caller, cid)?;
    let need = host.device_state_size(child, device)?;
    if !out.is_aligned(8) {
        return Err(SbiError::InvalidAddress);
    }
    check_buffer(host, caller, out, need as u64)?;
    if size < need as u64 {
        return Err(SbiError::InvalidParam);
    }
    let (state, queues) = host.take_device_state(child, device)?;
    let mut bytes = Vec::with_capacity(need);
    bytes.extend_from_slice(&state.to_le_bytes());
    for q in &queues {
        bytes.extend_from_slice(&q.to_le_bytes());
    }
    host.write_guest(caller, out, &bytes)?;
    Ok(bytes.len() as u64)
}

/// EXEC: checks as SPAWN's (flags ⊆ `SPAWN_PAGE_LIST`, `cid` 0, no device tree, an
/// image of at most `EXEC_MAX_IMAGE`), then the new charge against the caller's own
/// quota; the host then moves the image out of the caller's pages and builds the
/// caller anew from it, and the caller's children end (as on REBOOT). A host failure
/// after its point of no return ends the caller with a fatal fault.
fn exec(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let s = read_spawn_args(host, caller, gpa)?;
    if s.flags & !flags::SPAWN_PAGE_LIST != 0
        || s.device_count != 0
        || s.reserved != 0
        || s.cid != 0
        || s.dtb_size != 0
        || s.image_size > limits::EXEC_MAX_IMAGE
    {
        return Err(SbiError::InvalidParam);
    }
    check_image_args(host, caller, &s)?;
    let table_pages = table_pages_for(s.ram_pages)
        .checked_add(host.kept_pages(&s))
        .ok_or(SbiError::InvalidParam)?;
    tree.check_exec(caller, s.ram_pages, table_pages, s.vcpus, s.priority)?;
    let trusted = tree.get(caller).is_some_and(|n| n.trusted());
    match host.exec_vm(caller, &s, trusted) {
        Ok(()) => {}
        // The host got past the point of no return: the caller is gone.
        Err(SbiError::Failed) => {
            if let Ok(t) = tree.fatal_fault(caller) {
                apply_termination(&t, host);
            }
            return Err(SbiError::Failed);
        }
        Err(e) => return Err(e),
    }
    let t = tree.exec(caller, s.ram_pages, table_pages, s.vcpus, s.priority)?;
    apply_termination(&t, host);
    Ok(0)
}

fn info(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    gpa: Gpa,
    size: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let mut info: VmInfo = tree.info(caller, cid)?;
    let layout = host.layout(tree.resolve_self_or_child(caller, cid)?);
    info.ram_gpa = layout.ram.raw();
    info.entry_gpa = layout.entry.map_or(0, Gpa::raw);
    info.dtb_gpa = layout.dtb.map_or(0, Gpa::raw);
    check_out_struct(host, caller, gpa, size, VmInfo::SIZE)?;
    host.write_guest(caller, gpa, &info.to_le_bytes())?;
    Ok(0)
}

fn hv_info(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    size: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    check_out_struct(host, caller, gpa, size, HvInfo::SIZE)?;
    let facts = host.facts();
    let info = tree.hv_info(caller, &facts)?;
    host.write_guest(caller, gpa, &info.to_le_bytes())?;
    Ok(0)
}

fn set_quota(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let raw = read_struct_bytes::<{ QuotaArgs::SIZE }>(host, caller, gpa)?;
    let q = QuotaArgs::from_le_bytes(&raw).ok_or(SbiError::InvalidParam)?;
    if (q.size as usize) < QuotaArgs::SIZE || q.flags & !flags::QUOTA_ALL != 0 {
        return Err(SbiError::InvalidParam);
    }
    tree.set_quota(caller, q.cid, QuotaChange::from_args(&q))?;
    Ok(0)
}

fn ipc_send(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let raw = read_struct_bytes::<{ IpcSendArgs::SIZE }>(host, caller, gpa)?;
    let s = IpcSendArgs::from_le_bytes(&raw).ok_or(SbiError::InvalidParam)?;
    if (s.size as usize) < IpcSendArgs::SIZE || s.flags != 0 {
        return Err(SbiError::InvalidParam);
    }
    let route = tree.ipc_route(caller, s.cid)?;
    if s.len > limits::IPC_MAX_MESSAGE as u64 {
        return Err(SbiError::InvalidParam);
    }
    let data_gpa = Gpa::new(s.data_gpa);
    check_buffer(host, caller, data_gpa, s.len)?;
    send_message(tree, caller, s.cid, route, data_gpa, s.len, host)?;
    Ok(0)
}

/// Sends the `len` bytes at `data` in `caller` (checked) to its peer `cid`, which
/// `route` names (the receiver, and the sender as the receiver names it). A receiver
/// asleep waiting for this sender takes the message straight into its buffer; else
/// it is queued.
fn send_message(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    (to, as_seen): (VmId, u64),
    data: Gpa,
    len: u64,
    host: &mut dyn ExtensionHost,
) -> Result<(), SbiError> {
    // Each pass drops one record (at most one per vCPU of the receiver); a record
    // whose wait has ended (an interrupt woke it) is passed over.
    while let Some(w) = tree.take_ipc_waiter(to, as_seen) {
        if !host.claim_ipc_waiter(to, w.vcpu, w.ticket) {
            continue;
        }
        match deliver(host, caller, data, len, to, as_seen, &w) {
            Ok(answer) => {
                host.end_ipc_wait(to, w.vcpu, answer);
                return Ok(());
            }
            // Queued instead (below), and the receiver answered as a receive finding
            // it would be: too long for its buffer, or its buffer no longer usable.
            Err(e) => {
                host.end_ipc_wait(to, w.vcpu, SbiRet::error(e));
                break;
            }
        }
    }
    let mut bytes = vec![0u8; to_usize(len)?];
    host.read_guest(caller, data, &mut bytes)?;
    tree.ipc_send(caller, cid, bytes)
}

/// Copies a message of `len` bytes at `data` in `caller` into the buffer of the
/// receive `w` of `to` sleeps in, and tells it what it got (its structure written
/// back, for IPC_RECV); returns the receive's answer. The receiver's ranges were
/// checked when it began to wait and RAM never moves under a VM (a REBOOT or EXEC,
/// which may change it, forgets the waits), and the copy translates every page again.
fn deliver(
    host: &mut dyn ExtensionHost,
    caller: VmId,
    data: Gpa,
    len: u64,
    to: VmId,
    as_seen: u64,
    w: &IpcWaiter,
) -> Result<SbiRet, SbiError> {
    let (buf, room) = w.into.buffer();
    if len > room {
        return Err(SbiError::BadRange);
    }
    host.copy_guest(caller, data, to, buf, len)?;
    match w.into {
        WaitingReceive::Args { mut args, gpa } => {
            args.cid = as_seen;
            args.out_len = len;
            host.write_guest(to, gpa, &args.to_le_bytes())?;
            Ok(SbiRet::ok(1))
        }
        // len <= 4096: no overflow.
        WaitingReceive::Buffer { .. } => Ok(SbiRet::ok(to_usize(len)? + 1)),
    }
}

fn ipc_recv(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let raw = read_struct_bytes::<{ IpcRecvArgs::SIZE }>(host, caller, gpa)?;
    let mut r = IpcRecvArgs::from_le_bytes(&raw).ok_or(SbiError::InvalidParam)?;
    if (r.size as usize) < IpcRecvArgs::SIZE || r.flags & !flags::IPC_RECV_ALL != 0 {
        return Err(SbiError::InvalidParam);
    }
    let from = if r.flags & flags::IPC_RECV_EXACT != 0 || r.cid != 0 {
        Some(r.cid)
    } else {
        None
    };
    if let Some(c) = from {
        tree.resolve_peer(caller, c)?;
    }
    let buf = Gpa::new(r.buf_gpa);
    check_buffer(host, caller, buf, r.max_len)?;
    let got = tree.ipc_recv(caller, from, r.max_len, |_, data| {
        host.write_guest(caller, buf, data)
    })?;
    let Some((sender, len)) = got else {
        if r.flags & flags::IPC_RECV_WAIT != 0 {
            let into = WaitingReceive::Args { args: r, gpa };
            wait_for_message(tree, caller, from, into, host)?;
        }
        return Ok(0);
    };
    r.cid = sender;
    r.out_len = len as u64;
    host.write_guest(caller, gpa, &r.to_le_bytes())?;
    Ok(1)
}

/// Puts the calling vCPU to sleep until a message from `from` (any peer if `None`)
/// is delivered `into` its buffer, or an interrupt ends the wait.
fn wait_for_message(
    tree: &mut VmTree,
    caller: VmId,
    from: Option<u64>,
    into: WaitingReceive,
    host: &mut dyn ExtensionHost,
) -> Result<(), SbiError> {
    let waiter = IpcWaiter {
        vcpu: host.caller_vcpu(),
        ticket: 0,
        from,
        into,
    };
    let ticket = tree.add_ipc_waiter(caller, waiter)?;
    host.wait_for_message(ticket);
    Ok(())
}

/// IPC_CALL: the message, then the peer's answer, in one call. Everything is
/// checked before the message goes, so a refused call sends nothing.
fn ipc_call(
    tree: &mut VmTree,
    caller: VmId,
    (cid, buf, len, cap): (u64, Gpa, u64, u64),
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let route = tree.ipc_route(caller, cid)?;
    let max = limits::IPC_MAX_MESSAGE as u64;
    if len > max || cap > max {
        return Err(SbiError::InvalidParam);
    }
    check_buffer(host, caller, buf, len.max(cap))?;
    send_message(tree, caller, cid, route, buf, len, host)?;
    let got = tree.ipc_recv(caller, Some(cid), cap, |_, data| {
        host.write_guest(caller, buf, data)
    })?;
    match got {
        // len <= 4096: no overflow.
        Some((_, n)) => Ok(n as u64 + 1),
        None => {
            let into = WaitingReceive::Buffer { buf, cap };
            wait_for_message(tree, caller, Some(cid), into, host)?;
            Ok(0)
        }
    }
}

fn poll_event(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    size: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    // Check the buffer before taking the event, so a bad buffer never loses one.
    check_out_struct(host, caller, gpa, size, Event::SIZE)?;
    let Some((e, dropped)) = tree.poll_event(caller)? else {
        return Ok(0);
    };
    let exit_code = match e.kind {
        super::EventKind::ChildTerminated { exit_code } => exit_code,
        _ => 0,
    };
    let out = Event {
        size: Event::SIZE as u32,
        kind: e.kind.abi_kind(),
        cid: e.cid,
        exit_code,
        dropped,
        reserved: 0,
    };
    host.write_guest(caller, gpa, &out.to_le_bytes())?;
    Ok(1)
}

#[allow(clippy::too_many_arguments)] // the call's five arguments, plus context
fn map_child_mem(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    child_gpa: Gpa,
    parent_gpa: Gpa,
    size: u64,
    perms: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let child = tree.resolve_child(caller, cid)?;
    // W without R is reserved in RISC-V page tables, so refused here too.
    let write_only = perms & flags::MAP_WRITE != 0 && perms & flags::MAP_READ == 0;
    if perms == 0
        || perms & !flags::MAP_ALL != 0
        || write_only
        || size == 0
        || size & (PAGE_SIZE - 1) != 0
    {
        return Err(SbiError::InvalidParam);
    }
    if !child_gpa.is_page_aligned() || !parent_gpa.is_page_aligned() {
        return Err(SbiError::InvalidAddress);
    }
    child_gpa
        .checked_add(size)
        .ok_or(SbiError::InvalidAddress)?;
    check_buffer(host, caller, parent_gpa, size)?;
    // Only into a child that has never run: once started, its memory is its own.
    if tree.node(child)?.state != VmState::Created {
        return Err(SbiError::AlreadyStarted);
    }
    host.map_child_mem(caller, child, child_gpa, parent_gpa, size, perms)?;
    Ok(0)
}

fn unmap_child_mem(
    caller: VmId,
    parent_gpa: Gpa,
    size: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    if size == 0 || size & (PAGE_SIZE - 1) != 0 {
        return Err(SbiError::InvalidParam);
    }
    if !parent_gpa.is_page_aligned() {
        return Err(SbiError::InvalidAddress);
    }
    check_buffer(host, caller, parent_gpa, size)?;
    host.unmap_child_mem(caller, parent_gpa, size)?;
    Ok(0)
}

fn start(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    entry: Gpa,
    dtb: Gpa,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let child = tree.resolve_child(caller, cid)?;
    if tree.get(child).map(|n| n.state()) != Some(VmState::Created) {
        return Err(SbiError::AlreadyStarted);
    }
    host.start_vm(child, entry, dtb)?;
    tree.start_child(caller, cid)?;
    Ok(0)
}

fn reboot(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let child = tree.resolve_child(caller, cid)?;
    if !host.can_reboot(child) {
        return Err(SbiError::NotSupported);
    }
    let (child, t) = tree.reboot_child(caller, cid)?;
    apply_termination(&t, host);
    if let Err(e) = host.reboot_vm(child) {
        // A VM that cannot be put back is not left half-reset: it dies, and says so.
        let t = tree.fatal_fault(child)?;
        apply_termination(&t, host);
        return Err(e);
    }
    Ok(0)
}

/// The checks CONSOLE_READ and CONSOLE_WRITE share, in order: the CID names a child,
/// the length is within the transfer limit, the buffer lies in the caller's RAM. Returns
/// a zeroed bounce buffer of that length.
fn console_transfer(
    tree: &VmTree,
    caller: VmId,
    cid: u64,
    gpa: Gpa,
    len: u64,
    host: &dyn ExtensionHost,
) -> Result<Vec<u8>, SbiError> {
    tree.resolve_child(caller, cid)?;
    if len > limits::CONSOLE_MAX_TRANSFER as u64 {
        return Err(SbiError::InvalidParam);
    }
    check_buffer(host, caller, gpa, len)?;
    Ok(vec![0u8; to_usize(len)?])
}

/// CHILD_MEM_READ / CHILD_MEM_WRITE: the child (a direct one), the length (capped, so
/// the work under the tree's lock is), the caller's range, the child's range, then the
/// copy.
#[allow(clippy::too_many_arguments)]
fn child_mem(
    tree: &VmTree,
    caller: VmId,
    cid: u64,
    child_gpa: Gpa,
    own_gpa: Gpa,
    len: u64,
    to_child: bool,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let child = tree.resolve_child(caller, cid)?;
    if len > limits::CHILD_MEM_MAX as u64 {
        return Err(SbiError::InvalidParam);
    }
    check_buffer(host, caller, own_gpa, len)?;
    check_buffer(host, child, child_gpa, len)?;
    if to_child {
        host.copy_guest(caller, own_gpa, child, child_gpa, len)?;
    } else {
        host.copy_guest(child, child_gpa, caller, own_gpa, len)?;
    }
    Ok(len)
}

fn console_read(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    gpa: Gpa,
    len: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let mut buf = console_transfer(tree, caller, cid, gpa, len, host)?;
    let n = tree.console_read_child(caller, cid, &mut buf)?;
    host.write_guest(caller, gpa, buf.get(..n).unwrap_or(&[]))?;
    Ok(n as u64)
}

fn console_write(
    tree: &mut VmTree,
    caller: VmId,
    cid: u64,
    gpa: Gpa,
    len: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let mut buf = console_transfer(tree, caller, cid, gpa, len, host)?;
    host.read_guest(caller, gpa, &mut buf)?;
    Ok(tree.console_write_child(caller, cid, &buf)? as u64)
}

fn list_children(
    tree: &mut VmTree,
    caller: VmId,
    gpa: Gpa,
    capacity: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    let cids = tree.child_cids(caller)?;
    if capacity > 0 {
        let bytes = capacity.checked_mul(8).ok_or(SbiError::InvalidParam)?;
        if !gpa.is_aligned(8) {
            return Err(SbiError::InvalidAddress);
        }
        check_buffer(host, caller, gpa, bytes)?;
        let out: Vec<u8> = cids
            .iter()
            .take(to_usize(capacity)?)
            .flat_map(|c| c.to_le_bytes())
            .collect();
        host.write_guest(caller, gpa, &out)?;
    }
    Ok(cids.len() as u64)
}

fn release_device(
    tree: &mut VmTree,
    caller: VmId,
    by: u64,
    which: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    require_trust(tree, caller)?;
    let named = match by {
        flags::DEVICE_BY_WINDOW => {
            let hpa = Hpa::new(which);
            if !hpa.is_page_aligned() {
                return Err(SbiError::InvalidAddress);
            }
            DeviceRef::Window(hpa)
        }
        flags::DEVICE_BY_IRQ => {
            DeviceRef::Irq(u32::try_from(which).map_err(|_| SbiError::InvalidParam)?)
        }
        _ => return Err(SbiError::InvalidParam),
    };
    let parent = tree.get(caller).and_then(|n| n.parent());
    host.release_device(caller, parent, named)?;
    Ok(0)
}

fn map_host_mmio(
    tree: &mut VmTree,
    caller: VmId,
    hpa: Hpa,
    gpa: Gpa,
    size: u64,
    host: &mut dyn ExtensionHost,
) -> Result<u64, SbiError> {
    require_trust(tree, caller)?;
    if size == 0 || size & (PAGE_SIZE - 1) != 0 {
        return Err(SbiError::InvalidParam);
    }
    if !hpa.is_page_aligned() || !gpa.is_page_aligned() {
        return Err(SbiError::InvalidAddress);
    }
    hpa.checked_add(size).ok_or(SbiError::InvalidAddress)?;
    gpa.checked_add(size).ok_or(SbiError::InvalidAddress)?;
    let parent = tree.get(caller).and_then(|n| n.parent());
    host.map_host_mmio(caller, parent, hpa, gpa, size)?;
    Ok(0)
}
