//! vCPU stress guest: every hart the DTB lists runs rounds of work, IPIs, remote fences
//! and timer interrupts, meeting at a barrier after each round.
//!
//! Per round each hart: does a checksum loop, sends an IPI to the next hart in the
//! ring, issues remote fence.i to all harts and sfence.vma to the next one, sleeps on a
//! timer interrupt with `wfi`, and waits (with `wfi`) for the IPI from the previous
//! hart. Waiting for that IPI before the barrier keeps one round's IPI from
//! coalescing with the next one's, so the final counts are exact. Under Diosix this
//! runs with more vCPUs than host harts, so every wait idles in `wfi` instead of
//! spinning.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicUsize, Ordering};
use diosix_guest_rt::{csr, dtb, hart, println, sbi, trap, MAX_HARTS};

diosix_guest_rt::entry!(main);

const ROUNDS: usize = 20;

/// Number of harts taking part (set before any worker starts).
static HARTS: AtomicUsize = AtomicUsize::new(0);
/// Harts that have finished each round, cumulative (round r done at N * (r + 1)).
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// Harts ready to take IPIs. IPIs to a hart that is not started yet are dropped (it is
/// not interruptible), so round 0 waits for everyone.
static READY: AtomicUsize = AtomicUsize::new(0);
/// Harts that finished all rounds with correct counts.
static GOOD: AtomicUsize = AtomicUsize::new(0);
/// Harts that finished but saw something wrong.
static BAD: AtomicUsize = AtomicUsize::new(0);
/// Hart ids in ring order; worker `i` signals `RING[(i + 1) % N]`.
static RING: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
/// Checksum each hart computed; compared against the boot hart's own computation.
static SUMS: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
static TIMEBASE: AtomicUsize = AtomicUsize::new(10_000_000);

/// Deterministic busy work whose result depends on every iteration.
fn work(seed: usize) -> usize {
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x as usize
}

fn ticks(us: u64) -> u64 {
    TIMEBASE.load(Ordering::Relaxed) as u64 * us / 1_000_000
}

/// `sstatus.FS` = Initial: FP instructions allowed.
const SSTATUS_FS_INITIAL: usize = 1 << 13;

/// Puts `v` in f8 and f9 (the guest's Rust code uses no FP registers).
fn fp_set(v: u64) {
    // SAFETY: writes two FP registers nothing else in this guest uses.
    unsafe {
        core::arch::asm!("fmv.d.x f8, {0}", "fmv.d.x f9, {0}", in(reg) v, options(nomem, nostack))
    };
}

/// Reads f8 and f9 (reading does not make the FP state dirty).
fn fp_get() -> (u64, u64) {
    let (a, b): (u64, u64);
    // SAFETY: reads two FP registers.
    unsafe {
        core::arch::asm!("fmv.x.d {0}, f8", "fmv.x.d {1}, f9", out(reg) a, out(reg) b, options(nomem, nostack))
    };
    (a, b)
}

/// One hart's part. `index` is its position in the ring. Even-numbered harts keep
/// a value of their own in two FP registers, odd ones never write FP registers and
/// must read them as zero: whichever vCPUs share a host hart, each keeps its own FP
/// state (the hypervisor restores it on a switch, or knows it need not).
fn run(index: usize) {
    let me = hart::id();
    let n = HARTS.load(Ordering::Acquire);
    let next = RING[(index + 1) % n].load(Ordering::Relaxed);
    trap::install();
    csr::sie_set(csr::SSI | csr::STI);
    trap::enable();
    let mut sum = 0usize;
    let mut ok = true;
    csr::sstatus_set(SSTATUS_FS_INITIAL);
    let fp_own = if index.is_multiple_of(2) {
        0x5eed_0000_0000 + index as u64
    } else {
        0
    };
    if fp_own != 0 {
        fp_set(fp_own);
    }
    let soft0 = trap::soft_count(me);
    let timer0 = trap::timer_count(me);
    READY.fetch_add(1, Ordering::AcqRel);
    barrier(&READY, n);
    for round in 0..ROUNDS {
        sum = sum.wrapping_add(work(index * ROUNDS + round));
        let fp = fp_get();
        if fp != (fp_own, fp_own) {
            println!("smp: hart {me}: FP registers {fp:x?}, expected {fp_own:#x} in both");
            ok = false;
        }
        ok &= sbi::send_ipi(1, next).is_ok();
        ok &= sbi::remote_fence_i(0, usize::MAX).is_ok();
        ok &= sbi::remote_sfence_vma(1, next, 0, usize::MAX).is_ok();
        // One timer interrupt per round, taken through the trap handler.
        let t = trap::timer_count(me);
        sbi::set_timer(csr::time() + ticks(200));
        trap::wait_until(|| trap::timer_count(me) != t);
        // The previous hart's IPI for this round.
        trap::wait_until(|| trap::soft_count(me) - soft0 > round);
        ARRIVED.fetch_add(1, Ordering::AcqRel);
        barrier(&ARRIVED, n * (round + 1));
    }
    trap::disable();
    sbi::set_timer(u64::MAX);
    let soft = trap::soft_count(me) - soft0;
    // Barrier sleeps also take timer interrupts, so at least ROUNDS of them.
    let timers = trap::timer_count(me) - timer0;
    ok &= soft == ROUNDS && timers >= ROUNDS;
    if !ok {
        println!("smp: hart {me}: {soft} IPIs, {timers} timer interrupts over {ROUNDS} rounds");
    }
    SUMS[index].store(sum, Ordering::Release);
    if ok {
        GOOD.fetch_add(1, Ordering::AcqRel);
    } else {
        BAD.fetch_add(1, Ordering::AcqRel);
    }
}

/// Waits until `count` reaches `target`, idling between checks rather than spinning:
/// vCPUs may outnumber host harts. A short timer bounds each idle period because
/// arrivals at the barrier send no interrupt.
fn barrier(count: &AtomicUsize, target: usize) {
    let me = hart::id();
    while count.load(Ordering::Acquire) < target {
        let t = trap::timer_count(me);
        sbi::set_timer(csr::time() + ticks(50));
        trap::wait_until(|| trap::timer_count(me) != t || count.load(Ordering::Acquire) >= target);
    }
}

fn worker(_hartid: usize, index: usize) {
    run(index);
}

fn main(hartid: usize, dtb_addr: usize) {
    let info = dtb::parse(dtb_addr);
    let n = info.cpus;
    TIMEBASE.store(info.timebase as usize, Ordering::Relaxed);
    // The boot hart is ring position 0; the others follow in DTB order.
    RING[0].store(hartid, Ordering::Relaxed);
    for (slot, &h) in RING[1..]
        .iter()
        .zip(info.harts().iter().filter(|&&h| h != hartid))
    {
        slot.store(h, Ordering::Relaxed);
    }
    HARTS.store(n, Ordering::Release);
    println!("smp: {n} harts, {ROUNDS} rounds");
    for (idx, slot) in RING.iter().enumerate().take(n).skip(1) {
        let h = slot.load(Ordering::Relaxed);
        let r = hart::start(h, worker, idx);
        if !r.is_ok() {
            println!("smp: FAIL starting hart {h}: error {}", r.error);
            sbi::shutdown(true);
        }
    }
    run(0);
    // Everyone passed the last barrier; wait for the verdicts.
    let deadline = csr::time() + info.timebase * 10;
    while GOOD.load(Ordering::Acquire) + BAD.load(Ordering::Acquire) < n {
        if csr::time() > deadline {
            println!(
                "smp: FAIL: only {} harts reported",
                GOOD.load(Ordering::Acquire)
            );
            sbi::shutdown(true);
        }
        core::hint::spin_loop();
    }
    let sums_ok = (0..n).all(|idx| {
        let expect = (0..ROUNDS).fold(0usize, |s, r| s.wrapping_add(work(idx * ROUNDS + r)));
        SUMS[idx].load(Ordering::Acquire) == expect
    });
    if BAD.load(Ordering::Acquire) == 0 && sums_ok {
        println!("smp: {n} harts, all rounds ok");
    } else {
        println!(
            "smp: FAIL: {} harts bad, checksums ok: {sums_ok}",
            BAD.load(Ordering::Acquire)
        );
        sbi::shutdown(true);
    }
}
