//! One fuzz target per parser. Each turns bytes into the parser's input, runs it,
//! checks what the parser's contract promises about an accepted input (a failed check
//! panics, so it is reported like any other panic), and returns a small outcome label
//! (which error, or which shape of success) that also guides the corpus.

use crate::mutate::Field;
use crate::rng::Rng;

pub mod abi;
pub mod guestfdt;
pub mod hostfdt;
pub mod loader;
pub mod payload;
pub mod spawn;
pub mod vstage;

/// A fuzz target.
pub trait Target: Sync {
    /// Name on the command line.
    fn name(&self) -> &'static str;
    /// What it feeds, for `--list` and the docs.
    fn about(&self) -> &'static str;
    /// Fixed seeds (real-looking inputs) the corpus starts from.
    fn seeds(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// A new valid-looking input, built with the crates' own encoders where they exist.
    fn generate(&self, rng: &mut Rng) -> Vec<u8>;
    /// The integer fields of `input` worth mutating structurally.
    fn fields(&self, _input: &[u8], _out: &mut Vec<Field>) {}
    /// The byte order of the format's integers.
    fn big_endian(&self) -> bool {
        false
    }
    /// Inputs are cut to this many bytes.
    fn max_len(&self) -> usize {
        64 * 1024
    }
    /// Repairs a mutated input a little (e.g. a size field) so mutations reach past the
    /// first check more often. Called on half of the mutated inputs.
    fn fixup(&self, _input: &mut Vec<u8>, _rng: &mut Rng) {}
    /// Runs the parser on `input`; panics if a contract check fails. Returns an outcome
    /// label.
    fn run(&self, input: &[u8]) -> u64;
}

/// A finding that is known and tracked: still reported on every run, with its input
/// saved, but it does not fail the run. For contract gaps in code outside this crate
/// that await their owner's fix; remove the entry when the fix lands (a run that no
/// longer sees it says so).
#[derive(Debug)]
pub struct Known {
    /// Target name.
    pub target: &'static str,
    /// A substring of the panic message.
    pub message: &'static str,
    /// What it is and where it is tracked.
    pub note: &'static str,
}

/// The known findings.
pub static KNOWN: &[Known] = &[];

/// The known finding `message` from `target` matches, if any.
pub fn known(target: &str, message: &str) -> Option<&'static Known> {
    KNOWN
        .iter()
        .find(|k| k.target == target && message.contains(k.message))
}

/// Every target, in the order they run.
pub fn all() -> Vec<&'static dyn Target> {
    vec![
        &hostfdt::HostFdt,
        &loader::Elf,
        &loader::Image,
        &payload::PayloadTarget,
        &guestfdt::GuestFdt,
        &spawn::Spawn,
        &vstage::VStage,
        &abi::Abi,
    ]
}

/// A label for an enum value: its `Debug` text up to the first `(` or ` {`, hashed, so
/// errors that carry an index or a value still fall into one class per variant.
pub fn label<T: core::fmt::Debug>(tag: u64, v: &T) -> u64 {
    use core::fmt::Write;
    struct Hasher(u64, bool);
    impl Write for Hasher {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                if self.1 || b == b'(' || b == b'{' {
                    self.1 = true;
                    continue;
                }
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            Ok(())
        }
    }
    let mut h = Hasher(0xcbf2_9ce4_8422_2325 ^ tag, false);
    let _ = write!(h, "{v:?}");
    h.0
}

/// Mixes a detail into a label.
pub fn mix(label: u64, detail: u64) -> u64 {
    (label ^ detail)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(17)
}

/// Reads a little-endian u64 at `at`, zero-padded past the end.
pub fn le64(b: &[u8], at: usize) -> u64 {
    crate::mutate::read(b, Field::le(at, 8))
}

/// Reads a little-endian u32 at `at`, zero-padded past the end.
pub fn le32(b: &[u8], at: usize) -> u32 {
    crate::mutate::read(b, Field::le(at, 4)) as u32
}

/// Appends a little-endian u64.
pub fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian u32.
pub fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A guest RAM base worth trying: the real one mostly, edges sometimes.
pub fn ram_start(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0..=4 => 0x8000_0000,
        5 => 0x8000_0000 + 0x1000 * rng.range(1, 511),
        6 => *rng.pick(&[0, 0x1000, 0x20_0000, 1 << 38, u64::MAX - 0xffff]),
        _ => rng.next_u64() & !0xfff,
    }
}

/// A guest RAM length worth trying.
pub fn ram_len(rng: &mut Rng, start: u64) -> u64 {
    match rng.below(8) {
        0..=3 => *rng.pick(&[16 << 20, 64 << 20, 128 << 20, 256 << 20]),
        4 => rng.range(1, 64) << 12,
        5 => 0,
        6 => u64::MAX - start,
        _ => rng.next_u64() >> rng.below(64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::mutate_once;

    /// The generators, field hints, mutations and fix-ups of every target never panic
    /// themselves (this is a debug build: overflow checks are on), whatever the seed.
    #[test]
    fn generators_and_mutators_never_panic() {
        for t in all() {
            let mut rng = Rng::new(42);
            let mut fields = Vec::new();
            let mut prev = t.generate(&mut rng);
            for _ in 0..10_000 {
                let mut b = t.generate(&mut rng);
                assert!(!t.name().is_empty() && !t.about().is_empty());
                for _ in 0..4 {
                    fields.clear();
                    t.fields(&b, &mut fields);
                    mutate_once(
                        &mut rng,
                        &mut b,
                        &fields,
                        t.big_endian(),
                        &prev,
                        t.max_len(),
                    );
                    t.fixup(&mut b, &mut rng);
                }
                prev = b;
            }
        }
    }
}
