//! Installs what the build needs and is missing, saying what it does: the rustup
//! targets, the apt sources the Root VM's pinned sources and QEMU 10 come from
//! (bookworm-security, bookworm `deb-src`, bookworm-backports; only entries no apt file
//! has yet are added), and Debian packages (QEMU 10 from bookworm-backports, the
//! riscv64 cross toolchain, the kernel build's tools). Running it again changes nothing.
use crate::{process, Result};
use std::process::Command;

/// The apt sources file xtask writes (only ever with entries no other file has).
const APT_SOURCES: &str = "/etc/apt/sources.list.d/diosix-backports.sources";

/// The apt entries the build needs, as (type, suite, archive URI):
/// bookworm-security has the pinned `linux-source-6.12` (see `rootvm/sources.manifest`),
/// bookworm's `deb-src` the busybox and Lua sources, bookworm-backports QEMU 10.
const APT_ENTRIES: &[(&str, &str, &str)] = &[
    (
        "deb",
        "bookworm-security",
        "http://deb.debian.org/debian-security",
    ),
    ("deb-src", "bookworm", "http://deb.debian.org/debian"),
    ("deb", "bookworm-backports", "http://deb.debian.org/debian"),
];

/// Debian packages the build (hypervisor image and Linux Root VM) and `cargo xtask
/// disk` need, each with a file or tool that shows it is there on a host without dpkg.
const PACKAGES: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("perl", "perl"),
    ("xz-utils", "xz"),
    ("bzip2", "bzip2"),
    ("gzip", "gzip"),
    ("cpio", "cpio"),
    ("dpkg-dev", "dpkg-source"),
    ("gcc-riscv64-linux-gnu", "riscv64-linux-gnu-gcc"),
    ("binutils-riscv64-linux-gnu", "riscv64-linux-gnu-objcopy"),
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("libelf-dev", "/usr/include/libelf.h"),
    // mke2fs, for `disk new`; by path, since /sbin is not on every user's $PATH.
    ("e2fsprogs", "/sbin/mke2fs"),
];

/// The (type, suite) pairs the apt configuration enables, from `sources.list` and
/// `sources.list.d/` (one-line `.list` files and deb822 `.sources` files).
fn apt_entries() -> Vec<(String, String)> {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut found = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("list") => found.extend(parse_list(&text)),
            Some("sources") => found.extend(parse_deb822(&text)),
            _ => {}
        }
    }
    found
}

/// `deb [options] URI suite component...` lines.
fn parse_list(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(kind @ ("deb" | "deb-src")) = words.next() else {
            continue;
        };
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=close);
        }
        if let Some(suite) = rest.get(1) {
            found.push((kind.to_string(), suite.to_string()));
        }
    }
    found
}

/// deb822 stanzas: `Types:` times `Suites:`, unless `Enabled: no`.
fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut types, mut suites, mut enabled) = (Vec::new(), Vec::new(), true);
        for line in stanza.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types.extend(words),
                "suites" => suites.extend(words),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled {
            for t in &types {
                found.extend(suites.iter().map(|s| (t.clone(), s.clone())));
            }
        }
    }
    found
}

/// Adds the apt entries of [`APT_ENTRIES`] that no file has yet; returns whether it
/// wrote anything (then the package lists need an `apt-get update`).
fn ensure_apt_sources() -> Result<bool> {
    let have = apt_entries();
    let missing: Vec<_> = APT_ENTRIES
        .iter()
        .filter(|(t, s, _)| !have.iter().any(|(ht, hs)| ht == t && hs == s))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let mut text = std::fs::read_to_string(APT_SOURCES).unwrap_or_default();
    for (kind, suite, uri) in &missing {
        println!("xtask setup: adding `{kind} {uri} {suite} main` to {APT_SOURCES}");
        if !text.is_empty() && !text.ends_with("\n\n") {
            text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
        }
        text.push_str(&format!(
            "Types: {kind}\nURIs: {uri}\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ));
    }
    std::fs::write(APT_SOURCES, text)
        .map_err(|e| format!("writing {APT_SOURCES} (run as root): {e}"))?;
    Ok(true)
}

/// The packages of [`PACKAGES`] that are not installed.
fn missing_packages() -> Vec<&'static str> {
    let names: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    // `ii` = installed; unknown packages only print to stderr.
    let installed = process::stdout_any_status(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
            .args(&names),
    )
    .unwrap_or_default();
    PACKAGES
        .iter()
        .filter(|(pkg, probe)| {
            let by_dpkg = installed.lines().any(|l| {
                l.split_once(' ').is_some_and(|(p, st)| {
                    p.split(':').next() == Some(*pkg) && st.starts_with("ii")
                })
            });
            let by_probe = if probe.starts_with('/') {
                std::path::Path::new(probe).exists()
            } else {
                have(probe)
            };
            !by_dpkg && !by_probe
        })
        .map(|(pkg, _)| *pkg)
        .collect()
}

fn have(tool: &str) -> bool {
    process::status(Command::new("sh").args(["-c", &format!("command -v {tool} >/dev/null 2>&1")]))
        .is_ok_and(|s| s.success())
}

fn qemu_is_10_or_later() -> bool {
    process::stdout_any_status(Command::new("qemu-system-riscv64").arg("--version"))
        .and_then(|s| {
            s.split_whitespace()
                .skip_while(|w| *w != "version")
                .nth(1)
                .and_then(|v| v.split('.').next().and_then(|m| m.parse::<u32>().ok()))
        })
        .is_some_and(|major| major >= 10)
}

/// Says what it does, then runs `cmd` on the terminal.
fn run(what: &str, cmd: &mut Command) -> Result<()> {
    println!("xtask setup: {what}");
    process::run(what, cmd)
}

/// Adds the rustup targets the build uses, if missing.
pub fn ensure_rust_targets() -> Result<()> {
    let installed =
        process::stdout_any_status(Command::new("rustup").args(["target", "list", "--installed"]))
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

/// Makes sure every tool the build uses is installed, and that apt can fetch the
/// Root VM's pinned sources. Does nothing (and says nothing) when all is there.
pub fn ensure_all() -> Result<()> {
    ensure_rust_targets()?;
    let packages = missing_packages();
    let need_qemu = !qemu_is_10_or_later();
    let need_apt = !packages.is_empty() || need_qemu;
    let sources_changed = match ensure_apt_sources() {
        Ok(changed) => changed,
        // Only the Root VM's first source fetch needs them: not fatal on its own.
        Err(e) if !need_apt => {
            println!("xtask setup: warning: {e}");
            false
        }
        Err(e) => return Err(e),
    };
    if sources_changed || need_apt {
        run(
            "apt-get update",
            Command::new("apt-get").args(["update", "-q"]),
        )?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines() {
        let text = "deb http://deb.debian.org/debian bookworm main\n\
                    # deb-src http://x bookworm main\n\
                    deb-src [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm main\n\
                    deb http://deb.debian.org/debian-security bookworm-security main\n";
        let got = parse_list(text);
        let want = [
            ("deb", "bookworm"),
            ("deb-src", "bookworm"),
            ("deb", "bookworm-security"),
        ];
        assert_eq!(got.len(), want.len());
        for ((t, s), (wt, ws)) in got.iter().zip(want) {
            assert_eq!((t.as_str(), s.as_str()), (wt, ws));
        }
    }

    #[test]
    fn deb822_stanzas() {
        let text = "Types: deb deb-src\nURIs: http://deb.debian.org/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb\nURIs: http://x\nSuites: bookworm-backports\nEnabled: no\n";
        let got = parse_deb822(text);
        assert_eq!(got.len(), 4);
        assert!(got.contains(&("deb-src".into(), "bookworm-updates".into())));
        assert!(!got.iter().any(|(_, s)| s == "bookworm-backports"));
    }
}
