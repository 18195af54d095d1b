//! What only etcd can show: members dying under a watch, a lost quorum, several clusters on
//! one etcd, and closing.

mod etcd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd::connect;
use firefleet_store::conformance::{assert_put, next_event, ok};
use firefleet_store::etcd::testing::EtcdCluster;
use firefleet_store::{Event, EventKind, KvStore, Revision, StoreError, Watch};

/// Writes `/w/<i>` create-only for every `i` in `range`, retrying while etcd is unavailable
/// (a create-only write that failed ambiguously and was applied shows up as a conflict).
async fn write_through_failures(store: &dyn KvStore, range: std::ops::Range<u32>) {
    for i in range {
        let key = format!("/w/{i:04}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match store
                .compare_and_swap(&key, 0, i.to_string().into_bytes())
                .await
            {
                Ok(_) | Err(StoreError::Conflict { .. }) => break,
                Err(StoreError::Unavailable { reason }) if Instant::now() < deadline => {
                    eprintln!("write {key}: unavailable, retrying: {reason}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("write {key}: {err} ({err:?})"),
            }
        }
    }
}

/// `count` events of `watch`.
async fn events(watch: &mut Watch, count: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(next_event(watch).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_survives_the_death_of_each_member_with_no_gap_and_no_duplicate() {
    const PER_ROUND: u32 = 40;
    let cluster = Arc::new(EtcdCluster::start(3).await);
    let writer = Arc::new(connect(&cluster, "/firefleet/test").await);
    let watcher = connect(&cluster, "/firefleet/test").await;
    let mut watch = ok(watcher.watch("/w/", 1).await, "watch");

    // Whichever member serves the watch, one of these rounds kills it mid-stream.
    for victim in 0..3 {
        let round = victim as u32;
        let writes = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                let start = round * PER_ROUND;
                write_through_failures(writer.as_ref(), start..start + PER_ROUND).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.kill(victim);
        writes.await.expect("writer");
        cluster.restart(victim).await;
    }

    let total = (3 * PER_ROUND) as usize;
    let live = events(&mut watch, total).await;
    let mut replay_watch = ok(watcher.watch("/w/", 1).await, "replay");
    let replayed = events(&mut replay_watch, total).await;
    assert_eq!(live, replayed, "the live watch saw exactly the history");
    let revisions: Vec<Revision> = live.iter().map(Event::revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions strictly increase: {revisions:?}"
    );
    let mut keys: Vec<&str> = live.iter().map(|e| e.kv.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), total, "every write seen once");
    assert!(live.iter().all(|e| e.kind == EventKind::Put));

    // And it is still live.
    let r = ok(writer.put("/w/last", b"x".to_vec()).await, "put");
    assert_put(&next_event(&mut watch).await, "/w/last", b"x", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_calls_fail_unavailable_in_time_and_recover_without_reconnecting() {
    let s = etcd::cluster_store(3).await;
    let timeout = s.store.config().request_timeout;
    let r1 = ok(s.store.put("/q/a", b"1".to_vec()).await, "put");
    let mut watch = ok(s.store.watch("/q/", r1 + 1).await, "watch");

    s.guard.kill(1);
    s.guard.kill(2);
    // Give the survivor time to notice it has no leader: then it answers at once. Before
    // that, calls hang in raft and time out: both must be Unavailable within the timeout.
    for (what, call) in [
        ("put", 0),
        ("get", 1),
        ("list", 2),
        ("cas", 3),
        ("revision", 4),
    ] {
        let started = Instant::now();
        let result = match call {
            0 => s.store.put("/q/b", b"2".to_vec()).await.map(|_| ()),
            1 => s.store.get("/q/a").await.map(|_| ()),
            2 => s.store.list("/q/").await.map(|_| ()),
            3 => s
                .store
                .compare_and_swap("/q/a", r1, vec![])
                .await
                .map(|_| ()),
            _ => s.store.revision().await.map(|_| ()),
        };
        let elapsed = started.elapsed();
        assert!(
            matches!(result, Err(StoreError::Unavailable { .. })),
            "{what} without quorum: {result:?}"
        );
        assert!(
            elapsed <= timeout + Duration::from_secs(1),
            "{what} took {elapsed:?}, over the request timeout {timeout:?}"
        );
    }

    // One member back: a quorum again. The same store, with no reconnect, writes again.
    s.guard.restart(1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let r2 = loop {
        match s.store.put("/q/c", b"3".to_vec()).await {
            Ok(r) => break r,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => panic!("put after the quorum came back: {err}"),
        }
    };
    assert_eq!(
        ok(s.store.get("/q/a").await, "get").map(|kv| kv.value),
        Some(b"1".to_vec())
    );
    // The put that failed during the outage may or may not have been applied (as after a
    // timeout); the watch resumed and delivers what was applied, in order, then /q/c.
    let mut event = next_event(&mut watch).await;
    if event.kv.key == "/q/b" {
        event = next_event(&mut watch).await;
    }
    assert_put(&event, "/q/c", b"3", r2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_on_one_etcd_do_not_see_each_other() {
    let cluster = EtcdCluster::start(1).await;
    let a = connect(&cluster, "/firefleet/a").await;
    let b = connect(&cluster, "/firefleet/b").await;
    let mut watch_a = ok(a.watch("", 1).await, "watch a");
    let mut watch_b = ok(b.watch("", 1).await, "watch b");

    let ra = ok(a.put("/vms/x", b"a".to_vec()).await, "put a");
    let rb = ok(b.put("/vms/x", b"b".to_vec()).await, "put b");
    let rb2 = ok(b.put("/vms/y", b"b".to_vec()).await, "put b");
    let ra2 = ok(a.put("/vms/z", b"a".to_vec()).await, "put a");
    assert!(ra < ra2 && rb < rb2);

    let (kvs, _) = ok(a.list("").await, "list a");
    let keys: Vec<(&str, &[u8])> = kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(keys, [("/vms/x", &b"a"[..]), ("/vms/z", &b"a"[..])]);
    let (kvs, _) = ok(b.list("").await, "list b");
    assert_eq!(kvs.len(), 2);
    assert!(kvs.iter().all(|kv| kv.value == b"b"));

    assert_put(&next_event(&mut watch_a).await, "/vms/x", b"a", ra);
    assert_put(&next_event(&mut watch_a).await, "/vms/z", b"a", ra2);
    assert_put(&next_event(&mut watch_b).await, "/vms/x", b"b", rb);
    assert_put(&next_event(&mut watch_b).await, "/vms/y", b"b", rb2);
    // Nothing else arrives on either.
    for watch in [&mut watch_a, &mut watch_b] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watch.next())
                .await
                .is_err()
        );
    }
    // The second store's revisions advance with the first's writes too (documented).
    assert_eq!(ok(b.revision().await, "revision"), rb2 + 1);

    // Deleting in one does not touch the other.
    ok(a.delete("/vms/x", None).await, "delete a");
    assert!(ok(b.get("/vms/x").await, "get b").is_some());

    // A reconnect to a prefix keeps its base: same revisions.
    let again = connect(&cluster, "/firefleet/a").await;
    assert_eq!(
        ok(again.get("/vms/z").await, "get").map(|kv| kv.mod_revision),
        Some(ra2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_close_calls_fail_closed_and_watches_end() {
    let s = etcd::cluster_store(1).await;
    ok(s.store.put("/c/a", vec![]).await, "put");
    let mut watch = ok(s.store.watch("/c/", 1).await, "watch");
    assert_eq!(next_event(&mut watch).await.kv.key, "/c/a");
    let clone = s.store.clone();
    ok(KvStore::close(&s.store).await, "close");
    ok(s.store.close().await, "close twice");
    assert!(matches!(clone.get("/c/a").await, Err(StoreError::Closed)));
    assert!(matches!(
        clone.put("/c/b", vec![]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        clone.watch("/c/", 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(clone.revision().await, Err(StoreError::Closed)));
    assert!(matches!(
        clone.grant_lease(Duration::from_secs(5)).await,
        Err(StoreError::Closed)
    ));
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Err(StoreError::Closed))) => {}
        other => panic!("the watch should end with Closed: {other:?}"),
    }
    assert!(watch.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_fails_connect_with_unavailable_naming_the_endpoints() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let endpoint = format!("127.0.0.1:{port}");
    let mut config = firefleet_store::EtcdConfig::new(vec![endpoint.clone()], "/firefleet/x");
    config.request_timeout = Duration::from_secs(1);
    let started = Instant::now();
    match firefleet_store::EtcdStore::connect(config).await {
        Err(StoreError::Unavailable { reason }) => {
            assert!(reason.contains(&endpoint), "{reason}");
        }
        other => panic!("connect to nothing: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_member_dead_every_call_succeeds() {
    let s = etcd::cluster_store(3).await;
    ok(s.store.put("/one/start", vec![]).await, "put");
    for victim in [0, 2] {
        s.guard.kill(victim);
        // A leader's death needs an election first; after that, no call may fail, although
        // some are routed to the dead member first (refused connections are sent again).
        tokio::time::sleep(Duration::from_secs(3)).await;
        for i in 0..60 {
            let key = format!("/one/{victim}/{i}");
            let r = ok(s.store.put(&key, vec![i]).await, "put");
            let kv = ok(s.store.get(&key).await, "get").expect("written");
            assert_eq!(kv.mod_revision, r);
            ok(s.store.list("/one/").await, "list");
        }
        s.guard.restart(victim).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_unavailable_after_a_long_outage() {
    let cluster = EtcdCluster::start(1).await;
    let mut config = cluster.config("/firefleet/test");
    config.watch_outage_limit = Duration::from_secs(2);
    let store = match firefleet_store::EtcdStore::connect(config).await {
        Ok(store) => store,
        Err(err) => panic!("connect: {err}"),
    };
    let r = ok(store.put("/o/a", vec![]).await, "put");
    let mut watch = ok(store.watch("/o/", r).await, "watch");
    assert_put(&next_event(&mut watch).await, "/o/a", b"", r);
    cluster.kill(0);
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(15), watch.next()).await {
        Ok(Some(Err(StoreError::Unavailable { reason }))) => {
            assert!(reason.contains("watch"), "{reason}")
        }
        other => panic!("expected Unavailable after the outage limit: {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    assert!(watch.next().await.is_none());
}
