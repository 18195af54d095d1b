//! Snapshots: requested by a user (or the guard), taken by the VM's agent, reported back, and
//! copied to the control plane so the VM can be restored from them on another node.

use firefleet_api::SnapshotReport;
use firefleet_types::{
    DesiredState, NodeId, RestoreRequest, Snapshot, SnapshotPhase, Vm, VmId, VmPhase,
};

use crate::repo::{self, RepoError};
use crate::{app, now_ms, ApiError, AppState};

/// Requests snapshot `name` of a running or paused VM (counted against its tenant's snapshot
/// quota); its agent takes it.
pub async fn request(state: &AppState, vm: &Vm, name: String) -> Result<Snapshot, ApiError> {
    let node = match (&vm.status.node, vm.status.phase) {
        (Some(n), VmPhase::Running | VmPhase::Paused) if !vm.deleting => n.clone(),
        _ => {
            return Err(ApiError::Conflict(format!(
                "vm {} is {:?}: only a running or paused VM can be snapshotted",
                vm.spec.name, vm.status.phase
            )))
        }
    };
    let snap = Snapshot::requested(vm.id.clone(), name, node, now_ms());
    let quota = app::quota::admit(state, &vm.spec.tenant, app::quota::Adding::Snapshot).await?;
    repo::create_snapshot(state, &snap).await?;
    drop(quota);
    Ok(snap)
}

/// A VM's snapshots.
pub async fn list(state: &AppState, vm: &VmId) -> Result<Vec<Snapshot>, ApiError> {
    Ok(repo::list_snapshots(state, vm).await?)
}

/// Restores a VM from its ready snapshot `snapshot`, in a fresh VMM process on the node the
/// snapshot is on (the VM's).
pub async fn restore(state: &AppState, vm: &Vm, snapshot: &str) -> Result<Vm, ApiError> {
    let snap = repo::get_json::<Snapshot>(state, &repo::snapshot_key(&vm.id, snapshot))
        .await?
        .map(|(s, _)| s)
        .ok_or_else(|| ApiError::not_found("snapshot", snapshot))?;
    if snap.phase != SnapshotPhase::Ready {
        return Err(ApiError::Conflict(format!(
            "snapshot {:?} is {:?}, not ready",
            snap.name, snap.phase
        )));
    }
    let vm = repo::update_vm(state, &vm.id, |vm| {
        if vm.deleting {
            return Err(RepoError::Conflict(format!(
                "vm {} is being deleted",
                vm.spec.name
            )));
        }
        if vm.status.node.as_ref() != Some(&snap.node) {
            return Err(RepoError::Conflict(format!(
                "snapshot {:?} is on node {}, the VM is not placed there",
                snap.name, snap.node
            )));
        }
        vm.generation = vm.generation.next();
        vm.spec.desired = DesiredState::Running;
        vm.spec.restore = Some(RestoreRequest {
            snapshot: snap.name.clone(),
            generation: vm.generation,
        });
        if vm.status.phase.is_terminal() {
            vm.status.phase = VmPhase::Scheduled;
            vm.status.exit_code = None;
            vm.status.stopped_ms = None;
            vm.status.message = Some(format!("restoring from snapshot {:?}", snap.name));
        }
        Ok(true)
    })
    .await?;
    state.kick.notify_waiters();
    Ok(vm)
}

/// A VM's snapshot `name`, if there is one.
pub async fn get(state: &AppState, vm: &VmId, name: &str) -> Result<Option<Snapshot>, ApiError> {
    Ok(
        repo::get_json::<Snapshot>(state, &repo::snapshot_key(vm, name))
            .await?
            .map(|(s, _)| s),
    )
}

/// Records the outcome of snapshot `name` of `vm` as its node `node` reports it.
pub async fn report(
    state: &AppState,
    node: &NodeId,
    vm: &Vm,
    name: &str,
    report: &SnapshotReport,
) -> Result<(), ApiError> {
    repo::update_snapshot(state, &vm.id, name, |s| {
        if s.node != *node {
            return Err(RepoError::Forbidden(format!(
                "snapshot {name} is not on node {node}"
            )));
        }
        if s.phase != SnapshotPhase::Pending {
            return Ok(false);
        }
        s.phase = report.phase;
        s.bytes = report.bytes;
        s.pause_ms = report.pause_ms;
        s.message = report.message.clone();
        if report.phase == SnapshotPhase::Ready {
            s.ready_ms = Some(now_ms());
        }
        Ok(true)
    })
    .await?;
    Ok(())
}

/// Where the control plane keeps its copy of a VM's snapshot.
pub fn replica_path(state: &AppState, vm: &VmId, name: &str) -> std::path::PathBuf {
    state
        .data_dir
        .join("snapshots")
        .join(vm.as_str())
        .join(format!("{name}.tar"))
}

/// Records that the control plane keeps a copy of snapshot `name` of `vm`.
pub async fn replicated(state: &AppState, vm: &VmId, name: &str) -> Result<(), ApiError> {
    repo::update_snapshot(state, vm, name, |s| {
        let changed = !s.replicated;
        s.replicated = true;
        Ok(changed)
    })
    .await?;
    Ok(())
}

/// The VM `vm` (its id as given) whose snapshot `name` node `node` may read: one placed on
/// it, or a function's template that an instance on it is restored from.
pub async fn readable_by(
    state: &AppState,
    node: &NodeId,
    vm: &str,
    name: &str,
) -> Result<Vm, ApiError> {
    let vm = match app::agents::vm_on_node(state, node, vm).await {
        Ok(vm) => vm,
        // A function's template: any node with an instance to start from it may read it.
        Err(ApiError::Forbidden(why)) => {
            let id = VmId::parse("vm", vm)?;
            let (vms, _) = repo::list_vms(state).await?;
            let wanted = vms.iter().any(|v| {
                v.status.node.as_ref() == Some(node)
                    && v.spec
                        .function
                        .as_ref()
                        .and_then(|f| f.template.as_ref())
                        .is_some_and(|t| t.vm == id && t.snapshot == name)
            });
            if !wanted {
                return Err(ApiError::Forbidden(why));
            }
            repo::get_vm(state, &id)
                .await?
                .ok_or_else(|| ApiError::not_found("vm", id.as_str()))?
        }
        Err(e) => return Err(e),
    };
    Ok(vm)
}
