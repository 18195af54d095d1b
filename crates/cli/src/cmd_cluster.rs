//! A highly available control plane: the server's store and replica flags, `firefleet cluster
//! status` (the replicas and the leader) and `firefleet store copy` (moving a fleet's state
//! from SQLite to etcd, or between any two stores).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use firefleet_server::{ReplicaConfig, SecretsKey, StoreConfig};
use firefleet_store::{EtcdStore, EtcdTls, KvStore, Op, SqliteStore};

use crate::{args::Global, output::print};

/// Where the server keeps its state, and its place among the replicas.
#[derive(Debug, Clone, Args)]
pub struct HaArgs {
    /// The store: `sqlite:PATH` (one replica; default `sqlite:DATA_DIR/store.db`) or
    /// `etcd://HOST:PORT[,HOST:PORT…]` (any number of replicas).
    #[arg(long, env = "FIREFLEET_STORE")]
    pub store: Option<String>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// File with the 64-hex-digit key that seals the cluster CA and audit key in the store
    /// (required with etcd; the same file on every replica; `openssl rand -hex 32`).
    #[arg(long, env = "FIREFLEET_SECRETS_KEY_FILE")]
    pub secrets_key: Option<PathBuf>,
    /// This replica's id (default: host name and listen port).
    #[arg(long)]
    pub replica_id: Option<String>,
    /// The URL clients and agents reach this replica at (default from `--listen`).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Seconds of the leader's lease: a leader that cannot renew it stops acting, and another
    /// replica takes over, within about this long.
    #[arg(long, default_value_t = firefleet_server::DEFAULT_LEASE_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(2..=60))]
    pub lease_ttl_secs: u64,
}

/// Which fleet in etcd, and TLS to it.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// The key prefix of this fleet in etcd (one etcd can hold several fleets).
    #[arg(long, default_value = firefleet_server::DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// PEM file of the CA that signed etcd's certificates (TLS to etcd).
    #[arg(long, requires_all = ["etcd_cert", "etcd_key"])]
    pub etcd_ca: Option<PathBuf>,
    /// PEM file of the client certificate for etcd.
    #[arg(long, requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// PEM file of the key of `--etcd-cert`.
    #[arg(long, requires_all = ["etcd_ca", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// `text` (`sqlite:PATH` or `etcd://…`) as a store configuration with these settings.
    fn store_config(&self, text: &str) -> anyhow::Result<StoreConfig> {
        let mut config = StoreConfig::parse(text).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        if let StoreConfig::Etcd(etcd) = &mut config {
            self.etcd_prefix.clone_into(&mut etcd.prefix);
            etcd.tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
                (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            };
        }
        Ok(config)
    }
}

impl HaArgs {
    /// The store the server opens.
    pub fn store(&self) -> anyhow::Result<StoreConfig> {
        match &self.store {
            None => Ok(StoreConfig::Sqlite(None)),
            Some(text) => self.etcd.store_config(text),
        }
    }

    /// The secrets key, read from its file.
    pub fn secrets_key(&self) -> anyhow::Result<Option<SecretsKey>> {
        self.secrets_key
            .as_deref()
            .map(SecretsKey::load)
            .transpose()
            .context("--secrets-key")
    }

    /// This replica's settings.
    pub fn replica(&self) -> ReplicaConfig {
        ReplicaConfig {
            id: self.replica_id.clone(),
            advertise: self.advertise.clone(),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
        }
    }
}

/// `firefleet cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The control plane's replicas and which one leads (admin).
    Status,
}

/// Runs `firefleet cluster ...`.
pub async fn cluster(g: &Global, cmd: ClusterCommand) -> anyhow::Result<()> {
    let client = crate::cmd_vm::client(g)?;
    match cmd {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            let rows = status
                .replicas
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.address.clone(),
                        if r.leader {
                            format!(
                                "leader (term {})",
                                status.leader.as_ref().map_or(0, |l| l.term)
                            )
                        } else {
                            "follower".to_owned()
                        },
                    ]
                })
                .collect();
            print(g.output, &status, &["REPLICA", "ADDRESS", "ROLE"], rows)?;
            if g.output == crate::args::Output::Table && status.leader.is_none() {
                eprintln!("no leader now: the controllers are paused until one is elected");
            }
            Ok(())
        }
    }
}

/// `firefleet store`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every key of one store into another, empty one (stop every server first):
    /// `--from sqlite:/var/lib/firefleet/store.db --to etcd://10.0.0.1:2379,…`. Revisions
    /// start again in the destination; leader and replica records are not copied.
    Copy(StoreCopyArgs),
}

/// `firefleet store copy`.
#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The store to read: `sqlite:PATH` or `etcd://…`.
    #[arg(long)]
    pub from: String,
    /// The store to fill (must hold no key of this fleet).
    #[arg(long)]
    pub to: String,
    /// etcd's prefix and TLS (both sides, when etcd).
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Keys that belong to the running replicas, not to the fleet: never copied.
const EPHEMERAL: &[&str] = &["/cluster/leader", "/cluster/replicas/"];

/// Largest batch written in one transaction (bytes of values; etcd refuses requests over
/// 1.5 MiB by default), and most ops in one (etcd's default limit is 128).
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_OPS: usize = 64;

/// Runs `firefleet store ...`.
pub async fn store(g: &Global, cmd: StoreCommand) -> anyhow::Result<()> {
    let StoreCommand::Copy(a) = cmd;
    let from = open(&a.etcd, &a.from, true)
        .await
        .with_context(|| format!("opening --from {}", a.from))?;
    let to = open(&a.etcd, &a.to, false)
        .await
        .with_context(|| format!("opening --to {}", a.to))?;
    let (existing, _) = to.list("").await.context("reading --to")?;
    if !existing.is_empty() {
        bail!(
            "--to {} already holds {} keys (e.g. {:?}): refusing to mix two fleets' state",
            a.to,
            existing.len(),
            existing[0].key
        );
    }
    let (kvs, revision) = from.list("").await.context("reading --from")?;
    let kvs: Vec<_> = kvs
        .into_iter()
        .filter(|kv| !EPHEMERAL.iter().any(|p| kv.key.starts_with(p)))
        .collect();
    let bar = crate::output::progress(g.output, kvs.len() as u64);
    let mut batch: Vec<Op> = Vec::new();
    let mut bytes = 0;
    let mut copied = 0u64;
    for kv in kvs {
        if !batch.is_empty() && (bytes + kv.value.len() > BATCH_BYTES || batch.len() >= BATCH_OPS) {
            copied += flush(&*to, &mut batch).await?;
            bar.set_position(copied);
            bytes = 0;
        }
        bytes += kv.value.len();
        batch.push(Op::Put {
            key: kv.key,
            value: kv.value,
        });
    }
    copied += flush(&*to, &mut batch).await?;
    bar.finish_and_clear();
    from.close().await.ok();
    to.close().await.context("closing --to")?;
    let summary = serde_json::json!({
        "copied": copied, "source_revision": revision, "from": a.from, "to": a.to,
    });
    print(
        g.output,
        &summary,
        &["COPIED", "SOURCE REVISION"],
        vec![vec![copied.to_string(), revision.to_string()]],
    )
}

async fn flush(to: &dyn KvStore, batch: &mut Vec<Op>) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let n = batch.len() as u64;
    // Each key only if still absent: a concurrent writer is an error, not an overwrite.
    let compares = batch
        .iter()
        .map(|op| firefleet_store::Compare::Absent {
            key: op.key().to_owned(),
        })
        .collect();
    let resp = to
        .txn(compares, std::mem::take(batch), vec![])
        .await
        .context("writing to --to")?;
    if !resp.succeeded {
        bail!("--to changed while copying (another writer?): stopped; it holds part of the copy");
    }
    Ok(n)
}

/// Opens a store; a source (`must_exist`) SQLite file is never created.
async fn open(etcd: &EtcdArgs, text: &str, must_exist: bool) -> anyhow::Result<Box<dyn KvStore>> {
    Ok(match etcd.store_config(text)? {
        StoreConfig::Sqlite(Some(path)) => {
            if must_exist && !path.is_file() {
                bail!("{} does not exist", path.display());
            }
            Box::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .context("opening SQLite")??,
            )
        }
        StoreConfig::Sqlite(None) => bail!("sqlite: needs a path"),
        StoreConfig::Etcd(config) => Box::new(EtcdStore::connect(config).await?),
    })
}
