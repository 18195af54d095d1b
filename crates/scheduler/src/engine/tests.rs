use firefleet_types::{Labels, NodeId, Resources, VmId};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::{ReasonKind, UnschedulableReason};

fn cap(vcpus: u32, memory_mib: u64) -> Capacity {
    Capacity {
        vcpus,
        memory_mib,
        gpus: 0,
    }
}

fn node(id: &str, vcpus: u32, memory_mib: u64) -> NodeView {
    let mut n = NodeView::new(id.parse().unwrap(), cap(vcpus, memory_mib));
    n.runtimes = vec!["qemu".to_owned()];
    n
}

fn request(vm: &str, vcpus: u32, memory_mib: u64) -> PlacementRequest {
    PlacementRequest::new(vm.parse().unwrap(), cap(vcpus, memory_mib))
}

fn cluster(nodes: Vec<NodeView>) -> ClusterView {
    ClusterView {
        nodes,
        ..ClusterView::default()
    }
}

fn run(view: &ClusterView, requests: &[PlacementRequest], seed: u64) -> Vec<Placement> {
    place(
        view,
        requests,
        &Weights::default(),
        &mut ChaCha8Rng::seed_from_u64(seed),
    )
}

fn nid(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn vid(s: &str) -> VmId {
    s.parse().unwrap()
}

#[test]
fn the_pack_weight_fills_nodes_in_use_first() {
    let mut busy = node("a-busy", 8, 8192);
    busy.allocated = cap(6, 1024);
    let view = cluster(vec![busy, node("b-empty", 8, 8192)]);
    let place_one = |w: &Weights| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        match place(&view, &[request("v", 1, 512)], w, &mut rng).pop() {
            Some(Placement::Placed { node, .. }) => node.to_string(),
            other => panic!("{other:?}"),
        }
    };
    // By default the empty node wins (spread, no co-location)...
    assert_eq!(place_one(&Weights::default()), "b-empty");
    // ... a packing class fills the node already in use.
    let packing = Weights {
        default: TermWeights {
            pack: 3.0,
            ..TermWeights::default()
        },
        ..Weights::default()
    };
    assert_eq!(place_one(&packing), "a-busy");
    assert_eq!(place_one(&packing.clone().exhaustive()), "a-busy");
}

#[test]
fn no_nodes_is_its_own_reason() {
    let out = run(&ClusterView::default(), &[request("a", 1, 64)], 1);
    assert_eq!(
        out,
        [Placement::Unschedulable {
            vm: vid("a"),
            reasons: vec![UnschedulableReason::NoNodes]
        }]
    );
    assert_eq!(
        UnschedulableReason::NoNodes.to_string(),
        "the cluster has no nodes"
    );
}

#[test]
fn batch_consumes_capacity_in_order() {
    let view = cluster(vec![node("n1", 2, 1024)]);
    let out = run(
        &view,
        &[
            request("a", 1, 512),
            request("b", 1, 512),
            request("c", 1, 1),
        ],
        7,
    );
    assert_eq!(out[0].node(), Some(&nid("n1")));
    assert_eq!(out[1].node(), Some(&nid("n1")));
    assert_eq!(
        out[2],
        Placement::Unschedulable {
            vm: vid("c"),
            reasons: vec![UnschedulableReason::InsufficientCpu {
                node: nid("n1"),
                free: 0,
                want: 1
            }]
        }
    );
}

#[test]
fn every_node_gets_its_first_failing_reason_in_id_order() {
    let mut not_ready = node("a-not-ready", 8, 8192);
    not_ready.ready = false;
    let mut cordoned = node("b-cordoned", 8, 8192);
    cordoned.cordoned = true;
    cordoned.ready = false; // readiness is checked first
    let mut no_label = node("c-no-label", 8, 8192);
    no_label.labels.insert("zone".into(), "b".into());
    let mut no_runtime = node("d-no-runtime", 8, 8192);
    no_runtime.labels.insert("zone".into(), "a".into());
    no_runtime.runtimes.clear();
    let mut little_mem = node("e-little-mem", 8, 100);
    little_mem.labels.insert("zone".into(), "a".into());
    let mut full = node("f-full", 8, 8192);
    full.labels.insert("zone".into(), "a".into());
    full.allocated = cap(10, 0); // over-allocated: free is 0
    let view = cluster(vec![
        full, little_mem, no_runtime, no_label, cordoned, not_ready,
    ]);
    let mut req = request("vm", 2, 256);
    req.runtime = Some("qemu".into());
    req.node_selector.insert("zone".into(), "a".into());

    let Placement::Unschedulable { reasons, .. } = &run(&view, &[req], 3)[0] else {
        panic!("placed")
    };
    let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "node a-not-ready: not ready",
            "node b-cordoned: not ready",
            "node c-no-label: label \"zone\" does not match the node selector",
            "node d-no-runtime: runtime \"qemu\" not available",
            "node e-little-mem: insufficient memory (100 MiB free, 256 MiB wanted)",
            "node f-full: insufficient cpu (0 vCPUs free, 2 wanted)",
        ]
    );
}

#[test]
fn many_nodes_are_summarised() {
    let mut nodes: Vec<NodeView> = (0..40).map(|i| node(&format!("n{i}"), 1, 1024)).collect();
    for n in nodes.iter_mut().take(10) {
        n.cordoned = true;
    }
    let out = run(&cluster(nodes), &[request("big", 4, 64)], 0);
    let Placement::Unschedulable { reasons, .. } = &out[0] else {
        panic!("placed")
    };
    assert_eq!(
        reasons,
        &[
            UnschedulableReason::Summary {
                kind: ReasonKind::Cordoned,
                nodes: 10
            },
            UnschedulableReason::Summary {
                kind: ReasonKind::InsufficientCpu,
                nodes: 30
            },
        ]
    );
    assert_eq!(reasons[1].to_string(), "30 nodes: insufficient cpu");
}

#[test]
fn seeds_spread_load_over_equal_nodes() {
    let view = cluster((0..4).map(|i| node(&format!("n{i}"), 64, 65536)).collect());
    let requests: Vec<_> = (0..40).map(|i| request(&format!("vm{i}"), 1, 64)).collect();
    let out = run(&view, &requests, 42);
    let used: std::collections::BTreeSet<_> = out.iter().filter_map(Placement::node).collect();
    assert_eq!(used.len(), 4, "all equal nodes get work: {used:?}");
}

#[test]
fn input_node_order_does_not_matter() {
    let nodes: Vec<NodeView> = (0..6).map(|i| node(&format!("n{i}"), 2, 2048)).collect();
    let mut reversed = nodes.clone();
    reversed.reverse();
    let requests: Vec<_> = (0..10)
        .map(|i| request(&format!("vm{i}"), 1, 512))
        .collect();
    assert_eq!(
        run(&cluster(nodes), &requests, 9),
        run(&cluster(reversed), &requests, 9)
    );
}

#[test]
fn node_view_from_stored_node() {
    use firefleet_types::node::{NodeReadiness, NodeStatus};
    use firefleet_types::{Accel, NodeFacts, NodeInfo};
    let mut info = NodeInfo {
        id: nid("n1"),
        labels: Labels::new(),
        cordoned: true,
        enrolled_ms: 0,
        status: NodeStatus {
            readiness: NodeReadiness::Ready,
            last_heartbeat_ms: 0,
            facts: None,
        },
    };
    let view = NodeView::from_node_info(
        &info,
        Resources {
            vcpus: 1,
            memory_mib: 1,
        },
    );
    assert_eq!(
        (view.capacity, view.ready, view.cordoned),
        (Capacity::default(), true, true)
    );
    assert_eq!(view.free(), Capacity::default());
    info.status.facts = Some(NodeFacts {
        hostname: "h".into(),
        capacity: Resources {
            vcpus: 4,
            memory_mib: 4096,
        },
        accel: Accel::Tcg,
        accel_probe: String::new(),
        runtimes: vec!["qemu".into()],
        vmm_version: String::new(),
        kernel: String::new(),
        agent_version: String::new(),
        network: None,
        isolation: None,
        posture: None,
        power: None,
    });
    let view = NodeView::from_node_info(
        &info,
        Resources {
            vcpus: 1,
            memory_mib: 1024,
        },
    );
    assert_eq!(view.free(), cap(3, 3072));
    assert_eq!(view.runtimes, ["qemu"]);
}
fn labelled(id: &str, pairs: &[(&str, &str)]) -> NodeView {
    let mut n = node(id, 16, 16384);
    for (k, v) in pairs {
        n.labels.insert((*k).into(), (*v).into());
    }
    n
}

fn reasons_of(p: &Placement) -> Vec<String> {
    match p {
        Placement::Unschedulable { reasons, .. } => {
            reasons.iter().map(ToString::to_string).collect()
        }
        Placement::Placed { node, .. } => panic!("placed on {node}"),
    }
}

fn both(view: &ClusterView, requests: &[PlacementRequest], w: &Weights) -> [Vec<Placement>; 2] {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let sampled = place(view, requests, w, &mut rng);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let exhaustive = place(view, requests, &w.clone().exhaustive(), &mut rng);
    [sampled, exhaustive]
}

#[test]
fn new_hard_constraints_each_have_their_reason() {
    let mut dedicated = labelled("a-dedicated", &[("dedicated", "other"), ("cloud", "aws")]);
    dedicated.labels.insert("region".into(), "eu".into());
    let wrong_cloud = labelled("b-cloud", &[("cloud", "gcp"), ("region", "eu")]);
    let no_region = labelled("c-region", &[("cloud", "aws")]);
    let mut posture = labelled("d-posture", &[("cloud", "aws"), ("region", "eu")]);
    posture.compliant = false;
    let mut no_gpu = labelled("e-gpu", &[("cloud", "aws"), ("region", "eu")]);
    no_gpu.capacity.gpus = 1;
    no_gpu.allocated.gpus = 1;
    let mut power = labelled("f-power", &[("cloud", "aws"), ("region", "eu")]);
    power.capacity.gpus = 2;
    power.power_budget_watts = Some(300);
    power.power_used_watts = 250;
    let view = cluster(vec![
        dedicated,
        wrong_cloud,
        no_region,
        posture,
        no_gpu,
        power,
    ]);
    let mut req = request("vm", 1, 64);
    req.tenant = "me".into();
    req.allowed_clouds = vec!["aws".into()];
    req.allowed_regions = vec!["eu".into()];
    req.require_compliant = true;
    req.resources.gpus = 1;
    req.watts = 100;
    for out in both(&view, &[req.clone()], &Weights::default()) {
        assert_eq!(
            reasons_of(&out[0]),
            [
                "node a-dedicated: dedicated to tenant \"other\"",
                "node b-cloud: cloud \"gcp\" not allowed (data residency)",
                "node c-region: no region label (data residency)",
                "node d-posture: host posture not compliant",
                "node e-gpu: insufficient gpus (0 free, 1 wanted)",
                "node f-power: insufficient power budget (50 W free, 100 W wanted)",
            ]
        );
    }
    // Relaxing each constraint makes its node usable.
    let mut owner = req.clone();
    owner.tenant = "other".into();
    owner.resources.gpus = 0;
    assert_eq!(run(&view, &[owner], 1)[0].node(), Some(&nid("a-dedicated")));
    let mut frugal = req.clone();
    frugal.watts = 50;
    assert_eq!(run(&view, &[frugal], 1)[0].node(), Some(&nid("f-power")));
    let mut lax = req;
    lax.require_compliant = false;
    lax.resources.gpus = 0;
    lax.watts = 0;
    let placed = run(&view, &[lax], 1)[0].node().cloned();
    assert!(
        ["d-posture", "e-gpu", "f-power"]
            .map(nid)
            .iter()
            .any(|n| Some(n) == placed.as_ref()),
        "{placed:?}"
    );
}

#[test]
fn gpus_and_power_are_consumed_by_the_batch() {
    let mut n = node("edge", 64, 65536);
    n.capacity.gpus = 2;
    n.power_budget_watts = Some(250);
    let view = cluster(vec![n]);
    let mut gpu = request("g", 1, 64);
    gpu.resources.gpus = 1;
    let mut hot = request("h", 1, 64);
    hot.watts = 200;
    let out = run(&view, &[gpu.clone(), gpu.clone(), gpu, hot.clone(), hot], 3);
    assert!(out[..2].iter().all(|p| p.node().is_some()));
    assert_eq!(
        reasons_of(&out[2]),
        ["node edge: insufficient gpus (0 free, 1 wanted)"]
    );
    assert!(out[3].node().is_some());
    assert_eq!(
        reasons_of(&out[4]),
        ["node edge: insufficient power budget (50 W free, 200 W wanted)"]
    );
}

#[test]
fn summaries_count_new_kinds() {
    let mut nodes: Vec<NodeView> = (0..30)
        .map(|i| labelled(&format!("n{i:02}"), &[("cloud", "aws")]))
        .collect();
    for n in nodes.iter_mut().take(20) {
        n.compliant = false;
    }
    let mut req = request("vm", 1, 64);
    req.require_compliant = true;
    req.allowed_clouds = vec!["gcp".into()];
    let out = run(&cluster(nodes), &[req], 0);
    assert_eq!(
        reasons_of(&out[0]),
        ["30 nodes: outside the allowed clouds/regions"]
    );
}

#[test]
fn replicas_spread_over_zones_regions_and_clouds() {
    let nodes = vec![
        labelled("a1", &[("cloud", "aws"), ("region", "eu"), ("zone", "1")]),
        labelled("a2", &[("cloud", "aws"), ("region", "eu"), ("zone", "1")]),
        labelled("b1", &[("cloud", "aws"), ("region", "eu"), ("zone", "2")]),
        labelled("c1", &[("cloud", "aws"), ("region", "us"), ("zone", "1")]),
        labelled("d1", &[("cloud", "gcp"), ("region", "eu"), ("zone", "1")]),
    ];
    let view = cluster(nodes);
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            let mut r = request(&format!("r{i}"), 1, 64);
            r.group = Some("web".into());
            r
        })
        .collect();
    for out in both(&view, &reqs, &Weights::default()) {
        let clouds: std::collections::BTreeSet<_> = out
            .iter()
            .filter_map(Placement::node)
            .map(|n| view.nodes.iter().find(|v| &v.id == n).unwrap().labels["cloud"].clone())
            .collect();
        assert_eq!(clouds.len(), 2, "{out:?}");
        let used: std::collections::BTreeSet<_> = out.iter().filter_map(Placement::node).collect();
        assert_eq!(used.len(), 4, "four replicas on four nodes: {out:?}");
        assert!(
            !used.contains(&nid("a2")) || !used.contains(&nid("a1")),
            "{out:?}"
        );
    }
    // Without a group, replicas may share a node (no spread term).
    let ungrouped: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|mut r| {
            r.group = None;
            r
        })
        .collect();
    assert_eq!(run(&view, &ungrouped, 1).len(), 4);
}

#[test]
fn existing_replicas_count_toward_spread() {
    let mut a = labelled("a", &[("zone", "1")]);
    a.groups.insert("db".into(), 1);
    let b = labelled("b", &[("zone", "2")]);
    let mut req = request("r", 1, 64);
    req.group = Some("db".into());
    for out in both(&cluster(vec![a, b]), &[req], &Weights::default()) {
        assert_eq!(out[0].node(), Some(&nid("b")));
    }
}

#[test]
fn latency_cost_risk_and_reliability_steer_the_choice() {
    let mut near = labelled("near", &[("cloud", "aws"), ("region", "eu")]);
    let far = labelled("far", &[("cloud", "aws"), ("region", "us")]);
    let mut view = cluster(vec![near.clone(), far.clone()]);
    view.latency_ms.insert(("eu".into(), "us".into()), 90);
    view.latency_ms.insert(("us".into(), "eu".into()), 90);
    let mut req = request("r", 2, 2048);
    req.user_region = Some("us".into());
    for out in both(&view, &[req.clone()], &Weights::default()) {
        assert_eq!(out[0].node(), Some(&nid("far")));
    }
    req.user_region = Some("eu".into());
    assert_eq!(run(&view, &[req.clone()], 2)[0].node(), Some(&nid("near")));

    // Cost: the cheaper node wins when latency does not matter.
    req.user_region = None;
    near.price_vcpu_hour = 0.05;
    near.price_gib_hour = 0.01;
    let mut cheap = far.clone();
    cheap.price_vcpu_hour = 0.01;
    cheap.price_gib_hour = 0.002;
    let view = cluster(vec![near.clone(), cheap]);
    for out in both(&view, &[req.clone()], &Weights::default()) {
        assert_eq!(out[0].node(), Some(&nid("far")));
    }
    // Risk: a risky node loses against a safe one; so does a spot node.
    let mut risky = near.clone();
    risky.risk = 0.9;
    let mut safe = far.clone();
    safe.price_vcpu_hour = 0.05;
    safe.price_gib_hour = 0.01;
    for out in both(
        &cluster(vec![risky.clone(), safe.clone()]),
        &[req.clone()],
        &Weights::default(),
    ) {
        assert_eq!(out[0].node(), Some(&nid("far")));
    }
    let mut spot = near.clone();
    spot.spot = true;
    assert_eq!(
        run(&cluster(vec![spot, safe.clone()]), &[req.clone()], 2)[0].node(),
        Some(&nid("far"))
    );
    // Co-location: prefer the node holding our own tenant's VMs over another tenant's.
    let mut shared = near.clone();
    shared.tenants.insert("them".into(), 3);
    let mut ours = safe.clone();
    ours.tenants.insert("us".into(), 3);
    req.tenant = "us".into();
    assert_eq!(
        run(&cluster(vec![shared, ours]), &[req.clone()], 2)[0].node(),
        Some(&nid("far"))
    );
    // Reliability.
    let mut flaky = near;
    flaky.reliability = 0.2;
    assert_eq!(
        run(&cluster(vec![flaky, safe]), &[req], 2)[0].node(),
        Some(&nid("far"))
    );
}

#[test]
fn class_weights_override_the_default() {
    // "near" is expensive and close to the users; "far" is cheap and far away.
    let mut near = labelled("near", &[("region", "eu")]);
    near.price_vcpu_hour = 1.0;
    let far = labelled("far", &[("region", "us")]);
    let mut view = cluster(vec![near, far]);
    view.latency_ms.insert(("eu".into(), "us".into()), 100);
    let mut req = request("r", 1, 64);
    req.user_region = Some("eu".into());
    let mut w = Weights::default();
    w.default.latency = 0.1;
    w.per_class.insert(
        "interactive".into(),
        TermWeights {
            latency: 10.0,
            ..TermWeights::default()
        },
    );
    assert_eq!(
        run_w(&view, &[req.clone()], &w)[0].node(),
        Some(&nid("far"))
    );
    req.class = "interactive".into();
    assert_eq!(
        run_w(&view, &[req.clone()], &w)[0].node(),
        Some(&nid("near"))
    );
    req.class = "batch".into();
    assert_eq!(run_w(&view, &[req], &w)[0].node(), Some(&nid("far")));
}

fn run_w(view: &ClusterView, requests: &[PlacementRequest], w: &Weights) -> Vec<Placement> {
    place(view, requests, w, &mut ChaCha8Rng::seed_from_u64(1))
}

#[test]
fn scores_are_normalised_and_reported() {
    let view = cluster(vec![node("n", 4, 4096)]);
    let out = place_scored(
        &view,
        &[request("a", 1, 64), request("b", 8, 64)],
        &Weights::default(),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let s = out[0].score.unwrap();
    assert!((0.0..=1.0).contains(&s), "{s}");
    // Reliability 1, no group, no risk, cost or latency: the best possible objective.
    assert!((s - 1.0).abs() < 1e-9, "{s}");
    assert_eq!(out[1].score, None);
}

#[test]
fn sampled_mode_prunes_but_stays_complete() {
    // 40 regions of 5 nodes; only the last region's last node has room.
    let mut nodes = Vec::new();
    for r in 0..40 {
        for i in 0..5 {
            let mut n = labelled(&format!("r{r:02}-{i}"), &[("region", &format!("r{r}"))]);
            n.allocated = cap(16, 0);
            nodes.push(n);
        }
    }
    if let Some(n) = nodes.last_mut() {
        n.allocated = cap(0, 0);
    }
    let out = run(
        &cluster(nodes),
        &[request("a", 2, 64), request("b", 16, 64)],
        4,
    );
    assert_eq!(out[0].node(), Some(&nid("r39-4")));
    assert_eq!(reasons_of(&out[1]), ["200 nodes: insufficient cpu"]);
}
