//! End to end: three agents (two clouds and an edge site) with real microVMs. One agent's
//! process is killed: after the grace periods its VMs run on the other nodes; started again, it
//! stops its stale VMs (it fences itself). Throughout, the control plane never shows a VM on
//! two nodes, and reports from the old node no longer move the VM. Cordon and uncordon steer
//! placements.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use firefleet_testkit::{cluster::Cluster, counters, procs::vmm_pids_under};

const BOOT: Duration = Duration::from_secs(120);
const COUNTER: &str = "i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.5; done";

/// Each VM's node and phase, as the control plane says.
fn placements(c: &Cluster) -> BTreeMap<String, (String, String)> {
    c.json(&["vm", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["spec"]["name"].as_str().unwrap().to_owned(),
                (
                    v["status"]["node"].as_str().unwrap_or("-").to_owned(),
                    v["status"]["phase"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_lost_node_s_vms_run_elsewhere_and_it_fences_itself_on_return() {
    let mut c = Cluster::start_with(&["--node-grace-secs", "3", "--evict-after-secs", "2"]);
    let nodes = [
        ("aws-1", ["cloud=aws", "region=us-east-1"]),
        ("gcp-1", ["cloud=gcp", "region=europe-west1"]),
        ("edge-1", ["cloud=edge", "region=factory-1"]),
    ];
    for (name, labels) in &nodes {
        c.start_agent(name, labels, 2);
    }
    c.wait_nodes_ready(3);

    // Cordon two nodes: both VMs land on the third, the one that will be lost.
    c.ok(&["node", "cordon", "aws-1"]);
    c.ok(&["node", "cordon", "gcp-1"]);
    for vm in ["a", "b"] {
        c.ok(&["vm", "run", "--name", vm, "--cmd", COUNTER]);
    }
    for vm in ["a", "b"] {
        let v = c.wait_phase(vm, "running", BOOT);
        assert_eq!(
            v["status"]["node"], "edge-1",
            "cordoned nodes took a VM: {v}"
        );
    }
    c.ok(&["node", "uncordon", "aws-1"]);
    c.ok(&["node", "uncordon", "gcp-1"]);
    let edge_dir = c.path("agent-edge-1");
    assert_eq!(vmm_pids_under(&edge_dir).len(), 2);
    // `a` has a snapshot (the control plane keeps a copy); `b` has none.
    c.wait(Duration::from_secs(30), "a's counter runs", || {
        counters(&c.console("a")).len() >= 4
    });
    c.ok(&["vm", "snapshot", "a", "s1", "--wait"]);
    let snaps = c.json(&["vm", "snapshots", "a"]);
    assert_eq!(snaps[0]["replicated"], true, "{snaps}");
    let a_at_kill = counters(&c.console("a")).last().copied().unwrap();
    let ready = |c: &Cluster, vm: &str| c.console(vm).matches("firefleet-guest ready").count();
    assert_eq!((ready(&c, "a"), ready(&c, "b")), (1, 1));

    // Lose the edge node's agent (its VMMs live on, as after a network partition).
    let lost_at = Instant::now();
    c.kill_agent("edge-1");
    let mut moved_after = BTreeMap::new();
    while moved_after.len() < 2 {
        assert!(
            lost_at.elapsed() < Duration::from_secs(180),
            "VMs not running elsewhere after {:?}: {:?}\n{}",
            lost_at.elapsed(),
            placements(&c),
            c.logs()
        );
        for (vm, (node, phase)) in placements(&c) {
            assert_ne!(phase, "failed", "vm {vm}: {}\n{}", c.vm(&vm), c.logs());
            if node != "edge-1" && node != "-" && phase == "running" {
                moved_after.entry(vm).or_insert_with(|| lost_at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (vm, t) in &moved_after {
        eprintln!(
            "failover: vm {vm} running on another node {:.1} s after the agent was killed",
            t.as_secs_f64()
        );
    }
    // `a` was restored from its snapshot's copy on its new node: the same guest goes on (no
    // second boot, the counter continues past where it was); `b` booted afresh.
    let va = c.vm("a");
    assert_eq!(va["spec"]["restore"]["snapshot"], "s1", "{va}");
    assert_eq!(
        va["status"]["restored_generation"], va["generation"],
        "{va}"
    );
    c.wait(
        Duration::from_secs(60),
        "a's counter goes on past the kill",
        || {
            counters(&c.console("a"))
                .last()
                .is_some_and(|&n| n > a_at_kill)
        },
    );
    assert_eq!(
        ready(&c, "a"),
        1,
        "a booted again instead of being restored"
    );
    c.wait(Duration::from_secs(60), "b boots afresh", || {
        ready(&c, "b") == 2
    });
    let after = placements(&c);
    // The new instances are on the surviving nodes, one VMM each.
    for (node, _) in after.values() {
        assert!(node == "aws-1" || node == "gcp-1", "{after:?}");
    }
    let survivors: usize = ["aws-1", "gcp-1"]
        .iter()
        .map(|n| vmm_pids_under(&c.path(&format!("agent-{n}"))).len())
        .sum();
    assert_eq!(survivors, 2);

    // Its VMMs still run (nothing told them to stop): the node must fence them when it is back.
    assert_eq!(
        vmm_pids_under(&edge_dir).len(),
        2,
        "the lost node's VMMs died with its agent\n{}",
        c.logs()
    );

    // The old node comes back: it stops its stale VMs, and the control plane does not move.
    let back_at = Instant::now();
    c.start_agent("edge-1", &nodes[2].1, 2);
    c.wait(
        Duration::from_secs(60),
        "the edge node's stale VMMs stopped",
        || vmm_pids_under(&edge_dir).is_empty(),
    );
    eprintln!(
        "fencing: edge-1 stopped its stale VMs {:.1} s after it was started again",
        back_at.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        placements(&c),
        after,
        "the returning node changed what the control plane shows"
    );
    for vm in ["a", "b"] {
        assert_eq!(c.vm(vm)["status"]["phase"], "running");
    }
    let node_list = c.json(&["node", "ls"]);
    assert!(node_list
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["status"]["readiness"] == "ready"));
    for vm in ["a", "b"] {
        c.ok(&["vm", "rm", vm, "--wait"]);
    }

    // Data residency through the API: only the allowed cloud; nowhere allowed: pending, why.
    c.ok(&[
        "vm",
        "run",
        "--name",
        "eu",
        "--allow-cloud",
        "gcp",
        "--cmd",
        "sleep 600",
    ]);
    let v = c.wait_phase("eu", "running", BOOT);
    assert_eq!(v["status"]["node"], "gcp-1", "{v}");
    c.ok(&["vm", "run", "--name", "mars", "--allow-region", "mars-1"]);
    c.wait(Duration::from_secs(20), "the residency reason", || {
        let v = c.vm("mars");
        v["status"]["phase"] == "pending"
            && v["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("allowed"))
    });
    for vm in ["eu", "mars"] {
        c.ok(&["vm", "rm", vm, "--wait"]);
    }

    // Automatic rebalancing: with `--rebalance-every-secs`, a VM on an edge node whose battery
    // runs low is moved off without anyone asking.
    c.ok(&[
        "vm",
        "run",
        "--name",
        "bat",
        "--allow-cloud",
        "edge",
        "--cmd",
        COUNTER,
    ]);
    let v = c.wait_phase("bat", "running", BOOT);
    assert_eq!(v["status"]["node"], "edge-1");
    c.kill_server();
    c.server_args
        .extend(["--rebalance-every-secs".to_owned(), "2".to_owned()]);
    c.start_server();
    c.kill_agent("edge-1");
    c.agent_args = vec!["--power".into(), "battery:5".into()];
    c.start_agent("edge-1", &nodes[2].1, 2);
    c.agent_args.clear();
    // Its residency allows only the edge cloud: nowhere to go, so it stays.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(c.vm("bat")["status"]["node"], "edge-1");
    let p = c.json(&["plan"]);
    assert!(
        p["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["vm"] == "bat" && n["why"].as_str().unwrap_or("").contains("stays")),
        "{p}"
    );
    c.ok(&["vm", "rm", "bat", "--wait"]);
    c.ok(&[
        "vm",
        "run",
        "--name",
        "bat2",
        "--node-selector",
        "cloud=edge",
        "--cmd",
        COUNTER,
    ]);
    // A node selector is a hard constraint too; without one, the VM leaves the battery node.
    let v = c.wait_phase("bat2", "running", BOOT);
    assert_eq!(v["status"]["node"], "edge-1");
    c.ok(&["vm", "rm", "bat2", "--wait"]);
    c.ok(&["node", "cordon", "aws-1"]);
    c.ok(&["node", "cordon", "gcp-1"]);
    c.ok(&["vm", "run", "--name", "bat3", "--cmd", COUNTER]);
    let v = c.wait_phase("bat3", "running", BOOT);
    assert_eq!(v["status"]["node"], "edge-1");
    c.ok(&["node", "uncordon", "aws-1"]);
    c.ok(&["node", "uncordon", "gcp-1"]);
    c.wait(
        Duration::from_secs(120),
        "the rebalancer moves the VM off the battery node",
        || {
            let v = c.vm("bat3");
            v["status"]["node"] != "edge-1" && v["status"]["phase"] == "running"
        },
    );
    c.ok(&["vm", "rm", "bat3", "--wait"]);
    c.wait(Duration::from_secs(30), "no VMM left", || {
        c.vmm_pids().is_empty()
    });
}
