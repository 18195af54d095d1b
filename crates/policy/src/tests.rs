//! The built-in bundle and the conventions, end to end through the public API.

use serde_json::{json, Value};

use crate::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn bundle() -> PolicySet {
    match PolicySet::compile(&builtin()) {
        Ok(set) => set,
        Err(e) => panic!("the built-in bundle compiles: {e}"),
    }
}

/// A VM spec as the API stores it for `firefleet vm run` without flags (serde defaults in).
fn default_vm() -> Value {
    json!({
        "name": "web",
        "tenant": "acme",
        "image": DIGEST,
        "resources": {"vcpus": 1, "memory_mib": 256},
        "labels": {},
        "cmd": null,
        "restart_policy": "never",
        "desired": "running",
        "restore": null,
        "network": {"enabled": true, "egress_mbit": 1000, "ingress_mbit": null},
        "runtime": "qemu",
        "disks": [],
        "placement": {
            "node_selector": {},
            "allowed_clouds": [],
            "allowed_regions": [],
            "group": null,
            "class": null,
            "user_region": null
        }
    })
}

fn tenant() -> Value {
    json!({"id": "acme", "class": "standard", "regions": []})
}

fn admission(vm: Value, tenant: Value) -> Value {
    json!({"vm": vm, "tenant": tenant})
}

fn doc(name: &str, source: &str) -> PolicyDoc {
    PolicyDoc {
        name: name.into(),
        source: source.into(),
        mode: None,
    }
}

fn good_posture() -> Value {
    json!({
        "smt_control": "off",
        "smt_active": false,
        "ksm_enabled": false,
        "swap_total_kib": 0,
        "vulnerabilities": {"meltdown": "Not affected", "spectre_v2": "Mitigation: Retpolines"},
        "vulnerable": [],
        "metadata_egress_blocked": true,
        "vmm_sandboxed": true,
        "seccomp": true,
        "cgroup_limits": true
    })
}

fn node(posture: Value) -> Value {
    json!({"node": {
        "id": "n1",
        "labels": {"region": "eu"},
        "facts": {
            "hostname": "n1",
            "capacity": {"vcpus": 4, "memory_mib": 8192},
            "accel": "tcg",
            "accel_probe": "",
            "runtimes": ["qemu"],
            "vmm_version": "QEMU 8.2",
            "kernel": "6.8.0",
            "agent_version": "0.1.0",
            "network": null,
            "isolation": {
                "uid_per_vm": true, "seccomp": "qemu -sandbox on", "cgroup": "v2",
                "cpu_limit": true, "memory_limit": true, "jail": "chroot", "notes": []
            },
            "power": null,
            "posture": posture
        }
    }})
}

#[test]
fn every_builtin_rego_test_passes() {
    let set = bundle();
    let results = set.run_tests();
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    for f in &failed {
        eprintln!("FAILED {} {}: {:?}", f.policy, f.test, f.error);
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed",
        failed.len(),
        results.len()
    );
    for p in set.policies() {
        assert!(!p.tests.is_empty(), "{} has no tests", p.name);
    }
    assert!(results.len() >= 30, "{} tests", results.len());
}

#[test]
fn builtin_policies_have_their_kinds_and_modes() {
    let set = bundle();
    let modes: Vec<(&str, Kind, Mode)> = set
        .policies()
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("admission/data_residency", Kind::Admission, Mode::Deny),
            ("admission/egress_limited", Kind::Admission, Mode::Warn),
            ("admission/gpu_tenants", Kind::Admission, Mode::Deny),
            ("admission/image_pinned", Kind::Admission, Mode::Deny),
            ("admission/resource_limits", Kind::Admission, Mode::Deny),
            ("admission/tenant_isolation", Kind::Admission, Mode::Deny),
            ("host/cpu_side_channels", Kind::Host, Mode::Deny),
            ("host/memory_side_channels", Kind::Host, Mode::Deny),
            ("host/metadata_egress", Kind::Host, Mode::Deny),
            ("host/vmm_isolation", Kind::Host, Mode::Deny),
        ]
    );
    let info = &set.policies()[3];
    assert_eq!(info.package, "firefleet.admission.image_pinned");
    assert!(info.tests.contains(&"test_tag_is_denied".to_string()));
}

#[test]
fn default_vm_passes_every_policy() {
    let eval = bundle().admit(&admission(default_vm(), tenant()));
    assert!(eval.passed(), "{:?}", eval.results);
    assert!(eval.warnings().is_empty());
    assert_eq!(eval.results.len(), 6);
    // A policy without controls reports one control named after it.
    let image = &eval.results[3];
    assert_eq!(image.controls.len(), 1);
    assert_eq!(image.controls[0].id, "image_pinned");
    assert_eq!(image.controls[0].name, "admission/image_pinned");
    assert!(image.controls[0].passed);
    // Unlimited egress, asked for: only the egress warning.
    let mut vm = default_vm();
    vm["network"]["egress_mbit"] = json!(null);
    let eval = bundle().admit(&admission(vm, tenant()));
    assert!(!eval.denied(), "{:?}", eval.deny_reasons());
    assert_eq!(
        eval.warnings(),
        [
            "admission/egress_limited: network.egress_mbit is not set: a VM with a network needs \
          an egress bandwidth limit (or network.enabled false)"
        ]
    );
    assert!(!eval.passed());
}

#[test]
fn a_policy_past_its_time_budget_fails_closed() {
    let slow = doc(
        "admission/slow",
        r#"package firefleet.admission.slow
import rego.v1
deny contains msg if {
    input.vm
    some i in numbers.range(1, 5000)
    some j in numbers.range(1, 5000)
    i * j == -1
    msg := "never"
}
"#,
    );
    let mut docs = builtin();
    docs.push(slow);
    let set = PolicySet::compile(&docs).unwrap();
    let eval = set.admit(&admission(default_vm(), tenant()));
    assert!(eval.denied(), "a policy that ran out of time let the VM in");
    let reasons = eval.deny_reasons().join("; ");
    assert!(
        reasons.contains("admission/slow") && reasons.contains("could not be evaluated"),
        "{reasons}"
    );
    // The other policies were evaluated as usual.
    assert_eq!(eval.results.len(), 7);
}

#[test]
fn a_policy_that_runs_out_of_time_when_compiled_is_refused() {
    let slow = doc(
        "admission/slow",
        r#"package firefleet.admission.slow
import rego.v1
deny contains msg if {
    some i in numbers.range(1, 5000)
    some j in numbers.range(1, 5000)
    i * j == -1
    msg := "never"
}
"#,
    );
    let err = PolicySet::compile(&[slow]).unwrap_err().to_string();
    assert!(err.contains("admission/slow"), "{err}");
}

#[test]
fn a_bare_spec_without_serde_defaults_passes_too() {
    let vm = json!({"name": "web", "tenant": "acme", "image": DIGEST,
        "resources": {"vcpus": 1, "memory_mib": 128}, "desired": "running"});
    let eval = bundle().admit(&json!({"vm": vm, "tenant": {"id": "acme"}}));
    assert!(!eval.denied(), "{:?}", eval.deny_reasons());
    assert_eq!(eval.warnings().len(), 1);
}

fn denied_for(vm: Value, tenant: Value) -> Vec<String> {
    let eval = bundle().admit(&admission(vm, tenant));
    assert!(eval.denied(), "not denied");
    eval.deny_reasons()
}

#[test]
fn each_admission_rule_denies_naming_the_field() {
    let mut vm = default_vm();
    vm["image"] = json!("alpine:3.20");
    assert_eq!(
        denied_for(vm, tenant()),
        [
            "admission/image_pinned: image \"alpine:3.20\" is not pinned by digest (want \
          sha256:<64 lowercase hex>)"
        ]
    );

    let mut vm = default_vm();
    vm["resources"]["memory_mib"] = json!(65536);
    assert_eq!(
        denied_for(vm, tenant()),
        ["admission/resource_limits: resources.memory_mib 65536 is above the limit 16384"]
    );
    let mut vm = default_vm();
    vm["resources"]["vcpus"] = json!(16);
    assert_eq!(
        denied_for(vm, tenant()),
        ["admission/resource_limits: resources.vcpus 16 is above the limit 8"]
    );

    let restricted = json!({"id": "acme", "class": "restricted", "regions": []});
    let reasons = denied_for(default_vm(), restricted.clone());
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("placement.compliant_host must be true"));
    assert!(reasons[1].contains("placement.node_selector.dedicated must be \"acme\""));
    let mut vm = default_vm();
    vm["placement"]["compliant_host"] = json!(true);
    vm["placement"]["node_selector"] = json!({"dedicated": "acme"});
    assert!(!bundle().admit(&admission(vm, restricted)).denied());

    let mut vm = default_vm();
    vm["resources"]["gpus"] = json!(1);
    assert_eq!(
        denied_for(vm.clone(), tenant()),
        ["admission/gpu_tenants: resources.gpus 1: tenant \"acme\" (class standard) may not use \
          GPUs"]
    );
    vm["tenant"] = json!("ml");
    assert!(!bundle().admit(&admission(vm, json!({"id": "ml"}))).denied());

    let resident = json!({"id": "acme", "regions": ["eu-west"]});
    assert_eq!(
        denied_for(default_vm(), resident.clone()),
        [
            "admission/data_residency: placement.allowed_regions is empty: the tenant's data must \
          stay in eu-west"
        ]
    );
    let mut vm = default_vm();
    vm["placement"]["allowed_regions"] = json!(["eu-west", "us-east", "ap-south"]);
    assert_eq!(
        denied_for(vm, resident),
        [
            "admission/data_residency: placement.allowed_regions has ap-south, us-east outside \
          the tenant's regions eu-west"
        ]
    );
}

#[test]
fn egress_denies_when_applied_in_mode_deny() {
    let mut docs = builtin();
    for d in &mut docs {
        if d.name == "admission/egress_limited" {
            d.mode = Some(Mode::Deny);
        }
    }
    let set = PolicySet::compile(&docs).expect("compiles");
    assert!(!set.admit(&admission(default_vm(), tenant())).denied());
    let mut vm = default_vm();
    vm["network"]["egress_mbit"] = json!(null);
    let eval = set.admit(&admission(vm, tenant()));
    assert!(eval.denied());
    assert!(eval.deny_reasons()[0].contains("network.egress_mbit"));
    assert!(eval.warnings().is_empty());
}

#[test]
fn mode_audit_never_denies() {
    let docs: Vec<PolicyDoc> = builtin()
        .into_iter()
        .map(|d| PolicyDoc {
            mode: Some(Mode::Audit),
            ..d
        })
        .collect();
    let set = PolicySet::compile(&docs).expect("compiles");
    let mut vm = default_vm();
    vm["image"] = json!("latest");
    vm["resources"] = json!({"vcpus": 64, "memory_mib": 1_000_000, "gpus": 4});
    let eval = set.admit(&admission(
        vm,
        json!({"id": "x", "class": "restricted", "regions": ["eu"]}),
    ));
    assert!(!eval.denied());
    assert!(eval.deny_reasons().is_empty());
    assert!(eval.warnings().is_empty());
    assert!(!eval.passed());
    assert!(
        eval.results
            .iter()
            .filter(|r| !r.violations.is_empty())
            .count()
            >= 5
    );
    let host = set.check_host(&node(Value::Null));
    assert!(!host.denied() && !host.passed());
}

#[test]
fn a_syntax_error_reports_line_and_column() {
    let src = "package firefleet.admission.broken\n\nimport rego.v1\n\ndeny contains msg if {\n  msg := \n}\n";
    let err = inspect(&doc("admission/broken", src)).expect_err("refused");
    let text = err.to_string();
    assert_eq!(
        text,
        "policy admission/broken: admission/broken:6:7: expecting `}` while parsing set"
    );
    let err = PolicySet::compile(&[doc("admission/broken", src)]).expect_err("refused");
    assert_eq!(err.to_string(), text);
}

#[test]
fn an_unknown_function_is_refused_at_compile_time() {
    let src = "package firefleet.admission.typo\nimport rego.v1\ndeny contains m if { m := no_such_fn(input.vm) }\n";
    let err = inspect(&doc("typo", src)).expect_err("refused");
    assert!(matches!(err, PolicyError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("typo:3:"), "{err}");
}

#[test]
fn bad_packages_are_refused_by_name() {
    for package in [
        "acme.rules",
        "firefleet.admission",
        "firefleet.vm.x",
        "firefleet.host.a.b",
    ] {
        let src = format!("package {package}\nimport rego.v1\ndeny contains \"x\" if false\n");
        let err = inspect(&doc("p", &src)).expect_err("refused");
        assert_eq!(
            err,
            PolicyError::Package {
                policy: "p".into(),
                package: package.into()
            }
        );
        assert!(err.to_string().contains(package), "{err}");
    }
    let src = "package firefleet.host.x\nimport rego.v1\nallow := true\n";
    assert!(matches!(
        inspect(&doc("p", src)),
        Err(PolicyError::NoDeny { .. })
    ));
}

#[test]
fn duplicates_and_bad_enforcement_are_refused() {
    let a = doc(
        "a",
        "package firefleet.admission.same\nimport rego.v1\ndeny contains \"a\" if false\n",
    );
    let b = doc("b", &a.source);
    let err = PolicySet::compile(&[a.clone(), b]).expect_err("refused");
    assert!(
        matches!(err, PolicyError::DuplicatePackage { ref other, .. } if other == "a"),
        "{err}"
    );
    assert!(matches!(
        PolicySet::compile(&[a.clone(), a]),
        Err(PolicyError::DuplicateName { .. })
    ));
    let bad = doc(
        "e",
        "package firefleet.admission.e\nimport rego.v1\nenforcement := \"block\"\ndeny contains \"a\" if false\n",
    );
    let err = inspect(&bad).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "policy e: enforcement \"block\" is not \"deny\", \"warn\" or \"audit\""
    );
}

#[test]
fn modes_parse_and_print() {
    for m in [Mode::Deny, Mode::Warn, Mode::Audit] {
        assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        assert_eq!(serde_json::to_value(m).ok(), Some(json!(m.to_string())));
    }
    let err = "block".parse::<Mode>().expect_err("refused");
    assert!(err.to_string().contains("\"block\""), "{err}");
    assert_eq!(Kind::Admission.to_string(), "admission");
    assert_eq!(serde_json::to_value(Kind::Host).ok(), Some(json!("host")));
}

#[test]
fn a_runtime_error_fails_closed() {
    // Two values for one complete rule: a conflict at evaluation time.
    let src = "package firefleet.admission.conflict\nimport rego.v1\nx := 1 if input.vm\nx := 2 if input.vm\ndeny contains \"never\" if x == 3\n";
    let set = PolicySet::compile(&[doc("admission/conflict", src)]).expect("compiles");
    let eval = set.admit(&admission(default_vm(), tenant()));
    assert!(eval.denied());
    let reasons = eval.deny_reasons();
    assert!(
        reasons[0].starts_with("admission/conflict: policy could not be evaluated: "),
        "{reasons:?}"
    );
    assert!(!eval.results[0].controls[0].passed);
}

#[test]
fn a_good_host_passes_every_control() {
    let eval = bundle().check_host(&node(good_posture()));
    assert!(eval.passed(), "{:?}", eval.deny_reasons());
    let controls: Vec<(&str, bool)> = eval
        .results
        .iter()
        .flat_map(|r| r.controls.iter().map(|c| (c.id.as_str(), c.passed)))
        .collect();
    assert_eq!(
        controls,
        [
            ("no-vulnerable-cpu", true),
            ("smt-off", true),
            ("ksm-off", true),
            ("swap-off", true),
            ("metadata-egress-blocked", true),
            ("cgroup-limits", true),
            ("seccomp", true),
            ("vmm-sandbox", true),
        ]
    );
    let smt = &eval.results[0].controls[1];
    assert_eq!(smt.name, "SMT disabled");
    assert_eq!(
        smt.evidence,
        json!({"smt_control": "off", "smt_active": false})
    );
    let sandbox = &eval.results[3].controls[2];
    assert_eq!(sandbox.evidence["jail"], json!("chroot"));
}

#[test]
fn absent_posture_fails_every_control() {
    let set = bundle();
    for input in [
        node(Value::Null),
        json!({"node": {"id": "n1", "labels": {}, "facts": {}}}),
    ] {
        let eval = set.check_host(&input);
        assert!(eval.denied());
        let controls: Vec<&Control> = eval.results.iter().flat_map(|r| &r.controls).collect();
        assert_eq!(controls.len(), 8);
        for c in controls {
            assert!(!c.passed, "{}", c.id);
            assert_eq!(c.evidence, json!("not reported"), "{}", c.id);
        }
        assert_eq!(eval.deny_reasons().len(), 8);
    }
}

#[test]
fn a_typical_cloud_vm_host_is_tainted_for_smt_and_vulnerabilities() {
    let mut posture = good_posture();
    posture["smt_control"] = json!("on");
    posture["smt_active"] = json!(true);
    posture["vulnerable"] = json!(["mmio_stale_data"]);
    let eval = bundle().check_host(&node(posture));
    assert!(eval.denied());
    assert_eq!(
        eval.deny_reasons(),
        [
            "host/cpu_side_channels: No CPU vulnerability reported Vulnerable \
             (no-vulnerable-cpu) failed: [\"mmio_stale_data\"]",
            "host/cpu_side_channels: SMT disabled (smt-off) failed: \
             {\"smt_active\":true,\"smt_control\":\"on\"}",
        ]
    );
}

#[test]
fn admission_and_host_policies_stay_apart() {
    let set = bundle();
    assert_eq!(set.admit(&json!({})).results.len(), 6);
    assert_eq!(set.check_host(&json!({})).results.len(), 4);
    // An empty admission input violates nothing (there is no VM to judge).
    assert!(set.admit(&json!({})).passed());
}

#[test]
fn policy_set_is_send_sync_and_results_round_trip() {
    fn check<T: Send + Sync + Clone>() {}
    check::<PolicySet>();
    let eval = bundle().check_host(&node(Value::Null));
    let text = serde_json::to_string(&eval).expect("serialises");
    let back: Evaluation = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, eval);
}

mod prop {
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use serde_json::json;

    use super::bundle;
    use crate::PolicySet;

    fn set() -> &'static PolicySet {
        static SET: OnceLock<PolicySet> = OnceLock::new();
        SET.get_or_init(bundle)
    }

    fn pinned(image: &str) -> bool {
        image.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
    }

    fn image() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
            "sha256:[0-9a-fA-F]{60,66}",
            "[a-z0-9:./_-]{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// With a standard tenant and no GPUs, a VM is denied exactly when its resources are
        /// outside the limits or its image is not pinned; egress never denies (it warns).
        #[test]
        fn denied_iff_out_of_limits_or_unpinned(
            vcpus in 0u32..20,
            memory_mib in prop_oneof![0u64..300, 16000u64..17000, 0u64..100_000],
            image in image(),
            egress in proptest::option::of(1u32..1000),
            network in any::<bool>(),
        ) {
            let vm = json!({
                "name": "vm", "tenant": "acme", "image": image, "desired": "running",
                "resources": {"vcpus": vcpus, "memory_mib": memory_mib},
                "network": {"enabled": network, "egress_mbit": egress},
            });
            let eval = set().admit(&json!({"vm": vm, "tenant": {"id": "acme", "regions": []}}));
            let expected = !(1..=8).contains(&vcpus)
                || !(128..=16384).contains(&memory_mib)
                || !pinned(&image);
            prop_assert_eq!(eval.denied(), expected, "{:?}", eval.deny_reasons());
            prop_assert_eq!(eval.warnings().is_empty(), !network || egress.is_some());
        }
    }
}

#[test]
fn rego_v0_is_refused_and_unknown_functions_fail_closed() {
    let v0 = "package firefleet.admission.old\ndeny[msg] { msg := \"x\" }\n";
    let err = inspect(&doc("old", v0)).expect_err("refused");
    assert!(err.to_string().contains("old:2:"), "{err}");
    let hidden = "package firefleet.admission.hidden\nimport rego.v1\ndeny contains m if {\n  input.vm.x > 1\n  m := no_such_fn(input.vm)\n}\n";
    // Only found once called: compile accepts it, evaluation fails closed.
    let set = PolicySet::compile(&[doc("hidden", hidden)]).expect("compiles");
    assert!(!set.admit(&json!({"vm": {"x": 0}})).denied());
    let eval = set.admit(&json!({"vm": {"x": 2}}));
    assert!(eval.denied());
    assert!(
        eval.deny_reasons()[0].starts_with("hidden: policy could not be evaluated: hidden:5:"),
        "{:?}",
        eval.deny_reasons()
    );
}
