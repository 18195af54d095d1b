//! Key and revision mapping, and the key-value operations as etcd requests.

use etcd_client::{
    Compare as EtcdCompare, CompareOp, DeleteOptions, GetOptions, GetResponse, Txn, TxnOp,
    TxnOpResponse,
};

use super::error::{EtcdError, Failure};
use super::{Inner, LIST_PAGE};
use crate::{Compare, KeyValue, Op, Revision, StoreError, TxnResponse};

/// Where the store's keys live in etcd.
#[derive(Debug)]
pub(super) struct Keys {
    /// `<prefix>/kv`: prepended to every data key.
    data: Vec<u8>,
    /// `<prefix>/meta/base`: marks the base revision.
    pub(super) base: Vec<u8>,
}

/// The smallest key above every key that starts with `prefix` (`prefix` is never empty
/// here).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            data: format!("{prefix}/kv").into_bytes(),
            base: format!("{prefix}/meta/base").into_bytes(),
        }
    }

    /// The etcd key of data key `key`.
    pub(super) fn data_key(&self, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + key.len());
        out.extend_from_slice(&self.data);
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// The etcd range `[start, end)` of data keys starting with `prefix`.
    pub(super) fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.data_key(prefix);
        let end = prefix_end(&start);
        (start, end)
    }

    /// The data key of an etcd key under this store's prefix.
    pub(super) fn user_key(&self, etcd_key: &[u8]) -> Result<String, StoreError> {
        let rest = etcd_key.strip_prefix(self.data.as_slice()).ok_or_else(|| {
            EtcdError::Corrupt(format!(
                "key {:?} is outside the store's prefix",
                String::from_utf8_lossy(etcd_key)
            ))
        })?;
        String::from_utf8(rest.to_vec()).map_err(|_| {
            EtcdError::Corrupt(format!(
                "key {:?} is not UTF-8",
                String::from_utf8_lossy(etcd_key)
            ))
            .into()
        })
    }
}

/// Store revision = etcd revision − base.
#[derive(Debug, Clone, Copy)]
pub(super) struct Revisions {
    base: i64,
}

impl Revisions {
    pub(super) fn new(base: i64) -> Self {
        Self { base }
    }

    pub(super) fn base(&self) -> i64 {
        self.base
    }

    /// The etcd revision of store revision `revision`; 0 stays 0 ("absent").
    pub(super) fn to_etcd(self, revision: Revision) -> i64 {
        if revision == 0 {
            return 0;
        }
        i64::try_from(revision)
            .ok()
            .and_then(|r| r.checked_add(self.base))
            .unwrap_or(i64::MAX)
    }

    /// The store revision of etcd revision `revision` (0 stays 0).
    pub(super) fn to_store(self, revision: i64) -> Result<Revision, StoreError> {
        if revision == 0 {
            return Ok(0);
        }
        revision
            .checked_sub(self.base)
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(|| {
                EtcdError::Corrupt(format!(
                    "etcd revision {revision} is below the store's base {}: was the base key deleted?",
                    self.base
                ))
                .into()
            })
    }
}

impl Inner {
    /// The base revision of this prefix: creates `<prefix>/meta/base` if absent.
    pub(super) async fn ensure_base(&self) -> Result<i64, StoreError> {
        let key = self.keys.base.clone();
        let txn = Txn::new()
            .when([EtcdCompare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(key.clone(), Vec::new(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await
            .map_err(|f| self.error("connect (create the base revision key)", f))?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                Some(kv) => Ok(kv.create_revision()),
                None => Err(EtcdError::Corrupt("the base key vanished".into()).into()),
            },
            _ => Err(EtcdError::Corrupt("no answer to reading the base key".into()).into()),
        }
    }

    pub(super) fn key_value(&self, kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let create_revision = self.revisions.to_store(kv.create_revision())?;
        let mod_revision = self.revisions.to_store(kv.mod_revision())?;
        let version = u64::try_from(kv.version())
            .map_err(|_| EtcdError::Corrupt(format!("negative version {}", kv.version())))?;
        let (key, value) = kv.into_key_value();
        Ok(KeyValue {
            key: self.keys.user_key(&key)?,
            value,
            create_revision,
            mod_revision,
            version,
        })
    }

    fn store_revision(
        &self,
        header: Option<&etcd_client::ResponseHeader>,
    ) -> Result<Revision, StoreError> {
        self.revisions.to_store(header_revision(header)?)
    }

    /// The key's `mod_revision` from the read of a failed transaction's failure branch.
    fn actual_mod_revision(&self, resp: &etcd_client::TxnResponse) -> Result<Revision, StoreError> {
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                Some(kv) => self.revisions.to_store(kv.mod_revision()),
                None => Ok(0),
            },
            _ => Err(EtcdError::Corrupt("no read in a failed transaction's answer".into()).into()),
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let etcd_key = self.keys.data_key(key);
        let mut resp = self
            .call_idempotent(|mut c| {
                let etcd_key = etcd_key.clone();
                async move { c.kv.get(etcd_key, None).await }
            })
            .await
            .map_err(|f| self.error("get", f))?;
        resp.take_kvs()
            .into_iter()
            .next()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        'again: loop {
            let (mut start, end) = self.keys.range(prefix);
            let mut at: Option<i64> = None;
            let mut out = Vec::new();
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(LIST_PAGE);
                if let Some(revision) = at {
                    options = options.with_revision(revision);
                }
                let page = self
                    .call_idempotent(|mut c| {
                        let (start, options) = (start.clone(), options.clone());
                        async move { c.kv.get(start, Some(options)).await }
                    })
                    .await;
                let mut page: GetResponse = match page {
                    Ok(page) => page,
                    // Compacted past the list's revision between two pages: start over.
                    Err(Failure::Compacted) => continue 'again,
                    Err(failure) => return Err(self.error("list", failure)),
                };
                let revision = match at {
                    Some(revision) => revision,
                    None => {
                        let revision = header_revision(page.header())?;
                        at = Some(revision);
                        revision
                    }
                };
                let more = page.more();
                let kvs = page.take_kvs();
                if let Some(last) = kvs.last() {
                    start = last.key().to_vec();
                    start.push(0);
                }
                let empty = kvs.is_empty();
                for kv in kvs {
                    out.push(self.key_value(kv)?);
                }
                if !more || empty {
                    return Ok((out, self.revisions.to_store(revision)?));
                }
            }
        }
    }

    pub(super) async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let etcd_key = self.keys.data_key(key);
        let resp = self
            .call(|mut c| {
                let (etcd_key, value) = (etcd_key.clone(), value.clone());
                async move { c.kv.put(etcd_key, value, None).await }
            })
            .await
            .map_err(|f| self.error("put", f))?;
        self.store_revision(resp.header())
    }

    pub(super) async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        let etcd_key = self.keys.data_key(key);
        let txn = Txn::new()
            .when([EtcdCompare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                self.revisions.to_etcd(expected),
            )])
            .and_then([TxnOp::put(etcd_key.clone(), value, None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = self.run_txn("compare_and_swap", &txn).await?;
        if resp.succeeded() {
            return self.store_revision(resp.header());
        }
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            actual: self.actual_mod_revision(&resp)?,
        })
    }

    pub(super) async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        let etcd_key = self.keys.data_key(key);
        let Some(expected) = expected else {
            let resp = self
                .call(|mut c| {
                    let etcd_key = etcd_key.clone();
                    async move { c.kv.delete(etcd_key, None::<DeleteOptions>).await }
                })
                .await
                .map_err(|f| self.error("delete", f))?;
            if resp.deleted() == 0 {
                return Ok(None);
            }
            return self.store_revision(resp.header()).map(Some);
        };
        let txn = Txn::new()
            .when([EtcdCompare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                self.revisions.to_etcd(expected),
            )])
            .and_then([TxnOp::delete(etcd_key.clone(), None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = self.run_txn("delete", &txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: self.actual_mod_revision(&resp)?,
            });
        }
        let deleted = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(delete)) => delete.deleted(),
            _ => {
                return Err(EtcdError::Corrupt("no delete in a transaction's answer".into()).into())
            }
        };
        if deleted == 0 {
            return Ok(None);
        }
        self.store_revision(resp.header()).map(Some)
    }

    pub(super) async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        let compares: Vec<EtcdCompare> = compares
            .into_iter()
            .map(|compare| match compare {
                Compare::ModRevision { key, equals } => EtcdCompare::mod_revision(
                    self.keys.data_key(&key),
                    CompareOp::Equal,
                    self.revisions.to_etcd(equals),
                ),
                Compare::Exists { key } => {
                    EtcdCompare::create_revision(self.keys.data_key(&key), CompareOp::Greater, 0)
                }
                Compare::Absent { key } => {
                    EtcdCompare::version(self.keys.data_key(&key), CompareOp::Equal, 0)
                }
            })
            .collect();
        let ops = |ops: Vec<Op>| -> Vec<TxnOp> {
            ops.into_iter()
                .map(|op| match op {
                    Op::Put { key, value } => TxnOp::put(self.keys.data_key(&key), value, None),
                    Op::Delete { key } => TxnOp::delete(self.keys.data_key(&key), None),
                })
                .collect()
        };
        let txn = Txn::new()
            .when(compares)
            .and_then(ops(success))
            .or_else(ops(failure));
        let resp = self.run_txn("txn", &txn).await?;
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: self.store_revision(resp.header())?,
        })
    }

    pub(super) async fn run_txn(
        &self,
        op: &'static str,
        txn: &Txn,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.kv.txn(txn).await }
        })
        .await
        .map_err(|f| self.error(op, f))
    }

    pub(super) async fn revision(&self) -> Result<Revision, StoreError> {
        let key = self.keys.base.clone();
        let resp = self
            .call_idempotent(|mut c| {
                let key = key.clone();
                async move {
                    c.kv.get(key, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
            .map_err(|f| self.error("revision", f))?;
        self.store_revision(resp.header())
    }

    pub(super) async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        if revision == 0 {
            return Ok(());
        }
        let etcd_revision = self.revisions.to_etcd(revision);
        let result = self
            .call(|mut c| async move { c.kv.compact(etcd_revision, None).await })
            .await;
        match result {
            Ok(_) | Err(Failure::Compacted) => Ok(()),
            Err(Failure::FutureRevision) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.revision().await?,
            }),
            Err(failure) => Err(self.error("compact", failure)),
        }
    }
}

pub(super) fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
) -> Result<i64, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| EtcdError::Corrupt("an answer without a header".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = Keys::new("/ff/prod");
        assert_eq!(keys.data_key("/vms/a"), b"/ff/prod/kv/vms/a");
        assert_eq!(keys.base, b"/ff/prod/meta/base");
        assert_eq!(
            keys.range("/vms/"),
            (b"/ff/prod/kv/vms/".to_vec(), b"/ff/prod/kv/vms0".to_vec())
        );
        assert_eq!(keys.range("").1, b"/ff/prod/kw");
        assert_eq!(
            keys.user_key(b"/ff/prod/kv/vms/a").ok(),
            Some("/vms/a".into())
        );
        assert!(keys.user_key(b"/ff/other/kv/x").is_err());
        assert!(keys.user_key(b"/ff/prod/kv\xff").is_err());
    }

    #[test]
    fn revisions_shift_by_the_base() {
        let r = Revisions::new(100);
        assert_eq!(r.to_etcd(0), 0);
        assert_eq!(r.to_etcd(1), 101);
        assert_eq!(r.to_etcd(u64::MAX), i64::MAX);
        assert_eq!(r.to_store(0).ok(), Some(0));
        assert_eq!(r.to_store(100).ok(), Some(0));
        assert_eq!(r.to_store(101).ok(), Some(1));
        assert!(r.to_store(99).is_err());
    }
}
