//! Running the programs xtask drives (cargo, make, apt-get, tar, strip, ...), in the ways
//! it needs them:
//!
//! - [`status`], [`run`] and [`cargo`]: output straight to the terminal, for commands
//!   whose output the user should see as it happens;
//! - [`run_quiet`]: output captured and shown (its last lines) only if the command fails,
//!   for short steps;
//! - [`run_logged`]: output to a log file, with an optional progress report, for the long
//!   Root VM builds;
//! - [`stdout`] and [`stdout_any_status`]: what a command prints, as text (versions,
//!   lists).
//!
//! Every error is a message naming the program. QEMU is run by `qemu.rs`, which also
//! talks to the guest's console while it runs.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{workspace_root, Result};

/// How many lines of a failing command's output go into the error message.
const TAIL_LINES: usize = 40;

/// How often [`run_logged`] reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// The program `cmd` runs, for messages.
fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs `cmd` with the terminal's stdin, stdout and stderr and returns its exit status.
/// Fails only when it cannot be started: `cannot run <program>: <why>`.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .map_err(|e| format!("cannot run {}: {e}", program(cmd)))
}

/// Runs `cmd` with the terminal's stdin, stdout and stderr; fails with
/// `<what> failed (<status>)` unless it succeeds.
pub fn run(what: &str, cmd: &mut Command) -> Result<()> {
    let status = status(cmd).map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Runs `cargo <args>` in the workspace, echoing the command first (`+ cargo ...`).
pub fn cargo(args: &[&str]) -> Result<()> {
    println!("+ cargo {}", args.join(" "));
    let status = status(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(args),
    )?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// What `cmd` prints on stdout, if it runs and succeeds.
pub fn stdout(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `cmd` prints on stdout, if it runs, whatever its exit status (`dpkg-query`, for
/// one, lists what it knows and fails for the names it does not).
pub fn stdout_any_status(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a short command with no input and its output captured. On failure, the error
/// has the last lines of its output (stdout, then stderr).
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let program = program(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    // `&*`: with a second `Add` impl for String in the graph (smartstring's), `&Cow`
    // is no longer coerced to `&str` by itself.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    Err(format!("{program} failed ({}):\n{tail}", out.status))
}

/// How [`run_logged`] reports how far a long command is.
pub struct Progress {
    /// Printed before each report, e.g. `[rootvm]   linux`.
    pub label: String,
    /// Whether a line of output is one unit of work done (say, one compiled object).
    pub counts: fn(&str) -> bool,
    /// The first-run estimate of how many units there are; replaced by the real count of
    /// the last successful run, kept in `count_file`.
    pub expected: usize,
    /// Where the count of the last successful run is kept.
    pub count_file: PathBuf,
}

/// Runs a long command with no input and its output (stdout and stderr, interleaved as
/// printed) appended to `log_path`, after a `==> <what>: <command>` line.
///
/// With `progress`, prints `<label>: N objects built (~P%)` at most every 15 s. On
/// failure, the error has the last lines of the output, the first error line if that
/// scrolled out of them, and the log's path.
pub fn run_logged(
    what: &str,
    cmd: &mut Command,
    log_path: &Path,
    progress: Option<Progress>,
) -> Result<()> {
    if let Some(logs) = log_path.parent() {
        fs::create_dir_all(logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    }
    let mut log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let _ = writeln!(log_file, "==> {what}: {cmd:?}");

    let program = program(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run {program}: {e}"))?;

    // Both streams feed one channel so the log keeps make's interleaving of errors and
    // progress lines.
    let (tx, rx) = mpsc::channel::<String>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let readers: Vec<_> = streams
        .into_iter()
        .flatten()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let expected = progress.as_ref().map(|p| {
        fs::read_to_string(&p.count_file)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(p.expected)
    });
    let mut done = 0usize;
    let mut first_error: Option<String> = None;
    let mut last_report = Instant::now();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
    for line in rx {
        let _ = writeln!(log_file, "{line}");
        if first_error.is_none() && (line.contains("error:") || line.contains("***")) {
            first_error = Some(line.clone());
        }
        if let (Some(p), Some(expected)) = (&progress, expected) {
            if (p.counts)(&line) {
                done += 1;
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                let pct = (done * 100 / expected.max(1)).min(99);
                println!("{}: {done} objects built (~{pct}%)", p.label);
                last_report = Instant::now();
            }
        }
        tail.push_back(line);
        if tail.len() > TAIL_LINES {
            tail.pop_front();
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(|e| format!("{what}: waiting for {program}: {e}"))?;
    if !status.success() {
        // With -j, make keeps building after the first error, which can scroll it out of
        // the tail: show it separately when it did.
        let first = first_error
            .filter(|f| !tail.contains(f))
            .map(|f| format!("First error:\n{f}\n"))
            .unwrap_or_default();
        return Err(format!(
            "{what} failed ({status}). {first}Last {} lines of output:\n{}\n\
             Full log: {}",
            tail.len(),
            Vec::from(tail).join("\n"),
            log_path.display()
        ));
    }
    if let Some(p) = progress {
        // Remember the real count so the next first-time build's percentage is right.
        if let Some(dir) = p.count_file.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = fs::write(&p.count_file, done.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_failure_shows_the_end_of_stdout_then_stderr() {
        let err = run_quiet(Command::new("sh").args([
            "-c",
            "for i in $(seq 1 50); do echo out$i; done; echo err >&2; exit 3",
        ]))
        .unwrap_err();
        assert!(err.starts_with("sh failed (exit status: 3):\n"), "{err}");
        assert!(err.ends_with("out50\nerr"), "{err}");
        assert!(!err.contains("out10\n"), "{err}");
        assert!(run_quiet(&mut Command::new("true")).is_ok());
        let missing = run_quiet(&mut Command::new("/nonexistent/xtask-no-such-program"));
        assert!(missing.unwrap_err().starts_with("cannot run /nonexistent/"));
    }

    #[test]
    fn logged_run_writes_the_log_and_counts_progress() {
        let dir = std::env::temp_dir().join(format!("xtask-process-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let log = dir.join("logs/t.log");
        let progress = Progress {
            label: "t".into(),
            counts: |l| l.starts_with("CC"),
            expected: 10,
            count_file: dir.join("logs/progress/t"),
        };
        run_logged(
            "t",
            Command::new("sh").args(["-c", "echo CC a; echo x >&2; echo CC b"]),
            &log,
            Some(progress),
        )
        .unwrap();
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("==> t: ") && text.contains("CC a\n") && text.contains("x\n"));
        assert_eq!(
            fs::read_to_string(dir.join("logs/progress/t")).unwrap(),
            "2"
        );
        let err = run_logged(
            "t",
            Command::new("sh").args(["-c", "echo 'make: *** oops'; exit 2"]),
            &log,
            None,
        )
        .unwrap_err();
        assert!(
            err.starts_with("t failed (exit status: 2). Last 1 lines"),
            "{err}"
        );
        assert!(
            err.contains("make: *** oops") && err.contains("Full log: "),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn stdout_depends_on_the_status_only_when_asked() {
        let mut fails = Command::new("sh");
        fails.args(["-c", "echo listed; exit 1"]);
        assert_eq!(stdout(&mut fails), None);
        assert_eq!(stdout_any_status(&mut fails).as_deref(), Some("listed\n"));
        assert_eq!(
            stdout(Command::new("echo").arg("v1")).as_deref(),
            Some("v1\n")
        );
    }

    #[test]
    fn terminal_runs_report_the_status() {
        assert!(run("t", &mut Command::new("true")).is_ok());
        assert_eq!(
            run("t", &mut Command::new("false")).unwrap_err(),
            "t failed (exit status: 1)"
        );
        let missing = run("t", &mut Command::new("/nonexistent/xtask-no-such-program"));
        assert!(missing
            .unwrap_err()
            .starts_with("t: cannot run /nonexistent/"));
    }
}
