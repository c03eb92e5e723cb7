//! RISC-V platform layer of Diosix.
//!
//! This crate and the hypervisor binary are the only places with `unsafe` code. It wraps
//! the hardware the portable core abstracts: control and status registers (including the
//! H extension's, defined with the `riscv` crate's CSR macros), the M-mode trap entry and
//! exit, the CLINT timer and software interrupts, the PLIC, the ns16550a UART, PMP, the syscon
//! reset device, and raw access to host physical memory.
#![no_std]
#![warn(missing_docs)]

pub mod clint;
pub mod csr;
pub mod fence;
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod memset;
pub mod physmem;
pub mod plic;
pub mod pmp;
pub mod pmu;
pub mod reset;
pub mod trap;
pub mod triggers;
pub mod uart;
