//! SBI steal-time accounting (STA): how long each vCPU that registered a shared-memory
//! record was ready to run but waited for a hart, published in that record whenever
//! the vCPU is loaded again.
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

/// One vCPU's steal-time state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaState {
    /// The registered record (64 bytes of guest RAM), if any.
    pub shmem: Option<Gpa>,
    /// Steal time so far, in nanoseconds.
    pub steal_ns: u64,
    /// The record's sequence number as last written.
    pub sequence: u32,
    /// When (`mtime`) the vCPU last became ready, while it waits for a hart.
    pub ready_since: Option<u64>,
}

impl StaState {
    /// The vCPU goes into the run queue runnable at `now` (callers skip this, and the
    /// clock read, for a vCPU without a record).
    pub fn ready(&mut self, now: u64) {
        if self.shmem.is_some() && self.ready_since.is_none() {
            self.ready_since = Some(now);
        }
    }

    /// The vCPU is loaded at `now`: adds the wait to its steal time; whether the
    /// record must be written.
    pub fn loaded(&mut self, now: u64, timebase_hz: u64) -> bool {
        let Some(since) = self.ready_since.take() else {
            return false;
        };
        let ticks = now.saturating_sub(since);
        if ticks == 0 || self.shmem.is_none() {
            return false;
        }
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(timebase_hz.max(1));
        self.steal_ns = self
            .steal_ns
            .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX));
        true
    }
}

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
