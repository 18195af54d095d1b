//! What the executor needs of the control plane, behind a trait so that operations can be
//! tested without a network: migration reports and the transfers of snapshots and live
//! migration streams. [`Client`] is the real one. Errors are the messages the operations put
//! in their own reports.

use std::path::Path;

use async_trait::async_trait;
use firefleet_api::MigrationReport;
use firefleet_client::Client;
use firefleet_types::error_chain;

/// Where a snapshot to download comes from.
#[derive(Debug, Clone, Copy)]
pub enum Download<'a> {
    /// The migration transfer of the VM.
    Migration,
    /// The server's copy of the VM's snapshot of this name.
    Replica(&'a str),
}

/// The control plane's part in operations (see the module doc).
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// Reports a migration step of VM `vm`.
    async fn report_migration(&self, vm: &str, report: &MigrationReport) -> Result<(), String>;
    /// Uploads the migration snapshot archive `archive` of VM `vm`.
    async fn upload_migration(&self, vm: &str, archive: &Path) -> Result<(), String>;
    /// Uploads the archive of snapshot `name` of VM `vm` (the server's copy).
    async fn upload_snapshot(&self, vm: &str, name: &str, archive: &Path) -> Result<(), String>;
    /// Downloads a snapshot archive of VM `vm` into the new file `to` (synced); its size.
    async fn download(&self, vm: &str, from: Download<'_>, to: &Path) -> Result<u64, String>;
    /// Streams what `from` yields (QEMU's outgoing live migration) to the server, to its end.
    async fn send_live(&self, vm: &str, from: tokio::net::UnixStream) -> Result<(), String>;
    /// Writes the live migration stream the server forwards into `to`; the bytes written.
    async fn receive_live(&self, vm: &str, to: tokio::net::UnixStream) -> Result<u64, String>;
}

#[async_trait]
impl ControlPlane for Client {
    async fn report_migration(&self, vm: &str, report: &MigrationReport) -> Result<(), String> {
        self.migration_report(vm, report)
            .await
            .map_err(|e| e.to_string())
    }

    async fn upload_migration(&self, vm: &str, archive: &Path) -> Result<(), String> {
        self.migration_upload(vm, archive)
            .await
            .map_err(|e| error_chain(&e))
    }

    async fn upload_snapshot(&self, vm: &str, name: &str, archive: &Path) -> Result<(), String> {
        self.snapshot_upload(vm, name, archive)
            .await
            .map_err(|e| error_chain(&e))
    }

    async fn download(&self, vm: &str, from: Download<'_>, to: &Path) -> Result<u64, String> {
        let mut f = tokio::fs::File::create(to)
            .await
            .map_err(|e| e.to_string())?;
        let n = match from {
            Download::Migration => self.migration_download(vm, &mut f).await,
            Download::Replica(snapshot) => self.snapshot_download(vm, snapshot, &mut f).await,
        }
        .map_err(|e| error_chain(&e))?;
        f.sync_all().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    async fn send_live(&self, vm: &str, from: tokio::net::UnixStream) -> Result<(), String> {
        use futures::StreamExt;
        let stream = tokio_util::io::ReaderStream::new(from).map(|r| r.map(|b| b.to_vec()));
        self.migration_live_send(vm, stream)
            .await
            .map_err(|e| error_chain(&e))
    }

    async fn receive_live(&self, vm: &str, mut to: tokio::net::UnixStream) -> Result<u64, String> {
        self.migration_live_receive(vm, &mut to)
            .await
            .map_err(|e| error_chain(&e))
    }
}

/// Runs blocking `f` (VMM, disk and host-network work) on tokio's blocking pool, off the async
/// runtime's threads. Err if it panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task: {e}"))
}
