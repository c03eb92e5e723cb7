//! Hart state management: starting, stopping and suspending the caller's vCPUs.

use super::Call;
use crate::sched;
use crate::vcpu::Wait;
use diosix_abi::SbiError;
use diosix_core::addr::Gpa;
use diosix_core::sbi::{HartState, Hsm, Suspend};

impl Hsm for Call<'_> {
    fn hart_status(&self, hart: usize) -> HartState {
        self.vcpu().vm.vcpus[hart].state()
    }

    fn hart_start(&mut self, hart: usize, start: Gpa, opaque: usize) -> Result<(), SbiError> {
        let vm = self.vcpu().vm.clone();
        let shared = &vm.vcpus[hart];
        if shared.state() != HartState::Stopped {
            return Err(SbiError::AlreadyAvailable);
        }
        if !self.executable(start) {
            return Err(SbiError::InvalidAddress);
        }
        if !shared.transition(HartState::Stopped, HartState::StartPending) {
            return Err(SbiError::AlreadyAvailable);
        }
        if !sched::start_stopped(&vm, hart, start, opaque as u64) {
            shared.set_state(HartState::Stopped);
            return Err(SbiError::Failed);
        }
        Ok(())
    }

    fn hart_stop(&mut self) -> Result<(), SbiError> {
        self.vcpu().shared.set_state(HartState::StopPending);
        self.block = Some(Wait::Stopped);
        Ok(())
    }

    fn hart_suspend(&mut self, how: Suspend) -> Result<(), SbiError> {
        if let Suspend::NonRetentive { resume, .. } = how {
            if !self.executable(resume) {
                return Err(SbiError::InvalidAddress);
            }
        }
        self.vcpu().shared.set_state(HartState::Suspended);
        self.block = Some(Wait::Suspend(how));
        Ok(())
    }
}
