//! Test reporting shared by the test guests: one `ok <name>` or `FAIL <name>: ...`
//! line per check, counted, and a closing `<tool>: N passed, M failed` line that the
//! QEMU harness reads.

use crate::println;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Records a passed check: prints `ok <what>`.
pub fn pass_with(what: fmt::Arguments) {
    PASSED.fetch_add(1, Ordering::Relaxed);
    println!("ok {what}");
}

/// Records a failed check: prints `FAIL <what>`.
pub fn fail_with(what: fmt::Arguments) {
    FAILED.fetch_add(1, Ordering::Relaxed);
    println!("FAIL {what}");
}

/// Records a passed check named `name`.
pub fn pass(name: &str) {
    pass_with(format_args!("{name}"));
}

/// Records a failed check named `name`, with what it got and expected.
pub fn fail(name: &str, got: impl fmt::Debug, expected: impl fmt::Debug) {
    fail_with(format_args!("{name}: got {got:?} expected {expected:?}"));
}

/// Passes when `got == expected`, else fails with both; returns whether it passed.
pub fn check<T: PartialEq + fmt::Debug>(name: &str, got: T, expected: T) -> bool {
    let ok = got == expected;
    if ok {
        pass(name);
    } else {
        fail(name, got, expected);
    }
    ok
}

/// Prints the closing `<tool>: N passed, M failed` line; returns the failures.
pub fn summary(tool: &str) -> usize {
    let (p, f) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("{tool}: {p} passed, {f} failed");
    f
}
