//! The engine's input: what the cluster looks like and what is asked for.

use firefleet_types::node::NodeReadiness;
use firefleet_types::{Labels, NodeId, NodeInfo, Resources, VmId};

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Its labels (topology and others), matched against node selectors.
    pub labels: Labels,
    /// What it offers to VMs in total.
    pub capacity: Resources,
    /// What VMs already placed on it take (may exceed `capacity` after a capacity drop).
    pub allocated: Resources,
    /// Heartbeats arrive.
    pub ready: bool,
    /// Excluded from new placements.
    pub cordoned: bool,
    /// VMM runtimes it has (`qemu`, `firecracker`).
    pub runtimes: Vec<String>,
}

impl NodeView {
    /// The view of a stored node, given what is already allocated on it. A node that has not
    /// reported facts yet has no capacity and no runtimes.
    #[must_use]
    pub fn from_node_info(info: &NodeInfo, allocated: Resources) -> NodeView {
        let facts = info.status.facts.as_ref();
        NodeView {
            id: info.id.clone(),
            labels: info.labels.clone(),
            capacity: facts.map(|f| f.capacity).unwrap_or_default(),
            allocated,
            ready: info.status.readiness == NodeReadiness::Ready,
            cordoned: info.cordoned,
            runtimes: facts.map(|f| f.runtimes.clone()).unwrap_or_default(),
        }
    }

    /// Capacity not yet allocated (zero where allocation exceeds capacity).
    #[must_use]
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }
}

/// The whole cluster, as prepared by the server from the store. Node order does not matter:
/// the engine orders nodes by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// Every node, schedulable or not.
    pub nodes: Vec<NodeView>,
}

/// One VM to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// The VM.
    pub vm: VmId,
    /// What it needs.
    pub resources: Resources,
    /// The runtime it must run under, if it cares.
    pub runtime: Option<String>,
    /// Labels the node must carry, all of them with these values.
    pub node_selector: Labels,
}

/// Weights of the scoring terms (DESIGN section 3: availability, risk, cost, latency).
/// Placeholder: the first-fit engine does not score yet, so these do not change placements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Weight of spreading over failure domains and node reliability.
    pub availability: f64,
    /// Weight of the guard's node and tenant risk.
    pub risk: f64,
    /// Weight of the node's price.
    pub cost: f64,
    /// Weight of latency from the workload's users to the node.
    pub latency: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            availability: 1.0,
            risk: 1.0,
            cost: 1.0,
            latency: 1.0,
        }
    }
}
