//! The Rust half of the trap path: decides what each trap means for the current vCPU.

use crate::hart::{self, HartLocal};
use crate::sched;
use crate::vcpu::Wait;
use diosix_core::addr::{Gpa, Gva};
use diosix_core::exits::ExitCause;
use diosix_core::gstage::Perms;
use diosix_core::sbi::Extension;
use diosix_riscv::csr::{self, mstatus_bits};
use diosix_riscv::trap::{reg, TrapFrame};

const INTERRUPT: usize = 1 << 63;
const IRQ_M_SOFT: usize = 3;
const IRQ_M_TIMER: usize = 7;
const IRQ_M_EXTERNAL: usize = 11;
/// Sscofpmf's local counter-overflow interrupt (enabled in M-mode only under H, for
/// guests' counters).
const IRQ_LCOF: usize = 13;
const EXC_ILLEGAL_INSTRUCTION: usize = 2;
const ECALL_FROM_S: usize = 9;
const ECALL_FROM_VS: usize = 10;
const EXC_LOAD_ACCESS_FAULT: usize = 5;
const EXC_STORE_ACCESS_FAULT: usize = 7;
const EXC_INSTRUCTION_GUEST_PAGE_FAULT: usize = 20;
const EXC_LOAD_GUEST_PAGE_FAULT: usize = 21;
const EXC_VIRTUAL_INSTRUCTION: usize = 22;
const EXC_STORE_GUEST_PAGE_FAULT: usize = 23;
const INSN_WFI: usize = 0x1050_0073;

/// Entered from `diosix_trap_entry` with only the caller-saved registers (and `sp`)
/// of the interrupted context saved in its frame, and its a0-a7 as the arguments:
/// completes the traps that return to the same vCPU without reading any other
/// register — the SBI calls [`ExitCause::of_fast_call`] names — and returns non-zero;
/// anything else returns 0 untouched, and the entry saves the remaining registers and
/// calls [`diosix_trap_handler`].
#[no_mangle]
#[allow(clippy::too_many_arguments)] // the ecall's eight argument registers, as they came
extern "C" fn diosix_fast_trap(
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
    a7: usize,
) -> usize {
    // An ecall from the guest's supervisor level: VS-mode (10) under H, S-mode (9)
    // behind PMP. Neither mode can raise the other's, since the hypervisor itself
    // never runs below M-mode, so no lookup of the mode is needed on this path.
    if !matches!(csr::mcause::read(), ECALL_FROM_S | ECALL_FROM_VS) {
        return 0;
    }
    // One decision on the extension: whether the fast path completes it, and (by its
    // handler) its exit cause and its dispatch.
    let Some(ext) = Extension::of(a7) else {
        return 0;
    };
    crate::sbi::fast_ecall(ext, [a0, a1, a2, a3, a4, a5, a6, a7])
}

/// Entered from `diosix_trap_entry` with the interrupted context saved in `frame`
/// (the running vCPU's own); returns the frame to resume: the running vCPU's, which
/// is another's if the handler switched.
#[no_mangle]
extern "C" fn diosix_trap_handler(_frame: *mut TrapFrame) -> *mut TrapFrame {
    // SAFETY: taken once per trap; mscratch holds the frame the trap saved into.
    let hart = unsafe { hart::this_hart() };
    let cause = csr::mcause::read();
    let mode = crate::guestmode::mode();
    if !mode.trapped_from_guest(csr::mstatus::read()) || hart.current.is_none() {
        hypervisor_fault(cause);
    }
    if let Some(v) = hart.current.as_ref() {
        let a7 = v.ctx.frame.regs[reg::A7] as usize;
        v.shared.count_exit(ExitCause::classify(cause, a7));
    }
    if cause & INTERRUPT != 0 {
        match cause & !INTERRUPT {
            IRQ_M_TIMER => sched::tick(hart),
            IRQ_M_SOFT => software_interrupt(hart),
            IRQ_M_EXTERNAL => {
                crate::devices::external_interrupt(hart.slot);
                if let Some(v) = hart.current.as_ref() {
                    v.sync_ext_line_live();
                }
            }
            IRQ_LCOF => crate::pmu::overflow_interrupt(),
            other => log::warn!("unexpected interrupt {other}"),
        }
    } else {
        match cause {
            c if c == mode.ecall_cause() => crate::sbi::handle_ecall(hart),
            // Under H: what VS-mode may not do. In S-mode (illegal instructions are
            // not delegated): the same, plus whatever the guest got wrong itself.
            EXC_VIRTUAL_INSTRUCTION | EXC_ILLEGAL_INSTRUCTION => virtual_instruction(hart),
            _ => guest_fault(hart, cause),
        }
    }
    // S-mode: PMP entries another hart changed (MMIO unmapped, say) are in force
    // before the guest runs again.
    if let Some(v) = hart.current.as_mut() {
        v.vm.activation.refresh(&mut v.activation_loaded);
    }
    // Whichever vCPU now runs here: its load made its frame the installed one.
    diosix_riscv::trap::installed_frame()
}

/// A trap taken in M-mode itself is a hypervisor bug: report it and restart.
fn hypervisor_fault(cause: usize) -> ! {
    panic!(
        "hypervisor trap: mcause {:#x} mepc {:#x} mtval {:#x}",
        cause,
        csr::mepc::read(),
        csr::mtval::read()
    );
}

/// Another hart asked for attention: a fence, or an interrupt for our vCPU.
fn software_interrupt(hart: &mut HartLocal) {
    hart::clear_kick(hart.slot);
    hart::service_fence_request(hart.slot);
    let now = crate::platform::now();
    if let Some(v) = hart.current.as_mut() {
        v.merge_pending_live(now);
    }
    // A kick can also mean our vCPU's VM was stopped, held for a fork, or killed.
    if hart.current.as_ref().is_some_and(|v| !v.vm.can_run()) {
        sched::switch_away(hart, Wait::None);
    }
}

fn virtual_instruction(hart: &mut HartLocal) {
    let insn = match csr::mtval::read() {
        // A hart that does not report the instruction: read it from the guest.
        0 => hart
            .current
            .as_ref()
            .and_then(|v| crate::mmio::guest_instruction(&v.vm))
            .map_or(0, |i| i as usize),
        i => i,
    };
    if let Some(v) = hart.current.as_ref() {
        correct_straddling_epc(&v.vm, insn);
    }
    if insn == INSN_WFI {
        advance_pc();
        let now = crate::platform::now();
        let wake = hart.current.as_mut().is_some_and(|v| {
            v.merge_pending_live(now);
            v.sync_interrupt_state();
            v.has_wakeup(now)
        });
        if !wake {
            sched::switch_away(hart, Wait::Wfi);
        }
        return;
    }
    // A hart without the `time` CSR (S-mode under PMP only: under H it is always
    // there for VS-mode): the platform timer, as machine firmware answers it.
    if let Some(rd) = u32::try_from(insn)
        .ok()
        .and_then(diosix_core::mmio::decode_time_read)
    {
        if rd != 0 {
            hart.guest_regs()[usize::from(rd)] = crate::platform::now();
        }
        advance_pc();
        return;
    }
    // Anything else a guest may not do (hypervisor CSRs, Sstc's stimecmp with STCE
    // clear, M-mode CSRs in S-mode, ...) is an illegal instruction from the guest's
    // point of view.
    crate::vcpu::inject_exception(EXC_ILLEGAL_INSTRUCTION, insn);
}

/// QEMU (seen on 10.0) reports a trapped 4-byte instruction that straddles a page
/// boundary (it starts 2 bytes before one) with `mepc` one page past its real
/// address; resuming at `mepc + 4` would run the guest from the wrong page. When the
/// instruction bits the hart reported (`insn`) are not at `mepc` but are one page
/// below, `mepc` is put back there. A guest cannot use this to move its PC anywhere
/// but onto an instruction it really has, one page down.
fn correct_straddling_epc(vm: &crate::vm::Vm, insn: usize) {
    let pc = csr::mepc::read() as u64;
    if pc % diosix_core::addr::PAGE_SIZE != diosix_core::addr::PAGE_SIZE - 2 || insn & 3 != 3 {
        return;
    }
    let at = |a: u64| crate::mmio::instruction_at(vm, Gva::new(a)).map(|i| i as usize);
    if at(pc) == Some(insn) {
        return;
    }
    let Some(below) = pc.checked_sub(diosix_core::addr::PAGE_SIZE) else {
        return;
    };
    if at(below) == Some(insn) {
        log::debug!("trapped instruction straddling a page: mepc {pc:#x} corrected to {below:#x}");
        // SAFETY: points the guest's resume address at the instruction that trapped.
        unsafe { csr::mepc::write(below as usize) };
    }
}

fn advance_pc() {
    // SAFETY: moves the guest past the trapping 4-byte instruction.
    unsafe { csr::mepc::write(csr::mepc::read() + 4) };
}

/// A guest trap the hypervisor cannot resolve ends that VM, never the hypervisor.
fn guest_fault(hart: &mut HartLocal, cause: usize) {
    let mtval = csr::mtval::read();
    let pmp = crate::guestmode::is_pmp();
    let gpa = if pmp {
        // An access fault: mtval is the address the guest used, translated by its own
        // page tables (if it has them on) to the physical address PMP refused.
        hart.current
            .as_ref()
            .and_then(|v| crate::mmio::guest_physical(&v.vm, Gva::new(mtval as u64)))
            .unwrap_or(Gpa::new(mtval as u64))
    } else {
        Gpa::new(((csr::mtval2::read() << 2) | (mtval & 3)) as u64)
    };
    let gva_valid = !pmp && csr::mstatus::read() & mstatus_bits::GVA != 0;
    let what = match cause {
        EXC_INSTRUCTION_GUEST_PAGE_FAULT => "instruction guest-page fault",
        EXC_LOAD_GUEST_PAGE_FAULT => "load guest-page fault",
        EXC_STORE_GUEST_PAGE_FAULT => "store/AMO guest-page fault",
        1 => "instruction access fault",
        5 => "load access fault",
        7 => "store/AMO access fault",
        _ => "unexpected exception",
    };
    let Some(vm) = hart.current.as_ref().map(|v| v.vm.clone()) else {
        return;
    };
    let vcpu = hart.current.as_ref().map_or(0, |v| v.shared.index);
    // A load or store to the VM's virtual PLIC (never mapped, so it always faults: a
    // guest-page fault under H, an access fault under PMP).
    let (load_fault, store_fault) = if pmp {
        (EXC_LOAD_ACCESS_FAULT, EXC_STORE_ACCESS_FAULT)
    } else {
        (EXC_LOAD_GUEST_PAGE_FAULT, EXC_STORE_GUEST_PAGE_FAULT)
    };
    if (cause == load_fault || cause == store_fault)
        && (crate::devices::emulate_plic_access(hart, gpa, cause == store_fault)
            || crate::virtio::emulate(hart, gpa, cause == store_fault)
            || crate::mmio::detached(hart, gpa, cause == store_fault))
    {
        return;
    }
    if matches!(
        cause,
        EXC_INSTRUCTION_GUEST_PAGE_FAULT | EXC_LOAD_GUEST_PAGE_FAULT | EXC_STORE_GUEST_PAGE_FAULT
    ) {
        // The first touch of a range shared by FORK, or a write to a copy-on-write
        // page: resolved, the guest retries the access.
        let need = match cause {
            EXC_STORE_GUEST_PAGE_FAULT => Perms::R | Perms::W,
            EXC_LOAD_GUEST_PAGE_FAULT => Perms::R,
            _ => Perms::X,
        };
        match crate::cow::access_fault(&vm, gpa, need, hart.slot) {
            Ok(()) => return,
            Err(crate::isolation::CowError::NotCow) => {}
            Err(crate::isolation::CowError::OutOfMemory) => log::error!(
                "VM {} vCPU {vcpu}: no host frame for a private copy of copy-on-write {gpa}",
                vm.name
            ),
        }
    }
    let (name, is_root) = (vm.name.clone(), vm.is_root);
    log::error!(
        "VM {name} vCPU {vcpu}: {what} (mcause {cause}) at PC {} (ra {}, sp {}){}{}",
        Gva::new(csr::mepc::read() as u64),
        Gva::new(hart.guest_regs()[reg::RA]),
        Gva::new(hart.guest_regs()[reg::SP]),
        if matches!(cause, 20 | 21 | 23) || (pmp && matches!(cause, 1 | 5 | 7)) {
            alloc::format!(", {gpa}")
        } else {
            alloc::string::String::new()
        },
        if gva_valid {
            alloc::format!(", {}", Gva::new(mtval as u64))
        } else {
            alloc::string::String::new()
        },
    );
    if is_root {
        log::error!("the Root VM cannot continue: restarting the host");
        crate::platform::restart_host();
    }
    crate::vmtree::vm_ended(hart, &vm, diosix_abi::exit_code::FATAL_FAULT, true);
    sched::switch_away(hart, Wait::None);
}
