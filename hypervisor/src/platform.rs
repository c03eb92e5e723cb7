//! The host machine as the firmware device tree describes it, and the per-hart CSR
//! setup that makes guests run in VS-mode.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use diosix_core::addr::Hpa;
use diosix_core::hostfdt::HostPlatform;
use diosix_core::hostfdt::UartKind;
use diosix_riscv::clint::Clint;
use diosix_riscv::csr::{self, envcfg, hstatus_bits, irq, mstatus_bits};
use diosix_riscv::reset::{HostReset, SifiveGpioReset, SysconReset, SysconWrite};
use diosix_riscv::uart::{Ns16550a, SifiveUart};
use spin::Once;

static HOST: Once<HostPlatform> = Once::new();
static CLINT: Once<Clint> = Once::new();
/// How the board restarts (the syscon device, else a GPIO reset line).
static RESET: Once<alloc::boxed::Box<dyn HostReset>> = Once::new();
/// Every usable hart has Sstc: guests get their own timer comparator (`vstimecmp`).
static GUEST_SSTC: AtomicBool = AtomicBool::new(false);
/// Every usable hart has H and Svadu: guests may turn on hardware A/D updating in
/// their own page tables (SBI FWFT PTE_AD_HW_UPDATING, `henvcfg.ADUE`).
static GUEST_SVADU: AtomicBool = AtomicBool::new(false);

/// The PMP fallback needs room for a VM's RAM (two entries as a top-of-range pair)
/// and a few device windows.
const MIN_PMP_ENTRIES: usize = 4;

/// The boot hart's PMP (PMP fallback only).
static PMP_FACTS: Once<diosix_riscv::pmp::PmpFacts> = Once::new();

/// What the boot hart's PMP offers, in the PMP fallback (`None` under H).
pub fn pmp_facts() -> Option<diosix_riscv::pmp::PmpFacts> {
    PMP_FACTS.get().copied()
}

/// The firmware device tree is at most this big; anything larger is refused.
const MAX_FDT: usize = 1 << 20;

/// Copies the firmware device tree into the heap, so its RAM can be reused.
///
/// # Safety
/// `hpa` must be the a1 value the reset vector passed (a device tree in RAM).
pub unsafe fn copy_firmware_fdt(hpa: Hpa) -> Vec<u8> {
    if hpa == Hpa::new(0) {
        return Vec::new();
    }
    let mut header = [0u8; 8];
    // SAFETY: the header's first 8 bytes (magic, totalsize) are readable at a valid
    // device tree (caller contract); we check the magic before trusting the size.
    unsafe { diosix_riscv::physmem::copy_out(hpa, &mut header) };
    let [m0, m1, m2, m3, s0, s1, s2, s3] = header;
    let magic = u32::from_be_bytes([m0, m1, m2, m3]);
    let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
    if magic != 0xd00d_feed || !(40..=MAX_FDT).contains(&size) {
        return Vec::new();
    }
    let mut fdt = alloc::vec![0u8; size];
    // SAFETY: a valid device tree of `size` bytes starts at hpa; `fdt` is fresh heap.
    unsafe { diosix_riscv::physmem::copy_out(hpa, &mut fdt) };
    fdt
}

/// Parses the host device tree and brings up the console, CLINT and reset device.
pub fn init(fdt: &[u8]) -> Result<&'static HostPlatform, alloc::string::String> {
    let host = HostPlatform::parse(fdt).map_err(|e| alloc::format!("{e}"))?;
    if let Some(u) = &host.uart {
        // SAFETY: the device tree names this UART; guests never get it mapped (the
        // console's node is not a host device).
        let uart: alloc::boxed::Box<dyn diosix_riscv::uart::Uart> = match u.kind {
            UartKind::Ns16550 => {
                // SAFETY: as above: the tree's console UART, never a guest's.
                alloc::boxed::Box::new(unsafe { Ns16550a::new(u.base, u.reg_shift) })
            }
            UartKind::Sifive => {
                // SAFETY: as above: the tree's console UART, never a guest's.
                alloc::boxed::Box::new(unsafe { SifiveUart::new(u.base) })
            }
        };
        crate::console::set_uart(uart);
    }
    let clint_base = host
        .clint
        .map(|c| c.start())
        .ok_or_else(|| alloc::string::String::from("no CLINT in the device tree"))?;
    // SAFETY: the device tree names this CLINT.
    CLINT.call_once(|| unsafe { Clint::new(clint_base) });
    if let Some(r) = &host.reset {
        let to_write = |w: &diosix_core::hostfdt::SysconWrite| {
            Some(SysconWrite {
                addr: r.base.checked_add(u64::from(w.offset))?,
                value: w.value,
            })
        };
        // SAFETY: the device tree names these registers as poweroff/reboot.
        let syscon = unsafe {
            SysconReset::new(
                r.poweroff.as_ref().and_then(to_write),
                r.reboot.as_ref().and_then(to_write),
            )
        };
        RESET.call_once(|| alloc::boxed::Box::new(syscon));
    } else if let Some(g) = &host.gpio_restart {
        // SAFETY: the device tree's `gpio-restart` names this controller and pin; the
        // controller is an interrupt controller, so it is never handed to a guest.
        let line = unsafe { SifiveGpioReset::new(g.base, g.pin, g.active_low) };
        RESET.call_once(|| alloc::boxed::Box::new(line));
    }
    if host.harts.is_empty() {
        return Err("no usable harts in the device tree".into());
    }
    // One mode for the whole machine, since vCPUs move between harts: VS-mode when
    // every usable hart has H, else the PMP fallback everywhere.
    let every_hart_has_h = host.harts.iter().all(|h| h.has_h);
    crate::guestmode::init(every_hart_has_h);
    crate::triggers::init();
    crate::pmu::init(&host, every_hart_has_h);
    if !every_hart_has_h {
        // SAFETY: the boot hart's PMP is not set up yet and nothing runs below M-mode.
        let facts = unsafe { diosix_riscv::pmp::probe() };
        if facts.entries < MIN_PMP_ENTRIES {
            return Err(alloc::format!(
                "no H extension on every hart, and the PMP fallback needs at least \
                 {MIN_PMP_ENTRIES} PMP entries (this hart has {})",
                facts.entries
            ));
        }
        PMP_FACTS.call_once(|| facts);
    }
    // vCPUs move between harts, so the guest timer can use Sstc only if all have it.
    // In S-mode a guest's stimecmp would be the hart's own: SBI timers there.
    GUEST_SVADU.store(
        every_hart_has_h && host.harts.iter().all(|h| h.has_extension("svadu")),
        Ordering::Relaxed,
    );
    GUEST_SSTC.store(
        every_hart_has_h && host.harts.iter().all(|h| h.has_extension("sstc")),
        Ordering::Relaxed,
    );
    crate::guestmode::set_host_henvcfg(if guest_sstc() { envcfg::STCE } else { 0 });
    Ok(HOST.call_once(|| host))
}

/// Whether guests' timers are their own Sstc comparators (`vstimecmp`, switched with
/// the vCPU; `henvcfg.STCE` set): a guest writing `stimecmp` and its timer interrupt
/// then cost no exit, and the SBI `set_timer` is one CSR write. Otherwise the
/// hypervisor multiplexes the hart's `mtimecmp` and injects `hvip.VSTIP`.
pub fn guest_sstc() -> bool {
    GUEST_SSTC.load(Ordering::Relaxed)
}

/// Whether guests may have hardware A/D updating in their page tables (SBI FWFT):
/// under H, with Svadu on every hart.
pub fn guest_svadu() -> bool {
    GUEST_SVADU.load(Ordering::Relaxed)
}

/// The host platform (after [`init`]).
pub fn host() -> &'static HostPlatform {
    HOST.get().expect("platform initialised at boot")
}

/// The CLINT.
pub fn clint() -> &'static Clint {
    CLINT.get().expect("platform initialised at boot")
}

/// The CLINT on the paths every vCPU switch takes, without [`clint`]'s check.
#[inline(always)]
fn clint_booted() -> &'static Clint {
    debug_assert!(CLINT.is_completed());
    // SAFETY: `init` sets the CLINT (or fails the boot) before any hart schedules,
    // and only the scheduler and trap paths, which run after it, call this.
    unsafe { CLINT.get_unchecked() }
}

/// The host's `mtime`.
pub fn now() -> u64 {
    clint_booted().mtime()
}

/// Programs this hart's timer interrupt for `deadline` (`u64::MAX` = never).
pub fn set_timer(deadline: u64) {
    let id = csr::id::mhartid();
    clint_booted().set_mtimecmp(id, deadline);
}

/// Restarts the host machine (QEMU: the virt reset device; with `-no-reboot`, QEMU
/// exits).
pub fn restart_host() -> ! {
    match RESET.get() {
        Some(r) => r.reboot(),
        None => diosix_riscv::reset::halt(),
    }
}

/// Prints the boot banner: version, harts, RAM, isolation mode.
pub fn print_banner(host: &HostPlatform, boot_hart: usize) {
    let ram: u64 = host.memory.iter().map(|r| r.len()).sum();
    let h = host.harts.iter().filter(|h| h.has_h).count();
    log::info!(
        "Diosix {} (SBI impl ID 5) booting on hart {}: {} hart(s), {} MiB RAM, timebase {} Hz",
        crate::VERSION,
        boot_hart,
        host.harts.len(),
        ram >> 20,
        host.timebase_frequency
    );
    log::info!(
        "isolation: {} (H extension on {}/{} harts{})",
        crate::guestmode::mode().name(),
        h,
        host.harts.len(),
        match pmp_facts() {
            Some(p) => alloc::format!(
                "; {} PMP entries, {}-byte granularity",
                p.entries,
                1u64 << p.granularity_log2
            ),
            None => alloc::string::String::new(),
        }
    );
    for m in &host.memory {
        log::info!("RAM {} .. {}", m.start(), m.end());
    }
}

/// Machine-level setup every hart needs before running guests.
pub fn init_hart_csrs() {
    if crate::guestmode::is_pmp() {
        init_hart_csrs_pmp();
    } else {
        init_hart_csrs_h();
    }
    // No trigger from before reset may match in a guest.
    crate::triggers::load(&mut true, &Default::default(), false);
    // Nor any count: every guest counter zeroed, stopped, selecting nothing.
    let mut every_counter = u32::MAX;
    crate::pmu::load(&mut every_counter, None);
    set_timer(u64::MAX);
}

/// [`init_hart_csrs`] for guests in S-mode behind PMP (no H extension).
fn init_hart_csrs_pmp() {
    // Exceptions a guest handles itself, straight from the hardware: misaligned fetch
    // (0), breakpoint (3), misaligned load/store (4, 6), ecall from U (8) and page
    // faults (12, 13, 15). Not illegal instruction (2): a guest's WFI traps as one
    // (mstatus.TW) so the hart can run someone else; the rest are reflected to the
    // guest. Ecalls from S (9, the SBI) and access faults (PMP) come here.
    let guest_exceptions: usize =
        (1 << 0) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 12) | (1 << 13) | (1 << 15);
    let id = csr::id::mhartid();
    let has_sstc = host()
        .harts
        .iter()
        .any(|h| h.hart_id == id && h.has_extension("sstc"));
    let entries = pmp_facts().map_or(0, |p| p.entries);
    // SAFETY: this configures how this hart traps and delegates; nothing else runs on
    // the hart yet. S-level interrupts and the exceptions above go to the guest's own
    // handler; the guest's sie (the S bits of mie) is loaded with each vCPU.
    unsafe {
        csr::medeleg::write(guest_exceptions);
        // Counter overflows too, where guests get them (their pending bit is switched
        // with the vCPU's counters, see crate::pmu).
        let lcofi = if crate::pmu::guest_overflow() {
            diosix_riscv::pmu::LCOFIP
        } else {
            0
        };
        csr::mideleg::write(irq::S_ALL | lcofi);
        csr::mcounteren::write(0b111 | crate::pmu::counter_enable_bits());
        // No Sstc for guests: mip.STIP stays the hypervisor's to inject (SBI timers).
        // Harts older than privileged spec 1.12 have no menvcfg (and nothing to turn
        // off in it).
        csr::try_write_menvcfg(0);
        if has_sstc {
            csr::stimecmp::write(usize::MAX);
        }
        csr::mstatus::clear_bits(mstatus_bits::MPRV | mstatus_bits::MIE);
        csr::mstatus::set_bits(mstatus_bits::TW);
        csr::mip::clear_bits(irq::S_ALL);
        csr::mie::write(irq::MTIP | irq::MSIP | irq::MEIP);
        // Nothing for S/U-mode until a vCPU's activation loads its VM's entries.
        diosix_riscv::pmp::load(&[], entries);
    }
}

/// [`init_hart_csrs`] for guests in VS-mode (the H extension).
fn init_hart_csrs_h() {
    // Exceptions a guest handles itself: misaligned fetch (0), illegal instruction (2),
    // breakpoint (3), misaligned load/store (4, 6), ecall from VU (8), and the
    // VS-stage page faults (12, 13, 15). Everything else (VS ecalls, guest-page faults,
    // virtual instructions, access faults) comes to M-mode.
    let guest_exceptions: usize = (1 << 0)
        | (1 << 2)
        | (1 << 3)
        | (1 << 4)
        | (1 << 6)
        | (1 << 8)
        | (1 << 12)
        | (1 << 13)
        | (1 << 15);
    let pmp = crate::mem::hypervisor_range();
    let id = csr::id::mhartid();
    let has_sstc = host()
        .harts
        .iter()
        .any(|h| h.hart_id == id && h.has_extension("sstc"));
    // SAFETY: this configures how this hart traps and delegates; nothing else runs on
    // the hart yet. Delegated exceptions go through HS straight to VS (hedeleg), and
    // only VS-level interrupts are delegated, so no trap ever lands in (empty) HS-mode.
    unsafe {
        csr::medeleg::write(guest_exceptions);
        csr::hedeleg::write(guest_exceptions);
        // S-level bits too: QEMU masks VS-mode reads of sip/sie with mideleg's
        // S-level bits, so without them a guest polling sip never sees an injected
        // VSTIP/VSSIP. Harmless: mie keeps SSIE/STIE/SEIE clear (below), so no
        // S-level interrupt is ever taken into the (empty) HS-mode.
        csr::mideleg::write(irq::S_ALL | irq::VS_ALL | irq::SGEIP);
        csr::hideleg::write(irq::VS_ALL);
        csr::hvip::write(0);
        csr::hie::write(0);
        // Guests read time, cycle and instret directly, and their own PMU counters
        // (the hart's hold only the running vCPU's, see crate::pmu).
        csr::mcounteren::write(0b111 | crate::pmu::counter_enable_bits());
        csr::hcounteren::write(0b111 | crate::pmu::counter_enable_bits());
        // With Sstc on every hart, STCE hands guests their own comparator
        // (`vstimecmp`, raising VSTIP by itself). Without it (STCE = 0) guests use SBI
        // timers, multiplexed on mtimecmp and injected through hvip. Never both for one
        // guest: QEMU 10.0 ignores M-mode writes to hvip.VSTIP while menvcfg.STCE = 1.
        let stce = if guest_sstc() { envcfg::STCE } else { 0 };
        // menvcfg.ADUE lets henvcfg.ADUE (a vCPU's FWFT choice, loaded with it) take
        // effect; G-stage PTEs are made with A and D set, so it changes nothing there.
        let adue = if guest_svadu() { envcfg::ADUE } else { 0 };
        csr::menvcfg::write(stce | adue);
        csr::henvcfg::write(stce);
        csr::htimedelta::write(0);
        // Where Sstc exists its comparators raise STIP/VSTIP whenever they are due
        // (QEMU even with STCE = 0), so park them in the far future: the hart's own
        // stimecmp is never used, and each vCPU loads its own vstimecmp.
        if has_sstc {
            csr::stimecmp::write(usize::MAX);
            csr::vstimecmp::write(usize::MAX);
        }
        // Guest WFI traps as a virtual instruction so the hart can run someone else.
        csr::hstatus::write(hstatus_bits::VSXL_64 | hstatus_bits::VTW | hstatus_bits::SPVP);
        csr::mstatus::clear_bits(mstatus_bits::TW | mstatus_bits::MPRV | mstatus_bits::MIE);
        // Never SSIE/STIE/SEIE: see the mideleg note above. MEIE: host interrupts
        // routed to guests (crate::devices).
        // LCOFIE where guests get counter overflows: taken here and injected
        // through hvip (crate::pmu).
        let lcofi = crate::pmu::hart_setup_h();
        csr::mie::write(irq::MTIP | irq::MSIP | irq::MEIP | lcofi);
        diosix_riscv::pmp::protect_hypervisor(pmp);
        diosix_riscv::fence::hfence_gvma_all();
    }
}
