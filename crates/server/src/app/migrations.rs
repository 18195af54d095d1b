//! Migration of a running VM to another node, by snapshot or live: the source agent pauses
//! the VM, snapshots it and uploads the snapshot to the server (over its mutual-TLS
//! connection: agents only dial out, so edge nodes behind NAT take part); the destination agent
//! downloads it, restores the VM and reports; the server then switches the VM to the
//! destination (new generation), and the source, no longer finding the VM in its intents,
//! removes its copy. Every step is recorded in `/migrations/<vm>`, so a restarted server or
//! agent carries on with the step it was in. Drains move every VM off a node as one batch.

use std::path::PathBuf;

use firefleet_api::{DrainResponse, MigrateRequest, MigrationReport, StuckVm};
use firefleet_scheduler::{place, Placement, Weights};
use firefleet_types::{
    node::NodeReadiness, Migration, MigrationMode, MigrationPhase, NodeId, NodeInfo, Vm, VmId,
    VmPhase,
};
use rand::SeedableRng;

use crate::app::placement::{cluster_view, reasons_text, request_for};
use crate::{now_ms, repo, ApiError, AppState};

/// Where an uploaded snapshot waits for the destination.
pub fn transfer_path(state: &AppState, m: &Migration) -> PathBuf {
    state
        .data_dir
        .join("transfers")
        .join(format!("{}-{}.tar", m.vm, m.snapshot))
}

/// Live where possible: both ends run QEMU and the VM has no writable disk (its blocks would
/// have to move too); otherwise by snapshot.
pub fn mode_for(vm: &Vm) -> MigrationMode {
    if vm.spec.runtime == firefleet_types::VmRuntime::Qemu
        && vm.spec.disks.iter().all(|d| d.read_only)
    {
        MigrationMode::Live
    } else {
        MigrationMode::Snapshot
    }
}

/// Asks for the migration of `vm` to `req.to` (checked: the VM runs or is paused, the node is
/// another, ready, uncordoned and offers the VM's runtime); live where it can be.
pub async fn request(
    state: &AppState,
    vm: &Vm,
    req: &MigrateRequest,
) -> Result<Migration, ApiError> {
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
    let node = repo::get_json::<NodeInfo>(state, &repo::node_key(&to))
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
    let mode = if req.by_snapshot {
        MigrationMode::Snapshot
    } else {
        mode_for(vm)
    };
    start(state, vm, from, to, mode).await
}

/// Records a migration of `vm` from `from` to `to`.
pub async fn start(
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

/// Drains node `node`: cordons it, and migrates every running or paused VM on it to the node
/// the scheduler picks for it (as one batch, so they do not all pick the same node).
pub async fn drain(state: &AppState, node: &str) -> Result<DrainResponse, ApiError> {
    let id: NodeId = NodeId::parse("node", node)?;
    repo::update_node(state, &id, |n| {
        let changed = !n.cordoned;
        n.cordoned = true;
        changed
    })
    .await?;
    let (vms, revision) = repo::list_vms(state).await?;
    let view = cluster_view(state, &vms).await?;
    let mut out = DrainResponse {
        node: node.to_owned(),
        migrations: Vec::new(),
        stuck: Vec::new(),
    };
    let mut moving = Vec::new();
    for vm in vms.iter().filter(|vm| {
        vm.status.node.as_ref() == Some(&id)
            && matches!(vm.status.phase, VmPhase::Running | VmPhase::Paused)
            && !vm.deleting
    }) {
        match repo::get_json::<Migration>(state, &repo::migration_key(&vm.id)).await? {
            Some((m, _)) if !m.phase.is_terminal() => out.migrations.push(m),
            _ => moving.push(vm),
        }
    }
    let requests: Vec<_> = moving.iter().map(|vm| request_for(vm)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(revision);
    for p in place(&view, &requests, &Weights::default(), &mut rng) {
        match p {
            Placement::Placed { vm, node: to } => {
                if let Some(v) = moving.iter().find(|v| v.id == vm) {
                    let mode = mode_for(v);
                    match start(state, v, id.clone(), to, mode).await {
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
                    reason: reasons_text(&reasons),
                });
            }
        }
    }
    state.kick.notify_waiters();
    tracing::info!(%node, migrations = out.migrations.len(), stuck = out.stuck.len(), "drain");
    Ok(out)
}

/// Which end of a migration an agent is.
#[derive(Clone, Copy)]
pub enum Side {
    /// The node the VM leaves.
    Source,
    /// The node the VM goes to.
    Destination,
}

/// The migration of `vm`, if `node` is its `side` (403 otherwise).
pub async fn migration_on(
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

/// The migration of VM `vm` (its id as given).
pub async fn migration_for(state: &AppState, vm: &str) -> Result<Migration, ApiError> {
    let id = VmId::parse("vm", vm)?;
    repo::get_json::<Migration>(state, &repo::migration_key(&id))
        .await?
        .map(|(m, _)| m)
        .ok_or_else(|| ApiError::not_found("migration of vm", vm))
}

/// VM `vm`'s current or last migration, if it has one.
pub async fn of_vm(state: &AppState, vm: &VmId) -> Result<Option<Migration>, ApiError> {
    Ok(repo::get_json::<Migration>(state, &repo::migration_key(vm))
        .await?
        .map(|(m, _)| m))
}

/// The most a migration's snapshot of its VM may take ([`firefleet_api::max_snapshot_bytes`]
/// of the VM's spec).
pub async fn snapshot_limit(state: &AppState, m: &Migration) -> Result<u64, ApiError> {
    repo::get_vm(state, &m.vm)
        .await?
        .map(|vm| firefleet_api::max_snapshot_bytes(vm.spec.resources.memory_mib, &vm.spec.disks))
        .ok_or_else(|| ApiError::not_found("vm", m.vm.as_str()))
}

/// The source uploaded the snapshot (`bytes` long): the destination restores it next.
pub async fn snapshot_uploaded(
    state: &AppState,
    m: &Migration,
    bytes: u64,
) -> Result<(), ApiError> {
    let now = now_ms();
    repo::update_migration(state, &m.vm, |m| {
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
    Ok(())
}

/// A live migration's stream (`moved` bytes) was read to its end by the destination.
pub async fn stream_sent(state: &AppState, m: &Migration, moved: u64) -> Result<(), ApiError> {
    let now = now_ms();
    repo::update_migration(state, &m.vm, |m| {
        let before = m.clone();
        if m.phase == MigrationPhase::Transferring {
            m.phase = MigrationPhase::Restoring;
        }
        m.transferred_ms = m.transferred_ms.or(Some(now));
        m.bytes = m.bytes.or(Some(moved));
        Ok(*m != before)
    })
    .await?;
    Ok(())
}

/// An agent reports a migration step: the destination `done` (the VM runs there: it is
/// switched), either side `failed` (the VM stays on its source), the source what it measured.
pub async fn report(
    state: &AppState,
    node: &NodeId,
    vm: &str,
    r: &MigrationReport,
) -> Result<(), ApiError> {
    let m = migration_for(state, vm).await?;
    if &m.from != node && &m.to != node {
        return Err(ApiError::Forbidden(format!(
            "node {node} takes no part in the migration of vm {vm}"
        )));
    }
    match r.phase {
        MigrationPhase::Done if &m.to == node => switch(state, &m, r).await?,
        MigrationPhase::Failed => {
            let now = now_ms();
            repo::update_migration(state, &m.vm, |m| {
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
            let _ = tokio::fs::remove_file(transfer_path(state, &m)).await;
            tracing::warn!(vm = %m.vm, %node, message = ?r.message, "migration failed");
        }
        MigrationPhase::Transferring | MigrationPhase::Restoring if &m.from == node => {
            // The source paused the VM (snapshot: downtime starts), or says how it was booted
            // (live: the destination needs it), or what its VMM measured.
            repo::update_migration(state, &m.vm, |m| {
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
    Ok(())
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
