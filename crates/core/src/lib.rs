//! The portable core of the Diosix hypervisor.
//!
//! Everything here is plain, safe Rust that runs on the host under `cargo test`:
//! typed addresses, the G-stage page-table logic (over a memory trait), device-tree
//! parsing and generation, guest image loading, SBI decoding and dispatch, the run
//! queue's ordering and the VMID allocator, the host frame allocator, and the VM tree
//! with its quotas. The riscv platform crate and the hypervisor binary supply the
//! hardware behind the traits gathered in [`hil`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod addr;
pub mod childdev;
pub mod devices;
pub mod exits;
pub mod frames;
pub mod gstage;
pub mod guestfdt;
pub mod hil;
pub mod hostfdt;
pub mod loader;
pub mod mmio;
pub mod payload;
pub mod pmp;
pub mod runqueue;
pub mod sbi;
pub mod seeds;
pub mod shares;
pub mod steal;
pub mod tree;
pub mod virtio_mmio;
pub mod vmid;
pub mod vplic;
pub mod vstage;
