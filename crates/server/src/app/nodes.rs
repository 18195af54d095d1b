//! Nodes: join tokens, enrolment (the records; the certificate is signed by the handler
//! before, so a bad CSR does not burn the token) and removal.

use std::time::Duration;

use firefleet_api::JoinTokenResponse;
use firefleet_types::{NodeId, NodeInfo};

use crate::{now_ms, repo, ApiError, AppState};

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
