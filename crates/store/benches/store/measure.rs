//! The measurements, backend-independent: each runs against an `Arc<dyn KvStore>`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firefleet_store::{Compare, FencedStore, KvStore, Op, StoreError};
use tokio::sync::mpsc;

/// Per measurement: stop after this long or after `MAX_ITERATIONS`, whichever comes first.
const BUDGET: Duration = Duration::from_secs(2);
const MAX_ITERATIONS: usize = 2000;
const LIST_KEYS: usize = 10_000;
const WATCHERS: usize = 100;

/// One line of the table.
pub struct Row {
    pub backend: String,
    pub op: String,
    pub samples: Vec<Duration>,
}

impl Row {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn mean(&self) -> Duration {
        let total: Duration = self.samples.iter().sum();
        total / u32::try_from(self.samples.len().max(1)).unwrap_or(u32::MAX)
    }
}

/// The rows measured so far.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

impl Table {
    /// A Markdown table, one row per backend and operation.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| backend | operation | n | p50 ms | p99 ms | mean ms | ops/s (1 client) |\n\
             |---|---|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let mean = row.mean();
            let rate = if mean.is_zero() {
                0.0
            } else {
                1.0 / mean.as_secs_f64()
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
                row.backend,
                row.op,
                row.samples.len(),
                ms(row.percentile(50.0)),
                ms(row.percentile(99.0)),
                ms(mean),
                rate
            ));
        }
        out
    }
}

/// Times `op(i)` for i = 0.. until the budget or `cap` iterations are spent.
async fn time<F, Fut>(cap: usize, mut op: F) -> Result<Vec<Duration>, StoreError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let started = Instant::now();
    let mut samples = Vec::with_capacity(cap);
    for i in 0..cap {
        if started.elapsed() > BUDGET && samples.len() >= 10 {
            break;
        }
        let t = Instant::now();
        op(i).await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// Every measurement against `store`, appended to `table` under `backend`.
pub async fn all(backend: &str, store: Arc<dyn KvStore>, table: &mut Table) {
    if let Err(err) = run(backend, store.clone(), table).await {
        eprintln!("{backend}: benchmark failed: {err}");
    }
    let _ = store.close().await;
}

async fn run(backend: &str, store: Arc<dyn KvStore>, table: &mut Table) -> Result<(), StoreError> {
    let mut push = |op: &str, samples: Vec<Duration>| {
        eprintln!("{backend}: {op}: {} samples", samples.len());
        table.rows.push(Row {
            backend: backend.to_owned(),
            op: op.to_owned(),
            samples,
        });
    };
    let s = &store;

    s.put("/bench/get", vec![7; 256]).await?;
    push(
        "get (256 B)",
        time(MAX_ITERATIONS, |_| async move {
            s.get("/bench/get").await.map(|_| ())
        })
        .await?,
    );
    crate::settle().await;

    push(
        "put (256 B)",
        time(MAX_ITERATIONS, |i| async move {
            s.put(&format!("/bench/put/{}", i % 100), vec![1; 256])
                .await
                .map(|_| ())
        })
        .await?,
    );
    crate::settle().await;

    // A leader's controller write: the same put, fenced on the leader key's revision.
    let term = s.put("/bench/leader", b"me".to_vec()).await?;
    let fenced = FencedStore::new(store.clone(), "/bench/leader", term);
    let f = &fenced;
    push(
        "fenced put (256 B)",
        time(MAX_ITERATIONS, |i| async move {
            f.put(&format!("/bench/put/{}", i % 100), vec![1; 256])
                .await
                .map(|_| ())
        })
        .await?,
    );
    crate::settle().await;

    let mut revision = s.put("/bench/cas", vec![0; 256]).await?;
    let mut samples = Vec::new();
    let started = Instant::now();
    for _ in 0..MAX_ITERATIONS {
        if started.elapsed() > BUDGET && samples.len() >= 10 {
            break;
        }
        let t = Instant::now();
        revision = s
            .compare_and_swap("/bench/cas", revision, vec![2; 256])
            .await?;
        samples.push(t.elapsed());
    }
    push("CAS (256 B)", samples);
    crate::settle().await;

    push(
        "txn (1 compare, 3 puts)",
        time(MAX_ITERATIONS, |i| async move {
            let ops = (0..3)
                .map(|k| Op::Put {
                    key: format!("/bench/txn/{k}"),
                    value: i.to_le_bytes().to_vec(),
                })
                .collect();
            let compares = vec![Compare::Exists {
                key: "/bench/get".into(),
            }];
            s.txn(compares, ops, Vec::new()).await.map(|_| ())
        })
        .await?,
    );
    crate::settle().await;

    // 10,000 keys, written 100 per transaction.
    for chunk in 0..LIST_KEYS / 100 {
        let ops = (0..100)
            .map(|k| Op::Put {
                key: format!("/bench/list/{:06}", chunk * 100 + k),
                value: vec![3; 128],
            })
            .collect();
        s.txn(Vec::new(), ops, Vec::new()).await?;
    }
    push(
        "list 10,000 keys (128 B)",
        time(50, |_| async move {
            let (kvs, _) = s.list("/bench/list/").await?;
            assert_eq!(kvs.len(), LIST_KEYS, "listed every key");
            Ok(())
        })
        .await?,
    );
    crate::settle().await;

    push("watch fan-out: put to 100 watchers", fan_out(s).await?);
    Ok(())
}

/// Time from a put until each of 100 watchers on its prefix has received it.
async fn fan_out(store: &Arc<dyn KvStore>) -> Result<Vec<Duration>, StoreError> {
    let from = store.revision().await? + 1;
    let (seen_tx, mut seen_rx) = mpsc::channel::<u64>(WATCHERS * 2);
    let mut tasks = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut watch = store.watch("/bench/fan/", from).await?;
        let seen = seen_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(event)) = watch.next().await {
                if seen.send(event.revision()).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(seen_tx);
    let mut samples = Vec::new();
    let started = Instant::now();
    for i in 0..200u32 {
        if started.elapsed() > BUDGET && samples.len() >= 10 {
            break;
        }
        let t = Instant::now();
        let revision = store.put("/bench/fan/k", i.to_le_bytes().to_vec()).await?;
        let mut received = 0;
        while received < WATCHERS {
            match seen_rx.recv().await {
                Some(r) if r == revision => received += 1,
                Some(_) => {}
                None => {
                    return Err(StoreError::Unavailable {
                        reason: "a watcher ended".into(),
                    })
                }
            }
        }
        samples.push(t.elapsed());
    }
    for task in tasks {
        task.abort();
    }
    Ok(samples)
}
