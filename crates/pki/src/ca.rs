//! The certificate authority: creation, atomic persistence, reload, and issuing certificates.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::node::{check_node_name, node_dns_name};
use crate::PkiError;

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

const CA_COMMON_NAME: &str = "FireFleet cluster CA";
const ORGANIZATION: &str = "FireFleet";
const SERVER_COMMON_NAME: &str = "firefleet-server";
const CA_VALIDITY_DAYS: i64 = 3650;
const SERVER_VALIDITY_DAYS: i64 = 365;
/// Certificates are valid from a little before "now", so that a peer whose clock is slightly
/// behind accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::minutes(5);
/// The shortest agent certificate lifetime [`Ca::sign_agent_csr`] accepts.
pub const MIN_AGENT_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate (PEM, `CERTIFICATE`).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8 `PRIVATE KEY`).
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster's certificate authority.
///
/// Created once by the control plane ([`Ca::load_or_create`]); the directory is meant to be
/// owned by one server process at a time (two processes creating a CA in the same empty
/// directory at the same moment may each keep a different CA in memory).
pub struct Ca {
    cert_pem: String,
    /// The CA certificate as rcgen needs it for signing (same subject, key and key identifier as
    /// `cert_pem`; re-signed in memory when loaded from disk).
    cert: Certificate,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`, or creates a new one there if
    /// `dir/ca.pem` does not exist yet (creating `dir` too).
    ///
    /// Files are written atomically (temporary file, fsync, rename, fsync of the directory),
    /// the key first and with mode 0600, so `ca.pem` exists only once the CA is complete; a key
    /// left behind by an interrupted creation is replaced. On load, the key must match the
    /// certificate.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match fs::read_to_string(&cert_path) {
            Ok(cert_pem) => {
                let key_pem =
                    fs::read_to_string(&key_path).map_err(PkiError::io("read", &key_path))?;
                Self::from_pem_files(cert_pem, &cert_path, &key_pem, &key_path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ca = Self::generate()?;
                fs::create_dir_all(dir).map_err(PkiError::io("create directory", dir))?;
                write_atomic(&key_path, ca.key.serialize_pem().as_bytes(), 0o600)?;
                write_atomic(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
                sync_dir(dir)?;
                Ok(ca)
            }
            Err(e) => Err(PkiError::io("read", &cert_path)(e)),
        }
    }

    /// A CA from its certificate and key as PEM text, e.g. the cluster's shared secrets kept
    /// (encrypted) in the store. `origin` names where they came from in errors. The key must
    /// match the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &Path) -> Result<Ca, PkiError> {
        Self::from_pem_files(cert_pem.to_owned(), origin, key_pem, origin)
    }

    /// The CA's private key (PEM, PKCS#8): only for sealing it into the cluster's encrypted
    /// secrets, never to be written out in the clear.
    #[must_use]
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new CA that lives in memory only (tests, `firefleet up` without a state directory).
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::cert("generate the CA key"))?;
        let mut params = CertificateParams::default();
        // A random suffix tells the CAs of two clusters apart (in errors: "unknown issuer"
        // rather than "bad signature"), and in `openssl x509 -text`.
        let tag: u32 = rand::random();
        params.distinguished_name = distinguished_name(&format!("{CA_COMMON_NAME} {tag:08x}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Duration::days(CA_VALIDITY_DAYS));
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(PkiError::cert("self-sign the CA certificate"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert,
            key,
        })
    }

    /// Builds a CA from PEM text (already read). The paths are only for error messages.
    fn from_pem_files(
        cert_pem: String,
        cert_path: &Path,
        key_pem: &str,
        key_path: &Path,
    ) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::cert(format!(
            "parse the CA key in {}",
            key_path.display()
        )))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(PkiError::cert(
            format!("parse the CA certificate in {}", cert_path.display()),
        ))?;
        let cert = params.self_signed(&key).map_err(PkiError::cert(format!(
            "load the CA certificate in {}",
            cert_path.display()
        )))?;
        // `cert` was just built from our key; compare with the key in the certificate on disk.
        if spki_of_pem(&cert_pem, cert_path)? != key.public_key_der() {
            return Err(PkiError::CaKeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Ok(Ca {
            cert_pem,
            cert,
            key,
        })
    }

    /// The CA certificate (PEM), as stored in `ca.pem`: what clients and servers trust.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate (server-auth EKU, fresh key) for the given names and
    /// addresses; `localhost`, `127.0.0.1` and `::1` are always included.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
    ) -> Result<CertifiedKey, PkiError> {
        let mut sans: Vec<SanType> = Vec::new();
        let localhost = "localhost".to_owned();
        for name in std::iter::once(&localhost).chain(dns_names) {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|source| PkiError::DnsName {
                    name: name.clone(),
                    source,
                })?;
            push_unique(&mut sans, SanType::DnsName(ia5));
        }
        let loopback = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        for ip in loopback.iter().chain(ip_addrs) {
            push_unique(&mut sans, SanType::IpAddress(*ip));
        }

        let key = KeyPair::generate().map_err(PkiError::cert("generate a server key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(SERVER_COMMON_NAME);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, Duration::days(SERVER_VALIDITY_DAYS));
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(PkiError::cert("sign a server certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the client certificate a control-plane replica presents to the other replicas
    /// when it forwards a request to the leader: DNS SAN [`crate::REPLICA_DNS_NAME`] (never a
    /// node name: node names are single DNS labels), client-auth EKU, subject CN `replica_id`
    /// (for logs only). Valid as long as a server certificate.
    pub fn issue_replica_cert(&self, replica_id: &str) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::cert("generate a replica key"))?;
        let mut params = CertificateParams::default();
        let cn: String = replica_id
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        params.distinguished_name = distinguished_name(&format!("firefleet replica {cn}"));
        let name = crate::REPLICA_DNS_NAME
            .try_into()
            .map_err(|source| PkiError::DnsName {
                name: crate::REPLICA_DNS_NAME.to_owned(),
                source,
            })?;
        params.subject_alt_names = vec![SanType::DnsName(name)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, Duration::days(SERVER_VALIDITY_DAYS));
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(PkiError::cert("sign a replica certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR for `node_name`, valid for `lifetime` (at least
    /// [`MIN_AGENT_CERT_LIFETIME`]) from now; the certificate is backdated a few minutes for
    /// clock skew. Returns the certificate and its serial (what the control plane records as
    /// the node's current certificate).
    ///
    /// Only the CSR's public key is used (after its signature is checked: the agent holds the
    /// key). Subject, SANs and usages are the signer's: subject CN = `node_name`, one DNS SAN
    /// `<node_name>.node.firefleet`, EKUs client-auth (to talk to the control plane) and
    /// server-auth (to serve peers under that DNS name), whatever the CSR asked for.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        node_name: &str,
        lifetime: std::time::Duration,
    ) -> Result<AgentCert, PkiError> {
        check_node_name(node_name)?;
        if lifetime < MIN_AGENT_CERT_LIFETIME {
            return Err(PkiError::LifetimeTooShort {
                secs: lifetime.as_secs(),
            });
        }
        let lifetime = Duration::try_from(lifetime).map_err(|_| PkiError::LifetimeTooLong)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(PkiError::cert("parse and verify the agent's CSR"))?;
        let dns = node_dns_name(node_name)
            .try_into()
            .map_err(PkiError::cert(format!(
                "make a DNS name for node {node_name:?}"
            )))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(node_name);
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, lifetime);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&csr.public_key, &self.cert, &self.key)
            .map_err(PkiError::cert(format!(
                "sign the certificate of node {node_name:?}"
            )))?;
        let info = crate::node::node_cert_info(cert.der())?;
        Ok(AgentCert {
            cert_pem: cert.pem(),
            serial: info.serial,
            not_after: info.not_after,
        })
    }
}

/// An agent certificate as issued by [`Ca::sign_agent_csr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its serial number (lowercase hex of the DER integer's bytes).
    pub serial: String,
    /// When it expires.
    pub not_after: std::time::SystemTime,
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

/// A random positive 128-bit serial (rcgen's default derives it from the public key, so two
/// certificates for one key would share a serial).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte: keeps the DER integer 16 bytes and positive
    SerialNumber::from_slice(&bytes)
}

fn push_unique(sans: &mut Vec<SanType>, san: SanType) {
    if !sans.contains(&san) {
        sans.push(san);
    }
}

/// The DER SubjectPublicKeyInfo of the certificate in `pem`.
fn spki_of_pem(pem: &str, path: &Path) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| PkiError::Pem {
        what: "ca.pem",
        source,
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(PkiError::x509(path.display().to_string()))?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// Writes `contents` to `path` atomically: a temporary file beside it with `mode`, fsync,
/// rename over `path`. The caller fsyncs the directory.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(PkiError::io("create", &tmp))?;
        // `mode` applies only to a new file; a stale temporary file keeps its old mode.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(PkiError::io("set permissions of", &tmp))?;
        file.write_all(contents)
            .map_err(PkiError::io("write", &tmp))?;
        file.sync_all().map_err(PkiError::io("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(PkiError::io("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PkiError::io("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_written_with_a_private_key_file_and_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("pki");
        let first = Ca::load_or_create(&ca_dir).unwrap();
        let mode = fs::metadata(ca_dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap(),
            first.cert_pem()
        );
        let second = Ca::load_or_create(&ca_dir).unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&ca_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_key_left_by_an_interrupted_creation_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), "garbage").unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(
            Ca::load_or_create(dir.path()).unwrap().cert_pem(),
            ca.cert_pem()
        );
    }

    #[test]
    fn missing_or_mismatched_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        let other = Ca::generate().unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), other.key.serialize_pem()).unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(CA_KEY_FILE));

        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::Io { op: "read", .. }), "{err}");
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    }

    #[test]
    fn server_cert_always_covers_loopback() {
        let ca = Ca::generate().unwrap();
        let ck = ca
            .issue_server_cert(
                &["cp.example.com".to_owned()],
                &["10.0.0.1".parse().unwrap()],
            )
            .unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(ck.cert_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'static>| d)
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        use x509_parser::extensions::GeneralName;
        let dns: Vec<&str> = san
            .general_names
            .iter()
            .filter_map(|n| {
                if let GeneralName::DNSName(d) = n {
                    Some(*d)
                } else {
                    None
                }
            })
            .collect();
        let ips: Vec<&[u8]> = san
            .general_names
            .iter()
            .filter_map(|n| {
                if let GeneralName::IPAddress(a) = n {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(dns, ["localhost", "cp.example.com"]);
        assert_eq!(
            ips,
            [
                &[127, 0, 0, 1][..],
                &Ipv6Addr::LOCALHOST.octets()[..],
                &[10, 0, 0, 1][..]
            ]
        );
        assert!(!format!("{ck:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ca = Ca::generate().unwrap();
        assert!(matches!(
            ca.issue_server_cert(&["bad name\u{e9}".to_owned()], &[]),
            Err(PkiError::DnsName { .. })
        ));
        let (csr, _) = crate::make_agent_csr("node-1").unwrap();
        assert!(matches!(
            ca.sign_agent_csr(&csr, "node-1", std::time::Duration::from_secs(59)),
            Err(PkiError::LifetimeTooShort { secs: 59 })
        ));
        assert!(matches!(
            ca.sign_agent_csr(&csr, "Node 1", DAY),
            Err(PkiError::NodeName(_))
        ));
        assert!(matches!(
            ca.sign_agent_csr("not a csr", "node-1", DAY),
            Err(PkiError::Cert { .. })
        ));
    }

    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    #[test]
    fn agent_certificate_lives_as_long_as_asked_and_has_a_fresh_serial() {
        let ca = Ca::generate().unwrap();
        let (csr, _) = crate::make_agent_csr("node-1").unwrap();
        let before = std::time::SystemTime::now();
        let lifetime = std::time::Duration::from_secs(3600);
        let a = ca.sign_agent_csr(&csr, "node-1", lifetime).unwrap();
        let after = std::time::SystemTime::now();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(a.cert_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'static>| d)
            .unwrap();
        let info = crate::node_cert_info(&der).unwrap();
        assert_eq!(info.node, "node-1");
        assert_eq!(info.serial, a.serial);
        assert_eq!(info.not_after, a.not_after);
        // Expires `lifetime` from now (X.509 times are whole seconds).
        let second = std::time::Duration::from_secs(1);
        assert!(info.not_after + second >= before + lifetime, "{info:?}");
        assert!(info.not_after <= after + lifetime, "{info:?}");
        // Valid from a few minutes ago (clock skew), not earlier.
        let backdate = std::time::Duration::from_secs(5 * 60);
        assert!(info.not_before + second >= before - backdate, "{info:?}");
        assert!(info.not_before <= after - backdate, "{info:?}");
        // The same CSR signed again: another serial.
        let b = ca.sign_agent_csr(&csr, "node-1", lifetime).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_eq!(a.serial.len(), 32, "{}", a.serial);
    }
}
