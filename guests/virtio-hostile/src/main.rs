//! A hostile virtio-blk driver: a child VM that abuses its device 0 (a virtio-blk disk
//! served by `dsx backend` in its parent, see `docs/dsx.md`) the ways a broken or
//! malicious driver could, and checks that it only ever gets what the backend promises:
//! `VIRTIO_BLK_S_IOERR` for a bad request (the device goes on), `DEVICE_NEEDS_RESET`
//! for a broken queue (nothing of the request touched), and a device that works again
//! after a reset. No wait is unbounded: each is at most [`WAIT_S`] seconds of `time`.
//!
//! Each check resets the device and brings it up afresh (status 0, ACKNOWLEDGE,
//! DRIVER, `VIRTIO_F_VERSION_1` only, FEATURES_OK, queue 0 of 8 entries in this
//! guest's RAM, DRIVER_OK), makes its requests and prints `ok <name>: <what it saw>` or
//! `FAIL <name>: <why>`; then `virtio-hostile: N passed, M failed`, and the guest idles
//! until its parent kills it. The `linux-dsx-hostile-virtio` QEMU case runs it in the
//! Root VM (`dsx run /usr/share/diosix/guests/virtio-hostile.elf --ram 16M --disk
//! FILE`) and checks the parent's side: the backend still running, one `NEEDS_RESET`
//! line in its log per broken queue ([`NEEDS_RESET_CHECKS`]), the file changed only in
//! sector [`PATTERN_SECTOR`], and every page back once the child is killed.
//!
//! What the backend does with each abuse (`tools/dsx/src/virtq.rs`, `backend.rs`,
//! `blk.rs`): the queue rules (every ring and buffer wholly in the child's RAM, every
//! index below the queue size, a chain at most the queue size long, no more entries
//! available than the queue holds) and a chain without a device-writable byte break the
//! device (NEEDS_RESET, checked before any buffer is touched); a malformed request, a
//! request over 1 MiB or a range beyond the capacity answers IOERR with used length 1.
#![no_std]
#![no_main]
// A check's result is bounded text by value (there is no allocator): a few hundred
// bytes on a 16 KiB stack, returned once per check.
#![allow(clippy::result_large_err)]

#[macro_use]
mod drv;

use diosix_guest_rt::line::fmt;
use diosix_guest_rt::mem::Pages;
use diosix_guest_rt::{csr, dtb, println, report, sleep_ticks};
use drv::{blk, bring_up, read, reg, write, Dev, Outcome, Why, DATA, ENTRIES, F_NEXT, F_WRITE};
use drv::{HDR, STAT};

diosix_guest_rt::entry!(main);

/// Seconds the first request may take: the parent starts the backend process after
/// SPAWN, so this guest may be faster than it.
const FIRST_WAIT_S: u64 = 30;
/// Seconds any other wait may take.
const WAIT_S: u64 = 5;
/// The sector the good write fills with [`pattern`].
const PATTERN_SECTOR: u64 = 1;
/// The sector a hostile write (its data partly outside RAM) aims at: must stay zero.
const TARGET_SECTOR: u64 = 100;
/// A guest-physical address outside any child's RAM (4 GiB).
const FAR: u64 = 0x1_0000_0000;
/// Doorbells rung in the storm.
const STORM: u32 = 100_000;
/// A request over the backend's 1 MiB cap, wholly in this guest's RAM.
const BIG_LEN: usize = 0x20_0000;
/// The checks that must end in DEVICE_NEEDS_RESET (and so one `raising NEEDS_RESET`
/// line each in the backend's log): the QEMU case expects this many.
pub const NEEDS_RESET_CHECKS: usize = 14;

/// The buffer of the request over 1 MiB: the backend must never write a byte of it.
static BIG: Pages<BIG_LEN> = Pages::new();

/// What the checks know of this VM and its disk.
struct Ctx {
    ram_end: u64,
    tb: u64,
    capacity: u64,
}

/// `Ok` with what a check saw.
macro_rules! seen {
    ($($arg:tt)*) => {
        Ok(fmt(format_args!($($arg)*)))
    };
}

/// A check: `Ok(what it saw)` or `Err(why it failed)`.
type Check = fn(&Ctx) -> Result<Why, Why>;

/// The byte at offset `i` of sector [`PATTERN_SECTOR`] (never 0, so the parent can
/// count the bytes written).
fn pattern(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

/// What a fresh (zeroed) sector holds.
fn zero(_: usize) -> u8 {
    0
}

/// Milliseconds in `ticks` of `time`.
fn ms(c: &Ctx, ticks: u64) -> u64 {
    ticks * 1000 / c.tb
}

/// `e` prefixed with `what`.
fn within(what: &str, e: Why) -> Why {
    fmt(format_args!("{what}: {}", e.as_str()))
}

/// A good 512-byte read of `sector` into the data buffer (filled with 0xee first):
/// status OK, used length 513 (data and status), every byte `want(i)`.
fn good_read(d: &mut Dev, sector: u64, secs: u64, want: fn(usize) -> u8) -> Result<(), Why> {
    let buf = d.data();
    buf.fill(0, 512, 0xee);
    let head = d.request(blk::IN, sector, Some((d.gpa(DATA), 512, true)));
    let (s, len) = d.io(head, secs).map_err(|e| within("a good read", e))?;
    if s != blk::S_OK || len != 513 {
        return why!("a good read of sector {sector}: status {s}, used length {len}");
    }
    let mut b = [0u8; 512];
    buf.read(0, &mut b);
    if let Some(i) = (0..512).find(|&i| b[i] != want(i)) {
        return why!(
            "a good read of sector {sector}: byte {i} is {:#x}, not {:#x}",
            b[i],
            want(i)
        );
    }
    Ok(())
}

/// Submits `head` and waits for its answer: status IOERR, used length 1.
fn ioerr(d: &mut Dev, head: u16, what: &str) -> Result<(), Why> {
    let (s, len) = d.io(head, WAIT_S).map_err(|e| within(what, e))?;
    if s != blk::S_IOERR || len != 1 {
        return why!("{what}: status {s}, used length {len} (not IOERR, 1)");
    }
    Ok(())
}

/// Submits `head` and waits for DEVICE_NEEDS_RESET: nothing used, the request's status
/// byte never written (the backend touched none of its buffers).
fn broken(d: &mut Dev, head: u16) -> Result<Why, Why> {
    let before = d.used_idx();
    d.submit(head);
    let outcome = d.wait(d.avail, WAIT_S);
    if outcome != Outcome::NeedsReset {
        return why!(
            "{outcome:?}, not NEEDS_RESET (status {:#x}, status byte {:#x})",
            read(reg::STATUS),
            d.status_byte()
        );
    }
    let after = d.used_idx();
    if after != before {
        return why!("NEEDS_RESET, but the used index moved from {before} to {after}");
    }
    if d.status_byte() != 0xff {
        return why!(
            "NEEDS_RESET, but the status byte was written ({:#x})",
            d.status_byte()
        );
    }
    seen!(
        "NEEDS_RESET (status {:#x}, isr {:#x}), nothing used, status byte untouched",
        read(reg::STATUS),
        read(reg::INTERRUPT_STATUS)
    )
}

/// The window is a virtio-blk device of the backend's: magic, version 2, device ID 2,
/// vendor "DSX5", a capacity large enough for the sectors used here.
fn identify(c: &Ctx) -> Result<Why, Why> {
    let (magic, version, id, vendor) = (
        read(reg::MAGIC),
        read(reg::VERSION),
        read(reg::DEVICE_ID),
        read(reg::VENDOR_ID),
    );
    if (magic, version, id, vendor) != (0x7472_6976, 2, 2, 0x3558_5344) {
        return why!("magic {magic:#x} version {version} device {id} vendor {vendor:#x}");
    }
    write(reg::DEVICE_FEATURES_SEL, 0);
    let lo = read(reg::DEVICE_FEATURES);
    write(reg::DEVICE_FEATURES_SEL, 1);
    let hi = read(reg::DEVICE_FEATURES);
    write(reg::QUEUE_SEL, 0);
    let max = read(reg::QUEUE_NUM_MAX);
    if c.capacity < TARGET_SECTOR + 8 {
        return why!("capacity {} sectors", c.capacity);
    }
    seen!(
        "virtio-blk, features {hi:#x}:{lo:#010x}, QueueNumMax {max}, capacity {} sectors",
        c.capacity
    )
}

/// A good read of sector 0 (the backend may still be starting: up to
/// [`FIRST_WAIT_S`]).
fn read_sector_0(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let t0 = csr::time();
    good_read(&mut d, 0, FIRST_WAIT_S, zero)?;
    seen!(
        "status OK, used length 513, 512 zero bytes, in {} ms",
        ms(c, csr::time() - t0)
    )
}

/// GET_ID: `dsx-CID-0`.
fn get_id(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    d.data().fill(0, 32, 0xee);
    let head = d.request(blk::GET_ID, 0, Some((d.gpa(DATA), 20, true)));
    let (s, len) = d.io(head, WAIT_S)?;
    let mut id = [0u8; 20];
    d.data().read(0, &mut id);
    let n = id.iter().position(|&b| b == 0).unwrap_or(20);
    let text = core::str::from_utf8(&id[..n]).unwrap_or("?");
    if s != blk::S_OK || len != 21 || !text.starts_with("dsx-") || !text.ends_with("-0") {
        return why!("status {s}, used length {len}, id {text:?}");
    }
    seen!("{text}")
}

/// Writes [`pattern`] to sector [`PATTERN_SECTOR`] and reads it back.
fn write_read_back(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let mut bytes = [0u8; 512];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = pattern(i);
    }
    d.data().write(0, &bytes);
    let head = d.request(blk::OUT, PATTERN_SECTOR, Some((d.gpa(DATA), 512, false)));
    let (s, len) = d.io(head, WAIT_S)?;
    if s != blk::S_OK || len != 1 {
        return why!("the write: status {s}, used length {len}");
    }
    good_read(&mut d, PATTERN_SECTOR, WAIT_S, pattern)?;
    seen!("written (status OK, used length 1) and read back")
}

/// Reads and writes beyond the capacity, and sectors whose byte offset overflows, on
/// one queue: IOERR each, no data byte written; then a good read on the same queue,
/// without a reset.
fn beyond_capacity(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let cap = c.capacity;
    let cases: [(&str, u32, u64, u32, bool); 5] = [
        ("a read at the capacity", blk::IN, cap, 512, true),
        ("a read across the end", blk::IN, cap - 1, 1024, true),
        ("a write at the capacity", blk::OUT, cap, 512, false),
        (
            "a read whose offset overflows",
            blk::IN,
            u64::MAX / 512 + 1,
            512,
            true,
        ),
        ("a read at sector 2^64-1", blk::IN, u64::MAX, 512, true),
    ];
    for (what, kind, sector, len, writable) in cases {
        d.data().fill(0, 0x1000, 0xee);
        let head = d.request(kind, sector, Some((d.gpa(DATA), len, writable)));
        ioerr(&mut d, head, what)?;
        let mut b = [0u8; 1024];
        d.data().read(0, &mut b);
        if b.iter().any(|&x| x != 0xee) {
            return why!("{what}: IOERR, but data bytes were written");
        }
    }
    if read(reg::STATUS) != 0xf {
        return why!("status {:#x} after the IOERRs", read(reg::STATUS));
    }
    good_read(&mut d, PATTERN_SECTOR, WAIT_S, pattern)?;
    seen!(
        "{} requests beyond {cap} sectors: IOERR, used length 1, no byte written; \
         then a good read on the same queue",
        cases.len()
    )
}

/// Malformed requests, each its own IOERR (UNSUPP for an unknown type), the device
/// going on: data not whole sectors, a short header, a device-writable header, data
/// the wrong way for IN and for OUT, a device-readable buffer after a device-writable
/// one; then a good read without a reset.
fn malformed(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let data = d.gpa(DATA);
    let head = d.request(blk::IN, 0, Some((data, 100, true)));
    ioerr(&mut d, head, "100 data bytes")?;
    let head = d.request(blk::IN, 0, Some((data, 512, true)));
    d.desc(0, d.gpa(HDR), 8, F_NEXT, 1);
    ioerr(&mut d, head, "an 8-byte header")?;
    let head = d.request(blk::IN, 0, Some((data, 512, true)));
    d.desc(0, d.gpa(HDR), 16, F_WRITE | F_NEXT, 1);
    ioerr(&mut d, head, "a device-writable header")?;
    let head = d.request(blk::IN, 0, Some((data, 512, false)));
    ioerr(&mut d, head, "IN with device-readable data")?;
    let head = d.request(blk::OUT, TARGET_SECTOR, Some((data, 512, true)));
    ioerr(&mut d, head, "OUT with device-writable data")?;
    // header (R), data (W), more data (R), status (W).
    let head = d.request(blk::IN, 0, Some((data, 512, true)));
    d.desc(2, data + 0x800, 512, F_NEXT, 3);
    d.desc(3, d.gpa(STAT), 1, F_WRITE, 0);
    ioerr(&mut d, head, "a readable buffer after a writable one")?;
    let head = d.request(0x55, 0, None);
    let (s, len) = d.io(head, WAIT_S)?;
    if s != blk::S_UNSUPP || len != 1 {
        return why!("type 0x55: status {s}, used length {len} (not UNSUPP, 1)");
    }
    good_read(&mut d, PATTERN_SECTOR, WAIT_S, pattern)?;
    seen!("6 IOERR and 1 UNSUPP, then a good read on the same queue")
}

/// A 2 MiB read (over the 1 MiB cap) into a buffer wholly in this guest's RAM: IOERR,
/// refused from the lengths alone (not a byte of the buffer written); the device goes
/// on.
fn over_one_mib(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    // SAFETY: `BIG` is used by this check only, on this hart.
    let big = unsafe { BIG.region() };
    big.fill(0, BIG_LEN, 0xee);
    let head = d.request(blk::IN, 0, Some((big.addr() as u64, BIG_LEN as u32, true)));
    ioerr(&mut d, head, "a 2 MiB read")?;
    let mut chunk = [0u8; 512];
    for at in (0..BIG_LEN).step_by(chunk.len()) {
        big.read(at, &mut chunk);
        if chunk.iter().any(|&b| b != 0xee) {
            return why!("IOERR, but the 2 MiB buffer was written near offset {at:#x}");
        }
    }
    good_read(&mut d, 0, WAIT_S, zero)?;
    seen!("IOERR, used length 1, the buffer untouched; then a good read")
}

/// A data descriptor at 4 GiB.
fn data_outside_ram(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((FAR, 512, true)));
    broken(&mut d, head)
}

/// A data descriptor straddling the end of this guest's RAM (from its device tree).
fn data_past_ram_end(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((c.ram_end - 256, 512, true)));
    broken(&mut d, head)
}

/// A data descriptor at the device's own MMIO window.
fn data_in_mmio_window(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((drv::WINDOW as u64, 512, true)));
    broken(&mut d, head)
}

/// A write to sector [`TARGET_SECTOR`] whose data straddles the end of RAM: the
/// device breaks before reading a byte, the sector stays zero (the parent checks).
fn write_from_past_ram_end(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::OUT, TARGET_SECTOR, Some((c.ram_end - 256, 512, false)));
    broken(&mut d, head)
}

/// The descriptor table at 4 GiB (the transport only checks alignment).
fn rings_outside_ram(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, Some(FAR))?;
    let head = d.request(blk::IN, 0, Some((d.gpa(DATA), 512, true)));
    broken(&mut d, head)
}

/// Descriptor 0 -> 1 -> 0, both with NEXT.
fn chain_loop(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    d.header(blk::IN, 0);
    d.arm_status();
    d.desc(0, d.gpa(HDR), 16, F_NEXT, 1);
    d.desc(1, d.gpa(DATA), 512, F_WRITE | F_NEXT, 0);
    broken(&mut d, 0)
}

/// Descriptor 0 -> 0.
fn chain_self_loop(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    d.header(blk::IN, 0);
    d.arm_status();
    d.desc(0, d.gpa(HDR), 16, F_NEXT, 0);
    broken(&mut d, 0)
}

/// A NEXT to descriptor 8 in a queue of 8.
fn chain_next_beyond_queue(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((d.gpa(DATA), 512, true)));
    d.desc(1, d.gpa(DATA), 512, F_WRITE | F_NEXT, ENTRIES);
    broken(&mut d, head)
}

/// An available entry naming descriptor 200 in a queue of 8.
fn avail_head_beyond_queue(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    d.request(blk::IN, 0, Some((d.gpa(DATA), 512, true)));
    broken(&mut d, 200)
}

/// A data length of 0xffff_f000.
fn huge_data_len(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((d.gpa(DATA), 0xffff_f000, true)));
    broken(&mut d, head)
}

/// A header length of 0x8000_0000.
fn huge_header_len(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((d.gpa(DATA), 512, true)));
    d.desc(0, d.gpa(HDR), 0x8000_0000, F_NEXT, 1);
    broken(&mut d, head)
}

/// A chain with no device-writable byte (a lone header): nowhere to put the status.
fn no_status_byte(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    d.header(blk::IN, 0);
    d.arm_status();
    d.desc(0, d.gpa(HDR), 16, 0, 0);
    broken(&mut d, 0)
}

/// [`STORM`] doorbells with nothing new available: nothing used, the device still
/// live; then a good read completes.
fn doorbell_storm(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let t0 = csr::time();
    for _ in 0..STORM {
        d.notify();
    }
    let storm = csr::time() - t0;
    let (s, used) = (read(reg::STATUS), d.used_idx());
    if s != 0xf || used != 0 {
        return why!("after the storm: status {s:#x}, used index {used}");
    }
    let t1 = csr::time();
    good_read(&mut d, PATTERN_SECTOR, WAIT_S, pattern)?;
    seen!(
        "{STORM} doorbells in {} ms, nothing used; then a good read in {} ms",
        ms(c, storm),
        ms(c, csr::time() - t1)
    )
}

/// Eight good reads (the same chain offered in every entry) with one doorbell, the used
/// ring never read and InterruptStatus never acknowledged; a second eight a second
/// later; then nine more, 25 in a ring of 8: NEEDS_RESET (however many the device had
/// taken, more than the queue holds are waiting). After a reset the device is quiet
/// (status and InterruptStatus 0) and a good read works.
fn never_consume(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    d.header(blk::IN, 0);
    d.m.fill(DATA, 513, 0xee);
    // Header, then data and status in one device-writable buffer (the device sees
    // byte streams: its last writable byte is the status).
    d.desc(0, d.gpa(HDR), 16, F_NEXT, 1);
    d.desc(1, d.gpa(DATA), 513, F_WRITE, 0);
    for (from, to) in [(0u16, 8u16), (8, 16), (16, 25)] {
        for i in from..to {
            d.put_avail(i, 0);
        }
        d.publish(to);
        d.notify();
        if to < 25 {
            sleep_ticks(c.tb);
        }
    }
    if !d.wait_needs_reset(WAIT_S) {
        return why!(
            "no NEEDS_RESET with 25 entries offered in a ring of 8 (status {:#x})",
            read(reg::STATUS)
        );
    }
    // Only now looked at, for the record.
    let (used, isr) = (d.used_idx(), read(reg::INTERRUPT_STATUS));
    if used % ENTRIES != 0 || used > 16 {
        return why!("used index {used} (not 0, 8 or 16)");
    }
    drv::reset()?;
    let mut d = bring_up(c.tb, None)?;
    good_read(&mut d, 0, WAIT_S, zero)?;
    seen!(
        "{used} of the first 16 served, isr {isr:#x} never acknowledged; NEEDS_RESET at 25; \
         after a reset a good read"
    )
}

/// The available index 1000 in a ring of 8: NEEDS_RESET, nothing served.
fn avail_far_ahead(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    let head = d.request(blk::IN, 0, Some((d.gpa(DATA), 512, true)));
    for i in 0..ENTRIES {
        d.put_avail(i, head);
    }
    d.publish(1000);
    d.notify();
    if !d.wait_needs_reset(WAIT_S) {
        return why!(
            "no NEEDS_RESET (status {:#x}, used index {})",
            read(reg::STATUS),
            d.used_idx()
        );
    }
    if d.used_idx() != 0 || d.status_byte() != 0xff {
        return why!(
            "NEEDS_RESET, but used index {} and status byte {:#x}",
            d.used_idx(),
            d.status_byte()
        );
    }
    seen!("NEEDS_RESET, nothing served")
}

/// After everything: a reset and the disk reads as this guest left it (the pattern in
/// sector [`PATTERN_SECTOR`], zeros in 0 and [`TARGET_SECTOR`]).
fn recovers(c: &Ctx) -> Result<Why, Why> {
    let mut d = bring_up(c.tb, None)?;
    good_read(&mut d, PATTERN_SECTOR, WAIT_S, pattern)?;
    good_read(&mut d, 0, WAIT_S, zero)?;
    good_read(&mut d, TARGET_SECTOR, WAIT_S, zero)?;
    seen!("sectors 1 (pattern), 0 and 100 (zeros) read back")
}

/// Every check, in order. The [`NEEDS_RESET_CHECKS`] that break the device:
/// `data_outside_ram` to `no_status_byte`, `never_consume` and `avail_far_ahead`.
const CHECKS: &[(&str, Check)] = &[
    ("identify", identify),
    ("read_sector_0", read_sector_0),
    ("get_id", get_id),
    ("write_read_back", write_read_back),
    ("beyond_capacity_ioerr", beyond_capacity),
    ("malformed_ioerr", malformed),
    ("over_1mib_ioerr", over_one_mib),
    ("data_outside_ram", data_outside_ram),
    ("data_past_ram_end", data_past_ram_end),
    ("data_in_mmio_window", data_in_mmio_window),
    ("write_from_past_ram_end", write_from_past_ram_end),
    ("rings_outside_ram", rings_outside_ram),
    ("chain_loop", chain_loop),
    ("chain_self_loop", chain_self_loop),
    ("chain_next_beyond_queue", chain_next_beyond_queue),
    ("avail_head_beyond_queue", avail_head_beyond_queue),
    ("huge_data_len", huge_data_len),
    ("huge_header_len", huge_header_len),
    ("no_status_byte", no_status_byte),
    ("doorbell_storm", doorbell_storm),
    ("never_consume", never_consume),
    ("avail_far_ahead", avail_far_ahead),
    ("recovers", recovers),
];

fn main(_hartid: usize, dtb_addr: usize) {
    let info = dtb::parse(dtb_addr);
    // The configuration space reads the same in any state.
    let ctx = Ctx {
        ram_end: info.ram_end() as u64,
        tb: info.timebase,
        capacity: drv::capacity(),
    };
    println!(
        "virtio-hostile: {} MiB RAM at {:#x}, virtio-blk window at {:#x}, {} checks",
        info.ram_size >> 20,
        info.ram_base,
        drv::WINDOW,
        CHECKS.len()
    );
    for &(name, check) in CHECKS {
        match check(&ctx) {
            Ok(saw) => report::pass_with(format_args!("{name}: {}", saw.as_str())),
            Err(why) => report::fail_with(format_args!("{name}: {}", why.as_str())),
        }
    }
    // Leave the device quiet: nothing pending, its line low.
    write(reg::INTERRUPT_ACK, read(reg::INTERRUPT_STATUS));
    write(reg::STATUS, 0);
    report::summary("virtio-hostile");
    // Idle until the parent kills this VM: no interrupt is enabled, so WFI waits for
    // nothing.
    loop {
        csr::wfi();
    }
}
