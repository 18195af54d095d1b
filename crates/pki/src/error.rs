//! The one error type of this crate. Each variant says which operation (and which file) failed;
//! the cause is attached as the source and not repeated in the message.

use std::path::PathBuf;

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading, writing or renaming a file failed.
    #[error("could not {op} {}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `rename into place`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA key on disk does not belong to the CA certificate on disk.
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    CaKeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Generating, parsing or signing a certificate, key or CSR failed.
    #[error("could not {op}")]
    Cert {
        /// What was being done, e.g. `parse the CA key in /etc/firefleet/ca.key`.
        op: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM input was malformed or lacked the expected item.
    #[error("invalid PEM in {what}")]
    Pem {
        /// Which input (`ca_pem`, `cert_pem`, `key_pem`).
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A node name is not a valid node id (a DNS label).
    #[error("invalid node name")]
    NodeName(#[source] firefleet_types::ValidationError),
    /// A DNS name for a server certificate is not valid.
    #[error("invalid DNS name {name:?} for a server certificate")]
    DnsName {
        /// The name.
        name: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// An agent certificate lifetime shorter than [`crate::MIN_AGENT_CERT_LIFETIME`] was asked
    /// for.
    #[error("an agent certificate must be valid for at least 60 s (asked: {secs} s)")]
    LifetimeTooShort {
        /// The lifetime asked for, in seconds.
        secs: u64,
    },
    /// An agent certificate lifetime too long to represent was asked for.
    #[error("the agent certificate lifetime is too long")]
    LifetimeTooLong,
    /// A DER certificate could not be parsed.
    #[error("could not parse the X.509 certificate in {what}")]
    X509 {
        /// Which certificate (a file, or `the peer certificate`).
        what: String,
        /// The cause.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// A certificate was parsed but does not name a FireFleet node.
    #[error("not a FireFleet node certificate: {reason}")]
    NotANodeCert {
        /// What was missing or inconsistent.
        reason: String,
    },
    /// rustls refused part of a configuration.
    #[error("could not {op}")]
    Tls {
        /// What was being done, e.g. `add the CA certificate to the root store`.
        op: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("could not build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

impl PkiError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PkiError::Io { op, path, source }
    }

    pub(crate) fn cert(op: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Self {
        let op = op.into();
        move |source| PkiError::Cert { op, source }
    }

    pub(crate) fn x509(
        what: impl Into<String>,
    ) -> impl FnOnce(x509_parser::nom::Err<x509_parser::error::X509Error>) -> Self {
        let what = what.into();
        move |e| {
            let source = match e {
                x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
                x509_parser::nom::Err::Incomplete(_) => {
                    x509_parser::error::X509Error::InvalidCertificate
                }
            };
            PkiError::X509 { what, source }
        }
    }
}
