//! Migration of a running VM to another node, by snapshot: the source agent pauses the VM,
//! snapshots it and uploads the snapshot here (over its mutual-TLS connection: agents only dial
//! out, so edge nodes behind NAT take part); the destination agent downloads it, restores the VM
//! and reports; the server then switches the VM to the destination (new generation), and the
//! source, no longer finding the VM in its intents, removes its copy. Every step is recorded in
//! `/migrations/<vm>`, so a restarted server or agent carries on with the step it was in.

use std::path::PathBuf;

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, StatusCode},
    response::IntoResponse,
    Json,
};
use firefleet_api::{DrainResponse, ErrorBody, MigrateRequest, MigrationReport, StuckVm};
use firefleet_scheduler::{place, Placement, Weights};
use firefleet_types::{
    node::NodeReadiness, Migration, MigrationMode, MigrationPhase, NodeId, NodeInfo, Vm, VmId,
    VmPhase,
};
use rand::SeedableRng;

use super::{vms::find_vm, ValidJson};
use crate::{
    auth::{Admin, AgentNode, Caller},
    now_ms, repo, ApiError, AppState,
};

/// Where an uploaded snapshot waits for the destination.
fn transfer_path(state: &AppState, m: &Migration) -> PathBuf {
    state
        .data_dir
        .join("transfers")
        .join(format!("{}-{}.tar", m.vm, m.snapshot))
}

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
    let to: NodeId = NodeId::parse("to", &req.to)?;
    let from = match (&vm.status.node, vm.status.phase) {
        (Some(n), VmPhase::Running | VmPhase::Paused) if !vm.deleting => n.clone(),
        _ => {
            return Err(ApiError::Conflict(format!(
                "vm {} is {:?}: only a running or paused VM can be migrated",
                vm.spec.name, vm.status.phase
            )))
        }
    };
    if from == to {
        return Err(ApiError::Conflict(format!(
            "vm {} already runs on {to}",
            vm.spec.name
        )));
    }
    let node = repo::get_json::<NodeInfo>(&state, &repo::node_key(&to))
        .await?
        .map(|(n, _)| n)
        .ok_or_else(|| ApiError::not_found("node", to.as_str()))?;
    let offers_runtime = node
        .status
        .facts
        .as_ref()
        .is_some_and(|f| f.runtimes.iter().any(|r| r == vm.spec.runtime.as_str()));
    if node.status.readiness != NodeReadiness::Ready || node.cordoned || !offers_runtime {
        return Err(ApiError::Conflict(format!(
            "node {to} cannot take vm {}: {}",
            vm.spec.name,
            if node.status.readiness != NodeReadiness::Ready {
                "not ready".to_owned()
            } else if node.cordoned {
                "cordoned".to_owned()
            } else {
                format!("it does not offer {}", vm.spec.runtime)
            }
        )));
    }
    // Live where both ends run QEMU and the VM has no writable disk (its blocks would have to
    // move too); otherwise by snapshot.
    let live = !req.by_snapshot
        && vm.spec.runtime == firefleet_types::VmRuntime::Qemu
        && vm.spec.disks.iter().all(|d| d.read_only);
    let mode = if live {
        MigrationMode::Live
    } else {
        MigrationMode::Snapshot
    };
    let m = start(&state, &vm, from, to, mode).await?;
    Ok((StatusCode::ACCEPTED, Json(m)))
}

/// Records a migration of `vm` from `from` to `to`.
pub(crate) async fn start(
    state: &AppState,
    vm: &Vm,
    from: NodeId,
    to: NodeId,
    mode: MigrationMode,
) -> Result<Migration, ApiError> {
    let m = Migration {
        vm: vm.id.clone(),
        from,
        to,
        generation: vm.generation,
        snapshot: format!("migrate-{}", vm.generation.0),
        phase: MigrationPhase::Transferring,
        requested_ms: now_ms(),
        paused_ms: None,
        transferred_ms: None,
        resumed_ms: None,
        bytes: None,
        message: None,
        mode,
        kernel_cmdline: None,
        vmm_downtime_ms: None,
    };
    repo::create_migration(state, &m).await?;
    tracing::info!(vm = %m.vm, from = %m.from, to = %m.to, "migration requested");
    Ok(m)
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
    let id: NodeId = NodeId::parse("node", &node)?;
    repo::update_node(&state, &id, |n| {
        let changed = !n.cordoned;
        n.cordoned = true;
        changed
    })
    .await?;
    let (vms, revision) = repo::list_vms(&state).await?;
    let view = crate::controllers::scheduling::cluster_view(&state, &vms).await?;
    let mut out = DrainResponse {
        node: node.clone(),
        migrations: Vec::new(),
        stuck: Vec::new(),
    };
    let mut moving = Vec::new();
    for vm in vms.iter().filter(|vm| {
        vm.status.node.as_ref() == Some(&id)
            && matches!(vm.status.phase, VmPhase::Running | VmPhase::Paused)
            && !vm.deleting
    }) {
        match repo::get_json::<Migration>(&state, &repo::migration_key(&vm.id)).await? {
            Some((m, _)) if !m.phase.is_terminal() => out.migrations.push(m),
            _ => moving.push(vm),
        }
    }
    let requests: Vec<_> = moving
        .iter()
        .map(|vm| crate::controllers::scheduling::request_for(vm))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(revision);
    for p in place(&view, &requests, &Weights::default(), &mut rng) {
        match p {
            Placement::Placed { vm, node: to } => {
                if let Some(v) = moving.iter().find(|v| v.id == vm) {
                    let mode = crate::http::plan::mode_for(v);
                    match start(&state, v, id.clone(), to, mode).await {
                        Ok(m) => out.migrations.push(m),
                        Err(e) => out.stuck.push(StuckVm {
                            vm: v.spec.name.clone(),
                            reason: e.to_string(),
                        }),
                    }
                }
            }
            Placement::Unschedulable { vm, reasons } => {
                let name = moving
                    .iter()
                    .find(|v| v.id == vm)
                    .map_or_else(|| vm.to_string(), |v| v.spec.name.clone());
                out.stuck.push(StuckVm {
                    vm: name,
                    reason: reasons
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
    }
    state.kick.notify_waiters();
    tracing::info!(%node, migrations = out.migrations.len(), stuck = out.stuck.len(), "drain");
    Ok(Json(out))
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
    repo::get_json::<Migration>(&state, &repo::migration_key(&vm.id))
        .await?
        .map(|(m, _)| Json(m))
        .ok_or_else(|| ApiError::not_found("migration of vm", vm.spec.name))
}

/// Which end of a migration an agent is.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// The migration of `vm`, if `node` is its `side` (403 otherwise).
async fn migration_on(
    state: &AppState,
    vm: &str,
    node: &NodeId,
    side: Side,
) -> Result<Migration, ApiError> {
    let m = migration_for(state, vm).await?;
    let (end, word) = match side {
        Side::Source => (&m.from, "from"),
        Side::Destination => (&m.to, "to"),
    };
    if end != node {
        return Err(ApiError::Forbidden(format!(
            "migration of vm {vm} is not {word} node {node}"
        )));
    }
    Ok(m)
}

async fn migration_for(state: &AppState, vm: &str) -> Result<Migration, ApiError> {
    let id = VmId::parse("vm", vm)?;
    repo::get_json::<Migration>(state, &repo::migration_key(&id))
        .await?
        .map(|(m, _)| m)
        .ok_or_else(|| ApiError::not_found("migration of vm", vm))
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
    let vm = repo::get_vm(&state, &m.vm)
        .await?
        .ok_or_else(|| ApiError::not_found("vm", m.vm.as_str()))?;
    let limit = firefleet_api::max_snapshot_bytes(vm.spec.resources.memory_mib, &vm.spec.disks);
    let path = transfer_path(&state, &m);
    let bytes = super::upload::store_bounded(body, &path, limit).await?;
    let now = now_ms();
    repo::update_migration(&state, &m.vm, |m| {
        if m.phase != MigrationPhase::Transferring {
            return Ok(false);
        }
        m.phase = MigrationPhase::Restoring;
        m.bytes = Some(bytes);
        m.transferred_ms = Some(now);
        m.paused_ms = m.paused_ms.or(Some(now));
        Ok(true)
    })
    .await?;
    tracing::info!(vm = %m.vm, bytes, "migration snapshot uploaded");
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
    let m = migration_for(&state, &vm).await?;
    if m.from != node && m.to != node {
        return Err(ApiError::Forbidden(format!(
            "node {node} takes no part in the migration of vm {vm}"
        )));
    }
    match r.phase {
        MigrationPhase::Done if m.to == node => switch(&state, &m, &r).await?,
        MigrationPhase::Failed => {
            let now = now_ms();
            repo::update_migration(&state, &m.vm, |m| {
                if m.phase.is_terminal() {
                    return Ok(false);
                }
                m.phase = MigrationPhase::Failed;
                m.message = r.message.clone().or(Some(format!("failed on {node}")));
                m.resumed_ms = None;
                m.paused_ms = m.paused_ms.or(r.paused_ms).or(Some(now));
                Ok(true)
            })
            .await?;
            let _ = tokio::fs::remove_file(transfer_path(&state, &m)).await;
            tracing::warn!(vm = %m.vm, %node, message = ?r.message, "migration failed");
        }
        MigrationPhase::Transferring | MigrationPhase::Restoring if m.from == node => {
            // The source paused the VM (snapshot: downtime starts), or says how it was booted
            // (live: the destination needs it), or what its VMM measured.
            repo::update_migration(&state, &m.vm, |m| {
                let before = m.clone();
                m.paused_ms = m.paused_ms.or(r.paused_ms);
                m.kernel_cmdline = m.kernel_cmdline.take().or(r.kernel_cmdline.clone());
                m.vmm_downtime_ms = m.vmm_downtime_ms.or(r.vmm_downtime_ms);
                Ok(*m != before)
            })
            .await?;
        }
        p => {
            return Err(ApiError::Conflict(format!(
                "node {node} cannot report {p:?} for the migration of vm {vm}"
            )))
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The destination runs the VM: record it there (new generation, so the source's reports are
/// stale and its intents drop the VM), then close the migration.
async fn switch(state: &AppState, m: &Migration, r: &MigrationReport) -> Result<(), ApiError> {
    if m.phase == MigrationPhase::Done {
        return Ok(());
    }
    let live_done = m.mode == MigrationMode::Live && m.phase == MigrationPhase::Transferring;
    if m.phase != MigrationPhase::Restoring && !live_done {
        return Err(ApiError::Conflict(format!(
            "migration of vm {} is {:?}, not restoring",
            m.vm, m.phase
        )));
    }
    let to = m.to.clone();
    let vm: Vm = repo::update_vm(state, &m.vm, |vm| {
        if vm.status.node.as_ref() == Some(&to) {
            return Ok(false);
        }
        vm.generation = vm.generation.next();
        vm.status.node = Some(to.clone());
        vm.status.phase = VmPhase::Running;
        vm.status.message = Some(format!("migrated from {}", m.from));
        vm.status.ip = None;
        Ok(true)
    })
    .await?;
    let now = now_ms();
    repo::update_migration(state, &m.vm, |m| {
        if m.phase.is_terminal() {
            return Ok(false);
        }
        m.phase = MigrationPhase::Done;
        m.resumed_ms = r.resumed_ms.or(Some(now));
        m.message = None;
        Ok(true)
    })
    .await?;
    let _ = tokio::fs::remove_file(transfer_path(state, m)).await;
    state.kick.notify_waiters();
    tracing::info!(vm = %vm.id, from = %m.from, to = %m.to, "migration done");
    Ok(())
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
    let limit = repo::get_vm(&state, &m.vm)
        .await?
        .map(|vm| {
            firefleet_api::max_snapshot_bytes(vm.spec.resources.memory_mib, &vm.spec.disks)
                .saturating_mul(LIVE_STREAM_FACTOR)
        })
        .ok_or_else(|| ApiError::not_found("vm", m.vm.as_str()))?;
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
    let now = now_ms();
    let moved = bytes.load(std::sync::atomic::Ordering::Relaxed);
    repo::update_migration(&state, &m.vm, |m| {
        let before = m.clone();
        if m.phase == MigrationPhase::Transferring {
            m.phase = MigrationPhase::Restoring;
        }
        m.transferred_ms = m.transferred_ms.or(Some(now));
        m.bytes = m.bytes.or(Some(moved));
        Ok(*m != before)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
