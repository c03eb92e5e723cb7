//! The errors tree operations return: the ABI's [`SbiError`], one variant per SBI error
//! code, so a refusal reaches the guest as exactly one precise code. The standard
//! extensions ([`crate::sbi`]) use the same type.

pub use diosix_abi::SbiError;
