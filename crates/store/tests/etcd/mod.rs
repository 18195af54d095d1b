//! Shared by the etcd test binaries: a store that owns the etcd it runs on.

#![allow(dead_code)]

use std::sync::Arc;

use firefleet_store::conformance::Guarded;
use firefleet_store::etcd::testing::EtcdCluster;
use firefleet_store::EtcdStore;

/// An [`EtcdStore`] with the cluster it runs on (`guard`); the cluster is killed when the
/// last holder drops it.
pub type ClusterStore = Guarded<EtcdStore, Arc<EtcdCluster>>;

/// A fresh cluster of `members` and a store on it under `/firefleet/test`.
pub async fn cluster_store(members: usize) -> ClusterStore {
    let cluster = Arc::new(EtcdCluster::start(members).await);
    let store = connect(&cluster, "/firefleet/test").await;
    Guarded {
        store,
        guard: cluster,
    }
}

/// A store under `prefix` on `cluster`; panics on failure.
pub async fn connect(cluster: &EtcdCluster, prefix: &str) -> EtcdStore {
    match EtcdStore::connect(cluster.config(prefix)).await {
        Ok(store) => store,
        Err(err) => panic!("connect to {cluster:?}: {err} ({err:?})"),
    }
}
