//! Compliance: the verdicts (pure: whether a stored record is current, a VM's verdict at a
//! policy version, what to do about it, whether the scheduler may place it), which the
//! compliance controller acts on and the scheduling controller asks ([`placeable`]); and the
//! records and report as the API shows them.

use std::collections::BTreeMap;

use firefleet_api::{ComplianceList, ComplianceRecord, ComplianceReport, ControlSummary};
use firefleet_types::{DesiredState, Vm};

use crate::app::policy::{self, StoredRecord};
use crate::{now_ms, repo, ApiError, AppState};

/// What to do about a VM after its evaluation (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// Compliant, or already at rest.
    Nothing,
    /// Stop it: its spec breaks a policy in deny mode (or it needs a compliant host and none
    /// is left).
    Stop,
    /// Move it off its tainted node.
    Migrate,
}

/// The remedy for a VM that wants to run (`wants_to_run`: desired running or paused, not
/// deleting), from its record's verdict and, for a VM that needs a compliant host, its node's.
pub fn remedy(
    wants_to_run: bool,
    passed: bool,
    needs_compliant_host: bool,
    on_compliant_host: Option<bool>,
) -> Remedy {
    if !wants_to_run {
        Remedy::Nothing
    } else if !passed {
        Remedy::Stop
    } else if needs_compliant_host && on_compliant_host == Some(false) {
        Remedy::Migrate
    } else {
        Remedy::Nothing
    }
}

/// Whether a stored record is the verdict on `digest` at `version`.
pub fn is_current(r: &StoredRecord, version: u64, digest: &str) -> bool {
    r.record.policy_version == version && r.input_digest == digest
}

/// A VM's verdict at `version` (pure): its stored record when that is current for this input,
/// else a fresh evaluation (`true`: to be stored). A fresh verdict that still fails keeps what
/// was done about the old one (stopping the VM changed its spec, not the verdict).
pub fn vm_verdict(
    set: &firefleet_policy::PolicySet,
    version: u64,
    vm: &Vm,
    input: &serde_json::Value,
    old: Option<&StoredRecord>,
) -> (StoredRecord, bool) {
    let digest = policy::digest(input);
    match old {
        Some(r) if is_current(r, version, &digest) => (r.clone(), false),
        old => {
            let mut fresh = policy::evaluate_vm(set, version, vm.id.as_str(), &vm.spec, input);
            if !fresh.record.record.passed {
                fresh.record.record.remediation = old.and_then(|r| r.record.remediation.clone());
            }
            (fresh.record, true)
        }
    }
}

/// Whether the scheduler may place a VM with this record: it passes at the current version.
pub fn placeable(record: Option<&StoredRecord>, version: u64) -> bool {
    record.is_some_and(|r| r.record.passed && r.record.policy_version == version)
}

/// Whether a VM is meant to run: not deleting, not desired stopped, not at rest.
pub fn wants_to_run(vm: &Vm) -> bool {
    !vm.deleting && vm.spec.desired != DesiredState::Stopped && !vm.status.phase.is_terminal()
}

/// The records of the VMs of `tenant` (None: every VM's), and with `admin` every node's.
async fn visible(
    state: &AppState,
    admin: bool,
    tenant: Option<&str>,
) -> Result<Vec<ComplianceRecord>, ApiError> {
    let tenant = tenant.map(str::to_owned);
    let mut out: Vec<ComplianceRecord> = policy::records(state, repo::VM_RECORDS)
        .await?
        .into_iter()
        .map(|r| r.record)
        .filter(|r| tenant.is_none() || r.tenant == tenant)
        .collect();
    if admin {
        out.extend(
            policy::records(state, repo::NODE_RECORDS)
                .await?
                .into_iter()
                .map(|r| r.record),
        );
    }
    Ok(out)
}

/// The compliance records at the current policy version's list: the VMs' of `tenant` (None:
/// every VM's), and with `admin` the nodes'.
pub async fn list(
    state: &AppState,
    admin: bool,
    tenant: Option<&str>,
) -> Result<ComplianceList, ApiError> {
    let policy_version = policy::version(state).await?;
    Ok(ComplianceList {
        policy_version,
        records: visible(state, admin, tenant).await?,
    })
}

/// The compliance report: pass/fail per control over every subject (the VMs of `tenant` only,
/// when given), with each subject's controls and their evidence.
pub async fn report(
    state: &AppState,
    admin: bool,
    tenant: Option<String>,
) -> Result<ComplianceReport, ApiError> {
    let policy_version = policy::version(state).await?;
    let mut records = visible(state, admin, tenant.as_deref()).await?;
    if tenant.is_some() {
        records.retain(|r| r.kind == "vm");
    }
    records.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(ComplianceReport {
        generated_ms: now_ms(),
        policy_version,
        tenant,
        controls: summarise(&records),
        records,
    })
}

/// Passes and failures per control: the records' controls, and for a policy without controls
/// one control named after it (failed by its violations).
pub fn summarise(records: &[ComplianceRecord]) -> Vec<ControlSummary> {
    let mut by: BTreeMap<(String, String), ControlSummary> = BTreeMap::new();
    for r in records {
        for c in &r.controls {
            let s = by
                .entry((c.policy.clone(), c.id.clone()))
                .or_insert_with(|| ControlSummary {
                    policy: c.policy.clone(),
                    id: c.id.clone(),
                    name: c.name.clone(),
                    passed: 0,
                    failed: 0,
                });
            if c.passed {
                s.passed += 1;
            } else {
                s.failed += 1;
            }
        }
    }
    by.into_values().collect()
}
