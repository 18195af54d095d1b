//! The tamper-evident audit log: a hash chain of ed25519-signed entries.
//!
//! This crate owns
//! - the record of one audited action ([`Event`]) and its place in the chain ([`Entry`]): each
//!   entry carries the hash of the previous one (`prev_hash`, all zeros for the first), its own
//!   hash over its canonical bytes ([`canonical_bytes`]: the event and `prev_hash`, serialised
//!   with a fixed field order), and an ed25519 signature over that hash by the control plane's
//!   key;
//! - appending ([`Chain::append`]) and checking ([`verify`], [`verify_with_head`]): the first
//!   entry that was edited, deleted, inserted, moved or signed by another key is named, with
//!   the reason ([`Tampered`]).
//!
//! It must not do I/O, keep a clock or generate keys: the server stamps the time, keeps the
//! key and the entries, and the CLI reads exports; both hand the bytes to this crate.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Tag hashed in front of every entry, so a hash of this log is never a hash of anything else.
const DOMAIN: &str = "firefleet-audit-v1";

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Position in the log, from 1, without gaps (set by [`Chain::append`]).
    pub seq: u64,
    /// When the server recorded it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who: `tenant:<name>`, `node:<name>`, `controller:<name>`, `guard`, or `anonymous`.
    pub actor: String,
    /// What: `POST /v1/vms` for an API call, `vm.restart`, `guard.isolate`, ...
    pub action: String,
    /// On what: `vm/<id>`, a request path, ...
    pub target: String,
    /// How it ended: an HTTP status code, `ok`, `failed: <why>`.
    pub outcome: String,
    /// Anything else worth keeping, sorted by key (so the bytes are deterministic).
    #[serde(default)]
    pub detail: BTreeMap<String, String>,
}

impl Event {
    /// An event with no detail; `seq` is filled in by [`Chain::append`].
    pub fn new(
        at_ms: u64,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        Self {
            seq: 0,
            at_ms,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: BTreeMap::new(),
        }
    }

    /// Adds one detail.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }
}

/// An event in the chain, as stored and exported (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The event.
    pub event: Event,
    /// Hex SHA-256 of the previous entry's canonical bytes ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// Hex SHA-256 of this entry's canonical bytes (`event` and `prev_hash`).
    pub hash: String,
    /// Hex ed25519 signature over the 32 bytes of `hash`.
    pub signature: String,
    /// [`key_id`] of the key that signed it.
    pub key_id: String,
}

/// The serialised form that is hashed: field order fixed by this struct, maps sorted.
#[derive(Serialize)]
struct Canonical<'a> {
    domain: &'a str,
    event: &'a Event,
    prev_hash: &'a str,
}

/// The bytes an entry's hash covers: the event and the previous entry's hash.
pub fn canonical_bytes(event: &Event, prev_hash: &str) -> Vec<u8> {
    let c = Canonical {
        domain: DOMAIN,
        event,
        prev_hash,
    };
    // Serialising a struct of strings, integers and a BTreeMap<String, String> cannot fail.
    serde_json::to_vec(&c).unwrap_or_default()
}

/// Hex SHA-256 of [`canonical_bytes`].
pub fn entry_hash(event: &Event, prev_hash: &str) -> String {
    hex::encode(Sha256::digest(canonical_bytes(event, prev_hash)))
}

/// A short name of a public key: the first 16 hex digits of the SHA-256 of its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// Builds the entry for `event` after the entry whose hash is `prev_hash`, signed by `key`.
/// Does not touch `event.seq`.
pub fn sign_entry(key: &SigningKey, event: Event, prev_hash: &str) -> Entry {
    let hash = entry_hash(&event, prev_hash);
    let digest = hash_bytes(&hash).unwrap_or_default();
    let signature = key.sign(&digest);
    Entry {
        event,
        prev_hash: prev_hash.to_owned(),
        hash,
        signature: hex::encode(signature.to_bytes()),
        key_id: key_id(&key.verifying_key()),
    }
}

fn hash_bytes(hex_hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

/// The last entry of a log: what the next one links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Its seq (0: the log is empty).
    pub seq: u64,
    /// Its hash ([`GENESIS_HASH`] when empty).
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// The end of a log, where entries are appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    head: Head,
}

impl Chain {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log whose last entry is `head`.
    pub fn from_head(head: Head) -> Self {
        Self { head }
    }

    /// A log whose last entry is `entry`.
    pub fn after(entry: &Entry) -> Self {
        Self::from_head(Head {
            seq: entry.event.seq,
            hash: entry.hash.clone(),
        })
    }

    /// The last entry's seq and hash.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Gives `event` the next seq, links it to the last entry, signs it, and makes it the last.
    pub fn append(&mut self, key: &SigningKey, mut event: Event) -> Entry {
        event.seq = self.head.seq + 1;
        let entry = sign_entry(key, event, &self.head.hash);
        self.head = Head {
            seq: entry.event.seq,
            hash: entry.hash.clone(),
        };
        entry
    }
}

/// Why an entry is bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The stored hash is not the hash of the entry's content: the entry was edited.
    HashMismatch {
        /// The hash stored in the entry.
        stored: String,
        /// The hash of its content.
        computed: String,
    },
    /// The signature does not verify with the log's public key: forged, or signed by another
    /// key.
    BadSignature {
        /// The key id the entry claims.
        key_id: String,
        /// The id of the key it was checked with.
        expected_key_id: String,
    },
    /// An entry is missing here: the seq jumps and the missing one does not come later.
    Deleted {
        /// The seq this position should hold.
        expected_seq: u64,
        /// The seq it holds.
        found_seq: u64,
    },
    /// Entries are out of order: the seq this position should hold comes later.
    Reordered {
        /// The seq this position should hold.
        expected_seq: u64,
        /// The seq it holds.
        found_seq: u64,
    },
    /// An entry that does not belong here: a repeated seq, or one that does not link to the
    /// previous entry.
    Inserted {
        /// The seq this position should hold.
        expected_seq: u64,
        /// The seq it holds.
        found_seq: u64,
    },
    /// The log ends before the recorded head: entries at the end were deleted.
    Truncated {
        /// The head's seq.
        head_seq: u64,
        /// The last seq present.
        last_seq: u64,
    },
    /// The log does not end where its recorded head says (it goes on past it, or its last
    /// entry has another hash).
    HeadMismatch {
        /// The head's seq.
        head_seq: u64,
        /// The last seq present.
        last_seq: u64,
    },
    /// The entry cannot be read at all.
    Unreadable {
        /// What is wrong with it.
        error: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::HashMismatch { stored, computed } => write!(
                f,
                "edited: its content hashes to {computed}, not the stored {stored}"
            ),
            Reason::BadSignature {
                key_id,
                expected_key_id,
            } => write!(
                f,
                "bad signature: does not verify with key {expected_key_id} (entry names key \
                 {key_id}): forged or signed by another key"
            ),
            Reason::Deleted {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "deleted: expected seq {expected_seq}, found seq {found_seq}"
            ),
            Reason::Reordered {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "reordered: expected seq {expected_seq}, found seq {found_seq} (seq \
                 {expected_seq} comes later)"
            ),
            Reason::Inserted {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "inserted: expected seq {expected_seq}, found seq {found_seq} that does not \
                 link to the previous entry"
            ),
            Reason::Truncated { head_seq, last_seq } => write!(
                f,
                "truncated: the log's head is seq {head_seq} but it ends at seq {last_seq}"
            ),
            Reason::HeadMismatch { head_seq, last_seq } => write!(
                f,
                "head mismatch: the log's head is seq {head_seq} but the log ends at seq \
                 {last_seq} with another hash"
            ),
            Reason::Unreadable { error } => write!(f, "unreadable: {error}"),
        }
    }
}

/// The first bad entry of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("audit log tampered at seq {seq} (position {index}): {reason}")]
pub struct Tampered {
    /// Position in the list checked, from 0.
    pub index: usize,
    /// The seq that position should hold (the first entry's is 1).
    pub seq: u64,
    /// What is wrong.
    pub reason: Reason,
}

/// What a successful check saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// How many entries.
    pub entries: usize,
    /// The last one (the empty head for an empty log).
    pub head: Head,
}

/// Checks a whole log (from seq 1, in order) against the public key: every entry's hash,
/// signature, seq and link to its predecessor. Names the first bad entry. Deleting entries at
/// the end cannot be seen this way: use [`verify_with_head`] where the head is known.
pub fn verify(entries: &[Entry], key: &VerifyingKey) -> Result<Verified, Tampered> {
    let expected_key_id = key_id(key);
    let mut head = Head::default();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = head.seq + 1;
        let bad = |reason| Tampered {
            index,
            seq: expected_seq,
            reason,
        };
        let computed = entry_hash(&entry.event, &entry.prev_hash);
        if computed != entry.hash {
            return Err(bad(Reason::HashMismatch {
                stored: entry.hash.clone(),
                computed,
            }));
        }
        if !signature_ok(entry, key) {
            return Err(bad(Reason::BadSignature {
                key_id: entry.key_id.clone(),
                expected_key_id,
            }));
        }
        let found_seq = entry.event.seq;
        if found_seq != expected_seq || entry.prev_hash != head.hash {
            let later = &entries[index + 1..];
            let reason = if found_seq > expected_seq {
                if later.iter().any(|e| e.event.seq == found_seq) {
                    Reason::Inserted {
                        expected_seq,
                        found_seq,
                    }
                } else if later.iter().any(|e| e.event.seq == expected_seq) {
                    Reason::Reordered {
                        expected_seq,
                        found_seq,
                    }
                } else {
                    Reason::Deleted {
                        expected_seq,
                        found_seq,
                    }
                }
            } else {
                Reason::Inserted {
                    expected_seq,
                    found_seq,
                }
            };
            return Err(bad(reason));
        }
        head = Head {
            seq: found_seq,
            hash: entry.hash.clone(),
        };
    }
    Ok(Verified {
        entries: entries.len(),
        head,
    })
}

/// [`verify`], and then that the log reaches `head` (the recorded last entry): entries deleted
/// at the end are reported as [`Reason::Truncated`] at the first missing seq.
pub fn verify_with_head(
    entries: &[Entry],
    key: &VerifyingKey,
    head: &Head,
) -> Result<Verified, Tampered> {
    let verified = verify(entries, key)?;
    if verified.head.seq < head.seq {
        return Err(Tampered {
            index: entries.len(),
            seq: verified.head.seq + 1,
            reason: Reason::Truncated {
                head_seq: head.seq,
                last_seq: verified.head.seq,
            },
        });
    }
    if verified.head != *head {
        // The log goes past the recorded head, or ends at its seq with another hash: a log
        // that is not the one the head was written for.
        let index = usize::try_from(head.seq)
            .unwrap_or(usize::MAX)
            .min(entries.len().saturating_sub(1));
        return Err(Tampered {
            index,
            seq: entries.get(index).map(|e| e.event.seq).unwrap_or(head.seq),
            reason: Reason::HeadMismatch {
                head_seq: head.seq,
                last_seq: verified.head.seq,
            },
        });
    }
    Ok(verified)
}

fn signature_ok(entry: &Entry, key: &VerifyingKey) -> bool {
    let Some(digest) = hash_bytes(&entry.hash) else {
        return false;
    };
    let mut sig = [0u8; 64];
    if hex::decode_to_slice(&entry.signature, &mut sig).is_err() {
        return false;
    }
    key.verify(&digest, &Signature::from_bytes(&sig)).is_ok()
}

/// A key that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("a key must be 64 hex digits (32 bytes)")]
    Format,
    /// Not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    Invalid,
}

fn key_bytes(text: &str) -> Result<[u8; 32], KeyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| KeyError::Format)?;
    Ok(out)
}

/// Reads a signing key written by [`signing_key_to_hex`].
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&key_bytes(text)?))
}

/// The signing key's secret bytes as 64 hex digits.
pub fn signing_key_to_hex(key: &SigningKey) -> String {
    hex::encode(key.to_bytes())
}

/// Reads a public key written by [`verifying_key_to_hex`].
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&key_bytes(text)?).map_err(|_| KeyError::Invalid)
}

/// The public key as 64 hex digits.
pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

#[cfg(test)]
mod tests;
