//! Typed addresses: Host Physical (HPA), Guest Physical (GPA) and Guest Virtual (GVA).
//!
//! They live in their own crate (`diosix-addr`) so the platform crate can use them
//! without depending on the whole core; this module re-exports them under their old
//! path.

pub use diosix_addr::*;
