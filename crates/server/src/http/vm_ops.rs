//! Operations on a VM beyond its life cycle: pause, resume, snapshots, restore, exec, stats.
//! Each is recorded in the store (desired state, a snapshot or exec record) for the VM's agent
//! to carry out; exec waits for the agent's answer.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    CreateSnapshotRequest, ErrorBody, ExecRequest, ExecResult, RestoreVmRequest, SnapshotList,
    VmStats, MAX_EXEC_ARGS, MAX_EXEC_BYTES, MAX_EXEC_TIMEOUT_MS,
};
use firefleet_types::{
    snapshot::validate_snapshot_name, DesiredState, Snapshot, ValidationError, Vm,
};

use super::{vms::find_vm, ValidJson};
use crate::{app, auth::Caller, ApiError, AppState};

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
    Ok(Json(app::vms::set_desired(state, &vm.id, desired).await?))
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
    let snap = app::snapshots::request(&state, &vm, req.name).await?;
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
        items: app::snapshots::list(&state, &vm.id).await?,
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
    Ok(Json(
        app::snapshots::restore(&state, &vm, &req.snapshot).await?,
    ))
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
    Ok(Json(app::exec::run(&state, &vm, req).await?))
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
