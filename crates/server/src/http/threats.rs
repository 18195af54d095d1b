//! Telemetry from agents, and the threats the guard found (`firefleet threat ls|get|ack`).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    AckThreatRequest, ErrorBody, QuarantinedImage, TelemetryBatch, Threat, MAX_TELEMETRY_BYTES,
};

use crate::{
    app,
    auth::{AgentNode, Caller},
    ApiError, AppState,
};

/// Agents post telemetry samples in batches: statistics are kept (latest per VM, for
/// `GET /v1/vms/{vm}/stats`), and the samples go to the guard. Samples of VMs that are not
/// on the posting node are refused as a whole batch (403), naming the VM.
#[utoipa::path(post, path = "/v1/agent/telemetry", request_body = TelemetryBatch, security(("mtls" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn telemetry(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_TELEMETRY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge {
            limit: MAX_TELEMETRY_BYTES,
        })?;
    let batch: TelemetryBatch =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
            field: None,
            message: format!("telemetry batch: {e}"),
        })?;
    app::threats::ingest(&state, &node, batch).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whose threats the caller sees: an admin's all (None), a tenant's its own.
fn viewer(caller: &Caller) -> Option<&str> {
    (caller.role != firefleet_api::Role::Admin).then_some(caller.tenant.as_str())
}

/// The threats the guard found, newest first (a tenant's own; an admin's: all).
#[utoipa::path(get, path = "/v1/threats", security(("bearer" = [])),
    responses((status = 200, body = Vec<Threat>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Threat>>, ApiError> {
    Ok(Json(app::threats::list(&state, viewer(&caller)).await?))
}

/// One threat: the finding with its evidence, and each action of its playbook.
#[utoipa::path(get, path = "/v1/threats/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "threat id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, body = Threat), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Threat>, ApiError> {
    Ok(Json(app::threats::get(&state, viewer(&caller), &id).await?))
}

/// Acknowledge a threat (someone looked at it). Containment stays as it is: resume, delete or
/// keep the VM as you see fit. Acknowledging again keeps the first acknowledgement.
#[utoipa::path(post, path = "/v1/threats/{id}/ack", request_body = AckThreatRequest, security(("bearer" = [])),
    params(("id" = String, Path, description = "threat id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, body = Threat), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::ValidJson(req): super::ValidJson<AckThreatRequest>,
) -> Result<Json<Threat>, ApiError> {
    if req.note.as_ref().is_some_and(|n| n.len() > 1024) {
        return Err(ApiError::BadRequest {
            field: Some("note".into()),
            message: "at most 1024 bytes".into(),
        });
    }
    let t = app::threats::ack(
        &state,
        viewer(&caller),
        &id,
        caller.tenant.as_str(),
        req.note,
    )
    .await?;
    Ok(Json(t))
}

/// Images the guard quarantined (admin).
#[utoipa::path(get, path = "/v1/quarantine/images", security(("bearer" = [])),
    responses((status = 200, body = Vec<QuarantinedImage>), (status = 403, body = ErrorBody)))]
pub async fn quarantined(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<QuarantinedImage>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(app::threats::quarantined(&state).await?))
}

/// Lift an image's quarantine (admin): new VMs may use it again.
#[utoipa::path(delete, path = "/v1/quarantine/images/{image}", security(("bearer" = [])),
    params(("image" = String, Path, description = "image digest")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(image): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    app::threats::release(&state, &image, caller.tenant.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}
