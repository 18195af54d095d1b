//! Leader election among server replicas, and the replica registry.
//!
//! Every replica serves the API; the controllers run on one elected leader only. The leader
//! holds [`LEADER_KEY`], whose value names it ([`LeaderRecord`]) and whose `mod_revision` is
//! its **term**: every term has a distinct, growing number, and a leader's controller writes
//! go through a [`crate::FencedStore`] built from [`Leadership::fence`], so a write of a
//! deposed leader is refused by the store however late it arrives.
//!
//! Two implementations of [`Election`]:
//! - [`EtcdElection`] (etcd, several replicas): the leader key is written only if absent and
//!   bound to a lease with a TTL (default 5 s); the leader renews the lease every TTL/3. A
//!   leader that has not renewed successfully within TTL·2/3 of *sending* its last successful
//!   renewal declares the leadership lost, before the lease (which runs from when etcd
//!   received that renewal, later) can expire: a deposed leader stops acting before another
//!   replica can win. Lost too when the leader key changes or disappears. Waiting candidates
//!   watch the leader key and campaign again when it is deleted (lease expiry or resignation).
//! - [`LocalElection`] (SQLite, one replica): the one replica leads at once and for good.
//!
//! Replicas register under [`REPLICAS_PREFIX`]; with etcd the record is leased and disappears
//! within the TTL when its replica dies.
//!
//! The leadership's life is a small state machine, [`LeaderState`]: `Held { valid_until }`
//! while renewals succeed, then `Lost(reason)`, never back. A term that was lost is over; a
//! replica campaigns again for a new term.

mod etcd;
mod lease;
mod local;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{KeyValue, KvStore, Revision, StoreError};

pub use lease::{EtcdElection, EtcdElectionConfig, LeaseId, LeaseStore};
pub use local::LocalElection;

/// The key the leader holds; its `mod_revision` is the leader's term.
pub const LEADER_KEY: &str = "/cluster/leader";
/// Every live replica has a record at `REPLICAS_PREFIX + id`.
pub const REPLICAS_PREFIX: &str = "/cluster/replicas/";
/// Longest replica id accepted.
pub const MAX_REPLICA_ID_LEN: usize = 128;

/// A replica taking part in the election: its id (unique among replicas) and the URL other
/// replicas and clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub address: String,
}

impl Candidate {
    /// A candidate, if `id` is a usable replica id: non-empty, at most
    /// [`MAX_REPLICA_ID_LEN`] bytes, without `/` (it becomes one segment of a key).
    pub fn new(
        id: impl Into<String>,
        address: impl Into<String>,
    ) -> Result<Self, InvalidCandidate> {
        let candidate = Self {
            id: id.into(),
            address: address.into(),
        };
        candidate.validate()?;
        Ok(candidate)
    }

    /// Checks the id (see [`Candidate::new`]).
    pub fn validate(&self) -> Result<(), InvalidCandidate> {
        let id = &self.id;
        if id.is_empty() {
            Err(InvalidCandidate::EmptyId)
        } else if id.len() > MAX_REPLICA_ID_LEN {
            Err(InvalidCandidate::IdTooLong { len: id.len() })
        } else if id.contains('/') || id.chars().any(char::is_control) {
            Err(InvalidCandidate::IdCharacters { id: id.clone() })
        } else {
            Ok(())
        }
    }

    /// This replica's registry key.
    pub fn replica_key(&self) -> String {
        format!("{REPLICAS_PREFIX}{}", self.id)
    }

    /// [`Candidate::validate`] as a store error, for the [`Election`] methods.
    fn checked(&self) -> Result<(), StoreError> {
        self.validate().map_err(StoreError::backend)
    }
}

/// Why a [`Candidate`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCandidate {
    #[error("replica id is empty")]
    EmptyId,
    #[error("replica id is {len} bytes, over the limit of {MAX_REPLICA_ID_LEN}")]
    IdTooLong { len: usize },
    #[error("replica id {id:?} contains '/' or a control character")]
    IdCharacters { id: String },
}

/// A value under [`LEADER_KEY`] or [`REPLICAS_PREFIX`] that is not a replica record.
#[derive(Debug, thiserror::Error)]
#[error("value at {key:?} is not a replica record")]
pub struct MalformedRecord {
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

/// The current leader, as [`Election::leader`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub id: String,
    pub address: String,
    /// The leader key's `mod_revision`: the term, the fence of the leader's writes.
    pub term: Revision,
    /// When this term began (wall clock, ms since the Unix epoch, the leader's clock).
    pub since_ms: u64,
}

/// A live replica, as [`Election::replicas`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub id: String,
    pub address: String,
    /// When the replica registered (wall clock, ms since the Unix epoch, its clock).
    pub since_ms: u64,
}

impl ReplicaRecord {
    fn of(me: &Candidate) -> Self {
        Self {
            id: me.id.clone(),
            address: me.address.clone(),
            since_ms: unix_ms(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(kv: &KeyValue) -> Result<Self, StoreError> {
        serde_json::from_slice(&kv.value).map_err(|source| {
            StoreError::backend(MalformedRecord {
                key: kv.key.clone(),
                source,
            })
        })
    }
}

impl LeaderRecord {
    /// The record at [`LEADER_KEY`] (the same shape as a replica record, plus the term).
    fn decode(kv: &KeyValue) -> Result<Self, StoreError> {
        let record = ReplicaRecord::decode(kv)?;
        Ok(Self {
            id: record.id,
            address: record.address,
            term: kv.mod_revision,
            since_ms: record.since_ms,
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Leader election and the replica registry over one store.
#[async_trait]
pub trait Election: Send + Sync {
    /// Waits (watching the leader key) until `me` holds the leader key, and returns the new
    /// term. While the store is unavailable (no quorum, a leader change) it keeps trying;
    /// it fails on other errors (closed store, invalid candidate, backend failure).
    async fn campaign(&self, me: &Candidate) -> Result<Leadership, StoreError>;

    /// The current leader, if any.
    async fn leader(&self) -> Result<Option<LeaderRecord>, StoreError>;

    /// Every registered replica, sorted by id.
    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError>;

    /// Registers `me` under [`REPLICAS_PREFIX`], kept alive in the background until the
    /// [`Registration`] is dropped or deregistered. Re-registering the same id replaces
    /// the record.
    async fn register(&self, me: &Candidate) -> Result<Registration, StoreError>;
}

/// Why a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// No renewal succeeded within the safety deadline (TTL·2/3 since the last successful
    /// one was sent): the store may be unreachable, the lease may be about to expire.
    RenewalOverdue,
    /// The store said the lease had expired.
    LeaseExpired,
    /// The leader key was changed or deleted by someone else.
    KeyChanged,
    /// The store was closed.
    StoreClosed,
    /// This replica resigned.
    Resigned,
    /// The [`Leadership`] was dropped, or the task keeping it alive ended.
    Abandoned,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RenewalOverdue => "lease renewal overdue",
            Self::LeaseExpired => "lease expired",
            Self::KeyChanged => "leader key changed",
            Self::StoreClosed => "store closed",
            Self::Resigned => "resigned",
            Self::Abandoned => "leadership dropped",
        })
    }
}

/// The state of one term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderState {
    /// Held; with a deadline, until `valid_until` unless a renewal moves it.
    Held { valid_until: Option<Instant> },
    /// Over, for good.
    Lost(LossReason),
}

impl LeaderState {
    /// The only legal transitions: a held term is renewed (its deadline moves forward) or
    /// lost; a lost term stays lost with its first reason.
    pub fn next(self, to: LeaderState) -> LeaderState {
        match (self, to) {
            (Self::Lost(reason), _) => Self::Lost(reason),
            (Self::Held { .. }, to) => to,
        }
    }

    /// Whether the term is held at `now`.
    pub fn is_held_at(self, now: Instant) -> bool {
        match self {
            Self::Held { valid_until } => valid_until.is_none_or(|deadline| now < deadline),
            Self::Lost(_) => false,
        }
    }
}

/// Write side of a term's state, shared by the [`Leadership`] and its renewal task; every
/// update goes through [`LeaderState::next`].
#[derive(Debug, Clone)]
struct StatePublisher(std::sync::Arc<watch::Sender<LeaderState>>);

impl StatePublisher {
    fn new(initial: LeaderState) -> (Self, LeadershipSignal) {
        let (publish, state) = watch::channel(initial);
        (
            Self(std::sync::Arc::new(publish)),
            LeadershipSignal { state },
        )
    }

    /// Moves to `to` if that is legal; returns the state now.
    fn publish(&self, to: LeaderState) -> LeaderState {
        let mut now = to;
        self.0.send_modify(|state| {
            *state = state.next(to);
            now = *state;
        });
        now
    }
}

/// Read side of a term's state; clonable, for the tasks that must stop when it ends.
#[derive(Debug, Clone)]
pub struct LeadershipSignal {
    state: watch::Receiver<LeaderState>,
}

impl LeadershipSignal {
    /// Whether the term is still held (its deadline not passed, not declared lost).
    pub fn is_held(&self) -> bool {
        self.state.borrow().is_held_at(Instant::now())
    }

    /// Resolves when the term is lost, with why. Also resolves at the deadline even if the
    /// task keeping the term alive is stalled.
    pub async fn lost(&self) -> LossReason {
        let mut state = self.state.clone();
        loop {
            let current = *state.borrow_and_update();
            let deadline = match current {
                LeaderState::Lost(reason) => return reason,
                LeaderState::Held { valid_until } => valid_until,
            };
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        // The sender is gone: read its last word, or call it abandoned.
                        return match *state.borrow() {
                            LeaderState::Lost(reason) => reason,
                            LeaderState::Held { .. } => LossReason::Abandoned,
                        };
                    }
                }
                () = expired => return LossReason::RenewalOverdue,
            }
        }
    }
}

/// How a term is given up on purpose.
enum Resigner {
    /// Revoke the lease the leader key is bound to (deletes the key).
    Lease {
        store: std::sync::Arc<dyn LeaseStore>,
        lease: LeaseId,
    },
    /// Delete the key if it still has the term's revision.
    Key {
        store: std::sync::Arc<dyn KvStore>,
        term: Revision,
    },
}

/// This replica's term as leader. Dropping it stops the renewals (the lease then expires
/// within its TTL, as after a crash); [`Leadership::resign`] hands over at once.
pub struct Leadership {
    /// The leader key's `mod_revision` when this replica won: the term.
    pub term: Revision,
    signal: LeadershipSignal,
    publisher: StatePublisher,
    keeper: Option<JoinHandle<()>>,
    resigner: Resigner,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("term", &self.term)
            .field("state", &*self.signal.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The fence for this term's writes: the leader key and the term (see
    /// [`crate::FencedStore::new`]).
    pub fn fence(&self) -> (String, Revision) {
        (LEADER_KEY.to_owned(), self.term)
    }

    /// Resolves when the leadership is lost, with why.
    pub async fn lost(&self) -> LossReason {
        self.signal.lost().await
    }

    /// Whether the leadership is still held.
    pub fn is_held(&self) -> bool {
        self.signal.is_held()
    }

    /// A clonable view of this term's state for other tasks.
    pub fn signal(&self) -> LeadershipSignal {
        self.signal.clone()
    }

    /// Gives the leadership up now (stops renewing, deletes the leader key) so that another
    /// replica takes over at once; for a clean shutdown.
    pub async fn resign(mut self) -> Result<(), StoreError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        self.publisher
            .publish(LeaderState::Lost(LossReason::Resigned));
        match &self.resigner {
            Resigner::Lease { store, lease } => store.revoke_lease(*lease).await,
            Resigner::Key { store, term } => {
                match store.delete(LEADER_KEY, Some(*term)).await {
                    // Someone else's key now: nothing of ours to delete.
                    Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
                    Err(err) => Err(err),
                }
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        self.publisher
            .publish(LeaderState::Lost(LossReason::Abandoned));
    }
}

/// How a registration is taken back.
enum Deregister {
    /// Revoke the registration's current lease (the keeper task publishes it).
    Lease {
        store: std::sync::Arc<dyn LeaseStore>,
        lease: watch::Receiver<Option<LeaseId>>,
    },
    /// Delete the record.
    Key {
        store: std::sync::Arc<dyn KvStore>,
        key: String,
    },
}

/// A replica's record in the registry, kept alive until dropped (then, with etcd, it
/// disappears within the TTL) or deregistered (at once).
pub struct Registration {
    key: String,
    keeper: Option<JoinHandle<()>>,
    deregister: Deregister,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The record's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the record now; for a clean shutdown.
    pub async fn deregister(mut self) -> Result<(), StoreError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        match &self.deregister {
            Deregister::Lease { store, lease } => {
                let current = *lease.borrow();
                match current {
                    Some(lease) => store.revoke_lease(lease).await,
                    None => Ok(()),
                }
            }
            Deregister::Key { store, key } => store.delete(key, None).await.map(|_| ()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// Every registered replica under `store`, sorted by id.
async fn list_replicas(store: &dyn KvStore) -> Result<Vec<ReplicaRecord>, StoreError> {
    let (kvs, _) = store.list(REPLICAS_PREFIX).await?;
    let mut replicas = kvs
        .iter()
        .map(ReplicaRecord::decode)
        .collect::<Result<Vec<_>, _>>()?;
    replicas.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(replicas)
}

/// The current leader under `store`.
async fn read_leader(store: &dyn KvStore) -> Result<Option<LeaderRecord>, StoreError> {
    store
        .get(LEADER_KEY)
        .await?
        .map(|kv| LeaderRecord::decode(&kv))
        .transpose()
}

/// Fractions of the TTL the leader works with.
fn fraction(ttl: Duration, numerator: u32, denominator: u32) -> Duration {
    ttl * numerator / denominator
}

#[cfg(test)]
mod tests;
