//! The etcd measurements: the same operations on a single member and on a three-member
//! cluster (started here, on free ports), and leader failover time.

use std::sync::Arc;
use std::time::Duration;

use firefleet_store::election::{EtcdElection, EtcdElectionConfig};
use firefleet_store::etcd::testing::EtcdCluster;
use firefleet_store::etcd::EtcdStore;
use firefleet_store::{Candidate, Election, Leadership};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::measure::{self, Table};

async fn connect(cluster: &EtcdCluster, prefix: &str) -> Option<EtcdStore> {
    match EtcdStore::connect(cluster.config(prefix)).await {
        Ok(store) => Some(store),
        Err(err) => {
            eprintln!("cannot connect to etcd: {}", chain(&err));
            None
        }
    }
}

/// A single member.
pub async fn single(table: &mut Table) {
    let cluster = EtcdCluster::start(1).await;
    if let Some(store) = connect(&cluster, "/bench").await {
        measure::all("etcd, 1 member", Arc::new(store), table).await;
    }
}

/// Three members on this host (every write is agreed by two).
pub async fn three(table: &mut Table) {
    let cluster = EtcdCluster::start(3).await;
    if let Some(store) = connect(&cluster, "/bench").await {
        measure::all("etcd, 3 members", Arc::new(store), table).await;
    }
}

const REPLICAS: usize = 3;
const KILLS: usize = 10;

/// Leader failover on a three-member cluster with three replicas at the default TTL (5 s):
/// the leader "crashes" (its renewals stop and its connection is dropped, the lease is not
/// revoked, as after SIGKILL) at spread-out points of its renewal cycle; the time until
/// another replica's campaign returns. Then the same with a clean resignation.
pub async fn failover() {
    let cluster = EtcdCluster::start(3).await;
    let config = EtcdElectionConfig::default();
    let (won_tx, mut won_rx) = mpsc::channel::<(usize, Leadership, Instant)>(REPLICAS);
    let mut campaigns = Vec::new();
    let mut campaign = |i: usize, store: EtcdStore| {
        let won = won_tx.clone();
        campaigns.push(tokio::spawn(async move {
            let election = match EtcdElection::new(Arc::new(store), config) {
                Ok(election) => election,
                Err(err) => return eprintln!("election: {err}"),
            };
            let me = Candidate {
                id: format!("r{i}"),
                address: format!("https://r{i}.example:7443"),
            };
            match election.campaign(&me).await {
                Ok(leadership) => {
                    let _ = won.send((i, leadership, Instant::now())).await;
                }
                Err(err) => eprintln!("r{i} campaign failed: {}", chain(&err)),
            }
        }));
    };
    for i in 0..REPLICAS {
        let Some(store) = connect(&cluster, "/failover").await else {
            return;
        };
        campaign(i, store);
    }
    let Some((mut leader, mut leadership, _)) = won_rx.recv().await else {
        return eprintln!("no leader elected");
    };
    let mut crash = Vec::new();
    let mut resign = Vec::new();
    for round in 0..2 * KILLS {
        // Spread the kill over the renewal cycle (TTL/3).
        let offset = config.renew_every().mul_f64((round as f64 * 0.37).fract());
        tokio::time::sleep(Duration::from_millis(500) + offset).await;
        let ended = Instant::now();
        if round < KILLS {
            drop(leadership);
        } else if let Err(err) = leadership.resign().await {
            eprintln!("resign failed: {err}");
        }
        let Some(store) = connect(&cluster, "/failover").await else {
            return;
        };
        campaign(leader, store); // The old leader comes back as a candidate.
        let Ok(Some((next, next_leadership, won_at))) =
            tokio::time::timeout(config.ttl * 3, won_rx.recv()).await
        else {
            return eprintln!("no new leader within 3 TTLs");
        };
        let took = won_at - ended;
        eprintln!("round {round}: r{leader} -> r{next} in {took:?}");
        if round < KILLS {
            &mut crash
        } else {
            &mut resign
        }
        .push(took);
        leader = next;
        leadership = next_leadership;
    }
    for task in campaigns {
        task.abort(); // Before the cluster goes: the losers still wait.
    }
    println!(
        "\n| leader failover (3 etcd members, 3 replicas, TTL {:?}) | n | min s | p50 s | max s | mean s |\n|---|---:|---:|---:|---:|---:|",
        config.ttl
    );
    for (what, samples) in [
        ("crash (renewals stop, lease expires)", &mut crash),
        ("clean shutdown (resign)", &mut resign),
    ] {
        samples.sort();
        if samples.is_empty() {
            continue;
        }
        let mean: Duration = samples.iter().sum::<Duration>() / samples.len() as u32;
        println!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            samples.len(),
            samples[0].as_secs_f64(),
            samples[samples.len() / 2].as_secs_f64(),
            samples[samples.len() - 1].as_secs_f64(),
            mean.as_secs_f64()
        );
    }
}

/// An error and its causes, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
