//! Generates a guest's device tree, and decides which ISA extensions a guest is told
//! about ([`advertised_extensions`]).
//!
//! The tree is minimal and Linux-compatible: the root (`#address-cells = 2`,
//! `#size-cells = 2`, compatible `"diosix,virt"`), `/cpus` with one `cpu@N` per vCPU
//! (each with its `riscv,cpu-intc` interrupt controller), an optional `cpu-map`, one
//! `/memory@<gpa>` and `/chosen`. When the configuration has a virtual PLIC
//! ([`GuestFdtConfig::plic`]) or devices ([`GuestFdtConfig::devices`], e.g. host
//! devices handed to a trusted VM), they go under a `/soc` `simple-bus` (2 address and
//! 2 size cells, empty `ranges`): `/soc/plic@<base>` with one context per vCPU (context
//! `n` is vCPU `n`'s S-mode external interrupt), then each device with its `reg`, its
//! PLIC `interrupts` and its verbatim properties.
//!
//! Phandles are fixed so other code can refer to them: see [`cpu_phandle`],
//! [`cpu_intc_phandle`] and [`plic_phandle`].
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
//!   guest), filtered through [`VIRTUALIZED_EXTENSIONS`], and are copied once;
//! - the PLIC's `interrupts-extended`: 8 bytes per vCPU, so bounded by [`MAX_VCPUS`];
//!   built once per pass over the tree (sizing, then writing);
//! - devices: at most [`MAX_DEVICES`], each with at most [`MAX_DEVICE_REGS`] `reg`
//!   entries and [`MAX_DEVICE_IRQS`] interrupts (written from stack buffers) and at most
//!   [`MAX_DEVICE_PROPS`] verbatim properties of at most [`MAX_DEVICE_PROP_BYTES`]
//!   together; all checked before anything is allocated. Their values reach the heap
//!   only inside the writer's buffer (bounded by the size check above); the size
//!   computation keeps a set of the distinct property names, one reference each, so at
//!   most a few dozen fixed names plus `MAX_DEVICES * MAX_DEVICE_PROPS`; the PLIC's
//!   node name is formatted once (a few bytes).

use alloc::collections::BTreeSet;
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

/// Most devices a tree describes under `/soc` (the virtual PLIC not counted).
pub const MAX_DEVICES: usize = 256;

/// Most `reg` entries of one device.
pub const MAX_DEVICE_REGS: usize = 16;

/// Most interrupts of one device.
pub const MAX_DEVICE_IRQS: usize = 16;

/// Most verbatim properties of one device ([`GuestDevice::props`], counting those
/// that are skipped).
pub const MAX_DEVICE_PROPS: usize = 32;

/// Most bytes of verbatim properties of one device, as [`device_prop_bytes`] counts
/// them (summed over [`GuestDevice::props`], counting those that are skipped).
pub const MAX_DEVICE_PROP_BYTES: usize = 4096;

/// Most interrupt sources a PLIC has (it numbers them 1 to 1023).
pub const MAX_PLIC_SOURCES: u32 = 1023;

/// The PLIC's phandle: above every [`cpu_phandle`] and [`cpu_intc_phandle`].
const PLIC_PHANDLE: u32 = 0x1_0000;
const _: () = assert!(PLIC_PHANDLE as usize > 2 * MAX_VCPUS + 2);

/// Verbatim device properties that are never copied, so that they cannot double (or
/// contradict) what the generator writes, nor carry a host phandle.
const GENERATED_PROPS: &[&str] = &[
    "reg",
    "interrupts",
    "interrupt-parent",
    "interrupts-extended",
    "phandle",
    "linux,phandle",
];

/// What one verbatim property counts against [`MAX_DEVICE_PROP_BYTES`]: its name, a
/// NUL and its value (saturating).
pub fn device_prop_bytes(name: &str, value: &[u8]) -> usize {
    name.len().saturating_add(1).saturating_add(value.len())
}

/// Whether `name` is a node name a tree can carry: `node-name[@unit-address]` with a
/// node name of 1 to 31 characters, starting with a letter, from `A-Za-z0-9,._+-`,
/// and, after a single `@`, a non-empty unit address from the same characters.
pub fn valid_node_name(name: &str) -> bool {
    let ok_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b',' | b'.' | b'_' | b'+' | b'-');
    let (base, unit) = match name.split_once('@') {
        Some((b, u)) => (b, Some(u)),
        None => (name, None),
    };
    let base_ok = (1..=31).contains(&base.len())
        && base.as_bytes()[0].is_ascii_alphabetic()
        && base.bytes().all(ok_char);
    let unit_ok = unit.is_none_or(|u| !u.is_empty() && u.bytes().all(ok_char));
    base_ok && unit_ok
}

/// Whether `name` is a property name a tree can carry: 1 to 31 characters from
/// `A-Za-z0-9,._+?#-`.
pub fn valid_property_name(name: &str) -> bool {
    (1..=31).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b',' | b'.' | b'_' | b'+' | b'?' | b'#' | b'-')
        })
}

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
    /// Counter-overflow interrupts reach the guest (its SBI PMU counters' `OF` bits
    /// and LCOFI are its own), so it may be told about `sscofpmf`.
    pub sscofpmf: bool,
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
    if features.sscofpmf && has("sscofpmf") {
        out.push("sscofpmf");
    }
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

/// A virtual PLIC for the guest's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPlic {
    /// Where its registers are.
    pub base: Gpa,
    /// How many bytes of registers (non-zero; not inside guest RAM).
    pub size: u64,
    /// Interrupt sources, `1..=ndev` (`riscv,ndev`; 1 to [`MAX_PLIC_SOURCES`]).
    pub ndev: u32,
    /// The source that signals the VM's Diosix-extension events (POLL_EVENT has
    /// something), emitted as `/soc/hypervisor` (compatible `"diosix,hypervisor"`) for
    /// the guest's driver to wait on; in `1..=ndev`.
    pub events_irq: Option<u32>,
}

/// A device node under the guest's `/soc`, e.g. a host device handed to the VM.
#[derive(Clone, Copy, Debug)]
pub struct GuestDevice<'a> {
    /// The node name with its unit address, e.g. `"virtio_mmio@10001000"` (see
    /// [`valid_node_name`]); unique among the devices and distinct from the PLIC's.
    pub name: &'a str,
    /// Its register windows in guest physical addresses, written as `reg` with 2
    /// address and 2 size cells (omitted when empty). Each non-empty, outside guest RAM
    /// and the PLIC; at most [`MAX_DEVICE_REGS`].
    pub regs: &'a [Range<Gpa>],
    /// Its PLIC sources (each `1..=ndev`), written as `interrupts` with the PLIC as
    /// `interrupt-parent` (both omitted when empty; refused without a PLIC). At most
    /// [`MAX_DEVICE_IRQS`].
    pub irqs: &'a [u32],
    /// Properties copied verbatim after those, except any named `reg`, `interrupts`,
    /// `interrupt-parent`, `interrupts-extended`, `phandle` or `linux,phandle`. Names
    /// must be valid ([`valid_property_name`]) and distinct; at most
    /// [`MAX_DEVICE_PROPS`] and [`MAX_DEVICE_PROP_BYTES`].
    pub props: &'a [(String, Vec<u8>)],
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
    /// The virtual PLIC, emitted as `/soc/plic@<base>`.
    pub plic: Option<GuestPlic>,
    /// Devices emitted under `/soc` after the PLIC, in this order (at most
    /// [`MAX_DEVICES`]).
    pub devices: &'a [GuestDevice<'a>],
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
    /// The PLIC's `ndev` is 0 or more than [`MAX_PLIC_SOURCES`].
    BadPlicSources(u32),
    /// The PLIC's registers are empty, wrap around, or overlap guest RAM.
    BadPlicRegion,
    /// More devices than [`MAX_DEVICES`] (how many).
    TooManyDevices(usize),
    /// Device `.0` (index in [`GuestFdtConfig::devices`]) has an invalid node name
    /// (see [`valid_node_name`]).
    BadDeviceName(usize),
    /// Device `.0` has the same name as an earlier device or the PLIC.
    DuplicateDeviceName(usize),
    /// A device has more than [`MAX_DEVICE_REGS`] `reg` entries.
    TooManyRegs {
        /// Index of the device.
        device: usize,
        /// How many it has.
        count: usize,
    },
    /// A device's `reg` entry is empty, or overlaps guest RAM or the PLIC.
    BadDeviceReg {
        /// Index of the device.
        device: usize,
        /// Index of the entry in [`GuestDevice::regs`].
        reg: usize,
    },
    /// A device has more than [`MAX_DEVICE_IRQS`] interrupts.
    TooManyIrqs {
        /// Index of the device.
        device: usize,
        /// How many it has.
        count: usize,
    },
    /// Device `.0` has interrupts but the configuration has no PLIC.
    IrqsWithoutPlic(usize),
    /// A device's interrupt is 0 or above the PLIC's `ndev`.
    BadIrq {
        /// Index of the device.
        device: usize,
        /// The interrupt source.
        irq: u32,
    },
    /// A device has more than [`MAX_DEVICE_PROPS`] verbatim properties.
    TooManyProps {
        /// Index of the device.
        device: usize,
        /// How many it has.
        count: usize,
    },
    /// A device's verbatim properties take more than [`MAX_DEVICE_PROP_BYTES`].
    DevicePropsTooLarge {
        /// Index of the device.
        device: usize,
        /// Their size as [`device_prop_bytes`] counts it.
        bytes: usize,
    },
    /// A device's property has an invalid name (see [`valid_property_name`]).
    BadPropertyName {
        /// Index of the device.
        device: usize,
        /// Index of the property in [`GuestDevice::props`].
        prop: usize,
    },
    /// A device's property has the same name as an earlier one.
    DuplicateProperty {
        /// Index of the device.
        device: usize,
        /// Index of the property in [`GuestDevice::props`].
        prop: usize,
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
            GuestFdtError::BadPlicSources(n) => write!(f, "PLIC cannot have {n} sources"),
            GuestFdtError::BadPlicRegion => {
                f.write_str("PLIC registers empty, wrapping or inside guest RAM")
            }
            GuestFdtError::TooManyDevices(n) => {
                write!(f, "{n} devices (at most {MAX_DEVICES})")
            }
            GuestFdtError::BadDeviceName(d) => write!(f, "device {d}: bad node name"),
            GuestFdtError::DuplicateDeviceName(d) => write!(f, "device {d}: name already used"),
            GuestFdtError::TooManyRegs { device, count } => {
                write!(
                    f,
                    "device {device}: {count} reg entries (at most {MAX_DEVICE_REGS})"
                )
            }
            GuestFdtError::BadDeviceReg { device, reg } => write!(
                f,
                "device {device}: reg entry {reg} empty or overlapping RAM or the PLIC"
            ),
            GuestFdtError::TooManyIrqs { device, count } => {
                write!(
                    f,
                    "device {device}: {count} interrupts (at most {MAX_DEVICE_IRQS})"
                )
            }
            GuestFdtError::IrqsWithoutPlic(d) => {
                write!(f, "device {d}: interrupts but no PLIC")
            }
            GuestFdtError::BadIrq { device, irq } => {
                write!(f, "device {device}: no PLIC source {irq}")
            }
            GuestFdtError::TooManyProps { device, count } => write!(
                f,
                "device {device}: {count} properties (at most {MAX_DEVICE_PROPS})"
            ),
            GuestFdtError::DevicePropsTooLarge { device, bytes } => write!(
                f,
                "device {device}: {bytes} bytes of properties (at most {MAX_DEVICE_PROP_BYTES})"
            ),
            GuestFdtError::BadPropertyName { device, prop } => {
                write!(f, "device {device}: property {prop} has a bad name")
            }
            GuestFdtError::DuplicateProperty { device, prop } => {
                write!(f, "device {device}: property {prop} repeats a name")
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

/// Phandle of the virtual PLIC ([`GuestFdtConfig::plic`]), the `interrupt-parent` of
/// every device with interrupts.
pub fn plic_phandle() -> u32 {
    PLIC_PHANDLE
}

/// The PLIC's node name.
fn plic_name(p: &GuestPlic) -> String {
    alloc::format!("plic@{:x}", p.base.raw())
}

fn overlaps(a: Range<Gpa>, b: Range<Gpa>) -> bool {
    !a.is_empty() && !b.is_empty() && a.start() < b.end() && b.start() < a.end()
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
    validate_devices(cfg)?;
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

/// Checks [`GuestFdtConfig::plic`] and [`GuestFdtConfig::devices`]: counts and sizes
/// before anything that scales with them.
fn validate_devices(cfg: &GuestFdtConfig<'_>) -> Result<(), GuestFdtError> {
    let plic = match cfg.plic {
        Some(p) => {
            if p.ndev == 0 || p.ndev > MAX_PLIC_SOURCES {
                return Err(GuestFdtError::BadPlicSources(p.ndev));
            }
            if p.events_irq.is_some_and(|q| q == 0 || q > p.ndev) {
                return Err(GuestFdtError::BadPlicSources(p.ndev));
            }
            let r = Range::new(p.base, p.size)
                .filter(|r| !r.is_empty() && !overlaps(*r, cfg.ram))
                .ok_or(GuestFdtError::BadPlicRegion)?;
            Some((r, p))
        }
        None => None,
    };
    if cfg.devices.len() > MAX_DEVICES {
        return Err(GuestFdtError::TooManyDevices(cfg.devices.len()));
    }
    let plic_name = cfg.plic.as_ref().map(plic_name);
    for (i, d) in cfg.devices.iter().enumerate() {
        if !valid_node_name(d.name) {
            return Err(GuestFdtError::BadDeviceName(i));
        }
        // At most MAX_DEVICES² / 2 short comparisons.
        if plic_name.as_deref() == Some(d.name) || cfg.devices[..i].iter().any(|e| e.name == d.name)
        {
            return Err(GuestFdtError::DuplicateDeviceName(i));
        }
        if d.regs.len() > MAX_DEVICE_REGS {
            return Err(GuestFdtError::TooManyRegs {
                device: i,
                count: d.regs.len(),
            });
        }
        for (j, &r) in d.regs.iter().enumerate() {
            let clash =
                r.is_empty() || overlaps(r, cfg.ram) || plic.is_some_and(|(p, _)| overlaps(r, p));
            if clash {
                return Err(GuestFdtError::BadDeviceReg { device: i, reg: j });
            }
        }
        if d.irqs.len() > MAX_DEVICE_IRQS {
            return Err(GuestFdtError::TooManyIrqs {
                device: i,
                count: d.irqs.len(),
            });
        }
        if !d.irqs.is_empty() {
            let Some((_, p)) = plic else {
                return Err(GuestFdtError::IrqsWithoutPlic(i));
            };
            if let Some(&irq) = d.irqs.iter().find(|&&q| q == 0 || q > p.ndev) {
                return Err(GuestFdtError::BadIrq { device: i, irq });
            }
        }
        if d.props.len() > MAX_DEVICE_PROPS {
            return Err(GuestFdtError::TooManyProps {
                device: i,
                count: d.props.len(),
            });
        }
        let bytes = d.props.iter().fold(0usize, |b, (n, v)| {
            b.saturating_add(device_prop_bytes(n, v))
        });
        if bytes > MAX_DEVICE_PROP_BYTES {
            return Err(GuestFdtError::DevicePropsTooLarge { device: i, bytes });
        }
        for (j, (name, _)) in d.props.iter().enumerate() {
            if !valid_property_name(name) {
                return Err(GuestFdtError::BadPropertyName { device: i, prop: j });
            }
            // At most MAX_DEVICE_PROPS² / 2 comparisons of short names.
            if d.props[..j].iter().any(|(n, _)| n == name) {
                return Err(GuestFdtError::DuplicateProperty { device: i, prop: j });
            }
        }
    }
    Ok(())
}

/// Where [`build`] sends the tree: [`Sizer`] computes its exact size, [`Writer`]
/// writes it. One description of the tree for both keeps the size check exact.
/// Property names live for `'n` (the configuration's lifetime, or `'static`).
trait Sink<'n> {
    fn begin(&mut self, name: &str) -> Result<(), GuestFdtError>;
    fn end(&mut self) -> Result<(), GuestFdtError>;
    /// A property; `value` is written as given (strings include their NUL).
    fn prop(&mut self, name: &'n str, value: &[u8]) -> Result<(), GuestFdtError>;
    /// A string property; the NUL is added.
    fn prop_str(&mut self, name: &'n str, value: &str) -> Result<(), GuestFdtError>;
    fn phandle(&mut self, value: u32) -> Result<(), GuestFdtError>;
}

/// Counts the bytes the FDT format (v17, as `vm_fdt` writes it) needs: a 40-byte
/// header, an empty 16-byte reservation map, the structure block (tokens, NUL-padded
/// names and values, each 4-byte aligned) and the strings block (each distinct
/// property name once, with its NUL).
struct Sizer<'n> {
    bytes: Option<usize>,
    /// Distinct property names so far (see the module's "Heap use").
    names: BTreeSet<&'n str>,
}

/// The header, the empty memory reservation map and the final `FDT_END` token.
const FDT_FIXED_BYTES: usize = 40 + 16 + 4;
/// An `FDT_BEGIN_NODE`, `FDT_END_NODE` or `FDT_PROP` token.
const TOKEN: usize = 4;
/// `FDT_PROP` with the property's `len` and `nameoff` words.
const PROP_HEADER: usize = 12;

impl<'n> Sizer<'n> {
    fn new() -> Self {
        Sizer {
            bytes: Some(FDT_FIXED_BYTES),
            names: BTreeSet::new(),
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

    fn prop_len(&mut self, name: &'n str, len: Option<usize>) {
        if self.names.insert(name) {
            self.add(Some(name.len() + 1));
        }
        self.add(
            len.and_then(Self::padded)
                .and_then(|l| l.checked_add(PROP_HEADER)),
        );
    }
}

impl<'n> Sink<'n> for Sizer<'n> {
    fn begin(&mut self, name: &str) -> Result<(), GuestFdtError> {
        let n = name.len().checked_add(1).and_then(Self::padded);
        self.add(n.and_then(|n| n.checked_add(TOKEN)));
        Ok(())
    }
    fn end(&mut self) -> Result<(), GuestFdtError> {
        self.add(Some(TOKEN));
        Ok(())
    }
    fn prop(&mut self, name: &'n str, value: &[u8]) -> Result<(), GuestFdtError> {
        self.prop_len(name, Some(value.len()));
        Ok(())
    }
    fn prop_str(&mut self, name: &'n str, value: &str) -> Result<(), GuestFdtError> {
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

impl<'n> Sink<'n> for Writer {
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
    fn prop(&mut self, name: &'n str, value: &[u8]) -> Result<(), GuestFdtError> {
        Ok(self.w.property(name, value)?)
    }
    fn prop_str(&mut self, name: &'n str, value: &str) -> Result<(), GuestFdtError> {
        Ok(self.w.property_string(name, value)?)
    }
    fn phandle(&mut self, value: u32) -> Result<(), GuestFdtError> {
        Ok(self.w.property_phandle(value)?)
    }
}

/// The tree for a validated `cfg`; `isa` is the `riscv,isa` string and `ext_list` the
/// `riscv,isa-extensions` value (NUL-terminated names).
fn build<'n, S: Sink<'n>>(
    s: &mut S,
    cfg: &GuestFdtConfig<'n>,
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

    if cfg.plic.is_some() || !cfg.devices.is_empty() {
        soc(s, cfg)?;
    }

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

/// `/soc` with the PLIC and the devices, for a validated `cfg`.
fn soc<'n, S: Sink<'n>>(s: &mut S, cfg: &GuestFdtConfig<'n>) -> Result<(), GuestFdtError> {
    s.begin("soc")?;
    s.prop_str("compatible", "simple-bus")?;
    s.prop("#address-cells", &2u32.to_be_bytes())?;
    s.prop("#size-cells", &2u32.to_be_bytes())?;
    s.prop("ranges", &[])?;
    if let Some(p) = &cfg.plic {
        s.begin(&plic_name(p))?;
        s.prop("compatible", b"sifive,plic-1.0.0\0riscv,plic0\0")?;
        let mut reg = [0u8; 16];
        reg[..8].copy_from_slice(&p.base.raw().to_be_bytes());
        reg[8..].copy_from_slice(&p.size.to_be_bytes());
        s.prop("reg", &reg)?;
        s.prop("#interrupt-cells", &1u32.to_be_bytes())?;
        s.prop("#address-cells", &0u32.to_be_bytes())?;
        s.prop("interrupt-controller", &[])?;
        s.prop("riscv,ndev", &p.ndev.to_be_bytes())?;
        // Context n is vCPU n's S-mode external interrupt (9). At most MAX_VCPUS * 8
        // bytes (`validate`).
        let mut ext = Vec::with_capacity(cfg.vcpus * 8);
        for n in 0..cfg.vcpus {
            ext.extend_from_slice(&cpu_intc_phandle(n).to_be_bytes());
            ext.extend_from_slice(&9u32.to_be_bytes());
        }
        s.prop("interrupts-extended", &ext)?;
        s.phandle(PLIC_PHANDLE)?;
        s.end()?;
        if let Some(q) = p.events_irq {
            s.begin("hypervisor")?;
            s.prop_str("compatible", "diosix,hypervisor")?;
            s.prop("interrupt-parent", &PLIC_PHANDLE.to_be_bytes())?;
            s.prop("interrupts", &q.to_be_bytes())?;
            s.end()?;
        }
    }
    let devices: &'n [GuestDevice<'n>] = cfg.devices;
    for d in devices {
        s.begin(d.name)?;
        if !d.regs.is_empty() {
            let mut reg = [0u8; MAX_DEVICE_REGS * 16];
            for (r, out) in d.regs.iter().zip(reg.chunks_exact_mut(16)) {
                out[..8].copy_from_slice(&r.start().raw().to_be_bytes());
                out[8..].copy_from_slice(&r.len().to_be_bytes());
            }
            s.prop("reg", &reg[..d.regs.len() * 16])?;
        }
        if !d.irqs.is_empty() {
            let mut irqs = [0u8; MAX_DEVICE_IRQS * 4];
            for (q, out) in d.irqs.iter().zip(irqs.chunks_exact_mut(4)) {
                out.copy_from_slice(&q.to_be_bytes());
            }
            s.prop("interrupt-parent", &PLIC_PHANDLE.to_be_bytes())?;
            s.prop("interrupts", &irqs[..d.irqs.len() * 4])?;
        }
        let props: &'n [(String, Vec<u8>)] = d.props;
        for (name, value) in props {
            if !GENERATED_PROPS.contains(&name.as_str()) {
                s.prop(name, value)?;
            }
        }
        s.end()?;
    }
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
            plic: None,
            devices: &[],
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

    static VIRT_VIRTIO: &[u8] = include_bytes!("testdata/qemu-virt-smp2-virtio.dtb");

    fn plic() -> GuestPlic {
        GuestPlic {
            base: Gpa::new(0xc00_0000),
            size: 0x60_0000,
            ndev: 95,
            events_irq: None,
        }
    }

    /// The host's devices at the same addresses, as the hypervisor would hand them out.
    struct Handed {
        names: Vec<String>,
        regs: Vec<Vec<Range<Gpa>>>,
        irqs: Vec<Vec<u32>>,
        props: Vec<Vec<(String, Vec<u8>)>>,
    }

    impl Handed {
        fn from_host() -> Self {
            let host = HostPlatform::parse(VIRT_VIRTIO).unwrap();
            let d = &host.devices;
            Handed {
                names: d.iter().map(|d| d.name.clone()).collect(),
                regs: d
                    .iter()
                    .map(|d| {
                        d.regs
                            .iter()
                            .map(|r| Range::new(Gpa::new(r.start().raw()), r.len()).unwrap())
                            .collect()
                    })
                    .collect(),
                irqs: d.iter().map(|d| d.irqs.clone()).collect(),
                props: d.iter().map(|d| d.props.clone()).collect(),
            }
        }

        fn devices(&self) -> Vec<GuestDevice<'_>> {
            (0..self.names.len())
                .map(|i| GuestDevice {
                    name: &self.names[i],
                    regs: &self.regs[i],
                    irqs: &self.irqs[i],
                    props: &self.props[i],
                })
                .collect()
        }
    }

    /// Runs `dtc` over the tree when it is installed: it must decompile it and find
    /// nothing to warn about outside the vCPUs' nodes. Silently passes without `dtc`.
    fn dtc_check(dtb: &[u8]) {
        use std::process::{Command, Stdio};
        let path = std::env::temp_dir().join(format!(
            "diosix-guestfdt-{}-{:?}.dtb",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, dtb).unwrap();
        let out = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-o", "-"])
            .arg(&path)
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_file(&path);
        let Ok(out) = out else {
            return; // no dtc
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dtc failed: {stderr}");
        // dtc 1.6 wants `#address-cells` in the vCPUs' cpu-intc nodes too (QEMU's
        // lack it as well); anything about the nodes under /soc is a failure.
        for line in stderr.lines() {
            let cpu_intc = line.contains("/cpus/cpu@") && line.contains("interrupt_provider");
            assert!(cpu_intc, "dtc warning: {line}");
        }
        assert!(String::from_utf8_lossy(&out.stdout).contains("riscv,plic0"));
    }

    #[test]
    fn plic_and_devices() {
        let handed = Handed::from_host();
        let devices = handed.devices();
        let mut c = cfg(&[]);
        c.plic = Some(GuestPlic {
            events_irq: Some(95),
            ..plic()
        });
        c.devices = &devices;
        let dtb = generate(&c).unwrap();
        dtc_check(&dtb);
        let fdt = fdt::Fdt::new(&dtb).unwrap();

        let hv = fdt.find_node("/soc/hypervisor").unwrap();
        let hv_prop = |name| hv.property(name).unwrap().value;
        assert_eq!(hv_prop("compatible"), b"diosix,hypervisor\0");
        assert_eq!(be32(hv_prop("interrupt-parent")), plic_phandle());
        assert_eq!(be32(hv_prop("interrupts")), 95);

        let soc = fdt.find_node("/soc").unwrap();
        assert_eq!(
            soc.property("compatible").unwrap().as_str(),
            Some("simple-bus")
        );
        assert_eq!(be32(soc.property("#address-cells").unwrap().value), 2);
        assert_eq!(be32(soc.property("#size-cells").unwrap().value), 2);
        assert!(soc.property("ranges").unwrap().value.is_empty());

        let p = fdt.find_node("/soc/plic@c000000").unwrap();
        let prop = |name| p.property(name).unwrap().value;
        assert_eq!(prop("compatible"), b"sifive,plic-1.0.0\0riscv,plic0\0");
        assert_eq!(
            (be64(&prop("reg")[..8]), be64(&prop("reg")[8..])),
            (0xc00_0000, 0x60_0000)
        );
        assert_eq!(be32(prop("#interrupt-cells")), 1);
        assert_eq!(be32(prop("#address-cells")), 0);
        assert!(prop("interrupt-controller").is_empty());
        assert_eq!(be32(prop("riscv,ndev")), 95);
        assert_eq!(be32(prop("phandle")), plic_phandle());
        let ext: Vec<u32> = prop("interrupts-extended")
            .chunks_exact(4)
            .map(be32)
            .collect();
        assert_eq!(ext.len(), 2 * c.vcpus);
        for (n, pair) in ext.chunks_exact(2).enumerate() {
            assert_eq!(pair, [cpu_intc_phandle(n), 9], "context {n}");
        }
        // The phandle is distinct from every vCPU's.
        for n in 0..MAX_VCPUS {
            assert_ne!(plic_phandle(), cpu_phandle(n));
            assert_ne!(plic_phandle(), cpu_intc_phandle(n));
        }

        let v = fdt.find_node("/soc/virtio_mmio@10001000").unwrap();
        let prop = |name| v.property(name).unwrap().value;
        assert_eq!(
            (be64(&prop("reg")[..8]), be64(&prop("reg")[8..])),
            (0x1000_1000, 0x1000)
        );
        assert_eq!(be32(prop("interrupts")), 1);
        assert_eq!(be32(prop("interrupt-parent")), plic_phandle());
        assert_eq!(prop("compatible"), b"virtio,mmio\0");
        assert_eq!(v.properties().filter(|p| p.name == "reg").count(), 1);
        let virtio = fdt
            .find_node("/soc")
            .unwrap()
            .children()
            .filter(|n| n.name.starts_with("virtio_mmio@"))
            .count();
        assert_eq!(virtio, 8);

        // No interrupts: neither property; two reg entries.
        let f = fdt.find_node("/soc/flash@20000000").unwrap();
        assert!(f.property("interrupts").is_none());
        assert!(f.property("interrupt-parent").is_none());
        let reg = f.property("reg").unwrap().value;
        let reg: Vec<u64> = reg.chunks_exact(8).map(be64).collect();
        assert_eq!(reg, [0x2000_0000, 0x200_0000, 0x2200_0000, 0x200_0000]);
        assert_eq!(be32(f.property("bank-width").unwrap().value), 4);

        // The exact size still holds with all this.
        assert_eq!(generate_within(&c, dtb.len()), Ok(dtb.clone()));
        assert_eq!(
            generate_within(&c, dtb.len() - 1),
            Err(GuestFdtError::TooLarge {
                size: dtb.len(),
                max: dtb.len() - 1
            })
        );

        // A PLIC alone makes /soc too; no PLIC and no devices, no /soc.
        let mut c = cfg(&[]);
        c.plic = Some(plic());
        let fdt_dtb = generate(&c).unwrap();
        dtc_check(&fdt_dtb);
        let fdt = fdt::Fdt::new(&fdt_dtb).unwrap();
        assert!(fdt.find_node("/soc/plic@c000000").is_some());
        let dtb = generate(&cfg(&[])).unwrap();
        assert!(fdt::Fdt::new(&dtb).unwrap().find_node("/soc").is_none());
    }

    #[test]
    fn generated_properties_are_not_doubled() {
        let props = [
            ("reg".to_string(), alloc::vec![0; 8]),
            ("phandle".to_string(), alloc::vec![0, 0, 0, 7]),
            ("linux,phandle".to_string(), alloc::vec![0, 0, 0, 7]),
            ("interrupts".to_string(), alloc::vec![0, 0, 0, 3]),
            ("interrupt-parent".to_string(), alloc::vec![0, 0, 0, 7]),
            (
                "interrupts-extended".to_string(),
                alloc::vec![0, 0, 0, 7, 0, 0, 0, 3],
            ),
            ("compatible".to_string(), b"acme,widget\0".to_vec()),
            ("dma-coherent".to_string(), Vec::new()),
        ];
        let regs = [Range::new(Gpa::new(0x1000_0000), 0x100).unwrap()];
        let devices = [GuestDevice {
            name: "widget@10000000",
            regs: &regs,
            irqs: &[4, 5],
            props: &props,
        }];
        let mut c = cfg(&[]);
        c.plic = Some(plic());
        c.devices = &devices;
        let dtb = generate(&c).unwrap();
        dtc_check(&dtb);
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        let w = fdt.find_node("/soc/widget@10000000").unwrap();
        let names: Vec<&str> = w.properties().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "reg",
                "interrupt-parent",
                "interrupts",
                "compatible",
                "dma-coherent"
            ]
        );
        let irqs: Vec<u32> = w
            .property("interrupts")
            .unwrap()
            .value
            .chunks_exact(4)
            .map(be32)
            .collect();
        assert_eq!(irqs, [4, 5]);
        assert_eq!(be64(&w.property("reg").unwrap().value[8..]), 0x100);
    }

    #[test]
    fn bad_devices_are_refused() {
        use GuestFdtError as E;
        let reg = [Range::new(Gpa::new(0x1000_0000), 0x1000).unwrap()];
        let ok = GuestDevice {
            name: "dev@10000000",
            regs: &reg,
            irqs: &[1],
            props: &[],
        };
        let run = |plic: Option<GuestPlic>, devices: &[GuestDevice<'_>]| {
            let mut c = cfg(&[]);
            c.plic = plic;
            c.devices = devices;
            generate(&c)
        };
        assert!(run(Some(plic()), &[ok]).is_ok());

        for bad in [
            "",
            "@1",
            "1dev@1",
            "dev@",
            "dev@1@2",
            "de v",
            "dev@1/2",
            "dev\0",
            "dév",
            "abcdefghijklmnopqrstuvwxyzabcdef@1",
            "soc/dev",
        ] {
            let d = GuestDevice { name: bad, ..ok };
            assert_eq!(
                run(Some(plic()), &[ok, d]),
                Err(E::BadDeviceName(1)),
                "{bad:?}"
            );
        }
        assert!(valid_node_name(
            "abcdefghijklmnopqrstuvwxyzabcde@1,2_A-b+c.d"
        ));

        let reg2 = [Range::new(Gpa::new(0x1000_1000), 0x1000).unwrap()];
        let again = GuestDevice { regs: &reg2, ..ok };
        assert_eq!(
            run(Some(plic()), &[ok, again]),
            Err(E::DuplicateDeviceName(1))
        );
        let as_plic = GuestDevice {
            name: "plic@c000000",
            ..ok
        };
        assert_eq!(
            run(Some(plic()), &[as_plic]),
            Err(E::DuplicateDeviceName(0))
        );

        assert_eq!(run(None, &[ok]), Err(E::IrqsWithoutPlic(0)));
        assert!(run(None, &[GuestDevice { irqs: &[], ..ok }]).is_ok());
        for irq in [0, 96, u32::MAX] {
            let d = GuestDevice {
                irqs: &[1, irq],
                ..ok
            };
            assert_eq!(run(Some(plic()), &[d]), Err(E::BadIrq { device: 0, irq }));
        }
        let many = [1u32; MAX_DEVICE_IRQS + 1];
        let d = GuestDevice { irqs: &many, ..ok };
        assert_eq!(
            run(Some(plic()), &[d]),
            Err(E::TooManyIrqs {
                device: 0,
                count: MAX_DEVICE_IRQS + 1
            })
        );

        let many = [reg[0]; MAX_DEVICE_REGS + 1];
        let d = GuestDevice { regs: &many, ..ok };
        assert_eq!(
            run(Some(plic()), &[d]),
            Err(E::TooManyRegs {
                device: 0,
                count: MAX_DEVICE_REGS + 1
            })
        );
        for (bad, at) in [
            (Range::new(Gpa::new(0x1000_0000), 0).unwrap(), 1),
            (Range::new(Gpa::new(0x8000_0000 - 1), 2).unwrap(), 1), // RAM
            (Range::new(Gpa::new(0xc5f_f000), 0x1000).unwrap(), 1), // PLIC
        ] {
            let regs = [reg[0], bad];
            let d = GuestDevice { regs: &regs, ..ok };
            assert_eq!(
                run(Some(plic()), &[ok, GuestDevice { name: "x@0", ..d }]),
                Err(E::BadDeviceReg { device: 1, reg: at })
            );
        }

        let name = |s: &str| (s.to_string(), Vec::new());
        let props: Vec<_> = (0..=MAX_DEVICE_PROPS)
            .map(|i| name(&format!("p{i}")))
            .collect();
        let d = GuestDevice {
            props: &props,
            ..ok
        };
        assert_eq!(
            run(Some(plic()), &[d]),
            Err(E::TooManyProps {
                device: 0,
                count: MAX_DEVICE_PROPS + 1
            })
        );
        let props = [("a".to_string(), alloc::vec![0; MAX_DEVICE_PROP_BYTES - 1])];
        let d = GuestDevice {
            props: &props,
            ..ok
        };
        assert_eq!(
            run(Some(plic()), &[d]),
            Err(E::DevicePropsTooLarge {
                device: 0,
                bytes: MAX_DEVICE_PROP_BYTES + 1
            })
        );
        for bad in [
            "",
            "a b",
            "a\0",
            "a/b",
            "é",
            "abcdefghijklmnopqrstuvwxyzabcdef",
        ] {
            let props = [name("ok"), name(bad)];
            let d = GuestDevice {
                props: &props,
                ..ok
            };
            assert_eq!(
                run(Some(plic()), &[d]),
                Err(E::BadPropertyName { device: 0, prop: 1 }),
                "{bad:?}"
            );
        }
        assert!(valid_property_name("#a,b.c_d+e?f-G9"));
        let props = [name("x"), name("y"), name("x")];
        let d = GuestDevice {
            props: &props,
            ..ok
        };
        assert_eq!(
            run(Some(plic()), &[d]),
            Err(E::DuplicateProperty { device: 0, prop: 2 })
        );

        let names: Vec<String> = (0..=MAX_DEVICES).map(|i| format!("d@{i:x}")).collect();
        let many: Vec<GuestDevice<'_>> = names
            .iter()
            .map(|n| GuestDevice {
                name: n,
                regs: &[],
                irqs: &[],
                props: &[],
            })
            .collect();
        assert_eq!(run(None, &many), Err(E::TooManyDevices(MAX_DEVICES + 1)));
        assert!(run(None, &many[..MAX_DEVICES]).is_ok());

        for ndev in [0, MAX_PLIC_SOURCES + 1] {
            let p = GuestPlic { ndev, ..plic() };
            assert_eq!(run(Some(p), &[]), Err(E::BadPlicSources(ndev)));
        }
        for (base, size) in [
            (0xc00_0000, 0),
            (u64::MAX - 10, 0x100),
            (0x8000_0000, 0x1000),
        ] {
            let p = GuestPlic {
                base: Gpa::new(base),
                size,
                ndev: 1,
                events_irq: None,
            };
            assert_eq!(run(Some(p), &[]), Err(E::BadPlicRegion));
        }
        for q in [0, 96] {
            let p = GuestPlic {
                events_irq: Some(q),
                ..plic()
            };
            assert_eq!(run(Some(p), &[]), Err(E::BadPlicSources(95)));
        }
        for e in [
            E::BadDeviceName(3),
            E::BadIrq { device: 1, irq: 0 },
            E::BadPlicRegion,
        ] {
            assert!(!alloc::format!("{e}").is_empty());
        }
    }

    #[test]
    fn the_most_devices_are_sized_exactly() {
        // Every cap at its limit: far beyond the default cap, refused with the exact
        // size before the writer exists.
        let names: Vec<String> = (0..MAX_DEVICES)
            .map(|i| format!("dev@{:x}", 0x1000_0000 + (i << 16)))
            .collect();
        let regs: Vec<Vec<Range<Gpa>>> = (0..MAX_DEVICES)
            .map(|i| {
                (0..MAX_DEVICE_REGS)
                    .map(|j| {
                        Range::new(
                            Gpa::new(0x1000_0000 + (i as u64) * 0x1_0000 + (j as u64) * 0x1000),
                            0x1000,
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        let irqs: Vec<u32> = (1..=MAX_DEVICE_IRQS as u32).collect();
        // Distinct names per device, so the strings block is as large as it gets.
        let props: Vec<Vec<(String, Vec<u8>)>> = (0..MAX_DEVICES)
            .map(|i| {
                (0..MAX_DEVICE_PROPS)
                    .map(|j| (format!("p{i}-{j}"), alloc::vec![0xee; 100]))
                    .collect()
            })
            .collect();
        let devices: Vec<GuestDevice<'_>> = (0..MAX_DEVICES)
            .map(|i| GuestDevice {
                name: &names[i],
                regs: &regs[i],
                irqs: &irqs,
                props: &props[i],
            })
            .collect();
        let mut c = cfg(&[]);
        c.vcpus = MAX_VCPUS;
        c.plic = Some(GuestPlic {
            ndev: MAX_PLIC_SOURCES,
            events_irq: Some(MAX_PLIC_SOURCES),
            ..plic()
        });
        c.devices = &devices;
        let size = match generate(&c) {
            Err(GuestFdtError::TooLarge { size, max }) => {
                assert_eq!(max, MAX_DTB_BYTES);
                size
            }
            other => panic!("{other:?}"),
        };
        let dtb = generate_within(&c, size).unwrap();
        assert_eq!(dtb.len(), size);
        assert!(fdt::Fdt::new(&dtb).is_ok());
    }

    proptest::proptest! {
        /// The exact size holds with a PLIC and devices too.
        #[test]
        fn size_is_computed_exactly_with_devices(
            vcpus in 1usize..=8,
            with_plic in proptest::bool::ANY,
            ndev in 1u32..=MAX_PLIC_SOURCES,
            devs in proptest::collection::vec(
                (
                    proptest::collection::vec((0u64..0x100, 1u64..0x1_0000), 0..=MAX_DEVICE_REGS),
                    proptest::collection::vec(1u32..=MAX_PLIC_SOURCES, 0..=MAX_DEVICE_IRQS),
                    proptest::collection::vec(
                        ("[a-z][a-z0-9,._+#-]{0,20}", proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
                        0..8,
                    ),
                ),
                0..6,
            ),
        ) {
            let names: Vec<String> = (0..devs.len()).map(|i| format!("dev{i}@{i:x}")).collect();
            let regs: Vec<Vec<Range<Gpa>>> = devs
                .iter()
                .map(|(r, _, _)| {
                    r.iter()
                        .map(|&(page, len)| Range::new(Gpa::new(0x1000_0000 + (page << 16)), len).unwrap())
                        .collect()
                })
                .collect();
            let irqs: Vec<Vec<u32>> = devs
                .iter()
                .map(|(_, q, _)| q.iter().map(|&q| q.min(ndev)).filter(|_| with_plic).collect())
                .collect();
            let props: Vec<Vec<(String, Vec<u8>)>> = devs
                .iter()
                .map(|(_, _, p)| {
                    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
                    for (n, v) in p {
                        if !out.iter().any(|(m, _)| m == n) {
                            out.push((n.clone(), v.clone()));
                        }
                    }
                    out
                })
                .collect();
            let devices: Vec<GuestDevice<'_>> = (0..devs.len())
                .map(|i| GuestDevice { name: &names[i], regs: &regs[i], irqs: &irqs[i], props: &props[i] })
                .collect();
            let mut c = cfg(&[]);
            c.vcpus = vcpus;
            c.plic = with_plic.then_some(GuestPlic { ndev, ..plic() });
            c.devices = &devices;
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
            VirtFeatures {
                sstc: true,
                ..Default::default()
            },
        );
        assert_eq!(with_sstc.last(), Some(&"sstc"));
        assert!(!with_sstc.contains(&"h"));
        // Only what the host has.
        assert_eq!(
            advertised_extensions(
                ["i", "m", "h", "v"],
                VirtFeatures {
                    sstc: true,
                    ..Default::default()
                }
            ),
            ["i", "m"]
        );
        // And the result feeds straight into a tree.
        let mut c = cfg(&exts);
        c.isa_extensions = &exts;
        assert!(generate(&c).is_ok());
    }
}
