//! Migrations over HTTP (the protocol and its records are [`crate::app::migrations`]'s): asking
//! for one and draining a node (admin), and the agents' side: the source uploads the snapshot
//! here (over its mutual-TLS connection: agents only dial out, so edge nodes behind NAT take
//! part) and the destination downloads it, or, live, the source's VMM stream is relayed to the
//! waiting destination as it arrives; either side reports its steps.

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, StatusCode},
    response::IntoResponse,
    Json,
};
use firefleet_api::{DrainResponse, ErrorBody, MigrateRequest, MigrationReport};
use firefleet_types::{Migration, MigrationMode, MigrationPhase, VmId};

use super::{vms::find_vm, ValidJson};
use crate::{
    app::migrations::{self, migration_for, migration_on, transfer_path, Side},
    auth::{Admin, AgentNode, Caller},
    ApiError, AppState,
};

/// Migrate a running VM to another node (admin): snapshot, transfer, restore, switch.
#[utoipa::path(post, path = "/v1/vms/{vm}/migrate", request_body = MigrateRequest, security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 202, body = Migration), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn migrate(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ValidJson(req): ValidJson<MigrateRequest>,
) -> Result<(StatusCode, Json<Migration>), ApiError> {
    caller.require_admin()?;
    let vm = find_vm(&state, &caller, &key).await?;
    let m = migrations::request(&state, &vm, &req).await?;
    Ok((StatusCode::ACCEPTED, Json(m)))
}

/// Drain a node (admin): cordon it, and migrate every running or paused VM on it to the node
/// the scheduler picks for it (as one batch, so they do not all pick the same node).
#[utoipa::path(post, path = "/v1/nodes/{node}/drain", security(("bearer" = [])),
    params(("node" = String, Path, description = "node name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = DrainResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    _admin: Admin,
    Path(node): Path<String>,
) -> Result<Json<DrainResponse>, ApiError> {
    Ok(Json(migrations::drain(&state, &node).await?))
}

/// A VM's current or last migration.
#[utoipa::path(get, path = "/v1/vms/{vm}/migration", security(("bearer" = [])),
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, body = Migration), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Migration>, ApiError> {
    let vm = find_vm(&state, &caller, &key).await?;
    migrations::of_vm(&state, &vm.id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("migration of vm", vm.spec.name))
}

/// The source agent uploads the snapshot (a tar of its directory).
///
/// At most `max_snapshot_bytes` of the VM's spec: 413 past that, and nothing is kept.
#[utoipa::path(put, path = "/v1/agent/migrations/{vm}/snapshot", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    request_body(content = String, content_type = "application/x-tar"),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let m = migration_on(&state, &vm, &node, Side::Source).await?;
    if m.phase != MigrationPhase::Transferring {
        // Uploaded before (an agent retrying after a lost answer): nothing to do.
        return Ok(StatusCode::NO_CONTENT);
    }
    let limit = migrations::snapshot_limit(&state, &m).await?;
    let path = transfer_path(&state, &m);
    let bytes = super::upload::store_bounded(body, &path, limit).await?;
    migrations::snapshot_uploaded(&state, &m, bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The destination agent downloads the snapshot.
#[utoipa::path(get, path = "/v1/agent/migrations/{vm}/snapshot", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    responses((status = 200, content_type = "application/x-tar", body = String), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let m = migration_on(&state, &vm, &node, Side::Destination).await?;
    let path = transfer_path(&state, &m);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found("migration snapshot of vm", vm))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    ))
}

/// An agent reports a migration step: the destination `done` (the VM runs there: the server
/// switches it), either side `failed` (the VM stays on its source).
#[utoipa::path(post, path = "/v1/agent/migrations/{vm}/report", request_body = MigrationReport, security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    ValidJson(r): ValidJson<MigrationReport>,
) -> Result<StatusCode, ApiError> {
    migrations::report(&state, &node, &vm, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long one side of a live migration waits for the other to connect.
const LIVE_RENDEZVOUS: std::time::Duration = std::time::Duration::from_secs(60);

/// A live migration's stream handed from the source's upload to the destination's download.
type LiveStream = futures::stream::BoxStream<'static, Result<axum::body::Bytes, axum::Error>>;

/// Destinations waiting for their source's stream, by VM.
#[derive(Default)]
pub(crate) struct LiveRelay {
    waiting:
        std::sync::Mutex<std::collections::HashMap<VmId, tokio::sync::oneshot::Sender<LiveStream>>>,
}

/// A live stream may carry this many times a snapshot's bound
/// ([`firefleet_api::max_snapshot_bytes`]): pre-copy sends pages the guest dirties again, but a
/// stream that never ends is cut (the guest goes on running on its source).
const LIVE_STREAM_FACTOR: u64 = 8;

/// Signals when the stream it wraps has been read to its end or dropped; ends it with an error
/// past `limit` bytes (and sets `over`).
struct Watched {
    inner: LiveStream,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    limit: u64,
    over: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl futures::Stream for Watched {
    type Item = Result<axum::body::Bytes, axum::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.over.load(std::sync::atomic::Ordering::Relaxed) {
            return std::task::Poll::Ready(None);
        }
        let r = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &r {
            let before = self
                .bytes
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if before.saturating_add(chunk.len() as u64) > self.limit {
                self.over.store(true, std::sync::atomic::Ordering::Relaxed);
                let why = format!("the live stream passed {} bytes", self.limit);
                return std::task::Poll::Ready(Some(Err(axum::Error::new(why))));
            }
        }
        if let std::task::Poll::Ready(None) = r {
            if let Some(d) = self.done.take() {
                let _ = d.send(());
            }
        }
        r
    }
}

/// Live migration, destination: the source's VMM stream, forwarded as it arrives.
#[utoipa::path(get, path = "/v1/agent/migrations/{vm}/live", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    responses((status = 200, content_type = "application/octet-stream", body = String), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn live_receive(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let m = migration_for(&state, &vm).await?;
    if m.to != node || m.mode != MigrationMode::Live {
        return Err(ApiError::Forbidden(format!(
            "no live migration of vm {vm} to node {node}"
        )));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Ok(mut w) = state.live.waiting.lock() {
        w.insert(m.vm.clone(), tx);
    }
    let stream = tokio::time::timeout(LIVE_RENDEZVOUS, rx)
        .await
        .map_err(|_| {
            ApiError::Conflict(format!(
                "the source of vm {vm} did not start sending within {} s",
                LIVE_RENDEZVOUS.as_secs()
            ))
        })?
        .map_err(|_| ApiError::Conflict(format!("live migration of vm {vm} abandoned")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    ))
}

/// Live migration, source: the VMM's migration stream, forwarded to the waiting destination.
/// Answers once the destination has read all of it.
///
/// A stream past 8 times the VM's `max_snapshot_bytes` is cut (413).
#[utoipa::path(put, path = "/v1/agent/migrations/{vm}/live", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn live_send(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let m = migration_for(&state, &vm).await?;
    if m.from != node || m.mode != MigrationMode::Live {
        return Err(ApiError::Forbidden(format!(
            "no live migration of vm {vm} from node {node}"
        )));
    }
    let limit = migrations::snapshot_limit(&state, &m)
        .await?
        .saturating_mul(LIVE_STREAM_FACTOR);
    let deadline = tokio::time::Instant::now() + LIVE_RENDEZVOUS;
    let tx = loop {
        let waiting = state
            .live
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&m.vm));
        if let Some(tx) = waiting {
            break tx;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Conflict(format!(
                "the destination of vm {vm} did not connect within {} s",
                LIVE_RENDEZVOUS.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched = Watched {
        inner: Box::pin(body.into_data_stream()),
        done: Some(done_tx),
        bytes: bytes.clone(),
        limit,
        over: over.clone(),
    };
    if tx.send(Box::pin(watched)).is_err() {
        return Err(ApiError::Conflict(format!(
            "the destination of vm {vm} went away"
        )));
    }
    // Ends when the destination has read the stream to its end (or dropped it).
    let _ = done_rx.await;
    if over.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::TooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
    }
    let moved = bytes.load(std::sync::atomic::Ordering::Relaxed);
    migrations::stream_sent(&state, &m, moved).await?;
    Ok(StatusCode::NO_CONTENT)
}
