//! `cargo xtask bench`: deterministic instruction-count benchmarks.
use crate::Result;

/// Runs the benchmarks and prints their figures.
pub fn cmd_bench(_args: &[String]) -> Result<()> {
    Err("not yet".into())
}
