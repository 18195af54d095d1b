//! A minimal blocking HTTP/1.1 client for Firecracker's API socket.
//!
//! Hand-written rather than a crate: the API is a handful of small JSON requests over one Unix
//! socket, and the well-kept HTTP clients (hyper, reqwest, ureq) either need tokio, which this
//! crate must not depend on (engines stay synchronous), or do not speak Unix sockets. One
//! request per connection, `Content-Length` framing (Firecracker's micro_http always sends it),
//! and a timeout on every read and write.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response we accept (Firecracker's are a few KiB; `GET /vm/config` is the largest).
const MAX_RESPONSE: usize = 1 << 20;

/// A failed API exchange.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached, or the exchange broke off.
    #[error("{method} {path} on {socket}")]
    Io {
        /// The method.
        method: &'static str,
        /// The request path.
        path: String,
        /// The API socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Firecracker refused the request; `fault_message` is its explanation.
    #[error("{method} {path}: HTTP {status}: {fault_message}")]
    Status {
        /// The method.
        method: &'static str,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Firecracker's `fault_message` (or the raw body when there is none).
        fault_message: String,
    },
    /// The response is not HTTP/1.x as expected.
    #[error("{method} {path}: malformed response: {what}")]
    Malformed {
        /// The method.
        method: &'static str,
        /// The request path.
        path: String,
        /// What is wrong.
        what: String,
    },
}

impl ApiError {
    /// Firecracker's `fault_message`, when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            Self::Status { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}

/// The API of one Firecracker process.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, the JSON body of a 2xx answer (`Null` when empty).
    pub fn get(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        self.request("GET", path, None)
    }

    /// `PUT path` with a JSON body.
    pub fn put(&self, path: &str, body: &impl serde::Serialize) -> Result<(), ApiError> {
        self.request("PUT", path, Some(self.to_json("PUT", path, body)?))
            .map(drop)
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, body: &impl serde::Serialize) -> Result<(), ApiError> {
        self.request("PATCH", path, Some(self.to_json("PATCH", path, body)?))
            .map(drop)
    }

    fn to_json(
        &self,
        method: &'static str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<Vec<u8>, ApiError> {
        serde_json::to_vec(body).map_err(|e| ApiError::Malformed {
            method,
            path: path.to_string(),
            what: format!("request body: {e}"),
        })
    }

    /// One exchange: returns the parsed JSON body of a 2xx response (`Null` when empty), or
    /// [`ApiError::Status`] with Firecracker's `fault_message`.
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, ApiError> {
        let io_err = |source| ApiError::Io {
            method,
            path: path.to_string(),
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(io_err)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io_err)?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(b) = &body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.as_deref().unwrap_or_default());
        stream.write_all(&bytes).map_err(io_err)?;
        let raw = read_response(&mut stream).map_err(io_err)?;
        let resp = parse_response(&raw).map_err(|what| ApiError::Malformed {
            method,
            path: path.to_string(),
            what,
        })?;
        let json = if resp.body.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(resp.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(resp.body).into_owned())
            })
        };
        if (200..300).contains(&resp.status) {
            return Ok(json);
        }
        let fault_message = match &json {
            serde_json::Value::Object(m) => m
                .get("fault_message")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string()),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Err(ApiError::Status {
            method,
            path: path.to_string(),
            status: resp.status,
            fault_message,
        })
    }
}

/// Reads one response: the head up to the blank line, then `Content-Length` bytes of body.
fn read_response(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = find_head_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..head_end]);
            let len = content_length(&head).unwrap_or(0);
            if len > MAX_RESPONSE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response too large",
                ));
            }
            if buf.len() >= head_end + 4 + len {
                buf.truncate(head_end + 4 + len);
                return Ok(buf);
            }
        }
        if buf.len() > MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response too large",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            if find_head_end(&buf).is_some() {
                return Ok(buf);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: &'a [u8],
}

/// Parses a complete response (as returned by `read_response`).
pub fn parse_response(raw: &[u8]) -> Result<Response<'_>, String> {
    let head_end = find_head_end(raw).ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let body = &raw[head_end + 4..];
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses_with_and_without_bodies() {
        let raw =
            b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            parse_response(raw).unwrap(),
            Response {
                status: 204,
                body: b""
            }
        );
        let body = br#"{"fault_message":"The requested operation is not supported before starting the microVM."}"#;
        let mut raw = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let mut reader = io::Cursor::new([raw.clone(), b"trailing".to_vec()].concat());
        let got = read_response(&mut reader).unwrap();
        assert_eq!(got, raw, "stops at Content-Length");
        let r = parse_response(&got).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, body);
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn a_refusal_carries_the_fault_message() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while find_head_end(&req).is_none() {
                let n = s.read(&mut b).unwrap();
                req.extend_from_slice(&b[..n]);
            }
            let body = br#"{"fault_message":"Invalid vCPU count."}"#;
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        let api = ApiClient::new(&sock, Duration::from_secs(2));
        let err = api
            .put("/machine-config", &serde_json::json!({"vcpu_count": 99}))
            .unwrap_err();
        assert_eq!(err.fault_message(), Some("Invalid vCPU count."));
        assert!(
            err.to_string().contains("PUT /machine-config: HTTP 400"),
            "{err}"
        );
        let req = server.join().unwrap();
        assert!(req.starts_with("PUT /machine-config HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Type: application/json\r\n"), "{req}");
    }
}
