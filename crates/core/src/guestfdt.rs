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
//!
//! # Heap use
//!
//! A child's tree is generated from inputs its parent chose (a SPAWN image's command
//! line, the vCPU count), so every heap allocation here is bounded by a constant that
//! is checked before the allocation is made:
//! - the command line: at most [`MAX_BOOTARGS_BYTES`], refused before it is copied;
//! - the vCPU count: at most [`MAX_VCPUS`] (the hypervisor caps a VM lower still, at
//!   [`crate::sbi::MAX_VCPUS`]); each vCPU adds a few hundred bytes of tree and two
//!   node names of a few bytes;
//! - the tree itself: its exact size is computed first, without building it, and a tree
//!   larger than the caller's cap ([`generate_within`]; [`MAX_DTB_BYTES`] for
//!   [`generate`]) is refused before the writer's buffer exists. That buffer grows by
//!   doubling, so the heap the writer takes stays below twice the cap;
//! - the ISA extension names come from the host's device tree (the firmware, not a
//!   guest), filtered through [`VIRTUALIZED_EXTENSIONS`], and are copied once.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use vm_fdt::FdtWriter;

use crate::addr::{Gpa, Range};

/// Most vCPUs a generated tree describes (hart IDs in a VM are dense from 0). A tree
/// that large needs more than [`MAX_DTB_BYTES`]; see [`generate_within`].
pub const MAX_VCPUS: usize = 1024;

/// The longest `/chosen/bootargs` written, in bytes without the NUL: the payload's
/// command-line cap, so any command line a payload can carry fits.
pub const MAX_BOOTARGS_BYTES: usize = crate::payload::MAX_CMDLINE_BYTES;

/// The size cap [`generate`] applies: the room [`crate::loader::boot_layout`] callers
/// reserve for the tree ([`crate::loader::DTB_RESERVE`]). A VM with
/// [`crate::sbi::MAX_VCPUS`] vCPUs and a [`MAX_BOOTARGS_BYTES`] command line fits with
/// room to spare (a test checks it).
pub const MAX_DTB_BYTES: usize = crate::loader::DTB_RESERVE as usize;

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
    /// Random bytes for `/chosen/rng-seed` (see [`crate::seeds`]).
    pub rng_seed: Option<&'a [u8]>,
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
    /// The command line is longer than [`MAX_BOOTARGS_BYTES`] (its length in bytes).
    BootargsTooLong(usize),
    /// The tree would take `size` bytes, more than the `max` the caller allows (`size`
    /// is `usize::MAX` if it does not even fit a `usize`).
    TooLarge {
        /// Bytes the tree needs.
        size: usize,
        /// Bytes allowed.
        max: usize,
    },
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
            GuestFdtError::BootargsTooLong(n) => {
                write!(
                    f,
                    "command line is {n} bytes (at most {MAX_BOOTARGS_BYTES})"
                )
            }
            GuestFdtError::TooLarge { size, max } => {
                write!(f, "device tree needs {size} bytes (at most {max})")
            }
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
    if cfg.ram.is_empty() {
        return Err(GuestFdtError::EmptyRam);
    }
    if let Some(i) = cfg.initrd {
        if i.is_empty() || !cfg.ram.contains_span(i.start(), i.len()) {
            return Err(GuestFdtError::InitrdOutsideRam);
        }
    }
    if cfg.timebase_frequency == 0 || cfg.timebase_frequency > u64::from(u32::MAX) {
        return Err(GuestFdtError::BadTimebase(cfg.timebase_frequency));
    }
    if let Some(b) = cfg.bootargs {
        // Length first: it is O(1), and the NUL scan is O(length).
        if b.len() > MAX_BOOTARGS_BYTES {
            return Err(GuestFdtError::BootargsTooLong(b.len()));
        }
        if b.contains('\0') {
            return Err(GuestFdtError::BadBootargs);
        }
    }
    let mut exts: Vec<String> = alloc::vec!["i".to_string()];
    for &e in cfg.isa_extensions {
        // A name is one letter (never H: guests get no nested virtualization), or a
        // multi-letter name starting with z, s or x. Anything else, such as "h1",
        // would read in an ISA string as a versioned single-letter extension.
        let multi_letter = matches!(e.as_bytes().first(), Some(b'z' | b's' | b'x'));
        let ok = !e.is_empty()
            && e.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && e.as_bytes()[0].is_ascii_lowercase()
            && e != "h"
            && (e.len() == 1 || multi_letter);
        if !ok {
            return Err(GuestFdtError::BadExtension(e.to_string()));
        }
        if !exts.iter().any(|x| x == e) {
            exts.push(e.to_string());
        }
    }
    Ok(exts)
}

/// Where [`build`] sends the tree: [`Sizer`] computes its exact size, [`Writer`]
/// writes it. One description of the tree for both keeps the size check exact.
trait Sink {
    fn begin(&mut self, name: &str) -> Result<(), GuestFdtError>;
    fn end(&mut self) -> Result<(), GuestFdtError>;
    /// A property; `value` is written as given (strings include their NUL).
    fn prop(&mut self, name: &'static str, value: &[u8]) -> Result<(), GuestFdtError>;
    /// A string property; the NUL is added.
    fn prop_str(&mut self, name: &'static str, value: &str) -> Result<(), GuestFdtError>;
    fn phandle(&mut self, value: u32) -> Result<(), GuestFdtError>;
}

/// Counts the bytes the FDT format (v17, as `vm_fdt` writes it) needs: a 40-byte
/// header, an empty 16-byte reservation map, the structure block (tokens, NUL-padded
/// names and values, each 4-byte aligned) and the strings block (each distinct
/// property name once, with its NUL).
struct Sizer {
    bytes: Option<usize>,
    names: Vec<&'static str>,
}

/// The header, the empty memory reservation map and the final `FDT_END` token.
const FDT_FIXED_BYTES: usize = 40 + 16 + 4;
/// An `FDT_BEGIN_NODE`, `FDT_END_NODE` or `FDT_PROP` token.
const TOKEN: usize = 4;
/// `FDT_PROP` with the property's `len` and `nameoff` words.
const PROP_HEADER: usize = 12;

impl Sizer {
    fn new() -> Self {
        Sizer {
            bytes: Some(FDT_FIXED_BYTES),
            names: Vec::new(),
        }
    }

    fn add(&mut self, n: Option<usize>) {
        self.bytes = match (self.bytes, n) {
            (Some(b), Some(n)) => b.checked_add(n),
            _ => None,
        };
    }

    /// `len` bytes padded to the structure block's 4-byte alignment.
    fn padded(len: usize) -> Option<usize> {
        len.checked_add(3).map(|l| l & !3)
    }

    fn prop_len(&mut self, name: &'static str, len: Option<usize>) {
        if !self.names.contains(&name) {
            self.names.push(name);
            self.add(Some(name.len() + 1));
        }
        self.add(
            len.and_then(Self::padded)
                .and_then(|l| l.checked_add(PROP_HEADER)),
        );
    }
}

impl Sink for Sizer {
    fn begin(&mut self, name: &str) -> Result<(), GuestFdtError> {
        let n = name.len().checked_add(1).and_then(Self::padded);
        self.add(n.and_then(|n| n.checked_add(TOKEN)));
        Ok(())
    }
    fn end(&mut self) -> Result<(), GuestFdtError> {
        self.add(Some(TOKEN));
        Ok(())
    }
    fn prop(&mut self, name: &'static str, value: &[u8]) -> Result<(), GuestFdtError> {
        self.prop_len(name, Some(value.len()));
        Ok(())
    }
    fn prop_str(&mut self, name: &'static str, value: &str) -> Result<(), GuestFdtError> {
        self.prop_len(name, value.len().checked_add(1));
        Ok(())
    }
    fn phandle(&mut self, _value: u32) -> Result<(), GuestFdtError> {
        self.prop_len("phandle", Some(4));
        Ok(())
    }
}

/// Writes through `vm_fdt`, keeping the open nodes' tokens.
struct Writer {
    w: FdtWriter,
    open: Vec<vm_fdt::FdtWriterNode>,
}

impl Sink for Writer {
    fn begin(&mut self, name: &str) -> Result<(), GuestFdtError> {
        let node = self.w.begin_node(name)?;
        self.open.push(node);
        Ok(())
    }
    fn end(&mut self) -> Result<(), GuestFdtError> {
        let node = self
            .open
            .pop()
            .ok_or(GuestFdtError::Writer(vm_fdt::Error::OutOfOrderEndNode))?;
        Ok(self.w.end_node(node)?)
    }
    fn prop(&mut self, name: &'static str, value: &[u8]) -> Result<(), GuestFdtError> {
        Ok(self.w.property(name, value)?)
    }
    fn prop_str(&mut self, name: &'static str, value: &str) -> Result<(), GuestFdtError> {
        Ok(self.w.property_string(name, value)?)
    }
    fn phandle(&mut self, value: u32) -> Result<(), GuestFdtError> {
        Ok(self.w.property_phandle(value)?)
    }
}

/// The tree for a validated `cfg`; `isa` is the `riscv,isa` string and `ext_list` the
/// `riscv,isa-extensions` value (NUL-terminated names).
fn build<S: Sink>(
    s: &mut S,
    cfg: &GuestFdtConfig<'_>,
    isa: &str,
    ext_list: &[u8],
) -> Result<(), GuestFdtError> {
    s.begin("")?;
    s.prop("#address-cells", &2u32.to_be_bytes())?;
    s.prop("#size-cells", &2u32.to_be_bytes())?;
    s.prop_str("compatible", "diosix,virt")?;
    s.prop_str("model", "Diosix virtual machine")?;

    s.begin("cpus")?;
    s.prop("#address-cells", &1u32.to_be_bytes())?;
    s.prop("#size-cells", &0u32.to_be_bytes())?;
    // Validated to fit: Linux reads this property as a single cell.
    s.prop(
        "timebase-frequency",
        &(cfg.timebase_frequency as u32).to_be_bytes(),
    )?;
    for n in 0..cfg.vcpus {
        s.begin(&alloc::format!("cpu@{n:x}"))?;
        s.prop_str("device_type", "cpu")?;
        // Bounded by MAX_VCPUS in `validate`.
        s.prop("reg", &(n as u32).to_be_bytes())?;
        s.prop_str("status", "okay")?;
        s.prop_str("compatible", "riscv")?;
        s.prop_str("riscv,isa", isa)?;
        s.prop_str("riscv,isa-base", "rv64i")?;
        s.prop("riscv,isa-extensions", ext_list)?;
        s.prop_str("mmu-type", cfg.mmu_type.as_str())?;
        s.phandle(cpu_phandle(n))?;
        s.begin("interrupt-controller")?;
        s.prop("#interrupt-cells", &1u32.to_be_bytes())?;
        s.prop("interrupt-controller", &[])?;
        s.prop_str("compatible", "riscv,cpu-intc")?;
        s.phandle(cpu_intc_phandle(n))?;
        s.end()?;
        s.end()?;
    }
    if cfg.cpu_map {
        s.begin("cpu-map")?;
        s.begin("cluster0")?;
        for n in 0..cfg.vcpus {
            s.begin(&alloc::format!("core{n}"))?;
            s.prop("cpu", &cpu_phandle(n).to_be_bytes())?;
            s.end()?;
        }
        s.end()?;
        s.end()?;
    }
    s.end()?;

    s.begin(&alloc::format!("memory@{:x}", cfg.ram.start().raw()))?;
    s.prop_str("device_type", "memory")?;
    let mut reg = [0u8; 16];
    reg[..8].copy_from_slice(&cfg.ram.start().raw().to_be_bytes());
    reg[8..].copy_from_slice(&cfg.ram.len().to_be_bytes());
    s.prop("reg", &reg)?;
    s.end()?;

    s.begin("chosen")?;
    if let Some(b) = cfg.bootargs {
        s.prop_str("bootargs", b)?;
    }
    if let Some(i) = cfg.initrd {
        s.prop("linux,initrd-start", &i.start().raw().to_be_bytes())?;
        s.prop("linux,initrd-end", &i.end().raw().to_be_bytes())?;
    }
    if let Some(seed) = cfg.rng_seed {
        s.prop("rng-seed", seed)?;
    }
    s.end()?;

    s.end()
}

/// Writes the guest device tree described by `cfg`, refusing one larger than
/// [`MAX_DTB_BYTES`]. See [`generate_within`].
pub fn generate(cfg: &GuestFdtConfig<'_>) -> Result<Vec<u8>, GuestFdtError> {
    generate_within(cfg, MAX_DTB_BYTES)
}

/// Writes the guest device tree described by `cfg` if it takes at most `max_bytes`.
///
/// The configuration is validated (the command line against [`MAX_BOOTARGS_BYTES`])
/// and the tree's exact size computed before the tree is built, so an oversized one is
/// refused ([`GuestFdtError::TooLarge`]) without first taking heap in proportion to it.
pub fn generate_within(
    cfg: &GuestFdtConfig<'_>,
    max_bytes: usize,
) -> Result<Vec<u8>, GuestFdtError> {
    let exts = validate(cfg)?;
    let isa = isa_string(&exts);
    // The base is implied by riscv,isa-base; the list carries the rest, "i" included,
    // as the binding's examples do. Built once rather than once per vCPU.
    let mut ext_list = Vec::new();
    for e in &exts {
        ext_list.extend_from_slice(e.as_bytes());
        ext_list.push(0);
    }

    let mut sizer = Sizer::new();
    build(&mut sizer, cfg, &isa, &ext_list)?;
    let size = sizer.bytes.unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(GuestFdtError::TooLarge {
            size,
            max: max_bytes,
        });
    }

    let mut writer = Writer {
        w: FdtWriter::new()?,
        open: Vec::new(),
    };
    build(&mut writer, cfg, &isa, &ext_list)?;
    let dtb = writer.w.finish()?;
    // The sizer mirrors the writer exactly (a test checks it); should they ever part,
    // the cap still holds.
    if dtb.len() > max_bytes {
        return Err(GuestFdtError::TooLarge {
            size: dtb.len(),
            max: max_bytes,
        });
    }
    Ok(dtb)
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
            rng_seed: Some(&[0xa5; 64]),
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
        assert_eq!(chosen.property("rng-seed").unwrap().value, &[0xa5; 64]);
    }

    #[test]
    fn minimal_tree_omits_optional_parts() {
        let mut c = cfg(&[]);
        c.vcpus = 1;
        c.cpu_map = false;
        c.bootargs = None;
        c.initrd = None;
        c.rng_seed = None;
        c.mmu_type = MmuType::Sv48;
        let dtb = generate(&c).unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        assert!(fdt.find_node("/cpus/cpu-map").is_none());
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("bootargs").is_none());
        assert!(chosen.property("linux,initrd-start").is_none());
        assert!(chosen.property("rng-seed").is_none());
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
        // "h1" and "m2p0" would read as versioned single-letter extensions (found by
        // the fuzzer: "h1" advertised H).
        for bad in ["h", "", "Zba", "z\0", "1x", "h1", "h2p0", "m2p0", "ab"] {
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
    fn bootargs_are_capped_before_they_are_copied() {
        // Issue 9: a SPAWN image's multi-MiB command line was copied into the heap
        // twice here and exhausted it; now it is refused before any copy.
        let huge = "x".repeat(4 << 20);
        let mut c = cfg(&[]);
        c.bootargs = Some(&huge);
        assert_eq!(generate(&c), Err(GuestFdtError::BootargsTooLong(4 << 20)));
        assert_eq!(
            generate_within(&c, usize::MAX),
            Err(GuestFdtError::BootargsTooLong(4 << 20))
        );
        let over = "x".repeat(MAX_BOOTARGS_BYTES + 1);
        c.bootargs = Some(&over);
        assert_eq!(
            generate(&c),
            Err(GuestFdtError::BootargsTooLong(MAX_BOOTARGS_BYTES + 1))
        );
        let max = "x".repeat(MAX_BOOTARGS_BYTES);
        c.bootargs = Some(&max);
        let dtb = generate(&c).unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(chosen.property("bootargs").unwrap().as_str(), Some(&*max));
    }

    #[test]
    fn the_largest_vm_fits_the_default_cap() {
        // Every extension the hypervisor can advertise, sbi::MAX_VCPUS vCPUs, the
        // longest command line: what a legitimate VM can ask for must fit.
        let exts: Vec<&str> = VIRTUALIZED_EXTENSIONS
            .iter()
            .copied()
            .chain(["sstc"])
            .collect();
        let max = "x".repeat(MAX_BOOTARGS_BYTES);
        let mut c = cfg(&exts);
        c.vcpus = crate::sbi::MAX_VCPUS;
        c.bootargs = Some(&max);
        // The longest memory node name, and an initrd.
        c.ram = Range::new(Gpa::new(0xffff_ffff_0000_0000), 0xffff_0000).unwrap();
        c.initrd = Some(Range::new(Gpa::new(0xffff_ffff_0000_0000), 0x1000).unwrap());
        let dtb = generate(&c).unwrap();
        assert!(dtb.len() <= MAX_DTB_BYTES / 2, "{} bytes", dtb.len());
    }

    #[test]
    fn oversized_trees_are_refused() {
        let mut c = cfg(&[]);
        c.vcpus = MAX_VCPUS;
        match generate(&c) {
            Err(GuestFdtError::TooLarge { size, max }) => {
                assert_eq!(max, MAX_DTB_BYTES);
                assert!(size > max);
                // Exactly the size the tree has when allowed.
                assert_eq!(generate_within(&c, size).map(|d| d.len()), Ok(size));
                let e = GuestFdtError::TooLarge { size, max };
                assert!(alloc::format!("{e}").contains("bytes"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            generate_within(&c, 100),
            Err(GuestFdtError::TooLarge {
                size: generate_within(&c, usize::MAX).unwrap().len(),
                max: 100
            })
        );
    }

    proptest::proptest! {
        /// The size computed before building is the size built, to the byte, so the
        /// cap is exact: a tree of `n` bytes passes a cap of `n` and fails `n - 1`.
        #[test]
        fn size_is_computed_exactly(
            vcpus in 1usize..=70,
            bootargs in proptest::option::of("[a-z =,.0-9]{0,300}"),
            cpu_map in proptest::bool::ANY,
            initrd in proptest::bool::ANY,
            ext_mask in 0u32..(1 << 13),
            ram_mib in 1u64..=(1 << 20),
        ) {
            let exts: Vec<&str> = VIRTUALIZED_EXTENSIONS
                .iter()
                .enumerate()
                .filter(|(i, _)| ext_mask & (1 << i) != 0)
                .map(|(_, e)| *e)
                .collect();
            let mut c = cfg(&exts);
            c.vcpus = vcpus;
            c.bootargs = bootargs.as_deref();
            c.cpu_map = cpu_map;
            c.ram = Range::new(Gpa::new(0x8000_0000), ram_mib << 20).unwrap();
            c.initrd = initrd.then(|| Range::new(Gpa::new(0x8000_1000), 0x1000).unwrap());
            let dtb = generate_within(&c, usize::MAX).unwrap();
            proptest::prop_assert!(fdt::Fdt::new(&dtb).is_ok());
            proptest::prop_assert_eq!(generate_within(&c, dtb.len()), Ok(dtb.clone()));
            proptest::prop_assert_eq!(
                generate_within(&c, dtb.len() - 1),
                Err(GuestFdtError::TooLarge { size: dtb.len(), max: dtb.len() - 1 })
            );
        }
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
