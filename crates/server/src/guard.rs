//! The guard controller: telemetry in, threats and their containment out.
//!
//! Agents post telemetry batches (`POST /v1/agent/telemetry`); the handler checks each sample's
//! VM is on the posting node, keeps the latest statistics, and hands the samples to this
//! controller through a bounded queue (a flood is dropped and counted, never buffered without
//! bound). The controller runs one [`Detector`] (bounded itself: VMs, history, pids) over them;
//! each finding becomes a [`Threat`] stored under `/threats/<finding id>-<first ms>` (an episode
//! of one condition on one VM), created once and refreshed at most every few seconds.
//!
//! A new threat gets its tenant's playbook for its severity ([`Playbooks`]): ordered actions,
//! each started when the one before it is final, each recorded in the threat (started, done,
//! failed, skipped, with a message). Actions go through the store, so the VM's agent carries
//! them out: `isolate` and `rate-limit` change the VM's network spec (done when the agent
//! reports the settings in force), `pause` its desired state (done when Paused), `snapshot`
//! requests `forensic-<threat>` (done when Ready; linked from the threat), `replace` stops the
//! VM (kept, with its snapshots) and creates a fresh VM of the same spec (`<name>-r<N>`; a
//! function's instance is instead handed over to the function's controller, which starts
//! another), `cordon` cordons its node, `quarantine-image` refuses new VMs of its image. Every
//! step is idempotent (a restarted server resumes the threats with unfinished actions from
//! the store), and an action not carried out within [`ACTION_TIMEOUT_MS`] fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use firefleet_api::{ActionState, QuarantinedImage, Threat, ThreatAction};
use firefleet_guard::{Action, Detector, DetectorConfig, Finding, Playbooks, Rules, Sample};
use firefleet_types::{DesiredState, Snapshot, SnapshotPhase, Vm, VmId, VmPhase};
use tokio::sync::{mpsc, watch};

use crate::{now_ms, repo, ApiError, AppState};

/// An action not carried out within this long fails.
pub const ACTION_TIMEOUT_MS: u64 = 120_000;
/// Samples waiting for the detector at most (beyond: dropped and counted).
const QUEUE_SAMPLES: usize = 8192;
/// An open threat's stored finding is refreshed at most this often.
const REFRESH: Duration = Duration::from_secs(5);
/// Threats kept at most; beyond, the oldest finished ones are removed.
const MAX_THREATS: usize = 10_000;
/// A forensic snapshot requested this recently for another threat on the same VM is shared.
const SHARED_SNAPSHOT_MS: u64 = 60_000;
/// Label put on a VM replaced by the guard (value: the threat).
pub const REPLACED_LABEL: &str = "firefleet.io/replaced-by-guard";
/// Label put on the fresh VM (value: the VM it replaces).
pub const REPLACES_LABEL: &str = "firefleet.io/replaces";

/// The rules and playbooks the guard runs.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// Detection rules (built-in, merged with a user file).
    pub rules: Rules,
    /// Responses per severity and tenant.
    pub playbooks: Playbooks,
}

impl GuardConfig {
    /// The built-in rules and playbooks.
    #[must_use]
    pub fn builtin() -> Self {
        Self {
            rules: Rules::builtin(),
            playbooks: Playbooks::builtin(),
        }
    }
}

/// One sample and what the controller needs to know of its VM.
pub(crate) struct Observed {
    pub sample: Sample,
    pub vm: VmId,
    pub tenant: String,
    pub name: String,
    pub node: Option<String>,
    pub image: String,
}

/// The handle the HTTP handlers and `/metrics` use.
pub(crate) struct Guard {
    tx: mpsc::Sender<Vec<Observed>>,
    rx: Mutex<Option<mpsc::Receiver<Vec<Observed>>>>,
    queued: AtomicU64,
    samples: AtomicU64,
    dropped_server: AtomicU64,
    dropped_agents: AtomicU64,
    findings: Mutex<BTreeMap<(String, String), u64>>,
    actions: Mutex<BTreeMap<(String, String), u64>>,
    open: AtomicU64,
}

impl Default for Guard {
    fn default() -> Self {
        // Bounded by samples through `queued`; the channel itself only bounds batches.
        let (tx, rx) = mpsc::channel(1024);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            queued: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            dropped_server: AtomicU64::new(0),
            dropped_agents: AtomicU64::new(0),
            findings: Mutex::default(),
            actions: Mutex::default(),
            open: AtomicU64::new(0),
        }
    }
}

impl Guard {
    /// Queues samples for the detector; drops them (counted) when the queue is full.
    pub fn submit(&self, batch: Vec<Observed>, dropped_by_agent: u64) {
        self.dropped_agents
            .fetch_add(dropped_by_agent, Ordering::Relaxed);
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        self.samples.fetch_add(n, Ordering::Relaxed);
        if self.queued.load(Ordering::Relaxed) + n > QUEUE_SAMPLES as u64 {
            self.dropped_server.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.dropped_server.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn count_action(&self, action: Action, state: ActionState) {
        if let Ok(mut m) = self.actions.lock() {
            let s = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *m.entry((action.as_str().to_owned(), s)).or_default() += 1;
        }
    }

    /// Appends the guard's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            out,
            "firefleet_telemetry_samples_total",
            "Telemetry samples received from agents.",
            self.samples.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP firefleet_telemetry_dropped_total Telemetry samples dropped, by where (agent buffer full, server queue full).\n# TYPE firefleet_telemetry_dropped_total counter\nfirefleet_telemetry_dropped_total{{where=\"agent\"}} {}\nfirefleet_telemetry_dropped_total{{where=\"server\"}} {}",
            self.dropped_agents.load(Ordering::Relaxed),
            self.dropped_server.load(Ordering::Relaxed)
        );
        out.push_str("# HELP firefleet_guard_findings_total Threats recorded, by rule and severity.\n# TYPE firefleet_guard_findings_total counter\n");
        if let Ok(m) = self.findings.lock() {
            for ((rule, sev), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "firefleet_guard_findings_total{{rule=\"{rule}\",severity=\"{sev}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP firefleet_guard_actions_total Playbook actions, by action and outcome.\n# TYPE firefleet_guard_actions_total counter\n");
        if let Ok(m) = self.actions.lock() {
            for ((action, state), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "firefleet_guard_actions_total{{action=\"{action}\",state=\"{state}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP firefleet_guard_threats_open Threats with actions still running.\n# TYPE firefleet_guard_threats_open gauge\nfirefleet_guard_threats_open {}",
            self.open.load(Ordering::Relaxed)
        );
    }
}

/// The store key of a threat.
pub(crate) fn threat_key(id: &str) -> String {
    format!("/threats/{id}")
}

/// The store key of a quarantined image.
pub(crate) fn quarantine_key(image: &str) -> String {
    format!("/quarantine/images/{image}")
}

/// Refuses an image the guard quarantined.
pub(crate) async fn check_quarantine(state: &AppState, image: &str) -> Result<(), ApiError> {
    if let Some((q, _)) = repo::get_json::<QuarantinedImage>(state, &quarantine_key(image)).await? {
        return Err(ApiError::Conflict(format!(
            "image {image} is quarantined by the guard (threat {})",
            q.threat
        )));
    }
    Ok(())
}

/// Starts the controller.
pub(crate) fn spawn(
    state: AppState,
    config: GuardConfig,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let rx = state.guard.rx.lock().ok().and_then(|mut r| r.take());
    tokio::spawn(async move {
        let Some(mut rx) = rx else {
            tracing::error!("the guard controller was started twice");
            return;
        };
        let mut c = Controller::new(state, config);
        if let Err(e) = c.load().await {
            tracing::warn!(error = %e, "loading threats failed");
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = Instant::now();
        loop {
            tokio::select! {
                Some(batch) = rx.recv() => {
                    c.state.guard.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
                    c.observe(batch).await;
                    c.advance_all().await;
                }
                _ = tick.tick() => {
                    c.advance_all().await;
                    if sweep.elapsed() >= Duration::from_secs(60) {
                        sweep = Instant::now();
                        if let Err(e) = c.sweep().await {
                            tracing::warn!(error = %e, "guard sweep failed");
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}

struct Controller {
    state: AppState,
    config: GuardConfig,
    detector: Detector,
    /// Threats with unfinished actions.
    active: BTreeSet<String>,
    /// When each open threat's finding was last written.
    written: HashMap<String, Instant>,
    /// VMs the detector tracks.
    seen: BTreeSet<String>,
}

impl Controller {
    fn new(state: AppState, config: GuardConfig) -> Self {
        let detector = Detector::new(&config.rules, DetectorConfig::default());
        Self {
            state,
            config,
            detector,
            active: BTreeSet::new(),
            written: HashMap::new(),
            seen: BTreeSet::new(),
        }
    }

    async fn load(&mut self) -> Result<(), ApiError> {
        let (threats, _) = repo::list_json::<Threat>(&self.state, "/threats/").await?;
        for t in threats {
            if t.actions.iter().any(|a| !a.state.is_final()) {
                self.active.insert(t.id);
            }
        }
        self.state
            .guard
            .open
            .store(self.active.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn observe(&mut self, batch: Vec<Observed>) {
        for o in batch {
            self.seen.insert(o.sample.vm.clone());
            for f in self.detector.observe(&o.sample) {
                if let Err(e) = self.record(&o, f).await {
                    tracing::warn!(vm = %o.vm, error = %e, "recording a finding failed");
                }
            }
        }
    }

    /// Stores a finding: a new threat (with its playbook) or a refresh of an open one.
    async fn record(&mut self, o: &Observed, f: Finding) -> Result<(), ApiError> {
        let id = format!("{}-{}", f.id, f.first_ms);
        let key = threat_key(&id);
        if let Some(at) = self.written.get(&id) {
            if at.elapsed() < REFRESH {
                return Ok(());
            }
            self.written.insert(id.clone(), Instant::now());
            loop {
                let Some((mut t, rev)) = repo::get_json::<Threat>(&self.state, &key).await? else {
                    return Ok(());
                };
                if t.finding.count == f.count && t.finding.last_ms == f.last_ms {
                    return Ok(());
                }
                t.finding = f.clone();
                let value =
                    serde_json::to_vec(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
                match self.state.store.compare_and_swap(&key, rev, value).await {
                    Ok(_) => return Ok(()),
                    Err(firefleet_store::StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.written.insert(id.clone(), Instant::now());
        if repo::get_json::<Threat>(&self.state, &key).await?.is_some() {
            // Recorded before a server restart: an open episode continues.
            return Ok(());
        }
        let playbook = self.config.playbooks.for_tenant(&o.tenant);
        let actions: Vec<ThreatAction> = playbook
            .actions(f.severity)
            .iter()
            .map(|&action| ThreatAction {
                action,
                state: ActionState::Pending,
                started_ms: None,
                finished_ms: None,
                message: None,
            })
            .collect();
        let sev = serde_json::to_value(f.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let t = Threat {
            id: id.clone(),
            tenant: o.tenant.clone(),
            vm: o.vm.clone(),
            vm_name: o.name.clone(),
            node: o.node.clone(),
            image: o.image.clone(),
            detected_ms: now_ms(),
            actions,
            contained_ms: None,
            snapshot: None,
            replacement: None,
            ack: None,
            finding: f,
        };
        let value = serde_json::to_vec(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
        if self
            .state
            .store
            .compare_and_swap(&key, 0, value)
            .await
            .is_err()
        {
            return Ok(());
        }
        tracing::warn!(
            threat = %t.id, vm = %t.vm, name = %t.vm_name, tenant = %t.tenant,
            rule = %t.finding.rule, severity = %sev,
            actions = ?t.actions.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
            "threat detected"
        );
        if let Ok(mut m) = self.state.guard.findings.lock() {
            *m.entry((t.finding.rule.clone(), sev)).or_default() += 1;
        }
        if !t.actions.is_empty() {
            self.active.insert(id);
        }
        Ok(())
    }

    /// Moves every threat with unfinished actions as far as it can go now.
    async fn advance_all(&mut self) {
        let ids: Vec<String> = self.active.iter().cloned().collect();
        for id in ids {
            match self.advance(&id).await {
                Ok(true) => {}
                Ok(false) => {
                    self.active.remove(&id);
                }
                Err(e) => tracing::warn!(threat = %id, error = %e, "advancing a threat failed"),
            }
        }
        self.state
            .guard
            .open
            .store(self.active.len() as u64, Ordering::Relaxed);
    }

    /// Advances one threat; whether it still has unfinished actions.
    async fn advance(&mut self, id: &str) -> Result<bool, ApiError> {
        let key = threat_key(id);
        let Some((mut t, rev)) = repo::get_json::<Threat>(&self.state, &key).await? else {
            return Ok(false);
        };
        let before = serde_json::to_vec(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
        while let Some(i) = t.actions.iter().position(|a| !a.state.is_final()) {
            let now = now_ms();
            let vm = repo::get_vm(&self.state, &t.vm).await?;
            let action = t.actions[i].action;
            let pending = t.actions[i].state == ActionState::Pending;
            let step = if pending {
                self.start(&mut t, vm.as_ref(), action).await?
            } else {
                let started = t.actions[i].started_ms.unwrap_or(now);
                match self.check(&t, vm.as_ref(), action).await? {
                    Step::Wait if now.saturating_sub(started) > ACTION_TIMEOUT_MS => Step::Failed(
                        format!("not carried out within {} s", ACTION_TIMEOUT_MS / 1000),
                    ),
                    s => s,
                }
            };
            let a = &mut t.actions[i];
            if pending {
                a.started_ms = Some(now);
            }
            let (state, msg) = match step {
                Step::Wait => break,
                Step::Started(msg) => {
                    a.state = ActionState::Started;
                    a.message = msg.or(a.message.take());
                    self.state.guard.count_action(action, ActionState::Started);
                    break;
                }
                Step::Done(msg) => (ActionState::Done, msg),
                Step::Failed(msg) => (ActionState::Failed, Some(msg)),
                Step::Skipped(msg) => (ActionState::Skipped, Some(msg)),
            };
            a.state = state;
            a.finished_ms = Some(now);
            a.message = msg.or(a.message.take());
            self.state.guard.count_action(action, state);
            tracing::info!(threat = %t.id, vm = %t.vm, %action, ?state, message = ?a.message, "guard action");
            let message = a.message.clone().unwrap_or_default();
            let event = firefleet_audit::Event::new(
                now,
                "guard",
                format!("guard.{action}"),
                format!("vm/{}", t.vm),
                format!("{state:?}").to_lowercase(),
            );
            let event = event.with("threat", t.id.clone()).with("message", message);
            self.state.audit.record(&self.state, event).await;
        }
        if t.contained_ms.is_none() && t.actions.iter().all(|a| a.state.is_final()) {
            t.contained_ms = t
                .actions
                .iter()
                .filter(|a| a.action != Action::Alert && a.state == ActionState::Done)
                .filter_map(|a| a.finished_ms)
                .max();
        }
        let after = serde_json::to_vec(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
        if after != before {
            match self.state.store.compare_and_swap(&key, rev, after).await {
                Ok(_) => {}
                // Acknowledged meanwhile: the next pass sees both.
                Err(firefleet_store::StoreError::Conflict { .. }) => return Ok(true),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(t.actions.iter().any(|a| !a.state.is_final()))
    }
}

/// What starting or checking an action gave.
enum Step {
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
fn forensic_name(threat: &str) -> String {
    format!("forensic-{threat}")
}

fn gone(vm: Option<&Vm>) -> Option<&Vm> {
    vm.filter(|v| !v.deleting)
}

impl Controller {
    /// Starts an action (idempotent: a repeat after a crash finds it already in force).
    async fn start(
        &self,
        t: &mut Threat,
        vm: Option<&Vm>,
        action: Action,
    ) -> Result<Step, ApiError> {
        let st = &self.state;
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
                let value =
                    serde_json::to_vec(&q).map_err(|e| ApiError::Internal(e.to_string()))?;
                // Absent only: a quarantine already in force stays as it was.
                let _ = st
                    .store
                    .compare_and_swap(&quarantine_key(&t.image), 0, value)
                    .await;
                return Ok(Step::Done(Some(format!("image {} quarantined", t.image))));
            }
            _ => {}
        }
        let Some(vm) = gone(vm) else {
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
                let rate = self.config.playbooks.for_tenant(&t.tenant).rate_limit_mbit;
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
                            Ok(()) | Err(ApiError::Conflict(_)) => {}
                            Err(e) => return Err(e),
                        }
                        name
                    }
                };
                t.snapshot = Some(name.clone());
                Ok(Step::Started(Some(format!("snapshot {name}"))))
            }
            Action::Replace => self.replace(t, vm).await,
            Action::Alert | Action::Cordon | Action::QuarantineImage => Ok(Step::Wait),
        }
    }

    /// Stops the VM (kept for forensics) and starts a fresh one of its spec.
    async fn replace(&self, t: &mut Threat, vm: &Vm) -> Result<Step, ApiError> {
        let st = &self.state;
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
                    match repo::create_vm(st, spec).await {
                        Ok(v) => v,
                        Err(e) => {
                            return Ok(Step::Failed(format!("creating the replacement: {e}")))
                        }
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
    async fn check(&self, t: &Threat, vm: Option<&Vm>, action: Action) -> Result<Step, ApiError> {
        let Some(vm) = gone(vm) else {
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
                Some(n)
                    if n.egress_mbit.is_some() && n.egress_mbit == vm.spec.network.egress_mbit =>
                {
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
                    repo::get_json::<Snapshot>(&self.state, &repo::snapshot_key(&vm.id, &name))
                        .await?;
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

    /// Forgets VMs that are gone and removes the oldest finished threats beyond the cap.
    async fn sweep(&mut self) -> Result<(), ApiError> {
        let (vms, _) = repo::list_vms(&self.state).await?;
        let live: BTreeSet<String> = vms.iter().map(|v| v.id.to_string()).collect();
        let gone: Vec<String> = self.seen.difference(&live).cloned().collect();
        for vm in gone {
            self.detector.forget(&vm);
            self.seen.remove(&vm);
        }
        self.written
            .retain(|_, at| at.elapsed() < Duration::from_secs(3600));
        let (mut threats, _) = repo::list_json::<Threat>(&self.state, "/threats/").await?;
        if threats.len() > MAX_THREATS {
            threats.sort_by_key(|t| t.detected_ms);
            let excess = threats.len() - MAX_THREATS;
            for t in threats
                .iter()
                .filter(|t| t.actions.iter().all(|a| a.state.is_final()))
                .take(excess)
            {
                let _ = self.state.store.delete(&threat_key(&t.id), None).await;
            }
        }
        Ok(())
    }
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

    fn observed(n: usize) -> Vec<Observed> {
        (0..n)
            .map(|i| Observed {
                sample: Sample {
                    vm: "vm".into(),
                    at_ms: i as u64,
                    group: None,
                    host: firefleet_guard::HostSample::default(),
                    guest: None,
                },
                vm: "0c9b3ad5-8a4f-4c1e-9d8e-3e5b6f7a8b9c".parse().unwrap(),
                tenant: "t".into(),
                name: "n".into(),
                node: None,
                image: String::new(),
            })
            .collect()
    }

    #[test]
    fn a_flood_of_telemetry_is_dropped_and_counted_not_queued() {
        let g = Guard::default();
        // Nobody reads the queue: it fills to its bound, then batches are dropped.
        for _ in 0..(QUEUE_SAMPLES / 100 + 10) {
            g.submit(observed(100), 0);
        }
        g.submit(Vec::new(), 7);
        let queued = g.queued.load(Ordering::Relaxed);
        let dropped = g.dropped_server.load(Ordering::Relaxed);
        assert!(queued <= QUEUE_SAMPLES as u64, "{queued}");
        assert_eq!(queued + dropped, ((QUEUE_SAMPLES / 100 + 10) * 100) as u64);
        assert!(dropped >= 1000);
        let mut text = String::new();
        g.render(&mut text);
        assert!(text.contains(&format!(
            "firefleet_telemetry_dropped_total{{where=\"server\"}} {dropped}"
        )));
        assert!(text.contains("firefleet_telemetry_dropped_total{where=\"agent\"} 7"));
    }

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
