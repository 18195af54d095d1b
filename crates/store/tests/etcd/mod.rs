//! Shared by the etcd test binaries: a store that owns the etcd it runs on.

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use firefleet_store::etcd::testing::EtcdCluster;
use firefleet_store::{
    Compare, EtcdStore, KeyValue, KvStore, Op, Revision, StoreError, TxnResponse, Watch,
};

/// An [`EtcdStore`] with the cluster it runs on; the cluster is killed when the last holder
/// drops it.
pub struct ClusterStore {
    pub store: EtcdStore,
    pub cluster: Arc<EtcdCluster>,
}

impl ClusterStore {
    /// A fresh cluster of `members` and a store on it under `/firefleet/test`.
    pub async fn start(members: usize) -> ClusterStore {
        let cluster = Arc::new(EtcdCluster::start(members).await);
        let store = connect(&cluster, "/firefleet/test").await;
        ClusterStore { store, cluster }
    }
}

/// A store under `prefix` on `cluster`; panics on failure.
pub async fn connect(cluster: &EtcdCluster, prefix: &str) -> EtcdStore {
    match EtcdStore::connect(cluster.config(prefix)).await {
        Ok(store) => store,
        Err(err) => panic!("connect to {cluster:?}: {err} ({err:?})"),
    }
}

#[async_trait]
impl KvStore for ClusterStore {
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
