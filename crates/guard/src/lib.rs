//! The guard engine: threat and anomaly detection for microVMs.
//!
//! Telemetry goes in as [`Sample`]s (host-side VMM and tap counters, guest-side processes,
//! listeners and connections); [`Finding`]s with a severity and evidence come out, from two
//! sources:
//!
//! - rules ([`Rules`]): a readable TOML rule file, with a built-in set ([`BUILTIN_RULES`]:
//!   crypto-miners, reverse shells, port scans, unexpected listeners, fork bombs, egress spikes,
//!   metadata-address access) that a user file overrides by rule id;
//! - statistics, always [`Severity::Low`] on their own: each VM's CPU and egress rates against
//!   its own robust baseline (median/MAD), against its peers (same `group`: function or image),
//!   and a change-point test (two-window median shift) on the same series.
//!
//! [`Detector::observe`] is the one way in for the server's guard controller; [`replay`] runs
//! recorded samples through a fresh detector (`firefleet guard rules test`). Mapping findings
//! to responses is [`Playbooks`]: severity -> ordered [`Action`]s per tenant (the server's guard
//! controller carries them out).
//!
//! It is pure and must stay so: no I/O, no async, no clock, no filesystem (checked by
//! `cargo xtask check`). Time is each sample's `at_ms`; the same samples in the same order give
//! the same findings.

mod detector;
mod eval;
pub mod model;
mod playbook;
mod rules;
mod stats;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use detector::{Detector, DetectorConfig};
pub use eval::Evidence;
pub use model::{Connection, GuestSample, HostSample, Listener, Process, Sample};
pub use playbook::{Action, Playbook, Playbooks, BUILTIN_PLAYBOOKS};
pub use rules::{Rule, RuleError, Rules, Severity, When, BUILTIN_RULES, MAX_WINDOW_SECS};

/// Which part of the engine produced a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    /// A rule of the rule file.
    Rule,
    /// The VM against its own baseline.
    Baseline,
    /// The VM against its peers.
    Peers,
    /// A level shift in the VM's series.
    ChangePoint,
}

/// Something suspicious about one VM, de-duplicated: one finding per (vm, rule, key) while it
/// stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id: a hash of vm, rule and key (the same condition on the same VM always has the
    /// same id; an episode is `(id, first_ms)`).
    pub id: String,
    /// The VM.
    pub vm: String,
    /// The rule id, or the statistical detector's name (`baseline`, `peers`, `change-point`).
    pub rule: String,
    /// What within the rule: empty for rules, the series (`cpu`, `egress`) for statistics.
    pub key: String,
    /// Which part of the engine found it.
    pub detector: DetectorKind,
    /// How bad it is.
    pub severity: Severity,
    /// What it means.
    pub description: String,
    /// First sample that matched, ms.
    pub first_ms: u64,
    /// Latest sample that matched, ms.
    pub last_ms: u64,
    /// Samples that matched while open.
    pub count: u64,
    /// What matched, with values against thresholds (from the latest matching sample).
    pub evidence: BTreeMap<String, String>,
}

impl Finding {
    /// The stable id of (vm, rule, key): 64-bit FNV-1a, as 16 hex digits.
    #[must_use]
    pub fn id_for(vm: &str, rule: &str, key: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [vm, rule, key] {
            for b in part.bytes().chain([0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }
}

/// Runs `samples` in order through a fresh [`Detector`] with default limits and returns every
/// finding episode in its final state (latest count, last_ms and evidence), ordered by
/// `first_ms`, then id. This is `firefleet guard rules test FILE` against recorded telemetry.
#[must_use]
pub fn replay(rules: &Rules, samples: &[Sample]) -> Vec<Finding> {
    let mut detector = Detector::new(rules, DetectorConfig::default());
    let mut episodes: BTreeMap<(u64, String), Finding> = BTreeMap::new();
    for sample in samples {
        for f in detector.observe(sample) {
            episodes.insert((f.first_ms, f.id.clone()), f);
        }
    }
    episodes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = Finding::id_for("vm-1", "miner-process", "");
        assert_eq!(a, Finding::id_for("vm-1", "miner-process", ""));
        assert_ne!(a, Finding::id_for("vm-2", "miner-process", ""));
        assert_ne!(
            Finding::id_for("ab", "c", ""),
            Finding::id_for("a", "bc", "")
        );
        assert_eq!(a.len(), 16);
    }
}
