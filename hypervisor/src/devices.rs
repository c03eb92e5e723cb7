//! Host devices handed to trusted VMs: who holds which device (the bookkeeping is
//! `diosix_core::devices`), their MMIO in the holder's G-stage table, and their
//! interrupts routed from the host PLIC into the holder's virtual PLIC.
//!
//! A routed interrupt is enabled on one machine-mode context of the host PLIC (the
//! boot hart's). The hart that takes it claims it there and leaves it claimed while
//! the guest handles it: the PLIC raises it again only after the guest completes it on
//! its virtual PLIC and the hypervisor completes it here. So a source is in the guest
//! at most once at a time however fast the device asserts it, and a guest that never
//! completes one silences only that source, its own.
//!
//! Lock order: a VM's `plic` lock before [`STATE`] (the guest's PLIC completions), and
//! never [`STATE`] then a `plic` lock: the interrupt path, release and retargeting take
//! [`STATE`] alone and drop it before taking a VM's `plic`. A VM's `mem` lock is taken
//! under [`STATE`] (mapping), never the other way round.

use crate::hart::HartLocal;
use crate::hart::MAX_HARTS;
use crate::vm::Vm;
use crate::vplic::VPLIC_BASE;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use diosix_core::addr::{Gpa, Hpa, Range, PAGE_SIZE};
use diosix_core::devices::{DeviceRef, DeviceSpec, DeviceTable, Released};
use diosix_core::hostfdt::{HostDevice, HostPlatform};
use diosix_core::sbi::SbiError;
use diosix_core::tree::VmId;
use diosix_riscv::plic::Plic;
use spin::{Mutex, Once};

/// Priority every routed source gets at the host PLIC (any non-zero value: the host
/// contexts' thresholds are 0).
const HOST_PRIORITY: u32 = 1;

/// A routed interrupt: the VM it goes to, and the host context it is claimed on
/// while the guest holds it.
struct Route {
    vm: Arc<Vm>,
    claimed_on: Option<u32>,
    /// The host context the source is enabled on: where it is taken.
    target: u32,
}

struct State {
    table: DeviceTable,
    /// Indexed by host interrupt source.
    routes: Vec<Option<Route>>,
}

struct HostIrqs {
    plic: Plic,
    /// The host PLIC's machine-mode context of each hart, by hart ID.
    m_context: Vec<(usize, u32)>,
    /// The context routed interrupts are enabled on (the boot hart's).
    target: u32,
}

/// Marks a hart slot whose hart has no machine-mode PLIC context.
const NO_CONTEXT: u32 = u32::MAX;

/// Each hart slot's machine-mode PLIC context, set by [`init_hart`].
static SLOT_CONTEXT: [AtomicU32; MAX_HARTS] = [const { AtomicU32::new(NO_CONTEXT) }; MAX_HARTS];

static IRQS: Once<Option<HostIrqs>> = Once::new();
static STATE: Mutex<Option<State>> = Mutex::new(None);
/// The host devices, as the device tree describes them (for the Root VM's tree).
static DEVICES: Once<Vec<HostDevice>> = Once::new();

/// Finds the PLIC and the devices the hypervisor may hand out. Without a PLIC, no
/// device with an interrupt is handed out.
pub fn init(host: &HostPlatform) {
    let irqs = host
        .plic
        .as_ref()
        .zip(host.plic_ndev)
        .and_then(|(r, ndev)| {
            let m_context = host.plic_m_contexts.clone();
            let contexts = u32::try_from(r.len().saturating_sub(0x20_0000) / 0x1000).ok()?;
            // Called on the boot hart.
            let boot = diosix_riscv::csr::id::mhartid();
            let target = m_context.iter().find(|(h, _)| *h == boot)?.1;
            // SAFETY: the PLIC the firmware's tree describes, which guests never map (it is
            // not among the handable devices).
            let plic = unsafe { Plic::new(r.start(), ndev, contexts) };
            Some(HostIrqs {
                plic,
                m_context,
                target,
            })
        });
    let ndev = irqs.as_ref().map_or(0, |i| i.plic.sources());
    crate::vplic::set_host_sources(ndev);
    let mut devices: Vec<HostDevice> = host
        .devices
        .iter()
        .filter(|d| irqs.is_some() || d.irqs.is_empty())
        .cloned()
        .collect();
    for d in devices.iter_mut() {
        if d.dma_capable && is_empty_virtio_slot(d) {
            // Nothing behind the transport: it can never master the bus.
            d.dma_capable = false;
        }
    }
    let specs = devices
        .iter()
        .map(|d| DeviceSpec {
            mmio: d.regs.iter().filter_map(page_span).collect(),
            irqs: d.irqs.clone(),
        })
        .collect();
    match DeviceTable::new(specs, ndev.max(1)) {
        Ok(table) => {
            *STATE.lock() = Some(State {
                table,
                routes: (0..=ndev).map(|_| None).collect(),
            });
            log::info!(
                "host devices guests may hold: {}",
                if devices.is_empty() {
                    alloc::string::String::from("none")
                } else {
                    devices
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        Err(e) => log::error!("host devices not handed out: {e:?}"),
    }
    DEVICES.call_once(|| devices);
    IRQS.call_once(|| irqs);
    crate::sched::on_external_interrupts(external_interrupt);
}

/// A virtio-mmio transport with no device behind it (device ID 0: QEMU `virt` has
/// eight transports whether or not anything is attached).
fn is_empty_virtio_slot(d: &HostDevice) -> bool {
    const MAGIC: u32 = 0x7472_6976; // "virt"
    const DEVICE_ID: u64 = 8;
    if !d.compatible.iter().any(|c| c == "virtio,mmio") {
        return false;
    }
    let Some(r) = d.regs.first().filter(|r| r.len() >= DEVICE_ID + 4) else {
        return false;
    };
    let base = r.start().raw() as usize;
    // SAFETY: the first register window of a virtio-mmio transport the firmware's tree
    // describes: its magic (offset 0) and device ID (offset 8) are aligned 32-bit
    // registers that reads do not disturb. M-mode runs untranslated.
    let (magic, id) = unsafe {
        (
            core::ptr::read_volatile(base as *const u32),
            core::ptr::read_volatile((base + DEVICE_ID as usize) as *const u32),
        )
    };
    magic == MAGIC && id == 0
}

/// The host devices guests may hold.
pub fn host_devices() -> &'static [HostDevice] {
    DEVICES.get().map_or(&[], Vec::as_slice)
}

/// A device register range rounded out to whole pages (what a G-stage can map).
pub fn page_span(r: &Range<Hpa>) -> Option<Range<Hpa>> {
    let start = r.start().align_down(PAGE_SIZE);
    let end = r.end().raw().checked_next_multiple_of(PAGE_SIZE)?;
    Range::new(start, end.checked_sub(start.raw())?)
}

/// Per-hart setup (after [`init`]): this hart's machine-mode context takes
/// interrupts at any priority.
pub fn init_hart(slot: usize) {
    let Some(i) = IRQS.get().and_then(Option::as_ref) else {
        return;
    };
    let me = diosix_riscv::csr::id::mhartid();
    if let Some(&(_, ctx)) = i.m_context.iter().find(|(h, _)| *h == me) {
        i.plic.set_threshold(ctx, 0);
        if let Some(s) = SLOT_CONTEXT.get(slot) {
            s.store(ctx, Ordering::Release);
        }
    }
}

/// MAP_HOST_MMIO for `vm` (trusted: the caller checked), whose parent is `parent`:
/// the bookkeeping first, then the mapping, undone if the mapping fails.
pub fn map_mmio(
    vm: &Arc<Vm>,
    parent: Option<VmId>,
    hpa: Hpa,
    gpa: Gpa,
    size: u64,
) -> Result<(), SbiError> {
    // Never over the VM's own virtual PLIC (its accesses must keep trapping).
    let plic_end = VPLIC_BASE.raw() + vm.plic_window;
    if vm.plic_window > 0 && gpa.raw() < plic_end && VPLIC_BASE.raw() < gpa.raw() + size {
        return Err(SbiError::InvalidAddress);
    }
    let mut guard = STATE.lock();
    let state = guard.as_mut().ok_or(SbiError::InvalidAddress)?;
    state.table.map_mmio(vm.id, parent, hpa, gpa, size)?;
    let dma = host_devices().iter().any(|d| {
        d.dma_capable
            && d.regs
                .iter()
                .filter_map(page_span)
                .any(|r| r.start() == hpa)
    });
    let mapped = {
        let mut mem = vm.mem.lock();
        match mem.as_mut() {
            // A device that masters the bus writes host physical addresses: only a VM
            // whose RAM sits at GPA = HPA can drive one correctly.
            Some(m) if dma && !m.is_pinned() => Err(SbiError::NotSupported),
            Some(m) => m
                .map_mmio(gpa, hpa, size)
                .map_err(|_| SbiError::InvalidAddress),
            None => Err(SbiError::Failed),
        }
    };
    if let Err(e) = mapped {
        state.table.unmap_mmio(vm.id, hpa, size);
        return Err(e);
    }
    log::debug!(
        "VM {}: host MMIO {hpa} (+{size:#x}) mapped at {gpa}",
        vm.name
    );
    Ok(())
}

/// ROUTE_IRQ for `vm` (trusted: the caller checked), whose parent is `parent`.
pub fn route_irq(vm: &Arc<Vm>, parent: Option<VmId>, irq: u64) -> Result<(), SbiError> {
    let irqs = IRQS
        .get()
        .and_then(Option::as_ref)
        .ok_or(SbiError::InvalidParam)?;
    let source = u32::try_from(irq).map_err(|_| SbiError::InvalidParam)?;
    let Some(plic) = vm.plic.as_ref() else {
        return Err(SbiError::NotSupported);
    };
    if source > plic.lock().ndev() {
        // The VM's own interrupt controller has no such source to raise.
        return Err(SbiError::InvalidParam);
    }
    let mut guard = STATE.lock();
    let state = guard.as_mut().ok_or(SbiError::InvalidParam)?;
    state.table.route_irq(vm.id, parent, source)?;
    if let Some(slot) = state.routes.get_mut(source as usize) {
        *slot = Some(Route {
            vm: vm.clone(),
            claimed_on: None,
            target: irqs.target,
        });
    }
    irqs.plic.set_priority(source, HOST_PRIORITY);
    irqs.plic.set_enabled(source, irqs.target, true);
    log::debug!("VM {}: host interrupt {source} routed", vm.name);
    Ok(())
}

/// Takes back everything `vm` holds (DROP_TRUST, or its death): unmaps its host MMIO,
/// stops its routes (completing at the host any interrupt it still had claimed), and
/// hands the devices to `to` (its parent's pool; `None` = the host's). The caller
/// flushes the VM's harts (its memory lost mappings).
pub fn release(vm: &Arc<Vm>, to: Option<VmId>) {
    let _ = take_back(vm, SbiError::Failed, |table| Ok(table.release(vm.id, to)));
}

/// RELEASE_DEVICE: the one device `named` that `vm` holds goes, unmapped and
/// unrouted, to `to`'s pool. The caller flushes the VM's harts.
pub fn release_device(vm: &Arc<Vm>, named: DeviceRef, to: Option<VmId>) -> Result<(), SbiError> {
    // Without a device table (no PLIC) nothing is a handable device.
    let none = match named {
        DeviceRef::Window(_) => SbiError::InvalidAddress,
        DeviceRef::Irq(_) => SbiError::InvalidParam,
    };
    take_back(vm, none, |table| table.release_device(vm.id, named, to))
}

/// Applies what `decide` takes from `vm` in the table: its routes stop (an interrupt
/// still claimed is completed at the host) and its virtual PLIC forgets those sources,
/// then the regions leave its G-stage table. `no_table` is the answer on a host with
/// no device table.
fn take_back(
    vm: &Arc<Vm>,
    no_table: SbiError,
    decide: impl FnOnce(&mut DeviceTable) -> Result<Released, SbiError>,
) -> Result<(), SbiError> {
    let irqs = IRQS.get().and_then(Option::as_ref);
    let released = {
        let mut guard = STATE.lock();
        let Some(state) = guard.as_mut() else {
            return Err(no_table);
        };
        let released = decide(&mut state.table)?;
        for &source in &released.irqs {
            let Some(route) = state.routes.get_mut(source as usize).and_then(Option::take) else {
                continue;
            };
            if let Some(i) = irqs {
                i.plic.set_enabled(source, route.target, false);
                if let Some(ctx) = route.claimed_on {
                    i.plic.complete(source, ctx);
                }
            }
        }
        released
    };
    if let Some(plic) = vm.plic.as_ref() {
        let mut p = plic.lock();
        for &source in &released.irqs {
            p.reset_source(source);
        }
        crate::vplic::deliver(vm, &mut p, usize::MAX);
    }
    if !released.mmio.is_empty() {
        if let Some(m) = vm.mem.lock().as_mut() {
            for (_, gpa) in &released.mmio {
                m.unmap_mmio(*gpa);
            }
        }
    }
    if !released.is_empty() {
        log::info!(
            "VM {}: {} host MMIO range(s) and {} interrupt(s) given back",
            vm.name,
            released.mmio.len(),
            released.irqs.len()
        );
    }
    Ok(())
}

/// The guest completed `source` on its virtual PLIC: complete it at the host, so the
/// device can raise it again. Ignored unless `vm` holds the route.
pub fn complete(vm: &Vm, source: u32) {
    let Some(i) = IRQS.get().and_then(Option::as_ref) else {
        return;
    };
    let mut guard = STATE.lock();
    let Some(route) = guard
        .as_mut()
        .and_then(|s| s.routes.get_mut(source as usize))
        .and_then(Option::as_mut)
    else {
        return;
    };
    if !core::ptr::eq(Arc::as_ptr(&route.vm), vm) {
        return;
    }
    if let Some(ctx) = route.claimed_on.take() {
        i.plic.complete(source, ctx);
    }
}

/// A machine external interrupt on this hart: claims every routed interrupt pending
/// on its context and raises each in its VM's virtual PLIC. Bounded: each source is
/// claimed at most once until its guest completes it.
pub fn external_interrupt(slot: usize) {
    let Some(i) = IRQS.get().and_then(Option::as_ref) else {
        return;
    };
    let ctx = SLOT_CONTEXT
        .get(slot)
        .map_or(NO_CONTEXT, |c| c.load(Ordering::Acquire));
    if ctx == NO_CONTEXT {
        return;
    }
    // Bounded: a source claimed here stays claimed until its guest completes it, so
    // each is claimed at most once per call.
    while let Some(source) = i.plic.claim(ctx) {
        let vm = {
            let mut guard = STATE.lock();
            let route = guard
                .as_mut()
                .and_then(|s| s.routes.get_mut(source as usize))
                .and_then(Option::as_mut);
            match route {
                Some(r) => {
                    r.claimed_on = Some(ctx);
                    r.vm.clone()
                }
                None => {
                    // Not routed (any more): silence it.
                    i.plic.set_enabled(source, ctx, false);
                    i.plic.complete(source, ctx);
                    continue;
                }
            }
        };
        if let Some(plic) = vm.plic.as_ref() {
            let mut p = plic.lock();
            p.raise(source);
            crate::vplic::deliver(&vm, &mut p, slot);
        }
    }
}

/// Gives the Root VM (trusted, just built) every device in `devices`: maps their
/// registers at their host addresses and routes their interrupts. A device that
/// cannot be handed over is logged and left in the host's pool.
pub fn hand_over(vm: &Arc<Vm>, devices: &[HostDevice]) {
    if !devices.is_empty() {
        log::info!(
            "VM {} holds {} host device(s){}, interrupts on a virtual PLIC at {}",
            vm.name,
            devices.len(),
            if vm.mem.lock().as_ref().is_some_and(|m| m.is_pinned()) {
                " (RAM pinned at GPA = HPA for their DMA)"
            } else {
                ""
            },
            crate::vplic::VPLIC_BASE
        );
    }
    for d in devices {
        for span in d.regs.iter().filter_map(page_span) {
            if let Err(e) = map_mmio(
                vm,
                None,
                span.start(),
                Gpa::new(span.start().raw()),
                span.len(),
            ) {
                log::warn!("VM {}: {} not mapped: {e:?}", vm.name, d.name);
            }
        }
        for &irq in &d.irqs {
            if let Err(e) = route_irq(vm, None, u64::from(irq)) {
                log::warn!(
                    "VM {}: interrupt {irq} of {} not routed: {e:?}",
                    vm.name,
                    d.name
                );
            }
        }
    }
}

/// A guest-page fault at `gpa` by the vCPU on this hart: if it is in its VM's
/// virtual PLIC window, emulates the access and returns true (the guest goes on past
/// the instruction, or takes an access fault for an access the PLIC does not
/// support); false if the address is not the PLIC's.
pub fn emulate_plic_access(hart: &mut HartLocal, gpa: Gpa, store_fault: bool) -> bool {
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return false;
    };
    let Some(plic) = vm.plic.as_ref() else {
        return false;
    };
    let Some(offset) = gpa.raw().checked_sub(VPLIC_BASE.raw()) else {
        return false;
    };
    if offset >= vm.plic_window {
        return false;
    }
    let slot = hart.slot;
    let context = hart
        .current
        .as_ref()
        .map_or(u32::MAX, |v| v.shared.index as u32);
    let mut enables_changed = false;
    let mut completed = None;
    crate::mmio::complete(hart, &vm, store_fault, |access, stored| {
        let mut p = plic.lock();
        let width = u32::from(access.width);
        let loaded = match stored {
            Some(value) => {
                enables_changed = enable_word_of(offset) == Some(context);
                match p.write(offset, width, value as u32)? {
                    Some(source) => {
                        complete(&vm, source);
                        completed = Some(source);
                        0
                    }
                    None => 0,
                }
            }
            None => u64::from(p.read(offset, width)?),
        };
        crate::vplic::deliver(&vm, &mut p, slot);
        Ok::<u64, diosix_core::vplic::VplicFault>(loaded)
    });
    if enables_changed {
        retarget(&vm, context, slot);
    }
    if let Some(source) = completed {
        // A virtio device whose line is still up interrupts again (its own lock
        // comes before the PLIC's, so only now).
        crate::virtio::completed(&vm, source, slot);
    }
    if let Some(v) = hart.current.as_ref() {
        v.sync_ext_line_live();
    }
    true
}

/// The context whose enable words `offset` (in a virtual PLIC's window) falls in.
fn enable_word_of(offset: u64) -> Option<u32> {
    const ENABLE_BASE: u64 = 0x2000;
    const ENABLE_STRIDE: u64 = 0x80;
    const CONTEXT_BASE: u64 = 0x20_0000;
    if !(ENABLE_BASE..CONTEXT_BASE).contains(&offset) {
        return None;
    }
    u32::try_from((offset - ENABLE_BASE) / ENABLE_STRIDE).ok()
}

/// The vCPU of `vm` with virtual PLIC context `context`, running on the hart in `slot`,
/// changed its enables: each source `vm` holds that this context now enables is taken
/// at this hart from now on (the host enable moves here), so its interrupts arrive
/// where the vCPU that handles them runs instead of costing another hart a kick. A
/// source claimed meanwhile is still completed where it was claimed.
fn retarget(vm: &Arc<Vm>, context: u32, slot: usize) {
    let Some(i) = IRQS.get().and_then(Option::as_ref) else {
        return;
    };
    let here = SLOT_CONTEXT
        .get(slot)
        .map_or(NO_CONTEXT, |c| c.load(Ordering::Acquire));
    let Some(plic) = vm.plic.as_ref() else {
        return;
    };
    if here == NO_CONTEXT {
        return;
    }
    // The sources this context enables, read first: the virtual PLIC's lock is never
    // held while STATE is taken here (its emulation takes STATE under that lock).
    // Word by word (a Linux boot writes these words about a hundred times; bit by bit
    // this cost 3 K instructions each).
    let mut enabled = [0u32; 32];
    {
        let p = plic.lock();
        for (dst, &src) in enabled.iter_mut().zip(p.enables(context)) {
            *dst = src;
        }
    }
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return;
    };
    // Only the enabled sources' routes can move.
    for (w, &word) in enabled.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let source = w * 32 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(r) = state
                .routes
                .get_mut(source)
                .and_then(Option::as_mut)
                .filter(|r| Arc::ptr_eq(&r.vm, vm))
            else {
                continue;
            };
            if r.target != here {
                // < 1024: fits.
                let source = source as u32;
                i.plic.set_enabled(source, here, true);
                i.plic.set_enabled(source, r.target, false);
                r.target = here;
            }
        }
    }
}
