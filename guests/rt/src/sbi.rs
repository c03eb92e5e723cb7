//! SBI calls: a raw call that passes any register values, and typed wrappers.
//!
//! Error codes are the standard ones from [`diosix_abi::error`].

pub use diosix_abi::error;

/// Extension IDs (SBI spec 2.0), from the ABI crate the hypervisor uses too.
pub use diosix_abi::eid;

/// HSM hart states (SBI spec 2.0, table "HSM Hart States").
pub mod hart_state {
    /// The hart is running.
    pub const STARTED: usize = 0;
    /// The hart is stopped.
    pub const STOPPED: usize = 1;
    /// A start request is pending.
    pub const START_PENDING: usize = 2;
    /// A stop request is pending.
    pub const STOP_PENDING: usize = 3;
    /// The hart is suspended.
    pub const SUSPENDED: usize = 4;
    /// A suspend request is pending.
    pub const SUSPEND_PENDING: usize = 5;
    /// A resume is pending.
    pub const RESUME_PENDING: usize = 6;
}

/// SBI implementation ID of OpenSBI (SBI spec, table "SBI Implementation IDs").
pub const IMPL_ID_OPENSBI: usize = 1;
/// SBI implementation ID of Diosix.
pub const IMPL_ID_DIOSIX: usize = diosix_abi::SBI_IMPL_ID_DIOSIX;

/// What an SBI call returned: `error` from a0, `value` from a1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbiRet {
    /// `sbiret.error`: 0 on success, a negative standard error code otherwise.
    pub error: isize,
    /// `sbiret.value`.
    pub value: usize,
}

impl SbiRet {
    /// True when `error` is `SBI_SUCCESS`.
    pub fn is_ok(&self) -> bool {
        self.error == error::SUCCESS
    }
}

/// Raw SBI call: `ecall` with a7 = `eid`, a6 = `fid`, a0..a5 = `args`.
///
/// Any value can be passed, including invalid ones: that is what the conformance tests
/// need. The asm names no `nomem`, so the compiler assumes the call may read and write
/// memory (DBCN does).
///
/// # Safety
///
/// The caller is responsible for what the SBI implementation does on its behalf: any
/// memory the call writes (e.g. a DBCN read buffer) must be memory the caller owns,
/// and calls that stop or suspend the hart must leave the program in a consistent
/// state for wherever execution resumes.
pub unsafe fn sbi_call(eid: usize, fid: usize, args: [usize; 6]) -> SbiRet {
    let error: isize;
    let value: usize;
    // SAFETY: an ecall from S/VS-mode traps to the SBI implementation, which only
    // modifies a0 and a1 (SBI spec 2.0 §3.1); the caller upholds the memory contract.
    unsafe {
        core::arch::asm!(
            "ecall",
            inlateout("a0") args[0] => error,
            inlateout("a1") args[1] => value,
            in("a2") args[2],
            in("a3") args[3],
            in("a4") args[4],
            in("a5") args[5],
            in("a6") fid,
            in("a7") eid,
            options(nostack),
        );
    }
    SbiRet { error, value }
}

/// Raw legacy (v0.1) call: a7 = `eid`, a0..a3 = `args`; the only result is a0.
///
/// # Safety
///
/// As for [`sbi_call`]; legacy calls may also clobber a1 (covered: it is an output).
pub unsafe fn legacy_call(eid: usize, args: [usize; 4]) -> isize {
    // SAFETY: forwarded contract; a6 = 0 is harmless for legacy extensions.
    let ret = unsafe { sbi_call(eid, 0, [args[0], args[1], args[2], args[3], 0, 0]) };
    ret.error
}

/// Calls a function whose arguments are plain values (no memory, no control transfer).
fn call(eid: usize, fid: usize, args: [usize; 6]) -> SbiRet {
    // SAFETY: only used below for functions that neither access guest memory nor
    // stop/suspend the calling hart.
    unsafe { sbi_call(eid, fid, args) }
}

/// BASE get_spec_version: (major << 24) | minor.
pub fn spec_version() -> usize {
    call(eid::BASE, 0, [0; 6]).value
}

/// BASE get_impl_id.
pub fn impl_id() -> usize {
    call(eid::BASE, 1, [0; 6]).value
}

/// BASE get_impl_version.
pub fn impl_version() -> usize {
    call(eid::BASE, 2, [0; 6]).value
}

/// BASE probe_extension: nonzero when `eid` is implemented.
pub fn probe(extension: usize) -> usize {
    call(eid::BASE, 3, [extension, 0, 0, 0, 0, 0]).value
}

/// TIME set_timer: next timer event at absolute `time` value `deadline`.
pub fn set_timer(deadline: u64) -> SbiRet {
    call(eid::TIME, 0, [deadline as usize, 0, 0, 0, 0, 0])
}

/// IPI send_ipi.
pub fn send_ipi(hart_mask: usize, hart_mask_base: usize) -> SbiRet {
    call(eid::IPI, 0, [hart_mask, hart_mask_base, 0, 0, 0, 0])
}

/// RFENCE remote_fence_i.
pub fn remote_fence_i(hart_mask: usize, hart_mask_base: usize) -> SbiRet {
    call(eid::RFENCE, 0, [hart_mask, hart_mask_base, 0, 0, 0, 0])
}

/// RFENCE remote_sfence_vma over `[start, start + size)`.
pub fn remote_sfence_vma(hart_mask: usize, base: usize, start: usize, size: usize) -> SbiRet {
    call(eid::RFENCE, 1, [hart_mask, base, start, size, 0, 0])
}

/// HSM hart_start: `hartid` starts at `start_addr` in S-mode with a0 = hartid and
/// a1 = `opaque`. Prefer [`crate::hart::start`], which enters Rust.
///
/// # Safety
///
/// `start_addr` must be code that is valid to run with the MMU off and no stack.
pub unsafe fn hart_start(hartid: usize, start_addr: usize, opaque: usize) -> SbiRet {
    // SAFETY: forwarded contract; the call itself touches no memory of ours.
    unsafe { sbi_call(eid::HSM, 0, [hartid, start_addr, opaque, 0, 0, 0]) }
}

/// HSM hart_stop: stops the calling hart; only returns on failure.
pub fn hart_stop() -> SbiRet {
    // SAFETY: the calling hart never returns here on success; its stack is per-hart
    // and is reinitialised on the next start, so nothing is left dangling.
    unsafe { sbi_call(eid::HSM, 1, [0; 6]) }
}

/// HSM hart_get_status.
pub fn hart_status(hartid: usize) -> SbiRet {
    call(eid::HSM, 2, [hartid, 0, 0, 0, 0, 0])
}

/// HSM hart_suspend with the default retentive type (0): returns after a wake-up
/// interrupt (pending and enabled in `sie`, whatever `sstatus.SIE` is).
pub fn hart_suspend_retentive() -> SbiRet {
    call(eid::HSM, 3, [0, 0, 0, 0, 0, 0])
}

/// SRST system_reset.
pub fn system_reset(reset_type: u32, reason: u32) -> SbiRet {
    call(
        eid::SRST,
        0,
        [reset_type as usize, reason as usize, 0, 0, 0, 0],
    )
}

/// Ends the guest: SRST shutdown (reason 0, or 1 "system failure" if `failed`), legacy
/// shutdown if SRST is missing; never returns.
pub fn shutdown(failed: bool) -> ! {
    system_reset(0, failed as u32);
    // SAFETY: legacy shutdown takes no arguments and does not return on success.
    unsafe { legacy_call(eid::LEGACY_SHUTDOWN, [0; 4]) };
    loop {
        // SAFETY: wfi only idles the hart.
        unsafe { core::arch::asm!("wfi") };
    }
}

/// DBCN console_write of `bytes`: returns the SBI result (value = bytes written).
pub fn dbcn_write(bytes: &[u8]) -> SbiRet {
    // SAFETY: the buffer is ours and only read; with the MMU off (satp = 0) its
    // address is its (guest) physical address.
    unsafe {
        sbi_call(
            eid::DBCN,
            0,
            [bytes.len(), bytes.as_ptr() as usize, 0, 0, 0, 0],
        )
    }
}

/// DBCN console_read into `buf` (non-blocking): value = bytes read.
pub fn dbcn_read(buf: &mut [u8]) -> SbiRet {
    // SAFETY: the buffer is ours and writable, and at most `buf.len()` bytes are
    // written; the MMU is off so its address is physical.
    unsafe {
        sbi_call(
            eid::DBCN,
            1,
            [buf.len(), buf.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    }
}

/// DBCN console_write_byte.
pub fn dbcn_write_byte(byte: u8) -> SbiRet {
    call(eid::DBCN, 2, [byte as usize, 0, 0, 0, 0, 0])
}
