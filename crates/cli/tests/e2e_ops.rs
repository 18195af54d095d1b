//! End to end: pause, resume, exec, stats, snapshot and restore of a real microVM through the
//! CLI, the server and an agent. The guest runs a counter on its console; after a restore in a
//! new VMM process the counter continues from the snapshot instead of starting over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_testkit::{cluster::Cluster, counters};

const BOOT: Duration = Duration::from_secs(120);
const COUNTER: &str = "i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.2; done";

#[test]
fn pause_exec_stats_snapshot_and_restore_continue_the_same_guest() {
    let mut c = Cluster::start();
    c.start_agent("node-1", &["cloud=aws"], 2);
    c.wait_nodes_ready(1);
    lifecycle(&c, "qemu");
}

/// The cycle every runtime goes through (`e2e_firecracker` runs it for Firecracker): exec,
/// stats, pause/resume, snapshot, stop, restore in a new VMM process with the guest's counter
/// continuing, delete.
pub fn lifecycle(c: &Cluster, runtime: &str) {
    c.ok(&[
        "vm",
        "run",
        "--name",
        "ctr",
        "--runtime",
        runtime,
        "--cmd",
        COUNTER,
        "--output",
        "json",
    ]);
    c.wait_phase("ctr", "running", BOOT);
    c.wait(Duration::from_secs(20), "the counter runs", || {
        counters(&c.console("ctr")).len() >= 3
    });

    // exec: output and exit status come back; the CLI exits with the command's status.
    let out = c.cli(&[
        "vm",
        "exec",
        "ctr",
        "--",
        "sh",
        "-c",
        "echo out-$((6*7)); echo oops >&2; exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("out-42"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));

    // stats: host side (VMM CPU, RSS) and guest side (processes) arrive.
    c.wait(
        Duration::from_secs(30),
        "stats with guest telemetry",
        || {
            let out = c.cli(&["vm", "stats", "ctr", "--output", "json"]);
            if !out.status.success() {
                return false;
            }
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            s["host"]["cpu_time_ms"].as_u64().unwrap_or(0) > 0
                && s["host"]["rss_bytes"].as_u64().unwrap_or(0) > 0
                && s["guest"]["processes"].as_u64().unwrap_or(0) > 0
        },
    );
    let metrics = c.ok(&["vm", "ls"]); // the CLI still works alongside
    assert!(metrics.contains("ctr"));

    // pause: the counter stops; resume: it goes on.
    c.ok(&["vm", "pause", "ctr", "--wait"]);
    assert_eq!(c.vm("ctr")["status"]["phase"], "paused");
    let paused_at = counters(&c.console("ctr")).last().copied().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        counters(&c.console("ctr")).last().copied().unwrap(),
        paused_at,
        "counter moved while paused"
    );
    c.ok(&["vm", "resume", "ctr", "--wait"]);
    c.wait(
        Duration::from_secs(20),
        "counter moves after resume",
        || counters(&c.console("ctr")).last().copied().unwrap() > paused_at,
    );

    // snapshot, then stop the VM, then restore it in a new VMM process.
    let before_snapshot = counters(&c.console("ctr")).last().copied().unwrap();
    c.ok(&["vm", "snapshot", "ctr", "s1", "--wait"]);
    let snaps: serde_json::Value =
        serde_json::from_str(&c.ok(&["vm", "snapshots", "ctr", "--output", "json"])).unwrap();
    assert_eq!(snaps[0]["phase"], "ready");
    assert!(snaps[0]["bytes"].as_u64().unwrap() > 1024 * 1024);
    let pids_before = c.vmm_pids();
    c.ok(&["vm", "stop", "ctr", "--wait"]);
    c.wait(Duration::from_secs(20), "qemu gone after stop", || {
        c.vmm_pids().is_empty()
    });
    let console_len_before_restore = c.console("ctr").len();
    let ready_lines = c.console("ctr").matches("firefleet-guest ready").count();

    c.ok(&["vm", "restore", "ctr", "s1", "--wait"]);
    assert_eq!(c.vm("ctr")["status"]["phase"], "running");
    let pids_after = c.vmm_pids();
    assert_eq!(pids_after.len(), 1);
    assert_ne!(pids_after, pids_before, "restore runs in a new VMM process");
    c.wait(
        Duration::from_secs(30),
        "the restored counter prints",
        || c.console("ctr").len() > console_len_before_restore + 20,
    );
    let after = c.console("ctr");
    let new_values = counters(&after[console_len_before_restore..]);
    assert!(!new_values.is_empty());
    assert!(
        new_values[0] >= before_snapshot,
        "restored counter starts at {} but was {before_snapshot} before the snapshot: the guest rebooted",
        new_values[0]
    );
    assert_eq!(
        after.matches("firefleet-guest ready").count(),
        ready_lines,
        "no second boot"
    );

    // The restored guest still answers on its channel and stops cleanly.
    let out = c.cli(&["vm", "exec", "ctr", "--", "echo", "still-here"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still-here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ok(&["vm", "rm", "ctr", "--wait"]);
    c.wait(Duration::from_secs(20), "no qemu left", || {
        c.vmm_pids().is_empty()
    });
}

#[test]
fn agent_killed_during_launch_and_during_snapshot_recovers_cleanly() {
    let mut c = Cluster::start();
    c.start_agent("crashy", &["cloud=aws"], 2);
    c.wait_nodes_ready(1);

    // Kill -9 the agent as soon as it has started launching the VM.
    c.ok(&[
        "vm", "run", "--name", "ctr", "--cmd", COUNTER, "--output", "json",
    ]);
    c.wait(
        Duration::from_secs(30),
        "the agent starts launching",
        || c.vm("ctr")["status"]["phase"] == "starting" || !c.vmm_pids().is_empty(),
    );
    c.kill_agent("crashy");
    c.start_agent("crashy", &["cloud=aws"], 2);
    c.wait_phase("ctr", "running", BOOT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.vmm_pids().len(),
        1,
        "exactly one VMM: the first launch was re-adopted, not duplicated"
    );

    // Kill -9 the agent right after asking for a snapshot: the snapshot is taken (again) after
    // the restart, no half-written one is used, and the VM runs on (not left paused).
    c.wait(Duration::from_secs(20), "the counter runs", || {
        counters(&c.console("ctr")).len() >= 3
    });
    c.ok(&["vm", "snapshot", "ctr", "s1"]);
    std::thread::sleep(Duration::from_millis(150));
    c.kill_agent("crashy");
    c.start_agent("crashy", &["cloud=aws"], 2);
    c.wait(
        Duration::from_secs(60),
        "the snapshot is ready after the restart",
        || {
            let s: serde_json::Value =
                serde_json::from_str(&c.ok(&["vm", "snapshots", "ctr", "--output", "json"]))
                    .unwrap();
            s[0]["phase"] == "ready"
        },
    );
    let snap_root = c
        .path("agent-crashy/vms")
        .join(c.vm("ctr")["id"].as_str().unwrap())
        .join("snapshots");
    let entries: Vec<String> = std::fs::read_dir(&snap_root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        ["s1"],
        "only the complete snapshot remains (no temporary directories)"
    );
    let last = counters(&c.console("ctr")).last().copied().unwrap();
    c.wait(
        Duration::from_secs(20),
        "the VM runs on after the interrupted snapshot",
        || {
            c.vm("ctr")["status"]["phase"] == "running"
                && counters(&c.console("ctr")).last().copied().unwrap() > last
        },
    );
    // And the snapshot restores.
    c.ok(&["vm", "restore", "ctr", "s1", "--wait"]);
    assert_eq!(c.vmm_pids().len(), 1);
    c.ok(&["vm", "rm", "ctr", "--wait"]);
    c.wait(Duration::from_secs(20), "no qemu left", || {
        c.vmm_pids().is_empty()
    });
}

/// Firecracker through the agent, when `FIRECRACKER_BIN` names a binary: the node offers it,
/// `vm run --runtime firecracker` lands a real Firecracker process configured over its API,
/// a killed agent re-adopts it, delete removes it. Where the guest boots (real KVM; set
/// `FIREFLEET_FC_GUEST_BOOTS=1`) the full [`lifecycle`] runs too, as for QEMU.
#[test]
fn firecracker_through_the_agent() {
    let Some(bin) = std::env::var_os("FIRECRACKER_BIN") else {
        eprintln!("skipped: FIRECRACKER_BIN is not set");
        return;
    };
    let mut c = Cluster::start();
    c.agent_args = vec!["--firecracker".into(), bin.to_string_lossy().into_owned()];
    c.start_agent("node-fc", &[], 2);
    c.wait_nodes_ready(1);
    let nodes = c.json(&["node", "ls"]);
    let runtimes = &nodes[0]["status"]["facts"]["runtimes"];
    assert!(
        runtimes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "firecracker"),
        "the node does not offer firecracker: {runtimes}\n{}",
        c.logs()
    );
    if std::env::var_os("FIREFLEET_FC_GUEST_BOOTS").is_some() {
        lifecycle(&c, "firecracker");
        return;
    }
    eprintln!(
        "FIREFLEET_FC_GUEST_BOOTS is not set: checking everything up to the guest (a stock guest \
         kernel does not reach init on a nested KVM)"
    );
    c.ok(&[
        "vm",
        "run",
        "--name",
        "fc",
        "--runtime",
        "firecracker",
        "--cmd",
        COUNTER,
    ]);
    let vm = c.wait_phase("fc", "starting", BOOT);
    assert_eq!(vm["status"]["node"], "node-fc");
    assert_eq!(vm["status"]["accel"], "kvm", "{vm}");
    c.wait(Duration::from_secs(30), "a firecracker process", || {
        c.vmm_pids().len() == 1
    });
    let pid = c.vmm_pids()[0];
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&argv0)
        .split('\0')
        .next()
        .unwrap()
        .ends_with("firecracker"));
    // Host-side statistics, with Firecracker's own metrics, before the guest is up.
    c.wait(
        Duration::from_secs(30),
        "firecracker metrics in stats",
        || {
            let out = c.cli(&["vm", "stats", "fc", "--output", "json"]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .ok()
                    .and_then(|s| s["host"]["vmm_metrics"].as_object().map(|m| !m.is_empty()))
                    .unwrap_or(false)
        },
    );
    let id = vm["id"].as_str().unwrap().to_owned();
    let state = c.path("agent-node-fc").join("fc-vms").join(&id);
    assert!(
        state.join("api.sock").exists(),
        "no API socket in {}",
        state.display()
    );

    // A killed agent finds the same process again instead of launching another.
    c.kill_agent("node-fc");
    c.start_agent("node-fc", &[], 2);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(c.vmm_pids(), vec![pid], "re-adopted, not relaunched");
    assert_eq!(c.vm("fc")["status"]["phase"], "starting");

    c.ok(&["vm", "rm", "fc", "--wait"]);
    c.wait(Duration::from_secs(20), "firecracker gone", || {
        c.vmm_pids().is_empty()
    });
    assert!(!state.exists(), "state directory left: {}", state.display());
}
