//! Timer, IPI and RFENCE: interrupts and fences between a VM's vCPUs.

use super::Call;
use crate::hart;
use crate::sched;
use crate::vcpu_shared::NOT_RUNNING;
use core::sync::atomic::Ordering;
use diosix_abi::fid::pmu::firmware_event as fw;
use diosix_core::sbi::{Caller, FenceKind, HartSet, Ipi, Rfence, Timer};
use diosix_riscv::csr::{self, irq};

impl Timer for Call<'_> {
    fn set_timer(&mut self, deadline: u64) {
        if crate::platform::guest_sstc() {
            // The vCPU's own comparator: a future deadline also clears a pending
            // VSTIP, as the SBI asks.
            // SAFETY: vstimecmp belongs to the vCPU running on this hart.
            unsafe { csr::vstimecmp::write(deadline as usize) };
            return;
        }
        let now = crate::platform::now();
        let v = self.vcpu_mut();
        v.ctx.timer_deadline = deadline;
        crate::guestmode::mode().lower(irq::VSTIP);
        v.merge_pending_live(now);
        sched::program_timer(self.hart);
    }
}

impl Ipi for Call<'_> {
    fn send_ipi(&mut self, targets: HartSet) {
        let me = self.this_hart();
        let vm = self.vcpu().vm.clone();
        let mut others = false;
        if vm.fw_events.load(Ordering::Relaxed) {
            count_fw_events(self, &vm, targets, fw::IPI_SENT, fw::IPI_RECEIVED);
        }
        for t in targets.iter() {
            if t == me {
                crate::guestmode::mode().raise(irq::VSSIP);
                continue;
            }
            let Some(shared) = vm.vcpus.get(t) else {
                continue;
            };
            shared.pending.fetch_or(irq::VSSIP, Ordering::AcqRel);
            others = true;
            let slot = shared.running_on.load(Ordering::Acquire);
            if slot != NOT_RUNNING {
                hart::kick(slot);
            } else {
                shared.ipi_while_off(crate::platform::now());
            }
        }
        // Always re-check the wait queue under its lock, even for targets that looked
        // as if they were running: a target being descheduled right now may have read
        // its pending bits before our store (store buffering), and its hart may then
        // swallow our kick. The lock orders us after, or before, its enqueue check.
        if others {
            sched::poke_waiters();
        }
    }

    fn clear_ipi(&mut self) {
        crate::guestmode::mode().lower(irq::VSSIP);
    }
}

impl Rfence for Call<'_> {
    fn remote_fence(&mut self, targets: HartSet, kind: FenceKind) {
        let me = self.this_hart();
        let my_slot = self.hart.slot;
        let vm = self.vcpu().vm.clone();
        if vm.fw_events.load(Ordering::Relaxed) {
            let (sent, received) = match kind {
                FenceKind::Instruction => (fw::FENCE_I_SENT, fw::FENCE_I_RECEIVED),
                FenceKind::Vma => (fw::SFENCE_VMA_SENT, fw::SFENCE_VMA_RECEIVED),
                FenceKind::VmaAsid => (fw::SFENCE_VMA_ASID_SENT, fw::SFENCE_VMA_ASID_RECEIVED),
            };
            count_fw_events(self, &vm, targets, sent, received);
        }
        if targets.iter().any(|t| t == me) {
            diosix_riscv::fence::fence_i();
            crate::guestmode::mode().flush_guest_tlb();
        }
        // A vCPU that is not running flushes when it is next loaded (every load flushes
        // its guest TLB), so only running ones need their hart poked.
        crate::hart::fence_other_harts(
            my_slot,
            targets
                .iter()
                .filter(|t| *t != me)
                .filter_map(|t| vm.vcpus.get(t))
                .map(|v| v.running_on.load(Ordering::Acquire)),
        );
    }
}

/// Counts firmware events (SBI PMU) `sent` on the caller, once per target, and
/// `received` on each target. Kept out of line: only VMs that use firmware counters
/// come here.
#[inline(never)]
fn count_fw_events(
    call: &Call<'_>,
    vm: &crate::vm::Vm,
    targets: HartSet,
    sent: usize,
    received: usize,
) {
    let mut n = 0;
    for shared in targets.iter().filter_map(|t| vm.vcpus.get(t)) {
        shared.count_fw_event(received, 1);
        n += 1;
    }
    call.vcpu().shared.count_fw_event(sent, n);
}
