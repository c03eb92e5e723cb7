//! The hypervisor side of the SBI: performs what `diosix_core::sbi::dispatch` decided,
//! for the vCPU running on this hart. One file per extension's trait
//! (`diosix_core::sbi::env`); this one holds the ecall entry, the call in progress and
//! the Base and Diosix extensions.

mod console;
mod dbtr;
mod hsm;
mod interrupts;
mod legacy;
mod pmu;
mod reset;
mod sta;

use crate::hart::HartLocal;
use crate::sched;
use crate::vcpu::{Vcpu, Wait};
use diosix_abi::SbiError;
use diosix_core::addr::{Gpa, Range};
use diosix_core::gstage::Perms;
use diosix_core::sbi::{
    self, Base, Caller, DiosixExtension, FirmwareFeatures, FwftFeature, FwftState, Reply, SbiRet,
};
use diosix_riscv::csr;
use diosix_riscv::trap::reg;

/// Most console bytes moved per DBCN call; the spec lets us return a short count.
const CONSOLE_CHUNK: u64 = 4096;

/// The SBI arguments of an ecall, a0..a7, from the caller's saved registers.
#[inline(always)]
pub fn ecall_args(r: &[u64; 32]) -> [usize; 8] {
    [
        r[reg::A0] as usize,
        r[reg::A0 + 1] as usize,
        r[reg::A0 + 2] as usize,
        r[reg::A0 + 3] as usize,
        r[reg::A0 + 4] as usize,
        r[reg::A0 + 5] as usize,
        r[reg::A6] as usize,
        r[reg::A7] as usize,
    ]
}

/// Handles an `ecall` from the guest's supervisor level on this hart.
pub fn handle_ecall(hart: &mut HartLocal) {
    let regs = ecall_args(hart.guest_regs());
    let mut call = Call {
        hart,
        block: None,
        again: false,
    };
    let reply = sbi::dispatch(&mut call, regs);
    finish(call, reply);
}

/// Completes an ecall of extension `ext` (already decoded from `regs`' a7) on the
/// trap's fast path if `ext` is one it takes
/// ([`diosix_core::exits::ExitCause::of_fast_call`]): returns non-zero when done, 0
/// (nothing touched) for the slow path.
///
/// Each extension has its own out-of-line handler, so a call pays the registers and
/// stack frame of its own extension's code only, not those of the largest one.
#[inline(always)]
pub fn fast_ecall(ext: sbi::Extension, regs: [usize; 8]) -> usize {
    use sbi::Extension as E;
    /// One handler per extension: [`fast_ecall_of`] with `ext` a constant there.
    macro_rules! handlers {
        ($($name:ident => $ext:expr;)*) => {
            $(
                // Eight scalars rather than an array: they stay in the argument
                // registers, so the call below is a jump.
                #[inline(never)]
                #[allow(clippy::too_many_arguments)]
                fn $name(
                    a0: usize,
                    a1: usize,
                    a2: usize,
                    a3: usize,
                    a4: usize,
                    a5: usize,
                    a6: usize,
                    a7: usize,
                ) -> usize {
                    fast_ecall_of($ext(a7), [a0, a1, a2, a3, a4, a5, a6, a7])
                }
            )*
        };
    }
    handlers! {
        base => |_| E::Base;
        time => |_| E::Time;
        ipi => |_| E::Ipi;
        rfence => |_| E::Rfence;
        dbcn => |_| E::Dbcn;
        pmu => |_| E::Pmu;
        legacy => E::Legacy;
    }
    let handler = match ext {
        E::Base => base,
        E::Time => time,
        E::Ipi => ipi,
        E::Rfence => rfence,
        E::Dbcn => dbcn,
        E::Pmu => pmu,
        E::Legacy(_) => legacy,
        _ => return 0,
    };
    let [a0, a1, a2, a3, a4, a5, a6, a7] = regs;
    handler(a0, a1, a2, a3, a4, a5, a6, a7)
}

/// [`fast_ecall`] for one extension: counts the exit, dispatches, answers.
#[inline(always)]
fn fast_ecall_of(ext: sbi::Extension, regs: [usize; 8]) -> usize {
    let Some(cause) = diosix_core::exits::ExitCause::of_fast_call(ext) else {
        return 0;
    };
    // SAFETY: taken once per trap; the slow handler is not entered if this one acts.
    let hart = unsafe { crate::hart::this_hart() };
    let Some(v) = hart.current.as_ref() else {
        return 0;
    };
    v.shared.count_exit(cause);
    let mut call = Call {
        hart,
        block: None,
        again: false,
    };
    let reply = sbi::dispatch_to(&mut call, ext, regs);
    finish(call, reply);
    1
}

/// Answers the call (its reply in a0/a1, the caller's PC past its ecall) or leaves it
/// to be issued again, and switches away if it blocks its caller.
#[inline(always)]
fn finish(call: Call<'_>, reply: Reply) {
    let Call { hart, block, again } = call;
    if again {
        // Not carried out: the vCPU leaves with its PC still on the ecall, which it
        // issues again when next scheduled.
        sched::switch_away(hart, Wait::None);
        return;
    }
    let r = hart.guest_regs();
    match reply {
        Reply::Sbi(SbiRet { error, value }) => {
            r[reg::A0] = error as u64;
            r[reg::A1] = value as u64;
        }
        Reply::Legacy(v) => r[reg::A0] = v as u64,
    }
    // SAFETY: resumes the guest after its 4-byte ecall (an address: wraps like the PC).
    unsafe { csr::mepc::write(csr::mepc::read().wrapping_add(4)) };
    if let Some(wait) = block {
        sched::switch_away(hart, wait);
    }
}

/// One SBI call in progress.
struct Call<'a> {
    hart: &'a mut HartLocal,
    /// Set when the caller must stop running once its reply is written.
    block: Option<Wait>,
    /// Set when the call was not carried out and must be issued again (no reply).
    again: bool,
}

impl Call<'_> {
    fn vcpu(&self) -> &Vcpu {
        self.hart
            .current
            .as_ref()
            .expect("ecall from a running vCPU")
    }

    fn vcpu_mut(&mut self) -> &mut Vcpu {
        self.hart
            .current
            .as_mut()
            .expect("ecall from a running vCPU")
    }

    /// True when `gpa` is guest RAM the caller may execute.
    fn executable(&self, gpa: Gpa) -> bool {
        let vm = &self.vcpu().vm;
        vm.ram.contains(gpa)
            && gpa.is_aligned(2)
            && vm.translate(gpa).is_some_and(|(_, p)| p.contains(Perms::X))
    }

    /// Checks a console buffer lies in the caller's RAM (the whole of it, so a huge or
    /// wrapping length is refused rather than truncated).
    fn console_buffer(&self, gpa: Gpa, len: u64) -> Result<u64, SbiError> {
        if len == 0 {
            return Ok(0);
        }
        let ram = self.vcpu().vm.ram;
        if Range::new(gpa, len).is_none() || !ram.contains_span(gpa, len) {
            return Err(SbiError::InvalidParam);
        }
        Ok(len.min(CONSOLE_CHUNK))
    }
}

fn version_number() -> usize {
    let (a, b, c) = crate::version_parts();
    ((a << 16) | (b << 8) | c) as usize
}

impl Caller for Call<'_> {
    fn vcpu_count(&self) -> usize {
        self.vcpu().vm.vcpu_count()
    }

    fn this_hart(&self) -> usize {
        self.vcpu().shared.index
    }
}

impl Base for Call<'_> {
    fn impl_version(&self) -> usize {
        version_number()
    }

    fn machine_ids(&self) -> (usize, usize, usize) {
        (csr::id::mvendorid(), csr::id::marchid(), csr::id::mimpid())
    }
}

impl FirmwareFeatures for Call<'_> {
    fn fwft_supported(&self, f: FwftFeature) -> bool {
        match f {
            // Always delegated (both guest modes): only the value 1 is accepted.
            FwftFeature::MisalignedExcDeleg => true,
            FwftFeature::PteAdHwUpdating => crate::platform::guest_svadu(),
        }
    }

    fn fwft_state(&self) -> FwftState {
        self.vcpu().ctx.fwft
    }

    fn fwft_apply(&mut self, state: FwftState) {
        let v = self.vcpu_mut();
        v.ctx.fwft = state;
        v.ctx.csrs.envcfg = if state.value(FwftFeature::PteAdHwUpdating) == 1 {
            diosix_riscv::csr::envcfg::ADUE
        } else {
            0
        };
        // The vCPU runs on this hart: in force from its next instruction.
        crate::guestmode::mode().load_envcfg(v.ctx.csrs.envcfg);
    }
}

impl DiosixExtension for Call<'_> {
    fn diosix_call(&mut self, fid: usize, args: [usize; 6]) -> SbiRet {
        match crate::vmtree::call(self.hart, fid, args) {
            crate::vmtree::Outcome::Done(ret, leave) => {
                self.block = leave;
                ret
            }
            crate::vmtree::Outcome::Again => {
                self.again = true;
                SbiRet::error(SbiError::Failed)
            }
        }
    }
}
