//! The audit log over HTTP: listing entries, checking the chain, and the middleware that records
//! every mutating API call.
//!
//! Recorded: every request whose method is not GET, HEAD or OPTIONS, once its response is known
//! (action `METHOD /route/{template}`, target the request path, outcome the status code), unless
//! it was refused with a 4xx: a refused request changes nothing, and leaves the store untouched
//! (the API tests check that); refusals are in the request metrics and the server log. Skipped, because they are frequent, carry no decision
//! of a person and change nothing but ephemeral or derived state: agent telemetry and
//! heartbeats, console uploads, stats reports, VM status reports (`PUT
//! /v1/agent/vms/{vm}/status`, the VM's phase as its agent sees it), and function invocations
//! (`/v1/functions/{name}/invoke`, `/fn/…`, and the agents' results of them: data-plane
//! traffic). Unmatched paths (404 from the
//! fallback) are not recorded either.

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
    Json,
};
use firefleet_api::{AuditList, AuditVerifyResponse, ErrorBody};
use firefleet_audit::Event;
use serde::Deserialize;

use super::ValidQuery;
use crate::{
    auth::{caller_from_headers, Admin, PeerIdentity},
    ApiError, AppState,
};

/// The most entries one `GET /v1/audit` returns.
pub const MAX_LIMIT: usize = 10_000;

/// Routes whose calls are not recorded (see the module doc).
const NOT_RECORDED: &[&str] = &[
    "/v1/agent/telemetry",
    "/v1/agent/heartbeat",
    "/v1/agent/vms/{vm}/console",
    "/v1/agent/vms/{vm}/stats",
    "/v1/agent/vms/{vm}/status",
    "/v1/functions/{name}/invoke",
    "/fn/{tenant}/{name}",
    "/v1/agent/invocations/{id}",
];

/// Set as a response extension by a handler, the actor recorded for its call (e.g.
/// `node:<name>` for an enrolment, which carries neither a token nor a client certificate).
#[derive(Debug, Clone)]
pub(crate) struct AuditActor(pub String);

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries with a larger seq (default 0: from the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default and maximum 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// List audit log entries in order (admin).
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let entries = state
        .audit
        .list(state.store.as_ref(), q.after, limit)
        .await?;
    Ok(Json(AuditList { entries }))
}

/// Check the stored audit chain with the control plane's public key (admin).
#[utoipa::path(get, path = "/v1/audit/verify", security(("bearer" = [])),
    responses((status = 200, body = AuditVerifyResponse), (status = 403, body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<AuditVerifyResponse>, ApiError> {
    Ok(Json(state.audit.verify(state.store.as_ref()).await?))
}

/// Middleware: records mutating calls after they are answered.
pub(crate) async fn record_calls(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let skip = matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS")
        || route.as_deref().is_none_or(|r| NOT_RECORDED.contains(&r));
    if skip {
        return next.run(req).await;
    }
    let route = route.unwrap_or_default();
    let path = req.uri().path().to_owned();
    let node = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.as_ref().map(|c| c.node.clone()));
    let actor = if req
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        match caller_from_headers(&state, req.headers()).await {
            Ok(c) => format!("tenant:{}", c.tenant),
            Err(_) => "anonymous (bad token)".to_owned(),
        }
    } else if let Some(node) = node {
        format!("node:{node}")
    } else {
        "anonymous".to_owned()
    };
    let resp = next.run(req).await;
    if resp.status().is_client_error() {
        return resp;
    }
    // A handler that knows the actor better (enrolment: no token, no certificate yet) says so.
    let actor = resp
        .extensions()
        .get::<AuditActor>()
        .map_or(actor, |a| a.0.clone());
    let event = Event::new(
        0,
        actor,
        format!("{method} {route}"),
        path,
        resp.status().as_u16().to_string(),
    );
    state.audit.record(&state, event).await;
    resp
}
