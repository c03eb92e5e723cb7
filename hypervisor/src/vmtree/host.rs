//! The hypervisor's side of the Diosix extension: `ExtensionHost` over real VMs.

use crate::cow;
use crate::hart::{self, HartLocal};
use crate::image::ImageStore;
use crate::sched;
use crate::vm::{self, Vm};
use alloc::format;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use diosix_abi::{features, flags, DeviceState, QueueState, SpawnArgs};
use diosix_core::addr::{Gpa, Hpa, PAGE_SIZE};
use diosix_core::childdev::DeviceDef;
use diosix_core::devices::DeviceRef;
use diosix_core::gstage::Perms;
use diosix_core::sbi::SbiRet;
use diosix_core::tree::dispatch::{ExtensionHost, VmLayout};
use diosix_core::tree::{HostFacts, KilledVm, SbiError, VmId};

use super::origin::{enqueue_states, Frozen, Snapshot};
use super::pending::{abandon_build, Source, BUILDING};
use super::wait::kick_running;
use super::*;

/// The hypervisor's side of the extension, for one call on one hart.
pub(super) struct HvHost<'a> {
    pub(super) hart: &'a mut HartLocal,
    pub(super) yield_now: bool,
    /// A child this call stopped, to wait for once the tree lock is released.
    pub(super) stopped: Option<Arc<Vm>>,
    /// Copy-on-write pages the call wrote into, settled before the tree is unlocked.
    pub(super) stale: crate::isolation::Stale,
    /// A VM the call admitted, built once the tree is unlocked.
    /// Boxed: the host is moved apart after every call, and most calls build nothing.
    pub(super) build: Option<alloc::boxed::Box<PendingBuild>>,
    /// The caller sleeps in this IPC receive wait once the call returns.
    pub(super) ipc_wait: Option<u64>,
    /// A sleeping receiver got its answer: the run queue looks at its waiters once
    /// the tree is unlocked.
    pub(super) wake_receivers: bool,
}

impl<'a> HvHost<'a> {
    /// Nothing done yet, for the vCPU running on `hart`.
    pub(super) fn new(hart: &'a mut HartLocal) -> Self {
        Self {
            hart,
            yield_now: false,
            stopped: None,
            stale: crate::isolation::Stale::new(),
            build: None,
            ipc_wait: None,
            wake_receivers: false,
        }
    }

    /// Whether `id` is the VM of the vCPU making the call.
    fn is_caller(&self, id: VmId) -> bool {
        self.hart.current.as_ref().is_some_and(|v| v.vm.id == id)
    }

    /// VM `id`: the running vCPU's own without the registry's lock (nearly every
    /// guest-memory access is the caller's, several per call), any other from it.
    fn vm(&self, id: VmId) -> Option<Arc<Vm>> {
        match self.hart.current.as_ref() {
            Some(v) if v.vm.id == id => Some(v.vm.clone()),
            _ => lookup(id),
        }
    }
}

pub(super) fn bad_address<T>(_: T) -> SbiError {
    SbiError::InvalidAddress
}

impl ExtensionHost for HvHost<'_> {
    fn caller_vcpu(&self) -> usize {
        self.hart.current.as_ref().map_or(0, |v| v.shared.index)
    }

    fn wait_for_message(&mut self, ticket: u64) {
        if let Some(v) = self.hart.current.as_ref() {
            // Armed under the tree lock, before any sender can find the record.
            v.shared.arm_ipc_wait(ticket);
            self.ipc_wait = Some(ticket);
        }
    }

    fn claim_ipc_waiter(&mut self, vm: VmId, vcpu: usize, ticket: u64) -> bool {
        self.vm(vm)
            .and_then(|vm| vm.vcpus.get(vcpu).cloned())
            .is_some_and(|v| v.claim_ipc_wait(ticket))
    }

    fn end_ipc_wait(&mut self, vm: VmId, vcpu: usize, ret: SbiRet) {
        if let Some(v) = self.vm(vm).and_then(|vm| vm.vcpus.get(vcpu).cloned()) {
            v.answer_ipc_wait(ret);
            self.wake_receivers = true;
        }
    }

    fn check_range(&self, vm: VmId, gpa: Gpa, len: u64) -> Result<(), SbiError> {
        let vm = self.vm(vm).ok_or(SbiError::Failed)?;
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
        self.vm(vm)
            .ok_or(SbiError::Failed)?
            .read(gpa, buf)
            .map_err(bad_address)
    }

    fn write_guest(&mut self, vm: VmId, gpa: Gpa, data: &[u8]) -> Result<(), SbiError> {
        let target = self.vm(vm).ok_or(SbiError::Failed)?;
        if self.is_caller(vm) {
            return target
                .write(gpa, data, &mut self.stale)
                .map_err(bad_address);
        }
        // Another VM's mappings (a child's): its harts flush before the frames it
        // stopped using are let go, now.
        let mut stale = crate::isolation::Stale::new();
        let r = target.write(gpa, data, &mut stale).map_err(bad_address);
        cow::finish(&target, self.hart.slot, stale);
        r
    }

    fn copy_guest(
        &mut self,
        from: VmId,
        from_gpa: Gpa,
        to: VmId,
        to_gpa: Gpa,
        len: u64,
    ) -> Result<(), SbiError> {
        let src = self.vm(from).ok_or(SbiError::Failed)?;
        let dst = self.vm(to).ok_or(SbiError::Failed)?;
        let mut stale = crate::isolation::Stale::new();
        let r = src
            .copy_into(from_gpa, &dst, to_gpa, len, &mut stale)
            .map_err(bad_address);
        cow::finish(&dst, self.hart.slot, stale);
        r
    }

    fn kept_pages(&self, args: &SpawnArgs) -> u64 {
        // The Origin's image and DTB stores: their pages and page tables.
        ImageStore::pages_for(args.image_size).saturating_add(ImageStore::pages_for(args.dtb_size))
    }

    fn facts(&self) -> HostFacts {
        let host = crate::platform::host();
        let (a, b, c) = crate::version_parts();
        HostFacts {
            hv_version: (a << 32) | (b << 16) | c,
            features: if crate::guestmode::is_pmp() {
                features::PMP_FALLBACK
            } else {
                features::HW_VIRT | features::GSTAGE | features::COW_FORK
            } | features::IPC
                | features::CONSOLE
                | features::QUOTAS
                | features::HW_TRUST,
            host_cores: host.harts.len() as u32,
            timer_freq_hz: host.timebase_frequency,
        }
    }

    fn layout(&self, vm: VmId) -> VmLayout {
        // The tree resolved `vm`, so it is registered; all zero should it not be.
        let vm = lookup(vm);
        let boot = vm.as_ref().and_then(|v| v.boot);
        VmLayout {
            ram: vm.map_or(Gpa::new(0), |v| v.ram.start()),
            entry: boot.map(|b| b.entry),
            dtb: boot.map(|b| b.dtb),
        }
    }

    fn can_fork(&self) -> bool {
        !crate::guestmode::is_pmp()
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
        me.save();
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
                    memory.release();
                    return Err(failed(e));
                }
            }
        } else {
            Frozen(None)
        };
        let me_index = me.shared.index;
        for st in states.iter_mut().filter(|st| st.index == me_index) {
            // The child sees FORK return a0 = a1 = 0, after the ecall.
            st.ctx.frame.regs[10] = 0;
            st.ctx.frame.regs[11] = 0;
            st.ctx.pc += 4;
        }
        let child_vm = vm::adopt(
            child,
            format!("{}/{}", parent_vm.name, child_cid),
            memory,
            parent_vm.ram,
            parent_vm.vcpu_count(),
            parent_vm.priority,
            parent_vm.clone_devices(),
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
                devices: child_vm.clone_devices(),
            };
            ORIGINS.lock().insert(child, Origin::Snapshot(snap));
        }
        let how = if parent_vm.mem.lock().as_ref().is_some_and(|m| m.is_pinned()) {
            "copied: the parent's RAM is pinned for DMA"
        } else {
            "shared copy-on-write"
        };
        log::info!(
            "VM {} forked into {} ({} MiB {how})",
            parent_vm.name,
            child_vm.name,
            parent_vm.ram.len() >> 20
        );
        register(child_vm);
        Ok(())
    }

    fn spawn_vm(
        &mut self,
        parent: VmId,
        child: VmId,
        args: &SpawnArgs,
        devices: &[DeviceDef],
    ) -> Result<(), SbiError> {
        let parent = lookup(parent).ok_or(SbiError::Failed)?;
        // The devices exist from now on (the parent may ask for their state while the
        // child is built); they go when the child does (`release_vm`).
        let virtio = crate::virtio::register(child, &parent, devices)?;
        // Built once the tree is unlocked (see `PendingBuild::run`).
        self.build = Some(alloc::boxed::Box::new(PendingBuild::new(
            child,
            Source::Spawn {
                parent,
                args: *args,
                virtio,
            },
        )));
        Ok(())
    }

    fn device_state_size(&self, vm: VmId, device: u64) -> Result<usize, SbiError> {
        let set = crate::virtio::of(vm).ok_or(SbiError::InvalidParam)?;
        let index = usize::try_from(device).map_err(|_| SbiError::InvalidParam)?;
        let size = set.devices.lock().state_size_of(index);
        size.ok_or(SbiError::InvalidParam)
    }

    fn take_device_state(
        &mut self,
        vm: VmId,
        device: u64,
    ) -> Result<(DeviceState, alloc::vec::Vec<QueueState>), SbiError> {
        let set = crate::virtio::of(vm).ok_or(SbiError::InvalidParam)?;
        let index = usize::try_from(device).map_err(|_| SbiError::InvalidParam)?;
        let state = set.devices.lock().take_state(index);
        state
    }

    fn raise_device(&mut self, vm: VmId, device: u64, what: u64) -> Result<(), SbiError> {
        crate::virtio::raise(vm, lookup(vm).as_deref(), device, what)
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
            // An image is built again once the tree is unlocked, its devices reset.
            Some(Origin::Image(o)) => {
                crate::virtio::reset(id);
                self.build = Some(alloc::boxed::Box::new(PendingBuild::new(
                    id,
                    Source::Rebuild(o),
                )));
            }
            None => return Err(SbiError::NotSupported),
        }
        Ok(())
    }

    fn exec_vm(&mut self, id: VmId, args: &SpawnArgs, trusted: bool) -> Result<(), SbiError> {
        let old = lookup(id).ok_or(SbiError::InvalidParam)?;
        // Nothing changes until every page of the image is known to be its RAM.
        let pages = exec_pages(&old, args)?;
        let ram_bytes = args
            .ram_pages
            .checked_mul(PAGE_SIZE)
            .ok_or(SbiError::InvalidParam)?;
        let vcpus = usize::try_from(args.vcpus).map_err(|_| SbiError::InvalidParam)?;
        // Behind PMP the VM's RAM is one block its frames cannot leave: the image is
        // copied out first, while refusing still changes nothing. The host may lack
        // the pages for that moment (the VM's old RAM is still held): DENIED.
        let copied = if crate::guestmode::is_pmp() {
            let store = ImageStore::copy_pages(&old, &pages, args.image_size).map_err(|e| {
                log::warn!("EXEC by VM {} refused: {e}", old.name);
                SbiError::Denied
            })?;
            Some(store)
        } else {
            None
        };
        // The point of no return: its old self stops for good, its image's frames move
        // into the store REBOOT will keep, the rest of its memory goes back, and it is
        // built again from the store once the tree is unlocked.
        ORIGINS.lock().remove(&id);
        VMS.lock().remove(&id);
        stop_for_good(&old, self.hart.slot);
        // Whatever devices it held go back to its own pool, unmapped with its memory.
        crate::devices::release(&old, Some(id));
        let mut stale = crate::isolation::Stale::new();
        let store = match copied {
            Some(store) => Ok(store),
            None => ImageStore::take_pages(&old, &pages, args.image_size, &mut stale),
        };
        cow::finish(&old, self.hart.slot, stale);
        old.release_memory();
        let image = store.map_err(|e| {
            log::warn!("EXEC by VM {}: {e}", old.name);
            SbiError::Failed
        })?;
        log::info!(
            "VM {} becomes the {} KiB image in its memory ({} MiB RAM, {} vCPU(s))",
            old.name,
            args.image_size >> 10,
            ram_bytes >> 20,
            vcpus
        );
        let origin = super::origin::ImageOrigin {
            image,
            dtb: None,
            name: old.name.clone(),
            ram_bytes,
            vcpus,
            priority: u8::try_from(args.priority).unwrap_or(u8::MAX),
            start: true,
            virtual_plic: trusted,
            // Its parent's devices stay its own, reset as on REBOOT.
            virtio: crate::virtio::of(id),
        };
        crate::virtio::reset(id);
        self.build = Some(alloc::boxed::Box::new(PendingBuild::new(
            id,
            Source::Rebuild(origin),
        )));
        Ok(())
    }

    fn release_vm(&mut self, killed: &KilledVm) {
        // Its kept image and its virtio devices go whether or not the VM was ever
        // built.
        ORIGINS.lock().remove(&killed.id);
        crate::virtio::forget(killed.id);
        abandon_build(killed.id, self.hart.slot);
        let vm = VMS.lock().remove(&killed.id);
        let Some(vm) = vm else {
            return;
        };
        retire(&vm, self.hart.slot);
        // Off every hart and its memory gone: its devices go back to its parent's pool
        // (a device is never reachable by two VMs at once).
        crate::devices::release(&vm, killed.parent);
        log::info!(
            "VM {} terminated (hypervisor heap in use: {} KiB)",
            vm.name,
            crate::heap::used_bytes() >> 10
        );
    }

    fn revoke_hw_access(&mut self, vm: VmId, parent: Option<VmId>) {
        let Some(vm) = lookup(vm) else {
            return;
        };
        crate::devices::release(&vm, parent);
        // Its harts forget the device mappings before the call returns.
        let mut stale = crate::isolation::Stale::new();
        stale.write_protected();
        cow::finish(&vm, self.hart.slot, stale);
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
        let copied = pm.share_into(cm.as_mut(), parent_gpa, child_gpa, size, p);
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
                        Ok(()) | Err(crate::isolation::CowError::NotCow) => {}
                        Err(crate::isolation::CowError::OutOfMemory) => {
                            return Err(SbiError::Failed)
                        }
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
        vm: VmId,
        parent: Option<VmId>,
        hpa: Hpa,
        gpa: Gpa,
        size: u64,
    ) -> Result<(), SbiError> {
        let vm = lookup(vm).ok_or(SbiError::Failed)?;
        crate::devices::map_mmio(&vm, parent, hpa, gpa, size)
    }

    fn route_irq(&mut self, vm: VmId, parent: Option<VmId>, irq: u64) -> Result<(), SbiError> {
        let vm = lookup(vm).ok_or(SbiError::Failed)?;
        crate::devices::route_irq(&vm, parent, irq)
    }

    fn release_device(
        &mut self,
        vm: VmId,
        parent: Option<VmId>,
        named: DeviceRef,
    ) -> Result<(), SbiError> {
        let vm = lookup(vm).ok_or(SbiError::Failed)?;
        crate::devices::release_device(&vm, named, parent)?;
        // Its harts forget the device's mappings before the call returns.
        let mut stale = crate::isolation::Stale::new();
        stale.write_protected();
        cow::finish(&vm, self.hart.slot, stale);
        Ok(())
    }

    fn restart_host(&mut self) {
        log::info!("the Root VM has ended, restarting the host");
        crate::platform::restart_host();
    }
}

/// The GPA of each 4 KiB page of an EXEC image, in order (`SPAWN_PAGE_LIST`: the list's
/// entries; else consecutive pages), each checked page-aligned and inside `vm`'s RAM
/// (`InvalidAddress`). At most `EXEC_MAX_IMAGE` / 4 KiB entries (the tree checked the
/// size).
fn exec_pages(vm: &Vm, args: &SpawnArgs) -> Result<alloc::vec::Vec<Gpa>, SbiError> {
    let n = args.image_size.div_ceil(PAGE_SIZE);
    let mut pages = alloc::vec::Vec::with_capacity(n as usize);
    for i in 0..n {
        let gpa = if args.flags & flags::SPAWN_PAGE_LIST != 0 {
            let at = args
                .image_gpa
                .checked_add(i * 8)
                .ok_or(SbiError::InvalidAddress)?;
            let mut entry = [0u8; 8];
            vm.read(Gpa::new(at), &mut entry)
                .map_err(|_| SbiError::InvalidAddress)?;
            Gpa::new(u64::from_le_bytes(entry))
        } else {
            Gpa::new(args.image_gpa)
                .checked_add(i * PAGE_SIZE)
                .ok_or(SbiError::InvalidAddress)?
        };
        if !gpa.is_page_aligned() || !vm.ram.contains_span(gpa, PAGE_SIZE) {
            return Err(SbiError::InvalidAddress);
        }
        pages.push(gpa);
    }
    Ok(pages)
}
