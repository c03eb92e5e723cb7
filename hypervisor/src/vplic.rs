//! A VM's virtual PLIC as the hypervisor runs it: the guest's loads and stores to its
//! window (which is never mapped, so each one traps here) go to the model in
//! `diosix_core::vplic`, and the external-interrupt line of each vCPU follows the
//! model into hvip.VSEIP.

use crate::hart::{self, HartLocal};
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

/// A guest-page fault at `gpa` by the vCPU on this hart: if it is in its VM's
/// virtual PLIC window, emulates the access and returns true (the guest goes on past
/// the instruction, or takes an access fault for an access the PLIC does not
/// support); false if the address is not the PLIC's.
pub fn emulate(hart: &mut HartLocal, gpa: Gpa, store_fault: bool) -> bool {
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return false;
    };
    let Some(plic) = vm.plic.as_ref() else {
        return false;
    };
    let Some(offset) = gpa.raw().checked_sub(VPLIC_BASE.raw()) else {
        return false;
    };
    if offset >= vm.plic_window {
        return false;
    }
    let slot = hart.slot;
    crate::mmio::complete(hart, &vm, store_fault, |access, stored| {
        let mut p = plic.lock();
        let width = u32::from(access.width);
        let loaded = match stored {
            Some(value) => match p.write(offset, width, value as u32)? {
                Some(source) => {
                    crate::devices::complete(&vm, source);
                    0
                }
                None => 0,
            },
            None => u64::from(p.read(offset, width)?),
        };
        deliver(&vm, &mut p, slot);
        Ok::<u64, diosix_core::vplic::VplicFault>(loaded)
    });
    if let Some(v) = hart.current.as_ref() {
        v.sync_ext_line_live();
    }
    true
}
