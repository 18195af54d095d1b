//! Threats: the guard's domain. Agents post telemetry batches (`POST /v1/agent/telemetry`);
//! the handler checks each sample's VM is on the posting node, keeps the latest statistics,
//! and hands the samples to the guard controller through a bounded queue ([`Guard`]: a flood
//! is dropped and counted, never buffered without bound). The controller
//! (`controllers/guard.rs`) runs one detector (bounded itself: VMs, history, pids) over them;
//! each finding becomes a [`Threat`] stored under `/threats/<finding id>-<first ms>` (an
//! episode of one condition on one VM), created once and refreshed at most every few seconds.
//!
//! A new threat gets its tenant's playbook for its severity ([`Playbooks`]): ordered actions
//! ([`actions`]), each started when the one before it is final, each recorded in the threat
//! (started, done, failed, skipped, with a message). Actions go through the store, so the VM's
//! agent carries them out: `isolate` and `rate-limit` change the VM's network spec (done when
//! the agent reports the settings in force), `pause` its desired state (done when Paused),
//! `snapshot` requests `forensic-<threat>` (done when Ready; linked from the threat), `replace`
//! stops the VM (kept, with its snapshots) and creates a fresh VM of the same spec
//! (`<name>-r<N>`; a function's instance is instead handed over to the function's controller,
//! which starts another), `cordon` cordons its node, `quarantine-image` refuses new VMs of its
//! image ([`check_quarantine`]). Every step is idempotent (a restarted server resumes the
//! threats with unfinished actions from the store), and an action not carried out within
//! [`ACTION_TIMEOUT_MS`] fails.

pub(crate) mod actions;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use firefleet_api::{ActionState, QuarantinedImage, TelemetryBatch, Threat, ThreatAck};
use firefleet_guard::{Action, Playbooks, Rules, Sample};
use firefleet_types::{NodeId, Vm, VmId};
use tokio::sync::mpsc;

use crate::{now_ms, repo, ApiError, AppState};

/// An action not carried out within this long fails.
pub const ACTION_TIMEOUT_MS: u64 = 120_000;
/// Samples waiting for the detector at most (beyond: dropped and counted).
const QUEUE_SAMPLES: usize = 8192;
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
    /// Held by the guard controller while it runs (on the leader); released when it stops,
    /// so that the next leadership's controller takes it again.
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<Observed>>>>,
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
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
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

    /// Takes the queue's receiving end for as long as the guard holds it (one controller at a
    /// time); `None` while another holds it.
    pub fn take_queue(
        &self,
    ) -> Option<tokio::sync::OwnedMutexGuard<mpsc::Receiver<Vec<Observed>>>> {
        Arc::clone(&self.rx).try_lock_owned().ok()
    }

    /// The controller took `n` samples off the queue.
    pub fn dequeued(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// How many threats have actions still running.
    pub fn set_open(&self, n: u64) {
        self.open.store(n, Ordering::Relaxed);
    }

    /// Counts a threat recorded for `rule` at `severity`.
    pub fn count_finding(&self, rule: String, severity: String) {
        if let Ok(mut m) = self.findings.lock() {
            *m.entry((rule, severity)).or_default() += 1;
        }
    }

    /// Counts an action reaching `state`.
    pub fn count_action(&self, action: Action, state: ActionState) {
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

/// Refuses an image the guard quarantined.
pub async fn check_quarantine(state: &AppState, image: &str) -> Result<(), ApiError> {
    if let Some(q) = repo::get_quarantine(state, image).await? {
        return Err(ApiError::Conflict(format!(
            "image {image} is quarantined by the guard (threat {})",
            q.threat
        )));
    }
    Ok(())
}

/// Takes a telemetry batch from node `node`: the latest statistics of each VM are kept, and
/// the samples go to the guard's queue. Samples of VMs that are not on the node are refused as
/// a whole batch (`Forbidden`), naming the VM; those of VMs deleted or moved on since are
/// dropped as stale.
pub async fn ingest(
    state: &AppState,
    node: &NodeId,
    batch: TelemetryBatch,
) -> Result<(), ApiError> {
    let mut vms: HashMap<VmId, Vm> = HashMap::new();
    for s in &batch.samples {
        if vms.contains_key(&s.vm) {
            continue;
        }
        let vm = repo::get_vm(state, &s.vm).await?;
        match vm {
            Some(vm) if vm.status.node.as_ref() == Some(node) => {
                vms.insert(vm.id.clone(), vm);
            }
            // Deleted or moved on since the agent sampled it: the sample is stale, not an
            // attack on another node's VM.
            Some(vm) if vm.status.node.is_some() && vm.deleting => {}
            None => {}
            Some(_) => {
                return Err(ApiError::Forbidden(format!(
                    "vm {} is not placed on node {node}",
                    s.vm
                )))
            }
        }
    }
    let mut observed = Vec::with_capacity(batch.samples.len());
    for s in batch.samples {
        let Some(vm) = vms.get(&s.vm) else { continue };
        let group = match &vm.spec.function {
            Some(f) => format!("fn:{}/{}", vm.spec.tenant, f.function),
            None => format!("image:{}", vm.spec.image),
        };
        let net = s.stats.host.net.clone().unwrap_or_default();
        let sample = firefleet_guard::Sample {
            vm: vm.id.to_string(),
            at_ms: s.stats.collected_ms,
            group: Some(group),
            host: firefleet_guard::HostSample {
                cpu_time_ms: s.stats.host.cpu_time_ms,
                rss_bytes: s.stats.host.rss_bytes,
                // The host's view of the TAP: what it receives is what the guest sends.
                tx_bytes: net.rx_bytes,
                rx_bytes: net.tx_bytes,
                tx_packets: net.rx_packets,
                rx_packets: net.tx_packets,
            },
            guest: s.guest,
        };
        if let Ok(mut m) = state.stats.lock() {
            m.insert(vm.id.clone(), s.stats);
        }
        observed.push(Observed {
            sample,
            vm: vm.id.clone(),
            tenant: vm.spec.tenant.to_string(),
            name: vm.spec.name.clone(),
            node: vm.status.node.as_ref().map(ToString::to_string),
            image: vm.spec.image.clone(),
        });
    }
    state.guard.submit(observed, batch.dropped);
    Ok(())
}

/// Whether `viewer` (a tenant; None: an admin) sees threat `t`.
fn visible(viewer: Option<&str>, t: &Threat) -> bool {
    viewer.is_none_or(|tenant| tenant == t.tenant)
}

/// The threats `viewer` sees (a tenant's own; an admin's, None: all), newest first.
pub async fn list(state: &AppState, viewer: Option<&str>) -> Result<Vec<Threat>, ApiError> {
    let mut threats = repo::list_threats(state).await?;
    threats.retain(|t| visible(viewer, t));
    threats.sort_by(|a, b| b.detected_ms.cmp(&a.detected_ms).then(a.id.cmp(&b.id)));
    Ok(threats)
}

/// Threat `id`, if `viewer` sees it (`BadRequest` for what is not a threat id).
pub async fn get(state: &AppState, viewer: Option<&str>, id: &str) -> Result<Threat, ApiError> {
    Ok(find(state, viewer, id).await?.0)
}

async fn find(state: &AppState, viewer: Option<&str>, id: &str) -> Result<(Threat, u64), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::BadRequest {
            field: Some("threat".into()),
            message: format!("{id:?} is not a threat id"),
        });
    }
    match repo::get_threat(state, id).await? {
        Some((t, rev)) if visible(viewer, &t) => Ok((t, rev)),
        _ => Err(ApiError::not_found("threat", id)),
    }
}

/// Acknowledges threat `id` (by `by`, with `note`); acknowledging again keeps the first
/// acknowledgement. Containment stays as it is.
pub async fn ack(
    state: &AppState,
    viewer: Option<&str>,
    id: &str,
    by: &str,
    note: Option<String>,
) -> Result<Threat, ApiError> {
    loop {
        let (mut t, rev) = find(state, viewer, id).await?;
        if t.ack.is_some() {
            return Ok(t);
        }
        t.ack = Some(ThreatAck {
            by: by.to_owned(),
            at_ms: now_ms(),
            note: note.clone(),
        });
        if repo::update_threat(state, &t, rev).await? {
            return Ok(t);
        }
    }
}

/// The images the guard quarantined.
pub async fn quarantined(state: &AppState) -> Result<Vec<QuarantinedImage>, ApiError> {
    Ok(repo::list_quarantined(state).await?)
}

/// Lifts an image's quarantine (by `by`): new VMs may use it again.
pub async fn release(state: &AppState, image: &str, by: &str) -> Result<(), ApiError> {
    if !repo::release_image(state, image).await? {
        return Err(ApiError::not_found("quarantined image", image));
    }
    tracing::info!(%image, %by, "image quarantine lifted");
    Ok(())
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
}
