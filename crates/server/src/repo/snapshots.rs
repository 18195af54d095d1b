//! Snapshot records (`/snapshots/<vm id>/<name>`) and pending execs
//! (`/execs/<vm id>/<exec id>`).

use firefleet_store::{Revision, StoreError};
use firefleet_types::VmId;

use super::{encode, get_json, list_json, Db, RepoError};

/// Where a VM's snapshot records are kept.
pub fn snapshot_prefix(vm: &VmId) -> String {
    format!("/snapshots/{vm}/")
}

/// Where a VM's pending execs are kept.
pub fn exec_prefix(vm: &VmId) -> String {
    format!("/execs/{vm}/")
}

pub fn snapshot_key(vm: &VmId, name: &str) -> String {
    format!("/snapshots/{vm}/{name}")
}

pub fn exec_key(vm: &VmId, id: &str) -> String {
    format!("/execs/{vm}/{id}")
}

/// Creates a snapshot record (Pending), unique per VM and name.
pub async fn create_snapshot(
    db: &impl Db,
    snap: &firefleet_types::Snapshot,
) -> Result<(), RepoError> {
    match db
        .store()
        .compare_and_swap(&snapshot_key(&snap.vm, &snap.name), 0, encode(snap)?)
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(RepoError::Conflict(format!(
            "vm {} already has a snapshot named {:?}",
            snap.vm, snap.name
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Lists a VM's snapshots.
pub async fn list_snapshots(
    db: &impl Db,
    vm: &VmId,
) -> Result<Vec<firefleet_types::Snapshot>, RepoError> {
    Ok(list_json(db, &format!("/snapshots/{vm}/")).await?.0)
}

/// Applies `f` to a snapshot record with compare-and-swap.
pub async fn update_snapshot<F>(
    db: &impl Db,
    vm: &VmId,
    name: &str,
    mut f: F,
) -> Result<firefleet_types::Snapshot, RepoError>
where
    F: FnMut(&mut firefleet_types::Snapshot) -> Result<bool, RepoError>,
{
    let key = snapshot_key(vm, name);
    loop {
        let Some((mut snap, rev)) = get_json::<firefleet_types::Snapshot>(db, &key).await? else {
            return Err(RepoError::not_found("snapshot", name));
        };
        if !f(&mut snap)? {
            return Ok(snap);
        }
        match db.store().compare_and_swap(&key, rev, encode(&snap)?).await {
            Ok(_) => return Ok(snap),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Stores an exec request for the agent.
pub async fn create_exec(
    db: &impl Db,
    rec: &firefleet_api::ExecRequestRecord,
) -> Result<Revision, RepoError> {
    Ok(db
        .store()
        .compare_and_swap(&exec_key(&rec.vm, &rec.id), 0, encode(rec)?)
        .await?)
}
