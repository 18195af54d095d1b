//! Cases on reads, writes, compare-and-swap and transactions.

use std::sync::Arc;

use super::ok;
use crate::{
    Compare, InvalidKeyReason, KvStore, Op, StoreError, TxnResponse, MAX_KEY_LEN, MAX_VALUE_LEN,
};

fn put_op(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn keys(kvs: &[crate::KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

/// The revision starts at 0 and grows by exactly 1 per write; calls that change nothing
/// leave it alone.
pub async fn revision_counts_writes(store: Arc<dyn KvStore>) {
    assert_eq!(ok(store.revision().await, "revision"), 0);
    assert_eq!(ok(store.list("").await, "list"), (vec![], 0));
    assert_eq!(ok(store.put("/r/a", b"1".to_vec()).await, "put"), 1);
    assert_eq!(ok(store.put("/r/b", b"1".to_vec()).await, "put"), 2);
    assert_eq!(ok(store.put("/r/a", b"2".to_vec()).await, "put"), 3);
    assert_eq!(
        ok(
            store.compare_and_swap("/r/a", 3, b"3".to_vec()).await,
            "cas"
        ),
        4
    );
    assert_eq!(ok(store.delete("/r/b", None).await, "delete"), Some(5));
    let resp = ok(
        store
            .txn(
                vec![],
                vec![put_op("/r/c", b"1"), put_op("/r/d", b"1")],
                vec![],
            )
            .await,
        "txn",
    );
    assert_eq!(
        resp,
        TxnResponse {
            succeeded: true,
            revision: 6
        }
    );
    assert_eq!(ok(store.revision().await, "revision"), 6);

    // No change, no revision.
    assert!(store.compare_and_swap("/r/a", 1, vec![]).await.is_err());
    assert_eq!(ok(store.delete("/r/absent", None).await, "delete"), None);
    let resp = ok(
        store
            .txn(
                vec![Compare::Exists {
                    key: "/r/absent".into(),
                }],
                vec![put_op("/r/e", b"1")],
                vec![],
            )
            .await,
        "txn",
    );
    assert_eq!(
        resp,
        TxnResponse {
            succeeded: false,
            revision: 6
        }
    );
    let resp = ok(
        store
            .txn(
                vec![],
                vec![Op::Delete {
                    key: "/r/absent".into(),
                }],
                vec![],
            )
            .await,
        "txn",
    );
    assert_eq!(resp.revision, 6);
    ok(store.compact(4).await, "compact");
    assert_eq!(ok(store.revision().await, "revision"), 6);
    assert_eq!(ok(store.put("/r/f", vec![]).await, "put"), 7);
}

/// Get, put and list; prefixes match byte-wise (`/a/` does not match `/ab`), lists are
/// sorted by key (byte order) and carry the revision they were read at.
pub async fn get_put_list_prefix(store: Arc<dyn KvStore>) {
    assert_eq!(ok(store.get("/a/1").await, "get"), None);
    for key in ["/b/1", "/a/z", "/a/\u{e9}", "/ab", "/a/2", "/a", "/a/1"] {
        ok(store.put(key, key.as_bytes().to_vec()).await, "put");
    }
    let kv = ok(store.get("/a/1").await, "get").expect("/a/1 exists");
    assert_eq!(kv.key, "/a/1");
    assert_eq!(kv.value, b"/a/1");

    let (kvs, rev) = ok(store.list("/a/").await, "list");
    assert_eq!(keys(&kvs), ["/a/1", "/a/2", "/a/z", "/a/\u{e9}"]);
    assert_eq!(rev, 7);
    assert!(kvs.iter().all(|kv| kv.value == kv.key.as_bytes()));
    let (kvs, _) = ok(store.list("/a").await, "list");
    assert_eq!(
        keys(&kvs),
        ["/a", "/a/1", "/a/2", "/a/z", "/a/\u{e9}", "/ab"]
    );
    let (kvs, rev) = ok(store.list("").await, "list");
    assert_eq!(kvs.len(), 7);
    assert_eq!(rev, 7);
    let (kvs, rev) = ok(store.list("/zzz/").await, "list");
    assert!(kvs.is_empty());
    assert_eq!(rev, 7);
    let (kvs, _) = ok(store.list("/a/1").await, "list");
    assert_eq!(keys(&kvs), ["/a/1"]);

    ok(store.put("/a/1", b"new".to_vec()).await, "put");
    let kv = ok(store.get("/a/1").await, "get").expect("/a/1 exists");
    assert_eq!(kv.value, b"new");
    ok(store.put("/a/1", Vec::new()).await, "put");
    let kv = ok(store.get("/a/1").await, "get").expect("/a/1 exists");
    assert!(kv.value.is_empty(), "an empty value is a value");
    let (_, rev) = ok(store.list("/a/").await, "list");
    assert_eq!(rev, ok(store.revision().await, "revision"));
}

/// create_revision, mod_revision and version follow the key's puts and deletes.
pub async fn key_revisions_and_version(store: Arc<dyn KvStore>) {
    let r1 = ok(store.put("/k", b"1".to_vec()).await, "put");
    let kv = ok(store.get("/k").await, "get").expect("exists");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1, 1)
    );
    ok(store.put("/other", b"x".to_vec()).await, "put");
    let r2 = ok(store.put("/k", b"2".to_vec()).await, "put");
    let r3 = ok(store.compare_and_swap("/k", r2, b"3".to_vec()).await, "cas");
    ok(store.put("/other", b"y".to_vec()).await, "put");
    let kv = ok(store.get("/k").await, "get").expect("exists");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r3, 3)
    );
    let (kvs, _) = ok(store.list("/k").await, "list");
    assert_eq!(kvs, vec![kv]);

    ok(store.delete("/k", None).await, "delete");
    assert_eq!(ok(store.get("/k").await, "get"), None);
    let r5 = ok(store.put("/k", b"again".to_vec()).await, "put");
    let kv = ok(store.get("/k").await, "get").expect("exists");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r5, r5, 1),
        "a re-created key starts over"
    );
}

/// Compare-and-swap writes on a matching revision and reports the actual one otherwise.
pub async fn cas_success_and_conflict(store: Arc<dyn KvStore>) {
    let r1 = ok(store.put("/k", b"1".to_vec()).await, "put");
    let r2 = ok(store.compare_and_swap("/k", r1, b"2".to_vec()).await, "cas");
    assert_eq!(r2, r1 + 1);
    match store.compare_and_swap("/k", r1, b"3".to_vec()).await {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => assert_eq!((key.as_str(), expected, actual), ("/k", r1, r2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store.compare_and_swap("/absent", 5, b"x".to_vec()).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (5, 0)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        ok(store.get("/k").await, "get").expect("exists").value,
        b"2"
    );
    assert_eq!(ok(store.get("/absent").await, "get"), None);
    assert_eq!(ok(store.revision().await, "revision"), r2);
}

/// Expected revision 0 creates a key only if it does not exist.
pub async fn cas_create_only(store: Arc<dyn KvStore>) {
    let r1 = ok(store.compare_and_swap("/k", 0, b"1".to_vec()).await, "cas");
    let kv = ok(store.get("/k").await, "get").expect("created");
    assert_eq!(
        (kv.create_revision, kv.version, kv.value),
        (r1, 1, b"1".to_vec())
    );
    match store.compare_and_swap("/k", 0, b"2".to_vec()).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (0, r1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        ok(store.get("/k").await, "get").expect("exists").value,
        b"1"
    );
    ok(store.delete("/k", None).await, "delete");
    let r3 = ok(store.compare_and_swap("/k", 0, b"3".to_vec()).await, "cas");
    assert_eq!(
        ok(store.get("/k").await, "get")
            .expect("exists")
            .create_revision,
        r3
    );
}

/// Delete, unconditional and on an expected revision.
pub async fn delete_semantics(store: Arc<dyn KvStore>) {
    assert_eq!(ok(store.delete("/k", None).await, "delete"), None);
    assert_eq!(ok(store.delete("/k", Some(0)).await, "delete"), None);
    match store.delete("/k", Some(3)).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (3, 0)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(ok(store.revision().await, "revision"), 0);

    let r1 = ok(store.put("/k", b"1".to_vec()).await, "put");
    match store.delete("/k", Some(r1 + 5)).await {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => assert_eq!((key.as_str(), expected, actual), ("/k", r1 + 5, r1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.delete("/k", Some(0)).await.is_err());
    assert!(ok(store.get("/k").await, "get").is_some());
    assert_eq!(
        ok(store.delete("/k", Some(r1)).await, "delete"),
        Some(r1 + 1)
    );
    assert_eq!(ok(store.get("/k").await, "get"), None);

    let r3 = ok(store.put("/k", b"2".to_vec()).await, "put");
    ok(store.put("/k2", b"2".to_vec()).await, "put");
    assert_eq!(ok(store.delete("/k", None).await, "delete"), Some(r3 + 2));
    assert_eq!(ok(store.get("/k").await, "get"), None);
    assert!(ok(store.get("/k2").await, "get").is_some(), "only the key");
    assert_eq!(ok(store.revision().await, "revision"), r3 + 2);
}

/// When every compare holds, all success ops apply at one revision and no failure op does.
pub async fn txn_success_applies_all_at_one_revision(store: Arc<dyn KvStore>) {
    let rx = ok(store.put("/t/x", b"x".to_vec()).await, "put");
    let resp = ok(
        store
            .txn(
                vec![
                    Compare::ModRevision {
                        key: "/t/x".into(),
                        equals: rx,
                    },
                    Compare::Exists { key: "/t/x".into() },
                    Compare::Absent { key: "/t/y".into() },
                    Compare::ModRevision {
                        key: "/t/y".into(),
                        equals: 0,
                    },
                ],
                vec![
                    put_op("/t/y", b"y"),
                    put_op("/t/z", b"z"),
                    Op::Delete { key: "/t/x".into() },
                ],
                vec![put_op("/t/failed", b"")],
            )
            .await,
        "txn",
    );
    assert_eq!(
        resp,
        TxnResponse {
            succeeded: true,
            revision: rx + 1
        }
    );
    let (kvs, rev) = ok(store.list("/t/").await, "list");
    assert_eq!(rev, rx + 1);
    assert_eq!(keys(&kvs), ["/t/y", "/t/z"]);
    assert!(kvs.iter().all(|kv| kv.mod_revision == rx + 1));
}

/// When a compare fails, only the failure ops apply (atomically, at one revision).
pub async fn txn_failure_applies_failure_ops_only(store: Arc<dyn KvStore>) {
    let rx = ok(store.put("/t/x", b"x".to_vec()).await, "put");
    let resp = ok(
        store
            .txn(
                vec![
                    Compare::Exists { key: "/t/x".into() },
                    Compare::ModRevision {
                        key: "/t/x".into(),
                        equals: rx + 10,
                    },
                ],
                vec![put_op("/t/success", b""), Op::Delete { key: "/t/x".into() }],
                vec![put_op("/t/f1", b"1"), put_op("/t/f2", b"2")],
            )
            .await,
        "txn",
    );
    assert_eq!(
        resp,
        TxnResponse {
            succeeded: false,
            revision: rx + 1
        }
    );
    let (kvs, _) = ok(store.list("/t/").await, "list");
    assert_eq!(keys(&kvs), ["/t/f1", "/t/f2", "/t/x"]);
    assert_eq!(kvs[0].mod_revision, rx + 1);
    assert_eq!(kvs[1].mod_revision, rx + 1);
    assert_eq!(kvs[2].mod_revision, rx, "success ops were not applied");

    for compare in [
        Compare::Absent { key: "/t/x".into() },
        Compare::Exists {
            key: "/t/none".into(),
        },
        Compare::ModRevision {
            key: "/t/x".into(),
            equals: 0,
        },
    ] {
        let resp = ok(
            store
                .txn(vec![compare], vec![put_op("/t/success", b"")], vec![])
                .await,
            "txn",
        );
        assert!(!resp.succeeded);
        assert_eq!(resp.revision, rx + 1);
    }
    assert_eq!(ok(store.get("/t/success").await, "get"), None);
}

/// Empty and too-long keys and too-large values are refused, and nothing changes (a
/// transaction with one bad op applies none).
pub async fn invalid_input_rejected_store_unchanged(store: Arc<dyn KvStore>) {
    ok(store.put("/v/ok", b"1".to_vec()).await, "put");
    let before = ok(store.list("").await, "list");

    let long_key = format!("/{}", "k".repeat(MAX_KEY_LEN));
    let big = vec![7u8; MAX_VALUE_LEN + 1];
    let is_invalid_key = |r: &StoreError| matches!(r, StoreError::InvalidKey { .. });
    let is_too_large = |r: &StoreError| matches!(r, StoreError::TooLarge { .. });

    let err = store.put("", b"x".to_vec()).await.expect_err("empty key");
    assert!(
        matches!(
            err,
            StoreError::InvalidKey {
                reason: InvalidKeyReason::Empty,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store.put(&long_key, b"x".to_vec()).await.expect_err("long");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store.put("/v/big", big.clone()).await.expect_err("big");
    assert!(is_too_large(&err), "{err:?}");
    let err = store
        .compare_and_swap("/v/big", 0, big.clone())
        .await
        .expect_err("big");
    assert!(is_too_large(&err), "{err:?}");
    let err = store
        .compare_and_swap("", 0, vec![])
        .await
        .expect_err("empty");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store.get("").await.expect_err("empty key");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store.get(&long_key).await.expect_err("long key");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store.delete("", None).await.expect_err("empty key");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store.list(&long_key).await.expect_err("long prefix");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store.watch(&long_key, 1).await.expect_err("long prefix");
    assert!(is_invalid_key(&err), "{err:?}");

    let err = store
        .txn(
            vec![],
            vec![put_op("/v/fine", b"1"), put_op("/v/big", &big)],
            vec![],
        )
        .await
        .expect_err("big value in txn");
    assert!(is_too_large(&err), "{err:?}");
    let err = store
        .txn(
            vec![],
            vec![put_op("/v/fine", b"1")],
            vec![Op::Delete { key: "".into() }],
        )
        .await
        .expect_err("bad key in the other branch");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store
        .txn(
            vec![Compare::Exists { key: "".into() }],
            vec![put_op("/v/fine", b"1")],
            vec![],
        )
        .await
        .expect_err("bad compare key");
    assert!(is_invalid_key(&err), "{err:?}");
    let err = store
        .txn(
            vec![],
            vec![put_op("/v/dup", b"1"), put_op("/v/dup", b"2")],
            vec![],
        )
        .await
        .expect_err("duplicate key");
    assert!(
        matches!(
            err,
            StoreError::InvalidKey {
                reason: InvalidKeyReason::DuplicateInTxn,
                ..
            }
        ),
        "{err:?}"
    );

    assert_eq!(ok(store.list("").await, "list"), before, "store unchanged");

    // The limits themselves are allowed.
    let max_key = "k".repeat(MAX_KEY_LEN);
    ok(
        store.put(&max_key, vec![1u8; MAX_VALUE_LEN]).await,
        "put at limits",
    );
    let kv = ok(store.get(&max_key).await, "get").expect("exists");
    assert_eq!(kv.value.len(), MAX_VALUE_LEN);
}

/// Many tasks compare-and-swap the same revision: exactly one wins each round, and the losers
/// see the winner's revision.
pub async fn concurrent_cas_one_winner_per_round(store: Arc<dyn KvStore>) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 10;
    let mut revision = ok(store.put("/race", b"start".to_vec()).await, "put");
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let value = format!("{round}:{task}").into_bytes();
                    (task, store.compare_and_swap("/race", revision, value).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for task in tasks {
            match task.await.expect("cas task") {
                (task, Ok(rev)) => winners.push((task, rev)),
                (_, Err(StoreError::Conflict { actual, .. })) => conflicts.push(actual),
                (_, Err(err)) => panic!("unexpected error {err}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (winner, rev) = winners[0];
        assert_eq!(rev, revision + 1, "round {round}");
        assert!(
            conflicts.iter().all(|actual| *actual == rev),
            "{conflicts:?}"
        );
        let kv = ok(store.get("/race").await, "get").expect("exists");
        assert_eq!(kv.value, format!("{round}:{winner}").into_bytes());
        assert_eq!(kv.mod_revision, rev);
        revision = rev;
    }
    assert_eq!(ok(store.revision().await, "revision"), revision);
}

/// Read-modify-CAS loops from many tasks lose no increment.
pub async fn concurrent_increments_lose_nothing(store: Arc<dyn KvStore>) {
    const TASKS: u64 = 6;
    const INCREMENTS: u64 = 10;
    let start = ok(store.put("/counter", b"0".to_vec()).await, "put");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let kv = ok(store.get("/counter").await, "get").expect("exists");
                        let n: u64 = String::from_utf8(kv.value)
                            .expect("utf-8")
                            .parse()
                            .expect("number");
                        let next = (n + 1).to_string().into_bytes();
                        match store
                            .compare_and_swap("/counter", kv.mod_revision, next)
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(err) => panic!("unexpected error {err}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("increment task");
    }
    let kv = ok(store.get("/counter").await, "get").expect("exists");
    assert_eq!(kv.value, (TASKS * INCREMENTS).to_string().into_bytes());
    assert_eq!(kv.version, TASKS * INCREMENTS + 1);
    assert_eq!(kv.mod_revision, start + TASKS * INCREMENTS);
    assert_eq!(ok(store.revision().await, "revision"), kv.mod_revision);
}
