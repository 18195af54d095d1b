//! The agent's decision for one VM: pure.
//!
//! [`decide`] takes what the control plane wants (the [`VmIntent`]), what the runtime observed
//! (an [`Observation`], or none: no state directory) with the failure a launch left, and what
//! this agent remembers of the VM ([`Local`]), and returns the phase to report and the
//! [`Action`] to start, updating [`Local`]. It reads no path, holds no runtime or client, reads
//! no clock (the time comes in a [`Clock`]) and does no I/O: the reconciler gathers the input,
//! the executor (`ops`) carries the action out (and resolves images and disks there).
//!
//! It imports nothing of the agent's other modules.

use std::time::{Duration, Instant};

use firefleet_api::{VmIntent, VmStatusReport};
use firefleet_types::{
    DesiredState, Generation, Migration, MigrationMode, MigrationPhase, VmPhase,
};
use firefleet_vmm::Observation;

/// The time of one pass, read once by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Milliseconds since the Unix epoch (for the times reported).
    pub now_ms: u64,
    /// The monotonic clock (for the guest heartbeat).
    pub now: Instant,
}

/// What this agent remembers of one VM between passes (lost when the agent restarts).
#[derive(Debug, Default)]
pub struct Local {
    /// The last report the server accepted.
    pub reported: Option<VmStatusReport>,
    /// Where the server's copy of the console ends (None: not asked yet).
    pub console_end: Option<u64>,
    /// When the current run was launched.
    pub launched_ms: Option<u64>,
    /// When its guest was first seen ready.
    pub running_ms: Option<u64>,
    /// When it was first seen stopped.
    pub stopped_ms: Option<u64>,
    /// Restore requests carried out here (the server learns it from the next report).
    pub restored: Option<Generation>,
    /// When statistics were last collected.
    pub last_stats: Option<Instant>,
    /// The network settings applied to the running VM (None: not yet, since the agent started).
    pub applied_net: Option<firefleet_types::NetworkSpec>,
    /// The control plane's restart count (`VmIntent::restarts`) of the run this agent launched
    /// or adopted (None: not known since the agent started).
    pub restarts_done: Option<u32>,
    /// Added to the console file's offsets to give the node's console stream offsets: a
    /// restart's fresh console file continues the stream where the dead run's ended.
    pub console_base: u64,
    /// When the guest last answered over its channel (or was first seen ready).
    pub guest_seen: Option<Instant>,
    /// The last statistics probe of a ready guest got no answer.
    pub guest_missed: bool,
    /// Why this agent killed the VM because its guest stopped answering.
    pub heartbeat_lost: Option<String>,
    /// A restore request this node could not carry out (it lacks the VM's backend or image),
    /// and why.
    pub restore_refused: Option<(Generation, String)>,
}

impl Local {
    /// Forgets what the dead run left: a restart launches the VM afresh.
    pub fn restart(&mut self, restarts: u32) {
        self.restarts_done = Some(restarts);
        self.launched_ms = None;
        self.running_ms = None;
        self.stopped_ms = None;
        self.guest_seen = None;
        self.guest_missed = false;
        self.heartbeat_lost = None;
    }
}

/// An operation to start on one VM. Plain: the executor builds what it needs from the intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make its disks and network attachment, resolve its image, launch it (or clone it from
    /// its function's template).
    Launch,
    /// Replace whatever runs with the VM restored from snapshot `snapshot`.
    Restore {
        /// The snapshot's name.
        snapshot: String,
        /// The restore request carried out.
        generation: Generation,
    },
    /// Graceful stop.
    Stop,
    /// Kill the VMM at once: its guest stopped answering.
    Kill,
    /// Remove the VMM, its state, disks and address.
    Remove,
    /// Pause the guest.
    Pause,
    /// Resume the guest.
    Resume,
}

/// What to report about one VM, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The phase to report.
    pub phase: VmPhase,
    /// Why, when there is something to say.
    pub message: Option<String>,
    /// The workload's exit code.
    pub exit_code: Option<i32>,
    /// The operation to start, if any.
    pub action: Option<Action>,
    /// The control plane restarted the VM and this pass launches that run.
    pub restart: bool,
    /// The newest restore request carried out (here or as the server knows).
    pub restored: Option<Generation>,
}

impl Decision {
    fn report(phase: VmPhase) -> Self {
        Decision {
            phase,
            message: None,
            exit_code: None,
            action: None,
            restart: false,
            restored: None,
        }
    }
    fn with_action(phase: VmPhase, action: Action) -> Self {
        Decision {
            action: Some(action),
            ..Decision::report(phase)
        }
    }
    fn failed(message: String) -> Self {
        Decision {
            message: Some(message),
            ..Decision::report(VmPhase::Failed)
        }
    }
    fn stopped(message: Option<String>, exit_code: Option<i32>) -> Self {
        Decision {
            message,
            exit_code,
            ..Decision::report(VmPhase::Stopped)
        }
    }
}

/// Decides the phase to report and the operation to start for one VM (see the module doc).
/// `launch_error` is the whole message a failed launch of this VM left (until it leaves the
/// intents); a VM killed for a lost heartbeat is timed out after `heartbeat_timeout` (zero:
/// never).
pub fn decide(
    intent: &VmIntent,
    obs: Option<&Observation>,
    launch_error: Option<&str>,
    local: &mut Local,
    clock: Clock,
    heartbeat_timeout: Duration,
) -> Decision {
    let now = clock.now_ms;
    let restart = restart_due(intent, obs, local);
    if !restart && obs.is_some_and(|o| o.running) {
        // Running here: this is the run the control plane counts.
        local.restarts_done = Some(local.restarts_done.unwrap_or(0).max(intent.restarts));
    }
    // The control plane restarted it: the dead run's launch error is history.
    let launch_error = launch_error.filter(|_| !restart);
    let restored = local.restored.max(intent.restored_generation);
    let heartbeat = heartbeat_lost(intent, obs, local, heartbeat_timeout, clock.now);
    let mut d = match (launch_error, heartbeat) {
        (Some(err), _)
            if !intent.deleting
                && !intent.phase.is_terminal()
                && obs.is_none_or(|o| !o.running) =>
        {
            local.stopped_ms.get_or_insert(now);
            Decision::failed(err.to_owned())
        }
        _ if restart => {
            local.restart(intent.restarts);
            launch(local, now)
        }
        (_, Some(why)) => {
            local.heartbeat_lost = Some(why.clone());
            local.stopped_ms = Some(now);
            Decision {
                action: Some(Action::Kill),
                ..Decision::failed(why)
            }
        }
        _ => decide_phase(intent, obs, local, restored, now),
    };
    d.restart = restart;
    d.restored = restored;
    d
}

/// Launch the VM here (reported Starting).
fn launch(local: &mut Local, now: u64) -> Decision {
    local.launched_ms.get_or_insert(now);
    Decision::with_action(VmPhase::Starting, Action::Launch)
}

/// The phase and operation for a VM that is not being restarted, failed or killed.
fn decide_phase(
    intent: &VmIntent,
    obs: Option<&Observation>,
    local: &mut Local,
    restored: Option<Generation>,
    now: u64,
) -> Decision {
    let spec = &intent.spec;
    if intent.deleting {
        return match obs {
            Some(_) => Decision::with_action(
                if intent.phase.is_terminal() {
                    intent.phase
                } else {
                    VmPhase::Stopping
                },
                Action::Remove,
            ),
            None => {
                local.stopped_ms.get_or_insert(now);
                Decision::report(if intent.phase == VmPhase::Failed {
                    VmPhase::Failed
                } else {
                    VmPhase::Stopped
                })
            }
        };
    }
    // A restore request not yet carried out replaces whatever runs (or ran) here.
    if let Some(r) = &spec.restore {
        if restored < Some(r.generation) && spec.desired != DesiredState::Stopped {
            let action = Action::Restore {
                snapshot: r.snapshot.clone(),
                generation: r.generation,
            };
            // Refused before: reported failed, tried again (the image may have come).
            if let Some((_, why)) = local
                .restore_refused
                .as_ref()
                .filter(|(g, _)| *g == r.generation)
            {
                return Decision {
                    action: Some(action),
                    ..Decision::failed(why.clone())
                };
            }
            local.launched_ms = Some(now);
            local.running_ms = None;
            local.stopped_ms = None;
            return Decision::with_action(VmPhase::Starting, action);
        }
    }
    match obs {
        Some(o) if o.running => match spec.desired {
            DesiredState::Stopped => Decision::with_action(VmPhase::Stopping, Action::Stop),
            DesiredState::Paused if !o.paused && o.guest_ready => {
                Decision::with_action(VmPhase::Running, Action::Pause)
            }
            DesiredState::Running if o.paused => {
                Decision::with_action(VmPhase::Paused, Action::Resume)
            }
            _ if o.paused => Decision::report(VmPhase::Paused),
            _ if o.guest_ready => {
                local.running_ms.get_or_insert(now);
                Decision::report(VmPhase::Running)
            }
            _ => Decision::report(VmPhase::Starting),
        },
        // A launch that never got as far as a VMM process (the agent died first): launch again.
        Some(o)
            if o.pid.is_none()
                && o.vmm_exit.is_none()
                && !o.powered_off
                && o.guest_exit_code.is_none()
                && matches!(intent.phase, VmPhase::Scheduled | VmPhase::Starting)
                && spec.desired != DesiredState::Stopped =>
        {
            launch(local, now)
        }
        Some(o) => {
            local.stopped_ms.get_or_insert(now);
            if let (Some(why), false) =
                (&local.heartbeat_lost, spec.desired == DesiredState::Stopped)
            {
                return Decision::failed(why.clone());
            }
            if spec.desired == DesiredState::Stopped {
                Decision::stopped(Some("stopped".to_owned()), o.guest_exit_code)
            } else if o.powered_off || o.guest_exit_code.is_some() {
                let message = o
                    .guest_exit_code
                    .map(|c| format!("command exited with status {c}"));
                Decision::stopped(message, o.guest_exit_code)
            } else {
                let why = o
                    .vmm_exit
                    .clone()
                    .unwrap_or_else(|| "unknown cause".to_owned());
                Decision::failed(format!("the VMM process exited unexpectedly: {why}"))
            }
        }
        None => match intent.phase {
            // Starting with nothing here: the agent died before the launch made anything (a
            // launch is idempotent and nothing local exists, so launching cannot duplicate).
            VmPhase::Scheduled | VmPhase::Starting if spec.desired != DesiredState::Stopped => {
                launch(local, now)
            }
            VmPhase::Scheduled | VmPhase::Starting | VmPhase::Stopping => {
                local.stopped_ms.get_or_insert(now);
                Decision::report(VmPhase::Stopped)
            }
            VmPhase::Running | VmPhase::Paused => {
                Decision::failed("the VM's state directory is gone from the node".to_owned())
            }
            p => Decision::report(p),
        },
    }
}

/// This node's part in a migration now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationSide {
    /// Send the VM (snapshot and upload, or QEMU's live stream).
    Source,
    /// Receive it and start it here.
    Destination,
}

/// What this node does for migration `m` now, if anything: the node the VM is placed on
/// (`ours`) sends it while it is transferring; the other receives it once there is something
/// to receive: a snapshot migration's snapshot when restoring, a live migration's stream while
/// transferring, once the source said how the VM was booted.
pub fn migration_side(m: &Migration, ours: bool) -> Option<MigrationSide> {
    let snapshot = m.mode == MigrationMode::Snapshot;
    match m.phase {
        MigrationPhase::Transferring if ours => Some(MigrationSide::Source),
        MigrationPhase::Restoring | MigrationPhase::Transferring
            if !ours
                && (m.phase == MigrationPhase::Restoring) == snapshot
                && (snapshot || m.kernel_cmdline.is_some()) =>
        {
            Some(MigrationSide::Destination)
        }
        _ => None,
    }
}

/// Whether the control plane restarted the VM and this agent has not launched that run yet: it
/// does not run here, and the intent's restart count is past the run this agent carried out.
/// An agent that restarted since (and so forgot) goes by the recorded phase: a restart puts the
/// VM back to Scheduled, and Starting means that run was launched but never became ready, so it
/// is launched once more; a VM at rest or running is the counted run.
pub fn restart_due(intent: &VmIntent, obs: Option<&Observation>, local: &Local) -> bool {
    if intent.deleting
        || intent.spec.desired == DesiredState::Stopped
        || obs.is_some_and(|o| o.running)
    {
        return false;
    }
    let done = local.restarts_done.unwrap_or(match intent.phase {
        VmPhase::Scheduled | VmPhase::Starting => intent.restarts.saturating_sub(1),
        _ => intent.restarts,
    });
    intent.restarts > done
}

/// Why the VM is to be killed and replaced because its guest stopped answering, if it is: it is
/// Running with a ready guest that is neither paused nor busy, and its guest's last answer is
/// older than `timeout` (at `now`) with the last probe unanswered. Times the heartbeat from when
/// the guest is first seen ready.
pub fn heartbeat_lost(
    intent: &VmIntent,
    obs: Option<&Observation>,
    local: &mut Local,
    timeout: Duration,
    now: Instant,
) -> Option<String> {
    let watched = obs.is_some_and(|o| o.running && o.guest_ready && !o.paused)
        && intent.phase == VmPhase::Running
        && intent.spec.desired == DesiredState::Running
        && !intent.deleting;
    if !watched || timeout.is_zero() {
        local.guest_seen = None;
        return None;
    }
    let seen = *local.guest_seen.get_or_insert(now);
    let silent = now.saturating_duration_since(seen);
    (local.guest_missed && silent > timeout).then(|| {
        format!(
            "the guest stopped answering for {} s (no heartbeat): replaced",
            silent.as_secs()
        )
    })
}

#[cfg(test)]
mod tests;
