//! The audit log over HTTP: listing entries, checking the chain, and the middleware that records
//! every mutating API call.
//!
//! Recorded: every request whose method is not GET, HEAD or OPTIONS, once its response is known
//! (action `METHOD /route/{template}`, target the request path, outcome the status code, the
//! actor `admin`, `tenant:<name>`, `node:<name>` or `anonymous`, and for token callers the
//! role and token id in the detail), unless it failed with a 4xx. Refusals (401, 403, and 404
//! answered to a valid token: someone else's resource looks missing) of any method are
//! recorded aggregated: one entry `refused METHOD /route` per actor, route and status every
//! 30 s, with the count ([`Refusals`], bounded so that a flood cannot fill the log). Skipped, because they are frequent, carry no decision
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
    auth::{Admin, Authn, PeerIdentity},
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
#[into_params(parameter_in = Query)]
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
    if i64::try_from(q.after).is_err() {
        return Err(ApiError::BadRequest {
            message: format!("after {}: must be at most {}", q.after, i64::MAX),
            field: Some("after".to_owned()),
        });
    }
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

/// Middleware: records mutating calls after they are answered, and refusals (401, 403, and
/// 404 to a caller with a valid token) of any call, aggregated.
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
    let path = req.uri().path().to_owned();
    let node = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.as_ref().map(|c| c.node.clone()));
    let authn = req.extensions().get::<Authn>().cloned();
    let (actor, detail) = match &authn {
        Some(Authn::Valid(c)) => (
            c.actor(),
            vec![
                ("role".to_owned(), format!("{:?}", c.role).to_lowercase()),
                ("token".to_owned(), c.token_id.clone()),
            ],
        ),
        Some(Authn::Invalid(_)) => ("anonymous (bad token)".to_owned(), Vec::new()),
        _ => match node {
            Some(node) => (format!("node:{node}"), Vec::new()),
            None => ("anonymous".to_owned(), Vec::new()),
        },
    };
    let resp = next.run(req).await;
    let status = resp.status();
    let Some(route) = route else {
        // Unmatched paths (the fallback's 404) are not recorded.
        return resp;
    };
    let refused = status == axum::http::StatusCode::UNAUTHORIZED
        || status == axum::http::StatusCode::FORBIDDEN
        || (status == axum::http::StatusCode::NOT_FOUND && matches!(authn, Some(Authn::Valid(_))));
    if refused {
        state.refusals.note(
            &actor,
            &format!("{method} {route}"),
            &path,
            status.as_u16(),
            crate::now_ms(),
        );
        return resp;
    }
    if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS")
        || NOT_RECORDED.contains(&route.as_str())
        || status.is_client_error()
    {
        return resp;
    }
    // A handler that knows the actor better (enrolment: no token, no certificate yet) says so.
    let actor = resp
        .extensions()
        .get::<AuditActor>()
        .map_or(actor, |a| a.0.clone());
    let mut event = Event::new(
        0,
        actor,
        format!("{method} {route}"),
        path,
        status.as_u16().to_string(),
    );
    event.detail.extend(detail);
    state.audit.record(&state, event).await;
    resp
}

/// How many distinct (actor, action, status) refusals are kept between two flushes; the rest
/// are counted under one `*` entry per status.
const MAX_REFUSAL_KEYS: usize = 256;

/// How often aggregated refusals are written to the audit log.
const REFUSAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(30);

/// Refused calls since the last flush: one entry per (actor, action, status) with a count, so
/// that a flood of refusals writes at most [`MAX_REFUSAL_KEYS`] + a few entries per flush.
#[derive(Default)]
pub(crate) struct Refusals {
    pending: std::sync::Mutex<std::collections::BTreeMap<(String, String, u16), Refused>>,
}

struct Refused {
    count: u64,
    first_ms: u64,
    last_ms: u64,
    /// The first request path refused under this key.
    target: String,
}

impl Refusals {
    /// Counts one refusal.
    pub(crate) fn note(&self, actor: &str, action: &str, target: &str, status: u16, now: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (actor.to_owned(), action.to_owned(), status);
        if !pending.contains_key(&key) && pending.len() >= MAX_REFUSAL_KEYS {
            key = ("*".to_owned(), "*".to_owned(), status);
        }
        let r = pending.entry(key).or_insert_with(|| Refused {
            count: 0,
            first_ms: now,
            last_ms: now,
            target: target.chars().take(256).collect(),
        });
        r.count += 1;
        r.last_ms = now;
    }

    /// Takes what was counted, as audit events (`refused METHOD /route`, outcome the status,
    /// detail the count and the time span).
    pub(crate) fn take(&self) -> Vec<Event> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .map(|((actor, action, status), r)| {
                let mut e = Event::new(
                    r.last_ms,
                    actor,
                    format!("refused {action}"),
                    r.target,
                    status.to_string(),
                );
                e.detail.insert("count".to_owned(), r.count.to_string());
                e.detail
                    .insert("first_ms".to_owned(), r.first_ms.to_string());
                e
            })
            .collect()
    }
}

/// Writes the aggregated refusals to the audit log every [`REFUSAL_FLUSH`], and once more at
/// shutdown.
pub(crate) fn spawn_refusal_flush(
    state: AppState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(REFUSAL_FLUSH) => false,
                _ = shutdown.changed() => true,
            };
            for event in state.refusals.take() {
                state.audit.record(&state, event).await;
            }
            if stop {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_aggregated_into_a_bounded_number_of_entries() {
        let r = Refusals::default();
        for i in 0..10_000 {
            r.note(&format!("ip-{i}"), "GET /v1/vms/{vm}", "/v1/vms/x", 401, i);
        }
        for _ in 0..5 {
            r.note("tenant:acme", "GET /v1/vms/{vm}", "/v1/vms/y", 404, 1);
        }
        let events = r.take();
        assert!(events.len() <= MAX_REFUSAL_KEYS + 2, "{}", events.len());
        let total: u64 = events
            .iter()
            .map(|e| e.detail["count"].parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 10_005, "every refusal is counted");
        assert!(r.take().is_empty(), "taking empties the table");
    }
}
