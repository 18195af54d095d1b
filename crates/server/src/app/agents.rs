//! The agents' side of the API: certificate renewal, heartbeats, the intents an agent
//! carries out (its VMs, snapshots, execs and migrations), and what it reports back (VM
//! status, console). Every call is about the calling node: a VM on another node is refused.

use std::time::Duration;

use firefleet_api::{
    ExecRequestRecord, HeartbeatRequest, IntentsResponse, MigrationIntent, VmIntent, VmStatusReport,
};
use firefleet_types::{
    node::{NodeReadiness, NodeStatus},
    Migration, NodeId, Snapshot, SnapshotPhase, Vm, VmId, VmPhase,
};

use crate::repo::{self, RepoError};
use crate::{app, now_ms, ApiError, AppState};

/// Makes the certificate `serial` (valid until `not_after_ms`), issued by a renewal asked for
/// with node `node`'s certificate `presented`, the node's current one.
pub async fn renew_cert(
    state: &AppState,
    node: &NodeId,
    presented: &str,
    serial: &str,
    not_after_ms: u64,
) -> Result<(), ApiError> {
    repo::renew_node_cert(state, node, presented, serial, not_after_ms).await?;
    Ok(())
}

/// Records a heartbeat with the node's facts (and labels, when sent): the node is Ready.
pub async fn heartbeat(
    state: &AppState,
    node: &NodeId,
    req: &HeartbeatRequest,
) -> Result<(), ApiError> {
    let now = now_ms();
    let mut became_ready = false;
    repo::update_node(state, node, |n| {
        became_ready = n.status.readiness != NodeReadiness::Ready;
        if let Some(labels) = &req.labels {
            n.labels = labels.clone();
        }
        n.status = NodeStatus {
            readiness: NodeReadiness::Ready,
            last_heartbeat_ms: now,
            facts: Some(req.facts.clone()),
        };
        true
    })
    .await?;
    if became_ready {
        state.kick.notify_waiters();
    }
    Ok(())
}

/// The VMs placed on `node`, its pending snapshots and execs, and the migrations it takes part
/// in; with `after`, waits (at most `wait`) until any of them changes past that revision.
pub async fn intents(
    state: &AppState,
    node: &NodeId,
    after: Option<u64>,
    wait: Duration,
) -> Result<IntentsResponse, ApiError> {
    if let Some(after) = after {
        // Wait for any change to VMs, snapshots or execs past `after` (or give up after `wait`).
        let _ = tokio::time::timeout(wait, futures_watch(state, after + 1)).await;
    }
    let (vms, revision) = repo::list_vms(state).await?;
    let mine: Vec<Vm> = vms
        .into_iter()
        .filter(|vm| vm.status.node.as_ref() == Some(node))
        .collect();
    let (snapshots, _) = repo::list_json::<Snapshot>(state, "/snapshots/").await?;
    let snapshots = snapshots
        .into_iter()
        .filter(|s| &s.node == node && s.phase == SnapshotPhase::Pending)
        .collect();
    let (execs, _) = repo::list_json::<ExecRequestRecord>(state, "/execs/").await?;
    let execs = execs
        .into_iter()
        .filter(|e| e.result.is_none() && mine.iter().any(|vm| vm.id == e.vm))
        .collect();
    let (migrations, _) = repo::list_json::<Migration>(state, "/migrations/").await?;
    let mut migration_intents = Vec::new();
    for m in migrations
        .into_iter()
        .filter(|m| !m.phase.is_terminal() && (m.from == *node || m.to == *node))
    {
        if let Some(vm) = mine.iter().find(|v| v.id == m.vm) {
            migration_intents.push(MigrationIntent {
                spec: vm.spec.clone(),
                migration: m,
            });
        } else if let Some((vm, _)) = repo::get_json::<Vm>(state, &repo::vm_key(&m.vm)).await? {
            migration_intents.push(MigrationIntent {
                spec: vm.spec,
                migration: m,
            });
        }
    }
    let vms = mine
        .into_iter()
        .map(|vm| VmIntent {
            id: vm.id,
            generation: vm.generation,
            spec: vm.spec,
            deleting: vm.deleting,
            phase: vm.status.phase,
            restored_generation: vm.status.restored_generation,
            restarts: vm.status.restarts,
        })
        .collect();
    Ok(IntentsResponse {
        revision,
        vms,
        snapshots,
        execs,
        migrations: migration_intents,
    })
}

/// Resolves when anything under `/vms/`, `/snapshots/`, `/execs/` or `/migrations/` changes at or
/// after `from`.
async fn futures_watch(state: &AppState, from: u64) {
    let mut watches = Vec::new();
    for prefix in ["/vms/", "/snapshots/", "/execs/", "/migrations/"] {
        match state.store.watch(prefix, from).await {
            Ok(w) => watches.push(w),
            Err(_) => return, // compacted or closed: answer at once
        }
    }
    let [mut a, mut b, mut c, mut d]: [firefleet_store::Watch; 4] = match watches.try_into() {
        Ok(w) => w,
        Err(_) => return,
    };
    tokio::select! {
        _ = a.next() => {}
        _ = b.next() => {}
        _ = c.next() => {}
        _ = d.next() => {}
    }
}

/// Records what the agent of `node` observes of its VM `vm` (a stale report is ignored; a
/// report of a deleted VM's removal deletes its records).
pub async fn report_status(
    state: &AppState,
    node: &NodeId,
    vm: &str,
    report: &VmStatusReport,
) -> Result<(), ApiError> {
    let id = VmId::parse("vm", vm)?;
    let mut moved = false;
    let vm = repo::update_vm(state, &id, |vm| {
        if vm.status.node.as_ref() != Some(node) {
            return Err(RepoError::Forbidden(format!(
                "vm {id} is not placed on node {node}"
            )));
        }
        if report.generation < vm.status.observed_generation || report.generation > vm.generation {
            return Ok(false); // stale (or from the future): ignore
        }
        if report.restarts < vm.status.restarts {
            // About a run from before the last restart (its VMM died): the restart stands.
            return Ok(false);
        }
        let s = &mut vm.status;
        if !s.phase.can_move_to(report.phase) {
            return Err(RepoError::Conflict(format!(
                "vm {id}: cannot move from {:?} to {:?}",
                s.phase, report.phase
            )));
        }
        let before = s.clone();
        // A lost heartbeat is remembered until the restart (a later report of the same failure,
        // from an agent that restarted and forgot why, does not clear it).
        s.heartbeat_lost = report.phase == VmPhase::Failed
            && (report.heartbeat_lost || (s.phase == VmPhase::Failed && s.heartbeat_lost));
        moved = s.phase != report.phase;
        s.phase = report.phase;
        s.observed_generation = report.generation;
        s.accel = report.accel.or(s.accel);
        s.exit_code = report.exit_code.or(s.exit_code);
        s.message = report.message.clone();
        s.launched_ms = report.launched_ms.or(s.launched_ms);
        s.running_ms = report.running_ms.or(s.running_ms);
        s.stopped_ms = if report.phase.is_terminal() {
            report.stopped_ms.or(s.stopped_ms)
        } else {
            None
        };
        s.restored_generation = report.restored_generation.max(s.restored_generation);
        s.ip = report.ip.clone().or(s.ip.take());
        s.network = report.network.or(s.network.take());
        Ok(*s != before)
    })
    .await?;
    if report.removed
        && vm.deleting
        && matches!(vm.status.phase, VmPhase::Stopped | VmPhase::Failed)
    {
        app::vms::delete_record(state, &vm).await?;
        tracing::info!(vm = %vm.id, "vm deleted");
    }
    // A function's VM changed phase: the functions controller looks at once (an instance
    // that is now running serves the invocations waiting for it).
    if moved && vm.spec.function.is_some() {
        state.gateway.demand.notify_one();
    }
    // It failed or stopped: the healing controller plans its restart at once.
    if moved && vm.status.phase.is_terminal() && !vm.deleting {
        state.kick.notify_waiters();
    }
    Ok(())
}

/// Appends console output of VM `id` (on `node`) at `offset`; returns where the server's copy
/// ends.
pub async fn append_console(
    state: &AppState,
    node: &NodeId,
    id: &VmId,
    offset: u64,
    bytes: &[u8],
) -> Result<u64, ApiError> {
    placed_on(state, node, id).await?;
    Ok(repo::append_console(state, id, node, offset, bytes).await?)
}

/// The VM `vm` (its id as given), if it is placed on `node` (`Forbidden` otherwise).
pub async fn vm_on_node(state: &AppState, node: &NodeId, vm: &str) -> Result<Vm, ApiError> {
    placed_on(state, node, &VmId::parse("vm", vm)?).await
}

/// The VM `id`, if it is placed on `node` (`Forbidden` otherwise).
async fn placed_on(state: &AppState, node: &NodeId, id: &VmId) -> Result<Vm, ApiError> {
    let vm = repo::get_vm(state, id)
        .await?
        .ok_or_else(|| ApiError::not_found("vm", id.as_str()))?;
    if vm.status.node.as_ref() != Some(node) {
        return Err(ApiError::Forbidden(format!(
            "vm {id} is not placed on node {node}"
        )));
    }
    Ok(vm)
}
