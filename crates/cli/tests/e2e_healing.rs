//! End to end: self-healing. A VM whose VMM process is killed on the host is restarted by the
//! control plane as its restart policy says, with a backoff that grows with restarts in a row; a
//! VM with the default policy (never) stays Failed. A VM whose guest stops answering on its
//! channel (hung, its VMM still alive) is killed by the agent and replaced by a fresh boot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use firefleet_testkit::cluster::Cluster;

const BOOT: Duration = Duration::from_secs(120);

/// The PID of the VMM process running VM `name` (its QEMU is named `firefleet-<id>`).
fn vmm_pid(c: &Cluster, name: &str) -> u32 {
    let id = c.vm(name)["id"].as_str().unwrap().to_owned();
    let pids: Vec<u32> = c
        .vmm_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).contains(&format!("firefleet-{id}")))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(pids.len(), 1, "one VMM for {name} ({id}): {pids:?}");
    pids[0]
}

fn sigkill(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -9 {pid}");
}

fn restarts(v: &serde_json::Value) -> u64 {
    v["status"]["restarts"].as_u64().unwrap_or(0)
}

/// Kills VM `name`'s VMM and waits for it to be restarted and running again with `want`
/// restarts; the restart message seen while it waited (`restarting in N s (restart K, …)`) and
/// the time from the kill to Running again.
fn kill_and_wait_restart(c: &Cluster, name: &str, want: u64) -> (String, Duration) {
    let pid = vmm_pid(c, name);
    let t0 = Instant::now();
    sigkill(pid);
    let mut planned = String::new();
    c.wait(BOOT, &format!("{name} restarted ({want})"), || {
        let v = c.vm(name);
        let msg = v["status"]["message"].as_str().unwrap_or_default();
        if msg.starts_with("restarting in ") {
            planned = msg.to_owned();
        }
        restarts(&v) == want && v["status"]["phase"] == "running"
    });
    (planned, t0.elapsed())
}

#[test]
fn a_crashed_vm_is_restarted_with_backoff_and_a_never_vm_stays_failed() {
    let mut c = Cluster::start();
    c.start_agent("node-1", &["cloud=aws"], 2);
    c.wait_nodes_ready(1);
    c.ok(&[
        "vm",
        "run",
        "--name",
        "crashy",
        "--restart",
        "on-failure",
        "--output",
        "json",
    ]);
    c.ok(&["vm", "run", "--name", "steady", "--output", "json"]);
    c.wait_phase("crashy", "running", BOOT);
    c.wait_phase("steady", "running", BOOT);
    assert_eq!(c.vm("crashy")["spec"]["restart_policy"], "on_failure");
    assert_eq!(c.vm("steady")["spec"]["restart_policy"], "never");

    // First crash: restarted after 1 s.
    let (planned, took) = kill_and_wait_restart(&c, "crashy", 1);
    eprintln!("crash 1: running again after {took:?} ({planned})");
    assert!(
        planned.starts_with("restarting in 1 s (restart 1, the VMM process exited unexpectedly"),
        "{planned}"
    );
    // The console goes on: the dead run's, then the fresh boot's (once each).
    let ready = |c: &Cluster| c.console("crashy").matches("firefleet-guest ready").count();
    c.wait(Duration::from_secs(30), "a second ready line", || {
        ready(&c) >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready(&c), 2, "{}", c.console("crashy"));

    // Second crash in a row (it ran for less than a minute): the backoff doubles.
    let (planned, took) = kill_and_wait_restart(&c, "crashy", 2);
    eprintln!("crash 2: running again after {took:?} ({planned})");
    assert!(
        planned.starts_with("restarting in 2 s (restart 2, "),
        "{planned}"
    );
    c.wait(Duration::from_secs(30), "a third ready line", || {
        ready(&c) >= 3
    });

    // An agent restarted after that still uploads the fresh run's console where it should.
    c.kill_agent("node-1");
    c.start_agent("node-1", &["cloud=aws"], 2);
    c.ok(&[
        "vm",
        "exec",
        "crashy",
        "--",
        "sh",
        "-c",
        "echo healing-marker > /dev/console",
    ]);
    c.wait(
        Duration::from_secs(30),
        "console output after an agent restart",
        || c.console("crashy").contains("healing-marker"),
    );
    assert_eq!(ready(&c), 3, "{}", c.console("crashy"));

    // The default policy: a crash leaves it Failed.
    sigkill(vmm_pid(&c, "steady"));
    let v = c.wait_phase("steady", "failed", Duration::from_secs(30));
    assert!(
        v["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited unexpectedly"),
        "{v}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let v = c.vm("steady");
    assert_eq!(v["status"]["phase"], "failed", "{v}");
    assert_eq!(restarts(&v), 0, "{v}");
    assert!(v["status"]["next_restart_ms"].is_null(), "{v}");
    // The restarted VM still serves.
    let out = c.ok(&["vm", "exec", "crashy", "--", "sh", "-c", "echo alive"]);
    assert!(out.contains("alive"), "{out}");
}

/// Hangs the guest of VM `name`: its guest agent (PID 1) is frozen with the cgroup v2 freezer,
/// so the guest stops answering on its channel while the VMM runs on.
fn hang_guest(c: &Cluster, name: &str) {
    let script = "mkdir -p /sys/fs/cgroup && (grep -q cgroup2 /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup) \
        && mkdir -p /sys/fs/cgroup/hang && echo 1 > /sys/fs/cgroup/hang/cgroup.procs \
        && (sleep 1; echo 1 > /sys/fs/cgroup/hang/cgroup.freeze) >/dev/null 2>&1 &";
    let out = c.cli(&["vm", "exec", name, "--", "sh", "-c", script]);
    eprintln!(
        "hang: {} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_vm_whose_guest_stops_answering_is_replaced() {
    let mut c = Cluster::start();
    c.agent_args = vec!["--heartbeat-timeout-secs".into(), "8".into()];
    c.start_agent("node-1", &["cloud=aws"], 2);
    c.wait_nodes_ready(1);
    // The default policy (never): a lost heartbeat is replaced anyway.
    c.ok(&["vm", "run", "--name", "hung", "--output", "json"]);
    c.wait_phase("hung", "running", BOOT);
    let ready = |c: &Cluster| c.console("hung").matches("firefleet-guest ready").count();
    c.wait(Duration::from_secs(30), "the ready line", || ready(&c) >= 1);
    // Healthy for a while (its guest answers the agent's probes): not replaced.
    std::thread::sleep(Duration::from_secs(12));
    let v = c.vm("hung");
    assert_eq!(
        (v["status"]["phase"].as_str(), restarts(&v)),
        (Some("running"), 0),
        "{v}"
    );

    let t0 = Instant::now();
    hang_guest(&c, "hung");
    let mut seen_failed = None;
    let mut message = String::new();
    c.wait(Duration::from_secs(120), "the hung VM replaced", || {
        let v = c.vm("hung");
        let msg = v["status"]["message"].as_str().unwrap_or_default();
        if msg.contains("stopped answering") && seen_failed.is_none() {
            seen_failed = Some(t0.elapsed());
            message = msg.to_owned();
        }
        restarts(&v) == 1 && v["status"]["phase"] == "running"
    });
    let replaced = t0.elapsed();
    c.wait(Duration::from_secs(30), "a second ready line", || {
        ready(&c) >= 2
    });
    let fresh_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready(&c), 2, "{}", c.console("hung"));
    eprintln!(
        "heartbeat: hung at 0, failed seen at {seen_failed:?} ({message}), running again at \
         {replaced:?}, second ready line at {fresh_at:?}"
    );
    assert!(
        seen_failed.is_some(),
        "the no-heartbeat failure was reported"
    );
    assert!(message.contains("(no heartbeat): replaced"), "{message}");
    // The fresh guest answers.
    let out = c.ok(&["vm", "exec", "hung", "--", "sh", "-c", "echo fresh"]);
    assert!(out.contains("fresh"), "{out}");
}
