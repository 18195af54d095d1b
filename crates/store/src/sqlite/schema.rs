//! Opening the database file: pragmas and tables.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// Bumped when the tables change incompatibly; a file with another version is refused.
const SCHEMA_VERSION: u32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
-- Current state. Keys are stored as BLOBs so that prefix ranges compare byte-wise.
CREATE TABLE IF NOT EXISTS kv (
    key             BLOB PRIMARY KEY,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL
) WITHOUT ROWID;
-- History for watches: one row per change, seq orders the changes of one revision.
-- kind: 0 put, 1 delete. Compaction deletes rows below the compaction point.
CREATE TABLE IF NOT EXISTS log (
    revision        INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    kind            INTEGER NOT NULL,
    key             BLOB NOT NULL,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
";

/// Opens (creating if needed) the store file. The connection holds an exclusive lock on the
/// file for its lifetime: one process owns a store, and watches rely on seeing every write.
pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    // Exclusive locking before the first WAL access: no shared-memory index, and a second
    // opener (another process) waits busy_timeout and then fails instead of racing us.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::backend(format!(
            "journal_mode WAL refused (got {mode})"
        )));
    }
    // FULL: each commit fsyncs the WAL, so an acknowledged write survives a power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;

    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::backend(format!(
                "store schema version {other} is not supported (expected {SCHEMA_VERSION})"
            )))
        }
    }
    tx.commit()?;
    Ok(conn)
}
