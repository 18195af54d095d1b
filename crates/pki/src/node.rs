//! Node identity in certificates: the agent's CSR, and reading the node name back out of a
//! verified client certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firefleet_types::NodeId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// The DNS suffix under which node certificates name their node: `<node>.node.firefleet`.
pub const NODE_DNS_SUFFIX: &str = ".node.firefleet";

/// The DNS name a node's certificate carries (`<node>.node.firefleet`).
#[must_use]
pub fn node_dns_name(node_name: &str) -> String {
    format!("{node_name}{NODE_DNS_SUFFIX}")
}

pub(crate) fn check_node_name(node_name: &str) -> Result<(), PkiError> {
    NodeId::parse("node", node_name)
        .map(|_| ())
        .map_err(PkiError::NodeName)
}

/// Makes a fresh key and a CSR for `node_name` (agent side of enrollment). Returns
/// `(csr_pem, key_pem)`; the key never leaves the agent. The signer decides the final subject;
/// the CSR's names are only a request.
pub fn make_agent_csr(node_name: &str) -> Result<(String, String), PkiError> {
    check_node_name(node_name)?;
    let key = KeyPair::generate().map_err(PkiError::cert("generate the agent key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    let dns = node_dns_name(node_name)
        .try_into()
        .map_err(PkiError::cert("make the node's DNS name"))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    let csr = params
        .serialize_request(&key)
        .map_err(PkiError::cert("make the agent CSR"))?;
    let csr_pem = csr.pem().map_err(PkiError::cert("encode the agent CSR"))?;
    Ok((csr_pem, key.serialize_pem()))
}

/// What the control plane and the agent need to know of a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertInfo {
    /// The node it names.
    pub node: String,
    /// Its serial number: lowercase hex of the DER integer's bytes.
    pub serial: String,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

/// The node name in a client certificate (DER), as put there by [`crate::Ca::sign_agent_csr`]:
/// see [`node_cert_info`].
pub fn node_name_from_cert(der: &[u8]) -> Result<String, PkiError> {
    node_cert_info(der).map(|info| info.node)
}

/// [`node_cert_info`] of a PEM certificate (the first one in `pem`).
pub fn node_cert_info_pem(pem: &str) -> Result<NodeCertInfo, PkiError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| PkiError::Pem {
        what: "cert_pem",
        source,
    })?;
    node_cert_info(&der)
}

/// The one DNS SAN of a control-plane replica's client certificate
/// ([`crate::Ca::issue_replica_cert`]).
pub const REPLICA_DNS_NAME: &str = "replica.firefleet";

/// Whether a certificate (DER, already verified against the cluster CA by the TLS handshake)
/// is a control-plane replica's: its DNS SANs are exactly [`REPLICA_DNS_NAME`].
pub fn is_replica_cert(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut dns = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    dns.next() == Some(REPLICA_DNS_NAME) && dns.next().is_none()
}

/// The node name, serial and validity of a node certificate (DER). The name is the one DNS SAN
/// `<node>.node.firefleet`, which must agree with the subject CN.
///
/// This does not verify the certificate: call it on the peer certificate of a TLS session whose
/// handshake verified it against the cluster CA. A control-plane server certificate (no node
/// SAN) is refused.
pub fn node_cert_info(der: &[u8]) -> Result<NodeCertInfo, PkiError> {
    let not_node = |reason: &str| PkiError::NotANodeCert {
        reason: reason.to_owned(),
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(PkiError::x509("the peer certificate"))?;

    let san = cert
        .subject_alternative_name()
        .map_err(|source| PkiError::X509 {
            what: "the peer certificate's SAN extension".to_owned(),
            source,
        })?
        .ok_or_else(|| not_node("no subject alternative name"))?;
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => d.strip_suffix(NODE_DNS_SUFFIX),
        _ => None,
    });
    let name = names
        .next()
        .ok_or_else(|| not_node("no DNS name ending in .node.firefleet"))?;
    if names.next().is_some() {
        return Err(not_node("more than one node DNS name"));
    }
    check_node_name(name)?;

    let mut cns = cert.subject().iter_common_name();
    let cn = cns
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| not_node("no subject common name"))?;
    if cns.next().is_some() || cn != name {
        return Err(PkiError::NotANodeCert {
            reason: format!("subject CN {cn:?} does not match the node DNS name {name:?}"),
        });
    }
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let validity = cert.validity();
    Ok(NodeCertInfo {
        node: name.to_owned(),
        serial,
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
    })
}

/// Seconds since the Unix epoch as a `SystemTime` (times before 1970 become the epoch).
fn system_time(unix_secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    use super::*;
    use crate::Ca;

    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn signed_csr_carries_the_signers_node_name() {
        let ca = Ca::generate().unwrap();
        let (csr, _key) = make_agent_csr("edge-7").unwrap();
        let cert = ca.sign_agent_csr(&csr, "edge-7", DAY).unwrap();
        assert_eq!(node_name_from_cert(&der(&cert.cert_pem)).unwrap(), "edge-7");
    }

    #[test]
    fn a_csr_asking_for_another_name_gets_the_signers_name() {
        let ca = Ca::generate().unwrap();
        // The agent asks to be "admin" (CN and SAN); the signer says it is "node-2".
        let (csr, _key) = make_agent_csr("admin").unwrap();
        let cert = ca.sign_agent_csr(&csr, "node-2", DAY).unwrap().cert_pem;
        assert_eq!(node_name_from_cert(&der(&cert)).unwrap(), "node-2");
        let d = der(&cert);
        let (_, parsed) = x509_parser::parse_x509_certificate(&d).unwrap();
        let text = format!(
            "{:?}",
            parsed.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(!text.contains("admin"), "{text}");
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
    }

    #[test]
    fn replica_certs_are_told_apart_from_node_and_server_certs() {
        let ca = Ca::generate().unwrap();
        let replica = ca.issue_replica_cert("cp-1\n").unwrap();
        assert!(is_replica_cert(&der(&replica.cert_pem)));
        assert!(node_cert_info(&der(&replica.cert_pem)).is_err());
        let (csr, _key) = make_agent_csr("replica").unwrap();
        let node = ca.sign_agent_csr(&csr, "replica", DAY).unwrap();
        assert!(!is_replica_cert(&der(&node.cert_pem)));
        let server = ca
            .issue_server_cert(&["replica.firefleet".into()], &[])
            .unwrap();
        assert!(
            !is_replica_cert(&der(&server.cert_pem)),
            "a server cert has more names"
        );
        assert!(!is_replica_cert(b"junk"));
    }

    #[test]
    fn server_cert_is_not_a_node_cert() {
        let ca = Ca::generate().unwrap();
        let server = ca.issue_server_cert(&[], &[]).unwrap();
        assert!(matches!(
            node_name_from_cert(&der(&server.cert_pem)),
            Err(PkiError::NotANodeCert { .. })
        ));
        assert!(matches!(
            node_name_from_cert(b"junk"),
            Err(PkiError::X509 { .. })
        ));
    }

    #[test]
    fn bad_node_names_are_refused() {
        assert!(matches!(
            make_agent_csr("UPPER"),
            Err(PkiError::NodeName(_))
        ));
        assert!(matches!(make_agent_csr("a.b"), Err(PkiError::NodeName(_))));
    }
}
