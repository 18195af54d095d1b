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
