//! Hart state management: starting, stopping and suspending the caller's vCPUs, and
//! the system suspend of its whole VM (SUSP), which is the last running vCPU's
//! non-retentive suspend.

use super::Call;
use crate::sched;
use crate::vcpu::Wait;
use diosix_abi::SbiError;
use diosix_core::addr::Gpa;
use diosix_core::sbi::{Caller, HartState, Hsm, Suspend, SystemSuspend};

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

impl SystemSuspend for Call<'_> {
    fn system_suspend(&mut self, resume: Gpa, opaque: usize) -> Result<(), SbiError> {
        let me = self.this_hart();
        // Every other vCPU is STOPPED, so none can start one meanwhile: only this
        // VM's own vCPUs start its vCPUs (a parent's REBOOT or kill replaces it all).
        let others_stopped = self
            .vcpu()
            .vm
            .vcpus
            .iter()
            .enumerate()
            .all(|(i, v)| i == me || v.state() == HartState::Stopped);
        if !others_stopped {
            return Err(SbiError::Denied);
        }
        self.hart_suspend(Suspend::NonRetentive { resume, opaque })
    }
}
