//! The seams: every trait through which the portable core reaches hardware or the
//! hypervisor proper, in one place (after Tock's `hil`).
//!
//! Each trait is defined next to the logic that calls it, since it is that logic's
//! contract, and re-exported here so a reader finds them all together. The hypervisor
//! binary implements them over real memory, CSRs and vCPUs; the host tests implement
//! them over plain Rust data, which is how the core is tested without a RISC-V machine.
//!
//! | Seam | Called by | Implemented in the hypervisor by | Host fake |
//! |------|-----------|----------------------------------|-----------|
//! | [`SbiEnv`] = [`Caller`] + [`Base`] + [`Timer`] + [`Ipi`] + [`Rfence`] + [`Hsm`] + [`Reset`] + [`SystemSuspend`] + [`StealTime`] + [`FirmwareFeatures`] + [`DebugTriggers`] + [`Pmu`] + [`Console`] + [`LegacyMask`] + [`DiosixExtension`] (one per SBI extension) | [`crate::sbi::dispatch`] | `sbi::Call` (one file per extension in `hypervisor/src/sbi/`) | `sbi/tests.rs` `Fake` |
//! | [`ExtensionHost`]: the Diosix extension's effects (build, start, stop, release VMs; guest memory access) | [`crate::tree::dispatch::handle_diosix_call`] | `vmtree::host::HvHost` | `tree/tests.rs` `FakeHost` |
//! | [`TableMemory`]: read and write page-table entries in host memory | [`crate::gstage`] | `mem::PhysTables` (volatile physical accesses) | `gstage` tests `Mem` |
//! | [`TableFrames`]: page-table pages from the host allocator | [`crate::gstage`] | `mem::TableAlloc` | `gstage` tests `Frames` |
//! | [`GuestMemoryMap`]: a guest's isolation, GPA → HPA with permissions | the hypervisor's guest-memory accesses | [`crate::gstage::GStageView`] (H extension) and [`crate::gstage::PmpOffsetMap`] (PMP fallback) | both, directly |
//!
//! A new hardware boundary gets its trait next to its caller and a line here.

pub use crate::gstage::{GuestMemoryMap, TableFrames, TableMemory};
pub use crate::sbi::dbtr::DebugTriggers;
pub use crate::sbi::pmu::Pmu;
pub use crate::sbi::{
    Base, Caller, Console, DiosixExtension, FirmwareFeatures, Hsm, Ipi, LegacyMask, Reset, Rfence,
    SbiEnv, StealTime, SystemSuspend, Timer,
};
pub use crate::tree::dispatch::ExtensionHost;
