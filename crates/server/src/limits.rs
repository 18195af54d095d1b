//! Bounds on what any caller can hold: connections (in all, per client address), time (TLS
//! handshake, request headers, idle keep-alive) and request rate (per token, per anonymous
//! address). Every table here is bounded, so a flood of distinct callers costs memory that does
//! not grow past the bound.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the server allows one caller and all of them (`firefleet server --max-connections`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open connections in all; past this, new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
    /// A TLS handshake, and each request's headers, must arrive within this.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Requests per second one bearer token (or one anonymous client address) may make, on
    /// average; past `burst`, a 429 with `Retry-After`.
    pub requests_per_sec: f64,
    /// Requests a token may make at once after a quiet spell.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_client: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            requests_per_sec: 100.0,
            burst: 200.0,
        }
    }
}

/// Open connections, in all and per client address.
pub(crate) struct Connections {
    all: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    max_per_client: usize,
}

/// Held while a connection is open; frees its places when dropped.
pub(crate) struct ConnectionPermit {
    _all: OwnedSemaphorePermit,
    owner: Arc<Connections>,
    client: IpAddr,
}

impl Connections {
    pub(crate) fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            all: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_client: Mutex::new(HashMap::new()),
            max_per_client: limits.max_connections_per_client.max(1),
        })
    }

    /// A place for a new connection from `client`, or None when the server or that client is
    /// at its limit. (The per-client table has one entry per client with an open connection,
    /// so it is bounded by `max_connections`.)
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionPermit> {
        let all = self.all.clone().try_acquire_owned().ok()?;
        let mut per = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(client).or_default();
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        Some(ConnectionPermit {
            _all: all,
            owner: self.clone(),
            client,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per = self
            .owner
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.client);
            }
        }
    }
}

/// The most callers whose rate is tracked at once; past it the fullest buckets (those that
/// have been quiet longest) are forgotten, which only ever lets a caller through.
const MAX_BUCKETS: usize = 16_384;

/// Token buckets, one per caller key (a token's id, or `ip:<address>`).
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            rate: limits.requests_per_sec.max(0.001),
            burst: limits.burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; Err(seconds until one is available) when empty.
    pub(crate) fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            // Forget every bucket that would be full by now (quiet callers).
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let refilled = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(((1.0 - refilled) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: usize, all: usize) -> Limits {
        Limits {
            max_connections: all,
            max_connections_per_client: per_client,
            requests_per_sec: 2.0,
            burst: 3.0,
            ..Limits::default()
        }
    }

    #[test]
    fn a_client_past_its_connection_limit_is_refused_until_one_closes() {
        let c = Connections::new(&limits(2, 10));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = c.admit(a).unwrap();
        let _p2 = c.admit(a).unwrap();
        assert!(c.admit(a).is_none());
        assert!(c.admit(b).is_some(), "another client is not held back");
        drop(p1);
        assert!(c.admit(a).is_some());
    }

    #[test]
    fn the_server_wide_limit_holds_across_clients() {
        let c = Connections::new(&limits(10, 2));
        let _a = c.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _b = c.admit("10.0.0.2".parse().unwrap()).unwrap();
        assert!(c.admit("10.0.0.3".parse().unwrap()).is_none());
        assert_eq!(c.per_client.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let r = RateLimiter::new(&limits(1, 1));
        let t0 = Instant::now();
        for _ in 0..3 {
            r.take("k", t0).unwrap();
        }
        assert_eq!(r.take("k", t0), Err(1));
        assert!(r.take("other", t0).is_ok(), "buckets are per key");
        r.take("k", t0 + Duration::from_millis(600)).unwrap();
        assert!(r.take("k", t0 + Duration::from_millis(600)).is_err());
    }

    #[test]
    fn the_bucket_table_stays_bounded() {
        let r = RateLimiter::new(&limits(1, 1));
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 10) {
            let _ = r.take(&format!("k{i}"), t0);
        }
        assert!(r.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
