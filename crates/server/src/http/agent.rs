//! `/v1/agent/*`: what agents call. Enrollment is authenticated by a one-time join token; every
//! other call by the client certificate the agent got from enrollment.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{Path, State},
    Extension, Json,
};
use firefleet_api::{
    ConsoleOffset, EnrollRequest, EnrollResponse, ErrorBody, ExecRequestRecord, ExecResult,
    HeartbeatRequest, IntentsResponse, MigrationIntent, RenewRequest, RenewResponse,
    SnapshotReport, VmIntent, VmStats, VmStatusReport, MAX_CONSOLE_CHUNK,
};
use firefleet_types::{
    node::{NodeReadiness, NodeStatus},
    topology::validate_labels,
    Migration, NodeId, Snapshot, SnapshotPhase, Vm, VmId, VmPhase,
};
use serde::Deserialize;

use super::audit::AuditActor;
use super::{ValidJson, ValidQuery};
use crate::{
    app,
    auth::{AgentCert, AgentNode},
    now_ms,
    repo::{self, RepoError},
    ApiError, AppState,
};

/// Longest an intents long-poll waits.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Enroll a node: trade a one-time join token and a CSR for a client certificate. A name that
/// is enrolled is refused (409) unless the join token was made for it (re-enrolment: the
/// node's older certificates are revoked, its cordon kept unless the token sets it).
#[utoipa::path(post, path = "/v1/agent/enroll", request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    ValidJson(req): ValidJson<EnrollRequest>,
) -> Result<(Extension<AuditActor>, Json<EnrollResponse>), ApiError> {
    validate_labels("labels", &req.labels)?;
    // Sign first (pure), so a bad CSR does not burn the join token; the certificate is
    // accepted only once the enrolment is stored.
    let cert = sign_agent_csr(&state, &req.csr_pem, &req.node)?;
    let enrolment = repo::Enrolment {
        node: req.node.clone(),
        labels: req.labels,
        serial: cert.serial,
        not_after_ms: unix_ms(cert.not_after),
    };
    let enrolled = app::nodes::enroll(&state, &req.join_token, &enrolment).await?;
    tracing::info!(node = %req.node, again = enrolled == repo::Enrolled::Again, "node enrolled");
    Ok((
        Extension(AuditActor(format!("node:{}", req.node))),
        Json(EnrollResponse {
            cert_pem: cert.cert_pem,
            ca_pem: state.ca.cert_pem().to_owned(),
        }),
    ))
}

/// Renew the calling agent's certificate: a new CSR (fresh key) for a new certificate, which
/// becomes the node's current one. The certificate presented stays accepted until the new one
/// is first used (an agent that crashed before saving the new one comes back with it), then
/// is revoked.
#[utoipa::path(post, path = "/v1/agent/renew", request_body = RenewRequest, security(("mtls" = [])),
    responses((status = 200, body = RenewResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn renew(
    State(state): State<AppState>,
    AgentCert(presented): AgentCert,
    ValidJson(req): ValidJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let cert = sign_agent_csr(&state, &req.csr_pem, &presented.node)?;
    let not_after_ms = unix_ms(cert.not_after);
    repo::renew_node_cert(
        &state,
        &presented.node,
        &presented.serial,
        &cert.serial,
        not_after_ms,
    )
    .await?;
    tracing::info!(node = %presented.node, serial = %cert.serial, "node certificate renewed");
    Ok(Json(RenewResponse {
        cert_pem: cert.cert_pem,
        not_after_ms,
    }))
}

/// Signs an agent's CSR for `node` with the configured lifetime; a bad CSR is the caller's
/// fault (400 naming `csr_pem`).
fn sign_agent_csr(
    state: &AppState,
    csr_pem: &str,
    node: &NodeId,
) -> Result<firefleet_pki::AgentCert, ApiError> {
    state
        .ca
        .sign_agent_csr(csr_pem, node.as_str(), state.agent_cert_lifetime)
        .map_err(|e| ApiError::BadRequest {
            message: format!("csr_pem: {}", firefleet_types::error_chain(&e)),
            field: Some("csr_pem".to_owned()),
        })
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Heartbeat with the node's facts.
#[utoipa::path(post, path = "/v1/agent/heartbeat", request_body = HeartbeatRequest, security(("mtls" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    ValidJson(req): ValidJson<HeartbeatRequest>,
) -> Result<axum::http::StatusCode, ApiError> {
    if let Some(labels) = &req.labels {
        validate_labels("labels", labels)?;
    }
    let now = now_ms();
    let mut became_ready = false;
    repo::update_node(&state, &node, |n| {
        became_ready = n.status.readiness != NodeReadiness::Ready;
        if let Some(labels) = &req.labels {
            n.labels = labels.clone();
        }
        n.status = NodeStatus {
            readiness: NodeReadiness::Ready,
            last_heartbeat_ms: now,
            facts: Some(req.facts.clone()),
        };
        true
    })
    .await?;
    if became_ready {
        state.kick.notify_waiters();
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentsQuery {
    /// Wait until the VMs change after this revision.
    after: Option<u64>,
    /// Longest wait in milliseconds (default and cap 30000).
    wait_ms: Option<u64>,
}

/// The VMs placed on the calling node; with `after`, waits until they change.
#[utoipa::path(get, path = "/v1/agent/intents", security(("mtls" = [])),
    params(("after" = Option<u64>, Query, description = "revision to wait past"), ("wait_ms" = Option<u64>, Query, description = "longest wait")),
    responses((status = 200, body = IntentsResponse), (status = 401, body = ErrorBody)))]
pub async fn intents(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    ValidQuery(q): ValidQuery<IntentsQuery>,
) -> Result<Json<IntentsResponse>, ApiError> {
    if let Some(after) = q.after {
        let wait =
            Duration::from_millis(q.wait_ms.unwrap_or(MAX_WAIT.as_millis() as u64)).min(MAX_WAIT);
        // Wait for any change to VMs, snapshots or execs past `after` (or give up after `wait`).
        let _ = tokio::time::timeout(wait, futures_watch(&state, after + 1)).await;
    }
    let (vms, revision) = repo::list_vms(&state).await?;
    let mine: Vec<Vm> = vms
        .into_iter()
        .filter(|vm| vm.status.node.as_ref() == Some(&node))
        .collect();
    let (snapshots, _) = repo::list_json::<Snapshot>(&state, "/snapshots/").await?;
    let snapshots = snapshots
        .into_iter()
        .filter(|s| s.node == node && s.phase == SnapshotPhase::Pending)
        .collect();
    let (execs, _) = repo::list_json::<ExecRequestRecord>(&state, "/execs/").await?;
    let execs = execs
        .into_iter()
        .filter(|e| e.result.is_none() && mine.iter().any(|vm| vm.id == e.vm))
        .collect();
    let (migrations, _) = repo::list_json::<Migration>(&state, "/migrations/").await?;
    let mut migration_intents = Vec::new();
    for m in migrations
        .into_iter()
        .filter(|m| !m.phase.is_terminal() && (m.from == node || m.to == node))
    {
        if let Some(vm) = mine.iter().find(|v| v.id == m.vm) {
            migration_intents.push(MigrationIntent {
                spec: vm.spec.clone(),
                migration: m,
            });
        } else if let Some((vm, _)) = repo::get_json::<Vm>(&state, &repo::vm_key(&m.vm)).await? {
            migration_intents.push(MigrationIntent {
                spec: vm.spec,
                migration: m,
            });
        }
    }
    let vms = mine
        .into_iter()
        .map(|vm| VmIntent {
            id: vm.id,
            generation: vm.generation,
            spec: vm.spec,
            deleting: vm.deleting,
            phase: vm.status.phase,
            restored_generation: vm.status.restored_generation,
            restarts: vm.status.restarts,
        })
        .collect();
    Ok(Json(IntentsResponse {
        revision,
        vms,
        snapshots,
        execs,
        migrations: migration_intents,
    }))
}

/// Resolves when anything under `/vms/`, `/snapshots/`, `/execs/` or `/migrations/` changes at or
/// after `from`.
async fn futures_watch(state: &AppState, from: u64) {
    let mut watches = Vec::new();
    for prefix in ["/vms/", "/snapshots/", "/execs/", "/migrations/"] {
        match state.store.watch(prefix, from).await {
            Ok(w) => watches.push(w),
            Err(_) => return, // compacted or closed: answer at once
        }
    }
    let [mut a, mut b, mut c, mut d]: [firefleet_store::Watch; 4] = match watches.try_into() {
        Ok(w) => w,
        Err(_) => return,
    };
    tokio::select! {
        _ = a.next() => {}
        _ = b.next() => {}
        _ = c.next() => {}
        _ = d.next() => {}
    }
}

/// Report what the agent observes of one of its VMs.
#[utoipa::path(put, path = "/v1/agent/vms/{vm}/status", request_body = VmStatusReport, security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn report_status(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    ValidJson(report): ValidJson<VmStatusReport>,
) -> Result<axum::http::StatusCode, ApiError> {
    let id = VmId::parse("vm", &vm)?;
    let mut moved = false;
    let vm = repo::update_vm(&state, &id, |vm| {
        if vm.status.node.as_ref() != Some(&node) {
            return Err(RepoError::Forbidden(format!(
                "vm {id} is not placed on node {node}"
            )));
        }
        if report.generation < vm.status.observed_generation || report.generation > vm.generation {
            return Ok(false); // stale (or from the future): ignore
        }
        if report.restarts < vm.status.restarts {
            // About a run from before the last restart (its VMM died): the restart stands.
            return Ok(false);
        }
        let s = &mut vm.status;
        if !s.phase.can_move_to(report.phase) {
            return Err(RepoError::Conflict(format!(
                "vm {id}: cannot move from {:?} to {:?}",
                s.phase, report.phase
            )));
        }
        let before = s.clone();
        // A lost heartbeat is remembered until the restart (a later report of the same failure,
        // from an agent that restarted and forgot why, does not clear it).
        s.heartbeat_lost = report.phase == VmPhase::Failed
            && (report.heartbeat_lost || (s.phase == VmPhase::Failed && s.heartbeat_lost));
        moved = s.phase != report.phase;
        s.phase = report.phase;
        s.observed_generation = report.generation;
        s.accel = report.accel.or(s.accel);
        s.exit_code = report.exit_code.or(s.exit_code);
        s.message = report.message.clone();
        s.launched_ms = report.launched_ms.or(s.launched_ms);
        s.running_ms = report.running_ms.or(s.running_ms);
        s.stopped_ms = if report.phase.is_terminal() {
            report.stopped_ms.or(s.stopped_ms)
        } else {
            None
        };
        s.restored_generation = report.restored_generation.max(s.restored_generation);
        s.ip = report.ip.clone().or(s.ip.take());
        s.network = report.network.or(s.network.take());
        Ok(*s != before)
    })
    .await?;
    if report.removed
        && vm.deleting
        && matches!(vm.status.phase, VmPhase::Stopped | VmPhase::Failed)
    {
        crate::app::vms::delete_record(&state, &vm).await?;
        tracing::info!(vm = %vm.id, "vm deleted");
    }
    // A function's VM changed phase: the functions controller looks at once (an instance
    // that is now running serves the invocations waiting for it).
    if moved && vm.spec.function.is_some() {
        state.gateway.demand.notify_one();
    }
    // It failed or stopped: the healing controller plans its restart at once.
    if moved && vm.status.phase.is_terminal() && !vm.deleting {
        state.kick.notify_waiters();
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    offset: u64,
}

/// Append console output of a VM at `offset`; answers where the server's copy ends.
#[utoipa::path(post, path = "/v1/agent/vms/{vm}/console", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id"), ("offset" = u64, Query, description = "stream offset of the body")),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 200, body = ConsoleOffset), (status = 403, body = ErrorBody)))]
pub async fn upload_console(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    ValidQuery(q): ValidQuery<ConsoleQuery>,
    body: axum::body::Body,
) -> Result<Json<ConsoleOffset>, ApiError> {
    let id = VmId::parse("vm", &vm)?;
    let bytes: Bytes = axum::body::to_bytes(body, MAX_CONSOLE_CHUNK)
        .await
        .map_err(|_| ApiError::TooLarge {
            limit: MAX_CONSOLE_CHUNK,
        })?;
    let vm = repo::get_vm(&state, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("vm", id.as_str()))?;
    if vm.status.node.as_ref() != Some(&node) {
        return Err(ApiError::Forbidden(format!(
            "vm {id} is not placed on node {node}"
        )));
    }
    let next_offset = repo::append_console(&state, &id, &node, q.offset, &bytes).await?;
    Ok(Json(ConsoleOffset { next_offset }))
}

async fn vm_on_node(state: &AppState, node: &NodeId, vm: &str) -> Result<Vm, ApiError> {
    let id = VmId::parse("vm", vm)?;
    let vm = repo::get_vm(state, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("vm", id.as_str()))?;
    if vm.status.node.as_ref() != Some(node) {
        return Err(ApiError::Forbidden(format!(
            "vm {id} is not placed on node {node}"
        )));
    }
    Ok(vm)
}

/// Report the outcome of a snapshot.
#[utoipa::path(put, path = "/v1/agent/vms/{vm}/snapshots/{name}", request_body = SnapshotReport, security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id"), ("name" = String, Path, description = "snapshot name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report_snapshot(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path((vm, name)): Path<(String, String)>,
    ValidJson(report): ValidJson<SnapshotReport>,
) -> Result<axum::http::StatusCode, ApiError> {
    let vm = vm_on_node(&state, &node, &vm).await?;
    repo::update_snapshot(&state, &vm.id, &name, |s| {
        if s.node != node {
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
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Where the control plane keeps its copy of a VM's snapshot.
pub(crate) fn replica_path(state: &AppState, vm: &VmId, name: &str) -> std::path::PathBuf {
    state
        .data_dir
        .join("snapshots")
        .join(vm.as_str())
        .join(format!("{name}.tar"))
}

/// Keep a copy of a snapshot (a tar of its directory) on the control plane, so that the VM can
/// be restored from it on another node.
///
/// At most `max_snapshot_bytes` of the VM's spec: 413 past that, and nothing is kept.
#[utoipa::path(put, path = "/v1/agent/vms/{vm}/snapshots/{name}/data", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id"), ("name" = String, Path, description = "snapshot name")),
    request_body(content = String, content_type = "application/x-tar"),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn snapshot_data_put(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path((vm, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<axum::http::StatusCode, ApiError> {
    let vm = vm_on_node(&state, &node, &vm).await?;
    firefleet_types::snapshot::validate_snapshot_name(&name)?;
    if repo::get_json::<Snapshot>(&state, &repo::snapshot_key(&vm.id, &name))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("snapshot", name));
    }
    let path = replica_path(&state, &vm.id, &name);
    let limit = firefleet_api::max_snapshot_bytes(vm.spec.resources.memory_mib, &vm.spec.disks);
    super::upload::store_bounded(body, &path, limit).await?;
    repo::update_snapshot(&state, &vm.id, &name, |s| {
        let changed = !s.replicated;
        s.replicated = true;
        Ok(changed)
    })
    .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The control plane's copy of a snapshot, for the VM's (new) node.
#[utoipa::path(get, path = "/v1/agent/vms/{vm}/snapshots/{name}/data", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id"), ("name" = String, Path, description = "snapshot name")),
    responses((status = 200, content_type = "application/x-tar", body = String), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn snapshot_data_get(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path((vm, name)): Path<(String, String)>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    firefleet_types::snapshot::validate_snapshot_name(&name)?;
    let vm = match vm_on_node(&state, &node, &vm).await {
        Ok(vm) => vm,
        // A function's template: any node with an instance to start from it may read it.
        Err(ApiError::Forbidden(why)) => {
            let id = VmId::parse("vm", &vm)?;
            let (vms, _) = repo::list_vms(&state).await?;
            let wanted = vms.iter().any(|v| {
                v.status.node.as_ref() == Some(&node)
                    && v.spec
                        .function
                        .as_ref()
                        .and_then(|f| f.template.as_ref())
                        .is_some_and(|t| t.vm == id && t.snapshot == name)
            });
            if !wanted {
                return Err(ApiError::Forbidden(why));
            }
            repo::get_vm(&state, &id)
                .await?
                .ok_or_else(|| ApiError::not_found("vm", id.as_str()))?
        }
        Err(e) => return Err(e),
    };
    let file = tokio::fs::File::open(replica_path(&state, &vm.id, &name))
        .await
        .map_err(|_| ApiError::not_found("snapshot copy", name))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    ))
}

/// Report the result of an exec.
#[utoipa::path(put, path = "/v1/agent/vms/{vm}/execs/{exec}", request_body = ExecResult, security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id"), ("exec" = String, Path, description = "exec id")),
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn report_exec(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path((vm, exec)): Path<(String, String)>,
    ValidJson(result): ValidJson<ExecResult>,
) -> Result<axum::http::StatusCode, ApiError> {
    let vm = vm_on_node(&state, &node, &vm).await?;
    let key = repo::exec_key(&vm.id, &exec);
    loop {
        // The waiting API call deletes the record when it gives up: then there is nobody to tell.
        let Some((mut rec, rev)) = repo::get_json::<ExecRequestRecord>(&state, &key).await? else {
            return Ok(axum::http::StatusCode::NO_CONTENT);
        };
        if rec.result.is_some() {
            return Ok(axum::http::StatusCode::NO_CONTENT);
        }
        rec.result = Some(result.clone());
        let value = serde_json::to_vec(&rec).map_err(|e| ApiError::Internal(e.to_string()))?;
        match state.store.compare_and_swap(&key, rev, value).await {
            Ok(_) => return Ok(axum::http::StatusCode::NO_CONTENT),
            Err(firefleet_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Report a VM's statistics (kept in memory, served by `GET /v1/vms/{vm}/stats` and `/metrics`).
#[utoipa::path(put, path = "/v1/agent/vms/{vm}/stats", request_body = VmStats, security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn report_stats(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    ValidJson(stats): ValidJson<VmStats>,
) -> Result<axum::http::StatusCode, ApiError> {
    let vm = vm_on_node(&state, &node, &vm).await?;
    if let Ok(mut m) = state.stats.lock() {
        m.insert(vm.id, stats);
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}
