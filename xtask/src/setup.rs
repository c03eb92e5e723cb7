//! Installs what the build needs and is missing, saying what it does: the rustup
//! targets, the apt sources the Root VM's pinned sources and QEMU 10 come from
//! (bookworm-security, bookworm `deb-src`, bookworm-backports; only entries no apt file
//! has yet are added), and Debian packages (QEMU 10 from bookworm-backports, the
//! riscv64 cross toolchain, the kernel build's tools, `gdb-multiarch`). Running it again
//! changes nothing.
use crate::{process, Result};
use std::process::Command;

/// The apt sources file xtask writes (only ever with entries no other file has).
const APT_SOURCES: &str = "/etc/apt/sources.list.d/diosix-backports.sources";

/// The apt entries the build needs, as (type, suite, archive): bookworm-security has
/// the pinned `linux-source-6.12` (see `rootvm/sources.manifest`), bookworm's `deb-src`
/// the busybox and Lua sources, bookworm-backports QEMU 10. Which mirror serves them
/// is not fixed here: it is the one the machine's apt configuration already uses
/// ([`mirrors`]).
const APT_ENTRIES: &[(&str, &str, Archive)] = &[
    ("deb", "bookworm-security", Archive::Security),
    ("deb-src", "bookworm", Archive::Main),
    ("deb", "bookworm-backports", Archive::Main),
];

/// Debian's two archives: the main one and the security one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Archive {
    Main,
    Security,
}

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
    // `cargo xtask gdb` and its test case: a GDB that debugs RISC-V from this host.
    ("gdb-multiarch", "gdb-multiarch"),
];

/// One enabled `(type, URI, suite)` of the apt configuration, with its `Signed-By`
/// keyring when it names one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AptEntry {
    kind: String,
    uri: String,
    suite: String,
    signed_by: Option<String>,
}

/// The enabled entries of the apt configuration, from `sources.list` and
/// `sources.list.d/` (one-line `.list` files and deb822 `.sources` files), in the order
/// apt reads them.
fn apt_entries() -> Vec<AptEntry> {
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
fn parse_list(text: &str) -> Vec<AptEntry> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(kind @ ("deb" | "deb-src")) = words.next() else {
            continue;
        };
        let mut rest: Vec<&str> = words.collect();
        let mut signed_by = None;
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            for option in rest.drain(..=close) {
                let option = option.trim_matches(|c| c == '[' || c == ']');
                if let Some(keyring) = option.strip_prefix("signed-by=") {
                    signed_by = Some(keyring.to_string());
                }
            }
        }
        if let [uri, suite, ..] = rest.as_slice() {
            found.push(AptEntry {
                kind: kind.to_string(),
                uri: uri.to_string(),
                suite: suite.to_string(),
                signed_by: signed_by.clone(),
            });
        }
    }
    found
}

/// deb822 stanzas: `Types:` times `URIs:` times `Suites:`, unless `Enabled: no`.
fn parse_deb822(text: &str) -> Vec<AptEntry> {
    let mut found = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut types, mut uris, mut suites) = (Vec::new(), Vec::new(), Vec::new());
        let (mut enabled, mut signed_by) = (true, None);
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types.extend(words),
                "uris" => uris.extend(words),
                "suites" => suites.extend(words),
                "enabled" => enabled = value.trim() != "no",
                // A keyring path (an inline key block spans lines: not copied).
                "signed-by" if value.trim().starts_with('/') => {
                    signed_by = Some(value.trim().to_string())
                }
                _ => {}
            }
        }
        if !enabled {
            continue;
        }
        for kind in &types {
            for uri in &uris {
                found.extend(suites.iter().map(|suite| AptEntry {
                    kind: kind.clone(),
                    uri: uri.clone(),
                    suite: suite.clone(),
                    signed_by: signed_by.clone(),
                }));
            }
        }
    }
    found
}

/// A mirror's URI and the keyring apt checks it with.
type Mirror = (String, Option<String>);

/// The machine's own Debian mirrors, as (URI, keyring) for the main archive and for
/// the security archive, derived from the entries it already has for bookworm: the
/// main archive is the first entry for `bookworm`, `bookworm-updates` or
/// `bookworm-backports`; the security archive the first for `bookworm-security`, else
/// the main mirror's sibling (`.../debian` → `.../debian-security`, the layout of
/// Debian's mirrors). `None` where the configuration says nothing to derive it from.
fn mirrors(have: &[AptEntry]) -> (Option<Mirror>, Option<Mirror>) {
    let usable = |e: &&AptEntry| !e.uri.starts_with("cdrom:") && !e.uri.starts_with("file:");
    let pick = |e: &AptEntry| (e.uri.trim_end_matches('/').to_string(), e.signed_by.clone());
    let main = have
        .iter()
        .filter(usable)
        .find(|e| {
            ["bookworm", "bookworm-updates", "bookworm-backports"].contains(&e.suite.as_str())
        })
        .map(pick);
    let security = have
        .iter()
        .filter(usable)
        .find(|e| e.suite == "bookworm-security")
        .map(pick)
        .or_else(|| {
            let (uri, keyring) = main.clone()?;
            let base = uri.strip_suffix("/debian")?;
            Some((format!("{base}/debian-security"), keyring))
        });
    (main, security)
}

/// Adds the apt entries of [`APT_ENTRIES`] that no file has yet, on the mirrors the
/// machine already uses; returns whether it wrote anything (then the package lists
/// need an `apt-get update`).
fn ensure_apt_sources() -> Result<bool> {
    let have = apt_entries();
    let missing: Vec<_> = APT_ENTRIES
        .iter()
        .filter(|(t, s, _)| !have.iter().any(|e| e.kind == *t && e.suite == *s))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let (main, security) = mirrors(&have);
    let mut text = std::fs::read_to_string(APT_SOURCES).unwrap_or_default();
    for (kind, suite, archive) in &missing {
        let mirror = match archive {
            Archive::Main => &main,
            Archive::Security => &security,
        };
        let Some((uri, keyring)) = mirror else {
            return Err(format!(
                "the apt configuration names no Debian bookworm mirror to derive `{kind} \
                 ... {suite} main` from: add `{kind} <your Debian mirror> {suite} main` to \
                 /etc/apt/sources.list.d/ and run this again"
            ));
        };
        println!(
            "xtask setup: adding `{kind} {uri} {suite} main` to {APT_SOURCES} (the mirror \
             this machine's apt configuration already uses)"
        );
        if !text.is_empty() && !text.ends_with("\n\n") {
            text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
        }
        text.push_str(&format!(
            "Types: {kind}\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
        ));
        if let Some(keyring) = keyring {
            text.push_str(&format!("Signed-By: {keyring}\n"));
        }
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

    fn entry(kind: &str, uri: &str, suite: &str, signed_by: Option<&str>) -> AptEntry {
        AptEntry {
            kind: kind.into(),
            uri: uri.into(),
            suite: suite.into(),
            signed_by: signed_by.map(str::to_string),
        }
    }

    #[test]
    fn list_lines() {
        let text = "deb http://ftp.fr.debian.org/debian bookworm main\n\
                    # deb-src http://x bookworm main\n\
                    deb-src [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm main\n\
                    deb http://deb.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            parse_list(text),
            [
                entry("deb", "http://ftp.fr.debian.org/debian", "bookworm", None),
                entry(
                    "deb-src",
                    "http://deb.debian.org/debian",
                    "bookworm",
                    Some("/k.gpg")
                ),
                entry(
                    "deb",
                    "http://deb.debian.org/debian-security",
                    "bookworm-security",
                    None
                ),
            ]
        );
    }

    #[test]
    fn deb822_stanzas() {
        let text = "Types: deb deb-src\n# a comment: with a colon\n\
                    URIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://x\nSuites: bookworm-backports\nEnabled: no\n";
        let got = parse_deb822(text);
        assert_eq!(got.len(), 4);
        assert!(got.contains(&entry(
            "deb-src",
            "http://mirror.example/debian",
            "bookworm-updates",
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        )));
        assert!(!got.iter().any(|e| e.suite == "bookworm-backports"));
    }

    /// New entries go to the mirror the machine already uses, never to a fixed host.
    #[test]
    fn mirrors_come_from_the_configuration() {
        let have = [
            entry("deb", "cdrom:[Debian]/", "bookworm", None),
            entry(
                "deb",
                "http://mirror.example/debian/",
                "bookworm",
                Some("/k.gpg"),
            ),
        ];
        let (main, security) = mirrors(&have);
        assert_eq!(
            main,
            Some(("http://mirror.example/debian".into(), Some("/k.gpg".into())))
        );
        assert_eq!(
            security,
            Some((
                "http://mirror.example/debian-security".into(),
                Some("/k.gpg".into())
            ))
        );
        // An explicit security entry wins over the derived sibling.
        let mut more = have.to_vec();
        more.push(entry(
            "deb",
            "http://sec.example/ds",
            "bookworm-security",
            None,
        ));
        assert_eq!(
            mirrors(&more).1,
            Some(("http://sec.example/ds".into(), None))
        );
        // A mirror whose layout says nothing about a security archive.
        let odd = [entry("deb", "http://proxy.example/apt", "bookworm", None)];
        assert_eq!(mirrors(&odd).1, None);
        assert_eq!(mirrors(&[]), (None, None));
    }
}
