//! Watches: an etcd watch on the prefix's range, resumed after a broken connection.
//!
//! `start` first checks, with a range read at the start revision, that the history is still
//! there (etcd answers "compacted" if not; the oldest revision is then read from a watch's
//! compaction notice), opens the etcd watch and waits for etcd to confirm it, then hands it to
//! a task. The task forwards events into a bounded channel (the reader's pace holds back the
//! stream: etcd's flow control does the rest). It remembers the etcd revision of the last
//! event it delivered and how many events of that revision it delivered (a revision's events
//! may come in several fragments); when the stream breaks (a member died, lost its leader
//! — watches carry require-leader so such a member ends them —, or the connection dropped) it
//! opens a new watch from that revision, on whichever member answers, and skips the events it
//! already delivered: no gap, no duplicate. It retries with backoff and ends with
//! `Unavailable` only after [`super::EtcdConfig::watch_outage_limit`] without a healthy stream.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::{chain, Failure};
use super::Inner;
use crate::{Event, EventKind, Revision, StoreError, Watch};

type Sink = mpsc::Sender<Result<Event, StoreError>>;

/// A stream that lived this long counts as healthy: its end starts a new outage.
const HEALTHY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Returns once the store is closed (or its sender is gone).
async fn until_closed(closed: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await.map(|_| ());
}

pub(super) async fn start(
    inner: &Arc<Inner>,
    prefix: &str,
    from_revision: Revision,
) -> Result<Watch, StoreError> {
    let from = from_revision.max(1);
    let etcd_from = inner.revisions.to_etcd(from);
    let (key, end) = inner.keys.range(prefix);

    let probe = inner
        .call(|mut c| {
            let (key, end) = (key.clone(), end.clone());
            async move {
                let options = GetOptions::new()
                    .with_range(end)
                    .with_revision(etcd_from)
                    .with_count_only();
                c.kv.get(key, Some(options)).await
            }
        })
        .await;
    match probe {
        Ok(_) | Err(Failure::FutureRevision) => {}
        Err(Failure::Compacted) => {
            let oldest = compaction_point(inner, &key, &end, etcd_from).await?;
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        Err(failure) => return Err(inner.error("watch", failure)),
    }

    let stream = inner
        .call(|c| open(c, key.clone(), end.clone(), etcd_from))
        .await
        .map_err(|f| inner.error("watch", f))?;
    let (sink, rx) = mpsc::channel(inner.config.watch_buffer);
    let task = Task {
        inner: Arc::clone(inner),
        key,
        end,
        resume: Resume {
            revision: etcd_from,
            delivered: 0,
        },
        sink,
    };
    tokio::spawn(task.run(stream));
    Ok(Watch::new(rx))
}

/// Opens an etcd watch of `[key, end)` from etcd revision `from` and waits for etcd to
/// confirm it.
async fn open(
    mut clients: super::Clients,
    key: Vec<u8>,
    end: Vec<u8>,
    from: i64,
) -> Result<WatchStream, etcd_client::Error> {
    let options = WatchOptions::new()
        .with_range(end)
        .with_start_revision(from)
        .with_fragment();
    let mut stream = clients.watch.watch(key, Some(options)).await?;
    match stream.message().await? {
        Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
        Some(resp) => Err(etcd_client::Error::WatchError(format!(
            "etcd refused the watch: {}",
            resp.cancel_reason()
        ))),
        None => Err(etcd_client::Error::WatchError(
            "the watch stream ended before etcd confirmed it".into(),
        )),
    }
}

/// The compaction point, read from the notice etcd sends a watch from below it.
async fn compaction_point(
    inner: &Inner,
    key: &[u8],
    end: &[u8],
    etcd_from: i64,
) -> Result<Revision, StoreError> {
    let compact_revision = inner
        .call(|c| {
            let (key, end) = (key.to_vec(), end.to_vec());
            async move {
                let mut stream = open(c, key, end, etcd_from).await?;
                loop {
                    match stream.message().await? {
                        Some(resp) if resp.compact_revision() != 0 => {
                            return Ok(resp.compact_revision())
                        }
                        Some(_) => continue,
                        None => {
                            return Err(etcd_client::Error::WatchError(
                                "the watch ended without a compaction notice".into(),
                            ))
                        }
                    }
                }
            }
        })
        .await
        .map_err(|f| inner.error("watch", f))?;
    inner.revisions.to_store(compact_revision)
}

/// Where to resume: the etcd revision of the last delivered event and how many of that
/// revision's events were delivered (0 before the first event: resume at the start).
#[derive(Debug, Clone, Copy)]
struct Resume {
    revision: i64,
    delivered: usize,
}

/// Why a stream stopped.
enum Stop {
    /// The watch is over (reader gone, error delivered, store closed).
    Ended,
    /// The stream broke; resume elsewhere.
    Broken(String),
}

struct Task {
    inner: Arc<Inner>,
    key: Vec<u8>,
    end: Vec<u8>,
    resume: Resume,
    sink: Sink,
}

impl Task {
    async fn run(mut self, mut stream: WatchStream) {
        let mut outage_since: Option<Instant> = None;
        loop {
            let connected_at = Instant::now();
            let (stop, delivered_any) = self.pump(&mut stream).await;
            let reason = match stop {
                Stop::Ended => return,
                Stop::Broken(reason) => reason,
            };
            if delivered_any || connected_at.elapsed() >= HEALTHY {
                outage_since = None;
            }
            let since = *outage_since.get_or_insert_with(Instant::now);
            match self.reconnect(since, reason).await {
                Some(next) => stream = next,
                None => return,
            }
        }
    }

    /// Opens a new stream from the resume point, retrying with backoff; `None` when the
    /// watch ended instead (outage too long, store closed, reader gone).
    async fn reconnect(&mut self, since: Instant, mut reason: String) -> Option<WatchStream> {
        let mut backoff = BACKOFF_MIN;
        let mut closed = self.inner.closed.subscribe();
        loop {
            if since.elapsed() >= self.inner.config.watch_outage_limit {
                let reason = format!(
                    "etcd at {} gave no working watch for {:?}: {reason}",
                    self.inner.config.endpoints_display(),
                    self.inner.config.watch_outage_limit
                );
                self.end(StoreError::Unavailable { reason }).await;
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = until_closed(&mut closed) => {
                    self.end(StoreError::Closed).await;
                    return None;
                }
                _ = self.sink.closed() => return None,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let (key, end, from) = (self.key.clone(), self.end.clone(), self.resume.revision);
            match self
                .inner
                .call(|c| open(c, key.clone(), end.clone(), from))
                .await
            {
                Ok(stream) => return Some(stream),
                Err(Failure::Closed) => {
                    self.end(StoreError::Closed).await;
                    return None;
                }
                Err(Failure::Compacted) => {
                    self.compacted(None).await;
                    return None;
                }
                Err(failure) => reason = chain(&self.inner.error("watch", failure)),
            }
        }
    }

    /// Forwards the stream's events until it stops; also says whether it delivered any.
    async fn pump(&mut self, stream: &mut WatchStream) -> (Stop, bool) {
        let mut closed = self.inner.closed.subscribe();
        // Events of the resume revision still to skip (delivered before the break).
        let mut skip = self.resume.delivered;
        let mut delivered_any = false;
        loop {
            let message = tokio::select! {
                biased;
                _ = until_closed(&mut closed) => {
                    self.end(StoreError::Closed).await;
                    return (Stop::Ended, delivered_any);
                }
                _ = self.sink.closed() => return (Stop::Ended, delivered_any),
                message = stream.message() => message,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return (Stop::Broken("the watch stream ended".into()), delivered_any),
                Err(err) => return (Stop::Broken(chain(&err)), delivered_any),
            };
            if resp.compact_revision() != 0 {
                self.compacted(Some(resp.compact_revision())).await;
                return (Stop::Ended, delivered_any);
            }
            if resp.canceled() {
                let reason = format!("etcd ended the watch: {}", resp.cancel_reason());
                return (Stop::Broken(reason), delivered_any);
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                if revision < self.resume.revision {
                    continue;
                }
                if revision == self.resume.revision && skip > 0 {
                    skip -= 1;
                    continue;
                }
                let item = self.event(event.event_type(), kv);
                let failed = item.is_err();
                if self.sink.send(item).await.is_err() {
                    return (Stop::Ended, delivered_any);
                }
                if failed {
                    return (Stop::Ended, delivered_any);
                }
                delivered_any = true;
                if revision == self.resume.revision {
                    self.resume.delivered += 1;
                } else {
                    self.resume = Resume {
                        revision,
                        delivered: 1,
                    };
                    skip = 0;
                }
            }
        }
    }

    fn event(&self, kind: EventType, kv: &etcd_client::KeyValue) -> Result<Event, StoreError> {
        match kind {
            EventType::Put => Ok(Event {
                kind: EventKind::Put,
                kv: self.inner.key_value(kv.clone())?,
            }),
            EventType::Delete => Ok(Event::delete(
                self.inner.keys.user_key(kv.key())?,
                self.inner.revisions.to_store(kv.mod_revision())?,
            )),
        }
    }

    /// Ends the watch with `Compacted`; `oldest` is the etcd compaction point, when known.
    async fn compacted(&self, compact_revision: Option<i64>) {
        let requested = self.next_revision();
        let oldest = match compact_revision {
            Some(revision) => self.inner.revisions.to_store(revision),
            None => compaction_point(&self.inner, &self.key, &self.end, self.resume.revision).await,
        };
        let err = match oldest {
            Ok(oldest) => StoreError::Compacted { requested, oldest },
            Err(err) => err,
        };
        self.end(err).await;
    }

    /// The store revision the reader would watch again from.
    fn next_revision(&self) -> Revision {
        self.inner
            .revisions
            .to_store(self.resume.revision)
            .unwrap_or(0)
            .max(1)
    }

    /// Delivers the error that ends the watch (unless the reader is gone).
    async fn end(&self, err: StoreError) {
        let _ = self.sink.send(Err(err)).await;
    }
}
