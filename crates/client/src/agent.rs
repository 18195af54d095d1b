//! What only agents call (mutual TLS after enrollment): enrollment, renewal, heartbeats,
//! intents, and the reports of VM status, execs, statistics, telemetry and console. The
//! agent's snapshot, migration and invocation calls live with their resources.
//!
//! On failover, heartbeats, the intents long-poll (from the same revision: revisions are the
//! shared store's), the `PUT` reports and console uploads (addressed by offset) are sent again
//! on the next replica; enrollment (its join token is single-use), renewal (it issues a
//! certificate) and telemetry (a batch would count twice; the agent keeps a failed batch and
//! sends it later) only when no attempt can have been applied.

use std::time::Duration;

use firefleet_api::{
    ConsoleOffset, EnrollRequest, EnrollResponse, ExecResult, HeartbeatRequest, IntentsResponse,
    RenewRequest, RenewResponse, VmStats, VmStatusReport,
};
use reqwest::Method;

use crate::failover::Replay;
use crate::transport::enc;
use crate::{Client, ClientError};

impl Client {
    /// Agent: enrolls.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.call_required_body(Method::POST, "/v1/agent/enroll", Some(req))
            .await
    }

    /// Agent: renews its certificate (mutual TLS with the current one).
    pub async fn renew(&self, req: &RenewRequest) -> Result<RenewResponse, ClientError> {
        self.call_required_body(Method::POST, "/v1/agent/renew", Some(req))
            .await
    }

    /// Agent: heartbeat (the node's latest facts: sent again on failover).
    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<(), ClientError> {
        self.idempotent_post_ignoring_body("/v1/agent/heartbeat", Some(req))
            .await
    }

    /// Agent: the VMs placed on this node, waiting for a change past `after`.
    pub async fn intents(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<IntentsResponse, ClientError> {
        let path = match after {
            Some(a) => format!("/v1/agent/intents?after={a}&wait_ms={}", wait.as_millis()),
            None => "/v1/agent/intents".to_owned(),
        };
        self.call_required_body::<(), _>(Method::GET, &path, None)
            .await
    }

    /// Agent: reports a VM's status.
    pub async fn report_status(
        &self,
        vm: &str,
        report: &VmStatusReport,
    ) -> Result<(), ClientError> {
        self.call_ignoring_body(
            Method::PUT,
            &format!("/v1/agent/vms/{}/status", enc(vm)),
            Some(report),
        )
        .await
    }

    /// Agent: reports an exec's result.
    pub async fn report_exec(
        &self,
        vm: &str,
        id: &str,
        result: &ExecResult,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/agent/vms/{}/execs/{}", enc(vm), enc(id));
        self.call_ignoring_body(Method::PUT, &path, Some(result))
            .await
    }

    /// Agent: reports a VM's statistics.
    pub async fn report_stats(&self, vm: &str, stats: &VmStats) -> Result<(), ClientError> {
        self.call_ignoring_body(
            Method::PUT,
            &format!("/v1/agent/vms/{}/stats", enc(vm)),
            Some(stats),
        )
        .await
    }

    /// Sends a batch of telemetry samples (agents).
    pub async fn post_telemetry(
        &self,
        batch: &firefleet_api::TelemetryBatch,
    ) -> Result<(), ClientError> {
        self.call_ignoring_body(Method::POST, "/v1/agent/telemetry", Some(batch))
            .await
    }

    /// Agent: uploads console bytes at `offset`; returns where the server's copy ends.
    pub async fn upload_console(
        &self,
        vm: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u64, ClientError> {
        // Bytes at an offset: sending them again stores them once.
        let r: ConsoleOffset = self
            .send_required_body(
                &format!("/v1/agent/vms/{}/console?offset={offset}", enc(vm)),
                Replay::Always,
                |http, url| {
                    Ok(http
                        .post(url)
                        .header("content-type", "application/octet-stream")
                        .body(data.clone()))
                },
            )
            .await?;
        Ok(r.next_offset)
    }
}
