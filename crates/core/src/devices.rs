//! Host device ownership: which VM holds which handable host device.
//!
//! The hypervisor hands host devices (MMIO regions and PLIC interrupt sources) to
//! trusted VMs through MAP_HOST_MMIO and ROUTE_IRQ. This module is the bookkeeping
//! only: it touches no hardware and no page table. The hypervisor checks trust and the
//! guest-physical side, does the G-stage mapping and the host PLIC routing, and asks
//! this table whether the host side of the request is allowed.
//!
//! Each device has a *holder*: `None` is the host's free pool, `Some(vm)` a VM's pool.
//! A device is *busy* when one of its regions is mapped or one of its IRQs routed; only
//! its holder can have anything of it mapped or routed. For a caller `vm` whose parent
//! is `parent` (`None` for the Root VM), a device is *available* when
//!
//! * it is in the host pool (holder `None`), or
//! * `vm` holds it, or
//! * `vm`'s parent holds it and it is idle there (not busy): a trusted child may take
//!   a device its parent holds but does not use.
//!
//! Taking a device (the first map or route of an available device) makes `vm` its
//! holder. [`DeviceTable::release`] gives everything a VM holds back to its parent's
//! pool (death, DROP_TRUST) or to the host pool, with nothing mapped or routed.

use alloc::vec;
use alloc::vec::Vec;

use crate::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use crate::sbi::SbiError;
use crate::tree::VmId;

/// Highest PLIC source number (`riscv,ndev` of the largest PLIC).
pub const MAX_IRQ: u32 = 1023;

/// One host device the hypervisor may hand to a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Its MMIO regions: non-empty, 4 KiB aligned at both ends (rounded out by the
    /// caller), overlapping no other region of any device.
    pub mmio: Vec<Range<Hpa>>,
    /// Its host PLIC sources: in `1..=ndev`, each belonging to one device only.
    pub irqs: Vec<u32>,
}

/// Why a [`DeviceTable`] could not be built. `device` and `region` are indices into
/// the specs and their `mmio` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTableError {
    /// The host PLIC's source count is 0 or above [`MAX_IRQ`].
    BadSourceCount(u32),
    /// A device with neither an MMIO region nor an IRQ.
    EmptyDevice {
        /// The device.
        device: usize,
    },
    /// An empty region, or one not 4 KiB aligned at both ends.
    BadRegion {
        /// The device.
        device: usize,
        /// The region.
        region: usize,
    },
    /// A region overlapping another region (of this or another device).
    Overlap {
        /// The device.
        device: usize,
        /// The region.
        region: usize,
    },
    /// An IRQ that is 0 or above the source count.
    BadIrq {
        /// The device.
        device: usize,
        /// The IRQ.
        irq: u32,
    },
    /// An IRQ listed twice (by two devices, or twice by one).
    DuplicateIrq {
        /// The device naming it the second time.
        device: usize,
        /// The IRQ.
        irq: u32,
    },
}

#[derive(Clone, Debug)]
struct Region {
    range: Range<Hpa>,
    mapped: Option<Gpa>,
}

/// The state of one handable device (read-only outside this module).
#[derive(Clone, Debug)]
pub struct Device {
    holder: Option<VmId>,
    /// The holder before the device last went from idle to busy, restored if a
    /// rollback leaves it idle again.
    idle_holder: Option<VmId>,
    regions: Vec<Region>,
    irqs: Vec<u32>,
}

impl Device {
    /// The VM whose pool holds the device, or `None` for the host pool.
    pub fn holder(&self) -> Option<VmId> {
        self.holder
    }

    /// Its MMIO regions, each with the GPA it is mapped at (if it is).
    pub fn regions(&self) -> impl Iterator<Item = (Range<Hpa>, Option<Gpa>)> + '_ {
        self.regions.iter().map(|r| (r.range, r.mapped))
    }

    /// Its host PLIC sources, in the order of its spec.
    pub fn irqs(&self) -> &[u32] {
        &self.irqs
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct IrqSlot {
    /// The device owning this source, if it is handable.
    device: Option<usize>,
    /// Routed to the device's holder.
    routed: bool,
}

/// What [`DeviceTable::release`] took from a VM: the hypervisor unmaps these regions
/// from its G-stage tables and unroutes these IRQs (completing any the guest holds
/// claimed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Each region that was mapped, with the GPA it was mapped at.
    pub mmio: Vec<(Range<Hpa>, Gpa)>,
    /// Each IRQ that was routed.
    pub irqs: Vec<u32>,
}

impl Released {
    /// True when nothing was mapped or routed.
    pub fn is_empty(&self) -> bool {
        self.mmio.is_empty() && self.irqs.is_empty()
    }
}

/// How RELEASE_DEVICE names a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRef {
    /// By the HPA of (the first page of) one of its register windows.
    Window(Hpa),
    /// By one of its host interrupt numbers.
    Irq(u32),
}

/// Which VM holds which handable host device, what of it is mapped where, and which
/// of its IRQs are routed.
#[derive(Clone, Debug)]
pub struct DeviceTable {
    devices: Vec<Device>,
    /// `(start, device, region)` of every region, sorted by start.
    by_start: Vec<(Hpa, usize, usize)>,
    /// Indexed by IRQ, `0..=ndev`.
    irqs: Vec<IrqSlot>,
    ndev: u32,
}

impl DeviceTable {
    /// A table of `specs`, every device in the host pool with nothing mapped or routed.
    /// `ndev` is the host PLIC's source count. Refuses malformed or overlapping
    /// regions, IRQs out of `1..=ndev` or named twice, and empty devices.
    pub fn new(specs: Vec<DeviceSpec>, ndev: u32) -> Result<Self, DeviceTableError> {
        if ndev == 0 || ndev > MAX_IRQ {
            return Err(DeviceTableError::BadSourceCount(ndev));
        }
        let mut irqs = vec![IrqSlot::default(); ndev as usize + 1];
        let mut by_start = Vec::new();
        let mut devices = Vec::with_capacity(specs.len());
        for (device, spec) in specs.into_iter().enumerate() {
            if spec.mmio.is_empty() && spec.irqs.is_empty() {
                return Err(DeviceTableError::EmptyDevice { device });
            }
            for (region, r) in spec.mmio.iter().enumerate() {
                if r.is_empty()
                    || !r.start().is_page_aligned()
                    || !r.len().is_multiple_of(PAGE_SIZE)
                {
                    return Err(DeviceTableError::BadRegion { device, region });
                }
                by_start.push((r.start(), device, region));
            }
            for &irq in &spec.irqs {
                let slot = irqs
                    .get_mut(irq as usize)
                    .filter(|_| irq != 0)
                    .ok_or(DeviceTableError::BadIrq { device, irq })?;
                if slot.device.is_some() {
                    return Err(DeviceTableError::DuplicateIrq { device, irq });
                }
                slot.device = Some(device);
            }
            devices.push(Device {
                holder: None,
                idle_holder: None,
                regions: spec
                    .mmio
                    .into_iter()
                    .map(|range| Region {
                        range,
                        mapped: None,
                    })
                    .collect(),
                irqs: spec.irqs,
            });
        }
        by_start.sort_unstable_by_key(|&(start, _, _)| start);
        let table = Self {
            devices,
            by_start,
            irqs,
            ndev,
        };
        let mut previous_end: Option<Hpa> = None;
        for &(start, device, region) in &table.by_start {
            if previous_end.is_some_and(|end| end > start) {
                return Err(DeviceTableError::Overlap { device, region });
            }
            previous_end = table.region(device, region).map(|r| r.range.end());
        }
        Ok(table)
    }

    /// The host PLIC's source count.
    pub fn ndev(&self) -> u32 {
        self.ndev
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when there is no handable device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Device `index` (its position in the specs), if it exists.
    pub fn device(&self, index: usize) -> Option<&Device> {
        self.devices.get(index)
    }

    /// Every device with its index.
    pub fn devices(&self) -> impl Iterator<Item = (usize, &Device)> + '_ {
        self.devices.iter().enumerate()
    }

    /// The devices `vm` holds (mapped, routed or idle in its pool), with their indices.
    pub fn held_by(&self, vm: VmId) -> impl Iterator<Item = (usize, &Device)> + '_ {
        self.devices().filter(move |(_, d)| d.holder == Some(vm))
    }

    /// The device `irq` belongs to, if it is a handable device's.
    pub fn device_of_irq(&self, irq: u32) -> Option<usize> {
        self.irqs.get(irq as usize).and_then(|s| s.device)
    }

    /// The VM `irq` is routed to, if it is routed. O(1): for the interrupt path.
    pub fn owner_of_irq(&self, irq: u32) -> Option<VmId> {
        let slot = self.irqs.get(irq as usize)?;
        if !slot.routed {
            return None;
        }
        self.devices.get(slot.device?)?.holder
    }

    fn region(&self, device: usize, region: usize) -> Option<&Region> {
        self.devices.get(device)?.regions.get(region)
    }

    /// The `(device, region)` whose region is exactly `[hpa, hpa + size)`.
    fn find_region(&self, hpa: Hpa, size: u64) -> Option<(usize, usize)> {
        let i = self
            .by_start
            .binary_search_by_key(&hpa, |&(start, _, _)| start)
            .ok()?;
        let &(_, device, region) = self.by_start.get(i)?;
        let r = self.region(device, region)?;
        (r.range.len() == size).then_some((device, region))
    }

    /// True when something of `device` is mapped or routed.
    fn busy(&self, device: usize) -> bool {
        let Some(d) = self.devices.get(device) else {
            return false;
        };
        d.regions.iter().any(|r| r.mapped.is_some())
            || d.irqs
                .iter()
                .any(|&irq| self.irqs.get(irq as usize).is_some_and(|s| s.routed))
    }

    fn available(&self, device: usize, vm: VmId, parent: Option<VmId>) -> bool {
        let Some(d) = self.devices.get(device) else {
            return false;
        };
        match d.holder {
            None => true,
            Some(h) if h == vm => true,
            Some(h) => parent == Some(h) && !self.busy(device),
        }
    }

    /// Makes `vm` the holder of an available `device` about to get something mapped or
    /// routed, remembering the previous holder if it was idle.
    fn take(&mut self, device: usize, vm: VmId) {
        let idle = !self.busy(device);
        if let Some(d) = self.devices.get_mut(device) {
            if idle {
                d.idle_holder = d.holder;
            }
            d.holder = Some(vm);
        }
    }

    /// After a rollback: a device left idle goes back to its holder from before.
    fn settle(&mut self, device: usize) {
        if !self.busy(device) {
            if let Some(d) = self.devices.get_mut(device) {
                d.holder = d.idle_holder;
            }
        }
    }

    /// MAP_HOST_MMIO's host side: records that `vm` (child of `parent`, `None` for
    /// the Root VM) maps the region `[hpa, hpa + size)` at `gpa`, taking its device if
    /// it is not yet `vm`'s.
    ///
    /// Errors: `InvalidAddress` unless the range is exactly one whole region of one
    /// handable device (hypervisor devices, RAM, part of a region, two regions, a
    /// wrapping range); `AlreadyAvailable` if `vm` has it mapped already; `Denied` if
    /// the device is not available to `vm`. A refused call changes nothing. The caller
    /// checks the GPA side and, if its G-stage mapping fails, calls
    /// [`unmap_mmio`](Self::unmap_mmio) to roll back.
    pub fn map_mmio(
        &mut self,
        vm: VmId,
        parent: Option<VmId>,
        hpa: Hpa,
        gpa: Gpa,
        size: u64,
    ) -> Result<(), SbiError> {
        if size == 0 || hpa.checked_add(size).is_none() {
            return Err(SbiError::InvalidAddress);
        }
        let (device, region) = self
            .find_region(hpa, size)
            .ok_or(SbiError::InvalidAddress)?;
        let mapped = self.region(device, region).and_then(|r| r.mapped).is_some();
        let holder = self.devices.get(device).and_then(|d| d.holder);
        if mapped && holder == Some(vm) {
            return Err(SbiError::AlreadyAvailable);
        }
        if !self.available(device, vm, parent) {
            return Err(SbiError::Denied);
        }
        self.take(device, vm);
        if let Some(r) = self
            .devices
            .get_mut(device)
            .and_then(|d| d.regions.get_mut(region))
        {
            r.mapped = Some(gpa);
        }
        Ok(())
    }

    /// Rolls back a [`map_mmio`](Self::map_mmio) of `[hpa, hpa + size)` by `vm`: the
    /// region stops being mapped and, if that leaves its device idle, the device goes
    /// back to the holder it had before it became busy. Returns the GPA it was mapped
    /// at, or `None` (and changes nothing) if `vm` has no such region mapped.
    pub fn unmap_mmio(&mut self, vm: VmId, hpa: Hpa, size: u64) -> Option<Gpa> {
        let (device, region) = self.find_region(hpa, size)?;
        let d = self.devices.get_mut(device)?;
        if d.holder != Some(vm) {
            return None;
        }
        let gpa = d.regions.get_mut(region)?.mapped.take()?;
        self.settle(device);
        Some(gpa)
    }

    /// ROUTE_IRQ's host side: records that host PLIC source `irq` is routed to `vm`
    /// (child of `parent`, `None` for the Root VM), taking its device if it is not yet
    /// `vm`'s.
    ///
    /// Errors: `InvalidParam` if `irq` is 0 or above the source count; `Denied` if it
    /// belongs to no handable device (e.g. the hypervisor's UART) or its device is not
    /// available to `vm`; `AlreadyAvailable` if it is routed to `vm` already. A refused
    /// call changes nothing.
    pub fn route_irq(&mut self, vm: VmId, parent: Option<VmId>, irq: u32) -> Result<(), SbiError> {
        if irq == 0 || irq > self.ndev {
            return Err(SbiError::InvalidParam);
        }
        let slot = self
            .irqs
            .get(irq as usize)
            .copied()
            .ok_or(SbiError::InvalidParam)?;
        let device = slot.device.ok_or(SbiError::Denied)?;
        if slot.routed && self.owner_of_irq(irq) == Some(vm) {
            return Err(SbiError::AlreadyAvailable);
        }
        if !self.available(device, vm, parent) {
            return Err(SbiError::Denied);
        }
        self.take(device, vm);
        if let Some(s) = self.irqs.get_mut(irq as usize) {
            s.routed = true;
        }
        Ok(())
    }

    /// Rolls back a [`route_irq`](Self::route_irq) of `irq` by `vm`, like
    /// [`unmap_mmio`](Self::unmap_mmio). Returns false (and changes nothing) if `irq`
    /// is not routed to `vm`.
    pub fn unroute_irq(&mut self, vm: VmId, irq: u32) -> bool {
        if self.owner_of_irq(irq) != Some(vm) {
            return false;
        }
        let Some(slot) = self.irqs.get_mut(irq as usize) else {
            return false;
        };
        slot.routed = false;
        if let Some(device) = slot.device {
            self.settle(device);
        }
        true
    }

    /// Takes every device `vm` holds away from it: each goes to `to`'s pool (its parent
    /// on death or DROP_TRUST; `None` = the host pool), with nothing mapped or routed.
    /// Returns what the hypervisor must unmap and unroute.
    ///
    /// Release a dying subtree from the leaves up (children before their parent), so
    /// that `to` is always a VM that is still alive; a device handed to a dead VM's id
    /// would be unavailable to every VM.
    pub fn release(&mut self, vm: VmId, to: Option<VmId>) -> Released {
        let mut out = Released::default();
        for device in 0..self.devices.len() {
            if self.devices.get(device).and_then(|d| d.holder) == Some(vm) {
                self.give_back(device, to, &mut out);
            }
        }
        out
    }

    /// RELEASE_DEVICE's host side: the one device `named` goes from `vm` to `to`'s
    /// pool (its parent's; `None` = the host pool), with nothing of it mapped or routed.
    /// Returns what the hypervisor must unmap and unroute.
    ///
    /// Errors: `InvalidAddress` unless a window is the start of one of a handable
    /// device's regions; `InvalidParam` unless an interrupt belongs to a handable
    /// device; `Denied` if `vm` does not hold the device. A refused call changes
    /// nothing.
    pub fn release_device(
        &mut self,
        vm: VmId,
        named: DeviceRef,
        to: Option<VmId>,
    ) -> Result<Released, SbiError> {
        let device = match named {
            DeviceRef::Window(hpa) => {
                let i = self
                    .by_start
                    .binary_search_by_key(&hpa, |&(start, _, _)| start)
                    .map_err(|_| SbiError::InvalidAddress)?;
                self.by_start.get(i).ok_or(SbiError::InvalidAddress)?.1
            }
            DeviceRef::Irq(irq) => self.device_of_irq(irq).ok_or(SbiError::InvalidParam)?,
        };
        if self.devices.get(device).and_then(|d| d.holder) != Some(vm) {
            return Err(SbiError::Denied);
        }
        let mut out = Released::default();
        self.give_back(device, to, &mut out);
        Ok(out)
    }

    /// Unmaps and unroutes all of `device` (recording what was, in `out`) and puts it
    /// in `to`'s pool.
    fn give_back(&mut self, device: usize, to: Option<VmId>, out: &mut Released) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        for r in &mut d.regions {
            if let Some(gpa) = r.mapped.take() {
                out.mmio.push((r.range, gpa));
            }
        }
        for &irq in &d.irqs {
            if let Some(s) = self.irqs.get_mut(irq as usize) {
                if s.routed {
                    s.routed = false;
                    out.irqs.push(irq);
                }
            }
        }
        d.holder = to;
        d.idle_holder = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{ChildRequest, Quota, Usage, VmState, VmTree};
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    use proptest::prelude::*;

    /// A small tree: `[root, a, b, a1, a2]` (a and b children of root, a1 and a2 of
    /// a), with each VM's parent.
    fn vms() -> ([VmId; 5], [Option<VmId>; 5]) {
        let (mut t, root) = VmTree::new(
            Quota::everything(100_000, 64),
            Usage {
                ram_pages: 1000,
                table_pages: 10,
                vcpus: 2,
            },
            10,
        )
        .unwrap();
        let req = |children: u32| ChildRequest {
            ram_pages: 10,
            table_pages: 4,
            vcpus: 1,
            priority: 5,
            trusted: false,
            quota: if children > 0 {
                Quota {
                    ram_pages: 500,
                    vcpus: 8,
                    max_priority: 10,
                    max_depth: 1,
                    max_descendants: children,
                }
            } else {
                Quota::default()
            },
            initial_state: VmState::Running,
            name: String::from("t"),
        };
        let (a, _) = t.create_child(root, req(2)).unwrap();
        let (b, _) = t.create_child(root, req(0)).unwrap();
        let (a1, _) = t.create_child(a, req(0)).unwrap();
        let (a2, _) = t.create_child(a, req(0)).unwrap();
        (
            [root, a, b, a1, a2],
            [None, Some(root), Some(root), Some(a), Some(a)],
        )
    }

    fn range(start: u64, len: u64) -> Range<Hpa> {
        Range::new(Hpa::new(start), len).unwrap()
    }

    /// Device 0: two regions and IRQs 1, 2. Device 1: one region, IRQ 3. Device 2:
    /// IRQ 5 only. IRQ 4 and 10 are the hypervisor's.
    fn specs() -> Vec<DeviceSpec> {
        vec![
            DeviceSpec {
                mmio: vec![range(0x1000_0000, 0x1000), range(0x1000_2000, 0x2000)],
                irqs: vec![1, 2],
            },
            DeviceSpec {
                mmio: vec![range(0x1000_1000, 0x1000)],
                irqs: vec![3],
            },
            DeviceSpec {
                mmio: vec![],
                irqs: vec![5],
            },
        ]
    }

    fn table() -> DeviceTable {
        DeviceTable::new(specs(), 10).unwrap()
    }

    const G: Gpa = Gpa::new(0x4000_0000);

    #[test]
    fn construction_refuses_bad_specs() {
        let t = table();
        assert_eq!((t.len(), t.ndev(), t.is_empty()), (3, 10, false));
        assert!(DeviceTable::new(vec![], 1).unwrap().is_empty());
        assert_eq!(
            DeviceTable::new(specs(), 0).unwrap_err(),
            DeviceTableError::BadSourceCount(0)
        );
        assert_eq!(
            DeviceTable::new(specs(), 1024).unwrap_err(),
            DeviceTableError::BadSourceCount(1024)
        );
        // IRQ 5 is above ndev 4.
        assert_eq!(
            DeviceTable::new(specs(), 4).unwrap_err(),
            DeviceTableError::BadIrq { device: 2, irq: 5 }
        );
        let with = |extra: DeviceSpec| {
            let mut s = specs();
            s.push(extra);
            DeviceTable::new(s, 10).unwrap_err()
        };
        let irq_only = |irqs: Vec<u32>| DeviceSpec { mmio: vec![], irqs };
        let mmio_only = |mmio: Vec<Range<Hpa>>| DeviceSpec { mmio, irqs: vec![] };
        assert_eq!(
            with(irq_only(vec![0])),
            DeviceTableError::BadIrq { device: 3, irq: 0 }
        );
        assert_eq!(
            with(irq_only(vec![3])),
            DeviceTableError::DuplicateIrq { device: 3, irq: 3 }
        );
        assert_eq!(
            with(irq_only(vec![6, 6])),
            DeviceTableError::DuplicateIrq { device: 3, irq: 6 }
        );
        assert_eq!(
            with(irq_only(vec![])),
            DeviceTableError::EmptyDevice { device: 3 }
        );
        for bad in [
            range(0x2000_0000, 0),
            range(0x2000_0800, 0x1000),
            range(0x2000_0000, 0x800),
        ] {
            assert_eq!(
                with(mmio_only(vec![range(0x3000_0000, 0x1000), bad])),
                DeviceTableError::BadRegion {
                    device: 3,
                    region: 1
                }
            );
        }
        // Overlaps with another device's region, and within one device.
        assert_eq!(
            with(mmio_only(vec![range(0x0fff_f000, 0x2000)])),
            DeviceTableError::Overlap {
                device: 0,
                region: 0
            }
        );
        assert!(matches!(
            with(mmio_only(vec![range(0x1000_3000, 0x1000)])),
            DeviceTableError::Overlap { .. }
        ));
        assert!(matches!(
            with(mmio_only(vec![
                range(0x5000_0000, 0x3000),
                range(0x5000_2000, 0x1000)
            ])),
            DeviceTableError::Overlap { device: 3, .. }
        ));
        // Adjacent regions are fine.
        let mut s = specs();
        s.push(mmio_only(vec![
            range(0x1000_4000, 0x1000),
            range(0x0fff_f000, 0x1000),
        ]));
        DeviceTable::new(s, 10).unwrap();
    }

    #[test]
    fn map_needs_exactly_one_whole_region() {
        let ([root, ..], _) = vms();
        let mut t = table();
        let bad = [
            (0x1000_0000, 0),         // empty
            (0x1000_0000, 0x800),     // part of a region
            (0x1000_2000, 0x1000),    // first half of a region
            (0x1000_3000, 0x1000),    // second half
            (0x1000_0000, 0x2000),    // two regions of two devices
            (0x1000_0000, 0x4000),    // straddling three
            (0x8000_0000, 0x1000),    // RAM
            (0x0c00_0000, 0x40_0000), // the host PLIC
            (0x1000_0000, u64::MAX),  // wrapping
            (!0xfff, 0x2000),         // wrapping
        ];
        for (hpa, size) in bad {
            assert_eq!(
                t.map_mmio(root, None, Hpa::new(hpa), G, size),
                Err(SbiError::InvalidAddress),
                "{hpa:#x} + {size:#x}"
            );
        }
        assert!(t.devices().all(|(_, d)| d.holder().is_none()));
        assert_eq!(
            t.map_mmio(root, None, Hpa::new(0x1000_2000), G, 0x2000),
            Ok(())
        );
        assert_eq!(
            t.map_mmio(root, None, Hpa::new(0x1000_2000), G, 0x2000),
            Err(SbiError::AlreadyAvailable)
        );
        // The same device's other region can be mapped too.
        assert_eq!(
            t.map_mmio(root, None, Hpa::new(0x1000_0000), G, 0x1000),
            Ok(())
        );
        let d = t.device(0).unwrap();
        assert_eq!(d.holder(), Some(root));
        assert_eq!(
            d.regions().collect::<Vec<_>>(),
            [
                (range(0x1000_0000, 0x1000), Some(G)),
                (range(0x1000_2000, 0x2000), Some(G))
            ]
        );
        assert_eq!(d.irqs(), [1, 2]);
    }

    #[test]
    fn route_rules() {
        let ([root, a, b, ..], _) = vms();
        let mut t = table();
        for irq in [0, 11, u32::MAX] {
            assert_eq!(t.route_irq(root, None, irq), Err(SbiError::InvalidParam));
        }
        for irq in [4, 10] {
            assert_eq!(t.route_irq(root, None, irq), Err(SbiError::Denied));
        }
        assert_eq!(t.route_irq(a, Some(root), 5), Ok(()));
        assert_eq!(t.owner_of_irq(5), Some(a));
        assert_eq!(
            t.route_irq(a, Some(root), 5),
            Err(SbiError::AlreadyAvailable)
        );
        assert_eq!(t.route_irq(b, Some(root), 5), Err(SbiError::Denied));
        assert_eq!(t.route_irq(root, None, 5), Err(SbiError::Denied));
        // Routing IRQ 1 takes device 0, so its other IRQ and regions are a's only.
        assert_eq!(t.route_irq(a, Some(root), 1), Ok(()));
        assert_eq!(t.owner_of_irq(2), None, "held but not routed");
        assert_eq!(t.route_irq(b, Some(root), 2), Err(SbiError::Denied));
        assert_eq!(
            t.map_mmio(b, Some(root), Hpa::new(0x1000_0000), G, 0x1000),
            Err(SbiError::Denied)
        );
        assert_eq!(t.route_irq(a, Some(root), 2), Ok(()));
        assert_eq!(t.device_of_irq(2), Some(0));
        assert_eq!(t.device_of_irq(4), None);
        assert_eq!(t.device_of_irq(9999), None);
        assert_eq!(t.owner_of_irq(9999), None);
    }

    #[test]
    fn a_child_may_take_what_its_parent_holds_idle() {
        let ([root, a, b, a1, a2], _) = vms();
        let mut t = table();
        let hpa = Hpa::new(0x1000_1000);
        // a takes device 1 and uses it: its children are denied.
        assert_eq!(t.map_mmio(a, Some(root), hpa, G, 0x1000), Ok(()));
        assert_eq!(t.route_irq(a1, Some(a), 3), Err(SbiError::Denied));
        assert_eq!(
            t.map_mmio(a1, Some(a), hpa, G, 0x1000),
            Err(SbiError::Denied)
        );
        // Rolled back, the device is back in the host pool.
        assert_eq!(t.unmap_mmio(a, hpa, 0x1000), Some(G));
        assert_eq!(t.device(1).unwrap().holder(), None);
        // a1 takes it from the host pool; a1 dies: it goes to a's pool, idle.
        assert_eq!(t.route_irq(a1, Some(a), 3), Ok(()));
        assert_eq!(t.device(1).unwrap().holder(), Some(a1));
        let r = t.release(a1, Some(a));
        assert_eq!(r.irqs, [3]);
        assert!(r.mmio.is_empty() && !r.is_empty());
        assert_eq!(t.device(1).unwrap().holder(), Some(a));
        assert_eq!(t.owner_of_irq(3), None);
        // Idle in a's pool: a2 (a's child) may take it, b (not a's child) may not.
        assert_eq!(t.route_irq(b, Some(root), 3), Err(SbiError::Denied));
        assert_eq!(
            t.map_mmio(b, Some(root), hpa, G, 0x1000),
            Err(SbiError::Denied)
        );
        assert_eq!(t.map_mmio(a2, Some(a), hpa, G, 0x1000), Ok(()));
        assert_eq!(t.device(1).unwrap().holder(), Some(a2));
        // Now a2 uses it: a itself no longer holds it.
        assert_eq!(t.route_irq(a, Some(root), 3), Err(SbiError::Denied));
        assert_eq!(t.held_by(a).count(), 0);
        assert_eq!(t.held_by(a2).map(|(i, _)| i).collect::<Vec<_>>(), [1]);
        // A rollback returns it to a's pool (where it was before it became busy).
        assert_eq!(t.unmap_mmio(a2, hpa, 0x1000), Some(G));
        assert_eq!(t.device(1).unwrap().holder(), Some(a));
        // a takes it back itself.
        assert_eq!(t.route_irq(a, Some(root), 3), Ok(()));
        assert_eq!(t.owner_of_irq(3), Some(a));
    }

    #[test]
    fn rollback_only_undoes_the_callers_own_mapping() {
        let ([root, a, ..], _) = vms();
        let mut t = table();
        let hpa = Hpa::new(0x1000_0000);
        assert_eq!(t.unmap_mmio(root, hpa, 0x1000), None);
        assert_eq!(t.map_mmio(root, None, hpa, G, 0x1000), Ok(()));
        assert_eq!(t.route_irq(root, None, 1), Ok(()));
        assert_eq!(t.unmap_mmio(a, hpa, 0x1000), None);
        assert_eq!(t.unmap_mmio(root, hpa, 0x800), None);
        assert!(!t.unroute_irq(a, 1));
        assert!(!t.unroute_irq(root, 2));
        assert!(!t.unroute_irq(root, 9999));
        // Still busy through IRQ 1: the holder stays.
        assert_eq!(t.unmap_mmio(root, hpa, 0x1000), Some(G));
        assert_eq!(t.device(0).unwrap().holder(), Some(root));
        assert!(t.unroute_irq(root, 1));
        assert_eq!(t.device(0).unwrap().holder(), None);
        assert_eq!(t.owner_of_irq(1), None);
    }

    #[test]
    fn an_idle_device_held_by_the_caller_stays_its_own_after_rollback() {
        let ([root, a, ..], _) = vms();
        let mut t = table();
        assert_eq!(t.route_irq(a, Some(root), 5), Ok(()));
        assert!(t.unroute_irq(a, 5));
        assert_eq!(t.device(2).unwrap().holder(), None);
        assert_eq!(t.route_irq(a, Some(root), 5), Ok(()));
        t.release(a, Some(root));
        // Idle in root's pool; root maps then rolls back: still root's.
        assert_eq!(t.route_irq(root, None, 5), Ok(()));
        assert!(t.unroute_irq(root, 5));
        assert_eq!(t.device(2).unwrap().holder(), Some(root));
    }

    #[test]
    fn release_takes_everything_and_leaves_nothing_behind() {
        let ([root, a, b, ..], _) = vms();
        let mut t = table();
        let g2 = Gpa::new(0x5000_0000);
        t.map_mmio(a, Some(root), Hpa::new(0x1000_2000), g2, 0x2000)
            .unwrap();
        t.route_irq(a, Some(root), 2).unwrap();
        t.route_irq(a, Some(root), 5).unwrap();
        t.route_irq(b, Some(root), 3).unwrap();
        let r = t.release(a, None);
        assert_eq!(r.mmio, [(range(0x1000_2000, 0x2000), g2)]);
        assert_eq!(r.irqs, [2, 5]);
        assert_eq!(t.held_by(a).count(), 0);
        assert_eq!(t.owner_of_irq(2), None);
        assert_eq!(t.owner_of_irq(5), None);
        assert_eq!(t.owner_of_irq(3), Some(b));
        assert_eq!(t.device(0).unwrap().holder(), None);
        assert!(t.device(0).unwrap().regions().all(|(_, m)| m.is_none()));
        assert!(t.release(a, None).is_empty());
        // Back in the host pool: anyone may take it.
        assert_eq!(t.route_irq(b, Some(root), 1), Ok(()));
    }

    #[test]
    fn release_device_gives_back_one_device_to_the_parent_pool() {
        let ([root, a, b, a1, _], _) = vms();
        let mut t = table();
        let g = Gpa::new(0x5000_0000);
        t.map_mmio(a, Some(root), Hpa::new(0x1000_2000), g, 0x2000)
            .unwrap();
        t.route_irq(a, Some(root), 1).unwrap();
        t.route_irq(a, Some(root), 3).unwrap();
        // Naming: a window's first page, or an interrupt, of a handable device.
        let named = |hpa| DeviceRef::Window(Hpa::new(hpa));
        assert_eq!(
            t.release_device(a, named(0x1000_3000), Some(root)),
            Err(SbiError::InvalidAddress)
        );
        assert_eq!(
            t.release_device(a, DeviceRef::Irq(4), Some(root)),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            t.release_device(a, DeviceRef::Irq(0), Some(root)),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            t.release_device(a, DeviceRef::Irq(5000), Some(root)),
            Err(SbiError::InvalidParam)
        );
        // Only the holder releases.
        assert_eq!(
            t.release_device(b, named(0x1000_0000), Some(root)),
            Err(SbiError::Denied)
        );
        let r = t.release_device(a, named(0x1000_0000), Some(root)).unwrap();
        assert_eq!(r.mmio, [(range(0x1000_2000, 0x2000), g)]);
        assert_eq!(r.irqs, [1]);
        // Device 1 untouched; device 0 idle in root's pool.
        assert_eq!(t.owner_of_irq(3), Some(a));
        assert_eq!(t.device(0).unwrap().holder(), Some(root));
        assert_eq!(
            t.release_device(a, DeviceRef::Irq(2), Some(root)),
            Err(SbiError::Denied)
        );
        // Root's pool: root's other trusted children may take it, a's may not.
        assert_eq!(t.route_irq(a1, Some(a), 2), Err(SbiError::Denied));
        assert_eq!(t.route_irq(b, Some(root), 2), Ok(()));
        // By interrupt, the device with nothing routed any more still goes back.
        let r = t.release_device(b, DeviceRef::Irq(1), Some(root)).unwrap();
        assert_eq!(r.irqs, [2]);
        assert_eq!(t.device(0).unwrap().holder(), Some(root));
    }

    // ------------------------------------------------------------ property test

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            vm: usize,
            region: usize,
        },
        Route {
            vm: usize,
            irq: u32,
        },
        Unmap {
            vm: usize,
            region: usize,
        },
        Unroute {
            vm: usize,
            irq: u32,
        },
        /// Release to the parent (`true`) or to the host pool.
        Release {
            vm: usize,
            to_parent: bool,
        },
        /// RELEASE_DEVICE of the device `WINDOWS[which]` or IRQ `which` names.
        ReleaseOne {
            vm: usize,
            by_irq: bool,
            which: usize,
            to_parent: bool,
        },
    }

    /// Window HPAs RELEASE_DEVICE may name, with their device: region starts, then a
    /// page inside a region and an address no device has.
    const WINDOWS: [(u64, Option<usize>); 5] = [
        (0x1000_0000, Some(0)),
        (0x1000_2000, Some(0)),
        (0x1000_1000, Some(1)),
        (0x1000_3000, None),
        (0x2000_0000, None),
    ];

    /// `(start, len)` of every region of `specs()`, then two invalid ranges.
    const REGIONS: [(u64, u64); 5] = [
        (0x1000_0000, 0x1000),
        (0x1000_2000, 0x2000),
        (0x1000_1000, 0x1000),
        (0x1000_2000, 0x1000),
        (0x1000_0000, 0x2000),
    ];
    /// Device of each valid entry of `REGIONS`.
    const REGION_DEVICE: [usize; 3] = [0, 0, 1];
    /// Device of IRQs 0..=10 (`None`: not handable).
    const IRQ_DEVICE: [Option<usize>; 11] = [
        None,
        Some(0),
        Some(0),
        Some(1),
        None,
        Some(2),
        None,
        None,
        None,
        None,
        None,
    ];

    fn op() -> impl Strategy<Value = Op> {
        let vm = 0..5usize;
        let region = 0..REGIONS.len();
        let irq = 0..12u32;
        prop_oneof![
            4 => (vm.clone(), region.clone()).prop_map(|(vm, region)| Op::Map { vm, region }),
            4 => (vm.clone(), irq.clone()).prop_map(|(vm, irq)| Op::Route { vm, irq }),
            1 => (vm.clone(), region).prop_map(|(vm, region)| Op::Unmap { vm, region }),
            1 => (vm.clone(), irq).prop_map(|(vm, irq)| Op::Unroute { vm, irq }),
            2 => (vm.clone(), any::<bool>()).prop_map(|(vm, to_parent)| Op::Release { vm, to_parent }),
            2 => (vm, any::<bool>(), 0..12usize, any::<bool>()).prop_map(|(vm, by_irq, which, to_parent)| {
                Op::ReleaseOne { vm, by_irq, which: if by_irq { which } else { which % WINDOWS.len() }, to_parent }
            }),
        ]
    }

    /// The reference: who holds each device, and who mapped or routed what.
    #[derive(Default, Debug)]
    struct Ghost {
        holder: [Option<usize>; 3],
        /// Holder from before the device last became busy.
        idle: [Option<usize>; 3],
        mapped: BTreeMap<usize, usize>,
        routed: BTreeMap<u32, usize>,
    }

    impl Ghost {
        fn busy(&self, d: usize) -> bool {
            self.mapped.keys().any(|&r| REGION_DEVICE[r] == d)
                || self
                    .routed
                    .keys()
                    .any(|&i| IRQ_DEVICE[i as usize] == Some(d))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn holders_are_exclusive_and_release_is_complete(
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let (ids, parents) = vms();
            let parent_of = |v: usize| parents[v].map(|p| ids.iter().position(|&i| i == p).unwrap());
            let mut t = table();
            let mut g = Ghost::default();
            for op in &ops {
                match *op {
                    Op::Map { vm, region } => {
                        let (start, len) = REGIONS[region];
                        let got = t.map_mmio(ids[vm], parents[vm], Hpa::new(start), Gpa::new(vm as u64), len);
                        let expect = if region >= REGION_DEVICE.len() {
                            Err(SbiError::InvalidAddress)
                        } else {
                            let d = REGION_DEVICE[region];
                            let h = g.holder[d];
                            if g.mapped.get(&region) == Some(&vm) {
                                Err(SbiError::AlreadyAvailable)
                            } else if h.is_none() || h == Some(vm) || (h == parent_of(vm) && !g.busy(d)) {
                                Ok(())
                            } else {
                                Err(SbiError::Denied)
                            }
                        };
                        prop_assert_eq!(got, expect);
                        if got.is_ok() {
                            let d = REGION_DEVICE[region];
                            // Never mapped or routed for another VM at the same time.
                            prop_assert!(g.mapped.iter().all(|(&r, &v)| REGION_DEVICE[r] != d || v == vm));
                            prop_assert!(g.routed.iter().all(|(&i, &v)| IRQ_DEVICE[i as usize] != Some(d) || v == vm));
                            if !g.busy(d) {
                                g.idle[d] = g.holder[d];
                            }
                            g.holder[d] = Some(vm);
                            g.mapped.insert(region, vm);
                        }
                    }
                    Op::Route { vm, irq } => {
                        let got = t.route_irq(ids[vm], parents[vm], irq);
                        let expect = if irq == 0 || irq > 10 {
                            Err(SbiError::InvalidParam)
                        } else if let Some(d) = IRQ_DEVICE[irq as usize] {
                            let h = g.holder[d];
                            if g.routed.get(&irq) == Some(&vm) {
                                Err(SbiError::AlreadyAvailable)
                            } else if h.is_none() || h == Some(vm) || (h == parent_of(vm) && !g.busy(d)) {
                                Ok(())
                            } else {
                                Err(SbiError::Denied)
                            }
                        } else {
                            Err(SbiError::Denied)
                        };
                        prop_assert_eq!(got, expect);
                        if got.is_ok() {
                            let d = IRQ_DEVICE[irq as usize].unwrap();
                            prop_assert!(g.mapped.iter().all(|(&r, &v)| REGION_DEVICE[r] != d || v == vm));
                            prop_assert!(g.routed.iter().all(|(&i, &v)| IRQ_DEVICE[i as usize] != Some(d) || v == vm));
                            if !g.busy(d) {
                                g.idle[d] = g.holder[d];
                            }
                            g.holder[d] = Some(vm);
                            g.routed.insert(irq, vm);
                        }
                    }
                    Op::Unmap { vm, region } => {
                        let (start, len) = REGIONS[region];
                        let got = t.unmap_mmio(ids[vm], Hpa::new(start), len);
                        if g.mapped.get(&region) == Some(&vm) {
                            prop_assert_eq!(got, Some(Gpa::new(vm as u64)));
                            g.mapped.remove(&region);
                            let d = REGION_DEVICE[region];
                            if !g.busy(d) {
                                g.holder[d] = g.idle[d];
                            }
                        } else {
                            prop_assert_eq!(got, None);
                        }
                    }
                    Op::Unroute { vm, irq } => {
                        let got = t.unroute_irq(ids[vm], irq);
                        prop_assert_eq!(got, g.routed.get(&irq) == Some(&vm));
                        if got {
                            g.routed.remove(&irq);
                            let d = IRQ_DEVICE[irq as usize].unwrap();
                            if !g.busy(d) {
                                g.holder[d] = g.idle[d];
                            }
                        }
                    }
                    Op::Release { vm, to_parent } => {
                        let to = if to_parent { parent_of(vm) } else { None };
                        let r = t.release(ids[vm], to.map(|v| ids[v]));
                        let mut expect_mmio: Vec<(Range<Hpa>, Gpa)> = g
                            .mapped
                            .iter()
                            .filter(|&(_, &v)| v == vm)
                            .map(|(&reg, _)| (range(REGIONS[reg].0, REGIONS[reg].1), Gpa::new(vm as u64)))
                            .collect();
                        let mut got_mmio = r.mmio.clone();
                        expect_mmio.sort_by_key(|(r, _)| r.start());
                        got_mmio.sort_by_key(|(r, _)| r.start());
                        prop_assert_eq!(got_mmio, expect_mmio);
                        let mut got_irqs = r.irqs.clone();
                        got_irqs.sort_unstable();
                        let expect_irqs: Vec<u32> =
                            g.routed.iter().filter(|&(_, &v)| v == vm).map(|(&i, _)| i).collect();
                        prop_assert_eq!(got_irqs, expect_irqs);
                        g.mapped.retain(|_, v| *v != vm);
                        g.routed.retain(|_, v| *v != vm);
                        for h in &mut g.holder {
                            if *h == Some(vm) {
                                *h = to;
                            }
                        }
                        // Nothing of the VM is left behind.
                        prop_assert_eq!(t.held_by(ids[vm]).count(), 0);
                        for irq in 0..=11 {
                            prop_assert_ne!(t.owner_of_irq(irq), Some(ids[vm]));
                        }
                    }
                    Op::ReleaseOne { vm, by_irq, which, to_parent } => {
                        let to = if to_parent { parent_of(vm) } else { None };
                        let (named, device) = if by_irq {
                            (DeviceRef::Irq(which as u32), IRQ_DEVICE.get(which).copied().flatten().ok_or(SbiError::InvalidParam))
                        } else {
                            (DeviceRef::Window(Hpa::new(WINDOWS[which].0)), WINDOWS[which].1.ok_or(SbiError::InvalidAddress))
                        };
                        let got = t.release_device(ids[vm], named, to.map(|v| ids[v]));
                        let expect = device.and_then(|d| if g.holder[d] == Some(vm) { Ok(d) } else { Err(SbiError::Denied) });
                        match (got, expect) {
                            (Ok(r), Ok(d)) => {
                                let expect_regions = g.mapped.iter().filter(|&(&reg, _)| REGION_DEVICE[reg] == d).count();
                                let expect_irqs = g.routed.keys().filter(|&&i| IRQ_DEVICE[i as usize] == Some(d)).count();
                                prop_assert_eq!(r.mmio.len(), expect_regions);
                                prop_assert_eq!(r.irqs.len(), expect_irqs);
                                g.mapped.retain(|&reg, _| REGION_DEVICE[reg] != d);
                                g.routed.retain(|&i, _| IRQ_DEVICE[i as usize] != Some(d));
                                g.holder[d] = to;
                                g.idle[d] = to;
                            }
                            (Err(e), Err(x)) => prop_assert_eq!(e, x),
                            (got, expect) => prop_assert!(false, "got {:?}, expected {:?}", got, expect),
                        }
                    }
                }
                // The table agrees with the reference, and everything mapped or routed
                // belongs to its device's holder.
                for (d, dev) in t.devices() {
                    let holder = g.holder[d].map(|v| ids[v]);
                    prop_assert_eq!(dev.holder(), holder);
                    for (r, mapped) in dev.regions() {
                        let region = REGIONS.iter().position(|&(s, l)| (s, l) == (r.start().raw(), r.len())).unwrap();
                        let ghost = g.mapped.get(&region).copied();
                        prop_assert_eq!(mapped.is_some(), ghost.is_some());
                        if let Some(v) = ghost {
                            prop_assert_eq!(holder, Some(ids[v]));
                        }
                    }
                }
                for irq in 0..=11u32 {
                    let ghost = g.routed.get(&irq).map(|&v| ids[v]);
                    prop_assert_eq!(t.owner_of_irq(irq), ghost);
                    if let Some(v) = ghost {
                        let d = IRQ_DEVICE[irq as usize].unwrap();
                        prop_assert_eq!(t.device(d).unwrap().holder(), Some(v));
                    }
                }
            }
        }
    }
}
