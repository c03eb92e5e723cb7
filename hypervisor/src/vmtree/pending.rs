//! Builds the tree admitted, carried out once its lock is released (see
//! [`BUILDING`]), and stopped when the VM is killed meanwhile.

use crate::build::BuildError;
use crate::hart::HartLocal;
use crate::vm::Vm;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use diosix_abi::SpawnArgs;
use diosix_core::tree::dispatch::apply_termination;
use diosix_core::tree::{SbiError, VmId, VmState};
use spin::Mutex;

use super::origin::ImageOrigin;
use super::*;

/// VMs the tree has admitted whose build runs outside `TREE` (it zeroes their RAM and
/// copies their image: time proportional to their size), each with the flag that
/// tells its builder to give up. The flag is set under `TREE` by whoever kills the VM
/// meanwhile, who then waits (bounded by one 2 MiB step) until the builder has given
/// every page back and removed the entry.
pub(super) static BUILDING: Mutex<BTreeMap<VmId, Arc<AtomicBool>>> = Mutex::new(BTreeMap::new());

/// What a build starts from.
pub(super) enum Source {
    /// SPAWN: the image is still in the parent's memory.
    Spawn {
        parent: Arc<Vm>,
        args: SpawnArgs,
        virtio: Option<Arc<crate::virtio::ChildVirtio>>,
    },
    /// REBOOT (by the parent or the VM's own SRST reboot) of a spawned VM: the image
    /// kept at SPAWN.
    Rebuild(ImageOrigin),
}

/// A VM the tree admitted, to build once `TREE` is released (see [`BUILDING`]).
pub(super) struct PendingBuild {
    pub(super) id: VmId,
    pub(super) source: Source,
    pub(super) abandoned: Arc<AtomicBool>,
}

impl PendingBuild {
    /// Records the build in [`BUILDING`] (so a kill meanwhile can stop it).
    pub(super) fn new(id: VmId, source: Source) -> Self {
        let abandoned = Arc::new(AtomicBool::new(false));
        BUILDING.lock().insert(id, abandoned.clone());
        Self {
            id,
            source,
            abandoned,
        }
    }

    /// Builds the VM with no lock held, then, under `TREE`, makes it live in the state
    /// the tree has for it now, or undoes its admission if the build failed (a new child
    /// is discarded, a rebooting one dies with a fatal fault). A VM killed meanwhile is
    /// given back at once. Returns the error the caller's call answers.
    pub(super) fn run(self, hart: &mut HartLocal) -> Result<(), SbiError> {
        let abandoned = self.abandoned.clone();
        let cancelled = move || abandoned.load(Ordering::Acquire);
        let id = self.id;
        let spawning = matches!(self.source, Source::Spawn { .. });
        let built = match self.source {
            Source::Spawn {
                parent,
                args,
                virtio,
            } => ImageOrigin::from_guest(&parent, id, &args, virtio, &cancelled).and_then(|o| {
                o.build(id, &cancelled)
                    .map(|b| (b, o))
                    .map_err(|e| build_error("SPAWN", &e))
            }),
            Source::Rebuild(o) => o
                .build(id, &cancelled)
                .map(|b| (b, o))
                .map_err(|e| build_error("REBOOT", &e)),
        };
        let Ok(mut tree) = lock_tree_unless(hart.slot, &cancelled, u64::MAX) else {
            // Killed meanwhile: give everything back before saying so.
            drop(built);
            log::info!(
                "build of a VM abandoned: memory released; host free pages: {}",
                crate::mem::unpromised_free_pages()
            );
            BUILDING.lock().remove(&id);
            return Err(SbiError::Failed);
        };
        BUILDING.lock().remove(&id);
        let Some(t) = tree.as_mut() else {
            return Err(SbiError::Failed);
        };
        match built {
            Ok((built, origin)) => {
                if t.get(id).is_some_and(|n| n.state() == VmState::Stopped) {
                    built.vm.stopped.store(true, Ordering::Release);
                }
                let vm = built.enqueue();
                if !spawning {
                    log::info!("VM {} rebooted", vm.name);
                }
                register(vm);
                ORIGINS.lock().insert(id, Origin::Image(origin));
                Ok(())
            }
            Err(e) => {
                // The failed build gave back every page it took (its kept image too):
                // say so, for whoever tallies the host's pages from the log.
                log::info!(
                    "build of a VM abandoned: memory released; host free pages: {}",
                    crate::mem::unpromised_free_pages()
                );
                let term = if spawning {
                    Ok(t.discard_child(id))
                } else {
                    t.fatal_fault(id)
                };
                if let Ok(term) = term {
                    apply_termination(&term, &mut HvHost::new(hart));
                }
                Err(e)
            }
        }
    }
}

/// The SBI error for a failed build, logged.
pub(super) fn build_error(what: &str, e: &BuildError) -> SbiError {
    log::warn!("{what} refused: {e}");
    match e {
        BuildError::Refused(_) => SbiError::InvalidParam,
        BuildError::Host(_) | BuildError::Cancelled => SbiError::Failed,
    }
}

/// Stops the build of `id` if one runs (see [`BUILDING`]) and waits, with `TREE`
/// held, until its builder has given every page back.
pub(super) fn abandon_build(id: VmId, my_slot: usize) {
    let flag = BUILDING.lock().get(&id).cloned();
    let Some(flag) = flag else {
        return;
    };
    flag.store(true, Ordering::Release);
    while BUILDING.lock().contains_key(&id) {
        crate::hart::service_fence_request(my_slot);
        core::hint::spin_loop();
    }
}
