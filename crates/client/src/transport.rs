//! The transport core every resource module builds on: the connection settings, the TLS
//! client (trusting only the cluster CA, presenting a client certificate when given), request
//! building with the bearer token, answers turned into typed values or [`ClientError`], and the
//! streaming helpers of snapshot and migration transfers.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use firefleet_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

use crate::failover::{Answered, Attempts, Failover, Replay, Servers};

/// Longest a snapshot transfer may take.
pub(crate) const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

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
    /// No server address was given.
    #[error("no server address given")]
    NoServers,
    /// Every replica failed (unreachable, or answering 503) until the failover budget was
    /// spent; `source` is the last attempt's error.
    #[error("no server answered in {elapsed_ms} ms (tried {})", .tried.join(", "))]
    NoServer {
        /// The base URLs tried, in order.
        tried: Vec<String>,
        /// How long the attempts took.
        elapsed_ms: u64,
        /// The last attempt's error.
        #[source]
        source: Box<ClientError>,
    },
    /// A local file to send could not be read.
    #[error("reading {}", .path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The HTTP status, for an API error (the last attempt's, when every replica failed).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::NoServer { source, .. } => source.status(),
            _ => None,
        }
    }
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `https://host:port` of every server replica (at least one), tried in this order; see
    /// [`crate::parse_server_list`].
    pub servers: Vec<String>,
    /// PEM of the cluster CA (the only root trusted).
    pub ca_pem: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Client certificate and key (agents).
    pub identity: Option<(String, String)>,
}

/// A reqwest client trusting only the cluster CA, presenting `identity` if given.
fn http_client(
    connect_timeout: Duration,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<reqwest::Client, ClientError> {
    let tls = firefleet_pki::client_tls_config(ca_pem, identity).map_err(ClientError::Tls)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|source| ClientError::Transport {
            url: "(building the HTTP client)".to_owned(),
            source,
        })
}

/// A FireFleet API client over one or several server replicas (see [`Failover`]). Clones share
/// one connection pool, identity and current replica: a new client certificate
/// ([`Client::set_identity`]) is used by every clone's next request, and a failover by one
/// clone moves them all.
#[derive(Debug, Clone)]
pub struct Client {
    http: Arc<RwLock<reqwest::Client>>,
    pub(crate) servers: Arc<Servers>,
    pub(crate) failover: Failover,
    token: Option<String>,
    ca_pem: String,
}

impl Client {
    /// Builds a client that fails over as [`Failover::default`] says (with several servers).
    pub fn new(conn: &Connection) -> Result<Client, ClientError> {
        Client::with_failover(conn, Failover::default())
    }

    /// Builds a client that fails over between `conn.servers` as `failover` says.
    pub fn with_failover(conn: &Connection, failover: Failover) -> Result<Client, ClientError> {
        if conn.servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let mut urls = Vec::with_capacity(conn.servers.len());
        for s in &conn.servers {
            let base = s.trim_end_matches('/').to_owned();
            if !base.starts_with("https://") {
                return Err(ClientError::BadServer(s.clone()));
            }
            urls.push(base);
        }
        let identity = conn
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_str(), k.as_str()));
        let connect_timeout = connect_timeout(urls.len(), &failover);
        let http = http_client(connect_timeout, &conn.ca_pem, identity)?;
        Ok(Client {
            http: Arc::new(RwLock::new(http)),
            servers: Arc::new(Servers::new(urls)),
            failover,
            token: conn.token.clone(),
            ca_pem: conn.ca_pem.clone(),
        })
    }

    /// The servers' base URLs, in the order given.
    pub fn servers(&self) -> &[String] {
        self.servers.urls()
    }

    /// Presents this client certificate from the next request on (every clone of this client):
    /// new connections, while requests under way finish on theirs.
    pub fn set_identity(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClientError> {
        let connect_timeout = connect_timeout(self.servers.urls().len(), &self.failover);
        let http = http_client(connect_timeout, &self.ca_pem, Some((cert_pem, key_pem)))?;
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
        Ok(())
    }

    /// The HTTP client in use now.
    pub(crate) fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `req` carrying the bearer token, when this client has one.
    pub(crate) fn with_token(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends a request whose answer may have no body (`None`: 204 or empty).
    pub(crate) async fn call_optional_body<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, ClientError> {
        let replay = Replay::of(&method);
        self.exchange(method, path, body, replay, &mut Attempts::default())
            .await
            .map(|(t, _)| t)
    }

    /// Sends a request whose answer must have a body (an empty one is a [`ClientError::Decode`]).
    pub(crate) async fn call_required_body<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let replay = Replay::of(&method);
        self.exchange_required(method, path, body, replay).await
    }

    /// Sends a request whose answer body, if any, is JSON the caller does not need.
    pub(crate) async fn call_ignoring_body<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        self.call_optional_body::<B, serde_json::Value>(method, path, body)
            .await
            .map(drop)
    }

    /// `POST path` that the server applies idempotently (a desired-state write, an upsert, a
    /// report of a state reached): sent again on another replica after any failure; its
    /// answer must have a body.
    pub(crate) async fn idempotent_post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.exchange_required(Method::POST, path, body, Replay::Always)
            .await
    }

    /// Like [`Client::idempotent_post`], for an answer the caller does not need.
    pub(crate) async fn idempotent_post_ignoring_body<B: Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        self.exchange::<B, serde_json::Value>(
            Method::POST,
            path,
            body,
            Replay::Always,
            &mut Attempts::default(),
        )
        .await
        .map(drop)
    }

    /// Sends a JSON request (failing over as `replay` allows); its answer must have a body.
    async fn exchange_required<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        replay: Replay,
    ) -> Result<T, ClientError> {
        let answered = self
            .send_json(method, path, body, replay, &mut Attempts::default())
            .await?;
        let url = answered.url.clone();
        read_answer(answered)
            .await?
            .0
            .ok_or_else(|| empty_body(url))
    }

    /// Sends a JSON request (failing over as `replay` allows, recording in `attempts`); its
    /// answer's body (`None` when there is none) and headers.
    pub(crate) async fn exchange<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        replay: Replay,
        attempts: &mut Attempts,
    ) -> Result<(Option<T>, reqwest::header::HeaderMap), ClientError> {
        let answered = self.send_json(method, path, body, replay, attempts).await?;
        read_answer(answered).await
    }

    /// Sends `method path` with the token and the JSON body, failing over as `replay` allows.
    async fn send_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        replay: Replay,
        attempts: &mut Attempts,
    ) -> Result<Answered, ClientError> {
        self.send(path, replay, attempts, |http, url| {
            let mut req = self.with_token(http.request(method.clone(), url));
            if let Some(b) = body {
                req = req.json(b);
            }
            Ok(req)
        })
        .await
    }

    /// Sends a request `build` makes, failing over as `replay` allows; its answer's body,
    /// which must be there.
    pub(crate) async fn send_required_body<T, F>(
        &self,
        path: &str,
        replay: Replay,
        build: F,
    ) -> Result<T, ClientError>
    where
        T: DeserializeOwned,
        F: Fn(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder, ClientError>,
    {
        let answered = self
            .send(path, replay, &mut Attempts::default(), build)
            .await?;
        let url = answered.url.clone();
        read_answer(answered)
            .await?
            .0
            .ok_or_else(|| empty_body(url))
    }

    /// `PUT path` of the tar archive `archive`, streamed from the file (opened again for each
    /// attempt: the upload is idempotent), without a token (agents speak mutual TLS).
    pub(crate) async fn upload_tar(&self, path: &str, archive: &Path) -> Result<(), ClientError> {
        let answered = self
            .send(
                path,
                Replay::Always,
                &mut Attempts::default(),
                |http, url| {
                    let file_error = |source| ClientError::File {
                        path: archive.to_owned(),
                        source,
                    };
                    let file = std::fs::File::open(archive).map_err(file_error)?;
                    let len = file.metadata().map_err(file_error)?.len();
                    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
                    Ok(http
                        .put(url)
                        .timeout(TRANSFER_TIMEOUT)
                        .header("content-type", "application/x-tar")
                        .header("content-length", len)
                        .body(reqwest::Body::wrap_stream(stream)))
                },
            )
            .await?;
        read_answer::<serde_json::Value>(answered).await.map(drop)
    }

    /// `GET path`, its body written to `out` as it arrives; returns the bytes. Fails over
    /// until a replica answers; once bytes flow, a failure is the caller's.
    pub(crate) async fn stream_to<W>(&self, path: &str, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let Answered {
            url,
            response: mut resp,
        } = self
            .send(
                path,
                Replay::Always,
                &mut Attempts::default(),
                |http, url| Ok(http.get(url).timeout(TRANSFER_TIMEOUT)),
            )
            .await?;
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
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
}

/// The connect timeout: 10 s to the one server, the failover's to each of several.
fn connect_timeout(servers: usize, failover: &Failover) -> Duration {
    if servers > 1 {
        failover.connect_timeout
    } else {
        Duration::from_secs(10)
    }
}

/// An answer's body (`None`: 204 or empty) and headers, or the error it describes.
pub(crate) async fn read_answer<T: DeserializeOwned>(
    answered: Answered,
) -> Result<(Option<T>, reqwest::header::HeaderMap), ClientError> {
    let Answered { url, response } = answered;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
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

/// The error of an answer that should have had a body and had none.
pub(crate) fn empty_body(url: String) -> ClientError {
    ClientError::Decode {
        url,
        detail: "empty body".to_owned(),
    }
}

/// The error a failed call's body describes (the API's error body, else its first 300
/// characters).
pub(crate) fn api_error(status: u16, body: &[u8]) -> ClientError {
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

/// A list's path with its paging query.
pub(crate) fn page_path(path: &str, limit: Option<usize>, after: Option<&str>) -> String {
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

/// Percent-encodes a path segment (ids and names are `[a-z0-9-]`, but input is input).
pub(crate) fn enc(s: &str) -> String {
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
