//! The checks, in the order they run (on the boot hart only).

use crate::dsx::{self, cid, error, event, flags, limits, state, Client, DSX};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use diosix_abi::{ext, Event, HvInfo, IpcRecvArgs, IpcSendArgs, SpawnArgs, VmInfo};
use diosix_guest_rt::sbi::{self, SbiRet};
use diosix_guest_rt::virt::{self, RTC_IRQ};
use diosix_guest_rt::{csr, dtb, println, sleep_ticks};

// ----- the child image -----

/// Page-aligned wrapper, so the image's GPA is page-aligned too.
#[repr(C, align(4096))]
struct Aligned<T: ?Sized>(T);

/// The `vmchild` ELF, embedded by `build.rs` (empty if it was not built).
static CHILD_IMAGE: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("DIOSIX_VMCHILD_ELF")));

fn image() -> (usize, usize) {
    (CHILD_IMAGE.0.as_ptr() as usize, CHILD_IMAGE.0.len())
}

/// RAM of the test children (8 MiB).
const CHILD_PAGES: u64 = 2048;
/// Hello line of the child (`vmchild`).
const HELLO: &[u8] = b"vmchild: hello from CID view";
/// Printed by the child once its own checks are done.
const READY: &[u8] = b"vmchild: ready";

// ----- results -----

static TIMEBASE: AtomicU64 = AtomicU64::new(10_000_000);
static RAM_BASE: AtomicUsize = AtomicUsize::new(0);
static RAM_END: AtomicUsize = AtomicUsize::new(0);
/// Priority the children get (the Root VM's own).
static PRIO: AtomicU32 = AtomicU32::new(1);

use diosix_guest_rt::report::{self, check, fail, pass};

/// A named error code, for messages.
#[derive(PartialEq)]
struct Code(isize);

impl core::fmt::Debug for Code {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", dsx::err_name(self.0), self.0)
    }
}

/// Checks the error of a call.
fn check_err(name: &str, r: SbiRet, expected: isize) -> bool {
    if r.error == expected {
        pass(name);
        true
    } else {
        report::fail_with(format_args!(
            "{name}: got {:?} (a1 {:#x}) expected {:?}",
            Code(r.error),
            r.value,
            Code(expected)
        ));
        false
    }
}

/// Checks a successful call and its value.
fn check_ok(name: &str, r: SbiRet, value: usize) -> bool {
    if r.error == error::SUCCESS && r.value == value {
        pass(name);
        true
    } else {
        report::fail_with(format_args!(
            "{name}: got {:?} a1 {} expected SUCCESS a1 {}",
            Code(r.error),
            r.value,
            value
        ));
        false
    }
}

/// For functions the hypervisor documents as not built yet (MAP_CHILD_MEM,
/// UNMAP_CHILD_MEM, MAP_HOST_MMIO, ROUTE_IRQ): NOT_SUPPORTED from the host side is a
/// `skip` line; anything else is checked against `expected`.
fn check_host(name: &str, r: SbiRet, expected: isize) -> bool {
    if r.error == error::NOT_SUPPORTED {
        skip(
            name,
            "NOT_SUPPORTED (docs: implementation status, host side not built)",
        );
        return false;
    }
    check_err(name, r, expected) && r.value == 0
}

fn skip(what: &str, reason: &str) {
    println!("skip {what}: {reason}");
}

fn note(msg: core::fmt::Arguments) {
    println!("note {msg}");
}

fn ms(n: u64) -> u64 {
    TIMEBASE.load(Ordering::Relaxed) / 1000 * n
}

fn ram_end() -> usize {
    RAM_END.load(Ordering::Relaxed)
}

fn prio() -> u32 {
    PRIO.load(Ordering::Relaxed)
}

/// A page-aligned GPA far outside the Root VM's RAM.
fn outside() -> usize {
    ram_end() + 0x1000_0000
}

/// Lets the children run for a moment.
fn pause() {
    sleep_ticks(ms(2));
}

// ----- state kept across checks (single hart) -----

/// Interior-mutable global used by the boot hart only.
struct Global<T>(UnsafeCell<T>);

// SAFETY: only the boot hart runs the test code (no other vCPU is ever started), so
// there is no concurrent access.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Runs `f` on the value. Never called re-entrantly (the closures below do not
    /// reach `with` again for the same global).
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single hart and no re-entrancy (see above), so this is the only
        // reference to the value while `f` runs.
        f(unsafe { &mut *self.0.get() })
    }
}

/// What the Root VM read so far from one child's console.
struct ConsoleLog {
    cid: u64,
    text: [u8; 16384],
    len: usize,
    /// Start of the first line not yet echoed.
    echoed: usize,
}

static LOG: Global<ConsoleLog> = Global(UnsafeCell::new(ConsoleLog {
    cid: 0,
    text: [0; 16384],
    len: 0,
    echoed: 0,
}));

/// Events taken while waiting for another one.
static PENDING: Global<[Option<Event>; 32]> = Global(UnsafeCell::new([None; 32]));

impl ConsoleLog {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == self.text.len() {
                // Keep the newer half.
                let half = self.text.len() / 2;
                self.text.copy_within(half.., 0);
                self.len -= half;
                self.echoed = self.echoed.saturating_sub(half);
            }
            self.text[self.len] = b;
            self.len += 1;
        }
        while let Some(nl) = self.text[self.echoed..self.len]
            .iter()
            .position(|&b| b == b'\n')
        {
            let line = &self.text[self.echoed..self.echoed + nl];
            echo_line(
                self.cid,
                core::str::from_utf8(line).unwrap_or("<non-UTF-8>"),
            );
            self.echoed += nl + 1;
        }
    }
}

/// Echoes one line of a child's console, counting its own checks.
fn echo_line(from: u64, line: &str) {
    let line = line.trim_end_matches('\r');
    if let Some(name) = line.strip_prefix("ok ") {
        report::pass_with(format_args!("c{from}/{name}"));
    } else if let Some(rest) = line.strip_prefix("FAIL ") {
        report::fail_with(format_args!("c{from}/{rest}"));
    } else {
        println!("  c{from}| {line}");
    }
}

/// Starts a fresh log for `child`.
fn reset_log(child: u64) {
    LOG.with(|l| {
        l.cid = child;
        l.len = 0;
        l.echoed = 0;
    });
}

/// Reads everything `child` printed so far into the log.
fn drain_console(child: u64) -> Result<(), isize> {
    if LOG.with(|l| l.cid) != child {
        reset_log(child);
    }
    loop {
        let r = DSX.console_read(child, 1024);
        if r.error != error::SUCCESS {
            return Err(r.error);
        }
        if r.value == 0 {
            return Ok(());
        }
        let mut chunk = [0u8; 1024];
        let n = r.value.min(chunk.len());
        DSX.data().read(0, &mut chunk[..n]);
        LOG.with(|l| l.push(&chunk[..n]));
    }
}

fn log_has(needle: &[u8]) -> bool {
    LOG.with(|l| dsx::contains(&l.text[..l.len], needle))
}

/// Waits (bounded) until `child`'s console shows `needle`.
fn wait_console(child: u64, needle: &[u8], limit_ms: u64) -> bool {
    let end = csr::time() + ms(limit_ms);
    loop {
        if drain_console(child).is_err() {
            return log_has(needle);
        }
        if log_has(needle) {
            return true;
        }
        if csr::time() > end {
            return false;
        }
        pause();
    }
}

/// Waits (bounded) for an event of `kind` about `about`; other events are kept.
fn wait_event(kind: u32, about: u64, limit_ms: u64) -> Option<Event> {
    let matches = |e: &Event| e.kind == kind && e.cid == about;
    if let Some(e) = PENDING.with(|p| {
        p.iter_mut()
            .find(|s| s.as_ref().is_some_and(matches))
            .and_then(Option::take)
    }) {
        return Some(e);
    }
    let end = csr::time() + ms(limit_ms);
    loop {
        match DSX.poll_event() {
            Ok(Some(e)) if matches(&e) => return Some(e),
            Ok(Some(e)) => {
                let kept = PENDING.with(|p| {
                    p.iter_mut()
                        .find(|s| s.is_none())
                        .map(|s| *s = Some(e))
                        .is_some()
                });
                if !kept {
                    note(format_args!("event queue of the test full, dropped {e:?}"));
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        if csr::time() > end {
            return None;
        }
        pause();
    }
}

/// Forgets kept events about `about` (a dead child).
fn forget_events(about: u64) {
    PENDING.with(|p| {
        for s in p.iter_mut() {
            if s.is_some_and(|e| e.cid == about) {
                *s = None;
            }
        }
    });
}

/// Waits (bounded) for an IPC message from `from` (exact); returns it.
fn wait_message(from: u64, limit_ms: u64) -> Option<dsx::Line<256>> {
    let end = csr::time() + ms(limit_ms);
    loop {
        match DSX.ipc_recv(from, flags::IPC_RECV_EXACT, 4096) {
            Ok(Some((_, len))) => {
                let mut buf = [0u8; 256];
                let n = len.min(buf.len());
                DSX.data().read(0, &mut buf[..n]);
                let mut l = dsx::Line::<256>::new();
                let _ = core::fmt::Write::write_str(
                    &mut l,
                    core::str::from_utf8(&buf[..n]).unwrap_or("<non-UTF-8>"),
                );
                // A received message withdraws its MESSAGE event; drop kept copies.
                PENDING.with(|p| {
                    if let Some(s) = p
                        .iter_mut()
                        .find(|s| s.is_some_and(|e| e.kind == event::MESSAGE && e.cid == from))
                    {
                        *s = None;
                    }
                });
                return Some(l);
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        if csr::time() > end {
            return None;
        }
        pause();
    }
}

/// Whether the host runs guests behind PMP (no H extension): FORK is refused there and
/// MAP_CHILD_MEM copies without page permissions (`docs/sbi-extension.md`).
fn pmp() -> bool {
    DSX.hv_info()
        .is_ok_and(|h| h.features & diosix_abi::features::PMP_FALLBACK != 0)
}

/// Where child `c`'s RAM starts (GET_CHILD_INFO; 0 if it cannot be read).
fn child_ram(c: u64) -> usize {
    DSX.child_info(c).map_or(0, |i| i.ram_gpa as usize)
}

/// Where child `c` was built to boot: its image's entry point and its device tree.
fn child_boot(c: u64) -> (usize, usize) {
    DSX.child_info(c)
        .map_or((0, 0), |i| (i.entry_gpa as usize, i.dtb_gpa as usize))
}

fn info_or_default() -> VmInfo {
    DSX.info().unwrap_or_default()
}

fn child_args(pages: u64) -> SpawnArgs {
    let (gpa, len) = image();
    dsx::spawn_args(gpa, len, pages, 1, prio())
}

/// Spawns a running child, waits until it is ready; returns its CID.
fn spawn_child(name: &str, a: &SpawnArgs, expect_cid: u64) -> Option<u64> {
    let r = DSX.spawn(a);
    if !check_ok(name, r, expect_cid as usize) && r.error != error::SUCCESS {
        return None;
    }
    let c = r.value as u64;
    reset_log(c);
    Some(c)
}

/// Kills `child` with `code` and checks the TERMINATED event.
fn kill_child(name: &str, child: u64, code: u64) {
    check_ok(name, DSX.exit(child, code), 0);
    let e = wait_event(event::CHILD_TERMINATED, child, 5_000);
    let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_event_code"));
    check(l.as_str(), e.map(|e| e.exit_code), Some(code));
    forget_events(child);
}

/// Usage fields that must come back once every child is gone.
fn usage(i: &VmInfo) -> [u64; 8] {
    [
        i.ram_pages_used,
        i.ram_pages_reserved,
        i.vcpus_used as u64,
        i.vcpus_reserved as u64,
        i.descendants_used as u64,
        i.descendants_reserved as u64,
        i.child_count as u64,
        i.depth_used as u64,
    ]
}

// ----- the test -----

pub fn main(hartid: usize, dtb_addr: usize) {
    let d = dtb::parse(dtb_addr);
    TIMEBASE.store(d.timebase, Ordering::Relaxed);
    RAM_BASE.store(d.ram_base, Ordering::Relaxed);
    RAM_END.store(d.ram_end(), Ordering::Relaxed);
    let (img, img_len) = image();
    println!(
        "vmtree: boot hart {hartid}, {} vCPUs, RAM {:#x}+{:#x}, child image {} bytes at {:#x}",
        d.cpus, d.ram_base, d.ram_size, img_len, img
    );
    if !check("child_image_embedded", img_len > 4096, true) {
        println!(
            "vmtree: build vmchild first (cargo xtask test vmtree does), \
             or set DIOSIX_VMCHILD_ELF"
        );
    }
    if probe_checks() {
        let base = info_checks(&d);
        cid_checks();
        spawn_param_checks(&base);
        main_child(&base);
        paused_child();
        self_exit_child(&base);
        three_level();
        fork_checks(&base);
        check(
            "usage_back_to_start",
            usage(&info_or_default()),
            usage(&base),
        );
        quota_checks();
        trust_checks();
        built_children(&base);
        heap_stress(&base);
        virtio_checks(&base);
        let r = DSX.call2(ext::FID_LIST_CHILDREN, 0, 0);
        check_ok("no_children_left", r, 0);
        PENDING.with(|p| {
            for e in p.iter().flatten() {
                note(format_args!("unclaimed event {e:?}"));
            }
        });
    }
    report::summary("vmtree");
}

/// The extension is there and unknown functions are refused. False: nothing else can
/// be tested.
fn probe_checks() -> bool {
    let present = check("probe_extension", sbi::probe(ext::EID), 1);
    check_err(
        "reserved_fid_11",
        DSX.call2(ext::FID_RESERVED_11, 0, 0),
        error::NOT_SUPPORTED,
    );
    check_err(
        "reserved_fid_12",
        DSX.call2(ext::FID_RESERVED_12, 0, 0),
        error::NOT_SUPPORTED,
    );
    check_err(
        "unknown_fid",
        DSX.call2(ext::FID_COUNT, 0, 0),
        error::NOT_SUPPORTED,
    );
    check_ok("yield", DSX.yield_now(), 0);
    present
}

/// GET_HV_INFO, GET_INFO, GET_CHILD_INFO(1), and their size and address errors.
/// Returns the Root VM's starting information.
fn info_checks(d: &dtb::Info) -> VmInfo {
    let me = match DSX.info() {
        Ok(i) => {
            pass("get_info");
            i
        }
        Err(e) => {
            fail("get_info", Code(e), Code(0));
            VmInfo::default()
        }
    };
    PRIO.store(me.priority.max(1), Ordering::Relaxed);
    println!(
        "vmtree: info: flags {:#x}, RAM quota {} used {} reserved {} (own {} + tables {}), \
         vCPUs quota {} used {} reserved {}, priority {}/{}, depth {}, descendants {}",
        me.flags,
        me.ram_pages_max,
        me.ram_pages_used,
        me.ram_pages_reserved,
        me.own_ram_pages,
        me.own_table_pages,
        me.vcpus_max,
        me.vcpus_used,
        me.vcpus_reserved,
        me.priority,
        me.max_priority,
        me.max_depth,
        me.max_descendants
    );
    check("info_size", me.size as usize, VmInfo::SIZE);
    check("info_cid_self", me.cid, cid::SELF);
    check(
        "info_flags_trusted_root",
        me.flags,
        flags::INFO_TRUSTED | flags::INFO_ROOT,
    );
    check("info_state_running", me.state, state::RUNNING);
    check("info_own_vcpus_match_dtb", me.own_vcpus as usize, d.cpus);
    check(
        "info_own_ram_matches_dtb",
        me.own_ram_pages,
        (d.ram_size / 4096) as u64,
    );
    check(
        "info_used_is_own",
        me.ram_pages_used,
        me.own_ram_pages + me.own_table_pages,
    );
    check(
        "info_reserved_is_own",
        me.ram_pages_reserved,
        me.ram_pages_used,
    );
    check("info_vcpus_used", me.vcpus_used, me.own_vcpus);
    check(
        "info_no_children",
        (me.child_count, me.descendants_used, me.depth_used),
        (0, 0, 0),
    );
    // The descendant (and so depth) ceiling is what the hypervisor's heap can back.
    check(
        "info_root_ceilings",
        (me.max_priority, me.max_depth),
        (255, me.max_descendants.min(64)),
    );
    check(
        "info_root_descendants_backed",
        (16..=65536).contains(&me.max_descendants),
        true,
    );
    check(
        "info_priority_in_range",
        (1..=255).contains(&me.priority),
        true,
    );
    check("info_console_physical", me.console_pending, 0);

    // Larger size: accepted, exactly VmInfo::SIZE bytes written.
    DSX.structs().fill(0, 256, 0xA5);
    let r = DSX.call2(ext::FID_GET_INFO, DSX.structs().addr(), VmInfo::SIZE + 8);
    check_ok("info_larger_size_accepted", r, 0);
    let mut tail = [0u8; 8];
    DSX.structs().read(VmInfo::SIZE, &mut tail);
    check("info_writes_exactly_its_size", tail, [0xA5; 8]);
    check_err(
        "info_size_119",
        DSX.call2(ext::FID_GET_INFO, DSX.structs().addr(), VmInfo::SIZE - 1),
        error::INVALID_PARAM,
    );
    check_err(
        "info_size_0",
        DSX.call2(ext::FID_GET_INFO, DSX.structs().addr(), 0),
        error::INVALID_PARAM,
    );
    check_err(
        "info_unaligned",
        DSX.call2(ext::FID_GET_INFO, DSX.structs().addr() + 4, VmInfo::SIZE),
        error::INVALID_ADDRESS,
    );
    check_err(
        "info_outside_ram",
        DSX.call2(ext::FID_GET_INFO, outside(), VmInfo::SIZE),
        error::INVALID_ADDRESS,
    );
    check_err(
        "info_straddles_ram_end",
        DSX.call2(ext::FID_GET_INFO, ram_end() - 64, VmInfo::SIZE),
        error::INVALID_ADDRESS,
    );
    check_err(
        "info_below_ram",
        DSX.call2(ext::FID_GET_INFO, 0x1000, VmInfo::SIZE),
        error::INVALID_ADDRESS,
    );
    check(
        "child_info_self_equals_info",
        DSX.child_info(cid::SELF),
        Ok(me),
    );
    check_err(
        "child_info_self_size_119",
        DSX.call(
            ext::FID_GET_CHILD_INFO,
            [1, DSX.structs().addr(), VmInfo::SIZE - 1, 0, 0, 0],
        ),
        error::INVALID_PARAM,
    );
    check(
        "child_info_root_parent_invalid",
        DSX.child_info(cid::PARENT).map(|_| ()),
        Err(error::INVALID_PARAM),
    );
    check(
        "child_info_99_invalid",
        DSX.child_info(99).map(|_| ()),
        Err(error::INVALID_PARAM),
    );

    match DSX.hv_info() {
        Ok(h) => {
            pass("get_hv_info");
            println!(
                "vmtree: hv: abi {:#x}, version {:#x}, features {:#x}, {} host cores, \
                 timer {} Hz, RAM {} pages, free {}",
                h.abi_version,
                h.hv_version,
                h.features,
                h.host_cores,
                h.timer_freq_hz,
                h.ram_total_pages,
                h.ram_free_pages
            );
            check("hv_info_size", h.size as usize, HvInfo::SIZE);
            check("hv_info_abi_version", h.abi_version, ext::ABI_VERSION);
            check("hv_info_host_cores", h.host_cores >= 1, true);
            check("hv_info_timer_matches_dtb", h.timer_freq_hz, d.timebase);
            check(
                "hv_info_total_is_own_quota",
                h.ram_total_pages,
                me.ram_pages_max,
            );
            check(
                "hv_info_free_is_headroom",
                h.ram_free_pages,
                me.ram_pages_max - me.ram_pages_reserved,
            );
            check("hv_info_reserved_zero", h.reserved, 0);
        }
        Err(e) => fail("get_hv_info", Code(e), Code(0)),
    }
    DSX.structs().fill(0, 256, 0xA5);
    check_ok(
        "hv_info_larger_size_accepted",
        DSX.call2(ext::FID_GET_HV_INFO, DSX.structs().addr(), 64),
        0,
    );
    DSX.structs().read(HvInfo::SIZE, &mut tail);
    check("hv_info_writes_exactly_56", tail, [0xA5; 8]);
    check_err(
        "hv_info_size_55",
        DSX.call2(ext::FID_GET_HV_INFO, DSX.structs().addr(), HvInfo::SIZE - 1),
        error::INVALID_PARAM,
    );
    check_err(
        "hv_info_size_checked_before_gpa",
        DSX.call2(ext::FID_GET_HV_INFO, outside() + 4, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "hv_info_unaligned",
        DSX.call2(ext::FID_GET_HV_INFO, DSX.structs().addr() + 4, HvInfo::SIZE),
        error::INVALID_ADDRESS,
    );
    check_err(
        "hv_info_outside_ram",
        DSX.call2(ext::FID_GET_HV_INFO, outside(), HvInfo::SIZE),
        error::INVALID_ADDRESS,
    );
    check_err(
        "hv_info_straddles_ram_end",
        DSX.call2(ext::FID_GET_HV_INFO, ram_end() - 8, HvInfo::SIZE),
        error::INVALID_ADDRESS,
    );

    check_ok(
        "list_children_empty",
        DSX.call2(ext::FID_LIST_CHILDREN, 0, 0),
        0,
    );
    check_ok(
        "poll_event_none",
        DSX.call2(ext::FID_POLL_EVENT, DSX.structs().addr(), Event::SIZE),
        0,
    );
    check_err(
        "poll_event_size_31",
        DSX.call2(ext::FID_POLL_EVENT, DSX.structs().addr(), Event::SIZE - 1),
        error::INVALID_PARAM,
    );
    check_err(
        "poll_event_unaligned",
        DSX.call2(ext::FID_POLL_EVENT, DSX.structs().addr() + 4, Event::SIZE),
        error::INVALID_ADDRESS,
    );
    check_err(
        "poll_event_outside_ram",
        DSX.call2(ext::FID_POLL_EVENT, outside(), Event::SIZE),
        error::INVALID_ADDRESS,
    );
    check("ipc_recv_nothing", DSX.ipc_recv(0, 0, 64), Ok(None));
    info_or_default()
}

/// CIDs that name nothing, or a kind the function does not take, with no child alive.
fn cid_checks() {
    // The Root VM has no parent: its CID 0 names nothing (INVALID_PARAM).
    check_err("exit_root_parent", DSX.exit(0, 0), error::INVALID_PARAM);
    check_err("exit_99", DSX.exit(99, 0), error::INVALID_PARAM);
    check_err("exit_2_before_spawn", DSX.exit(2, 0), error::INVALID_PARAM);
    let child_only = [
        ("stop", ext::FID_STOP),
        ("resume", ext::FID_RESUME),
        ("reboot", ext::FID_REBOOT),
        ("start", ext::FID_START),
        ("drop_child_trust", ext::FID_DROP_CHILD_TRUST),
    ];
    for (name, fid) in child_only {
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_self_denied"));
        check_err(
            l.as_str(),
            DSX.call(fid, [1, 0x8020_0000, 0x8000_0000, 0, 0, 0]),
            error::DENIED,
        );
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_root_parent_invalid"));
        check_err(
            l.as_str(),
            DSX.call(fid, [0, 0x8020_0000, 0x8000_0000, 0, 0, 0]),
            error::INVALID_PARAM,
        );
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_99_invalid"));
        check_err(
            l.as_str(),
            DSX.call(fid, [99, 0x8020_0000, 0x8000_0000, 0, 0, 0]),
            error::INVALID_PARAM,
        );
    }
    check_err(
        "console_read_self_denied",
        DSX.console_read(1, 16),
        error::DENIED,
    );
    check_err(
        "console_read_3_before_spawn",
        DSX.console_read(3, 16),
        error::INVALID_PARAM,
    );
    check_err(
        "console_write_self_denied",
        DSX.console_write(1, b"x"),
        error::DENIED,
    );
    check_err(
        "map_child_mem_self_denied",
        DSX.map_child_mem(
            cid::SELF,
            0x8040_0000,
            DSX.data().addr(),
            4096,
            flags::MAP_READ,
        ),
        error::DENIED,
    );
    check_err(
        "ipc_send_self_invalid",
        DSX.ipc_send(1, b"x"),
        error::INVALID_PARAM,
    );
    check_err(
        "ipc_send_root_parent_invalid",
        DSX.ipc_send(0, b"x"),
        error::INVALID_PARAM,
    );
    check_err(
        "ipc_send_2_before_spawn",
        DSX.ipc_send(2, b"x"),
        error::INVALID_PARAM,
    );
    check(
        "ipc_recv_exact_root_parent_invalid",
        DSX.ipc_recv(0, flags::IPC_RECV_EXACT, 64),
        Err(error::INVALID_PARAM),
    );
    check(
        "ipc_recv_self_invalid",
        DSX.ipc_recv(1, 0, 64),
        Err(error::INVALID_PARAM),
    );
    let mut q = dsx::quota_args(0);
    q.ram_pages = 1;
    check_err(
        "set_quota_root_parent_invalid",
        DSX.set_quota(&q),
        error::INVALID_PARAM,
    );
    q.cid = 99;
    check_err(
        "set_quota_99_invalid",
        DSX.set_quota(&q),
        error::INVALID_PARAM,
    );
}

/// Every refusal SPAWN documents, in its order of checks, before any child exists.
fn spawn_param_checks(base: &VmInfo) {
    let good = child_args(CHILD_PAGES);
    let bad = |name: &str, f: &dyn Fn(&mut SpawnArgs), expected: isize| {
        let mut a = good;
        f(&mut a);
        check_err(name, DSX.spawn(&a), expected);
    };
    bad("spawn_size_87", &|a| a.size = 87, error::INVALID_PARAM);
    bad("spawn_size_0", &|a| a.size = 0, error::INVALID_PARAM);
    bad(
        "spawn_unknown_flag",
        &|a| a.flags = 1 << 31,
        error::INVALID_PARAM,
    );
    bad("spawn_cid_self_denied", &|a| a.cid = 1, error::DENIED);
    bad(
        "spawn_cid_2_not_yet_invalid",
        &|a| a.cid = 2,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_cid_99_invalid",
        &|a| a.cid = 99,
        error::INVALID_PARAM,
    );
    bad("spawn_ram_0", &|a| a.ram_pages = 0, error::INVALID_PARAM);
    bad("spawn_vcpus_0", &|a| a.vcpus = 0, error::INVALID_PARAM);
    bad(
        "spawn_priority_0",
        &|a| a.priority = 0,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_image_size_0",
        &|a| a.image_size = 0,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_image_larger_than_ram",
        &|a| a.ram_pages = 1,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_ram_bytes_overflow",
        &|a| a.ram_pages = u64::MAX / 4096 + 1,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_dtb_gpa_without_size",
        &|a| a.dtb_gpa = DSX.data().addr() as u64,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_dtb_size_without_gpa",
        &|a| a.dtb_size = 4096,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_image_outside_ram",
        &|a| a.image_gpa = outside() as u64,
        error::INVALID_ADDRESS,
    );
    bad(
        "spawn_image_straddles_ram_end",
        &|a| a.image_gpa = (ram_end() - 4096) as u64,
        error::INVALID_ADDRESS,
    );
    bad(
        "spawn_image_overflows",
        &|a| a.image_gpa = u64::MAX - 4095,
        error::INVALID_ADDRESS,
    );
    bad(
        "spawn_dtb_outside_ram",
        &|a| {
            a.dtb_gpa = outside() as u64;
            a.dtb_size = 4096;
        },
        error::INVALID_ADDRESS,
    );
    // Admission: well-formed quota first.
    bad(
        "spawn_quota_ram_below_holding",
        &|a| a.quota_ram_pages = 1,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_quota_vcpus_above_abi",
        &|a| a.quota_vcpus = 4097,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_quota_priority_above_abi",
        &|a| a.quota_max_priority = 256,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_quota_depth_above_abi",
        &|a| a.quota_max_depth = 65,
        error::INVALID_PARAM,
    );
    // Then the caller's ceilings and headroom (DENIED).
    bad(
        "spawn_depth_quota_not_below_caller",
        &|a| {
            a.quota_max_depth = base.max_depth;
            a.quota_max_descendants = base.max_depth;
        },
        error::DENIED,
    );
    // Well-formedness (admission step 1): a descendant count below the depth is a
    // contradiction (INVALID_PARAM), whatever the depth rule would say.
    bad(
        "spawn_depth_quota_without_descendants",
        &|a| a.quota_max_depth = base.max_depth,
        error::INVALID_PARAM,
    );
    bad(
        "spawn_descendants_quota_too_big",
        &|a| a.quota_max_descendants = base.max_descendants,
        error::DENIED,
    );
    let vcpu_room = base.vcpus_max.saturating_sub(base.vcpus_reserved);
    if vcpu_room < 4096 {
        bad(
            "spawn_vcpus_beyond_headroom",
            &|a| a.vcpus = vcpu_room + 1,
            error::DENIED,
        );
    }
    let ram_room = base.ram_pages_max.saturating_sub(base.ram_pages_reserved);
    bad(
        "spawn_ram_beyond_headroom",
        &|a| a.ram_pages = ram_room + 1,
        error::DENIED,
    );
    // The structure itself misplaced.
    check_err(
        "spawn_struct_unaligned",
        DSX.call_struct(ext::FID_SPAWN, &good.to_le_bytes(), 4),
        error::INVALID_ADDRESS,
    );
    check_err(
        "spawn_struct_outside_ram",
        DSX.call2(ext::FID_SPAWN, outside(), 0),
        error::INVALID_ADDRESS,
    );
    check_err(
        "spawn_struct_straddles_ram_end",
        DSX.call2(ext::FID_SPAWN, ram_end() - 8, 0),
        error::INVALID_ADDRESS,
    );
    // A refused request changes nothing.
    check(
        "spawn_refusals_change_nothing",
        usage(&info_or_default()),
        usage(base),
    );
    check_ok(
        "no_event_after_refusals",
        DSX.call2(ext::FID_POLL_EVENT, DSX.structs().addr(), Event::SIZE),
        0,
    );
}

/// CID 2: spawn, information, consoles, IPC, STOP/RESUME, REBOOT, quotas, kill.
fn main_child(base: &VmInfo) {
    let Some(c) = spawn_child("spawn_child_cid_2", &child_args(CHILD_PAGES), 2) else {
        return;
    };
    let ci = match DSX.child_info(c) {
        Ok(i) => i,
        Err(e) => {
            fail("child_info_2", Code(e), Code(0));
            VmInfo::default()
        }
    };
    let tables = ci.own_table_pages;
    println!(
        "vmtree: child {c}: {} RAM pages + {tables} table pages",
        ci.own_ram_pages
    );
    check("child_info_cid", ci.cid, c);
    check("child_info_flags_untrusted", ci.flags, 0);
    check(
        "child_info_own",
        (ci.own_ram_pages, ci.own_vcpus, ci.priority),
        (CHILD_PAGES, 1, prio()),
    );
    check(
        "child_info_default_quota",
        (
            ci.ram_pages_max,
            ci.vcpus_max,
            ci.max_priority,
            ci.max_depth,
            ci.max_descendants,
        ),
        (CHILD_PAGES + tables, 1, prio(), 0, 0),
    );
    check("child_info_state_running", ci.state == state::RUNNING, true);
    let me = info_or_default();
    check(
        "info_after_spawn_charged",
        [
            me.ram_pages_used,
            me.ram_pages_reserved,
            me.vcpus_used as u64,
            me.vcpus_reserved as u64,
            me.descendants_used as u64,
            me.descendants_reserved as u64,
            me.child_count as u64,
            me.depth_used as u64,
        ],
        [
            base.ram_pages_used + CHILD_PAGES + tables,
            base.ram_pages_reserved + CHILD_PAGES + tables,
            base.vcpus_used as u64 + 1,
            base.vcpus_reserved as u64 + 1,
            1,
            1,
            1,
            1,
        ],
    );
    let list_at = DSX.structs().addr() + 512;
    DSX.structs().fill(512, 32, 0xEE);
    check_ok(
        "list_children_one",
        DSX.call2(ext::FID_LIST_CHILDREN, list_at, 4),
        1,
    );
    let mut first = [0u8; 16];
    DSX.structs().read(512, &mut first);
    check(
        "list_children_cid",
        (
            u64::from_le_bytes(first[..8].try_into().unwrap_or_default()),
            first[8],
        ),
        (c, 0xEE),
    );
    check_err(
        "list_children_unaligned",
        DSX.call2(ext::FID_LIST_CHILDREN, list_at + 4, 4),
        error::INVALID_ADDRESS,
    );
    check_err(
        "list_children_outside_ram",
        DSX.call2(ext::FID_LIST_CHILDREN, outside(), 4),
        error::INVALID_ADDRESS,
    );
    check_err(
        "list_children_capacity_overflow",
        DSX.call2(ext::FID_LIST_CHILDREN, list_at, usize::MAX / 4),
        error::INVALID_PARAM,
    );

    // Console: the hello line, then the child's own checks and `ready`.
    check("child_console_hello", wait_console(c, HELLO, 10_000), true);
    check("child_console_ready", wait_console(c, READY, 10_000), true);
    // The brief expects a STARTED event on SPAWN; the document lists START and RESUME
    // only. Accept either, and say which.
    match wait_event(event::CHILD_STARTED, c, 50) {
        Some(_) => note(format_args!("SPAWN queued CHILD_STARTED for cid {c}")),
        None => note(format_args!(
            "SPAWN queued no CHILD_STARTED for cid {c} (doc: START and RESUME only)"
        )),
    }
    check_err(
        "console_read_too_long",
        DSX.console_read(c, 4097),
        error::INVALID_PARAM,
    );
    check_err(
        "console_read_outside_ram",
        DSX.call(ext::FID_CONSOLE_READ, [c as usize, outside(), 16, 0, 0, 0]),
        error::INVALID_ADDRESS,
    );
    check_err(
        "console_write_too_long",
        DSX.call(
            ext::FID_CONSOLE_WRITE,
            [c as usize, DSX.data().addr(), 4097, 0, 0, 0],
        ),
        error::INVALID_PARAM,
    );
    check_err(
        "console_write_outside_ram",
        DSX.call(ext::FID_CONSOLE_WRITE, [c as usize, outside(), 4, 0, 0, 0]),
        error::INVALID_ADDRESS,
    );
    check_ok("console_write", DSX.console_write(c, b"abc\n"), 4);
    check(
        "console_write_reaches_child",
        wait_console(c, b"vmchild: console got 'abc'", 5_000),
        true,
    );

    ipc_checks(c);
    stop_resume_checks(c);

    // REBOOT: back to its initial state, hello again, REBOOTED event.
    reset_log(c);
    check_ok("reboot_child", DSX.reboot(c), 0);
    check(
        "reboot_event",
        wait_event(event::CHILD_REBOOTED, c, 5_000).map(|e| e.kind),
        Some(event::CHILD_REBOOTED),
    );
    check("reboot_hello_again", wait_console(c, READY, 10_000), true);
    check(
        "reboot_keeps_cid_and_usage",
        usage(&info_or_default()),
        usage(&me),
    );

    // SET_QUOTA on a child: within the caller's headroom, not below what it holds.
    let mut q = dsx::quota_args(c);
    q.max_depth = 1;
    q.max_descendants = 1;
    check_ok("set_quota_child_raise", DSX.set_quota(&q), 0);
    check(
        "set_quota_child_applied",
        DSX.child_info(c).map(|i| (i.max_depth, i.max_descendants)),
        Ok((1, 1)),
    );
    let mut q = dsx::quota_args(c);
    q.flags = flags::QUOTA_SET_RAM;
    q.ram_pages = 1;
    check_err(
        "set_quota_child_below_holding",
        DSX.set_quota(&q),
        error::INVALID_STATE,
    );
    let now = info_or_default();
    let mut q = dsx::quota_args(c);
    q.ram_pages = now.ram_pages_max - now.ram_pages_reserved + CHILD_PAGES + tables + 1;
    check_err(
        "set_quota_child_beyond_headroom",
        DSX.set_quota(&q),
        error::DENIED,
    );
    let mut q = dsx::quota_args(c);
    q.max_depth = now.max_depth;
    check_err(
        "set_quota_child_depth_not_below_caller",
        DSX.set_quota(&q),
        error::DENIED,
    );
    check_ok("drop_child_trust_untrusted_ok", DSX.drop_child_trust(c), 0);

    // Kill it: TERMINATED with the code, gone from every function, usage back.
    kill_child("exit_child_2", c, 42);
    check_err("stop_dead_child_invalid", DSX.stop(c), error::INVALID_PARAM);
    check(
        "child_info_dead_invalid",
        DSX.child_info(c).map(|_| ()),
        Err(error::INVALID_PARAM),
    );
    check_err(
        "console_read_dead_invalid",
        DSX.console_read(c, 16),
        error::INVALID_PARAM,
    );
    check_err(
        "ipc_send_dead_invalid",
        DSX.ipc_send(c, b"x"),
        error::INVALID_PARAM,
    );
    check(
        "usage_back_after_kill",
        usage(&info_or_default()),
        usage(base),
    );
    check(
        "hv_info_free_back_after_kill",
        DSX.hv_info().map(|h| h.ram_free_pages),
        Ok(base.ram_pages_max - base.ram_pages_reserved),
    );
}

fn ipc_checks(c: u64) {
    check_ok("ipc_send", DSX.ipc_send(c, b"hello vmtree"), 0);
    let e = wait_event(event::MESSAGE, c, 5_000);
    check(
        "ipc_message_event",
        e.map(|e| (e.kind, e.cid)),
        Some((event::MESSAGE, c)),
    );
    // Too short a buffer: BAD_RANGE and the message stays queued.
    check(
        "ipc_recv_short_buffer",
        DSX.ipc_recv(c, 0, 4),
        Err(error::BAD_RANGE),
    );
    match DSX.ipc_recv(c, flags::IPC_RECV_EXACT, 4096) {
        Ok(Some((from, len))) => {
            let mut buf = [0u8; 12];
            DSX.data().read(0, &mut buf);
            check(
                "ipc_recv_reply",
                (from, len, &buf),
                (c, 12, b"HELLO VMTREE"),
            );
        }
        other => fail("ipc_recv_reply", other, "Ok(Some((2, 12)))"),
    }
    check("ipc_recv_then_empty", DSX.ipc_recv(0, 0, 64), Ok(None));

    let good = IpcSendArgs {
        size: IpcSendArgs::SIZE as u32,
        flags: 0,
        cid: c,
        data_gpa: DSX.data().addr() as u64,
        len: 4,
    };
    let bad = |name: &str, f: &dyn Fn(&mut IpcSendArgs), expected: isize| {
        let mut a = good;
        f(&mut a);
        check_err(name, DSX.ipc_send_args(&a), expected);
    };
    bad("ipc_send_size_31", &|a| a.size = 31, error::INVALID_PARAM);
    bad("ipc_send_flags", &|a| a.flags = 1, error::INVALID_PARAM);
    bad("ipc_send_too_long", &|a| a.len = 4097, error::INVALID_PARAM);
    bad(
        "ipc_send_data_outside_ram",
        &|a| a.data_gpa = outside() as u64,
        error::INVALID_ADDRESS,
    );
    bad(
        "ipc_send_data_overflows",
        &|a| a.data_gpa = u64::MAX - 1,
        error::INVALID_ADDRESS,
    );
    check_err(
        "ipc_send_struct_unaligned",
        DSX.call_struct(ext::FID_IPC_SEND, &good.to_le_bytes(), 4),
        error::INVALID_ADDRESS,
    );
    let recv = IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: 0,
        cid: c,
        buf_gpa: DSX.data().addr() as u64,
        max_len: 64,
        out_len: 0,
    };
    let bad_recv = |name: &str, f: &dyn Fn(&mut IpcRecvArgs), expected: isize| {
        let mut a = recv;
        f(&mut a);
        check_err(name, DSX.ipc_recv_args(&a).0, expected);
    };
    bad_recv("ipc_recv_size_39", &|a| a.size = 39, error::INVALID_PARAM);
    bad_recv("ipc_recv_flags", &|a| a.flags = 4, error::INVALID_PARAM);
    bad_recv("ipc_recv_cid_99", &|a| a.cid = 99, error::INVALID_PARAM);
    bad_recv(
        "ipc_recv_buffer_outside_ram",
        &|a| a.buf_gpa = outside() as u64,
        error::INVALID_ADDRESS,
    );
}

fn stop_resume_checks(c: u64) {
    check_ok("stop_child", DSX.stop(c), 0);
    check(
        "stop_event",
        wait_event(event::CHILD_STOPPED, c, 2_000).map(|e| e.kind),
        Some(event::CHILD_STOPPED),
    );
    check(
        "stop_state",
        DSX.child_info(c).map(|i| i.state),
        Ok(state::STOPPED),
    );
    check_err(
        "stop_again_already_stopped",
        DSX.stop(c),
        error::ALREADY_STOPPED,
    );
    // A stopped child does not run: 16 messages fill its lane, the 17th is refused,
    // and no reply comes.
    let mut sent = 0;
    for _ in 0..dsx::limits::IPC_QUEUE_DEPTH {
        if DSX.ipc_send(c, b"q").error == error::SUCCESS {
            sent += 1;
        }
    }
    check("ipc_lane_takes_16", sent, dsx::limits::IPC_QUEUE_DEPTH);
    check_err("ipc_lane_full_failed", DSX.ipc_send(c, b"q"), error::FAILED);
    sleep_ticks(ms(100));
    check(
        "stopped_child_does_not_answer",
        DSX.ipc_recv(c, 0, 64),
        Ok(None),
    );
    check_ok("resume_child", DSX.resume(c), 0);
    check(
        "resume_event_started",
        wait_event(event::CHILD_STARTED, c, 2_000).map(|e| e.kind),
        Some(event::CHILD_STARTED),
    );
    check_err(
        "resume_again_already_started",
        DSX.resume(c),
        error::ALREADY_STARTED,
    );
    check_err(
        "start_running_already_started",
        DSX.start(c, child_boot(c).0, child_boot(c).1),
        error::ALREADY_STARTED,
    );
    let mut answers = 0;
    for _ in 0..sent {
        match wait_message(c, 5_000) {
            Some(m) if m.bytes() == b"Q" => answers += 1,
            _ => break,
        }
    }
    check("resumed_child_answers_all", answers, sent);
}

/// CID 3: created paused; CREATED-state errors, MAP_CHILD_MEM, START.
fn paused_child() {
    let mut a = child_args(CHILD_PAGES);
    a.flags = flags::SPAWN_PAUSED;
    let Some(c) = spawn_child("spawn_paused_cid_3", &a, 3) else {
        return;
    };
    check(
        "paused_state_created",
        DSX.child_info(c).map(|i| i.state),
        Ok(state::CREATED),
    );
    check_err("stop_never_started", DSX.stop(c), error::INVALID_STATE);
    check_err("resume_never_started", DSX.resume(c), error::INVALID_STATE);
    // Where the child's RAM is and where its image's entry point landed: GPA
    // 0x8000_0000 under H, its block's host address in PMP mode.
    let base = child_ram(c);
    let (entry, dtb) = child_boot(c);
    check(
        "paused_child_layout",
        (
            entry >= base,
            dtb > entry,
            entry < base + (CHILD_PAGES as usize) * 4096,
        ),
        (true, true, true),
    );
    let page = DSX.data().addr() + 4096;
    let map = |child_gpa: usize, parent_gpa: usize, size: usize, perms: u64| {
        DSX.map_child_mem(c, child_gpa, parent_gpa, size, perms)
    };
    let r = flags::MAP_READ;
    check_err(
        "map_child_mem_perms_0",
        map(base + 0x40_0000, page, 4096, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "map_child_mem_perms_unknown",
        map(base + 0x40_0000, page, 4096, 8),
        error::INVALID_PARAM,
    );
    check_err(
        "map_child_mem_size_0",
        map(base + 0x40_0000, page, 0, r),
        error::INVALID_PARAM,
    );
    check_err(
        "map_child_mem_size_not_pages",
        map(base + 0x40_0000, page, 100, r),
        error::INVALID_PARAM,
    );
    check_err(
        "map_child_mem_child_unaligned",
        map(base + 0x40_0010, page, 4096, r),
        error::INVALID_ADDRESS,
    );
    check_err(
        "map_child_mem_parent_outside_ram",
        map(base + 0x40_0000, outside(), 4096, r),
        error::INVALID_ADDRESS,
    );
    check_host(
        "map_child_mem_outside_child_ram",
        map(0x1000, page, 4096, r),
        error::INVALID_ADDRESS,
    );
    check_host("map_child_mem", map(base + 0x40_0000, page, 4096, r), 0);
    check_err(
        "unmap_child_mem_size_0",
        DSX.unmap_child_mem(page, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "unmap_child_mem_unaligned",
        DSX.unmap_child_mem(page + 8, 4096),
        error::INVALID_ADDRESS,
    );
    check_host("unmap_child_mem", DSX.unmap_child_mem(page, 4096), 0);
    let start = |entry: usize, dtb: usize| DSX.start(c, entry, dtb);
    check_err(
        "start_entry_outside_child_ram",
        start(0x1000, base),
        error::INVALID_ADDRESS,
    );
    check_err(
        "start_dtb_outside_child_ram",
        start(entry, 0x1000),
        error::INVALID_ADDRESS,
    );
    // START at the ELF entry; a1 points at RAM holding no DTB (the child copes).
    check_ok("start_paused_child", start(entry, base), 0);
    check(
        "start_event",
        wait_event(event::CHILD_STARTED, c, 2_000).map(|e| e.kind),
        Some(event::CHILD_STARTED),
    );
    check_err(
        "start_again_already_started",
        start(entry, base),
        error::ALREADY_STARTED,
    );
    check_err(
        "map_child_mem_after_start",
        map(base + 0x40_0000, page, 4096, r),
        error::ALREADY_STARTED,
    );
    check("started_child_hello", wait_console(c, READY, 10_000), true);
    kill_child("exit_child_3", c, 0);
}

/// Two pages of this VM: a program and its data, copied into paused children with
/// MAP_CHILD_MEM.
#[repr(C, align(4096))]
struct ProgramPages([AtomicU64; 1024]);

impl ProgramPages {
    /// Writes `code` (RV64 instruction words, little-endian) at the start of the first
    /// page.
    fn load_code(&self, code: &[u32]) {
        for (i, pair) in code.chunks(2).enumerate() {
            let lo = u64::from(pair[0]);
            let hi = pair.get(1).map_or(0, |w| u64::from(*w));
            self.0[i].store(lo | (hi << 32), Ordering::Relaxed);
        }
    }
}

static PROGRAM: ProgramPages = ProgramPages([const { AtomicU64::new(0) }; 1024]);

/// The program (RV64, one word each): loads the u64 at the start of the next page,
/// stores it 8 bytes further on, and EXITs itself with it as the exit code.
const PROGRAM_CODE: [u32; 9] = [
    0x0000_1297, // auipc t0, 1          t0 = the data page
    0x0002_b583, // ld    a1, 0(t0)      a1 = the exit code
    0x00b2_b423, // sd    a1, 8(t0)      a write into the data page
    0x0010_0513, // addi  a0, zero, 1    CID 1: itself
    0x0000_0813, // addi  a6, zero, 0    FID_EXIT
    0x0a00_08b7, // lui   a7, 0xa000
    0x0058_8893, // addi  a7, a7, 5      EID 0x0A000005
    0x0000_0073, // ecall
    0x0000_006f, // j     .
];

/// Children built with SPAWN_PAUSED + MAP_CHILD_MEM + START, running a program this
/// VM wrote: MAP_CHILD_MEM copies (copy-on-write) at the time of the call, the child's
/// writes stay its own, and a page mapped without W is read-only for good.
fn built_children(base: &VmInfo) {
    const _: () = assert!(ext::FID_EXIT == 0 && ext::EID == 0x0A00_0005);
    let words = &PROGRAM.0;
    PROGRAM.load_code(&PROGRAM_CODE);
    let code = words.as_ptr() as usize;
    let data = code + 4096;
    for (data_perms, name) in [
        (flags::MAP_READ | flags::MAP_WRITE, "built_child"),
        (flags::MAP_READ, "built_child_read_only"),
    ] {
        words[512].store(0x5EED, Ordering::Relaxed);
        words[513].store(0, Ordering::Relaxed);
        let mut a = child_args(CHILD_PAGES);
        a.flags = flags::SPAWN_PAUSED;
        let r = DSX.spawn(&a);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_spawned"));
        if !check(l.as_str(), r.error, error::SUCCESS) {
            return;
        }
        let c = r.value;
        let map = |child_gpa: usize, parent_gpa: usize, perms: u64| {
            DSX.map_child_mem(c as u64, child_gpa, parent_gpa, 4096, perms)
        };
        let base = child_ram(c as u64);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_map_code"));
        check_ok(
            l.as_str(),
            map(base + 0x60_0000, code, flags::MAP_READ | flags::MAP_EXEC),
            0,
        );
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_map_data"));
        check_ok(l.as_str(), map(base + 0x60_1000, data, data_perms), 0);
        // Changed after the copy: the child must not see it.
        words[512].store(0xBAD, Ordering::Relaxed);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_start"));
        check_ok(l.as_str(), DSX.start(c as u64, base + 0x60_0000, base), 0);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_exit_code"));
        // Behind PMP a child's RAM is one block with one permission: MAP_CHILD_MEM
        // copies the bytes, and the child may write its copy (documented).
        let want = if data_perms & flags::MAP_WRITE != 0 || pmp() {
            0x5EED
        } else {
            // The store into the read-only page is a fatal fault.
            diosix_abi::exit_code::FATAL_FAULT
        };
        check(
            l.as_str(),
            wait_event(event::CHILD_TERMINATED, c as u64, 5_000).map(|e| e.exit_code),
            Some(want),
        );
        forget_events(c as u64);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_parent_page_unchanged"));
        check(
            l.as_str(),
            (
                words[512].load(Ordering::Relaxed),
                words[513].load(Ordering::Relaxed),
            ),
            (0xBAD, 0),
        );
    }
    check(
        "built_children_usage_back",
        usage(&info_or_default()),
        usage(base),
    );
}

/// A program and its data page for [`heap_stress`].
static FLOOD: ProgramPages = ProgramPages([const { AtomicU64::new(0) }; 1024]);

/// The flood program (RV64): sends its parent 16 messages of 4 KiB (as many as a lane
/// holds; the IPC_SEND arguments are at the start of the next page, the message is that
/// page), writes 20 KiB to its console (the ring holds 16 KiB), then waits for ever.
const FLOOD_CODE: [u32; 21] = [
    0x0000_1497, // auipc s1, 1          s1 = the data page
    0x0100_0413, // addi  s0, zero, 16
    0x0004_8513, // 1: addi a0, s1, 0    a0 = the IPC_SEND arguments
    0x0070_0813, // addi  a6, zero, 7    FID_IPC_SEND
    0x0a00_08b7, // lui   a7, 0xa000
    0x0058_8893, // addi  a7, a7, 5      EID 0x0A000005
    0x0000_0073, // ecall
    0xfff4_0413, // addi  s0, s0, -1
    0xfe04_14e3, // bne   s0, zero, 1b
    0x0050_0413, // addi  s0, zero, 5
    0x0000_1537, // 2: lui a0, 1         4096 bytes
    0x0004_8593, // addi  a1, s1, 0      from the data page
    0x0000_0613, // addi  a2, zero, 0
    0x4442_48b7, // lui   a7, 0x44424
    0x34e8_8893, // addi  a7, a7, 0x34e  EID DBCN
    0x0000_0813, // addi  a6, zero, 0    console write
    0x0000_0073, // ecall
    0xfff4_0413, // addi  s0, s0, -1
    0xfe04_10e3, // bne   s0, zero, 2b
    0x1050_0073, // 3: wfi
    0xffdf_f06f, // j     3b
];

/// Children at the Root VM's descendant limit, every one with every queue the
/// hypervisor keeps for it full: its lane at its parent (16 × 4 KiB, sent by the
/// child), its parent's lane at it (16 × 4 KiB), its console input (4 KiB) and output
/// (16 KiB ring, overflowing). The descendant quota is sized so the hypervisor heap
/// holds all of it; the hypervisor must keep answering, and everything comes back.
fn heap_stress(base: &VmInfo) {
    const _: () = assert!(ext::FID_IPC_SEND == 7 && limits::IPC_QUEUE_DEPTH == 16);
    const _: () =
        assert!(diosix_abi::eid::DBCN == 0x4442_434E && limits::CONSOLE_OUT_RING == 16384);
    let words = &FLOOD.0;
    FLOOD.load_code(&FLOOD_CODE);
    // The last two pages of the children's 4 MiB of RAM (offsets into it: where a
    // child's RAM is comes from GET_CHILD_INFO).
    const CHILD_CODE: usize = 0x3F_E000;
    // The IPC_SEND arguments the child's code passes, naming its data page by GPA:
    // written before each child's copy is made, since in PMP mode each child's RAM
    // is somewhere else.
    let write_args = |child_data: u64| {
        let args = IpcSendArgs {
            size: IpcSendArgs::SIZE as u32,
            flags: 0,
            cid: cid::PARENT,
            data_gpa: child_data,
            len: 4096,
        }
        .to_le_bytes();
        for (i, chunk) in args.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            words[512 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
    };
    let code = words.as_ptr() as usize;
    let me = info_or_default();
    let room = me.max_descendants - me.descendants_reserved;
    let mut kids = [0u64; 256];
    let mut n = 0usize;
    let big = [0xA5u8; 4096];
    let mut refused = error::SUCCESS;
    while n < kids.len() {
        let mut a = child_args(1024);
        a.flags = flags::SPAWN_PAUSED;
        let r = DSX.spawn(&a);
        if r.error != error::SUCCESS {
            refused = r.error;
            break;
        }
        let c = r.value;
        let map = |child_gpa: usize, parent_gpa: usize, perms: u64| {
            DSX.map_child_mem(c as u64, child_gpa, parent_gpa, 4096, perms)
                .error
        };
        let child_code = child_ram(c as u64) + CHILD_CODE;
        write_args(child_code as u64 + 4096);
        let mut ok = map(child_code, code, flags::MAP_READ | flags::MAP_EXEC) == 0
            && map(child_code + 4096, code + 4096, flags::MAP_READ) == 0;
        for _ in 0..limits::IPC_QUEUE_DEPTH {
            ok &= DSX.ipc_send(c as u64, &big).error == error::SUCCESS;
        }
        ok &= DSX.console_write(c as u64, &big).value == 4096;
        ok &= DSX.start(c as u64, child_code, child_ram(c as u64)).error == 0;
        if !ok {
            fail("heap_stress_child_setup", "refused", "all accepted");
            kill_child("heap_stress_kill_bad", c as u64, 0);
            break;
        }
        kids[n] = c as u64;
        n += 1;
    }
    note(format_args!(
        "heap stress: {n} children (descendant room {room}), then {refused}"
    ));
    check("heap_stress_fills_descendants", n as u32, room);
    check("heap_stress_stopped_by_quota", refused, error::DENIED);
    // Every child sends 16 messages and overflows its console by 4 KiB.
    let mut flooded = 0;
    for &c in &kids[..n] {
        let end = csr::time() + ms(10_000);
        while csr::time() < end {
            if DSX.child_info(c).is_ok_and(|i| i.console_dropped == 4096) {
                flooded += 1;
                break;
            }
            pause();
        }
    }
    check("heap_stress_children_flooded", flooded, n);
    check_ok(
        "heap_stress_hypervisor_answers",
        DSX.call2(ext::FID_GET_HV_INFO, DSX.structs().addr(), HvInfo::SIZE),
        0,
    );
    for &c in &kids[..n] {
        let _ = DSX.exit(c, 0);
    }
    for &c in &kids[..n] {
        wait_event(event::CHILD_TERMINATED, c, 5_000);
        forget_events(c);
    }
    check(
        "heap_stress_usage_back",
        usage(&info_or_default()),
        usage(base),
    );
}

/// CID 4: replaced by a second SPAWN with its CID, then exits itself with code 7.
fn self_exit_child(base: &VmInfo) {
    let Some(c) = spawn_child("spawn_child_cid_4", &child_args(CHILD_PAGES), 4) else {
        return;
    };
    check("cid_4_hello", wait_console(c, READY, 10_000), true);
    let mut a = child_args(CHILD_PAGES);
    a.cid = c;
    check_ok("spawn_replace_keeps_cid", DSX.spawn(&a), c as usize);
    reset_log(c);
    check("spawn_replace_one_child", info_or_default().child_count, 1);
    check("replaced_child_hello", wait_console(c, READY, 10_000), true);
    check(
        "replace_no_terminated_event",
        wait_event(event::CHILD_TERMINATED, c, 20).is_none(),
        true,
    );
    check_ok("ipc_send_exit", DSX.ipc_send(c, b"exit"), 0);
    check(
        "child_exit_code_7",
        wait_event(event::CHILD_TERMINATED, c, 5_000).map(|e| e.exit_code),
        Some(7),
    );
    forget_events(c);
    check(
        "usage_back_after_self_exit",
        usage(&info_or_default()),
        usage(base),
    );
}

/// CID 5: a child with room for a grandchild, which it spawns from a copy of the
/// image the Root VM uploads to it by IPC; then a FORK inside the child.
/// EXEC in child `c`, which holds the uploaded copy of its own image 4 MiB into its RAM:
/// four bad requests are refused with their documented codes and change nothing; the
/// real one restarts the child as that image under the same CID (its parent gets
/// `CHILD_REBOOTED`), untrusted as before, and it says hello again.
fn exec_in_child(c: u64, img_len: usize) {
    reset_log(c);
    let at = child_ram(c) + 0x40_0000;
    let cmd: dsx::Line<64> = dsx::fmt(format_args!("exec {at:x} {img_len:x}"));
    check_ok("ipc_send_exec", DSX.ipc_send(c, cmd.bytes()), 0);
    let want: dsx::Line<64> = dsx::fmt(format_args!(
        "vmchild: exec refused {} {} {} {}",
        error::INVALID_PARAM,
        error::DENIED,
        error::INVALID_ADDRESS,
        error::INVALID_PARAM
    ));
    check(
        "exec_refusals_in_child",
        wait_console(c, want.bytes(), 10_000),
        true,
    );
    check(
        "exec_child_rebooted_event",
        wait_event(event::CHILD_REBOOTED, c, 10_000).map(|e| e.kind),
        Some(event::CHILD_REBOOTED),
    );
    check(
        "exec_child_says_hello_again",
        wait_console(c, READY, 10_000),
        true,
    );
    check(
        "exec_child_same_cid_untrusted",
        DSX.child_info(c)
            .map(|i| (i.cid, i.flags & flags::INFO_TRUSTED)),
        Ok((c, 0)),
    );
}

fn three_level() {
    let (img, img_len) = image();
    let tables = 64;
    let mut a = child_args(CHILD_PAGES);
    // Itself and two clones, each with its fork-time snapshot: RAM is never what stops
    // the fork bomb below, the descendants quota is.
    a.quota_ram_pages = 5 * (CHILD_PAGES + tables);
    a.quota_vcpus = 3;
    a.quota_max_depth = 1;
    a.quota_max_descendants = 2;
    let Some(c) = spawn_child("spawn_child_cid_5_with_quota", &a, 5) else {
        return;
    };
    check(
        "child_5_quota",
        DSX.child_info(c)
            .map(|i| (i.ram_pages_max, i.vcpus_max, i.max_depth)),
        Ok((5 * (CHILD_PAGES + tables), 3, 1)),
    );
    check("cid_5_hello", wait_console(c, READY, 10_000), true);
    let mut next_grandchild = 2;
    // Upload: one `recv` then the image in 4 KiB messages, never more than a lane holds.
    let chunks = img_len.div_ceil(4096);
    if chunks + 1 > dsx::limits::IPC_QUEUE_DEPTH * 8 {
        skip("three_level", "child image too large to upload");
    } else {
        let cmd: dsx::Line<64> = dsx::fmt(format_args!("recv {img_len:x}"));
        let mut ok = DSX.ipc_send(c, cmd.bytes()).error == error::SUCCESS;
        for i in 0..chunks {
            let off = i * 4096;
            let n = (img_len - off).min(4096);
            let chunk = &CHILD_IMAGE.0[off..off + n];
            // Retry while the lane is full (the child drains it).
            let end = csr::time() + ms(5_000);
            loop {
                let r = DSX.ipc_send(c, chunk);
                if r.error == error::SUCCESS {
                    break;
                }
                if r.error != error::FAILED || csr::time() > end {
                    ok = false;
                    break;
                }
                pause();
            }
        }
        check("upload_image_to_child", ok, true);
        let want: dsx::Line<64> = dsx::fmt(format_args!("got {img_len:x}"));
        check(
            "child_received_image",
            wait_message(c, 10_000).as_ref().map(|m| m.as_str()),
            Some(want.as_str()),
        );
        let at = child_ram(c) + 0x40_0000;
        let cmd: dsx::Line<64> = dsx::fmt(format_args!("spawn {at:x} {img_len:x}"));
        check_ok("ipc_send_spawn", DSX.ipc_send(c, cmd.bytes()), 0);
        let m = wait_message(c, 20_000);
        check(
            "grandchild_spawned",
            m.as_ref().map(|m| m.as_str()),
            Some("spawned cid=2 hello=1"),
        );
        if m.is_some_and(|m| m.as_str().starts_with("spawned cid=2")) {
            next_grandchild = 3;
        }
        let me = info_or_default();
        check(
            "three_levels_in_root_info",
            (me.descendants_used, me.depth_used, me.child_count),
            (2, 2, 1),
        );
        check(
            "three_levels_in_child_info",
            DSX.child_info(c)
                .map(|i| (i.descendants_used, i.depth_used, i.child_count)),
            Ok((1, 1, 1)),
        );
        check_ok("ipc_send_kill", DSX.ipc_send(c, b"kill"), 0);
        check(
            "grandchild_killed",
            wait_message(c, 10_000).as_ref().map(|m| m.as_str()),
            Some("killed cid=2 code=5"),
        );
        check("grandchild_gone", info_or_default().descendants_used, 1);
    }
    let _ = img;
    exec_in_child(c, img_len);
    // FORK inside the child (its quota has room for one clone).
    check_ok("ipc_send_fork", DSX.ipc_send(c, b"fork"), 0);
    let mut want: dsx::Line<64> = dsx::fmt(format_args!("fork ok cid={next_grandchild} code=9"));
    // Behind PMP there is no FORK, in a child as anywhere: NOT_SUPPORTED (-2).
    let pmp = pmp();
    if pmp {
        want = dsx::fmt(format_args!("fork err {}", error::NOT_SUPPORTED));
    }
    match wait_message(c, 10_000) {
        Some(m) => {
            check("fork_in_child", m.as_str(), want.as_str());
        }
        None => fail("fork_in_child", "no answer", want.as_str()),
    }
    // A fork bomb inside the child: its clones stay alive, so it is stopped only by the
    // quota its parent gave it (two descendants; the clone above is gone).
    check_ok("ipc_send_forkbomb", DSX.ipc_send(c, b"forkbomb"), 0);
    let (bomb, clones) = if pmp {
        ("forkbomb n=0 err=-2", (0, 0))
    } else {
        ("forkbomb n=2 err=-4", (2, 2))
    };
    check(
        "fork_bomb_stopped_by_descendants_quota",
        wait_message(c, 20_000).as_ref().map(|m| m.as_str()),
        Some(bomb),
    );
    check(
        "fork_bomb_clones_counted",
        DSX.child_info(c)
            .map(|i| (i.descendants_used, i.child_count)),
        Ok(clones),
    );
    drain_console(c).ok();
    // Killing the child takes its two clones with it (the free-pages check at the end
    // of the run confirms every page came back).
    kill_child("exit_child_5", c, 0);
}

/// FORK of the Root VM itself; behind PMP, that FORK is refused before anything is
/// charged.
fn fork_checks(base: &VmInfo) {
    check_err("fork_unknown_flags", DSX.fork(4), error::INVALID_PARAM);
    check_err("fork_high_flag", DSX.fork(1 << 63), error::INVALID_PARAM);
    if pmp() {
        check_err("fork_pmp_not_supported", DSX.fork(0), error::NOT_SUPPORTED);
        check(
            "fork_pmp_nothing_charged",
            usage(&info_or_default()),
            usage(base),
        );
        return;
    }
    // A plain FORK keeps a snapshot for REBOOT (charged a second RAM's worth); the
    // second one keeps none.
    for (fl, name) in [
        (0, "fork"),
        (
            flags::FORK_UNTRUSTED | flags::FORK_NO_SNAPSHOT,
            "fork_untrusted",
        ),
    ] {
        let untrusted = fl & flags::FORK_UNTRUSTED != 0;
        let snapshot = fl & flags::FORK_NO_SNAPSHOT == 0;
        let me = info_or_default();
        // This Root VM's tables are the host's estimate for its RAM, which is what the
        // clone (and its snapshot) are charged.
        let one = me.own_ram_pages + me.own_table_pages;
        let charge = if snapshot { 2 * one } else { one };
        let fits = me.vcpus_max - me.vcpus_reserved >= me.own_vcpus
            && me.ram_pages_max - me.ram_pages_reserved >= charge;
        let r = DSX.fork(fl);
        if r.error == error::SUCCESS && r.value == 0 {
            fork_child_main();
        }

        if !fits {
            // The clone charges the whole Root VM again: more than its headroom.
            check_err("fork_beyond_headroom_denied", r, error::DENIED);
            skip(
                "fork",
                "the Root VM's headroom cannot hold a copy of it (by design)",
            );
            return;
        }
        if !check_err(name, r, error::SUCCESS) {
            return;
        }
        let c = r.value as u64;
        println!("vmtree: forked, child cid {c}");
        reset_log(c);
        let alive: dsx::Line<64> = dsx::fmt(format_args!(
            "vmtree-fork: child alive, cid 1, flags {:#x}, boot 1",
            if untrusted { 0 } else { 1 }
        ));
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_child_runs"));
        check(
            l.as_str(),
            wait_console(c, alive.as_str().as_bytes(), 10_000),
            true,
        );
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_child_info"));
        check(
            l.as_str(),
            DSX.child_info(c)
                .map(|i| (i.own_ram_pages, i.own_table_pages, i.own_vcpus, i.flags)),
            Ok((
                me.own_ram_pages,
                charge - me.own_ram_pages,
                me.own_vcpus,
                if untrusted { 0 } else { flags::INFO_TRUSTED },
            )),
        );
        if snapshot {
            child_mem_checks(c);
        }
        if snapshot {
            // Back to the fork-time state: the memory too (the boot counter the child
            // bumped is 0 again, so it says "boot 1" again, not "boot 2").
            for (how, l) in [("reboot", "fork_reboot"), ("srst", "fork_srst_reboot")] {
                reset_log(c);
                let r = if how == "reboot" {
                    DSX.reboot(c)
                } else {
                    DSX.ipc_send(c, b"srst")
                };
                check_ok(l, r, 0);
                let ln: dsx::Line<64> = dsx::fmt(format_args!("{l}_event"));
                check(
                    ln.as_str(),
                    wait_event(event::CHILD_REBOOTED, c, 5_000).map(|e| e.kind),
                    Some(event::CHILD_REBOOTED),
                );
                let ln: dsx::Line<64> = dsx::fmt(format_args!("{l}_memory_restored"));
                check(
                    ln.as_str(),
                    wait_console(c, alive.as_str().as_bytes(), 10_000),
                    true,
                );
                let ln: dsx::Line<64> = dsx::fmt(format_args!("{l}_keeps_usage"));
                check(
                    ln.as_str(),
                    DSX.child_info(c)
                        .map(|i| (i.own_ram_pages, i.own_table_pages)),
                    Ok((me.own_ram_pages, charge - me.own_ram_pages)),
                );
            }
        } else {
            check_err(
                "fork_no_snapshot_reboot_not_supported",
                DSX.reboot(c),
                error::NOT_SUPPORTED,
            );
        }
        check_ok("fork_ipc_exit", DSX.ipc_send(c, b"exit"), 0);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_child_exit_code"));
        check(
            l.as_str(),
            wait_event(event::CHILD_TERMINATED, c, 5_000).map(|e| e.exit_code),
            Some(0x33),
        );
        forget_events(c);
        let l: dsx::Line<64> = dsx::fmt(format_args!("{name}_usage_back"));
        check(l.as_str(), usage(&info_or_default()), usage(base));
    }
}

/// Bytes at the same GPA in this VM and in a FORK clone of it (shared copy-on-write
/// until one side writes).
static CHILD_MEM_PROBE: [u8; 32] = *b"diosix child-mem probe, parent.\n";

/// CHILD_MEM_READ / CHILD_MEM_WRITE on the FORK clone `c`: reads what it shares with
/// this VM, writes its copy without touching this VM's (copy-on-write broken in the
/// child, as the child's own store would), reads that back, and is refused anything
/// but a direct child's RAM.
fn child_mem_checks(c: u64) {
    let probe = CHILD_MEM_PROBE.as_ptr() as usize;
    let data = DSX.data();
    let mut got = [0u8; 32];
    check_ok(
        "child_mem_read",
        DSX.child_mem_read(c, probe, data.addr(), 32),
        32,
    );
    data.read(0, &mut got);
    check("child_mem_read_shared", got, CHILD_MEM_PROBE);
    let theirs = *b"diosix child-mem probe, child! \n";
    data.write(0, &theirs);
    check_ok(
        "child_mem_write",
        DSX.child_mem_write(c, probe, data.addr(), 32),
        32,
    );
    // SAFETY: a read of a static this VM owns; volatile, so it reads the memory (a
    // hypervisor that wrote the wrong copy would show here), not the constant.
    let mine: [u8; 32] =
        unsafe { core::ptr::read_volatile(CHILD_MEM_PROBE.as_ptr().cast::<[u8; 32]>()) };
    check(
        "child_mem_write_parent_untouched",
        mine,
        *b"diosix child-mem probe, parent.\n",
    );
    data.write(0, &[0; 32]);
    check_ok(
        "child_mem_read_back",
        DSX.child_mem_read(c, probe, data.addr(), 32),
        32,
    );
    data.read(0, &mut got);
    check("child_mem_read_back_bytes", got, theirs);
    check_err(
        "child_mem_self_denied",
        DSX.child_mem_read(cid::SELF, probe, data.addr(), 32),
        error::DENIED,
    );
    check_err(
        "child_mem_too_long",
        DSX.child_mem_read(c, probe, data.addr(), limits::CHILD_MEM_MAX + 1),
        error::INVALID_PARAM,
    );
    check_err(
        "child_mem_outside_child_ram",
        DSX.child_mem_read(c, outside(), data.addr(), 8),
        error::INVALID_ADDRESS,
    );
    check_err(
        "child_mem_outside_own_ram",
        DSX.child_mem_write(c, probe, outside(), 8),
        error::INVALID_ADDRESS,
    );
}

/// Times `fork_child_main` ran in this VM's memory: 0 in the parent, which never runs
/// it, so a clone always starts from 0 and one put back by REBOOT does too.
static FORK_BOOTS: AtomicU32 = AtomicU32::new(0);

/// The clone made by FORK (a0 = 0, a1 = 0): says so, then on `exit` exits 0x33, on
/// `srst` asks SRST for a cold reboot of itself.
fn fork_child_main() -> ! {
    let boot = FORK_BOOTS.fetch_add(1, Ordering::Relaxed) + 1;
    let i = info_or_default();
    println!(
        "vmtree-fork: child alive, cid {}, flags {:#x}, boot {boot}",
        i.cid, i.flags
    );
    let end = csr::time() + ms(10_000);
    while csr::time() < end {
        if let Ok(Some((_, n))) = DSX.ipc_recv(cid::PARENT, flags::IPC_RECV_EXACT, 64) {
            let mut msg = [0u8; 8];
            let n = n.min(msg.len());
            DSX.data().read(0, &mut msg[..n]);
            if &msg[..n] == b"srst" {
                println!("vmtree-fork: SRST reboot");
                // Cold reboot: 1.
                sbi::system_reset(1, 0);
                println!("vmtree-fork: SRST reboot returned");
            }
            break;
        }
        pause();
    }
    println!("vmtree-fork: exiting");
    DSX.exit(cid::SELF, 0x33);
    loop {
        sleep_ticks(ms(1000));
    }
}

/// SET_QUOTA on itself: values, one-way lowering, floors.
fn quota_checks() {
    let me = info_or_default();
    let bad = |name: &str, f: &dyn Fn(&mut diosix_abi::QuotaArgs), expected: isize| {
        let mut q = dsx::quota_args(cid::SELF);
        f(&mut q);
        check_err(name, DSX.set_quota(&q), expected);
    };
    bad("set_quota_size_39", &|q| q.size = 39, error::INVALID_PARAM);
    bad(
        "set_quota_flags",
        &|q| q.flags = 1 << 5,
        error::INVALID_PARAM,
    );
    bad(
        "set_quota_vcpus_4097",
        &|q| q.vcpus = 4097,
        error::INVALID_PARAM,
    );
    bad(
        "set_quota_priority_256",
        &|q| q.max_priority = 256,
        error::INVALID_PARAM,
    );
    bad(
        "set_quota_priority_0_set",
        &|q| q.flags = flags::QUOTA_SET_PRIORITY,
        error::INVALID_PARAM,
    );
    bad(
        "set_quota_depth_65",
        &|q| q.max_depth = 65,
        error::INVALID_PARAM,
    );
    bad(
        "set_quota_descendants_65537",
        &|q| q.max_descendants = 65537,
        error::INVALID_PARAM,
    );
    check_err(
        "set_quota_unaligned",
        DSX.call_struct(
            ext::FID_SET_QUOTA,
            &dsx::quota_args(cid::SELF).to_le_bytes(),
            4,
        ),
        error::INVALID_ADDRESS,
    );
    check_ok(
        "set_quota_nothing",
        DSX.set_quota(&dsx::quota_args(cid::SELF)),
        0,
    );
    bad(
        "set_quota_self_raise_denied",
        &|q| q.ram_pages = me.ram_pages_max + 1,
        error::DENIED,
    );
    bad(
        "set_quota_self_below_holding",
        &|q| {
            q.flags = flags::QUOTA_SET_RAM;
            q.ram_pages = 1;
        },
        error::INVALID_STATE,
    );
    bad(
        "set_quota_self_vcpus_below_own",
        &|q| {
            q.flags = flags::QUOTA_SET_VCPUS;
            q.vcpus = 0;
        },
        error::INVALID_STATE,
    );
    let lower = me.ram_pages_max - 1;
    let mut q = dsx::quota_args(cid::SELF);
    q.ram_pages = lower;
    check_ok("set_quota_self_lower", DSX.set_quota(&q), 0);
    check(
        "set_quota_self_lowered",
        info_or_default().ram_pages_max,
        lower,
    );
    check(
        "hv_info_follows_quota",
        DSX.hv_info().map(|h| h.ram_total_pages),
        Ok(lower),
    );
    q.ram_pages = me.ram_pages_max;
    check_err(
        "set_quota_self_raise_back_denied",
        DSX.set_quota(&q),
        error::DENIED,
    );
    check(
        "set_quota_still_lowered",
        info_or_default().ram_pages_max,
        lower,
    );
    let room = lower - me.ram_pages_reserved;
    let mut a = child_args(CHILD_PAGES);
    a.ram_pages = room + 1;
    check_err(
        "spawn_beyond_lowered_quota_denied",
        DSX.spawn(&a),
        error::DENIED,
    );
}

/// What the host hands the (trusted) Root VM on QEMU `virt`, and what it never
/// does: the Root VM holds the virtio-mmio transports (interrupts 1-8) and the RTC
/// (11), mapped at their host addresses, with a virtual PLIC at 0x0c00_0000; the
/// hypervisor's own UART (10), PLIC, CLINT, reset device and RAM are never handed out.
fn host_device_checks() {
    let mmio = |hpa: usize, gpa: usize, size: usize| DSX.map_host_mmio(hpa, gpa, size);
    const SPARE_GPA: usize = 0x4000_0000;
    for (name, hpa) in [
        ("map_host_mmio_hv_uart", 0x1000_0000),
        ("map_host_mmio_hv_plic", 0x0c00_0000),
        ("map_host_mmio_hv_clint", 0x0200_0000),
        ("map_host_mmio_hv_reset", 0x0010_0000),
        ("map_host_mmio_ram", 0x8000_0000),
        ("map_host_mmio_nothing_there", 0x0900_0000),
    ] {
        check_err(name, mmio(hpa, SPARE_GPA, 4096), error::INVALID_ADDRESS);
    }
    check_err(
        "map_host_mmio_wraps",
        mmio(usize::MAX & !0xfff, SPARE_GPA, 0x2000),
        error::INVALID_ADDRESS,
    );
    check_err(
        "map_host_mmio_straddles_two_devices",
        mmio(0x1000_1000, SPARE_GPA, 0x2000),
        error::INVALID_ADDRESS,
    );
    check_err(
        "map_host_mmio_already_held",
        mmio(0x1000_1000, SPARE_GPA, 0x1000),
        error::ALREADY_AVAILABLE,
    );
    check_err("route_irq_zero", DSX.route_irq(0), error::INVALID_PARAM);
    check_err("route_irq_hv_uart", DSX.route_irq(10), error::DENIED);
    check_err(
        "route_irq_already_routed",
        DSX.route_irq(1),
        error::ALREADY_AVAILABLE,
    );
    check_err(
        "route_irq_beyond_ndev",
        DSX.route_irq(96),
        error::INVALID_PARAM,
    );
    // The virtual PLIC answers as a PLIC: priorities are 3-bit WARL registers, a
    // claim with nothing pending is 0, reserved words read 0 and ignore writes.
    let (rd, wr) = (virt::plic_read, virt::plic_write);
    wr(virt::priority(RTC_IRQ), 5);
    check("vplic_priority_reads_back", rd(virt::priority(RTC_IRQ)), 5);
    wr(virt::priority(RTC_IRQ), 0xff);
    check("vplic_priority_is_3_bits", rd(virt::priority(RTC_IRQ)), 7);
    wr(virt::priority(RTC_IRQ), 0);
    check("vplic_claim_nothing_pending", rd(virt::claim(0)), 0);
    wr(0x1f_fff0, 0xdead_beef);
    check("vplic_reserved_reads_zero", rd(0x1f_fff0), 0);
    wr(virt::enable(0), 1 << RTC_IRQ);
    check("vplic_enable_reads_back", rd(virt::enable(0)), 1 << RTC_IRQ);
    wr(virt::enable(0), 1);
    check("vplic_enable_source0_hardwired", rd(virt::enable(0)), 0);
    rtc_interrupt_checks();
    device_handover_checks();
}

/// A real host interrupt end to end: the goldfish RTC's alarm (source 11, a level
/// line until the RTC's interrupt is cleared) arrives on this vCPU's virtual PLIC
/// context; a claimed source is held (no second delivery, however often the device
/// signals it) until completed; after each completion the next signal is delivered
/// once (nothing lost, nothing doubled); a cleared one is not.
/// Polled through `sip.SEIP` with interrupts off.
fn rtc_interrupt_checks() {
    use virt::{plic_read as rd, plic_write as wr, rtc, rtc_write, seip, wait_seip};
    let context = csr_hart();
    let claim = virt::claim(context);
    wr(virt::priority(RTC_IRQ), 1);
    wr(virt::enable(context), 1 << RTC_IRQ);
    wr(virt::threshold(context), 0);
    // Alarm 1 ms from now, interrupt enabled.
    virt::rtc_alarm_in(1_000_000);
    check("vplic_rtc_interrupt_arrives", wait_seip(true, 500), true);
    check("vplic_claims_rtc", rd(claim), RTC_IRQ);
    check("vplic_line_drops_after_claim", wait_seip(false, 10), true);
    // The RTC asserts its line again (rewriting IRQ_ENABLED re-signals it), but the
    // source is in service: nothing more arrives until it is completed.
    rtc_write(rtc::IRQ_ENABLED, 1);
    check("vplic_claimed_source_held", wait_seip(true, 20), false);
    // Each completion lets exactly one more assertion through, a thousand times over.
    let mut again = 0u32;
    for _ in 0..1000 {
        wr(claim, RTC_IRQ);
        if wait_seip(true, 100) && rd(claim) == RTC_IRQ && !seip() {
            again += 1;
        }
        rtc_write(rtc::IRQ_ENABLED, 1);
    }
    check(
        "vplic_redelivered_once_per_completion_1000_times",
        again,
        1000,
    );
    // Cleared at the device, then completed. The last signal, sent while the source
    // was in service, is already latched at the host PLIC (a PLIC's pending bit goes
    // only by a claim), so at most one more arrives; then it is quiet.
    rtc_write(rtc::CLEAR_INTERRUPT, 1);
    wr(claim, RTC_IRQ);
    if wait_seip(true, 20) {
        check("vplic_latched_signal_claimed", rd(claim), RTC_IRQ);
        wr(claim, RTC_IRQ);
    }
    check("vplic_cleared_stays_quiet", wait_seip(true, 20), false);
    check("vplic_nothing_to_claim", rd(claim), 0);
    rtc_write(rtc::IRQ_ENABLED, 0);
    wr(virt::enable(context), 0);
}

/// RELEASE_DEVICE, and a device handed down: the Root VM gives the RTC back (to the
/// host pool: it has no parent), a trusted child it spawns takes it from there (maps
/// it, routes its interrupt to its own virtual PLIC and takes an alarm on it) while the
/// Root VM is refused it, and when the child drops its trust the RTC lands in the Root
/// VM's pool, which maps and routes it again.
fn device_handover_checks() {
    use flags::{DEVICE_BY_IRQ as BY_IRQ, DEVICE_BY_WINDOW as BY_WINDOW};
    let release = |by, which| DSX.release_device(by, which);
    for (name, by, which, code) in [
        (
            "release_device_bad_kind",
            2,
            virt::RTC,
            error::INVALID_PARAM,
        ),
        (
            "release_device_unaligned",
            BY_WINDOW,
            virt::RTC + 0x10,
            error::INVALID_ADDRESS,
        ),
        (
            "release_device_hv_uart",
            BY_WINDOW,
            0x1000_0000,
            error::INVALID_ADDRESS,
        ),
        (
            "release_device_ram",
            BY_WINDOW,
            0x8000_0000,
            error::INVALID_ADDRESS,
        ),
        ("release_device_irq_zero", BY_IRQ, 0, error::INVALID_PARAM),
        (
            "release_device_irq_hv_uart",
            BY_IRQ,
            10,
            error::INVALID_PARAM,
        ),
        (
            "release_device_irq_wide",
            BY_IRQ,
            (1 << 32) | 11,
            error::INVALID_PARAM,
        ),
    ] {
        check_err(name, release(by, which), code);
    }
    check_ok("release_device_rtc", release(BY_IRQ, RTC_IRQ as usize), 0);
    check_err(
        "release_device_not_held",
        release(BY_WINDOW, virt::RTC),
        error::DENIED,
    );
    // (An access to the window now would be a fatal fault: it is not mapped. That it
    // is gone shows below, when the same GPA takes a mapping again.)
    let mut a = child_args(CHILD_PAGES);
    a.flags = flags::SPAWN_TRUSTED;
    let r = DSX.spawn(&a);
    if !check_err("spawn_trusted_device_child", r, error::SUCCESS) {
        return;
    }
    let c = r.value as u64;
    reset_log(c);
    wait_console(c, READY, 10_000);
    let ask = |cmd: &[u8], reply: &str| {
        let sent = DSX.ipc_send(c, cmd).error == error::SUCCESS;
        let got = wait_message(c, 10_000);
        if let Some(l) = &got {
            println!(
                "vmtree: child {c} answered {:?}: {}",
                core::str::from_utf8(cmd),
                l.as_str()
            );
        }
        sent && got.is_some_and(|l| l.as_str() == reply)
    };
    // The child maps the RTC and routes 11 (both 0) and claims 11 on its own PLIC.
    check("trusted_child_takes_rtc", ask(b"rtc", "rtc 0 0 11"), true);
    check_err(
        "map_host_mmio_child_holds_it_denied",
        DSX.map_host_mmio(virt::RTC, virt::RTC, 4096),
        error::DENIED,
    );
    check_err(
        "route_irq_child_holds_it_denied",
        DSX.route_irq(RTC_IRQ as usize),
        error::DENIED,
    );
    check(
        "trusted_child_drops_trust",
        ask(b"droptrust", "droptrust 0"),
        true,
    );
    check_ok(
        "map_host_mmio_back_from_child",
        DSX.map_host_mmio(virt::RTC, virt::RTC, 4096),
        0,
    );
    check_ok(
        "route_irq_back_from_child",
        DSX.route_irq(RTC_IRQ as usize),
        0,
    );
    kill_child("exit_device_child", c, 2);
}

/// This vCPU's hart ID (= its virtual PLIC context).
fn csr_hart() -> usize {
    diosix_guest_rt::hart::id()
}

/// Trusted children, then the Root VM drops its trust for good (phase 2).
fn trust_checks() {
    let mmio = |hpa: usize, gpa: usize, size: usize| DSX.map_host_mmio(hpa, gpa, size);
    check_err(
        "map_host_mmio_size_0",
        mmio(0x1000_0000, 0x1000_0000, 0),
        error::INVALID_PARAM,
    );
    check_err(
        "map_host_mmio_size_not_pages",
        mmio(0x1000_0000, 0x1000_0000, 100),
        error::INVALID_PARAM,
    );
    check_err(
        "map_host_mmio_unaligned",
        mmio(0x1000_0010, 0x1000_0000, 4096),
        error::INVALID_ADDRESS,
    );
    check_err(
        "route_irq_nonexistent",
        DSX.route_irq(0xFFFF_FFFF),
        error::INVALID_PARAM,
    );
    host_device_checks();
    // Spawned paused: the child drops its own trust as soon as it runs, so its flags
    // are checked before it can (a running child would race the check).
    let mut a = child_args(CHILD_PAGES);
    a.flags = flags::SPAWN_TRUSTED | flags::SPAWN_PAUSED;
    let r = DSX.spawn(&a);
    if check_err("spawn_trusted_from_trusted", r, error::SUCCESS) {
        let c = r.value as u64;
        check(
            "trusted_child_flags",
            DSX.child_info(c).map(|i| i.flags),
            Ok(flags::INFO_TRUSTED),
        );
        check_ok("drop_child_trust", DSX.drop_child_trust(c), 0);
        check(
            "dropped_child_flags",
            DSX.child_info(c).map(|i| i.flags),
            Ok(0),
        );
        // As before its trust was dropped: a1 points at RAM holding no device tree.
        let (entry, _) = child_boot(c);
        check_ok("start_trusted_child", DSX.start(c, entry, child_ram(c)), 0);
        reset_log(c);
        wait_console(c, READY, 10_000);
        kill_child("exit_trusted_child", c, 1);
    }
    check_ok("drop_trust", DSX.drop_trust(), 0);
    check(
        "info_flags_root_only",
        info_or_default().flags,
        flags::INFO_ROOT,
    );
    check_ok("drop_trust_again", DSX.drop_trust(), 0);
    check_err(
        "spawn_trusted_from_untrusted_denied",
        DSX.spawn(&a),
        error::DENIED,
    );
    check_err(
        "map_host_mmio_untrusted_denied",
        mmio(0x1000_0000, 0x1000_0000, 4096),
        error::DENIED,
    );
    check_err(
        "route_irq_untrusted_denied",
        DSX.route_irq(10),
        error::DENIED,
    );
    let r = DSX.spawn(&child_args(CHILD_PAGES));
    if check_err("spawn_untrusted_from_untrusted", r, error::SUCCESS) {
        let c = r.value as u64;
        reset_log(c);
        check(
            "untrusted_child_flags",
            DSX.child_info(c).map(|i| i.flags),
            Ok(0),
        );
        wait_console(c, READY, 10_000);
        kill_child("exit_last_child", c, 3);
    }
    page_list_checks();
}

/// SPAWN_PAGE_LIST (docs: implementation status): the image given as a list of page
/// GPAs. Last, because a list the host refuses is refused after admission.
fn page_list_checks() {
    let (img, img_len) = image();
    let pages = img_len.div_ceil(4096);
    let list_off = 2048;
    if pages * 8 > 4096 - list_off {
        skip(
            "spawn_page_list",
            "child image too large for the test's list",
        );
        return;
    }
    for i in 0..pages {
        DSX.structs()
            .write(list_off + i * 8, &((img + i * 4096) as u64).to_le_bytes());
    }
    let mut a = child_args(CHILD_PAGES);
    a.flags = flags::SPAWN_PAGE_LIST;
    a.image_gpa = (DSX.structs().addr() + list_off) as u64;
    check_err(
        "spawn_page_list_unaligned_array",
        {
            let mut b = a;
            b.image_gpa += 4;
            DSX.spawn(&b)
        },
        error::INVALID_ADDRESS,
    );
    let r = DSX.spawn(&a);
    if check_err("spawn_page_list", r, error::SUCCESS) {
        let c = r.value as u64;
        reset_log(c);
        check(
            "page_list_child_ready",
            wait_console(c, READY, 10_000),
            true,
        );
        kill_child("exit_page_list_child", c, 4);
    }
    // A page outside RAM (refused by the host, after admission).
    DSX.structs()
        .write(list_off, &(outside() as u64).to_le_bytes());
    let before = info_or_default();
    check_err(
        "spawn_page_list_page_outside_ram",
        DSX.spawn(&a),
        error::INVALID_ADDRESS,
    );
    check(
        "spawn_page_list_refusal_changes_no_usage",
        usage(&info_or_default()),
        usage(&before),
    );
}

/// A child with one virtio device (entropy, one queue of at most 16) served by this VM
/// itself, through DEVICE_STATE, CHILD_MEM_READ / CHILD_MEM_WRITE and DEVICE_RAISE,
/// while the child (`vmchild`'s `v*` commands) drives it as a driver would: what each
/// side sees at every step, the doorbell storm coalesced, the interrupt raised and
/// acknowledged, NEEDS_RESET, a reset by the driver and by REBOOT (both counted), and
/// the device gone with the child.
fn virtio_checks(base: &VmInfo) {
    use diosix_abi::devices::{PENDING_STATE, RAISE_NEEDS_RESET, RAISE_USED_BUFFER};
    let spec = dsx::device_spec(4, 16);
    let s = DSX.structs();
    s.write(1024, &spec.to_le_bytes());
    let mut a = child_args(CHILD_PAGES);
    a.devices_gpa = (s.addr() + 1024) as u64;
    a.device_count = 1;
    let r = DSX.spawn(&a);
    if !check_err("virtio_spawn", r, error::SUCCESS) {
        return;
    }
    let c = r.value as u64;
    reset_log(c);
    check("virtio_child_hello", wait_console(c, READY, 10_000), true);
    // Before the driver: reset state, the device's offer, nothing pending.
    let state = |name: &str| match DSX.device_state(c, 0) {
        Ok((st, n)) => {
            check(name, n, 48 + 32);
            st
        }
        Err(e) => {
            fail(name, Code(e), Code(0));
            diosix_abi::DeviceState::default()
        }
    };
    let st = state("virtio_state_initial");
    check(
        "virtio_state_initial_fields",
        (
            st.status,
            st.pending,
            st.resets,
            st.queue_count,
            st.device_features,
        ),
        (0, 0, 0, 1, 1 << 32),
    );
    // Refusals.
    check_err(
        "virtio_state_no_device_1",
        DSX.call(
            ext::FID_DEVICE_STATE,
            [c as usize, 1, DSX.data().addr(), 512, 0, 0],
        ),
        error::INVALID_PARAM,
    );
    check_err(
        "virtio_state_self_denied",
        DSX.call(ext::FID_DEVICE_STATE, [1, 0, DSX.data().addr(), 512, 0, 0]),
        error::DENIED,
    );
    check_err(
        "virtio_state_short",
        DSX.call(
            ext::FID_DEVICE_STATE,
            [c as usize, 0, DSX.data().addr(), 79, 0, 0],
        ),
        error::INVALID_PARAM,
    );
    check_err(
        "virtio_state_outside",
        DSX.call(ext::FID_DEVICE_STATE, [c as usize, 0, outside(), 512, 0, 0]),
        error::INVALID_ADDRESS,
    );
    check_err(
        "virtio_raise_bad_bits",
        DSX.device_raise(c, 0, 8),
        error::INVALID_PARAM,
    );
    // The driver brings it up and rings 10000 times.
    check_ok("virtio_vup_sent", DSX.ipc_send(c, b"vup"), 0);
    let up = wait_message(c, 10_000);
    check(
        "virtio_child_sees_device",
        up.as_ref().map(|l| l.as_str()),
        Some("virtio up 74726976 2 4 35585344 high=1 fok=8 max=16 status=f"),
    );
    let st = state("virtio_state_live");
    let q = DSX.queue_state(0);
    check(
        "virtio_state_live_fields",
        (st.status, st.pending, st.driver_features, q.size, q.ready),
        (0xf, 1 | PENDING_STATE, 1 << 32, 8, 1),
    );
    check(
        "virtio_doorbells_coalesced",
        state("virtio_state_again").pending,
        0,
    );
    // Serve the one request: available ring, descriptor, data, used ring.
    let d = DSX.data();
    let word = |gpa: u64, len: usize, name: &str| -> u64 {
        let at = d.addr() + 4096;
        if check_ok(name, DSX.child_mem_read(c, gpa as usize, at, len), len) {
            d.u64_at(4096) & (u64::MAX >> (64 - 8 * len))
        } else {
            u64::MAX
        }
    };
    let avail_idx = word(q.driver + 2, 2, "virtio_read_avail_idx");
    let head = word(q.driver + 4, 2, "virtio_read_ring");
    let buf = word(q.desc + 16 * head, 8, "virtio_read_desc_addr");
    let len_flags = word(q.desc + 16 * head + 8, 8, "virtio_read_desc_len");
    check(
        "virtio_request",
        (
            avail_idx,
            head,
            len_flags & 0xffff_ffff,
            (len_flags >> 32) & 0xffff,
        ),
        (1, 0, 64, 2),
    );
    for i in 0..64 {
        d.write(4096 + i, &[0x5a ^ i as u8]);
    }
    check_ok(
        "virtio_write_buffer",
        DSX.child_mem_write(c, buf as usize, d.addr() + 4096, 64),
        64,
    );
    d.put_u64(4096, 64 << 32);
    check_ok(
        "virtio_write_used_elem",
        DSX.child_mem_write(c, q.device as usize + 4, d.addr() + 4096, 8),
        8,
    );
    d.put_u16(4096, 1);
    check_ok(
        "virtio_write_used_idx",
        DSX.child_mem_write(c, q.device as usize + 2, d.addr() + 4096, 2),
        2,
    );
    check_ok(
        "virtio_raise_used",
        DSX.device_raise(c, 0, RAISE_USED_BUFFER),
        0,
    );
    check(
        "virtio_interrupt_status_set",
        state("virtio_state_raised").interrupt_status,
        1,
    );
    check_ok("virtio_vused_sent", DSX.ipc_send(c, b"vused"), 0);
    check(
        "virtio_child_got_buffer_and_interrupt",
        wait_message(c, 10_000).as_ref().map(|l| l.as_str()),
        Some("virtio used=1 id=0 len=64 data=ok isr=1 pending=1 after=00"),
    );
    check(
        "virtio_acknowledged",
        state("virtio_state_acked").interrupt_status,
        0,
    );
    // A broken device: the driver sees DEVICE_NEEDS_RESET and a configuration change.
    check_ok(
        "virtio_raise_needs_reset",
        DSX.device_raise(c, 0, RAISE_NEEDS_RESET),
        0,
    );
    check_ok("virtio_vstatus_sent", DSX.ipc_send(c, b"vstatus"), 0);
    check(
        "virtio_child_sees_needs_reset",
        wait_message(c, 10_000).as_ref().map(|l| l.as_str()),
        Some("virtio status=4f isr=2 pending=1"),
    );
    // The driver resets it: everything back, counted, and the line down.
    check_ok("virtio_vreset_sent", DSX.ipc_send(c, b"vreset"), 0);
    check(
        "virtio_child_reset",
        wait_message(c, 10_000).as_ref().map(|l| l.as_str()),
        Some("virtio reset status=0 ready=0 isr=0 pending=0"),
    );
    let st = state("virtio_state_reset");
    check(
        "virtio_state_reset_fields",
        (
            st.status,
            st.resets,
            st.pending & PENDING_STATE,
            DSX.queue_state(0).ready,
        ),
        (0, 1, PENDING_STATE, 0),
    );
    // A FORK clone has none of the devices: its copy of the driver reads zeros there
    // and is not killed for it (no FORK behind PMP).
    if !pmp() {
        let mut q = dsx::quota_args(c);
        q.ram_pages = 4 * CHILD_PAGES;
        q.vcpus = 2;
        q.max_priority = prio();
        q.max_depth = 1;
        q.max_descendants = 1;
        check_ok("virtio_quota_for_fork", DSX.set_quota(&q), 0);
        check_ok("virtio_vfork_sent", DSX.ipc_send(c, b"vfork"), 0);
        check(
            "virtio_clone_reads_zero",
            wait_message(c, 10_000).as_ref().map(|l| l.as_str()),
            Some("vfork ok code=13"),
        );
    }
    // REBOOT keeps the device, reset and counted again.
    check_ok("virtio_reboot", DSX.reboot(c), 0);
    forget_events(c);
    reset_log(c);
    check(
        "virtio_rebooted_hello",
        wait_console(c, READY, 10_000),
        true,
    );
    let st = state("virtio_state_rebooted");
    check(
        "virtio_state_rebooted_fields",
        (st.status, st.resets),
        (0, 2),
    );
    kill_child("virtio_kill", c, 3);
    check_err(
        "virtio_state_after_kill",
        DSX.call(
            ext::FID_DEVICE_STATE,
            [c as usize, 0, DSX.data().addr(), 512, 0, 0],
        ),
        error::INVALID_PARAM,
    );
    check(
        "usage_back_after_virtio",
        usage(&info_or_default()),
        usage(base),
    );
}
