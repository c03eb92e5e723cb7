//! Facts the guests need from the device tree the SBI implementation passes in a1.

use crate::MAX_HARTS;

pub use fdt::Fdt;

/// Summary of the device tree.
#[derive(Clone, Copy, Debug)]
pub struct Info {
    /// Number of usable harts listed under `/cpus`.
    pub cpus: usize,
    /// Their hart ids (first `cpus` entries are valid).
    pub hart_ids: [usize; MAX_HARTS],
    /// Base of the first memory region.
    pub ram_base: usize,
    /// Total bytes of RAM over all memory regions.
    pub ram_size: usize,
    /// Ticks of `time` per second.
    pub timebase: u64,
    /// True if the boot hart's `riscv,isa` names the H extension: then the SBI's
    /// hfence calls are valid (SBI spec 2.0 §8.4-8.7 require H on the target harts).
    pub has_h: bool,
    /// True if the boot hart's `riscv,isa` names Sscofpmf: counter-overflow
    /// interrupts (LCOFI) and `scountovf`.
    pub has_sscofpmf: bool,
}

impl Info {
    /// Hart ids as a slice.
    pub fn harts(&self) -> &[usize] {
        &self.hart_ids[..self.cpus]
    }

    /// One past the last byte of RAM (assuming one contiguous region).
    pub fn ram_end(&self) -> usize {
        self.ram_base + self.ram_size
    }
}

/// True if the single-letter extension `letter` appears in an ISA string such as
/// `rv64imafdch_zicsr_...` (only the part before the first underscore counts).
fn isa_has(isa: &str, letter: u8) -> bool {
    let base = isa.split('_').next().unwrap_or("");
    base.len() > 4 && base.as_bytes()[4..].contains(&letter)
}

/// Parses the DTB at `addr`; panics (failing the guest) if it is not a valid DTB.
pub fn parse(addr: usize) -> Info {
    // SAFETY: the SBI implementation passes the DTB's physical address in a1, and with
    // the MMU off that is where it can be read; the header's size bounds the reads.
    let fdt = unsafe { fdt::Fdt::from_ptr(addr as *const u8) }
        .unwrap_or_else(|e| panic!("bad DTB at {addr:#x}: {e:?}"));
    let mut info = Info {
        cpus: 0,
        hart_ids: [0; MAX_HARTS],
        ram_base: 0,
        ram_size: 0,
        timebase: 10_000_000,
        has_h: false,
        has_sscofpmf: false,
    };
    for cpu in fdt.cpus() {
        let disabled = cpu
            .property("status")
            .and_then(|p| p.as_str())
            .is_some_and(|s| s != "okay" && s != "ok");
        if disabled || info.cpus >= MAX_HARTS {
            continue;
        }
        info.hart_ids[info.cpus] = cpu.ids().first();
        if info.cpus == 0 {
            info.timebase = cpu.timebase_frequency() as u64;
            info.has_h = cpu
                .property("riscv,isa")
                .and_then(|p| p.as_str())
                .is_some_and(|isa| isa_has(isa, b'h'));
            info.has_sscofpmf = cpu
                .property("riscv,isa")
                .and_then(|p| p.as_str())
                .is_some_and(|isa| isa.split('_').any(|e| e == "sscofpmf"));
        }
        info.cpus += 1;
    }
    for (i, r) in fdt.memory().regions().enumerate() {
        if i == 0 {
            info.ram_base = r.starting_address as usize;
        }
        info.ram_size += r.size.unwrap_or(0);
    }
    info
}
