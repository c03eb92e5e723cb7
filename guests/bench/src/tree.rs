//! Benchmarks of the Diosix extension (run only where it is present, on a one-vCPU
//! VM): FORK latency of this VM at its RAM size, and an IPC round trip between parent
//! and forked child. Both sides YIELD while they wait, so on one hart the round trip
//! is two IPC calls, two polls and two vCPU switches — hypervisor work only (with two
//! harts under `-icount`, QEMU's round-robin quantum would dominate the figure).
//! Then SPAWN to the child's first instruction ([`crate::spawn`]).

use core::sync::atomic::{AtomicU8, Ordering};
use diosix_abi::{cid, ext, flags};
use diosix_guest_rt::diosix::{Client, Direct};
use diosix_guest_rt::{csr, println, sbi};

const SAMPLES: usize = 21;

/// 2 MiB of this VM's RAM covering exactly one G-stage leaf table, for the
/// copy-on-write figures (in .bss, so mapped and zeroed like the rest of RAM).
#[repr(C, align(2097152))]
struct Touch([AtomicU8; 2 << 20]);

static TOUCH: Touch = Touch([const { AtomicU8::new(0) }; 2 << 20]);
const PARENT: u64 = 0;

/// The client of the Diosix extension.
// SAFETY: the VM-tree benchmarks run on the boot hart only, and pass no addresses but
// the client's own buffers.
pub const DSX: Direct = unsafe { Direct::new() };

fn send(cid: u64, data: &[u8]) -> isize {
    DSX.ipc_send(cid, data).error
}

/// Receives one message from `cid` into `buf`, sleeping in the call until one comes
/// if `wait` (`IPC_RECV_WAIT`); its length, or `None` if none came.
fn recv(cid: u64, buf: &mut [u8], wait: bool) -> Option<usize> {
    let fl = if wait { flags::IPC_RECV_WAIT } else { 0 };
    let (_, n) = DSX.ipc_recv(cid, fl, buf.len()).ok()??;
    DSX.data().read(0, &mut buf[..n]);
    Some(n)
}

/// The forked child: echoes every message from its parent until told to exit,
/// sleeping in between (it wakes with nothing only on an interrupt, and it enables
/// none). Its first message comes by a receive that sleeps (IPC_RECV_WAIT); it then
/// answers each with an IPC_CALL, which sends the answer and sleeps until the next
/// message, unless the parent asked for `send` (separate IPC_SEND and waiting receive).
fn child() -> ! {
    let mut buf = [0u8; 64];
    let mut got = loop {
        if let Some(n) = recv(PARENT, &mut buf, true) {
            break n;
        }
    };
    loop {
        if &buf[..got] == b"exit" {
            DSX.exit(cid::SELF, 0);
        }
        if buf[..got].starts_with(b"send") {
            send(PARENT, &buf[..got]);
            got = loop {
                if let Some(n) = recv(PARENT, &mut buf, true) {
                    break n;
                }
            };
        } else {
            let mut answer = [0u8; 64];
            answer[..got].copy_from_slice(&buf[..got]);
            got = loop {
                if let Ok(Some(n)) = DSX.ipc_call(PARENT, &answer[..got], buf.len()) {
                    DSX.data().read(0, &mut buf[..n]);
                    break n;
                }
            };
        }
    }
}

/// The instruction counter, read where the program puts it: unlike `csr::instret`, the
/// compiler may not move memory accesses across this read.
fn instret_fenced() -> u64 {
    let v: u64;
    // SAFETY: reading the instruction counter has no side effects; the (absent)
    // `nomem` option only stops the compiler from reordering memory accesses around it.
    unsafe { core::arch::asm!("csrr {}, instret", out(reg) v, options(nostack)) };
    v
}

/// Runs the benchmarks; `ram_mib` names the fork figure.
pub fn run(ram_mib: usize) {
    if sbi::probe(ext::EID) == 0 {
        println!("bench tree skipped (no Diosix extension)");
        return;
    }
    let before = csr::instret();
    let r = DSX.fork(0);
    let after = csr::instret();
    if r.error == 0 && r.value == 0 {
        child();
    }
    if r.error == diosix_guest_rt::sbi::error::NOT_SUPPORTED {
        // No FORK without H (PMP mode): no fork, copy-on-write or IPC figures.
        println!("bench tree: FORK not supported here");
        crate::spawn::run();
        return;
    }
    if r.error != 0 {
        println!("bench fork failed: error {}", r.error);
        return;
    }
    let cid = r.value as u64;
    println!("bench fork_{ram_mib}MiB {}", after - before);
    // What FORK defers: the parent's first write into a 2 MiB range after it (the
    // range's leaf table copied, then the page), and the next write in that range
    // (the page only).
    // Escapes, so the compiler keeps the buffer and the stores into it.
    let touch = core::hint::black_box(&TOUCH);
    let first = instret_fenced();
    touch.0[0].store(1, Ordering::Relaxed);
    let second = instret_fenced();
    touch.0[4096].store(1, Ordering::Relaxed);
    let done = instret_fenced();
    println!("bench cow_first_write_in_2MiB {}", second - first);
    println!("bench cow_next_write_same_2MiB {}", done - second);
    let mut v = [0u64; SAMPLES];
    let mut buf = [0u8; 64];
    // A message and its answer, each side sending with IPC_CALL, which sleeps until
    // the other side's call delivers into it: two calls and two switches.
    let mut echoed = true;
    for s in v.iter_mut() {
        let a = csr::instret();
        let n = loop {
            if let Ok(Some(n)) = DSX.ipc_call(cid, b"ping", buf.len()) {
                break n;
            }
        };
        *s = csr::instret() - a;
        DSX.data().read(0, &mut buf[..n]);
        echoed &= &buf[..n] == b"ping";
    }
    v.sort_unstable();
    println!("bench ipc_round_trip {}", v[SAMPLES / 2]);
    // The same with IPC_SEND and a receive that sleeps (IPC_RECV_WAIT) on each side:
    // two sends, two receives, two switches.
    for s in v.iter_mut() {
        let a = csr::instret();
        send(cid, b"send");
        let n = loop {
            if let Some(n) = recv(cid, &mut buf, true) {
                break n;
            }
        };
        *s = csr::instret() - a;
        echoed &= &buf[..n] == b"send";
    }
    v.sort_unstable();
    println!("bench ipc_round_trip_send_recv {}", v[SAMPLES / 2]);
    // The same with this side polling: a receive that finds nothing and a YIELD
    // before the one that finds the answer (queued, as this side was not waiting).
    for s in v.iter_mut() {
        let a = csr::instret();
        send(cid, b"send");
        while recv(cid, &mut buf, false).is_none() {
            DSX.yield_now();
        }
        *s = csr::instret() - a;
    }
    v.sort_unstable();
    println!("bench ipc_round_trip_poll {}", v[SAMPLES / 2]);
    if !echoed {
        println!("bench ipc failed: an answer was not the message echoed");
    }
    // What a device backend pays to reach its child's memory: a ring index (8 bytes),
    // a page, and the largest copy, into the data buffer and back (the child's pages
    // are backed and its own by then: each figure is the copy alone).
    let data = DSX.data().addr();
    let gpa = TOUCH.0.as_ptr() as usize;
    for (name, len, write) in [
        ("child_mem_read_8B", 8, false),
        ("child_mem_write_8B", 8, true),
        ("child_mem_read_4KiB", 4096, false),
        ("child_mem_write_4KiB", 4096, true),
        ("child_mem_read_8KiB", 8192, false),
        ("child_mem_write_8KiB", 8192, true),
    ] {
        for s in v.iter_mut() {
            let a = instret_fenced();
            let r = if write {
                DSX.child_mem_write(cid, gpa, data, len)
            } else {
                DSX.child_mem_read(cid, gpa, data, len)
            };
            *s = instret_fenced() - a;
            if r.error != 0 {
                println!("bench {name} failed: error {}", r.error);
                break;
            }
        }
        v.sort_unstable();
        println!("bench {name} {}", v[SAMPLES / 2]);
    }
    send(cid, b"exit");
    // The forked child must be gone before the spawn benchmark, or its last steps
    // would run between the SPAWN and the new child's first instruction.
    if crate::spawn::wait_terminated(cid).is_none() {
        return;
    }
    crate::spawn::run();
}
