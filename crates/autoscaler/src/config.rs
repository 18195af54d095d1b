//! Engine configuration: which policy, the tick and bin, and each policy's parameters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The scaling policy an [`crate::Autoscaler`] runs. All four are driven through the same
/// [`crate::Autoscaler::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// FireFleet's own policy: per-function model choice (forecast, idle-time histogram, rare),
    /// a pool sized from recent concurrency, a reactive panic layer, scale to zero.
    FireFleet,
    /// Keep every instance for a fixed time after it went idle (the common practice: 10 min).
    FixedKeepAlive {
        /// How long an idle instance is kept.
        keep_alive_ms: u64,
    },
    /// The hybrid histogram policy of *Serverless in the Wild* (Shahrad et al., ATC'20).
    HybridHistogram,
    /// Knative's KPA with its default settings (stable/panic windows, scale to zero).
    Knative,
}

impl PolicyKind {
    /// Fixed keep-alive of 10 minutes.
    pub const FIXED_10M: PolicyKind = PolicyKind::FixedKeepAlive {
        keep_alive_ms: 600_000,
    };
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyKind::FireFleet => f.write_str("firefleet"),
            PolicyKind::FixedKeepAlive { keep_alive_ms } => {
                if keep_alive_ms % 60_000 == 0 {
                    write!(f, "fixed-{}m", keep_alive_ms / 60_000)
                } else {
                    write!(f, "fixed:{}", keep_alive_ms / 1000)
                }
            }
            PolicyKind::HybridHistogram => f.write_str("hybrid"),
            PolicyKind::Knative => f.write_str("knative"),
        }
    }
}

/// A policy name that is not one of `firefleet`, `fixed-<N>m`, `fixed:<secs>`, `hybrid`,
/// `knative`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?} (expected firefleet, fixed-10m, fixed:<secs>, hybrid or knative)")]
pub struct PolicyParseError(pub String);

impl FromStr for PolicyKind {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PolicyParseError(s.to_owned());
        match s {
            "firefleet" => Ok(PolicyKind::FireFleet),
            "hybrid" | "hybrid-histogram" => Ok(PolicyKind::HybridHistogram),
            "knative" | "kpa" => Ok(PolicyKind::Knative),
            _ => {
                if let Some(secs) = s.strip_prefix("fixed:") {
                    let secs: u64 = secs.parse().map_err(|_| err())?;
                    Ok(PolicyKind::FixedKeepAlive {
                        keep_alive_ms: secs.saturating_mul(1000),
                    })
                } else if let Some(mins) =
                    s.strip_prefix("fixed-").and_then(|r| r.strip_suffix('m'))
                {
                    let mins: u64 = mins.parse().map_err(|_| err())?;
                    Ok(PolicyKind::FixedKeepAlive {
                        keep_alive_ms: mins.saturating_mul(60_000),
                    })
                } else {
                    Err(err())
                }
            }
        }
    }
}

/// Parameters of the FireFleet policy (tuned by grid search on the first 16 h of the Azure day,
/// see `docs/benchmarks.md`, section "Autoscaling policies").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FireFleetParams {
    /// Fewer in-range idle times than this: the function is "rare" (short fixed keep-alive);
    /// otherwise its pre-warm and keep-alive windows are the ones that minimise idle memory
    /// plus [`FireFleetParams::cold_start_cost_gib_s`] per cold start over its idle times.
    pub min_idle_samples: u32,
    /// Keep-alive of a rare function's instance after it went idle (0: scale to zero at once).
    pub rare_keep_alive_ms: u64,
    /// Keep-alive of idle instances beyond the pool (the burst surplus).
    pub extra_keep_alive_ms: u64,
    /// The pool is the peak concurrency over this window.
    pub pool_window_ms: u64,
    /// Share of active bins in the last hour of bins from which a function is "dense" and
    /// follows the rate forecast.
    pub dense_fraction: f64,
    /// Multiplier on the forecast concurrency.
    pub forecast_headroom: f64,
    /// Refit the forecast model every this many bins.
    pub refit_every_bins: u32,
    /// Reactive layer: panic when the last tick's peak concurrency reaches this multiple of the
    /// warm instances.
    pub panic_threshold: f64,
    /// How long a panic holds the pool at its peak.
    pub panic_hold_ms: u64,
    /// Upper bound of the idle-time histogram (and of any keep-alive window it gives).
    pub range_ms: u64,
    /// What one cold start is worth in idle memory (GiB·s): the windows minimise idle memory
    /// plus this price per cold start over the function's recorded idle times.
    pub cold_start_cost_gib_s: f64,
}

impl Default for FireFleetParams {
    fn default() -> Self {
        FireFleetParams {
            min_idle_samples: 3,
            rare_keep_alive_ms: 300_000,
            extra_keep_alive_ms: 60_000,
            pool_window_ms: 1_200_000,
            dense_fraction: 0.8,
            forecast_headroom: 1.2,
            refit_every_bins: 60,
            panic_threshold: 2.0,
            panic_hold_ms: 60_000,
            range_ms: 4 * 3_600_000,
            cold_start_cost_gib_s: 300.0,
        }
    }
}

/// Parameters of the hybrid histogram policy, defaults as in the ATC'20 paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HybridParams {
    /// Histogram range (4 hours), in 1-bin buckets.
    pub range_ms: u64,
    /// Head percentile (pre-warm window).
    pub head_percentile: f64,
    /// Tail percentile (end of the keep-alive window).
    pub tail_percentile: f64,
    /// Margin on both percentiles (10%).
    pub margin: f64,
    /// Histogram not representative when the CV of its bucket counts is below this.
    pub cv_threshold: f64,
    /// ARIMA (time-series) path when more than this share of idle times is out of range.
    pub oob_fraction: f64,
    /// Margin around the ARIMA-predicted idle time (15%).
    pub arima_margin: f64,
}

impl Default for HybridParams {
    fn default() -> Self {
        HybridParams {
            range_ms: 4 * 3_600_000,
            head_percentile: 5.0,
            tail_percentile: 99.0,
            margin: 0.10,
            cv_threshold: 2.0,
            oob_fraction: 0.5,
            arima_margin: 0.15,
        }
    }
}

/// Knative KPA settings; the defaults are Knative Serving's (`config-autoscaler`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnativeParams {
    /// `stable-window`: 60 s.
    pub stable_window_ms: u64,
    /// `panic-window-percentage`: 10 (% of the stable window).
    pub panic_window_pct: f64,
    /// `panic-threshold-percentage`: 200.
    pub panic_threshold_pct: f64,
    /// `container-concurrency-target-percentage`: 70.
    pub target_utilization_pct: f64,
    /// `scale-to-zero-grace-period`: 30 s.
    pub scale_to_zero_grace_ms: u64,
    /// `max-scale-up-rate`: 1000.
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate`: 2.
    pub max_scale_down_rate: f64,
}

impl Default for KnativeParams {
    fn default() -> Self {
        KnativeParams {
            stable_window_ms: 60_000,
            panic_window_pct: 10.0,
            panic_threshold_pct: 200.0,
            target_utilization_pct: 70.0,
            scale_to_zero_grace_ms: 30_000,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
        }
    }
}

/// Everything the engine needs besides the inputs of each tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// The policy.
    pub policy: PolicyKind,
    /// How often [`crate::Autoscaler::tick`] is called (ms).
    pub tick_ms: u64,
    /// Histogram bin and forecast step (ms); 60 000 for the Azure trace.
    pub bin_ms: u64,
    /// Keep-alive for a function with too little history.
    pub default_keep_alive_ms: u64,
    /// Seed (the engine is deterministic given inputs and seed).
    pub seed: u64,
    /// FireFleet policy parameters.
    pub firefleet: FireFleetParams,
    /// Hybrid histogram parameters.
    pub hybrid: HybridParams,
    /// Knative KPA parameters.
    pub knative: KnativeParams,
}

impl EngineConfig {
    /// A configuration with the given policy and the trace's defaults: tick 2 s (Knative's
    /// autoscaler tick), bin 60 s, default keep-alive 10 min.
    pub fn new(policy: PolicyKind) -> Self {
        EngineConfig {
            policy,
            tick_ms: 2_000,
            bin_ms: 60_000,
            default_keep_alive_ms: 600_000,
            seed: 0,
            firefleet: FireFleetParams::default(),
            hybrid: HybridParams::default(),
            knative: KnativeParams::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for s in ["firefleet", "fixed-10m", "fixed:90", "hybrid", "knative"] {
            let p: PolicyKind = s.parse().expect("parses");
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "fixed-10m".parse::<PolicyKind>(),
            Ok(PolicyKind::FixedKeepAlive {
                keep_alive_ms: 600_000
            })
        );
        assert!("fixed:x".parse::<PolicyKind>().is_err());
        assert!("lru".parse::<PolicyKind>().is_err());
    }
}
