//! The data model: key-values, compares, ops, events.

/// The store's global revision: 0 for an empty store, +1 for every transaction that writes.
pub type Revision = u64;

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last delete).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of puts since the key was created (1 after the first put).
    pub version: u64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `equals`; 0 means the key must not exist.
    ModRevision { key: String, equals: Revision },
    /// The key exists.
    Exists { key: String },
    /// The key does not exist.
    Absent { key: String },
}

impl Compare {
    /// The key this compare looks at.
    pub fn key(&self) -> &str {
        match self {
            Self::ModRevision { key, .. } | Self::Exists { key } | Self::Absent { key } => key,
        }
    }

    /// Whether the compare holds for a key whose current `mod_revision` is `mod_revision`
    /// (0 when absent).
    pub fn holds(&self, mod_revision: Revision) -> bool {
        match self {
            Self::ModRevision { equals, .. } => mod_revision == *equals,
            Self::Exists { .. } => mod_revision != 0,
            Self::Absent { .. } => mod_revision == 0,
        }
    }
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting an absent key is not an error and writes nothing.
    Delete {
        key: String,
    },
}

impl Op {
    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// The outcome of [`crate::KvStore::txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (and the success ops were applied).
    pub succeeded: bool,
    /// The revision of the applied ops, or the current revision when they wrote nothing.
    pub revision: Revision,
}

/// What an [`Event`] did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the key-value after the put. For a delete, the key with `mod_revision` set
    /// to the delete's revision, an empty value and `create_revision` and `version` 0.
    pub kv: KeyValue,
}

impl Event {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }

    /// A delete event for `key` at `revision`.
    pub fn delete(key: String, revision: Revision) -> Self {
        Self {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
            },
        }
    }
}
