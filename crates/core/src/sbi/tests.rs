//! Decode and validation of every standard extension against a recording fake.

use super::*;
use crate::addr::Gva;
use alloc::vec::Vec;

/// A recording environment with 4 vCPUs and a fake console.
#[derive(Default)]
struct Fake {
    log: Vec<&'static str>,
    ipis: Vec<HartSet>,
    fences: Vec<(HartSet, FenceKind)>,
    timer: Option<u64>,
    written: Vec<(Gpa, u64)>,
    input: Vec<u8>,
    reset: Option<(ResetType, bool)>,
    legacy_mask: Option<usize>,
    suspends: Vec<Suspend>,
    bytes: Vec<u8>,
    fwft: FwftState,
    sta: Option<Gpa>,
    dbtr: dbtr::DbtrState,
    pmu_host: pmu::PmuHost,
    pmu: pmu::PmuState,
    /// Guest memory for DBTR's shared memory: 256 bytes at 0x8000_1000.
    mem: Vec<u8>,
    applied: usize,
    /// The host lacks Svadu (no hardware A/D updating).
    no_svadu: bool,
}

impl Caller for Fake {
    fn vcpu_count(&self) -> usize {
        4
    }
    fn this_hart(&self) -> usize {
        0
    }
}

impl Base for Fake {
    fn impl_version(&self) -> usize {
        0x100
    }
    fn machine_ids(&self) -> (usize, usize, usize) {
        (1, 2, 3)
    }
}

impl Timer for Fake {
    fn set_timer(&mut self, deadline: u64) {
        self.timer = Some(deadline);
    }
}

impl Ipi for Fake {
    fn send_ipi(&mut self, targets: HartSet) {
        self.ipis.push(targets);
    }
    fn clear_ipi(&mut self) {
        self.log.push("clear_ipi");
    }
}

impl Rfence for Fake {
    fn remote_fence(&mut self, targets: HartSet, kind: FenceKind) {
        self.fences.push((targets, kind));
    }
}

impl Hsm for Fake {
    fn hart_status(&self, hart: usize) -> HartState {
        if hart == 0 {
            HartState::Started
        } else {
            HartState::Stopped
        }
    }
    fn hart_start(&mut self, _hart: usize, _start: Gpa, _opaque: usize) -> Result<(), SbiError> {
        Ok(())
    }
    fn hart_stop(&mut self) -> Result<(), SbiError> {
        Ok(())
    }
    fn hart_suspend(&mut self, how: Suspend) -> Result<(), SbiError> {
        self.log.push("suspend");
        self.suspends.push(how);
        Ok(())
    }
}

impl Reset for Fake {
    fn system_reset(&mut self, kind: ResetType, failure: bool) -> Result<(), SbiError> {
        self.reset = Some((kind, failure));
        Ok(())
    }
}

impl Console for Fake {
    fn console_write(&mut self, gpa: Gpa, len: u64) -> Result<usize, SbiError> {
        self.written.push((gpa, len));
        Ok(len as usize)
    }
    fn console_read(&mut self, _gpa: Gpa, _len: u64) -> Result<usize, SbiError> {
        Ok(0)
    }
    fn console_write_byte(&mut self, byte: u8) {
        self.bytes.push(byte);
    }
    fn console_getchar(&mut self) -> Option<u8> {
        self.input.pop()
    }
}

impl LegacyMask for Fake {
    fn read_legacy_mask(&mut self, _gva: Gva) -> Option<usize> {
        self.legacy_mask
    }
}

impl pmu::Pmu for Fake {
    fn pmu_host(&self) -> &pmu::PmuHost {
        &self.pmu_host
    }
    fn pmu_state(&mut self) -> &mut pmu::PmuState {
        &mut self.pmu
    }
    fn pmu_sync(&mut self) {}
    fn pmu_apply(&mut self) {}
    fn pmu_fw_count(&mut self, _event: pmu::FwEvent) -> u64 {
        0
    }
}

impl dbtr::DebugTriggers for Fake {
    fn dbtr_max(&self) -> usize {
        2
    }
    fn dbtr_state(&mut self) -> &mut dbtr::DbtrState {
        &mut self.dbtr
    }
    fn dbtr_shmem_ok(&mut self, gpa: Gpa, len: u64) -> bool {
        gpa.raw() >= 0x8000_1000 && gpa.raw() + len <= 0x8000_1100
    }
    fn dbtr_read(&mut self, gpa: Gpa, out: &mut [u8]) -> Result<(), SbiError> {
        let at = (gpa.raw() - 0x8000_1000) as usize;
        out.copy_from_slice(&self.mem[at..at + out.len()]);
        Ok(())
    }
    fn dbtr_write(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), SbiError> {
        let at = (gpa.raw() - 0x8000_1000) as usize;
        self.mem[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn dbtr_apply(&mut self) {
        self.applied += 1;
    }
}

impl StealTime for Fake {
    fn sta_set_shmem(&mut self, shmem: Option<Gpa>) -> Result<(), SbiError> {
        self.log.push("sta");
        match shmem {
            Some(g) if g.raw() >= 0x9000_0000 => Err(SbiError::InvalidAddress),
            _ => {
                self.sta = shmem;
                Ok(())
            }
        }
    }
}

impl SystemSuspend for Fake {
    fn system_suspend(&mut self, resume: Gpa, opaque: usize) -> Result<(), SbiError> {
        self.log.push("system_suspend");
        self.suspends.push(Suspend::NonRetentive { resume, opaque });
        Ok(())
    }
}

impl FirmwareFeatures for Fake {
    fn fwft_supported(&self, f: FwftFeature) -> bool {
        f != FwftFeature::PteAdHwUpdating || !self.no_svadu
    }
    fn fwft_state(&self) -> FwftState {
        self.fwft
    }
    fn fwft_apply(&mut self, state: FwftState) {
        self.log.push("fwft");
        self.fwft = state;
    }
}

impl DiosixExtension for Fake {
    fn diosix_call(&mut self, fid: usize, _args: [usize; 6]) -> SbiRet {
        SbiRet::ok(fid)
    }
}

fn call(env: &mut Fake, ext: usize, fid: usize, args: [usize; 6]) -> Reply {
    let [a0, a1, a2, a3, a4, a5] = args;
    dispatch(env, [a0, a1, a2, a3, a4, a5, fid, ext])
}

fn sbi(env: &mut Fake, ext: usize, fid: usize, args: [usize; 6]) -> SbiRet {
    match call(env, ext, fid, args) {
        Reply::Sbi(r) => r,
        Reply::Legacy(_) => panic!("expected a standard reply"),
    }
}

#[test]
fn base_reports_spec_2_and_impl_id_5() {
    let mut f = Fake::default();
    assert_eq!(sbi(&mut f, eid::BASE, 0, [0; 6]), SbiRet::ok(0x0200_0000));
    assert_eq!(sbi(&mut f, eid::BASE, 1, [0; 6]), SbiRet::ok(5));
    assert_eq!(
        sbi(&mut f, eid::BASE, 3, [eid::DBCN, 0, 0, 0, 0, 0]),
        SbiRet::ok(1)
    );
    assert_eq!(
        sbi(&mut f, eid::BASE, 3, [eid::DIOSIX, 0, 0, 0, 0, 0]),
        SbiRet::ok(1)
    );
    assert_eq!(
        sbi(&mut f, eid::BASE, 3, [0x504D55, 0, 0, 0, 0, 0]),
        SbiRet::ok(1)
    );
    // CPPC is not offered.
    assert_eq!(
        sbi(&mut f, eid::BASE, 3, [0x4350_5043, 0, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(
        sbi(&mut f, eid::BASE, 7, [0; 6]),
        SbiRet::err(error::NOT_SUPPORTED)
    );
}

#[test]
fn unknown_extension_and_function_are_not_supported() {
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, 0x1234_5678, 0, [0; 6]),
        SbiRet::err(error::NOT_SUPPORTED)
    );
    for ext in [
        eid::TIME,
        eid::IPI,
        eid::RFENCE,
        eid::HSM,
        eid::SRST,
        eid::DBCN,
    ] {
        assert_eq!(
            sbi(&mut f, ext, 99, [0; 6]),
            SbiRet::err(error::NOT_SUPPORTED),
            "{ext:#x}"
        );
    }
}

#[test]
fn hart_masks_reject_harts_that_do_not_exist() {
    assert_eq!(decode_hart_mask(0b11, 0, 4), Ok(HartSet(0b11)));
    assert_eq!(decode_hart_mask(0b1, 3, 4), Ok(HartSet(0b1000)));
    assert_eq!(decode_hart_mask(0b1, 4, 4), Err(SbiError::InvalidParam));
    assert_eq!(decode_hart_mask(1 << 63, 0, 4), Err(SbiError::InvalidParam));
    assert_eq!(
        decode_hart_mask(0b10, usize::MAX - 1, 4),
        Err(SbiError::InvalidParam)
    );
    assert_eq!(decode_hart_mask(0, usize::MAX, 4), Ok(HartSet(0b1111)));
    assert_eq!(decode_hart_mask(0, 2, 4), Ok(HartSet(0)));
}

proptest::proptest! {
    /// The loop-free decoder agrees with the definition (every set bit `i` names hart
    /// `base + i`, which must exist), and iterating the set yields exactly its bits.
    #[test]
    fn hart_masks_decode_as_defined(
        mask in proptest::prelude::any::<usize>(),
        base in proptest::prop_oneof![0usize..70, proptest::prelude::any::<usize>()],
        vcpus in 0usize..80,
        sparse in 0u32..64,
    ) {
        for mask in [mask, mask >> sparse, 1usize.checked_shl(sparse).unwrap_or(0)] {
            let mut want = Ok(0u64);
            for bit in 0..usize::BITS as usize {
                if mask & (1 << bit) == 0 {
                    continue;
                }
                match base.checked_add(bit) {
                    Some(h) if h < vcpus && h < MAX_VCPUS => {
                        want = want.map(|s| s | 1 << h);
                    }
                    _ => {
                        want = Err(SbiError::InvalidParam);
                        break;
                    }
                }
            }
            let got = decode_hart_mask(mask, base, vcpus);
            proptest::prop_assert_eq!(got, want.map(HartSet));
            if let Ok(set) = got {
                let bits: Vec<usize> = set.iter().collect();
                let from_contains: Vec<usize> =
                    (0..MAX_VCPUS).filter(|&h| set.contains(h)).collect();
                proptest::prop_assert_eq!(bits, from_contains);
            }
        }
    }
}

#[test]
fn ipi_and_fences_validate_masks_first() {
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, eid::IPI, 0, [0b1, 7, 0, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    assert!(f.ipis.is_empty());
    assert_eq!(
        sbi(&mut f, eid::IPI, 0, [0b101, 0, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(f.ipis, [HartSet(0b101)]);
    assert_eq!(
        sbi(&mut f, eid::RFENCE, 1, [0b1, 9, 0, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    assert_eq!(
        sbi(&mut f, eid::RFENCE, 0, [0, usize::MAX, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(f.fences, [(HartSet(0b1111), FenceKind::Instruction)]);
    for fid in 3..=6 {
        assert_eq!(
            sbi(&mut f, eid::RFENCE, fid, [1, 0, 0, 0, 0, 0]),
            SbiRet::err(error::NOT_SUPPORTED)
        );
    }
}

#[test]
fn hsm_checks_hart_ids_and_suspend_types() {
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, eid::HSM, 0, [4, 0x8020_0000, 0, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    assert_eq!(
        sbi(&mut f, eid::HSM, 2, [usize::MAX, 0, 0, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    assert_eq!(
        sbi(&mut f, eid::HSM, 2, [1, 0, 0, 0, 0, 0]),
        SbiRet::ok(HartState::Stopped as usize)
    );
    for bad in [
        1usize,
        0x1000_0000,
        0x7FFF_FFFF,
        0x8000_0001,
        0x9000_0000,
        0xFFFF_FFFF,
        (1 << 32) | 1,
        0xFFFF_FFFF_9000_0000,
    ] {
        assert_eq!(
            sbi(&mut f, eid::HSM, 3, [bad, 0, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM),
            "{bad:#x}"
        );
    }
    assert!(f.log.is_empty());
    assert_eq!(sbi(&mut f, eid::HSM, 3, [0, 0, 0, 0, 0, 0]), SbiRet::ok(0));
    assert_eq!(f.log, ["suspend"]);
}

#[test]
fn hsm_suspend_type_ignores_bits_63_to_32() {
    // Issue 9: suspend_type is a uint32_t, so bits 63..32 are ignored; compiled C
    // passes 0x8000_0000 sign-extended. They used to be refused with INVALID_PARAM.
    let mut f = Fake::default();
    assert_eq!(
        sbi(
            &mut f,
            eid::HSM,
            3,
            [0xFFFF_FFFF_8000_0000, 0x8020_0000, 7, 0, 0, 0]
        ),
        SbiRet::ok(0)
    );
    assert_eq!(
        sbi(&mut f, eid::HSM, 3, [1 << 32, 0, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(
        sbi(&mut f, eid::HSM, 3, [0x1234_5678_0000_0000, 0, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(
        f.suspends,
        [
            Suspend::NonRetentive {
                resume: Gpa::new(0x8020_0000),
                opaque: 7
            },
            Suspend::Retentive,
            Suspend::Retentive
        ]
    );
}

#[test]
fn srst_rejects_reserved_types_and_reasons() {
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, eid::SRST, 0, [3, 0, 0, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    assert_eq!(
        sbi(&mut f, eid::SRST, 0, [0, 2, 0, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    // Reserved and unimplemented vendor values, whatever the upper bits.
    for (kind, reason) in [
        (0xF000_0000, 0),
        ((1 << 32) | 3, 0),
        (0, 0xDFFF_FFFF),
        (0, 0xFFFF_FFFF_0000_0002),
    ] {
        assert_eq!(
            sbi(&mut f, eid::SRST, 0, [kind, reason, 0, 0, 0, 0]),
            SbiRet::err(error::INVALID_PARAM),
            "{kind:#x} {reason:#x}"
        );
    }
    assert_eq!(f.reset, None);
    assert_eq!(sbi(&mut f, eid::SRST, 0, [1, 1, 0, 0, 0, 0]), SbiRet::ok(0));
    assert_eq!(f.reset, Some((ResetType::ColdReboot, true)));
    assert_eq!(
        sbi(&mut f, eid::SRST, 0, [2, 0xE000_0000, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(f.reset, Some((ResetType::WarmReboot, false)));
}

#[test]
fn srst_type_and_reason_ignore_bits_63_to_32() {
    // Issue 9: both are uint32_t, so bits 63..32 are ignored; they used to be
    // refused with INVALID_PARAM.
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, eid::SRST, 0, [0, 1 << 32, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(f.reset, Some((ResetType::Shutdown, false)));
    assert_eq!(
        sbi(
            &mut f,
            eid::SRST,
            0,
            [0xFFFF_FFFF_0000_0001, 0xFFFF_FFFF_0000_0001, 0, 0, 0, 0]
        ),
        SbiRet::ok(0)
    );
    assert_eq!(f.reset, Some((ResetType::ColdReboot, true)));
    assert_eq!(
        sbi(&mut f, eid::SRST, 0, [(7 << 32) | 2, 0, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(f.reset, Some((ResetType::WarmReboot, false)));
}

#[test]
fn narrow_byte_parameters_keep_their_low_byte() {
    // DBCN write_byte takes a uint8_t and legacy console_putchar an int: only the
    // character's byte is used, whatever the rest of a0 holds.
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, eid::DBCN, 2, [0xFFFF_FFFF_FFFF_FF41, 0, 0, 0, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(
        call(
            &mut f,
            eid::LEGACY_CONSOLE_PUTCHAR,
            0,
            [0x1_0000_0142, 0, 0, 0, 0, 0]
        ),
        Reply::Legacy(0)
    );
    assert_eq!(f.bytes, b"AB");
}

proptest::proptest! {
    /// Every 32-bit parameter: a call with any bits 63..32 behaves exactly as the
    /// same call with them clear.
    #[test]
    fn bits_63_to_32_of_32_bit_parameters_never_matter(
        lo in proptest::prop_oneof![
            proptest::sample::select(vec![
                0u32, 1, 2, 3, 0x8000_0000, 0x8000_0001, 0xE000_0000, 0xF000_0000,
                u32::MAX,
            ]),
            proptest::num::u32::ANY,
        ],
        lo2 in proptest::num::u32::ANY,
        hi in proptest::num::u32::ANY,
        hi2 in proptest::num::u32::ANY,
    ) {
        let wide = |lo: u32, hi: u32| (u64::from(hi) << 32 | u64::from(lo)) as usize;
        let mut narrow_env = Fake::default();
        let mut wide_env = Fake::default();
        let cases = [
            (eid::HSM, 3, [lo as usize, 0x8020_0000, 9], [wide(lo, hi), 0x8020_0000, 9]),
            (eid::SRST, 0, [lo as usize, lo2 as usize, 0], [wide(lo, hi), wide(lo2, hi2), 0]),
            (eid::SRST, 0, [lo2 as usize % 3, lo as usize, 0],
                [wide(lo2 % 3, hi), wide(lo, hi2), 0]),
        ];
        for (ext, fid, narrow, w) in cases {
            let a = sbi(&mut narrow_env, ext, fid, [narrow[0], narrow[1], narrow[2], 0, 0, 0]);
            let b = sbi(&mut wide_env, ext, fid, [w[0], w[1], w[2], 0, 0, 0]);
            proptest::prop_assert_eq!(a, b);
        }
        proptest::prop_assert_eq!(narrow_env.suspends, wide_env.suspends);
        proptest::prop_assert_eq!(narrow_env.reset, wide_env.reset);
    }
}

#[test]
fn dbcn_rejects_high_address_bits() {
    let mut f = Fake::default();
    assert_eq!(
        sbi(&mut f, eid::DBCN, 0, [8, 0x8020_0000, 1, 0, 0, 0]),
        SbiRet::err(error::INVALID_PARAM)
    );
    assert_eq!(
        sbi(&mut f, eid::DBCN, 0, [8, 0x8020_0000, 0, 0, 0, 0]),
        SbiRet::ok(8)
    );
    assert_eq!(f.written, [(Gpa::new(0x8020_0000), 8)]);
}

#[test]
fn legacy_calls_reply_in_a0_only() {
    let mut f = Fake::default();
    assert_eq!(
        call(&mut f, eid::LEGACY_CONSOLE_GETCHAR, 0, [0; 6]),
        Reply::Legacy(-1)
    );
    f.input.push(b'x');
    assert_eq!(
        call(&mut f, eid::LEGACY_CONSOLE_GETCHAR, 0, [0; 6]),
        Reply::Legacy(b'x' as isize)
    );
    assert_eq!(
        call(&mut f, eid::LEGACY_SEND_IPI, 0, [0x1000, 0, 0, 0, 0, 0]),
        Reply::Legacy(error::INVALID_ADDRESS)
    );
    f.legacy_mask = Some(0b10);
    assert_eq!(
        call(&mut f, eid::LEGACY_SEND_IPI, 0, [0x1000, 0, 0, 0, 0, 0]),
        Reply::Legacy(0)
    );
    assert_eq!(f.ipis, [HartSet(0b10)]);
    f.legacy_mask = Some(0b10000);
    assert_eq!(
        call(&mut f, eid::LEGACY_SEND_IPI, 0, [0x1000, 0, 0, 0, 0, 0]),
        Reply::Legacy(error::INVALID_PARAM)
    );
    assert_eq!(
        call(&mut f, eid::LEGACY_SHUTDOWN, 0, [0; 6]),
        Reply::Legacy(0)
    );
    assert_eq!(f.reset, Some((ResetType::Shutdown, false)));
}

/// FWFT (SBI 3.0): IDs (32 bits), values, flags, locks and host support, each refused
/// with the code the spec gives it and nothing changed.
#[test]
fn fwft_checks_ids_values_flags_and_locks() {
    use diosix_abi::fid::fwft::*;
    let mut f = Fake::default();
    let set =
        |f: &mut Fake, id: usize, v: usize, fl: usize| sbi(f, eid::FWFT, SET, [id, v, fl, 0, 0, 0]);
    let get = |f: &mut Fake, id: usize| sbi(f, eid::FWFT, GET, [id, 0, 0, 0, 0, 0]);
    let err = |e: SbiError| SbiRet::error(e);
    assert_eq!(
        sbi(
            &mut f,
            eid::BASE,
            diosix_abi::fid::base::PROBE_EXTENSION,
            [eid::FWFT, 0, 0, 0, 0, 0]
        ),
        SbiRet::ok(1)
    );
    assert_eq!(
        sbi(&mut f, eid::FWFT, 2, [0; 6]),
        err(SbiError::NotSupported)
    );
    // Reserved and platform-specific IDs: DENIED; standard ones not provided:
    // NOT_SUPPORTED.
    for id in [
        6usize,
        0x3fff_ffff,
        0x4000_0000,
        0x7fff_ffff,
        0x8000_0000,
        0xbfff_ffff,
        0xc000_0000,
        0xffff_ffff,
    ] {
        assert_eq!(get(&mut f, id), err(SbiError::Denied), "{id:#x}");
        assert_eq!(set(&mut f, id, 1, 0), err(SbiError::Denied), "{id:#x}");
    }
    for id in [
        LANDING_PAD,
        SHADOW_STACK,
        DOUBLE_TRAP,
        POINTER_MASKING_PMLEN,
    ] {
        assert_eq!(get(&mut f, id), err(SbiError::NotSupported));
    }
    // Reset values; the ID is a uint32_t.
    assert_eq!(get(&mut f, MISALIGNED_EXC_DELEG), SbiRet::ok(1));
    assert_eq!(get(&mut f, PTE_AD_HW_UPDATING | 1 << 32), SbiRet::ok(0));
    // Bad values and flags change nothing.
    for (v, fl) in [(2, 0), (0xffff_ffff, 0), (1 << 32, 0), (1, 2), (1, 1 << 32)] {
        assert_eq!(
            set(&mut f, PTE_AD_HW_UPDATING, v, fl),
            err(SbiError::InvalidParam)
        );
    }
    assert!(f.log.is_empty());
    assert_eq!(
        set(&mut f, PTE_AD_HW_UPDATING | 1 << 40, 1, 0),
        SbiRet::ok(0)
    );
    assert_eq!(get(&mut f, PTE_AD_HW_UPDATING), SbiRet::ok(1));
    // Misaligned exceptions always go to the guest.
    assert_eq!(
        set(&mut f, MISALIGNED_EXC_DELEG, 0, 0),
        err(SbiError::Denied)
    );
    assert_eq!(
        set(&mut f, MISALIGNED_EXC_DELEG, 1, FLAG_LOCK),
        SbiRet::ok(0)
    );
    // Locked: every set refused, the value kept.
    for (v, fl) in [(0, 0), (1, 0), (0, FLAG_LOCK), (1, FLAG_LOCK)] {
        assert_eq!(
            set(&mut f, MISALIGNED_EXC_DELEG, v, fl),
            err(SbiError::DeniedLocked)
        );
    }
    assert_eq!(get(&mut f, MISALIGNED_EXC_DELEG), SbiRet::ok(1));
    assert_eq!(set(&mut f, PTE_AD_HW_UPDATING, 0, FLAG_LOCK), SbiRet::ok(0));
    assert_eq!(
        set(&mut f, PTE_AD_HW_UPDATING, 1, 0),
        err(SbiError::DeniedLocked)
    );
    assert_eq!(
        f.fwft,
        FwftState {
            values: [1, 0],
            locked: [true, true]
        }
    );
    // A host without Svadu.
    let mut g = Fake {
        no_svadu: true,
        ..Fake::default()
    };
    assert_eq!(get(&mut g, PTE_AD_HW_UPDATING), err(SbiError::NotSupported));
    assert_eq!(
        set(&mut g, PTE_AD_HW_UPDATING, 1, 0),
        err(SbiError::NotSupported)
    );
}

/// SUSP: only SUSPEND_TO_RAM (a `uint32_t`: upper bits ignored); the environment sees
/// nothing else.
#[test]
fn susp_takes_only_suspend_to_ram() {
    let mut f = Fake::default();
    let susp = |f: &mut Fake, t: usize| sbi(f, eid::SUSP, 0, [t, 0x8020_0000, 7, 0, 0, 0]);
    for t in [1usize, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, (1 << 32) | 1] {
        assert_eq!(
            susp(&mut f, t),
            SbiRet::error(SbiError::InvalidParam),
            "{t:#x}"
        );
    }
    assert_eq!(
        sbi(&mut f, eid::SUSP, 1, [0; 6]),
        SbiRet::error(SbiError::NotSupported)
    );
    assert!(f.log.is_empty());
    assert_eq!(susp(&mut f, 0xffff_ffff_0000_0000), SbiRet::ok(0));
    assert_eq!(
        f.suspends,
        [Suspend::NonRetentive {
            resume: Gpa::new(0x8020_0000),
            opaque: 7
        }]
    );
}

/// STA: flags, alignment and the upper half checked before the environment's RAM
/// check; all-ones in both halves stops reporting.
#[test]
fn sta_checks_its_shared_memory_argument() {
    let mut f = Fake::default();
    let set =
        |f: &mut Fake, lo: usize, hi: usize, fl: usize| sbi(f, eid::STA, 0, [lo, hi, fl, 0, 0, 0]);
    assert_eq!(
        sbi(&mut f, eid::STA, 1, [0; 6]),
        SbiRet::error(SbiError::NotSupported)
    );
    assert_eq!(
        set(&mut f, 0x8000_0000, 0, 1),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert_eq!(
        set(&mut f, usize::MAX, usize::MAX, 1),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert_eq!(
        set(&mut f, 0x8000_0020, 0, 0),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert_eq!(
        set(&mut f, 0x8000_0000, 1, 0),
        SbiRet::error(SbiError::InvalidAddress)
    );
    assert_eq!(
        set(&mut f, usize::MAX, 0, 0),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert!(f.log.is_empty());
    assert_eq!(
        set(&mut f, 0x9000_0000, 0, 0),
        SbiRet::error(SbiError::InvalidAddress)
    );
    assert_eq!(set(&mut f, 0x8000_0040, 0, 0), SbiRet::ok(0));
    assert_eq!(f.sta, Some(Gpa::new(0x8000_0040)));
    assert_eq!(set(&mut f, usize::MAX, usize::MAX, 0), SbiRet::ok(0));
    assert_eq!(f.sta, None);
}

/// DBTR: shared memory, ranges, configuration checks (nothing changes on a failure),
/// install/update/read/enable/disable/uninstall, and what the hart is given.
#[test]
fn dbtr_checks_and_keeps_triggers() {
    use dbtr::tdata1::*;
    use diosix_abi::fid::dbtr::*;
    let mut f = Fake {
        mem: alloc::vec![0; 256],
        ..Fake::default()
    };
    let call = |f: &mut Fake, fid: usize, a: [usize; 3]| {
        sbi(f, eid::DBTR, fid, [a[0], a[1], a[2], 0, 0, 0])
    };
    // A load watchpoint in S and U, exact address match.
    let load_on = |_: u64| (TYPE_MCONTROL6 << TYPE_SHIFT) | S | U | 1;
    let put = |f: &mut Fake, i: usize, w: [u64; 4]| {
        for (k, v) in w.iter().enumerate() {
            f.mem[i * 32 + k * 8..i * 32 + k * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
    };
    assert_eq!(call(&mut f, NUM_TRIGGERS, [0, 0, 0]), SbiRet::ok(2));
    assert_eq!(
        call(&mut f, NUM_TRIGGERS, [load_on(0) as usize, 0, 0]),
        SbiRet::ok(2)
    );
    assert_eq!(
        call(&mut f, NUM_TRIGGERS, [(2usize << 60) | 1, 0, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(
        call(&mut f, 8, [0; 3]),
        SbiRet::error(SbiError::NotSupported)
    );
    // No shared memory yet.
    for fid in [READ_TRIGGERS, INSTALL_TRIGGERS, UPDATE_TRIGGERS] {
        assert_eq!(
            call(&mut f, fid, [0, 1, 0]),
            SbiRet::error(SbiError::NoShmem)
        );
    }
    assert_eq!(
        call(&mut f, SET_SHMEM, [0x8000_1000, 0, 1]),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut f, SET_SHMEM, [0x8000_1004, 0, 0]),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut f, SET_SHMEM, [0x8000_1000, 1, 0]),
        SbiRet::error(SbiError::InvalidAddress)
    );
    assert_eq!(
        call(&mut f, SET_SHMEM, [0x8000_10f8, 0, 0]),
        SbiRet::error(SbiError::InvalidAddress)
    );
    assert_eq!(call(&mut f, SET_SHMEM, [0x8000_1000, 0, 0]), SbiRet::ok(0));
    assert_eq!(
        call(&mut f, READ_TRIGGERS, [2, 0, 0]),
        SbiRet::error(SbiError::BadRange)
    );
    assert_eq!(
        call(&mut f, READ_TRIGGERS, [1, 2, 0]),
        SbiRet::error(SbiError::BadRange)
    );
    assert_eq!(
        call(&mut f, INSTALL_TRIGGERS, [3, 0, 0]),
        SbiRet::error(SbiError::BadRange)
    );
    // Bad configurations, each named by its index; nothing installed.
    let bad: [(u64, u64, isize); 7] = [
        ((2 << TYPE_SHIFT) | S | 1, 0, error::NOT_SUPPORTED),
        (load_on(0) | DMODE, 0, error::INVALID_PARAM),
        (load_on(0) | M, 0, error::INVALID_PARAM),
        (load_on(0) | VS, 0, error::INVALID_PARAM),
        (load_on(0) | CHAIN, 0, error::NOT_SUPPORTED),
        (load_on(0) | (1 << 12), 0, error::NOT_SUPPORTED),
        (load_on(0), 5, error::NOT_SUPPORTED),
    ];
    for (t1, t3, e) in bad {
        put(&mut f, 0, [0, load_on(0), 0x8000_2000, 0]);
        put(&mut f, 1, [0, t1, 0x8000_2000, t3]);
        assert_eq!(
            call(&mut f, INSTALL_TRIGGERS, [2, 0, 0]),
            SbiRet { error: e, value: 1 },
            "{t1:#x}"
        );
        assert!(!f.dbtr.any());
    }
    // Install two: indices written back.
    put(&mut f, 0, [9, load_on(0), 0x8000_2000, 0]);
    put(&mut f, 1, [9, load_on(0) & !U | 4, 0x8000_3000, 0]);
    assert_eq!(call(&mut f, INSTALL_TRIGGERS, [2, 0, 0]), SbiRet::ok(0));
    assert_eq!(f.mem[0..8], 0u64.to_le_bytes());
    assert_eq!(f.mem[32..40], 1u64.to_le_bytes());
    assert_eq!(
        call(&mut f, INSTALL_TRIGGERS, [1, 0, 0]),
        SbiRet {
            error: error::FAILED,
            value: 0
        }
    );
    let t0 = f.dbtr.triggers[0].unwrap();
    assert_eq!(t0.hart_tdata1(true) & (S | U | VS | VU | M), VS | VU);
    assert_eq!(t0.hart_tdata1(false) & (S | U | VS | VU | M), S | U);
    // Disable clears the mode bits the hart and a read see; the state keeps them.
    assert_eq!(call(&mut f, DISABLE_TRIGGERS, [0, 1, 0]), SbiRet::ok(0));
    assert_eq!(f.dbtr.triggers[0].unwrap().hart_tdata1(true) & (VS | VU), 0);
    assert_eq!(call(&mut f, READ_TRIGGERS, [0, 2, 0]), SbiRet::ok(0));
    let word = |f: &Fake, i: usize, w: usize| {
        u64::from_le_bytes(
            f.mem[i * 32 + w * 8..i * 32 + w * 8 + 8]
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(word(&f, 0, 0), (1 << 5) | (1 << 2) | (1 << 1) | 1);
    assert_eq!(word(&f, 0, 1) & (S | U), 0);
    assert_eq!(word(&f, 1, 0), (1 << 8) | (1 << 5) | (1 << 2) | 1);
    assert_eq!(word(&f, 1, 2), 0x8000_3000);
    assert_eq!(call(&mut f, ENABLE_TRIGGERS, [0, 1, 0]), SbiRet::ok(0));
    assert!(f.dbtr.triggers[0].unwrap().enabled);
    // Update: an index that is not installed, then a good one.
    put(&mut f, 0, [7, load_on(0), 0x8000_4000, 0]);
    assert_eq!(
        call(&mut f, UPDATE_TRIGGERS, [1, 0, 0]),
        SbiRet {
            error: error::INVALID_PARAM,
            value: 0
        }
    );
    put(&mut f, 0, [1, load_on(0), 0x8000_4000, 0]);
    assert_eq!(call(&mut f, UPDATE_TRIGGERS, [1, 0, 0]), SbiRet::ok(0));
    assert_eq!(f.dbtr.triggers[1].unwrap().tdata2, 0x8000_4000);
    // Masks naming what is not installed, or past the end, change nothing.
    assert_eq!(
        call(&mut f, UNINSTALL_TRIGGERS, [0, 0b111, 0]),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut f, UNINSTALL_TRIGGERS, [usize::MAX, 2, 0]),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert!(f.dbtr.triggers[0].is_some() && f.dbtr.triggers[1].is_some());
    assert_eq!(
        call(&mut f, UNINSTALL_TRIGGERS, [0, 0b11, 0]),
        SbiRet::ok(0)
    );
    assert!(!f.dbtr.any());
    assert_eq!(
        call(&mut f, ENABLE_TRIGGERS, [0, 1, 0]),
        SbiRet::error(SbiError::InvalidParam)
    );
    assert!(f.applied >= 5);
    assert_eq!(
        call(&mut f, SET_SHMEM, [usize::MAX, usize::MAX, 0]),
        SbiRet::ok(0)
    );
    assert_eq!(
        call(&mut f, READ_TRIGGERS, [0, 1, 0]),
        SbiRet::error(SbiError::NoShmem)
    );
}
