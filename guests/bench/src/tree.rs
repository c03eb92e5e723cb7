//! Benchmarks of the Diosix extension (run only where it is present, on a one-vCPU
//! VM): FORK latency of this VM at its RAM size, and an IPC round trip between parent
//! and forked child. Both sides YIELD while they wait, so on one hart the round trip
//! is two IPC calls, two polls and two vCPU switches — hypervisor work only (with two
//! harts under `-icount`, QEMU's round-robin quantum would dominate the figure).
//! Then SPAWN to the child's first instruction ([`crate::spawn`]).

use diosix_abi::{ext, IpcRecvArgs, IpcSendArgs};
use diosix_guest_rt::{csr, println, sbi};

const SAMPLES: usize = 21;
const PARENT: u64 = 0;

/// Raw call of Diosix extension function `fid`.
pub fn call(fid: usize, args: [usize; 6]) -> sbi::SbiRet {
    // SAFETY: an ecall into the hypervisor; every pointer passed is to this guest's
    // own statics or stack, which the hypervisor validates.
    unsafe { sbi::sbi_call(ext::EID, fid, args) }
}

fn send(cid: u64, data: &[u8]) -> isize {
    let args = IpcSendArgs {
        size: IpcSendArgs::SIZE as u32,
        flags: 0,
        cid,
        data_gpa: data.as_ptr() as u64,
        len: data.len() as u64,
    };
    call(
        ext::FID_IPC_SEND,
        [core::ptr::addr_of!(args) as usize, 0, 0, 0, 0, 0],
    )
    .error
}

/// Receives one message from `cid` into `buf`; its length, or `None` if none waits.
fn recv(cid: u64, buf: &mut [u8]) -> Option<usize> {
    let mut args = IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: 0,
        cid,
        buf_gpa: buf.as_mut_ptr() as u64,
        max_len: buf.len() as u64,
        out_len: 0,
    };
    let r = call(
        ext::FID_IPC_RECV,
        [core::ptr::addr_of_mut!(args) as usize, 0, 0, 0, 0, 0],
    );
    (r.error == 0 && r.value == 1).then_some(args.out_len as usize)
}

/// The forked child: echoes every message from its parent until told to exit.
fn child() -> ! {
    let mut buf = [0u8; 64];
    loop {
        match recv(PARENT, &mut buf) {
            Some(n) if &buf[..n] == b"exit" => {
                call(ext::FID_EXIT, [1, 0, 0, 0, 0, 0]);
            }
            Some(n) => {
                send(PARENT, &buf[..n]);
            }
            None => {
                call(ext::FID_YIELD, [0; 6]);
            }
        }
    }
}

/// Runs the benchmarks; `ram_mib` names the fork figure.
pub fn run(ram_mib: usize) {
    if sbi::probe(ext::EID) == 0 {
        println!("bench tree skipped (no Diosix extension)");
        return;
    }
    let before = csr::instret();
    let r = call(ext::FID_FORK, [0; 6]);
    let after = csr::instret();
    if r.error == 0 && r.value == 0 {
        child();
    }
    if r.error != 0 {
        println!("bench fork failed: error {}", r.error);
        return;
    }
    let cid = r.value as u64;
    println!("bench fork_{ram_mib}MiB {}", after - before);
    let mut v = [0u64; SAMPLES];
    let mut buf = [0u8; 64];
    for s in v.iter_mut() {
        let a = csr::instret();
        send(cid, b"ping");
        while recv(cid, &mut buf).is_none() {
            call(ext::FID_YIELD, [0; 6]);
        }
        *s = csr::instret() - a;
    }
    v.sort_unstable();
    println!("bench ipc_round_trip {}", v[SAMPLES / 2]);
    send(cid, b"exit");
    // The forked child must be gone before the spawn benchmark, or its last steps
    // would run between the SPAWN and the new child's first instruction.
    if crate::spawn::wait_terminated(cid).is_none() {
        return;
    }
    crate::spawn::run();
}
