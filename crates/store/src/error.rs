//! The store's one error type, shared by every backend.

use std::fmt;

use crate::Revision;

/// Why a key (or a watch/list prefix) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKeyReason {
    /// Keys must not be empty.
    Empty,
    /// Keys (and prefixes) are limited to [`crate::MAX_KEY_LEN`] bytes.
    TooLong { len: usize },
    /// The same key appears in more than one op of one transaction branch.
    DuplicateInTxn,
}

impl fmt::Display for InvalidKeyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "key is empty"),
            Self::TooLong { len } => write!(
                f,
                "key is {len} bytes, over the limit of {}",
                crate::MAX_KEY_LEN
            ),
            Self::DuplicateInTxn => write!(f, "key appears more than once in one transaction"),
        }
    }
}

/// Errors of every [`crate::KvStore`] operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap or conditional delete found another revision. `actual` is the key's
    /// current `mod_revision`, 0 when the key does not exist.
    #[error("conflict on key {key:?}: expected mod_revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The history a watch asked for has been compacted away; `oldest` is the oldest revision
    /// a watch may still start from.
    #[error("revision {requested} has been compacted (oldest available: {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// A revision beyond the store's current revision was given where that makes no sense
    /// (compacting the future).
    #[error("revision {requested} is in the future (current revision: {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The key is empty or too long (the key is shortened in the error).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        key: String,
        reason: InvalidKeyReason,
    },
    /// The value is over [`crate::MAX_VALUE_LEN`].
    #[error("value for key {key:?} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// A watcher fell too far behind the writers and its stream was ended. Every event with a
    /// revision below `resume_from` was delivered; watch again from `resume_from`.
    #[error("watch fell too far behind; watch again from revision {resume_from}")]
    WatchLagged { resume_from: Revision },
    /// The store cannot serve this now (no quorum, unreachable, timed out); retry later.
    /// Distinct from [`StoreError::Backend`], a real failure: the write may or may not have
    /// been applied when this is returned for a write, exactly as for a timeout.
    #[error("store unavailable: {reason}")]
    Unavailable { reason: String },
    /// A write fenced on leader term `term` was refused: leadership moved.
    #[error("write to {key:?} fenced on leader term {term} was refused: leadership moved")]
    Fenced { key: String, term: Revision },
    /// The backend (database, network) failed.
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Backend(err.into())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::backend(err)
    }
}
