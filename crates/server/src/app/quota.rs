//! Per-tenant quotas: what a tenant may hold (VMs, vCPUs, memory, functions, snapshots), what
//! it holds, and the check made before each create.
//!
//! - The limits are the tenant's record's `quota` (`PUT /v1/tenants/{id}`), else the server's
//!   default ([`ServerConfig::default_quota`](crate::ServerConfig)); the admin tenant is never
//!   limited. A limit left out is unlimited.
//! - VMs, vCPUs and memory count the tenant's own VMs, found through its `/vmnames/<tenant>/`
//!   keys (never by decoding every VM in the store). A function's template and instances are not
//!   counted there: the controller makes them, bounded by the function's `max`; a function
//!   counts once against `functions`. Snapshots count those of the tenant's own VMs. A VM being
//!   deleted counts until it is gone.
//! - Enforced on `POST /v1/vms`, on deploying a new function and on `POST
//!   /v1/vms/{vm}/snapshots`. Guard replacements and function instances are the server's own
//!   creations and are not refused.
//! - Concurrent creates of one tenant are serialised in this process ([`QuotaLocks`]): the
//!   usage is counted and the object written under the tenant's lock, so twenty creates against
//!   room for five make five. Several server replicas (the etcd backend, not built) would need a
//!   counter in the store, updated in the create's transaction, instead.
//!
//! [`check`] is pure; the rest reads the store.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use firefleet_api::{QuotaUsage, TenantList, TenantQuota, ADMIN_TENANT};
use firefleet_types::{TenantId, Vm, VmId};
use tokio::sync::OwnedMutexGuard;

use crate::{repo, ApiError, AppState};

/// The server's default quota: 100 VMs, 200 vCPUs, 256 GiB, 50 functions, 200 snapshots.
pub const DEFAULT_QUOTA: TenantQuota = TenantQuota {
    vms: Some(100),
    vcpus: Some(200),
    memory_mib: Some(256 * 1024),
    functions: Some(50),
    snapshots: Some(200),
};

/// Idle per-tenant locks kept before unused ones are dropped.
const MAX_IDLE_LOCKS: usize = 1024;

/// One async mutex per tenant, held while a create counts usage and writes. The map keeps the
/// locks in use (held or awaited) and at most [`MAX_IDLE_LOCKS`] others.
#[derive(Default)]
pub struct QuotaLocks {
    locks: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

impl QuotaLocks {
    /// Waits for, and holds until dropped, the tenant's create lock.
    pub async fn lock(&self, tenant: &TenantId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if locks.len() >= MAX_IDLE_LOCKS {
                // A lock only the map holds is neither held nor awaited.
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(tenant.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// A quota a create would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The quota's name (`vms`, `vcpus`, `memory_mib`, `functions`, `snapshots`).
    pub quota: &'static str,
    /// What the tenant holds.
    pub used: u64,
    /// What the create adds.
    pub adding: u64,
    /// The limit.
    pub limit: u64,
}

impl Exceeded {
    /// The refusal, naming the quota, the usage, the limit and how to raise it.
    pub fn into_error(self, tenant: &TenantId) -> ApiError {
        let raise = self
            .used
            .saturating_add(self.adding)
            .max(self.limit.saturating_mul(2));
        ApiError::QuotaExceeded(format!(
            "quota exceeded: {} {} + {} > {} (tenant {tenant}; `firefleet tenant set {tenant} \
             --quota {}={raise}`)",
            self.quota, self.used, self.adding, self.limit, self.quota
        ))
    }
}

/// Whether `usage` plus `adding` stays within `quota`; the first quota passed otherwise. Only
/// the quantities `adding` grows are checked, so a tenant above a lowered limit can still
/// delete and make what does not add to it. Pure.
pub fn check(quota: &TenantQuota, usage: &QuotaUsage, adding: &QuotaUsage) -> Result<(), Exceeded> {
    let rows = [
        ("vms", quota.vms, usage.vms, adding.vms),
        ("vcpus", quota.vcpus, usage.vcpus, adding.vcpus),
        (
            "memory_mib",
            quota.memory_mib,
            usage.memory_mib,
            adding.memory_mib,
        ),
        (
            "functions",
            quota.functions,
            usage.functions,
            adding.functions,
        ),
        (
            "snapshots",
            quota.snapshots,
            usage.snapshots,
            adding.snapshots,
        ),
    ];
    for (name, limit, used, add) in rows {
        if let Some(limit) = limit {
            if add > 0 && used.saturating_add(add) > limit {
                return Err(Exceeded {
                    quota: name,
                    used,
                    adding: add,
                    limit,
                });
            }
        }
    }
    Ok(())
}

/// The tenant's limits: its record's quota, else the server's default; None for the admin
/// tenant (unlimited).
pub async fn limits(state: &AppState, tenant: &TenantId) -> Result<Option<TenantQuota>, ApiError> {
    if tenant.as_str() == ADMIN_TENANT {
        return Ok(None);
    }
    let record = crate::app::policy::tenant(state, tenant).await?;
    Ok(Some(record.quota.unwrap_or(state.default_quota)))
}

/// The tenant's VMs, read by id from its `/vmnames/<tenant>/` keys, by name.
pub async fn tenant_vms(state: &AppState, tenant: &TenantId) -> Result<Vec<Vm>, ApiError> {
    let (names, _) = state.store.list(&format!("/vmnames/{tenant}/")).await?;
    let mut vms = Vec::with_capacity(names.len());
    for kv in names {
        let id = String::from_utf8_lossy(&kv.value)
            .parse::<VmId>()
            .map_err(ApiError::Validation)?;
        if let Some(vm) = repo::get_vm(state, &id).await? {
            vms.push(vm);
        }
    }
    Ok(vms)
}

/// The tenant's own VMs (not its functions'), as its quota counts them.
async fn own_vms(state: &AppState, tenant: &TenantId) -> Result<Vec<Vm>, ApiError> {
    let mut vms = tenant_vms(state, tenant).await?;
    vms.retain(|vm| vm.spec.function.is_none());
    Ok(vms)
}

fn count_vms(vms: &[Vm]) -> QuotaUsage {
    vms.iter().fold(QuotaUsage::default(), |mut u, vm| {
        u.vms += 1;
        u.vcpus += u64::from(vm.spec.resources.vcpus);
        u.memory_mib = u.memory_mib.saturating_add(vm.spec.resources.memory_mib);
        u
    })
}

async fn count_snapshots(state: &AppState, vms: &[Vm]) -> Result<u64, ApiError> {
    let mut n = 0;
    for vm in vms {
        n += state
            .store
            .list(&format!("/snapshots/{}/", vm.id))
            .await?
            .0
            .len() as u64;
    }
    Ok(n)
}

async fn count_functions(state: &AppState, tenant: &TenantId) -> Result<u64, ApiError> {
    Ok(state
        .store
        .list(&format!("/functions/{tenant}/"))
        .await?
        .0
        .len() as u64)
}

/// Everything the tenant holds.
pub async fn usage(state: &AppState, tenant: &TenantId) -> Result<QuotaUsage, ApiError> {
    let vms = own_vms(state, tenant).await?;
    Ok(QuotaUsage {
        snapshots: count_snapshots(state, &vms).await?,
        functions: count_functions(state, tenant).await?,
        ..count_vms(&vms)
    })
}

/// What a create adds, checked against the tenant's quota under its lock.
pub enum Adding<'a> {
    /// A VM with these resources.
    Vm(firefleet_types::Resources),
    /// A function of this name (nothing when it exists: a deploy then changes it).
    Function(&'a str),
    /// A snapshot.
    Snapshot,
}

/// Takes the tenant's create lock and checks that `adding` fits its quota; the caller writes
/// the object while holding the returned guard. Refused with [`ApiError::QuotaExceeded`].
pub async fn admit(
    state: &AppState,
    tenant: &TenantId,
    adding: Adding<'_>,
) -> Result<OwnedMutexGuard<()>, ApiError> {
    let guard = state.quota_locks.lock(tenant).await;
    let Some(quota) = limits(state, tenant).await? else {
        return Ok(guard);
    };
    let (used, add) = match adding {
        Adding::Vm(r) => (
            count_vms(&own_vms(state, tenant).await?),
            QuotaUsage {
                vms: 1,
                vcpus: u64::from(r.vcpus),
                memory_mib: r.memory_mib,
                ..QuotaUsage::default()
            },
        ),
        Adding::Function(name) if repo::get_function(state, tenant, name).await?.is_some() => {
            return Ok(guard)
        }
        Adding::Function(_) => (
            QuotaUsage {
                functions: count_functions(state, tenant).await?,
                ..QuotaUsage::default()
            },
            QuotaUsage {
                functions: 1,
                ..QuotaUsage::default()
            },
        ),
        Adding::Snapshot => (
            QuotaUsage {
                snapshots: count_snapshots(state, &own_vms(state, tenant).await?).await?,
                ..QuotaUsage::default()
            },
            QuotaUsage {
                snapshots: 1,
                ..QuotaUsage::default()
            },
        ),
    };
    check(&quota, &used, &add).map_err(|e| e.into_error(tenant))?;
    Ok(guard)
}

/// Every tenant with attributes set, the default quota, and what each of them holds.
pub async fn tenants(state: &AppState) -> Result<TenantList, ApiError> {
    let tenants = crate::app::policy::tenants(state).await?;
    let mut usage = BTreeMap::new();
    for t in &tenants {
        let id: TenantId = t.id.parse().map_err(ApiError::Validation)?;
        usage.insert(t.id.clone(), self::usage(state, &id).await?);
    }
    Ok(TenantList {
        tenants,
        default_quota: state.default_quota,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_first_quota_passed_and_ignores_what_is_not_added() {
        let quota = TenantQuota {
            vms: Some(10),
            vcpus: Some(200),
            ..TenantQuota::default()
        };
        let usage = QuotaUsage {
            vms: 3,
            vcpus: 198,
            memory_mib: 1 << 40,
            snapshots: 99,
            ..QuotaUsage::default()
        };
        let vm = |vcpus| QuotaUsage {
            vms: 1,
            vcpus,
            memory_mib: 512,
            ..QuotaUsage::default()
        };
        assert_eq!(check(&quota, &usage, &vm(2)), Ok(()));
        let e = check(&quota, &usage, &vm(4)).unwrap_err();
        assert_eq!((e.quota, e.used, e.adding, e.limit), ("vcpus", 198, 4, 200));
        let msg = e
            .into_error(&TenantId::parse("t", "acme").unwrap())
            .to_string();
        assert_eq!(
            msg,
            "quota exceeded: vcpus 198 + 4 > 200 (tenant acme; `firefleet tenant set acme \
             --quota vcpus=400`)"
        );
        // Over a lowered limit, what adds nothing to it passes.
        let over = QuotaUsage { vms: 12, ..usage };
        let snap = QuotaUsage {
            snapshots: 1,
            ..QuotaUsage::default()
        };
        assert_eq!(check(&quota, &over, &snap), Ok(()));
    }
}
