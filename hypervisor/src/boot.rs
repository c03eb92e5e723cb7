//! Reset-vector entry and the boot sequence.

use crate::{console, entropy, hart, heap, mem, platform, sched};
use core::sync::atomic::{AtomicBool, Ordering};
use diosix_core::addr::Hpa;
use diosix_riscv::csr;

use crate::hart::{MAX_HARTS, STACK_SIZE};

core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".globl _start",
    ".option arch, +m, +a",
    "_start:",
    "csrw mie, zero",
    // A hart without S-mode (a monitor core, such as the HiFive Unleashed's E51) can
    // run no guest and may lack the FPU this code is built for: park it before it
    // claims anything. misa reads 0 where it is not implemented: go on then (the
    // device tree decides later).
    "csrr t0, misa",
    "beqz t0, 5f",
    "srli t0, t0, 18",
    "andi t0, t0, 1",
    "beqz t0, 9f",
    "5:",
    // Claim a hart slot: slots index stacks and per-hart state, whatever the hart IDs.
    "la t0, {next_slot}",
    "li t1, 1",
    "amoadd.w a2, t1, (t0)",
    "li t1, {max_harts}",
    "bgeu a2, t1, 9f",
    "la sp, __stacks_end",
    "li t1, {stack_size}",
    "mul t2, a2, t1",
    "sub sp, sp, t2",
    "bnez a2, 3f",
    // Slot 0 zeroes .bss, then lets the others go on.
    "la t0, __bss_start",
    "la t1, __bss_end",
    "1: bgeu t0, t1, 2f",
    "sd zero, 0(t0)",
    "addi t0, t0, 8",
    "j 1b",
    "2: fence rw, rw",
    "la t0, {bss_ready}",
    "li t1, 1",
    "sw t1, 0(t0)",
    "j 4f",
    "3: la t0, {bss_ready}",
    "lw t1, 0(t0)",
    "beqz t1, 3b",
    "fence rw, rw",
    "4: call {rust_entry}",
    "9: wfi",
    "j 9b",
    next_slot = sym NEXT_SLOT,
    bss_ready = sym BSS_READY,
    max_harts = const MAX_HARTS,
    stack_size = const STACK_SIZE,
    rust_entry = sym rust_entry,
);

/// Next free hart slot (in .data: it is used before .bss is zeroed).
#[no_mangle]
#[link_section = ".data"]
static mut NEXT_SLOT: u32 = 0;
/// Set by slot 0 once .bss is zeroed.
#[no_mangle]
#[link_section = ".data"]
static mut BSS_READY: u32 = 0;

/// Set once the boot hart has built the machine state the others need.
static RELEASED: AtomicBool = AtomicBool::new(false);

extern "C" fn rust_entry(hart_id: usize, fdt: usize, slot: usize) -> ! {
    if slot == 0 {
        boot_hart(hart_id, fdt)
    } else {
        while !RELEASED.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        secondary_hart(hart_id, slot)
    }
}

fn boot_hart(hart_id: usize, fdt_hpa: usize) -> ! {
    let start_instret = csr::id::instret();
    // SAFETY: runs once, on the boot hart, before anything allocates.
    unsafe { heap::init() };
    // SAFETY: a1 at reset is the firmware's device tree; its header gives its size.
    let fdt = unsafe { platform::copy_firmware_fdt(Hpa::new(fdt_hpa as u64)) };
    let host = match platform::init(&fdt) {
        Ok(p) => p,
        Err(e) => {
            console::emergency_print(format_args!("diosix: bad host device tree: {e}\n"));
            diosix_riscv::reset::halt()
        }
    };
    console::init_logger();
    platform::print_banner(host, hart_id);
    if entropy::init(&host.rng_seed) {
        log::info!(
            "guest rng-seeds keyed from the firmware's {}-byte seed",
            host.rng_seed.len()
        );
    } else {
        log::warn!("no /chosen/rng-seed from the firmware: guests get no seed");
    }
    if let Some(block) = host.cboz_block_size() {
        // Guest RAM is zeroed before a VM gets it: one instruction per block.
        diosix_riscv::physmem::use_cbo_zero(block);
        log::info!("zeroing memory with cbo.zero ({block}-byte blocks)");
    }
    mem::init(host);
    mem::init_shares(host);
    mem::grow_heap(host);
    hart::init_this_hart(0, hart_id);
    crate::devices::init(host);
    crate::devices::init_hart(0);
    if let Err(e) = crate::vmtree::create_root_vm(host) {
        log::error!("cannot start the Root VM: {e}");
        platform::restart_host();
    }
    mem::release_payload(host);
    log::info!(
        "Root VM running; host free pages: {}",
        mem::unpromised_free_pages()
    );
    log::info!(
        "boot hart ready after {} instructions; releasing {} other hart(s)",
        csr::id::instret().saturating_sub(start_instret),
        host.harts.len().saturating_sub(1)
    );
    RELEASED.store(true, Ordering::Release);
    sched::run_forever()
}

fn secondary_hart(hart_id: usize, slot: usize) -> ! {
    let host = platform::host();
    if !host.harts.iter().any(|h| h.hart_id == hart_id) {
        // Not described by the device tree (or unusable): park.
        diosix_riscv::reset::halt();
    }
    hart::init_this_hart(slot, hart_id);
    crate::devices::init_hart(slot);
    sched::run_forever()
}
