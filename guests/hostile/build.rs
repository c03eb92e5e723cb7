//! Links the guest with the runtime's linker script (image at 0x8020_0000).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg=-T{dir}/../rt/link.x");
    println!("cargo:rerun-if-changed=../rt/link.x");
}
