//! Client commands: `vm`, `node`, `token`, `join-token`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use firefleet_api::{CreateJoinTokenRequest, CreateVmRequest, ExecRequest};
use firefleet_client::{Client, Connection, Failover};
use firefleet_types::{
    topology::parse_label, DiskSpec, Labels, Migration, MigrationPhase, NetworkSpec, PlacementSpec,
    Resources, Snapshot, SnapshotPhase, Vm, VmPhase,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    args::{Global, Output, VmCommand, VmRunArgs},
    output::{opt, print, wire},
};

/// Builds a client from the global options.
pub fn client(g: &Global) -> anyhow::Result<Client> {
    let ca =
        g.ca.as_ref()
            .context("no CA given: pass --ca FILE or set FIREFLEET_CA (e.g. DATA_DIR/ca.pem)")?;
    let ca_pem = std::fs::read_to_string(ca)
        .with_context(|| format!("reading the CA file {}", ca.display()))?;
    let token = match &g.token {
        Some(t) => Some(match t.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {path}"))?
                .trim()
                .to_owned(),
            None => t.clone(),
        }),
        None => None,
    };
    if token.is_none() {
        bail!("no token given: pass --token TOKEN (or @FILE) or set FIREFLEET_TOKEN");
    }
    let failover = Failover {
        budget: Duration::from_secs(g.failover_secs),
        ..Failover::default()
    };
    Ok(Client::with_failover(
        &Connection {
            servers: g.server.0.clone(),
            ca_pem,
            token,
            identity: None,
        },
        failover,
    )?)
}

fn vm_row(vm: &Vm) -> Vec<String> {
    vec![
        vm.spec.name.clone(),
        vm.spec.tenant.to_string(),
        wire(&vm.status.phase),
        opt(&vm.status.node),
        opt(&vm.status.accel),
        format!(
            "{}/{}Mi",
            vm.spec.resources.vcpus, vm.spec.resources.memory_mib
        ),
        opt(&vm.status.ip),
        vm.id.to_string(),
    ]
}

const VM_HEADERS: &[&str] = &[
    "NAME", "TENANT", "PHASE", "NODE", "ACCEL", "CPU/MEM", "IP", "ID",
];

pub async fn vm(g: &Global, cmd: VmCommand) -> anyhow::Result<()> {
    let c = client(g)?;
    match cmd {
        VmCommand::Run(a) => run(g, &c, *a).await,
        VmCommand::Ls => {
            let vms = c.vm_list().await?;
            print(g.output, &vms, VM_HEADERS, vms.iter().map(vm_row).collect())
        }
        VmCommand::Get { vm } => {
            let v = c.vm_get(&vm).await?;
            print_vm(g.output, &v)
        }
        VmCommand::Logs { vm, follow } => logs(g, &c, &vm, follow).await,
        VmCommand::Stop { vm, wait } => {
            let v = c.vm_stop(&vm).await?;
            settle(g, &c, v, wait, |v: &Vm| v.status.phase.is_terminal()).await
        }
        VmCommand::Pause { vm, wait } => {
            let v = c.vm_pause(&vm).await?;
            settle(g, &c, v, wait, |v: &Vm| {
                v.status.phase == VmPhase::Paused || v.status.phase.is_terminal()
            })
            .await
        }
        VmCommand::Resume { vm, wait } => {
            let v = c.vm_resume(&vm).await?;
            settle(g, &c, v, wait, |v: &Vm| {
                v.status.phase == VmPhase::Running || v.status.phase.is_terminal()
            })
            .await
        }
        VmCommand::Snapshot { vm, name, wait } => {
            let mut s = c.snapshot_create(&vm, &name).await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while wait && s.phase == SnapshotPhase::Pending {
                if Instant::now() > deadline {
                    bail!("snapshot {name} of {vm} is still pending after 120 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                s = c
                    .snapshot_list(&vm)
                    .await?
                    .into_iter()
                    .find(|x| x.name == name)
                    .context("the snapshot disappeared")?;
            }
            if s.phase == SnapshotPhase::Failed {
                bail!(
                    "snapshot {name} of {vm} failed: {}",
                    s.message.unwrap_or_default()
                );
            }
            print_snapshots(g.output, &[s])
        }
        VmCommand::Snapshots { vm } => print_snapshots(g.output, &c.snapshot_list(&vm).await?),
        VmCommand::Migrate {
            vm,
            to,
            wait,
            timeout,
            by_snapshot,
        } => {
            let m = c.vm_migrate(&vm, &to, by_snapshot).await?;
            let m = if wait {
                wait_migration(&c, &vm, g.output, Duration::from_secs(timeout)).await?
            } else {
                m
            };
            print_migration(g.output, &m)?;
            if m.phase == MigrationPhase::Failed {
                bail!(
                    "migration of {vm} to {to} failed: {}",
                    m.message.unwrap_or_default()
                );
            }
            Ok(())
        }
        VmCommand::Restore { vm, snapshot, wait } => {
            let v = c.vm_restore(&vm, &snapshot).await?;
            let generation = v.generation;
            let v = if wait {
                let v = wait_for(
                    &c,
                    &v.id.to_string(),
                    g.output,
                    Duration::from_secs(120),
                    |v| {
                        v.status.restored_generation >= Some(generation)
                            && (v.status.phase == VmPhase::Running || v.status.phase.is_terminal())
                    },
                )
                .await?;
                if v.status.phase == VmPhase::Failed {
                    print_vm(g.output, &v)?;
                    bail!(
                        "restoring {} failed: {}",
                        v.spec.name,
                        v.status.message.clone().unwrap_or_default()
                    );
                }
                v
            } else {
                v
            };
            print_vm(g.output, &v)
        }
        VmCommand::Exec { vm, timeout, argv } => {
            let req = ExecRequest {
                argv,
                timeout_ms: Some(timeout.saturating_mul(1000)),
                stdin_b64: None,
            };
            let r = c.vm_exec(&vm, &req).await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Output::Table => {
                    print!("{}", r.stdout);
                    eprint!("{}", r.stderr);
                }
            }
            if let Some(e) = r.error {
                bail!("exec in {vm} failed: {e}");
            }
            match r.exit_code {
                Some(0) => Ok(()),
                Some(code) => {
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    std::process::exit(code.clamp(1, 255));
                }
                None => bail!("the command in {vm} was killed after {timeout} s"),
            }
        }
        VmCommand::Stats { vm } => {
            let s = c.vm_stats(&vm).await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Table => {
                    let mut rows = vec![
                        vec![
                            "vmm cpu time".into(),
                            format!("{:.2} s", s.host.cpu_time_ms as f64 / 1000.0),
                        ],
                        vec![
                            "vmm rss".into(),
                            format!("{} MiB", s.host.rss_bytes / (1024 * 1024)),
                        ],
                        vec!["vmm threads".into(), s.host.threads.to_string()],
                    ];
                    if let Some(n) = &s.host.net {
                        rows.push(vec![
                            "net from guest".into(),
                            format!("{} B / {} packets", n.rx_bytes, n.rx_packets),
                        ]);
                        rows.push(vec![
                            "net to guest".into(),
                            format!("{} B / {} packets", n.tx_bytes, n.tx_packets),
                        ]);
                    }
                    if let Some(gs) = &s.guest {
                        rows.push(vec!["guest load1".into(), format!("{:.2}", gs.load1)]);
                        rows.push(vec![
                            "guest memory available".into(),
                            format!(
                                "{} / {} MiB",
                                gs.mem_available_kib / 1024,
                                gs.mem_total_kib / 1024
                            ),
                        ]);
                        rows.push(vec!["guest processes".into(), gs.processes.to_string()]);
                        rows.push(vec!["guest listeners".into(), gs.listeners.to_string()]);
                        rows.push(vec![
                            "guest uptime".into(),
                            format!("{:.1} s", gs.uptime_ms as f64 / 1000.0),
                        ]);
                    }
                    print!("{}", crate::output::table(&["STAT", "VALUE"], &rows));
                }
            }
            Ok(())
        }
        VmCommand::Rm { vm, wait } => {
            let v = c.vm_get(&vm).await?;
            let id = v.id.to_string();
            c.vm_delete(&id).await?;
            if wait {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match c.vm_get(&id).await {
                        Err(e) if e.status() == Some(404) => break,
                        Err(e) => return Err(e.into()),
                        Ok(_) if Instant::now() > deadline => {
                            bail!("vm {id} still exists after 60 s")
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
            match g.output {
                Output::Json => {
                    println!("{}", serde_json::json!({ "deleted": id, "waited": wait }))
                }
                Output::Table => println!("deleted {} ({id})", v.spec.name),
            }
            Ok(())
        }
    }
}

/// Prints a VM after an action, first waiting (if asked) until `done` holds for it.
async fn settle(
    g: &Global,
    c: &Client,
    v: Vm,
    wait: bool,
    done: impl Fn(&Vm) -> bool,
) -> anyhow::Result<()> {
    let v = if wait {
        wait_for(
            c,
            &v.id.to_string(),
            g.output,
            Duration::from_secs(60),
            done,
        )
        .await?
    } else {
        v
    };
    print_vm(g.output, &v)
}

fn print_snapshots(output: Output, list: &[Snapshot]) -> anyhow::Result<()> {
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                wire(&s.phase),
                s.node.to_string(),
                s.bytes
                    .map(|b| format!("{} MiB", b / (1024 * 1024)))
                    .unwrap_or_else(|| "-".into()),
                opt(&s.pause_ms),
                opt(&s.message),
            ]
        })
        .collect();
    print(
        output,
        &list,
        &["NAME", "PHASE", "NODE", "SIZE", "PAUSE_MS", "MESSAGE"],
        rows,
    )
}

fn print_vm(output: Output, v: &Vm) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Table => {
            print!("{}", crate::output::table(VM_HEADERS, &[vm_row(v)]));
            if let Some(m) = &v.status.message {
                println!("message: {m}");
            }
            if let Some(code) = v.status.exit_code {
                println!("exit status: {code}");
            }
        }
    }
    Ok(())
}

/// Parses `image=NAME[,root][,ro]` or `size=MIB` (see `vm run --disk`).
fn parse_disk(g: &Global, s: &str) -> anyhow::Result<DiskSpec> {
    let mut d = DiskSpec {
        image: None,
        size_mib: None,
        read_only: false,
        root: false,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("image", v)) => d.image = Some(crate::cmd_image::resolve_disk(g, v)?),
            Some(("size", v)) => {
                d.size_mib = Some(
                    v.parse()
                        .with_context(|| format!("size {v:?} is not a number of MiB"))?,
                )
            }
            None if part == "root" => d.root = true,
            None if part == "ro" || part == "read-only" => d.read_only = true,
            _ => bail!("unknown part {part:?} (expected image=NAME, size=MIB, root, ro)"),
        }
    }
    Ok(d)
}

async fn run(g: &Global, c: &Client, a: VmRunArgs) -> anyhow::Result<()> {
    let image = crate::cmd_image::resolve_or_build(g, &a.image).await?;
    let mut labels = Labels::new();
    for l in &a.labels {
        let (k, v) = parse_label(l)?;
        labels.insert(k, v);
    }
    let name = a.name.clone().unwrap_or_else(|| {
        let u = uuid::Uuid::new_v4().simple().to_string();
        format!("vm-{}", &u[..8])
    });
    let req = CreateVmRequest {
        name,
        image,
        resources: Resources {
            vcpus: a.vcpus,
            memory_mib: a.memory,
        },
        labels,
        cmd: a.cmd.map(|s| vec!["sh".to_owned(), "-c".to_owned(), s]),
        restart_policy: a.restart,
        tenant: a.tenant.as_deref().map(str::parse).transpose()?,
        network: NetworkSpec {
            enabled: !a.no_network,
            egress_mbit: a
                .egress_mbit
                .or(Some(firefleet_types::vm::DEFAULT_EGRESS_MBIT)),
            ingress_mbit: a.ingress_mbit,
            isolated: false,
        },
        runtime: a
            .runtime
            .parse()
            .map_err(|e: firefleet_types::ValidationError| {
                anyhow::anyhow!("--runtime: {}", e.message)
            })?,
        disks: a
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| parse_disk(g, d).with_context(|| format!("--disk {d:?} (disk {i})")))
            .collect::<anyhow::Result<_>>()?,
        placement: PlacementSpec {
            node_selector: a
                .node_selector
                .iter()
                .map(|l| parse_label(l).with_context(|| format!("--node-selector {l:?}")))
                .collect::<anyhow::Result<_>>()?,
            allowed_clouds: a.allowed_clouds.clone(),
            allowed_regions: a.allowed_regions.clone(),
            group: a.group.clone(),
            class: a.class.clone(),
            user_region: a.user_region.clone(),
            compliant_host: a.compliant_host,
        },
    };
    let (vm, warnings) = c.vm_create_with_warnings(&req).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let vm = if a.wait {
        let v = wait_for(
            c,
            &vm.id.to_string(),
            g.output,
            Duration::from_secs(a.timeout),
            |v| v.status.phase == VmPhase::Running || v.status.phase.is_terminal(),
        )
        .await?;
        if v.status.phase == VmPhase::Failed {
            print_vm(g.output, &v)?;
            bail!(
                "vm {} failed: {}",
                v.spec.name,
                v.status.message.clone().unwrap_or_default()
            );
        }
        v
    } else {
        vm
    };
    print_vm(g.output, &vm)
}

/// Polls a VM until `done`, with a spinner on a terminal.
fn print_migration(output: Output, m: &Migration) -> anyhow::Result<()> {
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
    let size = m
        .bytes
        .map_or_else(|| "-".to_owned(), |b| format!("{} MiB", b >> 20));
    print(
        output,
        m,
        &[
            "VM", "FROM", "TO", "PHASE", "SIZE", "TOTAL", "DOWNTIME", "MESSAGE",
        ],
        vec![vec![
            m.vm.to_string(),
            m.from.to_string(),
            m.to.to_string(),
            wire(&m.phase),
            size,
            ms(m.total_ms()),
            ms(m.downtime_ms()),
            opt(&m.message),
        ]],
    )
}

/// Polls a migration until it is done or failed, with a spinner naming its step.
async fn wait_migration(
    c: &Client,
    vm: &str,
    output: Output,
    timeout: Duration,
) -> anyhow::Result<Migration> {
    let bar = spinner(output);
    let deadline = Instant::now() + timeout;
    loop {
        let m = c.vm_migration(vm).await?;
        bar.set_message(format!("{vm} -> {}: {}", m.to, wire(&m.phase)));
        if m.phase.is_terminal() {
            bar.finish_and_clear();
            return Ok(m);
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "migration of {vm} to {} is still {} after {} s",
                m.to,
                wire(&m.phase),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A spinner on a terminal (table output), hidden otherwise.
pub(crate) fn spinner(output: Output) -> ProgressBar {
    if output == Output::Table && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    } else {
        ProgressBar::hidden()
    }
}

pub async fn wait_for(
    c: &Client,
    id: &str,
    output: Output,
    timeout: Duration,
    done: impl Fn(&Vm) -> bool,
) -> anyhow::Result<Vm> {
    let bar = spinner(output);
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.vm_get(id).await?;
        bar.set_message(format!("{} is {}", v.spec.name, wire(&v.status.phase)));
        if done(&v) {
            bar.finish_and_clear();
            return Ok(v);
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "vm {} is still {} after {} s{}",
                v.spec.name,
                wire(&v.status.phase),
                timeout.as_secs(),
                v.status
                    .message
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn logs(g: &Global, c: &Client, vm: &str, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut offset = 0;
    let mut all = String::new();
    loop {
        let chunk = c.vm_logs(vm, offset).await?;
        offset = chunk.next_offset;
        if g.output == Output::Table {
            print!("{}", chunk.data);
            let _ = std::io::stdout().flush();
        } else {
            all.push_str(&chunk.data);
        }
        if !follow || chunk.finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if g.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({ "vm": vm, "console": all, "next_offset": offset })
        );
    }
    Ok(())
}

pub async fn node_cordon(g: &Global, node: &str, cordon: bool) -> anyhow::Result<()> {
    let n = client(g)?.node_cordon(node, cordon).await?;
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&n)?),
        Output::Table => println!(
            "node {} {}",
            n.id,
            if n.cordoned { "cordoned" } else { "uncordoned" }
        ),
    }
    Ok(())
}

pub async fn node_drain(g: &Global, node: &str, wait: bool) -> anyhow::Result<()> {
    let c = client(g)?;
    let d = c.node_drain(node).await?;
    let mut done = Vec::new();
    if wait {
        for m in &d.migrations {
            done.push(wait_migration(&c, m.vm.as_str(), g.output, Duration::from_secs(600)).await?);
        }
    } else {
        done = d.migrations.clone();
    }
    match g.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": d.node, "migrations": done, "stuck": d.stuck
            }))?
        ),
        Output::Table => {
            println!("node {} cordoned; {} VM(s) moving", d.node, done.len());
            for m in &done {
                print_migration(Output::Table, m)?;
            }
            for s in &d.stuck {
                println!("stuck: {}: {}", s.vm, s.reason);
            }
        }
    }
    let failed = done
        .iter()
        .filter(|m| m.phase == MigrationPhase::Failed)
        .count();
    if !d.stuck.is_empty() || failed > 0 {
        bail!(
            "drain of {node}: {failed} migration(s) failed, {} VM(s) could not be moved",
            d.stuck.len()
        );
    }
    Ok(())
}

pub async fn plan(g: &Global, a: crate::args::PlanArgs) -> anyhow::Result<()> {
    let q = firefleet_api::PlanQuery {
        rebalance: a.rebalance,
        imbalance: a.imbalance,
        battery_below: a.battery_below,
    };
    let p = client(g)?.plan(&q, a.apply).await?;
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&p)?),
        Output::Table => {
            if p.moves.is_empty() {
                println!("no migration worth making");
            } else {
                let rows: Vec<Vec<String>> = p
                    .moves
                    .iter()
                    .map(|m| {
                        vec![
                            m.vm.clone(),
                            m.from.clone(),
                            m.to.clone(),
                            m.trigger.clone(),
                            format!("{:+.3}", m.net),
                            format!("{:.1}", m.downtime_s),
                            m.reason.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::output::table(
                        &["VM", "FROM", "TO", "TRIGGER", "NET", "DOWNTIME_S", "WHY"],
                        &rows
                    )
                );
            }
            for n in &p.notes {
                println!("{} on {}: {}", n.vm, n.node, n.why);
            }
            if a.apply {
                println!("{} migration(s) started", p.started.len());
            }
        }
    }
    Ok(())
}

pub async fn node_ls(g: &Global) -> anyhow::Result<()> {
    let nodes = client(g)?.node_list().await?;
    let rows = nodes
        .iter()
        .map(|n| {
            let f = n.status.facts.as_ref();
            vec![
                n.id.to_string(),
                wire(&n.status.readiness),
                f.map(|f| f.accel.to_string()).unwrap_or_else(|| "-".into()),
                f.map(|f| format!("{}/{}Mi", f.capacity.vcpus, f.capacity.memory_mib))
                    .unwrap_or_else(|| "-".into()),
                n.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    print(
        g.output,
        &nodes,
        &["NAME", "READINESS", "ACCEL", "CAPACITY", "LABELS"],
        rows,
    )
}

pub async fn node_rm(g: &Global, node: &str) -> anyhow::Result<()> {
    let n = client(g)?.node_remove(node).await?;
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&n)?),
        Output::Table => println!("node {} removed; its certificates are revoked", n.id),
    }
    Ok(())
}

pub async fn join_token_create(
    g: &Global,
    ttl_secs: Option<u64>,
    node: Option<&str>,
    cordon: Option<bool>,
) -> anyhow::Result<()> {
    let t = client(g)?
        .join_token_create(&CreateJoinTokenRequest {
            ttl_secs,
            node: node.map(str::parse).transpose()?,
            cordon,
        })
        .await?;
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
        Output::Table => println!("{}", t.token),
    }
    Ok(())
}
