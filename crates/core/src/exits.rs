//! Why a vCPU left guest mode: every trap from a guest into the hypervisor, classified
//! by cause (and, for SBI calls, by extension), so the exits a workload costs can be
//! counted per vCPU and the expensive ones found.

use crate::sbi::Extension;
use diosix_abi::eid;

/// The cause of one exit from guest mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitCause {
    /// SBI TIME (and legacy set_timer).
    SbiTimer,
    /// SBI IPI (and the legacy IPI calls).
    SbiIpi,
    /// SBI RFENCE (and the legacy fences).
    SbiRfence,
    /// SBI HSM.
    SbiHsm,
    /// SBI DBCN (and the legacy console calls).
    SbiConsole,
    /// The Diosix extension.
    SbiDiosix,
    /// Any other SBI call (BASE, SRST, unknown extensions).
    SbiOther,
    /// The hart's M-mode timer: a vCPU's timer, its time slice, or a waiter's deadline.
    TimerInterrupt,
    /// A kick from another hart: an IPI for this vCPU, a fence request, a stop.
    SoftwareInterrupt,
    /// A host device's interrupt (machine external), on its way to the VM holding it.
    ExternalInterrupt,
    /// Any other interrupt.
    OtherInterrupt,
    /// A guest-page fault (copy-on-write, or a bad access).
    GuestPageFault,
    /// A virtual-instruction exception (WFI, or an instruction the guest may not run).
    VirtualInstruction,
    /// Any other exception.
    OtherException,
}

/// `mcause`'s interrupt bit on RV64.
const INTERRUPT: usize = 1 << 63;

impl ExitCause {
    /// How many causes there are (for counter arrays).
    pub const COUNT: usize = 14;

    /// Every cause, in `repr` order.
    pub const ALL: [ExitCause; Self::COUNT] = [
        Self::SbiTimer,
        Self::SbiIpi,
        Self::SbiRfence,
        Self::SbiHsm,
        Self::SbiConsole,
        Self::SbiDiosix,
        Self::SbiOther,
        Self::TimerInterrupt,
        Self::SoftwareInterrupt,
        Self::ExternalInterrupt,
        Self::OtherInterrupt,
        Self::GuestPageFault,
        Self::VirtualInstruction,
        Self::OtherException,
    ];

    /// Whether this cause is an SBI call (of any extension).
    pub const fn is_sbi_call(self) -> bool {
        self as usize <= Self::SbiOther as usize
    }

    /// Classifies a trap from a guest: `mcause` as read in M-mode, `a7` the guest's a7
    /// (the SBI extension, for an ecall).
    pub const fn classify(mcause: usize, a7: usize) -> Self {
        if mcause & INTERRUPT != 0 {
            return match mcause & !INTERRUPT {
                7 => Self::TimerInterrupt,
                3 => Self::SoftwareInterrupt,
                11 => Self::ExternalInterrupt,
                _ => Self::OtherInterrupt,
            };
        }
        match mcause {
            9 | 10 => Self::of_ecall(a7),
            20 | 21 | 23 => Self::GuestPageFault,
            22 => Self::VirtualInstruction,
            _ => Self::OtherException,
        }
    }

    /// Classifies an SBI call (an ecall from the guest's supervisor level) by its
    /// extension `eid` (the guest's a7).
    #[inline]
    pub const fn of_ecall(eid: usize) -> Self {
        match Extension::of(eid) {
            Some(ext) => Self::of_extension(ext),
            None => Self::SbiOther,
        }
    }

    /// Classifies an SBI call of extension `ext`.
    #[inline]
    pub const fn of_extension(ext: Extension) -> Self {
        match ext {
            Extension::Time | Extension::Legacy(eid::LEGACY_SET_TIMER) => Self::SbiTimer,
            Extension::Ipi | Extension::Legacy(eid::LEGACY_SEND_IPI | eid::LEGACY_CLEAR_IPI) => {
                Self::SbiIpi
            }
            Extension::Rfence
            | Extension::Legacy(
                eid::LEGACY_REMOTE_FENCE_I
                | eid::LEGACY_REMOTE_SFENCE_VMA
                | eid::LEGACY_REMOTE_SFENCE_VMA_ASID,
            ) => Self::SbiRfence,
            Extension::Dbcn
            | Extension::Legacy(eid::LEGACY_CONSOLE_PUTCHAR | eid::LEGACY_CONSOLE_GETCHAR) => {
                Self::SbiConsole
            }
            Extension::Hsm => Self::SbiHsm,
            Extension::Diosix => Self::SbiDiosix,
            _ => Self::SbiOther,
        }
    }

    /// [`of_extension`](Self::of_extension) for the calls that always answer their
    /// caller without leaving its hart or reading a register beyond a0-a7 (BASE, TIME,
    /// IPI, RFENCE, DBCN, PMU and the legacy calls but shutdown), which the trap's fast
    /// path completes; `None` for the rest (HSM stop and suspend, SRST, SUSP and the
    /// Diosix extension may switch vCPU; the others are rare).
    #[inline]
    pub const fn of_fast_call(ext: Extension) -> Option<Self> {
        match ext {
            Extension::Base
            | Extension::Time
            | Extension::Ipi
            | Extension::Rfence
            | Extension::Dbcn
            | Extension::Pmu => Some(Self::of_extension(ext)),
            Extension::Legacy(e) if e != eid::LEGACY_SHUTDOWN => Some(Self::of_extension(ext)),
            _ => None,
        }
    }

    /// A short name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SbiTimer => "sbi.time",
            Self::SbiIpi => "sbi.ipi",
            Self::SbiRfence => "sbi.rfence",
            Self::SbiHsm => "sbi.hsm",
            Self::SbiConsole => "sbi.console",
            Self::SbiDiosix => "sbi.diosix",
            Self::SbiOther => "sbi.other",
            Self::TimerInterrupt => "irq.timer",
            Self::SoftwareInterrupt => "irq.kick",
            Self::ExternalInterrupt => "irq.external",
            Self::OtherInterrupt => "irq.other",
            Self::GuestPageFault => "guest_page_fault",
            Self::VirtualInstruction => "virtual_instruction",
            Self::OtherException => "exception.other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecalls_are_classified_and_only_those_that_stay_are_fast() {
        use ExitCause::*;
        let cases = [
            (eid::BASE, SbiOther, true),
            (eid::TIME, SbiTimer, true),
            (eid::LEGACY_SET_TIMER, SbiTimer, true),
            (eid::IPI, SbiIpi, true),
            (eid::LEGACY_SEND_IPI, SbiIpi, true),
            (eid::LEGACY_CLEAR_IPI, SbiIpi, true),
            (eid::RFENCE, SbiRfence, true),
            (eid::LEGACY_REMOTE_FENCE_I, SbiRfence, true),
            (eid::LEGACY_REMOTE_SFENCE_VMA, SbiRfence, true),
            (eid::LEGACY_REMOTE_SFENCE_VMA_ASID, SbiRfence, true),
            (eid::DBCN, SbiConsole, true),
            (eid::LEGACY_CONSOLE_PUTCHAR, SbiConsole, true),
            (eid::LEGACY_CONSOLE_GETCHAR, SbiConsole, true),
            (eid::PMU, SbiOther, true),
            // What may leave the hart never takes the fast path.
            (eid::HSM, SbiHsm, false),
            (eid::DIOSIX, SbiDiosix, false),
            (eid::SRST, SbiOther, false),
            (eid::SUSP, SbiOther, false),
            (eid::LEGACY_SHUTDOWN, SbiOther, false),
            (eid::FWFT, SbiOther, false),
            (eid::STA, SbiOther, false),
            (eid::DBTR, SbiOther, false),
            (0x1234_5678, SbiOther, false),
        ];
        for (e, cause, fast) in cases {
            assert_eq!(ExitCause::of_ecall(e), cause, "eid {e:#x}");
            assert_eq!(
                Extension::of(e).and_then(ExitCause::of_fast_call),
                fast.then_some(cause),
                "eid {e:#x}"
            );
        }
    }

    #[test]
    fn all_lists_every_cause_in_repr_order() {
        for (i, c) in ExitCause::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn sbi_calls_are_the_ecall_causes() {
        for c in ExitCause::ALL {
            assert_eq!(c.is_sbi_call(), c.name().starts_with("sbi."), "{c:?}");
        }
    }

    #[test]
    fn traps_are_classified_by_cause_and_extension() {
        assert_eq!(
            ExitCause::classify(INTERRUPT | 7, 0),
            ExitCause::TimerInterrupt
        );
        assert_eq!(
            ExitCause::classify(INTERRUPT | 3, 0),
            ExitCause::SoftwareInterrupt
        );
        assert_eq!(
            ExitCause::classify(INTERRUPT | 11, 0),
            ExitCause::ExternalInterrupt
        );
        assert_eq!(
            ExitCause::classify(INTERRUPT | 9, 0),
            ExitCause::OtherInterrupt
        );
        assert_eq!(ExitCause::classify(10, eid::TIME), ExitCause::SbiTimer);
        assert_eq!(ExitCause::classify(10, 0), ExitCause::SbiTimer);
        assert_eq!(ExitCause::classify(10, eid::IPI), ExitCause::SbiIpi);
        assert_eq!(ExitCause::classify(10, eid::RFENCE), ExitCause::SbiRfence);
        assert_eq!(ExitCause::classify(10, eid::DIOSIX), ExitCause::SbiDiosix);
        assert_eq!(ExitCause::classify(10, 0xdead), ExitCause::SbiOther);
        assert_eq!(ExitCause::classify(23, 0), ExitCause::GuestPageFault);
        assert_eq!(ExitCause::classify(22, 0), ExitCause::VirtualInstruction);
        assert_eq!(ExitCause::classify(2, 0), ExitCause::OtherException);
    }
}
