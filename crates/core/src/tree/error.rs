//! The errors tree operations return, one per SBI error code they can produce.

use diosix_abi::error;

/// Why a tree operation or an extension call was refused. Each variant maps to exactly
/// one SBI error code ([`SbiError::code`]), so the guest sees a precise reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbiError {
    /// `FAILED`: a full queue refused a message, or the host could not complete work
    /// the tree had already admitted.
    Failed,
    /// `NOT_SUPPORTED`: unknown or reserved function.
    NotSupported,
    /// `INVALID_PARAM`: a CID that names nothing the caller may name, a malformed value,
    /// unknown flag bits, a structure that is too small, a value above an ABI ceiling.
    InvalidParam,
    /// `DENIED`: the caller may not do this: wrong kind of target (its parent, or itself
    /// through a child-only path), missing trust, or a quota that does not allow it.
    Denied,
    /// `INVALID_ADDRESS`: a GPA range outside the caller's RAM, overflowing, or
    /// misaligned.
    InvalidAddress,
    /// `ALREADY_STARTED`: START or RESUME of a VM that is running.
    AlreadyStarted,
    /// `ALREADY_STOPPED`: STOP of a VM that is stopped.
    AlreadyStopped,
    /// `INVALID_STATE`: the target's state forbids it (e.g. lowering a quota below what
    /// is in use, STOP of a child that was never started).
    InvalidState,
    /// `BAD_RANGE`: the receive buffer is shorter than the waiting message.
    BadRange,
}

impl SbiError {
    /// The SBI error code returned in a0.
    pub const fn code(self) -> isize {
        match self {
            Self::Failed => error::FAILED,
            Self::NotSupported => error::NOT_SUPPORTED,
            Self::InvalidParam => error::INVALID_PARAM,
            Self::Denied => error::DENIED,
            Self::InvalidAddress => error::INVALID_ADDRESS,
            Self::AlreadyStarted => error::ALREADY_STARTED,
            Self::AlreadyStopped => error::ALREADY_STOPPED,
            Self::InvalidState => error::INVALID_STATE,
            Self::BadRange => error::BAD_RANGE,
        }
    }
}
