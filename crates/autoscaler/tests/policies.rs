//! Policy semantics through the public API: what the controller relies on.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use firefleet_autoscaler::{
    Autoscaler, Decision, EngineConfig, FunctionParams, InstanceInfo, PolicyKind, Sample,
};
use proptest::prelude::*;

const MIN: u64 = 60_000;

fn sample(f: &str, invocations: u64, peak: u32, in_flight_ms: u64) -> Sample {
    Sample {
        function: f.into(),
        region: String::new(),
        invocations,
        peak_in_flight: peak,
        cold_starts: 0,
        in_flight_ms,
    }
}

fn idle(id: &str, since: u64) -> InstanceInfo {
    InstanceInfo {
        id: id.into(),
        region: String::new(),
        in_flight: 0,
        idle_since_ms: Some(since),
        ready: true,
    }
}

fn busy(id: &str) -> InstanceInfo {
    InstanceInfo {
        id: id.into(),
        region: String::new(),
        in_flight: 1,
        idle_since_ms: None,
        ready: true,
    }
}

fn insts(f: &str, v: Vec<InstanceInfo>) -> BTreeMap<String, Vec<InstanceInfo>> {
    let mut m = BTreeMap::new();
    if !v.is_empty() {
        m.insert(f.to_owned(), v);
    }
    m
}

fn one<'a>(ds: &'a [Decision], f: &str) -> Option<&'a Decision> {
    ds.iter().find(|d| d.function == f)
}

fn engine(policy: PolicyKind, tick_ms: u64) -> Autoscaler {
    let mut cfg = EngineConfig::new(policy);
    cfg.tick_ms = tick_ms;
    let mut e = Autoscaler::new(cfg);
    e.upsert_function("f", FunctionParams::default());
    e
}

#[test]
fn fixed_keep_alive_unloads_exactly_after_ten_minutes_idle() {
    let mut e = engine(PolicyKind::FIXED_10M, MIN);
    let d = e.tick(
        MIN,
        &[sample("f", 1, 1, 500)],
        &insts("f", vec![busy("i1")]),
    );
    assert_eq!(one(&d, "f").unwrap().wanted_total(), 0);
    let idle_at = MIN + 30_000;
    for now in [2 * MIN, 5 * MIN, 10 * MIN] {
        let d = e.tick(now, &[], &insts("f", vec![idle("i1", idle_at)]));
        let d = one(&d, "f").unwrap();
        assert_eq!(d.keep_alive_until_ms["i1"], idle_at + 10 * MIN);
        assert_eq!(d.wanted_total(), 0);
    }
    // Past the deadline: the deadline is now (never in the past), the controller stops it.
    let now = idle_at + 10 * MIN + 5_000;
    let d = e.tick(now, &[], &insts("f", vec![idle("i1", idle_at)]));
    assert_eq!(one(&d, "f").unwrap().keep_alive_until_ms["i1"], now);
    // Gone: no decision at all.
    assert!(e.tick(now + MIN, &[], &BTreeMap::new()).is_empty());
}

#[test]
fn min_instances_are_held_and_max_caps() {
    let mut e = engine(PolicyKind::FIXED_10M, 1000);
    e.upsert_function(
        "f",
        FunctionParams {
            min: 1,
            ..FunctionParams::default()
        },
    );
    let d = e.tick(
        100 * MIN,
        &[],
        &insts("f", vec![idle("a", 0), idle("b", 10)]),
    );
    let d = one(&d, "f").unwrap();
    assert_eq!(d.wanted_total(), 1);
    // the most recently idle one is held past the next tick, the other expires now
    assert!(d.keep_alive_until_ms["b"] > 100 * MIN);
    assert_eq!(d.keep_alive_until_ms["a"], 100 * MIN);
}

/// Drives one function through invocations at the given minutes (tick = bin = 1 minute).
fn drive(e: &mut Autoscaler, minutes: &[u64]) -> u64 {
    let mut last = 0;
    for &m in minutes {
        // quiet ticks are skipped: the engine closes the bins in between
        e.tick((m + 1) * MIN, &[sample("f", 1, 1, 1000)], &BTreeMap::new());
        last = m;
    }
    last
}

#[test]
fn hybrid_uses_5th_and_99th_percentile_windows() {
    let mut e = engine(PolicyKind::HybridHistogram, MIN);
    // idle times: 5 x 20 min, 93 x 40 min, 2 x 60 min -> p5 = 20, p99 = 60
    let mut its = vec![20u64; 5];
    its.extend(vec![40; 93]);
    its.extend(vec![60; 2]);
    let mut minutes = vec![0u64];
    for it in its {
        minutes.push(minutes.last().unwrap() + it);
    }
    let last = drive(&mut e, &minutes);
    // pre-warm = floor(20 * 0.9) = 18 bins; loaded through bin last + ceil(60 * 1.1) = 66
    let now = (last + 2) * MIN;
    let d = e.tick(
        now,
        &[],
        &insts("f", vec![idle("i", (last + 1) * MIN - 5_000)]),
    );
    let d = one(&d, "f").unwrap();
    assert!(
        d.reason.contains("pre-warm 18 keep-alive 48"),
        "{}",
        d.reason
    );
    // one tick (here a minute) ahead of the window
    assert_eq!(d.prewarm_at_ms, Some((last + 17) * MIN));
    assert_eq!(d.wanted_total(), 0);
    // unloaded after the invocation's minute: the deadline is already due
    assert_eq!(d.keep_alive_until_ms["i"], now);
    // in the window: one instance wanted, kept to the end of bin last + 66
    let now = (last + 30) * MIN;
    let d = e.tick(now, &[], &insts("f", vec![idle("p", (last + 18) * MIN)]));
    let d = one(&d, "f").unwrap();
    assert_eq!(d.wanted_total(), 1);
    assert_eq!(d.keep_alive_until_ms["p"], (last + 67) * MIN);
    // after the window: nothing wanted
    let d = e.tick((last + 70) * MIN, &[], &BTreeMap::new());
    assert!(one(&d, "f").is_none());
}

#[test]
fn hybrid_falls_back_to_range_keep_alive_for_uniform_idle_times() {
    let mut e = engine(PolicyKind::HybridHistogram, MIN);
    // idle times 1..=200 once each: flat histogram, CV < 2 -> keep loaded for 4 h
    let mut minutes = vec![0u64];
    for it in 1..=200u64 {
        minutes.push(minutes.last().unwrap() + it);
    }
    let last = drive(&mut e, &minutes);
    let d = e.tick(
        (last + 2) * MIN,
        &[],
        &insts("f", vec![idle("i", (last + 1) * MIN)]),
    );
    let d = one(&d, "f").unwrap();
    assert!(d.reason.starts_with("hybrid fallback"), "{}", d.reason);
    assert_eq!(d.keep_alive_until_ms["i"], (last + 241) * MIN);
}

#[test]
fn hybrid_uses_arima_when_idle_times_are_out_of_range() {
    let mut e = engine(PolicyKind::HybridHistogram, MIN);
    // every 300 minutes: beyond the 4-hour range
    let minutes: Vec<u64> = (0..6).map(|i| i * 300).collect();
    let last = drive(&mut e, &minutes);
    let d = e.tick((last + 2) * MIN, &[], &BTreeMap::new());
    let d = one(&d, "f").unwrap();
    // predicted 300: pre-warm 255 (85%), keep-alive 90 (2 x 15%)
    assert!(
        d.reason.contains("arima: pre-warm 255 keep-alive 90"),
        "{}",
        d.reason
    );
    assert_eq!(d.prewarm_at_ms, Some((last + 254) * MIN));
}

#[test]
fn knative_panics_at_twice_the_ready_pods_and_holds() {
    let tick = 2_000;
    let mut e = engine(PolicyKind::Knative, tick);
    let two = || insts("f", vec![busy("a"), busy("b")]);
    // average concurrency 2.0 on 2 pods: panic wants ceil(2 / 0.7) = 3 = 1.5x -> no panic
    let mut now = 100_000;
    for _ in 0..3 {
        now += tick;
        let d = e.tick(now, &[sample("f", 4, 2, 2 * tick)], &two());
        assert_eq!(one(&d, "f").unwrap().reason, "knative: stable");
    }
    // 2.8 -> ceil(4.0) = 4 = 2x the ready pods -> panic
    let mut e = engine(PolicyKind::Knative, tick);
    let mut now = 100_000;
    let mut last = None;
    for _ in 0..3 {
        now += tick;
        let d = e.tick(now, &[sample("f", 6, 3, 28 * tick / 10)], &two());
        last = Some(one(&d, "f").unwrap().clone());
    }
    let d = last.unwrap();
    assert_eq!(d.reason, "knative: panic");
    let peak = d.wanted_total();
    assert!(peak >= 4, "{peak}");
    // traffic stops: panic holds (no scale-down) for the stable window
    let panic_at = now;
    let four = || {
        insts(
            "f",
            (0..4).map(|i| idle(&format!("i{i}"), panic_at)).collect(),
        )
    };
    while now < panic_at + 58_000 {
        now += tick;
        let d = e.tick(now, &[], &four());
        let d = one(&d, "f").unwrap();
        assert_eq!(d.reason, "knative: panic");
        assert!(d.wanted_total() >= peak);
    }
    now += 4 * tick;
    let d = e.tick(now, &[], &four());
    assert_eq!(one(&d, "f").unwrap().reason, "knative: stable");
}

#[test]
fn knative_scales_to_zero_after_stable_window_and_grace() {
    let tick = 2_000;
    let mut e = engine(PolicyKind::Knative, tick);
    let mut now = 10_000;
    e.tick(
        now,
        &[sample("f", 1, 1, 1000)],
        &insts("f", vec![busy("a")]),
    );
    let mut zero_at = None;
    for _ in 0..200 {
        now += tick;
        let d = e.tick(now, &[], &insts("f", vec![idle("a", 10_000)]));
        let d = one(&d, "f").unwrap();
        if d.wanted_total() == 0 {
            assert_eq!(d.keep_alive_until_ms["a"], now);
            zero_at = Some(now);
            break;
        }
    }
    let zero_at = zero_at.expect("scaled to zero");
    // 60 s stable window + 30 s grace, at 2 s granularity
    assert!((88_000..=96_000).contains(&(zero_at - 10_000)), "{zero_at}");
}

#[test]
fn firefleet_scales_to_zero() {
    let mut e = engine(PolicyKind::FireFleet, MIN);
    // a burst of activity for an hour, then silence
    for m in 0..60 {
        e.tick(
            (m + 1) * MIN,
            &[sample("f", 30, 2, 60_000)],
            &insts("f", vec![busy("a"), busy("b")]),
        );
    }
    let mut now = 61 * MIN;
    let mut gone = false;
    for _ in 0..(6 * 60) {
        now += MIN;
        let v = vec![idle("a", 61 * MIN), idle("b", 61 * MIN)];
        let d = e.tick(now, &[], &insts("f", v));
        let d = one(&d, "f").unwrap();
        if d.wanted_total() == 0 && d.keep_alive_until_ms.values().all(|&t| t <= now) {
            gone = true;
            break;
        }
    }
    assert!(gone, "never scaled to zero");
    let d = e.tick(now + MIN, &[], &BTreeMap::new());
    assert!(one(&d, "f").is_none(), "{d:?}");
}

#[test]
fn firefleet_prewarms_a_periodic_function() {
    let mut e = engine(PolicyKind::FireFleet, MIN);
    // a timer every 30 minutes: fixed 10-minute keep-alive would cold-start every time
    let minutes: Vec<u64> = (0..20).map(|i| i * 30).collect();
    let last = drive(&mut e, &minutes);
    let d = e.tick((last + 2) * MIN, &[], &BTreeMap::new());
    let d = one(&d, "f").unwrap();
    let at = d.prewarm_at_ms.expect("pre-warm planned");
    assert!(at > (last + 20) * MIN && at <= (last + 30) * MIN, "{at}");
    let d = e.tick(at, &[], &BTreeMap::new());
    assert_eq!(one(&d, "f").unwrap().wanted_total(), 1);
    let d = e.tick((last + 20) * MIN, &[], &BTreeMap::new());
    assert_eq!(one(&d, "f").unwrap().wanted_total(), 0);
}

#[test]
fn new_function_gets_default_keep_alive() {
    for policy in [PolicyKind::FireFleet, PolicyKind::HybridHistogram] {
        let mut cfg = EngineConfig::new(policy);
        cfg.tick_ms = 500;
        cfg.bin_ms = 1000;
        cfg.default_keep_alive_ms = 5_000;
        let mut e = Autoscaler::new(cfg);
        e.upsert_function("f", FunctionParams::default());
        e.tick(500, &[sample("f", 1, 1, 200)], &insts("f", vec![busy("a")]));
        let d = e.tick(1000, &[], &insts("f", vec![idle("a", 700)]));
        assert_eq!(
            one(&d, "f").unwrap().keep_alive_until_ms["a"],
            5_700,
            "{policy}"
        );
    }
}

#[test]
fn wanted_is_split_over_regions_by_where_invocations_came_from() {
    let mut e = engine(PolicyKind::Knative, 2_000);
    e.upsert_function(
        "f",
        FunctionParams {
            regions: vec!["eu".into(), "us".into()],
            ..FunctionParams::default()
        },
    );
    let s = |r: &str, n: u64, ms: u64| Sample {
        region: r.into(),
        ..sample("f", n, n as u32, ms)
    };
    let mut now = 0;
    let mut d = Vec::new();
    for _ in 0..30 {
        now += 2_000;
        d = e.tick(
            now,
            &[s("eu", 3, 6_000), s("us", 1, 2_000)],
            &BTreeMap::new(),
        );
    }
    let d = one(&d, "f").unwrap();
    // concurrency 4 / 0.7 -> 6 pods, 3:1 -> eu 4 or 5, us 1 or 2
    assert_eq!(d.wanted_total(), 6);
    assert!(d.wanted["eu"] > d.wanted["us"], "{:?}", d.wanted);
    assert_eq!(d.wanted.len(), 2);
}

#[test]
fn unknown_functions_in_samples_are_ignored_and_removed_ones_forgotten() {
    let mut e = engine(PolicyKind::FireFleet, 1000);
    let d = e.tick(1000, &[sample("ghost", 5, 1, 100)], &BTreeMap::new());
    assert!(d.is_empty());
    e.remove_function("f");
    assert_eq!(e.function_count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn wanted_within_min_max_and_deadlines_not_in_the_past(
        policy in prop::sample::select(vec![
            PolicyKind::FireFleet, PolicyKind::FIXED_10M, PolicyKind::HybridHistogram, PolicyKind::Knative,
        ]),
        min in 0u32..3,
        extra in 0u32..5,
        steps in prop::collection::vec((0u64..20, 0u32..8, 0usize..6, 0u64..4), 1..60),
    ) {
        let max = min + extra;
        let mut cfg = EngineConfig::new(policy);
        cfg.tick_ms = 2_000;
        let mut e = Autoscaler::new(cfg);
        e.upsert_function("f", FunctionParams { min, max, ..FunctionParams::default() });
        let mut now = 0;
        for (inv, peak, n_inst, gap) in steps {
            now += 2_000 * (1 + gap * 10);
            let v: Vec<InstanceInfo> = (0..n_inst)
                .map(|i| if i < peak as usize { busy(&format!("b{i}")) } else { idle(&format!("i{i}"), now.saturating_sub(1_000 * i as u64)) })
                .collect();
            let ds = e.tick(now, &[sample("f", inv, peak, u64::from(peak) * 2_000)], &insts("f", v.clone()));
            if let Some(d) = one(&ds, "f") {
                let w = d.wanted_total();
                prop_assert!(w >= min && w <= max, "wanted {} not in [{}, {}]", w, min, max);
                for (id, &t) in &d.keep_alive_until_ms {
                    prop_assert!(t >= now, "deadline of {} in the past", id);
                    prop_assert!(v.iter().any(|i| &i.id == id && i.in_flight == 0));
                }
                prop_assert!(d.prewarm_at_ms.is_none_or(|t| t > now));
            } else {
                prop_assert!(v.is_empty() && min == 0);
            }
        }
    }
}
