//! End to end with real processes: a `firefleet server`, `firefleet agent`s with different
//! topology labels, real QEMU microVMs booting the real guest image, real TLS and HTTP.
//! Needs the guest image (`scripts/setup.sh` builds it; `FIREFLEET_IMAGE_DIR` points to it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_testkit::{cluster::Cluster, procs::zombies_of};

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn two_agents_run_vms_on_both_nodes_and_leave_nothing_behind() {
    let mut c = Cluster::start();
    c.start_agent("aws-1", &["cloud=aws", "region=us-east-1"], 1);
    c.start_agent("edge-1", &["cloud=edge", "site=factory-1"], 1);
    c.wait_nodes_ready(2);
    let nodes = c.json(&["node", "ls"]);
    let labels_of = |n: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == n)
            .unwrap()["labels"]
            .clone()
    };
    assert_eq!(labels_of("aws-1")["region"], "us-east-1");
    assert_eq!(labels_of("edge-1")["site"], "factory-1");

    // Two 1-vCPU VMs on two 1-vCPU nodes: one lands on each.
    c.json(&["vm", "run", "--name", "a"]);
    c.json(&["vm", "run", "--name", "b"]);
    let a = c.wait_phase("a", "running", BOOT);
    let b = c.wait_phase("b", "running", BOOT);
    let mut placed = vec![
        a["status"]["node"].as_str().unwrap().to_owned(),
        b["status"]["node"].as_str().unwrap().to_owned(),
    ];
    placed.sort();
    assert_eq!(placed, ["aws-1", "edge-1"]);
    for vm in [&a, &b] {
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == vm["status"]["node"])
            .unwrap();
        assert_eq!(
            vm["status"]["accel"], node["status"]["facts"]["accel"],
            "VM status names the node's accelerator"
        );
    }
    assert_eq!(c.vmm_pids().len(), 2);
    // As root, every VMM runs sandboxed: its own uid, QEMU's seccomp filter, and the node facts
    // say so.
    if std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .contains("Uid:\t0\t")
    {
        let mut uids = vec![];
        for pid in c.vmm_pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let field = |f: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(f))
                    .unwrap()
                    .trim()
                    .to_owned()
            };
            let uid: u32 = field("Uid:")
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(uid >= 3_000_000, "VMM {pid} runs as uid {uid}");
            assert_eq!(field("Seccomp:"), "2", "VMM {pid} has no seccomp filter");
            uids.push(uid);
        }
        let isolation = &nodes[0]["status"]["facts"]["isolation"];
        assert_eq!(isolation["uid_per_vm"], true, "{isolation}");
        assert!(isolation["seccomp"]
            .as_str()
            .unwrap()
            .contains("sandbox on"));
        assert_ne!(isolation["cgroup"], "", "{isolation}");
    }
    c.wait(
        Duration::from_secs(20),
        "console of a shows the ready line",
        || {
            c.json(&["vm", "logs", "a"])["console"]
                .as_str()
                .unwrap()
                .contains("firefleet-guest ready")
        },
    );

    // No room for a third: it waits, saying why.
    c.json(&[
        "vm",
        "run",
        "--name",
        "job",
        "--cmd",
        "echo hello-from-guest; exit 3",
    ]);
    c.wait(
        Duration::from_secs(10),
        "job reported unschedulable",
        || {
            let v = c.vm("job");
            v["status"]["phase"] == "pending"
                && v["status"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("unschedulable")
        },
    );

    // Deleting a frees its node: the job runs there, prints, and stops with its exit status.
    let out = c.cli(&["vm", "rm", "a", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.cli(&["vm", "get", "a"]).status.success(), "a is gone");
    let job = c.wait_phase("job", "stopped", BOOT);
    assert_eq!(job["status"]["exit_code"], 3);
    c.wait(
        Duration::from_secs(10),
        "job's output in its console",
        || {
            c.json(&["vm", "logs", "job"])["console"]
                .as_str()
                .unwrap()
                .contains("hello-from-guest")
        },
    );

    // Stop and delete the rest.
    let out = c.cli(&["vm", "stop", "b", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.vm("b")["status"]["phase"], "stopped");
    for vm in ["b", "job"] {
        let out = c.cli(&["vm", "rm", vm, "--wait"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(c.json(&["vm", "ls"]).as_array().unwrap().len(), 0);
    c.wait(Duration::from_secs(20), "no qemu left", || {
        c.vmm_pids().is_empty()
    });
    for (name, agent) in &c.agents {
        assert!(
            zombies_of(agent.id()).is_empty(),
            "agent {name} left zombie processes"
        );
    }
    for agent in ["aws-1", "edge-1"] {
        let vms = c.path(&format!("agent-{agent}/vms"));
        let left: Vec<_> = std::fs::read_dir(&vms)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "state directories left on {agent}: {left:?}"
        );
    }
}

/// `firefleet up` starts its agent with `--stop-vms-on-exit`: stopping `up` stops its VMMs.
#[test]
fn an_agent_asked_to_stop_its_vms_on_exit_leaves_none_running() {
    let mut c = Cluster::start();
    c.agent_args = vec!["--stop-vms-on-exit".to_owned()];
    c.start_agent("solo", &[], 2);
    c.wait_nodes_ready(1);
    c.json(&["vm", "run", "--name", "short"]);
    c.wait_phase("short", "running", BOOT);
    assert_eq!(c.vmm_pids().len(), 1);
    let status = c.term_agent("solo");
    assert!(status.success(), "{status}\n{}", c.logs());
    assert!(
        c.vmm_pids().is_empty(),
        "the agent exited leaving its VMM running\n{}",
        c.logs()
    );
}

#[test]
fn restarted_agent_readopts_its_running_vm() {
    let mut c = Cluster::start();
    c.start_agent("solo", &["cloud=gcp"], 2);
    c.wait_nodes_ready(1);
    c.json(&["vm", "run", "--name", "keeper"]);
    c.wait_phase("keeper", "running", BOOT);
    let pids = c.vmm_pids();
    assert_eq!(pids.len(), 1);

    c.kill_agent("solo");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.vmm_pids(), pids, "the VMM outlives its agent");

    c.start_agent("solo", &["cloud=gcp"], 2);
    // The restarted agent re-adopts the VM: it stays Running on the same process, and the agent
    // can still stop it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.vm("keeper")["status"]["phase"], "running");
    assert_eq!(c.vmm_pids(), pids);
    let out = c.cli(&["vm", "stop", "keeper", "--wait"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    c.wait(Duration::from_secs(20), "qemu gone after stop", || {
        c.vmm_pids().is_empty()
    });
    c.wait(
        Duration::from_secs(20),
        "console shows the guest powering off",
        || {
            c.json(&["vm", "logs", "keeper"])["console"]
                .as_str()
                .unwrap()
                .contains("powering off")
        },
    );
}

#[test]
fn acknowledged_writes_survive_kill_9_of_the_server() {
    let mut c = Cluster::start();
    let token = c.json(&["token", "create", "--tenant", "acme"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let digest = format!("sha256:{}", "ab".repeat(32));
    for i in 0..5 {
        let out = c.cli_as(
            &token,
            &[
                "vm",
                "run",
                "--name",
                &format!("w{i}"),
                "--image",
                &digest,
                "--output",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.kill_server();
    c.start_server();
    let out = c.cli_as(&token, &["vm", "ls", "--output", "json"]);
    assert!(
        out.status.success(),
        "tenant token survives: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<_> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["spec"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["w0", "w1", "w2", "w3", "w4"]);
}

#[test]
fn cli_errors_exit_nonzero_with_the_cause() {
    let c = Cluster::start();
    let out = c.cli_as("not-a-token", &["vm", "ls"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid token"));
    let out = c.cli(&[
        "vm",
        "run",
        "--name",
        "Bad_Name",
        "--image",
        &format!("sha256:{}", "0".repeat(64)),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
