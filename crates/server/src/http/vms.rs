//! `/v1/vms`: create, list, get, stop, delete, logs. A tenant sees only its own VMs; another
//! tenant's VM is answered as not found.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{ConsoleChunk, CreateVmRequest, ErrorBody, VmList};
use firefleet_types::{DesiredState, Vm, VmId, VmSpec};
use serde::Deserialize;

use super::{ValidJson, ValidQuery};
use crate::{app, auth::Caller, ApiError, AppState};

/// Finds a VM the caller may see, by id or by name within the caller's tenant.
pub(crate) async fn find_vm(state: &AppState, caller: &Caller, key: &str) -> Result<Vm, ApiError> {
    let not_found = || ApiError::not_found("vm", key);
    if let Ok(id) = key.parse::<VmId>() {
        if let Some(vm) = app::vms::get(state, &id).await? {
            if caller.owns(&vm) {
                return Ok(vm);
            }
            return Err(not_found());
        }
    }
    if firefleet_types::validate::check_name("vm", key).is_ok() {
        if let Some(id) = app::vms::id_by_name(state, &caller.tenant, key).await? {
            if let Some(vm) = app::vms::get(state, &id).await? {
                if caller.owns(&vm) {
                    return Ok(vm);
                }
            }
        }
    }
    Err(not_found())
}

/// Create a VM.
#[utoipa::path(post, path = "/v1/vms", request_body = CreateVmRequest, security(("bearer" = [])),
    responses((status = 201, body = Vm), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "refused by policy (code policy_denied, with reasons) or by the tenant's quota (code quota_exceeded)"),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<CreateVmRequest>,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<Vm>), ApiError> {
    let tenant = match req.tenant {
        Some(t) if t != caller.tenant => {
            caller.require_admin()?;
            t
        }
        _ => caller.tenant.clone(),
    };
    let spec = VmSpec {
        name: req.name,
        tenant,
        image: req.image,
        resources: req.resources,
        labels: req.labels,
        cmd: req.cmd,
        restart_policy: req.restart_policy,
        desired: DesiredState::Running,
        restore: None,
        network: req.network,
        runtime: req.runtime,
        disks: req.disks,
        placement: req.placement,
        function: None,
    };
    spec.validate()?;
    let (vm, warnings) = app::vms::create_in_quota(&state, spec).await?;
    Ok((
        StatusCode::CREATED,
        super::warning_headers(&warnings),
        Json(vm),
    ))
}

/// Query of `GET /v1/vms`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Items per page (default 500, at most 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The cursor the previous page gave as `next` (empty: the first page).
    #[param(pattern = "^[a-z0-9-]*(/[a-z0-9-]+)?$", max_length = 127)]
    pub after: Option<String>,
    /// Only this tenant's VMs (admins; a tenant sees only its own anyway).
    pub tenant: Option<String>,
}

/// List the caller's VMs (an admin sees all, or one tenant's with `tenant=`), a page at a time
/// by tenant and name: each page reads the names' keys and only the page's VMs.
#[utoipa::path(get, path = "/v1/vms", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = VmList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<VmList>, ApiError> {
    let page = super::paging::parse(q.limit.as_deref(), q.after)?;
    let tenant = super::paging::scope(&caller, q.tenant.as_deref())?;
    let (items, next) = app::vms::list(&state, tenant.as_ref(), &page).await?;
    Ok(Json(VmList { items, next }))
}

/// Get a VM by id or name.
#[utoipa::path(get, path = "/v1/vms/{vm}", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(find_vm(&state, &caller, &key).await?))
}

/// Stop a VM (idempotent). Its record stays; its status becomes Stopped.
#[utoipa::path(post, path = "/v1/vms/{vm}/stop", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    let vm = find_vm(&state, &caller, &key).await?;
    Ok(Json(app::vms::stop(&state, &vm.id).await?))
}

/// Delete a VM. A VM on a node is stopped and its state removed by the agent first (202, the VM
/// shows `deleting`); one that never ran anywhere goes at once (204).
#[utoipa::path(delete, path = "/v1/vms/{vm}", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 202, body = Vm), (status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let vm = find_vm(&state, &caller, &key).await?;
    match app::vms::delete(&state, &vm).await? {
        app::vms::Deletion::Gone => Ok(StatusCode::NO_CONTENT.into_response()),
        app::vms::Deletion::Deleting(vm) => {
            let vm = *vm.ok_or_else(|| ApiError::not_found("vm", key))?;
            Ok((StatusCode::ACCEPTED, Json(vm)).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    offset: u64,
}

/// Read a VM's console from an offset.
#[utoipa::path(get, path = "/v1/vms/{vm}/logs", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name"), ("offset" = Option<u64>, Query, description = "console offset")),
    responses((status = 200, body = ConsoleChunk), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ValidQuery(q): ValidQuery<LogsQuery>,
) -> Result<Json<ConsoleChunk>, ApiError> {
    let vm = find_vm(&state, &caller, &key).await?;
    Ok(Json(app::vms::console(&state, &vm, q.offset).await?))
}
