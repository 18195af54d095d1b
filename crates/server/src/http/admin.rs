//! Admin endpoints: nodes, tokens, join tokens.

use std::time::Duration;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    CreateJoinTokenRequest, CreateTokenRequest, ErrorBody, JoinTokenResponse, NodeList, Role,
    TokenInfo, TokenList, TokenResponse,
};
use firefleet_types::{NodeId, NodeInfo};

use super::{ValidJson, ValidQuery};
use crate::{app, app::tokens, auth::Admin, ApiError, AppState};

/// Longest join-token validity.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// List nodes (admin).
#[utoipa::path(get, path = "/v1/nodes", security(("bearer" = [])),
    responses((status = 200, body = NodeList), (status = 403, body = ErrorBody)))]
pub async fn list_nodes(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<NodeList>, ApiError> {
    Ok(Json(NodeList {
        items: app::nodes::list(&state).await?,
    }))
}

/// Get a node (admin).
#[utoipa::path(get, path = "/v1/nodes/{node}", security(("bearer" = [])),
    params(("node" = String, Path, description = "node name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = NodeInfo), (status = 404, body = ErrorBody)))]
pub async fn get_node(
    State(state): State<AppState>,
    _admin: Admin,
    Path(node): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let id: NodeId = NodeId::parse("node", &node)?;
    app::nodes::get(&state, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("node", node))
}

/// Cordon a node (admin): no new placements; its VMs keep running. Idempotent.
#[utoipa::path(post, path = "/v1/nodes/{node}/cordon", security(("bearer" = [])),
    params(("node" = String, Path, description = "node name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = NodeInfo), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cordon(
    State(state): State<AppState>,
    _admin: Admin,
    Path(node): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    set_cordon(&state, &node, true).await
}

/// Uncordon a node (admin): it takes placements again. Idempotent.
#[utoipa::path(post, path = "/v1/nodes/{node}/uncordon", security(("bearer" = [])),
    params(("node" = String, Path, description = "node name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = NodeInfo), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn uncordon(
    State(state): State<AppState>,
    _admin: Admin,
    Path(node): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    set_cordon(&state, &node, false).await
}

async fn set_cordon(
    state: &AppState,
    node: &str,
    cordoned: bool,
) -> Result<Json<NodeInfo>, ApiError> {
    let id: NodeId = NodeId::parse("node", node)?;
    Ok(Json(app::nodes::set_cordon(state, &id, cordoned).await?))
}

/// Create a token (admin): a tenant's (the default), a metrics scraper's, or another admin's.
#[utoipa::path(post, path = "/v1/tokens", request_body = CreateTokenRequest, security(("bearer" = [])),
    responses((status = 201, body = TokenResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    _admin: Admin,
    ValidJson(req): ValidJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let t = tokens::create(
        &state,
        tokens::NewToken {
            tenant: req.tenant,
            role: req.role.unwrap_or(Role::Tenant),
            ttl_secs: req.ttl_secs,
            note: req.note,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Query of `GET /v1/tokens`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Only this tenant's tokens.
    #[param(value_type = Option<String>, pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)]
    pub tenant: Option<firefleet_types::TenantId>,
}

/// List tokens (admin): ids, tenants, roles, expiry; never the secrets.
#[utoipa::path(get, path = "/v1/tokens", params(TokenQuery), security(("bearer" = [])),
    responses((status = 200, body = TokenList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<TokenQuery>,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        items: tokens::list(&state, q.tenant.as_ref()).await?,
    }))
}

/// Revoke a token (admin): it is refused from the next request on.
#[utoipa::path(delete, path = "/v1/tokens/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "token id (16 hex digits, from token ls)", pattern = "^[0-9a-f]{16}$")),
    responses((status = 200, body = TokenInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    Ok(Json(tokens::revoke(&state, &id).await?))
}

/// Create a one-time join token for an agent (admin); with `node`, it enrols only that name
/// and may re-enrol it while it exists.
#[utoipa::path(post, path = "/v1/join-tokens", request_body = CreateJoinTokenRequest, security(("bearer" = [])),
    responses((status = 201, body = JoinTokenResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_join_token(
    State(state): State<AppState>,
    _admin: Admin,
    ValidJson(req): ValidJson<CreateJoinTokenRequest>,
) -> Result<(StatusCode, Json<JoinTokenResponse>), ApiError> {
    let ttl = Duration::from_secs(req.ttl_secs.unwrap_or(3600));
    if ttl.is_zero() || ttl > MAX_JOIN_TTL {
        return Err(ApiError::Validation(firefleet_types::ValidationError::new(
            "ttl_secs",
            format!("must be between 1 and {}", MAX_JOIN_TTL.as_secs()),
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(app::nodes::create_join_token(&state, ttl, req.node, req.cordon).await?),
    ))
}

/// Remove a node (admin): its record goes, and every certificate it was issued is refused from
/// then on (its agent is locked out; the name can be enrolled again with any join token).
/// Refused (409) while VMs are placed on it or a migration involves it: drain it first.
#[utoipa::path(delete, path = "/v1/nodes/{node}", security(("bearer" = [])),
    params(("node" = String, Path, description = "node name", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = NodeInfo, description = "the removed node"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_node(
    State(state): State<AppState>,
    _admin: Admin,
    Path(node): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let id: NodeId = NodeId::parse("node", &node)?;
    let removed = app::nodes::remove(&state, &id).await?;
    tracing::info!(node = %id, "node removed; its certificates are revoked");
    state.kick.notify_waiters();
    Ok(Json(removed))
}
