//! Snapshots of a VM that runs here: taken once (a snapshot found complete on disk is the one
//! the agent took before it died), then copied to the control plane (best effort) so that the
//! VM can be restored from it on another node should this one be lost.

use firefleet_api::SnapshotReport;
use firefleet_types::{error_chain, SnapshotPhase};

use super::{warn, Ops, Outcome};
use crate::control::blocking;

/// Takes snapshot `name` of `vm` (leaving it paused if it was), copies it to the control plane.
pub(super) async fn snapshot(ops: &Ops, vm: &str, name: String) -> Option<Outcome> {
    let n = name.clone();
    let taken = ops
        .with_runtime(vm, None, move |ops, rt, vm| {
            // Taken already (the agent died before it could report it)? Then it is ready.
            let dir = ops.runtimes.vm_dir(vm).join("snapshots").join(&n);
            if let Some(m) = firefleet_vmm::completed_snapshot(&dir) {
                return Ok(SnapshotReport {
                    phase: SnapshotPhase::Ready,
                    bytes: Some(m.bytes),
                    pause_ms: Some(m.pause_ms),
                    message: None,
                });
            }
            let was_paused = rt.observe(vm).map(|o| o.paused).unwrap_or(false);
            Err(rt.snapshot(vm, &n, was_paused))
        })
        .await?;
    let report = match taken {
        Ok(report) => report,
        Err(Ok(info)) => {
            replicate(ops, vm, &name).await;
            SnapshotReport {
                phase: SnapshotPhase::Ready,
                bytes: Some(info.bytes),
                pause_ms: Some(info.pause_ms),
                message: None,
            }
        }
        Err(Err(e)) => {
            warn(vm, "snapshot", &e);
            SnapshotReport {
                phase: SnapshotPhase::Failed,
                bytes: None,
                pause_ms: None,
                message: Some(error_chain(&e)),
            }
        }
    };
    Some(Outcome::Snapshot {
        vm: vm.to_owned(),
        name,
        report,
    })
}

/// Gives the control plane a copy of snapshot `name` (best effort).
async fn replicate(ops: &Ops, vm: &str, name: &str) {
    let (runtimes, id, n) = (ops.runtimes.clone(), vm.to_owned(), name.to_owned());
    let result = match blocking(move || crate::migrate::pack(&runtimes.vm_dir(&id), &n)).await {
        Ok(Ok(archive)) => {
            let r = ops.control.upload_snapshot(vm, name, &archive).await;
            let _ = tokio::fs::remove_file(&archive).await;
            r
        }
        Ok(Err(e)) | Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::info!(vm, snapshot = name, "snapshot copied to the control plane"),
        Err(e) => {
            tracing::warn!(vm, snapshot = name, error = %e, "copying the snapshot failed")
        }
    }
}
