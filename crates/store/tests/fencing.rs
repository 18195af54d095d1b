//! Leader election and fenced writes against real etcd processes.
//!
//! - Three candidates on a three-member cluster: exactly one leads; when the leader is cut
//!   off from etcd (every call of its connection hangs, as over a partition; its process
//!   keeps running), it declares the leadership lost before another candidate wins, and one
//!   wins within the TTL + 2 s.
//! - A property test of random interleavings of two leaders' controller writes through
//!   [`FencedStore`]: no write of the deposed leader is applied once the new term began
//!   (checked against the store's own history, replayed by a watch from revision 1), and
//!   every write it attempts after that is refused with [`StoreError::Fenced`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use firefleet_store::election::{EtcdElection, EtcdElectionConfig, LeaseId, LeaseStore};
use firefleet_store::etcd::testing::EtcdCluster;
use firefleet_store::etcd::EtcdStore;
use firefleet_store::{
    Candidate, Compare, Election, FencedStore, KeyValue, KvStore, Op, Revision, StoreError,
    TxnResponse, Watch,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tokio::time::Instant;

/// Shortest TTL etcd keeps as asked with its default timing (its floor is 1.5 x the election
/// timeout, rounded up to whole seconds).
const TTL: Duration = Duration::from_secs(2);

/// A replica's connection to etcd that can be cut: every call made while cut hangs (as a
/// request into a partition does until its timeout), and the renewal loop has to notice.
struct Cuttable {
    store: EtcdStore,
    cut: AtomicBool,
}

impl Cuttable {
    async fn connect(cluster: &EtcdCluster, prefix: &str) -> Arc<Self> {
        let store = EtcdStore::connect(cluster.config(prefix))
            .await
            .expect("connect to etcd");
        Arc::new(Self {
            store,
            cut: AtomicBool::new(false),
        })
    }

    async fn reachable(&self) {
        if self.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl KvStore for Cuttable {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.reachable().await;
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.reachable().await;
        self.store.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.reachable().await;
        self.store.put(key, value).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        self.reachable().await;
        self.store.compare_and_swap(key, expected, value).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        self.reachable().await;
        self.store.delete(key, expected).await
    }
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        self.reachable().await;
        self.store.txn(compares, success, failure).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.reachable().await;
        self.store.revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        self.reachable().await;
        self.store.watch(prefix, from).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.reachable().await;
        self.store.compact(revision).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        KvStore::close(&self.store).await
    }
}

#[async_trait]
impl LeaseStore for Cuttable {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.reachable().await;
        self.store.grant_lease(ttl).await
    }
    async fn keep_alive_once(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.reachable().await;
        self.store.keep_alive_once(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.reachable().await;
        self.store.revoke_lease(lease).await
    }
    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        only_if_absent: bool,
    ) -> Result<Result<Revision, KeyValue>, StoreError> {
        self.reachable().await;
        self.store
            .put_leased(key, value, lease, only_if_absent)
            .await
    }
}

fn election(store: &Arc<Cuttable>) -> EtcdElection {
    EtcdElection::new(store.clone(), EtcdElectionConfig { ttl: TTL }).expect("election")
}

fn candidate(id: &str) -> Candidate {
    Candidate::new(id, format!("https://{id}.example:7443")).expect("candidate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_stops_before_another_of_three_takes_over_within_the_ttl() {
    let cluster = EtcdCluster::start(3).await;
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Cuttable::connect(&cluster, "/election").await);
    }
    let names = ["r0", "r1", "r2"];
    let mut registrations = Vec::new();
    for (store, name) in stores.iter().zip(names) {
        let registration = election(store).register(&candidate(name)).await;
        registrations.push(registration.expect("register"));
    }

    // All three campaign at once; exactly one wins.
    let (won_tx, mut won_rx) = tokio::sync::mpsc::channel(3);
    let mut campaigns = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let election = election(store);
        let won = won_tx.clone();
        campaigns.push(tokio::spawn(async move {
            let leadership = election.campaign(&candidate(names[i])).await;
            let _ = won.send((i, leadership, Instant::now())).await;
        }));
    }
    let (first, leadership, _) = tokio::time::timeout(Duration::from_secs(10), won_rx.recv())
        .await
        .expect("a leader within 10 s")
        .expect("a campaign result");
    let first_leader = leadership.expect("campaign");
    tokio::time::sleep(TTL).await;
    assert!(won_rx.try_recv().is_err(), "exactly one leader at a time");
    let record = election(&stores[0])
        .leader()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(
        (record.id.as_str(), record.term),
        (names[first], first_leader.term)
    );
    let replicas = election(&stores[0]).replicas().await.expect("replicas");
    let ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, names);

    // Cut the leader off from etcd.
    let cut_at = Instant::now();
    stores[first].cut.store(true, Ordering::SeqCst);
    let signal = first_leader.signal();
    let lost = tokio::spawn(async move {
        let reason = signal.lost().await;
        (reason, Instant::now())
    });
    let (second, leadership, won_at) = tokio::time::timeout(TTL * 3, won_rx.recv())
        .await
        .expect("a new leader")
        .expect("a campaign result");
    let second_leader = leadership.expect("campaign");
    let (reason, lost_at) = lost.await.expect("lost task");
    assert_ne!(second, first);
    assert_eq!(reason.to_string(), "lease renewal overdue");
    assert!(!first_leader.is_held());
    assert!(
        lost_at < won_at,
        "the old leader stopped ({:?} after the cut) before the new one won ({:?})",
        lost_at - cut_at,
        won_at - cut_at
    );
    assert!(
        won_at - cut_at <= TTL + Duration::from_secs(2),
        "took over {:?} after the cut",
        won_at - cut_at
    );
    assert!(second_leader.term > first_leader.term);
    eprintln!(
        "old leader stopped after {:?}, new leader after {:?}",
        lost_at - cut_at,
        won_at - cut_at
    );

    // The second resigns: the third takes over at once.
    let resigned_at = Instant::now();
    second_leader.resign().await.expect("resign");
    let (third, leadership, won_at) = tokio::time::timeout(TTL, won_rx.recv())
        .await
        .expect("the third leads at once after a resignation")
        .expect("a campaign result");
    assert!(![first, second].contains(&third));
    assert!(leadership.expect("campaign").is_held());
    eprintln!("handover after resign: {:?}", won_at - resigned_at);
    for campaign in campaigns {
        campaign.abort();
    }
    drop(first_leader);

    // The cut-off replica's record expires with its lease; the others stay listed.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let replicas = election(&stores[second])
        .replicas()
        .await
        .expect("replicas");
    let ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
    let alive: Vec<&str> = (0..3).filter(|i| *i != first).map(|i| names[i]).collect();
    assert_eq!(ids, alive, "the cut-off replica's record expired");
    for registration in registrations {
        drop(registration);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_only_etcd_member_dies_stops_before_one_on_the_others_takes_over() {
    let cluster = EtcdCluster::start(3).await;
    // A reaches etcd through member 0 only; B through members 1 and 2.
    let mut a_config = cluster.config("/partition");
    a_config.endpoints = vec![cluster.endpoint(0)];
    let mut b_config = cluster.config("/partition");
    b_config.endpoints = vec![cluster.endpoint(1), cluster.endpoint(2)];
    let a_store = Arc::new(EtcdStore::connect(a_config).await.expect("a connects"));
    let b_store = Arc::new(EtcdStore::connect(b_config).await.expect("b connects"));
    let config = EtcdElectionConfig { ttl: TTL };
    let a = EtcdElection::new(a_store.clone(), config).expect("election");
    let b = EtcdElection::new(b_store.clone(), config).expect("election");

    let a_leader = a.campaign(&candidate("a")).await.expect("a campaigns");
    let b_campaign = tokio::spawn(async move {
        let won = b.campaign(&candidate("b")).await;
        (won, Instant::now())
    });
    tokio::time::sleep(TTL).await;
    assert!(!b_campaign.is_finished(), "b waits while a renews");

    // A's side of the network goes: its member dies, the other two keep the quorum.
    let cut_at = Instant::now();
    cluster.kill(0);
    let reason = a_leader.lost().await;
    let lost_at = Instant::now();
    let (won, won_at) = tokio::time::timeout(TTL * 4, b_campaign)
        .await
        .expect("b leads")
        .expect("b task");
    let b_leader = won.unwrap_or_else(|err| panic!("b campaigns: {err:?}"));
    eprintln!(
        "a stopped ({reason}) after {:?}, b led after {:?}",
        lost_at - cut_at,
        won_at - cut_at
    );
    assert!(lost_at < won_at, "a stopped before b started");
    assert!(
        lost_at - cut_at <= TTL,
        "a stopped {:?} after its member died",
        lost_at - cut_at
    );
    // When member 0 was etcd's raft leader, the survivors first elect a new one (about 1 s
    // here) and the new raft leader extends every lease to TTL + its election timeout (1 s):
    // then b leads about TTL + 2.5 s after the kill; otherwise within the TTL.
    assert!(
        won_at - cut_at <= TTL + Duration::from_secs(4),
        "b led {:?} after the kill",
        won_at - cut_at
    );

    // A's writes are refused, B's apply.
    let (key, term) = a_leader.fence();
    let stale = FencedStore::new(b_store.clone(), key, term);
    assert!(matches!(
        stale.put("/data/x", b"a".to_vec()).await,
        Err(StoreError::Fenced { .. })
    ));
    let (key, term) = b_leader.fence();
    let current = FencedStore::new(b_store.clone(), key, term);
    current
        .put("/data/x", b"b".to_vec())
        .await
        .expect("b writes");
}

/// One controller write; keys are indexes into a handful of keys.
#[derive(Debug, Clone)]
enum Write {
    Put(u8),
    /// Compare-and-swap on the key's current revision (read first), or on a stale one.
    Cas {
        key: u8,
        stale: bool,
    },
    Delete(u8),
    /// A transaction writing two keys if the first exists, else the third.
    Txn(u8, u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    A,
    B,
}

#[derive(Debug, Clone)]
struct Case {
    /// A's writes while it leads.
    before: Vec<Write>,
    /// How A's term ends: resigned (revoked at once) or its renewals stopped (the lease
    /// expires after the TTL, and A's writes race B's campaign meanwhile).
    expire: bool,
    /// A's writes while B campaigns (A keeps trying, as a stale controller would).
    racing: Vec<Write>,
    /// Writes of both once B leads.
    after: Vec<(Who, Write)>,
}

const KEYS: u8 = 4;

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (0..KEYS).prop_map(Write::Put),
        (0..KEYS, any::<bool>()).prop_map(|(key, stale)| Write::Cas { key, stale }),
        (0..KEYS).prop_map(Write::Delete),
        (0..KEYS, 0..KEYS, 0..KEYS).prop_map(|(a, b, c)| Write::Txn(a, b, c)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(write(), 0..6),
        prop::bool::weighted(0.25),
        prop::collection::vec(write(), 1..6),
        prop::collection::vec((prop_oneof![Just(Who::A), Just(Who::B)], write()), 1..16),
    )
        .prop_map(|(before, expire, racing, after)| Case {
            before,
            expire,
            racing,
            after,
        })
}

fn key(i: u8) -> String {
    format!("/data/{i}")
}

/// Applies `write` through `store`: the revision it wrote at, `None` if it wrote nothing
/// (a conflict, a failed compare with an empty failure branch, deleting an absent key).
async fn apply(
    store: &FencedStore,
    write: &Write,
    tag: &[u8],
) -> Result<Option<Revision>, StoreError> {
    let conflict_is_none = |result: Result<Revision, StoreError>| match result {
        Ok(revision) => Ok(Some(revision)),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(err) => Err(err),
    };
    match write {
        Write::Put(k) => store.put(&key(*k), tag.to_vec()).await.map(Some),
        Write::Cas { key: k, stale } => {
            let current = store.get(&key(*k)).await?.map_or(0, |kv| kv.mod_revision);
            let expected = if *stale { current + 1000 } else { current };
            conflict_is_none(
                store
                    .compare_and_swap(&key(*k), expected, tag.to_vec())
                    .await,
            )
        }
        Write::Delete(k) => store.delete(&key(*k), None).await,
        Write::Txn(a, b, c) => {
            let mut success = vec![Op::Put {
                key: key(*a),
                value: tag.to_vec(),
            }];
            if b != a {
                success.push(Op::Put {
                    key: key(*b),
                    value: tag.to_vec(),
                });
            }
            let failure = vec![Op::Put {
                key: key(*c),
                value: tag.to_vec(),
            }];
            let compares = vec![Compare::Exists { key: key(*a) }];
            store
                .txn(compares, success, failure)
                .await
                .map(|r| Some(r.revision))
        }
    }
}

/// Every distinct revision of a change under `/data/` up to `until`, replayed from
/// revision 1.
async fn history(store: &EtcdStore, until: Revision) -> BTreeSet<Revision> {
    if until == 0 {
        return BTreeSet::new();
    }
    let mut watch = store.watch("/data/", 1).await.expect("watch");
    let mut revisions = BTreeSet::new();
    while revisions.last().is_none_or(|last| *last < until) {
        let next = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
        match next {
            Ok(Some(Ok(event))) => {
                revisions.insert(event.revision());
            }
            Ok(other) => panic!("watch ended: {other:?}"),
            Err(_elapsed) => panic!("no change at revision {until} under /data/"),
        }
    }
    revisions
}

async fn run_case(cluster: &EtcdCluster, number: usize, case: Case) -> Result<(), TestCaseError> {
    let prefix = format!("/fencing/case{number}");
    let a_store = Cuttable::connect(cluster, &prefix).await;
    let b_store = Cuttable::connect(cluster, &prefix).await;
    let a_leader = election(&a_store)
        .campaign(&candidate("a"))
        .await
        .expect("a campaigns");
    let (fence_key, term_a) = a_leader.fence();
    let a = FencedStore::new(a_store.clone(), fence_key, term_a);

    let mut a_applied = Vec::new();
    for write in &case.before {
        match apply(&a, write, b"A").await {
            Ok(revision) => a_applied.extend(revision),
            Err(err) => return Err(TestCaseError::fail(format!("A's write failed: {err}"))),
        }
    }

    // A's term ends; B campaigns while A keeps writing.
    if case.expire {
        drop(a_leader); // Renewals stop; the lease expires after the TTL.
    } else {
        a_leader.resign().await.expect("resign");
    }
    let b_election = election(&b_store);
    let campaign = tokio::spawn(async move { b_election.campaign(&candidate("b")).await });
    let mut racing = case.racing.iter().cycle();
    let (mut a_racing, mut a_fenced_racing) = (0, 0);
    while !campaign.is_finished() {
        let Some(write) = racing.next() else { break };
        a_racing += 1;
        match apply(&a, write, b"A").await {
            Ok(revision) => a_applied.extend(revision),
            Err(StoreError::Fenced { .. }) => a_fenced_racing += 1,
            Err(err) => return Err(TestCaseError::fail(format!("A's racing write: {err}"))),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_leader = campaign.await.expect("campaign task").expect("b campaigns");
    let (fence_key, term_b) = b_leader.fence();
    prop_assert!(term_b > term_a);
    let b = FencedStore::new(b_store.clone(), fence_key, term_b);

    let mut b_applied = Vec::new();
    for (who, write) in &case.after {
        match who {
            Who::A => match apply(&a, write, b"A").await {
                Err(StoreError::Fenced { term, .. }) => prop_assert_eq!(term, term_a),
                other => {
                    return Err(TestCaseError::fail(format!(
                        "deposed A's write {write:?} was not fenced: {other:?}"
                    )))
                }
            },
            Who::B => match apply(&b, write, b"B").await {
                Ok(revision) => b_applied.extend(revision),
                Err(err) => return Err(TestCaseError::fail(format!("B's write failed: {err}"))),
            },
        }
    }

    if !case.expire {
        // The key was deleted when A resigned: every later write of A was refused.
        prop_assert_eq!(a_fenced_racing, a_racing);
    }

    // The store's history: the changes after B's term began are exactly B's writes; every A
    // write that applied came before B's term, and is in the history too.
    let until = a_applied
        .iter()
        .chain(&b_applied)
        .copied()
        .max()
        .unwrap_or(0);
    let history = history(&b_store.store, until).await;
    let after_b: BTreeSet<Revision> = history.range(term_b..).copied().collect();
    let b_set: BTreeSet<Revision> = b_applied.iter().copied().collect();
    prop_assert_eq!(
        &after_b,
        &b_set,
        "changes after B's term {} are B's writes",
        term_b
    );
    prop_assert!(
        a_applied.iter().all(|r| *r < term_b && history.contains(r)),
        "an A write applied at or after B's term {}: {:?}",
        term_b,
        a_applied
    );
    b_leader.resign().await.expect("resign");
    KvStore::close(&*a_store).await.expect("close a");
    KvStore::close(&*b_store).await.expect("close b");
    Ok(())
}

#[test]
fn no_write_of_a_deposed_leader_is_applied_after_the_new_term_begins() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cluster = runtime.block_on(EtcdCluster::start(1));
    let config = Config {
        cases: 16,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fencing.txt",
        ))),
        ..Config::default()
    };
    let numbers = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| {
        let number = numbers.fetch_add(1, Ordering::SeqCst);
        runtime.block_on(run_case(&cluster, number, case))
    });
    drop(cluster);
    if let Err(err) = result {
        panic!("{err}");
    }
}
