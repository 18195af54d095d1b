//! Self-healing: a VM that failed (or stopped, as its restart policy says) on its node is
//! restarted there after a backoff. The decision is [`plan`], a pure function of the VM and the
//! clock; this controller only reads the VMs and writes what `plan` says with compare-and-swap.
//!
//! A restart is two writes. First the restart is planned: `status.next_restart_ms` is set and the
//! message says when (`restarting in 4 s (restart 3, …)`). Once due, the VM goes back to
//! `Scheduled` on the same node with `status.restarts` one higher; the agent sees the count in
//! its intent, finds that the VM does not run there and launches it afresh. Reports about the
//! run from before the restart carry the old count and are refused (see
//! `app::agents::report_status`), so the dead run's `Failed` cannot undo the restart.
//!
//! The backoff doubles from [`FIRST_BACKOFF_MS`] up to [`MAX_BACKOFF_MS`] with each restart in a row;
//! a VM that ran for [`STREAK_RESET_MS`] before it went down starts again at the first step. A VM
//! whose guest stopped answering (the agent killed it: `status.heartbeat_lost`) is replaced
//! whatever its restart policy says, `Never` included: it did not choose to stop.

use firefleet_types::{DesiredState, RestartPolicy, UnixMillis, Vm, VmPhase};

use crate::{now_ms, repo, ApiError, AppState};

/// The wait before the first restart in a row.
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// The longest wait between restarts.
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// A VM that ran this long before going down is restarted with the first backoff again.
pub const STREAK_RESET_MS: u64 = 60_000;

/// The wait before a restart after `streak` restarts in a row: 1 s, 2 s, 4 s … at most 60 s.
#[must_use]
pub fn backoff_ms(streak: u32) -> u64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1u64.checked_shl(streak).unwrap_or(u64::MAX))
        .min(MAX_BACKOFF_MS)
}

/// Why a VM at rest is to be restarted, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// It failed (its VMM died, or it could not start) and its policy restarts failures.
    Failed,
    /// Its command exited with a non-zero status under `OnFailure`.
    ExitedNonZero(i32),
    /// It stopped (command exited, guest powered off) under `Always`.
    Stopped,
    /// Its guest stopped answering: always replaced.
    HeartbeatLost,
}

/// Whether the VM, as it is now, is one to restart (ignoring when).
#[must_use]
pub fn restart_cause(vm: &Vm) -> Option<Cause> {
    let s = &vm.status;
    if vm.deleting || vm.spec.desired != DesiredState::Running || s.node.is_none() {
        return None;
    }
    let policy = vm.spec.restart_policy;
    match s.phase {
        VmPhase::Failed if s.heartbeat_lost => Some(Cause::HeartbeatLost),
        VmPhase::Failed if policy != RestartPolicy::Never => Some(Cause::Failed),
        VmPhase::Stopped if policy == RestartPolicy::Always => Some(Cause::Stopped),
        VmPhase::Stopped if policy == RestartPolicy::OnFailure => {
            s.exit_code.filter(|c| *c != 0).map(Cause::ExitedNonZero)
        }
        _ => None,
    }
}

/// What to do about one VM now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing.
    Nothing,
    /// Plan a restart at `at` (after `streak` restarts in a row), saying so in `message`.
    Schedule {
        at: UnixMillis,
        streak: u32,
        message: String,
    },
    /// The planned restart is due: restart it now.
    Restart,
    /// A planned restart no longer applies (stopped, deleted, moved, or running again).
    Cancel,
}

/// Decides whether and when `vm` restarts, at `now`.
#[must_use]
pub fn plan(vm: &Vm, now: UnixMillis) -> Plan {
    let s = &vm.status;
    let Some(cause) = restart_cause(vm) else {
        return if s.next_restart_ms.is_some() {
            Plan::Cancel
        } else {
            Plan::Nothing
        };
    };
    if let Some(at) = s.next_restart_ms {
        return if now >= at {
            Plan::Restart
        } else {
            Plan::Nothing
        };
    }
    // It ran long enough before it went down: the streak starts again.
    let ran = s
        .running_ms
        .map(|r| s.stopped_ms.unwrap_or(now).saturating_sub(r));
    let streak = if ran.is_some_and(|ran| ran >= STREAK_RESET_MS) {
        0
    } else {
        s.restart_streak
    };
    let wait = backoff_ms(streak);
    let why = match cause {
        Cause::HeartbeatLost | Cause::Failed => s.message.clone(),
        Cause::ExitedNonZero(c) => Some(format!("command exited with status {c}")),
        Cause::Stopped => s.message.clone().or_else(|| Some("stopped".to_owned())),
    };
    let secs = wait as f64 / 1000.0;
    let mut message = format!("restarting in {secs} s (restart {}", s.restarts + 1);
    if let Some(why) = why.filter(|w| !w.is_empty()) {
        message.push_str(", ");
        message.push_str(&why);
    }
    message.push(')');
    Plan::Schedule {
        at: now + wait,
        streak,
        message,
    }
}

/// Applies `plan` to the stored VM (re-deciding on the fresh copy, so a concurrent change wins).
fn apply(vm: &mut Vm, now: UnixMillis) -> bool {
    match plan(vm, now) {
        Plan::Nothing => false,
        Plan::Cancel => {
            vm.status.next_restart_ms = None;
            true
        }
        Plan::Schedule {
            at,
            streak,
            message,
        } => {
            let s = &mut vm.status;
            s.next_restart_ms = Some(at);
            s.restart_streak = streak;
            s.message = Some(message);
            true
        }
        Plan::Restart => {
            let s = &mut vm.status;
            s.phase = VmPhase::Scheduled;
            s.restarts += 1;
            s.restart_streak += 1;
            s.next_restart_ms = None;
            s.heartbeat_lost = false;
            s.message = Some(format!("restart {}", s.restarts));
            s.exit_code = None;
            s.launched_ms = None;
            s.running_ms = None;
            s.stopped_ms = None;
            true
        }
    }
}

pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    let now = now_ms();
    let (vms, _) = repo::list_vms(&state).await?;
    let mut restarted = false;
    for vm in vms {
        if plan(&vm, now) == Plan::Nothing {
            continue;
        }
        let updated = repo::update_vm(&state, &vm.id, |v| Ok(apply(v, now))).await;
        match updated {
            Ok(v) if v.status.restarts > vm.status.restarts => {
                restarted = true;
                tracing::info!(vm = %v.id, restarts = v.status.restarts, "restarting the vm");
                let event = firefleet_audit::Event::new(
                    now,
                    "controller:healing",
                    "vm.restart",
                    format!("vm/{}", v.id),
                    "ok",
                )
                .with("restarts", v.status.restarts.to_string())
                .with(
                    "node",
                    v.status
                        .node
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                );
                state.audit.record(&state, event).await;
            }
            Ok(v) => {
                if let Some(at) = v.status.next_restart_ms {
                    tracing::info!(vm = %v.id, in_ms = at.saturating_sub(now), "vm restart planned");
                }
            }
            Err(e) => tracing::warn!(vm = %vm.id, error = %e, "restarting the vm"),
        }
    }
    if restarted {
        state.kick.notify_waiters();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use firefleet_types::{Generation, NodeId, VmId, VmStatus};

    fn vm(policy: RestartPolicy, phase: VmPhase) -> Vm {
        let spec = firefleet_types::VmSpec {
            restart_policy: policy,
            ..firefleet_types::fixtures::vm_spec("web", 128)
        };
        let mut status = VmStatus::new(0);
        status.phase = phase;
        status.node = Some(NodeId::parse("node", "n1").expect("node"));
        status.message = Some("the VMM process exited unexpectedly: killed by signal 9".into());
        Vm {
            id: VmId::parse("vm", "vm-1").expect("id"),
            generation: Generation(1),
            spec,
            deleting: false,
            status,
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let got: Vec<u64> = (0..9).map(backoff_ms).collect();
        assert_eq!(
            got,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(backoff_ms(64), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(u32::MAX), MAX_BACKOFF_MS);
    }

    #[test]
    fn which_vms_restart() {
        use RestartPolicy::*;
        use VmPhase::*;
        let cause = |p, ph, exit: Option<i32>| {
            let mut v = vm(p, ph);
            v.status.exit_code = exit;
            restart_cause(&v)
        };
        assert_eq!(cause(Never, Failed, None), None);
        assert_eq!(cause(OnFailure, Failed, None), Some(Cause::Failed));
        assert_eq!(cause(Always, Failed, None), Some(Cause::Failed));
        assert_eq!(cause(Never, Stopped, Some(1)), None);
        assert_eq!(cause(OnFailure, Stopped, Some(0)), None);
        assert_eq!(cause(OnFailure, Stopped, None), None);
        assert_eq!(
            cause(OnFailure, Stopped, Some(3)),
            Some(Cause::ExitedNonZero(3))
        );
        assert_eq!(cause(Always, Stopped, Some(0)), Some(Cause::Stopped));
        for ph in [Pending, Scheduled, Starting, Running, Paused, Stopping] {
            assert_eq!(cause(Always, ph, None), None, "{ph:?}");
        }
        // A lost heartbeat is replaced even under Never.
        let mut v = vm(Never, Failed);
        v.status.heartbeat_lost = true;
        assert_eq!(restart_cause(&v), Some(Cause::HeartbeatLost));
        // Not when it is meant to be stopped, is being deleted, or is on no node.
        let mut v = vm(Always, Failed);
        v.spec.desired = DesiredState::Stopped;
        assert_eq!(restart_cause(&v), None);
        let mut v = vm(Always, Failed);
        v.deleting = true;
        assert_eq!(restart_cause(&v), None);
        let mut v = vm(Always, Failed);
        v.status.node = None;
        assert_eq!(restart_cause(&v), None);
    }

    #[test]
    fn a_failure_is_scheduled_then_restarted_when_due() {
        let mut v = vm(RestartPolicy::OnFailure, VmPhase::Failed);
        v.status.running_ms = Some(10_000);
        v.status.stopped_ms = Some(12_000);
        let now = 12_500;
        match plan(&v, now) {
            Plan::Schedule {
                at,
                streak,
                message,
            } => {
                assert_eq!((at, streak), (now + 1_000, 0));
                assert_eq!(
                    message,
                    "restarting in 1 s (restart 1, the VMM process exited unexpectedly: killed by signal 9)"
                );
            }
            p => panic!("{p:?}"),
        }
        assert!(apply(&mut v, now));
        assert_eq!(plan(&v, now + 999), Plan::Nothing);
        assert_eq!(plan(&v, now + 1_000), Plan::Restart);
        assert!(apply(&mut v, now + 1_000));
        let s = &v.status;
        assert_eq!(s.phase, VmPhase::Scheduled);
        assert_eq!(
            (s.restarts, s.restart_streak, s.next_restart_ms),
            (1, 1, None)
        );
        assert_eq!((s.running_ms, s.stopped_ms), (None, None));
        // Nothing more to do until it goes down again.
        assert_eq!(plan(&v, now + 5_000), Plan::Nothing);
    }

    #[test]
    fn the_backoff_grows_in_a_row_and_resets_after_a_long_run() {
        let mut v = vm(RestartPolicy::Always, VmPhase::Failed);
        v.status.restarts = 3;
        v.status.restart_streak = 3;
        v.status.running_ms = Some(100_000);
        v.status.stopped_ms = Some(105_000); // ran 5 s: still in a row
        match plan(&v, 106_000) {
            Plan::Schedule {
                at,
                streak,
                message,
            } => {
                assert_eq!((at, streak), (106_000 + 8_000, 3));
                assert!(
                    message.starts_with("restarting in 8 s (restart 4, "),
                    "{message}"
                );
            }
            p => panic!("{p:?}"),
        }
        v.status.stopped_ms = Some(100_000 + STREAK_RESET_MS); // ran a minute: a fresh streak
        assert!(
            matches!(
                plan(&v, 200_000),
                Plan::Schedule {
                    at: 201_000,
                    streak: 0,
                    ..
                }
            ),
            "{:?}",
            plan(&v, 200_000)
        );
        // Never became ready: in a row.
        v.status.running_ms = None;
        assert!(matches!(
            plan(&v, 200_000),
            Plan::Schedule { streak: 3, .. }
        ));
    }

    #[test]
    fn a_planned_restart_is_cancelled_when_it_no_longer_applies() {
        let mut v = vm(RestartPolicy::Always, VmPhase::Failed);
        assert!(apply(&mut v, 0));
        v.spec.desired = DesiredState::Stopped;
        assert_eq!(plan(&v, 500), Plan::Cancel);
        assert!(apply(&mut v, 500));
        assert_eq!(v.status.next_restart_ms, None);
        assert_eq!(plan(&v, 600), Plan::Nothing);
    }
}
