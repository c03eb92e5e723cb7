//! Sv39x4 G-stage (guest-physical to host-physical) page tables, and the
//! [`GuestMemoryMap`] abstraction shared with the PMP fallback.
//!
//! Layout (RISC-V privileged spec, hypervisor extension, "Guest Physical Address
//! Translation"): a 41-bit GPA walked in three levels. The root table is widened by two
//! bits to 2048 entries, so it is 16 KiB and must be 16 KiB aligned; the two lower
//! levels are ordinary 4 KiB, 512-entry tables.
//!
//! Every access to table memory goes through [`TableMemory`], and every table page comes
//! from [`TableFrames`], so this logic runs unchanged over fake memory in host tests and
//! over physical memory in the hypervisor.
//!
//! Policy decisions:
//! - Only 4 KiB leaves are ever created, even for 2 MiB-aligned spans. That keeps
//!   copy-on-write, ballooning and per-page permission changes trivial, at the cost of
//!   page-table pages (charged to the VM via [`GStageTable::table_pages`]).
//! - Leaves always carry U=1 (G-stage accesses are treated as user accesses, so a leaf
//!   without U faults), and A=1/D=1 (hardware is allowed to fault instead of updating
//!   them, and the hypervisor does not track guest dirtiness through these bits).
//! - Intermediate tables are kept after their last leaf is unmapped and only freed by
//!   [`GStageTable::destroy`]. Freeing one while other harts may still hold it in a
//!   page-walk cache (before the caller's HFENCE.GVMA) would let a reused frame be
//!   interpreted as a page table.
//!
//! The caller is responsible for TLB maintenance: after [`GStageTable::unmap_page`],
//! [`GStageTable::set_perms`] or [`GStageTable::destroy`] it must execute HFENCE.GVMA
//! (for the VMID) on every hart that may have run the guest, before reusing the frames.

use bitflags::bitflags;
use core::fmt;

use crate::addr::{Gpa, Hpa, Range, PAGE_SIZE};

mod shared;
pub use shared::WriteOutcome;

/// Width of a guest physical address under Sv39x4.
pub const GPA_BITS: u32 = 41;
/// One past the highest GPA Sv39x4 can map.
pub const GPA_LIMIT: u64 = 1 << GPA_BITS;
/// One past the highest HPA a PTE can hold (44-bit PPN).
pub const HPA_LIMIT: u64 = 1 << 56;
/// Entries in the (widened) root table.
pub const ROOT_ENTRIES: usize = 2048;
/// Pages in the root table (16 KiB), which is also its required alignment in pages.
pub const ROOT_PAGES: usize = 4;
/// Entries in a non-root table.
pub const TABLE_ENTRIES: usize = 512;
/// The `hgatp.MODE` value selecting Sv39x4.
pub const HGATP_MODE_SV39X4: u64 = 8;
/// The largest VMID `hgatp` can hold (14 bits on RV64). Hardware may implement fewer
/// bits (VMIDLEN); the hypervisor must probe that and allocate within it.
pub const MAX_VMID: u16 = 0x3fff;

/// G-stage page-table pages a guest with `ram_pages` of RAM can ever need, wherever its
/// RAM starts: the root ([`ROOT_PAGES`]), one level-1 table per GiB touched and one
/// leaf table per 2 MiB touched, each rounded up plus one for a range that straddles
/// a boundary. Charged when a VM is created, so mapping its RAM (or copying it on
/// write) never needs more.
pub const fn table_pages_for(ram_pages: u64) -> u64 {
    ROOT_PAGES as u64
        + ram_pages.div_ceil(TABLE_ENTRIES as u64 * TABLE_ENTRIES as u64)
        + 1
        + ram_pages.div_ceil(TABLE_ENTRIES as u64)
        + 1
}

// The PTE bits are the same at both stages (the VS-stage walker in `vstage` uses them).
pub(crate) const PTE_V: u64 = 1 << 0;
pub(crate) const PTE_R: u64 = 1 << 1;
pub(crate) const PTE_W: u64 = 1 << 2;
pub(crate) const PTE_X: u64 = 1 << 3;
pub(crate) const PTE_U: u64 = 1 << 4;
pub(crate) const PTE_A: u64 = 1 << 6;
const PTE_D: u64 = 1 << 7;
/// First software (RSW) bit. In an *invalid* level-1 entry it marks a shared leaf
/// table (see the `shared` module): the hardware ignores every bit of an entry with V
/// clear, so the guest faults and the hypervisor finds the table in the PPN field.
const PTE_SHARED: u64 = 1 << 8;
/// Second software bit. In a valid leaf it marks a page its guest may never write (a
/// read-only MAP_CHILD_MEM copy), as opposed to one without W for copy-on-write.
const PTE_READ_ONLY: u64 = 1 << 9;
/// The same second software bit in an *invalid* level-1 entry (without
/// [`PTE_SHARED`]): the 2 MiB region is guest RAM not backed yet (see
/// [`GStageTable::reserve_lazy`]). Its guest faults on the first touch and the
/// hypervisor backs the whole region with zeroed frames the VM was charged for.
const PTE_LAZY: u64 = 1 << 9;
const PTE_PPN_SHIFT: u32 = 10;
const PTE_PPN_MASK: u64 = (1 << 44) - 1;

bitflags! {
    /// Guest access permissions of a G-stage leaf.
    ///
    /// The bit values equal the PTE's R/W/X bits. W without R is reserved by the spec
    /// and refused, as is the empty set (a leaf without R, W or X is a table pointer).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perms: u8 {
        /// Guest may read.
        const R = 1 << 1;
        /// Guest may write.
        const W = 1 << 2;
        /// Guest may execute.
        const X = 1 << 3;
    }
}

impl Perms {
    /// Read, write and execute: ordinary guest RAM.
    pub const RWX: Perms = Perms::R.union(Perms::W).union(Perms::X);

    /// True when the spec allows these bits in a leaf PTE.
    pub fn is_valid_leaf(self) -> bool {
        !self.is_empty() && (self.contains(Perms::R) || !self.contains(Perms::W))
    }

    fn from_pte(pte: u64) -> Perms {
        Perms::from_bits_truncate((pte & (PTE_R | PTE_W | PTE_X)) as u8)
    }
}

/// Reads and writes page-table entries in host memory.
///
/// `table` is the base HPA of a table and `index` the entry number; for the root that
/// spans four pages, `index` runs to [`ROOT_ENTRIES`]. Implementations over real memory
/// should use volatile accesses so the hardware walker sees each store in program order.
pub trait TableMemory {
    /// Reads entry `index` of the table at `table`.
    fn read_pte(&self, table: Hpa, index: usize) -> u64;
    /// Writes entry `index` of the table at `table`.
    fn write_pte(&mut self, table: Hpa, index: usize, pte: u64);
}

/// Supplies and takes back page-table pages.
pub trait TableFrames {
    /// Allocates `pages` (1 or [`ROOT_PAGES`]) contiguous, **zeroed** pages aligned to
    /// `pages * 4 KiB`, or `None` when out of memory or quota.
    fn alloc_table(&mut self, pages: usize) -> Option<Hpa>;
    /// Returns pages obtained from [`alloc_table`](Self::alloc_table).
    fn free_table(&mut self, hpa: Hpa, pages: usize);
}

/// Why a mapping change was refused. On any error, the table is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// A GPA, HPA or length is not 4 KiB aligned.
    Misaligned,
    /// The GPA span reaches beyond the 41-bit Sv39x4 guest physical space.
    GpaOutOfRange,
    /// The HPA does not fit a PTE's physical page number.
    HpaOutOfRange,
    /// Empty permissions, or W without R.
    BadPerms,
    /// Address arithmetic would overflow.
    Overflow,
    /// The page at this GPA is already mapped.
    AlreadyMapped(Gpa),
    /// The page at this GPA is not mapped.
    NotMapped(Gpa),
    /// [`TableFrames`] could not supply a table page.
    OutOfTableFrames,
    /// [`TableFrames`] returned a table page that is not correctly aligned.
    BadTableFrame,
    /// The leaf table covering this GPA is shared after a FORK: it must be made the
    /// table's own first ([`GStageTable::materialize`]).
    SharedTable(Gpa),
    /// No host frame for a copy-on-write copy.
    OutOfRamFrames,
    /// The page is read-only for its guest for good (not copy-on-write).
    ReadOnly(Gpa),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Misaligned => f.write_str("address or length not page aligned"),
            MapError::GpaOutOfRange => f.write_str("guest physical address beyond 41 bits"),
            MapError::HpaOutOfRange => f.write_str("host physical address beyond 56 bits"),
            MapError::BadPerms => f.write_str("invalid permission combination"),
            MapError::Overflow => f.write_str("address arithmetic overflow"),
            MapError::AlreadyMapped(g) => write!(f, "{g} already mapped"),
            MapError::NotMapped(g) => write!(f, "{g} not mapped"),
            MapError::OutOfTableFrames => f.write_str("out of page-table frames"),
            MapError::BadTableFrame => f.write_str("page-table frame misaligned"),
            MapError::SharedTable(g) => write!(f, "leaf table of {g} shared, not yet copied"),
            MapError::OutOfRamFrames => f.write_str("out of host frames for a private copy"),
            MapError::ReadOnly(g) => write!(f, "{g} is read-only"),
        }
    }
}

/// Why a guest buffer cannot be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// `gpa + len` overflows.
    Overflow,
    /// This GPA is not mapped for the guest.
    NotMapped(Gpa),
    /// This GPA is mapped without the permission the access needs.
    NoPermission(Gpa),
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::Overflow => f.write_str("guest buffer wraps the address space"),
            AccessError::NotMapped(g) => write!(f, "{g} not mapped"),
            AccessError::NoPermission(g) => write!(f, "{g} lacks the required permission"),
        }
    }
}

/// A guest's memory isolation, whatever the hardware mechanism: the G-stage table (via
/// [`GStageTable::view`]) or, on harts without the H extension, [`PmpOffsetMap`].
///
/// Hypervisor handlers that touch guest buffers (SBI calls, MMIO emulation) must go
/// through this and nothing else to turn a GPA into an HPA.
pub trait GuestMemoryMap {
    /// The HPA backing `gpa` (including its page offset) and the guest's permissions.
    fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)>;

    /// Splits the guest buffer `[gpa, gpa + len)` into host-physical chunks, merging
    /// physically contiguous pages. Every page must be readable by the guest, and
    /// writable when `need_write`, or the whole request fails: the hypervisor must
    /// never touch memory on a guest's behalf that the guest could not touch itself.
    ///
    /// The result has at most one chunk per page, so callers should bound `len`.
    fn chunks(&self, gpa: Gpa, len: u64, need_write: bool) -> Result<Chunks, AccessError> {
        if len == 0 {
            return Ok(Chunks::new());
        }
        // Within one page (an SBI call's argument structure, a short message): one
        // translation, one chunk, and none of the loop's registers to save.
        if gpa.page_offset() + len <= PAGE_SIZE {
            let hpa = guest_page(self, gpa, need_write)?;
            return Ok(smallvec::smallvec![(hpa, len)]);
        }
        chunks_of_pages(self, gpa, len, need_write)
    }
}

/// The HPA backing `gpa` if the guest may read it (and write it, if `need_write`).
fn guest_page<G: GuestMemoryMap + ?Sized>(
    map: &G,
    gpa: Gpa,
    need_write: bool,
) -> Result<Hpa, AccessError> {
    let (hpa, perms) = map.translate(gpa).ok_or(AccessError::NotMapped(gpa))?;
    if !perms.contains(Perms::R) || (need_write && !perms.contains(Perms::W)) {
        return Err(AccessError::NoPermission(gpa));
    }
    Ok(hpa)
}

/// [`GuestMemoryMap::chunks`] of a buffer over more than one page, page by page.
#[inline(never)]
fn chunks_of_pages<G: GuestMemoryMap + ?Sized>(
    map: &G,
    gpa: Gpa,
    len: u64,
    need_write: bool,
) -> Result<Chunks, AccessError> {
    let mut out = Chunks::new();
    let end = gpa.raw().checked_add(len).ok_or(AccessError::Overflow)?;
    let mut cur = gpa.raw();
    while cur < end {
        // A page ending at 2^64 cannot be represented; `end` then bounds the chunk.
        let page_end = (cur & !(PAGE_SIZE - 1))
            .checked_add(PAGE_SIZE)
            .map_or(end, |e| e.min(end));
        let n = page_end - cur;
        let hpa = guest_page(map, Gpa::new(cur), need_write)?;
        match out.last_mut() {
            Some(last) if last.0.checked_add(last.1) == Some(hpa) => last.1 += n,
            _ => out.push((hpa, n)),
        }
        cur = page_end;
    }
    Ok(out)
}

/// The host chunks backing a guest buffer: `(HPA, length)` pairs, in order. Inline for
/// up to two (any buffer within one page, or straddling two non-contiguous pages, the
/// SBI calls' usual case), so translating one costs no heap allocation.
pub type Chunks = smallvec::SmallVec<[(Hpa, u64); 2]>;

fn pte_table(pte: u64) -> Hpa {
    Hpa::new(((pte >> PTE_PPN_SHIFT) & PTE_PPN_MASK) << 12)
}

fn is_valid(pte: u64) -> bool {
    pte & PTE_V != 0
}

fn is_leaf(pte: u64) -> bool {
    pte & (PTE_R | PTE_W | PTE_X) != 0
}

/// The shared leaf table a level-1 entry points to while invalid, if it does.
fn shared_table(pte: u64) -> Option<Hpa> {
    (!is_valid(pte) && pte & PTE_SHARED != 0).then(|| pte_table(pte))
}

/// An invalid level-1 entry naming the shared leaf table `table`.
fn shared_pte(table: Hpa) -> u64 {
    (table.page_number() << PTE_PPN_SHIFT) | PTE_SHARED
}

/// Whether a level-1 entry marks a region not backed yet.
fn is_lazy(pte: u64) -> bool {
    !is_valid(pte) && pte & (PTE_LAZY | PTE_SHARED) == PTE_LAZY
}

/// Bytes in one lazily backed region: what one level-1 entry covers.
pub const LAZY_REGION: u64 = PAGE_SIZE * TABLE_ENTRIES as u64;

/// Non-leaf PTEs must have U, A and D clear (reserved by the spec for G-stage).
fn table_pte(table: Hpa) -> u64 {
    (table.page_number() << PTE_PPN_SHIFT) | PTE_V
}

fn leaf_pte(hpa: Hpa, perms: Perms) -> u64 {
    (hpa.page_number() << PTE_PPN_SHIFT) | u64::from(perms.bits()) | PTE_V | PTE_U | PTE_A | PTE_D
}

fn indices(gpa: Gpa) -> [usize; 3] {
    let g = gpa.raw();
    [
        ((g >> 30) & 0x7ff) as usize,
        ((g >> 21) & 0x1ff) as usize,
        ((g >> 12) & 0x1ff) as usize,
    ]
}

/// One guest's Sv39x4 G-stage table. See the module documentation.
///
/// The table does not own memory access or frames: each operation borrows a
/// [`TableMemory`] (and a [`TableFrames`] where tables may be allocated or freed).
/// For the same reason it cannot free itself on drop: dropping it without
/// [`destroy`](Self::destroy) leaks its table pages.
#[derive(Debug, PartialEq, Eq)]
pub struct GStageTable {
    root: Hpa,
    table_pages: usize,
}

impl GStageTable {
    /// Allocates an empty table: just the 16 KiB root.
    pub fn new<F: TableFrames>(frames: &mut F) -> Result<Self, MapError> {
        let root = frames
            .alloc_table(ROOT_PAGES)
            .ok_or(MapError::OutOfTableFrames)?;
        if !root.is_aligned(ROOT_PAGES as u64 * PAGE_SIZE) || root.raw() >= HPA_LIMIT {
            frames.free_table(root, ROOT_PAGES);
            return Err(MapError::BadTableFrame);
        }
        Ok(Self {
            root,
            table_pages: ROOT_PAGES,
        })
    }

    /// HPA of the root table.
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// Pages of host memory the table itself occupies (root included), so quotas can
    /// charge a VM for its page tables.
    pub fn table_pages(&self) -> usize {
        self.table_pages
    }

    /// The `hgatp` CSR value selecting this table: MODE=8 (Sv39x4) in bits 63:60, VMID in
    /// bits 57:44, root PPN in bits 43:0. `None` when `vmid` exceeds [`MAX_VMID`]:
    /// silently truncating it would make two VMs share TLB entries.
    pub fn hgatp(&self, vmid: u16) -> Option<u64> {
        if vmid > MAX_VMID {
            return None;
        }
        Some((HGATP_MODE_SV39X4 << 60) | (u64::from(vmid) << 44) | self.root.page_number())
    }

    /// The table of the next level below entry `index` of `table`, if it exists.
    fn next_table<M: TableMemory>(mem: &M, table: Hpa, index: usize) -> Option<Hpa> {
        let pte = mem.read_pte(table, index);
        // Leaves above level 0 are never created here; treat one as "no table" rather
        // than walking into guest data.
        (is_valid(pte) && !is_leaf(pte)).then(|| pte_table(pte))
    }

    /// Marks the 2 MiB region at `region` ([`LAZY_REGION`]-aligned) as guest RAM that
    /// is not backed yet: nothing maps it, no leaf table is allocated, and
    /// [`is_lazy`](Self::is_lazy) says so until the region is mapped (mapping any page
    /// of it replaces the mark, so back all of it at once). Allocates the level-1 table
    /// if missing. The region must be wholly unmapped.
    pub fn reserve_lazy<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        region: Gpa,
    ) -> Result<(), MapError> {
        if !region.is_aligned(LAZY_REGION) {
            return Err(MapError::Misaligned);
        }
        if region.raw() >= GPA_LIMIT {
            return Err(MapError::GpaOutOfRange);
        }
        let [i2, i1, _] = indices(region);
        let e2 = mem.read_pte(self.root, i2);
        if is_valid(e2) && is_leaf(e2) {
            return Err(MapError::AlreadyMapped(region));
        }
        let l1 = match is_valid(e2).then(|| pte_table(e2)) {
            Some(l1) => {
                if mem.read_pte(l1, i1) != 0 {
                    return Err(MapError::AlreadyMapped(region));
                }
                l1
            }
            None => {
                let l1 = Self::alloc_one(frames)?;
                mem.write_pte(self.root, i2, table_pte(l1));
                self.table_pages += 1;
                l1
            }
        };
        mem.write_pte(l1, i1, PTE_LAZY);
        Ok(())
    }

    /// Whether `gpa` lies in a region [`reserve_lazy`](Self::reserve_lazy) marked and
    /// nothing has mapped since.
    pub fn is_lazy<M: TableMemory>(&self, mem: &M, gpa: Gpa) -> bool {
        if gpa.raw() >= GPA_LIMIT {
            return false;
        }
        let [i2, i1, _] = indices(gpa);
        Self::next_table(mem, self.root, i2).is_some_and(|l1| is_lazy(mem.read_pte(l1, i1)))
    }

    /// The level-0 table and index holding `gpa`'s leaf, if the path exists.
    fn leaf_slot<M: TableMemory>(&self, mem: &M, gpa: Gpa) -> Option<(Hpa, usize)> {
        if gpa.raw() >= GPA_LIMIT {
            return None;
        }
        let [i2, i1, i0] = indices(gpa);
        let l1 = Self::next_table(mem, self.root, i2)?;
        let l0 = Self::next_table(mem, l1, i1)?;
        Some((l0, i0))
    }

    fn check_map_args(gpa: Gpa, hpa: Hpa, perms: Perms) -> Result<(), MapError> {
        if !gpa.is_page_aligned() || !hpa.is_page_aligned() {
            return Err(MapError::Misaligned);
        }
        if gpa.raw() >= GPA_LIMIT {
            return Err(MapError::GpaOutOfRange);
        }
        if hpa.raw() >= HPA_LIMIT {
            return Err(MapError::HpaOutOfRange);
        }
        if !perms.is_valid_leaf() {
            return Err(MapError::BadPerms);
        }
        Ok(())
    }

    fn alloc_one<F: TableFrames>(frames: &mut F) -> Result<Hpa, MapError> {
        let t = frames.alloc_table(1).ok_or(MapError::OutOfTableFrames)?;
        if !t.is_page_aligned() || t.raw() >= HPA_LIMIT {
            frames.free_table(t, 1);
            return Err(MapError::BadTableFrame);
        }
        Ok(t)
    }

    /// Maps the 4 KiB guest page at `gpa` to the host page at `hpa`.
    ///
    /// Any missing intermediate tables are allocated up front, so a failure leaves the
    /// table exactly as it was and returns every frame it took.
    pub fn map_page<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        gpa: Gpa,
        hpa: Hpa,
        perms: Perms,
    ) -> Result<(), MapError> {
        Self::check_map_args(gpa, hpa, perms)?;
        let [i2, i1, i0] = indices(gpa);

        let e2 = mem.read_pte(self.root, i2);
        if is_valid(e2) && is_leaf(e2) {
            return Err(MapError::AlreadyMapped(gpa));
        }
        let l1 = is_valid(e2).then(|| pte_table(e2));
        let l0 = match l1 {
            Some(l1) => {
                let e1 = mem.read_pte(l1, i1);
                if is_valid(e1) && is_leaf(e1) {
                    return Err(MapError::AlreadyMapped(gpa));
                }
                if shared_table(e1).is_some() {
                    return Err(MapError::SharedTable(gpa));
                }
                is_valid(e1).then(|| pte_table(e1))
            }
            None => None,
        };
        if let Some(l0) = l0 {
            if is_valid(mem.read_pte(l0, i0)) {
                return Err(MapError::AlreadyMapped(gpa));
            }
        }

        let new_l1 = match l1 {
            Some(_) => None,
            None => Some(Self::alloc_one(frames)?),
        };
        let new_l0 = match l0 {
            Some(_) => None,
            None => match Self::alloc_one(frames) {
                Ok(t) => Some(t),
                Err(e) => {
                    if let Some(t) = new_l1 {
                        frames.free_table(t, 1);
                    }
                    return Err(e);
                }
            },
        };

        // Build bottom-up so a concurrent hardware walk never sees a path to a table
        // that is not yet filled in.
        let l0 = l0.or(new_l0).ok_or(MapError::OutOfTableFrames)?;
        mem.write_pte(l0, i0, leaf_pte(hpa, perms));
        if let Some(t) = new_l0 {
            let l1 = l1.or(new_l1).ok_or(MapError::OutOfTableFrames)?;
            mem.write_pte(l1, i1, table_pte(t));
            self.table_pages += 1;
        }
        if let Some(t) = new_l1 {
            mem.write_pte(self.root, i2, table_pte(t));
            self.table_pages += 1;
        }
        Ok(())
    }

    /// Maps `len` bytes (a multiple of 4 KiB) of guest space at `gpa` to host memory at
    /// `hpa`, page by page.
    ///
    /// All or nothing: if any page fails, the pages this call mapped are unmapped again
    /// (intermediate tables it allocated stay, counted in [`table_pages`](Self::table_pages)).
    pub fn map_range<M: TableMemory, F: TableFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        gpa: Gpa,
        hpa: Hpa,
        len: u64,
        perms: Perms,
    ) -> Result<(), MapError> {
        Self::check_map_args(gpa, hpa, perms)?;
        if len & (PAGE_SIZE - 1) != 0 {
            return Err(MapError::Misaligned);
        }
        let gend = gpa.checked_add(len).ok_or(MapError::Overflow)?;
        let hend = hpa.checked_add(len).ok_or(MapError::Overflow)?;
        if gend.raw() > GPA_LIMIT {
            return Err(MapError::GpaOutOfRange);
        }
        if hend.raw() > HPA_LIMIT {
            return Err(MapError::HpaOutOfRange);
        }
        let mut done = 0;
        let mut failed = None;
        'range: while done < len {
            // In range: both ends were checked above.
            let g = Gpa::new(gpa.raw() + done);
            let h = Hpa::new(hpa.raw() + done);
            // The first page in a leaf table: `map_page` makes whatever tables it needs.
            if let Err(e) = self.map_page(mem, frames, g, h, perms) {
                failed = Some(e);
                break;
            }
            done += PAGE_SIZE;
            // The rest of that leaf table: the walk is known now, one PTE per page
            // (a 2 MiB region costs one walk, not 512).
            let Some((leaf, first)) = self.leaf_slot(mem, g) else {
                continue;
            };
            for i0 in first + 1..TABLE_ENTRIES {
                if done >= len {
                    break 'range;
                }
                if is_valid(mem.read_pte(leaf, i0)) {
                    failed = Some(MapError::AlreadyMapped(Gpa::new(gpa.raw() + done)));
                    break 'range;
                }
                mem.write_pte(leaf, i0, leaf_pte(Hpa::new(hpa.raw() + done), perms));
                done += PAGE_SIZE;
            }
        }
        if let Some(e) = failed {
            let mut undo = 0;
            while undo < done {
                self.unmap_page(mem, Gpa::new(gpa.raw() + undo));
                undo += PAGE_SIZE;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Unmaps the page containing `gpa`, returning the host page it mapped.
    pub fn unmap_page<M: TableMemory>(&mut self, mem: &mut M, gpa: Gpa) -> Option<Hpa> {
        let (l0, i0) = self.leaf_slot(mem, gpa)?;
        let pte = mem.read_pte(l0, i0);
        if !is_valid(pte) {
            return None;
        }
        mem.write_pte(l0, i0, 0);
        Some(pte_table(pte))
    }

    /// The host address backing `gpa` (with its page offset) and the guest's
    /// permissions. This is the only place a GPA becomes an HPA.
    ///
    /// A page under a shared leaf table (after a FORK, until this table takes its own
    /// copy) reads through that table, without W: the guest faults on it, and the data
    /// is what every sharer sees.
    pub fn translate<M: TableMemory>(&self, mem: &M, gpa: Gpa) -> Option<(Hpa, Perms)> {
        if gpa.raw() >= GPA_LIMIT {
            return None;
        }
        let [i2, i1, i0] = indices(gpa);
        let l1 = Self::next_table(mem, self.root, i2)?;
        let e1 = mem.read_pte(l1, i1);
        let (l0, shared) = match shared_table(e1) {
            Some(t) => (t, true),
            None if is_valid(e1) && !is_leaf(e1) => (pte_table(e1), false),
            None => return None,
        };
        let pte = mem.read_pte(l0, i0);
        if !is_valid(pte) || !is_leaf(pte) {
            return None;
        }
        // PPN < 2^44 so the page base is < 2^56: adding an in-page offset cannot overflow.
        let hpa = Hpa::new(pte_table(pte).raw() | gpa.page_offset());
        let mut perms = Perms::from_pte(pte);
        if shared {
            perms.remove(Perms::W);
        }
        Some((hpa, perms))
    }

    /// Changes the permissions of the mapped page containing `gpa` (e.g. clear W for
    /// copy-on-write), returning the old permissions.
    pub fn set_perms<M: TableMemory>(
        &mut self,
        mem: &mut M,
        gpa: Gpa,
        perms: Perms,
    ) -> Result<Perms, MapError> {
        if !perms.is_valid_leaf() {
            return Err(MapError::BadPerms);
        }
        let page = gpa.align_down(PAGE_SIZE);
        let (l0, i0) = self.leaf_slot(mem, page).ok_or(MapError::NotMapped(page))?;
        let pte = mem.read_pte(l0, i0);
        if !is_valid(pte) || !is_leaf(pte) {
            return Err(MapError::NotMapped(page));
        }
        mem.write_pte(l0, i0, leaf_pte(pte_table(pte), perms));
        Ok(Perms::from_pte(pte))
    }

    /// Calls `f(gpa, hpa, perms)` for every mapped page, in ascending GPA order, with
    /// the permissions [`translate`](Self::translate) reports.
    pub fn for_each_leaf<M: TableMemory>(&self, mem: &M, mut f: impl FnMut(Gpa, Hpa, Perms)) {
        for i2 in 0..ROOT_ENTRIES {
            let Some(l1) = Self::next_table(mem, self.root, i2) else {
                continue;
            };
            for i1 in 0..TABLE_ENTRIES {
                let e1 = mem.read_pte(l1, i1);
                let (l0, shared) = match shared_table(e1) {
                    Some(t) => (t, true),
                    None if is_valid(e1) && !is_leaf(e1) => (pte_table(e1), false),
                    None => continue,
                };
                for i0 in 0..TABLE_ENTRIES {
                    let pte = mem.read_pte(l0, i0);
                    if is_valid(pte) && is_leaf(pte) {
                        let gpa = ((i2 as u64) << 30) | ((i1 as u64) << 21) | ((i0 as u64) << 12);
                        let mut perms = Perms::from_pte(pte);
                        if shared {
                            perms.remove(Perms::W);
                        }
                        f(Gpa::new(gpa), pte_table(pte), perms);
                    }
                }
            }
        }
    }

    /// Points the mapped page containing `gpa` at `hpa` with `perms`, returning the host
    /// page it mapped before: one PTE store, so the guest never sees the page unmapped
    /// (copy-on-write gives a VM its private copy this way). The caller must flush the
    /// old translation (HFENCE.GVMA) before reusing the old page.
    pub fn replace_page<M: TableMemory>(
        &mut self,
        mem: &mut M,
        gpa: Gpa,
        hpa: Hpa,
        perms: Perms,
    ) -> Result<Hpa, MapError> {
        let page = gpa.align_down(PAGE_SIZE);
        Self::check_map_args(page, hpa, perms)?;
        let (l0, i0) = self.leaf_slot(mem, page).ok_or(MapError::NotMapped(page))?;
        let pte = mem.read_pte(l0, i0);
        if !is_valid(pte) || !is_leaf(pte) {
            return Err(MapError::NotMapped(page));
        }
        mem.write_pte(l0, i0, leaf_pte(hpa, perms));
        Ok(pte_table(pte))
    }

    /// Frees every table page (root included), returning how many pages were freed.
    /// Only for a table that never took part in a FORK: one that did shares leaf
    /// tables, and must go through [`release`](Self::release).
    ///
    /// The guest RAM the leaves point to is **not** freed: it belongs to the caller,
    /// which should collect it with [`for_each_leaf`](Self::for_each_leaf) first. The
    /// guest must no longer be running anywhere, and stale TLB entries flushed, before
    /// the freed frames are reused.
    pub fn destroy<M: TableMemory, F: TableFrames>(self, mem: &M, frames: &mut F) -> usize {
        let mut freed = 0;
        for i2 in 0..ROOT_ENTRIES {
            let Some(l1) = Self::next_table(mem, self.root, i2) else {
                continue;
            };
            for i1 in 0..TABLE_ENTRIES {
                if let Some(l0) = Self::next_table(mem, l1, i1) {
                    frames.free_table(l0, 1);
                    freed += 1;
                }
            }
            frames.free_table(l1, 1);
            freed += 1;
        }
        frames.free_table(self.root, ROOT_PAGES);
        freed + ROOT_PAGES
    }

    /// Splits the guest buffer `[gpa, gpa + len)` into host chunks; see
    /// [`GuestMemoryMap::chunks`].
    pub fn guest_chunks<M: TableMemory>(
        &self,
        mem: &M,
        gpa: Gpa,
        len: u64,
        need_write: bool,
    ) -> Result<Chunks, AccessError> {
        self.view(mem).chunks(gpa, len, need_write)
    }

    /// This table read through `mem`, as a [`GuestMemoryMap`].
    pub fn view<'a, M: TableMemory>(&'a self, mem: &'a M) -> GStageView<'a, M> {
        GStageView { table: self, mem }
    }
}

/// A [`GStageTable`] paired with the memory it lives in: the G-stage
/// [`GuestMemoryMap`].
pub struct GStageView<'a, M> {
    table: &'a GStageTable,
    mem: &'a M,
}

impl<M: TableMemory> GuestMemoryMap for GStageView<'_, M> {
    fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        self.table.translate(self.mem, gpa)
    }
}

/// The PMP fallback for harts without the H extension: the guest's physical space is
/// one window of host memory at a fixed offset, with full permissions inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmpOffsetMap {
    /// The guest-physical side of the window.
    gpa: Range<Gpa>,
    /// The host-physical side, of the same length.
    hpa: Range<Hpa>,
}

impl PmpOffsetMap {
    /// A window of `len` bytes; `None` when either end overflows, so that
    /// translation never has to.
    pub fn new(gpa_base: Gpa, hpa_base: Hpa, len: u64) -> Option<Self> {
        Some(Self {
            gpa: Range::new(gpa_base, len)?,
            hpa: Range::new(hpa_base, len)?,
        })
    }

    /// The guest-physical side of the window.
    pub fn gpa_range(&self) -> Range<Gpa> {
        self.gpa
    }

    /// The host-physical side of the window: what the PMP entries must cover.
    pub fn hpa_range(&self) -> Range<Hpa> {
        self.hpa
    }
}

impl GuestMemoryMap for PmpOffsetMap {
    fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        let off = gpa.offset_from(self.gpa.start())?;
        if off >= self.gpa.len() {
            return None;
        }
        Some((Hpa::new(self.hpa.start().raw() + off), Perms::RWX))
    }

    fn chunks(&self, gpa: Gpa, len: u64, _need_write: bool) -> Result<Chunks, AccessError> {
        if len == 0 {
            return Ok(Chunks::new());
        }
        gpa.checked_add(len).ok_or(AccessError::Overflow)?;
        if !self.gpa_range().contains_span(gpa, len) {
            // Name the first byte that is outside the window.
            let bad = if self.gpa_range().contains(gpa) {
                self.gpa.end()
            } else {
                gpa
            };
            return Err(AccessError::NotMapped(bad));
        }
        let (hpa, _) = self.translate(gpa).ok_or(AccessError::NotMapped(gpa))?;
        Ok(smallvec::smallvec![(hpa, len)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};
    use std::rc::Rc;

    type Pages = Rc<RefCell<HashMap<u64, [u64; 512]>>>;

    /// Fake host memory holding only table pages: touching anything else panics, which
    /// catches a walker that follows a leaf or garbage as if it were a table.
    #[derive(Clone, Default)]
    pub(super) struct Mem(pub(super) Pages, pub(super) Rc<std::cell::Cell<usize>>);

    fn slot(table: Hpa, index: usize) -> (u64, usize) {
        (table.raw() + (index / 512) as u64 * PAGE_SIZE, index % 512)
    }

    impl TableMemory for Mem {
        fn read_pte(&self, table: Hpa, index: usize) -> u64 {
            let (p, i) = slot(table, index);
            self.0.borrow().get(&p).expect("read of a non-table page")[i]
        }
        fn write_pte(&mut self, table: Hpa, index: usize, pte: u64) {
            self.1.set(self.1.get() + 1);
            let (p, i) = slot(table, index);
            self.0
                .borrow_mut()
                .get_mut(&p)
                .expect("write to a non-table page")[i] = pte;
        }
    }

    /// Bump allocator of zeroed table pages that checks every free matches an allocation.
    pub(super) struct Frames {
        pages: Pages,
        live: HashMap<u64, usize>,
        next: u64,
        pub(super) allocs: usize,
        pub(super) frees: usize,
        pub(super) limit: Option<usize>,
    }

    impl TableFrames for Frames {
        fn alloc_table(&mut self, pages: usize) -> Option<Hpa> {
            if self.limit.is_some_and(|l| self.allocs - self.frees >= l) {
                return None;
            }
            let align = pages as u64 * PAGE_SIZE;
            // Step off alignment first so a root that is aligned proves the allocator
            // was asked for alignment, not lucky.
            self.next += PAGE_SIZE;
            let base = self.next.div_ceil(align) * align;
            self.next = base + align;
            let mut store = self.pages.borrow_mut();
            for p in 0..pages as u64 {
                store.insert(base + p * PAGE_SIZE, [0; 512]);
            }
            self.live.insert(base, pages);
            self.allocs += 1;
            Some(Hpa::new(base))
        }
        fn free_table(&mut self, hpa: Hpa, pages: usize) {
            assert_eq!(self.live.remove(&hpa.raw()), Some(pages), "bad free");
            let mut store = self.pages.borrow_mut();
            for p in 0..pages as u64 {
                store.remove(&(hpa.raw() + p * PAGE_SIZE));
            }
            self.frees += 1;
        }
    }

    pub(super) fn setup() -> (Mem, Frames, GStageTable) {
        let mem = Mem::default();
        let mut frames = Frames {
            pages: mem.0.clone(),
            live: HashMap::new(),
            next: 0x1_0000_0000,
            allocs: 0,
            frees: 0,
            limit: None,
        };
        let t = GStageTable::new(&mut frames).unwrap();
        (mem, frames, t)
    }

    pub(super) fn g(x: u64) -> Gpa {
        Gpa::new(x)
    }
    pub(super) fn h(x: u64) -> Hpa {
        Hpa::new(x)
    }
    const RW: Perms = Perms::R.union(Perms::W);

    #[test]
    fn root_is_16k_aligned_and_hgatp_encodes() {
        let (mem, mut frames, t) = setup();
        assert!(t.root().is_aligned(16 * 1024));
        assert_eq!(t.table_pages(), 4);
        let v = t.hgatp(5).unwrap();
        assert_eq!(v >> 60, 8);
        assert_eq!((v >> 44) & 0x3fff, 5);
        assert_eq!(v & ((1 << 44) - 1), t.root().page_number());
        assert_eq!(t.hgatp(MAX_VMID).map(|v| (v >> 44) & 0x3fff), Some(0x3fff));
        assert_eq!(t.hgatp(MAX_VMID + 1), None);
        assert_eq!(t.destroy(&mem, &mut frames), 4);
        assert_eq!(frames.allocs, frames.frees);
        assert!(mem.0.borrow().is_empty());
    }

    #[test]
    fn misaligned_root_is_refused_and_returned() {
        struct Bad(usize);
        impl TableFrames for Bad {
            fn alloc_table(&mut self, _: usize) -> Option<Hpa> {
                Some(Hpa::new(0x1000))
            }
            fn free_table(&mut self, _: Hpa, _: usize) {
                self.0 += 1;
            }
        }
        let mut b = Bad(0);
        assert_eq!(GStageTable::new(&mut b), Err(MapError::BadTableFrame));
        assert_eq!(b.0, 1);
    }

    #[test]
    fn map_translate_unmap_round_trip() {
        let (mut mem, mut frames, mut t) = setup();
        let gpa = g(0x8020_3000);
        t.map_page(&mut mem, &mut frames, gpa, h(0x9000_0000), RW)
            .unwrap();
        assert_eq!(
            t.translate(&mem, g(0x8020_3abc)),
            Some((h(0x9000_0abc), RW))
        );
        assert_eq!(t.translate(&mem, g(0x8020_4000)), None);
        assert_eq!(t.translate(&mem, g(GPA_LIMIT + 0x8020_3000)), None);
        // Root + one level-1 + one level-0 table.
        assert_eq!(t.table_pages(), 6);
        // The leaf has U, A, D set; the pointers have them clear.
        let [i2, i1, i0] = indices(gpa);
        let e2 = mem.read_pte(t.root(), i2);
        assert_eq!(e2 & 0x3ff, PTE_V);
        let e1 = mem.read_pte(pte_table(e2), i1);
        assert_eq!(e1 & 0x3ff, PTE_V);
        let leaf = mem.read_pte(pte_table(e1), i0);
        assert_eq!(leaf & 0x3ff, PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D);
        assert_eq!(leaf >> 54, 0, "reserved/PBMT/N bits stay clear");

        assert_eq!(t.set_perms(&mut mem, gpa, Perms::R), Ok(RW));
        assert_eq!(t.translate(&mem, gpa), Some((h(0x9000_0000), Perms::R)));
        assert_eq!(
            t.set_perms(&mut mem, g(0x7000), Perms::R),
            Err(MapError::NotMapped(g(0x7000)))
        );
        assert_eq!(
            t.set_perms(&mut mem, gpa, Perms::W),
            Err(MapError::BadPerms)
        );

        assert_eq!(t.unmap_page(&mut mem, gpa), Some(h(0x9000_0000)));
        assert_eq!(t.unmap_page(&mut mem, gpa), None);
        assert_eq!(t.translate(&mem, gpa), None);
        assert_eq!(t.table_pages(), 6, "tables are kept until destroy");
        assert_eq!(t.destroy(&mem, &mut frames), 6);
        assert_eq!(frames.allocs, frames.frees);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let (mut mem, mut frames, mut t) = setup();
        let mut m = |t: &mut GStageTable, gpa: u64, hpa: u64, p: Perms| {
            t.map_page(&mut mem, &mut frames, g(gpa), h(hpa), p)
        };
        assert_eq!(m(&mut t, 0x1001, 0x2000, RW), Err(MapError::Misaligned));
        assert_eq!(m(&mut t, 0x1000, 0x2008, RW), Err(MapError::Misaligned));
        assert_eq!(
            m(&mut t, GPA_LIMIT, 0x2000, RW),
            Err(MapError::GpaOutOfRange)
        );
        assert_eq!(
            m(&mut t, 0x1000, HPA_LIMIT, RW),
            Err(MapError::HpaOutOfRange)
        );
        assert_eq!(
            m(&mut t, 0x1000, 0x2000, Perms::empty()),
            Err(MapError::BadPerms)
        );
        assert_eq!(
            m(&mut t, 0x1000, 0x2000, Perms::W | Perms::X),
            Err(MapError::BadPerms)
        );
        assert_eq!(m(&mut t, 0x1000, 0x2000, Perms::X), Ok(()));
        assert_eq!(
            m(&mut t, 0x1000, 0x3000, RW),
            Err(MapError::AlreadyMapped(g(0x1000)))
        );
        // The highest page of the 41-bit space works (uses root entry 2047).
        assert_eq!(m(&mut t, GPA_LIMIT - PAGE_SIZE, 0x2000, RW), Ok(()));
        assert_eq!(t.translate(&mem, g(GPA_LIMIT - 1)), Some((h(0x2fff), RW)));
        assert_eq!(
            t.map_range(&mut mem, &mut frames, g(0), h(0), 0x1800, RW),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            t.map_range(
                &mut mem,
                &mut frames,
                g(GPA_LIMIT - PAGE_SIZE),
                h(0),
                2 * PAGE_SIZE,
                RW
            ),
            Err(MapError::GpaOutOfRange)
        );
        assert_eq!(
            t.map_range(&mut mem, &mut frames, g(0), h(!0xfff), 2 * PAGE_SIZE, RW),
            Err(MapError::HpaOutOfRange)
        );
    }

    #[test]
    fn out_of_frames_leaves_no_trace() {
        let (mut mem, mut frames, mut t) = setup();
        // Root is live; allow exactly one more table: the level-1 succeeds, level-0 fails.
        frames.limit = Some(2);
        let before = mem.0.borrow().clone();
        assert_eq!(
            t.map_page(&mut mem, &mut frames, g(0x8000_0000), h(0x1000), RW),
            Err(MapError::OutOfTableFrames)
        );
        assert_eq!(
            frames.allocs - frames.frees,
            1,
            "the spare level-1 table was returned"
        );
        assert_eq!(t.table_pages(), 4);
        assert_eq!(*mem.0.borrow(), before, "no entry was written");
        frames.limit = None;
        assert!(t
            .map_page(&mut mem, &mut frames, g(0x8000_0000), h(0x1000), RW)
            .is_ok());
    }

    #[test]
    fn map_range_is_all_or_nothing_and_megapage_free() {
        let (mut mem, mut frames, mut t) = setup();
        // A 2 MiB aligned 2 MiB span still becomes 512 4 KiB leaves in one level-0 table.
        t.map_range(
            &mut mem,
            &mut frames,
            g(0x8000_0000),
            h(0x4000_0000),
            0x20_0000,
            Perms::RWX,
        )
        .unwrap();
        assert_eq!(t.table_pages(), 6);
        let mut leaves = 0;
        t.for_each_leaf(&mem, |gpa, hpa, p| {
            assert_eq!(hpa.raw() - 0x4000_0000, gpa.raw() - 0x8000_0000);
            assert_eq!(p, Perms::RWX);
            leaves += 1;
        });
        assert_eq!(leaves, 512);
        // Runs into the first page of the existing mapping: fails, and the pages it had
        // already mapped below it are gone again.
        assert_eq!(
            t.map_range(
                &mut mem,
                &mut frames,
                g(0x7fff_0000),
                h(0x5000_0000),
                0x20_000,
                RW
            ),
            Err(MapError::AlreadyMapped(g(0x8000_0000)))
        );
        assert_eq!(t.translate(&mem, g(0x7fff_0000)), None);
        assert_eq!(t.translate(&mem, g(0x7fff_f000)), None);
        assert_eq!(
            t.translate(&mem, g(0x8000_0000)).map(|x| x.0),
            Some(h(0x4000_0000))
        );
        let pages = t.table_pages();
        assert_eq!(t.destroy(&mem, &mut frames), pages);
        assert_eq!(frames.allocs, frames.frees);
    }

    proptest! {
        /// `map_range` (one walk per leaf table) gives exactly what mapping the same
        /// pages one by one with `map_page` gives, all or nothing, across leaf-table
        /// boundaries and into pages already mapped.
        #[test]
        fn map_range_matches_page_by_page(
            start in 0u64..1200,
            pages in 1u64..1100,
            taken in proptest::collection::btree_set(0u64..2400, 0..4),
        ) {
            let base = 0x8000_0000u64;
            let (mut m1, mut f1, mut t1) = setup();
            let (mut m2, mut f2, mut t2) = setup();
            for &p in &taken {
                let (gp, hp) = (g(base + p * PAGE_SIZE), h(0x9000_0000 + p * PAGE_SIZE));
                t1.map_page(&mut m1, &mut f1, gp, hp, RW).unwrap();
                t2.map_page(&mut m2, &mut f2, gp, hp, RW).unwrap();
            }
            let gpa = base + start * PAGE_SIZE;
            let hpa = 0x4000_0000u64;
            let got = t1.map_range(&mut m1, &mut f1, g(gpa), h(hpa), pages * PAGE_SIZE, RW);
            let mut want = Ok(());
            for i in 0..pages {
                let gp = g(gpa + i * PAGE_SIZE);
                if let Err(e) = t2.map_page(&mut m2, &mut f2, gp, h(hpa + i * PAGE_SIZE), RW) {
                    for j in 0..i {
                        t2.unmap_page(&mut m2, g(gpa + j * PAGE_SIZE));
                    }
                    want = Err(e);
                    break;
                }
            }
            prop_assert_eq!(got, want);
            for p in 0..2400u64 {
                let gp = g(base + p * PAGE_SIZE);
                prop_assert_eq!(t1.translate(&m1, gp), t2.translate(&m2, gp));
            }
        }
    }

    #[test]
    fn chunks_validate_and_merge() {
        let (mut mem, mut frames, mut t) = setup();
        t.map_range(&mut mem, &mut frames, g(0x1000), h(0x10_0000), 0x2000, RW)
            .unwrap();
        t.map_page(&mut mem, &mut frames, g(0x3000), h(0x50_0000), Perms::R)
            .unwrap();
        assert_eq!(
            t.guest_chunks(&mem, g(0x1800), 0x2000, false),
            Ok(smallvec::smallvec![
                (h(0x10_0800), 0x1800),
                (h(0x50_0000), 0x800)
            ])
        );
        assert_eq!(
            t.guest_chunks(&mem, g(0x1800), 0x2000, true),
            Err(AccessError::NoPermission(g(0x3000)))
        );
        assert_eq!(
            t.guest_chunks(&mem, g(0x3800), 0x1000, false),
            Err(AccessError::NotMapped(g(0x4000)))
        );
        assert_eq!(t.guest_chunks(&mem, g(0x3800), 0, true), Ok(Chunks::new()));
        assert_eq!(
            t.guest_chunks(&mem, g(u64::MAX - 4), 10, false),
            Err(AccessError::Overflow)
        );
        assert_eq!(
            t.guest_chunks(&mem, g(u64::MAX - 4), 4, false),
            Err(AccessError::NotMapped(g(u64::MAX - 4)))
        );
        let dynmap: &dyn GuestMemoryMap = &t.view(&mem);
        assert_eq!(dynmap.translate(g(0x2004)), Some((h(0x10_1004), RW)));
    }

    #[test]
    fn pmp_offset_map_is_bounds_checked() {
        assert_eq!(PmpOffsetMap::new(g(u64::MAX), h(0), 2), None);
        assert_eq!(PmpOffsetMap::new(g(0), h(u64::MAX), 2), None);
        let p = PmpOffsetMap::new(g(0x8000_0000), h(0x1_0000_0000), 0x10_0000).unwrap();
        assert_eq!(
            p.translate(g(0x8000_0010)),
            Some((h(0x1_0000_0010), Perms::RWX))
        );
        assert_eq!(p.translate(g(0x8010_0000)), None);
        assert_eq!(p.translate(g(0x7fff_ffff)), None);
        assert_eq!(
            p.chunks(g(0x800f_f000), 0x1000, true),
            Ok(smallvec::smallvec![(h(0x1_000f_f000), 0x1000)])
        );
        assert_eq!(
            p.chunks(g(0x800f_f000), 0x1001, true),
            Err(AccessError::NotMapped(g(0x8010_0000)))
        );
        assert_eq!(
            p.chunks(g(0x10), 1, false),
            Err(AccessError::NotMapped(g(0x10)))
        );
        assert_eq!(p.chunks(g(u64::MAX), 2, false), Err(AccessError::Overflow));
        assert_eq!(p.hpa_range().end(), h(0x1_0010_0000));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map(u64, u64, u8),
        Unmap(u64),
        Perms(u64, u8),
    }

    /// GPAs chosen to share and split tables at every level, including the top of the
    /// widened root.
    fn gpa_strategy() -> impl Strategy<Value = u64> {
        (
            prop::sample::select(vec![0u64, 1, 2, 2047]),
            prop::sample::select(vec![0u64, 1, 511]),
            prop::sample::select(vec![0u64, 1, 2, 511]),
        )
            .prop_map(|(a, b, c)| (a << 30) | (b << 21) | (c << 12))
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (gpa_strategy(), 0u64..1 << 20, 0u8..16).prop_map(|(g, h, p)| Op::Map(g, h << 12, p)),
            gpa_strategy().prop_map(Op::Unmap),
            (gpa_strategy(), 0u8..16).prop_map(|(g, p)| Op::Perms(g, p)),
        ]
    }

    proptest! {
        #[test]
        fn random_ops_match_a_model(ops in prop::collection::vec(op_strategy(), 1..80)) {
            let (mut mem, mut frames, mut t) = setup();
            let mut model: BTreeMap<u64, (u64, Perms)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Map(gpa, hpa, p) => {
                        let perms = Perms::from_bits_truncate(p << 1);
                        let r = t.map_page(&mut mem, &mut frames, g(gpa), h(hpa), perms);
                        if !perms.is_valid_leaf() {
                            prop_assert_eq!(r, Err(MapError::BadPerms));
                        } else {
                            match model.entry(gpa) {
                                std::collections::btree_map::Entry::Occupied(_) => {
                                    prop_assert_eq!(r, Err(MapError::AlreadyMapped(g(gpa))));
                                }
                                std::collections::btree_map::Entry::Vacant(v) => {
                                    prop_assert_eq!(r, Ok(()));
                                    v.insert((hpa, perms));
                                }
                            }
                        }
                    }
                    Op::Unmap(gpa) => {
                        let r = t.unmap_page(&mut mem, g(gpa));
                        prop_assert_eq!(r, model.remove(&gpa).map(|x| h(x.0)));
                    }
                    Op::Perms(gpa, p) => {
                        let perms = Perms::from_bits_truncate(p << 1);
                        let r = t.set_perms(&mut mem, g(gpa), perms);
                        if !perms.is_valid_leaf() {
                            prop_assert_eq!(r, Err(MapError::BadPerms));
                        } else if let Some(e) = model.get_mut(&gpa) {
                            prop_assert_eq!(r, Ok(e.1));
                            e.1 = perms;
                        } else {
                            prop_assert_eq!(r, Err(MapError::NotMapped(g(gpa))));
                        }
                    }
                }
                prop_assert_eq!(t.table_pages(), frames.live.values().sum::<usize>());
            }
            let mut seen = BTreeMap::new();
            t.for_each_leaf(&mem, |gpa, hpa, p| {
                seen.insert(gpa.raw(), (hpa.raw(), p));
            });
            prop_assert_eq!(&seen, &model);
            for (gpa, (hpa, p)) in &model {
                prop_assert_eq!(t.translate(&mem, g(gpa + 0x123)), Some((h(hpa + 0x123), *p)));
            }
            let pages = t.table_pages();
            prop_assert_eq!(t.destroy(&mem, &mut frames), pages);
            prop_assert_eq!(frames.allocs, frames.frees);
            prop_assert!(mem.0.borrow().is_empty());
        }
    }
}
