//! Raw access to host physical memory. In M-mode, translation is off, so an HPA is a
//! pointer; this module is where that conversion happens, and only for memory the
//! frame allocator handed out.

use diosix_core::addr::Hpa;

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

/// Zeroes `len` bytes at `hpa`.
///
/// # Safety
/// The range must be RAM owned by the caller.
pub unsafe fn zero(hpa: Hpa, len: u64) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::write_bytes(hpa.raw() as *mut u8, 0, len as usize) }
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

/// Copies `len` bytes between two HPAs.
///
/// # Safety
/// Both ranges must be RAM owned by the caller and must not overlap.
pub unsafe fn copy(dst: Hpa, src: Hpa, len: u64) {
    // SAFETY: forwarded contract.
    unsafe {
        core::ptr::copy_nonoverlapping(src.raw() as *const u8, dst.raw() as *mut u8, len as usize)
    }
}
