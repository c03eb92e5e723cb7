// Included by every test guest's build script (`include!("../rt/link.rs")`), so the
// way a guest is linked is written once.
//
// Guests are linked as static position-independent executables: `-pie` turns every
// absolute address the compiler left in data (vtables, tables of `&str` and function
// pointers) into an `R_RISCV_RELATIVE` entry in `.rela.dyn`, which `_start` applies
// for wherever the image was loaded (see `link.x` and `src/lib.rs`). Code is already
// PC-relative (the `medany` code model), so nothing else moves. Under H the
// hypervisor loads the image at the start of guest RAM; in PMP mode guest RAM is a
// block of host memory wherever one was free (GPA = HPA); QEMU's own loader (under
// OpenSBI) puts it at its link address. `-z notext` allows those entries in
// read-only sections (the guests run with paging off, so nothing is write-protected),
// `--no-dynamic-linker` says no interpreter is wanted, and `--apply-dynamic-relocs`
// writes each entry's value in place too, so the image is also correct unrelocated at
// its link address.

/// Passes the runtime's linker script and the PIE options to the linker.
fn link_guest() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg=-T{dir}/../rt/link.x");
    for arg in [
        "-pie",
        "-znotext",
        "--no-dynamic-linker",
        "--apply-dynamic-relocs",
    ] {
        println!("cargo:rustc-link-arg={arg}");
    }
    println!("cargo:rerun-if-changed=../rt/link.x");
    println!("cargo:rerun-if-changed=../rt/link.rs");
}
