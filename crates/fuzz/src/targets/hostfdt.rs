//! The host device tree (`diosix_core::hostfdt::HostPlatform::parse`), then what the
//! hypervisor derives from it for every generated guest tree: the advertised
//! extensions and a guest device tree.

use diosix_core::addr::{Gpa, Range};
use diosix_core::guestfdt::{
    advertised_extensions, generate, GuestFdtConfig, GuestFdtError, MmuType, VirtFeatures,
    MAX_VCPUS, VIRTUALIZED_EXTENSIONS,
};
use diosix_core::hostfdt::{parse_isa_string, HostPlatform};
use vm_fdt::{FdtReserveEntry, FdtWriter};

type Result<T> = core::result::Result<T, vm_fdt::Error>;

use super::{label, mix, Target};
use crate::mutate::{read, Field};
use crate::rng::Rng;

/// QEMU `virt` trees (4 harts, with and without H), as the firmware hands them over.
pub static VIRT: &[u8] = include_bytes!("../../../core/src/testdata/qemu-virt-smp4.dtb");
/// The same machine without the H extension.
pub static VIRT_NOH: &[u8] = include_bytes!("../../../core/src/testdata/qemu-virt-smp4-noh.dtb");

/// The target.
pub struct HostFdt;

const ISA: &[&str] = &[
    "rv64imafdch_zicsr_zifencei_zihintpause_zba_zbb_zbc_zbs_sstc",
    "rv64imafdc",
    "rv64gch",
    "rv64i2p1m2p0a2p1f2p2d2p2c2p0h1p0_zicsr2p0_zifencei2p0_zicboz1p0",
    "rv32imac",
    "rv128gc",
    "RV64IMAFDCH_Zicboz",
    "rv64",
    "rv64_",
    "rv64imp_zicbop__",
    "x86_64",
    "",
];

const EXTS: &[&str] = &[
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
    "zihpm",
    "zihintpause",
    "zba",
    "zbb",
    "zbs",
    "zicboz",
    "zicbom",
    "sstc",
    "svpbmt",
    "H",
    "Zba",
    "x-custom",
    "",
];

fn cells(rng: &mut Rng, usual: u32) -> u32 {
    match rng.below(16) {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4 => rng.next_u32(),
        _ => usual,
    }
}

/// `value` as `n` big-endian cells (0, 1 or 2 meaningful; more repeat zeros).
fn cell_bytes(out: &mut Vec<u8>, n: u32, value: u64) {
    match n {
        0 => {}
        1 => out.extend_from_slice(&(value as u32).to_be_bytes()),
        2 => out.extend_from_slice(&value.to_be_bytes()),
        n => {
            for _ in 0..n.min(4) - 2 {
                out.extend_from_slice(&0u32.to_be_bytes());
            }
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// A `reg` (or `ranges`-style) value of `entries` (addr, size) pairs in the given cells,
/// sometimes cut short.
fn reg(rng: &mut Rng, ac: u32, sc: u32, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(a, s) in entries {
        cell_bytes(&mut v, ac, a);
        cell_bytes(&mut v, sc, s);
    }
    if rng.one_in(16) && !v.is_empty() {
        let cut = rng.below(v.len());
        v.truncate(cut);
    }
    v
}

fn addr(rng: &mut Rng, usual: u64) -> u64 {
    match rng.below(10) {
        0 => rng.next_u64(),
        1 => *rng.pick(&[0, u64::MAX, u64::MAX - 0xfff, 0xffff_ffff, 1 << 32]),
        2 => usual.wrapping_add(rng.range(0, 0x10_0000)),
        _ => usual,
    }
}

fn status(rng: &mut Rng) -> Option<&'static str> {
    match rng.below(10) {
        0 => Some("disabled"),
        1 => Some("fail"),
        2 => Some("ok"),
        3..=5 => Some("okay"),
        _ => None,
    }
}

fn string(rng: &mut Rng, from: &[&str]) -> String {
    let mut s = (*rng.pick(from)).to_string();
    if rng.one_in(8) {
        const SUFFIXES: &[&str] = &["_zicboz", "_h", "p", "2p", "_", "9999999999999999999"];
        s.push_str(rng.one_of(SUFFIXES));
    }
    s
}

/// One device under the bus, with `reg` in the bus's cells.
#[allow(clippy::too_many_arguments)]
fn device(
    w: &mut FdtWriter,
    rng: &mut Rng,
    name: &str,
    compat: &[&str],
    ac: u32,
    sc: u32,
    base: u64,
    size: u64,
) -> Result<()> {
    let n = w.begin_node(&format!("{name}@{base:x}"))?;
    let c: Vec<String> = compat.iter().map(|s| s.to_string()).collect();
    w.property_string_list("compatible", c)?;
    let mut entries = vec![(addr(rng, base), addr(rng, size))];
    if rng.one_in(3) {
        entries.push((addr(rng, base + 0x8000), addr(rng, 0x8000)));
    }
    if !rng.one_in(16) {
        w.property("reg", &reg(rng, ac, sc, &entries))?;
    }
    if let Some(s) = status(rng) {
        w.property_string("status", s)?;
    }
    w.end_node(n)
}

/// A random, mostly well-formed host tree in QEMU `virt`'s shape.
fn tree(rng: &mut Rng) -> Result<Vec<u8>> {
    let mut rsv = Vec::new();
    for _ in 0..rng.below(3) {
        if let Ok(e) = FdtReserveEntry::new(addr(rng, 0x8000_0000), rng.range(1, 1 << 21)) {
            rsv.push(e);
        }
    }
    let mut w = FdtWriter::new_with_mem_reserv(&rsv)?;
    let root = w.begin_node("")?;
    let (rac, rsc) = (cells(rng, 2), cells(rng, 2));
    if !rng.one_in(16) {
        w.property_u32("#address-cells", rac)?;
    }
    if !rng.one_in(16) {
        w.property_u32("#size-cells", rsc)?;
    }
    w.property_string("compatible", "riscv-virtio")?;

    let uart_base = 0x1000_0000u64;
    if !rng.one_in(4) {
        let chosen = w.begin_node("chosen")?;
        let path = match rng.below(7) {
            0 => "serial0".to_string(),
            1 => format!("/soc/serial@{uart_base:x}:115200n8"),
            2 => "/soc/serial".to_string(),
            3 => "/nonexistent/x".to_string(),
            4 => "/".to_string(),
            _ => format!("/soc/serial@{uart_base:x}"),
        };
        let key = if rng.one_in(4) {
            "linux,stdout-path"
        } else {
            "stdout-path"
        };
        w.property_string(key, &path)?;
        w.end_node(chosen)?;
        let aliases = w.begin_node("aliases")?;
        let target = match rng.below(4) {
            0 => "serial0".to_string(),
            1 => "/soc".to_string(),
            _ => format!("/soc/serial@{uart_base:x}"),
        };
        w.property_string("serial0", &target)?;
        w.end_node(aliases)?;
    }

    for i in 0..rng.below(3) + usize::from(!rng.one_in(8)) {
        let base = 0x8000_0000u64 + (i as u64) * 0x4000_0000;
        let m = w.begin_node(&format!("memory@{base:x}"))?;
        w.property_string("device_type", if rng.one_in(16) { "mem" } else { "memory" })?;
        let mut entries = vec![(addr(rng, base), addr(rng, 0x2000_0000))];
        for _ in 0..rng.below(3) {
            entries.push((
                rng.next_u64() >> rng.below(64),
                rng.next_u64() >> rng.below(64),
            ));
        }
        w.property("reg", &reg(rng, rac, rsc, &entries))?;
        if let Some(s) = status(rng) {
            w.property_string("status", s)?;
        }
        w.end_node(m)?;
    }

    if rng.coin() {
        let rm = w.begin_node("reserved-memory")?;
        let (ac, sc) = (cells(rng, 2), cells(rng, 2));
        w.property_u32("#address-cells", ac)?;
        w.property_u32("#size-cells", sc)?;
        w.property_null("ranges")?;
        for i in 0..rng.below(3) {
            let base = 0x8000_0000u64 + i as u64 * 0x20_0000;
            let c = w.begin_node(&format!("mmode_resv{i}@{base:x}"))?;
            if !rng.one_in(4) {
                let a = addr(rng, base);
                w.property("reg", &reg(rng, ac, sc, &[(a, 0x4_0000)]))?;
            }
            w.end_node(c)?;
        }
        w.end_node(rm)?;
    }

    if !rng.one_in(16) {
        let cpus = w.begin_node("cpus")?;
        let cac = cells(rng, 1);
        w.property_u32("#address-cells", cac)?;
        w.property_u32("#size-cells", 0)?;
        match rng.below(8) {
            0 => {}
            1 => w.property_u64("timebase-frequency", rng.next_u64() >> rng.below(64))?,
            2 => w.property_u32("timebase-frequency", 0)?,
            _ => w.property_u32("timebase-frequency", 10_000_000)?,
        }
        let n = 1 + rng.small(3);
        for i in 0..n {
            let cpu = w.begin_node(&format!("cpu@{i:x}"))?;
            w.property_string("device_type", if rng.one_in(16) { "cpux" } else { "cpu" })?;
            let mut r = Vec::new();
            let id = if rng.one_in(8) {
                rng.next_u64()
            } else {
                i as u64
            };
            cell_bytes(&mut r, if rng.one_in(8) { cells(rng, 1) } else { cac }, id);
            w.property("reg", &r)?;
            if let Some(s) = status(rng) {
                w.property_string("status", s)?;
            }
            w.property_string("compatible", "riscv")?;
            if !rng.one_in(4) {
                w.property_string("riscv,isa", &string(rng, ISA))?;
            }
            if rng.coin() {
                let list: Vec<String> = (0..rng.small(4)).map(|_| string(rng, EXTS)).collect();
                w.property_string_list("riscv,isa-extensions", list)?;
                if rng.coin() {
                    const BASES: &[&str] = &["rv64i", "rv32i", "", "i"];
                    w.property_string("riscv,isa-base", rng.one_of(BASES))?;
                }
            }
            if rng.coin() {
                let mmu = *rng.pick(&["riscv,sv39", "riscv,sv48", "riscv,sv57", "none"]);
                w.property_string("mmu-type", mmu)?;
            }
            if rng.coin() {
                let b = match rng.below(4) {
                    0 => rng.next_u32(),
                    _ => 1 << rng.below(16),
                };
                w.property_u32("riscv,cboz-block-size", b)?;
            }
            if rng.one_in(8) {
                w.property_u64("timebase-frequency", rng.next_u64())?;
            }
            let intc = w.begin_node("interrupt-controller")?;
            w.property_u32("#interrupt-cells", 1)?;
            w.property_null("interrupt-controller")?;
            w.property_string("compatible", "riscv,cpu-intc")?;
            w.end_node(intc)?;
            w.end_node(cpu)?;
        }
        w.end_node(cpus)?;
    }

    let soc = w.begin_node("soc")?;
    let (sac, ssc) = (cells(rng, 2), cells(rng, 2));
    w.property_u32("#address-cells", sac)?;
    w.property_u32("#size-cells", ssc)?;
    w.property_string("compatible", "simple-bus")?;
    match rng.below(4) {
        0 => {}
        1 => {
            // child 0.. maps to parent 0x0 (identity) or shifted, in the soc's and
            // root's cells.
            let mut r = Vec::new();
            for _ in 0..1 + rng.below(2) {
                cell_bytes(&mut r, sac, addr(rng, 0));
                cell_bytes(&mut r, rac, addr(rng, 0));
                cell_bytes(&mut r, ssc, addr(rng, 0x1_0000_0000));
            }
            w.property("ranges", &r)?;
        }
        _ => w.property_null("ranges")?,
    }
    let (mut bac, mut bsc) = (sac, ssc);
    let inner = if rng.one_in(4) {
        // A nested bus, so translation takes two hops.
        let b = w.begin_node("bus@0")?;
        let (iac, isc) = (cells(rng, 1), cells(rng, 1));
        w.property_u32("#address-cells", iac)?;
        w.property_u32("#size-cells", isc)?;
        let mut r = Vec::new();
        cell_bytes(&mut r, iac, 0);
        cell_bytes(&mut r, sac, addr(rng, 0));
        cell_bytes(&mut r, isc, addr(rng, 0xffff_ffff));
        w.property("ranges", &r)?;
        (bac, bsc) = (iac, isc);
        Some(b)
    } else {
        None
    };
    if !rng.one_in(8) {
        let s = w.begin_node(&format!("serial@{uart_base:x}"))?;
        let compat = *rng.pick(&["ns16550a", "ns16550", "ns16450", "snps,dw-apb-uart"]);
        w.property_string("compatible", compat)?;
        let a = addr(rng, uart_base);
        w.property("reg", &reg(rng, bac, bsc, &[(a, 0x100)]))?;
        if rng.coin() {
            w.property_u32("clock-frequency", 3_686_400)?;
        }
        if rng.one_in(4) {
            w.property_u32("reg-shift", *rng.pick(&[0, 2, 7, 8, 31, u32::MAX]))?;
        }
        if rng.one_in(4) {
            const STATUS: &[&str] = &["okay", "disabled"];
            w.property_string("status", rng.one_of(STATUS))?;
        }
        w.end_node(s)?;
    }
    const CLINTS: &[&[&str]] = &[
        &["sifive,clint0", "riscv,clint0"],
        &["riscv,aclint-mswi"],
        &["riscv,aclint-mtimer"],
    ];
    let clint = rng.pick(CLINTS);
    device(&mut w, rng, "clint", clint, bac, bsc, 0x200_0000, 0x1_0000)?;
    if rng.coin() {
        let plic = &["sifive,plic-1.0.0", "riscv,plic0"];
        device(&mut w, rng, "plic", plic, bac, bsc, 0xc00_0000, 0x60_0000)?;
    }
    if !rng.one_in(4) {
        let phandle = if rng.one_in(8) { rng.next_u32() } else { 1 };
        let t = w.begin_node("test@100000")?;
        w.property_string_list(
            "compatible",
            vec![
                "sifive,test1".into(),
                "sifive,test0".into(),
                "syscon".into(),
            ],
        )?;
        let a = addr(rng, 0x10_0000);
        w.property("reg", &reg(rng, bac, bsc, &[(a, 0x1000)]))?;
        w.property_phandle(phandle)?;
        w.end_node(t)?;
        for (name, value) in [("poweroff", 0x5555u32), ("reboot", 0x7777)] {
            if rng.one_in(4) {
                continue;
            }
            let n = w.begin_node(name)?;
            w.property_string("compatible", &format!("syscon-{name}"))?;
            let rm = if rng.one_in(8) { rng.next_u32() } else { 1 };
            w.property_u32("regmap", rm)?;
            if !rng.one_in(8) {
                w.property_u32("value", value)?;
            }
            if rng.one_in(4) {
                if rng.coin() {
                    w.property_u32("offset", rng.next_u32())?;
                } else {
                    w.property_u64("offset", 0)?;
                }
            }
            w.end_node(n)?;
        }
    }
    if let Some(b) = inner {
        w.end_node(b)?;
    }
    w.end_node(soc)?;
    w.end_node(root)?;
    w.finish()
}

impl Target for HostFdt {
    fn name(&self) -> &'static str {
        "hostfdt"
    }

    fn about(&self) -> &'static str {
        "host device tree: HostPlatform::parse, then advertised_extensions + guestfdt::generate from its first hart"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![VIRT.to_vec(), VIRT_NOH.to_vec()]
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        tree(rng).unwrap_or_else(|_| VIRT.to_vec())
    }

    fn big_endian(&self) -> bool {
        true
    }

    fn max_len(&self) -> usize {
        32 * 1024
    }

    fn fields(&self, b: &[u8], out: &mut Vec<Field>) {
        // Header: magic, totalsize, offsets, version, sizes.
        for i in 0..10 {
            out.push(Field::be(4 * i, 4));
        }
        // The first memory reservations.
        let rsv = read(b, Field::be(16, 4)) as usize;
        for i in 0..4 {
            out.push(Field::be(rsv.saturating_add(16 * i), 8));
            out.push(Field::be(rsv.saturating_add(16 * i + 8), 8));
        }
        // Tokens of the structure block: property lengths and name offsets, the first
        // cells of property values, node-name words.
        let off = read(b, Field::be(8, 4)) as usize;
        let size = read(b, Field::be(36, 4)) as usize;
        let end = off.saturating_add(size).min(b.len());
        let mut pos = off;
        while pos < end && end - pos >= 4 && out.len() < 400 {
            let tok = read(b, Field::be(pos, 4));
            out.push(Field::be(pos, 4));
            match tok {
                1 => {
                    pos += 4;
                    out.push(Field::be(pos, 4));
                    while pos < end && b[pos] != 0 {
                        pos += 1;
                    }
                    pos = (pos + 4) & !3;
                }
                3 => {
                    let len = read(b, Field::be(pos + 4, 4)) as usize;
                    out.push(Field::be(pos + 4, 4));
                    out.push(Field::be(pos + 8, 4));
                    for k in 0..len.min(16) / 4 {
                        out.push(Field::be(pos + 12 + 4 * k, 4));
                    }
                    if len >= 8 {
                        out.push(Field::be(pos + 12, 8));
                    }
                    pos = (pos + 12).saturating_add(len).saturating_add(3) & !3;
                }
                _ => pos += 4,
            }
        }
    }

    fn fixup(&self, b: &mut Vec<u8>, rng: &mut Rng) {
        // Keep the declared total size consistent with the bytes, so the parser walks
        // into the (mutated) structure instead of stopping at the header.
        if b.len() >= 40 && rng.one_in(2) {
            let n = b.len() as u32;
            b[4..8].copy_from_slice(&n.to_be_bytes());
        }
    }

    fn run(&self, input: &[u8]) -> u64 {
        match HostPlatform::parse(input) {
            Err(e) => label(1, &e),
            Ok(p) => check(&p),
        }
    }
}

/// What `HostPlatform::parse` promises about a tree it accepts, and that the guest tree
/// derived from it is accepted too.
fn check(p: &HostPlatform) -> u64 {
    assert!(!p.memory.is_empty(), "accepted without RAM");
    for r in p.memory.iter().chain(&p.reserved) {
        assert!(
            Range::new(r.start(), r.len()).is_some(),
            "range {r:?} overflows"
        );
    }
    assert!(p.memory.iter().all(|r| !r.is_empty()), "empty RAM bank");
    assert!(!p.harts.is_empty(), "accepted without harts");
    assert!(p.timebase_frequency > 0, "zero timebase");
    for h in &p.harts {
        for e in &h.extensions {
            assert!(!e.is_empty(), "empty extension name");
            assert!(
                !e.bytes().any(|c| c.is_ascii_uppercase()),
                "{e:?} not lower case"
            );
        }
        if h.has_extension("h") {
            assert!(h.has_h, "lists h but has_h is false");
        }
        if let Some(b) = h.cboz_block_size {
            assert!(b.is_power_of_two() && (16..=4096).contains(&b), "cboz {b}");
            assert!(h.has_extension("zicboz"), "cboz size without zicboz");
        }
        let _ = parse_isa_string(&h.isa);
    }
    if let Some(b) = p.cboz_block_size() {
        assert!(p
            .harts
            .iter()
            .filter(|h| h.enabled)
            .all(|h| h.cboz_block_size == Some(b)));
    }
    if let Some(u) = p.uart {
        assert!(u.reg_shift < 8, "reg-shift {}", u.reg_shift);
    }

    // The hypervisor builds every generated guest tree from the first hart's
    // extensions and the host timebase: that must never fail except on a timebase
    // wider than the 32 bits Linux reads.
    let mut shape = 0;
    for sstc in [false, true] {
        let exts = advertised_extensions(
            p.harts[0].extensions.iter().map(String::as_str),
            VirtFeatures {
                sstc,
                sscofpmf: sstc,
            },
        );
        for e in &exts {
            assert!(
                VIRTUALIZED_EXTENSIONS.contains(e) || (sstc && (*e == "sstc" || *e == "sscofpmf")),
                "advertised {e:?}"
            );
        }
        let cfg = GuestFdtConfig {
            vcpus: p.harts.len().min(MAX_VCPUS),
            ram: Range::new(Gpa::new(0x8000_0000), 64 << 20).unwrap(),
            isa_extensions: &exts,
            mmu_type: MmuType::Sv39,
            timebase_frequency: p.timebase_frequency,
            cpu_map: true,
            bootargs: Some("console=hvc0"),
            initrd: None,
            rng_seed: (!p.rng_seed.is_empty()).then_some(p.rng_seed.as_slice()),
            plic: None,
            devices: &[],
        };
        match generate(&cfg) {
            Ok(_) => shape = exts.len() as u64,
            Err(GuestFdtError::BadTimebase(t)) if t > u64::from(u32::MAX) => {}
            Err(e) => panic!("guest tree from an accepted host tree refused: {e}"),
        }
    }
    let mut l = label(2, &"ok");
    l = mix(l, p.harts.len().min(8) as u64);
    l = mix(l, p.memory.len().min(4) as u64);
    l = mix(
        l,
        u64::from(p.uart.is_some()) | (u64::from(p.reset.is_some()) << 1),
    );
    l = mix(
        l,
        u64::from(p.clint.is_some()) | (u64::from(p.aclint_mtimer.is_some()) << 1),
    );
    mix(l, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_and_generated_trees_mostly_parse() {
        for s in HostFdt.seeds() {
            assert!(HostPlatform::parse(&s).is_ok());
            HostFdt.run(&s);
        }
        let mut rng = Rng::new(1);
        let ok = (0..200)
            .filter(|_| HostPlatform::parse(&HostFdt.generate(&mut rng)).is_ok())
            .count();
        assert!(ok > 20, "only {ok} of 200 generated trees parse");
    }
}
