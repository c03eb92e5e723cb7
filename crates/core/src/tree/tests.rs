//! Unit tests of the tree and of every extension function through a fake host.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use diosix_abi::{
    event, ext, flags, limits, Event, HvInfo, IpcRecvArgs, IpcSendArgs, QuotaArgs, SpawnArgs,
    VmInfo,
};

use super::dispatch::{handle_diosix_call, ExtensionHost};
use super::*;
use crate::addr::{Gpa, Hpa};
use crate::sbi::SbiRet;

const E_INVALID_PARAM: isize = diosix_abi::error::INVALID_PARAM;
const E_DENIED: isize = diosix_abi::error::DENIED;
const E_INVALID_ADDRESS: isize = diosix_abi::error::INVALID_ADDRESS;
const E_BAD_RANGE: isize = diosix_abi::error::BAD_RANGE;
const E_NOT_SUPPORTED: isize = diosix_abi::error::NOT_SUPPORTED;

fn root_tree() -> (VmTree, VmId) {
    VmTree::new(
        Quota::everything(100_000, 64),
        Usage {
            ram_pages: 1000,
            table_pages: 10,
            vcpus: 2,
        },
        10,
    )
    .unwrap()
}

fn req(ram: u64, vcpus: u32) -> ChildRequest {
    ChildRequest {
        ram_pages: ram,
        table_pages: 4,
        vcpus,
        priority: 5,
        trusted: false,
        quota: Quota::default(),
        initial_state: VmState::Running,
        name: String::from("t"),
    }
}

fn with_quota(mut r: ChildRequest, q: Quota) -> ChildRequest {
    r.quota = q;
    r
}

fn big_quota(ram: u64, desc: u32, depth: u32) -> Quota {
    Quota {
        ram_pages: ram,
        vcpus: 16,
        max_priority: 10,
        max_depth: depth,
        max_descendants: desc,
    }
}

// ---------------------------------------------------------------- tree

#[test]
fn cids_start_at_two_and_are_never_reused() {
    let (mut t, root) = root_tree();
    let (a, ca) = t.create_child(root, req(10, 1)).unwrap();
    let (_b, cb) = t.create_child(root, req(10, 1)).unwrap();
    assert_eq!((ca, cb), (2, 3));
    t.kill_child(root, ca, 7).unwrap();
    let (c, cc) = t.create_child(root, req(10, 1)).unwrap();
    assert_eq!(cc, 4);
    // The reused slot has a new generation: the stale id resolves to nothing.
    assert_eq!(c.index(), a.index());
    assert!(!t.is_alive(a));
    assert_eq!(t.resolve(root, ca), Err(SbiError::InvalidParam));
}

#[test]
fn cid_resolution_is_relative_and_hides_everything_else() {
    let (mut t, root) = root_tree();
    let (a, _) = t
        .create_child(root, with_quota(req(10, 1), big_quota(500, 4, 2)))
        .unwrap();
    let (b, _) = t
        .create_child(root, with_quota(req(10, 1), big_quota(500, 4, 2)))
        .unwrap();
    let (a1, _) = t.create_child(a, req(10, 1)).unwrap();
    assert_eq!(t.resolve(a, 0), Ok(Resolved::Parent(root)));
    assert_eq!(t.resolve(a, 1), Ok(Resolved::Myself(a)));
    assert_eq!(t.resolve(a, 2), Ok(Resolved::Child(a1)));
    // b has no children: CID 2 and 3 (which exist elsewhere) are as unknown as 99.
    for c in [2, 3, 99, u64::MAX] {
        assert_eq!(t.resolve(b, c), Err(SbiError::InvalidParam));
    }
    // The Root VM has no parent.
    assert_eq!(t.resolve(root, 0), Err(SbiError::InvalidParam));
    // Grandchild can't name its grandparent's other children.
    assert_eq!(t.resolve(a1, 3), Err(SbiError::InvalidParam));
}

#[test]
fn admission_order_and_errors() {
    let (mut t, root) = root_tree();
    // Malformed.
    assert_eq!(
        t.create_child(root, req(0, 1)).unwrap_err(),
        SbiError::InvalidParam
    );
    assert_eq!(
        t.create_child(root, req(1, 0)).unwrap_err(),
        SbiError::InvalidParam
    );
    let mut r = req(1, 1);
    r.priority = 0;
    assert_eq!(t.create_child(root, r).unwrap_err(), SbiError::InvalidParam);
    let r = with_quota(
        req(100, 1),
        Quota {
            ram_pages: 50,
            ..Quota::default()
        },
    );
    assert_eq!(t.create_child(root, r).unwrap_err(), SbiError::InvalidParam);
    let mut r = req(1, 1);
    r.ram_pages = u64::MAX;
    assert_eq!(t.create_child(root, r).unwrap_err(), SbiError::InvalidParam);
    // Trust: untrusted child cannot make a trusted one.
    let (u, _) = t
        .create_child(root, with_quota(req(10, 1), big_quota(1000, 8, 4)))
        .unwrap();
    let mut r = req(10, 1);
    r.trusted = true;
    assert_eq!(t.create_child(u, r.clone()).unwrap_err(), SbiError::Denied);
    // Trust is checked before the quota: even with no room the error is DENIED-for-trust
    // first, and a trusted parent may make a trusted child.
    assert!(t.create_child(root, r).is_ok());
    // Priority above the caller's ceiling.
    let mut r = req(10, 1);
    r.priority = 11;
    r.quota.max_priority = 11;
    assert_eq!(t.create_child(u, r).unwrap_err(), SbiError::Denied);
    // Depth.
    let r = with_quota(req(10, 1), big_quota(100, 4, 4));
    assert_eq!(t.create_child(u, r).unwrap_err(), SbiError::Denied);
    // vCPUs then RAM.
    assert_eq!(
        t.create_child(u, req(10, 17)).unwrap_err(),
        SbiError::Denied
    );
    assert_eq!(
        t.create_child(u, req(2000, 1)).unwrap_err(),
        SbiError::Denied
    );
    // Nothing leaked by the refusals.
    assert_eq!(t.get(u).unwrap().subtree().descendants, 0);
    assert_eq!(t.get(u).unwrap().next_child_cid(), 2);
}

#[test]
fn reservation_and_usage_are_exact() {
    let (mut t, root) = root_tree();
    let (a, ca) = t
        .create_child(root, with_quota(req(100, 2), big_quota(1000, 5, 3)))
        .unwrap();
    let r = t.reserved(root).unwrap();
    assert_eq!(r.pages, 1010 + 1000);
    assert_eq!(r.vcpus, 2 + 16);
    assert_eq!(r.descendants, 6);
    assert_eq!(t.get(root).unwrap().subtree().pages, 1010 + 104);
    let (_g, _) = t.create_child(a, req(50, 1)).unwrap();
    assert_eq!(t.get(root).unwrap().subtree().pages, 1010 + 104 + 54);
    assert_eq!(t.get(root).unwrap().subtree().descendants, 2);
    let dead = t.kill_child(root, ca, 3).unwrap();
    assert_eq!(dead.killed.len(), 2);
    // Post-order: grandchild first.
    assert_eq!(dead.killed[1].id, a);
    assert_eq!(t.get(root).unwrap().subtree().pages, 1010);
    assert_eq!(t.get(root).unwrap().subtree().descendants, 0);
    assert_eq!(t.get(root).unwrap().subtree().vcpus, 2);
    let (e, d) = t.poll_event(root).unwrap().unwrap();
    assert_eq!(d, 0);
    assert_eq!(
        e,
        EventRecord {
            kind: EventKind::ChildTerminated { exit_code: 3 },
            cid: ca
        }
    );
}

#[test]
fn charge_and_uncharge_never_exceed() {
    let (mut t, root) = root_tree();
    let (a, _) = t
        .create_child(root, with_quota(req(100, 1), big_quota(120, 0, 0)))
        .unwrap();
    assert_eq!(t.charge(a, 0, 16), Ok(()));
    assert_eq!(t.charge(a, 0, 1), Err(SbiError::Denied));
    assert_eq!(t.charge(a, u64::MAX, 1), Err(SbiError::InvalidParam));
    assert_eq!(t.uncharge(a, 0, 100), Err(SbiError::InvalidParam));
    assert_eq!(t.uncharge(a, 10, 20), Ok(()));
    assert_eq!(t.get(a).unwrap().own().pages(), Some(90));
    assert_eq!(t.get(root).unwrap().subtree().pages, 1010 + 90);
}

#[test]
fn set_quota_rules() {
    let (mut t, root) = root_tree();
    let (a, ca) = t
        .create_child(root, with_quota(req(100, 1), big_quota(1000, 5, 3)))
        .unwrap();
    let lower = |v| QuotaChange {
        ram_pages: Some(v),
        ..QuotaChange::default()
    };
    // Self: only lower.
    assert_eq!(t.set_quota(a, 1, lower(2000)), Err(SbiError::Denied));
    assert_eq!(t.set_quota(a, 1, lower(900)), Ok(()));
    assert_eq!(t.set_quota(a, 1, lower(50)), Err(SbiError::InvalidState));
    // Parent: denied. Unknown: invalid.
    assert_eq!(t.set_quota(a, 0, lower(1)), Err(SbiError::Denied));
    assert_eq!(t.set_quota(a, 7, lower(1)), Err(SbiError::InvalidParam));
    // Above ABI ceilings.
    let c = QuotaChange {
        max_priority: Some(limits::MAX_PRIORITY + 1),
        ..QuotaChange::default()
    };
    assert_eq!(t.set_quota(root, ca, c), Err(SbiError::InvalidParam));
    let c = QuotaChange {
        max_priority: Some(0),
        ..QuotaChange::default()
    };
    assert_eq!(t.set_quota(root, ca, c), Err(SbiError::InvalidParam));
    // Child: raise within the parent's headroom, not beyond.
    assert_eq!(t.set_quota(root, ca, lower(50_000)), Ok(()));
    assert_eq!(t.set_quota(root, ca, lower(100_000)), Err(SbiError::Denied));
    let c = QuotaChange {
        max_depth: Some(limits::MAX_TREE_DEPTH),
        ..QuotaChange::default()
    };
    assert_eq!(t.set_quota(root, ca, c), Err(SbiError::Denied));
    // Floor: below a grandchild's needs.
    let (_g, _) = t
        .create_child(
            a,
            with_quota(
                req(10, 1),
                Quota {
                    vcpus: 2,
                    ..big_quota(100, 1, 1)
                },
            ),
        )
        .unwrap();
    let c = QuotaChange {
        max_depth: Some(1),
        ..QuotaChange::default()
    };
    assert_eq!(t.set_quota(root, ca, c), Err(SbiError::InvalidState));
}

#[test]
fn trust_passes_down_only_and_drops_for_the_subtree() {
    let (mut t, root) = root_tree();
    let mut r = with_quota(req(10, 1), big_quota(1000, 5, 3));
    r.trusted = true;
    let (a, ca) = t.create_child(root, r.clone()).unwrap();
    let mut r2 = req(10, 1);
    r2.trusted = true;
    let (g, _) = t.create_child(a, r2.clone()).unwrap();
    assert_eq!(t.drop_trust(a, 0), Err(SbiError::Denied));
    let dropped = t.drop_trust(root, ca).unwrap();
    assert_eq!(dropped, vec![g, a]);
    assert!(!t.get(g).unwrap().trusted());
    assert_eq!(t.create_child(a, r2).unwrap_err(), SbiError::Denied);
    assert_eq!(t.drop_trust(root, ca).unwrap(), Vec::<VmId>::new());
    assert!(t.get(root).unwrap().trusted());
    assert_eq!(t.drop_trust(root, 1).unwrap(), vec![root]);
}

#[test]
fn lifecycle_transitions_and_events() {
    let (mut t, root) = root_tree();
    let mut r = with_quota(req(10, 1), big_quota(100, 2, 2));
    r.initial_state = VmState::Created;
    let (a, ca) = t.create_child(root, r).unwrap();
    assert_eq!(t.stop_child(root, ca), Err(SbiError::InvalidState));
    assert_eq!(t.resume_child(root, ca), Err(SbiError::InvalidState));
    assert_eq!(t.start_child(root, ca), Ok(a));
    assert_eq!(t.start_child(root, ca), Err(SbiError::AlreadyStarted));
    assert_eq!(t.resume_child(root, ca), Err(SbiError::AlreadyStarted));
    assert_eq!(t.stop_child(root, ca), Ok(a));
    assert_eq!(t.stop_child(root, ca), Err(SbiError::AlreadyStopped));
    assert_eq!(t.resume_child(root, ca), Ok(a));
    assert_eq!(t.stop_child(root, 1), Err(SbiError::Denied));
    assert_eq!(t.stop_child(a, 0), Err(SbiError::Denied));
    let kinds: Vec<u32> = core::iter::from_fn(|| t.poll_event(root).unwrap())
        .map(|(e, _)| e.kind.abi_kind())
        .collect();
    assert_eq!(
        kinds,
        vec![
            event::CHILD_STARTED,
            event::CHILD_STOPPED,
            event::CHILD_STARTED
        ]
    );
    // Reboot: descendants die, state returns to the initial one.
    t.create_child(a, req(5, 1)).unwrap();
    t.ipc_send(root, ca, b"hi").unwrap();
    let (_, dead) = t.reboot_child(root, ca).unwrap();
    assert_eq!(dead.killed.len(), 1);
    assert!(!dead.restart_host);
    let n = t.get(a).unwrap();
    assert_eq!(n.state(), VmState::Created);
    assert_eq!(n.queued_messages(), 0);
    assert_eq!(n.subtree().descendants, 0);
    assert_eq!(
        t.poll_event(root).unwrap().unwrap().0.kind,
        EventKind::ChildRebooted
    );
    assert_eq!(t.get(root).unwrap().subtree().descendants, 1);
}

fn edges(t: &mut VmTree) -> Vec<VmId> {
    let mut v = Vec::new();
    t.take_event_edges(|vm| v.push(vm));
    v
}

#[test]
fn event_edges_follow_the_queues_and_are_reported_once() {
    let (mut t, root) = root_tree();
    assert_eq!(edges(&mut t), vec![]);
    let mut r = with_quota(req(10, 1), big_quota(100, 2, 2));
    r.initial_state = VmState::Created;
    let (a, ca) = t.create_child(root, r).unwrap();
    t.start_child(root, ca).unwrap();
    t.stop_child(root, ca).unwrap();
    // Two events, one edge.
    assert_eq!(edges(&mut t), vec![root]);
    assert_eq!(edges(&mut t), vec![]);
    t.poll_event(root).unwrap().unwrap();
    t.poll_event(root).unwrap().unwrap();
    // Emptied: no report, but the next event is an edge again.
    assert_eq!(edges(&mut t), vec![]);
    assert_eq!(t.poll_event(root).unwrap(), None);
    assert_eq!(edges(&mut t), vec![]);
    // A message is an event for its receiver; taking it takes the event.
    t.ipc_send(a, 0, b"up").unwrap();
    t.ipc_send(root, ca, b"down").unwrap();
    let mut got = edges(&mut t);
    got.sort_by_key(|vm| *vm == root);
    assert_eq!(got, vec![a, root]);
    t.ipc_recv(a, None, 64, |_, _| Ok(())).unwrap();
    assert_eq!(edges(&mut t), vec![]);
    t.ipc_send(root, ca, b"again").unwrap();
    assert_eq!(edges(&mut t), vec![a]);
    // Emptied and filled again between two looks: no edge is missed or doubled.
    t.ipc_recv(a, None, 64, |_, _| Ok(())).unwrap();
    t.ipc_send(root, ca, b"more").unwrap();
    assert_eq!(edges(&mut t), vec![]);
    // A child that dies takes its messages (and the notices of them) with it; its
    // termination is an event, and the parent's queue was not empty: no edge.
    t.kill_child(root, ca, 7).unwrap();
    assert_eq!(edges(&mut t), vec![]);
    while t.poll_event(root).unwrap().is_some() {}
    assert_eq!(edges(&mut t), vec![]);
    t.create_child(root, req(5, 1)).unwrap();
    t.create_child(root, req(5, 1)).unwrap();
    let _ = edges(&mut t);
}

#[test]
fn root_exit_restarts_the_host() {
    let (mut t, root) = root_tree();
    t.create_child(root, req(10, 1)).unwrap();
    let r = t.kill_subtree(root, 0).unwrap();
    assert!(r.restart_host);
    assert_eq!(r.killed.len(), 2);
    assert!(t.is_empty());
    assert_eq!(t.root(), None);
}

#[test]
fn ipc_lanes_are_bounded_per_sender() {
    let (mut t, root) = root_tree();
    let (a, ca) = t.create_child(root, req(10, 1)).unwrap();
    let (b, cb) = t.create_child(root, req(10, 1)).unwrap();
    for _ in 0..limits::IPC_QUEUE_DEPTH {
        t.ipc_send(a, 0, b"x").unwrap();
    }
    assert_eq!(t.ipc_send(a, 0, b"x"), Err(SbiError::Failed));
    // b's lane is independent: a's full lane is invisible to b.
    t.ipc_send(b, 0, b"from b").unwrap();
    assert_eq!(t.ipc_send(a, 1, b"x"), Err(SbiError::InvalidParam));
    let big = vec![0u8; limits::IPC_MAX_MESSAGE + 1];
    assert_eq!(
        t.ipc_send(a, 0, big.as_slice()),
        Err(SbiError::InvalidParam)
    );
    // Receive from b exactly.
    let mut got = Vec::new();
    let r = t
        .ipc_recv(root, Some(cb), 100, |s, d| {
            got.extend_from_slice(d);
            assert_eq!(s, cb);
            Ok(())
        })
        .unwrap();
    assert_eq!(r, Some((cb, 6)));
    assert_eq!(got, b"from b");
    // Too small a buffer keeps the message.
    t.ipc_send(root, ca, b"hello").unwrap();
    assert_eq!(
        t.ipc_recv(a, None, 2, |_, _| Ok(())),
        Err(SbiError::BadRange)
    );
    assert_eq!(t.ipc_recv(a, None, 5, |_, _| Ok(())), Ok(Some((0, 5))));
    assert_eq!(t.ipc_recv(a, None, 5, |_, _| Ok(())), Ok(None));
    // A failed delivery keeps it too.
    t.ipc_send(root, ca, b"again").unwrap();
    assert_eq!(
        t.ipc_recv(a, None, 5, |_, _| Err(SbiError::InvalidAddress)),
        Err(SbiError::InvalidAddress)
    );
    assert_eq!(t.get(a).unwrap().queued_messages(), 1);
    // Killing a drops its queued messages at the root.
    t.kill_child(root, ca, 0).unwrap();
    assert_eq!(t.get(root).unwrap().queued_messages(), 0);
    let _ = b;
}

#[test]
fn event_queue_drops_oldest_and_counts() {
    let (mut t, root) = root_tree();
    let (_a, ca) = t.create_child(root, req(10, 1)).unwrap();
    for _ in 0..(limits::EVENT_QUEUE_DEPTH / 2 + 5) {
        t.stop_child(root, ca).unwrap();
        t.resume_child(root, ca).unwrap();
    }
    let (_, dropped) = t.poll_event(root).unwrap().unwrap();
    assert_eq!(dropped, 10);
    let (_, dropped) = t.poll_event(root).unwrap().unwrap();
    assert_eq!(dropped, 0);
}

#[test]
fn terminations_survive_chatty_children_and_bound_admission() {
    let (mut t, root) = root_tree();
    // Five children, four of them chatty: a full queue of their STOP/START events
    // must not push out the fifth's termination (issue 9, item 11).
    let cids: Vec<u64> = (0..5)
        .map(|_| t.create_child(root, req(10, 1)).unwrap().1)
        .collect();
    t.kill_child(root, cids[4], 42).unwrap();
    for _ in 0..limits::EVENT_QUEUE_DEPTH {
        for &c in &cids[..4] {
            t.stop_child(root, c).unwrap();
            t.resume_child(root, c).unwrap();
        }
    }
    let mut terminated = Vec::new();
    while let Some((e, _)) = t.poll_event(root).unwrap() {
        if let EventKind::ChildTerminated { exit_code } = e.kind {
            terminated.push((e.cid, exit_code));
        }
    }
    assert_eq!(terminated, [(cids[4], 42)]);
    // Unread terminations are never dropped, so they bound admission instead.
    for i in 0..limits::EVENT_QUEUE_DEPTH as u64 {
        let (_, c) = t.create_child(root, req(10, 1)).unwrap();
        t.kill_child(root, c, i).unwrap();
    }
    assert_eq!(
        t.create_child(root, req(10, 1)).err(),
        Some(SbiError::Denied)
    );
    let (e, dropped) = t.poll_event(root).unwrap().unwrap();
    assert_eq!(
        (e.kind, dropped),
        (EventKind::ChildTerminated { exit_code: 0 }, 0)
    );
    assert!(t.create_child(root, req(10, 1)).is_ok());
}

#[test]
fn consoles_follow_the_tree() {
    let (mut t, root) = root_tree();
    let (a, ca) = t.create_child(root, req(10, 1)).unwrap();
    assert_eq!(t.console_output(root, b"x"), Ok(ConsoleSink::Host));
    assert_eq!(t.console_input(root, &mut [0; 4]), Ok(None));
    let big = vec![b'a'; limits::CONSOLE_OUT_RING + 10];
    assert_eq!(t.console_output(a, &big), Ok(ConsoleSink::Buffered));
    t.console_output(a, b"END").unwrap();
    assert_eq!(t.get(a).unwrap().console_out().dropped(), 13);
    let mut buf = vec![0u8; limits::CONSOLE_OUT_RING];
    assert_eq!(
        t.console_read_child(root, ca, &mut buf),
        Ok(limits::CONSOLE_OUT_RING)
    );
    assert_eq!(&buf[buf.len() - 3..], b"END");
    let input = vec![b'i'; limits::CONSOLE_IN_BUFFER + 1];
    assert_eq!(
        t.console_write_child(root, ca, &input),
        Ok(limits::CONSOLE_IN_BUFFER)
    );
    assert_eq!(t.console_write_child(root, ca, b"x"), Ok(0));
    let mut two = [0u8; 2];
    assert_eq!(t.console_input(a, &mut two), Ok(Some(2)));
    assert_eq!(t.console_read_child(a, 1, &mut two), Err(SbiError::Denied));
}

#[test]
fn fork_bomb_is_stopped_by_the_descendant_quota() {
    let (mut t, root) = root_tree();
    let (bomb, _) = t
        .create_child(root, with_quota(req(10, 1), big_quota(10_000, 10, 5)))
        .unwrap();
    let mut forked = 0;
    // Every VM in the bomb's subtree forks as long as it can.
    let mut frontier = vec![bomb];
    let mut last_err = None;
    while let Some(v) = frontier.pop() {
        loop {
            let r = t
                .fork_request(v, false, t.info(v, 1).unwrap().own_table_pages)
                .unwrap();
            match t.create_child(v, r) {
                Ok((c, _)) => {
                    forked += 1;
                    frontier.push(c);
                }
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
    }
    assert_eq!(forked, 10);
    assert_eq!(last_err, Some(SbiError::Denied));
    let n = t.get(bomb).unwrap();
    assert!(n.subtree().descendants <= 10);
    assert!(n.subtree().pages <= n.quota().ram_pages);
    assert_eq!(t.get(root).unwrap().subtree().descendants, 11);
}

// ---------------------------------------------------------------- dispatch

/// A host whose VMs have flat byte arrays for RAM and which records what it was asked.
#[derive(Default)]
struct FakeHost {
    ram: BTreeMap<VmId, Vec<u8>>,
    log: Vec<String>,
    fail_next: bool,
    restarted: bool,
    /// Forked without a snapshot: REBOOT cannot put them back.
    no_snapshot: Vec<VmId>,
    /// A host that cannot FORK (the PMP fallback).
    no_fork: bool,
    /// Each spawned VM's virtio devices.
    devices: BTreeMap<VmId, crate::childdev::ChildDevices>,
    /// The VM and vCPU making the current call.
    caller: Option<VmId>,
    vcpu: usize,
    /// vCPUs asleep in a waiting IPC receive: (VM, vCPU) -> (ticket, claimed, answer).
    waits: BTreeMap<(VmId, usize), (u64, bool, Option<SbiRet>)>,
}

impl FakeHost {
    fn give_ram(&mut self, vm: VmId, pages: u64) {
        self.ram.insert(vm, vec![0; (pages * 4096) as usize]);
    }
    fn put(&mut self, vm: VmId, gpa: u64, data: &[u8]) {
        self.write_guest(vm, Gpa::new(gpa), data).unwrap();
    }
    fn get(&mut self, vm: VmId, gpa: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.read_guest(vm, Gpa::new(gpa), &mut b).unwrap();
        b
    }
    fn fail(&mut self) -> Result<(), SbiError> {
        if core::mem::take(&mut self.fail_next) {
            Err(SbiError::Failed)
        } else {
            Ok(())
        }
    }
}

impl ExtensionHost for FakeHost {
    fn check_range(&self, vm: VmId, gpa: Gpa, len: u64) -> Result<(), SbiError> {
        let size = self.ram.get(&vm).map_or(0, |r| r.len() as u64);
        match gpa.raw().checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(SbiError::InvalidAddress),
        }
    }
    fn read_guest(&mut self, vm: VmId, gpa: Gpa, buf: &mut [u8]) -> Result<(), SbiError> {
        self.check_range(vm, gpa, buf.len() as u64)?;
        let r = &self.ram[&vm];
        let s = gpa.raw() as usize;
        buf.copy_from_slice(&r[s..s + buf.len()]);
        Ok(())
    }
    fn write_guest(&mut self, vm: VmId, gpa: Gpa, data: &[u8]) -> Result<(), SbiError> {
        self.check_range(vm, gpa, data.len() as u64)?;
        let r = self.ram.get_mut(&vm).unwrap();
        let s = gpa.raw() as usize;
        r[s..s + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn facts(&self) -> HostFacts {
        HostFacts {
            hv_version: 1 << 16,
            features: diosix_abi::features::HW_VIRT,
            host_cores: 2,
            timer_freq_hz: 10_000_000,
        }
    }
    fn layout(&self, vm: VmId) -> super::dispatch::VmLayout {
        // The fake's RAM starts at 0 in every VM; the entry tells VMs apart.
        super::dispatch::VmLayout {
            ram: Gpa::new(0),
            entry: Some(Gpa::new(0x40 + vm.index() as u64)),
            dtb: None,
        }
    }
    fn yield_vcpu(&mut self, _vm: VmId) {
        self.log.push("yield".into());
    }
    fn fork_vm(
        &mut self,
        parent: VmId,
        child: VmId,
        _cid: u64,
        snapshot: bool,
    ) -> Result<(), SbiError> {
        if !snapshot {
            self.no_snapshot.push(child);
        }
        self.fail()?;
        let copy = self.ram[&parent].clone();
        self.ram.insert(child, copy);
        self.log.push("fork".into());
        Ok(())
    }
    fn spawn_vm(
        &mut self,
        _p: VmId,
        child: VmId,
        args: &SpawnArgs,
        devices: &[crate::childdev::DeviceDef],
    ) -> Result<(), SbiError> {
        self.fail()?;
        self.give_ram(child, args.ram_pages);
        self.devices
            .insert(child, crate::childdev::ChildDevices::new(devices)?);
        self.log.push("spawn".into());
        Ok(())
    }
    fn device_state_size(&self, vm: VmId, device: u64) -> Result<usize, SbiError> {
        self.devices
            .get(&vm)
            .and_then(|d| d.state_size_of(usize::try_from(device).ok()?))
            .ok_or(SbiError::InvalidParam)
    }
    fn take_device_state(
        &mut self,
        vm: VmId,
        device: u64,
    ) -> Result<(diosix_abi::DeviceState, Vec<diosix_abi::QueueState>), SbiError> {
        let d = self.devices.get_mut(&vm).ok_or(SbiError::InvalidParam)?;
        d.take_state(usize::try_from(device).map_err(|_| SbiError::InvalidParam)?)
    }
    fn raise_device(&mut self, vm: VmId, device: u64, what: u64) -> Result<(), SbiError> {
        let d = self.devices.get_mut(&vm).ok_or(SbiError::InvalidParam)?;
        d.raise(
            usize::try_from(device).map_err(|_| SbiError::InvalidParam)?,
            what,
        )?;
        Ok(())
    }
    fn start_vm(&mut self, vm: VmId, entry: Gpa, _dtb: Gpa) -> Result<(), SbiError> {
        self.check_range(vm, entry, 4)?;
        self.log.push("start".into());
        Ok(())
    }
    fn stop_vm(&mut self, _vm: VmId) {
        self.log.push("stop".into());
    }
    fn resume_vm(&mut self, _vm: VmId) {
        self.log.push("resume".into());
    }
    fn can_fork(&self) -> bool {
        !self.no_fork
    }
    fn can_reboot(&self, vm: VmId) -> bool {
        !self.no_snapshot.contains(&vm)
    }
    fn reboot_vm(&mut self, _vm: VmId) -> Result<(), SbiError> {
        self.fail()?;
        self.log.push("reboot".into());
        Ok(())
    }
    fn exec_vm(&mut self, vm: VmId, args: &SpawnArgs, _trusted: bool) -> Result<(), SbiError> {
        self.fail()?;
        self.give_ram(vm, args.ram_pages);
        self.log.push("exec".into());
        Ok(())
    }
    fn release_vm(&mut self, killed: &KilledVm) {
        self.ram.remove(&killed.id);
        self.log.push("release".into());
    }
    fn revoke_hw_access(&mut self, _vm: VmId, _parent: Option<VmId>) {
        self.log.push("revoke".into());
    }
    fn map_child_mem(
        &mut self,
        _p: VmId,
        child: VmId,
        child_gpa: Gpa,
        _pg: Gpa,
        size: u64,
        _perms: u64,
    ) -> Result<(), SbiError> {
        self.check_range(child, child_gpa, size)?;
        self.log.push("map".into());
        Ok(())
    }
    fn unmap_child_mem(&mut self, _p: VmId, _g: Gpa, _s: u64) -> Result<(), SbiError> {
        self.log.push("unmap".into());
        Ok(())
    }
    fn map_host_mmio(
        &mut self,
        _vm: VmId,
        _parent: Option<VmId>,
        _h: Hpa,
        _g: Gpa,
        _s: u64,
    ) -> Result<(), SbiError> {
        self.log.push("mmio".into());
        Ok(())
    }
    fn route_irq(&mut self, _vm: VmId, _parent: Option<VmId>, irq: u64) -> Result<(), SbiError> {
        if irq > 1023 {
            return Err(SbiError::InvalidParam);
        }
        self.log.push("irq".into());
        Ok(())
    }
    fn release_device(
        &mut self,
        _vm: VmId,
        _parent: Option<VmId>,
        named: crate::devices::DeviceRef,
    ) -> Result<(), SbiError> {
        self.log.push(format!("release_device {named:?}"));
        Ok(())
    }
    fn restart_host(&mut self) {
        self.restarted = true;
    }
    fn caller_vcpu(&self) -> usize {
        self.vcpu
    }
    fn wait_for_message(&mut self, ticket: u64) {
        let vm = self.caller.expect("a call in progress");
        self.waits.insert((vm, self.vcpu), (ticket, false, None));
    }
    fn claim_ipc_waiter(&mut self, vm: VmId, vcpu: usize, ticket: u64) -> bool {
        match self.waits.get_mut(&(vm, vcpu)) {
            Some((t, claimed, _)) if *t == ticket && !*claimed => {
                *claimed = true;
                true
            }
            _ => false,
        }
    }
    fn end_ipc_wait(&mut self, vm: VmId, vcpu: usize, ret: SbiRet) {
        let w = self.waits.get_mut(&(vm, vcpu)).expect("a claimed wait");
        assert!(w.1, "ended without a claim");
        w.2 = Some(ret);
    }
}

impl FakeHost {
    /// An interrupt ends `vm`'s vCPU `vcpu`'s wait (if no sender has claimed it).
    fn interrupt(&mut self, vm: VmId, vcpu: usize) -> bool {
        match self.waits.get(&(vm, vcpu)) {
            Some((_, false, _)) => self.waits.remove(&(vm, vcpu)).is_some(),
            _ => false,
        }
    }
    /// The answer a woken vCPU resumes with, if a delivery ended its wait.
    fn answer(&mut self, vm: VmId, vcpu: usize) -> Option<SbiRet> {
        match self.waits.get(&(vm, vcpu)) {
            Some((_, true, Some(r))) => {
                let r = *r;
                self.waits.remove(&(vm, vcpu));
                Some(r)
            }
            _ => None,
        }
    }
}

struct World {
    t: VmTree,
    h: FakeHost,
    root: VmId,
}

impl World {
    fn new() -> Self {
        let (t, root) = VmTree::new(
            Quota::everything(100_000, 64),
            Usage {
                ram_pages: 64,
                table_pages: 3,
                vcpus: 1,
            },
            10,
        )
        .unwrap();
        let mut h = FakeHost::default();
        h.give_ram(root, 64);
        Self { t, h, root }
    }
    fn call(&mut self, vm: VmId, fid: usize, args: &[usize]) -> SbiRet {
        let mut a = [0usize; 6];
        a[..args.len()].copy_from_slice(args);
        self.h.caller = Some(vm);
        let r = handle_diosix_call(&mut self.t, vm, fid, a, &mut self.h);
        self.h.caller = None;
        r
    }
    fn ok(&mut self, vm: VmId, fid: usize, args: &[usize]) -> usize {
        let r = self.call(vm, fid, args);
        assert_eq!(r.error, 0, "fid {fid} {args:?}");
        r.value
    }
    fn err(&mut self, vm: VmId, fid: usize, args: &[usize]) -> isize {
        let r = self.call(vm, fid, args);
        assert_eq!(r.value, 0, "a refused call leaves a1 = 0");
        r.error
    }
    fn child(&self, parent: VmId, cid: u64) -> VmId {
        self.t.resolve_child(parent, cid).unwrap()
    }
    fn spawn_args(&self) -> SpawnArgs {
        SpawnArgs {
            size: SpawnArgs::SIZE as u32,
            flags: 0,
            cid: 0,
            image_gpa: 0x1000,
            image_size: 0x2000,
            dtb_gpa: 0,
            dtb_size: 0,
            ram_pages: 32,
            vcpus: 1,
            priority: 5,
            quota_ram_pages: 0,
            quota_vcpus: 0,
            quota_max_priority: 0,
            quota_max_depth: 0,
            quota_max_descendants: 0,
            ..SpawnArgs::default()
        }
    }
    fn spawn(&mut self, by: VmId, s: &SpawnArgs) -> SbiRet {
        self.h.put(by, 0x8000, &s.to_le_bytes());
        self.call(by, ext::FID_SPAWN, &[0x8000])
    }
    fn set_quota(&mut self, by: VmId, q: &QuotaArgs) -> SbiRet {
        self.h.put(by, 0x9000, &q.to_le_bytes());
        self.call(by, ext::FID_SET_QUOTA, &[0x9000])
    }
}

fn quota_args(cid: u64) -> QuotaArgs {
    QuotaArgs {
        size: QuotaArgs::SIZE as u32,
        cid,
        ..QuotaArgs::default()
    }
}

#[test]
fn unknown_and_reserved_functions() {
    let mut w = World::new();
    let root = w.root;
    for fid in [11, 12, ext::FID_COUNT, usize::MAX] {
        assert_eq!(w.err(root, fid, &[]), diosix_abi::error::NOT_SUPPORTED);
    }
    assert_eq!(w.ok(root, ext::FID_YIELD, &[]), 0);
}

/// Every event `vm` has waiting, as (kind, cid, exit code).
fn drain_events(w: &mut World, vm: VmId) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    while w.ok(vm, ext::FID_POLL_EVENT, &[0x100, Event::SIZE]) == 1 {
        let e = Event::from_le_bytes(&w.h.get(vm, 0x100, Event::SIZE)).unwrap();
        out.push((e.kind, e.cid, e.exit_code));
    }
    out
}

#[test]
fn fork_on_a_host_that_cannot_is_not_supported_and_charges_nothing() {
    let mut w = World::new();
    let root = w.root;
    w.h.no_fork = true;
    let before = w.t.get(root).map(|n| n.subtree());
    // Bad flags are still INVALID_PARAM first.
    assert_eq!(w.err(root, ext::FID_FORK, &[1 << 40]), E_INVALID_PARAM);
    assert_eq!(w.err(root, ext::FID_FORK, &[0]), E_NOT_SUPPORTED);
    assert_eq!(
        w.err(root, ext::FID_FORK, &[flags::FORK_NO_SNAPSHOT as usize]),
        E_NOT_SUPPORTED
    );
    assert_eq!(w.t.get(root).map(|n| n.subtree()), before);
    assert!(!w.h.log.iter().any(|l| l.starts_with("fork")));
}

#[test]
fn srst_reboot_of_a_child() {
    let mut w = World::new();
    let root = w.root;
    let with = w.ok(root, ext::FID_FORK, &[0]) as u64;
    let without = w.ok(root, ext::FID_FORK, &[flags::FORK_NO_SNAPSHOT as usize]) as u64;
    drain_events(&mut w, root);
    let c = w.child(root, with);
    super::dispatch::reboot_self(&mut w.t, c, &mut w.h);
    assert!(w.t.is_alive(c));
    assert_eq!(w.h.log.last().map(String::as_str), Some("reboot"));
    assert_eq!(
        drain_events(&mut w, root),
        vec![(event::CHILD_REBOOTED, with, 0)]
    );
    // No snapshot: the reboot ends it, as a shutdown would.
    let c = w.child(root, without);
    super::dispatch::reboot_self(&mut w.t, c, &mut w.h);
    assert!(!w.t.is_alive(c));
    assert_eq!(
        drain_events(&mut w, root),
        vec![(
            event::CHILD_TERMINATED,
            without,
            diosix_abi::exit_code::SHUTDOWN
        )]
    );
    // A failed restore is a fatal fault.
    let c = w.child(root, with);
    w.h.fail_next = true;
    super::dispatch::reboot_self(&mut w.t, c, &mut w.h);
    assert!(!w.t.is_alive(c));
    assert_eq!(
        drain_events(&mut w, root).last().copied(),
        Some((
            event::CHILD_TERMINATED,
            with,
            diosix_abi::exit_code::FATAL_FAULT
        ))
    );
}

#[test]
fn fork_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    assert_eq!(w.err(root, ext::FID_FORK, &[4]), E_INVALID_PARAM);
    assert_eq!(w.err(root, ext::FID_FORK, &[1 << 63]), E_INVALID_PARAM);
    let cid = w.ok(root, ext::FID_FORK, &[0]);
    assert_eq!(cid, 2);
    let c = w.child(root, 2);
    assert!(w.t.get(c).unwrap().trusted());
    // Its own RAM and tables, plus the snapshot's worst case (a RAM's worth and tables).
    let info = w.t.info(root, 2).unwrap();
    let tables = crate::gstage::table_pages_for(64);
    assert_eq!(
        (info.own_ram_pages, info.own_table_pages),
        (64, tables + 64 + tables)
    );
    w.ok(root, ext::FID_REBOOT, &[2]);
    // The child has exactly what it holds: it cannot fork.
    assert_eq!(w.err(c, ext::FID_FORK, &[0]), E_DENIED);
    let cid = w.ok(root, ext::FID_FORK, &[flags::FORK_UNTRUSTED as usize]);
    assert!(!w.t.get(w.child(root, cid as u64)).unwrap().trusted());
    // Host failure: nothing stays charged, the CID is burnt.
    let before = w.t.get(root).unwrap().subtree();
    w.h.fail_next = true;
    assert_eq!(w.err(root, ext::FID_FORK, &[0]), diosix_abi::error::FAILED);
    assert_eq!(w.t.get(root).unwrap().subtree(), before);
    assert_eq!(w.ok(root, ext::FID_FORK, &[0]), 5);
    // Without a snapshot: charged its tables only, and REBOOT is refused, changing
    // nothing.
    let cid = w.ok(root, ext::FID_FORK, &[flags::FORK_NO_SNAPSHOT as usize]);
    let info = w.t.info(root, cid as u64).unwrap();
    assert_eq!((info.own_ram_pages, info.own_table_pages), (64, tables));
    let log = w.h.log.len();
    assert_eq!(
        w.err(root, ext::FID_REBOOT, &[cid]),
        diosix_abi::error::NOT_SUPPORTED
    );
    assert_eq!(w.h.log.len(), log);
    assert!(w.t.resolve_child(root, cid as u64).is_ok());
}

#[test]
fn spawn_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    let s = w.spawn_args();
    let r = w.spawn(root, &s);
    assert_eq!(r, SbiRet::ok(2));
    // Bad struct address, size, flags.
    assert_eq!(w.err(root, ext::FID_SPAWN, &[0x8004]), E_INVALID_ADDRESS);
    assert_eq!(
        w.err(root, ext::FID_SPAWN, &[64 * 4096 - 8]),
        E_INVALID_ADDRESS
    );
    let mut b = s;
    b.size = 8;
    assert_eq!(w.spawn(root, &b).error, E_INVALID_PARAM);
    let mut b = s;
    b.flags = 0x80;
    assert_eq!(w.spawn(root, &b).error, E_INVALID_PARAM);
    // CID of a non-child.
    let mut b = s;
    b.cid = 9;
    assert_eq!(w.spawn(root, &b).error, E_INVALID_PARAM);
    let mut b = s;
    b.cid = 1;
    assert_eq!(w.spawn(root, &b).error, E_DENIED);
    // Values.
    for f in [
        |a: &mut SpawnArgs| a.ram_pages = 0,
        |a: &mut SpawnArgs| a.vcpus = 0,
        |a: &mut SpawnArgs| a.priority = 0,
        |a: &mut SpawnArgs| a.ram_pages = u64::MAX,
        |a: &mut SpawnArgs| a.image_size = 33 * 4096,
        |a: &mut SpawnArgs| a.dtb_gpa = 0x100,
        |a: &mut SpawnArgs| a.quota_ram_pages = 1,
    ] {
        let mut b = s;
        f(&mut b);
        assert_eq!(w.spawn(root, &b).error, E_INVALID_PARAM, "{b:?}");
    }
    // Image outside caller RAM, or overflowing.
    let mut b = s;
    b.image_gpa = 63 * 4096;
    assert_eq!(w.spawn(root, &b).error, E_INVALID_ADDRESS);
    let mut b = s;
    b.image_gpa = u64::MAX - 10;
    assert_eq!(w.spawn(root, &b).error, E_INVALID_ADDRESS);
    // Trusted child from an untrusted VM.
    let child = w.child(root, 2);
    w.ok(root, ext::FID_DROP_CHILD_TRUST, &[2]);
    let mut b = s;
    b.flags = flags::SPAWN_TRUSTED;
    w.h.put(child, 0x8000, &b.to_le_bytes());
    assert_eq!(w.err(child, ext::FID_SPAWN, &[0x8000]), E_DENIED);
    // Respawn CID 2 keeps the CID, replaces the VM.
    let mut b = s;
    b.cid = 2;
    b.ram_pages = 16;
    assert_eq!(w.spawn(root, &b), SbiRet::ok(2));
    assert!(!w.t.is_alive(child));
    assert_eq!(w.t.get(w.child(root, 2)).unwrap().own().ram_pages, 16);
    // Paused spawn + MAP_CHILD_MEM + START.
    let mut b = s;
    b.flags = flags::SPAWN_PAUSED;
    let cid = w.spawn(root, &b).value;
    assert_eq!(cid, 3);
    let c = w.child(root, 3);
    assert_eq!(w.t.get(c).unwrap().state(), VmState::Created);
    assert_eq!(
        w.err(root, ext::FID_RESUME, &[3]),
        diosix_abi::error::INVALID_STATE
    );
    w.ok(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 0x1000, 0x1000, 3]);
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 0x1000, 0x1000, 0]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 0x1000, 0x1001, 1]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 8, 0x1000, 0x1000, 1]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 64 * 4096, 0x1000, 1]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 32 * 4096, 0, 0x1000, 1]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[1, 0, 0, 0x1000, 1]),
        E_DENIED
    );
    // Write-only is reserved; unknown permission bits are refused.
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 0x1000, 0x1000, 2]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 0x1000, 0x1000, 8]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_START, &[3, 32 * 4096, 0]),
        E_INVALID_ADDRESS
    );
    w.ok(root, ext::FID_START, &[3, 0, 0]);
    assert_eq!(
        w.err(root, ext::FID_START, &[3, 0, 0]),
        diosix_abi::error::ALREADY_STARTED
    );
    // A started child's memory is its own.
    assert_eq!(
        w.err(root, ext::FID_MAP_CHILD_MEM, &[3, 0, 0x1000, 0x1000, 3]),
        diosix_abi::error::ALREADY_STARTED
    );
    w.ok(root, ext::FID_UNMAP_CHILD_MEM, &[0x1000, 0x1000]);
    assert_eq!(
        w.err(root, ext::FID_UNMAP_CHILD_MEM, &[0x1000, 0]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_UNMAP_CHILD_MEM, &[0x1001, 0x1000]),
        E_INVALID_ADDRESS
    );
    // Host failure rolls back.
    let before = w.t.get(root).unwrap().subtree();
    w.h.fail_next = true;
    assert_eq!(w.spawn(root, &s).error, diosix_abi::error::FAILED);
    assert_eq!(w.t.get(root).unwrap().subtree(), before);
}

#[test]
fn info_and_hv_info_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    w.ok(root, ext::FID_GET_INFO, &[0x100, VmInfo::SIZE]);
    let info = VmInfo::from_le_bytes(&w.h.get(root, 0x100, VmInfo::SIZE)).unwrap();
    assert_eq!(info.size as usize, VmInfo::SIZE);
    assert_eq!(info.flags, flags::INFO_TRUSTED | flags::INFO_ROOT);
    assert_eq!(info.child_count, 1);
    // The clone: RAM, tables and the snapshot's RAM and tables.
    let tables = crate::gstage::table_pages_for(64);
    assert_eq!(info.ram_pages_used, 67 + 64 + tables + 64 + tables);
    assert_eq!(info.descendants_used, 1);
    assert_eq!(info.depth_used, 1);
    assert_eq!(
        w.err(root, ext::FID_GET_INFO, &[0x100, VmInfo::SIZE - 1]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_GET_INFO, &[0x104, VmInfo::SIZE]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, ext::FID_GET_INFO, &[usize::MAX - 7, VmInfo::SIZE]),
        E_INVALID_ADDRESS
    );
    w.ok(root, ext::FID_GET_CHILD_INFO, &[2, 0x200, 4096]);
    let ci = VmInfo::from_le_bytes(&w.h.get(root, 0x200, VmInfo::SIZE)).unwrap();
    assert_eq!(
        (ci.cid, ci.flags, ci.state),
        (2, flags::INFO_TRUSTED, diosix_abi::state::RUNNING)
    );
    // Where the child's RAM is and where it boots come from the host, for the child.
    let c = w.child(root, 2);
    assert_eq!(
        (ci.ram_gpa, ci.entry_gpa, ci.dtb_gpa),
        (0, 0x40 + u64::from(c.index()), 0)
    );
    assert_eq!(info.entry_gpa, 0x40 + u64::from(root.index()));
    assert_eq!(
        w.err(c, ext::FID_GET_CHILD_INFO, &[0, 0x200, 4096]),
        E_DENIED
    );
    assert_eq!(
        w.err(c, ext::FID_GET_CHILD_INFO, &[3, 0x200, 4096]),
        E_INVALID_PARAM
    );
    w.ok(c, ext::FID_GET_HV_INFO, &[0x300, HvInfo::SIZE]);
    let hv = HvInfo::from_le_bytes(&w.h.get(c, 0x300, HvInfo::SIZE)).unwrap();
    assert_eq!(hv.abi_version, ext::ABI_VERSION);
    assert_eq!(hv.ram_total_pages, 64 + tables + 64 + tables);
    assert_eq!(hv.ram_free_pages, 0);
    assert_eq!(w.err(c, ext::FID_GET_HV_INFO, &[0x300, 8]), E_INVALID_PARAM);
    // LIST_CHILDREN
    w.ok(root, ext::FID_FORK, &[0]);
    assert_eq!(w.ok(root, ext::FID_LIST_CHILDREN, &[0x400, 1]), 2);
    assert_eq!(
        w.h.get(root, 0x400, 16),
        [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(w.ok(root, ext::FID_LIST_CHILDREN, &[0, 0]), 2);
    assert_eq!(
        w.err(root, ext::FID_LIST_CHILDREN, &[0x400, usize::MAX]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_LIST_CHILDREN, &[0x401, 1]),
        E_INVALID_ADDRESS
    );
}

#[test]
fn set_quota_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 2);
    let mut q = quota_args(2);
    q.ram_pages = 1000;
    q.max_descendants = 5;
    q.max_depth = 2;
    assert_eq!(w.set_quota(root, &q), SbiRet::ok(0));
    assert_eq!(w.t.get(c).unwrap().quota().max_descendants, 5);
    // Explicit zero via flag; plain zero means unchanged.
    let mut q = quota_args(1);
    q.flags = flags::QUOTA_SET_DESCENDANTS;
    assert_eq!(w.set_quota(c, &q), SbiRet::ok(0));
    assert_eq!(w.t.get(c).unwrap().quota().max_descendants, 0);
    assert_eq!(w.t.get(c).unwrap().quota().max_depth, 2);
    let mut q = quota_args(1);
    q.max_descendants = 1;
    assert_eq!(w.set_quota(c, &q).error, E_DENIED);
    let mut q = quota_args(0);
    q.vcpus = 1;
    assert_eq!(w.set_quota(c, &q).error, E_DENIED);
    let mut q = quota_args(2);
    q.size = 39;
    assert_eq!(w.set_quota(root, &q).error, E_INVALID_PARAM);
    let mut q = quota_args(2);
    q.flags = 1 << 9;
    assert_eq!(w.set_quota(root, &q).error, E_INVALID_PARAM);
    let mut q = quota_args(2);
    q.vcpus = limits::MAX_VCPUS + 1;
    assert_eq!(w.set_quota(root, &q).error, E_INVALID_PARAM);
    let mut q = quota_args(2);
    q.ram_pages = 1;
    assert_eq!(
        w.set_quota(root, &q).error,
        diosix_abi::error::INVALID_STATE
    );
}

#[test]
fn lifecycle_and_exit_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 2);
    w.ok(root, ext::FID_STOP, &[2]);
    assert_eq!(
        w.err(root, ext::FID_STOP, &[2]),
        diosix_abi::error::ALREADY_STOPPED
    );
    w.ok(root, ext::FID_RESUME, &[2]);
    assert_eq!(
        w.err(root, ext::FID_RESUME, &[2]),
        diosix_abi::error::ALREADY_STARTED
    );
    // Self through the child path; parent; strangers.
    for fid in [
        ext::FID_STOP,
        ext::FID_RESUME,
        ext::FID_REBOOT,
        ext::FID_START,
    ] {
        assert_eq!(w.err(c, fid, &[1]), E_DENIED);
        assert_eq!(w.err(c, fid, &[0]), E_DENIED);
        assert_eq!(w.err(c, fid, &[2]), E_INVALID_PARAM);
    }
    assert_eq!(w.err(c, ext::FID_EXIT, &[0, 0]), E_DENIED);
    assert_eq!(w.err(root, ext::FID_EXIT, &[0, 0]), E_INVALID_PARAM);
    w.ok(root, ext::FID_REBOOT, &[2]);
    // Reboot failure by the host kills the child.
    w.h.fail_next = true;
    assert_eq!(
        w.err(root, ext::FID_REBOOT, &[2]),
        diosix_abi::error::FAILED
    );
    assert!(!w.t.is_alive(c));
    // Exit self with a code; the parent sees it.
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 3);
    w.call(c, ext::FID_EXIT, &[1, 42]);
    assert!(!w.t.is_alive(c));
    assert_eq!(w.err(c, ext::FID_YIELD, &[]), diosix_abi::error::FAILED);
    let mut last = None;
    while w.ok(root, ext::FID_POLL_EVENT, &[0x100, Event::SIZE]) == 1 {
        last = Event::from_le_bytes(&w.h.get(root, 0x100, Event::SIZE));
    }
    let e = last.unwrap();
    assert_eq!(
        (e.kind, e.cid, e.exit_code),
        (event::CHILD_TERMINATED, 3, 42)
    );
    assert_eq!(
        w.err(root, ext::FID_POLL_EVENT, &[0x100, 4]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_POLL_EVENT, &[64 * 4096, 32]),
        E_INVALID_ADDRESS
    );
    // Kill a child: its page returns.
    w.ok(root, ext::FID_FORK, &[0]);
    w.ok(root, ext::FID_EXIT, &[4, 9]);
    assert_eq!(w.t.get(root).unwrap().subtree().pages, 67);
    // Root exit restarts the host.
    w.call(root, ext::FID_EXIT, &[1, 0]);
    assert!(w.h.restarted);
    assert!(w.t.is_empty());
    assert!(w.h.ram.is_empty());
}

#[test]
fn ipc_and_console_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 2);
    w.h.put(c, 0x2000, b"ping");
    let send = IpcSendArgs {
        size: IpcSendArgs::SIZE as u32,
        flags: 0,
        cid: 0,
        data_gpa: 0x2000,
        len: 4,
    };
    w.h.put(c, 0x100, &send.to_le_bytes());
    w.ok(c, ext::FID_IPC_SEND, &[0x100]);
    // Bad sends.
    for (f, code) in [
        (
            (|s: &mut IpcSendArgs| s.len = 4097) as fn(&mut IpcSendArgs),
            E_INVALID_PARAM,
        ),
        (|s| s.cid = 1, E_INVALID_PARAM),
        (|s| s.cid = 2, E_INVALID_PARAM),
        (|s| s.flags = 1, E_INVALID_PARAM),
        (|s| s.size = 8, E_INVALID_PARAM),
        (|s| s.data_gpa = u64::MAX - 1, E_INVALID_ADDRESS),
    ] {
        let mut s = send;
        f(&mut s);
        w.h.put(c, 0x100, &s.to_le_bytes());
        assert_eq!(w.err(c, ext::FID_IPC_SEND, &[0x100]), code, "{s:?}");
    }
    let recv = IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: 0,
        cid: 0,
        buf_gpa: 0x3000,
        max_len: 64,
        out_len: 0,
    };
    w.h.put(root, 0x100, &recv.to_le_bytes());
    assert_eq!(w.ok(root, ext::FID_IPC_RECV, &[0x100]), 1);
    let back = IpcRecvArgs::from_le_bytes(&w.h.get(root, 0x100, IpcRecvArgs::SIZE)).unwrap();
    assert_eq!((back.cid, back.out_len), (2, 4));
    assert_eq!(w.h.get(root, 0x3000, 4), b"ping");
    assert_eq!(w.ok(root, ext::FID_IPC_RECV, &[0x100]), 0);
    // Exact receive from parent (0) for the root: no parent.
    let mut r = recv;
    r.flags = flags::IPC_RECV_EXACT;
    w.h.put(root, 0x100, &r.to_le_bytes());
    assert_eq!(w.err(root, ext::FID_IPC_RECV, &[0x100]), E_INVALID_PARAM);
    let mut r = recv;
    r.max_len = u64::MAX;
    w.h.put(root, 0x100, &r.to_le_bytes());
    assert_eq!(w.err(root, ext::FID_IPC_RECV, &[0x100]), E_INVALID_ADDRESS);
    // Console.
    w.t.console_output(c, b"boot ok").unwrap();
    assert_eq!(w.ok(root, ext::FID_CONSOLE_READ, &[2, 0x4000, 100]), 7);
    assert_eq!(w.h.get(root, 0x4000, 7), b"boot ok");
    assert_eq!(
        w.err(root, ext::FID_CONSOLE_READ, &[2, 0x4000, 4097]),
        E_INVALID_PARAM
    );
    assert_eq!(
        w.err(root, ext::FID_CONSOLE_READ, &[2, 64 * 4096, 1]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, ext::FID_CONSOLE_READ, &[1, 0x4000, 1]),
        E_DENIED
    );
    w.h.put(root, 0x5000, b"ls\n");
    assert_eq!(w.ok(root, ext::FID_CONSOLE_WRITE, &[2, 0x5000, 3]), 3);
    let mut b = [0u8; 3];
    assert_eq!(w.t.console_input(c, &mut b), Ok(Some(3)));
    assert_eq!(&b, b"ls\n");
}

/// A parent (the Root VM) and its forked child (CID 2).
fn waiting_world() -> (World, VmId, VmId) {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 2);
    (w, root, c)
}

/// A receive's arguments at 0x100 in `vm`: buffer at 0x3000, `max_len` 64, flags
/// `fl`, filter `cid`.
fn put_recv(w: &mut World, vm: VmId, fl: u32, cid: u64) {
    let recv = IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: fl,
        cid,
        buf_gpa: 0x3000,
        max_len: 64,
        out_len: 0,
    };
    w.h.put(vm, 0x100, &recv.to_le_bytes());
}

/// IPC_SEND of `msg` from `vm` to its peer `to` (arguments at 0x200, data at 0x2000).
fn send_from(w: &mut World, vm: VmId, to: u64, msg: &[u8]) -> SbiRet {
    w.h.put(vm, 0x2000, msg);
    let send = IpcSendArgs {
        size: IpcSendArgs::SIZE as u32,
        flags: 0,
        cid: to,
        data_gpa: 0x2000,
        len: msg.len() as u64,
    };
    w.h.put(vm, 0x200, &send.to_le_bytes());
    w.call(vm, ext::FID_IPC_SEND, &[0x200])
}

#[test]
fn a_waiting_receive_takes_the_message_straight_from_its_sender() {
    let (mut w, root, c) = waiting_world();
    // The child sleeps waiting for its parent: nothing yet, a1 = 0, one record.
    put_recv(&mut w, c, flags::IPC_RECV_EXACT | flags::IPC_RECV_WAIT, 0);
    w.h.vcpu = 0;
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 0);
    assert_eq!(w.t.ipc_waiters(c).len(), 1);
    assert!(w.h.waits.contains_key(&(c, 0)));
    // The parent's send goes into the child's buffer: nothing queued, no event.
    assert_eq!(send_from(&mut w, root, 2, b"hello"), SbiRet::ok(0));
    assert_eq!(w.h.answer(c, 0), Some(SbiRet::ok(1)));
    assert_eq!(w.h.get(c, 0x3000, 5), b"hello");
    let back = IpcRecvArgs::from_le_bytes(&w.h.get(c, 0x100, IpcRecvArgs::SIZE)).unwrap();
    assert_eq!((back.cid, back.out_len, back.max_len), (0, 5, 64));
    assert_eq!(w.t.get(c).unwrap().queued_messages(), 0);
    assert_eq!(w.t.get(c).unwrap().pending_events(), 0);
    assert!(w.t.ipc_waiters(c).is_empty());
    // The next message, with nobody waiting, is queued as before.
    assert_eq!(send_from(&mut w, root, 2, b"again"), SbiRet::ok(0));
    assert_eq!(w.t.get(c).unwrap().queued_messages(), 1);
    // A waiting receive that finds a message takes it at once, and does not sleep.
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 1);
    assert!(w.h.waits.is_empty() && w.t.ipc_waiters(c).is_empty());
}

#[test]
fn a_wait_an_interrupt_ended_gets_no_message_and_loses_none() {
    let (mut w, root, c) = waiting_world();
    put_recv(&mut w, c, flags::IPC_RECV_WAIT, 0);
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 0);
    assert!(w.h.interrupt(c, 0));
    // The record is stale: the claim fails, the message is queued with its event.
    assert_eq!(send_from(&mut w, root, 2, b"late"), SbiRet::ok(0));
    assert_eq!(w.t.get(c).unwrap().queued_messages(), 1);
    assert_eq!(w.t.get(c).unwrap().pending_events(), 1);
    assert!(w.t.ipc_waiters(c).is_empty());
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 1);
    assert_eq!(w.h.get(c, 0x3000, 4), b"late");
}

#[test]
fn a_waiting_receive_takes_only_what_its_filter_and_buffer_allow() {
    let (mut w, root, c) = waiting_world();
    // The parent waits for child 3 only (a second child): child 2's message queues.
    w.ok(root, ext::FID_FORK, &[0]);
    put_recv(
        &mut w,
        root,
        flags::IPC_RECV_EXACT | flags::IPC_RECV_WAIT,
        3,
    );
    assert_eq!(w.ok(root, ext::FID_IPC_RECV, &[0x100]), 0);
    assert_eq!(send_from(&mut w, c, 0, b"from two"), SbiRet::ok(0));
    assert_eq!(w.t.get(root).unwrap().queued_messages(), 1);
    assert_eq!(w.h.answer(root, 0), None);
    // Child 3's message is delivered, named by its CID.
    let c3 = w.child(root, 3);
    w.h.give_ram(c3, 64);
    assert_eq!(send_from(&mut w, c3, 0, b"three"), SbiRet::ok(0));
    assert_eq!(w.h.answer(root, 0), Some(SbiRet::ok(1)));
    let back = IpcRecvArgs::from_le_bytes(&w.h.get(root, 0x100, IpcRecvArgs::SIZE)).unwrap();
    assert_eq!((back.cid, back.out_len), (3, 5));
    // Too long for the waiting buffer: queued, and the wait ends with BAD_RANGE.
    put_recv(&mut w, c, flags::IPC_RECV_WAIT, 0);
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 0);
    assert_eq!(send_from(&mut w, root, 2, &[7u8; 65]), SbiRet::ok(0));
    assert_eq!(w.h.answer(c, 0), Some(SbiRet::error(SbiError::BadRange)));
    assert_eq!(w.t.get(c).unwrap().queued_messages(), 1);
    // Undefined flags are refused, and put nobody to sleep.
    put_recv(&mut w, c, 4, 0);
    assert_eq!(w.err(c, ext::FID_IPC_RECV, &[0x100]), E_INVALID_PARAM);
    assert!(w.t.ipc_waiters(c).is_empty());
}

#[test]
fn one_record_per_vcpu_and_the_oldest_wait_is_served_first() {
    let (mut w, root, c) = waiting_world();
    put_recv(&mut w, c, flags::IPC_RECV_WAIT, 0);
    for vcpu in [1, 0, 1] {
        w.h.vcpu = vcpu;
        assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 0);
    }
    // vCPU 1's second wait replaced its first: two records, vCPU 0's the oldest.
    let order: Vec<usize> = w.t.ipc_waiters(c).iter().map(|x| x.vcpu).collect();
    assert_eq!(order, [0, 1]);
    assert_eq!(send_from(&mut w, root, 2, b"a"), SbiRet::ok(0));
    assert_eq!(w.h.answer(c, 0), Some(SbiRet::ok(1)));
    // vCPU 1's record of its first wait is gone, its current one is served next.
    assert_eq!(send_from(&mut w, root, 2, b"b"), SbiRet::ok(0));
    assert_eq!(w.h.answer(c, 1), Some(SbiRet::ok(1)));
    assert!(w.t.ipc_waiters(c).is_empty());
}

#[test]
fn a_wait_for_a_child_ends_when_the_child_dies_and_a_reboot_forgets_waits() {
    let (mut w, root, _child) = waiting_world();
    put_recv(
        &mut w,
        root,
        flags::IPC_RECV_EXACT | flags::IPC_RECV_WAIT,
        2,
    );
    assert_eq!(w.ok(root, ext::FID_IPC_RECV, &[0x100]), 0);
    w.ok(root, ext::FID_EXIT, &[2, 0]);
    assert_eq!(
        w.h.answer(root, 0),
        Some(SbiRet::error(SbiError::InvalidParam))
    );
    assert!(w.t.ipc_waiters(root).is_empty());
    // A waiting child's record goes with its reboot (its vCPUs start afresh).
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 3);
    put_recv(&mut w, c, flags::IPC_RECV_WAIT, 0);
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 0);
    w.t.reboot(c).unwrap();
    assert!(w.t.ipc_waiters(c).is_empty());
}

#[test]
fn ipc_call_sends_then_sleeps_until_the_answer_is_delivered_into_its_buffer() {
    let (mut w, root, c) = waiting_world();
    // The child sleeps in a receive; the parent's call delivers into it and sleeps.
    put_recv(&mut w, c, flags::IPC_RECV_EXACT | flags::IPC_RECV_WAIT, 0);
    w.h.vcpu = 0;
    assert_eq!(w.ok(c, ext::FID_IPC_RECV, &[0x100]), 0);
    w.h.put(root, 0x4000, b"ping");
    assert_eq!(w.ok(root, ext::FID_IPC_CALL, &[2, 0x4000, 4, 64]), 0);
    assert_eq!(w.h.answer(c, 0), Some(SbiRet::ok(1)));
    assert_eq!(w.h.get(c, 0x3000, 4), b"ping");
    assert_eq!(w.t.ipc_waiters(root).len(), 1);
    // The child answers with a call of its own: its answer lands in the parent's
    // buffer (a1 = length + 1), and the child sleeps for the next request.
    w.h.put(c, 0x4000, b"pong!");
    assert_eq!(w.ok(c, ext::FID_IPC_CALL, &[0, 0x4000, 5, 64]), 0);
    assert_eq!(w.h.answer(root, 0), Some(SbiRet::ok(6)));
    assert_eq!(w.h.get(root, 0x4000, 5), b"pong!");
    assert_eq!(w.t.get(root).unwrap().queued_messages(), 0);
    // The next request finds the child asleep in its call, which returns at once if
    // the answer is already queued.
    w.h.put(root, 0x4000, b"again");
    assert_eq!(w.ok(root, ext::FID_IPC_CALL, &[2, 0x4000, 5, 64]), 0);
    assert_eq!(w.h.answer(c, 0), Some(SbiRet::ok(6)));
    assert_eq!(send_from(&mut w, c, 0, b"early"), SbiRet::ok(0));
    assert_eq!(w.h.answer(root, 0), Some(SbiRet::ok(6)));
    assert_eq!(send_from(&mut w, c, 0, b"queued"), SbiRet::ok(0));
    assert_eq!(w.ok(root, ext::FID_IPC_CALL, &[2, 0x4000, 1, 64]), 7);
    assert_eq!(w.h.get(root, 0x4000, 6), b"queued");
}

#[test]
fn a_sleeping_receives_answer_survives_its_one_word_encoding() {
    use super::comms::{decode_ipc_answer, encode_ipc_answer};
    let errors = [
        SbiError::Failed,
        SbiError::InvalidParam,
        SbiError::InvalidAddress,
        SbiError::BadRange,
    ];
    for value in 0..=limits::IPC_MAX_MESSAGE + 1 {
        let r = SbiRet::ok(value);
        assert_ne!(encode_ipc_answer(r), 0);
        assert_eq!(decode_ipc_answer(encode_ipc_answer(r)), r);
    }
    for e in errors {
        let r = SbiRet::error(e);
        assert_ne!(encode_ipc_answer(r), 0);
        assert_eq!(decode_ipc_answer(encode_ipc_answer(r)), r);
    }
}

#[test]
fn ipc_call_checks_everything_before_it_sends() {
    let (mut w, root, c) = waiting_world();
    let max = limits::IPC_MAX_MESSAGE;
    for (args, code) in [
        ([1, 0x4000, 4, 64], E_INVALID_PARAM),
        ([9, 0x4000, 4, 64], E_INVALID_PARAM),
        ([0, 0x4000, 4, 64], E_INVALID_PARAM),
        ([2, 0x4000, max + 1, 64], E_INVALID_PARAM),
        ([2, 0x4000, 4, max + 1], E_INVALID_PARAM),
        ([2, 64 * 4096 - 2, 4, 0], E_INVALID_ADDRESS),
        ([2, 64 * 4096 - 64, 4, 65], E_INVALID_ADDRESS),
        ([2, usize::MAX, 1, 1], E_INVALID_ADDRESS),
    ] {
        assert_eq!(w.err(root, ext::FID_IPC_CALL, &args), code, "{args:?}");
    }
    assert_eq!(w.t.get(c).unwrap().queued_messages(), 0);
    assert!(w.t.ipc_waiters(root).is_empty());
    // An answer longer than the room for it stays queued: BAD_RANGE (the request
    // went).
    assert_eq!(send_from(&mut w, c, 0, &[1u8; 65]), SbiRet::ok(0));
    assert_eq!(
        w.err(root, ext::FID_IPC_CALL, &[2, 0x4000, 4, 64]),
        E_BAD_RANGE
    );
    assert_eq!(w.t.get(c).unwrap().queued_messages(), 1);
    assert_eq!(w.t.get(root).unwrap().queued_messages(), 1);
    // And one delivered to a sleeping call is refused the same way.
    let r = IpcRecvArgs {
        size: IpcRecvArgs::SIZE as u32,
        flags: flags::IPC_RECV_EXACT,
        cid: 2,
        buf_gpa: 0x3000,
        max_len: 4096,
        out_len: 0,
    };
    w.h.put(root, 0x100, &r.to_le_bytes());
    assert_eq!(w.ok(root, ext::FID_IPC_RECV, &[0x100]), 1);
    assert_eq!(w.ok(root, ext::FID_IPC_CALL, &[2, 0x4000, 4, 8]), 0);
    assert_eq!(send_from(&mut w, c, 0, &[2u8; 9]), SbiRet::ok(0));
    assert_eq!(w.h.answer(root, 0), Some(SbiRet::error(SbiError::BadRange)));
}

#[test]
fn child_mem_copies_only_between_a_parent_and_its_child() {
    const READ: usize = ext::FID_CHILD_MEM_READ;
    const WRITE: usize = ext::FID_CHILD_MEM_WRITE;
    let max = limits::CHILD_MEM_MAX;
    let mut w = World::new();
    let root = w.root;
    let mut s = w.spawn_args();
    // Room below the child for one grandchild.
    s.quota_ram_pages = 200;
    s.quota_vcpus = 2;
    s.quota_max_priority = 5;
    s.quota_max_depth = 1;
    s.quota_max_descendants = 1;
    assert_eq!(w.spawn(root, &s), SbiRet::ok(2));
    let c = w.child(root, 2);
    // Into the child and back out.
    w.h.put(root, 0x4000, b"virtqueue");
    assert_eq!(w.ok(root, WRITE, &[2, 0x1800, 0x4000, 9]), 9);
    assert_eq!(w.h.get(c, 0x1800, 9), b"virtqueue");
    w.h.put(c, 0x2000, b"used ring");
    assert_eq!(w.ok(root, READ, &[2, 0x2000, 0x5000, 9]), 9);
    assert_eq!(w.h.get(root, 0x5000, 9), b"used ring");
    assert_eq!(w.ok(root, READ, &[2, 0x2000, 0x6000, 0]), 0);
    // The largest copy, ending at the end of the child's RAM.
    assert_eq!(w.ok(root, READ, &[2, 32 * 4096 - max, 0x10000, max]), max);
    // Checks, in order: the CID names a direct child of the caller...
    assert_eq!(w.err(root, READ, &[1, 0, 0x5000, 8]), E_DENIED);
    assert_eq!(w.err(root, READ, &[7, 0, 0x5000, 8]), E_INVALID_PARAM);
    assert_eq!(w.err(c, WRITE, &[0, 0, 0x5000, 8]), E_DENIED);
    // ... (a grandchild is not one) ...
    let mut gs = w.spawn_args();
    gs.ram_pages = 8;
    w.h.put(c, 0x8000, &gs.to_le_bytes());
    let g = w.call(c, ext::FID_SPAWN, &[0x8000]);
    assert_eq!(g, SbiRet::ok(2));
    assert_eq!(w.err(root, READ, &[3, 0, 0x5000, 8]), E_INVALID_PARAM);
    // ... the length is capped (before any buffer is made) ...
    assert_eq!(w.err(root, READ, &[2, 0, 0x5000, max + 1]), E_INVALID_PARAM);
    assert_eq!(
        w.err(root, WRITE, &[2, 0, 0x5000, usize::MAX]),
        E_INVALID_PARAM
    );
    // ... then the caller's range and the child's: nobody else's memory, no wrap.
    assert_eq!(
        w.err(root, READ, &[2, 0, 64 * 4096 - 4, 8]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, READ, &[2, 32 * 4096 - 4, 0x5000, 8]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, WRITE, &[2, usize::MAX - 3, 0x5000, 8]),
        E_INVALID_ADDRESS
    );
    // A refusal copied nothing.
    assert_eq!(w.h.get(root, 0x5000, 9), b"used ring");
    assert_eq!(w.h.get(c, 0x1800, 9), b"virtqueue");
}

#[test]
fn spawn_with_devices_checks_every_spec_and_serves_device_calls() {
    use diosix_abi::{devices as dev, DeviceSpec, DeviceState};
    const STATE: usize = ext::FID_DEVICE_STATE;
    const RAISE: usize = ext::FID_DEVICE_RAISE;
    let mut w = World::new();
    let root = w.root;
    let rng = DeviceSpec {
        size: DeviceSpec::SIZE as u32,
        device_id: 4,
        features: 0,
        queue_count: 1,
        queue_max: 64,
        config_gpa: 0x6000,
        config_len: 0,
        reserved: 0,
    };
    let blk = DeviceSpec {
        device_id: 2,
        config_len: 8,
        ..rng
    };
    w.h.put(root, 0x6000, &[0x10, 0, 0, 0, 0, 0, 0, 0]);
    let put_specs = |w: &mut World, specs: &[DeviceSpec]| {
        for (i, d) in specs.iter().enumerate() {
            w.h.put(
                root,
                0x7000 + (i * DeviceSpec::SIZE) as u64,
                &d.to_le_bytes(),
            );
        }
    };
    let mut s = w.spawn_args();
    s.devices_gpa = 0x7000;
    s.device_count = 2;
    // Refusals, in the documented order; none creates a child.
    let refused = |w: &mut World, s: &SpawnArgs, specs: &[DeviceSpec], code: isize| {
        put_specs(w, specs);
        assert_eq!(w.spawn(root, s).error, code, "{s:?} {specs:?}");
    };
    refused(
        &mut w,
        &SpawnArgs {
            device_count: 9,
            ..s
        },
        &[rng, blk],
        E_INVALID_PARAM,
    );
    refused(
        &mut w,
        &SpawnArgs { reserved: 1, ..s },
        &[rng, blk],
        E_INVALID_PARAM,
    );
    let trusted = SpawnArgs {
        flags: flags::SPAWN_TRUSTED,
        ..s
    };
    refused(&mut w, &trusted, &[rng, blk], E_INVALID_PARAM);
    refused(
        &mut w,
        &SpawnArgs {
            devices_gpa: 0x7004,
            ..s
        },
        &[rng, blk],
        E_INVALID_ADDRESS,
    );
    let past_ram = SpawnArgs {
        devices_gpa: 64 * 4096 - 40,
        ..s
    };
    refused(&mut w, &past_ram, &[rng, blk], E_INVALID_ADDRESS);
    refused(
        &mut w,
        &s,
        &[
            rng,
            DeviceSpec {
                queue_max: 3,
                ..blk
            },
        ],
        E_INVALID_PARAM,
    );
    let far_config = DeviceSpec {
        config_gpa: u64::MAX - 3,
        ..blk
    };
    refused(&mut w, &s, &[rng, far_config], E_INVALID_ADDRESS);
    assert!(w.t.child_cids(root).unwrap().is_empty());
    // A caller that knows only the 1.0 structure (88 bytes) gets no devices, whatever
    // follows it in memory.
    let old = SpawnArgs {
        size: SpawnArgs::MIN_SIZE as u32,
        ..s
    };
    put_specs(&mut w, &[rng, blk]);
    assert_eq!(w.spawn(root, &old), SbiRet::ok(2));
    assert_eq!(w.err(root, STATE, &[2, 0, 0x5000, 512]), E_INVALID_PARAM);
    assert_eq!(
        w.spawn(root, &SpawnArgs { size: 87, ..s }).error,
        E_INVALID_PARAM
    );
    // Two devices.
    assert_eq!(w.spawn(root, &s), SbiRet::ok(3));
    let need = DeviceState::SIZE + 32;
    assert_eq!(w.ok(root, STATE, &[3, 1, 0x5000, need]), need);
    let st = DeviceState::from_le_bytes(&w.h.get(root, 0x5000, need)).unwrap();
    assert_eq!((st.size as usize, st.status, st.queue_count), (need, 0, 1));
    assert_eq!(st.device_features & (1 << 32), 1 << 32);
    // Checks: a direct child, a device it has, an aligned output in RAM, room.
    assert_eq!(w.err(root, STATE, &[9, 0, 0x5000, need]), E_INVALID_PARAM);
    assert_eq!(w.err(root, STATE, &[3, 2, 0x5000, need]), E_INVALID_PARAM);
    assert_eq!(
        w.err(root, STATE, &[3, usize::MAX, 0x5000, need]),
        E_INVALID_PARAM
    );
    assert_eq!(w.err(root, STATE, &[3, 0, 0x5004, need]), E_INVALID_ADDRESS);
    assert_eq!(
        w.err(root, STATE, &[3, 0, 64 * 4096 - 8, need]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(root, STATE, &[3, 0, 0x5000, need - 1]),
        E_INVALID_PARAM
    );
    let c = w.child(root, 3);
    assert_eq!(w.err(c, STATE, &[0, 0, 0x5000, need]), E_DENIED);
    // DEVICE_RAISE: defined bits only; a device not live drops a used-buffer interrupt.
    assert_eq!(w.err(root, RAISE, &[3, 0, 0]), E_INVALID_PARAM);
    assert_eq!(w.err(root, RAISE, &[3, 0, 8]), E_INVALID_PARAM);
    assert_eq!(w.err(root, RAISE, &[3, 5, 1]), E_INVALID_PARAM);
    assert_eq!(
        w.ok(root, RAISE, &[3, 0, dev::RAISE_USED_BUFFER as usize]),
        0
    );
    assert_eq!(
        w.ok(root, RAISE, &[3, 0, dev::RAISE_NEEDS_RESET as usize]),
        0
    );
    w.ok(root, STATE, &[3, 0, 0x5000, need]);
    let st = DeviceState::from_le_bytes(&w.h.get(root, 0x5000, need)).unwrap();
    assert_eq!((st.status, st.interrupt_status), (0x40, 0));
    // EXEC takes no devices.
    let e = SpawnArgs { cid: 0, ..s };
    w.h.put(c, 0x8000, &e.to_le_bytes());
    assert_eq!(w.call(c, ext::FID_EXEC, &[0x8000]).error, E_INVALID_PARAM);
}

#[test]
fn exec_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    // The Root VM cannot replace itself (its end restarts the host).
    let s = w.spawn_args();
    w.h.put(root, 0x8000, &s.to_le_bytes());
    assert_eq!(w.err(root, ext::FID_EXEC, &[0x8000]), E_DENIED);
    // A child with a grandchild, and quota for a 16-page image.
    let r = w.spawn(root, &s);
    assert_eq!(r, SbiRet::ok(2));
    let c = w.child(root, 2);
    let before = w.t.get(root).unwrap().subtree().pages;
    let exec = |w: &mut World, a: &SpawnArgs| {
        w.h.put(c, 0x7000, &a.to_le_bytes());
        w.call(c, ext::FID_EXEC, &[0x7000])
    };
    // Refusals, nothing changed: flags other than PAGE_LIST, a cid, a bad size, a
    // charge beyond its quota, an image outside its RAM.
    for (f, code) in [
        (
            (|a: &mut SpawnArgs| a.flags = flags::SPAWN_TRUSTED) as fn(&mut SpawnArgs),
            E_INVALID_PARAM,
        ),
        (
            |a: &mut SpawnArgs| a.flags = flags::SPAWN_PAUSED,
            E_INVALID_PARAM,
        ),
        (|a: &mut SpawnArgs| a.cid = 2, E_INVALID_PARAM),
        (|a: &mut SpawnArgs| a.size = 8, E_INVALID_PARAM),
        (|a: &mut SpawnArgs| a.ram_pages = 0, E_INVALID_PARAM),
        (
            |a: &mut SpawnArgs| a.image_size = limits::EXEC_MAX_IMAGE + 1,
            E_INVALID_PARAM,
        ),
        (|a: &mut SpawnArgs| a.ram_pages = 40, E_DENIED),
        (|a: &mut SpawnArgs| a.vcpus = 2, E_DENIED),
        (|a: &mut SpawnArgs| a.priority = 200, E_DENIED),
        (
            |a: &mut SpawnArgs| a.image_gpa = 31 * 4096,
            E_INVALID_ADDRESS,
        ),
    ] {
        let mut a = s;
        a.ram_pages = 16;
        f(&mut a);
        assert_eq!(exec(&mut w, &a).error, code, "{a:?}");
    }
    assert!(w.t.is_alive(c));
    assert_eq!(w.t.get(root).unwrap().subtree().pages, before);
    // A host failure ends it.
    let mut a = s;
    a.ram_pages = 16;
    w.h.fail_next = true;
    assert_eq!(exec(&mut w, &a).error, diosix_abi::error::FAILED);
    assert!(!w.t.is_alive(c));
    // Success: same CID, the smaller charge, the parent told it rebooted.
    let r = w.spawn(root, &s);
    assert_eq!(r, SbiRet::ok(3));
    let c = w.child(root, 3);
    let held = w.t.get(c).unwrap().own();
    let pre = w.t.get(root).unwrap().subtree().pages;
    w.h.put(c, 0x7000, &a.to_le_bytes());
    w.ok(c, ext::FID_EXEC, &[0x7000]);
    assert!(w.t.is_alive(c));
    assert_eq!(w.child(root, 3), c);
    let now = w.t.get(c).unwrap().own();
    assert_eq!(now.ram_pages, 16);
    assert!(now.ram_pages < held.ram_pages);
    assert_eq!(
        w.t.get(root).unwrap().subtree().pages,
        pre - held.ram_pages - held.table_pages + now.ram_pages + now.table_pages
    );
    assert!(w.h.log.iter().any(|l| l == "exec"));
    assert!(drain_events(&mut w, root)
        .iter()
        .any(|&(kind, cid, _)| kind == event::CHILD_REBOOTED && cid == 3));
}

#[test]
fn trust_functions_through_dispatch() {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    let c = w.child(root, 2);
    w.ok(
        c,
        ext::FID_MAP_HOST_MMIO,
        &[0x1000_0000, 0x1000_0000, 0x1000],
    );
    assert_eq!(
        w.err(c, ext::FID_MAP_HOST_MMIO, &[0x1000_0001, 0, 0x1000]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(c, ext::FID_MAP_HOST_MMIO, &[0, 0, 5]),
        E_INVALID_PARAM
    );
    w.ok(c, ext::FID_ROUTE_IRQ, &[10]);
    assert_eq!(w.err(c, ext::FID_ROUTE_IRQ, &[5000]), E_INVALID_PARAM);
    // RELEASE_DEVICE: how a1 names the device, then the host's checks.
    assert_eq!(w.err(c, ext::FID_RELEASE_DEVICE, &[2, 0]), E_INVALID_PARAM);
    assert_eq!(
        w.err(c, ext::FID_RELEASE_DEVICE, &[0, 0x1000_0010]),
        E_INVALID_ADDRESS
    );
    assert_eq!(
        w.err(c, ext::FID_RELEASE_DEVICE, &[1, 1 << 32]),
        E_INVALID_PARAM
    );
    w.ok(c, ext::FID_RELEASE_DEVICE, &[0, 0x1000_0000]);
    w.ok(c, ext::FID_RELEASE_DEVICE, &[1, 10]);
    assert!(w.h.log.iter().any(|l| l == "release_device Irq(10)"));
    assert_eq!(w.err(c, ext::FID_DROP_CHILD_TRUST, &[1]), E_DENIED);
    w.ok(c, ext::FID_DROP_TRUST, &[]);
    assert_eq!(
        w.err(
            c,
            ext::FID_MAP_HOST_MMIO,
            &[0x1000_0000, 0x1000_0000, 0x1000]
        ),
        E_DENIED
    );
    assert_eq!(w.err(c, ext::FID_ROUTE_IRQ, &[10]), E_DENIED);
    assert_eq!(w.err(c, ext::FID_RELEASE_DEVICE, &[1, 10]), E_DENIED);
    assert!(w.h.log.iter().any(|l| l == "revoke"));
    // Irrevocable: nothing gives it back (a fork of it is untrusted too).
    w.ok(c, ext::FID_DROP_TRUST, &[]);
    assert!(!w.t.get(c).unwrap().trusted());
}

/// Whatever a stranger tries, the answer for a CID that exists elsewhere in the tree is
/// identical to the answer for one that exists nowhere.
#[test]
fn strangers_are_indistinguishable_from_nothing() {
    let mut w = World::new();
    let root = w.root;
    w.ok(root, ext::FID_FORK, &[0]);
    w.ok(root, ext::FID_FORK, &[0]);
    let a = w.child(root, 2);
    let mut q = quota_args(3);
    q.max_descendants = 2;
    q.max_depth = 1;
    q.ram_pages = 500;
    q.vcpus = 4;
    assert_eq!(w.set_quota(root, &q).error, 0);
    let b = w.child(root, 3);
    w.ok(b, ext::FID_FORK, &[0]); // b has child CID 2; a has none.
    for fid in [
        ext::FID_STOP,
        ext::FID_RESUME,
        ext::FID_REBOOT,
        ext::FID_DROP_CHILD_TRUST,
    ] {
        for cid in [2usize, 3, 4, 1000] {
            assert_eq!(w.err(a, fid, &[cid]), E_INVALID_PARAM);
        }
    }
    for cid in [2usize, 3, 1000] {
        assert_eq!(w.err(a, ext::FID_EXIT, &[cid, 0]), E_INVALID_PARAM);
        assert_eq!(
            w.err(a, ext::FID_GET_CHILD_INFO, &[cid, 0x100, 4096]),
            E_INVALID_PARAM
        );
    }
    let _ = limits::IPC_MAX_MESSAGE;
}

#[test]
fn spawn_page_list_checks_the_list_not_the_image_range() {
    let mut w = World::new();
    let root = w.root;
    let mut s = w.spawn_args();
    s.flags = flags::SPAWN_PAGE_LIST;
    s.image_size = 0x2000; // two pages: a 16-byte list
    s.image_gpa = 0x1004;
    assert_eq!(
        w.spawn(root, &s).error,
        E_INVALID_ADDRESS,
        "list not 8-byte aligned"
    );
    s.image_gpa = 64 * 4096 - 8;
    assert_eq!(
        w.spawn(root, &s).error,
        E_INVALID_ADDRESS,
        "list runs past RAM"
    );
    // The image itself may be larger than what would fit contiguously at image_gpa:
    // only the list has to be inside RAM.
    s.image_gpa = 64 * 4096 - 16;
    assert_eq!(w.spawn(root, &s), SbiRet::ok(2));
}
