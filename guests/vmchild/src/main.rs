//! Child VM of the `vmtree` test (the Root VM spawns it from an embedded copy of this
//! ELF).
//!
//! On boot it prints `vmchild: hello from CID view ...` with its hart id, checks what it
//! can about itself from a child's point of view (one `ok <name>` / `FAIL <name>: ...`
//! line each, which its parent reads through CONSOLE_READ and counts), prints
//! `vmchild: ready`, then serves its parent:
//!
//! * an IPC message is answered with an upper-case copy, to its sender;
//! * `exit`: EXIT(1, 7);
//! * `recv <len>` (hex): the next messages from the same sender are an image, stored
//!   at [`upload_gpa()`] in order; answer `got <len>` once `len` bytes arrived;
//! * `spawn <gpa> <len>` (hex): spawn a grandchild from the image at that GPA (the
//!   uploaded one), wait for its hello, answer `spawned cid=<c> hello=<0|1>`;
//! * `kill`: EXIT the grandchild with code 5, answer `killed cid=<c> code=<code>`;
//! * `exec <gpa> <len>` (hex): EXEC refused for bad arguments (printed: `vmchild: exec
//!   refused <codes>`), then EXEC of the image at that GPA: this VM starts again as it;
//! * `rtc` (a trusted child, which keeps its trust until told): take the host's RTC
//!   from the parent's pool, route its interrupt and claim it on its own virtual PLIC,
//!   answer `rtc <map code> <route code> <source claimed>`;
//! * `droptrust`: DROP_TRUST, answer `droptrust <code>`;
//! * `fork`: FORK; the clone prints `vmchild: forked grandchild alive` and exits with
//!   code 9; answer `fork ok cid=<c> code=<code>` or `fork err <error>`;
//! * `vup`, `vused`, `vstatus`, `vreset`: drive virtio device 0 (the parent gave it
//!   one, served by the parent itself) as a driver would: bring it up with one queue
//!   and one device-writable buffer, ring the doorbell 10000 times; check what the
//!   parent put in the used ring, the interrupt and its acknowledgement; report the
//!   status; reset the device (see [`virtio`]); `vfork`: FORK, the clone reads device
//!   0's magic (a clone has no devices: it reads 0) and exits with 13 if so;
//! * console input lines (CONSOLE_WRITE by the parent) are printed back as
//!   `vmchild: console got '<line>'`.
#![no_std]
#![no_main]

#[path = "../../vmtree/src/dsx.rs"]
mod dsx;
mod virtio;

use core::sync::atomic::{AtomicU64, Ordering};
use diosix_abi::ext;
use diosix_guest_rt::{console, csr, dtb, println, sleep_ticks};
use dsx::{error, event, flags, Client, DSX};

/// Where `recv` stores an uploaded image, as an offset into this guest's RAM (which
/// starts where its image does): above its image and stacks, inside the 8 MiB the
/// parent gives it.
const UPLOAD_OFFSET: usize = 0x40_0000;

/// Where `recv` stores an uploaded image.
fn upload_gpa() -> usize {
    diosix_guest_rt::image_start() + UPLOAD_OFFSET
}
/// Most bytes `recv` accepts (up to the end of 8 MiB of RAM).
const UPLOAD_MAX: usize = 0x40_0000;

/// `time` ticks per second (from the DTB, or QEMU virt's 10 MHz without one).
static TIMEBASE: AtomicU64 = AtomicU64::new(10_000_000);

fn ms(n: u64) -> u64 {
    TIMEBASE.load(Ordering::Relaxed) / 1000 * n
}

fn check<T: PartialEq + core::fmt::Debug>(name: &str, got: T, expected: T) {
    if got == expected {
        println!("ok {name}");
    } else {
        println!("FAIL {name}: got {got:?} expected {expected:?}");
    }
}

fn check_err(name: &str, got: isize, expected: isize) {
    if got == expected {
        println!("ok {name}");
    } else {
        println!(
            "FAIL {name}: got {got} ({}) expected {expected} ({})",
            dsx::err_name(got),
            dsx::err_name(expected)
        );
    }
}

/// True when a flattened device tree starts at `addr`.
fn has_dtb(addr: usize) -> bool {
    if addr == 0 || !addr.is_multiple_of(4) {
        return false;
    }
    // SAFETY: the hypervisor passes a1 as a GPA in our RAM (or garbage when the parent
    // STARTs us with its own choice); paging is off, and a read of our own RAM cannot
    // fault. A non-RAM address would fault, so START callers pass RAM addresses.
    let magic = unsafe { (addr as *const u32).read_volatile() };
    u32::from_be(magic) == 0xd00d_feed
}

fn main(hartid: usize, dtb_addr: usize) {
    let mut ram_end = None;
    let ram_pages = if has_dtb(dtb_addr) {
        let d = dtb::parse(dtb_addr);
        TIMEBASE.store(d.timebase, Ordering::Relaxed);
        ram_end = Some(d.ram_end());
        Some((d.ram_size / 4096) as u64)
    } else {
        None
    };
    if let Some(end) = ram_end {
        // RAM this child has not used yet must read zero, whatever VM had the frames
        // before (its parent may have copied a page in at upload_gpa(): skip that one).
        // The device tree sits near the top of RAM: skip it too.
        let start = upload_gpa() + 0x1_0000;
        // SAFETY: `has_dtb` found a device tree header at `dtb_addr` in our RAM.
        let dtb_size = u32::from_be(unsafe { ((dtb_addr + 4) as *const u32).read_volatile() });
        let dtb_end = dtb_addr + dtb_size as usize;
        let mut nonzero = 0usize;
        let mut at = start;
        while at < end {
            if (dtb_addr..dtb_end).contains(&at) {
                at = dtb_end.next_multiple_of(8);
                continue;
            }
            // SAFETY: [start, end) is this VM's own RAM, above its image and stack,
            // outside its DTB, and read only as plain words.
            if unsafe { core::ptr::read_volatile(at as *const u64) } != 0 {
                nonzero += 1;
            }
            at += 8;
        }
        check("child_free_ram_reads_zero", nonzero, 0);
    }
    let info = DSX.info();
    match &info {
        Ok(i) => println!(
            "vmchild: hello from CID view: hart {hartid}, cid {}, flags {:#x}, {} RAM pages, \
             {} vCPUs, depth quota {}, dtb {}",
            i.cid,
            i.flags,
            i.own_ram_pages,
            i.own_vcpus,
            i.max_depth,
            if ram_pages.is_some() { "yes" } else { "no" }
        ),
        Err(e) => println!("vmchild: hello from CID view: hart {hartid}, GET_INFO error {e}"),
    }
    if let Ok(i) = info {
        self_checks(&i, ram_pages);
    } else {
        println!("FAIL child_get_info: got {info:?} expected Ok");
    }
    println!("vmchild: ready");
    serve();
}

/// What a child can check about itself and the CIDs it may name.
fn self_checks(i: &diosix_abi::VmInfo, ram_pages: Option<u64>) {
    check("child_probe", diosix_guest_rt::sbi::probe(ext::EID), 1);
    check("child_info_cid", i.cid, dsx::cid::SELF);
    check("child_info_size", i.size as usize, diosix_abi::VmInfo::SIZE);
    check("child_info_not_root", i.flags & flags::INFO_ROOT, 0);
    check("child_info_state", i.state, dsx::state::RUNNING);
    check("child_info_vcpus", i.own_vcpus, 1);
    if let Some(p) = ram_pages {
        check("child_info_ram_matches_dtb", i.own_ram_pages, p);
    }
    check(
        "child_info_quota_covers_own",
        i.ram_pages_max >= i.own_ram_pages + i.own_table_pages,
        true,
    );
    match DSX.hv_info() {
        Ok(h) => {
            check(
                "child_hv_info_total_is_own_quota",
                h.ram_total_pages,
                i.ram_pages_max,
            );
            check(
                "child_hv_info_free_is_own_headroom",
                h.ram_free_pages,
                i.ram_pages_max - i.ram_pages_reserved,
            );
        }
        Err(e) => check_err("child_hv_info", e, error::SUCCESS),
    }
    // CID 0 is the parent: DENIED where only self or a child is accepted.
    check_err(
        "child_get_child_info_parent_denied",
        DSX.call(
            ext::FID_GET_CHILD_INFO,
            [0, DSX.structs().addr(), 120, 0, 0, 0],
        )
        .error,
        error::DENIED,
    );
    check_err(
        "child_exit_parent_denied",
        DSX.exit(0, 1).error,
        error::DENIED,
    );
    check_err("child_stop_parent_denied", DSX.stop(0).error, error::DENIED);
    check_err("child_stop_self_denied", DSX.stop(1).error, error::DENIED);
    check_err(
        "child_console_read_parent_denied",
        DSX.console_read(0, 16).error,
        error::DENIED,
    );
    check_err(
        "child_stop_no_child_invalid",
        DSX.stop(2).error,
        error::INVALID_PARAM,
    );
    check_err(
        "child_ipc_send_self_invalid",
        DSX.ipc_send(1, b"x").error,
        error::INVALID_PARAM,
    );
    let mut q = dsx::quota_args(0);
    q.ram_pages = 1;
    check_err(
        "child_set_quota_parent_denied",
        DSX.set_quota(&q).error,
        error::DENIED,
    );
    let mut s = dsx::spawn_args(diosix_guest_rt::image_start(), 4096, 16, 1, i.priority);
    s.cid = 1;
    check_err(
        "child_spawn_replace_self_denied",
        DSX.spawn(&s).error,
        error::DENIED,
    );
    let r = DSX.call2(ext::FID_LIST_CHILDREN, 0, 0);
    check("child_list_children_none", (r.error, r.value), (0, 0));
    if i.max_depth == 0 {
        // No depth quota: admission refuses before the image is looked at.
        s.cid = 0;
        check_err(
            "child_spawn_without_depth_quota_denied",
            DSX.spawn(&s).error,
            error::DENIED,
        );
        // Behind PMP FORK is refused before any quota is looked at.
        let pmp = DSX
            .hv_info()
            .is_ok_and(|h| h.features & diosix_abi::features::PMP_FALLBACK != 0);
        check_err(
            "child_fork_without_quota_denied",
            DSX.fork(0).error,
            if pmp {
                error::NOT_SUPPORTED
            } else {
                error::DENIED
            },
        );
    }
    if i.flags & flags::INFO_TRUSTED == 0 {
        check_err(
            "child_map_host_mmio_untrusted_denied",
            DSX.map_host_mmio(0x1000_0000, 0x1000_0000, 4096).error,
            error::DENIED,
        );
        check_err(
            "child_route_irq_untrusted_denied",
            DSX.route_irq(10).error,
            error::DENIED,
        );
    }
    if i.flags & flags::INFO_TRUSTED == 0 {
        check_err(
            "child_drop_trust_idempotent",
            DSX.drop_trust().error,
            error::SUCCESS,
        );
    }
}

/// `rtc` (a trusted child): maps the host's goldfish RTC at its host address, routes
/// its interrupt, raises its alarm and claims the interrupt on this VM's own virtual
/// PLIC; answers `rtc <map code> <route code> <source claimed, 0 if none>`.
fn take_rtc(from: u64) {
    use diosix_guest_rt::virt::{self, rtc, RTC, RTC_IRQ};
    let map = DSX.map_host_mmio(RTC, RTC, 4096).error;
    let route = DSX.route_irq(RTC_IRQ as usize).error;
    let mut claimed = 0;
    if map == error::SUCCESS && route == error::SUCCESS {
        let context = diosix_guest_rt::hart::id();
        virt::plic_write(virt::priority(RTC_IRQ), 1);
        virt::plic_write(virt::enable(context), 1 << RTC_IRQ);
        virt::plic_write(virt::threshold(context), 0);
        virt::rtc_alarm_in(1_000_000);
        if virt::wait_seip(true, 500) {
            claimed = virt::plic_read(virt::claim(context));
        }
        virt::rtc_write(rtc::CLEAR_INTERRUPT, 1);
        virt::rtc_write(rtc::IRQ_ENABLED, 0);
        if claimed != 0 {
            virt::plic_write(virt::claim(context), claimed);
        }
        virt::plic_write(virt::enable(context), 0);
    }
    let l: dsx::Line<64> = dsx::fmt(format_args!("rtc {map} {route} {claimed}"));
    reply(from, l.bytes());
}

/// Answers `to` with `msg`; prints a line if the send fails.
fn reply(to: u64, msg: &[u8]) {
    let r = DSX.ipc_send(to, msg);
    if r.error != error::SUCCESS {
        println!("vmchild: reply to {to} failed: {}", dsx::err_name(r.error));
    }
}

/// Waits (bounded) for a CHILD_TERMINATED event about `cid`; returns its exit code.
fn wait_terminated(cid: u64, limit_ms: u64) -> Option<u64> {
    let end = csr::time() + ms(limit_ms);
    while csr::time() < end {
        if let Ok(Some(e)) = DSX.poll_event() {
            if e.kind == event::CHILD_TERMINATED && e.cid == cid {
                return Some(e.exit_code);
            }
            continue;
        }
        sleep_ticks(ms(1));
    }
    None
}

/// Reads the grandchild's console until `needle` shows (bounded), forwarding its lines.
fn wait_console(cid: u64, needle: &[u8], limit_ms: u64) -> bool {
    let mut log = dsx::Line::<4096>::new();
    let mut line = dsx::Line::<160>::new();
    let end = csr::time() + ms(limit_ms);
    while csr::time() < end {
        let r = DSX.console_read(cid, 512);
        if r.error != error::SUCCESS {
            return false;
        }
        if r.value > 0 {
            let mut chunk = [0u8; 512];
            let n = r.value.min(chunk.len());
            DSX.data().read(0, &mut chunk[..n]);
            for &b in &chunk[..n] {
                let _ = core::fmt::Write::write_char(&mut log, b as char);
                if b == b'\n' {
                    println!("vmchild: grandchild said: {}", line.as_str());
                    line = dsx::Line::new();
                } else {
                    let _ = core::fmt::Write::write_char(&mut line, b as char);
                }
            }
            if dsx::contains(log.bytes(), needle) {
                return true;
            }
            continue;
        }
        sleep_ticks(ms(1));
    }
    false
}

fn parse_hex(s: &str) -> Option<usize> {
    usize::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The three-level tree: a grandchild spawned from the image the parent mapped in.
fn spawn_grandchild(from: u64, cmd: &str, grandchild: &mut u64) {
    let mut it = cmd.split_whitespace().skip(1);
    let (Some(gpa), Some(len)) = (it.next().and_then(parse_hex), it.next().and_then(parse_hex))
    else {
        reply(from, b"spawn bad args");
        return;
    };
    let prio = DSX.info().map(|i| i.priority).unwrap_or(1);
    let r = DSX.spawn(&dsx::spawn_args(gpa, len, 2048, 1, prio));
    if r.error != error::SUCCESS {
        let l: dsx::Line<64> = dsx::fmt(format_args!("spawn err {}", r.error));
        reply(from, l.bytes());
        return;
    }
    *grandchild = r.value as u64;
    let hello = wait_console(*grandchild, b"vmchild: ready", 10_000);
    let l: dsx::Line<64> = dsx::fmt(format_args!(
        "spawned cid={} hello={}",
        r.value, hello as u8
    ));
    reply(from, l.bytes());
}

/// `exec <gpa> <len>`: EXEC refused for four bad arguments (flags, RAM beyond the
/// quota, an image outside RAM, a device tree), the codes printed as
/// `vmchild: exec refused <codes>`; then EXEC of the image at `gpa` with this VM's own RAM and
/// vCPUs, which does not return (the new image says hello again); `exec err <code>` if
/// it does.
fn exec_self(from: u64, cmd: &str) {
    let mut it = cmd.split_whitespace().skip(1);
    let (Some(gpa), Some(len)) = (it.next().and_then(parse_hex), it.next().and_then(parse_hex))
    else {
        reply(from, b"exec bad args");
        return;
    };
    let me = DSX.info().ok();
    let pages = me.map_or(0, |i| i.own_ram_pages);
    let prio = me.map_or(1, |i| i.priority);
    let good = dsx::spawn_args(gpa, len, pages, 1, prio);
    let mut codes = [0isize; 4];
    let mut a = good;
    a.flags = flags::SPAWN_TRUSTED;
    codes[0] = DSX.exec(&a).error;
    let mut a = good;
    a.ram_pages = me.map_or(0, |i| i.ram_pages_max) + 1;
    codes[1] = DSX.exec(&a).error;
    let mut a = good;
    a.image_gpa = 0x1000;
    codes[2] = DSX.exec(&a).error;
    let mut a = good;
    a.dtb_gpa = gpa as u64;
    a.dtb_size = 4096;
    codes[3] = DSX.exec(&a).error;
    // On the console, not as a message: what a VM sent its parent before it starts
    // again is dropped (the parent must not act on its old self's words).
    println!(
        "vmchild: exec refused {} {} {} {}",
        codes[0], codes[1], codes[2], codes[3]
    );
    let r = DSX.exec(&good);
    let l: dsx::Line<64> = dsx::fmt(format_args!("exec err {}", r.error));
    reply(from, l.bytes());
}

fn kill_grandchild(from: u64, grandchild: u64) {
    let r = DSX.exit(grandchild, 5);
    let l: dsx::Line<64> = if r.error != error::SUCCESS {
        dsx::fmt(format_args!("kill err {}", r.error))
    } else {
        match wait_terminated(grandchild, 5_000) {
            Some(code) => dsx::fmt(format_args!("killed cid={grandchild} code={code}")),
            None => dsx::fmt(format_args!("killed cid={grandchild} no event")),
        }
    };
    reply(from, l.bytes());
}

fn fork_test(from: u64) {
    let r = DSX.fork(0);
    if r.error != error::SUCCESS {
        let l: dsx::Line<64> = dsx::fmt(format_args!("fork err {}", r.error));
        reply(from, l.bytes());
        return;
    }
    if r.value == 0 {
        // The clone: a0 = 0, a1 = 0.
        println!("vmchild: forked grandchild alive");
        DSX.exit(1, 9);
        println!("vmchild: forked grandchild EXIT returned");
        loop {
            sleep_ticks(ms(1000));
        }
    }
    let cid = r.value as u64;
    let l: dsx::Line<64> = match wait_terminated(cid, 5_000) {
        Some(code) => dsx::fmt(format_args!("fork ok cid={cid} code={code}")),
        None => dsx::fmt(format_args!("fork cid={cid} no event")),
    };
    reply(from, l.bytes());
}

/// Forks until refused; the clones stay alive (idle), so only the descendant and
/// RAM quotas can stop it. Replies `forkbomb n=<forks> err=<refusal>`.
fn fork_bomb(from: u64) {
    let mut n = 0u64;
    let err = loop {
        let r = DSX.fork(0);
        if r.error != error::SUCCESS {
            break r.error;
        }
        if r.value == 0 {
            // A clone: never answers, never forks; dies with its parent.
            loop {
                sleep_ticks(ms(1000));
            }
        }
        n += 1;
        if n > 64 {
            break 0;
        }
    };
    let l: dsx::Line<64> = dsx::fmt(format_args!("forkbomb n={n} err={err}"));
    reply(from, l.bytes());
}

/// Receives an image of `len` bytes from `from` into [`upload_gpa()`].
fn upload(from: u64, cmd: &str) {
    let Some(len) = cmd.split_whitespace().nth(1).and_then(parse_hex) else {
        reply(from, b"recv bad args");
        return;
    };
    if len > UPLOAD_MAX {
        reply(from, b"recv too large");
        return;
    }
    let mut got = 0;
    let end = csr::time() + ms(10_000);
    while got < len && csr::time() < end {
        match DSX.ipc_recv(from, flags::IPC_RECV_EXACT, 4096) {
            Ok(Some((_, n))) => {
                let n = n.min(len - got);
                let mut chunk = [0u8; 4096];
                DSX.data().read(0, &mut chunk[..n]);
                let dst = (upload_gpa() + got) as *mut u8;
                // SAFETY: [upload_gpa(), + UPLOAD_MAX) is RAM of this guest (the parent
                // gives it 8 MiB) that nothing else uses: its image and stacks end
                // 1 MiB into its RAM, and the DTB was read before any upload.
                // `got + n <= len <= UPLOAD_MAX`.
                unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, n) };
                got += n;
            }
            Ok(None) => sleep_ticks(ms(1)),
            Err(_) => break,
        }
    }
    let l: dsx::Line<64> = dsx::fmt(format_args!("got {got:x}"));
    reply(from, l.bytes());
}

fn serve() -> ! {
    let mut grandchild = 0u64;
    let mut line = dsx::Line::<128>::new();
    loop {
        match DSX.ipc_recv(0, 0, 4096) {
            Ok(Some((from, len))) => {
                let mut msg = [0u8; 256];
                let n = len.min(msg.len());
                DSX.data().read(0, &mut msg[..n]);
                let text = core::str::from_utf8(&msg[..n]).unwrap_or("");
                match text.split_whitespace().next().unwrap_or("") {
                    "exit" => {
                        println!("vmchild: exiting with code 7");
                        let r = DSX.exit(1, 7);
                        println!("vmchild: EXIT returned {}", r.error);
                    }
                    "recv" => upload(from, text),
                    "spawn" => spawn_grandchild(from, text, &mut grandchild),
                    "kill" => kill_grandchild(from, grandchild),
                    "fork" => fork_test(from),
                    "exec" => exec_self(from, text),
                    "rtc" => take_rtc(from),
                    "droptrust" => {
                        let l: dsx::Line<64> =
                            dsx::fmt(format_args!("droptrust {}", DSX.drop_trust().error));
                        reply(from, l.bytes());
                    }
                    "forkbomb" => fork_bomb(from),
                    "vup" | "vused" | "vstatus" | "vreset" => virtio::command(from, text),
                    "vfork" => virtio::fork_probe(from),
                    _ => {
                        msg[..n].make_ascii_uppercase();
                        reply(from, &msg[..n]);
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => println!("vmchild: IPC_RECV error {e}"),
        }
        while let Some(b) = console::try_read_byte() {
            if b == b'\n' || b == b'\r' {
                println!("vmchild: console got '{}'", line.as_str());
                line = dsx::Line::new();
            } else {
                let _ = core::fmt::Write::write_char(&mut line, b as char);
            }
        }
        sleep_ticks(ms(1));
    }
}

diosix_guest_rt::entry!(main);
