//! Parses the host (firmware-supplied) device tree into a [`HostPlatform`].
//!
//! The blob comes from whatever ran before us, so it is treated as hostile-ish: every
//! offset and length is bounds-checked and bad input yields a [`HostFdtError`], never a
//! panic. That is why this module carries its own small flattened-device-tree reader
//! (Devicetree Specification v0.4, chapter 5) instead of the `fdt` crate, whose 0.1
//! accessors `unwrap`/index on malformed structure.
//!
//! Only what the hypervisor needs is extracted: RAM, reservations, harts and their ISA,
//! the timebase, CLINT/ACLINT, PLIC, the console UART and the syscon or GPIO reset; and
//! the devices it could hand to a trusted VM ([`HostPlatform::devices`]).
//!
//! # Devices
//!
//! [`HostPlatform::devices`] lists, in tree order, every node that
//! - has a `reg` and an okay (or absent) `status`;
//! - is a child of `/` or of a `simple-bus` that is itself such a child (recursively),
//!   okay, and has a `ranges` property (an empty one maps addresses 1:1, a non-empty
//!   one is honoured); a bus without `ranges` is not memory-mapped into its parent, so
//!   its children are skipped. Bus nodes themselves are not devices;
//!
//! except
//! - what the hypervisor uses itself or must never hand out: memory and CPU nodes,
//!   every interrupt controller (`interrupt-controller` or `msi-controller`, which
//!   includes the PLIC), the CLINT/ACLINT, the console UART ([`HostPlatform::uart`]),
//!   `syscon` devices and every node a `syscon-poweroff`/`syscon-reboot` `regmap`
//!   names, and `qemu,fw-cfg-mmio` (its DMA interface writes any physical address);
//! - nodes that reference another node by phandle other than through their interrupt
//!   parent ([`PHANDLE_PROPERTIES`], any `*-gpios`, `*-gpio`, `*-supply` or
//!   `pinctrl-<n>` property), since a guest's tree cannot resolve the reference (the
//!   PCIe host bridge's `interrupt-map`, for one), and providers others may reference
//!   (any `#<x>-cells` other than `#address-cells`/`#size-cells`, e.g. clock or reset
//!   controllers, which the host's other devices share);
//! - nodes whose interrupts go to a controller other than the PLIC, or name source 0
//!   or one above its `riscv,ndev`;
//! - nodes past the caps, which are firmware input but kept bounded: more than
//!   [`MAX_DEVICE_REGS`] `reg` entries, [`MAX_DEVICE_IRQS`] interrupts,
//!   [`MAX_DEVICE_PROPS`] copied properties or [`MAX_DEVICE_PROP_BYTES`] of them; a
//!   malformed `reg` or interrupt specifier; a node or property name a guest's tree
//!   cannot carry ([`crate::guestfdt::valid_node_name`],
//!   [`crate::guestfdt::valid_property_name`]). At most [`MAX_HOST_DEVICES`] devices
//!   are listed; later ones are skipped.
//!
//! So every listed device is accepted by [`crate::guestfdt`] (given guest addresses
//! for its `reg`s). A device's child nodes are not described.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Hpa, Range};
use crate::guestfdt::{device_prop_bytes, valid_node_name, valid_property_name};
pub use crate::guestfdt::{
    MAX_DEVICE_IRQS, MAX_DEVICE_PROPS, MAX_DEVICE_PROP_BYTES, MAX_DEVICE_REGS,
};

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Deeper nesting than this is treated as corruption (real trees are < 10 deep).
const MAX_DEPTH: usize = 32;
/// Most PLIC machine-mode contexts recorded (one per hart).
const MAX_HARTS: usize = 1024;
/// Cap on bus-translation hops, so a cyclic or absurd tree cannot loop.
const MAX_TRANSLATE_HOPS: usize = MAX_DEPTH;

/// Why the host device tree was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostFdtError {
    /// Shorter than the header or the size the header declares.
    Truncated,
    /// Not a flattened device tree.
    BadMagic,
    /// A version older than 17 (the one with a sized structure block), or a tree that
    /// is not backwards compatible with 17.
    UnsupportedVersion(u32),
    /// The header's block offsets/sizes point outside the blob.
    BadHeader,
    /// The structure block is malformed; the text says how.
    BadStructure(&'static str),
    /// A required node is missing.
    Missing(&'static str),
    /// A property the hypervisor needs is malformed.
    BadProperty {
        /// Node path or name.
        node: String,
        /// Property name.
        property: &'static str,
    },
}

impl fmt::Display for HostFdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostFdtError::Truncated => f.write_str("device tree truncated"),
            HostFdtError::BadMagic => f.write_str("not a flattened device tree (bad magic)"),
            HostFdtError::UnsupportedVersion(v) => write!(f, "device tree version {v} unsupported"),
            HostFdtError::BadHeader => f.write_str("device tree header points outside the blob"),
            HostFdtError::BadStructure(why) => write!(f, "malformed device tree: {why}"),
            HostFdtError::Missing(what) => write!(f, "device tree lacks {what}"),
            HostFdtError::BadProperty { node, property } => {
                write!(f, "device tree node {node}: bad {property} property")
            }
        }
    }
}

/// One hart as the host device tree describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HartInfo {
    /// The hart ID (`reg` of the `cpu` node, as `mhartid` reports it).
    pub hart_id: usize,
    /// The `riscv,isa` string, or one rebuilt from `riscv,isa-extensions` when absent.
    pub isa: String,
    /// True when the hart implements the hypervisor (H) extension.
    pub has_h: bool,
    /// Lower-case extension names: single letters (`"i"`, `"m"`, ...; `g` expanded) then
    /// multi-letter ones (`"zicsr"`, `"sstc"`, ...). From `riscv,isa-extensions` when
    /// present, otherwise parsed out of `riscv,isa`.
    pub extensions: Vec<String>,
    /// False when the node's `status` is not `"okay"` (e.g. a monitor core without an
    /// MMU); such a hart must not be given to guests.
    pub enabled: bool,
    /// The `mmu-type` property, e.g. `"riscv,sv57"`, if present.
    pub mmu_type: Option<String>,
    /// Bytes `cbo.zero` zeroes at once: `riscv,cboz-block-size` when the hart lists
    /// `zicboz` and the size is a power of two from 16 to 4096 (so a page is whole
    /// blocks), else `None`.
    pub cboz_block_size: Option<u32>,
}

impl HartInfo {
    /// Whether the hart can run guests: it has supervisor mode with an MMU, which the
    /// device tree says through `mmu-type` (a monitor core without S-mode has none).
    pub fn can_run_guests(&self) -> bool {
        self.mmu_type.as_deref().is_some_and(|m| m != "riscv,none")
    }

    /// Whether the hart implements extension `name` (lower case, as in its ISA).
    pub fn has_extension(&self, name: &str) -> bool {
        self.extensions.iter().any(|e| e == name)
    }
}

impl HostPlatform {
    /// The `cbo.zero` block size every enabled hart shares, if they all have one (the
    /// hypervisor may run on any of them, so one without rules it out).
    pub fn cboz_block_size(&self) -> Option<u32> {
        let mut sizes = self
            .harts
            .iter()
            .filter(|h| h.enabled)
            .map(|h| h.cboz_block_size);
        let first = sizes.next()??;
        sizes.all(|s| s == Some(first)).then_some(first)
    }
}

/// The console UART (an NS16550-compatible).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UartInfo {
    /// Which register interface it has.
    pub kind: UartKind,
    /// Register base.
    pub base: Hpa,
    /// Register stride is `1 << reg_shift` bytes.
    pub reg_shift: u32,
    /// Input clock, when the tree says.
    pub clock_hz: Option<u64>,
}

/// The UART register interfaces the hypervisor drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// NS16550-compatible (`ns16550a`, `ns16550`, `ns16450`).
    Ns16550,
    /// SiFive UART (`sifive,uart0`).
    Sifive,
}

/// One syscon write that triggers an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysconWrite {
    /// Byte offset from [`SysconReset::base`].
    pub offset: u32,
    /// 32-bit value to write.
    pub value: u32,
}

/// A syscon-style power-off/reboot device (QEMU virt: `sifive,test0` at 0x100000, with
/// `syscon-poweroff` value 0x5555 and `syscon-reboot` value 0x7777).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysconReset {
    /// Register base of the syscon device.
    pub base: Hpa,
    /// The write that powers the machine off.
    pub poweroff: Option<SysconWrite>,
    /// The write that reboots the machine.
    pub reboot: Option<SysconWrite>,
}

/// A reset line on a GPIO pin (`gpio-restart`, e.g. the HiFive Unleashed's: pin 10 of
/// its `sifive,gpio0` controller, active low). Only SiFive GPIO controllers are
/// understood; a `gpio-restart` on any other controller is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpioRestart {
    /// Register base of the `sifive,gpio0` controller.
    pub base: Hpa,
    /// The pin (0..32).
    pub pin: u32,
    /// Whether the line resets the machine when driven low (`GPIO_ACTIVE_LOW`).
    pub active_low: bool,
}

/// The ACLINT machine timer (`riscv,aclint-mtimer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclintMtimer {
    /// The `mtimecmp` registers (first `reg` entry).
    pub mtimecmp: Range<Hpa>,
    /// The `mtime` register (second `reg` entry), when given separately.
    pub mtime: Option<Range<Hpa>>,
}

/// What the hypervisor needs to know about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlatform {
    /// RAM banks, in tree order.
    pub memory: Vec<Range<Hpa>>,
    /// Memory the hypervisor must not hand out: the header's reservation block plus
    /// every `/reserved-memory` child with a `reg`.
    pub reserved: Vec<Range<Hpa>>,
    /// Harts that can run guests (supervisor mode with an MMU: a `mmu-type` other
    /// than `riscv,none`), in tree order.
    pub harts: Vec<HartInfo>,
    /// Hart IDs of the others, such as a board's monitor core without S-mode (the
    /// HiFive Unleashed's E51): parked at reset, never offered to guests.
    pub parked_harts: Vec<usize>,
    /// `mtime` ticks per second.
    pub timebase_frequency: u64,
    /// A legacy CLINT (`riscv,clint0` / `sifive,clint0`).
    pub clint: Option<Range<Hpa>>,
    /// ACLINT machine software interrupt device (`riscv,aclint-mswi`).
    pub aclint_mswi: Option<Range<Hpa>>,
    /// ACLINT machine timer (`riscv,aclint-mtimer`).
    pub aclint_mtimer: Option<AclintMtimer>,
    /// The PLIC (`riscv,plic0` / `sifive,plic-1.0.0`).
    pub plic: Option<Range<Hpa>>,
    /// The PLIC's number of interrupt sources (`riscv,ndev`), when it says.
    pub plic_ndev: Option<u32>,
    /// The PLIC's phandle, when it has one.
    pub plic_phandle: Option<u32>,
    /// The PLIC's machine-mode contexts: `(hart ID, context)` for each hart whose
    /// machine external interrupt (11) its `interrupts-extended` lists (context =
    /// the pair's index there). At most one per hart, at most 1024.
    pub plic_m_contexts: Vec<(usize, u32)>,
    /// The console: `/chosen/stdout-path` if it names an NS16550, else the first one.
    pub uart: Option<UartInfo>,
    /// The syscon reset device.
    pub reset: Option<SysconReset>,
    /// A reset line on a GPIO pin, for boards without a syscon reset.
    pub gpio_restart: Option<GpioRestart>,
    /// Which hardware events the `riscv,pmu` node says the counters count (empty
    /// without one, or when it is malformed: guests then get firmware counters only).
    pub pmu_events: crate::sbi::pmu::HwEventMap,
    /// Random bytes the firmware passed in `/chosen/rng-seed` (QEMU's `virt` supplies
    /// 32), at most [`MAX_RNG_SEED`] of them; empty if there were none.
    pub rng_seed: Vec<u8>,
    /// The devices the hypervisor could hand to a trusted VM, in tree order: see the
    /// module documentation for which ones.
    pub devices: Vec<HostDevice>,
}

/// A host device the hypervisor may hand to a trusted VM (see the module
/// documentation for which nodes qualify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The node's full path, e.g. `"/soc/virtio_mmio@10001000"`.
    pub path: String,
    /// The node name with its unit address, e.g. `"virtio_mmio@10001000"`.
    pub name: String,
    /// The `compatible` strings, most specific first.
    pub compatible: Vec<String>,
    /// The register windows, exactly as the tree gives them (translated to host
    /// physical addresses; not rounded to pages). At most [`MAX_DEVICE_REGS`].
    pub regs: Vec<Range<Hpa>>,
    /// The PLIC sources it raises (each in `1..=riscv,ndev`), in tree order. At most
    /// [`MAX_DEVICE_IRQS`].
    pub irqs: Vec<u32>,
    /// Properties to copy verbatim into a guest's node: all but `phandle`,
    /// `linux,phandle`, `interrupts`, `interrupt-parent` and `interrupts-extended`
    /// (`reg` is included, in the host's cell sizes). At most [`MAX_DEVICE_PROPS`],
    /// and [`MAX_DEVICE_PROP_BYTES`] as [`crate::guestfdt::device_prop_bytes`] counts.
    pub props: Vec<(String, Vec<u8>)>,
    /// Whether the device may master the bus (DMA). False only when its most specific
    /// `compatible` is on [`NO_DMA_COMPATIBLE`]; anything else, virtio-mmio included,
    /// is assumed able to reach any physical address.
    pub dma_capable: bool,
}

/// Most devices [`HostPlatform::devices`] lists; later ones are skipped.
pub const MAX_HOST_DEVICES: usize = crate::guestfdt::MAX_DEVICES;

/// Devices known not to master the bus, by most specific `compatible`: simple RTCs,
/// UARTs and NOR flash that only answer register accesses.
pub const NO_DMA_COMPATIBLE: &[&str] = &[
    "google,goldfish-rtc",
    "ns16550a",
    "ns16550",
    "ns16450",
    "sifive,uart0",
    "cfi-flash",
];

/// Properties that hold a phandle (other than `interrupt-parent` and
/// `interrupts-extended`, which are resolved): a node with one is not handed out, as
/// a guest's tree could not resolve the reference. Names ending in `-gpios`, `-gpio`
/// or `-supply`, and `pinctrl-<n>`, count too.
pub const PHANDLE_PROPERTIES: &[&str] = &[
    "clocks",
    "assigned-clocks",
    "assigned-clock-parents",
    "resets",
    "msi-parent",
    "msi-map",
    "interrupt-map",
    "iommus",
    "iommu-map",
    "power-domains",
    "dmas",
    "phys",
    "regmap",
    "syscon",
    "memory-region",
    "mboxes",
    "interconnects",
    "nvmem-cells",
    "gpios",
    "pwms",
    "io-channels",
    "thermal-sensors",
    "operating-points-v2",
    "cpus",
    "remote-endpoint",
    "sound-dai",
    "hwlocks",
];

/// Properties not copied into [`HostDevice::props`]: they are host phandles or are
/// rewritten for the guest.
const NOT_COPIED: &[&str] = &[
    "phandle",
    "linux,phandle",
    "interrupts",
    "interrupt-parent",
    "interrupts-extended",
];

const PLIC_COMPAT: &[&str] = &["riscv,plic0", "sifive,plic-1.0.0"];
const CLINT_COMPAT: &[&str] = &[
    "riscv,clint0",
    "sifive,clint0",
    "riscv,aclint-mswi",
    "riscv,aclint-mtimer",
    "riscv,aclint-sswi",
];
/// Devices never handed out even though nothing else rules them out.
const NEVER_COMPAT: &[&str] = &[
    "qemu,fw-cfg-mmio",
    "syscon",
    "syscon-poweroff",
    "syscon-reboot",
];

/// The most `/chosen/rng-seed` bytes kept (more adds nothing to a 256-bit seed).
pub const MAX_RNG_SEED: usize = 256;

// ---------------------------------------------------------------------------------
// A bounds-checked flattened device tree reader.

#[derive(Debug)]
struct Node<'a> {
    name: &'a str,
    parent: Option<usize>,
    children: Vec<usize>,
    props: Vec<(&'a str, &'a [u8])>,
    /// The `compatible` property's value (empty without one), kept aside: every
    /// lookup by compatible string reads it on every node.
    compatible: &'a [u8],
}

#[derive(Debug)]
struct Tree<'a> {
    /// Node 0 is the root.
    nodes: Vec<Node<'a>>,
    reservations: Vec<(u64, u64)>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some((u64::from(be32(b, at)?) << 32) | u64::from(be32(b, at.checked_add(4)?)?))
}

/// The NUL-terminated UTF-8 string at `at`, and the offset just past its NUL.
fn cstr(b: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = b.get(at..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    let s = core::str::from_utf8(&rest[..len]).ok()?;
    Some((s, at + len + 1))
}

fn align4(x: usize) -> Option<usize> {
    Some(x.checked_add(3)? & !3)
}

fn block(data: &[u8], off: u32, size: u32) -> Result<&[u8], HostFdtError> {
    let start = off as usize;
    let end = start
        .checked_add(size as usize)
        .ok_or(HostFdtError::BadHeader)?;
    data.get(start..end).ok_or(HostFdtError::BadHeader)
}

impl<'a> Tree<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, HostFdtError> {
        use HostFdtError::BadStructure as Bad;
        let magic = be32(data, 0).ok_or(HostFdtError::Truncated)?;
        if magic != FDT_MAGIC {
            return Err(HostFdtError::BadMagic);
        }
        if data.len() < 40 {
            return Err(HostFdtError::Truncated);
        }
        let h = |i: usize| be32(data, i * 4).ok_or(HostFdtError::Truncated);
        let total = h(1)? as usize;
        let data = data.get(..total).ok_or(HostFdtError::Truncated)?;
        let (off_struct, off_strings, off_rsv) = (h(2)?, h(3)?, h(4)?);
        let (version, last_comp) = (h(5)?, h(6)?);
        let (size_strings, size_struct) = (h(8)?, h(9)?);
        if version < 17 || last_comp > 17 {
            return Err(HostFdtError::UnsupportedVersion(version));
        }
        let structs = block(data, off_struct, size_struct)?;
        let strings = block(data, off_strings, size_strings)?;

        let mut reservations = Vec::new();
        let mut at = off_rsv as usize;
        loop {
            let addr = be64(data, at).ok_or(Bad("unterminated memory reservation block"))?;
            let size = be64(data, at + 8).ok_or(Bad("unterminated memory reservation block"))?;
            if addr == 0 && size == 0 {
                break;
            }
            reservations.push((addr, size));
            at += 16;
        }

        let mut nodes: Vec<Node<'a>> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        let mut pos = 0usize;
        loop {
            let tok = be32(structs, pos).ok_or(Bad("structure block ends without FDT_END"))?;
            pos += 4;
            match tok {
                FDT_BEGIN_NODE => {
                    let (name, next) = cstr(structs, pos).ok_or(Bad("bad node name"))?;
                    pos = align4(next).ok_or(Bad("bad node name"))?;
                    if stack.is_empty() && !nodes.is_empty() {
                        return Err(Bad("more than one root node"));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(Bad("nesting too deep"));
                    }
                    let idx = nodes.len();
                    let parent = stack.last().copied();
                    if let Some(p) = parent {
                        nodes[p].children.push(idx);
                    }
                    nodes.push(Node {
                        name,
                        parent,
                        children: Vec::new(),
                        props: Vec::new(),
                        compatible: &[],
                    });
                    stack.push(idx);
                }
                FDT_END_NODE => {
                    stack.pop().ok_or(Bad("unbalanced FDT_END_NODE"))?;
                }
                FDT_PROP => {
                    let node = *stack.last().ok_or(Bad("property outside a node"))?;
                    let len = be32(structs, pos).ok_or(Bad("truncated property"))? as usize;
                    let nameoff = be32(structs, pos + 4).ok_or(Bad("truncated property"))?;
                    let start = pos + 8;
                    let end = start.checked_add(len).ok_or(Bad("truncated property"))?;
                    let value = structs.get(start..end).ok_or(Bad("truncated property"))?;
                    pos = align4(end).ok_or(Bad("truncated property"))?;
                    let (name, _) =
                        cstr(strings, nameoff as usize).ok_or(Bad("bad property name"))?;
                    if name == "compatible" && nodes[node].compatible.is_empty() {
                        nodes[node].compatible = value;
                    }
                    nodes[node].props.push((name, value));
                }
                FDT_NOP => {}
                FDT_END => break,
                _ => return Err(Bad("unknown structure token")),
            }
        }
        if !stack.is_empty() {
            return Err(Bad("unclosed node"));
        }
        if nodes.is_empty() {
            return Err(HostFdtError::Missing("a root node"));
        }
        Ok(Tree {
            nodes,
            reservations,
        })
    }

    fn prop(&self, node: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[node]
            .props
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn prop_u32(&self, node: usize, name: &str) -> Option<u32> {
        let v = self.prop(node, name)?;
        if v.len() != 4 {
            return None;
        }
        be32(v, 0)
    }

    /// A one- or two-cell integer property.
    fn prop_int(&self, node: usize, name: &str) -> Option<u64> {
        let v = self.prop(node, name)?;
        match v.len() {
            4 => be32(v, 0).map(u64::from),
            8 => be64(v, 0),
            _ => None,
        }
    }

    fn prop_str(&self, node: usize, name: &str) -> Option<&'a str> {
        let v = self.prop(node, name)?;
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        core::str::from_utf8(v).ok().filter(|s| !s.contains('\0'))
    }

    fn prop_strs(&self, node: usize, name: &str) -> impl Iterator<Item = &'a str> {
        let v = self.prop(node, name).unwrap_or(&[]);
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        v.split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .filter_map(|s| core::str::from_utf8(s).ok())
    }

    fn is_compatible(&self, node: usize, with: &[&str]) -> bool {
        // Bytes against bytes: a string that is not UTF-8 can never equal one of
        // `with`, so no decoding is needed (this runs for every node, many times).
        self.nodes[node]
            .compatible
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .any(|c| with.iter().any(|w| w.as_bytes() == c))
    }

    fn enabled(&self, node: usize) -> bool {
        matches!(
            self.prop_str(node, "status"),
            None | Some("okay") | Some("ok")
        )
    }

    fn find_compatible(&self, with: &[&str]) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| self.is_compatible(n, with) && self.enabled(n))
    }

    fn phandle(&self, node: usize) -> Option<u32> {
        self.prop_u32(node, "phandle")
            .or_else(|| self.prop_u32(node, "linux,phandle"))
    }

    fn by_phandle(&self, phandle: u32) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| {
            self.prop_u32(n, "phandle") == Some(phandle)
                || self.prop_u32(n, "linux,phandle") == Some(phandle)
        })
    }

    /// `#address-cells` / `#size-cells` that `node`'s children use (spec defaults 2/1).
    fn cells(&self, node: usize) -> (u32, u32) {
        (
            self.prop_u32(node, "#address-cells").unwrap_or(2),
            self.prop_u32(node, "#size-cells").unwrap_or(1),
        )
    }

    fn path(&self, mut node: usize) -> String {
        let mut parts = Vec::new();
        let mut hops = 0;
        while let Some(p) = self.nodes[node].parent {
            parts.push(self.nodes[node].name);
            node = p;
            hops += 1;
            if hops > MAX_DEPTH {
                break;
            }
        }
        if parts.is_empty() {
            return "/".to_string();
        }
        let mut s = String::new();
        for part in parts.iter().rev() {
            s.push('/');
            s.push_str(part);
        }
        s
    }

    /// Resolves a `/a/b@1` path (unit addresses optional) or an alias name.
    fn resolve(&self, path: &str) -> Option<usize> {
        if !path.starts_with('/') {
            let aliases = self.child_named(0, "aliases")?;
            let target = self.prop_str(aliases, path)?;
            if !target.starts_with('/') {
                return None;
            }
            return self.resolve(target);
        }
        let mut node = 0;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            node = self.child_named(node, part)?;
        }
        Some(node)
    }

    fn child_named(&self, node: usize, name: &str) -> Option<usize> {
        let kids = &self.nodes[node].children;
        kids.iter()
            .copied()
            .find(|&c| self.nodes[c].name == name)
            .or_else(|| {
                if name.contains('@') {
                    return None;
                }
                kids.iter()
                    .copied()
                    .find(|&c| self.nodes[c].name.split('@').next() == Some(name))
            })
    }

    /// `node`'s `reg` entries as CPU physical ranges, translated through every parent
    /// bus's `ranges`. Entries that cannot be expressed (more than two cells, no
    /// translation, overflow) are an error for this node.
    fn reg(&self, node: usize) -> Result<Vec<Range<Hpa>>, HostFdtError> {
        let bad = || HostFdtError::BadProperty {
            node: self.path(node),
            property: "reg",
        };
        let parent = self.nodes[node].parent.ok_or_else(bad)?;
        let (ac, sc) = self.cells(parent);
        if ac == 0 || ac > 2 || sc > 2 {
            return Err(bad());
        }
        let v = self.prop(node, "reg").ok_or_else(bad)?;
        let stride = ((ac + sc) * 4) as usize;
        if v.is_empty() || !v.chunks_exact(stride).remainder().is_empty() {
            return Err(bad());
        }
        let mut out = Vec::new();
        for entry in v.chunks_exact(stride) {
            let addr = read_cells(entry, 0, ac).ok_or_else(bad)?;
            let size = read_cells(entry, ac as usize * 4, sc).ok_or_else(bad)?;
            let addr = self.translate(parent, addr).ok_or_else(bad)?;
            out.push(Range::new(Hpa::new(addr), size).ok_or_else(bad)?);
        }
        Ok(out)
    }

    /// Translates `addr` in `bus`'s child address space up to the root's.
    fn translate(&self, mut bus: usize, mut addr: u64) -> Option<u64> {
        for _ in 0..MAX_TRANSLATE_HOPS {
            let Some(up) = self.nodes[bus].parent else {
                return Some(addr);
            };
            // A missing `ranges` strictly means "not translatable"; real firmware trees
            // omit it on simple buses often enough that identity is the useful reading.
            let ranges = match self.prop(bus, "ranges") {
                None => &[][..],
                Some(r) => r,
            };
            if !ranges.is_empty() {
                let (cac, sc) = self.cells(bus);
                let (pac, _) = self.cells(up);
                if cac == 0 || cac > 2 || pac == 0 || pac > 2 || sc > 2 {
                    return None;
                }
                let stride = ((cac + pac + sc) * 4) as usize;
                let mut hit = None;
                for e in ranges.chunks_exact(stride) {
                    let child = read_cells(e, 0, cac)?;
                    let parent = read_cells(e, cac as usize * 4, pac)?;
                    let size = read_cells(e, (cac + pac) as usize * 4, sc)?;
                    if let Some(off) = addr.checked_sub(child) {
                        if off < size {
                            hit = Some(parent.checked_add(off)?);
                            break;
                        }
                    }
                }
                addr = hit?;
            }
            bus = up;
        }
        None
    }
}

fn read_cells(b: &[u8], at: usize, cells: u32) -> Option<u64> {
    match cells {
        0 => Some(0),
        1 => be32(b, at).map(u64::from),
        2 => be64(b, at),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------

/// Splits an ISA string such as `rv64imafdch_zicsr_zifencei` into lower-case extension
/// names; `g` expands to `i m a f d zicsr zifencei`. Returns an empty list when the
/// string does not start with `rv32`/`rv64`/`rv128`.
pub fn parse_isa_string(isa: &str) -> Vec<String> {
    let lower = isa.to_ascii_lowercase();
    let rest = ["rv128", "rv64", "rv32"]
        .iter()
        .find_map(|p| lower.strip_prefix(p));
    let Some(rest) = rest else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    let mut push = |e: &str| {
        if !e.is_empty() && !out.iter().any(|x| x == e) {
            out.push(e.to_string());
        }
    };
    let mut parts = rest.split('_');
    let singles = parts.next().unwrap_or("").as_bytes();
    let mut i = 0;
    while i < singles.len() {
        let c = char::from(singles[i]);
        i += 1;
        // Skip a version suffix ("2", "2p1"): it carries no capability information,
        // and its 'p' must not be mistaken for the P extension.
        let digits = |i: &mut usize| {
            while *i < singles.len() && singles[*i].is_ascii_digit() {
                *i += 1;
            }
        };
        if i < singles.len() && singles[i].is_ascii_digit() {
            digits(&mut i);
            if i + 1 < singles.len() && singles[i] == b'p' && singles[i + 1].is_ascii_digit() {
                i += 1;
                digits(&mut i);
            }
        }
        if !c.is_ascii_alphabetic() {
            continue;
        }
        if c == 'g' {
            for e in ["i", "m", "a", "f", "d", "zicsr", "zifencei"] {
                push(e);
            }
        } else {
            let mut buf = [0u8; 4];
            push(c.encode_utf8(&mut buf));
        }
    }
    for p in parts {
        push(strip_version(p));
    }
    out
}

/// `zicsr2p0` -> `zicsr`, leaving names that merely end in `p` (`zicbop`) alone.
fn strip_version(ext: &str) -> &str {
    let no_minor = ext.trim_end_matches(|c: char| c.is_ascii_digit());
    if no_minor.len() == ext.len() {
        return ext;
    }
    match no_minor.strip_suffix('p') {
        Some(s) if s.ends_with(|c: char| c.is_ascii_digit()) => {
            s.trim_end_matches(|c: char| c.is_ascii_digit())
        }
        _ => no_minor,
    }
}

impl HostPlatform {
    /// Parses the host device tree. See the module documentation.
    pub fn parse(dtb: &[u8]) -> Result<Self, HostFdtError> {
        let t = Tree::parse(dtb)?;

        let mut memory = Vec::new();
        for n in 0..t.nodes.len() {
            if t.prop_str(n, "device_type") == Some("memory") && t.enabled(n) {
                memory.extend(t.reg(n)?.into_iter().filter(|r| !r.is_empty()));
            }
        }
        if memory.is_empty() {
            return Err(HostFdtError::Missing("memory"));
        }

        let mut reserved = Vec::new();
        for &(addr, size) in &t.reservations {
            reserved.push(
                Range::new(Hpa::new(addr), size)
                    .ok_or(HostFdtError::BadStructure("memory reservation overflows"))?,
            );
        }
        if let Some(rm) = t.child_named(0, "reserved-memory") {
            for &c in &t.nodes[rm].children {
                if t.prop(c, "reg").is_some() {
                    reserved.extend(t.reg(c)?);
                }
            }
        }

        let cpus = t
            .child_named(0, "cpus")
            .ok_or(HostFdtError::Missing("/cpus"))?;
        let mut harts = Vec::new();
        let mut parked_harts = Vec::new();
        let mut timebase = t.prop_int(cpus, "timebase-frequency");
        for &c in &t.nodes[cpus].children {
            if t.prop_str(c, "device_type") != Some("cpu") {
                continue;
            }
            let h = hart(&t, cpus, c)?;
            if h.can_run_guests() {
                harts.push(h);
            } else if parked_harts.len() < MAX_HARTS {
                parked_harts.push(h.hart_id);
            }
            if timebase.is_none() {
                timebase = t.prop_int(c, "timebase-frequency");
            }
        }
        if harts.is_empty() {
            return Err(HostFdtError::Missing("cpu nodes"));
        }
        let timebase_frequency = timebase
            .filter(|&f| f > 0)
            .ok_or(HostFdtError::Missing("timebase-frequency"))?;

        let first_reg = |compat: &[&str]| -> Result<Option<Range<Hpa>>, HostFdtError> {
            match t.find_compatible(compat) {
                Some(n) => Ok(t.reg(n)?.first().copied()),
                None => Ok(None),
            }
        };
        let clint = first_reg(&["riscv,clint0", "sifive,clint0"])?;
        let aclint_mswi = first_reg(&["riscv,aclint-mswi"])?;
        let aclint_mtimer = match t.find_compatible(&["riscv,aclint-mtimer"]) {
            Some(n) => {
                let regs = t.reg(n)?;
                regs.first().map(|&mtimecmp| AclintMtimer {
                    mtimecmp,
                    mtime: regs.get(1).copied(),
                })
            }
            None => None,
        };
        let plic_node = t.find_compatible(PLIC_COMPAT);
        let plic = first_reg(PLIC_COMPAT)?;
        let plic_ndev = plic_node.and_then(|n| t.prop_u32(n, "riscv,ndev"));
        let plic_phandle = plic_node.and_then(|n| t.phandle(n));
        let plic_m_contexts = plic_node.map_or_else(Vec::new, |n| plic_m_contexts(&t, n));
        let uart = uart(&t)?;
        let reset = reset(&t)?;
        let gpio_restart = gpio_restart(&t)?;
        let rng_seed = t
            .child_named(0, "chosen")
            .and_then(|c| t.prop(c, "rng-seed"))
            .map(|seed| seed[..seed.len().min(MAX_RNG_SEED)].to_vec())
            .unwrap_or_default();
        let devices = devices(&t, plic_node, plic_ndev);
        let pmu_events = pmu_events(&t);

        Ok(HostPlatform {
            memory,
            reserved,
            harts,
            parked_harts,
            timebase_frequency,
            clint,
            aclint_mswi,
            aclint_mtimer,
            plic,
            plic_ndev,
            plic_phandle,
            plic_m_contexts,
            uart,
            reset,
            gpio_restart,
            pmu_events,
            rng_seed,
            devices,
        })
    }
}

/// Machine external interrupt, as a hart-local interrupt controller numbers it.
const IRQ_M_EXT: u32 = 11;

/// The PLIC's machine-mode contexts by hart: each `<phandle cause>` pair of its
/// `interrupts-extended` is one context; a pair naming a `riscv,cpu-intc` whose parent
/// `cpu` node has hart ID `h`, with cause 11, is `h`'s machine-mode context. Pairs of
/// any other shape stop the walk (the rest cannot be numbered reliably).
fn plic_m_contexts(t: &Tree<'_>, plic: usize) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    let Some(v) = t.prop(plic, "interrupts-extended") else {
        return out;
    };
    for (context, pair) in v.chunks_exact(8).enumerate() {
        let (Some(phandle), Some(cause)) = (be32(pair, 0), be32(pair, 4)) else {
            break;
        };
        let Some(intc) = t.by_phandle(phandle) else {
            break;
        };
        if t.prop_u32(intc, "#interrupt-cells") != Some(1) {
            break;
        }
        if cause != IRQ_M_EXT {
            continue;
        }
        let hart_id = t.nodes[intc]
            .parent
            .filter(|&cpu| t.prop_str(cpu, "device_type") == Some("cpu"))
            .and_then(|cpu| t.prop_int(cpu, "reg"));
        let (Some(h), Ok(ctx)) = (hart_id, u32::try_from(context)) else {
            continue;
        };
        if out.len() >= MAX_HARTS || out.iter().any(|&(x, _)| x == h as usize) {
            continue;
        }
        out.push((h as usize, ctx));
    }
    out
}

fn hart(t: &Tree<'_>, cpus: usize, c: usize) -> Result<HartInfo, HostFdtError> {
    let bad = |property| HostFdtError::BadProperty {
        node: t.path(c),
        property,
    };
    let (ac, _) = t.cells(cpus);
    let reg = t.prop(c, "reg").ok_or_else(|| bad("reg"))?;
    if reg.len() != ac as usize * 4 {
        return Err(bad("reg"));
    }
    let id = read_cells(reg, 0, ac).ok_or_else(|| bad("reg"))?;
    let hart_id = usize::try_from(id).map_err(|_| bad("reg"))?;

    let isa_prop = t.prop_str(c, "riscv,isa");
    let from_list: Vec<String> = t
        .prop_strs(c, "riscv,isa-extensions")
        .map(|e| e.to_ascii_lowercase())
        .collect();
    let extensions = if !from_list.is_empty() {
        from_list
    } else {
        parse_isa_string(isa_prop.ok_or_else(|| bad("riscv,isa"))?)
    };
    let isa = match isa_prop {
        Some(s) => s.to_string(),
        None => {
            // Rebuild a conventional string so logs and guests see something familiar.
            let base = t.prop_str(c, "riscv,isa-base").unwrap_or("rv64i");
            let mut s = base.trim_end_matches('i').to_string();
            for e in extensions.iter().filter(|e| e.len() == 1) {
                s.push_str(e);
            }
            for e in extensions.iter().filter(|e| e.len() > 1) {
                s.push('_');
                s.push_str(e);
            }
            s
        }
    };
    let singles_have_h = isa_prop
        .map(|s| parse_isa_string(s).iter().any(|e| e == "h"))
        .unwrap_or(false);
    let has_h = singles_have_h || extensions.iter().any(|e| e == "h");
    let cboz_block_size = extensions
        .iter()
        .any(|e| e == "zicboz")
        .then(|| t.prop_u32(c, "riscv,cboz-block-size"))
        .flatten()
        .filter(|b| b.is_power_of_two() && (16..=4096).contains(b));
    Ok(HartInfo {
        hart_id,
        isa,
        has_h,
        extensions,
        enabled: t.enabled(c),
        mmu_type: t.prop_str(c, "mmu-type").map(ToString::to_string),
        cboz_block_size,
    })
}

const UART_COMPAT: &[&str] = &["ns16550a", "ns16550", "ns16450"];

/// The SiFive UART (HiFive Unleashed and later SiFive parts).
const SIFIVE_UART_COMPAT: &[&str] = &["sifive,uart0"];

/// The console UART's node: `/chosen/stdout-path` if it names a UART the hypervisor
/// drives (NS16550 or SiFive), else the first NS16550, else the first SiFive UART.
fn console_node(t: &Tree<'_>) -> Option<usize> {
    let chosen = t.child_named(0, "chosen");
    let from_chosen = chosen
        .and_then(|c| {
            t.prop_str(c, "stdout-path")
                .or_else(|| t.prop_str(c, "linux,stdout-path"))
        })
        // "path:options" (e.g. ":115200n8") names the node before the colon.
        .and_then(|p| t.resolve(p.split(':').next().unwrap_or(p)))
        .filter(|&n| t.is_compatible(n, UART_COMPAT) || t.is_compatible(n, SIFIVE_UART_COMPAT));
    from_chosen
        .or_else(|| t.find_compatible(UART_COMPAT))
        .or_else(|| t.find_compatible(SIFIVE_UART_COMPAT))
}

fn uart(t: &Tree<'_>) -> Result<Option<UartInfo>, HostFdtError> {
    let Some(n) = console_node(t) else {
        return Ok(None);
    };
    let base = t.reg(n)?.first().map(|r| r.start());
    let Some(base) = base else {
        return Ok(None);
    };
    let reg_shift = match t.prop(n, "reg-shift") {
        None => 0,
        Some(_) => t
            .prop_u32(n, "reg-shift")
            .filter(|&s| s < 8)
            .ok_or_else(|| HostFdtError::BadProperty {
                node: t.path(n),
                property: "reg-shift",
            })?,
    };
    let kind = if t.is_compatible(n, UART_COMPAT) {
        UartKind::Ns16550
    } else {
        UartKind::Sifive
    };
    Ok(Some(UartInfo {
        kind,
        base,
        reg_shift,
        clock_hz: t.prop_int(n, "clock-frequency"),
    }))
}

/// The most entries read from each `riscv,pmu` mapping property.
const MAX_PMU_ENTRIES: usize = 64;

/// The `riscv,pmu` node's `riscv,event-to-mhpmcounters` (`<first last counters>`
/// triplets) and `riscv,event-to-mhpmevent` (`<event selector-hi selector-lo>`);
/// a property of the wrong length is ignored.
fn pmu_events(t: &Tree<'_>) -> crate::sbi::pmu::HwEventMap {
    let mut map = crate::sbi::pmu::HwEventMap::default();
    let Some(n) = t.find_compatible(&["riscv,pmu"]) else {
        return map;
    };
    let triplets = |name: &str| -> Vec<[u32; 3]> {
        let Some(p) = t.prop(n, name).filter(|p| p.len() % 12 == 0) else {
            return Vec::new();
        };
        p.chunks_exact(12)
            .take(MAX_PMU_ENTRIES)
            .map(|c| {
                let w = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                [w(0), w(4), w(8)]
            })
            .collect()
    };
    map.ranges = triplets("riscv,event-to-mhpmcounters")
        .into_iter()
        .filter(|[lo, hi, _]| lo <= hi)
        .map(|[lo, hi, counters]| (lo, hi, counters))
        .collect();
    map.selectors = triplets("riscv,event-to-mhpmevent")
        .into_iter()
        .map(|[ev, hi, lo]| (ev, ((hi as u64) << 32) | lo as u64))
        .collect();
    map
}

/// `gpio-restart`'s `gpios = <&controller pin flags>` on a `sifive,gpio0` controller
/// with two GPIO cells; flag bit 0 is `GPIO_ACTIVE_LOW`.
fn gpio_restart(t: &Tree<'_>) -> Result<Option<GpioRestart>, HostFdtError> {
    let Some(n) = t.find_compatible(&["gpio-restart"]) else {
        return Ok(None);
    };
    let bad = || HostFdtError::BadProperty {
        node: t.path(n),
        property: "gpios",
    };
    let cells: Vec<u32> = t
        .prop(n, "gpios")
        .ok_or_else(bad)?
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let &[phandle, pin, flags] = cells.as_slice() else {
        return Err(bad());
    };
    let controller = t.by_phandle(phandle).ok_or_else(bad)?;
    if !t.is_compatible(controller, &["sifive,gpio0"])
        || t.prop_u32(controller, "#gpio-cells") != Some(2)
    {
        return Ok(None);
    }
    if pin >= 32 {
        return Err(bad());
    }
    let base = t
        .reg(controller)?
        .first()
        .map(|r| r.start())
        .ok_or_else(bad)?;
    Ok(Some(GpioRestart {
        base,
        pin,
        active_low: flags & 1 != 0,
    }))
}

fn reset(t: &Tree<'_>) -> Result<Option<SysconReset>, HostFdtError> {
    let mut base: Option<(usize, Hpa)> = None;
    let mut action = |compat: &str| -> Result<Option<SysconWrite>, HostFdtError> {
        let Some(n) = t.find_compatible(&[compat]) else {
            return Ok(None);
        };
        let bad = |property| HostFdtError::BadProperty {
            node: t.path(n),
            property,
        };
        let regmap = t.prop_u32(n, "regmap").ok_or_else(|| bad("regmap"))?;
        let dev = t.by_phandle(regmap).ok_or_else(|| bad("regmap"))?;
        let dev_base = t
            .reg(dev)?
            .first()
            .map(|r| r.start())
            .ok_or_else(|| bad("regmap"))?;
        match base {
            Some((d, _)) if d != dev => return Ok(None),
            _ => base = Some((dev, dev_base)),
        }
        let value = t.prop_u32(n, "value").ok_or_else(|| bad("value"))?;
        let offset = match t.prop(n, "offset") {
            None => 0,
            Some(_) => t.prop_u32(n, "offset").ok_or_else(|| bad("offset"))?,
        };
        Ok(Some(SysconWrite { offset, value }))
    };
    let poweroff = action("syscon-poweroff")?;
    let reboot = action("syscon-reboot")?;
    Ok(base.map(|(_, base)| SysconReset {
        base,
        poweroff,
        reboot,
    }))
}

/// Whether `node` sits where devices may be handed out: a child of `/`, or of an okay
/// `simple-bus` with `ranges` that is itself in such a place.
fn on_device_bus(t: &Tree<'_>, node: usize) -> bool {
    let mut at = node;
    for _ in 0..MAX_DEPTH {
        let Some(parent) = t.nodes[at].parent else {
            return false;
        };
        if parent == 0 {
            return true;
        }
        let usable_bus = t.is_compatible(parent, &["simple-bus"])
            && t.enabled(parent)
            && t.prop(parent, "ranges").is_some();
        if !usable_bus {
            return false;
        }
        at = parent;
    }
    false
}

/// True when property `name` holds a phandle the guest could not resolve, or marks its
/// node as a provider other nodes reference (`#clock-cells`, `#reset-cells`, ...).
fn references_other_nodes(name: &str) -> bool {
    if PHANDLE_PROPERTIES.contains(&name)
        || name.ends_with("-gpios")
        || name.ends_with("-gpio")
        || name.ends_with("-supply")
    {
        return true;
    }
    if let Some(n) = name.strip_prefix("pinctrl-") {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return true;
        }
    }
    name.starts_with('#')
        && name.ends_with("-cells")
        && !matches!(name, "#address-cells" | "#size-cells")
}

/// The PLIC as devices' interrupts must name it.
#[derive(Clone, Copy)]
struct PlicRef {
    /// Its phandle, which the first node carrying it is (so references resolve to it).
    phandle: u32,
    /// `#interrupt-cells`, 1 to 4.
    cells: usize,
    /// `riscv,ndev`, when given.
    ndev: Option<u32>,
}

/// The PLIC sources `node` raises, or `None` when it cannot be handed out: an
/// interrupt goes elsewhere, a specifier is malformed or out of range, or there are
/// more than [`MAX_DEVICE_IRQS`].
fn device_irqs(t: &Tree<'_>, node: usize, plic: Option<PlicRef>) -> Option<Vec<u32>> {
    let ext = t.prop(node, "interrupts-extended");
    let plain = t.prop(node, "interrupts");
    if ext.is_none() && plain.is_none() {
        return Some(Vec::new());
    }
    let plic = plic?;
    let spec = plic.cells * 4;
    let source = |s: u32| {
        let in_range = s != 0 && plic.ndev.is_none_or(|n| s <= n);
        in_range.then_some(s)
    };
    let mut irqs = Vec::new();
    if let Some(v) = ext {
        // <phandle specifier...> entries; every phandle must be the PLIC's, so every
        // specifier is the PLIC's size.
        let entry = 4 + spec;
        if v.is_empty() || v.len() % entry != 0 || v.len() / entry > MAX_DEVICE_IRQS {
            return None;
        }
        for e in v.chunks_exact(entry) {
            if be32(e, 0)? != plic.phandle {
                return None;
            }
            irqs.push(source(be32(e, 4)?)?);
        }
    } else if let Some(v) = plain {
        if interrupt_parent(t, node)? != plic.phandle {
            return None;
        }
        if v.is_empty() || v.len() % spec != 0 || v.len() / spec > MAX_DEVICE_IRQS {
            return None;
        }
        for s in v.chunks_exact(spec) {
            irqs.push(source(be32(s, 0)?)?);
        }
    }
    Some(irqs)
}

/// The phandle `interrupts` refers to: the nearest `interrupt-parent` on the node or
/// its ancestors.
fn interrupt_parent(t: &Tree<'_>, node: usize) -> Option<u32> {
    let mut at = node;
    for _ in 0..=MAX_DEPTH {
        if t.prop(at, "interrupt-parent").is_some() {
            return t.prop_u32(at, "interrupt-parent");
        }
        at = t.nodes[at].parent?;
    }
    None
}

/// See the module documentation, "Devices".
fn devices(t: &Tree<'_>, plic: Option<usize>, ndev: Option<u32>) -> Vec<HostDevice> {
    let console = console_node(t);
    let plic_ref = plic.and_then(|p| {
        let phandle = t.phandle(p).filter(|&ph| t.by_phandle(ph) == Some(p))?;
        let cells = t.prop_u32(p, "#interrupt-cells").unwrap_or(1);
        (1..=4).contains(&cells).then_some(PlicRef {
            phandle,
            cells: cells as usize,
            ndev,
        })
    });
    // The phandles the reset/poweroff actions write through, sorted for lookups (one
    // pass over the tree, however many such nodes a hostile tree has).
    let mut syscon_targets: Vec<u32> = (0..t.nodes.len())
        .filter(|&n| t.is_compatible(n, &["syscon-poweroff", "syscon-reboot"]))
        .filter_map(|n| t.prop_u32(n, "regmap"))
        .collect();
    syscon_targets.sort_unstable();
    let mut out = Vec::new();
    for n in 1..t.nodes.len() {
        if out.len() >= MAX_HOST_DEVICES {
            break;
        }
        let ctx = DeviceContext {
            plic,
            plic_ref,
            console,
            syscon_targets: &syscon_targets,
        };
        if let Some(d) = device(t, n, &ctx) {
            out.push(d);
        }
    }
    out
}

/// What [`device`] needs to know about the rest of the tree.
struct DeviceContext<'s> {
    plic: Option<usize>,
    plic_ref: Option<PlicRef>,
    console: Option<usize>,
    syscon_targets: &'s [u32],
}

/// Node `n` as a [`HostDevice`], if it is one the hypervisor may hand out.
fn device(t: &Tree<'_>, n: usize, ctx: &DeviceContext<'_>) -> Option<HostDevice> {
    let node = &t.nodes[n];
    let reg = t.prop(n, "reg")?;
    if !t.enabled(n) || !on_device_bus(t, n) || t.is_compatible(n, &["simple-bus"]) {
        return None;
    }
    let base_name = node.name.split('@').next().unwrap_or("");
    let own_use = matches!(t.prop_str(n, "device_type"), Some("memory") | Some("cpu"))
        || matches!(base_name, "cpus" | "memory" | "reserved-memory")
        || Some(n) == ctx.plic
        || Some(n) == ctx.console
        || t.prop(n, "interrupt-controller").is_some()
        || t.prop(n, "msi-controller").is_some()
        || t.is_compatible(n, CLINT_COMPAT)
        || t.is_compatible(n, NEVER_COMPAT)
        || ["phandle", "linux,phandle"].iter().any(|p| {
            t.prop_u32(n, p)
                .is_some_and(|ph| ctx.syscon_targets.binary_search(&ph).is_ok())
        });
    if own_use || !valid_node_name(node.name) {
        return None;
    }
    // Every property is checked before anything is copied.
    let mut count = 0;
    let mut bytes = 0usize;
    for &(name, value) in &node.props {
        if references_other_nodes(name) {
            return None;
        }
        if NOT_COPIED.contains(&name) {
            continue;
        }
        count += 1;
        bytes = bytes.saturating_add(device_prop_bytes(name, value));
        if count > MAX_DEVICE_PROPS || bytes > MAX_DEVICE_PROP_BYTES || !valid_property_name(name) {
            return None;
        }
    }
    // Two address and two size cells is the widest entry `reg` accepts.
    if reg.len() > MAX_DEVICE_REGS * 16 {
        return None;
    }
    let regs = t.reg(n).ok()?;
    if regs.len() > MAX_DEVICE_REGS {
        return None;
    }
    let irqs = device_irqs(t, n, ctx.plic_ref)?;
    let compatible: Vec<String> = t.prop_strs(n, "compatible").map(String::from).collect();
    let dma_capable = !compatible
        .first()
        .is_some_and(|c| NO_DMA_COMPATIBLE.contains(&c.as_str()));
    let props = node
        .props
        .iter()
        .filter(|(name, _)| !NOT_COPIED.contains(name))
        .map(|&(name, value)| (name.to_string(), value.to_vec()))
        .collect();
    Some(HostDevice {
        path: t.path(n),
        name: node.name.to_string(),
        compatible,
        regs,
        irqs,
        props,
        dma_capable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static VIRT: &[u8] = include_bytes!("testdata/qemu-virt-smp4.dtb");
    static VIRT_NOH: &[u8] = include_bytes!("testdata/qemu-virt-smp4-noh.dtb");
    static SIFIVE_U: &[u8] = include_bytes!("testdata/qemu-sifive-u-smp5.dtb");

    fn r(start: u64, len: u64) -> Range<Hpa> {
        Range::new(Hpa::new(start), len).unwrap()
    }

    #[test]
    fn parses_qemu_virt() {
        let p = HostPlatform::parse(VIRT).unwrap();
        assert_eq!(p.memory, vec![r(0x8000_0000, 512 << 20)]);
        assert!(p.reserved.is_empty());
        assert_eq!(p.timebase_frequency, 10_000_000);
        assert_eq!(p.harts.len(), 4);
        for (i, h) in p.harts.iter().enumerate() {
            assert_eq!(h.hart_id, i);
            assert!(h.has_h);
            assert!(h.enabled);
            assert!(h.isa.starts_with("rv64imafdch_"));
            assert!(h.has_extension("zicsr") && h.has_extension("sstc"));
            assert_eq!(&h.extensions[..7], &["i", "m", "a", "f", "d", "c", "h"]);
            assert_eq!(h.mmu_type.as_deref(), Some("riscv,sv57"));
            assert_eq!(h.cboz_block_size, Some(64));
        }
        assert_eq!(p.cboz_block_size(), Some(64));
        assert_eq!(p.clint, Some(r(0x200_0000, 0x1_0000)));
        assert_eq!(p.aclint_mswi, None);
        assert_eq!(p.aclint_mtimer, None);
        assert_eq!(p.plic, Some(r(0xc00_0000, 0x60_0000)));
        // QEMU virt: context 2h is hart h's M-mode, 2h + 1 its S-mode.
        assert_eq!(p.plic_m_contexts, vec![(0, 0), (1, 2), (2, 4), (3, 6)]);
        assert_eq!(
            p.uart,
            Some(UartInfo {
                kind: UartKind::Ns16550,
                base: Hpa::new(0x1000_0000),
                reg_shift: 0,
                clock_hz: Some(3_686_400),
            })
        );
        assert_eq!(
            p.reset,
            Some(SysconReset {
                base: Hpa::new(0x10_0000),
                poweroff: Some(SysconWrite {
                    offset: 0,
                    value: 0x5555
                }),
                reboot: Some(SysconWrite {
                    offset: 0,
                    value: 0x7777
                }),
            })
        );
    }

    #[test]
    fn pmu_event_map() {
        let p = HostPlatform::parse(VIRT).unwrap();
        // QEMU virt: cycles on mcycle and hpm 3..18, instructions on minstret and
        // hpm 3..18, the three TLB-miss cache events on hpm 3..18; no selectors.
        assert_eq!(
            p.pmu_events.ranges,
            vec![
                (1, 1, 0x7fff9),
                (2, 2, 0x7fffc),
                (0x10019, 0x10019, 0x7fff8),
                (0x1001b, 0x1001b, 0x7fff8),
                (0x10021, 0x10021, 0x7fff8)
            ]
        );
        assert!(p.pmu_events.selectors.is_empty());
        assert_eq!(p.pmu_events.counters_for(2), 0x7fffc);
        assert_eq!(p.pmu_events.counters_for(3), 0);
        assert_eq!(p.pmu_events.selector(0x10019), 0x10019);
        // The HiFive Unleashed model has no PMU node.
        let s = HostPlatform::parse(SIFIVE_U).unwrap();
        assert_eq!(s.pmu_events, crate::sbi::pmu::HwEventMap::default());
    }

    static VIRT_VIRTIO: &[u8] = include_bytes!("testdata/qemu-virt-smp2-virtio.dtb");

    fn names(p: &HostPlatform) -> Vec<&str> {
        p.devices.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn qemu_virt_devices() {
        let p = HostPlatform::parse(VIRT_VIRTIO).unwrap();
        assert_eq!(p.harts.len(), 2);
        assert_eq!(p.plic_ndev, Some(0x5f));
        assert_eq!(p.plic_phandle, Some(5));
        let mut listed = names(&p);
        listed.sort_unstable();
        let mut want = vec!["flash@20000000", "rtc@101000"];
        let virtio: Vec<String> = (1..=8).map(|i| format!("virtio_mmio@1000{i}000")).collect();
        want.extend(virtio.iter().map(String::as_str));
        want.sort_unstable();
        assert_eq!(listed, want);

        for i in 1..=8u64 {
            let name = format!("virtio_mmio@1000{i}000");
            let d = p.devices.iter().find(|d| d.name == name).unwrap();
            assert_eq!(d.path, format!("/soc/{name}"));
            assert_eq!(d.compatible, ["virtio,mmio"]);
            assert_eq!(d.regs, [r(0x1000_0000 + (i << 12), 0x1000)]);
            assert_eq!(d.irqs, [i as u32]);
            assert!(d.dma_capable);
            let props: Vec<&str> = d.props.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(props, ["reg", "compatible"]);
            assert_eq!(d.props[1].1, b"virtio,mmio\0");
        }
        let rtc = p.devices.iter().find(|d| d.name == "rtc@101000").unwrap();
        assert_eq!(rtc.path, "/soc/rtc@101000");
        assert_eq!(rtc.irqs, [11]);
        assert_eq!(rtc.regs, [r(0x10_1000, 0x1000)]);
        assert_eq!(rtc.compatible, ["google,goldfish-rtc"]);
        assert!(!rtc.dma_capable);
        let flash = p
            .devices
            .iter()
            .find(|d| d.name == "flash@20000000")
            .unwrap();
        assert_eq!(flash.path, "/flash@20000000");
        assert!(flash.irqs.is_empty());
        assert_eq!(
            flash.regs,
            [r(0x2000_0000, 0x200_0000), r(0x2200_0000, 0x200_0000)]
        );
        assert_eq!(flash.compatible, ["cfi-flash"]);
        assert!(!flash.dma_capable);
        assert!(flash
            .props
            .iter()
            .any(|(n, v)| n == "bank-width" && v == &[0, 0, 0, 4]));

        // Nothing the hypervisor keeps or must not hand out.
        for d in &p.devices {
            for kept in [
                "serial", "plic", "clint", "test", "fw-cfg", "pci", "memory", "cpus",
            ] {
                assert!(!d.name.starts_with(kept), "{} handed out", d.path);
            }
            for (n, _) in &d.props {
                assert!(!NOT_COPIED.contains(&n.as_str()), "{}: {n}", d.path);
            }
        }
        // The older dump has the same devices.
        assert_eq!(HostPlatform::parse(VIRT).unwrap().devices.len(), 10);
    }

    /// A host tree built with `vm_fdt`: `/` (2/2 cells) with a PLIC (phandle 1, 31
    /// sources), a CLINT-like other interrupt controller (phandle 2), and whatever
    /// `body` adds under `/soc` (2/2 cells, empty ranges).
    fn host_tree(body: impl FnOnce(&mut vm_fdt::FdtWriter)) -> Vec<u8> {
        let mut w = vm_fdt::FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let cpus = w.begin_node("cpus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        w.property_u32("timebase-frequency", 10_000_000).unwrap();
        let cpu = w.begin_node("cpu@0").unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.property_u32("reg", 0).unwrap();
        w.property_string("riscv,isa", "rv64imafdch").unwrap();
        w.property_string("mmu-type", "riscv,sv39").unwrap();
        let intc = w.begin_node("interrupt-controller").unwrap();
        w.property_u32("#interrupt-cells", 1).unwrap();
        w.property_null("interrupt-controller").unwrap();
        w.property_phandle(2).unwrap();
        w.end_node(intc).unwrap();
        w.end_node(cpu).unwrap();
        w.end_node(cpus).unwrap();
        let mem = w.begin_node("memory@80000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x8000_0000, 0x1000_0000])
            .unwrap();
        w.end_node(mem).unwrap();
        let soc = w.begin_node("soc").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_string("compatible", "simple-bus").unwrap();
        w.property_null("ranges").unwrap();
        let plic = w.begin_node("plic@c000000").unwrap();
        w.property_string_list(
            "compatible",
            vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0xc00_0000, 0x60_0000])
            .unwrap();
        w.property_u32("#interrupt-cells", 1).unwrap();
        w.property_null("interrupt-controller").unwrap();
        w.property_u32("riscv,ndev", 31).unwrap();
        w.property_phandle(1).unwrap();
        w.end_node(plic).unwrap();
        body(&mut w);
        w.end_node(soc).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    fn dev(w: &mut vm_fdt::FdtWriter, name: &str, addr: u64, extra: &[(&str, &[u8])]) {
        let n = w.begin_node(name).unwrap();
        if !extra.iter().any(|(k, _)| *k == "compatible") {
            w.property_string("compatible", "acme,widget").unwrap();
        }
        w.property_array_u64("reg", &[addr, 0x1000]).unwrap();
        for (k, v) in extra {
            w.property(k, v).unwrap();
        }
        w.end_node(n).unwrap();
    }

    fn cells(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    #[test]
    fn device_rules() {
        let plic = cells(&[1]);
        let other = cells(&[2]);
        let dtb = host_tree(|w| {
            dev(
                w,
                "ok@1000",
                0x1000,
                &[("interrupt-parent", &plic), ("interrupts", &cells(&[3, 4]))],
            );
            dev(
                w,
                "ext@2000",
                0x2000,
                &[("interrupts-extended", &cells(&[1, 5, 1, 6]))],
            );
            dev(w, "noirq@3000", 0x3000, &[("dma-coherent", &[])]);
            // Interrupts elsewhere, out of range, or with no parent at all.
            dev(
                w,
                "otherintc@4000",
                0x4000,
                &[("interrupt-parent", &other), ("interrupts", &cells(&[3]))],
            );
            dev(
                w,
                "mixed@5000",
                0x5000,
                &[("interrupts-extended", &cells(&[1, 5, 2, 9]))],
            );
            dev(
                w,
                "src0@6000",
                0x6000,
                &[("interrupt-parent", &plic), ("interrupts", &cells(&[0]))],
            );
            dev(
                w,
                "src32@7000",
                0x7000,
                &[("interrupt-parent", &plic), ("interrupts", &cells(&[32]))],
            );
            dev(w, "orphan@8000", 0x8000, &[("interrupts", &cells(&[3]))]);
            // Phandle references and providers.
            dev(w, "clocked@9000", 0x9000, &[("clocks", &plic)]);
            dev(w, "gpio@a000", 0xa000, &[("reset-gpios", &plic)]);
            dev(w, "pins@b000", 0xb000, &[("pinctrl-0", &plic)]);
            dev(w, "clkprov@c000", 0xc000, &[("#clock-cells", &cells(&[0]))]);
            // Disabled, never handed out, or past a cap.
            dev(w, "off@d000", 0xd000, &[("status", b"disabled\0")]);
            dev(
                w,
                "fwcfg@e000",
                0xe000,
                &[("compatible", b"qemu,fw-cfg-mmio\0")],
            );
            let big = [0u8; MAX_DEVICE_PROP_BYTES];
            dev(w, "big@f000", 0xf000, &[("blob", &big)]);
            let many: Vec<u8> = (0..=MAX_DEVICE_IRQS as u32)
                .flat_map(|i| (i % 30 + 1).to_be_bytes())
                .collect();
            dev(
                w,
                "manyirq@10000",
                0x10000,
                &[("interrupt-parent", &plic), ("interrupts", &many)],
            );
            // A nested bus with a translation, one without `ranges`, a non-bus parent.
            let bus = w.begin_node("bus@40000000").unwrap();
            w.property_string("compatible", "simple-bus").unwrap();
            w.property_u32("#address-cells", 1).unwrap();
            w.property_u32("#size-cells", 1).unwrap();
            w.property("ranges", &cells(&[0, 0, 0x4000_0000, 0x10_0000]))
                .unwrap();
            w.property("interrupt-parent", &plic).unwrap();
            let n = w.begin_node("inner@100").unwrap();
            w.property("reg", &cells(&[0x100, 0x10])).unwrap();
            w.property("interrupts", &cells(&[7])).unwrap();
            w.end_node(n).unwrap();
            w.end_node(bus).unwrap();
            let bus = w.begin_node("opaque@50000000").unwrap();
            w.property_string("compatible", "simple-bus").unwrap();
            dev(w, "hidden@50000000", 0x5000_0000, &[]);
            w.end_node(bus).unwrap();
            let parent = w.begin_node("i2c@60000000").unwrap();
            w.property_array_u64("reg", &[0x6000_0000, 0x1000]).unwrap();
            dev(w, "child@61000000", 0x6100_0000, &[]);
            w.end_node(parent).unwrap();
        });
        let p = HostPlatform::parse(&dtb).unwrap();
        assert_eq!(p.plic_ndev, Some(31));
        assert_eq!(p.plic_phandle, Some(1));
        assert_eq!(
            names(&p),
            [
                "ok@1000",
                "ext@2000",
                "noirq@3000",
                "inner@100",
                "i2c@60000000"
            ]
        );
        assert_eq!(p.devices[0].irqs, [3, 4]);
        assert_eq!(p.devices[1].irqs, [5, 6]);
        assert!(p.devices[2].irqs.is_empty());
        assert!(p.devices.iter().all(|d| d.dma_capable));
        let inner = &p.devices[3];
        assert_eq!(inner.path, "/soc/bus@40000000/inner@100");
        assert_eq!(inner.regs, [r(0x4000_0100, 0x10)]);
        assert_eq!(inner.irqs, [7]);
        assert!(inner.compatible.is_empty());
    }

    #[test]
    fn device_count_is_capped() {
        let dtb = host_tree(|w| {
            for i in 0..MAX_HOST_DEVICES as u64 + 10 {
                dev(w, &format!("d@{:x}", i << 12), i << 12, &[]);
            }
        });
        let p = HostPlatform::parse(&dtb).unwrap();
        assert_eq!(p.devices.len(), MAX_HOST_DEVICES);
        assert_eq!(
            p.devices.last().unwrap().name,
            format!("d@{:x}", (MAX_HOST_DEVICES as u64 - 1) << 12)
        );
    }

    /// QEMU's `sifive_u -smp 5` (a HiFive Unleashed): hart 0 is the E51 monitor core
    /// (no S-mode, no MMU), harts 1-4 the U54s (no H); SiFive UARTs; no syscon reset.
    #[test]
    fn parses_qemu_sifive_u() {
        let p = HostPlatform::parse(SIFIVE_U).unwrap();
        let ids: Vec<usize> = p.harts.iter().map(|h| h.hart_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(p.parked_harts, [0]);
        assert!(p.harts.iter().all(|h| !h.has_h && h.can_run_guests()));
        assert_eq!(p.timebase_frequency, 1_000_000);
        assert_eq!(p.memory, [r(0x8000_0000, 0x4000_0000)]);
        assert_eq!(
            p.uart.map(|u| (u.kind, u.base)),
            Some((UartKind::Sifive, Hpa::new(0x1001_0000)))
        );
        assert_eq!(p.clint, Some(r(0x200_0000, 0x1_0000)));
        assert_eq!(p.plic, Some(r(0xc00_0000, 0x400_0000)));
        // Hart 0 has one context (M), the U54s two each (M, S).
        assert_eq!(
            p.plic_m_contexts,
            vec![(0, 0), (1, 1), (2, 3), (3, 5), (4, 7)]
        );
        assert_eq!(p.reset, None);
        assert_eq!(
            p.gpio_restart,
            Some(GpioRestart {
                base: Hpa::new(0x1006_0000),
                pin: 10,
                active_low: true
            })
        );
        // The console UART is the hypervisor's; everything with a clock, reset or
        // other phandle (the second UART, ethernet, SPI, GPIO, PWM, DMA) cannot be
        // described to a guest.
        let names: Vec<&str> = p.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["cache-controller@2010000", "otp@10070000"]);
    }

    /// `gpio-restart` on a SiFive GPIO pin: what is understood, ignored and refused.
    #[test]
    fn gpio_restart_lines() {
        let tree = |compat: &str, gpios: &[u32]| {
            host_tree(|w| {
                let g = w.begin_node("gpio@10060000").unwrap();
                w.property_string("compatible", compat).unwrap();
                w.property_array_u64("reg", &[0x1006_0000, 0x1000]).unwrap();
                w.property_u32("#gpio-cells", 2).unwrap();
                w.property_null("gpio-controller").unwrap();
                w.property_phandle(5).unwrap();
                w.end_node(g).unwrap();
                let r = w.begin_node("gpio-restart").unwrap();
                w.property_string("compatible", "gpio-restart").unwrap();
                w.property_array_u32("gpios", gpios).unwrap();
                w.end_node(r).unwrap();
            })
        };
        let parse = |compat, gpios: &[u32]| HostPlatform::parse(&tree(compat, gpios));
        assert_eq!(
            parse("sifive,gpio0", &[5, 31, 0]).unwrap().gpio_restart,
            Some(GpioRestart {
                base: Hpa::new(0x1006_0000),
                pin: 31,
                active_low: false
            })
        );
        // Another vendor's controller: not driven, not an error.
        assert_eq!(parse("acme,gpio", &[5, 3, 1]).unwrap().gpio_restart, None);
        // A pin the controller cannot have, a dangling phandle, the wrong cell count.
        for bad in [&[5, 32, 1][..], &[9, 3, 1], &[5, 3], &[5, 3, 1, 0]] {
            assert!(
                matches!(
                    parse("sifive,gpio0", bad),
                    Err(HostFdtError::BadProperty {
                        property: "gpios",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_qemu_virt_without_h() {
        let p = HostPlatform::parse(VIRT_NOH).unwrap();
        assert_eq!(p.harts.len(), 4);
        for h in &p.harts {
            assert!(!h.has_h, "{}", h.isa);
            assert!(!h.has_extension("h"));
            assert!(h.isa.starts_with("rv64imafdc_"));
        }
    }

    #[test]
    fn isa_strings() {
        assert_eq!(
            parse_isa_string("rv64gch_Zba_sstc"),
            ["i", "m", "a", "f", "d", "zicsr", "zifencei", "c", "h", "zba", "sstc"]
        );
        assert_eq!(parse_isa_string("rv64i2p1m_zicsr2p0"), ["i", "m", "zicsr"]);
        assert_eq!(
            parse_isa_string("rv64imp_zicbop"),
            ["i", "m", "p", "zicbop"]
        );
        assert!(parse_isa_string("x86").is_empty());
        assert!(parse_isa_string("").is_empty());
    }

    #[test]
    fn bad_headers_are_errors() {
        assert_eq!(HostPlatform::parse(&[]), Err(HostFdtError::Truncated));
        assert_eq!(HostPlatform::parse(&[0; 64]), Err(HostFdtError::BadMagic));
        assert_eq!(
            HostPlatform::parse(&VIRT[..39]),
            Err(HostFdtError::Truncated)
        );
        assert_eq!(
            HostPlatform::parse(&VIRT[..VIRT.len() - 1]),
            Err(HostFdtError::Truncated)
        );
        let mut v = VIRT.to_vec();
        v[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(
            HostPlatform::parse(&v),
            Err(HostFdtError::UnsupportedVersion(16))
        );
        let mut v = VIRT.to_vec();
        v[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(HostPlatform::parse(&v), Err(HostFdtError::BadHeader));
        assert!(!format!("{}", HostFdtError::BadHeader).is_empty());
    }

    proptest! {
        #[test]
        fn truncation_and_mutation_never_panic(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut v = VIRT.to_vec();
            for (at, b) in flips {
                let i = at.index(v.len());
                v[i] = b;
            }
            let _ = HostPlatform::parse(&v);
            let n = cut.index(v.len());
            let _ = HostPlatform::parse(&v[..n]);
            // Keep the declared size consistent with the cut so the parser walks
            // into the truncated structure rather than stopping at the header check.
            if n >= 8 {
                let mut w = v[..n].to_vec();
                w[4..8].copy_from_slice(&(n as u32).to_be_bytes());
                let _ = HostPlatform::parse(&w);
            }
        }

        #[test]
        fn random_bytes_never_panic(mut v in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = HostPlatform::parse(&v);
            if v.len() >= 40 {
                v[0..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
                let n = v.len() as u32;
                v[4..8].copy_from_slice(&n.to_be_bytes());
                v[20..24].copy_from_slice(&17u32.to_be_bytes());
                v[24..28].copy_from_slice(&16u32.to_be_bytes());
                let _ = HostPlatform::parse(&v);
            }
        }
    }
}
