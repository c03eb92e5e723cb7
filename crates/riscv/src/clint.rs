//! The CLINT (SiFive-compatible core-local interruptor): `mtime`, per-hart `mtimecmp`
//! and per-hart machine software interrupts (MSIP).

use diosix_addr::Hpa;

/// A CLINT at a host physical address.
#[derive(Clone, Copy, Debug)]
pub struct Clint {
    base: usize,
}

const MSIP_OFFSET: usize = 0x0;
const MTIMECMP_OFFSET: usize = 0x4000;
const MTIME_OFFSET: usize = 0xBFF8;

impl Clint {
    /// Wraps the CLINT at `base`.
    ///
    /// # Safety
    /// `base` must be the HPA of a CLINT found in the host device tree, mapped and not
    /// reachable by guests.
    pub const unsafe fn new(base: Hpa) -> Self {
        // M-mode runs untranslated, so the HPA is the register block's address.
        Self {
            base: base.raw() as usize,
        }
    }

    /// The current `mtime`.
    pub fn mtime(&self) -> u64 {
        // SAFETY: base is a CLINT (constructor contract); mtime is an aligned 64-bit register.
        unsafe { core::ptr::read_volatile((self.base + MTIME_OFFSET) as *const u64) }
    }

    /// Programs `mtimecmp` of hart `hart` (its CLINT index).
    pub fn set_mtimecmp(&self, hart: usize, deadline: u64) {
        // SAFETY: base is a CLINT; each hart has an aligned 64-bit mtimecmp slot.
        unsafe {
            core::ptr::write_volatile(
                (self.base + MTIMECMP_OFFSET + 8 * hart) as *mut u64,
                deadline,
            )
        }
    }

    /// Raises a machine software interrupt on hart `hart`.
    pub fn send_msip(&self, hart: usize) {
        // SAFETY: base is a CLINT; each hart has an aligned 32-bit msip word.
        unsafe { core::ptr::write_volatile((self.base + MSIP_OFFSET + 4 * hart) as *mut u32, 1) }
    }

    /// Clears hart `hart`'s machine software interrupt.
    pub fn clear_msip(&self, hart: usize) {
        // SAFETY: base is a CLINT; each hart has an aligned 32-bit msip word.
        unsafe { core::ptr::write_volatile((self.base + MSIP_OFFSET + 4 * hart) as *mut u32, 0) }
    }
}
