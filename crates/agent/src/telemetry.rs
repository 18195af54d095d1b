//! The telemetry pipeline's agent side: samples collected per VM (statistics plus the guest's
//! processes, listeners and connections) wait in a bounded buffer and go to the server in
//! batches (`POST /v1/agent/telemetry`) once per interval.
//!
//! Memory is bounded: the buffer holds at most `--telemetry-buffer` samples; when the
//! server cannot be reached the oldest samples are dropped (and counted, and the count sent
//! with the next batch), never the newest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firefleet_api::{TelemetryBatch, TelemetrySample};
use firefleet_client::Client;

/// Most samples sent in one request.
pub const MAX_BATCH: usize = 256;

/// Samples waiting for upload.
#[derive(Debug)]
pub struct TelemetryBuffer {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    samples: VecDeque<TelemetrySample>,
    dropped: u64,
}

impl TelemetryBuffer {
    /// A buffer of at most `capacity` samples (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&self, sample: TelemetrySample) {
        let Ok(mut g) = self.inner.lock() else { return };
        while g.samples.len() >= self.capacity {
            g.samples.pop_front();
            g.dropped += 1;
        }
        g.samples.push_back(sample);
    }

    /// Takes up to `max` of the oldest samples and the count dropped since the last take.
    pub fn take(&self, max: usize) -> TelemetryBatch {
        let Ok(mut g) = self.inner.lock() else {
            return TelemetryBatch {
                samples: Vec::new(),
                dropped: 0,
            };
        };
        let n = g.samples.len().min(max);
        let samples = g.samples.drain(..n).collect();
        TelemetryBatch {
            samples,
            dropped: std::mem::take(&mut g.dropped),
        }
    }

    /// Puts back a batch that could not be sent, ahead of newer samples, as far as room allows
    /// (what does not fit is dropped and counted).
    pub fn put_back(&self, batch: TelemetryBatch) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.dropped += batch.dropped;
        for s in batch.samples.into_iter().rev() {
            if g.samples.len() >= self.capacity {
                g.dropped += 1;
                continue;
            }
            g.samples.push_front(s);
        }
    }

    /// Samples waiting.
    #[cfg(test)]
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.samples.len()).unwrap_or(0)
    }

    /// Whether nothing waits.
    #[cfg(test)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends what the buffer holds every `interval` until `shutdown` changes.
pub async fn upload(
    client: Client,
    buffer: Arc<TelemetryBuffer>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            let batch = buffer.take(MAX_BATCH);
            if batch.samples.is_empty() && batch.dropped == 0 {
                break;
            }
            let full = batch.samples.len() == MAX_BATCH;
            if let Err(e) = client.post_telemetry(&batch).await {
                tracing::debug!(error = %e, samples = batch.samples.len(), "telemetry upload failed; kept for later");
                buffer.put_back(batch);
                break;
            }
            if !full {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64) -> TelemetrySample {
        TelemetrySample {
            vm: "0c9b3ad5-8a4f-4c1e-9d8e-3e5b6f7a8b9c".parse().unwrap(),
            stats: firefleet_api::VmStats {
                collected_ms: n,
                ..Default::default()
            },
            guest: None,
        }
    }

    fn times(b: &TelemetryBatch) -> Vec<u64> {
        b.samples.iter().map(|s| s.stats.collected_ms).collect()
    }

    #[test]
    fn full_buffer_drops_the_oldest_and_counts() {
        let b = TelemetryBuffer::new(3);
        for n in 0..5 {
            b.push(sample(n));
        }
        let batch = b.take(10);
        assert_eq!(times(&batch), [2, 3, 4]);
        assert_eq!(batch.dropped, 2);
        assert!(b.is_empty());
        assert_eq!(b.take(10).dropped, 0, "the count is sent once");
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_within_capacity() {
        let b = TelemetryBuffer::new(4);
        for n in 0..3 {
            b.push(sample(n));
        }
        let batch = b.take(2);
        assert_eq!(times(&batch), [0, 1]);
        b.push(sample(3));
        b.push(sample(4));
        b.put_back(batch);
        // Room for one of the two: the newer of them stays, the older is dropped.
        let again = b.take(10);
        assert_eq!(times(&again), [1, 2, 3, 4]);
        assert_eq!(again.dropped, 1);
    }

    #[test]
    fn batches_are_cut_at_the_limit() {
        let b = TelemetryBuffer::new(1000);
        for n in 0..600 {
            b.push(sample(n));
        }
        assert_eq!(b.take(MAX_BATCH).samples.len(), MAX_BATCH);
        assert_eq!(b.len(), 600 - MAX_BATCH);
    }
}
