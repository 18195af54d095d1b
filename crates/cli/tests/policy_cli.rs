//! `firefleet policy test` and `policy apply`, without a server: the built-in bundle's tests
//! pass, a failing test and a syntax error exit non-zero naming the test or the file, line and
//! column, and `apply` refuses a broken file before contacting the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_firefleet");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FIREFLEET_SERVER")
        .env_remove("FIREFLEET_TOKEN")
        .env_remove("FIREFLEET_CA")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, source: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path.to_str().unwrap().to_owned()
}

const GOOD: &str = r#"package firefleet.admission.no_gpus

import rego.v1

deny contains msg if {
    object.get(input.vm.resources, "gpus", 0) > 0
    msg := "resources.gpus is not allowed"
}

test_gpus_denied if {
    count(deny) == 1 with input as {"vm": {"resources": {"gpus": 1}}}
}

test_no_gpus_admitted if {
    count(deny) == 0 with input as {"vm": {"resources": {"vcpus": 1}}}
}
"#;

/// Line 8 lacks the closing brace of the rule body.
const BROKEN: &str = r#"package firefleet.admission.broken

import rego.v1

deny contains msg if {
    input.vm.resources.vcpus > 4
    msg := "too many vcpus"

test_x if { true }
"#;

#[test]
fn the_builtin_bundle_passes_its_tests() {
    let out = run(&["policy", "test", "--builtin"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("PASS admission/resource_limits "),
        "{stdout}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");

    let out = run(&["policy", "test", "--builtin", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 0);
    assert!(v["passed"].as_u64().unwrap() > 10, "{v}");
}

#[test]
fn a_file_with_passing_tests_passes_alone_and_with_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "no_gpus.rego", GOOD);
    for args in [
        vec!["policy", "test", good.as_str()],
        vec!["policy", "test", good.as_str(), "--builtin"],
    ] {
        let out = run(&args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("PASS"), "{stdout}");
        assert!(stdout.contains("test_gpus_denied"), "{stdout}");
    }
}

#[test]
fn a_failing_test_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = GOOD.replace(
        "count(deny) == 0 with input as {\"vm\": {\"resources\": {\"vcpus\": 1}}}",
        "count(deny) == 0 with input as {\"vm\": {\"resources\": {\"gpus\": 2}}}",
    );
    let file = write(dir.path(), "no_gpus.rego", &source);
    let out = run(&["policy", "test", &file]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("test_no_gpus_admitted"), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    assert!(stderr.contains("test_no_gpus_admitted"), "{stderr}");
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.rego", BROKEN);
    for args in [
        vec!["policy", "test", file.as_str()],
        vec!["policy", "test", "--builtin", file.as_str()],
    ] {
        let out = run(&args);
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{file}:")) && location(&stderr, &file).is_some(),
            "{stderr}"
        );
    }
}

#[test]
fn apply_refuses_a_broken_file_before_contacting_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.rego", BROKEN);
    let out = run(&[
        "--server",
        "https://127.0.0.1:1",
        "--token",
        "t",
        "policy",
        "apply",
        &file,
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(location(&stderr, &file).is_some(), "{stderr}");
    // Refused here: neither the missing CA nor the unreachable server was reached.
    assert!(!stderr.contains("CA"), "{stderr}");
    assert!(!stderr.contains("127.0.0.1:1"), "{stderr}");

    // A file whose package is not a FireFleet one is refused here too.
    let other = write(
        dir.path(),
        "other.rego",
        "package acme.x\n\ndeny contains 1 if false\n",
    );
    let out = run(&["--server", "https://127.0.0.1:1", "policy", "apply", &other]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("acme.x"), "{stderr}");
}

/// The `LINE:COL` after `FILE:` in `stderr`.
fn location(stderr: &str, file: &str) -> Option<(u32, u32)> {
    let rest = &stderr[stderr.find(&format!("{file}:"))? + file.len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let col = parts.next()?.parse().ok()?;
    Some((line, col))
}
