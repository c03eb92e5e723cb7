//! The VM tree at run time: the portable `diosix_core::tree` (lineage, quotas, trust,
//! IPC, events, consoles) plus this hypervisor's `ExtensionHost` — the part that
//! builds, copies, pauses and releases real VMs.
//!
//! Lock order: `TREE`, then `ORIGINS`, then `VMS`, then a VM's memory, then `RUNQ`,
//! then `mem::SHARES`, then `FRAMES`.
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

use crate::build::{self, BuildError, VmSpec};
use crate::cow;
use crate::hart::{self, HartLocal};
use crate::image::{Bytes, CopyError, ImageStore};
use crate::mem;
use crate::sched;
use crate::vcpu::{Vcpu, VcpuState};
use crate::vcpu_shared::NOT_RUNNING;
use crate::vm::{self, Vm};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use diosix_abi::{features, flags, SpawnArgs};
use diosix_core::addr::{Gpa, Hpa, PAGE_SIZE};
use diosix_core::gstage::Perms;
use diosix_core::hostfdt::HostPlatform;
use diosix_core::payload::{self, PayloadIndex, INDEX_WINDOW, MAGIC as PAYLOAD_MAGIC};
use diosix_core::sbi::SbiRet;
use diosix_core::tree::dispatch::{
    apply_termination, handle_diosix_call, handle_treeless_call, needs_tree, reboot_self,
    ExtensionHost,
};
use diosix_core::tree::{
    ConsoleSink, HostFacts, KilledVm, Quota, SbiError, Usage, VmId, VmState, VmTree,
};
use spin::Mutex;

/// Priority of the Root VM's vCPUs (the middle of 1..=255, so it can give children
/// more or less).
pub const ROOT_PRIORITY: u32 = 128;

static TREE: Mutex<Option<VmTree>> = Mutex::new(None);
static VMS: Mutex<BTreeMap<VmId, Arc<Vm>>> = Mutex::new(BTreeMap::new());
/// What REBOOT puts each VM back to (none for a VM forked with `FORK_NO_SNAPSHOT`).
static ORIGINS: Mutex<BTreeMap<VmId, Origin>> = Mutex::new(BTreeMap::new());

/// The state a VM was created or forked in, kept for REBOOT.
enum Origin {
    /// A spawned VM: built again from its image.
    Image(ImageOrigin),
    /// A forked VM: its memory (copy-on-write, sharing every frame it had at FORK) and
    /// vCPUs as FORK left them.
    Snapshot(Snapshot),
}

/// A forked VM as it was right after FORK.
struct Snapshot {
    /// Never run: a third holder of the fork-time leaf tables, so neither the parent's
    /// nor the child's later writes reach it.
    memory: Frozen,
    states: Vec<VcpuState>,
    name: alloc::string::String,
    ram: diosix_core::addr::Range<Gpa>,
    priority: u8,
}

/// Guest memory no VM runs on, given back to the host when dropped.
struct Frozen(Option<crate::guestmem::GuestMemory>);

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            m.destroy();
        }
    }
}

impl Snapshot {
    /// A new VM `id` in the snapshot's state: its memory shares the snapshot's (one
    /// pass over the level-1 tables), its vCPUs are the saved ones.
    fn restore(&mut self, id: VmId) -> Result<Arc<Vm>, alloc::string::String> {
        let frozen = self.memory.0.as_mut().ok_or("snapshot already released")?;
        let memory = frozen.fork()?;
        let vm = vm::adopt(
            id,
            self.name.clone(),
            memory,
            self.ram,
            self.states.len(),
            self.priority,
        )
        .ok_or("no VMID free")?;
        enqueue_states(&vm, &self.states);
        Ok(vm)
    }
}

/// Queues a vCPU of `vm` for each saved state.
fn enqueue_states(vm: &Arc<Vm>, states: &[VcpuState]) {
    for st in states {
        let shared = vm.vcpus[st.index].clone();
        shared.set_state(st.hsm);
        sched::enqueue(Box::new(Vcpu::from_state(vm.clone(), shared, st)));
    }
}

/// A spawned VM's image and parameters, kept for REBOOT.
struct ImageOrigin {
    image: ImageStore,
    dtb: Option<ImageStore>,
    name: alloc::string::String,
    ram_bytes: u64,
    vcpus: usize,
    priority: u8,
    start: bool,
}

impl ImageOrigin {
    /// Builds (again) the VM `id` from this origin, for the caller to queue; gives up
    /// when `cancelled` holds. A `DSXPAYLD` image is split into kernel, initrd and
    /// command line from its index; only headers and the command line (each bounded by
    /// a constant) are read into the heap.
    fn build(&self, id: VmId, cancelled: &dyn Fn() -> bool) -> Result<build::Built, BuildError> {
        let store = &self.image;
        let read_err = |e: CopyError| BuildError::Host(format!("reading the image: {e:?}"));
        let magic = store.read(0, PAYLOAD_MAGIC.len().min(store.len() as usize));
        let stored = |range: core::ops::Range<usize>| Bytes::Stored {
            store,
            range: range.start as u64..range.end as u64,
        };
        let (kernel, initrd, cmdline) = if magic.map_err(read_err)? == PAYLOAD_MAGIC {
            let window = store
                .read(0, INDEX_WINDOW.min(store.len() as usize))
                .map_err(read_err)?;
            let len = usize::try_from(store.len()).unwrap_or(usize::MAX);
            let index = PayloadIndex::parse(&window, len)
                .map_err(|e| BuildError::Refused(format!("payload: {e}")))?;
            let cmdline = match index.cmdline {
                Some(r) => {
                    let bytes = store.read(r.start as u64, r.len()).map_err(read_err)?;
                    let text = payload::check_cmdline(&bytes)
                        .map_err(|e| BuildError::Refused(format!("payload: {e}")))?;
                    Some(alloc::string::String::from(text))
                }
                None => None,
            };
            (stored(index.kernel), index.initrd.map(stored), cmdline)
        } else {
            (
                Bytes::Stored {
                    store,
                    range: 0..store.len(),
                },
                None,
                None,
            )
        };
        build::build_vm(
            crate::platform::host(),
            &VmSpec {
                id,
                name: self.name.clone(),
                ram_bytes: self.ram_bytes,
                vcpus: self.vcpus,
                priority: self.priority,
                kernel,
                initrd,
                cmdline: cmdline.as_deref(),
                dtb: self.dtb.as_ref().map(|d| Bytes::Stored {
                    store: d,
                    range: 0..d.len(),
                }),
                is_root: false,
                start: self.start,
                cancelled,
            },
        )
    }

    /// Gathers a SPAWN's image (and device tree) from `parent`'s memory, as `args`
    /// (already checked by the tree) describe it, into stores of host pages wherever
    /// they are free; gives up when `cancelled` holds.
    fn from_guest(
        parent: &Vm,
        id: VmId,
        args: &SpawnArgs,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, SbiError> {
        let image = ImageStore::new(args.image_size, cancelled).map_err(no_room)?;
        if args.flags & flags::SPAWN_PAGE_LIST != 0 {
            // One list entry per page, each a page-aligned GPA in the parent's RAM.
            for (i, off) in (0..args.image_size).step_by(PAGE_SIZE as usize).enumerate() {
                let mut entry = [0u8; 8];
                let at = args
                    .image_gpa
                    .checked_add(i as u64 * 8)
                    .ok_or(SbiError::InvalidAddress)?;
                parent.read(Gpa::new(at), &mut entry).map_err(bad_address)?;
                let gpa = Gpa::new(u64::from_le_bytes(entry));
                if !gpa.is_page_aligned() {
                    return Err(SbiError::InvalidAddress);
                }
                let n = (args.image_size - off).min(PAGE_SIZE);
                image
                    .fill_from(off, parent, gpa, n, cancelled)
                    .map_err(copy_error)?;
            }
        } else {
            image
                .fill_from(
                    0,
                    parent,
                    Gpa::new(args.image_gpa),
                    args.image_size,
                    cancelled,
                )
                .map_err(copy_error)?;
        }
        let dtb = if args.dtb_size != 0 {
            let dtb = ImageStore::new(args.dtb_size, cancelled).map_err(no_room)?;
            dtb.fill_from(0, parent, Gpa::new(args.dtb_gpa), args.dtb_size, cancelled)
                .map_err(copy_error)?;
            Some(dtb)
        } else {
            None
        };
        Ok(Self {
            image,
            dtb,
            name: format!("{}/vm{}", parent.name, id.index()),
            ram_bytes: args
                .ram_pages
                .checked_mul(PAGE_SIZE)
                .ok_or(SbiError::InvalidParam)?,
            vcpus: usize::try_from(args.vcpus).map_err(|_| SbiError::InvalidParam)?,
            priority: u8::try_from(args.priority).unwrap_or(u8::MAX),
            start: args.flags & flags::SPAWN_PAUSED == 0,
        })
    }
}

/// A store the host could not fill (cancelled, or out of RAM the tree had charged).
fn no_room(e: alloc::string::String) -> SbiError {
    log::warn!("SPAWN: no room for the image: {e}");
    SbiError::Failed
}

/// A copy out of the parent's memory that failed: a bad address of the caller's, or a
/// cancelled build.
fn copy_error(e: CopyError) -> SbiError {
    match e {
        CopyError::Access(_) => SbiError::InvalidAddress,
        CopyError::Cancelled => SbiError::Failed,
    }
}

/// VMs the tree has admitted whose build runs outside `TREE` (it zeroes their RAM and
/// copies their image: time proportional to their size), each with the flag that
/// tells its builder to give up. The flag is set under `TREE` by whoever kills the VM
/// meanwhile, who then waits (bounded by one 2 MiB step) until the builder has given
/// every page back and removed the entry.
static BUILDING: Mutex<BTreeMap<VmId, Arc<AtomicBool>>> = Mutex::new(BTreeMap::new());

/// What a build starts from.
enum Source {
    /// SPAWN: the image is still in the parent's memory.
    Spawn { parent: Arc<Vm>, args: SpawnArgs },
    /// REBOOT (by the parent or the VM's own SRST reboot) of a spawned VM: the image
    /// kept at SPAWN.
    Rebuild(ImageOrigin),
}

/// A VM the tree admitted, to build once `TREE` is released (see [`BUILDING`]).
struct PendingBuild {
    id: VmId,
    source: Source,
    abandoned: Arc<AtomicBool>,
}

impl PendingBuild {
    /// Records the build in [`BUILDING`] (so a kill meanwhile can stop it).
    fn new(id: VmId, source: Source) -> Self {
        let abandoned = Arc::new(AtomicBool::new(false));
        BUILDING.lock().insert(id, abandoned.clone());
        Self {
            id,
            source,
            abandoned,
        }
    }

    /// Builds the VM with no lock held, then, under `TREE`, makes it live in the state
    /// the tree has for it now, or undoes its admission if the build failed (a new child
    /// is discarded, a rebooting one dies with a fatal fault). A VM killed meanwhile is
    /// given back at once. Returns the error the caller's call answers.
    fn run(self, hart: &mut HartLocal) -> Result<(), SbiError> {
        let abandoned = self.abandoned.clone();
        let cancelled = move || abandoned.load(Ordering::Acquire);
        let id = self.id;
        let spawning = matches!(self.source, Source::Spawn { .. });
        let built = match self.source {
            Source::Spawn { parent, args } => {
                ImageOrigin::from_guest(&parent, id, &args, &cancelled).and_then(|o| {
                    o.build(id, &cancelled)
                        .map(|b| (b, o))
                        .map_err(|e| build_error("SPAWN", &e))
                })
            }
            Source::Rebuild(o) => o
                .build(id, &cancelled)
                .map(|b| (b, o))
                .map_err(|e| build_error("REBOOT", &e)),
        };
        let Ok(mut tree) = lock_tree_unless(hart.slot, &cancelled, u64::MAX) else {
            // Killed meanwhile: give everything back before saying so.
            drop(built);
            BUILDING.lock().remove(&id);
            return Err(SbiError::Failed);
        };
        BUILDING.lock().remove(&id);
        let Some(t) = tree.as_mut() else {
            return Err(SbiError::Failed);
        };
        match built {
            Ok((built, origin)) => {
                if t.get(id).is_some_and(|n| n.state() == VmState::Stopped) {
                    built.vm.stopped.store(true, Ordering::Release);
                }
                let vm = built.enqueue();
                if !spawning {
                    log::info!("VM {} rebooted", vm.name);
                }
                register(vm);
                ORIGINS.lock().insert(id, Origin::Image(origin));
                Ok(())
            }
            Err(e) => {
                let term = if spawning {
                    Ok(t.discard_child(id))
                } else {
                    t.fatal_fault(id)
                };
                if let Ok(term) = term {
                    apply_termination(&term, &mut HvHost::new(hart));
                }
                Err(e)
            }
        }
    }
}

/// The SBI error for a failed build, logged.
fn build_error(what: &str, e: &BuildError) -> SbiError {
    log::warn!("{what} refused: {e}");
    match e {
        BuildError::Refused(_) => SbiError::InvalidParam,
        BuildError::Host(_) | BuildError::Cancelled => SbiError::Failed,
    }
}

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
    let per_vcpu = (core::mem::size_of::<Vcpu>().next_power_of_two()
        + core::mem::size_of::<VcpuState>().next_power_of_two()
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
    /// Answered: the reply, and whether the caller must now leave its hart (it
    /// yielded, or it no longer exists).
    Done(SbiRet, bool),
    /// Not carried out: the caller leaves its hart and issues the same ecall again when
    /// next scheduled (another vCPU of its VM is forking it, or the tree's lock stayed
    /// busy for a whole time slice).
    Again,
}

/// Takes `TREE` for a call by a vCPU of `vm` running on hart `slot`, serving fence
/// requests while it spins; `None` once `vm` is dead (whoever killed it may be waiting,
/// with `TREE` held, for this hart to leave the VM). Checked again under the lock, so
/// a vCPU of a VM that died or was rebooted never acts on the tree.
fn lock_tree_for(vm: &Vm, slot: usize) -> Option<TreeGuard> {
    lock_tree_unless(slot, &|| vm.dead.load(Ordering::Acquire), u64::MAX).ok()
}

type TreeGuard = spin::MutexGuard<'static, Option<VmTree>>;

/// Why [`lock_tree_unless`] returned without the lock.
enum NoLock {
    /// `give_up()` held.
    GaveUp,
    /// The deadline passed first.
    TimedOut,
}

/// Takes `TREE` on hart `slot`, serving fence requests while it spins, unless (before
/// or once it has the lock) `give_up()` holds, or the timer passes `deadline` first.
fn lock_tree_unless(
    slot: usize,
    give_up: &dyn Fn() -> bool,
    deadline: u64,
) -> Result<TreeGuard, NoLock> {
    loop {
        if let Some(guard) = TREE.try_lock() {
            return if give_up() {
                Err(NoLock::GaveUp)
            } else {
                Ok(guard)
            };
        }
        if give_up() {
            return Err(NoLock::GaveUp);
        }
        if deadline != u64::MAX && crate::platform::now() > deadline {
            return Err(NoLock::TimedOut);
        }
        crate::hart::service_fence_request(slot);
        core::hint::spin_loop();
    }
}

/// Handles a Diosix extension call from the vCPU running on `hart`.
pub fn call(hart: &mut HartLocal, fid: usize, args: [usize; 6]) -> Outcome {
    let failed = Outcome::Done(SbiRet::err(SbiError::Failed.code()), false);
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return failed;
    };
    let slot = hart.slot;
    // Only a call the tree may carry out holds the VM: refusals need no hold.
    let holding = needs_caller_held(fid, args);
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
            return Outcome::Done(SbiRet::err(SbiError::Failed.code()), true);
        }
    }
    let mut host = HvHost::new(hart);
    if !needs_tree(fid) {
        let ret = handle_treeless_call(vm.id, fid, args, &mut host);
        cow::finish(&vm, slot, core::mem::take(&mut host.stale));
        return Outcome::Done(ret, !vm.can_run());
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
                Some(t) => handle_diosix_call(t, vm.id, fid, args, &mut host),
                None => SbiRet::err(SbiError::Failed.code()),
            };
            // Copy-on-write pages the call wrote into, and pages it write-protected,
            // are settled before anyone else acts on the tree (a START of a child
            // that MAP_CHILD_MEM just shared pages with must find every hart of the
            // parent flushed). Harts this waits for serve fences wherever they spin.
            cow::finish(&vm, slot, core::mem::take(&mut host.stale));
            drop(tree);
            ret
        }
        Err(NoLock::GaveUp) => SbiRet::err(SbiError::Failed.code()),
    };
    let HvHost {
        hart,
        yield_now,
        stopped,
        build,
        ..
    } = host;
    if holding {
        release_hold(&vm);
    }
    // A SPAWN or REBOOT the tree admitted is built now, with no lock held; the call
    // answers what became of it.
    let ret = match build {
        Some(b) => match b.run(hart) {
            Ok(()) => ret,
            Err(e) => SbiRet::err(e.code()),
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
    let leave = yield_now || !vm.can_run();
    Outcome::Done(ret, leave)
}

/// Whether this call must hold the caller's other vCPUs still: a FORK the tree may
/// carry out (one with valid flags) copies their state, so none may run meanwhile.
fn needs_caller_held(fid: usize, args: [usize; 6]) -> bool {
    diosix_core::tree::dispatch::holds_caller_vcpus(fid, args)
}

/// Ends a FORK's hold: the held vCPUs may run again.
fn release_hold(vm: &Vm) {
    vm.held.store(false, Ordering::Release);
    sched::poke_waiters();
    hart::wake_an_idle_hart();
}

/// Waits until no vCPU of `vm` runs on another hart than `my_slot` (kicking those that
/// do, and serving fence requests meanwhile, so two harts waiting on each other cannot
/// deadlock). Gives up, returning false, as soon as `give_up()` holds.
///
/// Once the VM is held, stopped or dead, on a `true` return every other vCPU of `vm`
/// is in the run queue or gone (where FORK's snapshot finds it): the scheduler updates
/// `running_on` under the run-queue lock, so once a scan made under that lock finds
/// none running, none is between the queue and a hart, and none can be taken again.
fn wait_off_harts(vm: &Vm, my_slot: usize, give_up: impl Fn() -> bool) -> bool {
    let others_running = || {
        let mut busy = false;
        for v in &vm.vcpus {
            let slot = v.running_on.load(Ordering::Acquire);
            if slot != NOT_RUNNING && slot != my_slot {
                hart::kick(slot);
                busy = true;
            }
        }
        busy
    };
    loop {
        if !others_running() && !sched::with_queue_locked(others_running) {
            return true;
        }
        if give_up() {
            return false;
        }
        crate::hart::service_fence_request(my_slot);
        core::hint::spin_loop();
    }
}

/// Ends a VM that is no longer in the registry (killed, or replaced by its rebooted
/// incarnation): marks it dead, takes its queued vCPUs away, waits (with `TREE` held)
/// until its running ones have left their harts, and returns its memory to the host.
/// Its charge in the tree is therefore never reused while it still holds frames.
///
/// The wait ends: a hart running one of its vCPUs is kicked and, in the guest, traps
/// and drops it; in the hypervisor, every wait it can be in gives up once the VM is
/// dead (`lock_tree_for`, a FORK hold, a STOP's wait), and fence requests from this
/// hart are served meanwhile.
fn retire(vm: &Arc<Vm>, my_slot: usize) {
    vm.dead.store(true, Ordering::SeqCst);
    kick_running(vm, my_slot);
    sched::reap(vm);
    wait_off_harts(vm, my_slot, || false);
    vm.release_memory();
}

/// Stops the build of `id` if one runs (see [`BUILDING`]) and waits, with `TREE`
/// held, until its builder has given every page back.
fn abandon_build(id: VmId, my_slot: usize) {
    let flag = BUILDING.lock().get(&id).cloned();
    let Some(flag) = flag else {
        return;
    };
    flag.store(true, Ordering::Release);
    while BUILDING.lock().contains_key(&id) {
        crate::hart::service_fence_request(my_slot);
        core::hint::spin_loop();
    }
}

/// Kicks every hart running one of `vm`'s vCPUs, so it notices a new stop or death.
fn kick_running(vm: &Vm, my_slot: usize) {
    for v in &vm.vcpus {
        let slot = v.running_on.load(Ordering::Acquire);
        if slot != NOT_RUNNING && slot != my_slot {
            hart::kick(slot);
        }
    }
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

/// The hypervisor's side of the extension, for one call on one hart.
struct HvHost<'a> {
    hart: &'a mut HartLocal,
    yield_now: bool,
    /// A child this call stopped, to wait for once the tree lock is released.
    stopped: Option<Arc<Vm>>,
    /// Copy-on-write pages the call wrote into, settled before the tree is unlocked.
    stale: cow::Stale,
    /// A VM the call admitted, built once the tree is unlocked.
    build: Option<PendingBuild>,
}

impl<'a> HvHost<'a> {
    /// Nothing done yet, for the vCPU running on `hart`.
    fn new(hart: &'a mut HartLocal) -> Self {
        Self {
            hart,
            yield_now: false,
            stopped: None,
            stale: cow::Stale::new(),
            build: None,
        }
    }
}

fn bad_address<T>(_: T) -> SbiError {
    SbiError::InvalidAddress
}

impl ExtensionHost for HvHost<'_> {
    fn check_range(&self, vm: VmId, gpa: Gpa, len: u64) -> Result<(), SbiError> {
        let vm = lookup(vm).ok_or(SbiError::Failed)?;
        let ok = if len == 0 {
            vm.ram.contains(gpa) || Some(gpa) == Some(vm.ram.end())
        } else {
            vm.ram.contains_span(gpa, len)
        };
        if ok {
            Ok(())
        } else {
            Err(SbiError::InvalidAddress)
        }
    }

    fn read_guest(&mut self, vm: VmId, gpa: Gpa, buf: &mut [u8]) -> Result<(), SbiError> {
        lookup(vm)
            .ok_or(SbiError::Failed)?
            .read(gpa, buf)
            .map_err(bad_address)
    }

    fn write_guest(&mut self, vm: VmId, gpa: Gpa, data: &[u8]) -> Result<(), SbiError> {
        lookup(vm)
            .ok_or(SbiError::Failed)?
            .write(gpa, data, &mut self.stale)
            .map_err(bad_address)
    }

    fn kept_pages(&self, args: &SpawnArgs) -> u64 {
        // The Origin's image and DTB stores: their pages and page tables.
        ImageStore::pages_for(args.image_size).saturating_add(ImageStore::pages_for(args.dtb_size))
    }

    fn facts(&self) -> HostFacts {
        let host = crate::platform::host();
        let mut parts = crate::VERSION
            .split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0));
        let (a, b, c) = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        HostFacts {
            hv_version: (a << 32) | (b << 16) | c,
            features: features::HW_VIRT
                | features::GSTAGE
                | features::IPC
                | features::CONSOLE
                | features::QUOTAS
                | features::HW_TRUST
                | features::COW_FORK,
            host_cores: host.harts.len() as u32,
            timer_freq_hz: host.timebase_frequency,
        }
    }

    fn yield_vcpu(&mut self, _vm: VmId) {
        self.yield_now = true;
    }

    fn fork_vm(
        &mut self,
        parent: VmId,
        child: VmId,
        child_cid: u64,
        snapshot: bool,
    ) -> Result<(), SbiError> {
        let parent_vm = lookup(parent).ok_or(SbiError::Failed)?;
        // The caller's live state, so the child resumes right after its FORK ecall.
        let me = self.hart.current.as_mut().ok_or(SbiError::Failed)?;
        me.save(&self.hart.frame);
        let mut states = sched::snapshot(&parent_vm);
        states.push(me.clone_state());
        // Nothing is copied: both VMs map the same frames read-only, and the first
        // write to a page gives the writer its own copy (see cow.rs). The tree charged
        // the child a frame per page, so those copies can always be made.
        let failed = |e: alloc::string::String| {
            log::warn!("FORK of VM {} failed: {e}", parent_vm.name);
            SbiError::Failed
        };
        let mut memory = match parent_vm.mem.lock().as_mut() {
            Some(m) => m.fork().map_err(failed)?,
            None => return Err(SbiError::Failed),
        };
        // The snapshot REBOOT returns to: a third sharer, charged by the tree for the
        // case where both VMs rewrite every page.
        // Owned by a `Frozen` at once, so every way out below gives it back.
        let frozen = if snapshot {
            match memory.fork() {
                Ok(f) => Frozen(Some(f)),
                Err(e) => {
                    memory.destroy();
                    return Err(failed(e));
                }
            }
        } else {
            Frozen(None)
        };
        let me_index = me.shared.index;
        for st in states.iter_mut().filter(|st| st.index == me_index) {
            // The child sees FORK return a0 = a1 = 0, after the ecall.
            st.ctx.regs[10] = 0;
            st.ctx.regs[11] = 0;
            st.ctx.pc += 4;
        }
        let child_vm = vm::adopt(
            child,
            format!("{}/{}", parent_vm.name, child_cid),
            memory,
            parent_vm.ram,
            parent_vm.vcpu_count(),
            parent_vm.priority,
        )
        .ok_or(SbiError::Failed)?;
        enqueue_states(&child_vm, &states);
        if frozen.0.is_some() {
            let snap = Snapshot {
                memory: frozen,
                states,
                name: child_vm.name.clone(),
                ram: child_vm.ram,
                priority: child_vm.priority,
            };
            ORIGINS.lock().insert(child, Origin::Snapshot(snap));
        }
        log::info!(
            "VM {} forked into {} ({} MiB shared copy-on-write)",
            parent_vm.name,
            child_vm.name,
            parent_vm.ram.len >> 20
        );
        register(child_vm);
        Ok(())
    }

    fn spawn_vm(&mut self, parent: VmId, child: VmId, args: &SpawnArgs) -> Result<(), SbiError> {
        let parent = lookup(parent).ok_or(SbiError::Failed)?;
        // Built once the tree is unlocked (see `PendingBuild::run`).
        self.build = Some(PendingBuild::new(
            child,
            Source::Spawn {
                parent,
                args: *args,
            },
        ));
        Ok(())
    }

    fn start_vm(&mut self, vm: VmId, entry: Gpa, dtb: Gpa) -> Result<(), SbiError> {
        let vm = lookup(vm).ok_or(SbiError::Failed)?;
        if !vm.ram.contains(entry) || !vm.ram.contains(dtb) {
            return Err(SbiError::InvalidAddress);
        }
        let boot = &vm.vcpus[0];
        if !boot.transition(
            diosix_core::sbi::HartState::Stopped,
            diosix_core::sbi::HartState::StartPending,
        ) {
            return Err(SbiError::AlreadyStarted);
        }
        if !sched::start_stopped(&vm, 0, entry, dtb.raw()) {
            boot.set_state(diosix_core::sbi::HartState::Stopped);
            return Err(SbiError::Failed);
        }
        Ok(())
    }

    fn stop_vm(&mut self, vm: VmId) {
        if let Some(vm) = lookup(vm) {
            vm.stopped.store(true, Ordering::Release);
            kick_running(&vm, self.hart.slot);
            self.stopped = Some(vm);
        }
    }

    fn resume_vm(&mut self, vm: VmId) {
        if let Some(vm) = lookup(vm) {
            vm.stopped.store(false, Ordering::Release);
            sched::poke_waiters();
            hart::wake_an_idle_hart();
        }
    }

    fn can_reboot(&self, vm: VmId) -> bool {
        // A VM being built (spawned, or rebooted a moment ago) has its origin with its
        // builder: it can be rebooted all the same.
        ORIGINS.lock().contains_key(&vm) || BUILDING.lock().contains_key(&vm)
    }

    fn reboot_vm(&mut self, id: VmId) -> Result<(), SbiError> {
        let mut origins = ORIGINS.lock();
        if !origins.contains_key(&id) {
            // Being built from its image right now: it will start in its created
            // state, which is what this REBOOT asks for, so there is nothing more to do.
            if BUILDING.lock().contains_key(&id) {
                return Ok(());
            }
            return Err(SbiError::NotSupported);
        }
        // The old incarnation is gone, memory and all, before the new one is built:
        // the charge they share is never held twice.
        let old = VMS.lock().remove(&id);
        if let Some(old) = old {
            retire(&old, self.hart.slot);
        }
        match origins.remove(&id) {
            // A snapshot comes back in time independent of RAM size: at once.
            Some(Origin::Snapshot(mut snap)) => {
                let vm = snap.restore(id);
                origins.insert(id, Origin::Snapshot(snap));
                let vm = vm.map_err(|e| {
                    log::warn!("REBOOT of a VM failed: {e}");
                    SbiError::Failed
                })?;
                log::info!("VM {} rebooted", vm.name);
                register(vm);
            }
            // An image is built again once the tree is unlocked.
            Some(Origin::Image(o)) => {
                self.build = Some(PendingBuild::new(id, Source::Rebuild(o)));
            }
            None => return Err(SbiError::NotSupported),
        }
        Ok(())
    }

    fn release_vm(&mut self, killed: &KilledVm) {
        // Its kept image goes whether or not the VM was ever built.
        ORIGINS.lock().remove(&killed.id);
        abandon_build(killed.id, self.hart.slot);
        let vm = VMS.lock().remove(&killed.id);
        let Some(vm) = vm else {
            return;
        };
        retire(&vm, self.hart.slot);
        log::info!(
            "VM {} terminated (hypervisor heap in use: {} KiB)",
            vm.name,
            crate::heap::used_bytes() >> 10
        );
    }

    fn revoke_hw_access(&mut self, _vm: VmId) {
        // No VM is given host MMIO or IRQ routes yet, so there is nothing to undo.
    }

    fn map_child_mem(
        &mut self,
        parent: VmId,
        child: VmId,
        child_gpa: Gpa,
        parent_gpa: Gpa,
        size: u64,
        perms: u64,
    ) -> Result<(), SbiError> {
        let parent = lookup(parent).ok_or(SbiError::Failed)?;
        let child = lookup(child).ok_or(SbiError::Failed)?;
        if !child.ram.contains_span(child_gpa, size) {
            return Err(SbiError::InvalidAddress);
        }
        let mut p = Perms::empty();
        for (bit, perm) in [
            (flags::MAP_READ, Perms::R),
            (flags::MAP_WRITE, Perms::W),
            (flags::MAP_EXEC, Perms::X),
        ] {
            if perms & bit != 0 {
                p |= perm;
            }
        }
        // Parent, then child: the only place two VMs' memory is locked at once, and
        // the tree lock (held) keeps it to one such call at a time.
        let mut pm = parent.mem.lock();
        let mut cm = child.mem.lock();
        let (Some(pm), Some(cm)) = (pm.as_mut(), cm.as_mut()) else {
            return Err(SbiError::Failed);
        };
        let copied = {
            let mut shares = mem::SHARES.lock();
            let mut frames = mem::frames();
            pm.table.copy_range_into(
                &mut cm.table,
                &mut mem::PhysTables,
                &mut mem::TableAlloc(&mut frames),
                &mut shares,
                parent_gpa,
                child_gpa,
                size,
                p,
                // The child has never run, so no hart holds a translation to the frames
                // it no longer maps: they can go at once.
                |frames, old| {
                    if let Err(e) = frames.0.free_part(old, 1) {
                        log::error!("MAP_CHILD_MEM: frame {old} not returned: {e}");
                    }
                },
            )
        };
        // The parent's pages lost W: its other harts flush before this call returns.
        self.stale.write_protected();
        copied.map_err(|e| {
            log::warn!("MAP_CHILD_MEM into VM {} refused: {e}", child.name);
            SbiError::InvalidAddress
        })
    }

    fn unmap_child_mem(
        &mut self,
        parent: VmId,
        parent_gpa: Gpa,
        size: u64,
    ) -> Result<(), SbiError> {
        let vm = lookup(parent).ok_or(SbiError::Failed)?;
        let end = parent_gpa
            .checked_add(size)
            .ok_or(SbiError::InvalidAddress)?
            .raw();
        // Runs without the tree's lock: whoever kills this VM meanwhile waits for this
        // hart to leave it, so the walk stops at the next page once the VM is dead. A
        // batch of at most one leaf table's pages at a time, each settled (shootdown,
        // old shares released) before the next, so what is pending stays bounded.
        const BATCH: u64 = 512 * PAGE_SIZE;
        let mut page = parent_gpa.raw();
        while page < end {
            let batch_end = page.saturating_add(BATCH).min(end);
            {
                let mut guard = vm.mem.lock();
                let m = guard.as_mut().ok_or(SbiError::Failed)?;
                for p in (page..batch_end).step_by(PAGE_SIZE as usize) {
                    if vm.dead.load(Ordering::Acquire) {
                        return Err(SbiError::Failed);
                    }
                    match m.break_cow(Gpa::new(p), &mut self.stale) {
                        // Read-only for this VM for good: nothing of it to take back.
                        Ok(()) | Err(cow::CowError::NotCow) => {}
                        Err(cow::CowError::OutOfMemory) => return Err(SbiError::Failed),
                    }
                }
            }
            cow::finish(&vm, self.hart.slot, core::mem::take(&mut self.stale));
            page = batch_end;
        }
        Ok(())
    }

    fn map_host_mmio(
        &mut self,
        _vm: VmId,
        _hpa: Hpa,
        _gpa: Gpa,
        _size: u64,
    ) -> Result<(), SbiError> {
        Err(SbiError::NotSupported)
    }

    fn route_irq(&mut self, _vm: VmId, _irq: u64) -> Result<(), SbiError> {
        Err(SbiError::NotSupported)
    }

    fn restart_host(&mut self) {
        log::info!("the Root VM has ended, restarting the host");
        crate::platform::restart_host();
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
    let host_ram: u64 = host.memory.iter().map(|r| r.len).sum();
    let vcpus = match payload.vcpus {
        0 => host.harts.len(),
        n => n as usize,
    };
    let ram_mib = match payload.ram_mib {
        0 => default_root_ram_mib(host_ram),
        n => u64::from(n),
    };
    let ram_bytes = ram_mib.checked_mul(1 << 20).ok_or("RAM size overflows")?;
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
        },
    )
    .map_err(|e| format!("Root VM: {e}"))?;
    crate::vmtree::register(built.enqueue());
    Ok(())
}
