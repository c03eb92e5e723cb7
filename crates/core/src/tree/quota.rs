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

/// Hypervisor heap one VM's tree state can take at most, from the ABI's limits: its
/// console output ring and input buffer, the IPC lanes at both ends of its edge to its
/// parent full of maximal messages (with per-message overhead), its event queue, its
/// node (names, maps), and the most virtio devices its parent may give it (their
/// transports, their definitions while it is built, and the virtual PLIC they need).
/// Every VM but the Root VM has exactly one such edge.
pub const HEAP_BYTES_PER_VM: u64 = (limits::CONSOLE_OUT_RING
    + limits::CONSOLE_IN_BUFFER
    + 2 * limits::IPC_QUEUE_DEPTH * (limits::IPC_MAX_MESSAGE + 64)
    + limits::EVENT_QUEUE_DEPTH * 64
    + 4096
    + diosix_abi::devices::MAX_DEVICES
        * (core::mem::size_of::<crate::virtio_mmio::Transport>()
            + diosix_abi::devices::MAX_CONFIG
            + 64)
    + 4096) as u64;

/// The Root VM's vCPU and descendant quotas a hypervisor heap of `heap_bytes` can back,
/// so that no guest can exhaust the heap however it uses what it was granted: `fixed`
/// bytes stay for the hypervisor's own structures, a quarter of the rest backs vCPUs at
/// `per_vcpu` bytes each, and the remainder whole VMs at 1.5 × [`HEAP_BYTES_PER_VM`]
/// (the margin covers the allocator's fragmentation). Within the ABI ceilings; at
/// least 1 vCPU and 0 descendants.
pub fn heap_bounded(heap_bytes: u64, fixed: u64, per_vcpu: u64) -> (u32, u32) {
    let spare = heap_bytes.saturating_sub(fixed);
    let vcpus = (spare / 4) / per_vcpu.max(1);
    let vms = (spare - spare / 4) / (HEAP_BYTES_PER_VM + HEAP_BYTES_PER_VM / 2);
    let clamp = |n: u64, max: u32| u32::try_from(n).unwrap_or(max).min(max);
    (
        clamp(vcpus, limits::MAX_VCPUS).max(1),
        clamp(vms, limits::MAX_DESCENDANTS),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_bounds_the_root_quota() {
        // About 152 KiB of tree state per VM at the current limits, and up to 8
        // virtio transports (under 1 KiB each, their definitions, a virtual PLIC).
        let transport = core::mem::size_of::<crate::virtio_mmio::Transport>();
        assert!(transport < 1024, "{transport}");
        assert_eq!(
            HEAP_BYTES_PER_VM as usize,
            16384 + 4096 + 2 * 16 * 4160 + 64 * 64 + 4096 + 8 * (transport + 256 + 64) + 4096
        );
        // 32 MiB with 8 MiB fixed: 6 MiB for 2 KiB vCPUs, 18 MiB for VMs.
        let (vcpus, vms) = heap_bounded(32 << 20, 8 << 20, 2048);
        assert_eq!(vcpus, 3072);
        assert_eq!(vms as u64, (18 << 20) / (HEAP_BYTES_PER_VM * 3 / 2));
        assert!(u64::from(vms) * HEAP_BYTES_PER_VM * 3 / 2 <= 18 << 20);
        // A heap smaller than the fixed part backs one vCPU and no descendant.
        assert_eq!(heap_bounded(1 << 20, 8 << 20, 2048), (1, 0));
        // Never above the ABI's ceilings.
        assert_eq!(
            heap_bounded(u64::MAX, 0, 1),
            (limits::MAX_VCPUS, limits::MAX_DESCENDANTS)
        );
    }
}
