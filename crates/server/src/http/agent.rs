//! `/v1/agent/*`: what agents call. Enrollment is authenticated by a one-time join token; every
//! other call by the client certificate the agent got from enrollment.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{Path, State},
    Extension, Json,
};
use firefleet_api::{
    ConsoleOffset, EnrollRequest, EnrollResponse, ErrorBody, ExecResult, HeartbeatRequest,
    IntentsResponse, RenewRequest, RenewResponse, SnapshotReport, VmStats, VmStatusReport,
    MAX_CONSOLE_CHUNK,
};
use firefleet_types::{topology::validate_labels, NodeId, VmId};
use serde::Deserialize;

use super::audit::AuditActor;
use super::{ValidJson, ValidQuery};
use crate::{
    app,
    auth::{AgentCert, AgentNode},
    repo, ApiError, AppState,
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
    app::agents::renew_cert(
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
    app::agents::heartbeat(&state, &node, &req).await?;
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
    let wait = q
        .wait_ms
        .map(Duration::from_millis)
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    Ok(Json(
        app::agents::intents(&state, &node, q.after, wait).await?,
    ))
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
    app::agents::report_status(&state, &node, &vm, &report).await?;
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
    let next_offset = app::agents::append_console(&state, &node, &id, q.offset, &bytes).await?;
    Ok(Json(ConsoleOffset { next_offset }))
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
    let vm = app::agents::vm_on_node(&state, &node, &vm).await?;
    app::snapshots::report(&state, &node, &vm, &name, &report).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
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
    let vm = app::agents::vm_on_node(&state, &node, &vm).await?;
    firefleet_types::snapshot::validate_snapshot_name(&name)?;
    app::snapshots::get(&state, &vm.id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("snapshot", name.clone()))?;
    let path = app::snapshots::replica_path(&state, &vm.id, &name);
    let limit = firefleet_api::max_snapshot_bytes(vm.spec.resources.memory_mib, &vm.spec.disks);
    super::upload::store_bounded(body, &path, limit).await?;
    app::snapshots::replicated(&state, &vm.id, &name).await?;
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
    let vm = app::snapshots::readable_by(&state, &node, &vm, &name).await?;
    let file = tokio::fs::File::open(app::snapshots::replica_path(&state, &vm.id, &name))
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
    let vm = app::agents::vm_on_node(&state, &node, &vm).await?;
    app::exec::report(&state, &vm.id, &exec, &result).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
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
    let vm = app::agents::vm_on_node(&state, &node, &vm).await?;
    if let Ok(mut m) = state.stats.lock() {
        m.insert(vm.id, stats);
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}
