//! The host PLIC (`riscv,plic0` / `sifive,plic-1.0.0`): the hypervisor's side of the
//! interrupts it routes to guests.
//!
//! The hypervisor takes every routed interrupt at a machine-mode context, claims it
//! there, and leaves it claimed (so the PLIC does not raise it again) until the guest
//! that owns it completes it on its virtual PLIC; the hypervisor then completes it here,
//! on the same context.

use diosix_addr::Hpa;

const PRIORITY_BASE: usize = 0x0;
const ENABLE_BASE: usize = 0x2000;
const ENABLE_STRIDE: usize = 0x80;
const CONTEXT_BASE: usize = 0x20_0000;
const CONTEXT_STRIDE: usize = 0x1000;
const THRESHOLD: usize = 0x0;
const CLAIM_COMPLETE: usize = 0x4;

/// A PLIC at a host physical address, with `sources` interrupt sources (`riscv,ndev`).
#[derive(Clone, Copy, Debug)]
pub struct Plic {
    base: usize,
    sources: u32,
    contexts: u32,
}

impl Plic {
    /// Wraps the PLIC at `base`, with sources 1..=`sources` and contexts
    /// 0..`contexts` (from the size of its register window).
    ///
    /// # Safety
    /// `base` must be the HPA of a PLIC found in the host device tree, with at least
    /// that many sources and contexts, and not reachable by guests.
    pub const unsafe fn new(base: Hpa, sources: u32, contexts: u32) -> Self {
        // M-mode runs untranslated, so the HPA is the register block's address.
        Self {
            base: base.raw() as usize,
            sources,
            contexts,
        }
    }

    /// Number of interrupt sources (`riscv,ndev`).
    pub fn sources(&self) -> u32 {
        self.sources
    }

    fn valid(&self, source: u32, context: u32) -> bool {
        source >= 1 && source <= self.sources && context < self.contexts
    }

    fn word(&self, offset: usize) -> *mut u32 {
        (self.base + offset) as *mut u32
    }

    /// Sets `source`'s priority (0 = never delivered).
    pub fn set_priority(&self, source: u32, priority: u32) {
        if source == 0 || source > self.sources {
            return;
        }
        // SAFETY: a priority register of an existing source (checked above) of the PLIC
        // the constructor's contract names.
        unsafe {
            core::ptr::write_volatile(self.word(PRIORITY_BASE + 4 * source as usize), priority)
        }
    }

    /// Enables or disables `source` for `context`.
    pub fn set_enabled(&self, source: u32, context: u32, on: bool) {
        if !self.valid(source, context) {
            return;
        }
        let reg =
            self.word(ENABLE_BASE + ENABLE_STRIDE * context as usize + 4 * (source as usize / 32));
        let bit = 1u32 << (source % 32);
        // SAFETY: an enable word of an existing source and context (checked above). The
        // read-modify-write races only with other writers of the same context's word,
        // which callers serialise (the hypervisor's route table lock).
        unsafe {
            let v = core::ptr::read_volatile(reg);
            core::ptr::write_volatile(reg, if on { v | bit } else { v & !bit });
        }
    }

    /// Sets `context`'s priority threshold (interrupts at or below it are masked).
    pub fn set_threshold(&self, context: u32, threshold: u32) {
        if context >= self.contexts {
            return;
        }
        // SAFETY: the threshold register of an existing context (checked above).
        unsafe {
            core::ptr::write_volatile(
                self.word(CONTEXT_BASE + CONTEXT_STRIDE * context as usize + THRESHOLD),
                threshold,
            )
        }
    }

    /// Claims the highest-priority pending interrupt of `context`; `None` if there is
    /// none (another context claimed it first, or it was withdrawn).
    pub fn claim(&self, context: u32) -> Option<u32> {
        if context >= self.contexts {
            return None;
        }
        // SAFETY: the claim register of an existing context (checked above).
        let id = unsafe {
            core::ptr::read_volatile(
                self.word(CONTEXT_BASE + CONTEXT_STRIDE * context as usize + CLAIM_COMPLETE),
            )
        };
        (id != 0).then_some(id)
    }

    /// Completes `source`, claimed earlier on `context`: the PLIC may raise it again.
    pub fn complete(&self, source: u32, context: u32) {
        if !self.valid(source, context) {
            return;
        }
        // SAFETY: the complete register of an existing context (checked above).
        unsafe {
            core::ptr::write_volatile(
                self.word(CONTEXT_BASE + CONTEXT_STRIDE * context as usize + CLAIM_COMPLETE),
                source,
            )
        }
    }
}
