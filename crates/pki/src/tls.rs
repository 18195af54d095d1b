//! rustls configurations trusting only the cluster CA. Every config is built with the ring
//! provider explicitly, so nothing depends on a process-default provider being installed.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::PkiError;

/// ALPN protocols offered by both sides, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn alpn() -> Vec<Vec<u8>> {
    ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect()
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what,
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| PkiError::Pem {
        what: "key_pem",
        source,
    })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "ca_pem")? {
        roots.add(cert).map_err(|source| PkiError::Tls {
            op: "add the CA certificate to the root store",
            source,
        })?;
    }
    Ok(roots)
}

/// The control plane's TLS server config: presents `cert_pem`/`key_pem`; client certificates
/// are optional, but one that is presented must chain to the cluster CA (`ca_pem`) or the
/// handshake fails. ALPN: `h2`, `http/1.1`.
///
/// Requests without a client certificate must then be authenticated some other way (tokens);
/// the node name of one with a certificate comes from [`crate::node_name_from_cert`].
pub fn server_tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(PkiError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            op: "choose TLS protocol versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "cert_pem")?, key(key_pem)?)
        .map_err(|source| PkiError::Tls {
            op: "use the server certificate and key",
            source,
        })?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// A TLS client config that trusts only the cluster CA (`ca_pem`), optionally presenting a
/// client certificate `(cert_pem, key_pem)`. ALPN: `h2`, `http/1.1`. Suitable for reqwest's
/// `use_preconfigured_tls`.
pub fn client_tls_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            op: "choose TLS protocol versions",
            source,
        })?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(certs(cert_pem, "cert_pem")?, key(key_pem)?)
            .map_err(|source| PkiError::Tls {
                op: "use the client certificate and key",
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ca;

    #[test]
    fn configs_build_and_bad_pem_names_the_input() {
        let ca = Ca::generate().unwrap();
        let server = ca.issue_server_cert(&[], &[]).unwrap();
        let config = server_tls_config(ca.cert_pem(), &server.cert_pem, &server.key_pem).unwrap();
        assert_eq!(config.alpn_protocols, alpn());
        assert!(client_tls_config(ca.cert_pem(), None).is_ok());

        let err = server_tls_config("nothing here", &server.cert_pem, &server.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::Pem { what: "ca_pem", .. }), "{err}");
        let err = client_tls_config(ca.cert_pem(), Some((&server.cert_pem, "nope"))).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::Pem {
                    what: "key_pem",
                    ..
                }
            ),
            "{err}"
        );
        // A key that does not belong to the certificate.
        let other = ca.issue_server_cert(&[], &[]).unwrap();
        assert!(server_tls_config(ca.cert_pem(), &server.cert_pem, &other.key_pem).is_err());
    }
}
