//! virtio-net (virtio 1.2, section 5.1): a network card on a TAP device of this VM.
//!
//! Child CID *c* started with `dsx run --net` gets one card, MAC `52:54:00:77:00:<c>`
//! (in hex), whose backend creates the TAP device `dsxtap<c>` in this VM, puts it on
//! the bridge [`BRIDGE`] (created on first use, this VM its [`Subnet::router`] on it)
//! and brings it up. The child takes `10.N.0.<c>/24` with the router as its gateway
//! from its command line (`dsx.ip=`, [`cmdline_arg`]), so CIDs 2 to [`CID_MAX`] only.
//! Its bridge port is isolated unless `--net-open`: the bridge forwards a frame between
//! two ports unless both are isolated, and always delivers to this VM, which routes
//! the children's traffic to its own uplink behind NAT ([`crate::nat`]).
//!
//! Every level of the tree has its own network ([`Subnet`]): 10.77.0.0/24 behind the
//! Root VM, 10.78.0.0/24 behind each of its children that has a network of its own,
//! and so on, each hidden behind its router's address by that router's NAT, so a
//! child gives its own children a network the same way its parent gave it one.
//!
//! The card offers only `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_STATUS` (link up): no
//! offloads, no mergeable receive buffers, no control queue, one queue pair. Every
//! frame carries the 12-byte `struct virtio_net_hdr_v1` in the child's buffers, which
//! the backend adds and strips itself (the TAP has no `IFF_VNET_HDR`).
//!
//! Transmit (queue 1): each chain's device-readable bytes after the header are one
//! frame, written to the TAP without waiting (dropped when it has no room); a chain
//! with a device-writable buffer, shorter than a header and an Ethernet header or
//! longer than a header and [`FRAME_MAX`] is dropped. Every chain comes back with
//! used length 0. Receive (queue 0): while the TAP has a frame and the queue a buffer,
//! one frame per buffer, behind an all-zero header with `num_buffers` 1; the used
//! length is 12 + the frame's. A buffer too small for its frame comes back empty (the
//! frame is dropped); one with a device-readable part or no room for the header comes
//! back empty without taking a frame. Without buffers, frames stay in the TAP's queue
//! (the kernel drops what does not fit there), never in `dsx`. A pass moves at most a
//! queue's worth each way, so a flood from either side cannot hold up the loop.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use diosix_abi::DeviceSpec;

use crate::backend::VirtioDevice;
use crate::blk::{pieces, take, Seg};
use crate::hv::DeviceDecl;
use crate::virtq::{read_spans, ChildMem, Desc, QueueError};

/// The virtio device ID of a network card.
pub const DEVICE_ID: u32 = 1;
/// QueueNumMax of both queues.
pub const QUEUE_MAX: u32 = 256;
/// The receive queue.
pub const RX: usize = 0;
/// The transmit queue.
pub const TX: usize = 1;
/// Bytes of `struct virtio_net_hdr_v1` (the header a `VIRTIO_F_VERSION_1` driver puts
/// before every frame: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers).
pub const HDR_LEN: usize = 12;
/// Bytes of an Ethernet header: the shortest frame sent.
pub const ETH_HLEN: usize = 14;
/// The longest frame either way (a 65535-byte MTU, its Ethernet header and a VLAN
/// tag fit).
pub const FRAME_MAX: usize = 65550;
/// Bytes of the configuration declared: `mac[6]` and `status` (u16).
pub const CONFIG_LEN: usize = 8;
/// `status`: the link is up.
pub const S_LINK_UP: u16 = 1;
/// The TUN/TAP device node.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The bridge the children's TAPs are ports of.
pub const BRIDGE: &str = "dsxbr0";
/// The children's network's prefix length.
pub const PREFIX_LEN: u32 = 24;
/// The netmask of [`PREFIX_LEN`].
const NETMASK: [u8; 4] = [255, 255, 255, 0];
/// The highest CID that can have a network (10.77.0.255 is the broadcast address).
pub const CID_MAX: u64 = 254;
/// The first five bytes of every MAC on the bridge (`52:54:00` is the locally
/// administered block QEMU uses too); the last is the CID, 1 for this VM's bridge.
pub const MAC_PREFIX: [u8; 5] = [0x52, 0x54, 0x00, 0x77, 0x00];
/// The command-line word that gives a child its address and gateway.
pub const CMDLINE_KEY: &str = "dsx.ip=";
/// Most frame bytes one read of the child's transmit buffers gathers (at least one
/// frame): fewer CHILD_MEM_READs when buffers lie close together, bounded memory.
const TX_GROUP: usize = 64 * 1024;
/// Most host-side errors one card logs.
const NOTES_MAX: u32 = 8;

/// Device feature bits (virtio 1.2, 5.1.3).
pub mod features {
    /// `mac` in the configuration is the card's address.
    pub const MAC: u64 = 1 << 5;
    /// `status` in the configuration says whether the link is up.
    pub const STATUS: u64 = 1 << 16;
}

/// The network a VM gives its children: `10.N.0.0/24`, the VM itself `10.N.0.1` on
/// its bridge, child CID *c* `10.N.0.c`. N is [`Subnet::FIRST`] in a VM that is on no
/// such network itself (the Root VM), one more than its own network's in a VM that is
/// (its command line has `dsx.ip=10.N.0.x/..`): each level of the tree its own
/// network, so a VM's own address never lies on its children's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// N, the second byte of every address.
    level: u8,
}

impl Subnet {
    /// The Root VM's children's network: 10.77.0.0/24.
    pub const FIRST: Subnet = Subnet { level: 77 };
    /// The deepest network: 10.254.0.0/24.
    const LAST: u8 = 254;

    /// The network a VM whose kernel command line is `cmdline` gives its children.
    pub fn of_cmdline(cmdline: &str) -> Result<Subnet, String> {
        let Some(own) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(CMDLINE_KEY))
        else {
            return Ok(Subnet::FIRST);
        };
        let address = own.split(['/', ',']).next().unwrap_or_default();
        let bytes: Vec<Option<u8>> = address.split('.').map(|b| b.parse().ok()).collect();
        match bytes[..] {
            [Some(10), Some(n), Some(0), Some(_)]
                if (Subnet::FIRST.level..Subnet::LAST).contains(&n) =>
            {
                Ok(Subnet { level: n + 1 })
            }
            _ => Err(format!(
                "this VM's own address ({CMDLINE_KEY}{own}) is not on a network dsx gives \
                 (10.N.0.x/{PREFIX_LEN}, N {} to {}): cannot choose one for its children",
                Subnet::FIRST.level,
                Subnet::LAST - 1
            )),
        }
    }

    /// The network this VM gives its children (from `/proc/cmdline`).
    pub fn of_this_vm() -> Result<Subnet, String> {
        Subnet::of_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    /// The network's own address: `10.N.0.0`.
    pub fn network(self) -> [u8; 4] {
        [10, self.level, 0, 0]
    }

    /// This VM's address on the bridge, the children's gateway: `10.N.0.1`.
    pub fn router(self) -> [u8; 4] {
        self.address(1)
    }

    /// Child `cid`'s address (`cid` at most [`CID_MAX`]; only its low byte counts).
    pub fn address(self, cid: u64) -> [u8; 4] {
        [10, self.level, 0, cid as u8]
    }
}

/// `Ok` if child `cid` can have a network: its address is 10.N.0.`cid`.
pub fn check_cid(cid: u64) -> Result<(), String> {
    if (2..=CID_MAX).contains(&cid) {
        Ok(())
    } else {
        Err(format!(
            "a child with a network (--net) gets the address 10.N.0.CID, so its CID must \
             be 2 to {CID_MAX}; this one would be CID {cid}"
        ))
    }
}

/// Child `cid`'s TAP device in this VM.
pub fn tap_name(cid: u64) -> String {
    format!("dsxtap{cid}")
}

/// The MAC of child `cid` (1: this VM's bridge); only the CID's low byte counts, as
/// only CIDs up to [`CID_MAX`] have a network.
pub fn mac(cid: u64) -> [u8; 6] {
    let mut m = [0u8; 6];
    m[..5].copy_from_slice(&MAC_PREFIX);
    m[5] = cid as u8;
    m
}

/// `52:54:00:77:00:05`.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `10.77.0.5`.
pub fn dotted(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The command-line word that configures child `cid` on `net`:
/// `dsx.ip=10.77.0.5/24,10.77.0.1` (address/prefix, gateway), which the guest's
/// `/etc/init.d/rcS` applies to `eth0`.
pub fn cmdline_arg(net: Subnet, cid: u64) -> String {
    format!(
        "{CMDLINE_KEY}{}/{PREFIX_LEN},{}",
        dotted(net.address(cid)),
        dotted(net.router())
    )
}

/// `cmdline` with [`cmdline_arg`] added at the end, unless it already has a
/// `dsx.ip=` word (the user's own, which then stands); a command line of its own
/// without one.
pub fn with_cmdline(cmdline: Option<&str>, net: Subnet, cid: u64) -> String {
    match cmdline {
        Some(c) if c.split_whitespace().any(|w| w.starts_with(CMDLINE_KEY)) => c.to_string(),
        Some(c) if !c.trim().is_empty() => {
            format!("{} {}", c.trim_end(), cmdline_arg(net, cid))
        }
        _ => cmdline_arg(net, cid),
    }
}

/// What SPAWN declares for child `cid`'s card (refused for a CID without an address).
pub fn decl(cid: u64) -> Result<DeviceDecl, String> {
    check_cid(cid)?;
    Ok(decl_unchecked(cid))
}

fn decl_unchecked(cid: u64) -> DeviceDecl {
    let mut config = Vec::with_capacity(CONFIG_LEN);
    config.extend_from_slice(&mac(cid));
    config.extend_from_slice(&S_LINK_UP.to_le_bytes());
    DeviceDecl {
        spec: DeviceSpec {
            size: DeviceSpec::SIZE as u32,
            device_id: DEVICE_ID,
            features: features::MAC | features::STATUS,
            queue_count: 2,
            queue_max: QUEUE_MAX,
            ..DeviceSpec::default()
        },
        config,
    }
}

/// Whether this VM can give children a network, `tun` being its TUN device node and
/// `cmdline` its own kernel command line (`/proc/cmdline`): the network it gives them.
pub fn support(tun: &Path, cmdline: &str) -> Result<Subnet, String> {
    let net = Subnet::of_cmdline(cmdline)?;
    if !tun.exists() {
        return Err(format!(
            "this VM's kernel has no TUN support ({} does not exist): --net needs it \
             (CONFIG_TUN)",
            tun.display()
        ));
    }
    Ok(net)
}

/// Where a card's frames go and come from: the TAP device, or a fake in the tests.
pub trait Tap {
    /// Reads one waiting frame into `buf` (never waits): its length, `None` if none
    /// waits. A frame longer than `buf` comes truncated.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Sends one frame (never waits): `false` if it was dropped for want of room.
    fn send(&mut self, frame: &[u8]) -> io::Result<bool>;
    /// Whether a frame waits, or a read has an error to report (without reading).
    fn readable(&self) -> bool;
    /// The descriptor `poll(2)` reports readable when a frame waits.
    fn fd(&self) -> Option<RawFd>;
}

/// A TAP device (or any descriptor that reads and writes one frame at a time),
/// nonblocking.
#[derive(Debug)]
pub struct FdTap {
    fd: OwnedFd,
}

impl FdTap {
    /// Frames through `fd`, which must be nonblocking.
    pub fn from_fd(fd: OwnedFd) -> FdTap {
        FdTap { fd }
    }
}

impl Tap for FdTap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is a live, exclusively borrowed buffer of `buf.len()` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                return Ok(Some(n as usize));
            }
            if n == 0 {
                // A TAP never reads 0 bytes; anything else that does has hung up (and
                // would poll readable for ever).
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of file"));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        loop {
            // SAFETY: `frame` is a live buffer of `frame.len()` bytes.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::ENOBUFS) => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    fn readable(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call; no waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        // An error or hang-up (a TAP deleted under the backend polls POLLERR for ever)
        // is for `recv` to find, so that the backend stops waiting on it.
        n > 0 && pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

/// The legacy bridge ioctls (`linux/sockios.h`; the libc crate has them only for
/// Android): create a bridge by name, add a port to one by interface index.
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// An `ifreq` naming interface `name` (the rest zero).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let b = name.as_bytes();
    if b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `ifreq` is plain data (a name and a union of integers, socket addresses
    // and a pointer), for which all-zero bytes are a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in r.ifr_name.iter_mut().zip(b) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

/// An IPv4 address as `struct sockaddr` (a `sockaddr_in`: family, port 0, address).
fn inet_sockaddr(ip: [u8; 4]) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    for (d, s) in sa_data[2..6].iter_mut().zip(ip) {
        *d = s as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// An Ethernet address as `struct sockaddr` (SIOCSIFHWADDR).
fn ether_sockaddr(mac: [u8; 6]) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    for (d, s) in sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data,
    }
}

/// A socket for the interface ioctls (SIOC*: an AF_INET datagram socket, as
/// `ifconfig` and `brctl` use; no netlink).
struct Ctl(OwnedFd);

impl Ctl {
    fn new() -> io::Result<Ctl> {
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(Ctl(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, req: libc::c_ulong, r: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every request made through here (SIOCGIFFLAGS, SIOCSIFFLAGS,
        // SIOCGIFINDEX, SIOCGIFADDR, SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFHWADDR,
        // SIOCBRADDIF) reads and writes exactly one `struct ifreq`, and `r` is a live,
        // exclusively borrowed one.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), req as _, r as *mut libc::ifreq) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Brings interface `name` up (SIOCSIFFLAGS with IFF_UP), if it is not.
    fn up(&self, name: &str) -> io::Result<()> {
        let mut r = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut r)?;
        // SAFETY: SIOCGIFFLAGS set the union's `ifru_flags`.
        let flags = unsafe { r.ifr_ifru.ifru_flags };
        let up = libc::IFF_UP as libc::c_short;
        if flags & up != 0 {
            return Ok(());
        }
        r.ifr_ifru.ifru_flags = flags | up;
        self.ioctl(libc::SIOCSIFFLAGS, &mut r)
    }

    fn index(&self, name: &str) -> io::Result<libc::c_int> {
        let mut r = ifreq(name)?;
        self.ioctl(libc::SIOCGIFINDEX, &mut r)?;
        // SAFETY: SIOCGIFINDEX set the union's `ifru_ifindex`.
        Ok(unsafe { r.ifr_ifru.ifru_ifindex })
    }

    /// Whether interface `name` has an IPv4 address.
    fn has_address(&self, name: &str) -> io::Result<bool> {
        let mut r = ifreq(name)?;
        match self.ioctl(libc::SIOCGIFADDR, &mut r) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn set_sockaddr(&self, name: &str, req: libc::c_ulong, sa: libc::sockaddr) -> io::Result<()> {
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_addr = sa;
        self.ioctl(req, &mut r)
    }

    /// Creates bridge `name` (SIOCBRADDBR): `false` if it exists already.
    fn add_bridge(&self, name: &str) -> io::Result<bool> {
        let r = ifreq(name)?;
        // SAFETY: SIOCBRADDBR reads a NUL-terminated name of at most IFNAMSIZ bytes
        // at the pointer: `r.ifr_name` is IFNAMSIZ bytes, NUL-terminated (`ifreq`
        // leaves at least its last byte zero), and lives through the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCBRADDBR as _, r.ifr_name.as_ptr()) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// Adds interface `index` to bridge `bridge` (SIOCBRADDIF).
    fn add_port(&self, bridge: &str, index: libc::c_int) -> io::Result<()> {
        let mut r = ifreq(bridge)?;
        r.ifr_ifru.ifru_ifindex = index;
        self.ioctl(SIOCBRADDIF, &mut r)
    }
}

/// Creates [`BRIDGE`] if it does not exist, gives it `net`'s router address and MAC
/// `52:54:00:77:00:01` if it has no address (just created, or left half set up), and
/// brings it up. Its MAC is set so that it stays the same whatever ports come and go
/// (a bridge otherwise takes its lowest port's, and the children's ARP caches would go
/// stale). Says what it did, if anything.
fn ensure_bridge(ctl: &Ctl, net: Subnet) -> Result<Option<String>, String> {
    let created = ctl.add_bridge(BRIDGE).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOPKG) {
            format!(
                "this VM's kernel has no bridge support (CONFIG_BRIDGE): cannot create {BRIDGE}"
            )
        } else {
            format!("cannot create the bridge {BRIDGE}: {e}")
        }
    })?;
    let set_up = |what: &str, e: io::Error| format!("cannot {what} of the bridge {BRIDGE}: {e}");
    let mut said = None;
    let addressed = ctl
        .has_address(BRIDGE)
        .map_err(|e| set_up("read the address", e))?;
    if created || !addressed {
        ctl.set_sockaddr(BRIDGE, libc::SIOCSIFHWADDR, ether_sockaddr(mac(1)))
            .map_err(|e| set_up("set the MAC", e))?;
        ctl.set_sockaddr(BRIDGE, libc::SIOCSIFADDR, inet_sockaddr(net.router()))
            .map_err(|e| set_up("set the address", e))?;
        ctl.set_sockaddr(BRIDGE, libc::SIOCSIFNETMASK, inet_sockaddr(NETMASK))
            .map_err(|e| set_up("set the netmask", e))?;
        said = Some(format!(
            "{} the bridge {BRIDGE}: {}/{PREFIX_LEN}, MAC {}",
            if created { "created" } else { "set up" },
            dotted(net.router()),
            mac_text(&mac(1))
        ));
    }
    ctl.up(BRIDGE).map_err(|e| set_up("bring up", e))?;
    Ok(said)
}

/// Creates child `cid`'s TAP device ([`tap_name`]: `IFF_TAP | IFF_NO_PI`, no
/// `IFF_VNET_HDR`, nonblocking), puts it on [`BRIDGE`] (made by [`ensure_bridge`] for
/// `net`, whose traffic this VM then routes: [`crate::nat::install`]), isolates its port unless `open` (`/sys/class/net/TAP/brport/isolated`), and brings it
/// up. The TAP is not persistent: it goes when the descriptor is closed (the backend
/// ends). Returns it with what to log.
pub fn create_tap(cid: u64, open: bool, net: Subnet) -> Result<(FdTap, Vec<String>), String> {
    check_cid(cid)?;
    let name = tap_name(cid);
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(TUN_PATH)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                format!("this VM's kernel has no TUN support ({TUN_PATH} does not exist)")
            } else {
                format!("cannot open {TUN_PATH}: {e}")
            }
        })?;
    let mut r = ifreq(&name).map_err(|e| format!("{name}: {e}"))?;
    r.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `r` is a live, exclusively
    // borrowed one.
    let rc = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF as _,
            &mut r as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => format!("the TAP device {name} is in use (another backend?)"),
            _ => format!("cannot create the TAP device {name}: {e}"),
        });
    }
    let ctl = Ctl::new().map_err(|e| format!("cannot open a socket for ioctls: {e}"))?;
    let mut notes: Vec<String> = ensure_bridge(&ctl, net)?.into_iter().collect();
    // The way out: a VM whose kernel cannot masquerade still gives its children a
    // network to itself (and says why they reach nothing beyond).
    notes.push(
        match crate::nat::install(net.network(), PREFIX_LEN, BRIDGE) {
            Ok(done) => done,
            Err(e) => format!("the children reach this VM only: {e}"),
        },
    );
    let sys = format!("/sys/class/net/{name}");
    let on_bridge = std::fs::read_link(format!("{sys}/master"))
        .is_ok_and(|m| m.file_name().is_some_and(|f| f == BRIDGE));
    if !on_bridge {
        ctl.index(&name)
            .and_then(|i| ctl.add_port(BRIDGE, i))
            .map_err(|e| format!("cannot add {name} to the bridge {BRIDGE}: {e}"))?;
    }
    let isolated = format!("{sys}/brport/isolated");
    match std::fs::write(&isolated, if open { "0\n" } else { "1\n" }) {
        Ok(()) => {}
        // An open port is what the bridge makes anyway.
        Err(_) if open => {}
        Err(e) => {
            return Err(format!(
                "cannot isolate {name}'s bridge port ({isolated}): {e}"
            ))
        }
    }
    ctl.up(&name)
        .map_err(|e| format!("cannot bring {name} up: {e}"))?;
    notes.push(format!(
        "{name} on {BRIDGE}, its port {}; the child is {} ({}/{PREFIX_LEN}, gateway {})",
        if open {
            "open (reaches every port)"
        } else {
            "isolated (reaches this VM and open ports only)"
        },
        mac_text(&mac(cid)),
        dotted(net.address(cid)),
        dotted(net.router())
    ));
    Ok((FdTap::from_fd(OwnedFd::from(tun)), notes))
}

/// What a card counted, for the log when its backend ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Transmit requests dropped for want of room in the TAP (or its error).
    pub tx_dropped: u64,
    /// Transmit requests dropped as malformed.
    pub tx_bad: u64,
    /// Frames given to the child.
    pub rx_frames: u64,
    /// Frames dropped: longer than the buffer they met.
    pub rx_dropped: u64,
    /// Receive buffers given back empty as malformed.
    pub rx_bad: u64,
}

/// A network card.
pub struct Net {
    cid: u64,
    tap: Box<dyn Tap>,
    /// A frame received, behind room for its header (and one byte more than the
    /// longest frame, to tell one too long).
    rx: Vec<u8>,
    /// A frame to send.
    tx: Vec<u8>,
    /// The latest receive pass left buffers because the TAP had no frame: wait for it.
    rx_waiting: bool,
    counts: Counts,
    notes: Vec<String>,
    noted: u32,
}

/// The frame a transmit request carries: its device-readable bytes after the header,
/// as CHILD_MEM copies, and its length; `None` for a request to drop (a
/// device-writable buffer; fewer bytes than a header and an Ethernet header, or more
/// than a header and [`FRAME_MAX`]).
fn tx_frame(chain: &[Desc]) -> Option<(Vec<(u64, usize)>, usize)> {
    let mut segs: Vec<Seg> = Vec::with_capacity(chain.len());
    let mut total = 0u64;
    for d in chain {
        if d.writable() {
            return None;
        }
        segs.push((d.addr, u64::from(d.len)));
        // At most 1024 descriptors of less than 4 GiB: no overflow.
        total += u64::from(d.len);
    }
    let total = usize::try_from(total).ok()?;
    if !(HDR_LEN + ETH_HLEN..=HDR_LEN + FRAME_MAX).contains(&total) {
        return None;
    }
    let len = total - HDR_LEN;
    Some((pieces(&take(&segs, HDR_LEN as u64, len as u64)), len))
}

/// A receive buffer: its device-writable pieces and their length (at most what a
/// header and the longest frame need); `None` for one to give back empty (a
/// device-readable part, or no room for the header).
fn rx_room(chain: &[Desc]) -> Option<(Vec<Seg>, usize)> {
    let mut segs: Vec<Seg> = Vec::with_capacity(chain.len());
    let mut total = 0u64;
    for d in chain {
        if !d.writable() {
            return None;
        }
        segs.push((d.addr, u64::from(d.len)));
        total += u64::from(d.len);
    }
    let room = usize::try_from(total.min((HDR_LEN + FRAME_MAX) as u64)).ok()?;
    (room >= HDR_LEN).then_some((segs, room))
}

impl Net {
    /// Child `cid`'s card on a new TAP device on the bridge of `net`
    /// ([`create_tap`]).
    pub fn open(cid: u64, open: bool, net: Subnet) -> Result<Net, String> {
        let (tap, notes) = create_tap(cid, open, net)?;
        let mut net = Net::with_tap(cid, Box::new(tap));
        net.notes = notes;
        Ok(net)
    }

    /// Child `cid`'s card on `tap`.
    pub fn with_tap(cid: u64, tap: Box<dyn Tap>) -> Net {
        Net {
            cid,
            tap,
            rx: vec![0; HDR_LEN + FRAME_MAX + 1],
            tx: Vec::new(),
            rx_waiting: false,
            counts: Counts::default(),
            notes: Vec::new(),
            noted: 0,
        }
    }

    fn note(&mut self, msg: String) {
        if self.noted < NOTES_MAX {
            self.notes.push(format!("{}: {msg}", tap_name(self.cid)));
        } else if self.noted == NOTES_MAX {
            self.notes
                .push(format!("{}: further errors not logged", tap_name(self.cid)));
        }
        self.noted = self.noted.saturating_add(1);
    }

    /// Sends the frames of a pass's transmit requests, in order, reading them out of
    /// the child in groups of about [`TX_GROUP`] bytes (buffers close together in one
    /// copy).
    fn transmit(&mut self, chains: &[Vec<Desc>], mem: &mut dyn ChildMem) -> Result<(), QueueError> {
        let frames: Vec<_> = chains.iter().map(|c| tx_frame(c)).collect();
        let mut k = 0;
        while k < frames.len() {
            let start = k;
            let mut bytes = 0;
            while let Some(f) = frames.get(k) {
                let n = f.as_ref().map_or(0, |f| f.1);
                if k > start && bytes + n > TX_GROUP {
                    break;
                }
                bytes += n;
                k += 1;
            }
            let group = &frames[start..k];
            let ranges: Vec<(u64, usize)> = group
                .iter()
                .flatten()
                .flat_map(|(p, _)| p.iter().copied())
                .collect();
            let mut parts = read_spans(mem, &ranges)?.into_iter();
            for f in group {
                let Some((p, _)) = f else {
                    self.counts.tx_bad += 1;
                    continue;
                };
                self.tx.clear();
                for part in parts.by_ref().take(p.len()) {
                    self.tx.extend_from_slice(&part);
                }
                match self.tap.send(&self.tx) {
                    Ok(true) => self.counts.tx_frames += 1,
                    Ok(false) => self.counts.tx_dropped += 1,
                    Err(e) => {
                        self.counts.tx_dropped += 1;
                        let len = self.tx.len();
                        self.note(format!("sending a {len}-byte frame: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills the pass's receive buffers, in order, one frame each, while the TAP has
    /// frames; returns the used lengths of the buffers filled (or given back empty).
    fn receive(
        &mut self,
        chains: &[Vec<Desc>],
        mem: &mut dyn ChildMem,
    ) -> Result<Vec<u32>, QueueError> {
        self.rx_waiting = false;
        let mut lens = Vec::with_capacity(chains.len());
        for chain in chains {
            let Some((room, cap)) = rx_room(chain) else {
                self.counts.rx_bad += 1;
                lens.push(0);
                continue;
            };
            let n = match self.tap.recv(&mut self.rx[HDR_LEN..]) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    self.rx_waiting = true;
                    break;
                }
                Err(e) => {
                    // Not waited on: tried again at the next pass.
                    self.note(format!("receiving: {e}"));
                    break;
                }
            };
            let len = HDR_LEN + n;
            if n > FRAME_MAX || len > cap {
                self.counts.rx_dropped += 1;
                lens.push(0);
                continue;
            }
            // flags, gso_type (VIRTIO_NET_HDR_GSO_NONE), hdr_len, gso_size,
            // csum_start, csum_offset: 0; num_buffers: 1.
            self.rx[..HDR_LEN].fill(0);
            self.rx[HDR_LEN - 2..HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let mut at = 0;
            for (gpa, k) in pieces(&take(&room, 0, len as u64)) {
                mem.write(gpa, &self.rx[at..at + k])?;
                at += k;
            }
            self.counts.rx_frames += 1;
            lens.push(len as u32);
        }
        Ok(lens)
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn name(&self) -> &'static str {
        "net"
    }

    fn decl(&self) -> DeviceDecl {
        decl_unchecked(self.cid)
    }

    /// One request alone (the backend serves the queues in batches, where a receive
    /// buffer no frame waits for stays available; here it comes back empty).
    fn serve_queue(
        &mut self,
        queue: usize,
        chain: &[Desc],
        mem: &mut dyn ChildMem,
    ) -> Result<u32, QueueError> {
        let lens = self.serve_batch(queue, &[chain.to_vec()], mem)?;
        Ok(lens.first().copied().unwrap_or(0))
    }

    fn serve_batch(
        &mut self,
        queue: usize,
        chains: &[Vec<Desc>],
        mem: &mut dyn ChildMem,
    ) -> Result<Vec<u32>, QueueError> {
        match queue {
            RX => self.receive(chains, mem),
            TX => {
                self.transmit(chains, mem)?;
                Ok(vec![0; chains.len()])
            }
            // Not declared: never asked.
            _ => Ok(vec![0; chains.len()]),
        }
    }

    fn ready(&mut self, queue: usize) -> bool {
        queue != RX || !self.rx_waiting || self.tap.readable()
    }

    fn wait_fds(&self) -> Vec<RawFd> {
        if self.rx_waiting {
            self.tap.fd().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn summary(&self) -> Option<String> {
        let c = self.counts;
        Some(format!(
            "sent {} frames ({} dropped, {} malformed), received {} ({} dropped: longer \
             than their buffer; {} malformed buffers)",
            c.tx_frames, c.tx_dropped, c.tx_bad, c.rx_frames, c.rx_dropped, c.rx_bad
        ))
    }

    fn reset(&mut self) {
        self.rx_waiting = false;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::tests::{served, FakeChild, Log, BUFS, CID, LIVE};
    use crate::backend::{Backend, PollFd};
    use diosix_abi::devices::{RAISE_NEEDS_RESET, RAISE_USED_BUFFER};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// An in-memory TAP: frames for the child wait in `to_child`, frames the child
    /// sent land in `from_child`.
    #[derive(Default)]
    struct Pipe {
        to_child: VecDeque<Vec<u8>>,
        from_child: Vec<Vec<u8>>,
        /// `send` finds no room.
        full: bool,
        /// `recv` calls.
        recvs: u32,
        /// The TAP is gone: reads fail (and it polls readable, as a deleted TAP's
        /// descriptor reports POLLERR).
        gone: bool,
    }

    #[derive(Clone, Default)]
    struct FakeTap(Rc<RefCell<Pipe>>);

    /// What the fake says its descriptor is (never polled in these tests).
    const FAKE_FD: RawFd = 1000;

    impl Tap for FakeTap {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            let mut p = self.0.borrow_mut();
            p.recvs += 1;
            if p.gone {
                return Err(io::Error::from_raw_os_error(libc::EBADFD));
            }
            Ok(p.to_child.pop_front().map(|f| {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                n
            }))
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
            let mut p = self.0.borrow_mut();
            if p.full {
                return Ok(false);
            }
            p.from_child.push(frame.to_vec());
            Ok(true)
        }
        fn readable(&self) -> bool {
            let p = self.0.borrow();
            p.gone || !p.to_child.is_empty()
        }
        fn fd(&self) -> Option<RawFd> {
            Some(FAKE_FD)
        }
    }

    impl FakeTap {
        fn push(&self, frame: Vec<u8>) {
            self.0.borrow_mut().to_child.push_back(frame);
        }
        fn waiting(&self) -> usize {
            self.0.borrow().to_child.len()
        }
        fn sent(&self) -> Vec<Vec<u8>> {
            self.0.borrow().from_child.clone()
        }
    }

    /// A frame of `len` bytes: broadcast, from 52:54:00:77:00:01, then `seed`,
    /// `seed + 1` ...
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&mac(1));
        f
    }

    /// A child with a card (two queues of 8) on a fake TAP, its backend, the TAP and
    /// the log.
    fn setup() -> (FakeChild, Backend, FakeTap, Log) {
        let c = FakeChild::with_queues(0x40000, 2);
        let tap = FakeTap::default();
        let log = Log::default();
        let net = Net::with_tap(CID, Box::new(tap.clone()));
        let b = Backend::new(CID, vec![Box::new(net)], Box::new(log.clone()));
        (c, b, tap, log)
    }

    /// The header and `f` as the driver puts them in a transmit buffer.
    fn with_header(f: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HDR_LEN];
        v.extend_from_slice(f);
        v
    }

    /// The driver offers a receive buffer of `len` bytes at `at`.
    fn rx_buffer(c: &mut FakeChild, at: u64, len: u32) -> u16 {
        c.select(RX);
        c.offer(&[(at, len, true)])
    }

    #[test]
    fn declares_mac_and_link_status() {
        let d = decl(5).unwrap();
        assert_eq!(
            (
                d.spec.device_id,
                d.spec.queue_count,
                d.spec.queue_max,
                d.spec.features
            ),
            (1, 2, 256, (1 << 5) | (1 << 16))
        );
        assert_eq!(d.config, [0x52, 0x54, 0x00, 0x77, 0x00, 0x05, 1, 0]);
        assert_eq!(decl(254).unwrap().config[5], 0xfe);
        for bad in [0, 1, 255, 256, 1000] {
            assert!(decl(bad).unwrap_err().contains("must be 2 to 254"), "{bad}");
        }
        assert_eq!(mac_text(&mac(0x2a)), "52:54:00:77:00:2a");
        assert_eq!(tap_name(7), "dsxtap7");
        assert_eq!(
            cmdline_arg(Subnet::FIRST, 7),
            "dsx.ip=10.77.0.7/24,10.77.0.1"
        );
    }

    #[test]
    fn the_command_line_gets_the_address() {
        let f = Subnet::FIRST;
        assert_eq!(
            with_cmdline(Some("console=hvc0 earlycon=sbi retain_initrd"), f, 9),
            "console=hvc0 earlycon=sbi retain_initrd dsx.ip=10.77.0.9/24,10.77.0.1"
        );
        assert_eq!(with_cmdline(None, f, 9), "dsx.ip=10.77.0.9/24,10.77.0.1");
        assert_eq!(
            with_cmdline(Some("  "), f, 9),
            "dsx.ip=10.77.0.9/24,10.77.0.1"
        );
        // The user's own stands.
        let own = "quiet dsx.ip=10.77.0.50/24,10.77.0.1";
        assert_eq!(with_cmdline(Some(own), f, 9), own);
    }

    #[test]
    fn each_level_of_the_tree_has_its_own_network() {
        assert_eq!(Subnet::of_cmdline("console=hvc0"), Ok(Subnet::FIRST));
        let child = Subnet::of_cmdline("quiet dsx.ip=10.77.0.5/24,10.77.0.1 x").unwrap();
        assert_eq!(child.network(), [10, 78, 0, 0]);
        assert_eq!(child.router(), [10, 78, 0, 1]);
        assert_eq!(cmdline_arg(child, 3), "dsx.ip=10.78.0.3/24,10.78.0.1");
        let grandchild = Subnet::of_cmdline(&cmdline_arg(child, 3)).unwrap();
        assert_eq!(dotted(grandchild.address(9)), "10.79.0.9");
        assert_eq!(
            Subnet::of_cmdline("dsx.ip=10.253.0.2/24,10.253.0.1")
                .unwrap()
                .router(),
            [10, 254, 0, 1]
        );
        // An address dsx did not give, or the deepest network's: no network to offer.
        for own in [
            "dsx.ip=192.168.1.5/24,192.168.1.1",
            "dsx.ip=10.76.0.5/24,10.76.0.1",
            "dsx.ip=10.254.0.5/24,10.254.0.1",
            "dsx.ip=10.77.1.5/24,10.77.1.1",
            "dsx.ip=10.77.0/24,10.77.0.1",
            "dsx.ip=",
        ] {
            let e = Subnet::of_cmdline(own).unwrap_err();
            assert!(
                e.contains("cannot choose one for its children"),
                "{own}: {e}"
            );
        }
    }

    #[test]
    fn support_needs_tun_and_gives_the_network() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(support(here, "console=hvc0"), Ok(Subnet::FIRST));
        let none = here.join("no-such-tun");
        let e = support(&none, "").unwrap_err();
        assert!(e.starts_with("this VM's kernel has no TUN support"), "{e}");
        let net = support(here, "console=hvc0 dsx.ip=10.77.0.4/24,10.77.0.1").unwrap();
        assert_eq!(net.router(), [10, 78, 0, 1]);
    }

    #[test]
    fn a_frame_is_sent_without_its_header() {
        let (mut c, mut b, tap, log) = setup();
        c.select(TX);
        // Header and frame in one buffer (Linux's usual layout) ...
        let f1 = frame(60, 1);
        c.poke(BUFS, &with_header(&f1));
        let h1 = c.offer(&[(BUFS, (HDR_LEN + 60) as u32, false)]);
        // ... and in three, the header itself split.
        let f2 = frame(1514, 7);
        let bytes = with_header(&f2);
        c.poke(BUFS + 0x1000, &bytes[..8]);
        c.poke(BUFS + 0x2000, &bytes[8..100]);
        c.poke(BUFS + 0x3000, &bytes[100..]);
        let h2 = c.offer(&[
            (BUFS + 0x1000, 8, false),
            (BUFS + 0x2000, 92, false),
            (BUFS + 0x3000, (bytes.len() - 100) as u32, false),
        ]);
        served(&mut b, &mut c);
        assert_eq!(tap.sent(), [f1, f2]);
        assert_eq!(c.used_idx(), 2);
        assert_eq!(c.used_elem(0), (u32::from(h1), 0));
        assert_eq!(c.used_elem(1), (u32::from(h2), 0));
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
        // Nothing written but the used ring: the child's buffers are read only.
        assert!(
            c.writes.iter().all(|&(gpa, _)| gpa < BUFS),
            "{:x?}",
            c.writes
        );
        assert!(log.text().is_empty(), "{}", log.text());
    }

    #[test]
    fn a_frame_is_received_behind_a_header() {
        let (mut c, mut b, tap, _) = setup();
        let f = frame(98, 3);
        tap.push(f.clone());
        let head = rx_buffer(&mut c, BUFS, 1526);
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!(c.used_idx(), 1);
        assert_eq!(c.used_elem(0), (u32::from(head), (HDR_LEN + 98) as u32));
        assert_eq!(c.peek(BUFS, HDR_LEN), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(c.peek(BUFS + HDR_LEN as u64, 98), &f[..]);
        assert_eq!(c.peek(BUFS + HDR_LEN as u64 + 98, 1), [0]);
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
        // Header and frame in one copy into the one buffer.
        assert_eq!(c.writes[0], (BUFS, HDR_LEN + 98));
        // Into a buffer in pieces, the header split.
        let f = frame(200, 9);
        tap.push(f.clone());
        c.offer(&[(BUFS + 0x1000, 6, true), (BUFS + 0x2000, 1000, true)]);
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!(c.used_elem(1).1, (HDR_LEN + 200) as u32);
        assert_eq!(c.peek(BUFS + 0x1000, 6), [0; 6]);
        assert_eq!(c.peek(BUFS + 0x2000, 6), [0, 0, 0, 0, 1, 0]);
        assert_eq!(c.peek(BUFS + 0x2006, 200), &f[..]);
    }

    #[test]
    fn without_buffers_frames_stay_in_the_tap() {
        let (mut c, mut b, tap, _) = setup();
        for k in 0..3 {
            tap.push(frame(64, k));
        }
        served(&mut b, &mut c);
        assert_eq!((tap.waiting(), c.used_idx()), (3, 0));
        // No buffer: nothing to wake up for but a doorbell.
        assert!(b.wait_fds().is_empty());
        // Two buffers: two frames, one left, and nothing to wait on (no buffer).
        rx_buffer(&mut c, BUFS, 1526);
        rx_buffer(&mut c, BUFS + 0x1000, 1526);
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!((tap.waiting(), c.used_idx()), (1, 2));
        assert!(b.wait_fds().is_empty());
        assert_eq!(c.peek(BUFS + 0x1000 + HDR_LEN as u64 + 12, 1), [1 + 12]);
        // Two more: the last frame, and one buffer left, waiting for the TAP.
        rx_buffer(&mut c, BUFS + 0x2000, 1526);
        let last = rx_buffer(&mut c, BUFS + 0x3000, 1526);
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!((tap.waiting(), c.used_idx()), (0, 3));
        assert_eq!(b.wait_fds(), [FAKE_FD]);
        // A pass while the TAP is empty does not even read the receive queue.
        c.clear_counts();
        served(&mut b, &mut c);
        assert_eq!(
            c.calls,
            ["DEVICE_STATE", "CHILD_MEM_READ"], // the transmit queue's index only
        );
        assert_eq!(b.wait_fds(), [FAKE_FD]);
        // A frame comes: it goes into the buffer that waited.
        tap.push(frame(70, 0x40));
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!(c.used_idx(), 4);
        assert_eq!(c.used_elem(3), (u32::from(last), (HDR_LEN + 70) as u32));
        assert!(b.wait_fds().is_empty());
        // A reset forgets the wait.
        rx_buffer(&mut c, BUFS, 1526);
        served(&mut b, &mut c);
        assert_eq!(b.wait_fds(), [FAKE_FD]);
        c.reset();
        c.state.status = 0;
        served(&mut b, &mut c);
        assert!(b.wait_fds().is_empty());
    }

    #[test]
    fn a_pass_moves_at_most_a_queue_each_way() {
        let (mut c, mut b, tap, _) = setup();
        for k in 0..20 {
            tap.push(frame(64, k));
        }
        // A full receive queue (8 buffers) and a full transmit queue.
        for k in 0..8 {
            rx_buffer(&mut c, BUFS + 0x800 * k, 1526);
        }
        c.select(TX);
        for k in 0..8u64 {
            let at = BUFS + 0x8000 + 0x100 * k;
            c.poke(at, &with_header(&frame(64, k as u8)));
            c.offer(&[(at, (HDR_LEN + 64) as u32, false)]);
        }
        served(&mut b, &mut c);
        assert_eq!(tap.waiting(), 12);
        assert_eq!(tap.sent().len(), 8);
        assert_eq!(tap.0.borrow().recvs, 8);
        c.select(RX);
        assert_eq!(c.used_idx(), 8);
        c.select(TX);
        assert_eq!(c.used_idx(), 8);
        // Frames keep coming, but the child gives no buffer: nothing happens, and
        // nothing is waited on (the backend sleeps until a doorbell).
        served(&mut b, &mut c);
        assert_eq!((tap.waiting(), tap.0.borrow().recvs), (12, 8));
        assert!(b.wait_fds().is_empty());
        assert_eq!(c.raises, [RAISE_USED_BUFFER]);
        let counts = |b: &Backend| b.summaries().join("");
        assert!(counts(&b).contains("sent 8 frames (0 dropped, 0 malformed), received 8"));
    }

    #[test]
    fn malformed_and_oversize_chains_are_dropped() {
        let (mut c, mut b, tap, log) = setup();
        c.select(TX);
        let ok = frame(100, 5);
        // Dropped: a device-writable buffer; a frame shorter than an Ethernet header;
        // a header alone; more than a header and 65550 bytes; then one that is fine.
        c.poke(BUFS, &with_header(&ok));
        c.offer(&[(BUFS, 112, false), (BUFS + 0x1000, 8, true)]);
        c.offer(&[(BUFS, (HDR_LEN + 13) as u32, false)]);
        c.offer(&[(BUFS, HDR_LEN as u32, false)]);
        c.offer(&[(BUFS, 0x10000, false), (BUFS + 0x10000, 27, false)]);
        served(&mut b, &mut c);
        // Exactly the longest: sent; then the one that is fine.
        c.offer(&[(BUFS, 0x10000, false), (BUFS + 0x10000, 26, false)]);
        c.offer(&[(BUFS, 112, false)]);
        served(&mut b, &mut c);
        let sent = tap.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].len(), FRAME_MAX);
        assert_eq!(sent[1], ok);
        assert_eq!(c.used_idx(), 6);
        assert!((0..6).all(|i| c.used_elem(i).1 == 0));
        // Receive: a buffer with a device-readable part, and one without room for the
        // header, come back empty without taking a frame; a buffer too small for its
        // frame comes back empty, the frame dropped; the next frame fits.
        tap.push(frame(600, 1));
        tap.push(frame(60, 2));
        c.select(RX);
        c.offer(&[(BUFS, 8, false), (BUFS + 0x100, 1526, true)]);
        c.offer(&[(BUFS + 0x800, 11, true)]);
        c.offer(&[(BUFS + 0x1000, 512, true)]);
        c.offer(&[(BUFS + 0x2000, 512, true)]);
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!(c.used_idx(), 4);
        let lens: Vec<u32> = (0..4).map(|i| c.used_elem(i).1).collect();
        assert_eq!(lens, [0, 0, 0, (HDR_LEN + 60) as u32]);
        assert_eq!(c.peek(BUFS + 0x1000, 16), [0; 16]);
        assert_eq!(
            c.peek(BUFS + 0x2000 + HDR_LEN as u64, 60),
            &frame(60, 2)[..]
        );
        assert_eq!(tap.waiting(), 0);
        // No frame too long for any buffer either: a 65551-byte frame never reaches
        // the child, whatever its buffer.
        tap.push(vec![0xab; FRAME_MAX + 1]);
        c.offer(&[(BUFS, 0x10000, true), (BUFS + 0x10000, 0x100, true)]);
        served(&mut b, &mut c);
        c.select(RX);
        assert_eq!(c.used_elem(4).1, 0);
        assert_eq!(c.peek(BUFS + 0x10000 - 4, 4), [0; 4]);
        // The device was never broken, nothing logged.
        assert!(c.raises.iter().all(|&r| r == RAISE_USED_BUFFER));
        assert!(!c.raises.contains(&RAISE_NEEDS_RESET));
        assert!(log.text().is_empty(), "{}", log.text());
        let s = b.summaries().join("");
        assert!(
            s.contains("sent 2 frames (0 dropped, 4 malformed), received 1 (2 dropped"),
            "{s}"
        );
        assert!(s.contains("2 malformed buffers"), "{s}");
    }

    #[test]
    fn a_tap_that_fails_is_not_waited_on() {
        let (mut c, mut b, tap, log) = setup();
        rx_buffer(&mut c, BUFS, 1526);
        served(&mut b, &mut c);
        assert_eq!(b.wait_fds(), [FAKE_FD]);
        // Deleted under the backend: it polls readable, reads fail.
        tap.0.borrow_mut().gone = true;
        for _ in 0..20 {
            served(&mut b, &mut c);
            assert!(b.wait_fds().is_empty());
        }
        c.select(RX);
        assert_eq!(c.used_idx(), 0);
        let text = log.text();
        assert!(text.contains("dsxtap2: receiving: "), "{text}");
        assert!(
            text.contains("dsxtap2: further errors not logged"),
            "{text}"
        );
        assert_eq!(text.lines().count(), NOTES_MAX as usize + 1);
    }

    #[test]
    fn a_full_tap_drops_frames() {
        let (mut c, mut b, tap, _) = setup();
        tap.0.borrow_mut().full = true;
        c.select(TX);
        c.poke(BUFS, &with_header(&frame(64, 0)));
        c.offer(&[(BUFS, (HDR_LEN + 64) as u32, false)]);
        served(&mut b, &mut c);
        assert!(tap.sent().is_empty());
        assert_eq!((c.used_idx(), c.used_elem(0).1), (1, 0));
        assert!(b.summaries()[0].contains("sent 0 frames (1 dropped"));
    }

    #[test]
    fn close_transmit_buffers_are_read_at_once() {
        let (mut c, mut b, tap, _) = setup();
        served(&mut b, &mut c);
        c.select(TX);
        for k in 0..4u64 {
            let at = BUFS + 0x700 * k;
            c.poke(at, &with_header(&frame(1500, k as u8)));
            c.offer(&[(at, (HDR_LEN + 1500) as u32, false)]);
        }
        c.clear_counts();
        served(&mut b, &mut c);
        assert_eq!(tap.sent().len(), 4);
        // The four frames, 300 bytes apart, in one read.
        let frames: Vec<_> = c.reads.iter().filter(|&&(gpa, _)| gpa >= BUFS).collect();
        assert_eq!(frames, [&(BUFS + HDR_LEN as u64, 0x700 * 3 + 1500)]);
    }

    #[test]
    fn descriptors_work_as_a_tap() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just opened and are owned here only.
        let (a, z) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (mut a, mut z) = (FdTap::from_fd(a), FdTap::from_fd(z));
        let mut buf = vec![0u8; 2000];
        assert_eq!(a.recv(&mut buf).unwrap(), None);
        assert!(!a.readable());
        assert!(z.send(&frame(60, 1)).unwrap());
        assert!(z.send(&frame(1514, 2)).unwrap());
        assert!(a.readable());
        // Woken by the descriptor, not a doorbell.
        let t = std::time::Instant::now();
        let ready = crate::dev::wait_any(
            &[],
            &[PollFd::readable(a.fd().unwrap())],
            std::time::Duration::from_secs(5),
        );
        assert_eq!(ready, [PollFd::readable(a.fd().unwrap())]);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(a.recv(&mut buf).unwrap(), Some(60));
        assert_eq!(buf[..60], frame(60, 1));
        assert_eq!(a.recv(&mut buf).unwrap(), Some(1514));
        assert_eq!(a.recv(&mut buf).unwrap(), None);
        // Sending never waits: when the other side's queue is full, frames drop.
        let mut sent = 0;
        while z.send(&frame(1514, 3)).unwrap() {
            sent += 1;
            assert!(sent < 100_000);
        }
        assert!(sent > 0);
        // A hung-up descriptor is an error, not a frame (it would poll readable for
        // ever).
        drop(z);
        assert!(a.readable());
        loop {
            match a.recv(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no end of file after the hang-up"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                    break;
                }
            }
        }
    }

    /// A card on a fake TAP whose descriptor is a socket pair, served by `run_loop`
    /// with the real `poll(2)`: the loop sleeps on the TAP only while buffers wait.
    #[test]
    fn the_loop_waits_on_the_tap_only_with_buffers() {
        let mut c = FakeChild::with_queues(0x40000, 2);
        let tap = FakeTap::default();
        let log = Log::default();
        let net = Net::with_tap(CID, Box::new(tap.clone()));
        let mut b = Backend::new(CID, vec![Box::new(net)], Box::new(log));
        rx_buffer(&mut c, BUFS, 1526);
        c.gone_after_calls(4);
        let mut seen = Vec::new();
        let mut children = [c];
        crate::backend::run_loop(&mut b, &mut children, &mut |cs, fds| {
            seen.push(fds.to_vec());
            if seen.len() == 2 {
                // A frame arrives while the loop waits on the TAP.
                tap.push(frame(60, 1));
            }
            let _ = cs;
            Vec::new()
        })
        .unwrap();
        // Pass 1: a buffer, no frame: wait on the TAP. Pass 2: still none. Pass 3: the
        // frame is delivered, no buffer left: doorbells only, and so in pass 4.
        let tap_in = vec![PollFd::readable(FAKE_FD)];
        assert_eq!(seen, [tap_in.clone(), tap_in, vec![], vec![]]);
        children[0].select(RX);
        assert_eq!(children[0].used_idx(), 1);
        assert_eq!(children[0].state.status, LIVE);
    }

    /// Whether the root-only network tests were asked for (`DSX_NET_TEST` set); says
    /// they were skipped if not.
    pub(crate) fn net_test_wanted() -> bool {
        let wanted = std::env::var_os("DSX_NET_TEST").is_some();
        if !wanted {
            eprintln!("DSX_NET_TEST not set: skipped");
        }
        wanted
    }
    /// The real thing, in a network namespace of its own: `unshare -nm sh -c 'mount
    /// -t sysfs sysfs /sys && DSX_NET_TEST=1 TEST_BINARY --ignored real_tap'` as root.
    /// Creates the bridge and three children's TAPs (5 and 7 isolated, 6 open), checks
    /// that routing is on, addresses, ports and isolation settings, has the kernel
    /// answer an ARP request from child 5 through its card, and checks who sees whose
    /// broadcasts: 6 sees 5's, 7 does not; 7 sees 6's.
    #[test]
    #[ignore = "needs root in a network namespace of its own (see the comment)"]
    fn real_tap_on_a_bridge() {
        if !net_test_wanted() {
            return;
        }
        let read = |p: String| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        let (t5, notes) = create_tap(5, false, Subnet::FIRST).unwrap();
        assert!(
            notes[0].starts_with("created the bridge dsxbr0"),
            "{notes:?}"
        );
        // Routing on, the rules in (again for each TAP: they replace themselves).
        assert!(
            notes[1].starts_with("routing 10.77.0.0/24 from dsxbr0"),
            "{notes:?}"
        );
        assert_eq!(read("/proc/sys/net/ipv4/ip_forward".into()), "1\n");
        let (mut t6, notes) = create_tap(6, true, Subnet::FIRST).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("routing"), "{notes:?}");
        let (mut t7, _) = create_tap(7, false, Subnet::FIRST).unwrap();
        assert_eq!(
            read("/sys/class/net/dsxbr0/address".into()),
            "52:54:00:77:00:01\n"
        );
        assert_eq!(read("/sys/class/net/dsxtap5/brport/isolated".into()), "1\n");
        assert_eq!(read("/sys/class/net/dsxtap6/brport/isolated".into()), "0\n");
        let ctl = Ctl::new().unwrap();
        assert!(ctl.has_address(BRIDGE).unwrap());
        // A second backend of CID 5 cannot take its TAP.
        assert!(create_tap(5, false, Subnet::FIRST)
            .unwrap_err()
            .contains("in use"));
        // The child (CID 5) asks who has 10.77.0.1: the bridge answers through the TAP.
        let mut c = FakeChild::with_queues(0x40000, 2);
        let mut b = Backend::new(
            CID,
            vec![Box::new(Net::with_tap(5, Box::new(t5)))],
            Box::new(Log::default()),
        );
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&mac(5));
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&mac(5));
        arp.extend_from_slice(&[10, 77, 0, 5]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&Subnet::FIRST.router());
        arp.resize(60, 0);
        c.select(TX);
        c.poke(BUFS, &with_header(&arp));
        c.offer(&[(BUFS, (HDR_LEN + 60) as u32, false)]);
        rx_buffer(&mut c, BUFS + 0x1000, 1526);
        served(&mut b, &mut c);
        // The first ARP frame that comes: the kernel may send its own multicast
        // reports (IGMP, MLD) on the bridge first, each given a buffer back.
        let mut got = None;
        let mut seen = 0;
        for _ in 0..100 {
            c.select(RX);
            if c.used_idx() > seen {
                seen = c.used_idx();
                let frame = c.peek(BUFS + 0x1000 + HDR_LEN as u64, 42).to_vec();
                if frame[12..14] == [0x08, 0x06] {
                    got = Some(frame);
                    break;
                }
                rx_buffer(&mut c, BUFS + 0x1000, 1526);
            }
            let fds = b.poll_fds();
            crate::dev::wait_any(&[], &fds, std::time::Duration::from_millis(20));
            served(&mut b, &mut c);
        }
        let reply = got.expect("an ARP reply");
        assert_eq!(reply[..6], mac(5));
        assert_eq!(reply[6..12], mac(1));
        assert_eq!(reply[12..14], [0x08, 0x06]);
        assert_eq!(reply[20..22], [0, 2]); // a reply
        assert_eq!(reply[28..32], Subnet::FIRST.router());
        // The request was a broadcast: the open port saw it, the isolated one did not.
        let from = |t: &mut FdTap, src: [u8; 6]| {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            for _ in 0..20 {
                while let Ok(Some(len)) = t.recv(&mut buf) {
                    n += usize::from(len >= 12 && buf[6..12] == src);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            n
        };
        assert_eq!((from(&mut t6, mac(5)), from(&mut t7, mac(5))), (1, 0));
        // An open port's broadcast reaches an isolated one.
        let mut hello = vec![0xff; 6];
        hello.extend_from_slice(&mac(6));
        hello.extend_from_slice(&[0x88, 0xb5]);
        hello.resize(60, 0x55);
        assert!(t6.send(&hello).unwrap());
        assert_eq!(from(&mut t7, mac(6)), 1);
        drop((b, t6, t7));
        // The TAPs go with their descriptors; the bridge stays.
        for _ in 0..100 {
            if ["dsxtap5", "dsxtap6", "dsxtap7"]
                .iter()
                .all(|t| !Path::new("/sys/class/net").join(t).exists())
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!Path::new("/sys/class/net/dsxtap5").exists());
        assert!(!Path::new("/sys/class/net/dsxtap7").exists());
        assert!(Path::new("/sys/class/net/dsxbr0").exists());
    }
}
