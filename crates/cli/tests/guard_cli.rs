//! `firefleet guard rules test`: a broken rule file is refused with its line and column; a
//! good one runs over recorded telemetry and reports what the rules find.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_firefleet");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn a_broken_rule_file_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nid = \"x\"\nseverity = \"high\"\nwhen = { process_count_above = \"many\" }\n",
    )
    .unwrap();
    let out = run(&["guard", "rules", "test", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4:", bad.display())) && err.contains("process_count_above"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[[rule]]\nid = \"x\"\nseverity = \"urgent\"\nwhen = { process_count_above = 5 }\n",
    )
    .unwrap();
    let err =
        String::from_utf8_lossy(&run(&["guard", "rules", "test", bad.to_str().unwrap()]).stderr)
            .into_owned();
    assert!(err.contains(":3:12:"), "{err}");
}

#[test]
fn rules_run_over_recorded_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    // Switch the unexpected-listener rule off; keep the built-in set otherwise.
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"unexpected-listener\"\nseverity = \"medium\"\nenabled = false\n\
         when = { listener_port_not_in = [1] }\n",
    )
    .unwrap();
    let tel = dir.path().join("t.jsonl");
    let mut lines = String::new();
    for i in 0..5u64 {
        let miner = serde_json::json!({
            "vm": "vm-miner", "at_ms": 1000 * (i + 1),
            "host": { "cpu_time_ms": 900 * i },
            "guest": { "processes": [{ "pid": 7, "comm": "xmrig", "cpu_ticks": 90 * i }],
                       "listeners": [{ "proto": "tcp", "addr": "0.0.0.0", "port": 9999 }] }
        });
        let quiet = serde_json::json!({
            "vm": "vm-quiet", "at_ms": 1000 * (i + 1),
            "host": { "cpu_time_ms": 10 * i },
            "guest": { "processes": [{ "pid": 1, "comm": "init" }] }
        });
        lines.push_str(&format!("{miner}\n{quiet}\n"));
    }
    std::fs::write(&tel, lines).unwrap();
    let out = run(&[
        "guard",
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--telemetry",
        tel.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = findings.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["rule"], "miner-process");
    assert_eq!(findings[0]["vm"], "vm-miner");
    assert_eq!(findings[0]["count"], 5);
    // A malformed line is named.
    std::fs::write(&tel, "{\"vm\": 1}\n").unwrap();
    let out = run(&[
        "guard",
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--telemetry",
        tel.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("t.jsonl:1:"));
}
