//! The guard's threats and quarantined images.

use reqwest::Method;

use crate::transport::enc;
use crate::{Client, ClientError};

impl Client {
    /// Threats the guard found (the caller's tenant's; an admin's: all).
    pub async fn threats(&self) -> Result<Vec<firefleet_api::Threat>, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/threats", None)
            .await
    }

    /// One threat.
    pub async fn threat(&self, id: &str) -> Result<firefleet_api::Threat, ClientError> {
        self.call_required_body::<(), _>(Method::GET, &format!("/v1/threats/{}", enc(id)), None)
            .await
    }

    /// Acknowledges a threat (the first acknowledgement stands: sent again on failover).
    pub async fn ack_threat(
        &self,
        id: &str,
        req: &firefleet_api::AckThreatRequest,
    ) -> Result<firefleet_api::Threat, ClientError> {
        self.idempotent_post(&format!("/v1/threats/{}/ack", enc(id)), Some(req))
            .await
    }

    /// Images the guard quarantined (admin).
    pub async fn quarantined_images(
        &self,
    ) -> Result<Vec<firefleet_api::QuarantinedImage>, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/quarantine/images", None)
            .await
    }

    /// Lifts an image's quarantine (admin).
    pub async fn release_image(&self, image: &str) -> Result<(), ClientError> {
        self.call_ignoring_body::<()>(
            Method::DELETE,
            &format!("/v1/quarantine/images/{}", enc(image)),
            None,
        )
        .await
    }
}
