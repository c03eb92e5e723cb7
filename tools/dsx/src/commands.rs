//! Carries out a parsed [`Command`] through a [`Hypervisor`], writing what it reports to
//! `out`. Everything but the interactive console is here, so the tests drive it with a
//! fake hypervisor.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diosix_abi::{cid, error, ext, flags, limits, QuotaArgs, SpawnArgs};

use crate::backend::{Backends, ChildDevices, DeviceArg};
use crate::cli::{ChildRef, Command, LoadOpts, NetPort, QuotaSet, RunOpts};
use crate::format::{self, Op, Row};
use crate::hv::{CallError, DeviceDecl, Hypervisor};

/// Why a command failed: the message (printed as `dsx: MESSAGE`) and the exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, in the user's terms.
    pub message: String,
    /// Process exit status (1: refused or failed).
    pub status: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            status: 1,
        }
    }
}

/// Turns a failed call into a [`Failure`] explained in terms of `op`.
pub fn fail(op: Op) -> impl Fn(CallError) -> Failure {
    move |e| Failure::new(format::error_message(op, e))
}

fn write_err(e: std::io::Error) -> Failure {
    Failure::new(format!("writing output: {e}"))
}

/// Names given with `dsx run --name` (or `load --name`), kept in a small file
/// (`CID<TAB>name` lines) so `list` and `events` can show them and every verb accepts
/// them in place of a CID; the hypervisor itself has no names. CIDs are never reused,
/// so a stale line can never label another VM, and a name is looked up only among the
/// live children.
#[derive(Debug, Default)]
pub struct Names {
    path: Option<PathBuf>,
    map: BTreeMap<u64, String>,
}

/// Where the Root VM keeps the names: tmpfs, so they go with the VMs at reboot.
pub const NAMES_PATH: &str = "/run/dsx/names";

impl Names {
    /// Loads the names at `path` (none if it does not exist); `None` keeps them in
    /// memory only.
    pub fn load(path: Option<PathBuf>) -> Names {
        let mut map = BTreeMap::new();
        if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            for line in text.lines() {
                if let Some((cid, name)) = line.split_once('\t') {
                    if let Ok(cid) = cid.parse() {
                        map.insert(cid, name.to_string());
                    }
                }
            }
        }
        Names { path, map }
    }

    /// The name of `cid`, if it has one.
    pub fn get(&self, cid: u64) -> Option<&str> {
        self.map.get(&cid).map(String::as_str)
    }

    /// The CIDs named `name`, in order.
    fn cids_named<'n>(&'n self, name: &'n str) -> impl Iterator<Item = u64> + 'n {
        self.map
            .iter()
            .filter(move |(_, n)| *n == name)
            .map(|(&c, _)| c)
    }

    /// Names `cid` and saves the file. Failing to save only loses the label, so it is
    /// reported by the caller as a warning, not an error.
    pub fn set(&mut self, cid: u64, name: &str) -> std::io::Result<()> {
        self.map.insert(cid, name.to_string());
        self.save()
    }

    /// Forgets every name (a FORK clone's children are its own, not its parent's).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.map.clear();
        self.save()
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text: String = self
            .map
            .iter()
            .map(|(c, n)| format!("{c}\t{n}\n"))
            .collect();
        std::fs::write(path, text)
    }
}

/// This VM's live children, as many as one LIST_CHILDREN request returns, and how many
/// there are in all.
fn live_children(hv: &mut dyn Hypervisor) -> Result<(Vec<u64>, u64), Failure> {
    let mut cids = vec![0u64; 64];
    let mut count = hv.list_children(&mut cids).map_err(fail(Op::Query))?;
    if count > cids.len() as u64 {
        // More children than the first guess: ask again with room for all of them (up
        // to what one request can return).
        cids = vec![0u64; (count as usize).min(crate::dev::LIST_MAX)];
        count = hv.list_children(&mut cids).map_err(fail(Op::Query))?;
    }
    cids.truncate(count.min(cids.len() as u64) as usize);
    Ok((cids, count))
}

/// The CID `child` stands for: a CID as given, a name as the live child that has it.
pub fn resolve(hv: &mut dyn Hypervisor, names: &Names, child: &ChildRef) -> Result<u64, Failure> {
    let name = match child {
        ChildRef::Cid(cid) => return Ok(*cid),
        ChildRef::Name(name) => name,
    };
    let (live, _) = live_children(hv)?;
    let found: Vec<u64> = names
        .cids_named(name)
        .filter(|c| live.contains(c))
        .collect();
    match found.as_slice() {
        [cid] => Ok(*cid),
        [] => Err(Failure::new(format!(
            "no child named `{name}` (`dsx list` shows the children and their names)"
        ))),
        more => Err(Failure::new(format!(
            "{} children are named `{name}` (CIDs {}): give a CID",
            more.len(),
            more.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Refuses `name` for a new child while a live child has it: names stay unique among
/// this VM's children.
fn check_name_free(cx: &mut Ctx<'_>, name: Option<&str>) -> Result<(), Failure> {
    let Some(name) = name else {
        return Ok(());
    };
    let (live, _) = live_children(cx.hv)?;
    if let Some(cid) = cx.names.cids_named(name).find(|c| live.contains(c)) {
        return Err(Failure::new(format!(
            "CID {cid} is already named `{name}`: names are unique among this VM's children"
        )));
    }
    Ok(())
}

/// Reads a file named on the command line, naming it in the error.
pub type ReadFile<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<u8>>;

/// What a command needs from its surroundings.
pub struct Ctx<'a> {
    /// The hypervisor, through the driver or a fake.
    pub hv: &'a mut dyn Hypervisor,
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error, for warnings.
    pub err: &'a mut dyn Write,
    /// `run --name` labels.
    pub names: &'a mut Names,
    /// The children's device backends and their state files.
    pub backends: &'a mut dyn Backends,
    /// How files (images) are read.
    pub read_file: ReadFile<'a>,
    /// Pause between polls of `recv --wait` and `events --follow`.
    pub poll_interval: Duration,
    /// Stop `--wait`/`--follow` loops after this many empty polls (tests); `None` =
    /// forever.
    pub max_polls: Option<u64>,
}

/// Runs every command except `help`, `console` and `backend` (handled by `main`).
pub fn execute(cmd: &Command, cx: &mut Ctx<'_>) -> Result<(), Failure> {
    match cmd {
        Command::Help(_) | Command::Console(_) | Command::Backend { .. } => Ok(()),
        Command::Info { host, json } => info(cx, *host, *json),
        Command::List { json } => list(cx, *json),
        Command::Run(opts) => run(cx, opts),
        Command::Load(opts) => load(cx, opts),
        Command::Fork {
            untrusted,
            no_snapshot,
        } => {
            let mut fl = if *untrusted { flags::FORK_UNTRUSTED } else { 0 };
            if *no_snapshot {
                fl |= flags::FORK_NO_SNAPSHOT;
            }
            let cid = cx
                .hv
                .scalar(ext::FID_FORK, [fl, 0, 0, 0, 0])
                .map_err(fail(Op::Fork))?;
            // Both VMs return here: the child sees 0 (its parent is now CID 0).
            if cid != 0 {
                cx.backends.note_cid(cid);
            }
            if cid == 0 {
                // The clone's copy of the names file labels its parent's children, and
                // its copies of their backends would serve its own children of the
                // same CIDs.
                forget_names(cx)?;
                if let Err(e) = cx.backends.forget_all() {
                    writeln!(cx.err, "dsx: warning: {e}").map_err(write_err)?;
                }
            }
            let line = if cid == 0 {
                "this is the new child VM (its parent is CID 0)".to_string()
            } else {
                format!("forked: the child is CID {cid}")
            };
            writeln!(cx.out, "{line}").map_err(write_err)
        }
        Command::Stop(c) => {
            let c = child(cx, c)?;
            simple(cx, ext::FID_STOP, [c, 0], Op::Stop(c), "stopped")
        }
        Command::Resume(c) => {
            let c = child(cx, c)?;
            simple(cx, ext::FID_RESUME, [c, 0], Op::Resume(c), "resumed")
        }
        Command::Reboot(c) => {
            let c = child(cx, c)?;
            simple(cx, ext::FID_REBOOT, [c, 0], Op::Reboot(c), "rebooted")
        }
        Command::Kill { cid, code } => {
            let c = child(cx, cid)?;
            simple(cx, ext::FID_EXIT, [c, *code], Op::Kill(c), "terminated")?;
            // Its backend would notice within a second; it need not wait for that.
            if let Err(e) = cx.backends.stop(c) {
                writeln!(cx.err, "dsx: warning: {e}").map_err(write_err)?;
            }
            Ok(())
        }
        Command::DropTrust(None) => {
            cx.hv
                .scalar(ext::FID_DROP_TRUST, [0; 5])
                .map_err(fail(Op::DropTrust(None)))?;
            writeln!(
                cx.out,
                "this VM and its subtree no longer have hardware trust"
            )
            .map_err(write_err)
        }
        Command::DropTrust(Some(c)) => {
            let c = child(cx, c)?;
            simple(
                cx,
                ext::FID_DROP_CHILD_TRUST,
                [c, 0],
                Op::DropTrust(Some(c)),
                "no longer has hardware trust (nor its subtree)",
            )
        }
        Command::Quota { cid, set } => {
            let c = child(cx, cid)?;
            quota(cx, c, set)
        }
        Command::Send { cid, text } => {
            let c = child(cx, cid)?;
            cx.hv
                .ipc_send(c, text.as_bytes())
                .map_err(fail(Op::Send(c)))?;
            Ok(())
        }
        Command::Recv { from, wait, raw } => {
            let from = from.as_ref().map(|f| child(cx, f)).transpose()?;
            recv(cx, from, *wait, *raw)
        }
        Command::Events { follow } => events(cx, *follow),
        Command::Peek { cid, gpa, len } => {
            let c = child(cx, cid)?;
            let mut buf = vec![0u8; *len as usize];
            cx.hv
                .child_mem_read(c, *gpa, &mut buf)
                .map_err(fail(Op::ChildMem(c)))?;
            cx.out
                .write_all(format::hex_dump(*gpa, &buf).as_bytes())
                .map_err(write_err)
        }
        Command::Poke { cid, gpa, bytes } => {
            let c = child(cx, cid)?;
            cx.hv
                .child_mem_write(c, *gpa, bytes)
                .map_err(fail(Op::ChildMem(c)))?;
            writeln!(
                cx.out,
                "wrote {} bytes into CID {c} at {gpa:#x}",
                bytes.len()
            )
            .map_err(write_err)
        }
    }
}

/// The CID `c` stands for (see [`resolve`]).
fn child(cx: &mut Ctx<'_>, c: &ChildRef) -> Result<u64, Failure> {
    resolve(cx.hv, cx.names, c)
}

/// A child-only scalar call, then `CID n <done>`.
fn simple(cx: &mut Ctx<'_>, fid: usize, a: [u64; 2], op: Op, done: &str) -> Result<(), Failure> {
    cx.hv.scalar(fid, [a[0], a[1], 0, 0, 0]).map_err(fail(op))?;
    writeln!(cx.out, "CID {} {done}", a[0]).map_err(write_err)
}

fn info(cx: &mut Ctx<'_>, host: bool, json: bool) -> Result<(), Failure> {
    let text = if host {
        let h = cx.hv.hv_info().map_err(fail(Op::Query))?;
        if json {
            format::hv_info_json(&h)
        } else {
            format::hv_info_text(&h)
        }
    } else {
        let i = cx.hv.vm_info(None).map_err(fail(Op::Query))?;
        if json {
            format::info_json(&i)
        } else {
            format::info_text(&i)
        }
    };
    cx.out.write_all(text.as_bytes()).map_err(write_err)
}

fn list(cx: &mut Ctx<'_>, json: bool) -> Result<(), Failure> {
    let (cids, count) = live_children(cx.hv)?;
    let rows: Vec<Row<'_>> = cids
        .iter()
        .map(|&cid| Row {
            cid,
            name: cx.names.get(cid),
            info: cx.hv.vm_info(Some(cid)),
            devices: cx.backends.devices(cid).map(|d| ChildDevices {
                names: d
                    .names
                    .iter()
                    .map(|n| crate::backend::shown_device(n, cid))
                    .collect(),
                ..d
            }),
        })
        .collect();
    let text = if json {
        format::list_json(&rows)
    } else {
        format::list_text(&rows)
    };
    cx.out.write_all(text.as_bytes()).map_err(write_err)?;
    if count > cids.len() as u64 {
        writeln!(cx.err, "dsx: showing {} of {count} children", cids.len()).map_err(write_err)?;
    }
    Ok(())
}

/// The bytes SPAWN is given: the image itself, or a DSXPAYLD container with the image,
/// initrd and command line when either of the last two is wanted (SPAWN has one image
/// range and no other way to carry them).
pub fn spawn_image(
    image: Vec<u8>,
    initrd: Option<&[u8]>,
    cmdline: Option<&str>,
) -> Result<Vec<u8>, String> {
    if initrd.is_none() && cmdline.is_none() {
        return Ok(image);
    }
    diosix_core::payload::encode(&diosix_core::payload::PayloadSpec {
        kernel: &image,
        initrd,
        cmdline,
        vcpus: 0,
        ram_mib: 0,
    })
    .map_err(|e| format!("cannot pack the image: {e}"))
}

/// Where `run` looks for an IMAGE or `--initrd` given as a bare name (no `/`), after
/// the current directory: the Root VM's disk (mounted there when present), then the
/// guest Linux every Linux VM carries.
pub const IMAGE_DIRS: &[&str] = &["/var/lib/diosix", "/usr/share/diosix/guests"];

/// The file `run` reads for `name`: a path with a `/` as given; a bare name as given
/// (relative to the current directory) if that file exists, else the first
/// `dirs/name` that exists. The error names every place tried.
pub fn resolve_image(name: &str, dirs: &[&Path]) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let tried: Vec<PathBuf> = std::iter::once(PathBuf::from(name))
        .chain(dirs.iter().map(|d| d.join(name)))
        .collect();
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let places: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "cannot find {name}: tried {} (give a path with a `/` to use it as is)",
        places.join(", ")
    ))
}

/// Reads IMAGE and `initrd` (each found as [`resolve_image`] says) and packs them with
/// `cmdline` as [`spawn_image`] does; refuses what the driver cannot pass (64 MiB).
fn read_image(
    cx: &Ctx<'_>,
    image: &str,
    initrd: Option<&str>,
    cmdline: Option<&str>,
) -> Result<Vec<u8>, Failure> {
    let dirs: Vec<&Path> = IMAGE_DIRS.iter().map(Path::new).collect();
    let read = |name: &str| {
        let path = resolve_image(name, &dirs).map_err(Failure::new)?;
        let path = path.to_string_lossy();
        (cx.read_file)(&path).map_err(|e| Failure::new(format!("cannot read {path}: {e}")))
    };
    let kernel = read(image)?;
    if kernel.is_empty() {
        return Err(Failure::new(format!("{image} is empty")));
    }
    let initrd = initrd.map(read).transpose()?;
    let packed = spawn_image(kernel, initrd.as_deref(), cmdline).map_err(Failure::new)?;
    if packed.len() > crate::dev::SPAWN_MAX_IMAGE {
        return Err(Failure::new(format!(
            "the image{} is {}; the driver can pass at most {} to the hypervisor",
            if initrd.is_some() || cmdline.is_some() {
                " (packed with its initrd and command line)"
            } else {
                ""
            },
            format::human_bytes(packed.len() as u64),
            format::human_bytes(crate::dev::SPAWN_MAX_IMAGE as u64)
        )));
    }
    Ok(packed)
}

/// The devices `run`'s options ask for, in SPAWN's order: the disks as given (each
/// path made absolute and free of symbolic links, as the backend runs in `/` and `dsx
/// list` shows it; the same file twice is refused), then the network card, then the
/// entropy device.
fn run_devices(o: &RunOpts) -> Result<Vec<DeviceArg>, Failure> {
    let mut devices = Vec::new();
    for d in &o.disks {
        let path = std::fs::canonicalize(&d.path)
            .map_err(|e| Failure::new(format!("disk {}: {e}", d.path)))?;
        let Some(path) = path.to_str().filter(|p| !p.contains('\n')) else {
            return Err(Failure::new(format!(
                "disk {}: its path must be UTF-8 without a line break",
                d.path
            )));
        };
        let same = |a: &DeviceArg| matches!(a, DeviceArg::Blk { path: p, .. } if p == path);
        if devices.iter().any(same) {
            return Err(Failure::new(format!(
                "disk {}: given twice ({path})",
                d.path
            )));
        }
        devices.push(DeviceArg::Blk {
            path: path.to_string(),
            read_only: d.read_only,
        });
    }
    if let Some(port) = o.net {
        devices.push(DeviceArg::Net {
            open: port == NetPort::Open,
        });
    }
    if o.rng {
        devices.push(DeviceArg::Rng);
    }
    Ok(devices)
}

/// The CID this VM's next child will get, as far as `dsx` can tell (the hypervisor
/// gives CIDs in creation order, never twice, and does not say which comes next):
/// above every live child and every CID `dsx` recorded ([`Backends::cid_hint`]). Never
/// more than the CID SPAWN then gives; less when a child was created by something
/// else, or a CID was spent on a SPAWN the hypervisor could not build.
fn next_cid_guess(cx: &mut Ctx<'_>) -> Result<u64, Failure> {
    let (live, _) = live_children(cx.hv)?;
    Ok(live
        .iter()
        .map(|c| c.saturating_add(1))
        .chain([cx.backends.cid_hint(), cid::FIRST_CHILD])
        .max()
        .unwrap_or(cid::FIRST_CHILD))
}

/// Terminates child `cid`, which `run` could not give what was asked, and says why.
fn undo_run(cx: &mut Ctx<'_>, cid: u64, why: &str) -> Failure {
    let killed = cx.hv.scalar(ext::FID_EXIT, [cid, 0, 0, 0, 0]);
    cx.backends.forget(cid);
    Failure::new(format!(
        "{why}; {}",
        match killed {
            Ok(_) => format!("CID {cid} was terminated"),
            Err(k) => format!(
                "and terminating it failed too ({}): `dsx kill {cid}`",
                format::error_message(Op::Kill(cid), k)
            ),
        }
    ))
}

fn run(cx: &mut Ctx<'_>, o: &RunOpts) -> Result<(), Failure> {
    if o.trusted && (o.rng || o.net.is_some() || !o.disks.is_empty()) {
        return Err(Failure::new(
            "a trusted child cannot have virtio devices (--disk, --net, --rng): its host \
             devices may sit where their windows would go",
        ));
    }
    let devices = run_devices(o)?;
    let net = o.net.is_some();
    // A network card's MAC and the child's address (on its command line) come from
    // its CID, which SPAWN gives: guessed now, mended after SPAWN if the guess was
    // wrong.
    let (guess, subnet) = if net {
        let subnet = cx.backends.net_support().map_err(Failure::new)?;
        (next_cid_guess(cx)?, subnet)
    } else {
        (0, crate::net::Subnet::FIRST)
    };
    // Each forwarded port free now (the backend binds it once the child exists).
    for f in &o.forwards {
        cx.backends.port_free(f.port).map_err(Failure::new)?;
    }
    // Each device checked as far as it can be before the child exists (a disk: its
    // file opened as its backend will open it, locked and measured, then closed again
    // before the backend starts).
    let mut decls = devices
        .iter()
        .map(|d| d.declare(guess))
        .collect::<Result<Vec<DeviceDecl>, String>>()
        .map_err(Failure::new)?;
    // The backend's arguments: the devices, then the port forwards.
    let args: Vec<String> = devices
        .iter()
        .map(DeviceArg::to_arg)
        .chain(o.forwards.iter().map(|f| f.to_arg()))
        .collect();
    let names: Vec<&str> = args.iter().map(String::as_str).collect();
    check_name_free(cx, o.name.as_deref())?;
    let cmdline = |cid: u64| match net {
        true => Some(crate::net::with_cmdline(o.cmdline.as_deref(), subnet, cid)),
        false => o.cmdline.clone(),
    };
    let packed = read_image(cx, &o.image, o.initrd.as_deref(), cmdline(guess).as_deref())?;
    let dtb = o
        .dtb
        .as_deref()
        .map(|path| {
            (cx.read_file)(path).map_err(|e| Failure::new(format!("cannot read {path}: {e}")))
        })
        .transpose()?;
    if packed.len() as u64 > o.ram {
        return Err(Failure::new(format!(
            "the image ({}) does not fit in --ram {}",
            format::human_bytes(packed.len() as u64),
            format::human_bytes(o.ram)
        )));
    }
    if dtb
        .as_ref()
        .is_some_and(|d| d.len() > crate::dev::SPAWN_MAX_DTB)
    {
        return Err(Failure::new(format!(
            "the device tree is larger than {}",
            format::human_bytes(crate::dev::SPAWN_MAX_DTB as u64)
        )));
    }
    let priority = match o.prio {
        Some(p) => p,
        // The caller's own priority: a child at most as important as its parent by
        // default, and always within the caller's ceiling.
        None => cx
            .hv
            .vm_info(None)
            .map_err(fail(Op::Spawn))?
            .priority
            .max(1),
    };
    let mut fl = 0;
    if o.trusted {
        fl |= flags::SPAWN_TRUSTED;
    }
    if o.paused {
        fl |= flags::SPAWN_PAUSED;
    }
    let args = SpawnArgs {
        size: SpawnArgs::SIZE as u32,
        flags: fl,
        cid: 0,
        ram_pages: o.ram / 4096,
        vcpus: o.vcpus,
        priority,
        ..SpawnArgs::default()
    };
    let cid = cx
        .hv
        .spawn(&args, &packed, dtb.as_deref(), &decls)
        .map_err(fail(Op::Spawn))?;
    cx.backends.note_cid(cid);
    // Not kept in memory while the backend runs (or copied into it).
    drop(packed);
    if net && cid != guess {
        // Another CID than guessed: the child is built again under its own (SPAWN
        // with `cid` replaces a child, keeping its CID), with its own MAC and address,
        // before any backend serves it.
        let mend = |cx: &mut Ctx<'_>, decls: &mut Vec<DeviceDecl>| -> Result<(), String> {
            for (d, decl) in devices.iter().zip(decls.iter_mut()) {
                if let DeviceArg::Net { .. } = d {
                    *decl = crate::net::decl(cid)?;
                }
            }
            let packed = read_image(cx, &o.image, o.initrd.as_deref(), cmdline(cid).as_deref())
                .map_err(|f| f.message)?;
            let again = SpawnArgs { cid, ..args };
            match cx.hv.spawn(&again, &packed, dtb.as_deref(), decls) {
                Ok(c) if c == cid => Ok(()),
                Ok(c) => Err(format!("SPAWN answered CID {c}")),
                Err(e) => Err(format::error_message(Op::Spawn, e)),
            }
        };
        if let Err(e) = mend(cx, &mut decls) {
            return Err(undo_run(
                cx,
                cid,
                &format!("cannot give CID {cid} its network: {e}"),
            ));
        }
    }
    drop(dtb);
    if names.is_empty() {
        cx.backends.forget(cid);
    } else if let Err(e) = cx.backends.start(cid, &names) {
        // A child whose devices nobody serves is not what was asked for.
        return Err(undo_run(
            cx,
            cid,
            &format!("cannot start the device backend of CID {cid}: {e}"),
        ));
    }
    set_name(cx, cid, o.name.as_deref())?;
    writeln!(
        cx.out,
        "started CID {cid}{}",
        if o.paused { " (paused)" } else { "" }
    )
    .map_err(write_err)
}

/// Empties the names file (in a FORK clone); failing to is only a warning.
fn forget_names(cx: &mut Ctx<'_>) -> Result<(), Failure> {
    if let Err(e) = cx.names.clear() {
        writeln!(cx.err, "dsx: warning: cannot clear the names file: {e}").map_err(write_err)?;
    }
    Ok(())
}

/// Records `name` for `cid` (`run --name`, `load --name`); failing to save it is only
/// a warning.
fn set_name(cx: &mut Ctx<'_>, cid: u64, name: Option<&str>) -> Result<(), Failure> {
    if let Some(name) = name {
        if let Err(e) = cx.names.set(cid, name) {
            writeln!(cx.err, "dsx: warning: cannot save the name {name}: {e}")
                .map_err(write_err)?;
        }
    }
    Ok(())
}

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The most RAM, in whole MiB, that EXEC of an image of `image_len` bytes could accept
/// within a quota of `quota_pages` (RAM + page tables + the kept image), or `None` if
/// not even 1 MiB that holds the image could. The hypervisor also charges the RAM's
/// page tables and the image's, so the answer is only where to start: `load` steps
/// down 1 MiB at each DENIED from there. Every larger amount would be refused anyway
/// (RAM + the image's own pages alone would exceed the quota), so starting here finds
/// the same amount as starting from the whole quota, without staging the image again
/// for each refusal that was certain.
pub fn exec_ram_start(quota_pages: u64, image_len: u64) -> Option<u64> {
    let image_pages = image_len.div_ceil(PAGE);
    let top = quota_pages.saturating_sub(image_pages).saturating_mul(PAGE) / MIB * MIB;
    (top >= exec_ram_floor(image_len)).then_some(top)
}

/// The least RAM EXEC takes for an image of `image_len` bytes (it must hold the
/// image), in whole MiB.
fn exec_ram_floor(image_len: u64) -> u64 {
    image_len.div_ceil(MIB).max(1) * MIB
}

/// The exit code `load`'s clone ends with when it cannot become the image: the SBI
/// error's number (DENIED = 4, INVALID_PARAM = 3 ...), or 1000 + the errno of a driver
/// refusal; never 0.
pub fn load_exit_code(e: CallError) -> u64 {
    match e {
        CallError::Sbi(code) => code.unsigned_abs().max(1),
        CallError::Os(errno) => 1000 + u64::from(errno.unsigned_abs()),
    }
}

/// `dsx load`: read and pack the image here, then FORK (without a snapshot; trusted
/// only if this VM is). The parent reports the clone's CID; the clone drops its trust
/// and becomes the image (see [`become_image`]), or ends itself.
fn load(cx: &mut Ctx<'_>, o: &LoadOpts) -> Result<(), Failure> {
    check_name_free(cx, o.name.as_deref())?;
    let image = read_image(cx, &o.image, o.initrd.as_deref(), o.cmdline.as_deref())?;
    if let Some(ram) = o.ram {
        if image.len() as u64 > ram {
            return Err(Failure::new(format!(
                "the image ({}) does not fit in --ram {}",
                format::human_bytes(image.len() as u64),
                format::human_bytes(ram)
            )));
        }
    }
    let me = cx.hv.vm_info(None).map_err(fail(Op::Query))?;
    // The clone gets this VM's own vCPUs as its quota: refuse more before forking.
    if o.vcpus > me.own_vcpus {
        return Err(Failure::new(format!(
            "--vcpus {}: the clone has this VM's {} vCPU(s) at most",
            o.vcpus, me.own_vcpus
        )));
    }
    let mut fl = flags::FORK_NO_SNAPSHOT;
    if me.flags & flags::INFO_TRUSTED == 0 {
        fl |= flags::FORK_UNTRUSTED;
    }
    let child = cx
        .hv
        .scalar(ext::FID_FORK, [fl, 0, 0, 0, 0])
        .map_err(fail(Op::Fork))?;
    if child != 0 {
        cx.backends.note_cid(child);
        set_name(cx, child, o.name.as_deref())?;
        return writeln!(
            cx.out,
            "loading {} into CID {child} (it drops its hardware trust first)",
            o.image
        )
        .map_err(write_err);
    }
    // The clone: a copy of this whole VM, devices excepted. Nothing but calls to the
    // hypervisor until the image takes over (no disk, no network: it holds neither).
    let Err((why, code)) = become_image(cx, &image, o) else {
        // The hypervisor answered success and came back (it never does).
        return Ok(());
    };
    let _ = writeln!(
        cx.err,
        "dsx load: this clone cannot become the image: {}",
        why.message
    );
    let _ = cx.err.flush();
    match cx.hv.scalar(ext::FID_EXIT, [cid::SELF, code, 0, 0, 0]) {
        Ok(_) => Err(why),
        Err(e) => Err(Failure::new(format!(
            "{}; ending this clone failed too: {}",
            why.message,
            format::error_message(Op::Kill(cid::SELF), e)
        ))),
    }
}

/// In `load`'s clone: DROP_TRUST, then EXEC of `image` with `--ram`, or with the most
/// whole MiB its quota accepts (from [`exec_ram_start`] down, 1 MiB per DENIED: a
/// refusal changes nothing). Returns only if EXEC did not happen: why, and the exit
/// code for the clone.
fn become_image(cx: &mut Ctx<'_>, image: &[u8], o: &LoadOpts) -> Result<(), (Failure, u64)> {
    let failed = |op: Op| move |e: CallError| (fail(op)(e), load_exit_code(e));
    cx.hv
        .scalar(ext::FID_DROP_TRUST, [0; 5])
        .map_err(failed(Op::DropTrust(None)))?;
    let me = cx.hv.vm_info(None).map_err(failed(Op::Query))?;
    let denied = error::DENIED as i64;
    if o.vcpus > me.vcpus_max {
        return Err((
            Failure::new(format!(
                "--vcpus {} is beyond this clone's quota of {}",
                o.vcpus, me.vcpus_max
            )),
            denied.unsigned_abs(),
        ));
    }
    let len = image.len() as u64;
    let (mut ram, floor) = match o.ram {
        Some(r) => (r, r),
        None => match exec_ram_start(me.ram_pages_max, len) {
            Some(top) => (top, exec_ram_floor(len)),
            None => {
                return Err((
                    Failure::new(format!(
                        "the image ({}) leaves no RAM within this clone's quota ({})",
                        format::human_bytes(len),
                        format::human_bytes(me.ram_pages_max.saturating_mul(PAGE))
                    )),
                    denied.unsigned_abs(),
                ))
            }
        },
    };
    loop {
        let args = SpawnArgs {
            size: SpawnArgs::SIZE as u32,
            flags: 0,
            cid: 0,
            ram_pages: ram / PAGE,
            vcpus: o.vcpus,
            priority: me.priority.max(1),
            ..SpawnArgs::default()
        };
        match cx.hv.exec(&args, image) {
            Ok(()) => return Ok(()),
            Err(CallError::Sbi(c)) if c == denied && ram > floor => ram -= MIB,
            Err(e) => return Err(failed(Op::Exec)(e)),
        }
    }
}

fn quota(cx: &mut Ctx<'_>, cid: u64, set: &QuotaSet) -> Result<(), Failure> {
    if *set == QuotaSet::default() {
        // Nothing to set: show the quota instead.
        let info = cx.hv.vm_info(Some(cid)).map_err(fail(Op::ChildInfo(cid)))?;
        let text = format!(
            "{} quota: RAM {} (uses {}), vCPUs {} (uses {}), priority up to {}, depth {}, \
             descendants {}\n",
            if cid == 1 {
                "this VM's".to_string()
            } else {
                format!("CID {cid}'s")
            },
            format::human_bytes(info.ram_pages_max.saturating_mul(4096)),
            format::human_bytes(info.ram_pages_used.saturating_mul(4096)),
            info.vcpus_max,
            info.vcpus_used,
            info.max_priority,
            info.max_depth,
            info.max_descendants
        );
        return cx.out.write_all(text.as_bytes()).map_err(write_err);
    }
    let mut a = QuotaArgs {
        size: QuotaArgs::SIZE as u32,
        cid,
        ..QuotaArgs::default()
    };
    // Every field given is applied, 0 included: the QUOTA_SET_* bit says so.
    if let Some(r) = set.ram {
        a.ram_pages = r / 4096;
        a.flags |= flags::QUOTA_SET_RAM;
    }
    if let Some(v) = set.vcpus {
        a.vcpus = v;
        a.flags |= flags::QUOTA_SET_VCPUS;
    }
    if let Some(p) = set.prio {
        a.max_priority = p;
        a.flags |= flags::QUOTA_SET_PRIORITY;
    }
    if let Some(d) = set.depth {
        a.max_depth = d;
        a.flags |= flags::QUOTA_SET_DEPTH;
    }
    if let Some(d) = set.descendants {
        a.max_descendants = d;
        a.flags |= flags::QUOTA_SET_DESCENDANTS;
    }
    cx.hv.set_quota(&a).map_err(fail(Op::Quota(cid)))?;
    writeln!(
        cx.out,
        "quota of {} updated",
        if cid == 1 {
            "this VM".to_string()
        } else {
            format!("CID {cid}")
        }
    )
    .map_err(write_err)
}

/// Waits between polls, until an event may be waiting or the poll interval ends;
/// false once a test's poll budget is used up.
fn keep_polling(cx: &mut Ctx<'_>, polls: &mut u64) -> bool {
    *polls += 1;
    if cx.max_polls.is_some_and(|m| *polls > m) {
        return false;
    }
    let interval = cx.poll_interval;
    cx.hv.wait_for_events(interval);
    true
}

fn recv(cx: &mut Ctx<'_>, from: Option<u64>, wait: bool, raw: bool) -> Result<(), Failure> {
    let mut buf = vec![0u8; limits::IPC_MAX_MESSAGE];
    let mut polls = 0;
    loop {
        let got = cx
            .hv
            .ipc_recv(from.unwrap_or(0), from.is_some(), &mut buf)
            .map_err(fail(Op::Recv))?;
        if let Some((sender, len)) = got {
            let msg = &buf[..len];
            let res = if raw {
                cx.out.write_all(msg)
            } else {
                writeln!(
                    cx.out,
                    "from {}: {}",
                    format::peer_name(sender),
                    String::from_utf8_lossy(msg)
                )
            };
            return res.map_err(write_err);
        }
        if !wait || !keep_polling(cx, &mut polls) {
            return Err(Failure::new("no message waiting"));
        }
    }
}

fn events(cx: &mut Ctx<'_>, follow: bool) -> Result<(), Failure> {
    let mut any = false;
    let mut polls = 0;
    loop {
        match cx.hv.poll_event().map_err(fail(Op::Query))? {
            Some(e) => {
                any = true;
                let name = cx.names.get(e.cid).filter(|_| e.cid >= 2);
                writeln!(cx.out, "{}", format::event_text(&e, name)).map_err(write_err)?;
                cx.out.flush().map_err(write_err)?;
            }
            None if follow && keep_polling(cx, &mut polls) => {}
            None => break,
        }
    }
    if !any && !follow {
        writeln!(cx.out, "no events").map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend;
    use crate::cli::parse;
    use crate::hv::CallResult;
    use diosix_abi::{error, event, state, Event, HvInfo, VmInfo};
    use std::collections::VecDeque;

    /// A hypervisor with a few children, recording what it was asked.
    #[derive(Default)]
    struct Fake {
        children: Vec<u64>,
        calls: Vec<String>,
        spawned: Vec<(SpawnArgs, Vec<u8>)>,
        /// The devices of each SPAWN.
        spawned_devices: Vec<Vec<DeviceDecl>>,
        quotas: Vec<QuotaArgs>,
        events: VecDeque<Event>,
        messages: VecDeque<(u64, Vec<u8>)>,
        unsupported: bool,
        /// FORK returns 0: this is the clone.
        clone: bool,
        /// This VM has hardware trust (until DROP_TRUST).
        trusted: bool,
        /// This VM's RAM quota in pages (RAM + tables + kept image).
        quota_pages: u64,
        /// Every EXEC asked: its arguments and image.
        execs: Vec<(SpawnArgs, Vec<u8>)>,
        /// EXEC fails with this instead of checking the quota.
        exec_error: Option<CallError>,
        /// Exit codes of EXIT of this VM itself.
        exits: Vec<u64>,
        /// The CID SPAWN gives a new child (0: 7); a replacement keeps its own.
        spawn_cid: u64,
    }

    /// What the fake charges for `pages` of memory mapped through page tables: one
    /// leaf table per 2 MiB, one per 1 GiB and a root (as the hypervisor roughly does).
    fn with_tables(pages: u64) -> u64 {
        pages + pages.div_ceil(512) + pages.div_ceil(512 * 512) + 1
    }

    impl Fake {
        fn info(cid: u64) -> VmInfo {
            VmInfo {
                size: VmInfo::SIZE as u32,
                cid,
                priority: 5,
                max_priority: 255,
                own_ram_pages: 1024,
                own_vcpus: 1,
                state: state::RUNNING,
                ..VmInfo::default()
            }
        }

        /// This VM itself.
        fn me(&self) -> VmInfo {
            VmInfo {
                flags: if self.trusted { flags::INFO_TRUSTED } else { 0 },
                ram_pages_max: self.quota_pages,
                vcpus_max: 2,
                own_vcpus: 2,
                ..Fake::info(1)
            }
        }

        fn check(&self) -> CallResult<()> {
            if self.unsupported {
                Err(CallError::Sbi(error::NOT_SUPPORTED as i64))
            } else {
                Ok(())
            }
        }
    }

    impl Hypervisor for Fake {
        fn scalar(&mut self, fid: usize, args: [u64; 5]) -> CallResult<u64> {
            self.check()?;
            self.calls.push(format!("{fid} {}", args[0]));
            match fid {
                ext::FID_FORK => Ok(if self.clone { 0 } else { 9 }),
                ext::FID_DROP_TRUST => {
                    self.trusted = false;
                    Ok(0)
                }
                ext::FID_EXIT if args[0] == cid::SELF => {
                    self.exits.push(args[1]);
                    Ok(0)
                }
                _ if self.children.contains(&args[0]) => Ok(0),
                _ => Err(CallError::Sbi(error::INVALID_PARAM as i64)),
            }
        }
        fn spawn(
            &mut self,
            a: &SpawnArgs,
            image: &[u8],
            _: Option<&[u8]>,
            devices: &[DeviceDecl],
        ) -> CallResult<u64> {
            self.check()?;
            self.spawned.push((*a, image.to_vec()));
            self.spawned_devices.push(devices.to_vec());
            Ok(match (a.cid, self.spawn_cid) {
                (0, 0) => 7,
                (0, c) | (c, _) => c,
            })
        }
        fn device_state(
            &mut self,
            _: u64,
            _: u64,
        ) -> CallResult<(diosix_abi::DeviceState, Vec<diosix_abi::QueueState>)> {
            Err(CallError::Sbi(error::NOT_SUPPORTED as i64))
        }
        fn exec(&mut self, a: &SpawnArgs, image: &[u8]) -> CallResult<()> {
            self.check()?;
            self.calls.push(format!("exec {}", a.ram_pages));
            self.execs.push((*a, image.to_vec()));
            if let Some(e) = self.exec_error {
                return Err(e);
            }
            let len = image.len() as u64;
            if a.cid != 0 || a.flags != 0 || a.ram_pages == 0 || len > a.ram_pages * 4096 {
                return Err(CallError::Sbi(error::INVALID_PARAM as i64));
            }
            let charge = with_tables(a.ram_pages) + with_tables(len.div_ceil(4096));
            if charge > self.quota_pages || a.vcpus > 2 {
                return Err(CallError::Sbi(error::DENIED as i64));
            }
            Ok(())
        }
        fn vm_info(&mut self, cid: Option<u64>) -> CallResult<VmInfo> {
            self.check()?;
            match cid {
                None | Some(1) => Ok(self.me()),
                Some(c) if self.children.contains(&c) => Ok(Fake::info(c)),
                _ => Err(CallError::Sbi(error::INVALID_PARAM as i64)),
            }
        }
        fn hv_info(&mut self) -> CallResult<HvInfo> {
            self.check()?;
            Ok(HvInfo {
                host_cores: 2,
                ..HvInfo::default()
            })
        }
        fn set_quota(&mut self, a: &QuotaArgs) -> CallResult<()> {
            self.check()?;
            self.quotas.push(*a);
            Ok(())
        }
        fn ipc_send(&mut self, cid: u64, data: &[u8]) -> CallResult<()> {
            self.check()?;
            self.calls
                .push(format!("send {cid} {}", String::from_utf8_lossy(data)));
            Ok(())
        }
        fn ipc_recv(
            &mut self,
            _: u64,
            _: bool,
            buf: &mut [u8],
        ) -> CallResult<Option<(u64, usize)>> {
            self.check()?;
            Ok(self.messages.pop_front().map(|(c, m)| {
                buf[..m.len()].copy_from_slice(&m);
                (c, m.len())
            }))
        }
        fn poll_event(&mut self) -> CallResult<Option<Event>> {
            self.check()?;
            Ok(self.events.pop_front())
        }
        fn console_read(&mut self, _: u64, _: &mut [u8]) -> CallResult<usize> {
            Ok(0)
        }
        fn console_write(&mut self, _: u64, d: &[u8]) -> CallResult<usize> {
            Ok(d.len())
        }
        fn child_mem_read(&mut self, cid: u64, gpa: u64, buf: &mut [u8]) -> CallResult<()> {
            self.check()?;
            if !self.children.contains(&cid) {
                return Err(CallError::Sbi(error::INVALID_PARAM as i64));
            }
            self.calls
                .push(format!("peek {cid} {gpa:#x} {}", buf.len()));
            for (i, b) in buf.iter_mut().enumerate() {
                *b = b'A' + (i % 26) as u8;
            }
            Ok(())
        }
        fn child_mem_write(&mut self, cid: u64, gpa: u64, d: &[u8]) -> CallResult<()> {
            self.check()?;
            self.calls.push(format!("poke {cid} {gpa:#x} {d:02x?}"));
            Ok(())
        }
        fn list_children(&mut self, out: &mut [u64]) -> CallResult<u64> {
            self.check()?;
            for (o, c) in out.iter_mut().zip(&self.children) {
                *o = *c;
            }
            Ok(self.children.len() as u64)
        }
    }

    /// Backends as the tests see them: what was started, stopped, forgotten.
    #[derive(Default)]
    struct FakeBackends {
        started: Vec<(u64, Vec<String>)>,
        stopped: Vec<u64>,
        forgotten: Vec<u64>,
        forgot_all: bool,
        /// `start` fails with this.
        fail: Option<String>,
        /// What `devices` answers.
        devices: BTreeMap<u64, backend::ChildDevices>,
        /// What `net_support` answers, if not `Ok`.
        no_net: Option<String>,
        /// Ports `port_free` says are in use.
        busy_ports: Vec<u16>,
        /// What `cid_hint` answers.
        hint: u64,
        /// Every CID noted.
        noted: Vec<u64>,
    }

    impl Backends for FakeBackends {
        fn start(&mut self, cid: u64, devices: &[&str]) -> Result<u32, String> {
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            self.started
                .push((cid, devices.iter().map(|d| d.to_string()).collect()));
            Ok(100 + cid as u32)
        }
        fn stop(&mut self, cid: u64) -> Result<Option<u32>, String> {
            self.stopped.push(cid);
            Ok(None)
        }
        fn devices(&self, cid: u64) -> Option<backend::ChildDevices> {
            self.devices.get(&cid).cloned()
        }
        fn forget(&mut self, cid: u64) {
            self.forgotten.push(cid);
        }
        fn forget_all(&mut self) -> Result<(), String> {
            self.forgot_all = true;
            Ok(())
        }
        fn net_support(&self) -> Result<crate::net::Subnet, String> {
            self.no_net
                .clone()
                .map_or(Ok(crate::net::Subnet::FIRST), Err)
        }
        fn port_free(&self, port: u16) -> Result<(), String> {
            if self.busy_ports.contains(&port) {
                Err(format!(
                    "cannot forward port {port}: it is in use in this VM"
                ))
            } else {
                Ok(())
            }
        }
        fn cid_hint(&self) -> u64 {
            self.hint
        }
        fn note_cid(&mut self, cid: u64) {
            self.noted.push(cid);
        }
    }

    fn files(path: &str) -> std::io::Result<Vec<u8>> {
        match path {
            "/img" | crate::cli::GUEST_IMAGE => Ok(vec![0x13; 8192]),
            crate::cli::GUEST_INITRD => Ok(vec![2; 100]),
            "/rd" => Ok(vec![1; 100]),
            "/big" => Ok(vec![0; crate::dev::SPAWN_MAX_IMAGE + 1]),
            _ => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    /// Runs `args` against `fake`; returns (result, stdout, stderr).
    fn go(fake: &mut Fake, names: &mut Names, args: &str) -> (Result<(), Failure>, String, String) {
        go_with(fake, names, &mut FakeBackends::default(), args)
    }

    /// [`go`] with the backends `b`.
    fn go_with(
        fake: &mut Fake,
        names: &mut Names,
        b: &mut FakeBackends,
        args: &str,
    ) -> (Result<(), Failure>, String, String) {
        let v: Vec<String> = args.split_whitespace().map(String::from).collect();
        let cmd = parse(&v).expect("valid arguments");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut cx = Ctx {
            hv: fake,
            out: &mut out,
            err: &mut err,
            names,
            backends: b,
            read_file: &files,
            poll_interval: Duration::ZERO,
            max_polls: Some(3),
        };
        let r = execute(&cmd, &mut cx);
        (
            r,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn not_supported_is_reported_cleanly() {
        let mut f = Fake {
            unsupported: true,
            ..Fake::default()
        };
        let (r, out, _) = go(&mut f, &mut Names::default(), "info");
        assert_eq!(
            r.unwrap_err().message,
            "the hypervisor does not support this call (SBI NOT_SUPPORTED)"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn peek_prints_hex_and_poke_writes() {
        let mut f = Fake {
            children: vec![2],
            ..Fake::default()
        };
        let mut n = Names::default();
        let (r, out, _) = go(&mut f, &mut n, "peek 2 0x1000 18");
        assert!(r.is_ok());
        assert_eq!(
            out,
            "0x0000000000001000  41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP\n\
             0x0000000000001010  51 52                                            QR\n"
        );
        let (r, out, _) = go(&mut f, &mut n, "poke 2 0x2000 c0de");
        assert_eq!(
            (r, out.as_str()),
            (Ok(()), "wrote 2 bytes into CID 2 at 0x2000\n")
        );
        assert!(f.calls.contains(&"poke 2 0x2000 [c0, de]".to_string()));
        let (r, _, _) = go(&mut f, &mut n, "peek 5 0 1");
        assert_eq!(r.unwrap_err().message, "CID 5 is not a child of this VM");
    }

    #[test]
    fn child_verbs_name_the_cid() {
        let mut f = Fake {
            children: vec![2, 3],
            ..Fake::default()
        };
        let mut n = Names::default();
        let (r, out, _) = go(&mut f, &mut n, "stop 2");
        assert_eq!((r, out.as_str()), (Ok(()), "CID 2 stopped\n"));
        let (r, _, _) = go(&mut f, &mut n, "kill 7");
        assert_eq!(r.unwrap_err().message, "CID 7 is not a child of this VM");
        let (r, _, _) = go(&mut f, &mut n, "kill 3 --code 4");
        assert!(r.is_ok());
        assert_eq!(f.calls.last().unwrap(), &format!("{} 3", ext::FID_EXIT));
    }

    #[test]
    fn run_spawns_and_names() {
        let mut f = Fake::default();
        let mut n = Names::default();
        let (r, out, _) = go(&mut f, &mut n, "run /img --ram 1M --vcpus 2 --name db");
        assert_eq!((r, out.as_str()), (Ok(()), "started CID 7\n"));
        let (a, img) = &f.spawned[0];
        assert_eq!((a.ram_pages, a.vcpus, a.priority, a.flags), (256, 2, 5, 0));
        assert_eq!(img.len(), 8192);
        assert_eq!(n.get(7), Some("db"));

        // With an initrd, a payload that the core crate parses back.
        let (r, _, _) = go(
            &mut f,
            &mut n,
            "run /img --initrd /rd --cmdline x --trusted --paused",
        );
        assert!(r.is_ok());
        let (a, img) = &f.spawned[1];
        assert_eq!(a.flags, flags::SPAWN_TRUSTED | flags::SPAWN_PAUSED);
        let p = diosix_core::payload::Payload::parse(img).unwrap();
        assert_eq!(
            (p.kernel.len(), p.initrd.unwrap().len(), p.cmdline),
            (8192, 100, Some("x"))
        );

        let (r, _, _) = go(&mut f, &mut n, "run /big");
        assert!(r.unwrap_err().message.contains("at most 64 MiB"));
        let (r, _, _) = go(&mut f, &mut n, "run /nope");
        assert!(r.unwrap_err().message.starts_with("cannot read /nope"));
        let (r, _, _) = go(&mut f, &mut n, "run /img --ram 4K");
        assert!(r.unwrap_err().message.contains("does not fit"));
        assert_eq!(f.spawned.len(), 2);
    }

    #[test]
    fn run_rng_declares_the_device_and_starts_its_backend() {
        let mut f = Fake::default();
        let mut b = FakeBackends::default();
        let mut n = Names::default();
        let (r, out, _) = go_with(&mut f, &mut n, &mut b, "run /img --ram 1M --rng --name r");
        assert_eq!((r, out.as_str()), (Ok(()), "started CID 7\n"));
        let d = &f.spawned_devices[0];
        assert_eq!(d.len(), 1);
        assert_eq!(
            (
                d[0].spec.device_id,
                d[0].spec.queue_count,
                d[0].spec.queue_max
            ),
            (4, 1, 64)
        );
        assert_eq!(b.started, [(7, vec!["rng".to_string()])]);
        assert_eq!(n.get(7), Some("r"));
        // Without devices: none declared, stale files of that CID forgotten.
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "run /img --ram 1M");
        assert!(r.is_ok());
        assert!(f.spawned_devices[1].is_empty());
        assert_eq!((b.started.len(), b.forgotten.as_slice()), (1, &[7][..]));
        // Trusted children get no devices: refused before anything is spawned.
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "run /img --ram 1M --rng --trusted");
        assert!(r
            .unwrap_err()
            .message
            .starts_with("a trusted child cannot have"));
        assert_eq!(f.spawned.len(), 2);
        // A backend that cannot start: the child is terminated again, and unnamed.
        f.children = vec![7];
        b.fail = Some("no fork".into());
        let (r, out, _) = go_with(&mut f, &mut n, &mut b, "run /img --ram 1M --rng --name s");
        assert_eq!(
            r.unwrap_err().message,
            "cannot start the device backend of CID 7: no fork; CID 7 was terminated"
        );
        assert!(out.is_empty());
        assert_eq!(f.calls.last().unwrap(), &format!("{} 7", ext::FID_EXIT));
        assert_eq!(n.get(7), Some("r"));
    }

    /// Whether `image` (a packed SPAWN image) holds `text`.
    fn holds(image: &[u8], text: &str) -> bool {
        image.windows(text.len()).any(|w| w == text.as_bytes())
    }

    #[test]
    fn run_net_declares_the_card_and_gives_the_child_its_address() {
        // CIDs 2 to 6 were given: the next is 7, which SPAWN gives too.
        let mut f = Fake {
            children: vec![3, 6],
            ..Fake::default()
        };
        let mut b = FakeBackends::default();
        let mut n = Names::default();
        let (r, out, _) = go_with(&mut f, &mut n, &mut b, "run --net --rng --ram 1M");
        assert_eq!((r, out.as_str()), (Ok(()), "started CID 7\n"));
        assert_eq!(f.spawned.len(), 1);
        let d = &f.spawned_devices[0];
        let ids: Vec<u32> = d.iter().map(|d| d.spec.device_id).collect();
        assert_eq!(ids, [1, 4]);
        assert_eq!(d[0].config, [0x52, 0x54, 0, 0x77, 0, 7, 1, 0]);
        assert_eq!((d[0].spec.queue_count, d[0].spec.queue_max), (2, 256));
        // The guest's own command line, and the address after it.
        assert!(holds(
            &f.spawned[0].1,
            "console=hvc0 earlycon=sbi retain_initrd dsx.ip=10.77.0.7/24,10.77.0.1"
        ));
        assert_eq!(b.started, [(7, vec!["net".to_string(), "rng".to_string()])]);
        assert_eq!(b.noted, [7]);
        // --net-open, after the disks, with a command line of the user's.
        let dir = std::env::temp_dir().join(format!("dsx-run-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("a.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let disk = std::fs::canonicalize(disk).unwrap().display().to_string();
        (f.children, f.spawn_cid) = (vec![7], 8);
        let (r, _, _) = go_with(
            &mut f,
            &mut n,
            &mut b,
            &format!("run /img --net-open --cmdline quiet --disk {disk} --ram 1M"),
        );
        assert!(r.is_ok());
        assert_eq!(f.spawned.len(), 2);
        let ids: Vec<u32> = f.spawned_devices[1]
            .iter()
            .map(|d| d.spec.device_id)
            .collect();
        assert_eq!(ids, [2, 1]);
        assert_eq!(f.spawned_devices[1][1].config[5], 8);
        assert!(holds(
            &f.spawned[1].1,
            "quiet dsx.ip=10.77.0.8/24,10.77.0.1"
        ));
        assert_eq!(
            b.started[1],
            (8, vec![format!("blk:{disk}"), "net-open".to_string()])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn run_net_mends_a_wrong_guess() {
        // Nothing tells this VM that CIDs 2 to 6 were given: it guesses 2, SPAWN gives
        // 7, and the child is built again as CID 7 with its own MAC and address.
        let mut f = Fake::default();
        let mut b = FakeBackends::default();
        let mut n = Names::default();
        let (r, out, _) = go_with(&mut f, &mut n, &mut b, "run /img --net --ram 1M --paused");
        assert_eq!((r, out.as_str()), (Ok(()), "started CID 7 (paused)\n"));
        assert_eq!(f.spawned.len(), 2);
        assert_eq!((f.spawned[0].0.cid, f.spawned[1].0.cid), (0, 7));
        assert_eq!(f.spawned[1].0.flags, flags::SPAWN_PAUSED);
        assert_eq!(f.spawned_devices[0][0].config[5], 2);
        assert_eq!(f.spawned_devices[1][0].config[5], 7);
        assert!(holds(&f.spawned[0].1, "dsx.ip=10.77.0.2/24,10.77.0.1"));
        assert!(holds(&f.spawned[1].1, "dsx.ip=10.77.0.7/24,10.77.0.1"));
        assert_eq!(b.started, [(7, vec!["net".to_string()])]);
        // What dsx recorded counts: it guesses 9, and the user's dsx.ip= stands.
        b.hint = 9;
        f.spawn_cid = 9;
        let (r, _, _) = go_with(
            &mut f,
            &mut n,
            &mut b,
            "run /img --net --ram 1M --cmdline dsx.ip=10.77.0.99/24,10.77.0.1",
        );
        assert!(r.is_ok());
        assert_eq!(f.spawned.len(), 3);
        assert!(holds(&f.spawned[2].1, "dsx.ip=10.77.0.99/24,10.77.0.1"));
        assert!(!holds(&f.spawned[2].1, "10.77.0.9/"));
        // A CID beyond 254 has no address: known before SPAWN, refused then ...
        b.hint = 255;
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "run /img --net --ram 1M");
        assert!(r.unwrap_err().message.contains("must be 2 to 254"));
        assert_eq!(f.spawned.len(), 3);
        // ... or found after it: the child is terminated again.
        b.hint = 0;
        f.spawn_cid = 300;
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "run /img --net --ram 1M");
        let m = r.unwrap_err().message;
        assert!(
            m.starts_with("cannot give CID 300 its network: a child with a network"),
            "{m}"
        );
        assert_eq!(f.calls.last().unwrap(), &format!("{} 300", ext::FID_EXIT));
        assert_eq!(b.started.len(), 2);
    }

    #[test]
    fn run_net_is_refused_without_tun_or_trust() {
        let mut f = Fake::default();
        let mut b = FakeBackends {
            no_net: Some("this VM's kernel has no TUN support".into()),
            ..FakeBackends::default()
        };
        let mut n = Names::default();
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "run /img --net");
        assert_eq!(
            r.unwrap_err().message,
            "this VM's kernel has no TUN support"
        );
        b.no_net = None;
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "run /img --net-open --trusted");
        assert!(r
            .unwrap_err()
            .message
            .starts_with("a trusted child cannot have virtio devices (--disk, --net, --rng)"));
        assert!(f.spawned.is_empty() && b.started.is_empty());
    }

    #[test]
    fn run_forward_checks_the_ports_and_gives_them_to_the_backend() {
        let mut f = Fake {
            children: vec![6],
            ..Fake::default()
        };
        let mut b = FakeBackends {
            busy_ports: vec![80],
            ..FakeBackends::default()
        };
        let mut n = Names::default();
        // A port in use: refused before SPAWN, nothing created.
        let (r, _, _) = go_with(
            &mut f,
            &mut n,
            &mut b,
            "run /img --net --forward 8081:80 --forward 80:80 --ram 1M",
        );
        assert_eq!(
            r.unwrap_err().message,
            "cannot forward port 80: it is in use in this VM"
        );
        assert!(f.spawned.is_empty() && b.started.is_empty());
        // Free ports: the backend gets the devices, then the forwards.
        let (r, out, _) = go_with(
            &mut f,
            &mut n,
            &mut b,
            "run /img --net-open --rng --forward 8081:80 --forward 2222:22 --ram 1M",
        );
        assert_eq!((r, out.as_str()), (Ok(()), "started CID 7\n"));
        assert_eq!(
            b.started,
            [(
                7,
                ["net-open", "rng", "fwd:8081:80", "fwd:2222:22"]
                    .map(String::from)
                    .to_vec()
            )]
        );
        // Not devices: SPAWN declares the card and rng only.
        assert_eq!(f.spawned_devices[0].len(), 2);
        // `dsx list` shows them as `fwd:PORT->CHILDPORT`.
        b.devices.insert(
            7,
            backend::ChildDevices {
                names: b.started[0].1.clone(),
                backend: Some(77),
            },
        );
        f.children = vec![6, 7];
        let (_, out, _) = go_with(&mut f, &mut n, &mut b, "list");
        assert!(
            out.lines()
                .nth(2)
                .unwrap()
                .ends_with(" net:dsxtap7(open),rng,fwd:8081->80,fwd:2222->22"),
            "{out}"
        );
        let (_, out, _) = go_with(&mut f, &mut n, &mut b, "list --json");
        assert!(out.contains(
            "\"devices\":[\"net:dsxtap7(open)\",\"rng\",\"fwd:8081->80\",\"fwd:2222->22\"],\
             \"backend_pid\":77"
        ));
    }

    #[test]
    fn list_shows_a_network_card_as_its_tap() {
        let mut f = Fake {
            children: vec![4],
            ..Fake::default()
        };
        let mut b = FakeBackends::default();
        b.devices.insert(
            4,
            backend::ChildDevices {
                names: vec!["blk:/a.img".into(), "net-open".into()],
                backend: None,
            },
        );
        let mut n = Names::default();
        let (_, out, _) = go_with(&mut f, &mut n, &mut b, "list");
        assert!(out
            .lines()
            .nth(1)
            .unwrap()
            .ends_with(" blk:/a.img,net:dsxtap4(open)(down)"));
        let (_, out, _) = go_with(&mut f, &mut n, &mut b, "list --json");
        assert!(out.contains("\"devices\":[\"blk:/a.img\",\"net:dsxtap4(open)\"]"));
        b.devices.get_mut(&4).unwrap().names[1] = "net".into();
        let (_, out, _) = go_with(&mut f, &mut n, &mut b, "list");
        assert!(out
            .lines()
            .nth(1)
            .unwrap()
            .ends_with(" blk:/a.img,net:dsxtap4(down)"));
    }

    #[test]
    fn run_disk_checks_the_files_and_declares_disks_first() {
        let dir = std::env::temp_dir().join(format!("dsx-run-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, c, small) = (dir.join("a.img"), dir.join("c.img"), dir.join("small.img"));
        std::fs::write(&a, vec![0u8; 4096 + 100]).unwrap();
        std::fs::write(&c, vec![0u8; 512]).unwrap();
        std::fs::write(&small, vec![0u8; 100]).unwrap();
        let (a, c, small, d) = (
            a.display().to_string(),
            c.display().to_string(),
            small.display().to_string(),
            dir.display().to_string(),
        );
        let canon = |p: &str| std::fs::canonicalize(p).unwrap().display().to_string();
        let mut f = Fake::default();
        let mut b = FakeBackends::default();
        let mut n = Names::default();
        let (r, out, _) = go_with(
            &mut f,
            &mut n,
            &mut b,
            &format!("run /img --ram 1M --rng --disk {a} --disk-ro {c}"),
        );
        assert_eq!((r, out.as_str()), (Ok(()), "started CID 7\n"));
        let decl = &f.spawned_devices[0];
        let ids: Vec<u32> = decl.iter().map(|d| d.spec.device_id).collect();
        assert_eq!(ids, [2, 2, 4]);
        assert_eq!(decl[0].config[..8], 8u64.to_le_bytes());
        assert_eq!(decl[1].config[..8], 1u64.to_le_bytes());
        assert_eq!(decl[0].spec.features & (1 << 5), 0);
        assert_ne!(decl[1].spec.features & (1 << 5), 0);
        assert_eq!(
            b.started,
            [(
                7,
                vec![
                    format!("blk:{}", canon(&a)),
                    format!("blk-ro:{}", canon(&c)),
                    "rng".to_string()
                ]
            )]
        );
        // Refused before SPAWN: a missing file, a directory, a file shorter than a
        // sector, the same file twice, a trusted child.
        for (args, want) in [
            (format!("--disk {d}/none.img"), "No such file"),
            (
                format!("--disk {d}"),
                "not a regular file or a block device",
            ),
            (format!("--disk {small}"), "less than one 512-byte sector"),
            (format!("--disk {a} --disk-ro {d}/./a.img"), "given twice"),
            (
                format!("--disk {a} --trusted"),
                "a trusted child cannot have",
            ),
        ] {
            let (r, _, _) = go_with(&mut f, &mut n, &mut b, &format!("run /img {args}"));
            let m = r.unwrap_err().message;
            assert!(m.contains(want), "{args}: {m}");
        }
        assert_eq!((f.spawned.len(), b.started.len()), (1, 1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn kill_stops_the_backend_and_list_shows_devices() {
        let mut f = Fake {
            children: vec![2, 3],
            ..Fake::default()
        };
        let mut b = FakeBackends::default();
        b.devices.insert(
            3,
            backend::ChildDevices {
                names: vec!["blk:/var/lib/diosix/a.img".into(), "rng".into()],
                backend: Some(42),
            },
        );
        let mut n = Names::default();
        let (r, out, _) = go_with(&mut f, &mut n, &mut b, "list");
        assert!(r.is_ok());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("DEVICES"));
        assert!(lines[1].ends_with(" -"));
        assert!(lines[2].ends_with(" blk:/var/lib/diosix/a.img,rng"));
        let (_, out, _) = go_with(&mut f, &mut n, &mut b, "list --json");
        assert!(
            out.contains("\"devices\":[\"blk:/var/lib/diosix/a.img\",\"rng\"],\"backend_pid\":42")
        );
        let (r, out, _) = go_with(&mut f, &mut n, &mut b, "kill 3");
        assert_eq!((r, out.as_str()), (Ok(()), "CID 3 terminated\n"));
        assert_eq!(b.stopped, [3]);
        // A refused kill leaves the backend alone.
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "kill 9");
        assert!(r.is_err());
        assert_eq!(b.stopped, [3]);
        // A FORK clone stops its copies of the backends.
        f.clone = true;
        let (r, _, _) = go_with(&mut f, &mut n, &mut b, "fork");
        assert!(r.is_ok() && b.forgot_all);
    }

    #[test]
    fn bare_names_are_looked_up_in_order() {
        let base = std::env::temp_dir().join(format!("dsx-resolve-{}", std::process::id()));
        let (disk, guests) = (base.join("disk"), base.join("guests"));
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::create_dir_all(&guests).unwrap();
        // A name no current directory has: `cargo test` runs in tools/dsx.
        let name = format!("dsx-resolve-image-{}", std::process::id());
        std::fs::write(guests.join(&name), b"g").unwrap();
        let dirs = [disk.as_path(), guests.as_path()];
        assert_eq!(resolve_image(&name, &dirs), Ok(guests.join(&name)));
        // The disk comes before the guests' directory...
        std::fs::write(disk.join(&name), b"d").unwrap();
        assert_eq!(resolve_image(&name, &dirs), Ok(disk.join(&name)));
        // ...and the current directory before both (tools/dsx has its Cargo.toml).
        std::fs::write(disk.join("Cargo.toml"), b"d").unwrap();
        assert_eq!(
            resolve_image("Cargo.toml", &dirs),
            Ok(PathBuf::from("Cargo.toml"))
        );
        // A directory is not an image.
        std::fs::create_dir_all(guests.join("sub")).unwrap();
        assert!(resolve_image("sub", &dirs).is_err());
        // A path with a `/` is used as given, whether it exists or not.
        assert_eq!(resolve_image("./nope", &dirs), Ok(PathBuf::from("./nope")));
        assert_eq!(resolve_image("/img", &dirs), Ok(PathBuf::from("/img")));
        // Not found: every place tried, in order.
        let err = resolve_image("missing", &dirs).unwrap_err();
        assert_eq!(
            err,
            format!(
                "cannot find missing: tried missing, {}, {} (give a path with a `/` to use \
                 it as is)",
                disk.join("missing").display(),
                guests.join("missing").display()
            )
        );
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn run_reports_where_it_looked() {
        let mut f = Fake::default();
        let (r, _, _) = go(&mut f, &mut Names::default(), "run no-such-dsx-image");
        assert_eq!(
            r.unwrap_err().message,
            "cannot find no-such-dsx-image: tried no-such-dsx-image, \
             /var/lib/diosix/no-such-dsx-image, /usr/share/diosix/guests/no-such-dsx-image \
             (give a path with a `/` to use it as is)"
        );
        let (r, _, _) = go(
            &mut f,
            &mut Names::default(),
            "run /img --initrd no-such-rd",
        );
        assert!(r
            .unwrap_err()
            .message
            .starts_with("cannot find no-such-rd: tried no-such-rd, /var/lib/diosix/"));
        assert!(f.spawned.is_empty());
    }

    #[test]
    fn names_stand_for_cids() {
        let mut f = Fake {
            children: vec![2, 5],
            ..Fake::default()
        };
        let mut n = Names::default();
        n.set(5, "web").unwrap();
        // A stale name (CID 3 is gone) is never resolved.
        n.set(3, "old").unwrap();
        let (r, out, _) = go(&mut f, &mut n, "stop web");
        assert_eq!((r, out.as_str()), (Ok(()), "CID 5 stopped\n"));
        let (r, _, _) = go(&mut f, &mut n, "kill web --code 4");
        assert!(r.is_ok());
        assert_eq!(f.calls.last().unwrap(), &format!("{} 5", ext::FID_EXIT));
        let (r, _, _) = go(&mut f, &mut n, "send web hello");
        assert!(r.is_ok());
        let (r, _, _) = go(&mut f, &mut n, "reboot old");
        assert_eq!(
            r.unwrap_err().message,
            "no child named `old` (`dsx list` shows the children and their names)"
        );
        let (r, _, _) = go(&mut f, &mut n, "stop nobody");
        assert!(r
            .unwrap_err()
            .message
            .starts_with("no child named `nobody`"));
        // Names are unique among the live children: a second `web` is refused before
        // anything is spawned, a reused stale name is fine.
        let (r, _, _) = go(&mut f, &mut n, "run /img --ram 1M --name web");
        assert_eq!(
            r.unwrap_err().message,
            "CID 5 is already named `web`: names are unique among this VM's children"
        );
        assert!(f.spawned.is_empty());
        let (r, _, _) = go(&mut f, &mut n, "run /img --ram 1M --name old");
        assert!(r.is_ok());
        assert_eq!(n.get(7), Some("old"));
        // Events name the child.
        f.events.push_back(Event {
            size: 32,
            kind: event::CHILD_TERMINATED,
            cid: 5,
            exit_code: 4,
            dropped: 0,
            reserved: 0,
        });
        let (_, out, _) = go(&mut f, &mut n, "events");
        assert_eq!(out, "CID 5 (web) terminated (exit code 4)\n");
    }

    /// A FORK clone starts with no children, so it drops its copy of the names.
    #[test]
    fn fork_clone_forgets_names() {
        let mut f = Fake {
            clone: true,
            ..Fake::default()
        };
        let mut n = Names::default();
        n.set(2, "web").unwrap();
        let (r, _, _) = go(&mut f, &mut n, "fork");
        assert!(r.is_ok());
        assert_eq!(n.get(2), None);
    }

    #[test]
    fn list_shows_children_with_names() {
        let mut f = Fake {
            children: vec![2, 5],
            ..Fake::default()
        };
        let mut n = Names::default();
        n.set(5, "web").unwrap();
        let (r, out, _) = go(&mut f, &mut n, "list");
        assert!(r.is_ok());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("5    web"));
        let (_, out, _) = go(&mut f, &mut n, "list --json");
        assert!(out.starts_with("[{\"cid\":2,\"name\":null"));
    }

    #[test]
    fn quota_sets_flags_for_every_given_field() {
        let mut f = Fake::default();
        let (r, out, _) = go(&mut f, &mut Names::default(), "quota self --ram 0 --prio 9");
        assert_eq!((r, out.as_str()), (Ok(()), "quota of this VM updated\n"));
        let q = f.quotas[0];
        assert_eq!(q.cid, 1);
        assert_eq!(q.flags, flags::QUOTA_SET_RAM | flags::QUOTA_SET_PRIORITY);
        assert_eq!((q.ram_pages, q.max_priority), (0, 9));
        let (r, out, _) = go(&mut f, &mut Names::default(), "quota self");
        assert!(r.is_ok() && out.starts_with("this VM's quota: RAM"));
    }

    #[test]
    fn messages_and_events() {
        let mut f = Fake::default();
        let mut n = Names::default();
        let (r, _, _) = go(&mut f, &mut n, "recv");
        assert_eq!(r.unwrap_err().message, "no message waiting");
        let (r, _, _) = go(&mut f, &mut n, "recv --wait");
        assert!(r.is_err(), "gives up after the test's poll budget");
        f.messages.push_back((0, b"hello".to_vec()));
        let (r, out, _) = go(&mut f, &mut n, "recv");
        assert_eq!((r, out.as_str()), (Ok(()), "from the parent: hello\n"));
        let (_, out, _) = go(&mut f, &mut n, "send parent hi");
        assert!(out.is_empty());
        assert_eq!(f.calls.last().unwrap(), "send 0 hi");

        let (_, out, _) = go(&mut f, &mut n, "events");
        assert_eq!(out, "no events\n");
        f.events.push_back(Event {
            kind: event::CHILD_STOPPED,
            cid: 2,
            ..Event::default()
        });
        let (_, out, _) = go(&mut f, &mut n, "events --follow");
        assert_eq!(out, "CID 2 stopped\n");
    }

    #[test]
    fn fork_and_info() {
        let mut f = Fake::default();
        let (_, out, _) = go(&mut f, &mut Names::default(), "fork");
        assert_eq!(out, "forked: the child is CID 9\n");
        let (status, _, _) = go(
            &mut f,
            &mut Names::default(),
            "fork --no-snapshot --untrusted",
        );
        assert!(status.is_ok());
        let fork = ext::FID_FORK;
        assert_eq!(f.calls, [format!("{fork} 0"), format!("{fork} 3")]);
        let (_, out, _) = go(&mut f, &mut Names::default(), "info --host");
        assert!(out.contains("harts        2"));
        let (_, out, _) = go(&mut f, &mut Names::default(), "info --json");
        assert!(out.starts_with("{\"cid\":1"));
    }

    #[test]
    fn load_parent_forks_and_names_the_clone() {
        let mut f = Fake {
            trusted: true,
            ..Fake::default()
        };
        let mut n = Names::default();
        let (r, out, _) = go(&mut f, &mut n, "load /img --initrd /rd --name ld");
        assert_eq!(
            (r, out.as_str()),
            (
                Ok(()),
                "loading /img into CID 9 (it drops its hardware trust first)\n"
            )
        );
        assert_eq!(n.get(9), Some("ld"));
        // A trusted VM's clone keeps its trust until it drops it itself; no snapshot.
        // The parent itself neither drops its trust nor calls EXEC.
        let fork = ext::FID_FORK;
        assert_eq!(f.calls, [format!("{fork} {}", flags::FORK_NO_SNAPSHOT)]);
        assert!(f.trusted && f.execs.is_empty());

        // An untrusted VM forks an untrusted clone (FORK would refuse a trusted one).
        let mut f = Fake::default();
        let (r, _, _) = go(&mut f, &mut Names::default(), "load /img");
        assert!(r.is_ok());
        assert_eq!(f.calls, [format!("{fork} {}", flags::FORK_ALL)]);

        // What cannot work is refused before anything is forked.
        let mut f = Fake::default();
        let mut n = Names::default();
        let (r, _, _) = go(&mut f, &mut n, "load /img --ram 4K");
        assert!(r
            .unwrap_err()
            .message
            .contains("does not fit in --ram 4 KiB"));
        let (r, _, _) = go(&mut f, &mut n, "load /img --vcpus 3");
        assert_eq!(
            r.unwrap_err().message,
            "--vcpus 3: the clone has this VM's 2 vCPU(s) at most"
        );
        let (r, _, _) = go(&mut f, &mut n, "load /big");
        assert!(r.unwrap_err().message.contains("at most 64 MiB"));
        let (r, _, _) = go(&mut f, &mut n, "load /nope");
        assert!(r.unwrap_err().message.starts_with("cannot read /nope"));
        assert!(f.calls.iter().all(|c| !c.starts_with(&format!("{fork} "))));
    }

    #[test]
    fn load_clone_drops_trust_and_becomes_the_image() {
        // 128 MiB of quota and a little, as a clone of a 128 MiB VM has: not enough
        // for 128 MiB's page tables and the kept image besides.
        let quota = 32768 + 20;
        let mut f = Fake {
            clone: true,
            trusted: true,
            quota_pages: quota,
            ..Fake::default()
        };
        let mut n = Names::default();
        let (r, out, err) = go(
            &mut f,
            &mut n,
            "load /img --initrd /rd --cmdline x --name ld",
        );
        assert_eq!((r, out.as_str(), err.as_str()), (Ok(()), "", ""));
        assert!(!f.trusted, "trust is dropped before EXEC");
        let drop = format!("{} 0", ext::FID_DROP_TRUST);
        assert_eq!(f.calls[1], drop, "right after FORK");
        // From the quota less the image's pages, 1 MiB down per DENIED...
        let tried: Vec<u64> = f.execs.iter().map(|(a, _)| a.ram_pages).collect();
        let start = exec_ram_start(quota, f.execs[0].1.len() as u64).unwrap();
        assert_eq!(tried[0], start / 4096);
        assert!(
            tried.len() > 1,
            "the fake charges page tables too: {tried:?}"
        );
        assert!(tried.windows(2).all(|w| w[0] - w[1] == 256));
        // ...to the largest whole MiB that fits, which is what starting from the whole
        // quota would have found.
        let last = *tried.last().unwrap();
        let image_pages = (f.execs[0].1.len() as u64).div_ceil(4096);
        assert!(with_tables(last) + with_tables(image_pages) <= quota);
        assert!(with_tables(last + 256) + with_tables(image_pages) > quota);
        let (a, img) = f.execs.last().unwrap();
        assert_eq!((a.cid, a.flags, a.vcpus, a.priority), (0, 0, 1, 5));
        let p = diosix_core::payload::Payload::parse(img).unwrap();
        assert_eq!(
            (p.kernel.len(), p.initrd.unwrap().len(), p.cmdline),
            (8192, 100, Some("x"))
        );
        assert!(f.exits.is_empty());
        // The name belongs to the parent's list: the clone records nothing.
        assert!(n.map.is_empty());

        // --ram and --vcpus are taken as given: one EXEC.
        let mut f = Fake {
            clone: true,
            quota_pages: quota,
            ..Fake::default()
        };
        let (r, _, _) = go(
            &mut f,
            &mut Names::default(),
            "load /img --ram 64M --vcpus 2",
        );
        assert!(r.is_ok());
        assert_eq!(f.execs.len(), 1);
        assert_eq!((f.execs[0].0.ram_pages, f.execs[0].0.vcpus), (16384, 2));
    }

    #[test]
    fn load_clone_that_cannot_exec_ends_itself() {
        let quota = 32768 + 80;
        let clone = |exec_error| Fake {
            clone: true,
            quota_pages: quota,
            exec_error,
            ..Fake::default()
        };
        // Any refusal but DENIED: no second try; the clone says why and exits.
        let mut f = clone(Some(CallError::Sbi(error::INVALID_PARAM as i64)));
        let (r, _, err) = go(&mut f, &mut Names::default(), "load /img");
        let msg = r.unwrap_err().message;
        assert!(msg.starts_with("the hypervisor refused the image"), "{msg}");
        assert_eq!(
            err,
            format!("dsx load: this clone cannot become the image: {msg}\n")
        );
        assert_eq!((f.execs.len(), f.exits.as_slice()), (1, &[3][..]));
        // A driver refusal: 1000 + errno.
        let mut f = clone(Some(CallError::Os(libc::ENOMEM)));
        let (r, _, _) = go(&mut f, &mut Names::default(), "load /img");
        assert!(r.is_err());
        assert_eq!(f.exits, [1000 + libc::ENOMEM as u64]);
        // --ram given and DENIED: no step-down.
        let mut f = clone(None);
        let (r, _, _) = go(&mut f, &mut Names::default(), "load /img --ram 129M");
        assert!(r.unwrap_err().message.starts_with("denied: the image"));
        assert_eq!((f.execs.len(), f.exits.as_slice()), (1, &[4][..]));
        // DENIED down to the least RAM that holds the image: then it gives up.
        let mut f = clone(Some(CallError::Sbi(error::DENIED as i64)));
        let (r, _, _) = go(&mut f, &mut Names::default(), "load /img");
        assert!(r.is_err());
        let last = f.execs.last().unwrap().0.ram_pages;
        assert_eq!((last, f.exits.as_slice()), (256, &[4][..]));
        // A quota the image alone fills: no EXEC at all.
        let mut f = Fake {
            clone: true,
            quota_pages: 100,
            ..Fake::default()
        };
        let (r, _, _) = go(&mut f, &mut Names::default(), "load /img");
        assert!(r.unwrap_err().message.contains("leaves no RAM"));
        assert_eq!((f.execs.len(), f.exits.as_slice()), (0, &[4][..]));
        // More vCPUs than its quota (GET_INFO's vcpus_max is 2 in the fake) is no use.
        // (The parent checks own vCPUs; the clone checks its quota.)
        assert_eq!(load_exit_code(CallError::Sbi(0)), 1);
    }

    #[test]
    fn exec_ram_start_leaves_room_for_the_image() {
        // 128 MiB + 80 pages of quota, an 8 KiB image: 128 MiB.
        assert_eq!(exec_ram_start(32768 + 80, 8192), Some(128 << 20));
        // Exactly 128 MiB: the image's 2 pages push it below, to 127 MiB.
        assert_eq!(exec_ram_start(32768, 8192), Some(127 << 20));
        // The RAM must hold the image: a 3 MiB image needs 3 MiB of RAM.
        assert_eq!(exec_ram_start(768 + 768, 3 << 20), Some(3 << 20));
        assert_eq!(exec_ram_start(768 + 767, 3 << 20), None);
        assert_eq!(exec_ram_start(0, 1), None);
    }

    #[test]
    fn names_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("dsx-names-{}", std::process::id()));
        let path = dir.join("names");
        let mut n = Names::load(Some(path.clone()));
        n.set(3, "a").unwrap();
        n.set(12, "b").unwrap();
        let again = Names::load(Some(path));
        assert_eq!(
            (again.get(3), again.get(12), again.get(4)),
            (Some("a"), Some("b"), None)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
