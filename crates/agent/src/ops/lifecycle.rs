//! The short operations on a VM that runs (or ran) here: stop, kill, remove, pause, resume,
//! network settings, exec, statistics. Each is one blocking step with the VM's backend.

use std::time::Duration;

use firefleet_api::ExecRequestRecord;
use firefleet_types::{error_chain, NetworkSpec};
use firefleet_vmm::{Runtime, VmmError};

use super::{now_ms, warn, Ops, Outcome, STOP_GRACE};

/// Graceful stop (a paused guest is resumed first: it cannot shut down gracefully).
pub(super) async fn stop(ops: &Ops, vm: &str) -> Option<Outcome> {
    ops.with_runtime(vm, None, |_, rt, vm| {
        if rt.observe(vm).map(|o| o.paused).unwrap_or(false) {
            let _ = rt.resume(vm);
        }
        if let Err(e) = rt.stop(vm, STOP_GRACE) {
            warn(vm, "stop", &e);
        }
    })
    .await;
    None
}

/// Kills the VMM at once.
pub(super) async fn kill(ops: &Ops, vm: &str) -> Option<Outcome> {
    one_step(ops, vm, "kill", |rt, vm| rt.stop(vm, Duration::ZERO)).await
}

/// Runs one VMM step on the VM, logging its failure (the next pass decides again).
async fn one_step(
    ops: &Ops,
    vm: &str,
    what: &'static str,
    step: fn(&dyn Runtime, &str) -> Result<(), VmmError>,
) -> Option<Outcome> {
    ops.with_runtime(vm, None, move |_, rt, vm| {
        if let Err(e) = step(rt, vm) {
            warn(vm, what, &e);
        }
    })
    .await;
    None
}

/// Removes the VMM and its state; once it is gone, its disks, TAP and address.
pub(super) async fn remove(ops: &Ops, vm: &str) -> Option<Outcome> {
    ops.with_runtime(vm, None, |ops, rt, vm| match rt.remove(vm) {
        Ok(()) => {
            if let Err(e) = crate::disks::remove(&ops.data_dir, vm) {
                tracing::warn!(vm, error = %e, "removing the VM's disks failed");
            }
            ops.detach(vm);
        }
        Err(e) => warn(vm, "remove", &e),
    })
    .await;
    None
}

/// Pauses the guest.
pub(super) async fn pause(ops: &Ops, vm: &str) -> Option<Outcome> {
    one_step(ops, vm, "pause", |rt, vm| rt.pause(vm)).await
}

/// Resumes the guest.
pub(super) async fn resume(ops: &Ops, vm: &str) -> Option<Outcome> {
    one_step(ops, vm, "resume", |rt, vm| rt.resume(vm)).await
}

/// Applies the VM's network settings as its spec now says.
pub(super) async fn network(ops: &Ops, vm: &str, spec: NetworkSpec) -> Option<Outcome> {
    ops.with_runtime(vm, None, move |ops, _, vm| {
        let result = ops.network.update(vm, &spec).map_err(|e| error_chain(&e));
        match &result {
            Ok(()) => {
                tracing::info!(vm, isolated = spec.isolated, egress_mbit = ?spec.egress_mbit, "network settings applied")
            }
            Err(e) => tracing::warn!(vm, error = %e, "applying network settings failed"),
        }
        Outcome::Network {
            vm: vm.to_owned(),
            spec,
            result,
        }
    })
    .await
}

/// Runs an exec request in the guest.
pub(super) async fn exec(ops: &Ops, vm: &str, rec: ExecRequestRecord) -> Option<Outcome> {
    ops.with_runtime(vm, None, move |_, rt, vm| Outcome::Exec {
        vm: vm.to_owned(),
        id: rec.id.clone(),
        result: crate::guest::exec(rt, vm, &rec),
    })
    .await
}

/// Collects the VM's statistics (and its guest's, when it answers).
pub(super) async fn stats(ops: &Ops, vm: &str) -> Option<Outcome> {
    ops.with_runtime(vm, None, |ops, rt, vm| {
        crate::guest::stats(rt, &ops.runtimes.vm_dir(vm), vm, now_ms()).map(|(stats, guest)| {
            Outcome::Stats {
                vm: vm.to_owned(),
                stats,
                guest,
            }
        })
    })
    .await
    .flatten()
}
