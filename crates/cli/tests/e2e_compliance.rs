//! End to end: compliance as code with real microVMs.
//!
//! - A VM spec that breaks a built-in admission policy is refused with the policy's reasons.
//! - A policy tightened while VMs run: the VM that now breaks it is stopped within a deadline,
//!   the other keeps running, the audit log shows the stop, and every VM still running has a
//!   passing record at the new policy version (the invariant).
//! - A host failing its posture is tainted: a VM that needs a compliant host stays pending;
//!   once the failing host policies are relaxed (warn mode), it is placed and runs; when its
//!   node is tainted under it, it is migrated to the other, compliant node.
//! - The compliance report, as JSON and as HTML.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use firefleet_testkit::cluster::Cluster;

const BOOT: Duration = Duration::from_secs(120);
/// From a policy change to the remediation of what breaks it.
const REMEDIATION: Duration = Duration::from_secs(30);

const MAX_256: &str = r#"package firefleet.admission.small_vms
import rego.v1

deny contains msg if {
    input.vm.resources.memory_mib > 256
    msg := sprintf("memory_mib %d is above 256", [input.vm.resources.memory_mib])
}

test_big_denied if {
    count(deny) == 1 with input as {"vm": {"resources": {"memory_mib": 512}}}
}
"#;

const TAINT_ALL: &str = r#"package firefleet.host.under_test
import rego.v1

deny contains "every node is held non-compliant by the test" if input.node.id
"#;

fn taint_one(node: &str) -> String {
    format!(
        "package firefleet.host.under_test\nimport rego.v1\n\n\
         deny contains \"node {node} is held non-compliant by the test\" if input.node.id == \"{node}\"\n"
    )
}

fn run(c: &Cluster, name: &str, memory: u32, extra: &[&str]) -> std::process::Output {
    let mem = memory.to_string();
    let mut args = vec!["vm", "run", "--name", name, "--memory", &mem];
    args.extend_from_slice(extra);
    c.cli(&args)
}

fn records(c: &Cluster) -> (u64, Vec<serde_json::Value>) {
    let v = c.json(&["compliance", "ls"]);
    (
        v["policy_version"].as_u64().unwrap(),
        v["records"].as_array().unwrap().clone(),
    )
}

fn record<'a>(records: &'a [serde_json::Value], subject: &str) -> Option<&'a serde_json::Value> {
    records.iter().find(|r| r["subject"] == subject)
}

/// Every VM running has a passing record at the current policy version.
fn assert_invariant(c: &Cluster) {
    let (version, recs) = records(c);
    for vm in c.json(&["vm", "ls"]).as_array().unwrap() {
        if vm["status"]["phase"] != "running" {
            continue;
        }
        let r = record(&recs, vm["id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("running VM without a record: {vm}"));
        assert!(
            r["passed"] == true && r["policy_version"] == version,
            "running VM {} without a passing record at version {version}: {r}",
            vm["spec"]["name"]
        );
    }
}

#[test]
fn admission_remediation_posture_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start();
    c.start_agent("n1", &[], 8);
    c.start_agent("n2", &[], 8);
    c.wait_nodes_ready(2);

    // The built-in bundle is in force.
    let policies = c.json(&["policy", "ls"]);
    let v1 = policies["version"].as_u64().unwrap();
    assert!(
        policies["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "admission/resource_limits" && p["builtin"] == true),
        "{policies}"
    );

    // Refused: 12 vCPUs is above the built-in limit; the reasons name the policy.
    let out = run(&c, "greedy", 256, &["--vcpus", "12"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused by policy") && err.contains("admission/resource_limits"),
        "{err}"
    );
    assert!(c.json(&["vm", "ls"]).as_array().unwrap().is_empty());

    // Admitted without a warning: the defaults satisfy the built-in policies (an egress limit
    // the user did not choose is not flagged; the server tests show the warning itself).
    let out = run(&c, "big", 512, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&c, "small", 128, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_phase("big", "running", BOOT);
    c.wait_phase("small", "running", BOOT);
    assert_invariant(&c);

    // Tightened while they run: at most 256 MiB.
    let file = dir.path().join("small_vms.rego");
    std::fs::write(&file, MAX_256).unwrap();
    let applied = c.json(&["policy", "apply", file.to_str().unwrap()]);
    assert_eq!(applied["name"], "admission/small_vms", "{applied}");
    let v2 = applied["set_version"].as_u64().unwrap();
    assert!(v2 > v1);
    let t0 = Instant::now();
    c.wait(REMEDIATION, "the big VM stopped by compliance", || {
        let big = c.vm("big");
        big["spec"]["desired"] == "stopped"
            && ["stopped", "failed"].contains(&big["status"]["phase"].as_str().unwrap_or(""))
    });
    let remediated = t0.elapsed();
    let big = c.vm("big");
    assert_eq!(c.vm("small")["status"]["phase"], "running");
    assert_invariant(&c);
    let (version, recs) = records(&c);
    assert_eq!(version, v2);
    let big_rec = record(&recs, big["id"].as_str().unwrap()).unwrap();
    assert_eq!(big_rec["passed"], false, "{big_rec}");
    assert_eq!(big_rec["remediation"], "stopped", "{big_rec}");
    assert!(
        big_rec["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["policy"] == "admission/small_vms" && v["mode"] == "deny"),
        "{big_rec}"
    );
    let audit = c.json(&["audit", "ls", "--limit", "1000"]);
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|e| {
            e["event"]["action"] == "compliance.stop"
                && e["event"]["target"] == format!("vm/{}", big["id"].as_str().unwrap())
        }),
        "the audit log shows the stop: {audit}"
    );
    // The same spec is now refused at admission too.
    let out = run(&c, "big2", 512, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admission/small_vms"));
    eprintln!("policy tightened: remediated in {remediated:?}");

    // Host posture: every node held non-compliant by a host policy: tainted, and a VM that
    // needs a compliant host is not placed.
    let taint = dir.path().join("under_test.rego");
    std::fs::write(&taint, TAINT_ALL).unwrap();
    c.json(&["policy", "apply", taint.to_str().unwrap()]);
    c.wait(REMEDIATION, "n1 and n2 tainted", || {
        let (version, recs) = records(&c);
        ["n1", "n2"].iter().all(|n| {
            record(&recs, n).is_some_and(|r| r["passed"] == false && r["policy_version"] == version)
        })
    });
    let out = run(&c, "careful", 128, &["--compliant-host"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait(REMEDIATION, "careful unschedulable", || {
        c.vm("careful")["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("host posture not compliant"))
    });
    assert_eq!(c.vm("careful")["status"]["phase"], "pending");
    // A VM that does not ask for a compliant host still runs there.
    assert!(run(&c, "casual", 128, &[]).status.success());
    c.wait_phase("casual", "running", BOOT);

    // Relax: the test policy goes, and whatever host policy this machine fails is set to warn.
    c.json(&["policy", "rm", "host/under_test"]);
    let (_, recs) = records(&c);
    let mut failing: Vec<String> = ["n1", "n2"]
        .iter()
        .flat_map(|n| {
            record(&recs, n).unwrap()["violations"]
                .as_array()
                .unwrap()
                .clone()
        })
        .filter(|v| v["mode"] == "deny" && v["policy"] != "host/under_test")
        .map(|v| v["policy"].as_str().unwrap().to_owned())
        .collect();
    failing.sort();
    failing.dedup();
    eprintln!("host policies this machine fails: {failing:?}");
    for name in &failing {
        let p = c.json(&["policy", "get", name]);
        let f = dir.path().join("relaxed.rego");
        std::fs::write(&f, p["source"].as_str().unwrap()).unwrap();
        c.json(&[
            "policy",
            "apply",
            f.to_str().unwrap(),
            "--name",
            name,
            "--mode",
            "warn",
        ]);
    }
    c.wait_phase("careful", "running", BOOT);
    assert_invariant(&c);

    // Its node tainted under it: it moves to the other (compliant) node.
    let careful = c.vm("careful");
    let from = careful["status"]["node"].as_str().unwrap().to_owned();
    let to = if from == "n1" { "n2" } else { "n1" };
    std::fs::write(&taint, taint_one(&from)).unwrap();
    c.json(&["policy", "apply", taint.to_str().unwrap()]);
    let t0 = Instant::now();
    c.wait(BOOT, "careful migrated off its tainted node", || {
        let v = c.vm("careful");
        v["status"]["node"] == to && v["status"]["phase"] == "running"
    });
    eprintln!(
        "node {from} tainted: careful running on {to} after {:?}",
        t0.elapsed()
    );
    let id = careful["id"].as_str().unwrap().to_owned();
    let audit = c.json(&["audit", "ls", "--limit", "1000"]);
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|e| {
            e["event"]["action"] == "compliance.migrate"
                && e["event"]["target"] == format!("vm/{id}")
        }),
        "the audit log shows the migration: {audit}"
    );
    assert_invariant(&c);

    // The report: per control, with evidence.
    let report = c.json(&["compliance", "report", "--format", "json"]);
    let controls = report["controls"].as_array().unwrap();
    assert!(
        controls
            .iter()
            .any(|k| k["policy"] == "host/cpu_side_channels" && k["name"].is_string()),
        "{report}"
    );
    let out = c.cli(&["compliance", "report", "--format", "html"]);
    assert!(out.status.success());
    let html = String::from_utf8_lossy(&out.stdout);
    assert!(
        html.contains("<html") && html.contains("admission/small_vms"),
        "{html}"
    );
}
