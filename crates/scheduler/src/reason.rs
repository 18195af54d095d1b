//! The engine's output: a placement or the reasons there is none.

use std::fmt;

use firefleet_types::{NodeId, VmId};

/// The result for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Run `vm` on `node`.
    Placed {
        /// The VM.
        vm: VmId,
        /// Where it goes.
        node: NodeId,
    },
    /// No node can take `vm` now.
    Unschedulable {
        /// The VM.
        vm: VmId,
        /// Why: one reason per node, or counts per kind of reason when there are many nodes
        /// (see [`crate::MAX_LISTED_REASONS`]); never empty.
        reasons: Vec<UnschedulableReason>,
    },
}

impl Placement {
    /// The VM this result is for.
    #[must_use]
    pub fn vm(&self) -> &VmId {
        match self {
            Placement::Placed { vm, .. } | Placement::Unschedulable { vm, .. } => vm,
        }
    }

    /// The chosen node, if placed.
    #[must_use]
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Placement::Placed { node, .. } => Some(node),
            Placement::Unschedulable { .. } => None,
        }
    }
}

/// Why a node cannot take a VM (the first hard constraint it fails, checked in the order of
/// [`ReasonKind`]), or why nothing can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnschedulableReason {
    /// The cluster has no nodes.
    NoNodes,
    /// The node does not heartbeat.
    NotReady {
        /// The node.
        node: NodeId,
    },
    /// The node is cordoned.
    Cordoned {
        /// The node.
        node: NodeId,
    },
    /// The node lacks a label of the node selector, or has another value.
    SelectorMismatch {
        /// The node.
        node: NodeId,
        /// The first selector key that did not match.
        key: String,
    },
    /// The node does not have the runtime the VM needs.
    RuntimeMissing {
        /// The node.
        node: NodeId,
        /// The runtime asked for.
        runtime: String,
    },
    /// The node is dedicated to another tenant (label `dedicated`).
    DedicatedToOther {
        /// The node.
        node: NodeId,
        /// The tenant it is dedicated to.
        tenant: String,
    },
    /// The node is outside the clouds or regions the VM's data may be in.
    Residency {
        /// The node.
        node: NodeId,
        /// `cloud` or `region`.
        key: String,
        /// The node's value of that label, if it has one.
        value: Option<String>,
    },
    /// The VM requires a compliant node and this node's posture is not.
    NotCompliant {
        /// The node.
        node: NodeId,
    },
    /// Not enough free vCPUs.
    InsufficientCpu {
        /// The node.
        node: NodeId,
        /// Free vCPUs (after the placements earlier in the batch).
        free: u32,
        /// vCPUs the VM wants.
        want: u32,
    },
    /// Not enough free memory.
    InsufficientMemory {
        /// The node.
        node: NodeId,
        /// Free memory in MiB (after the placements earlier in the batch).
        free_mib: u64,
        /// Memory the VM wants in MiB.
        want_mib: u64,
    },
    /// Not enough free GPUs.
    InsufficientGpus {
        /// The node.
        node: NodeId,
        /// Free GPUs (after the placements earlier in the batch).
        free: u32,
        /// GPUs the VM wants.
        want: u32,
    },
    /// The node's power budget cannot take the VM's estimated draw.
    InsufficientPower {
        /// The node.
        node: NodeId,
        /// Watts left in its budget (after the placements earlier in the batch).
        free_watts: u32,
        /// Watts the VM is estimated to draw.
        want_watts: u32,
    },
    /// Too many nodes to list: how many were excluded for one kind of reason.
    Summary {
        /// The kind of reason.
        kind: ReasonKind,
        /// How many nodes.
        nodes: usize,
    },
}

impl UnschedulableReason {
    /// The kind of a per-node reason (`None` for [`UnschedulableReason::NoNodes`]).
    #[must_use]
    pub fn kind(&self) -> Option<ReasonKind> {
        Some(match self {
            UnschedulableReason::NoNodes => return None,
            UnschedulableReason::NotReady { .. } => ReasonKind::NotReady,
            UnschedulableReason::Cordoned { .. } => ReasonKind::Cordoned,
            UnschedulableReason::SelectorMismatch { .. } => ReasonKind::SelectorMismatch,
            UnschedulableReason::RuntimeMissing { .. } => ReasonKind::RuntimeMissing,
            UnschedulableReason::DedicatedToOther { .. } => ReasonKind::DedicatedToOther,
            UnschedulableReason::Residency { .. } => ReasonKind::Residency,
            UnschedulableReason::NotCompliant { .. } => ReasonKind::NotCompliant,
            UnschedulableReason::InsufficientCpu { .. } => ReasonKind::InsufficientCpu,
            UnschedulableReason::InsufficientMemory { .. } => ReasonKind::InsufficientMemory,
            UnschedulableReason::InsufficientGpus { .. } => ReasonKind::InsufficientGpus,
            UnschedulableReason::InsufficientPower { .. } => ReasonKind::InsufficientPower,
            UnschedulableReason::Summary { kind, .. } => *kind,
        })
    }
}

impl fmt::Display for UnschedulableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnschedulableReason::NoNodes => f.write_str("the cluster has no nodes"),
            UnschedulableReason::NotReady { node } => write!(f, "node {node}: not ready"),
            UnschedulableReason::Cordoned { node } => write!(f, "node {node}: cordoned"),
            UnschedulableReason::SelectorMismatch { node, key } => {
                write!(
                    f,
                    "node {node}: label {key:?} does not match the node selector"
                )
            }
            UnschedulableReason::RuntimeMissing { node, runtime } => {
                write!(f, "node {node}: runtime {runtime:?} not available")
            }
            UnschedulableReason::DedicatedToOther { node, tenant } => {
                write!(f, "node {node}: dedicated to tenant {tenant:?}")
            }
            UnschedulableReason::Residency { node, key, value } => match value {
                Some(v) => write!(f, "node {node}: {key} {v:?} not allowed (data residency)"),
                None => write!(f, "node {node}: no {key} label (data residency)"),
            },
            UnschedulableReason::NotCompliant { node } => {
                write!(f, "node {node}: host posture not compliant")
            }
            UnschedulableReason::InsufficientGpus { node, free, want } => {
                write!(
                    f,
                    "node {node}: insufficient gpus ({free} free, {want} wanted)"
                )
            }
            UnschedulableReason::InsufficientPower {
                node,
                free_watts,
                want_watts,
            } => {
                write!(
                    f,
                    "node {node}: insufficient power budget ({free_watts} W free, {want_watts} W wanted)"
                )
            }
            UnschedulableReason::InsufficientCpu { node, free, want } => {
                write!(
                    f,
                    "node {node}: insufficient cpu ({free} vCPUs free, {want} wanted)"
                )
            }
            UnschedulableReason::InsufficientMemory {
                node,
                free_mib,
                want_mib,
            } => {
                write!(
                    f,
                    "node {node}: insufficient memory ({free_mib} MiB free, {want_mib} MiB wanted)"
                )
            }
            UnschedulableReason::Summary { kind, nodes } => {
                write!(
                    f,
                    "{nodes} node{}: {kind}",
                    if *nodes == 1 { "" } else { "s" }
                )
            }
        }
    }
}

/// The kinds of per-node reasons, in the order the engine checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReasonKind {
    /// See [`UnschedulableReason::NotReady`].
    NotReady,
    /// See [`UnschedulableReason::Cordoned`].
    Cordoned,
    /// See [`UnschedulableReason::SelectorMismatch`].
    SelectorMismatch,
    /// See [`UnschedulableReason::RuntimeMissing`].
    RuntimeMissing,
    /// See [`UnschedulableReason::DedicatedToOther`].
    DedicatedToOther,
    /// See [`UnschedulableReason::Residency`].
    Residency,
    /// See [`UnschedulableReason::NotCompliant`].
    NotCompliant,
    /// See [`UnschedulableReason::InsufficientCpu`].
    InsufficientCpu,
    /// See [`UnschedulableReason::InsufficientMemory`].
    InsufficientMemory,
    /// See [`UnschedulableReason::InsufficientGpus`].
    InsufficientGpus,
    /// See [`UnschedulableReason::InsufficientPower`].
    InsufficientPower,
}

impl ReasonKind {
    /// Every kind, in check order.
    pub const ALL: [ReasonKind; 11] = [
        ReasonKind::NotReady,
        ReasonKind::Cordoned,
        ReasonKind::SelectorMismatch,
        ReasonKind::RuntimeMissing,
        ReasonKind::DedicatedToOther,
        ReasonKind::Residency,
        ReasonKind::NotCompliant,
        ReasonKind::InsufficientCpu,
        ReasonKind::InsufficientMemory,
        ReasonKind::InsufficientGpus,
        ReasonKind::InsufficientPower,
    ];
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReasonKind::NotReady => "not ready",
            ReasonKind::Cordoned => "cordoned",
            ReasonKind::SelectorMismatch => "node selector does not match",
            ReasonKind::RuntimeMissing => "runtime not available",
            ReasonKind::DedicatedToOther => "dedicated to another tenant",
            ReasonKind::Residency => "outside the allowed clouds/regions",
            ReasonKind::NotCompliant => "host posture not compliant",
            ReasonKind::InsufficientCpu => "insufficient cpu",
            ReasonKind::InsufficientMemory => "insufficient memory",
            ReasonKind::InsufficientGpus => "insufficient gpus",
            ReasonKind::InsufficientPower => "insufficient power budget",
        })
    }
}
