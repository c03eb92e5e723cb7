//! Hostile-guest suite: a Root VM whose every vCPU attacks the hypervisor through the
//! Diosix SBI extension (EID `0x0A000005`) and the standard SBI, the way a malicious
//! guest would.
//!
//! The run passes only if the hypervisor never panics or hangs, every VM not targeted
//! keeps making progress, and everything the attack took comes back. Phases, each
//! followed by a progress check (`progress_<phase>`):
//!
//! * `edges`: every vCPU at once, calls with sizes and addresses exactly at and past
//!   every cap and edge, each checked against the documented error;
//! * `fuzz`: every vCPU, thousands of calls of every FID (and of the standard SBI
//!   extensions) with seeded random arguments: sizes at and past every cap, addresses
//!   at every edge, malformed and truncated ELF, Linux `Image` and `DSXPAYLD` images,
//!   random CIDs. Each return must be a defined SBI code (and `a1 = 0` on a refusal);
//! * `races`: FORK vs FORK, FORK in a two-vCPU child vs its parent's STOP, SPAWN vs
//!   KILL of the same CID, REBOOT vs the child's own SRST reboot, MAP_CHILD_MEM vs
//!   START (with a copy-on-write canary), STOP/RESUME storms, EXEC by a two-vCPU
//!   child vs its parent's REBOOT, STOP, RESUME and kill, IPC and consoles from every
//!   vCPU at once;
//! * `devices` (run before `fuzz`, which drops this VM's trust): the virtual PLIC's
//!   whole window hit by every vCPU at once with random loads, stores and atomics of
//!   every width (unsupported ones must come back as access faults), while the RTC's
//!   interrupt storms and stays claimed, never completed;
//! * `probes`: regression probes for five confirmed defects (issue 9): a payload with
//!   a multi-MiB command line, concurrent FORKs, an ELF with 65,535 program headers,
//!   REBOOT / EXIT-then-SPAWN of a child holding most of the RAM, and a zero-length
//!   DBCN read at the top of the address space. The ones that can hang or crash the
//!   host run last, each announced first (`probe <name>: ...`).
//!
//! On a host without the H extension (GET_HV_INFO says `PMP_FALLBACK`) only the `pmp`
//! phase runs ([`pmp`]): every access an S-mode guest behind PMP must not get away
//! with, each in a child of its own, beside a bystander sibling; the other phases
//! assume RAM at GPA 0x8000_0000 and FORK.
//!
//! Progress is measured by a bystander child VM that sleeps 2 ms at a time and reports
//! its longest gap between iterations (`kids::ROLE_BYSTANDER`). At the end every child
//! is killed and GET_INFO's usage and GET_HV_INFO's free pages must equal their
//! starting values; one idle child is spawned and killed at the start and at the end so
//! the hypervisor's `hypervisor heap in use` log line marks both moments.
//!
//! `/chosen/bootargs` selects: `probe=<payload|fork|phnum|reboot|dbcn>[,...]` (only
//! those probes), `phases=<edges,fuzz,races,devices,probes>`, `avoid=known` (everything but
//! the five known triggers, for diagnosis), `seed=<n>`, `fuzz=<calls per vCPU>`,
//! `gap=<ms>` (the longest bystander gap allowed). Ends with `hostile: N passed, M
//! failed` and a shutdown.
#![no_std]
#![no_main]

mod devices;
mod edges;
mod fuzz;
mod img;
mod kids;
mod pmp;
mod probes;
mod races;
mod sys;
mod team;

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use diosix_abi::VmInfo;
use diosix_guest_rt::{dtb, println, report};
use sys::{Client, Region, DSX};

diosix_guest_rt::entry!(main);

// ----- configuration -----

/// Phase bits.
const PH_EDGES: u32 = 1;
const PH_FUZZ: u32 = 2;
const PH_RACES: u32 = 4;
const PH_PROBES: u32 = 8;
const PH_DEVICES: u32 = 16;

/// Probe bits (also their order: the least destructive first).
pub const PR_REBOOT: u32 = 1;
pub const PR_PHNUM: u32 = 2;
pub const PR_DBCN: u32 = 4;
pub const PR_FORK: u32 = 8;
pub const PR_PAYLOAD: u32 = 16;

static PHASES: AtomicUsize = AtomicUsize::new(0x1f);
static PROBES: AtomicUsize = AtomicUsize::new(0x1f);
/// Leave out the five known triggers (diagnosis only).
pub static AVOID_KNOWN: AtomicBool = AtomicBool::new(false);
/// Fuzzer seed.
pub static SEED: AtomicU64 = AtomicU64::new(0x5EED_0005);
/// Fuzzer calls per vCPU.
pub static FUZZ_CALLS: AtomicUsize = AtomicUsize::new(4000);
/// Longest bystander gap allowed (ms): a loaded two-core host alone has been seen to
/// stall a vCPU for over a second; the defects this catches stall for 10 s or more.
static GAP_LIMIT_MS: AtomicU64 = AtomicU64::new(5000);

/// True when the known triggers are to be left out.
pub fn avoid_known() -> bool {
    AVOID_KNOWN.load(Ordering::Relaxed)
}

fn parse_args(args: &str) {
    for word in args.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "probe" | "probes" => {
                let mut m = 0;
                for p in v.split(',') {
                    m |= match p {
                        "reboot" => PR_REBOOT,
                        "phnum" => PR_PHNUM,
                        "dbcn" => PR_DBCN,
                        "fork" => PR_FORK,
                        "payload" => PR_PAYLOAD,
                        "all" => 0x1f,
                        _ => 0,
                    };
                }
                PROBES.store(m as usize, Ordering::Relaxed);
                PHASES.store(PH_PROBES as usize, Ordering::Relaxed);
            }
            "phases" => {
                let mut m = 0;
                for p in v.split(',') {
                    m |= match p {
                        "edges" => PH_EDGES,
                        "fuzz" => PH_FUZZ,
                        "races" => PH_RACES,
                        "probes" => PH_PROBES,
                        "devices" => PH_DEVICES,
                        _ => 0,
                    };
                }
                PHASES.store(m as usize, Ordering::Relaxed);
            }
            "avoid" if v == "known" => {
                AVOID_KNOWN.store(true, Ordering::Relaxed);
                PROBES.store(0, Ordering::Relaxed);
            }
            "seed" => {
                if let Ok(s) = v.parse() {
                    SEED.store(s, Ordering::Relaxed);
                }
            }
            "fuzz" => {
                if let Ok(n) = v.parse() {
                    FUZZ_CALLS.store(n, Ordering::Relaxed);
                }
            }
            "gap" => {
                if let Ok(n) = v.parse() {
                    GAP_LIMIT_MS.store(n, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

// ----- memory layout -----

static LO: AtomicUsize = AtomicUsize::new(0);
static LO_LEN: AtomicUsize = AtomicUsize::new(0);
static HI: AtomicUsize = AtomicUsize::new(0);
static HI_LEN: AtomicUsize = AtomicUsize::new(0);
static BIG: AtomicUsize = AtomicUsize::new(0);
static BIG_LEN: AtomicUsize = AtomicUsize::new(0);
static RAM_END: AtomicUsize = AtomicUsize::new(0);

/// The low fuzz arena: 2 MiB of RAM just above this guest's image (garbage in,
/// garbage out).
pub fn arena_lo() -> Region {
    // SAFETY: RAM above the image, set aside by `main`'s layout for the calls
    // (garbage in, garbage out); nothing else uses it.
    unsafe { Region::new(LO.load(Ordering::Relaxed), LO_LEN.load(Ordering::Relaxed)) }
}

/// The high fuzz arena: the last MiB of RAM.
pub fn arena_hi() -> Region {
    // SAFETY: the last MiB of RAM, set aside by `main`'s layout for the calls
    // (garbage in, garbage out); nothing else uses it.
    unsafe { Region::new(HI.load(Ordering::Relaxed), HI_LEN.load(Ordering::Relaxed)) }
}

/// The big work area (large images).
pub fn big() -> Region {
    // SAFETY: RAM between the image buffers and the high arena, set aside by
    // `main`'s layout for large images; nothing else uses it.
    unsafe { Region::new(BIG.load(Ordering::Relaxed), BIG_LEN.load(Ordering::Relaxed)) }
}

/// One past the last byte of RAM.
pub fn ram_end() -> usize {
    RAM_END.load(Ordering::Relaxed)
}

// ----- reporting -----

/// A failed check (`FAIL ...`, counted).
pub fn report_fail(args: core::fmt::Arguments) {
    report::fail_with(args);
}

/// A passed check.
pub fn pass(name: &str) {
    report::pass(name);
}

/// Passes if `ok`, else fails with `why`.
pub fn check(name: &str, ok: bool, why: core::fmt::Arguments) -> bool {
    if ok {
        pass(name);
    } else {
        report::fail_with(format_args!("{name}: {why}"));
    }
    ok
}

/// Checks an SBI error code against the acceptable ones.
pub fn check_code(name: &str, r: sys::SbiRet, ok: &[isize]) -> bool {
    check(
        name,
        ok.contains(&r.error),
        format_args!(
            "got {} ({}) a1 {:#x}, expected one of {:?}",
            sys::err_name(r.error),
            r.error,
            r.value,
            ok
        ),
    )
}

/// A `note` line.
pub fn note(args: core::fmt::Arguments) {
    println!("note {args}");
}

// ----- phases -----

/// Runs `body` on every vCPU as phase `name` (bounded by `limit_ms`), then checks the
/// bystander made progress throughout.
pub fn phase(name: &str, limit_ms: u64, body: fn(usize, usize)) -> bool {
    println!("phase {name}: start");
    let before = kids::bystander_query(5_000);
    sys::reset_longest();
    let t0 = sys::now();
    let ok = team::run(name, limit_ms, body);
    let took = sys::now() - t0;
    progress(name, before);
    let (t, eid, fid, v) = sys::longest();
    note(format_args!(
        "phase {name}: {} ms; longest SBI call {} ms ({} on vCPU {v})",
        sys::to_ms(took),
        sys::to_ms(t),
        sys::call_name(eid, fid)
    ));
    ok
}

/// Checks the bystander answered and its longest gap since `before` was short.
pub fn progress(name: &str, before: Option<(u64, u64)>) {
    let limit = GAP_LIMIT_MS.load(Ordering::Relaxed);
    let after = kids::bystander_query(5_000);
    let l: sys::Line<64> = sys::fmt(format_args!("progress_{name}"));
    match (before, after) {
        (_, None) => {
            report_fail(format_args!(
                "{}: the bystander VM did not answer within 5 s",
                l.as_str()
            ));
        }
        (b, Some((count, gap_us))) => {
            let from = b.map_or(0, |b| b.0);
            note(format_args!(
                "{name}: bystander {} iterations, longest gap {} ms",
                count.saturating_sub(from),
                gap_us / 1000
            ));
            check(
                l.as_str(),
                count > from && gap_us / 1000 < limit,
                format_args!(
                    "bystander iterations {from} -> {count}, longest gap {} ms (limit {limit} ms)",
                    gap_us / 1000
                ),
            );
        }
    }
}

// ----- main -----

/// Usage fields that must come back once every child is gone.
pub fn usage(i: &VmInfo) -> [u64; 7] {
    [
        i.ram_pages_used,
        i.ram_pages_reserved,
        u64::from(i.vcpus_used),
        u64::from(i.vcpus_reserved),
        u64::from(i.descendants_used),
        u64::from(i.descendants_reserved),
        u64::from(i.child_count),
    ]
}

fn main(hartid: usize, dtb_addr: usize) {
    if !sys::is_root() {
        kids::child_main(hartid, dtb_addr);
        return;
    }
    let d = dtb::parse(dtb_addr);
    sys::set_timebase(d.timebase);
    // SAFETY: the same DTB `dtb::parse` just read; its header bounds every read.
    let fdt = unsafe { dtb::Fdt::from_ptr(dtb_addr as *const u8) }.ok();
    if let Some(args) = fdt.as_ref().and_then(|f| f.chosen().bootargs()) {
        parse_args(args);
    }
    // Without H the guests run behind PMP: the attacks that mode must stop, each in a
    // child of its own (the other phases assume RAM at GPA 0x8000_0000 and FORK).
    if DSX
        .hv_info()
        .is_ok_and(|h| h.features & diosix_abi::features::PMP_FALLBACK != 0)
    {
        pmp_main(d.harts());
        report::summary("hostile");
        return;
    }
    // Everything needed from the DTB is copied out now: its memory may be reused.
    println!(
        "hostile: boot hart {hartid}, {} vCPUs, RAM {:#x}+{:#x}, seed {:#x}, phases {:#x}, probes {:#x}{}",
        d.cpus,
        d.ram_base,
        d.ram_size,
        SEED.load(Ordering::Relaxed),
        PHASES.load(Ordering::Relaxed),
        PROBES.load(Ordering::Relaxed),
        if avoid_known() { ", avoiding the known triggers" } else { "" }
    );
    // Layout: the image (loaded at the start of RAM), a 2 MiB arena from the next MiB
    // boundary, then the work area (per-vCPU image buffers, then at least 6 MiB for big
    // images), the last MiB an arena. The DTB, wherever the hypervisor put it, is no
    // longer needed.
    let end = d.ram_end();
    let lo = kids::image_end().next_multiple_of(1 << 20);
    let work = lo + 0x20_0000;
    let big_at = work + sys::MAXV * kids::IMG_LEN;
    let hi = end - (1 << 20);
    if d.ram_base != sys::RAM_BASE
        || big_at + (6 << 20) > hi
        || d.harts().iter().any(|&h| h >= sys::MAXV)
    {
        report_fail(format_args!(
            "layout: needs RAM at {:#x}, at least {} MiB, hart ids below {}",
            sys::RAM_BASE,
            (big_at + (6 << 20) + (1 << 20) - sys::RAM_BASE) >> 20,
            sys::MAXV
        ));
        report::summary("hostile");
        return;
    }
    LO.store(lo, Ordering::Relaxed);
    LO_LEN.store(0x20_0000, Ordering::Relaxed);
    HI.store(hi, Ordering::Relaxed);
    HI_LEN.store(1 << 20, Ordering::Relaxed);
    BIG.store(big_at, Ordering::Relaxed);
    BIG_LEN.store(hi - big_at, Ordering::Relaxed);
    RAM_END.store(end, Ordering::Relaxed);

    let Ok(base) = DSX.info() else {
        report_fail(format_args!(
            "get_info: the Diosix extension does not answer"
        ));
        report::summary("hostile");
        return;
    };
    let hv0 = DSX.hv_info().map(|h| h.ram_free_pages);
    kids::init(work, kids::image_end(), base.priority);
    println!(
        "hostile: RAM quota {} pages ({} free), {} vCPUs quota, {} descendants, priority {}",
        base.ram_pages_max,
        hv0.unwrap_or(0),
        base.vcpus_max,
        base.max_descendants,
        base.priority
    );
    let warm = kids::prewarm();
    note(format_args!(
        "{warm} children spawned and killed to size the hypervisor's tables"
    ));
    kids::heap_mark("start");
    let n = team::start(d.harts());
    check(
        "all_vcpus_up",
        n == d.cpus,
        format_args!("{n} of {} vCPUs started", d.cpus),
    );
    match kids::spawn_role(kids::ROLE_BYSTANDER) {
        Ok(c) => {
            kids::BYSTANDER.store(c, Ordering::Relaxed);
            check(
                "bystander_up",
                kids::bystander_query(10_000).is_some(),
                format_args!("the bystander (CID {c}) never answered"),
            );
        }
        Err(e) => report_fail(format_args!("bystander_up: {e}")),
    }

    let phases = PHASES.load(Ordering::Relaxed) as u32;
    if phases & PH_EDGES != 0 {
        edges::run();
    }
    // Before the fuzzer, which drops this VM's hardware trust (and so its devices).
    if phases & PH_DEVICES != 0 {
        devices::run();
    }
    if phases & PH_FUZZ != 0 {
        fuzz::run();
    }
    if phases & PH_RACES != 0 {
        races::run();
    }
    if phases & PH_PROBES != 0 {
        probes::run(PROBES.load(Ordering::Relaxed) as u32);
    }

    // Everything comes back.
    if !team::broken() {
        finish(&base, hv0);
    }
    report::summary("hostile");
}

/// The PMP phase alone, then usage and free pages must be back where they started.
fn pmp_main(harts: &[usize]) {
    let Ok(base) = DSX.info() else {
        report_fail(format_args!(
            "get_info: the Diosix extension does not answer"
        ));
        return;
    };
    kids::PRIO.store(base.priority.max(1), Ordering::Relaxed);
    let hv0 = DSX.hv_info().map(|h| h.ram_free_pages);
    pmp::run();
    let n = team::start(harts);
    check(
        "all_vcpus_up",
        n == harts.len(),
        format_args!("{n} of {} vCPUs started", harts.len()),
    );
    pmp::exec_race();
    let now = DSX.info().map(|i| usage(&i));
    check(
        "usage_back_to_start",
        now == Ok(usage(&base)),
        format_args!("usage {now:?}, at start {:?}", usage(&base)),
    );
    let hv = DSX.hv_info().map(|h| h.ram_free_pages);
    check(
        "hv_free_pages_back_to_start",
        hv == hv0,
        format_args!("GET_HV_INFO free {hv:?}, at start {hv0:?}"),
    );
}

/// Kills every child, then checks usage and free pages are back to `base`.
fn finish(base: &VmInfo, hv0: Result<u64, isize>) {
    println!("phase cleanup: start");
    kids::kill_all(0);
    check(
        "children_killed",
        kids::others_alive() == 0,
        format_args!("{} children left", kids::others_alive()),
    );
    let b = kids::bystander();
    if b != 0 {
        DSX.exit(b, 0);
        kids::wait_event(diosix_abi::event::CHILD_TERMINATED, b, 5_000);
        kids::BYSTANDER.store(0, Ordering::Relaxed);
    }
    kids::forget_events();
    kids::heap_mark("end");
    let now = DSX.info().map(|i| usage(&i));
    check(
        "usage_back_to_start",
        now == Ok(usage(base)),
        format_args!("usage {now:?}, at start {:?}", usage(base)),
    );
    let hv = DSX.hv_info().map(|h| h.ram_free_pages);
    check(
        "hv_free_pages_back_to_start",
        hv == hv0,
        format_args!("GET_HV_INFO free {hv:?}, at start {hv0:?}"),
    );
    let r = DSX.call2(diosix_abi::ext::FID_LIST_CHILDREN, 0, 0);
    check(
        "no_children_left",
        r.error == 0 && r.value == 0,
        format_args!("LIST_CHILDREN {} {}", r.error, r.value),
    );
}
