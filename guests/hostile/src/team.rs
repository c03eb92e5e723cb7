//! Every vCPU of the Root VM as one team: the boot vCPU (index 0) leads, the others
//! (started through HSM) wait for a phase, run their part of it, and report back.
//!
//! A phase is a plain `fn(index, n)` run by every member at once. The leader runs its
//! own part, then waits (bounded) for the others; a member that does not come back
//! is reported with the SBI call it is stuck in, and the team is marked broken so no
//! further phase starts (the hang is then attributable to that phase and call).

use crate::sys::{self, Client, DSX, MAXV};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use diosix_guest_rt::{hart, println};

/// Members (vCPUs) in the team.
static N: AtomicUsize = AtomicUsize::new(1);
/// Bumped to start a phase.
static SEQ: AtomicUsize = AtomicUsize::new(0);
/// The phase body (`fn(usize, usize)` as usize).
static BODY: AtomicUsize = AtomicUsize::new(0);
/// Members other than the leader that finished the current phase.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// Members other than the leader that have started.
static UP: AtomicUsize = AtomicUsize::new(0);
/// A member did not come back from a phase.
static BROKEN: AtomicBool = AtomicBool::new(false);
/// Hart id of each member.
static HARTS: [AtomicUsize; MAXV] = [const { AtomicUsize::new(0) }; MAXV];

/// Team size.
pub fn size() -> usize {
    N.load(Ordering::Relaxed)
}

/// True once a member failed to come back from a phase.
pub fn broken() -> bool {
    BROKEN.load(Ordering::Relaxed)
}

/// Member index of the calling vCPU.
pub fn index() -> usize {
    let me = hart::id();
    (0..size())
        .find(|&i| HARTS[i].load(Ordering::Relaxed) == me)
        .unwrap_or(0)
}

fn member(hartid: usize, idx: usize) {
    let _ = hartid;
    UP.fetch_add(1, Ordering::AcqRel);
    let mut seen = 0;
    loop {
        let s = SEQ.load(Ordering::Acquire);
        if s == seen {
            sys::sleep_ms(1);
            continue;
        }
        seen = s;
        let f = BODY.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `run` stores into BODY, always a valid `fn(usize, usize)`.
            let f: fn(usize, usize) = unsafe { core::mem::transmute::<usize, fn(usize, usize)>(f) };
            f(idx, size());
        }
        DONE.fetch_add(1, Ordering::AcqRel);
    }
}

/// Starts the team: `harts[0]` is the calling (boot) vCPU, the rest are started.
/// Returns how many members are up (bounded wait).
pub fn start(harts: &[usize]) -> usize {
    let n = harts.len().min(MAXV);
    for (i, &h) in harts.iter().take(n).enumerate() {
        HARTS[i].store(h, Ordering::Relaxed);
    }
    N.store(n, Ordering::Release);
    for (i, &h) in harts.iter().enumerate().take(n).skip(1) {
        let r = hart::start(h, member, i);
        if !r.is_ok() {
            println!("hostile: HSM start of hart {h} failed: {}", r.error);
        }
    }
    let end = sys::now() + sys::ms(10_000);
    while UP.load(Ordering::Acquire) + 1 < n && sys::now() < end {
        sys::sleep_ms(1);
    }
    UP.load(Ordering::Acquire) + 1
}

/// Runs `body` on every member; waits up to `limit_ms` for the others. False (and the
/// team broken) if someone did not come back.
pub fn run(name: &str, limit_ms: u64, body: fn(usize, usize)) -> bool {
    if broken() {
        println!("skip {name}: an earlier phase left a vCPU stuck");
        return false;
    }
    DONE.store(0, Ordering::Release);
    BODY.store(body as usize, Ordering::Release);
    SEQ.fetch_add(1, Ordering::AcqRel);
    body(0, size());
    let others = size() - 1;
    let end = sys::now() + sys::ms(limit_ms);
    loop {
        if DONE.load(Ordering::Acquire) >= others {
            return true;
        }
        if sys::now() > end {
            BROKEN.store(true, Ordering::Relaxed);
            crate::report_fail(format_args!(
                "phase_{name}_all_vcpus_back: {} of {others} other vCPUs came back within {limit_ms} ms",
                DONE.load(Ordering::Acquire)
            ));
            stuck_calls();
            return false;
        }
        sys::sleep_ms(2);
    }
}

/// Prints the SBI call each member is in, if any.
pub fn stuck_calls() {
    for i in 0..size() {
        match sys::current_call(i) {
            Some((eid, fid, a0, t)) => println!(
                "note vCPU {i}: in {} (eid {eid:#x} fid {fid}, a0 {a0:#x}) for {} ms",
                sys::call_name(eid, fid),
                sys::to_ms(t)
            ),
            None => println!("note vCPU {i}: not in an SBI call"),
        }
    }
}

/// A reusable barrier for the team's members inside a phase: each round every one of
/// `n` members calls [`Gate::wait`] once. Spins (yielding now and then, since vCPUs
/// may outnumber harts) for at most `limit_ms`; false if the others did not arrive.
pub struct Gate {
    count: AtomicUsize,
}

impl Gate {
    /// A fresh gate.
    pub const fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
        }
    }

    /// Resets it (by the leader, between phases).
    pub fn reset(&self) {
        self.count.store(0, Ordering::Release);
    }

    /// Arrives for `round` and spins without ever leaving the vCPU, so the members
    /// leave the gate within a few instructions of each other (when each has a hart).
    pub fn wait_tight(&self, round: usize, n: usize, limit_ms: u64) -> bool {
        self.count.fetch_add(1, Ordering::AcqRel);
        let target = n * (round + 1);
        let end = sys::now() + sys::ms(limit_ms);
        while self.count.load(Ordering::Acquire) < target {
            if sys::now() > end {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }

    /// Arrives for `round` (0, 1, ...) and waits for the other `n - 1`.
    pub fn wait(&self, round: usize, n: usize, limit_ms: u64) -> bool {
        self.count.fetch_add(1, Ordering::AcqRel);
        let target = n * (round + 1);
        let end = sys::now() + sys::ms(limit_ms);
        let mut spins = 0u32;
        while self.count.load(Ordering::Acquire) < target {
            spins += 1;
            if spins.is_multiple_of(256) {
                DSX.yield_now();
                if sys::now() > end {
                    return false;
                }
            }
            core::hint::spin_loop();
        }
        true
    }
}
