//! The four policies. Each turns a function's state at a tick into a [`Plan`]; the engine
//! applies min/max and regions and sets the deadlines.

use crate::config::{EngineConfig, PolicyKind};
use crate::engine::{FnState, TickStat};
use crate::forecast::{ar1_predict, DampedHolt};
use crate::history::IdleHistogram;
use crate::InstanceInfo;

/// How an idle instance's deadline is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadlineRule {
    /// At this time.
    At(u64),
    /// This long after it went idle.
    AfterIdle(u64),
}

/// A policy's answer for one function at one tick.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Warm instances wanted (before min/max).
    pub wanted: u32,
    /// The `keep` most recently idle instances get `keep_rule`, the others `rest_rule`.
    pub keep: u32,
    pub keep_rule: DeadlineRule,
    pub rest_rule: DeadlineRule,
    pub prewarm_at_ms: Option<u64>,
    pub reason: Reason,
    /// The reactive layer raised `wanted`.
    pub panic: bool,
}

/// Which model or layer decided; formatted only for the decisions returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Reason {
    Text(&'static str),
    Fixed(u64),
    NoInvocation(&'static str),
    Windows {
        label: &'static str,
        prewarm: u32,
        keep_alive: u32,
    },
    Dense {
        forecast: f64,
        pool: u32,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Reason::Text(t) => f.write_str(t),
            Reason::Fixed(ms) => write!(f, "fixed keep-alive {}s", ms / 1000),
            Reason::NoInvocation(label) => write!(f, "{label}: no invocation yet"),
            Reason::Windows {
                label,
                prewarm,
                keep_alive,
            } => write!(
                f,
                "{label}: pre-warm {prewarm} keep-alive {keep_alive} bins"
            ),
            Reason::Dense { forecast, pool } => {
                write!(
                    f,
                    "firefleet: dense, ETS forecast {forecast:.1}, pool {pool}"
                )
            }
        }
    }
}

impl Plan {
    fn all(rule: DeadlineRule, reason: Reason) -> Plan {
        Plan {
            wanted: 0,
            keep: u32::MAX,
            keep_rule: rule,
            rest_rule: rule,
            prewarm_at_ms: None,
            reason,
            panic: false,
        }
    }
}

/// Pre-warm and keep-alive windows in bins, relative to the bin of the last invocation: the
/// function is unloaded after the bin of its last invocation and loaded again from bin
/// `last + prewarm` through bin `last + prewarm + keep_alive`; `prewarm == 0` keeps it loaded
/// from the end of the execution through bin `last + keep_alive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Windows {
    /// No idle time seen yet: the default keep-alive.
    NoHistory,
    /// From the histogram's head and tail percentiles.
    Histogram { prewarm: u32, keep_alive: u32 },
    /// From an AR(1) prediction of the next idle time (idle times mostly out of range).
    Arima { prewarm: u32, keep_alive: u32 },
    /// Histogram not representative (or too few samples).
    Fallback,
    /// No window pays for itself: unload after the invocation's bin.
    Unload,
}

pub(crate) fn plan(
    cfg: &EngineConfig,
    st: &mut FnState,
    stat: &TickStat,
    insts: &[InstanceInfo],
    now_ms: u64,
    bin: u64,
    tick_len: u64,
) -> Plan {
    match cfg.policy {
        PolicyKind::FixedKeepAlive { keep_alive_ms } => Plan::all(
            DeadlineRule::AfterIdle(keep_alive_ms),
            Reason::Fixed(keep_alive_ms),
        ),
        PolicyKind::HybridHistogram => hybrid(cfg, st, now_ms),
        PolicyKind::Knative => knative(cfg, st, insts, now_ms),
        PolicyKind::FireFleet => firefleet(cfg, st, stat, insts, now_ms, bin, tick_len),
    }
}

/// Windows from a histogram: pre-warm = head percentile less the margin, keep-alive through the
/// tail percentile plus the margin.
fn histogram_windows(idle: &IdleHistogram, head: f64, tail: f64, margin: f64) -> Option<Windows> {
    let h = idle.percentile(head)?;
    let t = idle.percentile(tail)?;
    let prewarm = (f64::from(h) * (1.0 - margin)).floor() as u32;
    let end = ((f64::from(t) * (1.0 + margin)).ceil() as u32).max(prewarm + 1);
    Some(Windows::Histogram {
        prewarm,
        keep_alive: end - prewarm,
    })
}

fn arima_windows(idle: &IdleHistogram, margin: f64) -> Option<Windows> {
    let xs: Vec<f64> = idle.recent().map(f64::from).collect();
    let p = ar1_predict(&xs)?;
    let prewarm = (p * (1.0 - margin)).floor() as u32;
    let keep_alive = ((p * 2.0 * margin).ceil() as u32).max(1);
    Some(Windows::Arima {
        prewarm,
        keep_alive,
    })
}

/// The hybrid policy's choice of windows (ATC'20, section 4.2).
fn hybrid_windows(cfg: &EngineConfig, idle: &IdleHistogram) -> Windows {
    let h = &cfg.hybrid;
    let range = u32::try_from(h.range_ms / cfg.bin_ms.max(1)).unwrap_or(u32::MAX);
    if idle.total() == 0 {
        return Windows::NoHistory;
    }
    if f64::from(idle.out_of_bounds()) > h.oob_fraction * f64::from(idle.total()) {
        return arima_windows(idle, h.arima_margin).unwrap_or(Windows::Fallback);
    }
    if idle.bucket_cv(range) < h.cv_threshold {
        return Windows::Fallback;
    }
    histogram_windows(idle, h.head_percentile, h.tail_percentile, h.margin)
        .unwrap_or(Windows::Fallback)
}

/// Deadlines and pre-warm from windows relative to the last active bin.
fn windowed(
    cfg: &EngineConfig,
    st: &FnState,
    (prewarm, keep_alive): (u32, u32),
    keep: u32,
    prewarm_count: u32,
    now_ms: u64,
    label: &'static str,
) -> Plan {
    let bin_ms = cfg.bin_ms.max(1);
    let Some(last) = st.hist.last_active_bin else {
        return Plan::all(
            DeadlineRule::AfterIdle(cfg.default_keep_alive_ms),
            Reason::NoInvocation(label),
        );
    };
    // Loaded one tick ahead of the window, so that it is warm when the window opens.
    let start = (last + u64::from(prewarm))
        .saturating_mul(bin_ms)
        .saturating_sub(cfg.tick_ms);
    let end = (last + u64::from(prewarm) + u64::from(keep_alive) + 1).saturating_mul(bin_ms);
    let reason = Reason::Windows {
        label,
        prewarm,
        keep_alive,
    };
    if prewarm == 0 {
        return Plan {
            keep,
            keep_rule: DeadlineRule::At(end),
            ..Plan::all(DeadlineRule::At((last + 1).saturating_mul(bin_ms)), reason)
        };
    }
    // Unloaded at the end of the last active bin, loaded again for the window.
    let after_exec = DeadlineRule::At((last + 1).saturating_mul(bin_ms));
    if now_ms >= start && now_ms < end {
        Plan {
            wanted: prewarm_count,
            keep,
            keep_rule: DeadlineRule::At(end),
            rest_rule: after_exec,
            prewarm_at_ms: None,
            reason,
            panic: false,
        }
    } else {
        Plan {
            prewarm_at_ms: (now_ms < start).then_some(start),
            ..Plan::all(after_exec, reason)
        }
    }
}

fn hybrid(cfg: &EngineConfig, st: &mut FnState, now_ms: u64) -> Plan {
    let version = st.hist.idle.version;
    let w = match st.windows {
        Some((v, w)) if v == version => w,
        _ => {
            let w = hybrid_windows(cfg, &st.hist.idle);
            st.windows = Some((version, w));
            w
        }
    };
    let range = u32::try_from(cfg.hybrid.range_ms / cfg.bin_ms.max(1)).unwrap_or(u32::MAX);
    match w {
        Windows::NoHistory => Plan::all(
            DeadlineRule::AfterIdle(cfg.default_keep_alive_ms),
            Reason::Text("hybrid: no idle time yet, default keep-alive"),
        ),
        Windows::Fallback | Windows::Unload => {
            windowed(cfg, st, (0, range), u32::MAX, 1, now_ms, "hybrid fallback")
        }
        Windows::Histogram {
            prewarm,
            keep_alive,
        } => windowed(
            cfg,
            st,
            (prewarm, keep_alive),
            u32::MAX,
            1,
            now_ms,
            "hybrid histogram",
        ),
        Windows::Arima {
            prewarm,
            keep_alive,
        } => windowed(
            cfg,
            st,
            (prewarm, keep_alive),
            u32::MAX,
            1,
            now_ms,
            "hybrid arima",
        ),
    }
}

/// Knative's KPA (`pkg/autoscaler/scaling/autoscaler.go`), one decision per tick.
fn knative(cfg: &EngineConfig, st: &mut FnState, insts: &[InstanceInfo], now_ms: u64) -> Plan {
    let k = &cfg.knative;
    let conc = f64::from(st.params.concurrency.max(1));
    let target = conc * k.target_utilization_pct / 100.0;
    let stable_w = k.stable_window_ms.max(1);
    let panic_w = ((stable_w as f64) * k.panic_window_pct / 100.0).max(1.0) as u64;
    let in_window = |w: u64| -> f64 {
        let ms: u64 = st
            .recent
            .iter()
            .filter(|t| t.at_ms + w > now_ms)
            .map(|t| t.in_flight_ms)
            .sum();
        ms as f64 / w as f64
    };
    let stable = in_window(stable_w);
    let panic = in_window(panic_w);
    let ready = insts.iter().filter(|i| i.ready).count() as f64;
    let ready_pods = ready.max(1.0);
    let max_up = (k.max_scale_up_rate * ready_pods).ceil();
    let max_down = (ready_pods / k.max_scale_down_rate).floor();
    let dspc = (stable / target).ceil();
    let dppc = (panic / target).ceil();
    let desired_stable = dspc.max(max_down).min(max_up) as u32;
    let desired_panic = dppc.max(max_down).min(max_up) as u32;
    let over = dppc / ready_pods >= k.panic_threshold_pct / 100.0;
    match st.kpa_panic_since_ms {
        None if over => {
            st.kpa_panic_since_ms = Some(now_ms);
        }
        Some(_) if over => st.kpa_panic_since_ms = Some(now_ms),
        Some(t) if now_ms >= t + stable_w => {
            st.kpa_panic_since_ms = None;
            st.kpa_max_panic_pods = 0;
        }
        _ => {}
    }
    let (mut desired, reason) = if st.kpa_panic_since_ms.is_some() {
        let d = desired_panic.max(st.kpa_max_panic_pods);
        st.kpa_max_panic_pods = d;
        (d, "knative: panic")
    } else {
        (desired_stable, "knative: stable")
    };
    // Scale to zero only after the grace period.
    if desired == 0 {
        let since = *st.kpa_zero_since_ms.get_or_insert(now_ms);
        if now_ms < since + k.scale_to_zero_grace_ms && ready >= 1.0 {
            desired = 1;
        }
    } else {
        st.kpa_zero_since_ms = None;
    }
    Plan {
        wanted: desired,
        keep: 0,
        keep_rule: DeadlineRule::At(now_ms),
        rest_rule: DeadlineRule::At(now_ms),
        prewarm_at_ms: None,
        reason: Reason::Text(reason),
        panic: false,
    }
}

/// FireFleet's choice of windows: like the hybrid policy's, with tuned percentiles, and rare or
/// unrepresentative functions get a short fixed keep-alive instead of the 4-hour range.
fn firefleet_windows(cfg: &EngineConfig, idle: &IdleHistogram, memory_mib: u32) -> Windows {
    let f = &cfg.firefleet;
    if idle.total() == 0 {
        return Windows::NoHistory;
    }
    if idle.total() >= 2 && f64::from(idle.out_of_bounds()) > 0.5 * f64::from(idle.total()) {
        return arima_windows(idle, 0.15).unwrap_or(Windows::Fallback);
    }
    if idle.in_range() < f.min_idle_samples {
        return Windows::Fallback;
    }
    // Price of a cold start in idle bins of this function's instance.
    let gib_per_bin = f64::from(memory_mib.max(1)) / 1024.0 * cfg.bin_ms.max(1) as f64 / 1000.0;
    let cold_cost_bins = f.cold_start_cost_gib_s / gib_per_bin;
    match idle.cost_optimal_window(cold_cost_bins) {
        Some((start, end)) => Windows::Histogram {
            prewarm: start,
            keep_alive: end - start,
        },
        None => Windows::Unload,
    }
}

fn firefleet(
    cfg: &EngineConfig,
    st: &mut FnState,
    stat: &TickStat,
    insts: &[InstanceInfo],
    now_ms: u64,
    _bin: u64,
    _tick_len: u64,
) -> Plan {
    let f = &cfg.firefleet;
    let conc = st.params.concurrency.max(1);
    let per = |peak: u32| peak.div_ceil(conc);
    // Pool: the peak concurrency over the recent window.
    let pool_peak = st
        .recent
        .iter()
        .filter(|t| t.at_ms + f.pool_window_ms > now_ms)
        .map(|t| t.peak)
        .max()
        .unwrap_or(0);
    let pool = per(pool_peak).max(1);
    // Reactive layer: a burst well above the warm instances holds the pool at its peak.
    let warm = insts.len() as u32;
    if stat.peak >= 2 && f64::from(per(stat.peak)) >= f.panic_threshold * f64::from(warm.max(1)) {
        st.panic_until_ms = now_ms + f.panic_hold_ms;
        st.panic_peak = st.panic_peak.max(per(stat.peak));
    } else if now_ms >= st.panic_until_ms {
        st.panic_peak = 0;
    }
    let panic_floor = if now_ms < st.panic_until_ms {
        st.panic_peak
    } else {
        0
    };
    let extra = DeadlineRule::AfterIdle(f.extra_keep_alive_ms);

    // Dense functions follow the forecast of their per-bin peak concurrency.
    if st.hist.active_fraction(60) >= f.dense_fraction {
        let closed = st.hist.bins_closed;
        if st.holt.is_none() || closed >= st.holt_fit_at + u64::from(f.refit_every_bins.max(1)) {
            let series: Vec<f64> = st.hist.series.iter().map(|s| f64::from(s.peak)).collect();
            st.holt = DampedHolt::fit(&series);
            st.holt_fit_at = closed;
            st.holt_fed = closed;
        } else if closed > st.holt_fed {
            let n = (closed - st.holt_fed).min(st.hist.series.len() as u64) as usize;
            let start = st.hist.series.len() - n;
            if let Some(m) = st.holt.as_mut() {
                for s in st.hist.series.iter().skip(start) {
                    m.update(f64::from(s.peak));
                }
            }
            st.holt_fed = closed;
        }
        let fc = st.holt.as_ref().map_or(0.0, |m| m.forecast(1)).max(0.0);
        // round half down: a steady peak of 1 forecast as 1.0 must not ask for 2
        let want = ((fc * f.forecast_headroom - 0.5).ceil().max(0.0) as u32).div_ceil(conc);
        let wanted = want.max(pool).max(panic_floor).max(1);
        return Plan {
            wanted,
            keep: wanted,
            keep_rule: extra,
            rest_rule: extra,
            prewarm_at_ms: None,
            reason: Reason::Dense { forecast: fc, pool },
            panic: false,
        };
    }

    let version = st.hist.idle.version;
    let w = match st.windows {
        Some((v, w)) if v == version => w,
        _ => {
            let w = firefleet_windows(cfg, &st.hist.idle, st.params.memory_mib);
            st.windows = Some((version, w));
            w
        }
    };
    let mut plan = match w {
        Windows::NoHistory => Plan {
            keep: pool,
            rest_rule: extra,
            ..Plan::all(
                DeadlineRule::AfterIdle(cfg.default_keep_alive_ms),
                Reason::Text("firefleet: no history, default keep-alive"),
            )
        },
        Windows::Fallback => Plan {
            keep: pool,
            rest_rule: extra,
            ..Plan::all(
                DeadlineRule::AfterIdle(f.rare_keep_alive_ms),
                Reason::Text("firefleet: rare, short keep-alive"),
            )
        },
        Windows::Unload => Plan::all(
            DeadlineRule::At(
                st.hist
                    .last_active_bin
                    .map_or(now_ms, |b| (b + 1).saturating_mul(cfg.bin_ms.max(1))),
            ),
            Reason::Text("firefleet: no window pays off, unload"),
        ),
        Windows::Histogram {
            prewarm,
            keep_alive,
        } => {
            let burst = per(st.hist.burst_peak()).max(1);
            let mut p = windowed(
                cfg,
                st,
                (prewarm, keep_alive),
                pool.max(burst),
                burst,
                now_ms,
                "firefleet histogram",
            );
            p.rest_rule = if prewarm == 0 { extra } else { p.rest_rule };
            p
        }
        Windows::Arima {
            prewarm,
            keep_alive,
        } => windowed(
            cfg,
            st,
            (prewarm, keep_alive),
            1,
            1,
            now_ms,
            "firefleet arima",
        ),
    };
    if panic_floor > plan.wanted {
        plan.wanted = panic_floor;
        plan.panic = true;
    }
    plan
}
