//! The legacy calls' hart-mask pointer, read through the guest's own translation.

use super::Call;
use diosix_core::addr::{Gpa, Gva, PAGE_SIZE};
use diosix_core::sbi::LegacyMask;
use diosix_riscv::csr;

impl LegacyMask for Call<'_> {
    fn read_legacy_mask(&mut self, gva: Gva) -> Option<usize> {
        // The pointer is the guest's own virtual address: walk its VS-stage tables (the
        // vCPU's CSRs are live on this hart) as a supervisor read would, byte by byte
        // page, since the word may straddle two pages.
        let vm = self.vcpu().vm.clone();
        let (vsatp, vsstatus) = (csr::vsatp::read() as u64, csr::vsstatus::read() as u64);
        let read_pte = |gpa: Gpa| {
            let mut b = [0u8; 8];
            vm.read(gpa, &mut b).ok().map(|()| u64::from_le_bytes(b))
        };
        let mut bytes = [0u8; 8];
        let mut done = 0usize;
        while done < bytes.len() {
            let at = gva.checked_add(done as u64)?;
            let gpa = diosix_core::vstage::translate_read(vsatp, vsstatus, at, read_pte).ok()?;
            let in_page = (PAGE_SIZE - (at.raw() & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(bytes.len() - done);
            vm.read(gpa, &mut bytes[done..done + n]).ok()?;
            done += n;
        }
        Some(usize::from_le_bytes(bytes))
    }
}
