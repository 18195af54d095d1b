//! Election of the one replica of an embedded (SQLite) store.

use std::sync::Arc;

use super::{
    list_replicas, read_leader, Candidate, Deregister, Election, LeaderRecord, LeaderState,
    Leadership, Registration, ReplicaRecord, Resigner, StatePublisher, LEADER_KEY, REPLICAS_PREFIX,
};
use crate::{KvStore, StoreError};
use async_trait::async_trait;

/// [`Election`] for a store only one server process can open (SQLite locks its file): that
/// process leads at once, and its term is never lost until it resigns. The leader key is still
/// written, so that its writes are fenced and reported like etcd's.
#[derive(Clone)]
pub struct LocalElection {
    store: Arc<dyn KvStore>,
}

impl std::fmt::Debug for LocalElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalElection").finish_non_exhaustive()
    }
}

impl LocalElection {
    /// The election of the one process that has `store` open.
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Election for LocalElection {
    async fn campaign(&self, me: &Candidate) -> Result<Leadership, StoreError> {
        me.checked()?;
        let record = ReplicaRecord::of(me).encode();
        let term = self.store.put(LEADER_KEY, record).await?;
        let (publisher, signal) = StatePublisher::new(LeaderState::Held { valid_until: None });
        Ok(Leadership {
            term,
            signal,
            publisher,
            keeper: None,
            resigner: Resigner::Key {
                store: self.store.clone(),
                term,
            },
        })
    }

    async fn leader(&self) -> Result<Option<LeaderRecord>, StoreError> {
        read_leader(self.store.as_ref()).await
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        list_replicas(self.store.as_ref()).await
    }

    /// Any other record is left from an earlier process (only one can have the store open)
    /// and is removed.
    async fn register(&self, me: &Candidate) -> Result<Registration, StoreError> {
        me.checked()?;
        let key = me.replica_key();
        let (stale, _) = self.store.list(REPLICAS_PREFIX).await?;
        for kv in stale.iter().filter(|kv| kv.key != key) {
            self.store.delete(&kv.key, Some(kv.mod_revision)).await?;
        }
        self.store.put(&key, ReplicaRecord::of(me).encode()).await?;
        Ok(Registration {
            key: key.clone(),
            keeper: None,
            deregister: Deregister::Key {
                store: self.store.clone(),
                key,
            },
        })
    }
}
