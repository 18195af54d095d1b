//! Long-running commands: `up`, `server`, `agent`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use firefleet_agent::AgentConfig;
use firefleet_server::{Server, ServerConfig};
use firefleet_types::{topology::parse_label, Labels, Resources};
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::args::{AgentArgs, ControlPlaneArgs, ServerArgs, UpArgs};

fn labels(list: &[String]) -> anyhow::Result<Labels> {
    let mut l = Labels::new();
    for s in list {
        let (k, v) = parse_label(s)?;
        l.insert(k, v);
    }
    Ok(l)
}

/// Reads and checks a topology file (none: an empty topology).
fn load_topology(
    path: Option<&std::path::Path>,
) -> anyhow::Result<firefleet_types::fleet::FleetTopology> {
    let Some(path) = path else {
        return Ok(Default::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    firefleet_types::fleet::FleetTopology::parse(&text)
        .with_context(|| format!("topology file {}", path.display()))
}

/// `mains` or `battery:PERCENT`.
fn parse_power(s: &str) -> anyhow::Result<firefleet_types::node::PowerFacts> {
    use firefleet_types::node::{PowerFacts, PowerSource};
    let (source, battery_percent) = match s.split_once(':') {
        None if s == "mains" => (PowerSource::Mains, None),
        Some(("battery", pct)) => {
            let pct: u8 = pct
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .with_context(|| format!("--power {s:?}: the percent must be 0..=100"))?;
            (PowerSource::Battery, Some(pct))
        }
        _ => anyhow::bail!("--power {s:?}: expected mains or battery:PERCENT"),
    };
    Ok(PowerFacts {
        source,
        battery_percent,
        milliwatts: None,
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The server's configuration from the settings `up` and `server` share.
fn server_config(
    c: &ControlPlaneArgs,
    data_dir: PathBuf,
    listen: std::net::SocketAddr,
) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig {
        topology: load_topology(c.topology.as_deref())?,
        rebalance_every: (c.rebalance_every_secs > 0)
            .then(|| Duration::from_secs(c.rebalance_every_secs)),
        functions: c.functions.config(),
        guard: c.guard.config()?,
        limits: c.limits.limits()?,
        default_quota: c.quota.quota(),
        agent_cert_lifetime: c.agent_certs.lifetime(),
        ..ServerConfig::new(data_dir, listen)
    })
}

pub async fn server(a: ServerArgs) -> anyhow::Result<()> {
    let (dns_names, ip_sans) = a.certificate_names();
    let server = Server::start(ServerConfig {
        dns_names,
        ip_sans,
        node_timers: a.node_timers.timers(),
        store: a.ha.store()?,
        secrets_key: a.ha.secrets_key()?,
        replica: a.ha.replica(),
        ..server_config(&a.control, a.data_dir.clone(), a.listen)?
    })
    .await
    .context("starting the server")?;
    if let Some(f) = &a.addr_file {
        std::fs::write(f, server.addr.to_string())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    eprintln!(
        "firefleet server on https://{} (data in {})",
        server.addr,
        a.data_dir.display()
    );
    terminated().await;
    server.shutdown().await;
    Ok(())
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<()> {
    let capacity = match (a.capacity_vcpus, a.capacity_memory_mib) {
        (None, None) => None,
        (v, m) => Some(Resources {
            vcpus: v.unwrap_or(1),
            memory_mib: m.unwrap_or(1024),
        }),
    };
    let config = AgentConfig {
        servers: a.server.0,
        failover: firefleet_client::Failover {
            budget: Duration::from_secs(a.failover_secs),
            ..Default::default()
        },
        ca_file: a.ca,
        node: a.name.parse()?,
        labels: labels(&a.labels)?,
        join_token: a.join_token,
        data_dir: a.data_dir,
        image_dir: crate::cmd_image::image_dir(a.image_dir.as_ref()),
        capacity,
        heartbeat: Duration::from_secs(2),
        bridge: Some(a.bridge),
        subnet: Some(a.subnet),
        firecracker: a.firecracker.config(),
        power_override: a.power.as_deref().map(parse_power).transpose()?,
        heartbeat_timeout: Duration::from_secs(a.heartbeat_timeout_secs),
        telemetry_interval: Duration::from_millis(a.telemetry_interval_ms),
        telemetry_buffer: usize::try_from(a.telemetry_buffer).unwrap_or(usize::MAX),
        stop_vms_on_exit: a.stop_vms_on_exit,
    };
    let (tx, rx) = watch::channel(false);
    let mut run = tokio::spawn(firefleet_agent::run(config, rx));
    tokio::select! {
        r = &mut run => r.context("agent task")?.context("agent")?,
        _ = terminated() => {
            let _ = tx.send(true);
            // The agent winds down (and with --stop-vms-on-exit stops its VMMs) before we exit.
            match tokio::time::timeout(Duration::from_secs(60), run).await {
                Ok(r) => r.context("agent task")?.context("agent")?,
                Err(_) => anyhow::bail!("the agent did not stop within 60 s"),
            }
        }
    }
    Ok(())
}

pub async fn up(a: UpArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)
        .with_context(|| format!("resolving {}", a.data_dir.display()))?;
    let labels = labels(&a.labels)?;
    let server = Server::start(server_config(&a.control, data_dir.clone(), a.listen)?)
        .await
        .context("starting the server")?;
    let agent_dir = data_dir.join("agent");
    let enrolled = agent_dir.join("node.pem").exists();
    let join = if enrolled {
        None
    } else {
        Some(
            server
                .create_join_token(Duration::from_secs(600), a.node_name.parse()?)
                .await?,
        )
    };
    let exe = std::env::current_exe().context("finding the firefleet binary")?;
    let image_dir: PathBuf = crate::cmd_image::image_dir(a.image_dir.as_ref());
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("agent")
        .arg("--server")
        .arg(format!("https://{}", server.addr))
        .arg("--ca")
        .arg(data_dir.join("ca.pem"))
        .arg("--name")
        .arg(&a.node_name)
        .arg("--data-dir")
        .arg(&agent_dir)
        .arg("--image-dir")
        .arg(&image_dir)
        .arg("--bridge")
        .arg(&a.bridge)
        .arg("--subnet")
        .arg(&a.subnet)
        .arg("--telemetry-interval-ms")
        .arg(a.telemetry_interval_ms.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for l in &a.labels {
        cmd.arg("--label").arg(l);
    }
    if let Some(fc) = &a.firecracker.firecracker {
        cmd.arg("--firecracker").arg(fc);
    }
    if let Some(j) = &a.firecracker.jailer {
        cmd.arg("--jailer").arg(j);
    }
    if let Some(j) = &join {
        cmd.env("FIREFLEET_JOIN_TOKEN", j);
    }
    if !a.keep_vms {
        cmd.arg("--stop-vms-on-exit");
    }
    let mut child = cmd.spawn().context("starting the local agent")?;
    eprintln!(
        "firefleet up: server on https://{}, local agent {:?} {:?}\n  export FIREFLEET_SERVER=https://{} FIREFLEET_CA={} FIREFLEET_TOKEN=@{}",
        server.addr,
        a.node_name,
        labels,
        server.addr,
        data_dir.join("ca.pem").display(),
        data_dir.join("admin.token").display()
    );
    let status = tokio::select! {
        s = child.wait() => Some(s),
        _ = terminated() => None,
    };
    if status.is_none() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        // The agent stops its VMMs (each gets a graceful shutdown first) before it exits.
        let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        let _ = child.kill().await;
        if a.keep_vms {
            eprintln!(
                "firefleet up: stopped; the local VMMs keep running (their state is in {}): \
                 `firefleet up --data-dir {}` adopts them again, and without --keep-vms stops \
                 them when it is stopped",
                agent_dir.display(),
                data_dir.display()
            );
        } else {
            eprintln!("firefleet up: stopped, with the local VMMs");
        }
    }
    server.shutdown().await;
    match status {
        Some(Ok(s)) if !s.success() => anyhow::bail!("the local agent exited: {s}"),
        Some(Err(e)) => Err(e).context("waiting for the local agent"),
        _ => Ok(()),
    }
}
