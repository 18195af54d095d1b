//! The server's settings that `up` and `server` share, each group turned into the server's
//! configuration value: quotas, limits, agent certificates, the guard, functions, node timers.

use std::path::PathBuf;

use clap::Args;

/// The quota of tenants whose record sets none (`tenant set --quota`); 0: unlimited.
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// VMs per tenant.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.vms))]
    pub quota_vms: u64,
    /// vCPUs per tenant, its VMs together.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.vcpus))]
    pub quota_vcpus: u64,
    /// Memory per tenant, its VMs together, MiB.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.memory_mib))]
    pub quota_memory_mib: u64,
    /// Functions per tenant.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.functions))]
    pub quota_functions: u64,
    /// Snapshots per tenant, of its VMs together.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.snapshots))]
    pub quota_snapshots: u64,
}

fn default_quota(limit: Option<u64>) -> u64 {
    limit.unwrap_or(0)
}

impl QuotaArgs {
    /// The server's default quota (0 for unlimited).
    pub fn quota(&self) -> firefleet_api::TenantQuota {
        let limit = |v: u64| (v > 0).then_some(v);
        firefleet_api::TenantQuota {
            vms: limit(self.quota_vms),
            vcpus: limit(self.quota_vcpus),
            memory_mib: limit(self.quota_memory_mib),
            functions: limit(self.quota_functions),
            snapshots: limit(self.quota_snapshots),
        }
    }
}

/// What callers may hold (defaults in `firefleet_server::Limits`).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Open connections in all.
    #[arg(long, default_value_t = firefleet_server::Limits::default().max_connections)]
    pub max_connections: usize,
    /// Open connections from one client address.
    #[arg(long, default_value_t = firefleet_server::Limits::default().max_connections_per_client)]
    pub max_connections_per_client: usize,
    /// Seconds a TLS handshake and each request's headers may take.
    #[arg(long, default_value_t = firefleet_server::Limits::default().header_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = firefleet_server::Limits::default().idle_timeout.as_secs())]
    pub idle_timeout_secs: u64,
    /// Requests per second per token (and per anonymous client address); past the burst, 429.
    #[arg(long, default_value_t = firefleet_server::Limits::default().requests_per_sec)]
    pub rate_limit: f64,
    /// Requests a token may make at once after a quiet spell.
    #[arg(long, default_value_t = firefleet_server::Limits::default().burst)]
    pub rate_burst: f64,
}

impl LimitArgs {
    /// The server's settings; zero or negative values are refused, naming the flag.
    pub fn limits(&self) -> anyhow::Result<firefleet_server::Limits> {
        for (flag, ok) in [
            ("--max-connections", self.max_connections > 0),
            (
                "--max-connections-per-client",
                self.max_connections_per_client > 0,
            ),
            ("--header-timeout-secs", self.header_timeout_secs > 0),
            ("--idle-timeout-secs", self.idle_timeout_secs > 0),
            (
                "--rate-limit",
                self.rate_limit.is_finite() && self.rate_limit > 0.0,
            ),
            (
                "--rate-burst",
                self.rate_burst.is_finite() && self.rate_burst >= 1.0,
            ),
        ] {
            anyhow::ensure!(ok, "{flag} must be positive (at least 1 for --rate-burst)");
        }
        Ok(firefleet_server::Limits {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            requests_per_sec: self.rate_limit,
            burst: self.rate_burst,
        })
    }
}

/// Agent certificates.
#[derive(Debug, Clone, Args)]
pub struct AgentCertArgs {
    /// How long agent certificates are valid, seconds (agents renew theirs when two thirds
    /// have passed; an agent offline for longer needs `join-token create --node NAME`).
    #[arg(long, default_value_t = firefleet_server::AGENT_CERT_LIFETIME.as_secs(),
          value_parser = clap::value_parser!(u64).range(60..))]
    pub agent_cert_lifetime_secs: u64,
}

impl AgentCertArgs {
    /// The agent certificate lifetime.
    pub fn lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.agent_cert_lifetime_secs)
    }
}

/// The guard's rules and responses.
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// A guard rule file (TOML) merged over the built-in rules by id (check it first with
    /// `firefleet guard rules test FILE`).
    #[arg(long, env = "FIREFLEET_GUARD_RULES")]
    pub rules: Option<PathBuf>,
    /// A response playbook file (TOML: severity -> ordered actions, per tenant) merged over the
    /// built-in playbooks.
    #[arg(long, env = "FIREFLEET_PLAYBOOKS")]
    pub playbooks: Option<PathBuf>,
}

impl GuardArgs {
    /// The server's settings; a broken file is an error naming the file, line and column.
    pub fn config(&self) -> anyhow::Result<firefleet_server::GuardConfig> {
        use anyhow::Context as _;
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let rules = match &self.rules {
            Some(p) => firefleet_guard::Rules::parse(&read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => firefleet_guard::Rules::builtin(),
        };
        let playbooks = match &self.playbooks {
            Some(p) => firefleet_guard::Playbooks::parse(&read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => firefleet_guard::Playbooks::builtin(),
        };
        Ok(firefleet_server::GuardConfig { rules, playbooks })
    }
}

/// How functions are scaled.
#[derive(Debug, Clone, Args)]
pub struct FunctionArgs {
    /// The autoscaler's policy: firefleet, fixed-10m (fixed-<N>m, fixed:<secs>), hybrid,
    /// knative.
    #[arg(long, default_value = "firefleet")]
    pub fn_policy: firefleet_server::PolicyKind,
    /// The autoscaler's tick, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub fn_tick_ms: u64,
    /// The autoscaler's histogram bin and forecast step, seconds.
    #[arg(long, default_value_t = 60)]
    pub fn_bin_secs: u64,
    /// Keep-alive of idle instances of a function with too little history, seconds.
    #[arg(long, default_value_t = 600)]
    pub fn_keep_alive_secs: u64,
    /// How long an invocation waits for an instance before it fails, seconds.
    #[arg(long, default_value_t = 60)]
    pub fn_hold_secs: u64,
}

impl FunctionArgs {
    /// The server's settings.
    pub fn config(&self) -> firefleet_server::FunctionsConfig {
        use std::time::Duration;
        firefleet_server::FunctionsConfig {
            tick: Duration::from_millis(self.fn_tick_ms.max(50)),
            bin: Duration::from_secs(self.fn_bin_secs.max(1)),
            default_keep_alive: Duration::from_secs(self.fn_keep_alive_secs),
            hold: Duration::from_secs(self.fn_hold_secs.max(1)),
            policy: self.fn_policy,
        }
    }
}

/// Node failure detection.
#[derive(Debug, Clone, Args)]
pub struct NodeTimerArgs {
    /// Seconds without a heartbeat before a node is NotReady (no new placements).
    #[arg(long, default_value_t = firefleet_server::NODE_GRACE.as_secs())]
    pub node_grace_secs: u64,
    /// Seconds a node stays NotReady before its VMs are placed on other nodes.
    #[arg(long, default_value_t = firefleet_server::EVICT_AFTER.as_secs())]
    pub evict_after_secs: u64,
}

impl NodeTimerArgs {
    /// The server's timers.
    pub fn timers(&self) -> firefleet_server::NodeTimers {
        firefleet_server::NodeTimers {
            grace: std::time::Duration::from_secs(self.node_grace_secs.max(1)),
            evict_after: std::time::Duration::from_secs(self.evict_after_secs),
        }
    }
}
