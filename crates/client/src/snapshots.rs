//! Snapshots: request, list, restore from; the agent's outcome report and the server's copy
//! of an archive (upload, download).
//!
//! On failover, asking for a snapshot is sent again (names are unique per VM: after a refusal
//! that a lost attempt may explain, the snapshot of that name is returned); a restore only
//! when no attempt can have been applied (it is carried out once per request); the report and
//! the archive's upload and download (before its bytes flow) are sent again on the next
//! replica.

use std::path::Path;

use firefleet_api::{CreateSnapshotRequest, RestoreVmRequest, SnapshotList, SnapshotReport};
use firefleet_types::{Snapshot, Vm};
use reqwest::Method;

use crate::transport::enc;
use crate::{Client, ClientError};

impl Client {
    /// Requests a snapshot.
    pub async fn snapshot_create(&self, vm: &str, name: &str) -> Result<Snapshot, ClientError> {
        let req = CreateSnapshotRequest {
            name: name.to_owned(),
        };
        let made = || async {
            let list = self.snapshot_list(vm).await.ok()?;
            list.into_iter().find(|s| s.name == name)
        };
        let path = format!("/v1/vms/{}/snapshots", enc(vm));
        Ok(self.create_named(&path, &req, made).await?.0)
    }

    /// Lists a VM's snapshots.
    pub async fn snapshot_list(&self, vm: &str) -> Result<Vec<Snapshot>, ClientError> {
        Ok(self
            .call_required_body::<(), SnapshotList>(
                Method::GET,
                &format!("/v1/vms/{}/snapshots", enc(vm)),
                None,
            )
            .await?
            .items)
    }

    /// Restores a VM from a snapshot.
    pub async fn vm_restore(&self, vm: &str, snapshot: &str) -> Result<Vm, ClientError> {
        let req = RestoreVmRequest {
            snapshot: snapshot.to_owned(),
        };
        self.call_required_body(
            Method::POST,
            &format!("/v1/vms/{}/restore", enc(vm)),
            Some(&req),
        )
        .await
    }

    /// Agent: reports a snapshot's outcome.
    pub async fn report_snapshot(
        &self,
        vm: &str,
        name: &str,
        report: &SnapshotReport,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/agent/vms/{}/snapshots/{}", enc(vm), enc(name));
        self.call_ignoring_body(Method::PUT, &path, Some(report))
            .await
    }

    /// Agent: keeps a copy of a VM's snapshot (the tar file `archive`) on the server, for a
    /// restore on another node (after a failover).
    pub async fn snapshot_upload(
        &self,
        vm: &str,
        name: &str,
        archive: &Path,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/agent/vms/{}/snapshots/{}/data", enc(vm), enc(name));
        self.upload_tar(&path, archive).await
    }

    /// Agent: the server's copy of a VM's snapshot, into `out`; returns its size.
    pub async fn snapshot_download(
        &self,
        vm: &str,
        name: &str,
        out: &mut tokio::fs::File,
    ) -> Result<u64, ClientError> {
        let path = format!("/v1/agent/vms/{}/snapshots/{}/data", enc(vm), enc(name));
        self.stream_to(&path, out).await
    }
}
