//! The guard's response actions, each started and then checked until it is final (see the
//! [module doc](super)). Every start is idempotent: a repeat after a crash finds the action
//! already in force.

use firefleet_api::{QuarantinedImage, Threat};
use firefleet_guard::{Action, Playbooks};
use firefleet_types::{DesiredState, Snapshot, SnapshotPhase, Vm, VmPhase};

use super::{REPLACED_LABEL, REPLACES_LABEL, SHARED_SNAPSHOT_MS};
use crate::repo::{self, RepoError};
use crate::{app, now_ms, ApiError, AppState};

/// What starting or checking an action gave.
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Asked for; the agent carries it out.
    Started(Option<String>),
    /// Carried out.
    Done(Option<String>),
    /// Could not be.
    Failed(String),
    /// Not needed.
    Skipped(String),
}

/// The forensic snapshot's name for a threat.
pub fn forensic_name(threat: &str) -> String {
    format!("forensic-{threat}")
}

/// The VM unless it is being deleted (an action on a VM that is going away is not started).
fn live(vm: Option<&Vm>) -> Option<&Vm> {
    vm.filter(|v| !v.deleting)
}

/// Starts an action (idempotent: a repeat after a crash finds it already in force).
pub async fn start(
    state: &AppState,
    playbooks: &Playbooks,
    t: &mut Threat,
    vm: Option<&Vm>,
    action: Action,
) -> Result<Step, ApiError> {
    let st = state;
    match action {
        Action::Alert => {
            tracing::warn!(
                threat = %t.id, tenant = %t.tenant, vm = %t.vm_name, rule = %t.finding.rule,
                severity = ?t.finding.severity, description = %t.finding.description,
                evidence = ?t.finding.evidence, "ALERT"
            );
            return Ok(Step::Done(Some(format!(
                "{:?} {}: {}",
                t.finding.severity, t.finding.rule, t.finding.description
            ))));
        }
        Action::Cordon => {
            let node = vm
                .and_then(|v| v.status.node.as_ref().map(ToString::to_string))
                .or_else(|| t.node.clone());
            let Some(node) = node else {
                return Ok(Step::Skipped("the VM is on no node".into()));
            };
            let id = firefleet_types::NodeId::parse("node", &node)?;
            repo::update_node(st, &id, |n| {
                let changed = !n.cordoned;
                n.cordoned = true;
                changed
            })
            .await?;
            st.kick.notify_waiters();
            return Ok(Step::Done(Some(format!("node {node} cordoned"))));
        }
        Action::QuarantineImage => {
            let q = QuarantinedImage {
                image: t.image.clone(),
                threat: t.id.clone(),
                at_ms: now_ms(),
            };
            // Absent only: a quarantine already in force stays as it was.
            repo::quarantine_image(st, &q).await?;
            return Ok(Step::Done(Some(format!("image {} quarantined", t.image))));
        }
        _ => {}
    }
    let Some(vm) = live(vm) else {
        return Ok(Step::Skipped("the VM is gone".into()));
    };
    let stopped = vm.status.phase.is_terminal() || vm.spec.desired == DesiredState::Stopped;
    match action {
        Action::RateLimit | Action::Isolate => {
            if !vm.spec.network.enabled {
                return Ok(Step::Skipped("the VM has no network interface".into()));
            }
            if stopped {
                return Ok(Step::Skipped("the VM is stopped".into()));
            }
            let rate = playbooks.for_tenant(&t.tenant).rate_limit_mbit;
            repo::update_vm(st, &vm.id, |v| {
                let n = &mut v.spec.network;
                let before = *n;
                if action == Action::Isolate {
                    n.isolated = true;
                } else {
                    n.egress_mbit = Some(n.egress_mbit.map_or(rate, |m| m.min(rate)));
                }
                if *n == before {
                    return Ok(false);
                }
                v.generation = v.generation.next();
                Ok(true)
            })
            .await?;
            st.kick.notify_waiters();
            Ok(Step::Started(Some(if action == Action::Isolate {
                "all traffic to and from the VM dropped".into()
            } else {
                format!("egress limited to {rate} Mbit/s")
            })))
        }
        Action::Pause => {
            if stopped {
                return Ok(Step::Skipped("the VM is stopped".into()));
            }
            repo::update_vm(st, &vm.id, |v| {
                if v.spec.desired == DesiredState::Paused || v.deleting {
                    return Ok(false);
                }
                v.spec.desired = DesiredState::Paused;
                v.generation = v.generation.next();
                Ok(true)
            })
            .await?;
            st.kick.notify_waiters();
            Ok(Step::Started(None))
        }
        Action::Snapshot => {
            let (Some(node), VmPhase::Running | VmPhase::Paused) =
                (vm.status.node.clone(), vm.status.phase)
            else {
                return Ok(Step::Skipped(format!(
                    "the VM is {:?}: nothing to snapshot",
                    vm.status.phase
                )));
            };
            // Several findings on one VM at once (a reverse shell is also a shell with an
            // outbound connection) share one forensic snapshot.
            let now = now_ms();
            let recent = repo::list_snapshots(st, &vm.id)
                .await?
                .into_iter()
                .find(|s| {
                    s.name.starts_with("forensic-")
                        && s.phase != SnapshotPhase::Failed
                        && now.saturating_sub(s.requested_ms) < SHARED_SNAPSHOT_MS
                });
            let name = match recent {
                Some(s) => s.name,
                None => {
                    let name = forensic_name(&t.id);
                    let snap = Snapshot::requested(vm.id.clone(), name.clone(), node, now);
                    match repo::create_snapshot(st, &snap).await {
                        Ok(()) | Err(RepoError::Conflict(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    name
                }
            };
            t.snapshot = Some(name.clone());
            Ok(Step::Started(Some(format!("snapshot {name}"))))
        }
        Action::Replace => replace(state, t, vm).await,
        Action::Alert | Action::Cordon | Action::QuarantineImage => Ok(Step::Wait),
    }
}

/// Stops the VM (kept for forensics) and starts a fresh one of its spec.
async fn replace(state: &AppState, t: &mut Threat, vm: &Vm) -> Result<Step, ApiError> {
    let st = state;
    let is_instance = vm.spec.function.is_some();
    // The fresh VM first (idempotent: one per replaced VM, found by its label).
    if !is_instance {
        let (vms, _) = repo::list_vms(st).await?;
        let existing = vms.iter().find(|v| {
            v.spec.labels.get(REPLACES_LABEL).map(String::as_str) == Some(vm.id.as_str())
        });
        let fresh = match existing {
            Some(v) => v.clone(),
            None => {
                let mut spec = vm.spec.clone();
                let n = (1..)
                    .map(|k| format!("{}-r{k}", trim_name(&vm.spec.name)))
                    .find(|n| {
                        !vms.iter()
                            .any(|v| v.spec.tenant == spec.tenant && &v.spec.name == n)
                    })
                    .unwrap_or_default();
                spec.name = n;
                spec.desired = DesiredState::Running;
                spec.restore = None;
                spec.network.isolated = false;
                spec.labels.remove(REPLACED_LABEL);
                spec.labels
                    .insert(REPLACES_LABEL.to_owned(), vm.id.to_string());
                match app::vms::create(st, spec).await {
                    Ok(v) => v,
                    Err(e) => return Ok(Step::Failed(format!("creating the replacement: {e}"))),
                }
            }
        };
        t.replacement = Some(fresh.spec.name.clone());
    }
    repo::update_vm(st, &vm.id, |v| {
        let mut changed = false;
        if v.spec.desired != DesiredState::Stopped {
            v.spec.desired = DesiredState::Stopped;
            changed = true;
        }
        if v.spec.labels.get(REPLACED_LABEL) != Some(&t.id) {
            v.spec
                .labels
                .insert(REPLACED_LABEL.to_owned(), t.id.clone());
            changed = true;
        }
        // A function's instance leaves its function: the function's controller starts
        // another, and this one stays, stopped, with its snapshots.
        if v.spec.function.is_some() {
            v.spec.function = None;
            changed = true;
        }
        if changed {
            v.generation = v.generation.next();
        }
        Ok(changed)
    })
    .await?;
    st.kick.notify_waiters();
    Ok(Step::Started(Some(match &t.replacement {
        Some(n) => format!("stopped; replaced by {n}"),
        None => "stopped; its function starts another instance".into(),
    })))
}

/// Whether a started action is carried out.
pub async fn check(
    state: &AppState,
    t: &Threat,
    vm: Option<&Vm>,
    action: Action,
) -> Result<Step, ApiError> {
    let Some(vm) = live(vm) else {
        return Ok(match action {
            Action::Replace => Step::Done(None),
            _ => Step::Failed("the VM went away".into()),
        });
    };
    Ok(match action {
        Action::Isolate => match &vm.status.network {
            Some(n) if n.isolated => Step::Done(None),
            _ => Step::Wait,
        },
        Action::RateLimit => match &vm.status.network {
            Some(n) if n.egress_mbit.is_some() && n.egress_mbit == vm.spec.network.egress_mbit => {
                Step::Done(None)
            }
            _ => Step::Wait,
        },
        Action::Pause => match vm.status.phase {
            VmPhase::Paused => Step::Done(None),
            p if p.is_terminal() => Step::Failed(format!("the VM is {p:?}")),
            _ => Step::Wait,
        },
        Action::Snapshot => {
            let name = t.snapshot.clone().unwrap_or_else(|| forensic_name(&t.id));
            let snap =
                repo::get_json::<Snapshot>(state, &repo::snapshot_key(&vm.id, &name)).await?;
            match snap {
                Some((s, _)) if s.phase == SnapshotPhase::Ready => Step::Done(Some(format!(
                    "snapshot {name} ({} MiB)",
                    s.bytes.unwrap_or(0) >> 20
                ))),
                Some((s, _)) if s.phase == SnapshotPhase::Failed => {
                    Step::Failed(s.message.unwrap_or_else(|| "the snapshot failed".into()))
                }
                Some(_) => Step::Wait,
                None => Step::Failed(format!("snapshot {name} was removed")),
            }
        }
        Action::Replace => {
            if vm.status.phase.is_terminal() {
                Step::Done(None)
            } else {
                Step::Wait
            }
        }
        Action::Alert | Action::Cordon | Action::QuarantineImage => Step::Done(None),
    })
}

/// A VM name short enough to take a `-rN` suffix within 63 characters.
fn trim_name(name: &str) -> &str {
    let mut end = name.len().min(56);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_names_fit() {
        assert_eq!(trim_name("web"), "web");
        let long = "a".repeat(63);
        assert_eq!(trim_name(&long).len(), 56);
        assert_eq!(trim_name("abc-"), "abc");
    }

    #[test]
    fn forensic_snapshot_names_are_valid() {
        let name = forensic_name("0123456789abcdef-1795969290804");
        assert!(
            firefleet_types::snapshot::validate_snapshot_name(&name).is_ok(),
            "{name}"
        );
    }
}
