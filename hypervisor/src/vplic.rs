//! A VM's virtual PLIC as the hypervisor runs it: the guest's loads and stores to its
//! window (which is never mapped, so each one traps here) go to the model in
//! `diosix_core::vplic`, and the external-interrupt line of each vCPU follows the
//! model into hvip.VSEIP.

use crate::hart::{self, HartLocal};
use crate::vm::Vm;
use core::sync::atomic::Ordering;
use diosix_core::addr::{Gpa, Gva, PAGE_SIZE};
use diosix_core::mmio::{self, MmioAccess};
use diosix_core::vplic::VirtualPlic;
use diosix_riscv::csr;

/// Where a VM's virtual PLIC sits in its guest physical address space (where QEMU
/// `virt` puts its PLIC).
pub const VPLIC_BASE: Gpa = Gpa::new(0x0c00_0000);

/// Interrupt sources of a VM's virtual PLIC: the host's, so a host interrupt keeps
/// its number in the guest.
pub fn sources_for(host_ndev: Option<u32>) -> u32 {
    host_ndev
        .unwrap_or(0)
        .clamp(1, diosix_core::vplic::MAX_SOURCES)
}

/// Applies the line changes the model reports: each vCPU's line is copied into its
/// shared state; a vCPU on another hart is kicked so it copies it into hvip, one
/// waiting for an interrupt is woken. `this_slot` is the caller's hart (its own vCPU
/// is synced by the caller), or `usize::MAX`.
pub fn deliver(vm: &Vm, plic: &mut VirtualPlic, this_slot: usize) {
    let mut wake = false;
    plic.take_line_changes(&mut |context, level| {
        let Some(v) = vm.vcpus.get(context as usize) else {
            return;
        };
        v.ext_line.store(level, Ordering::Release);
        let slot = v.running_on.load(Ordering::Acquire);
        if slot == crate::vcpu_shared::NOT_RUNNING {
            wake |= level;
        } else if slot != this_slot {
            hart::kick(slot);
        }
    });
    if wake {
        crate::sched::poke_waiters();
    }
}

/// A guest-page fault at `gpa` by the vCPU on this hart: if it is in its VM's
/// virtual PLIC window, emulates the access and returns true (the guest goes on past
/// the instruction, or takes an access fault for an access the PLIC does not
/// support); false if the address is not the PLIC's.
pub fn emulate(hart: &mut HartLocal, gpa: Gpa, store_fault: bool) -> bool {
    let Some(v) = hart.current.as_ref() else {
        return false;
    };
    let vm = v.vm.clone();
    let Some(plic) = vm.plic.as_ref() else {
        return false;
    };
    let Some(offset) = gpa.raw().checked_sub(VPLIC_BASE.raw()) else {
        return false;
    };
    if offset >= vm.plic_window {
        return false;
    }
    let access = fetch_access(&vm);
    let ok = access.filter(|a| a.store == store_fault);
    let Some(access) = ok else {
        // What the PLIC does not support (another width, an FP or atomic access, an
        // instruction we could not read) is an access fault, as on hardware.
        let cause = if store_fault { 7 } else { 5 };
        crate::trap::inject_exception(cause, csr::mtval::read());
        return true;
    };
    let reg = usize::from(access.reg);
    {
        let mut p = plic.lock();
        if access.store {
            let value = if reg == 0 { 0 } else { hart.frame.regs[reg] };
            match p.write(
                offset,
                u32::from(access.width),
                access.store_value(value) as u32,
            ) {
                Ok(Some(source)) => crate::devices::complete(&vm, source),
                Ok(None) => {}
                Err(_) => {
                    drop(p);
                    crate::trap::inject_exception(7, csr::mtval::read());
                    return true;
                }
            }
        } else {
            match p.read(offset, u32::from(access.width)) {
                Ok(raw) => {
                    if reg != 0 {
                        hart.frame.regs[reg] = access.load_value(u64::from(raw));
                    }
                }
                Err(_) => {
                    drop(p);
                    crate::trap::inject_exception(5, csr::mtval::read());
                    return true;
                }
            }
        }
        deliver(&vm, &mut p, hart.slot);
    }
    if let Some(v) = hart.current.as_ref() {
        v.sync_ext_line_live();
    }
    // SAFETY: moves the guest past the emulated instruction.
    unsafe { csr::mepc::write(csr::mepc::read() + usize::from(access.len)) };
    true
}

/// The faulting load or store: from `mtinst` where the hart provides it, else read
/// from guest memory at the faulting PC through the guest's own translation.
fn fetch_access(vm: &Vm) -> Option<MmioAccess> {
    if let Some(a) = mmio::decode_transformed(csr::mtinst::read() as u64) {
        return Some(a);
    }
    let pc = Gva::new(csr::mepc::read() as u64);
    let low = read_insn_half(vm, pc)?;
    let insn = if low & 3 == 3 {
        let high = read_insn_half(vm, pc.checked_add(2)?)?;
        u32::from(low) | (u32::from(high) << 16)
    } else {
        u32::from(low)
    };
    mmio::decode(insn)
}

/// Reads the 16-bit instruction parcel at `gva` as a supervisor read of the guest
/// would (a parcel never straddles a page: instructions are 2-byte aligned).
fn read_insn_half(vm: &Vm, gva: Gva) -> Option<u16> {
    let (vsatp, vsstatus) = (csr::vsatp::read() as u64, csr::vsstatus::read() as u64);
    let read_pte = |gpa: Gpa| {
        let mut b = [0u8; 8];
        vm.read(gpa, &mut b).ok().map(|()| u64::from_le_bytes(b))
    };
    let gpa = diosix_core::vstage::translate_read(vsatp, vsstatus, gva, read_pte).ok()?;
    if gpa.raw() % PAGE_SIZE > PAGE_SIZE - 2 {
        return None;
    }
    let mut b = [0u8; 2];
    vm.read(gpa, &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}
