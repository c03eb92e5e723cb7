//! Raw access to host physical memory. In M-mode, translation is off, so an HPA is a
//! pointer; this module is where that conversion happens, and only for memory the
//! frame allocator handed out (and, once at boot, the firmware's device tree).

use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_addr::Hpa;

/// Reads a 64-bit word at an HPA.
///
/// # Safety
/// `hpa` must be 8-byte aligned RAM owned by the caller (a page table or guest page).
pub unsafe fn read_u64(hpa: Hpa) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::read_volatile(hpa.raw() as *const u64) }
}

/// Writes a 64-bit word at an HPA.
///
/// # Safety
/// As for [`read_u64`].
pub unsafe fn write_u64(hpa: Hpa, value: u64) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::write_volatile(hpa.raw() as *mut u64, value) }
}

/// The `cbo.zero` block size in bytes once [`use_cbo_zero`] enabled it, else 0.
static CBOZ_BLOCK: AtomicUsize = AtomicUsize::new(0);

/// Lets [`zero`] use the Zicboz `cbo.zero` instruction, which zeroes `block` bytes at
/// once. Call only when every hart that may run the hypervisor implements it with this
/// block size (`HostPlatform::cboz_block_size`); M-mode needs no enable bit.
pub fn use_cbo_zero(block: u32) {
    if block.is_power_of_two() && (16..=4096).contains(&block) {
        CBOZ_BLOCK.store(block as usize, Ordering::Relaxed);
    }
}

/// The `cbo.zero` block size in bytes, or 0 while [`use_cbo_zero`] has not enabled it.
pub fn cbo_zero_block() -> usize {
    CBOZ_BLOCK.load(Ordering::Relaxed)
}

/// Zeroes `len` bytes at `hpa`: through the hypervisor's `memset`
/// ([`crate::memset`]), which uses `cbo.zero` once [`use_cbo_zero`] enabled it.
///
/// # Safety
/// The range must be RAM owned by the caller.
pub unsafe fn zero(hpa: Hpa, len: u64) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::write_bytes(hpa.raw() as usize as *mut u8, 0, len as usize) };
}

/// Copies `src` into host memory at `hpa`.
///
/// # Safety
/// `hpa..hpa+src.len()` must be RAM owned by the caller and not overlap `src`.
pub unsafe fn copy_in(hpa: Hpa, src: &[u8]) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), hpa.raw() as *mut u8, src.len()) }
}

/// Copies host memory at `hpa` into `dst`.
///
/// # Safety
/// `hpa..hpa+dst.len()` must be RAM owned by the caller and not overlap `dst`.
pub unsafe fn copy_out(hpa: Hpa, dst: &mut [u8]) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::copy_nonoverlapping(hpa.raw() as *const u8, dst.as_mut_ptr(), dst.len()) }
}

/// Copies `len` bytes between two HPAs; page copies (8-byte aligned, whole 32-byte
/// blocks) take an unrolled doubleword loop.
///
/// # Safety
/// Both ranges must be RAM owned by the caller and must not overlap.
pub unsafe fn copy(dst: Hpa, src: Hpa, len: u64) {
    let (d, s) = (dst.raw() as usize, src.raw() as usize);
    if !d.is_multiple_of(8) || !s.is_multiple_of(8) || !len.is_multiple_of(32) {
        // SAFETY: forwarded contract.
        unsafe { core::ptr::copy_nonoverlapping(s as *const u8, d as *mut u8, len as usize) };
        return;
    }
    let end = s + len as usize;
    // SAFETY: both ranges are caller-owned, disjoint RAM, 8-byte aligned, whole
    // 32-byte blocks.
    unsafe {
        core::arch::asm!(
            "2: bgeu {s}, {end}, 3f",
            "ld {t0}, 0({s})",
            "ld {t1}, 8({s})",
            "ld {t2}, 16({s})",
            "ld {t3}, 24({s})",
            "sd {t0}, 0({d})",
            "sd {t1}, 8({d})",
            "sd {t2}, 16({d})",
            "sd {t3}, 24({d})",
            "addi {s}, {s}, 32",
            "addi {d}, {d}, 32",
            "j 2b",
            "3:",
            s = inout(reg) s => _,
            d = inout(reg) d => _,
            end = in(reg) end,
            t0 = out(reg) _,
            t1 = out(reg) _,
            t2 = out(reg) _,
            t3 = out(reg) _,
            options(nostack),
        );
    }
}
