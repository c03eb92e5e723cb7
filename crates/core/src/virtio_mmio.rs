//! The virtio-mmio transport (version 2, "modern" only) of one virtual device.
//!
//! A child VM gets standard virtio devices (virtio-blk, virtio-net, ...) that its stock
//! driver finds in the device tree (`compatible = "virtio,mmio"`). The *device* — the
//! backend that walks the virtqueues, reads and writes the buffers — runs in the user
//! space of the child's parent VM, not in the hypervisor. The hypervisor only emulates
//! the transport: every guest access to the device's 4 KiB register window
//! ([`WINDOW_SIZE`]) traps, and the hypervisor hands it to [`Transport::read`] or
//! [`Transport::write`]. This model keeps the register state and tells the hypervisor,
//! through an [`Effect`], what to pass on to the parent:
//!
//! | [`Effect`]                      | what the hypervisor does                                  |
//! |---------------------------------|-----------------------------------------------------------|
//! | [`Effect::None`]                | nothing: the access is complete                           |
//! | [`Effect::Notify`]              | rings the parent's doorbell for that queue (an event)     |
//! | [`Effect::StatusChanged`]       | tells the parent; status 0 is a reset: the backend drops every reference to the child's queues and buffers, and lowers the interrupt line ([`Transport::line`] is false) |
//! | [`Effect::QueueChanged`]        | tells the parent a queue was enabled or disabled while the device was live (re-read it with [`Transport::queue`]) |
//! | [`Effect::InterruptAcked`]      | re-evaluates [`Transport::line`]; lowers the line if it is now false |
//! | [`Effect::ConfigWrite`]         | tells the parent which config bytes the guest wrote (read them with [`Transport::config`]) |
//!
//! The parent, through the hypervisor, defines the device ([`Transport::set_device`],
//! [`Transport::set_config`]), learns where the guest put each queue
//! ([`Transport::queue`]) and the negotiated features
//! ([`Transport::driver_features`]), raises the used-buffer and configuration-change
//! interrupts ([`Transport::raise_used`], [`Transport::raise_config`]), reports a
//! broken device ([`Transport::needs_reset`]) or resets it ([`Transport::reset`]).
//!
//! # What this model does not do
//!
//! It never reads or writes guest memory: the descriptor table, the available and used
//! rings and the buffers are the backend's job, in the parent, which may only access
//! the memory of its own children. The queue addresses it reports are what the guest
//! wrote, checked only for alignment and for not wrapping around the address space —
//! whether they lie in the child's RAM is for the backend to check on every access. It
//! implements no device type: the configuration space is an opaque byte array the
//! backend sets and the guest may overwrite (every write is stored and reported,
//! whatever the device type says about it). It has no shared-memory regions (SHMLen and
//! SHMBase read as "no such region", all ones), no per-queue reset
//! (`VIRTIO_F_RING_RESET` is never offered and QueueReset is reserved) and no legacy
//! (version 1) registers.
//!
//! # Interrupt line
//!
//! The device has one interrupt line, asserted while InterruptStatus is not zero
//! ([`Transport::line`]). [`Transport::raise_used`], [`Transport::raise_config`] and
//! [`Transport::needs_reset`] return true on a rising edge: the hypervisor then raises
//! the device's source at the child's virtual PLIC. When the guest completes that
//! source at the PLIC while [`Transport::line`] is still true, the hypervisor raises it
//! again (a level line); when an [`Effect::InterruptAcked`] leaves the line low, it
//! lowers the source.
//!
//! # Decisions where the specification leaves room
//!
//! * Register accesses must be naturally aligned 4-byte accesses; config-space accesses
//!   1, 2 or 4 bytes, naturally aligned. Anything else, and any offset at or beyond
//!   [`WINDOW_SIZE`], is a [`Fault`].
//! * Accesses the specification forbids the driver — reads of write-only registers
//!   (they read 0), writes to read-only registers, reserved offsets, config bytes beyond
//!   the backend's config length, and the writes listed below — are ignored and counted
//!   ([`Transport::ignored_accesses`]); they never panic and never fault.
//! * Status: the driver can only add its own bits (ACKNOWLEDGE, DRIVER, FEATURES_OK,
//!   DRIVER_OK, FAILED) in the order of the initialization sequence (DRIVER needs
//!   ACKNOWLEDGE, FEATURES_OK needs DRIVER, DRIVER_OK needs FEATURES_OK), or write 0
//!   (reset). A write that clears a bit, breaks that order, or changes anything after
//!   FAILED is ignored. DEVICE_NEEDS_RESET belongs to the device: the driver's copy of
//!   it is ignored. Undefined bits are dropped (and counted).
//! * FEATURES_OK is only accepted if the driver's features are a subset of the
//!   device's and include `VIRTIO_F_VERSION_1`; otherwise the bit stays clear (the rest
//!   of the write applies) and the driver sees it missing when it reads the status
//!   back, as the specification requires.
//! * DriverFeatures can only be written while DRIVER is set and FEATURES_OK is not.
//! * Queue registers (QueueNum and the six address halves) can only be written after
//!   FEATURES_OK (the specification's initialization order: queues are set up with the
//!   ring layout already negotiated), before FAILED, for an existing queue that is not
//!   ready.
//! * QueueNum is recorded as written (it starts at 0 after a reset). Writing 1 to
//!   QueueReady only makes the queue ready if its size is valid — not 0, at most
//!   QueueNumMax, and a power of two unless `VIRTIO_F_RING_PACKED` was negotiated — and
//!   its three areas are aligned (descriptors 16 bytes; split ring: driver area 2,
//!   device area 4; packed ring: both 4) and end below 2^64. Otherwise QueueReady stays
//!   0 and the write is counted. Writing 0 always disables the queue: the driver uses it
//!   to stop a queue and reads it back to synchronize.
//! * Notifications are passed on only while the device is live (DRIVER_OK set, FAILED
//!   not) and for a ready queue; others are dropped and counted. The backend therefore
//!   scans every ready queue when the device goes live ([`Effect::StatusChanged`] with
//!   DRIVER_OK): a (non-conforming) notification before that point is not lost.
//! * The used-buffer interrupt is only raised while the device is live, for a ready
//!   queue; the configuration-change interrupt once a driver has acknowledged the
//!   device (status not 0).
//! * A reset (status 0 written by the guest, or [`Transport::reset`]) clears the status,
//!   the driver features, the selectors, InterruptStatus and every queue (not ready,
//!   size and addresses 0), and restores the configuration space the backend last set
//!   (the guest's config writes are forgotten). The device definition, QueueNumMax and
//!   the configuration generation survive.
//! * [`Transport::set_device`] always offers `VIRTIO_F_VERSION_1` (a modern device must)
//!   and never `VIRTIO_F_RING_RESET` (not implemented), and only takes queue sizes that
//!   are powers of two (Linux refuses a split ring of any other size).

use crate::addr::Gpa;

/// The MagicValue register: "virt" in little-endian ASCII.
pub const MAGIC: u32 = 0x7472_6976;
/// The Version register: 2, the non-legacy (virtio 1.x) interface.
pub const VERSION: u32 = 2;
/// Size of the register window: control registers and configuration space.
pub const WINDOW_SIZE: u64 = 0x1000;
/// Offset of the device-specific configuration space in the window.
pub const CONFIG_OFFSET: u64 = 0x100;
/// Most queues one transport can have.
pub const MAX_QUEUES: usize = 8;
/// Largest queue size (QueueNumMax) the specification allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most bytes of device-specific configuration space.
pub const MAX_CONFIG: usize = 256;

/// Device status bit: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status bit: the guest has a driver for the device.
pub const STATUS_DRIVER: u8 = 2;
/// Device status bit: the driver is set up and ready: the device is live.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status bit: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bit 32: the device (and driver) follow virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit 34: packed virtqueues.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
/// Feature bit 38: notifications carry more than the queue index.
pub const VIRTIO_F_NOTIFICATION_DATA: u64 = 1 << 38;
/// Feature bit 40: per-queue reset (not implemented by this transport, never offered).
pub const VIRTIO_F_RING_RESET: u64 = 1 << 40;

/// InterruptStatus bit 0: the device used a buffer in some queue.
pub const INT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit 1: the device configuration changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

const DRIVER_STATUS_BITS: u8 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED;
const INT_BITS: u32 = INT_USED_BUFFER | INT_CONFIG_CHANGE;

// Register offsets (version 2 layout).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Why a guest access to the window was refused; the hypervisor reflects it to the
/// guest as an access fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A register access that is not a naturally aligned 4-byte access, or a
    /// config-space access that is not a naturally aligned 1-, 2- or 4-byte access.
    BadAccess,
    /// The offset is at or beyond [`WINDOW_SIZE`].
    OutsideWindow,
}

/// Why [`Transport::set_device`] or [`Transport::set_config`] refused a definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// More than [`MAX_QUEUES`] queues (the count asked for).
    TooManyQueues(usize),
    /// A queue size that is 0, above [`MAX_QUEUE_SIZE`] or not a power of two.
    BadQueueSize {
        /// Index of the queue.
        queue: usize,
        /// The size asked for.
        size: u16,
    },
    /// More than [`MAX_CONFIG`] bytes of configuration space (the length asked for).
    ConfigTooLarge(usize),
}

/// What the hypervisor must do after a guest write (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond completing the access.
    None,
    /// The guest notified a ready queue of a live device: ring the parent's doorbell.
    Notify {
        /// The queue index.
        queue: u16,
        /// The value written: the queue index, or, with `VIRTIO_F_NOTIFICATION_DATA`
        /// negotiated, the index in bits 0..16 and the driver's position above.
        data: u32,
    },
    /// The device status changed (the new value); 0 means the device was reset.
    StatusChanged {
        /// The new device status.
        status: u8,
    },
    /// A queue became ready or stopped being ready while the device was live
    /// (DRIVER_OK set). Changes before DRIVER_OK are not reported: the parent reads
    /// every queue when the device goes live.
    QueueChanged {
        /// The queue index.
        queue: u16,
    },
    /// The guest acknowledged some InterruptStatus bits: the line may drop.
    InterruptAcked,
    /// The guest wrote `len` bytes at `offset` of the configuration space (offset
    /// relative to [`CONFIG_OFFSET`]); the bytes are in [`Transport::config`].
    ConfigWrite {
        /// Offset from the start of the configuration space.
        offset: u16,
        /// Bytes written: 1, 2 or 4.
        len: u8,
    },
}

/// Where the guest put one queue, as the backend needs it to walk the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue size (QueueNum) as the guest wrote it; valid (see the module
    /// documentation) whenever `ready` is true.
    pub size: u32,
    /// Largest size the backend accepts (QueueNumMax).
    pub max: u16,
    /// Guest-physical address of the descriptor area (descriptor table or packed ring).
    pub desc: Gpa,
    /// Guest-physical address of the driver area (available ring, or driver event
    /// suppression for a packed ring).
    pub driver: Gpa,
    /// Guest-physical address of the device area (used ring, or device event
    /// suppression for a packed ring).
    pub device: Gpa,
    /// QueueReady: the backend may access the queue (while the device is live).
    pub ready: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Queue {
    max: u16,
    num: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl Queue {
    fn clear(&mut self) {
        *self = Queue {
            max: self.max,
            ..Queue::default()
        };
    }
}

/// Replaces the low (`high == false`) or high 32 bits of `word` with `value`.
fn set_half(word: &mut u64, high: bool, value: u32) {
    if high {
        *word = (*word & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *word = (*word & !0xffff_ffff) | u64::from(value);
    }
}

/// The 32-bit half `sel` (0 = low, 1 = high) of `word`; 0 beyond.
fn half(word: u64, sel: u32) -> u32 {
    match sel {
        0 => (word & 0xffff_ffff) as u32,
        1 => (word >> 32) as u32,
        _ => 0,
    }
}

/// True if a status value follows the initialization order.
fn ordered(status: u8) -> bool {
    let needs = |bit: u8, prerequisite: u8| status & bit == 0 || status & prerequisite != 0;
    needs(STATUS_DRIVER, STATUS_ACKNOWLEDGE)
        && needs(STATUS_FEATURES_OK, STATUS_DRIVER)
        && needs(STATUS_DRIVER_OK, STATUS_FEATURES_OK)
}

/// One virtio-mmio (version 2) device transport: the register state of the window and
/// the device definition the backend gave it. Fixed size, no allocation. Cloning it
/// copies every register (snapshots).
#[derive(Clone, Debug)]
pub struct Transport {
    device_id: u32,
    vendor_id: u32,
    device_features: u64,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queue_count: usize,
    queues: [Queue; MAX_QUEUES],
    status: u8,
    interrupt_status: u32,
    config_generation: u32,
    config_len: usize,
    /// The configuration space as the guest sees it.
    config: [u8; MAX_CONFIG],
    /// The configuration space as the backend last set it (restored on reset).
    config_backend: [u8; MAX_CONFIG],
    ignored: u64,
}

impl Transport {
    /// A transport with no device behind it yet: DeviceID 0 (a driver must ignore such a
    /// device), no features, no queues, no configuration space.
    pub fn new(vendor_id: u32) -> Self {
        Self {
            device_id: 0,
            vendor_id,
            device_features: 0,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queue_count: 0,
            queues: [Queue::default(); MAX_QUEUES],
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            config_len: 0,
            config: [0; MAX_CONFIG],
            config_backend: [0; MAX_CONFIG],
            ignored: 0,
        }
    }

    // ------------------------------------------------------------ backend side

    /// Defines the device behind the transport (the parent's backend): its virtio
    /// device ID (1 = net, 2 = block, ...; 0 = none), the features it offers, the
    /// QueueNumMax of each of its queues (`queue_sizes.len()` queues) and its initial
    /// configuration space. `VIRTIO_F_VERSION_1` is always offered,
    /// `VIRTIO_F_RING_RESET` never. The transport is then reset (see
    /// [`reset`](Self::reset)): the interrupt line is low afterwards. On error nothing
    /// changes.
    pub fn set_device(
        &mut self,
        device_id: u32,
        features: u64,
        queue_sizes: &[u16],
        config: &[u8],
    ) -> Result<(), DeviceError> {
        if queue_sizes.len() > MAX_QUEUES {
            return Err(DeviceError::TooManyQueues(queue_sizes.len()));
        }
        if let Some((queue, &size)) = queue_sizes
            .iter()
            .enumerate()
            .find(|(_, &s)| s == 0 || s > MAX_QUEUE_SIZE || !s.is_power_of_two())
        {
            return Err(DeviceError::BadQueueSize { queue, size });
        }
        if config.len() > MAX_CONFIG {
            return Err(DeviceError::ConfigTooLarge(config.len()));
        }
        self.device_id = device_id;
        self.device_features = (features | VIRTIO_F_VERSION_1) & !VIRTIO_F_RING_RESET;
        self.queue_count = queue_sizes.len();
        self.queues = [Queue::default(); MAX_QUEUES];
        for (q, &size) in self.queues.iter_mut().zip(queue_sizes) {
            q.max = size;
        }
        self.set_config(config)?;
        self.reset();
        Ok(())
    }

    /// Replaces the configuration space (the backend's view; also what a reset
    /// restores) and bumps the configuration generation, so a driver reading across the
    /// change retries. Does not raise the configuration-change interrupt: call
    /// [`raise_config`](Self::raise_config) for that. On error nothing changes.
    pub fn set_config(&mut self, config: &[u8]) -> Result<(), DeviceError> {
        let (Some(guest), Some(backend)) = (
            self.config.get_mut(..config.len()),
            self.config_backend.get_mut(..config.len()),
        ) else {
            return Err(DeviceError::ConfigTooLarge(config.len()));
        };
        guest.copy_from_slice(config);
        backend.copy_from_slice(config);
        for b in self.config.iter_mut().skip(config.len()) {
            *b = 0;
        }
        for b in self.config_backend.iter_mut().skip(config.len()) {
            *b = 0;
        }
        self.config_len = config.len();
        self.config_generation = self.config_generation.wrapping_add(1);
        Ok(())
    }

    /// The configuration space as the guest sees it, including its own writes.
    pub fn config(&self) -> &[u8] {
        self.config.get(..self.config_len).unwrap_or(&[])
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// The virtio device ID (DeviceID register).
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The VendorID register.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The features the driver wrote. They are the negotiated features once
    /// FEATURES_OK is set in [`status`](Self::status); 0 after a reset.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// True while the device is live: DRIVER_OK set and FAILED not. Only then are
    /// notifications passed on and used-buffer interrupts raised.
    pub fn is_live(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_FAILED == 0
    }

    /// The InterruptStatus register (bits [`INT_USED_BUFFER`], [`INT_CONFIG_CHANGE`]).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Number of queues the device has.
    pub fn queue_count(&self) -> usize {
        self.queue_count
    }

    /// Where the guest put queue `q`; `None` if the device has no such queue.
    pub fn queue(&self, q: usize) -> Option<QueueConfig> {
        if q >= self.queue_count {
            return None;
        }
        let queue = self.queues.get(q)?;
        Some(QueueConfig {
            size: queue.num,
            max: queue.max,
            desc: Gpa::new(queue.desc),
            driver: Gpa::new(queue.driver),
            device: Gpa::new(queue.device),
            ready: queue.ready,
        })
    }

    /// How many guest accesses were ignored because the specification forbids them
    /// (see the module documentation). Saturates.
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored
    }

    /// Whether the interrupt line is asserted: InterruptStatus is not 0.
    pub fn line(&self) -> bool {
        self.interrupt_status != 0
    }

    fn raise(&mut self, bit: u32) -> bool {
        let was = self.line();
        self.interrupt_status |= bit;
        !was && self.line()
    }

    /// The backend put buffers in the used ring of queue `q`: sets the used-buffer bit
    /// of InterruptStatus. Ignored unless the device is live and `q` is ready. Returns
    /// true if the line just went up (the hypervisor raises the interrupt).
    pub fn raise_used(&mut self, q: usize) -> bool {
        let ready = q < self.queue_count && self.queues.get(q).is_some_and(|queue| queue.ready);
        if !self.is_live() || !ready {
            return false;
        }
        self.raise(INT_USED_BUFFER)
    }

    /// The configuration space changed: sets the configuration-change bit of
    /// InterruptStatus. Ignored while the status is 0 (no driver). Returns true if the
    /// line just went up.
    pub fn raise_config(&mut self) -> bool {
        if self.status == 0 {
            return false;
        }
        self.raise(INT_CONFIG_CHANGE)
    }

    /// The backend hit an error it cannot recover from: sets DEVICE_NEEDS_RESET and, if
    /// DRIVER_OK is set, raises the configuration-change interrupt, as the
    /// specification requires. The driver recovers by resetting the device. Returns
    /// true if the line just went up.
    pub fn needs_reset(&mut self) -> bool {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE)
        } else {
            false
        }
    }

    /// Resets the device from the backend's side, exactly as the guest writing 0 to the
    /// status would (see the module documentation), without telling the guest: a
    /// driver in the middle of using it will find it gone. Prefer
    /// [`needs_reset`](Self::needs_reset) for a live device. Returns true if the
    /// interrupt line was up (the hypervisor lowers it).
    pub fn reset(&mut self) -> bool {
        let was = self.line();
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in self.queues.iter_mut() {
            q.clear();
        }
        self.config = self.config_backend;
        was
    }

    // ------------------------------------------------------------ guest side

    fn ignore(&mut self) {
        self.ignored = self.ignored.saturating_add(1);
    }

    /// The queue selected by QueueSel, if the device has it.
    fn selected(&self) -> Option<usize> {
        let q = usize::try_from(self.queue_sel).ok()?;
        (q < self.queue_count).then_some(q)
    }

    /// The selected queue if its configuration registers may be written now.
    fn writable_queue(&mut self) -> Option<&mut Queue> {
        let allowed = self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FAILED == 0;
        let q = self.selected()?;
        if !allowed {
            return None;
        }
        self.queues.get_mut(q).filter(|queue| !queue.ready)
    }

    fn packed(&self) -> bool {
        self.driver_features & VIRTIO_F_RING_PACKED != 0
    }

    /// Whether `queue` may be made ready: valid size, aligned areas that do not wrap.
    fn queue_valid(&self, queue: &Queue) -> bool {
        let packed = self.packed();
        let n = queue.num;
        if n == 0 || n > u32::from(queue.max) || (!packed && !n.is_power_of_two()) {
            return false;
        }
        let n = u64::from(n);
        // (address, alignment, length); n <= 32768 keeps the lengths small.
        let areas = if packed {
            [
                (queue.desc, 16, 16 * n),
                (queue.driver, 4, 4),
                (queue.device, 4, 4),
            ]
        } else {
            [
                (queue.desc, 16, 16 * n),
                (queue.driver, 2, 6 + 2 * n),
                (queue.device, 4, 6 + 8 * n),
            ]
        };
        areas
            .iter()
            .all(|&(addr, align, len)| addr % align == 0 && addr.checked_add(len).is_some())
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// A guest read of `width` bytes at `offset` from the window base.
    pub fn read(&mut self, offset: u64, width: u32) -> Result<u32, Fault> {
        if offset >= WINDOW_SIZE {
            return Err(Fault::OutsideWindow);
        }
        if offset >= CONFIG_OFFSET {
            return self.read_config(offset - CONFIG_OFFSET, width);
        }
        if width != 4 || !offset.is_multiple_of(4) {
            return Err(Fault::BadAccess);
        }
        let selected = self.selected().and_then(|q| self.queues.get(q)).copied();
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device_id,
            REG_VENDOR_ID => self.vendor_id,
            REG_DEVICE_FEATURES => half(self.device_features, self.device_features_sel),
            REG_QUEUE_NUM_MAX => selected.map_or(0, |q| u32::from(q.max)),
            REG_QUEUE_READY => selected.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => u32::from(self.status),
            // No shared-memory regions: length and base read as all ones.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            // Write-only registers and reserved offsets.
            _ => {
                self.ignore();
                0
            }
        };
        Ok(value)
    }

    /// A guest write of `width` bytes of `value` at `offset` from the window base.
    pub fn write(&mut self, offset: u64, width: u32, value: u32) -> Result<Effect, Fault> {
        if offset >= WINDOW_SIZE {
            return Err(Fault::OutsideWindow);
        }
        if offset >= CONFIG_OFFSET {
            return self.write_config(offset - CONFIG_OFFSET, width, value);
        }
        if width != 4 || !offset.is_multiple_of(4) {
            return Err(Fault::BadAccess);
        }
        let effect = match offset {
            REG_DEVICE_FEATURES_SEL => {
                self.device_features_sel = value;
                Effect::None
            }
            REG_DRIVER_FEATURES_SEL => {
                self.driver_features_sel = value;
                Effect::None
            }
            REG_DRIVER_FEATURES => {
                self.write_driver_features(value);
                Effect::None
            }
            REG_QUEUE_SEL => {
                self.queue_sel = value;
                Effect::None
            }
            REG_QUEUE_NUM => {
                match self.writable_queue() {
                    Some(q) => q.num = value,
                    None => self.ignore(),
                }
                Effect::None
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                let high = offset % 8 == 4;
                match self.writable_queue() {
                    Some(q) => {
                        let word = match offset & !4 {
                            REG_QUEUE_DESC_LOW => &mut q.desc,
                            REG_QUEUE_DRIVER_LOW => &mut q.driver,
                            _ => &mut q.device,
                        };
                        set_half(word, high, value);
                    }
                    None => self.ignore(),
                }
                Effect::None
            }
            REG_QUEUE_READY => self.write_queue_ready(value),
            REG_QUEUE_NOTIFY => self.write_notify(value),
            REG_INTERRUPT_ACK => {
                let before = self.interrupt_status;
                self.interrupt_status &= !(value & INT_BITS);
                if value & !INT_BITS != 0 {
                    self.ignore();
                }
                if self.interrupt_status != before {
                    Effect::InterruptAcked
                } else {
                    Effect::None
                }
            }
            REG_STATUS => self.write_status(value),
            // No shared-memory regions: selecting one is harmless.
            REG_SHM_SEL => Effect::None,
            // Read-only registers and reserved offsets.
            _ => {
                self.ignore();
                Effect::None
            }
        };
        Ok(effect)
    }

    fn write_driver_features(&mut self, value: u32) {
        let allowed = self.status & STATUS_DRIVER != 0
            && self.status & (STATUS_FEATURES_OK | STATUS_FAILED) == 0;
        match self.driver_features_sel {
            sel @ (0 | 1) if allowed => set_half(&mut self.driver_features, sel == 1, value),
            // Feature words beyond 64 bits: the device offers none; 0 is harmless.
            _ if allowed && value == 0 => {}
            _ => self.ignore(),
        }
    }

    fn write_queue_ready(&mut self, value: u32) -> Effect {
        let Some(q) = self.selected() else {
            self.ignore();
            return Effect::None;
        };
        let Some(queue) = self.queues.get(q).copied() else {
            self.ignore();
            return Effect::None;
        };
        let ready = match value {
            0 => false,
            1 => {
                let allowed =
                    self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FAILED == 0;
                let ok = queue.ready || (allowed && self.queue_valid(&queue));
                if !ok {
                    self.ignore();
                }
                ok
            }
            _ => {
                self.ignore();
                return Effect::None;
            }
        };
        if ready == queue.ready {
            return Effect::None;
        }
        if let Some(slot) = self.queues.get_mut(q) {
            slot.ready = ready;
        }
        match u16::try_from(q) {
            Ok(queue) if self.status & STATUS_DRIVER_OK != 0 => Effect::QueueChanged { queue },
            _ => Effect::None,
        }
    }

    fn write_notify(&mut self, value: u32) -> Effect {
        let index = if self.driver_features & VIRTIO_F_NOTIFICATION_DATA != 0 {
            value & 0xffff
        } else {
            value
        };
        let ready = usize::try_from(index)
            .ok()
            .filter(|&q| q < self.queue_count)
            .and_then(|q| self.queues.get(q))
            .is_some_and(|queue| queue.ready);
        match u16::try_from(index) {
            Ok(queue) if ready && self.is_live() => Effect::Notify { queue, data: value },
            _ => {
                self.ignore();
                Effect::None
            }
        }
    }

    fn write_status(&mut self, value: u32) -> Effect {
        if value == 0 {
            self.reset();
            return Effect::StatusChanged { status: 0 };
        }
        if value & !u32::from(DRIVER_STATUS_BITS | STATUS_DEVICE_NEEDS_RESET) != 0 {
            self.ignore();
        }
        // Masked to the driver's bits, which fit in a byte.
        let mut requested = (value & u32::from(DRIVER_STATUS_BITS)) as u8;
        let current = self.status & DRIVER_STATUS_BITS;
        let clears = requested & current != current;
        let after_failed = current & STATUS_FAILED != 0 && requested != current;
        if clears || after_failed || !ordered(requested) {
            self.ignore();
            return Effect::None;
        }
        if requested & STATUS_FEATURES_OK != 0
            && current & STATUS_FEATURES_OK == 0
            && !self.features_acceptable()
        {
            requested &= !STATUS_FEATURES_OK;
            if !ordered(requested) {
                // DRIVER_OK in the same write as a refused FEATURES_OK.
                self.ignore();
                return Effect::None;
            }
        }
        let status = requested | (self.status & STATUS_DEVICE_NEEDS_RESET);
        if status == self.status {
            return Effect::None;
        }
        self.status = status;
        Effect::StatusChanged { status }
    }

    fn check_config_access(offset: u64, width: u32) -> Result<(), Fault> {
        if matches!(width, 1 | 2 | 4) && offset.is_multiple_of(u64::from(width)) {
            Ok(())
        } else {
            Err(Fault::BadAccess)
        }
    }

    /// `offset` is relative to the configuration space and below
    /// `WINDOW_SIZE - CONFIG_OFFSET`.
    fn read_config(&mut self, offset: u64, width: u32) -> Result<u32, Fault> {
        Self::check_config_access(offset, width)?;
        let mut bytes = [0u8; 4];
        let mut outside = false;
        for (i, b) in bytes.iter_mut().enumerate().take(width as usize) {
            let index = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            match index.filter(|&x| x < self.config_len) {
                Some(x) => *b = self.config.get(x).copied().unwrap_or(0),
                None => outside = true,
            }
        }
        if outside {
            self.ignore();
        }
        Ok(u32::from_le_bytes(bytes))
    }

    fn write_config(&mut self, offset: u64, width: u32, value: u32) -> Result<Effect, Fault> {
        Self::check_config_access(offset, width)?;
        let start = usize::try_from(offset).ok();
        let range = start.and_then(|s| Some(s..s.checked_add(width as usize)?));
        let target = range
            .filter(|r| r.end <= self.config_len)
            .and_then(|r| self.config.get_mut(r));
        let (Some(target), Ok(offset)) = (target, u16::try_from(offset)) else {
            self.ignore();
            return Ok(Effect::None);
        };
        let bytes = value.to_le_bytes();
        target.copy_from_slice(bytes.get(..target.len()).unwrap_or(&[]));
        Ok(Effect::ConfigWrite {
            offset,
            // width is 1, 2 or 4.
            len: width as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
    const VIRTIO_NET_F_MAC: u64 = 1 << 5;
    const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;

    fn rd(t: &mut Transport, offset: u64) -> u32 {
        t.read(offset, 4).unwrap()
    }

    fn wr(t: &mut Transport, offset: u64, value: u32) -> Effect {
        t.write(offset, 4, value).unwrap()
    }

    /// Adds `bit` to the status as Linux does (read, or, write).
    fn add_status(t: &mut Transport, bit: u8) -> Effect {
        let s = rd(t, REG_STATUS);
        wr(t, REG_STATUS, s | u32::from(bit))
    }

    fn blk() -> Transport {
        let mut t = Transport::new(0x5344_4944);
        // virtio-blk: capacity (le64) = 2048 sectors, then size_max.
        let mut config = [0u8; 12];
        config[..8].copy_from_slice(&2048u64.to_le_bytes());
        config[8..].copy_from_slice(&0x1000u32.to_le_bytes());
        t.set_device(2, VIRTIO_BLK_F_FLUSH | VIRTIO_F_EVENT_IDX, &[128], &config)
            .unwrap();
        t
    }

    fn net() -> Transport {
        let mut t = Transport::new(0x5344_4944);
        let config = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0];
        t.set_device(1, VIRTIO_NET_F_MAC, &[256, 256], &config)
            .unwrap();
        t
    }

    /// Queue `q`'s areas, 64 KiB apart above 4 GiB (so the high halves matter).
    fn areas(q: u32) -> (u64, u64, u64) {
        let base = 0x1_8000_0000 + u64::from(q) * 0x1_0000;
        (base, base + 0x1000, base + 0x2000)
    }

    fn write_addr(t: &mut Transport, low: u64, addr: u64) {
        assert_eq!(wr(t, low, addr as u32), Effect::None);
        assert_eq!(wr(t, low + 4, (addr >> 32) as u32), Effect::None);
    }

    /// Sets up queue `q` as Linux's `vm_setup_vq` does; returns the size chosen.
    fn setup_queue(t: &mut Transport, q: u32) -> Result<u32, &'static str> {
        wr(t, REG_QUEUE_SEL, q);
        if rd(t, REG_QUEUE_READY) != 0 {
            return Err("queue already set up");
        }
        let num = rd(t, REG_QUEUE_NUM_MAX);
        if num == 0 {
            return Err("queue not available");
        }
        wr(t, REG_QUEUE_NUM, num);
        let (desc, driver, device) = areas(q);
        write_addr(t, REG_QUEUE_DESC_LOW, desc);
        write_addr(t, REG_QUEUE_DRIVER_LOW, driver);
        write_addr(t, REG_QUEUE_DEVICE_LOW, device);
        assert_eq!(wr(t, REG_QUEUE_READY, 1), Effect::None);
        Ok(num)
    }

    /// Linux's probe of a virtio-mmio device, up to DRIVER_OK; returns the negotiated
    /// features. `wanted` is what the device driver understands.
    fn linux_probe(t: &mut Transport, wanted: u64, queues: u32) -> Result<u64, &'static str> {
        if rd(t, REG_MAGIC) != 0x7472_6976 {
            return Err("bad magic");
        }
        if rd(t, REG_VERSION) != 2 {
            return Err("bad version");
        }
        if rd(t, REG_DEVICE_ID) == 0 {
            return Err("no device");
        }
        rd(t, REG_VENDOR_ID);
        assert_eq!(wr(t, REG_STATUS, 0), Effect::StatusChanged { status: 0 });
        assert_eq!(
            add_status(t, STATUS_ACKNOWLEDGE),
            Effect::StatusChanged { status: 1 }
        );
        assert_eq!(
            add_status(t, STATUS_DRIVER),
            Effect::StatusChanged { status: 3 }
        );
        wr(t, REG_DEVICE_FEATURES_SEL, 1);
        let mut device = u64::from(rd(t, REG_DEVICE_FEATURES)) << 32;
        wr(t, REG_DEVICE_FEATURES_SEL, 0);
        device |= u64::from(rd(t, REG_DEVICE_FEATURES));
        let features = device & wanted;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err("device uses modern interface without VIRTIO_F_VERSION_1");
        }
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, features as u32);
        add_status(t, STATUS_FEATURES_OK);
        if rd(t, REG_STATUS) & u32::from(STATUS_FEATURES_OK) == 0 {
            return Err("device refuses features");
        }
        for q in 0..queues {
            setup_queue(t, q)?;
        }
        assert_eq!(
            add_status(t, STATUS_DRIVER_OK),
            Effect::StatusChanged { status: 0xf }
        );
        Ok(features)
    }

    /// Linux's interrupt handler: read InterruptStatus, acknowledge it all.
    fn linux_interrupt(t: &mut Transport) -> (u32, Effect) {
        let status = rd(t, REG_INTERRUPT_STATUS);
        (status, wr(t, REG_INTERRUPT_ACK, status))
    }

    /// The invariants the proptest checks after every step.
    fn check_invariants(t: &Transport) {
        assert_eq!(t.line(), t.interrupt_status() != 0);
        assert_eq!(t.interrupt_status() & !INT_BITS, 0);
        let s = t.status();
        assert!(ordered(s), "status {s:#x} out of order");
        if s & STATUS_FEATURES_OK != 0 {
            assert!(t.features_acceptable());
        }
        for q in 0..MAX_QUEUES {
            let Some(queue) = t.queues.get(q) else {
                continue;
            };
            if queue.ready {
                assert!(q < t.queue_count());
                assert!(s & STATUS_FEATURES_OK != 0);
                assert!(t.queue_valid(queue), "queue {q} ready but invalid");
            }
        }
        assert!(t.config().len() <= MAX_CONFIG);
    }

    fn check_reset(t: &Transport) {
        assert_eq!(t.status() & DRIVER_STATUS_BITS, 0);
        assert_eq!(t.driver_features(), 0);
        assert_eq!(t.interrupt_status(), 0);
        assert!(!t.line());
        for q in 0..t.queue_count() {
            let c = t.queue(q).unwrap();
            assert!(!c.ready);
            assert_eq!(c.size, 0);
        }
    }

    #[test]
    fn identification_registers() {
        let mut t = Transport::new(0x1234_5678);
        assert_eq!(rd(&mut t, REG_MAGIC), u32::from_le_bytes(*b"virt"));
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        // No device yet: ID 0, which Linux ignores.
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 0);
        assert_eq!(linux_probe(&mut t, u64::MAX, 1), Err("no device"));
        assert_eq!(rd(&mut t, REG_VENDOR_ID), 0x1234_5678);
        let mut t = blk();
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 2);
        assert_eq!(t.device_id(), 2);
        assert_eq!(t.vendor_id(), 0x5344_4944);
        assert_eq!(t.queue_count(), 1);
        assert!(t.queue(1).is_none());
        // No shared-memory regions.
        for reg in [
            REG_SHM_LEN_LOW,
            REG_SHM_LEN_HIGH,
            REG_SHM_BASE_LOW,
            REG_SHM_BASE_HIGH,
        ] {
            assert_eq!(rd(&mut t, reg), u32::MAX);
        }
        assert_eq!(t.ignored_accesses(), 0);
    }

    #[test]
    fn linux_probe_one_queue_block() {
        let mut t = blk();
        let features = linux_probe(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH, 1).unwrap();
        assert_eq!(features, VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
        assert_eq!(t.driver_features(), features);
        assert_eq!(t.status(), 0xf);
        assert!(t.is_live());
        let (desc, driver, device) = areas(0);
        assert_eq!(
            t.queue(0),
            Some(QueueConfig {
                size: 128,
                max: 128,
                desc: Gpa::new(desc),
                driver: Gpa::new(driver),
                device: Gpa::new(device),
                ready: true,
            })
        );
        // The driver reads the capacity as two 32-bit halves around the generation.
        let generation = rd(&mut t, REG_CONFIG_GENERATION);
        let low = t.read(0x100, 4).unwrap();
        let high = t.read(0x104, 4).unwrap();
        assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), generation);
        assert_eq!(u64::from(low) | u64::from(high) << 32, 2048);
        // A request: notify, the backend completes it, the interrupt, the ACK.
        assert_eq!(
            wr(&mut t, REG_QUEUE_NOTIFY, 0),
            Effect::Notify { queue: 0, data: 0 }
        );
        assert!(!t.line());
        assert!(t.raise_used(0));
        assert!(t.line());
        // Coalesced: the line is already up.
        assert!(!t.raise_used(0));
        assert_eq!(linux_interrupt(&mut t), (1, Effect::InterruptAcked));
        assert!(!t.line());
        // A spurious interrupt: nothing to ACK.
        assert_eq!(linux_interrupt(&mut t), (0, Effect::None));
        assert_eq!(t.ignored_accesses(), 0);
    }

    #[test]
    fn linux_probe_two_queues_net() {
        let mut t = net();
        let features = linux_probe(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC, 2).unwrap();
        assert_eq!(features, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        for q in 0..2u32 {
            let c = t.queue(q as usize).unwrap();
            let (desc, driver, device) = areas(q);
            assert!(c.ready);
            assert_eq!(c.size, 256);
            assert_eq!(
                (c.desc.raw(), c.driver.raw(), c.device.raw()),
                (desc, driver, device)
            );
        }
        // MAC address, byte by byte.
        let mac: Vec<u32> = (0..6).map(|i| t.read(0x100 + i, 1).unwrap()).collect();
        assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        // Status (le16 at 6).
        assert_eq!(t.read(0x106, 2).unwrap(), 1);
        assert_eq!(
            wr(&mut t, REG_QUEUE_NOTIFY, 1),
            Effect::Notify { queue: 1, data: 1 }
        );
        assert!(t.raise_used(1));
        // The link goes down: config change while the used bit is up.
        t.set_config(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0])
            .unwrap();
        assert!(!t.raise_config());
        assert_eq!(linux_interrupt(&mut t), (3, Effect::InterruptAcked));
        assert!(!t.line());
        assert_eq!(t.read(0x106, 2).unwrap(), 0);
        // A third queue does not exist.
        assert_eq!(setup_queue(&mut t, 2), Err("queue not available"));
        // A queue already set up is reported as such.
        assert_eq!(setup_queue(&mut t, 0), Err("queue already set up"));
    }

    #[test]
    fn feature_negotiation_refusals() {
        // The driver does not take VERSION_1: Linux refuses before FEATURES_OK; a
        // driver that tries anyway is refused by the device.
        let mut t = blk();
        assert_eq!(
            linux_probe(&mut t, VIRTIO_BLK_F_FLUSH, 1),
            Err("device uses modern interface without VIRTIO_F_VERSION_1")
        );
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, VIRTIO_BLK_F_FLUSH as u32);
        assert_eq!(add_status(&mut t, STATUS_FEATURES_OK), Effect::None);
        assert_eq!(t.status(), 3);
        // A feature the device does not offer.
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1 | 1 << 2);
        assert_eq!(add_status(&mut t, STATUS_FEATURES_OK), Effect::None);
        assert_eq!(t.status(), 3);
        // DRIVER_OK with a refused FEATURES_OK in the same write: ignored whole.
        let before = t.ignored_accesses();
        assert_eq!(wr(&mut t, REG_STATUS, 0xf), Effect::None);
        assert_eq!(t.ignored_accesses(), before + 1);
        assert_eq!(t.status(), 3);
        // The driver gives up.
        assert_eq!(
            add_status(&mut t, STATUS_FAILED),
            Effect::StatusChanged { status: 0x83 }
        );
        // VERSION_1 alone is accepted, and then the features are frozen.
        wr(&mut t, REG_STATUS, 0);
        add_status(&mut t, STATUS_ACKNOWLEDGE);
        add_status(&mut t, STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        assert_eq!(
            add_status(&mut t, STATUS_FEATURES_OK),
            Effect::StatusChanged { status: 0xb }
        );
        let before = t.ignored_accesses();
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, VIRTIO_BLK_F_FLUSH as u32);
        assert_eq!(t.ignored_accesses(), before + 1);
        assert_eq!(t.driver_features(), VIRTIO_F_VERSION_1);
        // Device features above 64 bits read 0; writing 0 there is harmless.
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0);
    }

    #[test]
    fn device_features_always_version_1_never_ring_reset() {
        let mut t = Transport::new(0);
        t.set_device(2, VIRTIO_F_RING_RESET, &[8], &[]).unwrap();
        assert_eq!(t.device_features(), VIRTIO_F_VERSION_1);
    }

    #[test]
    fn set_device_limits() {
        let mut t = Transport::new(0);
        assert_eq!(
            t.set_device(2, 0, &[8; MAX_QUEUES + 1], &[]),
            Err(DeviceError::TooManyQueues(MAX_QUEUES + 1))
        );
        assert_eq!(
            t.set_device(2, 0, &[8, 0], &[]),
            Err(DeviceError::BadQueueSize { queue: 1, size: 0 })
        );
        assert_eq!(
            t.set_device(2, 0, &[12], &[]),
            Err(DeviceError::BadQueueSize { queue: 0, size: 12 })
        );
        assert_eq!(
            t.set_device(2, 0, &[u16::MAX], &[]),
            Err(DeviceError::BadQueueSize {
                queue: 0,
                size: u16::MAX
            })
        );
        assert_eq!(
            t.set_device(2, 0, &[8], &[0; MAX_CONFIG + 1]),
            Err(DeviceError::ConfigTooLarge(MAX_CONFIG + 1))
        );
        assert_eq!(t.device_id(), 0);
        assert_eq!(t.queue_count(), 0);
        t.set_device(2, 0, &[MAX_QUEUE_SIZE; MAX_QUEUES], &[0xab; MAX_CONFIG])
            .unwrap();
        assert_eq!(t.queue_count(), MAX_QUEUES);
        assert_eq!(
            t.read(0x100 + MAX_CONFIG as u64 - 4, 4).unwrap(),
            0xabab_abab
        );
    }

    /// The probe of a two-queue device as a list of guest accesses: (offset, value);
    /// `None` for a read.
    fn probe_steps() -> Vec<(u64, Option<u32>)> {
        let mut steps = vec![
            (REG_MAGIC, None),
            (REG_STATUS, Some(0)),
            (REG_STATUS, Some(1)),
            (REG_STATUS, Some(3)),
            (REG_DEVICE_FEATURES_SEL, Some(1)),
            (REG_DEVICE_FEATURES, None),
            (REG_DRIVER_FEATURES_SEL, Some(1)),
            (REG_DRIVER_FEATURES, Some(1)),
            (REG_DRIVER_FEATURES_SEL, Some(0)),
            (REG_DRIVER_FEATURES, Some(VIRTIO_NET_F_MAC as u32)),
            (REG_STATUS, Some(0xb)),
            (REG_STATUS, None),
        ];
        for q in 0..2u32 {
            let (desc, driver, device) = areas(q);
            steps.extend([
                (REG_QUEUE_SEL, Some(q)),
                (REG_QUEUE_NUM, Some(64)),
                (REG_QUEUE_DESC_LOW, Some(desc as u32)),
                (REG_QUEUE_DESC_HIGH, Some((desc >> 32) as u32)),
                (REG_QUEUE_DRIVER_LOW, Some(driver as u32)),
                (REG_QUEUE_DRIVER_HIGH, Some((driver >> 32) as u32)),
                (REG_QUEUE_DEVICE_LOW, Some(device as u32)),
                (REG_QUEUE_DEVICE_HIGH, Some((device >> 32) as u32)),
                (REG_QUEUE_READY, Some(1)),
            ]);
        }
        steps.extend([
            (REG_STATUS, Some(0xf)),
            (REG_QUEUE_NOTIFY, Some(0)),
            (REG_QUEUE_NOTIFY, Some(1)),
        ]);
        steps
    }

    fn run(t: &mut Transport, steps: &[(u64, Option<u32>)]) {
        for &(offset, value) in steps {
            match value {
                Some(v) => {
                    t.write(offset, 4, v).unwrap();
                }
                None => {
                    t.read(offset, 4).unwrap();
                }
            }
            check_invariants(t);
        }
    }

    #[test]
    fn reset_at_any_point() {
        let steps = probe_steps();
        for k in 0..=steps.len() {
            for by_guest in [true, false] {
                let mut t = net();
                run(&mut t, &steps[..k]);
                t.raise_used(0);
                t.raise_config();
                let was_up = t.line();
                t.write(0x100, 1, 0xff).unwrap();
                if by_guest {
                    assert_eq!(
                        wr(&mut t, REG_STATUS, 0),
                        Effect::StatusChanged { status: 0 }
                    );
                } else {
                    assert_eq!(t.reset(), was_up);
                }
                check_reset(&t);
                check_invariants(&t);
                // The guest's config write is forgotten.
                assert_eq!(t.read(0x100, 1).unwrap(), 0x52);
                // The whole probe works again from there.
                let ignored = t.ignored_accesses();
                run(&mut t, &steps);
                assert_eq!(t.ignored_accesses(), ignored, "after reset at step {k}");
                assert!(t.is_live());
                assert!(t.queue(0).unwrap().ready && t.queue(1).unwrap().ready);
            }
        }
    }

    #[test]
    fn forbidden_writes_are_ignored_and_counted() {
        let mut t = net();
        let mut expect = 0;
        let mut ignored = |t: &Transport, n: u64| {
            expect += n;
            assert_eq!(t.ignored_accesses(), expect);
        };
        // Read-only registers: writes change nothing.
        for reg in [
            REG_MAGIC,
            REG_VERSION,
            REG_DEVICE_ID,
            REG_VENDOR_ID,
            REG_DEVICE_FEATURES,
            REG_QUEUE_NUM_MAX,
            REG_INTERRUPT_STATUS,
            REG_SHM_LEN_LOW,
            REG_CONFIG_GENERATION,
        ] {
            assert_eq!(wr(&mut t, reg, 0xdead_beef), Effect::None);
        }
        ignored(&t, 9);
        assert_eq!(rd(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 1);
        // Write-only registers read 0.
        wr(&mut t, REG_QUEUE_SEL, 1);
        for reg in [
            REG_DEVICE_FEATURES_SEL,
            REG_DRIVER_FEATURES,
            REG_DRIVER_FEATURES_SEL,
            REG_QUEUE_SEL,
            REG_QUEUE_NUM,
            REG_QUEUE_NOTIFY,
            REG_INTERRUPT_ACK,
            REG_QUEUE_DESC_LOW,
            REG_QUEUE_DEVICE_HIGH,
            REG_SHM_SEL,
        ] {
            assert_eq!(rd(&mut t, reg), 0);
        }
        ignored(&t, 10);
        // Reserved offsets, including the legacy registers and QueueReset.
        for reg in [0x018, 0x028, 0x03c, 0x040, 0x0a8, 0x0c0, 0x0f8] {
            assert_eq!(rd(&mut t, reg), 0);
            assert_eq!(wr(&mut t, reg, 1), Effect::None);
        }
        ignored(&t, 14);
        // Driver features before DRIVER.
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        ignored(&t, 1);
        assert_eq!(t.driver_features(), 0);
        // Status out of order, then clearing a bit.
        assert_eq!(wr(&mut t, REG_STATUS, 2), Effect::None);
        ignored(&t, 1);
        wr(&mut t, REG_STATUS, 1);
        wr(&mut t, REG_STATUS, 3);
        assert_eq!(wr(&mut t, REG_STATUS, 2), Effect::None);
        ignored(&t, 1);
        assert_eq!(t.status(), 3);
        // Undefined status bits are dropped (and counted); the rest applies.
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        assert_eq!(
            wr(&mut t, REG_STATUS, 0x13b),
            Effect::StatusChanged { status: 0xb }
        );
        ignored(&t, 1);
        // Queue registers of a queue that does not exist.
        wr(&mut t, REG_QUEUE_SEL, 2);
        wr(&mut t, REG_QUEUE_NUM, 8);
        wr(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        ignored(&t, 2);
        wr(&mut t, REG_QUEUE_SEL, u32::MAX);
        wr(&mut t, REG_QUEUE_DESC_LOW, 0);
        ignored(&t, 1);
        // QueueNum above QueueNumMax, then not a power of two: QueueReady stays 0.
        wr(&mut t, REG_QUEUE_SEL, 0);
        let (desc, driver, device) = areas(0);
        write_addr(&mut t, REG_QUEUE_DESC_LOW, desc);
        write_addr(&mut t, REG_QUEUE_DRIVER_LOW, driver);
        write_addr(&mut t, REG_QUEUE_DEVICE_LOW, device);
        for num in [0, 512, 100] {
            wr(&mut t, REG_QUEUE_NUM, num);
            assert_eq!(wr(&mut t, REG_QUEUE_READY, 1), Effect::None);
            assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
            ignored(&t, 1);
        }
        // Misaligned areas, and areas that wrap: QueueReady stays 0.
        wr(&mut t, REG_QUEUE_NUM, 64);
        for (low, bad) in [
            (REG_QUEUE_DESC_LOW, desc + 8),
            (REG_QUEUE_DRIVER_LOW, driver + 1),
            (REG_QUEUE_DEVICE_LOW, device + 2),
            (REG_QUEUE_DESC_LOW, u64::MAX - 15),
            (REG_QUEUE_DEVICE_LOW, u64::MAX - 3),
        ] {
            write_addr(&mut t, low, bad);
            assert_eq!(wr(&mut t, REG_QUEUE_READY, 1), Effect::None);
            assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
            ignored(&t, 1);
            write_addr(&mut t, REG_QUEUE_DESC_LOW, desc);
            write_addr(&mut t, REG_QUEUE_DRIVER_LOW, driver);
            write_addr(&mut t, REG_QUEUE_DEVICE_LOW, device);
        }
        // QueueReady values other than 0 and 1.
        wr(&mut t, REG_QUEUE_READY, 2);
        ignored(&t, 1);
        assert_eq!(wr(&mut t, REG_QUEUE_READY, 1), Effect::None);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        // A ready queue's registers are frozen.
        wr(&mut t, REG_QUEUE_NUM, 32);
        wr(&mut t, REG_QUEUE_DESC_HIGH, 0);
        ignored(&t, 2);
        assert_eq!(t.queue(0).unwrap().size, 64);
        assert_eq!(t.queue(0).unwrap().desc.raw(), desc);
        // Notify before DRIVER_OK, and used-buffer interrupts before DRIVER_OK.
        assert_eq!(wr(&mut t, REG_QUEUE_NOTIFY, 0), Effect::None);
        ignored(&t, 1);
        assert!(!t.raise_used(0));
        assert!(!t.line());
        wr(&mut t, REG_STATUS, 0xf);
        // Notify of a queue that is not ready, or does not exist.
        for q in [1, 2, 0x1_0000] {
            assert_eq!(wr(&mut t, REG_QUEUE_NOTIFY, q), Effect::None);
        }
        ignored(&t, 3);
        assert!(!t.raise_used(1));
        assert!(!t.raise_used(usize::MAX));
        // Undefined InterruptACK bits.
        wr(&mut t, REG_INTERRUPT_ACK, 4);
        ignored(&t, 1);
        // FAILED: only a reset helps; notifications stop.
        assert_eq!(
            wr(&mut t, REG_STATUS, 0x8f),
            Effect::StatusChanged { status: 0x8f }
        );
        assert!(!t.is_live());
        assert_eq!(wr(&mut t, REG_QUEUE_NOTIFY, 0), Effect::None);
        wr(&mut t, REG_STATUS, 0xff);
        ignored(&t, 2);
        assert_eq!(t.status(), 0x8f);
        // The driver's idea of DEVICE_NEEDS_RESET does not count.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(
            wr(&mut t, REG_STATUS, 0x41),
            Effect::StatusChanged { status: 1 }
        );
        ignored(&t, 0);
    }

    #[test]
    fn queue_changes_while_live_are_reported() {
        let mut t = net();
        linux_probe(&mut t, u64::MAX, 1).unwrap();
        // Queue 1 set up after DRIVER_OK.
        wr(&mut t, REG_QUEUE_SEL, 1);
        wr(&mut t, REG_QUEUE_NUM, 16);
        let (desc, driver, device) = areas(1);
        write_addr(&mut t, REG_QUEUE_DESC_LOW, desc);
        write_addr(&mut t, REG_QUEUE_DRIVER_LOW, driver);
        write_addr(&mut t, REG_QUEUE_DEVICE_LOW, device);
        assert_eq!(
            wr(&mut t, REG_QUEUE_READY, 1),
            Effect::QueueChanged { queue: 1 }
        );
        assert_eq!(wr(&mut t, REG_QUEUE_READY, 1), Effect::None);
        // Stopping queue 0: reported, and read back as 0.
        wr(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(
            wr(&mut t, REG_QUEUE_READY, 0),
            Effect::QueueChanged { queue: 0 }
        );
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        assert!(!t.queue(0).unwrap().ready);
        assert_eq!(wr(&mut t, REG_QUEUE_NOTIFY, 0), Effect::None);
        assert_eq!(t.ignored_accesses(), 1);
    }

    #[test]
    fn bad_widths_and_offsets_fault() {
        let mut t = blk();
        for width in [0, 1, 2, 3, 8, u32::MAX] {
            assert_eq!(t.read(REG_STATUS, width), Err(Fault::BadAccess));
            assert_eq!(t.write(REG_STATUS, width, 1), Err(Fault::BadAccess));
        }
        for offset in [1, 2, 3, 0x71, 0xfe] {
            assert_eq!(t.read(offset, 4), Err(Fault::BadAccess));
            assert_eq!(t.write(offset, 4, 1), Err(Fault::BadAccess));
        }
        // Config space: 1, 2 and 4 bytes, naturally aligned.
        for (offset, width) in [(0x101, 2), (0x102, 4), (0x100, 8), (0x100, 3), (0x100, 0)] {
            assert_eq!(t.read(offset, width), Err(Fault::BadAccess));
            assert_eq!(t.write(offset, width, 1), Err(Fault::BadAccess));
        }
        for offset in [WINDOW_SIZE, WINDOW_SIZE + 4, u64::MAX - 3, u64::MAX] {
            assert_eq!(t.read(offset, 4), Err(Fault::OutsideWindow));
            assert_eq!(t.write(offset, 4, 1), Err(Fault::OutsideWindow));
        }
        assert_eq!(t.status(), 0);
        assert_eq!(t.ignored_accesses(), 0);
    }

    #[test]
    fn config_space() {
        let mut t = blk();
        let generation = t.config_generation();
        assert_eq!(t.read(0x100, 4).unwrap(), 2048);
        assert_eq!(t.read(0x100, 2).unwrap(), 2048);
        assert_eq!(t.read(0x101, 1).unwrap(), 8);
        assert_eq!(t.read(0x108, 4).unwrap(), 0x1000);
        // Beyond the 12 bytes: 0, counted.
        assert_eq!(t.read(0x10c, 4).unwrap(), 0);
        assert_eq!(t.read(0xffc, 4).unwrap(), 0);
        assert_eq!(t.ignored_accesses(), 2);
        // Guest writes are stored and reported, not versioned.
        assert_eq!(
            t.write(0x10a, 2, 0xbeef_1234).unwrap(),
            Effect::ConfigWrite { offset: 10, len: 2 }
        );
        assert_eq!(t.read(0x108, 4).unwrap(), 0x1234_1000);
        assert_eq!(&t.config()[8..], &[0, 0x10, 0x34, 0x12]);
        assert_eq!(t.config_generation(), generation);
        assert_eq!(t.write(0x10c, 1, 1).unwrap(), Effect::None);
        assert_eq!(t.ignored_accesses(), 3);
        // The backend changes it: the generation moves.
        t.set_config(&4096u64.to_le_bytes()).unwrap();
        assert_ne!(t.config_generation(), generation);
        assert_eq!(t.read(0x100, 4).unwrap(), 4096);
        assert_eq!(t.read(0x108, 4).unwrap(), 0);
        assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), t.config_generation());
        // No config-change interrupt without a driver.
        assert!(!t.raise_config());
        wr(&mut t, REG_STATUS, 1);
        assert!(t.raise_config());
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    }

    #[test]
    fn needs_reset() {
        let mut t = blk();
        // Before DRIVER_OK: the bit, no interrupt.
        wr(&mut t, REG_STATUS, 1);
        assert!(!t.needs_reset());
        assert_eq!(rd(&mut t, REG_STATUS), 0x41);
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        // Live: the bit and a configuration-change interrupt.
        linux_probe(&mut t, u64::MAX, 1).unwrap();
        assert!(t.needs_reset());
        assert!(t.line());
        assert_eq!(rd(&mut t, REG_STATUS), 0x4f);
        assert_eq!(linux_interrupt(&mut t), (2, Effect::InterruptAcked));
        // The driver's status writes keep the device's bit.
        assert_eq!(
            wr(&mut t, REG_STATUS, 0xcf),
            Effect::StatusChanged { status: 0xcf }
        );
        assert_eq!(
            wr(&mut t, REG_STATUS, 0),
            Effect::StatusChanged { status: 0 }
        );
        check_reset(&t);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn packed_ring_and_notification_data() {
        let mut t = Transport::new(0);
        t.set_device(
            2,
            VIRTIO_F_RING_PACKED | VIRTIO_F_NOTIFICATION_DATA,
            &[256, 256],
            &[],
        )
        .unwrap();
        wr(&mut t, REG_STATUS, 3);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(
            &mut t,
            REG_DRIVER_FEATURES,
            ((VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED | VIRTIO_F_NOTIFICATION_DATA) >> 32) as u32,
        );
        wr(&mut t, REG_STATUS, 0xb);
        assert_eq!(t.status(), 0xb);
        // A packed ring of 100 entries; the event suppression areas are 4-byte aligned.
        wr(&mut t, REG_QUEUE_NUM, 100);
        write_addr(&mut t, REG_QUEUE_DESC_LOW, 0x8000_0000);
        write_addr(&mut t, REG_QUEUE_DRIVER_LOW, 0x8000_1004);
        write_addr(&mut t, REG_QUEUE_DEVICE_LOW, 0x8000_1008);
        wr(&mut t, REG_QUEUE_READY, 1);
        assert!(t.queue(0).unwrap().ready);
        wr(&mut t, REG_STATUS, 0xf);
        // Notification data: queue index in the low 16 bits.
        let data = 0x8005_0000;
        assert_eq!(
            wr(&mut t, REG_QUEUE_NOTIFY, data),
            Effect::Notify { queue: 0, data }
        );
        assert_eq!(wr(&mut t, REG_QUEUE_NOTIFY, data | 1), Effect::None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Read(u64, u32),
        Write(u64, u32, u32),
        RaiseUsed(usize),
        RaiseConfig,
        NeedsReset,
        Reset,
        SetConfig(Vec<u8>),
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            // Registers, mostly aligned.
            8 => (0u64..0x40).prop_map(|i| i * 4),
            2 => 0u64..0x100,
            2 => 0x100u64..0x120,
            1 => 0x100u64..WINDOW_SIZE,
            1 => any::<u64>(),
        ]
    }

    fn value() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => 0u32..4,
            2 => prop::sample::select(vec![0xb, 0xf, 0x8f, 0x41, 16, 64, 128, 256, 100]),
            2 => (0u32..0x1000).prop_map(|v| v * 16),
            1 => any::<u32>(),
        ]
    }

    fn width() -> impl Strategy<Value = u32> {
        prop_oneof![8 => Just(4u32), 1 => Just(1), 1 => Just(2), 1 => any::<u32>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (offset(), width()).prop_map(|(o, w)| Op::Read(o, w)),
            12 => (offset(), width(), value()).prop_map(|(o, w, v)| Op::Write(o, w, v)),
            1 => (0usize..10).prop_map(Op::RaiseUsed),
            1 => Just(Op::RaiseConfig),
            1 => Just(Op::NeedsReset),
            1 => Just(Op::Reset),
            1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Op::SetConfig),
        ]
    }

    proptest! {
        #[test]
        fn random_accesses_keep_invariants(
            queues in prop_oneof![
                // Room for the probe prefix's two queues of 64.
                3 => prop::collection::vec(prop::sample::select(vec![64u16, 256, 32768]), 2..=MAX_QUEUES),
                1 => prop::collection::vec(prop::sample::select(vec![1u16, 2, 16, 256, 32768]), 0..=MAX_QUEUES),
            ],
            features in any::<u64>(),
            prefix in prop_oneof![1 => Just(usize::MAX), 1 => 0usize..40],
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let mut t = Transport::new(7);
            // The probe prefix asks for VIRTIO_NET_F_MAC: offer it so it can succeed.
            t.set_device(2, features | VIRTIO_NET_F_MAC, &queues, &[1, 2, 3, 4]).unwrap();
            // Start part of the way into a valid probe, so deep states are reached.
            let steps = probe_steps();
            if queues.len() >= 2 && queues.iter().take(2).all(|&s| s >= 64) {
                run(&mut t, &steps[..prefix.min(steps.len())]);
            }
            for op in ops {
                let line_before = t.line();
                match op {
                    Op::Read(o, w) => {
                        let r = t.read(o, w);
                        prop_assert_eq!(r.is_err(), o >= WINDOW_SIZE
                            || (o < CONFIG_OFFSET && (w != 4 || o % 4 != 0))
                            || (o >= CONFIG_OFFSET && (!matches!(w, 1 | 2 | 4) || o % u64::from(w) != 0)));
                    }
                    Op::Write(o, w, v) => {
                        match t.write(o, w, v) {
                            Ok(Effect::StatusChanged { status: 0 }) => check_reset(&t),
                            Ok(Effect::StatusChanged { status }) => prop_assert_eq!(status, t.status()),
                            Ok(Effect::Notify { queue, .. }) => {
                                prop_assert!(t.is_live());
                                prop_assert!(t.queue(usize::from(queue)).unwrap().ready);
                            }
                            Ok(Effect::InterruptAcked) => prop_assert!(line_before),
                            Ok(Effect::ConfigWrite { offset, len }) => {
                                prop_assert!(usize::from(offset) + usize::from(len) <= t.config().len());
                            }
                            Ok(Effect::QueueChanged { queue }) => {
                                prop_assert!(usize::from(queue) < t.queue_count());
                                prop_assert!(t.status() & STATUS_DRIVER_OK != 0);
                            }
                            Ok(Effect::None) | Err(_) => {}
                        }
                    }
                    Op::RaiseUsed(q) => {
                        let up = t.raise_used(q);
                        prop_assert_eq!(up, !line_before && t.line());
                    }
                    Op::RaiseConfig => {
                        let up = t.raise_config();
                        prop_assert_eq!(up, !line_before && t.line());
                    }
                    Op::NeedsReset => {
                        let up = t.needs_reset();
                        prop_assert_eq!(up, !line_before && t.line());
                        prop_assert!(t.status() & STATUS_DEVICE_NEEDS_RESET != 0);
                    }
                    Op::Reset => {
                        prop_assert_eq!(t.reset(), line_before);
                        check_reset(&t);
                    }
                    Op::SetConfig(bytes) => {
                        let r = t.set_config(&bytes);
                        prop_assert_eq!(r.is_ok(), bytes.len() <= MAX_CONFIG);
                    }
                }
                check_invariants(&t);
            }
        }
    }
}
