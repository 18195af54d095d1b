//! `bench`: benchmarks against a live cluster or this host.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time from `vm run` to Running, split into control-plane and VMM boot time.
    VmRun {
        /// Number of VMs, one after another.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Memory per VM in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
    },
    /// A function's cold starts (instance restored from its template) against warm calls.
    Fn {
        /// Cold starts (each followed by `--warm` warm calls).
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Warm calls after each cold start.
        #[arg(long, default_value_t = 5)]
        warm: usize,
        /// Memory per instance in MiB.
        #[arg(long, default_value_t = 128)]
        memory: u64,
    },
    /// Admission latency with the built-in policy bundle: the engine alone, and (with
    /// `--api`) the API's round trip for a create the policies refuse.
    Admission {
        /// Samples of each.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Also measure through the server (`--server`, `--token`).
        #[arg(long)]
        api: bool,
    },
    /// The API's round trip for creates the server accepts and stores (`POST /v1/vms`, then
    /// `DELETE` of each): the store's write path as clients see it (SQLite or etcd).
    Creates {
        /// Creates (each deleted right after).
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// Cold boot to ready vs restore from a snapshot to running, on this host (no server).
    Restore {
        /// Samples of each.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Where the benchmark's VMs live (default: a temporary directory).
        #[arg(long)]
        state_dir: Option<std::path::PathBuf>,
    },
}
