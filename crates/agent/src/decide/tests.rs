//! Unit tests of the pure decide step.
use super::*;

fn intent(phase: VmPhase, restarts: u32) -> VmIntent {
    let spec = firefleet_types::fixtures::vm_spec("web", 128);
    VmIntent {
        id: "vm-1".parse().expect("id"),
        generation: Generation(1),
        spec,
        deleting: false,
        phase,
        restored_generation: None,
        restarts,
    }
}

fn obs(running: bool, ready: bool) -> Observation {
    Observation {
        id: "vm-1".into(),
        pid: Some(42),
        running,
        guest_ready: ready,
        guest_exit_code: None,
        powered_off: false,
        vmm_exit: (!running).then(|| "killed by signal 9".into()),
        paused: false,
    }
}

#[test]
fn a_restart_is_carried_out_once() {
    let dead = obs(false, true);
    let mut local = Local::default();
    // Never restarted: nothing to do.
    assert!(!restart_due(
        &intent(VmPhase::Failed, 0),
        Some(&dead),
        &local
    ));
    // The control plane restarted it (Scheduled, count 1).
    let i = intent(VmPhase::Scheduled, 1);
    assert!(restart_due(&i, Some(&dead), &local));
    assert!(restart_due(&i, None, &local));
    local.restart(1);
    // Launched: the new run dying is a failure to report, not another launch.
    assert!(!restart_due(&i, Some(&dead), &local));
    assert!(!restart_due(
        &intent(VmPhase::Failed, 1),
        Some(&dead),
        &local
    ));
    // Running: nothing to launch.
    assert!(!restart_due(
        &intent(VmPhase::Scheduled, 2),
        Some(&obs(true, true)),
        &local
    ));
    // Stopped or deleted meanwhile: no launch.
    let mut i = intent(VmPhase::Scheduled, 2);
    i.spec.desired = DesiredState::Stopped;
    assert!(!restart_due(&i, Some(&dead), &local));
    let mut i = intent(VmPhase::Scheduled, 2);
    i.deleting = true;
    assert!(!restart_due(&i, Some(&dead), &local));
}

#[test]
fn an_agent_that_restarted_goes_by_the_phase() {
    let dead = obs(false, true);
    let fresh = Local::default();
    // Put back to Scheduled (or launched but never ready): launch.
    assert!(restart_due(
        &intent(VmPhase::Scheduled, 3),
        Some(&dead),
        &fresh
    ));
    assert!(restart_due(
        &intent(VmPhase::Starting, 3),
        Some(&dead),
        &fresh
    ));
    // At rest or running: the counted run, which died; report it, do not loop.
    assert!(!restart_due(
        &intent(VmPhase::Failed, 3),
        Some(&dead),
        &fresh
    ));
    assert!(!restart_due(
        &intent(VmPhase::Running, 3),
        Some(&dead),
        &fresh
    ));
    // The first launch is not a restart.
    assert!(!restart_due(
        &intent(VmPhase::Starting, 0),
        Some(&dead),
        &fresh
    ));
}

#[test]
fn a_silent_guest_is_lost_after_the_timeout() {
    let t = Duration::from_secs(30);
    let running = obs(true, true);
    let i = intent(VmPhase::Running, 0);
    let mut local = Local::default();
    // First seen ready: the clock starts.
    assert_eq!(
        heartbeat_lost(&i, Some(&running), &mut local, t, Instant::now()),
        None
    );
    assert!(local.guest_seen.is_some());
    // Silent for longer than the timeout, with the last probe unanswered: lost.
    local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
    local.guest_missed = true;
    let why = heartbeat_lost(&i, Some(&running), &mut local, t, Instant::now()).expect("lost");
    assert!(
        why.starts_with("the guest stopped answering for 31 s (no heartbeat)"),
        "{why}"
    );
    // The last probe was answered: not lost (probes may just be late).
    local.guest_missed = false;
    assert_eq!(
        heartbeat_lost(&i, Some(&running), &mut local, t, Instant::now()),
        None
    );
    local.guest_missed = true;
    // Disabled, paused, starting, not ready: exempt, and the clock starts again after.
    assert_eq!(
        heartbeat_lost(
            &i,
            Some(&running),
            &mut local,
            Duration::ZERO,
            Instant::now()
        ),
        None
    );
    assert!(local.guest_seen.is_none());
    local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
    let mut paused = obs(true, true);
    paused.paused = true;
    assert_eq!(
        heartbeat_lost(&i, Some(&paused), &mut local, t, Instant::now()),
        None
    );
    assert!(local.guest_seen.is_none());
    local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
    assert_eq!(
        heartbeat_lost(
            &intent(VmPhase::Starting, 0),
            Some(&running),
            &mut local,
            t,
            Instant::now()
        ),
        None
    );
    local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
    assert_eq!(
        heartbeat_lost(&i, Some(&obs(true, false)), &mut local, t, Instant::now()),
        None
    );
}

/// One row of the decision table: a situation and what must come of it.
struct Row {
    name: &'static str,
    intent: VmIntent,
    obs: Option<Observation>,
    launch_error: Option<&'static str>,
    local: Local,
    phase: VmPhase,
    action: Option<Action>,
    message: Option<&'static str>,
}

fn row(name: &'static str, intent: VmIntent, obs: Option<Observation>) -> Row {
    Row {
        name,
        intent,
        obs,
        launch_error: None,
        local: Local::default(),
        phase: VmPhase::Running,
        action: None,
        message: None,
    }
}

impl Row {
    fn expect(mut self, phase: VmPhase, action: Option<Action>) -> Self {
        self.phase = phase;
        self.action = action;
        self
    }
    fn saying(mut self, message: &'static str) -> Self {
        self.message = Some(message);
        self
    }
    fn failed_launch(mut self, why: &'static str) -> Self {
        self.launch_error = Some(why);
        self
    }
    fn local(mut self, f: impl FnOnce(&mut Local)) -> Self {
        f(&mut self.local);
        self
    }
}

fn desired(mut i: VmIntent, d: DesiredState) -> VmIntent {
    i.spec.desired = d;
    i
}

fn deleting(mut i: VmIntent) -> VmIntent {
    i.deleting = true;
    i
}

fn restore_to(mut i: VmIntent, generation: u64) -> VmIntent {
    i.spec.restore = Some(firefleet_types::RestoreRequest {
        snapshot: "s1".into(),
        generation: Generation(generation),
    });
    i
}

fn paused(mut o: Observation) -> Observation {
    o.paused = true;
    o
}

/// A state directory and nothing else: the launch never got as far as a VMM.
fn bare() -> Observation {
    Observation {
        pid: None,
        vmm_exit: None,
        ..obs(false, false)
    }
}

fn exited(code: Option<i32>, powered_off: bool) -> Observation {
    Observation {
        guest_exit_code: code,
        powered_off,
        vmm_exit: Some("exit status: 0".into()),
        ..obs(false, true)
    }
}

#[test]
fn the_decision_table() {
    use Action::*;
    use VmPhase::*;
    let restore = |g| {
        Some(Restore {
            snapshot: "s1".into(),
            generation: Generation(g),
        })
    };
    let rows = vec![
        // Launching.
        row(
            "scheduled, nothing here: launch",
            intent(Scheduled, 0),
            None,
        )
        .expect(Starting, Some(Launch)),
        row(
            "starting, nothing here (agent died before the launch made anything): launch",
            intent(Starting, 0),
            None,
        )
        .expect(Starting, Some(Launch)),
        row(
            "a launch that never got to a VMM: launch again",
            intent(Starting, 0),
            Some(bare()),
        )
        .expect(Starting, Some(Launch)),
        row(
            "scheduled but desired stopped, nothing here: stopped",
            desired(intent(Scheduled, 0), DesiredState::Stopped),
            None,
        )
        .expect(Stopped, None),
        row("stopping, nothing here: stopped", intent(Stopping, 0), None).expect(Stopped, None),
        row("a failed launch is reported", intent(Starting, 0), None)
            .failed_launch("launch failed: no QEMU")
            .expect(Failed, None)
            .saying("launch failed: no QEMU"),
        row(
            "a failed launch of a VM that runs anyway is not",
            intent(Starting, 0),
            Some(obs(true, true)),
        )
        .failed_launch("launch failed: no QEMU")
        .expect(Running, None),
        // Running.
        row(
            "running, not ready yet: starting",
            intent(Starting, 0),
            Some(obs(true, false)),
        )
        .expect(Starting, None),
        row(
            "running and ready: running",
            intent(Starting, 0),
            Some(obs(true, true)),
        )
        .expect(Running, None),
        row(
            "desired stopped: stop",
            desired(intent(Running, 0), DesiredState::Stopped),
            Some(obs(true, true)),
        )
        .expect(Stopping, Some(Stop)),
        row(
            "desired paused: pause",
            desired(intent(Running, 0), DesiredState::Paused),
            Some(obs(true, true)),
        )
        .expect(Running, Some(Pause)),
        row(
            "desired paused, guest not ready: wait",
            desired(intent(Starting, 0), DesiredState::Paused),
            Some(obs(true, false)),
        )
        .expect(Starting, None),
        row(
            "desired paused and paused: paused",
            desired(intent(Paused, 0), DesiredState::Paused),
            Some(paused(obs(true, true))),
        )
        .expect(Paused, None),
        row(
            "desired running, paused: resume",
            intent(Paused, 0),
            Some(paused(obs(true, true))),
        )
        .expect(Paused, Some(Resume)),
        // Gone or exited.
        row(
            "running, state directory gone: failed",
            intent(Running, 0),
            None,
        )
        .expect(Failed, None)
        .saying("the VM's state directory is gone from the node"),
        row("stopped and gone: stays stopped", intent(Stopped, 0), None).expect(Stopped, None),
        row(
            "the workload exited: stopped with its code",
            intent(Running, 0),
            Some(exited(Some(3), true)),
        )
        .expect(Stopped, None)
        .saying("command exited with status 3"),
        row(
            "the guest powered off: stopped",
            intent(Running, 0),
            Some(exited(None, true)),
        )
        .expect(Stopped, None),
        row(
            "stopped as desired",
            desired(intent(Stopping, 0), DesiredState::Stopped),
            Some(exited(None, true)),
        )
        .expect(Stopped, None)
        .saying("stopped"),
        row(
            "the VMM died: failed",
            intent(Running, 0),
            Some(obs(false, true)),
        )
        .expect(Failed, None)
        .saying("the VMM process exited unexpectedly: killed by signal 9"),
        // Deletion.
        row(
            "deleting, running: remove",
            deleting(intent(Running, 0)),
            Some(obs(true, true)),
        )
        .expect(Stopping, Some(Remove)),
        row(
            "deleting a failed VM: remove, still failed",
            deleting(intent(Failed, 0)),
            Some(obs(false, true)),
        )
        .expect(Failed, Some(Remove)),
        row(
            "deleted and gone: stopped",
            deleting(intent(Running, 0)),
            None,
        )
        .expect(Stopped, None),
        row(
            "deleted failed VM gone: failed",
            deleting(intent(Failed, 0)),
            None,
        )
        .expect(Failed, None),
        row(
            "deleting wins over a failed launch",
            deleting(intent(Starting, 0)),
            None,
        )
        .failed_launch("launch failed: x")
        .expect(Stopped, None),
        // Restore.
        row(
            "a restore request: restore",
            restore_to(intent(Running, 0), 2),
            Some(obs(true, true)),
        )
        .expect(Starting, restore(2)),
        row(
            "a restore request with nothing here: restore",
            restore_to(intent(Failed, 0), 2),
            None,
        )
        .expect(Starting, restore(2)),
        row(
            "a restore carried out here: not again",
            restore_to(intent(Running, 0), 2),
            Some(obs(true, true)),
        )
        .local(|l| l.restored = Some(Generation(2)))
        .expect(Running, None),
        row(
            "a restore the server knows of: not again",
            {
                let mut i = restore_to(intent(Running, 0), 2);
                i.restored_generation = Some(Generation(2));
                i
            },
            Some(obs(true, true)),
        )
        .expect(Running, None),
        row(
            "a restore of a VM desired stopped: not carried out",
            desired(restore_to(intent(Running, 0), 2), DesiredState::Stopped),
            Some(obs(true, true)),
        )
        .expect(Stopping, Some(Stop)),
        row(
            "a restore this node refused: failed, tried again",
            restore_to(intent(Failed, 0), 2),
            None,
        )
        .local(|l| l.restore_refused = Some((Generation(2), "image x: not found".into())))
        .expect(Failed, restore(2))
        .saying("image x: not found"),
        row(
            "an older refusal does not count",
            restore_to(intent(Failed, 0), 3),
            None,
        )
        .local(|l| l.restore_refused = Some((Generation(2), "image x: not found".into())))
        .expect(Starting, restore(3)),
        // Restart.
        row(
            "restarted by the control plane: launch afresh",
            intent(Scheduled, 1),
            Some(obs(false, true)),
        )
        .expect(Starting, Some(Launch)),
        row(
            "a restart forgets the dead run's launch error",
            intent(Scheduled, 1),
            None,
        )
        .failed_launch("launch failed: old")
        .expect(Starting, Some(Launch)),
        row(
            "the restarted run died: failed, not launched again",
            intent(Failed, 1),
            Some(obs(false, true)),
        )
        .local(|l| l.restarts_done = Some(1))
        .expect(Failed, None),
        // Heartbeat.
        row(
            "a silent guest: kill",
            intent(Running, 0),
            Some(obs(true, true)),
        )
        .local(|l| {
            l.guest_seen = Instant::now().checked_sub(Duration::from_secs(60));
            l.guest_missed = true;
        })
        .expect(Failed, Some(Kill)),
        row(
            "a guest that answered late: nothing",
            intent(Running, 0),
            Some(obs(true, true)),
        )
        .local(|l| l.guest_seen = Instant::now().checked_sub(Duration::from_secs(60)))
        .expect(Running, None),
        row(
            "killed for its heartbeat, now dead: still failed",
            intent(Running, 0),
            Some(obs(false, true)),
        )
        .local(|l| l.heartbeat_lost = Some("the guest stopped answering".into()))
        .expect(Failed, None)
        .saying("the guest stopped answering"),
    ];
    let clock = Clock {
        now_ms: 1_000,
        now: Instant::now(),
    };
    for mut r in rows {
        let d = decide(
            &r.intent,
            r.obs.as_ref(),
            r.launch_error,
            &mut r.local,
            clock,
            Duration::from_secs(30),
        );
        assert_eq!((d.phase, &d.action), (r.phase, &r.action), "{}", r.name);
        if let Some(m) = r.message {
            assert_eq!(d.message.as_deref(), Some(m), "{}", r.name);
        }
    }
}

#[test]
fn decisions_update_what_the_agent_remembers() {
    let clock = Clock {
        now_ms: 7,
        now: Instant::now(),
    };
    let t = Duration::ZERO;
    // A launch records when; a ready guest records when it ran; a dead one when it stopped.
    let mut l = Local::default();
    let d = decide(&intent(VmPhase::Scheduled, 0), None, None, &mut l, clock, t);
    assert_eq!(d.action, Some(Action::Launch));
    assert_eq!(l.launched_ms, Some(7));
    decide(
        &intent(VmPhase::Starting, 0),
        Some(&obs(true, true)),
        None,
        &mut l,
        clock,
        t,
    );
    assert_eq!((l.running_ms, l.restarts_done), (Some(7), Some(0)));
    decide(
        &intent(VmPhase::Running, 0),
        Some(&obs(false, true)),
        None,
        &mut l,
        clock,
        t,
    );
    assert_eq!(l.stopped_ms, Some(7));
    // A restart forgets the dead run and counts the new one.
    let d = decide(
        &intent(VmPhase::Scheduled, 1),
        Some(&obs(false, true)),
        None,
        &mut l,
        clock,
        t,
    );
    assert!(d.restart);
    assert_eq!(
        (l.restarts_done, l.stopped_ms, l.launched_ms),
        (Some(1), None, Some(7))
    );
    // A kill for a lost heartbeat is remembered.
    let mut l = Local {
        guest_seen: Instant::now().checked_sub(Duration::from_secs(60)),
        guest_missed: true,
        ..Local::default()
    };
    let d = decide(
        &intent(VmPhase::Running, 0),
        Some(&obs(true, true)),
        None,
        &mut l,
        clock,
        Duration::from_secs(30),
    );
    assert_eq!(d.action, Some(Action::Kill));
    assert_eq!(l.heartbeat_lost, d.message);
    assert_eq!(l.stopped_ms, Some(7));
    // The restored generation reported is the newest known here or to the server.
    let mut l = Local {
        restored: Some(Generation(3)),
        ..Local::default()
    };
    let mut i = intent(VmPhase::Running, 0);
    i.restored_generation = Some(Generation(2));
    let d = decide(&i, Some(&obs(true, true)), None, &mut l, clock, t);
    assert_eq!(d.restored, Some(Generation(3)));
}

#[test]
fn each_side_of_a_migration_acts_in_its_phase() {
    use MigrationPhase::*;
    use MigrationSide::*;
    let m = |phase: MigrationPhase, mode: MigrationMode, cmdline: bool| -> Migration {
        serde_json::from_value(serde_json::json!({
            "vm": "vm-1", "from": "n1", "to": "n2", "phase": phase, "mode": mode,
            "snapshot": "mig-1", "generation": 1, "requested_ms": 0,
            "kernel_cmdline": cmdline.then_some("console=ttyS0"),
        }))
        .expect("migration")
    };
    let (snap, live) = (MigrationMode::Snapshot, MigrationMode::Live);
    let table = [
        // (phase, mode, the source said how it booted, ours) → side
        (Transferring, snap, false, true, Some(Source)),
        (Transferring, live, false, true, Some(Source)),
        (Transferring, snap, false, false, None),
        (Restoring, snap, false, false, Some(Destination)),
        (Restoring, snap, false, true, None),
        (Transferring, live, false, false, None),
        (Transferring, live, true, false, Some(Destination)),
        (Restoring, live, true, false, None),
        (Done, snap, false, false, None),
        (Failed, live, true, true, None),
    ];
    for (phase, mode, cmdline, ours, side) in table {
        assert_eq!(
            migration_side(&m(phase, mode, cmdline), ours),
            side,
            "{phase:?} {mode:?} cmdline={cmdline} ours={ours}"
        );
    }
}
