//! Runs QEMU with a timeout and captures its serial output.
