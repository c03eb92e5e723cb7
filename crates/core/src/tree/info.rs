//! What a VM may learn: GET_INFO and GET_CHILD_INFO about itself or a child,
//! GET_HV_INFO about the host, and the CIDs of its children (LIST_CHILDREN).
//!
//! Every answer is built from the caller's own node and its direct children: RAM totals
//! are the caller's quota and headroom, never host-wide figures that would reveal what
//! other VMs hold.

use alloc::vec::Vec;

use diosix_abi::{flags, VmInfo};

use super::{HostFacts, SbiError, VmId, VmTree};

impl VmTree {
    /// GET_INFO / GET_CHILD_INFO: quota, usage and state of the caller (`cid` 1) or one
    /// of its children, as the ABI structure. The parent is `Denied`.
    pub fn info(&self, caller: VmId, cid: u64) -> Result<VmInfo, SbiError> {
        let target = self.resolve_self_or_child(caller, cid)?;
        let n = self.node(target)?;
        let r = self.reserved(target)?;
        let mut fl = 0;
        if n.trusted {
            fl |= flags::INFO_TRUSTED;
        }
        if n.parent.is_none() {
            fl |= flags::INFO_ROOT;
        }
        Ok(VmInfo {
            size: VmInfo::SIZE as u32,
            flags: fl,
            cid,
            ram_pages_max: n.quota.ram_pages,
            ram_pages_used: n.subtree.pages,
            ram_pages_reserved: r.pages,
            own_ram_pages: n.own.ram_pages,
            own_table_pages: n.own.table_pages,
            vcpus_max: n.quota.vcpus,
            vcpus_used: n.subtree.vcpus,
            vcpus_reserved: r.vcpus,
            own_vcpus: n.own.vcpus,
            max_priority: n.quota.max_priority,
            priority: n.priority,
            max_depth: n.quota.max_depth,
            depth_used: self.depth_used(target),
            max_descendants: n.quota.max_descendants,
            descendants_used: n.subtree.descendants,
            descendants_reserved: r.descendants,
            child_count: n.children.len() as u32,
            state: n.state.abi_state(),
            console_pending: n.console_out.len() as u32,
            console_dropped: n.console_out.dropped(),
            // Where the VM's memory is belongs to the host; dispatch fills these in.
            ram_gpa: 0,
            entry_gpa: 0,
            dtb_gpa: 0,
        })
    }

    /// GET_HV_INFO: host facts plus the caller's own RAM view (its quota and headroom)
    /// in place of host-wide totals, which would reveal what other VMs hold.
    pub fn hv_info(&self, caller: VmId, host: &HostFacts) -> Result<diosix_abi::HvInfo, SbiError> {
        let n = self.node(caller)?;
        let r = self.reserved(caller)?;
        Ok(diosix_abi::HvInfo {
            size: diosix_abi::HvInfo::SIZE as u32,
            abi_version: diosix_abi::ext::ABI_VERSION,
            hv_version: host.hv_version,
            features: host.features,
            host_cores: host.host_cores,
            reserved: 0,
            timer_freq_hz: host.timer_freq_hz,
            ram_total_pages: n.quota.ram_pages,
            ram_free_pages: n.quota.ram_pages.saturating_sub(r.pages),
        })
    }

    /// The caller's live children's CIDs, ascending.
    pub fn child_cids(&self, caller: VmId) -> Result<Vec<u64>, SbiError> {
        Ok(self.node(caller)?.children.keys().copied().collect())
    }
}
