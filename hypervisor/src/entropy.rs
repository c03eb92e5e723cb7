//! Random seeds for guests, drawn from the firmware's `/chosen/rng-seed` (see
//! [`diosix_core::seeds`]).

use diosix_core::seeds::{GuestSeeds, GUEST_SEED_BYTES};
use spin::Mutex;

static SEEDS: Mutex<Option<GuestSeeds>> = Mutex::new(None);

/// Keys the guest seed generator with the host's seed (once, at boot). Says whether
/// guests will get seeds.
pub fn init(host_seed: &[u8]) -> bool {
    let seeds = GuestSeeds::new(host_seed);
    let ok = seeds.is_some();
    *SEEDS.lock() = seeds;
    ok
}

/// A fresh seed for a new VM's `/chosen/rng-seed`, or `None` if the host gave none.
pub fn guest_seed() -> Option<[u8; GUEST_SEED_BYTES]> {
    SEEDS.lock().as_mut().map(GuestSeeds::next_seed)
}
