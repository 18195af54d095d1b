//! Nodes: listing, cordons, join tokens, enrolment (the records; the handler signs the
//! certificate before, so a bad CSR does not burn the token) and removal.

use std::time::Duration;

use firefleet_api::JoinTokenResponse;
use firefleet_types::{NodeId, NodeInfo};

use crate::{now_ms, repo, ApiError, AppState};

/// Every node.
pub async fn list(state: &AppState) -> Result<Vec<NodeInfo>, ApiError> {
    Ok(repo::list_json::<NodeInfo>(state, "/nodes/").await?.0)
}

/// Node `id`, if it is enrolled.
pub async fn get(state: &AppState, id: &NodeId) -> Result<Option<NodeInfo>, ApiError> {
    Ok(repo::get_json::<NodeInfo>(state, &repo::node_key(id))
        .await?
        .map(|(n, _)| n))
}

/// Cordons (no new placements; its VMs keep running) or uncordons a node. Idempotent.
pub async fn set_cordon(
    state: &AppState,
    id: &NodeId,
    cordoned: bool,
) -> Result<NodeInfo, ApiError> {
    let n = repo::update_node(state, id, |n| {
        let changed = n.cordoned != cordoned;
        n.cordoned = cordoned;
        changed
    })
    .await?;
    state.kick.notify_waiters();
    Ok(n)
}

/// Creates a one-time join token valid for `ttl`, bound to `node` if given, giving the node
/// `cordon` if set.
pub async fn create_join_token(
    state: &AppState,
    ttl: Duration,
    node: Option<NodeId>,
    cordon: Option<bool>,
) -> Result<JoinTokenResponse, ApiError> {
    Ok(repo::create_join_token(state, now_ms(), ttl, node, cordon).await?)
}

/// Consumes a join token and records the node with its certificate (see
/// [`repo::enroll_node`]).
pub async fn enroll(
    state: &AppState,
    join_token: &str,
    enrolment: &repo::Enrolment,
) -> Result<repo::Enrolled, ApiError> {
    Ok(repo::enroll_node(state, now_ms(), join_token, enrolment).await?)
}

/// Removes a node with its certificates and compliance record (see [`repo::remove_node`]).
pub async fn remove(state: &AppState, id: &NodeId) -> Result<NodeInfo, ApiError> {
    Ok(repo::remove_node(state, id).await?)
}
