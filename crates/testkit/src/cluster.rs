//! Real `firefleet` processes on loopback, torn down (with every QEMU they started) when the
//! harness is dropped, even when a test fails. Each agent gets its own VM bridge and subnet
//! (`ffe*`, `10.215.x.0/24`), removed with its TAPs and nft tables on drop.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::net::remove_network;
use crate::procs::vmm_pids_under;
use crate::{image_dir, profile_dir, wait_until};

/// The `firefleet` binary: `$FIREFLEET_BIN`, else the one cargo built next to the running test
/// (the CLI crate's integration tests make cargo build it first).
pub fn firefleet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREFLEET_BIN") {
        return PathBuf::from(p);
    }
    let bin = profile_dir().join("firefleet");
    assert!(
        bin.exists(),
        "{} does not exist: build it (cargo build -p firefleet-cli) or set FIREFLEET_BIN",
        bin.display()
    );
    bin
}

/// Runs the CLI (without waiting on the test's thread) against `servers` (`https://a,https://b`)
/// as the admin of a server whose data directory is `data_dir` (its `admin.token` and
/// `ca.pem`), for tests that start servers in process.
pub async fn cli_for(data_dir: &Path, servers: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(firefleet_bin())
        .args(args)
        .env("FIREFLEET_SERVER", servers)
        .arg("--token")
        .arg(format!("@{}", data_dir.join("admin.token").display()))
        .arg("--ca")
        .arg(data_dir.join("ca.pem"))
        .output()
        .await
        .unwrap()
}

/// A server and its agents, as processes.
pub struct Cluster {
    /// The cluster's temporary directory (server and agent data, logs).
    pub dir: tempfile::TempDir,
    /// The server process.
    pub server: Option<Child>,
    /// Agent processes by name.
    pub agents: Vec<(String, Child)>,
    /// The server's address.
    pub addr: String,
    /// Each agent's network, by agent name (kept across agent restarts).
    pub nets: Vec<(String, AgentNet)>,
    /// Extra arguments for every agent started from now on.
    pub agent_args: Vec<String>,
    /// Extra arguments for the server (kept for restarts).
    pub server_args: Vec<String>,
    /// Every replica's URL (`https://a,https://b`) when the control plane is replicated and
    /// started by the test itself (then `server` is `None` and `dir/server` is replica 0's data
    /// directory): what agents and the CLI are given instead of [`Cluster::server_url`].
    pub servers: Option<String>,
}

/// An agent's VM bridge and subnet.
#[derive(Debug, Clone)]
pub struct AgentNet {
    /// The bridge.
    pub bridge: String,
    /// `10.215.x.0/24`.
    pub subnet: String,
    /// `10.215.x.1`, the bridge's address.
    pub gateway: String,
}

impl Cluster {
    /// Starts a server on an ephemeral port.
    pub fn start() -> Cluster {
        Self::start_with(&[])
    }

    /// Starts a server on an ephemeral port with extra arguments.
    pub fn start_with(server_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ff-e2e-")
            .tempdir()
            .unwrap();
        let mut c = Cluster {
            dir,
            server: None,
            agents: vec![],
            addr: String::new(),
            nets: vec![],
            agent_args: vec![],
            server_args: server_args.iter().map(|s| s.to_string()).collect(),
            servers: None,
        };
        c.start_server();
        c
    }

    /// A cluster whose control plane the test runs itself (replicas), reached at `servers`
    /// (`https://a,https://b`); replica 0 must keep its data in `dir/server` (CA, admin
    /// token). Agents and the CLI started from it get every URL.
    pub fn for_replicas(dir: tempfile::TempDir, servers: String) -> Cluster {
        Cluster {
            dir,
            server: None,
            agents: vec![],
            addr: String::new(),
            nets: vec![],
            agent_args: vec![],
            server_args: vec![],
            servers: Some(servers),
        }
    }

    /// What agents and the CLI are pointed at: every replica, or the one server.
    pub fn urls(&self) -> String {
        self.servers.clone().unwrap_or_else(|| self.server_url())
    }

    /// A path in the cluster's temporary directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Starts (or restarts, on the same address) the server.
    pub fn start_server(&mut self) {
        let addr_file = self.path("server.addr");
        let _ = std::fs::remove_file(&addr_file);
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.addr.clone()
        };
        let child = Command::new(firefleet_bin())
            .args(["server", "--listen", &listen, "--data-dir"])
            .arg(self.path("server"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(&self.server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.path("server.log")))
            .spawn()
            .unwrap();
        self.server = Some(child);
        wait_until(Duration::from_secs(30), "server address file", || {
            addr_file.exists()
        });
        self.addr = std::fs::read_to_string(&addr_file).unwrap();
    }

    /// Kills the server with SIGKILL.
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    /// `https://<addr>`.
    pub fn server_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The cluster CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.path("server/ca.pem")
    }

    /// The admin token the server wrote.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.path("server/admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `GET /metrics` with the admin token (curl, trusting the cluster CA).
    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(self.ca())
            .args([
                "-H",
                &format!("Authorization: Bearer {}", self.admin_token()),
            ])
            .arg(format!("{}/metrics", self.server_url()))
            .output()
            .unwrap();
        assert!(out.status.success(), "/metrics: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command with the admin token (or `token`) and returns its output.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(firefleet_bin())
            .args(args)
            .env("FIREFLEET_SERVER", self.urls())
            .env("FIREFLEET_CA", self.ca())
            .env("FIREFLEET_TOKEN", token)
            .env("FIREFLEET_IMAGE_DIR", image_dir())
            .env("FIREFLEET_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a CLI command as the admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.admin_token(), args)
    }

    /// Runs a CLI command that must succeed and returns its stdout parsed as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "firefleet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "firefleet {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The network of agent `name`: chosen on its first start, the same on later ones.
    pub fn agent_net(&mut self, name: &str) -> AgentNet {
        if let Some((_, n)) = self.nets.iter().find(|(n, _)| n == name) {
            return n.clone();
        }
        // Numbered across the whole test process: tests run in parallel threads, and two clusters
        // must never share a bridge (one's teardown would remove the other's).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let bridge = format!("ffe{}x{k}", pid % 100_000);
        let used = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "-4", "addr", "show"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .into_owned();
        let taken: Vec<String> = self.nets.iter().map(|(_, n)| n.subnet.clone()).collect();
        let third = (0..250u32)
            .map(|i| (pid * 7 + k * 13 + i) % 250)
            .find(|x| {
                !used.contains(&format!("10.215.{x}."))
                    && !taken.contains(&format!("10.215.{x}.0/24"))
            })
            .expect("a free 10.215.x.0/24");
        let net = AgentNet {
            bridge,
            subnet: format!("10.215.{third}.0/24"),
            gateway: format!("10.215.{third}.1"),
        };
        self.nets.push((name.to_owned(), net.clone()));
        net
    }

    /// Starts an agent with a fresh join token (first start) or its existing identity.
    pub fn start_agent(&mut self, name: &str, labels: &[&str], vcpus: u32) {
        let net = self.agent_net(name);
        let data = self.path(&format!("agent-{name}"));
        let mut cmd = Command::new(firefleet_bin());
        cmd.args([
            "agent",
            "--server",
            &self.urls(),
            "--name",
            name,
            "--data-dir",
        ])
        .arg(&data)
        .arg("--ca")
        .arg(self.ca())
        .arg("--image-dir")
        .arg(image_dir())
        .args([
            "--capacity-vcpus",
            &vcpus.to_string(),
            "--capacity-memory-mib",
            "2048",
            "--bridge",
            &net.bridge,
            "--subnet",
            &net.subnet,
        ]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        cmd.args(&self.agent_args);
        if !data.join("node.pem").exists() {
            let t = self.json(&["join-token", "create"]);
            cmd.env("FIREFLEET_JOIN_TOKEN", t["token"].as_str().unwrap());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.path(&format!("agent-{name}.log"))))
            .spawn()
            .unwrap();
        self.agents.push((name.to_owned(), child));
    }

    /// Kills an agent's process (SIGKILL); its VMs keep running.
    pub fn kill_agent(&mut self, name: &str) {
        if let Some(i) = self.agents.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.agents.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops an agent as `firefleet up` and service managers do (SIGTERM), and waits for it.
    pub fn term_agent(&mut self, name: &str) -> std::process::ExitStatus {
        let i = self
            .agents
            .iter()
            .position(|(n, _)| n == name)
            .expect("a running agent");
        let (_, mut c) = self.agents.remove(i);
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().unwrap()
    }

    /// Waits until `n` nodes are ready.
    pub fn wait_nodes_ready(&self, n: usize) {
        wait_until(Duration::from_secs(90), "nodes ready", || {
            let nodes = self.json(&["node", "ls"]);
            nodes
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["status"]["readiness"] == "ready")
                .count()
                >= n
        });
    }

    /// `vm get name` as JSON.
    pub fn vm(&self, name: &str) -> serde_json::Value {
        self.json(&["vm", "get", name])
    }

    /// Waits until VM `name` is in `phase`; its record.
    pub fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let start = Instant::now();
        while start.elapsed() < timeout {
            last = self.vm(name);
            if last["status"]["phase"] == phase {
                return last;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "vm {name} did not reach {phase} in {timeout:?}; last: {last}\n{}",
            self.logs()
        );
    }

    /// Waits for `f`, failing with every log of the cluster.
    pub fn wait(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.logs()
        );
    }

    /// Every log of the cluster, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let mut text = String::new();
                    let _ = std::fs::File::open(&p).and_then(|mut f| f.read_to_string(&mut text));
                    let tail: String = text
                        .chars()
                        .rev()
                        .take(3000)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect();
                    s.push_str(&format!("---- {} ----\n{tail}\n", p.display()));
                }
            }
        }
        s
    }

    /// Runs a CLI command that must succeed (failing with every log otherwise); its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "firefleet {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A VM's console as the server has it.
    pub fn console(&self, vm: &str) -> String {
        self.json(&["vm", "logs", vm])["console"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// PIDs of the VMM processes (QEMU, Firecracker) started for this cluster.
    pub fn vmm_pids(&self) -> Vec<u32> {
        vmm_pids_under(self.dir.path())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_server();
        for pid in self.vmm_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for (name, net) in &self.nets {
            let ipam = self.path(&format!("agent-{name}/net/ipam.json"));
            remove_network(&net.bridge, &ipam);
        }
    }
}

fn log_file(p: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(p).unwrap())
}
