//! The ns16550a UART: the host console.

use diosix_addr::Hpa;

/// An ns16550a UART at a host physical address.
#[derive(Clone, Copy, Debug)]
pub struct Ns16550a {
    base: usize,
    shift: u32,
}

const RBR_THR: usize = 0;
const IER: usize = 1;
const FCR: usize = 2;
const LCR: usize = 3;
const LSR: usize = 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;

impl Ns16550a {
    /// Wraps the UART at `base` whose registers are `1 << shift` bytes apart.
    ///
    /// # Safety
    /// `base` must be the HPA of an ns16550a found in the host device tree, not
    /// reachable by guests.
    pub const unsafe fn new(base: Hpa, shift: u32) -> Self {
        // M-mode runs untranslated, so the HPA is the register block's address.
        Self {
            base: base.raw() as usize,
            shift,
        }
    }

    fn reg(&self, index: usize) -> *mut u8 {
        (self.base + (index << self.shift)) as *mut u8
    }

    /// 8N1, FIFOs on, interrupts off. The firmware leaves the divisor as QEMU and most
    /// boards expect; we do not reprogram the baud rate.
    pub fn init(&self) {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            core::ptr::write_volatile(self.reg(IER), 0);
            core::ptr::write_volatile(self.reg(LCR), 0x03);
            core::ptr::write_volatile(self.reg(FCR), 0x07);
        }
    }

    /// Writes one byte, waiting for room in the transmitter.
    pub fn putc(&self, byte: u8) {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            while core::ptr::read_volatile(self.reg(LSR)) & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            core::ptr::write_volatile(self.reg(RBR_THR), byte);
        }
    }

    /// Reads one byte if one is waiting; never blocks.
    pub fn getc(&self) -> Option<u8> {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            if core::ptr::read_volatile(self.reg(LSR)) & LSR_DATA_READY != 0 {
                Some(core::ptr::read_volatile(self.reg(RBR_THR)))
            } else {
                None
            }
        }
    }
}
