//! What REBOOT puts a VM back to: the image a spawned VM was built from, or the
//! copy-on-write snapshot a forked one was taken at.

use crate::build::{self, BuildError, VmSpec};
use crate::image::{Bytes, CopyError, ImageStore};
use crate::sched;
use crate::vcpu::{Vcpu, VcpuState};
use crate::vm::{self, Vm};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use diosix_abi::{flags, SpawnArgs};
use diosix_core::addr::{Gpa, PAGE_SIZE};
use diosix_core::payload::{self, PayloadIndex, INDEX_WINDOW, MAGIC as PAYLOAD_MAGIC};
use diosix_core::tree::{SbiError, VmId};
use spin::Mutex;

/// What REBOOT puts each VM back to (none for a VM forked with `FORK_NO_SNAPSHOT`).
pub(super) static ORIGINS: Mutex<BTreeMap<VmId, Origin>> = Mutex::new(BTreeMap::new());

/// The state a VM was created or forked in, kept for REBOOT.
pub(super) enum Origin {
    /// A spawned VM: built again from its image.
    Image(ImageOrigin),
    /// A forked VM: its memory (copy-on-write, sharing every frame it had at FORK) and
    /// vCPUs as FORK left them.
    Snapshot(Snapshot),
}

/// A forked VM as it was right after FORK.
pub(super) struct Snapshot {
    /// Never run: a third holder of the fork-time leaf tables, so neither the parent's
    /// nor the child's later writes reach it.
    pub(super) memory: Frozen,
    pub(super) states: Vec<VcpuState>,
    pub(super) name: alloc::string::String,
    pub(super) ram: diosix_core::addr::Range<Gpa>,
    pub(super) priority: u8,
    /// Its virtual PLIC and its parent's device registers, as the clone had them.
    pub(super) devices: crate::vm::CloneDevices,
}

/// Guest memory no VM runs on, given back to the host when dropped.
pub(super) struct Frozen(pub(super) Option<Box<dyn crate::isolation::Isolation>>);

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            m.release();
        }
    }
}

impl Snapshot {
    /// A new VM `id` in the snapshot's state: its memory shares the snapshot's (one
    /// pass over the level-1 tables), its vCPUs are the saved ones.
    pub(super) fn restore(&mut self, id: VmId) -> Result<Arc<Vm>, alloc::string::String> {
        let frozen = self.memory.0.as_mut().ok_or("snapshot already released")?;
        let memory = frozen.fork()?;
        let vm = vm::adopt(
            id,
            self.name.clone(),
            memory,
            self.ram,
            self.states.len(),
            self.priority,
            self.devices.clone(),
        )
        .ok_or("no VMID free")?;
        enqueue_states(&vm, &self.states);
        Ok(vm)
    }
}

/// Queues a vCPU of `vm` for each saved state.
pub(super) fn enqueue_states(vm: &Arc<Vm>, states: &[VcpuState]) {
    for st in states {
        let shared = vm.vcpus[st.index].clone();
        shared.set_state(st.hsm);
        sched::enqueue(Box::new(Vcpu::from_state(vm.clone(), shared, st)));
    }
}

/// A spawned VM's image and parameters, kept for REBOOT.
pub(super) struct ImageOrigin {
    pub(super) image: ImageStore,
    pub(super) dtb: Option<ImageStore>,
    pub(super) name: alloc::string::String,
    pub(super) ram_bytes: u64,
    pub(super) vcpus: usize,
    pub(super) priority: u8,
    pub(super) start: bool,
    /// Built with a virtual PLIC: it was trusted when spawned or EXEC'd, so it may
    /// take host devices and route their interrupts to itself.
    pub(super) virtual_plic: bool,
    /// The virtio devices its parent serves it (kept across REBOOT and EXEC).
    pub(super) virtio: Option<Arc<crate::virtio::ChildVirtio>>,
}

impl ImageOrigin {
    /// Builds (again) the VM `id` from this origin, for the caller to queue; gives up
    /// when `cancelled` holds. A `DSXPAYLD` image is split into kernel, initrd and
    /// command line from its index; only headers and the command line (each bounded by
    /// a constant) are read into the heap.
    pub(super) fn build(
        &self,
        id: VmId,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<build::Built, BuildError> {
        let store = &self.image;
        let read_err = |e: CopyError| BuildError::Host(format!("reading the image: {e:?}"));
        let magic = store.read(0, PAYLOAD_MAGIC.len().min(store.len() as usize));
        let stored = |range: core::ops::Range<usize>| Bytes::Stored {
            store,
            range: range.start as u64..range.end as u64,
        };
        let (kernel, initrd, cmdline) = if magic.map_err(read_err)? == PAYLOAD_MAGIC {
            let window = store
                .read(0, INDEX_WINDOW.min(store.len() as usize))
                .map_err(read_err)?;
            let len = usize::try_from(store.len()).unwrap_or(usize::MAX);
            let index = PayloadIndex::parse(&window, len)
                .map_err(|e| BuildError::Refused(format!("payload: {e}")))?;
            let cmdline = match index.cmdline {
                Some(r) => {
                    let bytes = store.read(r.start as u64, r.len()).map_err(read_err)?;
                    let text = payload::check_cmdline(&bytes)
                        .map_err(|e| BuildError::Refused(format!("payload: {e}")))?;
                    Some(alloc::string::String::from(text))
                }
                None => None,
            };
            (stored(index.kernel), index.initrd.map(stored), cmdline)
        } else {
            (
                Bytes::Stored {
                    store,
                    range: 0..store.len(),
                },
                None,
                None,
            )
        };
        build::build_vm(
            crate::platform::host(),
            &VmSpec {
                id,
                name: self.name.clone(),
                ram_bytes: self.ram_bytes,
                vcpus: self.vcpus,
                priority: self.priority,
                kernel,
                initrd,
                cmdline: cmdline.as_deref(),
                dtb: self.dtb.as_ref().map(|d| Bytes::Stored {
                    store: d,
                    range: 0..d.len(),
                }),
                is_root: false,
                start: self.start,
                cancelled,
                devices: &[],
                virtual_plic: self.virtual_plic,
                pinned: false,
                virtio: self.virtio.as_ref().map(|v| v.devices.clone()),
            },
        )
    }

    /// Gathers a SPAWN's image (and device tree) from `parent`'s memory, as `args`
    /// (already checked by the tree) describe it, into stores of host pages wherever
    /// they are free; gives up when `cancelled` holds.
    pub(super) fn from_guest(
        parent: &Vm,
        id: VmId,
        args: &SpawnArgs,
        virtio: Option<Arc<crate::virtio::ChildVirtio>>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, SbiError> {
        let image = ImageStore::new(args.image_size, cancelled).map_err(no_room)?;
        if args.flags & flags::SPAWN_PAGE_LIST != 0 {
            // One list entry per page, each a page-aligned GPA in the parent's RAM.
            for (i, off) in (0..args.image_size).step_by(PAGE_SIZE as usize).enumerate() {
                let mut entry = [0u8; 8];
                let at = args
                    .image_gpa
                    .checked_add(i as u64 * 8)
                    .ok_or(SbiError::InvalidAddress)?;
                parent
                    .read(Gpa::new(at), &mut entry)
                    .map_err(|_| SbiError::InvalidAddress)?;
                let gpa = Gpa::new(u64::from_le_bytes(entry));
                if !gpa.is_page_aligned() {
                    return Err(SbiError::InvalidAddress);
                }
                let n = (args.image_size - off).min(PAGE_SIZE);
                image
                    .fill_from(off, parent, gpa, n, cancelled)
                    .map_err(copy_error)?;
            }
        } else {
            image
                .fill_from(
                    0,
                    parent,
                    Gpa::new(args.image_gpa),
                    args.image_size,
                    cancelled,
                )
                .map_err(copy_error)?;
        }
        let dtb = if args.dtb_size != 0 {
            let dtb = ImageStore::new(args.dtb_size, cancelled).map_err(no_room)?;
            dtb.fill_from(0, parent, Gpa::new(args.dtb_gpa), args.dtb_size, cancelled)
                .map_err(copy_error)?;
            Some(dtb)
        } else {
            None
        };
        Ok(Self {
            image,
            dtb,
            name: format!("{}/vm{}", parent.name, id.index()),
            ram_bytes: args
                .ram_pages
                .checked_mul(PAGE_SIZE)
                .ok_or(SbiError::InvalidParam)?,
            vcpus: usize::try_from(args.vcpus).map_err(|_| SbiError::InvalidParam)?,
            priority: u8::try_from(args.priority).unwrap_or(u8::MAX),
            start: args.flags & flags::SPAWN_PAUSED == 0,
            virtual_plic: args.flags & flags::SPAWN_TRUSTED != 0,
            virtio,
        })
    }
}

/// A store the host could not fill: the build was cancelled (the child or its parent
/// was killed meanwhile), or the host is out of RAM the tree had charged.
pub(super) fn no_room(e: alloc::string::String) -> SbiError {
    if e == crate::guestmem::CANCELLED {
        log::warn!("SPAWN refused: {e}");
    } else {
        log::warn!("SPAWN: no room for the image: {e}");
    }
    SbiError::Failed
}

/// A copy out of the parent's memory that failed: a bad address of the caller's, or a
/// cancelled build.
pub(super) fn copy_error(e: CopyError) -> SbiError {
    match e {
        CopyError::Access(_) => SbiError::InvalidAddress,
        CopyError::Cancelled => SbiError::Failed,
    }
}
