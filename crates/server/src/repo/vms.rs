//! VM records (`/vms/<id>`, unique by `/vmnames/<tenant>/<name>`) and their consoles
//! (`/console/<vm id>`).

use firefleet_store::{Compare, Op, Revision, StoreError};
use firefleet_types::{NodeId, TenantId, Vm, VmId};
use serde::{Deserialize, Serialize};

use super::{
    delete_prefix, encode, exec_prefix, get_json, list_json, migration_key, snapshot_prefix, Db,
    Page, RepoError, VM_RECORDS,
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

/// `/vms/<id>`: a VM's record.
pub fn vm_key(id: &VmId) -> String {
    format!("/vms/{id}")
}

fn vm_name_key(tenant: &TenantId, name: &str) -> String {
    format!("/vmnames/{tenant}/{name}")
}

fn console_key(id: &VmId) -> String {
    format!("/console/{id}")
}

/// Stores a new VM record with its name (unique per tenant) and its admission's compliance
/// record (`compliance`, under [`VM_RECORDS`]), in one transaction; `Conflict` when the
/// tenant has a VM of that name.
pub async fn create_vm_record(
    db: &impl Db,
    vm: &Vm,
    compliance: &impl Serialize,
) -> Result<(), RepoError> {
    let id = &vm.id;
    let name_key = vm_name_key(&vm.spec.tenant, &vm.spec.name);
    let resp = db
        .store()
        .txn(
            vec![Compare::Absent {
                key: name_key.clone(),
            }],
            vec![
                Op::Put {
                    key: vm_key(id),
                    value: encode(vm)?,
                },
                Op::Put {
                    key: name_key,
                    value: id.as_str().as_bytes().to_vec(),
                },
                Op::Put {
                    key: format!("{VM_RECORDS}{id}"),
                    value: encode(compliance)?,
                },
            ],
            vec![],
        )
        .await?;
    if !resp.succeeded {
        return Err(RepoError::Conflict(format!(
            "a VM named {:?} already exists for tenant {}",
            vm.spec.name, vm.spec.tenant
        )));
    }
    Ok(())
}

/// The id of `tenant`'s VM named `name`, if there is one.
pub async fn vm_id_by_name(
    db: &impl Db,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<VmId>, RepoError> {
    match db.store().get(&vm_name_key(tenant, name)).await? {
        Some(kv) => String::from_utf8_lossy(&kv.value)
            .parse::<VmId>()
            .map(Some)
            .map_err(RepoError::Invalid),
        None => Ok(None),
    }
}

/// One page of the VMs of `tenant` (all tenants: None) by name, read through their names'
/// keys (only the page's VMs are read; one gone since the names were read is left out), and
/// the next page's cursor.
pub async fn vm_page(
    db: &impl Db,
    tenant: Option<&TenantId>,
    page: &Page,
) -> Result<(Vec<Vm>, Option<String>), RepoError> {
    let prefix = match tenant {
        Some(t) => format!("/vmnames/{t}/"),
        None => "/vmnames/".to_owned(),
    };
    let (kvs, _) = db.store().list(&prefix).await?;
    let (keys, next) = page.select(&kvs, &prefix);
    let mut items = Vec::with_capacity(keys.len());
    for kv in keys {
        let id = String::from_utf8_lossy(&kv.value).parse::<VmId>()?;
        // Gone since the names were read: left out.
        if let Some(vm) = get_vm(db, &id).await? {
            items.push(vm);
        }
    }
    Ok((items, next))
}

/// Reads a VM.
pub async fn get_vm(db: &impl Db, id: &VmId) -> Result<Option<Vm>, RepoError> {
    Ok(get_json::<Vm>(db, &vm_key(id)).await?.map(|(v, _)| v))
}

/// Lists every VM.
pub async fn list_vms(db: &impl Db) -> Result<(Vec<Vm>, Revision), RepoError> {
    list_json(db, "/vms/").await
}

/// Applies `f` to a VM with compare-and-swap, retrying on conflict. `f` returns whether it
/// changed anything; nothing is written when it did not. Returns the VM as stored after.
pub async fn update_vm<F>(db: &impl Db, id: &VmId, mut f: F) -> Result<Vm, RepoError>
where
    F: FnMut(&mut Vm) -> Result<bool, RepoError>,
{
    loop {
        let Some((mut vm, rev)) = get_json::<Vm>(db, &vm_key(id)).await? else {
            return Err(RepoError::not_found("vm", id.as_str()));
        };
        if !f(&mut vm)? {
            return Ok(vm);
        }
        match db
            .store()
            .compare_and_swap(&vm_key(id), rev, encode(&vm)?)
            .await
        {
            Ok(_) => return Ok(vm),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes the records that hang off a VM: its snapshot, exec and migration records.
pub async fn delete_vm_records(db: &impl Db, id: &VmId) -> Result<(), RepoError> {
    delete_prefix(db, &snapshot_prefix(id)).await?;
    delete_prefix(db, &exec_prefix(id)).await?;
    delete_prefix(db, &migration_key(id)).await
}

/// Removes a VM's record, its name and its console (one transaction).
pub async fn delete_vm_keys(db: &impl Db, vm: &Vm) -> Result<(), RepoError> {
    db.store()
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

/// Reads a VM's stored console.
pub async fn get_console(db: &impl Db, id: &VmId) -> Result<ConsoleRecord, RepoError> {
    Ok(get_json::<ConsoleRecord>(db, &console_key(id))
        .await?
        .map(|(c, _)| c)
        .unwrap_or_default())
}

/// Appends to a VM's console if `offset` is where the stored copy ends; returns the new end.
/// An upload at another offset changes nothing (the agent resends from the returned end).
pub async fn append_console(
    db: &impl Db,
    id: &VmId,
    node: &NodeId,
    offset: u64,
    bytes: &[u8],
) -> Result<u64, RepoError> {
    loop {
        let (mut rec, rev) = get_json::<ConsoleRecord>(db, &console_key(id))
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
                match db
                    .store()
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
        match db
            .store()
            .compare_and_swap(&console_key(id), rev, encode(&rec)?)
            .await
        {
            Ok(_) => return Ok(new_end),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
