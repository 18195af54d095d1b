//! Who is calling: people and scripts by bearer token ([`Caller`]), agents by the client
//! certificate they presented in the TLS handshake ([`AgentNode`]).

use axum::{extract::FromRequestParts, http::request::Parts};
use firefleet_api::Role;
use firefleet_types::{NodeId, TenantId, Vm};

use crate::{repo, ApiError, AppState};

/// The node certificate a client presented (verified against the cluster CA in the handshake),
/// put into each request's extensions by the TLS layer (None when the client presented none, or
/// one that names no node).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<PeerCert>);

/// A verified node certificate: whose, and which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The node it names.
    pub node: NodeId,
    /// Its serial (lowercase hex), checked against the node's current certificate.
    pub serial: String,
}

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

/// An enrolled agent, authenticated by its client certificate, which must be its node's
/// current one (see `repo::check_node_cert`): a certificate superseded by a re-enrolment or a
/// renewal, or one of a removed node, is refused.
#[derive(Debug, Clone)]
pub struct AgentNode(pub NodeId);

impl FromRequestParts<AppState> for AgentNode {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        AgentCert::from_request_parts(parts, state)
            .await
            .map(|cert| AgentNode(cert.0.node))
    }
}

/// Like [`AgentNode`], with the certificate the agent presented (renewal needs its serial).
#[derive(Debug, Clone)]
pub struct AgentCert(pub PeerCert);

impl FromRequestParts<AppState> for AgentCert {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cert = parts
            .extensions
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                ApiError::Unauthorized("agent endpoints need a client certificate".to_owned())
            })?;
        repo::check_node_cert(state, &cert.node, &cert.serial).await?;
        Ok(AgentCert(cert))
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
