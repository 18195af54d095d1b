use super::*;
use crate::PlacementRequest;

fn nid(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn node(id: &str, region: &str, vcpus: u32, mib: u64) -> NodeView {
    let mut n = NodeView::new(
        nid(id),
        Capacity {
            vcpus,
            memory_mib: mib,
            gpus: 0,
        },
    );
    n.labels.insert(LABEL_REGION.into(), region.into());
    n.runtimes = vec!["qemu".into()];
    n
}

/// Places `vm` on `n` (updating the node's allocation and counts).
fn vm(n: &mut NodeView, id: &str, vcpus: u32, mib: u64) -> PlacedVm {
    let mut request = PlacementRequest::new(
        id.parse().unwrap(),
        Capacity {
            vcpus,
            memory_mib: mib,
            gpus: 0,
        },
    );
    request.tenant = "t".into();
    n.allocated = n.allocated.saturating_add(&request.resources);
    *n.tenants.entry("t".into()).or_default() += 1;
    PlacedVm {
        node: n.id.clone(),
        request,
        memory_mib: mib,
    }
}

fn view(nodes: Vec<NodeView>) -> ClusterView {
    ClusterView {
        nodes,
        latency_ms: BTreeMap::new(),
    }
}

/// Plans with a roomy budget (10 per node).
fn plan(v: &ClusterView, vms: &[PlacedVm], t: &Triggers) -> Plan {
    let budget = MigrationBudget {
        max_per_node: 10,
        ..MigrationBudget::default()
    };
    plan_migrations(v, vms, t, &Weights::default(), &budget)
}

#[test]
fn drain_moves_everything_or_reports_stuck() {
    let mut a = node("a", "eu", 8, 8192);
    let b = node("b", "eu", 4, 4096);
    let vms = vec![vm(&mut a, "small", 2, 1024), vm(&mut a, "huge", 6, 6000)];
    let v = view(vec![a, b]);
    let t = Triggers {
        drain: [nid("a")].into(),
        ..Triggers::default()
    };
    let p = plan(&v, &vms, &t);
    assert_eq!(p.moves.len(), 1, "{p:?}");
    let m = &p.moves[0];
    assert_eq!(
        (m.vm.to_string().as_str(), m.to.to_string().as_str()),
        ("small", "b")
    );
    assert!(m.forced && m.trigger == Trigger::Drain);
    assert!(m.reason.starts_with("drain of a"), "{}", m.reason);
    assert_eq!(p.stuck.len(), 1);
    assert_eq!(p.stuck[0].vm.to_string(), "huge");
    assert!(!p.stuck[0].reasons.is_empty());
    assert!(p.deferred.is_empty());
}

#[test]
fn drain_is_forced_even_at_a_loss_and_respects_the_node_budget() {
    let mut a = node("a", "eu", 8, 8192);
    // The only destination is worse (risky, far) but the drain is forced.
    let mut b = node("b", "us", 8, 8192);
    b.risk = 0.9;
    let vms: Vec<_> = (0..3)
        .map(|i| vm(&mut a, &format!("v{i}"), 1, 512))
        .collect();
    let v = view(vec![a, b]);
    let t = Triggers {
        drain: [nid("a")].into(),
        ..Triggers::default()
    };
    let budget = MigrationBudget {
        max_per_node: 2,
        ..MigrationBudget::default()
    };
    let p = plan_migrations(&v, &vms, &t, &Weights::default(), &budget);
    assert_eq!(p.moves.len(), 2, "{p:?}");
    assert!(p.moves.iter().all(|m| m.forced && m.benefit.net < 0.0));
    assert_eq!(p.deferred.len(), 1);
    assert_eq!(p.deferred[0].why, DeferReason::SourceBusy);
}

#[test]
fn low_battery_vms_leave_when_worth_it() {
    let mut edge = node("edge-2", "site", 4, 4096);
    edge.labels.insert(LABEL_CLOUD.into(), "edge".into());
    let other = node("edge-3", "site", 4, 4096);
    let vms = vec![vm(&mut edge, "v", 1, 256)];
    let v = view(vec![edge, other]);
    let t = Triggers {
        low_battery: [(nid("edge-2"), 12)].into(),
        ..Triggers::default()
    };
    let p = plan(&v, &vms, &t);
    assert_eq!(p.moves.len(), 1, "{p:?}");
    let m = &p.moves[0];
    assert_eq!(m.to, nid("edge-3"));
    assert!(!m.forced && m.benefit.net > 0.0 && m.benefit.availability > 0.0);
    assert!(
        m.reason.starts_with("battery 12% on edge-2"),
        "{}",
        m.reason
    );
    // A nearly full battery is not worth a move.
    let t = Triggers {
        low_battery: [(nid("edge-2"), 100)].into(),
        ..Triggers::default()
    };
    let p = plan(&v, &vms, &t);
    assert!(p.moves.is_empty(), "{p:?}");
    assert_eq!(p.kept.len(), 1);
}

#[test]
fn guard_findings_move_vms_off_the_node() {
    let mut a = node("a", "eu", 4, 4096);
    let b = node("b", "eu", 4, 4096);
    let vms = vec![vm(&mut a, "v", 1, 256)];
    let v = view(vec![a, b]);
    let t = Triggers {
        guard: [(
            nid("a"),
            GuardFinding {
                severity: 0.9,
                summary: "miner process".into(),
            },
        )]
        .into(),
        ..Triggers::default()
    };
    let p = plan(&v, &vms, &t);
    assert_eq!(p.moves.len(), 1, "{p:?}");
    let m = &p.moves[0];
    assert!(m.benefit.risk > 0.0);
    assert!(
        m.reason
            .starts_with("guard finding on a (severity 0.90): miner process"),
        "{}",
        m.reason
    );
}

#[test]
fn imbalance_moves_until_under_the_threshold() {
    let mut hot = node("hot", "eu", 10, 10240);
    let cool = node("cool", "eu", 10, 10240);
    let vms: Vec<_> = (0..9)
        .map(|i| vm(&mut hot, &format!("v{i}"), 1, 256))
        .collect();
    let v = view(vec![hot, cool]);
    let t = Triggers {
        imbalance_threshold: Some(0.7),
        ..Triggers::default()
    };
    let p = plan(&v, &vms, &t);
    // 90% -> 70%: two moves; a third has no balance gain left.
    assert_eq!(p.moves.len(), 2, "{p:?}");
    assert!(p
        .moves
        .iter()
        .all(|m| m.to == nid("cool") && m.benefit.balance > 0.0));
    assert!(p.moves[0]
        .reason
        .starts_with("hot at 90% utilisation (threshold 70%)"));
    assert_eq!(p.kept.len(), 7);
    // With two moves per node, the rest of the wanted moves wait for the source.
    let p = plan_migrations(
        &v,
        &vms,
        &t,
        &Weights::default(),
        &MigrationBudget::default(),
    );
    assert_eq!(p.moves.len(), 2);
    assert!(p.deferred.iter().all(|d| d.why == DeferReason::SourceBusy));
}

#[test]
fn prices_rebalance_only_when_the_saving_beats_the_migration_cost() {
    let mut dear = node("dear", "eu", 8, 8192);
    dear.price_vcpu_hour = 0.04;
    dear.price_gib_hour = 0.005;
    let mut cheap = node("cheap", "eu", 8, 8192);
    cheap.price_vcpu_hour = 0.01;
    cheap.price_gib_hour = 0.001;
    let vms = vec![vm(&mut dear, "v", 1, 1024)];
    let v = view(vec![dear, cheap]);
    let t = Triggers {
        rebalance_all: true,
        ..Triggers::default()
    };
    let p = plan(&v, &vms, &t);
    assert_eq!(p.moves.len(), 1, "{p:?}");
    let m = &p.moves[0];
    assert!(
        m.reason.starts_with("rebalance; saves 0.034/h"),
        "{}",
        m.reason
    );
    assert!((m.benefit.saves_per_hour - 0.034).abs() < 1e-9);
    // A slow link makes it not worth it.
    let mut budget = MigrationBudget::default();
    budget.model.same_region_mib_s = 1.0;
    let p = plan_migrations(&v, &vms, &t, &Weights::default(), &budget);
    assert!(p.moves.is_empty() && p.kept.is_empty(), "{p:?}");
}

#[test]
fn identical_nodes_give_no_moves() {
    let mut a = node("a", "eu", 8, 8192);
    let b = node("b", "eu", 8, 8192);
    let vms = vec![vm(&mut a, "v", 1, 1024)];
    let t = Triggers {
        rebalance_all: true,
        ..Triggers::default()
    };
    assert!(plan(&view(vec![a, b]), &vms, &t).moves.is_empty());
}

#[test]
fn cross_region_and_edge_links_cost_more() {
    let mut a = node("a", "eu", 8, 8192);
    let b = node("b", "eu", 8, 8192);
    let c = node("c", "us", 8, 8192);
    let mut e = node("e", "site", 8, 8192);
    e.labels.insert(LABEL_CLOUD.into(), "edge".into());
    let vms = [vm(&mut a, "v", 1, 2048)];
    let mut v = view(vec![a, b, c, e]);
    v.latency_ms.insert(("eu".into(), "us".into()), 80);
    let budget = MigrationBudget::default();
    let w = Weights::default();
    let t = Triggers::default();
    let work = Planning::new(&v, &t, &budget, &w);
    let cost = |to: usize| work.transfer(&v.nodes[0], &v.nodes[to], vms[0].memory_mib);
    let (same, cross, edge) = (cost(1), cost(2), cost(3));
    assert!(
        same.0 < cross.0 && cross.0 < edge.0,
        "{same:?} {cross:?} {edge:?}"
    );
    assert!(same.1 < cross.1);
}

#[test]
fn planning_is_deterministic_and_order_independent() {
    let mut a = node("a", "eu", 8, 8192);
    let b = node("b", "eu", 8, 8192);
    let c = node("c", "us", 8, 8192);
    let vms: Vec<_> = (0..4)
        .map(|i| vm(&mut a, &format!("v{i}"), 1, 512))
        .collect();
    let t = Triggers {
        drain: [nid("a")].into(),
        ..Triggers::default()
    };
    let v = view(vec![a.clone(), b.clone(), c.clone()]);
    let p1 = plan(&v, &vms, &t);
    let mut rv = vms.clone();
    rv.reverse();
    let p2 = plan(&view(vec![c, b, a]), &rv, &t);
    assert_eq!(p1, p2);
    assert_eq!(p1.moves.len(), 4);
}
