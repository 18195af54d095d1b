//! The control plane's replicas and leader.

use firefleet_api::ClusterStatus;
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// `GET /v1/cluster` (admin): the replicas, and which one leads.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/cluster", None)
            .await
    }
}
