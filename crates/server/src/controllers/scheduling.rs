//! Scheduling: places Pending VMs with the scheduler engine and records the placement.

use std::collections::BTreeMap;

use firefleet_scheduler::{place, ClusterView, NodeView, Placement, PlacementRequest, Weights};
use firefleet_types::{
    node::NodeReadiness, DesiredState, NodeId, NodeInfo, Resources, Vm, VmPhase,
};
use rand::SeedableRng;

use crate::{now_ms, repo, ApiError, AppState};

/// The scheduler's view of the fleet: every node with what the active VMs in `vms` take on it,
/// its tenants, and prices, spot flag and edge power budget from the topology file.
pub async fn cluster_view(state: &AppState, vms: &[Vm]) -> Result<ClusterView, ApiError> {
    let (nodes, _) = repo::list_json::<NodeInfo>(state, "/nodes/").await?;
    // Host posture: compliant when its record at the current policy version passes (a node
    // not evaluated yet at this version is not, until the compliance controller gets to it).
    let version = crate::policy::version(state).await?;
    let compliant: std::collections::HashSet<String> =
        crate::policy::records(state, crate::policy::NODE_RECORDS)
            .await?
            .into_iter()
            .filter(|r| r.record.passed && r.record.policy_version == version)
            .map(|r| r.record.subject)
            .collect();
    let mut allocated: BTreeMap<NodeId, Resources> = BTreeMap::new();
    let mut tenants: BTreeMap<NodeId, BTreeMap<String, u32>> = BTreeMap::new();
    for vm in vms
        .iter()
        .filter(|vm| vm.status.phase.is_active() || vm.status.phase == VmPhase::Paused)
    {
        if let Some(node) = &vm.status.node {
            let a = allocated.entry(node.clone()).or_default();
            *a = a.saturating_add(&vm.spec.resources);
            *tenants
                .entry(node.clone())
                .or_default()
                .entry(vm.spec.tenant.as_str().to_owned())
                .or_default() += 1;
        }
    }
    Ok(ClusterView {
        nodes: nodes
            .iter()
            .map(|n| {
                let mut view =
                    NodeView::from_node_info(n, allocated.get(&n.id).copied().unwrap_or_default());
                // A node that has not reported facts yet is not ready for placements.
                view.ready = n.status.readiness == NodeReadiness::Ready && n.status.facts.is_some();
                view.tenants = tenants.get(&n.id).cloned().unwrap_or_default();
                view.compliant = compliant.contains(n.id.as_str());
                // Price, spot and edge power budget from the operator's topology file.
                if let Some((vcpu, gib)) = state.topology.hourly_price(&n.labels) {
                    (view.price_vcpu_hour, view.price_gib_hour) = (vcpu, gib);
                }
                view.spot = n.labels.get("lifecycle").is_some_and(|l| l == "spot");
                view.power_budget_watts = state
                    .topology
                    .edge_site(&n.labels)
                    .and_then(|site| site.power_budget_watts);
                view.power_used_watts = allocated
                    .get(&n.id)
                    .map_or(0, |a| a.vcpus.saturating_mul(WATTS_PER_VCPU));
                view
            })
            .collect(),
        latency_ms: state.topology.latency_table(),
    })
}

/// The power a VM is taken to draw per vCPU, watts: an estimate (a busy vCPU of a small edge
/// box), used against edge sites' power budgets until nodes measure per-VM power.
pub const WATTS_PER_VCPU: u32 = 5;

/// What the scheduler is asked for a VM.
pub fn request_for(vm: &Vm) -> PlacementRequest {
    let mut request = PlacementRequest::new(vm.id.clone(), vm.spec.resources.into());
    request.watts = vm.spec.resources.vcpus.saturating_mul(WATTS_PER_VCPU);
    request.runtime = Some(vm.spec.runtime.as_str().to_owned());
    request.tenant = vm.spec.tenant.as_str().to_owned();
    let p = &vm.spec.placement;
    request.node_selector = p.node_selector.clone();
    request.allowed_clouds = p.allowed_clouds.clone();
    request.allowed_regions = p.allowed_regions.clone();
    request.group = p.group.clone();
    if let Some(class) = &p.class {
        request.class = class.clone();
    }
    request.user_region = p.user_region.clone();
    request.require_compliant = p.compliant_host;
    request
}

pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    // Prepare.
    let (vms, revision) = repo::list_vms(&state).await?;
    let waiting: Vec<_> = vms
        .iter()
        .filter(|vm| {
            vm.status.phase == VmPhase::Pending
                && vm.spec.desired == DesiredState::Running
                && !vm.deleting
        })
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    // Only VMs with a passing compliance record at the current policy version are placed (the
    // compliance controller evaluates the others, and stops those that fail).
    let version = crate::policy::version(&state).await?;
    let mut pending = Vec::with_capacity(waiting.len());
    for vm in waiting {
        let key = format!("{}{}", crate::policy::VM_RECORDS, vm.id);
        let record = repo::get_json::<crate::policy::StoredRecord>(&state, &key).await?;
        if super::compliance::placeable(record.as_ref().map(|(r, _)| r), version) {
            pending.push(vm);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let view = cluster_view(&state, &vms).await?;
    let requests: Vec<PlacementRequest> = pending.iter().map(|vm| request_for(vm)).collect();

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
