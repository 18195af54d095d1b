//! Cases on watches and compaction.

use std::sync::Arc;

use super::{assert_delete, assert_put, next_event, ok};
use crate::{EventKind, KvStore, Op, StoreError};

/// A watch from a past revision replays the history since then, then follows live writes;
/// the changes of one transaction arrive in op order with one revision.
pub async fn watch_replays_history_then_goes_live(store: Arc<dyn KvStore>) {
    ok(store.put("/w/old", b"0".to_vec()).await, "put");
    let r1 = ok(store.put("/w/a", b"1".to_vec()).await, "put");
    let r2 = ok(store.put("/w/b", b"2".to_vec()).await, "put");
    let r3 = ok(store.put("/w/a", b"3".to_vec()).await, "put");
    let r4 = ok(store.delete("/w/b", None).await, "delete").expect("existed");

    let mut watch = ok(store.watch("/w/", r1).await, "watch");
    let e = next_event(&mut watch).await;
    assert_put(&e, "/w/a", b"1", r1);
    assert_eq!((e.kv.create_revision, e.kv.version), (r1, 1));
    assert_put(&next_event(&mut watch).await, "/w/b", b"2", r2);
    let e = next_event(&mut watch).await;
    assert_put(&e, "/w/a", b"3", r3);
    assert_eq!((e.kv.create_revision, e.kv.version), (r1, 2));
    assert_delete(&next_event(&mut watch).await, "/w/b", r4);

    let r5 = ok(store.put("/w/c", b"5".to_vec()).await, "put");
    assert_put(&next_event(&mut watch).await, "/w/c", b"5", r5);
    let resp = ok(
        store
            .txn(
                vec![],
                vec![
                    Op::Put {
                        key: "/w/e".into(),
                        value: b"6".to_vec(),
                    },
                    Op::Put {
                        key: "/w/d".into(),
                        value: b"6".to_vec(),
                    },
                    Op::Delete { key: "/w/c".into() },
                ],
                vec![],
            )
            .await,
        "txn",
    );
    assert_put(&next_event(&mut watch).await, "/w/e", b"6", resp.revision);
    assert_put(&next_event(&mut watch).await, "/w/d", b"6", resp.revision);
    assert_delete(&next_event(&mut watch).await, "/w/c", resp.revision);

    // Two watches of the same prefix see the same events.
    let mut other = ok(store.watch("/w/", r5).await, "watch");
    assert_put(&next_event(&mut other).await, "/w/c", b"5", r5);
    let r7 = ok(store.put("/w/f", b"7".to_vec()).await, "put");
    for _ in 0..3 {
        assert_eq!(next_event(&mut other).await.revision(), resp.revision);
    }
    assert_put(&next_event(&mut other).await, "/w/f", b"7", r7);
    assert_put(&next_event(&mut watch).await, "/w/f", b"7", r7);
}

/// A watch from just after a list's revision gets only later events; `from_revision` is
/// inclusive.
pub async fn watch_from_current_gets_only_new(store: Arc<dyn KvStore>) {
    for i in 0..3 {
        ok(store.put(&format!("/n/{i}"), vec![i]).await, "put");
    }
    let (_, rev) = ok(store.list("/n/").await, "list");
    let mut after = ok(store.watch("/n/", rev + 1).await, "watch");
    let mut at = ok(store.watch("/n/", rev).await, "watch");
    assert_put(&next_event(&mut at).await, "/n/2", &[2], rev);

    let r = ok(store.put("/n/new", b"x".to_vec()).await, "put");
    assert_put(&next_event(&mut after).await, "/n/new", b"x", r);
    assert_put(&next_event(&mut at).await, "/n/new", b"x", r);

    // A watch of a future revision starts there.
    let mut future = ok(store.watch("/n/", r + 2).await, "watch");
    ok(store.put("/n/skipped", vec![]).await, "put");
    let r3 = ok(store.put("/n/seen", vec![]).await, "put");
    assert_eq!(r3, r + 2);
    assert_put(&next_event(&mut future).await, "/n/seen", b"", r3);
}

/// A watch sees only keys under its prefix (byte-wise), in replay and live.
pub async fn watch_filters_by_prefix(store: Arc<dyn KvStore>) {
    ok(store.put("/ab", b"no".to_vec()).await, "put");
    ok(store.put("/a", b"no".to_vec()).await, "put");
    let r1 = ok(store.put("/a/1", b"yes".to_vec()).await, "put");
    ok(store.put("/b/1", b"no".to_vec()).await, "put");
    let mut watch = ok(store.watch("/a/", 1).await, "watch");
    let mut all = ok(store.watch("", 1).await, "watch");
    assert_put(&next_event(&mut watch).await, "/a/1", b"yes", r1);

    ok(store.put("/abc", b"no".to_vec()).await, "put");
    ok(store.delete("/ab", None).await, "delete");
    ok(store.put("/", b"no".to_vec()).await, "put");
    let r2 = ok(store.put("/a/2", b"yes".to_vec()).await, "put");
    assert_put(&next_event(&mut watch).await, "/a/2", b"yes", r2);

    for revision in 1..=r2 {
        assert_eq!(next_event(&mut all).await.revision(), revision);
    }
}

/// Deletes appear as delete events (replayed and live, plain and in a transaction).
pub async fn watch_delete_events(store: Arc<dyn KvStore>) {
    let r1 = ok(store.put("/d/k", b"v".to_vec()).await, "put");
    let r2 = ok(store.delete("/d/k", Some(r1)).await, "delete").expect("existed");
    let mut watch = ok(store.watch("/d/", r1).await, "watch");
    assert_put(&next_event(&mut watch).await, "/d/k", b"v", r1);
    let e = next_event(&mut watch).await;
    assert_delete(&e, "/d/k", r2);
    assert_eq!(e.kind, EventKind::Delete);

    let r3 = ok(store.put("/d/k", b"w".to_vec()).await, "put");
    assert_put(&next_event(&mut watch).await, "/d/k", b"w", r3);
    let r4 = ok(store.delete("/d/k", None).await, "delete").expect("existed");
    assert_delete(&next_event(&mut watch).await, "/d/k", r4);
    ok(store.put("/d/j", b"j".to_vec()).await, "put");
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv.key, "/d/j");
    let resp = ok(
        store
            .txn(vec![], vec![Op::Delete { key: "/d/j".into() }], vec![])
            .await,
        "txn",
    );
    assert_delete(&next_event(&mut watch).await, "/d/j", resp.revision);
    // Deleting an absent key is no event: the next one is the put.
    ok(store.delete("/d/absent", None).await, "delete");
    let r = ok(store.put("/d/last", vec![]).await, "put");
    assert_put(&next_event(&mut watch).await, "/d/last", b"", r);
}

/// Watching below the compaction point fails with `Compacted`; at or above it, it works.
/// Compaction keeps the current state and the revision, is idempotent, and refuses the future.
pub async fn watch_compacted_errors(store: Arc<dyn KvStore>) {
    for i in 1..=5u8 {
        ok(store.put(&format!("/c/{i}"), vec![i]).await, "put");
    }
    ok(store.compact(3).await, "compact");
    match store.watch("/c/", 2).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (2, 3)),
        Ok(_) => panic!("watch below the compaction point succeeded"),
        Err(err) => panic!("expected Compacted, got {err:?}"),
    }
    assert!(matches!(
        store.watch("", 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = ok(store.watch("/c/", 3).await, "watch");
    for i in 3..=5u8 {
        assert_put(
            &next_event(&mut watch).await,
            &format!("/c/{i}"),
            &[i],
            u64::from(i),
        );
    }
    let r6 = ok(store.put("/c/6", vec![6]).await, "put");
    assert_put(&next_event(&mut watch).await, "/c/6", &[6], r6);

    let (kvs, rev) = ok(store.list("/c/").await, "list");
    assert_eq!(
        (kvs.len(), rev),
        (6, 6),
        "compaction keeps the current state"
    );
    ok(store.compact(2).await, "compact below the compaction point");
    ok(store.compact(3).await, "compact again");
    assert!(matches!(
        store.compact(rev + 1).await,
        Err(StoreError::FutureRevision { .. })
    ));
    ok(store.compact(rev).await, "compact to the current revision");
    assert!(matches!(
        store.watch("/c/", rev - 1).await,
        Err(StoreError::Compacted { oldest, .. }) if oldest == rev
    ));
    let mut watch = ok(store.watch("/c/", rev).await, "watch");
    assert_put(&next_event(&mut watch).await, "/c/6", &[6], rev);
    assert_eq!(ok(store.revision().await, "revision"), rev);
}

/// Replay of a long history, with transactions of many changes, arrives complete and in
/// order.
pub async fn watch_pages_through_large_history(store: Arc<dyn KvStore>) {
    const TXNS: usize = 3;
    const PER_TXN: usize = 700;
    for t in 0..TXNS {
        let ops = (0..PER_TXN)
            .map(|i| Op::Put {
                key: format!("/p/{t}/{i:04}"),
                value: vec![t as u8],
            })
            .collect();
        ok(store.txn(vec![], ops, vec![]).await, "txn");
        ok(store.put(&format!("/q/{t}"), vec![]).await, "put");
    }
    let mut watch = ok(store.watch("/p/", 1).await, "watch");
    for t in 0..TXNS {
        for i in 0..PER_TXN {
            let e = next_event(&mut watch).await;
            assert_put(&e, &format!("/p/{t}/{i:04}"), &[t as u8], 2 * t as u64 + 1);
        }
    }
    let r = ok(store.put("/p/live", vec![]).await, "put");
    assert_put(&next_event(&mut watch).await, "/p/live", b"", r);
}

/// A watch started while writes are under way sees every revision exactly once, in order.
pub async fn watch_during_writes_has_no_gaps(store: Arc<dyn KvStore>) {
    const WRITES: u64 = 120;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..WRITES {
                ok(
                    store
                        .put(&format!("/g/{}", i % 7), i.to_string().into_bytes())
                        .await,
                    "put",
                );
            }
        })
    };
    // Start watching part way through.
    let mut watchers = Vec::new();
    while watchers.len() < 3 {
        let rev = ok(store.revision().await, "revision");
        if rev >= (watchers.len() as u64 + 1) * 20 {
            watchers.push(ok(store.watch("/g/", 1).await, "watch"));
        } else {
            tokio::task::yield_now().await;
        }
    }
    for watch in &mut watchers {
        for revision in 1..=WRITES {
            let e = next_event(watch).await;
            assert_eq!(e.revision(), revision);
            assert_eq!(e.kv.value, (revision - 1).to_string().into_bytes());
        }
    }
    writer.await.expect("writer");
    let r = ok(store.put("/g/end", vec![]).await, "put");
    for watch in &mut watchers {
        assert_put(&next_event(watch).await, "/g/end", b"", r);
    }
}
