//! Trace replay in simulated time, for `firefleet eval autoscale`.
//!
//! The simulator plays the controller's part: every tick it hands the engine what happened
//! ([`Sample`]s) and the instances ([`InstanceInfo`]), and applies the [`Decision`]s: it starts
//! instances up to `wanted` (pre-warm; counted as instance starts) and stops idle instances when
//! their keep-alive deadline passes (at the exact time, between ticks too). An instance that went
//! idle after the last decision has no deadline yet and is kept until the next decision.
//!
//! Model (documented in `docs/benchmarks.md`, section "Autoscaling policies"):
//! - the `n` invocations of a minute arrive evenly spaced with a seeded random phase:
//!   `minute_start + (i + phase) / n * 60 s`;
//! - each runs for a duration drawn from the function's duration percentiles (piecewise linear
//!   inverse CDF), seeded; the trace's median average duration where the function has none;
//! - an instance serves up to [`SimConfig::concurrency`] invocations at once (1 for the
//!   published results); an invocation goes to the fullest busy instance with room, else the
//!   most recently idle one; one that finds no instance with room is a cold start and starts a
//!   new instance, which serves it (the start-up latency is not modelled: it delays no other
//!   invocation);
//! - idle memory is GiB·s of warm instances serving nothing (the app's average allocated memory
//!   per instance; the trace median where unknown);
//! - the random numbers of (function, minute) come from their own seeded stream, so every policy
//!   sees exactly the same arrivals and durations.
//!
//! The simulator is pure like the engine: the caller owns the clock (the CLI times `tick`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::trace::Trace;
use crate::{Autoscaler, Decision, EngineConfig, FunctionParams, InstanceInfo, Sample};

/// Instances per function, as [`crate::Autoscaler::tick`] takes them.
pub type Instances = BTreeMap<String, Vec<InstanceInfo>>;

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimConfig {
    /// Seed of the arrival phases and durations.
    pub seed: u64,
    /// Engine tick (ms).
    pub tick_ms: u64,
    /// First minute replayed (0-based).
    pub start_minute: usize,
    /// Minute at which measuring starts (0-based; earlier minutes only warm the histories).
    pub measure_from_minute: usize,
    /// Minute at which the replay ends (exclusive).
    pub end_minute: usize,
    /// Invocations one instance serves at once (0 is taken as 1; the engine is told the same).
    pub concurrency: u32,
}

/// Per-function result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FunctionResult {
    /// Invocations in the measured window.
    pub invocations: u64,
    /// Cold starts among them.
    pub cold_starts: u64,
    /// Cold starts that found no instance at all (the others found every instance busy).
    pub cold_from_zero: u64,
    /// Idle memory (GiB·s).
    pub idle_gib_s: f64,
    /// The part of it held by instances that never served again (stopped idle, or still idle
    /// at the end); the rest was waiting for an invocation that came.
    pub wasted_gib_s: f64,
}

/// Totals over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimReport {
    /// Invocations.
    pub invocations: u64,
    /// Cold starts.
    pub cold_starts: u64,
    /// Cold starts that found no instance of the function at all.
    pub cold_from_zero: u64,
    /// Instances started (on demand and pre-warmed).
    pub instance_starts: u64,
    /// GiB·s held by warm instances that served nothing.
    pub idle_gib_s: f64,
    /// The part of `idle_gib_s` held by instances that never served again.
    pub wasted_gib_s: f64,
    /// Per function, in trace order.
    pub per_function: Vec<FunctionResult>,
}

#[derive(Debug, Clone)]
struct Inst {
    id: String,
    /// Invocations `(start, end)` still running at the start of the current tick or started
    /// since.
    running: Vec<(u64, u64)>,
    /// End of the last invocation to finish (<= now: idle since then).
    busy_until: u64,
    deadline: Option<u64>,
}

impl Inst {
    fn in_flight(&self, at: u64) -> u32 {
        self.running.iter().filter(|r| r.1 > at).count() as u32
    }
}

#[derive(Debug, Clone)]
struct SimFn {
    name: String,
    counts: Vec<u32>,
    mem_gib: f64,
    dur: crate::trace::DurationDist,
    insts: Vec<Inst>,
    next_id: u64,
    /// Arrivals `(time, duration)` of `minute`.
    minute: usize,
    arrivals: Vec<(u64, u64)>,
    cursor: usize,
    result: FunctionResult,
}

/// A replay in progress.
#[derive(Debug)]
pub struct Simulation {
    cfg: SimConfig,
    fns: Vec<SimFn>,
    index: HashMap<String, usize>,
    now_ms: u64,
    end_ms: u64,
    measure_ms: u64,
    instance_starts: u64,
    instances: BTreeMap<String, Vec<InstanceInfo>>,
    samples: Vec<Sample>,
}

const MINUTE_MS: u64 = 60_000;

/// SplitMix64: a small, good, seedable generator.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(state: &mut u64) -> f64 {
    (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64
}

impl Simulation {
    /// A replay of `trace` (functions in trace order, named by [`crate::trace::TraceFunction::name`]).
    pub fn new(trace: &Trace, mut cfg: SimConfig) -> Self {
        cfg.concurrency = cfg.concurrency.max(1);
        let mut index = HashMap::new();
        let fns: Vec<SimFn> = trace
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = f.name();
                index.insert(name.clone(), i);
                SimFn {
                    name,
                    counts: f.counts.clone(),
                    mem_gib: f.memory_mb.unwrap_or(trace.default_memory_mb) / 1024.0,
                    dur: f.duration.clone().unwrap_or_else(|| {
                        crate::trace::DurationDist::constant(trace.default_duration_ms)
                    }),
                    insts: Vec::new(),
                    next_id: 0,
                    minute: usize::MAX,
                    arrivals: Vec::new(),
                    cursor: 0,
                    result: FunctionResult::default(),
                }
            })
            .collect();
        let start = cfg.start_minute as u64 * MINUTE_MS;
        Simulation {
            end_ms: cfg.end_minute as u64 * MINUTE_MS,
            measure_ms: cfg.measure_from_minute as u64 * MINUTE_MS,
            cfg,
            fns,
            index,
            now_ms: start,
            instance_starts: 0,
            instances: BTreeMap::new(),
            samples: Vec::new(),
        }
    }

    /// An engine configured with `cfg` that knows every function of the replay (with its
    /// memory), as `eval` and the tick benchmark drive it.
    pub fn engine(&self, cfg: EngineConfig) -> Autoscaler {
        let mut engine = Autoscaler::new(cfg);
        for f in &self.fns {
            engine.upsert_function(
                &f.name,
                FunctionParams {
                    memory_mib: (f.mem_gib * 1024.0).round() as u32,
                    concurrency: self.cfg.concurrency,
                    ..FunctionParams::default()
                },
            );
        }
        engine
    }

    /// Function names, in trace order.
    pub fn function_names(&self) -> impl Iterator<Item = &str> {
        self.fns.iter().map(|f| f.name.as_str())
    }

    /// Ticks left.
    pub fn ticks_left(&self) -> u64 {
        self.end_ms.saturating_sub(self.now_ms) / self.cfg.tick_ms.max(1)
    }

    /// Simulates the next tick. Returns its end time, what happened and the instances, or `None`
    /// at the end of the replay.
    pub fn advance(&mut self) -> Option<(u64, &[Sample], &Instances)> {
        let t0 = self.now_ms;
        if t0 >= self.end_ms {
            return None;
        }
        let t1 = (t0 + self.cfg.tick_ms.max(1)).min(self.end_ms);
        self.now_ms = t1;
        self.samples.clear();
        let seed = self.cfg.seed;
        let measure = self.measure_ms;
        let conc = self.cfg.concurrency;
        for f in &mut self.fns {
            let starts = step_function(f, (t0, t1), seed, measure, conc, &mut self.samples);
            self.instance_starts += starts;
            let dirty = starts > 0
                || f.insts.iter().any(|i| i.busy_until >= t0)
                || self.instances.get(&f.name).map(Vec::len) != Some(f.insts.len());
            if dirty {
                refresh_instances(&mut self.instances, f, t1);
            }
        }
        Some((t1, &self.samples, &self.instances))
    }

    /// Applies the engine's decisions at the current time.
    pub fn apply(&mut self, decisions: &[Decision]) {
        let now = self.now_ms;
        for d in decisions {
            let Some(&fi) = self.index.get(&d.function) else {
                continue;
            };
            let f = &mut self.fns[fi];
            let mut changed = false;
            for inst in f.insts.iter_mut() {
                if inst.busy_until <= now {
                    if let Some(&t) = d.keep_alive_until_ms.get(&inst.id) {
                        inst.deadline = Some(t);
                    }
                }
            }
            // Stop what expires now.
            let before = f.insts.len();
            expire(f, now, self.measure_ms);
            changed |= f.insts.len() != before;
            // Start instances up to `wanted`.
            let wanted = d.wanted_total() as usize;
            while f.insts.len() < wanted {
                let id = format!("{}#{}", fi, f.next_id);
                f.next_id += 1;
                f.insts.push(Inst {
                    id,
                    running: Vec::new(),
                    busy_until: now,
                    deadline: None,
                });
                if now >= self.measure_ms {
                    self.instance_starts += 1;
                }
                changed = true;
            }
            if changed {
                refresh_instances(&mut self.instances, f, now);
            }
        }
    }

    /// The totals; idle instances still warm at the end count until the end.
    pub fn finish(mut self) -> SimReport {
        let end = self.end_ms;
        let measure = self.measure_ms;
        let mut r = SimReport {
            instance_starts: self.instance_starts,
            ..SimReport::default()
        };
        for f in &mut self.fns {
            for i in &f.insts {
                if i.busy_until < end {
                    let idle = idle_gib_s(f.mem_gib, i.busy_until, end, measure);
                    f.result.idle_gib_s += idle;
                    f.result.wasted_gib_s += idle;
                }
            }
            r.invocations += f.result.invocations;
            r.cold_starts += f.result.cold_starts;
            r.cold_from_zero += f.result.cold_from_zero;
            r.idle_gib_s += f.result.idle_gib_s;
            r.wasted_gib_s += f.result.wasted_gib_s;
            r.per_function.push(f.result);
        }
        r
    }
}

/// One point of [`hindsight_envelope`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EnvelopePoint {
    /// Price of a cold start (GiB·s) the choice minimised idle memory plus.
    pub cold_start_price_gib_s: f64,
    /// Cold starts of the per-function choices.
    pub cold_starts: u64,
    /// Idle memory of the per-function choices (GiB·s).
    pub idle_gib_s: f64,
}

/// A bound no policy made of these replays can beat: for each price, every function takes,
/// in hindsight, whichever replay gave it the least idle memory plus `price` per cold start.
/// `replays` are the per-function results of replays of the same trace and window (functions
/// in the same order). Not a policy (it knows the future); it shows how far a per-function
/// choice among the replayed policies could go.
pub fn hindsight_envelope(replays: &[&[FunctionResult]], prices: &[f64]) -> Vec<EnvelopePoint> {
    let n = replays.iter().map(|r| r.len()).min().unwrap_or(0);
    prices
        .iter()
        .map(|&price| {
            let mut point = EnvelopePoint {
                cold_start_price_gib_s: price,
                cold_starts: 0,
                idle_gib_s: 0.0,
            };
            for i in 0..n {
                let best = replays.iter().map(|r| r[i]).min_by(|a, b| {
                    let ca = a.idle_gib_s + price * a.cold_starts as f64;
                    let cb = b.idle_gib_s + price * b.cold_starts as f64;
                    ca.total_cmp(&cb)
                });
                if let Some(b) = best {
                    point.cold_starts += b.cold_starts;
                    point.idle_gib_s += b.idle_gib_s;
                }
            }
            point
        })
        .collect()
}

/// GiB·s of an idle interval, clipped to the measured window.
/// Records `f`'s instances as the engine will see them at `at` (none: the function is left out).
fn refresh_instances(instances: &mut Instances, f: &SimFn, at: u64) {
    if f.insts.is_empty() {
        instances.remove(&f.name);
        return;
    }
    let infos = f
        .insts
        .iter()
        .map(|i| InstanceInfo {
            id: i.id.clone(),
            region: String::new(),
            in_flight: i.in_flight(at),
            idle_since_ms: (i.busy_until <= at).then_some(i.busy_until),
            ready: true,
        })
        .collect();
    instances.insert(f.name.clone(), infos);
}

fn idle_gib_s(mem_gib: f64, from: u64, to: u64, measure: u64) -> f64 {
    let from = from.max(measure);
    if to <= from {
        return 0.0;
    }
    mem_gib * (to - from) as f64 / 1000.0
}

/// Stops idle instances whose deadline is at or before `t`.
fn expire(f: &mut SimFn, t: u64, measure: u64) {
    let mem = f.mem_gib;
    let mut idle = 0.0;
    f.insts.retain(|i| match i.deadline {
        Some(d) if d <= t && i.busy_until <= d => {
            idle += idle_gib_s(mem, i.busy_until, d, measure);
            false
        }
        _ => true,
    });
    f.result.idle_gib_s += idle;
    f.result.wasted_gib_s += idle;
}

fn load_minute(f: &mut SimFn, minute: usize, seed: u64) {
    f.minute = minute;
    f.arrivals.clear();
    f.cursor = 0;
    let n = f.counts.get(minute).copied().unwrap_or(0);
    if n == 0 {
        return;
    }
    let mut rng = seed ^ (minute as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in f.name.bytes().take(16) {
        rng = rng.rotate_left(5) ^ u64::from(b);
        splitmix(&mut rng);
    }
    let phase = unit(&mut rng);
    let start = minute as u64 * MINUTE_MS;
    for i in 0..n {
        let t = start + ((f64::from(i) + phase) / f64::from(n) * MINUTE_MS as f64) as u64;
        let d = f.dur.quantile(unit(&mut rng)).round() as u64;
        f.arrivals.push((t.min(start + MINUTE_MS - 1), d.max(1)));
    }
}

/// Runs one function over `[t0, t1)` with instances serving `conc` invocations at once;
/// returns the instances started.
fn step_function(
    f: &mut SimFn,
    (t0, t1): (u64, u64),
    seed: u64,
    measure: u64,
    conc: u32,
    samples: &mut Vec<Sample>,
) -> u64 {
    let mut starts = 0;
    let mut invocations = 0u64;
    let mut cold = 0u64;
    let mut peak = 0u32;
    for i in &mut f.insts {
        i.running.retain(|r| r.1 > t0);
    }
    let mut t = t0;
    loop {
        let minute = (t / MINUTE_MS) as usize;
        if f.minute != minute {
            load_minute(f, minute, seed);
        }
        while let Some(&(at, dur)) = f.arrivals.get(f.cursor) {
            if at >= t1 {
                break;
            }
            f.cursor += 1;
            if at < t0 {
                continue;
            }
            expire(f, at, measure);
            // A busy instance with room first (the fullest: packing keeps the others free to
            // be stopped), then the most recently idle one.
            let mut best: Option<(usize, (bool, u64))> = None;
            for (k, i) in f.insts.iter().enumerate() {
                let n = i.in_flight(at);
                if n >= conc {
                    continue;
                }
                let key = if n > 0 {
                    (true, u64::from(n))
                } else {
                    (false, i.busy_until)
                };
                if best.is_none_or(|(_, b)| key > b) {
                    best = Some((k, key));
                }
            }
            let measured = at >= measure;
            match best {
                Some((k, _)) => {
                    let i = &mut f.insts[k];
                    if i.busy_until <= at {
                        f.result.idle_gib_s += idle_gib_s(f.mem_gib, i.busy_until, at, measure);
                    }
                    i.running.push((at, at + dur));
                    i.busy_until = i.busy_until.max(at + dur);
                    i.deadline = None;
                }
                None => {
                    if measured && f.insts.is_empty() {
                        f.result.cold_from_zero += 1;
                    }
                    let id = format!("{}#{}", f.name.get(..8).unwrap_or(&f.name), f.next_id);
                    f.next_id += 1;
                    f.insts.push(Inst {
                        id,
                        running: vec![(at, at + dur)],
                        busy_until: at + dur,
                        deadline: None,
                    });
                    cold += 1;
                    if measured {
                        starts += 1;
                        f.result.cold_starts += 1;
                    }
                }
            }
            invocations += 1;
            if measured {
                f.result.invocations += 1;
            }
            let in_flight: u32 = f.insts.iter().map(|i| i.in_flight(at)).sum();
            peak = peak.max(in_flight);
        }
        let next_minute_start = (minute as u64 + 1) * MINUTE_MS;
        if next_minute_start >= t1 {
            break;
        }
        t = next_minute_start;
    }
    expire(f, t1, measure);
    if f.insts.is_empty() && invocations == 0 {
        return starts;
    }
    let mut in_flight_ms = 0;
    // Peak also counts invocations still running from earlier ticks.
    let mut running_at_t0 = 0u32;
    for (a, b) in f.insts.iter().flat_map(|i| i.running.iter()) {
        let (a, b) = (*a, *b);
        if b.min(t1) > a.max(t0) {
            in_flight_ms += b.min(t1) - a.max(t0);
        }
        if a < t0 && b > t0 {
            running_at_t0 += 1;
        }
    }
    peak = peak.max(running_at_t0);
    if invocations > 0 || in_flight_ms > 0 {
        samples.push(Sample {
            function: f.name.clone(),
            region: String::new(),
            invocations,
            peak_in_flight: peak,
            cold_starts: cold,
            in_flight_ms,
        });
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceBuilder;
    use crate::{Autoscaler, EngineConfig, FunctionParams, PolicyKind};

    fn trace(rows: &[&[u32]]) -> Trace {
        let n = rows[0].len();
        let mut text = String::from("HashFunction,HashOwner,HashApp");
        for m in 1..=n {
            text.push_str(&format!(",minute_{m}"));
        }
        text.push('\n');
        for (k, r) in rows.iter().enumerate() {
            text.push_str(&format!("f{k},f{k},f{k}"));
            for c in *r {
                text.push_str(&format!(",{c}"));
            }
            text.push('\n');
        }
        let mut b = TraceBuilder::new();
        b.add_invocations("t_inv.csv", text.as_bytes())
            .expect("parses");
        b.build().expect("builds")
    }

    fn run(t: &Trace, policy: PolicyKind) -> SimReport {
        run_with(t, policy, 1)
    }

    fn run_with(t: &Trace, policy: PolicyKind, concurrency: u32) -> SimReport {
        let cfg = EngineConfig::new(policy);
        let mut eng = Autoscaler::new(cfg.clone());
        let mut sim = Simulation::new(
            t,
            SimConfig {
                seed: 1,
                tick_ms: cfg.tick_ms,
                start_minute: 0,
                measure_from_minute: 0,
                end_minute: t.minutes,
                concurrency,
            },
        );
        let names: Vec<String> = sim.function_names().map(str::to_owned).collect();
        for n in &names {
            eng.upsert_function(n, FunctionParams::default());
        }
        while let Some((now, s, i)) = sim.advance() {
            let d = eng.tick(now, s, i);
            sim.apply(&d);
        }
        sim.finish()
    }

    #[test]
    fn fixed_keep_alive_cold_starts_only_after_ten_idle_minutes() {
        // invocations at minutes 0, 5, 20 (gap 15 > 10), 25
        let mut row = vec![0u32; 40];
        for m in [0, 5, 20, 25] {
            row[m] = 1;
        }
        let t = trace(&[&row]);
        let r = run(&t, PolicyKind::FIXED_10M);
        assert_eq!(r.invocations, 4);
        assert_eq!(r.cold_starts, 2);
        assert_eq!(r.cold_from_zero, 2, "both after the instance was stopped");
        assert_eq!(r.instance_starts, 2);
        // the two 10-minute waits that ended in a stop are wasted, the 5-minute ones served
        let wasted = 0.125 * 20.0 * 60.0;
        assert!(
            (r.wasted_gib_s - wasted).abs() < 0.125 * 60.0,
            "{} vs {wasted}",
            r.wasted_gib_s
        );
        // idle: ~5 min + 10 min + ~5 min + 10 min (ends at minute ~35 < 40), 128 MiB default
        let expect = 0.125 * 30.0 * 60.0;
        assert!(
            (r.idle_gib_s - expect).abs() < 0.125 * 120.0,
            "{} vs {expect}",
            r.idle_gib_s
        );
    }

    #[test]
    fn hindsight_envelope_takes_each_function_s_best_replay() {
        let fr = |c: u64, idle: f64| FunctionResult {
            invocations: 10,
            cold_starts: c,
            idle_gib_s: idle,
            ..FunctionResult::default()
        };
        // a: cheap and cold; b: warm and costly; function 1 is better under b at any price
        let a = [fr(5, 10.0), fr(4, 100.0)];
        let b = [fr(0, 600.0), fr(0, 50.0)];
        let pts = hindsight_envelope(&[&a, &b], &[1.0, 1000.0]);
        assert_eq!(pts[0].cold_starts, 5);
        assert!((pts[0].idle_gib_s - 60.0).abs() < 1e-9);
        assert_eq!(pts[1].cold_starts, 0);
        assert!((pts[1].idle_gib_s - 650.0).abs() < 1e-9);
    }

    #[test]
    fn instances_serve_up_to_their_concurrency() {
        // 6 invocations of 30 s in the first minute, 10 s apart: 3 overlap at a time.
        let mut row = vec![0u32; 20];
        row[0] = 6;
        let mut t = trace(&[&row]);
        t.default_duration_ms = 30_000.0;
        let one = run_with(&t, PolicyKind::FIXED_10M, 1);
        let three = run_with(&t, PolicyKind::FIXED_10M, 3);
        let two = run_with(&t, PolicyKind::FIXED_10M, 2);
        assert_eq!(one.invocations, 6);
        assert_eq!(three.invocations, 6);
        assert_eq!(one.cold_starts, 3, "one instance per invocation in flight");
        assert_eq!(one.cold_from_zero, 1, "the others found the first one busy");
        assert_eq!(two.cold_starts, 2);
        assert_eq!(three.cold_starts, 1, "one instance serves all three");
        assert!(three.idle_gib_s < one.idle_gib_s);
    }

    #[test]
    fn same_arrivals_for_every_policy_and_deterministic() {
        let row: Vec<u32> = (0..60).map(|m| [0, 3, 0, 0, 1, 7][m % 6]).collect();
        let t = trace(&[&row, &[1u32; 60]]);
        let a = run(&t, PolicyKind::Knative);
        let b = run(&t, PolicyKind::Knative);
        assert_eq!(a, b);
        let c = run(&t, PolicyKind::FireFleet);
        assert_eq!(a.invocations, c.invocations);
        assert_eq!(
            a.invocations,
            row.iter().map(|&x| u64::from(x)).sum::<u64>() + 60
        );
    }
}
