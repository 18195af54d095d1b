//! `token` and `join-token`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (admin): a tenant's, a metrics scraper's (`--role metrics`: reads
    /// /metrics only) or another admin's. The secret is printed once.
    Create {
        /// Tenant the token acts for (admin tokens: `admin`, the default for them).
        #[arg(long)]
        tenant: Option<String>,
        /// Role.
        #[arg(long, value_enum, default_value_t = TokenRole::Tenant)]
        role: TokenRole,
        /// Seconds until it expires (default: never).
        #[arg(long = "ttl")]
        ttl_secs: Option<u64>,
        /// What it is for (shown by `token ls`).
        #[arg(long)]
        note: Option<String>,
    },
    /// List tokens (admin): ids, tenants, roles, expiry; never the secrets.
    Ls {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by id (admin): refused from the next request on.
    Revoke {
        /// Token id (from `token ls`).
        id: String,
    },
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    /// A tenant's own objects.
    Tenant,
    /// Reads /metrics only.
    Metrics,
    /// Everything.
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a one-time join token for an agent (admin).
    Create {
        /// Validity in seconds.
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Bind the token to this node name: it enrols only that name, and may enrol it again
        /// while it exists (an agent that lost its data directory). Without it, a name that is
        /// taken is refused.
        #[arg(long)]
        node: Option<String>,
        /// The node enrols cordoned (default: a new node uncordoned, a re-enrolled one as it
        /// was).
        #[arg(long, conflicts_with = "uncordon")]
        cordon: bool,
        /// The node enrols uncordoned.
        #[arg(long)]
        uncordon: bool,
    },
}
