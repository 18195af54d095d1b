//! The stateful detector: per-VM history, rule evaluation, statistics and de-duplication.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::eval::{self, Ctx, Evidence, Snap};
use crate::model::{GuestSample, HostSample, Sample};
use crate::rules::{Rule, Rules, Severity};
use crate::stats;
use crate::{DetectorKind, Finding};

/// Limits and thresholds of a [`Detector`]. The defaults suit samples every 5-15 s.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Most VMs tracked; a sample for a new VM beyond this evicts the VM seen least recently.
    pub max_vms: usize,
    /// Most samples of history kept per VM (also cut to the longest rule window).
    pub max_history: usize,
    /// Most processes whose CPU counters are remembered per VM.
    pub max_pids: usize,
    /// Most outbound connections remembered per sample (for the windowed rules).
    pub max_outbound_per_sample: usize,
    /// An open finding not seen again for this long is closed; a later match starts a new one.
    pub resolve_after_ms: u64,
    /// Samples in a VM's own baseline (median/MAD).
    pub baseline_window: usize,
    /// Samples needed before the baseline judges.
    pub baseline_warmup: usize,
    /// Robust z-score above which a value is a baseline anomaly.
    pub baseline_z: f64,
    /// Fresh peers needed before the peer comparison judges.
    pub peer_min: usize,
    /// Most peers a VM is compared with (the first by VM name).
    pub peer_max: usize,
    /// Robust z-score above which a VM is an outlier among its peers.
    pub peer_z: f64,
    /// A peer's value older than this is not used.
    pub peer_stale_ms: u64,
    /// Samples in the reference window of the change-point test.
    pub change_reference: usize,
    /// Samples in the recent window of the change-point test.
    pub change_recent: usize,
    /// Shift, in robust standard deviations, that is a change point.
    pub change_z: f64,
    /// Spread floor for CPU series, in CPUs.
    pub cpu_floor: f64,
    /// Spread floor for egress series, in bytes per second.
    pub egress_floor: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            max_vms: 10_000,
            max_history: 720,
            max_pids: 4096,
            max_outbound_per_sample: 256,
            resolve_after_ms: 300_000,
            baseline_window: 120,
            baseline_warmup: 30,
            baseline_z: 6.0,
            peer_min: 3,
            peer_max: 256,
            peer_z: 6.0,
            peer_stale_ms: 120_000,
            change_reference: 30,
            change_recent: 10,
            change_z: 6.0,
            cpu_floor: 0.05,
            egress_floor: 65_536.0,
        }
    }
}

/// The two series the statistics watch.
const SERIES: [&str; 2] = ["cpu", "egress"];

#[derive(Debug, Default)]
struct VmState {
    last_at_ms: Option<u64>,
    group: Option<String>,
    host: Option<(u64, HostSample)>,
    /// pid -> (comm, cpu_ticks) at `guest_at_ms`.
    pids: BTreeMap<u32, (String, u64)>,
    guest_at_ms: Option<u64>,
    history: VecDeque<Snap>,
    /// [cpu, egress] rates, newest last.
    series: [VecDeque<f64>; 2],
    /// Rule id -> when it started to hold.
    holding_since: BTreeMap<String, u64>,
    /// (rule, key) -> open finding.
    open: BTreeMap<(String, String), Finding>,
}

/// A VM's latest rates, as its peers see them.
#[derive(Debug, Clone, Copy)]
struct PeerPoint {
    at_ms: u64,
    values: [Option<f64>; 2],
}

/// Turns samples into findings. Deterministic: the same samples in the same order give the same
/// findings; time is each sample's `at_ms`.
///
/// Memory is bounded: at most `max_vms` VMs, each with at most `max_history` snapshots (each
/// with at most `max_outbound_per_sample` connections), `max_pids` process counters, two
/// series of at most `max(baseline_window, change_reference + change_recent)` values, and one
/// open finding per rule and statistical key.
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    config: DetectorConfig,
    history_ms: u64,
    vms: BTreeMap<String, VmState>,
    /// (last sample time, vm): the eviction order.
    recency: BTreeSet<(u64, String)>,
    groups: BTreeMap<String, BTreeMap<String, PeerPoint>>,
}

impl Detector {
    /// A detector for the enabled `rules`.
    #[must_use]
    pub fn new(rules: &Rules, config: DetectorConfig) -> Detector {
        Detector {
            rules: rules
                .rules()
                .iter()
                .filter(|r| r.enabled)
                .cloned()
                .collect(),
            history_ms: rules.max_window_ms(),
            config,
            vms: BTreeMap::new(),
            recency: BTreeSet::new(),
            groups: BTreeMap::new(),
        }
    }

    /// Number of VMs tracked (at most `max_vms`).
    #[must_use]
    pub fn vm_count(&self) -> usize {
        self.vms.len()
    }

    /// Open findings of a VM.
    pub fn open_findings(&self, vm: &str) -> impl Iterator<Item = &Finding> {
        self.vms.get(vm).into_iter().flat_map(|s| s.open.values())
    }

    /// Forgets a VM (it was deleted).
    pub fn forget(&mut self, vm: &str) {
        if let Some(state) = self.vms.remove(vm) {
            if let Some(at) = state.last_at_ms {
                self.recency.remove(&(at, vm.to_string()));
            }
            self.leave_group(vm, state.group.as_deref());
        }
    }

    fn leave_group(&mut self, vm: &str, group: Option<&str>) {
        if let Some(g) = group {
            if let Some(members) = self.groups.get_mut(g) {
                members.remove(vm);
                if members.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
    }

    /// Takes one sample; returns the findings it opened or updated.
    ///
    /// A finding comes back with `count == 1` when it is new, and again, with `count` and
    /// `last_ms` advanced and fresh evidence, each time a later sample matches it while it is
    /// open; callers upsert by `(id, first_ms)`. A sample not newer than the VM's last one is
    /// ignored.
    pub fn observe(&mut self, sample: &Sample) -> Vec<Finding> {
        let at = sample.at_ms;
        if !self.vms.contains_key(&sample.vm) {
            while self.vms.len() >= self.config.max_vms.max(1) {
                let Some((_, oldest)) = self.recency.pop_first() else {
                    break;
                };
                self.forget(&oldest);
            }
        }
        let mut state = self.vms.remove(&sample.vm).unwrap_or_default();
        if state.last_at_ms.is_some_and(|last| at <= last) {
            self.vms.insert(sample.vm.clone(), state);
            return Vec::new();
        }
        if let Some(last) = state.last_at_ms {
            self.recency.remove(&(last, sample.vm.clone()));
        }
        self.recency.insert((at, sample.vm.clone()));
        state.last_at_ms = Some(at);

        let (cpu_rate, egress_rate) = host_rates(state.host.as_ref(), at, &sample.host);
        state.host = Some((at, sample.host.clone()));
        let proc_cpu = self.process_cpu(&mut state, sample);

        let outbound = sample
            .guest
            .as_ref()
            .map(eval::outbound)
            .unwrap_or_default();
        state.history.push_back(Snap {
            at_ms: at,
            process_count: sample.guest.as_ref().map(GuestSample::process_total),
            tcp_attempt_fails: sample.guest.as_ref().map(|g| g.tcp_attempt_fails),
            boot_ms: sample
                .guest
                .as_ref()
                .filter(|g| g.uptime_ms > 0)
                .map(|g| at.saturating_sub(g.uptime_ms)),
            outbound: outbound
                .iter()
                .take(self.config.max_outbound_per_sample)
                .map(|c| (c.remote_addr.chars().take(64).collect(), c.remote_port))
                .collect(),
        });
        // One sample older than the longest window stays: when the guest went silent for longer
        // than a window (a fork bomb slows its answers), growth is measured against it.
        while state.history.len() > self.config.max_history.max(1)
            || state
                .history
                .get(1)
                .is_some_and(|s| s.at_ms + self.history_ms < at)
        {
            state.history.pop_front();
        }

        let mut hits: Vec<Hit> = Vec::new();
        {
            let ctx = Ctx {
                at_ms: at,
                guest: sample.guest.as_ref(),
                proc_cpu: &proc_cpu,
                outbound,
                egress_rate,
                history: &state.history,
            };
            for rule in &self.rules {
                match eval::evaluate(&rule.when, &ctx) {
                    Some(evidence) => {
                        let since = *state.holding_since.entry(rule.id.clone()).or_insert(at);
                        if at - since >= rule.when.for_ms() {
                            hits.push(Hit {
                                rule: rule.id.clone(),
                                key: String::new(),
                                detector: DetectorKind::Rule,
                                severity: rule.severity,
                                description: rule.description.clone(),
                                evidence,
                            });
                        }
                    }
                    None => {
                        state.holding_since.remove(&rule.id);
                    }
                }
            }
        }

        let values = [cpu_rate, egress_rate];
        self.statistics(&mut state, sample, at, values, &mut hits);

        let vm = sample.vm.clone();
        let out = record(&mut state, &vm, at, hits, self.config.resolve_after_ms);
        self.vms.insert(vm, state);
        out
    }

    /// Per-process CPU share over the last guest interval; remembers this sample's counters.
    fn process_cpu(&self, state: &mut VmState, sample: &Sample) -> BTreeMap<u32, f64> {
        let mut shares = BTreeMap::new();
        let Some(guest) = &sample.guest else {
            return shares;
        };
        let dt_ms = state
            .guest_at_ms
            .map_or(0, |prev| sample.at_ms.saturating_sub(prev));
        let mut next = BTreeMap::new();
        for p in guest.processes.iter().take(self.config.max_pids) {
            if dt_ms > 0 {
                if let Some((comm, ticks)) = state.pids.get(&p.pid) {
                    if *comm == p.comm && p.cpu_ticks >= *ticks {
                        // 100 ticks per CPU-second.
                        let secs = (p.cpu_ticks - ticks) as f64 / 100.0;
                        shares.insert(p.pid, secs * 1000.0 / dt_ms as f64);
                    }
                }
            }
            next.insert(p.pid, (p.comm.clone(), p.cpu_ticks));
        }
        state.pids = next;
        state.guest_at_ms = Some(sample.at_ms);
        shares
    }

    /// Baseline, peer and change-point checks on the CPU and egress series.
    fn statistics(
        &mut self,
        state: &mut VmState,
        sample: &Sample,
        at: u64,
        values: [Option<f64>; 2],
        hits: &mut Vec<Hit>,
    ) {
        let c = &self.config;
        let floors = [c.cpu_floor, c.egress_floor];
        let cap = c
            .baseline_window
            .max(c.change_reference + c.change_recent)
            .max(1);
        for (i, name) in SERIES.iter().enumerate() {
            let Some(x) = values[i] else { continue };
            let series = &mut state.series[i];
            // Own baseline: the values before this one.
            if series.len() >= c.baseline_warmup.max(1) {
                let reference = series.iter().rev().take(c.baseline_window).copied();
                if let Some(s) = stats::robust_z(x, reference, floors[i]) {
                    if s.z > c.baseline_z {
                        hits.push(stat_hit(
                            "baseline",
                            name,
                            DetectorKind::Baseline,
                            "Far above this VM's own baseline",
                            [
                                ("value", fmt_value(x)),
                                ("median", fmt_value(s.median)),
                                ("spread", fmt_value(s.spread)),
                                ("z", format!("{:.1} > {:.1}", s.z, c.baseline_z)),
                            ],
                        ));
                    }
                }
            }
            series.push_back(x);
            while series.len() > cap {
                series.pop_front();
            }
            // Change point: the last windows of the series, this value included.
            let (front, back) = series.as_slices();
            let flat: Vec<f64> = front.iter().chain(back).copied().collect();
            if let Some(s) = stats::shift(&flat, c.change_reference, c.change_recent, floors[i]) {
                if s.z.abs() > c.change_z {
                    hits.push(stat_hit(
                        "change-point",
                        name,
                        DetectorKind::ChangePoint,
                        "The level of this series shifted",
                        [
                            ("before", fmt_value(s.before)),
                            ("after", fmt_value(s.after)),
                            ("direction", if s.z > 0.0 { "up" } else { "down" }.into()),
                            ("z", format!("{:.1} > {:.1}", s.z.abs(), c.change_z)),
                        ],
                    ));
                }
            }
        }

        // Peers: same group, fresh values.
        if state.group != sample.group {
            let old = state.group.take();
            self.leave_group(&sample.vm, old.as_deref());
            state.group.clone_from(&sample.group);
        }
        let Some(group) = &sample.group else { return };
        let members = self.groups.entry(group.clone()).or_default();
        let point = members.entry(sample.vm.clone()).or_insert(PeerPoint {
            at_ms: at,
            values: [None, None],
        });
        point.at_ms = at;
        for (slot, v) in point.values.iter_mut().zip(values) {
            if v.is_some() {
                *slot = v;
            }
        }
        let c = &self.config;
        for (i, name) in SERIES.iter().enumerate() {
            let Some(x) = values[i] else { continue };
            let peers: Vec<f64> = members
                .iter()
                .filter(|(vm, p)| **vm != sample.vm && p.at_ms + c.peer_stale_ms >= at)
                .filter_map(|(_, p)| p.values[i])
                .take(c.peer_max)
                .collect();
            if peers.len() < c.peer_min.max(1) {
                continue;
            }
            let n = peers.len();
            if let Some(s) = stats::robust_z(x, peers.into_iter(), floors[i]) {
                if s.z > c.peer_z {
                    hits.push(stat_hit(
                        "peers",
                        name,
                        DetectorKind::Peers,
                        "Far above its peers (same function or image)",
                        [
                            ("value", fmt_value(x)),
                            ("peer_median", fmt_value(s.median)),
                            ("peers", format!("{n} in {group}")),
                            ("z", format!("{:.1} > {:.1}", s.z, c.peer_z)),
                        ],
                    ));
                }
            }
        }
    }
}

/// A match before de-duplication.
struct Hit {
    rule: String,
    key: String,
    detector: DetectorKind,
    severity: Severity,
    description: String,
    evidence: Evidence,
}

fn stat_hit(
    rule: &str,
    series: &str,
    detector: DetectorKind,
    description: &str,
    evidence: [(&str, String); 4],
) -> Hit {
    let mut ev: Evidence = evidence
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    ev.insert("series".into(), series.to_string());
    Hit {
        rule: rule.to_string(),
        key: series.to_string(),
        detector,
        severity: Severity::Low,
        description: format!("{description} ({series})"),
        evidence: ev,
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// CPU share (of one CPU) and egress bytes per second since the previous host sample; `None`
/// on the first sample or after a counter reset.
fn host_rates(
    prev: Option<&(u64, HostSample)>,
    at: u64,
    now: &HostSample,
) -> (Option<f64>, Option<f64>) {
    let Some((prev_at, prev)) = prev else {
        return (None, None);
    };
    let dt = at.saturating_sub(*prev_at);
    if dt == 0 {
        return (None, None);
    }
    let rate = |a: u64, b: u64, per_ms: f64| (b >= a).then(|| (b - a) as f64 * per_ms / dt as f64);
    (
        rate(prev.cpu_time_ms, now.cpu_time_ms, 1.0),
        rate(prev.tx_bytes, now.tx_bytes, 1000.0),
    )
}

/// Folds matches into open findings; closes those not seen for `resolve_after_ms`.
fn record(
    state: &mut VmState,
    vm: &str,
    at: u64,
    hits: Vec<Hit>,
    resolve_after_ms: u64,
) -> Vec<Finding> {
    state.open.retain(|_, f| f.last_ms + resolve_after_ms >= at);
    let mut out = Vec::with_capacity(hits.len());
    for hit in hits {
        let key = (hit.rule, hit.key);
        let finding = state.open.entry(key.clone()).or_insert_with(|| Finding {
            id: Finding::id_for(vm, &key.0, &key.1),
            vm: vm.to_string(),
            rule: key.0.clone(),
            key: key.1.clone(),
            detector: hit.detector,
            severity: hit.severity,
            description: hit.description.clone(),
            first_ms: at,
            last_ms: at,
            count: 0,
            evidence: Evidence::new(),
        });
        finding.count += 1;
        finding.last_ms = at;
        finding.severity = hit.severity;
        finding.evidence = hit.evidence;
        out.push(finding.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_pids_are_bounded() {
        let config = DetectorConfig {
            max_history: 5,
            max_pids: 3,
            ..DetectorConfig::default()
        };
        let mut det = Detector::new(&Rules::builtin(), config);
        for i in 0..50u64 {
            let processes = (0..10)
                .map(|pid| crate::model::Process {
                    pid,
                    comm: "p".into(),
                    ..Default::default()
                })
                .collect();
            det.observe(&Sample {
                vm: "a".into(),
                at_ms: i * 1000,
                group: None,
                host: HostSample::default(),
                guest: Some(GuestSample {
                    processes,
                    ..Default::default()
                }),
            });
        }
        let state = &det.vms["a"];
        assert_eq!(state.history.len(), 5);
        assert_eq!(state.pids.len(), 3);
        assert!(state.series.iter().all(|s| s.len() <= 120));
    }

    #[test]
    fn history_is_cut_to_the_longest_window() {
        let mut det = Detector::new(&Rules::builtin(), DetectorConfig::default());
        for i in 0..200u64 {
            det.observe(&Sample {
                vm: "a".into(),
                at_ms: i * 10_000,
                group: None,
                host: HostSample::default(),
                guest: None,
            });
        }
        // Longest built-in window is 60 s: 7 samples 10 s apart, plus the one before it.
        assert_eq!(det.vms["a"].history.len(), 8);
    }

    #[test]
    fn rates_handle_resets_and_zero_intervals() {
        let h = |cpu, tx| HostSample {
            cpu_time_ms: cpu,
            tx_bytes: tx,
            ..HostSample::default()
        };
        assert_eq!(host_rates(None, 10, &h(5, 5)), (None, None));
        assert_eq!(
            host_rates(Some(&(0, h(0, 0))), 1000, &h(500, 2000)),
            (Some(0.5), Some(2000.0))
        );
        assert_eq!(
            host_rates(Some(&(0, h(900, 0))), 1000, &h(5, 10)),
            (None, Some(10.0))
        );
        assert_eq!(
            host_rates(Some(&(1000, h(0, 0))), 1000, &h(5, 5)),
            (None, None)
        );
    }

    #[test]
    fn forget_drops_vm_and_group_membership() {
        let mut det = Detector::new(&Rules::builtin(), DetectorConfig::default());
        let s = Sample {
            vm: "a".into(),
            at_ms: 1,
            group: Some("g".into()),
            host: HostSample::default(),
            guest: None,
        };
        det.observe(&s);
        assert_eq!(det.vm_count(), 1);
        det.forget("a");
        assert_eq!(det.vm_count(), 0);
        assert!(det.groups.is_empty() && det.recency.is_empty());
    }
}
