//! The agent's identity: a key pair made on the node, and a certificate signed by the cluster
//! CA, obtained once with a one-time join token and kept in the data directory.

use std::path::Path;

use firefleet_api::EnrollRequest;
use firefleet_client::{Client, Connection};

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
    if cert.exists() && key.exists() && ca.exists() {
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
    let client = Client::new(&Connection {
        server: config.server.clone(),
        ca_pem,
        token: None,
        identity: None,
    })
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
