//! Continuous compliance: whenever the policy set, a node's facts or a VM's spec changes, the
//! affected nodes and VMs are evaluated again and their records rewritten at the current
//! policy version; what fails is remediated.
//!
//! - A node failing a host policy in `deny` mode is tainted: its record fails, and the
//!   scheduler places no VM that asks for a compliant host on it (`cluster_view`).
//! - A VM failing an admission policy in `deny` mode is stopped (`desired: stopped`; the
//!   reasons are in its record and in the audit log's `compliance.stop`). A VM that asks for a
//!   compliant host and sits on a tainted node is migrated to a compliant one (live where it
//!   can be, as `vm migrate` would), or stopped when there is none.
//! - Violations in `warn` and `audit` mode are only recorded.
//!
//! Together with admission (a VM is created with a record) and the scheduler (a Pending VM is
//! only placed with a passing record at the current version), this keeps the invariant: no VM
//! runs without a passing record at the current policy version, but for the time between a
//! policy change and this controller's next pass (it is kicked by the change).

use std::collections::{BTreeMap, HashMap};

use firefleet_types::{DesiredState, NodeId, NodeInfo, Vm, VmPhase};

use crate::app::compliance::{is_current, remedy, vm_verdict, wants_to_run, Remedy};
use crate::app::{
    migrations, placement,
    policy::{self, StoredRecord},
};
use crate::{now_ms, repo, ApiError, AppState};

/// Evaluates what changed (nodes, then VMs) at the current policy version, stores the
/// records and remediates what fails.
pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    let (version, set) = policy::current(&state).await?;

    // Nodes.
    let (nodes, _) = repo::list_json::<NodeInfo>(&state, "/nodes/").await?;
    let mut node_records: HashMap<String, StoredRecord> =
        policy::records(&state, repo::NODE_RECORDS)
            .await?
            .into_iter()
            .map(|r| (r.record.subject.clone(), r))
            .collect();
    for node in nodes.iter().filter(|n| n.status.facts.is_some()) {
        let input = policy::node_input(node);
        let old = node_records.get(node.id.as_str());
        if old.is_some_and(|r| is_current(r, version, &policy::digest(&input))) {
            continue;
        }
        let mut fresh = {
            let (set, node) = (set.clone(), node.clone());
            policy::off_async(move || policy::evaluate_node(&set, version, &node, &input)).await?
        };
        if !fresh.record.passed {
            fresh.record.remediation =
                Some("tainted: no new VM that needs a compliant host".to_owned());
        }
        let changed = old.map(|r| r.record.passed) != Some(fresh.record.passed);
        if changed {
            let event = firefleet_audit::Event::new(
                now_ms(),
                "controller:compliance",
                if fresh.record.passed {
                    "compliance.node_compliant"
                } else {
                    "compliance.node_tainted"
                },
                format!("node/{}", node.id),
                "ok",
            )
            .with("policy_version", version.to_string())
            .with("violations", violations_text(&fresh));
            state.audit.record(&state, event).await;
            tracing::info!(node = %node.id, passed = fresh.record.passed, version, "node posture evaluated");
        }
        policy::put_record(&state, format!("{}{}", repo::NODE_RECORDS, node.id), &fresh).await?;
        node_records.insert(node.id.to_string(), fresh);
    }
    let host_ok = |node: &NodeId| {
        node_records
            .get(node.as_str())
            .map(|r| r.record.passed && r.record.policy_version == version)
    };

    // VMs.
    // Records first: a VM is created with its record in one txn, so every record listed here
    // belongs to a VM in the list read after it, or to one that is gone.
    let vm_records: HashMap<String, StoredRecord> = policy::records(&state, repo::VM_RECORDS)
        .await?
        .into_iter()
        .map(|r| (r.record.subject.clone(), r))
        .collect();
    let (vms, _) = repo::list_vms(&state).await?;
    let mut tenants = BTreeMap::new();
    let mut to_migrate = Vec::new();
    for vm in &vms {
        if vm.deleting {
            continue;
        }
        let tenant = match tenants.get(&vm.spec.tenant) {
            Some(t) => t,
            None => {
                let t = policy::tenant(&state, &vm.spec.tenant).await?;
                tenants.entry(vm.spec.tenant.clone()).or_insert(t)
            }
        };
        let input = serde_json::json!({ "vm": vm.spec, "tenant": tenant });
        let key = format!("{}{}", repo::VM_RECORDS, vm.id);
        let (mut record, changed) = {
            let (set, vm, old) = (
                set.clone(),
                vm.clone(),
                vm_records.get(vm.id.as_str()).cloned(),
            );
            policy::off_async(move || vm_verdict(&set, version, &vm, &input, old.as_ref())).await?
        };
        if changed {
            policy::put_record(&state, key.clone(), &record).await?;
        }
        let node_ok = vm.status.node.as_ref().and_then(host_ok);
        match remedy(
            wants_to_run(vm),
            record.record.passed,
            vm.spec.placement.compliant_host,
            node_ok,
        ) {
            Remedy::Nothing => {}
            Remedy::Stop => {
                let reasons: Vec<String> = record
                    .record
                    .violations
                    .iter()
                    .filter(|v| v.mode == "deny")
                    .map(|v| format!("{}: {}", v.policy, v.message))
                    .collect();
                stop(&state, vm, &reasons, version).await?;
                record.record.remediation = Some("stopped".to_owned());
                policy::put_record(&state, key, &record).await?;
            }
            Remedy::Migrate => to_migrate.push(vm.clone()),
        }
    }
    // Records of VMs that are gone go with them.
    let live: std::collections::HashSet<&str> = vms.iter().map(|v| v.id.as_str()).collect();
    for gone in vm_records.keys().filter(|k| !live.contains(k.as_str())) {
        state
            .store
            .delete(&format!("{}{gone}", repo::VM_RECORDS), None)
            .await?;
    }
    if !to_migrate.is_empty() {
        migrate(&state, &vms, &to_migrate, version).await?;
    }
    Ok(())
}

fn violations_text(r: &StoredRecord) -> String {
    r.record
        .violations
        .iter()
        .map(|v| format!("{} ({}): {}", v.policy, v.mode, v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn stop(state: &AppState, vm: &Vm, reasons: &[String], version: u64) -> Result<(), ApiError> {
    let message = format!(
        "stopped by compliance (policy version {version}): {}",
        reasons.join("; ")
    );
    repo::update_vm(state, &vm.id, |v| {
        if v.spec.desired == DesiredState::Stopped || v.deleting {
            return Ok(false);
        }
        v.spec.desired = DesiredState::Stopped;
        v.generation = v.generation.next();
        v.status.message = Some(message.clone());
        Ok(true)
    })
    .await?;
    tracing::warn!(vm = %vm.id, %message, "non-compliant VM stopped");
    let mut event = firefleet_audit::Event::new(
        now_ms(),
        "controller:compliance",
        "compliance.stop",
        format!("vm/{}", vm.id),
        "ok",
    )
    .with("policy_version", version.to_string())
    .with("name", vm.spec.name.clone())
    .with("tenant", vm.spec.tenant.to_string());
    for (i, r) in reasons.iter().enumerate() {
        event = event.with(format!("violation.{i}"), r.clone());
    }
    state.audit.record(state, event).await;
    state.kick.notify_waiters();
    Ok(())
}

/// Moves VMs off tainted nodes to nodes the scheduler picks among the compliant ones (one
/// batch); those with nowhere to go are stopped.
async fn migrate(
    state: &AppState,
    vms: &[Vm],
    movers: &[Vm],
    version: u64,
) -> Result<(), ApiError> {
    use firefleet_scheduler::{place, Placement, Weights};
    use rand::SeedableRng;
    let view = placement::cluster_view(state, vms).await?;
    let requests: Vec<_> = movers.iter().map(placement::request_for).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(version);
    for p in place(&view, &requests, &Weights::default(), &mut rng) {
        let Some(vm) = movers.iter().find(|v| match &p {
            Placement::Placed { vm, .. } | Placement::Unschedulable { vm, .. } => *vm == v.id,
        }) else {
            continue;
        };
        let Some(from) = vm.status.node.clone() else {
            continue;
        };
        if repo::get_json::<firefleet_types::Migration>(state, &repo::migration_key(&vm.id))
            .await?
            .is_some_and(|(m, _)| !m.phase.is_terminal())
        {
            continue; // already on its way
        }
        match p {
            Placement::Placed { node, .. }
                if node != from && vm.status.phase == VmPhase::Running =>
            {
                let mode = migrations::mode_for(vm);
                migrations::start(state, vm, from.clone(), node.clone(), mode).await?;
                let event = firefleet_audit::Event::new(
                    now_ms(),
                    "controller:compliance",
                    "compliance.migrate",
                    format!("vm/{}", vm.id),
                    "ok",
                )
                .with("policy_version", version.to_string())
                .with("from", from.to_string())
                .with("to", node.to_string());
                state.audit.record(state, event).await;
                let key = format!("{}{}", repo::VM_RECORDS, vm.id);
                if let Some((mut r, _)) = repo::get_json::<StoredRecord>(state, &key).await? {
                    r.record.remediation =
                        Some(format!("migrating to {node}: node {from} is tainted"));
                    policy::put_record(state, key, &r).await?;
                }
            }
            Placement::Placed { .. } => {} // not running yet, or nowhere else: wait
            Placement::Unschedulable { reasons, .. } => {
                let why = format!(
                    "its node {from} is tainted and no compliant node can take it ({})",
                    placement::reasons_text(&reasons)
                );
                stop(state, vm, &[why], version).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::compliance::*;
    use firefleet_policy::{PolicyDoc, PolicySet};
    use firefleet_types::{Generation, VmId, VmStatus};
    use proptest::prelude::*;

    /// What happens to the fleet, in any order.
    #[derive(Debug, Clone)]
    enum Step {
        /// A user creates a VM of this much memory (admission first).
        Create(u64),
        /// An admin applies a memory limit (a new policy set version).
        Limit(u64),
        /// The admin removes the limit (a new version).
        Unlimit,
        /// The scheduler places what it may (and the agent starts it).
        Schedule,
        /// The compliance controller's pass.
        Comply,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (128u64..2048).prop_map(Step::Create),
            (128u64..2048).prop_map(Step::Limit),
            Just(Step::Unlimit),
            Just(Step::Schedule),
            Just(Step::Comply),
        ]
    }

    fn set(limit: Option<u64>) -> PolicySet {
        let mut docs = firefleet_policy::builtin();
        if let Some(l) = limit {
            docs.push(PolicyDoc {
                name: "admission/limit".into(),
                source: format!(
                    "package firefleet.admission.limit\nimport rego.v1\n\
                     deny contains \"too big\" if input.vm.resources.memory_mib > {l}\n"
                ),
                mode: None,
            });
        }
        PolicySet::compile(&docs).unwrap()
    }

    struct Sim {
        vm: Vm,
        running: bool,
        record: StoredRecord,
    }

    fn vm(n: usize, memory_mib: u64) -> Vm {
        let spec = firefleet_types::fixtures::vm_spec(&format!("vm{n}"), memory_mib);
        Vm {
            id: VmId::parse("id", &format!("00000000-0000-4000-8000-{n:012}")).unwrap(),
            generation: Generation(1),
            spec,
            status: VmStatus::new(0),
            deleting: false,
        }
    }

    fn input(vm: &Vm) -> serde_json::Value {
        serde_json::json!({"vm": vm.spec, "tenant": {"id": "acme", "class": "standard", "regions": []}})
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Compliance(vm) => Running: the scheduler starts no VM without a passing record at
        /// the current version, admission refuses what breaks the policies, and after each
        /// compliance pass every running VM has a passing record at the current version.
        #[test]
        fn no_vm_runs_without_a_passing_record_at_the_current_version(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            let (mut version, mut current) = (1u64, set(None));
            let mut fleet: Vec<Sim> = Vec::new();
            for s in steps {
                match s {
                    Step::Create(mem) => {
                        let v = vm(fleet.len(), mem);
                        let adm = policy::evaluate_vm(&current, version, v.id.as_str(), &v.spec, &input(&v));
                        if adm.denied.is_empty() {
                            prop_assert!(adm.record.record.passed);
                            fleet.push(Sim { vm: v, running: false, record: adm.record });
                        } else {
                            prop_assert!(!adm.record.record.passed);
                        }
                    }
                    Step::Limit(l) => { version += 1; current = set(Some(l)); }
                    Step::Unlimit => { version += 1; current = set(None); }
                    Step::Schedule => {
                        for f in fleet.iter_mut().filter(|f| !f.running && wants_to_run(&f.vm)) {
                            if placeable(Some(&f.record), version) {
                                f.running = true;
                            }
                        }
                    }
                    Step::Comply => {
                        for f in &mut fleet {
                            let (r, _) = vm_verdict(&current, version, &f.vm, &input(&f.vm), Some(&f.record));
                            f.record = r;
                            if remedy(wants_to_run(&f.vm), f.record.record.passed, false, None) == Remedy::Stop {
                                f.vm.spec.desired = DesiredState::Stopped;
                                f.running = false;
                            }
                        }
                        for f in fleet.iter().filter(|f| f.running) {
                            prop_assert!(f.record.record.passed && f.record.record.policy_version == version,
                                "{} runs with {:?}", f.vm.spec.name, f.record.record);
                        }
                    }
                }
                // Whatever runs passed at some version, and nothing runs that a policy in
                // force at its record's version refused.
                for f in fleet.iter().filter(|f| f.running) {
                    prop_assert!(f.record.record.passed);
                }
            }
        }
    }

    #[test]
    fn remedies() {
        assert_eq!(remedy(true, true, false, None), Remedy::Nothing);
        assert_eq!(remedy(true, false, false, Some(true)), Remedy::Stop);
        assert_eq!(remedy(false, false, false, None), Remedy::Nothing);
        assert_eq!(remedy(true, true, true, Some(false)), Remedy::Migrate);
        assert_eq!(remedy(true, true, true, Some(true)), Remedy::Nothing);
        assert_eq!(remedy(true, true, false, Some(false)), Remedy::Nothing);
        // A spec that breaks a policy is stopped whatever its host.
        assert_eq!(remedy(true, false, true, Some(false)), Remedy::Stop);
    }
}
