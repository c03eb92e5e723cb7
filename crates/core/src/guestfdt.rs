//! Generates a guest's device tree, and decides which ISA extensions a guest is told
//! about ([`advertised_extensions`]).
//!
//! The tree is minimal and Linux-compatible: the root (`#address-cells = 2`,
//! `#size-cells = 2`, compatible `"diosix,virt"`), `/cpus` with one `cpu@N` per vCPU
//! (each with its `riscv,cpu-intc` interrupt controller), an optional `cpu-map`, one
//! `/memory@<gpa>` and `/chosen`. Devices (console, interrupt controllers the
//! hypervisor emulates) are not described yet.
//!
//! Phandles are fixed so other code can refer to them: see [`cpu_phandle`] and
//! [`cpu_intc_phandle`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use vm_fdt::FdtWriter;

use crate::addr::{Gpa, Range};

/// Most vCPUs a generated tree describes (hart IDs in a VM are dense from 0).
pub const MAX_VCPUS: usize = 1024;

/// The extensions the hypervisor lets a guest use natively, in canonical order.
///
/// Conservative on purpose: advertising an extension the hypervisor does not handle
/// makes the guest fault (or worse, silently misbehave). Each entry is here because:
/// - `i m a c zba zbb zbs zihintpause`: purely computational or hints; they execute
///   in VS/VU-mode with no hypervisor involvement.
/// - `f d`: also native, **but** the hypervisor must save/restore FP state on vCPU
///   switches (tracking `sstatus.FS`/`vsstatus.FS`).
/// - `zicsr zifencei`: part of the base the kernel assumes.
/// - `zicntr`: `cycle`/`time`/`instret` reads; the hypervisor must enable them in
///   `mcounteren`/`hcounteren` and keep `htimedelta` correct, or they trap.
///
/// Deliberately absent: `h` (no nested virtualisation), `sstc` (only with
/// [`VirtFeatures::sstc`], since it needs `henvcfg.STCE` and `vstimecmp` switching),
/// `zicbom`/`zicboz`/`zicbop` (need `henvcfg` CBIE/CBCFE/CBZE set up and cache-block
/// sizes in the tree), `svpbmt`/`svnapot`/`svinval` and `zihpm` (need `henvcfg`/
/// counter delegation work), vector (`v`: state switching not implemented).
pub const VIRTUALIZED_EXTENSIONS: &[&str] = &[
    "i",
    "m",
    "a",
    "f",
    "d",
    "c",
    "zicsr",
    "zifencei",
    "zicntr",
    "zihintpause",
    "zba",
    "zbb",
    "zbs",
];

/// Optional hypervisor capabilities that widen what guests are offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtFeatures {
    /// The hypervisor sets `henvcfg.STCE` and switches `vstimecmp`, so a guest may use
    /// the `sstc` timer directly.
    pub sstc: bool,
}

/// The extensions to advertise to a guest: those the host hart has (`host`, lower
/// case as [`crate::hostfdt::HartInfo::extensions`]) that the hypervisor virtualizes,
/// in canonical order. Never includes `h`.
pub fn advertised_extensions<'a, I>(host: I, features: VirtFeatures) -> Vec<&'static str>
where
    I: IntoIterator<Item = &'a str> + Clone,
{
    let has = |name: &str| host.clone().into_iter().any(|e| e == name);
    let mut out: Vec<&'static str> = VIRTUALIZED_EXTENSIONS
        .iter()
        .copied()
        .filter(|e| has(e))
        .collect();
    if features.sstc && has("sstc") {
        out.push("sstc");
    }
    out
}

/// The guest's virtual memory system, for `mmu-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuType {
    /// `riscv,sv39`
    Sv39,
    /// `riscv,sv48`
    Sv48,
    /// `riscv,sv57`
    Sv57,
}

impl MmuType {
    /// The device-tree string.
    pub fn as_str(self) -> &'static str {
        match self {
            MmuType::Sv39 => "riscv,sv39",
            MmuType::Sv48 => "riscv,sv48",
            MmuType::Sv57 => "riscv,sv57",
        }
    }
}

/// What goes in a guest's device tree.
#[derive(Clone, Copy, Debug)]
pub struct GuestFdtConfig<'a> {
    /// Number of vCPUs; hart IDs are 0..vcpus.
    pub vcpus: usize,
    /// The guest's RAM.
    pub ram: Range<Gpa>,
    /// Extensions to advertise, already filtered (see [`advertised_extensions`]).
    /// `"i"` is always included; order does not matter.
    pub isa_extensions: &'a [&'a str],
    /// The guest's `mmu-type`.
    pub mmu_type: MmuType,
    /// Guest `time` ticks per second (the host's, as `time` is not scaled).
    pub timebase_frequency: u64,
    /// Whether to emit `/cpus/cpu-map` (one cluster, one core per vCPU).
    pub cpu_map: bool,
    /// Kernel command line for `/chosen/bootargs`.
    pub bootargs: Option<&'a str>,
    /// Where the initrd was placed, for `/chosen/linux,initrd-{start,end}`.
    pub initrd: Option<Range<Gpa>>,
}

/// Why a guest device tree could not be generated.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestFdtError {
    /// Zero vCPUs, or more than [`MAX_VCPUS`].
    BadVcpuCount(usize),
    /// The RAM range is empty.
    EmptyRam,
    /// The initrd is empty or not inside guest RAM.
    InitrdOutsideRam,
    /// `timebase-frequency` is zero or does not fit the 32 bits Linux reads.
    BadTimebase(u64),
    /// An extension name that is not lower-case alphanumeric (or is `h`).
    BadExtension(String),
    /// The command line contains NUL.
    BadBootargs,
    /// The FDT writer refused (should not happen with validated input).
    Writer(vm_fdt::Error),
}

impl fmt::Display for GuestFdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFdtError::BadVcpuCount(n) => write!(f, "cannot describe {n} vCPUs"),
            GuestFdtError::EmptyRam => f.write_str("guest RAM is empty"),
            GuestFdtError::InitrdOutsideRam => f.write_str("initrd not inside guest RAM"),
            GuestFdtError::BadTimebase(t) => write!(f, "timebase frequency {t} unusable"),
            GuestFdtError::BadExtension(e) => write!(f, "cannot advertise extension {e:?}"),
            GuestFdtError::BadBootargs => f.write_str("command line contains NUL"),
            GuestFdtError::Writer(e) => write!(f, "FDT writer: {e}"),
        }
    }
}

impl From<vm_fdt::Error> for GuestFdtError {
    fn from(e: vm_fdt::Error) -> Self {
        GuestFdtError::Writer(e)
    }
}

/// Phandle of vCPU `n`'s `cpu` node.
pub fn cpu_phandle(n: usize) -> u32 {
    // Bounded by MAX_VCPUS in `generate`, so these cannot collide or overflow.
    2 * n as u32 + 1
}

/// Phandle of vCPU `n`'s `riscv,cpu-intc` interrupt controller, the parent for its
/// local interrupts in `interrupts-extended` properties.
pub fn cpu_intc_phandle(n: usize) -> u32 {
    2 * n as u32 + 2
}

/// Single letters in the order the ISA manual's naming chapter gives.
const CANONICAL_SINGLE: &str = "iemafdqlcbkjtpvh";

fn isa_string(exts: &[String]) -> String {
    let mut s = String::from("rv64");
    let mut singles: Vec<&String> = exts.iter().filter(|e| e.len() == 1).collect();
    singles.sort_by_key(|e| CANONICAL_SINGLE.find(e.as_str()).unwrap_or(usize::MAX));
    for e in singles {
        s.push_str(e);
    }
    // Z extensions, then S, then X, each alphabetical, as the naming rules order them.
    let mut multi: Vec<&String> = exts.iter().filter(|e| e.len() > 1).collect();
    multi.sort_by_key(|e| {
        let class = match e.as_bytes()[0] {
            b'z' => 0,
            b's' => 1,
            _ => 2,
        };
        (class, e.as_str())
    });
    for e in multi {
        s.push('_');
        s.push_str(e);
    }
    s
}

fn validate(cfg: &GuestFdtConfig<'_>) -> Result<Vec<String>, GuestFdtError> {
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(GuestFdtError::BadVcpuCount(cfg.vcpus));
    }
    if cfg.ram.len == 0 {
        return Err(GuestFdtError::EmptyRam);
    }
    if let Some(i) = cfg.initrd {
        if i.len == 0 || !cfg.ram.contains_span(i.start, i.len) {
            return Err(GuestFdtError::InitrdOutsideRam);
        }
    }
    if cfg.timebase_frequency == 0 || cfg.timebase_frequency > u64::from(u32::MAX) {
        return Err(GuestFdtError::BadTimebase(cfg.timebase_frequency));
    }
    if cfg.bootargs.is_some_and(|b| b.contains('\0')) {
        return Err(GuestFdtError::BadBootargs);
    }
    let mut exts: Vec<String> = alloc::vec!["i".to_string()];
    for &e in cfg.isa_extensions {
        let ok = !e.is_empty()
            && e.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && e.as_bytes()[0].is_ascii_lowercase()
            && e != "h";
        if !ok {
            return Err(GuestFdtError::BadExtension(e.to_string()));
        }
        if !exts.iter().any(|x| x == e) {
            exts.push(e.to_string());
        }
    }
    Ok(exts)
}

/// Writes the guest device tree described by `cfg`.
pub fn generate(cfg: &GuestFdtConfig<'_>) -> Result<Vec<u8>, GuestFdtError> {
    let exts = validate(cfg)?;
    let isa = isa_string(&exts);
    // The base is implied by riscv,isa-base; the list carries the rest, "i" included,
    // as the binding's examples do.
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "diosix,virt")?;
    w.property_string("model", "Diosix virtual machine")?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    // Validated to fit: Linux reads this property as a single cell.
    w.property_u32("timebase-frequency", cfg.timebase_frequency as u32)?;
    for n in 0..cfg.vcpus {
        let cpu = w.begin_node(&alloc::format!("cpu@{n:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_u32("reg", n as u32)?;
        w.property_string("status", "okay")?;
        w.property_string("compatible", "riscv")?;
        w.property_string("riscv,isa", &isa)?;
        w.property_string("riscv,isa-base", "rv64i")?;
        w.property_string_list("riscv,isa-extensions", exts.clone())?;
        w.property_string("mmu-type", cfg.mmu_type.as_str())?;
        w.property_phandle(cpu_phandle(n))?;
        let intc = w.begin_node("interrupt-controller")?;
        w.property_u32("#interrupt-cells", 1)?;
        w.property_null("interrupt-controller")?;
        w.property_string("compatible", "riscv,cpu-intc")?;
        w.property_phandle(cpu_intc_phandle(n))?;
        w.end_node(intc)?;
        w.end_node(cpu)?;
    }
    if cfg.cpu_map {
        let map = w.begin_node("cpu-map")?;
        let cluster = w.begin_node("cluster0")?;
        for n in 0..cfg.vcpus {
            let core = w.begin_node(&alloc::format!("core{n}"))?;
            w.property_u32("cpu", cpu_phandle(n))?;
            w.end_node(core)?;
        }
        w.end_node(cluster)?;
        w.end_node(map)?;
    }
    w.end_node(cpus)?;

    let mem = w.begin_node(&alloc::format!("memory@{:x}", cfg.ram.start.raw()))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[cfg.ram.start.raw(), cfg.ram.len])?;
    w.end_node(mem)?;

    let chosen = w.begin_node("chosen")?;
    if let Some(b) = cfg.bootargs {
        w.property_string("bootargs", b)?;
    }
    if let Some(i) = cfg.initrd {
        w.property_u64("linux,initrd-start", i.start.raw())?;
        w.property_u64("linux,initrd-end", i.end().raw())?;
    }
    w.end_node(chosen)?;

    w.end_node(root)?;
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfdt::HostPlatform;

    fn ram() -> Range<Gpa> {
        Range::new(Gpa::new(0x8000_0000), 256 << 20).unwrap()
    }

    fn cfg<'a>(exts: &'a [&'a str]) -> GuestFdtConfig<'a> {
        GuestFdtConfig {
            vcpus: 3,
            ram: ram(),
            isa_extensions: exts,
            mmu_type: MmuType::Sv39,
            timebase_frequency: 10_000_000,
            cpu_map: true,
            bootargs: Some("console=hvc0 earlycon=sbi"),
            initrd: Some(Range::new(Gpa::new(0x8400_0000), 0x12345).unwrap()),
        }
    }

    fn be32(v: &[u8]) -> u32 {
        u32::from_be_bytes(v.try_into().unwrap())
    }
    fn be64(v: &[u8]) -> u64 {
        u64::from_be_bytes(v.try_into().unwrap())
    }

    #[test]
    fn generated_tree_parses_back() {
        let exts = ["m", "a", "f", "d", "c", "zicsr", "zifencei", "zba"];
        let dtb = generate(&cfg(&exts)).unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();

        let root = fdt.find_node("/").unwrap();
        assert_eq!(be32(root.property("#address-cells").unwrap().value), 2);
        assert_eq!(be32(root.property("#size-cells").unwrap().value), 2);
        assert_eq!(
            root.property("compatible").unwrap().as_str(),
            Some("diosix,virt")
        );
        assert!(root
            .property("model")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("Diosix"));

        let cpus = fdt.find_node("/cpus").unwrap();
        assert_eq!(
            be32(cpus.property("timebase-frequency").unwrap().value),
            10_000_000
        );
        let cpu_nodes: Vec<_> = cpus
            .children()
            .filter(|c| c.name.starts_with("cpu@"))
            .collect();
        assert_eq!(cpu_nodes.len(), 3);
        for (n, cpu) in cpu_nodes.iter().enumerate() {
            let p = |name| cpu.property(name).unwrap();
            assert_eq!(cpu.name, alloc::format!("cpu@{n}"));
            assert_eq!(p("device_type").as_str(), Some("cpu"));
            assert_eq!(be32(p("reg").value), n as u32);
            assert_eq!(p("status").as_str(), Some("okay"));
            assert_eq!(p("compatible").as_str(), Some("riscv"));
            assert_eq!(
                p("riscv,isa").as_str(),
                Some("rv64imafdc_zba_zicsr_zifencei")
            );
            assert_eq!(p("riscv,isa-base").as_str(), Some("rv64i"));
            let list: Vec<&str> = p("riscv,isa-extensions")
                .value
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| core::str::from_utf8(s).unwrap())
                .collect();
            assert_eq!(
                list,
                ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei", "zba"]
            );
            assert_eq!(p("mmu-type").as_str(), Some("riscv,sv39"));
            assert_eq!(be32(p("phandle").value), cpu_phandle(n));
            let intc = cpu.children().next().unwrap();
            assert_eq!(intc.name, "interrupt-controller");
            assert_eq!(
                intc.property("compatible").unwrap().as_str(),
                Some("riscv,cpu-intc")
            );
            assert_eq!(be32(intc.property("#interrupt-cells").unwrap().value), 1);
            assert!(intc
                .property("interrupt-controller")
                .unwrap()
                .value
                .is_empty());
            assert_eq!(
                be32(intc.property("phandle").unwrap().value),
                cpu_intc_phandle(n)
            );
        }
        let core2 = fdt.find_node("/cpus/cpu-map/cluster0/core2").unwrap();
        assert_eq!(be32(core2.property("cpu").unwrap().value), cpu_phandle(2));

        let mem = fdt.find_node("/memory@80000000").unwrap();
        assert_eq!(
            mem.property("device_type").unwrap().as_str(),
            Some("memory")
        );
        let reg = mem.property("reg").unwrap().value;
        assert_eq!((be64(&reg[..8]), be64(&reg[8..])), (0x8000_0000, 256 << 20));

        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("bootargs").unwrap().as_str(),
            Some("console=hvc0 earlycon=sbi")
        );
        assert_eq!(
            be64(chosen.property("linux,initrd-start").unwrap().value),
            0x8400_0000
        );
        assert_eq!(
            be64(chosen.property("linux,initrd-end").unwrap().value),
            0x8401_2345
        );
    }

    #[test]
    fn minimal_tree_omits_optional_parts() {
        let mut c = cfg(&[]);
        c.vcpus = 1;
        c.cpu_map = false;
        c.bootargs = None;
        c.initrd = None;
        c.mmu_type = MmuType::Sv48;
        let dtb = generate(&c).unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        assert!(fdt.find_node("/cpus/cpu-map").is_none());
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("bootargs").is_none());
        assert!(chosen.property("linux,initrd-start").is_none());
        let cpu = fdt.find_node("/cpus/cpu@0").unwrap();
        assert_eq!(cpu.property("riscv,isa").unwrap().as_str(), Some("rv64i"));
        assert_eq!(
            cpu.property("mmu-type").unwrap().as_str(),
            Some("riscv,sv48")
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = cfg(&[]);
        c.vcpus = 0;
        assert_eq!(generate(&c), Err(GuestFdtError::BadVcpuCount(0)));
        c.vcpus = MAX_VCPUS + 1;
        assert_eq!(
            generate(&c),
            Err(GuestFdtError::BadVcpuCount(MAX_VCPUS + 1))
        );
        let mut c = cfg(&[]);
        c.initrd = Some(Range::new(Gpa::new(0x1000), 0x10).unwrap());
        assert_eq!(generate(&c), Err(GuestFdtError::InitrdOutsideRam));
        let mut c = cfg(&[]);
        c.timebase_frequency = 1 << 32;
        assert_eq!(generate(&c), Err(GuestFdtError::BadTimebase(1 << 32)));
        let mut c = cfg(&[]);
        c.bootargs = Some("a\0b");
        assert_eq!(generate(&c), Err(GuestFdtError::BadBootargs));
        for bad in ["h", "", "Zba", "z\0", "1x"] {
            let exts = [bad];
            assert_eq!(
                generate(&cfg(&exts)),
                Err(GuestFdtError::BadExtension(bad.to_string()))
            );
        }
        let mut c = cfg(&[]);
        c.ram = Range::new(Gpa::new(0x8000_0000), 0).unwrap();
        assert_eq!(generate(&c), Err(GuestFdtError::EmptyRam));
    }

    #[test]
    fn advertised_extensions_are_whitelisted() {
        let host = HostPlatform::parse(include_bytes!("testdata/qemu-virt-smp4.dtb")).unwrap();
        let hart = &host.harts[0];
        let exts = advertised_extensions(
            hart.extensions.iter().map(String::as_str),
            VirtFeatures::default(),
        );
        assert_eq!(
            exts,
            [
                "i",
                "m",
                "a",
                "f",
                "d",
                "c",
                "zicsr",
                "zifencei",
                "zicntr",
                "zihintpause",
                "zba",
                "zbb",
                "zbs"
            ]
        );
        let with_sstc = advertised_extensions(
            hart.extensions.iter().map(String::as_str),
            VirtFeatures { sstc: true },
        );
        assert_eq!(with_sstc.last(), Some(&"sstc"));
        assert!(!with_sstc.contains(&"h"));
        // Only what the host has.
        assert_eq!(
            advertised_extensions(["i", "m", "h", "v"], VirtFeatures { sstc: true }),
            ["i", "m"]
        );
        // And the result feeds straight into a tree.
        let mut c = cfg(&exts);
        c.isa_extensions = &exts;
        assert!(generate(&c).is_ok());
    }
}
