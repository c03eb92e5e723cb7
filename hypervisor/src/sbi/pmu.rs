//! Performance monitoring (PMU): the calling vCPU's counters (decoded and checked in
//! `diosix_core::sbi::pmu`; loaded into the hart by `crate::pmu`), and the firmware
//! events it has seen.

use super::Call;
use diosix_abi::pmu_platform as platform;
use diosix_core::exits::ExitCause;
use diosix_core::sbi::pmu::{FwEvent, Pmu, PmuHost, PmuState};

impl Pmu for Call<'_> {
    fn pmu_host(&self) -> &PmuHost {
        crate::pmu::host()
    }

    fn pmu_state(&mut self) -> &mut PmuState {
        &mut self.vcpu_mut().ctx.pmu
    }

    fn pmu_sync(&mut self) {
        crate::pmu::save(&mut self.vcpu_mut().ctx.pmu);
    }

    fn pmu_apply(&mut self) {
        let hart = &mut *self.hart;
        if let Some(v) = hart.current.as_ref() {
            crate::pmu::load(&mut hart.pmu_live, &v.ctx.pmu);
        }
    }

    fn pmu_fw_count(&mut self, event: FwEvent) -> u64 {
        let shared = &self.vcpu().shared;
        let exits = |causes: &[ExitCause]| causes.iter().map(|&c| shared.exits(c)).sum();
        match event {
            FwEvent::Standard(code) => shared.fw_event(code as usize),
            FwEvent::Platform(platform::EXITS) => exits(&ExitCause::ALL),
            FwEvent::Platform(platform::SBI_CALLS) => exits(&ExitCause::SBI_CALLS),
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
