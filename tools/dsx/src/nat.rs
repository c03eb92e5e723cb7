//! The children's router: this VM forwards its children's IPv4 traffic and masquerades
//! it to its own uplink, with nftables rules it installs over netlink itself (the
//! Root VM has no `nft` or `iptables` binary, busybox has neither, and the maintained
//! Rust nftables crates either wrap the C `libnftnl` or are GPL-licensed).
//!
//! The rules, as `nft` would print them (`SUBNET` the children's network, `BRIDGE`
//! their bridge):
//!
//! ```text
//! table ip dsx {
//!     chain postrouting {
//!         type nat hook postrouting priority 100;
//!         ip saddr SUBNET oifname != "BRIDGE" masquerade
//!     }
//!     chain forward {
//!         type filter hook forward priority 0;
//!         iifname "BRIDGE" oifname "BRIDGE" drop
//!         oifname "BRIDGE" ct state & (established | related) == 0 drop
//!     }
//! }
//! ```
//!
//! The masquerade gives the children the outside world through whatever uplink this VM
//! routes to (its own address on it, so a parent never sees its grandchildren's
//! addresses). The first forward rule keeps isolated children apart at the IP layer as
//! the bridge keeps them apart at the Ethernet layer: with forwarding on, a child could
//! otherwise send a sibling's packets to this VM as its gateway and have them routed
//! back onto the bridge. Children on open ports reach each other on the bridge itself,
//! which this rule does not see (no bridge netfilter). The second lets into the bridge
//! only what answers the children's own connections: forwarding is on for every
//! interface, and a host beyond this VM that routes the children's network through it
//! must not reach them.
//!
//! [`install`] sends one netlink batch that adds the table, deletes it and adds it again
//! with both chains: the kernel applies a batch whole or not at all, so the rules are
//! replaced atomically and installing them again (each backend does when it starts)
//! neither fails nor duplicates them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The table's name.
pub const TABLE: &str = "dsx";
/// `/proc/sys/net/ipv4/ip_forward`: routing on.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Netlink numbers (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`,
/// `linux/netfilter/nf_tables.h`, `linux/netfilter.h`).
mod nl {
    pub const NETLINK_NETFILTER: i32 = 12;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const NLM_F_APPEND: u16 = 0x800;
    pub const NLMSG_ERROR: u16 = 0x2;
    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    pub const NFNL_MSG_BATCH_END: u16 = 0x11;
    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
    pub const NFPROTO_IPV4: u8 = 2;
    pub const NFT_MSG_NEWTABLE: u16 = 0;
    pub const NFT_MSG_DELTABLE: u16 = 2;
    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    pub const NFT_MSG_NEWRULE: u16 = 6;
    pub const NFTA_TABLE_NAME: u16 = 1;
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_CHAIN_HOOK: u16 = 4;
    pub const NFTA_CHAIN_TYPE: u16 = 7;
    pub const NFTA_HOOK_HOOKNUM: u16 = 1;
    pub const NFTA_HOOK_PRIORITY: u16 = 2;
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_EXPR_NAME: u16 = 1;
    pub const NFTA_EXPR_DATA: u16 = 2;
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFTA_META_DREG: u16 = 1;
    pub const NFTA_META_KEY: u16 = 2;
    pub const NFTA_CMP_SREG: u16 = 1;
    pub const NFTA_CMP_OP: u16 = 2;
    pub const NFTA_CMP_DATA: u16 = 3;
    pub const NFTA_PAYLOAD_DREG: u16 = 1;
    pub const NFTA_PAYLOAD_BASE: u16 = 2;
    pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
    pub const NFTA_PAYLOAD_LEN: u16 = 4;
    pub const NFTA_BITWISE_SREG: u16 = 1;
    pub const NFTA_BITWISE_DREG: u16 = 2;
    pub const NFTA_BITWISE_LEN: u16 = 3;
    pub const NFTA_BITWISE_MASK: u16 = 4;
    pub const NFTA_BITWISE_XOR: u16 = 5;
    pub const NFTA_IMMEDIATE_DREG: u16 = 1;
    pub const NFTA_IMMEDIATE_DATA: u16 = 2;
    pub const NFTA_CT_DREG: u16 = 1;
    pub const NFTA_CT_KEY: u16 = 2;
    pub const NFT_CT_STATE: u32 = 0;
    /// `ct state` bits (`NF_CT_STATE_BIT`): established and related.
    pub const CT_ESTABLISHED_OR_RELATED: u32 = (1 << 1) | (1 << 2);
    pub const NF_INET_FORWARD: u32 = 2;
    pub const NF_INET_POST_ROUTING: u32 = 4;
    pub const NF_DROP: u32 = 0;
    pub const NFT_REG_VERDICT: u32 = 0;
    pub const NFT_REG_1: u32 = 1;
    pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
    pub const NFT_META_IIFNAME: u32 = 6;
    pub const NFT_META_OIFNAME: u32 = 7;
    pub const NFT_CMP_EQ: u32 = 0;
    pub const NFT_CMP_NEQ: u32 = 1;
    /// Bytes of an interface name as `meta` loads it.
    pub const IFNAMSIZ: usize = 16;
}

/// Netlink messages, appended one after another into one buffer (a batch).
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    /// Where the open message starts.
    msg: usize,
    /// Where each open nested attribute starts.
    nests: Vec<usize>,
    /// Messages in the batch, and the last sequence number given.
    count: u32,
}

impl Batch {
    /// Starts a message: `struct nlmsghdr` (its length set by [`Batch::end`]), then
    /// `struct nfgenmsg`.
    fn begin(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) {
        self.msg = self.buf.len();
        self.count += 1;
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.count.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Starts an nf_tables message of type `msg` for the IPv4 family.
    fn nft(&mut self, msg: u16, flags: u16) {
        self.begin(
            (nl::NFNL_SUBSYS_NFTABLES << 8) | msg,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK | flags,
            nl::NFPROTO_IPV4,
            0,
        );
    }

    /// Ends the open message: its length.
    fn end(&mut self) {
        let len = (self.buf.len() - self.msg) as u32;
        self.buf[self.msg..self.msg + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn string(&mut self, kind: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data);
    }

    /// A 32-bit attribute, big-endian as nf_tables takes them.
    fn be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | nl::NLA_F_NESTED).to_ne_bytes());
    }

    fn unnest(&mut self) {
        let at = self.nests.pop().expect("a nested attribute is open");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` nested in attribute `kind`.
    fn value(&mut self, kind: u16, v: &[u8]) {
        self.nest(kind);
        self.attr(nl::NFTA_DATA_VALUE, v);
        self.unnest();
    }

    /// One expression of a rule: its name, then its attributes, which `data` adds.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Batch)) {
        self.nest(nl::NFTA_LIST_ELEM);
        self.string(nl::NFTA_EXPR_NAME, name);
        self.nest(nl::NFTA_EXPR_DATA);
        data(self);
        self.unnest();
        self.unnest();
    }

    fn table(&mut self, msg: u16, flags: u16) {
        self.nft(msg, flags);
        self.string(nl::NFTA_TABLE_NAME, TABLE);
        self.end();
    }

    /// A base chain of [`TABLE`].
    fn chain(&mut self, name: &str, kind: &str, hook: u32, priority: i32) {
        self.nft(nl::NFT_MSG_NEWCHAIN, nl::NLM_F_CREATE);
        self.string(nl::NFTA_CHAIN_TABLE, TABLE);
        self.string(nl::NFTA_CHAIN_NAME, name);
        self.nest(nl::NFTA_CHAIN_HOOK);
        self.be32(nl::NFTA_HOOK_HOOKNUM, hook);
        self.be32(nl::NFTA_HOOK_PRIORITY, priority as u32);
        self.unnest();
        self.string(nl::NFTA_CHAIN_TYPE, kind);
        self.end();
    }

    /// A rule at the end of chain `chain` of [`TABLE`]; `exprs` adds its expressions.
    fn rule(&mut self, chain: &str, exprs: impl FnOnce(&mut Batch)) {
        self.nft(nl::NFT_MSG_NEWRULE, nl::NLM_F_CREATE | nl::NLM_F_APPEND);
        self.string(nl::NFTA_RULE_TABLE, TABLE);
        self.string(nl::NFTA_RULE_CHAIN, chain);
        self.nest(nl::NFTA_RULE_EXPRESSIONS);
        exprs(self);
        self.unnest();
        self.end();
    }

    /// `meta KEY` (an interface name) into register 1, compared with `name` by `op`.
    fn ifname(&mut self, key: u32, op: u32, name: &str) {
        self.expr("meta", |b| {
            b.be32(nl::NFTA_META_DREG, nl::NFT_REG_1);
            b.be32(nl::NFTA_META_KEY, key);
        });
        let mut padded = [0u8; nl::IFNAMSIZ];
        padded[..name.len()].copy_from_slice(name.as_bytes());
        self.cmp(op, &padded);
    }

    /// `cmp` of register 1 with `v` by `op`.
    fn cmp(&mut self, op: u32, v: &[u8]) {
        self.expr("cmp", |b| {
            b.be32(nl::NFTA_CMP_SREG, nl::NFT_REG_1);
            b.be32(nl::NFTA_CMP_OP, op);
            b.value(nl::NFTA_CMP_DATA, v);
        });
    }

    /// Register 1 masked with `mask` (as many bytes as `mask` has).
    fn and(&mut self, mask: &[u8]) {
        self.expr("bitwise", |b| {
            b.be32(nl::NFTA_BITWISE_SREG, nl::NFT_REG_1);
            b.be32(nl::NFTA_BITWISE_DREG, nl::NFT_REG_1);
            b.be32(nl::NFTA_BITWISE_LEN, mask.len() as u32);
            b.value(nl::NFTA_BITWISE_MASK, mask);
            b.value(nl::NFTA_BITWISE_XOR, &vec![0; mask.len()]);
        });
    }

    /// The verdict `drop`.
    fn drop_packet(&mut self) {
        self.expr("immediate", |b| {
            b.be32(nl::NFTA_IMMEDIATE_DREG, nl::NFT_REG_VERDICT);
            b.nest(nl::NFTA_IMMEDIATE_DATA);
            b.nest(nl::NFTA_DATA_VERDICT);
            b.be32(nl::NFTA_VERDICT_CODE, nl::NF_DROP);
            b.unnest();
            b.unnest();
        });
    }
}

/// The batch that (re)installs the rules for children on `network`/`prefix_len` behind
/// bridge `bridge` (a name of at most 15 bytes).
fn rules(network: [u8; 4], prefix_len: u32, bridge: &str) -> Vec<u8> {
    assert!(bridge.len() < nl::IFNAMSIZ && prefix_len <= 32);
    let mask = u32::MAX
        .checked_shl(32 - prefix_len)
        .unwrap_or(0)
        .to_be_bytes();
    let net: Vec<u8> = network.iter().zip(mask).map(|(a, m)| a & m).collect();
    let res_id = nl::NFNL_SUBSYS_NFTABLES;
    let mut b = Batch::default();
    b.begin(nl::NFNL_MSG_BATCH_BEGIN, nl::NLM_F_REQUEST, 0, res_id);
    b.end();
    // Add (so that the delete cannot fail), delete (whatever an earlier install left),
    // add afresh.
    b.table(nl::NFT_MSG_NEWTABLE, nl::NLM_F_CREATE);
    b.table(nl::NFT_MSG_DELTABLE, 0);
    b.table(nl::NFT_MSG_NEWTABLE, nl::NLM_F_CREATE);
    b.chain("postrouting", "nat", nl::NF_INET_POST_ROUTING, 100);
    b.rule("postrouting", |b| {
        // ip saddr & mask == network
        b.expr("payload", |b| {
            b.be32(nl::NFTA_PAYLOAD_DREG, nl::NFT_REG_1);
            b.be32(nl::NFTA_PAYLOAD_BASE, nl::NFT_PAYLOAD_NETWORK_HEADER);
            // The IPv4 source address.
            b.be32(nl::NFTA_PAYLOAD_OFFSET, 12);
            b.be32(nl::NFTA_PAYLOAD_LEN, 4);
        });
        b.and(&mask);
        b.cmp(nl::NFT_CMP_EQ, &net);
        b.ifname(nl::NFT_META_OIFNAME, nl::NFT_CMP_NEQ, bridge);
        b.expr("masq", |_| {});
    });
    b.chain("forward", "filter", nl::NF_INET_FORWARD, 0);
    b.rule("forward", |b| {
        b.ifname(nl::NFT_META_IIFNAME, nl::NFT_CMP_EQ, bridge);
        b.ifname(nl::NFT_META_OIFNAME, nl::NFT_CMP_EQ, bridge);
        b.drop_packet();
    });
    b.rule("forward", |b| {
        b.ifname(nl::NFT_META_OIFNAME, nl::NFT_CMP_EQ, bridge);
        b.expr("ct", |b| {
            b.be32(nl::NFTA_CT_DREG, nl::NFT_REG_1);
            b.be32(nl::NFTA_CT_KEY, nl::NFT_CT_STATE);
        });
        // `ct state` is a host-order u32 in the register.
        b.and(&nl::CT_ESTABLISHED_OR_RELATED.to_ne_bytes());
        b.cmp(nl::NFT_CMP_EQ, &[0; 4]);
        b.drop_packet();
    });
    b.begin(nl::NFNL_MSG_BATCH_END, nl::NLM_F_REQUEST, 0, res_id);
    b.end();
    b.buf
}

/// The sequence numbers of the messages of `batch` that ask for an acknowledgement.
fn acked(batch: &[u8]) -> Vec<u32> {
    let mut seqs = Vec::new();
    let mut at = 0;
    while at + 16 <= batch.len() {
        let len = u32::from_ne_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
        let flags = u16::from_ne_bytes(batch[at + 6..at + 8].try_into().unwrap());
        if flags & nl::NLM_F_ACK != 0 {
            seqs.push(u32::from_ne_bytes(
                batch[at + 8..at + 12].try_into().unwrap(),
            ));
        }
        at += len.max(16);
    }
    seqs
}

/// The answers in one netlink datagram: (sequence number, error), one per
/// `NLMSG_ERROR` message (error 0: an acknowledgement).
fn answers(data: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() {
        let len = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[at + 4..at + 6].try_into().unwrap());
        let seq = u32::from_ne_bytes(data[at + 8..at + 12].try_into().unwrap());
        if len < 16 || at + len > data.len() {
            break;
        }
        if kind == nl::NLMSG_ERROR && len >= 20 {
            let err = i32::from_ne_bytes(data[at + 16..at + 20].try_into().unwrap());
            out.push((seq, err));
        }
        at += (len + 3) & !3;
    }
    out
}

/// Sends `batch` to nf_tables and waits for every acknowledgement (at most two
/// seconds): the first error the kernel reports, if any (the batch is then not
/// applied at all).
fn send(batch: &[u8]) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            nl::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads one `struct timeval` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero `sockaddr_nl` is valid; the kernel is address 0.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `batch` is readable for its length; `to` is a `sockaddr_nl` of the size
    // given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            batch.as_ptr() as *const libc::c_void,
            batch.len(),
            0,
            &to as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut waiting = acked(batch);
    let mut buf = vec![0u8; 16 * 1024];
    while !waiting.is_empty() {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (seq, err) in answers(&buf[..n as usize]) {
            if err != 0 {
                return Err(io::Error::from_raw_os_error(-err));
            }
            waiting.retain(|s| *s != seq);
        }
    }
    Ok(())
}

/// Makes this VM the router of the children on `network`/`prefix_len` behind
/// `bridge`: turns IPv4 forwarding on and (re)installs the rules of this module. Says
/// what it did.
pub fn install(network: [u8; 4], prefix_len: u32, bridge: &str) -> Result<String, String> {
    std::fs::write(IP_FORWARD, "1\n")
        .map_err(|e| format!("cannot turn IPv4 forwarding on ({IP_FORWARD}): {e}"))?;
    send(&rules(network, prefix_len, bridge)).map_err(|e| {
        format!(
            "cannot install the nftables rules (table ip {TABLE}) that masquerade the \
             children's traffic: {e}{}",
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT)
                || e.raw_os_error() == Some(libc::ENOENT)
            {
                " (does this VM's kernel have CONFIG_NF_TABLES, CONFIG_NFT_NAT and \
                 CONFIG_NFT_MASQ?)"
            } else {
                ""
            }
        )
    })?;
    let [a, b, c, d] = network;
    Ok(format!(
        "routing {a}.{b}.{c}.{d}/{prefix_len} from {bridge}: forwarding on, masqueraded \
         to every other interface (nftables table ip {TABLE})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;
    use std::time::Duration;

    /// The messages of a batch: (type, flags, attribute bytes after `nfgenmsg`).
    fn messages(batch: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < batch.len() {
            let len = u32::from_ne_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
            assert!(len >= 20 && len.is_multiple_of(4) && at + len <= batch.len());
            let kind = u16::from_ne_bytes(batch[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(batch[at + 6..at + 8].try_into().unwrap());
            out.push((kind, flags, batch[at + 20..at + len].to_vec()));
            at += len;
        }
        out
    }

    /// Attributes: (type without the nested flag, payload).
    type Attrs = Vec<(u16, Vec<u8>)>;

    /// The attributes at one level.
    fn attrs(mut data: &[u8]) -> Attrs {
        let mut out = Vec::new();
        while !data.is_empty() {
            let len = u16::from_ne_bytes(data[0..2].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(data[2..4].try_into().unwrap());
            assert!(len >= 4 && len <= data.len(), "attribute length {len}");
            out.push((kind & !nl::NLA_F_NESTED, data[4..len].to_vec()));
            data = &data[((len + 3) & !3).min(data.len())..];
        }
        out
    }

    fn find(a: &Attrs, kind: u16) -> Vec<u8> {
        a.iter().find(|(k, _)| *k == kind).unwrap().1.clone()
    }

    /// The expressions of a rule message: (name, attributes).
    fn exprs(rule: &[u8]) -> Vec<(String, Attrs)> {
        attrs(&find(&attrs(rule), nl::NFTA_RULE_EXPRESSIONS))
            .into_iter()
            .map(|(k, e)| {
                assert_eq!(k, nl::NFTA_LIST_ELEM);
                let e = attrs(&e);
                let name = find(&e, nl::NFTA_EXPR_NAME);
                let data = e
                    .iter()
                    .find(|(k, _)| *k == nl::NFTA_EXPR_DATA)
                    .map(|(_, d)| attrs(d))
                    .unwrap_or_default();
                (
                    String::from_utf8(name[..name.len() - 1].to_vec()).unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn the_batch_replaces_the_table_with_both_chains() {
        let batch = rules([10, 78, 0, 1], 24, "dsxbr0");
        let m = messages(&batch);
        let kinds: Vec<u16> = m.iter().map(|(k, _, _)| *k).collect();
        let nft = |msg: u16| (nl::NFNL_SUBSYS_NFTABLES << 8) | msg;
        assert_eq!(
            kinds,
            [
                nl::NFNL_MSG_BATCH_BEGIN,
                nft(nl::NFT_MSG_NEWTABLE),
                nft(nl::NFT_MSG_DELTABLE),
                nft(nl::NFT_MSG_NEWTABLE),
                nft(nl::NFT_MSG_NEWCHAIN),
                nft(nl::NFT_MSG_NEWRULE),
                nft(nl::NFT_MSG_NEWCHAIN),
                nft(nl::NFT_MSG_NEWRULE),
                nft(nl::NFT_MSG_NEWRULE),
                nl::NFNL_MSG_BATCH_END,
            ]
        );
        // Every nf_tables message asks for an acknowledgement, the batch markers do
        // not; sequence numbers are distinct.
        assert_eq!(acked(&batch), (2..=9).collect::<Vec<u32>>());
        // The batch markers name the nf_tables subsystem.
        assert_eq!(batch[18..20], 10u16.to_be_bytes());
        for (_, _, a) in &m[1..4] {
            assert_eq!(find(&attrs(a), nl::NFTA_TABLE_NAME), b"dsx\0");
        }
        let chain = attrs(&m[4].2);
        assert_eq!(find(&chain, nl::NFTA_CHAIN_NAME), b"postrouting\0");
        assert_eq!(find(&chain, nl::NFTA_CHAIN_TYPE), b"nat\0");
        let hook = attrs(&find(&chain, nl::NFTA_CHAIN_HOOK));
        assert_eq!(find(&hook, nl::NFTA_HOOK_HOOKNUM), 4u32.to_be_bytes());
        assert_eq!(find(&hook, nl::NFTA_HOOK_PRIORITY), 100u32.to_be_bytes());
        let chain = attrs(&m[6].2);
        assert_eq!(find(&chain, nl::NFTA_CHAIN_TYPE), b"filter\0");
        let hook = attrs(&find(&chain, nl::NFTA_CHAIN_HOOK));
        assert_eq!(find(&hook, nl::NFTA_HOOK_HOOKNUM), 2u32.to_be_bytes());
    }

    #[test]
    fn the_masquerade_rule_matches_the_subnet_leaving_by_another_interface() {
        let batch = rules([10, 78, 0, 1], 24, "dsxbr0");
        let m = messages(&batch);
        assert_eq!(find(&attrs(&m[5].2), nl::NFTA_RULE_CHAIN), b"postrouting\0");
        let e = exprs(&m[5].2);
        let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["payload", "bitwise", "cmp", "meta", "cmp", "masq"]);
        assert_eq!(find(&e[0].1, 3), 12u32.to_be_bytes()); // the source address
        assert_eq!(find(&attrs(&find(&e[1].1, 4)), 1), [255, 255, 255, 0]);
        // The network, not the router's address.
        assert_eq!(find(&attrs(&find(&e[2].1, 3)), 1), [10, 78, 0, 0]);
        assert_eq!(find(&e[2].1, 2), nl::NFT_CMP_EQ.to_be_bytes());
        assert_eq!(find(&e[3].1, 2), nl::NFT_META_OIFNAME.to_be_bytes());
        assert_eq!(find(&e[4].1, 2), nl::NFT_CMP_NEQ.to_be_bytes());
        let name = find(&attrs(&find(&e[4].1, 3)), 1);
        assert_eq!(name.len(), 16);
        assert_eq!(&name[..7], b"dsxbr0\0");
        assert!(e[5].1.is_empty());
    }

    #[test]
    fn the_forward_rules_drop_hairpins_and_what_no_child_asked_for() {
        let m = messages(&rules([10, 77, 0, 1], 24, "dsxbr0"));
        let e = exprs(&m[7].2);
        let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta", "cmp", "meta", "cmp", "immediate"]);
        assert_eq!(find(&e[0].1, 2), nl::NFT_META_IIFNAME.to_be_bytes());
        assert_eq!(find(&e[2].1, 2), nl::NFT_META_OIFNAME.to_be_bytes());
        assert_eq!(find(&e[3].1, 2), nl::NFT_CMP_EQ.to_be_bytes());
        let verdict = attrs(&find(&attrs(&find(&e[4].1, 2)), nl::NFTA_DATA_VERDICT));
        assert_eq!(
            find(&verdict, nl::NFTA_VERDICT_CODE),
            nl::NF_DROP.to_be_bytes()
        );
        // Into the bridge: dropped unless established or related.
        let e = exprs(&m[8].2);
        let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta", "cmp", "ct", "bitwise", "cmp", "immediate"]);
        assert_eq!(find(&e[0].1, 2), nl::NFT_META_OIFNAME.to_be_bytes());
        assert_eq!(
            find(&e[2].1, nl::NFTA_CT_KEY),
            nl::NFT_CT_STATE.to_be_bytes()
        );
        assert_eq!(
            find(&attrs(&find(&e[3].1, nl::NFTA_BITWISE_MASK)), 1),
            6u32.to_ne_bytes()
        );
        assert_eq!(find(&attrs(&find(&e[4].1, nl::NFTA_CMP_DATA)), 1), [0; 4]);
        assert_eq!(find(&e[4].1, nl::NFTA_CMP_OP), nl::NFT_CMP_EQ.to_be_bytes());
    }

    #[test]
    fn other_prefix_lengths_mask_the_network() {
        let m = messages(&rules([192, 168, 77, 130], 25, "br"));
        let e = exprs(&m[5].2);
        assert_eq!(find(&attrs(&find(&e[1].1, 4)), 1), [255, 255, 255, 128]);
        assert_eq!(find(&attrs(&find(&e[2].1, 3)), 1), [192, 168, 77, 128]);
        let m = messages(&rules([10, 1, 2, 3], 0, "br"));
        assert_eq!(find(&attrs(&find(&exprs(&m[5].2)[2].1, 3)), 1), [0; 4]);
    }

    #[test]
    fn answers_are_read_from_a_datagram() {
        let mut d = Vec::new();
        for (seq, err) in [(3u32, 0i32), (4, -(libc::ENOENT))] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&nl::NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&err.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        assert_eq!(answers(&d), [(3, 0), (4, -libc::ENOENT)]);
        // A truncated one is not read.
        assert_eq!(answers(&d[..50]), [(3, 0)]);
    }

    /// The kernel takes the batch, twice in a row (a backend starting while another
    /// runs), in a network namespace of its own (a thread's: the test's own network
    /// is untouched). Needs root and a kernel with nf_tables:
    /// `cargo test -p dsx -- --ignored`.
    #[test]
    #[ignore]
    fn the_kernel_takes_the_rules_twice() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with a constant flag; it moves only this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let batch = rules([10, 77, 0, 1], 24, "dsxbr0");
            send(&batch).unwrap();
            send(&batch).unwrap();
        })
        .join()
        .unwrap();
    }

    /// Runs `ip ARGS`, which must succeed.
    fn ip(args: &str) {
        let ok = std::process::Command::new("ip")
            .args(args.split_whitespace())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args}");
    }

    /// Runs `f` on a thread in the named network namespace `ns` (`ip netns`).
    fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap();
                // SAFETY: setns(2) on a namespace file this thread holds open; it
                // moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}");
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Whether a TCP connection from namespace `from` to `to` (where a listener waits,
    /// in namespace `at`) is made, and the address the listener saw it come from.
    fn connect(from: &str, at: &str, to: SocketAddrV4) -> Option<std::net::IpAddr> {
        let l = in_ns(at, || std::net::TcpListener::bind(to).unwrap());
        l.set_nonblocking(true).unwrap();
        let made = in_ns(from, || {
            std::net::TcpStream::connect_timeout(&to.into(), Duration::from_millis(700)).is_ok()
        });
        let seen = (0..20).find_map(|_| match l.accept() {
            Ok((_, peer)) => Some(peer.ip()),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        });
        made.then_some(seen).flatten()
    }

    /// The rules at work, in three network namespaces of their own: a router (this VM:
    /// the bridge with a child's port, an uplink), a child on the bridge and a host
    /// beyond the uplink that routes the children's network through the router. With
    /// forwarding on and no rules, the host reaches the child; with the rules, the
    /// child reaches the host, seen with the router's address, and the host no longer
    /// reaches the child. Needs root and `ip`:
    /// `DSX_NET_TEST=1 cargo test -p dsx -- --ignored routing_in_namespaces`.
    #[test]
    #[ignore = "needs root and ip(8) (see the comment)"]
    fn routing_in_namespaces() {
        if !crate::net::tests::net_test_wanted() {
            return;
        }
        struct Gone;
        impl Drop for Gone {
            fn drop(&mut self) {
                for ns in ["dsxtR", "dsxtC", "dsxtO"] {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "del", ns])
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        drop(Gone);
        let _gone = Gone;
        for ns in ["dsxtR", "dsxtC", "dsxtO"] {
            ip(&format!("netns add {ns}"));
            ip(&format!("-n {ns} link set lo up"));
        }
        ip("-n dsxtR link add dsxbr0 type bridge");
        ip("-n dsxtR addr add 10.77.0.1/24 dev dsxbr0");
        ip("-n dsxtR link set dsxbr0 up");
        ip("link add rc netns dsxtR type veth peer name cc netns dsxtC");
        ip("-n dsxtR link set rc master dsxbr0");
        ip("-n dsxtR link set rc up");
        ip("-n dsxtC addr add 10.77.0.5/24 dev cc");
        ip("-n dsxtC link set cc up");
        ip("-n dsxtC route add default via 10.77.0.1");
        ip("link add ro netns dsxtR type veth peer name oo netns dsxtO");
        ip("-n dsxtR addr add 192.168.77.1/24 dev ro");
        ip("-n dsxtR link set ro up");
        ip("-n dsxtO addr add 192.168.77.2/24 dev oo");
        ip("-n dsxtO link set oo up");
        ip("-n dsxtO route add 10.77.0.0/24 via 192.168.77.1");
        let host = SocketAddrV4::new([192, 168, 77, 2].into(), 7701);
        let child = SocketAddrV4::new([10, 77, 0, 5].into(), 7702);
        // Forwarding alone: the host beyond reaches the child.
        in_ns("dsxtR", || std::fs::write(IP_FORWARD, "1\n").unwrap());
        assert_eq!(
            connect("dsxtO", "dsxtC", child),
            Some([192, 168, 77, 2].into())
        );
        let said = in_ns("dsxtR", || install([10, 77, 0, 0], 24, "dsxbr0")).unwrap();
        assert!(
            said.starts_with("routing 10.77.0.0/24 from dsxbr0"),
            "{said}"
        );
        // The child reaches the host, as the router.
        assert_eq!(
            connect("dsxtC", "dsxtO", host),
            Some([192, 168, 77, 1].into())
        );
        // Nothing from beyond reaches the child.
        assert_eq!(connect("dsxtO", "dsxtC", child), None);
    }
}
