//! The API's error type. It knows nothing about HTTP; the HTTP layer (`http/mod.rs`) maps it to a
//! status code and a body fit for the user.

use firefleet_store::StoreError;
use firefleet_types::ValidationError;

/// Why an API operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request was invalid.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The request body was not valid JSON for this endpoint (unknown field, wrong type, ...).
    #[error("{message}")]
    BadRequest {
        /// What was wrong.
        message: String,
        /// The field at fault, when known.
        field: Option<String>,
    },
    /// The body was larger than the endpoint accepts.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body is not of a type the endpoint accepts (its `Content-Type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request did not arrive in time (a body sent too slowly).
    #[error("{0}")]
    SlowRequest(String),
    /// No (valid) credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Admission refused the object: the policies in `deny` mode it violates.
    #[error("refused by policy: {}", .0.join("; "))]
    PolicyDenied(Vec<String>),
    /// The object does not exist (or the caller may not see it).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of object.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The operation did not complete in time.
    #[error("{0}")]
    Timeout(String),
    /// The caller made too many requests; it may retry after this many seconds.
    #[error("too many requests: retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request would be taken.
        retry_after_secs: u64,
    },
    /// A quota of the caller's tenant would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The server is at a limit it keeps for everyone (queue full); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// This replica does not lead, and the call needs the leader's memory (telemetry for the
    /// guard, stats, snapshot and migration transfers, the functions gateway): 503, and the
    /// client fails over to another replica.
    #[error("{0}")]
    NotLeader(String),
    /// The store failed.
    #[error("store error")]
    Store(#[from] firefleet_store::StoreError),
    /// Something else failed inside the server.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A not-found error.
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        ApiError::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) | ApiError::BadRequest { .. } => "invalid_request",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::SlowRequest(_) => "request_timeout",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::PolicyDenied(_) => "policy_denied",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Timeout(_) => "timeout",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotLeader(_) => "not_leader",
            ApiError::Store(StoreError::Unavailable { .. }) => "store_unavailable",
            ApiError::Store(StoreError::Fenced { .. }) => "not_leader",
            ApiError::Store(_) | ApiError::Internal(_) => "internal",
        }
    }

    /// Whether the store could not serve the call now (no quorum, unreachable) or the write
    /// was a deposed leader's: answered 503, and a client may retry (on another replica).
    pub fn is_retryable_store(&self) -> bool {
        matches!(
            self,
            ApiError::Store(StoreError::Unavailable { .. } | StoreError::Fenced { .. })
        )
    }

    /// The request field at fault.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Validation(v) => Some(&v.field),
            ApiError::BadRequest { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

impl From<crate::repo::RepoError> for ApiError {
    fn from(e: crate::repo::RepoError) -> Self {
        use crate::repo::RepoError;
        match e {
            RepoError::Store(e) => ApiError::Store(e),
            RepoError::Invalid(e) => ApiError::Validation(e),
            RepoError::Corrupt(m) => ApiError::Internal(m),
            RepoError::NotFound { kind, name } => ApiError::NotFound { kind, name },
            RepoError::Conflict(m) => ApiError::Conflict(m),
            RepoError::Unauthorized(m) => ApiError::Unauthorized(m),
            RepoError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}
