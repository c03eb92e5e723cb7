//! The syscon reset/poweroff device (QEMU virt's `sifive,test0`): writing a magic value
//! to a register resets or powers off the machine.

use diosix_addr::Hpa;

/// One register write that resets or powers off the machine.
#[derive(Clone, Copy, Debug)]
pub struct SysconWrite {
    /// HPA of the register.
    pub addr: Hpa,
    /// Value to write.
    pub value: u32,
}

/// A syscon-style reset device.
#[derive(Clone, Copy, Debug)]
pub struct SysconReset {
    poweroff: Option<SysconWrite>,
    reboot: Option<SysconWrite>,
}

impl SysconReset {
    /// Wraps the device's poweroff and reboot writes.
    ///
    /// # Safety
    /// The addresses must be the registers the host device tree names for these
    /// actions.
    pub const unsafe fn new(poweroff: Option<SysconWrite>, reboot: Option<SysconWrite>) -> Self {
        Self { poweroff, reboot }
    }

    fn write(w: SysconWrite) {
        // SAFETY: the register is the reset device's (constructor contract).
        unsafe { core::ptr::write_volatile(w.addr.raw() as usize as *mut u32, w.value) };
    }

    /// Restarts the machine (falls back to poweroff, then to halting this hart).
    pub fn reboot(&self) -> ! {
        if let Some(w) = self.reboot.or(self.poweroff) {
            Self::write(w);
        }
        halt()
    }

    /// Powers the machine off (falls back to halting this hart).
    pub fn poweroff(&self) -> ! {
        if let Some(w) = self.poweroff {
            Self::write(w);
        }
        halt()
    }
}

/// Stops this hart for good: interrupts off, then WFI forever.
pub fn halt() -> ! {
    loop {
        // SAFETY: clearing mie only stops interrupts from waking this hart; wfi is a hint.
        unsafe {
            crate::csr::mie::write(0);
            core::arch::asm!("wfi");
        }
    }
}
