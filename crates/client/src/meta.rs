//! The server's health and metrics.

use firefleet_api::Health;
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/healthz", None)
            .await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url("/metrics");
        let resp = self
            .http()
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        resp.text()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }
}
