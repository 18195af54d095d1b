//! Properties of `place` over random clusters and batches.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;

use firefleet_scheduler::{
    place, place_scored, Capacity, ClusterView, NodeView, Placement, PlacementRequest, Search,
    Weights,
};
use firefleet_types::{Labels, NodeId};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RUNTIMES: [&str; 2] = ["qemu", "firecracker"];
const ZONES: [&str; 2] = ["a", "b"];
const CLOUDS: [&str; 2] = ["aws", "edge"];
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const TENANTS: [&str; 3] = ["t1", "t2", "t3"];

#[derive(Debug, Clone)]
struct NodeSeed {
    vcpus: u32,
    mem: u64,
    gpus: u32,
    alloc: (u32, u64, u32),
    ready: bool,
    cordoned: bool,
    rt: usize,
    zone: usize,
    cloud: usize,
    region: usize,
    dedicated: usize,
    compliant: bool,
    power: Option<(u32, u32)>,
    scores: (f64, f64, f64, f64, bool),
    tenants: (u32, u32),
    group: u32,
}

fn arb_seed() -> impl Strategy<Value = NodeSeed> {
    (
        (
            0u32..16,
            0u64..16384,
            0u32..3,
            0u32..20,
            0u64..20000,
            0u32..3,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            0usize..4,
            0usize..3,
            0usize..3,
            0usize..4,
        ),
        (
            0usize..8,
            prop::bool::weighted(0.8),
            prop::option::of((0u32..600, 0u32..700)),
        ),
        (
            0.0f64..1.0,
            0.0f64..1.0,
            0.0f64..0.1,
            0.0f64..0.02,
            any::<bool>(),
        ),
        (0u32..4, 0u32..4, 0u32..3),
    )
        .prop_map(
            |(
                (vcpus, mem, gpus, av, am, ag),
                (ready, cordoned, rt, zone, cloud, region),
                (dedicated, compliant, power),
                scores,
                (t1, t2, group),
            )| NodeSeed {
                vcpus,
                mem,
                gpus,
                alloc: (av, am, ag),
                ready,
                cordoned,
                rt,
                zone,
                cloud,
                region,
                dedicated,
                compliant,
                power,
                scores,
                tenants: (t1, t2),
                group,
            },
        )
}

fn build_node(i: usize, s: NodeSeed) -> NodeView {
    let mut labels = Labels::new();
    if s.zone < ZONES.len() {
        labels.insert("zone".into(), ZONES[s.zone].into());
    }
    if s.cloud < CLOUDS.len() {
        labels.insert("cloud".into(), CLOUDS[s.cloud].into());
    }
    if s.region < REGIONS.len() {
        labels.insert("region".into(), REGIONS[s.region].into());
    }
    if s.dedicated < TENANTS.len() {
        labels.insert("dedicated".into(), TENANTS[s.dedicated].into());
    }
    let capacity = Capacity {
        vcpus: s.vcpus,
        memory_mib: s.mem,
        gpus: s.gpus,
    };
    let mut n = NodeView::new(format!("n{i}").parse().unwrap(), capacity);
    n.labels = labels;
    n.allocated = Capacity {
        vcpus: s.alloc.0.min(s.vcpus + 2),
        memory_mib: s.alloc.1.min(s.mem + 100),
        gpus: s.alloc.2,
    };
    // Mostly ready and uncordoned, so that placements happen.
    n.ready = s.ready || s.rt != 0;
    n.cordoned = s.cordoned && s.rt == 0;
    n.runtimes = RUNTIMES
        .iter()
        .enumerate()
        .filter(|(b, _)| s.rt & (1 << b) != 0)
        .map(|(_, r)| r.to_string())
        .collect();
    n.compliant = s.compliant;
    if let Some((budget, used)) = s.power {
        n.power_budget_watts = Some(budget);
        n.power_used_watts = used;
    }
    (
        n.reliability,
        n.risk,
        n.price_vcpu_hour,
        n.price_gib_hour,
        n.spot,
    ) = s.scores;
    n.tenants.insert("t1".into(), s.tenants.0);
    n.tenants.insert("t2".into(), s.tenants.1);
    if s.group > 0 {
        n.groups.insert("g0".into(), s.group);
    }
    n
}

fn latency_table() -> BTreeMap<(String, String), u32> {
    let mut t = BTreeMap::new();
    for (i, a) in REGIONS.iter().enumerate() {
        for (j, b) in REGIONS.iter().enumerate() {
            if i != j {
                t.insert((a.to_string(), b.to_string()), 20 * (i + j) as u32);
            }
        }
    }
    t
}

fn arb_cluster() -> impl Strategy<Value = ClusterView> {
    prop::collection::vec(arb_seed(), 0..24).prop_map(|seeds| ClusterView {
        nodes: seeds
            .into_iter()
            .enumerate()
            .map(|(i, s)| build_node(i, s))
            .collect(),
        latency_ms: latency_table(),
    })
}

fn arb_requests() -> impl Strategy<Value = Vec<PlacementRequest>> {
    prop::collection::vec(
        (
            (
                1u32..6,
                64u64..4096,
                0u32..2,
                0usize..3,
                0usize..3,
                0usize..3,
            ),
            (
                0usize..4,
                0usize..4,
                any::<bool>(),
                0u32..200,
                0usize..3,
                0usize..4,
            ),
        ),
        0..30,
    )
    .prop_map(|reqs| {
        reqs.into_iter()
            .enumerate()
            .map(
                |(
                    i,
                    (
                        (vcpus, mem, gpus, rt, zone, tenant),
                        (cloud, region, compliant, watts, group, user),
                    ),
                )| {
                    let resources = Capacity {
                        vcpus,
                        memory_mib: mem,
                        gpus: u32::from(gpus == 1 && i % 3 == 0),
                    };
                    let mut r =
                        PlacementRequest::new(format!("vm-{i}").parse().unwrap(), resources);
                    r.runtime = RUNTIMES.get(rt).map(|r| r.to_string());
                    r.node_selector = ZONES
                        .get(zone)
                        .map(|z| [("zone".to_owned(), z.to_string())].into())
                        .unwrap_or_default();
                    r.tenant = TENANTS[tenant].into();
                    r.allowed_clouds = CLOUDS
                        .get(cloud)
                        .map(|c| vec![c.to_string()])
                        .unwrap_or_default();
                    r.allowed_regions = match region {
                        0 | 1 => vec![REGIONS[region].into()],
                        2 => vec![REGIONS[1].into(), REGIONS[2].into()],
                        _ => vec![],
                    };
                    r.require_compliant = compliant;
                    r.watts = watts;
                    r.group = (group < 2).then(|| format!("g{group}"));
                    r.class = if i % 2 == 0 {
                        "web".into()
                    } else {
                        String::new()
                    };
                    r.user_region = REGIONS.get(user).map(|u| u.to_string());
                    r
                },
            )
            .collect()
    })
}

fn weights(search: Search) -> Weights {
    let mut w = Weights {
        search,
        ..Weights::default()
    };
    w.per_class.insert(
        "web".into(),
        firefleet_scheduler::TermWeights {
            availability: 2.0,
            risk: 0.5,
            cost: 1.0,
            latency: 3.0,
            pack: 0.0,
        },
    );
    w
}

fn run_with(
    view: &ClusterView,
    requests: &[PlacementRequest],
    seed: u64,
    search: Search,
) -> Vec<Placement> {
    place(
        view,
        requests,
        &weights(search),
        &mut ChaCha8Rng::seed_from_u64(seed),
    )
}

fn run(view: &ClusterView, requests: &[PlacementRequest], seed: u64) -> Vec<Placement> {
    run_with(view, requests, seed, Weights::default().search)
}

/// Every hard constraint except capacity and power, written independently of the engine.
fn eligible(node: &NodeView, req: &PlacementRequest) -> bool {
    let label = |k: &str| node.labels.get(k);
    let allowed =
        |list: &Vec<String>, k: &str| list.is_empty() || label(k).is_some_and(|v| list.contains(v));
    node.ready
        && !node.cordoned
        && req
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        && req
            .runtime
            .as_ref()
            .is_none_or(|r| node.runtimes.contains(r))
        && label("dedicated").is_none_or(|t| *t == req.tenant)
        && allowed(&req.allowed_clouds, "cloud")
        && allowed(&req.allowed_regions, "region")
        && (!req.require_compliant || node.compliant)
}

/// Checks every placement against the hard constraints and capacity (vCPUs, memory, GPUs,
/// power), replaying the batch; and that nothing is refused while an eligible node had room.
fn check_constraints(
    view: &ClusterView,
    requests: &[PlacementRequest],
    out: &[Placement],
) -> Result<(), TestCaseError> {
    let by_id: BTreeMap<&NodeId, &NodeView> = view.nodes.iter().map(|n| (&n.id, n)).collect();
    let mut free: BTreeMap<&NodeId, (Capacity, Option<u32>)> = view
        .nodes
        .iter()
        .map(|n| (&n.id, (n.free(), n.free_watts())))
        .collect();
    let fits = |f: &(Capacity, Option<u32>), r: &PlacementRequest| {
        f.0.fits(&r.resources) && f.1.is_none_or(|w| w >= r.watts)
    };
    for (p, req) in out.iter().zip(requests) {
        match p {
            Placement::Placed { node, .. } => {
                let n = by_id[node];
                prop_assert!(eligible(n, req), "placed {} on ineligible {:?}", req.vm, n);
                let f = free.get_mut(node).unwrap();
                prop_assert!(
                    fits(f, req),
                    "over-committed {}: free {:?}, want {:?} / {} W",
                    node,
                    f,
                    req.resources,
                    req.watts
                );
                f.0 = f.0.saturating_sub(&req.resources);
                f.1 = f.1.map(|w| w - req.watts);
            }
            Placement::Unschedulable { .. } => {
                let fit = view
                    .nodes
                    .iter()
                    .find(|n| eligible(n, req) && fits(&free[&n.id], req));
                prop_assert!(
                    fit.is_none(),
                    "{} unschedulable but {:?} fits",
                    req.vm,
                    fit.map(|n| &n.id)
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn one_result_per_request_in_order(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        let out = run(&view, &requests, seed);
        prop_assert_eq!(out.len(), requests.len());
        for (p, r) in out.iter().zip(&requests) {
            prop_assert_eq!(p.vm(), &r.vm);
            if let Placement::Unschedulable { reasons, .. } = p {
                prop_assert!(!reasons.is_empty());
                prop_assert!(reasons.len() <= firefleet_scheduler::MAX_LISTED_REASONS);
            }
        }
    }

    #[test]
    fn same_seed_same_output(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        prop_assert_eq!(run(&view, &requests, seed), run(&view, &requests, seed));
        prop_assert_eq!(
            run_with(&view, &requests, seed, Search::Exhaustive),
            run_with(&view, &requests, seed, Search::Exhaustive)
        );
    }

    #[test]
    fn input_node_order_does_not_matter(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        let mut reversed = view.clone();
        reversed.nodes.reverse();
        prop_assert_eq!(run(&view, &requests, seed), run(&reversed, &requests, seed));
    }

    /// Never over-commits (vCPUs, memory, GPUs, power), never uses an ineligible node (dedicated,
    /// residency, compliance, selector, runtime, readiness, cordon), and only gives up when no
    /// eligible node had room at that point of the batch; in both search modes.
    #[test]
    fn placements_respect_every_hard_constraint(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        check_constraints(&view, &requests, &run(&view, &requests, seed))?;
        let tight = Search::Sampled { per_bucket: 1, buckets: 1 };
        check_constraints(&view, &requests, &run_with(&view, &requests, seed, tight))?;
        check_constraints(&view, &requests, &run_with(&view, &requests, seed, Search::Exhaustive))?;
    }

    /// The bucket bounds are sound: with an unbounded sample, the pruned search (which skips
    /// buckets whose bound cannot beat the best score found) finds the exhaustive optimum.
    #[test]
    fn pruning_by_bucket_bound_loses_nothing(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        for req in requests.iter().take(5) {
            let score = |search| {
                place_scored(&view, std::slice::from_ref(req), &weights(search), &mut ChaCha8Rng::seed_from_u64(seed))[0].score
            };
            let unbounded = Search::Sampled { per_bucket: usize::MAX, buckets: usize::MAX };
            let (s, e) = (score(unbounded), score(Search::Exhaustive));
            prop_assert_eq!(s.is_some(), e.is_some());
            if let (Some(s), Some(e)) = (s, e) {
                prop_assert!((s - e).abs() < 1e-9, "sampled {} exhaustive {}", s, e);
            }
        }
    }
}

/// A random fleet of `n` nodes over 3 clouds and 12 regions, and a batch of `m` requests.
fn fleet(rng: &mut ChaCha8Rng, n: usize, m: usize) -> (ClusterView, Vec<PlacementRequest>) {
    let regions: Vec<String> = (0..12).map(|r| format!("r{r}")).collect();
    let mut latency_ms = BTreeMap::new();
    for a in &regions {
        for b in &regions {
            if a != b {
                latency_ms.insert((a.clone(), b.clone()), rng.gen_range(5..150));
            }
        }
    }
    let nodes = (0..n)
        .map(|i| {
            let r = rng.gen_range(0..regions.len());
            let mut node = NodeView::new(
                format!("n{i:05}").parse().unwrap(),
                Capacity {
                    vcpus: 32,
                    memory_mib: 131_072,
                    gpus: rng.gen_range(0..2),
                },
            );
            node.labels.insert("cloud".into(), format!("c{}", r % 3));
            node.labels.insert("region".into(), regions[r].clone());
            node.labels
                .insert("zone".into(), format!("z{}", rng.gen_range(0..3)));
            node.runtimes = vec!["qemu".into()];
            node.reliability = rng.gen_range(0.9..1.0);
            node.risk = rng.gen_range(0.0..0.3);
            node.price_vcpu_hour = rng.gen_range(0.02..0.05);
            node.price_gib_hour = rng.gen_range(0.002..0.006);
            node.spot = rng.gen_bool(0.2);
            node
        })
        .collect();
    let requests = (0..m)
        .map(|i| {
            let mut r = PlacementRequest::new(
                format!("vm{i}").parse().unwrap(),
                Capacity {
                    vcpus: 1 << rng.gen_range(0..4),
                    memory_mib: 1024 << rng.gen_range(0..5),
                    gpus: 0,
                },
            );
            r.tenant = format!("t{}", rng.gen_range(0..5));
            r.group = rng
                .gen_bool(0.5)
                .then(|| format!("g{}", rng.gen_range(0..10)));
            r.user_region = Some(regions[rng.gen_range(0..regions.len())].clone());
            r
        })
        .collect();
    (ClusterView { nodes, latency_ms }, requests)
}

fn total(
    view: &ClusterView,
    requests: &[PlacementRequest],
    w: &Weights,
    seed: u64,
) -> (f64, usize) {
    let out = place_scored(view, requests, w, &mut ChaCha8Rng::seed_from_u64(seed));
    (
        out.iter().filter_map(|s| s.score).sum(),
        out.iter().filter(|s| s.score.is_some()).count(),
    )
}

/// Over random fleets whose buckets are larger than the sample, the sampled search's total
/// objective stays within a few % of exhaustive search (batch effects included).
#[test]
fn sampled_objective_is_close_to_exhaustive() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let (mut sampled, mut exhaustive) = (0.0, 0.0);
    let mut worst = f64::INFINITY;
    for case in 0..20 {
        let (view, requests) = fleet(&mut rng, 300, 400);
        let (s, sn) = total(&view, &requests, &Weights::default(), case);
        let (e, en) = total(&view, &requests, &Weights::default().exhaustive(), case);
        assert_eq!(sn, en, "both place every request");
        worst = worst.min(s / e);
        sampled += s;
        exhaustive += e;
    }
    let ratio = sampled / exhaustive;
    println!("sampled/exhaustive objective: mean {ratio:.4}, worst case {worst:.4}");
    assert!(ratio >= 0.97, "ratio {ratio}");
    assert!(worst >= 0.95, "worst {worst}");
}
