//! Placement throughput at fleet scale: 10,000 nodes over 5 clouds and 60 regions / edge
//! sites, 100,000 VM requests with sizes from the Azure VM trace 2017
//! (`../shared/traces/azure-vm-2017-requests`, 669,435 requests; the first 100,000 are used).
//! Falls back to a seeded synthetic size mix (and says so on stderr) when the trace is missing.
//!
//! Before the timed runs it prints the objective of the sampled search relative to the
//! exhaustive one on the first `PLACE_RATIO_REQUESTS` requests (default 5,000).
//! `PLACE_SAMPLE=per_bucket,buckets` sets the sampled search's parameters (default 16,4).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use firefleet_scheduler::{
    place, place_scored, Capacity, ClusterView, NodeView, PlacementRequest, TermWeights, Weights,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: usize = 10_000;
const REQUESTS: usize = 100_000;
const CLOUDS: usize = 5;
const REGIONS_PER_CLOUD: usize = 12;
/// Of each cloud's regions, this many are edge sites (small nodes, power budgets).
const EDGE_PER_CLOUD: usize = 4;

fn trace_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces/azure-vm-2017-requests/vm_requests_dev_test.csv.gz")
}

/// `(vcpus, memory MiB, tenant batch)` of the first `n` trace rows, or `None` if unreadable.
fn trace_sizes(n: usize) -> Option<Vec<(u32, u64, u64)>> {
    let file = std::fs::File::open(trace_path()).ok()?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::with_capacity(n);
    for line in reader.lines().skip(1) {
        let line = line.ok()?;
        let cols: Vec<&str> = line.split(',').collect();
        // split, arrival_bin_end_s, batch_in_bin, vcpus, mem_gb, ...
        let arrival: u64 = cols.get(1)?.parse().ok()?;
        let batch: u64 = cols.get(2)?.parse().ok()?;
        let vcpus: u32 = cols.get(3)?.parse().ok()?;
        let mem_gb: f64 = cols.get(4)?.parse().ok()?;
        out.push((vcpus, (mem_gb * 1024.0) as u64, arrival * 1000 + batch));
        if out.len() == n {
            break;
        }
    }
    (out.len() == n).then_some(out)
}

fn synthetic_sizes(n: usize, rng: &mut ChaCha8Rng) -> Vec<(u32, u64, u64)> {
    // The trace's main flavours and their shares (PROVENANCE.md).
    const MIX: [(u32, u64, f64); 6] = [
        (1, 1792, 0.57),
        (2, 3584, 0.196),
        (4, 7168, 0.10),
        (8, 14336, 0.094),
        (8, 57344, 0.024),
        (1, 768, 0.016),
    ];
    (0..n)
        .map(|i| {
            let mut x: f64 = rng.gen();
            let (v, m, _) = MIX
                .iter()
                .find(|(_, _, p)| {
                    x -= p;
                    x < 0.0
                })
                .copied()
                .unwrap_or(MIX[0]);
            (v, m, (i / 4) as u64)
        })
        .collect()
}

fn fleet(rng: &mut ChaCha8Rng) -> ClusterView {
    let regions: Vec<(usize, String, bool)> = (0..CLOUDS)
        .flat_map(|c| {
            (0..REGIONS_PER_CLOUD).map(move |r| (c, format!("c{c}-r{r}"), r < EDGE_PER_CLOUD))
        })
        .collect();
    let mut latency_ms = BTreeMap::new();
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate() {
            if i != j {
                let base = if a.0 == b.0 { 10 } else { 40 };
                latency_ms.insert(
                    (a.1.clone(), b.1.clone()),
                    base + ((i * 7 + j * 13) % 120) as u32,
                );
            }
        }
    }
    // Edge sites get 1 node in 5 of what a cloud region gets.
    let weights: Vec<usize> = regions.iter().map(|r| if r.2 { 1 } else { 5 }).collect();
    let total: usize = weights.iter().sum();
    let nodes = (0..NODES)
        .map(|i| {
            // Deterministic region assignment proportional to weights.
            let mut k = (i * total / NODES) as isize;
            let r = weights
                .iter()
                .position(|w| {
                    k -= *w as isize;
                    k < 0
                })
                .unwrap_or(0);
            let (cloud, region, edge) = &regions[r];
            let capacity = if *edge {
                Capacity {
                    vcpus: 16,
                    memory_mib: 65_536,
                    gpus: 0,
                }
            } else {
                Capacity {
                    vcpus: 64,
                    memory_mib: 262_144,
                    gpus: u32::from(i % 10 == 0) * 4,
                }
            };
            let mut n = NodeView::new(format!("n{i:05}").parse().unwrap(), capacity);
            n.labels.insert("cloud".into(), format!("c{cloud}"));
            n.labels.insert("region".into(), region.clone());
            n.labels.insert("zone".into(), format!("z{}", i % 3));
            n.runtimes = vec!["qemu".into(), "firecracker".into()];
            n.compliant = rng.gen_bool(0.9);
            n.reliability = rng.gen_range(0.95..1.0);
            n.risk = rng.gen_range(0.0..0.2);
            n.spot = rng.gen_bool(0.15);
            let discount = if n.spot { 0.3 } else { 1.0 };
            n.price_vcpu_hour = rng.gen_range(0.02..0.05) * discount;
            n.price_gib_hour = rng.gen_range(0.002..0.006) * discount;
            if *edge {
                n.power_budget_watts = Some(400);
            }
            n
        })
        .collect();
    ClusterView { nodes, latency_ms }
}

fn requests(sizes: &[(u32, u64, u64)], rng: &mut ChaCha8Rng) -> Vec<PlacementRequest> {
    let classes = ["", "web", "batch"];
    sizes
        .iter()
        .enumerate()
        .map(|(i, &(vcpus, memory_mib, batch))| {
            let mut r = PlacementRequest::new(
                format!("vm{i}").parse().unwrap(),
                Capacity {
                    vcpus,
                    memory_mib,
                    gpus: 0,
                },
            );
            r.runtime = Some("qemu".into());
            r.tenant = format!("t{}", batch % 500);
            r.group = Some(format!("b{batch}"));
            r.class = classes[i % 3].into();
            let c = rng.gen_range(0..CLOUDS);
            r.user_region = Some(format!("c{c}-r{}", rng.gen_range(0..REGIONS_PER_CLOUD)));
            if rng.gen_bool(0.1) {
                r.allowed_clouds = vec![format!("c{c}")];
            }
            r.require_compliant = rng.gen_bool(0.05);
            r.watts = 15 * vcpus;
            r
        })
        .collect()
}

/// Default weights per class; `PLACE_SAMPLE=per_bucket,buckets` overrides the sampled search.
fn weights() -> Weights {
    let mut w = Weights::default();
    if let Some((k, b)) = std::env::var("PLACE_SAMPLE").ok().and_then(|v| {
        let (k, b) = v.split_once(',')?;
        Some((k.parse().ok()?, b.parse().ok()?))
    }) {
        w.search = firefleet_scheduler::Search::Sampled {
            per_bucket: k,
            buckets: b,
        };
    }
    w.per_class.insert(
        "web".into(),
        TermWeights {
            latency: 3.0,
            ..TermWeights::default()
        },
    );
    w.per_class.insert(
        "batch".into(),
        TermWeights {
            cost: 3.0,
            latency: 0.2,
            ..TermWeights::default()
        },
    );
    w
}

fn setup() -> (ClusterView, Vec<PlacementRequest>) {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let sizes = trace_sizes(REQUESTS).unwrap_or_else(|| {
        eprintln!("azure-vm-2017-requests trace not found: using a seeded synthetic size mix");
        synthetic_sizes(REQUESTS, &mut rng)
    });
    (fleet(&mut rng), requests(&sizes, &mut rng))
}

fn objective(view: &ClusterView, reqs: &[PlacementRequest], w: &Weights) -> (f64, usize, f64) {
    let start = Instant::now();
    let out = place_scored(view, reqs, w, &mut ChaCha8Rng::seed_from_u64(1));
    let secs = start.elapsed().as_secs_f64();
    (
        out.iter().filter_map(|s| s.score).sum(),
        out.iter().filter(|s| s.score.is_some()).count(),
        secs,
    )
}

fn bench(c: &mut Criterion) {
    let (view, reqs) = setup();
    let n: usize = std::env::var("PLACE_RATIO_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let n = n.min(reqs.len());
    let (s, sp, st) = objective(&view, &reqs[..n], &weights());
    let (e, ep, et) = objective(&view, &reqs[..n], &weights().exhaustive());
    eprintln!(
        "objective on {n} requests: sampled {s:.2} ({sp} placed, {:.0}/s), exhaustive {e:.2} ({ep} placed, {:.0}/s), ratio {:.4}",
        n as f64 / st,
        n as f64 / et,
        s / e
    );

    let mut g = c.benchmark_group("place");
    g.sample_size(10);
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function("sampled_10k_nodes_100k_requests", |b| {
        b.iter_batched(
            || ChaCha8Rng::seed_from_u64(1),
            |mut rng| place(&view, &reqs, &weights(), &mut rng),
            BatchSize::LargeInput,
        )
    });
    let small = &reqs[..1_000];
    g.throughput(Throughput::Elements(small.len() as u64));
    g.bench_function("sampled_10k_nodes_1k_requests", |b| {
        b.iter(|| place(&view, small, &weights(), &mut ChaCha8Rng::seed_from_u64(1)))
    });
    g.bench_function("exhaustive_10k_nodes_1k_requests", |b| {
        b.iter(|| {
            place(
                &view,
                small,
                &weights().exhaustive(),
                &mut ChaCha8Rng::seed_from_u64(1),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
