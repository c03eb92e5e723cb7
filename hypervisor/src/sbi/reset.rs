//! System reset: a VM's own shutdown or reboot (the Root VM's restarts the host).

use super::Call;
use crate::vcpu::Wait;
use diosix_abi::SbiError;
use diosix_core::sbi::{Reset, ResetType};

impl Reset for Call<'_> {
    fn system_reset(&mut self, kind: ResetType, failure: bool) -> Result<(), SbiError> {
        let vm = self.vcpu().vm.clone();
        log::info!(
            "VM {} asked for {:?}{}: {}",
            vm.name,
            kind,
            if failure { " (system failure)" } else { "" },
            match (vm.is_root, kind) {
                (true, _) => "the Root VM has ended, restarting the host",
                (false, ResetType::Shutdown) => "ending the VM",
                (false, _) => "putting the VM back to its created or forked state",
            }
        );
        if vm.is_root {
            vm.log_exits();
            crate::platform::restart_host()
        }
        // A child's own shutdown ends it (and its subtree); its own reboot is REBOOT of
        // itself. Its parent gets the event either way.
        if kind == ResetType::Shutdown {
            crate::vmtree::vm_ended(self.hart, &vm, diosix_abi::exit_code::SHUTDOWN, false);
        } else {
            crate::vmtree::vm_rebooted(self.hart, &vm);
        }
        self.block = Some(Wait::None);
        Ok(())
    }
}
