//! Who is calling: people and scripts by bearer token ([`Caller`]), agents by the client
//! certificate they presented in the TLS handshake ([`AgentNode`]).

use axum::{extract::FromRequestParts, http::request::Parts};
use firefleet_api::Role;
use firefleet_types::{NodeId, TenantId, Vm};

use crate::{repo, ApiError, AppState};

/// The node name from a verified client certificate, put into each request's extensions by the
/// TLS layer (None when the client presented no certificate).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<NodeId>);

/// A caller authenticated by bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant the token acts for.
    pub tenant: TenantId,
    /// Role.
    pub role: Role,
}

impl Caller {
    /// Whether the caller may see and change `vm`.
    pub fn owns(&self, vm: &Vm) -> bool {
        self.role == Role::Admin || vm.spec.tenant == self.tenant
    }

    /// Refuses non-admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs an admin token".to_owned()))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        caller_from_headers(state, &parts.headers).await
    }
}

/// The caller a request's `Authorization: Bearer` header names.
pub async fn caller_from_headers(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing bearer token (Authorization header)".to_owned())
        })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization header is not text".to_owned()))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| {
            ApiError::Unauthorized("Authorization header must be `Bearer <token>`".to_owned())
        })?
        .trim();
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::Unauthorized("invalid token".to_owned()));
    }
    let rec = repo::lookup_token(state, token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid token".to_owned()))?;
    Ok(Caller {
        tenant: rec.tenant,
        role: rec.role,
    })
}

/// An enrolled agent, authenticated by its client certificate.
#[derive(Debug, Clone)]
pub struct AgentNode(pub NodeId);

impl FromRequestParts<AppState> for AgentNode {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let node = parts
            .extensions
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                ApiError::Unauthorized("agent endpoints need a client certificate".to_owned())
            })?;
        if repo::get_json::<firefleet_types::NodeInfo>(state, &repo::node_key(&node))
            .await?
            .is_none()
        {
            return Err(ApiError::Forbidden(format!("node {node} is not enrolled")));
        }
        Ok(AgentNode(node))
    }
}

/// A caller with the admin role: refused (403) before the request body is even read.
#[derive(Debug, Clone)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_admin()?;
        Ok(Admin)
    }
}
