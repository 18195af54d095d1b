//! End to end: a running VM migrates from an edge node to a cloud node (snapshot on the source,
//! transfer through the server over the agents' mutual TLS, restore on the destination): the
//! guest's counter goes on from where it was, the source's VMM is gone, the VM keeps one node in
//! the control plane throughout; total time and downtime are reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_testkit::{cluster::Cluster, counters, procs::vmm_pids_under};

const BOOT: Duration = Duration::from_secs(120);
const COUNTER: &str = "i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.2; done";

#[test]
fn a_running_vm_migrates_from_the_edge_to_a_cloud_and_its_guest_goes_on() {
    let mut c = Cluster::start();
    c.start_agent("edge-1", &["cloud=edge", "region=factory-1"], 2);
    c.start_agent("aws-1", &["cloud=aws", "region=us-east-1"], 2);
    c.wait_nodes_ready(2);
    let out = c.cli(&["node", "cordon", "aws-1"]);
    assert!(out.status.success());
    let out = c.cli(&["vm", "run", "--name", "ctr", "--cmd", COUNTER]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = c.wait_phase("ctr", "running", BOOT);
    assert_eq!(v["status"]["node"], "edge-1");
    assert!(c.cli(&["node", "uncordon", "aws-1"]).status.success());
    c.wait(Duration::from_secs(30), "the counter runs", || {
        counters(&c.console("ctr")).len() >= 5
    });
    let edge_dir = c.path("agent-edge-1");
    let aws_dir = c.path("agent-aws-1");
    assert_eq!(vmm_pids_under(&edge_dir).len(), 1);
    let ready_lines = c.console("ctr").matches("firefleet-guest ready").count();

    // Bad requests are refused with the reason.
    let out = c.cli(&["vm", "migrate", "ctr", "--to", "edge-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already runs on edge-1"));
    let out = c.cli(&["vm", "migrate", "ctr", "--to", "nowhere"]);
    assert!(!out.status.success());

    let m = c.json(&["vm", "migrate", "ctr", "--to", "aws-1", "--wait"]);
    assert_eq!(m["phase"], "done", "{m}\n{}", c.logs());
    let total = m["resumed_ms"].as_u64().unwrap() - m["requested_ms"].as_u64().unwrap();
    assert_eq!(m["mode"], "live", "{m}");
    let vmm_downtime = m["vmm_downtime_ms"]
        .as_u64()
        .expect("the source reports QEMU's downtime");
    let downtime = m["resumed_ms"].as_u64().unwrap() - m["paused_ms"].as_u64().unwrap();
    assert!(vmm_downtime <= downtime && downtime < total, "{m}");
    eprintln!(
        "live migration edge-1 -> aws-1: total {total} ms (request to running there), guest \
         stopped {downtime} ms end to end ({vmm_downtime} ms of it in QEMU's final round), {} MiB",
        m["bytes"].as_u64().unwrap_or(0) >> 20
    );
    let v = c.vm("ctr");
    assert_eq!(v["status"]["node"], "aws-1", "{v}\n{}", c.logs());
    assert_eq!(
        v["status"]["phase"],
        "running",
        "{v}\n{}\n{}",
        c.console("ctr"),
        c.logs()
    );

    // The source's copy goes; the destination runs one VMM.
    c.wait(Duration::from_secs(30), "the source's VMM gone", || {
        vmm_pids_under(&edge_dir).is_empty()
    });
    assert_eq!(vmm_pids_under(&aws_dir).len(), 1);

    // The guest went on: the counter continues upward, with no second boot.
    let before = counters(&c.console("ctr")).last().copied().unwrap();
    c.wait(Duration::from_secs(30), "the counter goes on", || {
        counters(&c.console("ctr"))
            .last()
            .is_some_and(|&n| n > before + 3)
    });
    let all = counters(&c.console("ctr"));
    let drops: Vec<_> = all.windows(2).filter(|w| w[1] < w[0]).collect();
    assert!(drops.is_empty(), "the counter went back: {drops:?}");
    assert_eq!(
        c.console("ctr").matches("firefleet-guest ready").count(),
        ready_lines,
        "the guest booted again"
    );
    // It answers on its channel there, with its new node's address.
    let ip = v["status"]["ip"].as_str().unwrap_or_default().to_owned();
    let out = c.cli(&["vm", "exec", "ctr", "--", "ip", "-4", "addr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addrs = String::from_utf8_lossy(&out.stdout);
    if !ip.is_empty() {
        assert!(addrs.contains(&ip), "guest addresses {addrs} lack {ip}");
    }

    // Drain the cloud node: the VM goes back to the edge node, the node stays cordoned.
    let d = c.json(&["node", "drain", "aws-1", "--wait"]);
    assert_eq!(d["migrations"][0]["phase"], "done", "{d}\n{}", c.logs());
    assert_eq!(d["migrations"][0]["mode"], "live", "{d}");
    eprintln!(
        "live migration aws-1 -> edge-1 (drain): total {} ms, downtime {} ms, {} MiB moved",
        d["migrations"][0]["resumed_ms"].as_u64().unwrap()
            - d["migrations"][0]["requested_ms"].as_u64().unwrap(),
        d["migrations"][0]["resumed_ms"].as_u64().unwrap()
            - d["migrations"][0]["paused_ms"].as_u64().unwrap(),
        d["migrations"][0]["bytes"].as_u64().unwrap_or(0) >> 20
    );
    assert_eq!(d["migrations"][0]["to"], "edge-1", "{d}");
    assert!(d["stuck"].as_array().unwrap().is_empty(), "{d}");
    assert_eq!(c.vm("ctr")["status"]["node"], "edge-1");
    let nodes = c.json(&["node", "ls"]);
    let aws = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "aws-1")
        .unwrap();
    assert_eq!(aws["cordoned"], true);
    c.wait(
        Duration::from_secs(30),
        "the drained node's VMM gone",
        || vmm_pids_under(&aws_dir).is_empty(),
    );
    let before = counters(&c.console("ctr")).last().copied().unwrap();
    c.wait(
        Duration::from_secs(30),
        "the counter goes on after the drain",
        || {
            counters(&c.console("ctr"))
                .last()
                .is_some_and(|&n| n > before + 3)
        },
    );

    // The edge node's battery runs low: the planner proposes moving the VM to the cloud node
    // (a dry run changes nothing), and `--apply` carries it out.
    assert!(c.cli(&["node", "uncordon", "aws-1"]).status.success());
    c.kill_agent("edge-1");
    c.agent_args = vec!["--power".into(), "battery:12".into()];
    c.start_agent("edge-1", &["cloud=edge", "region=factory-1"], 2);
    c.agent_args.clear();
    c.wait(
        Duration::from_secs(30),
        "the edge node reports its battery",
        || {
            c.json(&["node", "ls"]).as_array().unwrap().iter().any(|n| {
                n["id"] == "edge-1" && n["status"]["facts"]["power"]["battery_percent"] == 12
            })
        },
    );
    let p = c.json(&["plan"]);
    let moves = p["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{p}");
    assert_eq!(
        (
            &moves[0]["vm"],
            &moves[0]["from"],
            &moves[0]["to"],
            &moves[0]["trigger"]
        ),
        (
            &serde_json::json!("ctr"),
            &serde_json::json!("edge-1"),
            &serde_json::json!("aws-1"),
            &serde_json::json!("low_battery")
        ),
        "{p}"
    );
    assert!(moves[0]["net"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(
        c.vm("ctr")["status"]["node"],
        "edge-1",
        "a dry run moved the VM"
    );
    let p = c.json(&["plan", "--apply"]);
    assert_eq!(p["started"].as_array().unwrap().len(), 1, "{p}");
    c.wait(Duration::from_secs(120), "the planned migration", || {
        c.vm("ctr")["status"]["node"] == "aws-1"
    });
    // By snapshot (as for VMs with writable disks or on Firecracker): paused for the transfer.
    let m = c.json(&[
        "vm",
        "migrate",
        "ctr",
        "--to",
        "edge-1",
        "--by-snapshot",
        "--wait",
    ]);
    assert_eq!(m["phase"], "done", "{m}");
    assert_eq!(m["mode"], "snapshot", "{m}");
    eprintln!(
        "snapshot migration aws-1 -> edge-1: total {} ms, downtime {} ms, {} MiB moved",
        m["resumed_ms"].as_u64().unwrap() - m["requested_ms"].as_u64().unwrap(),
        m["resumed_ms"].as_u64().unwrap() - m["paused_ms"].as_u64().unwrap(),
        m["bytes"].as_u64().unwrap_or(0) >> 20
    );
    let ready_lines_now = c.console("ctr").matches("firefleet-guest ready").count();
    assert_eq!(
        ready_lines_now, ready_lines,
        "a migration booted the guest again"
    );
    let before = counters(&c.console("ctr")).last().copied().unwrap();
    c.wait(
        Duration::from_secs(30),
        "the counter goes on after the planned moves",
        || {
            counters(&c.console("ctr"))
                .last()
                .is_some_and(|&n| n > before + 3)
        },
    );
    assert!(c.cli(&["vm", "rm", "ctr", "--wait"]).status.success());
    c.wait(Duration::from_secs(30), "no VMM left", || {
        c.vmm_pids().is_empty()
    });
}
