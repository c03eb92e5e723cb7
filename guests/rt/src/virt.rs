//! The QEMU `virt` devices the test guests drive: the virtual PLIC the hypervisor
//! emulates for a VM that may hold host devices, and the goldfish RTC, a real host
//! device the hypervisor hands to trusted VMs (its alarm is an interrupt a test can
//! raise at will).
//!
//! These are MMIO windows, not memory Rust knows about: an access to one the VM has
//! not got mapped is an access fault in the guest (which the test guests report), never
//! a read of anything else.

use crate::csr;

/// GPA of the virtual PLIC (`riscv,plic0`), where the hypervisor puts it.
pub const VPLIC: usize = 0x0c00_0000;
/// HPA of the goldfish RTC on QEMU `virt` (the test guests map it at the same GPA).
pub const RTC: usize = 0x0010_1000;
/// The RTC's host (and virtual) PLIC source.
pub const RTC_IRQ: u32 = 11;

/// Goldfish RTC registers.
pub mod rtc {
    /// Alarm time, low word (writing it arms the alarm).
    pub const ALARM_LOW: usize = 0x08;
    /// Alarm time, high word.
    pub const ALARM_HIGH: usize = 0x0c;
    /// 1: the alarm raises the interrupt (rewriting 1 re-signals a pending one).
    pub const IRQ_ENABLED: usize = 0x10;
    /// Clears the interrupt at the device.
    pub const CLEAR_INTERRUPT: usize = 0x1c;
}

/// Reads the virtual PLIC's 32-bit register at `off`.
pub fn plic_read(off: usize) -> u32 {
    // SAFETY: the virtual PLIC's window: every access traps to the hypervisor, which
    // emulates it; naturally aligned 32-bit accesses only.
    unsafe { core::ptr::read_volatile((VPLIC + off) as *const u32) }
}

/// Writes the virtual PLIC's 32-bit register at `off`.
pub fn plic_write(off: usize, v: u32) {
    // SAFETY: as for `plic_read`.
    unsafe { core::ptr::write_volatile((VPLIC + off) as *mut u32, v) }
}

/// Offset of `source`'s priority register.
pub fn priority(source: u32) -> usize {
    4 * source as usize
}

/// Offset of the first enable word of `context`.
pub fn enable(context: usize) -> usize {
    0x2000 + 0x80 * context
}

/// Offset of `context`'s threshold register.
pub fn threshold(context: usize) -> usize {
    0x20_0000 + 0x1000 * context
}

/// Offset of `context`'s claim/complete register.
pub fn claim(context: usize) -> usize {
    0x20_0004 + 0x1000 * context
}

/// Writes the RTC's register at `off` (the RTC must be mapped at [`RTC`]).
pub fn rtc_write(off: usize, v: u32) {
    // SAFETY: the goldfish RTC's register window, which the caller mapped at its host
    // address; naturally aligned 32-bit accesses.
    unsafe { core::ptr::write_volatile((RTC + off) as *mut u32, v) }
}

/// The RTC's time in ns (the RTC must be mapped at [`RTC`]).
pub fn rtc_now() -> u64 {
    // SAFETY: as for `rtc_write`; TIME_LOW (0x00) latches TIME_HIGH (0x04).
    unsafe {
        let lo = core::ptr::read_volatile(RTC as *const u32);
        let hi = core::ptr::read_volatile((RTC + 4) as *const u32);
        (u64::from(hi) << 32) | u64::from(lo)
    }
}

/// Arms the RTC's alarm `ns` from now, its interrupt enabled.
pub fn rtc_alarm_in(ns: u64) {
    let at = rtc_now() + ns;
    rtc_write(rtc::ALARM_HIGH, (at >> 32) as u32);
    rtc_write(rtc::ALARM_LOW, at as u32);
    rtc_write(rtc::IRQ_ENABLED, 1);
}

/// This vCPU's supervisor external interrupt is pending (`sip.SEIP`).
pub fn seip() -> bool {
    csr::sip() & csr::SEI != 0
}

/// Waits up to `ms` (at QEMU `virt`'s 10 MHz timebase) for `sip.SEIP` to read `want`.
pub fn wait_seip(want: bool, ms: u64) -> bool {
    let end = csr::time() + ms * 10_000;
    while seip() != want {
        if csr::time() > end {
            return false;
        }
    }
    true
}
