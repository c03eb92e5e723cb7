//! The VM tree: every VM, its parent and children, quotas, trust, lifecycle state, IPC
//! lanes, events and console rings, as a pure data structure.
//!
//! The hypervisor owns one [`VmTree`] and calls into it from its trap handlers; the
//! extension's SBI calls go through [`dispatch::handle_diosix_call`]. Nothing here
//! touches hardware, so every rule is tested on the host.
//!
//! # Naming
//! VMs are stored in an arena and addressed internally by [`VmId`], whose generation
//! makes a stale id (of a VM that died) fail to resolve even after its slot is reused.
//! Guests never see a `VmId`: they name VMs by *context IDs* relative to themselves
//! (0 = parent, 1 = self, >= 2 = one of their own children). A parent numbers its
//! children from 2 upwards and never reuses a number, so a dead child's CID can never
//! alias a new child. Numbering is per parent, so it reveals nothing about the rest of
//! the tree.
//!
//! # Isolation
//! Every decision an operation makes on behalf of a caller reads only the caller's own
//! node, its parent's identity, and its direct children. In particular
//! [`VmTree::resolve`] looks a CID up only among the caller's own children, so an
//! unknown CID is refused with the same error, after the same work, whether or not some
//! VM elsewhere in the tree exists. Admission control is by reservation (see
//! [`quota`]), so a refusal depends only on the caller's own quota and children.
//!
//! # Where things are
//! This file holds the types. The operations on [`VmTree`] are split by job, one
//! `impl VmTree` block per file:
//! - `arena.rs`: [`VmTree::new`], the node arena (slots and their generations), lookup
//!   by [`VmId`], CID resolution ([`VmTree::resolve`] and its variants per kind of
//!   target), and walks over a subtree;
//! - `admission.rs`: reservations, admission of a new child ([`VmTree::create_child`],
//!   FORK's request, SPAWN's replacement), charging pages after creation, SET_QUOTA and
//!   DROP_TRUST;
//! - `lifecycle.rs`: START, STOP, RESUME, REBOOT, and termination of a subtree (EXIT, a
//!   kill by the parent, a fatal fault), with the events they send the parent;
//! - [`comms`]: the bounded queues (IPC lanes, events, console rings) and the calls that
//!   use them: IPC_SEND, IPC_RECV, POLL_EVENT, console output and input;
//! - `info.rs`: GET_INFO, GET_CHILD_INFO, GET_HV_INFO and the list of children;
//! - [`quota`]: quota and usage types; [`error`]: the error type;
//! - [`request`]: an extension call decoded from its registers; [`dispatch`]: the
//!   extension's calls, checked and carried out with the operations above;
//! - [`cow`]: the copy-on-write ledger of FORK;
//! - `tests.rs`, `proptests.rs`: unit tests through a fake host, and property tests.

pub mod comms;
pub mod cow;
pub mod dispatch;
pub mod error;
pub mod quota;
pub mod request;

mod admission;
mod arena;
mod info;
mod lifecycle;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use diosix_abi::{cid, state};

pub use comms::{ByteRing, EventKind, EventQueue, EventRecord, IpcWaiter, Message, WaitingReceive};
pub use error::SbiError;
pub use quota::{Quota, QuotaChange, Reserved, SubtreeUsage, Usage};

/// A generation-checked handle to a VM in the tree's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId {
    index: u32,
    generation: u32,
}

impl VmId {
    /// The arena slot (stable while the VM lives; useful as a table index for the host).
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The slot's generation when this id was issued.
    pub const fn generation(self) -> u32 {
        self.generation
    }
}

/// Lifecycle state of a live VM. A terminated VM is removed from the tree at once, so
/// there is no "dead" state: its [`VmId`] simply stops resolving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Created paused: waiting for START (memory may be mapped in first).
    Created,
    /// Its vCPUs are schedulable.
    Running,
    /// Stopped by its parent: every vCPU paused.
    Stopped,
}

impl VmState {
    /// The ABI's [`diosix_abi::state`] number.
    pub const fn abi_state(self) -> u32 {
        match self {
            Self::Created => state::CREATED,
            Self::Running => state::RUNNING,
            Self::Stopped => state::STOPPED,
        }
    }
}

/// What a caller-relative CID names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// CID 0: the caller's parent.
    Parent(VmId),
    /// CID 1: the caller itself.
    Myself(VmId),
    /// CID >= 2: one of the caller's live children.
    Child(VmId),
}

/// What a new child asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRequest {
    /// Guest RAM pages (> 0).
    pub ram_pages: u64,
    /// Page-table pages its G-stage tables may need (the host's estimate for its RAM).
    pub table_pages: u64,
    /// vCPUs (> 0).
    pub vcpus: u32,
    /// Priority of its vCPUs (1..=MAX_PRIORITY).
    pub priority: u32,
    /// Whether it gets hardware trust.
    pub trusted: bool,
    /// Its subtree quota. A field left 0 takes the default: exactly what the child holds
    /// (pages, vCPUs), its own priority, and no children (depth, descendants).
    pub quota: Quota,
    /// The state it is created in (and returns to on reboot): `Running` or `Created`.
    pub initial_state: VmState,
    /// A label for logs (never shown to other VMs).
    pub name: String,
}

/// Everything one terminated VM held, for the host to release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KilledVm {
    /// The dead VM's (now stale) id.
    pub id: VmId,
    /// Guest RAM pages it held.
    pub ram_pages: u64,
    /// Page-table pages it held.
    pub table_pages: u64,
    /// vCPUs it had.
    pub vcpus: u32,
    /// Whether it had hardware trust (the host unmaps its MMIO and IRQ routes).
    pub trusted: bool,
    /// Its parent (None for the Root VM), whose pool its devices return to.
    pub parent: Option<VmId>,
}

/// The result of terminating a subtree.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Termination {
    /// Every VM that died, children before parents (post-order).
    pub killed: Vec<KilledVm>,
    /// The Root VM died: the host must restart.
    pub restart_host: bool,
    /// Waits for a message from a VM that died (by the receiver's vCPU, in the
    /// receiver): no such message can come any more, so the host ends them.
    pub ended_waits: Vec<(VmId, IpcWaiter)>,
}

/// Where a VM's console output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleSink {
    /// The Root VM: the host writes it to the physical console.
    Host,
    /// Buffered for the parent to read.
    Buffered,
}

/// One VM.
#[derive(Clone, Debug)]
pub struct VmNode {
    parent: Option<VmId>,
    cid_in_parent: u64,
    children: BTreeMap<u64, VmId>,
    next_child_cid: u64,
    name: String,
    state: VmState,
    initial_state: VmState,
    trusted: bool,
    depth: u32,
    priority: u32,
    quota: Quota,
    own: Usage,
    subtree: SubtreeUsage,
    /// IPC lanes keyed by sender CID as this VM names it (0 = parent). One lane per
    /// sender, so one sender filling its lane cannot refuse, and so cannot reveal,
    /// another sender's messages.
    lanes: BTreeMap<u64, VecDeque<Message>>,
    next_seq: u64,
    /// This VM's vCPUs asleep in IPC_RECV with `IPC_RECV_WAIT`, oldest first: at most
    /// one per vCPU (a vCPU's new wait replaces its old, ended one).
    ipc_waiters: Vec<IpcWaiter>,
    /// The ticket of the next such wait (never 0).
    next_ticket: u64,
    events: EventQueue,
    /// Whether this VM had events waiting when [`VmTree::take_event_edges`] last
    /// looked (so that it reports each filling of the queue once).
    event_line: bool,
    /// Listed in [`VmTree::events_touched`] since the last report.
    events_touched: bool,
    console_out: ByteRing,
    console_in: ByteRing,
}

impl VmNode {
    /// A VM using `own` (`pages` pages) of `quota`, with no children, messages, events
    /// or console bytes yet: the Root VM as it starts, and the common part of every
    /// child (whose creator then sets its place in the tree, name, state and trust).
    fn fresh(quota: Quota, own: Usage, pages: u64, priority: u32) -> Self {
        VmNode {
            parent: None,
            cid_in_parent: cid::PARENT,
            children: BTreeMap::new(),
            next_child_cid: cid::FIRST_CHILD,
            name: String::from("root"),
            state: VmState::Running,
            initial_state: VmState::Running,
            trusted: true,
            depth: 0,
            priority,
            quota,
            own,
            subtree: SubtreeUsage {
                pages,
                vcpus: own.vcpus,
                descendants: 0,
            },
            lanes: BTreeMap::new(),
            next_seq: 0,
            ipc_waiters: Vec::new(),
            next_ticket: 1,
            events: EventQueue::default(),
            event_line: false,
            events_touched: false,
            console_out: ByteRing::default(),
            console_in: ByteRing::default(),
        }
    }

    /// Parent's id (None for the Root VM).
    pub fn parent(&self) -> Option<VmId> {
        self.parent
    }
    /// The CID the parent knows this VM by (0 for the Root VM).
    pub fn cid_in_parent(&self) -> u64 {
        self.cid_in_parent
    }
    /// Live children by CID.
    pub fn children(&self) -> &BTreeMap<u64, VmId> {
        &self.children
    }
    /// The next CID this VM will give a child.
    pub fn next_child_cid(&self) -> u64 {
        self.next_child_cid
    }
    /// Label for logs.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Lifecycle state.
    pub fn state(&self) -> VmState {
        self.state
    }
    /// Hardware trust.
    pub fn trusted(&self) -> bool {
        self.trusted
    }
    /// Distance from the Root VM (0 for the Root VM).
    pub fn depth(&self) -> u32 {
        self.depth
    }
    /// Priority of its vCPUs.
    pub fn priority(&self) -> u32 {
        self.priority
    }
    /// Subtree quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }
    /// What the VM itself holds.
    pub fn own(&self) -> Usage {
        self.own
    }
    /// What the VM and its descendants hold.
    pub fn subtree(&self) -> SubtreeUsage {
        self.subtree
    }
    /// Messages queued for this VM, over all lanes.
    pub fn queued_messages(&self) -> usize {
        self.lanes.values().map(VecDeque::len).sum()
    }
    /// Events waiting.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }
    /// Console output waiting for the parent.
    pub fn console_out(&self) -> &ByteRing {
        &self.console_out
    }
    /// Console input waiting for the VM.
    pub fn console_in(&self) -> &ByteRing {
        &self.console_in
    }
}

#[derive(Clone, Debug)]
struct Slot {
    generation: u32,
    node: Option<VmNode>,
}

/// The VM tree.
#[derive(Clone, Debug)]
pub struct VmTree {
    slots: Vec<Slot>,
    free: Vec<u32>,
    root: Option<VmId>,
    live: usize,
    /// VMs whose event queue changed since [`VmTree::take_event_edges`] last ran,
    /// each once (at most one entry per live VM).
    events_touched: Vec<VmId>,
}

/// Static facts about the host for GET_HV_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// major << 32 | minor << 16 | patch.
    pub hv_version: u64,
    /// [`diosix_abi::features`] bits.
    pub features: u64,
    /// Physical harts.
    pub host_cores: u32,
    /// `time` CSR frequency.
    pub timer_freq_hz: u64,
}
