//! The hypervisor side of the SBI: performs what `diosix_core::sbi::dispatch` decided,
//! for the vCPU running on this hart.

use crate::hart::{self, HartLocal};
use crate::sched;
use crate::vcpu::{Vcpu, Wait};
use crate::vcpu_shared::NOT_RUNNING;
use core::sync::atomic::Ordering;
use diosix_abi::error;
use diosix_core::addr::{Gpa, Gva, Range, PAGE_SIZE};
use diosix_core::gstage::Perms;
use diosix_core::sbi::{
    self, FenceKind, HartSet, HartState, Reply, ResetType, SbiEnv, SbiRet, Suspend,
};
use diosix_riscv::csr::{self, irq};
use diosix_riscv::trap::reg;

/// Most console bytes moved per DBCN call; the spec lets us return a short count.
const CONSOLE_CHUNK: u64 = 4096;

/// Handles an `ecall` from VS-mode on this hart.
pub fn handle_ecall(hart: &mut HartLocal) {
    let r = &hart.frame.regs;
    let regs = [
        r[reg::A0] as usize,
        r[reg::A0 + 1] as usize,
        r[reg::A0 + 2] as usize,
        r[reg::A0 + 3] as usize,
        r[reg::A0 + 4] as usize,
        r[reg::A0 + 5] as usize,
        r[reg::A6] as usize,
        r[reg::A7] as usize,
    ];
    let mut call = Call {
        hart,
        block: None,
        again: false,
    };
    let reply = sbi::dispatch(&mut call, regs);
    let Call { hart, block, again } = call;
    if again {
        // Not carried out: the vCPU leaves with its PC still on the ecall, which it
        // issues again when next scheduled.
        sched::switch_away(hart, Wait::None);
        return;
    }
    match reply {
        Reply::Sbi(SbiRet { error, value }) => {
            hart.frame.regs[reg::A0] = error as u64;
            hart.frame.regs[reg::A1] = value as u64;
        }
        Reply::Legacy(v) => hart.frame.regs[reg::A0] = v as u64,
    }
    // SAFETY: resumes the guest after its 4-byte ecall.
    unsafe { csr::mepc::write(csr::mepc::read() + 4) };
    if let Some(wait) = block {
        sched::switch_away(hart, wait);
    }
}

/// One SBI call in progress.
struct Call<'a> {
    hart: &'a mut HartLocal,
    /// Set when the caller must stop running once its reply is written.
    block: Option<Wait>,
    /// Set when the call was not carried out and must be issued again (no reply).
    again: bool,
}

impl Call<'_> {
    fn vcpu(&self) -> &Vcpu {
        self.hart
            .current
            .as_ref()
            .expect("ecall from a running vCPU")
    }

    fn vcpu_mut(&mut self) -> &mut Vcpu {
        self.hart
            .current
            .as_mut()
            .expect("ecall from a running vCPU")
    }

    /// True when `gpa` is guest RAM the caller may execute.
    fn executable(&self, gpa: Gpa) -> bool {
        let vm = &self.vcpu().vm;
        vm.ram.contains(gpa)
            && gpa.is_aligned(2)
            && vm.translate(gpa).is_some_and(|(_, p)| p.contains(Perms::X))
    }

    /// Checks a console buffer lies in the caller's RAM (the whole of it, so a huge or
    /// wrapping length is refused rather than truncated).
    fn console_buffer(&self, gpa: Gpa, len: u64) -> Result<u64, isize> {
        if len == 0 {
            return Ok(0);
        }
        let ram = self.vcpu().vm.ram;
        if Range::new(gpa, len).is_none() || !ram.contains_span(gpa, len) {
            return Err(error::INVALID_PARAM);
        }
        Ok(len.min(CONSOLE_CHUNK))
    }
}

fn version_number() -> usize {
    let (a, b, c) = crate::version_parts();
    ((a << 16) | (b << 8) | c) as usize
}

impl SbiEnv for Call<'_> {
    fn vcpu_count(&self) -> usize {
        self.vcpu().vm.vcpu_count()
    }

    fn this_hart(&self) -> usize {
        self.vcpu().shared.index
    }

    fn impl_version(&self) -> usize {
        version_number()
    }

    fn machine_ids(&self) -> (usize, usize, usize) {
        (csr::id::mvendorid(), csr::id::marchid(), csr::id::mimpid())
    }

    fn set_timer(&mut self, deadline: u64) {
        let now = crate::platform::now();
        let v = self.vcpu_mut();
        v.ctx.timer_deadline = deadline;
        // SAFETY: clears only this guest's pending virtual timer interrupt.
        unsafe { csr::hvip::clear_bits(irq::VSTIP) };
        v.merge_pending_live(now);
        sched::program_timer(self.hart);
    }

    fn send_ipi(&mut self, targets: HartSet) {
        let me = self.this_hart();
        let vm = self.vcpu().vm.clone();
        let mut others = false;
        for t in targets.iter() {
            if t == me {
                // SAFETY: raises a software interrupt in this hart's own guest.
                unsafe { csr::hvip::set_bits(irq::VSSIP) };
                continue;
            }
            let Some(shared) = vm.vcpus.get(t) else {
                continue;
            };
            shared.pending.fetch_or(irq::VSSIP, Ordering::AcqRel);
            others = true;
            let slot = shared.running_on.load(Ordering::Acquire);
            if slot != NOT_RUNNING {
                hart::kick(slot);
            }
        }
        // Always re-check the wait queue under its lock, even for targets that looked
        // as if they were running: a target being descheduled right now may have read
        // its pending bits before our store (store buffering), and its hart may then
        // swallow our kick. The lock orders us after, or before, its enqueue check.
        if others {
            sched::poke_waiters();
        }
    }

    fn clear_ipi(&mut self) {
        // SAFETY: clears only this guest's pending software interrupt.
        unsafe { csr::hvip::clear_bits(irq::VSSIP) };
    }

    fn remote_fence(&mut self, targets: HartSet, _kind: FenceKind) {
        let me = self.this_hart();
        let my_slot = self.hart.slot;
        let vm = self.vcpu().vm.clone();
        if targets.iter().any(|t| t == me) {
            diosix_riscv::fence::fence_i();
            diosix_riscv::fence::hfence_vvma_all();
        }
        // A vCPU that is not running flushes when it is next loaded (every load flushes
        // its VS-stage TLB), so only running ones need their hart poked.
        crate::hart::fence_other_harts(
            my_slot,
            targets
                .iter()
                .filter(|t| *t != me)
                .filter_map(|t| vm.vcpus.get(t))
                .map(|v| v.running_on.load(Ordering::Acquire)),
        );
    }

    fn hart_status(&self, hart: usize) -> HartState {
        self.vcpu().vm.vcpus[hart].state()
    }

    fn hart_start(&mut self, hart: usize, start: Gpa, opaque: usize) -> Result<(), isize> {
        let vm = self.vcpu().vm.clone();
        let shared = &vm.vcpus[hart];
        if shared.state() != HartState::Stopped {
            return Err(error::ALREADY_AVAILABLE);
        }
        if !self.executable(start) {
            return Err(error::INVALID_ADDRESS);
        }
        if !shared.transition(HartState::Stopped, HartState::StartPending) {
            return Err(error::ALREADY_AVAILABLE);
        }
        if !sched::start_stopped(&vm, hart, start, opaque as u64) {
            shared.set_state(HartState::Stopped);
            return Err(error::FAILED);
        }
        Ok(())
    }

    fn hart_stop(&mut self) -> Result<(), isize> {
        self.vcpu().shared.set_state(HartState::StopPending);
        self.block = Some(Wait::Stopped);
        Ok(())
    }

    fn hart_suspend(&mut self, how: Suspend) -> Result<(), isize> {
        if let Suspend::NonRetentive { resume, .. } = how {
            if !self.executable(resume) {
                return Err(error::INVALID_ADDRESS);
            }
        }
        self.vcpu().shared.set_state(HartState::Suspended);
        self.block = Some(Wait::Suspend(how));
        Ok(())
    }

    fn system_reset(&mut self, kind: ResetType, failure: bool) -> Result<(), isize> {
        let vm = self.vcpu().vm.clone();
        log::info!(
            "VM {} asked for {:?}{}: {}",
            vm.name,
            kind,
            if failure { " (system failure)" } else { "" },
            match (vm.is_root, kind) {
                (true, _) => "the Root VM has ended, restarting the host",
                (false, ResetType::Shutdown) => "ending the VM",
                (false, _) => "putting the VM back to its created or forked state",
            }
        );
        if vm.is_root {
            crate::platform::restart_host()
        }
        // A child's own shutdown ends it (and its subtree); its own reboot is REBOOT of
        // itself. Its parent gets the event either way.
        if kind == ResetType::Shutdown {
            crate::vmtree::vm_ended(self.hart, &vm, diosix_abi::exit_code::SHUTDOWN, false);
        } else {
            crate::vmtree::vm_rebooted(self.hart, &vm);
        }
        self.block = Some(Wait::None);
        Ok(())
    }

    fn console_write(&mut self, gpa: Gpa, len: u64) -> Result<usize, isize> {
        let n = self.console_buffer(gpa, len)?;
        let vm = self.vcpu().vm.clone();
        let mut buf = [0u8; 256];
        let mut done = 0u64;
        while done < n {
            let step = (n - done).min(buf.len() as u64) as usize;
            let at = Gpa::new(gpa.raw() + done);
            // Read first, then hand over: the tree's lock is never taken while the
            // VM's memory lock is held.
            vm.read(at, &mut buf[..step])
                .map_err(|_| error::INVALID_PARAM)?;
            crate::vmtree::console_output(&vm, self.hart.slot, &buf[..step]);
            done += step as u64;
        }
        Ok(n as usize)
    }

    fn console_read(&mut self, gpa: Gpa, len: u64) -> Result<usize, isize> {
        let n = self.console_buffer(gpa, len)?.min(256) as usize;
        if n == 0 {
            // Nothing to read, so nothing of the buffer is touched (the spec checks an
            // address only where bytes would go).
            return Ok(0);
        }
        let vm = self.vcpu().vm.clone();
        let slot = self.hart.slot;
        let mut stale = crate::cow::Stale::new();
        // Validate the destination (and give the VM its own copy of any copy-on-write
        // page in it) before consuming input, so a bad buffer loses nothing.
        let r = vm.make_writable(gpa, n as u64, &mut stale).and_then(|()| {
            let mut buf = [0u8; 256];
            let got = crate::vmtree::console_input(&vm, slot, &mut buf[..n]);
            vm.write(gpa, &buf[..got], &mut stale).map(|()| got)
        });
        crate::cow::finish(&vm, self.hart.slot, stale);
        r.map_err(|_| error::INVALID_PARAM)
    }

    fn console_write_byte(&mut self, byte: u8) {
        let vm = self.vcpu().vm.clone();
        crate::vmtree::console_output(&vm, self.hart.slot, &[byte]);
    }

    fn console_getchar(&mut self) -> Option<u8> {
        let vm = self.vcpu().vm.clone();
        let mut b = [0u8; 1];
        (crate::vmtree::console_input(&vm, self.hart.slot, &mut b) == 1).then_some(b[0])
    }

    fn read_legacy_mask(&mut self, gva: usize) -> Option<usize> {
        // The pointer is the guest's own virtual address: walk its VS-stage tables (the
        // vCPU's CSRs are live on this hart) as a supervisor read would, byte by byte
        // page, since the word may straddle two pages.
        let vm = self.vcpu().vm.clone();
        let (vsatp, vsstatus) = (csr::vsatp::read() as u64, csr::vsstatus::read() as u64);
        let read_pte = |gpa: Gpa| {
            let mut b = [0u8; 8];
            vm.read(gpa, &mut b).ok().map(|()| u64::from_le_bytes(b))
        };
        let mut bytes = [0u8; 8];
        let mut done = 0usize;
        while done < bytes.len() {
            let at = Gva::new((gva as u64).checked_add(done as u64)?);
            let gpa = diosix_core::vstage::translate_read(vsatp, vsstatus, at, read_pte).ok()?;
            let in_page = (PAGE_SIZE - (at.raw() & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(bytes.len() - done);
            vm.read(gpa, &mut bytes[done..done + n]).ok()?;
            done += n;
        }
        Some(usize::from_le_bytes(bytes))
    }

    fn diosix_call(&mut self, fid: usize, args: [usize; 6]) -> SbiRet {
        match crate::vmtree::call(self.hart, fid, args) {
            crate::vmtree::Outcome::Done(ret, leave) => {
                if leave {
                    self.block = Some(Wait::None);
                }
                ret
            }
            crate::vmtree::Outcome::Again => {
                self.again = true;
                SbiRet::err(error::FAILED)
            }
        }
    }
}
