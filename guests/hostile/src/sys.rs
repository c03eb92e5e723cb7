//! SBI calls as a hostile guest makes them: raw registers, any value, from any vCPU,
//! every call traced (what each vCPU is in, and the longest call it saw), plus the
//! memory the calls use.
//!
//! Paging is off in every guest here, so an address is its guest-physical address
//! (GPA). Memory the hypervisor may write is either a per-vCPU buffer ([`my`]) or one
//! of the regions laid out at boot ([`Region`]): the two fuzz arenas (garbage in,
//! garbage out) and the work area (large images). Nothing else is ever passed as an
//! output address, so a call can never scribble over this guest's code, data or
//! stacks.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use diosix_abi::{ext, Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs, SpawnArgs, VmInfo};
use diosix_guest_rt::sbi;
use diosix_guest_rt::{csr, hart};

pub use diosix_abi::{error, flags};
pub use diosix_guest_rt::sbi::SbiRet;

/// Most vCPUs this guest drives (hart ids must be below this).
pub const MAXV: usize = 8;
/// The Diosix extension.
pub const EID: usize = ext::EID;
/// Where every guest's RAM starts.
pub const RAM_BASE: usize = 0x8000_0000;

// ----- time -----

static TIMEBASE: AtomicU64 = AtomicU64::new(10_000_000);

/// Sets the `time` frequency (from the DTB or GET_HV_INFO).
pub fn set_timebase(hz: u64) {
    if hz != 0 {
        TIMEBASE.store(hz, Ordering::Relaxed);
    }
}

/// `time` now.
pub fn now() -> u64 {
    csr::time()
}

/// Ticks in `n` milliseconds.
pub fn ms(n: u64) -> u64 {
    TIMEBASE.load(Ordering::Relaxed) / 1000 * n
}

/// Ticks as whole milliseconds.
pub fn to_ms(ticks: u64) -> u64 {
    ticks / (TIMEBASE.load(Ordering::Relaxed) / 1000).max(1)
}

/// Ticks as whole microseconds.
pub fn to_us(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / TIMEBASE.load(Ordering::Relaxed).max(1)
}

/// Sleeps (timer + wfi) for `n` milliseconds.
pub fn sleep_ms(n: u64) {
    diosix_guest_rt::sleep_ticks(ms(n));
}

/// This vCPU's slot in the per-vCPU tables.
pub fn me() -> usize {
    hart::id() % MAXV
}

// ----- tracing -----

/// What each vCPU is calling right now (EID, FID, a0, since when; EID u64::MAX = none).
static CUR_EID: [AtomicU64; MAXV] = [const { AtomicU64::new(u64::MAX) }; MAXV];
static CUR_FID: [AtomicU64; MAXV] = [const { AtomicU64::new(0) }; MAXV];
static CUR_A0: [AtomicU64; MAXV] = [const { AtomicU64::new(0) }; MAXV];
static CUR_SINCE: [AtomicU64; MAXV] = [const { AtomicU64::new(0) }; MAXV];
/// Longest call since the last [`reset_longest`], and its EID/FID.
static LONGEST: [AtomicU64; MAXV] = [const { AtomicU64::new(0) }; MAXV];
static LONGEST_WHAT: [AtomicU64; MAXV] = [const { AtomicU64::new(0) }; MAXV];
/// Calls made by each vCPU.
pub static CALLS: [AtomicUsize; MAXV] = [const { AtomicUsize::new(0) }; MAXV];

/// Forgets every vCPU's longest call.
pub fn reset_longest() {
    for i in 0..MAXV {
        LONGEST[i].store(0, Ordering::Relaxed);
        LONGEST_WHAT[i].store(0, Ordering::Relaxed);
    }
}

/// The longest call any vCPU made since [`reset_longest`]: (ticks, eid, fid, vCPU).
pub fn longest() -> (u64, u64, u64, usize) {
    let mut best = (0, 0, 0, 0);
    for i in 0..MAXV {
        let t = LONGEST[i].load(Ordering::Relaxed);
        if t > best.0 {
            let w = LONGEST_WHAT[i].load(Ordering::Relaxed);
            best = (t, w >> 32, w & 0xffff_ffff, i);
        }
    }
    best
}

/// The call vCPU `i` is in, if any: (eid, fid, a0, ticks so far).
pub fn current_call(i: usize) -> Option<(u64, u64, u64, u64)> {
    let eid = CUR_EID[i].load(Ordering::Acquire);
    (eid != u64::MAX).then(|| {
        (
            eid,
            CUR_FID[i].load(Ordering::Relaxed),
            CUR_A0[i].load(Ordering::Relaxed),
            now().saturating_sub(CUR_SINCE[i].load(Ordering::Relaxed)),
        )
    })
}

/// A short name for an SBI function, for messages.
pub fn call_name(eid: u64, fid: u64) -> &'static str {
    let eid = eid as usize;
    if eid == EID {
        return ext::FUNCTIONS
            .iter()
            .find(|(f, _)| *f as u64 == fid)
            .map_or("DIOSIX_?", |(_, n)| n);
    }
    match (eid, fid) {
        (sbi::eid::DBCN, 0) => "DBCN_WRITE",
        (sbi::eid::DBCN, 1) => "DBCN_READ",
        (sbi::eid::DBCN, 2) => "DBCN_WRITE_BYTE",
        (sbi::eid::SRST, _) => "SRST",
        (sbi::eid::HSM, _) => "HSM",
        (sbi::eid::BASE, _) => "BASE",
        (sbi::eid::TIME, _) => "TIME",
        (sbi::eid::IPI, _) => "IPI",
        (sbi::eid::RFENCE, _) => "RFENCE",
        (e, _) if e < 0x10 => "LEGACY",
        _ => "?",
    }
}

/// Name of an error code.
pub fn err_name(e: isize) -> &'static str {
    error::name(e).unwrap_or("UNDEFINED")
}

/// Any SBI call, traced. Every address a caller of this module passes is either
/// memory this guest set aside for the hypervisor to read or write (see the module
/// documentation), or one the hypervisor must refuse.
pub fn call(eid: usize, fid: usize, args: [usize; 6]) -> SbiRet {
    let i = me();
    CUR_FID[i].store(fid as u64, Ordering::Relaxed);
    CUR_A0[i].store(args[0] as u64, Ordering::Relaxed);
    let t0 = now();
    CUR_SINCE[i].store(t0, Ordering::Relaxed);
    CUR_EID[i].store(eid as u64, Ordering::Release);
    // SAFETY: see the function's documentation: output addresses are buffers and
    // regions reserved for the hypervisor to write, and the callers never pass a
    // function that stops or suspends the hart (EXIT of itself, HSM stop, SRST
    // shutdown) unless that is what they mean to happen.
    let r = unsafe { sbi::sbi_call(eid, fid, args) };
    let dt = now().saturating_sub(t0);
    CUR_EID[i].store(u64::MAX, Ordering::Release);
    CALLS[i].fetch_add(1, Ordering::Relaxed);
    if dt > LONGEST[i].load(Ordering::Relaxed) {
        LONGEST[i].store(dt, Ordering::Relaxed);
        LONGEST_WHAT[i].store(
            ((eid as u64) << 32) | (fid as u64 & 0xffff_ffff),
            Ordering::Relaxed,
        );
    }
    r
}

/// A Diosix extension call.
pub fn dsx(fid: usize, args: [usize; 6]) -> SbiRet {
    call(EID, fid, args)
}

/// A Diosix extension call with two arguments.
pub fn dsx2(fid: usize, a0: usize, a1: usize) -> SbiRet {
    dsx(fid, [a0, a1, 0, 0, 0, 0])
}

/// True for the codes the SBI specification defines (SUCCESS and -1..=-13).
pub fn defined(e: isize) -> bool {
    error::name(e).is_some()
}

// ----- raw memory -----

/// A range of this guest's RAM the hypervisor may read and write during calls.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// First byte (its GPA).
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Region {
    /// The sub-range `[off, off + len)` (clipped).
    pub fn sub(&self, off: usize, len: usize) -> Region {
        let off = off.min(self.len);
        Region {
            addr: self.addr + off,
            len: len.min(self.len - off),
        }
    }

    /// One past the end.
    pub fn end(&self) -> usize {
        self.addr + self.len
    }

    /// Copies `data` in at `off` (clipped).
    pub fn write(&self, off: usize, data: &[u8]) {
        let n = data.len().min(self.len.saturating_sub(off));
        for (i, &b) in data[..n].iter().enumerate() {
            // SAFETY: `off + i < len`: inside the region, which is RAM of this guest
            // set aside for this use (never code, data in use, or a stack).
            unsafe { ((self.addr + off + i) as *mut u8).write_volatile(b) };
        }
    }

    /// Fills `[off, off + len)` with `b` (clipped), a word at a time where it can.
    pub fn fill(&self, off: usize, len: usize, b: u8) {
        let end = off.saturating_add(len).min(self.len);
        let mut at = off;
        let word = u64::from_ne_bytes([b; 8]);
        while at < end {
            let p = self.addr + at;
            if p.is_multiple_of(8) && at + 8 <= end {
                // SAFETY: as in `write`; aligned and inside the region.
                unsafe { (p as *mut u64).write_volatile(word) };
                at += 8;
            } else {
                // SAFETY: as in `write`.
                unsafe { (p as *mut u8).write_volatile(b) };
                at += 1;
            }
        }
    }

    /// Copies out `out.len()` bytes from `off` (bytes past the end read as 0).
    pub fn read(&self, off: usize, out: &mut [u8]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = if off + i < self.len {
                // SAFETY: inside the region (see `write`).
                unsafe { ((self.addr + off + i) as *const u8).read_volatile() }
            } else {
                0
            };
        }
    }

    /// The u64 at `off` (little-endian).
    pub fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a u64 at `off` (little-endian).
    pub fn put_u64(&self, off: usize, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    /// Writes a u32 at `off`.
    pub fn put_u32(&self, off: usize, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    /// Writes a u16 at `off`.
    pub fn put_u16(&self, off: usize, v: u16) {
        self.write(off, &v.to_le_bytes());
    }
}

/// One vCPU's buffers: structures (`st`), messages and console data (`data`), a
/// page list or child list (`list`).
#[repr(C, align(4096))]
struct Bufs {
    st: [u8; 4096],
    data: [u8; 8192],
    list: [u8; 4096],
}

#[repr(C, align(4096))]
struct AllBufs(core::cell::UnsafeCell<[Bufs; MAXV]>);

// SAFETY: each vCPU only ever uses its own entry (indexed by its hart id), and only
// through `Region`'s volatile accesses.
unsafe impl Sync for AllBufs {}

static BUFS: AllBufs = AllBufs(core::cell::UnsafeCell::new(
    [const {
        Bufs {
            st: [0; 4096],
            data: [0; 8192],
            list: [0; 4096],
        }
    }; MAXV],
));

/// The calling vCPU's buffers: (structures 4 KiB, data 8 KiB, list 4 KiB).
pub fn my() -> (Region, Region, Region) {
    let base = BUFS.0.get() as usize + me() * core::mem::size_of::<Bufs>();
    (
        Region {
            addr: base,
            len: 4096,
        },
        Region {
            addr: base + 4096,
            len: 8192,
        },
        Region {
            addr: base + 12288,
            len: 4096,
        },
    )
}

/// The structure buffer of the calling vCPU.
pub fn st() -> Region {
    my().0
}

/// The data buffer of the calling vCPU.
pub fn data() -> Region {
    my().1
}

/// The list buffer of the calling vCPU.
pub fn list() -> Region {
    my().2
}

// ----- typed calls -----

/// EXIT `target` with `code`.
pub fn exit(target: u64, code: u64) -> SbiRet {
    dsx2(ext::FID_EXIT, target as usize, code as usize)
}

/// Ends this VM (EXIT of itself); never returns.
pub fn exit_self(code: u64) -> ! {
    exit(1, code);
    loop {
        csr::wfi();
    }
}

/// YIELD.
pub fn yield_now() -> SbiRet {
    dsx2(ext::FID_YIELD, 0, 0)
}

/// FORK with `fl` (any bits). The clone (FORK returned a0 = a1 = 0) EXITs at once
/// with code 0x33: every vCPU runs the same code, so the clone must recognise itself.
pub fn fork(fl: u64) -> SbiRet {
    let r = dsx2(ext::FID_FORK, fl as usize, 0);
    if r.error == 0 && r.value == 0 {
        exit_self(0x33);
    }
    r
}

/// SPAWN with `a` (copied into this vCPU's structure buffer).
pub fn spawn(a: &SpawnArgs) -> SbiRet {
    let s = st();
    s.write(0, &a.to_le_bytes());
    dsx2(ext::FID_SPAWN, s.addr, 0)
}

/// SET_QUOTA with `q`.
pub fn set_quota(q: &QuotaArgs) -> SbiRet {
    let s = st();
    s.write(0, &q.to_le_bytes());
    dsx2(ext::FID_SET_QUOTA, s.addr, 0)
}

fn decode<T>(r: SbiRet, f: impl Fn(&[u8]) -> Option<T>) -> Result<T, isize> {
    if r.error != 0 {
        return Err(r.error);
    }
    let mut raw = [0u8; 128];
    st().read(0, &mut raw);
    f(&raw).ok_or(error::FAILED)
}

/// GET_INFO about the caller.
pub fn info() -> Result<VmInfo, isize> {
    let s = st();
    s.fill(0, 128, 0xA5);
    decode(
        dsx2(ext::FID_GET_INFO, s.addr, VmInfo::SIZE),
        VmInfo::from_le_bytes,
    )
}

/// GET_CHILD_INFO about `target`.
pub fn child_info(target: u64) -> Result<VmInfo, isize> {
    let s = st();
    s.fill(0, 128, 0xA5);
    decode(
        dsx(
            ext::FID_GET_CHILD_INFO,
            [target as usize, s.addr, VmInfo::SIZE, 0, 0, 0],
        ),
        VmInfo::from_le_bytes,
    )
}

/// GET_HV_INFO.
pub fn hv_info() -> Result<HvInfo, isize> {
    let s = st();
    s.fill(0, 128, 0xA5);
    decode(
        dsx2(ext::FID_GET_HV_INFO, s.addr, HvInfo::SIZE),
        HvInfo::from_le_bytes,
    )
}

/// POLL_EVENT: `Ok(None)` when none waits.
pub fn poll_event() -> Result<Option<Event>, isize> {
    let s = st();
    s.fill(0, 64, 0);
    let r = dsx2(ext::FID_POLL_EVENT, s.addr, Event::SIZE);
    if r.error != 0 {
        return Err(r.error);
    }
    if r.value == 0 {
        return Ok(None);
    }
    let mut raw = [0u8; Event::SIZE];
    s.read(0, &mut raw);
    Ok(Event::from_le_bytes(&raw))
}

/// IPC_SEND of `msg` (copied into this vCPU's data buffer) to `to`.
pub fn ipc_send(to: u64, msg: &[u8]) -> SbiRet {
    let d = data();
    d.write(0, msg);
    let a = IpcSendArgs {
        size: IpcSendArgs::SIZE as u32,
        flags: 0,
        cid: to,
        data_gpa: d.addr as u64,
        len: msg.len() as u64,
    };
    let s = st();
    s.write(0, &a.to_le_bytes());
    dsx2(ext::FID_IPC_SEND, s.addr, 0)
}

/// IPC_RECV into this vCPU's data buffer: `Ok(Some((sender, len)))`.
pub fn ipc_recv(filter: u64, fl: u32, max_len: usize) -> Result<Option<(u64, usize)>, isize> {
    let d = data();
    let a = IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: fl,
        cid: filter,
        buf_gpa: d.addr as u64,
        max_len: max_len as u64,
        out_len: 0,
    };
    let s = st();
    s.write(0, &a.to_le_bytes());
    let r = dsx2(ext::FID_IPC_RECV, s.addr, 0);
    if r.error != 0 {
        return Err(r.error);
    }
    if r.value == 0 {
        return Ok(None);
    }
    let mut raw = [0u8; IpcRecvArgs::SIZE];
    s.read(0, &mut raw);
    let out = IpcRecvArgs::from_le_bytes(&raw).unwrap_or_default();
    Ok(Some((out.cid, out.out_len as usize)))
}

/// CONSOLE_READ from `child` into this vCPU's data buffer.
pub fn console_read(child: u64, len: usize) -> SbiRet {
    dsx(
        ext::FID_CONSOLE_READ,
        [child as usize, data().addr, len, 0, 0, 0],
    )
}

/// CONSOLE_WRITE of `bytes` to `child`.
pub fn console_write(child: u64, bytes: &[u8]) -> SbiRet {
    let d = data();
    d.write(0, bytes);
    dsx(
        ext::FID_CONSOLE_WRITE,
        [child as usize, d.addr, bytes.len(), 0, 0, 0],
    )
}

/// LIST_CHILDREN into `out` (at most its length); returns the live count.
pub fn list_children(out: &mut [u64]) -> Result<usize, isize> {
    let l = list();
    let cap = out.len().min(l.len / 8);
    let r = dsx2(ext::FID_LIST_CHILDREN, l.addr, cap);
    if r.error != 0 {
        return Err(r.error);
    }
    for (i, o) in out.iter_mut().enumerate().take(cap.min(r.value)) {
        *o = l.u64_at(i * 8);
    }
    Ok(r.value)
}

/// STOP, RESUME, REBOOT, DROP_CHILD_TRUST and other one-CID calls.
pub fn on_child(fid: usize, child: u64) -> SbiRet {
    dsx2(fid, child as usize, 0)
}

/// MAP_CHILD_MEM.
pub fn map_child(child: u64, child_gpa: usize, gpa: usize, size: usize, perms: u64) -> SbiRet {
    dsx(
        ext::FID_MAP_CHILD_MEM,
        [child as usize, child_gpa, gpa, size, perms as usize, 0],
    )
}

/// START.
pub fn start(child: u64, entry: usize, dtb: usize) -> SbiRet {
    dsx(ext::FID_START, [child as usize, entry, dtb, 0, 0, 0])
}

/// DBCN console_read with raw arguments.
pub fn dbcn_read_raw(len: usize, lo: usize, hi: usize) -> SbiRet {
    call(sbi::eid::DBCN, 1, [len, lo, hi, 0, 0, 0])
}

/// A `SpawnArgs` with the usual defaults.
pub fn spawn_args(gpa: usize, len: usize, pages: u64, vcpus: u32, prio: u32) -> SpawnArgs {
    SpawnArgs {
        size: SpawnArgs::SIZE as u32,
        flags: 0,
        cid: 0,
        image_gpa: gpa as u64,
        image_size: len as u64,
        dtb_gpa: 0,
        dtb_size: 0,
        ram_pages: pages,
        vcpus,
        priority: prio,
        quota_ram_pages: 0,
        quota_vcpus: 0,
        quota_max_priority: 0,
        quota_max_depth: 0,
        quota_max_descendants: 0,
    }
}

/// True when this VM is the Root VM (GET_INFO says so). A VM whose GET_INFO fails is
/// taken for the Root VM, so it reports the failure.
pub fn is_root() -> bool {
    info().map_or(true, |i| i.flags & flags::INFO_ROOT != 0)
}

/// Fixed-size text (no allocator).
pub struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends one byte (dropped when full).
    pub fn push(&mut self, b: u8) {
        if self.len < N {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }
}

impl<const N: usize> core::fmt::Write for Line<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            self.push(b);
        }
        Ok(())
    }
}

/// Formats into a [`Line`].
pub fn fmt<const N: usize>(args: core::fmt::Arguments) -> Line<N> {
    let mut l = Line::new();
    let _ = core::fmt::Write::write_fmt(&mut l, args);
    l
}
