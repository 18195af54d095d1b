//! Who is calling: people and scripts by bearer token ([`Caller`]), agents by the client
//! certificate they presented in the TLS handshake ([`AgentNode`]).

use axum::{extract::FromRequestParts, http::request::Parts};
use firefleet_api::Role;
use firefleet_types::{NodeId, TenantId, Vm};

use crate::{app::tokens, repo, ApiError, AppState};

/// The node certificate a client presented (verified against the cluster CA in the handshake),
/// put into each request's extensions by the TLS layer (None when the client presented none, or
/// one that names no node).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<PeerCert>);

/// Whether the client presented a control-plane replica's certificate (verified against the
/// cluster CA in the handshake): the only callers whose `x-firefleet-agent-*` headers are
/// believed (a follower forwarding an agent's request to the leader, see `http/forward.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ReplicaPeer(pub bool);

/// Headers a follower sets on an agent's request it forwards to the leader, after checking the
/// agent's certificate itself: the node and its certificate's serial.
pub const FORWARDED_NODE: &str = "x-firefleet-agent-node";
/// See [`FORWARDED_NODE`].
pub const FORWARDED_SERIAL: &str = "x-firefleet-agent-serial";

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
    /// The token's id (never its secret).
    pub token_id: String,
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

    /// Who this is in the audit log: `admin` or `tenant:<name>` (the role and token id go in
    /// the entry's detail).
    pub fn actor(&self) -> String {
        match self.role {
            Role::Admin => "admin".to_owned(),
            Role::Tenant => format!("tenant:{}", self.tenant),
            Role::Metrics => format!("metrics:{}", self.tenant),
        }
    }
}

/// What the authentication layer ([`authenticate`]) found in a request's `Authorization`
/// header; every request carries one in its extensions.
#[derive(Debug, Clone)]
pub enum Authn {
    /// No header.
    Anonymous,
    /// A valid token.
    Valid(Caller),
    /// A header that is malformed or names no valid token: why.
    Invalid(&'static str),
}

impl Authn {
    /// The caller, or the 401 that a handler needing one answers.
    pub fn caller(&self) -> Result<&Caller, ApiError> {
        match self {
            Authn::Valid(c) => Ok(c),
            Authn::Invalid(why) => Err(ApiError::Unauthorized((*why).to_owned())),
            Authn::Anonymous => Err(ApiError::Unauthorized(
                "missing bearer token (Authorization header)".to_owned(),
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Authn>()
            .unwrap_or(&Authn::Anonymous)
            .caller()?;
        if caller.role == Role::Metrics {
            return Err(ApiError::Forbidden(
                "a metrics token only reads /metrics".to_owned(),
            ));
        }
        Ok(caller.clone())
    }
}

/// Resolves a request's `Authorization: Bearer` header (once per request, by the
/// authentication layer).
pub async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Authn, ApiError> {
    let Some(header) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(Authn::Anonymous);
    };
    let Ok(value) = header.to_str() else {
        return Ok(Authn::Invalid("Authorization header is not text"));
    };
    let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
        return Ok(Authn::Invalid(
            "Authorization header must be `Bearer <token>`",
        ));
    };
    if token.is_empty() || token.len() > 256 {
        return Ok(Authn::Invalid("invalid token"));
    }
    Ok(match tokens::lookup(state, token).await? {
        Some(t) => Authn::Valid(Caller {
            tenant: t.record.tenant,
            role: t.record.role,
            token_id: t.id,
        }),
        None => Authn::Invalid("invalid token"),
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
            .or_else(|| forwarded_agent(parts))
            .ok_or_else(|| {
                ApiError::Unauthorized("agent endpoints need a client certificate".to_owned())
            })?;
        repo::check_node_cert(state, &cert.node, &cert.serial).await?;
        Ok(AgentCert(cert))
    }
}

/// The agent a replica forwarded this request for (its certificate checked again by the
/// caller, as for a direct one); `None` unless the peer is a replica.
fn forwarded_agent(parts: &Parts) -> Option<PeerCert> {
    if !parts.extensions.get::<ReplicaPeer>().is_some_and(|r| r.0) {
        return None;
    }
    let header = |name: &str| parts.headers.get(name)?.to_str().ok().map(str::to_owned);
    Some(PeerCert {
        node: header(FORWARDED_NODE)?.parse().ok()?,
        serial: header(FORWARDED_SERIAL)?,
    })
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
