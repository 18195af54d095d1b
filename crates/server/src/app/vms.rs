//! VMs: creation (quarantine check, admission, then the record with its compliance record),
//! removal and the deletion of a VM's records.

use firefleet_types::{DesiredState, Vm, VmId, VmSpec, VmStatus};

use crate::{app, now_ms, repo, ApiError, AppState};

/// Creates a VM (phase Pending), unique by (tenant, name), after the same checks as
/// [`create_admitted`]; the admission warnings are dropped.
pub async fn create(state: &AppState, spec: VmSpec) -> Result<Vm, ApiError> {
    create_admitted(state, spec).await.map(|(vm, _)| vm)
}

/// Creates a VM after its checks: refused (`Conflict`) when the guard quarantined its image,
/// refused (`PolicyDenied`) when a policy in `deny` mode refuses its spec; otherwise stored
/// with its compliance record (one transaction). Returns the VM and the admission warnings.
pub async fn create_admitted(
    state: &AppState,
    spec: VmSpec,
) -> Result<(Vm, Vec<String>), ApiError> {
    app::threats::check_quarantine(state, &spec.image).await?;
    let mut admission = app::policy::admit_vm(state, &spec).await?;
    let id: VmId = VmId::parse("id", &uuid::Uuid::new_v4().to_string())?;
    admission.record.record.subject = id.to_string();
    let vm = Vm {
        id,
        generation: firefleet_types::Generation(1),
        spec,
        status: VmStatus::new(now_ms()),
        deleting: false,
    };
    repo::create_vm_record(state, &vm, &admission.record).await?;
    Ok((vm, admission.warnings))
}

/// Removes a VM's record, its name, its console, its snapshot, exec and migration records and
/// its snapshots' files.
pub async fn delete_record(state: &AppState, vm: &Vm) -> Result<(), ApiError> {
    repo::delete_vm_records(state, &vm.id).await?;
    let _ = tokio::fs::remove_dir_all(state.data_dir.join("snapshots").join(vm.id.as_str())).await;
    repo::delete_vm_keys(state, vm).await?;
    Ok(())
}

/// Removes a VM: at once if it never reached a node, else through its agent (`deleting`).
pub async fn remove(state: &AppState, vm: &Vm) -> Result<(), ApiError> {
    if vm.status.node.is_none() {
        return delete_record(state, vm).await;
    }
    repo::update_vm(state, &vm.id, |vm| {
        if vm.deleting {
            return Ok(false);
        }
        vm.deleting = true;
        vm.spec.desired = DesiredState::Stopped;
        vm.generation = vm.generation.next();
        Ok(true)
    })
    .await?;
    state.kick.notify_waiters();
    Ok(())
}
