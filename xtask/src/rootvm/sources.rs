//! The Root VM's pinned sources: `rootvm/sources.manifest` (one tarball a line, with its
//! Debian package and SHA-256), fetching each tarball with apt (or from
//! `$DIOSIX_SOURCES`) into the cache, verifying it against its pin on every use, and
//! unpacking it for a build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cache::{cache_dir, fresh_tmp, sha256_file};
use super::util::{find_file, need_tools, read_text};
use crate::{process, Result};

/// How a source tarball is obtained from apt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// A binary package shipping the tarball under `/usr/src` (linux-source-*).
    Deb,
    /// The upstream `.orig` tarball of a Debian source package.
    Dsc,
}

/// One line of `rootvm/sources.manifest`.
#[derive(Debug, Clone)]
pub(super) struct Source {
    name: String,
    method: Method,
    /// `package=version`, exactly as apt takes it.
    apt_spec: String,
    /// Debian version, e.g. `1:1.35.0-4+deb12u1`.
    version: String,
    pub(super) sha256: String,
    /// File name of the tarball, in the cache, in `$DIOSIX_SOURCES`, and (for `Deb`)
    /// under `/usr/src` in the package.
    pub(super) file: String,
}

impl Source {
    /// What the bill of materials says about this source (`sbom.rs`).
    pub(super) fn pinned(&self) -> PinnedSource {
        PinnedSource {
            name: self.name.clone(),
            package: self
                .apt_spec
                .split_once('=')
                .map_or(&*self.apt_spec, |(p, _)| p)
                .to_string(),
            debian_version: self.version.clone(),
            upstream_version: self.upstream_version().to_string(),
            binary_package: self.method == Method::Deb,
            file: self.file.clone(),
            sha256: self.sha256.clone(),
        }
    }

    /// The upstream version (`1:1.35.0-4+deb12u1` -> `1.35.0`), for progress messages.
    pub(super) fn upstream_version(&self) -> &str {
        let v = self
            .version
            .split_once(':')
            .map_or(&*self.version, |(_, v)| v);
        v.rsplit_once('-').map_or(v, |(v, _)| v)
    }
}

/// One pinned source of the Root VM, as `rootvm/sources.manifest` gives it: what went
/// into the build, since every output is cached under a key over this hash and is
/// built only from a tarball verified against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedSource {
    /// The manifest's name for it: `linux`, `busybox`, `lua`.
    pub name: String,
    /// The Debian package it comes from (`linux-source-6.12`, `busybox`, `lua5.4`).
    pub package: String,
    /// The Debian version pinned (`1:1.35.0-4+deb12u1`).
    pub debian_version: String,
    /// The upstream version (`1.35.0`).
    pub upstream_version: String,
    /// Whether the tarball is shipped in a binary package (the kernel's) rather than
    /// being the upstream tarball of a source package.
    pub binary_package: bool,
    /// The tarball's file name.
    pub file: String,
    /// The tarball's SHA-256, lowercase hex.
    pub sha256: String,
}

pub(super) struct Manifest {
    sources: Vec<Source>,
}

impl Manifest {
    pub(super) fn load(path: &Path) -> Result<Manifest> {
        let text = read_text(path)?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Manifest> {
        let mut sources = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: `{line}`", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, method, apt_spec, sha256, file] = fields[..] else {
                return Err(bad("expected `name method package=version sha256 file`"));
            };
            let method = match method {
                "deb" => Method::Deb,
                "dsc" => Method::Dsc,
                _ => return Err(bad("method must be `deb` or `dsc`")),
            };
            let Some((_, version)) = apt_spec.split_once('=') else {
                return Err(bad("the package must be pinned as package=version"));
            };
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the sha256 must be 64 hex digits"));
            }
            if file.contains('/') {
                return Err(bad("the file must be a plain file name"));
            }
            sources.push(Source {
                name: name.to_string(),
                method,
                apt_spec: apt_spec.to_string(),
                version: version.to_string(),
                sha256: sha256.to_ascii_lowercase(),
                file: file.to_string(),
            });
        }
        Ok(Manifest { sources })
    }

    /// Every source, in the manifest's order.
    pub(super) fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub(super) fn get(&self, name: &str) -> Result<&Source> {
        self.sources
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("rootvm/sources.manifest has no `{name}` line"))
    }
}

/// Returns the verified tarball of `src` in the cache, fetching it first if needed:
/// from `$DIOSIX_SOURCES` if set, else with apt.
pub(super) fn fetch_source(src: &Source) -> Result<PathBuf> {
    let dir = cache_dir().join("sources");
    let dest = dir.join(&src.file);
    if dest.is_file() {
        // Re-checked on every use: the cache is outside the repo and could be altered.
        if sha256_file(&dest)? == src.sha256 {
            return Ok(dest);
        }
        println!(
            "[rootvm]   cached {} does not match its pin; fetching it again",
            dest.display()
        );
        fs::remove_file(&dest).map_err(|e| format!("cannot remove {}: {e}", dest.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = fresh_tmp(&dest)?;

    let fetched = match std::env::var_os("DIOSIX_SOURCES").filter(|d| !d.is_empty()) {
        Some(offline) => {
            let path = PathBuf::from(&offline).join(&src.file);
            if !path.is_file() {
                return Err(format!(
                    "fetching {}: DIOSIX_SOURCES={} has no {} (put the pinned file there, \
                     or unset DIOSIX_SOURCES to download it with apt)",
                    src.name,
                    PathBuf::from(offline).display(),
                    src.file
                ));
            }
            println!("[rootvm]   using {}", path.display());
            path
        }
        None => apt_fetch(src, &tmp)?,
    };
    verify(&fetched, src)?;
    // Copy into the temp dir first (unless apt already put it there) so the final name
    // only ever appears, by rename, with verified contents.
    let staged = tmp.join(&src.file);
    if fetched != staged {
        fs::copy(&fetched, &staged)
            .map_err(|e| format!("cannot copy {}: {e}", fetched.display()))?;
    }
    fs::rename(&staged, &dest).map_err(|e| format!("cannot move {}: {e}", staged.display()))?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(dest)
}

/// Downloads `src` with apt into `tmp` and returns the path of its tarball there.
fn apt_fetch(src: &Source, tmp: &Path) -> Result<PathBuf> {
    let out = tmp.join(&src.file);
    match src.method {
        Method::Deb => {
            need_tools("fetching sources", &["apt-get", "dpkg-deb", "tar"])?;
            println!("[rootvm]   apt-get download {}", src.apt_spec);
            process::run_quiet(
                Command::new("apt-get")
                    .args(["download", &src.apt_spec])
                    .current_dir(tmp),
            )
            .map_err(|e| {
                format!(
                    "apt-get download {} failed: is bookworm-security or bookworm-backports in \
                     the apt sources (then `apt-get update`)? Offline, put {} in a directory \
                     and set DIOSIX_SOURCES to it.\n{e}",
                    src.apt_spec, src.file
                )
            })?;
            let deb = find_file(tmp, ".deb")?;
            // Only the tarball is taken out of the package; installing it would write
            // to /usr/src and need root.
            extract_from_deb(&deb, &format!("./usr/src/{}", src.file), &out)?;
            let _ = fs::remove_file(&deb);
        }
        Method::Dsc => {
            need_tools("fetching sources", &["apt-get"])?;
            println!("[rootvm]   apt-get source --download-only {}", src.apt_spec);
            process::run_quiet(
                Command::new("apt-get")
                    .args(["source", "--download-only", &src.apt_spec])
                    .current_dir(tmp),
            )
            .map_err(|e| {
                format!(
                    "apt-get source --download-only {} failed: are there `deb-src` entries for \
                     bookworm in the apt sources (then `apt-get update`)? Offline, put {} in a \
                     directory and set DIOSIX_SOURCES to it.\n{e}",
                    src.apt_spec, src.file
                )
            })?;
        }
    }
    if !out.is_file() {
        return Err(format!(
            "fetching {}: apt did not produce {} (does the manifest name the right file?)",
            src.apt_spec, src.file
        ));
    }
    Ok(out)
}

/// `dpkg-deb --fsys-tarfile deb | tar -xO member > out`.
fn extract_from_deb(deb: &Path, member: &str, out: &Path) -> Result<()> {
    let fail = |e: String| format!("extracting {member} from {}: {e}", deb.display());
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run dpkg-deb: {e}")))?;
    let pipe = dpkg.stdout.take().expect("stdout was piped");
    let file = fs::File::create(out).map_err(|e| fail(e.to_string()))?;
    let tar = Command::new("tar")
        .args(["-xO", member])
        .stdin(pipe)
        .stdout(file)
        .status()
        .map_err(|e| fail(format!("cannot run tar: {e}")))?;
    let dpkg = dpkg.wait().map_err(|e| fail(e.to_string()))?;
    if !dpkg.success() || !tar.success() {
        return Err(fail(format!("dpkg-deb: {dpkg}, tar: {tar}")));
    }
    Ok(())
}

/// Fails unless `path` has the SHA-256 pinned for `src`.
fn verify(path: &Path, src: &Source) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != src.sha256 {
        return Err(format!(
            "hash mismatch for {}:\n  expected sha256 {}\n  actual   sha256 {}\n\
             It is not the pinned {} ({}). If the pin was changed on purpose, update \
             rootvm/sources.manifest; otherwise remove the file and build again.",
            path.display(),
            src.sha256,
            actual,
            src.file,
            src.apt_spec
        ));
    }
    Ok(())
}

/// Unpacks a tarball (any compression GNU tar recognises) into `dir`, dropping the
/// top-level directory every one of ours has.
pub(super) fn extract(tarball: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    process::run_quiet(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(dir)
            .arg("--strip-components=1"),
    )
    .map_err(|e| format!("extracting {}: {e}", tarball.display()))
}

#[cfg(test)]
mod tests {
    use super::super::rootvm_dir;
    use super::*;

    #[test]
    fn manifest_parses_and_rejects_bad_lines() {
        let m = Manifest::parse(
            "# comment\n\nlua dsc lua5.4=5.4.4-3+deb12u1 \
             164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61 lua.tar.gz\n",
        )
        .unwrap();
        let lua = m.get("lua").unwrap();
        assert_eq!(lua.method, Method::Dsc);
        assert_eq!(lua.upstream_version(), "5.4.4");
        assert!(Manifest::parse("lua dsc lua5.4 abc f\n").is_err());
        assert!(Manifest::parse("lua zip lua5.4=1 abc f\n").is_err());
    }

    #[test]
    fn the_repo_manifest_pins_all_three_sources() {
        let m = Manifest::load(&rootvm_dir().join("sources.manifest")).unwrap();
        for name in ["linux", "busybox", "lua"] {
            m.get(name).unwrap();
        }
        assert_eq!(m.get("busybox").unwrap().upstream_version(), "1.35.0");
        assert_eq!(m.get("linux").unwrap().upstream_version(), "6.12.117");
    }
}
