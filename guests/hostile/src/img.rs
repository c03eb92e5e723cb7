//! Images handed to SPAWN, built at run time: one-page ELF children running tiny
//! hand-assembled programs, a RISC-V Linux `Image`, `DSXPAYLD` payloads, an ELF with
//! 65,535 program headers, and mutations of all of them for the fuzzer.
//!
//! Every child program runs from a single RWX page loaded at [`CODE_GPA`] - 0x100:
//! the ELF header and program header fill the start of the page, the code starts at
//! offset 0x100 and its 64-bit constants sit at offset 0x800 (loaded relative to
//! `gp`, which the first instruction sets to the code's address).

use crate::sys::{Region, EID};
use diosix_abi::ext;
use diosix_guest_rt::sbi::eid;

/// Where a child's program page is loaded (the start of its RAM).
pub const PAGE_GPA: usize = 0x8000_0000;
/// Its first instruction.
pub const CODE_GPA: usize = PAGE_GPA + 0x100;
/// Where the hypervisor puts a one-page child's device tree (the next page).
pub const CHILD_DTB_GPA: usize = PAGE_GPA + 0x1000;
/// Bytes of one program image.
pub const PROG_LEN: usize = 4096;
/// Smallest RAM (pages) for a one-page child: the page plus the 64 KiB the
/// hypervisor reserves for its device tree.
pub const PROG_MIN_PAGES: u64 = 1 + 16;

// ----- a tiny RV64 assembler -----

pub(crate) const ZERO: u32 = 0;
pub(crate) const GP: u32 = 3;
pub(crate) const T0: u32 = 5;
pub(crate) const T1: u32 = 6;
pub(crate) const T2: u32 = 7;
pub(crate) const A0: u32 = 10;
pub(crate) const A1: u32 = 11;
pub(crate) const A2: u32 = 12;
pub(crate) const A6: u32 = 16;
pub(crate) const A7: u32 = 17;
pub(crate) const T3: u32 = 28;

fn i_type(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}

pub(crate) fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(0x13, 0, rd, rs1, imm)
}

pub(crate) fn ld(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(0x03, 3, rd, rs1, imm)
}

pub(crate) fn auipc(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x17
}

fn b_type(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    let o = off as u32;
    (((o >> 12) & 1) << 31)
        | (((o >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (((o >> 1) & 0xf) << 8)
        | (((o >> 11) & 1) << 7)
        | 0x63
}

pub(crate) fn jal(rd: u32, off: i32) -> u32 {
    let o = off as u32;
    (((o >> 20) & 1) << 31)
        | (((o >> 1) & 0x3ff) << 21)
        | (((o >> 11) & 1) << 20)
        | (((o >> 12) & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}

/// `sd rs2, imm(rs1)`.
pub(crate) fn sd(rs2: u32, rs1: u32, imm: i32) -> u32 {
    let i = imm as u32;
    (((i >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (3 << 12) | ((i & 0x1f) << 7) | 0x23
}

/// `sw rs2, imm(rs1)`.
pub(crate) fn sw(rs2: u32, rs1: u32, imm: i32) -> u32 {
    let i = imm as u32;
    (((i >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (2 << 12) | ((i & 0x1f) << 7) | 0x23
}

/// `lw rd, imm(rs1)`.
pub(crate) fn lw(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(0x03, 2, rd, rs1, imm)
}

/// `csrrw rd, csr, rs1` (`f3` 1), `csrrs` (2) or `csrrc` (3).
pub(crate) fn csr_op(f3: u32, rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x73
}

pub(crate) const ECALL: u32 = 0x0000_0073;
pub(crate) const WFI: u32 = 0x1050_0073;

/// A program under construction: code words, then a constant pool.
pub struct Prog {
    code: [u32; 256],
    n: usize,
    consts: [u64; 32],
    nc: usize,
}

impl Prog {
    pub(crate) fn new() -> Self {
        let mut p = Self {
            code: [0; 256],
            n: 0,
            consts: [0; 32],
            nc: 0,
        };
        // gp = the code's address: constants are gp-relative.
        p.op(auipc(GP, 0));
        p
    }

    pub(crate) fn op(&mut self, w: u32) -> usize {
        let at = self.n;
        if self.n < self.code.len() {
            self.code[self.n] = w;
            self.n += 1;
        }
        at
    }

    /// Index of the next instruction (a label).
    pub(crate) fn here(&self) -> usize {
        self.n
    }

    /// Loads a 64-bit constant into `rd`.
    pub(crate) fn li(&mut self, rd: u32, v: u64) {
        if let Ok(small) = i16::try_from(v as i64) {
            if (-2048..2048).contains(&small) {
                self.op(addi(rd, ZERO, i32::from(small)));
                return;
            }
        }
        let k = self.nc.min(self.consts.len() - 1);
        self.consts[k] = v;
        self.nc = k + 1;
        // Constants live at offset 0x800 of the page, the code at 0x100.
        self.op(ld(rd, GP, 0x700 + 8 * k as i32));
    }

    /// `ecall` with a7 = `e`, a6 = `f`.
    pub(crate) fn call(&mut self, e: usize, f: usize) {
        self.li(A7, e as u64);
        self.li(A6, f as u64);
        self.op(ECALL);
    }

    /// Diosix EXIT of itself with `code`.
    pub(crate) fn exit_self(&mut self, code: u64) {
        self.li(A0, 1);
        self.li(A1, code);
        self.call(EID, ext::FID_EXIT);
        self.op(jal(ZERO, 0));
    }

    /// A branch (f3: 0 beq, 1 bne, 6 bltu, 7 bgeu) to instruction `to`.
    pub(crate) fn branch(&mut self, f3: u32, rs1: u32, rs2: u32, to: usize) {
        let off = (to as i32 - self.n as i32) * 4;
        self.op(b_type(f3, rs1, rs2, off));
    }

    /// A placeholder branch, to patch with [`Prog::patch_branch`].
    pub(crate) fn branch_fwd(&mut self, f3: u32, rs1: u32, rs2: u32) -> usize {
        self.op(b_type(f3, rs1, rs2, 0))
    }

    pub(crate) fn patch_branch(&mut self, at: usize, f3: u32, rs1: u32, rs2: u32) {
        let off = (self.n as i32 - at as i32) * 4;
        if at < self.code.len() {
            self.code[at] = b_type(f3, rs1, rs2, off);
        }
    }

    /// A placeholder jump, to patch with [`Prog::patch_jump`].
    pub(crate) fn jump_fwd(&mut self) -> usize {
        self.op(jal(ZERO, 0))
    }

    /// Points the jump at `at` to the next instruction.
    pub(crate) fn patch_jump(&mut self, at: usize) {
        let off = (self.n as i32 - at as i32) * 4;
        if at < self.code.len() {
            self.code[at] = jal(ZERO, off);
        }
    }

    pub(crate) fn jump(&mut self, to: usize) {
        let off = (to as i32 - self.n as i32) * 4;
        self.op(jal(ZERO, off));
    }
}

/// The programs children run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Sleeps for ever (`wfi` loop): costs nothing.
    Idle,
    /// Spins for ever.
    Spin,
    /// EXIT of itself with this code.
    Exit(u64),
    /// UNMAP_CHILD_MEM over its whole RAM (this many bytes from 0x8000_0000), for ever:
    /// a busy vCPU in a long legal call.
    UnmapLoop(u64),
    /// SRST cold reboot of itself, for ever (each incarnation asks again).
    SrstReboot,
    /// Two vCPUs: vCPU 0 starts vCPU 1 (HSM), then both FORK with these flags for
    /// ever; a clone (FORK returned a0 = a1 = 0) EXITs itself.
    Fork2(u64),
    /// Reads the u64 at this GPA, then checks it this many times; EXIT 0x600D if it
    /// never changed, 0xBADC0 if it did.
    Watch(u64, u64),
    /// Floods its parent: IPC_SEND of its program page (4 KiB) and a 4 KiB console
    /// write, for ever.
    Chatty,
    /// Two vCPUs: vCPU 0 starts vCPU 1 (HSM), then both drive virtio device 0's window
    /// for ever, as a hostile driver: the whole initialization sequence, queues in its
    /// own RAM, doorbells for real and missing queues, interrupt acknowledgements,
    /// FAILED, resets, writes to read-only registers, in a tight loop (never an access
    /// the transport faults, so it keeps going until killed).
    VirtioStorm,
    /// Two vCPUs: vCPU 0 starts vCPU 1 (HSM), then both EXEC for ever the image in
    /// their own first page (which is the whole ELF file: it loads at file offset 0),
    /// with this much RAM, two vCPUs and this priority. Each incarnation does it again.
    Exec2 {
        /// RAM of every incarnation, in pages.
        ram_pages: u64,
        /// Its priority.
        priority: u32,
    },
}

/// Where an [`Program::Exec2`] child's EXEC arguments sit in its page.
const EXEC_ARGS_OFF: usize = 0xC00;

/// Exit code of a [`Program::Watch`] child that saw its page change.
pub const WATCH_CHANGED: u64 = 0xBADC0;
/// Exit code of a [`Program::Watch`] child that did not.
pub const WATCH_STABLE: u64 = 0x600D;

fn assemble(prog: Program) -> Prog {
    let mut p = Prog::new();
    match prog {
        Program::Idle => {
            let l = p.here();
            p.op(WFI);
            p.jump(l);
        }
        Program::Spin => {
            let l = p.here();
            p.jump(l);
        }
        Program::Exit(code) => p.exit_self(code),
        Program::UnmapLoop(bytes) => {
            let l = p.here();
            p.li(A0, PAGE_GPA as u64);
            p.li(A1, bytes);
            p.call(EID, ext::FID_UNMAP_CHILD_MEM);
            p.jump(l);
        }
        Program::SrstReboot => {
            let l = p.here();
            p.li(A0, 1);
            p.li(A1, 0);
            p.call(eid::SRST, 0);
            p.jump(l);
        }
        Program::Fork2(fl) => {
            // a0 = hart id: vCPU 1 goes straight to the loop.
            let skip = p.branch_fwd(1, A0, ZERO);
            p.li(A0, 1);
            p.li(A1, CODE_GPA as u64);
            p.li(A2, 0);
            p.call(eid::HSM, 0);
            p.patch_branch(skip, 1, A0, ZERO);
            let l = p.here();
            p.li(A0, fl);
            p.call(EID, ext::FID_FORK);
            p.branch(1, A0, ZERO, l);
            p.branch(1, A1, ZERO, l);
            p.exit_self(0x33);
        }
        Program::Watch(gpa, iters) => {
            p.li(T0, gpa);
            p.op(ld(T1, T0, 0));
            p.li(T2, iters);
            let l = p.here();
            p.op(ld(T3, T0, 0));
            let bad = p.branch_fwd(1, T3, T1);
            p.op(addi(T2, T2, -1));
            p.branch(1, T2, ZERO, l);
            p.exit_self(WATCH_STABLE);
            p.patch_branch(bad, 1, T3, T1);
            p.exit_self(WATCH_CHANGED);
        }
        Program::Chatty => {
            // The IPC_SEND arguments are a constant-built structure at PAGE_GPA +
            // 0xC00 (filled in by `program_elf`).
            let l = p.here();
            p.li(A0, PAGE_GPA as u64 + 0xC00);
            p.call(EID, ext::FID_IPC_SEND);
            p.li(A0, 4096);
            p.li(A1, PAGE_GPA as u64);
            p.li(A2, 0);
            p.call(eid::DBCN, 0);
            p.jump(l);
        }
        Program::VirtioStorm => {
            // a0 = hart id: vCPU 1 goes straight to the loop.
            let skip = p.branch_fwd(1, A0, ZERO);
            p.li(A0, 1);
            p.li(A1, CODE_GPA as u64);
            p.li(A2, 0);
            p.call(eid::HSM, 0);
            p.patch_branch(skip, 1, A0, ZERO);
            p.li(T0, diosix_abi::devices::MMIO_BASE);
            p.li(T3, PAGE_GPA as u64 + 0x2000);
            let l = p.here();
            // (offset, value): status, features, queue 0, live, doorbells, bad ones.
            const STEPS: [(i32, u32); 22] = [
                (0x070, 0),
                (0x070, 1),
                (0x070, 3),
                (0x024, 1),
                (0x020, 1),
                (0x070, 0xb),
                (0x030, 0),
                (0x038, 8),
                (0x044, 1),
                (0x070, 0xf),
                (0x050, 0),
                (0x050, 0),
                (0x050, 7),
                (0x064, 3),
                (0x030, 9),
                (0x044, 1),
                (0x004, 5),
                (0x0fc, 1),
                (0x050, 0),
                (0x070, 0x80),
                (0x050, 0),
                (0x070, 0x1ff),
            ];
            for (i, &(off, v)) in STEPS.iter().enumerate() {
                p.li(T1, u64::from(v));
                p.op(sw(T1, T0, off));
                if i == 7 {
                    // The queue's three areas, in its own RAM.
                    p.op(sw(T3, T0, 0x080));
                    p.op(sw(T3, T0, 0x090));
                    p.op(sw(T3, T0, 0x0a0));
                    p.op(sw(ZERO, T0, 0x084));
                }
            }
            p.op(lw(T2, T0, 0x060));
            p.op(sw(T2, T0, 0x064));
            p.op(lw(T2, T0, 0x070));
            p.op(lw(T2, T0, 0x100));
            p.jump(l);
        }
        Program::Exec2 { .. } => {
            // a0 = hart id: vCPU 1 goes straight to the loop.
            let skip = p.branch_fwd(1, A0, ZERO);
            p.li(A0, 1);
            p.li(A1, CODE_GPA as u64);
            p.li(A2, 0);
            p.call(eid::HSM, 0);
            p.patch_branch(skip, 1, A0, ZERO);
            let l = p.here();
            p.li(A0, (PAGE_GPA + EXEC_ARGS_OFF) as u64);
            p.call(EID, ext::FID_EXEC);
            p.jump(l);
        }
    }
    p
}

/// Writes the ELF64 header and one program header for a RWX segment at `PAGE_GPA`
/// covering the whole `len`-byte file, entry at `entry`; an `ET_EXEC` file, or an
/// `ET_DYN` one (`position_independent`) the hypervisor loads at the start of the
/// child's RAM wherever that is.
fn elf_header(out: &Region, len: usize, entry: u64, position_independent: bool) {
    out.fill(0, 0x100, 0);
    out.write(0, b"\x7fELF\x02\x01\x01");
    out.put_u16(16, if position_independent { 3 } else { 2 }); // ET_DYN, ET_EXEC
    out.put_u16(18, 0xF3); // EM_RISCV
    out.put_u32(20, 1);
    out.put_u64(24, entry);
    out.put_u64(32, 64); // e_phoff
    out.put_u64(40, 0); // e_shoff
    out.put_u32(48, 0x5); // RVC, double-float ABI
    out.put_u16(52, 64);
    out.put_u16(54, 56);
    out.put_u16(56, 1);
    out.put_u16(58, 64);
    out.put_u16(60, 0);
    out.put_u16(62, 0);
    let ph = 64;
    out.put_u32(ph, 1); // PT_LOAD
    out.put_u32(ph + 4, 7); // RWX
    out.put_u64(ph + 8, 0);
    out.put_u64(ph + 16, PAGE_GPA as u64);
    out.put_u64(ph + 24, PAGE_GPA as u64);
    out.put_u64(ph + 32, len as u64);
    out.put_u64(ph + 40, len as u64);
    out.put_u64(ph + 48, 0x1000);
}

/// Writes a one-page ELF child running `prog` at `out` (at least 4096 bytes); returns
/// its length.
pub fn program_elf(out: &Region, prog: Program) -> usize {
    out.fill(0, PROG_LEN, 0);
    elf_header(out, PROG_LEN, CODE_GPA as u64, false);
    let p = assemble(prog);
    place(out, &p);
    if prog == Program::Chatty {
        // IPC_SEND to the parent of the whole page.
        let a = diosix_abi::IpcSendArgs {
            size: diosix_abi::IpcSendArgs::SIZE as u32,
            flags: 0,
            cid: 0,
            data_gpa: PAGE_GPA as u64,
            len: 4096,
        };
        out.write(0xC00, &a.to_le_bytes());
    }
    if let Program::Exec2 {
        ram_pages,
        priority,
    } = prog
    {
        let a = diosix_guest_rt::diosix::spawn_args(PAGE_GPA, PROG_LEN, ram_pages, 2, priority);
        out.write(EXEC_ARGS_OFF, &a.to_le_bytes());
    }
    PROG_LEN
}

/// Writes `p`'s code at offset 0x100 and its constants at 0x800.
fn place(out: &Region, p: &Prog) {
    for (i, w) in p.code[..p.n].iter().enumerate() {
        out.put_u32(0x100 + 4 * i, *w);
    }
    for (i, c) in p.consts[..p.nc].iter().enumerate() {
        out.put_u64(0x800 + 8 * i, *c);
    }
}

/// Writes a one-page position-independent ELF child running `p` at `out` (at least
/// 4096 bytes); returns its length. `p` must address only its own page (through
/// `gp`) and absolute targets, since the page lands wherever the child's RAM is.
pub fn pie_elf(out: &Region, p: &Prog) -> usize {
    out.fill(0, PROG_LEN, 0);
    elf_header(out, PROG_LEN, CODE_GPA as u64, true);
    place(out, p);
    PROG_LEN
}

/// A RISC-V Linux `Image` of `len` bytes (≥ 64) whose first instructions idle:
/// `text_offset` and `image_size` as given.
pub fn linux_image(out: &Region, len: usize, text_offset: u64, image_size: u64) -> usize {
    out.fill(0, len, 0);
    out.put_u32(0, WFI);
    out.put_u32(4, jal(ZERO, -4));
    out.put_u64(8, text_offset);
    out.put_u64(16, image_size);
    out.put_u64(24, 0); // little-endian
    out.put_u32(32, 2);
    out.write(48, b"RISCV\0\0\0");
    out.write(56, b"RSC\x05");
    len
}

/// `DSXPAYLD` header for a payload of `total` bytes whose entries are
/// (kind, offset, size).
pub fn payload_header(out: &Region, total: u64, entries: &[(u32, u64, u64)]) {
    out.fill(0, 4096, 0);
    out.write(0, b"DSXPAYLD");
    out.put_u32(8, 1);
    out.put_u32(12, entries.len() as u32);
    out.put_u64(16, total);
    for (i, &(kind, off, size)) in entries.iter().enumerate() {
        let e = 64 + 24 * i;
        out.put_u32(e, kind);
        out.put_u64(e + 8, off);
        out.put_u64(e + 16, size);
    }
}

/// Payload entry kinds.
pub const KIND_KERNEL: u32 = 1;
/// Initrd entry.
pub const KIND_INITRD: u32 = 2;
/// Command-line entry.
pub const KIND_CMDLINE: u32 = 3;

/// A well-formed payload at `out` (≥ 16 KiB): an idling one-page ELF kernel, a small
/// initrd and command line. Returns its length.
pub fn payload(out: &Region) -> usize {
    program_elf(&out.sub(4096, 4096), Program::Idle);
    out.sub(8192, 4096).fill(0, 4096, 0x55);
    let cmd = b"console=hvc0 hostile=1";
    out.sub(12288, 4096).fill(0, 4096, 0);
    out.write(12288, cmd);
    let total = 12288 + cmd.len();
    payload_header(
        out,
        total as u64,
        &[
            (KIND_KERNEL, 4096, 4096),
            (KIND_INITRD, 8192, 100),
            (KIND_CMDLINE, 12288, cmd.len() as u64),
        ],
    );
    total
}

/// Bytes of an ELF with `count` program headers given through `PN_XNUM`.
pub fn xnum_elf_len(count: usize) -> usize {
    64 + 56 * count + 64
}

/// An ELF with `count` program headers, announced as `e_phnum = PN_XNUM (0xffff)` with
/// the real count in section header 0's `sh_info`. Every segment is a distinct,
/// non-overlapping 16-byte PT_LOAD inside the first MiB of the child's RAM, none of
/// them executable, so a loader must look at all of them before it can refuse the
/// entry point (an O(n²) overlap check does 2·10⁹ comparisons here).
pub fn xnum_elf(out: &Region, count: usize) -> usize {
    let len = xnum_elf_len(count);
    let shoff = 64 + 56 * count;
    out.fill(0, 64, 0);
    out.write(0, b"\x7fELF\x02\x01\x01");
    out.put_u16(16, 2);
    out.put_u16(18, 0xF3);
    out.put_u32(20, 1);
    out.put_u64(24, CODE_GPA as u64);
    out.put_u64(32, 64);
    out.put_u64(40, shoff as u64);
    out.put_u16(52, 64);
    out.put_u16(54, 56);
    out.put_u16(56, 0xffff);
    out.put_u16(58, 64);
    out.put_u16(60, 1);
    out.put_u16(62, 0);
    // Program headers, 8 words at a time.
    for i in 0..count {
        let ph = 64 + 56 * i;
        let gpa = PAGE_GPA as u64 + 16 * i as u64;
        out.put_u64(ph, 1 | (4 << 32)); // PT_LOAD, R only
        out.put_u64(ph + 8, 0);
        out.put_u64(ph + 16, gpa);
        out.put_u64(ph + 24, gpa);
        out.put_u64(ph + 32, 0);
        out.put_u64(ph + 40, 16);
        out.put_u64(ph + 48, 8);
    }
    // Section header 0: all zero except sh_info (offset 44) = the real count.
    out.fill(shoff, 64, 0);
    out.put_u32(shoff + 44, count as u32);
    len
}

// ----- mutations -----

/// A tiny PRNG (xorshift64*), seeded per vCPU.
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// One of `xs`.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Interesting values for a field of `bits` bits.
fn edge_value(rng: &mut Rng, bits: u32) -> u64 {
    let max = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let v = match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max - 1,
        4 => 1 << (bits - 1),
        5 => rng.next(),
        6 => rng.below(0x1000),
        7 => 0x8000_0000 + rng.below(0x0400_0000),
        8 => 0x7fff_ffff,
        9 => 0xffff_ffff,
        10 => 0x8000_0000,
        _ => 56,
    };
    v & max
}

/// Garbles one field of an ELF header or its first program header.
pub fn mutate_elf(out: &Region, len: usize, rng: &mut Rng) -> usize {
    // (offset, bits)
    const FIELDS: &[(usize, u32)] = &[
        (4, 8),
        (5, 8),
        (16, 16),
        (18, 16),
        (24, 64),
        (32, 64),
        (40, 64),
        (54, 16),
        (56, 16),
        (58, 16),
        (60, 16),
        (64, 32),
        (68, 32),
        (72, 64),
        (80, 64),
        (88, 64),
        (96, 64),
        (104, 64),
    ];
    for _ in 0..1 + rng.below(3) {
        let (off, bits) = rng.pick(FIELDS);
        let v = edge_value(rng, bits);
        match bits {
            8 => out.write(off, &[v as u8]),
            16 => out.put_u16(off, v as u16),
            32 => out.put_u32(off, v as u32),
            _ => out.put_u64(off, v),
        }
    }
    truncate(len, rng)
}

/// Garbles the `Image` header.
pub fn mutate_image(out: &Region, len: usize, rng: &mut Rng) -> usize {
    match rng.below(6) {
        0 => out.put_u64(8, edge_value(rng, 64)),
        1 => out.put_u64(16, edge_value(rng, 64)),
        2 => out.put_u64(24, edge_value(rng, 64)),
        3 => out.write(56, &[rng.next() as u8]),
        4 => out.put_u64(8, 0x20_0000 * rng.below(8) + rng.pick(&[0, 1, 0x1000])),
        _ => out.put_u64(16, u64::MAX - rng.below(0x1000)),
    }
    truncate(len, rng)
}

/// Garbles the payload's header or an entry.
pub fn mutate_payload(out: &Region, len: usize, rng: &mut Rng) -> usize {
    match rng.below(9) {
        0 => out.put_u32(8, edge_value(rng, 32) as u32),
        1 => out.put_u32(12, edge_value(rng, 32) as u32),
        2 => out.put_u64(16, edge_value(rng, 64)),
        3 => {
            let e = 64 + 24 * rng.below(3) as usize;
            out.put_u32(e, edge_value(rng, 32) as u32);
        }
        4 => {
            let e = 64 + 24 * rng.below(3) as usize;
            out.put_u64(e + 8, edge_value(rng, 64));
        }
        5 => {
            let e = 64 + 24 * rng.below(3) as usize;
            out.put_u64(e + 16, edge_value(rng, 64));
        }
        6 => {
            // A command line that is not UTF-8, or has a NUL.
            out.write(
                12288 + rng.below(8) as usize,
                &[rng.pick(&[0u8, 0xff, 0xc3])],
            );
        }
        7 => {
            // The kernel garbled instead.
            let kernel = out.sub(4096, 4096);
            mutate_elf(&kernel, 4096, rng);
        }
        _ => out.write(rng.below(8) as usize, &[rng.next() as u8]),
    }
    truncate(len, rng)
}

/// Sometimes cuts an image short.
fn truncate(len: usize, rng: &mut Rng) -> usize {
    match rng.below(6) {
        0 => rng.below(len as u64 + 1) as usize,
        1 => rng
            .pick(&[0usize, 1, 4, 16, 63, 64, 65, 119, 120, 121])
            .min(len),
        _ => len,
    }
}
