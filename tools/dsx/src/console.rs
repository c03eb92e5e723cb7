//! `dsx console CID`: this terminal becomes the child's console until Ctrl-].
//!
//! The hypervisor has no console interrupt for the parent, so this polls: it drains the
//! child's output, then waits up to [`IDLE_WAIT_MS`] for keys. Typed input the child's
//! 4 KiB input buffer cannot take yet is kept and offered again, never dropped.

use std::io::Write;

use diosix_abi::limits;

use crate::commands::{fail, Failure};
use crate::format::Op;
use crate::hv::Hypervisor;

/// Ctrl-]: the byte that detaches (as telnet's escape).
pub const DETACH: u8 = 0x1d;

/// How long to wait for a key when the child printed nothing: short enough that output
/// appears promptly, long enough not to spin.
const IDLE_WAIT_MS: i32 = 30;

/// Splits typed bytes at the first Ctrl-]: what to send, and whether to detach.
pub fn split_input(bytes: &[u8]) -> (&[u8], bool) {
    match bytes.iter().position(|&b| b == DETACH) {
        Some(i) => (&bytes[..i], true),
        None => (bytes, false),
    }
}

/// Puts the terminal in raw mode (keys go to the child as typed, Ctrl-C included) and
/// restores it when dropped, also on an error path.
struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return RawMode { saved: None };
        }
        // SAFETY: termios is plain data, fully written by tcgetattr before use.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to fill in.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return RawMode { saved: None };
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: `t` is a valid termios derived from the current one.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

/// Waits up to `ms` for stdin to be readable.
fn stdin_ready(ms: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    n > 0 && fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// Reads what stdin has (at most `buf.len()`); 0 at end of input.
fn read_stdin(buf: &mut [u8]) -> usize {
    // SAFETY: reads into `buf`, bounded by its length.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// Runs the console session with child `cid`.
pub fn attach(hv: &mut dyn Hypervisor, cid: u64) -> Result<(), Failure> {
    let op = Op::Console(cid);
    let mut out = std::io::stdout();
    // Probe before touching the terminal, so a bad CID is a plain error.
    let mut buf = vec![0u8; limits::CONSOLE_MAX_TRANSFER];
    let mut n = hv.console_read(cid, &mut buf).map_err(fail(op))?;
    eprintln!("dsx: attached to CID {cid}'s console; Ctrl-] detaches");
    let _raw = RawMode::enter();
    let mut pending: Vec<u8> = Vec::new();
    let mut input = vec![0u8; limits::CONSOLE_MAX_TRANSFER];
    let mut stdin_open = true;
    loop {
        if n > 0 {
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
        }
        if !pending.is_empty() {
            let take = pending.len().min(limits::CONSOLE_MAX_TRANSFER);
            let sent = hv.console_write(cid, &pending[..take]).map_err(fail(op))?;
            pending.drain(..sent.min(take));
        }
        // Wait for keys only when there is nothing else to do.
        let idle = n == 0 && pending.is_empty();
        if stdin_open && stdin_ready(if idle { IDLE_WAIT_MS } else { 0 }) {
            let got = read_stdin(&mut input);
            if got == 0 {
                // End of input (a pipe, or a closed terminal): nothing more to type.
                stdin_open = false;
            }
            let (send, detach) = split_input(&input[..got]);
            pending.extend_from_slice(send);
            if detach {
                break;
            }
        } else if !stdin_open && idle {
            std::thread::sleep(std::time::Duration::from_millis(IDLE_WAIT_MS as u64));
        }
        n = hv.console_read(cid, &mut buf).map_err(fail(op))?;
        if !stdin_open && n == 0 && pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        // Typed before Ctrl-]: offer it once more rather than lose it silently.
        let take = pending.len().min(limits::CONSOLE_MAX_TRANSFER);
        let _ = hv.console_write(cid, &pending[..take]);
    }
    drop(_raw);
    eprintln!("\r\ndsx: detached from CID {cid}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_bracket_detaches() {
        assert_eq!(split_input(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_input(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_input(b"\x1d"), (&b""[..], true));
        assert_eq!(split_input(b""), (&b""[..], false));
    }
}
