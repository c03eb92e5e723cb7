//! Device 0's virtio-mmio window driven by hand: the registers, a bring-up with one
//! split virtqueue of [`ENTRIES`] entries in this guest's RAM, descriptors, the
//! available ring, the doorbell, and bounded waits for the used ring or for
//! `DEVICE_NEEDS_RESET`.
//!
//! Each bring-up takes a fresh [`SLOT`] of [`MEM`] for its rings and buffers, so a
//! backend that is still finishing a pass over an earlier queue (after this guest
//! reset the device) can only write into memory no later check looks at.

use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_guest_rt::line::Line;
use diosix_guest_rt::mem::{Pages, Region};
use diosix_guest_rt::{csr, sleep_ticks};

/// Device 0's window (`diosix_abi::devices::MMIO_BASE`).
pub const WINDOW: usize = diosix_abi::devices::MMIO_BASE as usize;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const VENDOR_ID: usize = 0x00c;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC: usize = 0x080;
    pub const QUEUE_DRIVER: usize = 0x090;
    pub const QUEUE_DEVICE: usize = 0x0a0;
    /// The device's configuration space (`struct virtio_blk_config`).
    pub const CONFIG: usize = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod st {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
}

/// virtio-blk request types and status bytes (virtio 1.2, 5.2.6).
pub mod blk {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const GET_ID: u32 = 8;
    pub const S_OK: u8 = 0;
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
}

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// Queue size of every bring-up.
pub const ENTRIES: u16 = 8;

/// Bytes of one check's memory: rings, then buffers.
pub const SLOT: usize = 0x4000;
/// Bring-ups one run may make.
const SLOTS: usize = 40;
/// In a slot: the descriptor table (8 × 16 bytes).
const DESC: usize = 0;
/// The available ring (flags, idx, ring[8], used_event).
const AVAIL: usize = 0x100;
/// The used ring (flags, idx, ring[8] of (id, len), avail_event).
const USED: usize = 0x1000;
/// A request's 16-byte header.
pub const HDR: usize = 0x2000;
/// A request's status byte.
pub const STAT: usize = 0x2100;
/// Data buffers (4 KiB).
pub const DATA: usize = 0x3000;

/// Every slot.
static MEM: Pages<{ SLOTS * SLOT }> = Pages::new();
/// The next slot to take.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A check's reason for failing (or what it observed).
pub type Why = Line<200>;

/// `Err` with a formatted reason (a [`Why`]).
macro_rules! why {
    ($($arg:tt)*) => {
        Err(diosix_guest_rt::line::fmt(format_args!($($arg)*)))
    };
}

/// Reads a 32-bit register of the window.
pub fn read(off: usize) -> u32 {
    // SAFETY: device 0's virtio-mmio window, which the hypervisor emulates (every
    // access traps); naturally aligned 32-bit accesses only.
    unsafe { core::ptr::read_volatile((WINDOW + off) as *const u32) }
}

/// Writes a 32-bit register of the window.
pub fn write(off: usize, v: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((WINDOW + off) as *mut u32, v) }
}

fn write64(off: usize, v: u64) {
    write(off, v as u32);
    write(off + 4, (v >> 32) as u32);
}

/// The disk's capacity in sectors (configuration bytes 0..8).
pub fn capacity() -> u64 {
    u64::from(read(reg::CONFIG)) | u64::from(read(reg::CONFIG + 4)) << 32
}

/// Resets the device (status 0) and checks the reset took: status and
/// InterruptStatus read 0.
pub fn reset() -> Result<(), Why> {
    write(reg::STATUS, 0);
    let (s, isr) = (read(reg::STATUS), read(reg::INTERRUPT_STATUS));
    if s != 0 || isr != 0 {
        return why!("after a reset status={s:#x} isr={isr:#x}");
    }
    Ok(())
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The used index reached the target; the last used element.
    Used { id: u32, len: u32 },
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// Neither within the time allowed.
    Timeout,
}

/// A live device with queue 0 in one slot.
pub struct Dev {
    /// The slot: rings and buffers.
    pub m: Region,
    /// The available index the driver published last.
    pub avail: u16,
    /// `time` ticks per second.
    pub tb: u64,
}

/// Resets the device and brings it up: ACKNOWLEDGE, DRIVER, `VIRTIO_F_VERSION_1`
/// only, FEATURES_OK, queue 0 of [`ENTRIES`] entries in a fresh slot (its descriptor
/// table at `desc_at` instead, when given), DRIVER_OK.
pub fn bring_up(tb: u64, desc_at: Option<u64>) -> Result<Dev, Why> {
    let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    if slot >= SLOTS {
        return why!("out of queue slots ({SLOTS})");
    }
    // SAFETY: `MEM` is used by this hart only, and each slot by one bring-up.
    let m = unsafe { MEM.region() }.sub(slot * SLOT, SLOT);
    m.fill(0, SLOT, 0);
    reset()?;
    write(reg::STATUS, st::ACKNOWLEDGE);
    write(reg::STATUS, st::ACKNOWLEDGE | st::DRIVER);
    write(reg::DRIVER_FEATURES_SEL, 0);
    write(reg::DRIVER_FEATURES, 0);
    write(reg::DRIVER_FEATURES_SEL, 1);
    write(reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    write(reg::STATUS, st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK);
    if read(reg::STATUS) & st::FEATURES_OK == 0 {
        return why!("FEATURES_OK refused (status {:#x})", read(reg::STATUS));
    }
    write(reg::QUEUE_SEL, 0);
    let max = read(reg::QUEUE_NUM_MAX);
    if max < u32::from(ENTRIES) {
        return why!("QueueNumMax {max}");
    }
    write(reg::QUEUE_NUM, u32::from(ENTRIES));
    let desc = desc_at.unwrap_or((m.addr() + DESC) as u64);
    write64(reg::QUEUE_DESC, desc);
    write64(reg::QUEUE_DRIVER, (m.addr() + AVAIL) as u64);
    write64(reg::QUEUE_DEVICE, (m.addr() + USED) as u64);
    csr::fence_all();
    write(reg::QUEUE_READY, 1);
    if read(reg::QUEUE_READY) != 1 {
        return why!("queue 0 not ready (descriptors at {desc:#x})");
    }
    write(
        reg::STATUS,
        st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
    );
    // (A backend may break the device as soon as it is live: its bit is the checks'
    // to judge.)
    let s = read(reg::STATUS);
    if s & !st::NEEDS_RESET != 0xf {
        return why!("status {s:#x} after DRIVER_OK");
    }
    Ok(Dev { m, avail: 0, tb })
}

impl Dev {
    /// The GPA of byte `off` of the slot.
    pub fn gpa(&self, off: usize) -> u64 {
        (self.m.addr() + off) as u64
    }

    /// Writes descriptor `i`.
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * usize::from(i);
        self.m.put_u64(at, addr);
        self.m.put_u32(at + 8, len);
        self.m.put_u16(at + 12, flags);
        self.m.put_u16(at + 14, next);
    }

    /// Writes a request header (`type`, reserved 0, `sector`) at [`HDR`].
    pub fn header(&self, kind: u32, sector: u64) {
        self.m.put_u32(HDR, kind);
        self.m.put_u32(HDR + 4, 0);
        self.m.put_u64(HDR + 8, sector);
    }

    /// Sets the status byte to 0xff, to see whether the device writes it.
    pub fn arm_status(&self) {
        self.m.put_u16(STAT, 0xffff);
    }

    /// The status byte.
    pub fn status_byte(&self) -> u8 {
        let mut b = [0u8; 1];
        self.m.read(STAT, &mut b);
        b[0]
    }

    /// Linux's layout from descriptor 0: the header (device-readable), then `data`
    /// (`(gpa, len, device-writable)`) if any, then the status byte (device-writable),
    /// chained with NEXT. Returns the head, 0.
    pub fn request(&self, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) -> u16 {
        self.header(kind, sector);
        self.arm_status();
        let status = (2, self.gpa(STAT));
        match data {
            Some((addr, len, writable)) => {
                self.desc(0, self.gpa(HDR), 16, F_NEXT, 1);
                let w = if writable { F_WRITE } else { 0 };
                self.desc(1, addr, len, w | F_NEXT, 2);
                self.desc(status.0, status.1, 1, F_WRITE, 0);
            }
            None => {
                self.desc(0, self.gpa(HDR), 16, F_NEXT, 2);
                self.desc(status.0, status.1, 1, F_WRITE, 0);
            }
        }
        0
    }

    /// Puts `head` in the next available entry (without publishing the index).
    pub fn put_avail(&self, idx: u16, head: u16) {
        self.m
            .put_u16(AVAIL + 4 + 2 * usize::from(idx % ENTRIES), head);
    }

    /// Publishes available index `idx` (after a fence, so the entries and
    /// descriptors before it are visible first).
    pub fn publish(&mut self, idx: u16) {
        csr::fence_all();
        self.m.put_u16(AVAIL + 2, idx);
        csr::fence_all();
        self.avail = idx;
    }

    /// Rings the doorbell of queue 0.
    pub fn notify(&self) {
        write(reg::QUEUE_NOTIFY, 0);
    }

    /// Offers `head` as the next available entry and rings the doorbell.
    pub fn submit(&mut self, head: u16) {
        self.put_avail(self.avail, head);
        self.publish(self.avail.wrapping_add(1));
        self.notify();
    }

    /// The used index the device published.
    pub fn used_idx(&self) -> u16 {
        csr::fence_all();
        let mut b = [0u8; 2];
        self.m.read(USED + 2, &mut b);
        u16::from_le_bytes(b)
    }

    /// Used element `i` (modulo the size): (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let e = self.m.u64_at(USED + 4 + 8 * usize::from(i % ENTRIES));
        (e as u32, (e >> 32) as u32)
    }

    /// Waits up to `secs` seconds for the used index to reach `target`, or for
    /// DEVICE_NEEDS_RESET; polls every millisecond.
    pub fn wait(&self, target: u16, secs: u64) -> Outcome {
        let deadline = csr::time() + secs * self.tb;
        loop {
            if self.used_idx() == target {
                csr::fence_all();
                let (id, len) = self.used_elem(target.wrapping_sub(1));
                return Outcome::Used { id, len };
            }
            if read(reg::STATUS) & st::NEEDS_RESET != 0 {
                return Outcome::NeedsReset;
            }
            if csr::time() >= deadline {
                return Outcome::Timeout;
            }
            sleep_ticks(self.tb / 1000);
        }
    }

    /// Waits up to `secs` seconds for DEVICE_NEEDS_RESET alone (the used ring is not
    /// looked at).
    pub fn wait_needs_reset(&self, secs: u64) -> bool {
        let deadline = csr::time() + secs * self.tb;
        while csr::time() < deadline {
            if read(reg::STATUS) & st::NEEDS_RESET != 0 {
                return true;
            }
            sleep_ticks(self.tb / 1000);
        }
        read(reg::STATUS) & st::NEEDS_RESET != 0
    }

    /// Submits `head` and waits for it: (status byte, used length). Anything but its
    /// own used element within `secs` seconds is an error.
    pub fn io(&mut self, head: u16, secs: u64) -> Result<(u8, u32), Why> {
        self.submit(head);
        match self.wait(self.avail, secs) {
            Outcome::Used { id, len } if id == u32::from(head) => Ok((self.status_byte(), len)),
            Outcome::Used { id, len } => why!("used element id {id} len {len}, not {head}"),
            other => why!(
                "{other:?} (used idx {}, status {:#x})",
                self.used_idx(),
                read(reg::STATUS)
            ),
        }
    }

    /// The data buffer ([`DATA`], 4 KiB).
    pub fn data(&self) -> Region {
        self.m.sub(DATA, 0x1000)
    }
}
