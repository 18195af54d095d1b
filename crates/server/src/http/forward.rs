//! Forwarding to the leader: the calls whose state lives in the leader's memory (telemetry for
//! the guard, VM statistics, snapshot and migration transfers with the live-migration relay,
//! the functions gateway) are served by the leader only. A follower that receives one sends it
//! on to the leader and streams the answer back, so that any replica serves every call.
//!
//! - The follower talks to the leader over mutual TLS with its replica certificate
//!   (`firefleet_pki::Ca::issue_replica_cert`), which only replicas can have (the CA key is
//!   sealed in the store).
//! - A bearer token travels as it came: the leader authenticates and authorises it itself.
//! - An agent's client certificate cannot travel: the follower checks it (it must be the
//!   node's current one, as for a direct call) and names the node and serial in
//!   `x-firefleet-agent-*` headers, which the leader believes only from a replica's
//!   certificate (and checks against the store again). The headers are removed from every
//!   incoming request first.
//! - One hop at most: a forwarded call that reaches a replica that no longer leads is answered
//!   503 `not_leader`, and the client fails over.

use axum::{
    body::Body,
    extract::{FromRequestParts, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::auth::{AgentCert, PeerIdentity, FORWARDED_NODE, FORWARDED_SERIAL};
use crate::{app, ApiError, AppState};

/// Set on a forwarded call (to the forwarding replica's id): never forwarded again.
pub(crate) const FORWARDED_BY: &str = "x-firefleet-forwarded-by";

/// Serves the call here if this replica leads (or is the only one), else forwards it.
pub(crate) async fn to_leader(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let forwarded = req.headers().contains_key(FORWARDED_BY)
        && req
            .extensions()
            .get::<crate::auth::ReplicaPeer>()
            .is_some_and(|r| r.0);
    match app::cluster::leader_to_forward_to(&state, forwarded).await {
        Ok(None) => next.run(req).await,
        Ok(Some(leader)) => forward(&state, &leader, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

/// Headers that belong to one connection, not to the request or answer.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn forward(state: &AppState, leader: &str, req: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name)
            && name != FORWARDED_NODE
            && name != FORWARDED_SERIAL
            && name != FORWARDED_BY
        {
            headers.append(name.clone(), value.clone());
        }
    }
    let agent = parts
        .extensions
        .get::<PeerIdentity>()
        .is_some_and(|p| p.0.is_some());
    if agent {
        let AgentCert(cert) = AgentCert::from_request_parts(&mut parts, state).await?;
        let value = |v: &str| {
            HeaderValue::from_str(v).map_err(|_| ApiError::Internal("unencodable header".into()))
        };
        headers.insert(FORWARDED_NODE, value(cert.node.as_str())?);
        headers.insert(FORWARDED_SERIAL, value(&cert.serial)?);
    }
    let me = HeaderValue::from_str(&state.cluster.me.id)
        .unwrap_or_else(|_| HeaderValue::from_static("replica"));
    headers.insert(FORWARDED_BY, me);
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let unreachable = |e: reqwest::Error| {
        ApiError::NotLeader(format!(
            "forwarding to the leader at {leader} failed ({e}); retry on another replica"
        ))
    };
    let resp = state
        .cluster
        .peer
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await
        .map_err(unreachable)?;
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        for (name, value) in resp.headers() {
            if !hop_by_hop(name) || name == header::CONTENT_LENGTH {
                h.append(name.clone(), value.clone());
            }
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|e| ApiError::Internal(format!("building the forwarded answer: {e}")))
}
