use std::sync::Arc;

use tempfile::TempDir;

use super::FencedStore;
use crate::{Compare, KvStore, Op, Revision, SqliteStore, StoreError};

const FENCE: &str = "/cluster/leader";

/// A SQLite store in a temporary directory with the fence key written (revision 1).
async fn store() -> (Arc<SqliteStore>, TempDir, Revision) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("open store"));
    let term = store.put(FENCE, b"a".to_vec()).await.expect("write fence");
    (store, dir, term)
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn assert_fenced<T: std::fmt::Debug>(result: Result<T, StoreError>, key: &str, term: Revision) {
    match result {
        Err(StoreError::Fenced { key: k, term: t }) => {
            assert_eq!((k.as_str(), t), (key, term), "fenced error names the write")
        }
        other => panic!("expected Fenced for {key}, got {other:?}"),
    }
}

async fn value(store: &SqliteStore, key: &str) -> Option<Vec<u8>> {
    store.get(key).await.expect("get").map(|kv| kv.value)
}

#[tokio::test]
async fn writes_apply_while_the_fence_holds() {
    let (inner, _dir, term) = store().await;
    let fenced = FencedStore::new(inner.clone(), FENCE, term);

    let r1 = fenced.put("/vms/a", b"1".to_vec()).await.expect("put");
    assert_eq!(r1, term + 1, "a put is one write");
    let r2 = fenced
        .compare_and_swap("/vms/a", r1, b"2".to_vec())
        .await
        .expect("cas");
    assert_eq!(r2, r1 + 1);
    let r3 = fenced
        .compare_and_swap("/vms/b", 0, b"new".to_vec())
        .await
        .expect("create-only cas");
    let response = fenced
        .txn(
            vec![Compare::ModRevision {
                key: "/vms/b".into(),
                equals: r3,
            }],
            vec![
                put("/vms/c", b"c"),
                Op::Delete {
                    key: "/vms/b".into(),
                },
            ],
            vec![],
        )
        .await
        .expect("txn");
    assert!(response.succeeded);
    assert_eq!(response.revision, r3 + 1, "both ops share one revision");
    assert_eq!(value(&inner, "/vms/b").await, None);
    assert_eq!(value(&inner, "/vms/c").await.as_deref(), Some(&b"c"[..]));

    let deleted = fenced.delete("/vms/a", Some(r2)).await.expect("delete");
    assert_eq!(deleted, Some(r3 + 2));
    assert_eq!(
        fenced.delete("/vms/a", None).await.expect("delete absent"),
        None
    );
    assert_eq!(
        fenced
            .delete("/vms/a", Some(0))
            .await
            .expect("delete absent, expected absent"),
        None
    );
    assert_eq!(
        inner.revision().await.expect("revision"),
        r3 + 2,
        "no-op deletes write nothing"
    );
    assert!(fenced.holds().await.expect("holds"));
}

#[tokio::test]
async fn caller_conflicts_keep_the_inner_semantics_under_the_fence() {
    let (inner, _dir, term) = store().await;
    let fenced = FencedStore::new(inner.clone(), FENCE, term);
    let r = fenced.put("/k", b"1".to_vec()).await.expect("put");

    match fenced.compare_and_swap("/k", r + 5, b"x".to_vec()).await {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => assert_eq!((key.as_str(), expected, actual), ("/k", r + 5, r)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    match fenced.compare_and_swap("/k", 0, b"x".to_vec()).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, r),
        other => panic!("expected Conflict on create-only, got {other:?}"),
    }
    match fenced.delete("/k", Some(r + 1)).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, r),
        other => panic!("expected Conflict on delete, got {other:?}"),
    }
    match fenced.delete("/absent", Some(3)).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 0),
        other => panic!("expected Conflict on delete of absent, got {other:?}"),
    }
    match fenced.delete("/k", Some(0)).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, r),
        other => panic!("expected Conflict expecting absence, got {other:?}"),
    }

    // A failed compare applies the failure branch, at one revision.
    let response = fenced
        .txn(
            vec![Compare::Absent { key: "/k".into() }],
            vec![put("/success", b"s")],
            vec![put("/failure", b"f"), put("/failure2", b"f")],
        )
        .await
        .expect("txn");
    assert!(!response.succeeded);
    assert_eq!(response.revision, r + 1);
    assert_eq!(value(&inner, "/success").await, None);
    assert_eq!(value(&inner, "/failure2").await.as_deref(), Some(&b"f"[..]));

    // An empty failure branch writes nothing.
    let response = fenced
        .txn(
            vec![Compare::Absent { key: "/k".into() }],
            vec![put("/s", b"s")],
            vec![],
        )
        .await
        .expect("txn");
    assert_eq!((response.succeeded, response.revision), (false, r + 1));
    assert_eq!(inner.revision().await.expect("revision"), r + 1);
}

#[tokio::test]
async fn every_write_is_refused_and_applies_nothing_once_the_fence_moves() {
    let (inner, _dir, term) = store().await;
    let fenced = FencedStore::new(inner.clone(), FENCE, term);
    let rk = fenced.put("/k", b"old".to_vec()).await.expect("put");

    // Another replica becomes leader: a new term.
    let new_term = inner.put(FENCE, b"b".to_vec()).await.expect("new term");
    assert!(!fenced.holds().await.expect("holds"));

    assert_fenced(fenced.put("/k", b"late".to_vec()).await, "/k", term);
    assert_fenced(fenced.put("/new", b"late".to_vec()).await, "/new", term);
    // A CAS whose own compare would succeed, and one whose compare would fail: both are
    // refused by the fence, not reported as conflicts.
    assert_fenced(
        fenced.compare_and_swap("/k", rk, b"late".to_vec()).await,
        "/k",
        term,
    );
    assert_fenced(
        fenced
            .compare_and_swap("/k", rk + 9, b"late".to_vec())
            .await,
        "/k",
        term,
    );
    assert_fenced(
        fenced.compare_and_swap("/new", 0, b"late".to_vec()).await,
        "/new",
        term,
    );
    assert_fenced(fenced.delete("/k", None).await, "/k", term);
    assert_fenced(fenced.delete("/k", Some(rk)).await, "/k", term);
    assert_fenced(fenced.delete("/absent", Some(0)).await, FENCE, term);
    assert_fenced(
        fenced
            .txn(
                vec![Compare::Exists { key: "/k".into() }],
                vec![put("/k", b"late"), put("/t", b"late")],
                vec![put("/f", b"late")],
            )
            .await,
        "/k",
        term,
    );
    assert_fenced(
        fenced
            .txn(
                vec![Compare::Absent { key: "/k".into() }],
                vec![put("/t", b"late")],
                vec![put("/f", b"late")],
            )
            .await,
        "/t",
        term,
    );

    assert_eq!(
        inner.revision().await.expect("revision"),
        new_term,
        "nothing was written"
    );
    assert_eq!(value(&inner, "/k").await.as_deref(), Some(&b"old"[..]));
    for key in ["/new", "/t", "/f"] {
        assert_eq!(value(&inner, key).await, None, "{key} was not written");
    }

    // The new leader's fence holds.
    let current = FencedStore::new(inner.clone(), FENCE, new_term);
    current
        .put("/k", b"new".to_vec())
        .await
        .expect("new leader writes");
}

#[tokio::test]
async fn a_deleted_fence_key_fences_too() {
    let (inner, _dir, term) = store().await;
    let fenced = FencedStore::new(inner.clone(), FENCE, term);
    inner
        .delete(FENCE, None)
        .await
        .expect("lease expiry deletes the key");
    assert_fenced(fenced.put("/k", b"late".to_vec()).await, "/k", term);
    assert_eq!(value(&inner, "/k").await, None);
}

#[tokio::test]
async fn no_write_lands_after_the_term_changes_under_concurrent_writers() {
    let (inner, _dir, term) = store().await;
    let fenced = FencedStore::new(inner.clone(), FENCE, term);
    let mut writers = Vec::new();
    for w in 0..4 {
        let fenced = fenced.clone();
        writers.push(tokio::spawn(async move {
            let mut applied = Vec::new();
            for i in 0..200u32 {
                let key = format!("/w/{w}/{}", i % 5);
                match fenced.put(&key, i.to_le_bytes().to_vec()).await {
                    Ok(revision) => applied.push(revision),
                    Err(StoreError::Fenced { .. }) => return (applied, true),
                    Err(err) => panic!("unexpected error: {err}"),
                }
            }
            (applied, false)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let new_term = inner.put(FENCE, b"b".to_vec()).await.expect("new term");
    for writer in writers {
        let (applied, fenced_seen) = writer.await.expect("writer task");
        assert!(
            applied.iter().all(|r| *r < new_term),
            "a write landed after the term changed"
        );
        // A writer either finished before the change or was fenced.
        assert!(fenced_seen || applied.len() == 200);
    }
    // The store's history agrees: no change under /w/ at or after the new term.
    let (kvs, _) = inner.list("/w/").await.expect("list");
    assert!(kvs.iter().all(|kv| kv.mod_revision < new_term));
}
