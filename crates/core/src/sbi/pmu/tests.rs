//! The PMU decoder against a fake hart whose counters advance by `tick`.

use super::*;
use diosix_abi::error;
use diosix_abi::fid::pmu::{flags, *};
use proptest::prelude::*;

/// Cycles (type 0 code 1) and instructions (code 2) on hpm 3..=6; DTLB read misses
/// (type 1, 0x10019) on hpm 3 only, with a platform selector.
fn host(sscofpmf: bool) -> PmuHost {
    PmuHost {
        hw_counters: 4,
        hw_bits: 64,
        sscofpmf,
        vs_mode: true,
        events: HwEventMap {
            ranges: alloc::vec![(1, 2, 0x78), (0x10019, 0x10019, 0x08)],
            selectors: alloc::vec![(0x10019, 0x1_2345)],
        },
    }
}

struct Hart {
    host: PmuHost,
    state: PmuState,
    /// The hart's counters and selectors as last applied, advanced by `tick`.
    counters: [u64; MAX_HW_COUNTERS],
    events: [u64; MAX_HW_COUNTERS],
    running: u32,
    applies: usize,
    /// Firmware event totals.
    fw_total: u64,
}

impl Hart {
    fn new(sscofpmf: bool) -> Self {
        Self {
            host: host(sscofpmf),
            state: PmuState::default(),
            counters: [0; MAX_HW_COUNTERS],
            events: [0; MAX_HW_COUNTERS],
            running: 0,
            applies: 0,
            fw_total: 0,
        }
    }

    fn tick(&mut self, n: u64) {
        for i in 0..MAX_HW_COUNTERS {
            if self.running & (1 << i) != 0 {
                self.counters[i] = self.counters[i].wrapping_add(n);
            }
        }
        self.fw_total += n;
    }

    fn call(&mut self, function: usize, a: [usize; 5]) -> SbiRet {
        dispatch(self, function, a)
    }
}

impl Pmu for Hart {
    fn pmu_host(&self) -> &PmuHost {
        &self.host
    }
    fn pmu_state(&mut self) -> &mut PmuState {
        &mut self.state
    }
    fn pmu_sync(&mut self) {
        for i in 0..MAX_HW_COUNTERS {
            if self.state.hw_configured & (1 << i) != 0 {
                self.state.hw[i].value = self.counters[i];
            }
        }
    }
    fn pmu_apply(&mut self) {
        self.applies += 1;
        for i in 0..MAX_HW_COUNTERS {
            let c = self.state.hw[i];
            self.counters[i] = c.value;
            self.events[i] = c.mhpmevent;
        }
        self.running = self.state.hw_running();
    }
    fn pmu_fw_count(&mut self, _event: FwEvent) -> u64 {
        self.fw_total
    }
}

const CYCLES: usize = 1;
const INSTRUCTIONS: usize = 2;
const FW_SET_TIMER: usize = 0xf_0005;
const FW_PLATFORM: usize = 0xf_ffff;

fn cfg(flags: usize) -> usize {
    flags
}

#[test]
fn discovery() {
    let mut h = Hart::new(false);
    assert_eq!(h.call(NUM_COUNTERS, [0; 5]), SbiRet::ok(4 + FW_COUNTERS));
    // hpmcounter3, 64 bits wide, hardware.
    assert_eq!(
        h.call(COUNTER_GET_INFO, [0, 0, 0, 0, 0]),
        SbiRet::ok((63 << 12) | 0xc03)
    );
    assert_eq!(
        h.call(COUNTER_GET_INFO, [3, 0, 0, 0, 0]),
        SbiRet::ok((63 << 12) | 0xc06)
    );
    let fw = h.call(COUNTER_GET_INFO, [4, 0, 0, 0, 0]);
    assert_eq!(fw.value >> 63, 1);
    for bad in [4 + FW_COUNTERS, usize::MAX] {
        assert_eq!(
            h.call(COUNTER_GET_INFO, [bad, 0, 0, 0, 0]).error,
            error::INVALID_PARAM
        );
    }
    assert_eq!(
        h.call(SNAPSHOT_SET_SHMEM, [0; 5]).error,
        error::NOT_SUPPORTED
    );
    assert_eq!(h.call(99, [0; 5]).error, error::NOT_SUPPORTED);
}

#[test]
fn hardware_counter_lifecycle() {
    let mut h = Hart::new(true);
    use flags::CounterCfgFlags as F;
    let r = h.call(
        COUNTER_CONFIG_MATCHING,
        [0, 0xf, cfg(F::CLEAR_VALUE.bits()), INSTRUCTIONS, 0],
    );
    assert_eq!(r, SbiRet::ok(0));
    // Selector = the event index; never in M, HS, U; OF until started.
    assert_eq!(
        h.events[0],
        2 | mhpmevent::MINH | mhpmevent::SINH | mhpmevent::UINH | mhpmevent::OF
    );
    assert_eq!(h.running, 0);
    assert_eq!(h.call(COUNTER_START, [0, 1, 1, 1000, 0]), SbiRet::ok(0));
    assert_eq!(h.events[0] & mhpmevent::OF, 0);
    h.tick(50);
    assert_eq!(h.counters[0], 1050);
    assert_eq!(
        h.call(COUNTER_START, [0, 1, 0, 0, 0]).error,
        error::ALREADY_STARTED
    );
    assert_eq!(h.call(COUNTER_STOP, [0, 1, 0, 0, 0]), SbiRet::ok(0));
    h.tick(50);
    assert_eq!(h.counters[0], 1050, "a stopped counter does not count");
    assert_eq!(h.state.hw[0].value, 1050);
    assert_eq!(
        h.call(COUNTER_STOP, [0, 1, 0, 0, 0]).error,
        error::ALREADY_STOPPED
    );
    // Still configured: the next match takes counter 1.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xf, 0, CYCLES, 0]),
        SbiRet::ok(1)
    );
    // Reset releases counter 0 (even though it was stopped already).
    assert_eq!(
        h.call(COUNTER_STOP, [0, 1, 1, 0, 0]).error,
        error::ALREADY_STOPPED
    );
    assert_eq!(h.state.hw[0], HwCounter::default());
    assert_eq!(h.state.hw_configured, 0b10);
    assert_eq!(
        h.call(COUNTER_START, [0, 1, 0, 0, 0]).error,
        error::INVALID_PARAM,
        "a released counter cannot start"
    );
}

#[test]
fn guest_mode_filters() {
    use flags::CounterCfgFlags as F;
    let mut h = Hart::new(true);
    let flags = F::SET_SINH | F::SET_VSINH | F::SET_MINH;
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 1, flags.bits(), CYCLES, 0]),
        SbiRet::ok(0)
    );
    use mhpmevent::*;
    // The guest's S is VS; its VS and M requests mean nothing more.
    assert_eq!(h.events[0], 1 | MINH | SINH | UINH | VSINH | OF);
    // Behind PMP the guest's S and U are the hart's.
    let mut p = Hart::new(true);
    p.host.vs_mode = false;
    p.call(
        COUNTER_CONFIG_MATCHING,
        [0, 1, F::SET_UINH.bits(), CYCLES, 0],
    );
    assert_eq!(p.events[0], 1 | MINH | UINH | OF);
    // Without Sscofpmf nothing can be filtered (and there is no OF bit).
    let mut n = Hart::new(false);
    n.call(COUNTER_CONFIG_MATCHING, [0, 1, flags.bits(), CYCLES, 0]);
    assert_eq!(n.events[0], 1);
}

#[test]
fn matching_follows_the_host_map() {
    let mut h = Hart::new(false);
    // DTLB read misses only on hpm3 (guest counter 0), with its platform selector.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [1, 0x7, 0, 0x10019, 0])
            .error,
        error::NOT_SUPPORTED
    );
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xf, 0, 0x10019, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(h.events[0], 0x1_2345);
    // Taken: a second one finds no counter.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xf, 0, 0x10019, 0])
            .error,
        error::NOT_SUPPORTED
    );
    // Real events the host does not count, and raw events.
    for ev in [3, 0x10000, 0x20000, 0x30000] {
        assert_eq!(
            h.call(COUNTER_CONFIG_MATCHING, [0, 0xf, 0, ev, 7]).error,
            error::NOT_SUPPORTED,
            "event {ev:#x}"
        );
    }
    // No events at all.
    for ev in [
        0,
        11,
        0x1_0038,
        0x2_0001,
        0x4_0000,
        0xf_0016,
        1 << 20,
        usize::MAX,
    ] {
        assert_eq!(
            h.call(COUNTER_CONFIG_MATCHING, [0, 0xff, 0, ev, 0]).error,
            error::INVALID_PARAM,
            "event {ev:#x}"
        );
    }
    // Hardware events never land on firmware counters and vice versa.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [4, 0xff, 0, CYCLES, 0])
            .error,
        error::NOT_SUPPORTED
    );
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xf, 0, FW_SET_TIMER, 0])
            .error,
        error::NOT_SUPPORTED
    );
}

#[test]
fn bad_sets_and_flags() {
    let mut h = Hart::new(false);
    let total = 4 + FW_COUNTERS;
    for (base, mask) in [
        (total, 1),
        (0, 1 << total),
        (usize::MAX, 1),
        (1, usize::MAX),
        (usize::MAX - 3, 0x10),
    ] {
        for f in [COUNTER_CONFIG_MATCHING, COUNTER_START, COUNTER_STOP] {
            assert_eq!(
                h.call(f, [base, mask, 0, CYCLES, 0]).error,
                error::INVALID_PARAM,
                "fid {f} base {base:#x} mask {mask:#x}"
            );
        }
    }
    // Reserved flag bits.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 1, 1 << 8, CYCLES, 0])
            .error,
        error::INVALID_PARAM
    );
    h.call(COUNTER_CONFIG_MATCHING, [0, 1, 0, CYCLES, 0]);
    assert_eq!(
        h.call(COUNTER_START, [0, 1, 1 << 2, 0, 0]).error,
        error::INVALID_PARAM
    );
    assert_eq!(
        h.call(COUNTER_STOP, [0, 1, 1 << 2, 0, 0]).error,
        error::INVALID_PARAM
    );
    // Snapshots need shared memory, which cannot be set.
    assert_eq!(
        h.call(COUNTER_START, [0, 1, 2, 0, 0]).error,
        error::NO_SHMEM
    );
    assert_eq!(h.call(COUNTER_STOP, [0, 1, 2, 0, 0]).error, error::NO_SHMEM);
    // A set with an unconfigured counter changes nothing.
    assert_eq!(
        h.call(COUNTER_START, [0, 3, 0, 0, 0]).error,
        error::INVALID_PARAM
    );
    assert!(!h.state.hw[0].running);
    // SKIP_MATCH names a configured counter.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [1, 1, 1, CYCLES, 0]).error,
        error::INVALID_PARAM
    );
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 1, 1 | 4, 0, 0]),
        SbiRet::ok(0)
    );
    assert!(h.state.hw[0].running);
    // An empty set names no counter that could count.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0, 0, CYCLES, 0]).error,
        error::NOT_SUPPORTED
    );
}

#[test]
fn firmware_counters() {
    let mut h = Hart::new(false);
    let fw0 = 4;
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xfff, 4 | 2, FW_SET_TIMER, 0]),
        SbiRet::ok(fw0)
    );
    h.tick(7);
    assert_eq!(h.call(COUNTER_FW_READ, [fw0, 0, 0, 0, 0]), SbiRet::ok(7));
    assert_eq!(h.call(COUNTER_FW_READ_HI, [fw0, 0, 0, 0, 0]), SbiRet::ok(0));
    h.call(COUNTER_STOP, [fw0, 1, 0, 0, 0]);
    h.tick(5);
    assert_eq!(h.call(COUNTER_FW_READ, [fw0, 0, 0, 0, 0]), SbiRet::ok(7));
    h.call(COUNTER_START, [fw0, 1, 1, 100, 0]);
    h.tick(1);
    assert_eq!(h.call(COUNTER_FW_READ, [fw0, 0, 0, 0, 0]), SbiRet::ok(101));
    // Platform events: Diosix's selectors only.
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [fw0, 0xff, 0, FW_PLATFORM, 1]),
        SbiRet::ok(fw0 + 1)
    );
    assert_eq!(
        h.call(
            COUNTER_CONFIG_MATCHING,
            [
                fw0,
                0xff,
                0,
                FW_PLATFORM,
                diosix_abi::pmu_platform::COUNT as usize
            ]
        )
        .error,
        error::NOT_SUPPORTED
    );
    // fw_read: firmware counters that are configured, nothing else.
    for idx in [0, fw0 + 2, fw0 + FW_COUNTERS, usize::MAX] {
        assert_eq!(
            h.call(COUNTER_FW_READ, [idx, 0, 0, 0, 0]).error,
            error::INVALID_PARAM,
            "counter {idx}"
        );
        assert_eq!(
            h.call(COUNTER_FW_READ_HI, [idx, 0, 0, 0, 0]).error,
            error::INVALID_PARAM
        );
    }
    h.call(COUNTER_STOP, [fw0, 3, 1, 0, 0]);
    assert_eq!(
        h.call(COUNTER_FW_READ, [fw0, 0, 0, 0, 0]).error,
        error::INVALID_PARAM
    );
}

#[test]
fn no_hardware_counters() {
    let mut h = Hart::new(false);
    h.host.hw_counters = 0;
    assert_eq!(h.call(NUM_COUNTERS, [0; 5]), SbiRet::ok(FW_COUNTERS));
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xff, 0, CYCLES, 0])
            .error,
        error::NOT_SUPPORTED
    );
    assert_eq!(
        h.call(COUNTER_CONFIG_MATCHING, [0, 0xff, 0, FW_SET_TIMER, 0]),
        SbiRet::ok(0)
    );
}

fn arb_call() -> impl Strategy<Value = (usize, [usize; 5], u64)> {
    let small = || prop_oneof![0usize..16, Just(usize::MAX), any::<usize>()];
    let event = prop_oneof![
        Just(CYCLES),
        Just(INSTRUCTIONS),
        Just(0x10019usize),
        Just(FW_SET_TIMER),
        Just(FW_PLATFORM),
        any::<usize>()
    ];
    (
        0usize..10,
        (small(), small(), 0usize..512, event, 0usize..10),
        0u64..1000,
    )
        .prop_map(|(f, (a, b, c, d, e), t)| (f, [a, b, c, d, e], t))
}

proptest! {
    /// Any sequence of calls: no panic, the configured mask matches the counters, a
    /// free counter holds nothing, and only running counters count.
    #[test]
    fn any_sequence_keeps_the_state_consistent(
        calls in proptest::collection::vec(arb_call(), 1..60),
        sscofpmf in any::<bool>(),
    ) {
        let mut h = Hart::new(sscofpmf);
        for (f, a, t) in calls {
            let r = h.call(f, a);
            prop_assert!(r.error <= 0);
            h.tick(t);
            let s = &h.state;
            for (i, c) in s.hw.iter().enumerate() {
                prop_assert_eq!(s.hw_configured & (1 << i) != 0, c.event != 0);
                if c.event == 0 {
                    prop_assert_eq!(*c, HwCounter::default());
                }
                prop_assert!(i < 4 || c.event == 0);
            }
            prop_assert_eq!(h.running & !s.hw_configured, 0);
        }
    }
}
