//! The engine's input: what the cluster looks like and what is asked for.

use std::collections::BTreeMap;

use firefleet_types::node::NodeReadiness;
use firefleet_types::{Labels, NodeId, NodeInfo, Resources, VmId};

/// Label naming a node's cloud (data residency, spread).
pub const LABEL_CLOUD: &str = "cloud";
/// Label naming a node's region or edge site (data residency, spread, latency).
pub const LABEL_REGION: &str = "region";
/// Label naming a node's zone (spread).
pub const LABEL_ZONE: &str = "zone";
/// Label reserving a node for one tenant: `dedicated=<tenant>` admits only that tenant.
pub const LABEL_DEDICATED: &str = "dedicated";

/// Resources as the scheduler counts them: the VM-facing [`Resources`] plus GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Capacity {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Whole GPUs (passthrough).
    pub gpus: u32,
}

impl Capacity {
    /// Whether `want` fits in `self`, on every dimension.
    #[must_use]
    pub fn fits(&self, want: &Capacity) -> bool {
        self.vcpus >= want.vcpus && self.memory_mib >= want.memory_mib && self.gpus >= want.gpus
    }

    /// `self - other`, each dimension floored at zero.
    #[must_use]
    pub fn saturating_sub(&self, other: &Capacity) -> Capacity {
        Capacity {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// `self + other`, each dimension capped at its maximum.
    #[must_use]
    pub fn saturating_add(&self, other: &Capacity) -> Capacity {
        Capacity {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }
}

impl From<Resources> for Capacity {
    fn from(r: Resources) -> Self {
        Capacity {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            gpus: 0,
        }
    }
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Its labels: matched against node selectors; `cloud`, `region`, `zone` give its failure
    /// domains and location, `dedicated` reserves it for a tenant.
    pub labels: Labels,
    /// What it offers to VMs in total.
    pub capacity: Capacity,
    /// What VMs already placed on it take (may exceed `capacity` after a capacity drop).
    pub allocated: Capacity,
    /// Heartbeats arrive.
    pub ready: bool,
    /// Excluded from new placements.
    pub cordoned: bool,
    /// VMM runtimes it has (`qemu`, `firecracker`).
    pub runtimes: Vec<String>,
    /// Its host posture passes the compliance checks.
    pub compliant: bool,
    /// Power budget for VMs (edge sites), if it has one.
    pub power_budget_watts: Option<u32>,
    /// Power the VMs on it are estimated to draw now.
    pub power_used_watts: u32,
    /// Probability-like reliability in `[0, 1]` (1: never fails). Values outside are clamped.
    pub reliability: f64,
    /// The guard's risk score for the node in `[0, 1]` (0: no risk). Values outside are clamped.
    pub risk: f64,
    /// Price of one vCPU for an hour (any currency, the same on every node).
    pub price_vcpu_hour: f64,
    /// Price of one GiB of memory for an hour.
    pub price_gib_hour: f64,
    /// Spot / preemptible capacity (cheaper, counted as a risk of eviction).
    pub spot: bool,
    /// VMs already on the node, per tenant (tenant co-location risk).
    pub tenants: BTreeMap<String, u32>,
    /// Replicas already on the node, per replica group (spread).
    pub groups: BTreeMap<String, u32>,
}

impl NodeView {
    /// A ready, uncordoned, compliant node with neutral scoring facts (reliability 1, risk 0,
    /// price 0, no power budget, nothing placed): a base for the fields the caller knows.
    #[must_use]
    pub fn new(id: NodeId, capacity: Capacity) -> NodeView {
        NodeView {
            id,
            labels: Labels::new(),
            capacity,
            allocated: Capacity::default(),
            ready: true,
            cordoned: false,
            runtimes: Vec::new(),
            compliant: true,
            power_budget_watts: None,
            power_used_watts: 0,
            reliability: 1.0,
            risk: 0.0,
            price_vcpu_hour: 0.0,
            price_gib_hour: 0.0,
            spot: false,
            tenants: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// The view of a stored node, given what is already allocated on it. A node that has not
    /// reported facts yet has no capacity and no runtimes. Scoring facts are neutral
    /// (see [`NodeView::new`]).
    #[must_use]
    pub fn from_node_info(info: &NodeInfo, allocated: Resources) -> NodeView {
        let facts = info.status.facts.as_ref();
        let mut view = NodeView::new(
            info.id.clone(),
            facts.map(|f| f.capacity).unwrap_or_default().into(),
        );
        view.labels = info.labels.clone();
        view.allocated = allocated.into();
        view.ready = info.status.readiness == NodeReadiness::Ready;
        view.cordoned = info.cordoned;
        view.runtimes = facts.map(|f| f.runtimes.clone()).unwrap_or_default();
        view
    }

    /// Capacity not yet allocated (zero where allocation exceeds capacity).
    #[must_use]
    pub fn free(&self) -> Capacity {
        self.capacity.saturating_sub(&self.allocated)
    }

    /// Power left in the budget (`None`: no budget).
    #[must_use]
    pub fn free_watts(&self) -> Option<u32> {
        self.power_budget_watts
            .map(|b| b.saturating_sub(self.power_used_watts))
    }
}

/// The whole cluster, as prepared by the server from the store. Node order does not matter:
/// the engine orders nodes by id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    /// Every node, schedulable or not.
    pub nodes: Vec<NodeView>,
    /// Latency in ms from a user region (first) to a node region (second). A missing pair
    /// counts as the worst latency in the table, except a region to itself, which is 0.
    pub latency_ms: BTreeMap<(String, String), u32>,
}

/// One VM to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// The VM.
    pub vm: VmId,
    /// What it needs.
    pub resources: Capacity,
    /// The runtime it must run under, if it cares.
    pub runtime: Option<String>,
    /// Labels the node must carry, all of them with these values.
    pub node_selector: Labels,
    /// Its tenant (dedicated hosts, co-location risk).
    pub tenant: String,
    /// Clouds it may run in (data residency); empty: any.
    pub allowed_clouds: Vec<String>,
    /// Regions it may run in (data residency); empty: any.
    pub allowed_regions: Vec<String>,
    /// Only on nodes whose posture is compliant.
    pub require_compliant: bool,
    /// Estimated power draw, checked against edge power budgets.
    pub watts: u32,
    /// Replica group it belongs to, spread over nodes, zones, regions and clouds.
    pub group: Option<String>,
    /// Workload class, selecting its [`Weights`] (see [`Weights::per_class`]).
    pub class: String,
    /// Region its users are in (latency term); `None`: latency does not matter.
    pub user_region: Option<String>,
}

impl PlacementRequest {
    /// A request with only resources set: any tenant `""`, no residency, compliance, power,
    /// group, class or user region: a base for the fields the caller knows.
    #[must_use]
    pub fn new(vm: VmId, resources: Capacity) -> PlacementRequest {
        PlacementRequest {
            vm,
            resources,
            runtime: None,
            node_selector: Labels::new(),
            tenant: String::new(),
            allowed_clouds: Vec::new(),
            allowed_regions: Vec::new(),
            require_compliant: false,
            watts: 0,
            group: None,
            class: String::new(),
            user_region: None,
        }
    }
}

/// Weights of the scoring terms (DESIGN section 3). The objective of placing a VM on a node is
/// `availability * A - (risk * R + cost * C + latency * L)`, each term in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TermWeights {
    /// Weight of spreading over failure domains and node reliability.
    pub availability: f64,
    /// Weight of the guard's node risk, tenant co-location and spot eviction.
    pub risk: f64,
    /// Weight of the node's price.
    pub cost: f64,
    /// Weight of latency from the workload's users to the node.
    pub latency: f64,
    /// Weight of filling nodes already in use (the node's utilisation once the VM is on it):
    /// bin packing, for cost-driven classes that would rather leave whole nodes empty to be
    /// released. 0 by default (availability and risk prefer spreading).
    pub pack: f64,
}

impl Default for TermWeights {
    fn default() -> Self {
        TermWeights {
            availability: 1.0,
            risk: 1.0,
            cost: 1.0,
            latency: 1.0,
            pack: 0.0,
        }
    }
}

/// How many nodes the engine scores per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Score every feasible node (reference, slow at fleet scale).
    Exhaustive,
    /// Visit location buckets best bound first, score up to `per_bucket` feasible nodes in
    /// each (best static score first, plus up to half as many of the best empty nodes), and
    /// stop after `buckets` buckets with a feasible node
    /// or when no remaining bucket's bound can beat the best score. Falls back to
    /// [`Search::Exhaustive`] for a request when it finds no feasible node.
    Sampled {
        /// Feasible nodes scored per bucket.
        per_bucket: usize,
        /// Buckets with a feasible node visited at most.
        buckets: usize,
    },
}

/// Weights per workload class, and the search mode. The default: all terms weigh 1, no
/// per-class overrides, [`Search::Sampled`] with 16 nodes per bucket and 4 buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Weights of classes without an override.
    pub default: TermWeights,
    /// Overrides per [`PlacementRequest::class`].
    pub per_class: BTreeMap<String, TermWeights>,
    /// How many candidates to score.
    pub search: Search,
}

impl Weights {
    /// The weights of a workload class.
    #[must_use]
    pub fn for_class(&self, class: &str) -> &TermWeights {
        self.per_class.get(class).unwrap_or(&self.default)
    }

    /// The same weights, scoring every feasible node.
    #[must_use]
    pub fn exhaustive(mut self) -> Weights {
        self.search = Search::Exhaustive;
        self
    }
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            default: TermWeights::default(),
            per_class: BTreeMap::new(),
            // Measured on 10,000 nodes / 60 regions and the Azure trace (benches/place.rs):
            // 0.992 of the exhaustive objective at 22.5k placements/s (16: 0.989 at 20.8k/s;
            // 32: 0.994 at 18.5k/s).
            search: Search::Sampled {
                per_bucket: 24,
                buckets: 4,
            },
        }
    }
}
