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
    AgentInvocationResult, AgentInvocations, DeployFunctionRequest, ErrorBody,
    FunctionInstanceInfo, FunctionList, FunctionLog, FunctionLogs, FunctionView, InvokeResponse,
    MAX_INVOKE_BYTES,
};
use firefleet_types::{
    Function, FunctionPhase, FunctionSpec, FunctionStatus, Generation, NodeInfo, TenantId, Vm,
};
use serde::Deserialize;

use super::{ValidJson, ValidQuery};
use crate::{
    app::functions::{function_vms, node_region, FnKey, InvokeError},
    auth::{AgentNode, Caller},
    now_ms, repo, ApiError, AppState,
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

async fn find(state: &AppState, tenant: &TenantId, name: &str) -> Result<Function, ApiError> {
    firefleet_types::validate::check_name("function", name)?;
    repo::get_function(state, tenant, name)
        .await?
        .map(|(f, _)| f)
        .ok_or_else(|| ApiError::not_found("function", name))
}

/// The VMs and nodes a function's view is made from (read once per request): the VMs of the
/// functions' tenants, each read through its names' keys (never every VM in the store).
async fn fleet<'a>(
    state: &AppState,
    tenants: impl IntoIterator<Item = &'a TenantId>,
) -> Result<(Vec<Vm>, Vec<NodeInfo>), ApiError> {
    let tenants: std::collections::BTreeSet<&TenantId> = tenants.into_iter().collect();
    let mut vms = Vec::new();
    for t in tenants {
        vms.extend(crate::app::quota::tenant_vms(state, t).await?);
    }
    let (nodes, _) = repo::list_json::<NodeInfo>(state, "/nodes/").await?;
    Ok((vms, nodes))
}

/// What the gateway and the store know of a function.
fn view(state: &AppState, f: Function, vms: &[Vm], nodes: &[NodeInfo]) -> FunctionView {
    let key: FnKey = (f.spec.tenant.clone(), f.spec.name.clone());
    let (counters, wanted, reason, live) = state.gateway.with(&key, |st| {
        (
            st.counters.clone(),
            st.wanted.clone(),
            st.reason.clone(),
            st.instances
                .iter()
                .map(|(id, i)| {
                    (
                        id.clone(),
                        (i.in_flight, i.idle_since_ms, st.deadlines.get(id).copied()),
                    )
                })
                .collect::<std::collections::HashMap<_, _>>(),
        )
    });
    let instances = function_vms(vms, &f.spec)
        .filter(|vm| {
            vm.spec
                .function
                .as_ref()
                .is_some_and(|b| b.template.is_some())
        })
        .map(|vm| {
            let (in_flight, idle_since_ms, keep_alive_until_ms) =
                live.get(&vm.id).copied().unwrap_or((0, None, None));
            FunctionInstanceInfo {
                vm: vm.id.clone(),
                name: vm.spec.name.clone(),
                phase: vm.status.phase,
                node: vm.status.node.clone(),
                region: vm
                    .status
                    .node
                    .as_ref()
                    .map(|n| node_region(nodes, n))
                    .filter(|r| !r.is_empty()),
                in_flight,
                idle_since_ms,
                keep_alive_until_ms,
            }
        })
        .collect();
    FunctionView {
        function: f,
        instances,
        counters,
        wanted,
        reason,
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
    let fresh = Function {
        spec: spec.clone(),
        generation: Generation(1),
        status: FunctionStatus {
            phase: FunctionPhase::Deploying,
            message: None,
            template: None,
        },
        created_ms: now_ms(),
    };
    // Admitted as a function and as one of its instances (so VM policies hold for it too).
    let instance = crate::app::functions::function_vm_spec(
        &fresh,
        format!("{}-admission", spec.name),
        spec.regions.clone(),
        None,
    );
    let admission = crate::app::policy::admit_function(&state, &spec, &instance).await?;
    // A new function counts against the tenant's quota; counted and written under its lock.
    let quota = crate::app::quota::admit(
        &state,
        &spec.tenant,
        crate::app::quota::Adding::Function(&spec.name),
    )
    .await?;
    let (func, created) = loop {
        match repo::get_function(&state, &spec.tenant, &spec.name).await? {
            None => {
                let f = fresh.clone();
                if repo::put_function(&state, &f, None).await? {
                    break (f, true);
                }
            }
            // The same spec again changes nothing (unless it failed: then it is a retry).
            Some((f, _)) if f.spec == spec && f.status.phase != FunctionPhase::Failed => {
                break (f, false)
            }
            Some((mut f, rev)) => {
                // What the template was made from changed: a new template. Scaling limits,
                // regions and timeouts apply to the running instances as they are.
                let remake = (
                    &f.spec.image,
                    &f.spec.cmd,
                    f.spec.http_port,
                    f.spec.resources,
                    f.spec.runtime,
                ) != (
                    &spec.image,
                    &spec.cmd,
                    spec.http_port,
                    spec.resources,
                    spec.runtime,
                );
                f.spec = spec.clone();
                f.generation = f.generation.next();
                if remake || f.status.phase == FunctionPhase::Failed {
                    f.status = FunctionStatus {
                        phase: FunctionPhase::Deploying,
                        message: None,
                        template: None,
                    };
                }
                if repo::put_function(&state, &f, Some(rev)).await? {
                    break (f, false);
                }
            }
        }
    };
    drop(quota);
    state.gateway.demand.notify_one();
    let (vms, nodes) = fleet(&state, [&func.spec.tenant]).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        super::warning_headers(&admission.warnings),
        Json(view(&state, func, &vms, &nodes)),
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
    let page = super::paging::Page::parse(q.limit.as_deref(), q.after)?;
    let tenant = super::paging::scope(&caller, q.tenant.as_deref())?;
    let prefix = match &tenant {
        Some(t) => format!("/functions/{t}/"),
        None => "/functions/".to_owned(),
    };
    let (kvs, _) = state.store.list(&prefix).await?;
    let (keys, next) = page.select(&kvs, &prefix);
    let functions = keys
        .into_iter()
        .map(|kv| {
            serde_json::from_slice::<Function>(&kv.value)
                .map_err(|e| ApiError::Internal(format!("corrupt record at {}: {e}", kv.key)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (vms, nodes) = fleet(&state, functions.iter().map(|f| &f.spec.tenant)).await?;
    let items = functions
        .into_iter()
        .map(|f| view(&state, f, &vms, &nodes))
        .collect();
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
    let f = find(&state, &tenant_of(&caller, &q)?, &name).await?;
    let (vms, nodes) = fleet(&state, [&f.spec.tenant]).await?;
    Ok(Json(view(&state, f, &vms, &nodes)))
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
    let tenant = tenant_of(&caller, &q)?;
    let f = find(&state, &tenant, &name).await?;
    repo::delete_function(&state, &tenant, &name).await?;
    let vms = crate::app::quota::tenant_vms(&state, &tenant).await?;
    state.gateway.forget(&(tenant, name));
    for vm in function_vms(&vms, &f.spec) {
        crate::app::vms::remove(&state, vm).await?;
    }
    state.kick.notify_waiters();
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
    let f = find(&state, &tenant_of(&caller, &q)?, &name).await?;
    let vms = crate::app::quota::tenant_vms(&state, &f.spec.tenant).await?;
    let mut items = Vec::new();
    for vm in function_vms(&vms, &f.spec) {
        let rec = repo::get_console(&state, &vm.id).await?;
        items.push(FunctionLog {
            vm: vm.id.clone(),
            name: vm.spec.name.clone(),
            data: String::from_utf8_lossy(&rec.data).into_owned(),
        });
    }
    Ok(Json(FunctionLogs { items }))
}

async fn call(
    state: &AppState,
    f: &Function,
    body: &[u8],
    region: Option<&str>,
) -> Result<crate::app::functions::Invoked, ApiError> {
    if body.len() > MAX_INVOKE_BYTES {
        return Err(ApiError::TooLarge {
            limit: MAX_INVOKE_BYTES,
        });
    }
    if f.status.phase == FunctionPhase::Failed {
        return Err(ApiError::Conflict(format!(
            "function {} failed to deploy: {}",
            f.spec.name,
            f.status.message.as_deref().unwrap_or("unknown cause")
        )));
    }
    let key: FnKey = (f.spec.tenant.clone(), f.spec.name.clone());
    state
        .gateway
        .invoke(&key, &f.spec, body, region, state.functions.hold)
        .await
        .map_err(|e| match e {
            e @ InvokeError::Busy { .. } => ApiError::Unavailable(e.to_string()),
            e @ InvokeError::NoInstance { .. } => ApiError::Timeout(e.to_string()),
            e @ InvokeError::Relay { .. } => ApiError::Timeout(firefleet_types::error_chain(&e)),
        })
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
    let f = find(&state, &tenant_of(&caller, &q)?, &name).await?;
    let done = call(&state, &f, &body, q.region.as_deref()).await?;
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
        let f = find(&state, &tenant, &name).await?;
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
        call(&state, &f, &body, region.as_deref()).await
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
