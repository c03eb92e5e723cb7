//! Virtual machines: guest memory behind G-stage tables, and building the Root VM from
//! the payload embedded in this image.

use crate::mem::{self, PhysTables, TableAlloc};
use crate::vcpu::{Vcpu, VcpuShared, Wait};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, Ordering};
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::gstage::{AccessError, GStageTable, Perms};
use diosix_core::hostfdt::HostPlatform;
use diosix_core::sbi::HartState;
use diosix_core::{guestfdt, loader, payload::Payload};
use spin::Mutex;

/// Where every guest's RAM starts, as the guest sees it.
pub const GUEST_RAM_BASE: Gpa = Gpa::new(0x8000_0000);
/// Bytes reserved for a guest's device tree.
const DTB_RESERVE: u64 = 64 * 1024;
/// Largest backing block tried when allocating guest RAM (2 MiB).
const MAX_BLOCK_PAGES: usize = 512;

/// A guest's RAM: host pages mapped into its G-stage table.
pub struct GuestMemory {
    pub table: GStageTable,
    blocks: Vec<(Hpa, usize)>,
}

impl GuestMemory {
    /// Allocates and maps zeroed RAM for `ram` (page-aligned).
    pub fn new(ram: Range<Gpa>) -> Result<Self, String> {
        let mut frames = mem::frames();
        let table = GStageTable::new(&mut TableAlloc(&mut frames))
            .map_err(|e| format!("G-stage root table: {e}"))?;
        let mut this = Self {
            table,
            blocks: Vec::new(),
        };
        let mut remaining = (ram.len / PAGE_SIZE) as usize;
        let mut gpa = ram.start;
        let mut block = MAX_BLOCK_PAGES;
        while remaining > 0 {
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
            this.blocks.push((hpa, want));
            let len = want as u64 * PAGE_SIZE;
            if let Err(e) = this.table.map_range(
                &mut PhysTables,
                &mut TableAlloc(&mut frames),
                gpa,
                hpa,
                len,
                Perms::RWX,
            ) {
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

    /// Returns every page (RAM and tables) to the host allocator.
    pub fn destroy(self) {
        let mut frames = mem::frames();
        for (hpa, pages) in &self.blocks {
            let _ = frames.free(*hpa, *pages);
        }
        self.table
            .destroy(&PhysTables, &mut TableAlloc(&mut frames));
    }
}

/// A virtual machine.
pub struct Vm {
    /// Name for logs.
    pub name: String,
    /// G-stage VMID.
    pub vmid: u16,
    /// The hgatp value that selects this VM's G-stage table.
    pub hgatp: usize,
    /// Guest RAM.
    pub mem: Mutex<GuestMemory>,
    /// Its RAM range (immutable copy, readable without the lock).
    pub ram: Range<Gpa>,
    /// One entry per vCPU, indexed by guest hart ID.
    pub vcpus: Vec<Arc<VcpuShared>>,
    /// Scheduling priority of its vCPUs.
    pub priority: u8,
    /// The Root VM: its console is the UART and its end restarts the host.
    pub is_root: bool,
}

impl Vm {
    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }
}

static NEXT_VMID: AtomicU16 = AtomicU16::new(1);

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

/// Builds the Root VM from the embedded payload and queues its boot vCPU.
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
    if vcpus == 0 || vcpus > diosix_core::sbi::MAX_VCPUS {
        return Err(format!(
            "payload asks for {vcpus} vCPUs (1..={})",
            diosix_core::sbi::MAX_VCPUS
        ));
    }
    let ram_mib = match payload.ram_mib {
        0 => default_root_ram_mib(host_ram),
        n => u64::from(n),
    };
    let ram = Range::new(GUEST_RAM_BASE, ram_mib << 20).ok_or("RAM size overflows")?;
    let plan = loader::plan(payload.kernel, ram).map_err(|e| format!("Root VM kernel: {e}"))?;
    let layout = loader::boot_layout(
        &plan,
        ram,
        payload.initrd.map(|i| i.len() as u64),
        DTB_RESERVE,
    )
    .map_err(|e| format!("Root VM layout in {ram_mib} MiB: {e}"))?;
    let boot_hart = &host.harts[0];
    let extensions = guestfdt::advertised_extensions(
        boot_hart.extensions.iter().map(String::as_str),
        guestfdt::VirtFeatures::default(),
    );
    let dtb = guestfdt::generate(&guestfdt::GuestFdtConfig {
        vcpus,
        ram,
        isa_extensions: &extensions,
        cpu_map: true,
        mmu_type: guestfdt::MmuType::Sv39,
        timebase_frequency: host.timebase_frequency,
        bootargs: payload.cmdline,
        initrd: layout.initrd,
    })
    .map_err(|e| format!("Root VM device tree: {e}"))?;
    if dtb.len() as u64 > layout.dtb.len {
        return Err("Root VM device tree too large".into());
    }

    let memory = GuestMemory::new(ram)?;
    let load = || -> Result<(), AccessError> {
        for seg in &plan.segments {
            memory.write(seg.gpa, &payload.kernel[seg.file.clone()])?;
        }
        if let (Some(range), Some(initrd)) = (layout.initrd, payload.initrd) {
            memory.write(range.start, initrd)?;
        }
        memory.write(layout.dtb.start, &dtb)
    };
    if let Err(e) = load() {
        memory.destroy();
        return Err(format!("loading the Root VM: {e}"));
    }
    let vmid = NEXT_VMID.fetch_add(1, Ordering::Relaxed);
    let hgatp = memory.table.hgatp(vmid).ok_or("VMID out of range")? as usize;
    let shared: Vec<Arc<VcpuShared>> = (0..vcpus)
        .map(|i| {
            Arc::new(VcpuShared::new(
                i,
                if i == 0 {
                    HartState::Started
                } else {
                    HartState::Stopped
                },
            ))
        })
        .collect();
    let vm = Arc::new(Vm {
        name: "root".to_string(),
        vmid,
        hgatp,
        mem: Mutex::new(memory),
        ram,
        vcpus: shared.clone(),
        priority: 128,
        is_root: true,
    });
    log::info!(
        "Root VM (VMID {}): {:?} kernel, entry {}, {} vCPU(s), {} MiB RAM at {}, DTB at {}{}",
        vm.vmid,
        plan.format,
        plan.entry,
        vcpus,
        ram_mib,
        ram.start,
        layout.dtb.start,
        match layout.initrd {
            Some(r) => format!(", initrd at {} ({} KiB)", r.start, r.len >> 10),
            None => String::new(),
        }
    );
    for s in shared {
        let (wait, pc) = if s.index == 0 {
            (Wait::None, plan.entry)
        } else {
            (Wait::Stopped, Gpa::new(0))
        };
        let vcpu = Box::new(Vcpu::new(vm.clone(), s, pc, layout.dtb.start.raw(), wait));
        crate::sched::enqueue(vcpu);
    }
    Ok(())
}
