//! Virtual machines: guest memory behind G-stage tables, and building the Root VM from
//! the payload embedded in this image.

use crate::image::{Bytes, CopyError};
use crate::mem::{self, PhysTables, TableAlloc};
use crate::vcpu::{Vcpu, VcpuShared, Wait};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::gstage::{AccessError, GStageTable, Perms};
use diosix_core::hostfdt::HostPlatform;
use diosix_core::sbi::HartState;
use diosix_core::tree::VmId;
use diosix_core::{guestfdt, loader, payload::Payload};
use spin::Mutex;

/// What [`GuestMemory::new`] and [`build_vm`] say when they were cancelled.
const CANCELLED: &str = "cancelled";

/// Where every guest's RAM starts, as the guest sees it.
pub const GUEST_RAM_BASE: Gpa = Gpa::new(0x8000_0000);
/// Largest backing block tried when allocating guest RAM (2 MiB).
const MAX_BLOCK_PAGES: usize = 512;

/// A guest's RAM: host pages mapped into its G-stage table.
///
/// The table is the only record of which frames the guest owns: RAM is allocated in
/// blocks but released page by page, because after a copy-on-write FORK any page of a
/// block may be shared, replaced by a private copy, or still the VM's own.
pub struct GuestMemory {
    pub table: GStageTable,
}

impl GuestMemory {
    /// Allocates and maps zeroed RAM for `ram` (page-aligned). Checks `cancelled`
    /// before each block of at most 2 MiB, and gives everything back if it holds.
    pub fn new(ram: Range<Gpa>, cancelled: &dyn Fn() -> bool) -> Result<Self, String> {
        let table = GStageTable::new(&mut TableAlloc(&mut mem::frames()))
            .map_err(|e| format!("G-stage root table: {e}"))?;
        let mut this = Self { table };
        let mut remaining = (ram.len / PAGE_SIZE) as usize;
        let mut gpa = ram.start;
        let mut block = MAX_BLOCK_PAGES;
        while remaining > 0 {
            if cancelled() {
                this.destroy();
                return Err(CANCELLED.into());
            }
            // Taken per block, so other harts' copy-on-write copies are not held up
            // while a large VM is zeroed.
            let mut frames = mem::frames();
            block = block
                .min(remaining.next_power_of_two())
                .min(MAX_BLOCK_PAGES);
            let want = block.min(remaining);
            let Some(hpa) = mem::alloc_zeroed(&mut frames, want, block) else {
                if block == 1 {
                    drop(frames);
                    this.destroy();
                    return Err(format!(
                        "out of host RAM for {} MiB of guest RAM",
                        ram.len >> 20
                    ));
                }
                block /= 2;
                continue;
            };
            let len = want as u64 * PAGE_SIZE;
            if let Err(e) = this.table.map_range(
                &mut PhysTables,
                &mut TableAlloc(&mut frames),
                gpa,
                hpa,
                len,
                Perms::RWX,
            ) {
                // Not in the table, so destroy() cannot find it.
                let _ = frames.free(hpa, want);
                drop(frames);
                this.destroy();
                return Err(format!("mapping {gpa}: {e}"));
            }
            gpa = Gpa::new(gpa.raw() + len);
            remaining -= want;
        }
        Ok(this)
    }

    /// Host chunks backing the guest buffer `[gpa, gpa+len)`, checked page by page.
    pub fn chunks(&self, gpa: Gpa, len: u64, write: bool) -> Result<Vec<(Hpa, u64)>, AccessError> {
        self.table.guest_chunks(&PhysTables, gpa, len, write)
    }

    /// Copies `bytes` into guest memory at `gpa`.
    pub fn write(&self, gpa: Gpa, bytes: &[u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        for (hpa, n) in self.chunks(gpa, bytes.len() as u64, true)? {
            let n = n as usize;
            // SAFETY: the chunk is guest RAM this VM owns, freshly translated by its
            // G-stage table; `bytes` lives in hypervisor memory, so they cannot overlap.
            unsafe { diosix_riscv::physmem::copy_in(hpa, &bytes[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Copies guest memory at `gpa` into `out`.
    pub fn read(&self, gpa: Gpa, out: &mut [u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        for (hpa, n) in self.chunks(gpa, out.len() as u64, false)? {
            let n = n as usize;
            // SAFETY: as for write, in the other direction.
            unsafe { diosix_riscv::physmem::copy_out(hpa, &mut out[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Translates one GPA (the G-stage walk).
    pub fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        self.table.translate(&PhysTables, gpa)
    }

    /// Copy-on-write FORK: a new guest memory sharing every leaf table (so every
    /// frame) with this one, in time independent of RAM size (see
    /// `diosix_core::gstage` `shared`). The caller has every vCPU of this VM off its
    /// hart except its own; this hart's G-stage TLB is flushed here, the others flush
    /// when they next load one.
    pub fn fork(&mut self) -> Result<Self, String> {
        let forked = {
            let mut shares = crate::cow::SHARES.lock();
            let mut frames = mem::frames();
            self.table
                .fork_shared(&mut PhysTables, &mut TableAlloc(&mut frames), &mut shares)
        };
        let table = forked.map_err(|e| format!("G-stage tables for the clone: {e}"))?;
        // This VM's leaf tables are now reached only through invalid entries: the
        // writable translations cached from them must go.
        diosix_riscv::fence::hfence_gvma_all();
        Ok(Self { table })
    }

    /// Returns every page (RAM and tables) to the host allocator, except frames and
    /// leaf tables other VMs still share (they lose one sharer instead).
    pub fn destroy(self) {
        let mut shares = crate::cow::SHARES.lock();
        let mut frames = mem::frames();
        // Frames come in GPA order, which for RAM still in the blocks it was built from
        // is HPA order too: contiguous runs go back in one call each, and nothing
        // proportional to the VM's RAM is allocated to tear it down.
        let mut run: Option<(Hpa, usize)> = None;
        self.table.release_with(
            &PhysTables,
            &mut TableAlloc(&mut frames),
            &mut shares,
            |frames, hpa| match run {
                Some((start, n)) if start.raw() + n as u64 * PAGE_SIZE == hpa.raw() => {
                    run = Some((start, n + 1));
                }
                _ => {
                    if let Some((start, n)) = run.replace((hpa, 1)) {
                        free_run(frames.0, start, n);
                    }
                }
            },
        );
        if let Some((start, n)) = run {
            free_run(&mut frames, start, n);
        }
    }
}

/// Returns `n` contiguous guest RAM frames from `start`; a run that straddles two
/// allocations is refused as a whole and then returned page by page.
fn free_run(frames: &mut diosix_core::frames::HostFrames, start: Hpa, n: usize) {
    if frames.free_part(start, n).is_ok() {
        return;
    }
    for i in 0..n as u64 {
        let hpa = Hpa::new(start.raw() + i * PAGE_SIZE);
        if let Err(e) = frames.free_part(hpa, 1) {
            log::error!("guest RAM frame {hpa} not returned: {e}");
        }
    }
}

/// A virtual machine.
pub struct Vm {
    /// Its node in the VM tree.
    pub id: VmId,
    /// Name for logs (never shown to other VMs).
    pub name: String,
    /// G-stage VMID.
    pub vmid: u16,
    /// The hgatp value that selects this VM's G-stage table.
    pub hgatp: usize,
    /// Guest RAM (`None` once released).
    pub mem: Mutex<Option<GuestMemory>>,
    /// Its RAM range (immutable copy, readable without the lock).
    pub ram: Range<Gpa>,
    /// One entry per vCPU, indexed by guest hart ID.
    pub vcpus: Vec<Arc<VcpuShared>>,
    /// Scheduling priority of its vCPUs.
    pub priority: u8,
    /// The Root VM: its console is the UART and its end restarts the host.
    pub is_root: bool,
    /// Paused by its parent (STOP).
    pub stopped: AtomicBool,
    /// Held still while a FORK shares its memory.
    pub held: AtomicBool,
    /// Terminated: its vCPUs are dropped wherever they are found.
    pub dead: AtomicBool,
}

impl Vm {
    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// Whether its vCPUs may be scheduled.
    pub fn can_run(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
            && !self.held.load(Ordering::Acquire)
            && !self.dead.load(Ordering::Acquire)
    }

    /// Copies guest memory at `gpa` into `out`.
    pub fn read(&self, gpa: Gpa, out: &mut [u8]) -> Result<(), AccessError> {
        match self.mem.lock().as_ref() {
            Some(m) => m.read(gpa, out),
            None => Err(AccessError::NotMapped(gpa)),
        }
    }

    /// Copies `bytes` into guest memory at `gpa`, first giving the VM its own copy of
    /// any copy-on-write page in the way. The caller must pass `stale` to
    /// [`crate::cow::finish`] before this VM's vCPU on this hart resumes.
    pub fn write(
        &self,
        gpa: Gpa,
        bytes: &[u8],
        stale: &mut crate::cow::Stale,
    ) -> Result<(), AccessError> {
        self.make_writable(gpa, bytes.len() as u64, stale)?;
        match self.mem.lock().as_ref() {
            Some(m) => m.write(gpa, bytes),
            None => Err(AccessError::NotMapped(gpa)),
        }
    }

    /// Breaks copy-on-write sharing for `[gpa, gpa+len)` and checks the guest may
    /// write all of it (what a later [`Vm::write`] there needs).
    pub fn make_writable(
        &self,
        gpa: Gpa,
        len: u64,
        stale: &mut crate::cow::Stale,
    ) -> Result<(), AccessError> {
        let mut guard = self.mem.lock();
        let m = guard.as_mut().ok_or(AccessError::NotMapped(gpa))?;
        m.break_cow_range(self.ram, gpa, len, stale)
            .map_err(|_| AccessError::NoPermission(gpa.align_down(PAGE_SIZE)))?;
        m.chunks(gpa, len, true).map(|_| ())
    }

    /// Translates one GPA through its G-stage table.
    pub fn translate(&self, gpa: Gpa) -> Option<(Hpa, Perms)> {
        self.mem.lock().as_ref().and_then(|m| m.translate(gpa))
    }
}

impl Vm {
    /// Returns the VM's memory (RAM and page tables) to the host now, if it still has
    /// it. The caller has made sure no vCPU of the VM runs any more (a dead VM's
    /// memory is released by whoever killed it, before the VM's charge can be reused:
    /// see `vmtree::retire`); later accesses through the VM find no memory.
    pub fn release_memory(&self) {
        let Some(m) = self.mem.lock().take() else {
            return;
        };
        m.destroy();
        log::info!(
            "VM {} (VMID {}): memory released; host free pages: {}",
            self.name,
            self.vmid,
            mem::frames().free_pages()
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Normally released already; a VM that never ran (a failed build) is not.
        self.release_memory();
        free_vmid(self.vmid);
    }
}

/// VMIDs in use (bit per VMID; 0 is never used). Freed VMIDs are reused; every vCPU
/// load flushes the G-stage TLB, so no stale translation survives a reuse.
static VMIDS: Mutex<[u64; 256]> = Mutex::new([1; 256]);

fn alloc_vmid() -> Option<u16> {
    let mut map = VMIDS.lock();
    for (w, word) in map.iter_mut().enumerate() {
        if *word != u64::MAX {
            let bit = (!*word).trailing_zeros() as usize;
            *word |= 1 << bit;
            return u16::try_from(w * 64 + bit).ok();
        }
    }
    None
}

fn free_vmid(vmid: u16) {
    let mut map = VMIDS.lock();
    if let Some(word) = map.get_mut(usize::from(vmid) / 64) {
        *word &= !(1 << (vmid % 64));
    }
}

extern "C" {
    static __payload_start: u8;
}

/// The payload `cargo xtask build` appended after the image, or an empty slice if
/// there is none (no magic) or its size does not fit host RAM.
pub fn payload_bytes(host: &HostPlatform) -> &'static [u8] {
    let start = core::ptr::addr_of!(__payload_start);
    let Some(ram) = host
        .memory
        .iter()
        .find(|r| r.contains(Hpa::new(start as u64)))
    else {
        return &[];
    };
    let room = ram.end().raw() - start as u64;
    if room < diosix_core::payload::HEADER_SIZE as u64 {
        return &[];
    }
    // SAFETY: the header lies in RAM (checked above) that the ELF loader filled, or at
    // worst holds stale bytes, which the magic check rejects.
    let header = unsafe { core::slice::from_raw_parts(start, diosix_core::payload::HEADER_SIZE) };
    if header[..8] != diosix_core::payload::MAGIC {
        return &[];
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[16..24]);
    let size = u64::from_le_bytes(size);
    if size > room {
        log::error!("payload claims {size} bytes, more than the RAM after the image");
        return &[];
    }
    // SAFETY: `size` bytes from `start` lie in host RAM (checked above) and belong to
    // the payload segment, which nothing writes.
    unsafe { core::slice::from_raw_parts(start, size as usize) }
}

/// Default Root VM RAM: an eighth of host RAM, between 64 MiB and 512 MiB, which
/// leaves a 512 MiB host room for three 128 MiB children next to the Root VM.
pub fn default_root_ram_mib(host_ram_bytes: u64) -> u64 {
    (host_ram_bytes >> 20).div_euclid(8).clamp(64, 512)
}

/// Everything needed to build one VM.
pub struct VmSpec<'a> {
    /// Tree node.
    pub id: VmId,
    /// Name for logs.
    pub name: String,
    /// RAM size in bytes (page multiple).
    pub ram_bytes: u64,
    /// vCPU count.
    pub vcpus: usize,
    /// vCPU priority.
    pub priority: u8,
    /// Kernel image: ELF or Linux `Image`.
    pub kernel: Bytes<'a>,
    /// Optional initrd.
    pub initrd: Option<Bytes<'a>>,
    /// Optional command line.
    pub cmdline: Option<&'a str>,
    /// A device tree to use instead of a generated one.
    pub dtb: Option<Bytes<'a>>,
    /// The Root VM.
    pub is_root: bool,
    /// Start the boot vCPU now (else it waits for START).
    pub start: bool,
    /// Checked between steps of at most 2 MiB: when it holds, the build stops and
    /// gives back everything it took (the VM was killed while being built).
    pub cancelled: &'a dyn Fn() -> bool,
}

/// A VM just built, with its vCPUs ready to queue.
pub struct Built {
    /// The VM.
    pub vm: Arc<Vm>,
    vcpus: Vec<Vcpu>,
}

impl Built {
    /// Queues its vCPUs (the boot one runnable if it was built to start) and returns
    /// the VM.
    pub fn enqueue(self) -> Arc<Vm> {
        for v in self.vcpus {
            crate::sched::enqueue(Box::new(v));
        }
        self.vm
    }
}

/// Why [`build_vm`] did not build a VM.
#[derive(Debug)]
pub enum BuildError {
    /// Something the VM's creator chose (vCPU count, RAM size, image, command line,
    /// device tree) cannot be built: `INVALID_PARAM` for a guest.
    Refused(String),
    /// The host could not provide what an admitted VM needs (RAM, a VMID): `FAILED`.
    Host(String),
    /// [`VmSpec::cancelled`] held: everything taken was given back.
    Cancelled,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Refused(e) | BuildError::Host(e) => f.write_str(e),
            BuildError::Cancelled => f.write_str(CANCELLED),
        }
    }
}

/// Builds a VM: fresh zeroed RAM, the kernel (and initrd) loaded, a device tree, and
/// its vCPUs, for the caller to queue (the boot vCPU runnable if `spec.start`, the rest
/// HSM-stopped). Every size and offset in the image is checked by the loader, before
/// any RAM is taken; on failure every page is returned.
pub fn build_vm(host: &HostPlatform, spec: &VmSpec<'_>) -> Result<Built, BuildError> {
    use BuildError::{Host, Refused};
    let vcpus = spec.vcpus;
    if vcpus == 0 || vcpus > diosix_core::sbi::MAX_VCPUS {
        return Err(Refused(format!(
            "{vcpus} vCPUs asked (1..={})",
            diosix_core::sbi::MAX_VCPUS
        )));
    }
    let ram = Range::new(GUEST_RAM_BASE, spec.ram_bytes)
        .ok_or_else(|| Refused("RAM size overflows".into()))?;
    // Only the headers are parsed, from a bounded window; the rest is copied.
    let window = spec
        .kernel
        .window(loader::HEADER_WINDOW)
        .map_err(|e| Host(format!("reading the image: {e:?}")))?;
    let plan = loader::plan_window(&window, spec.kernel.len(), ram)
        .map_err(|e| Refused(format!("kernel image: {e}")))?;
    drop(window);
    // Room for the device tree: the generated one fits the loader's reserve; one the
    // creator supplies (at most `limits::SPAWN_MAX_DTB`) gets its own size.
    let dtb_room = spec.dtb.as_ref().map_or(loader::DTB_RESERVE, |d| {
        d.len().next_multiple_of(PAGE_SIZE).max(loader::DTB_RESERVE)
    });
    let layout = loader::boot_layout(&plan, ram, spec.initrd.as_ref().map(Bytes::len), dtb_room)
        .map_err(|e| Refused(format!("layout in {} MiB: {e}", ram.len >> 20)))?;
    let generated;
    let dtb: Bytes<'_> = match &spec.dtb {
        Some(d) => d.clone(),
        None => {
            let boot_hart = &host.harts[0];
            let extensions = guestfdt::advertised_extensions(
                boot_hart.extensions.iter().map(String::as_str),
                guestfdt::VirtFeatures::default(),
            );
            generated = guestfdt::generate(&guestfdt::GuestFdtConfig {
                vcpus,
                ram,
                isa_extensions: &extensions,
                cpu_map: true,
                mmu_type: guestfdt::MmuType::Sv39,
                timebase_frequency: host.timebase_frequency,
                bootargs: spec.cmdline,
                initrd: layout.initrd,
            })
            .map_err(|e| Refused(format!("device tree: {e}")))?;
            Bytes::Slice(&generated)
        }
    };
    if dtb.len() > layout.dtb.len {
        return Err(Refused("device tree too large".into()));
    }
    let vmid = alloc_vmid().ok_or_else(|| Host("out of VMIDs".into()))?;
    let memory = match GuestMemory::new(ram, spec.cancelled) {
        Ok(m) => m,
        Err(e) => {
            free_vmid(vmid);
            return Err(if e == CANCELLED {
                BuildError::Cancelled
            } else {
                Host(e)
            });
        }
    };
    // Copied in steps, so a cancellation is noticed within one step.
    let copy = |bytes: &Bytes<'_>, sub: core::ops::Range<usize>, gpa: Gpa| {
        bytes
            .copy_into(sub, &memory, gpa, spec.cancelled)
            .map_err(|e| match e {
                CopyError::Cancelled => BuildError::Cancelled,
                CopyError::Access(e) => Host(format!("loading: {e}")),
            })
    };
    let whole = |b: &Bytes<'_>| 0..usize::try_from(b.len()).unwrap_or(usize::MAX);
    let load = || -> Result<(), BuildError> {
        for seg in &plan.segments {
            copy(&spec.kernel, seg.file.clone(), seg.gpa)?;
        }
        if let (Some(range), Some(initrd)) = (layout.initrd, &spec.initrd) {
            copy(initrd, whole(initrd), range.start)?;
        }
        copy(&dtb, whole(&dtb), layout.dtb.start)
    };
    let hgatp = memory.table.hgatp(vmid);
    if let Err(e) = load() {
        memory.destroy();
        free_vmid(vmid);
        return Err(e);
    }
    let Some(hgatp) = hgatp else {
        memory.destroy();
        free_vmid(vmid);
        return Err(Host("VMID out of range".into()));
    };
    let shared: Vec<Arc<VcpuShared>> = (0..vcpus)
        .map(|i| {
            let state = if i == 0 && spec.start {
                HartState::Started
            } else {
                HartState::Stopped
            };
            Arc::new(VcpuShared::new(i, state))
        })
        .collect();
    let vm = Arc::new(Vm {
        id: spec.id,
        name: spec.name.clone(),
        vmid,
        hgatp: hgatp as usize,
        mem: Mutex::new(Some(memory)),
        ram,
        vcpus: shared.clone(),
        priority: spec.priority,
        is_root: spec.is_root,
        stopped: AtomicBool::new(false),
        held: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    });
    log::info!(
        "VM {} (VMID {}): {:?} kernel, entry {}, {} vCPU(s), {} MiB RAM at {}, DTB at {}{}",
        vm.name,
        vm.vmid,
        plan.format,
        plan.entry,
        vcpus,
        ram.len >> 20,
        ram.start,
        layout.dtb.start,
        match layout.initrd {
            Some(r) => format!(", initrd at {} ({} KiB)", r.start, r.len >> 10),
            None => String::new(),
        }
    );
    let mut vcpus = Vec::with_capacity(shared.len());
    for s in shared {
        let boot = s.index == 0 && spec.start;
        let (wait, pc) = if boot {
            (Wait::None, plan.entry)
        } else {
            (Wait::Stopped, Gpa::new(0))
        };
        vcpus.push(Vcpu::new(vm.clone(), s, pc, layout.dtb.start.raw(), wait));
    }
    Ok(Built { vm, vcpus })
}

/// Wraps memory shared with a FORK child as a VM with `vcpus` fresh vCPU slots (their
/// states are queued by the caller). `None` if no VMID is free.
pub fn adopt(
    id: VmId,
    name: String,
    memory: GuestMemory,
    ram: Range<Gpa>,
    vcpus: usize,
    priority: u8,
) -> Option<Arc<Vm>> {
    let Some(vmid) = alloc_vmid() else {
        memory.destroy();
        return None;
    };
    let Some(hgatp) = memory.table.hgatp(vmid) else {
        memory.destroy();
        free_vmid(vmid);
        return None;
    };
    Some(Arc::new(Vm {
        id,
        name,
        vmid,
        hgatp: hgatp as usize,
        mem: Mutex::new(Some(memory)),
        ram,
        vcpus: (0..vcpus)
            .map(|i| Arc::new(VcpuShared::new(i, HartState::Stopped)))
            .collect(),
        priority,
        is_root: false,
        stopped: AtomicBool::new(false),
        held: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    }))
}

/// Builds the Root VM from the embedded payload and registers it as the tree's root.
pub fn create_root_vm(host: &HostPlatform) -> Result<(), String> {
    let bytes = payload_bytes(host);
    if bytes.is_empty() {
        return Err(
            "this image carries no Root VM payload (build it with `cargo xtask build`)".into(),
        );
    }
    let payload = Payload::parse(bytes).map_err(|e| format!("corrupt Root VM payload: {e}"))?;
    let host_ram: u64 = host.memory.iter().map(|r| r.len).sum();
    let vcpus = match payload.vcpus {
        0 => host.harts.len(),
        n => n as usize,
    };
    let ram_mib = match payload.ram_mib {
        0 => default_root_ram_mib(host_ram),
        n => u64::from(n),
    };
    let ram_bytes = ram_mib.checked_mul(1 << 20).ok_or("RAM size overflows")?;
    let id = crate::vmtree::create_root(ram_bytes / PAGE_SIZE, vcpus as u32)?;
    let built = build_vm(
        host,
        &VmSpec {
            id,
            name: "root".to_string(),
            ram_bytes,
            vcpus,
            priority: crate::vmtree::ROOT_PRIORITY as u8,
            kernel: Bytes::Slice(payload.kernel),
            initrd: payload.initrd.map(Bytes::Slice),
            cmdline: payload.cmdline,
            dtb: None,
            is_root: true,
            start: true,
            cancelled: &|| false,
        },
    )
    .map_err(|e| format!("Root VM: {e}"))?;
    crate::vmtree::register(built.enqueue());
    Ok(())
}
