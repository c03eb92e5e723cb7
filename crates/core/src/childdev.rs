//! A child VM's virtio devices: the transports its parent declared at SPAWN, and what
//! the parent's backend has not seen yet.
//!
//! The child's driver programs each device through its virtio-mmio window (every
//! access traps; [`ChildDevices::access`]). The parent's backend learns what happened
//! through DEVICE_STATE ([`ChildDevices::take_state`]), which takes each device's
//! *pending* bits: one per queue the child notified, and
//! [`PENDING_STATE`](diosix_abi::devices::PENDING_STATE) when the device's state
//! changed. Pending bits coalesce: a child ringing a doorbell in a tight loop sets a
//! bit that is already set, and only a device's transition from nothing pending to
//! something pending wakes the parent ([`Outcome::wake_parent`]), so the parent sees at
//! most one wake-up per DEVICE_STATE it makes, whatever the child does. The backend
//! answers with DEVICE_RAISE ([`ChildDevices::raise`]).
//!
//! Each device has one interrupt line on the child's virtual PLIC, up while its
//! InterruptStatus is not zero; [`Outcome::line`] and [`ChildDevices::raise`] report
//! when it moves, and [`ChildDevices::line`] says whether a source the child just
//! completed must be raised again.
//!
//! Everything here is fixed in size once built (at most
//! [`MAX_DEVICES`](diosix_abi::devices::MAX_DEVICES) devices, each a fixed-size
//! transport), so nothing a child does allocates.

use crate::addr::Gpa;
use crate::virtio_mmio::{self, Effect, Fault, Transport};
use alloc::vec::Vec;
use diosix_abi::devices::{
    MAX_CONFIG, MAX_DEVICES, MAX_QUEUES, MAX_QUEUE_SIZE, MMIO_BASE, MMIO_STRIDE, PENDING_STATE,
    RAISE_ALL, RAISE_CONFIG_CHANGE, RAISE_NEEDS_RESET, RAISE_USED_BUFFER,
};
use diosix_abi::{DeviceSpec, DeviceState, QueueState, SbiError};

/// The VendorID every child device reports ("DSX5", little-endian).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"DSX5");

/// Features a device never offers, whatever its parent asks: the transport does not
/// implement them (notification data, per-queue reset).
const FEATURES_NEVER: u64 =
    virtio_mmio::VIRTIO_F_NOTIFICATION_DATA | virtio_mmio::VIRTIO_F_RING_RESET;

/// One device as the parent declared it, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDef {
    /// The virtio device ID (not 0).
    pub device_id: u32,
    /// Features offered.
    pub features: u64,
    /// Number of queues.
    pub queues: usize,
    /// QueueNumMax of every queue.
    pub queue_max: u16,
    /// Initial configuration space.
    pub config: Vec<u8>,
}

impl DeviceDef {
    /// Checks a [`DeviceSpec`] (its configuration bytes not read yet): `InvalidParam`
    /// for a short `size`, device ID 0, no queues or more than
    /// [`MAX_QUEUES`], a queue size that is not a power of two in
    /// 1..=[`MAX_QUEUE_SIZE`], a configuration over [`MAX_CONFIG`] bytes, or a
    /// non-zero reserved field. Returns the definition with an empty configuration
    /// and the configuration's length, for the caller to read.
    pub fn check(spec: &DeviceSpec) -> Result<(Self, usize), SbiError> {
        let queues = spec.queue_count as usize;
        let config_len = spec.config_len as usize;
        let ok = spec.size as usize >= DeviceSpec::SIZE
            && spec.device_id != 0
            && (1..=MAX_QUEUES).contains(&queues)
            && spec.queue_max.is_power_of_two()
            && spec.queue_max <= MAX_QUEUE_SIZE
            && config_len <= MAX_CONFIG
            && spec.reserved == 0;
        if !ok {
            return Err(SbiError::InvalidParam);
        }
        let queue_max = u16::try_from(spec.queue_max).map_err(|_| SbiError::InvalidParam)?;
        Ok((
            Self {
                device_id: spec.device_id,
                features: spec.features & !FEATURES_NEVER,
                queues,
                queue_max,
                config: Vec::new(),
            },
            config_len,
        ))
    }
}

/// What the hypervisor does after a child's access to a device window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The value a load returns (0 for a store).
    pub value: u32,
    /// The device had nothing pending and now has: raise the parent's event interrupt.
    pub wake_parent: bool,
    /// The device's interrupt line moved to this level: raise or lower its source.
    pub line: Option<bool>,
}

struct Device {
    transport: Transport,
    pending: u32,
    resets: u32,
}

impl Device {
    /// Adds `bits` to the pending set; true if it was empty before.
    fn mark(&mut self, bits: u32) -> bool {
        let was_empty = self.pending == 0;
        self.pending |= bits;
        was_empty && bits != 0
    }
}

/// Where a guest-physical address falls among the device windows: the device index
/// and the offset in its window. `None` outside every window of `count` devices.
pub fn window_of(gpa: Gpa, count: usize) -> Option<(usize, u64)> {
    let rel = gpa.raw().checked_sub(MMIO_BASE)?;
    let index = usize::try_from(rel / MMIO_STRIDE).ok()?;
    (index < count).then_some((index, rel % MMIO_STRIDE))
}

/// The GPA of device `index`'s window in a child.
pub fn window_gpa(index: usize) -> Gpa {
    Gpa::new(MMIO_BASE + index as u64 * MMIO_STRIDE)
}

/// A child's virtio devices (see the module documentation).
pub struct ChildDevices {
    devices: Vec<Device>,
}

impl ChildDevices {
    /// The devices `defs` declares, each reset. `InvalidParam` for more than
    /// [`MAX_DEVICES`] or a definition the transport refuses (every [`DeviceDef`] from
    /// [`DeviceDef::check`] is accepted).
    pub fn new(defs: &[DeviceDef]) -> Result<Self, SbiError> {
        if defs.len() > MAX_DEVICES {
            return Err(SbiError::InvalidParam);
        }
        let mut devices = Vec::with_capacity(defs.len());
        for d in defs {
            let mut transport = Transport::new(VENDOR_ID);
            let sizes = [d.queue_max; MAX_QUEUES];
            let sizes = sizes.get(..d.queues).ok_or(SbiError::InvalidParam)?;
            transport
                .set_device(d.device_id, d.features & !FEATURES_NEVER, sizes, &d.config)
                .map_err(|_| SbiError::InvalidParam)?;
            devices.push(Device {
                transport,
                pending: 0,
                resets: 0,
            });
        }
        Ok(Self { devices })
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True without devices.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The virtio device ID of each device, in order (for the child's device tree and
    /// for logs).
    pub fn device_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.devices.iter().map(|d| d.transport.device_id())
    }

    /// A child's load (`store` `None`) or store of `width` bytes at `offset` of device
    /// `index`'s window. `Err` is an access fault for the child (a bad width or
    /// alignment, or no such device).
    pub fn access(
        &mut self,
        index: usize,
        offset: u64,
        width: u32,
        store: Option<u32>,
    ) -> Result<Outcome, Fault> {
        let dev = self.devices.get_mut(index).ok_or(Fault::OutsideWindow)?;
        let Some(value) = store else {
            return Ok(Outcome {
                value: dev.transport.read(offset, width)?,
                ..Outcome::default()
            });
        };
        let line_before = dev.transport.line();
        let effect = dev.transport.write(offset, width, value)?;
        let bits = match effect {
            Effect::None | Effect::InterruptAcked => 0,
            Effect::Notify { queue, .. } => 1u32 << (queue % 32),
            Effect::StatusChanged { status } => {
                if status == 0 {
                    dev.resets = dev.resets.wrapping_add(1);
                }
                PENDING_STATE
            }
            Effect::QueueChanged { .. } | Effect::ConfigWrite { .. } => PENDING_STATE,
        };
        let line_after = dev.transport.line();
        Ok(Outcome {
            value: 0,
            wake_parent: dev.mark(bits),
            line: (line_before != line_after).then_some(line_after),
        })
    }

    /// DEVICE_STATE: device `index`'s state and its queues, taking its pending bits.
    /// `InvalidParam` for no such device.
    pub fn take_state(&mut self, index: usize) -> Result<(DeviceState, Vec<QueueState>), SbiError> {
        let dev = self.devices.get_mut(index).ok_or(SbiError::InvalidParam)?;
        let t = &dev.transport;
        let queues: Vec<QueueState> = (0..t.queue_count())
            .filter_map(|q| t.queue(q))
            .map(|q| QueueState {
                size: q.size,
                ready: u32::from(q.ready),
                desc: q.desc.raw(),
                driver: q.driver.raw(),
                device: q.device.raw(),
            })
            .collect();
        let state = DeviceState {
            size: state_size(queues.len()) as u32,
            status: u32::from(t.status()),
            driver_features: t.driver_features(),
            device_features: t.device_features(),
            pending: dev.pending,
            config_generation: t.config_generation(),
            queue_count: queues.len() as u32,
            resets: dev.resets,
            interrupt_status: t.interrupt_status(),
            reserved: 0,
        };
        dev.pending = 0;
        Ok((state, queues))
    }

    /// The bytes DEVICE_STATE writes for device `index`, if it exists.
    pub fn state_size_of(&self, index: usize) -> Option<usize> {
        self.devices
            .get(index)
            .map(|d| state_size(d.transport.queue_count()))
    }

    /// DEVICE_RAISE: raises the interrupts `what` asks for on device `index`. Returns
    /// true if its line went up (the hypervisor raises its source). `InvalidParam` for
    /// no such device, or `what` empty or with undefined bits. A used-buffer interrupt
    /// on a device that is not live is dropped, as the transport defines.
    pub fn raise(&mut self, index: usize, what: u64) -> Result<bool, SbiError> {
        if what == 0 || what & !RAISE_ALL != 0 {
            return Err(SbiError::InvalidParam);
        }
        let dev = self.devices.get_mut(index).ok_or(SbiError::InvalidParam)?;
        let before = dev.transport.line();
        let t = &mut dev.transport;
        if what & RAISE_USED_BUFFER != 0 {
            // Any ready queue: the line is per device, InterruptStatus has one bit.
            if let Some(q) = (0..t.queue_count()).find(|&q| t.queue(q).is_some_and(|c| c.ready)) {
                t.raise_used(q);
            }
        }
        if what & RAISE_CONFIG_CHANGE != 0 {
            t.raise_config();
        }
        if what & RAISE_NEEDS_RESET != 0 {
            t.needs_reset();
        }
        Ok(!before && dev.transport.line())
    }

    /// Whether device `index`'s line is up (false for no such device).
    pub fn line(&self, index: usize) -> bool {
        self.devices.get(index).is_some_and(|d| d.transport.line())
    }

    /// Every device back to its reset state (the child is rebooting): each counts a
    /// reset and gets [`PENDING_STATE`]. Returns true if any device had nothing
    /// pending before (the parent must be woken).
    pub fn reset_all(&mut self) -> bool {
        let mut wake = false;
        for d in &mut self.devices {
            d.transport.reset();
            d.resets = d.resets.wrapping_add(1);
            wake |= d.mark(PENDING_STATE);
        }
        wake
    }
}

/// The bytes of a DEVICE_STATE answer with `queues` queues.
pub fn state_size(queues: usize) -> usize {
    DeviceState::SIZE + queues * QueueState::SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_mmio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
    };

    const STATUS: u64 = 0x070;
    const QUEUE_SEL: u64 = 0x030;
    const QUEUE_NUM: u64 = 0x038;
    const QUEUE_READY: u64 = 0x044;
    const QUEUE_NOTIFY: u64 = 0x050;
    const INTERRUPT_STATUS: u64 = 0x060;
    const INTERRUPT_ACK: u64 = 0x064;
    const DRIVER_FEATURES: u64 = 0x020;
    const DRIVER_FEATURES_SEL: u64 = 0x024;
    const QUEUE_DESC_LOW: u64 = 0x080;
    const QUEUE_DRIVER_LOW: u64 = 0x090;
    const QUEUE_DEVICE_LOW: u64 = 0x0a0;

    fn rng() -> DeviceDef {
        DeviceDef {
            device_id: 4,
            features: 0,
            queues: 1,
            queue_max: 64,
            config: Vec::new(),
        }
    }

    fn w(d: &mut ChildDevices, i: usize, off: u64, v: u32) -> Outcome {
        d.access(i, off, 4, Some(v)).unwrap()
    }

    /// Brings device `i` live with queue 0 (size 16) at 0x8000_0000.. as a driver would.
    fn bring_up(d: &mut ChildDevices, i: usize) {
        w(d, i, STATUS, u32::from(STATUS_ACKNOWLEDGE));
        w(d, i, STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        w(d, i, DRIVER_FEATURES_SEL, 1);
        w(d, i, DRIVER_FEATURES, (VIRTIO_F_VERSION_1 >> 32) as u32);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(d, i, STATUS, u32::from(s));
        w(d, i, QUEUE_SEL, 0);
        w(d, i, QUEUE_NUM, 16);
        w(d, i, QUEUE_DESC_LOW, 0x8000_0000);
        w(d, i, QUEUE_DRIVER_LOW, 0x8000_1000);
        w(d, i, QUEUE_DEVICE_LOW, 0x8000_2000);
        w(d, i, QUEUE_READY, 1);
        w(d, i, STATUS, u32::from(s | STATUS_DRIVER_OK));
    }

    #[test]
    fn specs_are_checked() {
        let good = DeviceSpec {
            size: DeviceSpec::SIZE as u32,
            device_id: 2,
            features: u64::MAX,
            queue_count: 1,
            queue_max: 256,
            config_gpa: 0,
            config_len: 8,
            reserved: 0,
        };
        let (def, len) = DeviceDef::check(&good).unwrap();
        assert_eq!(len, 8);
        assert_eq!(def.features & FEATURES_NEVER, 0);
        let bad = [
            DeviceSpec { size: 39, ..good },
            DeviceSpec {
                device_id: 0,
                ..good
            },
            DeviceSpec {
                queue_count: 0,
                ..good
            },
            DeviceSpec {
                queue_count: 9,
                ..good
            },
            DeviceSpec {
                queue_max: 0,
                ..good
            },
            DeviceSpec {
                queue_max: 3,
                ..good
            },
            DeviceSpec {
                queue_max: 2048,
                ..good
            },
            DeviceSpec {
                config_len: 257,
                ..good
            },
            DeviceSpec {
                reserved: 1,
                ..good
            },
        ];
        for b in bad {
            assert_eq!(DeviceDef::check(&b), Err(SbiError::InvalidParam), "{b:?}");
        }
        assert!(ChildDevices::new(&[]).unwrap().is_empty());
        let nine: Vec<DeviceDef> = (0..9).map(|_| rng()).collect();
        assert!(ChildDevices::new(&nine).is_err());
    }

    #[test]
    fn windows_are_found_and_bounded() {
        assert_eq!(window_of(Gpa::new(MMIO_BASE), 2), Some((0, 0)));
        assert_eq!(window_of(Gpa::new(MMIO_BASE + 0x1070), 2), Some((1, 0x70)));
        assert_eq!(window_of(Gpa::new(MMIO_BASE + 0x2000), 2), None);
        assert_eq!(window_of(Gpa::new(MMIO_BASE - 1), 2), None);
        assert_eq!(window_of(Gpa::new(u64::MAX), 8), None);
        assert_eq!(window_gpa(1), Gpa::new(MMIO_BASE + MMIO_STRIDE));
    }

    #[test]
    fn a_doorbell_storm_wakes_the_parent_once() {
        let mut d = ChildDevices::new(&[rng(), rng()]).unwrap();
        bring_up(&mut d, 0);
        let (s, q) = d.take_state(0).unwrap();
        assert_eq!(s.pending, PENDING_STATE);
        assert_eq!(
            u32::from(STATUS_DRIVER_OK) & s.status,
            u32::from(STATUS_DRIVER_OK)
        );
        assert_eq!((q.len(), q[0].size, q[0].ready), (1, 16, 1));
        assert_eq!(
            (q[0].desc, q[0].driver, q[0].device),
            (0x8000_0000, 0x8000_1000, 0x8000_2000)
        );
        assert_eq!(s.size as usize, state_size(1));
        let wakes = (0..10_000)
            .filter(|_| w(&mut d, 0, QUEUE_NOTIFY, 0).wake_parent)
            .count();
        assert_eq!(wakes, 1);
        let (s, _) = d.take_state(0).unwrap();
        assert_eq!(s.pending, 1);
        assert_eq!(d.take_state(0).unwrap().0.pending, 0);
        assert!(w(&mut d, 0, QUEUE_NOTIFY, 0).wake_parent);
        // The other device is independent.
        assert_eq!(d.take_state(1).unwrap().0.pending, 0);
        assert_eq!(d.take_state(2), Err(SbiError::InvalidParam));
        // A notify of a queue that does not exist is ignored by the transport.
        d.take_state(0).unwrap();
        assert!(!w(&mut d, 0, QUEUE_NOTIFY, 5).wake_parent);
        assert_eq!(d.take_state(0).unwrap().0.pending, 0);
    }

    #[test]
    fn interrupt_line_follows_raise_and_ack() {
        let mut d = ChildDevices::new(&[rng()]).unwrap();
        // Not live: a used-buffer interrupt is dropped.
        assert_eq!(d.raise(0, RAISE_USED_BUFFER), Ok(false));
        assert!(!d.line(0));
        bring_up(&mut d, 0);
        assert_eq!(d.raise(0, 0), Err(SbiError::InvalidParam));
        assert_eq!(d.raise(0, 8), Err(SbiError::InvalidParam));
        assert_eq!(d.raise(1, RAISE_USED_BUFFER), Err(SbiError::InvalidParam));
        assert_eq!(d.raise(0, RAISE_USED_BUFFER), Ok(true));
        assert_eq!(d.raise(0, RAISE_USED_BUFFER), Ok(false));
        assert!(d.line(0));
        assert_eq!(d.access(0, INTERRUPT_STATUS, 4, None).unwrap().value, 1);
        assert_eq!(w(&mut d, 0, INTERRUPT_ACK, 1).line, Some(false));
        assert!(!d.line(0));
        // NEEDS_RESET raises the configuration-change interrupt; a reset lowers it.
        assert_eq!(d.raise(0, RAISE_NEEDS_RESET), Ok(true));
        assert_eq!(d.take_state(0).unwrap().0.status & 0x40, 0x40);
        let o = w(&mut d, 0, STATUS, 0);
        assert_eq!(o.line, Some(false));
        let (s, _) = d.take_state(0).unwrap();
        assert_eq!((s.status, s.resets, s.pending), (0, 1, PENDING_STATE));
    }

    #[test]
    fn reboot_resets_every_device_and_counts_it() {
        let mut d = ChildDevices::new(&[rng(), rng()]).unwrap();
        bring_up(&mut d, 1);
        d.take_state(0).unwrap();
        d.take_state(1).unwrap();
        assert!(d.reset_all());
        for i in 0..2 {
            let (s, q) = d.take_state(i).unwrap();
            assert_eq!(
                (s.status, s.resets, s.pending, q[0].ready),
                (0, 1, PENDING_STATE, 0)
            );
        }
        // Bad accesses fault, they never panic.
        assert_eq!(d.access(0, 0x1000, 4, None), Err(Fault::OutsideWindow));
        assert_eq!(d.access(0, 0x2, 4, None), Err(Fault::BadAccess));
        assert_eq!(d.access(3, 0, 4, None), Err(Fault::OutsideWindow));
    }
}
