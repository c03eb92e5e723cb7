//! The VM tree at run time: the portable `diosix_core::tree` (lineage, quotas, trust,
//! IPC, events, consoles) plus this hypervisor's `ExtensionHost` — the part that
//! builds, copies, pauses and releases real VMs.
//!
//! This file holds the registry (`TREE`, `VMS`), the entry points the trap and SBI
//! code call, and the Root VM's creation; `host` implements `ExtensionHost`, `origin`
//! keeps what REBOOT returns a VM to, `pending` runs builds outside the tree lock, and
//! `wait` holds every wait for the lock or for other harts, and retirement.
//!
//! Lock order: `TREE`, then `ORIGINS`, then `VMS` or `BUILDING` (each held for one map
//! operation, never together), then a VM's memory, then `RUNQ`, then `mem::SHARES`,
//! then `FRAMES`; `VMIDS` is a leaf (docs/architecture.md has the details).
//!
//! # Waiting for other harts
//! Every M-mode wait here can be broken, so no guest can hold a hart for ever:
//! - a hart that wants `TREE` for a vCPU gives up as soon as that vCPU's VM is dead
//!   ([`lock_tree_for`]), and serves fence requests while it spins;
//! - a FORK holds the caller's other vCPUs still *before* taking `TREE`, and only one
//!   vCPU of a VM holds at a time: a second FORK caller leaves its hart and issues its
//!   ecall again once the first is done; a holder whose VM dies stops waiting;
//! - a dying VM's memory is returned by whoever killed it, under `TREE`, once its vCPUs
//!   are off every hart ([`retire`]); those harts leave promptly because every wait
//!   they can be in gives up when their VM is dead. So a VM's charge goes back to its
//!   parent only together with its frames, and no old vCPU of a rebooted VM can make a
//!   call the new incarnation would receive.

mod host;
mod origin;
mod pending;
mod wait;

use host::HvHost;
use origin::{Origin, ORIGINS};
use pending::PendingBuild;
use wait::{lock_tree_for, lock_tree_unless, retire, stop_for_good, wait_off_harts, NoLock};

use crate::build::{self, VmSpec};
use crate::cow;
use crate::hart::{self, HartLocal};
use crate::image::Bytes;
use crate::mem;
use crate::sched;
use crate::vcpu::{Vcpu, VcpuState, Wait};
use crate::vm::Vm;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use diosix_core::addr::PAGE_SIZE;
use diosix_core::hostfdt::{HostDevice, HostPlatform};
use diosix_core::loader;
use diosix_core::payload::{self};
use diosix_core::sbi::SbiRet;
use diosix_core::tree::dispatch::{
    apply_termination, handle_request, handle_treeless_call, reboot_self,
};
use diosix_core::tree::request::Request;
use diosix_core::tree::{ConsoleSink, Quota, SbiError, Usage, VmId, VmTree};
use spin::Mutex;

/// Priority of the Root VM's vCPUs (the middle of 1..=255, so it can give children
/// more or less).
pub const ROOT_PRIORITY: u32 = 128;

static TREE: Mutex<Option<VmTree>> = Mutex::new(None);
static VMS: Mutex<BTreeMap<VmId, Arc<Vm>>> = Mutex::new(BTreeMap::new());
/// Creates the tree with the Root VM holding `ram_pages` and `vcpus`; its quota is
/// every free page of host RAM.
pub fn create_root(ram_pages: u64, vcpus: u32) -> Result<VmId, alloc::string::String> {
    // Every free page, plus the payload's, which are freed once the Root VM is built.
    let total = mem::frames().free_pages() as u64 + mem::payload_pages(crate::platform::host());
    // vCPUs and VMs cost hypervisor heap; the Root VM's quota allows only as many as
    // the heap holds at their worst (everything else the heap holds fits in `FIXED`).
    // The frame allocator's bookkeeping no longer grows in the heap: its bitmaps were
    // allocated once by `add_range` at boot (65 KiB per GiB of host RAM, counted on top
    // of `FIXED` here; the payload's pages, added once the Root VM is built, add a few
    // KiB within `FIXED`), and no frame allocation or free touches the heap after that,
    // however guests fork, copy on write or fragment memory.
    const FIXED: u64 = 6 << 20;
    let fixed = FIXED + mem::frames().heap_bytes() as u64;
    // A vCPU, its snapshot copy, and the PMU counters each may carry.
    let pmu = core::mem::size_of::<diosix_core::sbi::pmu::PmuState>().next_power_of_two();
    let per_vcpu = (core::mem::size_of::<Vcpu>().next_power_of_two()
        + core::mem::size_of::<VcpuState>().next_power_of_two()
        + 2 * pmu
        + 256) as u64;
    let (vcpus_max, descendants_max) =
        diosix_core::tree::quota::heap_bounded(crate::heap::total_bytes(), fixed, per_vcpu);
    let quota = Quota {
        vcpus: vcpus_max,
        max_descendants: descendants_max,
        max_depth: diosix_abi::limits::MAX_TREE_DEPTH.min(descendants_max),
        ..Quota::everything(total, diosix_abi::limits::MAX_VCPUS)
    };
    log::info!(
        "Root VM quota: {} MiB, {vcpus_max} vCPUs, {descendants_max} descendants \
         (as many as the {} MiB hypervisor heap holds at worst)",
        (total * PAGE_SIZE) >> 20,
        crate::heap::total_bytes() >> 20
    );
    let own = Usage {
        ram_pages,
        table_pages: diosix_core::gstage::table_pages_for(ram_pages),
        vcpus,
    };
    let (tree, root) = VmTree::new(quota, own, ROOT_PRIORITY)
        .map_err(|e| format!("the Root VM does not fit the host ({e:?})"))?;
    *TREE.lock() = Some(tree);
    Ok(root)
}

/// Makes a built VM findable by its tree id.
pub fn register(vm: Arc<Vm>) {
    VMS.lock().insert(vm.id, vm);
}

fn lookup(id: VmId) -> Option<Arc<Vm>> {
    VMS.lock().get(&id).cloned()
}

/// What became of a Diosix extension call.
pub enum Outcome {
    /// Answered: the reply, and whether the caller must now leave its hart, and to
    /// wait for what (it yielded, it no longer exists, or it sleeps in an IPC
    /// receive).
    Done(SbiRet, Option<Wait>),
    /// Not carried out: the caller leaves its hart and issues the same ecall again when
    /// next scheduled (another vCPU of its VM is forking it, or the tree's lock stayed
    /// busy for a whole time slice).
    Again,
}

/// Handles a Diosix extension call from the vCPU running on `hart`.
pub fn call(hart: &mut HartLocal, fid: usize, args: [usize; 6]) -> Outcome {
    // Decoded once: from here on every address is typed and the function known.
    let req = match Request::decode(fid, args) {
        Ok(req) => req,
        Err(e) => return Outcome::Done(SbiRet::error(e), None),
    };
    if req.only_yields() {
        // The hart goes to whoever is next: nothing to hold, look up or settle.
        return Outcome::Done(SbiRet::ok(0), Some(Wait::None));
    }
    carry_out(hart, req)
}

/// [`call`] for every request but YIELD. Out of line: its frame (every register
/// saved, half a KiB of stack) would otherwise be paid by each YIELD too, which is
/// half of every switch between VMs that yield.
#[inline(never)]
fn carry_out(hart: &mut HartLocal, req: Request) -> Outcome {
    let failed = Outcome::Done(SbiRet::error(SbiError::Failed), None);
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return failed;
    };
    let slot = hart.slot;
    // Only a FORK the tree may carry out holds the VM (it copies every vCPU's state,
    // so none may run meanwhile); refusals need no hold.
    let holding = req.holds_caller_vcpus();
    if holding {
        if vm
            .held
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Another vCPU of this VM is forking it and waits for this one to leave.
            return Outcome::Again;
        }
        if !wait_off_harts(&vm, slot, || vm.dead.load(Ordering::Acquire)) {
            release_hold(&vm);
            return Outcome::Done(SbiRet::error(SbiError::Failed), Some(Wait::None));
        }
    }
    let mut host = HvHost::new(hart);
    if !req.needs_tree() {
        let ret = handle_treeless_call(vm.id, &req, &mut host);
        cow::finish(&vm, slot, core::mem::take(&mut host.stale));
        return Outcome::Done(ret, leave(host.yield_now, None, &vm));
    }
    // A vCPU that cannot have the lock within a time slice gives its hart to others
    // and asks again later, rather than keeping a hart from every other vCPU.
    let deadline = crate::platform::now().saturating_add(sched::slice_ticks());
    let dead = || vm.dead.load(Ordering::Acquire);
    let ret = match lock_tree_unless(slot, &dead, deadline) {
        Err(NoLock::TimedOut) => {
            if holding {
                release_hold(&vm);
            }
            return Outcome::Again;
        }
        Ok(mut tree) => {
            let ret = match tree.as_mut() {
                Some(t) => handle_request(t, vm.id, &req, &mut host),
                None => SbiRet::error(SbiError::Failed),
            };
            // Copy-on-write pages the call wrote into, and pages it write-protected,
            // are settled before anyone else acts on the tree (a START of a child
            // that MAP_CHILD_MEM just shared pages with must find every hart of the
            // parent flushed). Harts this waits for serve fences wherever they spin.
            cow::finish(&vm, slot, core::mem::take(&mut host.stale));
            drop(tree);
            ret
        }
        Err(NoLock::GaveUp) => SbiRet::error(SbiError::Failed),
    };
    let HvHost {
        hart,
        yield_now,
        stopped,
        build,
        ipc_wait,
        wake_receivers,
        ..
    } = host;
    // A receiver this call answered runs once the run queue looks at its waiters:
    // at once if this vCPU now sleeps in a receive of its own (its switch looks),
    // else through a poke, which also wakes an idle hart for it.
    if wake_receivers && ipc_wait.is_none() {
        sched::poke_waiters();
    }
    if holding {
        release_hold(&vm);
    }
    // A SPAWN or REBOOT the tree admitted is built now, with no lock held; the call
    // answers what became of it.
    let ret = match build {
        Some(b) => match b.run(hart) {
            Ok(()) => ret,
            Err(e) => SbiRet::error(e),
        },
        None => ret,
    };
    // STOP returns only once the child is off every hart, so it makes no progress after
    // its parent was told it is stopped. Waited for here, outside the tree lock: the
    // child's hart may be spinning on that lock before it can notice the stop. Given
    // up if the caller's own VM dies meanwhile.
    if let Some(child) = stopped {
        wait_off_harts(&child, slot, || vm.dead.load(Ordering::Acquire));
    }
    Outcome::Done(ret, leave(yield_now, ipc_wait, &vm))
}

/// Whether and how the caller leaves its hart after a call: to sleep in the IPC
/// receive it armed, or runnable if it yielded or its VM may no longer run.
fn leave(yield_now: bool, ipc_wait: Option<u64>, vm: &Vm) -> Option<Wait> {
    match ipc_wait {
        Some(ticket) => Some(Wait::IpcRecv(ticket)),
        None if yield_now || !vm.can_run() => Some(Wait::None),
        None => None,
    }
}

/// Ends a FORK's hold: the held vCPUs may run again.
fn release_hold(vm: &Vm) {
    vm.held.store(false, Ordering::Release);
    sched::poke_waiters();
    hart::wake_an_idle_hart();
}

/// Where a VM's console output goes: the Root VM's to the UART, anyone else's into
/// the ring its parent reads. Returns false if it went nowhere (unknown or dead VM).
/// `slot` is the hart of the vCPU writing.
pub fn console_output(vm: &Vm, slot: usize, bytes: &[u8]) -> bool {
    if vm.is_root {
        crate::console::write_bytes(bytes);
        return true;
    }
    let Some(mut tree) = lock_tree_for(vm, slot) else {
        return false;
    };
    match tree.as_mut().map(|t| t.console_output(vm.id, bytes)) {
        Some(Ok(ConsoleSink::Host)) => {
            drop(tree);
            crate::console::write_bytes(bytes);
            true
        }
        Some(Ok(ConsoleSink::Buffered)) => true,
        _ => false,
    }
}

/// Console input for `vm` (a vCPU of it runs on hart `slot`): the UART for the Root
/// VM, what its parent wrote otherwise.
pub fn console_input(vm: &Vm, slot: usize, buf: &mut [u8]) -> usize {
    if vm.is_root {
        let mut n = 0;
        while n < buf.len() {
            match crate::console::read_byte() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        return n;
    }
    let Some(mut tree) = lock_tree_for(vm, slot) else {
        return 0;
    };
    match tree.as_mut().map(|t| t.console_input(vm.id, buf)) {
        Some(Ok(Some(n))) => n,
        _ => 0,
    }
}

/// A non-root VM ended itself (SRST) or faulted: its whole subtree goes, the parent
/// gets the event. Returns after its memory is back; the caller leaves the hart. A VM
/// someone else is killing meanwhile is left to them.
pub fn vm_ended(hart: &mut HartLocal, vm: &Vm, code: u64, fault: bool) {
    let Some(mut tree) = lock_tree_for(vm, hart.slot) else {
        return;
    };
    let mut host = HvHost::new(hart);
    let Some(t) = tree.as_mut() else { return };
    let term = if fault {
        t.fatal_fault(vm.id)
    } else {
        t.kill_subtree(vm.id, code)
    };
    if let Ok(term) = term {
        apply_termination(&term, &mut host);
    }
}

/// A non-root VM asked for an SRST reboot: it goes back to the state it was created or
/// forked in (see `dispatch::reboot_self`). The caller leaves the hart: the vCPU that
/// asked belongs to the old VM, now dead.
pub fn vm_rebooted(hart: &mut HartLocal, vm: &Vm) {
    let Some(mut tree) = lock_tree_for(vm, hart.slot) else {
        return;
    };
    let mut host = HvHost::new(hart);
    if let Some(t) = tree.as_mut() {
        reboot_self(t, vm.id, &mut host);
    }
    let HvHost { hart, build, .. } = host;
    drop(tree);
    if let Some(b) = build {
        // Its failure kills the VM (a fatal fault, reported to its parent).
        let _ = b.run(hart);
    }
}

/// Default Root VM RAM: an eighth of host RAM, between 64 MiB and 512 MiB, which
/// leaves a 512 MiB host room for three 128 MiB children next to the Root VM.
pub fn default_root_ram_mib(host_ram_bytes: u64) -> u64 {
    (host_ram_bytes >> 20).div_euclid(8).clamp(64, 512)
}

/// Builds the Root VM from the embedded payload and registers it as the tree's root.
pub fn create_root_vm(host: &HostPlatform) -> Result<(), alloc::string::String> {
    let bytes = mem::payload_bytes(host);
    if bytes.is_empty() {
        return Err(
            "this image carries no Root VM payload (build it with `cargo xtask build`)".into(),
        );
    }
    let payload =
        payload::Payload::parse(bytes).map_err(|e| format!("corrupt Root VM payload: {e}"))?;
    let host_ram: u64 = host.memory.iter().map(|r| r.len()).sum();
    let vcpus = match payload.vcpus {
        0 => host.harts.len(),
        n => n as usize,
    };
    let ram_mib = match payload.ram_mib {
        0 => default_root_ram_mib(host_ram),
        n => u64::from(n),
    };
    let ram_bytes = ram_mib.checked_mul(1 << 20).ok_or("RAM size overflows")?;
    // The Root VM drives the host's devices. Those that master the bus need its RAM
    // at GPA = HPA, which only a kernel that runs wherever it is loaded (a Linux
    // `Image`) can have; any other Root VM gets only the devices that do not.
    let relocatable = diosix_core::addr::Range::new(crate::vm::GUEST_RAM_BASE, ram_bytes)
        .and_then(|ram| loader::plan(payload.kernel, ram).ok())
        .is_some_and(|p| p.format == loader::ImageFormat::LinuxImage);
    let all = crate::devices::host_devices();
    let wants_dma = all.iter().any(|d| d.dma_capable);
    let pinned = wants_dma && relocatable && ram_bytes.is_multiple_of(2 << 20);
    // Windows larger than 1 MiB (QEMU's 64 MiB of `cfi-flash`) are not mapped at boot:
    // 4 KiB G-stage pages for them cost millions of instructions at every reset, for
    // a device the Root VM's kernel has no driver for. They stay in the host's pool,
    // where a trusted VM can still map them with MAP_HOST_MMIO.
    const MAX_BOOT_WINDOW: u64 = 1 << 20;
    let devices: Vec<HostDevice> = all
        .iter()
        .filter(|d| pinned || !d.dma_capable)
        .filter(|d| d.regs.iter().all(|r| r.len() <= MAX_BOOT_WINDOW))
        .cloned()
        .collect();
    if wants_dma && !pinned {
        log::info!("the Root VM kernel is not a Linux Image: bus-mastering devices stay unused");
    }
    let id = crate::vmtree::create_root(ram_bytes / PAGE_SIZE, vcpus as u32)?;
    let built = build::build_vm(
        host,
        &VmSpec {
            id,
            name: alloc::string::String::from("root"),
            ram_bytes,
            vcpus,
            priority: crate::vmtree::ROOT_PRIORITY as u8,
            kernel: Bytes::Slice(payload.kernel),
            initrd: payload.initrd.map(Bytes::Slice),
            cmdline: payload.cmdline,
            dtb: None,
            is_root: true,
            start: true,
            cancelled: &|| false,
            devices: &devices,
            virtual_plic: false,
            pinned,
            virtio: None,
        },
    )
    .map_err(|e| format!("Root VM: {e}"))?;
    crate::devices::hand_over(&built.vm, &devices);
    crate::vmtree::register(built.enqueue());
    Ok(())
}
