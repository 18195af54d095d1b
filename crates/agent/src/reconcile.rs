//! Reconciling the host to the intents: the core of the agent.
//!
//! For each VM placed on this node, gather what the control plane wants (desired state,
//! restore requests, deletion), what the runtime observes (state directory, process, guest
//! readiness, pause, exit status) and what a failed launch left, let the pure
//! [`decide`](crate::decide::decide) choose the phase to report and the action, hand the action
//! to the executor ([`Ops`], at most one life-cycle operation per VM at a time) and report the
//! phase. Snapshots, execs and migrations requested for this node's VMs are handed to the
//! executor too, statistics are collected and consoles uploaded. A VM with networking is
//! attached to the node network just before its VMM starts and detached once its VMM is
//! removed; its address is reported. Local VMs (state directories, and addresses) that the
//! intents no longer list are removed.
//!
//! Imports `decide`, `ops`, `network`, `runtimes`, `telemetry`; only the crate root imports it.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use firefleet_api::{IntentsResponse, VmIntent, VmStatusReport};
use firefleet_client::Client;
use firefleet_types::{VmId, VmPhase};
use firefleet_vmm::VmmError;

use crate::{
    decide::{decide, migration_side, Action, Clock, Local, MigrationSide},
    network::Network,
    ops::{now_ms, Op, Ops, Outcome},
    runtimes::Runtimes,
};

/// Largest console chunk uploaded at once.
const CONSOLE_CHUNK: usize = 64 * 1024;
/// In a VM's state directory: [`Local::console_base`] since its last restart, so that a
/// restarted agent goes on uploading the fresh run's console where it should.
const CONSOLE_BASE_FILE: &str = "console-base";
/// How often telemetry is collected per running VM unless the agent is told otherwise.
pub const TELEMETRY_INTERVAL: Duration = Duration::from_secs(5);

pub struct Reconciler {
    client: Client,
    runtimes: Arc<Runtimes>,
    network: Arc<Network>,
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
            image_dir,
            Arc::new(client.clone()),
        );
        Self {
            client,
            runtimes,
            network,
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
            let op = match migration_side(&m.migration, ours) {
                Some(MigrationSide::Source) => Op::MigrateOut(Box::new(m.clone())),
                // Its config (backend, image) is made by the operation, which reports a failure
                // to the control plane.
                Some(MigrationSide::Destination) => Op::MigrateIn(Box::new(m.clone())),
                None => continue,
            };
            if self.started.insert(key) {
                if matches!(op, Op::MigrateIn(_)) {
                    self.starting = true;
                }
                self.ops.spawn(vm.clone(), vm, op);
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
                Outcome::Refused {
                    vm,
                    generation,
                    message,
                } => {
                    if let Ok(id) = vm.parse::<VmId>() {
                        self.local.entry(id).or_default().restore_refused =
                            Some((generation, message));
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
        let launch_error = self.ops.launch_error(&id);
        let local = self.local.entry(intent.id.clone()).or_default();
        let clock = Clock {
            now_ms: now_ms(),
            now: Instant::now(),
        };
        let d = decide(
            intent,
            obs.as_ref(),
            launch_error.as_deref(),
            local,
            clock,
            self.heartbeat_timeout,
        );
        let restart = d.restart;
        if restart {
            // The control plane restarted it: the dead run's launch error is history.
            if let Ok(mut f) = self.ops.failed.lock() {
                f.remove(&id);
            }
            tracing::info!(vm = %id, restarts = intent.restarts, "restarting: launching afresh");
        }
        if d.action == Some(Action::Kill) {
            tracing::warn!(vm = %id, "{}", d.message.as_deref().unwrap_or_default());
        }
        // (A restore tried again while the VM is reported failed is not a start.)
        let launching = matches!(d.action, Some(Action::Launch | Action::Restore { .. }))
            && d.phase != VmPhase::Failed;
        if d.phase == VmPhase::Starting || launching {
            self.starting = true;
        }
        let report = VmStatusReport {
            generation: intent.generation,
            phase: d.phase,
            accel: (obs.is_some() || launching).then(|| {
                let kind = self.runtimes.holder(&id).unwrap_or(intent.spec.runtime);
                self.runtimes.accel(kind)
            }),
            exit_code: d.exit_code,
            message: d.message,
            launched_ms: local.launched_ms,
            running_ms: local.running_ms,
            stopped_ms: local.stopped_ms,
            removed: intent.deleting && obs.is_none(),
            restored_generation: d.restored,
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
            && d.action.is_none()
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
        if let Some(action) = d.action {
            let op = Op::Decided(action, Box::new(intent.clone()));
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
