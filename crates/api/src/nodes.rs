//! Nodes (`/v1/nodes`): the list and what a drain started.

use firefleet_types::{Migration, NodeInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A list of nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// The nodes, by id.
    pub items: Vec<NodeInfo>,
}

/// What `POST /v1/nodes/{node}/drain` started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainResponse {
    /// The node (now cordoned).
    pub node: String,
    /// A migration per running or paused VM that had somewhere to go.
    pub migrations: Vec<Migration>,
    /// VMs that could not be moved, with why.
    pub stuck: Vec<StuckVm>,
}

/// A VM a drain could not move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StuckVm {
    /// The VM.
    pub vm: String,
    /// Why.
    pub reason: String,
}
