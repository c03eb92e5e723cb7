//! The host console (the UART named by the device tree) and the logger.
//!
//! Log lines carry their level and the hart that wrote them; addresses in them are
//! always typed (`HPA 0x…`, `GPA 0x…`, `GVA 0x…`) by the address types' formatting.
//!
//! Guest console bytes ([`write_bytes`]) reach the UART exactly as the guest wrote
//! them: a guest owns its line discipline (Linux's tty adds CR before LF itself, a
//! bare-metal guest may not want it). Only the hypervisor's own text ([`LogWriter`])
//! turns LF into CR LF, so its log lines read well on a serial terminal.
//!
//! Seen through a pipe (as `cargo xtask test` reads QEMU), the serial output is
//! byte-exact. On an interactive terminal QEMU's stdio backend leaves the terminal's
//! output processing on, so the host tty itself turns each LF into CR LF and a guest's
//! CR LF shows as CR CR LF there; nothing on this side adds the extra CR.

use alloc::boxed::Box;
use core::fmt::{self, Write};
use diosix_riscv::uart::Uart;
use spin::{Mutex, Once};

static UART: Once<Box<dyn Uart>> = Once::new();
/// Serialises whole lines so output from several harts never interleaves mid-line.
static LINE_LOCK: Mutex<()> = Mutex::new(());

/// Uses `uart` as the host console from now on.
pub fn set_uart(uart: Box<dyn Uart>) {
    uart.init();
    UART.call_once(|| uart);
}

/// The hypervisor's own text on the UART, LF written as CR LF. Never used for guest
/// bytes (see the module documentation).
struct LogWriter<'a>(&'a dyn Uart);

impl Write for LogWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.0.putc(b'\r');
            }
            self.0.putc(b);
        }
        Ok(())
    }
}

/// Prints without taking the line lock: for panics, where the lock may be held by the
/// hart that failed. Prints nothing before the UART is known.
pub fn emergency_print(args: fmt::Arguments) {
    if let Some(uart) = UART.get() {
        let _ = LogWriter(uart.as_ref()).write_fmt(args);
    }
}

/// Writes guest console bytes (the Root VM's console is the host UART) as they are:
/// no byte is added, dropped or changed.
pub fn write_bytes(bytes: &[u8]) {
    if let Some(uart) = UART.get() {
        let _guard = LINE_LOCK.lock();
        for &b in bytes {
            uart.putc(b);
        }
    }
}

/// One byte of console input, if any is waiting; never blocks.
pub fn read_byte() -> Option<u8> {
    UART.get().and_then(|u| u.getc())
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if let Some(uart) = UART.get() {
            let _guard = LINE_LOCK.lock();
            let _ = writeln!(
                LogWriter(uart.as_ref()),
                "[diosix {:<5} hart {}] {}",
                record.level(),
                diosix_riscv::csr::id::mhartid(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Routes the `log` macros to the UART.
pub fn init_logger() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}
