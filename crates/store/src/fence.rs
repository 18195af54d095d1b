//! Fenced writes: a [`KvStore`] whose every write only applies while a fence key still has
//! the revision it had when the writer's term began.
//!
//! A leader's controllers write through a [`FencedStore`] built from its
//! [`crate::Leadership::fence`]: the leader key and its `mod_revision` (the term). Every write
//! (put, compare-and-swap, delete, transaction) becomes one store transaction that also
//! compares `mod_revision(fence key) == term`. Once another replica has written the leader key
//! (a new term), or the key is gone (the lease expired), every write of the deposed leader is
//! refused with [`StoreError::Fenced`] and applies nothing, however late it arrives: the
//! compare is evaluated by the store, atomically with the write, not by the writer.
//!
//! When the combined transaction fails, the fence key is read to tell which compare failed:
//! the fence (so [`StoreError::Fenced`]) or the caller's own (so the inner store's semantics:
//! [`StoreError::Conflict`] with the actual revision, `Ok(None)` for an absent key, the
//! failure branch of a transaction). Revisions only grow, so a fence seen moved stays moved.
//! Reads, watches, `revision` and `compact` pass through unchanged.
//!
//! The fence key must live in the same store as the data it guards (one transaction must see
//! both), and writes through a [`FencedStore`] must not touch the fence key itself.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Compare, KeyValue, KvStore, Op, Revision, StoreError, TxnResponse, Watch};

/// How many times a write whose outcome raced with another writer is re-evaluated before the
/// race is reported as a conflict. Each round needs another writer to change the keys
/// between two of our requests, so more than a few rounds means heavy contention.
const MAX_ROUNDS: usize = 16;

/// A [`KvStore`] whose writes are refused with [`StoreError::Fenced`] once `fence_key` no
/// longer has `mod_revision == term`. Cloning shares the inner store.
#[derive(Clone)]
pub struct FencedStore {
    inner: Arc<dyn KvStore>,
    fence_key: String,
    term: Revision,
}

impl std::fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedStore")
            .field("fence_key", &self.fence_key)
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

/// What re-reading the fence after a failed combined transaction showed.
enum AfterFailure {
    /// The fence moved: the write was refused by the fence.
    Fenced,
    /// The fence holds: the caller's own compare failed.
    Holds,
}

impl FencedStore {
    /// Wraps `inner`: writes apply only while `fence_key`'s `mod_revision` is `term`.
    pub fn new(inner: Arc<dyn KvStore>, fence_key: impl Into<String>, term: Revision) -> Self {
        Self {
            inner,
            fence_key: fence_key.into(),
            term,
        }
    }

    /// The fence: its key and the `mod_revision` it must have.
    pub fn fence(&self) -> (&str, Revision) {
        (&self.fence_key, self.term)
    }

    /// The store this one writes through.
    pub fn inner(&self) -> &Arc<dyn KvStore> {
        &self.inner
    }

    /// Whether the fence still holds now (a hint: only a fenced write's result is final).
    pub async fn holds(&self) -> Result<bool, StoreError> {
        Ok(matches!(self.check().await?, AfterFailure::Holds))
    }

    fn compare(&self) -> Compare {
        Compare::ModRevision {
            key: self.fence_key.clone(),
            equals: self.term,
        }
    }

    /// The refusal of a write to `key` (the first key the write changes).
    fn fenced(&self, key: &str) -> StoreError {
        StoreError::Fenced {
            key: key.to_owned(),
            term: self.term,
        }
    }

    async fn check(&self) -> Result<AfterFailure, StoreError> {
        let current = self
            .inner
            .get(&self.fence_key)
            .await?
            .map_or(0, |kv| kv.mod_revision);
        Ok(if current == self.term {
            AfterFailure::Holds
        } else {
            AfterFailure::Fenced
        })
    }

    /// The key's current `mod_revision`, 0 when absent.
    async fn mod_revision(&self, key: &str) -> Result<Revision, StoreError> {
        Ok(self.inner.get(key).await?.map_or(0, |kv| kv.mod_revision))
    }

    /// Runs `success` if the fence and `compares` hold; `Ok(Some(revision))` if it applied,
    /// `Ok(None)` if the fence held but `compares` did not, [`StoreError::Fenced`] if the
    /// fence had moved.
    async fn fenced_txn(
        &self,
        compares: &[Compare],
        success: Vec<Op>,
    ) -> Result<Option<Revision>, StoreError> {
        let mut all = Vec::with_capacity(compares.len() + 1);
        all.push(self.compare());
        all.extend_from_slice(compares);
        let written = success
            .first()
            .map_or_else(|| self.fence_key.clone(), |op| op.key().to_owned());
        let response = self.inner.txn(all, success, Vec::new()).await?;
        if response.succeeded {
            return Ok(Some(response.revision));
        }
        match self.check().await? {
            AfterFailure::Fenced => Err(self.fenced(&written)),
            AfterFailure::Holds => Ok(None),
        }
    }

    /// Only reachable when other writers keep changing the compared keys between our
    /// requests, round after round: nothing was applied; the caller may retry.
    fn raced(key: &str) -> StoreError {
        StoreError::Unavailable {
            reason: format!(
                "fenced write to {key:?} raced other writers {MAX_ROUNDS} times; nothing applied"
            ),
        }
    }
}

#[async_trait]
impl KvStore for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let op = Op::Put {
            key: key.to_owned(),
            value,
        };
        // With no compare of the caller's, a failure can only be the fence.
        self.fenced_txn(&[], vec![op])
            .await?
            .ok_or_else(|| self.fenced(key))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        let compare = [Compare::ModRevision {
            key: key.to_owned(),
            equals: expected_mod_revision,
        }];
        for _ in 0..MAX_ROUNDS {
            let op = Op::Put {
                key: key.to_owned(),
                value: value.clone(),
            };
            if let Some(revision) = self.fenced_txn(&compare, vec![op]).await? {
                return Ok(revision);
            }
            let actual = self.mod_revision(key).await?;
            if actual != expected_mod_revision {
                return Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected: expected_mod_revision,
                    actual,
                });
            }
            // The key came back to the expected revision in between: try again.
        }
        Err(Self::raced(key))
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        let op = || Op::Delete {
            key: key.to_owned(),
        };
        for _ in 0..MAX_ROUNDS {
            match expected_mod_revision {
                // Delete only if present, so that success means "deleted" and failure with
                // the fence holding means "absent".
                None => {
                    let exists = [Compare::Exists {
                        key: key.to_owned(),
                    }];
                    if let Some(revision) = self.fenced_txn(&exists, vec![op()]).await? {
                        return Ok(Some(revision));
                    }
                    if self.mod_revision(key).await? == 0 {
                        return Ok(None);
                    }
                }
                // Expecting absence: nothing to delete, only the compare to check (under the
                // fence, so that a deposed leader learns it is deposed).
                Some(0) => {
                    let absent = [Compare::Absent {
                        key: key.to_owned(),
                    }];
                    if self.fenced_txn(&absent, Vec::new()).await?.is_some() {
                        return Ok(None);
                    }
                    let actual = self.mod_revision(key).await?;
                    if actual != 0 {
                        return Err(StoreError::Conflict {
                            key: key.to_owned(),
                            expected: 0,
                            actual,
                        });
                    }
                }
                Some(expected) => {
                    let compare = [Compare::ModRevision {
                        key: key.to_owned(),
                        equals: expected,
                    }];
                    if let Some(revision) = self.fenced_txn(&compare, vec![op()]).await? {
                        return Ok(Some(revision));
                    }
                    let actual = self.mod_revision(key).await?;
                    if actual != expected {
                        return Err(StoreError::Conflict {
                            key: key.to_owned(),
                            expected,
                            actual,
                        });
                    }
                }
            }
        }
        Err(Self::raced(key))
    }

    /// The caller's compares decide between `success` and `failure` as in the inner store;
    /// the fence decides whether either applies. Runs as: (1) fence + compares, `success`;
    /// if that fails with the fence holding, (2) read every compared key and, if the
    /// compares fail on what was read, apply `failure` under the fence and the exact
    /// revisions read (so it applies only in a state where the compares fail); if the state
    /// moved in between, start again.
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        crate::validate_txn(&compares, &success, &failure)?;
        for _ in 0..MAX_ROUNDS {
            if let Some(revision) = self.fenced_txn(&compares, success.clone()).await? {
                return Ok(TxnResponse {
                    succeeded: true,
                    revision,
                });
            }
            // The fence held and a compare failed. Pin the compared keys at what they are
            // now, if the compares fail there.
            let mut pinned: Vec<Compare> = Vec::with_capacity(compares.len());
            let mut fail_here = false;
            for compare in &compares {
                let key = compare.key();
                let actual = self.mod_revision(key).await?;
                fail_here |= !compare.holds(actual);
                if !pinned.iter().any(|p| p.key() == key) {
                    pinned.push(Compare::ModRevision {
                        key: key.to_owned(),
                        equals: actual,
                    });
                }
            }
            if !fail_here {
                continue; // The compares hold now: run the success branch again.
            }
            if failure.is_empty() {
                // Nothing to apply; the fence held when the compares were evaluated.
                let revision = self.inner.revision().await?;
                return Ok(TxnResponse {
                    succeeded: false,
                    revision,
                });
            }
            if let Some(revision) = self.fenced_txn(&pinned, failure.clone()).await? {
                return Ok(TxnResponse {
                    succeeded: false,
                    revision,
                });
            }
        }
        let key = success.first().or(failure.first()).map_or("", Op::key);
        Err(Self::raced(key))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<Watch, StoreError> {
        self.inner.watch(prefix, from_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests;
