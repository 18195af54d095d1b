//! Typed repositories over the key-value store. Key layout:
//!
//! | key | value |
//! |---|---|
//! | `/vms/<id>` | [`Vm`] JSON |
//! | `/vmnames/<tenant>/<name>` | the VM id (name uniqueness per tenant) |
//! | `/nodes/<id>` | [`NodeInfo`] JSON |
//! | `/tokens/<sha256 of token>` | [`crate::tokens::TokenRecord`] JSON (secrets are never stored) |
//! | `/nodecerts/<id>` | [`nodes::NodeCertRecord`] JSON (which certificates of the node are accepted) |
//! | `/jointokens/<sha256 of token>` | [`nodes::JoinTokenRecord`] JSON |
//! | `/console/<vm id>` | the VM's console (last [`CONSOLE_KEEP`] bytes) |
//! | `/snapshots/<vm id>/<name>` | [`firefleet_types::Snapshot`] JSON |
//! | `/execs/<vm id>/<exec id>` | a pending exec ([`firefleet_api::ExecRequestRecord`]) |
//!
//! Every read-modify-write is a compare-and-swap on the key's revision, retried on conflict.

use firefleet_store::{Compare, KeyValue, Op, Revision, StoreError};
use firefleet_types::{
    DesiredState, Function, NodeId, NodeInfo, TenantId, Vm, VmId, VmSpec, VmStatus,
};
use rand::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{now_ms, ApiError, AppState};

mod nodes;

pub use nodes::{
    check_node_cert, create_join_token, enroll_node, remove_node, renew_node_cert, Enrolled,
    Enrolment,
};

/// Bytes of console kept per VM.
pub const CONSOLE_KEEP: usize = 256 * 1024;

/// A VM's console as stored: the bytes kept and the stream offset of the first kept byte.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsoleRecord {
    /// Offset of `data[0]` in the VM's console stream.
    pub start: u64,
    /// The kept bytes.
    #[serde(with = "b64")]
    pub data: Vec<u8>,
    /// The node whose console file the stream continues now.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// Where that node's file starts in the stream: a VM that moved to another node (failover,
    /// migration, restore there) has a new console file there, appended after what was.
    #[serde(default)]
    pub base: u64,
}

mod b64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

pub fn vm_key(id: &VmId) -> String {
    format!("/vms/{id}")
}
fn vm_name_key(tenant: &TenantId, name: &str) -> String {
    format!("/vmnames/{tenant}/{name}")
}
pub fn node_key(id: &NodeId) -> String {
    format!("/nodes/{id}")
}
fn console_key(id: &VmId) -> String {
    format!("/console/{id}")
}
pub(crate) fn hash_secret(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, ApiError> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("corrupt record at {}: {e}", kv.key)))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Internal(format!("encoding a record: {e}")))
}

/// Reads and decodes one key.
pub async fn get_json<T: DeserializeOwned>(
    state: &AppState,
    key: &str,
) -> Result<Option<(T, Revision)>, ApiError> {
    match state.store.get(key).await? {
        Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// Lists and decodes a prefix, with the revision it was read at.
pub async fn list_json<T: DeserializeOwned>(
    state: &AppState,
    prefix: &str,
) -> Result<(Vec<T>, Revision), ApiError> {
    let (kvs, rev) = state.store.list(prefix).await?;
    let items = kvs.iter().map(decode).collect::<Result<Vec<T>, _>>()?;
    Ok((items, rev))
}

pub(crate) fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Creates a VM record (phase Pending), unique by (tenant, name).
pub async fn create_vm(state: &AppState, spec: VmSpec) -> Result<Vm, ApiError> {
    create_vm_admitted(state, spec).await.map(|(vm, _)| vm)
}

/// Creates a VM record after admission: refused (`PolicyDenied`) when a policy in `deny` mode
/// refuses its spec; otherwise stored with its compliance record (one transaction); returns
/// the VM and the admission warnings.
pub async fn create_vm_admitted(
    state: &AppState,
    spec: VmSpec,
) -> Result<(Vm, Vec<String>), ApiError> {
    crate::guard::check_quarantine(state, &spec.image).await?;
    let mut admission = crate::policy::admit_vm(state, &spec).await?;
    let id: VmId = VmId::parse("id", &uuid::Uuid::new_v4().to_string())?;
    admission.record.record.subject = id.to_string();
    let vm = Vm {
        id: id.clone(),
        generation: firefleet_types::Generation(1),
        spec,
        status: VmStatus::new(now_ms()),
        deleting: false,
    };
    let name_key = vm_name_key(&vm.spec.tenant, &vm.spec.name);
    let resp = state
        .store
        .txn(
            vec![Compare::Absent {
                key: name_key.clone(),
            }],
            vec![
                Op::Put {
                    key: vm_key(&id),
                    value: encode(&vm)?,
                },
                Op::Put {
                    key: name_key,
                    value: id.as_str().as_bytes().to_vec(),
                },
                Op::Put {
                    key: format!("{}{id}", crate::policy::VM_RECORDS),
                    value: encode(&admission.record)?,
                },
            ],
            vec![],
        )
        .await?;
    if !resp.succeeded {
        return Err(ApiError::Conflict(format!(
            "a VM named {:?} already exists for tenant {}",
            vm.spec.name, vm.spec.tenant
        )));
    }
    Ok((vm, admission.warnings))
}

/// Reads a VM.
pub async fn get_vm(state: &AppState, id: &VmId) -> Result<Option<Vm>, ApiError> {
    Ok(get_json::<Vm>(state, &vm_key(id)).await?.map(|(v, _)| v))
}

/// Lists every VM.
pub async fn list_vms(state: &AppState) -> Result<(Vec<Vm>, Revision), ApiError> {
    list_json(state, "/vms/").await
}

/// Applies `f` to a VM with compare-and-swap, retrying on conflict. `f` returns whether it
/// changed anything; nothing is written when it did not. Returns the VM as stored after.
pub async fn update_vm<F>(state: &AppState, id: &VmId, mut f: F) -> Result<Vm, ApiError>
where
    F: FnMut(&mut Vm) -> Result<bool, ApiError>,
{
    loop {
        let Some((mut vm, rev)) = get_json::<Vm>(state, &vm_key(id)).await? else {
            return Err(ApiError::not_found("vm", id.as_str()));
        };
        if !f(&mut vm)? {
            return Ok(vm);
        }
        match state
            .store
            .compare_and_swap(&vm_key(id), rev, encode(&vm)?)
            .await
        {
            Ok(_) => return Ok(vm),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes a VM's record, its name, its console, and its snapshot and exec records.
pub async fn delete_vm_record(state: &AppState, vm: &Vm) -> Result<(), ApiError> {
    delete_prefix(state, &format!("/snapshots/{}/", vm.id)).await?;
    delete_prefix(state, &format!("/execs/{}/", vm.id)).await?;
    delete_prefix(state, &migration_key(&vm.id)).await?;
    let _ = tokio::fs::remove_dir_all(state.data_dir.join("snapshots").join(vm.id.as_str())).await;
    state
        .store
        .txn(
            vec![],
            vec![
                Op::Delete {
                    key: vm_key(&vm.id),
                },
                Op::Delete {
                    key: vm_name_key(&vm.spec.tenant, &vm.spec.name),
                },
                Op::Delete {
                    key: console_key(&vm.id),
                },
            ],
            vec![],
        )
        .await?;
    Ok(())
}

/// Removes a VM: at once if it never reached a node, else through its agent (`deleting`).
pub async fn remove_vm(state: &AppState, vm: &Vm) -> Result<(), ApiError> {
    if vm.status.node.is_none() {
        return delete_vm_record(state, vm).await;
    }
    update_vm(state, &vm.id, |vm| {
        if vm.deleting {
            return Ok(false);
        }
        vm.deleting = true;
        vm.spec.desired = DesiredState::Stopped;
        vm.generation = vm.generation.next();
        Ok(true)
    })
    .await?;
    state.kick.notify_waiters();
    Ok(())
}

/// Reads a VM's stored console.
pub async fn get_console(state: &AppState, id: &VmId) -> Result<ConsoleRecord, ApiError> {
    Ok(get_json::<ConsoleRecord>(state, &console_key(id))
        .await?
        .map(|(c, _)| c)
        .unwrap_or_default())
}

/// Appends to a VM's console if `offset` is where the stored copy ends; returns the new end.
/// An upload at another offset changes nothing (the agent resends from the returned end).
pub async fn append_console(
    state: &AppState,
    id: &VmId,
    node: &NodeId,
    offset: u64,
    bytes: &[u8],
) -> Result<u64, ApiError> {
    loop {
        let (mut rec, rev) = get_json::<ConsoleRecord>(state, &console_key(id))
            .await?
            .unwrap_or_default();
        let end = rec.start + rec.data.len() as u64;
        let moved = rec.node.as_ref() != Some(node);
        if moved {
            // A new node's file: its offset 0 is the stream's current end.
            rec.node = Some(node.clone());
            rec.base = end;
        }
        // Offsets are the node's file's; the answer too.
        let local_end = end - rec.base;
        if offset != local_end || bytes.is_empty() {
            if moved {
                match state
                    .store
                    .compare_and_swap(&console_key(id), rev, encode(&rec)?)
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(local_end);
        }
        rec.data.extend_from_slice(bytes);
        if rec.data.len() > CONSOLE_KEEP {
            let cut = rec.data.len() - CONSOLE_KEEP;
            rec.data.drain(..cut);
            rec.start += cut as u64;
        }
        let new_end = rec.start + rec.data.len() as u64 - rec.base;
        match state
            .store
            .compare_and_swap(&console_key(id), rev, encode(&rec)?)
            .await
        {
            Ok(_) => return Ok(new_end),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Applies `f` to a node with compare-and-swap.
pub async fn update_node<F>(state: &AppState, id: &NodeId, mut f: F) -> Result<NodeInfo, ApiError>
where
    F: FnMut(&mut NodeInfo) -> bool,
{
    loop {
        let Some((mut node, rev)) = get_json::<NodeInfo>(state, &node_key(id)).await? else {
            return Err(ApiError::not_found("node", id.as_str()));
        };
        if !f(&mut node) {
            return Ok(node);
        }
        match state
            .store
            .compare_and_swap(&node_key(id), rev, encode(&node)?)
            .await
        {
            Ok(_) => return Ok(node),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn snapshot_key(vm: &VmId, name: &str) -> String {
    format!("/snapshots/{vm}/{name}")
}

pub fn exec_key(vm: &VmId, id: &str) -> String {
    format!("/execs/{vm}/{id}")
}

/// Creates a snapshot record (Pending), unique per VM and name.
pub async fn create_snapshot(
    state: &AppState,
    snap: &firefleet_types::Snapshot,
) -> Result<(), ApiError> {
    match state
        .store
        .compare_and_swap(&snapshot_key(&snap.vm, &snap.name), 0, encode(snap)?)
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(ApiError::Conflict(format!(
            "vm {} already has a snapshot named {:?}",
            snap.vm, snap.name
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Lists a VM's snapshots.
pub async fn list_snapshots(
    state: &AppState,
    vm: &VmId,
) -> Result<Vec<firefleet_types::Snapshot>, ApiError> {
    Ok(list_json(state, &format!("/snapshots/{vm}/")).await?.0)
}

/// Applies `f` to a snapshot record with compare-and-swap.
pub async fn update_snapshot<F>(
    state: &AppState,
    vm: &VmId,
    name: &str,
    mut f: F,
) -> Result<firefleet_types::Snapshot, ApiError>
where
    F: FnMut(&mut firefleet_types::Snapshot) -> Result<bool, ApiError>,
{
    let key = snapshot_key(vm, name);
    loop {
        let Some((mut snap, rev)) = get_json::<firefleet_types::Snapshot>(state, &key).await?
        else {
            return Err(ApiError::not_found("snapshot", name));
        };
        if !f(&mut snap)? {
            return Ok(snap);
        }
        match state
            .store
            .compare_and_swap(&key, rev, encode(&snap)?)
            .await
        {
            Ok(_) => return Ok(snap),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Deletes every record under `prefix` (best effort, one key at a time).
pub async fn delete_prefix(state: &AppState, prefix: &str) -> Result<(), ApiError> {
    let (kvs, _) = state.store.list(prefix).await?;
    for kv in kvs {
        state.store.delete(&kv.key, None).await?;
    }
    Ok(())
}

/// Stores an exec request for the agent.
pub async fn create_exec(
    state: &AppState,
    rec: &firefleet_api::ExecRequestRecord,
) -> Result<Revision, ApiError> {
    Ok(state
        .store
        .compare_and_swap(&exec_key(&rec.vm, &rec.id), 0, encode(rec)?)
        .await?)
}

/// `/migrations/<vm id>`: the VM's current or last migration.
pub fn migration_key(vm: &VmId) -> String {
    format!("/migrations/{vm}")
}

/// Records a new migration unless one is under way for the VM (409 then).
pub async fn create_migration(
    state: &AppState,
    m: &firefleet_types::Migration,
) -> Result<(), ApiError> {
    let key = migration_key(&m.vm);
    let rev = match get_json::<firefleet_types::Migration>(state, &key).await? {
        Some((old, _)) if !old.phase.is_terminal() => {
            return Err(ApiError::Conflict(format!(
                "vm {} is already migrating to {} ({:?})",
                m.vm, old.to, old.phase
            )))
        }
        Some((_, rev)) => rev,
        None => 0,
    };
    match state.store.compare_and_swap(&key, rev, encode(m)?).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(ApiError::Conflict(format!(
            "vm {} is already migrating",
            m.vm
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Applies `f` to a VM's migration record with compare-and-swap.
pub async fn update_migration<F>(
    state: &AppState,
    vm: &VmId,
    mut f: F,
) -> Result<firefleet_types::Migration, ApiError>
where
    F: FnMut(&mut firefleet_types::Migration) -> Result<bool, ApiError>,
{
    let key = migration_key(vm);
    loop {
        let Some((mut m, rev)) = get_json::<firefleet_types::Migration>(state, &key).await? else {
            return Err(ApiError::not_found("migration of vm", vm.as_str()));
        };
        if !f(&mut m)? {
            return Ok(m);
        }
        match state.store.compare_and_swap(&key, rev, encode(&m)?).await {
            Ok(_) => return Ok(m),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A function's key.
pub fn function_key(tenant: &TenantId, name: &str) -> String {
    format!("/functions/{tenant}/{name}")
}

/// Reads a function.
pub async fn get_function(
    state: &AppState,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<(Function, Revision)>, ApiError> {
    get_json::<Function>(state, &function_key(tenant, name)).await
}

/// Lists every function.
pub async fn list_functions(state: &AppState) -> Result<Vec<Function>, ApiError> {
    Ok(list_json(state, "/functions/").await?.0)
}

/// Writes a function if its key is still at `rev` (None: absent); false on a conflict.
pub async fn put_function(
    state: &AppState,
    f: &Function,
    rev: Option<Revision>,
) -> Result<bool, ApiError> {
    let key = function_key(&f.spec.tenant, &f.spec.name);
    let cmp = match rev {
        Some(r) => Compare::ModRevision {
            key: key.clone(),
            equals: r,
        },
        None => Compare::Absent { key: key.clone() },
    };
    let resp = state
        .store
        .txn(
            vec![cmp],
            vec![Op::Put {
                key,
                value: encode(f)?,
            }],
            vec![],
        )
        .await?;
    Ok(resp.succeeded)
}

/// Applies `f` to a function with compare-and-swap, retrying on conflict (see [`update_vm`]).
/// None if the function is gone.
pub async fn update_function<F>(
    state: &AppState,
    tenant: &TenantId,
    name: &str,
    mut f: F,
) -> Result<Option<Function>, ApiError>
where
    F: FnMut(&mut Function) -> bool,
{
    loop {
        let Some((mut func, rev)) = get_function(state, tenant, name).await? else {
            return Ok(None);
        };
        if !f(&mut func) {
            return Ok(Some(func));
        }
        if put_function(state, &func, Some(rev)).await? {
            return Ok(Some(func));
        }
    }
}

/// Removes a function's record.
pub async fn delete_function(
    state: &AppState,
    tenant: &TenantId,
    name: &str,
) -> Result<(), ApiError> {
    state
        .store
        .delete(&function_key(tenant, name), None)
        .await?;
    Ok(())
}
