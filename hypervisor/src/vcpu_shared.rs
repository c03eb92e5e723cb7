//! The part of a vCPU other harts see: its HSM state, interrupts raised for it, and
//! where it runs. Held by its VM (one per guest hart ID) and by the vCPU itself.

use alloc::string::String;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use diosix_core::exits::ExitCause;
use diosix_core::sbi::{HartState, SbiRet};
use diosix_core::tree::comms;

/// Marks "not running on any hart" in [`VcpuShared::running_on`].
pub const NOT_RUNNING: usize = usize::MAX;

/// The part of a vCPU other harts may read or poke without owning it.
pub struct VcpuShared {
    /// Index within its VM (the guest's hart ID).
    pub index: usize,
    /// HSM state, as `HartState as u8`.
    hsm: AtomicU8,
    /// Interrupts (hvip bits) raised by other vCPUs, merged when this vCPU next runs
    /// or when its hart is kicked.
    pub pending: AtomicUsize,
    /// The level of this vCPU's external interrupt line: its context of the VM's
    /// virtual PLIC has an interrupt to claim. Unlike `pending` it falls as well as
    /// rises (a claim lowers it), so it is copied into hvip.VSEIP, not OR-ed in.
    pub ext_line: AtomicBool,
    /// Slot of the hart running this vCPU, or [`NOT_RUNNING`].
    pub running_on: AtomicUsize,
    /// Exits from guest mode so far, by [`ExitCause`] (written only by the hart running
    /// the vCPU, read by anyone for the logs).
    exits: [AtomicU64; ExitCause::COUNT],
    /// When (`time`) an IPI was sent to this vCPU while it was not running, until it
    /// next runs; 0 when none is outstanding.
    ipi_sent_at: AtomicU64,
    /// IPIs that found this vCPU off its hart, and the `time` ticks from each to the
    /// vCPU running again (the wake-up latency other vCPUs may be spinning through).
    ipi_wakes: AtomicU64,
    ipi_wake_ticks: AtomicU64,
    /// The SBI's standard firmware events (PMU), by event code: IPIs and fences sent
    /// and received (timers set are the TIME exits). Codes for what Diosix never does
    /// for a guest (misaligned or access-fault emulation, HFENCEs) stay zero.
    fw_events: [AtomicU64; FW_EVENTS],
    /// The vCPU's sleep in IPC_RECV with `IPC_RECV_WAIT`: its ticket while a sender
    /// may still claim it, [`IPC_CLAIMED`] once one has, [`IPC_ENDED`] once an
    /// interrupt ended it, [`IPC_IDLE`] when it is over (or was never armed, as in a
    /// FORK's copy of a sleeping vCPU). A claim and an interrupt race for it with one
    /// compare-and-swap each, so exactly one of them ends the wait.
    ipc_wait: AtomicU64,
    /// A claimed wait's answer (`diosix_core::tree::comms::encode_ipc_answer`), 0
    /// until the claimer has delivered.
    ipc_answer: AtomicU64,
}

/// [`VcpuShared::ipc_wait`]: no wait.
const IPC_IDLE: u64 = 0;
/// [`VcpuShared::ipc_wait`]: a sender claimed the wait and is delivering.
const IPC_CLAIMED: u64 = u64::MAX;
/// [`VcpuShared::ipc_wait`]: an interrupt ended the wait (nothing received).
const IPC_ENDED: u64 = u64::MAX - 1;

/// The SBI's standard firmware event codes (0..=21).
pub const FW_EVENTS: usize = 22;

impl VcpuShared {
    /// A vCPU in HSM state `state`.
    pub fn new(index: usize, state: HartState) -> Self {
        Self {
            index,
            hsm: AtomicU8::new(state as u8),
            pending: AtomicUsize::new(0),
            ext_line: AtomicBool::new(false),
            running_on: AtomicUsize::new(NOT_RUNNING),
            exits: [const { AtomicU64::new(0) }; ExitCause::COUNT],
            ipi_sent_at: AtomicU64::new(0),
            ipi_wakes: AtomicU64::new(0),
            ipi_wake_ticks: AtomicU64::new(0),
            fw_events: [const { AtomicU64::new(0) }; FW_EVENTS],
            ipc_wait: AtomicU64::new(IPC_IDLE),
            ipc_answer: AtomicU64::new(0),
        }
    }

    /// The vCPU is about to sleep in IPC_RECV wait `ticket` (never 0): from now on a
    /// sender may claim it.
    pub fn arm_ipc_wait(&self, ticket: u64) {
        self.ipc_answer.store(0, Ordering::Relaxed);
        self.ipc_wait.store(ticket, Ordering::SeqCst);
    }

    /// A sender takes wait `ticket` for a delivery: true if the vCPU still sleeps in
    /// it and nobody (no other sender, no interrupt) took it first.
    pub fn claim_ipc_wait(&self, ticket: u64) -> bool {
        ticket != IPC_IDLE
            && ticket < IPC_ENDED
            && self
                .ipc_wait
                .compare_exchange(ticket, IPC_CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// The claimer's delivery is done: the vCPU answers `ret` when it wakes.
    pub fn answer_ipc_wait(&self, ret: SbiRet) {
        self.ipc_answer
            .store(comms::encode_ipc_answer(ret), Ordering::Release);
    }

    /// Whether a sender has claimed this vCPU's wait and delivered its answer.
    #[inline]
    pub fn ipc_answered(&self) -> bool {
        self.ipc_wait.load(Ordering::Acquire) == IPC_CLAIMED
            && self.ipc_answer.load(Ordering::Acquire) != 0
    }

    /// Whether the vCPU sleeping in wait `ticket` may wake now, `interrupted` saying
    /// an interrupt enabled in its `sie` is pending. An interrupt ends the wait only
    /// if no sender has claimed it; a claimed wait ends once its answer is in.
    pub fn ipc_wait_over(&self, ticket: u64, interrupted: bool) -> bool {
        match self.ipc_wait.load(Ordering::Acquire) {
            IPC_CLAIMED => self.ipc_answer.load(Ordering::Acquire) != 0,
            t if t == ticket => {
                interrupted
                    && match self.ipc_wait.compare_exchange(
                        ticket,
                        IPC_ENDED,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    ) {
                        Ok(_) => true,
                        // A sender claimed it meanwhile.
                        Err(_) => self.ipc_answer.load(Ordering::Acquire) != 0,
                    }
            }
            // Ended by an interrupt already, or never armed for this vCPU (a copy of
            // a sleeping one): it wakes with nothing received.
            _ => true,
        }
    }

    /// Ends the vCPU's wait as it wakes: the delivered answer, or `None` if nothing
    /// was delivered (the call's answer stays a1 = 0).
    pub fn take_ipc_answer(&self) -> Option<SbiRet> {
        match self.ipc_wait.swap(IPC_IDLE, Ordering::SeqCst) {
            IPC_CLAIMED => Some(comms::decode_ipc_answer(
                self.ipc_answer.swap(0, Ordering::Acquire),
            )),
            _ => None,
        }
    }

    /// An IPI was sent to this vCPU at `now` while it was off its hart.
    pub fn ipi_while_off(&self, now: u64) {
        let _ =
            self.ipi_sent_at
                .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// This vCPU runs again at `now`: closes an outstanding IPI's wake-up latency.
    #[inline]
    pub fn running_again(&self, now: u64) {
        let sent = self.ipi_sent_at.swap(0, Ordering::Relaxed);
        if sent != 0 {
            self.ipi_wakes.fetch_add(1, Ordering::Relaxed);
            self.ipi_wake_ticks
                .fetch_add(now.saturating_sub(sent), Ordering::Relaxed);
        }
    }

    /// Counts one exit.
    #[inline]
    pub fn count_exit(&self, cause: ExitCause) {
        if let Some(c) = self.exits.get(cause as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Exits of `cause` so far.
    pub fn exits(&self, cause: ExitCause) -> u64 {
        self.exits
            .get(cause as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts `n` of standard firmware event `code` (`sbi_spec::pmu::firmware_event`).
    #[inline]
    pub fn count_fw_event(&self, code: usize, n: u64) {
        if let Some(c) = self.fw_events.get(code) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Standard firmware event `code` so far.
    pub fn fw_event(&self, code: usize) -> u64 {
        self.fw_events
            .get(code)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// `total N: cause n, ...` for the causes seen, for a log line.
    pub fn exit_summary(&self) -> String {
        let counts = ExitCause::ALL.map(|c| (c, self.exits[c as usize].load(Ordering::Relaxed)));
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let mut s = String::new();
        let _ = write!(s, "total {total}");
        for (c, n) in counts.iter().filter(|(_, n)| *n > 0) {
            let _ = write!(s, ", {} {n}", c.name());
        }
        let wakes = self.ipi_wakes.load(Ordering::Relaxed);
        if wakes > 0 {
            let ticks = self.ipi_wake_ticks.load(Ordering::Relaxed);
            let _ = write!(s, "; IPI wake-ups {wakes}, {ticks} time ticks in all");
        }
        s
    }

    /// Current HSM state.
    pub fn state(&self) -> HartState {
        match self.hsm.load(Ordering::Acquire) {
            0 => HartState::Started,
            1 => HartState::Stopped,
            2 => HartState::StartPending,
            3 => HartState::StopPending,
            4 => HartState::Suspended,
            5 => HartState::SuspendPending,
            _ => HartState::ResumePending,
        }
    }

    /// Sets the HSM state.
    pub fn set_state(&self, state: HartState) {
        self.hsm.store(state as u8, Ordering::Release);
    }

    /// Moves from `from` to `to` atomically; false if the state was not `from`.
    pub fn transition(&self, from: HartState, to: HartState) -> bool {
        self.hsm
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}
