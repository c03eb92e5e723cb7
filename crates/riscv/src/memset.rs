//! The hypervisor's `memset`, which the compiler calls for every fill it emits (a zeroed
//! `Vec`, `slice::fill`, `ptr::write_bytes`).
//!
//! The generic one in `compiler_builtins` stores one doubleword a round (three
//! instructions per 8 bytes), so zeroing the frame allocator's bitmaps for 4 GiB of
//! host RAM (256 KiB) cost 99 K instructions of every boot. This one stores 64 bytes a
//! round and, for zero fills spanning at least two `cbo.zero` blocks once
//! [`crate::physmem::use_cbo_zero`] enabled it, zeroes whole blocks with one
//! instruction each, four a round. It is also how [`crate::physmem::zero`] zeroes
//! guest RAM. It is a strong definition: the linker prefers it to the
//! `compiler_builtins` one, which is weak.

use crate::physmem::cbo_zero_block;

/// C's `memset`: fills `n` bytes at `dst` with the low byte of `c`; returns `dst`.
///
/// # Safety
/// `dst..dst + n` must be writable memory the caller owns (C's contract).
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    let block = cbo_zero_block();
    // SAFETY: every store lands in [dst, dst + n): each loop checks its stores' end
    // against `end` before making them, and the cbo.zero loop runs only for a zero fill
    // of at least two blocks, so after aligning `p` to a block (fewer than `block`
    // bytes) at least one whole block remains and each block zeroed ends by `end`.
    // cbo.zero (MISC-MEM, funct3 2, imm 4) writes zeros to the block at rs1 only.
    // No Rust code runs here, so nothing can call back into `memset`.
    unsafe {
        core::arch::asm!(
            "add {end}, {p}, {n}",
            "andi {v}, {v}, 0xff",
            "li {t}, 16",
            "bltu {n}, {t}, 8f",
            // The byte in all eight lanes of a doubleword.
            "li {t}, 0x0101010101010101",
            "mul {w}, {v}, {t}",
            // Head: bytes up to 8-byte alignment (n >= 16, so within the range).
            "1:",
            "andi {t}, {p}, 7",
            "beqz {t}, 2f",
            "sb {v}, 0({p})",
            "addi {p}, {p}, 1",
            "j 1b",
            "2:",
            "bnez {w}, 4f",
            "beqz {block}, 4f",
            "slli {t}, {block}, 1",
            "bltu {n}, {t}, 4f",
            // Zero doublewords up to block alignment, then whole blocks.
            "addi {t}, {block}, -1",
            "3:",
            "and {v}, {p}, {t}",
            "beqz {v}, 11f",
            "sd zero, 0({p})",
            "addi {p}, {p}, 8",
            "j 3b",
            // Eight blocks a round while eight fit (end - p, which cannot wrap, at
            // least 8 blocks), then one at a time. cbo.zero has no address offset, so
            // each block costs an add.
            "11:",
            "slli {v}, {block}, 3",
            "5:",
            "sub {t}, {end}, {p}",
            "bltu {t}, {v}, 10f",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "add {p}, {p}, {block}",
            "j 5b",
            "10:",
            "add {t}, {p}, {block}",
            "bgtu {t}, {end}, 4f",
            ".insn i 0x0f, 2, x0, {p}, 4",
            "mv {p}, {t}",
            "j 10b",
            // 64 bytes a round (v is the fill byte again: w is 0 on the cbo path).
            "4:",
            "andi {v}, {w}, 0xff",
            "6:",
            "addi {t}, {p}, 64",
            "bgtu {t}, {end}, 7f",
            "sd {w}, 0({p})",
            "sd {w}, 8({p})",
            "sd {w}, 16({p})",
            "sd {w}, 24({p})",
            "sd {w}, 32({p})",
            "sd {w}, 40({p})",
            "sd {w}, 48({p})",
            "sd {w}, 56({p})",
            "mv {p}, {t}",
            "j 6b",
            "7:",
            "addi {t}, {p}, 8",
            "bgtu {t}, {end}, 8f",
            "sd {w}, 0({p})",
            "mv {p}, {t}",
            "j 7b",
            // Tail (or a short fill): bytes.
            "8:",
            "bgeu {p}, {end}, 9f",
            "sb {v}, 0({p})",
            "addi {p}, {p}, 1",
            "j 8b",
            "9:",
            p = inout(reg) dst => _,
            n = in(reg) n,
            v = inout(reg) c as usize => _,
            block = in(reg) block,
            end = out(reg) _,
            t = out(reg) _,
            w = out(reg) _,
            options(nostack),
        );
    }
    dst
}
