//! The guard controller: telemetry in, threats and their containment out (the domain, the
//! telemetry queue and the actions are [`crate::app::threats`]'s).
//!
//! It takes the samples the telemetry handler queued, runs one [`Detector`] over them, stores
//! each finding as a threat with its tenant's playbook, and advances every threat with
//! unfinished actions, each when the one before it is final. Every step is idempotent: a
//! restarted server resumes the threats with unfinished actions from the store.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use firefleet_api::{ActionState, Threat, ThreatAction};
use firefleet_guard::{Action, Detector, DetectorConfig, Finding};
use tokio::sync::watch;

use crate::app::threats::{
    actions::{self, Step},
    GuardConfig, Observed, ACTION_TIMEOUT_MS,
};
use crate::{now_ms, repo, ApiError, AppState};

/// An open threat's stored finding is refreshed at most this often.
const REFRESH: Duration = Duration::from_secs(5);
/// Threats kept at most; beyond, the oldest finished ones are removed.
const MAX_THREATS: usize = 10_000;

/// Starts the controller.
pub(crate) fn spawn(
    state: AppState,
    config: GuardConfig,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let rx = state.guard.take_queue();
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
                    c.state.guard.dequeued(batch.len() as u64);
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
        for t in repo::list_threats(&self.state).await? {
            if t.actions.iter().any(|a| !a.state.is_final()) {
                self.active.insert(t.id);
            }
        }
        self.state.guard.set_open(self.active.len() as u64);
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
        if let Some(at) = self.written.get(&id) {
            if at.elapsed() < REFRESH {
                return Ok(());
            }
            self.written.insert(id.clone(), Instant::now());
            loop {
                let Some((mut t, rev)) = repo::get_threat(&self.state, &id).await? else {
                    return Ok(());
                };
                if t.finding.count == f.count && t.finding.last_ms == f.last_ms {
                    return Ok(());
                }
                t.finding = f.clone();
                if repo::update_threat(&self.state, &t, rev).await? {
                    return Ok(());
                }
            }
        }
        self.written.insert(id.clone(), Instant::now());
        if repo::get_threat(&self.state, &id).await?.is_some() {
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
        if !repo::create_threat(&self.state, &t).await? {
            return Ok(());
        }
        tracing::warn!(
            threat = %t.id, vm = %t.vm, name = %t.vm_name, tenant = %t.tenant,
            rule = %t.finding.rule, severity = %sev,
            actions = ?t.actions.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
            "threat detected"
        );
        self.state.guard.count_finding(t.finding.rule.clone(), sev);
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
        self.state.guard.set_open(self.active.len() as u64);
    }

    /// Advances one threat; whether it still has unfinished actions.
    async fn advance(&mut self, id: &str) -> Result<bool, ApiError> {
        let Some((mut t, rev)) = repo::get_threat(&self.state, id).await? else {
            return Ok(false);
        };
        let before = serde_json::to_vec(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
        while let Some(i) = t.actions.iter().position(|a| !a.state.is_final()) {
            let now = now_ms();
            let vm = repo::get_vm(&self.state, &t.vm).await?;
            let action = t.actions[i].action;
            let pending = t.actions[i].state == ActionState::Pending;
            let step = if pending {
                actions::start(
                    &self.state,
                    &self.config.playbooks,
                    &mut t,
                    vm.as_ref(),
                    action,
                )
                .await?
            } else {
                let started = t.actions[i].started_ms.unwrap_or(now);
                match actions::check(&self.state, &t, vm.as_ref(), action).await? {
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
        // A write that lost to an acknowledgement meanwhile: the next pass sees both.
        if after != before && !repo::update_threat(&self.state, &t, rev).await? {
            return Ok(true);
        }
        Ok(t.actions.iter().any(|a| !a.state.is_final()))
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
        let mut threats = repo::list_threats(&self.state).await?;
        if threats.len() > MAX_THREATS {
            threats.sort_by_key(|t| t.detected_ms);
            let excess = threats.len() - MAX_THREATS;
            for t in threats
                .iter()
                .filter(|t| t.actions.iter().all(|a| a.state.is_final()))
                .take(excess)
            {
                let _ = repo::delete_threat(&self.state, &t.id).await;
            }
        }
        Ok(())
    }
}
