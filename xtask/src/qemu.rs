//! Runs QEMU with a wall-clock timeout and captures its serial output.
//!
//! The console is QEMU's stdio serial port (`-display none -serial stdio -monitor
//! none`), so the guest's SBI console output (and the firmware's) arrives on stdout.
//! Optional expect/send steps type into the console once a substring appears, for
//! interactive tests (the demo's echo, later a Linux login).
use crate::{workspace_root, Result};
use std::io::{Read, Write};
use std::path::PathBuf;
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
    /// Deterministic timing: `-icount shift=0,sleep=off -seed 1`.
    pub icount: bool,
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
            append: None,
            extra: Vec::new(),
            timeout: Duration::from_secs(60),
            interact: Vec::new(),
            stop_at: None,
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

/// The QEMU command line for `opts`.
pub fn command(opts: &QemuOptions) -> Command {
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args([
        "-machine", "virt", "-display", "none", "-serial", "stdio", "-monitor", "none",
    ]);
    cmd.arg("-no-reboot");
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
        cmd.args(["-icount", "shift=0,sleep=off", "-seed", "1"]);
    }
    if let Some(a) = &opts.append {
        cmd.args(["-append", a]);
    }
    cmd.args(&opts.extra);
    cmd
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
