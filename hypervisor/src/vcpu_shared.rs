//! The part of a vCPU other harts see: its HSM state, interrupts raised for it, and
//! where it runs. Held by its VM (one per guest hart ID) and by the vCPU itself.

use alloc::string::String;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use diosix_core::exits::ExitCause;
use diosix_core::sbi::HartState;

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
}

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
