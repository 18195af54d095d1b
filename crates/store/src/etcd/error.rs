//! The etcd backend's own errors, and how etcd's answers map onto [`StoreError`].
//!
//! "Retry later" answers (no leader, no quorum, leader changed, too many requests, a member
//! unreachable, a call past its deadline) become [`StoreError::Unavailable`]; everything else
//! that is not a store-level outcome becomes [`StoreError::Backend`] with an [`EtcdError`].

use std::path::PathBuf;

use crate::StoreError;

/// What went wrong talking to etcd, beyond the store-level outcomes of [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An `etcd://` URL that cannot be used.
    #[error("invalid etcd URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An endpoint of [`super::EtcdConfig::endpoints`] that cannot be used.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// No endpoint was given.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// A key prefix that cannot be used.
    #[error("invalid etcd key prefix {prefix:?}: {reason}")]
    InvalidPrefix { prefix: String, reason: String },
    /// A TLS file could not be read.
    #[error("cannot read the etcd TLS {what} file {path}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no PEM block.
    #[error("the etcd TLS {what} file {path} is not PEM (no '-----BEGIN' line)")]
    TlsNotPem { what: &'static str, path: PathBuf },
    /// The TLS handshake with etcd failed (wrong CA, missing or refused client certificate).
    #[error("TLS with etcd at {endpoints} failed (check the CA, the client certificate and its key): {detail}")]
    Tls { endpoints: String, detail: String },
    /// The client could not be set up with this configuration.
    #[error("cannot set up the etcd client for {endpoints}")]
    Client {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd refused a request over one of its limits: `limit` names the member flag.
    #[error("etcd refused {op}: over the members' {limit} ({detail})")]
    RequestTooLarge {
        op: &'static str,
        limit: &'static str,
        detail: String,
    },
    /// The lease does not exist (it expired or was revoked).
    #[error("etcd lease {lease:x} does not exist (expired or revoked)")]
    LeaseNotFound { lease: i64 },
    /// etcd answered something this store did not write.
    #[error("unexpected data in etcd: {0}")]
    Corrupt(String),
    /// Any other failure of a request.
    #[error("etcd request {op} to {endpoints} failed: {detail}")]
    Request {
        op: &'static str,
        endpoints: String,
        detail: String,
    },
}

impl From<EtcdError> for StoreError {
    fn from(err: EtcdError) -> Self {
        StoreError::backend(err)
    }
}

/// How an etcd client error is to be treated.
#[derive(Debug)]
pub(super) enum Failure {
    /// Retry later; `unsent` when the request certainly never reached a member (the
    /// connection could not be made), so that it is safe to send it again at once.
    Unavailable { detail: String, unsent: bool },
    /// The requested revision is below the compaction point.
    Compacted,
    /// The requested revision is above the current revision.
    FutureRevision,
    /// The lease does not exist.
    LeaseNotFound,
    /// A TLS failure.
    Tls(String),
    /// The request is over one of etcd's limits (the member flag that sets it, and the detail).
    TooLarge(&'static str, String),
    /// Anything else.
    Other(String),
    /// The store was closed.
    Closed,
    /// No answer within the request timeout.
    TimedOut,
}

/// The error and its sources, joined with ": ".
pub(super) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn looks_like_tls(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    ["certificate", "handshake", "tls", "alert", "unknownissuer"]
        .iter()
        .any(|needle| lower.contains(needle))
}

fn looks_unsent(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    [
        "connection refused",
        "tcp connect error",
        "error trying to connect",
        "connect error",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// Classifies an etcd client error.
pub(super) fn classify(err: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    use tonic::Code;
    let detail = chain(err);
    match err {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                return Failure::Compacted;
            }
            if message.contains("required revision is a future revision") {
                return Failure::FutureRevision;
            }
            if message.contains("requested lease not found") {
                return Failure::LeaseNotFound;
            }
            if message.contains("request is too large") || message.contains("message larger") {
                return Failure::TooLarge("--max-request-bytes (1.5 MiB by default)", detail);
            }
            if message.contains("too many operations in txn") {
                return Failure::TooLarge("--max-txn-ops (128 by default)", detail);
            }
            if looks_like_tls(&detail) {
                return Failure::Tls(detail);
            }
            // A status with a source was made by the client's transport (the connection
            // broke or could not be made), not sent by etcd.
            let transport =
                std::error::Error::source(status).is_some() || message.contains("transport error");
            let retry_later = transport
                || matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Cancelled
                )
                || [
                    "no leader",
                    "leader changed",
                    "timed out",
                    "too many requests",
                    "not capable",
                    "stopped",
                ]
                .iter()
                .any(|needle| message.contains(needle));
            if retry_later {
                Failure::Unavailable {
                    unsent: looks_unsent(&detail),
                    detail,
                }
            } else {
                Failure::Other(detail)
            }
        }
        E::TransportError(_) | E::IoError(_) => {
            if looks_like_tls(&detail) {
                Failure::Tls(detail)
            } else {
                Failure::Unavailable {
                    unsent: looks_unsent(&detail),
                    detail,
                }
            }
        }
        E::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            Failure::LeaseNotFound
        }
        _ => Failure::Other(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn retry_later_answers_are_unavailable() {
        for (code, message) in [
            (tonic::Code::Unavailable, "etcdserver: no leader"),
            (tonic::Code::Unavailable, "etcdserver: request timed out"),
            (tonic::Code::Unavailable, "etcdserver: leader changed"),
            (
                tonic::Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (tonic::Code::DeadlineExceeded, "context deadline exceeded"),
            (tonic::Code::Unknown, "etcdserver: no leader"),
            (tonic::Code::Unknown, "transport error"),
        ] {
            assert!(
                matches!(
                    classify(&status(code, message)),
                    Failure::Unavailable { unsent: false, .. }
                ),
                "{message}"
            );
        }
        assert!(matches!(
            classify(&status(
                tonic::Code::Unavailable,
                "error trying to connect: tcp connect error: Connection refused (os error 111)"
            )),
            Failure::Unavailable { unsent: true, .. }
        ));
    }

    #[test]
    fn store_level_answers_are_recognised() {
        assert!(matches!(
            classify(&status(
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )),
            Failure::Compacted
        ));
        assert!(matches!(
            classify(&status(
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )),
            Failure::FutureRevision
        ));
        assert!(matches!(
            classify(&status(
                tonic::Code::NotFound,
                "etcdserver: requested lease not found"
            )),
            Failure::LeaseNotFound
        ));
        assert!(matches!(
            classify(&status(
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large"
            )),
            Failure::TooLarge(..)
        ));
        assert!(matches!(
            classify(&status(
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            )),
            Failure::TooLarge(limit, _) if limit.starts_with("--max-txn-ops")
        ));
        assert!(matches!(
            classify(&status(
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied"
            )),
            Failure::Other(_)
        ));
    }
}
