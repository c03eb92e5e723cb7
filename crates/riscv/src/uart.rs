//! The host console's UART, behind one seam ([`Uart`]): an NS16550A (QEMU `virt`, most
//! boards) or a SiFive UART (HiFive Unleashed and other SiFive parts), whichever the
//! device tree names.

use diosix_addr::Hpa;

/// A polled byte-at-a-time console UART.
pub trait Uart: Send + Sync {
    /// Sets it up for polled use: transmitter and receiver on, interrupts off. The
    /// firmware leaves the baud rate as the board expects; it is not reprogrammed.
    fn init(&self);
    /// Writes one byte, waiting for room in the transmitter.
    fn putc(&self, byte: u8);
    /// Reads one byte if one is waiting; never blocks.
    fn getc(&self) -> Option<u8>;
}

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
}

impl Uart for Ns16550a {
    /// 8N1, FIFOs on, interrupts off. The firmware leaves the divisor as QEMU and most
    /// boards expect; we do not reprogram the baud rate.
    fn init(&self) {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            core::ptr::write_volatile(self.reg(IER), 0);
            core::ptr::write_volatile(self.reg(LCR), 0x03);
            core::ptr::write_volatile(self.reg(FCR), 0x07);
        }
    }

    fn putc(&self, byte: u8) {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            while core::ptr::read_volatile(self.reg(LSR)) & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            core::ptr::write_volatile(self.reg(RBR_THR), byte);
        }
    }

    fn getc(&self) -> Option<u8> {
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

/// A SiFive UART (`sifive,uart0`) at a host physical address: 32-bit registers, a
/// transmit FIFO whose "full" flag and a receive FIFO whose "empty" flag sit in bit 31
/// of the data registers.
#[derive(Clone, Copy, Debug)]
pub struct SifiveUart {
    base: usize,
}

const SIFIVE_TXDATA: usize = 0x00;
const SIFIVE_RXDATA: usize = 0x04;
const SIFIVE_TXCTRL: usize = 0x08;
const SIFIVE_RXCTRL: usize = 0x0c;
const SIFIVE_IE: usize = 0x10;
/// txdata: the FIFO is full. rxdata: nothing was received.
const SIFIVE_FLAG: u32 = 1 << 31;
/// txctrl/rxctrl: enable.
const SIFIVE_ENABLE: u32 = 1;

impl SifiveUart {
    /// Wraps the SiFive UART at `base`.
    ///
    /// # Safety
    /// `base` must be the HPA of a SiFive UART found in the host device tree, not
    /// reachable by guests.
    pub const unsafe fn new(base: Hpa) -> Self {
        Self {
            base: base.raw() as usize,
        }
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        (self.base + offset) as *mut u32
    }
}

impl Uart for SifiveUart {
    fn init(&self) {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            core::ptr::write_volatile(self.reg(SIFIVE_IE), 0);
            // One stop bit, transmitter and receiver on; the divisor is left as set.
            core::ptr::write_volatile(self.reg(SIFIVE_TXCTRL), SIFIVE_ENABLE);
            core::ptr::write_volatile(self.reg(SIFIVE_RXCTRL), SIFIVE_ENABLE);
        }
    }

    fn putc(&self, byte: u8) {
        // SAFETY: the registers belong to this UART (constructor contract).
        unsafe {
            while core::ptr::read_volatile(self.reg(SIFIVE_TXDATA)) & SIFIVE_FLAG != 0 {
                core::hint::spin_loop();
            }
            core::ptr::write_volatile(self.reg(SIFIVE_TXDATA), u32::from(byte));
        }
    }

    fn getc(&self) -> Option<u8> {
        // SAFETY: the registers belong to this UART (constructor contract); reading
        // rxdata pops the byte it returns.
        let v = unsafe { core::ptr::read_volatile(self.reg(SIFIVE_RXDATA)) };
        (v & SIFIVE_FLAG == 0).then_some(v as u8)
    }
}
