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
            UnschedulableReason::InsufficientCpu { .. } => ReasonKind::InsufficientCpu,
            UnschedulableReason::InsufficientMemory { .. } => ReasonKind::InsufficientMemory,
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
    /// See [`UnschedulableReason::InsufficientCpu`].
    InsufficientCpu,
    /// See [`UnschedulableReason::InsufficientMemory`].
    InsufficientMemory,
}

impl ReasonKind {
    /// Every kind, in check order.
    pub const ALL: [ReasonKind; 6] = [
        ReasonKind::NotReady,
        ReasonKind::Cordoned,
        ReasonKind::SelectorMismatch,
        ReasonKind::RuntimeMissing,
        ReasonKind::InsufficientCpu,
        ReasonKind::InsufficientMemory,
    ];
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReasonKind::NotReady => "not ready",
            ReasonKind::Cordoned => "cordoned",
            ReasonKind::SelectorMismatch => "node selector does not match",
            ReasonKind::RuntimeMissing => "runtime not available",
            ReasonKind::InsufficientCpu => "insufficient cpu",
            ReasonKind::InsufficientMemory => "insufficient memory",
        })
    }
}
