//! The legacy calls' hart-mask pointer, read through the guest's own translation.

use super::Call;
use diosix_core::addr::{Gva, PAGE_SIZE};
use diosix_core::sbi::LegacyMask;

impl LegacyMask for Call<'_> {
    fn read_legacy_mask(&mut self, gva: Gva) -> Option<usize> {
        // The pointer is the guest's own virtual address: walk its VS-stage tables (the
        // vCPU's CSRs are live on this hart) as a supervisor read would, byte by byte
        // page, since the word may straddle two pages.
        let vm = self.vcpu().vm.clone();
        let mut bytes = [0u8; 8];
        let mut done = 0usize;
        while done < bytes.len() {
            let at = gva.checked_add(done as u64)?;
            let gpa = crate::mmio::guest_physical(&vm, at)?;
            let in_page = (PAGE_SIZE - (at.raw() & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(bytes.len() - done);
            vm.read(gpa, &mut bytes[done..done + n]).ok()?;
            done += n;
        }
        Some(usize::from_le_bytes(bytes))
    }
}
