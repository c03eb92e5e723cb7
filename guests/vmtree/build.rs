//! Links the guest with the runtime's linker script and finds the child image.
//!
//! `vmtree` embeds the ELF of the `vmchild` guest. Its path comes from the environment
//! variable `DIOSIX_VMCHILD_ELF` (set by `cargo xtask`, which builds `vmchild` first);
//! without it, the default build output `target/riscv64gc-unknown-none-elf/release/vmchild`
//! is used if it exists. If neither exists (e.g. a bare `cargo clippy`), an empty image
//! is embedded with a build warning, and the guest fails its first check at run time
//! rather than the build failing. To build by hand:
//!
//! ```text
//! cargo build --release --target riscv64gc-unknown-none-elf -p diosix-guest-vmchild
//! DIOSIX_VMCHILD_ELF=$PWD/target/riscv64gc-unknown-none-elf/release/vmchild \
//!     cargo build --release --target riscv64gc-unknown-none-elf -p diosix-guest-vmtree
//! ```
//! (`cargo xtask test vmtree` builds both in that order).
use std::path::PathBuf;

include!("../rt/link.rs");

fn main() {
    link_guest();
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-env-changed=DIOSIX_VMCHILD_ELF");

    let default =
        PathBuf::from(&dir).join("../../target/riscv64gc-unknown-none-elf/release/vmchild");
    let from_env = std::env::var_os("DIOSIX_VMCHILD_ELF").map(PathBuf::from);
    let elf = match (from_env, default) {
        (Some(p), _) if p.is_file() => p,
        (Some(p), _) => panic!(
            "DIOSIX_VMCHILD_ELF={} is not a file: build the child first with \
             `cargo build --release --target riscv64gc-unknown-none-elf -p diosix-guest-vmchild`",
            p.display()
        ),
        (None, p) if p.is_file() => p,
        (None, p) => {
            // Missing files count as changed, so this reruns until the child exists.
            println!("cargo:rerun-if-changed={}", p.display());
            println!(
                "cargo:warning=vmtree: no vmchild ELF (set DIOSIX_VMCHILD_ELF, or build \
                 diosix-guest-vmchild first); embedding an empty child image"
            );
            let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
                .join("vmchild.elf");
            std::fs::write(&out, b"").expect("write the empty child image");
            println!("cargo:rustc-env=DIOSIX_VMCHILD_ELF={}", out.display());
            return;
        }
    };
    println!("cargo:rerun-if-changed={}", elf.display());
    let bytes = std::fs::read(&elf).expect("read the vmchild ELF");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("vmchild.elf");
    // The debug build info is most of the file: keep what a loader needs, so every
    // SPAWN copies less and the image fits in a few IPC messages.
    let small = strip(&bytes).unwrap_or(bytes);
    std::fs::write(&out, small).expect("write the stripped child image");
    println!("cargo:rustc-env=DIOSIX_VMCHILD_ELF={}", out.display());
}

/// An ELF64 little-endian executable cut after its last loadable byte, without section
/// headers (loaders read program headers only). `None` if it is not such a file.
fn strip(elf: &[u8]) -> Option<Vec<u8>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut end = phoff.checked_add(phentsize.checked_mul(phnum)?)?;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == 1 {
            let off = usize::try_from(u64_at(ph + 8)?).ok()?;
            let filesz = usize::try_from(u64_at(ph + 32)?).ok()?;
            end = end.max(off.checked_add(filesz)?);
        }
    }
    let mut out = elf.get(..end)?.to_vec();
    // No section headers.
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    // Non-loadable segments whose bytes were cut (e.g. RISCV_ATTRIBUTES) become empty.
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != 1 {
            out[ph + 8..ph + 16].fill(0);
            out[ph + 32..ph + 48].fill(0);
        }
    }
    Some(out)
}
