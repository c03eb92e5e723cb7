//! Spawn to first instruction: how many instructions pass from the parent's SPAWN call
//! until the new child executes its first instruction.
//!
//! The child is a hand-made ELF executable of seven instructions (no guest crate to
//! build or embed): its first instruction reads `instret` and it exits at once with
//! that value as its exit code. On one hart `instret` is one hardware counter that the
//! hypervisor does not virtualise, so the parent's `instret` before SPAWN and the
//! child's exit code are readings of the same clock, and their difference is exact
//! under `-icount`. It covers SPAWN itself (copying the image, zeroed RAM, G-stage
//! tables, the device tree, the hypervisor's log line), the parent's YIELD and the
//! switch into the child.

use diosix_abi::{event, ext};
use diosix_guest_rt::diosix::{spawn_args, Client};
use diosix_guest_rt::{csr, println, sbi};

use crate::tree::DSX;

/// The child's code's link address. The image is position-independent (`ET_DYN`: the
/// code uses no address), so the hypervisor loads it at the start of the child's RAM,
/// wherever that is (GPA 0x8000_0000 under H, its block's host address without H).
const LOAD_GPA: u64 = 0x8020_0000;

/// The child's code, one instruction per word. Encodings checked with
/// `llvm-mc -triple=riscv64 -show-encoding`; no compressed instructions, so the child
/// does not depend on the C extension.
const CODE: [u32; 7] = [
    0xC020_25F3, // csrr a1, instret      (rdinstret a1): the exit code
    0x0010_0513, // addi a0, zero, 1      (li a0, 1): EXIT's target, CID 1 = itself
    0x0000_0813, // addi a6, zero, 0      (li a6, 0): FID_EXIT
    0x0A00_08B7, // lui  a7, 0x0A000      a7 = 0x0A00_0000 (bit 31 clear: no sign extension)
    0x0058_8893, // addi a7, a7, 5        a7 = 0x0A00_0005, the Diosix EID
    0x0000_0073, // ecall                 EXIT(1, instret): does not return
    0x0000_006F, // jal  zero, 0          (j .): should EXIT ever return
];

/// Immediate of an I-type instruction (bits 31..20, sign-extended).
const fn i_imm(insn: u32) -> i64 {
    (insn as i32 >> 20) as i64
}

/// The second child's code, as long as [`CODE`] so the same ELF layout holds it: YIELD
/// for ever. A parent that YIELDs on one hart with this child runnable measures a
/// switch to another VM and back.
const YIELD_CODE: [u32; 7] = [
    0x0010_0813, // addi a6, zero, 1      (li a6, 1): FID_YIELD
    0x0A00_08B7, // lui  a7, 0x0A000
    0x0058_8893, // addi a7, a7, 5        a7 = 0x0A00_0005, the Diosix EID
    0x0000_0073, // ecall                 YIELD
    0xFF5F_F06F, // jal  zero, -12        back to the lui (a6 stays 1)
    0x0000_0013, // nop
    0x0000_0013, // nop
];

const _: () = assert!(i_imm(YIELD_CODE[0]) as usize == ext::FID_YIELD);
const _: () = assert!(
    ((YIELD_CODE[1] & 0xFFFF_F000) as i32 as i64 + i_imm(YIELD_CODE[2])) as usize == ext::EID
);

// The hand encodings must load the numbers the ABI defines: a7 = lui's upper 20 bits
// plus addi's sign-extended immediate, a6 = FID_EXIT, a0 = 1.
const _: () =
    assert!(((CODE[3] & 0xFFFF_F000) as i32 as i64 + i_imm(CODE[4])) as usize == ext::EID);
const _: () = assert!(i_imm(CODE[2]) as usize == ext::FID_EXIT);
const _: () = assert!(i_imm(CODE[1]) == 1);

/// ELF64 header size.
const EHDR_SIZE: usize = 64;
/// ELF64 program header size.
const PHDR_SIZE: usize = 56;
/// File offset of the code: right after the one program header.
const CODE_OFFSET: usize = EHDR_SIZE + PHDR_SIZE;
/// Bytes of code.
const CODE_SIZE: usize = CODE.len() * 4;
/// Bytes of the whole ELF file.
const ELF_SIZE: usize = CODE_OFFSET + CODE_SIZE;

/// The child's ELF file. 8-byte aligned like a file a loader would `mmap`; SPAWN
/// itself only needs it inside this guest's RAM.
#[repr(C, align(8))]
struct ElfImage([u8; ELF_SIZE]);

/// Stores `v` little-endian at `at` (`N` bytes); a `const fn` helper for [`elf`].
const fn put<const N: usize>(b: &mut [u8; ELF_SIZE], at: usize, v: [u8; N]) {
    let mut i = 0;
    while i < N {
        b[at + i] = v[i];
        i += 1;
    }
}

/// Builds the child's ELF file: an `ET_DYN` for `EM_RISCV` with one `PT_LOAD`
/// segment (R+X) holding [`CODE`] linked at [`LOAD_GPA`], whose start is the entry
/// point. The hypervisor's loader moves the segment to the start of the child's RAM
/// and translates `e_entry` through it. Built by the
/// compiler, so the static needs no mutable state or `unsafe`.
const fn elf(code: &[u32; 7]) -> ElfImage {
    let mut b = [0u8; ELF_SIZE];
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    put(&mut b, 0, [0x7F, b'E', b'L', b'F', 2, 1, 1, 0]);
    put(&mut b, 16, 3u16.to_le_bytes()); // e_type: ET_DYN (position-independent)
    put(&mut b, 18, 243u16.to_le_bytes()); // e_machine: EM_RISCV
    put(&mut b, 20, 1u32.to_le_bytes()); // e_version: EV_CURRENT
    put(&mut b, 24, LOAD_GPA.to_le_bytes()); // e_entry
    put(&mut b, 32, (EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    put(&mut b, 40, 0u64.to_le_bytes()); // e_shoff: no section headers
    put(&mut b, 48, 0u32.to_le_bytes()); // e_flags: no RVC, soft-float ABI (no FP used)
    put(&mut b, 52, (EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    put(&mut b, 54, (PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    put(&mut b, 56, 1u16.to_le_bytes()); // e_phnum
    put(&mut b, 58, 64u16.to_le_bytes()); // e_shentsize (no sections; the usual value)
    put(&mut b, 60, 0u16.to_le_bytes()); // e_shnum
    put(&mut b, 62, 0u16.to_le_bytes()); // e_shstrndx: SHN_UNDEF
    let ph = EHDR_SIZE;
    put(&mut b, ph, 1u32.to_le_bytes()); // p_type: PT_LOAD
    put(&mut b, ph + 4, 5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    put(&mut b, ph + 8, (CODE_OFFSET as u64).to_le_bytes()); // p_offset
    put(&mut b, ph + 16, LOAD_GPA.to_le_bytes()); // p_vaddr
    put(&mut b, ph + 24, LOAD_GPA.to_le_bytes()); // p_paddr (ignored for ET_DYN)
    put(&mut b, ph + 32, (CODE_SIZE as u64).to_le_bytes()); // p_filesz
    put(&mut b, ph + 40, (CODE_SIZE as u64).to_le_bytes()); // p_memsz
    put(&mut b, ph + 48, 4u64.to_le_bytes()); // p_align: p_offset = p_vaddr mod 4
    let mut i = 0;
    while i < code.len() {
        put(&mut b, CODE_OFFSET + 4 * i, code[i].to_le_bytes());
        i += 1;
    }
    ElfImage(b)
}

/// The child's image, in this guest's RAM for SPAWN to copy (paging is off, so its
/// address is its GPA).
static CHILD_ELF: ElfImage = elf(&CODE);

/// The YIELD child's image.
static YIELD_ELF: ElfImage = elf(&YIELD_CODE);

/// Waits (yielding the hart) for the `CHILD_TERMINATED` event of child `cid`; its
/// exit code, or `None` if POLL_EVENT fails. Other events are dropped: nothing else in
/// the bench guest waits for them.
pub fn wait_terminated(cid: u64) -> Option<u64> {
    loop {
        // YIELD first: on one hart the child can only run once this vCPU gives way,
        // and polling first would only add the parent's instructions to the figure.
        DSX.yield_now();
        match DSX.poll_event() {
            Err(e) => {
                println!("bench poll_event failed: error {e}");
                return None;
            }
            Ok(Some(e)) if e.kind == event::CHILD_TERMINATED && e.cid == cid => {
                return Some(e.exit_code)
            }
            Ok(_) => {}
        }
    }
}

/// This VM's own vCPU priority (GET_INFO), or `None` if the call fails.
fn own_priority() -> Option<u32> {
    DSX.info().ok().map(|i| i.priority)
}

/// Spawns the child with `ram_mib` of RAM and prints `spawn_first_instr_<ram>MiB`.
fn sample(ram_mib: u64, priority: u32) {
    // The same priority as this VM: the scheduler is strict between levels, so a
    // lower-priority child would never run while this vCPU polls and yields. Quotas
    // left 0: exactly what the child holds, no children of its own.
    let args = spawn_args(
        CHILD_ELF.0.as_ptr() as usize,
        ELF_SIZE,
        ram_mib << 8,
        1,
        priority,
    );
    let before = csr::instret();
    let r = DSX.spawn(&args);
    if r.error != 0 {
        println!("bench spawn_{ram_mib}MiB failed: error {}", r.error);
        return;
    }
    match wait_terminated(r.value as u64) {
        Some(first) => println!(
            "bench spawn_first_instr_{ram_mib}MiB {}",
            first.wrapping_sub(before)
        ),
        None => println!("bench spawn_{ram_mib}MiB: no exit event"),
    }
}

/// Samples of the switch benchmark.
const SWITCH_SAMPLES: usize = 64;

/// The SBI steal-time extension.
const STA: usize = 0x53_5441;

/// A steal-time record (64 bytes, 64-byte aligned).
#[repr(C, align(64))]
struct StaRecord([core::sync::atomic::AtomicU64; 8]);

static STA_RECORD: StaRecord = StaRecord([const { core::sync::atomic::AtomicU64::new(0) }; 8]);

/// A switch between vCPUs of two different VMs on one hart: this VM YIELDs while a
/// child that only YIELDs is runnable, so each YIELD runs the child once and comes
/// back. Prints `vm_switch` (half the median round trip, which holds two switches and
/// two YIELD calls) and `yield_round_trip`.
fn switch(priority: u32) {
    let args = spawn_args(
        YIELD_ELF.0.as_ptr() as usize,
        ELF_SIZE,
        16 << 8,
        1,
        priority,
    );
    let r = DSX.spawn(&args);
    if r.error != 0 {
        println!("bench vm_switch failed: error {}", r.error);
        return;
    }
    let cid = r.value as u64;
    // Let the child reach its loop first.
    for _ in 0..4 {
        DSX.yield_now();
    }
    let round_trip = || {
        let mut v = [0u64; SWITCH_SAMPLES];
        for s in v.iter_mut() {
            let a = csr::instret();
            DSX.yield_now();
            *s = csr::instret() - a;
        }
        v.sort_unstable();
        v[SWITCH_SAMPLES / 2]
    };
    let median = round_trip();
    println!("bench yield_round_trip {median}");
    println!("bench vm_switch {}", median / 2);
    // The same with this vCPU reporting steal time (SBI STA): what accounting adds to
    // a switch (the child's vCPU does not report; this one accrues steal while the
    // child runs, and its record is written each time it is loaded).
    if sbi::probe(STA) != 0 {
        let rec = STA_RECORD.0.as_ptr() as usize;
        // SAFETY: registers this program's own 64-byte static as the record.
        let r = unsafe { sbi::sbi_call(STA, 0, [rec, 0, 0, 0, 0, 0]) };
        if r.error == 0 {
            let median = round_trip();
            println!("bench vm_switch_sta {}", median / 2);
            // SAFETY: stops reporting; no memory is named.
            unsafe { sbi::sbi_call(STA, 0, [usize::MAX, usize::MAX, 0, 0, 0, 0]) };
        }
    }
    // And with this vCPU counting its instructions on a hardware counter (SBI PMU):
    // its counters are saved when it leaves and loaded when it returns, and cleared
    // for the child in between.
    if sbi::probe(PMU) != 0 {
        // SAFETY: PMU calls name no memory.
        let n = unsafe { sbi::sbi_call(PMU, 0, [0; 6]) }.value.min(63);
        // CLEAR_VALUE | AUTO_START, retired instructions, any counter.
        // SAFETY: as above.
        let r = unsafe { sbi::sbi_call(PMU, 2, [0, (1 << n) - 1, 6, 2, 0, 0]) };
        if r.error == 0 {
            let median = round_trip();
            println!("bench vm_switch_pmu {}", median / 2);
            // Stop and release it (RESET).
            // SAFETY: as above.
            unsafe { sbi::sbi_call(PMU, 4, [r.value, 1, 1, 0, 0, 0]) };
        }
    }
    DSX.exit(cid, 0);
    wait_terminated(cid);
}

/// The SBI PMU extension.
const PMU: usize = 0x50_4d55;

/// Runs the spawn benchmark with children of 16, 64 and 256 MiB.
pub fn run() {
    let Some(priority) = own_priority() else {
        println!("bench spawn skipped (GET_INFO failed)");
        return;
    };
    for ram_mib in [16, 64, 256] {
        sample(ram_mib, priority);
    }
    switch(priority);
}
