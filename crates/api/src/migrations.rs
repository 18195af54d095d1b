//! Migrations (`POST /v1/vms/{vm}/migrate`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/vms/{vm}/migrate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination node.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub to: String,
    /// Move it by snapshot even where a live migration is possible.
    #[serde(default)]
    pub by_snapshot: bool,
}
