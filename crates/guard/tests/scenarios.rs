//! Each built-in rule against a crafted attack and its benign counterpart; the statistical
//! detectors against clear shifts and seeded noise; de-duplication and memory bounds.

use firefleet_guard::{
    replay, Connection, Detector, DetectorConfig, DetectorKind, Finding, GuestSample, HostSample,
    Listener, Process, Rules, Sample, Severity,
};

/// SplitMix64: deterministic noise for tests.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn process(pid: u32, cmd: &[&str]) -> Process {
    let exe = cmd[0].rsplit('/').next().unwrap_or(cmd[0]);
    Process {
        pid,
        ppid: 1,
        comm: exe.chars().take(15).collect(),
        cmdline: cmd.iter().map(|s| (*s).to_string()).collect(),
        state: "S".into(),
        stdin: Some("/dev/null".into()),
        stdout: Some("pipe:[900]".into()),
        ..Process::default()
    }
}

fn init() -> Process {
    process(1, &["/sbin/firefleet-guest"])
}

fn conn(remote: &str, port: u16, state: &str, local_port: u16, inode: u64) -> Connection {
    Connection {
        proto: "tcp".into(),
        local_addr: "10.0.0.2".into(),
        local_port,
        remote_addr: remote.into(),
        remote_port: port,
        state: state.into(),
        inode,
    }
}

fn listener(addr: &str, port: u16) -> Listener {
    Listener {
        proto: "tcp".into(),
        addr: addr.into(),
        port,
        inode: 7,
    }
}

/// A VM whose cumulative counters advance with each step.
struct Vm {
    name: String,
    group: Option<String>,
    at_ms: u64,
    cpu_ms: f64,
    tx: f64,
    /// pid -> cumulative ticks
    ticks: std::collections::BTreeMap<u32, u64>,
}

impl Vm {
    fn new(name: &str) -> Vm {
        Vm {
            name: name.into(),
            group: None,
            at_ms: 1_000_000,
            cpu_ms: 0.0,
            tx: 0.0,
            ticks: Default::default(),
        }
    }

    /// Advances `dt_ms` with the VM using `cpu` CPUs and sending `egress` bytes/s; processes in
    /// `busy` use one full CPU each.
    fn step(
        &mut self,
        dt_ms: u64,
        cpu: f64,
        egress: f64,
        guest: Option<GuestSample>,
        busy: &[u32],
    ) -> Sample {
        self.at_ms += dt_ms;
        self.cpu_ms += cpu * dt_ms as f64;
        self.tx += egress * dt_ms as f64 / 1000.0;
        let guest = guest.map(|mut g| {
            for p in &mut g.processes {
                let t = self.ticks.entry(p.pid).or_insert(0);
                if busy.contains(&p.pid) {
                    *t += dt_ms / 10;
                }
                p.cpu_ticks = *t;
            }
            g
        });
        Sample {
            vm: self.name.clone(),
            at_ms: self.at_ms,
            group: self.group.clone(),
            host: HostSample {
                cpu_time_ms: self.cpu_ms as u64,
                rss_bytes: 256 << 20,
                tx_bytes: self.tx as u64,
                rx_bytes: 0,
                tx_packets: 0,
                rx_packets: 0,
            },
            guest,
        }
    }
}

fn guest(
    processes: Vec<Process>,
    listeners: Vec<Listener>,
    connections: Vec<Connection>,
) -> GuestSample {
    GuestSample {
        processes,
        listeners,
        connections,
        load1: 0.1,
        mem_total_kib: 256 * 1024,
        mem_available_kib: 200 * 1024,
        uptime_ms: 1000,
        ..GuestSample::default()
    }
}

/// `n` samples, 10 s apart, of the same guest, with `busy` processes at one CPU.
fn steady(vm: &mut Vm, n: usize, cpu: f64, g: &GuestSample, busy: &[u32]) -> Vec<Sample> {
    (0..n)
        .map(|_| vm.step(10_000, cpu, 1000.0, Some(g.clone()), busy))
        .collect()
}

fn run(samples: &[Sample]) -> Vec<Finding> {
    replay(&Rules::builtin(), samples)
}

fn fired<'a>(findings: &'a [Finding], rule: &str) -> Option<&'a Finding> {
    findings.iter().find(|f| f.rule == rule)
}

fn assert_benign(findings: &[Finding]) {
    let bad: Vec<_> = findings
        .iter()
        .filter(|f| f.severity > Severity::Low)
        .collect();
    assert!(bad.is_empty(), "benign behaviour fired above Low: {bad:#?}");
}

#[test]
fn idle_guest_is_quiet() {
    let mut vm = Vm::new("idle");
    let g = guest(vec![init()], vec![], vec![]);
    let f = run(&steady(&mut vm, 60, 0.01, &g, &[]));
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn miner_by_name_fires_and_a_busy_loop_does_not() {
    let mut vm = Vm::new("m");
    let g = guest(
        vec![init(), process(42, &["/tmp/.x/xmrig", "-o", "pool"])],
        vec![],
        vec![],
    );
    let f = run(&steady(&mut vm, 3, 1.0, &g, &[42]));
    let hit = fired(&f, "miner-process").expect("miner-process");
    assert_eq!(hit.severity, Severity::High);
    assert!(
        hit.evidence["processes"].contains("xmrig (pid 42"),
        "{hit:?}"
    );

    // A steady CPU-bound shell loop: sustained CPU alone is not a miner.
    let mut vm = Vm::new("loop");
    let g = guest(
        vec![init(), process(7, &["sh", "-c", "while :; do :; done"])],
        vec![],
        vec![],
    );
    assert_benign(&run(&steady(&mut vm, 60, 1.0, &g, &[7])));
}

#[test]
fn miner_by_pool_port_needs_sustained_cpu() {
    let procs = vec![init(), process(42, &["/usr/bin/worker"])];
    let pool = vec![conn("198.51.100.7", 3333, "ESTABLISHED", 40_000, 11)];
    let mut vm = Vm::new("pool");
    let g = guest(procs.clone(), vec![], pool.clone());
    let f = run(&steady(&mut vm, 12, 1.0, &g, &[42]));
    let hit = fired(&f, "miner-pool-cpu").expect("miner-pool-cpu");
    assert_eq!(hit.severity, Severity::High);
    // Rates start on the 2nd sample, the rule holds 60 s: fires on sample 8 and stays open.
    assert_eq!(hit.count, 5);

    // Pool port, idle process: no.
    let mut vm = Vm::new("pool-idle");
    let g = guest(procs.clone(), vec![], pool);
    assert!(fired(&run(&steady(&mut vm, 12, 0.01, &g, &[])), "miner-pool-cpu").is_none());

    // Busy process talking HTTPS: no.
    let mut vm = Vm::new("https");
    let g = guest(
        procs,
        vec![],
        vec![conn("198.51.100.7", 443, "ESTABLISHED", 40_000, 11)],
    );
    assert_benign(&run(&steady(&mut vm, 12, 1.0, &g, &[42])));
}

#[test]
fn reverse_shell_by_stdio_socket() {
    let mut sh = process(50, &["/bin/bash", "-i"]);
    sh.stdin = Some("socket:[77]".into());
    sh.stdout = Some("socket:[77]".into());
    let mut vm = Vm::new("rs");
    let g = guest(
        vec![init(), sh],
        vec![],
        vec![conn("203.0.113.9", 9001, "ESTABLISHED", 41_000, 77)],
    );
    let f = run(&steady(&mut vm, 2, 0.01, &g, &[]));
    let hit = fired(&f, "reverse-shell-stdio").expect("reverse-shell-stdio");
    assert_eq!(hit.severity, Severity::Critical);
    assert!(hit.evidence["processes"].contains("socket:[77]"));

    // A shell on pipes and /dev/null.
    let mut vm = Vm::new("pipes");
    let g = guest(
        vec![init(), process(50, &["/bin/sh", "/etc/init.sh"])],
        vec![],
        vec![],
    );
    assert_benign(&run(&steady(&mut vm, 5, 0.01, &g, &[])));
}

#[test]
fn shell_with_outbound_connection() {
    let mut sh = process(60, &["sh"]);
    sh.stdout = Some("socket:[88]".into());
    let mut vm = Vm::new("so");
    let g = guest(
        vec![init(), sh],
        vec![],
        vec![conn("203.0.113.9", 4242, "ESTABLISHED", 41_000, 88)],
    );
    let f = run(&steady(&mut vm, 2, 0.01, &g, &[]));
    let hit = fired(&f, "shell-outbound-connection").expect("shell-outbound-connection");
    assert_eq!(hit.severity, Severity::Critical);
    assert!(
        hit.evidence["processes"].contains("203.0.113.9:4242"),
        "{hit:?}"
    );

    // A shell on pipes while another process (curl) talks to the outside: not linked.
    let mut vm = Vm::new("curl");
    let g = guest(
        vec![
            init(),
            process(60, &["sh", "-c", "curl x"]),
            process(61, &["curl", "x"]),
        ],
        vec![],
        vec![conn("203.0.113.9", 443, "ESTABLISHED", 41_000, 88)],
    );
    assert_benign(&run(&steady(&mut vm, 5, 0.01, &g, &[])));

    // A shell whose socket is an inbound connection to a local listener is not outbound.
    let mut sh = process(60, &["sh"]);
    sh.stdout = Some("socket:[88]".into());
    let mut vm = Vm::new("inbound");
    let g = guest(
        vec![init(), sh],
        vec![listener("0.0.0.0", 8080)],
        vec![conn("10.0.0.1", 50_000, "ESTABLISHED", 8080, 88)],
    );
    assert!(fired(
        &run(&steady(&mut vm, 3, 0.01, &g, &[])),
        "shell-outbound-connection"
    )
    .is_none());
}

#[test]
fn port_scan_of_30_ports_in_10_s_but_not_a_busy_web_server() {
    let mut vm = Vm::new("scan");
    let samples: Vec<Sample> = (0..10u16)
        .map(|i| {
            let conns = (0..3u16)
                .map(|j| {
                    conn(
                        "10.0.0.5",
                        20 + i * 3 + j,
                        "SYN_SENT",
                        50_000 + i * 3 + j,
                        0,
                    )
                })
                .collect();
            vm.step(
                1000,
                0.05,
                1000.0,
                Some(guest(vec![init(), process(9, &["nmap"])], vec![], conns)),
                &[],
            )
        })
        .collect();
    let f = run(&samples);
    let hit = fired(&f, "port-scan-ports").expect("port-scan-ports");
    assert_eq!(hit.severity, Severity::High);
    assert!(
        hit.evidence["distinct_remote_ports"].starts_with("30 > 20"),
        "{hit:?}"
    );

    // Many hosts on one port.
    let mut vm = Vm::new("sweep");
    let samples: Vec<Sample> = (0..6u16)
        .map(|i| {
            let conns = (0..10u16)
                .map(|j| {
                    conn(
                        &format!("10.0.{i}.{j}"),
                        22,
                        "SYN_SENT",
                        50_000 + i * 10 + j,
                        0,
                    )
                })
                .collect();
            vm.step(
                1000,
                0.05,
                1000.0,
                Some(guest(vec![init()], vec![], conns)),
                &[],
            )
        })
        .collect();
    assert!(fired(&run(&samples), "port-scan-hosts").is_some());

    // busybox httpd on 8080 with 200 inbound connections from the host's ephemeral ports.
    let mut vm = Vm::new("web");
    let httpd = process(5, &["busybox", "httpd", "-f", "-p", "8080"]);
    let samples: Vec<Sample> = (0..20u16)
        .map(|i| {
            let conns = (0..200u16)
                .map(|j| {
                    conn(
                        "10.0.0.1",
                        30_000 + i * 200 + j,
                        "ESTABLISHED",
                        8080,
                        1000 + u64::from(j),
                    )
                })
                .collect();
            let g = guest(
                vec![init(), httpd.clone()],
                vec![listener("0.0.0.0", 8080)],
                conns,
            );
            vm.step(10_000, 0.3, 2_000_000.0, Some(g), &[5])
        })
        .collect();
    assert_benign(&run(&samples));
}

#[test]
fn fork_bomb_but_not_slow_growth() {
    let procs = |n: u32| {
        (0..n)
            .map(|i| process(100 + i, &["bomb"]))
            .collect::<Vec<_>>()
    };
    let mut vm = Vm::new("bomb");
    let samples: Vec<Sample> = [10, 50, 100, 200, 400]
        .into_iter()
        .map(|n| {
            vm.step(
                5000,
                1.0,
                1000.0,
                Some(guest(procs(n), vec![], vec![])),
                &[],
            )
        })
        .collect();
    let f = run(&samples);
    let hit = fired(&f, "process-explosion").expect("process-explosion");
    assert!(
        hit.evidence["process_growth"].starts_with("10 -> 400"),
        "{hit:?}"
    );

    let mut vm = Vm::new("grow");
    let samples: Vec<Sample> = (10..30)
        .map(|n| {
            vm.step(
                5000,
                0.1,
                1000.0,
                Some(guest(procs(n), vec![], vec![])),
                &[],
            )
        })
        .collect();
    assert_benign(&run(&samples));
}

#[test]
fn egress_spike_but_not_steady_traffic() {
    let g = guest(vec![init()], vec![], vec![]);
    let mut vm = Vm::new("exfil");
    let samples: Vec<Sample> = (0..10)
        .map(|_| vm.step(5000, 0.2, 100_000_000.0, Some(g.clone()), &[]))
        .collect();
    let f = run(&samples);
    let hit = fired(&f, "egress-spike").expect("egress-spike");
    assert_eq!(hit.severity, Severity::Medium);

    // A short burst (10 s) is not sustained for 30 s.
    let mut vm = Vm::new("burst");
    let samples: Vec<Sample> = (0..10)
        .map(|i| {
            vm.step(
                5000,
                0.2,
                if i == 4 || i == 5 { 100e6 } else { 1e6 },
                Some(g.clone()),
                &[],
            )
        })
        .collect();
    assert!(fired(&run(&samples), "egress-spike").is_none());

    let mut vm = Vm::new("steady");
    let samples: Vec<Sample> = (0..40)
        .map(|_| vm.step(5000, 0.2, 1_000_000.0, Some(g.clone()), &[]))
        .collect();
    assert_benign(&run(&samples));
}

#[test]
fn metadata_address_access() {
    let mut vm = Vm::new("imds");
    let g = guest(
        vec![init(), process(70, &["curl"])],
        vec![],
        vec![conn("::ffff:169.254.169.254", 80, "ESTABLISHED", 40_100, 5)],
    );
    let f = run(&steady(&mut vm, 1, 0.01, &g, &[]));
    assert_eq!(
        fired(&f, "metadata-access").map(|f| f.severity),
        Some(Severity::High)
    );

    let mut vm = Vm::new("api");
    let g = guest(
        vec![init(), process(70, &["curl"])],
        vec![],
        vec![conn("10.0.0.1", 443, "ESTABLISHED", 40_100, 5)],
    );
    assert_benign(&run(&steady(&mut vm, 5, 0.01, &g, &[])));
}

#[test]
fn unexpected_listener_is_medium_and_configurable() {
    let g = guest(
        vec![init()],
        vec![listener("0.0.0.0", 4444), listener("127.0.0.1", 5000)],
        vec![],
    );
    let mut vm = Vm::new("l");
    let f = run(&steady(&mut vm, 1, 0.01, &g, &[]));
    let hit = fired(&f, "unexpected-listener").expect("unexpected-listener");
    assert_eq!(hit.severity, Severity::Medium);
    assert!(hit.evidence["listeners"].contains(":4444"));
    assert!(
        !hit.evidence["listeners"].contains(":5000"),
        "loopback is ignored"
    );

    let mut rules = Rules::builtin();
    rules.merge(
        Rules::parse("[[rule]]\nid = \"unexpected-listener\"\nseverity = \"medium\"\nwhen = { listener_port_not_in = [4444] }\n")
            .expect("parses"),
    );
    let mut vm = Vm::new("l2");
    assert!(replay(&rules, &steady(&mut vm, 1, 0.01, &g, &[])).is_empty());

    let g = guest(
        vec![init()],
        vec![listener("0.0.0.0", 8080), listener("::", 22)],
        vec![],
    );
    let mut vm = Vm::new("web");
    assert!(run(&steady(&mut vm, 3, 0.01, &g, &[])).is_empty());
}

/// CPU around `level` with uniform noise of +-`noise`, 10 s apart.
fn noisy(vm: &mut Vm, rng: &mut SplitMix, n: usize, level: f64, noise: f64) -> Vec<Sample> {
    (0..n)
        .map(|_| {
            let cpu = level + (rng.unit() - 0.5) * 2.0 * noise;
            let egress = 200_000.0 * (1.0 + (rng.unit() - 0.5) * 0.2);
            vm.step(10_000, cpu, egress, None, &[])
        })
        .collect()
}

#[test]
fn baseline_and_change_point_fire_on_a_shift_not_on_noise() {
    let mut rng = SplitMix(7);
    let mut vm = Vm::new("s");
    let mut samples = noisy(&mut vm, &mut rng, 200, 0.2, 0.05);
    assert!(run(&samples).is_empty(), "noise alone");

    samples.extend(noisy(&mut vm, &mut rng, 20, 0.9, 0.05));
    let f = run(&samples);
    let base = fired(&f, "baseline").expect("baseline");
    assert_eq!(
        (base.detector, base.severity, base.key.as_str()),
        (DetectorKind::Baseline, Severity::Low, "cpu")
    );
    let cp = fired(&f, "change-point").expect("change-point");
    assert_eq!(
        (cp.detector, cp.severity),
        (DetectorKind::ChangePoint, Severity::Low)
    );
    assert_eq!(cp.evidence["direction"], "up");
    assert!(f.iter().all(|f| f.key == "cpu"), "{f:#?}");
}

#[test]
fn peers_single_out_the_outlier() {
    let mut rng = SplitMix(11);
    let mut samples = Vec::new();
    let mut vms: Vec<Vm> = (0..10)
        .map(|i| {
            let mut vm = Vm::new(&format!("fn-a-{i}"));
            vm.group = Some("fn-a".into());
            vm
        })
        .collect();
    for _ in 0..5 {
        for (i, vm) in vms.iter_mut().enumerate() {
            let level = if i == 9 { 0.95 } else { 0.2 };
            samples.extend(noisy(vm, &mut rng, 1, level, 0.05));
        }
    }
    let f = run(&samples);
    assert!(!f.is_empty());
    for finding in &f {
        assert_eq!(
            (finding.vm.as_str(), finding.detector),
            ("fn-a-9", DetectorKind::Peers),
            "{finding:?}"
        );
        assert_eq!(finding.severity, Severity::Low);
    }

    // The same group without the outlier: quiet.
    let quiet: Vec<Sample> = samples
        .iter()
        .filter(|s| s.vm != "fn-a-9")
        .cloned()
        .collect();
    assert!(run(&quiet).is_empty());
}

#[test]
fn same_condition_over_ten_samples_is_one_finding() {
    let mut vm = Vm::new("d");
    let g = guest(vec![init(), process(42, &["minerd"])], vec![], vec![]);
    let samples = steady(&mut vm, 10, 0.5, &g, &[]);
    let mut det = Detector::new(&Rules::builtin(), DetectorConfig::default());
    let counts: Vec<u64> = samples
        .iter()
        .flat_map(|s| det.observe(s))
        .map(|f| f.count)
        .collect();
    assert_eq!(counts, (1..=10).collect::<Vec<_>>(), "new, then updates");

    let f = run(&samples);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].count, f[0].first_ms, f[0].last_ms),
        (10, samples[0].at_ms, samples[9].at_ms)
    );
    assert_eq!(f[0].id, Finding::id_for("d", "miner-process", ""));

    // Quiet for longer than resolve_after_ms (5 min), then again: a second episode, same id.
    let quiet = guest(vec![init()], vec![], vec![]);
    let mut all = samples;
    all.extend(steady(&mut vm, 40, 0.5, &quiet, &[]));
    all.extend(steady(&mut vm, 2, 0.5, &g, &[]));
    let f = run(&all);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].id, f[1].id);
    assert_eq!((f[0].count, f[1].count), (10, 2));
}

#[test]
fn vm_count_stays_at_the_cap() {
    let config = DetectorConfig {
        max_vms: 1000,
        ..DetectorConfig::default()
    };
    let mut det = Detector::new(&Rules::builtin(), config);
    for i in 0..100_000u64 {
        let s = Sample {
            vm: format!("vm-{}", i % 10_000),
            at_ms: 1000 + i * 10,
            group: Some(format!("g-{}", i % 7)),
            host: HostSample {
                cpu_time_ms: i,
                ..HostSample::default()
            },
            guest: None,
        };
        det.observe(&s);
        assert!(det.vm_count() <= 1000);
    }
    assert_eq!(det.vm_count(), 1000);
}

#[test]
fn counter_reset_and_stale_samples_do_not_fire() {
    let mut rng = SplitMix(3);
    let mut vm = Vm::new("r");
    let mut samples = noisy(&mut vm, &mut rng, 60, 0.2, 0.05);
    // The VMM restarts: counters start again from zero.
    vm.cpu_ms = 0.0;
    vm.tx = 0.0;
    samples.extend(noisy(&mut vm, &mut rng, 60, 0.2, 0.05));
    assert!(run(&samples).is_empty());

    // An old sample replayed with huge counters is ignored.
    let mut det = Detector::new(&Rules::builtin(), DetectorConfig::default());
    for s in &samples {
        det.observe(s);
    }
    let mut old = samples[10].clone();
    old.host.cpu_time_ms = u64::MAX / 2;
    assert!(det.observe(&old).is_empty());
}

#[test]
fn a_user_file_can_switch_a_builtin_rule_off() {
    let mut rules = Rules::builtin();
    rules.merge(
        Rules::parse(
            "[[rule]]\nid = \"miner-process\"\nseverity = \"high\"\nenabled = false\nwhen = { process_name_in = [\"xmrig\"] }\n",
        )
        .expect("parses"),
    );
    let mut vm = Vm::new("off");
    let g = guest(vec![init(), process(42, &["xmrig"])], vec![], vec![]);
    assert!(replay(&rules, &steady(&mut vm, 3, 0.5, &g, &[])).is_empty());
}

#[test]
fn connect_scan_of_closed_ports_by_failed_attempts() {
    // Refused connections leave no socket to list: the guest's failed-attempt counter shows it.
    let mut vm = Vm::new("scan");
    let mut base = guest(vec![init()], vec![], vec![]);
    base.uptime_ms = 3_600_000;
    let mut samples = Vec::new();
    for (i, fails) in [0u64, 0, 12, 30, 45].into_iter().enumerate() {
        let mut g = base.clone();
        g.tcp_active_opens = 5 + fails;
        g.tcp_attempt_fails = 100 + fails;
        samples.push(vm.step(if i == 0 { 0 } else { 2_000 }, 0.05, 100.0, Some(g), &[]));
    }
    let f = run(&samples);
    let hit = fired(&f, "port-scan-failed-connects").expect("port-scan-failed-connects");
    assert_eq!(hit.severity, Severity::High);
    assert!(
        hit.evidence["failed_connects"].starts_with("45 > 30"),
        "{hit:?}"
    );

    // A client retrying a down service now and then: a few failures a minute.
    let mut vm = Vm::new("retry");
    let samples: Vec<Sample> = (0..60u64)
        .map(|i| {
            let mut g = base.clone();
            g.tcp_attempt_fails = i / 3;
            vm.step(5_000, 0.05, 100.0, Some(g), &[])
        })
        .collect();
    assert_benign(&run(&samples));

    // The first sample already after the scan, in a guest booted 20 s before: counted from 0.
    let mut vm = Vm::new("late");
    let mut g = base.clone();
    g.tcp_attempt_fails = 45;
    g.uptime_ms = 20_000;
    let f = run(&[vm.step(2_000, 0.05, 100.0, Some(g.clone()), &[])]);
    assert!(fired(&f, "port-scan-failed-connects").is_some(), "{f:#?}");
    // ... but not in a guest up for hours (those failures may be old).
    let mut vm = Vm::new("old");
    g.uptime_ms = 3_600_000;
    let f = run(&[vm.step(2_000, 0.05, 100.0, Some(g), &[])]);
    assert!(fired(&f, "port-scan-failed-connects").is_none(), "{f:#?}");

    // A counter that goes down (the guest booted again) is not a burst.
    let mut vm = Vm::new("reboot");
    let samples: Vec<Sample> = [500u64, 0, 3]
        .into_iter()
        .map(|fails| {
            let mut g = base.clone();
            g.tcp_attempt_fails = fails;
            vm.step(2_000, 0.05, 100.0, Some(g), &[])
        })
        .collect();
    assert!(fired(&run(&samples), "port-scan-failed-connects").is_none());
}

#[test]
fn process_explosion_counts_past_a_cut_list() {
    // The guest cuts its process list to fit one line; its own count still shows the growth.
    let mut vm = Vm::new("bomb");
    let mut samples = Vec::new();
    for count in [5u64, 5, 300, 900] {
        let mut g = guest(vec![init()], vec![], vec![]);
        g.process_count = count;
        samples.push(vm.step(2_000, 1.0, 100.0, Some(g), &[]));
    }
    let f = run(&samples);
    let hit = fired(&f, "process-explosion").expect("process-explosion");
    assert!(
        hit.evidence["process_growth"].contains("5 -> 900"),
        "{hit:?}"
    );

    // The bombed guest answered again only after 90 s of silence: still a growth of ~600 per
    // minute against the sample before the silence.
    let mut vm = Vm::new("slow");
    let mut samples = Vec::new();
    for (dt, count) in [(0u64, 5u64), (5_000, 5), (90_000, 900)] {
        let mut g = guest(vec![init()], vec![], vec![]);
        g.process_count = count;
        samples.push(vm.step(dt, 1.0, 100.0, Some(g), &[]));
    }
    let f = run(&samples);
    let hit = fired(&f, "process-explosion").expect("after a silence");
    assert!(
        hit.evidence["process_growth"].contains("in 90 s without a sample"),
        "{hit:?}"
    );

    // Slow growth over a long silence is not an explosion: +150 in 10 minutes.
    let mut vm = Vm::new("slow-benign");
    let mut samples = Vec::new();
    for (dt, count) in [(0u64, 5u64), (5_000, 5), (600_000, 155)] {
        let mut g = guest(vec![init()], vec![], vec![]);
        g.process_count = count;
        samples.push(vm.step(dt, 0.1, 100.0, Some(g), &[]));
    }
    assert!(fired(&run(&samples), "process-explosion").is_none());
}
