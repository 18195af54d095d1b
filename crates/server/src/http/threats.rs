//! Telemetry from agents, and the threats the guard found (`firefleet threat ls|get|ack`).

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    AckThreatRequest, ErrorBody, QuarantinedImage, TelemetryBatch, Threat, ThreatAck,
    MAX_TELEMETRY_BYTES,
};
use firefleet_types::{Vm, VmId};

use crate::{
    app::threats::{quarantine_key, threat_key, Observed},
    auth::{AgentNode, Caller},
    now_ms, repo, ApiError, AppState,
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
    let mut vms: HashMap<VmId, Vm> = HashMap::new();
    for s in &batch.samples {
        if vms.contains_key(&s.vm) {
            continue;
        }
        let vm = repo::get_vm(&state, &s.vm).await?;
        match vm {
            Some(vm) if vm.status.node.as_ref() == Some(&node) => {
                vms.insert(vm.id.clone(), vm);
            }
            // Deleted or moved on since the agent sampled it: the sample is stale, not an
            // attack on another node's VM.
            Some(vm) if vm.status.node.is_some() && vm.deleting => {}
            None => {}
            Some(_) => {
                return Err(ApiError::Forbidden(format!(
                    "vm {} is not placed on node {node}",
                    s.vm
                )))
            }
        }
    }
    let mut observed = Vec::with_capacity(batch.samples.len());
    for s in batch.samples {
        let Some(vm) = vms.get(&s.vm) else { continue };
        let group = match &vm.spec.function {
            Some(f) => format!("fn:{}/{}", vm.spec.tenant, f.function),
            None => format!("image:{}", vm.spec.image),
        };
        let net = s.stats.host.net.clone().unwrap_or_default();
        let sample = firefleet_guard::Sample {
            vm: vm.id.to_string(),
            at_ms: s.stats.collected_ms,
            group: Some(group),
            host: firefleet_guard::HostSample {
                cpu_time_ms: s.stats.host.cpu_time_ms,
                rss_bytes: s.stats.host.rss_bytes,
                // The host's view of the TAP: what it receives is what the guest sends.
                tx_bytes: net.rx_bytes,
                rx_bytes: net.tx_bytes,
                tx_packets: net.rx_packets,
                rx_packets: net.tx_packets,
            },
            guest: s.guest,
        };
        if let Ok(mut m) = state.stats.lock() {
            m.insert(vm.id.clone(), s.stats);
        }
        observed.push(Observed {
            sample,
            vm: vm.id.clone(),
            tenant: vm.spec.tenant.to_string(),
            name: vm.spec.name.clone(),
            node: vm.status.node.as_ref().map(ToString::to_string),
            image: vm.spec.image.clone(),
        });
    }
    state.guard.submit(observed, batch.dropped);
    Ok(StatusCode::NO_CONTENT)
}

fn visible(caller: &Caller, t: &Threat) -> bool {
    caller.role == firefleet_api::Role::Admin || caller.tenant.as_str() == t.tenant
}

/// The threats the guard found, newest first (a tenant's own; an admin's: all).
#[utoipa::path(get, path = "/v1/threats", security(("bearer" = [])),
    responses((status = 200, body = Vec<Threat>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Threat>>, ApiError> {
    let (mut threats, _) = repo::list_json::<Threat>(&state, "/threats/").await?;
    threats.retain(|t| visible(&caller, t));
    threats.sort_by(|a, b| b.detected_ms.cmp(&a.detected_ms).then(a.id.cmp(&b.id)));
    Ok(Json(threats))
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<(Threat, u64), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::BadRequest {
            field: Some("threat".into()),
            message: format!("{id:?} is not a threat id"),
        });
    }
    match repo::get_json::<Threat>(state, &threat_key(id)).await? {
        Some((t, rev)) if visible(caller, &t) => Ok((t, rev)),
        _ => Err(ApiError::not_found("threat", id)),
    }
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
    Ok(Json(find(&state, &caller, &id).await?.0))
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
    loop {
        let (mut t, rev) = find(&state, &caller, &id).await?;
        if t.ack.is_some() {
            return Ok(Json(t));
        }
        t.ack = Some(ThreatAck {
            by: caller.tenant.to_string(),
            at_ms: now_ms(),
            note: req.note.clone(),
        });
        let value = serde_json::to_vec(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
        match state
            .store
            .compare_and_swap(&threat_key(&id), rev, value)
            .await
        {
            Ok(_) => return Ok(Json(t)),
            Err(firefleet_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Images the guard quarantined (admin).
#[utoipa::path(get, path = "/v1/quarantine/images", security(("bearer" = [])),
    responses((status = 200, body = Vec<QuarantinedImage>), (status = 403, body = ErrorBody)))]
pub async fn quarantined(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<QuarantinedImage>>, ApiError> {
    caller.require_admin()?;
    let (images, _) = repo::list_json::<QuarantinedImage>(&state, "/quarantine/images/").await?;
    Ok(Json(images))
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
    match state.store.delete(&quarantine_key(&image), None).await? {
        Some(_) => {
            tracing::info!(%image, by = %caller.tenant, "image quarantine lifted");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found("quarantined image", &image)),
    }
}
