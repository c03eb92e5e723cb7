//! Runs the `sbi-testing` crate's suites (BASE, TIME, sPI, HSM, DBCN) on every hart
//! the DTB lists and prints `sbi-testing: PASS` or `sbi-testing: FAIL`.
#![no_std]
#![no_main]

use diosix_guest_rt::{dtb, println, sbi};

diosix_guest_rt::entry!(main);

/// Forwards the suites' `log` records to the SBI console.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        println!("[{:5}] {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

fn main(hartid: usize, dtb_addr: usize) {
    let info = dtb::parse(dtb_addr);
    // set_logger only fails if called twice; this is the only call.
    let _ = log::set_logger(&LOGGER);
    // Debug shows each HSM step (start, suspend, resume, stop): a hang names its step.
    log::set_max_level(log::LevelFilter::Debug);
    // sbi-testing takes one usize mask relative to a base: cover every listed hart that
    // fits in a 64-bit window starting at the lowest id.
    let base = info.harts().iter().copied().min().unwrap_or(0);
    let mask = info
        .harts()
        .iter()
        .filter(|&&h| h - base < 64)
        .fold(0usize, |m, &h| m | 1 << (h - base));
    println!(
        "sbi-testing: boot hart {hartid}, {} harts, mask {mask:#x} base {base}",
        info.cpus
    );
    let ok = sbi_testing::Testing {
        hartid,
        hart_mask: mask,
        hart_mask_base: base,
        // 10 ms of timer ticks: long enough to be a real wait, short for the harness.
        delay: info.timebase / 100,
    }
    .test();
    println!("sbi-testing: {}", if ok { "PASS" } else { "FAIL" });
    sbi::shutdown(!ok);
}
