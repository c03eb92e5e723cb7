//! The `devices` phase: the host devices the hypervisor handed this (Root) VM, abused.
//!
//! Every vCPU at once throws random loads and stores of every width and alignment (and
//! atomics) at the virtual PLIC's whole register window, including other vCPUs'
//! contexts and the claim/complete registers; accesses the PLIC does not support must
//! come back as access faults (which this guest steps over), never as a hang or a
//! dead VM. Meanwhile the leader makes the RTC's interrupt storm (its alarm fired and
//! re-signalled thousands of times) and leaves it claimed and never completed. The
//! phase's bystander check shows the other VMs kept running; at the end the PLIC must
//! still answer as a PLIC.

use crate::team;
use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_guest_rt::trap;

const VPLIC: usize = 0x0c00_0000;
const RTC: usize = 0x0010_1000;
const RTC_IRQ: usize = 11;
/// Random accesses per vCPU.
const ACCESSES: usize = 20_000;

/// Faults stepped over, all vCPUs.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
/// Accesses made, all vCPUs.
static DONE: AtomicUsize = AtomicUsize::new(0);

/// Runs the phase and checks what it left.
pub fn run() {
    FAULTS.store(0, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    crate::phase("devices", 120_000, body);
    let (faults, done) = (FAULTS.load(Ordering::Relaxed), DONE.load(Ordering::Relaxed));
    crate::note(format_args!(
        "devices: {done} random virtual PLIC accesses, {faults} refused with an access fault"
    ));
    crate::check(
        "devices_bad_accesses_fault",
        faults > 0 && done >= ACCESSES,
        format_args!("{done} accesses, {faults} faults"),
    );
    // Still a PLIC: a priority register holds what is written (3 bits).
    wr32(VPLIC + 4 * RTC_IRQ, 3);
    crate::check(
        "devices_vplic_still_answers",
        rd32(VPLIC + 4 * RTC_IRQ) == 3,
        format_args!("priority 11 reads {:#x}", rd32(VPLIC + 4 * RTC_IRQ)),
    );
    wr32(VPLIC + 4 * RTC_IRQ, 0);
}

fn body(idx: usize, n: usize) {
    trap::install();
    let window = 0x20_0000 + 0x1000 * n;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ ((idx as u64 + 1) << 32);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    if idx == 0 {
        start_storm(n);
    }
    let faults = trap::recovering(|| {
        for i in 0..ACCESSES {
            let r = next();
            // Mostly the interesting registers, sometimes anywhere in the window.
            let off = match r % 4 {
                0 => (r >> 8) as usize % 0x1000,                   // priorities
                1 => 0x1000 + (r >> 8) as usize % 0x1100,          // pending, enables
                2 => 0x20_0000 + (r >> 8) as usize % (0x1000 * n), // contexts
                _ => (r >> 8) as usize % window,
            };
            let value = next();
            access(VPLIC + off, r >> 40, value);
            if idx == 0 && i % 64 == 0 {
                // Keep the storm going: the RTC re-signals its (still pending) alarm.
                wr32(RTC + 0x10, 1);
            }
        }
    });
    FAULTS.fetch_add(faults, Ordering::Relaxed);
    DONE.fetch_add(ACCESSES, Ordering::Relaxed);
    if idx == 0 {
        end_storm(n);
    }
    let _ = team::index();
}

/// One access at `addr`, its kind chosen by `kind`: a load or store of 1, 2, 4 or 8
/// bytes, or an atomic swap.
fn access(addr: usize, kind: u64, value: u64) {
    // SAFETY: `addr` is inside the virtual PLIC's window, which the hypervisor
    // emulates: every access traps, and one it does not support comes back as an
    // access fault, which `trap::recovering` steps over.
    unsafe {
        match kind % 10 {
            0 => drop(core::ptr::read_volatile(addr as *const u8)),
            1 => drop(core::ptr::read_volatile((addr & !1) as *const u16)),
            2 | 3 => drop(core::ptr::read_volatile((addr & !3) as *const u32)),
            4 => drop(core::ptr::read_volatile((addr & !7) as *const u64)),
            5 => core::ptr::write_volatile(addr as *mut u8, value as u8),
            6 => core::ptr::write_volatile((addr & !1) as *mut u16, value as u16),
            7 => core::ptr::write_volatile((addr & !3) as *mut u32, value as u32),
            8 => core::ptr::write_volatile((addr & !7) as *mut u64, value),
            _ => {
                let a = addr & !3;
                core::arch::asm!("amoswap.w {0}, {1}, ({2})", out(reg) _, in(reg) value, in(reg) a);
            }
        }
    }
}

fn rd32(addr: usize) -> u32 {
    // SAFETY: a register of the virtual PLIC or the RTC (both handed to this VM).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn wr32(addr: usize, v: u32) {
    // SAFETY: as for `rd32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// The RTC's alarm fires now, with its interrupt enabled on every context at the top
/// priority; the leader claims it once and never completes it.
fn start_storm(n: usize) {
    wr32(VPLIC + 4 * RTC_IRQ, 7);
    for c in 0..n {
        wr32(VPLIC + 0x2000 + 0x80 * c, 1 << RTC_IRQ);
    }
    // SAFETY: the RTC's time registers (TIME_LOW latches TIME_HIGH).
    let now = unsafe {
        let lo = core::ptr::read_volatile(RTC as *const u32);
        let hi = core::ptr::read_volatile((RTC + 4) as *const u32);
        (u64::from(hi) << 32) | u64::from(lo)
    };
    wr32(RTC + 0x0c, (now >> 32) as u32);
    wr32(RTC + 0x08, now as u32);
    wr32(RTC + 0x10, 1);
    diosix_guest_rt::sleep_ticks(10_000);
    let _ = rd32(VPLIC + 0x20_0004);
}

/// Ends the storm: the RTC's interrupt off and cleared, every context's claim
/// completed, enables off.
fn end_storm(n: usize) {
    wr32(RTC + 0x10, 0);
    wr32(RTC + 0x1c, 1);
    for c in 0..n {
        wr32(VPLIC + 0x20_0004 + 0x1000 * c, RTC_IRQ as u32);
        wr32(VPLIC + 0x2000 + 0x80 * c, 0);
    }
}
