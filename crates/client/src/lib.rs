//! Typed HTTPS client for the FireFleet API, used by the CLI and the agent. It trusts only the
//! cluster CA, authenticates with a bearer token (people, scripts) or a client certificate
//! (agents), and turns error bodies into [`ClientError::Api`] carrying the server's message.

mod policy;

use std::time::Duration;

use firefleet_api::*;
use firefleet_types::{Migration, NodeInfo, Snapshot, Vm};

/// Longest a snapshot transfer may take.
const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// The server's message.
        message: String,
        /// The field at fault.
        field: Option<String>,
        /// Why admission refused the object (code `policy_denied`): one message per violated
        /// rule, prefixed with its policy; empty otherwise.
        reasons: Vec<String>,
    },
    /// The TLS configuration could not be built.
    #[error("TLS setup failed")]
    Tls(#[source] firefleet_pki::PkiError),
    /// The request did not complete.
    #[error("request to {url} failed")]
    Transport {
        /// Where.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server's answer was not what the API says.
    #[error("unexpected response from {url}: {detail}")]
    Decode {
        /// Where.
        url: String,
        /// What.
        detail: String,
    },
    /// The server address is not usable.
    #[error("invalid server address {0:?} (expected https://host:port)")]
    BadServer(String),
}

impl ClientError {
    /// The HTTP status, for an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `https://host:port`.
    pub server: String,
    /// PEM of the cluster CA (the only root trusted).
    pub ca_pem: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Client certificate and key (agents).
    pub identity: Option<(String, String)>,
}

/// A reqwest client trusting only the cluster CA, presenting `identity` if given.
fn http_client(
    base: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<reqwest::Client, ClientError> {
    let tls = firefleet_pki::client_tls_config(ca_pem, identity).map_err(ClientError::Tls)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|source| ClientError::Transport {
            url: base.to_owned(),
            source,
        })
}

/// A FireFleet API client. Clones share one connection pool and identity: a new client
/// certificate ([`Client::set_identity`]) is used by every clone's next request.
#[derive(Debug, Clone)]
pub struct Client {
    http: std::sync::Arc<std::sync::RwLock<reqwest::Client>>,
    base: String,
    token: Option<String>,
    ca_pem: String,
}

impl Client {
    /// Builds a client.
    pub fn new(conn: &Connection) -> Result<Client, ClientError> {
        let base = conn.server.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(ClientError::BadServer(conn.server.clone()));
        }
        let identity = conn
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_str(), k.as_str()));
        let http = http_client(&base, &conn.ca_pem, identity)?;
        Ok(Client {
            http: std::sync::Arc::new(std::sync::RwLock::new(http)),
            base,
            token: conn.token.clone(),
            ca_pem: conn.ca_pem.clone(),
        })
    }

    /// Presents this client certificate from the next request on (every clone of this client):
    /// new connections, while requests under way finish on theirs.
    pub fn set_identity(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClientError> {
        let http = http_client(&self.base, &self.ca_pem, Some((cert_pem, key_pem)))?;
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
        Ok(())
    }

    /// The HTTP client in use now.
    fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, ClientError> {
        let (url, req) = self.request(method, path, body);
        self.finish(url, req).await
    }

    /// A request to `path` with the token and the JSON body; returns its URL too.
    fn request<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut req = self.http().request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        (url, req)
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        self.finish_with_headers(url, req).await.map(|(t, _)| t)
    }

    /// Like `finish`, also returning the response's headers.
    async fn finish_with_headers<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<(Option<T>, reqwest::header::HeaderMap), ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok((None, headers));
        }
        serde_json::from_slice(&bytes)
            .map(|t| (Some(t), headers))
            .map_err(|e| ClientError::Decode {
                url,
                detail: e.to_string(),
            })
    }

    async fn must<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.call(method, path, body)
            .await?
            .ok_or_else(|| ClientError::Decode {
                url: format!("{}{path}", self.base),
                detail: "empty body".to_owned(),
            })
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.must::<(), _>(Method::GET, "/healthz", None).await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base);
        let resp = self
            .http()
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        resp.text()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }

    /// Creates a VM.
    pub async fn vm_create(&self, req: &CreateVmRequest) -> Result<Vm, ClientError> {
        self.must(Method::POST, "/v1/vms", Some(req)).await
    }

    /// Lists VMs: every page, following `next`.
    pub async fn vm_list(&self) -> Result<Vec<Vm>, ClientError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.vm_list_page(None, after.as_deref()).await?;
            items.extend(page.items);
            match page.next {
                // A cursor that does not move would loop forever: stop there.
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return Ok(items),
            }
        }
    }

    /// One page of VMs: up to `limit` (server default without) after the cursor `after`.
    pub async fn vm_list_page(
        &self,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<VmList, ClientError> {
        self.must::<(), VmList>(Method::GET, &page_path("/v1/vms", limit, after), None)
            .await
    }

    /// Gets a VM by id or name.
    pub async fn vm_get(&self, vm: &str) -> Result<Vm, ClientError> {
        self.must::<(), _>(Method::GET, &format!("/v1/vms/{}", enc(vm)), None)
            .await
    }

    /// Stops a VM.
    pub async fn vm_stop(&self, vm: &str) -> Result<Vm, ClientError> {
        self.must::<(), _>(Method::POST, &format!("/v1/vms/{}/stop", enc(vm)), None)
            .await
    }

    /// Deletes a VM; returns it while deletion is under way, None when it is gone.
    pub async fn vm_delete(&self, vm: &str) -> Result<Option<Vm>, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/vms/{}", enc(vm)), None)
            .await
    }

    /// Reads a VM's console from `offset`.
    pub async fn vm_logs(&self, vm: &str, offset: u64) -> Result<ConsoleChunk, ClientError> {
        self.must::<(), _>(
            Method::GET,
            &format!("/v1/vms/{}/logs?offset={offset}", enc(vm)),
            None,
        )
        .await
    }

    /// Lists nodes.
    pub async fn node_list(&self) -> Result<Vec<NodeInfo>, ClientError> {
        Ok(self
            .must::<(), NodeList>(Method::GET, "/v1/nodes", None)
            .await?
            .items)
    }

    /// Cordons (`true`) or uncordons a node.
    pub async fn node_cordon(&self, node: &str, cordon: bool) -> Result<NodeInfo, ClientError> {
        let verb = if cordon { "cordon" } else { "uncordon" };
        self.must::<(), NodeInfo>(Method::POST, &format!("/v1/nodes/{node}/{verb}"), None)
            .await
    }

    /// Removes a node (its certificates are revoked); returns the removed record.
    pub async fn node_remove(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.must::<(), _>(Method::DELETE, &format!("/v1/nodes/{}", enc(node)), None)
            .await
    }

    /// Drains a node: cordons it and starts a migration per running VM on it.
    pub async fn node_drain(&self, node: &str) -> Result<DrainResponse, ClientError> {
        self.must::<(), _>(
            Method::POST,
            &format!("/v1/nodes/{}/drain", enc(node)),
            None,
        )
        .await
    }

    /// The migration planner's proposal (`apply`: and start it).
    pub async fn plan(&self, q: &PlanQuery, apply: bool) -> Result<PlanResponse, ClientError> {
        let mut query = vec![format!("rebalance={}", q.rebalance)];
        if let Some(i) = q.imbalance {
            query.push(format!("imbalance={i}"));
        }
        if let Some(b) = q.battery_below {
            query.push(format!("battery_below={b}"));
        }
        let (method, path) = if apply {
            (Method::POST, "/v1/plan/apply")
        } else {
            (Method::GET, "/v1/plan")
        };
        self.must::<(), _>(method, &format!("{path}?{}", query.join("&")), None)
            .await
    }

    /// Creates a token.
    pub async fn token_create(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<TokenResponse, ClientError> {
        self.must(Method::POST, "/v1/tokens", Some(req)).await
    }

    /// Lists tokens (one tenant's with `tenant`).
    pub async fn token_list(&self, tenant: Option<&str>) -> Result<TokenList, ClientError> {
        let path = match tenant {
            Some(t) => format!("/v1/tokens?tenant={}", enc(t)),
            None => "/v1/tokens".to_owned(),
        };
        self.must::<(), _>(Method::GET, &path, None).await
    }

    /// Revokes a token by id.
    pub async fn token_revoke(&self, id: &str) -> Result<TokenInfo, ClientError> {
        self.must::<(), _>(Method::DELETE, &format!("/v1/tokens/{}", enc(id)), None)
            .await
    }

    /// Creates a join token.
    pub async fn join_token_create(
        &self,
        req: &CreateJoinTokenRequest,
    ) -> Result<JoinTokenResponse, ClientError> {
        self.must(Method::POST, "/v1/join-tokens", Some(req)).await
    }

    /// Agent: enrolls.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.must(Method::POST, "/v1/agent/enroll", Some(req)).await
    }

    /// Agent: renews its certificate (mutual TLS with the current one).
    pub async fn renew(&self, req: &RenewRequest) -> Result<RenewResponse, ClientError> {
        self.must(Method::POST, "/v1/agent/renew", Some(req)).await
    }

    /// Agent: heartbeat.
    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(Method::POST, "/v1/agent/heartbeat", Some(req))
            .await
            .map(|_| ())
    }

    /// Agent: the VMs placed on this node, waiting for a change past `after`.
    pub async fn intents(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<IntentsResponse, ClientError> {
        let path = match after {
            Some(a) => format!("/v1/agent/intents?after={a}&wait_ms={}", wait.as_millis()),
            None => "/v1/agent/intents".to_owned(),
        };
        self.must::<(), _>(Method::GET, &path, None).await
    }

    /// Agent: reports a VM's status.
    pub async fn report_status(
        &self,
        vm: &str,
        report: &VmStatusReport,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("/v1/agent/vms/{}/status", enc(vm)),
            Some(report),
        )
        .await
        .map(|_| ())
    }

    /// Pauses a VM.
    pub async fn vm_pause(&self, vm: &str) -> Result<Vm, ClientError> {
        self.must::<(), _>(Method::POST, &format!("/v1/vms/{}/pause", enc(vm)), None)
            .await
    }

    /// Resumes a VM.
    pub async fn vm_resume(&self, vm: &str) -> Result<Vm, ClientError> {
        self.must::<(), _>(Method::POST, &format!("/v1/vms/{}/resume", enc(vm)), None)
            .await
    }

    /// Requests a snapshot.
    pub async fn snapshot_create(&self, vm: &str, name: &str) -> Result<Snapshot, ClientError> {
        let req = CreateSnapshotRequest {
            name: name.to_owned(),
        };
        self.must(
            Method::POST,
            &format!("/v1/vms/{}/snapshots", enc(vm)),
            Some(&req),
        )
        .await
    }

    /// Lists a VM's snapshots.
    pub async fn snapshot_list(&self, vm: &str) -> Result<Vec<Snapshot>, ClientError> {
        Ok(self
            .must::<(), SnapshotList>(Method::GET, &format!("/v1/vms/{}/snapshots", enc(vm)), None)
            .await?
            .items)
    }

    /// Restores a VM from a snapshot.
    pub async fn vm_restore(&self, vm: &str, snapshot: &str) -> Result<Vm, ClientError> {
        let req = RestoreVmRequest {
            snapshot: snapshot.to_owned(),
        };
        self.must(
            Method::POST,
            &format!("/v1/vms/{}/restore", enc(vm)),
            Some(&req),
        )
        .await
    }

    /// Runs a command in a VM's guest.
    pub async fn vm_exec(&self, vm: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let url = format!("{}/v1/vms/{}/exec", self.base, enc(vm));
        // The call lasts as long as the command: give it the command's timeout and some slack.
        let wait =
            Duration::from_millis(req.timeout_ms.unwrap_or(30_000)) + Duration::from_secs(30);
        let mut r = self.http().post(&url).timeout(wait).json(req);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let out: Option<ExecResult> = self.finish(url.clone(), r).await?;
        out.ok_or(ClientError::Decode {
            url,
            detail: "empty body".to_owned(),
        })
    }

    /// A VM's latest statistics.
    pub async fn vm_stats(&self, vm: &str) -> Result<VmStats, ClientError> {
        self.must::<(), _>(Method::GET, &format!("/v1/vms/{}/stats", enc(vm)), None)
            .await
    }

    /// Agent: reports a snapshot's outcome.
    pub async fn report_snapshot(
        &self,
        vm: &str,
        name: &str,
        report: &SnapshotReport,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/agent/vms/{}/snapshots/{}", enc(vm), enc(name));
        self.call::<_, serde_json::Value>(Method::PUT, &path, Some(report))
            .await
            .map(|_| ())
    }

    /// Agent: reports an exec's result.
    pub async fn report_exec(
        &self,
        vm: &str,
        id: &str,
        result: &ExecResult,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/agent/vms/{}/execs/{}", enc(vm), enc(id));
        self.call::<_, serde_json::Value>(Method::PUT, &path, Some(result))
            .await
            .map(|_| ())
    }

    /// Agent: reports a VM's statistics.
    pub async fn report_stats(&self, vm: &str, stats: &VmStats) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("/v1/agent/vms/{}/stats", enc(vm)),
            Some(stats),
        )
        .await
        .map(|_| ())
    }

    /// Sends a batch of telemetry samples (agents).
    pub async fn post_telemetry(
        &self,
        batch: &firefleet_api::TelemetryBatch,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(Method::POST, "/v1/agent/telemetry", Some(batch))
            .await
            .map(|_| ())
    }

    /// Threats the guard found (the caller's tenant's; an admin's: all).
    pub async fn threats(&self) -> Result<Vec<firefleet_api::Threat>, ClientError> {
        self.must::<(), _>(Method::GET, "/v1/threats", None).await
    }

    /// One threat.
    pub async fn threat(&self, id: &str) -> Result<firefleet_api::Threat, ClientError> {
        self.must::<(), _>(Method::GET, &format!("/v1/threats/{}", enc(id)), None)
            .await
    }

    /// Acknowledges a threat.
    pub async fn ack_threat(
        &self,
        id: &str,
        req: &firefleet_api::AckThreatRequest,
    ) -> Result<firefleet_api::Threat, ClientError> {
        self.must(
            Method::POST,
            &format!("/v1/threats/{}/ack", enc(id)),
            Some(req),
        )
        .await
    }

    /// Images the guard quarantined (admin).
    pub async fn quarantined_images(
        &self,
    ) -> Result<Vec<firefleet_api::QuarantinedImage>, ClientError> {
        self.must::<(), _>(Method::GET, "/v1/quarantine/images", None)
            .await
    }

    /// Lifts an image's quarantine (admin).
    pub async fn release_image(&self, image: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/quarantine/images/{}", enc(image)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Asks for a VM to be migrated to node `to` (admin).
    pub async fn vm_migrate(
        &self,
        vm: &str,
        to: &str,
        by_snapshot: bool,
    ) -> Result<Migration, ClientError> {
        self.must(
            Method::POST,
            &format!("/v1/vms/{}/migrate", enc(vm)),
            Some(&MigrateRequest {
                to: to.to_owned(),
                by_snapshot,
            }),
        )
        .await
    }

    /// Agent, live migration source: streams the VMM's migration output to the server, which
    /// forwards it to the destination as it comes.
    pub async fn migration_live_send<S>(&self, vm: &str, stream: S) -> Result<(), ClientError>
    where
        S: futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        let url = format!("{}/v1/agent/migrations/{}/live", self.base, enc(vm));
        let req = self
            .http()
            .put(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        self.finish::<serde_json::Value>(url, req).await.map(drop)
    }

    /// Agent, live migration destination: the source's stream, as the server forwards it,
    /// written to `out`; returns the bytes.
    pub async fn migration_live_receive<W>(&self, vm: &str, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let url = format!("{}/v1/agent/migrations/{}/live", self.base, enc(vm));
        let n = self.stream_to(url, out).await?;
        let _ = out.shutdown().await;
        Ok(n)
    }

    /// `GET url`, its body written to `out` as it arrives; returns the bytes.
    async fn stream_to<W>(&self, url: String, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut resp = self
            .http()
            .get(&url)
            .timeout(TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Decode {
                    url: url.clone(),
                    detail: format!("writing what arrived: {e}"),
                })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// A VM's current or last migration.
    pub async fn vm_migration(&self, vm: &str) -> Result<Migration, ClientError> {
        self.must::<(), _>(Method::GET, &format!("/v1/vms/{}/migration", enc(vm)), None)
            .await
    }

    /// Agent: uploads a migration snapshot (a tar file), streaming it.
    pub async fn migration_upload(
        &self,
        vm: &str,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/agent/migrations/{}/snapshot", self.base, enc(vm));
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let req = self
            .http()
            .put(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/x-tar")
            .header("content-length", len)
            .body(body);
        self.finish::<serde_json::Value>(url, req).await.map(drop)
    }

    /// Agent: downloads a migration snapshot into `out`, streaming it; returns its size.
    pub async fn migration_download(
        &self,
        vm: &str,
        out: &mut tokio::fs::File,
    ) -> Result<u64, ClientError> {
        let url = format!("{}/v1/agent/migrations/{}/snapshot", self.base, enc(vm));
        self.stream_to(url, out).await
    }

    /// Agent: keeps a copy of a VM's snapshot (a tar) on the server, for a restore on another
    /// node (after a failover).
    pub async fn snapshot_upload(
        &self,
        vm: &str,
        name: &str,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/v1/agent/vms/{}/snapshots/{}/data",
            self.base,
            enc(vm),
            enc(name)
        );
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let req = self
            .http()
            .put(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/x-tar")
            .header("content-length", len)
            .body(body);
        self.finish::<serde_json::Value>(url, req).await.map(drop)
    }

    /// Agent: the server's copy of a VM's snapshot, into `out`; returns its size.
    pub async fn snapshot_download(
        &self,
        vm: &str,
        name: &str,
        out: &mut tokio::fs::File,
    ) -> Result<u64, ClientError> {
        let url = format!(
            "{}/v1/agent/vms/{}/snapshots/{}/data",
            self.base,
            enc(vm),
            enc(name)
        );
        self.stream_to(url, out).await
    }

    /// Agent: reports a migration step.
    pub async fn migration_report(
        &self,
        vm: &str,
        report: &MigrationReport,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::POST,
            &format!("/v1/agent/migrations/{}/report", enc(vm)),
            Some(report),
        )
        .await
        .map(drop)
    }

    /// Agent: uploads console bytes at `offset`; returns where the server's copy ends.
    pub async fn upload_console(
        &self,
        vm: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u64, ClientError> {
        let url = format!(
            "{}/v1/agent/vms/{}/console?offset={offset}",
            self.base,
            enc(vm)
        );
        let req = self
            .http()
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(data);
        let r: Option<ConsoleOffset> = self.finish(url.clone(), req).await?;
        r.map(|o| o.next_offset).ok_or(ClientError::Decode {
            url,
            detail: "empty body".to_owned(),
        })
    }

    // ---- Functions ----

    /// `POST /v1/functions`.
    pub async fn deploy_function(
        &self,
        req: &DeployFunctionRequest,
    ) -> Result<FunctionView, ClientError> {
        self.must(Method::POST, "/v1/functions", Some(req)).await
    }

    /// `GET /v1/functions`: every page, following `next`.
    pub async fn list_functions(&self) -> Result<FunctionList, ClientError> {
        let mut all = FunctionList {
            items: Vec::new(),
            next: None,
        };
        let mut after: Option<String> = None;
        loop {
            let path = page_path("/v1/functions", None, after.as_deref());
            let page: FunctionList = self.must::<(), _>(Method::GET, &path, None).await?;
            all.items.extend(page.items);
            match page.next {
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return Ok(all),
            }
        }
    }

    /// `GET /v1/functions/{name}`.
    pub async fn get_function(&self, name: &str) -> Result<FunctionView, ClientError> {
        self.must::<(), _>(Method::GET, &format!("/v1/functions/{}", enc(name)), None)
            .await
    }

    /// `DELETE /v1/functions/{name}`.
    pub async fn delete_function(&self, name: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/functions/{}", enc(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// `GET /v1/functions/{name}/logs`.
    pub async fn function_logs(&self, name: &str) -> Result<FunctionLogs, ClientError> {
        self.must::<(), _>(
            Method::GET,
            &format!("/v1/functions/{}/logs", enc(name)),
            None,
        )
        .await
    }

    /// `POST /v1/functions/{name}/invoke`: the body as is; waits as long as the server holds
    /// the request (cold start) plus the function's run time.
    pub async fn invoke_function(
        &self,
        name: &str,
        body: Vec<u8>,
        region: Option<&str>,
    ) -> Result<InvokeResponse, ClientError> {
        let mut url = format!("{}/v1/functions/{}/invoke", self.base, enc(name));
        if let Some(r) = region {
            url.push_str(&format!("?region={}", enc(r)));
        }
        let mut req = self
            .http()
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(20 * 60))
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.finish(url.clone(), req)
            .await?
            .ok_or_else(|| ClientError::Decode {
                url,
                detail: "empty body".to_owned(),
            })
    }

    /// Agent: the invocations queued for this node (waits up to `wait` for some).
    pub async fn invocations(&self, wait: Duration) -> Result<AgentInvocations, ClientError> {
        self.must::<(), _>(
            Method::GET,
            &format!("/v1/agent/invocations?wait_ms={}", wait.as_millis()),
            None,
        )
        .await
    }

    /// Agent: an invocation's result.
    pub async fn invocation_result(
        &self,
        id: &str,
        result: &AgentInvocationResult,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::POST,
            &format!("/v1/agent/invocations/{}", enc(id)),
            Some(result),
        )
        .await
        .map(|_| ())
    }

    /// Audit log entries with seq > `after`, in order, at most `limit` (admin).
    pub async fn audit_list(
        &self,
        after: u64,
        limit: Option<usize>,
    ) -> Result<firefleet_api::AuditList, ClientError> {
        let mut path = format!("/v1/audit?after={after}");
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.must::<(), _>(Method::GET, &path, None).await
    }

    /// The server's check of the stored audit chain (admin).
    pub async fn audit_verify(&self) -> Result<firefleet_api::AuditVerifyResponse, ClientError> {
        self.must::<(), _>(Method::GET, "/v1/audit/verify", None)
            .await
    }
}

/// The error a failed call's body describes (the API's error body, else its first 300
/// characters).
fn api_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.error.code,
            message: e.error.message,
            field: e.error.field,
            reasons: e.error.reasons,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http".to_owned(),
            message: String::from_utf8_lossy(body).chars().take(300).collect(),
            field: None,
            reasons: Vec::new(),
        },
    }
}

/// Percent-encodes a path segment (ids and names are `[a-z0-9-]`, but input is input).
/// A list's path with its paging query.
fn page_path(path: &str, limit: Option<usize>, after: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    if let Some(a) = after {
        query.push(format!("after={}", enc(a)));
    }
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
