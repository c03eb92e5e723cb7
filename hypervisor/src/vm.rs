//! Virtual machines as the hypervisor runs them: a VM's memory, vCPU slots, scheduling
//! flags and VMID (allocated here, reused once the VM is gone).

use crate::isolation::{Activation, Isolation};
use crate::mem;
use crate::vcpu_shared::VcpuShared;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use diosix_core::addr::{Gpa, Hpa, Range};
use diosix_core::gstage::{AccessError, Perms};
use diosix_core::sbi::HartState;
use diosix_core::tree::VmId;
use diosix_core::vmid::VmidAllocator;
use diosix_core::vplic::VirtualPlic;
use spin::Mutex;

/// Where every guest's RAM starts, as the guest sees it.
pub const GUEST_RAM_BASE: Gpa = Gpa::new(0x8000_0000);

/// Where a built VM boots: its image's entry point and its device tree.
#[derive(Clone, Copy, Debug)]
pub struct BootPoint {
    /// The entry point.
    pub entry: Gpa,
    /// The device tree.
    pub dtb: Gpa,
}

/// A virtual machine.
pub struct Vm {
    /// Its node in the VM tree.
    pub id: VmId,
    /// Name for logs (never shown to other VMs).
    pub name: String,
    /// G-stage VMID.
    pub vmid: u16,
    /// How a hart switches to this VM's memory.
    pub activation: Activation,
    /// Guest RAM (`None` once released).
    pub mem: Mutex<Option<Box<dyn Isolation>>>,
    /// Its RAM range (immutable copy, readable without the lock).
    pub ram: Range<Gpa>,
    /// Where its boot vCPU was built to start and its device tree was put (`None` for
    /// a FORK clone, which resumes where its parent was).
    pub boot: Option<BootPoint>,
    /// One entry per vCPU, indexed by guest hart ID.
    pub vcpus: Vec<Arc<VcpuShared>>,
    /// Scheduling priority of its vCPUs.
    pub priority: u8,
    /// The Root VM: its console is the UART and its end restarts the host.
    pub is_root: bool,
    /// Paused by its parent (STOP).
    pub stopped: AtomicBool,
    /// Held still while a FORK shares its memory.
    pub held: AtomicBool,
    /// Terminated: its vCPUs are dropped wherever they are found.
    pub dead: AtomicBool,
    /// Its virtual PLIC (at [`crate::vplic::VPLIC_BASE`]), if it has one.
    pub plic: Option<Mutex<VirtualPlic>>,
    /// Bytes of its virtual PLIC's window (0 without one).
    pub plic_window: u64,
    /// Where the VM it was forked from (or an ancestor clone) had host devices mapped:
    /// their registers read as zero and ignore writes here (see [`crate::mmio::detached`]).
    pub detached: Vec<Range<Gpa>>,
    /// Whether touching `detached` has been logged (once per VM).
    pub detached_logged: AtomicBool,
    /// The virtio devices its parent serves it, if any (behind windows at
    /// `diosix_abi::devices::MMIO_BASE`).
    /// (`crate::virtio` keeps who serves them.)
    pub virtio: Option<Arc<Mutex<diosix_core::childdev::ChildDevices>>>,
    /// Whether firmware events (SBI PMU) are counted for this VM's vCPUs: set when
    /// one of them first starts or reads a firmware counter, so VMs that never do
    /// pay nothing for them on their IPIs, fences and timers.
    pub fw_events: AtomicBool,
}

impl Vm {
    /// A copy of its virtual PLIC for a FORK clone or a snapshot: the guest's
    /// programming (priorities, enables, thresholds) is kept, but no interrupt is
    /// pending or in service, since the copy holds none of this VM's devices.
    pub fn plic_copy(&self) -> Option<VirtualPlic> {
        let mut copy = self.plic.as_ref()?.lock().clone();
        for source in 1..=copy.ndev() {
            copy.reset_source(source);
        }
        copy.resync_lines();
        Some(copy)
    }

    /// What a FORK clone of this VM cannot reach but its copy of the guest OS may still
    /// touch: where this VM has host devices mapped, its virtio windows (a device is
    /// its parent's promise to this VM alone), and what it inherited itself.
    pub fn device_gpas(&self) -> Vec<Range<Gpa>> {
        let mut v = self
            .mem
            .lock()
            .as_ref()
            .map_or_else(Vec::new, |m| m.mmio_ranges());
        if let Some(devices) = self.virtio.as_ref() {
            let windows = devices.lock().len() as u64 * diosix_abi::devices::MMIO_STRIDE;
            v.extend(Range::new(
                Gpa::new(diosix_abi::devices::MMIO_BASE),
                windows,
            ));
        }
        v.extend(self.detached.iter().copied());
        v
    }

    /// What a FORK clone of this VM keeps of its devices.
    pub fn clone_devices(&self) -> CloneDevices {
        CloneDevices {
            plic: self.plic_copy(),
            detached: self.device_gpas(),
        }
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// Whether its vCPUs may be scheduled.
    pub fn can_run(&self) -> bool {
        // Three plain loads and one acquire fence (what three acquire loads give, at
        // a third of the fences: this runs for every queued vCPU on every switch).
        let blocked = self.stopped.load(Ordering::Relaxed)
            | self.held.load(Ordering::Relaxed)
            | self.dead.load(Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Acquire);
        !blocked
    }

    /// Copies guest memory at `gpa` into `out`.
    pub fn read(&self, gpa: Gpa, out: &mut [u8]) -> Result<(), AccessError> {
        let mut guard = self.mem.lock();
        let m = guard.as_mut().ok_or(AccessError::NotMapped(gpa))?;
        // Usually the buffer is backed already: the read checks every page before it
        // copies anything, so trying first costs nothing when it is not.
        if m.read(gpa, out).is_ok() {
            return Ok(());
        }
        self.populate_in_ram(m.as_mut(), gpa, out.len() as u64)?;
        m.read(gpa, out)
    }

    /// Translates one GPA through its G-stage table (backing it first if it is RAM
    /// that was never touched).
    pub fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        let mut guard = self.mem.lock();
        let m = guard.as_mut()?;
        self.populate_in_ram(m.as_mut(), gpa, 1).ok()?;
        m.translate(gpa)
    }

    /// Backs the lazily backed RAM in `[gpa, gpa+len)` before the hypervisor touches it
    /// for the guest; the walk covers only the part inside the VM's RAM, so a hostile
    /// length costs no more than the RAM the VM was charged for.
    pub fn populate_in_ram(
        &self,
        m: &mut dyn Isolation,
        gpa: Gpa,
        len: u64,
    ) -> Result<(), AccessError> {
        let Some(end) = gpa.raw().checked_add(len) else {
            return Ok(());
        };
        let start = gpa.raw().max(self.ram.start().raw());
        let end = end.min(self.ram.end().raw());
        if start < end {
            m.populate(Gpa::new(start), end - start)
                .map_err(|_| AccessError::NotMapped(Gpa::new(start)))?;
        }
        Ok(())
    }
}

impl Vm {
    /// Logs how often each vCPU left guest mode, and why (issue 14's first tool: where
    /// a workload's time goes in the hypervisor).
    pub fn log_exits(&self) {
        for v in &self.vcpus {
            log::info!(
                "VM {} vCPU {} exits: {}",
                self.name,
                v.index,
                v.exit_summary()
            );
        }
    }

    /// Returns the VM's memory (RAM and page tables) to the host now, if it still has
    /// it. The caller has made sure no vCPU of the VM runs any more (a dead VM's
    /// memory is released by whoever killed it, before the VM's charge can be reused:
    /// see `vmtree::retire`); later accesses through the VM find no memory.
    pub fn release_memory(&self) {
        let Some(m) = self.mem.lock().take() else {
            return;
        };
        self.log_exits();
        m.release();
        log::info!(
            "VM {} (VMID {}): memory released; host free pages: {}",
            self.name,
            self.vmid,
            mem::unpromised_free_pages()
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Normally released already; a VM that never ran (a failed build) is not.
        self.release_memory();
        free_vmid(self.vmid);
    }
}

/// VMIDs in use (0 is never used). Freed VMIDs are reused; every vCPU load flushes the
/// G-stage TLB, so no stale translation survives a reuse.
static VMIDS: Mutex<VmidAllocator> = Mutex::new(VmidAllocator::new());

/// Takes the lowest free VMID, `None` if every one is in use.
pub fn alloc_vmid() -> Option<u16> {
    VMIDS.lock().alloc()
}

/// Returns a VMID taken with [`alloc_vmid`].
pub fn free_vmid(vmid: u16) {
    VMIDS.lock().free(vmid);
}

/// What a FORK clone (or a snapshot of one) keeps of its parent's devices: a copy of
/// its virtual PLIC, and where its device registers were (see [`Vm::detached`]).
#[derive(Clone, Default)]
pub struct CloneDevices {
    /// The virtual PLIC as the guest programmed it, nothing pending.
    pub plic: Option<VirtualPlic>,
    /// The parent's device register ranges.
    pub detached: Vec<Range<Gpa>>,
}

/// Wraps memory shared with a FORK child as a VM with `vcpus` fresh vCPU slots (their
/// states are queued by the caller). `None` if no VMID is free.
pub fn adopt(
    id: VmId,
    name: String,
    memory: Box<dyn Isolation>,
    ram: Range<Gpa>,
    vcpus: usize,
    priority: u8,
    devices: CloneDevices,
) -> Option<Arc<Vm>> {
    let CloneDevices { plic, detached } = devices;
    let Some(vmid) = alloc_vmid() else {
        memory.release();
        return None;
    };
    let Some(activation) = memory.activation(vmid) else {
        memory.release();
        free_vmid(vmid);
        return None;
    };
    Some(Arc::new(Vm {
        id,
        name,
        vmid,
        activation,
        mem: Mutex::new(Some(memory)),
        ram,
        boot: None,
        vcpus: (0..vcpus)
            .map(|i| Arc::new(VcpuShared::new(i, HartState::Stopped)))
            .collect(),
        priority,
        is_root: false,
        stopped: AtomicBool::new(false),
        held: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        plic_window: plic.as_ref().map_or(0, VirtualPlic::window_size),
        plic: plic.map(Mutex::new),
        detached,
        detached_logged: AtomicBool::new(false),
        // A device is its parent's promise to one child: a clone has none.
        virtio: None,
        // A FORK clone may have inherited running firmware counters.
        fw_events: AtomicBool::new(true),
    }))
}
