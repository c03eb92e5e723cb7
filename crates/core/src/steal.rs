//! Steal-time accounting for SBI STA: how long a vCPU that registered a record was
//! ready to run but waited for a hart. A vCPU is *ready* from the moment it goes into
//! the run queue runnable (descheduled at the end of its slice, after a YIELD, or woken
//! from WFI or a suspend) until a hart loads it; a vCPU waiting for an interrupt is
//! idle, not ready, and accrues nothing.

use crate::addr::Gpa;

/// One vCPU's steal-time state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaState {
    /// The registered record (64 bytes of guest RAM), if any.
    pub shmem: Option<Gpa>,
    /// Steal time so far, in nanoseconds.
    pub steal_ns: u64,
    /// The record's sequence number as last written.
    pub sequence: u32,
    /// When (`mtime`) the vCPU last became ready, while it waits for a hart.
    pub ready_since: Option<u64>,
}

impl StaState {
    /// The vCPU goes into the run queue runnable at `now` (callers skip this, and the
    /// clock read, for a vCPU without a record).
    pub fn ready(&mut self, now: u64) {
        if self.shmem.is_some() && self.ready_since.is_none() {
            self.ready_since = Some(now);
        }
    }

    /// The vCPU is loaded at `now`: adds the wait to its steal time; whether the
    /// record must be written.
    pub fn loaded(&mut self, now: u64, timebase_hz: u64) -> bool {
        let Some(since) = self.ready_since.take() else {
            return false;
        };
        let ticks = now.saturating_sub(since);
        if ticks == 0 || self.shmem.is_none() {
            return false;
        }
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(timebase_hz.max(1));
        self.steal_ns = self
            .steal_ns
            .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> StaState {
        StaState {
            shmem: Some(Gpa::new(0x8000_0040)),
            ..Default::default()
        }
    }

    #[test]
    fn waits_add_up_in_nanoseconds() {
        let mut s = registered();
        // Loaded without having waited: nothing to write.
        assert!(!s.loaded(100, 10_000_000));
        s.ready(1_000);
        // A second `ready` while still queued keeps the first time.
        s.ready(5_000);
        assert!(s.loaded(11_000, 10_000_000));
        assert_eq!(s.steal_ns, 1_000_000);
        assert_eq!(s.ready_since, None);
        s.ready(20_000);
        assert!(s.loaded(20_001, 10_000_000));
        assert_eq!(s.steal_ns, 1_000_100);
        // A clock that went backwards, or no wait: no write.
        s.ready(30_000);
        assert!(!s.loaded(29_000, 10_000_000));
        // A huge wait saturates instead of overflowing.
        s.ready(0);
        assert!(s.loaded(u64::MAX, 1));
        assert_eq!(s.steal_ns, u64::MAX);
    }

    #[test]
    fn unregistered_vcpus_accrue_nothing() {
        let mut s = StaState::default();
        s.ready(1_000);
        assert!(!s.loaded(9_000, 10_000_000));
        assert_eq!(s.steal_ns, 0);
    }
}
