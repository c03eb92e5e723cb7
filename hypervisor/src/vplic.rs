//! A VM's virtual PLIC as the hypervisor runs it: where it sits, how many sources it
//! has, and how the external-interrupt line of each vCPU follows the model
//! (`diosix_core::vplic`) into hvip.VSEIP. The guest's accesses to it are emulated by
//! `crate::devices::emulate_plic_access`, since completing an interrupt goes back to
//! the host.

use crate::hart;
use crate::vm::Vm;
use core::sync::atomic::Ordering;
use diosix_core::addr::Gpa;
use diosix_core::vplic::VirtualPlic;

/// Where a VM's virtual PLIC sits in its guest physical address space (where QEMU
/// `virt` puts its PLIC).
pub const VPLIC_BASE: Gpa = Gpa::new(0x0c00_0000);

/// Interrupt sources of a VM's virtual PLIC: the host's, so a host interrupt keeps
/// its number in the guest.
pub fn sources_for(host_ndev: Option<u32>) -> u32 {
    host_ndev
        .unwrap_or(0)
        .clamp(1, diosix_core::vplic::MAX_SOURCES)
}

/// Applies the line changes the model reports: each vCPU's line is copied into its
/// shared state; a vCPU on another hart is kicked so it copies it into hvip, one
/// waiting for an interrupt is woken. `this_slot` is the caller's hart (its own vCPU
/// is synced by the caller), or `usize::MAX`.
pub fn deliver(vm: &Vm, plic: &mut VirtualPlic, this_slot: usize) {
    let mut wake = false;
    plic.take_line_changes(&mut |context, level| {
        let Some(v) = vm.vcpus.get(context as usize) else {
            return;
        };
        v.ext_line.store(level, Ordering::Release);
        let slot = v.running_on.load(Ordering::Acquire);
        if slot == crate::vcpu_shared::NOT_RUNNING {
            wake |= level;
        } else if slot != this_slot {
            hart::kick(slot);
        }
    });
    if wake {
        crate::sched::poke_waiters();
    }
}
