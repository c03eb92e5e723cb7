//! How a hart runs guest code, behind one seam ([`GuestMode`]):
//!
//! * [`VsMode`]: under the H extension, guests run in VS-mode. Their supervisor CSRs
//!   are the hart's VS-level copies, interrupts are injected through `hvip`, and their
//!   memory is translated by G-stage tables.
//! * [`SMode`]: on harts without H (the PMP fallback), guests run in plain S-mode.
//!   Their supervisor CSRs are the hart's own S-level CSRs, saved and restored per vCPU.
//!   Interrupts are injected through `mip`'s S-level bits. A guest's RAM sits at
//!   GPA = HPA, and PMP is what keeps it in.
//!
//! Either way, a vCPU's saved state has one layout ([`SupervisorCsrs`]). Injected
//! interrupts are kept in `hvip` numbering (VSSIP/VSTIP/VSEIP, bits 2/6/10) in both
//! modes. The scheduler, the SBI and the trap path call this module and never ask which
//! mode runs.

use core::sync::atomic::{AtomicBool, Ordering};
use diosix_riscv::csr::{self, irq, mstatus_bits};
use spin::Once;

/// A vCPU's supervisor-level CSRs while it is off its hart.
#[derive(Clone, Copy, Debug, Default)]
pub struct SupervisorCsrs {
    /// `sstatus` (under H: `vsstatus`).
    pub sstatus: usize,
    /// `sie`: enables at bits 1/5/9.
    pub sie: usize,
    /// `stvec`.
    pub stvec: usize,
    /// `sscratch`.
    pub sscratch: usize,
    /// `sepc`.
    pub sepc: usize,
    /// `scause`.
    pub scause: usize,
    /// `stval`.
    pub stval: usize,
    /// `satp`: the guest's own page tables.
    pub satp: usize,
    /// Interrupts injected into the guest, in `hvip` numbering (bits 2/6/10).
    pub pending: usize,
    /// The guest's `scounteren`. Under H the CSR is not virtualized: it is shared by
    /// every guest on the hart, so it is switched per vCPU in both modes.
    pub scounteren: usize,
    /// `henvcfg` bits this vCPU chose through SBI FWFT (ADUE), on top of the host's
    /// (STCE); under H only, 0 behind PMP.
    pub envcfg: usize,
}

/// The hardware side of running a vCPU on this hart (see the module documentation).
pub trait GuestMode: Sync {
    /// A name for the boot banner and logs.
    fn name(&self) -> &'static str;

    /// Loads a vCPU's supervisor CSRs into this hart.
    fn load(&self, c: &SupervisorCsrs);

    /// Applies a running vCPU's new [`SupervisorCsrs::envcfg`] at once (SBI FWFT).
    fn load_envcfg(&self, envcfg: usize);

    /// Reads the running vCPU's supervisor CSRs back (the inverse of [`load`]).
    ///
    /// [`load`]: GuestMode::load
    fn save(&self, into: &mut SupervisorCsrs);

    /// `mstatus` for an `mret` into the guest: `ms` with the previous-mode fields set
    /// for the guest's supervisor (or user, if `user`) mode. MPP and MIE are clear in `ms`.
    fn entry_mstatus(&self, ms: usize, user: bool) -> usize;

    /// Whether a trap with this `mstatus` came from the guest (not from M-mode).
    fn trapped_from_guest(&self, ms: usize) -> bool;

    /// Interrupts injected into the running guest (hvip numbering).
    fn pending(&self) -> usize;

    /// Injects `bits` (hvip numbering) into the running guest.
    fn raise(&self, bits: usize);

    /// Withdraws `bits` (hvip numbering) from the running guest.
    fn lower(&self, bits: usize);

    /// The running guest's `sie`.
    fn enabled(&self) -> usize;

    /// The running guest's `satp` and `sstatus`, for walking its page tables.
    fn translation(&self) -> (u64, u64);

    /// Delivers an exception to the running guest's own trap handler, as the hardware
    /// would have, had it been delegated.
    fn inject_exception(&self, cause: usize, tval: usize);

    /// Forgets this hart's cached translations made by guests (all of them).
    fn flush_guest_tlb(&self);

    /// Forgets this hart's cached knowledge of guest memory itself (G-stage entries;
    /// in S-mode the TLB, which may cache PMP checks).
    fn flush_guest_memory(&self);

    /// The exception code of an environment call from the guest's supervisor mode.
    fn ecall_cause(&self) -> usize;
}

/// Guests in VS-mode (the H extension).
pub struct VsMode;

/// Guests in S-mode, isolated by PMP (no H extension).
pub struct SMode;

const SIE: usize = 1 << 1;
const SPIE: usize = 1 << 5;
const SPP: usize = 1 << 8;

/// `sstatus` after trap entry from a mode (`from_supervisor`): SPIE takes SIE, SIE is
/// cleared, SPP records the mode.
fn trap_entry_status(status: usize, from_supervisor: bool) -> usize {
    let mut s = if status & SIE != 0 {
        status | SPIE
    } else {
        status & !SPIE
    };
    s &= !SIE;
    if from_supervisor {
        s | SPP
    } else {
        s & !SPP
    }
}

impl GuestMode for VsMode {
    fn name(&self) -> &'static str {
        "hypervisor extension (guests in VS-mode behind sv39x4 G-stage tables)"
    }

    fn load(&self, c: &SupervisorCsrs) {
        // SAFETY: the VS-level CSRs and hvip only shape the guest context the next
        // mret enters; scounteren gates only the guest's user mode.
        unsafe {
            csr::vsstatus::write(c.sstatus);
            csr::vsie::write(c.sie);
            csr::vstvec::write(c.stvec);
            csr::vsscratch::write(c.sscratch);
            csr::vsepc::write(c.sepc);
            csr::vscause::write(c.scause);
            csr::vstval::write(c.stval);
            csr::vsatp::write(c.satp);
            csr::hvip::write(c.pending & vs_irqs());
            csr::scounteren::write(c.scounteren);
        }
        self.load_envcfg(c.envcfg);
    }

    fn load_envcfg(&self, envcfg: usize) {
        let host = HOST_HENVCFG.load(Ordering::Relaxed);
        // SAFETY: henvcfg shapes only VS-mode (its timer comparator and A/D updating
        // in the guest's own page tables); envcfg holds only bits FWFT validated.
        unsafe { csr::henvcfg::write(host | envcfg) };
    }

    fn save(&self, into: &mut SupervisorCsrs) {
        // Field by field into place: a returned struct would be copied by `memcpy`.
        into.sstatus = csr::vsstatus::read();
        into.sie = csr::vsie::read();
        into.stvec = csr::vstvec::read();
        into.sscratch = csr::vsscratch::read();
        into.sepc = csr::vsepc::read();
        into.scause = csr::vscause::read();
        into.stval = csr::vstval::read();
        into.satp = csr::vsatp::read();
        into.pending = csr::hvip::read() & vs_irqs();
        into.scounteren = csr::scounteren::read();
    }

    fn entry_mstatus(&self, ms: usize, user: bool) -> usize {
        let ms = ms | mstatus_bits::MPV;
        if user {
            ms
        } else {
            ms | mstatus_bits::MPP_S
        }
    }

    fn trapped_from_guest(&self, ms: usize) -> bool {
        ms & mstatus_bits::MPV != 0
    }

    fn pending(&self) -> usize {
        csr::hvip::read() & vs_irqs()
    }

    fn raise(&self, bits: usize) {
        // SAFETY: hvip's VS bits only inject interrupts into this hart's guest.
        unsafe { csr::hvip::set_bits(bits & vs_irqs()) };
    }

    fn lower(&self, bits: usize) {
        // SAFETY: as for `raise`.
        unsafe { csr::hvip::clear_bits(bits & vs_irqs()) };
    }

    fn enabled(&self) -> usize {
        csr::vsie::read()
    }

    fn translation(&self) -> (u64, u64) {
        (csr::vsatp::read() as u64, csr::vsstatus::read() as u64)
    }

    fn inject_exception(&self, cause: usize, tval: usize) {
        let ms = csr::mstatus::read();
        let from_vs = ms & mstatus_bits::MPP_MASK != 0;
        let vss = trap_entry_status(csr::vsstatus::read(), from_vs);
        // SAFETY: these CSRs only affect the guest context we return to: it resumes at
        // its own vstvec in VS-mode with the trap recorded in its VS CSRs.
        unsafe {
            csr::vsepc::write(csr::mepc::read());
            csr::vscause::write(cause);
            csr::vstval::write(tval);
            csr::vsstatus::write(vss);
            csr::mepc::write(csr::vstvec::read() & !3);
            csr::mstatus::write(
                (ms & !mstatus_bits::MPP_MASK) | mstatus_bits::MPP_S | mstatus_bits::MPV,
            );
        }
    }

    fn flush_guest_tlb(&self) {
        diosix_riscv::fence::hfence_vvma_all();
    }

    fn flush_guest_memory(&self) {
        diosix_riscv::fence::hfence_gvma_all();
    }

    fn ecall_cause(&self) -> usize {
        10
    }
}

/// hvip numbering (2/6/10) to mip's S-level bits (1/5/9).
fn to_s_bits(bits: usize) -> usize {
    (bits & irq::VS_ALL) >> 1
}

impl GuestMode for SMode {
    fn name(&self) -> &'static str {
        "PMP (no H extension: guests in S-mode, RAM at GPA = HPA, PMP-bounded)"
    }

    fn load_envcfg(&self, _envcfg: usize) {
        // Nothing to switch: FWFT offers S-mode guests no envcfg feature.
    }

    fn load(&self, c: &SupervisorCsrs) {
        // SAFETY: these are the S-level CSRs the next mret hands to the guest (the
        // hypervisor itself never uses S-mode); PMP, loaded with the VM's activation,
        // bounds whatever the guest's satp maps. mip's S-level bits only raise
        // interrupts delegated to the guest.
        unsafe {
            csr::sstatus::write(c.sstatus);
            csr::sie::write(c.sie);
            csr::stvec::write(c.stvec);
            csr::sscratch::write(c.sscratch);
            csr::sepc::write(c.sepc);
            csr::scause::write(c.scause);
            csr::stval::write(c.stval);
            csr::satp::write(c.satp);
            csr::mip::clear_bits(irq::S_ALL & !to_s_bits(c.pending));
            csr::mip::set_bits(to_s_bits(c.pending));
            csr::scounteren::write(c.scounteren);
        }
    }

    fn save(&self, into: &mut SupervisorCsrs) {
        into.sstatus = csr::sstatus::read();
        into.sie = csr::sie::read();
        into.stvec = csr::stvec::read();
        into.sscratch = csr::sscratch::read();
        into.sepc = csr::sepc::read();
        into.scause = csr::scause::read();
        into.stval = csr::stval::read();
        into.satp = csr::satp::read();
        into.pending = self.pending();
        into.scounteren = csr::scounteren::read();
    }

    fn entry_mstatus(&self, ms: usize, user: bool) -> usize {
        if user {
            ms
        } else {
            ms | mstatus_bits::MPP_S
        }
    }

    fn trapped_from_guest(&self, ms: usize) -> bool {
        ms & mstatus_bits::MPP_MASK != mstatus_bits::MPP_M
    }

    fn pending(&self) -> usize {
        (csr::mip::read() & irq::S_ALL) << 1
    }

    fn raise(&self, bits: usize) {
        // SAFETY: mip's S-level bits only raise interrupts delegated to this hart's
        // guest (mideleg), never taken in M-mode.
        unsafe { csr::mip::set_bits(to_s_bits(bits)) };
    }

    fn lower(&self, bits: usize) {
        // SAFETY: as for `raise`.
        unsafe { csr::mip::clear_bits(to_s_bits(bits)) };
    }

    fn enabled(&self) -> usize {
        csr::sie::read()
    }

    fn translation(&self) -> (u64, u64) {
        (csr::satp::read() as u64, csr::sstatus::read() as u64)
    }

    fn inject_exception(&self, cause: usize, tval: usize) {
        let ms = csr::mstatus::read();
        let from_s = ms & mstatus_bits::MPP_MASK != 0;
        let ss = trap_entry_status(csr::sstatus::read(), from_s);
        // SAFETY: the guest resumes at its own stvec in S-mode with the trap recorded
        // in its S CSRs, exactly as a delegated trap would have left it.
        unsafe {
            csr::sepc::write(csr::mepc::read());
            csr::scause::write(cause);
            csr::stval::write(tval);
            csr::sstatus::write(ss);
            csr::mepc::write(csr::stvec::read() & !3);
            let ms = csr::mstatus::read();
            csr::mstatus::write((ms & !mstatus_bits::MPP_MASK) | mstatus_bits::MPP_S);
        }
    }

    fn flush_guest_tlb(&self) {
        diosix_riscv::fence::sfence_vma_all();
    }

    fn flush_guest_memory(&self) {
        diosix_riscv::fence::sfence_vma_all();
    }

    fn ecall_cause(&self) -> usize {
        9
    }
}

static MODE: Once<&'static dyn GuestMode> = Once::new();
/// The `henvcfg` bits every guest gets (STCE where guests have Sstc), below each
/// vCPU's own FWFT bits; set by the platform at boot.
static HOST_HENVCFG: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Sets the `henvcfg` bits every guest gets (the platform, once it knows them).
pub fn set_host_henvcfg(bits: usize) {
    HOST_HENVCFG.store(bits, Ordering::Relaxed);
}
static PMP: AtomicBool = AtomicBool::new(false);

/// The `hvip` bits a VS-mode guest's interrupts use: VSSIP, VSTIP and VSEIP, plus
/// LCOFI where the platform enables it in `hvien` (Ssaia), switched with the vCPU.
static VS_IRQS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(irq::VS_ALL);

/// Adds `bits` to the interrupts injected through `hvip` (the platform, at boot,
/// once `hvien` enables them on every hart).
pub fn add_vs_interrupts(bits: usize) {
    VS_IRQS.fetch_or(bits, Ordering::Relaxed);
}

/// The `hvip` bits that are a VS-mode guest's.
#[inline]
fn vs_irqs() -> usize {
    VS_IRQS.load(Ordering::Relaxed)
}

/// Chooses how guests run, once, at boot: VS-mode when every usable hart has H, else
/// the PMP fallback on all of them.
pub fn init(every_hart_has_h: bool) {
    MODE.call_once(|| {
        if every_hart_has_h {
            &VsMode
        } else {
            PMP.store(true, Ordering::Relaxed);
            &SMode
        }
    });
}

/// How guests run on this machine (VS-mode until [`init`] says otherwise).
#[inline]
pub fn mode() -> &'static dyn GuestMode {
    MODE.get().copied().unwrap_or(&VsMode)
}

/// Whether guests run in S-mode behind PMP (no H extension).
#[inline]
pub fn is_pmp() -> bool {
    PMP.load(Ordering::Relaxed)
}
