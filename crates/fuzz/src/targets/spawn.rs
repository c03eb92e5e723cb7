//! The whole path a SPAWN (or REBOOT) image takes in the hypervisor
//! (`hypervisor/src/vmtree.rs` `ImageOrigin::build` → `vm.rs` `build_vm`), minus the
//! memory copies: a `DSXPAYLD` payload or a bare kernel, `loader::plan`,
//! `loader::boot_layout` with `DTB_RESERVE`, then a guest device tree carrying the
//! payload's command line and initrd range. Its heap figures show what one image makes
//! the hypervisor allocate.
//!
//! Input: RAM pages (u64) and vCPUs (u32), 4 bytes reserved, then the image.

use std::sync::OnceLock;

use diosix_core::addr::{Gpa, Range, PAGE_SIZE};
use diosix_core::guestfdt::{
    advertised_extensions, generate, GuestFdtConfig, GuestFdtError, MmuType, VirtFeatures,
};
use diosix_core::hostfdt::HostPlatform;
use diosix_core::loader::{boot_layout, plan, DTB_RESERVE};
use diosix_core::payload::{Payload, MAGIC};
use diosix_core::sbi::MAX_VCPUS;

use super::{guestfdt, hostfdt, label, le32, le64, loader, mix, payload, put32, put64, Target};
use crate::mutate::Field;
use crate::rng::Rng;

/// The target.
pub struct Spawn;

const PARAMS: usize = 16;
/// Where guest RAM starts (`hypervisor/src/vm.rs` `GUEST_RAM_BASE`).
const GUEST_RAM_BASE: u64 = 0x8000_0000;

/// The extensions the hypervisor advertises on QEMU `virt`.
fn host_extensions() -> &'static [&'static str] {
    static EXTS: OnceLock<Vec<&'static str>> = OnceLock::new();
    EXTS.get_or_init(|| {
        let host = HostPlatform::parse(hostfdt::VIRT).expect("the QEMU tree parses");
        advertised_extensions(
            host.harts[0].extensions.iter().map(String::as_str),
            VirtFeatures::default(),
        )
    })
}

impl Target for Spawn {
    fn name(&self) -> &'static str {
        "spawn"
    }
    fn about(&self) -> &'static str {
        "SPAWN image path: payload or bare kernel -> plan -> boot_layout -> guest tree with its command line"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let mut b = Vec::new();
        let pages = match rng.below(8) {
            0 => rng.next_u64() >> rng.below(64),
            1 => rng.range(0, 64),
            _ => *rng.pick(&[4096u64, 16384, 32768, 65536]),
        };
        put64(&mut b, pages);
        let vcpus = match rng.below(8) {
            0 => rng.next_u32(),
            1 => *rng.pick(&[0, 64, 65]),
            _ => rng.range(1, 4) as u32,
        };
        put32(&mut b, vcpus);
        put32(&mut b, 0);
        if rng.one_in(4) {
            b.extend(payload::kernel(rng));
        } else {
            // Now and then a long command line, the way a SPAWN caller could send one.
            let log2 = if rng.one_in(64) { 20 } else { 12 };
            b.extend(payload::encoded(rng, log2));
        }
        b
    }
    fn fields(&self, b: &[u8], out: &mut Vec<Field>) {
        out.push(Field::le(0, 8));
        out.push(Field::le(8, 4));
        if b.get(PARAMS..PARAMS + 8) == Some(&MAGIC[..]) {
            payload::payload_fields(b, PARAMS, out);
        }
    }
    fn max_len(&self) -> usize {
        2 << 20
    }
    fn run(&self, input: &[u8]) -> u64 {
        let image = input.get(PARAMS..).unwrap_or(&[]);
        let (kernel, initrd, cmdline) = if image.len() >= 8 && image[..8] == MAGIC {
            match Payload::parse(image) {
                Ok(p) => (p.kernel, p.initrd, p.cmdline),
                Err(e) => return label(1, &e),
            }
        } else {
            (image, None, None)
        };
        let vcpus = le32(input, 8) as usize;
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return label(0, &"vcpus");
        }
        let Some(ram) = le64(input, 0)
            .checked_mul(PAGE_SIZE)
            .and_then(|bytes| Range::new(Gpa::new(GUEST_RAM_BASE), bytes))
        else {
            return label(0, &"ram");
        };
        let p = match plan(kernel, ram) {
            Ok(p) => p,
            Err(e) => return label(2, &e),
        };
        loader::check_plan(&p, kernel.len(), ram);
        let initrd_len = initrd.map(|i| i.len() as u64);
        let layout = match boot_layout(&p, ram, initrd_len, DTB_RESERVE) {
            Ok(l) => l,
            Err(e) => return label(3, &e),
        };
        let cfg = GuestFdtConfig {
            vcpus,
            ram,
            isa_extensions: host_extensions(),
            cpu_map: true,
            mmu_type: MmuType::Sv39,
            timebase_frequency: 10_000_000,
            bootargs: cmdline,
            initrd: layout.initrd,
            rng_seed: Some(&[0x3c; 64]),
            plic: None,
            devices: &[],
        };
        let dtb = match generate(&cfg) {
            Ok(d) => d,
            // A payload may carry an empty initrd, which boot_layout places but the
            // tree generator refuses; the hypervisor then fails the SPAWN cleanly.
            Err(GuestFdtError::InitrdOutsideRam) if initrd_len == Some(0) => {
                return label(4, &"empty initrd")
            }
            Err(e) => panic!("device tree for a planned image refused: {e}"),
        };
        if dtb.len() as u64 > layout.dtb.len() {
            // build_vm refuses it ("device tree too large").
            return label(5, &"dtb too large");
        }
        mix(
            label(6, &"ok"),
            crate::alloc::untracked(|| guestfdt::check(&cfg, &dtb)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_spawns_run() {
        let mut rng = Rng::new(11);
        let labels: std::collections::HashSet<u64> = (0..300)
            .map(|_| Spawn.run(&Spawn.generate(&mut rng)))
            .collect();
        assert!(labels.len() > 5);
    }
}
