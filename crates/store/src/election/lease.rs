//! Election over a store with leases (etcd): the campaign, the leader's renewal loop and the
//! leased replica registry.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

use super::{
    fraction, list_replicas, read_leader, Candidate, Deregister, Election, LeaderRecord,
    LeaderState, Leadership, LossReason, Registration, ReplicaRecord, Resigner, StatePublisher,
    LEADER_KEY,
};
use crate::{EventKind, KeyValue, KvStore, Revision, StoreError, Watch};

pub use crate::etcd::LeaseId;

/// The lease primitives a [`EtcdElection`] needs beyond [`KvStore`] (etcd's).
#[async_trait]
pub trait LeaseStore: KvStore {
    /// Grants a lease of `ttl`.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews the lease once; the TTL granted, [`Duration::ZERO`] if the lease had expired.
    async fn keep_alive_once(&self, lease: LeaseId) -> Result<Duration, StoreError>;
    /// Revokes the lease, deleting every key bound to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Writes `key` bound to `lease` (if `only_if_absent`, only if the key does not exist):
    /// `Ok(revision)` if written, `Err(current)` with the existing key-value if not.
    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        only_if_absent: bool,
    ) -> Result<Result<Revision, KeyValue>, StoreError>;
}

/// Timing of a [`EtcdElection`]. Derived: renew every `ttl/3`; a leader whose last
/// successful renewal was sent more than `ttl·2/3` ago has lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdElectionConfig {
    /// The lease TTL: how long after the leader's last renewal another replica can take over.
    pub ttl: Duration,
}

impl Default for EtcdElectionConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5),
        }
    }
}

impl EtcdElectionConfig {
    /// How often the leader renews.
    pub fn renew_every(&self) -> Duration {
        fraction(self.ttl, 1, 3)
    }

    /// How long a renewal sent at `t` keeps the term valid: until `t + valid_for`, which is
    /// before the lease, renewed when etcd received it (after `t`), can expire.
    pub fn valid_for(&self) -> Duration {
        fraction(self.ttl, 2, 3)
    }

    /// How soon a failed renewal is retried.
    fn retry_after(&self) -> Duration {
        fraction(self.ttl, 1, 10).max(Duration::from_millis(50))
    }
}

/// [`Election`] over a [`LeaseStore`]: the etcd election (see the module doc of
/// [`crate::election`]).
#[derive(Clone)]
pub struct EtcdElection {
    store: Arc<dyn LeaseStore>,
    config: EtcdElectionConfig,
}

impl std::fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EtcdElection {
    /// An election over `store` with `config`. A TTL under 1 s is refused (etcd's own floor
    /// is higher still; it raises shorter leases, which only makes this side safer).
    pub fn new(store: Arc<dyn LeaseStore>, config: EtcdElectionConfig) -> Result<Self, StoreError> {
        if config.ttl < Duration::from_secs(1) {
            return Err(StoreError::backend(TtlTooShort { ttl: config.ttl }));
        }
        Ok(Self { store, config })
    }

    /// The timing in use.
    pub fn config(&self) -> EtcdElectionConfig {
        self.config
    }

    /// Waits until the leader key, seen at `seen`, is deleted (or may have been: the watch
    /// ended), watching it and re-reading it every TTL in case the watch went quiet.
    async fn wait_for_vacancy(&self, seen: Revision) -> Result<(), StoreError> {
        let mut watch = match self.store.watch(LEADER_KEY, seen + 1).await {
            Ok(watch) => watch,
            Err(StoreError::Compacted { .. }) => return Ok(()),
            Err(err) => return Err(err),
        };
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    Some(Ok(event)) if event.kv.key == LEADER_KEY
                        && event.kind == EventKind::Delete => return Ok(()),
                    Some(Ok(_)) => {}
                    // The watch ended (lagged, compacted, connection): look again, after a
                    // pause so that a store that keeps failing is not hammered.
                    Some(Err(_)) | None => {
                        sleep(self.config.retry_after()).await;
                        return Ok(());
                    }
                },
                () = sleep(self.config.ttl) => {
                    if self.store.get(LEADER_KEY).await?.is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One round of a campaign: `Some` if this replica won; `None` once the leader key it
    /// found is gone (or may be), to try again.
    async fn try_once(&self, me: &Candidate) -> Result<Option<Leadership>, StoreError> {
        let sent = Instant::now();
        let lease = self.store.grant_lease(self.config.ttl).await?;
        let record = ReplicaRecord::of(me).encode();
        let put = self.store.put_leased(LEADER_KEY, record, lease, true).await;
        match put {
            Ok(Ok(term)) => {
                let valid_until = sent + self.config.valid_for();
                if Instant::now() >= valid_until {
                    // Won, but too slowly to be sure of the lease: give it back.
                    self.drop_lease(lease).await;
                    return Ok(None);
                }
                Ok(Some(self.lead(lease, term, valid_until)))
            }
            Ok(Err(current)) => {
                self.drop_lease(lease).await;
                self.wait_for_vacancy(current.mod_revision).await?;
                Ok(None)
            }
            Err(err) => {
                self.drop_lease(lease).await;
                Err(err)
            }
        }
    }

    /// Revokes `lease`, best effort (it expires by itself otherwise).
    async fn drop_lease(&self, lease: LeaseId) {
        let _ = timeout(self.config.renew_every(), self.store.revoke_lease(lease)).await;
    }
}

/// A TTL too short to renew within.
#[derive(Debug, thiserror::Error)]
#[error("election TTL {ttl:?} is under the minimum of 1s")]
pub struct TtlTooShort {
    pub ttl: Duration,
}

#[async_trait]
impl Election for EtcdElection {
    async fn campaign(&self, me: &Candidate) -> Result<Leadership, StoreError> {
        me.checked()?;
        loop {
            match self.try_once(me).await {
                Ok(Some(leadership)) => return Ok(leadership),
                Ok(None) => {}
                // No quorum, a leader change, a member down: wait and try again.
                Err(StoreError::Unavailable { .. }) => sleep(self.config.retry_after()).await,
                Err(err) => return Err(err),
            }
        }
    }

    async fn leader(&self) -> Result<Option<LeaderRecord>, StoreError> {
        read_leader(self.store.as_ref()).await
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        list_replicas(self.store.as_ref()).await
    }

    async fn register(&self, me: &Candidate) -> Result<Registration, StoreError> {
        me.checked()?;
        let key = me.replica_key();
        let record = ReplicaRecord::of(me).encode();
        // The first record is written before returning, so that a caller sees it listed.
        let lease = self.store.grant_lease(self.config.ttl).await?;
        if let Err(err) = self
            .store
            .put_leased(&key, record.clone(), lease, false)
            .await
        {
            self.drop_lease(lease).await;
            return Err(err);
        }
        let (publish, current) = watch::channel(Some(lease));
        let keeper = tokio::spawn(keep_registered(
            self.store.clone(),
            self.config,
            key.clone(),
            record,
            lease,
            publish,
        ));
        Ok(Registration {
            key,
            keeper: Some(keeper),
            deregister: Deregister::Lease {
                store: self.store.clone(),
                lease: current,
            },
        })
    }
}

impl EtcdElection {
    /// Starts the renewal loop of a won term.
    fn lead(&self, lease: LeaseId, term: Revision, valid_until: Instant) -> Leadership {
        let (publisher, signal) = StatePublisher::new(LeaderState::Held {
            valid_until: Some(valid_until),
        });
        let keeper = tokio::spawn(keep_leading(
            self.store.clone(),
            self.config,
            lease,
            term,
            valid_until,
            publisher.clone(),
        ));
        Leadership {
            term,
            signal,
            publisher,
            keeper: Some(keeper),
            resigner: Resigner::Lease {
                store: self.store.clone(),
                lease,
            },
        }
    }
}

/// The next event of an optional watch; pending forever without one.
async fn next_event(watch: &mut Option<Watch>) -> Option<Result<crate::Event, StoreError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// Watches the leader key from just after the term's write; `Err(reason)` if it already
/// changed.
async fn watch_leader_key(
    store: &dyn LeaseStore,
    term: Revision,
) -> Result<Option<Watch>, LossReason> {
    match store.watch(LEADER_KEY, term + 1).await {
        Ok(watch) => Ok(Some(watch)),
        // History since the term is gone: read the key instead.
        Err(StoreError::Compacted { .. }) => match store.get(LEADER_KEY).await {
            Ok(Some(kv)) if kv.mod_revision == term => Ok(None),
            Ok(_) => Err(LossReason::KeyChanged),
            Err(_) => Ok(None),
        },
        Err(StoreError::Closed) => Err(LossReason::StoreClosed),
        Err(_) => Ok(None),
    }
}

/// The leader's loop: renew every TTL/3, measure validity from when each renewal was sent,
/// and publish `Lost` at the first of: the deadline passing, the lease found expired, the
/// leader key changed, the store closed. Then revoke the lease (best effort), so that a
/// leader that merely lost track of time hands over without waiting for the TTL.
async fn keep_leading(
    store: Arc<dyn LeaseStore>,
    config: EtcdElectionConfig,
    lease: LeaseId,
    term: Revision,
    mut valid_until: Instant,
    publisher: StatePublisher,
) {
    let mut next_renewal = valid_until - config.valid_for() + config.renew_every();
    let opened = timeout_at(valid_until, watch_leader_key(store.as_ref(), term)).await;
    let mut watch = match opened.unwrap_or(Err(LossReason::RenewalOverdue)) {
        Ok(watch) => watch,
        Err(reason) => {
            publisher.publish(LeaderState::Lost(reason));
            let _ = timeout(config.renew_every(), store.revoke_lease(lease)).await;
            return;
        }
    };
    let reason = loop {
        let outcome: Option<LossReason> = tokio::select! {
            () = sleep_until(valid_until) => Some(LossReason::RenewalOverdue),
            () = sleep_until(next_renewal) => {
                let sent = Instant::now();
                match timeout_at(valid_until, store.keep_alive_once(lease)).await {
                    Err(_elapsed) => Some(LossReason::RenewalOverdue),
                    Ok(Ok(granted)) if granted.is_zero() => Some(LossReason::LeaseExpired),
                    Ok(Ok(granted)) => {
                        let granted = granted.min(config.ttl);
                        valid_until = sent + fraction(granted, 2, 3);
                        next_renewal = sent + fraction(granted, 1, 3);
                        None
                    }
                    Ok(Err(StoreError::Closed)) => Some(LossReason::StoreClosed),
                    Ok(Err(_)) => {
                        next_renewal = Instant::now() + config.retry_after();
                        None
                    }
                }
            }
            event = next_event(&mut watch) => match event {
                Some(Ok(event)) if event.kv.key == LEADER_KEY => Some(LossReason::KeyChanged),
                Some(Ok(_)) => None,
                Some(Err(StoreError::Closed)) => Some(LossReason::StoreClosed),
                // Re-opened after the next renewal; replay from the term misses nothing.
                Some(Err(_)) | None => {
                    watch = None;
                    None
                }
            },
        };
        if let Some(reason) = outcome {
            break reason;
        }
        if watch.is_none() && Instant::now() < valid_until {
            match timeout_at(valid_until, watch_leader_key(store.as_ref(), term)).await {
                Ok(Ok(opened)) => watch = opened,
                Ok(Err(reason)) => break reason,
                Err(_elapsed) => break LossReason::RenewalOverdue,
            }
        }
        let now = publisher.publish(LeaderState::Held {
            valid_until: Some(valid_until),
        });
        if let LeaderState::Lost(_) = now {
            return; // Resigned or dropped meanwhile; whoever did it handles the lease.
        }
    };
    publisher.publish(LeaderState::Lost(reason));
    let _ = timeout(config.renew_every(), store.revoke_lease(lease)).await;
}

/// Keeps a replica record alive: renews its lease every TTL/3; when the lease is found
/// expired (after a partition), writes the record again under a new lease. Publishes the
/// current lease for [`Registration::deregister`].
async fn keep_registered(
    store: Arc<dyn LeaseStore>,
    config: EtcdElectionConfig,
    key: String,
    record: Vec<u8>,
    mut lease: LeaseId,
    publish: watch::Sender<Option<LeaseId>>,
) {
    // Every call is bounded, so that one lost over a partition does not stall the loop.
    let bound = config.renew_every();
    loop {
        sleep(config.renew_every()).await;
        match timeout(bound, store.keep_alive_once(lease)).await {
            Ok(Ok(granted)) if !granted.is_zero() => continue,
            Ok(Ok(_expired)) => {}
            Ok(Err(StoreError::Closed)) => return,
            Ok(Err(_)) | Err(_) => continue,
        }
        // Expired: register again.
        let Ok(Ok(fresh)) = timeout(bound, store.grant_lease(config.ttl)).await else {
            continue;
        };
        match timeout(bound, store.put_leased(&key, record.clone(), fresh, false)).await {
            Ok(Ok(_)) => {
                lease = fresh;
                publish.send_replace(Some(lease));
            }
            Ok(Err(_)) | Err(_) => {
                let _ = timeout(bound, store.revoke_lease(fresh)).await;
            }
        }
    }
}
