//! The cluster's own certificate authority and the TLS configurations built on it.
//!
//! This crate owns:
//! - the CA ([`Ca`]): its certificate and key on disk (`ca.pem`, `ca.key` with mode 0600,
//!   written atomically), server certificates for the control plane, and agent certificates
//!   signed from a CSR, whose node name is always the one the signer gives and whose lifetime
//!   the caller chooses (short: agents renew them; see the server's `/v1/agent/renew`);
//! - the agent side of enrollment ([`make_agent_csr`]);
//! - reading the node name, serial and validity out of a verified client certificate
//!   ([`node_cert_info`]);
//! - rustls configurations for the server ([`server_tls_config`]: client certificates optional,
//!   verified against the cluster CA when presented) and for clients ([`client_tls_config`]:
//!   trusting only the cluster CA).
//!
//! It must not: trust any root other than the cluster CA, rely on a process-wide default
//! rustls crypto provider (every config is built with ring explicitly), log or print key
//! material, or know anything about HTTP, the store or tokio (tokio is a dev-dependency for the
//! handshake tests only).

mod ca;
mod error;
mod node;
mod tls;

pub use ca::{AgentCert, Ca, CertifiedKey, CA_CERT_FILE, CA_KEY_FILE, MIN_AGENT_CERT_LIFETIME};
pub use error::PkiError;
pub use node::{
    is_replica_cert, make_agent_csr, node_cert_info, node_cert_info_pem, node_dns_name,
    node_name_from_cert, NodeCertInfo, NODE_DNS_SUFFIX, REPLICA_DNS_NAME,
};
pub use tls::{client_tls_config, server_tls_config, ALPN_PROTOCOLS};
