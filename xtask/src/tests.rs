//! `cargo xtask test`: host tests, lints, then the QEMU boot tests.
//!
//! `cargo xtask test [--opensbi] [--no-host] [FILTER...]`
//!
//! * host step: `cargo test` (default members), host clippy with `-D warnings`,
//!   `cargo fmt --check`, and clippy for the riscv64 crates (hypervisor and guests);
//! * QEMU step: each case boots a guest as the Diosix Root VM (`-bios none`) and checks
//!   its serial output. `--opensbi` (a development flag) boots the same guests directly
//!   on QEMU's OpenSBI instead, which validates the guests and this harness while the
//!   hypervisor is unfinished. FILTERs select cases whose name contains any of them
//!   (and skip the host step).
use crate::build::{self, ImageOptions, RootVm};
use crate::guests::{self, GUESTS, GUEST_TARGET};
use crate::qemu::{self, Bios, QemuOptions};
use crate::{workspace_root, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Something the output must contain.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A substring.
    Text(&'static str),
    /// A substring on Diosix, another on OpenSBI (e.g. the implementation id).
    Either {
        diosix: &'static str,
        opensbi: &'static str,
    },
    /// A closing line `<tool>: N passed, 0 failed` with N > 0.
    Summary(&'static str),
}

/// How a case boots.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Boot the guest and check its output.
    Boot,
    /// A Root VM file (relative to the workspace) that is no kernel: `build_image` must
    /// refuse it, or the hypervisor must print an `ERROR` line and stop QEMU.
    ImageRejected(&'static str),
}

/// One QEMU test case.
#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    guest: &'static str,
    kind: Kind,
    /// Root VM vCPUs on Diosix; the `-smp` on OpenSBI, where vCPUs are harts.
    vcpus: u32,
    /// Host harts (`-smp`) on Diosix.
    smp: u32,
    /// Root VM RAM in MiB on Diosix (`None` = hypervisor default).
    ram_mib: Option<u32>,
    /// Command line: Root VM cmdline on Diosix, `-append` on OpenSBI.
    cmdline: Option<&'static str>,
    expect: &'static [Expect],
    /// Console interaction: (wait for, then send).
    interact: &'static [(&'static str, &'static str)],
    timeout_s: u64,
}

/// Lines that fail any case wherever they appear.
/// (`FAIL` only at the start of a line: the guests' own failure lines.)
const FORBIDDEN: &[&str] = &["panicked", "sbi_trap_error", "Unhandled exception"];

const SBI_TESTS: &[Expect] = &[
    Expect::Summary("sbi-tests"),
    Expect::Either {
        diosix: "info impl id 5",
        opensbi: "info impl id 1",
    },
];
const SBI_TESTING: &[Expect] = &[Expect::Text("sbi-testing: PASS")];

fn case(
    name: &'static str,
    guest: &'static str,
    vcpus: u32,
    smp: u32,
    expect: &'static [Expect],
) -> Case {
    Case {
        name,
        guest,
        kind: Kind::Boot,
        vcpus,
        smp,
        ram_mib: None,
        cmdline: None,
        expect,
        interact: &[],
        timeout_s: 120,
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case("sbi-tests-smp1", "sbi-tests", 1, 1, SBI_TESTS),
        case("sbi-tests-smp2", "sbi-tests", 2, 2, SBI_TESTS),
        case("sbi-tests-smp4", "sbi-tests", 4, 4, SBI_TESTS),
        // More vCPUs than host harts: HSM, IPIs and fences across descheduled vCPUs.
        case("sbi-tests-4vcpu-smp1", "sbi-tests", 4, 1, SBI_TESTS),
        Case {
            cmdline: Some("legacy-shutdown"),
            ..case(
                "sbi-tests-legacy-shutdown",
                "sbi-tests",
                1,
                1,
                &[
                    Expect::Summary("sbi-tests"),
                    Expect::Text("sbi-tests: legacy shutdown"),
                ],
            )
        },
        case("sbi-testing-smp1", "sbi-testing", 1, 1, SBI_TESTING),
        case("sbi-testing-smp2", "sbi-testing", 2, 2, SBI_TESTING),
        case("sbi-testing-smp4", "sbi-testing", 4, 4, SBI_TESTING),
        case("sbi-testing-smp8", "sbi-testing", 8, 8, SBI_TESTING),
        case(
            "smp-8vcpu-smp2",
            "smp",
            8,
            2,
            &[Expect::Text("smp: 8 harts, all rounds ok")],
        ),
        case(
            "smp-4vcpu-smp1",
            "smp",
            4,
            1,
            &[Expect::Text("smp: 4 harts, all rounds ok")],
        ),
        case(
            "smp-2vcpu-smp2",
            "smp",
            2,
            2,
            &[Expect::Text("smp: 2 harts, all rounds ok")],
        ),
        Case {
            interact: &[("type to echo", "hello\r"), ("hello", "q")],
            ..case(
                "demo-echo",
                "demo",
                2,
                2,
                &[
                    Expect::Text("Diosix demo guest: hello from hart"),
                    Expect::Text("demo: 2 of 2 vCPUs said hello"),
                    Expect::Text("demo: bye"),
                ],
            )
        },
        // Small Root VM RAM: the guest must still see (and report) what it was given.
        Case {
            ram_mib: Some(64),
            interact: &[("type to echo", "q")],
            ..case(
                "demo-64mib",
                "demo",
                1,
                1,
                &[Expect::Text("demo: 1 of 1 vCPUs said hello")],
            )
        },
    ];
    // Bad input: the image builder must refuse a Root VM that is not a kernel image.
    v.push(Case {
        kind: Kind::ImageRejected("Cargo.toml"),
        ..case("bad-rootvm-not-elf", "demo", 1, 1, &[])
    });
    v.push(Case {
        kind: Kind::ImageRejected("target/does-not-exist.elf"),
        ..case("bad-rootvm-missing", "demo", 1, 1, &[])
    });
    for c in v.iter_mut() {
        if let Some(t) = std::env::var("DIOSIX_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            c.timeout_s = t;
        }
    }
    v
}

/// Runs `cargo <args>` in the workspace, echoing the command.
fn cargo(args: &[&str]) -> Result<()> {
    println!("+ cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Host tests and every lint.
fn host_checks() -> Result<()> {
    cargo(&["test"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["fmt", "--all", "--check"])?;
    let mut args = vec![
        "clippy",
        "--release",
        "--target",
        GUEST_TARGET,
        "-p",
        "diosix",
        "-p",
        "diosix-riscv",
        "-p",
        "diosix-guest-rt",
    ];
    let pkgs: Vec<String> = GUESTS.iter().map(|g| guests::package(g)).collect();
    for p in &pkgs {
        args.push("-p");
        args.push(p);
    }
    args.extend(["--", "-D", "warnings"]);
    cargo(&args)
}

/// Checks the output of a boot against the case; returns the reasons it failed.
fn judge(c: &Case, out: &str, opensbi: bool) -> Vec<String> {
    let mut why = Vec::new();
    for e in c.expect {
        match *e {
            Expect::Text(t) => {
                if !out.contains(t) {
                    why.push(format!("missing `{t}`"));
                }
            }
            Expect::Either { diosix, opensbi: o } => {
                let t = if opensbi { o } else { diosix };
                if !out.contains(t) {
                    why.push(format!("missing `{t}`"));
                }
            }
            Expect::Summary(tool) => match summary(out, tool) {
                Some((p, 0)) if p > 0 => {}
                Some((p, f)) => why.push(format!("{tool}: {p} passed, {f} failed")),
                None => why.push(format!("no `{tool}: N passed, M failed` line")),
            },
        }
    }
    for line in out.lines() {
        if line.trim_start().starts_with("FAIL") || FORBIDDEN.iter().any(|f| line.contains(f)) {
            why.push(format!("forbidden line `{}`", line.trim()));
        }
    }
    why
}

/// Parses the last `<tool>: N passed, M failed` line.
fn summary(out: &str, tool: &str) -> Option<(u32, u32)> {
    let prefix = format!("{tool}: ");
    out.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix(prefix.as_str())?;
        let (p, rest) = rest.split_once(" passed, ")?;
        let f = rest.strip_suffix(" failed")?;
        Some((p.parse().ok()?, f.parse().ok()?))
    })
}

/// Builds (once) the guests the selected cases need.
fn build_guests(cases: &[Case]) -> Result<HashMap<&'static str, PathBuf>> {
    let mut elfs = HashMap::new();
    for c in cases {
        if !elfs.contains_key(c.guest) {
            elfs.insert(c.guest, guests::build_guest(c.guest)?);
        }
    }
    Ok(elfs)
}

/// Runs one case; `Ok(())` on pass, `Err(reason)` on failure.
fn run_case(c: &Case, elf: &std::path::Path, opensbi: bool) -> Result<()> {
    let images = workspace_root().join("target").join("test-images");
    if let Kind::ImageRejected(file) = c.kind {
        let opts = ImageOptions {
            root_vm: RootVm::File(workspace_root().join(file)),
            vcpus: Some(c.vcpus),
            ram_mib: c.ram_mib,
            cmdline: None,
            out: images.join(format!("{}.elf", c.name)),
        };
        return match build::build_image(&opts) {
            // Refused up front, or...
            Err(e) if e != "not yet" => Ok(()),
            Err(_) => Err("build_image is not implemented yet".into()),
            // ...refused at boot: the hypervisor must report an error and stop QEMU
            // rather than hang or run garbage.
            Ok(image) => {
                let mut q = QemuOptions::new(c.name, image);
                q.timeout = Duration::from_secs(30);
                let out = qemu::run(&q)?;
                if out.output.contains("ERROR") {
                    Ok(())
                } else {
                    Err(format!(
                        "booted {file} without an ERROR line (log {})",
                        out.log.display()
                    ))
                }
            }
        };
    }
    let mut q = if opensbi {
        let mut q = QemuOptions::new(c.name, elf.to_path_buf());
        q.bios = Bios::Default;
        q.smp = c.vcpus;
        q.mem_mib = c.ram_mib.unwrap_or(128);
        q.append = c.cmdline.map(str::to_string);
        q
    } else {
        std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
        let image = build::build_image(&ImageOptions {
            root_vm: RootVm::File(elf.to_path_buf()),
            vcpus: Some(c.vcpus),
            ram_mib: c.ram_mib,
            cmdline: c.cmdline.map(str::to_string),
            out: images.join(format!("{}.elf", c.name)),
        })
        .map_err(|e| format!("build_image: {e}"))?;
        let mut q = QemuOptions::new(c.name, image);
        q.smp = c.smp;
        q
    };
    q.timeout = Duration::from_secs(c.timeout_s);
    q.interact = c
        .interact
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let out = qemu::run(&q)?;
    let mut why = judge(c, &out.output, opensbi);
    if let Some(st) = out.status {
        if !st.success() {
            why.push(format!("qemu exited with {st}"));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} (log {})\n{}",
            why.join("; "),
            out.log.display(),
            qemu::tail(&out.output, 10)
        ))
    }
}

/// Runs every test.
pub fn cmd_test(args: &[String]) -> Result<()> {
    let mut opensbi = false;
    let mut host = true;
    let mut filters = Vec::new();
    for a in args {
        match a.as_str() {
            "--opensbi" => opensbi = true,
            "--no-host" => host = false,
            s if s.starts_with('-') => return Err(format!("test: unknown option `{s}`")),
            s => filters.push(s.to_string()),
        }
    }
    if host && filters.is_empty() {
        host_checks()?;
    }
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        // Image-builder cases say nothing about OpenSBI.
        .filter(|c| !(opensbi && matches!(c.kind, Kind::ImageRejected(_))))
        .collect();
    if selected.is_empty() {
        return Err(format!("test: no case matches {filters:?}"));
    }
    let elfs = build_guests(&selected)?;
    let target = if opensbi { "OpenSBI" } else { "Diosix" };
    let (mut passed, mut failed) = (0, 0);
    for c in &selected {
        let start = Instant::now();
        let result = run_case(c, &elfs[c.guest], opensbi);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("PASS {} [{target}] ({secs:.1} s)", c.name);
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {} [{target}] ({secs:.1} s): {e}", c.name);
            }
        }
    }
    println!("qemu tests: {passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} QEMU test(s) failed"))
    }
}
