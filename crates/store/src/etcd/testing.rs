//! Real etcd members for tests (feature `test-util`): [`EtcdCluster`] starts one or three
//! members on free 127.0.0.1 ports, each in its own data directory under one temporary
//! directory, waits until they serve, and kills them (SIGKILL) when dropped, even on panic.
//! Members can be killed and restarted (same data directory and ports) to test failover.
//! With [`TlsFiles`], members require client certificates.
//!
//! The binary is `$ETCD_BIN`, else `etcd` on the `PATH` (`scripts/setup.sh` installs Debian's
//! `etcd-server`). Each member logs to `<dir>/<name>.log`; a member that does not come up in
//! time fails the test with its log's tail. These are test helpers: they panic on failure.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::time::Instant;

use super::{EtcdConfig, EtcdTls};

/// Operations per transaction the members accept (etcd's default is 128; the conformance
/// suite writes 700 keys in one transaction). Production members need the same flag.
pub const MAX_TXN_OPS: &str = "4096";

/// How long a member may take to serve after it was started.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A CA, a server certificate for `127.0.0.1`/`localhost` and a client certificate, as PEM
/// files in a directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what}: {err}"),
    }
}

impl TlsFiles {
    /// Generates a fresh CA and certificates into `dir` (which must exist).
    pub fn generate(dir: &Path) -> TlsFiles {
        let ca_key = must(KeyPair::generate(), "generate the CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "firefleet test etcd CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = must(params.self_signed(&ca_key), "self-sign the CA");

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
            let key = must(KeyPair::generate(), "generate a key");
            let mut params = must(CertificateParams::new(names), "certificate names");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = must(params.signed_by(&key, &ca, &ca_key), "sign a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "etcd",
        );
        let (client_pem, client_key_pem) =
            leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "firefleet");
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        for (path, pem) in [
            (&files.ca, ca.pem()),
            (&files.server_cert, server_pem),
            (&files.server_key, server_key_pem),
            (&files.client_cert, client_pem),
            (&files.client_key, client_key_pem),
        ] {
            must(
                std::fs::write(path, pem),
                &format!("write {}", path.display()),
            );
        }
        files
    }

    /// What a client presents: the CA and the client certificate and key.
    pub fn client(&self) -> EtcdTls {
        EtcdTls {
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Mutex<Option<Child>>,
}

/// One or more etcd members on this host, killed when dropped.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    token: String,
    // Dropped last: the members are killed first.
    dir: TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// `$ETCD_BIN`, else `etcd` on the PATH; panics, saying how to install it, when missing.
fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "ETCD_BIN={} is not a file (scripts/setup.sh installs etcd: Debian package etcd-server)",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd not found on the PATH (set ETCD_BIN, or run scripts/setup.sh, which \
                 installs it: Debian package etcd-server)"
            )
        })
}

/// `count` distinct free ports on 127.0.0.1 (free when returned; etcd binds them next).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| must(TcpListener::bind("127.0.0.1:0"), "bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| must(l.local_addr(), "local address").port())
        .collect()
}

/// The last lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl EtcdCluster {
    /// Starts `members` plain-text members (1 or 3) and waits until every one serves a
    /// linearizable read.
    pub async fn start(members: usize) -> EtcdCluster {
        Self::start_with(members, None).await
    }

    /// Like [`EtcdCluster::start`], with client TLS: members present `tls.server_cert` and
    /// accept only clients whose certificate `tls.ca` signed (`--client-cert-auth`).
    pub async fn start_tls(members: usize, tls: &TlsFiles) -> EtcdCluster {
        Self::start_with(members, Some(tls.clone())).await
    }

    async fn start_with(count: usize, tls: Option<TlsFiles>) -> EtcdCluster {
        assert!(count >= 1, "an etcd cluster needs a member");
        let binary = etcd_binary();
        let dir = must(tempfile::tempdir(), "make a temporary directory");
        let ports = free_ports(2 * count);
        let members = (0..count)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: Mutex::new(None),
            })
            .collect();
        let token = format!(
            "firefleet-test-{}",
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let cluster = EtcdCluster {
            binary,
            members,
            tls,
            token,
            dir,
        };
        for i in 0..count {
            cluster.spawn(i);
        }
        for i in 0..count {
            cluster.wait_serving(i, false).await;
        }
        cluster
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn member(&self, i: usize) -> &Member {
        assert!(i < self.members.len(), "no member {i}");
        &self.members[i]
    }

    /// The directory that holds the members' data directories and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Member `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.member(i).name))
    }

    /// Client endpoints of every member: `127.0.0.1:port`, or `https://127.0.0.1:port` with
    /// TLS.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        let port = self.member(i).client_port;
        match self.tls {
            Some(_) => format!("https://127.0.0.1:{port}"),
            None => format!("127.0.0.1:{port}"),
        }
    }

    /// A store configuration for every member under `prefix` (with the client TLS files when
    /// the cluster uses TLS), with a 2 s request timeout.
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        let mut config = EtcdConfig::new(self.endpoints(), prefix);
        config.tls = self.tls.as_ref().map(TlsFiles::client);
        config.request_timeout = Duration::from_secs(2);
        config
    }

    fn spawn(&self, i: usize) {
        let member = self.member(i);
        let scheme = self.scheme();
        let client_url = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer_url = |m: &Member| format!("http://127.0.0.1:{}", m.peer_port);
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, peer_url(m)))
            .collect::<Vec<_>>()
            .join(",");
        let log_path = self.log_path(i);
        let log = must(
            File::options().create(true).append(true).open(&log_path),
            &format!("open {}", log_path.display()),
        );
        let log_err = must(log.try_clone(), "clone the log file");
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url(member)])
            .args(["--initial-advertise-peer-urls", &peer_url(member)])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--max-txn-ops", MAX_TXN_OPS])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = must(command.spawn(), &format!("start {}", self.binary.display()));
        *member.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    }

    /// Waits until member `i` answers a read: linearizable (needs a leader) or, with
    /// `serializable`, local. Panics with the member's log when it exits or times out.
    async fn wait_serving(&self, i: usize, serializable: bool) {
        let mut options = ConnectOptions::new().with_timeout(Duration::from_secs(1));
        if let Some(tls) = &self.tls {
            let read = |path: &Path| must(std::fs::read(path), &format!("read {}", path.display()));
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.ca)))
                    .identity(Identity::from_pem(
                        read(&tls.client_cert),
                        read(&tls.client_key),
                    )),
            );
        }
        let deadline = Instant::now() + START_DEADLINE;
        let mut last_error = String::from("not tried");
        loop {
            if let Some(status) = self.exited(i) {
                panic!(
                    "etcd member {i} exited ({status}) before serving; its log {}:\n{}",
                    self.log_path(i).display(),
                    tail(&self.log_path(i), 40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd member {i} did not serve within {START_DEADLINE:?} ({last_error}); its log {}:\n{}",
                    self.log_path(i).display(),
                    tail(&self.log_path(i), 40)
                );
            }
            let attempt = async {
                let mut client = Client::connect([self.endpoint(i)], Some(options.clone())).await?;
                let mut get = GetOptions::new().with_count_only();
                if serializable {
                    get = get.with_serializable();
                }
                client.get("/health-probe", Some(get)).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return,
                Ok(Err(err)) => last_error = err.to_string(),
                Err(_) => last_error = "no answer within 2s".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Member `i`'s exit status, if it has exited.
    fn exited(&self, i: usize) -> Option<std::process::ExitStatus> {
        let mut child = self
            .member(i)
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether member `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        let running = self
            .member(i)
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        running && self.exited(i).is_none()
    }

    /// Kills member `i` with SIGKILL and reaps it (no-op if it is not running).
    pub fn kill(&self, i: usize) {
        let child = self
            .member(i)
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again (killing it first if it runs), on the same data directory and
    /// ports, and waits until it answers a local (serializable) read: it may still have no
    /// leader, when the others are down.
    pub async fn restart(&self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_serving(i, true).await;
    }

    /// Kills every member.
    pub fn stop_all(&self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
