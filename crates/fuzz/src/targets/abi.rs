//! The ABI structure decoders (`diosix_abi::*::from_le_bytes`) that read SPAWN, quota
//! and IPC arguments out of guest memory, and the SBI hart-mask decoder
//! (`diosix_core::sbi::decode_hart_mask`).
//!
//! Input: a selector byte, then the structure's bytes (or mask, base and vCPU count as
//! u64 for the hart mask).

use diosix_abi::{Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs, SpawnArgs, VmInfo};
use diosix_core::sbi::{decode_hart_mask, HartSet, MAX_VCPUS};

use super::{label, le64, mix, Target};
use crate::mutate::Field;
use crate::rng::Rng;

/// The target.
pub struct Abi;

/// Decodes `data` as `$ty`: it must succeed exactly when there are `SIZE` bytes, and
/// encode back to those bytes.
macro_rules! round_trip {
    ($ty:ty, $data:expr) => {{
        let data: &[u8] = $data;
        match <$ty>::from_le_bytes(data) {
            Some(v) => {
                assert!(data.len() >= <$ty>::SIZE, "decoded from too few bytes");
                assert_eq!(&v.to_le_bytes()[..], &data[..<$ty>::SIZE], "round trip");
                let sum: usize = <$ty>::FIELDS.iter().map(|f| f.size).sum();
                assert_eq!(sum, <$ty>::SIZE);
                1
            }
            None => {
                assert!(data.len() < <$ty>::SIZE, "refused {} bytes", data.len());
                0
            }
        }
    }};
}

const SIZES: [usize; 7] = [
    SpawnArgs::SIZE,
    QuotaArgs::SIZE,
    VmInfo::SIZE,
    IpcSendArgs::SIZE,
    IpcRecvArgs::SIZE,
    Event::SIZE,
    HvInfo::SIZE,
];

impl Target for Abi {
    fn name(&self) -> &'static str {
        "abi"
    }
    fn about(&self) -> &'static str {
        "ABI structs (SpawnArgs, QuotaArgs, IpcSendArgs, ...): from_le_bytes/to_le_bytes; sbi::decode_hart_mask"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let which = rng.below(SIZES.len() + 1);
        let mut b = vec![which as u8];
        if which == SIZES.len() {
            let mask = match rng.below(4) {
                0 => u64::MAX,
                1 => 1 << rng.below(64),
                _ => rng.next_u64() >> rng.below(64),
            };
            let base = match rng.below(5) {
                0 => u64::MAX,
                1 => u64::MAX - rng.range(0, 70),
                _ => rng.range(0, 80),
            };
            let r = rng.next_u64();
            let vcpus = *rng.pick(&[0, 1, 2, 63, 64, 65, r]);
            for v in [mask, base, vcpus] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        } else {
            let n = SIZES[which] as i64 + rng.range(0, 16) as i64 - 8;
            b.extend(rng.bytes(n.max(0) as usize));
        }
        b
    }
    fn fields(&self, b: &[u8], out: &mut Vec<Field>) {
        out.push(Field::le(0, 1));
        for at in (1..b.len()).step_by(4) {
            out.push(Field::le(at, 4));
        }
    }
    fn max_len(&self) -> usize {
        256
    }
    fn run(&self, input: &[u8]) -> u64 {
        let Some((&which, data)) = input.split_first() else {
            return 0;
        };
        let ok = match which % 8 {
            0 => round_trip!(SpawnArgs, data),
            1 => round_trip!(QuotaArgs, data),
            2 => round_trip!(VmInfo, data),
            3 => round_trip!(IpcSendArgs, data),
            4 => round_trip!(IpcRecvArgs, data),
            5 => round_trip!(Event, data),
            6 => round_trip!(HvInfo, data),
            _ => return hart_mask(data),
        };
        mix(u64::from(which % 8), ok)
    }
}

/// `decode_hart_mask`'s contract: all harts for base `usize::MAX`; otherwise exactly
/// the harts `base + i` for the mask's set bits `i`, all existing, or INVALID_PARAM.
fn hart_mask(data: &[u8]) -> u64 {
    let mask = le64(data, 0) as usize;
    let base = le64(data, 8) as usize;
    let vcpus = le64(data, 16) as usize;
    match decode_hart_mask(mask, base, vcpus) {
        Ok(set) if base == usize::MAX => {
            assert_eq!(set, HartSet::all(vcpus));
            label(7, &"all")
        }
        Ok(set) => {
            for h in 0..64 {
                let named = h >= base && h - base < 64 && mask & (1 << (h - base)) != 0;
                assert_eq!(set.contains(h), named, "hart {h}");
                if named {
                    assert!(h < vcpus.min(MAX_VCPUS));
                }
            }
            label(7, &"ok")
        }
        Err(e) => {
            assert_eq!(e, diosix_abi::SbiError::InvalidParam);
            label(7, &"invalid")
        }
    }
}
