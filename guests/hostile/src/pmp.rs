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

use crate::img::{self, Prog, A0, A1, A2, A6, A7, ECALL, T0, T1, ZERO};
use crate::sys::{self, Client, DSX};
use crate::{check, kids, note};
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
        sys::sleep_ms(5);
        let after = bystander_bytes(by);
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
