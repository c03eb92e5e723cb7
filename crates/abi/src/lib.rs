//! The Diosix SBI ABI: standard SBI error codes, the implementation ID registered for
//! Diosix, and the Diosix extension's numbers and structures.
//!
//! This crate is shared, unchanged, by the hypervisor, the `no_std` test guests and the
//! Linux tools, so every side agrees on every number.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// SBI implementation ID registered for Diosix.
pub const SBI_IMPL_ID_DIOSIX: usize = 5;

/// Standard SBI error codes (SBI spec 2.0, table 1), as returned in a0.
pub mod error {
    /// Completed successfully.
    pub const SUCCESS: isize = 0;
    /// Failed.
    pub const FAILED: isize = -1;
    /// Not supported.
    pub const NOT_SUPPORTED: isize = -2;
    /// Invalid parameter(s).
    pub const INVALID_PARAM: isize = -3;
    /// Denied or not allowed.
    pub const DENIED: isize = -4;
    /// Invalid address(es).
    pub const INVALID_ADDRESS: isize = -5;
    /// Already available.
    pub const ALREADY_AVAILABLE: isize = -6;
    /// Already started.
    pub const ALREADY_STARTED: isize = -7;
    /// Already stopped.
    pub const ALREADY_STOPPED: isize = -8;
    /// Shared memory not available.
    pub const NO_SHMEM: isize = -9;
    /// Invalid state.
    pub const INVALID_STATE: isize = -10;
    /// Bad (or invalid) range.
    pub const BAD_RANGE: isize = -11;
    /// Failed due to timeout.
    pub const TIMEOUT: isize = -12;
    /// Input/output error.
    pub const IO: isize = -13;
}

/// The Diosix SBI extension (EID `0x0A000005`).
pub mod ext {
    /// Extension ID: firmware-specific range, low digits = implementation ID 5.
    pub const EID: usize = 0x0A00_0005;
}
