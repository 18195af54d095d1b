//! Unit tests of the executor with the in-memory `FakeRuntime` and a fake control plane: each
//! operation succeeds, fails at its runtime step (reported as the agent reports it), and
//! recovers after a crash in its middle: the fake hangs at a step, the operation's task is
//! aborted and the step ends as a crash would end it, then a new executor, knowing only what
//! is on disk and in the VMM (the fake), takes the next pass.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use firefleet_api::{MigrationReport, VmIntent};
use firefleet_types::{DesiredState, MigrationPhase, SnapshotPhase, VmPhase};
use firefleet_vmm::fake::{FakePhase, FakeRuntime, Method};
use firefleet_vmm::{Runtime, VmmError};

use super::*;
use crate::control::Download;
use crate::decide::{decide, Clock, Decision, Local};

/// The control plane as the executor sees it: keeps what is uploaded (and serves it back),
/// records migration reports.
#[derive(Default)]
struct FakeControl {
    /// Uploaded archives: (vm, snapshot name, or "" for a migration) → bytes.
    stored: Mutex<HashMap<(String, String), Vec<u8>>>,
    reports: Mutex<Vec<(String, MigrationReport)>>,
}

impl FakeControl {
    fn phases(&self, vm: &str) -> Vec<(MigrationPhase, Option<String>)> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| v == vm)
            .map(|(_, r)| (r.phase, r.message.clone()))
            .collect()
    }

    fn store(&self, vm: &str, name: &str, archive: &Path) -> Result<(), String> {
        let bytes = std::fs::read(archive).map_err(|e| e.to_string())?;
        self.stored
            .lock()
            .unwrap()
            .insert((vm.to_owned(), name.to_owned()), bytes);
        Ok(())
    }
}

#[async_trait]
impl ControlPlane for FakeControl {
    async fn report_migration(&self, vm: &str, report: &MigrationReport) -> Result<(), String> {
        self.reports
            .lock()
            .unwrap()
            .push((vm.to_owned(), report.clone()));
        Ok(())
    }
    async fn upload_migration(&self, vm: &str, archive: &Path) -> Result<(), String> {
        self.store(vm, "", archive)
    }
    async fn upload_snapshot(&self, vm: &str, name: &str, archive: &Path) -> Result<(), String> {
        self.store(vm, name, archive)
    }
    async fn download(&self, vm: &str, from: Download<'_>, to: &Path) -> Result<u64, String> {
        let name = match from {
            Download::Migration => "",
            Download::Replica(n) => n,
        };
        let bytes = self
            .stored
            .lock()
            .unwrap()
            .get(&(vm.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| "404 Not Found".to_owned())?;
        std::fs::write(to, &bytes).map_err(|e| e.to_string())?;
        Ok(bytes.len() as u64)
    }
    async fn send_live(&self, _: &str, _: tokio::net::UnixStream) -> Result<(), String> {
        Err("no live migration here".into())
    }
    async fn receive_live(&self, _: &str, _: tokio::net::UnixStream) -> Result<u64, String> {
        Err("no live migration here".into())
    }
}

const VM: &str = "vm-1";
const IMAGE: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";

/// One node: a fake backend whose VMs outlive the executor, the agent's data directory, an
/// image store with one image, and the control plane.
struct Node {
    dir: tempfile::TempDir,
    rt: Arc<FakeRuntime>,
    control: Arc<FakeControl>,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let image = images.join(IMAGE.trim_start_matches("sha256:"));
        std::fs::create_dir_all(&image).unwrap();
        let manifest = serde_json::json!({
            "digest": IMAGE, "name": "default", "kernel_version": "6", "kernel_package": "k",
            "kernel_package_version": "1", "kernel_package_sha256": "0", "created_unix_ms": 1,
            "kernel_size": 1, "initrd_size": 1,
        });
        std::fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
        let rt = Arc::new(FakeRuntime::with_state_root(&dir.path().join("vms")));
        Node {
            dir,
            rt,
            control: Arc::default(),
        }
    }

    /// A fresh executor (as after an agent restart): it knows only the disk and the VMMs.
    fn executor(&self) -> Ops {
        self.executor_with(self.rt.clone())
    }

    /// A fresh executor of another node sharing this one's control plane.
    fn executor_with(&self, rt: Arc<FakeRuntime>) -> Ops {
        let backend: Arc<dyn Runtime> = rt;
        Ops::new(
            Arc::new(Runtimes::with_backend(backend)),
            Arc::new(Network::none()),
            self.dir.path().join("data"),
            self.dir.path().join("images"),
            self.control.clone(),
        )
    }
}

fn intent(phase: VmPhase) -> VmIntent {
    let spec: firefleet_types::VmSpec = serde_json::from_value(serde_json::json!({
        "name": "web",
        "tenant": "acme",
        "image": IMAGE,
        "resources": {"vcpus": 1, "memory_mib": 128},
        "desired": "running",
    }))
    .unwrap();
    VmIntent {
        id: VM.parse().unwrap(),
        generation: Generation(1),
        spec,
        deleting: false,
        phase,
        restored_generation: None,
        restarts: 0,
    }
}

fn with_restore(mut i: VmIntent) -> VmIntent {
    i.spec.restore = Some(firefleet_types::RestoreRequest {
        snapshot: "s1".into(),
        generation: Generation(2),
    });
    i
}

fn desired(mut i: VmIntent, d: DesiredState) -> VmIntent {
    i.spec.desired = d;
    i
}

/// Runs `op` on VM [`VM`] to its end; what it produced.
async fn run(ops: &Ops, op: Op) -> Vec<Outcome> {
    ops.spawn(VM.into(), VM.into(), op).unwrap().await.unwrap();
    ops.drain()
}

/// Starts `op`, lets it reach `method` (where the fake hangs), aborts its task and ends the
/// step as a crash of the agent would: nothing after it runs.
async fn crash_at(node: &Node, op: Op, method: Method) {
    let gate = node.rt.hang(VM, method);
    let ops = node.executor();
    let task = ops.spawn(VM.into(), VM.into(), op).unwrap();
    let g = gate.clone();
    let reached = tokio::task::spawn_blocking(move || g.wait_reached(Duration::from_secs(10)));
    assert!(
        reached.await.unwrap(),
        "the operation never reached {method:?}"
    );
    task.abort();
    gate.crash();
    assert!(task.await.unwrap_err().is_cancelled());
    drop(ops);
}

/// One reconcile pass of a fresh agent for `intent`: observe, decide, carry the action out.
async fn next_pass(node: &Node, ops: &Ops, intent: &VmIntent, local: &mut Local) -> Decision {
    let obs = match node.rt.observe(VM) {
        Ok(o) => Some(o),
        Err(VmmError::NotFound(_)) => None,
        Err(e) => panic!("{e}"),
    };
    let clock = Clock {
        now_ms: 1,
        now: Instant::now(),
    };
    let error = ops.launch_error(VM);
    let d = decide(
        intent,
        obs.as_ref(),
        error.as_deref(),
        local,
        clock,
        Duration::ZERO,
    );
    if let Some(a) = d.action.clone() {
        let outcomes = run(ops, Op::Decided(a, Box::new(intent.clone()))).await;
        // As the reconciler takes them.
        match outcomes.into_iter().next() {
            Some(Outcome::Restored { generation, .. }) => {
                local.restored = local.restored.max(Some(generation));
            }
            Some(Outcome::Refused {
                generation,
                message,
                ..
            }) => local.restore_refused = Some((generation, message)),
            _ => {}
        }
    }
    d
}

impl Op {
    fn decided(action: Action, intent: &VmIntent) -> Op {
        Op::Decided(action, Box::new(intent.clone()))
    }
}

fn launch_op() -> Op {
    Op::decided(Action::Launch, &intent(VmPhase::Scheduled))
}

fn kill() -> Op {
    Op::decided(Action::Kill, &intent(VmPhase::Running))
}

/// [`next_pass`] of an agent that remembers nothing of the VM, for the plain intent.
async fn fresh_pass(node: &Node, ops: &Ops, phase: VmPhase) -> Decision {
    next_pass(node, ops, &intent(phase), &mut Local::default()).await
}

fn phase(node: &Node) -> Option<FakePhase> {
    node.rt.vm(VM).map(|v| v.phase)
}

fn qemu_gone() -> VmmError {
    VmmError::QemuNotFound
}

/// A node whose backend fails at `method` (once), and its executor.
fn failing_at(method: Method) -> (Node, Ops) {
    let node = Node::new();
    node.rt.fail(VM, method, qemu_gone());
    let ops = node.executor();
    (node, ops)
}

#[tokio::test]
async fn a_launch_makes_the_config_and_starts_the_vmm() {
    let node = Node::new();
    let ops = node.executor();
    assert!(run(&ops, launch_op()).await.is_empty());
    assert_eq!(phase(&node), Some(FakePhase::Running));
    let vm = node.rt.vm(VM).unwrap();
    assert_eq!(
        (vm.config.vcpus, vm.config.image.digest.as_str()),
        (1, IMAGE)
    );
    assert_eq!(node.rt.actions(VM), [Method::Launch]);
    assert_eq!(ops.launch_error(VM), None);
}

#[tokio::test]
async fn a_failed_launch_is_reported_with_its_cause() {
    let (node, ops) = failing_at(Method::Launch);
    run(&ops, launch_op()).await;
    assert_eq!(phase(&node), None);
    let d = fresh_pass(&node, &ops, VmPhase::Starting).await;
    assert_eq!(d.phase, VmPhase::Failed);
    assert_eq!(
        d.message.as_deref(),
        Some("launch failed: qemu-system-x86_64 not found on PATH (set FIREFLEET_QEMU)")
    );
}

#[tokio::test]
async fn an_image_the_node_lacks_is_reported_as_is_and_nothing_starts() {
    let node = Node::new();
    let ops = node.executor();
    let mut i = intent(VmPhase::Scheduled);
    i.spec.image = "sha256:".to_owned() + &"b".repeat(64);
    run(&ops, Op::decided(Action::Launch, &i)).await;
    let e = ops.launch_error(VM).unwrap();
    assert!(e.starts_with("image sha256:bbbb"), "{e}");
    assert!(node.rt.actions(VM).is_empty());
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_launch_is_launched_again() {
    let node = Node::new();
    crash_at(&node, launch_op(), Method::Launch).await;
    assert_eq!(phase(&node), None);
    let ops = node.executor();
    let d = fresh_pass(&node, &ops, VmPhase::Starting).await;
    assert_eq!(d.action, Some(Action::Launch));
    assert_eq!(phase(&node), Some(FakePhase::Running));
    let d = fresh_pass(&node, &ops, VmPhase::Starting).await;
    assert_eq!((d.phase, d.action), (VmPhase::Running, None));
}

#[tokio::test]
async fn a_restore_replaces_the_running_vm() {
    let node = Node::new();
    let ops = node.executor();
    run(&ops, launch_op()).await;
    node.rt.snapshot(VM, "s1", false).unwrap();
    let op = Op::decided(
        Action::Restore {
            snapshot: "s1".into(),
            generation: Generation(2),
        },
        &with_restore(intent(VmPhase::Running)),
    );
    let out = run(&ops, op).await;
    assert!(matches!(
        out.as_slice(),
        [Outcome::Restored {
            generation: Generation(2),
            ..
        }]
    ));
    assert_eq!(
        node.rt.actions(VM)[1..],
        [Method::Snapshot, Method::Stop, Method::Restore]
    );
    let vm = node.rt.vm(VM).unwrap();
    assert_eq!(vm.phase, FakePhase::Running);
    assert!(vm.restored_from.unwrap().ends_with("snapshots/s1"));
    assert_eq!(ops.launch_error(VM), None);
}

#[tokio::test]
async fn a_failed_restore_counts_as_handled_and_is_reported() {
    let (node, ops) = failing_at(Method::Restore);
    let i = with_restore(intent(VmPhase::Failed));
    let mut local = Local::default();
    let d = next_pass(&node, &ops, &i, &mut local).await;
    assert!(matches!(d.action, Some(Action::Restore { .. })));
    assert_eq!(local.restored, Some(Generation(2)));
    let e = ops.launch_error(VM).unwrap();
    assert!(
        e.starts_with("launch failed: restore from \"s1\": qemu-system-x86_64 not found"),
        "{e}"
    );
    let d = next_pass(&node, &ops, &i, &mut local).await;
    assert_eq!((d.phase, d.action), (VmPhase::Failed, None));
}

#[tokio::test]
async fn a_restore_this_node_cannot_make_is_refused_and_nothing_is_tried() {
    let node = Node::new();
    let mut i = with_restore(intent(VmPhase::Failed));
    i.spec.image = "sha256:".to_owned() + &"d".repeat(64);
    let mut local = Local::default();
    let ops = node.executor();
    let d = next_pass(&node, &ops, &i, &mut local).await;
    assert_eq!(d.phase, VmPhase::Starting);
    let (generation, message) = local.restore_refused.clone().unwrap();
    assert_eq!(generation, Generation(2));
    assert!(message.starts_with("image sha256:dddd"), "{message}");
    assert!(node.rt.actions(VM).is_empty());
    assert_eq!(ops.launch_error(VM), None);
    // Reported failed from then on, and tried again.
    let d = next_pass(&node, &ops, &i, &mut local).await;
    assert_eq!(d.phase, VmPhase::Failed);
    assert!(matches!(d.action, Some(Action::Restore { .. })));
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_restore_restores_again() {
    let node = Node::new();
    node.executor();
    let i = with_restore(intent(VmPhase::Running));
    crash_at(
        &node,
        Op::decided(
            Action::Restore {
                snapshot: "s1".into(),
                generation: Generation(2),
            },
            &i,
        ),
        Method::Restore,
    )
    .await;
    assert_eq!(phase(&node), None);
    // The new agent does not know the request was tried: it is carried out again.
    let ops = node.executor();
    let mut local = Local::default();
    let d = next_pass(&node, &ops, &i, &mut local).await;
    assert!(matches!(d.action, Some(Action::Restore { .. })));
    assert_eq!(phase(&node), Some(FakePhase::Running));
    assert_eq!(local.restored, Some(Generation(2)));
    let d = next_pass(&node, &ops, &i, &mut local).await;
    assert_eq!((d.phase, d.action), (VmPhase::Running, None));
}

/// A running VM (launched through a first executor).
async fn running() -> Node {
    let node = Node::new();
    run(&node.executor(), launch_op()).await;
    assert_eq!(phase(&node), Some(FakePhase::Running));
    node
}

/// For a life-cycle operation (`action` on a running VM, as `want` decides it): it succeeds; it
/// fails at `method` and the next pass decides it again and succeeds; it crashes at `method`
/// and the next pass of a new agent carries it out.
async fn life_cycle(action: Action, method: Method, want: VmIntent, done: Option<FakePhase>) {
    // Succeeds.
    let node = running().await;
    let ops = node.executor();
    let d = next_pass(&node, &ops, &want, &mut Local::default()).await;
    assert_eq!(d.action.as_ref(), Some(&action));
    assert_eq!(phase(&node), done, "{action:?}");

    // Fails at its runtime step: nothing changes, the next pass tries again.
    let node = running().await;
    let ops = node.executor();
    node.rt.fail(VM, method, qemu_gone());
    let d = next_pass(&node, &ops, &want, &mut Local::default()).await;
    assert_eq!(d.action.as_ref(), Some(&action));
    assert_eq!(phase(&node), Some(FakePhase::Running), "{action:?} failed");
    assert_eq!(ops.launch_error(VM), None);
    let d = next_pass(&node, &ops, &want, &mut Local::default()).await;
    assert_eq!(d.action.as_ref(), Some(&action));
    assert_eq!(phase(&node), done, "{action:?} again");

    // Crashes in the middle: a new agent carries it out.
    let node = running().await;
    crash_at(&node, Op::decided(action.clone(), &want), method).await;
    assert_eq!(phase(&node), Some(FakePhase::Running), "{action:?} crashed");
    let ops = node.executor();
    let d = next_pass(&node, &ops, &want, &mut Local::default()).await;
    assert_eq!(d.action.as_ref(), Some(&action));
    assert_eq!(phase(&node), done, "{action:?} after the crash");
}

#[tokio::test]
async fn a_stop_stops_gracefully_and_recovers() {
    let stopped = desired(intent(VmPhase::Running), DesiredState::Stopped);
    life_cycle(Action::Stop, Method::Stop, stopped, Some(FakePhase::Exited)).await;
    let node = running().await;
    run(
        &node.executor(),
        Op::decided(Action::Stop, &intent(VmPhase::Running)),
    )
    .await;
    let stop = node
        .rt
        .calls()
        .into_iter()
        .rfind(|c| c.method == Method::Stop);
    assert_eq!(stop.unwrap().args, "grace=10s");
}

#[tokio::test]
async fn a_paused_vm_is_resumed_before_it_is_stopped() {
    let node = running().await;
    node.rt.pause(VM).unwrap();
    run(
        &node.executor(),
        Op::decided(Action::Stop, &intent(VmPhase::Running)),
    )
    .await;
    assert_eq!(
        node.rt.actions(VM)[1..],
        [Method::Pause, Method::Resume, Method::Stop]
    );
}

#[tokio::test]
async fn a_removal_removes_the_vm_and_recovers() {
    let mut gone = intent(VmPhase::Running);
    gone.deleting = true;
    life_cycle(Action::Remove, Method::Remove, gone, None).await;
    let node = running().await;
    let state_dir = node.dir.path().join("vms").join(VM);
    assert!(state_dir.is_dir());
    run(&node.executor(), Op::Remove).await;
    assert!(!state_dir.exists());
}

#[tokio::test]
async fn a_pause_and_a_resume_recover() {
    let paused = desired(intent(VmPhase::Running), DesiredState::Paused);
    life_cycle(
        Action::Pause,
        Method::Pause,
        paused,
        Some(FakePhase::Paused),
    )
    .await;
    // Resume: from a paused VM.
    let node = running().await;
    node.rt.pause(VM).unwrap();
    let ops = node.executor();
    node.rt.fail(VM, Method::Resume, qemu_gone());
    let want = intent(VmPhase::Paused);
    let d = next_pass(&node, &ops, &want, &mut Local::default()).await;
    assert_eq!(d.action, Some(Action::Resume));
    assert_eq!(phase(&node), Some(FakePhase::Paused));
    crash_at(
        &node,
        Op::decided(Action::Resume, &intent(VmPhase::Paused)),
        Method::Resume,
    )
    .await;
    assert_eq!(phase(&node), Some(FakePhase::Paused));
    let d = next_pass(&node, &node.executor(), &want, &mut Local::default()).await;
    assert_eq!(d.action, Some(Action::Resume));
    assert_eq!(phase(&node), Some(FakePhase::Running));
}

#[tokio::test]
async fn a_kill_is_immediate_and_recovers() {
    // Decided for a lost heartbeat; here carried out directly.
    let node = running().await;
    node.rt.fail(VM, Method::Stop, qemu_gone());
    run(&node.executor(), kill()).await;
    assert_eq!(phase(&node), Some(FakePhase::Running));
    crash_at(&node, kill(), Method::Stop).await;
    assert_eq!(phase(&node), Some(FakePhase::Running));
    run(&node.executor(), kill()).await;
    assert_eq!(phase(&node), Some(FakePhase::Exited));
    let kill = node
        .rt
        .calls()
        .into_iter()
        .rfind(|c| c.method == Method::Stop);
    assert_eq!(kill.unwrap().args, "grace=0s");
}

fn snapshot_report(out: &[Outcome]) -> &SnapshotReport {
    match out {
        [Outcome::Snapshot { name, report, .. }] if name == "s1" => report,
        _ => panic!("no snapshot outcome"),
    }
}

#[tokio::test]
async fn a_snapshot_is_taken_copied_reported_and_recovers() {
    let node = running().await;
    let snap = || Op::Snapshot { name: "s1".into() };
    // Fails: reported failed with the cause.
    node.rt.fail(VM, Method::Snapshot, qemu_gone());
    let out = run(&node.executor(), snap()).await;
    let r = snapshot_report(&out);
    assert_eq!(r.phase, SnapshotPhase::Failed);
    assert!(r.message.as_deref().unwrap().starts_with("qemu-system"));
    // Crashes while taking it: a new agent takes it.
    crash_at(&node, snap(), Method::Snapshot).await;
    let out = run(&node.executor(), snap()).await;
    assert_eq!(snapshot_report(&out).phase, SnapshotPhase::Ready);
    // Taken, and copied to the control plane.
    assert!(node
        .control
        .stored
        .lock()
        .unwrap()
        .contains_key(&(VM.to_owned(), "s1".to_owned())));
    // Taken before a crash that lost its report: found on disk, not taken again.
    let taken = node.rt.actions(VM).len();
    let out = run(&node.executor(), snap()).await;
    assert_eq!(snapshot_report(&out).phase, SnapshotPhase::Ready);
    assert_eq!(node.rt.actions(VM).len(), taken);
}

fn exec_record() -> firefleet_api::ExecRequestRecord {
    serde_json::from_value(serde_json::json!({
        "id": "x1", "vm": VM,
        "request": {"argv": ["cat"], "stdin_b64": "aGk="},
    }))
    .unwrap()
}

#[tokio::test]
async fn an_exec_runs_in_the_guest_and_recovers() {
    let node = running().await;
    let exec = || Op::Exec(Box::new(exec_record()));
    let out = run(&node.executor(), exec()).await;
    match out.as_slice() {
        [Outcome::Exec { id, result, .. }] => {
            assert_eq!(id, "x1");
            assert_eq!((result.exit_code, result.stdout.as_str()), (Some(0), "hi"));
        }
        _ => panic!("no exec outcome"),
    }
    node.rt.fail(VM, Method::Exec, qemu_gone());
    match run(&node.executor(), exec()).await.as_slice() {
        [Outcome::Exec { result, .. }] => {
            assert!(result
                .error
                .as_deref()
                .unwrap()
                .starts_with("exec: qemu-system"));
        }
        _ => panic!("no exec outcome"),
    }
    crash_at(&node, exec(), Method::Exec).await;
    let out = run(&node.executor(), exec()).await;
    assert!(matches!(out.as_slice(), [Outcome::Exec { .. }]));
}

#[tokio::test]
async fn network_settings_are_applied_and_reported() {
    let node = running().await;
    let spec = intent(VmPhase::Running).spec.network;
    let out = run(&node.executor(), Op::Network(spec)).await;
    assert!(matches!(
        out.as_slice(),
        [Outcome::Network { result: Ok(()), .. }]
    ));
}

fn migration(mode: &str, phase: &str) -> MigrationIntent {
    let i = intent(VmPhase::Running);
    serde_json::from_value(serde_json::json!({
        "migration": {
            "vm": VM, "from": "n1", "to": "n2", "phase": phase, "mode": mode,
            "snapshot": "mig-1", "generation": 1, "requested_ms": 0,
        },
        "spec": i.spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_migration_moves_the_vm_and_each_side_recovers() {
    let source = running().await;
    let out = || Op::MigrateOut(Box::new(migration("snapshot", "transferring")));
    // The source fails to snapshot: reported.
    source.rt.fail(VM, Method::Snapshot, qemu_gone());
    run(&source.executor(), out()).await;
    let phases = source.control.phases(VM);
    assert_eq!(phases.last().unwrap().0, MigrationPhase::Failed);
    assert!(phases
        .last()
        .unwrap()
        .1
        .as_deref()
        .unwrap()
        .starts_with("source: snapshot: "));
    // It crashes while snapshotting: a new agent sends it.
    crash_at(&source, out(), Method::Snapshot).await;
    run(&source.executor(), out()).await;
    assert_eq!(phase(&source), Some(FakePhase::Paused));
    assert_eq!(
        source.control.phases(VM).last().unwrap().0,
        MigrationPhase::Transferring
    );
    assert!(source
        .control
        .stored
        .lock()
        .unwrap()
        .contains_key(&(VM.to_owned(), String::new())));

    // The destination: another node, the same control plane.
    let dest = Node::new();
    let dest = Node {
        control: source.control.clone(),
        ..dest
    };
    let into = || Op::MigrateIn(Box::new(migration("snapshot", "restoring")));
    // Fails to restore: reported, what it made is undone.
    dest.rt.fail(VM, Method::Restore, qemu_gone());
    run(&dest.executor(), into()).await;
    let (p, msg) = dest.control.phases(VM).last().cloned().unwrap();
    assert_eq!(p, MigrationPhase::Failed);
    assert!(msg.unwrap().starts_with("destination: restore: "));
    assert_eq!(dest.rt.actions(VM), [Method::Restore, Method::Remove]);
    // Crashes while restoring: a new agent restores (from the snapshot it received).
    crash_at(&dest, into(), Method::Restore).await;
    run(&dest.executor(), into()).await;
    assert_eq!(phase(&dest), Some(FakePhase::Running));
    assert_eq!(
        dest.control.phases(VM).last().unwrap().0,
        MigrationPhase::Done
    );
    let vm = dest.rt.vm(VM).unwrap();
    assert!(vm.restored_from.unwrap().ends_with("snapshots/mig-1"));
}

#[tokio::test]
async fn a_destination_that_cannot_make_the_vm_reports_it() {
    let node = Node::new();
    let mut m = migration("snapshot", "restoring");
    m.spec.image = "sha256:".to_owned() + &"c".repeat(64);
    run(&node.executor(), Op::MigrateIn(Box::new(m))).await;
    let (p, msg) = node.control.phases(VM).last().cloned().unwrap();
    assert_eq!(p, MigrationPhase::Failed);
    assert!(msg.unwrap().starts_with("destination: image sha256:cccc"));
    assert!(!node.rt.actions(VM).contains(&Method::Restore));
}

#[tokio::test]
async fn one_operation_per_vm_at_a_time() {
    let node = running().await;
    let gate = node.rt.hang(VM, Method::Stop);
    let ops = node.executor();
    let task = ops.spawn(VM.into(), VM.into(), kill()).unwrap();
    assert!(ops.is_busy(VM));
    assert!(ops.spawn(VM.into(), VM.into(), Op::Remove).is_none());
    gate.release();
    task.await.unwrap();
    assert!(!ops.is_busy(VM));
}
