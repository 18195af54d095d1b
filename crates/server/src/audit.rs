//! The audit log's I/O: the control plane's signing key and the chain in the store.
//!
//! Entries are [`firefleet_audit::Entry`] values under `/audit/<seq, 20 digits>`; `/audit-head`
//! holds the last entry's seq and hash. An append writes both in one transaction that requires
//! the head to be unchanged since it was read (and the entry's key to be absent), so two
//! appenders can never both link to the same predecessor: the chain stays linear. Appends in
//! this process also queue on a mutex, so the transaction only fails if another process wrote.
//!
//! The key is `DATA/audit.key` (64 hex digits, 0600, made on first start), its public half
//! `DATA/audit.pub`. A lost key means a new one: the old entries then fail to verify with it.
//!
//! Recording never fails the action it records: a failed append is logged and counted as lost.

use std::path::Path;

use firefleet_api::{AuditVerifyResponse, FirstBad};
use firefleet_audit::{
    signing_key_from_hex, signing_key_to_hex, verify_with_head, verifying_key_to_hex, Chain, Entry,
    Event, Head, Reason, SigningKey, Tampered, VerifyingKey,
};
use firefleet_store::{Compare, KvStore, Op};

use crate::{files::write_private_file, ApiError, AppState};

/// Reads `dir/audit.key`, or makes one if there is none.
pub(crate) fn load_or_create_key(dir: &Path) -> std::io::Result<SigningKey> {
    let path = dir.join("audit.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => signing_key_from_hex(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let key = SigningKey::from_bytes(&seed);
            write_private_file(&path, signing_key_to_hex(&key).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Prefix of the entries.
const ENTRIES: &str = "/audit/";
/// The last entry's seq and hash.
const HEAD: &str = "/audit-head";
/// How often an append is retried when another writer moved the head.
const APPEND_TRIES: usize = 8;

/// The store key of entry `seq`.
pub(crate) fn entry_key(seq: u64) -> String {
    format!("{ENTRIES}{seq:020}")
}

/// Signs and stores audit events.
pub(crate) struct Auditor {
    key: SigningKey,
    /// Serialises this process's appends.
    lock: tokio::sync::Mutex<()>,
}

impl Auditor {
    /// An auditor signing with `key`; writes its public half to `dir/audit.pub`.
    pub(crate) fn new(dir: &Path, key: SigningKey) -> std::io::Result<Self> {
        let public = format!("{}\n", verifying_key_to_hex(&key.verifying_key()));
        let pub_path = dir.join("audit.pub");
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
            std::fs::write(&pub_path, public)?;
        }
        Ok(Self {
            key,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The key entries are checked with.
    pub(crate) fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Appends `event` (its `at_ms` is stamped now if 0); a failure is logged, not returned.
    pub(crate) async fn record(&self, state: &AppState, mut event: Event) {
        if event.at_ms == 0 {
            event.at_ms = crate::now_ms();
        }
        let action = event.action.clone();
        if let Err(e) = self.append(state.store.as_ref(), event).await {
            tracing::error!(error = %e, %action, "audit event lost");
        }
    }

    /// Appends `event` after the stored head, atomically with the new head.
    pub(crate) async fn append(
        &self,
        store: &dyn KvStore,
        event: Event,
    ) -> Result<Entry, ApiError> {
        let _guard = self.lock.lock().await;
        for _ in 0..APPEND_TRIES {
            let (head, head_rev) = match store.get(HEAD).await? {
                Some(kv) => (decode::<Head>(&kv.value, HEAD)?, kv.mod_revision),
                None => (Head::default(), 0),
            };
            let mut chain = Chain::from_head(head);
            let entry = chain.append(&self.key, event.clone());
            let key = entry_key(entry.event.seq);
            let resp = store
                .txn(
                    vec![
                        Compare::ModRevision {
                            key: HEAD.to_owned(),
                            equals: head_rev,
                        },
                        Compare::Absent { key: key.clone() },
                    ],
                    vec![
                        Op::Put {
                            key,
                            value: encode(&entry)?,
                        },
                        Op::Put {
                            key: HEAD.to_owned(),
                            value: encode(chain.head())?,
                        },
                    ],
                    vec![],
                )
                .await?;
            if resp.succeeded {
                return Ok(entry);
            }
        }
        Err(ApiError::Internal(
            "the audit head kept moving; event not recorded".to_owned(),
        ))
    }

    /// Checks the whole stored chain and that it reaches the stored head.
    pub(crate) async fn verify(
        &self,
        store: &dyn KvStore,
    ) -> Result<AuditVerifyResponse, ApiError> {
        // One list at one revision covers both `/audit-head` and `/audit/…`.
        let (kvs, _) = store.list("/audit").await?;
        let mut head = Head::default();
        let mut entries = Vec::new();
        let mut unreadable = None;
        for kv in &kvs {
            if kv.key == HEAD {
                head = decode(&kv.value, HEAD)?;
            } else if kv.key.starts_with(ENTRIES) && unreadable.is_none() {
                match serde_json::from_slice::<Entry>(&kv.value) {
                    Ok(e) => entries.push(e),
                    Err(e) => unreadable = Some(format!("{}: {e}", kv.key)),
                }
            }
        }
        let key = self.public_key();
        let total = kvs.iter().filter(|kv| kv.key.starts_with(ENTRIES)).count();
        let result = match unreadable {
            // The readable entries before the bad one must verify; then it is the first bad.
            Some(error) => firefleet_audit::verify(&entries, &key).and_then(|_| {
                Err(Tampered {
                    index: entries.len(),
                    seq: entries.len() as u64 + 1,
                    reason: Reason::Unreadable { error },
                })
            }),
            None => verify_with_head(&entries, &key, &head),
        };
        Ok(AuditVerifyResponse {
            ok: result.is_ok(),
            entries: total as u64,
            key_id: firefleet_audit::key_id(&key),
            first_bad: result.err().map(|t| FirstBad {
                seq: t.seq,
                index: t.index as u64,
                message: t.reason.to_string(),
                reason: t.reason,
            }),
        })
    }

    /// Entries with seq > `after`, in order, at most `limit`.
    pub(crate) async fn list(
        &self,
        store: &dyn KvStore,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ApiError> {
        let (kvs, _) = store.list(ENTRIES).await?;
        let from = entry_key(after.saturating_add(1));
        kvs.iter()
            .filter(|kv| kv.key >= from)
            .take(limit)
            .map(|kv| decode(&kv.value, &kv.key))
            .collect()
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Internal(format!("encoding an audit entry: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], key: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("{key} is not a valid audit record: {e}")))
}
