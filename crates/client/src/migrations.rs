//! Migrations: ask for one and follow it; the agent's side (live stream, snapshot archive,
//! step reports).

use firefleet_api::{MigrateRequest, MigrationReport};
use firefleet_types::Migration;
use reqwest::Method;

use crate::transport::{enc, TRANSFER_TIMEOUT};
use crate::{Client, ClientError};

impl Client {
    /// Asks for a VM to be migrated to node `to` (admin).
    pub async fn vm_migrate(
        &self,
        vm: &str,
        to: &str,
        by_snapshot: bool,
    ) -> Result<Migration, ClientError> {
        self.call_required_body(
            Method::POST,
            &format!("/v1/vms/{}/migrate", enc(vm)),
            Some(&MigrateRequest {
                to: to.to_owned(),
                by_snapshot,
            }),
        )
        .await
    }

    /// A VM's current or last migration.
    pub async fn vm_migration(&self, vm: &str) -> Result<Migration, ClientError> {
        self.call_required_body::<(), _>(
            Method::GET,
            &format!("/v1/vms/{}/migration", enc(vm)),
            None,
        )
        .await
    }

    /// Agent, live migration source: streams the VMM's migration output to the server, which
    /// forwards it to the destination as it comes.
    pub async fn migration_live_send<S>(&self, vm: &str, stream: S) -> Result<(), ClientError>
    where
        S: futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        let url = self.url(&format!("/v1/agent/migrations/{}/live", enc(vm)));
        let req = self
            .http()
            .put(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        self.finish_optional_body::<serde_json::Value>(url, req)
            .await
            .map(drop)
    }

    /// Agent, live migration destination: the source's stream, as the server forwards it,
    /// written to `out`; returns the bytes.
    pub async fn migration_live_receive<W>(&self, vm: &str, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let url = self.url(&format!("/v1/agent/migrations/{}/live", enc(vm)));
        let n = self.stream_to(url, out).await?;
        let _ = out.shutdown().await;
        Ok(n)
    }

    /// Agent: uploads a migration snapshot (a tar file), streaming it.
    pub async fn migration_upload(
        &self,
        vm: &str,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/agent/migrations/{}/snapshot", enc(vm)));
        self.upload_tar(url, file, len).await
    }

    /// Agent: downloads a migration snapshot into `out`, streaming it; returns its size.
    pub async fn migration_download(
        &self,
        vm: &str,
        out: &mut tokio::fs::File,
    ) -> Result<u64, ClientError> {
        let url = self.url(&format!("/v1/agent/migrations/{}/snapshot", enc(vm)));
        self.stream_to(url, out).await
    }

    /// Agent: reports a migration step.
    pub async fn migration_report(
        &self,
        vm: &str,
        report: &MigrationReport,
    ) -> Result<(), ClientError> {
        self.call_ignoring_body(
            Method::POST,
            &format!("/v1/agent/migrations/{}/report", enc(vm)),
            Some(report),
        )
        .await
    }
}
