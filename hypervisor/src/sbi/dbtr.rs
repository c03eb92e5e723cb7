//! Debug triggers (DBTR): the calling vCPU's triggers and shared memory (decoded and
//! checked in `diosix_core::sbi::dbtr`; loaded into the hart by `crate::triggers`).

use super::Call;
use diosix_abi::SbiError;
use diosix_core::addr::Gpa;
use diosix_core::sbi::dbtr::{DbtrState, DebugTriggers};

impl DebugTriggers for Call<'_> {
    fn dbtr_max(&self) -> usize {
        crate::triggers::count()
    }

    fn dbtr_state(&mut self) -> &mut DbtrState {
        &mut self.vcpu_mut().ctx.dbtr
    }

    fn dbtr_shmem_ok(&mut self, gpa: Gpa, len: u64) -> bool {
        self.vcpu().vm.ram.contains_span(gpa, len)
    }

    fn dbtr_read(&mut self, gpa: Gpa, out: &mut [u8]) -> Result<(), SbiError> {
        let vm = self.vcpu().vm.clone();
        vm.read(gpa, out).map_err(|_| SbiError::InvalidAddress)
    }

    fn dbtr_write(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), SbiError> {
        let vm = self.vcpu().vm.clone();
        let mut stale = crate::isolation::Stale::new();
        let r = vm.write(gpa, bytes, &mut stale);
        crate::cow::finish(&vm, self.hart.slot, stale);
        r.map_err(|_| SbiError::InvalidAddress)
    }

    fn dbtr_apply(&mut self) {
        let state = self.vcpu().ctx.dbtr;
        crate::triggers::load(
            &mut self.hart.triggers_live,
            &state,
            !crate::guestmode::is_pmp(),
        );
    }
}
