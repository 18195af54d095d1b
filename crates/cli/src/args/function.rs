//! `fn`: serverless functions.

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Deploy a function (or change one): its first instance is booted and snapshotted, and
    /// that snapshot is the template every other instance starts from.
    Deploy(Box<FnDeployArgs>),
    /// List functions.
    Ls,
    /// Show a function, its instances and counters.
    Get {
        /// Function name.
        name: String,
    },
    /// Remove a function and all its instances.
    Rm {
        /// Function name.
        name: String,
    },
    /// The consoles of a function's template and instances.
    Logs {
        /// Function name.
        name: String,
    },
    /// Invoke a function: the response body goes to stdout.
    Invoke {
        /// Function name.
        name: String,
        /// Request body: text, `@FILE`, or `-` for standard input (default: empty).
        #[arg(long)]
        data: Option<String>,
        /// The caller's region (the nearest instance serves).
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct FnDeployArgs {
    /// Name.
    pub name: String,
    /// Image name or digest (default: the `default` image, built on first use).
    #[arg(long, default_value = "default")]
    pub image: String,
    /// The handler, run with `sh -c` once per invocation (request on stdin, response on
    /// stdout); with `--port`, the workload serving HTTP on that port.
    #[arg(long)]
    pub cmd: String,
    /// HTTP mode: invocations are POSTed to this port inside the instance.
    #[arg(long)]
    pub port: Option<u16>,
    /// HTTP mode: the path they are POSTed to.
    #[arg(long)]
    pub path: Option<String>,
    /// Memory per instance, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// vCPUs per instance.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Invocations in flight per instance at most.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Warm instances at least (0: scale to zero).
    #[arg(long, default_value_t = 0)]
    pub min: u32,
    /// Instances at most.
    #[arg(long, default_value_t = 10)]
    pub max: u32,
    /// Region or edge site for its instances (repeatable; default: anywhere).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Invocation timeout, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Keep idle instances this long (seconds) instead of what the autoscaler decides.
    #[arg(long)]
    pub keep_alive_secs: Option<u64>,
    /// The VMM: qemu or firecracker.
    #[arg(long, default_value = "qemu")]
    pub runtime: String,
    /// End users may invoke it without a token (`/fn/TENANT/NAME`).
    #[arg(long)]
    pub public: bool,
    /// Tenant (admin only).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Return at once instead of waiting until the template is ready.
    #[arg(long)]
    pub no_wait: bool,
}
