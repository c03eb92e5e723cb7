//! Links the guest with the runtime's linker script as a position-independent image.
include!("../rt/link.rs");

fn main() {
    link_guest();
}
