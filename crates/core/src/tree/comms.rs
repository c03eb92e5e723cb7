//! Bounded queues: IPC lanes, the event queue and the console rings.
//!
//! Every queue has a fixed bound so a guest can never make the hypervisor allocate
//! without limit. Queues a sender fills refuse (IPC); queues the hypervisor fills on a
//! VM's behalf drop the oldest entry and count the loss (events, console output), because
//! refusing there would either block a child or lose a termination silently.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use diosix_abi::event;

/// One queued IPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Receiver-wide sequence number: IPC_RECV "from any" takes the lowest.
    pub seq: u64,
    /// The payload (at most [`diosix_abi::limits::IPC_MAX_MESSAGE`] bytes).
    pub data: Vec<u8>,
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

/// A bounded FIFO of events that drops (and counts) the oldest when full.
#[derive(Clone, Debug, Default)]
pub struct EventQueue {
    queue: VecDeque<EventRecord>,
    dropped: u32,
}

impl EventQueue {
    /// Appends an event; never fails.
    pub fn push(&mut self, e: EventRecord, cap: usize) {
        if self.queue.len() >= cap {
            self.queue.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.queue.push_back(e);
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
