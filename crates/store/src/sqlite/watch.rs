//! Watches: replay the log, then follow the live broadcast without gaps or duplicates.
//!
//! The broadcast receiver is subscribed under the connection lock, in the same step that
//! reads the current revision `R`: every write up to `R` is in the log, every later one will
//! arrive on the receiver. The watch task replays `[from, R]` from the log page by page, then
//! forwards live batches with revision `> R`. Memory is bounded: the task's output channel
//! holds at most `watch_buffer` events, and the broadcast ring `live_buffer` writes; a watch
//! that falls further behind than that is ended with `WatchLagged`.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::ops::{self, Cursor};
use super::{with_conn, Inner, Notice};
use crate::{Event, Revision, StoreError, Watch};

type Sink = mpsc::Sender<Result<Event, StoreError>>;

pub(super) async fn start(
    inner: &Arc<Inner>,
    prefix: String,
    from_revision: Revision,
) -> Result<Watch, StoreError> {
    let from = from_revision.max(1);
    let (live, current) = with_conn(inner, move |conn, live| {
        let compacted = ops::read_meta(conn, ops::META_COMPACTED)?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: compacted,
            });
        }
        let current = ops::read_meta(conn, ops::META_REVISION)?;
        Ok((live.subscribe(), current))
    })
    .await?;
    let (sink, rx) = mpsc::channel(inner.config.watch_buffer);
    // Only a replay needs the connection; a live-only watch must not keep the store open.
    let replay_from = (from <= current).then(|| Arc::clone(inner));
    tokio::spawn(async move {
        let mut next = from;
        if let Some(inner) = replay_from {
            if !replay(&inner, &prefix, from, current, &sink).await {
                return;
            }
            next = current + 1;
        }
        follow(live, &prefix, next, &sink).await;
    });
    Ok(Watch::new(rx))
}

/// Sends the logged events in `[from, upto]`; false if the watch ended (error or reader gone).
async fn replay(
    inner: &Arc<Inner>,
    prefix: &str,
    from: Revision,
    upto: Revision,
    sink: &Sink,
) -> bool {
    let page_len = inner.config.replay_page;
    let mut cursor = Cursor {
        revision: from,
        seq: 0,
    };
    loop {
        let page_prefix = prefix.to_owned();
        let page = with_conn(inner, move |conn, _| {
            ops::replay_page(conn, &page_prefix, cursor, upto, page_len)
        })
        .await;
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                let _ = sink.send(Err(err)).await;
                return false;
            }
        };
        let full = page.len() == page_len;
        for (seq, event) in page {
            cursor = Cursor {
                revision: event.revision(),
                seq: seq + 1,
            };
            if sink.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

/// Forwards live batches with revision `>= next` until the reader goes away or the stream
/// has to end.
async fn follow(
    mut live: broadcast::Receiver<Notice>,
    prefix: &str,
    mut next: Revision,
    sink: &Sink,
) {
    loop {
        let notice = tokio::select! {
            _ = sink.closed() => return,
            notice = live.recv() => notice,
        };
        let end = match notice {
            Ok(Notice::Batch(batch)) => {
                if batch.revision < next {
                    continue;
                }
                for event in batch.events.iter().filter(|e| e.kv.key.starts_with(prefix)) {
                    if sink.send(Ok(event.clone())).await.is_err() {
                        return;
                    }
                }
                next = batch.revision + 1;
                continue;
            }
            Ok(Notice::Closed) | Err(broadcast::error::RecvError::Closed) => StoreError::Closed,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                StoreError::WatchLagged { resume_from: next }
            }
        };
        let _ = sink.send(Err(end)).await;
        return;
    }
}
