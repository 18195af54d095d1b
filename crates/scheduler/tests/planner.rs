//! Properties of `plan_migrations` over random fleets.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::{BTreeMap, BTreeSet};

use firefleet_scheduler::{
    plan_migrations, Capacity, ClusterView, GuardFinding, MigrationBudget, NodeView, PlacedVm,
    PlacementRequest, Plan, Trigger, Triggers, Weights,
};
use firefleet_types::{Labels, NodeId, VmId};
use proptest::prelude::*;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const CLOUDS: [&str; 2] = ["aws", "edge"];
const TENANTS: [&str; 3] = ["t1", "t2", "t3"];
const RUNTIMES: [&str; 2] = ["qemu", "firecracker"];

#[derive(Debug, Clone)]
struct NodeSeed {
    cap: (u32, u64),
    region: usize,
    cloud: usize,
    dedicated: usize,
    rt: usize,
    ready: bool,
    cordoned: bool,
    compliant: bool,
    power: Option<u32>,
    facts: (f64, f64, f64, f64, bool),
    trigger: usize,
}

#[derive(Debug, Clone)]
struct VmSeed {
    node: usize,
    res: (u32, u64),
    tenant: usize,
    rt: usize,
    region: usize,
    compliant: bool,
    watts: u32,
    group: usize,
    user: usize,
}

fn arb_node() -> impl Strategy<Value = NodeSeed> {
    (
        (
            (4u32..32, 2048u64..32768),
            0usize..3,
            0usize..2,
            0usize..6,
            0usize..4,
        ),
        (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.3, 50u32..800),
        ),
        (
            (
                0.5f64..1.0,
                0.0f64..1.0,
                0.0f64..0.1,
                0.0f64..0.02,
                any::<bool>(),
            ),
            0usize..10,
        ),
    )
        .prop_map(
            |(
                (cap, region, cloud, dedicated, rt),
                (ready, cordoned, compliant, power),
                (facts, trigger),
            )| {
                NodeSeed {
                    cap,
                    region,
                    cloud,
                    dedicated,
                    rt,
                    ready,
                    cordoned,
                    compliant,
                    power,
                    facts,
                    trigger,
                }
            },
        )
}

fn arb_vm() -> impl Strategy<Value = VmSeed> {
    (
        (0usize..16, (1u32..4, 128u64..2048), 0usize..3, 0usize..8),
        (
            0usize..5,
            prop::bool::weighted(0.3),
            0u32..120,
            0usize..4,
            0usize..4,
        ),
    )
        .prop_map(
            |((node, res, tenant, rt), (region, compliant, watts, group, user))| VmSeed {
                node,
                res,
                tenant,
                rt,
                region,
                compliant,
                watts,
                group,
                user,
            },
        )
}

#[derive(Debug, Clone)]
struct Fleet {
    view: ClusterView,
    vms: Vec<PlacedVm>,
    triggers: Triggers,
    budget: MigrationBudget,
}

fn build(
    nodes: Vec<NodeSeed>,
    vms: Vec<VmSeed>,
    threshold: Option<f64>,
    rebalance_all: bool,
    budget: (usize, usize),
) -> Fleet {
    let mut views: Vec<NodeView> = Vec::new();
    let mut triggers = Triggers {
        imbalance_threshold: threshold,
        rebalance_all,
        ..Triggers::default()
    };
    for (i, s) in nodes.iter().enumerate() {
        let id: NodeId = format!("n{i}").parse().unwrap();
        let mut n = NodeView::new(
            id.clone(),
            Capacity {
                vcpus: s.cap.0,
                memory_mib: s.cap.1,
                gpus: 0,
            },
        );
        let mut labels = Labels::new();
        labels.insert("region".into(), REGIONS[s.region].into());
        labels.insert("cloud".into(), CLOUDS[s.cloud].into());
        if s.dedicated < TENANTS.len() {
            labels.insert("dedicated".into(), TENANTS[s.dedicated].into());
        }
        n.labels = labels;
        n.runtimes = RUNTIMES
            .iter()
            .enumerate()
            .filter(|(b, _)| s.rt & (1 << b) != 0)
            .map(|(_, r)| r.to_string())
            .collect();
        n.ready = s.ready;
        n.cordoned = s.cordoned;
        n.compliant = s.compliant;
        n.power_budget_watts = s.power;
        let (rel, risk, pv, pg, spot) = s.facts;
        n.reliability = rel;
        n.risk = risk;
        n.price_vcpu_hour = pv;
        n.price_gib_hour = pg;
        n.spot = spot;
        match s.trigger {
            0 | 1 => {
                triggers.drain.insert(id);
            }
            2 => {
                triggers.low_battery.insert(id, 10);
            }
            3 => {
                triggers.guard.insert(
                    id,
                    GuardFinding {
                        severity: 0.8,
                        summary: "reverse shell".into(),
                    },
                );
            }
            _ => {}
        }
        views.push(n);
    }
    let mut placed = Vec::new();
    for (j, s) in vms.iter().enumerate() {
        let slot = s.node % views.len();
        let n = &mut views[slot];
        let mut r = PlacementRequest::new(
            format!("vm{j:02}").parse::<VmId>().unwrap(),
            Capacity {
                vcpus: s.res.0,
                memory_mib: s.res.1,
                gpus: 0,
            },
        );
        r.tenant = TENANTS[s.tenant].into();
        r.runtime = RUNTIMES.get(s.rt).map(|x| x.to_string());
        r.allowed_regions = REGIONS
            .get(s.region)
            .map(|x| vec![x.to_string()])
            .unwrap_or_default();
        r.require_compliant = s.compliant;
        r.watts = s.watts;
        r.group = (s.group < 2).then(|| format!("g{}", s.group));
        r.user_region = REGIONS.get(s.user).map(|x| x.to_string());
        n.allocated = n.allocated.saturating_add(&r.resources);
        n.power_used_watts = n.power_used_watts.saturating_add(r.watts);
        *n.tenants.entry(r.tenant.clone()).or_default() += 1;
        if let Some(g) = &r.group {
            *n.groups.entry(g.clone()).or_default() += 1;
        }
        placed.push(PlacedVm {
            node: n.id.clone(),
            memory_mib: r.resources.memory_mib,
            request: r,
        });
    }
    let mut latency_ms = BTreeMap::new();
    for (a, b, ms) in [("eu", "us", 90), ("us", "ap", 120), ("eu", "ap", 160)] {
        latency_ms.insert((a.to_string(), b.to_string()), ms);
        latency_ms.insert((b.to_string(), a.to_string()), ms);
    }
    Fleet {
        view: ClusterView {
            nodes: views,
            latency_ms,
        },
        vms: placed,
        triggers,
        budget: MigrationBudget {
            max_concurrent: budget.0,
            max_per_node: budget.1,
            ..MigrationBudget::default()
        },
    }
}

fn arb_fleet() -> impl Strategy<Value = Fleet> {
    (
        prop::collection::vec(arb_node(), 2..9),
        prop::collection::vec(arb_vm(), 1..24),
        prop::option::of(0.4f64..0.95),
        any::<bool>(),
        (1usize..12, 1usize..4),
    )
        .prop_map(|(n, v, t, r, b)| build(n, v, t, r, b))
}

/// Whether `req` may run on `n` by the engine's hard constraints (capacity aside).
fn admits(n: &NodeView, req: &PlacementRequest) -> bool {
    n.ready
        && !n.cordoned
        && req
            .node_selector
            .iter()
            .all(|(k, v)| n.labels.get(k) == Some(v))
        && req.runtime.as_ref().is_none_or(|r| n.runtimes.contains(r))
        && n.labels.get("dedicated").is_none_or(|o| *o == req.tenant)
        && (req.allowed_clouds.is_empty()
            || n.labels
                .get("cloud")
                .is_some_and(|c| req.allowed_clouds.contains(c)))
        && (req.allowed_regions.is_empty()
            || n.labels
                .get("region")
                .is_some_and(|c| req.allowed_regions.contains(c)))
        && (!req.require_compliant || n.compliant)
}

fn check(f: &Fleet, plan: &Plan) -> Result<(), TestCaseError> {
    let vms: BTreeMap<&VmId, &PlacedVm> = f.vms.iter().map(|v| (&v.request.vm, v)).collect();
    let mut nodes: BTreeMap<NodeId, NodeView> = f
        .view
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.clone()))
        .collect();
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let t = &f.triggers;
    prop_assert!(plan.moves.len() <= f.budget.max_concurrent);
    for m in &plan.moves {
        prop_assert!(seen.insert(m.vm.clone()), "{} moved twice", m.vm);
        let vm = vms[&m.vm];
        prop_assert_eq!(&vm.node, &m.from);
        prop_assert_ne!(&m.from, &m.to);
        prop_assert_eq!(m.forced, m.trigger == Trigger::Drain);
        prop_assert_eq!(m.forced, t.drain.contains(&m.from));
        if !m.forced {
            prop_assert!(m.benefit.net > 0.0, "{:?}", m);
        }
        let b = &m.benefit;
        prop_assert!((b.net - (b.objective() + b.balance - b.migration_cost)).abs() < 1e-9);
        prop_assert!(!t.drain.contains(&m.to) && !t.low_battery.contains_key(&m.to));
        prop_assert!(!t.guard.contains_key(&m.to));
        let req = &vm.request;
        let dest = nodes.get_mut(&m.to).unwrap();
        prop_assert!(admits(dest, req), "{:?} on {:?}", req, dest);
        // Capacity, counting the moves planned into it before (sources are not credited).
        prop_assert!(
            dest.free().fits(&req.resources),
            "{:?} overfills {:?}",
            req,
            dest
        );
        if let Some(w) = dest.free_watts() {
            prop_assert!(w >= req.watts);
        }
        dest.allocated = dest.allocated.saturating_add(&req.resources);
        dest.power_used_watts += req.watts;
        if let (Some(th), false) = (t.imbalance_threshold, m.forced) {
            let c = dest.capacity;
            prop_assert!(f64::from(dest.allocated.vcpus) <= f64::from(c.vcpus) * th + 1e-9);
            prop_assert!(dest.allocated.memory_mib as f64 <= c.memory_mib as f64 * th + 1e-9);
        }
        for n in [&m.from, &m.to] {
            let c = per_node.entry(n.clone()).or_default();
            *c += 1;
            prop_assert!(*c <= f.budget.max_per_node, "node {} over budget", n);
        }
        prop_assert!(!m.reason.is_empty());
    }
    // Every VM of a drained node is moved, stuck or deferred (only deferred for the budget).
    let stuck: BTreeSet<_> = plan.stuck.iter().map(|s| &s.vm).collect();
    let deferred: BTreeSet<_> = plan.deferred.iter().map(|d| &d.vm).collect();
    let roomy = f.budget.max_concurrent >= f.vms.len() && f.budget.max_per_node >= f.vms.len();
    for vm in &f.vms {
        if t.drain.contains(&vm.node) {
            let id = &vm.request.vm;
            prop_assert!(
                seen.contains(id) || stuck.contains(id) || (!roomy && deferred.contains(id)),
                "drained {} neither moved nor stuck: {:?}",
                id,
                plan
            );
        }
    }
    for s in &plan.stuck {
        prop_assert!(t.drain.contains(&s.from) && !s.reasons.is_empty());
        prop_assert!(!seen.contains(&s.vm));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn plans_respect_constraints_budget_and_benefit(f in arb_fleet()) {
        let plan = plan_migrations(&f.view, &f.vms, &f.triggers, &Weights::default(), &f.budget);
        check(&f, &plan)?;
        let again = plan_migrations(&f.view, &f.vms, &f.triggers, &Weights::default(), &f.budget);
        prop_assert_eq!(plan, again);
    }

    #[test]
    fn with_a_roomy_budget_every_drained_vm_is_moved_or_stuck(f in arb_fleet()) {
        let mut f = f;
        f.budget.max_concurrent = 1000;
        f.budget.max_per_node = 1000;
        let plan = plan_migrations(&f.view, &f.vms, &f.triggers, &Weights::default().exhaustive(), &f.budget);
        check(&f, &plan)?;
        prop_assert!(plan.deferred.iter().all(|d| d.trigger != Trigger::Drain));
    }
}
