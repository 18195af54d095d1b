//! The server under test: a real server (real TLS, real HTTP, a real SQLite file) in a temporary
//! directory, and a client that trusts its CA.

use std::{net::SocketAddr, time::Duration};

use firefleet_server::{Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A server in a temporary directory, its admin token and an HTTPS client trusting its CA.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub admin: String,
    pub http: reqwest::Client,
}

impl Fixture {
    /// A server with its defaults, but a 1 s hold for function invocations.
    pub async fn start() -> Fixture {
        Self::start_with(|_| {}).await
    }

    /// A server whose config `edit` changed first.
    pub async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> Fixture {
        Self::start_in_with(tempfile::tempdir().unwrap(), edit).await
    }

    /// A server on the data directory `dir` (a copy of another's, say).
    pub async fn start_in(dir: tempfile::TempDir) -> Fixture {
        Self::start_in_with(dir, |_| {}).await
    }

    /// A server on the data directory `dir` whose config `edit` changed first.
    pub async fn start_in_with(
        dir: tempfile::TempDir,
        edit: impl FnOnce(&mut ServerConfig),
    ) -> Fixture {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config = ServerConfig {
            functions: firefleet_server::FunctionsConfig {
                hold: Duration::from_secs(1),
                ..Default::default()
            },
            ..ServerConfig::new(dir.path(), listen)
        };
        edit(&mut config);
        let server = Server::start(config).await.unwrap();
        let admin = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let http = client(&server.ca_pem, None);
        Fixture {
            dir,
            server,
            admin,
            http,
        }
    }

    /// `https://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.server.addr)
    }

    /// The store revision `/healthz` reports.
    pub async fn revision(&self) -> u64 {
        let v: Value = self
            .http
            .get(self.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["revision"].as_u64().unwrap()
    }

    /// `POST path` with a JSON `body` (and `token`, if any): the status and the JSON answer.
    pub async fn post(&self, token: Option<&str>, path: &str, body: String) -> (StatusCode, Value) {
        let mut r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` as `token`: the status and the JSON answer.
    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A new token for `tenant`, made by the admin.
    pub async fn tenant_token(&self, tenant: &str) -> String {
        let (s, v) = self
            .post(
                Some(&self.admin),
                "/v1/tokens",
                json!({ "tenant": tenant }).to_string(),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }
}

/// An HTTPS client trusting `ca_pem`, with a client identity (certificate, key) if given.
pub fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let tls = firefleet_pki::client_tls_config(ca_pem, identity).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Copies a directory tree (a server's data directory, to start another server on the copy).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

impl Fixture {
    /// Enrols a node `name` and sends one heartbeat (so that it is not taken for lost after a
    /// restart); returns the node's mutual-TLS client.
    pub async fn heartbeating_node(&self, name: &str) -> reqwest::Client {
        let (_, jt) = self
            .post(Some(&self.admin), "/v1/join-tokens", "{}".to_owned())
            .await;
        let (csr, key) = firefleet_pki::make_agent_csr(name).unwrap();
        let enroll = json!({ "join_token": jt["token"], "node": name, "csr_pem": csr });
        let (s, cert) = self
            .post(None, "/v1/agent/enroll", enroll.to_string())
            .await;
        assert_eq!(s, StatusCode::OK, "{cert}");
        let agent = client(
            &self.server.ca_pem,
            Some((cert["cert_pem"].as_str().unwrap(), &key)),
        );
        let facts = json!({ "hostname": name, "capacity": { "vcpus": 4, "memory_mib": 4096 },
            "accel": "tcg", "accel_probe": "", "runtimes": ["qemu"], "vmm_version": "",
            "kernel": "", "agent_version": "" });
        let resp = agent
            .post(self.url("/v1/agent/heartbeat"))
            .json(&json!({ "facts": facts }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        agent
    }
}
