//! The secrets every replica must share: the cluster CA (certificate and key) and the audit
//! log's signing key.
//!
//! With one server (the embedded SQLite store and no secrets key) they are files in the data
//! directory, as always. With a secrets key (`--secrets-key FILE`, required on etcd) they live
//! in the store at [`SECRETS_KEY`], sealed with XChaCha20-Poly1305 under the operator's key:
//! a reader of the store (a backup, an etcd member's disk, anyone with etcd read access) sees
//! only ciphertext. The first replica to start seals them (from the data directory's files if
//! it has them, which is how a single server moves to etcd, else freshly made, in memory only)
//! with a create-only write; every other replica opens what is stored, and a wrong key is an
//! error that says so. Tokens are never here: the store keeps only their hashes.

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use firefleet_audit::{signing_key_from_hex, signing_key_to_hex, SigningKey};
use firefleet_pki::Ca;
use firefleet_store::{KvStore, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the sealed secrets live in the store.
pub const SECRETS_KEY: &str = "/cluster/secrets";

/// Bound into every seal: a sealed value cannot be passed off as something else.
const AAD: &[u8] = b"firefleet cluster secrets v1";
const ALG: &str = "xchacha20poly1305";

/// Why the shared secrets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read or is not 64 hex digits.
    #[error("secrets key {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The store holds secrets and no key was given.
    #[error("this cluster's CA and audit key are sealed in the store at {SECRETS_KEY}: start the server with --secrets-key FILE (the key the first replica was given)")]
    KeyNeeded,
    /// The stored secrets were sealed with another key, or were tampered with.
    #[error("the secrets key (id {given}) does not open the cluster's secrets (sealed with key id {sealed_with}): give every replica the same --secrets-key file")]
    WrongKey {
        /// Id of the key given.
        given: String,
        /// Id of the key the secrets were sealed with.
        sealed_with: String,
    },
    /// The stored value is not sealed secrets as this version writes them.
    #[error("the sealed secrets at {SECRETS_KEY} are malformed: {0}")]
    Malformed(String),
    /// The CA (files or sealed) could not be loaded.
    #[error("cluster CA")]
    Pki(#[from] firefleet_pki::PkiError),
    /// The audit key file could not be read or written.
    #[error("audit key")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
}

/// The operator's 256-bit key that seals the shared secrets.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey(id {})", self.id())
    }
}

impl SecretsKey {
    /// Reads a key file: 64 hex digits (`openssl rand -hex 32 > secrets.key`), surrounding
    /// whitespace ignored. The file must not be readable by group or others.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |reason: String| SecretsError::KeyFile {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read it; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_hex(text.trim()).map_err(err)
    }

    /// A key from 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text).map_err(|_| "not hex digits".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes, expected 32 (64 hex digits)", b.len()))?;
        Ok(Self(key))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// The key as 64 hex digits (what [`SecretsKey::load`] reads).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short public fingerprint naming the key in errors (not a secret).
    pub fn id(&self) -> String {
        let digest = Sha256::digest([b"firefleet secrets key id:".as_slice(), &self.0].concat());
        hex::encode(&digest[..6])
    }

    fn seal(&self, plain: &[u8]) -> Result<Sealed, SecretsError> {
        use rand::RngCore;
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: AAD,
                },
            )
            .map_err(|_| SecretsError::Malformed("sealing failed".to_owned()))?;
        Ok(Sealed {
            version: 1,
            alg: ALG.to_owned(),
            key_id: self.id(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        })
    }

    fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, SecretsError> {
        if sealed.version != 1 || sealed.alg != ALG {
            return Err(SecretsError::Malformed(format!(
                "version {} with {:?}, expected 1 with {ALG:?}",
                sealed.version, sealed.alg
            )));
        }
        let bad = |what: &str| SecretsError::Malformed(format!("{what} is not valid hex"));
        let nonce = hex::decode(&sealed.nonce).map_err(|_| bad("nonce"))?;
        if nonce.len() != 24 {
            return Err(SecretsError::Malformed("nonce is not 24 bytes".to_owned()));
        }
        let ciphertext = hex::decode(&sealed.ciphertext).map_err(|_| bad("ciphertext"))?;
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: AAD,
                },
            )
            .map_err(|_| SecretsError::WrongKey {
                given: self.id(),
                sealed_with: sealed.key_id.clone(),
            })
    }
}

/// The stored form: only ciphertext and public facts.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    version: u32,
    alg: String,
    /// [`SecretsKey::id`] of the sealing key, so that a wrong key is named as such.
    key_id: String,
    nonce: String,
    ciphertext: String,
}

/// What is sealed.
#[derive(Serialize, Deserialize)]
struct Plain {
    ca_cert_pem: String,
    ca_key_pem: String,
    audit_key_hex: String,
}

/// The shared secrets, opened.
pub(crate) struct ClusterSecrets {
    pub ca: Ca,
    pub audit: SigningKey,
}

/// The CA and audit key for this replica: from the data directory's files without a key
/// (creating them on first start), else from the store, sealing them there first if no
/// replica has yet.
pub(crate) async fn load(
    store: &dyn KvStore,
    dir: &Path,
    key: Option<&SecretsKey>,
) -> Result<ClusterSecrets, SecretsError> {
    let stored = store.get(SECRETS_KEY).await?;
    let Some(key) = key else {
        if stored.is_some() {
            return Err(SecretsError::KeyNeeded);
        }
        return Ok(ClusterSecrets {
            ca: Ca::load_or_create(dir)?,
            audit: crate::audit::load_or_create_key(dir)?,
        });
    };
    let origin = Path::new(SECRETS_KEY);
    let plain = match stored {
        Some(kv) => open_value(key, &kv.value)?,
        None => {
            let mine = local_or_fresh(dir)?;
            let sealed = serde_json::to_vec(
                &key.seal(
                    &serde_json::to_vec(&mine)
                        .map_err(|e| SecretsError::Malformed(format!("encoding: {e}")))?,
                )?,
            )
            .map_err(|e| SecretsError::Malformed(format!("encoding: {e}")))?;
            match store.compare_and_swap(SECRETS_KEY, 0, sealed).await {
                Ok(_) => {
                    tracing::info!(key_id = %key.id(), "sealed the cluster's CA and audit key into the store");
                    mine
                }
                // Another replica sealed first: use its secrets.
                Err(StoreError::Conflict { .. }) => {
                    let kv = store.get(SECRETS_KEY).await?.ok_or_else(|| {
                        SecretsError::Malformed("vanished after a conflict".into())
                    })?;
                    open_value(key, &kv.value)?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let ca = Ca::from_pem(&plain.ca_cert_pem, &plain.ca_key_pem, origin)?;
    let audit = signing_key_from_hex(&plain.audit_key_hex)
        .map_err(|e| SecretsError::Malformed(format!("audit key: {e}")))?;
    // The public halves, for operators and clients (as a single server writes them).
    crate::files::write_private_file(
        &dir.join(firefleet_pki::CA_CERT_FILE),
        ca.cert_pem().as_bytes(),
    )?;
    Ok(ClusterSecrets { ca, audit })
}

fn open_value(key: &SecretsKey, value: &[u8]) -> Result<Plain, SecretsError> {
    let sealed: Sealed =
        serde_json::from_slice(value).map_err(|e| SecretsError::Malformed(e.to_string()))?;
    let plain = key.open(&sealed)?;
    serde_json::from_slice(&plain).map_err(|e| SecretsError::Malformed(e.to_string()))
}

/// The data directory's CA and audit key when it has a CA (a single server moving to a
/// shared store keeps its CA, so its agents stay enrolled), else new ones made in memory: the
/// key files are never written.
fn local_or_fresh(dir: &Path) -> Result<Plain, SecretsError> {
    let (ca, audit) = if dir.join(firefleet_pki::CA_CERT_FILE).exists() {
        (
            Ca::load_or_create(dir)?,
            crate::audit::load_or_create_key(dir)?,
        )
    } else {
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        (Ca::generate()?, SigningKey::from_bytes(&seed))
    };
    Ok(Plain {
        ca_cert_pem: ca.cert_pem().to_owned(),
        ca_key_pem: ca.key_pem(),
        audit_key_hex: signing_key_to_hex(&audit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, firefleet_store::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = firefleet_store::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn replicas_share_sealed_secrets_and_the_store_holds_no_plaintext() {
        let (tmp, store) = store();
        let key = SecretsKey::generate();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let first = load(&store, &a, Some(&key)).await.unwrap();
        let second = load(&store, &b, Some(&key)).await.unwrap();
        assert_eq!(first.ca.cert_pem(), second.ca.cert_pem());
        assert_eq!(first.ca.key_pem(), second.ca.key_pem());
        assert_eq!(first.audit.to_bytes(), second.audit.to_bytes());
        // No key material on disk, none readable in the store.
        for d in [&a, &b] {
            assert!(!d.join("ca.key").exists() && !d.join("audit.key").exists());
        }
        let raw = store.get(SECRETS_KEY).await.unwrap().unwrap().value;
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&signing_key_to_hex(&first.audit)));
        assert!(!text.contains(&first.ca.key_pem()));

        // Another key cannot open them, and says so; no key at all is refused too.
        let other = SecretsKey::generate();
        let e = load(&store, &b, Some(&other)).await.err().unwrap();
        assert!(
            matches!(e, SecretsError::WrongKey { ref sealed_with, .. } if *sealed_with == key.id()),
            "{e}"
        );
        assert!(matches!(
            load(&store, &b, None).await,
            Err(SecretsError::KeyNeeded)
        ));
    }

    #[tokio::test]
    async fn a_single_servers_files_are_what_gets_sealed() {
        let (tmp, store) = store();
        let dir = tmp.path().join("single");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::load_or_create(&dir).unwrap();
        let audit = crate::audit::load_or_create_key(&dir).unwrap();
        let key = SecretsKey::generate();
        let shared = load(&store, &dir, Some(&key)).await.unwrap();
        assert_eq!(shared.ca.cert_pem(), ca.cert_pem());
        assert_eq!(shared.audit.to_bytes(), audit.to_bytes());
    }

    #[tokio::test]
    async fn tampering_is_detected() {
        let (tmp, store) = store();
        let key = SecretsKey::generate();
        load(&store, tmp.path(), Some(&key)).await.unwrap();
        let kv = store.get(SECRETS_KEY).await.unwrap().unwrap();
        let mut sealed: Sealed = serde_json::from_slice(&kv.value).unwrap();
        let mut ct = hex::decode(&sealed.ciphertext).unwrap();
        ct[3] ^= 1;
        sealed.ciphertext = hex::encode(ct);
        store
            .put(SECRETS_KEY, serde_json::to_vec(&sealed).unwrap())
            .await
            .unwrap();
        assert!(matches!(
            load(&store, tmp.path(), Some(&key)).await,
            Err(SecretsError::WrongKey { .. })
        ));
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("k");
        std::fs::write(&p, "zz").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SecretsKey::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not hex"));
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(SecretsKey::load(&p)
            .unwrap_err()
            .to_string()
            .contains("2 bytes"));
        let key = SecretsKey::generate();
        std::fs::write(&p, format!("{}\n", key.to_hex())).unwrap();
        assert_eq!(SecretsKey::load(&p).unwrap().id(), key.id());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SecretsKey::load(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }
}
