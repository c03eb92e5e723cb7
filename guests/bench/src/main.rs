//! Instruction-count benchmarks, meant to run under `-icount shift=0,sleep=off`.
//!
//! Prints `bench <metric> <instructions>` lines: `first_instruction` is `instret` read
//! by the very first instruction of `_start` (everything from reset to the guest); the
//! others are medians over [`SAMPLES`] calls of the instructions one SBI call costs,
//! measured with `instret` around the call, minus the cost of the measurement itself
//! (`bench empty`). `instret` counts every privilege mode, so the firmware's or
//! hypervisor's handler instructions are included: that is the point.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};
use diosix_guest_rt::{csr, dtb, hart, println, sbi, trap};

mod spawn;
mod tree;

diosix_guest_rt::entry!(main);

const SAMPLES: usize = 101;

static IDLE_UP: AtomicBool = AtomicBool::new(false);
static IDLE_STOP: AtomicBool = AtomicBool::new(false);

/// The IPI target: takes IPIs in `wfi` until told to stop.
fn idler(_hartid: usize, _opaque: usize) {
    trap::install();
    csr::sie_set(csr::SSI);
    trap::enable();
    IDLE_UP.store(true, Ordering::Release);
    trap::wait_until(|| IDLE_STOP.load(Ordering::Acquire));
    trap::disable();
}

/// Median instructions retired by `f`, less nothing (raw).
fn measure(mut f: impl FnMut()) -> u64 {
    let mut v = [0u64; SAMPLES];
    for s in v.iter_mut() {
        let a = csr::instret();
        f();
        let b = csr::instret();
        *s = b - a;
    }
    v.sort_unstable();
    v[SAMPLES / 2]
}

fn main(hartid: usize, dtb_addr: usize) {
    let first = diosix_guest_rt::boot_instret();
    let info = dtb::parse(dtb_addr);
    println!("bench first_instruction {first}");
    println!("bench harts {}", info.cpus);
    let empty = measure(|| {});
    println!("bench empty {empty}");
    let report = |name: &str, raw: u64| println!("bench {name} {}", raw.saturating_sub(empty));
    report(
        "null_call",
        measure(|| {
            core::hint::black_box(sbi::spec_version());
        }),
    );
    let far = csr::time() + info.timebase * 3600;
    report(
        "set_timer",
        measure(|| {
            sbi::set_timer(far);
        }),
    );
    sbi::set_timer(u64::MAX);
    // Spaces and a carriage return: 64 bytes that leave no visible trace on a terminal.
    let mut msg = [b' '; 64];
    msg[63] = b'\r';
    report(
        "dbcn_write_64",
        measure(|| {
            sbi::dbcn_write(&msg);
        }),
    );
    if let Some(&other) = info.harts().iter().find(|&&h| h != hartid) {
        hart::start(other, idler, 0);
        while !IDLE_UP.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        report(
            "send_ipi",
            measure(|| {
                sbi::send_ipi(1, other);
            }),
        );
        IDLE_STOP.store(true, Ordering::Release);
        sbi::send_ipi(1, other);
    } else {
        println!("bench send_ipi skipped (one hart)");
    }
    if info.cpus == 1 {
        tree::run(info.ram_size >> 20);
    }
    println!("bench done");
}
