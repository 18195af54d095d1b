//! One engine tick for the 1,350 functions of the Azure Functions 2019 trace
//! (`../shared/traces/azure-functions-2019`), with their histories loaded: the trace is replayed
//! through the engine up to minute 960 (FireFleet policy), then one tick at minute 960 is timed
//! with that minute's samples and the instances of the replay. Skips with a message when the
//! trace is absent.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::BufReader;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use firefleet_autoscaler::sim::{SimConfig, Simulation};
use firefleet_autoscaler::trace::{Trace, TraceBuilder};
use firefleet_autoscaler::{EngineConfig, PolicyKind};

fn trace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/azure-functions-2019")
}

fn load() -> Option<Trace> {
    let mut b = TraceBuilder::new();
    let mut entries: Vec<_> = std::fs::read_dir(trace_dir()).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let r = BufReader::new(std::fs::File::open(e.path()).ok()?);
        b.add_file(&name, r).ok()?;
    }
    b.build().ok()
}

fn bench(c: &mut Criterion) {
    let Some(trace) = load() else {
        eprintln!(
            "tick bench skipped: trace not found at {}",
            trace_dir().display()
        );
        return;
    };
    for policy in [
        PolicyKind::FireFleet,
        PolicyKind::HybridHistogram,
        PolicyKind::Knative,
    ] {
        let cfg = EngineConfig::new(policy);
        let mut sim = Simulation::new(
            &trace,
            SimConfig {
                seed: 1,
                tick_ms: cfg.tick_ms,
                start_minute: 0,
                measure_from_minute: 0,
                end_minute: 960,
                concurrency: 1,
            },
        );
        let mut eng = sim.engine(cfg.clone());
        let mut last = None;
        while let Some((now, s, i)) = sim.advance() {
            let d = eng.tick(now, s, i);
            last = Some((now, s.to_vec(), i.clone()));
            sim.apply(&d);
        }
        let (now, samples, insts) = last.unwrap();
        eprintln!(
            "{policy}: {} functions, {} with instances, {} samples in the timed tick",
            eng.function_count(),
            insts.len(),
            samples.len()
        );
        c.bench_function(&format!("tick_1350_functions/{policy}"), |b| {
            b.iter_batched(
                || eng.clone(),
                // return the engine too: dropping its clone is not part of the tick
                |mut e| {
                    let d = e.tick(now + cfg.tick_ms, &samples, &insts);
                    (e, d)
                },
                BatchSize::LargeInput,
            )
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
