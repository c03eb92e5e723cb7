//! Phase `edges`: every vCPU at once makes the same calls with sizes and addresses
//! exactly at and one past every cap and edge, against a live idle child, and checks
//! each error against `docs/sbi-extension.md` (and the SBI specification for the
//! standard extensions). The leader reports every check; the other vCPUs report only
//! what they saw differently (`FAIL <name> (vCPU k)`).

use crate::img::Program;
use crate::sys::{self, error::*, Client, SbiRet, DSX};
use crate::{kids, team};
use core::sync::atomic::{AtomicU64, Ordering};
use diosix_abi::{ext, limits, IpcRecvArgs, IpcSendArgs, QuotaArgs, VmInfo};
use diosix_guest_rt::diosix;
use diosix_guest_rt::sbi::eid;

static CHILD: AtomicU64 = AtomicU64::new(0);

/// Runs the phase.
pub fn run() {
    let r = kids::spawn_prog(Program::Idle, 64, 1, 0, |_| {});
    if !crate::check_code("edges_child_spawned", r, &[SUCCESS]) {
        return;
    }
    CHILD.store(r.value as u64, Ordering::Relaxed);
    crate::phase("edges", 30_000, body);
    DSX.exit(r.value as u64, 0);
}

/// A Diosix call: the error must be one of `ok`, and a refusal returns a1 = 0.
fn expect(name: &str, r: SbiRet, ok: &[isize]) {
    report(
        name,
        r,
        ok,
        ok.contains(&r.error) && (r.error == 0 || r.value == 0),
    );
}

/// A standard SBI call: only the error is specified.
fn expect_std(name: &str, r: SbiRet, ok: &[isize]) {
    report(name, r, ok, ok.contains(&r.error));
}

fn report(name: &str, r: SbiRet, ok: &[isize], good: bool) {
    let idx = team::index();
    if idx == 0 {
        crate::check(
            name,
            good,
            format_args!(
                "got {} ({}) a1 {:#x}, expected one of {ok:?} (a1 0 if refused)",
                sys::err_name(r.error),
                r.error,
                r.value
            ),
        );
    } else if !good {
        crate::report_fail(format_args!(
            "{name} (vCPU {idx}): got {} ({}) a1 {:#x}, expected one of {ok:?}",
            sys::err_name(r.error),
            r.error,
            r.value
        ));
    }
}

fn body(_idx: usize, _n: usize) {
    let c = CHILD.load(Ordering::Relaxed);
    let cu = c as usize;
    let end = crate::ram_end();
    let d = sys::data();
    let s = sys::st();
    let send = |f: &dyn Fn(&mut IpcSendArgs)| {
        let mut a = IpcSendArgs {
            size: IpcSendArgs::SIZE as u32,
            flags: 0,
            cid: c,
            data_gpa: d.addr() as u64,
            len: 16,
        };
        f(&mut a);
        DSX.ipc_send_args(&a)
    };
    let max = limits::IPC_MAX_MESSAGE as u64;
    expect(
        "edge_ipc_send_len_max",
        send(&|a| a.len = max),
        &[SUCCESS, FAILED],
    );
    expect(
        "edge_ipc_send_len_max_plus_1",
        send(&|a| a.len = max + 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_ipc_send_len_u64_max",
        send(&|a| a.len = u64::MAX),
        &[INVALID_PARAM],
    );
    expect(
        "edge_ipc_send_size_31",
        send(&|a| a.size = 31),
        &[INVALID_PARAM],
    );
    expect(
        "edge_ipc_send_flags_1",
        send(&|a| a.flags = 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_ipc_send_last_byte_of_ram",
        send(&|a| {
            a.data_gpa = end as u64 - 1;
            a.len = 1;
        }),
        &[SUCCESS, FAILED],
    );
    expect(
        "edge_ipc_send_past_ram_end",
        send(&|a| {
            a.data_gpa = end as u64 - 1;
            a.len = 2;
        }),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_ipc_send_wraps",
        send(&|a| {
            a.data_gpa = u64::MAX;
            a.len = 1;
        }),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_ipc_send_below_ram",
        send(&|a| {
            a.data_gpa = sys::RAM_BASE as u64 - 1;
            a.len = 1;
        }),
        &[INVALID_ADDRESS],
    );
    let recv = |f: &dyn Fn(&mut IpcRecvArgs)| {
        let mut a = IpcRecvArgs {
            size: IpcRecvArgs::SIZE as u32,
            flags: diosix_abi::flags::IPC_RECV_EXACT,
            cid: c,
            buf_gpa: d.addr() as u64,
            max_len: 64,
            out_len: 0,
        };
        f(&mut a);
        DSX.ipc_recv_args(&a).0
    };
    expect(
        "edge_ipc_recv_max_len_0",
        recv(&|a| a.max_len = 0),
        &[SUCCESS],
    );
    expect(
        "edge_ipc_recv_len_0_top_of_space",
        recv(&|a| {
            a.buf_gpa = u64::MAX;
            a.max_len = 0;
        }),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_ipc_recv_len_0_last_page",
        recv(&|a| {
            a.buf_gpa = 0xffff_ffff_ffff_f001;
            a.max_len = 0;
        }),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_ipc_recv_size_39",
        recv(&|a| a.size = 39),
        &[INVALID_PARAM],
    );
    expect(
        "edge_ipc_recv_flags_4",
        recv(&|a| a.flags = 4),
        &[INVALID_PARAM],
    );
    // IPC_RECV_WAIT with nothing to receive: the vCPU sleeps in the call until its
    // timer interrupt (enabled in sie) is pending, then answers a1 = 0.
    let t0 = sys::now();
    let waited = sys::with_wake_timer(5, || {
        recv(&|a| a.flags = diosix_abi::flags::IPC_RECV_EXACT | 2)
    });
    let slept = sys::now() - t0;
    crate::check(
        "edge_ipc_recv_wait_ends_on_timer",
        waited.error == SUCCESS && waited.value == 0 && slept >= sys::ms(4),
        format_args!(
            "{} a1 {} after {} µs",
            sys::err_name(waited.error),
            waited.value,
            sys::to_us(slept)
        ),
    );

    let cmax = limits::CONSOLE_MAX_TRANSFER;
    let cread = |buf: usize, len: usize| DSX.call(ext::FID_CONSOLE_READ, [cu, buf, len, 0, 0, 0]);
    let cwrite = |buf: usize, len: usize| DSX.call(ext::FID_CONSOLE_WRITE, [cu, buf, len, 0, 0, 0]);
    expect("edge_console_read_max", cread(d.addr(), cmax), &[SUCCESS]);
    expect(
        "edge_console_read_max_plus_1",
        cread(d.addr(), cmax + 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_console_read_at_ram_end",
        cread(end - cmax, cmax),
        &[SUCCESS],
    );
    expect(
        "edge_console_read_past_ram_end",
        cread(end - cmax + 1, cmax),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_console_read_len_0_at_ram_end",
        cread(end, 0),
        &[SUCCESS],
    );
    expect(
        "edge_console_read_len_0_top_of_space",
        cread(usize::MAX, 0),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_console_read_len_0_last_page",
        cread(0xffff_ffff_ffff_f001, 0),
        &[INVALID_ADDRESS],
    );
    expect("edge_console_write_max", cwrite(d.addr(), cmax), &[SUCCESS]);
    expect(
        "edge_console_write_max_plus_1",
        cwrite(d.addr(), cmax + 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_console_write_len_0_top_of_space",
        cwrite(usize::MAX, 0),
        &[INVALID_ADDRESS],
    );

    let out = |fid: usize, gpa: usize, size: usize| DSX.call2(fid, gpa, size);
    expect(
        "edge_get_info_size_119",
        out(ext::FID_GET_INFO, s.addr(), 119),
        &[INVALID_PARAM],
    );
    expect(
        "edge_get_info_at_ram_end",
        out(ext::FID_GET_INFO, end - VmInfo::SIZE, VmInfo::SIZE),
        &[SUCCESS],
    );
    expect(
        "edge_get_info_past_ram_end",
        out(ext::FID_GET_INFO, end - VmInfo::SIZE + 8, VmInfo::SIZE),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_get_info_unaligned",
        out(ext::FID_GET_INFO, s.addr() + 4, VmInfo::SIZE),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_get_info_top_of_space",
        out(ext::FID_GET_INFO, usize::MAX - 7, VmInfo::SIZE),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_poll_event_size_31",
        out(ext::FID_POLL_EVENT, s.addr(), 31),
        &[INVALID_PARAM],
    );
    expect(
        "edge_poll_event_top_of_space",
        out(ext::FID_POLL_EVENT, usize::MAX - 7, 32),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_hv_info_size_55",
        out(ext::FID_GET_HV_INFO, s.addr(), 55),
        &[INVALID_PARAM],
    );
    expect(
        "edge_hv_info_at_ram_end",
        out(ext::FID_GET_HV_INFO, end - 56, 56),
        &[SUCCESS],
    );
    expect(
        "edge_child_info_size_119",
        DSX.call(ext::FID_GET_CHILD_INFO, [cu, s.addr(), 119, 0, 0, 0]),
        &[INVALID_PARAM],
    );
    expect(
        "edge_list_children_capacity_overflows",
        out(ext::FID_LIST_CHILDREN, s.addr(), usize::MAX / 8 + 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_list_children_capacity_past_ram",
        out(ext::FID_LIST_CHILDREN, s.addr(), usize::MAX / 8),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_list_children_unaligned",
        out(ext::FID_LIST_CHILDREN, s.addr() + 4, 4),
        &[INVALID_ADDRESS],
    );

    let img = kids::img_buf();
    let len = crate::img::program_elf(&img, Program::Idle);
    let spawn = |f: &dyn Fn(&mut diosix_abi::SpawnArgs)| {
        let mut a = diosix::spawn_args(img.addr(), len, 64, 1, kids::prio());
        f(&mut a);
        DSX.spawn(&a)
    };
    expect(
        "edge_spawn_size_87",
        spawn(&|a| a.size = 87),
        &[INVALID_PARAM],
    );
    expect(
        "edge_spawn_flag_bit_3",
        spawn(&|a| a.flags = 1 << 3),
        &[INVALID_PARAM],
    );
    expect(
        "edge_spawn_ram_bytes_overflow",
        spawn(&|a| a.ram_pages = u64::MAX / 4096 + 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_spawn_image_wraps",
        spawn(&|a| {
            a.image_gpa = u64::MAX - 4095;
            a.image_size = 8192;
        }),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_spawn_image_past_ram_end",
        spawn(&|a| a.image_gpa = end as u64 - 2048),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_spawn_vcpus_past_abi",
        spawn(&|a| a.vcpus = 4097),
        &[INVALID_PARAM, DENIED],
    );
    expect(
        "edge_spawn_priority_256",
        spawn(&|a| a.priority = 256),
        &[INVALID_PARAM, DENIED],
    );
    let quota = |f: &dyn Fn(&mut QuotaArgs)| {
        let mut q = QuotaArgs {
            size: QuotaArgs::SIZE as u32,
            cid: c,
            ..QuotaArgs::default()
        };
        f(&mut q);
        DSX.set_quota(&q)
    };
    expect(
        "edge_set_quota_size_39",
        quota(&|q| q.size = 39),
        &[INVALID_PARAM],
    );
    expect(
        "edge_set_quota_vcpus_4097",
        quota(&|q| q.vcpus = 4097),
        &[INVALID_PARAM],
    );
    expect(
        "edge_set_quota_priority_256",
        quota(&|q| q.max_priority = 256),
        &[INVALID_PARAM],
    );
    expect(
        "edge_set_quota_depth_65",
        quota(&|q| q.max_depth = 65),
        &[INVALID_PARAM],
    );
    expect(
        "edge_set_quota_descendants_65537",
        quota(&|q| q.max_descendants = 65537),
        &[INVALID_PARAM],
    );
    expect(
        "edge_set_quota_flag_bit_5",
        quota(&|q| q.flags = 1 << 5),
        &[INVALID_PARAM],
    );

    let map = |cgpa: usize, gpa: usize, size: usize, perms: u64| {
        DSX.map_child_mem(c, cgpa, gpa, size, perms)
    };
    let page = d.addr();
    expect(
        "edge_map_child_mem_perms_8",
        map(0x8010_0000, page, 4096, 8),
        &[INVALID_PARAM],
    );
    expect(
        "edge_map_child_mem_write_only",
        map(0x8010_0000, page, 4096, 2),
        &[INVALID_PARAM],
    );
    expect(
        "edge_map_child_mem_size_4095",
        map(0x8010_0000, page, 4095, 1),
        &[INVALID_PARAM],
    );
    expect(
        "edge_map_child_mem_child_range_wraps",
        map(usize::MAX - 4095, page, 8192, 1),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_map_child_mem_caller_past_ram",
        map(0x8010_0000, end - 4096, 8192, 1),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_map_child_mem_started",
        map(0x8010_0000, page, 4096, 1),
        &[ALREADY_STARTED],
    );
    let unmap = |gpa: usize, size: usize| DSX.unmap_child_mem(gpa, size);
    expect("edge_unmap_size_0", unmap(page, 0), &[INVALID_PARAM]);
    expect(
        "edge_unmap_wraps",
        unmap(usize::MAX - 4095, 8192),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_unmap_past_ram_end",
        unmap(end - 4096, 8192),
        &[INVALID_ADDRESS],
    );
    expect(
        "edge_start_running",
        DSX.start(c, crate::img::CODE_GPA, crate::img::CHILD_DTB_GPA),
        &[ALREADY_STARTED],
    );
    for fid in [11, 12, ext::FID_COUNT, 1000, usize::MAX] {
        let l: sys::Line<48> = sys::fmt(format_args!("edge_fid_{fid:#x}_not_supported"));
        expect(l.as_str(), DSX.call2(fid, 0, 0), &[NOT_SUPPORTED]);
    }
    expect("edge_exit_root_parent", DSX.exit(0, 0), &[INVALID_PARAM]);

    // Standard extensions (SBI 2.0).
    let dbcn = |fid: usize, len: usize, lo: usize| sys::call(eid::DBCN, fid, [len, lo, 0, 0, 0, 0]);
    expect_std(
        "edge_dbcn_write_wraps",
        dbcn(0, 2, usize::MAX),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_dbcn_write_past_ram_end",
        dbcn(0, 4097, end - 4096),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_dbcn_read_wraps",
        dbcn(1, 1, usize::MAX),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_dbcn_read_below_ram",
        dbcn(1, 16, sys::RAM_BASE - 8),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_dbcn_read_len_0_in_ram",
        dbcn(1, 0, sys::RAM_BASE),
        &[SUCCESS],
    );
    let me = diosix_guest_rt::hart::id();
    expect_std(
        "edge_hsm_start_running_hart",
        sys::call(eid::HSM, 0, [me, img.addr(), 0, 0, 0, 0]),
        &[ALREADY_AVAILABLE],
    );
    expect_std(
        "edge_hsm_start_no_such_hart",
        sys::call(eid::HSM, 0, [4096, img.addr(), 0, 0, 0, 0]),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_hsm_suspend_reserved_type",
        sys::call(eid::HSM, 3, [1, 0, 0, 0, 0, 0]),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_srst_reserved_type",
        sys::call(eid::SRST, 0, [3, 0, 0, 0, 0, 0]),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_srst_reserved_type_upper_bits",
        sys::call(eid::SRST, 0, [(1 << 32) | 3, 0, 0, 0, 0, 0]),
        &[INVALID_PARAM],
    );
    expect_std(
        "edge_unknown_extension",
        sys::call(0x0BAD_BAD0, 0, [0; 6]),
        &[NOT_SUPPORTED],
    );
}
