//! Node readiness and failover. A node whose heartbeats stopped for longer than
//! [`crate::NodeTimers::grace`] is NotReady and gets no new placements. Once it has been silent
//! for `grace + evict_after`, its VMs are given up on there: each goes back to Pending with a new
//! generation and no node, and the scheduler places it elsewhere (fresh: its snapshots were on
//! the lost node). Reports from the old node about it are refused from then on (it is no longer
//! the VM's node), and should the node come back, its agent no longer finds the VM in its intents
//! and stops and removes it: it fences itself. A VM being deleted is deleted; one meant to be
//! stopped is recorded as stopped.

use firefleet_types::{node::NodeReadiness, DesiredState, NodeInfo, VmPhase};

use crate::{now_ms, repo, ApiError, AppState};

pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    let now = now_ms();
    let grace = state.node_timers.grace.as_millis() as u64;
    let evict = grace + state.node_timers.evict_after.as_millis() as u64;
    let (nodes, _) = repo::list_json::<NodeInfo>(&state, "/nodes/").await?;
    let mut lost = Vec::new();
    for node in nodes {
        let silent = now.saturating_sub(node.status.last_heartbeat_ms);
        if node.status.readiness == NodeReadiness::Ready && silent > grace {
            repo::update_node(&state, &node.id, |n| {
                let stale = now.saturating_sub(n.status.last_heartbeat_ms) > grace;
                if stale && n.status.readiness == NodeReadiness::Ready {
                    n.status.readiness = NodeReadiness::NotReady;
                    true
                } else {
                    false
                }
            })
            .await?;
            tracing::warn!(node = %node.id, "node missed its heartbeats: NotReady");
        }
        if silent > evict {
            lost.push((node.id, silent));
        }
    }
    if lost.is_empty() {
        return Ok(());
    }
    let (vms, _) = repo::list_vms(&state).await?;
    let mut moved = 0;
    for vm in vms {
        let Some((node, silent)) = lost
            .iter()
            .find(|(n, _)| vm.status.node.as_ref() == Some(n))
        else {
            continue;
        };
        if vm.status.phase.is_terminal() && !vm.deleting {
            continue; // at rest: nothing runs there to move
        }
        if vm.deleting {
            crate::app::vms::delete_record(&state, &vm).await?;
            tracing::info!(vm = %vm.id, %node, "vm deleted (its node is lost)");
            continue;
        }
        // Its newest snapshot the control plane keeps a copy of, if any: restored from it.
        let snapshot = repo::list_snapshots(&state, &vm.id)
            .await?
            .into_iter()
            .filter(|s| s.replicated && s.phase == firefleet_types::SnapshotPhase::Ready)
            .max_by_key(|s| s.ready_ms.unwrap_or(s.requested_ms))
            .map(|s| s.name);
        let message = match &snapshot {
            Some(s) => format!(
                "node {node} lost (silent for {} s): placed again, restoring snapshot {s}",
                silent / 1000
            ),
            None => format!(
                "node {node} lost (silent for {} s): placed again",
                silent / 1000
            ),
        };
        let updated = repo::update_vm(&state, &vm.id, |v| {
            if v.status.node.as_ref() != Some(node) || v.deleting || v.status.phase.is_terminal() {
                return Ok(false);
            }
            let s = &mut v.status;
            if v.spec.desired == DesiredState::Stopped {
                s.phase = VmPhase::Stopped;
                s.message = Some(format!("node {node} lost while stopping"));
                s.stopped_ms = Some(now);
            } else {
                v.generation = v.generation.next();
                v.spec.restore = snapshot
                    .clone()
                    .map(|name| firefleet_types::RestoreRequest {
                        snapshot: name,
                        generation: v.generation,
                    });
                s.phase = VmPhase::Pending;
                s.node = None;
                s.message = Some(message.clone());
                s.ip = None;
                s.accel = None;
                s.exit_code = None;
                s.scheduled_ms = None;
                s.launched_ms = None;
                s.running_ms = None;
                s.stopped_ms = None;
                s.restored_generation = None;
            }
            Ok(true)
        })
        .await;
        match updated {
            Ok(v) if v.status.phase == VmPhase::Pending => {
                moved += 1;
                tracing::warn!(vm = %v.id, %node, "node lost: placing the vm again");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(vm = %vm.id, error = %e, "failing over the vm"),
        }
    }
    if moved > 0 {
        state.kick.notify_waiters();
    }
    Ok(())
}
