//! Split virtqueues (virtio 1.2, section 2.7) walked from outside the child: the
//! device side of a queue whose rings live in a child's RAM, read and written only
//! through [`ChildMem`] (CHILD_MEM_READ / CHILD_MEM_WRITE in `dsx`, a `Vec` in the
//! tests).
//!
//! Nothing the child wrote is trusted: every ring index is taken modulo the queue size
//! and every descriptor index checked against it, a chain is at most the queue size
//! long, indirect descriptors (never offered) are refused, and every buffer's whole
//! range must lie in the child's RAM before any byte of any buffer of its chain is
//! touched. A violation is a [`QueueError`], which the backend answers with
//! NEEDS_RESET.
//!
//! Few calls: each CHILD_MEM_READ / CHILD_MEM_WRITE is a trap into the hypervisor, so
//! the walker takes the available index in one read, then the whole descriptor table
//! and available ring in one more ([`Queue::snapshot`]: one copy when they are
//! adjacent, as Linux lays them out), and works on that snapshot (which also means a
//! descriptor is read once: the child cannot change it between check and use); it
//! writes a batch's used elements in one write (two when they wrap) and then the used
//! index. [`read_spans`] reads scattered small ranges with as few copies as it can.

use std::fmt;

use diosix_abi::{devices, error, limits, QueueState};

use crate::hv::{CallError, Hypervisor};

/// Bytes of one descriptor (`struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;
/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (else device-readable).
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (`VIRTIO_F_INDIRECT_DESC`,
/// which no device of ours offers).
pub const DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks for no used-buffer interrupt.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why a queue cannot be served: the child's driver broke the rules (or its memory is
/// not where it says), except [`QueueError::Gone`] and [`QueueError::Device`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The child is gone (CHILD_MEM answered INVALID_PARAM).
    Gone,
    /// CHILD_MEM refused to copy `len` bytes at `gpa`.
    Memory {
        /// Where.
        gpa: u64,
        /// How much.
        len: u64,
        /// What the hypervisor or driver answered.
        err: CallError,
    },
    /// `len` bytes at `gpa` are not all the child's RAM (or the range wraps).
    OutsideRam {
        /// Where.
        gpa: u64,
        /// How much.
        len: u64,
    },
    /// A descriptor index at or beyond the queue size.
    Index {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor chain longer than the queue (a loop, or garbage).
    ChainTooLong {
        /// Its head.
        head: u16,
    },
    /// An indirect descriptor, which was never offered.
    Indirect {
        /// Its index.
        index: u16,
    },
    /// The driver claims more buffers available than the queue holds.
    TooManyAvailable {
        /// The available ring's index.
        avail: u16,
        /// The next entry the device would take.
        next: u16,
    },
    /// The queue size is 0, not a power of two or above what the device offered.
    BadSize(u32),
    /// A request the device cannot answer at all (no room for its status): the
    /// driver broke the device's protocol.
    Request(String),
    /// The device itself failed (a host-side error, not the child's doing).
    Device(String),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Gone => write!(f, "the child is gone"),
            QueueError::Memory { gpa, len, err } => {
                write!(f, "CHILD_MEM of {len} bytes at {gpa:#x} failed: {err:?}")
            }
            QueueError::OutsideRam { gpa, len } => {
                write!(f, "{len} bytes at {gpa:#x} are not all the child's RAM")
            }
            QueueError::Index { index, size } => {
                write!(f, "descriptor index {index} in a queue of {size}")
            }
            QueueError::ChainTooLong { head } => {
                write!(f, "the chain at descriptor {head} is longer than the queue")
            }
            QueueError::Indirect { index } => {
                write!(f, "descriptor {index} is indirect (not offered)")
            }
            QueueError::TooManyAvailable { avail, next } => write!(
                f,
                "available index {avail} is more than a queue ahead of {next}"
            ),
            QueueError::BadSize(s) => write!(f, "queue size {s}"),
            QueueError::Request(why) => write!(f, "unanswerable request: {why}"),
            QueueError::Device(why) => write!(f, "device error: {why}"),
        }
    }
}

/// A child's RAM as a device sees it.
pub trait ChildMem {
    /// `Ok` if the `len` bytes at `gpa` are all the child's RAM as far as the device
    /// knows (without asking the hypervisor); [`QueueError::OutsideRam`] if not.
    fn check(&self, gpa: u64, len: u64) -> Result<(), QueueError>;
    /// Copies `buf.len()` bytes at `gpa` out of the child.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), QueueError>;
    /// Copies `data` into the child at `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), QueueError>;
}

/// A child's RAM through CHILD_MEM_READ / CHILD_MEM_WRITE, in pieces of at most
/// `CHILD_MEM_MAX`, every range first checked against the RAM GET_CHILD_INFO gave.
pub struct Child<'a> {
    /// The hypervisor.
    pub hv: &'a mut dyn Hypervisor,
    /// The child.
    pub cid: u64,
    /// Its RAM, `[start, end)`, if known.
    pub ram: Option<(u64, u64)>,
}

impl Child<'_> {
    fn copy(
        &mut self,
        gpa: u64,
        len: usize,
        mut op: impl FnMut(&mut dyn Hypervisor, u64, u64, usize, usize) -> Result<(), CallError>,
    ) -> Result<(), QueueError> {
        self.check(gpa, len as u64)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(limits::CHILD_MEM_MAX);
            let at = gpa + done as u64;
            op(&mut *self.hv, self.cid, at, done, n).map_err(|err| match err {
                CallError::Sbi(c) if c == error::INVALID_PARAM as i64 => QueueError::Gone,
                err => QueueError::Memory {
                    gpa: at,
                    len: n as u64,
                    err,
                },
            })?;
            done += n;
        }
        Ok(())
    }
}

impl ChildMem for Child<'_> {
    fn check(&self, gpa: u64, len: u64) -> Result<(), QueueError> {
        let end = gpa
            .checked_add(len)
            .ok_or(QueueError::OutsideRam { gpa, len })?;
        match self.ram {
            Some((start, ram_end)) if gpa < start || end > ram_end => {
                Err(QueueError::OutsideRam { gpa, len })
            }
            _ => Ok(()),
        }
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), QueueError> {
        let len = buf.len();
        self.copy(gpa, len, |hv, cid, at, off, n| {
            hv.child_mem_read(cid, at, &mut buf[off..off + n])
        })
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), QueueError> {
        self.copy(gpa, data.len(), |hv, cid, at, off, n| {
            hv.child_mem_write(cid, at, &data[off..off + n])
        })
    }
}

/// One descriptor (`struct virtq_desc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Child GPA of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// The next descriptor, with `DESC_F_NEXT`.
    pub next: u16,
}

impl Desc {
    /// Decodes the 16 little-endian bytes of a descriptor.
    pub fn from_le_bytes(b: &[u8; DESC_SIZE as usize]) -> Desc {
        let u = |r: std::ops::Range<usize>| {
            b[r].iter()
                .rev()
                .fold(0u64, |v, &x| (v << 8) | u64::from(x))
        };
        Desc {
            addr: u(0..8),
            len: u(8..12) as u32,
            flags: u(12..14) as u16,
            next: u(14..16) as u16,
        }
    }

    /// Encodes it (the tests play the driver).
    #[cfg(test)]
    pub fn to_le_bytes(self) -> [u8; DESC_SIZE as usize] {
        let mut b = [0u8; DESC_SIZE as usize];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// A device-writable buffer.
    pub fn writable(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }
}

/// One split virtqueue where the child's driver put it (its GPAs unchecked until
/// used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Entries (a power of two, at most what the device offered).
    pub size: u16,
    /// GPA of the descriptor table.
    pub desc: u64,
    /// GPA of the available ring (driver area).
    pub avail: u64,
    /// GPA of the used ring (device area).
    pub used: u64,
}

impl Queue {
    /// The queue DEVICE_STATE described, for a device that offered at most `max`
    /// entries: [`QueueError::BadSize`] for a size of 0, not a power of two or above
    /// `max` (the transport should never let one through).
    pub fn new(q: &QueueState, max: u32) -> Result<Queue, QueueError> {
        let max = max.min(devices::MAX_QUEUE_SIZE);
        if !q.size.is_power_of_two() || q.size > max {
            return Err(QueueError::BadSize(q.size));
        }
        Ok(Queue {
            size: u16::try_from(q.size).map_err(|_| QueueError::BadSize(q.size))?,
            desc: q.desc,
            avail: q.driver,
            used: q.device,
        })
    }

    /// Checks that the descriptor table and both rings lie in the child's RAM.
    pub fn check_areas(&self, mem: &dyn ChildMem) -> Result<(), QueueError> {
        let n = u64::from(self.size);
        mem.check(self.desc, DESC_SIZE * n)?;
        // flags, idx, ring[size], used_event.
        mem.check(self.avail, 6 + 2 * n)?;
        // flags, idx, ring[size] of (id u32, len u32), avail_event.
        mem.check(self.used, 6 + 8 * n)
    }

    fn read_u16(&self, mem: &mut dyn ChildMem, gpa: u64) -> Result<u16, QueueError> {
        let mut b = [0u8; 2];
        mem.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// The available ring's flags and index.
    pub fn avail_header(&self, mem: &mut dyn ChildMem) -> Result<(u16, u16), QueueError> {
        let mut b = [0u8; 4];
        mem.read(self.avail, &mut b)?;
        Ok((
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ))
    }

    /// The descriptor table and the available ring's entries as they are now: read
    /// after [`Queue::avail_header`] gave the index (a separate call, so every entry
    /// and descriptor the driver published before that index is in the snapshot), in
    /// one CHILD_MEM_READ when they are adjacent.
    pub fn snapshot(&self, mem: &mut dyn ChildMem) -> Result<Snapshot, QueueError> {
        let n = usize::from(self.size);
        let mut parts = read_spans(
            mem,
            &[(self.desc, n * DESC_SIZE as usize), (self.avail + 4, 2 * n)],
        )?;
        let ring = parts.pop().unwrap_or_default();
        let table = parts.pop().unwrap_or_default();
        Ok(Snapshot {
            size: self.size,
            table,
            ring,
        })
    }

    /// Writes the used elements `(descriptor id, bytes written)` of a batch from used
    /// entry `used_idx` on (modulo the size): one write, two when they wrap. The index
    /// is published separately ([`Queue::publish_used`]), after the elements.
    pub fn put_used(
        &self,
        mem: &mut dyn ChildMem,
        used_idx: u16,
        elems: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        let size = usize::from(self.size);
        if elems.len() > size {
            return Err(QueueError::TooManyAvailable {
                avail: used_idx.wrapping_add(elems.len() as u16),
                next: used_idx,
            });
        }
        let mut bytes = Vec::with_capacity(8 * elems.len());
        for &(id, len) in elems {
            bytes.extend_from_slice(&u32::from(id).to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        let first = usize::from(used_idx % self.size);
        let split = 8 * elems.len().min(size - first);
        let (a, b) = bytes.split_at(split);
        mem.write(self.used + 4 + 8 * first as u64, a)?;
        if !b.is_empty() {
            mem.write(self.used + 4, b)?;
        }
        Ok(())
    }

    /// The used ring's index (what the device last published).
    pub fn used_idx(&self, mem: &mut dyn ChildMem) -> Result<u16, QueueError> {
        self.read_u16(mem, self.used + 2)
    }

    /// Publishes the used ring's index.
    pub fn publish_used(&self, mem: &mut dyn ChildMem, idx: u16) -> Result<(), QueueError> {
        mem.write(self.used + 2, &idx.to_le_bytes())
    }
}

/// The descriptor table and available ring of a queue, as [`Queue::snapshot`] read
/// them.
#[derive(Clone, Debug)]
pub struct Snapshot {
    size: u16,
    table: Vec<u8>,
    ring: Vec<u8>,
}

impl Snapshot {
    /// The head descriptor of available entry `i` (taken modulo the size), checked
    /// against the size.
    pub fn avail_entry(&self, i: u16) -> Result<u16, QueueError> {
        let at = 2 * usize::from(i % self.size);
        let head = u16::from_le_bytes([self.ring[at], self.ring[at + 1]]);
        if head >= self.size {
            return Err(QueueError::Index {
                index: head,
                size: self.size,
            });
        }
        Ok(head)
    }

    /// The descriptor chain starting at `head`: at most `size` descriptors, each index
    /// below `size`, none indirect, each buffer wholly in the child's RAM (as `mem`
    /// knows it: no call is made).
    pub fn chain(&self, mem: &dyn ChildMem, head: u16) -> Result<Vec<Desc>, QueueError> {
        let mut chain = Vec::new();
        let mut i = head;
        loop {
            if i >= self.size {
                return Err(QueueError::Index {
                    index: i,
                    size: self.size,
                });
            }
            if chain.len() >= usize::from(self.size) {
                return Err(QueueError::ChainTooLong { head });
            }
            let at = DESC_SIZE as usize * usize::from(i);
            let mut raw = [0u8; DESC_SIZE as usize];
            raw.copy_from_slice(&self.table[at..at + DESC_SIZE as usize]);
            let d = Desc::from_le_bytes(&raw);
            if d.flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect { index: i });
            }
            mem.check(d.addr, u64::from(d.len))?;
            chain.push(d);
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            i = d.next;
        }
    }
}

/// Most bytes [`read_spans`] reads between two wanted ranges to save a call.
pub const SPAN_GAP_MAX: u64 = 2048;
/// Most bytes one span of [`read_spans`] covers when it joins ranges (a single longer
/// range is read on its own).
pub const SPAN_MAX: u64 = 16 * 1024;

/// Reads the `(gpa, len)` ranges out of the child, each checked first, with one copy
/// for ranges close together ([`SPAN_GAP_MAX`] apart or less, [`SPAN_MAX`] in all):
/// the child's RAM is one range, so the bytes between two checked ranges are its RAM
/// too. Returns the ranges' bytes in the order asked.
pub fn read_spans(
    mem: &mut dyn ChildMem,
    ranges: &[(u64, usize)],
) -> Result<Vec<Vec<u8>>, QueueError> {
    for &(gpa, len) in ranges {
        mem.check(gpa, len as u64)?;
    }
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    let mut out = vec![Vec::new(); ranges.len()];
    let mut k = 0;
    while k < order.len() {
        // Checked above: no range wraps.
        let start = ranges[order[k]].0;
        let mut end = start + ranges[order[k]].1 as u64;
        let mut last = k + 1;
        while let Some(&j) = order.get(last) {
            let (gpa, len) = ranges[j];
            let new_end = end.max(gpa + len as u64);
            if gpa > end.saturating_add(SPAN_GAP_MAX) || new_end - start > SPAN_MAX {
                break;
            }
            end = new_end;
            last += 1;
        }
        let mut span = vec![0u8; (end - start) as usize];
        mem.read(start, &mut span)?;
        for &j in &order[k..last] {
            let (gpa, len) = ranges[j];
            let at = (gpa - start) as usize;
            out[j] = span[at..at + len].to_vec();
        }
        k = last;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RAM at 0x1000..0x1000 + len, nothing else.
    struct Ram {
        base: u64,
        bytes: Vec<u8>,
    }

    impl ChildMem for Ram {
        fn check(&self, gpa: u64, len: u64) -> Result<(), QueueError> {
            let end = gpa.checked_add(len);
            if gpa < self.base || end.is_none_or(|e| e > self.base + self.bytes.len() as u64) {
                return Err(QueueError::OutsideRam { gpa, len });
            }
            Ok(())
        }
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), QueueError> {
            self.check(gpa, buf.len() as u64)?;
            let at = (gpa - self.base) as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            Ok(())
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), QueueError> {
            self.check(gpa, data.len() as u64)?;
            let at = (gpa - self.base) as usize;
            self.bytes[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn setup() -> (Ram, Queue) {
        let q = Queue::new(
            &QueueState {
                size: 4,
                ready: 1,
                desc: 0x1000,
                driver: 0x1100,
                device: 0x1200,
            },
            64,
        )
        .unwrap();
        (
            Ram {
                base: 0x1000,
                bytes: vec![0; 0x1000],
            },
            q,
        )
    }

    fn put_desc(m: &mut Ram, q: &Queue, i: u16, d: Desc) {
        m.write(q.desc + 16 * u64::from(i), &d.to_le_bytes())
            .unwrap();
    }

    fn chain(m: &mut Ram, q: &Queue, head: u16) -> Result<Vec<Desc>, QueueError> {
        q.snapshot(m)?.chain(m, head)
    }

    #[test]
    fn descriptors_round_trip() {
        let d = Desc {
            addr: 0x0102_0304_0506_0708,
            len: 0x1122_3344,
            flags: 3,
            next: 0xbeef,
        };
        assert_eq!(Desc::from_le_bytes(&d.to_le_bytes()), d);
        assert_eq!(d.to_le_bytes()[0], 8);
    }

    /// A `Ram` that counts its reads.
    struct Counting<'a>(&'a mut Ram, Vec<(u64, usize)>);

    impl ChildMem for Counting<'_> {
        fn check(&self, gpa: u64, len: u64) -> Result<(), QueueError> {
            self.0.check(gpa, len)
        }
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), QueueError> {
            self.1.push((gpa, buf.len()));
            self.0.read(gpa, buf)
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), QueueError> {
            self.0.write(gpa, data)
        }
    }

    #[test]
    fn close_ranges_are_read_at_once() {
        let (mut m, _) = setup();
        for (i, b) in m.bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut c = Counting(&mut m, Vec::new());
        // Two close together (and overlapping), one far, one between: asked out of
        // order, answered in order.
        let got = read_spans(
            &mut c,
            &[(0x1e00, 4), (0x1010, 16), (0x1000, 32), (0x1400, 2)],
        )
        .unwrap();
        assert_eq!(c.1, [(0x1000, 0x402), (0x1e00, 4)]);
        assert_eq!(got[0], [0, 1, 2, 3]);
        assert_eq!(got[1][0], 0x10);
        assert_eq!(got[2].len(), 32);
        assert_eq!(got[3], [0, 1]);
        // A range outside the RAM is refused before anything is read.
        c.1.clear();
        assert!(read_spans(&mut c, &[(0x1000, 4), (0x1ffe, 4)]).is_err());
        assert!(c.1.is_empty());
        // Nothing asked, nothing read.
        assert!(read_spans(&mut c, &[]).unwrap().is_empty());
        // The descriptor table and the ring, adjacent as Linux lays them out: one read.
        let q = Queue::new(
            &QueueState {
                size: 4,
                ready: 1,
                desc: 0x1000,
                driver: 0x1040,
                device: 0x1100,
            },
            64,
        )
        .unwrap();
        q.snapshot(&mut c).unwrap();
        assert_eq!(c.1, [(0x1000, 0x4c)]);
    }

    #[test]
    fn sizes_are_checked() {
        let mut s = QueueState {
            size: 0,
            ..QueueState::default()
        };
        for bad in [0, 3, 128, 1 << 16] {
            s.size = bad;
            assert_eq!(Queue::new(&s, 64), Err(QueueError::BadSize(bad)));
        }
        s.size = 64;
        assert!(Queue::new(&s, 64).is_ok());
    }

    #[test]
    fn chains_are_bounded() {
        let (mut m, q) = setup();
        // 0 -> 1 -> end
        put_desc(
            &mut m,
            &q,
            0,
            Desc {
                addr: 0x1800,
                len: 8,
                flags: DESC_F_NEXT,
                next: 1,
            },
        );
        put_desc(
            &mut m,
            &q,
            1,
            Desc {
                addr: 0x1900,
                len: 8,
                flags: DESC_F_WRITE,
                next: 0,
            },
        );
        assert_eq!(chain(&mut m, &q, 0).unwrap().len(), 2);
        // A loop: 1 -> 0 -> 1 ...
        put_desc(
            &mut m,
            &q,
            1,
            Desc {
                addr: 0x1900,
                len: 8,
                flags: DESC_F_NEXT,
                next: 0,
            },
        );
        assert_eq!(
            chain(&mut m, &q, 0),
            Err(QueueError::ChainTooLong { head: 0 })
        );
        // Next beyond the queue.
        put_desc(
            &mut m,
            &q,
            1,
            Desc {
                addr: 0x1900,
                len: 8,
                flags: DESC_F_NEXT,
                next: 4,
            },
        );
        assert_eq!(
            chain(&mut m, &q, 0),
            Err(QueueError::Index { index: 4, size: 4 })
        );
        // Indirect.
        put_desc(
            &mut m,
            &q,
            1,
            Desc {
                addr: 0x1900,
                len: 16,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        );
        assert_eq!(chain(&mut m, &q, 0), Err(QueueError::Indirect { index: 1 }));
        // A buffer past the RAM's end, and one whose range wraps.
        put_desc(
            &mut m,
            &q,
            1,
            Desc {
                addr: 0x1ff0,
                len: 17,
                flags: 0,
                next: 0,
            },
        );
        assert!(matches!(
            chain(&mut m, &q, 0),
            Err(QueueError::OutsideRam { .. })
        ));
        put_desc(
            &mut m,
            &q,
            1,
            Desc {
                addr: u64::MAX - 3,
                len: 8,
                flags: 0,
                next: 0,
            },
        );
        assert!(matches!(
            chain(&mut m, &q, 0),
            Err(QueueError::OutsideRam { .. })
        ));
        // The whole queue as one chain is fine: 0 -> 1 -> 2 -> 3.
        for i in 0..4 {
            let flags = if i < 3 { DESC_F_NEXT } else { 0 };
            put_desc(
                &mut m,
                &q,
                i,
                Desc {
                    addr: 0x1800,
                    len: 1,
                    flags,
                    next: i + 1,
                },
            );
        }
        assert_eq!(chain(&mut m, &q, 0).unwrap().len(), 4);
    }

    #[test]
    fn rings_wrap_modulo_the_size() {
        let (mut m, q) = setup();
        m.write(0x1100, &[1, 0, 7, 0]).unwrap();
        assert_eq!(q.avail_header(&mut m), Ok((1, 7)));
        // Entry 6 is slot 2.
        m.write(0x1100 + 4 + 4, &3u16.to_le_bytes()).unwrap();
        assert_eq!(q.snapshot(&mut m).unwrap().avail_entry(6), Ok(3));
        m.write(0x1100 + 4 + 4, &9u16.to_le_bytes()).unwrap();
        assert_eq!(
            q.snapshot(&mut m).unwrap().avail_entry(6),
            Err(QueueError::Index { index: 9, size: 4 })
        );
        q.put_used(&mut m, 5, &[(3, 0x20)]).unwrap();
        q.publish_used(&mut m, 6).unwrap();
        assert_eq!(&m.bytes[0x204..0x20c], &[0; 8]);
        assert_eq!(&m.bytes[0x20c..0x214], &[3, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(q.used_idx(&mut m), Ok(6));
        // A batch that wraps: slots 3, 0, 1.
        q.put_used(&mut m, 7, &[(1, 1), (2, 2), (0, 3)]).unwrap();
        assert_eq!(&m.bytes[0x21c..0x224], &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            &m.bytes[0x204..0x214],
            &[2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]
        );
        assert!(q.put_used(&mut m, 0, &[(0, 0); 5]).is_err());
        assert!(q.check_areas(&m).is_ok());
        let far = Queue { used: 0x1ff8, ..q };
        assert!(far.check_areas(&m).is_err());
    }
}
