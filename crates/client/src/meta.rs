//! The server's health and metrics.

use firefleet_api::Health;
use reqwest::Method;

use crate::failover::{Answered, Attempts, Replay};
use crate::{Client, ClientError};

impl Client {
    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/healthz", None)
            .await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let Answered { url, response } = self
            .send(
                "/metrics",
                Replay::Always,
                &mut Attempts::default(),
                |http, url| Ok(http.get(url)),
            )
            .await?;
        response
            .text()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }
}
