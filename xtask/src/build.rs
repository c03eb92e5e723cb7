//! Builds the hypervisor image with its embedded Root VM payload.
//!
//! The hypervisor is linked once (it does not depend on the guest); the Root VM —
//! kernel, optional initrd and command line, packed by `diosix_core::payload` — is then
//! appended to the ELF as a PT_LOAD segment of its own at the image's end
//! (`__payload_start` in link.ld), where the hypervisor finds and unpacks it at boot.
use crate::sbom::{self, ImageFacts, RootVmContents};
use crate::{process, rootvm, setup, workspace_root, Result};
use diosix_core::payload::{encode, PayloadSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bare-metal target the hypervisor and guests are built for.
pub const TARGET: &str = "riscv64gc-unknown-none-elf";

/// Which guest becomes the Root VM.
#[derive(Clone, Debug)]
pub enum RootVm {
    /// The Linux Root VM built from source (kernel + initramfs).
    Linux,
    /// Any guest image: an ELF, or a raw image with the RISC-V Linux `Image` header.
    File(PathBuf),
}

/// What goes into one hypervisor image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The Root VM.
    pub root_vm: RootVm,
    /// Root VM vCPU count; `None` = one per host hart.
    pub vcpus: Option<u32>,
    /// Root VM RAM in MiB; `None` = the default.
    pub ram_mib: Option<u32>,
    /// Kernel command line (for Linux guests).
    pub cmdline: Option<String>,
    /// Where to write the image.
    pub out: PathBuf,
}

/// Builds the hypervisor ELF (no payload) and returns its path.
///
/// Always with [`reproducible_rustflags`] (and nothing from `RUSTFLAGS`), so the image
/// `cargo xtask build` writes is the one `cargo xtask repro` shows to be reproducible.
pub fn build_hypervisor() -> Result<PathBuf> {
    setup::ensure_rust_targets()?;
    let status = process::status(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "diosix",
                "--target",
                TARGET,
            ])
            .env_remove("RUSTFLAGS")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                reproducible_rustflags()?.join("\x1f"),
            ),
    )
    .map_err(|e| format!("building the hypervisor: {e}"))?;
    if !status.success() {
        return Err("building the hypervisor failed (see the cargo output above)".into());
    }
    Ok(crate::cargo_target_dir()
        .join(TARGET)
        .join("release")
        .join("diosix"))
}

/// The rustc flags that keep the build's own paths out of what it produces (the
/// hypervisor keeps its debug info; panic messages name source files): each
/// `--remap-path-prefix` replaces a path that differs between machines and checkouts
/// with a fixed one. Rustc applies the last remapping that matches, so the more
/// specific (longer) prefixes come last.
///
/// | path | becomes |
/// |---|---|
/// | the workspace | `.` (so a debugger finds the sources from the checkout's root) |
/// | the cargo target directory | `./target` (where it is by default) |
/// | `$CARGO_HOME` (the crates.io sources are under `registry/src/`) | `/cargo` |
/// | `$RUSTUP_HOME` | `/rustup` |
/// | the toolchain's `rust-src` | `/rustc/<commit>`, as in the prebuilt `core` and `std` |
pub fn reproducible_rustflags() -> Result<Vec<String>> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let env_or_home = |var: &str, under_home: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(under_home)))
    };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // Run in the workspace, so rustup picks the toolchain rust-toolchain.toml names.
    let ask_rustc = |args: &[&str]| {
        process::stdout(
            Command::new(&rustc)
                .current_dir(workspace_root())
                .args(args),
        )
        .ok_or_else(|| format!("`rustc {}` failed: is Rust installed?", args.join(" ")))
    };
    let sysroot = PathBuf::from(ask_rustc(&["--print", "sysroot"])?.trim());
    let commit = ask_rustc(&["-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("commit-hash: "))
        .map(str::to_string)
        .ok_or("`rustc -vV` names no commit-hash")?;
    let mut remaps: Vec<(PathBuf, String)> = vec![
        (workspace_root(), ".".into()),
        (crate::cargo_target_dir(), "./target".into()),
        (
            sysroot.join("lib/rustlib/src/rust"),
            format!("/rustc/{commit}"),
        ),
    ];
    if let Some(cargo_home) = env_or_home("CARGO_HOME", ".cargo") {
        remaps.push((cargo_home, "/cargo".into()));
    }
    if let Some(rustup_home) = env_or_home("RUSTUP_HOME", ".rustup") {
        remaps.push((rustup_home, "/rustup".into()));
    }
    remaps.sort_by_key(|(from, _)| from.as_os_str().len());
    remaps.dedup_by(|a, b| a.0 == b.0);
    remaps
        .into_iter()
        .map(|(from, to)| {
            let from = from
                .to_str()
                .ok_or_else(|| format!("{}: paths must be UTF-8", from.display()))?;
            Ok(format!("--remap-path-prefix={from}={to}"))
        })
        .collect()
}

/// Builds a hypervisor image and returns its path.
pub fn build_image(opts: &ImageOptions) -> Result<PathBuf> {
    build_image_with_contents(opts).map(|built| built.image)
}

/// An image built, with what its bill of materials needs to know.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The image written.
    pub image: PathBuf,
    /// Its Root VM.
    pub root_vm: RootVmContents,
    /// The Root VM's command line, if it has one.
    pub cmdline: Option<String>,
}

/// Builds a hypervisor image; returns it with what went into its Root VM.
pub fn build_image_with_contents(opts: &ImageOptions) -> Result<BuiltImage> {
    let (kernel, initrd, default_cmdline, root_vm) = match &opts.root_vm {
        RootVm::File(path) => {
            let kernel = std::fs::read(path)
                .map_err(|e| format!("reading Root VM {}: {e}", path.display()))?;
            (kernel, None, None, RootVmContents::File(path.clone()))
        }
        RootVm::Linux => {
            let a = rootvm::build_linux_root_vm()?;
            let kernel = std::fs::read(&a.kernel_image)
                .map_err(|e| format!("reading {}: {e}", a.kernel_image.display()))?;
            let initrd = std::fs::read(&a.initramfs)
                .map_err(|e| format!("reading {}: {e}", a.initramfs.display()))?;
            let cmdline = a.cmdline.clone();
            (
                kernel,
                Some(initrd),
                Some(cmdline),
                RootVmContents::Linux(Box::new(a)),
            )
        }
    };
    let cmdline = opts.cmdline.clone().or(default_cmdline);
    let payload = encode(&PayloadSpec {
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: cmdline.as_deref(),
        vcpus: opts.vcpus.unwrap_or(0),
        ram_mib: opts.ram_mib.unwrap_or(0),
    })
    .map_err(|e| format!("packing the Root VM payload: {e}"))?;
    let hypervisor = build_hypervisor()?;
    let elf =
        std::fs::read(&hypervisor).map_err(|e| format!("reading {}: {e}", hypervisor.display()))?;
    let image = append_load_segment(&elf, &payload)?;
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(&opts.out, image).map_err(|e| format!("writing {}: {e}", opts.out.display()))?;
    Ok(BuiltImage {
        image: opts.out.clone(),
        root_vm,
        cmdline,
    })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Returns `elf` with `data` appended as a new read-only PT_LOAD segment placed right
/// after the highest existing segment (4 KiB aligned). The program header table is
/// rewritten at the end of the file, since there is no room to grow it in place.
pub fn append_load_segment(elf: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    const PT_LOAD: u32 = 1;
    const PHENT: usize = 56;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("the hypervisor is not a little-endian ELF64 file".into());
    }
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = u16_at(elf, 0x36) as usize;
    let phnum = u16_at(elf, 0x38) as usize;
    if phentsize != PHENT || phoff + phnum * PHENT > elf.len() {
        return Err("malformed program header table in the hypervisor ELF".into());
    }
    let old_phdrs = &elf[phoff..phoff + phnum * PHENT];
    let mut end = 0u64;
    for ph in old_phdrs.chunks(PHENT) {
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_LOAD {
            end = end.max(u64_at(ph, 0x18) + u64_at(ph, 0x28)); // p_paddr + p_memsz
        }
    }
    let addr = end.next_multiple_of(4096);
    let mut out = elf.to_vec();
    out.resize(out.len().next_multiple_of(4096), 0);
    let data_off = out.len() as u64;
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(8), 0);
    let new_phoff = out.len() as u64;
    out.extend_from_slice(old_phdrs);
    let mut ph = Vec::with_capacity(PHENT);
    ph.extend_from_slice(&PT_LOAD.to_le_bytes());
    ph.extend_from_slice(&4u32.to_le_bytes()); // PF_R
    ph.extend_from_slice(&data_off.to_le_bytes());
    ph.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    ph.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    ph.extend_from_slice(&(data.len() as u64).to_le_bytes());
    ph.extend_from_slice(&(data.len() as u64).to_le_bytes());
    ph.extend_from_slice(&4096u64.to_le_bytes());
    out.extend_from_slice(&ph);
    out[0x20..0x28].copy_from_slice(&new_phoff.to_le_bytes());
    let n = u16::try_from(phnum + 1).map_err(|_| "too many program headers")?;
    out[0x38..0x3a].copy_from_slice(&n.to_le_bytes());
    Ok(out)
}

fn parse_size_mib(s: &str) -> Result<u32> {
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1024),
        Some('M' | 'm') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size `{s}` (examples: 64M, 1G)"))
}

/// The options of `cargo xtask build`, which `cargo xtask run` passes on.
fn parse_args(args: &[String]) -> Result<ImageOptions> {
    let mut opts = ImageOptions {
        root_vm: RootVm::Linux,
        vcpus: None,
        ram_mib: None,
        cmdline: None,
        out: workspace_root().join("target").join("diosix.elf"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--root-vm" => opts.root_vm = RootVm::File(PathBuf::from(val("--root-vm")?)),
            "--demo" => opts.root_vm = RootVm::File(crate::guests::build_guest("demo")?),
            "--out" => opts.out = PathBuf::from(val("--out")?),
            "--vcpus" => opts.vcpus = Some(val("--vcpus")?.parse().map_err(|_| "bad --vcpus")?),
            "--ram" => opts.ram_mib = Some(parse_size_mib(&val("--ram")?)?),
            "--cmdline" => opts.cmdline = Some(val("--cmdline")?),
            other => return Err(format!("unknown option `{other}` (see `cargo xtask help`)")),
        }
    }
    Ok(opts)
}

/// `cargo xtask build`: builds the image and writes its bill of materials beside it
/// (`sbom.rs`); returns the path of the image.
pub fn cmd_build(args: &[String]) -> Result<PathBuf> {
    setup::ensure_all()?;
    let opts = parse_args(args)?;
    let built = build_image_with_contents(&opts)?;
    let out = built.image;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("xtask: wrote {} ({} KiB)", display(&out), size >> 10);
    let sbom = sbom::write(&ImageFacts {
        image: &out,
        root_vm: &built.root_vm,
        cmdline: built.cmdline.as_deref(),
        vcpus: opts.vcpus,
        ram_mib: opts.ram_mib,
    })?;
    println!("xtask: wrote {} (bill of materials)", display(&sbom));
    Ok(out)
}

fn display(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}
