//! Reconciling the host to the intents: the core of the agent.
//!
//! For each VM placed on this node, compare what the control plane wants (desired state,
//! restore requests, deletion) with what the runtime observes (state directory, process, guest
//! readiness, pause, exit status), start an operation (launch, restore, pause, resume, stop,
//! remove) and report the observed phase. Snapshots and execs requested for this node's VMs are
//! carried out too, and statistics are collected. VMM work is blocking and may take seconds, so
//! it runs in [`Ops`], at most one life-cycle operation per VM at a time. A VM with networking is
//! attached to the node network just before its VMM starts and detached once its VMM is removed;
//! its address is reported. Local VMs (state directories, and addresses) that the intents no
//! longer list are removed.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use firefleet_api::{IntentsResponse, VmIntent, VmStatusReport};
use firefleet_client::Client;
use firefleet_types::{DesiredState, Generation, VmId, VmPhase};
use firefleet_vmm::{image::ImageStore, LaunchConfig, Observation, VmmError};

use crate::{
    network::{NetRequest, Network},
    ops::{Op, Ops, Outcome},
    runtimes::Runtimes,
};

/// Largest console chunk uploaded at once.
const CONSOLE_CHUNK: usize = 64 * 1024;
/// How often statistics are collected per running VM.
const STATS_PERIOD: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Local {
    /// The last report the server accepted.
    reported: Option<VmStatusReport>,
    /// Where the server's copy of the console ends (None: not asked yet).
    console_end: Option<u64>,
    launched_ms: Option<u64>,
    running_ms: Option<u64>,
    stopped_ms: Option<u64>,
    /// Restore requests carried out here (the server learns it from the next report).
    restored: Option<Generation>,
    last_stats: Option<Instant>,
}

pub struct Reconciler {
    client: Client,
    runtimes: Arc<Runtimes>,
    network: Arc<Network>,
    image_dir: PathBuf,
    ops: Ops,
    local: HashMap<VmId, Local>,
    /// Snapshots (`vm/name`) and execs (ids) started, so each is carried out once even before the
    /// server's next answer drops it from the intents.
    started: HashSet<String>,
    starting: bool,
    /// VMs this node is migrating away in this pass: left alone (paused for the snapshot).
    migrating_out: HashSet<String>,
}

/// What to do about one VM, and what to report.
struct Decision {
    phase: VmPhase,
    message: Option<String>,
    exit_code: Option<i32>,
    op: Option<Op>,
}

impl Decision {
    fn report(phase: VmPhase) -> Self {
        Decision {
            phase,
            message: None,
            exit_code: None,
            op: None,
        }
    }
    fn with_op(phase: VmPhase, op: Op) -> Self {
        Decision {
            phase,
            message: None,
            exit_code: None,
            op: Some(op),
        }
    }
    fn failed(message: String) -> Self {
        Decision {
            phase: VmPhase::Failed,
            message: Some(message),
            exit_code: None,
            op: None,
        }
    }
}

impl Reconciler {
    pub fn new(
        client: Client,
        runtimes: Arc<Runtimes>,
        network: Arc<Network>,
        data_dir: PathBuf,
        image_dir: PathBuf,
    ) -> Self {
        let ops = Ops::new(
            runtimes.clone(),
            network.clone(),
            data_dir,
            image_dir.clone(),
            client.clone(),
        );
        Self {
            client,
            runtimes,
            network,
            image_dir,
            ops,
            local: HashMap::new(),
            started: HashSet::new(),
            starting: false,
            migrating_out: HashSet::new(),
        }
    }

    /// Whether a VM is booting (the caller then reconciles more often to see it become ready).
    pub fn has_starting(&self) -> bool {
        self.starting
    }

    /// One pass over the intents.
    pub async fn reconcile(&mut self, intents: &IntentsResponse) {
        self.report_outcomes().await;
        self.starting = false;
        let mut wanted: HashSet<&str> = intents.vms.iter().map(|i| i.id.as_str()).collect();
        // A VM migrating here is not ours yet, but its state being made here must stay.
        let me_in: Vec<&firefleet_api::MigrationIntent> = intents
            .migrations
            .iter()
            .filter(|m| !intents.vms.iter().any(|v| v.id == m.migration.vm))
            .collect();
        wanted.extend(me_in.iter().map(|m| m.migration.vm.as_str()));
        self.migrating_out = intents
            .migrations
            .iter()
            .filter(|m| intents.vms.iter().any(|v| v.id == m.migration.vm))
            .map(|m| m.migration.vm.as_str().to_owned())
            .collect();
        // Local VMs the control plane no longer lists for this node: deleted or moved away. An
        // address without a state directory (a launch that never got that far) counts too.
        let rt = self.runtimes.clone();
        let net = self.network.clone();
        let local = tokio::task::spawn_blocking(move || {
            rt.list().map(|mut ids| {
                ids.extend(net.allocated());
                ids.sort();
                ids.dedup();
                ids
            })
        });
        if let Ok(Ok(local_ids)) = local.await {
            for id in local_ids {
                if !wanted.contains(id.as_str()) && !self.ops.is_busy(&id) {
                    tracing::info!(vm = %id, "not in the intents for this node any more: removing");
                    self.ops.spawn(id.clone(), id, Op::Remove);
                }
            }
        }
        for intent in &intents.vms {
            self.reconcile_vm(intent).await;
        }
        let mut listed = HashSet::new();
        for snap in &intents.snapshots {
            let vm = snap.vm.as_str().to_owned();
            let key = format!("snapshot:{vm}/{}", snap.name);
            listed.insert(key.clone());
            if wanted.contains(vm.as_str()) && !self.ops.is_busy(&vm) && self.started.insert(key) {
                self.ops.spawn(
                    vm.clone(),
                    vm,
                    Op::Snapshot {
                        name: snap.name.clone(),
                    },
                );
            }
        }
        for m in &intents.migrations {
            let vm = m.migration.vm.as_str().to_owned();
            let ours = intents.vms.iter().any(|v| v.id == m.migration.vm);
            let key = format!(
                "migrate:{vm}:{}:{:?}",
                m.migration.snapshot, m.migration.phase
            );
            listed.insert(key.clone());
            if self.ops.is_busy(&vm) {
                continue;
            }
            match m.migration.phase {
                firefleet_types::MigrationPhase::Transferring
                    if ours && self.started.insert(key.clone()) =>
                {
                    self.ops
                        .spawn(vm.clone(), vm, Op::MigrateOut(Box::new(m.clone())));
                }
                firefleet_types::MigrationPhase::Restoring
                | firefleet_types::MigrationPhase::Transferring
                    if !ours
                        && (m.migration.phase == firefleet_types::MigrationPhase::Restoring)
                            == (m.migration.mode == firefleet_types::MigrationMode::Snapshot)
                        && (m.migration.mode == firefleet_types::MigrationMode::Snapshot
                            || m.migration.kernel_cmdline.is_some()) =>
                {
                    let intent = VmIntent {
                        id: m.migration.vm.clone(),
                        generation: m.migration.generation,
                        spec: m.spec.clone(),
                        deleting: false,
                        phase: VmPhase::Running,
                        restored_generation: None,
                    };
                    match launch_config(&intent, &self.image_dir, &self.runtimes) {
                        Ok(cfg) if self.started.insert(key.clone()) => {
                            self.starting = true;
                            self.ops.spawn(
                                vm.clone(),
                                vm,
                                Op::MigrateIn {
                                    migration: Box::new(m.clone()),
                                    cfg: Box::new(cfg),
                                    net: net_request(&intent),
                                },
                            );
                        }
                        Ok(_) => {}
                        Err(e) if self.started.insert(key) => {
                            let r = crate::migrate::failed(format!("destination: {e}"));
                            if let Err(e) = self.client.migration_report(&vm, &r).await {
                                tracing::warn!(%vm, error = %e, "reporting a migration failure failed");
                            }
                        }
                        Err(_) => {}
                    }
                }
                _ => {}
            }
        }
        for exec in &intents.execs {
            let key = format!("exec:{}", exec.id);
            listed.insert(key.clone());
            if self.started.insert(key.clone()) {
                self.ops.spawn(
                    key,
                    exec.vm.as_str().to_owned(),
                    Op::Exec(Box::new(exec.clone())),
                );
            }
        }
        self.started.retain(|k| listed.contains(k));
        self.local.retain(|id, _| wanted.contains(id.as_str()));
        if let Ok(mut f) = self.ops.failed.lock() {
            f.retain(|id, _| wanted.contains(id.as_str()));
        }
    }

    async fn report_outcomes(&mut self) {
        for outcome in self.ops.drain() {
            let r = match outcome {
                Outcome::Snapshot { vm, name, report } => {
                    self.client.report_snapshot(&vm, &name, &report).await
                }
                Outcome::Exec { vm, id, result } => {
                    self.client.report_exec(&vm, &id, &result).await
                }
                Outcome::Stats { vm, stats } => self.client.report_stats(&vm, &stats).await,
                Outcome::Restored { vm, generation } => {
                    tracing::info!(%vm, ?generation, "restored from snapshot");
                    if let Ok(id) = vm.parse::<VmId>() {
                        let l = self.local.entry(id).or_default();
                        l.restored = l.restored.max(Some(generation));
                        l.launched_ms = Some(now_ms());
                        l.running_ms = None;
                        l.stopped_ms = None;
                    }
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "reporting an operation's outcome failed");
            }
        }
    }

    async fn reconcile_vm(&mut self, intent: &VmIntent) {
        let id = intent.id.as_str().to_owned();
        if self.migrating_out.contains(&id) && !intent.deleting {
            // On its way elsewhere (paused for its snapshot, or live): not resumed, not
            // reported; its console still goes up until it stops here.
            self.upload_console(&intent.id).await;
            return;
        }
        if self.ops.is_busy(&id) {
            if matches!(intent.phase, VmPhase::Starting | VmPhase::Scheduled) {
                self.starting = true;
            }
            return;
        }
        let rts = self.runtimes.clone();
        let net = self.network.clone();
        let obs_id = id.clone();
        let wanted = intent.spec.runtime;
        let observed = tokio::task::spawn_blocking(move || {
            let rt = rts.for_vm(&obs_id, Some(wanted));
            (rt.observe(&obs_id), net.ip(&obs_id))
        })
        .await;
        let (obs, ip) = match observed {
            Ok((Ok(o), ip)) => (Some(o), ip),
            Ok((Err(VmmError::NotFound(_)), ip)) => (None, ip),
            Ok((Err(e), _)) => {
                tracing::warn!(vm = %id, error = %e, "observing failed");
                return;
            }
            Err(_) => return,
        };
        let launch_error = self
            .ops
            .failed
            .lock()
            .ok()
            .and_then(|f| f.get(&id).cloned());
        let local = self.local.entry(intent.id.clone()).or_default();
        let restored = local.restored.max(intent.restored_generation);
        let now = now_ms();
        let d = match launch_error {
            Some(err)
                if !intent.deleting
                    && !intent.phase.is_terminal()
                    && obs.as_ref().is_none_or(|o| !o.running) =>
            {
                local.stopped_ms.get_or_insert(now);
                Decision::failed(format!("launch failed: {err}"))
            }
            _ => decide(
                intent,
                obs.as_ref(),
                local,
                restored,
                now,
                &self.image_dir,
                &self.runtimes,
            ),
        };
        if d.phase == VmPhase::Starting
            || matches!(d.op, Some(Op::Launch { .. } | Op::Restore { .. }))
        {
            self.starting = true;
        }
        let report = VmStatusReport {
            generation: intent.generation,
            phase: d.phase,
            accel: (obs.is_some() || matches!(d.op, Some(Op::Launch { .. } | Op::Restore { .. })))
                .then(|| {
                    let kind = self.runtimes.holder(&id).unwrap_or(intent.spec.runtime);
                    self.runtimes.accel(kind)
                }),
            exit_code: d.exit_code,
            message: d.message,
            launched_ms: local.launched_ms,
            running_ms: local.running_ms,
            stopped_ms: local.stopped_ms,
            removed: intent.deleting && obs.is_none(),
            restored_generation: restored,
            ip: ip.map(|a| a.to_string()),
        };
        let settled = intent.phase.is_terminal()
            && obs.is_none()
            && !intent.deleting
            && report.phase == intent.phase;
        if local.reported.as_ref() != Some(&report) && !settled {
            tracing::debug!(vm = %id, ?report, "reporting status");
            match self.client.report_status(&id, &report).await {
                Ok(()) => local.reported = Some(report),
                Err(e) => tracing::warn!(vm = %id, error = %e, "status report refused"),
            }
        }
        // Host-side statistics as soon as the VMM runs; guest-side ones once the guest is ready.
        let running = obs.as_ref().is_some_and(|o| o.running);
        if running && local.last_stats.is_none_or(|t| t.elapsed() >= STATS_PERIOD) {
            local.last_stats = Some(Instant::now());
            self.ops.spawn(format!("stats:{id}"), id.clone(), Op::Stats);
        }
        if obs.is_some() {
            self.upload_console(&intent.id).await;
        }
        if let Some(op) = d.op {
            self.ops.spawn(id.clone(), id, op);
        }
    }

    async fn upload_console(&mut self, id: &VmId) {
        let Some(local) = self.local.get_mut(id) else {
            return;
        };
        let end = match local.console_end {
            Some(e) => e,
            None => match self.client.upload_console(id.as_str(), 0, Vec::new()).await {
                Ok(e) => e,
                Err(_) => return,
            },
        };
        local.console_end = Some(end);
        let rts = self.runtimes.clone();
        let vid = id.as_str().to_owned();
        let chunk = match tokio::task::spawn_blocking(move || {
            rts.for_vm(&vid, None).console(&vid, end, CONSOLE_CHUNK)
        })
        .await
        {
            Ok(Ok(c)) => c,
            _ => return,
        };
        if chunk.data.is_empty() {
            return;
        }
        match self
            .client
            .upload_console(id.as_str(), end, chunk.data)
            .await
        {
            Ok(e) => local.console_end = Some(e),
            Err(e) => tracing::debug!(vm = %id, error = %e, "console upload failed"),
        }
    }
}

fn net_request(intent: &VmIntent) -> NetRequest {
    NetRequest {
        tenant: intent.spec.tenant.to_string(),
        spec: intent.spec.network,
    }
}

fn launch_config(
    intent: &VmIntent,
    image_dir: &Path,
    runtimes: &Runtimes,
) -> Result<LaunchConfig, String> {
    let spec = &intent.spec;
    runtimes.get(spec.runtime)?;
    let accel = runtimes.accel(spec.runtime);
    let image = ImageStore::open(image_dir)
        .and_then(|s| s.resolve(&spec.image))
        .map_err(|e| format!("image {}: {}", spec.image, firefleet_types::error_chain(&e)))?;
    Ok(LaunchConfig {
        id: intent.id.as_str().to_owned(),
        vcpus: spec.resources.vcpus,
        memory_mib: spec.resources.memory_mib,
        image,
        cmd: spec.cmd.clone(),
        accel,
        net: None,
        disks: Vec::new(),
    })
}

/// Launch the VM here (reported Starting), or Failed if its config cannot be made.
fn launch(
    intent: &VmIntent,
    local: &mut Local,
    now: u64,
    image_dir: &Path,
    runtimes: &Runtimes,
) -> Decision {
    match launch_config(intent, image_dir, runtimes) {
        Ok(cfg) => {
            local.launched_ms.get_or_insert(now);
            Decision::with_op(
                VmPhase::Starting,
                Op::Launch {
                    cfg: Box::new(cfg),
                    net: net_request(intent),
                    disks: intent.spec.disks.clone(),
                    runtime: intent.spec.runtime,
                    template: intent
                        .spec
                        .function
                        .as_ref()
                        .and_then(|f| f.template.clone()),
                },
            )
        }
        Err(e) => Decision::failed(e),
    }
}

/// Decides the phase to report and the operation to start for one VM.
fn decide(
    intent: &VmIntent,
    obs: Option<&Observation>,
    local: &mut Local,
    restored: Option<Generation>,
    now: u64,
    image_dir: &Path,
    runtimes: &Runtimes,
) -> Decision {
    let spec = &intent.spec;
    if intent.deleting {
        return match obs {
            Some(_) => Decision::with_op(
                if intent.phase.is_terminal() {
                    intent.phase
                } else {
                    VmPhase::Stopping
                },
                Op::Remove,
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
            return match launch_config(intent, image_dir, runtimes) {
                Ok(cfg) => {
                    local.launched_ms = Some(now);
                    local.running_ms = None;
                    local.stopped_ms = None;
                    Decision::with_op(
                        VmPhase::Starting,
                        Op::Restore {
                            cfg: Box::new(cfg),
                            net: net_request(intent),
                            disks: spec.disks.clone(),
                            runtime: spec.runtime,
                            snapshot: r.snapshot.clone(),
                            generation: r.generation,
                        },
                    )
                }
                Err(e) => Decision::failed(e),
            };
        }
    }
    match obs {
        Some(o) if o.running => match spec.desired {
            DesiredState::Stopped => Decision::with_op(VmPhase::Stopping, Op::Stop),
            DesiredState::Paused if !o.paused && o.guest_ready => {
                Decision::with_op(VmPhase::Running, Op::Pause)
            }
            DesiredState::Running if o.paused => Decision::with_op(VmPhase::Paused, Op::Resume),
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
            launch(intent, local, now, image_dir, runtimes)
        }
        Some(o) => {
            local.stopped_ms.get_or_insert(now);
            if spec.desired == DesiredState::Stopped {
                Decision {
                    phase: VmPhase::Stopped,
                    message: Some("stopped".to_owned()),
                    exit_code: o.guest_exit_code,
                    op: None,
                }
            } else if o.powered_off || o.guest_exit_code.is_some() {
                let message = o
                    .guest_exit_code
                    .map(|c| format!("command exited with status {c}"));
                Decision {
                    phase: VmPhase::Stopped,
                    message,
                    exit_code: o.guest_exit_code,
                    op: None,
                }
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
                launch(intent, local, now, image_dir, runtimes)
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
