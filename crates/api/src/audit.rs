//! The audit log (`GET /v1/audit`) and its verification (`GET /v1/audit/verify`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/audit`: audit log entries in order (see `firefleet_audit::Entry`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// The entries, by seq.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<firefleet_audit::Entry>,
}

/// The first bad entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirstBad {
    /// The seq that position should hold.
    pub seq: u64,
    /// Its position in the log, from 0.
    pub index: u64,
    /// What is wrong (`kind`: `hash_mismatch`, `bad_signature`, `deleted`, `reordered`,
    /// `inserted`, `truncated`, `head_mismatch`, `unreadable`, with details).
    #[schema(value_type = Object)]
    pub reason: firefleet_audit::Reason,
    /// The reason in words.
    pub message: String,
}

/// `GET /v1/audit/verify`: the stored chain checked with the control plane's public key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyResponse {
    /// No entry is bad and the chain reaches the recorded head.
    pub ok: bool,
    /// How many entries are stored.
    pub entries: u64,
    /// The id of the key they were checked with.
    pub key_id: String,
    /// The first bad entry, if any.
    #[serde(default)]
    pub first_bad: Option<FirstBad>,
}
