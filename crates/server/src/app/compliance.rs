//! Compliance verdicts (pure): whether a stored record is current, a VM's verdict at a policy
//! version, what to do about it, and whether the scheduler may place it. The compliance
//! controller acts on them; the scheduling controller asks [`placeable`].

use firefleet_types::{DesiredState, Vm};

use crate::app::policy::{self, StoredRecord};

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
