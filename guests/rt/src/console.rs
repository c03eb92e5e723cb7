//! Console output over SBI DBCN (legacy putchar when DBCN is absent) and input.
//!
//! Guests must not assume a UART, so every byte goes through the SBI.

use crate::sbi;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Serialises whole `print!` calls so lines from different harts do not interleave.
static LOCK: AtomicBool = AtomicBool::new(false);
/// 0 = not probed yet, 1 = DBCN present, 2 = legacy putchar only.
static MODE: AtomicU8 = AtomicU8::new(0);

fn has_dbcn() -> bool {
    match MODE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let present = sbi::probe(sbi::eid::DBCN) != 0;
            MODE.store(if present { 1 } else { 2 }, Ordering::Relaxed);
            present
        }
    }
}

/// Writes all of `bytes`, retrying partial DBCN writes.
pub fn write_bytes(mut bytes: &[u8]) {
    if has_dbcn() {
        while !bytes.is_empty() {
            let ret = sbi::dbcn_write(bytes);
            if !ret.is_ok() {
                break;
            }
            bytes = &bytes[ret.value.min(bytes.len())..];
        }
    } else {
        for &b in bytes {
            // SAFETY: legacy putchar takes the byte by value and touches no memory.
            unsafe { sbi::legacy_call(sbi::eid::LEGACY_CONSOLE_PUTCHAR, [b as usize, 0, 0, 0]) };
        }
    }
}

/// Reads one byte if one is waiting (never blocks).
pub fn try_read_byte() -> Option<u8> {
    if has_dbcn() {
        let mut b = [0u8; 1];
        let ret = sbi::dbcn_read(&mut b);
        (ret.is_ok() && ret.value == 1).then_some(b[0])
    } else {
        // SAFETY: legacy getchar takes no arguments and touches no memory.
        let c = unsafe { sbi::legacy_call(sbi::eid::LEGACY_CONSOLE_GETCHAR, [0; 4]) };
        (c >= 0).then_some(c as u8)
    }
}

/// Formats into a fixed buffer, flushing to the SBI whenever it fills, so one line
/// costs few SBI calls.
struct Buffered {
    buf: [u8; 128],
    len: usize,
}

impl Buffered {
    fn flush(&mut self) {
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for Buffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Used by [`print!`]: formats and writes atomically with respect to other harts.
pub fn print_fmt(args: fmt::Arguments) {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let mut out = Buffered {
        buf: [0; 128],
        len: 0,
    };
    let _ = out.write_fmt(args);
    out.flush();
    LOCK.store(false, Ordering::Release);
}

/// Releases the console lock unconditionally (panic path only).
pub fn force_unlock() {
    LOCK.store(false, Ordering::Release);
}

/// Prints to the SBI console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the SBI console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
