//! The etcd backend: [`EtcdStore`], a [`KvStore`] over etcd's v3 API.
//!
//! Key layout, under the cluster's prefix `P` (e.g. `/firefleet/prod`): data key `K` lives at
//! `P/kv` + `K`; `P/meta/base` holds nothing but marks the store's base revision, its
//! `create_revision`. It is created (create-only transaction) by the first connect to `P` and
//! must never be deleted.
//!
//! Revisions are etcd's, shifted by the base: store revision = etcd revision − base, so an
//! empty store has revision 0, and with one store per etcd every write adds exactly 1. When
//! several clusters share one etcd, a store's revision also advances on the others' writes:
//! still strictly increasing per write, but not by exactly one. Compaction is etcd's and so
//! is shared by every prefix of one etcd. Every revision crossing the API is converted; 0
//! stays 0 ("absent") in compares.
//!
//! Writes are etcd transactions comparing `mod_revision`; a failed compare reads the key in
//! the same transaction, so [`StoreError::Conflict::actual`] is exact. Every call has
//! [`EtcdConfig::request_timeout`]: without quorum, a call fails with
//! [`StoreError::Unavailable`] within it, never hangs. A call that could not even reach a
//! member (connection refused) is sent again to another one within that time; a call whose
//! fate is unknown (the connection broke after sending) is not repeated: it fails with
//! `Unavailable`, as a timeout does. Requests carry etcd's require-leader flag: a member
//! without a leader answers at once instead of stalling. Watches resume after a broken
//! connection from where they stopped (see `watch`).

mod config;
mod error;
mod lease;
mod ops;
mod watch;

#[cfg(feature = "test-util")]
pub mod testing;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, KvClient, LeaseClient, TlsOptions, WatchClient,
};
use tokio::time::Instant;

use crate::{
    validate_key, validate_prefix, validate_put, validate_txn, Compare, KeyValue, KvStore, Op,
    Revision, StoreError, TxnResponse, Watch, MAX_KEY_LEN, MAX_VALUE_LEN,
};
pub use config::{EtcdConfig, EtcdTls};
pub use error::EtcdError;
use error::{classify, Failure};
pub use lease::LeaseId;
use ops::{Keys, Revisions};

/// Keys per page of a `list` (all read at one revision).
const LIST_PAGE: i64 = 128;
/// The largest gRPC message the client accepts: a full page of keys at the size limits.
const MAX_MESSAGE: usize =
    LIST_PAGE as usize * (MAX_VALUE_LEN + 2 * MAX_KEY_LEN + 1024) + (1 << 20);
/// Pause before sending again a call that could not reach any member.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The gRPC clients of one connection (cheap to clone: they share the channel).
#[derive(Clone)]
struct Clients {
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
}

struct Inner {
    config: EtcdConfig,
    keys: Keys,
    revisions: Revisions,
    /// `None` once closed.
    clients: RwLock<Option<Clients>>,
    /// Turns `true` on close; watches end when it does.
    closed: tokio::sync::watch::Sender<bool>,
}

/// The etcd-backed [`KvStore`]. Cloning shares the same connection.
///
/// Its methods must run inside a tokio runtime (watches spawn a task).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.config.endpoints)
            .field("prefix", &self.inner.config.prefix)
            .field("base", &self.inner.revisions.base())
            .finish_non_exhaustive()
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    let bytes = std::fs::read(path).map_err(|source| EtcdError::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(EtcdError::TlsNotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

impl EtcdStore {
    /// Connects to etcd and opens (creating if needed) the store under `config.prefix`.
    /// Fails with [`StoreError::Unavailable`] naming the endpoints when no member answers
    /// within the request timeout, and with [`StoreError::Backend`] ([`EtcdError`]) on a bad
    /// configuration, an unreadable TLS file (named) or a refused TLS handshake.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore, StoreError> {
        config.validate()?;
        let endpoints = config.endpoints_display();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_require_leader(true)
            // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &config.tls {
            let ca = read_pem("CA certificate", &tls.ca)?;
            let cert = read_pem("client certificate", &tls.cert)?;
            let key = read_pem("client key", &tls.key)?;
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key)),
            );
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|source| EtcdError::Client {
                endpoints: endpoints.clone(),
                source,
            })?;
        let clients = Clients {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
        };
        let keys = Keys::new(&config.prefix);
        let config = EtcdConfig {
            watch_buffer: config.watch_buffer.max(1),
            ..config
        };
        let (closed, _) = tokio::sync::watch::channel(false);
        let mut inner = Inner {
            config,
            keys,
            revisions: Revisions::new(0),
            clients: RwLock::new(Some(clients)),
            closed,
        };
        let base = inner.ensure_base().await?;
        inner.revisions = Revisions::new(base);
        Ok(EtcdStore {
            inner: Arc::new(inner),
        })
    }

    /// The configuration this store was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// Closes the connection. Later calls fail with [`StoreError::Closed`]; watches end with
    /// it. Closing twice is a no-op.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner
            .clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.inner.closed.send_replace(true);
        Ok(())
    }
}

impl Inner {
    fn clients(&self) -> Result<Clients, Failure> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Failure::Closed)
    }

    /// Runs `attempt` with the request timeout; sends it again, within that time, while it
    /// fails without having reached a member.
    async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, Failure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_with(false, attempt).await
    }

    /// [`Inner::call`] for a request that may be applied any number of times (a read, a lease
    /// renewal): sent again, within the request timeout, after any "retry later" failure,
    /// including a connection that broke with the request on it (a member killed or
    /// restarted), so that another member answers.
    async fn call_idempotent<T, F, Fut>(&self, attempt: F) -> Result<T, Failure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_with(true, attempt).await
    }

    async fn call_with<T, F, Fut>(&self, idempotent: bool, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut last = None;
        loop {
            let clients = self.clients()?;
            let failure = match tokio::time::timeout_at(deadline, attempt(clients)).await {
                Ok(Ok(value)) => return Ok(value),
                Err(_) => return Err(last.unwrap_or(Failure::TimedOut)),
                Ok(Err(err)) => classify(&err),
            };
            match failure {
                Failure::Unavailable { unsent, .. }
                    if (unsent || idempotent) && Instant::now() + RETRY_PAUSE < deadline =>
                {
                    last = Some(failure);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return Err(other),
            }
        }
    }

    /// The store error for a failed `op`.
    fn error(&self, op: &'static str, failure: Failure) -> StoreError {
        let endpoints = self.config.endpoints_display();
        match failure {
            Failure::Closed => StoreError::Closed,
            Failure::TimedOut => StoreError::Unavailable {
                reason: format!(
                    "etcd at {endpoints} did not answer {op} within {:?}",
                    self.config.request_timeout
                ),
            },
            Failure::Unavailable { detail, .. } => StoreError::Unavailable {
                reason: format!("etcd at {endpoints} cannot serve {op} now: {detail}"),
            },
            Failure::Tls(detail) => EtcdError::Tls { endpoints, detail }.into(),
            Failure::TooLarge(limit, detail) => {
                EtcdError::RequestTooLarge { op, limit, detail }.into()
            }
            Failure::Compacted | Failure::FutureRevision | Failure::LeaseNotFound => {
                EtcdError::Request {
                    op,
                    endpoints,
                    detail: format!("unexpected answer: {failure:?}"),
                }
                .into()
            }
            Failure::Other(detail) => EtcdError::Request {
                op,
                endpoints,
                detail,
            }
            .into(),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if *self.closed.borrow() {
            return Err(StoreError::Closed);
        }
        Ok(())
    }
}

#[async_trait]
impl KvStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        self.inner.check_open()?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        validate_prefix(prefix)?;
        self.inner.check_open()?;
        self.inner.list(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        validate_put(key, &value)?;
        self.inner.check_open()?;
        self.inner.put(key, value).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        validate_put(key, &value)?;
        self.inner.check_open()?;
        self.inner
            .compare_and_swap(key, expected_mod_revision, value)
            .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        validate_key(key)?;
        self.inner.check_open()?;
        self.inner.delete(key, expected_mod_revision).await
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        validate_txn(&compares, &success, &failure)?;
        self.inner.check_open()?;
        self.inner.txn(compares, success, failure).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.check_open()?;
        self.inner.revision().await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<Watch, StoreError> {
        validate_prefix(prefix)?;
        self.inner.check_open()?;
        watch::start(&self.inner, prefix, from_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.check_open()?;
        self.inner.compact(revision).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        EtcdStore::close(self).await
    }
}
