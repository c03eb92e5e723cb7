//! `cargo xtask bench`: deterministic instruction-count benchmarks.
//!
//! Runs the bench guest under `-icount shift=0,sleep=off -seed 1 -smp 2` twice: as the
//! Diosix Root VM (`-bios none`) and directly on QEMU's OpenSBI (`-bios default`), and
//! prints its `bench <metric> <n>` figures side by side; then the VM-tree figures; then
//! Linux's boot to `/init` at 1, 2 and 4 harts, as the Root VM and on OpenSBI; then
//! Linux workloads (process creation, system calls, page faults, sleeps, arithmetic) at
//! 2 harts, as the Root VM and on OpenSBI.
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
    tree_bench(&elf)?;
    linux_boot_bench()?;
    linux_workload_bench()
}

/// The kernel's own log line that ends the measured boot.
const INIT_LINE: &str = "Run /init as init process";

/// The printk timestamp, in microseconds, of the first line containing `what`
/// (`[    0.195123] Run /init ...`).
fn printk_us(output: &str, what: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.contains(what))?;
    let stamp = line.split('[').nth(1)?.split(']').next()?.trim();
    let (secs, micros) = stamp.split_once('.')?;
    let secs: u64 = secs.parse().ok()?;
    let micros: u64 = micros.get(..6)?.parse().ok()?;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// The two runs of one Linux comparison: the Root VM under Diosix (image built with
/// 128 MiB for the Root VM, QEMU `-m 512`) and the same kernel, initramfs and command
/// line on QEMU's OpenSBI (`-m 128`), both at `smp` harts (one vCPU per hart) under
/// icount. `cmdline` replaces the Root VM's default command line in both.
fn linux_runs(
    a: &crate::rootvm::RootVmArtifacts,
    name: &str,
    smp: u32,
    cmdline: Option<&str>,
) -> Result<[QemuOptions; 2]> {
    let image = build::build_image(&ImageOptions {
        root_vm: RootVm::Linux,
        vcpus: Some(smp),
        ram_mib: Some(128),
        cmdline: cmdline.map(str::to_string),
        out: workspace_root()
            .join("target")
            .join("test-images")
            .join(format!("{name}.elf")),
    })?;
    let mut d = QemuOptions::new(name, image);
    d.smp = smp;
    d.mem_mib = 512;
    let mut o = QemuOptions::new(&format!("{name}-opensbi"), a.kernel_image.clone());
    o.bios = Bios::Default;
    o.smp = smp;
    o.mem_mib = 128;
    o.append = Some(cmdline.unwrap_or(&a.cmdline).to_string());
    o.extra = vec!["-initrd".into(), a.initramfs.display().to_string()];
    for q in [&mut d, &mut o] {
        q.icount = true;
        q.timeout = Duration::from_secs(300);
    }
    Ok([d, o])
}

/// Linux (the Root VM's kernel, initramfs and command line) from the kernel's timer
/// set-up to `Run /init as init process`, by its own printk clock (under icount one
/// instruction is one nanosecond), as the Root VM with 128 MiB and on QEMU's OpenSBI
/// with `-m 128M`, at 1, 2 and 4 harts (one vCPU per hart).
fn linux_boot_bench() -> Result<()> {
    let a = crate::rootvm::build_linux_root_vm()?;
    // Every run first, then the table: image builds print their own progress.
    let mut rows = Vec::new();
    for smp in [1u32, 2, 4] {
        let name = format!("bench-linux-smp{smp}");
        let mut us = Vec::new();
        for mut q in linux_runs(&a, &name, smp, None)? {
            q.stop_at = Some(INIT_LINE.into());
            let out = qemu::run(&q)?;
            us.push(printk_us(&out.output, INIT_LINE).ok_or_else(|| {
                format!(
                    "{}: no timestamped `{INIT_LINE}` line (log {})",
                    q.name,
                    out.log.display()
                )
            })?);
        }
        rows.push((smp, us[0], us[1]));
    }
    println!();
    println!(
        "{:<24} | {:>12} | {:>12} | {:>7}",
        "Linux to /init (µs)", "Diosix", "OpenSBI", "ratio"
    );
    println!("{:-<25}+{:-<14}+{:-<14}+{:-<8}", "", "", "", "");
    for (smp, d, o) in rows {
        let metric = format!("linux_to_init_smp{smp}");
        let ratio = d as f64 / o.max(1) as f64;
        println!("{metric:<24} | {d:>12} | {o:>12} | {ratio:>7.2}");
    }
    Ok(())
}

/// Prefix of the figure lines `diosix-workloads` prints (`rootvm/workloads/`).
const WORKLOAD_LINE: &str = "diosix-workload ";
/// Its last line.
const WORKLOADS_DONE: &str = "diosix-workloads done";
/// Harts (and Root VM vCPUs) of the workload runs.
const WORKLOAD_HARTS: u32 = 2;

/// One `diosix-workload <name> <iterations> <elapsed_ns> <batch_iterations>
/// <median_batch_ns>` line.
#[derive(Debug, Clone, PartialEq)]
struct Workload {
    name: String,
    iterations: u64,
    elapsed_ns: u64,
    batch_iterations: u64,
    median_batch_ns: u64,
}

impl Workload {
    /// Nanoseconds per iteration over the whole loop.
    fn mean(&self) -> f64 {
        self.elapsed_ns as f64 / self.iterations.max(1) as f64
    }

    /// Nanoseconds per iteration in the median batch.
    fn median(&self) -> f64 {
        self.median_batch_ns as f64 / self.batch_iterations.max(1) as f64
    }
}

/// The `diosix-workload ...` lines of a run, in order.
fn parse_workloads(output: &str) -> Vec<Workload> {
    output
        .lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix(WORKLOAD_LINE)?.split_whitespace();
            let name = w.next()?.to_string();
            let mut n = [0u64; 4];
            for v in &mut n {
                *v = w.next()?.parse().ok()?;
            }
            w.next().is_none().then_some(Workload {
                name,
                iterations: n[0],
                elapsed_ns: n[1],
                batch_iterations: n[2],
                median_batch_ns: n[3],
            })
        })
        .collect()
}

/// `a / b` to three places, or `-`.
fn ratio(a: Option<f64>, b: f64) -> String {
    match a {
        Some(a) if b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

/// Linux workloads in the Root VM: its kernel and initramfs booted with
/// `diosix.bench=workloads` added to the command line, so its `rcS` runs
/// `diosix-workloads` and powers off; under Diosix and on OpenSBI at 2 harts, 128 MiB
/// each. Each workload is timed by the guest's own clock (the `time` CSR; under icount
/// one instruction is one nanosecond). The table gives nanoseconds per iteration over
/// the whole loop and in its median batch (which leaves out the batches a tick or the
/// other hart's work landed in, and so moves less with unrelated changes).
fn linux_workload_bench() -> Result<()> {
    let a = crate::rootvm::build_linux_root_vm()?;
    let cmdline = format!("{} {}", a.cmdline, crate::rootvm::BENCH_CMDLINE_OPTION);
    let name = format!("bench-linux-workloads-smp{WORKLOAD_HARTS}");
    let mut runs = Vec::new();
    for mut q in linux_runs(&a, &name, WORKLOAD_HARTS, Some(&cmdline))? {
        q.stop_at = Some(WORKLOADS_DONE.into());
        let out = qemu::run(&q)?;
        println!(
            "{}: {:.1} s wall, log {}",
            q.name,
            out.wall.as_secs_f64(),
            out.log.display()
        );
        let figures = parse_workloads(&out.output);
        if !out.output.contains(WORKLOADS_DONE) || figures.is_empty() {
            return Err(format!(
                "{}: no `{WORKLOADS_DONE}` line or no figures (log {})",
                q.name,
                out.log.display()
            ));
        }
        runs.push(figures);
    }
    let (d, o) = (&runs[0], &runs[1]);
    println!();
    println!("Linux workloads, {WORKLOAD_HARTS} harts (ns/iter): whole loop, and median batch");
    println!(
        "{:<16} | {:>11} | {:>12} | {:>6} | {:>13} | {:>14} | {:>6}",
        "workload",
        "Diosix mean",
        "OpenSBI mean",
        "ratio",
        "Diosix median",
        "OpenSBI median",
        "ratio"
    );
    println!(
        "{:-<17}+{:-<13}+{:-<14}+{:-<8}+{:-<15}+{:-<16}+{:-<7}",
        "", "", "", "", "", "", ""
    );
    for o in o {
        let d = d.iter().find(|d| d.name == o.name);
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{:<16} | {:>11} | {:>12.1} | {:>6} | {:>13} | {:>14.1} | {:>6}",
            o.name,
            show(d.map(Workload::mean)),
            o.mean(),
            ratio(d.map(Workload::mean), o.mean()),
            show(d.map(Workload::median)),
            o.median(),
            ratio(d.map(Workload::median), o.median()),
        );
    }
    Ok(())
}

/// The VM-tree figures: the bench guest as a one-vCPU Root VM of 16, 64, 256 and 1024
/// MiB on one hart (QEMU `-m 1024`, or four times the Root VM's RAM so it can fork)
/// forks itself and exchanges IPC with the child, then spawns children of 16, 64 and
/// 256 MiB and measures SPAWN to the child's first instruction.
fn tree_bench(elf: &Path) -> Result<()> {
    println!();
    // 24 columns: the longest name is `spawn_first_instr_256MiB`.
    println!(
        "{:<24} | {:>12} | {:>12}",
        "VM tree (instructions)", "Root VM RAM", "Diosix"
    );
    println!("{:-<25}+{:-<14}+{:-<13}", "", "", "");
    for ram in [16u32, 64, 256, 1024] {
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
        let host_mib = (4 * ram).max(1024);
        let figures = run_on(
            &format!("bench-tree-{ram}"),
            &image,
            Bios::None,
            1,
            host_mib,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lines_are_parsed() {
        let out = "diosix-workload syscall_getppid 200000 50000000 1000 249100\r\n\
                   [    1.0] random: crng init done\n\
                   diosix-workload cpu_arith 10 x 1 6\n\
                   diosix-workload page_fault 19200 67200000 64 224000 9\n\
                   diosix-workload usleep_1000 100 105000000\n\
                   diosix-workload fork_exec_wait 300 168000000 1 535000\n\
                   diosix-workloads done (cpu result 1)\n";
        let w = parse_workloads(out);
        assert_eq!(
            w.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
            ["syscall_getppid", "fork_exec_wait"]
        );
        assert_eq!(w[0].mean(), 250.0);
        assert_eq!(w[0].median(), 249.1);
        assert_eq!(w[1].mean(), 560_000.0);
        assert_eq!(w[1].median(), 535_000.0);
        assert_eq!(ratio(Some(3.0), 2.0), "1.500");
        assert_eq!(ratio(None, 2.0), "-");
        assert_eq!(ratio(Some(1.0), 0.0), "-");
    }

    #[test]
    fn printk_stamps_become_microseconds() {
        let out = "[    0.000000] Linux version 6.12\n[    0.195123] Run /init as init process\n";
        assert_eq!(printk_us(out, INIT_LINE), Some(195_123));
        assert_eq!(
            printk_us("[   12.000001] Run /init as init process", INIT_LINE),
            Some(12_000_001)
        );
        assert_eq!(printk_us("Run /init as init process", INIT_LINE), None);
        assert_eq!(
            printk_us("[ x.1] Run /init as init process", INIT_LINE),
            None
        );
    }
}
