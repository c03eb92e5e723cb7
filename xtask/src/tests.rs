//! `cargo xtask test`: host tests, lints, then the QEMU boot tests.
//!
//! `cargo xtask test [--opensbi] [--no-host] [--gdb] [FILTER...]`
//!
//! * host step: `cargo test` (default members), host clippy with `-D warnings`,
//!   `cargo fmt --check`, clippy for the riscv64 crates (hypervisor and guests), a
//!   short fuzzing run, and `cargo xtask repro`'s cheap mode (the image built twice, in
//!   two copies of the tree, must come out the same);
//! * QEMU step: each case boots a guest as the Diosix Root VM (`-bios none`) and checks
//!   its serial output. `--opensbi` (a development flag) boots the same guests directly
//!   on QEMU's OpenSBI instead, which validates the guests and this harness while the
//!   hypervisor is unfinished. FILTERs select cases whose name contains any of them
//!   (and skip the host step);
//! * the `linux-*` cases boot the Linux Root VM (`build_image` with `RootVm::Linux`,
//!   built once), log in on the console, run commands and check their output, end with
//!   `poweroff`/`reboot`, and print the time to `login:` (see `docs/rootvm.md`);
//! * `gdb-linux-smp2` debugs the Linux Root VM image with `gdb-multiarch` in batch mode
//!   (`crate::gdb::run_case`: breakpoints in the hypervisor's trap handler and in
//!   Linux's `start_kernel`, see `docs/debugging.md`);
//! * `--gdb` runs the one case selected with QEMU halted and its GDB stub waiting for
//!   `cargo xtask gdb`.
use crate::build::{self, ImageOptions, RootVm};
use crate::devtests::{self, DeviceCase};
use crate::guests::{self, GUESTS, GUEST_TARGET};
use crate::process::cargo;
use crate::qemu::{self, Bios, QemuOptions};
use crate::{workspace_root, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Something the output must contain.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// A substring.
    Text(&'static str),
    /// A substring on Diosix, another on OpenSBI (e.g. the implementation id).
    Either {
        diosix: &'static str,
        opensbi: &'static str,
    },
    /// A closing line `<tool>: N passed, 0 failed` with N > 0.
    Summary(&'static str),
    /// Diosix's `host free pages: N` log lines: the last one (after every child VM was
    /// torn down) equals the first (the Root VM just started), so no page leaked.
    FreePagesRestored,
    /// Diosix's `hypervisor heap in use: N KiB` log lines (one per VM terminated), from
    /// the first one logged after the guest printed `after`: the last is at most
    /// `tolerance_kib` above that first one, so the work in between left nothing on
    /// the heap. The guest prints `after` once the hypervisor's tables have grown to
    /// their size for the run (and kills one child right after, for the figure).
    HeapRestoredAfter {
        after: &'static str,
        tolerance_kib: u64,
    },
    /// Diosix's `hypervisor heap in use: N KiB` log lines (one per VM terminated): the
    /// last is at most `tolerance_kib` above the first, so the heap did not grow with
    /// the work done in between. A tolerance because the heap may keep what it grew
    /// once (a collection's capacity, an allocator's split blocks); the case that uses
    /// this says why its figure.
    HeapRestored { tolerance_kib: u64 },
    /// No `ERROR` line from Diosix, and no `WARN` line but those containing one of
    /// `allowed` (refusals that the operations of the case make legitimately).
    HvLogClean { allowed: &'static [&'static str] },
}

/// The `hypervisor heap in use: N KiB` figures Diosix logged, in order.
pub(crate) fn heap_kib(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.split("hypervisor heap in use: ").nth(1))
        .filter_map(|v| v.split(' ').next()?.parse().ok())
        .collect()
}

/// Diosix's `WARN` and `ERROR` log lines, from the `[diosix` that starts each (the
/// console is shared: a log line may begin in the middle of a guest's line).
pub(crate) fn hv_warnings(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| {
            ["[diosix WARN", "[diosix ERROR"]
                .iter()
                .find_map(|p| l.find(p).map(|at| l[at..].trim_end()))
        })
        .collect()
}

/// The `host free pages: N` figures Diosix logged, in order.
pub(crate) fn free_pages(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.split("host free pages: ").nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// The `hypervisor heap in use: N KiB` figures Diosix logged after the first `after`
/// in `out`, in order (none if `after` never appears).
fn heap_after(out: &str, after: &str) -> Vec<u64> {
    out.find(after).map_or_else(Vec::new, |at| {
        out[at..]
            .lines()
            .filter_map(|l| l.split("hypervisor heap in use: ").nth(1))
            .filter_map(|v| v.split(' ').next()?.parse().ok())
            .collect()
    })
}

/// How a case boots.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Boot the guest and check its output.
    Boot,
    /// A Root VM file (relative to the workspace) that is no kernel: `build_image` must
    /// refuse it, or the hypervisor must print an `ERROR` line and stop QEMU.
    ImageRejected(&'static str),
    /// Boot the Linux Root VM (one image built once for every such case, one vCPU per
    /// host hart, default RAM), log in and report the time to `login:`.
    Linux,
    /// Debug the Linux Root VM image (the [`Kind::Linux`] cases' image) with GDB in
    /// batch mode: `crate::gdb::run_case`.
    Gdb,
}

/// One QEMU test case.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) guest: &'static str,
    kind: Kind,
    /// Root VM vCPUs on Diosix; the `-smp` on OpenSBI, where vCPUs are harts.
    vcpus: u32,
    /// Host harts (`-smp`) on Diosix.
    smp: u32,
    /// Root VM RAM in MiB on Diosix (`None` = hypervisor default).
    ram_mib: Option<u32>,
    /// Host RAM in MiB (`-m`) on Diosix.
    mem_mib: u32,
    /// Run under `-icount shift=0,sleep=off`: guest time counts instructions (1 ns
    /// each), so the guest-time figures do not depend on the host's load.
    icount: bool,
    /// Command line: Root VM cmdline on Diosix, `-append` on OpenSBI.
    cmdline: Option<&'static str>,
    expect: &'static [Expect],
    /// Console interaction: (wait for, then send).
    interact: &'static [(&'static str, &'static str)],
    /// Stop QEMU (pass, if the rest holds) once this appears.
    stop_at: Option<&'static str>,
    pub(crate) timeout_s: u64,
    /// Lines to print after a pass, made from the output (the soak's figures).
    pub(crate) report: Option<fn(&str) -> String>,
    /// Host devices attached (a disk, the network) and a second boot.
    devices: Option<DeviceCase>,
    /// QEMU's `-cpu` (`None`: its default, with the H extension).
    cpu: Option<&'static str>,
    /// QEMU's `-machine` (`None`: `virt`).
    machine: Option<&'static str>,
}

/// Lines that fail any case wherever they appear.
/// (`FAIL` only at the start of a line: the guests' own failure lines.)
const FORBIDDEN: &[&str] = &["panicked", "sbi_trap_error", "Unhandled exception"];

const SBI_TESTS: &[Expect] = &[
    Expect::Summary("sbi-tests"),
    // Written with DBCN as CR LF: Diosix passes it through unchanged; OpenSBI's
    // console adds a CR before every LF (CR CR LF).
    Expect::Either {
        diosix: "sbi-tests: console bytes CR LF\r\n",
        opensbi: "sbi-tests: console bytes CR LF\r\r\n",
    },
    Expect::Either {
        diosix: "info impl id 5",
        opensbi: "info impl id 1",
    },
];
const SBI_TESTING: &[Expect] = &[Expect::Text("sbi-testing: PASS")];

fn case(
    name: &'static str,
    guest: &'static str,
    vcpus: u32,
    smp: u32,
    expect: &'static [Expect],
) -> Case {
    Case {
        name,
        guest,
        kind: Kind::Boot,
        vcpus,
        smp,
        ram_mib: None,
        mem_mib: 512,
        icount: false,
        cmdline: None,
        expect,
        interact: &[],
        stop_at: None,
        timeout_s: 120,
        report: None,
        devices: None,
        cpu: None,
        machine: None,
    }
}

/// The guest name of the Linux Root VM cases (see [`Kind::Linux`]).
const LINUX: &str = "linux";

/// The Root VM shell's prompt ends with this (`/etc/profile`: `root@diosix:/root# `).
/// Each command is sent once the previous one's prompt is back, so output never
/// interleaves with typing. Commands print `NAME-value` markers built by the shell
/// (`NPROC-$(nproc)`): the console echoes what is typed, and only the command's
/// output, never its echo, contains `NPROC-2`.
pub(crate) const PROMPT: &str = "/root# ";

/// First command after login: the guest's uptime, reported as the guest time to login.
pub(crate) const UPTIME_CMD: &str = "echo UPTIME-$(cut -d' ' -f1 /proc/uptime)\r";

/// One busy loop per CPU at once, then the user+system ticks each CPU gained meanwhile
/// (`/proc/stat`, 100 per second): every CPU must have done some of the work.
const BUSY_CMD: &str = concat!(
    "grep '^cpu[0-9]' /proc/stat >/tmp/s0; ",
    "for i in $(seq $(nproc)); do ",
    "(j=0; while [ $j -lt 30000 ]; do j=$((j+1)); done; echo LOOP-$i-$j) & done; wait; ",
    "grep '^cpu[0-9]' /proc/stat >/tmp/s1; ",
    "awk 'NR==FNR {t[$1]=$2+$4; next} {d=$2+$4-t[$1]; print \"WORK-\" $1 \"-\" d; ",
    "if (d >= 10) n++} END {print \"BUSYCPUS-\" n+0}' /tmp/s0 /tmp/s1\r",
);

/// The console session of the full Linux cases.
const LINUX_SESSION: &[(&str, &str)] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (PROMPT, "echo NPROC-$(nproc) ONLINE-$(cat /sys/devices/system/cpu/online)\r"),
    (PROMPT, "lua -e 'print(\"LUA-\" .. 6*7)'\r"),
    (PROMPT, "echo HOST-$(hostname) ARCH-$(uname -m)\r"),
    // One `processor` and one `hart` line per CPU (`hart isa` lines do not count).
    (
        PROMPT,
        "echo HARTS-$(grep -c '^hart[[:space:]]*:' /proc/cpuinfo) PROCS-$(grep -c ^processor /proc/cpuinfo)\r",
    ),
    (PROMPT, BUSY_CMD),
    (PROMPT, "poweroff\r"),
];

/// What the full Linux case at `$n` host harts checks: `$online` is
/// `/sys/devices/system/cpu/online`, `$ram` the Root VM's RAM in KiB as the kernel's
/// `Memory:` line gives it (the default: host RAM / 8, 64..512 MiB), `$cpu` the CPU
/// numbers of the busy loops.
macro_rules! linux_expect {
    ($n:literal, $online:literal, $ram:literal, [$($cpu:literal),*]) => {
        &[
            Expect::Text("login:"),
            Expect::Text(concat!("K/", $ram, "K available")),
            Expect::Text(concat!("NPROC-", $n, " ONLINE-", $online)),
            Expect::Text("LUA-42"),
            Expect::Text("HOST-diosix ARCH-riscv64"),
            Expect::Text(concat!("HARTS-", $n, " PROCS-", $n)),
            $(Expect::Text(concat!("LOOP-", $cpu, "-30000")),)*
            Expect::Text(concat!("BUSYCPUS-", $n)),
            Expect::Text("asked for Shutdown: the Root VM has ended"),
        ]
    };
}

/// A Linux Root VM case at `smp` host harts and `mem_mib` host RAM.
pub(crate) fn linux_case(
    name: &'static str,
    smp: u32,
    mem_mib: u32,
    expect: &'static [Expect],
    interact: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        kind: Kind::Linux,
        mem_mib,
        interact,
        timeout_s: 240,
        ..case(name, LINUX, smp, smp, expect)
    }
}

/// The Root VM's prompt (`root@diosix:/root# `), distinct from a guest's.
pub(crate) const ROOT_PROMPT: &str = "@diosix:/root# ";

/// The prompt of the guest Linux `dsx run` starts by default (hostname `guest`).
const GUEST_PROMPT: &str = "@guest:/root# ";

/// Ctrl-]: detaches `dsx console`.
const DETACH: &str = "\x1d";

/// One console step of a `linux-dsx-*` case: (wait for, then send).
pub(crate) type Step = (&'static str, &'static str);

/// Text built at run time for a case's table (cases are built once per run).
pub(crate) fn leak(s: String) -> &'static str {
    s.leak()
}

/// Attach to child `cid` of the Root VM (as `child`: its CID or its name), log in to
/// the guest Linux there, print `HX-guest-42-<cid>` from its shell, detach (Ctrl-]) and
/// get the Root VM's prompt back.
fn guest_login_steps(cid: u32, child: &str) -> Vec<Step> {
    vec![
        (ROOT_PROMPT, leak(format!("dsx console {child}\r"))),
        ("guest login:", "root\r"),
        (
            GUEST_PROMPT,
            leak(format!("echo HX-$(hostname)-$((6*7))-{cid}\r")),
        ),
        (leak(format!("HX-guest-42-{cid}")), ""),
        (GUEST_PROMPT, DETACH),
        (leak(format!("detached from CID {cid}")), ""),
    ]
}

/// Defines the shell function `fp`: the free RAM `dsx info --host` reports, in pages
/// (GET_HV_INFO: the caller's quota headroom).
const FREE_PAGES_FN: &str =
    "fp() { dsx info --host --json | sed 's/.*\"ram_free_pages\":\\([0-9]*\\).*/\\1/'; }; ";

/// `linux-dsx-seed` (`-smp 4 -m 512M`, so a 64 MiB Root VM): three 128 MiB guest Linux
/// children must fit; each logs in and runs a command (the third attached to by its
/// name); a second child named `g1` is refused; killing the third by name must give
/// back exactly the free RAM there was before it was started, and `dsx events` names
/// it.
fn dsx_seed_steps() -> &'static [Step] {
    let mut v = vec![
        ("login:", "root\r"),
        (PROMPT, UPTIME_CMD),
        (
            ROOT_PROMPT,
            leak(format!(
                "{FREE_PAGES_FN}F0=$(fp); dsx run --ram 128M --name g1 && \
                 dsx run --ram 128M --name g2 && B=$(fp) && dsx run --ram 128M --name g3; \
                 echo RUN3-$? LIVE-$(dsx list --json | grep -o running | wc -l) F0-$F0 B-$B\r"
            )),
        ),
        ("RUN3-", ""),
    ];
    v.extend(guest_login_steps(2, "2"));
    v.extend(guest_login_steps(3, "3"));
    v.extend(guest_login_steps(4, "g3"));
    v.extend([
        (
            ROOT_PROMPT,
            "dsx run --ram 16M --name g1; echo DUP-$?; dsx events >/dev/null; dsx kill g3; \
             A=$(fp); echo FREE-$B-$A SAME-$([ \"$A\" = \"$B\" ] && echo yes || echo no) \
             LEFT-$(dsx list --json | grep -o running | wc -l); dsx events | sed 's/^/EV: /'\r",
        ),
        ("SAME-", ""),
        (ROOT_PROMPT, "poweroff\r"),
    ]);
    v.leak()
}

/// Steal time in /proc/stat (the eighth number of the `cpu` line), in USER_HZ ticks.
const STEAL_FN: &str = "st() { awk '/^cpu /{print $9}' /proc/stat; }; ";

/// `linux-steal-smp1`: one host hart, the Root VM and a child Linux both computing for
/// 4 s: each sees at least 1 s of it as steal (SBI STA); then the Root VM alone sees
/// next to none.
fn steal_steps() -> &'static [Step] {
    vec![
        ("login:", "root\r"),
        (PROMPT, UPTIME_CMD),
        (ROOT_PROMPT, "dsx run --ram 128M --name b && dsx console b\r"),
        ("guest login:", "root\r"),
        (
            GUEST_PROMPT,
            leak(format!(
                "{STEAL_FN}(while :; do :; done) & G0=$(st); echo CHILD-BUSY-$G0\r"
            )),
        ),
        ("CHILD-BUSY-", ""),
        (GUEST_PROMPT, DETACH),
        ("detached from CID 2", ""),
        (
            ROOT_PROMPT,
            leak(format!(
                "{STEAL_FN}(while :; do :; done) & B=$!; S0=$(st); sleep 4; S1=$(st); kill $B; \
                 echo ROOT-STEAL-$([ $((S1-S0)) -ge 100 ] && echo OK || echo LOW) $((S1-S0))\r"
            )),
        ),
        ("ROOT-STEAL-", ""),
        (ROOT_PROMPT, "dsx console b\r"),
        ("", "\r"),
        (
            GUEST_PROMPT,
            "G1=$(st); kill %1; echo CHILD-STEAL-$([ $((G1-G0)) -ge 100 ] && echo OK || echo LOW) $((G1-G0))\r",
        ),
        ("CHILD-STEAL-", ""),
        (GUEST_PROMPT, DETACH),
        ("detached from CID 2", ""),
        (
            ROOT_PROMPT,
            "dsx kill b; (while :; do :; done) & B=$!; S2=$(st); sleep 2; S3=$(st); kill $B; \
             echo LONE-STEAL-$([ $((S3-S2)) -le 20 ] && echo OK || echo HIGH) $((S3-S2))\r",
        ),
        ("LONE-STEAL-", ""),
        (ROOT_PROMPT, "poweroff\r"),
    ]
    .leak()
}

/// `diosix-workloads perf` (a small `perf stat`) and a check that its instruction
/// count is the loop's, give or take 2% and the kernel's work around it: echoes
/// `<tag>-OK` or `<tag>-BAD <count> <loop>`.
fn perf_check(tag: &str) -> String {
    format!(
        "set -- $(diosix-workloads perf 10000000); echo \"$@\"; \
         [ $3 -ge $7 ] && [ $3 -le $(($7 + $7 / 50 + 200000)) ] && echo {tag}-OK || \
         echo {tag}-BAD $3 $7\r"
    )
}

/// `linux-perf-smp1` (under -icount, one host hart, so QEMU counts exactly that
/// hart's instructions): `perf_event_open` in the Root VM counts its own loop,
/// alone, then while a child Linux computes on the same host hart (the counts stay
/// the Root VM's), then after the child is gone.
fn perf_steps() -> &'static [Step] {
    vec![
        ("login:", "root\r"),
        (PROMPT, leak(perf_check("PERF-ALONE"))),
        ("PERF-ALONE-", ""),
        (
            ROOT_PROMPT,
            "dsx run --ram 128M --name b && dsx console b\r",
        ),
        ("guest login:", "root\r"),
        (GUEST_PROMPT, "(while :; do :; done) & echo CHILD-BUSY\r"),
        ("CHILD-BUSY", ""),
        (GUEST_PROMPT, DETACH),
        ("detached from CID 2", ""),
        (ROOT_PROMPT, leak(perf_check("PERF-SHARED"))),
        ("PERF-SHARED-", ""),
        (
            ROOT_PROMPT,
            leak(format!("dsx kill b; {}", perf_check("PERF-AFTER"))),
        ),
        ("PERF-AFTER-", ""),
        (ROOT_PROMPT, "poweroff\r"),
    ]
    .leak()
}

/// What the hostile guest must show behind PMP.
const PMP_HOSTILE: &[Expect] = &[
    Expect::Summary("hostile"),
    Expect::FreePagesRestored,
    Expect::Text("phase pmp: start"),
    Expect::Text("phase pmp_exec_vs_kill: start"),
];

/// QEMU `virt` harts without the H extension.
const NO_H: &str = "rv64,h=false";

/// `linux-pmp-smp2`: the Root VM reports the PMP fallback, FORK is refused with the
/// reason, and a guest Linux child runs (attached to by its name; log in, a command)
/// and is killed.
fn pmp_steps() -> &'static [Step] {
    let mut v = vec![
        ("login:", "root\r"),
        (PROMPT, UPTIME_CMD),
        (
            ROOT_PROMPT,
            "echo NPROC-$(nproc) FEATURES-$(dsx info --host | grep -o pmp-fallback)\r",
        ),
        (ROOT_PROMPT, "dsx fork || echo FORK-REFUSED\r"),
        (
            ROOT_PROMPT,
            "dsx run --ram 128M --name p1 && echo RUN-$(dsx list --json | grep -o running | wc -l)\r",
        ),
    ];
    v.extend(guest_login_steps(2, "p1"));
    v.extend([
        (ROOT_PROMPT, "dsx kill 2; dsx events\r"),
        (ROOT_PROMPT, "poweroff\r"),
    ]);
    v.leak()
}

/// In a guest: wait (up to 90 s) for its child CID 2's `guest login:`, log in there,
/// run a command and print what it printed (`GRAND-GH-guest-42`). Driven through
/// `dsx console 2` without a terminal: with stdin at its end, dsx sends what it read,
/// drains the child's output to stdout and returns (a nested interactive console could
/// not be detached: the outer `dsx console` takes the Ctrl-]).
const GRANDCHILD_LOGIN: &str = concat!(
    "for i in $(seq 90); do dsx console 2 </dev/null >>/tmp/gc 2>/dev/null; ",
    "grep -q 'guest login:' /tmp/gc && break; sleep 1; done; ",
    "printf 'root\\r' | dsx console 2 >>/tmp/gc 2>/dev/null; sleep 2; ",
    "printf 'echo GH-$(hostname)-$((6*7))\\r' | dsx console 2 >>/tmp/gc 2>/dev/null; ",
    "for i in $(seq 30); do grep -q 'GH-guest-42' /tmp/gc && break; sleep 1; ",
    "dsx console 2 </dev/null >>/tmp/gc 2>/dev/null; done; ",
    "echo GRAND-$(grep -o 'GH-guest-4[2]' /tmp/gc | head -n 1)\r",
);

/// `linux-dsx-nested`: the Root VM raises a child's quota (a child's own is exactly
/// what it holds), the child refuses a grandchild beyond it and starts one within it
/// (`dsx run` without IMAGE in the guest: its retained initramfs), the grandchild logs
/// in, and killing the child takes the grandchild with it.
const DSX_NESTED: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dsx run --ram 128M --name kid && dsx quota 2 && \
         dsx quota 2 --ram 184M --vcpus 2 --descendants 1 --depth 1 && dsx quota 2 && \
         dsx console 2\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "dsx run --ram 64M; echo BIG-$?; dsx run --ram 32M --name gk; echo GK-$?; dsx info\r",
    ),
    ("GK-", ""),
    (GUEST_PROMPT, GRANDCHILD_LOGIN),
    ("GRAND-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "echo KIDS-$(dsx list --json | grep -o '\"child_count\":[0-9]*')\r",
    ),
    ("KIDS-", ""),
    // A child flooding its parent with messages: its lane holds 16 (the rest are
    // refused), and the parent's event interrupt fires once for the whole flood (an
    // edge per filling of the queue, not one per event).
    (
        ROOT_PROMPT,
        "dsx events >/dev/null; C0=$(awk '/diosix-events/{print $2+$3}' /proc/interrupts); \
         dsx console 2\r",
    ),
    // Attached again: the idle shell prints nothing until asked.
    ("attached to CID 2", "\r"),
    (
        GUEST_PROMPT,
        "for i in $(seq 40); do dsx send parent x 2>/dev/null; done; echo FLOOD-$((20+20))-SENT\r",
    ),
    ("FLOOD-40-SENT", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "C1=$(awk '/diosix-events/{print $2+$3}' /proc/interrupts); \
         N=$(dsx events | grep -c 'message from'); echo FLOOD-IRQS-$((C1-C0)) MSG-EVENTS-$N; \
         for i in $(seq 20); do dsx recv >/dev/null || break; done\r",
    ),
    ("MSG-EVENTS-", ""),
    // CHILD_MEM_READ / CHILD_MEM_WRITE through the driver: the child's kernel Image
    // header where SPAWN loaded it (its magic at +0x30), then its reserved word
    // (+0x3c, unused once booted) written and read back.
    (
        ROOT_PROMPT,
        "E=$(dsx list --json | grep -o '\"entry_gpa\":[0-9]*' | head -n 1 | cut -d: -f2); \
         dsx peek 2 $((E+48)) 5; dsx poke 2 $((E+60)) 44534b21 && dsx peek kid $((E+60)) 4; \
         dsx peek 2 0 4; echo PEEK-OUTSIDE-$?\r",
    ),
    ("PEEK-OUTSIDE-", ""),
    (
        ROOT_PROMPT,
        "dsx kill 2; dsx events; echo AFTER-$(dsx list --json)\r",
    ),
    ("AFTER-", ""),
    // The Root VM's event interrupt: bound by the driver, and taken (its children's
    // starts and its child's end were events).
    (
        ROOT_PROMPT,
        "echo EVLINE-$(dmesg | grep -o 'events on irq' | head -n 1) \
         EVIRQ-$(awk '/diosix-events/{n=0; for(i=2;i<=NF;i++){if($i ~ /^[0-9]+$/) n+=$i; else break}; \
         print (n>0 ? \"SEEN\" : \"NONE\")}' /proc/interrupts)\r",
    ),
    ("EVIRQ-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// In a guest: run `$cmd` in its child CID 2 (logging in first) through `dsx console 2`
/// without a terminal, as [`GRANDCHILD_LOGIN`] does, and print `GRAND-` and the first
/// match of `$token` in what the grandchild printed.
macro_rules! grandchild_run {
    ($cmd:literal, $token:literal) => {
        concat!(
            "rm -f /tmp/gc; for i in $(seq 90); do dsx console 2 </dev/null >>/tmp/gc 2>/dev/null; ",
            "grep -q 'guest login:' /tmp/gc && break; sleep 1; done; ",
            "printf 'root\\r' | dsx console 2 >>/tmp/gc 2>/dev/null; sleep 2; ",
            "printf '",
            $cmd,
            "\\r' | dsx console 2 >>/tmp/gc 2>/dev/null; ",
            "for i in $(seq 60); do grep -q '",
            $token,
            "' /tmp/gc && break; sleep 1; ",
            "dsx console 2 </dev/null >>/tmp/gc 2>/dev/null; done; ",
            "echo GRAND-$(grep -o '",
            $token,
            "' /tmp/gc | head -n 1)\r"
        )
    };
}

/// `linux-dsx-disk`: `dsx run --disk FILE` gives a Linux child a virtio-blk disk backed
/// by a file in the Root VM. The child formats and mounts it and writes a file (the
/// parent finds the bytes in its file); after `dsx reboot` the child reads it back;
/// the child gives a grandchild a disk of its own, a file on its disk, which the
/// grandchild formats, writes and reads (the mechanism recurses); the parent truncates
/// the file under the running child: reads beyond the new end fail with I/O errors,
/// reads before it still work. The backend's worker, killed with SIGKILL before the
/// reboot, is started again by its supervisor and serves the rest of the case. `dsx
/// kill` ends the backends and every page comes back.
const DSX_DISK: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dd if=/dev/zero of=/tmp/d1 bs=1M count=32 2>/dev/null && \
         dsx run --ram 128M --disk /tmp/d1 --name d && \
         dsx quota d --ram 200M --vcpus 2 --descendants 1 --depth 1 && dsx console d\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "mkdir -p /mnt && mke2fs /dev/vda >/dev/null 2>&1 && mount /dev/vda /mnt && \
         echo persisted-on-the-disk > /mnt/note && \
         dd if=/dev/zero of=/mnt/gdisk bs=1M count=8 2>/dev/null && umount /mnt; \
         echo MKFS-$?\r",
    ),
    ("MKFS-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "sync; echo PARENT-SEES-$(grep -c persisted-on-the-disk /tmp/d1); \
         dsx list --json | grep -o '\"devices\":[^]]*]'; P=$(cat /run/dsx/2.pid); \
         pkill -9 -P $P; sleep 1; echo RESTARTED-$(pgrep -P $P | wc -l)-$(grep -c 'killed by signal 9' /run/dsx/2.log); \
         dsx reboot d && dsx console d\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "mkdir -p /mnt && mount /dev/vda /mnt && echo DISK-READ-$(cat /mnt/note); \
         dsx run --ram 48M --disk /mnt/gdisk --name g; echo GRUN-$?\r",
    ),
    ("GRUN-", ""),
    (
        GUEST_PROMPT,
        grandchild_run!(
            "mkdir -p /mnt; mke2fs /dev/vda >/dev/null 2>&1; mount /dev/vda /mnt && echo deep > /mnt/f && umount /mnt && mount /dev/vda /mnt && echo GX-$(cat /mnt/f)-$((40+2))",
            "GX-deep-42"
        ),
    ),
    ("GRAND-", ""),
    (
        GUEST_PROMPT,
        "dsx kill g; sleep 1; echo GBACKENDS-$(ps | grep -c '[d]sx backend'); umount /mnt; echo UMOUNT-$?\r",
    ),
    ("UMOUNT-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    // The parent cuts the file to 1 MiB under the running child.
    (ROOT_PROMPT, "truncate -s 1M /tmp/d1 && dsx console d\r"),
    ("attached to CID 2", "\r"),
    (
        GUEST_PROMPT,
        "dd if=/dev/vda of=/dev/null bs=4k skip=1024 count=1 iflag=direct 2>/dev/null; \
         echo BEYOND-$?; dd if=/dev/vda of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; \
         echo WITHIN-$?\r",
    ),
    ("WITHIN-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "dsx kill d; sleep 1; echo GONE-$(ps | grep -c '[d]sx backend')\r",
    ),
    ("GONE-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-net`: `dsx run --net` gives Linux children a virtio-net card on a TAP
/// device in the Root VM, on the bridge `dsxbr0` where the Root VM is 10.77.0.1. A
/// child fetches a page from busybox `httpd` in the Root VM; two `--net` children do
/// not reach each other (isolated bridge ports; the Root VM reaches both), two
/// `--net-open` children do; `dsx kill` removes each child's TAP and backend, and
/// every page comes back.
const DSX_NET: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "mkdir -p /tmp/www && echo served-by-the-parent > /tmp/www/index.html && \
         httpd -p 8000 -h /tmp/www && dsx run --ram 96M --net --name a && \
         dsx run --ram 96M --net --name b && dsx list; \
         for i in $(seq 60); do ping -c 1 -W 1 10.77.0.3 >/dev/null 2>&1 && break; sleep 1; \
         done; echo B-UP-$?; dsx console a\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "echo WGET-$(wget -q -O - http://10.77.0.1:8000/); \
         ping -c 2 -W 2 10.77.0.3 >/dev/null 2>&1; echo SIBLING-$?\r",
    ),
    ("SIBLING-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "echo TAPS-$(ls /sys/class/net | grep -c dsxtap); dsx kill a; dsx kill b; sleep 1; \
         echo TAPS-AFTER-$(ls /sys/class/net | grep -c dsxtap); \
         dsx run --ram 96M --net-open --name c && dsx run --ram 96M --net-open --name d && \
         dsx console c\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "for i in $(seq 60); do ping -c 1 -W 1 10.77.0.5 >/dev/null 2>&1 && break; \
         sleep 1; done; echo OPEN-PEERS-$?\r",
    ),
    ("OPEN-PEERS-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 4", ""),
    (
        ROOT_PROMPT,
        "dsx kill c; dsx kill d; sleep 1; echo GONE-$(ps | grep -c '[d]sx backend')-$(ls /sys/class/net | grep -c dsxtap)\r",
    ),
    ("GONE-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-example`: the worked example of `docs/dsx.md` ("A disk and a network"),
/// whose output is this case's: the Root VM makes a disk image; a child `web` with that
/// disk and an open network port formats it, puts a page on it and serves it with
/// busybox `httpd`; a second child `client` on the bridge fetches the page from `web`.
const DSX_EXAMPLE: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dd if=/dev/zero of=/root/web.img bs=1M count=16 2>/dev/null; \
         dsx run --disk /root/web.img --net-open --name web && dsx list && dsx console web\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "mke2fs /dev/vda >/dev/null && mkdir -p /www && mount /dev/vda /www && \
         echo \"hello, $((6*7)) from web's own disk\" > /www/index.html && httpd -h /www && \
         ip -4 addr show eth0 | grep inet\r",
    ),
    ("inet ", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "dsx run --net-open --name client && dsx list && dsx console client\r",
    ),
    ("guest login:", "root\r"),
    (GUEST_PROMPT, "wget -q -O - http://10.77.0.2/\r"),
    ("from web's own disk", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 3", ""),
    (ROOT_PROMPT, "dsx kill client; dsx kill web; dsx list\r"),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-forward`: a service in a child reached from the host. The Root VM has the
/// host's network (QEMU user networking; the host's port is forwarded to the Root VM's
/// port 8081); a child started with `--net --forward 8081:80` serves a page with busybox
/// `httpd`; the Root VM fetches it through its own port 8081 (the relay in the child's
/// backend), and the host fetches it through the same forwarded port while the case
/// waits (the case fails unless the page arrives).
const DSX_FORWARD: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dsx run --ram 96M --net --forward 8081:80 --name w && dsx list && dsx console w\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "mkdir -p /www && echo \"hello, $((6*7)) from a child\" > /www/index.html && \
         httpd -h /www; echo SERVING-$?\r",
    ),
    ("SERVING-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "echo LOCAL-$(wget -q -O - http://127.0.0.1:8081/); sleep 15; dsx kill w; \
         sleep 1; echo GONE-$(ps | grep -c '[d]sx backend')\r",
    ),
    ("GONE-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// The page of [`DSX_NAT`]'s outside world.
const OUTSIDE_PAGE: &str = "the-outside-world";

/// `linux-dsx-nat`: children reach the outside world, and their own children get
/// networks. The Root VM has the host's network (QEMU user networking) and a web
/// server on the host's loopback stands for the outside world (its address, as the
/// Root VM reaches it, on the disk). A `--net` child fetches the host's page through
/// the Root VM's NAT; it then serves a page itself and runs a `--net` grandchild, which
/// is on the child's own network (10.78.0.0/24), fetches the child's page, the Root
/// VM's and the host's (through two NATs), and serves a page of its own, which the
/// child fetches and the Root VM cannot (no route: the grandchild's network is hidden
/// behind the child); `dsx kill` ends every backend and TAP at both levels, and every
/// page comes back.
const DSX_NAT: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "mkdir -p /tmp/www && cp /var/lib/diosix/outside /tmp/www/ && httpd -p 8000 -h /tmp/www && \
         dsx run --ram 128M --net --name c && \
         dsx quota c --ram 200M --vcpus 2 --descendants 1 --depth 1 && dsx console c\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "U=$(wget -q -O - http://10.77.0.1:8000/outside); echo OUT-$(wget -q -O - http://$U/); \
         mkdir -p /tmp/www && echo served-by-the-child > /tmp/www/index.html && \
         httpd -p 8000 -h /tmp/www && dsx run --ram 48M --net --name g; echo GRUN-$?\r",
    ),
    ("GRUN-", ""),
    (
        GUEST_PROMPT,
        grandchild_run!(
            "ip -4 addr show eth0 | grep -o \"inet [0-9./]*\"; mkdir -p /tmp/w && echo grandchild-page > /tmp/w/index.html && httpd -p 8000 -h /tmp/w; echo GX-$(wget -q -O - http://10.78.0.1:8000/)-$(wget -q -O - http://$(wget -q -O - http://10.77.0.1:8000/outside)/)",
            "GX-served-by-the-child-[a-z-]*"
        ),
    ),
    ("GRAND-", ""),
    (
        GUEST_PROMPT,
        "echo GADDR-$(grep -c 'inet 10.78.0.2/24' /tmp/gc | sed 's/^[1-9][0-9]*$/seen/'); \
         echo CHILD-TO-GRANDCHILD-$(wget -q -O - http://10.78.0.2:8000/)\r",
    ),
    ("CHILD-TO-GRANDCHILD-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "echo ROOT-TO-GRANDCHILD-$(wget -q -T 5 -O - http://10.78.0.2:8000/ 2>/dev/null || \
         echo none); dsx console c\r",
    ),
    ("attached to CID 2", "\r"),
    (
        GUEST_PROMPT,
        "dsx kill g; sleep 1; \
         echo GBACKENDS-$(ps | grep -c '[d]sx backend')-$(ls /sys/class/net | grep -c dsxtap)\r",
    ),
    ("GBACKENDS-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "dsx kill c; sleep 1; \
         echo GONE-$(ps | grep -c '[d]sx backend')-$(ls /sys/class/net | grep -c dsxtap)\r",
    ),
    ("GONE-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// In a child with `--rng`: which driver `hw_random` uses, how many of 512 bytes
/// `/dev/hwrng` returned, and whether any of 64 more was not zero; each line starts
/// with the given marker.
macro_rules! rng_read {
    ($marker:literal) => {
        concat!(
            "echo ",
            $marker,
            "-DRIVER-$(cat /sys/class/misc/hw_random/rng_current); echo ",
            $marker,
            "-BYTES-$(dd if=/dev/hwrng bs=64 count=8 2>/dev/null | wc -c); echo ",
            $marker,
            "-RANDOM-$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -tx1 | \
             tr -d ' 0\n' | wc -c | awk '{print ($1 > 0 ? \"YES\" : \"NO\")}')\r"
        )
    };
}

/// `linux-dsx-rng`: `dsx run --rng` gives a Linux child a virtio entropy device served
/// by a `dsx backend` process in the Root VM: the child's stock `virtio_rng` driver
/// binds it and `/dev/hwrng` returns bytes (not all zero); `dsx list` shows the device
/// and the backend is running; after `dsx reboot` (the device reset and counted) the
/// rebooted child reads again; `dsx kill` ends the backend and every page comes back.
const DSX_RNG: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dsx run --ram 128M --rng --name r && dsx console r\r",
    ),
    ("guest login:", "root\r"),
    (GUEST_PROMPT, rng_read!("HWRNG")),
    ("HWRNG-RANDOM-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "dsx list; dsx list --json | grep -o '\"devices\":[^]]*]'; \
         echo BACKENDS-$(ps | grep -c '[d]sx backend 2'); dsx reboot r && dsx console r\r",
    ),
    ("guest login:", "root\r"),
    (GUEST_PROMPT, rng_read!("REBOOTED")),
    ("REBOOTED-RANDOM-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "dsx kill r; sleep 1; echo GONE-$(ps | grep -c '[d]sx backend'); ls /run/dsx\r",
    ),
    ("GONE-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-hostile-virtio`: a hostile virtio-blk driver (`guests/virtio-hostile`,
/// carried in the Root VM's initramfs) as a child of the Root VM, on a 16 MiB file
/// served by a real `dsx backend`. The child runs its checks (descriptors outside its
/// RAM and in its MMIO window, looping chains, huge lengths, a doorbell storm, used
/// buffers never consumed, an available index far ahead, requests beyond the capacity
/// and malformed ones) and prints its summary; the parent then finds the backend still
/// running, its log sane (one `raising NEEDS_RESET` line per broken queue, one `was
/// reset by its driver` after each, no giving up) and its CPU time small despite the
/// storm, the file written only where the child wrote well (the pattern in sector 1,
/// nothing else not zero, its size unchanged), and after `dsx kill` no backend left,
/// every page back and nothing in the hypervisor's log.
const DSX_HOSTILE_VIRTIO: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "echo BEFORE-$(ps | grep -c '[d]sx backend'); \
         dd if=/dev/zero of=/tmp/h1 bs=1M count=16 2>/dev/null && \
         dsx run /usr/share/diosix/guests/virtio-hostile.elf --ram 16M --disk /tmp/h1 \
         --name h && dsx console h\r",
    ),
    // The summary line: `virtio-hostile: N passed, M failed`.
    (" passed, ", ""),
    (" failed", DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "P=$(cat /run/dsx/2.pid); echo ALIVE-$(kill -0 $P && cat /proc/$P/comm) \
         BACKENDS-$(ps | grep -c '[d]sx backend 2'); cat /run/dsx/2.log; \
         echo NEEDS-RESET-LINES-$(grep -c 'raising NEEDS_RESET' /run/dsx/2.log) \
         SERVING-AGAIN-$(grep -c 'was reset by its driver' /run/dsx/2.log) \
         GAVE-UP-$(grep -c 'giving up' /run/dsx/2.log); \
         C=$(awk '{print $14 + $15}' /proc/$(pgrep -P $P)/stat); \
         echo CPU-$C BACKEND-CPU-$([ $C -lt 200 ] && echo OK || echo HIGH)\r",
    ),
    ("BACKEND-CPU-", ""),
    (
        ROOT_PROMPT,
        "echo SIZE-$(wc -c </tmp/h1) NONZERO-$(tr -d '\\000' </tmp/h1 | wc -c) \
         SECTOR1-$(dd if=/tmp/h1 bs=512 skip=1 count=1 2>/dev/null | tr -d '\\000' | wc -c) \
         HEAD-$(dd if=/tmp/h1 bs=1 skip=512 count=4 2>/dev/null | od -An -tx1 | tr -d ' ')\r",
    ),
    ("HEAD-", ""),
    (
        ROOT_PROMPT,
        "dsx kill h; sleep 1; echo GONE-$(ps | grep -c '[d]sx backend'); ls /run/dsx; \
         echo LEFT-$(dsx list --json)\r",
    ),
    ("LEFT-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-dying`: deaths in the middle of disk requests. A child reads and writes
/// its disk without pause; the Root VM deletes the disk's file under it (the backend
/// keeps the open file: the child's disk stays whole, as a running program's file
/// does), then kills the child (a child killed mid-request): its backend ends and
/// the file goes with its last descriptor. A child that serves a disk to a grandchild reading and writing without pause
/// is killed (a parent that dies with its backend mid-request): the grandchild goes
/// with it. A new child with a copy of the first file gets it at once, no backend is
/// left, every page comes back and the hypervisor logs nothing amiss.
const DSX_DYING: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dd if=/dev/zero of=/tmp/d1 bs=1M count=32 2>/dev/null && \
         dsx run --ram 96M --disk /tmp/d1 --name busy && \
         { dsx run --ram 64M --disk /tmp/d1 --name twin; echo TWIN-$?; } && dsx console busy\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "(while :; do dd if=/dev/vda of=/dev/null bs=64k count=256 iflag=direct 2>/dev/null; \
         dd if=/dev/zero of=/dev/vda bs=64k count=64 oflag=direct 2>/dev/null; done) & \
         sleep 3; echo IO-$(awk '$3 == \"vda\" {print ($4 > 0 && $8 > 0) ? \"BOTH\" : \"NONE\"}' /proc/diskstats)\r",
    ),
    ("IO-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "cp /tmp/d1 /tmp/d2; rm /tmp/d1; sleep 2; W=$(pgrep -P $(cat /run/dsx/2.pid)); \
         echo HELD-DELETED-$(ls -l /proc/$W/fd | grep -c '/tmp/d1 (deleted)'); \
         dsx kill busy; sleep 1; echo KILLED-MID-$(ps | grep -c '[d]sx backend'); \
         dsx run --ram 96M --name p && \
         dsx quota p --ram 200M --vcpus 2 --descendants 1 --depth 1 && dsx console p\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "dd if=/dev/zero of=/tmp/g1 bs=1M count=8 2>/dev/null && \
         dsx run --ram 48M --disk /tmp/g1 --name g; echo GRUN-$?\r",
    ),
    ("GRUN-", ""),
    (
        GUEST_PROMPT,
        grandchild_run!(
            "(while :; do dd if=/dev/vda of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null; dd if=/dev/zero of=/dev/vda bs=64k count=16 oflag=direct 2>/dev/null; done) & sleep 2; echo GLOOP-$((40+2))",
            "GLOOP-42"
        ),
    ),
    ("GRAND-", ""),
    (GUEST_PROMPT, "sleep 1; echo PBACKENDS-$(ps | grep -c '[d]sx backend')\r"),
    ("PBACKENDS-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 3", ""),
    (
        ROOT_PROMPT,
        "dsx kill p; sleep 1; echo PARENT-GONE-$(dsx list --json); \
         dsx run --ram 96M --disk /tmp/d2 --name again && sleep 1 && \
         echo AGAIN-$(ps | grep -c '[d]sx backend') && dsx kill again; sleep 1; \
         echo LEFT-$(ps | grep -c '[d]sx backend')\r",
    ),
    ("LEFT-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-fork`: the Root VM forks itself; the clone (CID 2), reached with `dsx
/// console 2`, says it is the child, runs a busy loop on each of its 2 vCPUs, and `dsx
/// info` there is not the Root VM's. `dsx reboot 2`, then the clone's own `reboot -f`,
/// each put it back to its fork-time snapshot (a file it wrote to tmpfs is gone).
const DSX_FORK: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (ROOT_PROMPT, "dsx fork; echo FORKRC-$?\r"),
    ("FORKRC-", ""),
    (ROOT_PROMPT, "dsx list; dsx console 2\r"),
    ("this is the new child VM", ""),
    (
        PROMPT,
        "echo CLONE-$(nproc)-$(cat /sys/devices/system/cpu/online); dsx info\r",
    ),
    ("children", ""),
    (PROMPT, BUSY_CMD),
    ("BUSYCPUS-", ""),
    // A file in the clone's tmpfs (its RAM), gone once REBOOT puts the clone back to
    // its fork-time snapshot.
    (
        PROMPT,
        "touch /tmp/clone-was-here; [ -e /tmp/clone-was-here ]; echo MARKED-$?\r",
    ),
    ("MARKED-", ""),
    (PROMPT, DETACH),
    ("detached from CID 2", ""),
    (ROOT_PROMPT, "dsx reboot 2 && dsx console 2\r"),
    // The clone resumes where FORK left it: dsx in it returns from the fork again.
    ("this is the new child VM", "\r"),
    (
        PROMPT,
        "[ -e /tmp/clone-was-here ]; echo GONE-$?; reboot -f\r",
    ),
    // Its own SRST reboot does the same.
    ("this is the new child VM", "\r"),
    (PROMPT, "echo AGAIN-$(nproc)\r"),
    ("AGAIN-", ""),
    (PROMPT, DETACH),
    ("detached from CID 2", ""),
    (
        ROOT_PROMPT,
        "dsx info | head -n 1; dsx kill 2; echo PARENT-$(hostname)\r",
    ),
    ("PARENT-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-refusals`: bad sizes, unknown CIDs, a quota exceeded, and `--trusted`
/// asked by a child whose trust was dropped (with quota enough: the same request
/// without `--trusted` passes).
const DSX_REFUSALS: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "dsx run --ram 12X; echo SIZE-$?; dsx stop 7; echo STOP-$?; dsx kill 7; echo KILL-$?; \
         dsx run --ram 2G; echo HUGE-$?\r",
    ),
    ("HUGE-", ""),
    (
        ROOT_PROMPT,
        "dsx run --trusted --ram 64M --name t && \
         dsx quota 2 --ram 100M --vcpus 2 --descendants 1 --depth 1 && \
         dsx drop-trust 2 && dsx console 2\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "dsx info | head -n 1; dsx run --trusted --ram 16M --paused; echo TRUSTED-$?; \
         dsx run --ram 16M --paused; echo UNTRUSTED-$?\r",
    ),
    ("UNTRUSTED-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 2", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

/// `linux-dsx-load` (with a fresh disk): the guest Linux's kernel and initramfs copied
/// to the disk under names only the disk has. A load whose EXEC is refused (`--ram 1G`
/// beyond the clone's quota) leaves nothing running: its clone (CID 2) ends itself with
/// exit code 4 (DENIED). Then `dsx load` of them (looked up on the disk) with the
/// guest's command line, and the loaded guest (CID 3) logged in to through `dsx
/// console`: it is untrusted (`dsx info`), and with quota for a child (given by the
/// Root VM) it is refused a trusted child or a trusted clone of itself, but not an
/// untrusted child. `dsx reboot` starts it again from the image EXEC kept.
const DSX_LOAD: &[Step] = &[
    ("login:", "root\r"),
    (PROMPT, UPTIME_CMD),
    (
        ROOT_PROMPT,
        "ls /usr/share/diosix/guests; cd /var/lib/diosix && \
         cp /usr/share/diosix/guests/Image load-Image && \
         cp /usr/share/diosix/guests/initramfs.cpio.gz load-initrd.gz && sync && cd; \
         echo COPIED-$(ls /var/lib/diosix | grep -c '^load-')\r",
    ),
    ("COPIED-", ""),
    (
        ROOT_PROMPT,
        "dsx load load-Image --ram 1G; echo BADLOAD-$?; for i in $(seq 30); do \
         dsx events >> /tmp/ev; grep -q terminated /tmp/ev && break; sleep 1; done; \
         cat /tmp/ev; echo GONE-$(dsx list --json)\r",
    ),
    ("GONE-", ""),
    (
        ROOT_PROMPT,
        "dsx load load-Image --initrd load-initrd.gz \
         --cmdline 'console=hvc0 earlycon=sbi retain_initrd' --name loaded; echo LOAD-$?\r",
    ),
    ("LOAD-", ""),
    (
        ROOT_PROMPT,
        "dsx list; dsx quota 3 --ram 176M --vcpus 2 --descendants 1 --depth 1 && \
         dsx console 3\r",
    ),
    ("guest login:", "root\r"),
    (
        GUEST_PROMPT,
        "dsx info | head -n 1; dsx run --trusted --ram 16M --paused; echo TRUSTED-$?; \
         dsx fork --no-snapshot; echo FORK-$?; \
         dsx run --ram 16M --paused; echo UNTRUSTED-$?\r",
    ),
    ("UNTRUSTED-", ""),
    (GUEST_PROMPT, DETACH),
    ("detached from CID 3", ""),
    // REBOOT starts it again from the image EXEC kept.
    (ROOT_PROMPT, "dsx reboot 3; echo REBOOT-$?; sleep 2\r"),
    ("REBOOT-", ""),
    (
        ROOT_PROMPT,
        "dsx kill 3; dsx events; echo LEFT-$(dsx list --json)\r",
    ),
    ("LEFT-", ""),
    (ROOT_PROMPT, "poweroff\r"),
];

fn cases() -> Vec<Case> {
    let mut v = vec![
        case("sbi-tests-smp1", "sbi-tests", 1, 1, SBI_TESTS),
        case("sbi-tests-smp2", "sbi-tests", 2, 2, SBI_TESTS),
        case("sbi-tests-smp4", "sbi-tests", 4, 4, SBI_TESTS),
        // More vCPUs than host harts: HSM, IPIs and fences across descheduled vCPUs,
        // and steal time when two vCPUs share the hart.
        Case {
            cmdline: Some("shared-hart"),
            ..case("sbi-tests-4vcpu-smp1", "sbi-tests", 4, 1, SBI_TESTS)
        },
        // PMU counters under -icount on one host hart (QEMU then counts exactly the
        // hart's instructions): per vCPU while two share the hart; and with
        // Sscofpmf, which also leaves the hypervisor's work out.
        Case {
            cmdline: Some("shared-hart icount"),
            icount: true,
            ..case("sbi-tests-pmu-4vcpu-smp1", "sbi-tests", 4, 1, SBI_TESTS)
        },
        Case {
            cmdline: Some("shared-hart icount sscofpmf"),
            icount: true,
            cpu: Some("rv64,sscofpmf=on"),
            ..case("sbi-tests-pmu-sscofpmf-smp1", "sbi-tests", 2, 1, SBI_TESTS)
        },
        // With AIA's CSRs too: counter-overflow interrupts reach VS-mode through
        // hvien and hvip (and mvien, for QEMU's reads of a VS-mode sip).
        Case {
            cmdline: Some("shared-hart icount sscofpmf"),
            icount: true,
            cpu: Some("rv64,sscofpmf=on,ssaia=on,smaia=on"),
            ..case("sbi-tests-pmu-ssaia-smp1", "sbi-tests", 2, 1, SBI_TESTS)
        },
        Case {
            cmdline: Some("legacy-shutdown"),
            ..case(
                "sbi-tests-legacy-shutdown",
                "sbi-tests",
                1,
                1,
                &[
                    Expect::Summary("sbi-tests"),
                    Expect::Text("sbi-tests: legacy shutdown"),
                ],
            )
        },
        case("sbi-testing-smp1", "sbi-testing", 1, 1, SBI_TESTING),
        case("sbi-testing-smp2", "sbi-testing", 2, 2, SBI_TESTING),
        case("sbi-testing-smp4", "sbi-testing", 4, 4, SBI_TESTING),
        case("sbi-testing-smp8", "sbi-testing", 8, 8, SBI_TESTING),
        case(
            "smp-8vcpu-smp2",
            "smp",
            8,
            2,
            &[Expect::Text("smp: 8 harts, all rounds ok")],
        ),
        case(
            "smp-4vcpu-smp1",
            "smp",
            4,
            1,
            &[Expect::Text("smp: 4 harts, all rounds ok")],
        ),
        case(
            "smp-2vcpu-smp2",
            "smp",
            2,
            2,
            &[Expect::Text("smp: 2 harts, all rounds ok")],
        ),
        Case {
            interact: &[("type to echo", "hello\r"), ("hello", "q")],
            ..case(
                "demo-echo",
                "demo",
                2,
                2,
                &[
                    Expect::Text("Diosix demo guest: hello from hart"),
                    Expect::Text("demo: 2 of 2 vCPUs said hello"),
                    Expect::Text("demo: bye"),
                ],
            )
        },
        // Small Root VM RAM: the guest must still see (and report) what it was given.
        Case {
            ram_mib: Some(64),
            interact: &[("type to echo", "q")],
            ..case(
                "demo-64mib",
                "demo",
                1,
                1,
                &[Expect::Text("demo: 1 of 1 vCPUs said hello")],
            )
        },
    ];
    v.extend([
        linux_case(
            "linux-smp2",
            2,
            1024,
            linux_expect!(2, "0-1", 131072, [1, 2]),
            LINUX_SESSION,
        ),
        linux_case(
            "linux-smp4",
            4,
            512,
            linux_expect!(4, "0-3", 65536, [1, 2, 3, 4]),
            LINUX_SESSION,
        ),
        // `reboot` ends the Root VM too, which restarts the host (QEMU exits under
        // `-no-reboot`).
        linux_case(
            "linux-reboot",
            2,
            1024,
            &[
                Expect::Text("NPROC-2"),
                Expect::Text("reboot: Restarting system"),
                Expect::Text("Reboot: the Root VM has ended"),
            ],
            &[
                ("login:", "root\r"),
                (PROMPT, UPTIME_CMD),
                (PROMPT, "echo NPROC-$(nproc)\r"),
                (PROMPT, "reboot\r"),
            ],
        ),
    ]);
    // The PMP fallback (no H extension): the Linux Root VM in S-mode behind PMP, its
    // devices, a Linux child started with `dsx run`, and FORK refused as documented.
    v.push(Case {
        cpu: Some(NO_H),
        ..linux_case(
            "linux-pmp-smp2",
            2,
            1024,
            &[
                Expect::Text("isolation: PMP (no H extension"),
                Expect::Text("riscv-plic: plic@c000000"),
                Expect::Text("goldfish_rtc 101000.rtc: registered as rtc0"),
                Expect::Text("NPROC-2 FEATURES-pmp-fallback"),
                Expect::Text("its harts have no H extension"),
                Expect::Text("FORK-REFUSED"),
                Expect::Text("HX-guest-42-2"),
                Expect::Text("CID 2 terminated"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            pmp_steps(),
        )
    });
    // A second machine model: QEMU's HiFive Unleashed (an S-mode-less E51 monitor hart,
    // parked, and four U54 harts without H or a `time` CSR; SiFive UARTs; the memory
    // map, PLIC and CLINT from its device tree).
    // The board restarts through its `gpio-restart` line (GPIO pin 10, active low):
    // QEMU exits under `-no-reboot` once the Root VM has ended.
    v.push(Case {
        machine: Some("sifive_u"),
        ..linux_case(
            "linux-sifive-u",
            5,
            1024,
            &[
                Expect::Text("booting on hart"),
                Expect::Text(": 4 hart(s), 1024 MiB RAM, timebase 1000000 Hz"),
                Expect::Text("isolation: PMP (no H extension"),
                Expect::Text("riscv-plic: plic@c000000"),
                Expect::Text("NPROC-4 FEATURES-pmp-fallback"),
                Expect::Text("TIME-OK"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            &[
                ("login:", "root\r"),
                (PROMPT, UPTIME_CMD),
                (
                    ROOT_PROMPT,
                    "echo NPROC-$(nproc) FEATURES-$(dsx info --host | grep -o pmp-fallback)\r",
                ),
                // rdtime is emulated on these harts: time must move forward.
                (
                    ROOT_PROMPT,
                    "a=$(cut -d. -f1 /proc/uptime); sleep 2; b=$(cut -d. -f1 /proc/uptime); \
                     [ $b -gt $a ] && echo TIME-OK\r",
                ),
                (ROOT_PROMPT, "poweroff\r"),
            ],
        )
    });
    // Steal time (SBI STA) as Linux reports it, with two VMs on one host hart.
    v.push(linux_case(
        "linux-steal-smp1",
        1,
        512,
        &[
            Expect::Text("ROOT-STEAL-OK"),
            Expect::Text("CHILD-STEAL-OK"),
            Expect::Text("LONE-STEAL-OK"),
            Expect::Text("asked for Shutdown: the Root VM has ended"),
        ],
        steal_steps(),
    ));
    // Performance counters (SBI PMU) as Linux's perf_event_open uses them.
    v.push(Case {
        icount: true,
        ..linux_case(
            "linux-perf-smp1",
            1,
            512,
            &[
                Expect::Text("PERF-ALONE-OK"),
                Expect::Text("PERF-SHARED-OK"),
                Expect::Text("PERF-AFTER-OK"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            perf_steps(),
        )
    });
    // `dsx` in the Root VM's shell and in guests (docs/dsx.md): the guest Linux that
    // `dsx run` starts without IMAGE, nesting, fork and refusals.
    v.extend([
        linux_case(
            "linux-dsx-seed",
            4,
            512,
            &[
                Expect::Text("K/65536K available"),
                Expect::Text("RUN3-0 LIVE-3"),
                Expect::Text("Diosix guest VM"),
                Expect::Text("HX-guest-42-2"),
                Expect::Text("HX-guest-42-3"),
                Expect::Text("HX-guest-42-4"),
                Expect::Text("CID 2 is already named `g1`"),
                Expect::Text("DUP-1"),
                Expect::Text("CID 4 terminated"),
                Expect::Text("SAME-yes LEFT-2"),
                Expect::Text("EV: CID 4 (g3) terminated (exit code 0)"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            dsx_seed_steps(),
        ),
        linux_case(
            "linux-dsx-disk",
            2,
            1024,
            &[
                Expect::Text("MKFS-0"),
                Expect::Text("PARENT-SEES-1"),
                Expect::Text("RESTARTED-1-1"),
                Expect::Text("DISK-READ-persisted-on-the-disk"),
                Expect::Text("GRUN-0"),
                Expect::Text("GRAND-GX-deep-42"),
                Expect::Text("GBACKENDS-0"),
                Expect::Text("UMOUNT-0"),
                Expect::Text("BEYOND-1"),
                Expect::Text("WITHIN-0"),
                Expect::Text("GONE-0"),
                Expect::FreePagesRestored,
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_DISK,
        ),
        linux_case(
            "linux-dsx-example",
            2,
            1024,
            &[
                Expect::Text("hello, 42 from web's own disk"),
                Expect::Text("blk:/root/web.img,net:dsxtap2(open)"),
                Expect::Text("CID 3 terminated"),
                Expect::Text("CID 2 terminated"),
                Expect::FreePagesRestored,
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_EXAMPLE,
        ),
        linux_case(
            "linux-dsx-net",
            2,
            1024,
            &[
                Expect::Text("B-UP-0"),
                Expect::Text("WGET-served-by-the-parent"),
                Expect::Text("SIBLING-1"),
                Expect::Text("TAPS-2"),
                Expect::Text("TAPS-AFTER-0"),
                Expect::Text("OPEN-PEERS-0"),
                Expect::Text("GONE-0-0"),
                Expect::FreePagesRestored,
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_NET,
        ),
        linux_case(
            "linux-dsx-rng",
            2,
            1024,
            &[
                Expect::Text("HWRNG-DRIVER-virtio_rng.0"),
                Expect::Text("HWRNG-BYTES-512"),
                Expect::Text("HWRNG-RANDOM-YES"),
                Expect::Text("\"devices\":[\"rng\"]"),
                Expect::Text("BACKENDS-2"),
                Expect::Text("REBOOTED-DRIVER-virtio_rng.0"),
                Expect::Text("REBOOTED-BYTES-512"),
                Expect::Text("REBOOTED-RANDOM-YES"),
                Expect::Text("CID 2 terminated"),
                Expect::Text("GONE-0"),
                Expect::FreePagesRestored,
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_RNG,
        ),
        linux_case(
            "linux-dsx-dying",
            2,
            1024,
            &[
                // `run` returns once the backend serves, so the file is locked by
                // then: the same file at once for another child is refused.
                Expect::Text("in use by another dsx backend"),
                Expect::Text("TWIN-1"),
                Expect::Text("IO-BOTH"),
                Expect::Text("CID 2 terminated"),
                Expect::Text("HELD-DELETED-1"),
                Expect::Text("KILLED-MID-0"),
                Expect::Text("GRUN-0"),
                Expect::Text("GRAND-GLOOP-42"),
                Expect::Text("PBACKENDS-2"),
                Expect::Text("CID 3 terminated"),
                Expect::Text("PARENT-GONE-[]"),
                Expect::Text("AGAIN-2"),
                Expect::Text("LEFT-0"),
                Expect::FreePagesRestored,
                Expect::HvLogClean { allowed: &[] },
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_DYING,
        ),
        linux_case(
            "linux-dsx-hostile-virtio",
            2,
            1024,
            &[
                Expect::Text("BEFORE-0"),
                Expect::Summary("virtio-hostile"),
                // Every check ran (guests/virtio-hostile: CHECKS).
                Expect::Text("virtio-hostile: 23 passed, 0 failed"),
                Expect::Text("ALIVE-dsx-backend BACKENDS-2"),
                // One per broken queue (the guest's NEEDS_RESET_CHECKS).
                Expect::Text("NEEDS-RESET-LINES-14 SERVING-AGAIN-14 GAVE-UP-0"),
                // Its CPU time (user + system, in 10 ms ticks) over the whole run,
                // the doorbell storm included: 8 without the storm, 18 with its
                // 100000 doorbells (58 before the backend paused during storms:
                // backend::Backoff); woken once per doorbell it would spend seconds.
                Expect::Text("BACKEND-CPU-OK"),
                Expect::Text("SIZE-16777216 NONZERO-512 SECTOR1-512 HEAD-01020304"),
                Expect::Text("CID 2 terminated"),
                Expect::Text("GONE-0"),
                Expect::Text("LEFT-[]"),
                Expect::FreePagesRestored,
                // The hypervisor has nothing to complain about: the child's abuse is
                // the backend's to answer.
                Expect::HvLogClean { allowed: &[] },
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_HOSTILE_VIRTIO,
        ),
        linux_case(
            "linux-dsx-nested",
            2,
            1024,
            &[
                Expect::Text("vCPUs 1 (uses 1), priority up to 128, depth 0, descendants 0"),
                // (What a 128 MiB child uses depends on the guest image's size.)
                Expect::Text("CID 2's quota: RAM 184 MiB (uses 13"),
                Expect::Text("MiB), vCPUs 2 (uses 1), priority up to 128, depth 1, descendants 1"),
                Expect::Text("dsx: denied: this VM's quota"),
                Expect::Text("BIG-1"),
                Expect::Text("GK-0"),
                Expect::Text("vCPUs        2 used of 2 quota (1 own, 2 reserved)"),
                Expect::Text("GRAND-GH-guest-42"),
                Expect::Text("KIDS-\"child_count\":1"),
                Expect::Text("FLOOD-IRQS-1 MSG-EVENTS-16"),
                Expect::Text("52 49 53 43 56"),
                Expect::Text("RISCV"),
                Expect::Text("wrote 4 bytes into CID 2 at"),
                Expect::Text("44 53 4b 21"),
                Expect::Text("DSK!"),
                Expect::Text("dsx: that range is not all RAM of CID 2"),
                Expect::Text("PEEK-OUTSIDE-1"),
                Expect::Text("(VMID 3): memory released"),
                Expect::Text("(VMID 2): memory released"),
                Expect::Text("CID 2 terminated"),
                Expect::Text("AFTER-[]"),
                Expect::Text("EVLINE-events on irq EVIRQ-SEEN"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_NESTED,
        ),
        linux_case(
            "linux-dsx-fork",
            2,
            1024,
            &[
                Expect::Text("forked: the child is CID 2"),
                Expect::Text("FORKRC-0"),
                Expect::Text("this is the new child VM (its parent is CID 0)"),
                Expect::Text("CLONE-2-0-1"),
                Expect::Text("this VM (CID 1): trusted, running"),
                Expect::Text("LOOP-1-30000"),
                Expect::Text("LOOP-2-30000"),
                Expect::Text("BUSYCPUS-2"),
                Expect::Text("MARKED-0"),
                Expect::Text("GONE-1"),
                Expect::Text("asked for ColdReboot: putting the VM back"),
                Expect::Text("AGAIN-2"),
                Expect::Text("this VM (CID 1): Root VM, trusted, running"),
                Expect::Text("CID 2 terminated"),
                Expect::Text("PARENT-diosix"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_FORK,
        ),
        linux_case(
            "linux-dsx-refusals",
            2,
            1024,
            &[
                Expect::Text("dsx run: `12X` is not a size (use K, M, G or T)"),
                Expect::Text("SIZE-2"),
                Expect::Text("dsx: CID 7 is not a child of this VM"),
                Expect::Text("STOP-1"),
                Expect::Text("KILL-1"),
                Expect::Text("dsx: denied: this VM's quota (RAM, vCPUs, depth or descendants), priority ceiling or trust does not allow it; see `dsx info`"),
                Expect::Text("HUGE-1"),
                Expect::Text("CID 2 no longer has hardware trust"),
                Expect::Text("this VM (CID 1): untrusted, running"),
                Expect::Text("TRUSTED-1"),
                Expect::Text("started CID 2 (paused)"),
                Expect::Text("UNTRUSTED-0"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_REFUSALS,
        ),
    ]);
    // The host's devices in the Root VM: a disk that keeps its data across a fresh
    // QEMU run, DHCP, and a page the host fetches through the forwarded port.
    v.push(Case {
        devices: Some(DeviceCase {
            disk_mib: 64,
            net: true,
            rng: true,
            second_boot: Some((devtests::second_session(), devtests::second_expect())),
            same_marker: Some("SUM"),
            outside: None,
            fetch: (0, None),
        }),
        ..linux_case(
            "linux-devices",
            2,
            1024,
            devtests::first_expect(),
            devtests::first_session(),
        )
    });
    // A child's service reached from the host: QEMU forwards a host port to the Root
    // VM's 8081, which the child's backend relays to the child's port 80.
    v.push(Case {
        devices: Some(DeviceCase {
            disk_mib: 16,
            net: true,
            rng: false,
            second_boot: None,
            same_marker: None,
            outside: None,
            fetch: (8081, Some("hello, 42 from a child")),
        }),
        ..linux_case(
            "linux-dsx-forward",
            2,
            1024,
            &[
                Expect::Text("SERVING-0"),
                Expect::Text("LOCAL-hello, 42 from a child"),
                Expect::Text("GONE-0"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_FORWARD,
        )
    });
    // NAT to the Root VM's uplink, and a grandchild's network behind its parent's.
    v.push(Case {
        devices: Some(DeviceCase {
            disk_mib: 16,
            net: true,
            rng: false,
            second_boot: None,
            same_marker: None,
            fetch: (0, None),
            outside: Some((OUTSIDE_PAGE, 2)),
        }),
        timeout_s: 360,
        ..linux_case(
            "linux-dsx-nat",
            2,
            1024,
            &[
                Expect::Text("OUT-the-outside-world"),
                Expect::Text("GRUN-0"),
                Expect::Text("GADDR-seen"),
                Expect::Text("GRAND-GX-served-by-the-child-the-outside-world"),
                Expect::Text("CHILD-TO-GRANDCHILD-grandchild-page"),
                Expect::Text("ROOT-TO-GRANDCHILD-none"),
                Expect::Text("GBACKENDS-0-0"),
                Expect::Text("GONE-0-0"),
                Expect::FreePagesRestored,
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_NAT,
        )
    });
    // DMA and FORK: the Root VM forks while its disk writes into its pages.
    v.push(Case {
        devices: Some(DeviceCase {
            disk_mib: 64,
            net: false,
            rng: false,
            second_boot: None,
            same_marker: None,
            outside: None,
            fetch: (0, None),
        }),
        ..linux_case(
            "linux-fork-io",
            2,
            1024,
            devtests::FORK_IO_EXPECT,
            devtests::fork_io_session(),
        )
    });
    // The least-privilege loader: `dsx load` of an image on the disk into an untrusted
    // clone of the Root VM (EXEC), logged in to and refused what needs trust.
    v.push(Case {
        devices: Some(DeviceCase {
            disk_mib: 64,
            net: false,
            rng: false,
            second_boot: None,
            same_marker: None,
            outside: None,
            fetch: (0, None),
        }),
        timeout_s: 360,
        ..linux_case(
            "linux-dsx-load",
            2,
            1024,
            &[
                Expect::Text("diosix: /dev/vda mounted at /var/lib/diosix"),
                Expect::Text("COPIED-2"),
                Expect::Text("loading load-Image into CID 2 (it drops its hardware trust first)"),
                Expect::Text("BADLOAD-0"),
                Expect::Text("CID 2 terminated (exit code 4)"),
                Expect::Text("GONE-[]"),
                Expect::Text("loading load-Image into CID 3 (it drops its hardware trust first)"),
                Expect::Text("LOAD-0"),
                Expect::Text("KiB image in its memory"),
                Expect::Text("loaded"),
                Expect::Text("this VM (CID 1): untrusted, running"),
                Expect::Text("dsx: denied: this VM's quota (RAM, vCPUs, depth or descendants), priority ceiling or trust does not allow it; see `dsx info`"),
                Expect::Text("TRUSTED-1"),
                Expect::Text("FORK-1"),
                Expect::Text("started CID 2 (paused)"),
                Expect::Text("UNTRUSTED-0"),
                Expect::Text("CID 3 rebooted"),
                Expect::Text("REBOOT-0"),
                Expect::Text("CID 3 terminated"),
                Expect::Text("LEFT-[]"),
                Expect::Text("asked for Shutdown: the Root VM has ended"),
            ],
            DSX_LOAD,
        )
    });
    // GDB on the hypervisor and the Root VM's Linux at once (docs/debugging.md): a
    // breakpoint in each, both hit, their backtraces and the vCPU on each hart checked.
    v.push(Case {
        kind: Kind::Gdb,
        mem_mib: 1024,
        timeout_s: 60,
        ..case("gdb-linux-smp2", LINUX, 2, 2, &[])
    });
    // The soak test, short (`cargo xtask soak` runs it for 10 minutes): random dsx
    // operations on Linux children and grandchildren (docs/dsx.md, "The soak test").
    v.push(crate::soak::soak_case(
        "linux-soak-short",
        crate::soak::SHORT_SECONDS,
        1,
        2,
    ));
    // Guest time to login in instructions: deterministic, whatever the host's load.
    // QEMU is stopped right after the uptime is read: under icount the idle Root VM's
    // seconds (busybox's `poweroff` waits 2 s) cost a minute of wall time, and the
    // cases above already check `poweroff`.
    for (name, smp, mem_mib, expect) in [
        (
            "linux-login-icount-smp2",
            2,
            1024,
            &[Expect::Text("NPROC-2 END-42")] as &'static [Expect],
        ),
        (
            "linux-login-icount-smp4",
            4,
            512,
            &[Expect::Text("NPROC-4 END-42")],
        ),
    ] {
        v.push(Case {
            icount: true,
            stop_at: Some("END-42"),
            ..linux_case(
                name,
                smp,
                mem_mib,
                expect,
                &[
                    ("login:", "root\r"),
                    (
                        PROMPT,
                        "echo UPTIME-$(cut -d' ' -f1 /proc/uptime) NPROC-$(nproc) END-$((6*7))\r",
                    ),
                ],
            )
        });
    }
    // Bad input: the image builder must refuse a Root VM that is not a kernel image.
    v.push(Case {
        kind: Kind::ImageRejected("Cargo.toml"),
        ..case("bad-rootvm-not-elf", "demo", 1, 1, &[])
    });
    v.push(Case {
        kind: Kind::ImageRejected("target/does-not-exist.elf"),
        ..case("bad-rootvm-missing", "demo", 1, 1, &[])
    });
    // The Diosix SBI extension end to end: the Root VM (guests/vmtree) spawns children
    // (guests/vmchild), talks to them, stops, reboots, forks and kills them.
    let vmtree: &'static [Expect] = &[Expect::Summary("vmtree"), Expect::FreePagesRestored];
    for (name, vcpus, smp) in [("vmtree-smp1", 1, 1), ("vmtree-smp2", 2, 2)] {
        v.push(case(name, "vmtree", vcpus, smp, vmtree));
    }
    // The same test guests on harts without H (issue 13): guests in S-mode behind PMP,
    // each VM's RAM a block of host memory at GPA = HPA. The guests are
    // position-independent and learn where their RAM (and their children's) is from
    // the device tree and GET_CHILD_INFO; vmtree checks FORK is refused there.
    let pmp: &'static [Expect] = &[Expect::Text("isolation: PMP (no H extension")];
    for (name, guest, vcpus, smp, expect) in [
        ("pmp-sbi-tests-smp2", "sbi-tests", 2, 2, SBI_TESTS),
        ("pmp-sbi-tests-4vcpu-smp1", "sbi-tests", 4, 1, SBI_TESTS),
        ("pmp-sbi-testing-smp1", "sbi-testing", 1, 1, SBI_TESTING),
        ("pmp-sbi-testing-smp2", "sbi-testing", 2, 2, SBI_TESTING),
        ("pmp-sbi-testing-smp4", "sbi-testing", 4, 4, SBI_TESTING),
        ("pmp-sbi-testing-smp8", "sbi-testing", 8, 8, SBI_TESTING),
        ("pmp-vmtree-smp2", "vmtree", 2, 2, vmtree),
        // The attacks an S-mode guest behind PMP must not get away with, then EXEC
        // against kill from every vCPU (more vCPUs than harts in the second).
        ("pmp-hostile-smp2", "hostile", 2, 2, PMP_HOSTILE),
        ("pmp-hostile-4vcpu-smp2", "hostile", 4, 2, PMP_HOSTILE),
    ] {
        v.push(Case {
            cpu: Some(NO_H),
            // sbi-tests checks steal time against this (vCPUs sharing a hart).
            cmdline: (guest == "sbi-tests" && vcpus > smp).then_some("shared-hart"),
            ..case(name, guest, vcpus, smp, [expect, pmp].concat().leak())
        });
    }
    // PMU behind PMP with Sscofpmf: exact counts per vCPU on a shared hart (as above)
    // and counter-overflow interrupts delivered to the guest.
    v.push(Case {
        cpu: Some("rv64,h=false,sscofpmf=on"),
        cmdline: Some("shared-hart icount sscofpmf"),
        icount: true,
        ..case(
            "pmp-sbi-tests-pmu-smp1",
            "sbi-tests",
            2,
            1,
            [SBI_TESTS, pmp].concat().leak(),
        )
    });
    // The hostile-guest suite (guests/hostile, issue 9): every vCPU of a 32 MiB Root VM
    // races and fuzzes the Diosix extension against children of its own, with a
    // bystander child VM that must keep making progress; then regression probes for
    // the five confirmed defects. Each probe also runs alone in a case of its own, so a
    // hang or a host crash names its defect (the guest announces every risky call).
    // The heap tolerance: a few KiB the frame allocator's free lists keep after churn.
    let hostile: &'static [Expect] = &[
        Expect::Summary("hostile"),
        Expect::FreePagesRestored,
        Expect::HeapRestoredAfter {
            after: "hostile: heap mark start",
            tolerance_kib: 16,
        },
    ];
    for (name, vcpus, smp, cmdline) in [
        ("hostile-smp2", 2, 2, None),
        ("hostile-smp4", 4, 4, None),
        ("hostile-4vcpu-smp2", 4, 2, None),
        ("hostile-probe-reboot", 2, 2, Some("probe=reboot")),
        ("hostile-probe-phnum", 4, 4, Some("probe=phnum")),
        ("hostile-probe-dbcn", 2, 2, Some("probe=dbcn")),
        ("hostile-probe-fork", 4, 4, Some("probe=fork")),
        ("hostile-probe-payload", 2, 2, Some("probe=payload")),
    ] {
        v.push(Case {
            ram_mib: Some(32),
            cmdline,
            timeout_s: if cmdline.is_some() { 60 } else { 90 },
            ..case(name, "hostile", vcpus, smp, hostile)
        });
    }
    for c in v.iter_mut() {
        if let Some(t) = std::env::var("DIOSIX_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            c.timeout_s = t;
        }
    }
    v
}

/// Host tests and every lint.
fn host_checks() -> Result<()> {
    cargo(&["test"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["fmt", "--all", "--check"])?;
    let mut args = vec![
        "clippy",
        "--release",
        "--target",
        GUEST_TARGET,
        "-p",
        "diosix",
        "-p",
        "diosix-riscv",
        "-p",
        "diosix-guest-rt",
    ];
    let pkgs: Vec<String> = GUESTS.iter().map(|g| guests::package(g)).collect();
    for p in &pkgs {
        args.push("-p");
        args.push(p);
    }
    args.extend(["--", "-D", "warnings"]);
    cargo(&args)?;
    // Short fuzzing run of every parser a guest or the firmware feeds (docs/fuzzing.md).
    crate::fuzz::ci()
}

/// Checks the output of a boot against `expect`; returns the reasons it failed.
fn judge_expect(expect: &[Expect], out: &str, opensbi: bool) -> Vec<String> {
    let mut why = Vec::new();
    for e in expect {
        match *e {
            Expect::Text(t) => {
                if !out.contains(t) {
                    why.push(format!("missing `{t}`"));
                }
            }
            Expect::Either { diosix, opensbi: o } => {
                let t = if opensbi { o } else { diosix };
                if !out.contains(t) {
                    why.push(format!("missing `{t}`"));
                }
            }
            Expect::Summary(tool) => match summary(out, tool) {
                Some((p, 0)) if p > 0 => {}
                Some((p, f)) => why.push(format!("{tool}: {p} passed, {f} failed")),
                None => why.push(format!("no `{tool}: N passed, M failed` line")),
            },
            Expect::FreePagesRestored => match free_pages(out).as_slice() {
                [first, .., last] if first == last => {}
                [first, .., last] => why.push(format!(
                    "host free pages {last} after teardown, {first} at start: pages leaked"
                )),
                _ => why.push("fewer than two `host free pages` lines".into()),
            },
            Expect::HeapRestoredAfter {
                after,
                tolerance_kib,
            } => match heap_after(out, after).as_slice() {
                [first, .., last] if *last <= first + tolerance_kib => {}
                [first, .., last] => why.push(format!(
                    "hypervisor heap in use {last} KiB at the end, {first} KiB after `{after}`: \
                     more than {tolerance_kib} KiB kept"
                )),
                _ => why.push(format!(
                    "fewer than two `hypervisor heap in use` lines after `{after}`"
                )),
            },
            Expect::HeapRestored { tolerance_kib } => match heap_kib(out).as_slice() {
                [first, .., last] if *last <= first + tolerance_kib => {}
                [first, .., last] => why.push(format!(
                    "hypervisor heap {last} KiB after teardown, {first} KiB at the first \
                     termination: more than {tolerance_kib} KiB kept"
                )),
                _ => why.push("fewer than two `hypervisor heap in use` lines".into()),
            },
            Expect::HvLogClean { allowed } => {
                for w in hv_warnings(out) {
                    if w.starts_with("[diosix ERROR") || !allowed.iter().any(|a| w.contains(a)) {
                        why.push(format!("hypervisor log `{w}`"));
                    }
                }
            }
        }
    }
    for line in out.lines() {
        if line.trim_start().starts_with("FAIL") || FORBIDDEN.iter().any(|f| line.contains(f)) {
            why.push(format!("forbidden line `{}`", line.trim()));
        }
    }
    why
}

/// Parses the last `<tool>: N passed, M failed` line.
fn summary(out: &str, tool: &str) -> Option<(u32, u32)> {
    let prefix = format!("{tool}: ");
    out.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix(prefix.as_str())?;
        let (p, rest) = rest.split_once(" passed, ")?;
        let f = rest.strip_suffix(" failed")?;
        Some((p.parse().ok()?, f.parse().ok()?))
    })
}

/// Builds (once) the guests the selected cases need; for the Linux cases, the whole
/// hypervisor image with the Linux Root VM (kernel and initramfs come from the cache
/// when built before, see `docs/rootvm.md`).
pub(crate) fn build_guests(cases: &[Case]) -> Result<HashMap<&'static str, PathBuf>> {
    let mut elfs = HashMap::new();
    for c in cases {
        if elfs.contains_key(c.guest) {
            continue;
        }
        let elf = if matches!(c.kind, Kind::Linux | Kind::Gdb) {
            let start = Instant::now();
            let image = build::build_image(&ImageOptions {
                root_vm: RootVm::Linux,
                vcpus: None,
                ram_mib: None,
                cmdline: None,
                out: workspace_root()
                    .join("target")
                    .join("test-images")
                    .join("linux.elf"),
            })
            .map_err(|e| format!("building the Linux Root VM image: {e}"))?;
            println!(
                "linux image: {} ({:.1} s)",
                image.display(),
                start.elapsed().as_secs_f64()
            );
            image
        } else {
            guests::build_guest(c.guest)?
        };
        elfs.insert(c.guest, elf);
    }
    Ok(elfs)
}

/// The first `<name>-<value>` marker in `out` (`value`: up to the end of the word).
fn marker<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("{name}-");
    out.match_indices(pat.as_str()).find_map(|(at, _)| {
        let rest = &out[at + pat.len()..];
        let end = rest
            .find(|ch: char| ch.is_whitespace())
            .unwrap_or(rest.len());
        let value = &rest[..end];
        // Skip the echo of the command itself (`UPTIME-$(...)`).
        (!value.is_empty() && !value.starts_with('$')).then_some(value)
    })
}

/// The timestamp of the last kernel line (`[    0.828843] ...`) before `before`.
fn last_printk(out: &str, before: &str) -> Option<f64> {
    let end = out.find(before)?;
    out[..end].lines().rev().find_map(|l| {
        let rest = l.trim_start().strip_prefix('[')?;
        let (secs, _) = rest.split_once(']')?;
        secs.trim().parse().ok()
    })
}

/// The time-to-login line of a Linux case: wall time from QEMU's start to `login:`,
/// the guest's `/proc/uptime` just after login (its clock starts with the kernel), and
/// the kernel's last timestamp before `login:`.
fn login_report(c: &Case, out: &qemu::QemuOutput) -> String {
    let wall = out
        .matched
        .first()
        .map_or("?".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
    let guest = marker(&out.output, "UPTIME").unwrap_or("?");
    let kernel = last_printk(&out.output, "login:").map_or("?".to_string(), |t| format!("{t:.2}"));
    let clock = if c.icount {
        "icount: 1 instruction = 1 ns"
    } else {
        "real-time clock"
    };
    format!(
        "{}: login after {wall} s wall, {guest} s guest ({clock}; kernel's last line before login at {kernel} s)",
        c.name
    )
}

/// Runs one case; `Ok(note)` on pass (a line to print, for the Linux cases' login
/// times), `Err(reason)` on failure.
pub(crate) fn run_case(c: &Case, elf: &std::path::Path, opensbi: bool) -> Result<Option<String>> {
    run_case_with_gdb(c, elf, opensbi, None)
}

/// [`run_case`], with QEMU halted at reset and its GDB stub `gdb` waiting for
/// `cargo xtask gdb` when given (`cargo xtask test --gdb CASE`).
fn run_case_with_gdb(
    c: &Case,
    elf: &std::path::Path,
    opensbi: bool,
    gdb: Option<&crate::gdb::Stub>,
) -> Result<Option<String>> {
    if let Kind::Gdb = c.kind {
        if gdb.is_some() {
            return Err(format!("{} runs GDB itself: it takes no --gdb", c.name));
        }
        let timeout = Duration::from_secs(c.timeout_s);
        return crate::gdb::run_case(c.name, elf, c.smp, c.mem_mib, timeout).map(Some);
    }
    let images = workspace_root().join("target").join("test-images");
    if let Kind::ImageRejected(file) = c.kind {
        if gdb.is_some() {
            return Err(format!("{} boots no image to debug", c.name));
        }
        let opts = ImageOptions {
            root_vm: RootVm::File(workspace_root().join(file)),
            vcpus: Some(c.vcpus),
            ram_mib: c.ram_mib,
            cmdline: None,
            out: images.join(format!("{}.elf", c.name)),
        };
        return match build::build_image(&opts) {
            // Refused up front, or...
            Err(e) if e != "not yet" => Ok(None),
            Err(_) => Err("build_image is not implemented yet".into()),
            // ...refused at boot: the hypervisor must report an error and stop QEMU
            // rather than hang or run garbage.
            Ok(image) => {
                let mut q = QemuOptions::new(c.name, image);
                q.timeout = Duration::from_secs(30);
                let out = qemu::run(&q)?;
                if out.output.contains("ERROR") {
                    Ok(None)
                } else {
                    Err(format!(
                        "booted {file} without an ERROR line (log {})",
                        out.log.display()
                    ))
                }
            }
        };
    }
    let mut q = if opensbi {
        let mut q = QemuOptions::new(c.name, elf.to_path_buf());
        q.bios = Bios::Default;
        q.smp = c.vcpus;
        q.mem_mib = c.ram_mib.unwrap_or(128);
        q.append = c.cmdline.map(str::to_string);
        q
    } else if matches!(c.kind, Kind::Linux) {
        // `elf` is already the whole image, shared by every Linux case.
        let mut q = QemuOptions::new(c.name, elf.to_path_buf());
        q.smp = c.smp;
        q.mem_mib = c.mem_mib;
        q
    } else {
        std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
        let image = build::build_image(&ImageOptions {
            root_vm: RootVm::File(elf.to_path_buf()),
            vcpus: Some(c.vcpus),
            ram_mib: c.ram_mib,
            cmdline: c.cmdline.map(str::to_string),
            out: images.join(format!("{}.elf", c.name)),
        })
        .map_err(|e| format!("build_image: {e}"))?;
        let mut q = QemuOptions::new(c.name, image);
        q.smp = c.smp;
        q.mem_mib = c.mem_mib;
        q
    };
    q.icount = c.icount;
    if let Some(cpu) = c.cpu {
        q.extra.extend(["-cpu".to_string(), cpu.to_string()]);
    }
    if let Some(m) = c.machine {
        q.machine = m.to_string();
    }
    q.stop_at = c.stop_at.map(str::to_string);
    q.timeout = Duration::from_secs(c.timeout_s);
    // Kept until QEMU has ended: `cargo xtask gdb` attaches to the stub it names.
    let _gdb_session = match gdb {
        Some(stub) => {
            q.extra.extend(stub.qemu_args());
            // The run waits for the debugger: no case's timeout fits.
            q.timeout = crate::gdb::DEBUG_SESSION_TIMEOUT;
            Some(crate::gdb::announce(stub, &q.kernel)?)
        }
        None => None,
    };
    q.interact = c
        .interact
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    if let Some(d) = &c.devices {
        let run = |q: &QemuOptions, expect: Option<&'static [Expect]>| {
            let out = qemu::run(q)?;
            let why = run_failures(q, expect.unwrap_or(c.expect), &out, opensbi);
            if why.is_empty() {
                Ok(out)
            } else {
                Err(format!(
                    "{}: {} (log {})\n{}",
                    q.name,
                    why.join("; "),
                    out.log.display(),
                    qemu::tail(&out.output, 10)
                ))
            }
        };
        let note = devtests::run_with_devices(c.name, d, &mut q, &run)?;
        return Ok(Some(format!("{}: {note}", c.name)));
    }
    let out = qemu::run(&q)?;
    let why = run_failures(&q, c.expect, &out, opensbi);
    if why.is_empty() {
        Ok(matches!(c.kind, Kind::Linux).then(|| {
            let login = login_report(c, &out);
            match c.report {
                Some(report) => format!("{login}\n{}", report(&out.output)),
                None => login,
            }
        }))
    } else {
        Err(format!(
            "{} (log {})\n{}",
            why.join("; "),
            out.log.display(),
            qemu::tail(&out.output, 10)
        ))
    }
}

/// Why a run (with options `q`) failed, against `expect`: missing output, a
/// bad exit, or a console session that did not reach its end.
fn run_failures(
    q: &QemuOptions,
    expect: &[Expect],
    out: &qemu::QemuOutput,
    opensbi: bool,
) -> Vec<String> {
    let mut why = judge_expect(expect, &out.output, opensbi);
    if let Some(st) = out.status {
        if !st.success() {
            why.push(format!("qemu exited with {st}"));
        }
    }
    if out.matched.len() < q.interact.len() {
        why.push(format!(
            "QEMU exited at console step {} of {} (waiting for `{}`)",
            out.matched.len() + 1,
            q.interact.len(),
            q.interact[out.matched.len()].0.escape_debug()
        ));
    }
    why
}

/// Runs every test.
pub fn cmd_test(args: &[String]) -> Result<()> {
    let mut opensbi = false;
    let mut host = true;
    let mut gdb = false;
    let mut filters = Vec::new();
    for a in args {
        match a.as_str() {
            "--opensbi" => opensbi = true,
            "--no-host" => host = false,
            "--gdb" => gdb = true,
            s if s.starts_with('-') => return Err(format!("test: unknown option `{s}`")),
            s => filters.push(s.to_string()),
        }
    }
    // Everything below needs the rustup targets, QEMU and the cross tools: install
    // what is missing first (a fresh machine has none of them).
    crate::setup::ensure_all()?;
    if host && filters.is_empty() {
        host_checks()?;
        // The image is reproducible: built again in another checkout, it has the same
        // bytes (`cargo xtask repro`, cheap mode; docs/rootvm.md).
        crate::repro::ci()?;
    }
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        // Image-builder and Linux image cases say nothing about OpenSBI (the Linux Root
        // VM alone on OpenSBI: `rootvm/boot-test.py`).
        .filter(|c| {
            !(opensbi && matches!(c.kind, Kind::ImageRejected(_) | Kind::Linux | Kind::Gdb))
        })
        .collect();
    if selected.is_empty() {
        return Err(format!("test: no case matches {filters:?}"));
    }
    // One QEMU waits for one debugger: the filter must pick one case (its exact name
    // picks it even when other names contain it).
    let selected = if gdb {
        let exact: Vec<Case> = selected
            .iter()
            .filter(|c| filters.iter().any(|f| f == c.name))
            .cloned()
            .collect();
        match (selected.len(), exact.len()) {
            (1, _) => selected,
            (_, 1) => exact,
            _ => {
                let names: Vec<&str> = selected.iter().map(|c| c.name).collect();
                return Err(format!(
                    "test --gdb debugs one case; {} match: {}",
                    names.len(),
                    names.join(", ")
                ));
            }
        }
    } else {
        selected
    };
    let stub = gdb.then(crate::gdb::Stub::new).transpose()?;
    let elfs = build_guests(&selected)?;
    let target = if opensbi { "OpenSBI" } else { "Diosix" };
    let (mut passed, mut failed) = (0, 0);
    for c in &selected {
        let start = Instant::now();
        let result = run_case_with_gdb(c, &elfs[c.guest], opensbi, stub.as_ref());
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(note) => {
                passed += 1;
                println!("PASS {} [{target}] ({secs:.1} s)", c.name);
                if let Some(note) = note {
                    println!("{note}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {} [{target}] ({secs:.1} s): {e}", c.name);
            }
        }
    }
    println!("qemu tests: {passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} QEMU test(s) failed"))
    }
}
