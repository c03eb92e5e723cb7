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
use diosix_abi::ext;
use diosix_guest_rt::sbi;
use diosix_guest_rt::{csr, hart};

pub use diosix_abi::{error, flags};
pub use diosix_guest_rt::diosix::Client;
pub use diosix_guest_rt::line::{fmt, Line};
pub use diosix_guest_rt::mem::Region;
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

/// Runs `f` (a call that may sleep in the hypervisor: a receive with
/// `IPC_RECV_WAIT`, an IPC_CALL) with this vCPU's timer interrupt enabled and due `ms`
/// from now, so the sleep ends then at the latest; the timer is off again after.
pub fn with_wake_timer<R>(ms_from_now: u64, f: impl FnOnce() -> R) -> R {
    use diosix_guest_rt::csr;
    diosix_guest_rt::sbi::set_timer(now() + ms(ms_from_now));
    csr::sie_set(csr::STI);
    let r = f();
    csr::sie_clear(csr::STI);
    diosix_guest_rt::sbi::set_timer(u64::MAX);
    r
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

/// The Diosix extension as this guest calls it: every call traced ([`call`]), its
/// structures and data in the calling vCPU's own buffers ([`my`]).
#[derive(Clone, Copy, Debug)]
pub struct Traced;

/// The client.
pub const DSX: Traced = Traced;

// SAFETY: `call` is the traced ecall, as sound as every other call of this guest (see
// `call`); the buffers are the calling vCPU's own, reserved for the hypervisor, and
// disjoint.
unsafe impl Client for Traced {
    fn call(&self, fid: usize, args: [usize; 6]) -> SbiRet {
        call(EID, fid, args)
    }

    fn structs(&self) -> Region {
        st()
    }

    fn data(&self) -> Region {
        data()
    }

    fn list(&self) -> Region {
        list()
    }
}

/// True for the codes the SBI specification defines (SUCCESS and -1..=-13).
pub fn defined(e: isize) -> bool {
    error::name(e).is_some()
}

// ----- raw memory -----

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
    // SAFETY: the calling vCPU's own entry of `BUFS`, used by no other vCPU and only
    // through regions (see `AllBufs`).
    unsafe {
        (
            Region::new(base, 4096),
            Region::new(base + 4096, 8192),
            Region::new(base + 12288, 4096),
        )
    }
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

// ----- Diosix calls with this guest's own rules -----

/// FORK with `fl` (any bits). The clone (FORK returned a0 = a1 = 0) EXITs at once
/// with code 0x33: every vCPU runs the same code, so the clone must recognise itself.
pub fn fork(fl: u64) -> SbiRet {
    let r = DSX.fork(fl);
    if r.error == 0 && r.value == 0 {
        DSX.exit_self(0x33);
    }
    r
}

/// DBCN console_read with raw arguments.
pub fn dbcn_read_raw(len: usize, lo: usize, hi: usize) -> SbiRet {
    call(sbi::eid::DBCN, 1, [len, lo, hi, 0, 0, 0])
}

/// True when this VM is the Root VM (GET_INFO says so). A VM whose GET_INFO fails is
/// taken for the Root VM, so it reports the failure.
pub fn is_root() -> bool {
    DSX.info().map_or(true, |i| i.flags & flags::INFO_ROOT != 0)
}
