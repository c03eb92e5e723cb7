//! SBI conformance test guest.
//!
//! Calls every standard SBI function the Diosix Root VM may use, with valid and
//! invalid arguments, and prints one line per check: `ok <name>` or
//! `FAIL <name>: got <x> expected <y>`, then `sbi-tests: N passed, M failed` and shuts
//! down. Where OpenSBI (impl id 1) is known to deviate from the SBI 2.0 spec, or a
//! check would crash OpenSBI itself, a `note` line says so and the OpenSBI behaviour
//! is accepted instead; every other implementation is held to the spec.
//!
//! If `/chosen/bootargs` contains `legacy-shutdown`, the final shutdown uses the legacy
//! v0.1 call (EID 0x08) instead of SRST, so that call is tested too.
#![no_std]
#![no_main]

mod checks;

diosix_guest_rt::entry!(checks::main);
