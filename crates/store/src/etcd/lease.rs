//! Leases: the primitives leader election builds on. A lease is granted with a TTL, kept
//! alive by renewals, and revoked (or left to expire); keys put with a lease are deleted by
//! etcd when it ends (each deletion is a write with its own revision and watch event).

use std::time::Duration;

use etcd_client::{
    Compare as EtcdCompare, CompareOp, LeaseClient, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::error::{EtcdError, Failure};
use super::EtcdStore;
use crate::{validate_put, KeyValue, Revision, StoreError};

/// An etcd lease ID.
pub type LeaseId = i64;

/// One renewal: the TTL etcd granted, 0 when the lease no longer exists.
async fn renew(mut lease: LeaseClient, id: LeaseId) -> Result<i64, etcd_client::Error> {
    // `keep_alive` sends a first renewal and consumes its answer (failing if the lease is
    // gone); the TTL comes with the answer to a second one.
    let (mut keeper, mut answers) = lease.keep_alive(id).await?;
    keeper.keep_alive().await?;
    match answers.message().await? {
        Some(answer) => Ok(answer.ttl().max(0)),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "the keep-alive stream ended without an answer".into(),
        )),
    }
}

impl EtcdStore {
    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s). etcd may grant
    /// more: its minimum is 1.5 × the members' election timeout (2 s with the defaults);
    /// [`EtcdStore::keep_alive_once`] returns the TTL actually granted.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let seconds = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let resp = inner
            .call(|mut c| async move { c.lease.grant(seconds, None).await })
            .await
            .map_err(|f| inner.error("grant_lease", f))?;
        Ok(resp.id())
    }

    /// One renewal; returns the TTL etcd granted (Err Unavailable if etcd can't be reached; a
    /// lease that already expired -> Ok(Duration::ZERO)).
    pub async fn keep_alive_once(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        match inner.call_idempotent(|c| renew(c.lease, lease)).await {
            Ok(ttl) => Ok(Duration::from_secs(ttl.unsigned_abs())),
            Err(Failure::LeaseNotFound) => Ok(Duration::ZERO),
            Err(failure) => Err(inner.error("keep_alive_once", failure)),
        }
    }

    /// Revokes the lease, deleting its keys. Revoking a lease that no longer exists is a
    /// no-op.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        match inner
            .call(|mut c| async move { c.lease.revoke(lease).await })
            .await
        {
            Ok(_) | Err(Failure::LeaseNotFound) => Ok(()),
            Err(failure) => Err(inner.error("revoke_lease", failure)),
        }
    }

    /// Puts `key` bound to `lease`; with `only_if_absent`, only when the key does not exist:
    /// Ok(Err(existing)) otherwise. Revisions converted as everywhere. A lease that no longer
    /// exists is an error ([`EtcdError::LeaseNotFound`]).
    pub async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        only_if_absent: bool,
    ) -> Result<Result<Revision, KeyValue>, StoreError> {
        validate_put(key, &value)?;
        let inner = &self.inner;
        inner.check_open()?;
        let etcd_key = inner.keys.data_key(key);
        let compares = if only_if_absent {
            vec![EtcdCompare::create_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                0,
            )]
        } else {
            vec![]
        };
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::put(
                etcd_key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = match inner
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await
        {
            Ok(resp) => resp,
            Err(Failure::LeaseNotFound) => return Err(EtcdError::LeaseNotFound { lease }.into()),
            Err(failure) => return Err(inner.error("put_leased", failure)),
        };
        if resp.succeeded() {
            return inner
                .revisions
                .to_store(super::ops::header_revision(resp.header())?)
                .map(Ok);
        }
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(mut get)) => match get.take_kvs().into_iter().next() {
                Some(kv) => Ok(Err(inner.key_value(kv)?)),
                // Deleted between the compare and the read cannot happen: one transaction.
                None => {
                    Err(EtcdError::Corrupt("a failed create-only put found no key".into()).into())
                }
            },
            _ => Err(EtcdError::Corrupt("no read in a failed transaction's answer".into()).into()),
        }
    }
}
