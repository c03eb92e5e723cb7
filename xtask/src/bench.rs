//! `cargo xtask bench`: deterministic instruction-count benchmarks.
//!
//! Runs the bench guest under `-icount shift=0,sleep=off -seed 1 -smp 2` twice: as the
//! Diosix Root VM (`-bios none`) and directly on QEMU's OpenSBI (`-bios default`), and
//! prints its `bench <metric> <n>` figures side by side.
use crate::build::{self, ImageOptions, RootVm};
use crate::qemu::{self, Bios, QemuOptions};
use crate::{guests, workspace_root, Result};
use std::path::Path;
use std::time::Duration;

/// `bench <metric> <n>` lines of a run, in order.
fn parse(output: &str) -> Vec<(String, u64)> {
    output
        .lines()
        .filter_map(|l| {
            // DBCN benchmark output ends in '\r'; keep only what follows the last one.
            let l = l.rsplit('\r').next().unwrap_or(l).trim();
            let mut w = l.strip_prefix("bench ")?.split_whitespace();
            let (name, n) = (w.next()?, w.next()?.parse().ok()?);
            w.next().is_none().then(|| (name.to_string(), n))
        })
        .collect()
}

fn run(name: &str, kernel: &Path, bios: Bios) -> Result<Vec<(String, u64)>> {
    run_on(
        name,
        kernel,
        bios,
        2,
        if bios == Bios::None { 512 } else { 128 },
    )
}

fn run_on(
    name: &str,
    kernel: &Path,
    bios: Bios,
    smp: u32,
    mem_mib: u32,
) -> Result<Vec<(String, u64)>> {
    let mut q = QemuOptions::new(name, kernel.to_path_buf());
    q.bios = bios;
    q.smp = smp;
    q.mem_mib = mem_mib;
    q.icount = true;
    q.timeout = Duration::from_secs(120);
    let out = qemu::run(&q)?;
    println!(
        "{name}: {:.1} s wall, log {}",
        out.wall.as_secs_f64(),
        out.log.display()
    );
    if !out.output.contains("bench done") {
        return Err(format!(
            "{name}: no `bench done` line (log {})",
            out.log.display()
        ));
    }
    Ok(parse(&out.output))
}

/// Runs the benchmarks and prints their figures.
pub fn cmd_bench(_args: &[String]) -> Result<()> {
    let elf = guests::build_guest("bench")?;
    let opensbi = run("bench-opensbi", &elf, Bios::Default)?;
    let diosix = build::build_image(&ImageOptions {
        root_vm: RootVm::File(elf.clone()),
        vcpus: Some(2),
        ram_mib: None,
        cmdline: None,
        out: workspace_root()
            .join("target")
            .join("test-images")
            .join("bench.elf"),
    })
    .map_err(|e| format!("build_image: {e}"))
    .and_then(|image| run("bench-diosix", &image, Bios::None));
    let (d, derr) = match diosix {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    println!(
        "{:<20} | {:>12} | {:>12} | {:>7}",
        "metric (instructions)", "Diosix", "OpenSBI", "ratio"
    );
    println!("{:-<21}+{:-<14}+{:-<14}+{:-<8}", "", "", "", "");
    for (name, o) in &opensbi {
        let dv = d.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        let ds = dv.map_or("-".to_string(), |v| v.to_string());
        let ratio = match dv {
            Some(v) if *o > 0 => format!("{:.2}", v as f64 / *o as f64),
            _ => "-".into(),
        };
        println!("{name:<21} | {ds:>12} | {o:>12} | {ratio:>7}");
    }
    if let Some(e) = derr {
        println!("Diosix run failed: {e}");
    }
    tree_bench(&elf)
}

/// The VM-tree figures: the bench guest as a one-vCPU Root VM of 16, 64 and 256 MiB on
/// one hart forks itself and exchanges IPC with the child, then spawns children of 16
/// and 64 MiB and measures SPAWN to the child's first instruction.
fn tree_bench(elf: &Path) -> Result<()> {
    println!();
    // 24 columns: the longest name is `spawn_first_instr_64MiB`.
    println!(
        "{:<24} | {:>12} | {:>12}",
        "VM tree (instructions)", "Root VM RAM", "Diosix"
    );
    println!("{:-<25}+{:-<14}+{:-<13}", "", "", "");
    for ram in [16u32, 64, 256] {
        let image = build::build_image(&ImageOptions {
            root_vm: RootVm::File(elf.to_path_buf()),
            vcpus: Some(1),
            ram_mib: Some(ram),
            cmdline: None,
            out: workspace_root()
                .join("target")
                .join("test-images")
                .join(format!("bench-tree-{ram}.elf")),
        })?;
        let figures = run_on(&format!("bench-tree-{ram}"), &image, Bios::None, 1, 1024)?;
        for (name, v) in figures {
            if name.starts_with("fork_")
                || name.starts_with("cow_")
                || name.starts_with("spawn_")
                || name == "ipc_round_trip"
                || name == "first_instruction"
            {
                println!("{name:<24} | {:>8} MiB | {v:>12}", ram);
            }
        }
    }
    Ok(())
}
