//! SBI steal-time accounting (STA): publishing each registered vCPU's steal time in its
//! shared-memory record whenever the vCPU is loaded again (the accounting itself is
//! `diosix_core::steal`).
//!
//! A vCPU is *ready* from the moment it goes into the run queue runnable (descheduled
//! at the end of its slice, after a YIELD, or woken from WFI or a suspend) until a hart
//! loads it; a vCPU waiting for an interrupt is idle, not ready, and accrues nothing.
//! The record's `sequence` is odd while `steal` is written (three separate stores, in
//! that order, so another vCPU of the VM reading it sees a consistent value or an odd
//! sequence); `preempted` is never set, so it is always the zero the spec requires
//! while the vCPU runs. The hypervisor keeps its own copies of `sequence` and `steal`:
//! what the guest writes into the record is never read back.

use crate::vm::Vm;
use diosix_core::addr::Gpa;
use diosix_core::steal::StaState;

/// Writes the record of `sta` in `vm`'s memory on hart `slot`: sequence odd, steal,
/// sequence even. A record the VM no longer lets the hypervisor write (not RAM any
/// more, or no frame for a copy-on-write copy) stops the reporting.
pub fn publish(vm: &Vm, slot: usize, sta: &mut StaState) {
    let Some(at) = sta.shmem else {
        return;
    };
    let mut stale = crate::isolation::Stale::new();
    let steal_at = Gpa::new(at.raw() + 8);
    let odd = sta.sequence.wrapping_add(1);
    let even = odd.wrapping_add(1);
    let r = vm
        .write(at, &odd.to_le_bytes(), &mut stale)
        .and_then(|()| vm.write(steal_at, &sta.steal_ns.to_le_bytes(), &mut stale))
        .and_then(|()| vm.write(at, &even.to_le_bytes(), &mut stale));
    crate::cow::finish(vm, slot, stale);
    match r {
        Ok(()) => sta.sequence = even,
        Err(e) => {
            log::warn!(
                "VM {}: steal-time record at {at} unwritable ({e:?}): reporting stopped",
                vm.name
            );
            sta.shmem = None;
        }
    }
}
