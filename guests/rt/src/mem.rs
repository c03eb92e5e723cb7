//! Guest memory the hypervisor reads and writes during SBI calls.
//!
//! The test guests run with paging off, so an address is its guest-physical address
//! (GPA) and can be handed to the hypervisor as it is. A [`Region`] is such a range,
//! accessed only with volatile reads and writes (the hypervisor writes it behind the
//! compiler's back); [`Pages`] is page-aligned static storage to carve regions from.

use core::cell::UnsafeCell;

/// A range of this guest's RAM that the guest set aside for the hypervisor to read and
/// write during calls.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    addr: usize,
    len: usize,
}

impl Region {
    /// The `len` bytes at `addr`.
    ///
    /// # Safety
    ///
    /// `[addr, addr + len)` must be RAM of this guest set aside for this use for as long
    /// as the region (or a copy of it) is in use: no code, no data the program reads or
    /// writes through references, no stack. Every access is volatile: the hypervisor
    /// may change the bytes during a call, and so may other harts given the same range
    /// (whoever shares a range that way reads whatever bytes are there).
    pub const unsafe fn new(addr: usize, len: usize) -> Self {
        Self { addr, len }
    }

    /// Its first byte's address (its GPA).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the end.
    pub fn end(&self) -> usize {
        self.addr + self.len
    }

    /// The sub-range `[off, off + len)` (clipped).
    pub fn sub(&self, off: usize, len: usize) -> Region {
        let off = off.min(self.len);
        Region {
            addr: self.addr + off,
            len: len.min(self.len - off),
        }
    }

    /// Copies `data` in at `off` (clipped), a word at a time where it can.
    pub fn write(&self, off: usize, data: &[u8]) {
        let n = data.len().min(self.len.saturating_sub(off));
        let mut i = 0;
        while i < n {
            let p = self.addr + off + i;
            if p.is_multiple_of(8) && i + 8 <= n {
                let mut w = [0u8; 8];
                w.copy_from_slice(&data[i..i + 8]);
                // SAFETY: `off + i + 8 <= len`: inside the region, which the contract
                // of `new` reserves for this use; aligned.
                unsafe { (p as *mut u64).write_volatile(u64::from_ne_bytes(w)) };
                i += 8;
            } else {
                // SAFETY: as above, one byte.
                unsafe { (p as *mut u8).write_volatile(data[i]) };
                i += 1;
            }
        }
    }

    /// Fills `[off, off + len)` with `b` (clipped), a word at a time where it can.
    pub fn fill(&self, off: usize, len: usize, b: u8) {
        let end = off.saturating_add(len).min(self.len);
        let mut at = off;
        let word = u64::from_ne_bytes([b; 8]);
        while at < end {
            let p = self.addr + at;
            if p.is_multiple_of(8) && at + 8 <= end {
                // SAFETY: as in `write`; aligned and inside the region.
                unsafe { (p as *mut u64).write_volatile(word) };
                at += 8;
            } else {
                // SAFETY: as in `write`.
                unsafe { (p as *mut u8).write_volatile(b) };
                at += 1;
            }
        }
    }

    /// Copies out `out.len()` bytes from `off` (bytes past the end read as 0), a word
    /// at a time where it can.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        let n = out.len().min(self.len.saturating_sub(off));
        let mut i = 0;
        while i < n {
            let p = self.addr + off + i;
            if p.is_multiple_of(8) && i + 8 <= n {
                // SAFETY: inside the region (see `write`); aligned.
                let w = unsafe { (p as *const u64).read_volatile() };
                out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: inside the region (see `write`).
                out[i] = unsafe { (p as *const u8).read_volatile() };
                i += 1;
            }
        }
        out[n..].fill(0);
    }

    /// The u64 at `off` (little-endian).
    pub fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a u64 at `off` (little-endian).
    pub fn put_u64(&self, off: usize, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    /// Writes a u32 at `off` (little-endian).
    pub fn put_u32(&self, off: usize, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    /// Writes a u16 at `off` (little-endian).
    pub fn put_u16(&self, off: usize, v: u16) {
        self.write(off, &v.to_le_bytes());
    }
}

/// `N` page-aligned bytes of static storage, zeroed, for a guest to lend the
/// hypervisor through a [`Region`].
#[repr(C, align(4096))]
pub struct Pages<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the bytes are only reachable through `region`, whose contract makes the
// caller rule out concurrent use.
unsafe impl<const N: usize> Sync for Pages<N> {}

impl<const N: usize> Pages<N> {
    /// Zeroed storage.
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }

    /// Its address, which is its GPA (paging is off).
    pub fn addr(&self) -> usize {
        self.0.get() as usize
    }

    /// The whole storage as a region.
    ///
    /// # Safety
    ///
    /// No two harts may use regions of the same `Pages` at the same time.
    pub unsafe fn region(&'static self) -> Region {
        // SAFETY: the storage is a static's own, lives for ever and is reachable only
        // through regions; the caller rules out concurrent use.
        unsafe { Region::new(self.addr(), N) }
    }
}

impl<const N: usize> Default for Pages<N> {
    fn default() -> Self {
        Self::new()
    }
}
