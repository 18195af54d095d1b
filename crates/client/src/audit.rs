//! The audit log and its verification (admin).

use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// Audit log entries with seq > `after`, in order, at most `limit` (admin).
    pub async fn audit_list(
        &self,
        after: u64,
        limit: Option<usize>,
    ) -> Result<firefleet_api::AuditList, ClientError> {
        let mut path = format!("/v1/audit?after={after}");
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.call_required_body::<(), _>(Method::GET, &path, None)
            .await
    }

    /// The server's check of the stored audit chain (admin).
    pub async fn audit_verify(&self) -> Result<firefleet_api::AuditVerifyResponse, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/audit/verify", None)
            .await
    }
}
