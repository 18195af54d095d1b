//! Tests of what is specific to the SQLite backend; the shared behaviour is in the
//! conformance suite (`tests/sqlite_conformance.rs`).

use std::time::Duration;

use super::*;

fn open_in(dir: &tempfile::TempDir, config: SqliteConfig) -> SqliteStore {
    SqliteStore::open_with(&dir.path().join("store.db"), config).unwrap()
}

#[tokio::test]
async fn file_is_wal_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(&dir, SqliteConfig::default());
    store.put("/k", b"v".to_vec()).await.unwrap();
    let (mode, sync): (String, i64) = with_conn(&store.inner, |conn, _| {
        let mode = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        let sync = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        Ok((mode, sync))
    })
    .await
    .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL");
}

#[tokio::test]
async fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(&dir, SqliteConfig::default());
    store.put("/k", b"v".to_vec()).await.unwrap();
    let config = SqliteConfig {
        busy_timeout: Duration::from_millis(50),
        ..SqliteConfig::default()
    };
    let err = SqliteStore::open_with(&dir.path().join("store.db"), config.clone()).unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    store.close().await.unwrap();
    let reopened = SqliteStore::open_with(&dir.path().join("store.db"), config).unwrap();
    assert_eq!(reopened.revision().await.unwrap(), 1);
}

#[tokio::test]
async fn close_ends_calls_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(&dir, SqliteConfig::default());
    store.put("/k", b"v".to_vec()).await.unwrap();
    let mut watch = store.watch("/", 1).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().kv.key, "/k");
    store.close().await.unwrap();
    assert!(matches!(watch.next().await, Some(Err(StoreError::Closed))));
    assert!(watch.next().await.is_none());
    assert!(matches!(store.get("/k").await, Err(StoreError::Closed)));
    assert!(matches!(
        store.put("/k", vec![]).await,
        Err(StoreError::Closed)
    ));
    store.close().await.unwrap();
}

#[tokio::test]
async fn dropping_the_store_ends_live_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(&dir, SqliteConfig::default());
    let mut watch = store.watch("/", 1).await.unwrap();
    drop(store);
    assert!(matches!(watch.next().await, Some(Err(StoreError::Closed))));
}

#[tokio::test]
async fn a_slow_watcher_is_ended_and_can_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(
        &dir,
        SqliteConfig {
            watch_buffer: 2,
            live_buffer: 4,
            replay_page: 3,
            ..SqliteConfig::default()
        },
    );
    const WRITES: u64 = 40;
    let mut watch = store.watch("/s/", 1).await.unwrap();
    for i in 1..=WRITES {
        store.put(&format!("/s/{i}"), vec![]).await.unwrap();
    }
    // Everything delivered before the error is in order, and the error says where to resume.
    let mut next = 1;
    let resume_from = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
        {
            Some(Ok(event)) => {
                assert_eq!(event.revision(), next);
                next += 1;
            }
            Some(Err(StoreError::WatchLagged { resume_from })) => break resume_from,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(resume_from, next);
    assert!(resume_from <= WRITES, "the watcher did lag");
    assert!(watch.next().await.is_none(), "the stream ended");

    // Re-watching from there (replayed from the log) delivers the rest, then live.
    let mut watch = store.watch("/s/", resume_from).await.unwrap();
    for revision in resume_from..=WRITES {
        assert_eq!(watch.next().await.unwrap().unwrap().revision(), revision);
    }
    store.put("/s/live", vec![]).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision(), WRITES + 1);
}

#[tokio::test]
async fn compaction_during_a_replay_ends_the_watch_with_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(
        &dir,
        SqliteConfig {
            watch_buffer: 1,
            replay_page: 2,
            ..SqliteConfig::default()
        },
    );
    for i in 1..=20 {
        store.put(&format!("/c/{i}"), vec![]).await.unwrap();
    }
    let mut watch = store.watch("/c/", 1).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision(), 1);
    store.compact(15).await.unwrap();
    let mut last = 1;
    loop {
        match watch.next().await {
            Some(Ok(event)) => {
                assert_eq!(event.revision(), last + 1);
                last = event.revision();
            }
            Some(Err(StoreError::Compacted { requested, oldest })) => {
                assert_eq!(oldest, 15);
                assert!(requested >= last && requested < 15);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn a_dropped_watch_does_not_block_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(
        &dir,
        SqliteConfig {
            watch_buffer: 1,
            live_buffer: 2,
            ..SqliteConfig::default()
        },
    );
    let watch = store.watch("/", 1).await.unwrap();
    let idle = store.watch("/", 1).await.unwrap();
    drop(watch);
    for i in 0..10 {
        store.put(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    drop(idle);
    assert_eq!(store.revision().await.unwrap(), 10);
}
