//! Ways to restart the machine: the syscon reset/poweroff device (QEMU virt's
//! `sifive,test0`: writing a magic value to a register resets or powers off the
//! machine) and a reset line on a SiFive GPIO pin (the HiFive Unleashed's
//! `gpio-restart`). Both sit behind [`HostReset`], so the hypervisor does not care
//! which board it is on.

use diosix_addr::Hpa;

/// How this board restarts itself.
pub trait HostReset: Send + Sync {
    /// Restarts the machine (or stops this hart for good if the device fails to).
    fn reboot(&self) -> !;
}

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

    /// Powers the machine off (falls back to halting this hart).
    pub fn poweroff(&self) -> ! {
        if let Some(w) = self.poweroff {
            Self::write(w);
        }
        halt()
    }
}

impl HostReset for SysconReset {
    /// Restarts the machine (falls back to poweroff, then to halting this hart).
    fn reboot(&self) -> ! {
        if let Some(w) = self.reboot.or(self.poweroff) {
            Self::write(w);
        }
        halt()
    }
}

/// A reset line on one pin of a SiFive GPIO controller (`sifive,gpio0`).
#[derive(Clone, Copy, Debug)]
pub struct SifiveGpioReset {
    base: Hpa,
    pin: u32,
    active_low: bool,
}

/// SiFive GPIO registers (byte offsets), one bit per pin.
mod gpio_reg {
    pub const INPUT_EN: u64 = 0x04;
    pub const OUTPUT_EN: u64 = 0x08;
    pub const OUTPUT_VAL: u64 = 0x0c;
    pub const OUT_XOR: u64 = 0x40;
}

impl SifiveGpioReset {
    /// Wraps pin `pin` (below 32) of the controller at `base`.
    ///
    /// # Safety
    /// `base` must be the register base of the `sifive,gpio0` controller the host
    /// device tree's `gpio-restart` names, and nothing else may drive that pin.
    pub const unsafe fn new(base: Hpa, pin: u32, active_low: bool) -> Self {
        Self {
            base,
            pin,
            active_low,
        }
    }

    /// Sets or clears this pin's bit in register `reg`.
    fn set_bit(&self, reg: u64, on: bool) {
        let addr = self.base.raw().wrapping_add(reg) as usize as *mut u32;
        let bit = 1u32 << (self.pin & 31);
        // SAFETY: a register of the controller the constructor names; a 32-bit
        // read-modify-write touches only this pin's bit.
        unsafe {
            let v = core::ptr::read_volatile(addr);
            core::ptr::write_volatile(addr, if on { v | bit } else { v & !bit });
        }
    }

    /// Drives the pin to the line's `asserted` state.
    fn drive(&self, asserted: bool) {
        self.set_bit(gpio_reg::OUTPUT_VAL, asserted != self.active_low);
    }
}

impl HostReset for SifiveGpioReset {
    /// Drives the line inactive as an output first, then asserts it: a reset line
    /// acts on the edge into its active level.
    fn reboot(&self) -> ! {
        self.set_bit(gpio_reg::OUT_XOR, false);
        self.set_bit(gpio_reg::INPUT_EN, false);
        self.drive(false);
        self.set_bit(gpio_reg::OUTPUT_EN, true);
        self.drive(true);
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
