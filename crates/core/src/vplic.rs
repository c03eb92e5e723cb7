//! A virtual PLIC (`riscv,plic0` / `sifive,plic-1.0.0`): one per VM.
//!
//! A guest drives it with its stock PLIC driver through trapped MMIO: the hypervisor
//! hands every access inside the VM's PLIC window to [`VirtualPlic::read`] or
//! [`VirtualPlic::write`], and calls [`VirtualPlic::raise`] when a host interrupt routed
//! to the VM arrives. The host source stays claimed at the host PLIC until the guest
//! completes it here ([`VirtualPlic::write`] then returns `Some(source)`), so each raise
//! is one assertion of a level-triggered line.
//!
//! Register map (offsets from the window base), as on the hardware:
//!
//! | offset                    | register                                          |
//! |---------------------------|---------------------------------------------------|
//! | `4 * s`                   | priority of source `s` (`1..=ndev`), WARL 0..=7   |
//! | `0x1000 + 4 * w`          | pending bits of sources `32w..32w+31` (read-only) |
//! | `0x2000 + 0x80 * c + 4 * w` | enable bits of sources `32w..32w+31` for context `c` |
//! | `0x20_0000 + 0x1000 * c`  | priority threshold of context `c`, WARL 0..=7     |
//! | `0x20_0004 + 0x1000 * c`  | claim (read) / complete (write) of context `c`    |
//!
//! Context `c` is the S-mode external interrupt of the VM's vCPU `c`. Every other
//! offset inside the window is reserved: it reads 0 and ignores writes, and the access
//! is counted in [`VirtualPlic::reserved_accesses`].
//!
//! One deliberate difference from the PLIC specification: a claim honours the
//! context's threshold (it only returns a source whose priority is above it), so that
//! [`VirtualPlic::line`] is exactly "a claim would return a source". The specification
//! lets a claim ignore the threshold; Linux never claims with its line deasserted, so it
//! cannot tell the difference.
//!
//! A source's life: idle → pending ([`VirtualPlic::raise`]) → claimed (a read of some
//! context's claim register) → idle (a write of its ID to the claim/complete register
//! of a context that has it enabled). A source raised again while claimed gets its
//! pending bit set at once, but is not deliverable until it is completed: it is then
//! delivered once more, exactly as a level line still asserted at completion would be.
//! Raises of a source that is already pending coalesce.

use alloc::vec;
use alloc::vec::Vec;

/// Highest source count a PLIC can have (`riscv,ndev`): sources are `1..=1023`.
pub const MAX_SOURCES: u32 = 1023;
/// Highest priority (and threshold): both registers keep only their low 3 bits.
pub const PRIORITY_MAX: u32 = 7;
/// Most contexts a virtual PLIC can have: one per vCPU, and a VM has at most this many.
pub const MAX_CONTEXTS: u32 = diosix_abi::limits::MAX_VCPUS;
/// Size of the largest window (for [`MAX_CONTEXTS`] contexts).
pub const MAX_WINDOW_SIZE: u64 = window_size(MAX_CONTEXTS);

const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
const THRESHOLD: u64 = 0x0;
const CLAIM_COMPLETE: u64 = 0x4;
const PAGE: u64 = 4096;

/// Size in bytes of the register window of a PLIC with `contexts` contexts:
/// `0x20_0000 + 0x1000 * contexts`, rounded up to 4 KiB.
pub const fn window_size(contexts: u32) -> u64 {
    // At most 0x20_0000 + 0x1000 * u32::MAX < 2^45: no overflow.
    let end = CONTEXT_BASE + CONTEXT_STRIDE * contexts as u64;
    (end + (PAGE - 1)) & !(PAGE - 1)
}

/// Why a virtual PLIC could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VplicError {
    /// The source count is 0 or above [`MAX_SOURCES`].
    BadSourceCount(u32),
    /// The context count is 0 or above [`MAX_CONTEXTS`].
    BadContextCount(u32),
}

/// Why an MMIO access to the window was refused; the hypervisor reflects it to the
/// guest as an access fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VplicFault {
    /// Not a naturally aligned 4-byte access: the PLIC only has 32-bit registers.
    BadAccess,
    /// The offset is at or beyond [`VirtualPlic::window_size`].
    OutsideWindow,
}

/// What an in-window, well-formed access names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Priority(u32),
    Pending(usize),
    Enable(u32, usize),
    Threshold(u32),
    ClaimComplete(u32),
    Reserved,
}

/// The virtual PLIC of one VM. Cloning it copies every register and all interrupt
/// state (FORK and REBOOT snapshots).
#[derive(Clone, Debug)]
pub struct VirtualPlic {
    ndev: u32,
    contexts: u32,
    /// 32-bit bitmap words per source bitmap: sources `0..=ndev`.
    words: usize,
    /// Priority per source, index = source ID; index 0 stays 0.
    priority: Vec<u8>,
    /// Pending bitmap (bit 0 always clear).
    pending: Vec<u32>,
    /// In-service (claimed, not yet completed) bitmap.
    claimed: Vec<u32>,
    /// Enable bitmaps, `words` per context.
    enable: Vec<u32>,
    /// Threshold per context.
    threshold: Vec<u8>,
    /// Line level per context as last reported by `take_line_changes`.
    reported: Vec<u64>,
    /// Some state changed since the last `take_line_changes`.
    dirty: bool,
    /// The next `take_line_changes` reports every context.
    report_all: bool,
    reserved_accesses: u64,
}

impl VirtualPlic {
    /// A PLIC with sources `1..=ndev` and contexts `0..contexts`, everything zero: no
    /// priority, nothing enabled, nothing pending, thresholds 0, every line low.
    pub fn new(ndev: u32, contexts: u32) -> Result<Self, VplicError> {
        if ndev == 0 || ndev > MAX_SOURCES {
            return Err(VplicError::BadSourceCount(ndev));
        }
        if contexts == 0 || contexts > MAX_CONTEXTS {
            return Err(VplicError::BadContextCount(contexts));
        }
        // ndev <= 1023 and contexts <= 4096: these products are small.
        let words = ndev as usize / 32 + 1;
        let ctx = contexts as usize;
        Ok(Self {
            ndev,
            contexts,
            words,
            priority: vec![0; ndev as usize + 1],
            pending: vec![0; words],
            claimed: vec![0; words],
            enable: vec![0; words * ctx],
            threshold: vec![0; ctx],
            reported: vec![0; ctx.div_ceil(64)],
            dirty: false,
            report_all: false,
            reserved_accesses: 0,
        })
    }

    /// Number of sources (`riscv,ndev`): sources are `1..=ndev()`.
    pub fn ndev(&self) -> u32 {
        self.ndev
    }

    /// Number of contexts (one per vCPU).
    pub fn contexts(&self) -> u32 {
        self.contexts
    }

    /// Size in bytes of this PLIC's register window ([`window_size`] of its contexts).
    pub fn window_size(&self) -> u64 {
        window_size(self.contexts)
    }

    /// How many well-formed accesses hit no register (reads gave 0, writes were
    /// dropped) since creation. Saturates.
    pub fn reserved_accesses(&self) -> u64 {
        self.reserved_accesses
    }

    // ------------------------------------------------------------ bitmaps

    fn valid_source(&self, source: u32) -> bool {
        source >= 1 && source <= self.ndev
    }

    fn bit(source: u32) -> (usize, u32) {
        ((source / 32) as usize, 1u32 << (source % 32))
    }

    fn test(map: &[u32], source: u32) -> bool {
        let (w, m) = Self::bit(source);
        map.get(w).is_some_and(|word| word & m != 0)
    }

    fn assign(map: &mut [u32], source: u32, on: bool) {
        let (w, m) = Self::bit(source);
        if let Some(word) = map.get_mut(w) {
            if on {
                *word |= m;
            } else {
                *word &= !m;
            }
        }
    }

    /// The bits of word `w` that name real sources (`1..=ndev`).
    fn word_mask(&self, w: usize) -> u32 {
        let first = (w as u64) * 32;
        let mut mask = 0u32;
        for b in 0..32u64 {
            let s = first + b;
            if s >= 1 && s <= u64::from(self.ndev) {
                mask |= 1 << b;
            }
        }
        mask
    }

    fn enable_words(&self, context: u32) -> &[u32] {
        let start = (context as usize).saturating_mul(self.words);
        let end = start.saturating_add(self.words);
        self.enable.get(start..end).unwrap_or(&[])
    }

    fn enabled(&self, context: u32, source: u32) -> bool {
        Self::test(self.enable_words(context), source)
    }

    /// The source a claim on `context` would return, or 0.
    fn best(&self, context: u32) -> u32 {
        let Some(&threshold) = self.threshold.get(context as usize) else {
            return 0;
        };
        let enable = self.enable_words(context);
        let mut best = 0u32;
        let mut best_priority = 0u8;
        for (w, ((&p, &c), &e)) in self
            .pending
            .iter()
            .zip(self.claimed.iter())
            .zip(enable.iter())
            .enumerate()
        {
            let mut bits = p & !c & e;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                // w < 32 and b < 32: fits.
                let source = (w as u32) * 32 + b;
                let priority = self.priority.get(source as usize).copied().unwrap_or(0);
                // Strictly greater: of equal priorities the lowest ID (seen first) wins.
                if priority > threshold && priority > best_priority {
                    best = source;
                    best_priority = priority;
                }
            }
        }
        best
    }

    // ------------------------------------------------------------ interrupt side

    /// Asserts `source` (a host interrupt routed to the VM, or a software-raised one):
    /// sets its pending bit. Returns true if that changed anything.
    ///
    /// Already pending: coalesced, returns false. Claimed (in service) and not pending:
    /// the pending bit is set, but the source is not deliverable until the guest
    /// completes it; it is then delivered once more, as a level line still asserted at
    /// completion would be. A source outside `1..=ndev` is ignored (false).
    pub fn raise(&mut self, source: u32) -> bool {
        if !self.valid_source(source) || Self::test(&self.pending, source) {
            return false;
        }
        Self::assign(&mut self.pending, source, true);
        self.dirty = true;
        true
    }

    /// Deasserts `source`: clears its pending bit (a route was removed). A claim in
    /// progress is not affected: the guest still completes it. Out of range: ignored.
    pub fn lower(&mut self, source: u32) {
        if self.valid_source(source) && Self::test(&self.pending, source) {
            Self::assign(&mut self.pending, source, false);
            self.dirty = true;
        }
    }

    /// Forgets everything about `source`'s current interrupt: clears pending and
    /// claimed (a route removed while the guest holds it claimed; the hypervisor
    /// completes the host side itself). A later completion by the guest is ignored.
    pub fn reset_source(&mut self, source: u32) {
        if !self.valid_source(source) {
            return;
        }
        if Self::test(&self.pending, source) || Self::test(&self.claimed, source) {
            Self::assign(&mut self.pending, source, false);
            Self::assign(&mut self.claimed, source, false);
            self.dirty = true;
        }
    }

    /// `context`'s enable bits, 32 sources a word (bit *b* of word *w* is source
    /// 32*w* + *b*); empty for a context out of range.
    pub fn enables(&self, context: u32) -> &[u32] {
        if context < self.contexts {
            self.enable_words(context)
        } else {
            &[]
        }
    }

    /// True when `context` has `source` enabled (false for either out of range).
    pub fn is_enabled(&self, context: u32, source: u32) -> bool {
        self.valid_source(source) && context < self.contexts && self.enabled(context, source)
    }

    /// Whether raising `source` could reach any context now: it has a non-zero priority
    /// and some context enables it. While it cannot, raising or lowering it changes no
    /// line (the guest's later enabling does, and is evaluated then).
    pub fn deliverable(&self, source: u32) -> bool {
        self.valid_source(source)
            && self.priority.get(source as usize).is_some_and(|&p| p > 0)
            && (0..self.contexts).any(|c| self.enabled(c, source))
    }

    /// True when `source` is pending (raised and not yet claimed, or raised again
    /// while claimed).
    pub fn is_pending(&self, source: u32) -> bool {
        self.valid_source(source) && Self::test(&self.pending, source)
    }

    /// True when `source` is claimed by the guest and not yet completed.
    pub fn is_claimed(&self, source: u32) -> bool {
        self.valid_source(source) && Self::test(&self.claimed, source)
    }

    /// The sources the guest has claimed and not completed, in increasing order (on
    /// the VM's death or a route's removal the hypervisor completes them at the host).
    pub fn claimed_sources(&self) -> impl Iterator<Item = u32> + '_ {
        self.claimed.iter().enumerate().flat_map(|(w, &word)| {
            (0..32u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| (w as u32) * 32 + b)
        })
    }

    /// Whether the external interrupt line of `context` is asserted: some source is
    /// pending, enabled for it, not claimed, with a priority above its threshold (so a
    /// claim would return non-zero). False for a context that does not exist.
    pub fn line(&self, context: u32) -> bool {
        self.best(context) != 0
    }

    /// Reports, through `out(context, level)`, every context whose line level changed
    /// since the previous call (or every context, after
    /// [`resync_lines`](Self::resync_lines)). The hypervisor sets or clears
    /// `hvip.VSEIP` of the matching vCPU. Contexts are reported in increasing order.
    pub fn take_line_changes(&mut self, mut out: impl FnMut(u32, bool)) {
        if !self.dirty && !self.report_all {
            return;
        }
        for context in 0..self.contexts {
            let level = self.line(context);
            let (w, m) = ((context / 64) as usize, 1u64 << (context % 64));
            let Some(word) = self.reported.get_mut(w) else {
                continue;
            };
            let previous = *word & m != 0;
            if level != previous || self.report_all {
                if level {
                    *word |= m;
                } else {
                    *word &= !m;
                }
                out(context, level);
            }
        }
        self.dirty = false;
        self.report_all = false;
    }

    /// Makes the next [`take_line_changes`](Self::take_line_changes) report every
    /// context's level, changed or not (for a restored snapshot whose vCPUs' `VSEIP`
    /// is in an unknown state).
    pub fn resync_lines(&mut self) {
        self.report_all = true;
    }

    // ------------------------------------------------------------ guest side

    /// Claims on `context`: the highest-priority source that is pending, enabled for
    /// it, not claimed, with priority above its threshold (ties: lowest ID). Clears its
    /// pending bit and marks it claimed. 0 if there is none (or no such context).
    pub fn claim(&mut self, context: u32) -> u32 {
        let source = self.best(context);
        if source != 0 {
            Self::assign(&mut self.pending, source, false);
            Self::assign(&mut self.claimed, source, true);
            self.dirty = true;
        }
        source
    }

    /// Completes `source` on `context`: if it is claimed and enabled for `context`, it
    /// stops being claimed and `Some(source)` is returned (the hypervisor completes the
    /// host interrupt). Anything else is silently ignored (`None`), as the hardware
    /// does.
    pub fn complete(&mut self, context: u32, source: u32) -> Option<u32> {
        if !self.valid_source(source)
            || !Self::test(&self.claimed, source)
            || !self.enabled(context, source)
        {
            return None;
        }
        Self::assign(&mut self.claimed, source, false);
        self.dirty = true;
        Some(source)
    }

    fn decode(&self, offset: u64, width: u32) -> Result<Reg, VplicFault> {
        if width != 4 || !offset.is_multiple_of(4) {
            return Err(VplicFault::BadAccess);
        }
        if offset >= self.window_size() {
            return Err(VplicFault::OutsideWindow);
        }
        // From here offset < MAX_WINDOW_SIZE (< 2^25): the casts below are lossless.
        let reg = if offset < PENDING_BASE {
            let source = (offset / 4) as u32;
            if self.valid_source(source) {
                Reg::Priority(source)
            } else {
                Reg::Reserved
            }
        } else if offset < ENABLE_BASE {
            let w = ((offset - PENDING_BASE) / 4) as usize;
            if w < self.words {
                Reg::Pending(w)
            } else {
                Reg::Reserved
            }
        } else if offset < CONTEXT_BASE {
            let rel = offset - ENABLE_BASE;
            let context = rel / ENABLE_STRIDE;
            let w = ((rel % ENABLE_STRIDE) / 4) as usize;
            if context < u64::from(self.contexts) && w < self.words {
                Reg::Enable(context as u32, w)
            } else {
                Reg::Reserved
            }
        } else {
            let rel = offset - CONTEXT_BASE;
            let context = rel / CONTEXT_STRIDE;
            if context >= u64::from(self.contexts) {
                Reg::Reserved
            } else {
                match rel % CONTEXT_STRIDE {
                    THRESHOLD => Reg::Threshold(context as u32),
                    CLAIM_COMPLETE => Reg::ClaimComplete(context as u32),
                    _ => Reg::Reserved,
                }
            }
        };
        Ok(reg)
    }

    /// A guest read of `width` bytes at `offset` from the window base. Only naturally
    /// aligned 4-byte reads are accepted. A read of a claim/complete register claims
    /// (see [`claim`](Self::claim)).
    pub fn read(&mut self, offset: u64, width: u32) -> Result<u32, VplicFault> {
        let value = match self.decode(offset, width)? {
            Reg::Priority(s) => self.priority.get(s as usize).copied().map_or(0, u32::from),
            Reg::Pending(w) => self.pending.get(w).copied().unwrap_or(0),
            Reg::Enable(c, w) => self.enable_words(c).get(w).copied().unwrap_or(0),
            Reg::Threshold(c) => self.threshold.get(c as usize).copied().map_or(0, u32::from),
            Reg::ClaimComplete(c) => self.claim(c),
            Reg::Reserved => {
                self.reserved_accesses = self.reserved_accesses.saturating_add(1);
                0
            }
        };
        Ok(value)
    }

    /// A guest write of `width` bytes of `value` at `offset` from the window base.
    /// Only naturally aligned 4-byte writes are accepted. Returns `Some(source)` when
    /// the write completed `source` (the hypervisor then completes the host interrupt),
    /// `None` otherwise. Writes to the pending bits are ignored; priorities and
    /// thresholds keep their low 3 bits; enable bits of source 0 and of sources above
    /// `ndev` stay 0.
    pub fn write(
        &mut self,
        offset: u64,
        width: u32,
        value: u32,
    ) -> Result<Option<u32>, VplicFault> {
        match self.decode(offset, width)? {
            Reg::Priority(s) => {
                if let Some(p) = self.priority.get_mut(s as usize) {
                    // Masked to 3 bits: fits in u8.
                    *p = (value & PRIORITY_MAX) as u8;
                    self.dirty = true;
                }
            }
            Reg::Pending(_) => {}
            Reg::Enable(c, w) => {
                let masked = value & self.word_mask(w);
                let index = (c as usize).saturating_mul(self.words).saturating_add(w);
                if let Some(word) = self.enable.get_mut(index) {
                    *word = masked;
                    self.dirty = true;
                }
            }
            Reg::Threshold(c) => {
                if let Some(t) = self.threshold.get_mut(c as usize) {
                    *t = (value & PRIORITY_MAX) as u8;
                    self.dirty = true;
                }
            }
            Reg::ClaimComplete(c) => return Ok(self.complete(c, value)),
            Reg::Reserved => {
                self.reserved_accesses = self.reserved_accesses.saturating_add(1);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    fn prio(s: u32) -> u64 {
        4 * u64::from(s)
    }
    fn pend(w: u32) -> u64 {
        0x1000 + 4 * u64::from(w)
    }
    fn en(c: u32, w: u32) -> u64 {
        0x2000 + 0x80 * u64::from(c) + 4 * u64::from(w)
    }
    fn thr(c: u32) -> u64 {
        0x20_0000 + 0x1000 * u64::from(c)
    }
    fn cc(c: u32) -> u64 {
        thr(c) + 4
    }

    /// A PLIC where sources `1..=ndev` have priority 1 and are enabled on context 0.
    fn ready(ndev: u32, contexts: u32) -> VirtualPlic {
        let mut p = VirtualPlic::new(ndev, contexts).unwrap();
        for s in 1..=ndev {
            p.write(prio(s), 4, 1).unwrap();
        }
        for w in 0..=ndev / 32 {
            p.write(en(0, w), 4, u32::MAX).unwrap();
        }
        p
    }

    fn lines(p: &mut VirtualPlic) -> Vec<(u32, bool)> {
        let mut v = Vec::new();
        p.take_line_changes(|c, l| v.push((c, l)));
        v
    }

    #[test]
    fn construction_limits() {
        assert_eq!(
            VirtualPlic::new(0, 1).unwrap_err(),
            VplicError::BadSourceCount(0)
        );
        assert_eq!(
            VirtualPlic::new(1024, 1).unwrap_err(),
            VplicError::BadSourceCount(1024)
        );
        assert_eq!(
            VirtualPlic::new(1, 0).unwrap_err(),
            VplicError::BadContextCount(0)
        );
        assert_eq!(
            VirtualPlic::new(1, 4097).unwrap_err(),
            VplicError::BadContextCount(4097)
        );
        let p = VirtualPlic::new(MAX_SOURCES, MAX_CONTEXTS).unwrap();
        assert_eq!((p.ndev(), p.contexts()), (1023, 4096));
        assert_eq!(p.window_size(), MAX_WINDOW_SIZE);
        assert_eq!(MAX_WINDOW_SIZE, 0x120_0000);
    }

    #[test]
    fn window_sizes() {
        assert_eq!(window_size(1), 0x20_1000);
        assert_eq!(window_size(2), 0x20_2000);
        assert_eq!(window_size(0), 0x20_0000);
        assert_eq!(window_size(u32::MAX) % 4096, 0);
    }

    #[test]
    fn only_aligned_words_in_the_window() {
        let mut p = VirtualPlic::new(31, 2).unwrap();
        for w in [0, 1, 2, 3, 8] {
            assert_eq!(p.read(prio(1), w), Err(VplicFault::BadAccess));
            assert_eq!(p.write(prio(1), w, 7), Err(VplicFault::BadAccess));
        }
        for off in [1, 2, 3, 0x20_0006, u64::MAX] {
            assert_eq!(p.read(off, 4), Err(VplicFault::BadAccess));
        }
        let end = p.window_size();
        assert_eq!(end, 0x20_2000);
        for off in [end, end + 4, u64::MAX - 3, 0x120_0000] {
            assert_eq!(p.read(off, 4), Err(VplicFault::OutsideWindow));
            assert_eq!(p.write(off, 4, 1), Err(VplicFault::OutsideWindow));
        }
        assert_eq!(p.read(end - 4, 4), Ok(0));
        assert_eq!(p.read(prio(1), 4), Ok(0));
        assert_eq!(p.reserved_accesses(), 1);
    }

    #[test]
    fn priorities_are_warl_three_bits() {
        let mut p = VirtualPlic::new(40, 1).unwrap();
        assert_eq!(p.write(prio(3), 4, 0xffff_fffd), Ok(None));
        assert_eq!(p.read(prio(3), 4), Ok(5));
        assert_eq!(p.write(prio(40), 4, 8), Ok(None));
        assert_eq!(p.read(prio(40), 4), Ok(0));
        assert_eq!(p.write(thr(0), 4, 0xf), Ok(None));
        assert_eq!(p.read(thr(0), 4), Ok(7));
        assert_eq!(p.reserved_accesses(), 0);
    }

    #[test]
    fn reserved_offsets_read_zero_and_count() {
        let mut p = VirtualPlic::new(40, 2).unwrap();
        let reserved = [
            prio(0),
            prio(41),
            prio(1023),
            pend(2),
            pend(31),
            0x1ffc,
            en(0, 2),
            en(1, 31),
            en(2, 0),
            en(4095, 0),
            0x1f_fffc,
            thr(0) + 8,
            thr(1) + 0xffc,
        ];
        for (i, &off) in reserved.iter().enumerate() {
            assert_eq!(p.write(off, 4, u32::MAX), Ok(None), "{off:#x}");
            assert_eq!(p.read(off, 4), Ok(0), "{off:#x}");
            assert_eq!(p.reserved_accesses(), 2 * (i as u64 + 1));
        }
        // Nothing leaked into a real register.
        for s in 1..=40 {
            assert_eq!(p.read(prio(s), 4), Ok(0));
        }
        for c in 0..2 {
            for w in 0..2 {
                assert_eq!(p.read(en(c, w), 4), Ok(0));
            }
            assert_eq!(p.read(thr(c), 4), Ok(0));
        }
    }

    #[test]
    fn enable_bits_of_source_zero_and_beyond_ndev_are_zero() {
        let mut p = VirtualPlic::new(40, 2).unwrap();
        p.write(en(1, 0), 4, u32::MAX).unwrap();
        p.write(en(1, 1), 4, u32::MAX).unwrap();
        assert_eq!(p.read(en(1, 0), 4), Ok(0xffff_fffe));
        assert_eq!(p.read(en(1, 1), 4), Ok(0x1ff)); // sources 32..=40
        assert_eq!(p.read(en(0, 0), 4), Ok(0));
        let mut q = VirtualPlic::new(MAX_SOURCES, 1).unwrap();
        q.write(en(0, 31), 4, u32::MAX).unwrap();
        assert_eq!(q.read(en(0, 31), 4), Ok(u32::MAX)); // 992..=1023
    }

    #[test]
    fn pending_is_read_only_and_shows_raises() {
        let mut p = VirtualPlic::new(40, 1).unwrap();
        assert!(p.raise(33));
        assert!(p.raise(1));
        assert_eq!(p.write(pend(0), 4, 0), Ok(None));
        assert_eq!(p.write(pend(1), 4, u32::MAX), Ok(None));
        assert_eq!(p.read(pend(0), 4), Ok(0b10));
        assert_eq!(p.read(pend(1), 4), Ok(0b10));
        assert_eq!(p.reserved_accesses(), 0);
        // Out of range sources cannot be raised.
        assert!(!p.raise(0));
        assert!(!p.raise(41));
        assert!(!p.raise(u32::MAX));
        assert!(!p.is_pending(0));
    }

    #[test]
    fn claim_picks_highest_priority_then_lowest_id() {
        let mut p = ready(64, 1);
        p.write(prio(10), 4, 3).unwrap();
        p.write(prio(5), 4, 3).unwrap();
        p.write(prio(40), 4, 2).unwrap();
        for s in [40, 10, 5, 2] {
            p.raise(s);
        }
        assert_eq!(p.read(cc(0), 4), Ok(5));
        assert_eq!(p.read(cc(0), 4), Ok(10));
        assert_eq!(p.read(cc(0), 4), Ok(40));
        assert_eq!(p.read(cc(0), 4), Ok(2));
        assert_eq!(p.read(cc(0), 4), Ok(0));
        assert_eq!(p.claimed_sources().collect::<Vec<_>>(), [2, 5, 10, 40]);
        assert_eq!(p.read(pend(0), 4), Ok(0));
    }

    #[test]
    fn threshold_priority_zero_and_enables_gate_claims() {
        let mut p = ready(8, 2);
        p.write(prio(3), 4, 2).unwrap();
        p.write(prio(4), 4, 0).unwrap();
        p.raise(3);
        p.raise(4);
        // Priority 0 never interrupts; context 1 has nothing enabled.
        assert_eq!(p.read(cc(1), 4), Ok(0));
        assert!(!p.line(1));
        p.write(thr(0), 4, 2).unwrap();
        assert!(!p.line(0));
        assert_eq!(p.read(cc(0), 4), Ok(0));
        p.write(thr(0), 4, 1).unwrap();
        assert!(p.line(0));
        assert_eq!(p.read(cc(0), 4), Ok(3));
        assert!(!p.line(0));
        assert!(p.is_pending(4));
        assert!(!p.line(7) && p.claim(7) == 0, "no such context");
    }

    #[test]
    fn completion_rules() {
        let mut p = ready(8, 2);
        p.raise(2);
        assert_eq!(p.read(cc(0), 4), Ok(2));
        // Not claimed, out of range, not enabled for that context: ignored.
        assert_eq!(p.write(cc(0), 4, 3), Ok(None));
        assert_eq!(p.write(cc(0), 4, 0), Ok(None));
        assert_eq!(p.write(cc(0), 4, 9), Ok(None));
        assert_eq!(p.write(cc(0), 4, u32::MAX), Ok(None));
        assert_eq!(p.write(cc(1), 4, 2), Ok(None));
        assert!(p.is_claimed(2));
        // Another context that has it enabled may complete it (as on the hardware).
        p.write(en(1, 0), 4, 1 << 2).unwrap();
        assert_eq!(p.write(cc(1), 4, 2), Ok(Some(2)));
        assert!(!p.is_claimed(2));
        assert_eq!(p.write(cc(0), 4, 2), Ok(None), "completed once only");
        // Disabling while in service blocks completion until re-enabled.
        p.raise(2);
        assert_eq!(p.claim(0), 2);
        p.write(en(0, 0), 4, 0).unwrap();
        p.write(en(1, 0), 4, 0).unwrap();
        assert_eq!(p.complete(0, 2), None);
        p.write(en(0, 0), 4, 1 << 2).unwrap();
        assert_eq!(p.complete(0, 2), Some(2));
    }

    #[test]
    fn raise_coalesces_and_redelivers_after_completion() {
        let mut p = ready(8, 1);
        assert!(p.raise(6));
        assert!(!p.raise(6), "coalesced while pending");
        assert_eq!(p.claim(0), 6);
        assert!(p.raise(6), "pending again while in service");
        assert!(!p.raise(6));
        assert!(p.is_pending(6) && p.is_claimed(6));
        assert!(!p.line(0), "not deliverable while claimed");
        assert_eq!(p.claim(0), 0);
        assert_eq!(p.complete(0, 6), Some(6));
        assert!(p.line(0));
        assert_eq!(p.claim(0), 6);
        assert_eq!(p.complete(0, 6), Some(6));
        assert_eq!(p.claim(0), 0);
    }

    #[test]
    fn lower_and_reset_source() {
        let mut p = ready(8, 1);
        p.raise(1);
        p.lower(1);
        assert!(!p.is_pending(1));
        assert_eq!(p.claim(0), 0);
        p.raise(2);
        assert_eq!(p.claim(0), 2);
        p.lower(2);
        assert!(p.is_claimed(2), "lower leaves a claim alone");
        p.raise(2);
        p.reset_source(2);
        assert!(!p.is_claimed(2) && !p.is_pending(2));
        assert_eq!(p.complete(0, 2), None, "completion after reset is ignored");
        assert_eq!(p.claimed_sources().count(), 0);
        p.lower(0);
        p.lower(99);
        p.reset_source(0);
        p.reset_source(u32::MAX);
    }

    #[test]
    fn line_changes_are_reported_once() {
        let mut p = ready(8, 3);
        p.write(en(2, 0), 4, 1 << 4).unwrap();
        assert_eq!(lines(&mut p), []);
        p.raise(4);
        assert_eq!(lines(&mut p), [(0, true), (2, true)]);
        assert_eq!(lines(&mut p), []);
        p.raise(5);
        assert_eq!(lines(&mut p), []);
        assert_eq!(p.read(cc(2), 4), Ok(4));
        assert_eq!(lines(&mut p), [(2, false)]);
        assert_eq!(p.claim(0), 5);
        assert_eq!(lines(&mut p), [(0, false)]);
        p.resync_lines();
        assert_eq!(lines(&mut p), [(0, false), (1, false), (2, false)]);
        assert_eq!(p.write(cc(2), 4, 4), Ok(Some(4)));
        assert_eq!(lines(&mut p), []);
    }

    #[test]
    fn clones_are_independent() {
        let mut p = ready(8, 1);
        p.raise(1);
        let mut q = p.clone();
        assert_eq!(p.claim(0), 1);
        assert!(q.is_pending(1) && !q.is_claimed(1));
        assert_eq!(q.claim(0), 1);
    }

    // ------------------------------------------------------------ property test

    /// The simplest possible PLIC: one flag per thing.
    #[derive(Clone, Debug)]
    struct Reference {
        ndev: u32,
        contexts: u32,
        priority: Vec<u32>,
        pending: Vec<bool>,
        claimed: Vec<bool>,
        enable: Vec<Vec<bool>>,
        threshold: Vec<u32>,
    }

    impl Reference {
        fn new(ndev: u32, contexts: u32) -> Self {
            let n = ndev as usize + 1;
            Self {
                ndev,
                contexts,
                priority: vec![0; n],
                pending: vec![false; n],
                claimed: vec![false; n],
                enable: vec![vec![false; n]; contexts as usize],
                threshold: vec![0; contexts as usize],
            }
        }

        fn candidate(&self, c: u32) -> u32 {
            let c = c as usize;
            let mut best = 0;
            for s in 1..=self.ndev as usize {
                let p = self.priority[s];
                if self.pending[s]
                    && !self.claimed[s]
                    && self.enable[c][s]
                    && p > 0
                    && p > self.threshold[c]
                    && (best == 0 || p > self.priority[best])
                {
                    best = s;
                }
            }
            best as u32
        }

        fn valid(&self, s: u32) -> bool {
            s >= 1 && s <= self.ndev
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Raise(u32),
        Lower(u32),
        Reset(u32),
        Claim(u32),
        Complete(u32, u32),
        Enable(u32, u32, u32),
        Priority(u32, u32),
        Threshold(u32, u32),
        /// An access that names no register: `(kind, index, is_write)`.
        Reserved(u8, u32, bool),
        /// A misaligned or wrongly sized access.
        Bad(u64, u32, bool),
        /// An aligned access beyond the window.
        Outside(u64, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Source numbers reach past ndev and contexts past the count on purpose.
        let s = prop_oneof![8 => 0..72u32, 1 => any::<u32>()];
        let c = 0..5u32;
        prop_oneof![
            6 => s.clone().prop_map(Op::Raise),
            1 => s.clone().prop_map(Op::Lower),
            1 => s.clone().prop_map(Op::Reset),
            5 => c.clone().prop_map(Op::Claim),
            5 => (c.clone(), s.clone()).prop_map(|(c, s)| Op::Complete(c, s)),
            3 => (c.clone(), 0..4u32, any::<u32>()).prop_map(|(c, w, v)| Op::Enable(c, w, v)),
            3 => (s.clone(), any::<u32>()).prop_map(|(s, v)| Op::Priority(s, v)),
            2 => (c, 0..10u32).prop_map(|(c, v)| Op::Threshold(c, v)),
            1 => (0..6u8, any::<u32>(), any::<bool>()).prop_map(|(k, i, w)| Op::Reserved(k, i, w)),
            1 => (any::<u64>(), 0..9u32, any::<bool>()).prop_map(|(o, w, x)| Op::Bad(o, w, x)),
            1 => (any::<u64>(), any::<bool>()).prop_map(|(o, w)| Op::Outside(o, w)),
        ]
    }

    /// Checks one operation against the reference; returns the completed source, if any.
    fn step(p: &mut VirtualPlic, r: &mut Reference, op: &Op) -> Result<(), TestCaseError> {
        let words = r.ndev / 32 + 1;
        match *op {
            Op::Raise(s) => {
                let expect = r.valid(s) && !r.pending[s as usize];
                prop_assert_eq!(p.raise(s), expect);
                if expect {
                    r.pending[s as usize] = true;
                }
            }
            Op::Lower(s) => {
                p.lower(s);
                if r.valid(s) {
                    r.pending[s as usize] = false;
                }
            }
            Op::Reset(s) => {
                p.reset_source(s);
                if r.valid(s) {
                    r.pending[s as usize] = false;
                    r.claimed[s as usize] = false;
                }
            }
            Op::Claim(c) => {
                let expect = if c < r.contexts { r.candidate(c) } else { 0 };
                let got = if c < r.contexts {
                    p.read(cc(c), 4).unwrap()
                } else {
                    p.claim(c)
                };
                prop_assert_eq!(got, expect);
                if got != 0 {
                    prop_assert!(!r.claimed[got as usize], "claimed twice");
                    r.pending[got as usize] = false;
                    r.claimed[got as usize] = true;
                }
            }
            Op::Complete(c, s) => {
                let expect = c < r.contexts
                    && r.valid(s)
                    && r.claimed[s as usize]
                    && r.enable[c as usize][s as usize];
                let got = if c < r.contexts {
                    p.write(cc(c), 4, s).unwrap()
                } else {
                    p.complete(c, s)
                };
                prop_assert_eq!(got, expect.then_some(s));
                if expect {
                    r.claimed[s as usize] = false;
                }
            }
            Op::Enable(c, w, v) => {
                let real = c < r.contexts && w < words;
                let before = p.reserved_accesses();
                prop_assert_eq!(p.write(en(c, w), 4, v), Ok(None));
                prop_assert_eq!(p.reserved_accesses(), before + u64::from(!real));
                if real {
                    let mut expect = 0u32;
                    for b in 0..32 {
                        let s = w * 32 + b;
                        if r.valid(s) {
                            let on = v & (1 << b) != 0;
                            r.enable[c as usize][s as usize] = on;
                            expect |= u32::from(on) << b;
                        }
                    }
                    prop_assert_eq!(p.read(en(c, w), 4), Ok(expect));
                }
            }
            Op::Priority(s, v) => {
                if s < 1024 {
                    let before = p.reserved_accesses();
                    prop_assert_eq!(p.write(prio(s), 4, v), Ok(None));
                    if r.valid(s) {
                        r.priority[s as usize] = v & 7;
                        prop_assert_eq!(p.reserved_accesses(), before);
                        prop_assert_eq!(p.read(prio(s), 4), Ok(v & 7));
                    } else {
                        prop_assert_eq!(p.reserved_accesses(), before + 1);
                    }
                }
            }
            Op::Threshold(c, v) => {
                if c < r.contexts {
                    prop_assert_eq!(p.write(thr(c), 4, v), Ok(None));
                    r.threshold[c as usize] = v & 7;
                    prop_assert_eq!(p.read(thr(c), 4), Ok(v & 7));
                }
            }
            Op::Reserved(kind, i, is_write) => {
                let off = match kind {
                    0 => prio(0),
                    1 => prio(r.ndev + 1 + i % (1023 - r.ndev).max(1)).min(0xffc),
                    2 => pend(words + i % (32 - words).max(1)).min(0x1ffc),
                    3 => en(r.contexts + i % 8, i % 32),
                    4 => thr(i % r.contexts) + 8 + 4 * u64::from(i % 0x3fe),
                    _ => 0x1f_fffc - 4 * u64::from(i % 0x100),
                };
                // Kinds 1 and 2 may land on a real register when they are full.
                let full = (kind == 1 && r.ndev == 1023) || (kind == 2 && words == 32);
                if !full {
                    let before = p.reserved_accesses();
                    if is_write {
                        prop_assert_eq!(p.write(off, 4, i), Ok(None));
                    } else {
                        prop_assert_eq!(p.read(off, 4), Ok(0));
                    }
                    prop_assert_eq!(p.reserved_accesses(), before + 1, "{:#x}", off);
                }
            }
            Op::Bad(off, width, is_write) => {
                let off = if width == 4 { off | 1 } else { off };
                if is_write {
                    prop_assert_eq!(p.write(off, width, 1), Err(VplicFault::BadAccess));
                } else {
                    prop_assert_eq!(p.read(off, width), Err(VplicFault::BadAccess));
                }
            }
            Op::Outside(off, is_write) => {
                let size = p.window_size();
                let off = (size + off % (u64::MAX - size)) & !3;
                if is_write {
                    prop_assert_eq!(p.write(off, 4, 1), Err(VplicFault::OutsideWindow));
                } else {
                    prop_assert_eq!(p.read(off, 4), Err(VplicFault::OutsideWindow));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_the_reference(
            ndev in prop_oneof![1..70u32, Just(1023u32)],
            contexts in 1..4u32,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut p = VirtualPlic::new(ndev, contexts).unwrap();
            let mut r = Reference::new(ndev, contexts);
            let mut mirror = vec![false; contexts as usize];
            for op in &ops {
                step(&mut p, &mut r, op)?;
                // Interrupt state and lines agree with the reference after every step.
                for s in 0..=ndev + 1 {
                    let i = s as usize;
                    prop_assert_eq!(p.is_pending(s), r.valid(s) && r.pending[i]);
                    prop_assert_eq!(p.is_claimed(s), r.valid(s) && r.claimed[i]);
                }
                let claimed: Vec<u32> = (1..=ndev).filter(|&s| r.claimed[s as usize]).collect();
                prop_assert_eq!(p.claimed_sources().collect::<Vec<_>>(), claimed);
                for w in 0..=ndev / 32 {
                    let mut expect = 0u32;
                    for b in 0..32 {
                        let s = w * 32 + b;
                        if r.valid(s) && r.pending[s as usize] {
                            expect |= 1 << b;
                        }
                    }
                    prop_assert_eq!(p.read(pend(w), 4), Ok(expect));
                }
                p.take_line_changes(|c, l| mirror[c as usize] = l);
                for c in 0..contexts {
                    let would_claim = p.clone().claim(c) != 0;
                    prop_assert_eq!(p.line(c), would_claim);
                    prop_assert_eq!(p.line(c), r.candidate(c) != 0);
                    prop_assert_eq!(mirror[c as usize], p.line(c));
                }
            }

            // Never lost, never duplicated: open everything up on context 0 and drain.
            // Every pending source is claimed exactly once; every claimed one is
            // completed, and delivered once more if it was raised again meanwhile.
            let mut expect: Vec<u32> = (1..=ndev)
                .filter(|&s| r.pending[s as usize] || r.claimed[s as usize])
                .collect();
            let redeliver: BTreeSet<u32> = (1..=ndev)
                .filter(|&s| r.pending[s as usize] && r.claimed[s as usize])
                .collect();
            for s in 1..=ndev {
                p.write(prio(s), 4, 1).unwrap();
            }
            for w in 0..=ndev / 32 {
                p.write(en(0, w), 4, u32::MAX).unwrap();
            }
            p.write(thr(0), 4, 0).unwrap();
            let in_service: Vec<u32> = p.claimed_sources().collect();
            let mut seen = Vec::new();
            for s in in_service {
                prop_assert_eq!(p.write(cc(0), 4, s), Ok(Some(s)));
                seen.push(s);
            }
            loop {
                let s = p.read(cc(0), 4).unwrap();
                if s == 0 {
                    break;
                }
                prop_assert_eq!(p.write(cc(0), 4, s), Ok(Some(s)));
                seen.push(s);
            }
            expect.extend(redeliver.iter().copied());
            expect.sort_unstable();
            seen.sort_unstable();
            prop_assert_eq!(seen, expect);
            prop_assert!(!p.line(0));
        }
    }
}
