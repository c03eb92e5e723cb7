//! Minimal `no_std` runtime for the Diosix test guests.
//!
//! A guest links against this crate, passes `link.x` to the linker from its build
//! script and names its entry point with [`entry!`]. The runtime provides:
//!
//! * `_start`: per-hart stacks, `.bss` zeroing on the boot hart, FP enabled, and the
//!   `instret` value at the guest's very first instruction ([`boot_instret`]);
//! * a secondary entry point for harts started (or resumed) through HSM, which calls a
//!   per-hart Rust function ([`hart::start`]);
//! * raw and typed SBI calls ([`sbi`]), a console over DBCN ([`print!`], [`println!`]);
//! * the client of the Diosix extension ([`diosix`]) and the memory its calls lend the
//!   hypervisor ([`mem`]);
//! * a small trap handler counting timer and software interrupts ([`trap`]);
//! * device-tree facts the guests need ([`dtb`]) and CSR accessors ([`csr`]);
//! * bounded text without an allocator ([`line`]);
//! * the QEMU `virt` devices the device tests drive ([`virt`]).
//!
//! The boot hart id is whatever the SBI implementation hands over in `a0`: under
//! OpenSBI it is not necessarily 0, so guests never assume it.
#![no_std]

pub mod console;
pub mod csr;
pub mod diosix;
pub mod dtb;
pub mod hart;
pub mod line;
pub mod mem;
pub mod report;
pub mod sbi;
pub mod trap;
pub mod virt;

use core::sync::atomic::{AtomicUsize, Ordering};

/// Most harts a guest supports; hart ids must be below this (they index the stacks).
/// Must match `RT_MAX_HARTS` in `link.x`.
pub const MAX_HARTS: usize = 32;
/// Bytes of stack per hart. Must match `RT_STACK_SIZE` in `link.x`.
pub const STACK_SIZE: usize = 16 * 1024;
const _: () = assert!(
    STACK_SIZE.is_power_of_two(),
    "the entry code shifts by log2"
);

/// `instret` as read by the first instruction of `_start`, saved for [`boot_instret`].
/// In `.data` (not `.bss`) so zeroing `.bss` cannot wipe it.
#[no_mangle]
#[link_section = ".data.rt_boot_instret"]
static RT_BOOT_INSTRET: AtomicUsize = AtomicUsize::new(0);

/// Address the guests are linked at. Must match `RT_LINK_BASE` in `link.x`.
pub const LINK_BASE: usize = 0x8020_0000;
/// ELF relocation type of every entry a static PIE has: `*(base + offset) = base + addend`.
const R_RISCV_RELATIVE: usize = 3;

/// Relocation entries `_start` could not apply (not `R_RISCV_RELATIVE`); in `.data`
/// for the same reason as [`RT_BOOT_INSTRET`].
#[no_mangle]
#[link_section = ".data.rt_bad_relocations"]
static RT_BAD_RELOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Where this guest's image starts in memory: the start of its RAM under Diosix (the
/// loader puts a position-independent image there, H or PMP), [`LINK_BASE`] under
/// OpenSBI.
pub fn image_start() -> usize {
    extern "C" {
        static __image_start: u8;
    }
    // Taking the address reads nothing; `medany` code computes it PC-relative, so it is
    // where the image runs, not where it was linked.
    core::ptr::addr_of!(__image_start) as usize
}

/// Instructions retired from reset up to the guest's first instruction (as counted by
/// this hart's `instret`, read before anything else runs).
pub fn boot_instret() -> usize {
    RT_BOOT_INSTRET.load(Ordering::Relaxed)
}

// Boot hart entry. Register use: a0 = hart id, a1 = DTB address, both kept intact
// for the Rust entry; t6 carries the first `instret` sample until .bss is zeroed.
// The hart id goes into tp so any code (trap handler included) can find its hart
// without a table lookup; the runtime uses no thread-local storage, so tp is free.
core::arch::global_asm!(
    r#"
    .section .text.rt_entry, "ax"
    .globl _start
_start:
    csrr    t6, instret
    // Apply the R_RISCV_RELATIVE entries for the distance between where the image
    // runs and where it was linked (t2; zero under OpenSBI). Nothing before this
    // point may read an address from memory. Any other relocation type is counted
    // in t5 and reported by `__rt_boot` once printing works.
    lla     t0, __image_start
    li      t1, {link_base}
    sub     t2, t0, t1
    lla     t3, __rela_start
    lla     t4, __rela_end
    li      t5, 0
3:
    bgeu    t3, t4, 5f
    ld      a2, 8(t3)
    li      a3, {r_riscv_relative}
    bne     a2, a3, 4f
    ld      a2, 0(t3)
    ld      a4, 16(t3)
    add     a2, a2, t2
    add     a4, a4, t2
    sd      a4, 0(a2)
    addi    t3, t3, 24
    j       3b
4:
    addi    t5, t5, 1
    addi    t3, t3, 24
    j       3b
5:
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    csrw    sie, zero
    csrw    sip, zero
    li      t0, {fs_initial}
    csrs    sstatus, t0
    mv      tp, a0
    li      t0, {max_harts}
    bgeu    a0, t0, 9f
    addi    t0, a0, 1
    slli    t0, t0, {stack_shift}
    la      sp, __stacks_start
    add     sp, sp, t0
    la      t0, __bss_start
    la      t1, __bss_end
1:
    bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:
    la      t0, RT_BOOT_INSTRET
    sd      t6, 0(t0)
    la      t0, RT_BAD_RELOCATIONS
    sd      t5, 0(t0)
    call    __rt_boot
9:
    wfi
    j       9b

    .section .text.rt_secondary, "ax"
    .globl  __rt_secondary_entry
    .p2align 2
__rt_secondary_entry:
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    csrw    sie, zero
    li      t0, {fs_initial}
    csrs    sstatus, t0
    mv      tp, a0
    li      t0, {max_harts}
    bgeu    a0, t0, 9b
    addi    t0, a0, 1
    slli    t0, t0, {stack_shift}
    la      sp, __stacks_start
    add     sp, sp, t0
    call    __rt_secondary
    j       9b
    "#,
    link_base = const LINK_BASE,
    r_riscv_relative = const R_RISCV_RELATIVE,
    fs_initial = const 1usize << 13,
    max_harts = const MAX_HARTS,
    stack_shift = const STACK_SIZE.trailing_zeros(),
);

/// Called by `_start` on the boot hart; runs the guest's main, then shuts down.
#[no_mangle]
extern "C" fn __rt_boot(hartid: usize, dtb: usize) -> ! {
    hart::mark_booted(hartid);
    let bad = RT_BAD_RELOCATIONS.load(Ordering::Relaxed);
    if bad != 0 {
        panic!("{bad} relocations of a type other than R_RISCV_RELATIVE: not a static PIE");
    }
    extern "Rust" {
        fn __rt_guest_main(hartid: usize, dtb: usize);
    }
    // SAFETY: `__rt_guest_main` is defined by the guest's `entry!` invocation with
    // exactly this signature; it is called once, on the boot hart.
    unsafe { __rt_guest_main(hartid, dtb) };
    sbi::shutdown(false)
}

/// Names the guest's entry point: `fn main(hartid: usize, dtb: usize)`.
///
/// When `main` returns, the guest shuts down with "no reason" (success); a panic shuts
/// it down with "system failure".
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[doc(hidden)]
        #[export_name = "__rt_guest_main"]
        pub fn __rt_guest_main(hartid: usize, dtb: usize) {
            let f: fn(usize, usize) = $main;
            f(hartid, dtb)
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // The console lock may be held by the panicking hart; write raw so the message
    // still gets out instead of deadlocking.
    console::force_unlock();
    println!("guest panicked on hart {}: {}", hart::id(), info);
    sbi::shutdown(true)
}

/// Sleeps for `ticks` of `time` using the SBI timer and `wfi`, without taking the
/// interrupt (only `sie.STIE` is set, so `wfi` wakes but no trap is taken unless the
/// guest enabled `sstatus.SIE` itself). Leaves the timer disarmed.
pub fn sleep_ticks(ticks: u64) {
    let deadline = csr::time().saturating_add(ticks);
    sbi::set_timer(deadline);
    csr::sie_set(csr::STI);
    while csr::time() < deadline {
        csr::wfi();
    }
    sbi::set_timer(u64::MAX);
    csr::sie_clear(csr::STI);
}
