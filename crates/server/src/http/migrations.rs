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
    node::NodeReadiness, Migration, MigrationPhase, NodeId, NodeInfo, Vm, VmId, VmPhase,
};
use futures::StreamExt;
use rand::SeedableRng;
use tokio::io::AsyncWriteExt;

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
    let m = start(&state, &vm, from, to).await?;
    Ok((StatusCode::ACCEPTED, Json(m)))
}

/// Records a migration of `vm` from `from` to `to`.
pub(crate) async fn start(
    state: &AppState,
    vm: &Vm,
    from: NodeId,
    to: NodeId,
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
    };
    repo::create_migration(state, &m).await?;
    tracing::info!(vm = %m.vm, from = %m.from, to = %m.to, "migration requested");
    Ok(m)
}

/// Drain a node (admin): cordon it, and migrate every running or paused VM on it to the node
/// the scheduler picks for it (as one batch, so they do not all pick the same node).
#[utoipa::path(post, path = "/v1/nodes/{node}/drain", security(("bearer" = [])),
    params(("node" = String, Path, description = "node name")),
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
                    match start(&state, v, id.clone(), to).await {
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

async fn migration_for(state: &AppState, vm: &str) -> Result<Migration, ApiError> {
    let id = VmId::parse("vm", vm)?;
    repo::get_json::<Migration>(state, &repo::migration_key(&id))
        .await?
        .map(|(m, _)| m)
        .ok_or_else(|| ApiError::not_found("migration of vm", vm))
}

/// The source agent uploads the snapshot (a tar of its directory).
#[utoipa::path(put, path = "/v1/agent/migrations/{vm}/snapshot", security(("mtls" = [])),
    params(("vm" = String, Path, description = "VM id")),
    request_body(content = String, content_type = "application/x-tar"),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    AgentNode(node): AgentNode,
    Path(vm): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let m = migration_for(&state, &vm).await?;
    if m.from != node {
        return Err(ApiError::Forbidden(format!(
            "migration of vm {vm} is not from node {node}"
        )));
    }
    if m.phase != MigrationPhase::Transferring {
        // Uploaded before (an agent retrying after a lost answer): nothing to do.
        return Ok(StatusCode::NO_CONTENT);
    }
    let path = transfer_path(&state, &m);
    let io = |e: std::io::Error| ApiError::Internal(format!("storing the snapshot: {e}"));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let part = path.with_extension("part");
    let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Internal(format!("reading the upload: {e}")))?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&part, &path).await.map_err(io)?;
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
    let m = migration_for(&state, &vm).await?;
    if m.to != node {
        return Err(ApiError::Forbidden(format!(
            "migration of vm {vm} is not to node {node}"
        )));
    }
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
        MigrationPhase::Transferring if m.from == node => {
            // The source paused the VM: downtime starts.
            repo::update_migration(&state, &m.vm, |m| {
                let changed = m.paused_ms.is_none() && r.paused_ms.is_some();
                m.paused_ms = m.paused_ms.or(r.paused_ms);
                Ok(changed)
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
    if m.phase != MigrationPhase::Restoring {
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
