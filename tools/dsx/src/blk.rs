//! virtio-blk (virtio 1.2, section 5.2): a disk on a regular file or block device of
//! this VM, one queue of requests.
//!
//! A request is a descriptor chain read as two byte streams (the device must not
//! assume a framing, 2.6.4): the device-readable bytes are the 16-byte header (type,
//! reserved, sector) and, for a write, the data; the device-writable bytes are, for a
//! read or GET_ID, the data, and always end with the one-byte status.
//!
//! Everything in a request is the child's to choose, so: a chain without any
//! device-writable byte cannot be answered (the device is broken: NEEDS_RESET, like a
//! broken queue); every other problem is answered `VIRTIO_BLK_S_IOERR` and the device
//! goes on: a header shorter than 16 bytes (or device-writable), device-readable
//! bytes after device-writable ones, data in the wrong direction for the type, data
//! not a multiple of 512 bytes or over [`REQUEST_MAX`] (refused before anything is
//! allocated or copied), a sector range that overflows (checked arithmetic only) or
//! ends beyond the capacity declared at SPAWN or beyond the file as it is now (its
//! size is taken again for every read and write: a file truncated in this VM answers
//! IOERR, never zeros from beyond its end), a write to a read-only disk, and a host
//! I/O error (logged). Unknown types answer `VIRTIO_BLK_S_UNSUPP`.
//!
//! Data moves through a bounce buffer of at most [`BOUNCE_MAX`] bytes, in CHILD_MEM
//! copies of at most 64 KiB, device-writable (or readable) buffers adjacent in the
//! child's RAM joined into one copy. The headers of a pass's requests are read
//! together ([`read_spans`]: Linux keeps them a few hundred bytes apart).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use diosix_abi::{limits, DeviceSpec};

use crate::backend::VirtioDevice;
use crate::hv::DeviceDecl;
use crate::virtq::{read_spans, ChildMem, Desc, QueueError};

/// The virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// QueueNumMax of its one queue. Linux, without indirect descriptors, keeps
/// `QUEUE_MAX / 2` requests in flight.
pub const QUEUE_MAX: u32 = 256;
/// Bytes of a sector (capacity and `sector` count in them, whatever `blk_size` says).
pub const SECTOR: u64 = 512;
/// `seg_max`: most data buffers in a request (a chain is 2 longer: it must fit the
/// queue, as no indirect descriptors are offered).
pub const SEG_MAX: u32 = 128;
/// `size_max`: most bytes of one data buffer. With [`SEG_MAX`] this bounds what a
/// driver may ask in one request to [`REQUEST_MAX`] (Linux splits its requests by
/// both; without `size_max` it would send up to its `max_sectors_kb`, 1280 KiB by
/// default and more if raised).
pub const SIZE_MAX: u32 = 8192;
/// Most data bytes in one read or write: larger ones answer IOERR.
pub const REQUEST_MAX: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// The bounce buffer's most bytes (grown on first use up to this, then kept): a whole
/// request, so the file is read or written once per request (each read of a file the
/// page cache does not hold is a wait for the parent's own disk).
pub const BOUNCE_MAX: usize = REQUEST_MAX as usize;
/// Bytes of the ID string GET_ID answers.
pub const ID_BYTES: usize = 20;
/// Bytes of a request's header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u64 = 16;
/// Bytes of the configuration declared: `struct virtio_blk_config` up to `blk_size`.
pub const CONFIG_LEN: usize = 24;
/// Most host-side errors one disk logs.
const NOTES_MAX: u32 = 8;

/// Device feature bits (virtio 1.2, 5.2.3).
pub mod features {
    /// `size_max` in the configuration is the largest data buffer.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` in the configuration is the most data buffers in a request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` in the configuration is the block size.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The device takes FLUSH requests (it has a write-back cache: this VM's).
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (virtio 1.2, 5.2.6).
pub mod types {
    /// Read sectors.
    pub const IN: u32 = 0;
    /// Write sectors.
    pub const OUT: u32 = 1;
    /// Make written sectors durable.
    pub const FLUSH: u32 = 4;
    /// The device's ID string.
    pub const GET_ID: u32 = 8;
}

/// Status bytes.
pub mod status {
    /// Done.
    pub const OK: u8 = 0;
    /// Failed.
    pub const IOERR: u8 = 1;
    /// Not a request this device takes.
    pub const UNSUPP: u8 = 2;
}

/// A disk.
pub struct Blk {
    file: File,
    path: String,
    read_only: bool,
    block_device: bool,
    /// In sectors, as declared at SPAWN (the file's size then, rounded down).
    capacity: u64,
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
    notes: Vec<String>,
    noted: u32,
}

/// One contiguous piece of a request's bytes in the child: GPA, length.
pub(crate) type Seg = (u64, u64);

/// A request's chain as two byte streams.
struct Layout {
    /// Device-readable buffers (header, then data for a write).
    readable: Vec<Seg>,
    readable_len: u64,
    /// Device-writable buffers (data for a read or GET_ID, then the status byte).
    writable: Vec<Seg>,
    writable_len: u64,
    /// No device-readable buffer after a device-writable one.
    ordered: bool,
    /// GPA of the status byte: the last device-writable byte.
    status: u64,
}

impl Layout {
    /// Splits `chain`; a chain without a device-writable byte cannot be answered.
    fn of(chain: &[Desc]) -> Result<Layout, QueueError> {
        let mut l = Layout {
            readable: Vec::new(),
            readable_len: 0,
            writable: Vec::new(),
            writable_len: 0,
            ordered: true,
            status: 0,
        };
        for d in chain {
            let seg = (d.addr, u64::from(d.len));
            if d.writable() {
                l.writable.push(seg);
                l.writable_len += seg.1;
            } else {
                l.ordered &= l.writable.is_empty();
                l.readable.push(seg);
                l.readable_len += seg.1;
            }
        }
        // Each length is below 2^32 and a chain at most 1024 long: no overflow.
        let &(addr, len) =
            l.writable.iter().rev().find(|s| s.1 > 0).ok_or_else(|| {
                QueueError::Request("no device-writable byte for the status".into())
            })?;
        l.status = addr + len - 1;
        Ok(l)
    }
}

/// Bytes `[skip, skip + len)` of the stream `segs` (clipped to its end).
pub(crate) fn take(segs: &[Seg], skip: u64, len: u64) -> Vec<Seg> {
    let (from, to) = (skip, skip.saturating_add(len));
    let mut out = Vec::new();
    let mut pos = 0u64;
    for &(addr, n) in segs {
        let (s, e) = (pos.max(from), (pos + n).min(to));
        if s < e {
            out.push((addr + (s - pos), e - s));
        }
        pos += n;
        if pos >= to {
            break;
        }
    }
    out
}

/// `segs` as CHILD_MEM copies: buffers adjacent in the child joined, then cut at
/// `CHILD_MEM_MAX`.
pub(crate) fn pieces(segs: &[Seg]) -> Vec<(u64, usize)> {
    let mut runs: Vec<Seg> = Vec::new();
    for &(addr, n) in segs.iter().filter(|s| s.1 > 0) {
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == addr => last.1 += n,
            _ => runs.push((addr, n)),
        }
    }
    let max = limits::CHILD_MEM_MAX as u64;
    let mut out = Vec::new();
    for (addr, n) in runs {
        let mut done = 0;
        while done < n {
            let k = (n - done).min(max);
            out.push((addr + done, k as usize));
            done += k;
        }
    }
    out
}

/// `pieces` in groups of at most [`BOUNCE_MAX`] bytes: (first piece, end, bytes).
fn windows(pieces: &[(u64, usize)]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, &(_, n)) in pieces.iter().enumerate() {
        if bytes + n > BOUNCE_MAX {
            out.push((start, i, bytes));
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if bytes > 0 {
        out.push((start, pieces.len(), bytes));
    }
    out
}

/// Reads the bytes of `segs` into one buffer (a header split across buffers).
fn gather(mem: &mut dyn ChildMem, segs: &[Seg]) -> Result<Vec<u8>, QueueError> {
    let mut out = Vec::new();
    for (gpa, n) in pieces(segs) {
        let at = out.len();
        out.resize(at + n, 0);
        mem.read(gpa, &mut out[at..])?;
    }
    Ok(out)
}

impl Blk {
    /// Opens the disk at `path` (read-write unless `read_only`) and checks it: a
    /// regular file or a block device, at least one sector long, not in use. A block
    /// device is opened `O_EXCL` (refused while mounted or held by another such open);
    /// a file is locked with `flock(2)`, exclusively when read-write, shared when
    /// read-only (refused while another backend holds it otherwise).
    pub fn open(path: &Path, read_only: bool) -> Result<Blk, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("disk {shown}: {e}"))?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(format!(
                "disk {shown}: not a regular file or a block device"
            ));
        }
        let block_device = kind.is_block_device();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(if block_device { libc::O_EXCL } else { 0 })
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    format!("disk {shown}: the block device is in use (mounted?)")
                }
                _ => format!(
                    "cannot open disk {shown} {}: {e}",
                    if read_only {
                        "to read"
                    } else {
                        "to read and write"
                    }
                ),
            })?;
        // What was opened, not what the path named a moment before.
        let meta = file.metadata().map_err(|e| format!("disk {shown}: {e}"))?;
        if meta.file_type().is_block_device() != block_device || !(meta.is_file() || block_device) {
            return Err(format!("disk {shown}: changed while being opened"));
        }
        if !block_device {
            let op = if read_only {
                libc::LOCK_SH
            } else {
                libc::LOCK_EX
            };
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    format!("disk {shown}: in use by another dsx backend")
                } else {
                    format!("disk {shown}: cannot lock it: {e}")
                });
            }
        }
        let mut blk = Blk {
            file,
            path: shown.to_string(),
            read_only,
            block_device,
            capacity: 0,
            id: [0; ID_BYTES],
            bounce: Vec::new(),
            notes: Vec::new(),
            noted: 0,
        };
        let size = blk
            .current_size()
            .map_err(|e| format!("disk {shown}: cannot tell its size: {e}"))?;
        if size < SECTOR {
            return Err(format!(
                "disk {shown}: {size} bytes, less than one {SECTOR}-byte sector"
            ));
        }
        blk.capacity = size / SECTOR;
        blk.attach(0, 0);
        Ok(blk)
    }

    /// The file's size now (a block device's from the end it seeks to).
    fn current_size(&self) -> std::io::Result<u64> {
        if self.block_device {
            (&self.file).seek(SeekFrom::End(0))
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// The configuration bytes (`struct virtio_blk_config` up to `blk_size`).
    pub fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // 16..20: geometry, not offered.
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c
    }

    fn note(&mut self, msg: String) {
        if self.noted < NOTES_MAX {
            self.notes.push(format!("{}: {msg}", self.path));
        } else if self.noted == NOTES_MAX {
            self.notes
                .push(format!("{}: further I/O errors not logged", self.path));
        }
        self.noted = self.noted.saturating_add(1);
    }

    /// The byte offset of `len` bytes at `sector` if the range is one this disk
    /// serves: whole sectors, at most [`REQUEST_MAX`], within the capacity and the
    /// file as it is now. Checked before anything is allocated or copied.
    fn range(&mut self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR) || len > REQUEST_MAX {
            return None;
        }
        let off = sector.checked_mul(SECTOR)?;
        let end = off.checked_add(len)?;
        if end > self.capacity * SECTOR {
            return None;
        }
        match self.current_size() {
            Ok(size) if end <= size => Some(off),
            Ok(size) => {
                self.note(format!(
                    "now {size} bytes, shorter than the {} the child was given: \
                     answering IOERR",
                    self.capacity * SECTOR
                ));
                None
            }
            Err(e) => {
                self.note(format!("cannot tell its size: {e}"));
                None
            }
        }
    }

    /// IN: `len` bytes from `sector` into `segs`; (status, data bytes written).
    fn read_in(
        &mut self,
        sector: u64,
        segs: &[Seg],
        len: u64,
        mem: &mut dyn ChildMem,
    ) -> Result<(u8, u64), QueueError> {
        let Some(off) = self.range(sector, len) else {
            return Ok((status::IOERR, 0));
        };
        let pieces = pieces(segs);
        let mut done = 0u64;
        for (first, end, bytes) in windows(&pieces) {
            self.grow_bounce(bytes);
            let timed = crate::dev::stats::Timed::file();
            let read = self
                .file
                .read_exact_at(&mut self.bounce[..bytes], off + done);
            drop(timed);
            if let Err(e) = read {
                self.note(format!("read of {bytes} bytes at {}: {e}", off + done));
                return Ok((status::IOERR, done));
            }
            let mut at = 0;
            for &(gpa, n) in &pieces[first..end] {
                mem.write(gpa, &self.bounce[at..at + n])?;
                at += n;
                done += n as u64;
            }
        }
        Ok((status::OK, done))
    }

    /// OUT: `len` bytes of `segs` to `sector`; the status.
    fn write_out(
        &mut self,
        sector: u64,
        segs: &[Seg],
        len: u64,
        mem: &mut dyn ChildMem,
    ) -> Result<u8, QueueError> {
        if self.read_only {
            return Ok(status::IOERR);
        }
        let Some(off) = self.range(sector, len) else {
            return Ok(status::IOERR);
        };
        let pieces = pieces(segs);
        let mut done = 0u64;
        for (first, end, bytes) in windows(&pieces) {
            self.grow_bounce(bytes);
            let mut at = 0;
            for &(gpa, n) in &pieces[first..end] {
                mem.read(gpa, &mut self.bounce[at..at + n])?;
                at += n;
            }
            let timed = crate::dev::stats::Timed::file();
            let written = self.file.write_all_at(&self.bounce[..bytes], off + done);
            drop(timed);
            if let Err(e) = written {
                self.note(format!("write of {bytes} bytes at {}: {e}", off + done));
                return Ok(status::IOERR);
            }
            done += bytes as u64;
        }
        Ok(status::OK)
    }

    fn grow_bounce(&mut self, bytes: usize) {
        if self.bounce.len() < bytes {
            self.bounce.resize(bytes.min(BOUNCE_MAX), 0);
        }
    }

    /// One request whose header (if it has 16 bytes of one) is `header`; returns
    /// (status, data bytes written into the child).
    fn request(
        &mut self,
        l: &Layout,
        header: Option<[u8; HEADER_LEN as usize]>,
        mem: &mut dyn ChildMem,
    ) -> Result<(u8, u64), QueueError> {
        let Some(h) = header.filter(|_| l.ordered) else {
            return Ok((status::IOERR, 0));
        };
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&h[8..16]);
        let sector = u64::from_le_bytes(s);
        // Data bytes each way: after the header, before the status.
        let out_len = l.readable_len - HEADER_LEN;
        let in_len = l.writable_len - 1;
        match kind {
            types::IN if out_len == 0 => {
                let segs = take(&l.writable, 0, in_len);
                self.read_in(sector, &segs, in_len, mem)
            }
            types::OUT if in_len == 0 => {
                let segs = take(&l.readable, HEADER_LEN, out_len);
                Ok((self.write_out(sector, &segs, out_len, mem)?, 0))
            }
            types::FLUSH if in_len == 0 && out_len == 0 => match self.file.sync_data() {
                Ok(()) => Ok((status::OK, 0)),
                Err(e) => {
                    self.note(format!("flush: {e}"));
                    Ok((status::IOERR, 0))
                }
            },
            types::GET_ID if out_len == 0 => {
                let n = in_len.min(ID_BYTES as u64);
                let mut at = 0;
                for (gpa, k) in pieces(&take(&l.writable, 0, n)) {
                    mem.write(gpa, &self.id[at..at + k])?;
                    at += k;
                }
                Ok((status::OK, n))
            }
            types::IN | types::OUT | types::FLUSH | types::GET_ID => Ok((status::IOERR, 0)),
            _ => Ok((status::UNSUPP, 0)),
        }
    }
}

impl VirtioDevice for Blk {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn name(&self) -> &'static str {
        "blk"
    }

    fn decl(&self) -> DeviceDecl {
        let ro = if self.read_only { features::RO } else { 0 };
        DeviceDecl {
            spec: DeviceSpec {
                size: DeviceSpec::SIZE as u32,
                device_id: DEVICE_ID,
                features: features::SIZE_MAX
                    | features::SEG_MAX
                    | features::BLK_SIZE
                    | features::FLUSH
                    | ro,
                queue_count: 1,
                queue_max: QUEUE_MAX,
                ..DeviceSpec::default()
            },
            config: self.config(),
        }
    }

    /// The ID string: `dsx-CID-INDEX`, NUL-padded (cut at 20 bytes).
    fn attach(&mut self, cid: u64, index: usize) {
        let text = format!("dsx-{cid}-{index}");
        let n = text.len().min(ID_BYTES);
        self.id = [0; ID_BYTES];
        self.id[..n].copy_from_slice(&text.as_bytes()[..n]);
    }

    fn serve_queue(
        &mut self,
        queue: usize,
        chain: &[Desc],
        mem: &mut dyn ChildMem,
    ) -> Result<u32, QueueError> {
        let lens = self.serve_batch(queue, &[chain.to_vec()], mem)?;
        Ok(lens[0])
    }

    /// Every chain split first (one that cannot be answered breaks the device before
    /// anything is done), the headers read together, then each request served and
    /// its status written.
    fn serve_batch(
        &mut self,
        _queue: usize,
        chains: &[Vec<Desc>],
        mem: &mut dyn ChildMem,
    ) -> Result<Vec<u32>, QueueError> {
        let layouts = chains
            .iter()
            .map(|c| Layout::of(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut headers: Vec<Option<[u8; HEADER_LEN as usize]>> = vec![None; layouts.len()];
        let (mut want, mut whose) = (Vec::new(), Vec::new());
        for (i, l) in layouts.iter().enumerate() {
            if l.readable_len < HEADER_LEN {
                continue;
            }
            let segs = take(&l.readable, 0, HEADER_LEN);
            if let [(gpa, _)] = segs[..] {
                want.push((gpa, HEADER_LEN as usize));
                whose.push(i);
            } else {
                headers[i] = gather(mem, &segs)?.try_into().ok();
            }
        }
        for (i, h) in whose.into_iter().zip(read_spans(mem, &want)?) {
            headers[i] = h.try_into().ok();
        }
        let mut lens = Vec::with_capacity(layouts.len());
        for (l, h) in layouts.iter().zip(headers) {
            let (st, written) = self.request(l, h, mem)?;
            mem.write(l.status, &[st])?;
            // At most REQUEST_MAX (or ID_BYTES) data bytes, plus the status.
            lens.push(written as u32 + 1);
        }
        Ok(lens)
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{served, FakeChild, Log, BASE, BUFS, CID, LIVE};
    use crate::backend::Backend;
    use crate::virtq::Child;
    use diosix_abi::devices::{RAISE_NEEDS_RESET, RAISE_USED_BUFFER};
    use std::path::PathBuf;

    /// A disk image in the temporary directory, removed when dropped.
    struct Img(PathBuf);

    impl Drop for Img {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The byte at offset `off` of a fresh image.
    fn pattern(off: u64) -> u8 {
        ((off * 7) ^ (off >> 9)) as u8
    }

    fn img(name: &str, len: u64) -> Img {
        let path = std::env::temp_dir().join(format!("dsx-blk-{}-{name}", std::process::id()));
        let bytes: Vec<u8> = (0..len).map(pattern).collect();
        std::fs::write(&path, bytes).unwrap();
        Img(path)
    }

    /// A backend serving `disk` as device 0 of the fake child.
    fn backend(disk: &Img, read_only: bool) -> (Backend, Log) {
        let log = Log::default();
        let blk = Blk::open(&disk.0, read_only).unwrap();
        (
            Backend::new(CID, vec![Box::new(blk)], Box::new(log.clone())),
            log,
        )
    }

    /// A child with 2 MiB of RAM and a 256-entry queue laid out as Linux does.
    fn child() -> FakeChild {
        FakeChild::linux(0x20_0000, 256)
    }

    /// Where request headers go (the status byte right after, as in Linux's
    /// `struct virtblk_req`), and data buffers.
    const HDR: u64 = BUFS;
    const DATA: u64 = BASE + 0x1_0000;

    /// The driver's request: a header at `hdr` (`kind`, `sector`), then `data`, then
    /// the status byte at `hdr + 16` (set to 0xff first, to see it written).
    fn request(c: &mut FakeChild, hdr: u64, kind: u32, sector: u64, data: &[(u64, u32, bool)]) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        c.poke(hdr, &h);
        c.poke(hdr + 16, &[0xff]);
        let mut chain = vec![(hdr, 16, false)];
        chain.extend_from_slice(data);
        chain.push((hdr + 16, 1, true));
        c.offer(&chain);
    }

    fn status_at(c: &FakeChild, hdr: u64) -> u8 {
        c.peek(hdr + 16, 1)[0]
    }

    fn file_bytes(disk: &Img, off: u64, len: usize) -> Vec<u8> {
        let all = std::fs::read(&disk.0).unwrap();
        all[off as usize..off as usize + len].to_vec()
    }

    fn expected(off: u64, len: u64) -> Vec<u8> {
        (off..off + len).map(pattern).collect()
    }

    #[test]
    fn configuration_and_features() {
        let disk = img("config", (1 << 20) + 700);
        let blk = Blk::open(&disk.0, false).unwrap();
        let d = blk.decl();
        assert_eq!(
            (d.spec.device_id, d.spec.queue_count, d.spec.queue_max),
            (2, 1, 256)
        );
        // SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH.
        assert_eq!(d.spec.features, (1 << 1) | (1 << 2) | (1 << 6) | (1 << 9));
        assert!(d.config.len() <= diosix_abi::devices::MAX_CONFIG);
        // capacity 2049 sectors (the last 188 bytes are no sector), size_max 8192,
        // seg_max 128, no geometry, blk_size 512.
        let mut want = vec![];
        want.extend_from_slice(&2049u64.to_le_bytes());
        want.extend_from_slice(&8192u32.to_le_bytes());
        want.extend_from_slice(&128u32.to_le_bytes());
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&512u32.to_le_bytes());
        assert_eq!(d.config, want);
        // A chain of seg_max buffers, header and status fits the queue.
        const { assert!(SEG_MAX + 2 <= QUEUE_MAX) };
        assert_eq!(REQUEST_MAX, 1 << 20);
        drop(blk);
        let ro = Blk::open(&disk.0, true).unwrap().decl();
        assert_eq!(ro.spec.features, d.spec.features | (1 << 5));
        assert_eq!(ro.config, want);
    }

    #[test]
    fn what_open_refuses() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!("dsx-blk-{}-missing", std::process::id()));
        let e = Blk::open(&missing, false).err().unwrap();
        assert!(e.contains("No such file"), "{e}");
        let e = Blk::open(&dir, false).err().unwrap();
        assert!(e.ends_with("not a regular file or a block device"), "{e}");
        let small = img("small", 511);
        let e = Blk::open(&small.0, false).err().unwrap();
        assert!(
            e.ends_with("511 bytes, less than one 512-byte sector"),
            "{e}"
        );
        // One writer, or any number of readers.
        let disk = img("locks", 4096);
        let w = Blk::open(&disk.0, false).unwrap();
        for ro in [false, true] {
            let e = Blk::open(&disk.0, ro).err().unwrap();
            assert!(e.ends_with("in use by another dsx backend"), "{e}");
        }
        drop(w);
        let r1 = Blk::open(&disk.0, true).unwrap();
        let _r2 = Blk::open(&disk.0, true).unwrap();
        assert!(Blk::open(&disk.0, false).is_err());
        drop(r1);
    }

    #[test]
    fn write_then_read_back() {
        let disk = img("rw", 64 * 1024);
        let (mut b, log) = backend(&disk, false);
        let mut c = child();
        // Write 4 KiB at sector 3, from two buffers.
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        c.poke(DATA, &data[..1024]);
        c.poke(DATA + 0x8000, &data[1024..]);
        request(
            &mut c,
            HDR,
            types::OUT,
            3,
            &[(DATA, 1024, false), (DATA + 0x8000, 3072, false)],
        );
        served(&mut b, &mut c);
        assert_eq!(status_at(&c, HDR), status::OK);
        assert_eq!(c.used_idx(), 1);
        assert_eq!(c.used_elem(0), (0, 1));
        assert_eq!(file_bytes(&disk, 3 * 512, 4096), data);
        // The sectors around it are untouched.
        assert_eq!(file_bytes(&disk, 2 * 512, 512), expected(1024, 512));
        assert_eq!(file_bytes(&disk, 11 * 512, 512), expected(11 * 512, 512));
        // Read sectors 2..12 into three buffers, two of them adjacent.
        request(
            &mut c,
            HDR + 0x200,
            types::IN,
            2,
            &[
                (DATA + 0x2_0000, 1536, true),
                (DATA + 0x2_0600, 512, true),
                (DATA + 0x3_0000, 3072, true),
            ],
        );
        served(&mut b, &mut c);
        assert_eq!(status_at(&c, HDR + 0x200), status::OK);
        assert_eq!(c.used_elem(1), (4, 5120 + 1));
        let mut got = c.peek(DATA + 0x2_0000, 2048).to_vec();
        got.extend_from_slice(c.peek(DATA + 0x3_0000, 3072));
        let mut want = expected(1024, 512);
        want.extend_from_slice(&data);
        want.extend_from_slice(&expected(11 * 512, 512));
        assert_eq!(got, want);
        assert_eq!(c.raises, [RAISE_USED_BUFFER, RAISE_USED_BUFFER]);
        assert!(log.text().is_empty(), "{}", log.text());
    }

    #[test]
    fn flush_get_id_and_unsupported_types() {
        let disk = img("flush", 4096);
        let (mut b, _) = backend(&disk, false);
        let mut c = child();
        request(&mut c, HDR, types::FLUSH, 0, &[]);
        request(&mut c, HDR + 0x100, types::GET_ID, 0, &[(DATA, 20, true)]);
        request(
            &mut c,
            HDR + 0x200,
            types::GET_ID,
            0,
            &[(DATA + 0x100, 5, true)],
        );
        request(&mut c, HDR + 0x300, 11, 0, &[(DATA + 0x200, 16, false)]); // DISCARD
        request(&mut c, HDR + 0x400, u32::MAX, 0, &[]);
        served(&mut b, &mut c);
        assert_eq!(c.used_idx(), 5);
        let got: Vec<(u8, u32)> = (0..5u16)
            .map(|i| (status_at(&c, HDR + 0x100 * u64::from(i)), c.used_elem(i).1))
            .collect();
        assert_eq!(
            got,
            [
                (status::OK, 1),
                (status::OK, 21),
                (status::OK, 6),
                (status::UNSUPP, 1),
                (status::UNSUPP, 1)
            ]
        );
        assert_eq!(c.peek(DATA, 20), b"dsx-2-0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(c.peek(DATA + 0x100, 6), b"dsx-2\0");
        // One interrupt for the five.
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
    }

    #[test]
    fn ranges_beyond_the_disk_answer_ioerr() {
        let disk = img("range", 8192); // 16 sectors
        let (mut b, _) = backend(&disk, false);
        let mut c = child();
        let cases: [(u32, u64, u32); 6] = [
            (types::IN, 16, 512),             // just past the end
            (types::IN, 15, 1024),            // straddles it
            (types::IN, u64::MAX / 512, 512), // the byte offset overflows
            (types::IN, u64::MAX, 512),       // the sector count overflows
            (types::OUT, 16, 512),            // writes too
            (types::IN, 0, 100),              // not whole sectors
        ];
        for (k, &(kind, sector, len)) in cases.iter().enumerate() {
            let hdr = HDR + 0x100 * k as u64;
            let w = kind == types::IN;
            request(&mut c, hdr, kind, sector, &[(DATA, len, w)]);
        }
        served(&mut b, &mut c);
        for k in 0..cases.len() {
            assert_eq!(status_at(&c, HDR + 0x100 * k as u64), status::IOERR, "{k}");
            assert_eq!(c.used_elem(k as u16).1, 1, "{k}");
        }
        // Nothing of the file reached the child; the file is as it was.
        assert_eq!(c.peek(DATA, 1024), &[0; 1024]);
        assert_eq!(file_bytes(&disk, 0, 8192), expected(0, 8192));
        // The device goes on: the last sector reads fine.
        request(&mut c, HDR, types::IN, 15, &[(DATA, 512, true)]);
        served(&mut b, &mut c);
        assert_eq!(status_at(&c, HDR), status::OK);
        assert_eq!(c.peek(DATA, 512), expected(15 * 512, 512));
        assert!(c.raises.iter().all(|&r| r == RAISE_USED_BUFFER));
    }

    #[test]
    fn a_truncated_file_answers_ioerr() {
        let disk = img("trunc", 64 * 1024);
        let (mut b, log) = backend(&disk, false);
        let mut c = child();
        // Someone in this VM truncates the file to 8 KiB under the backend.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.0)
            .unwrap()
            .set_len(8192)
            .unwrap();
        request(&mut c, HDR, types::IN, 20, &[(DATA, 4096, true)]);
        request(
            &mut c,
            HDR + 0x100,
            types::IN,
            14,
            &[(DATA + 0x1000, 2048, true)],
        );
        request(
            &mut c,
            HDR + 0x200,
            types::OUT,
            40,
            &[(DATA + 0x2000, 512, false)],
        );
        request(
            &mut c,
            HDR + 0x300,
            types::IN,
            0,
            &[(DATA + 0x3000, 8192, true)],
        );
        served(&mut b, &mut c);
        let got: Vec<u8> = (0..4).map(|k| status_at(&c, HDR + 0x100 * k)).collect();
        assert_eq!(
            got,
            [status::IOERR, status::IOERR, status::IOERR, status::OK]
        );
        // Nothing read beyond the end (no zeros made up), the file not extended.
        assert_eq!(c.peek(DATA, 0x3000), &[0; 0x3000][..]);
        assert_eq!(c.peek(DATA + 0x3000, 8192), expected(0, 8192));
        assert_eq!(std::fs::metadata(&disk.0).unwrap().len(), 8192);
        assert!(log
            .text()
            .contains("now 8192 bytes, shorter than the 65536"));
        assert!(c.raises.iter().all(|&r| r == RAISE_USED_BUFFER));
    }

    #[test]
    fn a_request_over_the_cap_answers_ioerr_untouched() {
        let disk = img("big", 2 << 20);
        let mut c = child();
        // Exactly the cap: 1 MiB in 16 pieces of 64 KiB.
        let (mut b, _) = backend(&disk, false);
        request(
            &mut c,
            HDR,
            types::IN,
            0,
            &[(BASE + 0x10_0000, 1 << 20, true)],
        );
        c.clear_counts();
        served(&mut b, &mut c);
        assert_eq!(status_at(&c, HDR), status::OK);
        assert_eq!(c.used_elem(0).1, (1 << 20) + 1);
        let data_writes = c.writes.iter().filter(|w| w.0 >= BASE + 0x10_0000).count();
        assert_eq!(data_writes, 16);
        assert_eq!(
            c.peek(BASE + 0x1F_FE00, 512),
            expected((1 << 20) - 512, 512)
        );
        // One sector more: refused.
        request(
            &mut c,
            HDR + 0x100,
            types::IN,
            0,
            &[(BASE + 0x10_0000, 1 << 20, true), (DATA, 512, true)],
        );
        c.clear_counts();
        served(&mut b, &mut c);
        assert_eq!(status_at(&c, HDR + 0x100), status::IOERR);
        assert_eq!(c.used_elem(1).1, 1);
        // Only the status, the used element and index.
        assert_eq!(c.writes.len(), 3, "{:x?}", c.writes);
        // A 4 GiB buffer, which CHILD_MEM would refuse (the RAM is not known here):
        // IOERR without the bounce buffer growing or a byte copied.
        drop(b);
        let mut blk = Blk::open(&disk.0, false).unwrap();
        c.clear_counts();
        request(&mut c, HDR + 0x200, types::OUT, 0, &[]);
        let chain = [
            Desc {
                addr: HDR + 0x200,
                len: 16,
                flags: 0,
                next: 0,
            },
            Desc {
                addr: BASE,
                len: u32::MAX,
                flags: 0,
                next: 0,
            },
            Desc {
                addr: HDR + 0x210,
                len: 1,
                flags: crate::virtq::DESC_F_WRITE,
                next: 0,
            },
        ];
        let mut mem = Child {
            hv: &mut c,
            cid: CID,
            ram: None,
        };
        assert_eq!(blk.serve_queue(0, &chain, &mut mem), Ok(1));
        assert_eq!(blk.bounce.capacity(), 0);
        assert_eq!(c.reads, [(HDR + 0x200, 16)]);
        assert_eq!(c.writes, [(HDR + 0x210, 1)]);
        assert_eq!(status_at(&c, HDR + 0x200), status::IOERR);
    }

    #[test]
    fn malformed_requests() {
        let disk = img("malformed", 8192);
        let (mut b, log) = backend(&disk, false);
        let mut c = child();
        let hdr = |c: &mut FakeChild, at: u64, kind: u32, sector: u64| {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            c.poke(at, &h);
        };
        // IOERR, each: the header device-writable; 8 header bytes; a device-readable
        // buffer after a writable one; a read with device-readable data; a write
        // with device-writable data; GET_ID with device-readable data; a flush with
        // data.
        hdr(&mut c, HDR, types::IN, 0);
        c.offer(&[(HDR, 16, true), (HDR + 16, 1, true)]);
        c.offer(&[(HDR, 8, false), (HDR + 0x110, 1, true)]);
        c.offer(&[
            (HDR, 16, false),
            (DATA, 512, true),
            (DATA + 0x200, 512, false),
            (HDR + 0x120, 1, true),
        ]);
        c.offer(&[(HDR, 16, false), (DATA, 512, false), (HDR + 0x130, 1, true)]);
        hdr(&mut c, HDR + 0x200, types::OUT, 0);
        c.offer(&[
            (HDR + 0x200, 16, false),
            (DATA, 512, true),
            (HDR + 0x140, 1, true),
        ]);
        hdr(&mut c, HDR + 0x300, types::GET_ID, 0);
        c.offer(&[
            (HDR + 0x300, 16, false),
            (DATA, 20, false),
            (HDR + 0x150, 1, true),
        ]);
        hdr(&mut c, HDR + 0x400, types::FLUSH, 0);
        c.offer(&[
            (HDR + 0x400, 16, false),
            (DATA, 512, true),
            (HDR + 0x160, 1, true),
        ]);
        // Fine, each: a header in two pieces; the status as the last byte of the
        // data's buffer.
        hdr(&mut c, HDR + 0x500, types::IN, 1);
        c.offer(&[
            (HDR + 0x500, 8, false),
            (HDR + 0x508, 8, false),
            (DATA + 0x1000, 512, true),
            (HDR + 0x170, 1, true),
        ]);
        c.poke(DATA + 0x2200, &[0xff]);
        c.offer(&[(HDR + 0x500, 16, false), (DATA + 0x2000, 513, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.used_idx(), 9);
        let statuses: Vec<u8> = [0x10, 0x110, 0x120, 0x130, 0x140, 0x150, 0x160, 0x170]
            .iter()
            .map(|&o| c.peek(HDR + o, 1)[0])
            .chain([c.peek(DATA + 0x2200, 1)[0]])
            .collect();
        assert_eq!(statuses, [1, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(c.peek(DATA + 0x1000, 512), expected(512, 512));
        assert_eq!(c.peek(DATA + 0x2000, 512), expected(512, 512));
        assert_eq!(c.used_elem(7).1, 513);
        assert_eq!(c.used_elem(8).1, 513);
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
        assert!(log.text().is_empty(), "{}", log.text());
        // No device-writable byte to answer in: the device is broken, nothing of the
        // batch is done.
        c.clear_counts();
        request(&mut c, HDR, types::IN, 0, &[(DATA, 512, true)]);
        hdr(&mut c, HDR + 0x600, types::OUT, 0);
        c.offer(&[(HDR + 0x600, 16, false), (DATA, 512, false)]);
        served(&mut b, &mut c);
        assert_eq!(c.raises, [RAISE_USED_BUFFER, RAISE_NEEDS_RESET]);
        assert!(c.writes.is_empty(), "{:x?}", c.writes);
        assert_eq!(status_at(&c, HDR), 0xff);
        assert!(log
            .text()
            .contains("no device-writable byte for the status"));
        // Reset by the driver: served again.
        c.reset();
        c.state.status = LIVE;
        request(&mut c, HDR, types::IN, 0, &[(DATA, 512, true)]);
        served(&mut b, &mut c);
        assert_eq!(status_at(&c, HDR), status::OK);
        assert_eq!(file_bytes(&disk, 0, 8192), expected(0, 8192));
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let disk = img("ro", 4096);
        let (mut b, _) = backend(&disk, true);
        let mut c = child();
        c.poke(DATA, &[0xaa; 512]);
        request(&mut c, HDR, types::OUT, 0, &[(DATA, 512, false)]);
        request(
            &mut c,
            HDR + 0x100,
            types::IN,
            1,
            &[(DATA + 0x1000, 512, true)],
        );
        request(&mut c, HDR + 0x200, types::FLUSH, 0, &[]);
        served(&mut b, &mut c);
        let got: Vec<u8> = (0..3).map(|k| status_at(&c, HDR + 0x100 * k)).collect();
        assert_eq!(got, [status::IOERR, status::OK, status::OK]);
        assert_eq!(c.peek(DATA + 0x1000, 512), expected(512, 512));
        assert_eq!(file_bytes(&disk, 0, 4096), expected(0, 4096));
    }

    /// CHILD_MEM and other calls for the pass that serves `reqs` (the driver's
    /// requests, offered by `offer`), after a first pass that asked GET_CHILD_INFO.
    fn calls_for(offer: impl FnOnce(&mut FakeChild)) -> Vec<&'static str> {
        let disk = img(&format!("calls-{:?}", std::thread::current().id()), 2 << 20);
        let (mut b, _) = backend(&disk, false);
        let mut c = child();
        served(&mut b, &mut c);
        offer(&mut c);
        c.clear_counts();
        served(&mut b, &mut c);
        assert!(c.used_idx() > 0);
        c.calls.clone()
    }

    /// Non-adjacent 4 KiB pages for `len` bytes of data, from `at` on.
    fn pages(at: u64, len: u32, writable: bool) -> Vec<(u64, u32, bool)> {
        (0..u64::from(len / 4096))
            .map(|k| (at + 0x2000 * k, 4096, writable))
            .collect()
    }

    #[test]
    fn calls_per_request() {
        let count = |calls: &[&str], name: &str| calls.iter().filter(|&&c| c == name).count();
        // A lone 4 KiB read: DEVICE_STATE; the available index; the descriptor table
        // with the ring (adjacent: one read); the header; the data; the status; the
        // used element; the used index; the available flags; DEVICE_RAISE.
        let read_4k = calls_for(|c| request(c, HDR, types::IN, 8, &pages(DATA, 4096, true)));
        assert_eq!(
            (read_4k.len(), count(&read_4k, "CHILD_MEM_READ")),
            (10, 4),
            "{read_4k:?}"
        );
        // A lone 4 KiB write: the data is read instead.
        let write_4k = calls_for(|c| request(c, HDR, types::OUT, 8, &pages(DATA, 4096, false)));
        assert_eq!(write_4k.len(), 10, "{write_4k:?}");
        // A lone 64 KiB read into 16 scattered pages: one copy a page.
        let read_64k = calls_for(|c| request(c, HDR, types::IN, 8, &pages(DATA, 65536, true)));
        assert_eq!(read_64k.len(), 9 + 16, "{read_64k:?}");
        // ... into 8 adjacent buffers of 8 KiB (size_max): one copy.
        let read_64k_adjacent = calls_for(|c| {
            let bufs: Vec<_> = (0..8).map(|k| (DATA + 0x2000 * k, 8192, true)).collect();
            request(c, HDR, types::IN, 8, &bufs)
        });
        assert_eq!(read_64k_adjacent.len(), 10, "{read_64k_adjacent:?}");
        // Eight 4 KiB reads in one pass, their headers 384 bytes apart as in Linux's
        // request pool: one read for the eight headers, then a copy and a status
        // each, and the pass's overhead once.
        let batch = calls_for(|c| {
            for k in 0..8u64 {
                let hdr = HDR + 0x180 * k;
                request(
                    c,
                    hdr,
                    types::IN,
                    8 * k,
                    &pages(DATA + 0x1_0000 * k, 4096, true),
                );
            }
        });
        assert_eq!(batch.len(), 8 + 8 + 8, "{batch:?}");
        eprintln!(
            "SBI calls per pass: 4 KiB read {}, 4 KiB write {}, 64 KiB read {} \
             (16 scattered pages) or {} (adjacent), 8 x 4 KiB reads {} ({} each)",
            read_4k.len(),
            write_4k.len(),
            read_64k.len(),
            read_64k_adjacent.len(),
            batch.len(),
            batch.len() as f64 / 8.0
        );
    }
}
