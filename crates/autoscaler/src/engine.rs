//! [`Autoscaler`]: per-function state, the tick, and turning a policy's [`Plan`] into a
//! [`Decision`] (min/max, regions, deadlines never in the past).

use std::collections::{BTreeMap, VecDeque};

use crate::config::EngineConfig;
use crate::forecast::DampedHolt;
use crate::history::History;
use crate::policy::{self, DeadlineRule, Plan};
use crate::{Decision, FunctionParams, InstanceInfo, Sample};

/// What one tick brought for one function (all regions summed).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TickStat {
    pub at_ms: u64,
    pub invocations: u64,
    pub peak: u32,
    pub in_flight_ms: u64,
}

/// Invocations per region in one tick.
type RegionCounts<'a> = Vec<(&'a str, u64)>;

/// Engine state of one function.
#[derive(Debug, Clone, Default)]
pub(crate) struct FnState {
    pub params: FunctionParams,
    pub hist: History,
    /// Invocations per region, exponentially decayed per bin.
    pub region_weight: BTreeMap<String, f64>,
    /// Recent ticks with activity (newest last), for the pool, the reactive layer and KPA.
    pub recent: VecDeque<TickStat>,
    /// Time of the last tick that saw invocations.
    pub last_invocation_ms: Option<u64>,
    // --- FireFleet
    pub holt: Option<DampedHolt>,
    /// `hist.bins_closed` when the model was last fitted / fed.
    pub holt_fit_at: u64,
    pub holt_fed: u64,
    pub panic_until_ms: u64,
    pub panic_peak: u32,
    /// Cached windows and the histogram version they were computed from.
    pub windows: Option<(u64, policy::Windows)>,
    // --- Knative
    pub kpa_panic_since_ms: Option<u64>,
    pub kpa_max_panic_pods: u32,
    pub kpa_zero_since_ms: Option<u64>,
}

impl FnState {
    fn new(params: FunctionParams) -> Self {
        FnState {
            params,
            ..FnState::default()
        }
    }
}

/// The autoscaling engine. Holds per-function history; [`Autoscaler::tick`] is a deterministic
/// function of the configuration, the functions and the inputs of all ticks so far.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    cfg: EngineConfig,
    functions: BTreeMap<String, FnState>,
    last_tick_ms: Option<u64>,
}

/// Window of per-tick stats kept per function (covers the pool window, KPA's stable window and
/// the panic hold).
fn recent_window_ms(cfg: &EngineConfig) -> u64 {
    cfg.firefleet
        .pool_window_ms
        .max(cfg.knative.stable_window_ms)
        .max(cfg.firefleet.panic_hold_ms)
}

impl Autoscaler {
    /// An engine with no functions.
    pub fn new(cfg: EngineConfig) -> Self {
        Autoscaler {
            cfg,
            functions: BTreeMap::new(),
            last_tick_ms: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Adds a function or changes its parameters (its history is kept).
    pub fn upsert_function(&mut self, name: &str, params: FunctionParams) {
        match self.functions.get_mut(name) {
            Some(f) => f.params = params,
            None => {
                self.functions.insert(name.to_owned(), FnState::new(params));
            }
        }
    }

    /// Forgets a function and its history.
    pub fn remove_function(&mut self, name: &str) {
        self.functions.remove(name);
    }

    /// Number of functions known.
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// One tick at `now_ms`: `samples` say what happened since the previous tick (samples of
    /// unknown functions are ignored), `instances` are each function's current instances.
    /// Returns a decision for every function that has instances or wants some.
    pub fn tick(
        &mut self,
        now_ms: u64,
        samples: &[Sample],
        instances: &BTreeMap<String, Vec<InstanceInfo>>,
    ) -> Vec<Decision> {
        let tick_len = match self.last_tick_ms {
            Some(prev) if now_ms > prev => now_ms - prev,
            _ => self.cfg.tick_ms.max(1),
        };
        self.last_tick_ms = Some(now_ms);
        let bin_ms = self.cfg.bin_ms.max(1);
        let bin = now_ms.saturating_sub(1) / bin_ms;
        let range_bins =
            u32::try_from(self.cfg.hybrid.range_ms.max(self.cfg.firefleet.range_ms) / bin_ms)
                .unwrap_or(u32::MAX)
                .max(1);
        let keep_ms = recent_window_ms(&self.cfg);

        // Sum the samples per function.
        let mut agg: BTreeMap<&str, (TickStat, RegionCounts<'_>)> = BTreeMap::new();
        for s in samples {
            let e = agg.entry(s.function.as_str()).or_default();
            e.0.invocations += s.invocations;
            e.0.peak = e.0.peak.saturating_add(s.peak_in_flight);
            e.0.in_flight_ms += s.in_flight_ms;
            if s.invocations > 0 {
                e.1.push((s.region.as_str(), s.invocations));
            }
        }

        let empty: Vec<InstanceInfo> = Vec::new();
        let mut out = Vec::new();
        for (name, st) in self.functions.iter_mut() {
            let (mut stat, regions) = agg.remove(name.as_str()).unwrap_or_default();
            stat.at_ms = now_ms;
            if stat.in_flight_ms == 0 && stat.peak > 0 {
                // No time-in-flight reported: assume the peak held for the whole tick.
                stat.in_flight_ms = u64::from(stat.peak) * tick_len;
            }
            let insts = instances.get(name).unwrap_or(&empty);
            observe(st, &stat, &regions, bin, range_bins, keep_ms, now_ms);
            let plan = policy::plan(&self.cfg, st, &stat, insts, now_ms, bin, tick_len);
            if let Some(d) = finalize(name, st, plan, insts, now_ms, self.cfg.tick_ms) {
                out.push(d);
            }
        }
        out
    }
}

fn observe(
    st: &mut FnState,
    stat: &TickStat,
    regions: &[(&str, u64)],
    bin: u64,
    range_bins: u32,
    keep_ms: u64,
    now_ms: u64,
) {
    let before = st.hist.bins_closed;
    st.hist
        .observe(bin, stat.invocations, stat.peak, range_bins);
    let closed = st.hist.bins_closed - before;
    if closed > 0 && !st.region_weight.is_empty() {
        let decay = 0.9f64.powi(i32::try_from(closed.min(1000)).unwrap_or(1000));
        st.region_weight.values_mut().for_each(|w| *w *= decay);
        st.region_weight.retain(|_, w| *w > 1e-3);
    }
    for (r, n) in regions {
        *st.region_weight.entry((*r).to_owned()).or_insert(0.0) += *n as f64;
    }
    if stat.invocations > 0 || stat.peak > 0 || stat.in_flight_ms > 0 {
        st.recent.push_back(*stat);
    }
    if stat.invocations > 0 {
        st.last_invocation_ms = Some(now_ms);
    }
    while st
        .recent
        .front()
        .is_some_and(|t| t.at_ms + keep_ms <= now_ms)
    {
        st.recent.pop_front();
    }
}

/// Applies min/max, splits `wanted` over regions, and sets every idle instance's deadline.
fn finalize(
    name: &str,
    st: &FnState,
    plan: Plan,
    insts: &[InstanceInfo],
    now_ms: u64,
    tick_ms: u64,
) -> Option<Decision> {
    let p = &st.params;
    let wanted_total = plan.wanted.max(p.min).min(p.max.max(p.min));
    let wanted = split_regions(st, wanted_total);

    // Idle instances, most recently idle first (ties by id, for determinism).
    let mut idle: Vec<&InstanceInfo> = insts.iter().filter(|i| i.in_flight == 0).collect();
    idle.sort_by(|a, b| {
        b.idle_since_ms
            .unwrap_or(now_ms)
            .cmp(&a.idle_since_ms.unwrap_or(now_ms))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut deadlines: BTreeMap<String, u64> = BTreeMap::new();
    for (rank, i) in idle.iter().enumerate() {
        let since = i.idle_since_ms.unwrap_or(now_ms).min(now_ms);
        let rule = if (rank as u64) < u64::from(plan.keep) {
            plan.keep_rule
        } else {
            plan.rest_rule
        };
        let d = match rule {
            DeadlineRule::At(t) => t,
            DeadlineRule::AfterIdle(ms) => since.saturating_add(ms),
        };
        deadlines.insert(i.id.clone(), d.max(now_ms));
    }
    // Protect enough idle instances per region to honour `wanted` until the next tick.
    let hold = now_ms.saturating_add(2 * tick_ms.max(1));
    for (region, &w) in &wanted {
        let in_region = |i: &InstanceInfo| region.is_empty() || i.region == *region;
        let busy = insts
            .iter()
            .filter(|i| i.in_flight > 0 && in_region(i))
            .count();
        let need = (w as usize).saturating_sub(busy);
        for i in idle.iter().filter(|i| in_region(i)).take(need) {
            if let Some(d) = deadlines.get_mut(&i.id) {
                *d = (*d).max(hold);
            }
        }
    }
    if insts.is_empty() && wanted_total == 0 && plan.prewarm_at_ms.is_none() {
        return None;
    }
    Some(Decision {
        function: name.to_owned(),
        wanted,
        keep_alive_until_ms: deadlines,
        prewarm_at_ms: plan.prewarm_at_ms.filter(|t| *t > now_ms),
        reason: if plan.panic {
            format!("{}, reactive panic", plan.reason)
        } else {
            plan.reason.to_string()
        },
    })
}

/// Splits `total` over the function's regions in proportion to recent invocations (largest
/// remainder; even split without history); region `""` when none are listed.
fn split_regions(st: &FnState, total: u32) -> BTreeMap<String, u32> {
    let regions = &st.params.regions;
    let mut out = BTreeMap::new();
    if regions.is_empty() {
        out.insert(String::new(), total);
        return out;
    }
    let weights: Vec<f64> = regions
        .iter()
        .map(|r| st.region_weight.get(r).copied().unwrap_or(0.0))
        .collect();
    let sum: f64 = weights.iter().sum();
    let weights: Vec<f64> = if sum > 0.0 {
        weights.iter().map(|w| w / sum).collect()
    } else {
        vec![1.0 / regions.len() as f64; regions.len()]
    };
    let mut given = 0u32;
    let mut rema: Vec<(f64, usize)> = Vec::with_capacity(regions.len());
    let mut counts = vec![0u32; regions.len()];
    for (i, w) in weights.iter().enumerate() {
        let exact = w * f64::from(total);
        let floor = exact.floor() as u32;
        counts[i] = floor;
        given += floor;
        rema.push((exact - f64::from(floor), i));
    }
    rema.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rema.iter().take(total.saturating_sub(given) as usize) {
        counts[*i] += 1;
    }
    for (r, c) in regions.iter().zip(counts) {
        *out.entry(r.clone()).or_insert(0) += c;
    }
    out
}
