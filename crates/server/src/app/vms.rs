//! VMs: creation (quota, quarantine check, admission, then the record with its compliance
//! record), stop, pause and resume, deletion, and the console.

use firefleet_api::ConsoleChunk;
use firefleet_types::{DesiredState, TenantId, Vm, VmId, VmPhase, VmSpec, VmStatus};

use crate::repo::{self, RepoError};
use crate::{app, now_ms, ApiError, AppState};

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

/// Creates a VM a caller asked for: counted against its tenant's quota and written under the
/// tenant's lock (concurrent creates cannot overshoot), then as [`create_admitted`]. Returns
/// the VM and the admission warnings.
pub async fn create_in_quota(
    state: &AppState,
    spec: VmSpec,
) -> Result<(Vm, Vec<String>), ApiError> {
    let quota =
        app::quota::admit(state, &spec.tenant, app::quota::Adding::Vm(spec.resources)).await?;
    let (vm, warnings) = create_admitted(state, spec).await?;
    drop(quota);
    state.kick.notify_waiters();
    Ok((vm, warnings))
}

/// Stops a VM (idempotent). Its record stays; a VM never placed is Stopped at once.
pub async fn stop(state: &AppState, id: &VmId) -> Result<Vm, ApiError> {
    let vm = repo::update_vm(state, id, |vm| {
        if vm.spec.desired == DesiredState::Stopped {
            return Ok(false);
        }
        vm.spec.desired = DesiredState::Stopped;
        vm.generation = vm.generation.next();
        if vm.status.phase == VmPhase::Pending {
            // Never placed: nothing runs anywhere, so it is stopped now.
            vm.status.phase = VmPhase::Stopped;
            vm.status.stopped_ms = Some(now_ms());
        }
        Ok(true)
    })
    .await?;
    state.kick.notify_waiters();
    Ok(vm)
}

/// What deleting a VM did.
pub enum Deletion {
    /// It never reached a node: it is gone.
    Gone,
    /// It is on a node: stopped and its state removed by its agent first. The VM as it is now
    /// (`deleting`), unless it went meanwhile.
    Deleting(Option<Box<Vm>>),
}

/// Deletes a VM (see [`Deletion`]).
pub async fn delete(state: &AppState, vm: &Vm) -> Result<Deletion, ApiError> {
    if vm.status.node.is_none() {
        delete_record(state, vm).await?;
        return Ok(Deletion::Gone);
    }
    remove(state, vm).await?;
    Ok(Deletion::Deleting(
        repo::get_vm(state, &vm.id).await?.map(Box::new),
    ))
}

/// Pauses (`Paused`) or resumes (`Running`) a VM that runs or is paused (`Conflict` for one
/// stopped, at rest or being deleted).
pub async fn set_desired(
    state: &AppState,
    id: &VmId,
    desired: DesiredState,
) -> Result<Vm, ApiError> {
    let vm = repo::update_vm(state, id, |vm| {
        if vm.deleting || vm.spec.desired == DesiredState::Stopped || vm.status.phase.is_terminal()
        {
            return Err(RepoError::Conflict(format!(
                "vm {} is {:?}: only a running or paused VM can be paused or resumed",
                vm.spec.name, vm.status.phase
            )));
        }
        if vm.spec.desired == desired {
            return Ok(false);
        }
        vm.spec.desired = desired;
        vm.generation = vm.generation.next();
        Ok(true)
    })
    .await?;
    state.kick.notify_waiters();
    Ok(vm)
}

/// A VM's console from `offset` (or from the oldest byte kept, when that is later).
pub async fn console(state: &AppState, vm: &Vm, offset: u64) -> Result<ConsoleChunk, ApiError> {
    let rec = repo::get_console(state, &vm.id).await?;
    let start = offset.max(rec.start);
    let skip = usize::try_from(start - rec.start)
        .unwrap_or(usize::MAX)
        .min(rec.data.len());
    let data = String::from_utf8_lossy(&rec.data[skip..]).into_owned();
    let next_offset = rec.start + rec.data.len() as u64;
    let finished = vm.status.phase.is_terminal() && vm.status.stopped_ms.is_some();
    Ok(ConsoleChunk {
        data,
        offset: start.min(next_offset),
        next_offset,
        finished,
    })
}

/// Every VM, with the store revision they were read at.
pub async fn all(state: &AppState) -> Result<(Vec<Vm>, u64), ApiError> {
    Ok(repo::list_vms(state).await?)
}

/// VM `id`, if it exists.
pub async fn get(state: &AppState, id: &VmId) -> Result<Option<Vm>, ApiError> {
    Ok(repo::get_vm(state, id).await?)
}

/// A VM's id by its name within `tenant`, if there is one.
pub async fn id_by_name(
    state: &AppState,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<VmId>, ApiError> {
    Ok(repo::vm_id_by_name(state, tenant, name).await?)
}

/// One page of the VMs of `tenant` (all: None) by name, and the next page's cursor.
pub async fn list(
    state: &AppState,
    tenant: Option<&TenantId>,
    page: &repo::Page,
) -> Result<(Vec<Vm>, Option<String>), ApiError> {
    Ok(repo::vm_page(state, tenant, page).await?)
}
