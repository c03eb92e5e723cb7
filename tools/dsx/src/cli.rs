//! Command-line parsing and help texts: pure functions of the arguments, tested on the
//! build host.

use diosix_abi::{devices, limits};

/// A VM named on the command line: by CID, or by the name `dsx run --name` (or
/// `dsx load --name`) gave a child. Names are resolved against the live children when
/// the command runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildRef {
    /// A CID (0 = the parent, 1 = this VM, 2 and up = a child).
    Cid(u64),
    /// A child's name.
    Name(String),
}

/// One parsed invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print the general help, or a verb's.
    Help(Option<&'static str>),
    /// `info [--host] [--json]`.
    Info {
        /// Hypervisor-wide view (GET_HV_INFO) rather than this VM's.
        host: bool,
        /// Machine-readable output.
        json: bool,
    },
    /// `list [--json]`.
    List {
        /// Machine-readable output.
        json: bool,
    },
    /// `run [IMAGE] ...`.
    Run(RunOpts),
    /// `load IMAGE ...`.
    Load(LoadOpts),
    /// `fork [--untrusted] [--no-snapshot]`.
    Fork {
        /// Start the child without hardware trust.
        untrusted: bool,
        /// Keep no fork-time snapshot (cheaper; the child cannot be rebooted).
        no_snapshot: bool,
    },
    /// `stop CHILD`.
    Stop(ChildRef),
    /// `resume CHILD`.
    Resume(ChildRef),
    /// `reboot CHILD`.
    Reboot(ChildRef),
    /// `kill CHILD [--code N]`.
    Kill {
        /// The child.
        cid: ChildRef,
        /// Exit code reported in its CHILD_TERMINATED event.
        code: u64,
    },
    /// `quota CHILD|self [...]`.
    Quota {
        /// CID 1 for `self`, else a child.
        cid: ChildRef,
        /// The fields to set.
        set: QuotaSet,
    },
    /// `drop-trust [CHILD]`: `None` = this VM.
    DropTrust(Option<ChildRef>),
    /// `console CHILD`.
    Console(ChildRef),
    /// `send CHILD|parent TEXT`.
    Send {
        /// CID 0 = the parent, or a child.
        cid: ChildRef,
        /// The message.
        text: String,
    },
    /// `recv [--from CID] [--wait] [--raw]`.
    Recv {
        /// Only this sender (CID 0 = parent); `None` = any.
        from: Option<ChildRef>,
        /// Wait until a message arrives.
        wait: bool,
        /// Write the message bytes only.
        raw: bool,
    },
    /// `events [--follow]`.
    Events {
        /// Keep waiting for more.
        follow: bool,
    },
    /// `peek CHILD GPA LEN`: bytes of a child's RAM, as hex.
    Peek {
        /// The child.
        cid: ChildRef,
        /// Where in its RAM.
        gpa: u64,
        /// How many bytes (at most 64 KiB).
        len: u64,
    },
    /// `poke CHILD GPA HEX`: bytes into a child's RAM.
    Poke {
        /// The child.
        cid: ChildRef,
        /// Where in its RAM.
        gpa: u64,
        /// The bytes (at most 64 KiB).
        bytes: Vec<u8>,
    },
    /// `backend CID DEVICE...`: serve a child's virtio devices (what `run --disk`,
    /// `--net` and `--rng` start in the background).
    Backend {
        /// The child (a CID: names are `dsx`'s, the backend needs none).
        cid: u64,
        /// Its devices, in SPAWN's order (each one `backend::DeviceArg::parse` takes).
        devices: Vec<String>,
    },
}

/// Options of `run`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOpts {
    /// Kernel or guest image (ELF or RISC-V Linux `Image`).
    pub image: String,
    /// Initial RAM disk.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Device tree to give the child instead of a generated one.
    pub dtb: Option<String>,
    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub ram: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Priority; `None` = this VM's own.
    pub prio: Option<u32>,
    /// Give the child hardware trust.
    pub trusted: bool,
    /// Create it paused (state CREATED).
    pub paused: bool,
    /// A name to show in `list`.
    pub name: Option<String>,
    /// Its virtio-blk disks, in the order given (devices 0, 1, ...).
    pub disks: Vec<Disk>,
    /// Give it a virtio-net card on a TAP on this VM's bridge (after the disks).
    pub net: Option<NetPort>,
    /// Give it a virtio-rng device (served by a backend process; after the disks and
    /// the network card).
    pub rng: bool,
    /// Ports of this VM relayed to the child's (`--forward PORT:CHILDPORT`, only with
    /// a network card), in the order given.
    pub forwards: Vec<crate::fwd::Forward>,
}

/// A `run --net` child's bridge port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetPort {
    /// `--net`: isolated (reaches this VM and open ports only).
    Isolated,
    /// `--net-open`: not isolated (reaches every port).
    Open,
}

/// A `run --disk FILE` or `--disk-ro FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The file or block device, as given (`run` makes it absolute).
    pub path: String,
    /// `--disk-ro`.
    pub read_only: bool,
}

/// Options of `load`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOpts {
    /// Kernel or guest image (ELF or RISC-V Linux `Image`).
    pub image: String,
    /// Initial RAM disk.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Guest RAM in bytes (a multiple of 4 KiB); `None` = as much as the clone's quota
    /// allows, in whole MiB.
    pub ram: Option<u64>,
    /// vCPUs.
    pub vcpus: u32,
    /// A name to show in `list`.
    pub name: Option<String>,
}

/// Default guest RAM of `run`.
pub const DEFAULT_RAM: u64 = 128 << 20;

/// What `run` without IMAGE starts: the guest Linux every Diosix Linux VM carries
/// (built by `xtask/src/rootvm/initramfs.rs` from `rootvm/guest-initramfs/`).
pub const GUEST_IMAGE: &str = "/usr/share/diosix/guests/Image";
/// Its initramfs, used when `run` has neither IMAGE nor `--initrd`.
pub const GUEST_INITRD: &str = "/usr/share/diosix/guests/initramfs.cpio.gz";
/// Its command line, used when `run` has neither IMAGE nor `--cmdline`: `retain_initrd`
/// keeps the initramfs as `/sys/firmware/initrd`, which the guest offers as its own
/// `GUEST_INITRD`, so a guest can start guests too.
pub const GUEST_CMDLINE: &str = "console=hvc0 earlycon=sbi retain_initrd";

/// Quota fields to change; `None` = leave as is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaSet {
    /// RAM (guest RAM plus page tables) in bytes, a multiple of 4 KiB.
    pub ram: Option<u64>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// Highest priority.
    pub prio: Option<u32>,
    /// Levels of descendants.
    pub depth: Option<u32>,
    /// Number of descendants.
    pub descendants: Option<u32>,
}

/// Why the arguments were refused; printed with the verb's usage line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    /// The verb, if it was recognised.
    pub verb: Option<&'static str>,
    /// What is wrong.
    pub message: String,
}

fn usage(verb: &'static str, message: impl Into<String>) -> UsageError {
    UsageError {
        verb: Some(verb),
        message: message.into(),
    }
}

/// Every verb with its one-line summary and its full help.
pub const VERBS: &[(&str, &str, &str)] = &[
    (
        "info",
        "this VM's quotas and usage, or the hypervisor's (--host)",
        HELP_INFO,
    ),
    ("list", "this VM's children", HELP_LIST),
    ("run", "start a new child VM from an image", HELP_RUN),
    (
        "load",
        "load an image into an untrusted clone of this VM",
        HELP_LOAD,
    ),
    ("fork", "clone this VM (copy-on-write)", HELP_FORK),
    ("stop", "pause a child", HELP_STOP),
    ("resume", "resume a stopped child", HELP_RESUME),
    ("kill", "terminate a child and its subtree", HELP_KILL),
    ("reboot", "reboot a child to its initial state", HELP_REBOOT),
    ("quota", "change this VM's or a child's quota", HELP_QUOTA),
    (
        "drop-trust",
        "drop hardware trust, irrevocably",
        HELP_DROP_TRUST,
    ),
    (
        "console",
        "attach to a child's console (Ctrl-] detaches)",
        HELP_CONSOLE,
    ),
    ("send", "send a message to the parent or a child", HELP_SEND),
    ("recv", "receive a message", HELP_RECV),
    (
        "events",
        "show events about children and messages",
        HELP_EVENTS,
    ),
    ("peek", "show bytes of a child's RAM", HELP_PEEK),
    ("poke", "write bytes into a child's RAM", HELP_POKE),
    (
        "backend",
        "serve a child's virtio devices (run --disk/--net/--rng starts it)",
        HELP_BACKEND,
    ),
];

const HELP_INFO: &str = "\
usage: dsx info [--host] [--json]

Shows this VM as the hypervisor sees it: trust, state, and for each quota
(RAM, vCPUs, priority, depth, descendants) the limit and what is used.
  --host   the hypervisor instead: version, ABI, harts, timer, features, and
           RAM total/free (this VM's quota and headroom: other VMs' figures
           are never revealed)
  --json   one JSON object";
const HELP_LIST: &str = "\
usage: dsx list [--json]

Lists this VM's live children (CID 2 and up) with state, trust, vCPUs, RAM,
priority, console bytes waiting and virtio devices (`blk:/path,rng`, a
network card as its TAP: `net:dsxtap5`, `net:dsxtap5(open)`, a port forward
as `fwd:8081->80`; `(down)` after them when no backend serves them; `-` for
none). Names are those given to `dsx run --name`.
  --json   a JSON array";
const HELP_RUN: &str = "\
usage: dsx run [IMAGE] [--initrd FILE] [--cmdline TEXT] [--dtb FILE] [--ram SIZE]
               [--vcpus N] [--prio N] [--trusted] [--paused] [--name NAME]
               [--disk FILE]... [--disk-ro FILE]... [--net | --net-open] [--rng]
               [--forward PORT:CHILDPORT]...

Creates a child VM from IMAGE (ELF, or a RISC-V Linux Image) and starts it;
prints its CID. With --initrd or --cmdline, the image, initrd and command
line are packed into one DSXPAYLD container, as for the Root VM.
IMAGE and --initrd FILE given as a bare name (no `/`) are looked for in the
current directory, then /var/lib/diosix (the disk), then
/usr/share/diosix/guests; a path with a `/` is used as given.
Without IMAGE: the guest Linux in /usr/share/diosix/guests (Image, and unless
given, --initrd initramfs.cpio.gz
--cmdline 'console=hvc0 earlycon=sbi retain_initrd').
  --ram SIZE     guest RAM, e.g. 64M, 1G (default 128M; a multiple of 4K)
  --vcpus N      vCPUs (default 1)
  --prio N       priority 1-255 (default: this VM's own)
  --trusted      give it hardware trust (only if this VM is trusted)
  --paused       create it without starting it
  --name NAME    a name for `dsx list` and in place of its CID (unique among
                 this VM's children; not starting with a digit)
  --disk FILE    give it a virtio-blk disk on FILE, a regular file or block
                 device of this VM (at least 512 bytes; opened read-write,
                 and locked) served by a backend process that runs until the
                 child ends (`dsx backend`); repeatable: the first is the
                 child's /dev/vda, the next /dev/vdb, in the order given
  --disk-ro FILE the same, read-only (FILE opened read-only)
  --net          give it a virtio-net card (Linux: eth0) on the TAP device
                 dsxtapCID of this VM, a port of the bridge dsxbr0 (created
                 on first use; this VM is 10.N.0.1/24 on it, N 77 in the Root
                 VM and one more at each level below). The child is
                 10.N.0.CID/24 with gateway 10.N.0.1 (`dsx.ip=` added to its
                 command line), MAC 52:54:00:77:00:CID (hex); CIDs 2-254 only.
                 This VM routes its traffic to its own uplink behind NAT, so
                 it reaches whatever this VM reaches. Its port is isolated: it
                 reaches this VM and --net-open children, not other --net
                 children
  --net-open     the same, its port not isolated: it reaches every child
  --forward PORT:CHILDPORT
                 relay TCP connections to this VM's port PORT (all its
                 addresses) to the child's 10.N.0.CID:CHILDPORT, so the
                 child's service is reached from beyond this VM (its NAT lets
                 the child out, nobody in); with --net or --net-open only; repeatable (at most 8,
                 each PORT once; 1-65535). PORT must be free: checked before
                 the child is created. Relayed by the device backend: at most
                 64 connections per forward, ended with it (`dsx kill`)
  --rng          give it a virtio-rng device (Linux: /dev/hwrng) fed from this
                 VM's getrandom(2), served by the same backend
Devices are checked before the child is created; at most 8 in all (disks,
then the network card, then rng), and none with --trusted.
The image (packed, if so) may be up to 64 MiB; it is staged in this VM's
RAM while the hypervisor copies it.";
const HELP_LOAD: &str = "\
usage: dsx load IMAGE [--ram SIZE] [--vcpus N] [--initrd FILE] [--cmdline TEXT]
                [--name NAME]

Loads IMAGE the least-privilege way: this VM reads it (and packs it with
--initrd and --cmdline, as `dsx run` does), then forks; the clone drops its
hardware trust and becomes the image (EXEC), keeping its CID. Prints the
clone's CID; attach with `dsx console CID`. IMAGE and --initrd are looked
for as `dsx run` does (as given, /var/lib/diosix, /usr/share/diosix/guests).
The loaded guest is untrusted whatever this VM is, and its quota is the
clone's: this VM's own RAM and vCPUs, no children.
  --ram SIZE     guest RAM (default: the most whole MiB the clone's quota
                 allows after the image it keeps)
  --vcpus N      vCPUs (default 1; at most this VM's own)
  --name NAME    a name for `dsx list` and in place of its CID (unique among
                 this VM's children; not starting with a digit)
If the clone cannot become the image, it ends itself: `dsx events` shows it
terminated, with the SBI error number (or 1000 + errno) as exit code.";
const HELP_FORK: &str = "\
usage: dsx fork [--untrusted] [--no-snapshot]

Clones this whole VM copy-on-write. The parent prints the child's CID; in the
child the same command prints that it is the child. The hypervisor keeps the
child's fork-time state (copy-on-write) so `dsx reboot` can return it there;
that costs a second RAM's worth of quota.
  --untrusted    the child starts without hardware trust
  --no-snapshot  keep no fork-time state: half the quota, but no reboot";
const HELP_STOP: &str = "\
usage: dsx stop CHILD

Pauses every vCPU of CHILD (not its descendants).";
const HELP_RESUME: &str = "\
usage: dsx resume CHILD

Resumes CHILD after `dsx stop`.";
const HELP_KILL: &str = "\
usage: dsx kill CHILD [--code N]

Terminates CHILD and its whole subtree; its RAM and vCPUs return to this
VM's quota. N (default 0) is the exit code reported by `dsx events`.";
const HELP_REBOOT: &str = "\
usage: dsx reboot CHILD

Returns CHILD to the state it was created or forked in; its own
children are terminated.";
const HELP_QUOTA: &str = "\
usage: dsx quota CHILD|self [--ram SIZE] [--vcpus N] [--prio N] [--depth N]
                            [--descendants N]

Sets a quota of CHILD (within this VM's headroom) or of this VM itself
(`self`: only lowering is allowed). Fields not given are unchanged; a
value of 0 is applied as 0. Without options, shows the current quota.
  --ram SIZE       RAM plus page tables for the whole subtree, e.g. 512M
  --vcpus N        vCPUs for the subtree
  --prio N         highest priority in the subtree (1-255)
  --depth N        levels of descendants allowed below it (0-64)
  --descendants N  number of descendants allowed (0-65536)";
const HELP_DROP_TRUST: &str = "\
usage: dsx drop-trust [CHILD]

Irrevocably removes hardware trust (host MMIO and interrupts) from CHILD
and its subtree, or without CHILD from this VM and its whole subtree.";
const HELP_CONSOLE: &str = "\
usage: dsx console CHILD

Attaches this terminal to CHILD's console: its output is shown, typed
input is sent to it. Ctrl-] detaches (the child keeps running).";
const HELP_SEND: &str = "\
usage: dsx send CHILD|parent TEXT

Sends TEXT (at most 4096 bytes) as one message to a child or, with `parent`
or 0, to this VM's parent.";
const HELP_RECV: &str = "\
usage: dsx recv [--from CHILD|parent] [--wait] [--raw]

Receives the oldest waiting message and prints `from CID N: TEXT`. Exits 1
with nothing waiting, unless --wait.
  --from CHILD only from this sender (`parent` or 0 for the parent)
  --wait       wait for a message
  --raw        print the message bytes only";
const HELP_PEEK: &str = "\
usage: dsx peek CHILD GPA LEN

Prints LEN bytes (at most 65536) of a child's RAM from guest-physical address
GPA (decimal, or hex with 0x), 16 to a line, as hex and ASCII (CHILD_MEM_READ:
only this VM's own children, only their RAM).";
const HELP_POKE: &str = "\
usage: dsx poke CHILD GPA HEX

Writes the bytes HEX spells (two hex digits a byte, at most 65536 bytes) into
a child's RAM at guest-physical address GPA (CHILD_MEM_WRITE: as the child's
own store would; a page it shares copy-on-write is copied first).";
const HELP_BACKEND: &str = "\
usage: dsx backend CID DEVICE... [fwd:PORT:CHILDPORT]...

Serves the virtio devices of child CID, given in the order SPAWN declared them
(as /run/dsx/CID.devices lists them), until the child ends; logs to standard
error. DEVICE: `blk:PATH` (a disk, PATH absolute: the rest of the argument,
spaces included), `blk-ro:PATH` (read-only), `net` (a network card on the TAP
dsxtapCID, its bridge port isolated), `net-open` (not isolated), `rng`.
`fwd:PORT:CHILDPORT` (with `net` or `net-open`, at most 8): relay TCP
connections to this VM's PORT to the child's 10.N.0.CID:CHILDPORT.
`dsx run --disk/--net/--rng` starts one in the background for each child it
gives devices (PID in
/run/dsx/CID.pid, log in /run/dsx/CID.log) and `dsx kill` stops it; run it by
hand only to replace a backend that died. Refuses to run beside another live
backend of the same child.";
const HELP_EVENTS: &str = "\
usage: dsx events [--follow]

Prints and consumes the waiting events: children terminated, stopped,
started, rebooted, and messages arrived.
  --follow     keep waiting for new events (Ctrl-C ends)";

/// The general help.
pub fn general_help() -> String {
    let mut s = String::from(
        "usage: dsx VERB [OPTIONS]\n\n\
         Manages Diosix VMs from this VM through /dev/diosix (run as root).\n\
         CIDs are relative to this VM: 0 = its parent, 1 = itself, 2 and up = its\n\
         children, never reused. CHILD is a child's CID or the name `run --name`\n\
         or `load --name` gave it (names are unique among this VM's children).\n\nVerbs:\n",
    );
    for (verb, summary, _) in VERBS {
        s.push_str(&format!("  {verb:<11} {summary}\n"));
    }
    s.push_str("\n`dsx VERB --help` describes a verb. Sizes take K, M, G suffixes (binary).\n");
    s
}

/// The full help of `verb`.
pub fn verb_help(verb: &str) -> Option<&'static str> {
    VERBS
        .iter()
        .find(|(v, _, _)| *v == verb)
        .map(|(_, _, h)| *h)
}

fn static_verb(verb: &str) -> Option<&'static str> {
    VERBS
        .iter()
        .find(|(v, _, _)| *v == verb)
        .map(|(v, _, _)| *v)
}

/// Parses a size: a number of bytes with an optional binary suffix K, M, G or T (an
/// optional trailing `B` or `iB` is accepted: `128M`, `128MiB`, `4096`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{text}` is not a size (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 128M)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A size that must be a whole number of 4 KiB pages.
fn parse_pages_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes % 4096 != 0 {
        return Err(format!("{text} is not a multiple of 4K"));
    }
    Ok(bytes)
}

/// A guest-physical address: decimal, or hex with `0x`.
fn parse_address(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("GPA must be a number (decimal, or hex with 0x), not `{text}`"))
}

/// Bytes spelled as pairs of hex digits.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("HEX must be pairs of hex digits, not `{text}`");
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

fn parse_num<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, not `{text}`"))
}

fn parse_bounded(what: &str, text: &str, min: u32, max: u32) -> Result<u32, String> {
    let n: u32 = parse_num(what, text)?;
    if n < min || n > max {
        return Err(format!("{what} must be {min} to {max}, not {n}"));
    }
    Ok(n)
}

/// Parses a child: a CID (2 and up, explaining 0 and 1) or a child's name.
pub fn parse_child(verb: &str, text: &str) -> Result<ChildRef, String> {
    if !text.starts_with(|c: char| c.is_ascii_digit()) && valid_name(text) {
        return Ok(ChildRef::Name(text.to_string()));
    }
    let cid: u64 = text
        .parse()
        .map_err(|_| format!("CHILD must be a CID or a child's name, not `{text}`"))?;
    match cid {
        0 => Err(format!(
            "CID 0 is this VM's parent; `{verb}` takes one of its children (CID 2 and up)"
        )),
        1 => Err(format!(
            "CID 1 is this VM itself; `{verb}` takes one of its children (CID 2 and up)"
        )),
        c => Ok(ChildRef::Cid(c)),
    }
}

/// Parses a peer for IPC: `parent` or 0, or a child.
fn parse_peer(verb: &str, text: &str) -> Result<ChildRef, String> {
    if text == "parent" || text == "0" {
        return Ok(ChildRef::Cid(0));
    }
    parse_child(verb, text)
}

/// Words that mean a VM other than a child wherever a child can be named.
const RESERVED_NAMES: &[&str] = &["self", "parent"];

/// A child's name: 1 to 32 printable ASCII characters without spaces, not starting
/// with a digit (so it can never be read as a CID), and not `self` or `parent`.
fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text.chars().all(|c| c.is_ascii_graphic())
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && !RESERVED_NAMES.contains(&text)
}

/// Splits the arguments of a verb into options (with their values, as declared in
/// `with_value`) and positional arguments.
struct Args {
    opts: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

fn split(
    verb: &'static str,
    args: &[String],
    flags: &[&str],
    with_value: &[&str],
) -> Result<Args, UsageError> {
    let mut out = Args {
        opts: Vec::new(),
        positional: Vec::new(),
    };
    let mut it = args.iter();
    let mut only_positional = false;
    while let Some(a) = it.next() {
        if only_positional || !a.starts_with("--") || a == "-" {
            out.positional.push(a.clone());
            continue;
        }
        if a == "--" {
            only_positional = true;
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        if with_value.contains(&name) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(verb, format!("{name} needs a value")))?,
            };
            out.opts.push((name.to_string(), Some(value)));
        } else if flags.contains(&name) && inline.is_none() {
            out.opts.push((name.to_string(), None));
        } else {
            return Err(usage(verb, format!("unknown option {a}")));
        }
    }
    Ok(out)
}

impl Args {
    fn flag(&self, name: &str) -> bool {
        self.opts.iter().any(|(n, _)| n == name)
    }

    /// The last value given for `name` (a later option overrides an earlier one).
    fn value(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn positional_exact<const N: usize>(
        &self,
        verb: &'static str,
        names: [&str; N],
    ) -> Result<[&str; N], UsageError> {
        if self.positional.len() != N {
            let msg = if self.positional.len() < N {
                format!("missing {}", names[self.positional.len()])
            } else {
                format!("unexpected argument `{}`", self.positional[N])
            };
            return Err(usage(verb, msg));
        }
        let mut out = [""; N];
        for (o, p) in out.iter_mut().zip(&self.positional) {
            *o = p.as_str();
        }
        Ok(out)
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(Command::Help(None));
    };
    let first = first.as_str();
    if matches!(first, "-h" | "--help" | "help") {
        return match rest.first() {
            None => Ok(Command::Help(None)),
            Some(v) => static_verb(v)
                .map(|v| Command::Help(Some(v)))
                .ok_or(UsageError {
                    verb: None,
                    message: format!("unknown verb `{v}`"),
                }),
        };
    }
    let verb = static_verb(first).ok_or(UsageError {
        verb: None,
        message: format!("unknown verb `{first}`"),
    })?;
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help(Some(verb)));
    }
    let e = |m: String| usage(verb, m);
    match verb {
        "info" => {
            let a = split(verb, rest, &["--host", "--json"], &[])?;
            a.positional_exact(verb, [])?;
            Ok(Command::Info {
                host: a.flag("--host"),
                json: a.flag("--json"),
            })
        }
        "list" => {
            let a = split(verb, rest, &["--json"], &[])?;
            a.positional_exact(verb, [])?;
            Ok(Command::List {
                json: a.flag("--json"),
            })
        }
        "run" => parse_run(rest),
        "load" => parse_load(rest),
        "fork" => {
            let a = split(verb, rest, &["--untrusted", "--no-snapshot"], &[])?;
            a.positional_exact(verb, [])?;
            Ok(Command::Fork {
                untrusted: a.flag("--untrusted"),
                no_snapshot: a.flag("--no-snapshot"),
            })
        }
        "stop" | "resume" | "reboot" | "console" => {
            let a = split(verb, rest, &[], &[])?;
            let [cid] = a.positional_exact(verb, ["CHILD"])?;
            let cid = parse_child(verb, cid).map_err(e)?;
            Ok(match verb {
                "stop" => Command::Stop(cid),
                "resume" => Command::Resume(cid),
                "reboot" => Command::Reboot(cid),
                _ => Command::Console(cid),
            })
        }
        "kill" => {
            let a = split(verb, rest, &[], &["--code"])?;
            let [cid] = a.positional_exact(verb, ["CHILD"])?;
            let cid = parse_child(verb, cid).map_err(e)?;
            let code = match a.value("--code") {
                Some(c) => parse_num("--code", c).map_err(e)?,
                None => 0,
            };
            Ok(Command::Kill { cid, code })
        }
        "quota" => parse_quota(rest),
        "drop-trust" => {
            let a = split(verb, rest, &[], &[])?;
            match a.positional.as_slice() {
                [] => Ok(Command::DropTrust(None)),
                [cid] if cid == "self" || cid == "1" => Ok(Command::DropTrust(None)),
                [cid] => Ok(Command::DropTrust(Some(parse_child(verb, cid).map_err(e)?))),
                [_, extra, ..] => Err(e(format!("unexpected argument `{extra}`"))),
            }
        }
        "send" => {
            let a = split(verb, rest, &[], &[])?;
            let [cid, text] = a.positional_exact(verb, ["CHILD", "TEXT"])?;
            let cid = parse_peer(verb, cid).map_err(e)?;
            if text.len() > limits::IPC_MAX_MESSAGE {
                return Err(e(format!(
                    "the message is {} bytes; at most {} fit in one",
                    text.len(),
                    limits::IPC_MAX_MESSAGE
                )));
            }
            Ok(Command::Send {
                cid,
                text: text.to_string(),
            })
        }
        "recv" => {
            let a = split(verb, rest, &["--wait", "--raw"], &["--from"])?;
            a.positional_exact(verb, [])?;
            let from = match a.value("--from") {
                Some(f) => Some(parse_peer(verb, f).map_err(e)?),
                None => None,
            };
            Ok(Command::Recv {
                from,
                wait: a.flag("--wait"),
                raw: a.flag("--raw"),
            })
        }
        "events" => {
            let a = split(verb, rest, &["--follow"], &[])?;
            a.positional_exact(verb, [])?;
            Ok(Command::Events {
                follow: a.flag("--follow"),
            })
        }
        "peek" => {
            let a = split(verb, rest, &[], &[])?;
            let [cid, gpa, len] = a.positional_exact(verb, ["CHILD", "GPA", "LEN"])?;
            let len: u64 = parse_num("LEN", len).map_err(e)?;
            if len > limits::CHILD_MEM_MAX as u64 {
                return Err(e(format!("LEN is at most {} bytes", limits::CHILD_MEM_MAX)));
            }
            Ok(Command::Peek {
                cid: parse_child(verb, cid).map_err(e)?,
                gpa: parse_address(gpa).map_err(e)?,
                len,
            })
        }
        "poke" => {
            let a = split(verb, rest, &[], &[])?;
            let [cid, gpa, hex] = a.positional_exact(verb, ["CHILD", "GPA", "HEX"])?;
            let bytes = parse_hex(hex).map_err(e)?;
            if bytes.len() > limits::CHILD_MEM_MAX {
                return Err(e(format!("HEX is at most {} bytes", limits::CHILD_MEM_MAX)));
            }
            Ok(Command::Poke {
                cid: parse_child(verb, cid).map_err(e)?,
                gpa: parse_address(gpa).map_err(e)?,
                bytes,
            })
        }
        "backend" => {
            let a = split(verb, rest, &[], &[])?;
            let Some((cid, devs)) = a.positional.split_first() else {
                return Err(e("missing CID".into()));
            };
            let cid = match parse_child(verb, cid).map_err(e)? {
                ChildRef::Cid(c) => c,
                ChildRef::Name(_) => return Err(e(format!("CID must be a number, not `{cid}`"))),
            };
            let (found, _) = crate::backend::backend_args(devs).map_err(e)?;
            if found.is_empty() {
                return Err(e("missing DEVICE".into()));
            }
            Ok(Command::Backend {
                cid,
                devices: devs.to_vec(),
            })
        }
        _ => unreachable!("every verb in VERBS is handled"),
    }
}

fn parse_run(rest: &[String]) -> Result<Command, UsageError> {
    let verb = "run";
    let e = |m: String| usage(verb, m);
    let a = split(
        verb,
        rest,
        &["--trusted", "--paused", "--net", "--net-open", "--rng"],
        &[
            "--initrd",
            "--cmdline",
            "--dtb",
            "--ram",
            "--vcpus",
            "--prio",
            "--name",
            "--disk",
            "--disk-ro",
            "--forward",
        ],
    )?;
    let mut disks = Vec::new();
    for (opt, value) in &a.opts {
        if let (Some(path), "--disk" | "--disk-ro") = (value, opt.as_str()) {
            if path.is_empty() || path.contains('\n') {
                return Err(e(format!("{opt} needs a file name (without a line break)")));
            }
            disks.push(Disk {
                path: path.clone(),
                read_only: opt == "--disk-ro",
            });
        }
    }
    let rng = a.flag("--rng");
    // `--net-open` alone is an open port too.
    let net = if a.flag("--net-open") {
        Some(NetPort::Open)
    } else if a.flag("--net") {
        Some(NetPort::Isolated)
    } else {
        None
    };
    let mut forwards: Vec<crate::fwd::Forward> = Vec::new();
    for (opt, value) in &a.opts {
        if let (Some(spec), "--forward") = (value, opt.as_str()) {
            let f = crate::fwd::Forward::parse(spec).map_err(|m| e(format!("--forward: {m}")))?;
            if forwards.iter().any(|g| g.port == f.port) {
                return Err(e(format!(
                    "--forward: port {} of this VM is forwarded twice",
                    f.port
                )));
            }
            forwards.push(f);
        }
    }
    if forwards.len() > crate::fwd::MAX_FORWARDS {
        return Err(e(format!("at most {} --forward", crate::fwd::MAX_FORWARDS)));
    }
    if !forwards.is_empty() && net.is_none() {
        return Err(e(
            "--forward needs --net or --net-open: it relays to the child's address on the \
             bridge"
                .into(),
        ));
    }
    if disks.len() + usize::from(net.is_some()) + usize::from(rng) > devices::MAX_DEVICES {
        return Err(e(format!(
            "at most {} virtio devices (--disk, --disk-ro, --net, --rng) in all",
            devices::MAX_DEVICES
        )));
    }
    // No IMAGE: the guest Linux, with its initramfs and command line unless given.
    let (image, initrd, cmdline) = if a.positional.is_empty() {
        (
            GUEST_IMAGE,
            Some(a.value("--initrd").unwrap_or(GUEST_INITRD)),
            Some(a.value("--cmdline").unwrap_or(GUEST_CMDLINE)),
        )
    } else {
        let [image] = a.positional_exact(verb, ["IMAGE"])?;
        (image, a.value("--initrd"), a.value("--cmdline"))
    };
    let ram = match a.value("--ram") {
        Some(r) => parse_pages_size(r).map_err(e)?,
        None => DEFAULT_RAM,
    };
    if ram == 0 {
        return Err(e("--ram must not be 0".into()));
    }
    let vcpus = match a.value("--vcpus") {
        Some(v) => parse_bounded("--vcpus", v, 1, limits::MAX_VCPUS).map_err(e)?,
        None => 1,
    };
    let prio = match a.value("--prio") {
        Some(p) => Some(parse_bounded("--prio", p, 1, limits::MAX_PRIORITY).map_err(e)?),
        None => None,
    };
    let name = parse_name(&a).map_err(e)?;
    Ok(Command::Run(RunOpts {
        image: image.to_string(),
        initrd: initrd.map(str::to_string),
        cmdline: cmdline.map(str::to_string),
        dtb: a.value("--dtb").map(str::to_string),
        ram,
        vcpus,
        prio,
        trusted: a.flag("--trusted"),
        paused: a.flag("--paused"),
        name,
        disks,
        net,
        rng,
        forwards,
    }))
}

/// `--name NAME`, if given: see [`valid_name`].
fn parse_name(a: &Args) -> Result<Option<String>, String> {
    let name = a.value("--name").map(str::to_string);
    if let Some(n) = &name {
        if !valid_name(n) {
            return Err(
                "--name must be 1 to 32 printable characters without spaces, \
                        not starting with a digit, and not `self` or `parent`"
                    .into(),
            );
        }
    }
    Ok(name)
}

fn parse_load(rest: &[String]) -> Result<Command, UsageError> {
    let verb = "load";
    let e = |m: String| usage(verb, m);
    let a = split(
        verb,
        rest,
        &[],
        &["--initrd", "--cmdline", "--ram", "--vcpus", "--name"],
    )?;
    let [image] = a.positional_exact(verb, ["IMAGE"])?;
    let ram = match a.value("--ram") {
        Some(r) => Some(parse_pages_size(r).map_err(e)?),
        None => None,
    };
    if ram == Some(0) {
        return Err(e("--ram must not be 0".into()));
    }
    let vcpus = match a.value("--vcpus") {
        Some(v) => parse_bounded("--vcpus", v, 1, limits::MAX_VCPUS).map_err(e)?,
        None => 1,
    };
    Ok(Command::Load(LoadOpts {
        image: image.to_string(),
        initrd: a.value("--initrd").map(str::to_string),
        cmdline: a.value("--cmdline").map(str::to_string),
        ram,
        vcpus,
        name: parse_name(&a).map_err(e)?,
    }))
}

fn parse_quota(rest: &[String]) -> Result<Command, UsageError> {
    let verb = "quota";
    let e = |m: String| usage(verb, m);
    let a = split(
        verb,
        rest,
        &[],
        &["--ram", "--vcpus", "--prio", "--depth", "--descendants"],
    )?;
    let [target] = a.positional_exact(verb, ["CHILD or `self`"])?;
    let cid = if target == "self" || target == "1" {
        ChildRef::Cid(1)
    } else {
        parse_child(verb, target).map_err(e)?
    };
    let mut set = QuotaSet::default();
    if let Some(r) = a.value("--ram") {
        set.ram = Some(parse_pages_size(r).map_err(e)?);
    }
    if let Some(v) = a.value("--vcpus") {
        set.vcpus = Some(parse_bounded("--vcpus", v, 0, limits::MAX_VCPUS).map_err(e)?);
    }
    if let Some(p) = a.value("--prio") {
        set.prio = Some(parse_bounded("--prio", p, 1, limits::MAX_PRIORITY).map_err(e)?);
    }
    if let Some(d) = a.value("--depth") {
        set.depth = Some(parse_bounded("--depth", d, 0, limits::MAX_TREE_DEPTH).map_err(e)?);
    }
    if let Some(d) = a.value("--descendants") {
        set.descendants =
            Some(parse_bounded("--descendants", d, 0, limits::MAX_DESCENDANTS).map_err(e)?);
    }
    Ok(Command::Quota { cid, set })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &str) -> Result<Command, UsageError> {
        let v: Vec<String> = args.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    fn msg(args: &str) -> String {
        p(args).unwrap_err().message
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_pages_size("1000").is_err());
    }

    #[test]
    fn peek_and_poke() {
        assert_eq!(
            p("peek 2 0x80200030 8"),
            Ok(Command::Peek {
                cid: ChildRef::Cid(2),
                gpa: 0x8020_0030,
                len: 8
            })
        );
        assert_eq!(
            p("poke web 4096 00ff7A"),
            Ok(Command::Poke {
                cid: ChildRef::Name("web".into()),
                gpa: 4096,
                bytes: vec![0, 0xff, 0x7a]
            })
        );
        assert_eq!(msg("peek 2 0x10 65537"), "LEN is at most 65536 bytes");
        assert!(msg("peek 2 zz 8").starts_with("GPA must be a number"));
        assert!(msg("peek 1 0 8").starts_with("CID 1 is this VM itself"));
        for hex in ["", "0", "0g", "abc"] {
            assert!(p(&format!("poke 2 0 {hex}")).is_err(), "{hex:?}");
        }
        let big = "00".repeat(65537);
        assert_eq!(
            msg(&format!("poke 2 0 {big}")),
            "HEX is at most 65536 bytes"
        );
    }

    #[test]
    fn help_everywhere() {
        assert_eq!(p(""), Ok(Command::Help(None)));
        assert_eq!(p("--help"), Ok(Command::Help(None)));
        assert_eq!(p("help run"), Ok(Command::Help(Some("run"))));
        for (verb, _, help) in VERBS {
            assert_eq!(p(&format!("{verb} --help")), Ok(Command::Help(Some(verb))));
            assert!(help.starts_with(&format!("usage: dsx {verb}")), "{verb}");
            assert!(general_help().contains(verb));
        }
        // --help wins even over otherwise bad arguments.
        assert_eq!(p("stop 1 --help"), Ok(Command::Help(Some("stop"))));
    }

    #[test]
    fn run_options() {
        let cmd = p(
            "run /tmp/Image --initrd /tmp/rd --cmdline=console=hvc0 --ram 64M \
                     --vcpus 2 --prio 3 --trusted --name web",
        )
        .unwrap();
        assert_eq!(
            cmd,
            Command::Run(RunOpts {
                image: "/tmp/Image".into(),
                initrd: Some("/tmp/rd".into()),
                cmdline: Some("console=hvc0".into()),
                dtb: None,
                ram: 64 << 20,
                vcpus: 2,
                prio: Some(3),
                trusted: true,
                paused: false,
                name: Some("web".into()),
                disks: Vec::new(),
                net: None,
                rng: false,
                forwards: Vec::new(),
            })
        );
        // Disks in the order given, --disk and --disk-ro mixed; a path as it is.
        let args: Vec<String> = [
            "run",
            "--disk",
            "/d/a b.img",
            "--rng",
            "--disk-ro=rel.img",
            "--disk",
            "/dev/vdb",
        ]
        .map(String::from)
        .to_vec();
        let Ok(Command::Run(r)) = parse(&args) else {
            panic!()
        };
        let disk = |p: &str, ro| Disk {
            path: p.into(),
            read_only: ro,
        };
        assert_eq!(
            r.disks,
            [
                disk("/d/a b.img", false),
                disk("rel.img", true),
                disk("/dev/vdb", false)
            ]
        );
        assert!(r.rng);
        // Eight devices at most; a line break never gets into the devices file.
        let eight = format!("run{}", " --disk /x".repeat(8));
        assert_eq!(p(&eight).map(|_| ()), Ok(()));
        assert_eq!(
            msg(&format!("{eight} --rng")),
            "at most 8 virtio devices (--disk, --disk-ro, --net, --rng) in all"
        );
        assert_eq!(
            msg(&format!("{eight} --net")),
            "at most 8 virtio devices (--disk, --disk-ro, --net, --rng) in all"
        );
        let seven = format!("run{} --net", " --disk /x".repeat(7));
        assert!(p(&seven).is_ok());
        // --net, --net-open (alone or with --net: an open port).
        for (args, want) in [
            ("run --net", Some(NetPort::Isolated)),
            ("run --net-open", Some(NetPort::Open)),
            ("run --net --net-open --rng", Some(NetPort::Open)),
            ("run --rng", None),
        ] {
            let Ok(Command::Run(r)) = p(args) else {
                panic!("{args}")
            };
            assert_eq!(r.net, want, "{args}");
        }
        assert_eq!(msg("run --net=yes"), "unknown option --net=yes");
        // --forward: with a network card only, repeatable, each port once.
        let Command::Run(r) = p("run --net --forward 8081:80 --forward=2222:22").unwrap() else {
            panic!()
        };
        let fwd = |port, child_port| crate::fwd::Forward { port, child_port };
        assert_eq!(r.forwards, [fwd(8081, 80), fwd(2222, 22)]);
        let Command::Run(r) = p("run --net-open --forward 65535:1").unwrap() else {
            panic!()
        };
        assert_eq!(r.forwards, [fwd(65535, 1)]);
        assert_eq!(
            msg("run --forward 8081:80"),
            "--forward needs --net or --net-open: it relays to the child's address on the \
             bridge"
        );
        assert_eq!(
            msg("run --rng --forward 8081:80"),
            "--forward needs --net or --net-open: it relays to the child's address on the \
             bridge"
        );
        for bad in ["80", "0:80", "80:0", "65536:80", "x:80", "80:80:80"] {
            assert_eq!(
                msg(&format!("run --net --forward {bad}")),
                format!("--forward: `{bad}` is not PORT:CHILDPORT (each 1 to 65535)")
            );
        }
        assert_eq!(
            msg("run --net --forward 8081:80 --forward 8081:81"),
            "--forward: port 8081 of this VM is forwarded twice"
        );
        let eight: String = (1..=8).map(|k| format!(" --forward {k}:80")).collect();
        assert!(p(&format!("run --net{eight}")).is_ok());
        assert_eq!(
            msg(&format!("run --net{eight} --forward 9:80")),
            "at most 8 --forward"
        );
        assert_eq!(msg("run --net --forward"), "--forward needs a value");
        assert_eq!(msg("run --disk"), "--disk needs a value");
        let nl: Vec<String> = ["run", "--disk", "/a\nb"].map(String::from).to_vec();
        assert_eq!(
            parse(&nl).unwrap_err().message,
            "--disk needs a file name (without a line break)"
        );
        let Command::Run(r) = p("run --rng --name n").unwrap() else {
            panic!()
        };
        assert!(r.rng && r.image == GUEST_IMAGE);
        assert_eq!(msg("run a --rng=yes"), "unknown option --rng=yes");
        let Command::Run(d) = p("run img").unwrap() else {
            panic!()
        };
        assert_eq!((d.ram, d.vcpus, d.prio), (DEFAULT_RAM, 1, None));
        let Command::Run(g) = p("run --ram 64M").unwrap() else {
            panic!()
        };
        assert_eq!(
            (g.image.as_str(), g.initrd.as_deref(), g.cmdline.as_deref()),
            (GUEST_IMAGE, Some(GUEST_INITRD), Some(GUEST_CMDLINE))
        );
        assert_eq!(g.ram, 64 << 20);
        let Command::Run(g) = p("run --cmdline quiet --initrd /rd").unwrap() else {
            panic!()
        };
        assert_eq!(
            (g.initrd.as_deref(), g.cmdline.as_deref()),
            (Some("/rd"), Some("quiet"))
        );
        assert_eq!(msg("run a b"), "unexpected argument `b`");
        assert_eq!(msg("run a --ram"), "--ram needs a value");
        assert_eq!(msg("run a --ram 1000"), "1000 is not a multiple of 4K");
        assert_eq!(msg("run a --prio 0"), "--prio must be 1 to 255, not 0");
        assert_eq!(msg("run a --vcpus x"), "--vcpus must be a number, not `x`");
        assert_eq!(msg("run a --bogus"), "unknown option --bogus");
        assert_eq!(msg("run a --trusted=yes"), "unknown option --trusted=yes");
        assert!(msg("run a --name has/slash/and/a/very/long/name/that/is/long").contains("--name"));
    }

    #[test]
    fn load_options() {
        assert_eq!(
            p(
                "load /var/lib/diosix/Image --initrd rd --cmdline=console=hvc0 --ram 96M \
               --vcpus 2 --name ld"
            ),
            Ok(Command::Load(LoadOpts {
                image: "/var/lib/diosix/Image".into(),
                initrd: Some("rd".into()),
                cmdline: Some("console=hvc0".into()),
                ram: Some(96 << 20),
                vcpus: 2,
                name: Some("ld".into()),
            }))
        );
        // RAM: as much as the quota allows unless given; one vCPU; no guest defaults.
        assert_eq!(
            p("load img"),
            Ok(Command::Load(LoadOpts {
                image: "img".into(),
                vcpus: 1,
                ..LoadOpts::default()
            }))
        );
        assert_eq!(msg("load"), "missing IMAGE");
        assert_eq!(msg("load a b"), "unexpected argument `b`");
        assert_eq!(msg("load a --ram 0"), "--ram must not be 0");
        assert_eq!(msg("load a --ram 5000"), "5000 is not a multiple of 4K");
        assert_eq!(msg("load a --vcpus 0"), "--vcpus must be 1 to 4096, not 0");
        assert_eq!(msg("load a --trusted"), "unknown option --trusted");
        assert_eq!(msg("load a --dtb x"), "unknown option --dtb");
        assert!(msg(&format!("load a --name {}", "n".repeat(33))).contains("--name"));
        assert_eq!(p("load --help"), Ok(Command::Help(Some("load"))));
    }

    #[test]
    fn cids() {
        use ChildRef::{Cid, Name};
        assert_eq!(p("stop 2"), Ok(Command::Stop(Cid(2))));
        assert_eq!(p("resume 7"), Ok(Command::Resume(Cid(7))));
        assert_eq!(p("console 3"), Ok(Command::Console(Cid(3))));
        assert_eq!(
            p("kill 4 --code 9"),
            Ok(Command::Kill {
                cid: Cid(4),
                code: 9
            })
        );
        assert!(msg("stop 1").starts_with("CID 1 is this VM itself"));
        assert!(msg("reboot 0").starts_with("CID 0 is this VM's parent"));
        assert_eq!(
            msg("stop 3x"),
            "CHILD must be a CID or a child's name, not `3x`"
        );
        assert_eq!(msg("stop"), "missing CHILD");
        assert_eq!(p("drop-trust"), Ok(Command::DropTrust(None)));
        assert_eq!(p("drop-trust self"), Ok(Command::DropTrust(None)));
        assert_eq!(p("drop-trust 5"), Ok(Command::DropTrust(Some(Cid(5)))));
        assert_eq!(
            p("send parent hi"),
            Ok(Command::Send {
                cid: Cid(0),
                text: "hi".into()
            })
        );
        assert!(msg("send 1 hi").starts_with("CID 1 is this VM itself"));
        let long = "x".repeat(4097);
        assert!(parse(&["send".into(), "2".into(), long]).is_err());
        assert_eq!(
            p("recv --from 0 --wait"),
            Ok(Command::Recv {
                from: Some(Cid(0)),
                wait: true,
                raw: false
            })
        );
        // Names wherever a child can be given.
        assert_eq!(p("console web"), Ok(Command::Console(Name("web".into()))));
        assert_eq!(p("reboot db-2"), Ok(Command::Reboot(Name("db-2".into()))));
        assert_eq!(
            p("kill web"),
            Ok(Command::Kill {
                cid: Name("web".into()),
                code: 0
            })
        );
        assert_eq!(
            p("drop-trust web"),
            Ok(Command::DropTrust(Some(Name("web".into()))))
        );
        assert_eq!(
            p("recv --from web"),
            Ok(Command::Recv {
                from: Some(Name("web".into())),
                wait: false,
                raw: false
            })
        );
        assert!(msg("stop parent").contains("CHILD must be"));
        // A name can never be read as a CID, nor shadow `self`/`parent`.
        for bad in ["2web", "self", "parent"] {
            assert!(
                msg(&format!("run a --name {bad}")).contains("--name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn quota_options() {
        assert_eq!(
            p("quota self --ram 512M --depth 0"),
            Ok(Command::Quota {
                cid: ChildRef::Cid(1),
                set: QuotaSet {
                    ram: Some(512 << 20),
                    depth: Some(0),
                    ..QuotaSet::default()
                }
            })
        );
        assert_eq!(
            p("quota 3"),
            Ok(Command::Quota {
                cid: ChildRef::Cid(3),
                set: QuotaSet::default()
            })
        );
        assert_eq!(msg("quota 3 --depth 65"), "--depth must be 0 to 64, not 65");
        assert_eq!(msg("quota"), "missing CHILD or `self`");
        assert!(msg("quota 0").starts_with("CID 0"));
    }

    #[test]
    fn backend_arguments() {
        assert_eq!(
            p("backend 3 rng"),
            Ok(Command::Backend {
                cid: 3,
                devices: vec!["rng".into()]
            })
        );
        assert_eq!(msg("backend"), "missing CID");
        assert_eq!(msg("backend 3"), "missing DEVICE");
        assert_eq!(msg("backend web rng"), "CID must be a number, not `web`");
        assert!(msg("backend 1 rng").starts_with("CID 1 is this VM itself"));
        assert_eq!(
            msg("backend 3 blk"),
            "unknown device `blk` (known: rng, net, net-open, blk:PATH, blk-ro:PATH)"
        );
        assert_eq!(
            p("backend 5 blk:/a.img net-open rng"),
            Ok(Command::Backend {
                cid: 5,
                devices: vec!["blk:/a.img".into(), "net-open".into(), "rng".into()]
            })
        );
        assert!(msg("backend 5 net:dsxtap5").starts_with("unknown device `net:dsxtap5`"));
        assert_eq!(
            msg("backend 3 blk:rel.img"),
            "`blk:rel.img`: the disk's path must be absolute"
        );
        let args: Vec<String> = ["backend", "4", "blk:/a b:c,d.img", "blk-ro:/x", "rng"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            parse(&args),
            Ok(Command::Backend {
                cid: 4,
                devices: args[2..].to_vec()
            })
        );
        assert_eq!(
            msg(&format!("backend 3{}", " rng".repeat(9))),
            "at most 8 devices"
        );
        // Port forwards, with a network card only.
        assert_eq!(
            p("backend 5 net fwd:8081:80 rng fwd:2222:22"),
            Ok(Command::Backend {
                cid: 5,
                devices: vec![
                    "net".into(),
                    "fwd:8081:80".into(),
                    "rng".into(),
                    "fwd:2222:22".into()
                ]
            })
        );
        assert_eq!(
            msg("backend 5 rng fwd:8081:80"),
            "`fwd:8081:80`: a forward needs the child's network card (net or net-open): it \
             relays to the child's address on the bridge"
        );
        assert_eq!(
            msg("backend 5 fwd:8081:80"),
            msg("backend 5 rng fwd:8081:80")
        );
        assert_eq!(
            msg("backend 5 net fwd:8081"),
            "`fwd:8081` is not a forward (fwd:PORT:CHILDPORT, each 1 to 65535)"
        );
        assert_eq!(
            msg("backend 5 net fwd:8081:80 fwd:8081:90"),
            "`fwd:8081:90`: port 8081 is forwarded twice"
        );
        let nine: String = (1..=9).map(|k| format!(" fwd:{k}:80")).collect();
        assert_eq!(msg(&format!("backend 5 net{nine}")), "at most 8 forwards");
        // Eight devices and eight forwards.
        let eight: String = (1..=8).map(|k| format!(" fwd:{k}:80")).collect();
        assert!(p(&format!("backend 5 net{}{eight}", " rng".repeat(7))).is_ok());
    }

    #[test]
    fn unknown_verbs() {
        let err = p("frobnicate").unwrap_err();
        assert_eq!(err.verb, None);
        assert_eq!(err.message, "unknown verb `frobnicate`");
        assert_eq!(
            p("info --host --json"),
            Ok(Command::Info {
                host: true,
                json: true
            })
        );
        assert_eq!(msg("list extra"), "unexpected argument `extra`");
    }
}
