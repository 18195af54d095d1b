//! The transport core every resource module builds on: the connection settings, the TLS
//! client (trusting only the cluster CA, presenting a client certificate when given), request
//! building with the bearer token, answers turned into typed values or [`ClientError`], and the
//! streaming helpers of snapshot and migration transfers.

use std::time::Duration;

use firefleet_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

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
    pub(crate) fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server's URL of `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
        let (url, req) = self.request(method, path, body);
        self.finish_optional_body(url, req).await
    }

    /// Sends a request whose answer must have a body (an empty one is a [`ClientError::Decode`]).
    pub(crate) async fn call_required_body<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (url, req) = self.request(method, path, body);
        self.finish_required_body(url, req).await
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

    /// A request to `path` with the token and the JSON body; returns its URL too.
    pub(crate) fn request<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> (String, reqwest::RequestBuilder) {
        let url = self.url(path);
        let mut req = self.with_token(self.http().request(method, &url));
        if let Some(b) = body {
            req = req.json(b);
        }
        (url, req)
    }

    /// Sends `req` (to `url`); its answer's body, `None` when there is none.
    pub(crate) async fn finish_optional_body<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        self.finish_with_headers(url, req).await.map(|(t, _)| t)
    }

    /// Sends `req` (to `url`); its answer's body, which must be there.
    pub(crate) async fn finish_required_body<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.finish_optional_body(url.clone(), req)
            .await?
            .ok_or_else(|| empty_body(url))
    }

    /// Like `finish_optional_body`, also returning the response's headers.
    pub(crate) async fn finish_with_headers<T: DeserializeOwned>(
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

    /// `PUT url` of a tar archive streamed from `file` (`len` bytes), without a token (agents
    /// speak mutual TLS).
    pub(crate) async fn upload_tar(
        &self,
        url: String,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<(), ClientError> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let req = self
            .http()
            .put(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/x-tar")
            .header("content-length", len)
            .body(body);
        self.finish_optional_body::<serde_json::Value>(url, req)
            .await
            .map(drop)
    }

    /// `GET url`, its body written to `out` as it arrives; returns the bytes.
    pub(crate) async fn stream_to<W>(&self, url: String, out: &mut W) -> Result<u64, ClientError>
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
