//! Guest kernel images (`diosix_core::loader::plan`, then `boot_layout`): ELF64 RISC-V
//! executables and raw Linux `Image`s, against a guest RAM range that is itself part
//! of the input.
//!
//! Input: a 40-byte parameter block — RAM start, RAM length, initrd length, DTB length
//! (u64 each), flags (u32; bit 0: an initrd is asked for), a window cut (u32) — then
//! the image. A non-zero cut also plans the image through `plan_window` from only its
//! first `cut % (len + 1)` bytes, as the hypervisor does with an image that is not
//! contiguous in host memory: with at least `HEADER_WINDOW` bytes (or all of them) the
//! plan must be the same; with fewer it must still be safe.

use diosix_core::addr::{Gpa, Range, PAGE_SIZE};
use diosix_core::loader::{
    boot_layout, plan, plan_window, ImageFormat, LoadPlan, DTB_RESERVE, HEADER_WINDOW, IMAGE_MAGIC,
    IMAGE_MAGIC2, KERNEL_ALIGN, MAX_LOAD_SEGMENTS, MAX_PROGRAM_HEADERS,
};

use super::{label, le32, le64, mix, put32, put64, ram_len, ram_start, Target};
use crate::mutate::{read, Field};
use crate::rng::Rng;

/// Size of the parameter block before the image.
pub const PARAMS: usize = 40;

/// ELF64 executables.
pub struct Elf;
/// Raw RISC-V Linux `Image`s.
pub struct Image;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const EM_RISCV: u16 = 243;
const ET_EXEC: u16 = 2;
const PN_XNUM: u16 = 0xffff;

/// One program header.
#[derive(Clone, Copy, Debug)]
pub struct Ph {
    /// `p_type`.
    pub ty: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
}

/// A little-endian ELF64 file: header, program headers at 64, an optional section
/// header 0 (carrying the program header count when it is `PN_XNUM`), then `body`.
pub fn write_elf(entry: u64, phs: &[Ph], body: &[u8], xnum: bool) -> Vec<u8> {
    let phend = 64 + phs.len() * 56;
    let shoff = if xnum { phend } else { 0 };
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little-endian
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    b[18..20].copy_from_slice(&EM_RISCV.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&entry.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes()); // e_shoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    let phnum = if xnum { PN_XNUM } else { phs.len() as u16 };
    b[56..58].copy_from_slice(&phnum.to_le_bytes());
    b[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    b[60..62].copy_from_slice(&u16::from(xnum).to_le_bytes()); // e_shnum
    b.reserve(phs.len() * 56 + 64 + body.len());
    for p in phs {
        put32(&mut b, p.ty);
        put32(&mut b, p.flags);
        put64(&mut b, p.offset);
        put64(&mut b, p.vaddr);
        put64(&mut b, p.paddr);
        put64(&mut b, p.filesz);
        put64(&mut b, p.memsz);
        put64(&mut b, 0x1000);
    }
    if xnum {
        let mut sh = [0u8; 64];
        sh[44..48].copy_from_slice(&(phs.len() as u32).to_le_bytes()); // sh_info
        b.extend_from_slice(&sh);
    }
    b.extend_from_slice(body);
    b
}

/// A random ELF executable whose segments mostly fit `ram_base..`.
pub fn gen_elf(rng: &mut Rng, ram_base: u64) -> Vec<u8> {
    if rng.one_in(256) {
        return many_segments(rng, ram_base);
    }
    let n = match rng.below(8) {
        0 => 0,
        1..=4 => 1 + rng.below(2),
        _ => 1 + rng.below(8),
    };
    let body_len = rng.small(13);
    let body = rng.bytes(body_len);
    let data_start = 64 + n as u64 * 56;
    let r = rng.next_u64();
    let vbase = *rng.pick(&[0xffff_ffff_8000_0000u64, ram_base, 0x1000, r]);
    let mut phs = Vec::new();
    let mut at = rng.range(0, 0x40) * 0x1000 + if rng.coin() { 0x20_0000 } else { 0 };
    for i in 0..n {
        let filesz = if rng.one_in(8) {
            rng.next_u64() >> rng.below(64)
        } else {
            rng.range(0, body_len as u64)
        };
        let memsz = match rng.below(8) {
            0 => rng.next_u64() >> rng.below(64),
            1 => filesz.saturating_sub(1),
            2 => 0,
            _ => filesz + rng.range(0, 0x4000),
        };
        let offset = if rng.one_in(8) {
            rng.next_u64() >> rng.below(64)
        } else {
            data_start + rng.range(0, body_len as u64 - filesz.min(body_len as u64))
        };
        let ty = if rng.one_in(6) {
            let r = rng.next_u32();
            *rng.pick(&[0, 2, 4, 6, 0x6474_e551, r])
        } else {
            PT_LOAD
        };
        let flags = if i == 0 || rng.one_in(3) {
            PF_R | PF_X
        } else {
            let r = rng.next_u32();
            *rng.pick(&[PF_R, PF_R | PF_W, PF_X, r])
        };
        let paddr = if rng.one_in(8) {
            rng.next_u64()
        } else {
            ram_base.wrapping_add(at)
        };
        let vaddr = if rng.one_in(8) {
            rng.next_u64()
        } else {
            vbase.wrapping_add(at)
        };
        phs.push(Ph {
            ty,
            flags,
            offset,
            vaddr,
            paddr,
            filesz,
            memsz,
        });
        at = at.wrapping_add(memsz.min(1 << 24).next_multiple_of(PAGE_SIZE));
        if rng.one_in(4) {
            at = at.wrapping_sub(rng.range(0, 0x2000));
        }
    }
    let entry = match phs.first() {
        Some(p) if !rng.one_in(8) => p.vaddr.wrapping_add(rng.range(0, 8) * 2),
        _ => rng.next_u64(),
    };
    write_elf(entry, &phs, &body, rng.one_in(16))
}

/// Many tiny non-overlapping segments, around the loader's caps and sometimes far
/// past them (counted through `PN_XNUM`).
fn many_segments(rng: &mut Rng, ram_base: u64) -> Vec<u8> {
    let n = match rng.below(4) {
        0 => rng.range(0x1_0000, 0x1_0400) as usize,
        1 => rng.range(MAX_LOAD_SEGMENTS as u64 - 2, MAX_LOAD_SEGMENTS as u64 + 2) as usize,
        _ => rng.range(
            MAX_PROGRAM_HEADERS as u64 - 2,
            MAX_PROGRAM_HEADERS as u64 + 2,
        ) as usize,
    };
    let phs: Vec<Ph> = (0..n as u64)
        .map(|i| Ph {
            ty: PT_LOAD,
            flags: PF_R | PF_X,
            offset: 0,
            vaddr: ram_base.wrapping_add(16 * i),
            paddr: ram_base.wrapping_add(16 * i),
            filesz: 0,
            memsz: 16,
        })
        .collect();
    write_elf(ram_base, &phs, &[], n >= usize::from(PN_XNUM))
}

/// A random RISC-V Linux `Image` header (and body).
pub fn gen_image(rng: &mut Rng) -> Vec<u8> {
    let len = 64 + rng.small(14);
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(&0x0000_0013u32.to_le_bytes());
    let text_offset = match rng.below(6) {
        0 => 0,
        1 | 2 => KERNEL_ALIGN,
        3 => KERNEL_ALIGN * rng.range(0, 64),
        4 => rng.range(0, 1 << 24),
        _ => rng.next_u64(),
    };
    let image_size = match rng.below(5) {
        0 => 0,
        1 => len as u64,
        2 => rng.range(0, 1 << 26),
        3 => u64::MAX - rng.range(0, 1 << 22),
        _ => rng.next_u64() >> rng.below(64),
    };
    b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
    b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
    let flags: u64 = if rng.one_in(6) { rng.next_u64() } else { 0 };
    b[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
    b[0x20..0x24].copy_from_slice(&2u32.to_le_bytes());
    match rng.below(4) {
        0 => b[0x30..0x38].copy_from_slice(&IMAGE_MAGIC),
        1 => b[0x38..0x3c].copy_from_slice(&IMAGE_MAGIC2),
        _ => {
            b[0x30..0x38].copy_from_slice(&IMAGE_MAGIC);
            b[0x38..0x3c].copy_from_slice(&IMAGE_MAGIC2);
        }
    }
    b
}

/// A parameter block for `image`, mostly a sane RAM with room to spare.
fn params(rng: &mut Rng) -> (Vec<u8>, u64) {
    let start = ram_start(rng);
    let len = ram_len(rng, start);
    let mut p = Vec::with_capacity(PARAMS);
    put64(&mut p, start);
    put64(&mut p, len);
    put64(
        &mut p,
        match rng.below(4) {
            0 => rng.next_u64() >> rng.below(64),
            _ => rng.range(1, 1 << 22),
        },
    );
    put64(
        &mut p,
        match rng.below(4) {
            0 => rng.next_u64() >> rng.below(64),
            1 => DTB_RESERVE,
            _ => rng.range(0, 0x4000),
        },
    );
    put32(&mut p, u32::from(rng.coin()));
    put32(
        &mut p,
        match rng.below(4) {
            0 => rng.next_u32(),
            1 => rng.range(1, 0x200) as u32,
            _ => 0,
        },
    );
    (p, start)
}

fn param_fields(out: &mut Vec<Field>) {
    for i in 0..4 {
        out.push(Field::le(8 * i, 8));
    }
    out.push(Field::le(32, 4));
    out.push(Field::le(36, 4));
}

/// ELF header and program header fields, offset by the parameter block.
fn elf_fields(b: &[u8], out: &mut Vec<Field>) {
    param_fields(out);
    let e = PARAMS;
    for (at, w) in [
        (4, 1),
        (16, 2),
        (18, 2),
        (24, 8),
        (32, 8),
        (40, 8),
        (54, 2),
        (56, 2),
    ] {
        out.push(Field::le(e + at, w));
        let _ = b;
    }
    out.push(Field::le(e + 58, 2));
    out.push(Field::le(e + 60, 2));
    let phoff = read(b, Field::le(e + 32, 8)) as usize;
    let phnum = read(b, Field::le(e + 56, 2)) as usize;
    for i in 0..phnum.min(8) {
        let p = e.saturating_add(phoff).saturating_add(56 * i);
        for (at, w) in [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 8)] {
            out.push(Field::le(p.saturating_add(at), w));
        }
    }
    let shoff = read(b, Field::le(e + 40, 8)) as usize;
    if shoff != 0 {
        out.push(Field::le(e.saturating_add(shoff).saturating_add(44), 4));
    }
}

impl Target for Elf {
    fn name(&self) -> &'static str {
        "elf"
    }
    fn about(&self) -> &'static str {
        "ELF64 guest kernels: loader::plan + loader::boot_layout over a fuzzed guest RAM range"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let (mut p, start) = params(rng);
        p.extend(gen_elf(rng, start));
        p
    }
    fn fields(&self, b: &[u8], out: &mut Vec<Field>) {
        elf_fields(b, out);
    }
    fn max_len(&self) -> usize {
        4 << 20
    }
    fn run(&self, input: &[u8]) -> u64 {
        run(input)
    }
}

impl Target for Image {
    fn name(&self) -> &'static str {
        "image"
    }
    fn about(&self) -> &'static str {
        "RISC-V Linux Image headers: loader::plan + loader::boot_layout over a fuzzed guest RAM range"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let (mut p, _) = params(rng);
        p.extend(gen_image(rng));
        p
    }
    fn fields(&self, _b: &[u8], out: &mut Vec<Field>) {
        param_fields(out);
        for at in [8, 16, 24] {
            out.push(Field::le(PARAMS + at, 8));
        }
        out.push(Field::le(PARAMS + 0x30, 8));
        out.push(Field::le(PARAMS + 0x38, 4));
    }
    fn run(&self, input: &[u8]) -> u64 {
        run(input)
    }
}

/// Plans `input`'s image and layout; checks both against the loader's contract.
pub fn run(input: &[u8]) -> u64 {
    let image = input.get(PARAMS..).unwrap_or(&[]);
    let Some(ram) = Range::new(Gpa::new(le64(input, 0)), le64(input, 8)) else {
        return label(0, &"ram overflows");
    };
    let full = plan(image, ram);
    let cut = le32(input, 36) as usize;
    if cut != 0 {
        let k = cut % (image.len() + 1);
        let windowed = plan_window(&image[..k], image.len() as u64, ram);
        if k >= image.len().min(HEADER_WINDOW) {
            assert_eq!(windowed, full, "plan_window differs from plan");
        } else if let Ok(p) = &windowed {
            // Fewer bytes than the contract asks for: whatever it plans must still be
            // inside the image and RAM.
            check_plan(p, image.len(), ram);
        }
    }
    match full {
        Err(e) => label(1, &e),
        Ok(p) => {
            check_plan(&p, image.len(), ram);
            let initrd = (le32(input, 32) & 1 == 1).then(|| le64(input, 16));
            let layout = check_layout(&p, ram, initrd, le64(input, 24));
            let l = mix(label(2, &p.format), p.segments.len().min(8) as u64);
            mix(l, layout)
        }
    }
}

/// What `plan` promises: segments inside the `image_len`-byte image and inside RAM, in
/// ascending GPA order without overlap, and an entry point inside a segment.
pub fn check_plan(p: &LoadPlan, image_len: usize, ram: Range<Gpa>) {
    assert!(!p.segments.is_empty(), "plan without segments");
    assert!(
        p.segments.len() <= MAX_LOAD_SEGMENTS,
        "more segments than the cap"
    );
    for s in &p.segments {
        assert!(
            s.file.start <= s.file.end && s.file.end <= image_len,
            "segment file bytes {:?} outside the {image_len}-byte image",
            s.file
        );
        assert!(s.mem_size >= s.file.len() as u64, "mem_size < file bytes");
        assert!(
            ram.contains_span(s.gpa, s.mem_size),
            "segment {:?}+{:#x} outside RAM {ram:?}",
            s.gpa,
            s.mem_size
        );
    }
    for w in p.segments.windows(2) {
        assert!(
            w[0].gpa.raw() + w[0].mem_size <= w[1].gpa.raw(),
            "segments out of order or overlapping: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    assert!(
        p.segments
            .iter()
            .any(|s| s.gpa <= p.entry && p.entry.raw() < s.gpa.raw() + s.mem_size),
        "entry {:?} outside every segment",
        p.entry
    );
    assert!(p.end().raw() <= ram.end().raw(), "plan ends past RAM");
    match p.format {
        ImageFormat::Elf => assert!(p.entry.is_aligned(2), "odd ELF entry"),
        ImageFormat::LinuxImage => {
            assert_eq!(p.segments.len(), 1);
            let s = &p.segments[0];
            assert_eq!(s.gpa, p.entry);
            assert!(
                s.gpa.is_aligned(KERNEL_ALIGN),
                "Image load not 2 MiB aligned"
            );
            assert_eq!(s.file, 0..image_len);
        }
    }
}

/// What `boot_layout` promises: a page-aligned initrd and DTB of the asked sizes, inside
/// RAM, nothing below the kernel's end, the initrd below the DTB. Returns an outcome
/// label.
pub fn check_layout(p: &LoadPlan, ram: Range<Gpa>, initrd: Option<u64>, dtb: u64) -> u64 {
    let l = match boot_layout(p, ram, initrd, dtb) {
        Err(e) => return label(3, &e),
        Ok(l) => l,
    };
    let mut after = p.end();
    assert_eq!(l.initrd.is_some(), initrd.is_some());
    if let Some(r) = l.initrd {
        assert_eq!(Some(r.len()), initrd);
        assert!(r.start().is_aligned(PAGE_SIZE), "initrd not page aligned");
        assert!(r.start() >= after, "initrd overlaps the kernel");
        assert!(ram.contains_span(r.start(), r.len()), "initrd outside RAM");
        after = r.end();
    }
    assert_eq!(l.dtb.len(), dtb);
    assert!(l.dtb.start().is_aligned(PAGE_SIZE), "DTB not page aligned");
    assert!(l.dtb.start() >= after, "DTB overlaps the kernel or initrd");
    assert!(
        ram.contains_span(l.dtb.start(), l.dtb.len()),
        "DTB outside RAM"
    );
    mix(
        label(4, &"layout ok"),
        u64::from(l.dtb.start().is_aligned(KERNEL_ALIGN)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_inputs_are_often_accepted() {
        let mut rng = Rng::new(5);
        let ok = |t: &dyn Target, rng: &mut Rng| {
            (0..300)
                .filter(|_| {
                    let b = t.generate(rng);
                    let ram = Range::new(Gpa::new(le64(&b, 0)), le64(&b, 8));
                    ram.is_some_and(|r| plan(&b[PARAMS..], r).is_ok())
                })
                .count()
        };
        assert!(ok(&Elf, &mut rng) > 30);
        assert!(ok(&Image, &mut rng) > 30);
    }

    #[test]
    fn pn_xnum_files_parse() {
        let ph = |i: u64| Ph {
            ty: PT_LOAD,
            flags: PF_R | PF_X,
            offset: 0,
            vaddr: 0x8000_0000 + 16 * i,
            paddr: 0x8000_0000 + 16 * i,
            filesz: 0,
            memsz: 16,
        };
        let phs: Vec<Ph> = (0..50).map(ph).collect();
        let ram = Range::new(Gpa::new(0x8000_0000), 1 << 30).unwrap();
        let b = write_elf(0x8000_0000, &phs, &[], false);
        assert_eq!(plan(&b, ram).unwrap().segments.len(), 50);
        // A count given through PN_XNUM is refused unread.
        let b = write_elf(0x8000_0000, &phs, &[], true);
        assert_eq!(
            plan(&b, ram),
            Err(diosix_core::loader::LoadError::TooManyProgramHeaders(
                usize::from(PN_XNUM)
            ))
        );
    }
}
