//! The election's state machine against a fake lease server: a SQLite store plus an
//! in-memory lease table that expires leases (deleting their keys) on a timer, and clients
//! that can be cut off from it (their calls then hang, as over a partition).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use tokio::time::Instant;

use super::*;
use crate::{Compare, Op, SqliteStore, TxnResponse, Watch};

/// A lease: its expiry, its TTL, the keys bound to it.
type Lease = (Instant, Duration, Vec<String>);

struct LeaseTable {
    next: AtomicI64,
    leases: Mutex<HashMap<LeaseId, Lease>>,
}

/// The "server": the store and its leases.
struct Server {
    store: Arc<SqliteStore>,
    leases: LeaseTable,
    _dir: TempDir,
}

impl Server {
    fn start() -> Arc<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let server = Arc::new(Self {
            store,
            leases: LeaseTable {
                next: AtomicI64::new(1),
                leases: Mutex::new(HashMap::new()),
            },
            _dir: dir,
        });
        let reaper = Arc::downgrade(&server);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(server) = reaper.upgrade() else {
                    return;
                };
                server.expire().await;
            }
        });
        server
    }

    async fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<Vec<String>> = {
            let mut leases = self.leases.leases.lock().expect("lease table");
            let ids: Vec<LeaseId> = leases
                .iter()
                .filter(|(_, (expiry, _, _))| *expiry <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| leases.remove(id).map(|(_, _, keys)| keys))
                .collect()
        };
        for key in expired.into_iter().flatten() {
            let _ = self.store.delete(&key, None).await;
        }
    }

    fn client(self: &Arc<Self>) -> Arc<Client> {
        Arc::new(Client {
            server: self.clone(),
            cut: AtomicBool::new(false),
            unavailable: AtomicUsize::new(0),
        })
    }
}

/// One replica's connection; `cut` makes every call hang; while `unavailable` is above 0,
/// lease calls fail with `Unavailable` (counting it down), as without a quorum.
struct Client {
    server: Arc<Server>,
    cut: AtomicBool,
    unavailable: AtomicUsize,
}

impl Client {
    async fn reachable(&self) {
        if self.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn quorum(&self) -> Result<(), StoreError> {
        let left = self.unavailable.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.unavailable.store(left - 1, Ordering::SeqCst);
        Err(StoreError::Unavailable {
            reason: "no quorum (fake)".into(),
        })
    }
}

#[async_trait]
impl KvStore for Client {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.reachable().await;
        self.server.store.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.reachable().await;
        self.server.store.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.reachable().await;
        self.server.store.put(key, value).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        self.reachable().await;
        self.server
            .store
            .compare_and_swap(key, expected, value)
            .await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        self.reachable().await;
        self.server.store.delete(key, expected).await
    }
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        self.reachable().await;
        self.server.store.txn(compares, success, failure).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.reachable().await;
        self.server.store.revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        self.reachable().await;
        self.server.store.watch(prefix, from).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.server.store.compact(revision).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for Client {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.reachable().await;
        self.quorum()?;
        let id = self.server.leases.next.fetch_add(1, Ordering::SeqCst);
        let mut leases = self.server.leases.leases.lock().expect("lease table");
        leases.insert(id, (Instant::now() + ttl, ttl, Vec::new()));
        Ok(id)
    }
    async fn keep_alive_once(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.reachable().await;
        let mut leases = self.server.leases.leases.lock().expect("lease table");
        Ok(match leases.get_mut(&lease) {
            Some((expiry, ttl, _)) => {
                *expiry = Instant::now() + *ttl;
                *ttl
            }
            None => Duration::ZERO,
        })
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.reachable().await;
        let keys = {
            let mut leases = self.server.leases.leases.lock().expect("lease table");
            leases.remove(&lease).map(|(_, _, keys)| keys)
        };
        for key in keys.unwrap_or_default() {
            self.server.store.delete(&key, None).await?;
        }
        Ok(())
    }
    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        only_if_absent: bool,
    ) -> Result<Result<Revision, KeyValue>, StoreError> {
        self.reachable().await;
        if !self
            .server
            .leases
            .leases
            .lock()
            .expect("lease table")
            .contains_key(&lease)
        {
            return Err(StoreError::backend("lease not found"));
        }
        let written = if only_if_absent {
            self.server.store.compare_and_swap(key, 0, value).await
        } else {
            self.server.store.put(key, value).await
        };
        match written {
            Ok(revision) => {
                if let Some((_, _, keys)) = self
                    .server
                    .leases
                    .leases
                    .lock()
                    .expect("lease table")
                    .get_mut(&lease)
                {
                    keys.push(key.to_owned());
                }
                Ok(Ok(revision))
            }
            Err(StoreError::Conflict { .. }) => match self.server.store.get(key).await? {
                Some(kv) => Ok(Err(kv)),
                None => Err(StoreError::backend("raced a delete")),
            },
            Err(err) => Err(err),
        }
    }
}

const TTL: Duration = Duration::from_secs(1);

fn election(client: &Arc<Client>) -> EtcdElection {
    EtcdElection::new(client.clone(), EtcdElectionConfig { ttl: TTL }).expect("election")
}

fn candidate(id: &str) -> Candidate {
    Candidate::new(id, format!("https://{id}:7443")).expect("candidate")
}

#[tokio::test]
async fn one_candidate_wins_and_keeps_renewing_past_several_ttls() {
    let server = Server::start();
    let a = server.client();
    let leadership = election(&a)
        .campaign(&candidate("a"))
        .await
        .expect("campaign");
    let leader = election(&a)
        .leader()
        .await
        .expect("leader")
        .expect("a leader");
    assert_eq!((leader.id.as_str(), leader.term), ("a", leadership.term));
    assert_eq!(leadership.fence(), (LEADER_KEY.to_owned(), leadership.term));

    tokio::select! {
        reason = leadership.lost() => panic!("lost while renewing: {reason}"),
        () = tokio::time::sleep(TTL * 3) => {}
    }
    assert!(leadership.is_held());
    let still = election(&a)
        .leader()
        .await
        .expect("leader")
        .expect("a leader");
    assert_eq!(
        still.term, leadership.term,
        "the key was kept, not rewritten"
    );
}

#[tokio::test]
async fn a_cut_off_leader_stops_before_its_lease_expires_and_another_takes_over() {
    let server = Server::start();
    let (a, b) = (server.client(), server.client());
    let leader_a = election(&a).campaign(&candidate("a")).await.expect("a");
    let term_a = leader_a.term;
    let signal_a = leader_a.signal();

    let b_election = election(&b);
    let b_campaign = tokio::spawn(async move {
        let won = b_election.campaign(&candidate("b")).await;
        (won, Instant::now())
    });
    tokio::time::sleep(TTL / 2).await;
    assert!(!b_campaign.is_finished(), "b must wait while a renews");

    let cut_at = Instant::now();
    a.cut.store(true, Ordering::SeqCst);
    let reason = signal_a.lost().await;
    let lost_at = Instant::now();
    assert_eq!(reason, LossReason::RenewalOverdue);
    assert!(!leader_a.is_held());
    assert!(
        lost_at - cut_at <= TTL * 2 / 3 + Duration::from_millis(300),
        "a stopped {:?} after the cut",
        lost_at - cut_at
    );

    let (won, won_at) = b_campaign.await.expect("b task");
    let leader_b = won.expect("b campaign");
    assert!(leader_b.term > term_a, "a new term has a higher number");
    assert!(lost_at < won_at, "a stopped before b started");
    assert!(won_at - cut_at <= TTL + Duration::from_secs(1));
    assert!(leader_b.is_held());
}

#[tokio::test]
async fn a_campaign_keeps_trying_while_the_store_is_unavailable() {
    let server = Server::start();
    let a = server.client();
    a.unavailable.store(3, Ordering::SeqCst);
    let leadership = election(&a).campaign(&candidate("a")).await.expect("won");
    assert_eq!(
        a.unavailable.load(Ordering::SeqCst),
        0,
        "tried through the outage"
    );
    assert!(leadership.is_held());

    // Other errors end the campaign.
    let err = election(&a)
        .campaign(&Candidate {
            id: String::new(),
            address: "u".into(),
        })
        .await
        .expect_err("invalid candidate");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("replica id is empty"));
}

#[tokio::test]
async fn resigning_hands_over_at_once() {
    let server = Server::start();
    let (a, b) = (server.client(), server.client());
    let leader_a = election(&a).campaign(&candidate("a")).await.expect("a");
    let signal = leader_a.signal();
    let b_election = election(&b);
    let b_campaign = tokio::spawn(async move { b_election.campaign(&candidate("b")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let resigned_at = Instant::now();
    leader_a.resign().await.expect("resign");
    assert_eq!(signal.lost().await, LossReason::Resigned);
    let leader_b = b_campaign.await.expect("task").expect("b");
    assert!(
        resigned_at.elapsed() < TTL / 2,
        "took over in {:?}, not after the TTL",
        resigned_at.elapsed()
    );
    let record = election(&b).leader().await.expect("leader").expect("b");
    assert_eq!((record.id.as_str(), record.term), ("b", leader_b.term));
}

#[tokio::test]
async fn a_leader_whose_key_is_deleted_loses_at_once() {
    let server = Server::start();
    let a = server.client();
    let leader_a = election(&a).campaign(&candidate("a")).await.expect("a");
    let started = Instant::now();
    server.store.delete(LEADER_KEY, None).await.expect("delete");
    assert_eq!(leader_a.lost().await, LossReason::KeyChanged);
    assert!(
        started.elapsed() < TTL / 3,
        "noticed by the watch, not the renewal"
    );
}

#[tokio::test]
async fn dropping_a_leadership_is_a_crash_the_lease_expires() {
    let server = Server::start();
    let (a, b) = (server.client(), server.client());
    let leader_a = election(&a).campaign(&candidate("a")).await.expect("a");
    let signal = leader_a.signal();
    let dropped_at = Instant::now();
    drop(leader_a);
    assert_eq!(signal.lost().await, LossReason::Abandoned);
    assert!(!signal.is_held());
    election(&b).campaign(&candidate("b")).await.expect("b");
    let waited = dropped_at.elapsed();
    assert!(
        waited >= TTL * 2 / 3,
        "b won after {waited:?}, before a's lease ran out"
    );
}

#[tokio::test]
async fn replicas_are_listed_while_registered_and_vanish_with_their_lease() {
    let server = Server::start();
    let (a, b) = (server.client(), server.client());
    let reg_a = election(&a).register(&candidate("a")).await.expect("a");
    let reg_b = election(&b).register(&candidate("b")).await.expect("b");
    assert_eq!(reg_a.key(), "/cluster/replicas/a");
    tokio::time::sleep(TTL * 2).await;
    let ids = |replicas: Vec<ReplicaRecord>| replicas.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(election(&a).replicas().await.expect("list")),
        ["a", "b"]
    );

    // b dies: its record goes with its lease; a deregisters: its record goes at once.
    drop(reg_b);
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    assert_eq!(ids(election(&a).replicas().await.expect("list")), ["a"]);
    reg_a.deregister().await.expect("deregister");
    assert!(election(&a).replicas().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_registration_comes_back_after_its_lease_expired() {
    let server = Server::start();
    let a = server.client();
    let _reg = election(&a).register(&candidate("a")).await.expect("a");
    a.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    assert!(server
        .store
        .get("/cluster/replicas/a")
        .await
        .expect("get")
        .is_none());
    a.cut.store(false, Ordering::SeqCst);
    tokio::time::sleep(TTL).await;
    assert!(server
        .store
        .get("/cluster/replicas/a")
        .await
        .expect("get")
        .is_some());
}

#[tokio::test]
async fn local_election_leads_at_once_for_good_and_fences_its_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
    store
        .put("/cluster/replicas/old", b"{}".to_vec())
        .await
        .expect("stale record of an earlier process");
    let election = LocalElection::new(store.clone());
    let registration = election
        .register(&candidate("solo"))
        .await
        .expect("register");
    let leadership = election
        .campaign(&candidate("solo"))
        .await
        .expect("campaign");
    let record = election.leader().await.expect("leader").expect("solo");
    assert_eq!((record.id.as_str(), record.term), ("solo", leadership.term));
    let replicas = election.replicas().await.expect("replicas");
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0].address, "https://solo:7443");

    tokio::select! {
        reason = leadership.lost() => panic!("a local leadership was lost: {reason}"),
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    assert!(leadership.is_held());
    let (key, term) = leadership.fence();
    let fenced = crate::FencedStore::new(store.clone(), key, term);
    fenced
        .put("/vms/x", b"1".to_vec())
        .await
        .expect("fenced write");

    let signal = leadership.signal();
    leadership.resign().await.expect("resign");
    assert_eq!(signal.lost().await, LossReason::Resigned);
    assert!(election.leader().await.expect("leader").is_none());
    assert!(matches!(
        fenced.put("/vms/x", b"2".to_vec()).await,
        Err(StoreError::Fenced { .. })
    ));
    registration.deregister().await.expect("deregister");
    assert!(election.replicas().await.expect("replicas").is_empty());
}

#[test]
fn bad_candidates_are_refused_with_what_is_wrong() {
    assert_eq!(Candidate::new("", "u"), Err(InvalidCandidate::EmptyId));
    assert!(matches!(
        Candidate::new("a/b", "u"),
        Err(InvalidCandidate::IdCharacters { .. })
    ));
    assert!(matches!(
        Candidate::new("x".repeat(MAX_REPLICA_ID_LEN + 1), "u"),
        Err(InvalidCandidate::IdTooLong { .. })
    ));
    let err = Candidate::new("a/b", "u").expect_err("refused").to_string();
    assert!(err.contains("\"a/b\""), "{err}");
}

#[test]
fn a_lost_term_stays_lost() {
    let now = Instant::now();
    let held = LeaderState::Held {
        valid_until: Some(now + TTL),
    };
    let lost = held.next(LeaderState::Lost(LossReason::KeyChanged));
    assert_eq!(lost, LeaderState::Lost(LossReason::KeyChanged));
    assert_eq!(lost.next(held), lost, "never back to held");
    assert_eq!(
        lost.next(LeaderState::Lost(LossReason::Resigned)),
        lost,
        "the first reason stays"
    );
    assert!(held.is_held_at(now));
    assert!(!held.is_held_at(now + TTL), "not held at the deadline");
    assert!(LeaderState::Held { valid_until: None }.is_held_at(now + TTL * 1000));
}

#[tokio::test]
async fn a_too_short_ttl_is_refused() {
    let server = Server::start();
    let err = EtcdElection::new(
        server.client(),
        EtcdElectionConfig {
            ttl: Duration::from_millis(300),
        },
    )
    .expect_err("refused");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(
        source.as_deref(),
        Some("election TTL 300ms is under the minimum of 1s")
    );
}

#[tokio::test]
async fn malformed_records_are_reported_with_their_key() {
    let server = Server::start();
    let a = server.client();
    server
        .store
        .put(LEADER_KEY, b"not json".to_vec())
        .await
        .expect("put");
    let err = election(&a).leader().await.expect_err("malformed");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(
        source.as_deref(),
        Some("value at \"/cluster/leader\" is not a replica record")
    );
}
