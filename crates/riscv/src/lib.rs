//! RISC-V platform layer: the only crate (besides the hypervisor binary) with `unsafe`.
#![no_std]
#![warn(missing_docs)]
