//! Parses the host (firmware-supplied) device tree into a [`HostPlatform`].
//!
//! The blob comes from whatever ran before us, so it is treated as hostile-ish: every
//! offset and length is bounds-checked and bad input yields a [`HostFdtError`], never a
//! panic. That is why this module carries its own small flattened-device-tree reader
//! (Devicetree Specification v0.4, chapter 5) instead of the `fdt` crate, whose 0.1
//! accessors `unwrap`/index on malformed structure.
//!
//! Only what the hypervisor needs is extracted: RAM, reservations, harts and their ISA,
//! the timebase, CLINT/ACLINT, PLIC, the console UART and the syscon reset device.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Hpa, Range};

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Deeper nesting than this is treated as corruption (real trees are < 10 deep).
const MAX_DEPTH: usize = 32;
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
    /// True when the hart lists extension `name` (lower case).
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
    /// Register base.
    pub base: Hpa,
    /// Register stride is `1 << reg_shift` bytes.
    pub reg_shift: u32,
    /// Input clock, when the tree says.
    pub clock_hz: Option<u64>,
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
    /// Harts, in tree order.
    pub harts: Vec<HartInfo>,
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
    /// The console: `/chosen/stdout-path` if it names an NS16550, else the first one.
    pub uart: Option<UartInfo>,
    /// The syscon reset device.
    pub reset: Option<SysconReset>,
    /// Random bytes the firmware passed in `/chosen/rng-seed` (QEMU's `virt` supplies
    /// 32), at most [`MAX_RNG_SEED`] of them; empty if there were none.
    pub rng_seed: Vec<u8>,
}

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
        self.prop_strs(node, "compatible")
            .any(|c| with.contains(&c))
    }

    fn enabled(&self, node: usize) -> bool {
        matches!(
            self.prop_str(node, "status"),
            None | Some("okay") | Some("ok")
        )
    }

    fn find_compatible(&self, with: &[&str]) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| self.enabled(n) && self.is_compatible(n, with))
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
        let mut timebase = t.prop_int(cpus, "timebase-frequency");
        for &c in &t.nodes[cpus].children {
            if t.prop_str(c, "device_type") != Some("cpu") {
                continue;
            }
            harts.push(hart(&t, cpus, c)?);
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
        let plic = first_reg(&["riscv,plic0", "sifive,plic-1.0.0"])?;
        let uart = uart(&t)?;
        let reset = reset(&t)?;
        let rng_seed = t
            .child_named(0, "chosen")
            .and_then(|c| t.prop(c, "rng-seed"))
            .map(|seed| seed[..seed.len().min(MAX_RNG_SEED)].to_vec())
            .unwrap_or_default();

        Ok(HostPlatform {
            memory,
            reserved,
            harts,
            timebase_frequency,
            clint,
            aclint_mswi,
            aclint_mtimer,
            plic,
            uart,
            reset,
            rng_seed,
        })
    }
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

fn uart(t: &Tree<'_>) -> Result<Option<UartInfo>, HostFdtError> {
    let chosen = t.child_named(0, "chosen");
    let from_chosen = chosen
        .and_then(|c| {
            t.prop_str(c, "stdout-path")
                .or_else(|| t.prop_str(c, "linux,stdout-path"))
        })
        // "path:options" (e.g. ":115200n8") names the node before the colon.
        .and_then(|p| t.resolve(p.split(':').next().unwrap_or(p)))
        .filter(|&n| t.is_compatible(n, UART_COMPAT));
    let Some(n) = from_chosen.or_else(|| t.find_compatible(UART_COMPAT)) else {
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
    Ok(Some(UartInfo {
        base,
        reg_shift,
        clock_hz: t.prop_int(n, "clock-frequency"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static VIRT: &[u8] = include_bytes!("testdata/qemu-virt-smp4.dtb");
    static VIRT_NOH: &[u8] = include_bytes!("testdata/qemu-virt-smp4-noh.dtb");

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
        assert_eq!(
            p.uart,
            Some(UartInfo {
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
