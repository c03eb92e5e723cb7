//! The bill of materials of a hypervisor image: `cargo xtask build` writes it beside the
//! image (`target/diosix.sbom.json` beside `target/diosix.elf`), as CycloneDX 1.5 JSON
//! through the CycloneDX project's own `cyclonedx-bom` crate.
//!
//! It lists every component in the image:
//!
//! - the image itself (`metadata.component`: its SHA-256, the Root VM's command line,
//!   the source revision and `SOURCE_DATE_EPOCH` it was built at);
//! - the hypervisor (`diosix`) and every crate it links, from `cargo metadata` for its
//!   target, each with its version, licence and the SHA-256 of its `.crate` from
//!   `Cargo.lock`; the crates only its build uses (proc-macros, build scripts' own
//!   dependencies) are listed with scope `excluded`;
//! - Rust's prebuilt `core`/`alloc`/`std` (`rust-std`), at the toolchain's version;
//! - for the Linux Root VM: Linux, busybox and Lua with the Debian package, version and
//!   SHA-256 of the source tarball that `rootvm/sources.manifest` pins (every output is
//!   cached under a key over that hash and built only from a tarball verified against
//!   it), and the SHA-256 of what was built from it; `dsx` (`tools/dsx`, with the crates
//!   it links), `diosix.ko` (`rootvm/driver`), `diosix-workloads`, the two initramfs
//!   archives, and the cross toolchain's static C library and libgcc, which busybox,
//!   Lua, `dsx` and `diosix-workloads` link;
//! - for any other Root VM (`--root-vm FILE`, `--demo`): that file's name and SHA-256.
//!
//! `dependencies` says what contains or links what. The document is reproducible: the
//! only timestamp is `SOURCE_DATE_EPOCH` (else the commit's time), the serial number is
//! derived from the image's hash, no path of the build machine appears, and every list
//! is sorted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cargo_metadata::{
    DependencyKind, Metadata as CargoMetadata, MetadataCommand, Package, TargetKind,
};
use cyclonedx_bom::external_models::spdx::SpdxExpression;
use cyclonedx_bom::models::component::{Classification, Scope};
use cyclonedx_bom::models::dependency::{Dependencies, Dependency};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::license::{License, LicenseChoice, Licenses};
use cyclonedx_bom::models::property::{Properties, Property};
use cyclonedx_bom::models::tool::Tools;
use cyclonedx_bom::prelude::*;
use sha2::{Digest, Sha256};

use crate::rootvm::{sha256_file, RootVmArtifacts, CROSS};
use crate::{process, workspace_root, Result};

/// The CycloneDX version written.
pub const SPEC_VERSION: SpecVersion = SpecVersion::V1_5;

/// Overrides the source revision the bill of materials names (else `git rev-parse
/// HEAD`, with `-dirty` when the tree has changes): for builds outside a git checkout,
/// such as `cargo xtask repro`'s copies.
pub const REVISION_ENV: &str = "DIOSIX_SOURCE_REVISION";

/// Prefix of this project's CycloneDX property names.
const PROP: &str = "diosix:";

/// The Root VM an image holds, as far as its bill of materials is concerned.
#[derive(Debug, Clone)]
pub enum RootVmContents {
    /// The Linux Root VM built from the pinned sources.
    Linux(Box<RootVmArtifacts>),
    /// Any other file (`--root-vm FILE`, `--demo`).
    File(PathBuf),
}

/// One image and what it holds.
#[derive(Debug, Clone)]
pub struct ImageFacts<'a> {
    /// The image written.
    pub image: &'a Path,
    /// Its Root VM.
    pub root_vm: &'a RootVmContents,
    /// The Root VM's command line, if it has one.
    pub cmdline: Option<&'a str>,
    /// `--vcpus`, if given.
    pub vcpus: Option<u32>,
    /// `--ram` in MiB, if given.
    pub ram_mib: Option<u32>,
}

/// When and from which revision the image was built, and with which Rust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildContext {
    /// `SOURCE_DATE_EPOCH`, else the commit's time; `None` outside git without it.
    pub source_date_epoch: Option<i64>,
    /// See [`REVISION_ENV`].
    pub revision: Option<String>,
    /// `rustc -V`.
    pub rustc: String,
    /// `cargo -V`.
    pub cargo: String,
}

impl BuildContext {
    /// Reads the build's context from the environment and the git checkout.
    pub fn from_env() -> Result<BuildContext> {
        Ok(BuildContext {
            source_date_epoch: source_date_epoch()?,
            revision: source_revision(),
            rustc: tool_line(Command::new("rustc").arg("-V"))?,
            cargo: tool_line(Command::new(env!("CARGO")).arg("-V"))?,
        })
    }
}

/// `$SOURCE_DATE_EPOCH`, else the time of the checkout's last commit, else `None`.
pub fn source_date_epoch() -> Result<Option<i64>> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        let v = v.to_string_lossy();
        return v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"));
    }
    Ok(git(&["log", "-1", "--format=%ct"]).and_then(|t| t.trim().parse().ok()))
}

/// `$DIOSIX_SOURCE_REVISION`, else the checkout's commit (`-dirty` if it has changes).
pub fn source_revision() -> Option<String> {
    if let Some(v) = std::env::var_os(REVISION_ENV).filter(|v| !v.is_empty()) {
        return Some(v.to_string_lossy().into_owned());
    }
    let head = git(&["rev-parse", "HEAD"])?.trim().to_string();
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// What `git args` prints in the workspace, if it is a git checkout.
fn git(args: &[&str]) -> Option<String> {
    process::stdout(
        Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args),
    )
}

/// The first line `cmd` prints (a tool's version).
fn tool_line(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    process::stdout(cmd.current_dir(workspace_root()))
        .and_then(|out| out.lines().next().map(str::to_string))
        .ok_or_else(|| format!("{program} does not run"))
}

/// Where the bill of materials of `image` goes: `target/diosix.elf` ->
/// `target/diosix.sbom.json`.
pub fn sbom_path(image: &Path) -> PathBuf {
    image.with_extension("sbom.json")
}

/// Writes the bill of materials of an image beside it ([`sbom_path`]) and returns its
/// path.
pub fn write(facts: &ImageFacts<'_>) -> Result<PathBuf> {
    let bom = bill_of_materials(facts, &BuildContext::from_env()?)?;
    let out = sbom_path(facts.image);
    fs::write(&out, to_json(bom)?).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(out)
}

/// The bill of materials as CycloneDX JSON, ending in a newline.
pub fn to_json(bom: Bom) -> Result<Vec<u8>> {
    let mut json = Vec::new();
    bom.output_as_json_v1_5(&mut json)
        .map_err(|e| format!("writing the bill of materials as JSON: {e}"))?;
    json.push(b'\n');
    Ok(json)
}

/// Reads a bill of materials and checks it against the CycloneDX schema rules
/// `cyclonedx-bom` knows (formats, licence expressions, unique and resolvable refs).
pub fn read_and_validate(path: &Path) -> Result<Bom> {
    let file = fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let bom = Bom::parse_from_json(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: not a CycloneDX JSON document: {e}", path.display()))?;
    let result = bom.validate_version(SPEC_VERSION);
    if !result.passed() {
        let errors: Vec<String> = result
            .errors()
            .map(|(field, e)| format!("{field}: {e:?}"))
            .collect();
        return Err(format!(
            "{}: invalid CycloneDX {SPEC_VERSION}: {}",
            path.display(),
            errors.join("; ")
        ));
    }
    Ok(bom)
}

/// Components of `bom` with this name (the image's own included).
pub fn components_named<'a>(bom: &'a Bom, name: &str) -> Vec<&'a Component> {
    let meta = bom.metadata.as_ref().and_then(|m| m.component.as_ref());
    let listed = bom.components.iter().flat_map(|c| c.0.iter());
    meta.into_iter()
        .chain(listed)
        .filter(|c| c.name.to_string() == name)
        .collect()
}

/// Fails unless the bill of materials lists the image (`diosix`) and, for a Linux
/// Root VM, `linux`, `busybox`, `lua` and `dsx`: the check `cargo xtask repro` makes of
/// the documents it builds.
pub fn check_lists_image_parts(bom: &Bom, linux: bool) -> Result<()> {
    let mut names = vec!["diosix", "rust-std"];
    if linux {
        names.extend(["linux", "busybox", "lua", "dsx", "diosix.ko"]);
    }
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|n| components_named(bom, n).is_empty())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the bill of materials lists no {}",
            missing.join(", ")
        ))
    }
}

/// The licence of each pinned source, by its name in `rootvm/sources.manifest`.
const SOURCE_LICENSES: &[(&str, &str)] = &[
    ("linux", "GPL-2.0-only WITH Linux-syscall-note"),
    ("busybox", "GPL-2.0-only"),
    ("lua", "MIT"),
];

/// `diosix.ko`'s `MODULE_LICENSE("Dual MIT/GPL")`, as SPDX.
const DRIVER_LICENSE: &str = "MIT OR GPL-2.0-only";

/// The licence of Rust's `core`, `alloc` and `std`.
const RUST_STD_LICENSE: &str = "MIT OR Apache-2.0";

/// The static libraries of the cross toolchain that the Root VM's C and Rust programs
/// link: (component name, file `gcc -print-file-name` finds, licence).
const STATIC_LIBS: &[(&str, &str, &str)] = &[
    ("glibc", "libc.a", "LGPL-2.1-or-later"),
    (
        "libgcc",
        "libgcc.a",
        "GPL-3.0-or-later WITH GCC-exception-3.1",
    ),
];

/// Builds the bill of materials of one image.
pub fn bill_of_materials(facts: &ImageFacts<'_>, ctx: &BuildContext) -> Result<Bom> {
    let image_sha = sha256_file(facts.image)?;
    let mut parts = Parts::default();

    // The hypervisor, and dsx for the Linux Root VM, with the crates they link.
    let hypervisor = parts.crates_of("diosix", crate::build::TARGET)?;
    let linux = match facts.root_vm {
        RootVmContents::Linux(a) => Some(a),
        RootVmContents::File(_) => None,
    };
    let dsx = match linux {
        Some(_) => Some(parts.crates_of("dsx", crate::tools::LINUX_TARGET)?),
        None => None,
    };
    let rust_version = ctx
        .rustc
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_string();
    let rust_std = format!("rust-std@{rust_version}");
    let mut std_props = vec![prop("rustc", &ctx.rustc)];
    std_props.push(prop(
        "linked-into",
        if linux.is_some() {
            "diosix dsx"
        } else {
            "diosix"
        },
    ));
    parts.add(
        component(
            Classification::Library,
            "rust-std",
            &rust_version,
            &rust_std,
        )
        .licensed(RUST_STD_LICENSE)
        .with_props(std_props),
        &[],
    );
    parts.depend(&hypervisor, &rust_std);

    let mut image_deps = vec![hypervisor.clone()];
    let mut tools = vec![
        tool("xtask", env!("CARGO_PKG_VERSION")),
        tool("rustc", &ctx.rustc),
        tool("cargo", &ctx.cargo),
    ];
    match facts.root_vm {
        RootVmContents::File(path) => {
            let name = path
                .file_name()
                .map_or("root-vm".into(), |n| n.to_string_lossy().into_owned());
            let mut c = component(Classification::Application, &name, "", "root-vm");
            c.version = None;
            c.hashes = Some(sha256(&sha256_file(path)?));
            parts.add(c.with_props(vec![prop("role", "the Root VM")]), &[]);
            image_deps.push("root-vm".into());
        }
        RootVmContents::Linux(a) => {
            let dsx = dsx.expect("looked up for a Linux Root VM");
            let root_vm = parts.linux_root_vm(a, &dsx, &rust_std)?;
            image_deps.extend(root_vm);
            tools.push(tool(
                &format!("{CROSS}gcc"),
                a.provenance.cross_gcc_version.lines().next().unwrap_or(""),
            ));
        }
    }

    let version = parts
        .version_of("diosix")
        .unwrap_or_else(|| "unknown".into());
    let file_name = facts
        .image
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let mut image_props = vec![prop("image-file", &file_name)];
    image_props.push(prop(
        "root-vm",
        match facts.root_vm {
            RootVmContents::Linux(_) => "linux",
            RootVmContents::File(_) => "file",
        },
    ));
    if let Some(c) = facts.cmdline {
        image_props.push(prop("cmdline", c));
    }
    if let Some(v) = facts.vcpus {
        image_props.push(prop("root-vm-vcpus", &v.to_string()));
    }
    if let Some(r) = facts.ram_mib {
        image_props.push(prop("root-vm-ram-mib", &r.to_string()));
    }
    if let Some(r) = &ctx.revision {
        image_props.push(prop("source-revision", r));
    }
    if let Some(e) = ctx.source_date_epoch {
        image_props.push(prop("source-date-epoch", &e.to_string()));
    }
    let mut image = component(Classification::Firmware, "diosix", &version, "image")
        .licensed("MIT")
        .with_props(image_props);
    image.description = Some(NormalizedString::new(
        "Diosix hypervisor image: the hypervisor ELF with its Root VM payload appended",
    ));
    image.hashes = Some(sha256(&image_sha));
    parts
        .dependencies
        .insert("image".into(), image_deps.into_iter().collect());

    let timestamp = match ctx.source_date_epoch {
        Some(epoch) => Some(rfc3339(epoch)?),
        None => None,
    };
    let mut serial = Sha256::new();
    serial.update(b"diosix-sbom\0");
    serial.update(image_sha.as_bytes());
    serial.update(format!("{:?}{:?}", ctx.source_date_epoch, ctx.revision).as_bytes());
    let metadata = metadata(timestamp, tools, image);
    let (components, dependencies) = parts.finish();
    Ok(Bom {
        version: 1,
        serial_number: Some(urn_uuid(&serial.finalize())?),
        metadata: Some(metadata),
        components: Some(Components(components)),
        dependencies: Some(Dependencies(dependencies)),
        spec_version: SPEC_VERSION,
        ..bom_without_serial()
    })
}

/// The document's metadata: when (`SOURCE_DATE_EPOCH`), with what, and what it
/// describes.
// Field by field: clippy's struct-update suggestion does not compile for this
// #[non_exhaustive] struct of another crate.
#[allow(clippy::field_reassign_with_default)]
fn metadata(timestamp: Option<DateTime>, tools: Vec<Component>, image: Component) -> Metadata {
    // Not Metadata::new(): it stamps the current time.
    let mut metadata = Metadata::default();
    metadata.timestamp = timestamp;
    metadata.tools = Some(Tools::Object {
        services: None,
        components: Some(Components(tools)),
    });
    metadata.component = Some(image);
    metadata
}

/// A `Bom` with no random serial number (`Bom::default()` makes one up).
fn bom_without_serial() -> Bom {
    Bom {
        serial_number: None,
        ..Bom::default()
    }
}

/// The components and the dependency graph being gathered, keyed by `bom-ref`, so the
/// document comes out sorted whatever order they were found in.
#[derive(Default)]
struct Parts {
    components: BTreeMap<String, Component>,
    dependencies: BTreeMap<String, BTreeSet<String>>,
    /// `cargo metadata` of the workspace per target, and `Cargo.lock`'s checksums.
    checksums: Option<BTreeMap<(String, String, String), String>>,
    versions: BTreeMap<String, String>,
}

impl Parts {
    fn add(&mut self, c: Component, deps: &[&str]) {
        let r = c.bom_ref.clone().expect("every component has a bom-ref");
        let entry = self.dependencies.entry(r.clone()).or_default();
        entry.extend(deps.iter().map(|d| d.to_string()));
        self.components.insert(r, c);
    }

    fn depend(&mut self, from: &str, on: &str) {
        self.dependencies
            .entry(from.to_string())
            .or_default()
            .insert(on.to_string());
    }

    fn version_of(&self, workspace_crate: &str) -> Option<String> {
        self.versions.get(workspace_crate).cloned()
    }

    /// Lists the crates package `root` links when built for `target`, and those only
    /// its build uses; returns `root`'s `bom-ref`.
    fn crates_of(&mut self, root: &str, target: &str) -> Result<String> {
        if self.checksums.is_none() {
            self.checksums = Some(lock_checksums(&workspace_root().join("Cargo.lock"))?);
        }
        let meta = cargo_metadata(target)?;
        let packages: BTreeMap<&str, &Package> = meta
            .packages
            .iter()
            .map(|p| (p.id.repr.as_str(), p))
            .collect();
        let resolve = meta
            .resolve
            .as_ref()
            .ok_or("cargo metadata resolved no dependencies")?;
        let nodes: BTreeMap<&str, _> = resolve
            .nodes
            .iter()
            .map(|n| (n.id.repr.as_str(), n))
            .collect();
        let root_pkg = meta
            .workspace_members
            .iter()
            .filter_map(|id| packages.get(id.repr.as_str()))
            .find(|p| p.name.as_str() == root)
            .ok_or_else(|| format!("the workspace has no package `{root}`"))?;
        // Walk the graph: a crate is linked if reached through normal dependencies
        // only, and through no proc-macro; otherwise (build dependency, proc-macro or
        // anything below one) it is build-only.
        let mut linked = BTreeSet::new();
        let mut build_only = BTreeSet::new();
        let mut edges: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut todo = vec![(root_pkg.id.repr.as_str(), false)];
        while let Some((id, build)) = todo.pop() {
            let seen = if build { &mut build_only } else { &mut linked };
            if !seen.insert(id) {
                continue;
            }
            let Some(node) = nodes.get(id) else { continue };
            for dep in &node.deps {
                let to = dep.pkg.repr.as_str();
                let proc_macro = packages.get(to).is_some_and(|p| is_proc_macro(p));
                for kind in &dep.dep_kinds {
                    let dep_build = match kind.kind {
                        DependencyKind::Normal => build || proc_macro,
                        DependencyKind::Build => true,
                        _ => continue,
                    };
                    edges.insert((id, to));
                    todo.push((to, dep_build));
                }
            }
        }
        let linked_refs: BTreeSet<&str> = linked.iter().copied().collect();
        for id in linked.iter().chain(build_only.difference(&linked)) {
            let p = packages[id];
            let is_linked = linked_refs.contains(id);
            let r = self.crate_component(p, root, is_linked, &meta)?;
            if p.source.is_none() {
                self.versions
                    .insert(p.name.to_string(), p.version.to_string());
            }
            for (_, to) in edges.iter().filter(|(from, _)| from == id) {
                let to_ref = crate_ref(packages[to]);
                self.depend(&r, &to_ref);
            }
        }
        Ok(crate_ref(root_pkg))
    }

    /// Adds (or, when another binary already listed it, updates) the component of one
    /// crate and returns its `bom-ref`.
    fn crate_component(
        &mut self,
        p: &Package,
        binary: &str,
        linked: bool,
        meta: &CargoMetadata,
    ) -> Result<String> {
        let r = crate_ref(p);
        let role = if linked {
            "linked-into"
        } else {
            "build-dependency-of"
        };
        if let Some(c) = self.components.get_mut(&r) {
            // Listed for the other binary: add this one to the property (and make it
            // required if this one links it).
            let props = c.properties.get_or_insert_with(|| Properties(Vec::new()));
            let name = format!("{PROP}{role}");
            match props.0.iter_mut().find(|p| p.name == name) {
                Some(prop) => {
                    let mut v: BTreeSet<String> = prop.value.split(' ').map(String::from).collect();
                    v.insert(binary.to_string());
                    prop.value =
                        NormalizedString::new(&v.into_iter().collect::<Vec<_>>().join(" "));
                }
                None => props.0.push(Property::new(name, binary)),
            }
            props.0.sort_by(|a, b| a.name.cmp(&b.name));
            if linked {
                c.scope = Some(Scope::Required);
            }
            return Ok(r);
        }
        let kind = match p.name.as_str() {
            "diosix" => Classification::Firmware,
            "dsx" => Classification::Application,
            _ => Classification::Library,
        };
        let mut c = component(kind, p.name.as_str(), &p.version.to_string(), &r);
        c.scope = Some(if linked {
            Scope::Required
        } else {
            Scope::Excluded
        });
        c.description = p
            .description
            .as_deref()
            .map(|d| NormalizedString::new(d.trim()));
        c.licenses = crate_license(p);
        // The binary itself says nothing about linking into itself.
        let mut props = Vec::new();
        if p.name.as_str() != binary {
            props.push(prop(role, binary));
        }
        match &p.source {
            Some(source) => {
                let key = (
                    p.name.to_string(),
                    p.version.to_string(),
                    source.repr.clone(),
                );
                let checksums = self.checksums.as_ref().expect("read first");
                if let Some(sum) = checksums.get(&key) {
                    c.hashes = Some(sha256(sum));
                }
                if source.is_crates_io() {
                    c.purl = Some(purl(
                        "cargo",
                        None,
                        p.name.as_str(),
                        &p.version.to_string(),
                        &[],
                    )?);
                }
                props.push(prop("source", &source.repr));
            }
            None => {
                // Relative to the workspace, so no checkout's path is in the document.
                let dir = p
                    .manifest_path
                    .parent()
                    .and_then(|d| d.strip_prefix(&meta.workspace_root).ok())
                    .map_or_else(|| p.name.to_string(), |d| d.to_string());
                props.push(prop("source", &format!("workspace:{dir}")));
            }
        }
        props.sort_by(|a, b| a.name.cmp(&b.name));
        c.properties = Some(Properties(props));
        self.components.insert(r.clone(), c);
        self.dependencies.entry(r.clone()).or_default();
        Ok(r)
    }

    /// Adds the Linux Root VM's parts; returns the `bom-ref`s the image holds directly.
    fn linux_root_vm(
        &mut self,
        a: &RootVmArtifacts,
        dsx: &str,
        rust_std: &str,
    ) -> Result<Vec<String>> {
        let p = &a.provenance;
        let built = |what: &str| p.built.iter().find(|(w, _)| *w == what).map(|(_, f)| f);
        let version = self
            .version_of("diosix")
            .unwrap_or_else(|| "unknown".into());

        // The cross toolchain's static libraries, in every static program.
        let mut libs = Vec::new();
        for (name, file, license) in STATIC_LIBS {
            let (package, pkg_version) = debian_package_of(file).unzip();
            let r = format!("{name}@static");
            let mut c = component(
                Classification::Library,
                name,
                pkg_version.as_deref().unwrap_or(""),
                &r,
            )
            .licensed(license);
            if pkg_version.is_none() {
                c.version = None;
            }
            let mut props = vec![
                prop("linked-into", "busybox diosix-workloads dsx lua"),
                prop("linked", "statically"),
            ];
            if let (Some(pkg), Some(v)) = (&package, &pkg_version) {
                props.push(prop("debian-package", &format!("{pkg}={v}")));
                c.purl = Some(purl("deb", Some("debian"), pkg, v, &[])?);
            }
            self.add(c.with_props(props), &[]);
            libs.push(r);
        }
        let lib_refs: Vec<&str> = libs.iter().map(String::as_str).collect();

        // Linux, busybox and Lua from their pinned tarballs.
        let mut source_refs = BTreeMap::new();
        for s in &p.sources {
            let license = SOURCE_LICENSES
                .iter()
                .find(|(n, _)| *n == s.name)
                .map(|(_, l)| *l)
                .ok_or_else(|| {
                    format!(
                        "sbom.rs knows no licence for `{}` of rootvm/sources.manifest: add it to \
                         SOURCE_LICENSES",
                        s.name
                    )
                })?;
            let arch = if s.binary_package { "all" } else { "source" };
            let kind = if s.name == "linux" {
                Classification::OperatingSystem
            } else {
                Classification::Application
            };
            let r = format!("{}@{}", s.name, s.upstream_version);
            let mut c = component(kind, &s.name, &s.upstream_version, &r).licensed(license);
            c.hashes = Some(sha256(&s.sha256));
            c.purl = Some(purl(
                "deb",
                Some("debian"),
                &s.package,
                &s.debian_version,
                &[("arch", arch)],
            )?);
            let mut props = vec![
                prop(
                    "debian-package",
                    &format!("{}={}", s.package, s.debian_version),
                ),
                prop("source-file", &s.file),
                prop("pinned-in", "rootvm/sources.manifest"),
            ];
            let output = match s.name.as_str() {
                "linux" => Some(("arch/riscv/boot/Image", a.kernel_image.clone())),
                "busybox" => built("busybox").map(|f| ("busybox", f.clone())),
                "lua" => built("lua").map(|f| ("lua", f.clone())),
                _ => None,
            };
            if let Some((name, file)) = output {
                props.push(prop("built-file", name));
                props.push(prop("built-sha256", &sha256_file(&file)?));
            }
            match s.name.as_str() {
                "linux" => props.push(prop("config", "rootvm/linux.config")),
                "busybox" => props.push(prop("config", "rootvm/busybox.config")),
                _ => {}
            }
            let deps: &[&str] = if s.name == "linux" { &[] } else { &lib_refs };
            self.add(c.with_props(props), deps);
            source_refs.insert(s.name.clone(), r);
        }
        let src = |name: &str| -> Result<String> {
            source_refs
                .get(name)
                .cloned()
                .ok_or_else(|| format!("rootvm/sources.manifest has no `{name}`"))
        };

        // dsx, already listed with its crates: what was built, and what it links.
        if let Some(file) = built("dsx") {
            let sum = sha256_file(file)?;
            if let Some(c) = self.components.get_mut(dsx) {
                let props = c.properties.get_or_insert_with(|| Properties(Vec::new()));
                props.0.push(prop("built-sha256", &sum));
                props.0.push(prop("path-in-image", "/usr/bin/dsx"));
                props.0.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        self.depend(dsx, rust_std);
        for l in &libs {
            self.depend(dsx, l);
        }

        // Built here from this repository's C sources.
        let ours = |name: &str, kind, license: &str, source: &str, path: &str| {
            let file = built(name).ok_or_else(|| format!("the Root VM build made no {name}"))?;
            let c = component(kind, name, &version, name)
                .licensed(license)
                .with_props(vec![
                    prop("built-sha256", &sha256_file(file)?),
                    prop("path-in-image", path),
                    prop("source", &format!("workspace:{source}")),
                ]);
            Ok::<Component, String>(c)
        };
        let driver = ours(
            "diosix.ko",
            Classification::DeviceDriver,
            DRIVER_LICENSE,
            "rootvm/driver",
            "/lib/modules/diosix.ko",
        )?;
        let workloads = ours(
            "diosix-workloads",
            Classification::Application,
            "MIT",
            "rootvm/workloads",
            "/usr/bin/diosix-workloads",
        )?;
        let guest = ours(
            "guest-initramfs",
            Classification::File,
            "MIT",
            "rootvm/guest-initramfs",
            "/usr/share/diosix/guests/initramfs.cpio.gz",
        )?;
        let linux = src("linux")?;
        let busybox = src("busybox")?;
        let lua = src("lua")?;
        self.add(driver, &[&linux]);
        self.add(workloads, &lib_refs);
        self.add(guest, &[&busybox, dsx, "diosix.ko", &linux]);
        // The test guests (bare-metal Rust: `core` and the workspace's guest runtime).
        let mut test_guests = Vec::new();
        for &(name, path) in crate::tools::TEST_GUESTS {
            let c = ours(
                name,
                Classification::Application,
                "MIT",
                &format!("guests/{name}"),
                &format!("/{path}"),
            )?;
            self.add(c, &[rust_std]);
            test_guests.push(name);
        }

        let mut initramfs = component(Classification::File, "initramfs", &version, "initramfs")
            .licensed("MIT")
            .with_props(vec![
                prop("built-sha256", &sha256_file(&a.initramfs)?),
                prop("source", "workspace:rootvm/initramfs"),
            ]);
        initramfs.description = Some(NormalizedString::new(
            "The Root VM's initramfs (gzip'd newc cpio); holds the guest Linux's kernel and \
             initramfs under /usr/share/diosix/guests",
        ));
        let mut parts = vec![
            busybox.as_str(),
            lua.as_str(),
            dsx,
            "diosix.ko",
            "diosix-workloads",
            "guest-initramfs",
            linux.as_str(),
        ];
        parts.extend(test_guests);
        self.add(initramfs, &parts);
        Ok(vec![linux, "initramfs".into()])
    }

    /// The components sorted by `bom-ref`, and the dependency graph (each list sorted).
    fn finish(self) -> (Vec<Component>, Vec<Dependency>) {
        let deps = self
            .dependencies
            .into_iter()
            .map(|(r, on)| Dependency {
                dependency_ref: r,
                dependencies: on.into_iter().collect(),
            })
            .collect();
        (self.components.into_values().collect(), deps)
    }
}

/// `cargo metadata` of the workspace, dependencies resolved for `target`.
fn cargo_metadata(target: &str) -> Result<CargoMetadata> {
    MetadataCommand::new()
        .cargo_path(env!("CARGO"))
        .current_dir(workspace_root())
        .manifest_path(workspace_root().join("Cargo.toml"))
        .other_options(vec![
            "--locked".to_string(),
            "--filter-platform".to_string(),
            target.to_string(),
        ])
        .exec()
        .map_err(|e| format!("cargo metadata --filter-platform {target}: {e}"))
}

/// `Cargo.lock`'s checksum (SHA-256 of the `.crate`) of each registry package, by
/// (name, version, source).
fn lock_checksums(lock: &Path) -> Result<BTreeMap<(String, String, String), String>> {
    #[derive(serde::Deserialize)]
    struct LockFile {
        #[serde(default)]
        package: Vec<Locked>,
    }
    #[derive(serde::Deserialize)]
    struct Locked {
        name: String,
        version: String,
        source: Option<String>,
        checksum: Option<String>,
    }
    let text =
        fs::read_to_string(lock).map_err(|e| format!("cannot read {}: {e}", lock.display()))?;
    let parsed: LockFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", lock.display()))?;
    Ok(parsed
        .package
        .into_iter()
        .filter_map(|p| Some(((p.name, p.version, p.source?), p.checksum?)))
        .collect())
}

fn is_proc_macro(p: &Package) -> bool {
    p.targets
        .iter()
        .any(|t| t.kind.contains(&TargetKind::ProcMacro))
}

/// A crate's `bom-ref`: its purl for a registry crate, `crate:name@version` for one of
/// the workspace (which is on no registry).
fn crate_ref(p: &Package) -> String {
    match &p.source {
        Some(s) if s.is_crates_io() => format!("pkg:cargo/{}@{}", p.name, p.version),
        Some(s) => format!("crate:{}@{}+{}", p.name, p.version, s.repr),
        None => format!("crate:{}@{}", p.name, p.version),
    }
}

/// A crate's `license` as an SPDX expression (`MIT/Apache-2.0` read as
/// `MIT OR Apache-2.0`), else as a named licence, else its licence file's name.
fn crate_license(p: &Package) -> Option<Licenses> {
    if let Some(l) = &p.license {
        let choice = match SpdxExpression::parse_lax(l.clone()) {
            Ok(e) => LicenseChoice::Expression(e),
            Err(_) => LicenseChoice::License(License::named_license(l)),
        };
        return Some(Licenses(vec![choice]));
    }
    p.license_file.as_ref().map(|f| {
        let name = f.file_name().unwrap_or("license file");
        Licenses(vec![LicenseChoice::License(License::named_license(
            &format!("see {name} in the crate"),
        ))])
    })
}

/// The Debian package that installed the cross toolchain's `file`, with its version.
fn debian_package_of(file: &str) -> Option<(String, String)> {
    let path = process::stdout(
        Command::new(format!("{CROSS}gcc")).arg(format!("-print-file-name={file}")),
    )?;
    // gcc names it through its own directory (`.../12/../../../../riscv64-linux-gnu/`),
    // which dpkg does not know.
    let path = fs::canonicalize(path.trim()).ok()?;
    let owner = process::stdout(Command::new("dpkg").arg("-S").arg(&path))?;
    let package = owner.lines().next()?.split(':').next()?.trim().to_string();
    let version =
        process::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", &package]))?;
    Some((package, version.trim().to_string()))
}

/// A component with a name, version and `bom-ref`.
fn component(kind: Classification, name: &str, version: &str, bom_ref: &str) -> Component {
    Component::new(kind, name, version, Some(bom_ref.to_string()))
}

/// Builder-style additions to a [`Component`].
trait ComponentExt {
    fn licensed(self, spdx: &str) -> Self;
    fn with_props(self, props: Vec<Property>) -> Self;
}

impl ComponentExt for Component {
    fn licensed(mut self, spdx: &str) -> Self {
        self.licenses = Some(Licenses(vec![LicenseChoice::expression(spdx)]));
        self
    }

    fn with_props(mut self, mut props: Vec<Property>) -> Self {
        props.sort_by(|a, b| a.name.cmp(&b.name));
        self.properties = Some(Properties(props));
        self
    }
}

/// A property named `diosix:<name>`.
fn prop(name: &str, value: &str) -> Property {
    Property::new(format!("{PROP}{name}"), value)
}

fn sha256(hex: &str) -> Hashes {
    Hashes(vec![Hash {
        alg: HashAlgorithm::SHA_256,
        content: HashValue(hex.to_string()),
    }])
}

/// A build tool, for `metadata.tools`.
fn tool(name: &str, version: &str) -> Component {
    Component::new(Classification::Application, name, version, None)
}

/// A package URL (`pkg:deb/debian/busybox@1:1.35.0-4+deb12u1?arch=source`).
fn purl(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    version: &str,
    qualifiers: &[(&str, &str)],
) -> Result<Purl> {
    let mut b = purl::GenericPurlBuilder::new(kind.to_string(), name).with_version(version);
    if let Some(ns) = namespace {
        b = b.with_namespace(ns);
    }
    for (k, v) in qualifiers {
        b = b
            .with_qualifier(*k, *v)
            .map_err(|e| format!("purl qualifier {k}={v}: {e}"))?;
    }
    let p = b
        .build()
        .map_err(|e| format!("purl for {name} {version}: {e}"))?;
    Ok(p.to_string().parse().expect("Purl parses any string"))
}

/// `epoch` as an RFC 3339 UTC timestamp (`1970-01-01T00:00:00Z`).
fn rfc3339(epoch: i64) -> Result<DateTime> {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch)
        .map_err(|e| format!("SOURCE_DATE_EPOCH {epoch}: {e}"))?;
    let s = t
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("SOURCE_DATE_EPOCH {epoch}: {e}"))?;
    DateTime::try_from(s).map_err(|e| format!("SOURCE_DATE_EPOCH {epoch}: {e:?}"))
}

/// A name-based (version 8, RFC 9562) UUID URN from the first 16 bytes of `digest`.
fn urn_uuid(digest: &[u8]) -> Result<UrnUuid> {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::rootvm::hex(&b);
    UrnUuid::new(format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
    .map_err(|e| format!("serial number: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootvm::{pinned_sources, RootVmProvenance};

    /// A Linux Root VM whose files are stand-ins in `dir`, with the real manifest.
    fn fake_linux_root_vm(dir: &Path) -> RootVmArtifacts {
        let file = |name: &str| {
            let path = dir.join(name);
            fs::write(&path, name.as_bytes()).unwrap();
            path
        };
        let built = [
            "busybox",
            "lua",
            "dsx",
            "diosix.ko",
            "diosix-workloads",
            "guest-initramfs",
        ]
        .into_iter()
        .chain(crate::tools::TEST_GUESTS.iter().map(|&(name, _)| name))
        .map(|what| (what, file(what)))
        .collect();
        RootVmArtifacts {
            kernel_image: file("Image"),
            initramfs: file("initramfs.cpio.gz"),
            cmdline: crate::rootvm::DEFAULT_CMDLINE.into(),
            linux_tree: dir.to_path_buf(),
            provenance: RootVmProvenance {
                sources: pinned_sources().unwrap(),
                cross_gcc_version: "riscv64-linux-gnu-gcc (test) 1.0\n".into(),
                built,
            },
        }
    }

    /// The crates `cargo tree` says `package` links for `target` (no proc-macros, no
    /// build dependencies): the oracle the bill of materials is checked against.
    fn cargo_tree(package: &str, target: &str) -> BTreeSet<String> {
        let out = process::stdout(
            Command::new(env!("CARGO"))
                .current_dir(workspace_root())
                .args(["tree", "--locked", "-e", "normal,no-proc-macro", "--prefix"])
                .args(["none", "--format", "{p}", "-p", package, "--target", target]),
        )
        .expect("cargo tree runs");
        out.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let name = words.next()?;
                let version = words.next()?.strip_prefix('v')?;
                Some(format!("{name}@{version}"))
            })
            .collect()
    }

    #[test]
    fn the_bill_of_materials_lists_every_part_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("xtask-sbom-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let image = dir.join("diosix.elf");
        fs::write(&image, b"not really an image").unwrap();
        let root_vm = RootVmContents::Linux(Box::new(fake_linux_root_vm(&dir)));
        let facts = ImageFacts {
            image: &image,
            root_vm: &root_vm,
            cmdline: Some("console=hvc0"),
            vcpus: None,
            ram_mib: Some(128),
        };
        let ctx = BuildContext {
            source_date_epoch: Some(1_700_000_000),
            revision: Some("0123abc".into()),
            rustc: "rustc 1.95.0 (59807616e 2026-04-14)".into(),
            cargo: "cargo 1.95.0".into(),
        };
        let json = to_json(bill_of_materials(&facts, &ctx).unwrap()).unwrap();
        // Reproducible: the same inputs give the same bytes.
        let again = to_json(bill_of_materials(&facts, &ctx).unwrap()).unwrap();
        assert!(json == again, "two runs gave different documents");
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            !text.contains(&*dir.to_string_lossy()),
            "a build path leaked"
        );
        assert!(!text.contains(&*workspace_root().to_string_lossy()));

        let path = sbom_path(&image);
        assert_eq!(path, dir.join("diosix.sbom.json"));
        fs::write(&path, &json).unwrap();
        let bom = read_and_validate(&path).unwrap();
        check_lists_image_parts(&bom, true).unwrap();
        let meta = bom.metadata.as_ref().unwrap();
        assert_eq!(
            meta.timestamp.as_ref().unwrap().to_string(),
            "2023-11-14T22:13:20Z"
        );
        let image_c = meta.component.as_ref().unwrap();
        let image_sha = image_c.hashes.as_ref().unwrap().0[0].content.0.clone();
        assert_eq!(image_sha, sha256_file(&image).unwrap());

        // Linux, busybox and Lua carry the pinned tarball's hash and a licence.
        for s in pinned_sources().unwrap() {
            let c = components_named(&bom, &s.name);
            assert_eq!(c.len(), 1, "{}", s.name);
            assert_eq!(c[0].hashes.as_ref().unwrap().0[0].content.0, s.sha256);
            assert!(c[0].licenses.is_some());
            assert!(c[0].purl.is_some());
        }

        // Every crate linked into the hypervisor and dsx is there, required, with the
        // checksum Cargo.lock has for it.
        let checksums = lock_checksums(&workspace_root().join("Cargo.lock")).unwrap();
        let listed: BTreeMap<String, &Component> = bom
            .components
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|c| {
                let v = c
                    .version
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                (format!("{}@{v}", c.name), c)
            })
            .collect();
        let hypervisor = cargo_tree("diosix", crate::build::TARGET);
        assert!(hypervisor.len() > 10, "{hypervisor:?}");
        let linked: BTreeSet<String> = hypervisor
            .iter()
            .chain(&cargo_tree("dsx", crate::tools::LINUX_TARGET))
            .cloned()
            .collect();
        // ... and no other crate is said to be linked.
        for (key, c) in &listed {
            let r = c.bom_ref.as_deref().unwrap_or("");
            let is_crate = r.starts_with("pkg:cargo/") || r.starts_with("crate:");
            if is_crate && c.scope == Some(Scope::Required) {
                assert!(linked.contains(key), "{key} is listed as linked");
            }
        }
        for expected in &linked {
            let c = listed
                .get(expected)
                .unwrap_or_else(|| panic!("{expected} is not listed"));
            assert_eq!(c.scope, Some(Scope::Required), "{expected}");
            let (name, version) = expected.split_once('@').unwrap();
            let lock = checksums
                .iter()
                .find(|((n, v, _), _)| n == name && v == version)
                .map(|(_, sum)| sum);
            let hash = c.hashes.as_ref().map(|h| &h.0[0].content.0);
            assert_eq!(hash, lock, "{expected}: the hash is Cargo.lock's checksum");
            assert!(c.licenses.is_some(), "{expected} has no licence");
        }
        // A proc-macro the hypervisor's build uses is listed, but as build-only.
        let macros = listed
            .values()
            .find(|c| c.name.to_string() == "riscv-macros")
            .expect("riscv-macros is listed");
        assert_eq!(macros.scope, Some(Scope::Excluded));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_root_vm_is_listed_by_name_and_hash() {
        let dir = std::env::temp_dir().join(format!("xtask-sbom-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let image = dir.join("x.elf");
        let guest = dir.join("guest.elf");
        fs::write(&image, b"image").unwrap();
        fs::write(&guest, b"guest").unwrap();
        let root_vm = RootVmContents::File(guest.clone());
        let facts = ImageFacts {
            image: &image,
            root_vm: &root_vm,
            cmdline: None,
            vcpus: Some(2),
            ram_mib: None,
        };
        let ctx = BuildContext {
            source_date_epoch: None,
            revision: None,
            rustc: "rustc 1.95.0".into(),
            cargo: "cargo 1.95.0".into(),
        };
        let bom = bill_of_materials(&facts, &ctx).unwrap();
        assert!(bom.validate_version(SPEC_VERSION).passed());
        assert!(bom.metadata.as_ref().unwrap().timestamp.is_none());
        let g = components_named(&bom, "guest.elf");
        assert_eq!(g.len(), 1);
        assert_eq!(
            g[0].hashes.as_ref().unwrap().0[0].content.0,
            sha256_file(&guest).unwrap()
        );
        assert!(components_named(&bom, "linux").is_empty());
        assert!(check_lists_image_parts(&bom, false).is_ok());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn serial_numbers_are_uuids_and_timestamps_rfc3339() {
        let u = urn_uuid(&[0xab; 32]).unwrap();
        assert_eq!(
            u.to_string(),
            "urn:uuid:abababab-abab-8bab-abab-abababababab"
        );
        assert_eq!(rfc3339(0).unwrap().to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            sbom_path(Path::new("target/diosix.elf")),
            Path::new("target/diosix.sbom.json")
        );
    }
}
