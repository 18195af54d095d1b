//! Migrations: ask for one and follow it; the agent's side (live stream, snapshot archive,
//! step reports).
//!
//! On failover, step reports (the server applies each once), archive uploads and downloads
//! (before their bytes flow) are sent again on the next replica; asking for a migration only
//! when no attempt can have been applied; the live stream only while none of it was taken
//! (bytes of it that went to a failed replica are gone: the migration fails and is rolled
//! back).

use std::{
    path::Path,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use firefleet_api::{MigrateRequest, MigrationReport};
use firefleet_types::Migration;
use reqwest::Method;

use crate::failover::{Attempts, Replay};
use crate::transport::{enc, read_answer, TRANSFER_TIMEOUT};
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
        let path = format!("/v1/agent/migrations/{}/live", enc(vm));
        let stream = Untaken::new(stream);
        let answered = self
            .send(
                &path,
                Replay::UnlessSent,
                &mut Attempts::default(),
                |http, url| {
                    if stream.taken() {
                        return Err(ClientError::Decode {
                            url: url.to_owned(),
                            detail: "part of the live migration stream went to a replica that \
                                 failed; it cannot be sent again"
                                .to_owned(),
                        });
                    }
                    Ok(http
                        .put(url)
                        .timeout(TRANSFER_TIMEOUT)
                        .header("content-type", "application/octet-stream")
                        .body(reqwest::Body::wrap_stream(stream.clone())))
                },
            )
            .await?;
        read_answer::<serde_json::Value>(answered).await.map(drop)
    }

    /// Agent, live migration destination: the source's stream, as the server forwards it,
    /// written to `out`; returns the bytes.
    pub async fn migration_live_receive<W>(&self, vm: &str, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let path = format!("/v1/agent/migrations/{}/live", enc(vm));
        let n = self.stream_to(&path, out).await?;
        let _ = out.shutdown().await;
        Ok(n)
    }

    /// Agent: uploads a migration snapshot (the tar file `archive`), streaming it.
    pub async fn migration_upload(&self, vm: &str, archive: &Path) -> Result<(), ClientError> {
        self.upload_tar(
            &format!("/v1/agent/migrations/{}/snapshot", enc(vm)),
            archive,
        )
        .await
    }

    /// Agent: downloads a migration snapshot into `out`, streaming it; returns its size.
    pub async fn migration_download(
        &self,
        vm: &str,
        out: &mut tokio::fs::File,
    ) -> Result<u64, ClientError> {
        self.stream_to(&format!("/v1/agent/migrations/{}/snapshot", enc(vm)), out)
            .await
    }

    /// Agent: reports a migration step (the server applies a step once: sent again on
    /// failover).
    pub async fn migration_report(
        &self,
        vm: &str,
        report: &MigrationReport,
    ) -> Result<(), ClientError> {
        self.idempotent_post_ignoring_body(
            &format!("/v1/agent/migrations/{}/report", enc(vm)),
            Some(report),
        )
        .await
    }
}

/// A stream that the bodies of several attempts share: each attempt's body polls the one
/// stream, so an attempt that failed before it took a chunk leaves it whole for the next.
struct Untaken<S> {
    inner: Arc<Mutex<Pin<Box<S>>>>,
    taken: Arc<AtomicBool>,
}

impl<S> Clone for Untaken<S> {
    fn clone(&self) -> Self {
        Untaken {
            inner: self.inner.clone(),
            taken: self.taken.clone(),
        }
    }
}

impl<S> Untaken<S> {
    fn new(stream: S) -> Self {
        Untaken {
            inner: Arc::new(Mutex::new(Box::pin(stream))),
            taken: Arc::default(),
        }
    }

    /// Whether an attempt took a chunk (or the end) of the stream.
    fn taken(&self) -> bool {
        self.taken.load(Ordering::SeqCst)
    }
}

impl<S: futures::Stream> futures::Stream for Untaken<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let next = inner.as_mut().poll_next(cx);
        if next.is_ready() {
            self.taken.store(true, Ordering::SeqCst);
        }
        next
    }
}
