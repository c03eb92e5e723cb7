//! A VM's virtual PLIC as the hypervisor runs it: where it sits, how many sources it
//! has, and how the external-interrupt line of each vCPU follows the model
//! (`diosix_core::vplic`) into hvip.VSEIP. The guest's accesses to it are emulated by
//! `crate::devices::emulate_plic_access`, since completing an interrupt goes back to
//! the host.

use crate::hart;
use crate::vm::Vm;
use core::sync::atomic::{AtomicU32, Ordering};
use diosix_core::addr::Gpa;
use diosix_core::vplic::VirtualPlic;

/// Where a VM's virtual PLIC sits in its guest physical address space (where QEMU
/// `virt` puts its PLIC).
pub const VPLIC_BASE: Gpa = Gpa::new(0x0c00_0000);

/// Interrupt sources of a VM's virtual PLIC: the host's, so a host interrupt keeps
/// its number in the guest, and one more, the last, for the VM's Diosix-extension
/// events ([`events_source`]).
pub fn sources_for(host_ndev: Option<u32>) -> u32 {
    host_ndev
        .unwrap_or(0)
        .saturating_add(1)
        .clamp(1, diosix_core::vplic::MAX_SOURCES)
}

/// Interrupt sources of the host's PLIC (0 without one), set once at boot by
/// `crate::devices::init`: a virtual PLIC's sources above these are the hypervisor's.
static HOST_SOURCES: AtomicU32 = AtomicU32::new(0);

/// Records how many sources the host's PLIC has (see [`events_source`]).
pub fn set_host_sources(n: u32) {
    HOST_SOURCES.store(n, Ordering::Relaxed);
}

/// The source of `plic` that signals its VM's events (POLL_EVENT has something): the
/// one past the host's, when the PLIC has it (a host with the most sources a PLIC can
/// have leaves none).
pub fn events_source(plic: &VirtualPlic) -> Option<u32> {
    let host = HOST_SOURCES.load(Ordering::Relaxed);
    (plic.ndev() > host).then_some(plic.ndev())
}

/// Raises `vm`'s event interrupt, if it has one, and passes it to its vCPUs: its
/// event queue just stopped being empty. A source pending until claimed, so the guest
/// gets one interrupt per filling of its queue, not one per event.
pub fn raise_events(vm: &Vm) {
    let Some(plic) = vm.plic.as_ref() else {
        return;
    };
    let mut p = plic.lock();
    let Some(source) = events_source(&p) else {
        return;
    };
    p.raise(source);
    // A guest that has not enabled it (no driver for it) has no line to move: the
    // pending bit alone is what a later enable finds.
    if p.deliverable(source) {
        deliver(vm, &mut p, usize::MAX);
    }
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
