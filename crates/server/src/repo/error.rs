//! The storage layer's error: what a read or write of a record can fail with. It knows
//! nothing of HTTP; the server's `ApiError` converts from it variant for variant.

use firefleet_store::StoreError;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The store failed.
    #[error("store error")]
    Store(#[from] StoreError),
    /// A stored value is not a valid identifier.
    #[error(transparent)]
    Invalid(#[from] firefleet_types::ValidationError),
    /// A stored record could not be decoded, or a record could not be encoded.
    #[error("{0}")]
    Corrupt(String),
    /// The record does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of record.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The write conflicts with what is stored (a name taken, a record changed meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// A secret (join token, certificate) is not or no longer valid.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid secret that does not give this right.
    #[error("{0}")]
    Forbidden(String),
}

impl RepoError {
    /// A not-found error.
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        RepoError::NotFound {
            kind,
            name: name.into(),
        }
    }
}
