//! The Diosix extension as the VM-tree test guests call it.
//!
//! Shared by `vmtree` (the Root VM) and `vmchild` (its child), which includes this file
//! with `#[path]`. The calls themselves are the runtime's client
//! ([`diosix_guest_rt::diosix`]); this adds the names both guests use and a few text
//! helpers.
#![allow(dead_code)]

use diosix_guest_rt::diosix::Direct;

#[allow(unused_imports)]
pub use diosix_abi::{cid, error, event, flags, limits, state};
#[allow(unused_imports)]
pub use diosix_guest_rt::diosix::{quota_args, spawn_args, Client};

/// The client. Its buffers are the runtime's: their addresses are GPAs (paging is off).
// SAFETY: both guests run their test code on their boot hart only, and every address
// they pass is in their own RAM (the client's buffers, their images, pages set aside
// for MAP_CHILD_MEM) or one the hypervisor must refuse; EXIT of itself never returns,
// which is what its callers expect.
pub const DSX: Direct = unsafe { Direct::new() };

/// Formats into a fixed buffer (no allocator in the guests); text past the end is cut.
pub struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    /// Empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// As text (lossy: invalid UTF-8 gives "?").
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes()).unwrap_or("?")
    }
}

impl<const N: usize> Default for Line<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for Line<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < N {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Formats `args` into a [`Line`].
pub fn fmt_line<const N: usize>(args: core::fmt::Arguments) -> Line<N> {
    let mut l = Line::new();
    let _ = core::fmt::Write::write_fmt(&mut l, args);
    l
}

/// Name of an SBI error code, for messages.
pub fn err_name(e: isize) -> &'static str {
    error::name(e).unwrap_or("?")
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
