//! Links the hypervisor at its HPA (see link.ld).
use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=link.ld");
    if env::var("TARGET")
        .unwrap_or_default()
        .starts_with("riscv64")
    {
        println!(
            "cargo:rustc-link-arg=-T{}",
            manifest.join("link.ld").display()
        );
    }
}
