//! The lease primitives leader election builds on, against a real etcd.

mod etcd;

use std::time::Duration;

use firefleet_store::conformance::{assert_delete, next_event, ok};
use firefleet_store::{EtcdError, EventKind, KvStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_key_lives_while_renewed_and_disappears_after_the_ttl() {
    let s = etcd::cluster_store(1).await;
    let lease = ok(s.store.grant_lease(Duration::from_secs(2)).await, "grant");
    let rev = ok(
        s.store
            .put_leased("/leader", b"me".to_vec(), lease, true)
            .await,
        "put_leased",
    )
    .expect("the key was absent");
    assert_eq!(rev, 1, "a leased put is a write like any other");
    let mut watch = ok(s.store.watch("/leader", rev + 1).await, "watch");

    // Renewed for longer than the TTL: the key stays.
    for _ in 0..6 {
        let ttl = ok(s.store.keep_alive_once(lease).await, "keep alive");
        assert!(
            ttl >= Duration::from_secs(2) && ttl <= Duration::from_secs(3),
            "{ttl:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let kv = ok(s.store.get("/leader").await, "get").expect("still there");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"me"[..], rev));

    // Not renewed: etcd deletes it (a write, seen by watches) once the TTL has passed.
    let started = std::time::Instant::now();
    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, EventKind::Delete);
    assert_delete(&event, "/leader", rev + 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "deleted too early: {:?}",
        started.elapsed()
    );
    assert_eq!(ok(s.store.get("/leader").await, "get"), None);
    assert_eq!(
        ok(s.store.keep_alive_once(lease).await, "keep alive"),
        Duration::ZERO,
        "an expired lease renews to zero"
    );
    match s.store.put_leased("/leader", vec![], lease, false).await {
        Err(StoreError::Backend(err)) => assert!(
            matches!(
                err.downcast_ref::<EtcdError>(),
                Some(EtcdError::LeaseNotFound { lease: l }) if *l == lease
            ),
            "{err}"
        ),
        other => panic!("a put on an expired lease: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_absent_returns_the_holder_and_revoke_deletes_the_key() {
    let s = etcd::cluster_store(1).await;
    let first = ok(s.store.grant_lease(Duration::from_secs(30)).await, "grant");
    let second = ok(s.store.grant_lease(Duration::from_secs(30)).await, "grant");
    assert_ne!(first, second);
    let r1 = ok(
        s.store
            .put_leased("/election", b"first".to_vec(), first, true)
            .await,
        "put_leased",
    )
    .expect("absent");
    let holder = ok(
        s.store
            .put_leased("/election", b"second".to_vec(), second, true)
            .await,
        "put_leased",
    )
    .expect_err("present");
    assert_eq!(
        (
            holder.value.as_slice(),
            holder.mod_revision,
            holder.create_revision
        ),
        (&b"first"[..], r1, r1)
    );
    assert_eq!(ok(s.store.revision().await, "revision"), r1, "no write");

    // Without only_if_absent it overwrites (and rebinds the key to the new lease).
    let r2 = ok(
        s.store
            .put_leased("/election", b"second".to_vec(), second, false)
            .await,
        "put_leased",
    )
    .expect("unconditional");
    assert_eq!(r2, r1 + 1);
    ok(s.store.revoke_lease(first).await, "revoke first");
    assert!(
        ok(s.store.get("/election").await, "get").is_some(),
        "the key now belongs to the second lease"
    );
    ok(s.store.revoke_lease(second).await, "revoke second");
    assert_eq!(ok(s.store.get("/election").await, "get"), None);
    assert_eq!(ok(s.store.revision().await, "revision"), r2 + 1);
    ok(
        s.store.revoke_lease(second).await,
        "revoking twice is a no-op",
    );
    assert!(matches!(
        s.store.put_leased("", vec![], second, true).await,
        Err(StoreError::InvalidKey { .. })
    ));
}
