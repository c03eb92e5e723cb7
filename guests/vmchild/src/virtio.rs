//! The child's side of the virtio check: device 0's virtio-mmio window driven by hand,
//! as a driver would, so the parent (`vmtree`) sees every step through DEVICE_STATE.
//!
//! Queue 0 has 8 entries in [`QUEUE`] (descriptors at 0, available ring at 0x100, used
//! ring at 0x1000); one descriptor lends the device the 64 bytes of [`BUFFER`],
//! device-writable.

use crate::dsx;
use crate::reply;
use diosix_guest_rt::mem::Pages;
use diosix_guest_rt::{csr, sleep_ticks, virt};

/// Device 0's window (`diosix_abi::devices::MMIO_BASE`).
const WINDOW: usize = diosix_abi::devices::MMIO_BASE as usize;

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const VENDOR_ID: usize = 0x00c;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;

/// Queue entries.
const ENTRIES: u32 = 8;
/// Where the rings are.
static QUEUE: Pages<8192> = Pages::new();
/// The buffer the device fills.
static BUFFER: Pages<4096> = Pages::new();
/// Bytes lent.
const BUFFER_LEN: u32 = 64;

fn read(off: usize) -> u32 {
    // SAFETY: device 0's virtio-mmio window, which the hypervisor emulates (every
    // access traps); naturally aligned 32-bit accesses only.
    unsafe { core::ptr::read_volatile((WINDOW + off) as *const u32) }
}

fn write(off: usize, v: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((WINDOW + off) as *mut u32, v) }
}

fn write64(off: usize, v: u64) {
    write(off, v as u32);
    write(off + 4, (v >> 32) as u32);
}

/// The virtual PLIC's pending bit of device 0's source (1).
fn source_pending() -> u32 {
    (virt::plic_read(0x1000) >> diosix_abi::devices::FIRST_IRQ) & 1
}

/// One of the parent's `v*` commands.
pub fn command(from: u64, cmd: &str) {
    // SAFETY: only this hart drives the device, one command at a time.
    let (q, buf) = unsafe { (QUEUE.region(), BUFFER.region()) };
    let l: dsx::Line<160> = match cmd.trim() {
        "vup" => {
            let ids = (read(MAGIC), read(VERSION), read(DEVICE_ID), read(VENDOR_ID));
            write(STATUS, 1);
            write(STATUS, 3);
            write(DEVICE_FEATURES_SEL, 1);
            let high = read(DEVICE_FEATURES);
            write(DRIVER_FEATURES_SEL, 1);
            write(DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
            write(STATUS, 0xb);
            let features_ok = read(STATUS) & 8;
            write(QUEUE_SEL, 0);
            let max = read(QUEUE_NUM_MAX);
            write(QUEUE_NUM, ENTRIES);
            write64(QUEUE_DESC, q.addr() as u64);
            write64(QUEUE_DRIVER, (q.addr() + 0x100) as u64);
            write64(QUEUE_DEVICE, (q.addr() + 0x1000) as u64);
            write(QUEUE_READY, 1);
            write(STATUS, 0xf);
            // Descriptor 0: the buffer, device-writable; available ring: idx 1, [0] = 0.
            q.put_u64(0, buf.addr() as u64);
            q.put_u32(8, BUFFER_LEN);
            q.put_u16(12, 2);
            q.put_u16(14, 0);
            q.put_u16(0x100, 0);
            q.put_u16(0x104, 0);
            csr::fence_all();
            q.put_u16(0x102, 1);
            csr::fence_all();
            for _ in 0..10_000 {
                write(QUEUE_NOTIFY, 0);
            }
            dsx::fmt(format_args!(
                "virtio up {:x} {} {} {:x} high={high:x} fok={features_ok} max={max} status={:x}",
                ids.0,
                ids.1,
                ids.2,
                ids.3,
                read(STATUS)
            ))
        }
        "vused" => {
            // The parent serves the queue and raises the interrupt before sending this.
            let end = csr::time() + 10_000_000;
            while q.u64_at(0x1000) >> 16 & 0xffff == 0 && csr::time() < end {
                sleep_ticks(1000);
            }
            let used_idx = (q.u64_at(0x1000) >> 16) & 0xffff;
            let elem = q.u64_at(0x1004);
            let mut data = [0u8; 64];
            buf.read(0, &mut data);
            let data_ok = data.iter().enumerate().all(|(i, &b)| b == 0x5a ^ i as u8);
            let isr = read(INTERRUPT_STATUS);
            let before = source_pending();
            write(INTERRUPT_ACK, isr);
            let after = (read(INTERRUPT_STATUS), source_pending());
            dsx::fmt(format_args!(
                "virtio used={used_idx} id={} len={} data={} isr={isr} pending={before} after={}{}",
                elem & 0xffff_ffff,
                elem >> 32,
                if data_ok { "ok" } else { "bad" },
                after.0,
                after.1
            ))
        }
        "vstatus" => dsx::fmt(format_args!(
            "virtio status={:x} isr={} pending={}",
            read(STATUS),
            read(INTERRUPT_STATUS),
            source_pending()
        )),
        _ => {
            write(STATUS, 0);
            dsx::fmt(format_args!(
                "virtio reset status={} ready={} isr={} pending={}",
                read(STATUS),
                read(QUEUE_READY),
                read(INTERRUPT_STATUS),
                source_pending()
            ))
        }
    };
    reply(from, l.bytes());
}

/// `vfork`: a FORK clone of this VM has none of its devices, but its copy of a driver
/// may still touch them: the window must read as zero (and ignore writes) rather than
/// kill the clone. The clone exits with 13 when it does, with the magic it read
/// otherwise; the answer is `vfork ok code=<code>` or `vfork err <error>`.
pub fn fork_probe(from: u64) {
    use crate::dsx::{Client, DSX};
    let r = DSX.fork(0);
    if r.error != 0 {
        let l: dsx::Line<64> = dsx::fmt(format_args!("vfork err {}", r.error));
        reply(from, l.bytes());
        return;
    }
    if r.value == 0 {
        write(QUEUE_NOTIFY, 0);
        let magic = read(MAGIC);
        DSX.exit(1, if magic == 0 { 13 } else { u64::from(magic) });
        loop {
            sleep_ticks(1_000_000);
        }
    }
    let l: dsx::Line<64> = match crate::wait_terminated(r.value as u64, 5_000) {
        Some(code) => dsx::fmt(format_args!("vfork ok code={code}")),
        None => dsx::fmt(format_args!("vfork no event")),
    };
    reply(from, l.bytes());
}
