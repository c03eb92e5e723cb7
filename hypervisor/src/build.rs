//! Building a VM from an image: fresh zeroed RAM, the kernel (ELF or Linux `Image`)
//! and initrd loaded as the loader planned, a device tree generated (or the creator's),
//! and its vCPUs, for the caller to queue.

use crate::guestmem::{GStageMemory, CANCELLED};
use crate::image::{Bytes, CopyError};
use crate::isolation::Isolation;
use crate::pmpmem::PmpMemory;
use crate::vcpu::{Vcpu, Wait};
use crate::vcpu_shared::VcpuShared;
use crate::vm::{alloc_vmid, free_vmid, Vm, GUEST_RAM_BASE};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicBool;
use diosix_core::addr::{Gpa, Range, PAGE_SIZE};
use diosix_core::hostfdt::{HostDevice, HostPlatform};
use diosix_core::sbi::HartState;
use diosix_core::tree::VmId;
use diosix_core::{guestfdt, loader};
use spin::Mutex;

/// Everything needed to build one VM.
pub struct VmSpec<'a> {
    /// Tree node.
    pub id: VmId,
    /// Name for logs.
    pub name: String,
    /// RAM size in bytes (page multiple).
    pub ram_bytes: u64,
    /// vCPU count.
    pub vcpus: usize,
    /// vCPU priority.
    pub priority: u8,
    /// Kernel image: ELF or Linux `Image`.
    pub kernel: Bytes<'a>,
    /// Optional initrd.
    pub initrd: Option<Bytes<'a>>,
    /// Optional command line.
    pub cmdline: Option<&'a str>,
    /// A device tree to use instead of a generated one.
    pub dtb: Option<Bytes<'a>>,
    /// The Root VM.
    pub is_root: bool,
    /// Start the boot vCPU now (else it waits for START).
    pub start: bool,
    /// Checked between steps of at most 2 MiB: when it holds, the build stops and
    /// gives back everything it took (the VM was killed while being built).
    pub cancelled: &'a dyn Fn() -> bool,
    /// Host devices the VM will hold (the Root VM): described in its device tree at
    /// their host addresses, with a virtual PLIC for their interrupts. The caller maps
    /// and routes them once the VM exists.
    pub devices: &'a [HostDevice],
    /// A virtual PLIC even without `devices` (a trusted VM, which may take host
    /// devices later), on a host that has a PLIC.
    pub virtual_plic: bool,
    /// RAM at GPA = HPA, pinned (for devices that master the bus); the kernel must be
    /// a Linux `Image`, which runs wherever it is put.
    pub pinned: bool,
    /// Virtio devices its parent serves it: a virtual PLIC for their interrupts and a
    /// `virtio,mmio` node for each in its device tree.
    pub virtio: Option<Arc<Mutex<diosix_core::childdev::ChildDevices>>>,
}

/// A VM just built, with its vCPUs ready to queue.
pub struct Built {
    /// The VM.
    pub vm: Arc<Vm>,
    vcpus: Vec<Vcpu>,
}

impl Built {
    /// Queues its vCPUs (the boot one runnable if it was built to start) and returns
    /// the VM.
    pub fn enqueue(self) -> Arc<Vm> {
        for v in self.vcpus {
            crate::sched::enqueue(Box::new(v));
        }
        self.vm
    }
}

/// Why [`build_vm`] did not build a VM.
#[derive(Debug)]
pub enum BuildError {
    /// Something the VM's creator chose (vCPU count, RAM size, image, command line,
    /// device tree) cannot be built: `INVALID_PARAM` for a guest.
    Refused(String),
    /// The host could not provide what an admitted VM needs (RAM, a VMID): `FAILED`.
    Host(String),
    /// [`VmSpec::cancelled`] held: everything taken was given back.
    Cancelled,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Refused(e) | BuildError::Host(e) => f.write_str(e),
            BuildError::Cancelled => f.write_str(CANCELLED),
        }
    }
}

/// Builds a VM: fresh zeroed RAM, the kernel (and initrd) loaded, a device tree, and
/// its vCPUs, for the caller to queue (the boot vCPU runnable if `spec.start`, the rest
/// HSM-stopped). Every size and offset in the image is checked by the loader, before
/// any RAM is taken; on failure every page is returned.
pub fn build_vm(host: &HostPlatform, spec: &VmSpec<'_>) -> Result<Built, BuildError> {
    use BuildError::{Host, Refused};
    let vcpus = spec.vcpus;
    if vcpus == 0 || vcpus > diosix_core::sbi::MAX_VCPUS {
        return Err(Refused(format!(
            "{vcpus} vCPUs asked (1..={})",
            diosix_core::sbi::MAX_VCPUS
        )));
    }
    // RAM at GPA = HPA is taken first: where it lands is where the guest's RAM is.
    // Without H every VM's is (PMP); with H, a VM's that drives DMA-capable devices.
    let mut pinned: Option<Box<dyn Isolation>> = None;
    let ram = if crate::guestmode::is_pmp() {
        let m = PmpMemory::new(spec.ram_bytes).map_err(Host)?;
        let ram = m.ram();
        pinned = Some(Box::new(m));
        ram
    } else if spec.pinned {
        let (m, ram) = GStageMemory::new_identity(spec.ram_bytes).map_err(Host)?;
        pinned = Some(Box::new(m));
        ram
    } else {
        Range::new(GUEST_RAM_BASE, spec.ram_bytes)
            .ok_or_else(|| Refused("RAM size overflows".into()))?
    };
    let give_back = |pinned: Option<Box<dyn Isolation>>| {
        if let Some(m) = pinned {
            m.release();
        }
    };
    // Only the headers are parsed, from a bounded window; the rest is copied.
    let planned = spec
        .kernel
        .window(loader::HEADER_WINDOW)
        .map_err(|e| Host(format!("reading the image: {e:?}")))
        .and_then(|window| {
            loader::plan_window(&window, spec.kernel.len(), ram)
                .map_err(|e| Refused(format!("kernel image: {e}")))
        });
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            give_back(pinned);
            return Err(e);
        }
    };
    // Room for the device tree: the generated one fits the loader's reserve; one the
    // creator supplies (at most `limits::SPAWN_MAX_DTB`) gets its own size.
    let dtb_room = spec.dtb.as_ref().map_or(loader::DTB_RESERVE, |d| {
        d.len().next_multiple_of(PAGE_SIZE).max(loader::DTB_RESERVE)
    });
    let layout =
        match loader::boot_layout(&plan, ram, spec.initrd.as_ref().map(Bytes::len), dtb_room) {
            Ok(l) => l,
            Err(e) => {
                give_back(pinned);
                return Err(Refused(format!("layout in {} MiB: {e}", ram.len() >> 20)));
            }
        };
    // A virtual PLIC for the devices' interrupts, one context per vCPU.
    let virtio_count = spec.virtio.as_ref().map_or(0, |v| v.lock().len());
    let wants_plic = !spec.devices.is_empty()
        || virtio_count > 0
        || (spec.virtual_plic && host.plic_ndev.is_some());
    let plic = if !wants_plic {
        None
    } else {
        // Room for the virtio sources even on a host with a small PLIC (or none).
        let below_events = host.plic_ndev.unwrap_or(0).max(virtio_count as u32);
        let sources = crate::vplic::sources_for(Some(below_events));
        match diosix_core::vplic::VirtualPlic::new(sources, vcpus as u32) {
            Ok(p) => Some(p),
            Err(e) => {
                give_back(pinned);
                return Err(Host(format!("virtual PLIC: {e:?}")));
            }
        }
    };
    let device_regs: Vec<Vec<Range<Gpa>>> = spec
        .devices
        .iter()
        .map(|d| {
            d.regs
                .iter()
                .filter_map(|r| Range::new(Gpa::new(r.start().raw()), r.len()))
                .collect()
        })
        .collect();
    let mut guest_devices: Vec<guestfdt::GuestDevice<'_>> = spec
        .devices
        .iter()
        .zip(&device_regs)
        .map(|(d, regs)| guestfdt::GuestDevice {
            name: &d.name,
            regs,
            irqs: &d.irqs,
            props: &d.props,
        })
        .collect();
    let virtio_nodes = crate::virtio::fdt_nodes(virtio_count);
    guest_devices.extend(virtio_nodes.iter().map(|n| n.as_guest_device()));
    let generated;
    let dtb: Bytes<'_> = match &spec.dtb {
        Some(d) => d.clone(),
        None => {
            let boot_hart = &host.harts[0];
            let extensions = guestfdt::advertised_extensions(
                boot_hart.extensions.iter().map(String::as_str),
                guestfdt::VirtFeatures {
                    sstc: crate::platform::guest_sstc(),
                    sscofpmf: crate::pmu::guest_overflow(),
                },
            );
            let seed = crate::entropy::guest_seed();
            generated = guestfdt::generate(&guestfdt::GuestFdtConfig {
                vcpus,
                ram,
                isa_extensions: &extensions,
                cpu_map: true,
                mmu_type: guestfdt::MmuType::Sv39,
                timebase_frequency: host.timebase_frequency,
                bootargs: spec.cmdline,
                initrd: layout.initrd,
                rng_seed: seed.as_ref().map(|s| &s[..]),
                plic: plic.as_ref().map(|p| guestfdt::GuestPlic {
                    base: crate::vplic::VPLIC_BASE,
                    size: p.window_size(),
                    ndev: p.ndev(),
                    events_irq: crate::vplic::events_source(p),
                }),
                devices: &guest_devices,
            });
            match generated {
                Ok(ref d) => Bytes::Slice(d),
                Err(e) => {
                    give_back(pinned);
                    return Err(Refused(format!("device tree: {e}")));
                }
            }
        }
    };
    if dtb.len() > layout.dtb.len() {
        give_back(pinned);
        return Err(Refused("device tree too large".into()));
    }
    let Some(vmid) = alloc_vmid() else {
        give_back(pinned);
        return Err(Host("out of VMIDs".into()));
    };
    let made = match pinned {
        Some(m) => Ok(m),
        None => {
            GStageMemory::new_lazy(ram, spec.cancelled).map(|m| Box::new(m) as Box<dyn Isolation>)
        }
    };
    let mut memory: Box<dyn Isolation> = match made {
        Ok(m) => m,
        Err(e) => {
            free_vmid(vmid);
            return Err(if e == CANCELLED {
                BuildError::Cancelled
            } else {
                Host(e)
            });
        }
    };
    // Copied in steps, so a cancellation is noticed within one step.
    let copy =
        |memory: &mut dyn Isolation, bytes: &Bytes<'_>, sub: core::ops::Range<usize>, gpa: Gpa| {
            bytes
                .copy_into(sub, memory, gpa, spec.cancelled)
                .map_err(|e| match e {
                    CopyError::Cancelled => BuildError::Cancelled,
                    CopyError::Access(e) => Host(format!("loading: {e}")),
                })
        };
    let whole = |b: &Bytes<'_>| 0..usize::try_from(b.len()).unwrap_or(usize::MAX);
    let load = |memory: &mut dyn Isolation| -> Result<(), BuildError> {
        for seg in &plan.segments {
            copy(memory, &spec.kernel, seg.file.clone(), seg.gpa)?;
        }
        if let (Some(range), Some(initrd)) = (layout.initrd, &spec.initrd) {
            copy(memory, initrd, whole(initrd), range.start())?;
        }
        copy(memory, &dtb, whole(&dtb), layout.dtb.start())
    };
    let activation = memory.activation(vmid);
    if let Err(e) = load(memory.as_mut()) {
        memory.release();
        free_vmid(vmid);
        return Err(e);
    }
    let Some(activation) = activation else {
        memory.release();
        free_vmid(vmid);
        return Err(Host("VMID out of range".into()));
    };
    let shared: Vec<Arc<VcpuShared>> = (0..vcpus)
        .map(|i| {
            let state = if i == 0 && spec.start {
                HartState::Started
            } else {
                HartState::Stopped
            };
            Arc::new(VcpuShared::new(i, state))
        })
        .collect();
    let vm = Arc::new(Vm {
        id: spec.id,
        name: spec.name.clone(),
        vmid,
        activation,
        mem: Mutex::new(Some(memory)),
        ram,
        boot: Some(crate::vm::BootPoint {
            entry: plan.entry,
            dtb: layout.dtb.start(),
        }),
        vcpus: shared.clone(),
        priority: spec.priority,
        is_root: spec.is_root,
        stopped: AtomicBool::new(false),
        held: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        plic_window: plic
            .as_ref()
            .map_or(0, diosix_core::vplic::VirtualPlic::window_size),
        plic: plic.map(Mutex::new),
        detached: Vec::new(),
        detached_logged: AtomicBool::new(false),
        virtio: spec.virtio.clone(),
        fw_events: AtomicBool::new(false),
    });
    log::info!(
        "VM {} (VMID {}): {:?} kernel, entry {}, {} vCPU(s), {} MiB RAM at {}, DTB at {}{}",
        vm.name,
        vm.vmid,
        plan.format,
        plan.entry,
        vcpus,
        ram.len() >> 20,
        ram.start(),
        layout.dtb.start(),
        match layout.initrd {
            Some(r) => format!(", initrd at {} ({} KiB)", r.start(), r.len() >> 10),
            None => String::new(),
        }
    );
    let mut vcpus = Vec::with_capacity(shared.len());
    for s in shared {
        let boot = s.index == 0 && spec.start;
        let (wait, pc) = if boot {
            (Wait::None, plan.entry)
        } else {
            (Wait::Stopped, Gpa::new(0))
        };
        vcpus.push(Vcpu::new(vm.clone(), s, pc, layout.dtb.start().raw(), wait));
    }
    Ok(Built { vm, vcpus })
}
