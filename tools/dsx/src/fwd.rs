//! Port forwarding into a child: `dsx run --net --forward PORT:CHILDPORT`.
//!
//! The children's network is behind this VM's NAT (outgoing only: [`crate::nat`]), so
//! a service in a child on the bridge is reached only from this VM and the open
//! children. A forward relays TCP in user space to it, as QEMU's `hostfwd` and
//! docker-proxy do: the child's backend worker listens on TCP `0.0.0.0:PORT` in this
//! VM ([`Forwarder`]), and for each connection it accepts connects to the child's
//! `10.N.0.<cid>:CHILDPORT` ([`crate::net::Subnet`]) and copies bytes both ways until
//! both sides have closed; the child sees the connection come from its gateway,
//! `10.N.0.1`. A side that half-closes (its FIN) is passed on as a
//! `shutdown(SHUT_WR)` of the other once what it sent is delivered; an error or a
//! reset on either side closes both. A target that refuses (nothing listens, the child
//! has no network yet) closes the client's connection.
//!
//! Bounded: at most [`MAX_CONNS`] connections per forward (the listener is not polled
//! while it has that many: more wait in the kernel's backlog until one closes), at
//! most [`FLOW_BUF`] bytes held per direction (held only while the receiving side does
//! not take them, and while they are held that direction's source is not read: a peer
//! that stops reading stops the relay reading the other side), at most [`PASS_BYTES`]
//! moved per pass over all connections and [`ACCEPTS_PER_PASS`] accepted per listener,
//! so the virtio devices of the same loop are not starved. Everything is nonblocking
//! and driven by the worker's `poll(2)` ([`PollSource`]): a descriptor is polled only
//! for what the relay can act on, so an idle relay sleeps.
//!
//! The relay lives in the worker: a worker started again by its supervisor binds the
//! ports again (`SO_REUSEADDR`, which `std`'s `TcpListener::bind` sets) and the
//! connections the old one relayed are lost.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::backend::{PollFd, PollSource};

/// Most forwards one child has (`--forward` given at most this often).
pub const MAX_FORWARDS: usize = 8;
/// Most connections one forward relays at a time.
pub const MAX_CONNS: usize = 64;
/// Most bytes one read takes, and most bytes held for a side that does not take them,
/// per direction of a connection.
pub const FLOW_BUF: usize = 64 * 1024;
/// Most bytes read, or written from what a slow side left waiting, in one pass over
/// all connections.
pub const PASS_BYTES: usize = 256 * 1024;
/// Most connections one listener accepts in one pass.
pub const ACCEPTS_PER_PASS: usize = 8;
/// How often a port that could not be bound is tried again.
pub const REBIND_EVERY: Duration = Duration::from_secs(5);
/// How long a listener is left alone after `accept` failed (no descriptors, no
/// memory): it would poll readable all the while.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// Most errors logged per forward.
const NOTES_MAX: u32 = 8;
/// How a forward is given to the backend (and recorded in its devices file).
pub const ARG_PREFIX: &str = "fwd:";

/// One forward: this VM's TCP `port` relayed to the child's `child_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The port this VM listens on (all its addresses).
    pub port: u16,
    /// The child's port it connects to.
    pub child_port: u16,
}

impl Forward {
    /// `PORT:CHILDPORT`, each 1 to 65535 in decimal.
    pub fn parse(spec: &str) -> Result<Forward, String> {
        let port = |t: &str| {
            if t.is_empty() || t.len() > 5 || !t.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            t.parse::<u16>().ok().filter(|&p| p != 0)
        };
        let bad = || format!("`{spec}` is not PORT:CHILDPORT (each 1 to 65535)");
        let (a, b) = spec.split_once(':').ok_or_else(bad)?;
        Ok(Forward {
            port: port(a).ok_or_else(bad)?,
            child_port: port(b).ok_or_else(bad)?,
        })
    }

    /// A backend argument `fwd:PORT:CHILDPORT`: `None` if `arg` is not a forward at
    /// all (no `fwd:`).
    pub fn parse_arg(arg: &str) -> Option<Result<Forward, String>> {
        let spec = arg.strip_prefix(ARG_PREFIX)?;
        Some(
            Forward::parse(spec).map_err(|_| {
                format!("`{arg}` is not a forward (fwd:PORT:CHILDPORT, each 1 to 65535)")
            }),
        )
    }

    /// The backend argument: `fwd:8081:80`.
    pub fn to_arg(self) -> String {
        format!("{ARG_PREFIX}{}:{}", self.port, self.child_port)
    }

    /// As `dsx list` and the log show it: `fwd:8081->80`.
    pub fn shown(self) -> String {
        format!("{ARG_PREFIX}{}->{}", self.port, self.child_port)
    }
}

/// `Ok` if this VM's TCP `port` can be listened on now (as the worker will: all
/// addresses, `SO_REUSEADDR`): a socket bound, then closed again. `run` asks before
/// SPAWN, so a port in use refuses the command with nothing created.
pub fn probe(port: u16) -> Result<(), String> {
    match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(format!(
            "cannot forward port {port}: it is in use in this VM (something listens on it)"
        )),
        Err(e) => Err(format!("cannot forward port {port}: {e}")),
    }
}

/// Starts a nonblocking connection to `to`: the socket and whether the connection is
/// still being made (`EINPROGRESS`: `poll` reports `POLLOUT` when it is done, and
/// `SO_ERROR` says how it went).
fn connect_nonblocking(to: SocketAddrV4) -> io::Result<(TcpStream, bool)> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a live `sockaddr_in` of the length given, read during the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let stream = TcpStream::from(fd);
    if rc == 0 {
        return Ok((stream, false));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // A nonblocking connect interrupted carries on in the background.
        Some(libc::EINPROGRESS | libc::EINTR) => Ok((stream, true)),
        _ => Err(e),
    }
}

/// One direction of a connection: bytes read from its source, written to its
/// destination.
#[derive(Debug, Default)]
struct Flow {
    /// Bytes read that the destination has not taken yet, from `at` on (at most
    /// [`FLOW_BUF`]; empty, and not allocated, while nothing waits).
    pending: Vec<u8>,
    at: usize,
    /// The source sent its FIN (a read gave 0 bytes).
    eof: bool,
    /// The FIN was passed on: the destination's write side is shut down.
    shut: bool,
    /// Bytes read from the source.
    bytes: u64,
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Flow {
    /// Bytes wait for the destination.
    fn waiting(&self) -> bool {
        self.at < self.pending.len()
    }

    /// The source is to be read (nothing waits: backpressure).
    fn want_read(&self) -> bool {
        !self.eof && !self.waiting()
    }

    /// Writes what waits, as much as `dst` takes and the pass's `budget` allows.
    fn flush(&mut self, mut dst: &TcpStream, budget: &mut usize) -> io::Result<()> {
        let end = self.pending.len().min(self.at.saturating_add(*budget));
        match dst.write(&self.pending[self.at..end]) {
            Ok(n) => {
                self.at += n;
                *budget -= n;
            }
            Err(e) if retry(&e) => {}
            Err(e) => return Err(e),
        }
        if !self.waiting() {
            self.pending = Vec::new();
            self.at = 0;
        }
        Ok(())
    }

    /// One step of this direction: what waits written if `dst` is `writable`; one read
    /// of `src` if it is `readable` and nothing waits, passed straight on to `dst` and
    /// what it does not take kept; the FIN passed on once all before it is delivered.
    /// The bytes read and those written from what waited count against the pass's
    /// `budget`: nothing is moved once it is spent. `Err` for an error of either
    /// side.
    fn pump(
        &mut self,
        mut src: &TcpStream,
        mut dst: &TcpStream,
        readable: bool,
        writable: bool,
        scratch: &mut [u8],
        budget: &mut usize,
    ) -> io::Result<()> {
        if self.waiting() && writable && *budget > 0 {
            self.flush(dst, budget)?;
        }
        if self.want_read() && readable && *budget > 0 {
            let want = scratch.len().min(*budget);
            match src.read(&mut scratch[..want]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    *budget -= n;
                    self.bytes += n as u64;
                    let sent = match dst.write(&scratch[..n]) {
                        Ok(w) => w,
                        Err(e) if retry(&e) => 0,
                        Err(e) => return Err(e),
                    };
                    if sent < n {
                        self.pending.extend_from_slice(&scratch[sent..n]);
                        self.at = 0;
                    }
                }
                Err(e) if retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if self.eof && !self.waiting() && !self.shut {
            dst.shutdown(Shutdown::Write)?;
            self.shut = true;
        }
        Ok(())
    }
}

/// How a step left a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Still relaying.
    Open,
    /// Both sides closed: done.
    Closed,
    /// The child's side could not be reached.
    Refused,
    /// An error or reset on either side: both closed.
    Cut,
}

/// One relayed connection.
#[derive(Debug)]
struct Conn {
    /// Index of its forward.
    fwd: usize,
    /// The side that connected to this VM.
    client: TcpStream,
    /// The side in the child.
    target: TcpStream,
    /// The connection to the child is being made.
    connecting: bool,
    /// Client to child.
    up: Flow,
    /// Child to client.
    down: Flow,
}

const BAD: i16 = libc::POLLERR | libc::POLLNVAL;

impl Conn {
    /// What to poll for: while connecting, the child's side for `POLLOUT` (and the
    /// client's for errors only); then each side for `POLLIN` while its flow reads and
    /// `POLLOUT` while bytes wait for it. A side with nothing wanted is still polled
    /// for errors (events 0: `POLLERR`/`POLLHUP` only), unless its write side is shut
    /// down, where `POLLHUP` would be reported for ever once its peer's FIN is in.
    fn interest(&self, out: &mut Vec<PollFd>) {
        let (c, t) = (self.client.as_raw_fd(), self.target.as_raw_fd());
        if self.connecting {
            out.push(PollFd {
                fd: t,
                events: libc::POLLOUT,
            });
            out.push(PollFd { fd: c, events: 0 });
            return;
        }
        let events = |reads: &Flow, writes: &Flow| {
            (if reads.want_read() { libc::POLLIN } else { 0 })
                | (if writes.waiting() { libc::POLLOUT } else { 0 })
        };
        let (ce, te) = (events(&self.up, &self.down), events(&self.down, &self.up));
        if ce != 0 || !self.down.shut {
            out.push(PollFd { fd: c, events: ce });
        }
        if te != 0 || !self.up.shut {
            out.push(PollFd { fd: t, events: te });
        }
    }

    /// One step, given what `poll` reported for the client (`crev`) and the child's
    /// side (`trev`).
    fn step(
        &mut self,
        mut crev: i16,
        mut trev: i16,
        scratch: &mut [u8],
        budget: &mut usize,
    ) -> Step {
        if self.connecting {
            if crev & (BAD | libc::POLLHUP) != 0 {
                return Step::Cut;
            }
            if trev == 0 {
                return Step::Open;
            }
            if trev & (BAD | libc::POLLHUP) != 0 || !matches!(self.target.take_error(), Ok(None)) {
                return Step::Refused;
            }
            self.connecting = false;
            // The client may have sent already.
            crev = libc::POLLIN;
            trev = libc::POLLIN;
        }
        // A hang-up of a side whose write side is still open is a reset (or the like):
        // with it shut down, it is that side's FIN, read below.
        if crev & BAD != 0 || (crev & libc::POLLHUP != 0 && !self.down.shut) {
            return Step::Cut;
        }
        if trev & BAD != 0 || (trev & libc::POLLHUP != 0 && !self.up.shut) {
            return Step::Cut;
        }
        let readable = |r: i16| r & (libc::POLLIN | libc::POLLHUP) != 0;
        let writable = |r: i16| r & libc::POLLOUT != 0;
        let (c, t) = (&self.client, &self.target);
        let up = self
            .up
            .pump(c, t, readable(crev), writable(trev), scratch, budget);
        let down = self
            .down
            .pump(t, c, readable(trev), writable(crev), scratch, budget);
        if up.is_err() || down.is_err() {
            Step::Cut
        } else if self.up.shut && self.down.shut {
            Step::Closed
        } else {
            Step::Open
        }
    }
}

/// What a forward counted, for the log when the backend ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Connections accepted.
    accepted: u64,
    /// ... of which the child's side could not be reached.
    refused: u64,
    /// ... of which an error or reset ended.
    cut: u64,
    /// Bytes from clients to the child.
    up: u64,
    /// Bytes from the child to clients.
    down: u64,
}

/// One forward's listening socket and its state.
#[derive(Debug)]
struct Listener {
    fwd: Forward,
    /// `None` while the port could not be bound (tried again at `retry_at`).
    sock: Option<TcpListener>,
    retry_at: Instant,
    /// Accepting failed: the listener is left alone until then.
    paused_until: Option<Instant>,
    /// Connections relayed now.
    live: usize,
    counts: Counts,
    noted: u32,
}

/// The forwards of one child, served from the worker's poll loop.
#[derive(Debug)]
pub struct Forwarder {
    /// The address listened on (all of this VM's; the tests use 127.0.0.1).
    listen: Ipv4Addr,
    /// The child's address (the tests use 127.0.0.1).
    target: Ipv4Addr,
    listeners: Vec<Listener>,
    conns: Vec<Conn>,
    /// Where reads land ([`FLOW_BUF`] bytes, shared by all connections).
    scratch: Vec<u8>,
    /// Where the next pass starts among the connections (so each gets its turn when
    /// the pass's budget runs out).
    next: usize,
    notes: Vec<String>,
}

impl Forwarder {
    /// Listens for each of `forwards` on `listen`:PORT (binding failures are logged and
    /// tried again every [`REBIND_EVERY`]) and relays to `target`:CHILDPORT.
    pub fn new(forwards: &[Forward], listen: Ipv4Addr, target: Ipv4Addr) -> Forwarder {
        let now = Instant::now();
        let mut f = Forwarder {
            listen,
            target,
            listeners: forwards
                .iter()
                .map(|&fwd| Listener {
                    fwd,
                    sock: None,
                    retry_at: now,
                    paused_until: None,
                    live: 0,
                    counts: Counts::default(),
                    noted: 0,
                })
                .collect(),
            conns: Vec::new(),
            scratch: vec![0; FLOW_BUF],
            next: 0,
            notes: Vec::new(),
        };
        for i in 0..f.listeners.len() {
            f.bind(i, now);
        }
        f
    }

    fn note(&mut self, i: usize, msg: String) {
        let l = &mut self.listeners[i];
        let shown = l.fwd.shown();
        if l.noted < NOTES_MAX {
            self.notes.push(format!("{shown}: {msg}"));
        } else if l.noted == NOTES_MAX {
            self.notes
                .push(format!("{shown}: further errors not logged"));
        }
        l.noted = l.noted.saturating_add(1);
    }

    /// Binds listener `i` (nonblocking, `SO_REUSEADDR`).
    fn bind(&mut self, i: usize, now: Instant) {
        let (fwd, first) = (self.listeners[i].fwd, self.listeners[i].noted == 0);
        let at = SocketAddrV4::new(self.listen, fwd.port);
        let to = SocketAddrV4::new(self.target, fwd.child_port);
        let bound = TcpListener::bind(at).and_then(|s| s.set_nonblocking(true).map(|()| s));
        match bound {
            Ok(s) => {
                // Where it is bound (the tests' port 0 is the kernel's pick).
                let on = s.local_addr().map_or(at.to_string(), |a| a.to_string());
                self.listeners[i].sock = Some(s);
                let again = if first { "" } else { " (at last)" };
                self.notes.push(format!(
                    "{}: listening on {on}{again}, relaying to {to}",
                    fwd.shown()
                ));
            }
            Err(e) => {
                self.listeners[i].retry_at = now + REBIND_EVERY;
                let every = REBIND_EVERY.as_secs();
                self.note(
                    i,
                    format!("cannot listen on {at}: {e}; trying again every {every} s"),
                );
            }
        }
    }

    /// Connections relayed now.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The port forward `i` listens on, once bound (the tests bind port 0: the kernel
    /// picks one).
    #[cfg(test)]
    pub fn local_port(&self, i: usize) -> Option<u16> {
        let s = self.listeners.get(i)?.sock.as_ref()?;
        s.local_addr().ok().map(|a| a.port())
    }

    /// Accepts what waits on listener `i` (at most [`ACCEPTS_PER_PASS`], and no more
    /// than its cap) and starts connecting each to the child.
    fn accept(&mut self, i: usize, now: Instant) {
        let to = SocketAddrV4::new(self.target, self.listeners[i].fwd.child_port);
        for _ in 0..ACCEPTS_PER_PASS {
            let l = &mut self.listeners[i];
            let Some(sock) = l.sock.as_ref() else { return };
            if l.live >= MAX_CONNS {
                return;
            }
            let client = match sock.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // No descriptors or memory: it would poll readable all the while.
                    l.paused_until = Some(now + ACCEPT_PAUSE);
                    self.note(i, format!("accepting: {e}; not accepting for a second"));
                    return;
                }
            };
            l.counts.accepted += 1;
            let opened = client.set_nonblocking(true).and_then(|()| {
                let _ = client.set_nodelay(true);
                connect_nonblocking(to)
            });
            match opened {
                Ok((target, connecting)) => {
                    let _ = target.set_nodelay(true);
                    l.live += 1;
                    self.conns.push(Conn {
                        fwd: i,
                        client,
                        target,
                        connecting,
                        up: Flow::default(),
                        down: Flow::default(),
                    });
                }
                // The client's connection closes with it.
                Err(_) => l.counts.refused += 1,
            }
        }
    }
}

impl PollSource for Forwarder {
    fn interest(&self) -> Vec<PollFd> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.listeners.len() + 2 * self.conns.len());
        for l in &self.listeners {
            let paused = l.paused_until.is_some_and(|t| now < t);
            if let (Some(s), false, true) = (&l.sock, paused, l.live < MAX_CONNS) {
                out.push(PollFd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                });
            }
        }
        for c in &self.conns {
            c.interest(&mut out);
        }
        out
    }

    fn service(&mut self, ready: &[PollFd]) {
        let now = Instant::now();
        let revents: HashMap<RawFd, i16> = ready.iter().map(|p| (p.fd, p.events)).collect();
        let rev = |fd: RawFd| revents.get(&fd).copied().unwrap_or(0);
        // The connections first (those polled: a connection accepted below is new, and
        // its descriptor may have the number of one closed here), each in turn from
        // where the last pass stopped, within the pass's budget.
        let mut budget = PASS_BYTES;
        let n = self.conns.len();
        let start = if n == 0 { 0 } else { self.next % n };
        let mut ended = vec![None; n];
        for k in 0..n {
            let i = (start + k) % n;
            let c = &mut self.conns[i];
            let (crev, trev) = (rev(c.client.as_raw_fd()), rev(c.target.as_raw_fd()));
            if crev == 0 && trev == 0 {
                continue;
            }
            let step = c.step(crev, trev, &mut self.scratch, &mut budget);
            if step != Step::Open {
                ended[i] = Some(step);
            }
        }
        self.next = start.wrapping_add(1);
        if ended.iter().any(Option::is_some) {
            let mut k = 0;
            let listeners = &mut self.listeners;
            self.conns.retain(|c| {
                let end = ended[k];
                k += 1;
                let Some(end) = end else { return true };
                let l = &mut listeners[c.fwd];
                l.live -= 1;
                l.counts.up += c.up.bytes;
                l.counts.down += c.down.bytes;
                match end {
                    Step::Refused => l.counts.refused += 1,
                    Step::Cut => l.counts.cut += 1,
                    _ => {}
                }
                false
            });
        }
        // Then the listeners: bound again if they could not be, accepting if ready.
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if l.paused_until.is_some_and(|t| now >= t) {
                l.paused_until = None;
            }
            match &l.sock {
                None if now >= l.retry_at => self.bind(i, now),
                Some(s) if rev(s.as_raw_fd()) & libc::POLLIN != 0 => self.accept(i, now),
                _ => {}
            }
        }
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn summary(&self) -> Vec<String> {
        self.listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut c = l.counts;
                for conn in self.conns.iter().filter(|c| c.fwd == i) {
                    c.up += conn.up.bytes;
                    c.down += conn.down.bytes;
                }
                format!(
                    "{}: {} connections ({} refused by the child, {} cut by an error or \
                     reset, {} open), {} bytes to the child, {} from it",
                    l.fwd.shown(),
                    c.accepted,
                    c.refused,
                    c.cut,
                    l.live,
                    c.up,
                    c.down
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// A "child" listening on 127.0.0.1 (an ephemeral port), and a forwarder to it.
    fn setup() -> (TcpListener, Forwarder) {
        let child = TcpListener::bind((LOCAL, 0)).unwrap();
        let port = child.local_addr().unwrap().port();
        let f = Forwarder::new(
            &[Forward {
                port: 0,
                child_port: port,
            }],
            LOCAL,
            LOCAL,
        );
        (child, f)
    }

    /// One wait (at most `ms`) and one service, as the worker's loop does.
    fn pump(f: &mut Forwarder, ms: u64) -> Vec<PollFd> {
        let ready = crate::dev::wait_any(&[], &f.interest(), Duration::from_millis(ms));
        f.service(&ready);
        ready
    }

    /// Pumps until `done` (at most 20 s).
    fn pump_until(f: &mut Forwarder, mut done: impl FnMut(&mut Forwarder) -> bool) {
        let t = Instant::now();
        while !done(f) {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out");
            pump(f, 20);
        }
    }

    /// Reads `sock` to its end (the peer's close) while the relay runs.
    fn read_to_end_pumping(f: &mut Forwarder, sock: &mut TcpStream) -> Vec<u8> {
        sock.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let mut got = Vec::new();
        pump_until(f, |_| {
            let mut buf = [0u8; 16];
            match sock.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    false
                }
                Err(_) => false,
            }
        });
        got
    }

    fn connect(f: &Forwarder) -> TcpStream {
        TcpStream::connect((LOCAL, f.local_port(0).unwrap())).unwrap()
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn forwards_parse_and_show() {
        let f = Forward::parse("8081:80").unwrap();
        assert_eq!(
            f,
            Forward {
                port: 8081,
                child_port: 80
            }
        );
        assert_eq!(f.to_arg(), "fwd:8081:80");
        assert_eq!(f.shown(), "fwd:8081->80");
        assert_eq!(Forward::parse_arg("fwd:8081:80"), Some(Ok(f)));
        assert_eq!(Forward::parse_arg("net"), None);
        assert_eq!(
            Forward::parse("65535:1"),
            Ok(Forward {
                port: 65535,
                child_port: 1
            })
        );
        for bad in [
            "",
            "80",
            "0:80",
            "80:0",
            "65536:80",
            "80:65536",
            "a:80",
            "80:b",
            ":80",
            "80:",
            "+80:80",
            "80:80:80",
            " 80:80",
            "-1:80",
            "000080:80",
        ] {
            assert_eq!(
                Forward::parse(bad),
                Err(format!("`{bad}` is not PORT:CHILDPORT (each 1 to 65535)")),
                "{bad:?}"
            );
        }
        assert_eq!(
            Forward::parse_arg("fwd:1:2:3"),
            Some(Err(
                "`fwd:1:2:3` is not a forward (fwd:PORT:CHILDPORT, each 1 to 65535)".into()
            ))
        );
    }

    #[test]
    fn a_port_in_use_is_refused_by_the_probe() {
        let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let e = probe(port).unwrap_err();
        assert_eq!(
            e,
            format!(
                "cannot forward port {port}: it is in use in this VM (something listens on it)"
            )
        );
        drop(busy);
        assert_eq!(probe(port), Ok(()));
        // The probe closed its socket again: the port can be bound.
        assert!(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok());
    }

    /// A client sends 1 MiB and half-closes; the child reads it all, then answers with
    /// 1 MiB of its own after the client's FIN, and closes: every byte arrives, in
    /// order, both ways, and the relay forgets the connection.
    #[test]
    fn bytes_are_relayed_both_ways_and_a_half_close_passes() {
        let (child, mut f) = setup();
        let port = f.local_port(0).unwrap();
        let up = pattern(1 << 20, 1);
        let down = pattern(1 << 20, 7);
        let (want_up, answer) = (up.clone(), down.clone());
        let server = thread::spawn(move || {
            let (mut s, _) = child.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(
                got == want_up,
                "the child got {} bytes, not the client's",
                got.len()
            );
            // The client's FIN came through, the way back is still open.
            s.write_all(&answer).unwrap();
        });
        let client = thread::spawn(move || {
            let mut c = TcpStream::connect((LOCAL, port)).unwrap();
            c.write_all(&up).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        pump_until(&mut f, |_| server.is_finished() && client.is_finished());
        server.join().unwrap();
        assert!(client.join().unwrap() == down);
        pump_until(&mut f, |f| f.connections() == 0);
        let s = f.summary().join("");
        assert_eq!(
            s,
            format!(
                "fwd:0->{}: 1 connections (0 refused by the child, 0 cut by an error or \
                 reset, 0 open), 1048576 bytes to the child, 1048576 from it",
                f.listeners[0].fwd.child_port
            )
        );
    }

    /// The child half-closes first: the client sees its FIN and can still send; the
    /// connection ends when the client closes too.
    #[test]
    fn a_half_close_by_the_child_passes_too() {
        let (child, mut f) = setup();
        let mut c = connect(&f);
        let mut s = None;
        pump_until(&mut f, |_| {
            child.set_nonblocking(true).unwrap();
            s = child.accept().ok().map(|(s, _)| s);
            s.is_some()
        });
        let mut s = s.unwrap();
        s.set_nonblocking(false).unwrap();
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_end_pumping(&mut f, &mut c);
        assert_eq!(got, b"bye");
        // Still one connection: the client's direction is open.
        assert_eq!(f.connections(), 1);
        c.write_all(b"still here").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let got = read_to_end_pumping(&mut f, &mut s);
        assert_eq!(got, b"still here");
        pump_until(&mut f, |f| f.connections() == 0);
    }

    /// Nothing listens on the child's port: the client's connection closes.
    #[test]
    fn a_target_that_refuses_closes_the_client() {
        let nobody = TcpListener::bind((LOCAL, 0)).unwrap();
        let port = nobody.local_addr().unwrap().port();
        drop(nobody);
        let mut f = Forwarder::new(
            &[Forward {
                port: 0,
                child_port: port,
            }],
            LOCAL,
            LOCAL,
        );
        let mut c = connect(&f);
        c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        pump_until(&mut f, |_| {
            let mut buf = [0u8; 4];
            match c.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => panic!("data from nowhere"),
                Err(e) if retry(&e) => false,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            }
        });
        pump_until(&mut f, |f| f.connections() == 0);
        assert_eq!(f.listeners[0].counts.refused, 1);
        assert_eq!(f.listeners[0].live, 0);
    }

    /// At most [`MAX_CONNS`] at a time: the listener is not polled meanwhile, and the
    /// next client is accepted (and relayed) once one closes.
    #[test]
    fn connections_are_capped() {
        let (child, mut f) = setup();
        child.set_nonblocking(true).unwrap();
        let listen_fd = f.listeners[0].sock.as_ref().unwrap().as_raw_fd();
        let mut clients: Vec<TcpStream> = (0..MAX_CONNS + 1).map(|_| connect(&f)).collect();
        // The child's side: connections accepted, and closed once the client's FIN
        // comes through.
        let mut served: Vec<TcpStream> = Vec::new();
        let serve = |served: &mut Vec<TcpStream>| {
            while let Ok((s, _)) = child.accept() {
                s.set_nonblocking(true).unwrap();
                served.push(s);
            }
            served.retain_mut(|s| !matches!(s.read(&mut [0u8; 1]), Ok(0)));
        };
        pump_until(&mut f, |f| {
            serve(&mut served);
            f.connections() == MAX_CONNS && served.len() == MAX_CONNS
        });
        // A while more: the last client waits in the backlog, the listener is not
        // polled.
        for _ in 0..10 {
            pump(&mut f, 10);
        }
        serve(&mut served);
        assert_eq!((f.connections(), served.len()), (MAX_CONNS, MAX_CONNS));
        assert_eq!(f.listeners[0].counts.accepted, MAX_CONNS as u64);
        assert!(f.interest().iter().all(|p| p.fd != listen_fd));
        // One closes: the last one gets its turn.
        drop(clients.remove(0));
        pump_until(&mut f, |f| {
            serve(&mut served);
            f.listeners[0].counts.accepted == MAX_CONNS as u64 + 1
                && f.connections() == MAX_CONNS
                && served.len() == MAX_CONNS
        });
        assert!(f.interest().iter().all(|p| p.fd != listen_fd));
        // It is relayed (the newest of the child's connections).
        clients.last_mut().unwrap().write_all(b"last").unwrap();
        let mut buf = [0u8; 8];
        let mut n = 0;
        pump_until(&mut f, |_| {
            if let Ok(k) = served.last_mut().unwrap().read(&mut buf[n..]) {
                n += k;
            }
            n == 4
        });
        assert_eq!(&buf[..4], b"last");
        // All close: none left, the listener polled again.
        drop(clients);
        pump_until(&mut f, |f| {
            serve(&mut served);
            f.connections() == 0
        });
        assert!(served.is_empty());
        assert!(f.interest().iter().any(|p| p.fd == listen_fd));
        let c = f.listeners[0].counts;
        assert_eq!((c.accepted, c.refused, c.cut), (MAX_CONNS as u64 + 1, 0, 0));
    }

    /// An idle connection is polled for input only, and the poll sleeps; a child that
    /// stops reading makes the relay stop reading the client (its descriptor no longer
    /// polled for input), and the poll still sleeps; when the child reads again,
    /// everything comes, in order.
    #[test]
    fn idle_and_backpressure_poll_without_spinning() {
        let (child, mut f) = setup();
        let mut c = connect(&f);
        let (mut s, _) = {
            let mut got = None;
            pump_until(&mut f, |f| {
                child.set_nonblocking(true).unwrap();
                got = got.take().or_else(|| child.accept().ok());
                got.is_some() && !f_connecting(f)
            });
            got.unwrap()
        };
        let (cfd, tfd) = (f.conns[0].client.as_raw_fd(), f.conns[0].target.as_raw_fd());
        let events = |f: &Forwarder, fd| f.interest().iter().find(|p| p.fd == fd).map(|p| p.events);
        assert_eq!(events(&f, cfd), Some(libc::POLLIN));
        assert_eq!(events(&f, tfd), Some(libc::POLLIN));
        // Idle: nothing to report for 200 ms.
        let t = Instant::now();
        assert!(pump(&mut f, 200).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(150));
        // The child stops reading; the client sends until nothing more fits.
        c.set_nonblocking(true).unwrap();
        let data = pattern(1 << 16, 3);
        let mut sent = Vec::new();
        let mut idle = 0;
        while idle < 20 {
            match c.write(&data) {
                Ok(n) => {
                    sent.extend_from_slice(&data[..n]);
                    idle = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => idle += 1,
                Err(e) => panic!("{e}"),
            }
            pump(&mut f, 5);
        }
        assert!(f.conns[0].up.waiting());
        assert!(f.conns[0].up.pending.len() <= FLOW_BUF);
        // The client is not polled for input (its bytes would have nowhere to go),
        // the child's side for room; neither is ready, so the poll sleeps.
        assert_eq!(events(&f, cfd), Some(0));
        assert_eq!(events(&f, tfd), Some(libc::POLLIN | libc::POLLOUT));
        let t = Instant::now();
        let ready = pump(&mut f, 200);
        assert!(ready.is_empty(), "{ready:?}");
        assert!(t.elapsed() >= Duration::from_millis(150));
        // The child reads again: all of it, in order.
        s.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        pump_until(&mut f, |_| {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got.len() == sent.len()
        });
        assert!(got == sent);
        assert_eq!(events(&f, cfd), Some(libc::POLLIN));
    }

    fn f_connecting(f: &Forwarder) -> bool {
        f.conns.iter().any(|c| c.connecting) || f.conns.is_empty()
    }

    /// An error on either side closes both: the child resets, the client sees the
    /// connection end.
    #[test]
    fn a_reset_closes_both_sides() {
        let (child, mut f) = setup();
        let mut c = connect(&f);
        let mut s = None;
        // Connected at both ends (not a refusal: the connection was made).
        pump_until(&mut f, |f| {
            child.set_nonblocking(true).unwrap();
            s = s.take().or_else(|| child.accept().ok().map(|(s, _)| s));
            s.is_some() && !f_connecting(f)
        });
        let s = s.unwrap();
        // SO_LINGER 0: close sends a reset.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `linger` is a live `struct linger` of the length given.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(s);
        c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        pump_until(&mut f, |_| {
            let mut buf = [0u8; 4];
            match c.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => panic!("data from nowhere"),
                Err(e) if retry(&e) => false,
                Err(_) => true,
            }
        });
        pump_until(&mut f, |f| f.connections() == 0);
        assert_eq!(f.listeners[0].counts.cut, 1);
    }

    /// A worker started again binds the same port at once, although the old one's
    /// connections are still closing.
    #[test]
    fn a_new_worker_binds_the_port_again() {
        let (child, mut f) = setup();
        let port = f.local_port(0).unwrap();
        let c = connect(&f);
        child.set_nonblocking(true).unwrap();
        let mut s = None;
        pump_until(&mut f, |_| {
            s = child.accept().ok();
            s.is_some()
        });
        drop(f);
        let g = Forwarder::new(
            &[Forward {
                port,
                child_port: 1,
            }],
            LOCAL,
            LOCAL,
        );
        assert_eq!(g.local_port(0), Some(port));
        let mut g2 = g;
        assert!(g2.take_notes()[0]
            .starts_with(&format!("fwd:{port}->1: listening on 127.0.0.1:{port}")));
        drop((c, s));
    }

    /// A pass moves at most [`PASS_BYTES`]: of eight clients with 64 KiB each ready,
    /// one pass reads four; the next goes on with the others.
    #[test]
    fn a_pass_moves_a_bounded_amount() {
        let (child, mut f) = setup();
        child.set_nonblocking(true).unwrap();
        let mut clients: Vec<TcpStream> = (0..8).map(|_| connect(&f)).collect();
        let mut served = Vec::new();
        pump_until(&mut f, |f| {
            while let Ok((s, _)) = child.accept() {
                s.set_nonblocking(true).unwrap();
                served.push(s);
            }
            served.len() == 8 && f.connections() == 8 && !f.conns.iter().any(|c| c.connecting)
        });
        let data = pattern(FLOW_BUF, 9);
        for c in &mut clients {
            c.write_all(&data).unwrap();
        }
        thread::sleep(Duration::from_millis(100));
        let read = |f: &Forwarder| f.conns.iter().map(|c| c.up.bytes).sum::<u64>();
        pump(&mut f, 100);
        assert_eq!(read(&f), PASS_BYTES as u64);
        // The next pass serves the others (all of them, unless writing what the
        // child's side did not take at once used some of its budget).
        pump(&mut f, 100);
        assert!(read(&f) > PASS_BYTES as u64);
        let mut got = 0;
        let mut buf = vec![0u8; FLOW_BUF];
        pump_until(&mut f, |_| {
            for s in &mut served {
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
            }
            got == 8 * FLOW_BUF
        });
    }

    /// In the backend's loop, beside a device: the loop polls the relay's sockets with
    /// the doorbells, and serves them after each wait; the log has the forward's lines.
    #[test]
    fn the_backend_loop_relays() {
        use crate::backend::tests::{FakeChild, Log, CID};
        use crate::backend::{run_loop, Backend};
        let (child, f) = setup();
        let port = f.local_port(0).unwrap();
        let cport = child.local_addr().unwrap().port();
        let log = Log::default();
        let rng = crate::rng::Rng::with_source(Box::new(|b: &mut [u8]| {
            b.fill(1);
            Ok(())
        }));
        let mut b = Backend::new(CID, vec![Box::new(rng)], Box::new(log.clone()));
        b.add_source(Box::new(f));
        let server = thread::spawn(move || {
            let (mut s, _) = child.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
        });
        let client = thread::spawn(move || {
            let mut c = TcpStream::connect((LOCAL, port)).unwrap();
            c.write_all(b"echo me").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        let t = Instant::now();
        let mut passes = 0;
        let mut children = [FakeChild::new(0x10000)];
        run_loop(&mut b, &mut children, &mut |cs, fds| {
            passes += 1;
            assert!(t.elapsed() < Duration::from_secs(20), "timed out");
            if server.is_finished() && client.is_finished() {
                cs[0].gone_after_calls(0);
            }
            crate::dev::wait_any(&[], fds, Duration::from_millis(50))
        })
        .unwrap();
        assert_eq!(client.join().unwrap(), b"echo me");
        server.join().unwrap();
        assert!(passes < 200, "{passes} passes");
        let text = log.text();
        assert!(
            text.starts_with(&format!(
                "dsx backend (CID {CID}): fwd:0->{cport}: listening on 127.0.0.1:{port}, \
                 relaying to 127.0.0.1:{cport}\n"
            )),
            "{text}"
        );
        let sums = b.summaries();
        assert_eq!(sums.len(), 1, "{sums:?}");
        assert!(
            sums[0].ends_with(
                "1 connections (0 refused by the child, 0 cut by an error or \
                 reset, 0 open), 7 bytes to the child, 7 from it"
            ),
            "{sums:?}"
        );
    }

    /// A port that cannot be bound is logged and tried again.
    #[test]
    fn a_busy_port_is_tried_again() {
        let busy = TcpListener::bind((LOCAL, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let mut f = Forwarder::new(
            &[Forward {
                port,
                child_port: 80,
            }],
            LOCAL,
            LOCAL,
        );
        assert_eq!(f.local_port(0), None);
        assert!(f.interest().is_empty());
        let notes = f.take_notes();
        assert!(notes[0].starts_with(&format!(
            "fwd:{port}->80: cannot listen on 127.0.0.1:{port}: "
        )));
        assert!(notes[0].ends_with("trying again every 5 s"), "{notes:?}");
        drop(busy);
        f.service(&[]);
        assert_eq!(f.local_port(0), None);
        f.listeners[0].retry_at = Instant::now();
        f.service(&[]);
        assert_eq!(f.local_port(0), Some(port));
        assert!(f.take_notes()[0].contains("(at last)"));
    }
}
