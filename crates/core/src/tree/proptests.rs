//! Property tests: random operation sequences on the tree, with the invariants checked
//! after every step.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::cow::CowLedger;
use super::*;

#[derive(Clone, Debug)]
enum Op {
    Create {
        at: usize,
        ram: u64,
        vcpus: u32,
        prio: u32,
        trusted: bool,
        q_ram: u64,
        q_vcpus: u32,
        depth: u32,
        desc: u32,
    },
    Fork {
        at: usize,
        untrusted: bool,
    },
    Kill {
        at: usize,
    },
    Charge {
        at: usize,
        ram: u64,
        tables: u64,
    },
    Uncharge {
        at: usize,
        ram: u64,
        tables: u64,
    },
    SetQuotaChild {
        at: usize,
        child: usize,
        ram: u64,
        vcpus: u32,
        depth: u32,
        desc: u32,
    },
    LowerSelf {
        at: usize,
        ram: u64,
        desc: u32,
    },
    DropTrust {
        at: usize,
        child: bool,
    },
    Reboot {
        at: usize,
    },
    Send {
        at: usize,
        to_parent: bool,
        len: usize,
    },
    Replace {
        at: usize,
        child: usize,
        ram: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), 1..200u64, 1..4u32, 1..12u32, any::<bool>(), 0..2000u64, 0..8u32, 0..4u32, 0..12u32)
            .prop_map(|(at, ram, vcpus, prio, trusted, q_ram, q_vcpus, depth, desc)| Op::Create { at, ram, vcpus, prio, trusted, q_ram, q_vcpus, depth, desc }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(at, untrusted)| Op::Fork { at, untrusted }),
        2 => any::<usize>().prop_map(|at| Op::Kill { at }),
        2 => (any::<usize>(), 0..300u64, 0..20u64).prop_map(|(at, ram, tables)| Op::Charge { at, ram, tables }),
        1 => (any::<usize>(), 0..300u64, 0..20u64).prop_map(|(at, ram, tables)| Op::Uncharge { at, ram, tables }),
        2 => (any::<usize>(), any::<usize>(), 0..5000u64, 0..10u32, 0..5u32, 0..20u32)
            .prop_map(|(at, child, ram, vcpus, depth, desc)| Op::SetQuotaChild { at, child, ram, vcpus, depth, desc }),
        1 => (any::<usize>(), 0..5000u64, 0..20u32).prop_map(|(at, ram, desc)| Op::LowerSelf { at, ram, desc }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(at, child)| Op::DropTrust { at, child }),
        1 => any::<usize>().prop_map(|at| Op::Reboot { at }),
        1 => (any::<usize>(), any::<bool>(), 0..5000usize).prop_map(|(at, to_parent, len)| Op::Send { at, to_parent, len }),
        1 => (any::<usize>(), any::<usize>(), 1..300u64).prop_map(|(at, child, ram)| Op::Replace { at, child, ram }),
    ]
}

fn pick(t: &VmTree, i: usize) -> Option<VmId> {
    let ids: Vec<VmId> = t.ids().collect();
    if ids.is_empty() {
        None
    } else {
        ids.get(i % ids.len()).copied()
    }
}

fn pick_child_cid(t: &VmTree, vm: VmId, i: usize) -> Option<u64> {
    let cids = t.child_cids(vm).ok()?;
    if cids.is_empty() {
        None
    } else {
        cids.get(i % cids.len()).copied()
    }
}

/// Every invariant the tree promises.
fn check(t: &VmTree, ledger_total: u64) -> Result<(), TestCaseError> {
    let mut reachable = 0usize;
    let mut held_pages = 0u64;
    for id in t.ids() {
        let n = t.get(id).unwrap();
        reachable += 1;
        held_pages += n.own().pages().unwrap();
        let q = n.quota();
        prop_assert!(q.within_abi_limits());
        // Recompute subtree usage from scratch.
        let mut pages = n.own().pages().unwrap();
        let mut vcpus = n.own().vcpus;
        let mut desc = 0u32;
        for &c in n.children().values() {
            let cn = t.get(c).unwrap();
            pages += cn.subtree().pages;
            vcpus += cn.subtree().vcpus;
            desc += 1 + cn.subtree().descendants;
            prop_assert_eq!(cn.parent(), Some(id));
            prop_assert!(cn.quota().max_priority <= q.max_priority);
            prop_assert!(cn.quota().max_depth < q.max_depth);
            prop_assert!(!cn.trusted() || n.trusted(), "trusted child of untrusted");
            prop_assert_eq!(cn.depth(), n.depth() + 1);
        }
        prop_assert_eq!(
            n.subtree(),
            SubtreeUsage {
                pages,
                vcpus,
                descendants: desc
            }
        );
        // usage <= reservation <= quota, at every node.
        let r = t.reserved(id).unwrap();
        prop_assert!(r.fits(&q), "reserved {:?} quota {:?}", r, q);
        prop_assert!(pages <= r.pages && vcpus <= r.vcpus && desc <= r.descendants);
        prop_assert!(n.priority() <= q.max_priority);
        prop_assert!(t.depth_used(id) <= q.max_depth);
        // CIDs: >= 2, below the counter, unique by construction of the map.
        for &c in n.children().keys() {
            prop_assert!(c >= 2 && c < n.next_child_cid());
        }
        prop_assert!(
            n.queued_messages() <= (n.children().len() + 1) * diosix_abi::limits::IPC_QUEUE_DEPTH
        );
        prop_assert!(n.pending_events() <= diosix_abi::limits::EVENT_QUEUE_DEPTH);
    }
    prop_assert_eq!(reachable, t.len());
    if let Some(root) = t.root() {
        prop_assert_eq!(t.post_order(root).len(), t.len());
        prop_assert_eq!(t.get(root).unwrap().subtree().pages, held_pages);
    }
    // Conservation: what lives plus what was released equals what was ever charged.
    prop_assert_eq!(held_pages, ledger_total);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tree_invariants_hold_after_random_operations(ops in proptest::collection::vec(op(), 1..80)) {
        let (mut t, root) = VmTree::new(
            Quota { ram_pages: 20_000, vcpus: 32, max_priority: 10, max_depth: 6, max_descendants: 40 },
            Usage { ram_pages: 100, table_pages: 2, vcpus: 1 },
            5,
        ).unwrap();
        let _ = root;
        // Pages currently charged to live VMs, tracked independently of the tree.
        let mut live_pages: u64 = 102;
        let mut ever_cids: BTreeMap<VmId, Vec<u64>> = BTreeMap::new();
        for op in ops {
            let Some(root) = t.root() else { break };
            let _ = root;
            match op {
                Op::Create { at, ram, vcpus, prio, trusted, q_ram, q_vcpus, depth, desc } => {
                    let Some(p) = pick(&t, at) else { continue };
                    let req = ChildRequest {
                        ram_pages: ram, table_pages: 1, vcpus, priority: prio, trusted,
                        quota: Quota { ram_pages: q_ram, vcpus: q_vcpus, max_priority: 0, max_depth: depth, max_descendants: desc },
                        initial_state: VmState::Running, name: String::new(),
                    };
                    if let Ok((_, cid)) = t.create_child(p, req) {
                        live_pages += ram + 1;
                        let seen = ever_cids.entry(p).or_default();
                        prop_assert!(!seen.contains(&cid), "CID reused");
                        seen.push(cid);
                    }
                }
                Op::Fork { at, untrusted } => {
                    let Some(p) = pick(&t, at) else { continue };
                    let req = t.fork_request(p, untrusted, t.info(p, 1).unwrap().own_table_pages).unwrap();
                    let pages = req.ram_pages + req.table_pages;
                    if t.create_child(p, req).is_ok() {
                        live_pages += pages;
                    }
                }
                Op::Kill { at } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let parent = t.get(v).unwrap().parent();
                    let before = parent.map(|p| t.get(p).unwrap().pending_events());
                    let r = t.kill_subtree(v, 1).unwrap();
                    for k in &r.killed {
                        prop_assert!(!t.is_alive(k.id));
                        live_pages -= k.ram_pages + k.table_pages;
                    }
                    prop_assert_eq!(r.restart_host, parent.is_none());
                    if let (Some(p), Some(b)) = (parent, before) {
                        let after = t.get(p).unwrap().pending_events();
                        // The TERMINATED event arrived (message notices from the dead child may have
                        // been withdrawn at the same time).
                        prop_assert!(after >= 1 && after <= b + 1);
                    }
                }
                Op::Charge { at, ram, tables } => {
                    let Some(v) = pick(&t, at) else { continue };
                    if t.charge(v, ram, tables).is_ok() {
                        live_pages += ram + tables;
                    }
                }
                Op::Uncharge { at, ram, tables } => {
                    let Some(v) = pick(&t, at) else { continue };
                    if t.uncharge(v, ram, tables).is_ok() {
                        live_pages -= ram + tables;
                    }
                }
                Op::SetQuotaChild { at, child, ram, vcpus, depth, desc } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let Some(c) = pick_child_cid(&t, v, child) else { continue };
                    let _ = t.set_quota(v, c, QuotaChange {
                        ram_pages: Some(ram), vcpus: Some(vcpus), max_priority: None,
                        max_depth: Some(depth), max_descendants: Some(desc),
                    });
                }
                Op::LowerSelf { at, ram, desc } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let before = t.get(v).unwrap().quota();
                    if t.set_quota(v, 1, QuotaChange { ram_pages: Some(ram), max_descendants: Some(desc), ..QuotaChange::default() }).is_ok() {
                        let after = t.get(v).unwrap().quota();
                        prop_assert!(after.ram_pages <= before.ram_pages && after.max_descendants <= before.max_descendants);
                    }
                }
                Op::DropTrust { at, child } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let cid = if child { pick_child_cid(&t, v, at).unwrap_or(1) } else { 1 };
                    t.drop_trust(v, cid).unwrap();
                }
                Op::Reboot { at } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let r = t.reboot(v).unwrap();
                    for k in &r.killed {
                        live_pages -= k.ram_pages + k.table_pages;
                    }
                }
                Op::Send { at, to_parent, len } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let cid = if to_parent { 0 } else { pick_child_cid(&t, v, at).unwrap_or(1) };
                    let data = alloc::vec![7u8; len];
                    let r = t.ipc_send(v, cid, data.as_slice());
                    if len > diosix_abi::limits::IPC_MAX_MESSAGE {
                        prop_assert!(r.is_err());
                    }
                }
                Op::Replace { at, child, ram } => {
                    let Some(v) = pick(&t, at) else { continue };
                    let Some(c) = pick_child_cid(&t, v, child) else { continue };
                    let req = ChildRequest {
                        ram_pages: ram, table_pages: 1, vcpus: 1, priority: 1, trusted: false,
                        quota: Quota::default(), initial_state: VmState::Running, name: String::new(),
                    };
                    if let Ok((_, gone)) = t.replace_child(v, c, req) {
                        live_pages += ram + 1;
                        for k in &gone.killed {
                            live_pages -= k.ram_pages + k.table_pages;
                        }
                        prop_assert!(t.resolve_child(v, c).is_ok());
                    }
                }
            }
            if t.root().is_some() {
                check(&t, live_pages)?;
            }
        }
    }

    /// Copy-on-write: frames in use never exceed the pages charged (every VM maps each of
    /// its pages to exactly one frame), share counts stay exact, and releasing everything
    /// frees every frame.
    #[test]
    fn cow_frames_never_exceed_charged_pages(
        ops in proptest::collection::vec((0..3u8, any::<usize>(), any::<usize>()), 1..120)
    ) {
        let (mut t, root) = VmTree::new(
            Quota { ram_pages: 10_000, vcpus: 64, max_priority: 10, max_depth: 8, max_descendants: 64 },
            Usage { ram_pages: 8, table_pages: 0, vcpus: 1 },
            5,
        ).unwrap();
        let mut ledger = CowLedger::default();
        let mut next_frame = 0u64;
        let frames: Vec<u64> = (0..8).map(|_| { next_frame += 1; next_frame }).collect();
        ledger.add_vm(root, frames).unwrap();
        for (kind, a, b) in ops {
            let Some(vm) = pick(&t, a) else { break };
            match kind {
                0 => {
                    // Fork, granting quota first so deep forks are possible.
                    let r = t.fork_request(vm, false, t.info(vm, 1).unwrap().own_table_pages).unwrap();
                    if let Ok((child, _)) = t.create_child(vm, r) {
                        ledger.fork(vm, child).unwrap();
                    }
                }
                1 => {
                    let pages = ledger.pages_of(vm);
                    if pages > 0 {
                        let before = ledger.frames_in_use();
                        let act = ledger.write_fault(vm, b % pages, || { next_frame += 1; next_frame }).unwrap();
                        match act {
                            cow::CowAction::MakeWritable(_) => prop_assert_eq!(ledger.frames_in_use(), before),
                            cow::CowAction::Copy { .. } => prop_assert_eq!(ledger.frames_in_use(), before + 1),
                        }
                    }
                }
                _ => {
                    if Some(vm) != t.root() {
                        let r = t.kill_subtree(vm, 0).unwrap();
                        for k in &r.killed {
                            ledger.release_vm(k.id);
                        }
                    }
                }
            }
            prop_assert!(ledger.is_consistent());
            let charged: u64 = t.ids().map(|v| t.get(v).unwrap().own().ram_pages).sum();
            prop_assert!(ledger.frames_in_use() as u64 <= charged);
            prop_assert_eq!(ledger.pages_mapped() as u64, charged);
        }
        let r = t.kill_subtree(t.root().unwrap(), 0).unwrap();
        for k in &r.killed {
            ledger.release_vm(k.id);
        }
        prop_assert_eq!(ledger.frames_in_use(), 0);
    }
}
