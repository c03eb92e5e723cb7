//! Children: one-page program children, "role" children running this very guest's
//! Rust code, the bystander that measures progress, events, and cleanup.
//!
//! A role child is SPAWNed paused from a one-page idle program, gets this guest's
//! code and data copied in with MAP_CHILD_MEM (at the same GPAs: its RAM starts at
//! 0x8000_0000 too), and is STARTed at `_start` with a1 = 0x8000_0000 + 64 × role.
//! `main` sees from GET_INFO that it is not the Root VM and calls [`child_main`].

use crate::img::{self, Program};
use crate::sys::{self, error, flags, Client, Line, Region, DSX};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use diosix_abi::{event, ext, Event};
use diosix_guest_rt::diosix;
use diosix_guest_rt::{println, sbi};

/// Role: measures its own progress; answers `q` on its console input with
/// `hb <iterations> <longest gap in µs>` and starts a new measurement.
pub const ROLE_BYSTANDER: usize = 1;
/// Role: echoes IPC messages to their sender and console input to its console.
pub const ROLE_ECHO: usize = 2;

/// Role: two vCPUs echoing their parent's IPC messages from receives that sleep
/// (`IPC_RECV_WAIT`), each with its timer interrupt enabled and set a random 0-2 ms
/// ahead, so that a delivery and an interrupt race to end many of the waits. A
/// message too long for its 64-byte receive (BAD_RANGE) is drained and answered
/// `LONG`.
pub const ROLE_WAITER: usize = 3;

/// Priority children get (the Root VM's own).
pub static PRIO: AtomicU32 = AtomicU32::new(128);
/// The bystander's CID (0 = none).
pub static BYSTANDER: AtomicU64 = AtomicU64::new(0);
/// Per-vCPU image buffers (64 KiB each) in the work area: base address.
static IMG_BASE: AtomicUsize = AtomicUsize::new(0);
/// RAM pages of a role child.
static ROLE_PAGES: AtomicU64 = AtomicU64::new(1024);

/// Per-vCPU image buffer size.
pub const IMG_LEN: usize = 64 * 1024;

/// Sets where the per-vCPU image buffers are and how big a role child must be.
pub fn init(img_base: usize, image_end: usize, prio: u32) {
    IMG_BASE.store(img_base, Ordering::Relaxed);
    PRIO.store(prio.max(1), Ordering::Relaxed);
    let span = (image_end - sys::RAM_BASE).div_ceil(1 << 20) + 1;
    ROLE_PAGES.store((span as u64) << 8, Ordering::Relaxed);
}

/// The calling vCPU's image buffer.
pub fn img_buf() -> Region {
    // SAFETY: the calling vCPU's own slot of the image buffers that `main`'s layout
    // sets aside above the image; no other vCPU uses it.
    unsafe {
        Region::new(
            IMG_BASE.load(Ordering::Relaxed) + sys::me() * IMG_LEN,
            IMG_LEN,
        )
    }
}

/// Priority of children.
pub fn prio() -> u32 {
    PRIO.load(Ordering::Relaxed)
}

/// The bystander's CID, 0 if none.
pub fn bystander() -> u64 {
    BYSTANDER.load(Ordering::Relaxed)
}

/// SPAWN of a one-page child running `prog` with `pages` of RAM and `vcpus`, SPAWN
/// flags `fl`, quota fields from `tweak`.
pub fn spawn_prog(
    prog: Program,
    pages: u64,
    vcpus: u32,
    fl: u32,
    tweak: impl FnOnce(&mut diosix_abi::SpawnArgs),
) -> sys::SbiRet {
    let b = img_buf();
    let len = img::program_elf(&b, prog);
    let mut a = diosix::spawn_args(b.addr(), len, pages.max(img::PROG_MIN_PAGES), vcpus, prio());
    a.flags = fl;
    tweak(&mut a);
    DSX.spawn(&a)
}

extern "C" {
    fn _start();
    static __bss_start: u8;
    static __image_end: u8;
}

/// One past the last byte of this guest's image (stacks included).
pub fn image_end() -> usize {
    core::ptr::addr_of!(__image_end) as usize
}

/// Spawns a role child; returns its CID.
pub fn spawn_role(role: usize) -> Result<u64, &'static str> {
    spawn_role_vcpus(role, 1)
}

/// Spawns a role child with `vcpus` vCPUs (the first started, the others left to
/// the role to start); returns its CID.
pub fn spawn_role_vcpus(role: usize, vcpus: u32) -> Result<u64, &'static str> {
    let pages = ROLE_PAGES.load(Ordering::Relaxed);
    let r = spawn_prog(Program::Idle, pages, vcpus, flags::SPAWN_PAUSED, |_| {});
    if r.error != 0 {
        return Err("SPAWN refused");
    }
    let c = r.value as u64;
    let bss = core::ptr::addr_of!(__bss_start) as usize;
    let start = diosix_guest_rt::image_start();
    let len = (bss - start).next_multiple_of(4096);
    let all = flags::MAP_READ | flags::MAP_WRITE | flags::MAP_EXEC;
    if DSX.map_child_mem(c, start, start, len, all).error != 0 {
        DSX.exit(c, 0);
        return Err("MAP_CHILD_MEM refused");
    }
    if DSX
        .start(c, _start as *const () as usize, sys::RAM_BASE + 64 * role)
        .error
        != 0
    {
        DSX.exit(c, 0);
        return Err("START refused");
    }
    Ok(c)
}

// ----- the children's side -----

/// Entry of a role child (`main` found it is not the Root VM).
pub fn child_main(_hartid: usize, a1: usize) {
    if let Ok(h) = DSX.hv_info() {
        sys::set_timebase(h.timer_freq_hz);
    }
    match a1.wrapping_sub(sys::RAM_BASE) / 64 {
        ROLE_BYSTANDER => bystander_main(),
        ROLE_ECHO => echo_main(),
        ROLE_WAITER => waiter_main(),
        _ => DSX.exit_self(0xD00D),
    }
}

fn bystander_main() -> ! {
    println!("bystander: up");
    let (mut count, mut longest) = (0u64, 0u64);
    let mut last = sys::now();
    loop {
        sys::sleep_ms(2);
        let t = sys::now();
        longest = longest.max(t - last);
        last = t;
        count += 1;
        let mut b = [0u8; 16];
        let r = sbi::dbcn_read(&mut b);
        if r.is_ok() && b[..r.value.min(16)].contains(&b'q') {
            println!("hb {count} {}", sys::to_us(longest));
            longest = 0;
            // The reply itself must not count as a gap.
            last = sys::now();
        }
    }
}

fn echo_main() -> ! {
    println!("echo: up");
    loop {
        let mut idle = true;
        if let Ok(Some((from, len))) = DSX.ipc_recv(0, 0, 4096) {
            let mut msg = [0u8; 256];
            let n = len.min(msg.len());
            sys::data().read(0, &mut msg[..n]);
            DSX.ipc_send(from, &msg[..n]);
            idle = false;
        }
        let mut b = [0u8; 64];
        let r = sbi::dbcn_read(&mut b);
        if r.is_ok() && r.value > 0 {
            diosix_guest_rt::console::write_bytes(&b[..r.value.min(64)]);
            idle = false;
        }
        if idle {
            sys::sleep_ms(1);
        }
    }
}

fn waiter_main() -> ! {
    println!("waiter: up");
    let _ = diosix_guest_rt::hart::start(1, waiter_hart, 0);
    waiter_loop()
}

fn waiter_hart(_hartid: usize, _opaque: usize) {
    waiter_loop()
}

fn waiter_loop() -> ! {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ diosix_guest_rt::hart::id() as u64;
    diosix_guest_rt::csr::sie_set(diosix_guest_rt::csr::STI);
    let wait = flags::IPC_RECV_EXACT | flags::IPC_RECV_WAIT;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sbi::set_timer(sys::now() + sys::ms(2) * (seed % 64) / 64);
        match DSX.ipc_recv(diosix_abi::cid::PARENT, wait, 64) {
            Ok(Some((_, len))) => {
                let mut msg = [0u8; 64];
                let n = len.min(msg.len());
                sys::data().read(0, &mut msg[..n]);
                DSX.ipc_send(diosix_abi::cid::PARENT, &msg[..n]);
            }
            Err(e) if e == error::BAD_RANGE => {
                let _ = DSX.ipc_recv(diosix_abi::cid::PARENT, flags::IPC_RECV_EXACT, 4096);
                DSX.ipc_send(diosix_abi::cid::PARENT, b"LONG");
            }
            // Woken by its timer (or refused): wait again.
            _ => {}
        }
    }
}

// ----- the leader's view: events, the bystander, cleanup -----

/// Interior-mutable state used by the leader (team index 0) only.
struct LeaderOnly<T>(UnsafeCell<T>);

// SAFETY: only the leader vCPU calls the functions below that touch these (events,
// the bystander's console), one at a time.
unsafe impl<T> Sync for LeaderOnly<T> {}

impl<T> LeaderOnly<T> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: leader only, never re-entered (see the Sync impl).
        f(unsafe { &mut *self.0.get() })
    }
}

static PENDING: LeaderOnly<[Option<Event>; 64]> = LeaderOnly(UnsafeCell::new([None; 64]));
static HB: LeaderOnly<Line<512>> = LeaderOnly(UnsafeCell::new(Line::new()));

/// Waits (bounded) for an event of `kind` about `about`; others are kept.
pub fn wait_event(kind: u32, about: u64, limit_ms: u64) -> Option<Event> {
    let matches = |e: &Event| e.kind == kind && e.cid == about;
    if let Some(e) = PENDING.with(|p| {
        p.iter_mut()
            .find(|s| s.as_ref().is_some_and(matches))
            .and_then(Option::take)
    }) {
        return Some(e);
    }
    let end = sys::now() + sys::ms(limit_ms);
    loop {
        match DSX.poll_event() {
            Ok(Some(e)) if matches(&e) => return Some(e),
            Ok(Some(e)) => {
                PENDING.with(|p| {
                    if let Some(s) = p.iter_mut().find(|s| s.is_none()) {
                        *s = Some(e);
                    }
                });
                continue;
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        if sys::now() > end {
            return None;
        }
        sys::sleep_ms(1);
    }
}

/// Forgets every event kept (the fuzzer's children make many).
pub fn forget_events() {
    PENDING.with(|p| p.iter_mut().for_each(|s| *s = None));
    while let Ok(Some(_)) = DSX.poll_event() {}
}

/// Asks the bystander for its report; returns (iterations, longest gap in µs), or
/// None if it did not answer within `limit_ms`.
pub fn bystander_query(limit_ms: u64) -> Option<(u64, u64)> {
    let c = bystander();
    if c == 0 {
        return None;
    }
    // Whatever it printed before is stale.
    drain_bystander();
    HB.with(|l| l.clear());
    DSX.console_write(c, b"q");
    let end = sys::now() + sys::ms(limit_ms);
    loop {
        if let Some(v) = drain_bystander() {
            return Some(v);
        }
        if sys::now() > end {
            return None;
        }
        sys::sleep_ms(1);
    }
}

/// Reads the bystander's console; the last `hb` line seen, if any.
fn drain_bystander() -> Option<(u64, u64)> {
    let c = bystander();
    let mut found = None;
    loop {
        let r = DSX.console_read(c, 512);
        if r.error != 0 || r.value == 0 {
            return found;
        }
        let mut chunk = [0u8; 512];
        let n = r.value.min(512);
        sys::data().read(0, &mut chunk[..n]);
        for &b in &chunk[..n] {
            if b == b'\n' {
                if let Some(v) = HB.with(|l| parse_hb(l.as_str())) {
                    found = Some(v);
                }
                HB.with(|l| l.clear());
            } else {
                HB.with(|l| l.push(b));
            }
        }
    }
}

fn parse_hb(line: &str) -> Option<(u64, u64)> {
    let mut it = line.trim().strip_prefix("hb ")?.split(' ');
    let count = it.next()?.parse().ok()?;
    let gap = it.next()?.parse().ok()?;
    Some((count, gap))
}

/// EXITs every child except the bystander (and `keep`); returns how many it killed.
pub fn kill_all(keep: u64) -> usize {
    let mut killed = 0;
    for _ in 0..8 {
        let mut cids = [0u64; 512];
        let Ok(n) = DSX.list_children(&mut cids) else {
            break;
        };
        let mut left = 0;
        for &c in &cids[..n.min(512)] {
            if c == bystander() || c == keep {
                continue;
            }
            left += 1;
            if DSX.exit(c, 0).error == error::SUCCESS {
                killed += 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    killed
}

/// Live children other than the bystander.
pub fn others_alive() -> usize {
    let mut cids = [0u64; 512];
    DSX.list_children(&mut cids).map_or(usize::MAX, |n| {
        cids[..n.min(512)]
            .iter()
            .filter(|&&c| c != bystander())
            .count()
    })
}

/// Brings the hypervisor's tables to the size this run can make them grow to (as
/// many children as the descendant quota allows, 8 vCPUs each, an event for each),
/// then kills them all: what those tables keep of their growth is then already in
/// the starting heap figure, and only what the run leaks shows at the end. Returns
/// how many children it made.
pub fn prewarm() -> usize {
    let mut made = [0u64; 128];
    let mut n = 0;
    while n < made.len() {
        let r = spawn_prog(Program::Idle, img::PROG_MIN_PAGES, 8, 0, |_| {});
        if r.error != 0 {
            break;
        }
        made[n] = r.value as u64;
        n += 1;
    }
    for &c in &made[..n] {
        DSX.exit(c, 0);
    }
    for &c in &made[..n] {
        wait_event(event::CHILD_TERMINATED, c, 2_000);
    }
    forget_events();
    n
}

/// Spawns a one-page idle child and kills it again, waiting for its end: the
/// hypervisor logs its heap use at each termination, so this marks the heap figure
/// at a quiet moment (start and end of the run).
pub fn heap_mark(what: &str) {
    println!("hostile: heap mark {what}");
    let r = spawn_prog(Program::Idle, img::PROG_MIN_PAGES, 1, 0, |_| {});
    if r.error != 0 {
        println!(
            "note heap mark ({what}): SPAWN refused: {}",
            sys::err_name(r.error)
        );
        return;
    }
    let c = r.value as u64;
    DSX.exit(c, 0);
    if wait_event(event::CHILD_TERMINATED, c, 5_000).is_none() {
        println!("note heap mark ({what}): no TERMINATED event for CID {c}");
    }
    // Let the hart that ran it (if any) drop it.
    sys::sleep_ms(20);
    let _ = ext::FID_EXIT;
}
