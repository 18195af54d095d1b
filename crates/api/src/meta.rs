//! What every request and answer shares: the header tokens travel in, body and page limits,
//! and the health answer.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest request body the server reads (bytes). Console uploads have their own limit.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header agents and CLIs send their bearer token in.
pub const AUTHORIZATION: &str = "authorization";

/// Items a list page holds unless `limit=` says otherwise.
pub const DEFAULT_PAGE_LIMIT: usize = 500;
/// The largest `limit=` a list accepts.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok".
    pub status: String,
    /// Store revision.
    pub revision: u64,
}

/// `GET /v1/cluster` (admin): the control plane's replicas and which one leads.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The replica that answered.
    pub replica: String,
    /// The store's kind: `sqlite` (one replica) or `etcd`.
    pub store: String,
    /// The store's current revision, as the answering replica read it.
    pub revision: u64,
    /// The replica holding the leadership (it runs the controllers), if any.
    pub leader: Option<LeaderInfo>,
    /// Every replica alive (registered with a lease), sorted by id.
    pub replicas: Vec<ReplicaInfo>,
}

/// The leader, as its election record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaderInfo {
    /// The leading replica's id.
    pub id: String,
    /// Its advertised URL.
    pub address: String,
    /// Its term: the store revision at which it took the leadership. Every controller write
    /// is fenced on it.
    pub term: u64,
    /// When it took the leadership (milliseconds since the Unix epoch).
    pub since_ms: u64,
}

/// One replica of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaInfo {
    /// Its id (`--replica-id`, by default host name and port).
    pub id: String,
    /// Its advertised URL.
    pub address: String,
    /// Whether it leads.
    pub leader: bool,
}
