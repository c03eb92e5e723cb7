//! Phase `probes`: regression probes for the five defects confirmed in issue 9. Each
//! announces itself (`probe <name>: ...`) before every call that could hang or crash
//! the host, so a run that stops there names the culprit. In the order they run:
//!
//! 1. `reboot` (issue item 4): a child holding 85 % of the free RAM is REBOOTed
//!    while busy in UNMAP_CHILD_MEM over its own RAM, reboots itself with SRST, is
//!    replaced by a SPAWN of its CID, and is EXITed and at once SPAWNed again at the
//!    same size: every one must succeed and the child must never be killed.
//! 2. `phnum` (item 3): SPAWN of an ELF with 65,535 program headers (PN_XNUM) must be
//!    refused promptly, while another vCPU's GET_INFO calls keep completing quickly.
//! 3. `dbcn` (item 5): DBCN console_read of length 0 at the top of the address space
//!    must return promptly (the hypervisor must not walk 2^52 pages).
//! 4. `fork` (item 2): two vCPUs FORK at the same moment (valid and invalid flags):
//!    both return, the other vCPUs keep running, the clones can be killed.
//! 5. `payload` (item 1): SPAWN of a `DSXPAYLD` whose command line is several MiB
//!    (one page listed thousands of times with SPAWN_PAGE_LIST) must be refused with
//!    INVALID_PARAM, and the hypervisor must live on.

use crate::img::{self, Program};
use crate::sys::{self, error::*, flags, Client, DSX};
use crate::team::{self, Gate};
use crate::{check, check_code, kids, note, PR_DBCN, PR_FORK, PR_PAYLOAD, PR_PHNUM, PR_REBOOT};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use diosix_abi::event;
use diosix_guest_rt::diosix;
use diosix_guest_rt::println;

/// Runs the probes selected by `mask`.
pub fn run(mask: u32) {
    if mask & PR_REBOOT != 0 {
        reboot_probe();
    }
    if mask & PR_PHNUM != 0 {
        phnum_probe();
    }
    if mask & PR_DBCN != 0 {
        dbcn_probe();
    }
    if mask & PR_FORK != 0 {
        fork_probe();
    }
    if mask & PR_PAYLOAD != 0 {
        payload_probe();
    }
}

/// The longest a single call, or a vCPU between two loop iterations, may take in a
/// probe: far above what a loaded host's scheduling adds (a few hundred ms seen on two
/// busy cores), far below the defects' stalls (10 s and more, or for ever).
const STALL_MS: u64 = 3_000;

/// Measurements the helpers of a probe make.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Set when the measured work is over (helpers that never saw it start stop too).
static FINISHED: AtomicBool = AtomicBool::new(false);
/// Helpers that started measuring.
static READY: AtomicUsize = AtomicUsize::new(0);
static WORST: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static LOOPS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static GATE: Gate = Gate::new();
static RESULT: [[AtomicU64; 2]; 8] = [const { [const { AtomicU64::new(0) }; 2] }; 8];
static RETURNED: AtomicUsize = AtomicUsize::new(0);

fn reset() {
    RUNNING.store(false, Ordering::Relaxed);
    FINISHED.store(false, Ordering::Relaxed);
    READY.store(0, Ordering::Relaxed);
    for i in 0..8 {
        WORST[i].store(0, Ordering::Relaxed);
        LOOPS[i].store(0, Ordering::Relaxed);
    }
    GATE.reset();
    RETURNED.store(0, Ordering::Relaxed);
}

/// A helper vCPU: GET_INFO in a loop while `RUNNING`, recording its longest call.
fn get_info_loop(idx: usize) {
    while !RUNNING.load(Ordering::Acquire) && !FINISHED.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    READY.fetch_add(1, Ordering::AcqRel);
    while RUNNING.load(Ordering::Acquire) {
        let t0 = sys::now();
        let _ = DSX.info();
        let dt = sys::now() - t0;
        WORST[idx].fetch_max(dt, Ordering::Relaxed);
        LOOPS[idx].fetch_add(1, Ordering::Relaxed);
    }
}

/// A helper vCPU that never calls the hypervisor: counts, recording its longest gap.
fn compute_loop(idx: usize) {
    while !RUNNING.load(Ordering::Acquire) && !FINISHED.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    READY.fetch_add(1, Ordering::AcqRel);
    let mut last = sys::now();
    while RUNNING.load(Ordering::Acquire) {
        let t = sys::now();
        WORST[idx].fetch_max(t - last, Ordering::Relaxed);
        last = t;
        LOOPS[idx].fetch_add(1, Ordering::Relaxed);
        for _ in 0..100 {
            core::hint::spin_loop();
        }
    }
}

/// Lets the helpers loose and waits (bounded) until every one of them measures.
fn start_helpers(n: usize) {
    RUNNING.store(true, Ordering::Release);
    let end = sys::now() + sys::ms(2_000);
    while READY.load(Ordering::Acquire) + 1 < n && sys::now() < end {
        sys::sleep_ms(1);
    }
    sys::sleep_ms(20);
}

// ----- 1. memory accounting: REBOOT / SRST / replace / EXIT-then-SPAWN of a big child -----

/// An exit code for messages ("none" when there was no event).
struct Code(Option<u64>);

impl core::fmt::Display for Code {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(u64::MAX) => f.write_str("FATAL_FAULT"),
            Some(c) => write!(f, "{c:#x}"),
            None => f.write_str("none"),
        }
    }
}

fn reboot_probe() {
    println!("probe reboot: a child holding over half of the free RAM, rebooted while busy");
    let before = kids::bystander_query(5_000);
    let free = match DSX.hv_info() {
        Ok(h) => h.ram_free_pages,
        Err(e) => {
            crate::report_fail(format_args!("probe_reboot_hv_info: {}", sys::err_name(e)));
            return;
        }
    };
    // 85 % of the headroom, in whole 2 MiB, leaving room for its tables and image: a
    // second copy cannot fit beside it, so the old incarnation's frames must be back
    // before the new one is built.
    let pages = (free * 85 / 100) & !511;
    note(format_args!(
        "probe reboot: headroom {free} pages, child RAM {pages} pages ({} MiB)",
        pages >> 8
    ));
    let busy = Program::UnmapLoop(pages * 4096);
    let spawn_busy = |name: &str| -> Option<u64> {
        let r = kids::spawn_prog(busy, pages, 1, 0, |_| {});
        check_code(name, r, &[SUCCESS]).then_some(r.value as u64)
    };
    let Some(mut c) = spawn_busy("probe_reboot_big_child_spawned") else {
        return;
    };
    sys::sleep_ms(50);
    for round in 0..5 {
        println!("probe reboot: REBOOT {round} of the busy child (CID {c})");
        let l: sys::Line<64> = sys::fmt(format_args!("probe_reboot_busy_big_child_{round}"));
        check_code(l.as_str(), DSX.reboot(c), &[SUCCESS]);
        let l: sys::Line<64> = sys::fmt(format_args!("probe_reboot_busy_big_child_{round}_event"));
        let e = kids::wait_event(event::CHILD_REBOOTED, c, 5_000);
        check(
            l.as_str(),
            e.is_some(),
            format_args!("no CHILD_REBOOTED event"),
        );
        let l: sys::Line<64> = sys::fmt(format_args!("probe_reboot_busy_big_child_{round}_alive"));
        let dead = kids::wait_event(event::CHILD_TERMINATED, c, 200).map(|e| e.exit_code);
        if !check(
            l.as_str(),
            dead.is_none() && DSX.child_info(c).is_ok(),
            format_args!("the child was killed (exit code {})", Code(dead)),
        ) {
            DSX.exit(c, 0);
            let Some(n) = spawn_busy("probe_reboot_big_child_respawned") else {
                return;
            };
            c = n;
        }
        sys::sleep_ms(30);
    }

    // The same child rebuilt by a SPAWN of its CID (a replacing SPAWN), busy again.
    println!("probe reboot: SPAWN replacing the busy big child (CID {c})");
    let r = kids::spawn_prog(busy, pages, 1, 0, |a| a.cid = c);
    if !check(
        "probe_reboot_replacing_spawn",
        r.error == 0 && r.value as u64 == c,
        format_args!(
            "got {} ({}) a1 {}",
            sys::err_name(r.error),
            r.error,
            r.value
        ),
    ) {
        DSX.exit(c, 0);
        let Some(n) = spawn_busy("probe_reboot_big_child_respawned") else {
            return;
        };
        c = n;
    }
    sys::sleep_ms(30);

    // EXIT, then at once a SPAWN of the same size.
    for round in 0..3 {
        println!("probe reboot: EXIT (CID {c}) then SPAWN of the same size, round {round}");
        let l: sys::Line<64> = sys::fmt(format_args!("probe_exit_big_child_{round}"));
        check_code(l.as_str(), DSX.exit(c, 0), &[SUCCESS]);
        let r = kids::spawn_prog(busy, pages, 1, 0, |_| {});
        let l: sys::Line<64> = sys::fmt(format_args!("probe_exit_then_spawn_same_size_{round}"));
        if !check_code(l.as_str(), r, &[SUCCESS]) {
            kids::forget_events();
            crate::progress("probe_reboot", before);
            return;
        }
        c = r.value as u64;
        sys::sleep_ms(30);
    }

    // Its own SRST reboot, over and over, while it holds most of the RAM.
    println!("probe reboot: a big child rebooting itself with SRST");
    DSX.exit(c, 0);
    let r = kids::spawn_prog(Program::SrstReboot, pages, 1, 0, |_| {});
    if check_code("probe_reboot_srst_big_child_spawned", r, &[SUCCESS]) {
        let s = r.value as u64;
        let mut reboots = 0;
        let mut died = None;
        let end = sys::now() + sys::ms(1_500);
        while sys::now() < end && died.is_none() {
            match DSX.poll_event() {
                Ok(Some(e)) if e.cid == s && e.kind == event::CHILD_REBOOTED => reboots += 1,
                Ok(Some(e)) if e.cid == s && e.kind == event::CHILD_TERMINATED => {
                    died = Some(e.exit_code)
                }
                Ok(Some(_)) => {}
                _ => sys::sleep_ms(5),
            }
        }
        note(format_args!(
            "probe reboot: {reboots} SRST reboots of a {} MiB child",
            pages >> 8
        ));
        check(
            "probe_reboot_srst_big_child_survives",
            died.is_none() && reboots > 0,
            format_args!(
                "{reboots} reboots, then it ended with exit code {}",
                Code(died)
            ),
        );
        DSX.exit(s, 0);
    }
    kids::forget_events();
    crate::progress("probe_reboot", before);
}

// ----- 2. an ELF with 65,535 program headers -----

fn phnum_probe() {
    let count = 65_535usize;
    let buf = crate::big();
    let len = img::xnum_elf_len(count);
    if buf.len() < len {
        crate::report_fail(format_args!("probe_phnum: work area too small"));
        return;
    }
    img::xnum_elf(&buf, count);
    // A one-thousand-header version first: the same work, 4,000 times less of it.
    let small = img::xnum_elf_len(1000);
    let sbuf = buf.sub(len.next_multiple_of(4096), small);
    img::xnum_elf(&sbuf, 1000);
    reset();
    println!("probe phnum: SPAWN of an ELF with 1,000 and then 65,535 program headers (PN_XNUM)");
    let ok = crate::phase("probe_phnum", 85_000, |idx, n| {
        if idx != 0 {
            if idx % 2 == 1 {
                get_info_loop(idx);
            } else {
                compute_loop(idx);
            }
            return;
        }
        let big = crate::big();
        let spawn = |addr: usize, len: usize| {
            let a = diosix::spawn_args(addr, len, 1024, 1, kids::prio());
            let t0 = sys::now();
            let r = DSX.spawn(&a);
            (r, sys::now() - t0)
        };
        start_helpers(n);
        let len = img::xnum_elf_len(65_535);
        let (r1, t1) = spawn(
            big.addr() + len.next_multiple_of(4096),
            img::xnum_elf_len(1000),
        );
        RESULT[0][0].store(r1.error as u64, Ordering::Relaxed);
        RESULT[0][1].store(t1, Ordering::Relaxed);
        let (r2, t2) = spawn(big.addr(), len);
        RESULT[1][0].store(r2.error as u64, Ordering::Relaxed);
        RESULT[1][1].store(t2, Ordering::Relaxed);
        if r1.error == 0 {
            DSX.exit(r1.value as u64, 0);
        }
        if r2.error == 0 {
            DSX.exit(r2.value as u64, 0);
        }
        sys::sleep_ms(10);
        RUNNING.store(false, Ordering::Release);
        FINISHED.store(true, Ordering::Release);
    });
    if !ok {
        return;
    }
    let (e1, t1) = (
        RESULT[0][0].load(Ordering::Relaxed) as isize,
        RESULT[0][1].load(Ordering::Relaxed),
    );
    let (e2, t2) = (
        RESULT[1][0].load(Ordering::Relaxed) as isize,
        RESULT[1][1].load(Ordering::Relaxed),
    );
    note(format_args!(
        "probe phnum: 1,000 headers -> {} in {} ms; 65,535 headers -> {} in {} ms",
        sys::err_name(e1),
        sys::to_ms(t1),
        sys::err_name(e2),
        sys::to_ms(t2)
    ));
    check(
        "probe_phnum_1000_refused",
        e1 == INVALID_PARAM,
        format_args!("got {} ({e1})", sys::err_name(e1)),
    );
    check(
        "probe_phnum_65535_refused",
        e2 == INVALID_PARAM,
        format_args!("got {} ({e2})", sys::err_name(e2)),
    );
    check(
        "probe_phnum_65535_prompt",
        sys::to_ms(t2) < STALL_MS,
        format_args!("SPAWN took {} ms (limit {STALL_MS} ms)", sys::to_ms(t2)),
    );
    for i in 1..team::size() {
        let worst = sys::to_ms(WORST[i].load(Ordering::Relaxed));
        let loops = LOOPS[i].load(Ordering::Relaxed);
        if i % 2 == 1 {
            note(format_args!(
                "probe phnum: vCPU {i}: {loops} GET_INFO calls, longest {worst} ms"
            ));
            let l: sys::Line<64> =
                sys::fmt(format_args!("probe_phnum_get_info_never_stalls_vcpu{i}"));
            check(
                l.as_str(),
                worst < STALL_MS && loops > 0,
                format_args!(
                    "{loops} GET_INFO calls, the longest took {worst} ms (limit {STALL_MS} ms)"
                ),
            );
        } else {
            note(format_args!(
                "probe phnum: vCPU {i} (no SBI calls): longest gap {worst} ms"
            ));
            let l: sys::Line<64> =
                sys::fmt(format_args!("probe_phnum_compute_never_stalls_vcpu{i}"));
            check(
                l.as_str(),
                worst < STALL_MS && loops > 0,
                format_args!("{loops} iterations, longest gap {worst} ms (limit {STALL_MS} ms)"),
            );
        }
    }
    kids::forget_events();
}

// ----- 3. DBCN console_read of length 0 at the top of the address space -----

fn dbcn_probe() {
    reset();
    println!("probe dbcn: DBCN console_read, length 0, at the top of the address space");
    let ok = crate::phase("probe_dbcn", 60_000, |idx, _n| {
        if idx != 0 {
            get_info_loop(idx);
            return;
        }
        start_helpers(_n);
        let addrs: [usize; 6] = [
            0xffff_ffff_ffff_f001,
            usize::MAX,
            0xffff_ffff_ffff_f000,
            0xffff_ffff_ffff_fff8,
            usize::MAX - 4096,
            0xffff_ffff_ffff_0000,
        ];
        for (i, &a) in addrs.iter().enumerate() {
            println!("probe dbcn: console_read(0, {a:#x}, 0)");
            let t0 = sys::now();
            let r = sys::dbcn_read_raw(0, a, 0);
            let dt = sys::now() - t0;
            RESULT[i][0].store(r.error as u64 | ((r.value as u64) << 32), Ordering::Relaxed);
            RESULT[i][1].store(dt, Ordering::Relaxed);
        }
        RUNNING.store(false, Ordering::Release);
        FINISHED.store(true, Ordering::Release);
    });
    if !ok {
        return;
    }
    let addrs = ["f001", "max", "f000", "fff8", "max_minus_4096", "top_64k"];
    for (i, name) in addrs.iter().enumerate() {
        let raw = RESULT[i][0].load(Ordering::Relaxed);
        let (e, v) = (raw as u32 as i32 as isize, raw >> 32);
        let ms = sys::to_ms(RESULT[i][1].load(Ordering::Relaxed));
        let l: sys::Line<64> = sys::fmt(format_args!("probe_dbcn_read_len0_top_{name}_returns"));
        check(
            l.as_str(),
            ms < STALL_MS && sys::defined(e) && (e != 0 || v == 0),
            format_args!("{} ({e}) a1 {v} after {ms} ms", sys::err_name(e)),
        );
        if e == 0 {
            note(format_args!(
                "probe dbcn: {name}: SUCCESS with 0 bytes (the brief asked for an error; \
                 a zero-length read touches no memory)"
            ));
        }
    }
    for i in 1..team::size() {
        let worst = sys::to_ms(WORST[i].load(Ordering::Relaxed));
        let l: sys::Line<64> = sys::fmt(format_args!("probe_dbcn_other_vcpu{i}_keeps_running"));
        check(
            l.as_str(),
            worst < STALL_MS && LOOPS[i].load(Ordering::Relaxed) > 0,
            format_args!("longest GET_INFO {worst} ms"),
        );
    }
}

// ----- 4. two vCPUs FORK at the same moment -----

/// Rounds of the FORK probe; every `VALID_EVERY`th uses valid flags (a clone is made),
/// the others invalid ones (refused, but only after the hold the defect took first).
const FORK_ROUNDS: usize = 200;
const VALID_EVERY: usize = 10;
/// Per forker: returns seen, invalid-flag refusals, clones made, other results.
static FORKED: [[AtomicUsize; 4]; 2] = [const { [const { AtomicUsize::new(0) }; 4] }; 2];
/// Clones made (to kill).
static CLONES: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static NCLONES: AtomicUsize = AtomicUsize::new(0);

fn fork_flags(round: usize, k: usize) -> u64 {
    if round % VALID_EVERY == VALID_EVERY - 1 {
        [
            flags::FORK_NO_SNAPSHOT,
            flags::FORK_NO_SNAPSHOT | flags::FORK_UNTRUSTED,
        ][k]
    } else {
        [4, 1 << 63, 8, 1 << 20][(round + k) % 4]
    }
}

fn fork_probe() {
    reset();
    let n = team::size();
    if n < 2 {
        println!("skip probe_fork: needs two vCPUs");
        return;
    }
    for f in &FORKED {
        for c in f {
            c.store(0, Ordering::Relaxed);
        }
    }
    NCLONES.store(0, Ordering::Relaxed);
    println!(
        "probe fork: two vCPUs FORK at the same moment, {FORK_ROUNDS} times (flags {:#x}, {:#x}, ...; every {VALID_EVERY}th valid)",
        fork_flags(0, 0),
        fork_flags(0, 1)
    );
    let ok = crate::phase("probe_fork", 60_000, |idx, n| {
        // Forkers: vCPUs 1 and 2 if there are three or more (0 watches), else 0 and 1.
        let forkers = if n >= 3 { [1, 2] } else { [0, 1] };
        let Some(k) = forkers.iter().position(|&f| f == idx) else {
            if n >= 3 && idx == 0 {
                // This vCPU must keep running while the others fork.
                let t0 = sys::now();
                let mut last = t0;
                while !FINISHED.load(Ordering::Acquire) && sys::now() - t0 < sys::ms(50_000) {
                    let t = sys::now();
                    WORST[0].fetch_max(t - last, Ordering::Relaxed);
                    last = t;
                    LOOPS[0].fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        };
        for round in 0..FORK_ROUNDS {
            if !GATE.wait_tight(round, 2, 5_000) {
                break;
            }
            let fl = fork_flags(round, k);
            let r = sys::fork(fl);
            let f = &FORKED[k];
            f[0].fetch_add(1, Ordering::Relaxed);
            if fl & !flags::FORK_ALL != 0 {
                if r.error == INVALID_PARAM && r.value == 0 {
                    f[1].fetch_add(1, Ordering::Relaxed);
                } else {
                    f[3].fetch_add(1, Ordering::Relaxed);
                }
            } else if r.error == SUCCESS {
                f[2].fetch_add(1, Ordering::Relaxed);
                let i = NCLONES.fetch_add(1, Ordering::AcqRel);
                if i < CLONES.len() {
                    CLONES[i].store(r.value as u64, Ordering::Release);
                }
            } else if r.error != DENIED && r.error != FAILED {
                f[3].fetch_add(1, Ordering::Relaxed);
            }
        }
        if RETURNED.fetch_add(1, Ordering::AcqRel) == 1 {
            FINISHED.store(true, Ordering::Release);
        }
    });
    if !ok {
        note(format_args!(
            "probe fork: the FORK callers did not come back (they wait for each other)"
        ));
        return;
    }
    let got = |k: usize, i: usize| FORKED[k][i].load(Ordering::Relaxed);
    for k in 0..2 {
        note(format_args!(
            "probe fork: forker {k}: {} FORKs returned, {} invalid-flag refusals, {} clones, {} other",
            got(k, 0),
            got(k, 1),
            got(k, 2),
            got(k, 3)
        ));
    }
    let invalid = FORK_ROUNDS - FORK_ROUNDS / VALID_EVERY;
    check(
        "probe_fork_concurrent_both_return",
        got(0, 0) == FORK_ROUNDS && got(1, 0) == FORK_ROUNDS,
        format_args!(
            "{} and {} of {FORK_ROUNDS} FORKs returned",
            got(0, 0),
            got(1, 0)
        ),
    );
    check(
        "probe_fork_concurrent_invalid_flags_refused",
        got(0, 1) == invalid && got(1, 1) == invalid && got(0, 3) + got(1, 3) == 0,
        format_args!(
            "{} and {} of {invalid} invalid-flag FORKs gave INVALID_PARAM; {} other results",
            got(0, 1),
            got(1, 1),
            got(0, 3) + got(1, 3)
        ),
    );
    check(
        "probe_fork_concurrent_clones_made",
        got(0, 2) + got(1, 2) > 0,
        format_args!("no valid FORK succeeded"),
    );
    if n >= 3 {
        let worst = sys::to_ms(WORST[0].load(Ordering::Relaxed));
        note(format_args!(
            "probe fork: the watching vCPU's longest gap {worst} ms"
        ));
        check(
            "probe_fork_other_vcpus_keep_running",
            worst < STALL_MS && LOOPS[0].load(Ordering::Relaxed) > 0,
            format_args!("the watching vCPU's longest gap was {worst} ms"),
        );
    }
    let made = NCLONES.load(Ordering::Relaxed).min(CLONES.len());
    let mut killed = 0;
    for c in &CLONES[..made] {
        // The clones EXIT themselves; one still there must be killable.
        let r = DSX.exit(c.load(Ordering::Relaxed), 0);
        killed += usize::from(matches!(r.error, SUCCESS | INVALID_PARAM));
    }
    check(
        "probe_fork_clones_killed",
        killed == made && kids::others_alive() == 0,
        format_args!(
            "{killed} of {made} clones, {} children left",
            kids::others_alive()
        ),
    );
    kids::forget_events();
}

// ----- 5. a payload with a command line of several MiB -----

fn payload_probe() {
    let buf = crate::big();
    // Page 0: the header; page 1: the kernel (a one-page ELF that EXITs); page 2: one
    // page of command line ('a' bytes), named again and again in the page list from
    // page 3 on.
    let header = buf.sub(0, 4096);
    let kernel = buf.sub(4096, 4096);
    let cmd = buf.sub(8192, 4096);
    let list = buf.sub(12288, buf.len() - 12288);
    img::program_elf(&kernel, Program::Exit(0x51));
    cmd.fill(0, 4096, b'a');
    let before = kids::bystander_query(5_000);
    for mib in [1usize, 4, 12] {
        let cmd_len = (mib << 20) - 8192;
        let total = 8192 + cmd_len;
        let pages = total / 4096;
        if pages * 8 > list.len() {
            break;
        }
        img::payload_header(
            &header,
            total as u64,
            &[
                (img::KIND_KERNEL, 4096, 4096),
                (img::KIND_CMDLINE, 8192, cmd_len as u64),
            ],
        );
        list.put_u64(0, header.addr() as u64);
        list.put_u64(8, kernel.addr() as u64);
        for i in 2..pages {
            list.put_u64(i * 8, cmd.addr() as u64);
        }
        let mut a = diosix::spawn_args(
            list.addr(),
            total,
            (total as u64 / 4096) + 1024,
            1,
            kids::prio(),
        );
        a.flags = flags::SPAWN_PAGE_LIST;
        println!(
            "probe payload: SPAWN of a DSXPAYLD with a {} KiB command line (one page listed {} times)",
            cmd_len >> 10,
            pages - 2
        );
        let t0 = sys::now();
        let r = DSX.spawn(&a);
        let ms = sys::to_ms(sys::now() - t0);
        let l: sys::Line<64> = sys::fmt(format_args!("probe_payload_cmdline_{mib}mib_refused"));
        check(
            l.as_str(),
            r.error == INVALID_PARAM && r.value == 0,
            format_args!(
                "got {} ({}) a1 {} after {ms} ms",
                sys::err_name(r.error),
                r.error,
                r.value
            ),
        );
        if r.error == 0 {
            DSX.exit(r.value as u64, 0);
        }
    }
    check(
        "probe_payload_hypervisor_alive",
        DSX.hv_info().is_ok(),
        format_args!("GET_HV_INFO failed"),
    );
    let r = kids::spawn_prog(Program::Exit(5), img::PROG_MIN_PAGES, 1, 0, |_| {});
    check_code("probe_payload_spawn_after", r, &[SUCCESS]);
    if r.error == 0 {
        kids::wait_event(event::CHILD_TERMINATED, r.value as u64, 5_000);
    }
    kids::forget_events();
    crate::progress("probe_payload", before);
}
