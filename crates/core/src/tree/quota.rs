//! Quota values and the arithmetic of reservations.
//!
//! A quota is a ceiling for a whole subtree. Additive resources (pages, vCPUs,
//! descendants) are *reserved*: a parent hands part of its own quota to each child, and
//! the sum of what it holds itself plus every child's quota never exceeds its own quota.
//! That is stronger than "usage never exceeds any ancestor's quota" (which follows from
//! it) and it is what keeps siblings isolated: an admission decision looks only at the
//! caller's own quota and its own children, so a refusal can never depend on, and so
//! never reveals, what any other VM holds.

use diosix_abi::limits;

/// A subtree quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Quota {
    /// Guest RAM plus page-table pages held by the VM and all its descendants.
    pub ram_pages: u64,
    /// vCPUs of the VM and all its descendants.
    pub vcpus: u32,
    /// Highest scheduling priority of any vCPU in the subtree (1..=MAX_PRIORITY).
    pub max_priority: u32,
    /// Levels of descendants allowed below the VM (0 = no children).
    pub max_depth: u32,
    /// Number of descendants allowed below the VM.
    pub max_descendants: u32,
}

impl Quota {
    /// The largest quota the ABI allows: what the Root VM gets when the host has
    /// `ram_pages` pages and allows `vcpus` vCPUs.
    pub const fn everything(ram_pages: u64, vcpus: u32) -> Self {
        Self {
            ram_pages,
            vcpus,
            max_priority: limits::MAX_PRIORITY,
            max_depth: limits::MAX_TREE_DEPTH,
            max_descendants: limits::MAX_DESCENDANTS,
        }
    }

    /// True when no field is above the ABI's fixed ceilings (and the priority is a
    /// priority). RAM has no ABI ceiling: it is bounded by the ancestors' quotas.
    pub const fn within_abi_limits(&self) -> bool {
        self.vcpus <= limits::MAX_VCPUS
            && self.max_priority >= 1
            && self.max_priority <= limits::MAX_PRIORITY
            && self.max_depth <= limits::MAX_TREE_DEPTH
            && self.max_descendants <= limits::MAX_DESCENDANTS
    }
}

/// A change to a quota: `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QuotaChange {
    /// New RAM + page-table pages.
    pub ram_pages: Option<u64>,
    /// New vCPUs.
    pub vcpus: Option<u32>,
    /// New highest priority.
    pub max_priority: Option<u32>,
    /// New depth.
    pub max_depth: Option<u32>,
    /// New descendant count.
    pub max_descendants: Option<u32>,
}

impl QuotaChange {
    /// The quota `q` would become.
    pub fn apply(&self, q: Quota) -> Quota {
        Quota {
            ram_pages: self.ram_pages.unwrap_or(q.ram_pages),
            vcpus: self.vcpus.unwrap_or(q.vcpus),
            max_priority: self.max_priority.unwrap_or(q.max_priority),
            max_depth: self.max_depth.unwrap_or(q.max_depth),
            max_descendants: self.max_descendants.unwrap_or(q.max_descendants),
        }
    }

    /// Decodes SET_QUOTA's fields: a field is set when it is non-zero (the reference's
    /// "0 = unchanged") or when its `QUOTA_SET_*` flag asks for it explicitly.
    pub fn from_args(a: &diosix_abi::QuotaArgs) -> Self {
        use diosix_abi::flags::*;
        fn pick<T: PartialEq + Default>(v: T, flags: u32, bit: u32) -> Option<T> {
            if v != T::default() || flags & bit != 0 {
                Some(v)
            } else {
                None
            }
        }
        Self {
            ram_pages: pick(a.ram_pages, a.flags, QUOTA_SET_RAM),
            vcpus: pick(a.vcpus, a.flags, QUOTA_SET_VCPUS),
            max_priority: pick(a.max_priority, a.flags, QUOTA_SET_PRIORITY),
            max_depth: pick(a.max_depth, a.flags, QUOTA_SET_DEPTH),
            max_descendants: pick(a.max_descendants, a.flags, QUOTA_SET_DESCENDANTS),
        }
    }
}

/// What a VM itself holds (not its descendants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    /// Guest RAM pages.
    pub ram_pages: u64,
    /// G-stage page-table pages.
    pub table_pages: u64,
    /// vCPUs.
    pub vcpus: u32,
}

impl Usage {
    /// RAM plus page-table pages, or `None` on overflow.
    pub fn pages(&self) -> Option<u64> {
        self.ram_pages.checked_add(self.table_pages)
    }
}

/// What a whole subtree holds: the VM plus all its descendants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubtreeUsage {
    /// RAM plus page-table pages.
    pub pages: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Descendants (not counting the VM itself).
    pub descendants: u32,
}

/// What a VM can no longer hand out: what it holds plus the quotas of its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reserved {
    /// Own pages plus children's page quotas.
    pub pages: u64,
    /// Own vCPUs plus children's vCPU quotas.
    pub vcpus: u32,
    /// Each child counts itself plus its descendant quota.
    pub descendants: u32,
}

impl Reserved {
    /// True when everything fits in `q`.
    pub fn fits(&self, q: &Quota) -> bool {
        self.pages <= q.ram_pages && self.vcpus <= q.vcpus && self.descendants <= q.max_descendants
    }
}
