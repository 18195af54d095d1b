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
/// In a VM's state directory: [`Local::console_base`] since its last restart, so that a
/// restarted agent goes on uploading the fresh run's console where it should.
const CONSOLE_BASE_FILE: &str = "console-base";
/// How often telemetry is collected per running VM unless the agent is told otherwise.
pub const TELEMETRY_INTERVAL: Duration = Duration::from_secs(5);

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
    /// The network settings applied to the running VM (None: not yet, since the agent started).
    applied_net: Option<firefleet_types::NetworkSpec>,
    /// The control plane's restart count (`VmIntent::restarts`) of the run this agent launched
    /// or adopted (None: not known since the agent started).
    restarts_done: Option<u32>,
    /// Added to the console file's offsets to give the node's console stream offsets: a
    /// restart's fresh console file continues the stream where the dead run's ended.
    console_base: u64,
    /// When the guest last answered over its channel (or was first seen ready).
    guest_seen: Option<Instant>,
    /// The last statistics probe of a ready guest got no answer.
    guest_missed: bool,
    /// Why this agent killed the VM because its guest stopped answering.
    heartbeat_lost: Option<String>,
}

impl Local {
    /// Forgets what the dead run left: a restart launches the VM afresh.
    fn restart(&mut self, restarts: u32) {
        self.restarts_done = Some(restarts);
        self.launched_ms = None;
        self.running_ms = None;
        self.stopped_ms = None;
        self.guest_seen = None;
        self.guest_missed = false;
        self.heartbeat_lost = None;
    }
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
    /// A running VM whose ready guest has not answered for this long is killed and reported
    /// Failed, to be replaced (zero: never).
    heartbeat_timeout: Duration,
    /// How often telemetry is collected per running VM.
    telemetry_interval: Duration,
    /// Where collected telemetry waits for upload.
    telemetry: Arc<crate::telemetry::TelemetryBuffer>,
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
            heartbeat_timeout: Duration::ZERO,
            telemetry_interval: TELEMETRY_INTERVAL,
            telemetry: Arc::new(crate::telemetry::TelemetryBuffer::new(1024)),
        }
    }

    /// Collects telemetry every `interval` per running VM into `buffer`.
    #[must_use]
    pub fn with_telemetry(
        mut self,
        interval: Duration,
        buffer: Arc<crate::telemetry::TelemetryBuffer>,
    ) -> Self {
        self.telemetry_interval = interval;
        self.telemetry = buffer;
        self
    }

    /// Kills and replaces VMs whose guest has not answered for `timeout` (zero: never).
    #[must_use]
    pub fn with_heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
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
                        restarts: 0,
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
                Outcome::Stats { vm, stats, guest } => {
                    self.heard_from_guest(&vm, stats.guest.is_some());
                    match vm.parse::<VmId>() {
                        Ok(vm) => {
                            self.telemetry
                                .push(firefleet_api::TelemetrySample { vm, stats, guest })
                        }
                        Err(e) => {
                            tracing::warn!(%vm, error = %e, "telemetry of a VM with a bad id")
                        }
                    }
                    Ok(())
                }
                Outcome::Network { vm, spec, result } => {
                    if let (Ok(id), Ok(())) = (vm.parse::<VmId>(), &result) {
                        self.local.entry(id).or_default().applied_net = Some(spec);
                    }
                    Ok(())
                }
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

    /// Records whether a VM's guest answered a statistics probe (its heartbeat).
    fn heard_from_guest(&mut self, vm: &str, answered: bool) {
        let Some(l) = vm
            .parse::<VmId>()
            .ok()
            .and_then(|id| self.local.get_mut(&id))
        else {
            return;
        };
        if answered {
            l.guest_seen = Some(Instant::now());
        }
        l.guest_missed = !answered;
    }

    async fn reconcile_vm(&mut self, intent: &VmIntent) {
        let id = intent.id.as_str().to_owned();
        if self.migrating_out.contains(&id) || self.ops.is_busy(&id) {
            // Paused or held by an operation for a while: its heartbeat is timed afresh after.
            if let Some(l) = self.local.get_mut(&intent.id) {
                l.guest_seen = None;
            }
        }
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
        let local = self.local.entry(intent.id.clone()).or_default();
        let restart = restart_due(intent, obs.as_ref(), local);
        if restart {
            // The control plane restarted it: the dead run's launch error is history.
            if let Ok(mut f) = self.ops.failed.lock() {
                f.remove(&id);
            }
        } else if obs.as_ref().is_some_and(|o| o.running) {
            // Running here: this is the run the control plane counts.
            local.restarts_done = Some(local.restarts_done.unwrap_or(0).max(intent.restarts));
        }
        let launch_error = self
            .ops
            .failed
            .lock()
            .ok()
            .and_then(|f| f.get(&id).cloned());
        let restored = local.restored.max(intent.restored_generation);
        let now = now_ms();
        let heartbeat = heartbeat_lost(intent, obs.as_ref(), local, self.heartbeat_timeout);
        let d = match launch_error {
            Some(err)
                if !intent.deleting
                    && !intent.phase.is_terminal()
                    && obs.as_ref().is_none_or(|o| !o.running) =>
            {
                local.stopped_ms.get_or_insert(now);
                Decision::failed(format!("launch failed: {err}"))
            }
            _ if restart => {
                tracing::info!(vm = %id, restarts = intent.restarts, "restarting: launching afresh");
                local.restart(intent.restarts);
                launch(intent, local, now, &self.image_dir, &self.runtimes)
            }
            _ if heartbeat.is_some() => {
                let why = heartbeat.unwrap_or_default();
                tracing::warn!(vm = %id, "{why}");
                local.heartbeat_lost = Some(why.clone());
                local.stopped_ms = Some(now);
                Decision {
                    phase: VmPhase::Failed,
                    message: Some(why),
                    exit_code: None,
                    op: Some(Op::Kill),
                }
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
            // About the run this intent counts (a report made from an intent older than a
            // restart carries the older count, and the server refuses it).
            restarts: intent.restarts,
            heartbeat_lost: local.heartbeat_lost.is_some() && d.phase == VmPhase::Failed,
            network: local.applied_net,
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
        if running
            && local
                .last_stats
                .is_none_or(|t| t.elapsed() >= self.telemetry_interval)
        {
            local.last_stats = Some(Instant::now());
            self.ops.spawn(format!("stats:{id}"), id.clone(), Op::Stats);
        }
        // Network settings changed on a running VM (the guard isolated or rate-limited it).
        if running
            && d.op.is_none()
            && local.applied_net.as_ref() != Some(&intent.spec.network)
            && !self.ops.is_busy(&id)
        {
            self.ops
                .spawn(id.clone(), id.clone(), Op::Network(intent.spec.network));
        }
        if obs.is_some() || restart {
            self.upload_console(&intent.id).await;
        }
        if restart {
            // The fresh run's console file starts empty: it continues the node's stream where
            // the dead run's (uploaded just above) ended.
            if let Some(l) = self.local.get_mut(&intent.id) {
                l.console_base = l.console_end.unwrap_or(l.console_base);
                let path = self.runtimes.vm_dir(&id).join(CONSOLE_BASE_FILE);
                let text = l.console_base.to_string();
                let written =
                    tokio::task::spawn_blocking(move || std::fs::write(&path, text)).await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::debug!(vm = %id, "recording the console base failed");
                }
            }
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
                Ok(e) => {
                    // Restarted since the VM was: its console file starts further on.
                    let path = self.runtimes.vm_dir(id.as_str()).join(CONSOLE_BASE_FILE);
                    let base = tokio::task::spawn_blocking(move || {
                        std::fs::read_to_string(path)
                            .ok()
                            .and_then(|t| t.trim().parse::<u64>().ok())
                    })
                    .await;
                    local.console_base = base.ok().flatten().unwrap_or(0);
                    e
                }
                Err(_) => return,
            },
        };
        local.console_end = Some(end);
        let rts = self.runtimes.clone();
        let vid = id.as_str().to_owned();
        let from = end.saturating_sub(local.console_base);
        let chunk = match tokio::task::spawn_blocking(move || {
            rts.for_vm(&vid, None).console(&vid, from, CONSOLE_CHUNK)
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
            if let (Some(why), false) =
                (&local.heartbeat_lost, spec.desired == DesiredState::Stopped)
            {
                return Decision::failed(why.clone());
            }
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

/// Whether the control plane restarted the VM and this agent has not launched that run yet: it
/// does not run here, and the intent's restart count is past the run this agent carried out.
/// An agent that restarted since (and so forgot) goes by the recorded phase: a restart puts the
/// VM back to Scheduled, and Starting means that run was launched but never became ready, so it
/// is launched once more; a VM at rest or running is the counted run.
fn restart_due(intent: &VmIntent, obs: Option<&Observation>, local: &Local) -> bool {
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
/// older than `timeout` with the last probe unanswered. Times the heartbeat from when the guest
/// is first seen ready.
fn heartbeat_lost(
    intent: &VmIntent,
    obs: Option<&Observation>,
    local: &mut Local,
    timeout: Duration,
) -> Option<String> {
    let watched = obs.is_some_and(|o| o.running && o.guest_ready && !o.paused)
        && intent.phase == VmPhase::Running
        && intent.spec.desired == DesiredState::Running
        && !intent.deleting;
    if !watched || timeout.is_zero() {
        local.guest_seen = None;
        return None;
    }
    let seen = *local.guest_seen.get_or_insert_with(Instant::now);
    let silent = seen.elapsed();
    (local.guest_missed && silent > timeout).then(|| {
        format!(
            "the guest stopped answering for {} s (no heartbeat): replaced",
            silent.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(phase: VmPhase, restarts: u32) -> VmIntent {
        let spec: firefleet_types::VmSpec = serde_json::from_value(serde_json::json!({
            "name": "web",
            "tenant": "acme",
            "image": format!("sha256:{}", "a".repeat(64)),
            "resources": {"vcpus": 1, "memory_mib": 128},
            "desired": "running",
        }))
        .expect("spec");
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
        assert_eq!(heartbeat_lost(&i, Some(&running), &mut local, t), None);
        assert!(local.guest_seen.is_some());
        // Silent for longer than the timeout, with the last probe unanswered: lost.
        local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
        local.guest_missed = true;
        let why = heartbeat_lost(&i, Some(&running), &mut local, t).expect("lost");
        assert!(
            why.starts_with("the guest stopped answering for 31 s (no heartbeat)"),
            "{why}"
        );
        // The last probe was answered: not lost (probes may just be late).
        local.guest_missed = false;
        assert_eq!(heartbeat_lost(&i, Some(&running), &mut local, t), None);
        local.guest_missed = true;
        // Disabled, paused, starting, not ready: exempt, and the clock starts again after.
        assert_eq!(
            heartbeat_lost(&i, Some(&running), &mut local, Duration::ZERO),
            None
        );
        assert!(local.guest_seen.is_none());
        local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
        let mut paused = obs(true, true);
        paused.paused = true;
        assert_eq!(heartbeat_lost(&i, Some(&paused), &mut local, t), None);
        assert!(local.guest_seen.is_none());
        local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
        assert_eq!(
            heartbeat_lost(&intent(VmPhase::Starting, 0), Some(&running), &mut local, t),
            None
        );
        local.guest_seen = Instant::now().checked_sub(Duration::from_secs(31));
        assert_eq!(
            heartbeat_lost(&i, Some(&obs(true, false)), &mut local, t),
            None
        );
    }
}
