//! Seeds for guests' random number generators.
//!
//! Firmware hands its OS a few random bytes (`/chosen/rng-seed`: QEMU's `virt`
//! supplies 32); Linux credits them and has a ready CRNG from its first instruction.
//! A hypervisor that dropped them would leave every guest to gather entropy from
//! timer jitter at boot (slow, and under a deterministic emulator barely random).
//! Passing the host's seed on unchanged would hand every VM the same bytes, so each
//! guest gets its own 64 bytes from a ChaCha20 generator keyed once, at boot, by
//! SHA-256 of the host's seed: no VM can learn another's seed or the host's from its
//! own.

use chacha20::rand_core::{Rng, SeedableRng};
use chacha20::ChaCha20Rng;
use sha2::{Digest, Sha256};

/// Bytes in each guest's `/chosen/rng-seed` (what Linux's own firmware convention
/// and QEMU use at most; Linux credits them all).
pub const GUEST_SEED_BYTES: usize = 64;

/// Fewer host bytes than this are not treated as a seed.
pub const MIN_HOST_SEED_BYTES: usize = 16;

/// A per-boot generator of guest seeds.
pub struct GuestSeeds {
    rng: ChaCha20Rng,
}

impl GuestSeeds {
    /// A generator keyed by the host's seed, or `None` if the host gave fewer than
    /// [`MIN_HOST_SEED_BYTES`] (guests then get no seed rather than a guessable one).
    pub fn new(host_seed: &[u8]) -> Option<Self> {
        if host_seed.len() < MIN_HOST_SEED_BYTES {
            return None;
        }
        let mut h = Sha256::new();
        // Domain separation: these bytes key this generator and nothing else.
        h.update(b"diosix guest rng-seed v1\0");
        h.update(host_seed);
        let key: [u8; 32] = h.finalize().into();
        Some(Self {
            rng: ChaCha20Rng::from_seed(key),
        })
    }

    /// The next guest's seed: never the same twice in one boot.
    pub fn next_seed(&mut self) -> [u8; GUEST_SEED_BYTES] {
        let mut seed = [0u8; GUEST_SEED_BYTES];
        self.rng.fill_bytes(&mut seed);
        seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_host_seed_gives_no_generator() {
        assert!(GuestSeeds::new(&[]).is_none());
        assert!(GuestSeeds::new(&[7; MIN_HOST_SEED_BYTES - 1]).is_none());
        assert!(GuestSeeds::new(&[7; MIN_HOST_SEED_BYTES]).is_some());
    }

    #[test]
    fn each_guest_gets_a_different_seed_that_is_not_the_hosts() {
        let host = [0x5a; 32];
        let mut g = GuestSeeds::new(&host).unwrap();
        let a = g.next_seed();
        let b = g.next_seed();
        assert_ne!(a, b);
        assert!(!a.windows(host.len()).any(|w| w == host));
        assert!(a.iter().any(|&x| x != 0));
    }

    #[test]
    fn the_seeds_depend_on_every_host_byte() {
        let mut host = [1u8; 32];
        let a = GuestSeeds::new(&host).unwrap().next_seed();
        host[31] ^= 1;
        let b = GuestSeeds::new(&host).unwrap().next_seed();
        assert_ne!(a, b);
    }
}
