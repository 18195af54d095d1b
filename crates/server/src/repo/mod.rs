//! Typed repositories over the key-value store. Key layout:
//!
//! | key | value |
//! |---|---|
//! | `/vms/<id>` | [`firefleet_types::Vm`] JSON |
//! | `/vmnames/<tenant>/<name>` | the VM id (name uniqueness per tenant) |
//! | `/nodes/<id>` | [`firefleet_types::NodeInfo`] JSON |
//! | `/tokens/<sha256 of token>` | a token record JSON (secrets are never stored) |
//! | `/nodecerts/<id>` | [`nodes::NodeCertRecord`] JSON (which certificates of the node are accepted) |
//! | `/jointokens/<sha256 of token>` | [`nodes::JoinTokenRecord`] JSON |
//! | `/console/<vm id>` | the VM's console (last [`CONSOLE_KEEP`] bytes) |
//! | `/snapshots/<vm id>/<name>` | [`firefleet_types::Snapshot`] JSON |
//! | `/execs/<vm id>/<exec id>` | a pending exec ([`firefleet_api::ExecRequestRecord`]) |
//! | `/migrations/<vm id>` | the VM's current or last [`firefleet_types::Migration`] |
//! | `/functions/<tenant>/<name>` | [`firefleet_types::Function`] JSON |
//! | `/threats/<id>` | a [`firefleet_api::Threat`] the guard recorded |
//! | `/quarantine/images/<image>` | a [`firefleet_api::QuarantinedImage`] |
//! | `/compliance/{vm,node}/<id>` | a compliance record ([`VM_RECORDS`], [`NODE_RECORDS`]) |
//!
//! This layer knows the store and the records' types only: no policy, no guard, no HTTP.
//! What must happen before a write (admission, quarantine, quotas) is the `app` layer's.
//!
//! Every read-modify-write is a compare-and-swap on the key's revision, retried on conflict.

use firefleet_store::{KeyValue, KvStore, Revision};
use firefleet_types::NodeId;
use rand::RngCore;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

mod error;
mod functions;
mod migrations;
mod nodes;
mod paging;
mod snapshots;
mod threats;
mod vms;

pub use error::RepoError;
pub use functions::{
    delete_function, function_page, get_function, list_functions, put_function, update_function,
};
pub use migrations::{create_migration, migration_key, update_migration};
pub use nodes::{
    check_node_cert, create_join_token, enroll_node, remove_node, renew_node_cert, update_node,
    Enrolled, Enrolment,
};
pub use paging::Page;
pub use snapshots::{
    create_exec, create_snapshot, exec_key, exec_prefix, list_snapshots, snapshot_key,
    snapshot_prefix, update_snapshot,
};
pub use threats::{
    create_threat, delete_threat, get_quarantine, get_threat, list_quarantined, list_threats,
    quarantine_image, release_image, update_threat,
};
pub use vms::{
    append_console, create_vm_record, delete_vm_keys, delete_vm_records, get_console, get_vm,
    list_vms, update_vm, vm_id_by_name, vm_key, vm_page,
};

/// What the repositories read and write through: the store. The server's shared state is
/// one; a test can give any store.
pub trait Db: Send + Sync {
    /// The store.
    fn store(&self) -> &dyn KvStore;
}

impl Db for std::sync::Arc<dyn KvStore> {
    fn store(&self) -> &dyn KvStore {
        &**self
    }
}

/// Compliance records of VMs, by VM id (written with the VM at its admission).
pub const VM_RECORDS: &str = "/compliance/vm/";
/// Compliance records of nodes, by node name.
pub const NODE_RECORDS: &str = "/compliance/node/";

/// `/nodes/<id>`: a node's record.
pub fn node_key(id: &NodeId) -> String {
    format!("/nodes/{id}")
}

/// The stored form of a secret (its SHA-256, hex): secrets themselves are never stored.
pub fn hash_secret(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Decodes a stored record.
pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, RepoError> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| RepoError::Corrupt(format!("corrupt record at {}: {e}", kv.key)))
}

/// Encodes a record as stored (JSON).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RepoError> {
    serde_json::to_vec(v).map_err(|e| RepoError::Corrupt(format!("encoding a record: {e}")))
}

/// Reads and decodes one key.
pub async fn get_json<T: DeserializeOwned>(
    db: &impl Db,
    key: &str,
) -> Result<Option<(T, Revision)>, RepoError> {
    match db.store().get(key).await? {
        Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// Lists and decodes a prefix, with the revision it was read at.
pub async fn list_json<T: DeserializeOwned>(
    db: &impl Db,
    prefix: &str,
) -> Result<(Vec<T>, Revision), RepoError> {
    let (kvs, rev) = db.store().list(prefix).await?;
    let items = kvs.iter().map(decode).collect::<Result<Vec<T>, _>>()?;
    Ok((items, rev))
}

/// A fresh random secret, `<prefix>_<48 hex digits>`.
pub fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Deletes every record under `prefix` (best effort, one key at a time).
pub async fn delete_prefix(db: &impl Db, prefix: &str) -> Result<(), RepoError> {
    let (kvs, _) = db.store().list(prefix).await?;
    for kv in kvs {
        db.store().delete(&kv.key, None).await?;
    }
    Ok(())
}
