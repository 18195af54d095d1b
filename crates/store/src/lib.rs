//! FireFleet's durable state: a revisioned key-value store in the etcd model.
//!
//! This crate owns
//! - the [`KvStore`] trait every part of the control plane writes through: keys are UTF-8
//!   paths (`/vms/<id>`), values are bytes; one global [`Revision`] that grows by one per
//!   write transaction; per-key `create_revision`, `mod_revision` and `version`;
//!   compare-and-swap on a key's revision, atomic multi-key transactions, prefix listing, and
//!   watches that replay history from a revision and then follow live writes;
//! - the embedded backend, [`SqliteStore`] (one file, WAL, `synchronous=FULL`: a write that
//!   returned `Ok` survives a crash of the process or the host);
//! - the distributed backend, [`EtcdStore`] (etcd's v3 API, one key prefix per cluster,
//!   revisions shifted to start at 0, watches resumed across member failures, TLS with
//!   client certificates), and the lease primitives leader election builds on;
//! - with the `test-util` feature, `conformance`: the suite every backend must pass
//!   unchanged, and `etcd::testing`: real etcd members on free ports for tests.
//!
//! [`StoreError::Unavailable`] means "not now, retry" (no quorum, unreachable, timed out),
//! as opposed to [`StoreError::Backend`], a real failure.
//!
//! It must not know about FireFleet's objects (VMs, nodes, ...): typed repositories live above
//! it, in `server`. Blocking database calls never run on the async runtime's worker threads.

pub mod election;
mod error;
pub mod etcd;
pub mod fence;
mod model;
pub mod sqlite;
mod validate;
mod watch;

#[cfg(feature = "test-util")]
pub mod conformance;

use async_trait::async_trait;

pub use election::{
    Candidate, Election, EtcdElection, EtcdElectionConfig, LeaderRecord, Leadership, LocalElection,
    ReplicaRecord, LEADER_KEY, REPLICAS_PREFIX,
};
pub use error::{InvalidKeyReason, StoreError};
pub use etcd::{EtcdConfig, EtcdError, EtcdStore, EtcdTls, LeaseId};
pub use fence::FencedStore;
pub use model::{Compare, Event, EventKind, KeyValue, Op, Revision, TxnResponse};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use validate::{
    validate_key, validate_prefix, validate_put, validate_txn, validate_value, MAX_KEY_LEN,
    MAX_VALUE_LEN,
};
pub use watch::Watch;

/// A revisioned key-value store. Object safe: the server holds an `Arc<dyn KvStore>`.
///
/// Writes are atomic and durable once they return `Ok`. A "write" is any call that changes at
/// least one key; it advances the revision by exactly one, and every change it makes carries
/// that revision. Calls that change nothing (a failed compare, deleting an absent key) leave
/// the revision alone.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// The key's current value, or `None`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix` (byte-wise; `"/a/"` does not match `"/ab"`; `""`
    /// matches everything), sorted by key, with the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Writes unconditionally; returns the write's revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError>;

    /// Writes only if the key's `mod_revision` is `expected_mod_revision` (0: only if the key
    /// does not exist); otherwise [`StoreError::Conflict`] with the actual revision.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError>;

    /// Deletes the key, if `expected_mod_revision` is `None` or equals its `mod_revision`
    /// (else [`StoreError::Conflict`]). Returns the delete's revision, `None` if the key did
    /// not exist (with `Some(r)`, `r > 0`, an absent key is a conflict with actual 0).
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError>;

    /// If every compare holds, applies `success`, else `failure`, atomically; all changes
    /// share one revision. A key may appear in at most one op of a branch.
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError>;

    /// The current revision (that of the last write; 0 for an empty store).
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Every event on keys under `prefix` with revision `>= from_revision` (0 is treated as
    /// 1), in revision order, then live events, with no gaps and no duplicates. Typical use:
    /// `list` at revision `r`, then `watch(prefix, r + 1)`. Fails with
    /// [`StoreError::Compacted`] if `from_revision` is below the compaction point.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<Watch, StoreError>;

    /// Drops the history below `revision` (no-op if already compacted that far). Watches can
    /// then start at `revision` or later. `revision` may be at most the current revision.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Releases the store's resources (file lock, connections). Later calls fail with
    /// [`StoreError::Closed`] and open watches end with it. Idempotent: closing twice is a
    /// no-op.
    async fn close(&self) -> Result<(), StoreError>;
}
