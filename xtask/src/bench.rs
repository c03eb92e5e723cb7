//! `cargo xtask bench`: deterministic instruction-count benchmarks.
//!
//! Runs the bench guest under `-icount shift=0,sleep=off -seed 1 -smp 2` twice: as the
//! Diosix Root VM (`-bios none`) and directly on QEMU's OpenSBI (`-bios default`), and
//! prints its `bench <metric> <n>` figures side by side; then the VM-tree figures; then
//! Linux's boot to `/init` at 1, 2 and 4 harts, as the Root VM and on OpenSBI; then
//! Linux workloads (process creation, system calls, page faults, sleeps, arithmetic) at
//! 2 harts, as the Root VM and on OpenSBI; then the Root VM's Linux driving a virtio-blk
//! disk (sequential read throughput, per-request latency), as the Root VM and on
//! OpenSBI. `cargo xtask bench devices` runs only the disk comparison.
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

fn run(name: &str, kernel: &Path, bios: Bios, cpu: Option<&str>) -> Result<Vec<(String, u64)>> {
    run_on(
        name,
        kernel,
        bios,
        2,
        if bios == Bios::None { 512 } else { 128 },
        cpu,
    )
}

/// QEMU's `virt` with AIA: an APLIC and per-hart IMSICs with two guest interrupt files
/// each, and the CPU extensions that go with them.
const AIA_MACHINE: &str = "virt,aia=aplic-imsic,aia-guests=2";
const AIA_CPU: &str = "rv64,smaia=on,ssaia=on";

/// [`run`] on an AIA host ([`AIA_MACHINE`]).
fn run_aia(name: &str, kernel: &Path, bios: Bios) -> Result<Vec<(String, u64)>> {
    let mut q = QemuOptions::new(name, kernel.to_path_buf());
    q.machine = AIA_MACHINE.to_string();
    q.extra.extend(["-cpu".to_string(), AIA_CPU.to_string()]);
    q.bios = bios;
    q.smp = 2;
    q.mem_mib = if bios == Bios::None { 512 } else { 128 };
    q.icount = true;
    q.timeout = Duration::from_secs(120);
    let out = qemu::run(&q)?;
    if !out.output.contains("bench done") {
        return Err(format!(
            "{name}: no `bench done` line (log {})",
            out.log.display()
        ));
    }
    // A figure whose run went wrong (the guest says so) is no figure.
    if let Some(l) = out
        .output
        .lines()
        .find(|l| l.starts_with("bench ") && l.contains(" failed"))
    {
        return Err(format!("{name}: {} (log {})", l.trim(), out.log.display()));
    }
    Ok(parse(&out.output))
}

/// The SBI figures on an AIA host, Diosix beside OpenSBI (which sends its own IPIs
/// through the IMSIC there). Guests still send IPIs with SBI calls under Diosix: it
/// does not yet give them guest interrupt files (see docs/architecture.md).
fn aia_bench(image: &Path, elf: &Path) -> Result<()> {
    let o = run_aia("bench-opensbi-aia", elf, Bios::Default)?;
    let d = run_aia("bench-diosix-aia", image, Bios::None)?;
    let get = |v: &[(String, u64)], name: &str| v.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    println!();
    println!(
        "{:<28} | {:>12} | {:>12} | {:>7}",
        "AIA host (instructions)", "Diosix (H)", "OpenSBI", "ratio"
    );
    println!("{:-<29}+{:-<14}+{:-<14}+{:-<8}", "", "", "", "");
    for name in ["null_call", "set_timer", "send_ipi"] {
        if let (Some(dv), Some(ov)) = (get(&d, name), get(&o, name)) {
            println!(
                "{:<28} | {dv:>12} | {ov:>12} | {:>7.2}",
                format!("{name} (SBI)"),
                dv as f64 / ov as f64
            );
        }
    }
    Ok(())
}

/// QEMU's CPU model for harts without the H extension: Diosix's PMP mode.
const NO_H: &str = "rv64,h=false";

fn run_on(
    name: &str,
    kernel: &Path,
    bios: Bios,
    smp: u32,
    mem_mib: u32,
    cpu: Option<&str>,
) -> Result<Vec<(String, u64)>> {
    let mut q = QemuOptions::new(name, kernel.to_path_buf());
    if let Some(cpu) = cpu {
        q.extra.extend(["-cpu".to_string(), cpu.to_string()]);
    }
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

/// Runs the benchmarks and prints their figures: all of them; with `sbi` only the
/// main table (SBI calls and reset, Diosix in both modes vs OpenSBI) and the VM-tree
/// table; with `devices` only the disk comparison.
pub fn cmd_bench(args: &[String]) -> Result<()> {
    let sbi_only = match args {
        [] => false,
        [only] if only == "sbi" => true,
        [only] if only == "devices" => return linux_device_bench(),
        [only] if only == "net" => return linux_net_bench(),
        [only] if only == "exits" => return exit_rate_bench(),
        [only] if only == "linux" => {
            crate::setup::ensure_all()?;
            return linux_boot_bench();
        }
        _ => return Err("usage: cargo xtask bench [sbi|linux|devices|net|exits]".into()),
    };
    // Like `run` and `test`: installs the targets, QEMU and cross tools if missing.
    crate::setup::ensure_all()?;
    let elf = guests::build_guest("bench")?;
    let opensbi = run("bench-opensbi", &elf, Bios::Default, None)?;
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
    .map(|image| {
        let h = run("bench-diosix", &image, Bios::None, None);
        // The same image on harts without H: guests in S-mode behind PMP.
        let pmp = run("bench-diosix-pmp", &image, Bios::None, Some(NO_H));
        (h, pmp, image)
    });
    let (h, pmp, image) = match diosix {
        Ok((h, pmp, image)) => (h, pmp, Some(image)),
        Err(e) => (Err(e.clone()), Err(e), None),
    };
    let figures = |r: &Result<Vec<(String, u64)>>| r.as_ref().map_or(Vec::new(), Clone::clone);
    let (d, p) = (figures(&h), figures(&pmp));
    println!(
        "{:<20} | {:>12} | {:>12} | {:>12} | {:>7} | {:>7}",
        "metric (instructions)", "Diosix (H)", "Diosix (PMP)", "OpenSBI", "H/O", "PMP/O"
    );
    println!(
        "{:-<21}+{:-<14}+{:-<14}+{:-<14}+{:-<9}+{:-<8}",
        "", "", "", "", "", ""
    );
    let get = |v: &[(String, u64)], name: &str| v.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let cell = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let ratio = |v: Option<u64>, o: u64| match v {
        Some(v) if o > 0 => format!("{:.2}", v as f64 / o as f64),
        _ => "-".into(),
    };
    for (name, o) in &opensbi {
        let (dv, pv) = (get(&d, name), get(&p, name));
        println!(
            "{name:<21} | {:>12} | {:>12} | {o:>12} | {:>7} | {:>7}",
            cell(dv),
            cell(pv),
            ratio(dv, *o),
            ratio(pv, *o)
        );
    }
    for (what, r) in [("Diosix (H)", &h), ("Diosix (PMP)", &pmp)] {
        if let Err(e) = r {
            println!("{what} run failed: {e}");
        }
    }
    if let Some(image) = image {
        aia_bench(&image, &elf)?;
    }
    tree_bench(&elf)?;
    if sbi_only {
        return Ok(());
    }
    linux_boot_bench()?;
    linux_workload_bench()?;
    exit_rate_bench()?;
    linux_device_bench()?;
    linux_net_bench()
}

/// TCP: 32 MiB over one connection (`diosix-workloads tcp`), from the Root VM to a sink
/// on the host through QEMU's user networking (the Root VM's own network), then from a
/// child to a sink (`nc -l`) in the Root VM over dsx's virtio-net and bridge (the Root
/// VM booted with `diosix.bench=tcp`, its `rcS` doing both and copying the child's
/// console); 2 harts, by the sender's clock, the ratio of the two.
fn linux_net_bench() -> Result<()> {
    use std::io::Read;
    let a = crate::rootvm::build_linux_root_vm()?;
    let sink = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("sink: {e}"))?;
    let port = sink.local_addr().map_err(|e| format!("sink: {e}"))?.port();
    std::thread::spawn(move || {
        // One connection: read to its end, then close (the sender waits for that).
        if let Ok((mut s, _)) = sink.accept() {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let cmdline = format!(
        "{} diosix.bench=tcp diosix.tcphost=10.0.2.2:{port}",
        a.cmdline
    );
    let name = format!("bench-linux-tcp-smp{WORKLOAD_HARTS}");
    let [mut q, _] = linux_runs(&a, &name, WORKLOAD_HARTS, Some(&cmdline))?;
    q.devices = qemu::Devices {
        net_port: Some(qemu::free_port(qemu::DEFAULT_NET_PORT)?),
        ..Default::default()
    };
    q.timeout = Duration::from_secs(900);
    let (out, figures) = run_workloads(&q, "diosix-workloads done (tcp)")?;
    let sends: Vec<Workload> = figures
        .into_iter()
        .filter(|w| w.name == "tcp_send_32MiB")
        .collect();
    let [root, child] = &sends[..] else {
        return Err(format!(
            "{}: {} `tcp_send_32MiB` lines, expected 2 (log {})",
            q.name,
            sends.len(),
            out.log.display()
        ));
    };
    let mb = |w: &Workload| mb_per_s(32.0 * (1u64 << 20) as f64, w.mean());
    println!();
    println!(
        "TCP, {WORKLOAD_HARTS} harts: 32 MiB over one connection (MB/s, by the sender's clock)"
    );
    println!("{:<46} | {:>10} | {:>6}", "path", "MB/s", "ratio");
    println!("{:-<47}+{:-<12}+{:-<7}", "", "", "");
    println!(
        "{:<46} | {:>10.1} | {:>6}",
        "Root VM -> host (QEMU user networking)",
        mb(root),
        "1"
    );
    println!(
        "{:<46} | {:>10.1} | {:>6}",
        "child -> Root VM (dsx virtio-net, TAP, bridge)",
        mb(child),
        ratio(Some(mb(child)), mb(root))
    );
    Ok(())
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
        let mut us: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for seed in BOOT_SEEDS {
            for (side, mut q) in linux_runs(&a, &name, smp, None)?.into_iter().enumerate() {
                q.stop_at = Some(INIT_LINE.into());
                q.seed = seed;
                let out = qemu::run(&q)?;
                us[side].push(printk_us(&out.output, INIT_LINE).ok_or_else(|| {
                    format!(
                        "{}: no timestamped `{INIT_LINE}` line (log {})",
                        q.name,
                        out.log.display()
                    )
                })?);
            }
        }
        rows.push((smp, us));
    }
    println!();
    println!(
        "Linux to /init (µs), median over QEMU seeds {BOOT_SEEDS:?} (each run is exact; \
         with more than one hart the seed moves how the harts interleave)"
    );
    println!(
        "{:<24} | {:>12} | {:>12} | {:>7} | {:>15} | {:>15}",
        "", "Diosix", "OpenSBI", "ratio", "Diosix range", "OpenSBI range"
    );
    println!(
        "{:-<25}+{:-<14}+{:-<14}+{:-<9}+{:-<17}+{:-<16}",
        "", "", "", "", "", ""
    );
    for (smp, [d, o]) in rows {
        let metric = format!("linux_to_init_smp{smp}");
        let (dm, om) = (median(&d), median(&o));
        let ratio = dm as f64 / om.max(1) as f64;
        let range = |v: &[u64]| {
            format!(
                "{}-{}",
                v.iter().min().unwrap_or(&0),
                v.iter().max().unwrap_or(&0)
            )
        };
        println!(
            "{metric:<24} | {dm:>12} | {om:>12} | {ratio:>7.3} | {:>15} | {:>15}",
            range(&d),
            range(&o)
        );
    }
    Ok(())
}

/// QEMU seeds of the Linux boot comparison: one run per seed on each side.
const BOOT_SEEDS: [u32; 5] = [1, 2, 3, 4, 5];

/// The median of `v` (the lower middle of an even count; 0 if empty).
fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len().saturating_sub(1) / 2).copied().unwrap_or(0)
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

/// The `<prefix><name> <n1> ... <nN>` lines of a run, in order (exactly N numbers).
fn parse_lines<const N: usize>(output: &str, prefix: &str) -> Vec<(String, [u64; N])> {
    output
        .lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix(prefix)?.split_whitespace();
            let name = w.next()?.to_string();
            let mut n = [0u64; N];
            for v in &mut n {
                *v = w.next()?.parse().ok()?;
            }
            w.next().is_none().then_some((name, n))
        })
        .collect()
}

/// Boots `q` (to its end, or to its `stop_at`), says where its log is, and returns its
/// output and the `diosix-workload` figures in it; an error if the `done` line or any
/// figure is missing.
fn run_workloads(q: &QemuOptions, done: &str) -> Result<(qemu::QemuOutput, Vec<Workload>)> {
    let out = qemu::run(q)?;
    println!(
        "{}: {:.1} s wall, log {}",
        q.name,
        out.wall.as_secs_f64(),
        out.log.display()
    );
    let figures = parse_workloads(&out.output);
    if !out.output.contains(done) || figures.is_empty() {
        return Err(format!(
            "{}: no `{done}` line or no figures (log {})",
            q.name,
            out.log.display()
        ));
    }
    Ok((out, figures))
}

/// The `diosix-workload ...` lines of a run, in order.
fn parse_workloads(output: &str) -> Vec<Workload> {
    parse_lines::<4>(output, WORKLOAD_LINE)
        .into_iter()
        .map(|(name, n)| Workload {
            name,
            iterations: n[0],
            elapsed_ns: n[1],
            batch_iterations: n[2],
            median_batch_ns: n[3],
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
        let (_, figures) = run_workloads(&q, WORKLOADS_DONE)?;
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

/// The kernel command-line option that makes the Root VM's `rcS` run
/// `diosix-workloads devices` (the disk benchmarks) and power off.
const DEVICES_CMDLINE_OPTION: &str = "diosix.bench=devices";
/// The disk's size: the 64 MiB the reads cover, and room past it.
const DEVICE_DISK_MIB: u64 = 96;
/// Prefix of the disk counters `diosix-workloads devices` prints after each benchmark.
const DEVICE_LINE: &str = "diosix-device ";
/// Prefix of busybox dd's own lines, echoed by `diosix-workloads devices`.
const DD_LINE: &str = "diosix-dd ";
/// The last line of `diosix-workloads devices`.
const DEVICES_DONE: &str = "diosix-workloads done (devices)";

/// One `diosix-device <name> <requests> <sectors> <interrupts>` line: what the disk
/// completed during a benchmark, and the interrupts its virtio transport took.
#[derive(Debug, Clone, PartialEq)]
struct DeviceCounts {
    name: String,
    requests: u64,
    sectors: u64,
    interrupts: u64,
}

fn parse_device_counts(output: &str) -> Vec<DeviceCounts> {
    parse_lines::<3>(output, DEVICE_LINE)
        .into_iter()
        .map(|(name, n)| DeviceCounts {
            name,
            requests: n[0],
            sectors: n[1],
            interrupts: n[2],
        })
        .collect()
}

/// Exits per second of the Root VM's Linux (2 harts, every vCPU), idle and running a
/// usleep(1000) loop, on harts with Sstc (guests get `vstimecmp`: a timer tick needs no
/// exit) and without (`-cpu rv64,sstc=false`: each tick is an SBI `set_timer` and a
/// machine timer interrupt). Each state is run for 1 s and for 6 s after boot
/// (`diosix.bench=idle:S` / `usleep:S`), and the rate is the difference of the
/// hypervisor's exit counts at the end over 5 s: under icount the boot before it is the
/// same instructions in both runs.
fn exit_rate_bench() -> Result<()> {
    const SHORT: u64 = 1;
    const LONG: u64 = 6;
    let a = crate::rootvm::build_linux_root_vm()?;
    // Exit counts summed over the vCPUs: total, irq.timer, sbi.time, and
    // virtual_instruction (an idle vCPU's WFI).
    let counts = |cpu: Option<&str>, state: &str, secs: u64| -> Result<[u64; 4]> {
        let cmdline = format!("{} diosix.bench={state}:{secs}", a.cmdline);
        let name = format!("bench-linux-exits-{state}-{secs}s");
        let [mut q, _] = linux_runs(&a, &name, WORKLOAD_HARTS, Some(&cmdline))?;
        if let Some(cpu) = cpu {
            q.extra.extend(["-cpu".to_string(), cpu.to_string()]);
            q.name = format!("{name}-{}", cpu.replace([',', '='], "-"));
        }
        let out = qemu::run(&q)?;
        let exits = parse_root_exits(&out.output);
        if !out.output.contains("diosix-workloads done") || exits.is_empty() {
            return Err(format!(
                "{}: no done line or no exit counts (log {})",
                q.name,
                out.log.display()
            ));
        }
        let sum = |cause: &str| -> u64 {
            exits
                .iter()
                .flat_map(|(_, c)| c.iter())
                .filter(|(n, _)| n == cause)
                .map(|(_, v)| *v)
                .sum()
        };
        Ok([
            sum("total"),
            sum("irq.timer"),
            sum("sbi.time"),
            sum("virtual_instruction"),
        ])
    };
    let mut rows = Vec::new();
    for (state, label) in [("idle", "idle"), ("usleep", "usleep(1000) loop")] {
        let mut cells = Vec::new();
        for cpu in [None, Some("rv64,sstc=false")] {
            let (short, long) = (counts(cpu, state, SHORT)?, counts(cpu, state, LONG)?);
            for (s, l) in short.iter().zip(long) {
                cells.push(l.saturating_sub(*s) as f64 / (LONG - SHORT) as f64);
            }
        }
        rows.push((label, cells));
    }
    println!();
    println!(
        "Exits per second of the Root VM's Linux, {WORKLOAD_HARTS} harts, every vCPU \
         (exit counts after {LONG} s minus after {SHORT} s of the state, over {} s)",
        LONG - SHORT
    );
    println!(
        "{:<18} | {:>12} | {:>9} | {:>8} | {:>7} | {:>14} | {:>9} | {:>8} | {:>7}",
        "state",
        "Sstc: total",
        "irq.timer",
        "sbi.time",
        "WFI",
        "no Sstc: total",
        "irq.timer",
        "sbi.time",
        "WFI"
    );
    println!(
        "{:-<19}+{:-<14}+{:-<11}+{:-<10}+{:-<9}+{:-<16}+{:-<11}+{:-<10}+{:-<8}",
        "", "", "", "", "", "", "", "", ""
    );
    for (label, c) in rows {
        println!(
            "{label:<18} | {:>12.1} | {:>9.1} | {:>8.1} | {:>7.1} | {:>14.1} | {:>9.1} | {:>8.1} | {:>7.1}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        );
    }
    println!(
        "(WFI: virtual-instruction exits, an idle vCPU giving its hart back; irq.timer: \
         the hypervisor's own timer, which wakes a vCPU waiting in WFI at its deadline)"
    );
    Ok(())
}

/// The Root VM's exit counts by cause from the hypervisor's log at its shutdown
/// (`VM root vCPU 0 exits: total 6714, sbi.ipi 386, ..., irq.other 12, ...; IPI ...`):
/// per vCPU, the causes and counts in the order printed.
fn parse_root_exits(output: &str) -> Vec<(u32, Vec<(String, u64)>)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.split("VM root vCPU ").nth(1)?;
            let (vcpu, rest) = rest.split_once(" exits: ")?;
            let counts = rest
                .split(';')
                .next()?
                .split(", ")
                .filter_map(|c| {
                    let (cause, n) = c.trim().rsplit_once(' ')?;
                    Some((cause.to_string(), n.parse().ok()?))
                })
                .collect();
            Some((vcpu.trim().parse().ok()?, counts))
        })
        .collect()
}

/// MB/s (10^6 bytes a second) of `bytes` in `ns` nanoseconds.
fn mb_per_s(bytes: f64, ns: f64) -> f64 {
    if ns > 0.0 {
        bytes * 1e3 / ns
    } else {
        0.0
    }
}

/// The Root VM's Linux driving a disk: its kernel and initramfs booted with
/// `diosix.bench=devices`, so its `rcS` runs `diosix-workloads devices` (a 64 MiB
/// sequential read of `/dev/vda` in 1 MiB O_DIRECT reads, 4 KiB O_DIRECT reads at
/// random offsets one at a time, then busybox dd) and powers off; under Diosix (which
/// hands the Root VM the virtio-mmio transports and a virtual PLIC) and on OpenSBI, at
/// 2 harts, 128 MiB each, with the same fresh 96 MiB raw disk image attached
/// (virtio-blk). Timed by the guest's clock (under icount one instruction is one
/// nanosecond); QEMU does the disk's work in host threads, outside the count.
fn linux_device_bench() -> Result<()> {
    let a = crate::rootvm::build_linux_root_vm()?;
    let cmdline = format!("{} {DEVICES_CMDLINE_OPTION}", a.cmdline);
    let name = format!("bench-linux-devices-smp{WORKLOAD_HARTS}");
    let images = workspace_root().join("target").join("test-images");
    std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
    let disk = images.join("bench-devices.img");
    let mut runs = Vec::new();
    for mut q in linux_runs(&a, &name, WORKLOAD_HARTS, Some(&cmdline))? {
        // A fresh disk for each run, so neither inherits anything from the other.
        crate::disk::new_disk(&disk, DEVICE_DISK_MIB << 20, None, true)?;
        q.devices = qemu::Devices {
            disks: vec![disk.clone()],
            ..Default::default()
        };
        // No stop_at: rcS powers off after the done line, and the hypervisor logs the
        // Root VM's exits by cause as it ends (QEMU exits: -no-reboot).
        let (out, figures) = run_workloads(&q, DEVICES_DONE)?;
        for l in out.output.lines() {
            if let Some(dd) = l.trim().strip_prefix(DD_LINE) {
                println!("  dd: {dd}");
            }
        }
        runs.push((
            figures,
            parse_device_counts(&out.output),
            parse_root_exits(&out.output),
        ));
    }
    let ((d, dc, dx), (o, oc, _)) = (&runs[0], &runs[1]);
    let find = |w: &[Workload], n: &str| w.iter().find(|w| w.name == n).cloned();
    // One row: `per(ns of one iteration)` of the elapsed time (mean), and of the hart
    // time (the `_cpu` line: mean, and median batch), Diosix then OpenSBI, with ratios.
    let row = |label: &str, n: &str, per: &dyn Fn(f64) -> f64, cpu: &dyn Fn(f64) -> f64| {
        let (Some(ow), Some(oc)) = (find(o, n), find(o, &format!("{n}_cpu"))) else {
            return;
        };
        let (dw, dcpu) = (find(d, n), find(d, &format!("{n}_cpu")));
        let mut cells = Vec::new();
        for (dv, ov) in [
            (dw.map(|w| per(w.mean())), per(ow.mean())),
            (dcpu.as_ref().map(|w| cpu(w.mean())), cpu(oc.mean())),
            (dcpu.as_ref().map(|w| cpu(w.median())), cpu(oc.median())),
        ] {
            cells.push(format!(
                "{:>8} | {ov:>8.1} | {:>6}",
                dv.map_or("-".into(), |v| format!("{v:.1}")),
                ratio(dv, ov)
            ));
        }
        println!("{label:<18} | {}", cells.join(" | "));
    };
    let header = |unit: &str, cpu_unit: &str| {
        println!(
            "{:<18} | {:^28} | {:^28} | {:^28}",
            "",
            format!("elapsed, {unit}"),
            format!("hart time, {cpu_unit}"),
            "hart time, median batch"
        );
        let group = format!("{:>8} | {:>8} | {:>6}", "Diosix", "OpenSBI", "ratio");
        println!("{:<18} | {group} | {group} | {group}", "read");
        println!("{:-<19}+{:-<30}+{:-<30}+{:-<29}", "", "", "", "");
    };

    println!();
    println!(
        "Linux disk reads, {WORKLOAD_HARTS} harts: 64 MiB sequential read of /dev/vda \
         (MB/s, 10^6 B/s, by the elapsed time; hart time in µs per MiB)"
    );
    header("MB/s", "µs/MiB");
    let mib = (1u64 << 20) as f64;
    row(
        "O_DIRECT, 1 MiB",
        "seq_read_1MiB",
        &|ns| mb_per_s(mib, ns),
        &|ns| ns / 1e3,
    );
    row(
        "busybox dd bs=1M",
        "dd_64MiB",
        &|ns| mb_per_s(64.0 * mib, ns),
        &|ns| ns / 64e3,
    );

    println!();
    println!(
        "Interrupt delivery, {WORKLOAD_HARTS} harts: 4 KiB O_DIRECT reads at random \
         offsets, one at a time (µs/request; each is one notify to the device and one \
         completion interrupt through the PLIC, virtual under Diosix)"
    );
    header("µs", "µs");
    row("random 4 KiB", "rand_read_4KiB", &|ns| ns / 1e3, &|ns| {
        ns / 1e3
    });
    println!(
        "(hart time: the time a SCHED_IDLE soaker on the benchmark's hart did not get; \
         the elapsed time also holds however long QEMU's I/O thread took by the host's \
         clock, or an idle machine's jump to its next timer, and varies from run to run)"
    );

    println!();
    println!("What the disk did (requests completed, MiB read, interrupts of its transport)");
    println!(
        "{:<20} | {:>15} | {:>15} | {:>9} | {:>9}",
        "benchmark", "Diosix req/irq", "OpenSBI req/irq", "D MiB", "O MiB"
    );
    println!(
        "{:-<21}+{:-<17}+{:-<17}+{:-<11}+{:-<10}",
        "", "", "", "", ""
    );
    for oc in oc {
        let dc = dc.iter().find(|d| d.name == oc.name);
        let mib = |c: &DeviceCounts| format!("{:.1}", c.sectors as f64 * 512.0 / (1 << 20) as f64);
        println!(
            "{:<20} | {:>15} | {:>15} | {:>9} | {:>9}",
            oc.name,
            dc.map_or("-".into(), |d| format!("{}/{}", d.requests, d.interrupts)),
            format!("{}/{}", oc.requests, oc.interrupts),
            dc.map_or("-".into(), mib),
            mib(oc),
        );
    }

    child_disk_bench(&a, d)?;

    if !dx.is_empty() {
        // The PLIC's window is never mapped, so each guest access to it is a guest-page
        // fault the hypervisor emulates; each host interrupt is an irq.external exit.
        println!();
        println!(
            "Root VM exits under Diosix, whole run (boot, benchmarks, power-off): \
             guest_page_fault (virtual PLIC accesses), irq.external (a host interrupt while \
             the vCPU ran), irq.kick (another hart passing one on)"
        );
        let causes = [
            "total",
            "guest_page_fault",
            "irq.external",
            "irq.kick",
            "sbi.ipi",
            "irq.timer",
            "virtual_instruction",
        ];
        let cells = |f: &dyn Fn(&str) -> String| {
            causes
                .iter()
                .map(|c| format!("{:>w$}", f(c), w = c.len().max(8)))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        println!("{:<6} | {}", "vCPU", cells(&|c| c.to_string()));
        println!(
            "{:-<7}+{}",
            "",
            cells(&|_| String::new())
                .replace(' ', "-")
                .replace('|', "+")
        );
        for (vcpu, counts) in dx {
            let get = |c: &str| counts.iter().find(|(n, _)| n == c).map_or(0, |(_, v)| *v);
            println!("{vcpu:<6} | {}", cells(&|c| get(c).to_string()));
        }
    }
    Ok(())
}

/// The same disk benchmarks in a child VM of the Root VM, on a virtio-blk disk the Root
/// VM's `dsx backend` serves from its own `/dev/vda` (the Root VM booted with
/// `diosix.bench=childdisk`, its `rcS` starting the child and copying its console; the
/// disk holds the benchmark program, which the child mounts read-only and runs),
/// beside the Root VM's own figures (`root`, from [`linux_device_bench`]'s Diosix run)
/// as ratios. Same harts, same fresh disk image, same clock (the child's).
fn child_disk_bench(a: &crate::rootvm::RootVmArtifacts, root: &[Workload]) -> Result<()> {
    let cmdline = format!("{} diosix.bench=childdisk", a.cmdline);
    let name = format!("bench-linux-childdisk-smp{WORKLOAD_HARTS}");
    let images = workspace_root().join("target").join("test-images");
    let disk = images.join("bench-childdisk.img");
    let [mut q, _] = linux_runs(a, &name, WORKLOAD_HARTS, Some(&cmdline))?;
    // The child's initramfs has no benchmark program: it runs the one on the disk.
    let workloads = a
        .provenance
        .built
        .iter()
        .find(|(what, _)| *what == "diosix-workloads")
        .map(|(_, p)| p.clone())
        .ok_or("the Root VM was built without diosix-workloads")?;
    let dir = images.join("bench-childdisk-files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::copy(&workloads, dir.join("diosix-workloads"))
        .map_err(|e| format!("{}: {e}", workloads.display()))?;
    crate::disk::new_disk(&disk, DEVICE_DISK_MIB << 20, Some(&dir), true)?;
    q.devices = qemu::Devices {
        disks: vec![disk.clone()],
        ..Default::default()
    };
    q.timeout = Duration::from_secs(900);
    let (_, child) = run_workloads(&q, DEVICES_DONE)?;
    let find = |w: &[Workload], n: &str| w.iter().find(|w| w.name == n).cloned();
    let mib = (1u64 << 20) as f64;
    println!();
    println!(
        "Child VM disk, {WORKLOAD_HARTS} harts: the same reads in a child VM whose /dev/vda \
         is served by dsx in the Root VM from the Root VM's own /dev/vda (virtio-blk \
         passthrough), by the elapsed time"
    );
    println!(
        "{:<18} | {:>10} | {:>10} | {:>6}",
        "read", "child", "Root VM", "ratio"
    );
    println!("{:-<19}+{:-<12}+{:-<12}+{:-<7}", "", "", "", "");
    type Row<'a> = (&'a str, &'a str, &'a dyn Fn(f64) -> f64, &'a str);
    let rows: [Row<'_>; 3] = [
        (
            "O_DIRECT, 1 MiB",
            "seq_read_1MiB",
            &|ns| mb_per_s(mib, ns),
            "MB/s",
        ),
        (
            "busybox dd bs=1M",
            "dd_64MiB",
            &|ns| mb_per_s(64.0 * mib, ns),
            "MB/s",
        ),
        ("random 4 KiB", "rand_read_4KiB", &|ns| ns / 1e3, "µs"),
    ];
    for (label, n, per, unit) in rows {
        let (Some(c), Some(r)) = (find(&child, n), find(root, n)) else {
            continue;
        };
        let (cv, rv) = (per(c.mean()), per(r.mean()));
        println!(
            "{:<18} | {:>10} | {:>10} | {:>6}",
            label,
            format!("{cv:.1} {unit}"),
            format!("{rv:.1} {unit}"),
            ratio(Some(cv), rv)
        );
    }
    println!(
        "(each child request crosses harts twice: the child's doorbell wakes the Root VM's \
         backend, its interrupt wakes the child. Under -icount QEMU runs the harts in turn \
         on one thread, and an interrupt for another hart waits until the running hart's \
         turn ends: a trace shows the child's SCHED_IDLE soaker running 70 K to 1.2 M \
         instructions after each doorbell before the backend's hart runs. The work itself \
         is about 120 K instructions per 64 KiB moved, half of it the two copies)"
    );
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
        "{:<24} | {:>16} | {:>12}",
        "VM tree (instructions)", "Root VM RAM", "Diosix"
    );
    println!("{:-<25}+{:-<18}+{:-<13}", "", "", "");
    // Under H at four Root VM sizes, then behind PMP (no H: no FORK, so no fork,
    // copy-on-write or IPC figures there).
    for (ram, cpu) in [
        (16u32, None),
        (64, None),
        (256, None),
        (1024, None),
        (64, Some(NO_H)),
    ] {
        let mode = if cpu.is_some() { "PMP" } else { "H" };
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
            &format!("bench-tree-{ram}-{}", mode.to_lowercase()),
            &image,
            Bios::None,
            1,
            host_mib,
            cpu,
        )?;
        for (name, v) in figures {
            if name.starts_with("fork_")
                || name.starts_with("cow_")
                || name.starts_with("spawn_")
                || name.starts_with("ipc_round_trip")
                || (name.starts_with("child_mem_") && ram == 64)
                || name == "yield_round_trip"
                || name.starts_with("vm_switch")
                || name == "first_instruction"
            {
                println!("{name:<24} | {ram:>8} MiB {mode:>3} | {v:>12}");
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
    fn device_lines_and_exits_are_parsed() {
        let out = "diosix-device seq_read_1MiB 128 131072 130\r\n\
                   diosix-device rand_read_4KiB 2000 16000\n\
                   diosix-dd 64+0 records in\n\
                   [diosix INFO  hart 0] VM root vCPU 1 exits: total 6067, sbi.ipi 235, \
                   irq.other 4, guest_page_fault 1; IPI wake-ups 287, 261526 time ticks in all\n";
        assert_eq!(
            parse_device_counts(out),
            [DeviceCounts {
                name: "seq_read_1MiB".into(),
                requests: 128,
                sectors: 131072,
                interrupts: 130
            }]
        );
        let x = parse_root_exits(out);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].0, 1);
        assert_eq!(
            x[0].1,
            [
                ("total".to_string(), 6067),
                ("sbi.ipi".to_string(), 235),
                ("irq.other".to_string(), 4),
                ("guest_page_fault".to_string(), 1)
            ]
        );
        assert_eq!(mb_per_s(1e6, 1e9), 1.0);
        assert_eq!(mb_per_s(1.0, 0.0), 0.0);
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
