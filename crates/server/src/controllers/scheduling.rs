//! Scheduling: places Pending VMs with the scheduler engine and records the placement.

use std::collections::BTreeMap;

use firefleet_scheduler::{place, ClusterView, NodeView, Placement, PlacementRequest, Weights};
use firefleet_types::{node::NodeReadiness, DesiredState, NodeId, NodeInfo, Resources, VmPhase};
use rand::SeedableRng;

use crate::{now_ms, repo, ApiError, AppState};

pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    // Prepare.
    let (vms, revision) = repo::list_vms(&state).await?;
    let pending: Vec<_> = vms
        .iter()
        .filter(|vm| {
            vm.status.phase == VmPhase::Pending
                && vm.spec.desired == DesiredState::Running
                && !vm.deleting
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let (nodes, _) = repo::list_json::<NodeInfo>(&state, "/nodes/").await?;
    let mut allocated: BTreeMap<NodeId, Resources> = BTreeMap::new();
    for vm in vms.iter().filter(|vm| vm.status.phase.is_active()) {
        if let Some(node) = &vm.status.node {
            let a = allocated.entry(node.clone()).or_default();
            *a = a.saturating_add(&vm.spec.resources);
        }
    }
    let view = ClusterView {
        nodes: nodes
            .iter()
            .map(|n| NodeView {
                id: n.id.clone(),
                labels: n.labels.clone(),
                capacity: n
                    .status
                    .facts
                    .as_ref()
                    .map(|f| f.capacity)
                    .unwrap_or_default(),
                allocated: allocated.get(&n.id).copied().unwrap_or_default(),
                ready: n.status.readiness == NodeReadiness::Ready && n.status.facts.is_some(),
                cordoned: n.cordoned,
                runtimes: n
                    .status
                    .facts
                    .as_ref()
                    .map(|f| f.runtimes.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    };
    let requests: Vec<PlacementRequest> = pending
        .iter()
        .map(|vm| PlacementRequest {
            vm: vm.id.clone(),
            resources: vm.spec.resources,
            runtime: Some(vm.spec.runtime.as_str().to_owned()),
            node_selector: Default::default(),
        })
        .collect();

    // Plan (pure; seeded by the store revision so a rerun on the same state decides the same).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(revision);
    let placements = place(&view, &requests, &Weights::default(), &mut rng);

    // Execute.
    let (mut placed, mut unschedulable) = (0, 0);
    for p in placements {
        match p {
            Placement::Placed { vm, node } => {
                let now = now_ms();
                repo::update_vm(&state, &vm, |v| {
                    if v.status.phase != VmPhase::Pending
                        || v.spec.desired != DesiredState::Running
                        || v.deleting
                    {
                        return Ok(false);
                    }
                    v.status.phase = VmPhase::Scheduled;
                    v.status.node = Some(node.clone());
                    v.status.scheduled_ms = Some(now);
                    v.status.message = None;
                    Ok(true)
                })
                .await?;
                tracing::info!(%vm, %node, "placed");
                placed += 1;
            }
            Placement::Unschedulable { vm, reasons } => {
                let msg = format!(
                    "unschedulable: {}",
                    reasons
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                repo::update_vm(&state, &vm, |v| {
                    if v.status.phase != VmPhase::Pending
                        || v.status.message.as_deref() == Some(msg.as_str())
                    {
                        return Ok(false);
                    }
                    v.status.message = Some(msg.clone());
                    Ok(true)
                })
                .await?;
                unschedulable += 1;
            }
        }
    }
    state.metrics.placements(placed, unschedulable);
    Ok(())
}
