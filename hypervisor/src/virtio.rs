//! A child's virtio devices as the hypervisor runs them: the transports
//! (`diosix_core::childdev`) behind the child's virtio-mmio windows, the interrupt
//! line of each on the child's virtual PLIC, and the parent's doorbell.
//!
//! The devices outlive any one incarnation of the child: a REBOOT builds a new `Vm`
//! but keeps the same [`ChildVirtio`] (reset), so the parent's backend sees the reset
//! counted and never loses track. They are found by tree id ([`of`]) for the parent's
//! DEVICE_STATE and DEVICE_RAISE, and through [`Vm::virtio`] (the transports alone,
//! so `vm` need not know this module) on the child's own traps.
//!
//! Lock order: `vmtree`'s `TREE`, then [`REGISTRY`] (one map operation), then a
//! child's `devices`, then its virtual PLIC (a line follows the transport's register
//! under the devices' lock, so two harts raising and acknowledging cannot reorder it).
//! A PLIC completion drops the PLIC's lock before it looks at the devices.

use crate::hart::HartLocal;
use crate::vm::Vm;
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use diosix_abi::devices::FIRST_IRQ;
use diosix_core::addr::Gpa;
use diosix_core::childdev::{self, ChildDevices, DeviceDef};
use diosix_core::tree::{SbiError, VmId};
use spin::Mutex;

/// One child's virtio devices and whom they ring.
pub struct ChildVirtio {
    /// The transports (each incarnation of the child holds them too, as
    /// [`Vm::virtio`]).
    pub devices: Arc<Mutex<ChildDevices>>,
    /// The parent, whose event interrupt a doorbell raises.
    parent: Weak<Vm>,
}

/// Every child with devices, by tree id.
static REGISTRY: Mutex<BTreeMap<VmId, Arc<ChildVirtio>>> = Mutex::new(BTreeMap::new());

/// Creates (or, for a SPAWN that replaces a child, replaces) `child`'s devices as
/// `parent` declared them. `InvalidParam` if the transports refuse a definition.
pub fn register(
    child: VmId,
    parent: &Arc<Vm>,
    defs: &[DeviceDef],
) -> Result<Option<Arc<ChildVirtio>>, SbiError> {
    if defs.is_empty() {
        REGISTRY.lock().remove(&child);
        return Ok(None);
    }
    let set = Arc::new(ChildVirtio {
        devices: Arc::new(Mutex::new(ChildDevices::new(defs)?)),
        parent: Arc::downgrade(parent),
    });
    REGISTRY.lock().insert(child, set.clone());
    Ok(Some(set))
}

/// `child`'s devices, if it has any.
pub fn of(child: VmId) -> Option<Arc<ChildVirtio>> {
    REGISTRY.lock().get(&child).cloned()
}

/// `child` is gone: its devices go with it.
pub fn forget(child: VmId) {
    REGISTRY.lock().remove(&child);
}

/// The child's virtual PLIC source of device `index`.
fn source_of(index: usize) -> u32 {
    FIRST_IRQ + index as u32
}

/// Moves device `index`'s line on `vm`'s virtual PLIC to `level` and passes the
/// change to its vCPUs (`this_slot`: the caller's hart if a vCPU of `vm` runs on it
/// and the caller syncs it, else `usize::MAX`). Called with the devices' lock held.
fn set_line(vm: &Vm, index: usize, level: bool, this_slot: usize) {
    let Some(plic) = vm.plic.as_ref() else {
        return;
    };
    let mut p = plic.lock();
    let source = source_of(index);
    if level {
        p.raise(source);
    } else {
        p.lower(source);
    }
    crate::vplic::deliver(vm, &mut p, this_slot);
}

/// Raises the event interrupt of `child`'s parent: a device went from nothing
/// pending to something.
fn ring_parent(child: VmId) {
    if let Some(parent) = of(child).and_then(|set| set.parent.upgrade()) {
        crate::vplic::raise_events(&parent);
    }
}

/// A load or store of the running vCPU that faulted at `gpa`: if it is in one of its
/// VM's device windows, the access is emulated and true returned.
pub fn emulate(hart: &mut HartLocal, gpa: Gpa, store_fault: bool) -> bool {
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return false;
    };
    let Some(set) = vm.virtio.clone() else {
        return false;
    };
    // Most faults of such a VM are elsewhere (its RAM's first touches): those are
    // told apart without the devices' lock; the count itself never changes.
    if childdev::window_of(gpa, diosix_abi::devices::MAX_DEVICES).is_none() {
        return false;
    }
    let count = set.lock().len();
    let Some((index, offset)) = childdev::window_of(gpa, count) else {
        return false;
    };
    let slot = hart.slot;
    let mut wake = false;
    crate::mmio::complete(hart, &vm, store_fault, |access, stored| {
        let mut devices = set.lock();
        let o = devices.access(
            index,
            offset,
            u32::from(access.width),
            stored.map(|v| v as u32),
        )?;
        if let Some(level) = o.line {
            set_line(&vm, index, level, slot);
        }
        wake = o.wake_parent;
        Ok::<u64, diosix_core::virtio_mmio::Fault>(u64::from(o.value))
    });
    if wake {
        ring_parent(vm.id);
    }
    if let Some(v) = hart.current.as_ref() {
        v.sync_ext_line_live();
    }
    true
}

/// `vm` completed `source` at its virtual PLIC (the PLIC's lock released): a device
/// whose line is still up interrupts again, as a level line would.
pub fn completed(vm: &Vm, source: u32, slot: usize) {
    let Some(set) = vm.virtio.as_ref() else {
        return;
    };
    let Some(index) = source.checked_sub(FIRST_IRQ).map(|i| i as usize) else {
        return;
    };
    let devices = set.lock();
    if devices.line(index) {
        set_line(vm, index, true, slot);
    }
}

/// DEVICE_RAISE on `child`'s device `index`; `child_vm` is its running incarnation, if
/// built.
pub fn raise(child: VmId, child_vm: Option<&Vm>, index: u64, what: u64) -> Result<(), SbiError> {
    let set = of(child).ok_or(SbiError::InvalidParam)?;
    let index = usize::try_from(index).map_err(|_| SbiError::InvalidParam)?;
    let mut devices = set.devices.lock();
    if devices.raise(index, what)? {
        if let Some(vm) = child_vm {
            set_line(vm, index, true, usize::MAX);
        }
    }
    Ok(())
}

/// `child` is rebooting: every device back to its reset state, the parent rung.
pub fn reset(child: VmId) {
    if let Some(set) = of(child) {
        let wake = set.devices.lock().reset_all();
        if wake {
            ring_parent(child);
        }
    }
}

/// A `virtio,mmio` node of a child's device tree.
pub struct FdtNode {
    name: alloc::string::String,
    regs: [diosix_core::addr::Range<Gpa>; 1],
    irqs: [u32; 1],
    props: [(alloc::string::String, alloc::vec::Vec<u8>); 1],
}

impl FdtNode {
    /// As the device-tree generator takes it.
    pub fn as_guest_device(&self) -> diosix_core::guestfdt::GuestDevice<'_> {
        diosix_core::guestfdt::GuestDevice {
            name: &self.name,
            regs: &self.regs,
            irqs: &self.irqs,
            props: &self.props,
        }
    }
}

/// The device-tree nodes of `count` devices: window *i* and source *i* + 1, where
/// QEMU `virt` puts its own virtio-mmio transports.
pub fn fdt_nodes(count: usize) -> alloc::vec::Vec<FdtNode> {
    (0..count)
        .filter_map(|i| {
            let base = childdev::window_gpa(i);
            Some(FdtNode {
                name: alloc::format!("virtio_mmio@{:x}", base.raw()),
                regs: [diosix_core::addr::Range::new(
                    base,
                    diosix_abi::devices::MMIO_STRIDE,
                )?],
                irqs: [source_of(i)],
                props: [("compatible".into(), b"virtio,mmio\0".to_vec())],
            })
        })
        .collect()
}
