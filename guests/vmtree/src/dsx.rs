//! The Diosix extension as the VM-tree test guests call it.
//!
//! Shared by `vmtree` (the Root VM) and `vmchild` (its child), which includes this file
//! with `#[path]`. The calls themselves are the runtime's client
//! ([`diosix_guest_rt::diosix`]); this adds the names both guests use and a few text
//! helpers (bounded text is the runtime's [`Line`]).
#![allow(dead_code)]

use diosix_guest_rt::diosix::Direct;

#[allow(unused_imports)]
pub use diosix_abi::{cid, error, event, flags, limits, state};
#[allow(unused_imports)]
pub use diosix_guest_rt::diosix::{device_spec, quota_args, spawn_args, Client};
#[allow(unused_imports)]
pub use diosix_guest_rt::line::{fmt, Line};

/// The client. Its buffers are the runtime's: their addresses are GPAs (paging is off).
// SAFETY: both guests run their test code on their boot hart only, and every address
// they pass is in their own RAM (the client's buffers, their images, pages set aside
// for MAP_CHILD_MEM) or one the hypervisor must refuse; EXIT of itself never returns,
// which is what its callers expect.
pub const DSX: Direct = unsafe { Direct::new() };

/// Name of an SBI error code, for messages.
pub fn err_name(e: isize) -> &'static str {
    error::name(e).unwrap_or("?")
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
