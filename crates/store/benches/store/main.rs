//! Store operations on each backend, printed as a Markdown table (docs/benchmarks.md,
//! "Store operations (issue 16)").
//!
//! `cargo bench -p firefleet-store --bench store [-- sqlite etcd etcd3 failover]` (all when
//! none is named). Each measurement is short (a time budget and an iteration cap) and
//! sequential: one client, one request at a time, so the numbers are latencies. Compare
//! ratios between backends within one run, not absolute numbers across machines.

mod etcd;
mod measure;

use std::sync::Arc;
use std::time::Duration;

use firefleet_store::{KvStore, SqliteStore};

use measure::Table;

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let runs = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot build the tokio runtime: {err}");
            std::process::exit(1);
        }
    };
    let mut table = Table::default();
    runtime.block_on(async {
        if runs("sqlite") {
            match sqlite().await {
                Ok((store, _dir)) => measure::all("SQLite (temp file)", store, &mut table).await,
                Err(err) => eprintln!("sqlite: {err}"),
            }
        }
        if runs("etcd") {
            etcd::single(&mut table).await;
        }
        if runs("etcd3") {
            etcd::three(&mut table).await;
        }
    });
    print!("{}", table.markdown());
    if runs("failover") {
        runtime.block_on(etcd::failover());
    }
}

async fn sqlite() -> Result<(Arc<dyn KvStore>, tempfile::TempDir), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("bench.db"))?;
    Ok((Arc::new(store), dir))
}

/// A short pause between phases, so that one phase's background work does not bleed into
/// the next one's numbers.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
