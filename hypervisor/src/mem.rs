//! Host RAM: the frame allocator for guest RAM and page tables, and the G-stage
//! tables' view of physical memory.

use core::sync::atomic::{AtomicU64, Ordering};
use diosix_core::addr::{Hpa, Range, PAGE_SIZE};
use diosix_core::frames::HostFrames;
use diosix_core::gstage::{TableFrames, TableMemory};
use diosix_core::hostfdt::HostPlatform;
use diosix_core::shares::ShareCounts;
use spin::{Mutex, MutexGuard, Once};

/// Every free page of host RAM outside the hypervisor image.
static FRAMES: Once<Mutex<HostFrames>> = Once::new();

/// The host frame allocator (locked).
pub fn frames() -> MutexGuard<'static, HostFrames> {
    FRAMES.call_once(|| Mutex::new(HostFrames::new())).lock()
}

/// Pages of guest RAM that VMs were charged for but have not touched yet (lazily
/// backed regions): free in the allocator, but promised.
static UNBACKED: AtomicU64 = AtomicU64::new(0);

/// `pages` of guest RAM became promised but unbacked (`true`) or stopped being so.
pub fn count_unbacked(pages: u64, promised: bool) {
    if promised {
        UNBACKED.fetch_add(pages, Ordering::Relaxed);
    } else {
        UNBACKED.fetch_sub(pages, Ordering::Relaxed);
    }
}

/// Free host pages that no VM has been promised: what the log's `host free pages`
/// reports, so that it returns to the same figure once every VM made since has gone,
/// however much of its RAM each one touched.
pub fn unpromised_free_pages() -> u64 {
    let free = frames().free_pages() as u64;
    free.saturating_sub(UNBACKED.load(Ordering::Relaxed))
}

extern "C" {
    static __hv_start: u8;
    static __hv_end: u8;
}

/// The HPA range the hypervisor image, stacks and heap occupy.
pub fn hypervisor_range() -> Range<Hpa> {
    let start = core::ptr::addr_of!(__hv_start) as u64;
    let end = core::ptr::addr_of!(__hv_end) as u64;
    Range::new(Hpa::new(start), end - start).expect("linker range")
}

/// Gives every RAM page the device tree lists, minus the hypervisor and reserved
/// regions, to the frame allocator; the payload's pages are held until
/// [`release_payload`] (given with the rest of RAM and claimed at once, so returning
/// them later rebuilds no bitmap: merging them in as a range of their own would
/// rebuild the allocator's bitmaps for all of RAM).
pub fn init(host: &HostPlatform) {
    let hv = hypervisor_range();
    let payload = payload_range(host);
    // Held by a claim when it lies in one RAM bank clear of reserved memory (the usual
    // case: right after the image); otherwise left out like a reserved region, and
    // added as a range of its own when released.
    let held = payload.filter(|p| {
        host.memory
            .iter()
            .any(|m| m.contains_span(p.start(), p.len()))
            && !host
                .reserved
                .iter()
                .any(|r| r.start() < p.end() && p.start() < r.end())
    });
    let mut frames = frames();
    for ram in &host.memory {
        let mut pieces = alloc::vec![*ram];
        let payload_hole = payload.filter(|_| held.is_none());
        for hole in core::iter::once(&hv)
            .chain(payload_hole.iter())
            .chain(host.reserved.iter())
        {
            pieces = pieces
                .into_iter()
                .flat_map(|p| subtract(p, *hole))
                .collect();
        }
        for piece in pieces {
            // Whole pages only: trim both ends inward.
            let (Some(start), end) = (
                piece.start().align_up(PAGE_SIZE),
                piece.end().align_down(PAGE_SIZE),
            ) else {
                continue;
            };
            if let Some(len) = end.offset_from(start).filter(|l| *l > 0) {
                if let Some(r) = Range::new(start, len) {
                    if let Err(e) = frames.add_range(r) {
                        log::warn!("RAM {} +{:#x} not usable: {e}", r.start(), r.len());
                    }
                }
            }
        }
    }
    if let Some(p) = held {
        // Every page was just handed over and none allocated yet: this cannot fail
        // but if it did the payload could be overwritten, so stop rather than boot.
        let pages = (p.len() / PAGE_SIZE) as usize;
        if let Err(e) = frames.claim(p.start(), pages) {
            panic!("holding the payload {} +{:#x}: {e}", p.start(), p.len());
        }
        PAYLOAD_HELD.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    log::info!(
        "{} MiB of host RAM free for guests (hypervisor {} .. {})",
        (frames.free_pages() as u64 * PAGE_SIZE) >> 20,
        hv.start(),
        hv.end()
    );
}

/// Whether [`init`] holds the payload's pages as an allocation (else they are outside
/// the allocator until [`release_payload`]).
static PAYLOAD_HELD: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The pages the Root VM payload occupies (right after the image).
fn payload_range(host: &HostPlatform) -> Option<Range<Hpa>> {
    let len = payload_bytes(host).len() as u64;
    let start = hypervisor_range().end();
    (len > 0)
        .then(|| Range::new(start, len.next_multiple_of(PAGE_SIZE)))
        .flatten()
}

/// Pages the payload will give back once the Root VM is loaded (counted in the Root
/// VM's quota up front).
pub fn payload_pages(host: &HostPlatform) -> u64 {
    payload_range(host).map_or(0, |r| r.len() / PAGE_SIZE)
}

/// Hands the payload's pages to the frame allocator: once the Root VM is built from
/// it, nothing reads it again (the Root VM's end restarts the host).
pub fn release_payload(host: &HostPlatform) {
    if let Some(r) = payload_range(host) {
        let returned = if PAYLOAD_HELD.load(core::sync::atomic::Ordering::Relaxed) {
            frames().free(r.start(), (r.len() / PAGE_SIZE) as usize)
        } else {
            frames().add_range(r).map(|_| ())
        };
        match returned {
            Ok(_) => log::info!(
                "{} KiB of payload returned to the page allocator",
                r.len() >> 10
            ),
            Err(e) => log::warn!("payload pages not reusable: {e}"),
        }
    }
}

/// `a` minus `b`, as up to two ranges.
fn subtract(a: Range<Hpa>, b: Range<Hpa>) -> alloc::vec::Vec<Range<Hpa>> {
    let mut out = alloc::vec::Vec::new();
    if b.end() <= a.start() || b.start() >= a.end() {
        out.push(a);
        return out;
    }
    if b.start() > a.start() {
        out.extend(Range::new(a.start(), b.start().raw() - a.start().raw()));
    }
    if b.end() < a.end() {
        out.extend(Range::new(b.end(), a.end().raw() - b.end().raw()));
    }
    out
}

/// Gives the hypervisor heap 1/64 of host RAM on top of its linker-reserved region, in
/// 2 MiB pieces (they need not be contiguous). Runs once at boot, before the Root VM's
/// quota is computed from the heap's total and the pages left.
pub fn grow_heap(host: &HostPlatform) {
    const PIECE_PAGES: usize = 512;
    let host_ram: u64 = host.memory.iter().map(|r| r.len()).sum();
    let pieces = (host_ram / 64).div_ceil(PIECE_PAGES as u64 * PAGE_SIZE);
    for _ in 0..pieces {
        let Some(hpa) = frames().alloc(PIECE_PAGES, 1) else {
            log::warn!("host RAM short: the hypervisor heap grew less than planned");
            break;
        };
        // SAFETY: the allocator just handed us these pages, and they are never given
        // back: the heap owns them from now on.
        unsafe { crate::heap::grow(hpa, PIECE_PAGES * PAGE_SIZE as usize) };
    }
    log::info!("hypervisor heap: {} MiB", crate::heap::total_bytes() >> 20);
}

/// Allocates `pages` contiguous zeroed pages aligned to `align_pages` pages.
pub fn alloc_zeroed(frames: &mut HostFrames, pages: usize, align_pages: usize) -> Option<Hpa> {
    let hpa = frames.alloc(pages, align_pages)?;
    // SAFETY: the allocator just handed these pages to us; nobody else maps them.
    unsafe { diosix_riscv::physmem::zero(hpa, pages as u64 * PAGE_SIZE) };
    Some(hpa)
}

/// Page-table memory: host RAM accessed directly (M-mode runs untranslated).
pub struct PhysTables;

impl TableMemory for PhysTables {
    fn read_pte(&self, table: Hpa, index: usize) -> u64 {
        // SAFETY: tables are frames this hypervisor allocated for G-stage use; the
        // walker keeps index within the table.
        unsafe { diosix_riscv::physmem::read_u64(Hpa::new(table.raw() + index as u64 * 8)) }
    }

    fn write_pte(&mut self, table: Hpa, index: usize, pte: u64) {
        // SAFETY: as for read_pte.
        unsafe { diosix_riscv::physmem::write_u64(Hpa::new(table.raw() + index as u64 * 8), pte) }
    }
}

/// Page-table frames drawn from the host frame allocator, zeroed.
pub struct TableAlloc<'a>(pub &'a mut HostFrames);

impl TableFrames for TableAlloc<'_> {
    fn alloc_table(&mut self, pages: usize) -> Option<Hpa> {
        alloc_zeroed(self.0, pages, pages)
    }

    fn free_table(&mut self, hpa: Hpa, pages: usize) {
        let _ = self.0.free(hpa, pages);
    }
}

extern "C" {
    static __payload_start: u8;
}

/// The payload `cargo xtask build` appended after the image, or an empty slice if
/// there is none (no magic) or its size does not fit host RAM.
pub fn payload_bytes(host: &HostPlatform) -> &'static [u8] {
    let start = core::ptr::addr_of!(__payload_start);
    let Some(ram) = host
        .memory
        .iter()
        .find(|r| r.contains(Hpa::new(start as u64)))
    else {
        return &[];
    };
    let room = ram.end().raw() - start as u64;
    if room < diosix_core::payload::HEADER_SIZE as u64 {
        return &[];
    }
    // SAFETY: the header lies in RAM (checked above) that the ELF loader filled, or at
    // worst holds stale bytes, which the magic check rejects.
    let header = unsafe { core::slice::from_raw_parts(start, diosix_core::payload::HEADER_SIZE) };
    if header[..8] != diosix_core::payload::MAGIC {
        return &[];
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[16..24]);
    let size = u64::from_le_bytes(size);
    if size > room {
        log::error!("payload claims {size} bytes, more than the RAM after the image");
        return &[];
    }
    // SAFETY: `size` bytes from `start` lie in host RAM (checked above) and belong to
    // the payload segment, which nothing writes.
    unsafe { core::slice::from_raw_parts(start, size as usize) }
}

/// Holder counts of shared data frames and leaf tables (see `diosix_core::shares`).
pub static SHARES: Mutex<ShareCounts> = Mutex::new(ShareCounts::new());

/// Zeroes one block of sharer counts: a page (or the tail of the last one), inside the
/// pages [`init_shares`] allocated for them.
fn zero_counts(block: &mut [u32]) {
    let hpa = Hpa::new(block.as_mut_ptr() as usize as u64);
    // SAFETY: `block` is an exclusive borrow of memory the sharer counts own.
    unsafe { diosix_riscv::physmem::zero(hpa, core::mem::size_of_val(block) as u64) };
}

/// Gives [`SHARES`] one counter per frame of every host RAM bank, taken from the frame
/// allocator (4 bytes per 4 KiB page, 0.1%) and kept for ever. Runs once at boot,
/// before any VM exists; a bank whose counters cannot be allocated falls back to the
/// slower sorted map. Not zeroed here: the counts zero each page of counters on first
/// use, so boot does not pay for the counters of frames no FORK ever shares.
pub fn init_shares(host: &diosix_core::hostfdt::HostPlatform) {
    for bank in &host.memory {
        let first = bank.start().page_number();
        let last = bank.end().raw().div_ceil(PAGE_SIZE);
        let Some(count) = last
            .checked_sub(first)
            .and_then(|n| usize::try_from(n).ok())
        else {
            continue;
        };
        let bytes = (count as u64).saturating_mul(4);
        let pages = bytes.div_ceil(PAGE_SIZE) as usize;
        let Some(hpa) = frames().alloc(pages, 1) else {
            log::warn!(
                "no {pages} pages for the sharer counts of RAM at {}",
                bank.start()
            );
            continue;
        };
        // SAFETY: the allocator just handed us these pages and they are never freed,
        // so nothing else will use them; any bit pattern is a valid u32; M-mode
        // addresses physical memory directly, and a page-aligned HPA is aligned for u32.
        let counts: &'static mut [u32] =
            unsafe { core::slice::from_raw_parts_mut(hpa.raw() as usize as *mut u32, count) };
        if !SHARES.lock().add_dense(first, counts, zero_counts) {
            log::warn!("sharer counts for RAM at {} refused", bank.start());
        }
    }
}
