//! Diosix: a bare-metal hypervisor for 64-bit RISC-V.
//!
//! This binary is the machine firmware. Every hart enters [`_start`](boot) in M-mode
//! straight from the reset vector with a0 = hart ID and a1 = the firmware device tree
//! (an HPA). The first hart to arrive zeroes `.bss`, sets up the console, heap and
//! page allocator from the device tree, builds the Root VM from the payload embedded in
//! this image, then releases the other harts; every hart then schedules vCPUs.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod build;
mod console;
mod cow;
mod devices;
mod entropy;
mod guestmem;
mod guestmode;
mod hart;
mod heap;
mod image;
mod isolation;
mod mem;
mod mmio;
mod platform;
mod pmpmem;
mod pmu;
mod sbi;
mod sched;
mod steal;
mod trap;
mod triggers;
mod vcpu;
mod vcpu_shared;
mod virtio;
mod vm;
mod vmtree;
mod vplic;

/// The hypervisor's version as printed in the banner and returned by SBI
/// `get_impl_version` (major << 16 | minor << 8 | patch).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// [`VERSION`] as (major, minor, patch) numbers, each encoded by its reader: the SBI
/// implementation version and `GET_HV_INFO`'s `hv_version` use different layouts.
pub fn version_parts() -> (u64, u64, u64) {
    let mut parts = VERSION.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::emergency_print(format_args!(
        "\n[PANIC hart {}] {}\n",
        diosix_riscv::csr::id::mhartid(),
        info
    ));
    platform::restart_host()
}
