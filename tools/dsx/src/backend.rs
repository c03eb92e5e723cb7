//! Device backends: the parent's side of a child's virtio devices (see
//! `docs/devices.md` and `docs/dsx.md`).
//!
//! `dsx run --disk FILE --net --rng` SPAWNs the child with the devices' [`DeviceDecl`]s
//! and starts a backend process for it ([`Backends::start`]): `dsx backend CID
//! DEVICE...` (each DEVICE a [`DeviceArg`]: `blk:/path`, `blk-ro:/path`, `net`,
//! `net-open`, `rng`), in a session of its own, outliving `dsx run`. The backend opens
//! `/dev/diosix` once per device (each file its own doorbell: see
//! `DIOSIX_IOC_DEVICE_STATE`), and loops: DEVICE_STATE of each device, its new requests
//! served through the device's [`VirtioDevice`] (the queues walked by [`crate::virtq`]
//! over CHILD_MEM_READ / CHILD_MEM_WRITE), DEVICE_RAISE, then `poll(2)` until a doorbell
//! rings or a descriptor a device waits on becomes readable ([`VirtioDevice::wait_fds`]:
//! a network card's TAP), or one a [`PollSource`] polls (a port forward's sockets,
//! [`crate::fwd`]) is ready, at most [`WAIT`]. It ends when DEVICE_STATE says the child
//! is gone (INVALID_PARAM).
//!
//! A child that breaks the queue rules (descriptors outside its RAM, a looping
//! chain, an index beyond the queue, an indirect descriptor, more buffers than the
//! queue holds) gets NEEDS_RESET on that device, which is then left alone until its
//! driver resets it. [`Backend`] and [`run_loop`] work over the [`Hypervisor`] trait,
//! so all of this is tested on the build host against a fake child.

use std::ffi::CString;
use std::fmt::Display;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diosix_abi::devices::{RAISE_NEEDS_RESET, RAISE_USED_BUFFER};
use diosix_abi::{error, QueueState};

use crate::fwd::Forward;
use crate::hv::{CallError, DeviceDecl, Hypervisor};
use crate::virtq::{Child, ChildMem, Desc, Queue, QueueError, AVAIL_F_NO_INTERRUPT};

/// The device status bits a backend looks at (virtio 1.2, section 2.1).
pub mod status {
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u32 = 4;
    /// The device asked to be reset (DEVICE_RAISE NEEDS_RESET).
    pub const NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// How long the backend sleeps without a doorbell before it looks again.
pub const WAIT: Duration = Duration::from_millis(1000);

/// Most log lines one backend writes (a child that keeps breaking its device must
/// not fill this VM's tmpfs).
const LOG_LINES_MAX: u32 = 100;

/// A descriptor to `poll(2)` and the events wanted (`POLLIN`, `POLLOUT`); in what a
/// wait returns, the events that came (`revents`: `POLLERR` and `POLLHUP` too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollFd {
    /// The descriptor.
    pub fd: RawFd,
    /// The events wanted, or that came.
    pub events: i16,
}

impl PollFd {
    /// `fd`, for input.
    pub fn readable(fd: RawFd) -> PollFd {
        PollFd {
            fd,
            events: libc::POLLIN,
        }
    }
}

/// Something besides the devices that the backend's loop serves (a child's port
/// forwards, [`crate::fwd::Forwarder`]): before each wait it says which descriptors
/// to poll for what, after it it is given what came, every pass (also one that only
/// timed out).
pub trait PollSource {
    /// The descriptors to poll in the next wait, with the events wanted (0: errors
    /// and hang-ups only).
    fn interest(&self) -> Vec<PollFd>;
    /// What the wait reported: every descriptor with something to report, its own
    /// among others', with its `revents`. Its work must be bounded: the devices wait.
    fn service(&mut self, ready: &[PollFd]);
    /// What it has to say in the log since it was last asked.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Its counters, for the log when the backend ends.
    fn summary(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One kind of virtio device a backend serves.
pub trait VirtioDevice {
    /// The virtio device ID (1 = network, 2 = block, 4 = entropy).
    fn device_id(&self) -> u32;
    /// Its kind in the log (`blk`, `net`, `rng`).
    fn name(&self) -> &'static str;
    /// What SPAWN declares for it.
    fn decl(&self) -> DeviceDecl;
    /// It is device `index` of child `cid` (called once, before any request).
    fn attach(&mut self, _cid: u64, _index: usize) {}
    /// Serves one request: the descriptor `chain` (already checked: in bounds, every
    /// buffer in the child's RAM) taken from queue `queue`. Returns the bytes written
    /// into the chain's device-writable buffers (the used element's length).
    fn serve_queue(
        &mut self,
        queue: usize,
        chain: &[Desc],
        mem: &mut dyn ChildMem,
    ) -> Result<u32, QueueError>;
    /// Serves the requests of one pass in order (every chain checked as for
    /// [`VirtioDevice::serve_queue`]); returns the used lengths of the first requests,
    /// in order: usually all of them, but a device may leave the rest available for a
    /// later pass (a network card's receive buffers while no frame waits), and then
    /// says in [`VirtioDevice::ready`] and [`VirtioDevice::wait_fds`] when to come
    /// back. A device overrides it to save calls across requests.
    fn serve_batch(
        &mut self,
        queue: usize,
        chains: &[Vec<Desc>],
        mem: &mut dyn ChildMem,
    ) -> Result<Vec<u32>, QueueError> {
        chains
            .iter()
            .map(|c| self.serve_queue(queue, c, mem))
            .collect()
    }
    /// Whether a pass over queue `queue` could serve anything now. A device that left
    /// requests available (see [`VirtioDevice::serve_batch`]) answers false while what
    /// it waits for has not come, which saves reading the queue (two CHILD_MEM_READs)
    /// on every pass; the backend then waits on [`VirtioDevice::wait_fds`] too.
    fn ready(&mut self, _queue: usize) -> bool {
        true
    }
    /// Descriptors whose readability should wake the backend, besides the doorbells,
    /// while the device left requests available (asked only then, and only while the
    /// device is live and not broken, so a descriptor that stays readable cannot
    /// keep the backend spinning on a device it cannot serve).
    fn wait_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// What it has to say in the log since it was last asked (host-side errors).
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Its counters, for the log when the backend ends (`None`: nothing to say).
    fn summary(&self) -> Option<String> {
        None
    }
    /// The device was reset: forget any request in flight.
    fn reset(&mut self) {}
}

/// A device as `run` records it and `backend` takes it: `rng`, `net`, `net-open`,
/// `blk:PATH` or `blk-ro:PATH` (PATH absolute, the rest of the argument whatever it
/// holds, spaces, `:` and `,` included; no line break, as the devices file has one
/// device a line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// virtio-rng.
    Rng,
    /// virtio-net on a TAP device of this VM (`dsxtap<CID>`) on the bridge `dsxbr0`.
    Net {
        /// Its bridge port is not isolated (`net-open`): it reaches the other
        /// children's ports, not only this VM.
        open: bool,
    },
    /// virtio-blk on a file or block device.
    Blk {
        /// Its absolute path in this VM.
        path: String,
        /// Offered read-only (`VIRTIO_BLK_F_RO`; the file opened read-only).
        read_only: bool,
    },
}

/// The forms of DEVICE, for messages.
pub const DEVICE_FORMS: &str = "rng, net, net-open, blk:PATH, blk-ro:PATH";

/// The arguments of `dsx backend CID ARG...` (and the lines of its devices file): the
/// devices ([`DeviceArg`]) in SPAWN's order, and port forwards (`fwd:PORT:CHILDPORT`,
/// [`crate::fwd::Forward`]) anywhere among them. At most
/// [`diosix_abi::devices::MAX_DEVICES`] devices and [`crate::fwd::MAX_FORWARDS`]
/// forwards, each port of this VM forwarded once, and forwards only with a network card
/// (they relay to the child's address on the bridge).
pub fn backend_args(args: &[String]) -> Result<(Vec<DeviceArg>, Vec<Forward>), String> {
    let mut devices = Vec::new();
    let mut forwards: Vec<Forward> = Vec::new();
    for a in args {
        match Forward::parse_arg(a) {
            Some(f) => {
                let f = f?;
                if forwards.iter().any(|g| g.port == f.port) {
                    return Err(format!("`{a}`: port {} is forwarded twice", f.port));
                }
                forwards.push(f);
            }
            None => devices.push(DeviceArg::parse(a)?),
        }
    }
    if devices.len() > diosix_abi::devices::MAX_DEVICES {
        return Err(format!(
            "at most {} devices",
            diosix_abi::devices::MAX_DEVICES
        ));
    }
    if forwards.len() > crate::fwd::MAX_FORWARDS {
        return Err(format!("at most {} forwards", crate::fwd::MAX_FORWARDS));
    }
    if let Some(f) = forwards.first() {
        if !devices.iter().any(|d| matches!(d, DeviceArg::Net { .. })) {
            return Err(format!(
                "`{}`: a forward needs the child's network card (net or net-open): it \
                 relays to the child's address on the bridge",
                f.to_arg()
            ));
        }
    }
    Ok((devices, forwards))
}

impl DeviceArg {
    /// Parses one DEVICE argument.
    pub fn parse(arg: &str) -> Result<DeviceArg, String> {
        let blk = |path: &str, read_only| {
            if !path.starts_with('/') {
                Err(format!("`{arg}`: the disk's path must be absolute"))
            } else if path.contains('\n') {
                Err(format!(
                    "`{arg}`: the disk's path must not hold a line break"
                ))
            } else {
                Ok(DeviceArg::Blk {
                    path: path.to_string(),
                    read_only,
                })
            }
        };
        if arg == "rng" {
            Ok(DeviceArg::Rng)
        } else if arg == "net" || arg == "net-open" {
            Ok(DeviceArg::Net {
                open: arg == "net-open",
            })
        } else if let Some(p) = arg.strip_prefix("blk:") {
            blk(p, false)
        } else if let Some(p) = arg.strip_prefix("blk-ro:") {
            blk(p, true)
        } else {
            Err(format!("unknown device `{arg}` (known: {DEVICE_FORMS})"))
        }
    }

    /// The argument again (what [`DeviceArg::parse`] takes).
    pub fn to_arg(&self) -> String {
        match self {
            DeviceArg::Rng => "rng".into(),
            DeviceArg::Net { open: false } => "net".into(),
            DeviceArg::Net { open: true } => "net-open".into(),
            DeviceArg::Blk {
                path,
                read_only: false,
            } => format!("blk:{path}"),
            DeviceArg::Blk {
                path,
                read_only: true,
            } => format!("blk-ro:{path}"),
        }
    }

    /// The device of child `cid`, ready to serve (a disk's file opened and checked, a
    /// network card's TAP created and put on the bridge).
    pub fn open(&self, cid: u64) -> Result<Box<dyn VirtioDevice>, String> {
        Ok(match self {
            DeviceArg::Rng => Box::new(crate::rng::Rng::new()),
            DeviceArg::Net { open } => Box::new(crate::net::Net::open(
                cid,
                *open,
                crate::net::Subnet::of_this_vm()?,
            )?),
            DeviceArg::Blk { path, read_only } => {
                Box::new(crate::blk::Blk::open(Path::new(path), *read_only)?)
            }
        })
    }

    /// What SPAWN declares for this device of child `cid`, checked as far as it can be
    /// before the child exists: a disk's file opened as its backend will open it
    /// (checked, locked and measured), then closed again; a network card's MAC from
    /// the CID (whether this VM can give it a network at all is
    /// [`Backends::net_support`]'s to say).
    pub fn declare(&self, cid: u64) -> Result<DeviceDecl, String> {
        match self {
            DeviceArg::Net { .. } => crate::net::decl(cid),
            DeviceArg::Rng | DeviceArg::Blk { .. } => self.open(cid).map(|d| d.decl()),
        }
    }
}

/// A device as `dsx list` shows it: as the devices file has it (`blk:/path`, `rng`),
/// except a network card, which shows its TAP: `net:dsxtap5`, `net:dsxtap5(open)`, and
/// a port forward (`fwd:8081:80`), shown `fwd:8081->80`.
pub fn shown_device(name: &str, cid: u64) -> String {
    if let Some(Ok(f)) = Forward::parse_arg(name) {
        return f.shown();
    }
    match DeviceArg::parse(name) {
        Ok(DeviceArg::Net { open }) => format!(
            "net:{}{}",
            crate::net::tap_name(cid),
            if open { "(open)" } else { "" }
        ),
        _ => name.to_string(),
    }
}

/// Where the device is in one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Track {
    /// The next available-ring entry to take.
    next_avail: u16,
    /// The next used-ring entry to fill (what is published once a batch is done).
    used_idx: u16,
    /// False until the first look at a live queue after the backend started: then it
    /// takes over where the used ring stands (a backend restarted by hand).
    synced: bool,
}

impl Track {
    /// A queue set up afresh by its driver: both rings start at 0.
    const FRESH: Track = Track {
        next_avail: 0,
        used_idx: 0,
        synced: true,
    };
}

struct Slot {
    dev: Box<dyn VirtioDevice>,
    queue_max: u32,
    /// The `resets` of the latest DEVICE_STATE (`None` before the first).
    resets: Option<u32>,
    /// NEEDS_RESET was raised: leave the device alone until `resets` moves.
    broken: bool,
    /// In the latest pass the device was live, and left requests available on a
    /// ready queue (or was not [`VirtioDevice::ready`] for them): the backend waits
    /// on its [`VirtioDevice::wait_fds`] too.
    waiting: bool,
    queues: Vec<Track>,
}

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pass {
    /// Used elements were published and the driver wants an interrupt for them.
    raise: bool,
    /// The device left available requests for a later pass.
    left: bool,
    /// The device took at least one request.
    took: bool,
}

/// What one service of a device found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Served what there was (or nothing: not live, broken, no requests).
    Done,
    /// The child is gone: the backend's work is over.
    Gone,
}

/// The devices of one child and where each stands.
pub struct Backend {
    cid: u64,
    slots: Vec<Slot>,
    /// The child's RAM `[start, end)` from GET_CHILD_INFO (`Some(None)`: unknown,
    /// CHILD_MEM's own checks only).
    ram: Option<Option<(u64, u64)>>,
    /// What the loop serves besides the devices ([`Backend::add_source`]).
    sources: Vec<Box<dyn PollSource>>,
    log: Box<dyn Write>,
    logged: u32,
    /// A device took a request, or was reset, since [`Backend::take_progress`].
    progress: bool,
}

impl Backend {
    /// A backend for child `cid`'s `devices`, device *i* being SPAWN's device *i*;
    /// what it has to say goes to `log`.
    pub fn new(cid: u64, devices: Vec<Box<dyn VirtioDevice>>, log: Box<dyn Write>) -> Backend {
        let slots = devices
            .into_iter()
            .enumerate()
            .map(|(i, mut dev)| {
                dev.attach(cid, i);
                let spec = dev.decl().spec;
                Slot {
                    queue_max: spec.queue_max,
                    queues: vec![Track::default(); spec.queue_count as usize],
                    dev,
                    resets: None,
                    broken: false,
                    waiting: false,
                }
            })
            .collect();
        Backend {
            cid,
            slots,
            ram: None,
            sources: Vec::new(),
            log,
            logged: 0,
            progress: false,
        }
    }

    /// Serves `source` in the loop too (its first notes logged at once).
    pub fn add_source(&mut self, mut source: Box<dyn PollSource>) {
        for n in source.take_notes() {
            self.note(n);
        }
        self.sources.push(source);
    }

    /// Everything the loop's wait polls besides the doorbells: the descriptors of
    /// [`Backend::wait_fds`] for input, and what each [`PollSource`] asks for.
    pub fn poll_fds(&self) -> Vec<PollFd> {
        let mut fds: Vec<PollFd> = self.wait_fds().into_iter().map(PollFd::readable).collect();
        for s in &self.sources {
            fds.extend(s.interest());
        }
        fds
    }

    /// Gives each [`PollSource`] what the wait reported (`ready`), and logs what they
    /// have to say.
    pub fn serve_sources(&mut self, ready: &[PollFd]) {
        let mut notes = Vec::new();
        for s in &mut self.sources {
            s.service(ready);
            notes.extend(s.take_notes());
        }
        for n in notes {
            self.note(n);
        }
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True without devices.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The descriptors to wait on besides the doorbells: those of the devices that
    /// left requests available in their latest pass (live, not broken).
    pub fn wait_fds(&self) -> Vec<RawFd> {
        self.slots
            .iter()
            .filter(|s| s.waiting && !s.broken)
            .flat_map(|s| s.dev.wait_fds())
            .collect()
    }

    /// The devices' counters, one line each, then the sources', for the log when the
    /// backend ends.
    pub fn summaries(&self) -> Vec<String> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let sum = s.dev.summary()?;
                Some(format!("device {i} ({}): {sum}", s.dev.name()))
            })
            .chain(self.sources.iter().flat_map(|s| s.summary()))
            .collect()
    }

    /// Writes one log line (at most [`LOG_LINES_MAX`] of them).
    pub fn note(&mut self, msg: impl Display) {
        let line = match self.logged {
            n if n < LOG_LINES_MAX => format!("dsx backend (CID {}): {msg}", self.cid),
            LOG_LINES_MAX => format!(
                "dsx backend (CID {}): further messages suppressed",
                self.cid
            ),
            _ => return,
        };
        self.logged += 1;
        let _ = writeln!(self.log, "{line}");
        let _ = self.log.flush();
    }

    /// The child's RAM, asked once; `Err` if the child is gone.
    fn ram(&mut self, hv: &mut dyn Hypervisor) -> Result<Option<(u64, u64)>, ()> {
        if let Some(r) = self.ram {
            return Ok(r);
        }
        let r = match hv.vm_info(Some(self.cid)) {
            Ok(i) => i
                .own_ram_pages
                .checked_mul(4096)
                .and_then(|len| i.ram_gpa.checked_add(len))
                .map(|end| (i.ram_gpa, end)),
            Err(CallError::Sbi(c)) if c == error::INVALID_PARAM as i64 => return Err(()),
            Err(e) => {
                self.note(format!(
                    "GET_CHILD_INFO failed ({e:?}): buffers checked by CHILD_MEM only"
                ));
                None
            }
        };
        self.ram = Some(r);
        Ok(r)
    }

    /// Whether a device took a request, or was reset, since the last call.
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress)
    }

    /// One pass over device `index`, through `hv`: DEVICE_STATE, then (if the device
    /// is live and not broken) every ready queue's new requests, then DEVICE_RAISE.
    /// `Err` for an answer that means this backend can do nothing (DEVICE_STATE not
    /// supported, a bad buffer address: a driver or hypervisor bug).
    pub fn service(&mut self, index: usize, hv: &mut dyn Hypervisor) -> Result<Service, String> {
        let cid = self.cid;
        let gone = |e: &CallError| *e == CallError::Sbi(error::INVALID_PARAM as i64);
        let (state, queues) = match hv.device_state(cid, index as u64) {
            Ok(s) => s,
            // No such child, or no such device of it (a backend started by hand
            // with the wrong devices): GET_CHILD_INFO tells which.
            Err(e) if gone(&e) => {
                return match hv.vm_info(Some(cid)) {
                    Err(e) if gone(&e) => Ok(Service::Gone),
                    _ => Err(format!("CID {cid} has no device {index}")),
                };
            }
            Err(CallError::Os(errno)) => {
                self.note(format!("DEVICE_STATE of device {index}: errno {errno}"));
                return Ok(Service::Done);
            }
            Err(e) => return Err(format!("DEVICE_STATE of device {index} failed: {e:?}")),
        };
        let Ok(ram) = self.ram(hv) else {
            return Ok(Service::Gone);
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(Service::Done);
        };
        let mut notes = Vec::new();
        if slot.resets != Some(state.resets) {
            // First sight: take over where the used ring stands. A reset: the
            // driver sets the queues up afresh, from index 0.
            let known = slot.resets.is_some();
            if known && slot.broken {
                notes.push(format!(
                    "device {index} was reset by its driver: serving it again"
                ));
            }
            slot.resets = Some(state.resets);
            slot.broken = false;
            self.progress = true;
            slot.dev.reset();
            for t in &mut slot.queues {
                *t = Track {
                    synced: known,
                    ..Track::FRESH
                };
            }
        }
        let live = state.status & status::DRIVER_OK != 0
            && state.status & (status::FAILED | status::NEEDS_RESET) == 0;
        let mut raise = 0;
        slot.waiting = false;
        if !live {
            // Being set up (the queues will be new) or given up on.
            slot.queues.fill(Track::FRESH);
        } else if !slot.broken {
            let mut mem = Child { hv, cid, ram };
            for (q, qs) in queues.iter().enumerate().take(slot.queues.len()) {
                if qs.ready == 0 {
                    continue;
                }
                if !slot.dev.ready(q) {
                    // Nothing it could serve until what it waits for comes.
                    slot.waiting = true;
                    continue;
                }
                let track = &mut slot.queues[q];
                match serve_queue(&mut *slot.dev, q, qs, slot.queue_max, track, &mut mem) {
                    Ok(pass) => {
                        if pass.raise {
                            raise |= RAISE_USED_BUFFER;
                        }
                        slot.waiting |= pass.left;
                        self.progress |= pass.took;
                    }
                    Err(QueueError::Gone) => return Ok(Service::Gone),
                    Err(e) => {
                        notes.push(format!(
                            "device {index} ({}) queue {q}: {e}: raising NEEDS_RESET",
                            slot.dev.name()
                        ));
                        slot.broken = true;
                        slot.waiting = false;
                        raise |= RAISE_NEEDS_RESET;
                        break;
                    }
                }
            }
        }
        let name = slot.dev.name();
        for n in slot.dev.take_notes() {
            notes.push(format!("device {index} ({name}): {n}"));
        }
        for n in notes {
            self.note(n);
        }
        if raise != 0 {
            match hv.device_raise(cid, index as u64, raise) {
                Ok(()) => {}
                Err(e) if gone(&e) => return Ok(Service::Gone),
                Err(e) => self.note(format!("DEVICE_RAISE {raise:#x} of device {index}: {e:?}")),
            }
        }
        Ok(Service::Done)
    }
}

/// Serves the requests the driver made available on one queue since the last pass:
/// at most one queue's worth (more would be the driver's error), so one busy queue
/// cannot hold up the other devices. Every request's chain is checked before the
/// device touches any of them; the used elements are written in one go, then the used
/// index once. Requests the device leaves (see [`VirtioDevice::serve_batch`]) stay
/// available, in order, for the next pass. Returns whether the driver wants a
/// used-buffer interrupt, and whether requests were left.
///
/// CHILD_MEM calls per pass, besides the device's own: the available index, the
/// descriptor table with the available ring (one read when adjacent), the used
/// elements (two writes when they wrap), the used index, and the available flags
/// again (read after the index is published, virtio 1.2, 2.7.10).
fn serve_queue(
    dev: &mut dyn VirtioDevice,
    q: usize,
    qs: &QueueState,
    queue_max: u32,
    t: &mut Track,
    mem: &mut dyn ChildMem,
) -> Result<Pass, QueueError> {
    let queue = Queue::new(qs, queue_max)?;
    queue.check_areas(mem)?;
    if !t.synced {
        let at = queue.used_idx(mem)?;
        *t = Track {
            next_avail: at,
            used_idx: at,
            synced: true,
        };
    }
    let (_, avail) = queue.avail_header(mem)?;
    let waiting = avail.wrapping_sub(t.next_avail);
    if waiting > queue.size {
        return Err(QueueError::TooManyAvailable {
            avail,
            next: t.next_avail,
        });
    }
    if waiting == 0 {
        return Ok(Pass::default());
    }
    let snap = queue.snapshot(mem)?;
    let mut heads = Vec::with_capacity(usize::from(waiting));
    let mut chains = Vec::with_capacity(usize::from(waiting));
    for k in 0..waiting {
        let head = snap.avail_entry(t.next_avail.wrapping_add(k))?;
        chains.push(snap.chain(mem, head)?);
        heads.push(head);
    }
    let lens = dev.serve_batch(q, &chains, mem)?;
    if lens.len() > chains.len() {
        return Err(QueueError::Device(format!(
            "answered {} requests of {}",
            lens.len(),
            chains.len()
        )));
    }
    // At most `waiting` (a u16).
    let taken = lens.len() as u16;
    let left = taken < waiting;
    if taken == 0 {
        return Ok(Pass {
            left,
            ..Pass::default()
        });
    }
    let elems: Vec<(u16, u32)> = heads.into_iter().zip(lens).collect();
    queue.put_used(mem, t.used_idx, &elems)?;
    let used = t.used_idx.wrapping_add(taken);
    queue.publish_used(mem, used)?;
    t.next_avail = t.next_avail.wrapping_add(taken);
    t.used_idx = used;
    // Read after the index is published (virtio 1.2, 2.7.10).
    let (flags, _) = queue.avail_header(mem)?;
    Ok(Pass {
        raise: flags & AVAIL_F_NO_INTERRUPT == 0,
        left,
        took: true,
    })
}

/// How [`run_loop`] waits: on the doorbell files and the descriptors given, for the
/// events given; returns those descriptors with something to report, with what.
pub type Wait<'a, H> = dyn FnMut(&mut [H], &[PollFd]) -> Vec<PollFd> + 'a;

/// Serves `backend`'s devices until the child is gone: a pass over every device
/// (device *i* through `hvs[i]`, its own doorbell file), then `wait` (for a doorbell or
/// one of the descriptors [`Backend::poll_fds`] gives, at most [`WAIT`]; it returns
/// those of them with something to report, with their `revents`), then the
/// [`PollSource`]s are given what came, and again. `Err` when a device cannot be
/// served at all.
pub fn run_loop<H: Hypervisor>(
    backend: &mut Backend,
    hvs: &mut [H],
    wait: &mut Wait<'_, H>,
) -> Result<(), String> {
    if hvs.len() != backend.len() || backend.is_empty() {
        return Err(format!(
            "{} devices but {} doorbell files",
            backend.len(),
            hvs.len()
        ));
    }
    let mut backoff = Backoff::default();
    let mut woke = (Duration::MAX, false);
    loop {
        for (i, hv) in hvs.iter_mut().enumerate() {
            if backend.service(i, hv)? == Service::Gone {
                return Ok(());
            }
        }
        let progress = backend.take_progress() || woke.1;
        if let Some(pause) = backoff.after_pass(progress, woke.0) {
            std::thread::sleep(pause);
        }
        let fds = backend.poll_fds();
        let started = std::time::Instant::now();
        let ready = wait(hvs, &fds);
        woke = (started.elapsed(), !ready.is_empty());
        backend.serve_sources(&ready);
    }
}

/// How [`run_loop`] answers a driver that rings its doorbell without giving the device
/// work (a doorbell storm: each ring wakes the loop at once, for a pass that finds
/// nothing): after [`Backoff::STORM_PASSES`] such passes in a row it pauses before
/// each wait, twice as long each time from [`Backoff::FIRST`] up to [`Backoff::MOST`],
/// so a storm costs this VM a pass per pause instead of a CPU. A pass that serves
/// something (or a wait ended by a descriptor, or one that slept) ends it: a driver
/// that gives work after a storm waits at most one pause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Passes in a row that served nothing after a wait that ended at once.
    idle: u32,
    /// The pause before the next wait (zero: none).
    pause: Duration,
}

impl Backoff {
    /// Idle passes after quick wake-ups before the first pause.
    pub const STORM_PASSES: u32 = 16;
    /// A wait shorter than this ended "at once".
    pub const QUICK: Duration = Duration::from_millis(1);
    /// The first pause.
    pub const FIRST: Duration = Duration::from_micros(100);
    /// The longest pause.
    pub const MOST: Duration = Duration::from_millis(10);

    /// After a pass: whether it made `progress`, and how long the wait before it
    /// took; the pause to make before the next wait, if any.
    pub fn after_pass(&mut self, progress: bool, waited: Duration) -> Option<Duration> {
        if progress || waited >= Self::QUICK {
            *self = Backoff::default();
            return None;
        }
        self.idle = self.idle.saturating_add(1);
        if self.idle < Self::STORM_PASSES {
            return None;
        }
        self.pause = if self.pause.is_zero() {
            Self::FIRST
        } else {
            (self.pause * 2).min(Self::MOST)
        };
        Some(self.pause)
    }
}

/// How long [`Backends::start`] waits for a new backend to say it serves (it answers
/// success after that, the backend being alive but slow).
const READY_WAIT: Duration = Duration::from_secs(10);

/// What a new backend's first log lines say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// Its worker opened every device and serves them.
    Serving,
    /// Its first worker failed: the worker's own message.
    Failed(String),
    /// Neither yet.
    Pending,
}

/// Reads `log`, what a backend wrote since it was started: its worker's `PID P
/// serving ...` line, or the supervisor's line about a worker that died before it.
pub fn startup(log: &str) -> Startup {
    let mut said = None;
    for line in log.lines() {
        let msg = line.split_once("): ").map_or(line, |(_, m)| m);
        if msg.starts_with("PID ") && msg.contains(" serving ") {
            return Startup::Serving;
        }
        if msg.starts_with("worker PID ") {
            return Startup::Failed(said.unwrap_or_else(|| msg.to_string()));
        }
        said.get_or_insert_with(|| msg.to_string());
    }
    Startup::Pending
}

/// Where the backends keep their files (tmpfs: they go with the VM).
pub const RUN_DIR: &str = "/run/dsx";

/// A child's devices, as `dsx list` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildDevices {
    /// Their names, in SPAWN's order.
    pub names: Vec<String>,
    /// The PID of the backend serving them, if one is running.
    pub backend: Option<u32>,
}

/// What `run`, `kill`, `list` and `fork` do with backends (a fake in the tests).
pub trait Backends {
    /// Records `devices` (the backend's arguments: devices and port forwards, see
    /// [`backend_args`]) as child `cid`'s and starts the backend serving them;
    /// returns its PID.
    fn start(&mut self, cid: u64, devices: &[&str]) -> Result<u32, String>;
    /// Stops child `cid`'s backend (if it has a live one) and forgets its files;
    /// returns the PID signalled.
    fn stop(&mut self, cid: u64) -> Result<Option<u32>, String>;
    /// Child `cid`'s devices, if it has any.
    fn devices(&self, cid: u64) -> Option<ChildDevices>;
    /// Forgets whatever files a child `cid` without devices might have (a CID reused
    /// in a FORK clone that did not clean up).
    fn forget(&mut self, cid: u64);
    /// In a FORK clone: stops the copies of its parent's backends it inherited and
    /// forgets their files (its children are its own, and start at CID 2 again).
    fn forget_all(&mut self) -> Result<(), String>;
    /// Whether this VM can give a child a network (`run --net`), and which
    /// ([`crate::net::Subnet`]): `Err(why)` if its kernel has no TUN device, or its own
    /// address is not one from which dsx can choose its children's network.
    fn net_support(&self) -> Result<crate::net::Subnet, String>;
    /// Whether this VM's TCP `port` can be forwarded (`run --forward`): `Err(why)` if
    /// it cannot be listened on now (in use).
    fn port_free(&self, port: u16) -> Result<(), String>;
    /// The lowest CID this VM's next child can get, as far as `dsx` recorded
    /// ([`Backends::note_cid`]; 0 if nothing was): the hypervisor gives CIDs in
    /// creation order and never again, and does not say which comes next.
    fn cid_hint(&self) -> u64;
    /// Records that this VM has (had) a child `cid`.
    fn note_cid(&mut self, cid: u64);
}

/// The backends' files in a directory ([`RUN_DIR`]): `CID.devices` (one device name a
/// line, written by `dsx run`), `CID.pid` (the backend's PID) and `CID.log` (what it
/// has to say); and `next-cid`, the lowest CID the next child can get (see
/// [`Backends::cid_hint`]).
#[derive(Clone, Debug)]
pub struct RunDir {
    dir: PathBuf,
}

/// Whether `cmdline` (`/proc/PID/cmdline`) is that of child `cid`'s backend: `dsx
/// backend CID ...`, whatever the program was called.
pub fn is_backend_cmdline(cmdline: &[u8], cid: u64) -> bool {
    let mut args = cmdline.split(|&b| b == 0).skip(1);
    args.next() == Some(b"backend".as_slice()) && args.next() == Some(cid.to_string().as_bytes())
}

impl RunDir {
    /// The files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir { dir: dir.into() }
    }

    fn path(&self, cid: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{cid}.{ext}"))
    }

    /// Child `cid`'s backend log.
    pub fn log_path(&self, cid: u64) -> PathBuf {
        self.path(cid, "log")
    }

    /// Records child `cid`'s device names.
    pub fn write_devices(&self, cid: u64, names: &[&str]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(self.path(cid, "devices"), text)
    }

    /// Child `cid`'s device names, if it has any.
    pub fn read_devices(&self, cid: u64) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.path(cid, "devices")).ok()?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        (!names.is_empty()).then_some(names)
    }

    /// Records child `cid`'s backend PID.
    pub fn write_pid(&self, cid: u64, pid: u32) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.path(cid, "pid"), format!("{pid}\n"))
    }

    /// The PID child `cid`'s pid file names.
    pub fn read_pid(&self, cid: u64) -> Option<u32> {
        std::fs::read_to_string(self.path(cid, "pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The PID of child `cid`'s backend, if its pid file names a live process that is
    /// that backend (so a PID reused by something else is never taken for it).
    pub fn live_backend(&self, cid: u64) -> Option<u32> {
        let pid = self.read_pid(cid)?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        is_backend_cmdline(&cmdline, cid).then_some(pid)
    }

    /// Forgets child `cid`'s pid file, and its devices file unless `keep_devices`.
    pub fn remove(&self, cid: u64, keep_devices: bool) {
        let _ = std::fs::remove_file(self.path(cid, "pid"));
        if !keep_devices {
            let _ = std::fs::remove_file(self.path(cid, "devices"));
        }
    }

    /// Every CID with a devices or pid file.
    fn cids(&self) -> Vec<u64> {
        let mut cids: Vec<u64> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (cid, ext) = name.split_once('.')?;
                matches!(ext, "devices" | "pid").then(|| cid.parse().ok())?
            })
            .collect();
        cids.sort_unstable();
        cids.dedup();
        cids
    }
}

impl Backends for RunDir {
    fn start(&mut self, cid: u64, devices: &[&str]) -> Result<u32, String> {
        self.write_devices(cid, devices)
            .map_err(|e| format!("cannot write {}: {e}", self.path(cid, "devices").display()))?;
        let log = self.log_path(cid);
        let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
        let pid = launch(cid, devices, &log)?;
        self.write_pid(cid, pid)
            .map_err(|e| format!("cannot write {}: {e}", self.path(cid, "pid").display()))?;
        // Serving, or why not: a file another backend took between `run`'s check and
        // this one's open, a TAP that cannot be made.
        let deadline = std::time::Instant::now() + READY_WAIT;
        loop {
            let text = std::fs::read(&log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(logged as usize..).unwrap_or_default());
            match startup(&new) {
                Startup::Serving => return Ok(pid),
                Startup::Failed(why) => return Err(why),
                Startup::Pending if std::time::Instant::now() >= deadline => return Ok(pid),
                Startup::Pending => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn stop(&mut self, cid: u64) -> Result<Option<u32>, String> {
        let pid = self.live_backend(cid);
        if let Some(pid) = pid {
            let target = libc::pid_t::try_from(pid).map_err(|_| format!("PID {pid}"))?;
            // SAFETY: kill only sends a signal; `target` is a positive PID checked to
            // be this child's backend just now.
            if unsafe { libc::kill(target, libc::SIGTERM) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(format!("cannot stop the backend (PID {pid}): {e}"));
                }
            }
        }
        self.remove(cid, false);
        Ok(pid)
    }

    fn devices(&self, cid: u64) -> Option<ChildDevices> {
        Some(ChildDevices {
            names: self.read_devices(cid)?,
            backend: self.live_backend(cid),
        })
    }

    fn forget(&mut self, cid: u64) {
        self.remove(cid, false);
    }

    fn forget_all(&mut self) -> Result<(), String> {
        let mut first_error = Ok(());
        for cid in self.cids() {
            if let Err(e) = self.stop(cid) {
                first_error = first_error.and(Err(e));
            }
        }
        // The clone's children start at CID 2.
        let _ = std::fs::remove_file(self.dir.join(NEXT_CID));
        first_error
    }

    fn net_support(&self) -> Result<crate::net::Subnet, String> {
        crate::net::support(
            Path::new(crate::net::TUN_PATH),
            &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        )
    }

    fn port_free(&self, port: u16) -> Result<(), String> {
        crate::fwd::probe(port)
    }

    fn cid_hint(&self) -> u64 {
        std::fs::read_to_string(self.dir.join(NEXT_CID))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn note_cid(&mut self, cid: u64) {
        let next = cid.saturating_add(1);
        if next > self.cid_hint() {
            let _ = std::fs::create_dir_all(&self.dir)
                .and_then(|()| std::fs::write(self.dir.join(NEXT_CID), format!("{next}\n")));
        }
    }
}

/// [`RunDir`]'s file with the lowest CID the next child can get.
const NEXT_CID: &str = "next-cid";

/// Starts `dsx backend CID DEVICE...` (this program again, `/proc/self/exe`) in a
/// session of its own, detached from this one (a double fork: `dsx run` does not
/// wait for it, and no terminal's hang-up or Ctrl-C reaches it), its standard input
/// `/dev/null` and its output appended to `log`. Returns its PID once it runs the
/// program, or why it could not.
fn launch(cid: u64, devices: &[&str], log: &Path) -> Result<u32, String> {
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("bad argument {s:?}"));
    let exe = cstr("/proc/self/exe")?;
    let mut args = vec![cstr("dsx")?, cstr("backend")?, cstr(&cid.to_string())?];
    for d in devices {
        args.push(cstr(d)?);
    }
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let root = cstr("/")?;
    // Opened close-on-exec (std's default): only the dup2'd copies reach the backend.
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    use std::os::fd::AsRawFd;
    let (null, out) = (null.as_raw_fd(), out.as_raw_fd());
    // The middle process sends the backend's PID ('P'), the backend errno ('E') if
    // its exec fails; the pipe closes (EOF) when both are done.
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: `pipe` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let [rd, wr] = pipe;
    // SAFETY: dsx is single-threaded; until they _exit or exec, the two new processes
    // make only async-signal-safe calls, on memory prepared above.
    let middle = unsafe { libc::fork() };
    if middle == 0 {
        // SAFETY: as above: setsid, fork, dup2, chdir, execv, write, _exit only.
        unsafe {
            libc::setsid();
            let backend = libc::fork();
            if backend == 0 {
                libc::dup2(null, 0);
                libc::dup2(out, 1);
                libc::dup2(out, 2);
                // Nothing else of the caller's reaches the backend (a shell's
                // descriptors, a pipe a command substitution waits on): all close
                // at exec, `wr` too, which is still needed if exec fails.
                let all = libc::c_uint::MAX;
                if libc::syscall(libc::SYS_close_range, 3, all, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                    for fd in 3..1024 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                libc::chdir(root.as_ptr());
                libc::execv(exe.as_ptr(), argv.as_ptr());
                let errno = *libc::__errno_location();
                let mut msg = [b'E', 0, 0, 0, 0];
                msg[1..].copy_from_slice(&errno.to_le_bytes());
                libc::write(wr, msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
            let mut msg = [b'P', 0, 0, 0, 0];
            msg[1..].copy_from_slice(&backend.to_le_bytes());
            libc::write(wr, msg.as_ptr().cast(), msg.len());
            libc::_exit(if backend < 0 { 1 } else { 0 });
        }
    }
    // SAFETY: closing the write end this process holds, so EOF can come.
    unsafe { libc::close(wr) };
    let mut got = Vec::new();
    if middle > 0 {
        let mut buf = [0u8; 16];
        loop {
            // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
            let n = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got.extend_from_slice(&buf[..n as usize]);
            } else if n == 0
                || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                break;
            }
        }
        let mut wstatus = 0;
        // SAFETY: reaps the middle process, which has exited or is about to.
        unsafe { libc::waitpid(middle, &mut wstatus, 0) };
    }
    // SAFETY: closes the read end this process opened.
    unsafe { libc::close(rd) };
    if middle < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut pid = None;
    for msg in got.chunks_exact(5) {
        let v = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        match msg[0] {
            b'P' if v > 0 => pid = Some(v as u32),
            b'P' => return Err("fork failed in the backend's launcher".into()),
            _ => {
                return Err(format!(
                    "cannot run /proc/self/exe: {}",
                    std::io::Error::from_raw_os_error(v)
                ))
            }
        }
    }
    pid.ok_or_else(|| "the backend's launcher died".to_string())
}

/// `dsx backend CID DEVICE...`: serves child `cid`'s devices until it is gone, its log
/// on standard error. Refuses to run beside another live backend of the same child.
/// Removes its pid and devices files when the child is gone (only the pid file on an
/// error, so `dsx list` shows the devices unserved).
pub fn serve(cid: u64, names: &[String], files: &RunDir) -> Result<(), String> {
    // Checked here, before anything is forked, so a bad argument is reported once.
    backend_args(names)?;
    // Its name in `ps` and `top` (it runs as /proc/self/exe, so it would be `exe`).
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"dsx-backend".as_ptr()) };
    let me = std::process::id();
    if let Some(other) = files.live_backend(cid).filter(|&p| p != me) {
        return Err(format!("CID {cid} already has a backend (PID {other})"));
    }
    let result = supervise(cid, names, files);
    if files.read_pid(cid) == Some(me) {
        files.remove(cid, result.is_err());
    }
    result
}

/// Set by SIGTERM (`dsx kill`): the supervisor ends its worker and itself.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Most times a worker is started again within [`RESTART_WINDOW`] before the
/// supervisor gives up (a worker that dies at once, every time, is not helped by
/// more tries).
const RESTARTS: usize = 5;
/// See [`RESTARTS`].
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The backend's supervisor: it serves nothing itself, it runs the worker ([`work`])
/// in a child process and starts it again when it dies before its child VM is gone
/// (killed by a signal, or an error such as a crash), at most [`RESTARTS`] times a
/// minute. A new worker reopens the devices and carries on from where the used rings
/// say the old one stopped; requests it had taken but not answered are served again
/// (virtio allows a device to take its time; block reads and writes of the same data
/// are idempotent). SIGTERM (`dsx kill`) stops the worker and then the supervisor; the
/// worker also dies with the supervisor (`PR_SET_PDEATHSIG`), so no orphan serves on.
fn supervise(cid: u64, names: &[String], files: &RunDir) -> Result<(), String> {
    let me = std::process::id();
    if let Err(e) = files.write_pid(cid, me) {
        eprintln!("dsx backend (CID {cid}): cannot record its PID: {e}");
    }
    // Without SA_RESTART, so the signal interrupts the wait for the worker below.
    // SAFETY: installs a handler that only stores to an atomic (async-signal-safe);
    // `action` is a zeroed sigaction with the handler and an empty mask set.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
    let mut starts: Vec<std::time::Instant> = Vec::new();
    loop {
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let now = std::time::Instant::now();
        starts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if starts.len() > RESTARTS {
            return Err(format!(
                "its worker died {} times within a minute: the child's devices are down",
                starts.len()
            ));
        }
        starts.push(now);
        // SAFETY: dsx is single-threaded, so the child may run any code after fork.
        let worker = unsafe { libc::fork() };
        if worker < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if worker == 0 {
            // SAFETY: back to the default action (die), and die with the supervisor.
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() as u32 != me {
                    libc::_exit(1);
                }
            }
            let code = match work(cid, names, files) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("dsx backend (CID {cid}): {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for this process's own child.
            let r = unsafe { libc::waitpid(worker, &mut status, 0) };
            if r == worker {
                break;
            }
            if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                // SAFETY: signals this process's own child.
                unsafe { libc::kill(worker, libc::SIGTERM) };
            }
        }
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            // The child VM is gone: the worker said so and ended.
            return Ok(());
        }
        let how = if libc::WIFSIGNALED(status) {
            format!("was killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        };
        eprintln!("dsx backend (CID {cid}): worker PID {worker} {how}: starting another");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The worker of [`supervise`]: serves child `cid`'s devices (and relays its port
/// forwards) until it is gone.
fn work(cid: u64, names: &[String], files: &RunDir) -> Result<(), String> {
    let (args, forwards) = backend_args(names)?;
    let me = std::process::id();
    // Opened here: a live worker holds the disks' locks and the TAPs.
    let devices = args
        .iter()
        .map(|a| a.open(cid))
        .collect::<Result<Vec<_>, _>>()?;
    // One file per device: each file is its own doorbell.
    let mut hvs = Vec::new();
    for _ in &devices {
        hvs.push(
            crate::dev::Device::open()
                .map_err(|e| crate::format::error_message(crate::format::Op::Open, e))?,
        );
    }
    let list: Vec<&str> = names.iter().map(String::as_str).collect();
    let described: Vec<String> = devices
        .iter()
        .enumerate()
        .zip(&args)
        .map(|((i, d), a)| format!("device {i}: {} (virtio ID {})", a.to_arg(), d.device_id()))
        .collect();
    let mut warn = Vec::new();
    if files.read_devices(cid).as_deref() != Some(names) {
        if let Err(e) = files.write_devices(cid, &list) {
            warn.push(format!("cannot record its devices: {e}"));
        }
    }
    let mut backend = Backend::new(cid, devices, Box::new(std::io::stderr()));
    backend.note(format!("PID {me} serving {}", described.join(", ")));
    for w in warn {
        backend.note(w);
    }
    if !forwards.is_empty() {
        // Bound here, in the worker: a worker started again binds them again.
        // The child's address on this VM's children's network (which `run` checked).
        let net = crate::net::Subnet::of_this_vm()?;
        backend.add_source(Box::new(crate::fwd::Forwarder::new(
            &forwards,
            std::net::Ipv4Addr::UNSPECIFIED,
            std::net::Ipv4Addr::from(net.address(cid)),
        )));
    }
    let result = run_loop(&mut backend, &mut hvs, &mut |hvs, fds| {
        crate::dev::wait_any(hvs, fds, WAIT)
    });
    match &result {
        Ok(()) => backend.note("the child is gone: done"),
        Err(e) => backend.note(format!("giving up: {e}")),
    }
    for line in backend.summaries() {
        backend.note(line);
    }
    backend.note(format!(
        "calls (count/time): {}",
        crate::dev::stats::summary()
    ));
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
    use diosix_abi::{ext, DeviceState, Event, HvInfo, QuotaArgs, SpawnArgs, VmInfo};
    use std::cell::RefCell;
    use std::rc::Rc;

    pub(crate) const CID: u64 = 2;
    pub(crate) const BASE: u64 = 0x8000_0000;
    const SIZE: u16 = 8;
    const DESC: u64 = BASE;
    const AVAIL: u64 = BASE + 0x1000;
    const USED: u64 = BASE + 0x2000;
    /// Where the tests put buffers (the queue's areas are below).
    pub(crate) const BUFS: u64 = BASE + 0x4000;
    pub(crate) const LIVE: u32 = 0xf; // ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK

    /// A child with one virtio device and `mem` as its RAM at `BASE`, and the driver's
    /// side of its split queues (one unless [`FakeChild::with_queues`]; the helpers
    /// work on the one [`FakeChild::select`] chose, queue 0 at first).
    pub(crate) struct FakeChild {
        pub(crate) mem: Vec<u8>,
        /// What GET_CHILD_INFO says its RAM is (more than `mem`: CHILD_MEM refuses the
        /// rest, as for RAM the hypervisor does not have).
        pub(crate) ram_pages: u64,
        pub(crate) state: DeviceState,
        pub(crate) queue: QueueState,
        /// The queue as a reset sets it up again.
        layout: QueueState,
        pub(crate) raises: Vec<u64>,
        /// Every CHILD_MEM_WRITE: (GPA, length).
        pub(crate) writes: Vec<(u64, usize)>,
        /// Every CHILD_MEM_READ: (GPA, length).
        pub(crate) reads: Vec<(u64, usize)>,
        /// Every call made, by name.
        pub(crate) calls: Vec<&'static str>,
        /// CHILD_MEM calls refused for being outside `mem`.
        refused: u32,
        /// DEVICE_STATE calls; from this many on the child is gone.
        state_calls: u32,
        gone_after: Option<u32>,
        /// DEVICE_STATE fails with this.
        state_error: Option<CallError>,
        /// The driver's next free descriptor.
        pub(crate) next_desc: u16,
        /// Every queue but the selected one (which is `queue`, `layout` and
        /// `next_desc`), by index: (queue, layout, next free descriptor).
        others: Vec<Option<(QueueState, QueueState, u16)>>,
        /// The selected queue.
        sel: usize,
    }

    impl FakeChild {
        pub(crate) fn new(mem_len: usize) -> FakeChild {
            FakeChild::with_queue(
                mem_len,
                QueueState {
                    size: SIZE.into(),
                    ready: 1,
                    desc: DESC,
                    driver: AVAIL,
                    device: USED,
                },
            )
        }

        /// A child whose driver lays a queue of `size` out as Linux does: the
        /// descriptor table, the available ring right after it, the used ring on the
        /// next 4 KiB boundary (all below `BUFS` for sizes up to 256).
        pub(crate) fn linux(mem_len: usize, size: u16) -> FakeChild {
            let avail = DESC + 16 * u64::from(size);
            FakeChild::with_queue(
                mem_len,
                QueueState {
                    size: size.into(),
                    ready: 1,
                    desc: DESC,
                    driver: avail,
                    device: (avail + 6 + 2 * u64::from(size) + 0xfff) & !0xfff,
                },
            )
        }

        /// A child whose device has `n` queues (at most 4) of `SIZE` entries, queue
        /// `k`'s areas 0x800 × `k` above queue 0's.
        pub(crate) fn with_queues(mem_len: usize, n: usize) -> FakeChild {
            let mut c = FakeChild::new(mem_len);
            c.state.queue_count = n as u32;
            c.others = (0..n)
                .map(|k| {
                    (k > 0).then(|| {
                        let off = 0x800 * k as u64;
                        let q = QueueState {
                            desc: DESC + off,
                            driver: AVAIL + off,
                            device: USED + off,
                            ..c.queue
                        };
                        (q, q, 0)
                    })
                })
                .collect();
            c
        }

        /// The driver side's helpers work on queue `q` from now on.
        pub(crate) fn select(&mut self, q: usize) {
            if q == self.sel {
                return;
            }
            let parked = self.others[q].take().expect("a queue of the device");
            self.others[self.sel] = Some((self.queue, self.layout, self.next_desc));
            (self.queue, self.layout, self.next_desc) = parked;
            self.sel = q;
        }

        /// Every queue of the device, by index.
        fn queues(&self) -> Vec<QueueState> {
            (0..self.others.len())
                .map(|k| match &self.others[k] {
                    Some((q, _, _)) => *q,
                    None => self.queue,
                })
                .collect()
        }

        fn with_queue(mem_len: usize, queue: QueueState) -> FakeChild {
            FakeChild {
                mem: vec![0; mem_len],
                ram_pages: (mem_len / 4096) as u64,
                state: DeviceState {
                    size: 80,
                    status: LIVE,
                    queue_count: 1,
                    ..DeviceState::default()
                },
                queue,
                layout: queue,
                raises: Vec::new(),
                writes: Vec::new(),
                reads: Vec::new(),
                calls: Vec::new(),
                refused: 0,
                state_calls: 0,
                gone_after: None,
                state_error: None,
                next_desc: 0,
                others: vec![None],
                sel: 0,
            }
        }

        fn size(&self) -> u16 {
            self.queue.size as u16
        }

        /// The child is gone from the `n` + 1st DEVICE_STATE on.
        pub(crate) fn gone_after_calls(&mut self, n: u32) {
            self.gone_after = Some(n);
        }

        /// Forgets the calls counted so far.
        pub(crate) fn clear_counts(&mut self) {
            self.reads.clear();
            self.writes.clear();
            self.calls.clear();
        }

        fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
            let at = usize::try_from(gpa.checked_sub(BASE)?).ok()?;
            let end = at.checked_add(len)?;
            (end <= self.mem.len()).then_some(at..end)
        }

        pub(crate) fn poke(&mut self, gpa: u64, data: &[u8]) {
            let r = self.range(gpa, data.len()).unwrap();
            self.mem[r].copy_from_slice(data);
        }

        pub(crate) fn peek(&self, gpa: u64, len: usize) -> &[u8] {
            &self.mem[self.range(gpa, len).unwrap()]
        }

        fn u16_at(&self, gpa: u64) -> u16 {
            let b = self.peek(gpa, 2);
            u16::from_le_bytes([b[0], b[1]])
        }

        fn avail_idx(&self) -> u16 {
            self.u16_at(self.queue.driver + 2)
        }

        pub(crate) fn used_idx(&self) -> u16 {
            self.u16_at(self.queue.device + 2)
        }

        /// The used element in slot `i`: (id, len).
        pub(crate) fn used_elem(&self, i: u16) -> (u32, u32) {
            let b = self.peek(self.queue.device + 4 + 8 * u64::from(i % self.size()), 8);
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            )
        }

        /// The driver writes descriptor `i`.
        pub(crate) fn desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = Desc {
                addr,
                len,
                flags,
                next,
            };
            self.poke(self.layout.desc + 16 * u64::from(i), &d.to_le_bytes());
        }

        /// The driver makes head `head` available.
        pub(crate) fn make_available(&mut self, head: u16) {
            let (idx, avail) = (self.avail_idx(), self.queue.driver);
            let slot = u64::from(idx % self.size());
            self.poke(avail + 4 + 2 * slot, &head.to_le_bytes());
            self.poke(avail + 2, &idx.wrapping_add(1).to_le_bytes());
        }

        /// The driver offers a chain of buffers (GPA, length, writable), linked
        /// through fresh descriptors; returns its head.
        pub(crate) fn offer(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
            let (head, size) = (self.next_desc, self.size());
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let i = (self.next_desc + k as u16) % size;
                let last = k + 1 == bufs.len();
                let flags = if w { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
                self.desc(i, addr, len, flags, (i + 1) % size);
            }
            self.next_desc = (self.next_desc + bufs.len() as u16) % size;
            self.make_available(head);
            head
        }

        /// The driver resets the device and sets its queues up again from scratch.
        pub(crate) fn reset(&mut self) {
            self.state.resets += 1;
            self.queue = self.layout;
            for (q, layout, next) in self.others.iter_mut().flatten() {
                (*q, *next) = (*layout, 0);
            }
            for b in &mut self.mem[0..0x3000] {
                *b = 0;
            }
            self.next_desc = 0;
        }
    }

    fn no<T>() -> Result<T, CallError> {
        Err(CallError::Sbi(error::NOT_SUPPORTED as i64))
    }

    impl Hypervisor for FakeChild {
        fn scalar(&mut self, fid: usize, a: [u64; 5]) -> Result<u64, CallError> {
            self.calls.push("DEVICE_RAISE");
            if fid != ext::FID_DEVICE_RAISE {
                return no();
            }
            if a[0] != CID || a[1] != 0 || self.gone_after.is_some_and(|g| self.state_calls >= g) {
                return Err(CallError::Sbi(error::INVALID_PARAM as i64));
            }
            self.raises.push(a[2]);
            if a[2] & RAISE_NEEDS_RESET != 0 {
                self.state.status |= status::NEEDS_RESET;
            }
            Ok(0)
        }
        fn spawn(
            &mut self,
            _: &SpawnArgs,
            _: &[u8],
            _: Option<&[u8]>,
            _: &[DeviceDecl],
        ) -> Result<u64, CallError> {
            no()
        }
        fn exec(&mut self, _: &SpawnArgs, _: &[u8]) -> Result<(), CallError> {
            no()
        }
        fn vm_info(&mut self, cid: Option<u64>) -> Result<VmInfo, CallError> {
            assert_eq!(cid, Some(CID));
            self.calls.push("GET_CHILD_INFO");
            if self.gone_after.is_some_and(|g| self.state_calls > g) {
                return Err(CallError::Sbi(error::INVALID_PARAM as i64));
            }
            Ok(VmInfo {
                ram_gpa: BASE,
                own_ram_pages: self.ram_pages,
                ..VmInfo::default()
            })
        }
        fn hv_info(&mut self) -> Result<HvInfo, CallError> {
            no()
        }
        fn set_quota(&mut self, _: &QuotaArgs) -> Result<(), CallError> {
            no()
        }
        fn ipc_send(&mut self, _: u64, _: &[u8]) -> Result<(), CallError> {
            no()
        }
        fn ipc_recv(
            &mut self,
            _: u64,
            _: bool,
            _: &mut [u8],
        ) -> Result<Option<(u64, usize)>, CallError> {
            no()
        }
        fn poll_event(&mut self) -> Result<Option<Event>, CallError> {
            no()
        }
        fn console_read(&mut self, _: u64, _: &mut [u8]) -> Result<usize, CallError> {
            no()
        }
        fn console_write(&mut self, _: u64, _: &[u8]) -> Result<usize, CallError> {
            no()
        }
        fn list_children(&mut self, _: &mut [u64]) -> Result<u64, CallError> {
            no()
        }
        fn child_mem_read(&mut self, cid: u64, gpa: u64, buf: &mut [u8]) -> Result<(), CallError> {
            assert_eq!(cid, CID);
            assert!(buf.len() <= diosix_abi::limits::CHILD_MEM_MAX);
            self.calls.push("CHILD_MEM_READ");
            self.reads.push((gpa, buf.len()));
            let Some(r) = self.range(gpa, buf.len()) else {
                self.refused += 1;
                return Err(CallError::Sbi(error::INVALID_ADDRESS as i64));
            };
            buf.copy_from_slice(&self.mem[r]);
            Ok(())
        }
        fn child_mem_write(&mut self, cid: u64, gpa: u64, data: &[u8]) -> Result<(), CallError> {
            assert_eq!(cid, CID);
            assert!(data.len() <= diosix_abi::limits::CHILD_MEM_MAX);
            self.calls.push("CHILD_MEM_WRITE");
            let Some(r) = self.range(gpa, data.len()) else {
                self.refused += 1;
                return Err(CallError::Sbi(error::INVALID_ADDRESS as i64));
            };
            self.writes.push((gpa, data.len()));
            self.mem[r].copy_from_slice(data);
            Ok(())
        }
        fn device_state(
            &mut self,
            cid: u64,
            device: u64,
        ) -> Result<(DeviceState, Vec<QueueState>), CallError> {
            self.state_calls += 1;
            self.calls.push("DEVICE_STATE");
            if let Some(e) = self.state_error {
                return Err(e);
            }
            if cid != CID || device != 0 || self.gone_after.is_some_and(|g| self.state_calls > g) {
                return Err(CallError::Sbi(error::INVALID_PARAM as i64));
            }
            let s = self.state;
            self.state.pending = 0;
            Ok((s, self.queues()))
        }
    }

    /// Bytes 1, 2, 3 ... from the entropy source, so the tests can see what came.
    fn counting_rng() -> Box<dyn VirtioDevice> {
        let mut n = 0u8;
        Box::new(Rng::with_source(Box::new(move |buf| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
            Ok(())
        })))
    }

    /// A log the test can read.
    #[derive(Clone, Default)]
    pub(crate) struct Log(Rc<RefCell<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.borrow().clone()).unwrap()
        }
    }

    fn backend() -> (Backend, Log) {
        let log = Log::default();
        (
            Backend::new(CID, vec![counting_rng()], Box::new(log.clone())),
            log,
        )
    }

    pub(crate) fn served(b: &mut Backend, c: &mut FakeChild) {
        assert_eq!(b.service(0, c), Ok(Service::Done));
    }

    #[test]
    fn a_new_backend_is_serving_or_says_why_not() {
        assert_eq!(startup(""), Startup::Pending);
        assert_eq!(
            startup("dsx backend (CID 3): PID 77 serving device 0: rng (virtio ID 4)\n"),
            Startup::Serving
        );
        // The worker's own message, not the supervisor's.
        let log = "dsx backend (CID 3): disk /tmp/a: in use by another dsx backend\n\
                   dsx backend (CID 3): worker PID 78 exited with status 1: starting another\n";
        assert_eq!(
            startup(log),
            Startup::Failed("disk /tmp/a: in use by another dsx backend".into())
        );
        // A worker killed before it said anything.
        assert_eq!(
            startup(
                "dsx backend (CID 3): worker PID 79 was killed by signal 9: starting another\n"
            ),
            Startup::Failed("worker PID 79 was killed by signal 9: starting another".into())
        );
        // Half a line: not yet.
        assert_eq!(startup("dsx backend (CID 3): PID 7"), Startup::Pending);
    }

    #[test]
    fn a_doorbell_storm_is_answered_with_growing_pauses() {
        let quick = Duration::from_micros(10);
        let mut b = Backoff::default();
        // Quick idle wake-ups: nothing for the first STORM_PASSES - 1.
        for _ in 1..Backoff::STORM_PASSES {
            assert_eq!(b.after_pass(false, quick), None);
        }
        let mut pauses = Vec::new();
        for _ in 0..10 {
            pauses.push(b.after_pass(false, quick).unwrap());
        }
        assert_eq!(pauses[0], Backoff::FIRST);
        assert_eq!(pauses[1], Backoff::FIRST * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), Backoff::MOST);
        // Work ends it at once, and the count starts again.
        assert_eq!(b.after_pass(true, quick), None);
        assert_eq!(b, Backoff::default());
        for _ in 1..Backoff::STORM_PASSES {
            assert_eq!(b.after_pass(false, quick), None);
        }
        assert_eq!(b.after_pass(false, quick), Some(Backoff::FIRST));
        // So does a wait that took its time (an idle device, or a pause).
        assert_eq!(b.after_pass(false, Backoff::QUICK), None);
        assert_eq!(b, Backoff::default());
    }

    #[test]
    fn a_request_is_served() {
        let mut c = FakeChild::new(0x10000);
        let (mut b, _) = backend();
        // Nothing yet: no interrupt, nothing written.
        served(&mut b, &mut c);
        assert!(c.raises.is_empty() && c.writes.is_empty());
        let head = c.offer(&[(BUFS, 32, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.used_idx(), 1);
        assert_eq!(c.used_elem(0), (u32::from(head), 32));
        let want: Vec<u8> = (1..=32).collect();
        assert_eq!(c.peek(BUFS, 32), &want[..]);
        assert_eq!(c.peek(BUFS + 32, 1), &[0]);
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
        // The data, the used element, then the index: nothing else written.
        assert_eq!(c.writes, [(BUFS, 32), (USED + 4, 8), (USED + 2, 2)]);
        // A second pass with nothing new does nothing.
        served(&mut b, &mut c);
        assert_eq!((c.raises.len(), c.writes.len()), (1, 3));
    }

    #[test]
    fn a_pass_makes_few_calls() {
        // The queue laid out as Linux does: the descriptor table and available ring
        // are read in one call.
        let mut c = FakeChild::linux(0x10000, 64);
        let (mut b, _) = backend();
        served(&mut b, &mut c);
        // The first pass: where the used ring stands, and the available index.
        assert_eq!(
            c.calls,
            [
                "DEVICE_STATE",
                "GET_CHILD_INFO",
                "CHILD_MEM_READ",
                "CHILD_MEM_READ"
            ]
        );
        c.offer(&[(BUFS, 16, true)]);
        c.offer(&[(BUFS + 0x100, 16, true)]);
        c.clear_counts();
        served(&mut b, &mut c);
        assert_eq!(
            c.calls,
            [
                "DEVICE_STATE",
                "CHILD_MEM_READ",  // available index
                "CHILD_MEM_READ",  // descriptor table and available ring
                "CHILD_MEM_WRITE", // the two requests' data
                "CHILD_MEM_WRITE",
                "CHILD_MEM_WRITE", // both used elements
                "CHILD_MEM_WRITE", // the used index
                "CHILD_MEM_READ",  // the available flags
                "DEVICE_RAISE"
            ]
        );
        assert_eq!(c.reads[1], (BASE, 64 * 16 + 4 + 2 * 64));
        assert_eq!(c.used_idx(), 2);
    }

    #[test]
    fn a_batch_gets_one_interrupt_and_wraps_the_rings() {
        let mut c = FakeChild::new(0x10000);
        let (mut b, _) = backend();
        // Three requests, one of two buffers: a device-readable one (skipped) and a
        // writable one.
        c.offer(&[(BUFS, 4, true)]);
        let two = c.offer(&[(BUFS + 0x100, 8, false), (BUFS + 0x200, 8, true)]);
        c.offer(&[(BUFS + 0x300, 0, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.used_idx(), 3);
        assert_eq!(c.used_elem(1), (u32::from(two), 8));
        assert_eq!(c.used_elem(2).1, 0);
        assert_eq!(c.peek(BUFS + 0x100, 8), &[0; 8]);
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
        // Around the rings several times, one request a pass.
        for n in 4..=40u16 {
            c.offer(&[(BUFS, 1, true)]);
            served(&mut b, &mut c);
            assert_eq!(c.used_idx(), n);
        }
        // The driver asks for no interrupt: none.
        c.poke(AVAIL, &1u16.to_le_bytes());
        let raises = c.raises.len();
        c.offer(&[(BUFS, 1, true)]);
        served(&mut b, &mut c);
        assert_eq!((c.used_idx(), c.raises.len()), (41, raises));
    }

    #[test]
    fn a_request_gets_at_most_64k() {
        let mut c = FakeChild::new(0x40000);
        let (mut b, _) = backend();
        c.offer(&[(BUFS, 0xC000, true), (BUFS + 0x10000, 0xC000, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.used_elem(0).1, 0x10000);
        assert_eq!(c.writes[..2], [(BUFS, 0xC000), (BUFS + 0x10000, 0x4000)]);
        assert_eq!(c.peek(BUFS + 0x14000, 1), &[0]);
    }

    /// The driver breaks a rule: NEEDS_RESET, nothing written at all, the device left
    /// alone (however much more the driver offers) until its driver resets it.
    fn broken_by(break_it: impl FnOnce(&mut FakeChild), want: &str) {
        let mut c = FakeChild::new(0x10000);
        c.ram_pages = 32; // CHILD_MEM refuses beyond 64 KiB.
        let (mut b, log) = backend();
        break_it(&mut c);
        let before = c.mem.clone();
        served(&mut b, &mut c);
        assert_eq!(c.raises, [RAISE_NEEDS_RESET], "{want}");
        assert!(c.writes.is_empty(), "{want}: {:x?}", c.writes);
        assert_eq!(c.mem, before);
        assert!(log.text().contains(want), "{want}: {}", log.text());
        c.state.status &= !status::NEEDS_RESET;
        c.offer(&[(BUFS, 8, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.raises.len(), 1);
        assert!(c.writes.is_empty());
        // The reset: served again, from index 0.
        c.reset();
        c.state.status = LIVE;
        c.offer(&[(BUFS, 8, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.raises, [RAISE_NEEDS_RESET, RAISE_USED_BUFFER], "{want}");
        assert_eq!((c.used_idx(), c.used_elem(0)), (1, (0, 8)));
        assert!(log.text().contains("was reset by its driver"));
    }

    #[test]
    fn a_buffer_outside_ram_breaks_the_device() {
        broken_by(
            |c| {
                c.offer(&[(BASE + 0x20_0000, 8, true)]);
            },
            "not all the child's RAM",
        );
        broken_by(
            |c| {
                c.offer(&[(BASE - 8, 8, true)]);
            },
            "not all the child's RAM",
        );
    }

    #[test]
    fn a_huge_length_breaks_the_device() {
        broken_by(
            |c| {
                c.offer(&[(BUFS, 0xFFFF_FFF0, true)]);
            },
            "not all the child's RAM",
        );
        // Also in a chain's second buffer: the first is not filled either.
        broken_by(
            |c| {
                c.offer(&[(BUFS, 8, true), (BUFS, u32::MAX, true)]);
            },
            "not all the child's RAM",
        );
    }

    #[test]
    fn a_looping_chain_breaks_the_device() {
        broken_by(
            |c| {
                c.desc(0, BUFS, 8, DESC_F_WRITE | DESC_F_NEXT, 1);
                c.desc(1, BUFS, 8, DESC_F_WRITE | DESC_F_NEXT, 0);
                c.make_available(0);
            },
            "longer than the queue",
        );
    }

    #[test]
    fn an_index_beyond_the_queue_breaks_the_device() {
        broken_by(
            |c| c.make_available(SIZE),
            "descriptor index 8 in a queue of 8",
        );
        broken_by(
            |c| {
                c.desc(0, BUFS, 8, DESC_F_WRITE | DESC_F_NEXT, 200);
                c.make_available(0);
            },
            "descriptor index 200",
        );
        broken_by(
            |c| {
                c.desc(0, BUFS, 16, DESC_F_INDIRECT, 0);
                c.make_available(0);
            },
            "indirect",
        );
        broken_by(
            |c| c.poke(AVAIL + 2, &(SIZE + 1).to_le_bytes()),
            "more than a queue ahead",
        );
    }

    #[test]
    fn rings_outside_ram_break_the_device() {
        // Beyond what GET_CHILD_INFO says: caught before any CHILD_MEM.
        broken_by(
            |c| c.queue.device = BASE + 0x40_0000,
            "not all the child's RAM",
        );
        // Inside it, but CHILD_MEM refuses (RAM the fake does not have).
        broken_by(
            |c| {
                c.offer(&[(BUFS, 8, true)]);
                c.queue.desc = BASE + 0x1_8000;
            },
            "CHILD_MEM of 128 bytes",
        );
        // A queue size the device never offered.
        broken_by(|c| c.queue.size = 128, "queue size 128");
    }

    #[test]
    fn nothing_is_served_until_the_driver_is_ready() {
        let mut c = FakeChild::new(0x10000);
        let (mut b, _) = backend();
        c.offer(&[(BUFS, 8, true)]);
        c.state.status = 0xb; // ACKNOWLEDGE | DRIVER | FEATURES_OK, not DRIVER_OK
        served(&mut b, &mut c);
        c.queue.ready = 0;
        c.state.status = LIVE;
        served(&mut b, &mut c);
        assert!(c.writes.is_empty() && c.raises.is_empty());
        c.queue.ready = 1;
        served(&mut b, &mut c);
        assert_eq!(c.used_idx(), 1);
    }

    #[test]
    fn a_reset_starts_again_from_index_0() {
        let mut c = FakeChild::new(0x10000);
        let (mut b, _) = backend();
        c.offer(&[(BUFS, 8, true)]);
        c.offer(&[(BUFS, 8, true)]);
        c.offer(&[(BUFS, 8, true)]);
        served(&mut b, &mut c);
        assert_eq!(c.used_idx(), 3);
        // Reset (the counter moves), rings zeroed, one request at index 0 again.
        c.reset();
        let head = c.offer(&[(BUFS + 0x100, 4, true)]);
        served(&mut b, &mut c);
        assert_eq!((c.used_idx(), c.used_elem(0)), (1, (u32::from(head), 4)));
        // The status without DRIVER_OK (being set up again) does the same.
        c.state.status = 0;
        served(&mut b, &mut c);
        for b in &mut c.mem[0..0x3000] {
            *b = 0;
        }
        c.next_desc = 0;
        c.state.status = LIVE;
        c.offer(&[(BUFS, 2, true)]);
        served(&mut b, &mut c);
        assert_eq!((c.used_idx(), c.used_elem(0).1), (1, 2));
    }

    #[test]
    fn a_restarted_backend_takes_over_where_the_used_ring_is() {
        let mut c = FakeChild::new(0x10000);
        for _ in 0..5 {
            c.offer(&[(BUFS, 1, true)]);
        }
        // A previous backend served five; one more waits.
        c.poke(USED + 2, &5u16.to_le_bytes());
        c.offer(&[(BUFS + 0x10, 3, true)]);
        let (mut b, _) = backend();
        served(&mut b, &mut c);
        assert_eq!((c.used_idx(), c.used_elem(5)), (6, (5, 3)));
        assert_eq!(c.writes[0], (BUFS + 0x10, 3));
    }

    #[test]
    fn the_loop_ends_when_the_child_is_gone() {
        let mut c = FakeChild::new(0x10000);
        c.offer(&[(BUFS, 8, true)]);
        c.gone_after = Some(3);
        let (mut b, _) = backend();
        let mut waits = 0;
        let mut children = [c];
        assert_eq!(
            run_loop(&mut b, &mut children, &mut |_, fds| {
                assert!(fds.is_empty());
                waits += 1;
                Vec::new()
            }),
            Ok(())
        );
        assert_eq!((children[0].state_calls, waits), (4, 3));
        assert_eq!(children[0].used_idx(), 1);
        // Gone from the start.
        let mut c = FakeChild::new(0x1000);
        c.gone_after = Some(0);
        let (mut b, _) = backend();
        assert_eq!(b.service(0, &mut c), Ok(Service::Gone));
        // A device the child does not have: the backend was started wrongly.
        let mut c = FakeChild::new(0x1000);
        let (mut b, _) = backend();
        assert_eq!(b.service(1, &mut c), Err("CID 2 has no device 1".into()));
        // Any other refusal of DEVICE_STATE is fatal; a driver refusal is not.
        let mut c = FakeChild::new(0x1000);
        c.state_error = Some(CallError::Sbi(error::NOT_SUPPORTED as i64));
        let (mut b, _) = backend();
        assert!(b.service(0, &mut c).is_err());
        c.state_error = Some(CallError::Os(libc::ENOMEM));
        assert_eq!(b.service(0, &mut c), Ok(Service::Done));
        // A backend without doorbell files for its devices does not start.
        let (mut b, _) = backend();
        let mut none: [FakeChild; 0] = [];
        assert!(run_loop(&mut b, &mut none, &mut |_, _| Vec::new()).is_err());
    }

    #[test]
    fn the_log_is_bounded() {
        let (mut b, log) = backend();
        for i in 0..1000 {
            b.note(i);
        }
        let text = log.text();
        assert_eq!(text.lines().count(), LOG_LINES_MAX as usize + 1);
        assert!(text.ends_with("further messages suppressed\n"));
    }

    #[test]
    fn backend_cmdlines() {
        assert!(is_backend_cmdline(b"dsx\0backend\x003\0rng\0", 3));
        assert!(is_backend_cmdline(
            b"/usr/bin/dsx\0backend\x0012\0rng\0",
            12
        ));
        assert!(!is_backend_cmdline(b"dsx\0backend\x003\0rng\0", 31));
        assert!(!is_backend_cmdline(b"dsx\0kill\x003\0", 3));
        assert!(!is_backend_cmdline(b"sh\0", 3));
        assert!(!is_backend_cmdline(b"", 3));
    }

    #[test]
    fn run_dir_files() {
        let dir = std::env::temp_dir().join(format!("dsx-run-{}", std::process::id()));
        let mut files = RunDir::new(&dir);
        assert_eq!(files.devices(5), None);
        files.write_devices(5, &["rng"]).unwrap();
        assert_eq!(
            files.devices(5),
            Some(ChildDevices {
                names: vec!["rng".into()],
                backend: None
            })
        );
        // A pid file naming a live process that is not CID 5's backend (this test) is
        // never taken for it, nor signalled.
        files.write_pid(5, std::process::id()).unwrap();
        assert_eq!(files.read_pid(5), Some(std::process::id()));
        assert_eq!(files.live_backend(5), None);
        files
            .write_devices(9, &["blk:/d/a b,c.img", "rng"])
            .unwrap();
        assert_eq!(
            files.read_devices(9),
            Some(vec!["blk:/d/a b,c.img".to_string(), "rng".to_string()])
        );
        assert_eq!(files.cids(), [5, 9]);
        // The next CID as far as dsx knows: never lowered, not a child's file.
        assert_eq!(files.cid_hint(), 0);
        files.note_cid(7);
        files.note_cid(3);
        assert_eq!(files.cid_hint(), 8);
        assert_eq!(files.cids(), [5, 9]);
        assert_eq!(files.stop(5), Ok(None));
        assert_eq!((files.read_pid(5), files.read_devices(5)), (None, None));
        files.forget_all().unwrap();
        assert!(files.cids().is_empty());
        assert_eq!(files.cid_hint(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
