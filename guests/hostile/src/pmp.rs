//! The PMP phase (issue 13): on a host without the H extension every guest runs in
//! S-mode with its RAM at GPA = HPA, bounded by PMP. Each attack runs in a one-page
//! child of its own (a position-independent program, so it lands wherever the child's
//! RAM is) that tries one thing a guest must not be able to do: read or write the
//! hypervisor's memory, its parent's or a sibling's RAM, host MMIO it does not own,
//! M-mode CSRs and PMP registers, `mret`, a `satp` pointing into the hypervisor, SBI
//! calls naming memory that is not its own; or it never yields with its interrupts
//! off.
//!
//! The child sets `stvec` first to a handler that EXITs with `scause`, so a trap the
//! hypervisor reflects (as hardware would: an illegal instruction) shows up as that
//! cause, a fault the hypervisor ends the VM for as `FATAL_FAULT`, and an access that
//! went through as [`GOT_THROUGH`]. Each outcome is checked exactly. Throughout, a
//! bystander sibling prints a byte per round and must keep going, and whose code the
//! sibling attack tries to overwrite; this VM (the parent) must keep running; at the
//! end every page is back.
//!
//! Then every vCPU at once races EXEC against kill ([`exec_race`]): children that EXEC
//! themselves for ever (behind PMP an EXEC copies its image out of the VM's block
//! before anything changes) are STOPped, RESUMEd, REBOOTed and finally killed from
//! every vCPU; every return must be a defined code, every child must end with the
//! kill's code, and the usage and free-page checks after the phase see everything
//! back.

use crate::img::{self, Prog, A0, A1, A2, A6, A7, ECALL, T0, T1, ZERO};
use crate::sys::{self, error, Client, SbiRet, DSX};
use crate::{check, kids, note, team};
use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_abi::{event, exit_code, ext, state};
use diosix_guest_rt::sbi::eid;

/// Exit code of an attack that was not stopped.
pub const GOT_THROUGH: u64 = 0x600D;
/// `scause` of an illegal instruction, as reflected to the guest.
const ILLEGAL_INSTRUCTION: u64 = 2;
/// Where QEMU `virt` loads the firmware, the hypervisor: the start of host RAM.
const HYPERVISOR: u64 = 0x8000_0000;

/// What an attack child does after setting `stvec`.
#[derive(Clone, Copy)]
enum Attack {
    /// `ld` from this address.
    Load(u64),
    /// `sd` of zero (an illegal instruction, were it to land on code) to it.
    Store(u64),
    /// This raw instruction.
    Insn(u32),
    /// `csrw sstatus, -1`, then this raw instruction.
    SstatusThen(u32),
    /// `csrw satp, v; sfence.vma`: the next fetch is translated by tables at `v`'s PPN.
    SatpFetch(u64),
    /// `csrw satp, v`, then EXIT with what `satp` reads back.
    SatpReadback(u64),
    /// DBCN write of 16 bytes from this address; EXIT with the SBI error.
    DbcnWrite(u64),
    /// Interrupts off, then a spin for ever.
    Hog,
}

/// Assembles the attack child's program.
fn program(attack: Attack) -> Prog {
    let mut p = Prog::new();
    let to_main = p.jump_fwd();
    // The handler: EXIT(1, scause).
    let handler = p.here();
    p.op(img::csr_op(2, A1, CSR_SCAUSE, ZERO));
    p.li(A0, 1);
    p.call(sys::EID, ext::FID_EXIT);
    let stuck = p.here();
    p.jump(stuck);
    p.patch_jump(to_main);
    let here = p.here();
    p.op(img::auipc(T0, 0));
    p.op(img::addi(T0, T0, -4 * (here - handler) as i32));
    p.op(img::csr_op(1, ZERO, CSR_STVEC, T0));
    match attack {
        Attack::Load(a) => {
            p.li(T0, a);
            p.op(img::ld(T1, T0, 0));
        }
        Attack::Store(a) => {
            p.li(T0, a);
            p.op(img::sd(ZERO, T0, 0));
        }
        Attack::Insn(w) => {
            p.op(w);
        }
        Attack::SstatusThen(w) => {
            p.li(T0, u64::MAX);
            p.op(img::csr_op(1, ZERO, CSR_SSTATUS, T0));
            p.op(w);
        }
        Attack::SatpFetch(v) => {
            p.li(T0, v);
            p.op(img::csr_op(1, ZERO, CSR_SATP, T0));
            p.op(SFENCE_VMA);
        }
        Attack::SatpReadback(v) => {
            p.li(T0, v);
            p.op(img::csr_op(1, ZERO, CSR_SATP, T0));
            p.op(img::csr_op(2, A1, CSR_SATP, ZERO));
            p.li(A0, 1);
            p.call(sys::EID, ext::FID_EXIT);
        }
        Attack::DbcnWrite(a) => {
            p.li(A0, 16);
            p.li(A1, a);
            p.li(A2, 0);
            p.li(A7, eid::DBCN as u64);
            p.li(A6, 0);
            p.op(ECALL);
            p.op(img::addi(A1, A0, 0));
            p.li(A0, 1);
            p.call(sys::EID, ext::FID_EXIT);
        }
        Attack::Hog => {
            p.op(img::csr_op(1, ZERO, CSR_SIE, ZERO));
            p.op(img::csr_op(3, ZERO, CSR_SSTATUS, ZERO) | (2 << 15)); // csrci sstatus, SIE
            let spin = p.here();
            p.jump(spin);
        }
    }
    p.exit_self(GOT_THROUGH);
    p
}

/// RAM of every child: one 2 MiB region, the smallest PMP RAM there is.
const CHILD_PAGES: u64 = 512;

const CSR_SSTATUS: u32 = 0x100;
const CSR_SIE: u32 = 0x104;
const CSR_STVEC: u32 = 0x105;
const CSR_SCAUSE: u32 = 0x142;
const CSR_SATP: u32 = 0x180;
const SFENCE_VMA: u32 = 0x1200_0073;

/// The bystander: writes `.` to its console, spins a while, for ever.
fn bystander_program() -> Prog {
    let mut p = Prog::new();
    let top = p.here();
    p.li(A0, u64::from(b'.'));
    p.li(A7, eid::DBCN as u64);
    p.li(A6, 2);
    p.op(ECALL);
    p.li(T0, 20_000);
    let spin = p.here();
    p.op(img::addi(T0, T0, -1));
    p.branch(1, T0, ZERO, spin);
    p.jump(top);
    p
}

/// SPAWN of a one-page child running `p`; its CID.
fn spawn(p: &Prog) -> Option<u64> {
    let buf = sys::data();
    let len = img::pie_elf(&buf, p);
    let a =
        // PMP RAM comes in whole 2 MiB regions.
        diosix_guest_rt::diosix::spawn_args(buf.addr(), len, CHILD_PAGES, 1, kids::prio());
    let r = DSX.spawn(&a);
    (r.error == 0).then_some(r.value as u64)
}

/// Console bytes the bystander has written so far (waiting plus dropped: never read).
fn bystander_bytes(c: u64) -> Option<u64> {
    let i = DSX.child_info(c).ok()?;
    (i.state == state::RUNNING).then(|| u64::from(i.console_pending) + i.console_dropped)
}

/// The bystander's console count once it has grown past `before`, waiting up to
/// half a second of guest time: an attack that harmed it never lets it grow, while a
/// host busy with other work may take more than a few milliseconds to run it.
fn bystander_grew(c: u64, before: Option<u64>) -> Option<u64> {
    let mut after = bystander_bytes(c);
    for _ in 0..100 {
        if matches!((before, after), (Some(b), Some(a)) if a > b) {
            break;
        }
        sys::sleep_ms(5);
        after = bystander_bytes(c);
    }
    after
}

/// Runs the phase.
pub fn run() {
    diosix_guest_rt::println!("phase pmp: start");
    let me = DSX.info().map(|i| i.ram_gpa).unwrap_or(0);
    let Some(by) = spawn(&bystander_program()) else {
        crate::report_fail(format_args!("pmp_bystander: SPAWN refused"));
        return;
    };
    let by_ram = DSX.child_info(by).map(|i| i.ram_gpa).unwrap_or(0);
    sys::sleep_ms(50);
    check(
        "pmp_bystander_runs",
        bystander_bytes(by).is_some_and(|n| n > 0),
        format_args!("the bystander printed nothing"),
    );
    let fatal = exit_code::FATAL_FAULT;
    // DBCN names a bad buffer INVALID_PARAM (SBI 2.0, 12.1).
    let invalid_param = diosix_abi::error::INVALID_PARAM as u64;
    // (name, attack, the one outcome expected)
    let attacks: [(&str, Attack, u64); 15] = [
        ("pmp_load_hypervisor", Attack::Load(HYPERVISOR), fatal),
        (
            "pmp_store_hypervisor",
            Attack::Store(HYPERVISOR + 0x1000),
            fatal,
        ),
        ("pmp_load_parent_ram", Attack::Load(me), fatal),
        ("pmp_store_parent_ram", Attack::Store(me + 0x100), fatal),
        // The bystander's loop starts 4 bytes into its code (0x100 into its page).
        (
            "pmp_store_sibling_code",
            Attack::Store(by_ram + 0x104),
            fatal,
        ),
        ("pmp_store_host_uart", Attack::Store(0x1000_0000), fatal),
        (
            "pmp_store_clint_mtimecmp",
            Attack::Store(0x0200_4000),
            fatal,
        ),
        ("pmp_load_host_plic", Attack::Load(0x0c00_0000), fatal),
        (
            "pmp_read_mstatus",
            Attack::Insn(img::csr_op(2, T0, 0x300, ZERO)),
            ILLEGAL_INSTRUCTION,
        ),
        (
            "pmp_write_pmpcfg0",
            Attack::Insn(img::csr_op(1, ZERO, 0x3A0, ZERO)),
            ILLEGAL_INSTRUCTION,
        ),
        (
            "pmp_write_pmpaddr0",
            Attack::Insn(img::csr_op(1, ZERO, 0x3B0, ZERO)),
            ILLEGAL_INSTRUCTION,
        ),
        (
            "pmp_sstatus_ones_then_mret",
            Attack::SstatusThen(0x3020_0073),
            ILLEGAL_INSTRUCTION,
        ),
        // Sv39 tables "at" the hypervisor: the walk is a PMP-checked access.
        (
            "pmp_satp_into_hypervisor",
            Attack::SatpFetch((8 << 60) | (HYPERVISOR >> 12)),
            fatal,
        ),
        // A mode no hart implements: the write is ignored (WARL), satp stays 0.
        ("pmp_satp_bad_mode", Attack::SatpReadback(15 << 60), 0),
        (
            "pmp_dbcn_from_hypervisor",
            Attack::DbcnWrite(HYPERVISOR),
            invalid_param,
        ),
    ];
    for (name, attack, want) in attacks {
        let before = bystander_bytes(by);
        let Some(c) = spawn(&program(attack)) else {
            crate::report_fail(format_args!("{name}: SPAWN refused"));
            continue;
        };
        let got = kids::wait_event(event::CHILD_TERMINATED, c, 5_000).map(|e| e.exit_code);
        if got.is_none() {
            DSX.exit(c, 0);
            kids::wait_event(event::CHILD_TERMINATED, c, 5_000);
        }
        check(
            name,
            got == Some(want),
            format_args!("exit code {got:x?}, expected {want:#x}"),
        );
        let after = bystander_grew(by, before);
        let l: sys::Line<64> = sys::fmt(format_args!("{name}_bystander_unharmed"));
        check(
            l.as_str(),
            matches!((before, after), (Some(b), Some(a)) if a > b),
            format_args!("bystander console bytes {before:?} -> {after:?}"),
        );
    }
    // SBI calls naming another VM's RAM: the parent's (this VM's) and the sibling's.
    for (name, at) in [
        ("pmp_dbcn_from_parent_ram", me),
        ("pmp_dbcn_from_sibling_ram", by_ram),
    ] {
        let got = spawn(&program(Attack::DbcnWrite(at)))
            .and_then(|c| kids::wait_event(event::CHILD_TERMINATED, c, 5_000))
            .map(|e| e.exit_code);
        check(
            name,
            got == Some(invalid_param),
            format_args!("exit code {got:x?}, expected INVALID_PARAM"),
        );
    }
    // A child that never yields, interrupts off: the hypervisor still takes its hart
    // back (M-mode timer interrupts cannot be masked from S-mode).
    if let Some(c) = spawn(&program(Attack::Hog)) {
        let before = bystander_bytes(by);
        sys::sleep_ms(300);
        let after = bystander_bytes(by);
        check(
            "pmp_hog_bystander_progress",
            matches!((before, after), (Some(b), Some(a)) if a > b),
            format_args!("bystander console bytes {before:?} -> {after:?}"),
        );
        check(
            "pmp_hog_still_running",
            DSX.child_info(c).map(|i| i.state) == Ok(state::RUNNING),
            format_args!("the hog is not running"),
        );
        DSX.exit(c, 7);
        let got = kids::wait_event(event::CHILD_TERMINATED, c, 5_000).map(|e| e.exit_code);
        check(
            "pmp_hog_killed",
            got == Some(7),
            format_args!("exit code {got:?}"),
        );
    } else {
        crate::report_fail(format_args!("pmp_hog: SPAWN refused"));
    }
    check(
        "pmp_bystander_alive",
        bystander_bytes(by).is_some(),
        format_args!("the bystander is gone"),
    );
    DSX.exit(by, 0);
    kids::wait_event(event::CHILD_TERMINATED, by, 5_000);
    note(format_args!("pmp: done"));
}

// ----- EXEC vs kill from every vCPU -----

/// Rounds per vCPU.
const RACE_ROUNDS: usize = 6;
/// Where an EXEC-looping child keeps its EXEC arguments in its page.
const EXEC_ARGS_OFF: usize = 0xC00;
/// The exit code the race kills with.
const KILL_CODE: u64 = 0xE4EC;

/// Children killed with [`KILL_CODE`] (the kill answered SUCCESS).
static KILLS: AtomicUsize = AtomicUsize::new(0);
/// Returns that were not among the codes allowed.
static UNDEFINED: AtomicUsize = AtomicUsize::new(0);
/// SPAWNs refused.
static SPAWN_REFUSED: AtomicUsize = AtomicUsize::new(0);

/// A child that EXECs itself (its own page, which is the whole ELF file) for ever:
/// the page's address comes from `gp`, so the program runs wherever it is loaded.
fn exec_loop_program() -> Prog {
    let image_gpa = core::mem::offset_of!(diosix_abi::SpawnArgs, image_gpa) as i32;
    let mut p = Prog::new();
    let top = p.here();
    // t0 = the page (gp = its code, 0x100 in); a0 = the arguments 0xC00 in.
    p.op(img::addi(T0, img::GP, -0x100));
    p.op(img::addi(A0, T0, 0x600));
    p.op(img::addi(A0, A0, (EXEC_ARGS_OFF - 0x600) as i32));
    p.op(img::sd(T0, A0, image_gpa));
    p.call(sys::EID, ext::FID_EXEC);
    p.jump(top);
    p
}

/// SPAWN of an EXEC-looping child with room in its quota for an EXEC's new charge.
fn spawn_exec_loop() -> Option<u64> {
    let buf = sys::data();
    let len = img::pie_elf(&buf, &exec_loop_program());
    let exec = diosix_guest_rt::diosix::spawn_args(0, len, CHILD_PAGES, 1, kids::prio());
    buf.write(EXEC_ARGS_OFF, &exec.to_le_bytes());
    let mut a = diosix_guest_rt::diosix::spawn_args(buf.addr(), len, CHILD_PAGES, 1, kids::prio());
    a.quota_ram_pages = 2 * (CHILD_PAGES + 64);
    a.quota_vcpus = 1;
    let r = DSX.spawn(&a);
    (r.error == 0).then_some(r.value as u64)
}

/// Counts a return outside `ok`.
fn allowed(r: SbiRet, ok: &[isize]) {
    if !ok.contains(&r.error) || (r.error != 0 && r.value != 0) {
        UNDEFINED.fetch_add(1, Ordering::Relaxed);
    }
}

/// EXEC vs STOP, RESUME, REBOOT, GET_CHILD_INFO and kill, from every vCPU at once.
pub fn exec_race() {
    use error::{ALREADY_STARTED, ALREADY_STOPPED, FAILED, INVALID_PARAM, SUCCESS};
    diosix_guest_rt::println!("phase pmp_exec_vs_kill: start");
    kids::forget_events();
    let ok = team::run("pmp_exec_vs_kill", 60_000, |idx, _n| {
        for round in 0..RACE_ROUNDS {
            let Some(c) = spawn_exec_loop() else {
                SPAWN_REFUSED.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            for k in 0..(4 * round + idx) {
                let r = match k % 4 {
                    // A racing EXEC undoes a REBOOT (FAILED); nothing here kills it.
                    0 => {
                        let r = DSX.call2(ext::FID_REBOOT, c as usize, 0);
                        allowed(r, &[SUCCESS, FAILED]);
                        continue;
                    }
                    1 => DSX.call2(ext::FID_STOP, c as usize, 0),
                    2 => DSX.call2(ext::FID_RESUME, c as usize, 0),
                    _ => DSX.child_info(c).map_or_else(
                        |e| SbiRet { error: e, value: 0 },
                        |_| SbiRet { error: 0, value: 0 },
                    ),
                };
                allowed(
                    r,
                    &[SUCCESS, ALREADY_STOPPED, ALREADY_STARTED, INVALID_PARAM],
                );
            }
            sys::sleep_ms(((idx + round) % 4) as u64);
            let r = DSX.exit(c, KILL_CODE);
            allowed(r, &[SUCCESS]);
            if r.error == 0 {
                KILLS.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    if !ok {
        return;
    }
    // Every kill shows up as a CHILD_TERMINATED with its code; EXECs as REBOOTED.
    let kills = KILLS.load(Ordering::Relaxed);
    let (mut ended, mut wrong_code, mut execs) = (0usize, 0usize, 0usize);
    let end = sys::now() + sys::ms(10_000);
    while ended + wrong_code < kills && sys::now() < end {
        match DSX.poll_event() {
            Ok(Some(e)) if e.kind == event::CHILD_TERMINATED => {
                if e.exit_code == KILL_CODE {
                    ended += 1;
                } else {
                    wrong_code += 1;
                }
            }
            Ok(Some(e)) if e.kind == event::CHILD_REBOOTED => execs += 1,
            Ok(Some(_)) => {}
            Ok(None) => sys::sleep_ms(1),
            Err(_) => break,
        }
    }
    let spawned = kills + SPAWN_REFUSED.load(Ordering::Relaxed);
    note(format_args!(
        "pmp_exec_vs_kill: {kills} children killed, {execs} EXECs seen, {} SPAWNs refused",
        SPAWN_REFUSED.load(Ordering::Relaxed)
    ));
    check(
        "pmp_exec_vs_kill_every_return_defined",
        UNDEFINED.load(Ordering::Relaxed) == 0,
        format_args!(
            "{} returns outside the allowed codes",
            UNDEFINED.load(Ordering::Relaxed)
        ),
    );
    check(
        "pmp_exec_vs_kill_each_child_killed",
        kills == RACE_ROUNDS * team::size() && ended == kills && wrong_code == 0,
        format_args!(
            "{kills} kills of {spawned} children, {ended} ended with the kill's code, {wrong_code} with another"
        ),
    );
    check(
        "pmp_exec_vs_kill_children_execed",
        execs > 0,
        format_args!("no CHILD_REBOOTED event: no EXEC completed"),
    );
    check(
        "pmp_exec_vs_kill_no_children_left",
        DSX.call2(ext::FID_LIST_CHILDREN, 0, 0).value == 0,
        format_args!("children left behind"),
    );
}
