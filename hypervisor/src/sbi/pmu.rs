//! Performance monitoring (PMU): the calling vCPU's counters (decoded and checked in
//! `diosix_core::sbi::pmu`; loaded into the hart by `crate::pmu`), and the firmware
//! events it has seen.

use super::Call;
use alloc::boxed::Box;
use core::sync::atomic::Ordering;
use diosix_abi::fid::pmu::firmware_event::SET_TIMER;
use diosix_abi::pmu_platform as platform;
use diosix_core::exits::ExitCause;
use diosix_core::sbi::pmu::{FwEvent, Pmu, PmuHost, PmuState};

impl Pmu for Call<'_> {
    fn pmu_host(&self) -> &PmuHost {
        crate::pmu::host()
    }

    fn pmu_state(&mut self) -> &mut PmuState {
        // Fixed-size, once per vCPU: the heap bound per vCPU in `crate::vmtree`
        // includes it.
        self.vcpu_mut().ctx.pmu.get_or_insert_with(Box::default)
    }

    fn pmu_sync(&mut self) {
        if let Some(pmu) = self.vcpu_mut().ctx.pmu.as_deref_mut() {
            crate::pmu::save(pmu);
        }
    }

    fn pmu_apply(&mut self) {
        let hart = &mut *self.hart;
        if let Some(v) = hart.current.as_ref() {
            crate::pmu::load(&mut hart.pmu_live, v.ctx.pmu.as_deref());
        }
    }

    fn pmu_fw_count(&mut self, event: FwEvent) -> u64 {
        // From here on the VM's IPIs, fences and timers are counted (a counter
        // starting now only needs what follows).
        self.vcpu().vm.fw_events.store(true, Ordering::Relaxed);
        let shared = &self.vcpu().shared;
        let exits = |causes: &[ExitCause]| causes.iter().map(|&c| shared.exits(c)).sum();
        match event {
            // Every TIME call (and legacy set_timer) is an exit of its own cause.
            FwEvent::Standard(code) if code as usize == SET_TIMER => exits(&[ExitCause::SbiTimer]),
            FwEvent::Standard(code) => shared.fw_event(code as usize),
            FwEvent::Platform(platform::EXITS) => exits(&ExitCause::ALL),
            FwEvent::Platform(platform::SBI_CALLS) => ExitCause::ALL
                .iter()
                .filter(|c| c.is_sbi_call())
                .map(|&c| shared.exits(c))
                .sum(),
            FwEvent::Platform(platform::TIMER_INTERRUPTS) => exits(&[ExitCause::TimerInterrupt]),
            FwEvent::Platform(platform::SOFTWARE_INTERRUPTS) => {
                exits(&[ExitCause::SoftwareInterrupt])
            }
            FwEvent::Platform(platform::EXTERNAL_INTERRUPTS) => {
                exits(&[ExitCause::ExternalInterrupt])
            }
            FwEvent::Platform(platform::GUEST_PAGE_FAULTS) => exits(&[ExitCause::GuestPageFault]),
            FwEvent::Platform(platform::VIRTUAL_INSTRUCTIONS) => {
                exits(&[ExitCause::VirtualInstruction])
            }
            FwEvent::Platform(_) => 0,
        }
    }
}
