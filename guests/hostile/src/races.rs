//! Phase `races`: every vCPU hammers the extension at the same moment, for a bounded
//! number of rounds, in ten races. Every return must be a defined SBI code (and one
//! the race allows), and what the race leaves behind must be consistent.

use crate::img::{self, Program};
use crate::sys::{self, error::*, flags, Client, SbiRet, DSX, MAXV};
use crate::team::{self, Gate};
use crate::{kids, note};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use diosix_abi::{event, ext};

/// Unexpected returns per race (all vCPUs).
static BAD: AtomicUsize = AtomicUsize::new(0);
/// The first unexpected one: (fid, error, value, vCPU).
static FIRST: [AtomicU64; 4] = [const { AtomicU64::new(u64::MAX) }; 4];
/// CIDs the race made (for cleanup and checks).
static CIDS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static NCIDS: AtomicUsize = AtomicUsize::new(0);
/// The child a race is about.
static TARGET: AtomicU64 = AtomicU64::new(0);
/// Stops the helpers of a race.
static STOP: AtomicBool = AtomicBool::new(false);
static GATE: Gate = Gate::new();
/// Counters a race keeps.
static COUNT: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

fn expect(fid: usize, r: SbiRet, ok: &[isize]) -> bool {
    let good = ok.contains(&r.error) && (r.error == 0 || r.value == 0);
    if !good && BAD.fetch_add(1, Ordering::Relaxed) == 0 {
        FIRST[0].store(fid as u64, Ordering::Relaxed);
        FIRST[1].store(r.error as u64, Ordering::Relaxed);
        FIRST[2].store(r.value as u64, Ordering::Relaxed);
        FIRST[3].store(team::index() as u64, Ordering::Relaxed);
    }
    good
}

fn remember(c: u64) {
    let i = NCIDS.fetch_add(1, Ordering::AcqRel);
    if i < CIDS.len() {
        CIDS[i].store(c, Ordering::Release);
    }
}

fn reset() {
    BAD.store(0, Ordering::Relaxed);
    NCIDS.store(0, Ordering::Relaxed);
    STOP.store(false, Ordering::Relaxed);
    GATE.reset();
    for c in &COUNT {
        c.store(0, Ordering::Relaxed);
    }
}

/// Reports the race's unexpected returns as one check.
fn verdict(name: &str) {
    let bad = BAD.load(Ordering::Relaxed);
    let l: sys::Line<64> = sys::fmt(format_args!("race_{name}_returns_valid"));
    crate::check(
        l.as_str(),
        bad == 0,
        format_args!(
            "{bad} unexpected returns, the first {} -> {} ({}) a1 {:#x} on vCPU {}",
            sys::call_name(sys::EID as u64, FIRST[0].load(Ordering::Relaxed)),
            sys::err_name(FIRST[1].load(Ordering::Relaxed) as isize),
            FIRST[1].load(Ordering::Relaxed) as i64,
            FIRST[2].load(Ordering::Relaxed),
            FIRST[3].load(Ordering::Relaxed)
        ),
    );
}

/// Runs every race.
pub fn run() {
    fork_vs_fork();
    fork_in_child_vs_stop();
    spawn_vs_kill();
    reboot_vs_srst();
    map_vs_start();
    stop_resume_storm();
    exec_vs_kill();
    ipc_console_storm();
    ipc_wait_storm();
    virtio_storm();
}

// ----- FORK vs FORK -----

fn fork_vs_fork() {
    reset();
    if crate::avoid_known() {
        println_skip("race_fork_vs_fork", "avoid=known (the FORK-vs-FORK hang)");
        return;
    }
    crate::phase("race_fork_vs_fork", 30_000, |idx, n| {
        for round in 0..12 {
            if !GATE.wait_tight(round, n, 10_000) {
                break;
            }
            let fl = [
                flags::FORK_NO_SNAPSHOT,
                flags::FORK_UNTRUSTED | flags::FORK_NO_SNAPSHOT,
                4,
                0,
                1 << 63,
            ][(round + idx) % 5];
            let r = sys::fork(fl);
            let ok: &[isize] = if fl & !flags::FORK_ALL != 0 {
                &[INVALID_PARAM]
            } else {
                &[SUCCESS, DENIED, FAILED]
            };
            expect(ext::FID_FORK, r, ok);
            if r.error == 0 {
                remember(r.value as u64);
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("fork_vs_fork");
    // The clones exit by themselves; any still there must be killable.
    let made = NCIDS.load(Ordering::Relaxed).min(CIDS.len());
    let mut bad = 0;
    for c in &CIDS[..made] {
        let r = DSX.exit(c.load(Ordering::Relaxed), 0);
        bad += usize::from(!matches!(r.error, SUCCESS | INVALID_PARAM));
    }
    crate::check(
        "race_fork_vs_fork_clones_gone",
        bad == 0 && kids::others_alive() == 0,
        format_args!("{bad} EXITs failed, {} children left", kids::others_alive()),
    );
    note(format_args!("fork_vs_fork: {made} clones"));
    kids::forget_events();
}

fn println_skip(name: &str, why: &str) {
    diosix_guest_rt::println!("skip {name}: {why}");
}

// ----- FORK in a two-vCPU child vs its parent's STOP -----

fn fork_in_child_vs_stop() {
    reset();
    let fl = flags::FORK_NO_SNAPSHOT;
    if crate::avoid_known() {
        println_skip(
            "race_fork_in_child_vs_stop",
            "avoid=known (two vCPUs of the child FORK at once)",
        );
        return;
    }
    let pages = 64u64;
    let r = kids::spawn_prog(Program::Fork2(fl), pages, 2, 0, |a| {
        // Room for two clones (RAM and tables each) and their vCPUs.
        a.quota_ram_pages = (pages + 16) * 4;
        a.quota_vcpus = 6;
        a.quota_max_depth = 1;
        a.quota_max_descendants = 2;
    });
    if !crate::check_code("race_fork_in_child_spawned", r, &[SUCCESS]) {
        return;
    }
    let c = r.value as u64;
    TARGET.store(c, Ordering::Relaxed);
    sys::sleep_ms(20);
    crate::phase("race_fork_in_child_vs_stop", 30_000, |idx, _n| {
        let c = TARGET.load(Ordering::Relaxed);
        for k in 0..40 {
            match (idx + k) % 4 {
                0 => {
                    expect(ext::FID_STOP, DSX.stop(c), &[SUCCESS, ALREADY_STOPPED]);
                }
                1 => {
                    expect(ext::FID_RESUME, DSX.resume(c), &[SUCCESS, ALREADY_STARTED]);
                }
                2 => {
                    expect(
                        ext::FID_GET_CHILD_INFO,
                        DSX.child_info(c).map_or_else(
                            |e| SbiRet { error: e, value: 0 },
                            |_| SbiRet { error: 0, value: 0 },
                        ),
                        &[SUCCESS],
                    );
                }
                _ => sys::sleep_ms(1),
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("fork_in_child_vs_stop");
    let r = DSX.resume(c);
    crate::check_code("race_fork_in_child_resumes", r, &[SUCCESS, ALREADY_STARTED]);
    let info = DSX.child_info(c);
    note(format_args!(
        "fork_in_child: the child holds {:?} descendants",
        info.map(|i| i.descendants_used)
    ));
    crate::check_code("race_fork_in_child_killed", DSX.exit(c, 0), &[SUCCESS]);
    crate::check(
        "race_fork_in_child_terminated_event",
        kids::wait_event(event::CHILD_TERMINATED, c, 5_000).is_some(),
        format_args!("no CHILD_TERMINATED for CID {c}"),
    );
    kids::forget_events();
}

// ----- SPAWN vs KILL of the same CID -----

fn spawn_vs_kill() {
    reset();
    crate::phase("race_spawn_vs_kill", 30_000, |idx, n| {
        let deadline = sys::now() + sys::ms(3_000);
        if idx == 0 || n == 1 {
            // The spawner: a new child, published, then replaced in place.
            for k in 0..60 {
                if sys::now() > deadline {
                    break;
                }
                let prog = if k % 2 == 0 {
                    Program::Idle
                } else {
                    Program::Spin
                };
                let r = kids::spawn_prog(prog, 32, 1 + (k % 2) as u32, 0, |_| {});
                if !expect(ext::FID_SPAWN, r, &[SUCCESS, DENIED]) || r.error != 0 {
                    continue;
                }
                let c = r.value as u64;
                remember(c);
                TARGET.store(c, Ordering::Release);
                for _ in 0..3 {
                    let r = kids::spawn_prog(Program::Idle, 32, 1, 0, |a| a.cid = c);
                    // Killed meanwhile: gone (INVALID_PARAM) or its build cancelled (FAILED).
                    expect(ext::FID_SPAWN, r, &[SUCCESS, INVALID_PARAM, DENIED, FAILED]);
                    if r.error == 0 && r.value as u64 != c {
                        expect(
                            ext::FID_SPAWN,
                            SbiRet {
                                error: FAILED,
                                value: 0,
                            },
                            &[],
                        );
                    }
                }
            }
            STOP.store(true, Ordering::Release);
        } else {
            // The killers.
            while !STOP.load(Ordering::Acquire) && sys::now() < deadline {
                let c = TARGET.load(Ordering::Acquire);
                if c == 0 {
                    DSX.yield_now();
                    continue;
                }
                let (fid, ok): (usize, &[isize]) = match idx % 3 {
                    1 => (ext::FID_EXIT, &[SUCCESS, INVALID_PARAM]),
                    // A reboot undone by the kill or replacement racing it: FAILED.
                    2 => (ext::FID_REBOOT, &[SUCCESS, INVALID_PARAM, FAILED]),
                    _ => (ext::FID_STOP, &[SUCCESS, INVALID_PARAM, ALREADY_STOPPED]),
                };
                let r = if fid == ext::FID_EXIT {
                    DSX.exit(c, 7)
                } else {
                    DSX.call2(fid, c as usize, 0)
                };
                expect(fid, r, ok);
                if r.error == 0 {
                    COUNT[0].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("spawn_vs_kill");
    note(format_args!(
        "spawn_vs_kill: {} children, {} successful kills/reboots/stops",
        NCIDS.load(Ordering::Relaxed),
        COUNT[0].load(Ordering::Relaxed)
    ));
    kids::kill_all(0);
    crate::check(
        "race_spawn_vs_kill_all_gone",
        kids::others_alive() == 0,
        format_args!("{} children left", kids::others_alive()),
    );
    kids::forget_events();
}

// ----- REBOOT vs the child's own SRST reboot -----

fn reboot_vs_srst() {
    reset();
    let r = kids::spawn_prog(Program::SrstReboot, 32, 1, 0, |_| {});
    if !crate::check_code("race_reboot_vs_srst_spawned", r, &[SUCCESS]) {
        return;
    }
    let c = r.value as u64;
    TARGET.store(c, Ordering::Relaxed);
    crate::phase("race_reboot_vs_srst", 30_000, |idx, _n| {
        let c = TARGET.load(Ordering::Relaxed);
        for k in 0..60 {
            if (idx + k) % 3 == 2 {
                let r = DSX.child_info(c).map_or_else(
                    |e| SbiRet { error: e, value: 0 },
                    |_| SbiRet { error: 0, value: 0 },
                );
                expect(ext::FID_GET_CHILD_INFO, r, &[SUCCESS]);
            } else {
                // A spawned child can always be rebooted (NOT_SUPPORTED is only for a
                // clone without a snapshot); a reboot undone by another racing it
                // may come back FAILED.
                let r = DSX.reboot(c);
                expect(ext::FID_REBOOT, r, &[SUCCESS, FAILED]);
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("reboot_vs_srst");
    // It must still be there (a reboot never ends a child), and not have died.
    let mut died = false;
    while let Ok(Some(e)) = DSX.poll_event() {
        died |= e.kind == event::CHILD_TERMINATED && e.cid == c;
    }
    crate::check(
        "race_reboot_vs_srst_child_survives",
        !died && DSX.child_info(c).is_ok(),
        format_args!("the child ended (TERMINATED event: {died})"),
    );
    crate::check_code("race_reboot_vs_srst_killed", DSX.exit(c, 0), &[SUCCESS]);
    kids::forget_events();
}

// ----- MAP_CHILD_MEM vs START, with a copy-on-write canary -----

/// A page of this VM mapped into the children, written by the leader afterwards.
#[repr(C, align(4096))]
struct Canary([AtomicU64; 512]);
static CANARY: Canary = Canary([const { AtomicU64::new(0) }; 512]);
/// Where the children see it.
const CANARY_GPA: usize = 0x8001_0000;

fn map_vs_start() {
    reset();
    crate::phase("race_map_vs_start", 60_000, |idx, n| {
        let canary = CANARY.0.as_ptr() as usize;
        for round in 0..MAP_ROUNDS {
            if idx == 0 {
                // A paused child whose program watches the page the others map.
                CANARY.0[0].store(round as u64, Ordering::Relaxed);
                let r = kids::spawn_prog(
                    Program::Watch(CANARY_GPA as u64, 2_000_000),
                    32,
                    1,
                    flags::SPAWN_PAUSED,
                    |_| {},
                );
                expect(ext::FID_SPAWN, r, &[SUCCESS]);
                let c = if r.error == 0 { r.value as u64 } else { 0 };
                TARGET.store(c, Ordering::Release);
                if c != 0 {
                    remember(c);
                }
            }
            if !GATE.wait(2 * round, n, 10_000) {
                return;
            }
            let c = TARGET.load(Ordering::Acquire);
            if c != 0 {
                match idx % 3 {
                    0 => {
                        // Too late: started (ALREADY_STARTED), or even done (INVALID_PARAM).
                        let r = DSX.map_child_mem(c, CANARY_GPA, canary, 4096, flags::MAP_READ);
                        expect(
                            ext::FID_MAP_CHILD_MEM,
                            r,
                            &[SUCCESS, ALREADY_STARTED, INVALID_PARAM],
                        );
                        // The caller's writes after the copy must never reach the child.
                        for k in 0..20_000u64 {
                            CANARY.0[0].store(0x1_0000 + k, Ordering::Relaxed);
                        }
                        if n == 1 {
                            let r = DSX.start(c, img::CODE_GPA, img::CHILD_DTB_GPA);
                            expect(ext::FID_START, r, &[SUCCESS]);
                        }
                    }
                    1 => {
                        let r = DSX.start(c, img::CODE_GPA, img::CHILD_DTB_GPA);
                        expect(ext::FID_START, r, &[SUCCESS, ALREADY_STARTED]);
                        if r.error == 0 {
                            COUNT[3].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        let data = sys::data().addr();
                        let r =
                            DSX.map_child_mem(c, CANARY_GPA + 4096, data, 4096, flags::MAP_READ);
                        expect(
                            ext::FID_MAP_CHILD_MEM,
                            r,
                            &[SUCCESS, ALREADY_STARTED, INVALID_PARAM],
                        );
                    }
                }
            }
            if !GATE.wait(2 * round + 1, n, 10_000) {
                return;
            }
            if idx == 0 && c != 0 {
                match kids::wait_event(event::CHILD_TERMINATED, c, 10_000).map(|e| e.exit_code) {
                    Some(img::WATCH_STABLE) => COUNT[1].fetch_add(1, Ordering::Relaxed),
                    Some(img::WATCH_CHANGED) => COUNT[2].fetch_add(1, Ordering::Relaxed),
                    other => {
                        note(format_args!("map_vs_start: CID {c} ended with {other:?}"));
                        DSX.exit(c, 0);
                        0
                    }
                };
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("map_vs_start");
    let (stable, changed) = (
        COUNT[1].load(Ordering::Relaxed),
        COUNT[2].load(Ordering::Relaxed),
    );
    let made = NCIDS.load(Ordering::Relaxed);
    crate::check(
        "race_map_vs_start_no_write_leaks",
        changed == 0 && stable == made && made == MAP_ROUNDS,
        format_args!(
            "{changed} of {made} children saw the parent's page change after MAP_CHILD_MEM, {stable} stable"
        ),
    );
    crate::check(
        "race_map_vs_start_started_once",
        COUNT[3].load(Ordering::Relaxed) == made || team::size() == 1,
        format_args!(
            "{} STARTs succeeded for {made} children",
            COUNT[3].load(Ordering::Relaxed)
        ),
    );
    kids::forget_events();
}

/// Rounds of MAP_CHILD_MEM vs START.
const MAP_ROUNDS: usize = 10;

// ----- STOP/RESUME storm -----

fn stop_resume_storm() {
    reset();
    let mut made = 0;
    for prog in [Program::Spin, Program::Idle, Program::Chatty] {
        let r = kids::spawn_prog(prog, 32, 2, 0, |_| {});
        if r.error == 0 {
            remember(r.value as u64);
            made += 1;
        }
    }
    crate::check(
        "race_storm_children_spawned",
        made == 3,
        format_args!("{made} of 3"),
    );
    crate::phase("race_stop_resume_storm", 30_000, |idx, _n| {
        let made = NCIDS.load(Ordering::Relaxed).min(3);
        for k in 0..300 {
            let c = CIDS[(idx + k) % made.max(1)].load(Ordering::Relaxed);
            let (fid, ok): (usize, &[isize]) = match (idx * 7 + k) % 5 {
                0 | 1 => (ext::FID_STOP, &[SUCCESS, ALREADY_STOPPED]),
                2 | 3 => (ext::FID_RESUME, &[SUCCESS, ALREADY_STARTED]),
                _ => (ext::FID_YIELD, &[SUCCESS]),
            };
            let r = if fid == ext::FID_YIELD {
                DSX.yield_now()
            } else {
                DSX.call2(fid, c as usize, 0)
            };
            expect(fid, r, ok);
        }
    });
    if team::broken() {
        return;
    }
    verdict("stop_resume_storm");
    let mut running = 0;
    for c in &CIDS[..made] {
        let c = c.load(Ordering::Relaxed);
        let r = DSX.resume(c);
        expect(ext::FID_RESUME, r, &[SUCCESS, ALREADY_STARTED]);
        running += usize::from(
            DSX.child_info(c)
                .is_ok_and(|i| i.state == diosix_abi::state::RUNNING),
        );
    }
    crate::check(
        "race_storm_children_running_after",
        running == made,
        format_args!("{running} of {made} running after the last RESUME"),
    );
    kids::kill_all(0);
    kids::forget_events();
}

// ----- EXEC by a two-vCPU child vs its parent's REBOOT, STOP, RESUME and kill -----

/// Rounds of [`exec_vs_kill`].
const EXEC_ROUNDS: usize = 8;

/// Each round: a child whose two vCPUs EXEC themselves for ever (each incarnation
/// again), while every vCPU of this VM REBOOTs, STOPs, RESUMEs and queries it, and the
/// leader kills it after a delay that grows with the round (from during its first EXEC
/// to deep into the chain). Every return must be defined, every child must end with
/// the kill's code, and nothing may stay behind (the suite checks heap and frames).
fn exec_vs_kill() {
    reset();
    crate::phase("race_exec_vs_kill", 60_000, |idx, n| {
        for round in 0..EXEC_ROUNDS {
            if idx == 0 {
                let pages = 32;
                let prog = Program::Exec2 {
                    ram_pages: pages,
                    priority: kids::prio(),
                };
                let r = kids::spawn_prog(prog, pages, 2, 0, |a| {
                    // Room for an EXEC's new charge beside the old one's.
                    a.quota_ram_pages = 4 * (pages + 16);
                    a.quota_vcpus = 2;
                });
                expect(ext::FID_SPAWN, r, &[SUCCESS]);
                let c = if r.error == 0 { r.value as u64 } else { 0 };
                TARGET.store(c, Ordering::Release);
                if c != 0 {
                    remember(c);
                }
            }
            if !GATE.wait(2 * round, n, 10_000) {
                return;
            }
            let c = TARGET.load(Ordering::Acquire);
            if c != 0 {
                if idx == 0 || n == 1 {
                    sys::sleep_ms(round as u64);
                    let r = DSX.exit(c, 0xE4EC);
                    expect(ext::FID_EXIT, r, &[SUCCESS]);
                } else {
                    for k in 0..30 {
                        let (fid, ok): (usize, &[isize]) = match (idx + k) % 4 {
                            // Killed meanwhile: INVALID_PARAM; undone by a racing
                            // EXEC or kill: FAILED.
                            0 => (ext::FID_REBOOT, &[SUCCESS, FAILED, INVALID_PARAM]),
                            1 => (ext::FID_STOP, &[SUCCESS, ALREADY_STOPPED, INVALID_PARAM]),
                            2 => (ext::FID_RESUME, &[SUCCESS, ALREADY_STARTED, INVALID_PARAM]),
                            _ => (ext::FID_GET_CHILD_INFO, &[SUCCESS, INVALID_PARAM]),
                        };
                        let r = if fid == ext::FID_GET_CHILD_INFO {
                            DSX.child_info(c).map_or_else(
                                |e| SbiRet { error: e, value: 0 },
                                |_| SbiRet { error: 0, value: 0 },
                            )
                        } else {
                            DSX.call2(fid, c as usize, 0)
                        };
                        expect(fid, r, ok);
                        if fid == ext::FID_REBOOT && r.error == 0 {
                            COUNT[1].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            if !GATE.wait(2 * round + 1, n, 10_000) {
                return;
            }
            if idx == 0 && c != 0 {
                // The parent sees its EXECs as CHILD_REBOOTED, then the kill.
                let end = sys::now() + sys::ms(10_000);
                let mut code = None;
                while code.is_none() && sys::now() < end {
                    match DSX.poll_event() {
                        Ok(Some(e)) if e.cid == c && e.kind == event::CHILD_REBOOTED => {
                            COUNT[2].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(e)) if e.cid == c && e.kind == event::CHILD_TERMINATED => {
                            code = Some(e.exit_code);
                        }
                        Ok(_) => {
                            DSX.yield_now();
                        }
                        Err(_) => break,
                    }
                }
                if code == Some(0xE4EC) {
                    COUNT[0].fetch_add(1, Ordering::Relaxed);
                } else {
                    note(format_args!("exec_vs_kill: CID {c} ended with {code:?}"));
                }
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("exec_vs_kill");
    let made = NCIDS.load(Ordering::Relaxed);
    let killed = COUNT[0].load(Ordering::Relaxed);
    note(format_args!(
        "exec_vs_kill: {made} children, {} EXECs seen, {} REBOOTs accepted",
        COUNT[2].load(Ordering::Relaxed),
        COUNT[1].load(Ordering::Relaxed)
    ));
    crate::check(
        "race_exec_vs_kill_each_child_killed",
        made == EXEC_ROUNDS && killed == made,
        format_args!("{killed} of {made} children ended with the kill's code"),
    );
    crate::check(
        "race_exec_vs_kill_children_execed",
        COUNT[2].load(Ordering::Relaxed) > 0,
        format_args!("no CHILD_REBOOTED event: no EXEC completed"),
    );
    kids::kill_all(0);
    kids::forget_events();
}

// ----- IPC and consoles from every vCPU at once -----

fn ipc_console_storm() {
    reset();
    let echo = match kids::spawn_role(kids::ROLE_ECHO) {
        Ok(c) => c,
        Err(e) => {
            crate::report_fail(format_args!("race_ipc_echo_spawned: {e}"));
            return;
        }
    };
    TARGET.store(echo, Ordering::Relaxed);
    sys::sleep_ms(20);
    crate::phase("race_ipc_console_storm", 30_000, |idx, _n| {
        let c = TARGET.load(Ordering::Relaxed);
        for k in 0..400usize {
            match (idx + k) % 6 {
                0 | 1 => {
                    let mut msg = [0u8; 24];
                    msg[..8].copy_from_slice(b"HOSTILE!");
                    msg[8..16].copy_from_slice(&(idx as u64).to_le_bytes());
                    msg[16..].copy_from_slice(&(k as u64).to_le_bytes());
                    let r = DSX.ipc_send(c, &msg);
                    expect(ext::FID_IPC_SEND, r, &[SUCCESS, FAILED]);
                }
                2 => match DSX.ipc_recv(c, diosix_abi::flags::IPC_RECV_EXACT, 4096) {
                    Ok(Some((from, len))) => {
                        let mut m = [0u8; 24];
                        sys::data().read(0, &mut m);
                        if from != c || len != 24 || &m[..8] != b"HOSTILE!" {
                            expect(
                                ext::FID_IPC_RECV,
                                SbiRet {
                                    error: FAILED,
                                    value: 0,
                                },
                                &[],
                            );
                        } else {
                            COUNT[2].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        expect(ext::FID_IPC_RECV, SbiRet { error: e, value: 0 }, &[SUCCESS]);
                    }
                },
                3 => {
                    let r = DSX.console_write(c, b"x\n");
                    expect(ext::FID_CONSOLE_WRITE, r, &[SUCCESS]);
                }
                4 => {
                    let r = DSX.console_read(c, 4096);
                    expect(ext::FID_CONSOLE_READ, r, &[SUCCESS]);
                }
                _ => {
                    // The physical console too: a space, and a read of nothing.
                    let r = sys::call(
                        diosix_guest_rt::sbi::eid::DBCN,
                        2,
                        [b' ' as usize, 0, 0, 0, 0, 0],
                    );
                    expect(ext::FID_CONSOLE_WRITE, r, &[SUCCESS]);
                    let d = sys::data();
                    let r = sys::call(
                        diosix_guest_rt::sbi::eid::DBCN,
                        1,
                        [16, d.addr(), 0, 0, 0, 0],
                    );
                    expect(ext::FID_CONSOLE_READ, SbiRet { value: 0, ..r }, &[SUCCESS]);
                }
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("ipc_console_storm");
    // The echo child lived through it: it still answers (draining what it echoed).
    let echo = TARGET.load(Ordering::Relaxed);
    let mut answered = false;
    let end = sys::now() + sys::ms(5_000);
    'wait: while sys::now() < end {
        let r = DSX.ipc_send(echo, b"HOSTILE?after-the-storm!");
        expect(ext::FID_IPC_SEND, r, &[SUCCESS, FAILED]);
        for _ in 0..50 {
            match DSX.ipc_recv(echo, diosix_abi::flags::IPC_RECV_EXACT, 4096) {
                Ok(Some((_, 24))) => {
                    let mut m = [0u8; 8];
                    sys::data().read(0, &mut m);
                    if &m == b"HOSTILE?" {
                        answered = true;
                        break 'wait;
                    }
                }
                Ok(Some(_)) => {}
                _ => sys::sleep_ms(2),
            }
        }
    }
    note(format_args!(
        "ipc_console_storm: {} echoes received during the storm",
        COUNT[2].load(Ordering::Relaxed)
    ));
    crate::check(
        "race_ipc_echo_answers_after",
        answered,
        format_args!("no echo within 5 s after the storm"),
    );
    crate::check_code("race_ipc_echo_killed", DSX.exit(echo, 0), &[SUCCESS]);
    kids::forget_events();
    let _ = MAXV;
}

// ----- sleeping receives vs deliveries, interrupts, reboots and kills -----

/// Rounds per vCPU in [`ipc_wait_storm`].
const WAIT_ROUNDS: usize = 1000;

/// A receive from `c` that sleeps until a message comes (`IPC_RECV_WAIT`) or this
/// vCPU's timer fires `ms` from now.
fn recv_waiting(c: u64, ms: u64) -> Result<Option<(u64, usize)>, isize> {
    let wait = diosix_abi::flags::IPC_RECV_EXACT | diosix_abi::flags::IPC_RECV_WAIT;
    sys::with_wake_timer(ms, || DSX.ipc_recv(c, wait, 4096))
}

/// Every vCPU sends to a two-vCPU child whose vCPUs sleep in receives that their
/// timers end at random ([`kids::ROLE_WAITER`]), sends it messages too long for its
/// buffer, and sleeps in receives of its answers; meanwhile vCPU 0 reboots the child
/// or kills it and spawns another, so deliveries race interrupts, reboots and deaths
/// (a receive waiting for a dead child's message must end with INVALID_PARAM).
fn ipc_wait_storm() {
    reset();
    let waiter = match kids::spawn_role_vcpus(kids::ROLE_WAITER, 2) {
        Ok(c) => c,
        Err(e) => {
            crate::report_fail(format_args!("race_ipc_waiter_spawned: {e}"));
            return;
        }
    };
    remember(waiter);
    TARGET.store(waiter, Ordering::Relaxed);
    sys::sleep_ms(20);
    crate::phase("race_ipc_wait_storm", 30_000, |idx, _n| {
        for k in 0..WAIT_ROUNDS {
            let c = TARGET.load(Ordering::Relaxed);
            match (idx + k) % 6 {
                0 | 1 => {
                    let mut msg = [0u8; 24];
                    msg[..8].copy_from_slice(b"WAITING!");
                    msg[8..16].copy_from_slice(&(idx as u64).to_le_bytes());
                    msg[16..].copy_from_slice(&(k as u64).to_le_bytes());
                    let r = DSX.ipc_send(c, &msg);
                    // FAILED: the lane is full; INVALID_PARAM: the child was replaced.
                    expect(ext::FID_IPC_SEND, r, &[SUCCESS, FAILED, INVALID_PARAM]);
                }
                2 => {
                    let r = DSX.ipc_send(c, &[b'L'; 100]);
                    expect(ext::FID_IPC_SEND, r, &[SUCCESS, FAILED, INVALID_PARAM]);
                }
                3 if k % 2 == 0 => {
                    // A request and a sleep for its answer in one call; the waiter
                    // child answers (an echo) from its own sleeping receive.
                    let r = sys::with_wake_timer(2, || DSX.ipc_call(c, b"WAITING!call....", 4096));
                    match r {
                        Ok(Some(_)) => {
                            COUNT[0].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => {
                            COUNT[1].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let r = SbiRet { error: e, value: 0 };
                            // FAILED: the child's lane is full; INVALID_PARAM: the
                            // child was replaced, or died while this vCPU slept.
                            expect(ext::FID_IPC_CALL, r, &[FAILED, INVALID_PARAM]);
                        }
                    }
                }
                3 | 4 => match recv_waiting(c, 2) {
                    Ok(Some((from, len))) => {
                        if from == c && (len == 24 || len == 16 || len == 4) {
                            COUNT[0].fetch_add(1, Ordering::Relaxed);
                        } else {
                            let bad = SbiRet {
                                error: FAILED,
                                value: 0,
                            };
                            expect(ext::FID_IPC_RECV, bad, &[]);
                        }
                    }
                    Ok(None) => {
                        COUNT[1].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if e == INVALID_PARAM {
                            COUNT[2].fetch_add(1, Ordering::Relaxed);
                        }
                        let r = SbiRet { error: e, value: 0 };
                        expect(ext::FID_IPC_RECV, r, &[INVALID_PARAM]);
                    }
                },
                _ if idx == 0 && k % 60 == 5 => {
                    if k % 120 == 5 {
                        let r = DSX.reboot(c);
                        expect(ext::FID_REBOOT, r, &[SUCCESS, FAILED]);
                    } else {
                        let r = DSX.exit(c, 0);
                        expect(ext::FID_EXIT, r, &[SUCCESS]);
                        match kids::spawn_role_vcpus(kids::ROLE_WAITER, 2) {
                            Ok(n) => {
                                remember(n);
                                TARGET.store(n, Ordering::Relaxed);
                            }
                            Err(_) => {
                                let bad = SbiRet {
                                    error: FAILED,
                                    value: 0,
                                };
                                expect(ext::FID_SPAWN, bad, &[]);
                            }
                        }
                    }
                }
                _ => {
                    let r = DSX.ipc_recv(c, diosix_abi::flags::IPC_RECV_EXACT, 4096);
                    let r = match r {
                        Ok(_) => SbiRet { error: 0, value: 0 },
                        Err(e) => SbiRet { error: e, value: 0 },
                    };
                    expect(ext::FID_IPC_RECV, r, &[SUCCESS, INVALID_PARAM]);
                }
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("ipc_wait_storm");
    note(format_args!(
        "ipc_wait_storm: {} answers, {} waits ended by the timer, {} by a child's death",
        COUNT[0].load(Ordering::Relaxed),
        COUNT[1].load(Ordering::Relaxed),
        COUNT[2].load(Ordering::Relaxed)
    ));
    // The hypervisor lived through it: a new waiter answers, into a sleeping receive
    // (the last one may have been rebooted, back to the paused program it was
    // spawned as).
    let _ = DSX.exit(TARGET.load(Ordering::Relaxed), 0);
    let c = match kids::spawn_role_vcpus(kids::ROLE_WAITER, 2) {
        Ok(c) => c,
        Err(e) => {
            crate::report_fail(format_args!("race_ipc_waiter_respawned: {e}"));
            return;
        }
    };
    TARGET.store(c, Ordering::Relaxed);
    let mut answered = false;
    let end = sys::now() + sys::ms(5_000);
    while !answered && sys::now() < end {
        let r = DSX.ipc_send(c, b"WAITING?after-the-storm!");
        expect(ext::FID_IPC_SEND, r, &[SUCCESS, FAILED]);
        for _ in 0..20 {
            if let Ok(Some((_, 24))) = recv_waiting(c, 5) {
                let mut m = [0u8; 8];
                sys::data().read(0, &mut m);
                if &m == b"WAITING?" {
                    answered = true;
                    break;
                }
            }
        }
    }
    crate::check(
        "race_ipc_waiter_answers_after",
        answered,
        format_args!("no answer within 5 s after the storm"),
    );
    // A receive sleeping for a child's message (its timer 2 s away) ends, with
    // INVALID_PARAM, when another vCPU kills that child.
    COUNT[3].store(0, Ordering::Relaxed);
    crate::phase("race_ipc_wait_vs_kill", 10_000, |idx, _n| match idx {
        0 => {
            sys::sleep_ms(10);
            let r = DSX.exit(TARGET.load(Ordering::Relaxed), 0);
            expect(ext::FID_EXIT, r, &[SUCCESS]);
        }
        1 => {
            let t0 = sys::now();
            let r = recv_waiting(TARGET.load(Ordering::Relaxed), 2_000);
            if r == Err(INVALID_PARAM) && sys::now() - t0 < sys::ms(1_000) {
                COUNT[3].store(1, Ordering::Relaxed);
            }
        }
        _ => {}
    });
    crate::check(
        "race_ipc_wait_ends_with_its_sender",
        COUNT[3].load(Ordering::Relaxed) == 1,
        format_args!("the receive did not end with INVALID_PARAM within 1 s of the kill"),
    );
    kids::forget_events();
}

// ----- a child storming its virtio device vs its parent's device calls -----

/// Rounds of device calls per vCPU in [`virtio_storm`].
const VIRTIO_ROUNDS: usize = 400;

/// A two-vCPU child drives its virtio device 0 as a hostile driver, for ever
/// ([`Program::VirtioStorm`]: doorbells, resets, FAILED, acknowledgements), while
/// every vCPU of this VM takes both devices' state, raises every interrupt kind and
/// (the leader) REBOOTs the child. Every return must be SUCCESS, the device must count
/// the resets, and it must go with the child.
fn virtio_storm() {
    use diosix_abi::{DeviceSpec, DeviceState, QueueState};
    reset();
    let spec = diosix_guest_rt::diosix::device_spec(4, 16);
    let s = sys::st();
    s.write(1024, &spec.to_le_bytes());
    s.write(1024 + DeviceSpec::SIZE, &spec.to_le_bytes());
    let r = kids::spawn_prog(Program::VirtioStorm, 32, 2, 0, |a| {
        a.devices_gpa = (s.addr() + 1024) as u64;
        a.device_count = 2;
    });
    if !crate::check(
        "race_virtio_child_spawned",
        r.error == SUCCESS,
        format_args!("SPAWN: {}", r.error),
    ) {
        return;
    }
    let c = r.value as u64;
    TARGET.store(c, Ordering::Release);
    crate::phase("race_virtio_storm", 30_000, |idx, _n| {
        let answer = DeviceState::SIZE + QueueState::SIZE;
        let c = TARGET.load(Ordering::Acquire) as usize;
        let out = sys::data().addr();
        for k in 0..VIRTIO_ROUNDS {
            let device = k % 2;
            if idx == 0 && k % 100 == 50 {
                let r = DSX.reboot(c as u64);
                expect(ext::FID_REBOOT, r, &[SUCCESS]);
                COUNT[0].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match (idx + k) % 6 {
                0..=2 => {
                    let r = DSX.call(ext::FID_DEVICE_STATE, [c, device, out, 512, 0, 0]);
                    if expect(ext::FID_DEVICE_STATE, r, &[SUCCESS]) && r.value != answer {
                        expect(
                            ext::FID_DEVICE_STATE,
                            SbiRet {
                                error: FAILED,
                                value: 0,
                            },
                            &[],
                        );
                    }
                }
                3 | 4 => {
                    let what = 1 + (k % 7);
                    let r = DSX.call(ext::FID_DEVICE_RAISE, [c, device, what, 0, 0, 0]);
                    expect(ext::FID_DEVICE_RAISE, r, &[SUCCESS]);
                }
                _ => {
                    DSX.yield_now();
                }
            }
        }
    });
    if team::broken() {
        return;
    }
    verdict("virtio_storm");
    let d = sys::data();
    let r = DSX.call(ext::FID_DEVICE_STATE, [c as usize, 1, d.addr(), 512, 0, 0]);
    let mut raw = [0u8; DeviceState::SIZE];
    d.read(0, &mut raw);
    let resets = DeviceState::from_le_bytes(&raw).map_or(0, |st| st.resets);
    let reboots = COUNT[0].load(Ordering::Relaxed) as u32;
    // Device 0 also counts the storm's own resets (status 0, once per loop).
    let r0 = DSX.call(ext::FID_DEVICE_STATE, [c as usize, 0, d.addr(), 512, 0, 0]);
    d.read(0, &mut raw);
    let driven = DeviceState::from_le_bytes(&raw).map_or(0, |st| st.resets);
    crate::check(
        "race_virtio_child_drove_its_device",
        r0.error == SUCCESS && driven > resets,
        format_args!("device 0: {driven} resets, device 1: {resets}"),
    );
    crate::check(
        "race_virtio_resets_counted",
        // A REBOOT that finds the previous one still building is already done.
        r.error == SUCCESS && resets >= 1 && resets <= reboots,
        format_args!("{} resets of the idle device for {reboots} REBOOTs", resets),
    );
    let r = DSX.exit(c, 0);
    crate::check(
        "race_virtio_child_killed",
        r.error == SUCCESS,
        format_args!("EXIT: {}", r.error),
    );
    let r = DSX.call(ext::FID_DEVICE_STATE, [c as usize, 0, d.addr(), 512, 0, 0]);
    crate::check(
        "race_virtio_device_gone",
        r.error == INVALID_PARAM,
        format_args!("DEVICE_STATE after the kill: {}", r.error),
    );
    kids::forget_events();
}
