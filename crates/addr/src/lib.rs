//! Typed addresses: Host Physical (HPA), Guest Physical (GPA) and Guest Virtual (GVA).
//!
//! The three spaces are distinct types so they can never be mixed by accident. All
//! arithmetic is checked: an overflow yields `None`, never a wrapped address. The only
//! code that turns a [`Gpa`] into an [`Hpa`] is the G-stage walker (and, for the PMP
//! fallback, its bounds-checked offset translation).
//!
//! This crate is on its own so that the platform crate (`diosix-riscv`) can take typed
//! addresses without depending on the whole portable core; `diosix_core::addr`
//! re-exports it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::fmt;

/// Size of a base page in bytes (4 KiB on RISC-V).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// What the three address types have in common, for code generic over the space.
pub trait Address: Copy + Eq + Ord + fmt::Debug {
    /// The raw address value.
    fn raw(self) -> u64;
    /// Wraps a raw address value.
    fn from_raw(raw: u64) -> Self;
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address value.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - bytes`, or `None` on underflow.
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Bytes from `base` up to `self`, or `None` if `self` is below `base`.
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// True when the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// True when the address is page aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }

            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// Rounds up to a multiple of `align` (a power of two), or `None` on overflow.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(v) => Some(Self(v & !(align - 1))),
                    None => None,
                }
            }

            /// The offset of this address within its page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }

            /// The page number (address >> 12).
            pub const fn page_number(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }
        }

        impl Address for $name {
            fn raw(self) -> u64 {
                self.0
            }
            fn from_raw(raw: u64) -> Self {
                Self(raw)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, " {:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, " {:#x}"), self.0)
            }
        }
    };
}

address_type!(
    /// A Host Physical Address: a location in the machine's real memory map.
    Hpa,
    "HPA"
);
address_type!(
    /// A Guest Physical Address: a location as a guest sees its own physical memory.
    Gpa,
    "GPA"
);
address_type!(
    /// A Guest Virtual Address: an address under the guest's own VS-stage translation.
    Gva,
    "GVA"
);

/// A half-open range of addresses `[start, start + len)` of one address space.
///
/// The fields are private so that every range goes through [`Range::new`], which
/// refuses one whose end would overflow: `end()` and the containment checks rely on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Range<A> {
    start: A,
    len: u64,
}

impl<A: Address> Range<A> {
    /// Builds a range, or `None` if `start + len` overflows.
    pub fn new(start: A, len: u64) -> Option<Self> {
        start.raw().checked_add(len).map(|_| Self { start, len })
    }

    /// First address in the range.
    pub fn start(&self) -> A {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the range holds no address (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last address. Cannot overflow: checked at construction.
    pub fn end(&self) -> A {
        A::from_raw(self.start.raw() + self.len)
    }

    /// True when `[addr, addr + len)` lies wholly inside this range.
    pub fn contains_span(&self, addr: A, len: u64) -> bool {
        match addr.raw().checked_sub(self.start.raw()) {
            Some(off) => off <= self.len && len <= self.len - off,
            None => false,
        }
    }

    /// True when `addr` lies inside this range.
    pub fn contains(&self, addr: A) -> bool {
        self.contains_span(addr, 1)
    }

    /// True when the two ranges share an address (an empty range shares none).
    pub fn overlaps(&self, other: &Self) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.start.raw() < other.end().raw()
            && other.start.raw() < self.end().raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_half_open() {
        let r = |s, l| Range::new(Hpa::new(s), l).unwrap();
        assert!(r(0x1000, 0x1000).overlaps(&r(0x1fff, 1)));
        assert!(!r(0x1000, 0x1000).overlaps(&r(0x2000, 0x1000)));
        assert!(!r(0x2000, 0x1000).overlaps(&r(0x1000, 0x1000)));
        assert!(r(0x1000, 0x3000).overlaps(&r(0x2000, 0x10)));
        assert!(!r(0x1000, 0).overlaps(&r(0, 0x10000)));
    }

    #[test]
    fn checked_arithmetic_never_wraps() {
        assert_eq!(Gpa::new(u64::MAX).checked_add(1), None);
        assert_eq!(Hpa::new(0).checked_sub(1), None);
        assert_eq!(Gva::new(0x1000).checked_add(0x10), Some(Gva::new(0x1010)));
        assert_eq!(Gpa::new(u64::MAX - 5).align_up(PAGE_SIZE), None);
    }

    #[test]
    fn alignment_helpers() {
        let a = Hpa::new(0x8000_1234);
        assert!(!a.is_page_aligned());
        assert_eq!(a.align_down(PAGE_SIZE), Hpa::new(0x8000_1000));
        assert_eq!(a.align_up(PAGE_SIZE), Some(Hpa::new(0x8000_2000)));
        assert_eq!(a.page_offset(), 0x234);
        assert_eq!(a.page_number(), 0x80001);
    }

    #[test]
    fn ranges_reject_spans_that_leave_them() {
        let r = Range::new(Gpa::new(0x8000_0000), 0x1000).unwrap();
        assert!(r.contains_span(Gpa::new(0x8000_0000), 0x1000));
        assert!(r.contains_span(Gpa::new(0x8000_0ff0), 0x10));
        assert!(!r.contains_span(Gpa::new(0x8000_0ff0), 0x11));
        assert!(!r.contains_span(Gpa::new(0x7fff_ffff), 1));
        assert!(!r.contains_span(Gpa::new(0x8000_0800), u64::MAX));
        assert!(Range::new(Gpa::new(u64::MAX), 2).is_none());
    }

    #[test]
    fn range_accessors() {
        let r = Range::new(Hpa::new(0x8000_0000), 0x2000).unwrap();
        assert_eq!(r.start(), Hpa::new(0x8000_0000));
        assert_eq!(r.len(), 0x2000);
        assert_eq!(r.end(), Hpa::new(0x8000_2000));
        assert!(!r.is_empty());
        let e = Range::new(Gva::new(u64::MAX), 0).unwrap();
        assert!(e.is_empty());
        assert_eq!(e.end(), Gva::new(u64::MAX));
        assert!(!e.contains(Gva::new(u64::MAX)));
    }

    #[test]
    fn display_names_the_space() {
        assert_eq!(format!("{}", Gpa::new(0x80)), "GPA 0x80");
        assert_eq!(format!("{:?}", Hpa::new(0x80)), "HPA 0x80");
    }
}
