//! `firefleet eval`: offline evaluations of the decision engines on recorded traces.
//!
//! `eval autoscale` replays a function trace in simulated time through the autoscaling engine
//! (the same `Autoscaler` the server's controller calls), once per policy, and reports cold
//! starts, idle memory, instance starts and the measured decision time per tick.

use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use firefleet_autoscaler::sim::{
    hindsight_envelope, EnvelopePoint, FunctionResult, SimConfig, SimReport, Simulation,
};
use firefleet_autoscaler::trace::{file_kind, Trace, TraceBuilder};
use firefleet_autoscaler::{EngineConfig, FireFleetParams, PolicyKind};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::args::{Global, Output};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Replay a function trace (Azure Functions 2019 layout) through the autoscaler, per policy.
    Autoscale(AutoscaleArgs),
}

#[derive(Debug, Args)]
pub struct AutoscaleArgs {
    /// Folder with the trace's invocation, duration and memory CSV files.
    #[arg(long)]
    pub trace: PathBuf,
    /// Policies to run (firefleet, fixed-10m, fixed:<secs>, hybrid, knative); all four if none.
    #[arg(long = "policy")]
    pub policies: Vec<PolicyKind>,
    /// Write a plot (SVG) of the results here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Minutes of the day used for tuning and warming histories; measuring starts after them.
    #[arg(long, default_value_t = 960)]
    pub train_minutes: usize,
    /// Engine tick in simulated milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub tick_ms: u64,
    /// Seed of the arrival phases and durations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Invocations one instance serves at once (1 to 1000). 1 (FireFleet's default) is the
    /// model of the published results; a large value approaches the ATC'20 paper's, where one
    /// loaded image per application serves every invocation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Grid-search the FireFleet parameters on the training minutes only (measured on
    /// minutes train/2..train), print the grid, and evaluate with the best.
    #[arg(long)]
    pub tune: bool,
    /// Also print a bound: every function takes, in hindsight, whichever of the replayed
    /// policies served it best at a price per cold start (run it with many policies, e.g. a
    /// ladder of fixed keep-alives; it is not a policy, it knows the future).
    #[arg(long)]
    pub envelope: bool,
}

pub fn run(g: &Global, cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Autoscale(a) => autoscale(g, a),
    }
}

/// Reads every trace file of `dir` (by name: invocations, durations, memory).
pub fn load_trace(dir: &Path) -> anyhow::Result<Trace> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading trace folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    let mut b = TraceBuilder::new();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_kind(&name).is_none() {
            continue;
        }
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        b.add_file(&name, BufReader::new(file))?;
    }
    b.build()
        .with_context(|| format!("no trace in {}", dir.display()))
}

/// One policy's results over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub invocations: u64,
    pub cold_starts: u64,
    pub cold_start_rate: f64,
    /// Per-function cold-start rate percentiles (functions invoked in the window).
    pub fn_cold_rate_p50: f64,
    pub fn_cold_rate_p75: f64,
    pub fn_cold_rate_p90: f64,
    /// Cold starts that found no instance at all (the rest found every instance busy).
    pub cold_from_zero: u64,
    pub idle_gib_s: f64,
    /// Idle memory of instances that never served again.
    pub wasted_gib_s: f64,
    pub instance_starts: u64,
    pub ticks: u64,
    pub tick_mean_ms: f64,
    pub tick_max_ms: f64,
    /// Sorted per-function cold-start rates (for the CDF).
    #[serde(skip)]
    pub fn_rates: Vec<f64>,
    /// Per-function results, in trace order (for the envelope).
    #[serde(skip)]
    pub per_function: Vec<FunctionResult>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[k.min(sorted.len()) - 1]
}

/// Replays `trace` through an engine with `cfg` from minute 0 to `end`, measuring from
/// `measure_from`.
fn replay(
    trace: &Trace,
    cfg: &EngineConfig,
    (seed, concurrency): (u64, u32),
    measure_from: usize,
    end: usize,
    bar: Option<&ProgressBar>,
) -> PolicyResult {
    let mut sim = Simulation::new(
        trace,
        SimConfig {
            seed,
            tick_ms: cfg.tick_ms,
            start_minute: 0,
            measure_from_minute: measure_from,
            end_minute: end,
            concurrency,
        },
    );
    let mut eng = sim.engine(cfg.clone());
    let measure_ms = measure_from as u64 * 60_000;
    let (mut ticks, mut total_s, mut max_s) = (0u64, 0f64, 0f64);
    while let Some((now, samples, insts)) = sim.advance() {
        let t = Instant::now();
        let d = eng.tick(now, samples, insts);
        let dt = t.elapsed().as_secs_f64();
        if now > measure_ms {
            ticks += 1;
            total_s += dt;
            max_s = max_s.max(dt);
        }
        sim.apply(&d);
        if let Some(b) = bar {
            b.inc(1);
        }
    }
    let r = sim.finish();
    summarise(cfg.policy.to_string(), r, ticks, total_s, max_s)
}

fn summarise(policy: String, r: SimReport, ticks: u64, total_s: f64, max_s: f64) -> PolicyResult {
    let mut rates: Vec<f64> = r
        .per_function
        .iter()
        .filter(|f| f.invocations > 0)
        .map(|f| f.cold_starts as f64 / f.invocations as f64)
        .collect();
    rates.sort_by(f64::total_cmp);
    PolicyResult {
        policy,
        invocations: r.invocations,
        cold_starts: r.cold_starts,
        cold_start_rate: r.cold_starts as f64 / (r.invocations.max(1)) as f64,
        fn_cold_rate_p50: percentile(&rates, 50.0),
        fn_cold_rate_p75: percentile(&rates, 75.0),
        fn_cold_rate_p90: percentile(&rates, 90.0),
        cold_from_zero: r.cold_from_zero,
        idle_gib_s: r.idle_gib_s,
        wasted_gib_s: r.wasted_gib_s,
        instance_starts: r.instance_starts,
        ticks,
        tick_mean_ms: if ticks > 0 {
            total_s * 1000.0 / ticks as f64
        } else {
            0.0
        },
        tick_max_ms: max_s * 1000.0,
        fn_rates: rates,
        per_function: r.per_function,
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

#[derive(Debug, Serialize)]
struct Report {
    trace: String,
    functions: usize,
    minutes: usize,
    train_minutes: usize,
    tick_ms: u64,
    seed: u64,
    concurrency: u32,
    firefleet: FireFleetParams,
    tuning: Vec<TuneRow>,
    results: Vec<PolicyResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    envelope: Vec<EnvelopePoint>,
}

#[derive(Debug, Clone, Serialize)]
struct TuneRow {
    params: String,
    cold_start_rate: f64,
    idle_gib_s: f64,
}

fn autoscale(g: &Global, a: AutoscaleArgs) -> anyhow::Result<()> {
    let trace = load_trace(&a.trace)?;
    let end = trace.minutes;
    anyhow::ensure!(
        a.train_minutes < end,
        "--train-minutes {} leaves nothing to measure (trace has {end} minutes)",
        a.train_minutes
    );
    let policies = if a.policies.is_empty() {
        vec![
            PolicyKind::FireFleet,
            PolicyKind::FIXED_10M,
            PolicyKind::HybridHistogram,
            PolicyKind::Knative,
        ]
    } else {
        a.policies.clone()
    };
    let show_bar = std::io::stderr().is_terminal() && g.output == Output::Table;
    let new_bar = |len: u64, msg: String| {
        if !show_bar {
            return None;
        }
        let b = ProgressBar::new(len);
        if let Ok(s) = ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ticks {eta}")
        {
            b.set_style(s.progress_chars("=> "));
        }
        b.set_message(msg);
        Some(b)
    };
    let base = |p: PolicyKind| {
        let mut c = EngineConfig::new(p);
        c.tick_ms = a.tick_ms;
        c.seed = a.seed;
        c
    };

    let mut ff = FireFleetParams::default();
    let mut tuning = Vec::new();
    if a.tune {
        let (best, rows) = tune(&trace, &a, &base, &new_bar)?;
        ff = best;
        tuning = rows;
    }

    let mut results = Vec::new();
    for p in &policies {
        let mut cfg = base(*p);
        cfg.firefleet = ff.clone();
        let ticks = (end as u64 * 60_000) / a.tick_ms.max(1);
        let bar = new_bar(ticks, p.to_string());
        let r = replay(
            &trace,
            &cfg,
            (a.seed, a.concurrency),
            a.train_minutes,
            end,
            bar.as_ref(),
        );
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        results.push(r);
    }

    if let Some(path) = &a.plot {
        plot(path, &results).with_context(|| format!("writing plot {}", path.display()))?;
    }
    let report = Report {
        trace: a.trace.display().to_string(),
        functions: trace.functions.len(),
        minutes: end,
        train_minutes: a.train_minutes,
        tick_ms: a.tick_ms,
        seed: a.seed,
        concurrency: a.concurrency,
        firefleet: ff,
        tuning,
        envelope: if a.envelope {
            let replays: Vec<&[FunctionResult]> =
                results.iter().map(|r| r.per_function.as_slice()).collect();
            hindsight_envelope(&replays, &ENVELOPE_PRICES)
        } else {
            Vec::new()
        },
        results,
    };
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            if !report.tuning.is_empty() {
                let rows: Vec<Vec<String>> = report
                    .tuning
                    .iter()
                    .map(|t| {
                        if t.cold_start_rate.is_nan() {
                            // the "chosen" line
                            vec![t.params.clone(), "-".into(), "-".into()]
                        } else {
                            vec![
                                t.params.clone(),
                                pct(t.cold_start_rate),
                                format!("{:.0}", t.idle_gib_s),
                            ]
                        }
                    })
                    .collect();
                println!(
                    "tuning (minutes {}..{}):",
                    a.train_minutes / 2,
                    a.train_minutes
                );
                print!(
                    "{}",
                    crate::output::table(&["params", "cold", "idle GiB*s"], &rows)
                );
                println!();
            }
            println!(
                "{} functions, minutes {}..{} measured (histories warmed on 0..{}), tick {} ms, {} invocation(s) per instance at once",
                report.functions, a.train_minutes, end, a.train_minutes, a.tick_ms, a.concurrency
            );
            let rows: Vec<Vec<String>> = report
                .results
                .iter()
                .map(|r| {
                    vec![
                        r.policy.clone(),
                        pct(r.cold_start_rate),
                        pct(r.fn_cold_rate_p50),
                        pct(r.fn_cold_rate_p75),
                        pct(r.fn_cold_rate_p90),
                        format!("{}/{}", r.cold_from_zero, r.cold_starts),
                        format!("{:.0}", r.idle_gib_s),
                        format!("{:.0}", r.wasted_gib_s),
                        r.instance_starts.to_string(),
                        format!("{:.3} / {:.2}", r.tick_mean_ms, r.tick_max_ms),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(
                    &[
                        "policy",
                        "cold starts",
                        "fn p50",
                        "fn p75",
                        "fn p90",
                        "cold from zero",
                        "idle GiB*s",
                        "of it wasted",
                        "instance starts",
                        "tick mean/max ms",
                    ],
                    &rows
                )
            );
            if !report.envelope.is_empty() {
                let total = report.results.first().map_or(0, |r| r.invocations).max(1);
                let rows: Vec<Vec<String>> = report
                    .envelope
                    .iter()
                    .map(|e| {
                        vec![
                            format!("{:.0}", e.cold_start_price_gib_s),
                            pct(e.cold_starts as f64 / total as f64),
                            e.cold_starts.to_string(),
                            format!("{:.0}", e.idle_gib_s),
                        ]
                    })
                    .collect();
                println!();
                println!(
                    "hindsight envelope (each function's best of these {} replays; a bound, not a policy):",
                    report.results.len()
                );
                print!(
                    "{}",
                    crate::output::table(
                        &["price GiB*s", "cold starts", "count", "idle GiB*s"],
                        &rows
                    )
                );
            }
        }
    }
    Ok(())
}

/// Prices of a cold start (GiB*s) at which `--envelope` makes its hindsight choice.
const ENVELOPE_PRICES: [f64; 10] = [
    100.0, 200.0, 300.0, 500.0, 800.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0,
];

/// The grid searched by `--tune`: the price of a cold start (GiB*s) and the pool window.
fn grid() -> Vec<FireFleetParams> {
    let mut out = Vec::new();
    for cost in [200.0, 300.0, 500.0] {
        for pool_min in [10u64, 20] {
            out.push(FireFleetParams {
                cold_start_cost_gib_s: cost,
                pool_window_ms: pool_min * 60_000,
                ..FireFleetParams::default()
            });
        }
    }
    out
}

fn describe(p: &FireFleetParams) -> String {
    format!(
        "cold-start cost {} GiB*s, pool window {} min",
        p.cold_start_cost_gib_s,
        p.pool_window_ms / 60_000
    )
}

type NewBar<'a> = dyn Fn(u64, String) -> Option<ProgressBar> + 'a;

/// Grid search on the training minutes only: replay minutes 0..train, measure train/2..train.
/// Picks the setting with the fewest cold starts among those with less idle memory than both
/// the fixed 10-minute keep-alive and the hybrid policy on the same minutes; if none qualifies,
/// the one with the least idle memory among those with fewer cold starts than fixed.
fn tune(
    trace: &Trace,
    a: &AutoscaleArgs,
    base: &dyn Fn(PolicyKind) -> EngineConfig,
    new_bar: &NewBar<'_>,
) -> anyhow::Result<(FireFleetParams, Vec<TuneRow>)> {
    let end = a.train_minutes;
    let from = end / 2;
    let ticks = (end as u64 * 60_000) / a.tick_ms.max(1);
    let run = |cfg: &EngineConfig, label: String| {
        let bar = new_bar(ticks, label);
        let r = replay(trace, cfg, (a.seed, a.concurrency), from, end, bar.as_ref());
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        r
    };
    let fixed = run(&base(PolicyKind::FIXED_10M), "tune: fixed-10m".into());
    let hybrid = run(&base(PolicyKind::HybridHistogram), "tune: hybrid".into());
    let mut rows = vec![
        TuneRow {
            params: "(fixed-10m)".into(),
            cold_start_rate: fixed.cold_start_rate,
            idle_gib_s: fixed.idle_gib_s,
        },
        TuneRow {
            params: "(hybrid)".into(),
            cold_start_rate: hybrid.cold_start_rate,
            idle_gib_s: hybrid.idle_gib_s,
        },
    ];
    let mut scored: Vec<(FireFleetParams, f64, f64)> = Vec::new();
    let g = grid();
    let n = g.len();
    for (i, p) in g.into_iter().enumerate() {
        let mut cfg = base(PolicyKind::FireFleet);
        cfg.firefleet = p.clone();
        let r = run(&cfg, format!("tune {}/{n}", i + 1));
        rows.push(TuneRow {
            params: describe(&p),
            cold_start_rate: r.cold_start_rate,
            idle_gib_s: r.idle_gib_s,
        });
        scored.push((p, r.cold_start_rate, r.idle_gib_s));
    }
    let cap = fixed.idle_gib_s.min(hybrid.idle_gib_s);
    let best = scored
        .iter()
        .filter(|s| s.2 < cap && s.1 < fixed.cold_start_rate)
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .or_else(|| {
            scored
                .iter()
                .filter(|s| s.1 < fixed.cold_start_rate)
                .min_by(|x, y| x.2.total_cmp(&y.2))
        })
        .or_else(|| scored.iter().min_by(|x, y| x.1.total_cmp(&y.1)))
        .map(|s| s.0.clone())
        .unwrap_or_default();
    rows.push(TuneRow {
        params: format!("chosen: {}", describe(&best)),
        cold_start_rate: f64::NAN,
        idle_gib_s: f64::NAN,
    });
    Ok((best, rows))
}

const COLORS: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(140, 86, 75),
];

/// Left: cold-start rate against idle memory per policy; right: CDF of per-function cold-start
/// rates.
fn plot(path: &Path, results: &[PolicyResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(560);
    let xmax = results.iter().map(|r| r.idle_gib_s).fold(1.0f64, f64::max) * 1.25;
    let ymax = results
        .iter()
        .map(|r| r.cold_start_rate * 100.0)
        .fold(0.1f64, f64::max)
        * 1.25;
    let mut ch = ChartBuilder::on(&left)
        .caption(
            "Cold starts vs idle memory (minutes 960-1440)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    ch.configure_mesh()
        .x_desc("idle memory (GiB*s, thousands)")
        .y_desc("cold-start rate (%)")
        .x_label_formatter(&|x| format!("{:.0}", x / 1000.0))
        .draw()?;
    for (i, r) in results.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let p = (r.idle_gib_s, r.cold_start_rate * 100.0);
        ch.draw_series(std::iter::once(
            EmptyElement::at(p)
                + Circle::new((0, 0), 6, c.filled())
                + Text::new(r.policy.clone(), (9, -14), ("sans-serif", 14).into_font()),
        ))?;
    }
    let mut cdf = ChartBuilder::on(&right)
        .caption("CDF of per-function cold-start rate", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..100f64, 0f64..1f64)?;
    cdf.configure_mesh()
        .x_desc("cold-start rate of a function (%)")
        .y_desc("share of functions")
        .draw()?;
    for (i, r) in results.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let n = r.fn_rates.len().max(1) as f64;
        let mut pts: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        for (k, x) in r.fn_rates.iter().enumerate() {
            pts.push((x * 100.0, k as f64 / n));
            pts.push((x * 100.0, (k + 1) as f64 / n));
        }
        pts.push((100.0, 1.0));
        cdf.draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(r.policy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}
