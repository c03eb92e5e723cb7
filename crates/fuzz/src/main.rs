//! `diosix-fuzz`: host fuzzing of every parser a guest or the firmware feeds Diosix.
//!
//! Run it through `cargo xtask fuzz` (see `docs/fuzzing.md`), which builds it with the
//! `fuzz` profile (release optimisation, unwinding panics so they can be caught,
//! overflow checks and debug assertions on) and with coverage instrumentation.
//!
//! ```text
//! diosix-fuzz [--iterations N] [--target NAME[,NAME...]] [--seed S] [--out DIR]
//! diosix-fuzz --replay FILE --target NAME
//! diosix-fuzz --list
//! ```
//!
//! Exit status: 0 when no target panicked or went over the heap limit, 1 otherwise,
//! 2 on a usage error.
#![deny(unsafe_code)]

mod alloc;
mod cov;
mod engine;
mod mutate;
mod rng;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;

use engine::{Kind, Options};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

const USAGE: &str = "\
diosix-fuzz [--iterations N] [--target NAME[,NAME...]] [--seed S] [--out DIR]
diosix-fuzz --replay FILE --target NAME
diosix-fuzz --list
";

struct Args {
    iterations: u64,
    targets: Vec<String>,
    seed: u64,
    out: PathBuf,
    replay: Option<PathBuf>,
    list: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        iterations: 1_000_000,
        targets: Vec::new(),
        seed: 1,
        out: PathBuf::from("target/fuzz-findings"),
        replay: None,
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--iterations" | "-n" => {
                let v = value("--iterations")?.replace('_', "");
                a.iterations = v.parse().map_err(|_| format!("bad --iterations {v}"))?;
            }
            "--target" | "-t" => {
                for t in value("--target")?.split(',') {
                    a.targets.push(t.to_string());
                }
            }
            "--seed" => {
                let v = value("--seed")?;
                a.seed = v.parse().map_err(|_| format!("bad --seed {v}"))?;
            }
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--replay" => a.replay = Some(PathBuf::from(value("--replay")?)),
            "--list" => a.list = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

fn mib(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("diosix-fuzz: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let all = targets::all();
    if args.list {
        for t in &all {
            println!("{:<9} {}", t.name(), t.about());
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&dyn targets::Target> = if args.targets.is_empty() {
        all.clone()
    } else {
        let mut v = Vec::new();
        for name in &args.targets {
            match all.iter().find(|t| t.name() == name) {
                Some(t) => v.push(*t),
                None => {
                    let names: Vec<&str> = all.iter().map(|t| t.name()).collect();
                    eprintln!(
                        "diosix-fuzz: no target `{name}` (have: {})",
                        names.join(", ")
                    );
                    return ExitCode::from(2);
                }
            }
        }
        v
    };
    if !cfg!(panic = "unwind") {
        eprintln!(
            "diosix-fuzz: built with panic=abort, so the first panic ends the run; \
             build with `--profile fuzz` (cargo xtask fuzz does)"
        );
    }
    engine::install_panic_hook();

    if let Some(file) = &args.replay {
        let [t] = chosen[..] else {
            eprintln!("diosix-fuzz: --replay needs exactly one --target");
            return ExitCode::from(2);
        };
        let input = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("diosix-fuzz: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let run = engine::run_one(t, &input);
        println!(
            "{}: {} bytes, {:?}, largest allocation {}, peak heap {}",
            t.name(),
            input.len(),
            run.time,
            mib(run.usage.largest),
            mib(run.usage.peak)
        );
        return match run.outcome {
            Ok(label) => {
                println!("no panic (outcome {label:#018x})");
                ExitCode::SUCCESS
            }
            Err(p) => {
                println!("PANIC at {}: {}", p.location, p.message);
                if let Some(bt) = p.backtrace {
                    println!("{bt}");
                }
                ExitCode::FAILURE
            }
        };
    }

    let mut cov = cov::Coverage::new();
    println!(
        "diosix-fuzz: {} inputs per target, seed {}, {}; findings go to {}",
        args.iterations,
        args.seed,
        if cov.available() {
            format!("coverage-guided ({} counters)", cov.len())
        } else {
            "guided by outcomes only (no coverage instrumentation)".to_string()
        },
        args.out.display()
    );
    let opts = Options {
        iterations: args.iterations,
        seed: args.seed,
        out: &args.out,
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for t in &chosen {
        let s = engine::fuzz(*t, &opts, &mut cov);
        println!(
            "  {:<9} {:>9} inputs {:>7.1} s {:>9.0}/s  panics {:<3} largest alloc {:>9}  peak heap {:>9}  slowest {:>8.1?}  corpus {:>4}  outcomes {:>4}  covered {}/{}",
            t.name(),
            s.inputs,
            s.seconds,
            s.inputs as f64 / s.seconds.max(1e-9),
            s.panics,
            mib(s.largest_alloc),
            mib(s.peak_heap),
            s.slowest,
            s.corpus,
            s.outcomes,
            s.covered,
            s.counters
        );
        failed |= s
            .findings
            .iter()
            .any(|f| f.kind != Kind::Slow && f.known.is_none());
        rows.push((t.name(), s));
    }

    println!();
    println!("| target | inputs | seconds | inputs/s | panics | largest allocation | peak heap (input size) | slowest input |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, s) in &rows {
        println!(
            "| {name} | {} | {:.1} | {:.0} | {} | {} | {} ({} B) | {:.1?} |",
            s.inputs,
            s.seconds,
            s.inputs as f64 / s.seconds.max(1e-9),
            s.panics,
            mib(s.largest_alloc),
            mib(s.peak_heap),
            s.peak_input_len,
            s.slowest
        );
    }
    let findings: Vec<_> = rows
        .iter()
        .flat_map(|(n, s)| s.findings.iter().map(move |f| (n, f)))
        .collect();
    if findings.is_empty() {
        println!("\nno findings");
    } else {
        println!("\nfindings:");
        for (name, f) in findings {
            println!(
                "  {name}: {:?} x{}: {}\n    {}",
                f.kind,
                f.hits,
                f.summary,
                f.file.display()
            );
            if let Some(k) = f.known {
                println!("    KNOWN, tracked, does not fail the run: {}", k.note);
            }
        }
    }
    for k in targets::KNOWN {
        let ran = rows.iter().any(|(n, _)| *n == k.target);
        let seen = rows
            .iter()
            .flat_map(|(_, s)| &s.findings)
            .any(|f| f.known.is_some_and(|f| f.message == k.message));
        if ran && !seen && args.iterations >= 1_000_000 {
            println!(
                "note: known finding `{}` ({}) not seen in this run; if it is fixed, remove it from KNOWN in crates/fuzz/src/targets/mod.rs",
                k.message, k.target
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
