//! Guest images the hypervisor keeps: a SPAWN's image and device tree, copied out of
//! the parent's memory once, built from, and kept for REBOOT.
//!
//! An [`ImageStore`] holds its bytes in host pages wherever they are free, mapped (like
//! guest RAM) by a G-stage table no VM ever runs on, so an image of any size needs no
//! contiguous host memory: a fragmented host still takes any image its creator was
//! charged for, and no refusal tells a VM how fragmented the host is. Its pages and
//! tables are charged to the VM it is kept for (`vmtree::kept_pages`).
//!
//! Bytes move between an image and guest memory host page to host page, in steps of
//! at most [`STEP`], so neither the heap a copy needs nor the delay before it notices a
//! cancellation grows with the image.

use crate::guestmem::GStageMemory;
use crate::isolation::Isolation;
use crate::vm::Vm;
use alloc::string::String;
use alloc::vec::Vec;
use diosix_core::addr::{Gpa, Range, PAGE_SIZE};
use diosix_core::gstage::AccessError;

/// Largest piece moved at once.
pub const STEP: u64 = 2 << 20;

/// Bytes kept in host pages (see the module documentation).
pub struct ImageStore {
    /// `None` only while being dropped.
    mem: Option<GStageMemory>,
    len: u64,
}

/// Why bytes could not be moved.
#[derive(Debug)]
pub enum CopyError {
    /// An address outside the guest's memory (or without the access needed).
    Access(AccessError),
    /// The build this copy is part of was cancelled.
    Cancelled,
}

impl From<AccessError> for CopyError {
    fn from(e: AccessError) -> Self {
        CopyError::Access(e)
    }
}

impl ImageStore {
    /// Room for `len` bytes (zeroed). Checks `cancelled` every 2 MiB of it.
    pub fn new(len: u64, cancelled: &dyn Fn() -> bool) -> Result<Self, String> {
        let room = len.max(1).next_multiple_of(PAGE_SIZE);
        let range = Range::new(Gpa::new(0), room).ok_or("image size overflows")?;
        Ok(Self {
            mem: Some(GStageMemory::new(range, cancelled)?),
            len,
        })
    }

    /// An image of `len` bytes made of `src`'s own pages at `pages` (in order, one per
    /// 4 KiB), moved out of its memory (see `GStageMemory::move_page`): no byte is
    /// copied and no frame allocated but the leaf tables and the copy-on-write copies
    /// `src` was charged for. `src` must run nowhere; it is not whole afterwards.
    pub fn take_pages(
        src: &Vm,
        pages: &[Gpa],
        len: u64,
        stale: &mut crate::isolation::Stale,
    ) -> Result<Self, String> {
        let room = len.max(1).next_multiple_of(PAGE_SIZE);
        let range = Range::new(Gpa::new(0), room).ok_or("image size overflows")?;
        let mut store = GStageMemory::empty(range)?;
        let mut guard = src.mem.lock();
        let from = guard
            .as_mut()
            .and_then(|m| m.as_any_mut().downcast_mut::<GStageMemory>())
            .ok_or("no G-stage memory to take pages from")?;
        for (i, &gpa) in pages.iter().enumerate() {
            if let Err(e) = from.move_page(gpa, &mut store, Gpa::new(i as u64 * PAGE_SIZE), stale) {
                drop(guard);
                store.destroy();
                return Err(e);
            }
        }
        Ok(Self {
            mem: Some(store),
            len,
        })
    }

    /// An image of `len` bytes copied from `src`'s pages at `pages` (in order, one per
    /// 4 KiB) into fresh host pages: EXEC where frames cannot move out of a VM's
    /// memory (the PMP fallback's RAM is one contiguous block). `src` keeps its pages.
    pub fn copy_pages(src: &Vm, pages: &[Gpa], len: u64) -> Result<Self, String> {
        let never = || false;
        let store = Self::new(len, &never)?;
        for (i, &gpa) in pages.iter().enumerate() {
            let off = i as u64 * PAGE_SIZE;
            let n = len.saturating_sub(off).min(PAGE_SIZE);
            store
                .fill_from(off, src, gpa, n, &never)
                .map_err(|e| alloc::format!("copying the image: {e:?}"))?;
        }
        Ok(store)
    }

    /// Host pages an image of `len` bytes takes, tables included (what its VM is
    /// charged for it).
    pub fn pages_for(len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let pages = len.div_ceil(PAGE_SIZE);
        pages.saturating_add(diosix_core::gstage::table_pages_for(pages))
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn mem(&self) -> &GStageMemory {
        // Only `drop` takes it.
        self.mem
            .as_ref()
            .expect("image memory present until dropped")
    }

    /// The range `[off, off + n)` of the image as GPAs of its own table, checked.
    fn at(&self, off: u64, n: u64) -> Result<Gpa, CopyError> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(Gpa::new(off)),
            _ => Err(CopyError::Access(AccessError::NotMapped(Gpa::new(off)))),
        }
    }

    /// Fills `[off, off + n)` from `src`'s memory at `gpa`, taking `src`'s memory lock
    /// for one step at a time (its other vCPUs' faults wait at most one step).
    pub fn fill_from(
        &self,
        off: u64,
        src: &Vm,
        gpa: Gpa,
        n: u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), CopyError> {
        let at = self.at(off, n)?;
        let mut done = 0u64;
        while done < n {
            let step = (n - done).min(STEP);
            let not_mapped = |g: Gpa| CopyError::Access(AccessError::NotMapped(g));
            let from = gpa.checked_add(done).ok_or(not_mapped(gpa))?;
            let to = Gpa::new(at.raw() + done);
            let mut guard = src.mem.lock();
            let src_mem = guard.as_mut().ok_or(not_mapped(from))?;
            src.populate_in_ram(src_mem.as_mut(), from, step)?;
            copy_between(self.mem(), to, &**src_mem, from, step, cancelled)?;
            done += step;
        }
        Ok(())
    }

    /// Copies `[off, off + n)` of the image into `dst` at `gpa`.
    pub fn copy_to(
        &self,
        off: u64,
        n: u64,
        dst: &mut dyn Isolation,
        gpa: Gpa,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), CopyError> {
        let at = self.at(off, n)?;
        // Every byte of the destination is written: back it all first.
        dst.populate(gpa, n)
            .map_err(|_| CopyError::Access(AccessError::NotMapped(gpa)))?;
        copy_between(dst, gpa, self.mem(), at, n, cancelled)
    }

    /// Reads `[off, off + n)` of the image into a new buffer. For the header windows
    /// and command lines only: callers bound `n` by a constant.
    pub fn read(&self, off: u64, n: usize) -> Result<Vec<u8>, CopyError> {
        let at = self.at(off, n as u64)?;
        let mut buf = alloc::vec![0u8; n];
        self.mem().read(at, &mut buf)?;
        Ok(buf)
    }
}

impl Drop for ImageStore {
    fn drop(&mut self) {
        if let Some(m) = self.mem.take() {
            m.destroy();
        }
    }
}

/// Copies `n` bytes from `src` at `src_gpa` to `dst` at `dst_gpa`, host chunk to host
/// chunk, [`STEP`] bytes at a time, checking `cancelled` before each step. Needs R in
/// `src` and W in `dst` on every page (lazily backed regions must have been backed).
pub fn copy_between(
    dst: &dyn Isolation,
    dst_gpa: Gpa,
    src: &dyn Isolation,
    src_gpa: Gpa,
    n: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), CopyError> {
    let mut done = 0u64;
    while done < n {
        if cancelled() {
            return Err(CopyError::Cancelled);
        }
        let step = (n - done).min(STEP);
        let offset = |g: Gpa| {
            g.checked_add(done)
                .ok_or(CopyError::Access(AccessError::NotMapped(g)))
        };
        let to = dst.chunks(offset(dst_gpa)?, step, true)?;
        let from = src.chunks(offset(src_gpa)?, step, false)?;
        let (mut t, mut f) = (to.iter().copied(), from.iter().copied());
        let (mut cur_t, mut cur_f) = (t.next(), f.next());
        while let (Some((th, tn)), Some((fh, fn_))) = (cur_t, cur_f) {
            let k = tn.min(fn_);
            // SAFETY: both chunks were just translated by their own G-stage tables with
            // the access each side needs (W for `dst`, R for `src`); they are host RAM
            // frames of two different memories (a VM's and an image's never share a
            // frame), so they do not overlap.
            unsafe { diosix_riscv::physmem::copy(th, fh, k) };
            cur_t = if k == tn {
                t.next()
            } else {
                Some((diosix_core::addr::Hpa::new(th.raw() + k), tn - k))
            };
            cur_f = if k == fn_ {
                f.next()
            } else {
                Some((diosix_core::addr::Hpa::new(fh.raw() + k), fn_ - k))
            };
        }
        done += step;
    }
    Ok(())
}

/// Bytes to load into a VM: in hypervisor memory (the Root VM's payload, a generated
/// device tree) or kept in an [`ImageStore`].
#[derive(Clone)]
pub enum Bytes<'a> {
    /// Directly addressable bytes.
    Slice(&'a [u8]),
    /// `range` of a store.
    Stored {
        /// Where the bytes are.
        store: &'a ImageStore,
        /// Which of them (checked against the store on every access).
        range: core::ops::Range<u64>,
    },
}

impl Bytes<'_> {
    /// How many bytes.
    pub fn len(&self) -> u64 {
        match self {
            Bytes::Slice(s) => s.len() as u64,
            Bytes::Stored { range, .. } => range.end.saturating_sub(range.start),
        }
    }

    /// The first `n` bytes at most (a header window: callers bound `n` by a constant).
    pub fn window(&self, n: usize) -> Result<alloc::borrow::Cow<'_, [u8]>, CopyError> {
        let n = n.min(usize::try_from(self.len()).unwrap_or(usize::MAX));
        match self {
            Bytes::Slice(s) => Ok(alloc::borrow::Cow::Borrowed(&s[..n])),
            Bytes::Stored { store, range } => {
                Ok(alloc::borrow::Cow::Owned(store.read(range.start, n)?))
            }
        }
    }

    /// Copies the bytes `sub` (relative to these bytes) into `dst` at `gpa`, in steps,
    /// checking `cancelled` before each.
    pub fn copy_into(
        &self,
        sub: core::ops::Range<usize>,
        dst: &mut dyn Isolation,
        gpa: Gpa,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), CopyError> {
        let out_of_range = || CopyError::Access(AccessError::NotMapped(gpa));
        if sub.start > sub.end || sub.end as u64 > self.len() {
            return Err(out_of_range());
        }
        match self {
            Bytes::Slice(s) => {
                for (i, piece) in s[sub].chunks(STEP as usize).enumerate() {
                    if cancelled() {
                        return Err(CopyError::Cancelled);
                    }
                    let at = gpa.checked_add(i as u64 * STEP).ok_or_else(out_of_range)?;
                    dst.populate(at, piece.len() as u64)
                        .map_err(|_| CopyError::Access(AccessError::NotMapped(at)))?;
                    dst.write(at, piece)?;
                }
                Ok(())
            }
            Bytes::Stored { store, range } => {
                let off = range.start + sub.start as u64;
                store.copy_to(off, (sub.end - sub.start) as u64, dst, gpa, cancelled)
            }
        }
    }
}
