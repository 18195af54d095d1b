//! Failover between server replicas. A client holds every replica's URL and sends each request
//! to the current one; when that one cannot be reached (connection refused or reset, TLS
//! handshake cut, connect timeout, request timeout) or answers 503 (`not_leader`,
//! `store_unavailable`, a full queue: any 503), the request goes to the next one, round after
//! round with a short doubling backoff between rounds, until one answers or
//! [`Failover::budget`] (counted from the first failure) is spent; then the last error is returned inside
//! [`ClientError::NoServer`], which names every URL tried. A replica that answered (any status
//! but 503) becomes the current one for every clone of the client, until it fails in turn.
//!
//! What may be sent again ([`Replay`]) depends on the request: an idempotent one (GET, PUT,
//! DELETE, and the POSTs the server treats as desired-state writes) anywhere and any number of
//! times; any other POST only while no attempt can have been applied: the connection or its
//! TLS handshake failed, or the server answered 503 `not_leader` (a replica refuses a call only
//! the leader serves before it does anything). Creates of named objects are sent again too,
//! and resolve the conflict a lost first attempt leaves behind by name (see `vms.rs`). A
//! streamed body is sent again only while none of it was taken (see `migrations.rs`).
//!
//! With one URL nothing is retried: the one attempt's error is returned as it is.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use reqwest::{RequestBuilder, StatusCode};

use crate::transport::api_error;
use crate::{Client, ClientError};

/// How long a client keeps failing over, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// No new attempt starts this long after the first attempt failed (an attempt under way
    /// runs to its own timeout). Default 15 s.
    pub budget: Duration,
    /// Pause after the first round of servers that all failed; doubled after each further
    /// round. Default 100 ms.
    pub first_backoff: Duration,
    /// Longest pause between rounds. Default 1 s.
    pub max_backoff: Duration,
    /// Longest wait for a TCP connection and TLS handshake to a replica, with several (one
    /// server keeps 10 s). Default 3 s.
    pub connect_timeout: Duration,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            budget: Duration::from_secs(15),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// The error code of a replica's 503 for a call only the leader serves: answered before the
/// call does anything, so any request may be sent again.
pub(crate) const NOT_LEADER: &str = "not_leader";

/// Whether a request may be sent again after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Idempotent (or deduplicated by name): sent again after any failure that calls for
    /// failover.
    Always,
    /// Sent again only while no attempt can have been applied (a failed connection or TLS
    /// handshake, a 503 `not_leader`); a reset, a timeout or another 503 ends the call with
    /// that error.
    UnlessSent,
}

impl Replay {
    /// The rule for a method: GET, HEAD, PUT and DELETE are idempotent, POST is not (callers
    /// say [`Replay::Always`] for the POSTs that are).
    pub(crate) fn of(method: &reqwest::Method) -> Replay {
        use reqwest::Method;
        if [Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(method) {
            Replay::Always
        } else {
            Replay::UnlessSent
        }
    }

    /// Whether another attempt may follow one that failed (`sent`: it may have reached a
    /// server).
    fn allows_another(self, sent: bool) -> bool {
        match self {
            Replay::Always => true,
            Replay::UnlessSent => !sent,
        }
    }
}

/// The replicas' base URLs and which one is current, shared by a client's clones.
#[derive(Debug)]
pub(crate) struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Servers {
    /// The list (non-empty, checked by the caller); the first is current.
    pub(crate) fn new(urls: Vec<String>) -> Servers {
        Servers {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// Every base URL, in the order given.
    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The index of the current server.
    fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.urls.len()
    }

    /// Server `i` answered: it is the current one.
    fn answered(&self, i: usize) {
        self.current.store(i, Ordering::Relaxed);
    }

    /// Server `i` failed: if it is still the current one, the next one is (a request that
    /// failed at the same time on the same server does not skip one more).
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.urls.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A request that a server answered (any status but a 503 that failover skipped).
pub(crate) struct Answered {
    /// The URL it was sent to.
    pub(crate) url: String,
    /// The answer, its body unread.
    pub(crate) response: reqwest::Response,
}

/// What the attempts of one call did, beyond their result.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    /// An attempt that failed may have reached a server (and been applied) before the one
    /// that gave the result.
    pub(crate) maybe_applied_before: bool,
}

impl Client {
    /// Sends the request `build` makes for each attempt (from the HTTP client and the full URL
    /// of `path` on one replica), failing over as the module doc says; returns the first
    /// answer that is not a skipped 503.
    pub(crate) async fn send<F>(
        &self,
        path: &str,
        replay: Replay,
        attempts: &mut Attempts,
        build: F,
    ) -> Result<Answered, ClientError>
    where
        F: Fn(&reqwest::Client, &str) -> Result<RequestBuilder, ClientError>,
    {
        let servers = &self.servers;
        let n = servers.urls().len();
        let http = self.http();
        let first = servers.current();
        let started = Instant::now();
        // Set when the first attempt fails: a long-poll or an upload that ran long before its
        // replica died still gets the whole budget to reach another.
        let mut deadline: Option<Instant> = None;
        let mut backoff = self.failover.first_backoff;
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0usize;
        let last = loop {
            let i = (first + attempt) % n;
            let base = &servers.urls()[i];
            let url = format!("{base}{path}");
            let req = build(&http, &url)?;
            let failure = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && n > 1 => {
                    let body = resp.bytes().await.unwrap_or_default();
                    let error = api_error(StatusCode::SERVICE_UNAVAILABLE.as_u16(), &body);
                    let sent =
                        !matches!(&error, ClientError::Api { code, .. } if code == NOT_LEADER);
                    Failure { error, sent }
                }
                Ok(response) => {
                    servers.answered(i);
                    return Ok(Answered { url, response });
                }
                Err(source) => {
                    let sent = !source.is_connect();
                    let error = ClientError::Transport {
                        url: url.clone(),
                        source,
                    };
                    if n == 1 {
                        return Err(error);
                    }
                    Failure { error, sent }
                }
            };
            servers.failed(i);
            if !tried.contains(base) {
                tried.push(base.clone());
            }
            if !replay.allows_another(failure.sent) {
                return Err(failure.error);
            }
            attempts.maybe_applied_before |= failure.sent;
            attempt += 1;
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.failover.budget);
            if now >= deadline {
                break failure.error;
            }
            if attempt.is_multiple_of(n) {
                // A whole round failed (an election, a lost quorum): wait a little.
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(self.failover.max_backoff);
                if Instant::now() >= deadline {
                    break failure.error;
                }
            }
        };
        Err(ClientError::NoServer {
            tried,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            source: Box::new(last),
        })
    }
}

impl Client {
    /// `POST path` creating an object unique by name (a VM per tenant, a snapshot per VM):
    /// sent again on another replica after any failure that calls for failover. When an
    /// attempt may have been applied before the one that answered, and that answer is a
    /// refusal (4xx: the name is taken, or a quota the lost attempt used up), `made` looks for
    /// the object that attempt would have made; found, it is the result (with no headers),
    /// else the refusal stands.
    pub(crate) async fn create_named<B, T, F, Fut>(
        &self,
        path: &str,
        body: &B,
        made: F,
    ) -> Result<(T, reqwest::header::HeaderMap), ClientError>
    where
        B: serde::Serialize,
        T: serde::de::DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let mut attempts = Attempts::default();
        let refusal = match self
            .exchange::<B, T>(
                reqwest::Method::POST,
                path,
                Some(body),
                Replay::Always,
                &mut attempts,
            )
            .await
        {
            Ok((Some(t), headers)) => return Ok((t, headers)),
            Ok((None, _)) => return Err(crate::transport::empty_body(path.to_owned())),
            Err(e) => e,
        };
        let refused =
            matches!(refusal, ClientError::Api { status, .. } if (400..500).contains(&status));
        if !(attempts.maybe_applied_before && refused) {
            return Err(refusal);
        }
        match made().await {
            Some(t) => Ok((t, reqwest::header::HeaderMap::new())),
            None => Err(refusal),
        }
    }
}

/// An attempt that calls for failover.
struct Failure {
    error: ClientError,
    /// It may have been applied.
    sent: bool,
}

/// Parses a comma-separated list of server URLs (`https://host:port`, a trailing `/` allowed,
/// no path, query or credentials), as `--server` and `FIREFLEET_SERVER` take it; the error
/// names the entry at fault. Duplicates are dropped.
pub fn parse_server_list(list: &str) -> Result<Vec<String>, ClientError> {
    let mut out: Vec<String> = Vec::new();
    for entry in list.split(',') {
        let entry = entry.trim();
        let url = parse_server(entry)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    Ok(out)
}

/// One server URL, checked, as `https://host[:port]` without a trailing slash.
fn parse_server(entry: &str) -> Result<String, ClientError> {
    let bad = || ClientError::BadServer(entry.to_owned());
    if entry.is_empty() {
        return Err(bad());
    }
    let url = reqwest::Url::parse(entry).map_err(|_| bad())?;
    let plain = url.scheme() == "https"
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && (url.path().is_empty() || url.path() == "/")
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(bad());
    }
    Ok(entry.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_parse_into_plain_urls() {
        assert_eq!(
            parse_server_list("https://a:7443, https://b:7443/,https://10.0.0.3:7443").unwrap(),
            vec!["https://a:7443", "https://b:7443", "https://10.0.0.3:7443"]
        );
        assert_eq!(
            parse_server_list("https://a:1,https://a:1").unwrap(),
            vec!["https://a:1"]
        );
        assert_eq!(
            parse_server_list("https://[::1]:7443").unwrap(),
            vec!["https://[::1]:7443"]
        );
    }

    #[test]
    fn a_bad_entry_is_named() {
        for (list, bad) in [
            ("https://a:1,http://b:2", "http://b:2"),
            ("https://a:1,,https://c:3", ""),
            ("https://a:1/api", "https://a:1/api"),
            ("https://u:p@a:1", "https://u:p@a:1"),
            ("a:1", "a:1"),
            ("https://a:99999", "https://a:99999"),
        ] {
            match parse_server_list(list) {
                Err(ClientError::BadServer(s)) => assert_eq!(s, bad, "{list}"),
                other => panic!("{list}: {other:?}"),
            }
        }
    }

    #[test]
    fn posts_are_not_replayed_once_sent_unless_said_so() {
        assert_eq!(Replay::of(&reqwest::Method::GET), Replay::Always);
        assert_eq!(Replay::of(&reqwest::Method::PUT), Replay::Always);
        assert_eq!(Replay::of(&reqwest::Method::DELETE), Replay::Always);
        assert_eq!(Replay::of(&reqwest::Method::POST), Replay::UnlessSent);
        assert!(Replay::UnlessSent.allows_another(false));
        assert!(!Replay::UnlessSent.allows_another(true));
        assert!(Replay::Always.allows_another(true));
    }

    #[test]
    fn a_failed_server_hands_over_once() {
        let s = Servers::new(vec![
            "https://a".into(),
            "https://b".into(),
            "https://c".into(),
        ]);
        assert_eq!(s.current(), 0);
        s.failed(0);
        // A second request that failed on a at the same time does not skip b.
        s.failed(0);
        assert_eq!(s.current(), 1);
        s.answered(2);
        assert_eq!(s.current(), 2);
        s.failed(2);
        assert_eq!(s.current(), 0);
    }
}
