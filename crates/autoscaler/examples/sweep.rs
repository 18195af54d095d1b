//! Developer tool: replays the Azure trace for one or more policies / FireFleet settings and
//! prints cold starts and idle memory (what `firefleet eval autoscale` does, without the CLI).
//! `cargo run --release -p firefleet-autoscaler --example sweep -- FROM END POLICY[:cost] ...`

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::BufReader;
use std::path::PathBuf;

use firefleet_autoscaler::sim::{SimConfig, Simulation};
use firefleet_autoscaler::trace::{file_kind, FileKind, TraceBuilder};
use firefleet_autoscaler::{Autoscaler, EngineConfig, FunctionParams, PolicyKind};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let from: usize = args[0].parse().unwrap();
    let end: usize = args[1].parse().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces/azure-functions-2019");
    let mut b = TraceBuilder::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(kind) = file_kind(&name) else {
            continue;
        };
        let r = BufReader::new(std::fs::File::open(e.path()).unwrap());
        match kind {
            FileKind::Invocations => b.add_invocations(&name, r).unwrap(),
            FileKind::Durations => b.add_durations(&name, r).unwrap(),
            FileKind::Memory => b.add_memory(&name, r).unwrap(),
        }
    }
    let trace = b.build().unwrap();
    for spec in &args[2..] {
        let mut parts = spec.split(',');
        let policy: PolicyKind = parts.next().unwrap().parse().unwrap();
        let mut cfg = EngineConfig::new(policy);
        for kv in parts {
            let (k, v) = kv.split_once('=').unwrap();
            let f = &mut cfg.firefleet;
            match k {
                "cost" => f.cold_start_cost_gib_s = v.parse().unwrap(),
                "rare" => f.rare_keep_alive_ms = v.parse::<u64>().unwrap() * 1000,
                "extra" => f.extra_keep_alive_ms = v.parse::<u64>().unwrap() * 1000,
                "pool" => f.pool_window_ms = v.parse::<u64>().unwrap() * 1000,
                "dense" => f.dense_fraction = v.parse().unwrap(),
                "head" => f.forecast_headroom = v.parse().unwrap(),
                "minits" => f.min_idle_samples = v.parse().unwrap(),
                "tick" => cfg.tick_ms = v.parse().unwrap(),
                _ => panic!("unknown {k}"),
            }
        }
        let mut eng = Autoscaler::new(cfg.clone());
        let mut sim = Simulation::new(
            &trace,
            SimConfig {
                seed: 1,
                tick_ms: cfg.tick_ms,
                start_minute: 0,
                measure_from_minute: from,
                end_minute: end,
            },
        );
        for (f, name) in trace.functions.iter().zip(sim.function_names()) {
            let memory_mib = f.memory_mb.unwrap_or(trace.default_memory_mb).round() as u32;
            eng.upsert_function(
                name,
                FunctionParams {
                    memory_mib,
                    ..FunctionParams::default()
                },
            );
        }
        let t = std::time::Instant::now();
        while let Some((now, s, i)) = sim.advance() {
            let d = eng.tick(now, s, i);
            sim.apply(&d);
        }
        let r = sim.finish();
        // split by density over the measured window
        let (mut dense, mut sparse) = ((0u64, 0u64, 0f64), (0u64, 0u64, 0f64));
        for (f, pf) in trace.functions.iter().zip(&r.per_function) {
            let active = f.counts[from..end].iter().filter(|&&c| c > 0).count();
            let slot = if active * 10 >= (end - from) * 8 {
                &mut dense
            } else {
                &mut sparse
            };
            slot.0 += pf.invocations;
            slot.1 += pf.cold_starts;
            slot.2 += pf.idle_gib_s;
        }
        println!(
            "{spec:<40} cold {:.3}% idle {:>9.0} starts {:>6} | dense cold {} idle {:.0} | sparse cold {} idle {:.0} | {:.1}s",
            100.0 * r.cold_starts as f64 / r.invocations as f64,
            r.idle_gib_s,
            r.instance_starts,
            dense.1, dense.2, sparse.1, sparse.2,
            t.elapsed().as_secs_f64()
        );
    }
}
