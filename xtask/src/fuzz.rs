//! `cargo xtask fuzz`: host fuzzing of every parser a guest or the firmware feeds
//! (`crates/fuzz`, documented in `docs/fuzzing.md`).
//!
//! `cargo xtask fuzz [--iterations N] [--target NAME[,NAME...]] [--seed S] [--no-coverage]`
//! `cargo xtask fuzz --replay FILE --target NAME`
//! `cargo xtask fuzz --list`
//!
//! Builds `diosix-fuzz` with the `fuzz` profile (release optimisation, unwinding panics,
//! overflow checks, debug assertions) and, unless `--no-coverage`, with
//! `-C instrument-coverage` and the `coverage` feature, so the fuzzer keeps inputs that
//! reach new code. It builds into its own target directory (`target/fuzz-build`): the
//! instrumentation flags would otherwise invalidate the workspace's build cache. Default:
//! 1,000,000 inputs per target. Findings (panics, heap use over 64 MiB) are saved under
//! `target/fuzz-findings/` with a `.txt` description; the command fails if there are any.

use crate::{process, workspace_root, Result};
use std::path::PathBuf;
use std::process::Command;

/// Inputs per target of the short run in `cargo xtask test`.
pub const CI_ITERATIONS: u64 = 20_000;

struct Opts {
    coverage: bool,
    /// Arguments passed through to the fuzzer.
    pass: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        coverage: true,
        pass: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-coverage" => o.coverage = false,
            "--iterations" | "-n" | "--target" | "-t" | "--seed" | "--replay" => {
                let v = it.next().ok_or(format!("{a} needs a value"))?;
                let v = if a == "--replay" {
                    // Relative to where the user stands, not to the workspace.
                    std::path::absolute(v)
                        .map_err(|e| format!("{v}: {e}"))?
                        .display()
                        .to_string()
                } else {
                    v.clone()
                };
                o.pass.push(a.clone());
                o.pass.push(v);
            }
            "--list" => o.pass.push(a.clone()),
            other => {
                return Err(format!(
                    "fuzz: unknown argument `{other}` (usage: cargo xtask fuzz [--iterations N] \
                     [--target NAME] [--seed S] [--no-coverage] | --replay FILE --target NAME | --list)"
                ))
            }
        }
    }
    Ok(o)
}

/// Builds the fuzzer; returns the binary.
fn build(coverage: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target").join(if coverage {
        "fuzz-build"
    } else {
        "fuzz-build-plain"
    });
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", "diosix-fuzz", "--profile", "fuzz"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("LLVM_PROFILE_FILE", "/dev/null");
    if coverage {
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        if !flags.is_empty() {
            flags.push(' ');
        }
        flags.push_str("-C instrument-coverage");
        cmd.env("RUSTFLAGS", flags).args(["--features", "coverage"]);
    }
    println!(
        "fuzz: building diosix-fuzz (profile fuzz{}) in {}",
        if coverage {
            ", -C instrument-coverage"
        } else {
            ""
        },
        target_dir.display()
    );
    process::run("building diosix-fuzz", &mut cmd)?;
    Ok(target_dir.join("fuzz").join("diosix-fuzz"))
}

fn run(bin: &PathBuf, pass: &[String]) -> Result<()> {
    let root = workspace_root();
    let out = root.join("target").join("fuzz-findings");
    let status = process::status(
        Command::new(bin)
            .current_dir(&root)
            .args(pass)
            .arg("--out")
            .arg(&out)
            // The profiler runtime would otherwise write default.profraw on exit.
            .env("LLVM_PROFILE_FILE", "/dev/null"),
    )?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found problems ({status}); inputs and backtraces are in {}",
            out.display()
        ))
    }
}

/// `cargo xtask fuzz`.
pub fn cmd_fuzz(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = build(o.coverage)?;
    run(&bin, &o.pass)
}

/// The short run of `cargo xtask test`'s host step: the fuzz crate's lints and unit
/// tests (it is not a default member, so the workspace-wide steps skip it), then
/// [`CI_ITERATIONS`] inputs per target.
pub fn ci() -> Result<()> {
    for args in [
        &[
            "clippy",
            "-p",
            "diosix-fuzz",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ][..],
        &["test", "-p", "diosix-fuzz"][..],
    ] {
        process::cargo(args)?;
    }
    let bin = build(true)?;
    run(&bin, &["--iterations".into(), CI_ITERATIONS.to_string()])
}
