//! Function records (`/functions/<tenant>/<name>`).

use firefleet_store::{Compare, Op, Revision};
use firefleet_types::{Function, TenantId};

use super::{decode, encode, get_json, list_json, Db, Page, RepoError};

/// A function's key.
pub fn function_key(tenant: &TenantId, name: &str) -> String {
    format!("/functions/{tenant}/{name}")
}

/// Reads a function.
pub async fn get_function(
    db: &impl Db,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<(Function, Revision)>, RepoError> {
    get_json::<Function>(db, &function_key(tenant, name)).await
}

/// One page of the functions of `tenant` (all tenants: None) by tenant and name, and the next
/// page's cursor.
pub async fn function_page(
    db: &impl Db,
    tenant: Option<&TenantId>,
    page: &Page,
) -> Result<(Vec<Function>, Option<String>), RepoError> {
    let prefix = match tenant {
        Some(t) => format!("/functions/{t}/"),
        None => "/functions/".to_owned(),
    };
    let (kvs, _) = db.store().list(&prefix).await?;
    let (keys, next) = page.select(&kvs, &prefix);
    let functions = keys
        .into_iter()
        .map(decode)
        .collect::<Result<Vec<Function>, _>>()?;
    Ok((functions, next))
}

/// Lists every function.
pub async fn list_functions(db: &impl Db) -> Result<Vec<Function>, RepoError> {
    Ok(list_json(db, "/functions/").await?.0)
}

/// Writes a function if its key is still at `rev` (None: absent); false on a conflict.
pub async fn put_function(
    db: &impl Db,
    f: &Function,
    rev: Option<Revision>,
) -> Result<bool, RepoError> {
    let key = function_key(&f.spec.tenant, &f.spec.name);
    let cmp = match rev {
        Some(r) => Compare::ModRevision {
            key: key.clone(),
            equals: r,
        },
        None => Compare::Absent { key: key.clone() },
    };
    let resp = db
        .store()
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
    db: &impl Db,
    tenant: &TenantId,
    name: &str,
    mut f: F,
) -> Result<Option<Function>, RepoError>
where
    F: FnMut(&mut Function) -> bool,
{
    loop {
        let Some((mut func, rev)) = get_function(db, tenant, name).await? else {
            return Ok(None);
        };
        if !f(&mut func) {
            return Ok(Some(func));
        }
        if put_function(db, &func, Some(rev)).await? {
            return Ok(Some(func));
        }
    }
}

/// Removes a function's record.
pub async fn delete_function(db: &impl Db, tenant: &TenantId, name: &str) -> Result<(), RepoError> {
    db.store().delete(&function_key(tenant, name), None).await?;
    Ok(())
}
