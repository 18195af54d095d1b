//! The conformance suite against the SQLite backend, one test per case, plus what only a
//! durable backend can show: data, revision and history survive close and reopen.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use firefleet_store::conformance::{self, next_event};
use firefleet_store::{
    Compare, KeyValue, KvStore, Op, Revision, SqliteStore, StoreError, TxnResponse, Watch,
};
use tempfile::TempDir;

/// A store in its own temporary directory, removed when the store is dropped.
struct TempStore {
    store: SqliteStore,
    _dir: TempDir,
}

#[async_trait]
impl KvStore for TempStore {
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

async fn fresh_store() -> Arc<dyn KvStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
    Arc::new(TempStore { store, _dir: dir })
}

macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                conformance::$case(fresh_store().await).await;
            }
        )*

        #[test]
        fn every_case_has_a_test() {
            let tested = [$(stringify!($case)),*];
            let all: Vec<&str> = conformance::CASES.iter().map(|(name, _)| *name).collect();
            assert_eq!(all, tested);
        }
    };
}

conformance_tests![
    revision_counts_writes,
    get_put_list_prefix,
    key_revisions_and_version,
    cas_success_and_conflict,
    cas_create_only,
    delete_semantics,
    txn_success_applies_all_at_one_revision,
    txn_failure_applies_failure_ops_only,
    invalid_input_rejected_store_unchanged,
    concurrent_cas_one_winner_per_round,
    concurrent_increments_lose_nothing,
    watch_replays_history_then_goes_live,
    watch_from_current_gets_only_new,
    watch_filters_by_prefix,
    watch_delete_events,
    watch_compacted_errors,
    watch_pages_through_large_history,
    watch_during_writes_has_no_gaps,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_runs() {
    conformance::run_all(fresh_store).await;
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).expect("open store")
}

#[tokio::test]
async fn data_revision_and_history_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = open(&path);
    let r1 = store.put("/vms/a", b"a".to_vec()).await.unwrap();
    let r2 = store.put("/vms/b", b"b".to_vec()).await.unwrap();
    let r3 = store.put("/vms/a", b"a2".to_vec()).await.unwrap();
    let r4 = store.delete("/vms/b", None).await.unwrap().unwrap();
    let r5 = store
        .txn(
            vec![],
            vec![
                Op::Put {
                    key: "/vms/c".into(),
                    value: b"c".to_vec(),
                },
                Op::Put {
                    key: "/nodes/n".into(),
                    value: b"n".to_vec(),
                },
            ],
            vec![],
        )
        .await
        .unwrap()
        .revision;
    store.compact(r2).await.unwrap();
    let before = store.list("").await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open(&path);
    assert_eq!(store.revision().await.unwrap(), r5);
    assert_eq!(store.list("").await.unwrap(), before);
    let a = store.get("/vms/a").await.unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"a2"[..], r1, r3, 2)
    );
    assert!(matches!(
        store.watch("/vms/", r1).await,
        Err(StoreError::Compacted { oldest, .. }) if oldest == r2
    ));
    let mut watch = store.watch("/vms/", r2).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), r2);
    assert_eq!(next_event(&mut watch).await.revision(), r3);
    assert_eq!(next_event(&mut watch).await.revision(), r4);
    assert_eq!(next_event(&mut watch).await.kv.key, "/vms/c");
    assert_eq!(store.put("/vms/d", vec![]).await.unwrap(), r5 + 1);
    assert_eq!(next_event(&mut watch).await.revision(), r5 + 1);

    // Dropping (without close) also releases the file.
    drop(watch);
    drop(store);
    let store = open(&path);
    assert_eq!(store.revision().await.unwrap(), r5 + 1);
}
