//! The stream a watch returns.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::{Event, StoreError};

/// A stream of events under a prefix, in revision order, without gaps or duplicates.
///
/// The stream ends (`None`) after an error item: [`StoreError::WatchLagged`] when the watcher
/// fell too far behind, [`StoreError::Compacted`] when history it still needed was compacted
/// away, [`StoreError::Closed`] when the store was closed. Dropping the `Watch` cancels it.
/// Also usable as a [`futures::Stream`].
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<Event, StoreError>>,
}

impl Watch {
    /// Wraps the receiving end of a bounded channel fed by a backend.
    pub fn new(rx: mpsc::Receiver<Result<Event, StoreError>>) -> Self {
        Self { rx }
    }

    /// The next event, an error that ends the stream, or `None` once it has ended.
    pub async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        self.rx.recv().await
    }
}

impl futures::Stream for Watch {
    type Item = Result<Event, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
