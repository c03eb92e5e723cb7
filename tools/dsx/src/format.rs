//! Output formatting and error messages: pure functions, tested on the build host.

use diosix_abi::{error, event, exit_code, features, flags, state, Event, HvInfo, VmInfo};

use crate::backend::ChildDevices;
use crate::hv::CallError;

const PAGE: u64 = 4096;

/// A byte count for people: `512 KiB`, `128 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 || scaled.fract() == 0.0 {
        format!("{} {}", scaled as u64, UNITS[unit])
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

fn pages(n: u64) -> String {
    human_bytes(n.saturating_mul(PAGE))
}

/// The name of a lifecycle state.
pub fn state_name(s: u32) -> String {
    match s {
        state::CREATED => "created".into(),
        state::RUNNING => "running".into(),
        state::STOPPED => "stopped".into(),
        other => format!("state-{other}"),
    }
}

/// The name of an SBI error code.
pub fn sbi_error_name(code: i64) -> String {
    match error::name(code as isize) {
        Some(name) if code != 0 => name.to_string(),
        _ => format!("SBI error {code}"),
    }
}

/// What was being done, so an error can be explained in its terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Opening `/dev/diosix`.
    Open,
    /// GET_INFO, GET_HV_INFO, LIST_CHILDREN, POLL_EVENT: calls about this VM only.
    Query,
    /// GET_CHILD_INFO of this CID.
    ChildInfo(u64),
    /// SPAWN.
    Spawn,
    /// EXEC (by `dsx load`'s clone).
    Exec,
    /// FORK.
    Fork,
    /// STOP of this child.
    Stop(u64),
    /// RESUME of this child.
    Resume(u64),
    /// REBOOT of this child.
    Reboot(u64),
    /// EXIT of this child.
    Kill(u64),
    /// SET_QUOTA of this CID (1 = self).
    Quota(u64),
    /// DROP_TRUST (self) or DROP_CHILD_TRUST.
    DropTrust(Option<u64>),
    /// CONSOLE_READ / CONSOLE_WRITE of this child.
    Console(u64),
    /// CHILD_MEM_READ / CHILD_MEM_WRITE of this child.
    ChildMem(u64),
    /// IPC_SEND to this peer.
    Send(u64),
    /// IPC_RECV.
    Recv,
}

impl Op {
    /// The child CID the operation names, if any.
    fn child(self) -> Option<u64> {
        match self {
            Op::ChildInfo(c)
            | Op::Stop(c)
            | Op::Resume(c)
            | Op::Reboot(c)
            | Op::Kill(c)
            | Op::Console(c)
            | Op::ChildMem(c) => Some(c),
            Op::Quota(c) | Op::Send(c) if c >= 2 => Some(c),
            Op::DropTrust(c) => c,
            _ => None,
        }
    }
}

/// The message for a failed call, without the `dsx: ` prefix.
pub fn error_message(op: Op, err: CallError) -> String {
    match err {
        CallError::Sbi(code) => sbi_message(op, code),
        CallError::Os(errno) => os_message(op, errno),
    }
}

fn sbi_message(op: Op, code: i64) -> String {
    let child = op.child();
    let not_child = |c: u64| format!("CID {c} is not a child of this VM");
    match code as isize {
        error::NOT_SUPPORTED => match op {
            Op::Reboot(c) => {
                format!("CID {c} has no state to return to: it was forked with --no-snapshot")
            }
            Op::Fork => "this machine cannot fork a VM: its harts have no H extension, so \
                         guests run without address translation (the PMP fallback) and a \
                         clone would have to run at its parent's physical addresses; start \
                         a new VM with `dsx run` instead"
                .into(),
            _ => "the hypervisor does not support this call (SBI NOT_SUPPORTED)".into(),
        },
        error::INVALID_PARAM => match (op, child) {
            (Op::Quota(_), Some(c)) => {
                format!("CID {c} is not a child of this VM, or a value is beyond the ABI's limits")
            }
            (Op::Send(_), Some(c)) => not_child(c),
            (_, Some(c)) => not_child(c),
            (Op::Spawn, _) => "the hypervisor refused the image or a value: it must be an \
                               ELF or RISC-V Linux Image guest that fits in --ram"
                .into(),
            (Op::Exec, _) => "the hypervisor refused the image or a value: it must be an \
                              ELF or RISC-V Linux Image guest that fits in its RAM"
                .into(),
            (Op::Send(0), _) | (Op::Recv, _) => {
                "this VM has no parent to exchange messages with".into()
            }
            _ => "the hypervisor refused a parameter (SBI INVALID_PARAM)".into(),
        },
        error::DENIED => match op {
            Op::Spawn | Op::Fork => "denied: this VM's quota (RAM, vCPUs, depth or descendants), \
                                     priority ceiling or trust does not allow it; see \
                                     `dsx info`"
                .into(),
            Op::Exec => "denied: the image with this RAM and these vCPUs does not fit this \
                         VM's own quota (or this is the Root VM, which cannot EXEC)"
                .into(),
            Op::Quota(1) => "denied: a VM may only lower its own quota".into(),
            Op::Quota(c) => format!(
                "denied: the quota of CID {c} must fit this VM's headroom, priority and depth"
            ),
            _ => "not allowed for this VM (SBI DENIED)".into(),
        },
        error::INVALID_ADDRESS => match op {
            Op::ChildMem(c) => format!("that range is not all RAM of CID {c}"),
            _ => "the hypervisor refused the driver's buffer address (SBI INVALID_ADDRESS); \
                  this is a driver or hypervisor bug"
                .into(),
        },
        error::ALREADY_STARTED => match child {
            Some(c) => format!("CID {c} is already running"),
            None => "already started".into(),
        },
        error::ALREADY_STOPPED => match child {
            Some(c) => format!("CID {c} is already stopped"),
            None => "already stopped".into(),
        },
        error::INVALID_STATE => match op {
            Op::Quota(c) => format!(
                "the new quota is below what {} already holds or has granted",
                if c == 1 {
                    "this VM".to_string()
                } else {
                    format!("CID {c}")
                }
            ),
            _ => match child {
                Some(c) => format!("CID {c} was never started"),
                None => "invalid state (SBI INVALID_STATE)".into(),
            },
        },
        error::FAILED => match op {
            Op::Send(c) => format!(
                "{}'s queue for this VM is full ({} messages); try again later",
                peer_name(c),
                diosix_abi::limits::IPC_QUEUE_DEPTH
            ),
            _ => "the hypervisor could not carry it out; nothing was changed (SBI FAILED)".into(),
        },
        error::BAD_RANGE => "the waiting message is longer than the receive buffer".into(),
        _ => format!("the hypervisor refused: {}", sbi_error_name(code)),
    }
}

fn os_message(op: Op, errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match (op, errno) {
        (Op::Open, libc::ENOENT) => format!(
            "{} does not exist: load the driver with `insmod /lib/modules/diosix.ko`",
            crate::dev::PATH
        ),
        (Op::Open, libc::EACCES | libc::EPERM) => {
            format!("cannot open {}: {text}; run dsx as root", crate::dev::PATH)
        }
        (Op::Open, _) => format!("cannot open {}: {text}", crate::dev::PATH),
        (Op::Spawn | Op::Exec, libc::E2BIG) => format!(
            "the image is too large: the driver passes at most {} to the hypervisor",
            human_bytes(crate::dev::SPAWN_MAX_IMAGE as u64)
        ),
        (Op::Spawn | Op::Exec, libc::ENOMEM) => {
            "not enough free memory in this VM to stage the image for the hypervisor".into()
        }
        (_, libc::EOPNOTSUPP) => "the /dev/diosix driver does not offer this call".into(),
        (_, libc::ENOTTY) => "the /dev/diosix driver does not know this request \
                              (are the driver and dsx from the same build?)"
            .into(),
        _ => format!("/dev/diosix: {text}"),
    }
}

/// `parent` or `CID n`.
pub fn peer_name(cid: u64) -> String {
    if cid == 0 {
        "the parent".into()
    } else {
        format!("CID {cid}")
    }
}

/// `dsx info`: this VM.
pub fn info_text(i: &VmInfo) -> String {
    let mut kind = Vec::new();
    if i.flags & flags::INFO_ROOT != 0 {
        kind.push("Root VM");
    }
    kind.push(if i.flags & flags::INFO_TRUSTED != 0 {
        "trusted"
    } else {
        "untrusted"
    });
    let headroom = i.ram_pages_max.saturating_sub(i.ram_pages_reserved);
    format!(
        "this VM (CID 1): {kind}, {state}\n\
         RAM          {used} used of {max} quota ({own} own RAM + {tables} page tables and reboot state); \
         {reserved} reserved, {headroom} free to grant\n\
         vCPUs        {vu} used of {vm} quota ({vo} own, {vr} reserved)\n\
         priority     {prio} (children may have up to {maxprio})\n\
         depth        {du} levels of descendants of {dm} allowed\n\
         descendants  {desu} of {desm} allowed ({desr} reserved)\n\
         children     {children}\n\
         RAM at       GPA {ram_gpa:#x}{boot}\n",
        kind = kind.join(", "),
        state = state_name(i.state),
        used = pages(i.ram_pages_used),
        max = pages(i.ram_pages_max),
        own = pages(i.own_ram_pages),
        tables = pages(i.own_table_pages),
        reserved = pages(i.ram_pages_reserved),
        headroom = pages(headroom),
        vu = i.vcpus_used,
        vm = i.vcpus_max,
        vo = i.own_vcpus,
        vr = i.vcpus_reserved,
        prio = i.priority,
        maxprio = i.max_priority,
        du = i.depth_used,
        dm = i.max_depth,
        desu = i.descendants_used,
        desm = i.max_descendants,
        desr = i.descendants_reserved,
        children = i.child_count,
        ram_gpa = i.ram_gpa,
        boot = if i.entry_gpa == 0 {
            String::from(" (a FORK clone)")
        } else {
            format!(", booted at GPA {:#x} with its device tree at GPA {:#x}", i.entry_gpa, i.dtb_gpa)
        },
    )
}

/// Every field of [`VmInfo`] plus decoded `trusted`, `root` and `state`, as JSON members
/// (without braces).
fn vm_info_members(i: &VmInfo) -> Vec<String> {
    vec![
        format!("\"cid\":{}", i.cid),
        format!("\"trusted\":{}", i.flags & flags::INFO_TRUSTED != 0),
        format!("\"root\":{}", i.flags & flags::INFO_ROOT != 0),
        format!("\"state\":{}", json_str(&state_name(i.state))),
        format!("\"ram_pages_max\":{}", i.ram_pages_max),
        format!("\"ram_pages_used\":{}", i.ram_pages_used),
        format!("\"ram_pages_reserved\":{}", i.ram_pages_reserved),
        format!("\"own_ram_pages\":{}", i.own_ram_pages),
        format!("\"own_table_pages\":{}", i.own_table_pages),
        format!("\"vcpus_max\":{}", i.vcpus_max),
        format!("\"vcpus_used\":{}", i.vcpus_used),
        format!("\"vcpus_reserved\":{}", i.vcpus_reserved),
        format!("\"own_vcpus\":{}", i.own_vcpus),
        format!("\"max_priority\":{}", i.max_priority),
        format!("\"priority\":{}", i.priority),
        format!("\"max_depth\":{}", i.max_depth),
        format!("\"depth_used\":{}", i.depth_used),
        format!("\"max_descendants\":{}", i.max_descendants),
        format!("\"descendants_used\":{}", i.descendants_used),
        format!("\"descendants_reserved\":{}", i.descendants_reserved),
        format!("\"child_count\":{}", i.child_count),
        format!("\"console_pending\":{}", i.console_pending),
        format!("\"console_dropped\":{}", i.console_dropped),
        format!("\"ram_gpa\":{}", i.ram_gpa),
        format!("\"entry_gpa\":{}", i.entry_gpa),
        format!("\"dtb_gpa\":{}", i.dtb_gpa),
    ]
}

/// `dsx info --json`.
pub fn info_json(i: &VmInfo) -> String {
    format!("{{{}}}\n", vm_info_members(i).join(","))
}

/// The hypervisor version `major.minor.patch` from `hv_version`.
pub fn hv_version(v: u64) -> String {
    format!("{}.{}.{}", v >> 32, (v >> 16) & 0xffff, v & 0xffff)
}

/// Names of the feature bits that are set.
pub fn feature_names(f: u64) -> Vec<&'static str> {
    const NAMES: [(u64, &str); 8] = [
        (features::HW_VIRT, "hw-virt"),
        (features::GSTAGE, "g-stage"),
        (features::COW_FORK, "cow-fork"),
        (features::IPC, "ipc"),
        (features::CONSOLE, "console"),
        (features::QUOTAS, "quotas"),
        (features::PMP_FALLBACK, "pmp-fallback"),
        (features::HW_TRUST, "hw-trust"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// `dsx info --host`.
pub fn hv_info_text(h: &HvInfo) -> String {
    format!(
        "hypervisor   Diosix {ver}, ABI {amaj}.{amin}\n\
         harts        {cores}\n\
         timer        {hz} Hz\n\
         RAM          {total} total, {free} free (this VM's quota and headroom)\n\
         features     {feat}\n",
        ver = hv_version(h.hv_version),
        amaj = h.abi_version >> 16,
        amin = h.abi_version & 0xffff,
        cores = h.host_cores,
        hz = h.timer_freq_hz,
        total = pages(h.ram_total_pages),
        free = pages(h.ram_free_pages),
        feat = feature_names(h.features).join(" "),
    )
}

/// `dsx info --host --json`.
pub fn hv_info_json(h: &HvInfo) -> String {
    let feats: Vec<String> = feature_names(h.features)
        .iter()
        .map(|f| json_str(f))
        .collect();
    format!(
        "{{\"hv_version\":{},\"version\":{},\"abi_version\":{},\"features\":{},\
         \"feature_names\":[{}],\"host_cores\":{},\"timer_freq_hz\":{},\
         \"ram_total_pages\":{},\"ram_free_pages\":{}}}\n",
        h.hv_version,
        json_str(&hv_version(h.hv_version)),
        h.abi_version,
        h.features,
        feats.join(","),
        h.host_cores,
        h.timer_freq_hz,
        h.ram_total_pages,
        h.ram_free_pages
    )
}

/// One row of `dsx list`: a child and the name given to it, if any.
pub struct Row<'a> {
    /// Its CID.
    pub cid: u64,
    /// Its name from `dsx run --name`.
    pub name: Option<&'a str>,
    /// What GET_CHILD_INFO said, or why it failed (the child may have died between
    /// LIST_CHILDREN and GET_CHILD_INFO).
    pub info: Result<VmInfo, CallError>,
    /// Its virtio devices (from the backends' state files), if it has any.
    pub devices: Option<ChildDevices>,
}

/// The DEVICES column: `rng`, `rng,rng`, with `(down)` when no backend serves them;
/// `-` for none.
pub fn devices_text(d: Option<&ChildDevices>) -> String {
    match d {
        None => "-".into(),
        Some(d) => format!(
            "{}{}",
            d.names.join(","),
            if d.backend.is_some() { "" } else { "(down)" }
        ),
    }
}

/// `dsx list`.
pub fn list_text(rows: &[Row<'_>]) -> String {
    if rows.is_empty() {
        return "no children\n".into();
    }
    let mut lines = vec![[
        "CID".to_string(),
        "NAME".into(),
        "STATE".into(),
        "TRUST".into(),
        "VCPUS".into(),
        "RAM".into(),
        "PRIO".into(),
        "CHILDREN".into(),
        "CONSOLE".into(),
        "DEVICES".into(),
    ]];
    for r in rows {
        let name = r.name.unwrap_or("-").to_string();
        let devices = devices_text(r.devices.as_ref());
        let cols = match &r.info {
            Ok(i) => [
                r.cid.to_string(),
                name,
                state_name(i.state),
                if i.flags & flags::INFO_TRUSTED != 0 {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                i.own_vcpus.to_string(),
                pages(i.own_ram_pages),
                i.priority.to_string(),
                i.child_count.to_string(),
                format!("{} B", i.console_pending),
                devices,
            ],
            Err(_) => [
                r.cid.to_string(),
                name,
                "gone".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                devices,
            ],
        };
        lines.push(cols);
    }
    let mut widths = [0usize; 10];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (i, (c, w)) in l.iter().zip(widths).enumerate() {
            if i + 1 == l.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `dsx list --json`: children that vanished meanwhile are left out.
pub fn list_json(rows: &[Row<'_>]) -> String {
    let items: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let i = r.info.as_ref().ok()?;
            let mut m = vm_info_members(i);
            m[0] = format!("\"cid\":{}", r.cid);
            m.insert(
                1,
                format!("\"name\":{}", r.name.map_or("null".into(), json_str)),
            );
            let d = r.devices.as_ref();
            let names: Vec<String> = d.map_or(Vec::new(), |d| {
                d.names.iter().map(|n| json_str(n)).collect()
            });
            m.push(format!("\"devices\":[{}]", names.join(",")));
            m.push(format!(
                "\"backend_pid\":{}",
                d.and_then(|d| d.backend)
                    .map_or("null".into(), |p| p.to_string())
            ));
            Some(format!("{{{}}}", m.join(",")))
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

/// One line describing an event; `name` is the name `dsx run --name` gave the child
/// it is about, if any.
pub fn event_text(e: &Event, name: Option<&str>) -> String {
    let who = match name {
        Some(n) => format!("CID {} ({n})", e.cid),
        None => format!("CID {}", e.cid),
    };
    let what = match e.kind {
        event::CHILD_TERMINATED => format!(
            "{who} terminated ({})",
            // 0 is both SRST shutdown and `kill` without --code: say only the number.
            match e.exit_code {
                exit_code::FATAL_FAULT => "fatal fault".to_string(),
                c => format!("exit code {c}"),
            }
        ),
        event::CHILD_STOPPED => format!("{who} stopped"),
        event::CHILD_STARTED => format!("{who} started"),
        event::CHILD_REBOOTED => format!("{who} rebooted"),
        event::MESSAGE if e.cid == 0 => "message from the parent waiting".to_string(),
        event::MESSAGE => format!("message from {who} waiting"),
        k => format!("event kind {k} about {who}"),
    };
    if e.dropped > 0 {
        format!("{what} ({} older events were dropped)", e.dropped)
    } else {
        what
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `bytes` read from guest-physical address `gpa`, 16 to a line: the address, the
/// bytes in hex, and as ASCII (`.` for anything not printable).
pub fn hex_dump(gpa: u64, bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let at = gpa.wrapping_add(i as u64 * 16);
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = line
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{at:#018x}  {:<47}  {text}\n", hex.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmInfo {
        VmInfo {
            size: VmInfo::SIZE as u32,
            flags: flags::INFO_TRUSTED | flags::INFO_ROOT,
            cid: 1,
            ram_pages_max: 262144,
            ram_pages_used: 131072,
            ram_pages_reserved: 163840,
            own_ram_pages: 130560,
            own_table_pages: 512,
            vcpus_max: 2,
            vcpus_used: 2,
            vcpus_reserved: 2,
            own_vcpus: 2,
            max_priority: 255,
            priority: 8,
            max_depth: 64,
            depth_used: 1,
            max_descendants: 65536,
            descendants_used: 1,
            descendants_reserved: 1,
            child_count: 1,
            state: state::RUNNING,
            console_pending: 0,
            console_dropped: 0,
            ram_gpa: 0x8000_0000,
            entry_gpa: 0x8020_0000,
            dtb_gpa: 0x8fe0_0000,
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(128 << 20), "128 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216 TiB");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            error_message(Op::Stop(7), CallError::Sbi(-3)),
            "CID 7 is not a child of this VM"
        );
        assert_eq!(
            error_message(Op::Query, CallError::Sbi(-2)),
            "the hypervisor does not support this call (SBI NOT_SUPPORTED)"
        );
        assert_eq!(
            error_message(Op::Resume(3), CallError::Sbi(-7)),
            "CID 3 is already running"
        );
        assert_eq!(
            error_message(Op::Stop(3), CallError::Sbi(-8)),
            "CID 3 is already stopped"
        );
        assert_eq!(
            error_message(Op::Stop(3), CallError::Sbi(-10)),
            "CID 3 was never started"
        );
        assert!(error_message(Op::Send(2), CallError::Sbi(-1)).contains("CID 2's queue"));
        assert!(error_message(Op::Spawn, CallError::Sbi(-4)).starts_with("denied"));
        assert!(error_message(Op::Fork, CallError::Sbi(-2)).contains("no H extension"));
        assert!(error_message(Op::Quota(1), CallError::Sbi(-10)).contains("this VM"));
        assert!(error_message(Op::Query, CallError::Sbi(-99)).contains("SBI error -99"));
        assert!(error_message(Op::Open, CallError::Os(libc::ENOENT)).contains("insmod"));
        assert!(error_message(Op::Open, CallError::Os(libc::EACCES)).contains("root"));
        assert!(error_message(Op::Spawn, CallError::Os(libc::E2BIG)).contains("64 MiB"));
    }

    #[test]
    fn info_formats() {
        let text = info_text(&sample());
        assert!(text.starts_with("this VM (CID 1): Root VM, trusted, running\n"));
        assert!(text.contains("512 MiB used of 1 GiB quota"));
        assert!(text.contains("384 MiB free to grant"));
        let json = info_json(&sample());
        assert!(json.starts_with("{\"cid\":1,\"trusted\":true,\"root\":true,\"state\":\"running\""));
        assert!(text.ends_with(
            "RAM at       GPA 0x80000000, booted at GPA 0x80200000 with its device tree at GPA 0x8fe00000\n"
        ));
        assert!(json.ends_with(
            "\"ram_gpa\":2147483648,\"entry_gpa\":2149580800,\"dtb_gpa\":2413821952}\n"
        ));
    }

    #[test]
    fn hv_formats() {
        let h = HvInfo {
            size: HvInfo::SIZE as u32,
            abi_version: 1 << 16,
            hv_version: 1 << 16, // 0.1.0
            features: features::HW_VIRT | features::IPC,
            host_cores: 2,
            reserved: 0,
            timer_freq_hz: 10_000_000,
            ram_total_pages: 262144,
            ram_free_pages: 1024,
        };
        let t = hv_info_text(&h);
        assert!(t.contains("Diosix 0.1.0, ABI 1.0"));
        assert!(t.contains("harts        2"));
        assert!(t.contains("1 GiB total, 4 MiB free"));
        assert!(t.contains("hw-virt ipc"));
        assert!(hv_info_json(&h).contains("\"feature_names\":[\"hw-virt\",\"ipc\"]"));
    }

    #[test]
    fn list_formats() {
        let mut child = sample();
        child.flags = 0;
        child.own_ram_pages = 32768;
        child.cid = 2;
        let rng = |backend| ChildDevices {
            names: vec!["rng".into()],
            backend,
        };
        let rows = [
            Row {
                cid: 2,
                name: Some("web"),
                info: Ok(child),
                devices: Some(rng(Some(77))),
            },
            Row {
                cid: 3,
                name: None,
                info: Err(CallError::Sbi(-3)),
                devices: None,
            },
            Row {
                cid: 4,
                name: None,
                info: Ok(child),
                devices: Some(rng(None)),
            },
            Row {
                cid: 5,
                name: None,
                info: Ok(child),
                devices: None,
            },
        ];
        let t = list_text(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CID  NAME  STATE"));
        assert!(lines[0].ends_with("CONSOLE  DEVICES"));
        assert!(lines[1].starts_with("2    web   running  no"));
        assert!(lines[1].contains("128 MiB"));
        assert!(lines[1].ends_with("0 B      rng"));
        assert!(lines[2].starts_with("3    -     gone"));
        assert!(lines[3].ends_with(" rng(down)"));
        assert!(lines[4].ends_with("0 B      -"));
        let j = list_json(&rows);
        assert!(j.starts_with("[{\"cid\":2,\"name\":\"web\",\"trusted\":false"));
        assert!(j.contains("\"dtb_gpa\":2413821952,\"devices\":[\"rng\"],\"backend_pid\":77}"));
        assert!(j.contains("\"devices\":[\"rng\"],\"backend_pid\":null}"));
        assert!(j.ends_with("\"devices\":[],\"backend_pid\":null}]\n"));
        assert_eq!(j.matches("\"cid\"").count(), 3);
        assert_eq!(list_text(&[]), "no children\n");
        assert_eq!(list_json(&[]), "[]\n");
    }

    #[test]
    fn events_and_json_strings() {
        let mut e = Event {
            size: 32,
            kind: event::CHILD_TERMINATED,
            cid: 4,
            exit_code: exit_code::FATAL_FAULT,
            dropped: 0,
            reserved: 0,
        };
        assert_eq!(event_text(&e, None), "CID 4 terminated (fatal fault)");
        assert_eq!(
            event_text(&e, Some("web")),
            "CID 4 (web) terminated (fatal fault)"
        );
        e.kind = event::MESSAGE;
        e.cid = 0;
        e.dropped = 2;
        assert_eq!(
            event_text(&e, None),
            "message from the parent waiting (2 older events were dropped)"
        );
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
