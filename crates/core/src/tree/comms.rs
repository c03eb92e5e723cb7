//! Communication: the bounded queues (IPC lanes, the event queue, the console rings) and
//! the tree operations that use them (IPC_SEND, IPC_RECV, POLL_EVENT, a VM's console
//! output and input, CONSOLE_READ and CONSOLE_WRITE).
//!
//! Every queue has a fixed bound so a guest can never make the hypervisor allocate
//! without limit. Queues a sender fills refuse (IPC); queues the hypervisor fills on a
//! VM's behalf drop the oldest entry and count the loss (events, console output), because
//! refusing there would either block a child or lose a termination silently.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use diosix_abi::{event, limits, IpcRecvArgs};

use crate::addr::Gpa;

use super::{ConsoleSink, SbiError, VmId, VmTree};

/// One queued IPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Receiver-wide sequence number: IPC_RECV "from any" takes the lowest.
    pub seq: u64,
    /// The payload (at most [`diosix_abi::limits::IPC_MAX_MESSAGE`] bytes).
    pub data: Vec<u8>,
}

/// A vCPU asleep in IPC_RECV with [`diosix_abi::flags::IPC_RECV_WAIT`]: where a
/// message that matches its filter goes, straight from the sender's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcWaiter {
    /// The vCPU (its index in its VM).
    pub vcpu: usize,
    /// Names this one wait: the host ends it only while the vCPU still sleeps in it
    /// (an interrupt may have ended it first), see `ExtensionHost::claim_ipc_waiter`.
    pub ticket: u64,
    /// The senders it takes: a peer's CID as the receiver names it, or any.
    pub from: Option<u64>,
    /// Where the message goes and how the receiver learns of it.
    pub into: WaitingReceive,
}

/// How a sleeping receive takes its message (its buffer checked when it began).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingReceive {
    /// IPC_RECV: into `args.buf_gpa`, at most `args.max_len` bytes; the structure as it
    /// was passed is written back to `gpa` with the sender and the length, a1 = 1.
    Args {
        /// The IpcRecvArgs as the receiver passed them.
        args: IpcRecvArgs,
        /// Where that structure is in the receiver.
        gpa: Gpa,
    },
    /// IPC_CALL: into `[buf, buf + cap)`, a1 = the length + 1.
    Buffer {
        /// The answer's buffer.
        buf: Gpa,
        /// Its length.
        cap: u64,
    },
}

/// A sleeping receive's answer as one word (for the hypervisor to store atomically
/// where the receiver finds it when it wakes): never 0, so 0 can mean "no answer
/// yet". Bit 63 set, the value (IPC_RECV's 1, IPC_CALL's length + 1: at most 4097)
/// in bits 62..32, the SBI error (0 or a small negative code) in bits 31..0.
pub fn encode_ipc_answer(ret: crate::sbi::SbiRet) -> u64 {
    let value = (ret.value as u64).min(0x7FFF_FFFF);
    (1 << 63) | (value << 32) | u64::from(ret.error as i32 as u32)
}

/// The answer [`encode_ipc_answer`] stored.
pub fn decode_ipc_answer(word: u64) -> crate::sbi::SbiRet {
    crate::sbi::SbiRet {
        error: word as u32 as i32 as isize,
        value: ((word >> 32) & 0x7FFF_FFFF) as usize,
    }
}

impl WaitingReceive {
    /// The buffer and its length.
    pub fn buffer(&self) -> (Gpa, u64) {
        match *self {
            Self::Args { args, .. } => (Gpa::new(args.buf_gpa), args.max_len),
            Self::Buffer { buf, cap } => (buf, cap),
        }
    }
}

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A child and its subtree terminated with this exit code.
    ChildTerminated {
        /// The exit code given to EXIT, or one of [`diosix_abi::exit_code`].
        exit_code: u64,
    },
    /// A child was stopped.
    ChildStopped,
    /// A child was started or resumed.
    ChildStarted,
    /// A child rebooted.
    ChildRebooted,
    /// A message arrived.
    Message,
}

impl EventKind {
    /// The ABI's [`diosix_abi::event`] number.
    pub const fn abi_kind(self) -> u32 {
        match self {
            Self::ChildTerminated { .. } => event::CHILD_TERMINATED,
            Self::ChildStopped => event::CHILD_STOPPED,
            Self::ChildStarted => event::CHILD_STARTED,
            Self::ChildRebooted => event::CHILD_REBOOTED,
            Self::Message => event::MESSAGE,
        }
    }
}

/// An event as the receiving VM sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// What happened.
    pub kind: EventKind,
    /// Who it happened to, as the receiver names it (0 = parent, >= 2 = a child).
    pub cid: u64,
}

/// A bounded FIFO of events. When full it drops (and counts) the oldest event that is
/// not a child's termination: a parent must learn of every child's end, however
/// chatty its other children are. Terminations themselves are never dropped; they are
/// bounded instead by admission, which creates no child while
/// [`diosix_abi::limits::EVENT_QUEUE_DEPTH`] of them wait unread (see
/// [`EventQueue::unread_terminations`]), so at most that many plus one per live child.
#[derive(Clone, Debug, Default)]
pub struct EventQueue {
    queue: VecDeque<EventRecord>,
    dropped: u32,
}

fn is_termination(e: &EventRecord) -> bool {
    matches!(e.kind, EventKind::ChildTerminated { .. })
}

impl EventQueue {
    /// Appends an event; never fails. At `cap` events the oldest non-termination makes
    /// room; if every queued event is a termination, a new termination is queued past
    /// `cap` and any other event is dropped (and counted).
    pub fn push(&mut self, e: EventRecord, cap: usize) {
        if self.queue.len() >= cap {
            match self.queue.iter().position(|q| !is_termination(q)) {
                Some(i) => {
                    self.queue.remove(i);
                    self.dropped = self.dropped.saturating_add(1);
                }
                None if is_termination(&e) => {}
                None => {
                    self.dropped = self.dropped.saturating_add(1);
                    return;
                }
            }
        }
        self.queue.push_back(e);
    }

    /// Children's terminations queued and not yet read.
    pub fn unread_terminations(&self) -> usize {
        self.queue.iter().filter(|e| is_termination(e)).count()
    }

    /// Takes the oldest event with the count of events dropped since the last call.
    pub fn pop(&mut self) -> Option<(EventRecord, u32)> {
        let e = self.queue.pop_front()?;
        Some((e, core::mem::take(&mut self.dropped)))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Removes the oldest event matching `f` (used when its cause is consumed or gone).
    pub fn remove_first(&mut self, f: impl Fn(&EventRecord) -> bool) {
        if let Some(i) = self.queue.iter().position(f) {
            self.queue.remove(i);
        }
    }

    /// Removes every event matching `f`.
    pub fn retain(&mut self, f: impl Fn(&EventRecord) -> bool) {
        self.queue.retain(f);
    }

    /// Drops everything (a reboot starts with a clean slate).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.dropped = 0;
    }
}

/// A bounded byte ring. Writers choose between "drop oldest" ([`ByteRing::push_overwrite`],
/// console output: the child never blocks) and "accept what fits" ([`ByteRing::push_fit`],
/// console input: the parent learns how much was taken).
#[derive(Clone, Debug, Default)]
pub struct ByteRing {
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl ByteRing {
    /// Appends all of `data`, dropping the oldest bytes beyond `cap` and counting them.
    pub fn push_overwrite(&mut self, data: &[u8], cap: usize) {
        for &b in data {
            if self.bytes.len() >= cap {
                self.bytes.pop_front();
                self.dropped = self.dropped.saturating_add(1);
            }
            self.bytes.push_back(b);
        }
    }

    /// Appends as much of `data` as fits in `cap`; returns how many bytes were taken.
    pub fn push_fit(&mut self, data: &[u8], cap: usize) -> usize {
        let room = cap.saturating_sub(self.bytes.len());
        let n = room.min(data.len());
        self.bytes.extend(data.iter().take(n));
        n
    }

    /// Moves up to `buf.len()` of the oldest bytes into `buf`; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in buf.iter_mut() {
            match self.bytes.pop_front() {
                Some(b) => {
                    *slot = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Empties the ring (the dropped count is kept: it is history).
    pub fn clear(&mut self) {
        self.bytes.clear();
    }
}

impl VmTree {
    // ----- IPC -----

    /// IPC_SEND from `caller` to its parent (`cid` 0) or a child. Checks in order: the
    /// peer resolves (`InvalidParam`; itself too), the message is at most 4 KiB
    /// (`InvalidParam`), the caller's lane at the receiver has room (`Failed`; nothing
    /// blocks). The receiver gets a `Message` event.
    ///
    /// `data` is taken by value when the caller has it as a `Vec` (the hypervisor
    /// does), so the queued message is that buffer, not a second copy of it.
    pub fn ipc_send(
        &mut self,
        caller: VmId,
        cid: u64,
        data: impl AsRef<[u8]> + Into<Vec<u8>>,
    ) -> Result<(), SbiError> {
        let (to, as_seen) = self.ipc_route(caller, cid)?;
        if data.as_ref().len() > limits::IPC_MAX_MESSAGE {
            return Err(SbiError::InvalidParam);
        }
        let r = self.node_mut(to)?;
        let lane = r.lanes.entry(as_seen).or_default();
        if lane.len() >= limits::IPC_QUEUE_DEPTH {
            return Err(SbiError::Failed);
        }
        let seq = r.next_seq;
        r.next_seq = r.next_seq.wrapping_add(1);
        lane.push_back(Message {
            seq,
            data: data.into(),
        });
        r.events.push(
            EventRecord {
                kind: EventKind::Message,
                cid: as_seen,
            },
            limits::EVENT_QUEUE_DEPTH,
        );
        self.touch_events(to);
        Ok(())
    }

    /// Where a message from `caller` to its peer `cid` goes: the receiver, and the
    /// sender's CID as the receiver names it (a parent is 0 to its child, a child is
    /// its CID to its parent).
    pub fn ipc_route(&self, caller: VmId, cid: u64) -> Result<(VmId, u64), SbiError> {
        let to = self.resolve_peer(caller, cid)?;
        let as_seen = if cid == diosix_abi::cid::PARENT {
            self.node(caller)?.cid_in_parent
        } else {
            diosix_abi::cid::PARENT
        };
        Ok((to, as_seen))
    }

    /// Records that `w.vcpu` of `vm` sleeps until a message for it comes; returns the
    /// wait's ticket (`w.ticket` is ignored). A vCPU has one wait at most: an older
    /// record of the same vCPU is of a wait that has ended, and goes.
    pub fn add_ipc_waiter(&mut self, vm: VmId, mut w: IpcWaiter) -> Result<u64, SbiError> {
        let n = self.node_mut(vm)?;
        w.ticket = n.next_ticket;
        n.next_ticket = n.next_ticket.wrapping_add(1).max(1);
        n.ipc_waiters.retain(|o| o.vcpu != w.vcpu);
        n.ipc_waiters.push(w);
        Ok(w.ticket)
    }

    /// Takes the oldest record of a vCPU of `to` waiting for a message from
    /// `as_seen` (the sender as `to` names it). The record may be of a wait that has
    /// ended since; the host's claim tells.
    pub fn take_ipc_waiter(&mut self, to: VmId, as_seen: u64) -> Option<IpcWaiter> {
        let n = self.get_mut(to)?;
        let i = n
            .ipc_waiters
            .iter()
            .position(|w| w.from.is_none_or(|f| f == as_seen))?;
        Some(n.ipc_waiters.remove(i))
    }

    /// vCPUs of `vm` recorded as waiting for a message.
    pub fn ipc_waiters(&self, vm: VmId) -> &[IpcWaiter] {
        self.get(vm).map_or(&[], |n| &n.ipc_waiters)
    }

    /// IPC_RECV: finds the oldest message from `from` (a peer CID, or `None` for any
    /// sender), checks it fits in `max_len` (`BadRange`, message kept), and hands it to
    /// `deliver` (which copies it into guest memory); only if that succeeds is the
    /// message dequeued. Returns the sender's CID and length, or `None` if nothing waits.
    /// A `from` that is not a peer is `InvalidParam`.
    pub fn ipc_recv(
        &mut self,
        caller: VmId,
        from: Option<u64>,
        max_len: u64,
        deliver: impl FnOnce(u64, &[u8]) -> Result<(), SbiError>,
    ) -> Result<Option<(u64, usize)>, SbiError> {
        if let Some(c) = from {
            self.resolve_peer(caller, c)?;
        }
        let n = self.node_mut(caller)?;
        let pick = n
            .lanes
            .iter()
            .filter(|(k, _)| from.is_none_or(|f| f == **k))
            .filter_map(|(k, q)| q.front().map(|m| (*k, m.seq)))
            .min_by_key(|&(_, seq)| seq);
        let Some((sender, _)) = pick else {
            return Ok(None);
        };
        let Some(msg) = n.lanes.get(&sender).and_then(|q| q.front()) else {
            return Ok(None);
        };
        if msg.data.len() as u64 > max_len {
            return Err(SbiError::BadRange);
        }
        deliver(sender, &msg.data)?;
        let len = msg.data.len();
        if let Some(q) = n.lanes.get_mut(&sender) {
            q.pop_front();
        }
        n.events
            .remove_first(|e| e.cid == sender && e.kind == EventKind::Message);
        self.touch_events(caller);
        Ok(Some((sender, len)))
    }

    /// POLL_EVENT: the oldest event and how many were dropped before it.
    pub fn poll_event(&mut self, vm: VmId) -> Result<Option<(EventRecord, u32)>, SbiError> {
        let e = self.node_mut(vm)?.events.pop();
        self.touch_events(vm);
        Ok(e)
    }

    // ----- consoles -----

    /// Console output from `vm` (SBI DBCN / legacy putchar). The Root VM's goes to the
    /// host console; any other VM's is kept for its parent, dropping the oldest bytes
    /// beyond the ring's size, so the child never blocks.
    pub fn console_output(&mut self, vm: VmId, bytes: &[u8]) -> Result<ConsoleSink, SbiError> {
        let n = self.node_mut(vm)?;
        if n.parent.is_none() {
            return Ok(ConsoleSink::Host);
        }
        n.console_out
            .push_overwrite(bytes, limits::CONSOLE_OUT_RING);
        Ok(ConsoleSink::Buffered)
    }

    /// Console input for `vm` (SBI DBCN read / legacy getchar): `None` for the Root VM
    /// (the host reads its UART), else how many bytes of what its parent wrote were
    /// moved into `buf`.
    pub fn console_input(&mut self, vm: VmId, buf: &mut [u8]) -> Result<Option<usize>, SbiError> {
        let n = self.node_mut(vm)?;
        if n.parent.is_none() {
            return Ok(None);
        }
        Ok(Some(n.console_in.read(buf)))
    }

    /// CONSOLE_READ: moves up to `buf.len()` bytes of a child's output into `buf`.
    pub fn console_read_child(
        &mut self,
        caller: VmId,
        cid: u64,
        buf: &mut [u8],
    ) -> Result<usize, SbiError> {
        let child = self.resolve_child(caller, cid)?;
        Ok(self.node_mut(child)?.console_out.read(buf))
    }

    /// CONSOLE_WRITE: queues as much of `data` as fits in a child's input buffer.
    pub fn console_write_child(
        &mut self,
        caller: VmId,
        cid: u64,
        data: &[u8],
    ) -> Result<usize, SbiError> {
        let child = self.resolve_child(caller, cid)?;
        Ok(self
            .node_mut(child)?
            .console_in
            .push_fit(data, limits::CONSOLE_IN_BUFFER))
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    fn ev(kind: EventKind, cid: u64) -> EventRecord {
        EventRecord { kind, cid }
    }

    #[test]
    fn chatty_children_never_push_out_a_termination() {
        let mut q = EventQueue::default();
        let cap = 4;
        q.push(ev(EventKind::ChildTerminated { exit_code: 7 }, 2), cap);
        for i in 0..100 {
            q.push(ev(EventKind::Message, 3 + i % 5), cap);
        }
        assert_eq!(q.len(), cap);
        let (first, dropped) = q.pop().unwrap();
        assert_eq!(first, ev(EventKind::ChildTerminated { exit_code: 7 }, 2));
        assert_eq!(dropped, 100 - (cap as u32 - 1));
    }

    #[test]
    fn terminations_queue_past_the_cap_and_others_then_drop() {
        let mut q = EventQueue::default();
        let cap = 3;
        for cid in 2..8 {
            q.push(ev(EventKind::ChildTerminated { exit_code: cid }, cid), cap);
        }
        q.push(ev(EventKind::ChildStopped, 9), cap);
        assert_eq!(q.len(), 6);
        assert_eq!(q.unread_terminations(), 6);
        let mut seen = alloc::vec::Vec::new();
        let mut dropped = 0;
        while let Some((e, d)) = q.pop() {
            seen.push(e.cid);
            dropped += d;
        }
        assert_eq!(seen, [2, 3, 4, 5, 6, 7]);
        assert_eq!(dropped, 1);
    }
}
