//! Root VM test of the Diosix SBI extension (EID `0x0A000005`), end to end.
//!
//! Spawns children from an embedded copy of the `vmchild` guest and exercises every
//! function against `docs/sbi-extension.md`: information, CIDs, SPAWN's checks and
//! admission, events, consoles, IPC, STOP/RESUME/START/REBOOT, MAP_CHILD_MEM, quotas,
//! a three-level tree, FORK and trust. One line per check, `ok <name>` or
//! `FAIL <name>: got <x> expected <y>`; the children's own check lines are counted too
//! (`ok c<cid>/<name>`). FORK checks print `skip fork: <reason>` when the hypervisor
//! answers NOT_SUPPORTED. Ends with `vmtree: N passed, M failed` and shuts down.
#![no_std]
#![no_main]

mod dsx;
mod tests;

diosix_guest_rt::entry!(tests::main);
