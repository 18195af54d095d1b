//! Bearer tokens in the store: `/tokens/<sha256 of the secret>` holds a [`TokenRecord`]; the
//! secret itself is never stored. A token's id is the first [`ID_LEN`] hex digits of that hash:
//! it names the token in `token ls`, `token revoke` and the audit log without revealing it.
//!
//! The tenant [`ADMIN_TENANT`] is reserved: only admin tokens act for it, so a tenant token
//! can never be mistaken for the admin (a record that says otherwise, written before the rule,
//! is refused).

use firefleet_api::{Role, TokenInfo, TokenResponse, ADMIN_TENANT, MAX_TOKEN_TTL_SECS};
use firefleet_types::{TenantId, ValidationError};
use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::{
    now_ms,
    repo::{decode, encode, get_json, hash_secret, list_json, random_secret},
    ApiError, AppState,
};

/// Hex digits of a token's id.
pub const ID_LEN: usize = 16;

const PREFIX: &str = "/tokens/";

/// A stored token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Tenant.
    pub tenant: TenantId,
    /// Role.
    pub role: Role,
    /// Created.
    pub created_ms: u64,
    /// Expiry (none: never).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// What it is for.
    #[serde(default)]
    pub note: Option<String>,
}

impl TokenRecord {
    /// The token as listed (id `id`), expired or not at `now_ms`.
    fn info(self, id: String, now_ms: u64) -> TokenInfo {
        TokenInfo {
            id,
            tenant: self.tenant,
            role: self.role,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            expired: self.expires_ms.is_some_and(|e| e <= now_ms),
            note: self.note,
        }
    }
}

/// A token that was presented and is valid now.
#[derive(Debug, Clone)]
pub struct ValidToken {
    /// Its id.
    pub id: String,
    /// Its record.
    pub record: TokenRecord,
}

/// What a new token is for.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Tenant.
    pub tenant: TenantId,
    /// Role.
    pub role: Role,
    /// Seconds it is valid (none: no expiry).
    pub ttl_secs: Option<u64>,
    /// A note.
    pub note: Option<String>,
}

impl NewToken {
    /// Checks the rules: the admin tenant only for admin tokens and admin tokens only for it,
    /// a ttl between 1 s and ten years, a note of at most 128 printable characters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let admin_tenant = self.tenant.as_str() == ADMIN_TENANT;
        match self.role {
            Role::Admin if !admin_tenant => {
                return Err(ValidationError::new(
                    "tenant",
                    format!("admin tokens act for the tenant {ADMIN_TENANT:?}"),
                ))
            }
            Role::Tenant | Role::Metrics if admin_tenant => {
                return Err(ValidationError::new(
                    "tenant",
                    format!("{ADMIN_TENANT:?} is reserved for admin tokens"),
                ))
            }
            _ => {}
        }
        if let Some(ttl) = self.ttl_secs {
            if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
                return Err(ValidationError::new(
                    "ttl_secs",
                    format!("must be between 1 and {MAX_TOKEN_TTL_SECS}"),
                ));
            }
        }
        if let Some(note) = &self.note {
            if note.chars().count() > 128 || note.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    "note",
                    "at most 128 characters, no control characters",
                ));
            }
        }
        Ok(())
    }
}

fn id_of_hash(hash: &str) -> String {
    hash.chars().take(ID_LEN).collect()
}

/// Whether an admin token exists.
pub async fn admin_exists(state: &AppState) -> Result<bool, ApiError> {
    let (tokens, _) = list_json::<TokenRecord>(state, PREFIX).await?;
    let now = now_ms();
    Ok(tokens
        .iter()
        .any(|t| t.role == Role::Admin && t.expires_ms.is_none_or(|e| e > now)))
}

/// Creates a bearer token.
pub async fn create(state: &AppState, new: NewToken) -> Result<TokenResponse, ApiError> {
    new.validate()?;
    let token = random_secret("fft");
    let hash = hash_secret(&token);
    let now = now_ms();
    let rec = TokenRecord {
        tenant: new.tenant.clone(),
        role: new.role,
        created_ms: now,
        expires_ms: new
            .ttl_secs
            .map(|s| now.saturating_add(s.saturating_mul(1000))),
        note: new.note,
    };
    state
        .store
        .compare_and_swap(&format!("{PREFIX}{hash}"), 0, encode(&rec)?)
        .await?;
    Ok(TokenResponse {
        token,
        id: id_of_hash(&hash),
        tenant: new.tenant,
        role: new.role,
        expires_ms: rec.expires_ms,
    })
}

/// Looks a presented bearer token up: None when it is unknown, expired, or a non-admin token
/// for the reserved admin tenant.
pub async fn lookup(state: &AppState, token: &str) -> Result<Option<ValidToken>, ApiError> {
    let hash = hash_secret(token);
    let Some((record, _)) = get_json::<TokenRecord>(state, &format!("{PREFIX}{hash}")).await?
    else {
        return Ok(None);
    };
    if record.expires_ms.is_some_and(|e| e <= now_ms()) {
        return Ok(None);
    }
    if (record.role == Role::Admin) != (record.tenant.as_str() == ADMIN_TENANT) {
        tracing::warn!(token = %id_of_hash(&hash), tenant = %record.tenant, "refusing a token that mixes the admin tenant and another role");
        return Ok(None);
    }
    Ok(Some(ValidToken {
        id: id_of_hash(&hash),
        record,
    }))
}

/// Every token (or one tenant's), by id.
pub async fn list(state: &AppState, tenant: Option<&TenantId>) -> Result<Vec<TokenInfo>, ApiError> {
    let (kvs, _) = state.store.list(PREFIX).await?;
    let now = now_ms();
    let mut out = Vec::new();
    for kv in kvs {
        let rec: TokenRecord = decode(&kv)?;
        if tenant.is_some_and(|t| *t != rec.tenant) {
            continue;
        }
        out.push(rec.info(id_of_hash(kv.key.trim_start_matches(PREFIX)), now));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Revokes (deletes) the token with this id; it is refused from the next request on.
pub async fn revoke(state: &AppState, id: &str) -> Result<TokenInfo, ApiError> {
    if id.len() != ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ApiError::Validation(ValidationError::new(
            "id",
            format!("a token id is {ID_LEN} lowercase hex digits"),
        )));
    }
    let (kvs, _) = state.store.list(&format!("{PREFIX}{id}")).await?;
    let [kv] = kvs.as_slice() else {
        return Err(ApiError::not_found("token", id));
    };
    let rec: TokenRecord = decode(kv)?;
    state.store.delete(&kv.key, Some(kv.mod_revision)).await?;
    Ok(rec.info(id.to_owned(), now_ms()))
}

/// Creates the admin token on first start and writes it to `dir/admin.token` (mode 0600); also
/// when that file was lost.
pub async fn ensure_admin_token(state: &AppState, dir: &Path) -> Result<(), ApiError> {
    let path = dir.join("admin.token");
    // If the token file was lost (it is only written once), make a new admin token rather than
    // lock the operator out; the old one stays valid.
    if path.exists() && admin_exists(state).await? {
        return Ok(());
    }
    let token = create(
        state,
        NewToken {
            tenant: ADMIN_TENANT.parse().map_err(ApiError::Validation)?,
            role: Role::Admin,
            ttl_secs: None,
            note: Some("made at first start".to_owned()),
        },
    )
    .await?;
    crate::files::write_private_file(&path, token.token.as_bytes())
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(tenant: &str, role: Role) -> NewToken {
        NewToken {
            tenant: tenant.parse().unwrap(),
            role,
            ttl_secs: None,
            note: None,
        }
    }

    #[test]
    fn the_admin_tenant_is_reserved_for_admin_tokens() {
        assert!(new("admin", Role::Admin).validate().is_ok());
        let e = new("admin", Role::Tenant).validate().unwrap_err();
        assert_eq!(e.field, "tenant");
        assert!(new("admin", Role::Metrics).validate().is_err());
        assert!(new("acme", Role::Admin).validate().is_err());
        assert!(new("acme", Role::Tenant).validate().is_ok());
    }

    #[test]
    fn ttl_and_note_are_bounded() {
        let mut t = new("acme", Role::Tenant);
        t.ttl_secs = Some(0);
        assert_eq!(t.validate().unwrap_err().field, "ttl_secs");
        t.ttl_secs = Some(MAX_TOKEN_TTL_SECS + 1);
        assert!(t.validate().is_err());
        t.ttl_secs = Some(60);
        t.note = Some("x".repeat(129));
        assert_eq!(t.validate().unwrap_err().field, "note");
        t.note = Some("ci\nrunner".into());
        assert!(t.validate().is_err());
    }
}
