//! Node readiness: a node whose heartbeats stopped for longer than [`crate::NODE_GRACE`] is
//! NotReady and gets no new placements.

use firefleet_types::{node::NodeReadiness, NodeInfo};

use crate::{now_ms, repo, ApiError, AppState, NODE_GRACE};

pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    let now = now_ms();
    let grace = NODE_GRACE.as_millis() as u64;
    let (nodes, _) = repo::list_json::<NodeInfo>(&state, "/nodes/").await?;
    for node in nodes {
        if node.status.readiness == NodeReadiness::Ready
            && now.saturating_sub(node.status.last_heartbeat_ms) > grace
        {
            repo::update_node(&state, &node.id, |n| {
                let stale = now.saturating_sub(n.status.last_heartbeat_ms) > grace;
                if stale && n.status.readiness == NodeReadiness::Ready {
                    n.status.readiness = NodeReadiness::NotReady;
                    true
                } else {
                    false
                }
            })
            .await?;
            tracing::warn!(node = %node.id, "node missed its heartbeats: NotReady");
        }
    }
    Ok(())
}
