//! Turns a guest kernel image (hostile bytes) into a [`LoadPlan`] against the guest's
//! RAM, and places the initrd and device tree near the top of that RAM
//! ([`boot_layout`]).
//!
//! Two formats are understood:
//! - an ELF64 RISC-V executable (`ET_EXEC`): each non-empty `PT_LOAD` segment is loaded
//!   at its `p_paddr`, which is taken as a GPA (Linux's `vmlinux` links at high virtual
//!   addresses with physical load addresses in `p_paddr`); the entry point, a virtual
//!   address, is translated through the executable segment that contains it;
//! - an ELF64 RISC-V position-independent executable (`ET_DYN`): the segments keep
//!   their `p_vaddr` layout, moved as one so the lowest starts at the first address in
//!   RAM aligned to the largest `p_align` (at least a page, at most 2 MiB); relocating
//!   itself is the image's job. This is how an image runs wherever its VM's RAM is: at
//!   GPA 0x8000_0000 under H, at the host address of the VM's block in PMP mode;
//! - a raw RISC-V Linux `Image` (Documentation/arch/riscv/boot-image-header.rst): loaded
//!   at `text_offset` above the first 2 MiB boundary in RAM; rv64 Linux maps itself with
//!   2 MiB pages and so requires a 2 MiB aligned load address.
//!
//! Nothing is copied here: the plan says which file bytes go to which GPA and how much
//! memory after them must be zeroed. Every check that keeps the copy inside the image
//! and inside guest RAM is done here, so the copier can trust the plan.
//!
//! A SPAWN image comes from a guest, so the work and the heap an image can cause are
//! bounded by constants checked before anything proportional to the image is done:
//! only the first [`HEADER_WINDOW`] bytes are parsed (the rest is copied, never read
//! here, so the image can sit in scattered host pages), at most
//! [`MAX_PROGRAM_HEADERS`] program headers are looked at, at most [`MAX_LOAD_SEGMENTS`]
//! of them are kept (the only allocation, a few KiB at most), and the overlap check is
//! a sort and one pass. The `Image` path allocates one segment whatever the header says.

use alloc::vec::Vec;
use core::fmt;

use elf::abi::{ELFCLASS64, EM_RISCV, ET_DYN, ET_EXEC, PF_X, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::Class;
use elf::ElfBytes;

use crate::addr::{Gpa, Range, PAGE_SIZE};

/// Alignment rv64 Linux needs for its load address.
pub const KERNEL_ALIGN: u64 = 2 * 1024 * 1024;
/// Linux `Image` header size.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// The `Image` magic at offset 0x30 (deprecated by Linux, still written).
pub const IMAGE_MAGIC: [u8; 8] = *b"RISCV\0\0\0";
/// The `Image` magic at offset 0x38.
pub const IMAGE_MAGIC2: [u8; 4] = *b"RSC\x05";
/// A generous bound for a generated guest DTB, for callers that must fix the layout
/// before the DTB exists.
pub const DTB_RESERVE: u64 = 64 * 1024;
/// Where RAM allows, [`boot_layout`] puts the device tree on a boundary this aligned,
/// as QEMU's RISC-V loader does; early rv64 Linux maps its boot memory in 2 MiB pages,
/// and the boundary keeps the tree out of any such page the kernel image uses. Linux
/// itself needs only 8 bytes, so small RAM falls back to page alignment.
pub const DTB_ALIGN: u64 = 2 * 1024 * 1024;
/// The most program headers an ELF image may have.
///
/// ELF allows up to 2^32 (through `PN_XNUM`), and each is parsed and checked, so a
/// hostile image could make the hypervisor work for as long as its size allows. Kernels
/// and the test guests have fewer than ten (Linux's `vmlinux` has two to five, plus
/// NOTE and stack headers); 256 leaves room for unusual linker scripts.
pub const MAX_PROGRAM_HEADERS: usize = 256;
/// The most non-empty `PT_LOAD` segments an ELF image may have. Each is kept in the
/// plan (a heap allocation) and copied separately; real kernels have two to five.
pub const MAX_LOAD_SEGMENTS: usize = 64;

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Neither an ELF file nor a RISC-V Linux `Image`.
    UnknownFormat,
    /// The ELF structure is corrupt (the `elf` crate refused it).
    BadElf,
    /// An ELF file that is not 64-bit.
    NotElf64,
    /// An ELF file for another machine.
    NotRiscv,
    /// An ELF file that is not an executable (`ET_EXEC` or `ET_DYN`).
    NotExecutable,
    /// A big-endian `Image`.
    BigEndian,
    /// No non-empty loadable segment.
    NoLoadableSegments,
    /// Segment `n` (index in the program header table): file bytes outside the image.
    SegmentOutsideFile(usize),
    /// Segment `n`: `p_memsz < p_filesz`.
    MemSmallerThanFile(usize),
    /// Segment `n`: address arithmetic overflows.
    Overflow(usize),
    /// Segment `n` does not fit inside guest RAM.
    SegmentOutsideRam(usize),
    /// Segment `n` overlaps a segment earlier in the program header table.
    SegmentOverlap(usize),
    /// The entry point is not inside a loaded executable segment.
    BadEntry,
    /// More than [`MAX_PROGRAM_HEADERS`] program headers (how many there are).
    TooManyProgramHeaders(usize),
    /// More than [`MAX_LOAD_SEGMENTS`] non-empty `PT_LOAD` segments (the index of the
    /// first one past the cap).
    TooManySegments(usize),
    /// The `Image` file is shorter than its header.
    Truncated,
    /// The `Image` load address would not be 2 MiB aligned.
    MisalignedImage,
    /// The `Image` does not fit inside guest RAM.
    ImageOutsideRam,
    /// No room in guest RAM above the kernel for the initrd and device tree.
    NoRoom,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::UnknownFormat => f.write_str("not an ELF or RISC-V Linux Image"),
            LoadError::BadElf => f.write_str("corrupt ELF file"),
            LoadError::NotElf64 => f.write_str("ELF file is not 64-bit"),
            LoadError::NotRiscv => f.write_str("ELF file is not for RISC-V"),
            LoadError::NotExecutable => f.write_str("ELF file is not an executable"),
            LoadError::BigEndian => f.write_str("big-endian Image"),
            LoadError::NoLoadableSegments => f.write_str("no loadable segments"),
            LoadError::SegmentOutsideFile(n) => write!(f, "segment {n} extends past the file"),
            LoadError::MemSmallerThanFile(n) => write!(f, "segment {n} memsz < filesz"),
            LoadError::Overflow(n) => write!(f, "segment {n} address overflow"),
            LoadError::SegmentOutsideRam(n) => write!(f, "segment {n} outside guest RAM"),
            LoadError::SegmentOverlap(n) => write!(f, "segment {n} overlaps another"),
            LoadError::BadEntry => f.write_str("entry point not in a loaded executable segment"),
            LoadError::TooManyProgramHeaders(n) => {
                write!(f, "{n} program headers (at most {MAX_PROGRAM_HEADERS})")
            }
            LoadError::TooManySegments(n) => write!(
                f,
                "segment {n} is past the {MAX_LOAD_SEGMENTS} loadable segments allowed"
            ),
            LoadError::Truncated => f.write_str("Image shorter than its header"),
            LoadError::MisalignedImage => f.write_str("Image load address not 2 MiB aligned"),
            LoadError::ImageOutsideRam => f.write_str("Image does not fit in guest RAM"),
            LoadError::NoRoom => f.write_str("no room for initrd/DTB above the kernel"),
        }
    }
}

/// Which format the image was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// ELF64 RISC-V executable.
    Elf,
    /// Raw RISC-V Linux `Image`.
    LinuxImage,
}

/// One piece of the image to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where it goes in guest physical memory.
    pub gpa: Gpa,
    /// The bytes of the image to copy there (checked to lie inside the image).
    pub file: core::ops::Range<usize>,
    /// Bytes of guest memory the segment occupies, `>= file.len()`; the part past the
    /// file bytes must be zeroed. `[gpa, gpa + mem_size)` is checked to lie in guest RAM.
    pub mem_size: u64,
}

/// How to load an image; every range in it has been validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    /// Format detected.
    pub format: ImageFormat,
    /// What to copy where, in ascending GPA order, non-overlapping.
    pub segments: Vec<Segment>,
    /// Guest physical entry point.
    pub entry: Gpa,
}

impl LoadPlan {
    /// One past the highest guest byte the kernel occupies.
    pub fn end(&self) -> Gpa {
        self.segments
            .iter()
            // Each segment was checked to lie in RAM, so this cannot overflow.
            .map(|s| Gpa::new(s.gpa.raw() + s.mem_size))
            .max()
            .unwrap_or(self.entry)
    }
}

/// Bytes at the start of an image that must hold every header the loader reads: the
/// ELF header and program-header table (256 headers of 56 bytes fit many times over),
/// or the Linux `Image` header. The rest of the image is only copied, never parsed,
/// so an image need not be contiguous in host memory: the hypervisor keeps SPAWN
/// images in pages wherever they are free and parses a copy of this window only.
pub const HEADER_WINDOW: usize = 64 * 1024;

/// Offset and width of the ELF64 header fields that locate the section-header table,
/// which the loader never uses (and which usually lies at the end of the file).
const E_SHOFF: usize = 0x28;
const E_SHNUM: usize = 0x3c;
const E_SHSTRNDX: usize = 0x3e;
const E_PHNUM: usize = 0x38;
const E_PHOFF: usize = 0x20;
const E_PHENTSIZE: usize = 0x36;
/// An ELF64 file header's size.
const EHDR64_SIZE: usize = 64;
/// `e_phnum` value saying the real count (at least this) is in section header 0.
const PN_XNUM: u16 = 0xffff;

/// Parses `image` and plans its loading into guest RAM `ram`.
pub fn plan(image: &[u8], ram: Range<Gpa>) -> Result<LoadPlan, LoadError> {
    let window = &image[..image.len().min(HEADER_WINDOW)];
    plan_window(window, image.len() as u64, ram)
}

/// Plans the loading of an image of `image_len` bytes whose first bytes are `window`
/// (all of them, or at least [`HEADER_WINDOW`]): every header must lie in the window,
/// every segment's file bytes in `[0, image_len)`.
pub fn plan_window(window: &[u8], image_len: u64, ram: Range<Gpa>) -> Result<LoadPlan, LoadError> {
    let window = &window[..window.len().min(HEADER_WINDOW)];
    if window.starts_with(b"\x7fELF") {
        plan_elf(window, image_len, ram)
    } else if window.len() >= IMAGE_HEADER_SIZE
        && (window[0x38..0x3c] == IMAGE_MAGIC2 || window[0x30..0x38] == IMAGE_MAGIC)
    {
        plan_image(window, image_len, ram)
    } else {
        Err(LoadError::UnknownFormat)
    }
}

fn plan_elf(window: &[u8], image_len: u64, ram: Range<Gpa>) -> Result<LoadPlan, LoadError> {
    // Read the class byte ourselves: the elf crate reports 32-bit files as a generic
    // parse error under a fixed endianness, and this one deserves a clear message.
    if window.get(4) != Some(&ELFCLASS64) {
        return Err(LoadError::NotElf64);
    }
    // PN_XNUM means 65,535 headers or more: far past the cap, refused unread.
    if window.get(E_PHNUM..E_PHNUM + 2) == Some(&PN_XNUM.to_le_bytes()[..]) {
        return Err(LoadError::TooManyProgramHeaders(usize::from(PN_XNUM)));
    }
    // The parser would look for the section-header table, which the loader does not
    // use and which may lie outside the window: a copy of the header (bounded by the
    // window) says there is none. Only the file header and the program headers are
    // copied, not the whole window (a copy of 64 KiB per plan otherwise).
    let field = |at: usize, n: usize| {
        window.get(at..at + n).map(|b| {
            b.iter()
                .rev()
                .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
        })
    };
    let headers_end = match (field(E_PHOFF, 8), field(E_PHENTSIZE, 2), field(E_PHNUM, 2)) {
        (Some(off), Some(size), Some(num)) => size
            .checked_mul(num)
            .and_then(|n| off.checked_add(n))
            .and_then(|end| usize::try_from(end).ok())
            .unwrap_or(usize::MAX),
        _ => window.len(),
    };
    let mut head = Vec::from(&window[..headers_end.max(EHDR64_SIZE).min(window.len())]);
    for field in [
        E_SHOFF..E_SHOFF + 8,
        E_SHNUM..E_SHNUM + 2,
        E_SHSTRNDX..E_SHSTRNDX + 2,
    ] {
        if let Some(f) = head.get_mut(field) {
            f.fill(0);
        }
    }
    let image = head.as_slice();
    let file = ElfBytes::<LittleEndian>::minimal_parse(image).map_err(|_| LoadError::BadElf)?;
    if file.ehdr.class != Class::ELF64 {
        return Err(LoadError::NotElf64);
    }
    if file.ehdr.e_machine != EM_RISCV {
        return Err(LoadError::NotRiscv);
    }
    let position_independent = match file.ehdr.e_type {
        ET_EXEC => false,
        ET_DYN => true,
        _ => return Err(LoadError::NotExecutable),
    };
    let table = file.segments().ok_or(LoadError::NoLoadableSegments)?;
    // The table is parsed lazily, so its length is known before any header is read.
    if table.len() > MAX_PROGRAM_HEADERS {
        return Err(LoadError::TooManyProgramHeaders(table.len()));
    }
    let placement = if position_independent {
        Some(Placement::of(table.iter(), ram)?)
    } else {
        None
    };

    // Each segment with its program header index, for error messages.
    let mut segments: Vec<(Segment, usize)> = Vec::new();
    let mut entry = None;
    for (n, ph) in table.iter().enumerate() {
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        if segments.len() >= MAX_LOAD_SEGMENTS {
            return Err(LoadError::TooManySegments(n));
        }
        if ph.p_memsz < ph.p_filesz {
            return Err(LoadError::MemSmallerThanFile(n));
        }
        let fstart = usize::try_from(ph.p_offset).map_err(|_| LoadError::SegmentOutsideFile(n))?;
        let flen = usize::try_from(ph.p_filesz).map_err(|_| LoadError::SegmentOutsideFile(n))?;
        let fend = fstart.checked_add(flen).ok_or(LoadError::Overflow(n))?;
        if fend as u64 > image_len {
            return Err(LoadError::SegmentOutsideFile(n));
        }
        let gpa = match placement {
            // p_vaddr >= placement.from: the lowest p_vaddr rounded down.
            Some(p) => {
                p.to.checked_add(ph.p_vaddr - p.from)
                    .ok_or(LoadError::Overflow(n))?
            }
            None => Gpa::new(ph.p_paddr),
        };
        gpa.checked_add(ph.p_memsz).ok_or(LoadError::Overflow(n))?;
        if !ram.contains_span(gpa, ph.p_memsz) {
            return Err(LoadError::SegmentOutsideRam(n));
        }
        if ph.p_flags & PF_X != 0 && entry.is_none() {
            if let Some(off) = file.ehdr.e_entry.checked_sub(ph.p_vaddr) {
                if off < ph.p_memsz {
                    entry = Some(Gpa::new(gpa.raw() + off));
                }
            }
        }
        segments.push((
            Segment {
                gpa,
                file: fstart..fend,
                mem_size: ph.p_memsz,
            },
            n,
        ));
    }
    if segments.is_empty() {
        return Err(LoadError::NoLoadableSegments);
    }
    // Sorted by start, non-empty segments are pairwise disjoint exactly when each ends
    // at or before the next one starts: O(n log n), where comparing every pair would
    // be quadratic in a count the image chooses.
    segments.sort_unstable_by_key(|(s, n)| (s.gpa, *n));
    for pair in segments.windows(2) {
        let (a, an) = &pair[0];
        let (b, bn) = &pair[1];
        // Checked to lie in RAM above, so this cannot fail; no unchecked sum regardless.
        let a_end = a
            .gpa
            .checked_add(a.mem_size)
            .ok_or(LoadError::Overflow(*an))?;
        if b.gpa < a_end {
            // Named by the later of the two in the program header table.
            return Err(LoadError::SegmentOverlap((*an).max(*bn)));
        }
    }
    let entry = entry.ok_or(LoadError::BadEntry)?;
    // RISC-V instructions are at least 2-byte aligned (C extension).
    if !entry.is_aligned(2) {
        return Err(LoadError::BadEntry);
    }
    Ok(LoadPlan {
        format: ImageFormat::Elf,
        segments: segments.into_iter().map(|(s, _)| s).collect(),
        entry,
    })
}

/// Where a position-independent image goes: `p_vaddr` `from` lands at GPA `to`.
#[derive(Clone, Copy)]
struct Placement {
    from: u64,
    to: Gpa,
}

impl Placement {
    /// The lowest non-empty `PT_LOAD` segment's `p_vaddr`, rounded down to the largest
    /// `p_align` (clamped to a page .. 2 MiB; a value that is not a power of two, which
    /// ELF forbids, counts as a page), goes to the first address in RAM so aligned.
    /// Rounding both sides the same way keeps every segment's offset within its
    /// alignment, which is what `p_align` asks for.
    fn of<'a>(
        headers: impl Iterator<Item = elf::segment::ProgramHeader> + 'a,
        ram: Range<Gpa>,
    ) -> Result<Self, LoadError> {
        let mut lowest: Option<u64> = None;
        let mut align = PAGE_SIZE;
        for ph in headers.filter(|ph| ph.p_type == PT_LOAD && ph.p_memsz != 0) {
            lowest = Some(lowest.map_or(ph.p_vaddr, |l| l.min(ph.p_vaddr)));
            if ph.p_align.is_power_of_two() {
                align = align.max(ph.p_align.min(KERNEL_ALIGN));
            }
        }
        let lowest = lowest.ok_or(LoadError::NoLoadableSegments)?;
        let to = ram
            .start()
            .align_up(align)
            .ok_or(LoadError::SegmentOutsideRam(0))?;
        Ok(Self {
            from: lowest & !(align - 1),
            to,
        })
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn plan_image(image: &[u8], image_len: u64, ram: Range<Gpa>) -> Result<LoadPlan, LoadError> {
    // The caller checked the header is present; keep the check local too.
    if image.len() < IMAGE_HEADER_SIZE {
        return Err(LoadError::Truncated);
    }
    let file_len = usize::try_from(image_len).map_err(|_| LoadError::ImageOutsideRam)?;
    let text_offset = le_u64(image, 0x08);
    let image_size = le_u64(image, 0x10);
    let flags = le_u64(image, 0x18);
    if flags & 1 != 0 {
        return Err(LoadError::BigEndian);
    }
    let base = ram
        .start()
        .align_up(KERNEL_ALIGN)
        .ok_or(LoadError::ImageOutsideRam)?;
    let load = base
        .checked_add(text_offset)
        .ok_or(LoadError::ImageOutsideRam)?;
    if !load.is_aligned(KERNEL_ALIGN) {
        return Err(LoadError::MisalignedImage);
    }
    // Older kernels leave image_size 0; the file length is then the best bound.
    let mem_size = image_size.max(image_len);
    if !ram.contains_span(load, mem_size) {
        return Err(LoadError::ImageOutsideRam);
    }
    Ok(LoadPlan {
        format: ImageFormat::LinuxImage,
        segments: alloc::vec![Segment {
            gpa: load,
            file: 0..file_len,
            mem_size,
        }],
        entry: load,
    })
}

/// Where the boot-time blobs go in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// The initrd, if one was asked for.
    pub initrd: Option<Range<Gpa>>,
    /// The device tree.
    pub dtb: Range<Gpa>,
}

/// Places the device tree and the initrd at the top of guest RAM, above the kernel.
///
/// Layout, from the top: the DTB at the highest [`DTB_ALIGN`]-aligned address where
/// `dtb_len` bytes fit below the end of RAM, then the initrd ending at or just below
/// the DTB's start, its start page aligned. Between the kernel's end
/// ([`LoadPlan::end`]) and the initrd lies all the free RAM there is: a kernel may use
/// the memory right after its image before it has parsed the device tree (early page
/// tables, stacks, an unreserved BSS tail), so nothing is put there, as QEMU's loader
/// keeps the initrd and DTB away from the kernel too. If the 2 MiB aligned DTB leaves
/// no room for the initrd above the kernel, both are placed as high as page alignment
/// allows instead (Linux needs the DTB only 8-byte aligned); if that does not fit
/// either, [`LoadError::NoRoom`]. Nothing is ever placed below the kernel's end, and
/// both ranges lie inside `ram`.
///
/// With RAM above 4 GiB the DTB is above 4 GiB too; rv64 Linux maps it through a
/// fixmap and does not care.
///
/// The layout depends on `dtb_len` only through the room reserved: a caller can fix
/// the layout with [`DTB_RESERVE`], write the initrd range into the DTB, and then check
/// the real DTB fits the reservation.
pub fn boot_layout(
    plan: &LoadPlan,
    ram: Range<Gpa>,
    initrd_len: Option<u64>,
    dtb_len: u64,
) -> Result<BootLayout, LoadError> {
    let floor = plan.end().max(ram.start());
    // The highest `align`-aligned range of `len` bytes ending at or below `top` and
    // starting at or above `floor`.
    let below = |top: Gpa, len: u64, align: u64| -> Option<Range<Gpa>> {
        let start = top.checked_sub(len)?.align_down(align);
        if start < floor {
            return None;
        }
        Range::new(start, len)
    };
    for dtb_align in [DTB_ALIGN, PAGE_SIZE] {
        let Some(dtb) = below(ram.end(), dtb_len, dtb_align) else {
            continue;
        };
        let initrd = match initrd_len {
            Some(len) => match below(dtb.start(), len, PAGE_SIZE) {
                Some(r) => Some(r),
                None => continue,
            },
            None => None,
        };
        return Ok(BootLayout { initrd, dtb });
    }
    Err(LoadError::NoRoom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RAM_BASE: u64 = 0x8000_0000;
    fn ram() -> Range<Gpa> {
        Range::new(Gpa::new(RAM_BASE), 128 << 20).unwrap()
    }

    /// Found by `boot_layout_is_sound`: the initrd fits below the 2 MiB-aligned device
    /// tree only by counting from the kernel's unaligned end, so the layout falls back
    /// to a page-aligned device tree, with everything inside RAM.
    #[test]
    fn initrd_room_counts_from_the_page_after_the_kernel() {
        let ram = Range::new(Gpa::new(RAM_BASE), 3020 * PAGE_SIZE).unwrap();
        let kernel = LoadPlan {
            format: ImageFormat::Elf,
            segments: vec![Segment {
                gpa: Gpa::new(RAM_BASE),
                file: 0..0,
                mem_size: 7_061_505,
            }],
            entry: Gpa::new(RAM_BASE),
        };
        let l = boot_layout(&kernel, ram, Some(3_420_161), 1).unwrap();
        assert_eq!(l.dtb.start(), Gpa::new(ram.end().raw() - PAGE_SIZE));
        let initrd = l.initrd.unwrap();
        assert!(initrd.start() >= kernel.end() && initrd.start().is_page_aligned());
        assert!(initrd.end() <= l.dtb.start());
    }

    /// One program header's fields.
    #[derive(Clone, Copy)]
    struct Ph {
        ty: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    /// Writes a minimal little-endian ELF64 RISC-V executable by hand: header, program
    /// headers, then `body` at offset 0x100 (more than three program headers go after
    /// the body instead).
    fn elf(entry: u64, phs: &[Ph], body: &[u8], machine: u16, etype: u16) -> Vec<u8> {
        let phoff = if phs.len() <= 3 {
            64
        } else {
            0x100 + body.len()
        };
        let mut b = vec![0u8; 0x100];
        b.extend_from_slice(body);
        b.resize(b.len().max(phoff + phs.len() * 56), 0);
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little-endian
        b[6] = 1; // EV_CURRENT
        b[16..18].copy_from_slice(&etype.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(phoff as u64).to_le_bytes()); // e_phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        for (i, p) in phs.iter().enumerate() {
            let o = phoff + i * 56;
            b[o..o + 4].copy_from_slice(&p.ty.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&p.flags.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&p.offset.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            b[o + 24..o + 32].copy_from_slice(&p.paddr.to_le_bytes());
            b[o + 32..o + 40].copy_from_slice(&p.filesz.to_le_bytes());
            b[o + 40..o + 48].copy_from_slice(&p.memsz.to_le_bytes());
            b[o + 48..o + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        }
        b
    }

    fn text() -> Ph {
        Ph {
            ty: PT_LOAD,
            flags: PF_X | 4,
            offset: 0x100,
            vaddr: 0xffff_ffff_8000_0000,
            paddr: RAM_BASE + 0x20_0000,
            filesz: 0x20,
            memsz: 0x20,
        }
    }

    fn data() -> Ph {
        Ph {
            ty: PT_LOAD,
            flags: 6,
            offset: 0x120,
            vaddr: 0xffff_ffff_8000_1000,
            paddr: RAM_BASE + 0x20_1000,
            filesz: 0x20,
            memsz: 0x3000,
        }
    }

    fn good_elf() -> Vec<u8> {
        elf(
            0xffff_ffff_8000_0004,
            &[text(), data()],
            &[0x13; 0x40],
            EM_RISCV,
            ET_EXEC,
        )
    }

    #[test]
    fn elf_plan_uses_paddr_and_translates_entry() {
        let p = plan(&good_elf(), ram()).unwrap();
        assert_eq!(p.format, ImageFormat::Elf);
        assert_eq!(p.entry, Gpa::new(RAM_BASE + 0x20_0004));
        assert_eq!(
            p.segments,
            vec![
                Segment {
                    gpa: Gpa::new(RAM_BASE + 0x20_0000),
                    file: 0x100..0x120,
                    mem_size: 0x20
                },
                Segment {
                    gpa: Gpa::new(RAM_BASE + 0x20_1000),
                    file: 0x120..0x140,
                    mem_size: 0x3000
                },
            ]
        );
        assert_eq!(p.end(), Gpa::new(RAM_BASE + 0x20_4000));
    }

    /// Sets `p_align` of program header `i` in an image from [`elf`] (three headers or
    /// fewer, so the table is at offset 64).
    fn set_align(b: &mut [u8], i: usize, align: u64) {
        let o = 64 + i * 56 + 48;
        b[o..o + 8].copy_from_slice(&align.to_le_bytes());
    }

    /// A static PIE like the test guests': linked at 0x8020_0000, `p_paddr` ignored.
    fn pie(vaddr: u64) -> Vec<u8> {
        let text = Ph {
            vaddr,
            paddr: 0xdead_0000,
            ..text()
        };
        let data = Ph {
            vaddr: vaddr + 0x1000,
            paddr: 0,
            ..data()
        };
        elf(vaddr + 4, &[text, data], &[0x13; 0x40], EM_RISCV, ET_DYN)
    }

    #[test]
    fn position_independent_elf_moves_to_the_start_of_ram() {
        // Under H (RAM at 0x8000_0000) and at a PMP block somewhere else.
        for base in [RAM_BASE, 0x8123_4000, 0x1_0000_0000] {
            let ram = Range::new(Gpa::new(base), 16 << 20).unwrap();
            let p = plan(&pie(0x8020_0000), ram).unwrap();
            assert_eq!(p.entry, Gpa::new(base + 4));
            let at: Vec<_> = p.segments.iter().map(|s| s.gpa.raw()).collect();
            assert_eq!(at, vec![base, base + 0x1000]);
        }
        // Offsets within the alignment are kept; p_align picks the boundary.
        let ram = Range::new(Gpa::new(0x8123_4000), 16 << 20).unwrap();
        let p = plan(&pie(0x10_0800), ram).unwrap();
        assert_eq!(p.segments[0].gpa, Gpa::new(0x8123_4800));
        let mut b = pie(0x10_0000);
        set_align(&mut b, 1, 1 << 16);
        let p = plan(&b, ram).unwrap();
        assert_eq!(p.segments[0].gpa, Gpa::new(0x8124_0000));
        // Larger than 2 MiB counts as 2 MiB; not a power of two counts as a page.
        set_align(&mut b, 1, 1 << 30);
        assert_eq!(
            plan(&b, ram).unwrap().segments[0].gpa,
            Gpa::new(0x8150_0000)
        );
        set_align(&mut b, 1, 0x3000);
        assert_eq!(
            plan(&b, ram).unwrap().segments[0].gpa,
            Gpa::new(0x8123_4000)
        );
    }

    #[test]
    fn position_independent_elf_is_still_checked() {
        let small = Range::new(Gpa::new(RAM_BASE), 0x2000).unwrap();
        assert_eq!(
            plan(&pie(0x8020_0000), small),
            Err(LoadError::SegmentOutsideRam(1))
        );
        // A p_vaddr near the top of the address space: its distance to the lowest
        // segment overflows the GPA.
        let mut b = pie(0);
        let o = 64 + 56 + 16;
        b[o..o + 8].copy_from_slice(&(u64::MAX - 0xfff).to_le_bytes());
        assert_eq!(plan(&b, ram()), Err(LoadError::Overflow(1)));
        // RAM ending at the top of the address space cannot be aligned past.
        let top = Range::new(Gpa::new(u64::MAX - 0x1fff), 0x1000).unwrap();
        let mut b = pie(0);
        set_align(&mut b, 0, 1 << 21);
        assert_eq!(plan(&b, top), Err(LoadError::SegmentOutsideRam(0)));
        // The entry must still be inside the executable segment.
        let mut b = pie(0x8020_0000);
        b[24..32].copy_from_slice(&0x8030_0000u64.to_le_bytes());
        assert_eq!(plan(&b, ram()), Err(LoadError::BadEntry));
    }

    #[test]
    fn elf_errors() {
        let body = [0u8; 0x40];
        let e = |entry: u64, phs: &[Ph]| plan(&elf(entry, phs, &body, EM_RISCV, ET_EXEC), ram());
        let entry = 0xffff_ffff_8000_0000;
        assert_eq!(
            plan(&elf(entry, &[text()], &body, 62, ET_EXEC), ram()),
            Err(LoadError::NotRiscv)
        );
        assert_eq!(
            plan(&elf(entry, &[text()], &body, EM_RISCV, 1), ram()),
            Err(LoadError::NotExecutable)
        );
        let mut c32 = good_elf();
        c32[4] = 1;
        assert_eq!(plan(&c32, ram()), Err(LoadError::NotElf64));
        assert_eq!(plan(&good_elf()[..40], ram()), Err(LoadError::BadElf));
        assert_eq!(e(entry, &[]), Err(LoadError::NoLoadableSegments));
        assert_eq!(
            e(
                entry,
                &[Ph {
                    filesz: 0x1000,
                    ..text()
                }]
            ),
            Err(LoadError::MemSmallerThanFile(0))
        );
        assert_eq!(
            e(
                entry,
                &[Ph {
                    filesz: 0x1000,
                    memsz: 0x1000,
                    ..text()
                }]
            ),
            Err(LoadError::SegmentOutsideFile(0))
        );
        assert_eq!(
            e(
                entry,
                &[Ph {
                    offset: u64::MAX,
                    ..text()
                }]
            ),
            Err(LoadError::Overflow(0))
        );
        assert_eq!(
            e(
                entry,
                &[Ph {
                    paddr: u64::MAX - 4,
                    ..text()
                }]
            ),
            Err(LoadError::Overflow(0))
        );
        assert_eq!(
            e(
                entry,
                &[Ph {
                    paddr: RAM_BASE - 0x10,
                    ..text()
                }]
            ),
            Err(LoadError::SegmentOutsideRam(0))
        );
        assert_eq!(
            e(
                entry,
                &[Ph {
                    paddr: RAM_BASE + (128 << 20) - 0x10,
                    ..text()
                }]
            ),
            Err(LoadError::SegmentOutsideRam(0))
        );
        assert_eq!(
            e(
                entry,
                &[
                    text(),
                    Ph {
                        paddr: RAM_BASE + 0x20_0010,
                        ..data()
                    }
                ]
            ),
            Err(LoadError::SegmentOverlap(1))
        );
        // Entry in a non-executable segment, outside every segment, or misaligned.
        assert_eq!(
            e(0xffff_ffff_8000_1000, &[text(), data()]),
            Err(LoadError::BadEntry)
        );
        assert_eq!(e(0x1234, &[text(), data()]), Err(LoadError::BadEntry));
        assert_eq!(e(entry + 1, &[text()]), Err(LoadError::BadEntry));
        // Non-LOAD and empty segments are ignored.
        let note = Ph { ty: 4, ..text() };
        let empty = Ph {
            memsz: 0,
            filesz: 0,
            ..data()
        };
        assert_eq!(
            e(entry, &[note, empty, text()]).map(|p| p.segments.len()),
            Ok(1)
        );
        assert_eq!(plan(b"hello", ram()), Err(LoadError::UnknownFormat));
    }

    /// An ELF with `count` program headers, the count given through `PN_XNUM` (in
    /// section header 0's `sh_info`) when it does not fit `e_phnum`. Header `i` is a
    /// 16-byte `PT_LOAD` at `RAM_BASE + 0x20_0000 + 16 * i` (the first executable,
    /// holding the entry point) if `i < loads`, a `PT_NOTE` otherwise.
    fn elf_with_headers(count: usize, loads: usize) -> Vec<u8> {
        let shoff = 64 + count * 56;
        let mut b = vec![0u8; shoff + 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_RISCV.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&(RAM_BASE + 0x20_0000).to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        let phnum = u16::try_from(count).unwrap_or(0xffff);
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&1u16.to_le_bytes());
        b[shoff + 44..shoff + 48].copy_from_slice(&(count as u32).to_le_bytes());
        for i in 0..count {
            let o = 64 + i * 56;
            let gpa = RAM_BASE + 0x20_0000 + 16 * i as u64;
            let (ty, flags) = if i < loads {
                (PT_LOAD, 4 | PF_X)
            } else {
                (4, 4)
            };
            b[o..o + 4].copy_from_slice(&ty.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&flags.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&gpa.to_le_bytes());
            b[o + 24..o + 32].copy_from_slice(&gpa.to_le_bytes());
            b[o + 40..o + 48].copy_from_slice(&16u64.to_le_bytes());
        }
        b
    }

    #[test]
    fn only_the_header_window_is_parsed() {
        // One loadable segment whose file bytes, and the section-header table, lie far
        // beyond the window: planned from the window and the length alone, exactly as
        // from the whole image.
        let mut img = elf_with_headers(1, 1);
        let data_at = 3 * HEADER_WINDOW;
        img.resize(data_at + 16, 0xab);
        img[64 + 8..64 + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
        img[64 + 32..64 + 40].copy_from_slice(&16u64.to_le_bytes());
        img[40..48].copy_from_slice(&((data_at - 64) as u64).to_le_bytes());
        let whole = plan(&img, ram()).unwrap();
        assert_eq!(whole.segments[0].file, data_at..data_at + 16);
        let windowed = plan_window(&img[..HEADER_WINDOW], img.len() as u64, ram()).unwrap();
        assert_eq!(windowed, whole);
        // The segment must still lie inside the whole image.
        assert_eq!(
            plan_window(&img[..HEADER_WINDOW], data_at as u64 + 15, ram()),
            Err(LoadError::SegmentOutsideFile(0))
        );
        // Program headers beyond the window are not read: the image is refused.
        let mut far = elf_with_headers(1, 1);
        far.resize(2 * HEADER_WINDOW, 0);
        let ph = far[64..64 + 56].to_vec();
        far[HEADER_WINDOW + 8..HEADER_WINDOW + 8 + 56].copy_from_slice(&ph);
        far[32..40].copy_from_slice(&((HEADER_WINDOW + 8) as u64).to_le_bytes());
        assert_eq!(plan(&far, ram()), Err(LoadError::BadElf));
    }

    #[test]
    fn program_headers_are_capped() {
        // Issue 9: 65,535 program headers through PN_XNUM made the overlap check run
        // for tens of seconds under the VM tree lock. Refused before any is read.
        let xnum = elf_with_headers(0xffff, 0xffff);
        assert_eq!(&xnum[56..58], &[0xff, 0xff]);
        assert_eq!(
            plan(&xnum, ram()),
            Err(LoadError::TooManyProgramHeaders(0xffff))
        );
        assert_eq!(
            plan(&elf_with_headers(MAX_PROGRAM_HEADERS + 1, 1), ram()),
            Err(LoadError::TooManyProgramHeaders(MAX_PROGRAM_HEADERS + 1))
        );
        // At the caps: every header read, every loadable segment kept.
        let p = plan(
            &elf_with_headers(MAX_PROGRAM_HEADERS, MAX_LOAD_SEGMENTS),
            ram(),
        )
        .unwrap();
        assert_eq!(p.segments.len(), MAX_LOAD_SEGMENTS);
        assert_eq!(p.entry, Gpa::new(RAM_BASE + 0x20_0000));
        // One loadable segment more.
        assert_eq!(
            plan(
                &elf_with_headers(MAX_PROGRAM_HEADERS, MAX_LOAD_SEGMENTS + 1),
                ram()
            ),
            Err(LoadError::TooManySegments(MAX_LOAD_SEGMENTS))
        );
        for e in [
            LoadError::TooManyProgramHeaders(7),
            LoadError::TooManySegments(7),
        ] {
            assert!(alloc::format!("{e}").contains('7'));
        }
    }

    #[test]
    fn overlaps_are_found_whatever_the_order() {
        // Overlapping segments far apart in the table, and touching ones (allowed).
        let seg = |paddr: u64, memsz: u64| Ph {
            paddr,
            memsz,
            filesz: 0,
            ..data()
        };
        let body = [0u8; 0x40];
        let entry = 0xffff_ffff_8000_0000;
        let base = RAM_BASE + 0x40_0000;
        let plan_of = |phs: &[Ph]| plan(&elf(entry, phs, &body, EM_RISCV, ET_EXEC), ram());
        let touching = [text(), seg(base + 0x2000, 0x1000), seg(base, 0x2000)];
        assert_eq!(plan_of(&touching).map(|p| p.segments.len()), Ok(3));
        let spans = [
            seg(base + 0x5000, 0x1000),
            seg(base + 0x1000, 0x1000),
            text(),
            seg(base, 0x1000),
            seg(base + 0x3000, 0x3000),
        ];
        assert_eq!(plan_of(&spans), Err(LoadError::SegmentOverlap(4)));
        // A segment inside a larger one that starts at the same address.
        let same = [seg(base, 0x1000), text(), seg(base, 0x3000)];
        assert_eq!(plan_of(&same), Err(LoadError::SegmentOverlap(2)));
    }

    fn image(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(IMAGE_HEADER_SIZE)];
        b[0..4].copy_from_slice(&0x0000_0013u32.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&0x0000_0002u32.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&IMAGE_MAGIC);
        b[0x38..0x3c].copy_from_slice(&IMAGE_MAGIC2);
        b
    }

    #[test]
    fn linux_image_plans() {
        let p = plan(&image(0x20_0000, 0x100_0000, 0x8000), ram()).unwrap();
        assert_eq!(p.format, ImageFormat::LinuxImage);
        assert_eq!(p.entry, Gpa::new(RAM_BASE + 0x20_0000));
        assert_eq!(p.segments[0].file, 0..0x8000);
        assert_eq!(p.segments[0].mem_size, 0x100_0000);
        // text_offset 0 with RAM not 2 MiB aligned: rounded up to the next 2 MiB.
        let odd = Range::new(Gpa::new(RAM_BASE + 0x1000), 64 << 20).unwrap();
        let p = plan(&image(0, 0, 0x9000), odd).unwrap();
        assert_eq!(p.entry, Gpa::new(RAM_BASE + 0x20_0000));
        assert_eq!(p.segments[0].mem_size, 0x9000);
        assert_eq!(
            plan(&image(0x1000, 0, 0x100), ram()),
            Err(LoadError::MisalignedImage)
        );
        assert_eq!(
            plan(&image(0, 1 << 40, 0x100), ram()),
            Err(LoadError::ImageOutsideRam)
        );
        assert_eq!(
            plan(&image(!0x1f_ffff, 0, 0x100), ram()),
            Err(LoadError::ImageOutsideRam)
        );
        let mut be = image(0, 0, 0x100);
        be[0x18] = 1;
        assert_eq!(plan(&be, ram()), Err(LoadError::BigEndian));
        let mut no_magic = image(0, 0, 0x100);
        no_magic[0x30..0x3c].fill(0);
        assert_eq!(plan(&no_magic, ram()), Err(LoadError::UnknownFormat));
    }

    #[test]
    fn boot_layout_uses_the_top_of_ram() {
        // Kernel at RAM + 2 MiB, 16 MiB with its BSS: ends at 0x8120_0000.
        let p = plan(&image(0x20_0000, 0x100_0000, 0x8000), ram()).unwrap();
        assert_eq!(p.end(), Gpa::new(RAM_BASE + 0x120_0000));
        let l = boot_layout(&p, ram(), Some(0x1234), 0x800).unwrap();
        // Issue 9: the initrd started in the first page after the kernel, memory a
        // small kernel uses before it reads the device tree. Now the DTB sits on the
        // last 2 MiB boundary below the top of RAM and the initrd right below it.
        assert_eq!(l.dtb.start(), Gpa::new(RAM_BASE + (128 << 20) - 0x20_0000));
        assert_eq!(l.dtb.len(), 0x800);
        let initrd = l.initrd.unwrap();
        assert_eq!(initrd.start(), Gpa::new(RAM_BASE + (128 << 20) - 0x20_2000));
        assert_eq!(initrd.len(), 0x1234);
        assert!(initrd.end() <= l.dtb.start());
        // The initrd does not move with the DTB size, up to the reservation.
        let l2 = boot_layout(&p, ram(), Some(0x1234), DTB_RESERVE).unwrap();
        assert_eq!(l2.initrd, l.initrd);
        assert_eq!(l2.dtb.start(), l.dtb.start());
        let l3 = boot_layout(&p, ram(), None, 0x800).unwrap();
        assert_eq!((l3.initrd, l3.dtb.start()), (None, l.dtb.start()));

        // An initrd that fits only if the DTB gives up its 2 MiB boundary: both as high
        // as page alignment allows, the initrd reaching down to the kernel's end.
        let page_top = RAM_BASE + (128 << 20) - 0x1000;
        let room = page_top - (RAM_BASE + 0x120_0000);
        let l4 = boot_layout(&p, ram(), Some(room), 0x800).unwrap();
        assert_eq!(l4.dtb.start(), Gpa::new(page_top));
        assert_eq!(l4.initrd.unwrap().start(), p.end());
        // One byte more does not fit above the kernel; it is never put below it.
        for bad in [room + 1, 200 << 20, u64::MAX] {
            assert_eq!(
                boot_layout(&p, ram(), Some(bad), 0x800),
                Err(LoadError::NoRoom)
            );
        }
        assert_eq!(
            boot_layout(&p, ram(), None, u64::MAX),
            Err(LoadError::NoRoom)
        );
        assert_eq!(
            boot_layout(&p, ram(), None, 130 << 20),
            Err(LoadError::NoRoom)
        );

        // RAM smaller than 2 MiB: page alignment, still above the kernel.
        let small = Range::new(Gpa::new(RAM_BASE), 1 << 20).unwrap();
        let tiny = LoadPlan {
            format: ImageFormat::Elf,
            segments: vec![Segment {
                gpa: Gpa::new(RAM_BASE),
                file: 0..0x10,
                mem_size: 0x4321,
            }],
            entry: Gpa::new(RAM_BASE),
        };
        let l5 = boot_layout(&tiny, small, Some(0x3000), DTB_RESERVE).unwrap();
        assert_eq!(l5.dtb.start(), Gpa::new(RAM_BASE + (1 << 20) - DTB_RESERVE));
        assert_eq!(
            l5.initrd.unwrap().start(),
            Gpa::new(RAM_BASE + (1 << 20) - DTB_RESERVE - 0x3000)
        );
        assert_eq!(
            boot_layout(&tiny, small, Some(0x10_0000), DTB_RESERVE),
            Err(LoadError::NoRoom)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = plan(&b, ram());
        }

        /// Whatever the sizes: both blobs inside RAM, above the kernel, apart, aligned as
        /// Linux needs; NoRoom only when even page-aligned packing above the kernel fails.
        #[test]
        fn boot_layout_is_sound(
            ram_pages in 1u64..5000,
            kernel_bytes in 1u64..(20 << 20),
            initrd_len in prop::option::of(0u64..(20 << 20)),
            dtb_len in 1u64..(3 << 20),
        ) {
            let ram = Range::new(Gpa::new(RAM_BASE), ram_pages * PAGE_SIZE).unwrap();
            prop_assume!(kernel_bytes <= ram.len());
            let kernel = LoadPlan {
                format: ImageFormat::Elf,
                segments: vec![Segment {
                    gpa: Gpa::new(RAM_BASE),
                    file: 0..0,
                    mem_size: kernel_bytes,
                }],
                entry: Gpa::new(RAM_BASE),
            };
            let pages = |b: u64| b.div_ceil(PAGE_SIZE);
            let fits = pages(kernel_bytes) + initrd_len.map_or(0, pages) + pages(dtb_len)
                <= ram_pages;
            match boot_layout(&kernel, ram, initrd_len, dtb_len) {
                Ok(l) => {
                    prop_assert!(fits);
                    prop_assert!(ram.contains_span(l.dtb.start(), l.dtb.len()));
                    prop_assert_eq!(l.dtb.len(), dtb_len);
                    prop_assert!(l.dtb.start() >= kernel.end());
                    prop_assert!(l.dtb.start().is_page_aligned());
                    if l.dtb.start().align_down(DTB_ALIGN) != l.dtb.start() {
                        // Page alignment only as the fallback: the 2 MiB one failed.
                        let high = Gpa::new(ram.end().raw() - dtb_len).align_down(DTB_ALIGN);
                        // The initrd starts on a page boundary at or above the kernel's
                        // end, so its room is measured from that end rounded up.
                        let floor = kernel.end().align_up(PAGE_SIZE).unwrap();
                        let initrd_room = high.raw().saturating_sub(floor.raw());
                        prop_assert!(high < kernel.end()
                            || initrd_len.is_some_and(|n| n > initrd_room));
                    }
                    prop_assert_eq!(l.initrd.map(|i| i.len()), initrd_len);
                    if let Some(i) = l.initrd {
                        prop_assert!(i.start() >= kernel.end());
                        prop_assert!(i.start().is_page_aligned());
                        prop_assert!(i.end() <= l.dtb.start());
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e, LoadError::NoRoom);
                    prop_assert!(!fits);
                }
            }
        }

        /// The sorted-neighbour overlap check agrees with comparing every pair.
        #[test]
        fn overlap_check_matches_every_pair(
            spans in prop::collection::vec((0u64..64, 1u64..8), 1..12),
        ) {
            let phs: Vec<Ph> = core::iter::once(text())
                .chain(spans.iter().map(|&(page, pages)| Ph {
                    paddr: RAM_BASE + 0x40_0000 + page * 0x1000,
                    memsz: pages * 0x1000,
                    filesz: 0,
                    ..data()
                }))
                .collect();
            let any_overlap = phs.iter().enumerate().any(|(i, a)| {
                phs[..i]
                    .iter()
                    .any(|b| a.paddr < b.paddr + b.memsz && b.paddr < a.paddr + a.memsz)
            });
            let r = plan(
                &elf(0xffff_ffff_8000_0000, &phs, &[0u8; 0x40], EM_RISCV, ET_EXEC),
                ram(),
            );
            prop_assert_eq!(
                matches!(r, Err(LoadError::SegmentOverlap(_))),
                any_overlap,
                "{:?}",
                r
            );
            if let Ok(p) = r {
                prop_assert!(p.segments.windows(2).all(|w| w[0].gpa < w[1].gpa));
            }
        }

        #[test]
        fn mutated_headers_never_panic_and_plans_stay_in_bounds(
            flips in prop::collection::vec((0usize..0x140, any::<u8>()), 1..12),
            as_image in any::<bool>(),
        ) {
            let mut b = if as_image { image(0x20_0000, 0x4000, 0x200) } else { good_elf() };
            for (at, v) in flips {
                let at = at % b.len();
                b[at] = v;
            }
            if let Ok(p) = plan(&b, ram()) {
                for s in &p.segments {
                    prop_assert!(s.file.end <= b.len());
                    prop_assert!(s.mem_size >= s.file.len() as u64);
                    prop_assert!(ram().contains_span(s.gpa, s.mem_size));
                }
                prop_assert!(p.segments.iter().any(|s| s.gpa <= p.entry
                    && p.entry.raw() < s.gpa.raw() + s.mem_size));
            }
        }
    }
}
