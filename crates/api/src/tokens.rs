//! Tokens (`/v1/tokens`) and agents' join tokens (`/v1/join-tokens`): roles, requests and
//! what is shown of them.

use firefleet_types::{NodeId, TenantId, UnixMillis};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything. Admin tokens act for the reserved tenant [`ADMIN_TENANT`].
    Admin,
    /// Its own tenant's objects.
    Tenant,
    /// Reads `/metrics` and nothing else (a scraper's token).
    Metrics,
}

/// The tenant name of admin tokens; no tenant or metrics token can be made for it.
pub const ADMIN_TENANT: &str = "admin";

/// Longest token validity a `ttl_secs` may ask for (10 years); none: no expiry.
pub const MAX_TOKEN_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// `POST /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// The tenant the token acts for (`admin` only with role `admin`).
    #[schema(value_type = String, min_length = 1, max_length = 63, pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    pub tenant: TenantId,
    /// Its role (default `tenant`).
    #[serde(default)]
    pub role: Option<Role>,
    /// Seconds until it expires (default: never; at most ten years).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    pub ttl_secs: Option<u64>,
    /// A note saying what it is for (shown by `token ls`).
    #[serde(default)]
    #[schema(max_length = 128)]
    pub note: Option<String>,
}

/// A new token; the secret is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token.
    pub token: String,
    /// Its id (what `token ls` shows and `token revoke` takes; not a secret).
    pub id: String,
    /// Its tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its role.
    pub role: Role,
    /// When it expires (none: never).
    #[serde(default)]
    pub expires_ms: Option<UnixMillis>,
}

/// A token as `GET /v1/tokens` shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// Its tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_ms: UnixMillis,
    /// When it expires (none: never).
    #[serde(default)]
    pub expires_ms: Option<UnixMillis>,
    /// Whether it has expired (it is refused).
    pub expired: bool,
    /// What it is for.
    #[serde(default)]
    pub note: Option<String>,
}

/// `GET /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The tokens, by id.
    pub items: Vec<TokenInfo>,
}

/// `POST /v1/join-tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Validity in seconds (default 3600, at most one week).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Bind the token to this node name: it can enrol only that name, and it is the only kind
    /// of token that may re-enrol a node that exists (an agent that lost its disk). Without it
    /// the token enrols any name that is not taken.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub node: Option<NodeId>,
    /// The cordon the enrolled node gets: `true` cordoned, `false` uncordoned. Unset: a new
    /// node is uncordoned, a re-enrolled one keeps its cordon.
    #[serde(default)]
    pub cordon: Option<bool>,
}

/// A one-time join token for an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    /// The token.
    pub token: String,
    /// When it expires.
    pub expires_ms: UnixMillis,
    /// The node it is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub node: Option<NodeId>,
}
