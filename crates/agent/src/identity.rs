//! The agent's identity: a key pair made on the node, and a certificate signed by the cluster
//! CA, obtained with a one-time join token and kept in the data directory (`node.key`,
//! `node.pem`, `ca.pem`, `node.name`).
//!
//! Certificates are short-lived: [`keep_renewed`] renews the certificate over mutual TLS once
//! two thirds of its lifetime have passed (a fresh key each time) and switches the client to
//! it. A renewal writes `node.key.next`, then `node.pem.next` (each complete before it
//! appears), then renames the key and the certificate into place; a start after a crash in
//! between finishes or drops it ([`finish_renewal`]), so the key and certificate on disk always
//! belong together. The server accepts the certificate a renewal replaced until the new one is
//! first used, so a renewal lost in a crash costs nothing but another renewal.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use firefleet_api::{EnrollRequest, RenewRequest};
use firefleet_client::{Client, Connection};
use firefleet_types::NodeId;
use tokio::sync::watch;

use crate::{AgentConfig, AgentError};

pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

fn read(path: &Path) -> Result<String, AgentError> {
    std::fs::read_to_string(path).map_err(|source| AgentError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

fn write_private(path: &Path, data: &str) -> Result<(), AgentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| AgentError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads the identity from `data_dir`, or enrolls with the join token and saves it.
pub async fn load_or_enroll(config: &AgentConfig) -> Result<Identity, AgentError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let (cert, key, ca) = (
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    );
    finish_renewal(dir)?;
    let expired = cert.exists() && cert_expired(&read(&cert)?);
    if expired && config.join_token.is_none() {
        return Err(AgentError::Identity(format!(
            "the certificate in {} has expired; start the agent with a join token made for this \
             node (`firefleet join-token create --node {}`)",
            cert.display(),
            config.node
        )));
    }
    if cert.exists() && key.exists() && ca.exists() && !expired {
        let name_file = dir.join("node.name");
        if let Ok(name) = std::fs::read_to_string(&name_file) {
            if name.trim() != config.node.as_str() {
                return Err(AgentError::Identity(format!(
                    "{} holds the identity of node {:?}, not {:?}",
                    dir.display(),
                    name.trim(),
                    config.node.as_str()
                )));
            }
        }
        return Ok(Identity {
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
            ca_pem: read(&ca)?,
        });
    }
    let join_token = config.join_token.clone().ok_or_else(|| {
        AgentError::Identity(format!(
            "not enrolled yet ({} has no certificate) and no --join-token given",
            dir.display()
        ))
    })?;
    let ca_pem = read(&config.ca_file)?;
    let (csr_pem, key_pem) = firefleet_pki::make_agent_csr(config.node.as_str())
        .map_err(|e| AgentError::Identity(format!("making a CSR: {e}")))?;
    let client = Client::with_failover(
        &Connection {
            servers: config.servers.clone(),
            ca_pem,
            token: None,
            identity: None,
        },
        config.failover,
    )
    .map_err(|source| AgentError::Api {
        what: "building the enrollment client".into(),
        source: Box::new(source),
    })?;
    let resp = client
        .enroll(&EnrollRequest {
            join_token,
            node: config.node.clone(),
            labels: config.labels.clone(),
            csr_pem,
        })
        .await
        .map_err(|source| AgentError::Api {
            what: "enrolling".into(),
            source: Box::new(source),
        })?;
    write_private(&key, &key_pem)?;
    write_private(&ca, &resp.ca_pem)?;
    write_private(&dir.join("node.name"), config.node.as_str())?;
    // The certificate last: its presence marks enrollment complete.
    write_private(&cert, &resp.cert_pem)?;
    tracing::info!(node = %config.node, "enrolled");
    Ok(Identity {
        cert_pem: resp.cert_pem,
        key_pem,
        ca_pem: resp.ca_pem,
    })
}

/// Whether the certificate in `cert_pem` has expired (an unreadable one counts as expired).
fn cert_expired(cert_pem: &str) -> bool {
    firefleet_pki::node_cert_info_pem(cert_pem).map_or(true, |i| i.not_after <= SystemTime::now())
}

fn next_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("node.key.next"), dir.join("node.pem.next"))
}

fn rename(from: &Path, to: &Path) -> Result<(), AgentError> {
    std::fs::rename(from, to).map_err(|source| AgentError::Io {
        what: format!("renaming {} to {}", from.display(), to.display()),
        source,
    })
}

/// Finishes a renewal a crash interrupted, or drops it: both `.next` files there, or only the
/// certificate (its key already renamed): rename them into place; only the key: the
/// certificate never arrived, drop the key.
pub fn finish_renewal(dir: &Path) -> Result<(), AgentError> {
    let (key_next, cert_next) = next_paths(dir);
    match (key_next.exists(), cert_next.exists()) {
        (true, true) => {
            rename(&key_next, &dir.join("node.key"))?;
            rename(&cert_next, &dir.join("node.pem"))?;
            tracing::info!("finished a certificate renewal interrupted by a restart");
        }
        (false, true) => rename(&cert_next, &dir.join("node.pem"))?,
        (true, false) => {
            let _ = std::fs::remove_file(&key_next);
        }
        (false, false) => {}
    }
    Ok(())
}

/// When the certificate in `cert_pem` should be renewed: two thirds into its validity.
fn renew_at(cert_pem: &str) -> Result<SystemTime, AgentError> {
    let info = firefleet_pki::node_cert_info_pem(cert_pem)
        .map_err(|e| AgentError::Identity(format!("reading the node certificate: {e}")))?;
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    Ok(info.not_before + life * 2 / 3)
}

/// Renews the node certificate (first held in `cert_pem`) whenever two thirds of its lifetime
/// have passed, until `shutdown`: new key and CSR, `POST /v1/agent/renew` with the current
/// certificate, both written to `dir`, and `client` switched to them. A failed renewal is
/// tried again after a while (at most a minute) until the certificate expires.
pub async fn keep_renewed(
    client: Client,
    dir: PathBuf,
    node: NodeId,
    mut cert_pem: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_secs(5);
    loop {
        let wait = match renew_at(&cert_pem) {
            Ok(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %firefleet_types::error_chain(&e), "cannot renew the node certificate");
                return;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        match renew_once(&client, &dir, &node).await {
            Ok(renewed) => {
                tracing::info!(node = %node, "node certificate renewed");
                cert_pem = renewed;
                retry = Duration::from_secs(5);
            }
            Err(e) => {
                tracing::warn!(error = %firefleet_types::error_chain(&e), retry_secs = retry.as_secs(), "renewing the node certificate failed");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// One renewal; returns the new certificate.
async fn renew_once(client: &Client, dir: &Path, node: &NodeId) -> Result<String, AgentError> {
    let (csr_pem, key_pem) = firefleet_pki::make_agent_csr(node.as_str())
        .map_err(|e| AgentError::Identity(format!("making a CSR: {e}")))?;
    let resp = client
        .renew(&RenewRequest { csr_pem })
        .await
        .map_err(|source| AgentError::Api {
            what: "renewing the node certificate".into(),
            source: Box::new(source),
        })?;
    let (key_next, cert_next) = next_paths(dir);
    write_private(&key_next, &key_pem)?;
    write_private(&cert_next, &resp.cert_pem)?;
    finish_renewal(dir)?;
    client
        .set_identity(&resp.cert_pem, &key_pem)
        .map_err(|source| AgentError::Api {
            what: "using the renewed certificate".into(),
            source: Box::new(source),
        })?;
    Ok(resp.cert_pem)
}
