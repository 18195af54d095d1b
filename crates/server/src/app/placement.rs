//! Placement: what the scheduler engine is given. The fleet as the scheduler sees it
//! ([`cluster_view`]: nodes, what is allocated on them, host compliance, prices and power) and
//! what it is asked for a VM ([`request_for`]); used by the scheduling and compliance
//! controllers, drains and the migration planner.

use std::collections::BTreeMap;

use firefleet_scheduler::{ClusterView, NodeView, PlacementRequest};
use firefleet_types::{node::NodeReadiness, NodeId, NodeInfo, Resources, Vm, VmPhase};

use crate::app::policy;
use crate::{repo, ApiError, AppState};

/// The scheduler's view of the fleet: every node with what the active VMs in `vms` take on it,
/// its tenants, and prices, spot flag and edge power budget from the topology file.
pub async fn cluster_view(state: &AppState, vms: &[Vm]) -> Result<ClusterView, ApiError> {
    let (nodes, _) = repo::list_json::<NodeInfo>(state, "/nodes/").await?;
    // Host posture: compliant when its record at the current policy version passes (a node
    // not evaluated yet at this version is not, until the compliance controller gets to it).
    let version = policy::version(state).await?;
    let compliant: std::collections::HashSet<String> = policy::records(state, repo::NODE_RECORDS)
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

/// Why the scheduler could not place a VM, as one line (`; ` between the reasons).
pub fn reasons_text(reasons: &[impl ToString]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
