//! The debug console (and the legacy byte calls): the VM's console ring and input.

use super::Call;
use diosix_abi::SbiError;
use diosix_core::addr::Gpa;
use diosix_core::sbi::Console;

impl Console for Call<'_> {
    fn console_write(&mut self, gpa: Gpa, len: u64) -> Result<usize, SbiError> {
        let n = self.console_buffer(gpa, len)?;
        let vm = self.vcpu().vm.clone();
        let mut buf = [0u8; 256];
        let mut done = 0u64;
        while done < n {
            let step = (n - done).min(buf.len() as u64) as usize;
            let at = Gpa::new(gpa.raw() + done);
            // Read first, then hand over: the tree's lock is never taken while the
            // VM's memory lock is held.
            vm.read(at, &mut buf[..step])
                .map_err(|_| SbiError::InvalidParam)?;
            crate::vmtree::console_output(&vm, self.hart.slot, &buf[..step]);
            done += step as u64;
        }
        Ok(n as usize)
    }

    fn console_read(&mut self, gpa: Gpa, len: u64) -> Result<usize, SbiError> {
        let n = self.console_buffer(gpa, len)?.min(256) as usize;
        if n == 0 {
            // Nothing to read, so nothing of the buffer is touched (the spec checks an
            // address only where bytes would go).
            return Ok(0);
        }
        let vm = self.vcpu().vm.clone();
        let slot = self.hart.slot;
        let mut stale = crate::isolation::Stale::new();
        // Validate the destination (and give the VM its own copy of any copy-on-write
        // page in it) before consuming input, so a bad buffer loses nothing.
        let r = vm.make_writable(gpa, n as u64, &mut stale).and_then(|()| {
            let mut buf = [0u8; 256];
            let got = crate::vmtree::console_input(&vm, slot, &mut buf[..n]);
            vm.write(gpa, &buf[..got], &mut stale).map(|()| got)
        });
        crate::cow::finish(&vm, self.hart.slot, stale);
        r.map_err(|_| SbiError::InvalidParam)
    }

    fn console_write_byte(&mut self, byte: u8) {
        let vm = self.vcpu().vm.clone();
        crate::vmtree::console_output(&vm, self.hart.slot, &[byte]);
    }

    fn console_getchar(&mut self) -> Option<u8> {
        let vm = self.vcpu().vm.clone();
        let mut b = [0u8; 1];
        (crate::vmtree::console_input(&vm, self.hart.slot, &mut b) == 1).then_some(b[0])
    }
}
