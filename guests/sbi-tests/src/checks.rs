//! The checks, in the order they run on the boot hart.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use diosix_guest_rt::sbi::{self, eid, error, hart_state, SbiRet};
use diosix_guest_rt::{csr, dtb, hart, println, trap};

/// Facts gathered at boot, shared with the resume path of the non-retentive suspend.
struct Ctx {
    me: usize,
    info: dtb::Info,
    opensbi: bool,
    legacy_shutdown: bool,
    /// The harness gave this VM more vCPUs than the host has harts.
    shared_hart: bool,
    /// QEMU runs under `-icount` on one host hart: retired-instruction counts are
    /// exact (without it QEMU's "instructions" event counts host ticks; with several
    /// harts, the instructions of all of them).
    icount: bool,
    /// The host harts have Sscofpmf, so counters can leave out M-mode.
    sscofpmf: bool,
}

/// Written once by `main` before any other hart starts; read-only afterwards.
static mut CTX: Option<Ctx> = None;

fn ctx() -> &'static Ctx {
    // SAFETY: CTX is written once in `main` before anything reads it, never again.
    unsafe {
        (*core::ptr::addr_of!(CTX))
            .as_ref()
            .expect("ctx set in main")
    }
}

use diosix_guest_rt::report::{self, fail, pass};

fn check<T: PartialEq + core::fmt::Debug>(name: &str, got: T, expected: T) {
    report::check(name, got, expected);
}

fn check_true(name: &str, cond: bool, what: &str) {
    if cond {
        pass(name)
    } else {
        fail(name, "false", what)
    }
}

/// Checks only `error` of an SBI result.
fn check_err(name: &str, ret: SbiRet, expected: isize) {
    check(name, ret.error, expected)
}

fn note(name: &str, msg: &str) {
    println!("note {name}: {msg}");
}

/// Raw call with plain-value arguments.
fn call(eid: usize, fid: usize, args: [usize; 6]) -> SbiRet {
    // SAFETY: every caller passes either plain values or memory this guest owns or
    // expects to be rejected; none of these calls stop or suspend the hart.
    unsafe { sbi::sbi_call(eid, fid, args) }
}

fn legacy(eid: usize, args: [usize; 4]) -> isize {
    // SAFETY: as for `call`; pointer arguments point at this guest's own statics.
    unsafe { sbi::legacy_call(eid, args) }
}

fn ms(n: u64) -> u64 {
    ctx().info.timebase / 1000 * n
}

/// Spins until `cond` holds or `ticks` of `time` pass; returns whether it held.
fn wait_for(ticks: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = csr::time() + ticks;
    loop {
        if cond() {
            return true;
        }
        if csr::time() > end {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// A hart id that no hart has (one past the largest in the DTB).
fn invalid_hart() -> usize {
    ctx().info.harts().iter().copied().max().unwrap_or(0) + 1
}

/// An address range no sane implementation lets the guest use: far past the end of RAM.
fn outside_ram() -> usize {
    ctx().info.ram_end() + 0x4000_0000
}

pub fn main(hartid: usize, dtb_addr: usize) {
    let info = dtb::parse(dtb_addr);
    // SAFETY: reading the DTB's bootargs again for the flag; same contract as parse.
    let fdt = unsafe { fdt_bootargs_has(dtb_addr, "legacy-shutdown") };
    // SAFETY: as above.
    let shared_hart = unsafe { fdt_bootargs_has(dtb_addr, "shared-hart") };
    // SAFETY: as above.
    let icount = unsafe { fdt_bootargs_has(dtb_addr, "icount") };
    // SAFETY: as above.
    let sscofpmf = unsafe { fdt_bootargs_has(dtb_addr, "sscofpmf") };
    // SAFETY: single write before any reader exists (no other hart runs yet).
    unsafe {
        CTX = Some(Ctx {
            me: hartid,
            info,
            opensbi: sbi::impl_id() == sbi::IMPL_ID_OPENSBI,
            legacy_shutdown: fdt,
            shared_hart,
            icount,
            sscofpmf,
        })
    };
    println!(
        "sbi-tests: boot hart {hartid}, {} harts, RAM {:#x}+{:#x}, H in DTB: {}",
        info.cpus, info.ram_base, info.ram_size, info.has_h
    );
    trap::install();
    // The console is byte-transparent: the harness checks these bytes arrive exactly
    // (a CR added before the LF would read CR CR LF).
    diosix_guest_rt::console::write_bytes(b"sbi-tests: console bytes CR LF\r\n");
    base();
    unknown();
    dbcn();
    time();
    wfi_straddling_page();
    ipi_self();
    rfence_self();
    hsm_basic();
    if info.cpus > 1 {
        multi_hart();
    } else {
        note("multi_hart", "skipped: only one hart");
    }
    legacy_calls();
    legacy_calls_under_paging();
    suspend_retentive();
    fwft();
    sta();
    dbtr();
    pmu();
    srst_invalid();
    suspend_non_retentive();
}

/// Whether `/chosen/bootargs` contains `word`.
///
/// # Safety
///
/// `dtb_addr` must be the DTB address the SBI implementation passed in.
unsafe fn fdt_bootargs_has(dtb_addr: usize, word: &str) -> bool {
    // SAFETY: forwarded contract.
    let Ok(fdt) = (unsafe { fdt_from(dtb_addr) }) else {
        return false;
    };
    fdt.chosen().bootargs().is_some_and(|a| a.contains(word))
}

/// # Safety
///
/// `addr` must point at a valid DTB.
unsafe fn fdt_from(addr: usize) -> Result<diosix_guest_rt::dtb::Fdt<'static>, ()> {
    // SAFETY: forwarded contract.
    unsafe { diosix_guest_rt::dtb::Fdt::from_ptr(addr as *const u8) }.map_err(|_| ())
}

fn base() {
    let v = call(eid::BASE, 0, [0; 6]);
    check_err("base_get_spec_version", v, error::SUCCESS);
    check("base_spec_version_is_2_0", v.value, 2 << 24);
    let id = call(eid::BASE, 1, [0; 6]);
    check_err("base_get_impl_id", id, error::SUCCESS);
    println!("info impl id {}", id.value);
    let iv = call(eid::BASE, 2, [0; 6]);
    check_err("base_get_impl_version", iv, error::SUCCESS);
    println!("info impl version {:#x}", iv.value);
    for (fid, name) in [
        (4, "base_get_mvendorid"),
        (5, "base_get_marchid"),
        (6, "base_get_mimpid"),
    ] {
        check_err(name, call(eid::BASE, fid, [0; 6]), error::SUCCESS);
    }
    let probe = call(eid::BASE, 3, [eid::BASE, 0, 0, 0, 0, 0]);
    check_err("base_probe_extension", probe, error::SUCCESS);
    let exts = [
        ("base", eid::BASE),
        ("time", eid::TIME),
        ("ipi", eid::IPI),
        ("rfence", eid::RFENCE),
        ("hsm", eid::HSM),
        ("srst", eid::SRST),
        ("dbcn", eid::DBCN),
        ("legacy_set_timer", eid::LEGACY_SET_TIMER),
        ("legacy_putchar", eid::LEGACY_CONSOLE_PUTCHAR),
        ("legacy_getchar", eid::LEGACY_CONSOLE_GETCHAR),
        ("legacy_clear_ipi", eid::LEGACY_CLEAR_IPI),
        ("legacy_send_ipi", eid::LEGACY_SEND_IPI),
        ("legacy_remote_fence_i", eid::LEGACY_REMOTE_FENCE_I),
        ("legacy_remote_sfence_vma", eid::LEGACY_REMOTE_SFENCE_VMA),
        (
            "legacy_remote_sfence_vma_asid",
            eid::LEGACY_REMOTE_SFENCE_VMA_ASID,
        ),
        ("legacy_shutdown", eid::LEGACY_SHUTDOWN),
    ];
    for (name, e) in exts {
        let r = call(eid::BASE, 3, [e, 0, 0, 0, 0, 0]);
        if r.is_ok() && r.value != 0 {
            report::pass_with(format_args!("probe_{name}"));
        } else {
            fail(name, r, "nonzero value");
        }
    }
    check(
        "probe_unknown_eid",
        call(eid::BASE, 3, [UNKNOWN_EID, 0, 0, 0, 0, 0]).value,
        0,
    );
}

/// An EID in no range the spec assigns to anything implemented here.
const UNKNOWN_EID: usize = 0x0BAD_5B1E;

fn unknown() {
    check_err(
        "unknown_eid",
        call(UNKNOWN_EID, 0, [0; 6]),
        error::NOT_SUPPORTED,
    );
    for (name, e, fid) in [
        ("unknown_fid_base", eid::BASE, 7),
        ("unknown_fid_time", eid::TIME, 1),
        ("unknown_fid_ipi", eid::IPI, 1),
        ("unknown_fid_rfence", eid::RFENCE, 7),
        ("unknown_fid_hsm", eid::HSM, 4),
        ("unknown_fid_srst", eid::SRST, 1),
        ("unknown_fid_dbcn", eid::DBCN, 3),
    ] {
        check_err(name, call(e, fid, [0; 6]), error::NOT_SUPPORTED);
    }
}

fn dbcn() {
    let msg = b"dbcn_write: the quick brown fox jumps over the lazy dog 0123456\n";
    let r = sbi::dbcn_write(msg);
    check_err("dbcn_write", r, error::SUCCESS);
    check("dbcn_write_count", r.value, msg.len());
    let r = sbi::dbcn_write(&[]);
    check_err("dbcn_write_empty", r, error::SUCCESS);
    for &b in b"dbcn_write_byte\n" {
        let r = sbi::dbcn_write_byte(b);
        if !r.is_ok() || r.value != 0 {
            fail("dbcn_write_byte", r, "error 0 value 0");
            return;
        }
    }
    pass("dbcn_write_byte");
    // With no input the call must return at once with 0 bytes and leave the buffer.
    let mut buf = [0xa5u8; 16];
    let r = sbi::dbcn_read(&mut buf);
    check_err("dbcn_read_nonblocking", r, error::SUCCESS);
    check("dbcn_read_no_input_count", r.value, 0);
    check_true(
        "dbcn_read_buffer_untouched",
        buf.iter().all(|&b| b == 0xa5),
        "buffer unchanged",
    );

    // Bad buffers. SBI 2.0 §12.1/§12.2: memory not satisfying the shared-memory
    // requirements (§3.2) -> SBI_ERR_INVALID_PARAM.
    let good = msg.as_ptr() as usize;
    let opensbi = ctx().opensbi;
    for fid in [0usize, 1] {
        let op = if fid == 0 { "write" } else { "read" };
        // Physical address >= 2^64 (base_addr_hi != 0).
        let r = call(eid::DBCN, fid, [8, good, 1, 0, 0, 0]);
        let name = if fid == 0 {
            "dbcn_write_addr_hi"
        } else {
            "dbcn_read_addr_hi"
        };
        if opensbi && r.error == error::FAILED {
            note(name, "OpenSBI returns SBI_ERR_FAILED for base_addr_hi != 0; SBI 2.0 §12 says INVALID_PARAM");
            pass(name);
        } else {
            check_err(name, r, error::INVALID_PARAM);
        }
        if opensbi {
            // OpenSBI's root domain gives S-mode the whole address space except its own
            // image, so it would dereference these and take a fatal M-mode fault.
            note(op, "OpenSBI: outside-RAM/wrapping/huge buffers skipped (OpenSBI faults in M-mode); testing its firmware region");
            let r = call(eid::DBCN, fid, [8, 0x8000_0000, 0, 0, 0, 0]);
            let name = if fid == 0 {
                "dbcn_write_firmware_region"
            } else {
                "dbcn_read_firmware_region"
            };
            check_err(name, r, error::INVALID_PARAM);
            continue;
        }
        let cases: [(&str, usize, usize); 4] = [
            ("outside_ram", outside_ram(), 8),
            ("below_ram", ctx().info.ram_base.wrapping_sub(0x1000), 8),
            ("wraps", usize::MAX - 7, 64),
            ("huge_len", good, usize::MAX / 2),
        ];
        for (what, addr, len) in cases {
            let r = call(eid::DBCN, fid, [len, addr, 0, 0, 0, 0]);
            let mut name = heapless_name::<40>();
            name.push(if fid == 0 {
                "dbcn_write_"
            } else {
                "dbcn_read_"
            });
            name.push(what);
            check_err(name.as_str(), r, error::INVALID_PARAM);
        }
    }
}

/// A tiny fixed-capacity string for composing check names without an allocator.
struct Name<const N: usize> {
    buf: [u8; N],
    len: usize,
}

fn heapless_name<const N: usize>() -> Name<N> {
    Name {
        buf: [0; N],
        len: 0,
    }
}

impl<const N: usize> Name<N> {
    fn push(&mut self, s: &str) {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

// A `wfi` that starts 2 bytes before a page boundary. A hypervisor that traps WFI
// must resume after it even when the hart reports it oddly (QEMU 10.0 reports such an
// instruction one page past where it is; see `correct_straddling_epc` in the
// hypervisor's trap.rs). The page is the section's own, so the offset holds wherever
// the image is loaded (it always loads page-aligned).
core::arch::global_asm!(
    r#"
    .section .text.straddling_wfi, "ax"
    .balign 4096
    .option push
    .option norvc
    .globl sbi_tests_straddling_wfi
sbi_tests_straddling_wfi:
    j       2f
    .skip   4090
2:
    wfi
    ret
    .option pop
"#
);

/// WFI across a page boundary, woken by a timer 1 ms ahead: the guest must come back.
fn wfi_straddling_page() {
    extern "C" {
        fn sbi_tests_straddling_wfi();
    }
    let tick = ctx().info.timebase / 1000;
    sbi::set_timer(csr::time().saturating_add(tick));
    csr::sie_set(csr::STI);
    // SAFETY: the assembly above: a jump, a `wfi` and a return, touching no memory.
    unsafe { sbi_tests_straddling_wfi() };
    sbi::set_timer(u64::MAX);
    csr::sie_clear(csr::STI);
    pass("wfi_straddling_page_resumes");
}

fn time() {
    let me = ctx().me;
    // Timer interrupt actually taken through stvec.
    let before = trap::timer_count(me);
    csr::sie_set(csr::STI);
    let r = sbi::set_timer(csr::time() + ms(1));
    check_err("time_set_timer", r, error::SUCCESS);
    trap::wait_until(|| trap::timer_count(me) > before);
    trap::disable();
    check_true(
        "time_interrupt_taken",
        trap::timer_count(me) > before,
        "S-timer interrupt",
    );
    // With sstatus.SIE clear the interrupt shows as pending in sip.
    sbi::set_timer(csr::time() + ms(1));
    let ok = wait_for(ms(1000), || csr::sip() & csr::STI != 0);
    check_true("time_stip_pending", ok, "sip.STIP set");
    let r = sbi::set_timer(u64::MAX);
    check_err("time_set_timer_max", r, error::SUCCESS);
    check("time_set_timer_max_clears_stip", csr::sip() & csr::STI, 0);
    // A deadline in the past fires at once.
    sbi::set_timer(0);
    let ok = wait_for(ms(100), || csr::sip() & csr::STI != 0);
    check_true("time_past_deadline_pending", ok, "sip.STIP set");
    sbi::set_timer(u64::MAX);
    csr::sie_clear(csr::STI);
}

fn ipi_self() {
    let me = ctx().me;
    let r = sbi::send_ipi(1 << (me % 64), me & !63);
    check_err("ipi_send_self", r, error::SUCCESS);
    let ok = wait_for(ms(100), || csr::sip() & csr::SSI != 0);
    check_true("ipi_self_ssip_pending", ok, "sip.SSIP set");
    csr::sip_clear(csr::SSI);
    // Same hart named through hart_mask_base.
    check_err("ipi_send_self_base", sbi::send_ipi(1, me), error::SUCCESS);
    let ok = wait_for(ms(100), || csr::sip() & csr::SSI != 0);
    check_true("ipi_self_base_ssip_pending", ok, "sip.SSIP set");
    csr::sip_clear(csr::SSI);
    // Taken as an interrupt through stvec.
    let before = trap::soft_count(me);
    csr::sie_set(csr::SSI);
    trap::enable();
    sbi::send_ipi(1, me);
    let ok = wait_for(ms(100), || trap::soft_count(me) > before);
    trap::disable();
    csr::sie_clear(csr::SSI);
    check_true("ipi_self_interrupt_taken", ok, "S-software interrupt");
    // Invalid harts: SBI 2.0 §3.1 hart mask errors -> INVALID_PARAM.
    let bad = invalid_hart();
    check_err(
        "ipi_invalid_hart_base",
        sbi::send_ipi(1, bad),
        error::INVALID_PARAM,
    );
    if bad < 64 {
        let name = "ipi_invalid_hart_in_mask";
        let r = sbi::send_ipi(1 << bad | 1 << me, 0);
        if ctx().opensbi && r.error == error::SUCCESS {
            // OpenSBI 1.5 skips mask bits naming no hart and only rejects an invalid
            // hart_mask_base; SBI 2.0 §3.1 (hart mask errors) requires INVALID_PARAM
            // when at least one hartid from hart_mask is not valid.
            note(
                name,
                "OpenSBI ignores invalid harts in hart_mask; spec says INVALID_PARAM",
            );
            pass(name);
        } else {
            check_err(name, r, error::INVALID_PARAM);
        }
        csr::sip_clear(csr::SSI);
    }
    check_err(
        "ipi_invalid_base_far",
        sbi::send_ipi(1, 0x10_0000),
        error::INVALID_PARAM,
    );
}

fn rfence_self() {
    let me = ctx().me;
    let (m, b) = (1usize << (me % 64), me & !63);
    check_err(
        "rfence_remote_fence_i",
        call(eid::RFENCE, 0, [m, b, 0, 0, 0, 0]),
        error::SUCCESS,
    );
    check_err(
        "rfence_remote_sfence_vma",
        call(eid::RFENCE, 1, [m, b, 0, usize::MAX, 0, 0]),
        error::SUCCESS,
    );
    check_err(
        "rfence_remote_sfence_vma_range",
        call(eid::RFENCE, 1, [m, b, 0x8020_0000, 0x1000, 0, 0]),
        error::SUCCESS,
    );
    check_err(
        "rfence_remote_sfence_vma_asid",
        call(eid::RFENCE, 2, [m, b, 0, usize::MAX, 0, 0]),
        error::SUCCESS,
    );
    check_err(
        "rfence_remote_fence_i_all",
        call(eid::RFENCE, 0, [0, usize::MAX, 0, 0, 0, 0]),
        error::SUCCESS,
    );
    // The hfence calls are only valid on harts with the H extension (SBI 2.0 §8.4-8.7:
    // otherwise SBI_ERR_NOT_SUPPORTED). A guest of Diosix does not get H; OpenSBI on
    // QEMU does, which the DTB's riscv,isa tells us.
    let expect = if ctx().info.has_h {
        error::SUCCESS
    } else {
        error::NOT_SUPPORTED
    };
    for (fid, name) in [
        (3, "rfence_hfence_gvma_vmid"),
        (4, "rfence_hfence_gvma"),
        (5, "rfence_hfence_vvma_asid"),
        (6, "rfence_hfence_vvma"),
    ] {
        check_err(
            name,
            call(eid::RFENCE, fid, [m, b, 0, usize::MAX, 0, 0]),
            expect,
        );
    }
    let bad = invalid_hart();
    for (fid, name) in [
        (0, "rfence_fence_i_invalid_hart"),
        (1, "rfence_sfence_vma_invalid_hart"),
        (2, "rfence_sfence_vma_asid_invalid_hart"),
    ] {
        check_err(
            name,
            call(eid::RFENCE, fid, [1, bad, 0, usize::MAX, 0, 0]),
            error::INVALID_PARAM,
        );
    }
}

fn hsm_basic() {
    let me = ctx().me;
    let r = sbi::hart_status(me);
    check_err("hsm_get_status_self", r, error::SUCCESS);
    check("hsm_status_self_started", r.value, hart_state::STARTED);
    check_err(
        "hsm_get_status_invalid",
        sbi::hart_status(invalid_hart()),
        error::INVALID_PARAM,
    );
    check_err(
        "hsm_get_status_huge_id",
        sbi::hart_status(usize::MAX),
        error::INVALID_PARAM,
    );
    let entry = hart::secondary_entry_addr();
    // SAFETY: the call must fail (hart already started / no such hart); if it did
    // start something, it would be the runtime's entry point, which is safe.
    let r = unsafe { sbi::hart_start(me, entry, 0) };
    check_err(
        "hsm_start_self_already_available",
        r,
        error::ALREADY_AVAILABLE,
    );
    // SAFETY: as above.
    let r = unsafe { sbi::hart_start(invalid_hart(), entry, 0) };
    check_err("hsm_start_invalid_hart", r, error::INVALID_PARAM);
}

/// Per-hart state of helper harts started by the multi-hart checks.
static HELPER_OPAQUE: [AtomicUsize; diosix_guest_rt::MAX_HARTS] =
    [const { AtomicUsize::new(0) }; diosix_guest_rt::MAX_HARTS];
static HELPER_UP: [AtomicBool; diosix_guest_rt::MAX_HARTS] =
    [const { AtomicBool::new(false) }; diosix_guest_rt::MAX_HARTS];
static HELPERS_STOP: AtomicBool = AtomicBool::new(false);
const OPAQUE_MAGIC: usize = 0x5eed_0000_d105_1a00;

/// A started helper: records its opaque value, then takes IPIs until told to stop;
/// returning makes the runtime call hart_stop.
fn helper(hartid: usize, opaque: usize) {
    HELPER_OPAQUE[hartid].store(opaque, Ordering::Relaxed);
    trap::install();
    csr::sie_set(csr::SSI);
    trap::enable();
    HELPER_UP[hartid].store(true, Ordering::Release);
    trap::wait_until(|| HELPERS_STOP.load(Ordering::Acquire));
    trap::disable();
}

fn multi_hart() {
    let c = ctx();
    let me = c.me;
    let others: [usize; diosix_guest_rt::MAX_HARTS] = {
        let mut o = [usize::MAX; diosix_guest_rt::MAX_HARTS];
        for (i, &h) in c.info.harts().iter().filter(|&&h| h != me).enumerate() {
            o[i] = h;
        }
        o
    };
    let others = &others[..c.info.cpus - 1];
    let first = others[0];
    let r = sbi::hart_status(first);
    check(
        "hsm_status_stopped",
        r,
        SbiRet {
            error: 0,
            value: hart_state::STOPPED,
        },
    );

    // Start address that is not valid: SBI 2.0 §9.1 -> INVALID_ADDRESS.
    let (bad_addr, what) = if c.opensbi {
        note(
            "hsm_start_bad_address",
            "OpenSBI lets S-mode run anywhere outside its own image; testing its firmware region",
        );
        (0x8000_0000, "hsm_start_firmware_region")
    } else {
        (outside_ram(), "hsm_start_outside_ram")
    };
    // SAFETY: the call must be refused; nothing runs at the bad address if it is.
    let r = unsafe { sbi::hart_start(first, bad_addr, 0) };
    check_err(what, r, error::INVALID_ADDRESS);

    HELPERS_STOP.store(false, Ordering::Release);
    for &h in others {
        let r = hart::start(h, helper, OPAQUE_MAGIC ^ h);
        if !r.is_ok() {
            fail("hsm_hart_start", (h, r), "SUCCESS");
            return;
        }
    }
    pass("hsm_hart_start");
    let up = wait_for(ms(2000), || {
        others.iter().all(|&h| HELPER_UP[h].load(Ordering::Acquire))
    });
    check_true("hsm_started_harts_run", up, "every started hart runs");
    if !up {
        return;
    }
    let opaque_ok = others
        .iter()
        .all(|&h| HELPER_OPAQUE[h].load(Ordering::Relaxed) == OPAQUE_MAGIC ^ h);
    check_true("hsm_start_opaque_in_a1", opaque_ok, "a1 = opaque");
    check(
        "hsm_status_started",
        sbi::hart_status(first),
        SbiRet {
            error: 0,
            value: hart_state::STARTED,
        },
    );
    // SAFETY: must be refused (already started).
    let r = unsafe { sbi::hart_start(first, hart::secondary_entry_addr(), 0) };
    check_err(
        "hsm_start_started_already_available",
        r,
        error::ALREADY_AVAILABLE,
    );

    // IPIs to another hart, then to all of them through hart_mask_base = -1.
    let before = trap::soft_count(first);
    check_err("ipi_send_other", sbi::send_ipi(1, first), error::SUCCESS);
    let ok = wait_for(ms(1000), || trap::soft_count(first) > before);
    check_true("ipi_other_delivered", ok, "SSIP taken on the other hart");
    let counts: [usize; diosix_guest_rt::MAX_HARTS] = core::array::from_fn(trap::soft_count);
    check_err(
        "ipi_broadcast",
        sbi::send_ipi(0, usize::MAX),
        error::SUCCESS,
    );
    let ok = wait_for(ms(1000), || {
        others.iter().all(|&h| trap::soft_count(h) > counts[h])
    });
    check_true(
        "ipi_broadcast_delivered",
        ok,
        "every other hart took an IPI",
    );
    let ok = wait_for(ms(100), || csr::sip() & csr::SSI != 0);
    check_true(
        "ipi_broadcast_self_pending",
        ok,
        "sip.SSIP set on the sender",
    );
    csr::sip_clear(csr::SSI);
    // A mask naming every hart.
    let mut mask = 0usize;
    for &h in c.info.harts() {
        if h < 64 {
            mask |= 1 << h;
        }
    }
    check_err("ipi_send_mask_all", sbi::send_ipi(mask, 0), error::SUCCESS);
    csr::sip_clear(csr::SSI);

    // Remote fences on started harts.
    check_err(
        "rfence_fence_i_other",
        sbi::remote_fence_i(1, first),
        error::SUCCESS,
    );
    check_err(
        "rfence_sfence_vma_other",
        sbi::remote_sfence_vma(1, first, 0, usize::MAX),
        error::SUCCESS,
    );
    check_err(
        "rfence_fence_i_all_started",
        sbi::remote_fence_i(0, usize::MAX),
        error::SUCCESS,
    );
    check_err(
        "rfence_sfence_vma_asid_all_started",
        call(eid::RFENCE, 2, [mask, 0, 0, usize::MAX, 1, 0]),
        error::SUCCESS,
    );

    // hart_stop: the helpers return and the runtime stops them.
    HELPERS_STOP.store(true, Ordering::Release);
    sbi::send_ipi(0, usize::MAX);
    let stopped = wait_for(ms(2000), || {
        others
            .iter()
            .all(|&h| sbi::hart_status(h).value == hart_state::STOPPED)
    });
    csr::sip_clear(csr::SSI);
    check_true("hsm_hart_stop", stopped, "every helper STOPPED");
    // A stopped hart can be started again.
    HELPERS_STOP.store(false, Ordering::Release);
    HELPER_UP[first].store(false, Ordering::Release);
    let r = hart::start(first, helper, OPAQUE_MAGIC);
    check_err("hsm_restart_stopped_hart", r, error::SUCCESS);
    let up = wait_for(ms(2000), || HELPER_UP[first].load(Ordering::Acquire));
    check_true("hsm_restarted_hart_runs", up, "runs again");
    HELPERS_STOP.store(true, Ordering::Release);
    sbi::send_ipi(1, first);
    let stopped = wait_for(ms(2000), || {
        sbi::hart_status(first).value == hart_state::STOPPED
    });
    check_true("hsm_restarted_hart_stops", stopped, "STOPPED");
}

/// Hart mask for the legacy calls: they take a pointer to it (legacy §5.4).
static LEGACY_MASK: AtomicUsize = AtomicUsize::new(0);

fn legacy_calls() {
    let me = ctx().me;
    if me >= 64 {
        note(
            "legacy",
            "skipped: boot hart id >= 64 cannot be named by a legacy mask",
        );
        return;
    }
    LEGACY_MASK.store(1 << me, Ordering::Release);
    let mask_ptr = LEGACY_MASK.as_ptr() as usize;
    let r = legacy(eid::LEGACY_CONSOLE_PUTCHAR, [b'L' as usize, 0, 0, 0]);
    legacy(eid::LEGACY_CONSOLE_PUTCHAR, [b'\n' as usize, 0, 0, 0]);
    check("legacy_putchar", r, 0);
    check(
        "legacy_getchar_no_input",
        legacy(eid::LEGACY_CONSOLE_GETCHAR, [0; 4]),
        -1,
    );
    // set_timer (legacy): fires, and a far deadline clears the pending bit.
    check(
        "legacy_set_timer",
        legacy(
            eid::LEGACY_SET_TIMER,
            [(csr::time() + ms(1)) as usize, 0, 0, 0],
        ),
        0,
    );
    let ok = wait_for(ms(1000), || csr::sip() & csr::STI != 0);
    check_true("legacy_set_timer_fires", ok, "sip.STIP set");
    legacy(eid::LEGACY_SET_TIMER, [usize::MAX, 0, 0, 0]);
    check("legacy_set_timer_max_clears", csr::sip() & csr::STI, 0);
    // send_ipi through a mask pointer, then clear_ipi.
    check(
        "legacy_send_ipi",
        legacy(eid::LEGACY_SEND_IPI, [mask_ptr, 0, 0, 0]),
        0,
    );
    let ok = wait_for(ms(100), || csr::sip() & csr::SSI != 0);
    check_true("legacy_send_ipi_pending", ok, "sip.SSIP set");
    check("legacy_clear_ipi", legacy(eid::LEGACY_CLEAR_IPI, [0; 4]), 0);
    check("legacy_clear_ipi_clears", csr::sip() & csr::SSI, 0);
    csr::sip_clear(csr::SSI);
    check(
        "legacy_remote_fence_i",
        legacy(eid::LEGACY_REMOTE_FENCE_I, [mask_ptr, 0, 0, 0]),
        0,
    );
    check(
        "legacy_remote_sfence_vma",
        legacy(eid::LEGACY_REMOTE_SFENCE_VMA, [mask_ptr, 0, usize::MAX, 0]),
        0,
    );
    check(
        "legacy_remote_sfence_vma_asid",
        legacy(
            eid::LEGACY_REMOTE_SFENCE_VMA_ASID,
            [mask_ptr, 0, usize::MAX, 0],
        ),
        0,
    );
}

/// A one-page Sv39 root table for [`legacy_calls_under_paging`].
#[repr(C, align(4096))]
struct RootTable([AtomicU64; 512]);

static VS_ROOT: RootTable = RootTable([const { AtomicU64::new(0) }; 512]);

/// Legacy calls take the hart mask by pointer, which under paging is a virtual address
/// the firmware must translate through the caller's page tables. With an Sv39 table
/// mapping RAM at its own address (so this code keeps running) and again 1 GiB higher,
/// the mask is passed through the alias: only a real walk of the table finds it.
fn legacy_calls_under_paging() {
    let me = ctx().me;
    if me >= 64 {
        return;
    }
    const RAM: usize = 0x8000_0000;
    const ALIAS: usize = 0xC000_0000;
    // V R W X A D: a 1 GiB leaf at root index 2 (identity) and 3 (the alias).
    let leaf = ((RAM as u64 >> 12) << 10) | 0xcf;
    VS_ROOT.0[2].store(leaf, Ordering::Relaxed);
    VS_ROOT.0[3].store(leaf, Ordering::Relaxed);
    LEGACY_MASK.store(1 << me, Ordering::Release);
    let mask_ptr = LEGACY_MASK.as_ptr() as usize;
    if !(RAM..ALIAS).contains(&mask_ptr) {
        note("legacy_under_paging", "skipped: RAM is not at 0x8000_0000");
        return;
    }
    let alias = mask_ptr - RAM + ALIAS;
    let satp = (8usize << 60) | (VS_ROOT.0.as_ptr() as usize >> 12);
    // SAFETY: the table maps the RAM this program runs from at the same addresses, so
    // execution continues; it is switched off again below, and no other hart uses it.
    unsafe { core::arch::asm!("sfence.vma", "csrw satp, {0}", "sfence.vma", in(reg) satp) };
    check(
        "legacy_remote_fence_i_under_paging",
        legacy(eid::LEGACY_REMOTE_FENCE_I, [alias, 0, 0, 0]),
        0,
    );
    check(
        "legacy_send_ipi_under_paging",
        legacy(eid::LEGACY_SEND_IPI, [alias, 0, 0, 0]),
        0,
    );
    let ok = wait_for(ms(100), || csr::sip() & csr::SSI != 0);
    check_true("legacy_send_ipi_under_paging_pending", ok, "sip.SSIP set");
    csr::sip_clear(csr::SSI);
    if !ctx().opensbi {
        // An unmapped pointer: Diosix refuses the call (OpenSBI would hand the guest a
        // page fault instead).
        check(
            "legacy_send_ipi_unmapped_mask",
            legacy(eid::LEGACY_SEND_IPI, [0x1000, 0, 0, 0]),
            error::INVALID_ADDRESS,
        );
    }
    // SAFETY: back to no translation, which is how the rest of the program runs.
    unsafe { core::arch::asm!("csrw satp, zero", "sfence.vma") };
}

/// Whether extension `eid` is offered: Diosix must offer it (a failed `<name>_probe`
/// otherwise); QEMU's OpenSBI may not (then the checks are skipped with a note).
fn offered(eid: usize, name: &str) -> bool {
    if sbi::probe(eid) != 0 {
        return true;
    }
    if ctx().opensbi {
        note(name, "skipped: not offered");
    } else {
        report::fail_with(format_args!("{name}_probe: got 0 expected offered"));
    }
    false
}

/// PMU function IDs and the flags the checks use.
mod pmu_fid {
    pub const PMU: usize = 0x50_4d55;
    pub const NUM_COUNTERS: usize = 0;
    pub const GET_INFO: usize = 1;
    pub const CONFIG_MATCHING: usize = 2;
    pub const START: usize = 3;
    pub const STOP: usize = 4;
    pub const FW_READ: usize = 5;
    pub const FW_READ_HI: usize = 6;
    pub const CLEAR_VALUE: usize = 1 << 1;
    pub const AUTO_START: usize = 1 << 2;
    pub const INIT_VALUE: usize = 1;
    pub const RESET: usize = 1;
    pub const INSTRUCTIONS: usize = 2;
    pub const FW_SET_TIMER: usize = 0xf_0005;
    pub const FW_IPI_SENT: usize = 0xf_0006;
    pub const FW_IPI_RECEIVED: usize = 0xf_0007;
    pub const FW_PLATFORM: usize = 0xf_ffff;
}

/// What the helper hart saw in the counters it does not own (bits OR-ed together).
static PEEKED: AtomicU64 = AtomicU64::new(0);
/// The counter CSR the helper reads.
static PEEK_CSR: AtomicUsize = AtomicUsize::new(0);

/// Computes until told to stop, reading the counter the boot hart configured: it must
/// never see a count, whether it shares the boot hart's host hart or not.
fn counter_peeker(_hartid: usize, _opaque: usize) {
    BUSY_UP.store(true, Ordering::Release);
    let csr = PEEK_CSR.load(Ordering::Acquire);
    while !BUSY_STOP.load(Ordering::Acquire) {
        if let Some(v) = csr::read_counter(csr) {
            PEEKED.fetch_or(v, Ordering::Relaxed);
        }
        core::hint::spin_loop();
    }
}

/// SBI PMU: discovery, every error code, a firmware counter of this vCPU's SBI calls,
/// and (under `-icount`) a hardware counter of retired instructions that counts this
/// vCPU's own instructions only, while another vCPU computes on the same host hart.
fn pmu() {
    use pmu_fid::*;
    if !offered(PMU, "pmu") {
        return;
    }
    let p = |f: usize, a: [usize; 5]| call(PMU, f, [a[0], a[1], a[2], a[3], a[4], 0]);
    let n = p(NUM_COUNTERS, [0; 5]);
    check_err("pmu_num_counters", n, error::SUCCESS);
    let total = n.value.min(63);
    let all = (1usize << total) - 1;
    let mut infos_ok = true;
    for i in 0..total {
        let r = p(GET_INFO, [i, 0, 0, 0, 0]);
        let hw_csr = r.value & 0xfff;
        let fw = r.value >> 63 == 1;
        if r.error != error::SUCCESS || (!fw && !(0xc00..=0xc1f).contains(&hw_csr)) {
            infos_ok = false;
            println!(
                "info pmu counter {i}: error {} info {:#x}",
                r.error, r.value
            );
        }
    }
    check_true("pmu_get_info_all", infos_ok, "every counter described");
    check_err(
        "pmu_get_info_past_end",
        p(GET_INFO, [total, 0, 0, 0, 0]),
        error::INVALID_PARAM,
    );
    check_err(
        "pmu_config_set_past_end",
        p(CONFIG_MATCHING, [total, 1, 0, INSTRUCTIONS, 0]),
        error::INVALID_PARAM,
    );
    check_err(
        "pmu_start_set_past_end",
        p(START, [total - 1, 3, 0, 0, 0]),
        error::INVALID_PARAM,
    );
    if !ctx().opensbi {
        // OpenSBI takes some of these as valid; Diosix follows the spec's tables.
        check_err(
            "pmu_config_no_event",
            p(CONFIG_MATCHING, [0, all, 0, 0, 0]),
            error::INVALID_PARAM,
        );
        check_err(
            "pmu_config_reserved_flags",
            p(CONFIG_MATCHING, [0, all, 1 << 8, INSTRUCTIONS, 0]),
            error::INVALID_PARAM,
        );
        check_err(
            "pmu_config_raw_event",
            p(CONFIG_MATCHING, [0, all, 0, 0x2_0000, 0x1]),
            error::NOT_SUPPORTED,
        );
        check_err(
            "pmu_config_platform_event_unknown",
            p(CONFIG_MATCHING, [0, all, 0, FW_PLATFORM, 0x1000]),
            error::NOT_SUPPORTED,
        );
    }

    // A firmware counter: this vCPU's set_timer calls.
    let r = p(
        CONFIG_MATCHING,
        [0, all, CLEAR_VALUE | AUTO_START, FW_SET_TIMER, 0],
    );
    check_err("pmu_fw_config", r, error::SUCCESS);
    let fw = r.value;
    for _ in 0..3 {
        sbi::set_timer(u64::MAX);
    }
    check_err("pmu_fw_read", p(FW_READ, [fw, 0, 0, 0, 0]), error::SUCCESS);
    check(
        "pmu_fw_set_timer_count",
        p(FW_READ, [fw, 0, 0, 0, 0]).value,
        3,
    );
    check_err("pmu_fw_stop", p(STOP, [fw, 1, 0, 0, 0]), error::SUCCESS);
    check_err(
        "pmu_fw_stop_again",
        p(STOP, [fw, 1, 0, 0, 0]),
        error::ALREADY_STOPPED,
    );
    sbi::set_timer(u64::MAX);
    check(
        "pmu_fw_stopped_count",
        p(FW_READ, [fw, 0, 0, 0, 0]).value,
        3,
    );
    check_err(
        "pmu_fw_start_value",
        p(START, [fw, 1, INIT_VALUE, 100, 0]),
        error::SUCCESS,
    );
    check_err(
        "pmu_fw_start_again",
        p(START, [fw, 1, 0, 0, 0]),
        error::ALREADY_STARTED,
    );
    sbi::set_timer(u64::MAX);
    check(
        "pmu_fw_initial_value",
        p(FW_READ, [fw, 0, 0, 0, 0]).value,
        101,
    );
    if !ctx().opensbi {
        check(
            "pmu_fw_read_hi",
            p(FW_READ_HI, [fw, 0, 0, 0, 0]),
            SbiRet { error: 0, value: 0 },
        );
    }
    // IPIs to itself: one sent, one received, per call.
    let sent = p(
        CONFIG_MATCHING,
        [0, all, CLEAR_VALUE | AUTO_START, FW_IPI_SENT, 0],
    );
    let got = p(
        CONFIG_MATCHING,
        [0, all, CLEAR_VALUE | AUTO_START, FW_IPI_RECEIVED, 0],
    );
    check_err("pmu_fw_ipi_config", sent, error::SUCCESS);
    check_err("pmu_fw_ipi_config_2", got, error::SUCCESS);
    for _ in 0..2 {
        sbi::send_ipi(1, ctx().me);
        csr::sip_clear(csr::SSI);
    }
    check(
        "pmu_fw_ipi_sent",
        p(FW_READ, [sent.value, 0, 0, 0, 0]).value,
        2,
    );
    check(
        "pmu_fw_ipi_received",
        p(FW_READ, [got.value, 0, 0, 0, 0]).value,
        2,
    );
    for c in [fw, sent.value, got.value] {
        let r = p(STOP, [c, 1, RESET, 0, 0]);
        check_true(
            "pmu_fw_release",
            r.error == error::SUCCESS || r.error == error::ALREADY_STOPPED,
            "SUCCESS or ALREADY_STOPPED",
        );
    }
    check_err(
        "pmu_fw_read_released",
        p(FW_READ, [fw, 0, 0, 0, 0]),
        error::INVALID_PARAM,
    );
    if !ctx().opensbi {
        // Diosix's platform event 1: SBI calls (this vCPU's exits by ecall).
        let r = p(
            CONFIG_MATCHING,
            [0, all, CLEAR_VALUE | AUTO_START, FW_PLATFORM, 1],
        );
        for _ in 0..10 {
            sbi::probe(PMU);
        }
        let calls = p(FW_READ, [r.value, 0, 0, 0, 0]).value;
        check_err("pmu_platform_config", r, error::SUCCESS);
        // Ten probes and the read itself (no console output in between).
        check("pmu_platform_sbi_calls", calls, 11);
        p(STOP, [r.value, 1, RESET, 0, 0]);
    }

    // A hardware counter of retired instructions.
    let r = p(CONFIG_MATCHING, [0, all, CLEAR_VALUE, INSTRUCTIONS, 0]);
    if r.error == error::NOT_SUPPORTED {
        note("pmu_hw", "skipped: no hardware counter counts instructions");
        return;
    }
    check_err("pmu_hw_config", r, error::SUCCESS);
    let hw = r.value;
    let info = p(GET_INFO, [hw, 0, 0, 0, 0]).value;
    let csr_no = info & 0xfff;
    check_true("pmu_hw_is_hardware", info >> 63 == 0, "a hardware counter");
    check_err(
        "pmu_fw_read_of_hw",
        p(FW_READ, [hw, 0, 0, 0, 0]),
        error::INVALID_PARAM,
    );
    // A second vCPU computes meanwhile (on the same host hart when the harness says
    // so), reading the same counter: it must see only zeros, its own.
    let me = ctx().me;
    let helper_hart = ctx().info.harts().iter().copied().find(|&h| h != me);
    PEEKED.store(0, Ordering::Relaxed);
    PEEK_CSR.store(if ctx().opensbi { 0 } else { csr_no }, Ordering::Release);
    if let Some(h) = helper_hart {
        BUSY_STOP.store(false, Ordering::Release);
        BUSY_UP.store(false, Ordering::Release);
        check_err(
            "pmu_peeker_start",
            hart::start(h, counter_peeker, 0),
            error::SUCCESS,
        );
        wait_for(ms(2000), || BUSY_UP.load(Ordering::Acquire));
    }
    let until = csr::time() + ms(60);
    check_err(
        "pmu_hw_start",
        p(START, [hw, 1, INIT_VALUE, 0, 0]),
        error::SUCCESS,
    );
    let iters = csr::spin_counting(until);
    check_err("pmu_hw_stop", p(STOP, [hw, 1, 0, 0, 0]), error::SUCCESS);
    let count = csr::read_counter(csr_no).unwrap_or(0);
    if let Some(h) = helper_hart {
        BUSY_STOP.store(true, Ordering::Release);
        let stopped = wait_for(ms(2000), || {
            sbi::hart_status(h).value == hart_state::STOPPED
        });
        check_true("pmu_peeker_stopped", stopped, "STOPPED");
        if !ctx().opensbi {
            check(
                "pmu_hw_other_vcpu_sees_nothing",
                PEEKED.load(Ordering::Relaxed),
                0,
            );
        }
    }
    let own = 3 * iters;
    println!("info pmu instructions counted {count}, loop retired {own}");
    if ctx().icount && !ctx().opensbi {
        // Everything retired between the start call's return and the stop call: the
        // loop, a few instructions around it, and, unless the hart can leave M-mode
        // out (Sscofpmf), the hypervisor's work on this vCPU's exits in between.
        // (QEMU 10 with Sscofpmf measured 679 beyond the loop over 30 M; without,
        // 3,924.)
        let slack = if ctx().sscofpmf {
            2_000
        } else {
            own / 50 + 20_000
        };
        check_true(
            "pmu_hw_counts_own_instructions",
            count >= own && count <= own + slack,
            "the loop's instructions, give or take the calls around it",
        );
    } else {
        check_true("pmu_hw_counted", count > 0, "a count");
        note(
            "pmu_hw_exact",
            "skipped: no -icount, instructions are host ticks",
        );
    }
    let later = csr::read_counter(csr_no).unwrap_or(0);
    check("pmu_hw_stopped_stays", later, count);
    pmu_overflow(hw, csr_no);
    check_err(
        "pmu_hw_stop_again",
        p(STOP, [hw, 1, 0, 0, 0]),
        error::ALREADY_STOPPED,
    );
    let r = p(STOP, [hw, 1, RESET, 0, 0]);
    check_true(
        "pmu_hw_release",
        r.error == error::SUCCESS || r.error == error::ALREADY_STOPPED,
        "SUCCESS or ALREADY_STOPPED",
    );
    check_err(
        "pmu_hw_start_released",
        p(START, [hw, 1, 0, 0, 0]),
        error::INVALID_PARAM,
    );
}

/// `sip`/`sie` bit of the local counter-overflow interrupt (Sscofpmf).
const LCOFI: usize = 1 << 13;

/// Reads `scountovf` (Sscofpmf): bit `n` is `hpmcounter n`'s overflow flag.
fn scountovf() -> usize {
    let v: usize;
    // SAFETY: reading the overflow flags has no side effects; called only where the
    // device tree names Sscofpmf.
    unsafe { core::arch::asm!("csrr {}, 0xda0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Where the device tree names Sscofpmf: counter `hw` (already configured, stopped),
/// started 50,000 events before it wraps, overflows: its `scountovf` bit is set and
/// the overflow interrupt is pending in `sip` (polled, not taken); stopping it and
/// clearing `sip` ends it.
fn pmu_overflow(hw: usize, csr_no: usize) {
    use pmu_fid::*;
    if !ctx().info.has_sscofpmf {
        if !ctx().opensbi {
            note(
                "pmu_overflow",
                "skipped: the device tree does not name sscofpmf",
            );
        }
        return;
    }
    let p = |f: usize, a: [usize; 5]| call(PMU, f, [a[0], a[1], a[2], a[3], a[4], 0]);
    let bit = 1usize << (csr_no - 0xc00);
    check_err(
        "pmu_overflow_start",
        p(START, [hw, 1, INIT_VALUE, 50_000usize.wrapping_neg(), 0]),
        error::SUCCESS,
    );
    let pending = wait_for(ms(200), || csr::sip() & LCOFI != 0);
    let flags = scountovf();
    check_err(
        "pmu_overflow_stop",
        p(STOP, [hw, 1, 0, 0, 0]),
        error::SUCCESS,
    );
    check_true("pmu_overflow_interrupt", pending, "LCOFI pending in sip");
    check_true(
        "pmu_overflow_scountovf",
        flags & bit != 0,
        "the counter's OF bit",
    );
    check_true(
        "pmu_overflow_wrapped",
        csr::read_counter(csr_no).unwrap_or(u64::MAX) < 1_000_000,
        "a small count past zero",
    );
    csr::sip_clear(LCOFI);
    check("pmu_overflow_cleared", csr::sip() & LCOFI, 0);
}

/// SBI 3.0 FWFT: reserved IDs, bad values and flags, locks, and both features in
/// effect: a misaligned AMO reaches this guest's own handler, and with hardware A/D
/// updating a page-table entry without A/D bits is updated instead of faulting.
fn fwft() {
    const FWFT: usize = 0x4657_4654;
    const SET: usize = 0;
    const GET: usize = 1;
    const MISALIGNED: usize = 0;
    const PTE_AD: usize = 4;
    const LOCK: usize = 1;
    if !offered(FWFT, "fwft") {
        return;
    }
    let set = |id: usize, v: usize, fl: usize| call(FWFT, SET, [id, v, fl, 0, 0, 0]);
    let get = |id: usize| call(FWFT, GET, [id, 0, 0, 0, 0, 0]);
    check_err("fwft_bad_fid", call(FWFT, 2, [0; 6]), error::NOT_SUPPORTED);
    for id in [6usize, 0x4000_0000, 0x8000_0000, 0xc000_0000] {
        check_err("fwft_get_reserved", get(id), error::DENIED);
        check_err("fwft_set_reserved", set(id, 1, 0), error::DENIED);
    }
    check_err(
        "fwft_set_bad_flags",
        set(PTE_AD, 0, 2),
        error::INVALID_PARAM,
    );
    check_err(
        "fwft_set_bad_value",
        set(PTE_AD, 2, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "fwft_set_value_high_bits",
        set(PTE_AD, 1 << 32, 0),
        error::INVALID_PARAM,
    );
    // Misaligned exceptions: delegated (Diosix refuses to take them back).
    check("fwft_misaligned_get", get(MISALIGNED).value, 1);
    check_err(
        "fwft_misaligned_set_1",
        set(MISALIGNED, 1, 0),
        error::SUCCESS,
    );
    if !ctx().opensbi {
        check_err(
            "fwft_misaligned_set_0_denied",
            set(MISALIGNED, 0, 0),
            error::DENIED,
        );
    }
    let word = AtomicU64::new(0);
    let skipped = trap::recovering(|| {
        // SAFETY: a 4-byte AMO one byte into an 8-byte local: misaligned, so it traps
        // (to this guest's handler, which steps over it) rather than writing.
        unsafe {
            core::arch::asm!(
                "amoadd.w zero, {one}, ({addr})",
                one = in(reg) 1usize,
                addr = in(reg) (word.as_ptr() as usize) + 1,
                options(nostack)
            )
        };
    });
    check("fwft_misaligned_amo_reaches_guest", skipped, 1);
    // Hardware A/D updating in this guest's page tables, where the host has Svadu.
    let ad = get(PTE_AD);
    if ad.error == error::NOT_SUPPORTED {
        note("fwft_pte_ad", "skipped: no Svadu on this host");
    } else {
        check_err("fwft_pte_ad_get", ad, error::SUCCESS);
        check("fwft_pte_ad_resets_to_0", ad.value, 0);
        fwft_pte_ad(0);
        check_err(
            "fwft_pte_ad_set_1",
            set(PTE_AD | 1 << 32, 1, 0),
            error::SUCCESS,
        );
        check("fwft_pte_ad_get_1", get(PTE_AD).value, 1);
        fwft_pte_ad(1);
        check_err("fwft_pte_ad_lock", set(PTE_AD, 0, LOCK), error::SUCCESS);
        for (v, fl) in [(1, 0), (0, LOCK)] {
            check_err(
                "fwft_pte_ad_locked",
                set(PTE_AD, v, fl),
                error::DENIED_LOCKED,
            );
        }
        check("fwft_pte_ad_locked_value", get(PTE_AD).value, 0);
    }
}

/// DBTR shared memory: 8 entries of 4 words.
static DBTR_SHMEM: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];
/// The word the test's load trigger watches.
static DBTR_TARGET: AtomicU64 = AtomicU64::new(0);

/// SBI DBTR: a load trigger on a word of this guest, installed, disabled, enabled and
/// uninstalled, each time checked by reading the word (a breakpoint exception reaches
/// this guest's own handler while the trigger is on); the state read back; refusals.
fn dbtr() {
    const DBTR: usize = 0x4442_5452;
    const MCONTROL6: u64 = 6 << 60;
    const S: u64 = 1 << 4;
    const M: u64 = 1 << 6;
    const LOAD: u64 = 1;
    if !offered(DBTR, "dbtr") {
        return;
    }
    let call3 = |fid: usize, a: usize, b: usize, c: usize| call(DBTR, fid, [a, b, c, 0, 0, 0]);
    let n = call3(0, 0, 0, 0).value;
    println!("info dbtr triggers {n}");
    if n == 0 {
        note("dbtr", "skipped: no debug triggers on this host");
        return;
    }
    check_err("dbtr_read_no_shmem", call3(2, 0, 1, 0), error::NO_SHMEM);
    let shm = DBTR_SHMEM.as_ptr() as usize;
    check_err(
        "dbtr_shmem_misaligned",
        call3(1, shm + 4, 0, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "dbtr_shmem_outside_ram",
        call3(1, outside_ram() & !7, 0, 0),
        error::INVALID_ADDRESS,
    );
    check_err("dbtr_set_shmem", call3(1, shm, 0, 0), error::SUCCESS);
    check_err("dbtr_read_bad_range", call3(2, n, 1, 0), error::BAD_RANGE);
    let target = DBTR_TARGET.as_ptr() as u64;
    let put = |w: [u64; 4]| {
        for (i, v) in w.iter().enumerate() {
            DBTR_SHMEM[i].store(*v, Ordering::Relaxed);
        }
    };
    // An M-mode trigger is refused, naming entry 0.
    put([0, MCONTROL6 | M | LOAD, target, 0]);
    let r = call3(3, 1, 0, 0);
    check_err("dbtr_install_m_mode_refused", r, error::INVALID_PARAM);
    let watch = || {
        trap::recovering(|| {
            // SAFETY: reads this program's own static.
            unsafe { core::ptr::read_volatile(DBTR_TARGET.as_ptr()) };
        })
    };
    check("dbtr_no_trigger_no_break", watch(), 0);
    put([0, MCONTROL6 | S | LOAD, target, 0]);
    check_err("dbtr_install", call3(3, 1, 0, 0), error::SUCCESS);
    let idx = DBTR_SHMEM[0].load(Ordering::Relaxed) as usize;
    check("dbtr_load_breaks", watch(), 1);
    check_err("dbtr_disable", call3(7, idx, 1, 0), error::SUCCESS);
    check("dbtr_disabled_no_break", watch(), 0);
    check_err("dbtr_enable", call3(6, idx, 1, 0), error::SUCCESS);
    check("dbtr_enabled_breaks", watch(), 1);
    check_err("dbtr_read", call3(2, idx, 1, 0), error::SUCCESS);
    let state = DBTR_SHMEM[0].load(Ordering::Relaxed);
    check(
        "dbtr_read_state_mapped_s",
        state & 0b111111,
        (1 << 5) | (1 << 2) | 1,
    );
    check(
        "dbtr_read_tdata2",
        DBTR_SHMEM[2].load(Ordering::Relaxed),
        target,
    );
    check_err("dbtr_uninstall", call3(5, idx, 1, 0), error::SUCCESS);
    check("dbtr_uninstalled_no_break", watch(), 0);
    check_err(
        "dbtr_uninstall_again",
        call3(5, idx, 1, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "dbtr_clear_shmem",
        call3(1, usize::MAX, usize::MAX, 0),
        error::SUCCESS,
    );
}

/// A steal-time record (64 bytes, 64-byte aligned).
#[repr(C, align(64))]
struct StaRecord([AtomicU64; 8]);

static STA_RECORD: StaRecord = StaRecord([const { AtomicU64::new(0) }; 8]);
static BUSY_STOP: AtomicBool = AtomicBool::new(false);
static BUSY_UP: AtomicBool = AtomicBool::new(false);

/// A started helper that only computes (never waits) until told to stop.
fn busy_helper(_hartid: usize, _opaque: usize) {
    BUSY_UP.store(true, Ordering::Release);
    while !BUSY_STOP.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
}

/// SBI STA: the record's checks, its zeroing, and steal time as this vCPU sees it
/// while it and a busy helper compute for 100 ms: about half of it when they share
/// one host hart (the harness says so), next to none when each has its own.
fn sta() {
    const STA: usize = 0x53_5441;
    if !offered(STA, "sta") {
        return;
    }
    let set = |lo: usize, hi: usize, fl: usize| call(STA, 0, [lo, hi, fl, 0, 0, 0]);
    let rec = STA_RECORD.0.as_ptr() as usize;
    check_err("sta_flags_nonzero", set(rec, 0, 1), error::INVALID_PARAM);
    check_err("sta_misaligned", set(rec + 8, 0, 0), error::INVALID_PARAM);
    check_err(
        "sta_upper_half_nonzero",
        set(rec, 1, 0),
        error::INVALID_ADDRESS,
    );
    check_err(
        "sta_outside_ram",
        set(outside_ram() & !63, 0, 0),
        error::INVALID_ADDRESS,
    );
    for w in &STA_RECORD.0 {
        w.store(u64::MAX, Ordering::Relaxed);
    }
    check_err("sta_set_shmem", set(rec, 0, 0), error::SUCCESS);
    let zeroed = STA_RECORD.0.iter().all(|w| w.load(Ordering::Relaxed) == 0);
    check_true("sta_record_zeroed", zeroed, "all 64 bytes zero");
    let me = ctx().me;
    let helper_hart = ctx().info.harts().iter().copied().find(|&h| h != me);
    if let Some(h) = helper_hart {
        BUSY_STOP.store(false, Ordering::Release);
        BUSY_UP.store(false, Ordering::Release);
        check_err(
            "sta_busy_helper",
            hart::start(h, busy_helper, 0),
            error::SUCCESS,
        );
        wait_for(ms(2000), || BUSY_UP.load(Ordering::Acquire));
    }
    let t0 = csr::time();
    while csr::time() - t0 < ms(100) {
        core::hint::spin_loop();
    }
    let elapsed_ns = (csr::time() - t0) * 1_000_000_000 / ctx().info.timebase;
    if let Some(h) = helper_hart {
        BUSY_STOP.store(true, Ordering::Release);
        let stopped = wait_for(ms(2000), || {
            sbi::hart_status(h).value == hart_state::STOPPED
        });
        check_true("sta_busy_helper_stopped", stopped, "STOPPED");
    }
    let sequence = STA_RECORD.0[0].load(Ordering::Acquire) as u32;
    let steal = STA_RECORD.0[1].load(Ordering::Acquire);
    println!("info sta steal {steal} ns over {elapsed_ns} ns");
    check("sta_sequence_even", sequence % 2, 0);
    if ctx().shared_hart && helper_hart.is_some() {
        check_true(
            "sta_shared_hart_steal",
            steal >= elapsed_ns / 4,
            "a quarter of the time or more",
        );
    } else {
        check_true(
            "sta_own_hart_little_steal",
            steal <= elapsed_ns / 10,
            "a tenth of the time or less",
        );
    }
    check_err(
        "sta_disable",
        set(usize::MAX, usize::MAX, 0),
        error::SUCCESS,
    );
}

/// Reads and writes RAM through a 1 GiB alias whose entry has no A/D bits: with
/// hardware updating off each access page-faults (stepped over), with it on the entry
/// gains A, then D.
fn fwft_pte_ad(enabled: usize) {
    const RAM: usize = 0x8000_0000;
    const ALIAS: usize = 0xC000_0000;
    const A: u64 = 1 << 6;
    const D: u64 = 1 << 7;
    let target = &LEGACY_MASK;
    let ptr = target.as_ptr() as usize;
    if !(RAM..ALIAS).contains(&ptr) {
        note("fwft_pte_ad", "skipped: RAM is not at 0x8000_0000");
        return;
    }
    let base = (RAM as u64 >> 12) << 10;
    VS_ROOT.0[2].store(base | 0xcf, Ordering::Relaxed);
    VS_ROOT.0[3].store(base | 0x0f, Ordering::Relaxed);
    let alias = ptr - RAM + ALIAS;
    let satp = (8usize << 60) | (VS_ROOT.0.as_ptr() as usize >> 12);
    // SAFETY: as in `legacy_calls_under_paging`: RAM stays mapped at its own address.
    unsafe { core::arch::asm!("sfence.vma", "csrw satp, {0}", "sfence.vma", in(reg) satp) };
    let faults_read = trap::recovering(|| {
        // SAFETY: the alias maps this static's own page.
        unsafe { core::ptr::read_volatile(alias as *const usize) };
    });
    let after_read = VS_ROOT.0[3].load(Ordering::Relaxed);
    let faults_write = trap::recovering(|| {
        // SAFETY: as above; the value is the one it already holds.
        unsafe { core::ptr::write_volatile(alias as *mut usize, target.load(Ordering::Relaxed)) };
    });
    let after_write = VS_ROOT.0[3].load(Ordering::Relaxed);
    // SAFETY: back to no translation.
    unsafe { core::arch::asm!("csrw satp, zero", "sfence.vma") };
    if enabled == 1 {
        check("fwft_pte_ad_on_read_no_fault", faults_read, 0);
        check("fwft_pte_ad_on_read_sets_a", after_read & (A | D), A);
        check("fwft_pte_ad_on_write_no_fault", faults_write, 0);
        check("fwft_pte_ad_on_write_sets_d", after_write & (A | D), A | D);
    } else {
        check("fwft_pte_ad_off_read_faults", faults_read, 1);
        check("fwft_pte_ad_off_write_faults", faults_write, 1);
        check("fwft_pte_ad_off_entry_untouched", after_write & (A | D), 0);
    }
}

fn suspend_retentive() {
    // Retentive suspend returns SUCCESS once an enabled interrupt is pending, even with
    // sstatus.SIE clear (SBI 2.0 §9.4).
    csr::sie_set(csr::STI);
    sbi::set_timer(csr::time() + ms(2));
    let r = sbi::hart_suspend_retentive();
    check_err("hsm_suspend_retentive", r, error::SUCCESS);
    check_true(
        "hsm_suspend_retentive_woken_by_timer",
        csr::sip() & csr::STI != 0,
        "sip.STIP set after resume",
    );
    sbi::set_timer(u64::MAX);
    csr::sie_clear(csr::STI);
    // Reserved suspend types -> INVALID_PARAM.
    for (t, name) in [
        (0x0000_0001usize, "hsm_suspend_reserved_retentive_type"),
        (0x8000_0001, "hsm_suspend_reserved_non_retentive_type"),
    ] {
        check_err(
            name,
            call(eid::HSM, 3, [t, hart::secondary_entry_addr(), 0, 0, 0, 0]),
            error::INVALID_PARAM,
        );
    }
    // Non-retentive with a resume address that is not valid -> INVALID_ADDRESS.
    let (bad, name) = if ctx().opensbi {
        (0x8000_0000, "hsm_suspend_resume_addr_firmware_region")
    } else {
        (outside_ram(), "hsm_suspend_resume_addr_outside_ram")
    };
    check_err(
        name,
        call(eid::HSM, 3, [0x8000_0000, bad, 0, 0, 0, 0]),
        error::INVALID_ADDRESS,
    );
}

fn srst_invalid() {
    // Reserved reset type / reason -> INVALID_PARAM (SBI 2.0 §10.1). If one of these
    // were wrongly accepted the guest would reset here and the harness reports the
    // missing summary line.
    check_err(
        "srst_reserved_type",
        sbi::system_reset(3, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "srst_reserved_type_high",
        sbi::system_reset(0xEFFF_FFFF, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "srst_reserved_reason",
        sbi::system_reset(0, 2),
        error::INVALID_PARAM,
    );
}

const RESUME_MAGIC: usize = 0x0dd_ba11_cafe;

fn suspend_non_retentive() {
    csr::sie_set(csr::STI);
    sbi::set_timer(csr::time() + ms(2));
    let r = hart::suspend_non_retentive(resumed, RESUME_MAGIC);
    // Only reached if the suspend was refused.
    fail("hsm_suspend_non_retentive", r, "resume at resume_addr");
    sbi::set_timer(u64::MAX);
    finish();
}

/// Resume point of the non-retentive suspend: fresh stack, a0 = hart id, a1 = opaque.
fn resumed(hartid: usize, opaque: usize) {
    sbi::set_timer(u64::MAX);
    csr::sie_clear(csr::STI);
    trap::install();
    pass("hsm_suspend_non_retentive");
    check("hsm_resume_hartid", hartid, ctx().me);
    check("hsm_resume_opaque_in_a1", opaque, RESUME_MAGIC);
    check(
        "hsm_resume_sstatus_sie_clear",
        csr::sstatus() & csr::SSTATUS_SIE,
        0,
    );
    system_suspend();
}

const SUSP_MAGIC: usize = 0x5055_be0d;

/// SUSP: reserved and platform sleep types refused; refused while another hart runs
/// and for a resume address outside RAM; then SUSPEND_TO_RAM (passed with garbage in
/// the upper 32 bits, which the SBI ignores) with a timer armed to wake it: the hart
/// resumes at the resume address with a0 = its hart, a1 = opaque.
fn system_suspend() {
    if !offered(eid::SUSP, "susp") {
        finish();
    }
    for t in [1usize, 0x7fff_ffff, 0x8000_0000] {
        let r = hart::system_suspend(t, susp_resumed, SUSP_MAGIC);
        check_err("susp_bad_sleep_type", r, error::INVALID_PARAM);
    }
    let me = ctx().me;
    let other = ctx().info.harts().iter().copied().find(|&h| h != me);
    if let Some(h) = other {
        HELPERS_STOP.store(false, Ordering::Release);
        HELPER_UP[h].store(false, Ordering::Release);
        check_err(
            "susp_helper_start",
            hart::start(h, helper, OPAQUE_MAGIC),
            error::SUCCESS,
        );
        wait_for(ms(2000), || HELPER_UP[h].load(Ordering::Acquire));
        let r = hart::system_suspend(0, susp_resumed, SUSP_MAGIC);
        check_err("susp_other_hart_running_denied", r, error::DENIED);
        HELPERS_STOP.store(true, Ordering::Release);
        sbi::send_ipi(1, h);
        let stopped = wait_for(ms(2000), || {
            sbi::hart_status(h).value == hart_state::STOPPED
        });
        check_true("susp_helper_stopped", stopped, "STOPPED");
    }
    let r = hart::system_suspend_at(0, outside_ram(), susp_resumed, SUSP_MAGIC);
    check_err("susp_resume_outside_ram", r, error::INVALID_ADDRESS);
    csr::sie_set(csr::STI);
    sbi::set_timer(csr::time() + ms(2));
    let r = hart::system_suspend(0xdead_0000_0000_0000, susp_resumed, SUSP_MAGIC);
    fail("susp_suspend_to_ram", r, "resume at resume_addr");
    sbi::set_timer(u64::MAX);
    finish();
}

/// Resume point of the system suspend.
fn susp_resumed(hartid: usize, opaque: usize) {
    sbi::set_timer(u64::MAX);
    csr::sie_clear(csr::STI);
    trap::install();
    pass("susp_suspend_to_ram");
    check("susp_resume_hartid", hartid, ctx().me);
    check("susp_resume_opaque_in_a1", opaque, SUSP_MAGIC);
    let satp: usize;
    // SAFETY: reading satp has no side effects.
    unsafe { core::arch::asm!("csrr {}, satp", out(reg) satp, options(nomem, nostack)) };
    check("susp_resume_satp_zero", satp, 0);
    check(
        "susp_resume_hsm_started",
        sbi::hart_status(hartid).value,
        hart_state::STARTED,
    );
    finish();
}

fn finish() -> ! {
    let f = report::summary("sbi-tests");
    if ctx().legacy_shutdown {
        println!("sbi-tests: legacy shutdown");
        legacy(eid::LEGACY_SHUTDOWN, [0; 4]);
        println!("FAIL legacy_shutdown: returned");
    }
    sbi::shutdown(f != 0)
}
