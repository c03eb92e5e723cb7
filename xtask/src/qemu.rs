//! Runs QEMU with a wall-clock timeout and captures its serial output.
//!
//! The console is QEMU's stdio serial port (`-display none -serial stdio -monitor
//! none`), so the guest's SBI console output (and the firmware's) arrives on stdout.
//! Optional expect/send steps type into the console once a substring appears, for
//! interactive tests (the demo's echo, later a Linux login).
//!
//! The machine's command line is built in one place, [`command`] (captured runs) and
//! [`interactive`] (`cargo xtask run`), both from [`QemuOptions`], including the
//! devices a run attaches ([`Devices`]: virtio-blk disks, virtio-net with a forwarded
//! port).
use crate::{workspace_root, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The machine's firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bios {
    /// `-bios none`: the kernel image is entered at reset in M-mode (Diosix).
    None,
    /// `-bios default`: QEMU's bundled OpenSBI, kernel entered in S-mode.
    Default,
}

/// One QEMU run.
#[derive(Clone, Debug)]
pub struct QemuOptions {
    /// Name of the run: the log goes to `target/test-logs/<name>.log`.
    pub name: String,
    /// ELF passed with `-kernel`.
    pub kernel: PathBuf,
    /// Firmware.
    pub bios: Bios,
    /// Host harts (`-smp`).
    pub smp: u32,
    /// RAM in MiB (`-m`).
    pub mem_mib: u32,
    /// Deterministic timing: `-icount shift=0,sleep=off -seed N` (`seed`).
    pub icount: bool,
    /// QEMU's random seed under `icount` (1 unless a benchmark varies it).
    pub seed: u32,
    /// `-append` (the DTB's `/chosen/bootargs`; only meaningful with OpenSBI).
    pub append: Option<String>,
    /// Further QEMU arguments.
    pub extra: Vec<String>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Interaction: when the substring appears (after the previous step's match), send
    /// the text to the console.
    pub interact: Vec<(String, String)>,
    /// Stop QEMU as soon as this substring appears (for guests that keep running).
    pub stop_at: Option<String>,
    /// Disks and network attached to the machine.
    pub devices: Devices,
    /// QEMU's `-machine` (`virt` unless a case says otherwise).
    pub machine: String,
}

/// Devices attached to the machine besides the `virt` board's own, on its virtio-mmio
/// transports (which the Root VM's Linux drives).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// Raw disk images, each a virtio-blk device (`/dev/vda`, `/dev/vdb`... in Linux,
    /// in this order).
    pub disks: Vec<PathBuf>,
    /// User-mode networking (the guest is 10.0.2.15 by DHCP) on a virtio-net device,
    /// with host `127.0.0.1:<port>` forwarded to the guest's TCP port 80 (or
    /// [`Devices::net_guest_port`]).
    pub net_port: Option<u16>,
    /// The guest's TCP port `net_port` reaches; 0 means 80.
    pub net_guest_port: u16,
    /// A virtio-rng device (`/dev/hwrng` in Linux), fed from the host's entropy.
    pub rng: bool,
}

/// The host port `--net` forwards to the guest's port 80 when it is free.
pub const DEFAULT_NET_PORT: u16 = 8080;

impl Devices {
    /// The QEMU arguments that attach them, disks in order (the first is the one Linux
    /// names `vda`).
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (n, disk) in self.disks.iter().enumerate() {
            args.push("-drive".to_string());
            args.push(format!(
                "file={},if=none,format=raw,id=hd{n}",
                qemu_option_value(&disk.display().to_string())
            ));
            args.push("-device".to_string());
            args.push(format!("virtio-blk-device,drive=hd{n}"));
        }
        if let Some(port) = self.net_port {
            let guest = if self.net_guest_port == 0 {
                80
            } else {
                self.net_guest_port
            };
            args.push("-netdev".to_string());
            args.push(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{guest}"
            ));
            args.push("-device".to_string());
            args.push("virtio-net-device,netdev=net0".to_string());
        }
        if self.rng {
            args.push("-device".to_string());
            args.push("virtio-rng-device".to_string());
        }
        args
    }
}

/// `value` as one QEMU option value: commas doubled (QEMU's escape for them).
fn qemu_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// `preferred` if nothing listens on `127.0.0.1:<preferred>`, else the next free port
/// above it (within 100), else one the kernel picks. Checked by binding, so another
/// program may still take it before QEMU does.
pub fn free_port(preferred: u16) -> Result<u16> {
    let bind = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p));
    for p in (preferred..=preferred.saturating_add(100)).filter(|&p| p != 0) {
        if bind(p).is_ok() {
            return Ok(p);
        }
    }
    bind(0)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free TCP port on 127.0.0.1: {e}"))
}

impl QemuOptions {
    /// Defaults: no firmware, 1 hart, 512 MiB, 60 s, no interaction.
    pub fn new(name: &str, kernel: PathBuf) -> Self {
        QemuOptions {
            name: name.to_string(),
            kernel,
            bios: Bios::None,
            smp: 1,
            mem_mib: 512,
            icount: false,
            seed: 1,
            append: None,
            extra: Vec::new(),
            timeout: Duration::from_secs(60),
            interact: Vec::new(),
            stop_at: None,
            devices: Devices::default(),
            machine: "virt".to_string(),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct QemuOutput {
    /// Everything QEMU wrote to stdout and stderr, lossily decoded.
    pub output: String,
    /// QEMU's exit status (`None` if it was stopped by `stop_at`).
    pub status: Option<ExitStatus>,
    /// Wall time of the run.
    pub wall: Duration,
    /// When each interaction step's substring appeared, from QEMU's start (one entry
    /// per step reached).
    pub matched: Vec<Duration>,
    /// Where the full log was saved.
    pub log: PathBuf,
}

/// The last `n` lines of `s`, for error messages.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where `needle` first occurs in `hay` (byte offsets: the raw serial output is
/// searched, so a partly received UTF-8 sequence cannot shift positions).
fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn save_log(name: &str, output: &str) -> PathBuf {
    let dir = workspace_root().join("target").join("test-logs");
    let path = dir.join(format!("{name}.log"));
    // A log that cannot be written must not fail the test itself.
    let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, output));
    path
}

/// The QEMU command line for `opts`, for a captured run: console on stdio, no monitor.
pub fn command(opts: &QemuOptions) -> Command {
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args([
        "-machine",
        &opts.machine,
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ]);
    cmd.arg("-no-reboot");
    machine_args(&mut cmd, opts);
    cmd
}

/// The QEMU command line for `opts` on the terminal (`-nographic`: the console on
/// stdio with QEMU's Ctrl-a escapes; Ctrl-a x quits). Timeout, interaction and
/// `stop_at` do not apply.
pub fn interactive(opts: &QemuOptions) -> Command {
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args(["-nographic", "-machine", &opts.machine]);
    machine_args(&mut cmd, opts);
    cmd
}

/// What [`command`] and [`interactive`] share: firmware, kernel, harts, RAM, timing,
/// command line, devices, then `opts.extra`.
fn machine_args(cmd: &mut Command, opts: &QemuOptions) {
    cmd.args([
        "-bios",
        if opts.bios == Bios::None {
            "none"
        } else {
            "default"
        },
    ]);
    cmd.arg("-kernel").arg(&opts.kernel);
    cmd.args([
        "-smp",
        &opts.smp.to_string(),
        "-m",
        &format!("{}M", opts.mem_mib),
    ]);
    if opts.icount {
        cmd.args([
            "-icount",
            "shift=0,sleep=off",
            "-seed",
            &opts.seed.to_string(),
        ]);
    }
    if let Some(a) = &opts.append {
        cmd.args(["-append", a]);
    }
    cmd.args(opts.devices.args());
    cmd.args(&opts.extra);
}

/// The command line as one shell-like string, for showing what is run.
pub fn display_command(cmd: &Command) -> String {
    let root = workspace_root();
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let p = Path::new(a);
            let a = p.strip_prefix(&root).unwrap_or(p).display().to_string();
            if a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs QEMU; returns its output, or an error with the last lines of output if it
/// could not start or ran past the timeout (QEMU is killed then). The full serial log
/// is saved in every case.
pub fn run(opts: &QemuOptions) -> Result<QemuOutput> {
    let start = Instant::now();
    let mut child = command(opts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: cannot run qemu-system-riscv64: {e}", opts.name))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    // One reader thread per pipe so neither can fill up and stall QEMU.
    let mut readers = Vec::new();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("stdout is piped")),
        Box::new(child.stderr.take().expect("stderr is piped")),
    ];
    for mut pipe in pipes {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    // Kept open for the whole run: closing it would be an EOF on the guest's console.
    let mut stdin = child.stdin.take();
    let mut raw = Vec::new();
    let mut step = 0;
    let mut search_from = 0;
    let deadline = start + opts.timeout;
    let mut stopped_early = false;
    let mut matched = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            // Killing a process we started, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            let output = String::from_utf8_lossy(&raw).into_owned();
            let log = save_log(&opts.name, &output);
            let waiting = match opts.interact.get(step) {
                Some((wait, _)) => format!(", waiting for `{}`", wait.escape_debug()),
                None => String::new(),
            };
            return Err(format!(
                "{}: timed out after {:.0} s{waiting} (log {}); last output:\n{}",
                opts.name,
                opts.timeout.as_secs_f64(),
                log.display(),
                tail(&output, 15)
            ));
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(chunk) => raw.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Several steps may be satisfied by one chunk; each is searched for after the
        // previous one's match, so a step never matches text seen before it.
        while let Some((wait, send)) = opts.interact.get(step) {
            let Some(pos) = find_bytes(&raw[search_from.min(raw.len())..], wait.as_bytes()) else {
                break;
            };
            search_from += pos + wait.len();
            step += 1;
            matched.push(start.elapsed());
            if let Some(s) = stdin.as_mut() {
                // The guest polls the console; a failed write shows up as a
                // missing expectation.
                let _ = s.write_all(send.as_bytes()).and_then(|_| s.flush());
            }
        }
        if let Some(stop) = &opts.stop_at {
            if find_bytes(&raw, stop.as_bytes()).is_some() {
                let _ = child.kill();
                stopped_early = true;
                break;
            }
        }
    }
    drop(stdin.take());
    let status = child
        .wait()
        .map_err(|e| format!("{}: waiting for qemu: {e}", opts.name))?;
    for r in readers {
        let _ = r.join();
    }
    while let Ok(chunk) = rx.try_recv() {
        raw.extend_from_slice(&chunk);
    }
    let output = String::from_utf8_lossy(&raw).into_owned();
    let log = save_log(&opts.name, &output);
    Ok(QemuOutput {
        output,
        status: (!stopped_early).then_some(status),
        wall: start.elapsed(),
        matched,
        log,
    })
}

/// `cargo xtask run --help`.
const RUN_USAGE: &str = "\
usage: cargo xtask run [--smp N] [--mem SIZE] [--disk FILE]... [--net] [--rng]
                       [--cpu MODEL] [--machine NAME] [--opensbi] [--gdb] [build options]
Builds everything, then boots it in QEMU on this terminal (Ctrl-a x quits).
  --smp N         host harts (default 2)
  --mem SIZE      host RAM, e.g. 512M or 2G; a bare number is MiB (default 1G)
  --disk FILE     attach the raw image FILE as a virtio-blk device (repeatable; the
                  first is the Root VM's /dev/vda, mounted at /var/lib/diosix); make
                  one with `cargo xtask disk new FILE 256M`
  --net           attach a virtio-net device on QEMU's user network (the Root VM gets
                  10.0.2.15 by DHCP); its port 80 is forwarded to 127.0.0.1:8080, or
                  the first free port above it (printed)
  --rng           attach a virtio-rng device (the Root VM's /dev/hwrng)
  --cpu MODEL     QEMU's -cpu: `rv64,h=false` gives harts without the H extension, on
                  which Diosix runs its guests in S-mode behind PMP
  --machine NAME  QEMU's -machine (default virt): `sifive_u` with --smp 5 models a
                  HiFive Unleashed (a monitor hart without S-mode, four U54s)
  --opensbi       boot the Root VM's kernel and initramfs on QEMU's OpenSBI, without
                  Diosix (of the build options, only --cmdline applies)
  --gdb           start QEMU halted with its GDB stub on 127.0.0.1 (port 1234 or the
                  next free one); attach with `cargo xtask gdb` (docs/debugging.md)
build options, as for `cargo xtask build`:
  --root-vm FILE  --demo  --vcpus N  --ram SIZE  --cmdline TEXT  --out OUT";

/// Build options `run` passes on to `cargo xtask build` that take a value.
const BUILD_OPTS_WITH_VALUE: &[&str] = &["--root-vm", "--out", "--vcpus", "--ram", "--cmdline"];

/// The options of one `cargo xtask run`.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunArgs {
    /// `--smp`.
    smp: u32,
    /// `--mem`, in MiB.
    mem_mib: u32,
    /// `--disk` files, in order, as given.
    disks: Vec<PathBuf>,
    /// `--net`.
    net: bool,
    /// `--rng`.
    rng: bool,
    /// `--opensbi`.
    opensbi: bool,
    /// `--gdb`: halted at reset, with QEMU's GDB stub.
    gdb: bool,
    /// `--cpu`: QEMU's `-cpu` model (e.g. `rv64,h=false` for harts without H).
    cpu: Option<String>,
    /// `--machine`: QEMU's `-machine` (default `virt`).
    machine: Option<String>,
    /// `--cmdline` (also in `build`).
    cmdline: Option<String>,
    /// The build options, for `build::cmd_build`.
    build: Vec<String>,
}

/// A RAM size for `-m` in MiB: a bare number is MiB (as QEMU's `-m`), else bytes with
/// K, M, G or T, a whole number of MiB.
fn parse_mem_mib(s: &str) -> Result<u32> {
    let bytes = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().ok().and_then(|m| m.checked_mul(1 << 20))
    } else {
        crate::disk::parse_size(s).ok()
    };
    bytes
        .filter(|b| b % (1 << 20) == 0)
        .and_then(|b| u32::try_from(b >> 20).ok())
        .filter(|&m| m > 0)
        .ok_or_else(|| format!("bad --mem `{s}` (examples: 512M, 2G)"))
}

/// Parses `run`'s arguments; `None` for `--help`.
fn parse_run_args(args: &[String]) -> Result<Option<RunArgs>> {
    let mut r = RunArgs {
        smp: 2,
        mem_mib: 1024,
        ..RunArgs::default()
    };
    // The first build option other than --cmdline, which --opensbi refuses.
    let mut image_option = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{RUN_USAGE}"))
        };
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--smp" => {
                let v = val()?;
                r.smp = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad --smp `{v}`"))?;
            }
            "--mem" => r.mem_mib = parse_mem_mib(&val()?)?,
            "--disk" => r.disks.push(PathBuf::from(val()?)),
            "--net" => r.net = true,
            "--rng" => r.rng = true,
            "--opensbi" => r.opensbi = true,
            "--gdb" => r.gdb = true,
            "--cpu" => r.cpu = Some(val()?),
            "--machine" => r.machine = Some(val()?),
            "--demo" => {
                image_option.get_or_insert_with(|| a.clone());
                r.build.push(a.clone());
            }
            o if BUILD_OPTS_WITH_VALUE.contains(&o) => {
                let v = val()?;
                if o == "--cmdline" {
                    r.cmdline = Some(v.clone());
                } else {
                    image_option.get_or_insert_with(|| a.clone());
                }
                r.build.extend([a.clone(), v]);
            }
            o => return Err(format!("unknown option `{o}`\n{RUN_USAGE}")),
        }
    }
    if let (true, Some(o)) = (r.opensbi, image_option) {
        return Err(format!(
            "`{o}` does not apply with --opensbi (which takes --smp, --mem, --cmdline, \
             --disk and --net)"
        ));
    }
    Ok(Some(r))
}

/// `cargo xtask run`: builds the hypervisor image (or, with `--opensbi`, just the Root
/// VM) and boots it interactively with the devices asked for. See [`RUN_USAGE`].
pub fn cmd_run(args: &[String]) -> Result<()> {
    let Some(r) = parse_run_args(args)? else {
        println!("{RUN_USAGE}");
        return Ok(());
    };
    // Checked before the build, which may take minutes.
    let mut devices = Devices::default();
    for disk in &r.disks {
        devices.disks.push(crate::disk::existing_image(disk)?);
    }
    let mut q = if r.opensbi {
        crate::setup::ensure_all()?;
        let a = crate::rootvm::build_linux_root_vm()?;
        let mut q = QemuOptions::new("run-opensbi", a.kernel_image);
        q.bios = Bios::Default;
        q.append = Some(r.cmdline.unwrap_or(a.cmdline));
        q.extra = vec!["-initrd".into(), a.initramfs.display().to_string()];
        q
    } else {
        QemuOptions::new("run", crate::build::cmd_build(&r.build)?)
    };
    q.smp = r.smp;
    q.mem_mib = r.mem_mib;
    if let Some(cpu) = r.cpu {
        q.extra.extend(["-cpu".to_string(), cpu]);
    }
    if let Some(machine) = r.machine {
        q.machine = machine;
    }
    if r.net {
        devices.net_port = Some(free_port(DEFAULT_NET_PORT)?);
    }
    devices.rng = r.rng;
    q.devices = devices;
    // Kept until QEMU has ended: `cargo xtask gdb` attaches to the stub it names.
    let _gdb_session = if r.gdb {
        let stub = crate::gdb::Stub::new()?;
        q.extra.extend(stub.qemu_args());
        Some(crate::gdb::announce(&stub, &q.kernel)?)
    } else {
        None
    };
    let mut cmd = interactive(&q);
    println!("xtask: booting: {}", display_command(&cmd));
    if let Some(port) = q.devices.net_port {
        println!(
            "xtask: --net: the Root VM's port 80 is forwarded to http://127.0.0.1:{port}/ \
             (it gets 10.0.2.15 by DHCP)"
        );
    }
    println!("xtask: (Ctrl-a x quits QEMU)");
    // Console bytes pass through the hypervisor unchanged, so the terminal must not add
    // a CR before each LF (QEMU keeps the terminal's output processing).
    let _raw_output = TerminalOutput::pass_through();
    let status = crate::process::status(cmd.current_dir(workspace_root()))
        .map_err(|e| format!("starting QEMU: {e}"))?;
    if !status.success() {
        return Err(format!("QEMU exited with {status}"));
    }
    Ok(())
}

/// The terminal's LF-to-CR-LF output translation (`onlcr`) switched off while it lives
/// and restored when dropped, so console bytes reach the screen unchanged (a guest's
/// CR LF would otherwise show as CR CR LF). Does nothing when stdin is not a terminal.
struct TerminalOutput {
    saved: Option<String>,
}

impl TerminalOutput {
    fn pass_through() -> Self {
        let saved = stty(&["-g"]).map(|out| out.trim().to_string());
        if saved.is_some() {
            stty(&["-onlcr"]);
        }
        Self { saved }
    }
}

impl Drop for TerminalOutput {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            stty(&[s]);
        }
    }
}

/// Runs `stty` on this process's stdin (the terminal, if any); its output on success.
fn stty(args: &[&str]) -> Option<String> {
    crate::process::stdout(Command::new("stty").args(args).stdin(Stdio::inherit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_skips_a_busy_port() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let got = free_port(port).unwrap();
        assert_ne!(got, port);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, got)).is_ok());
    }

    fn run_args(args: &str) -> Result<Option<RunArgs>> {
        parse_run_args(
            &args
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn run_options() {
        let r =
            run_args("--smp 4 --mem 2G --disk a.img --net --rng --disk b.img --ram 256M --demo --cpu rv64,h=false --machine sifive_u --gdb")
                .unwrap()
                .unwrap();
        assert_eq!(
            r,
            RunArgs {
                smp: 4,
                mem_mib: 2048,
                disks: vec!["a.img".into(), "b.img".into()],
                net: true,
                rng: true,
                opensbi: false,
                gdb: true,
                cpu: Some("rv64,h=false".into()),
                machine: Some("sifive_u".into()),
                cmdline: None,
                build: ["--ram", "256M", "--demo"].map(String::from).to_vec(),
            }
        );
        let d = run_args("").unwrap().unwrap();
        assert_eq!((d.smp, d.mem_mib, d.build.len()), (2, 1024, 0));
        assert_eq!(run_args("--net --help").unwrap(), None);
        let o = run_args("--opensbi --cmdline quiet --mem 512")
            .unwrap()
            .unwrap();
        assert_eq!((o.cmdline.as_deref(), o.mem_mib), (Some("quiet"), 512));
        assert!(run_args("--opensbi --demo")
            .unwrap_err()
            .contains("`--demo` does not apply"));
        assert!(run_args("--bogus")
            .unwrap_err()
            .starts_with("unknown option `--bogus`"));
        assert!(run_args("--disk")
            .unwrap_err()
            .starts_with("--disk needs a value"));
        assert!(run_args("--smp 0").is_err());
        for bad in ["0", "1500K", "x", "1Q"] {
            assert!(parse_mem_mib(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_mem_mib("1024M"), Ok(1024));
    }

    #[test]
    fn device_args() {
        let d = Devices {
            disks: vec!["/a.img".into(), "/b,c.img".into()],
            net_port: Some(8081),
            net_guest_port: 0,
            rng: true,
        };
        assert_eq!(
            d.args().join(" "),
            "-drive file=/a.img,if=none,format=raw,id=hd0 -device virtio-blk-device,drive=hd0 \
             -drive file=/b,,c.img,if=none,format=raw,id=hd1 -device virtio-blk-device,drive=hd1 \
             -netdev user,id=net0,hostfwd=tcp:127.0.0.1:8081-:80 \
             -device virtio-net-device,netdev=net0 -device virtio-rng-device"
        );
        assert!(Devices::default().args().is_empty());
    }
}
