//! Virtual CPUs: their saved state, and switching a hart into and out of them.

use crate::guestmode::{self, SupervisorCsrs};
use crate::vcpu_shared::VcpuShared;
use crate::vm::Vm;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use diosix_core::addr::Gpa;
use diosix_core::sbi::{FwftState, HartState, Suspend};
use diosix_riscv::csr::{self, irq, mstatus_bits};
use diosix_riscv::trap::{reg, TrapFrame};

/// Why a vCPU is not runnable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Runnable.
    None,
    /// Executed WFI: runs again when an enabled interrupt is pending.
    Wfi,
    /// HSM suspend: like WFI, then resumes as the request says.
    Suspend(Suspend),
    /// HSM stopped: runs again only on hart_start.
    Stopped,
    /// Asleep in IPC_RECV with `IPC_RECV_WAIT`, wait ticket as given: runs again when
    /// a sender has delivered a message (see `VcpuShared::claim_ipc_wait`), or, as
    /// after a WFI, when an enabled interrupt is pending.
    IpcRecv(u64),
}

/// A vCPU's guest-visible state: registers, supervisor CSRs, FP state, timer and wait
/// state. What FORK copies and a REBOOT snapshot keeps. `repr(C)` with the frame
/// first, and first in [`Vcpu`]: the registers every exit reads sit at small offsets
/// from the vCPU's address.
#[derive(Clone)]
#[repr(C)]
pub struct GuestContext {
    /// The GPRs, where the trap entry saves them while the vCPU runs (`mscratch`
    /// points here then) and the trap return restores them from.
    pub frame: TrapFrame,
    pub pc: u64,
    /// The guest was in user mode (not supervisor mode) when last descheduled.
    pub user_mode: bool,
    pub csrs: SupervisorCsrs,
    pub fp: [u64; 32],
    pub fcsr: u64,
    /// `fp` and `fcsr` are all zero: the vCPU has never dirtied its FP state, so a
    /// hart whose FP registers are zero need not load them (under H; see
    /// [`Vcpu::load`]).
    pub fp_zero: bool,
    /// Guest timer deadline in `time` units; `u64::MAX` = none. With guest Sstc
    /// ([`crate::platform::guest_sstc`]) this is the vCPU's `vstimecmp`: live in the
    /// CSR while the vCPU runs, saved here while it does not.
    pub timer_deadline: u64,
    pub wait: Wait,
    /// SBI FWFT settings (applied through `csrs.envcfg`).
    pub fwft: FwftState,
    /// SBI STA: where steal time is reported and how much there was.
    pub sta: diosix_core::steal::StaState,
    /// SBI DBTR: its debug triggers.
    pub dbtr: diosix_core::sbi::dbtr::DbtrState,
    /// SBI PMU: its counters (the hardware ones live in the hart while it runs),
    /// from its first PMU call on: out of line, so vCPUs that never count carry and
    /// copy none of it (`crate::vmtree` charges the heap for it per vCPU).
    pub pmu: Option<alloc::boxed::Box<diosix_core::sbi::pmu::PmuState>>,
}

/// A copy of a vCPU's state detached from its VM (for FORK and REBOOT snapshots).
#[derive(Clone)]
pub struct VcpuState {
    pub index: usize,
    pub hsm: HartState,
    pub ctx: GuestContext,
}

/// A vCPU's full saved state. Owned by exactly one place at a time: the run queue, or
/// the hart running it.
#[repr(C)]
pub struct Vcpu {
    pub ctx: GuestContext,
    pub vm: Arc<Vm>,
    pub shared: Arc<VcpuShared>,
    /// Priority (higher runs first).
    pub priority: u8,
    /// What its VM's activation returned when this vCPU was last loaded on its hart
    /// (PMP mode: the generation of the entries the hart holds).
    pub activation_loaded: u64,
}

impl Vcpu {
    /// A vCPU of `vm` that will start at `pc` with a0 = its index and a1 = `a1`.
    pub fn new(vm: Arc<Vm>, shared: Arc<VcpuShared>, pc: Gpa, a1: u64, wait: Wait) -> Self {
        let mut regs = [0u64; 32];
        regs[reg::A0] = shared.index as u64;
        regs[reg::A1] = a1;
        let priority = vm.priority;
        Self {
            vm,
            shared,
            ctx: GuestContext {
                frame: TrapFrame {
                    regs,
                    ..TrapFrame::new(0)
                },
                pc: pc.raw(),
                user_mode: false,
                // As machine firmware leaves it: user mode may read cycle, time and
                // instret (Linux's vDSO reads `time` directly).
                csrs: SupervisorCsrs {
                    scounteren: 0b111,
                    ..SupervisorCsrs::default()
                },
                fp: [0; 32],
                fcsr: 0,
                fp_zero: true,
                timer_deadline: u64::MAX,
                wait,
                fwft: FwftState::reset(),
                sta: diosix_core::steal::StaState::default(),
                dbtr: diosix_core::sbi::dbtr::DbtrState::default(),
                pmu: None,
            },
            priority,
            activation_loaded: 0,
        }
    }

    /// Its state (saved: call [`Vcpu::save`] first if it is running).
    pub fn clone_state(&self) -> VcpuState {
        VcpuState {
            index: self.shared.index,
            hsm: self.shared.state(),
            ctx: self.ctx.clone(),
        }
    }

    /// A vCPU of `vm` with the given state (a FORK child's copy, or a snapshot's).
    pub fn from_state(vm: Arc<Vm>, shared: Arc<VcpuShared>, st: &VcpuState) -> Self {
        let priority = vm.priority;
        Self {
            vm,
            shared,
            ctx: st.ctx.clone(),
            priority,
            activation_loaded: 0,
        }
    }

    /// Resets to the HSM start state: VS-mode at `pc`, a0 = hart, a1 = `opaque`,
    /// translation off, supervisor interrupts off (SBI HSM `hart_start`).
    pub fn reset_to(&mut self, pc: Gpa, opaque: u64) {
        self.ctx.frame.regs = [0; 32];
        self.ctx.frame.regs[reg::A0] = self.shared.index as u64;
        self.ctx.frame.regs[reg::A1] = opaque;
        self.ctx.pc = pc.raw();
        self.ctx.user_mode = false;
        self.ctx.csrs.satp = 0;
        self.ctx.csrs.sstatus &= !(1 << 1); // SIE
        self.ctx.csrs.sstatus &= !(1 << 8); // SPP
    }

    /// A hart reset (HSM `hart_start` of a stopped vCPU): besides [`Vcpu::reset_to`],
    /// SBI FWFT features go back to their reset values, unlocked, no steal-time
    /// record is registered and no debug trigger installed. (A resume from
    /// non-retentive suspend keeps them.)
    pub fn hart_reset(&mut self, pc: Gpa, opaque: u64) {
        self.reset_to(pc, opaque);
        self.ctx.fwft = FwftState::reset();
        self.ctx.csrs.envcfg = 0;
        self.ctx.sta = diosix_core::steal::StaState::default();
        self.ctx.dbtr = diosix_core::sbi::dbtr::DbtrState::default();
        self.ctx.pmu = None;
    }

    /// Whether this waiting vCPU should run again.
    ///
    /// WFI waits for a pending interrupt the guest has enabled in sie (whatever
    /// sstatus.SIE says). An HSM suspend also ends on a *new* event — an IPI raised
    /// since the vCPU last ran (still in `pending`, not yet merged into hvip) or its
    /// timer expiring — even if sie masks it, as a firmware suspend would; an
    /// interrupt that was already pending and masked before the suspend does not end it.
    pub fn has_wakeup(&self, now: u64) -> bool {
        // A receive a sender has answered needs no look at the interrupts.
        if let Wait::IpcRecv(_) = self.ctx.wait {
            if self.shared.ipc_answered() {
                return true;
            }
        }
        let raised = self.shared.pending.load(Ordering::Acquire) & irq::VS_ALL;
        let timer = if self.ctx.timer_deadline <= now {
            irq::VSTIP
        } else {
            0
        };
        let pending = (self.ctx.csrs.pending & irq::VS_ALL) | raised | timer | self.ext_line();
        // hvip bits 2/6/10 correspond to the guest's sie bits 1/5/9; a counter
        // overflow (LCOFI, bit 13 in both) waits in hvip under H, in the vCPU's PMU
        // state behind PMP.
        let overflow = self.ctx.csrs.pending & diosix_riscv::pmu::LCOFIP != 0
            || self.ctx.pmu.as_ref().is_some_and(|p| p.overflow_pending);
        let enabled = (pending >> 1) & self.ctx.csrs.sie != 0
            || (overflow && self.ctx.csrs.sie & diosix_riscv::pmu::LCOFIP != 0);
        match self.ctx.wait {
            Wait::Suspend(_) => enabled || raised != 0 || timer != 0,
            Wait::IpcRecv(ticket) => self.shared.ipc_wait_over(ticket, enabled),
            _ => enabled,
        }
    }

    /// When this waiting vCPU's timer can wake it: its deadline, or never (`u64::MAX`)
    /// if its WFI cannot end on a timer interrupt because the guest has the timer
    /// interrupt disabled (an HSM suspend ends on any pending interrupt, so its
    /// deadline always counts). A deadline that cannot wake the vCPU must not be
    /// programmed into the idle harts' timers: once past, it would keep their timer
    /// interrupt pending and turn their WFI into a busy loop.
    pub fn timer_wake_deadline(&self) -> u64 {
        // hvip's VSTIP (bit 6) is the guest's STIP, enabled by sie's STIE (bit 5).
        let timer_enabled = (irq::VSTIP >> 1) & self.ctx.csrs.sie != 0;
        match self.ctx.wait {
            Wait::Suspend(_) => self.ctx.timer_deadline,
            _ if timer_enabled => self.ctx.timer_deadline,
            _ => u64::MAX,
        }
    }

    /// Loads this vCPU onto the current hart, whose own trap frame is `hart_frame`:
    /// its frame becomes the one traps save into, its CSRs go into the hart.
    /// `hart_fp_zero` says the hart's FP registers are all zero (updated).
    pub fn load(&mut self, hart_frame: &TrapFrame, now: u64, hart_fp_zero: &mut bool) {
        self.shared.running_again(now);
        self.ctx.frame.hv_sp = hart_frame.hv_sp;
        self.ctx.frame.hart = hart_frame.hart;
        // SAFETY: the frame is in this vCPU's box, which stays put while it runs here
        // and is not run by another hart until `sched::switch_away` has given this
        // hart its own frame back; it names this hart's stack and state (above).
        unsafe { diosix_riscv::trap::set_frame(&mut self.ctx.frame) };
        self.merge_pending(now);
        // This vCPU's own VM's memory, and no other, from here on.
        self.activation_loaded = self.vm.activation.load();
        let mode = guestmode::mode();
        mode.load(&self.ctx.csrs);
        if crate::platform::guest_sstc() {
            // SAFETY: the vCPU's own comparator (guests have Sstc only under H).
            unsafe { csr::vstimecmp::write(self.ctx.timer_deadline as usize) };
        }
        // SAFETY: mepc and mstatus only shape the guest context the next mret enters.
        unsafe {
            csr::mepc::write(self.ctx.pc as usize);
            let mut ms = csr::mstatus::read();
            // Under H, mstatus.FS was set Clean when the last vCPU was loaded and the
            // hardware made it Dirty if anything wrote an FP register since (a guest
            // cannot set it back: it writes only vsstatus.FS): then the hart's
            // registers are no longer known to be zero.
            if ms & mstatus_bits::FS_MASK == mstatus_bits::FS_DIRTY {
                *hart_fp_zero = false;
            }
            ms &= !(mstatus_bits::MPP_MASK | mstatus_bits::FS_MASK | mstatus_bits::MIE);
            ms = mode.entry_mstatus(ms, self.ctx.user_mode);
            // FP registers: always restored (a vCPU that never used FP gets zeros, not
            // the previous vCPU's values), then marked Clean so a save is needed only
            // if the guest writes them again. In S-mode mstatus.FS is the guest's own
            // sstatus.FS, so it gets the guest's value back instead.
            // A vCPU that never dirtied its FP state (all zero) on a hart whose FP
            // registers are zero needs no restore. Behind PMP mstatus.FS is the
            // guest's own, so it proves nothing there: always restored.
            ms |= mstatus_bits::FS_CLEAN;
            csr::mstatus::write(ms);
            let pmp = guestmode::is_pmp();
            if pmp || !(self.ctx.fp_zero && *hart_fp_zero) {
                restore_fp(&self.ctx.fp, self.ctx.fcsr);
            }
            *hart_fp_zero = self.ctx.fp_zero && !pmp;
            csr::mstatus::clear_bits(mstatus_bits::FS_MASK);
            if pmp {
                csr::mstatus::set_bits(self.ctx.csrs.sstatus & mstatus_bits::FS_MASK);
            } else {
                csr::mstatus::set_bits(mstatus_bits::FS_CLEAN);
            }
        }
    }

    /// Saves this vCPU's state from the current hart (the inverse of [`Vcpu::load`];
    /// its GPRs are already in its frame, where the trap saved them).
    pub fn save(&mut self) {
        self.ctx.pc = csr::mepc::read() as u64;
        let ms = csr::mstatus::read();
        self.ctx.user_mode = ms & mstatus_bits::MPP_MASK == 0;
        guestmode::mode().save(&mut self.ctx.csrs);
        if crate::platform::guest_sstc() {
            self.ctx.timer_deadline = csr::vstimecmp::read() as u64;
        }
        if ms & mstatus_bits::FS_MASK == mstatus_bits::FS_DIRTY {
            // SAFETY: mstatus.FS is non-zero, so FP instructions are legal in M-mode.
            unsafe { save_fp(&mut self.ctx.fp, &mut self.ctx.fcsr) };
            self.ctx.fp_zero = false;
        }
    }

    /// hvip.VSEIP if this vCPU's external interrupt line is up, else 0.
    fn ext_line(&self) -> usize {
        if self.shared.ext_line.load(Ordering::Acquire) {
            irq::VSEIP
        } else {
            0
        }
    }

    /// Copies the external interrupt line into the live hvip of the vCPU running on
    /// this hart (after its virtual PLIC changed, or a kick).
    pub fn sync_ext_line_live(&self) {
        // A VM without a virtual PLIC never has the line up: no CSR access on the
        // timer and set_timer paths for it.
        if self.vm.plic_window == 0 {
            return;
        }
        if self.ext_line() != 0 {
            guestmode::mode().raise(irq::VSEIP);
        } else {
            guestmode::mode().lower(irq::VSEIP);
        }
    }

    /// Refreshes the saved copies of what decides a wake-up (interrupt enables,
    /// injected interrupts, the Sstc deadline) from the CSRs of the running vCPU.
    pub fn sync_interrupt_state(&mut self) {
        let mode = guestmode::mode();
        self.ctx.csrs.sie = mode.enabled();
        self.ctx.csrs.pending = mode.pending();
        if crate::platform::guest_sstc() {
            self.ctx.timer_deadline = csr::vstimecmp::read() as u64;
        }
    }

    /// Folds interrupts raised by other harts and an expired timer into hvip (with
    /// guest Sstc the timer raises VSTIP by itself once `vstimecmp` is loaded).
    pub fn merge_pending(&mut self, now: u64) {
        let raised = self.shared.pending.swap(0, Ordering::AcqRel);
        self.ctx.csrs.pending = (self.ctx.csrs.pending & !irq::VSEIP) | (raised & irq::VS_ALL);
        self.ctx.csrs.pending |= self.ext_line();
        if self.ctx.timer_deadline <= now && !crate::platform::guest_sstc() {
            // Latched until the guest sets a new deadline.
            self.ctx.csrs.pending |= irq::VSTIP;
            self.ctx.timer_deadline = u64::MAX;
        }
    }

    /// Like [`Vcpu::merge_pending`] for the vCPU running on this hart: works on the
    /// live hvip CSR.
    pub fn merge_pending_live(&mut self, now: u64) {
        let mut bits = self.shared.pending.swap(0, Ordering::AcqRel) & irq::VS_ALL;
        if self.ctx.timer_deadline <= now && !crate::platform::guest_sstc() {
            bits |= irq::VSTIP;
            self.ctx.timer_deadline = u64::MAX;
        }
        if bits != 0 {
            guestmode::mode().raise(bits);
        }
        self.sync_ext_line_live();
    }
}

/// Delivers an exception to the guest's own trap handler, as the hardware would have
/// had it been delegated.
pub fn inject_exception(cause: usize, tval: usize) {
    guestmode::mode().inject_exception(cause, tval);
}

macro_rules! fp_regs {
    ($op:literal) => {
        concat!(
            $op,
            " f0, 0*8({0})\n",
            $op,
            " f1, 1*8({0})\n",
            $op,
            " f2, 2*8({0})\n",
            $op,
            " f3, 3*8({0})\n",
            $op,
            " f4, 4*8({0})\n",
            $op,
            " f5, 5*8({0})\n",
            $op,
            " f6, 6*8({0})\n",
            $op,
            " f7, 7*8({0})\n",
            $op,
            " f8, 8*8({0})\n",
            $op,
            " f9, 9*8({0})\n",
            $op,
            " f10, 10*8({0})\n",
            $op,
            " f11, 11*8({0})\n",
            $op,
            " f12, 12*8({0})\n",
            $op,
            " f13, 13*8({0})\n",
            $op,
            " f14, 14*8({0})\n",
            $op,
            " f15, 15*8({0})\n",
            $op,
            " f16, 16*8({0})\n",
            $op,
            " f17, 17*8({0})\n",
            $op,
            " f18, 18*8({0})\n",
            $op,
            " f19, 19*8({0})\n",
            $op,
            " f20, 20*8({0})\n",
            $op,
            " f21, 21*8({0})\n",
            $op,
            " f22, 22*8({0})\n",
            $op,
            " f23, 23*8({0})\n",
            $op,
            " f24, 24*8({0})\n",
            $op,
            " f25, 25*8({0})\n",
            $op,
            " f26, 26*8({0})\n",
            $op,
            " f27, 27*8({0})\n",
            $op,
            " f28, 28*8({0})\n",
            $op,
            " f29, 29*8({0})\n",
            $op,
            " f30, 30*8({0})\n",
            $op,
            " f31, 31*8({0})\n",
        )
    };
}

/// # Safety
/// mstatus.FS must be non-zero.
unsafe fn save_fp(fp: &mut [u64; 32], fcsr: &mut u64) {
    // SAFETY: writes exactly 32 doublewords into `fp`; FP is enabled (caller).
    unsafe {
        core::arch::asm!(fp_regs!("fsd"), in(reg) fp.as_mut_ptr());
        core::arch::asm!("frcsr {0}", out(reg) * fcsr);
    }
}

/// # Safety
/// mstatus.FS must be non-zero.
unsafe fn restore_fp(fp: &[u64; 32], fcsr: u64) {
    // SAFETY: reads exactly 32 doublewords from `fp`; FP is enabled (caller).
    unsafe {
        core::arch::asm!(fp_regs!("fld"), in(reg) fp.as_ptr());
        core::arch::asm!("fscsr {0}", in(reg) fcsr);
    }
}
