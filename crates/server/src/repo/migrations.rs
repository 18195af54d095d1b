//! Migration records (`/migrations/<vm id>`): a VM's current or last migration.

use firefleet_store::StoreError;
use firefleet_types::VmId;

use super::{encode, get_json, Db, RepoError};

/// `/migrations/<vm id>`: the VM's current or last migration.
pub fn migration_key(vm: &VmId) -> String {
    format!("/migrations/{vm}")
}

/// Records a new migration unless one is under way for the VM (409 then).
pub async fn create_migration(
    db: &impl Db,
    m: &firefleet_types::Migration,
) -> Result<(), RepoError> {
    let key = migration_key(&m.vm);
    let rev = match get_json::<firefleet_types::Migration>(db, &key).await? {
        Some((old, _)) if !old.phase.is_terminal() => {
            return Err(RepoError::Conflict(format!(
                "vm {} is already migrating to {} ({:?})",
                m.vm, old.to, old.phase
            )))
        }
        Some((_, rev)) => rev,
        None => 0,
    };
    match db.store().compare_and_swap(&key, rev, encode(m)?).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(RepoError::Conflict(format!(
            "vm {} is already migrating",
            m.vm
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Applies `f` to a VM's migration record with compare-and-swap.
pub async fn update_migration<F>(
    db: &impl Db,
    vm: &VmId,
    mut f: F,
) -> Result<firefleet_types::Migration, RepoError>
where
    F: FnMut(&mut firefleet_types::Migration) -> Result<bool, RepoError>,
{
    let key = migration_key(vm);
    loop {
        let Some((mut m, rev)) = get_json::<firefleet_types::Migration>(db, &key).await? else {
            return Err(RepoError::not_found("migration of vm", vm.as_str()));
        };
        if !f(&mut m)? {
            return Ok(m);
        }
        match db.store().compare_and_swap(&key, rev, encode(&m)?).await {
            Ok(_) => return Ok(m),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
