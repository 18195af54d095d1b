//! Synchronous operations on the connection; callers hold the connection's lock and run on a
//! blocking thread.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use crate::{Event, EventKind, KeyValue, Revision, StoreError};

pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACTED: &str = "compacted";

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

/// The changes of one committed write, published to live watchers.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) revision: Revision,
    pub(super) events: Vec<Event>,
}

pub(super) fn read_meta(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    Ok(
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })?,
    )
}

fn key_from_blob(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// The half-open byte range `[prefix, upper)` of keys starting with `prefix`. Keys are UTF-8,
/// which never contains the byte 0xFF, so `[0xFF]` is above every key.
pub(super) fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let lower = prefix.as_bytes().to_vec();
    let mut upper = lower.clone();
    while let Some(last) = upper.pop() {
        if last < 0xFF {
            upper.push(last + 1);
            return (lower, upper);
        }
    }
    (lower, vec![0xFF])
}

fn kv_from_row(row: &Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: key_from_blob(row.get(0)?)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        version: row.get(4)?,
    })
}

pub(super) fn get(conn: &Connection, key: &str) -> Result<Option<KeyValue>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT key, value, create_revision, mod_revision, version FROM kv WHERE key = ?1",
            [key.as_bytes()],
            kv_from_row,
        )
        .optional()?)
}

pub(super) fn list(
    conn: &mut Connection,
    prefix: &str,
) -> Result<(Vec<KeyValue>, Revision), StoreError> {
    let (lower, upper) = prefix_range(prefix);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let revision = read_meta(&tx, META_REVISION)?;
    let kvs = {
        let mut stmt = tx.prepare_cached(
            "SELECT key, value, create_revision, mod_revision, version FROM kv
             WHERE key >= ?1 AND key < ?2 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![lower, upper], kv_from_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.commit()?;
    Ok((kvs, revision))
}

/// Where a replay stands: the next log row wanted is the first at or after `(revision, seq)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursor {
    pub(super) revision: Revision,
    pub(super) seq: u64,
}

/// Up to `limit` logged events under `prefix`, from `cursor` to `upto` inclusive, in order,
/// each with its seq within its revision. Fails with `Compacted` if rows the cursor still
/// needs may have been compacted away.
pub(super) fn replay_page(
    conn: &Connection,
    prefix: &str,
    cursor: Cursor,
    upto: Revision,
    limit: usize,
) -> Result<Vec<(u64, Event)>, StoreError> {
    let compacted = read_meta(conn, META_COMPACTED)?;
    if cursor.revision < compacted {
        return Err(StoreError::Compacted {
            requested: cursor.revision,
            oldest: compacted,
        });
    }
    let (lower, upper) = prefix_range(prefix);
    let mut stmt = conn.prepare_cached(
        "SELECT revision, kind, key, value, create_revision, version, seq FROM log
         WHERE (revision > ?1 OR (revision = ?1 AND seq >= ?2)) AND revision <= ?3
           AND key >= ?4 AND key < ?5
         ORDER BY revision, seq LIMIT ?6",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(
        params![cursor.revision, cursor.seq, upto, lower, upper, limit],
        |row| {
            let revision: Revision = row.get(0)?;
            let kind: u8 = row.get(1)?;
            let key = key_from_blob(row.get(2)?)?;
            let seq: u64 = row.get(6)?;
            let event = if kind == KIND_DELETE {
                Event::delete(key, revision)
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key,
                        value: row.get(3)?,
                        create_revision: row.get(4)?,
                        mod_revision: revision,
                        version: row.get(5)?,
                    },
                }
            };
            Ok((seq, event))
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn compact(conn: &mut Connection, revision: Revision) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = read_meta(&tx, META_REVISION)?;
    if revision > current {
        return Err(StoreError::FutureRevision {
            requested: revision,
            current,
        });
    }
    let compacted = read_meta(&tx, META_COMPACTED)?;
    if revision <= compacted {
        return Ok(());
    }
    tx.execute("DELETE FROM log WHERE revision < ?1", [revision])?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = ?2",
        params![revision, META_COMPACTED],
    )?;
    tx.commit()?;
    Ok(())
}

/// One write transaction. Changes made through it carry `next_revision()`; `commit` stores
/// them (and advances the revision) only if there was at least one.
pub(super) struct Writer<'c> {
    tx: Transaction<'c>,
    current: Revision,
    events: Vec<Event>,
}

impl<'c> Writer<'c> {
    pub(super) fn begin(conn: &'c mut Connection) -> Result<Self, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = read_meta(&tx, META_REVISION)?;
        Ok(Self {
            tx,
            current,
            events: Vec::new(),
        })
    }

    /// The revision before this transaction.
    pub(super) fn current_revision(&self) -> Revision {
        self.current
    }

    /// The revision this transaction's changes carry.
    pub(super) fn next_revision(&self) -> Revision {
        self.current + 1
    }

    pub(super) fn has_changes(&self) -> bool {
        !self.events.is_empty()
    }

    /// The key's `mod_revision`, 0 if absent.
    pub(super) fn mod_revision(&self, key: &str) -> Result<Revision, StoreError> {
        Ok(self
            .tx
            .query_row(
                "SELECT mod_revision FROM kv WHERE key = ?1",
                [key.as_bytes()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    fn log(&self, kind: u8, kv: &KeyValue) -> Result<(), StoreError> {
        let seq = self.events.len() as u64;
        self.tx
            .prepare_cached(
                "INSERT INTO log (revision, seq, kind, key, value, create_revision, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                kv.mod_revision,
                seq,
                kind,
                kv.key.as_bytes(),
                kv.value,
                kv.create_revision,
                kv.version
            ])?;
        Ok(())
    }

    pub(super) fn put(&mut self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let revision = self.next_revision();
        let existing: Option<(Revision, u64)> = self
            .tx
            .query_row(
                "SELECT create_revision, version FROM kv WHERE key = ?1",
                [key.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (create_revision, version) = match existing {
            Some((create, version)) => (create, version + 1),
            None => (revision, 1),
        };
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
            version,
        };
        self.tx
            .prepare_cached(
                "INSERT INTO kv (key, value, create_revision, mod_revision, version)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                   mod_revision = excluded.mod_revision, version = excluded.version",
            )?
            .execute(params![
                kv.key.as_bytes(),
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version
            ])?;
        self.log(KIND_PUT, &kv)?;
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
        });
        Ok(())
    }

    /// Deletes the key; false (and no change) if it was absent.
    pub(super) fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let deleted = self
            .tx
            .prepare_cached("DELETE FROM kv WHERE key = ?1")?
            .execute([key.as_bytes()])?;
        if deleted == 0 {
            return Ok(false);
        }
        let event = Event::delete(key.to_owned(), self.next_revision());
        self.log(KIND_DELETE, &event.kv)?;
        self.events.push(event);
        Ok(true)
    }

    /// Commits; returns the batch to publish if anything changed. Without changes the
    /// transaction is rolled back and the revision stays.
    pub(super) fn commit(self) -> Result<Option<Batch>, StoreError> {
        if self.events.is_empty() {
            self.tx.rollback()?;
            return Ok(None);
        }
        let revision = self.next_revision();
        self.tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = ?2",
            params![revision, META_REVISION],
        )?;
        self.tx.commit()?;
        Ok(Some(Batch {
            revision,
            events: self.events,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_is_byte_wise() {
        assert_eq!(prefix_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(prefix_range(""), (vec![], vec![0xFF]));
        let (lo, hi) = prefix_range("/é");
        assert!(lo.as_slice() < "/é/x".as_bytes() && "/é/x".as_bytes() < hi.as_slice());
        assert!("/f".as_bytes() >= hi.as_slice() || "/f".as_bytes() < lo.as_slice());
    }
}
