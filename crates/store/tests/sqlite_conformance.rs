//! The conformance suite against the SQLite backend, one test per case, plus what only a
//! durable backend can show: data, revision and history survive close and reopen.

use std::path::Path;
use std::sync::Arc;

use firefleet_store::conformance::{self, next_event, Guarded};
use firefleet_store::{KvStore, Op, SqliteStore, StoreError};

async fn fresh_store() -> Arc<dyn KvStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
    Arc::new(Guarded { store, guard: dir })
}

macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                conformance::$case(fresh_store().await).await;
            }
        )*
    };
}

firefleet_store::conformance_cases!(conformance_tests);

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
