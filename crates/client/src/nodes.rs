//! Nodes: list, cordon, drain, remove.

use firefleet_api::{DrainResponse, NodeList};
use firefleet_types::NodeInfo;
use reqwest::Method;

use crate::transport::enc;
use crate::{Client, ClientError};

impl Client {
    /// Lists nodes.
    pub async fn node_list(&self) -> Result<Vec<NodeInfo>, ClientError> {
        Ok(self
            .call_required_body::<(), NodeList>(Method::GET, "/v1/nodes", None)
            .await?
            .items)
    }

    /// Cordons (`true`) or uncordons a node (idempotent: sent again on failover).
    pub async fn node_cordon(&self, node: &str, cordon: bool) -> Result<NodeInfo, ClientError> {
        let verb = if cordon { "cordon" } else { "uncordon" };
        self.idempotent_post::<(), NodeInfo>(&format!("/v1/nodes/{node}/{verb}"), None)
            .await
    }

    /// Removes a node (its certificates are revoked); returns the removed record.
    pub async fn node_remove(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.call_required_body::<(), _>(Method::DELETE, &format!("/v1/nodes/{}", enc(node)), None)
            .await
    }

    /// Drains a node: cordons it and starts a migration per running VM on it (sent again only
    /// when no attempt can have been applied).
    pub async fn node_drain(&self, node: &str) -> Result<DrainResponse, ClientError> {
        self.call_required_body::<(), _>(
            Method::POST,
            &format!("/v1/nodes/{}/drain", enc(node)),
            None,
        )
        .await
    }
}
