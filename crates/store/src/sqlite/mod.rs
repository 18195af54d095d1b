//! The embedded backend: one SQLite file in WAL mode.
//!
//! Tables: `kv` (current state), `log` (one row per change, the history watches replay;
//! compaction deletes old rows) and `meta` (the current revision and the compaction point,
//! updated in the same transaction as the changes). Every write is one `BEGIN IMMEDIATE`
//! transaction, committed with `synchronous=FULL`, so a write that returned `Ok` survives a
//! crash. The connection sits behind a mutex and is only used from
//! [`tokio::task::spawn_blocking`] threads. Committed changes are published, still under the
//! mutex and so in revision order, on a broadcast channel that live watches follow.

mod ops;
mod schema;
mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::broadcast;

use crate::{
    validate_key, validate_prefix, validate_put, validate_txn, Compare, KeyValue, KvStore, Op,
    Revision, StoreError, TxnResponse, Watch,
};
use ops::{Batch, Writer};

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// How long to wait for the file lock (held by another process) before failing.
    pub busy_timeout: Duration,
    /// Events buffered per watch between the store and the watch's reader.
    pub watch_buffer: usize,
    /// Committed writes buffered for live watches. A watch more than this many writes behind
    /// is ended with [`StoreError::WatchLagged`].
    pub live_buffer: usize,
    /// Log rows read per step while a watch replays history.
    pub replay_page: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            watch_buffer: 1024,
            live_buffer: 1024,
            replay_page: 512,
        }
    }
}

/// What live watches receive.
#[derive(Debug, Clone)]
enum Notice {
    Batch(Arc<Batch>),
    Closed,
}

struct Inner {
    /// `None` once closed.
    conn: Mutex<Option<Connection>>,
    live: broadcast::Sender<Notice>,
    config: SqliteConfig,
}

/// The SQLite-backed [`KvStore`]. Cloning shares the same open store.
///
/// The file is locked exclusively while open: one process owns a store. Its async methods
/// must run inside a tokio runtime (they use `spawn_blocking`; watches spawn a task).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file if needed. Blocks on file I/O: call it
    /// before starting the runtime or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// [`SqliteStore::open`] with explicit tuning.
    pub fn open_with(path: &Path, config: SqliteConfig) -> Result<Self, StoreError> {
        let config = SqliteConfig {
            watch_buffer: config.watch_buffer.max(1),
            live_buffer: config.live_buffer.max(1),
            replay_page: config.replay_page.max(1),
            ..config
        };
        let conn = schema::open(path, config.busy_timeout)?;
        let (live, _) = broadcast::channel(config.live_buffer);
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(Some(conn)),
                live,
                config,
            }),
        })
    }

    /// Closes the database (releasing the file lock). Later calls fail with
    /// [`StoreError::Closed`]; live watches end with it. Closing twice is a no-op.
    pub async fn close(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let closed = tokio::task::spawn_blocking(move || {
            let mut guard = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            let result = match guard.take() {
                Some(conn) => conn.close().map_err(|(_, e)| StoreError::from(e)),
                None => Ok(()),
            };
            let _ = inner.live.send(Notice::Closed);
            result
        })
        .await;
        closed.map_err(join_error)?
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        with_conn(&self.inner, move |conn, live| {
            let mut writer = Writer::begin(conn)?;
            let out = f(&mut writer)?;
            if let Some(batch) = writer.commit()? {
                // Published under the connection lock: live watches see revisions in order.
                // No receiver is not an error.
                let _ = live.send(Notice::Batch(Arc::new(batch)));
            }
            Ok(out)
        })
        .await
    }
}

fn join_error(err: tokio::task::JoinError) -> StoreError {
    if err.is_cancelled() {
        StoreError::Closed
    } else {
        StoreError::backend(err)
    }
}

/// Runs `f` on a blocking thread with the connection locked.
async fn with_conn<T, F>(inner: &Arc<Inner>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection, &broadcast::Sender<Notice>) -> Result<T, StoreError>
        + Send
        + 'static,
{
    let inner = Arc::clone(inner);
    tokio::task::spawn_blocking(move || {
        // A panic under the lock unwound through rusqlite's Transaction, which rolled back:
        // the connection is consistent, so a poisoned lock is still usable.
        let mut guard = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        f(conn, &inner.live)
    })
    .await
    .map_err(join_error)?
}

#[async_trait]
impl KvStore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        with_conn(&self.inner, move |conn, _| ops::get(conn, &key)).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_owned();
        with_conn(&self.inner, move |conn, _| ops::list(conn, &prefix)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        validate_put(key, &value)?;
        let key = key.to_owned();
        self.write(move |w| {
            w.put(&key, value)?;
            Ok(w.next_revision())
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        validate_put(key, &value)?;
        let key = key.to_owned();
        self.write(move |w| {
            let actual = w.mod_revision(&key)?;
            if actual != expected_mod_revision {
                return Err(StoreError::Conflict {
                    key,
                    expected: expected_mod_revision,
                    actual,
                });
            }
            w.put(&key, value)?;
            Ok(w.next_revision())
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.write(move |w| {
            if let Some(expected) = expected_mod_revision {
                let actual = w.mod_revision(&key)?;
                if actual != expected {
                    return Err(StoreError::Conflict {
                        key,
                        expected,
                        actual,
                    });
                }
            }
            Ok(w.delete(&key)?.then(|| w.next_revision()))
        })
        .await
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse, StoreError> {
        validate_txn(&compares, &success, &failure)?;
        self.write(move |w| {
            let mut succeeded = true;
            for compare in &compares {
                if !compare.holds(w.mod_revision(compare.key())?) {
                    succeeded = false;
                    break;
                }
            }
            for op in if succeeded { success } else { failure } {
                match op {
                    Op::Put { key, value } => w.put(&key, value)?,
                    Op::Delete { key } => {
                        w.delete(&key)?;
                    }
                }
            }
            let revision = if w.has_changes() {
                w.next_revision()
            } else {
                w.current_revision()
            };
            Ok(TxnResponse {
                succeeded,
                revision,
            })
        })
        .await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        with_conn(&self.inner, |conn, _| {
            ops::read_meta(conn, ops::META_REVISION)
        })
        .await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<Watch, StoreError> {
        validate_prefix(prefix)?;
        watch::start(&self.inner, prefix.to_owned(), from_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        with_conn(&self.inner, move |conn, _| ops::compact(conn, revision)).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        SqliteStore::close(self).await
    }
}

#[cfg(test)]
mod tests;
