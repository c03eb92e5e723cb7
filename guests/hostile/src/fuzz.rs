//! Phase `fuzz`: every vCPU makes thousands of calls of every Diosix FID and of the
//! standard SBI extensions, with arguments from a seeded PRNG (`seed=`, one stream
//! per vCPU): sizes at and past every cap, addresses at every edge of the address
//! space and of this VM's RAM, malformed and truncated images, random CIDs.
//!
//! Each return must be a defined SBI error code or success; a refused Diosix call must
//! return a1 = 0; counts must be in range. Calls that would end or shrink this VM for
//! good are never made (EXIT of itself, SRST shutdown/reboot, HSM stop, lowering its
//! own quota), nor calls on the bystander. Output addresses only ever point into the
//! fuzz arenas or outside RAM, and the console only ever gets spaces.

use crate::img::{self, Program, Rng};
use crate::sys::{self, error, flags, Client, Region, SbiRet, DSX, MAXV};
use crate::{kids, team};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use diosix_abi::{
    ext, limits, DeviceSpec, DeviceState, HvInfo, IpcRecvArgs, IpcSendArgs, QueueState, QuotaArgs,
    SpawnArgs, VmInfo,
};
use diosix_guest_rt::sbi::eid;

/// Bad returns seen per vCPU, and the first few of them.
static BAD: [AtomicUsize; MAXV] = [const { AtomicUsize::new(0) }; MAXV];
const KEEP: usize = 4;
/// (eid << 32 | fid, a0, a1, a2, error, value) of the first bad returns.
static BAD_LOG: [[[AtomicU64; 6]; KEEP]; MAXV] =
    [const { [const { [const { AtomicU64::new(0) }; 6] }; KEEP] }; MAXV];
/// Calls made per vCPU.
static DONE: [AtomicUsize; MAXV] = [const { AtomicUsize::new(0) }; MAXV];
/// Calls that succeeded.
static OK: AtomicUsize = AtomicUsize::new(0);
/// Successful creations (SPAWN, FORK).
static CREATED: AtomicUsize = AtomicUsize::new(0);
/// Held while one vCPU FORKs, when the known FORK-vs-FORK hang is avoided.
static FORK_LOCK: AtomicBool = AtomicBool::new(false);
/// Highest CID seen (to aim random CIDs near live ones).
static HIGH_CID: AtomicU64 = AtomicU64::new(4);

/// Runs the phase, then kills every child it made and reports.
pub fn run() {
    for i in 0..MAXV {
        BAD[i].store(0, Ordering::Relaxed);
        DONE[i].store(0, Ordering::Relaxed);
    }
    OK.store(0, Ordering::Relaxed);
    // A few children to aim at: idle, spinning, paused, chatty.
    for (prog, fl) in [
        (Program::Idle, 0),
        (Program::Spin, 0),
        (Program::Idle, flags::SPAWN_PAUSED),
        (Program::Chatty, 0),
    ] {
        let r = kids::spawn_prog(prog, 64, 2, fl, |_| {});
        if r.error == 0 {
            HIGH_CID.fetch_max(r.value as u64, Ordering::Relaxed);
        }
    }
    crate::phase("fuzz", 75_000, body);
    if team::broken() {
        return;
    }
    let total: usize = (0..MAXV).map(|i| DONE[i].load(Ordering::Relaxed)).sum();
    let bad: usize = (0..MAXV).map(|i| BAD[i].load(Ordering::Relaxed)).sum();
    crate::note(format_args!(
        "fuzz: {total} calls on {} vCPUs (seed {:#x}), {} succeeded, {} children and clones created",
        team::size(),
        crate::SEED.load(Ordering::Relaxed),
        OK.load(Ordering::Relaxed),
        CREATED.load(Ordering::Relaxed)
    ));
    for (i, log) in BAD_LOG.iter().enumerate() {
        let n = BAD[i].load(Ordering::Relaxed).min(KEEP);
        for rec in &log[..n] {
            let v: [u64; 6] = core::array::from_fn(|k| rec[k].load(Ordering::Relaxed));
            crate::report_fail(format_args!(
                "fuzz_return (vCPU {i}): {} (eid {:#x} fid {}) a0 {:#x} a1 {:#x} a2 {:#x} -> error {} a1 {:#x}",
                sys::call_name(v[0] >> 32, v[0] & 0xffff_ffff),
                v[0] >> 32,
                v[0] & 0xffff_ffff,
                v[1],
                v[2],
                v[3],
                v[4] as i64,
                v[5]
            ));
        }
    }
    crate::check(
        "fuzz_every_return_valid",
        bad == 0,
        format_args!("{bad} of {total} returns undefined, a1 != 0 on a refusal, or out of range"),
    );
    crate::check(
        "fuzz_calls_made",
        total >= crate::FUZZ_CALLS.load(Ordering::Relaxed) * team::size() * 9 / 10,
        format_args!("only {total} calls"),
    );
    let killed = kids::kill_all(0);
    kids::forget_events();
    crate::check(
        "fuzz_children_killed",
        kids::others_alive() == 0,
        format_args!(
            "{} children left after killing {killed}",
            kids::others_alive()
        ),
    );
    sys::call(eid::TIME, 0, [usize::MAX, 0, 0, 0, 0, 0]);
}

struct Fz {
    rng: Rng,
    me: usize,
    lo: Region,
    hi: Region,
    end: usize,
    /// Live children (not the bystander), refreshed now and then.
    live: [u64; 16],
    nlive: usize,
}

impl Fz {
    /// An address the hypervisor may write up to 4 KiB at: in an arena, or one it
    /// must refuse (outside RAM, wrapping).
    fn out_addr(&mut self) -> usize {
        let a = match self.rng.below(10) {
            0..=2 => self.lo.addr() + self.rng.below((self.lo.len() - 8192) as u64) as usize,
            3..=4 => self.hi.addr() + self.rng.below(self.hi.len() as u64) as usize,
            5 => {
                self.end
                    - self
                        .rng
                        .pick(&[1usize, 2, 4, 8, 31, 32, 56, 119, 120, 4096])
            }
            6 => sys::RAM_BASE + self.rng.pick(&[0usize, 1, 4, 8, 4096]),
            _ => self.edge_addr(),
        };
        self.sanitize(a)
    }

    /// Addresses at the edges of the address space and of RAM, outside RAM.
    fn edge_addr(&mut self) -> usize {
        match self.rng.below(16) {
            0 => 0,
            1 => 8,
            2 => sys::RAM_BASE - 1,
            3 => sys::RAM_BASE - 8,
            4 => self.end,
            5 => self.end + 8,
            6 => 1 << 39,
            7 => (1 << 39) - 8,
            8 => usize::MAX,
            9 => usize::MAX - 7,
            10 => usize::MAX - 4095,
            11 => 0xffff_ffff_ffff_f001,
            12 => 1 << 63,
            13 => self.rng.next() as usize,
            14 => self.rng.below(1 << 39) as usize,
            _ => 0x1000_0000,
        }
    }

    /// Moves an address inside RAM that is not in an arena (so the hypervisor could
    /// write over this guest's code, data or stacks) into the low arena.
    fn sanitize(&mut self, a: usize) -> usize {
        let in_ram = (sys::RAM_BASE..self.end).contains(&a);
        let in_lo = a >= self.lo.addr() && a < self.lo.end() - 8192;
        let in_hi = a >= self.hi.addr();
        if in_ram && !in_lo && !in_hi {
            self.lo.addr() + (a % (self.lo.len() - 8192))
        } else {
            a
        }
    }

    /// An address the hypervisor only reads: anything.
    fn in_addr(&mut self) -> usize {
        match self.rng.below(8) {
            0..=3 => self.out_addr(),
            4 => 0x8020_0000 + self.rng.below(0x4_0000) as usize,
            5 => sys::RAM_BASE + self.rng.below((self.end - sys::RAM_BASE) as u64) as usize,
            _ => self.edge_addr(),
        }
    }

    /// A length around `cap`.
    fn len(&mut self, cap: u64) -> u64 {
        match self.rng.below(16) {
            0 => 0,
            1 => 1,
            2 => cap.saturating_sub(1),
            3 => cap,
            4 => cap + 1,
            5 => cap * 2,
            6 => 4095,
            7 => 4096,
            8 => 4097,
            9 => 1 << 20,
            10 => u64::from(u32::MAX),
            11 => u64::MAX,
            12 => u64::MAX - 7,
            13 => self.rng.below(cap + 2),
            14 => self.rng.next(),
            _ => self.rng.below(64),
        }
    }

    /// A CID: parent, self, near the live children, far away; never the bystander.
    fn cid(&mut self) -> u64 {
        let high = HIGH_CID.load(Ordering::Relaxed);
        let c = match self.rng.below(10) {
            0 => 0,
            1 => 1,
            2..=4 if self.nlive > 0 => self.live[self.rng.below(self.nlive as u64) as usize],
            2..=6 => 2 + self.rng.below(high + 2),
            7 => u64::MAX,
            8 => 1 << 32,
            _ => self.rng.next(),
        };
        if c == kids::bystander() {
            c + 1
        } else {
            c
        }
    }

    fn bad(&self, e: usize, fid: usize, a: [usize; 6], r: SbiRet) {
        let k = BAD[self.me].fetch_add(1, Ordering::Relaxed);
        if k < KEEP {
            let rec = &BAD_LOG[self.me][k];
            let v = [
                ((e as u64) << 32) | fid as u64,
                a[0] as u64,
                a[1] as u64,
                a[2] as u64,
                r.error as u64,
                r.value as u64,
            ];
            for (slot, x) in rec.iter().zip(v) {
                slot.store(x, Ordering::Relaxed);
            }
        }
    }

    /// A Diosix call, checked.
    fn dsx(&mut self, fid: usize, a: [usize; 6]) -> SbiRet {
        let r = DSX.call(fid, a);
        if r.error == 0 {
            OK.fetch_add(1, Ordering::Relaxed);
        }
        let mut ok = sys::defined(r.error) && (r.error == 0 || r.value == 0);
        if r.error == 0 {
            ok &= match fid {
                ext::FID_IPC_RECV | ext::FID_POLL_EVENT => r.value <= 1,
                // 0 (woken first) or an answer's length + 1, within the room for it.
                ext::FID_IPC_CALL => r.value <= a[3].min(limits::IPC_MAX_MESSAGE) + 1,
                ext::FID_CONSOLE_READ | ext::FID_CONSOLE_WRITE => {
                    r.value <= a[2].min(limits::CONSOLE_MAX_TRANSFER)
                }
                ext::FID_SPAWN | ext::FID_FORK => r.value >= 2,
                ext::FID_LIST_CHILDREN => r.value <= 65536,
                ext::FID_CHILD_MEM_READ | ext::FID_CHILD_MEM_WRITE => {
                    r.value == a[3] && a[3] <= limits::CHILD_MEM_MAX
                }
                ext::FID_DEVICE_STATE => {
                    r.value
                        .checked_sub(DeviceState::SIZE)
                        .is_some_and(|q| q.is_multiple_of(QueueState::SIZE))
                        && r.value <= a[3]
                        && r.value <= DeviceState::SIZE + 8 * QueueState::SIZE
                }
                ext::FID_RESERVED_11 | ext::FID_RESERVED_12 => false,
                f if f >= ext::FID_COUNT => false,
                _ => true,
            };
            if matches!(fid, ext::FID_SPAWN | ext::FID_FORK) {
                CREATED.fetch_add(1, Ordering::Relaxed);
                HIGH_CID.fetch_max(r.value as u64, Ordering::Relaxed);
            }
        }
        if (fid == ext::FID_RESERVED_11 || fid == ext::FID_RESERVED_12 || fid >= ext::FID_COUNT)
            && r.error != error::NOT_SUPPORTED
        {
            ok = false;
        }
        if !ok {
            self.bad(sys::EID, fid, a, r);
        }
        r
    }

    /// A standard SBI call, checked (only the error code is specified).
    fn std(&mut self, e: usize, fid: usize, a: [usize; 6]) -> SbiRet {
        let r = sys::call(e, fid, a);
        if r.error == 0 {
            OK.fetch_add(1, Ordering::Relaxed);
        }
        if !sys::defined(r.error) {
            self.bad(e, fid, a, r);
        }
        r
    }
}

fn body(idx: usize, _n: usize) {
    let seed =
        crate::SEED.load(Ordering::Relaxed) ^ (idx as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut f = Fz {
        rng: Rng::new(seed),
        me: sys::me(),
        lo: crate::arena_lo(),
        hi: crate::arena_hi(),
        end: crate::ram_end(),
        live: [0; 16],
        nlive: 0,
    };
    // The console source for DBCN writes: spaces only.
    sys::data().fill(0, 8192, b' ');
    let calls = crate::FUZZ_CALLS.load(Ordering::Relaxed);
    for k in 0..calls {
        if f.rng.below(100) < 85 {
            diosix_one(&mut f);
        } else {
            standard_one(&mut f);
        }
        DONE[f.me].fetch_add(1, Ordering::Relaxed);
        if k % 64 == 0 {
            // Aim half the CIDs at children that are alive now.
            let mut cids = [0u64; 64];
            f.nlive = 0;
            if let Ok(n) = DSX.list_children(&mut cids) {
                for &c in cids[..n.min(64)]
                    .iter()
                    .filter(|&&c| c != kids::bystander())
                {
                    if f.nlive < f.live.len() {
                        f.live[f.nlive] = c;
                        f.nlive += 1;
                    }
                }
            }
        }
        if k % 128 == 127 && kids::others_alive() > 24 {
            // Too many children slow everything down: kill a few (any vCPU may).
            let mut cids = [0u64; 64];
            if let Ok(n) = DSX.list_children(&mut cids) {
                for &c in cids[..n.min(64)]
                    .iter()
                    .filter(|&&c| c != kids::bystander())
                    .take(8)
                {
                    DSX.exit(c, 0);
                }
            }
        }
    }
}

fn diosix_one(f: &mut Fz) {
    let fid = match f.rng.below(47) {
        0 => ext::FID_EXIT,
        1 => ext::FID_YIELD,
        2..=3 => ext::FID_FORK,
        4 => ext::FID_DROP_TRUST,
        5..=9 => ext::FID_SPAWN,
        10 => ext::FID_GET_INFO,
        11 => ext::FID_SET_QUOTA,
        12..=13 => ext::FID_IPC_SEND,
        14..=15 => ext::FID_IPC_RECV,
        16 => ext::FID_POLL_EVENT,
        17 => ext::FID_GET_HV_INFO,
        18 => f
            .rng
            .pick(&[11, 12, ext::FID_COUNT, 27, 255, 0x1_0000, usize::MAX]),
        19..=20 => ext::FID_MAP_CHILD_MEM,
        21 => ext::FID_UNMAP_CHILD_MEM,
        22..=23 => ext::FID_START,
        24..=25 => ext::FID_STOP,
        26..=27 => ext::FID_RESUME,
        28 => ext::FID_REBOOT,
        29..=30 => ext::FID_CONSOLE_READ,
        31 => ext::FID_CONSOLE_WRITE,
        32 => ext::FID_DROP_CHILD_TRUST,
        33 => ext::FID_GET_CHILD_INFO,
        34 => ext::FID_LIST_CHILDREN,
        35 => ext::FID_MAP_HOST_MMIO,
        36 => ext::FID_ROUTE_IRQ,
        37 => ext::FID_EXEC,
        38 => ext::FID_RELEASE_DEVICE,
        39 => ext::FID_CHILD_MEM_READ,
        40 => ext::FID_CHILD_MEM_WRITE,
        41..=42 => ext::FID_DEVICE_STATE,
        43 => ext::FID_DEVICE_RAISE,
        44..=45 => ext::FID_IPC_CALL,
        _ => ext::FID_GET_CHILD_INFO,
    };
    let r = &mut f.rng;
    let junk = [r.next() as usize, r.next() as usize, r.next() as usize];
    match fid {
        ext::FID_EXIT => {
            let mut c = f.cid();
            if c == 1 {
                c = 0;
            }
            let code = f.rng.next() as usize;
            f.dsx(fid, [c as usize, code, junk[0], 0, 0, 0]);
        }
        ext::FID_FORK => {
            let fl = f
                .rng
                .pick(&[0, 1, 2, 3, 3, 4, 8, 1 << 31, 1 << 63, usize::MAX]);
            // Rarer than the rest: every FORK holds this VM's other vCPUs still.
            if !f.rng.one_in(4) {
                return;
            }
            let serial = crate::avoid_known();
            if serial {
                while FORK_LOCK
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    DSX.yield_now();
                }
            }
            // A clone EXITs itself inside `sys::fork`'s path; the raw call is checked here.
            let r = f.dsx(fid, [fl, junk[0], junk[1], 0, 0, 0]);
            if r.error == 0 && r.value == 0 {
                DSX.exit_self(0x33);
            }
            if serial {
                FORK_LOCK.store(false, Ordering::Release);
            }
        }
        ext::FID_DROP_TRUST => {
            if f.rng.one_in(50) {
                f.dsx(fid, [junk[0], 0, 0, 0, 0, 0]);
            }
        }
        ext::FID_SPAWN | ext::FID_EXEC => spawn_one(f, fid),
        ext::FID_GET_INFO | ext::FID_GET_HV_INFO | ext::FID_POLL_EVENT => {
            let a = f.out_addr();
            let size = f.len(if fid == ext::FID_GET_INFO {
                VmInfo::SIZE as u64
            } else {
                HvInfo::SIZE as u64
            }) as usize;
            f.dsx(fid, [a, size, junk[0], 0, 0, 0]);
        }
        ext::FID_SET_QUOTA => quota_one(f),
        ext::FID_IPC_SEND => {
            if f.rng.one_in(4) {
                let a = f.in_addr();
                f.dsx(fid, [a, 0, 0, 0, 0, 0]);
                return;
            }
            let a = IpcSendArgs {
                size: f.rng.pick(&[32, 32, 31, 0, 40, u32::MAX]),
                flags: f.rng.pick(&[0, 0, 0, 1, u32::MAX]),
                cid: f.cid(),
                data_gpa: f.in_addr() as u64,
                len: f.len(limits::IPC_MAX_MESSAGE as u64),
            };
            let s = sys::st();
            s.write(0, &a.to_le_bytes());
            f.dsx(fid, [s.addr(), 0, 0, 0, 0, 0]);
        }
        ext::FID_IPC_RECV => {
            let a = IpcRecvArgs {
                size: f.rng.pick(&[40, 40, 39, 0, 48]),
                flags: f.rng.pick(&[0, 1, 1, 2, 3, 4, u32::MAX]),
                cid: f.cid(),
                buf_gpa: f.out_addr() as u64,
                max_len: f.len(limits::IPC_MAX_MESSAGE as u64),
                out_len: f.rng.next(),
            };
            // The structure is written back: it goes where output may go.
            let at = if f.rng.one_in(4) {
                f.out_addr()
            } else {
                let s = sys::st();
                s.write(0, &a.to_le_bytes());
                s.addr()
            };
            // A receive that sleeps (IPC_RECV_WAIT) and finds nothing ends on this
            // vCPU's timer, 1 ms on, if no message comes first.
            sys::with_wake_timer(1, || f.dsx(fid, [at, 0, 0, 0, 0, 0]));
        }
        ext::FID_MAP_CHILD_MEM => {
            let c = f.cid() as usize;
            let cg = f.rng.pick(&[
                0x8000_0000usize,
                0x8000_1000,
                0x8003_0000,
                0x8000_0010,
                usize::MAX - 4095,
                0,
            ]);
            let pg = f.in_addr() & !if f.rng.one_in(8) { 0 } else { 0xfff };
            let size = (f.len(8192) as usize) & !if f.rng.one_in(8) { 0 } else { 0xfff };
            let perms = f.rng.below(16) as usize;
            f.dsx(fid, [c, cg, pg, size, perms, 0]);
        }
        ext::FID_UNMAP_CHILD_MEM => {
            let a = f.in_addr() & !0xfff;
            let size = (f.len(1 << 20) as usize) & !if f.rng.one_in(8) { 0 } else { 0xfff };
            f.dsx(fid, [a, size, 0, 0, 0, 0]);
        }
        ext::FID_START => {
            let c = f.cid() as usize;
            let entry = f
                .rng
                .pick(&[img::CODE_GPA, img::PAGE_GPA, 0x8000_0002, 0x8000_0001]);
            let entry = if f.rng.one_in(4) { f.in_addr() } else { entry };
            let dtb = if f.rng.one_in(4) {
                f.in_addr()
            } else {
                img::CHILD_DTB_GPA
            };
            f.dsx(fid, [c, entry, dtb, 0, 0, 0]);
        }
        ext::FID_STOP | ext::FID_RESUME | ext::FID_REBOOT | ext::FID_DROP_CHILD_TRUST => {
            let c = f.cid() as usize;
            f.dsx(fid, [c, junk[0], 0, 0, 0, 0]);
        }
        ext::FID_CONSOLE_READ => {
            let c = f.cid() as usize;
            let a = f.out_addr();
            let len = f.len(limits::CONSOLE_MAX_TRANSFER as u64) as usize;
            f.dsx(fid, [c, a, len, 0, 0, 0]);
        }
        ext::FID_CONSOLE_WRITE => {
            let c = f.cid() as usize;
            let a = f.in_addr();
            let len = f.len(limits::CONSOLE_MAX_TRANSFER as u64) as usize;
            f.dsx(fid, [c, a, len, 0, 0, 0]);
        }
        // Into this VM's own arena (READ) or from anywhere (WRITE); the child's side
        // anywhere: its RAM is the fuzzer's own children's to lose.
        ext::FID_CHILD_MEM_READ | ext::FID_CHILD_MEM_WRITE => {
            let c = f.cid() as usize;
            let child_gpa = f.in_addr();
            // What the hypervisor writes into this VM stays within an arena's 8 KiB
            // margin (lengths around 4 KiB, or over the cap and refused); what it only
            // reads may be up to the cap and past it.
            let (own, len) = if fid == ext::FID_CHILD_MEM_READ {
                (f.out_addr(), f.len(4096))
            } else {
                (f.in_addr(), f.len(limits::CHILD_MEM_MAX as u64))
            };
            f.dsx(fid, [c, child_gpa, own, len as usize, 0, 0]);
        }
        ext::FID_DEVICE_STATE => {
            let c = f.cid() as usize;
            let r = &mut f.rng;
            let device = r.pick(&[0, 0, 1, 7, 8, usize::MAX]);
            let size = r.pick(&[80, 112, 304, 79, 0, usize::MAX]);
            // Written into this VM: within an arena's margin.
            let out = f.out_addr();
            f.dsx(fid, [c, device, out, size, 0, 0]);
        }
        ext::FID_DEVICE_RAISE => {
            let c = f.cid() as usize;
            let r = &mut f.rng;
            let device = r.pick(&[0, 0, 1, 7, 8, usize::MAX]);
            let what = r.pick(&[1, 1, 2, 4, 7, 0, 8, usize::MAX]);
            f.dsx(fid, [c, device, what, 0, 0, 0]);
        }
        ext::FID_IPC_CALL => {
            let c = f.cid() as usize;
            let buf = f.out_addr();
            let len = f.len(limits::IPC_MAX_MESSAGE as u64) as usize;
            let cap = f.len(limits::IPC_MAX_MESSAGE as u64) as usize;
            // Sleeps for the peer's answer: this vCPU's timer ends the wait, 1 ms on,
            // if none comes first.
            sys::with_wake_timer(1, || f.dsx(fid, [c, buf, len, cap, 0, 0]));
        }
        ext::FID_GET_CHILD_INFO => {
            let c = f.cid() as usize;
            let a = f.out_addr();
            let size = f.len(VmInfo::SIZE as u64) as usize;
            f.dsx(fid, [c, a, size, 0, 0, 0]);
        }
        ext::FID_LIST_CHILDREN => {
            let a = f.out_addr();
            let cap = match f.rng.below(6) {
                0 => 0,
                1 => 1,
                2 => 64,
                3 => usize::MAX / 8,
                4 => usize::MAX / 8 + 1,
                _ => f.rng.next() as usize,
            };
            f.dsx(fid, [a, cap, 0, 0, 0, 0]);
        }
        ext::FID_MAP_HOST_MMIO => {
            let hpa = f.rng.pick(&[
                0x1000_0000usize,
                0x0c00_0000,
                0x0200_0000,
                0x8000_0000,
                0x8020_0000,
                0x0010_0000,
                0,
                usize::MAX - 4095,
            ]);
            let gpa = f.rng.pick(&[
                0x1000_0000usize,
                0x4000_0000,
                0x8000_0000,
                usize::MAX - 4095,
            ]);
            let size = f.len(4096) as usize;
            f.dsx(fid, [hpa, gpa, size, 0, 0, 0]);
        }
        ext::FID_ROUTE_IRQ => {
            let irq = f
                .rng
                .pick(&[0usize, 1, 10, 11, 0x35, 1023, 1024, usize::MAX]);
            f.dsx(fid, [irq, 0, 0, 0, 0, 0]);
        }
        ext::FID_RELEASE_DEVICE => {
            let by = f.rng.pick(&[0usize, 1, 2, usize::MAX]);
            let which = f.rng.pick(&[
                0usize,
                1,
                10,
                11,
                1 << 32 | 11,
                0x10_1000,
                0x1000_0000,
                0x1000_1000,
                0x0c00_0000,
                usize::MAX & !0xfff,
            ]);
            f.dsx(fid, [by, which, 0, 0, 0, 0]);
        }
        _ => {
            f.dsx(fid, [junk[0], junk[1], junk[2], 0, 0, 0]);
        }
    }
}

/// SET_QUOTA: on a child anything; on itself only forms that must be refused (a
/// lowered quota is for good and would change the run's baseline).
fn quota_one(f: &mut Fz) {
    if f.rng.one_in(6) {
        let a = f.edge_addr();
        f.dsx(ext::FID_SET_QUOTA, [a, 0, 0, 0, 0, 0]);
        return;
    }
    let mut q = QuotaArgs {
        size: f.rng.pick(&[40, 40, 39, 0, 48]),
        flags: f.rng.below(64) as u32,
        cid: f.cid(),
        ram_pages: f.rng.pick(&[0, 1, 64, 4096, 1 << 20, u64::MAX]),
        vcpus: f.rng.pick(&[0, 1, 2, 4096, 4097, u32::MAX]),
        max_priority: f.rng.pick(&[0, 1, 128, 255, 256]),
        max_depth: f.rng.pick(&[0, 1, 64, 65]),
        max_descendants: f.rng.pick(&[0, 1, 65536, 65537]),
    };
    if q.cid == 1 {
        match f.rng.below(3) {
            0 => q.size = 39,
            1 => q.flags |= 1 << 5,
            _ => q.max_depth = 65,
        }
    }
    let s = sys::st();
    s.write(0, &q.to_le_bytes());
    f.dsx(ext::FID_SET_QUOTA, [s.addr(), 0, 0, 0, 0, 0]);
}

/// SPAWN: a well-formed or garbled image, arguments at their edges, sometimes a
/// page list, sometimes a structure read from anywhere.
/// SPAWN, or EXEC (`fid`: the same structure; from this Root VM it is always
/// refused, after the same argument checks), with seeded random arguments.
fn spawn_one(f: &mut Fz, fid: usize) {
    if f.rng.one_in(8) {
        let a = f.in_addr();
        f.dsx(fid, [a, 0, 0, 0, 0, 0]);
        return;
    }
    let b = kids::img_buf();
    let rng = &mut f.rng;
    let len = match rng.below(9) {
        0 | 1 => img::program_elf(&b, Program::Idle),
        2 => {
            let l = img::program_elf(&b, Program::Idle);
            img::mutate_elf(&b, l, rng)
        }
        3 => img::linux_image(&b, 4096, rng.pick(&[0, 0x1000, 0x20_0000]), 4096),
        4 => {
            let l = img::linux_image(&b, 4096, 0, 4096);
            img::mutate_image(&b, l, rng)
        }
        5 => img::payload(&b),
        6 => {
            let l = img::payload(&b);
            img::mutate_payload(&b, l, rng)
        }
        7 => {
            let l = 64 + rng.below(4096) as usize;
            for o in (0..l).step_by(8) {
                b.put_u64(o, rng.next());
            }
            if rng.one_in(2) {
                b.write(0, b"\x7fELF\x02\x01\x01");
            }
            l
        }
        _ => {
            let l = img::program_elf(&b, Program::Exit(rng.next()));
            img::mutate_elf(&b, l, rng)
        }
    };
    let high_prio = kids::prio();
    let mut a = SpawnArgs {
        size: rng.pick(&[104, 104, 88, 87, 0, 96, 4096]),
        flags: rng.pick(&[
            0,
            0,
            flags::SPAWN_PAUSED,
            flags::SPAWN_TRUSTED,
            flags::SPAWN_PAGE_LIST,
            flags::SPAWN_PAGE_LIST | flags::SPAWN_PAUSED,
            1 << 3,
            u32::MAX,
        ]),
        cid: 0,
        image_gpa: b.addr() as u64,
        image_size: len as u64,
        dtb_gpa: 0,
        dtb_size: 0,
        ram_pages: rng.pick(&[
            17,
            64,
            64,
            256,
            1024,
            4096,
            0,
            1,
            1 << 20,
            u64::MAX / 4096 + 1,
        ]),
        vcpus: rng.pick(&[1, 1, 2, 3, 8, 0, 4096, 4097, u32::MAX]),
        priority: rng.pick(&[high_prio, high_prio, 1, 0, 255, 256, u32::MAX]),
        quota_ram_pages: rng.pick(&[0, 0, 0, 1, 1 << 20, u64::MAX]),
        quota_vcpus: rng.pick(&[0, 0, 1, 4097]),
        quota_max_priority: rng.pick(&[0, 0, 1, 255, 256]),
        quota_max_depth: rng.pick(&[0, 0, 0, 1, 64, 65]),
        quota_max_descendants: rng.pick(&[0, 0, 0, 1, 64, 65537]),
        ..SpawnArgs::default()
    };
    if rng.one_in(6) {
        a.cid = f.cid();
    }
    let rng = &mut f.rng;
    if rng.one_in(8) {
        a.image_size = rng.pick(&[0, 1, 63, u64::MAX, 1 << 32, len as u64 + 4096]);
    }
    if rng.one_in(10) {
        // A device tree of its own for the child: garbage from an arena.
        a.dtb_gpa = f.lo.addr() as u64;
        a.dtb_size = f.rng.pick(&[0, 1, 4096, 0x10000, 0x10001]);
    }
    if a.flags & flags::SPAWN_PAGE_LIST != 0 {
        let l = sys::list();
        let pages = (len.div_ceil(4096)).min(l.len() / 8);
        for i in 0..pages {
            let mut p = (b.addr() + i * 4096) as u64;
            if f.rng.one_in(6) {
                p = f.edge_addr() as u64;
            } else if f.rng.one_in(8) {
                p += 8;
            }
            l.put_u64(i * 8, p);
        }
        a.image_gpa = (l.addr() + if f.rng.one_in(10) { 4 } else { 0 }) as u64;
    }
    let s = sys::st();
    if f.rng.one_in(3) {
        // Virtio devices for the child: specs at 512 in the structure buffer, each
        // possibly wrong, their configuration in the data buffer or anywhere.
        let r = &mut f.rng;
        a.device_count = r.pick(&[1, 1, 2, 8, 9, 0, u32::MAX]);
        a.reserved = r.pick(&[0, 0, 0, 0, 1]);
        a.devices_gpa = (s.addr() + 512 + if r.one_in(12) { 4 } else { 0 }) as u64;
        for i in 0..8 {
            let r = &mut f.rng;
            let d = DeviceSpec {
                size: r.pick(&[40, 40, 40, 39, 0, 4096]),
                device_id: r.pick(&[4, 2, 1, 0, u32::MAX]),
                features: r.next(),
                queue_count: r.pick(&[1, 1, 2, 8, 0, 9, u32::MAX]),
                queue_max: r.pick(&[64, 256, 1024, 0, 3, 2048, u32::MAX]),
                config_gpa: 0,
                config_len: r.pick(&[0, 0, 8, 256, 257, u32::MAX]),
                reserved: r.pick(&[0, 0, 0, 0, 1]),
            };
            let config_gpa = if f.rng.one_in(5) {
                f.edge_addr()
            } else {
                sys::data().addr()
            } as u64;
            s.write(
                512 + i * DeviceSpec::SIZE,
                &DeviceSpec { config_gpa, ..d }.to_le_bytes(),
            );
        }
    }
    s.write(0, &a.to_le_bytes());
    f.dsx(fid, [s.addr(), 0, 0, 0, 0, 0]);
}

/// A standard SBI call (or a legacy one) with random arguments, never one that stops,
/// suspends, resets or shuts down this VM, and never console bytes but spaces.
fn standard_one(f: &mut Fz) {
    let r = &mut f.rng;
    let a = [
        r.next() as usize,
        r.next() as usize,
        r.next() as usize,
        r.next() as usize,
        r.next() as usize,
        r.next() as usize,
    ];
    let hi = (r.next() as usize) & !0xffff_ffff;
    match r.below(13) {
        0 => {
            let fid = r.pick(&[0, 1, 2, 3, 4, 5, 6, 7, usize::MAX]);
            f.std(eid::BASE, fid, a);
        }
        1 => {
            // Its own timer only; the deadline is reset after the phase.
            let when = r.pick(&[0, usize::MAX, a[0], sys::now() as usize + 1000]);
            let fid = r.pick(&[0, 1]);
            f.std(eid::TIME, fid, [when, 0, 0, 0, 0, 0]);
        }
        2 => {
            let base = r.pick(&[0, usize::MAX, 1, 64, a[1]]);
            let fid = r.pick(&[0, 1]);
            f.std(eid::IPI, fid, [a[0], base, 0, 0, 0, 0]);
        }
        3 => {
            let fid = r.below(8) as usize;
            let base = r.pick(&[0, usize::MAX, 1, a[1]]);
            f.std(eid::RFENCE, fid, [a[0], base, a[2], a[3], a[4], 0]);
        }
        4 => {
            // HSM: start (every vCPU of this VM runs: ALREADY_AVAILABLE or refused),
            // status, suspend of a reserved type (refused), unknown functions.
            let me = diosix_guest_rt::hart::id();
            match r.below(4) {
                0 => {
                    let h = r.pick(&[me, 0, 1, 7, 4096, usize::MAX, a[0]]);
                    let h = if h < 32 && h >= team::size() { me } else { h };
                    f.std(eid::HSM, 0, [h, a[1], a[2], 0, 0, 0]);
                }
                1 => {
                    let h = r.pick(&[0, 1, 3, 4096, usize::MAX]);
                    f.std(eid::HSM, 2, [h, 0, 0, 0, 0, 0]);
                }
                2 => {
                    let t = hi | r.pick(&[1usize, 0x0fff_ffff, 0x8000_0001, 0x8fff_ffff]);
                    f.std(eid::HSM, 3, [t, a[1], a[2], 0, 0, 0]);
                }
                _ => {
                    let fid = r.pick(&[4, 5, 1000]);
                    f.std(eid::HSM, fid, a);
                }
            }
        }
        5 => {
            // SRST with a reserved type only (refused whatever the upper bits).
            let t = hi | (3 + r.below(0xefff_fffc) as usize);
            let fid = r.pick(&[0, 0, 1]);
            f.std(eid::SRST, fid, [t, a[1], 0, 0, 0, 0]);
        }
        6..=8 => {
            // DBCN: writes of spaces (or refused), reads into output memory, a space
            // byte.
            let d = sys::data();
            match r.below(4) {
                0 => {
                    let len = r.pick(&[0, 1, 8]);
                    f.std(eid::DBCN, 0, [len, d.addr(), 0, 0, 0, 0]);
                }
                1 => {
                    let len = f.len(8192) as usize;
                    let at = f.edge_addr();
                    let len = if at < sys::RAM_BASE || at >= f.end {
                        len
                    } else {
                        0
                    };
                    let hi = f.rng.pick(&[0, 0, 0, 1, usize::MAX]);
                    let len = if hi == 0 { len } else { 0 };
                    f.std(eid::DBCN, 0, [len, at, hi, 0, 0, 0]);
                }
                2 => {
                    let len = f.len(8192) as usize;
                    let at = f.out_addr();
                    if crate::avoid_known() && len == 0 && at > usize::MAX - 0x10_0000 {
                        return;
                    }
                    let hi = f.rng.pick(&[0, 0, 0, 1]);
                    f.std(eid::DBCN, 1, [len, at, hi, 0, 0, 0]);
                }
                _ => {
                    f.std(eid::DBCN, 2, [hi | b' ' as usize, 0, 0, 0, 0, 0]);
                }
            }
        }
        12 => {
            // FWFT: any feature ID (the standard ones, reserved and platform ranges,
            // garbage above 32 bits), values and flags, set (possibly locking) or get.
            // This VM runs with translation off, so hardware A/D updating changes
            // nothing for it; misaligned delegation can only be kept on.
            let id = hi | r.pick(&[0, 1, 2, 3, 4, 5, 6, 0x4000_0000, 0xc000_0001, a[0]]);
            let value = r.pick(&[0, 1, 2, a[1]]);
            let flags = r.pick(&[0, 1, 2, a[2]]);
            let fid = r.pick(&[0, 1, 2, usize::MAX]);
            if r.one_in(3) {
                // STA: a record in the output arenas (where stray writes are expected),
                // at edges, misaligned, or garbage; or reporting stopped.
                let lo = match f.rng.below(4) {
                    0 => f.out_addr() & !63,
                    1 => f.edge_addr(),
                    2 => f.out_addr(),
                    _ => usize::MAX,
                };
                let hi = f.rng.pick(&[0, 0, 1, usize::MAX]);
                let flags = f.rng.pick(&[0, 0, 1]);
                f.std(0x53_5441, 0, [lo, hi, flags, 0, 0, 0]);
                return;
            }
            if f.rng.one_in(3) {
                // DBTR with anything but an installation that could take: counts,
                // shared memory anywhere, reads, and enable/disable/uninstall masks
                // (nothing is installed, so all refused); installs of 0 or too many.
                let fid = f.rng.pick(&[0usize, 1, 2, 3, 4, 5, 6, 7, 8]);
                let out = f.out_addr() & !7;
                let x = f.rng.pick(&[0usize, 1, 2, 64, usize::MAX, out]);
                let args = match fid {
                    3 | 4 => [f.rng.pick(&[0usize, 9, usize::MAX]), 0, 0],
                    _ => [
                        x,
                        f.rng.pick(&[0usize, 1, usize::MAX]),
                        f.rng.pick(&[0usize, 1]),
                    ],
                };
                f.std(0x4442_5452, fid, [args[0], args[1], args[2], 0, 0, 0]);
                return;
            }
            if f.rng.one_in(3) {
                // PMU: every function with counter sets at the edges and past them,
                // any flags, real and garbage events, from every vCPU at once. The
                // counters are this vCPU's own, so starting and resetting them is
                // harmless; the hypervisor's switches save and load them meanwhile.
                let fid = f.rng.pick(&[0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
                let base = f
                    .rng
                    .pick(&[0usize, 1, 15, 16, 23, 24, 63, usize::MAX, a[0]]);
                let mask = f.rng.pick(&[0usize, 1, 3, 0xffff, usize::MAX, a[1]]);
                let flags = f.rng.pick(&[0usize, 1, 2, 4, 6, 0xff, 0x100, a[2]]);
                let event = f.rng.pick(&[
                    1usize,
                    2,
                    3,
                    0x10019,
                    0x2_0000,
                    0xf_0005,
                    0xf_ffff,
                    0,
                    usize::MAX,
                ]);
                let data = f.rng.pick(&[0usize, 1, 6, 7, usize::MAX]);
                let args = match fid {
                    2 => [base, mask, flags, event, data, 0],
                    3 => [base, mask, flags & 3, data, 0, 0],
                    _ => [base, mask, flags, 0, 0, 0],
                };
                f.std(0x50_4d55, fid, args);
                return;
            }
            if f.rng.one_in(3) {
                // SUSP with a sleep type it never has (reserved or platform, any upper
                // bits): refused, never a suspend of this VM.
                let t = hi | f.rng.pick(&[1usize, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff]);
                f.std(0x5355_5350, fid & 1, [t, a[1], a[2], 0, 0, 0]);
                return;
            }
            f.std(0x4657_4654, fid, [id, value, flags, 0, 0, 0]);
        }
        9 => {
            // Legacy: getchar, clear_ipi, timer, IPIs and fences with a hart-mask
            // pointer anywhere (only read), putchar of a space.
            let e = r.pick(&[0usize, 1, 2, 3, 4, 5, 6, 7]);
            let p = f.in_addr();
            let args = match e {
                0 => [usize::MAX, 0, 0, 0, 0, 0],
                1 => [b' ' as usize, 0, 0, 0, 0, 0],
                _ => [p, a[1], a[2], a[3], 0, 0],
            };
            sys::call(e, 0, args);
        }
        _ => {
            // Unknown extensions, including ones near the real IDs.
            let e = r.pick(&[
                0x0A00_0004usize,
                0x0A00_0006,
                0x4442_434F,
                0x5352_5355,
                0x09,
                0x0F,
                a[0],
            ]);
            f.std(e, a[1] & 0xff, a);
        }
    }
}
