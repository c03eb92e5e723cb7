//! The demo Root VM: says hello from every vCPU, then echoes console input until `q`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_guest_rt::{console, dtb, hart, println, sbi};

diosix_guest_rt::entry!(main);

/// Secondary vCPUs that have said hello.
static HELLOS: AtomicUsize = AtomicUsize::new(0);

fn secondary(hartid: usize, _opaque: usize) {
    println!("Diosix demo guest: hello from hart {hartid} in VS-mode");
    HELLOS.fetch_add(1, Ordering::AcqRel);
}

fn main(hartid: usize, dtb_addr: usize) {
    let info = dtb::parse(dtb_addr);
    println!("Diosix demo guest: hello from hart {hartid} in VS-mode");
    let v = sbi::spec_version();
    println!(
        "demo: SBI spec {}.{}, implementation id {} version {:#x}",
        v >> 24,
        v & 0xff_ffff,
        sbi::impl_id(),
        sbi::impl_version()
    );
    println!(
        "demo: {} vCPUs, {} MiB RAM at {:#x}",
        info.cpus,
        info.ram_size >> 20,
        info.ram_base
    );
    let mut started = 0;
    for &h in info.harts().iter().filter(|&&h| h != hartid) {
        let ret = hart::start(h, secondary, 0);
        if ret.is_ok() {
            started += 1;
        } else {
            println!("demo: could not start hart {h}: error {}", ret.error);
        }
    }
    // Bounded wait so a lost vCPU shows up as a message rather than a hang.
    let deadline = diosix_guest_rt::csr::time() + info.timebase * 5;
    while HELLOS.load(Ordering::Acquire) < started && diosix_guest_rt::csr::time() < deadline {
        core::hint::spin_loop();
    }
    println!(
        "demo: {} of {} vCPUs said hello",
        HELLOS.load(Ordering::Acquire) + 1,
        info.cpus
    );
    println!("demo: type to echo, 'q' to quit");
    loop {
        match console::try_read_byte() {
            Some(b'q') => break,
            Some(b'\r') => console::write_bytes(b"\r\n"),
            Some(b) => console::write_bytes(&[b]),
            // Nothing waiting: sleep 10 ms rather than spin on the SBI.
            None => diosix_guest_rt::sleep_ticks(info.timebase / 100),
        }
    }
    println!();
    println!("demo: bye");
}
