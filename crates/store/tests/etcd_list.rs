//! Lists page through etcd at one revision: 10,000 keys, and values whose total is far over
//! gRPC's default 4 MiB message limit, come back whole and consistent while writes go on.

mod etcd;

use std::sync::Arc;

use firefleet_store::conformance::ok;
use firefleet_store::{KvStore, Op, MAX_VALUE_LEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_keys_and_big_values_list_whole_at_one_revision() {
    const KEYS: usize = 10_000;
    const PER_TXN: usize = 1000;
    const BIG: usize = 24;
    let s = Arc::new(etcd::cluster_store(1).await);
    for t in 0..KEYS / PER_TXN {
        let ops = (0..PER_TXN)
            .map(|i| Op::Put {
                key: format!("/many/{:05}", t * PER_TXN + i),
                value: vec![(i % 251) as u8; 16],
            })
            .collect();
        ok(s.txn(vec![], ops, vec![]).await, "txn");
    }
    // 24 MiB of values: one page of them is far over gRPC's default 4 MiB message limit.
    for i in 0..BIG {
        ok(
            s.put(&format!("/big/{i:02}"), vec![i as u8; MAX_VALUE_LEN])
                .await,
            "put big",
        );
    }
    let (big, _) = ok(s.list("/big/").await, "list big");
    assert_eq!(big.len(), BIG);
    assert!(big
        .iter()
        .enumerate()
        .all(|(i, kv)| kv.value.len() == MAX_VALUE_LEN && kv.value[0] == i as u8));

    // Writers add keys inside and outside the listed range while it is listed.
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            for i in 0..200 {
                ok(
                    s.put(&format!("/many/{:05}", KEYS + i), vec![]).await,
                    "put",
                );
                ok(
                    s.put(&format!("/many/{i:05}"), b"new".to_vec()).await,
                    "put",
                );
            }
        })
    };
    let (kvs, rev) = ok(s.list("/many/").await, "list many");
    writer.await.expect("writer");
    assert!(kvs.len() >= KEYS, "{}", kvs.len());
    assert!(
        kvs.windows(2).all(|w| w[0].key < w[1].key),
        "sorted, no duplicate across pages"
    );
    assert!(
        kvs.iter().all(|kv| kv.mod_revision <= rev),
        "nothing newer than the list's revision {rev}"
    );
    // Exactly the keys that existed at `rev`: the originals plus the new ones written by then.
    let added = kvs.len() - KEYS;
    let rewritten = kvs
        .iter()
        .filter(|kv| kv.key.as_str() < "/many/10000" && kv.value == b"new")
        .count();
    assert!(
        added == rewritten || added == rewritten + 1,
        "a consistent snapshot: {added} added, {rewritten} rewritten"
    );
    let (all, _) = ok(s.list("/many/").await, "list again");
    assert_eq!(all.len(), KEYS + 200);
}
