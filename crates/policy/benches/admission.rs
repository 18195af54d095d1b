//! Admission with the built-in bundle: one `admit` of a typical VM spec (six policies).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use firefleet_policy::{builtin, PolicySet};
use serde_json::json;

fn input(memory_mib: u64) -> serde_json::Value {
    json!({
        "vm": {
            "name": "web",
            "tenant": "acme",
            "image": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "resources": {"vcpus": 1, "memory_mib": memory_mib},
            "labels": {"app": "web"},
            "cmd": null,
            "restart_policy": "never",
            "desired": "running",
            "network": {"enabled": true, "egress_mbit": null, "ingress_mbit": null},
            "runtime": "qemu",
            "disks": [],
            "placement": {"node_selector": {}, "allowed_clouds": [], "allowed_regions": ["eu-west"]}
        },
        "tenant": {"id": "acme", "class": "standard", "regions": ["eu-west"]}
    })
}

fn admission(c: &mut Criterion) {
    let set = match PolicySet::compile(&builtin()) {
        Ok(set) => set,
        Err(e) => panic!("{e}"),
    };
    let ok = input(256);
    let bad = input(65536);
    c.bench_function("admit/builtin/pass", |b| {
        b.iter(|| set.admit(black_box(&ok)))
    });
    c.bench_function("admit/builtin/deny", |b| {
        b.iter(|| set.admit(black_box(&bad)))
    });
    let host = json!({"node": {"id": "n1", "labels": {}, "facts": {"posture": {
        "smt_control": "on", "smt_active": true, "ksm_enabled": false, "swap_total_kib": 0,
        "vulnerabilities": {}, "vulnerable": [], "metadata_egress_blocked": true,
        "vmm_sandboxed": true, "seccomp": true, "cgroup_limits": true}}}});
    c.bench_function("check_host/builtin", |b| {
        b.iter(|| set.check_host(black_box(&host)))
    });
    c.bench_function("compile/builtin", |b| {
        b.iter(|| PolicySet::compile(black_box(&builtin())))
    });
}

criterion_group!(benches, admission);
criterion_main!(benches);
