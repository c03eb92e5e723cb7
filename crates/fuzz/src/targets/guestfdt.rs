//! The guest device-tree generator's inputs (`diosix_core::guestfdt`): vCPU count, RAM,
//! initrd range, timebase, MMU type, extension names and the command line, as SPAWN
//! and the payload can set them. An accepted configuration must give a tree that the
//! hypervisor's own device-tree parser reads back to the same machine.
//!
//! Input: vcpus u16, flags u8 (bit 0 cpu-map, bit 1 initrd, bit 2 bootargs, bits 3-4
//! MMU type, bit 5 sstc, bit 6 rng-seed), 1 byte reserved, RAM start and length, timebase, initrd start
//! and length (u64 each), a size cap u32 (0: `generate`'s own), bootargs length u16,
//! the bootargs, then comma-separated extension names.

use diosix_core::addr::{Gpa, Range};
use diosix_core::guestfdt::{
    advertised_extensions, generate, generate_within, GuestFdtConfig, GuestFdtError, MmuType,
    VirtFeatures, MAX_BOOTARGS_BYTES, MAX_DTB_BYTES, VIRTUALIZED_EXTENSIONS,
};
use diosix_core::hostfdt::HostPlatform;

use super::{label, le32, le64, mix, put32, put64, ram_len, ram_start, Target};
use crate::mutate::{read, Field};
use crate::rng::Rng;

/// The target.
pub struct GuestFdt;

const HEAD: usize = 48;
const EXT_NAMES: &[&str] = &[
    "i",
    "m",
    "a",
    "f",
    "d",
    "c",
    "h",
    "v",
    "zicsr",
    "zifencei",
    "zicntr",
    "zba",
    "zbb",
    "zbs",
    "sstc",
    "zihintpause",
    "x1",
    "Zba",
    "1x",
    "",
    "a_b",
    "ü",
];

fn mmu(bits: u8) -> MmuType {
    match bits & 3 {
        0 => MmuType::Sv39,
        1 => MmuType::Sv48,
        _ => MmuType::Sv57,
    }
}

impl Target for GuestFdt {
    fn name(&self) -> &'static str {
        "guestfdt"
    }
    fn about(&self) -> &'static str {
        "guest device-tree generator: guestfdt::generate over fuzzed configs, read back with HostPlatform::parse"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let mut b = Vec::new();
        let vcpus: u16 = match rng.below(16) {
            0 => rng.next_u32() as u16,
            1 => *rng.pick(&[0, 1024, 1025, 64, 65]),
            _ => rng.range(1, 8) as u16,
        };
        b.extend_from_slice(&vcpus.to_le_bytes());
        b.push(rng.byte());
        b.push(0);
        let start = ram_start(rng);
        let len = ram_len(rng, start);
        put64(&mut b, start);
        put64(&mut b, len);
        put64(
            &mut b,
            match rng.below(6) {
                0 => rng.next_u64() >> rng.below(64),
                1 => *rng.pick(&[0, 0xffff_ffff, 0x1_0000_0000]),
                _ => 10_000_000,
            },
        );
        let off = rng.range(0, len.min(1 << 30));
        put64(&mut b, start.wrapping_add(off));
        put64(
            &mut b,
            if rng.one_in(4) {
                rng.next_u64() >> rng.below(64)
            } else {
                rng.range(0, len.saturating_sub(off))
            },
        );
        put32(
            &mut b,
            match rng.below(4) {
                0 => rng.range(0, 0x2_0000) as u32,
                1 => rng.next_u32(),
                _ => 0,
            },
        );
        let log2 = if rng.one_in(8) { 13 } else { 9 };
        let args = super::payload::cmdline(rng, log2);
        let mut args = args.into_bytes();
        if rng.one_in(16) {
            let at = rng.below(args.len() + 1);
            args.insert(at, if rng.coin() { 0 } else { 0xff });
        }
        b.extend_from_slice(&(args.len() as u16).to_le_bytes());
        b.extend_from_slice(&args);
        let n = rng.small(4);
        let names: Vec<&str> = (0..n).map(|_| *rng.pick(EXT_NAMES)).collect();
        b.extend_from_slice(names.join(",").as_bytes());
        b
    }
    fn fields(&self, _b: &[u8], out: &mut Vec<Field>) {
        out.push(Field::le(0, 2));
        out.push(Field::le(2, 1));
        for i in 0..5 {
            out.push(Field::le(4 + 8 * i, 8));
        }
        out.push(Field::le(44, 4));
        out.push(Field::le(HEAD, 2));
    }
    fn run(&self, input: &[u8]) -> u64 {
        let vcpus = read(input, Field::le(0, 2)) as usize;
        let flags = read(input, Field::le(2, 1)) as u8;
        let Some(ram) = Range::new(Gpa::new(le64(input, 4)), le64(input, 12)) else {
            return label(0, &"ram overflows");
        };
        let timebase = le64(input, 20);
        let initrd = match Range::new(Gpa::new(le64(input, 28)), le64(input, 36)) {
            Some(r) if flags & 2 != 0 => Some(r),
            Some(_) => None,
            None => return label(0, &"initrd overflows"),
        };
        let rest = input.get(HEAD + 2..).unwrap_or(&[]);
        let n = (read(input, Field::le(HEAD, 2)) as usize).min(rest.len());
        let bootargs = String::from_utf8_lossy(&rest[..n]);
        let names: Vec<String> = rest[n..]
            .split(|&c| c == b',')
            .filter(|_| !rest[n..].is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let exts: Vec<&str> = names.iter().map(String::as_str).collect();

        // Whatever the host lists, only whitelisted names are advertised.
        let features = VirtFeatures {
            sstc: flags & 0x20 != 0,
            sscofpmf: flags & 0x40 != 0,
        };
        for e in advertised_extensions(exts.iter().copied(), features) {
            assert!(
                VIRTUALIZED_EXTENSIONS.contains(&e)
                    || (features.sstc && e == "sstc")
                    || (features.sscofpmf && e == "sscofpmf"),
                "advertised {e:?}"
            );
        }

        let cfg = GuestFdtConfig {
            vcpus,
            ram,
            isa_extensions: &exts,
            mmu_type: mmu(flags >> 3),
            timebase_frequency: timebase,
            cpu_map: flags & 1 != 0,
            bootargs: (flags & 4 != 0).then_some(&*bootargs),
            initrd,
            rng_seed: (flags & 0x40 != 0).then_some(&[0x3c; 64][..]),
            plic: None,
            devices: &[],
        };
        // Caps past a few times the hypervisor's own only make huge trees slow to
        // build; what matters is the check against the cap.
        let max = match le32(input, 44) {
            0 => MAX_DTB_BYTES,
            m => (m as usize).min(4 * MAX_DTB_BYTES),
        };
        let result = if max == MAX_DTB_BYTES {
            generate(&cfg)
        } else {
            generate_within(&cfg, max)
        };
        match result {
            Err(GuestFdtError::Writer(e)) => panic!("FDT writer refused a validated config: {e}"),
            Err(GuestFdtError::BootargsTooLong(n)) => {
                assert!(n > MAX_BOOTARGS_BYTES && cfg.bootargs.map(str::len) == Some(n));
                label(1, &"bootargs too long")
            }
            Err(GuestFdtError::TooLarge { size, max: m }) => {
                assert!(m == max && size > max, "TooLarge {size} within {m}");
                // The size is exact: the tree fits a cap of exactly that size.
                if size <= MAX_DTB_BYTES * 4 {
                    crate::alloc::untracked(|| {
                        let dtb = generate_within(&cfg, size)
                            .unwrap_or_else(|e| panic!("refused at its own size {size}: {e}"));
                        assert_eq!(dtb.len(), size, "size estimate differs from the tree");
                    });
                }
                label(1, &"too large")
            }
            Err(e) => label(1, &e),
            Ok(dtb) => {
                assert!(
                    dtb.len() <= max,
                    "{} bytes within a {max}-byte cap",
                    dtb.len()
                );
                if let Some(b) = cfg.bootargs {
                    assert!(b.len() <= MAX_BOOTARGS_BYTES);
                }
                crate::alloc::untracked(|| {
                    // Exact size: one byte less is refused with exactly this size.
                    assert_eq!(
                        generate_within(&cfg, dtb.len() - 1),
                        Err(GuestFdtError::TooLarge {
                            size: dtb.len(),
                            max: dtb.len() - 1
                        })
                    );
                    mix(label(2, &"ok"), check(&cfg, &dtb))
                })
            }
        }
    }
}

/// Reads a generated tree back with the hypervisor's own parser: the same RAM, vCPUs,
/// timebase, MMU type and extensions (with `i`, without `h`).
pub fn check(cfg: &GuestFdtConfig<'_>, dtb: &[u8]) -> u64 {
    let p = HostPlatform::parse(dtb)
        .unwrap_or_else(|e| panic!("generated tree does not parse back: {e}"));
    let ram: Vec<(u64, u64)> = p
        .memory
        .iter()
        .map(|r| (r.start().raw(), r.len()))
        .collect();
    assert_eq!(ram, [(cfg.ram.start().raw(), cfg.ram.len())], "RAM differs");
    assert_eq!(
        p.timebase_frequency, cfg.timebase_frequency,
        "timebase differs"
    );
    assert_eq!(p.harts.len(), cfg.vcpus, "vCPU count differs");
    assert_eq!(
        p.rng_seed,
        cfg.rng_seed.unwrap_or_default(),
        "rng-seed differs"
    );
    for (n, h) in p.harts.iter().enumerate() {
        assert_eq!(h.hart_id, n, "hart IDs not dense");
        assert!(h.enabled, "hart {n} disabled");
        assert!(
            !h.has_h,
            "hart {n} reads back with the H extension (riscv,isa {:?})",
            h.isa
        );
        assert_eq!(h.mmu_type.as_deref(), Some(cfg.mmu_type.as_str()));
        assert!(h.has_extension("i"), "no i");
        for e in cfg.isa_extensions {
            assert!(h.has_extension(e), "{e:?} missing");
        }
        for e in &h.extensions {
            assert!(
                e == "i" || cfg.isa_extensions.contains(&e.as_str()),
                "{e:?} extra"
            );
        }
    }
    dtb.len().ilog2().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_run_and_a_plain_one_is_accepted() {
        let mut rng = Rng::new(9);
        for _ in 0..300 {
            GuestFdt.run(&GuestFdt.generate(&mut rng));
        }
        let ok = GuestFdt.run(&ok_input());
        let mut b = ok_input();
        b[0] = 0; // zero vCPUs
        assert_ne!(GuestFdt.run(&b), ok);
    }

    fn ok_input() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&2u16.to_le_bytes());
        b.push(0b111);
        b.push(0);
        for v in [0x8000_0000u64, 64 << 20, 10_000_000, 0x8100_0000, 0x1000] {
            put64(&mut b, v);
        }
        put32(&mut b, 0);
        b.extend_from_slice(&5u16.to_le_bytes());
        b.extend_from_slice(b"quiet");
        b.extend_from_slice(b"m,a,zba");
        b
    }
}
