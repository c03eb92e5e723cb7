//! Steal-time accounting (STA): registering the calling vCPU's record (the accounting
//! itself is `crate::steal`, driven by the scheduler).

use super::Call;
use diosix_abi::SbiError;
use diosix_core::addr::Gpa;
use diosix_core::sbi::StealTime;

/// The record's size.
const RECORD: u64 = diosix_abi::fid::sta::SHMEM_SIZE;

impl StealTime for Call<'_> {
    fn sta_set_shmem(&mut self, shmem: Option<Gpa>) -> Result<(), SbiError> {
        let Some(at) = shmem else {
            self.vcpu_mut().ctx.sta.shmem = None;
            return Ok(());
        };
        let vm = self.vcpu().vm.clone();
        if !vm.ram.contains_span(at, RECORD) {
            return Err(SbiError::InvalidAddress);
        }
        // Zeroed before the call returns (the spec's requirement), which also proves
        // the hypervisor may write it (copy-on-write pages get their own copy now).
        let mut stale = crate::isolation::Stale::new();
        let r = vm.write(at, &[0u8; RECORD as usize], &mut stale);
        crate::cow::finish(&vm, self.hart.slot, stale);
        r.map_err(|_| SbiError::InvalidAddress)?;
        let sta = &mut self.vcpu_mut().ctx.sta;
        // A new record starts from zero: it reports steal from now on.
        *sta = diosix_core::steal::StaState {
            shmem: Some(at),
            ..Default::default()
        };
        Ok(())
    }
}
