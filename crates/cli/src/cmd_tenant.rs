//! `firefleet tenant`: a tenant's attributes (class and data-residency regions, which policies
//! see as `input.tenant`) and its quota, and the list of tenants with what each holds.

use anyhow::{bail, Context};
use clap::Subcommand;
use firefleet_api::{QuotaUsage, TenantList, TenantQuota, TenantRecord};

use crate::{args::Global, cmd_policy::list_or_dash, output::print};

/// `firefleet tenant`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Set a tenant's class, data-residency regions and quota (admin; policies see them as
    /// `input.tenant`). What is not given keeps its value.
    Set {
        /// The tenant.
        id: String,
        /// Its class (e.g. `standard`, `restricted`, `gpu`; `standard` for a new record).
        #[arg(long)]
        class: Option<String>,
        /// A region its VMs' data must stay in (repeatable; replaces the regions).
        #[arg(long = "region")]
        regions: Vec<String>,
        /// Let its VMs' data be anywhere (clears the regions).
        #[arg(long, conflicts_with = "regions")]
        any_region: bool,
        /// Quota changes, `vms=10,vcpus=20,memory_mib=40960,functions=5,snapshots=20`; a value
        /// `unlimited` lifts one limit; `default` alone returns to the server's default quota.
        /// Limits not named keep their value (from the server's default for a tenant without
        /// a quota of its own).
        #[arg(long)]
        quota: Option<String>,
    },
    /// List the tenants with attributes set, their quotas and what they hold.
    Ls,
}

/// Runs `firefleet tenant ...`.
pub async fn tenant(g: &Global, cmd: TenantCommand) -> anyhow::Result<()> {
    let client = crate::cmd_vm::client(g)?;
    match cmd {
        TenantCommand::Set {
            id,
            class,
            regions,
            any_region,
            quota,
        } => {
            let list = client.tenant_list().await?;
            let old = list.tenants.iter().find(|t| t.id == id);
            let quota = match quota.as_deref() {
                None => old.and_then(|t| t.quota),
                Some(changes) => parse_quota(
                    changes,
                    old.and_then(|t| t.quota).unwrap_or(list.default_quota),
                )?,
            };
            let regions = match (any_region, regions.is_empty(), old) {
                (true, _, _) => Vec::new(),
                (false, true, Some(t)) => t.regions.clone(),
                _ => regions,
            };
            let class = class
                .or_else(|| old.map(|t| t.class.clone()))
                .unwrap_or_else(|| "standard".to_owned());
            let t = client
                .tenant_put(&TenantRecord {
                    id,
                    class,
                    regions,
                    quota,
                })
                .await?;
            let shown = rows(&TenantList {
                tenants: vec![t.clone()],
                ..list
            });
            print(g.output, &t, TENANT_HEADERS, shown)
        }
        TenantCommand::Ls => {
            let list = client.tenant_list().await?;
            print(g.output, &list, TENANT_HEADERS, rows(&list))
        }
    }
}

/// `default`, or `name=value` changes applied to `base`. Pure.
fn parse_quota(changes: &str, base: TenantQuota) -> anyhow::Result<Option<TenantQuota>> {
    if changes.trim() == "default" {
        return Ok(None);
    }
    let mut q = base;
    for part in changes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .with_context(|| format!("--quota {part:?}: expected name=value"))?;
        let value =
            match value.trim() {
                "unlimited" => None,
                v => Some(v.parse::<u64>().with_context(|| {
                    format!("--quota {name}={v}: a whole number or `unlimited`")
                })?),
            };
        match name.trim() {
            "vms" => q.vms = value,
            "vcpus" => q.vcpus = value,
            "memory_mib" | "memory" => q.memory_mib = value,
            "functions" => q.functions = value,
            "snapshots" => q.snapshots = value,
            other => bail!(
                "--quota: unknown quota {other:?} (vms, vcpus, memory_mib, functions, snapshots)"
            ),
        }
    }
    Ok(Some(q))
}

const TENANT_HEADERS: &[&str] = &[
    "ID",
    "CLASS",
    "REGIONS",
    "VMS",
    "VCPUS",
    "MEMORY_MIB",
    "FUNCTIONS",
    "SNAPSHOTS",
];

/// One row per tenant; each quota column `used/limit` (`-` unlimited), with `*` after the
/// limit when it is the server's default.
fn rows(list: &TenantList) -> Vec<Vec<String>> {
    list.tenants
        .iter()
        .map(|t| {
            let (q, default) = match t.quota {
                Some(q) => (q, ""),
                None => (list.default_quota, "*"),
            };
            let u = list
                .usage
                .get(&t.id)
                .copied()
                .unwrap_or(QuotaUsage::default());
            let cell = |used: u64, limit: Option<u64>| match limit {
                Some(l) => format!("{used}/{l}{default}"),
                None => format!("{used}/-"),
            };
            vec![
                t.id.clone(),
                t.class.clone(),
                list_or_dash(&t.regions),
                cell(u.vms, q.vms),
                cell(u.vcpus, q.vcpus),
                cell(u.memory_mib, q.memory_mib),
                cell(u.functions, q.functions),
                cell(u.snapshots, q.snapshots),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_changes_apply_to_the_base_and_default_resets() {
        let base = firefleet_server::DEFAULT_QUOTA;
        let q = parse_quota("vcpus=400, snapshots=unlimited", base)
            .unwrap()
            .unwrap();
        assert_eq!(q.vcpus, Some(400));
        assert_eq!(q.snapshots, None);
        assert_eq!(q.vms, base.vms);
        assert_eq!(parse_quota("default", base).unwrap(), None);
        assert!(parse_quota("cpus=1", base).is_err());
        assert!(parse_quota("vms=ten", base).is_err());
        assert!(parse_quota("vms", base).is_err());
    }
}
