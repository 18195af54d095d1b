//! `/v1/functions`: deploy, list, get, remove, logs and invoke functions; the plain end-user
//! route `/fn/{tenant}/{name}`; and the agents' side of invocations.
//!
//! Deploying records the function (phase Deploying); the functions controller boots its
//! template VM, snapshots it and marks it Ready. Invocations go through the gateway
//! ([`crate::app::functions::Gateway`]).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use firefleet_api::{
    AgentInvocationResult, AgentInvocations, DeployFunctionRequest, ErrorBody, FunctionList,
    FunctionLogs, FunctionView, InvokeResponse,
};
use firefleet_types::{FunctionSpec, TenantId};
use serde::Deserialize;

use super::{ValidJson, ValidQuery};
use crate::{
    app,
    auth::{AgentNode, Caller},
    ApiError, AppState,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Whose function a path names: the caller's tenant, or `?tenant=` for admins.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    #[serde(default)]
    tenant: Option<String>,
    /// Invoke only: the region the request comes from (nearest instance first).
    #[serde(default)]
    region: Option<String>,
}

fn tenant_of(caller: &Caller, q: &TenantQuery) -> Result<TenantId, ApiError> {
    match &q.tenant {
        Some(t) => {
            let t: TenantId = TenantId::parse("tenant", t)?;
            if t != caller.tenant {
                caller.require_admin()?;
            }
            Ok(t)
        }
        None => Ok(caller.tenant.clone()),
    }
}

/// Deploy a function (or change one: a new spec makes a new template; instances of the old
/// one are replaced as they go idle).
#[utoipa::path(post, path = "/v1/functions", request_body = DeployFunctionRequest, security(("bearer" = [])),
    responses((status = 201, body = FunctionView), (status = 200, body = FunctionView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "refused by policy (code policy_denied, with reasons) or by the tenant's function quota (code quota_exceeded)")))]
pub async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<DeployFunctionRequest>,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<FunctionView>), ApiError> {
    let tenant = match req.tenant {
        Some(t) if t != caller.tenant => {
            caller.require_admin()?;
            t
        }
        _ => caller.tenant.clone(),
    };
    let spec = FunctionSpec {
        name: req.name,
        tenant,
        image: req.image,
        cmd: req.cmd,
        http_port: req.http_port,
        http_path: req.http_path,
        resources: req.resources,
        concurrency: req.concurrency,
        min: req.min,
        max: req.max,
        regions: req.regions,
        timeout_ms: req
            .timeout_ms
            .unwrap_or(firefleet_types::function::DEFAULT_TIMEOUT_MS),
        keep_alive_secs: req.keep_alive_secs,
        runtime: req.runtime,
        public: req.public,
    };
    spec.validate()?;
    let deployed = app::functions::deploy(&state, spec).await?;
    let status = if deployed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        super::warning_headers(&deployed.warnings),
        Json(deployed.view),
    ))
}

/// List the caller's functions (an admin sees all, or one tenant's with `tenant=`), a page at
/// a time by tenant and name.
#[utoipa::path(get, path = "/v1/functions", security(("bearer" = [])), params(super::vms::ListQuery),
    responses((status = 200, body = FunctionList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<super::vms::ListQuery>,
) -> Result<Json<FunctionList>, ApiError> {
    let page = super::paging::parse(q.limit.as_deref(), q.after)?;
    let tenant = super::paging::scope(&caller, q.tenant.as_deref())?;
    let (items, next) = app::functions::list(&state, tenant.as_ref(), &page).await?;
    Ok(Json(FunctionList { items, next }))
}

/// Get a function with its instances and counters.
#[utoipa::path(get, path = "/v1/functions/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "function name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63), ("tenant" = Option<String>, Query, description = "tenant (admins)", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = FunctionView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ValidQuery(q): ValidQuery<TenantQuery>,
) -> Result<Json<FunctionView>, ApiError> {
    let f = app::functions::find(&state, &tenant_of(&caller, &q)?, &name).await?;
    Ok(Json(app::functions::view_of(&state, f).await?))
}

/// Remove a function: its record at once; its template and instances are stopped and removed
/// (the controller removes any VM of a function that no longer exists).
#[utoipa::path(delete, path = "/v1/functions/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "function name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63), ("tenant" = Option<String>, Query, description = "tenant (admins)", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ValidQuery(q): ValidQuery<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    app::functions::remove(&state, &tenant_of(&caller, &q)?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The consoles of a function's template and instances.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", security(("bearer" = [])),
    params(("name" = String, Path, description = "function name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63), ("tenant" = Option<String>, Query, description = "tenant (admins)", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = FunctionLogs), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ValidQuery(q): ValidQuery<TenantQuery>,
) -> Result<Json<FunctionLogs>, ApiError> {
    let f = app::functions::find(&state, &tenant_of(&caller, &q)?, &name).await?;
    Ok(Json(app::functions::logs(&state, &f).await?))
}

/// Invoke a function: the request body goes to the handler as is; the answer says how it went
/// (status, body, cold start, latency).
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    security(("bearer" = [])),
    params(("name" = String, Path, description = "function name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63), ("tenant" = Option<String>, Query, description = "tenant (admins)", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63),
           ("region" = Option<String>, Query, description = "the caller's region: nearest instances first")),
    responses((status = 200, body = InvokeResponse), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 504, body = ErrorBody)))]
pub async fn invoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ValidQuery(q): ValidQuery<TenantQuery>,
    body: Bytes,
) -> Result<Json<InvokeResponse>, ApiError> {
    let f = app::functions::find(&state, &tenant_of(&caller, &q)?, &name).await?;
    let done = app::functions::invoke(&state, &f, &body, q.region.as_deref()).await?;
    let out = B64.decode(&done.result.body_b64).unwrap_or_default();
    let stderr = B64.decode(&done.result.stderr_b64).unwrap_or_default();
    Ok(Json(InvokeResponse {
        status: done.result.status,
        body: String::from_utf8_lossy(&out).into_owned(),
        body_b64: done.result.body_b64,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        error: done.result.error,
        cold_start: done.cold_start,
        instance: done.vm,
        node: done.node,
        latency_ms: done.latency_ms,
        duration_ms: done.result.duration_ms,
    }))
}

/// The end users' route: `/fn/{tenant}/{name}`, body in, body out, the handler's status as the
/// HTTP status. A public function needs no token; any other needs one of its tenant (or an
/// admin's). A function the caller may not call is answered exactly as a missing one (404), so
/// that names cannot be found by probing.
pub async fn plain(
    State(state): State<AppState>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Extension(authn): axum::Extension<crate::auth::Authn>,
    ValidQuery(q): ValidQuery<TenantQuery>,
    body: Bytes,
) -> Response {
    let result = async {
        let tenant = TenantId::parse("tenant", &tenant)?;
        let f = app::functions::find(&state, &tenant, &name).await?;
        if !f.spec.public {
            let allowed = authn.caller().is_ok_and(|c| {
                c.role == firefleet_api::Role::Admin
                    || (c.role == firefleet_api::Role::Tenant && c.tenant == tenant)
            });
            if !allowed {
                return Err(ApiError::not_found("function", name.as_str()));
            }
        }
        let region = q.region.clone().or_else(|| {
            headers
                .get("x-firefleet-region")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        app::functions::invoke(&state, &f, &body, region.as_deref()).await
    }
    .await;
    match result {
        Ok(done) => {
            let out = B64.decode(&done.result.body_b64).unwrap_or_default();
            let status =
                StatusCode::from_u16(done.result.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = (status, out).into_response();
            let h = resp.headers_mut();
            for (k, v) in [
                ("x-firefleet-cold-start", done.cold_start.to_string()),
                ("x-firefleet-instance", done.vm.to_string()),
                ("x-firefleet-latency-ms", done.latency_ms.to_string()),
                (
                    "x-firefleet-duration-ms",
                    done.result.duration_ms.to_string(),
                ),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            if let Some(e) = done.result.error {
                if let Ok(v) = HeaderValue::from_str(&e.replace(['\r', '\n'], " ")) {
                    h.insert("x-firefleet-error", v);
                }
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationsQuery {
    /// Longest wait in milliseconds (default and cap 25000).
    wait_ms: Option<u64>,
}

/// The invocations queued for the calling node (waits for some up to `wait_ms`).
#[utoipa::path(get, path = "/v1/agent/invocations", security(("mtls" = [])),
    params(("wait_ms" = Option<u64>, Query, description = "longest wait")),
    responses((status = 200, body = AgentInvocations), (status = 401, body = ErrorBody)))]
pub async fn agent_take(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    ValidQuery(q): ValidQuery<InvocationsQuery>,
) -> Result<Json<AgentInvocations>, ApiError> {
    let wait = std::time::Duration::from_millis(q.wait_ms.unwrap_or(25_000).min(25_000));
    let items = state.gateway.relay.take(&node, wait).await;
    Ok(Json(AgentInvocations { items }))
}

/// The result of an invocation this node took.
#[utoipa::path(post, path = "/v1/agent/invocations/{id}", request_body = AgentInvocationResult, security(("mtls" = [])),
    params(("id" = String, Path, description = "invocation id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn agent_result(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(id): Path<String>,
    ValidJson(result): ValidJson<AgentInvocationResult>,
) -> Result<StatusCode, ApiError> {
    if state.gateway.relay.complete(&node, &id, result) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("invocation", id))
    }
}
