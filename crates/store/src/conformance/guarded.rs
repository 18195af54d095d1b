//! A store that keeps something alive as long as it lives (its temporary directory, the etcd
//! cluster it runs on), for tests that hand stores out as `Arc<dyn KvStore>`.

use async_trait::async_trait;

use crate::{Compare, KeyValue, KvStore, Op, Revision, StoreError, TxnResponse, Watch};

/// `store`, with `guard` dropped after it.
pub struct Guarded<S, G> {
    /// The store every call goes to.
    pub store: S,
    /// What the store needs alive.
    pub guard: G,
}

#[async_trait]
impl<S: KvStore, G: Send + Sync + 'static> KvStore for Guarded<S, G> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.store.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.store.put(key, value).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        self.store.compare_and_swap(key, expected, value).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        self.store.delete(key, expected).await
    }
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        self.store.txn(compares, success, failure).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.store.revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        self.store.watch(prefix, from).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.store.compact(revision).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.store.close().await
    }
}
