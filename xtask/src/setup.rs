//! Installs what the build needs and is missing, saying what it does: the rustup
//! targets, and Debian packages (QEMU 10 from bookworm-backports, the riscv64 cross
//! toolchain, the kernel build's tools).
use crate::Result;
use std::process::Command;

const APT_SOURCES: &str = "/etc/apt/sources.list.d/diosix-backports.sources";
const APT_SOURCES_TEXT: &str = "\
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Tools the build runs, and the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu"),
    ("riscv64-linux-gnu-objcopy", "binutils-riscv64-linux-gnu"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("cpio", "cpio"),
    ("dpkg-source", "dpkg-dev"),
    ("xz", "xz-utils"),
    ("make", "make"),
];
/// Header packages the kernel build needs (no binary to probe for).
const HEADER_PACKAGES: &[(&str, &str)] = &[
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ("/usr/include/libelf.h", "libelf-dev"),
];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn qemu_is_10_or_later() -> bool {
    Command::new("qemu-system-riscv64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .skip_while(|w| *w != "version")
                .nth(1)
                .and_then(|v| v.split('.').next().and_then(|m| m.parse::<u32>().ok()))
        })
        .is_some_and(|major| major >= 10)
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    println!("xtask setup: {what}");
    let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Adds the rustup targets the build uses, if missing.
pub fn ensure_rust_targets() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for target in ["riscv64gc-unknown-none-elf", "riscv64gc-unknown-linux-gnu"] {
        if !installed.lines().any(|l| l.trim() == target) {
            run(
                &format!("rustup target add {target}"),
                Command::new("rustup").args(["target", "add", target]),
            )?;
        }
    }
    Ok(())
}

/// Makes sure every tool the build uses is installed.
pub fn ensure_all() -> Result<()> {
    ensure_rust_targets()?;
    let mut packages: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| !have(t))
        .map(|(_, p)| *p)
        .collect();
    packages.extend(
        HEADER_PACKAGES
            .iter()
            .filter(|(f, _)| !std::path::Path::new(f).exists())
            .map(|(_, p)| *p),
    );
    let need_qemu = !qemu_is_10_or_later();
    if packages.is_empty() && !need_qemu {
        return Ok(());
    }
    if !std::path::Path::new(APT_SOURCES).exists() {
        println!("xtask setup: adding bookworm-backports and deb-src entries in {APT_SOURCES}");
        std::fs::write(APT_SOURCES, APT_SOURCES_TEXT)
            .map_err(|e| format!("writing {APT_SOURCES} (run as root): {e}"))?;
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    if need_qemu {
        run(
            "installing QEMU 10 (qemu-system-riscv from bookworm-backports)",
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "-t",
                    "bookworm-backports",
                    "qemu-system-riscv",
                ]),
        )?;
    }
    if !packages.is_empty() {
        run(
            &format!("installing {}", packages.join(" ")),
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&packages),
        )?;
    }
    Ok(())
}
