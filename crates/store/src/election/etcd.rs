//! [`LeaseStore`] for [`EtcdStore`]: its lease primitives, as the election uses them.

use std::time::Duration;

use async_trait::async_trait;

use super::lease::{LeaseId, LeaseStore};
use crate::etcd::EtcdStore;
use crate::{KeyValue, Revision, StoreError};

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        EtcdStore::grant_lease(self, ttl).await
    }

    async fn keep_alive_once(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        EtcdStore::keep_alive_once(self, lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        EtcdStore::revoke_lease(self, lease).await
    }

    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        only_if_absent: bool,
    ) -> Result<Result<Revision, KeyValue>, StoreError> {
        EtcdStore::put_leased(self, key, value, lease, only_if_absent).await
    }
}
