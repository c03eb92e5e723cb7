//! Trapped guest loads and stores to MMIO the hypervisor emulates (the virtual PLIC,
//! the registers of devices a FORK clone no longer holds): the faulting instruction
//! decoded (`diosix_core::mmio`), the access completed by a handler, the destination
//! register written, and the guest moved past the instruction. An access the handler
//! refuses, or one that is not a plain integer load or store, becomes an access fault
//! in the guest, as a device that does not support it would give on hardware.

use crate::hart::HartLocal;
use crate::vm::Vm;
use diosix_core::addr::{Gpa, Gva, PAGE_SIZE};
use diosix_core::mmio::{self, MmioAccess};
use diosix_riscv::csr;

const EXC_LOAD_ACCESS_FAULT: usize = 5;
const EXC_STORE_ACCESS_FAULT: usize = 7;

/// Completes the load or store the vCPU on this hart trapped on (a load or a store
/// guest-page fault, as `store_fault` says). `handler(access, stored)` does the
/// device's side: `stored` is the value a store writes (its low `width` bytes), `None`
/// for a load, which returns the bytes read (zero-extended). `Err` from the handler
/// makes it an access fault.
pub fn complete<E>(
    hart: &mut HartLocal,
    vm: &Vm,
    store_fault: bool,
    handler: impl FnOnce(&MmioAccess, Option<u64>) -> Result<u64, E>,
) {
    let fault = if store_fault {
        EXC_STORE_ACCESS_FAULT
    } else {
        EXC_LOAD_ACCESS_FAULT
    };
    let Some(access) = fetch_access(vm).filter(|a| a.store == store_fault) else {
        crate::vcpu::inject_exception(fault, csr::mtval::read());
        return;
    };
    let reg = usize::from(access.reg);
    let stored = access
        .store
        .then(|| access.store_value(if reg == 0 { 0 } else { hart.guest_regs()[reg] }));
    match handler(&access, stored) {
        Ok(raw) => {
            if !access.store && reg != 0 {
                hart.guest_regs()[reg] = access.load_value(raw);
            }
            // SAFETY: moves the guest past the emulated instruction.
            unsafe { csr::mepc::write(csr::mepc::read() + usize::from(access.len)) };
        }
        Err(_) => crate::vcpu::inject_exception(fault, csr::mtval::read()),
    }
}

/// A guest-page fault at `gpa` on a device register the VM's FORK parent held (its
/// copy of the guest OS still believes it has the device): reads as zero, writes are
/// ignored, as on a bus with nothing there, so the clone is not killed for it; its I/O
/// on that device simply never completes. Logged once per VM. False if `gpa` is not
/// such a register.
pub fn detached(hart: &mut HartLocal, gpa: Gpa, store_fault: bool) -> bool {
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return false;
    };
    if !vm.detached.iter().any(|r| r.contains(gpa)) {
        return false;
    }
    if !vm
        .detached_logged
        .swap(true, core::sync::atomic::Ordering::Relaxed)
    {
        log::info!(
            "VM {}: touched {gpa}, a device its FORK parent holds: reads as zero, writes ignored",
            vm.name
        );
    }
    complete(hart, &vm, store_fault, |_, _| Ok::<u64, ()>(0));
    true
}

/// The faulting load or store: from `mtinst` where the hart provides it, else read
/// from guest memory at the faulting PC through the guest's own translation.
fn fetch_access(vm: &Vm) -> Option<MmioAccess> {
    // mtinst is the H extension's.
    if !crate::guestmode::is_pmp() {
        if let Some(a) = mmio::decode_transformed(csr::mtinst::read() as u64) {
            return Some(a);
        }
    }
    mmio::decode(guest_instruction(vm)?)
}

/// The instruction at the running guest's PC (`mepc`), read through its own
/// translation as a supervisor read would (16 or 32 bits, zero-extended).
pub fn guest_instruction(vm: &Vm) -> Option<u32> {
    instruction_at(vm, Gva::new(csr::mepc::read() as u64))
}

/// The instruction at `pc` in the running guest, read through its own translation as
/// a supervisor read would (16 or 32 bits, zero-extended).
pub fn instruction_at(vm: &Vm, pc: Gva) -> Option<u32> {
    let low = read_insn_half(vm, pc)?;
    Some(if low & 3 == 3 {
        let high = read_insn_half(vm, pc.checked_add(2)?)?;
        u32::from(low) | (u32::from(high) << 16)
    } else {
        u32::from(low)
    })
}

/// The guest physical address a supervisor read of `gva` by the running guest
/// reaches (its own page tables, if it has them on).
pub fn guest_physical(vm: &Vm, gva: Gva) -> Option<Gpa> {
    let (satp, sstatus) = crate::guestmode::mode().translation();
    let read_pte = |gpa: Gpa| {
        let mut b = [0u8; 8];
        vm.read(gpa, &mut b).ok().map(|()| u64::from_le_bytes(b))
    };
    diosix_core::vstage::translate_read(satp, sstatus, gva, read_pte).ok()
}

/// Reads the 16-bit instruction parcel at `gva` as a supervisor read of the guest
/// would (a parcel never straddles a page: instructions are 2-byte aligned).
fn read_insn_half(vm: &Vm, gva: Gva) -> Option<u16> {
    let gpa = guest_physical(vm, gva)?;
    if gpa.raw() % PAGE_SIZE > PAGE_SIZE - 2 {
        return None;
    }
    let mut b = [0u8; 2];
    vm.read(gpa, &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}
