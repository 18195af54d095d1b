//! Operations on a VM beyond its life cycle: pause, resume, snapshots, restore, exec, stats.
//! Each is recorded in the store (desired state, a snapshot or exec record) for the VM's agent
//! to carry out; exec waits for the agent's answer.

use std::time::Duration;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    CreateSnapshotRequest, ErrorBody, ExecRequest, ExecRequestRecord, ExecResult, RestoreVmRequest,
    SnapshotList, VmStats, MAX_EXEC_ARGS, MAX_EXEC_BYTES, MAX_EXEC_TIMEOUT_MS,
};
use firefleet_types::{
    snapshot::validate_snapshot_name, DesiredState, RestoreRequest, Snapshot, SnapshotPhase,
    ValidationError, Vm, VmPhase,
};

use super::{vms::find_vm, ValidJson};
use crate::repo::{self, RepoError};
use crate::{auth::Caller, now_ms, ApiError, AppState};

/// Pause a running VM (its vCPUs stop; memory stays).
#[utoipa::path(post, path = "/v1/vms/{vm}/pause", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    set_desired(&state, &caller, &key, DesiredState::Paused).await
}

/// Resume a paused VM.
#[utoipa::path(post, path = "/v1/vms/{vm}/resume", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    set_desired(&state, &caller, &key, DesiredState::Running).await
}

async fn set_desired(
    state: &AppState,
    caller: &Caller,
    key: &str,
    desired: DesiredState,
) -> Result<Json<Vm>, ApiError> {
    let vm = find_vm(state, caller, key).await?;
    let vm = repo::update_vm(state, &vm.id, |vm| {
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
    Ok(Json(vm))
}

/// Take a snapshot of a running or paused VM (memory, device state, disks), kept on its node.
#[utoipa::path(post, path = "/v1/vms/{vm}/snapshots", request_body = CreateSnapshotRequest, security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 202, body = Snapshot), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "the tenant's snapshot quota is used up (code quota_exceeded)"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ValidJson(req): ValidJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    validate_snapshot_name(&req.name)?;
    let vm = find_vm(&state, &caller, &key).await?;
    let node = match (&vm.status.node, vm.status.phase) {
        (Some(n), VmPhase::Running | VmPhase::Paused) if !vm.deleting => n.clone(),
        _ => {
            return Err(ApiError::Conflict(format!(
                "vm {} is {:?}: only a running or paused VM can be snapshotted",
                vm.spec.name, vm.status.phase
            )))
        }
    };
    let snap = Snapshot::requested(vm.id.clone(), req.name, node, now_ms());
    let quota =
        crate::app::quota::admit(&state, &vm.spec.tenant, crate::app::quota::Adding::Snapshot)
            .await?;
    repo::create_snapshot(&state, &snap).await?;
    drop(quota);
    Ok((StatusCode::ACCEPTED, Json(snap)))
}

/// List a VM's snapshots.
#[utoipa::path(get, path = "/v1/vms/{vm}/snapshots", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = SnapshotList), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<SnapshotList>, ApiError> {
    let vm = find_vm(&state, &caller, &key).await?;
    Ok(Json(SnapshotList {
        items: repo::list_snapshots(&state, &vm.id).await?,
    }))
}

/// Restore a VM from one of its ready snapshots, in a fresh VMM process on the same node. The
/// guest continues from the moment of the snapshot.
#[utoipa::path(post, path = "/v1/vms/{vm}/restore", request_body = RestoreVmRequest, security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ValidJson(req): ValidJson<RestoreVmRequest>,
) -> Result<Json<Vm>, ApiError> {
    validate_snapshot_name(&req.snapshot)
        .map_err(|e| ValidationError::new("snapshot", e.message))?;
    let vm = find_vm(&state, &caller, &key).await?;
    let snap = repo::get_json::<Snapshot>(&state, &repo::snapshot_key(&vm.id, &req.snapshot))
        .await?
        .map(|(s, _)| s)
        .ok_or_else(|| ApiError::not_found("snapshot", req.snapshot.clone()))?;
    if snap.phase != SnapshotPhase::Ready {
        return Err(ApiError::Conflict(format!(
            "snapshot {:?} is {:?}, not ready",
            snap.name, snap.phase
        )));
    }
    let vm = repo::update_vm(&state, &vm.id, |vm| {
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
    Ok(Json(vm))
}

/// Run a command in the guest (through the agent and the guest channel) and wait for it.
#[utoipa::path(post, path = "/v1/vms/{vm}/exec", request_body = ExecRequest, security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ValidJson(req): ValidJson<ExecRequest>,
) -> Result<Json<ExecResult>, ApiError> {
    validate_exec(&req)?;
    let vm = find_vm(&state, &caller, &key).await?;
    if vm.status.phase != VmPhase::Running || vm.deleting {
        return Err(ApiError::Conflict(format!(
            "vm {} is {:?}, not running",
            vm.spec.name, vm.status.phase
        )));
    }
    let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(30_000));
    let rec = ExecRequestRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        vm: vm.id.clone(),
        request: req,
        result: None,
    };
    let key = repo::exec_key(&vm.id, &rec.id);
    let rev = repo::create_exec(&state, &rec).await?;
    // Wait for the agent's result (exec timeout plus time for the agent to notice and answer).
    let wait = timeout + Duration::from_secs(15);
    let outcome = tokio::time::timeout(wait, async {
        let mut watch = state.store.watch(&key, rev + 1).await?;
        loop {
            if let Some((r, _)) = repo::get_json::<ExecRequestRecord>(&state, &key).await? {
                if let Some(result) = r.result {
                    return Ok::<_, ApiError>(Some(result));
                }
            } else {
                return Ok(None);
            }
            match watch.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    watch = state
                        .store
                        .watch(&key, state.store.revision().await? + 1)
                        .await?
                }
            }
        }
    })
    .await;
    let _ = state.store.delete(&key, None).await;
    match outcome {
        Ok(Ok(Some(result))) => Ok(Json(result)),
        Ok(Ok(None)) => Err(ApiError::Conflict(
            "the exec was cancelled (the VM went away)".to_owned(),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Timeout(format!(
            "no answer from the VM's agent within {} s",
            wait.as_secs()
        ))),
    }
}

fn validate_exec(req: &ExecRequest) -> Result<(), ValidationError> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(ValidationError::new("argv", "must name a program"));
    }
    if req.argv.len() > MAX_EXEC_ARGS {
        return Err(ValidationError::new(
            "argv",
            format!("at most {MAX_EXEC_ARGS} arguments"),
        ));
    }
    let bytes: usize = req.argv.iter().map(String::len).sum::<usize>()
        + req.stdin_b64.as_ref().map_or(0, String::len);
    if bytes > MAX_EXEC_BYTES {
        return Err(ValidationError::new(
            "argv",
            format!("arguments and stdin at most {MAX_EXEC_BYTES} bytes"),
        ));
    }
    if let Some(t) = req.timeout_ms {
        if t == 0 || t > MAX_EXEC_TIMEOUT_MS {
            return Err(ValidationError::new(
                "timeout_ms",
                format!("must be between 1 and {MAX_EXEC_TIMEOUT_MS}"),
            ));
        }
    }
    if let Some(s) = &req.stdin_b64 {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| ValidationError::new("stdin_b64", format!("not base64: {e}")))?;
    }
    Ok(())
}

/// The latest statistics of a VM (host side: VMM CPU, memory, TAP counters; guest side from the
/// guest channel), as its agent last reported them.
#[utoipa::path(get, path = "/v1/vms/{vm}/stats", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = VmStats), (status = 404, body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<VmStats>, ApiError> {
    let vm = find_vm(&state, &caller, &key).await?;
    let stats = state.stats.lock().ok().and_then(|m| m.get(&vm.id).cloned());
    stats
        .map(Json)
        .ok_or_else(|| ApiError::not_found("stats of vm", vm.spec.name))
}
