//! The host<->guest channel protocol: JSON lines over the virtio-serial port
//! [`crate::AGENT_PORT_NAME`].
//!
//! Every line is one JSON object `{"v":1,"type":"<kind>", ...fields}` terminated by `\n`.
//! Kinds, guest -> host: `hello {version, vm_id, capabilities}`, `ready`, `heartbeat {seq,
//! uptime_ms}`, `exited {code}`, `exec_result`, `telemetry`, `pong {id}`, `error {id, message}`;
//! host -> guest: `exec {id, argv, timeout_ms, stdin_b64?}`, `telemetry_request {id}`,
//! `ping {id}`, `shutdown`, `invoke {id, handler, body_b64, timeout_ms}` (answered by
//! `invoke_result`). Requests carry an `id` the answer echoes.
//!
//! # Function invocations
//! `invoke` runs one request of a serverless function in the guest. Its `handler` is either
//! `{"kind":"command","argv":[...]}` (run per invocation: the body on stdin, stdout is the
//! response; status 200 on exit 0, else 500 with stderr) or `{"kind":"http","port":P,"path":"/x"}`
//! (the body is POSTed with HTTP/1.1 to `127.0.0.1:P` inside the guest, where the VM's workload
//! listens; its status and body come back). Bodies travel base64-encoded on one line, so both
//! ways a body is limited to [`MAX_BODY`] (32 KiB) raw bytes: the host refuses a larger request
//! before sending it, and the guest cuts a larger response to the limit and sets `truncated`.
//! A handler that cannot run (connection refused, command not found) answers with `error` set
//! and status 502 (HTTP) or 500 (command); a handler past its timeout answers 504 with
//! `timed_out`. Decoding is tolerant: an unknown `type` is [`Decoded::Unknown`]
//! (newer peers may add kinds), a line longer than the limit or not JSON is a [`DecodeError`] the
//! caller drops and counts. Nothing here panics on input.

use std::io::{self, Read};

/// The protocol version this build speaks (the `v` field of every line).
pub const PROTO_VERSION: u32 = 1;
/// The longest line accepted, in bytes, without the newline.
pub const MAX_LINE: usize = 64 * 1024;
/// The largest invocation request or response body, in raw bytes (it travels base64-encoded,
/// 4/3 larger, on one line of at most [`MAX_LINE`] bytes together with stderr and the rest).
pub const MAX_BODY: usize = 32 * 1024;

/// Capabilities this build's guest announces in [`Message::Hello`].
pub const GUEST_CAPABILITIES: [&str; 4] = ["exec", "telemetry", "ping", "invoke"];

/// Every `type` this build knows; any other is [`Decoded::Unknown`].
pub const KNOWN_KINDS: [&str; 14] = [
    "hello",
    "ready",
    "heartbeat",
    "exited",
    "exec_result",
    "telemetry",
    "pong",
    "error",
    "exec",
    "telemetry_request",
    "ping",
    "shutdown",
    "invoke",
    "invoke_result",
];

/// One message of the protocol. Fields added after the first release carry `#[serde(default)]`
/// so lines from older peers still decode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Guest -> host, first message on each connection: the protocol version the guest speaks.
    Hello {
        /// Protocol version.
        version: u32,
        /// The VM's id, from the guest configuration.
        #[serde(default)]
        vm_id: String,
        /// What the guest serves (`exec`, `telemetry`, `ping`).
        #[serde(default)]
        capabilities: Vec<String>,
    },
    /// Guest -> host: the guest is up.
    Ready,
    /// Guest -> host, every second.
    Heartbeat {
        /// Counts heartbeats since the guest started.
        #[serde(default)]
        seq: u64,
        /// Milliseconds since the guest's init started.
        uptime_ms: u64,
    },
    /// Guest -> host: the workload exited with this code (128+signal if killed by a signal).
    Exited {
        /// Exit code.
        code: i32,
    },
    /// Guest -> host: the outcome of an [`Message::Exec`].
    ExecResult(ExecResult),
    /// Guest -> host: the answer to a [`Message::TelemetryRequest`].
    Telemetry(Telemetry),
    /// Guest -> host: the answer to a [`Message::Ping`].
    Pong {
        /// The request's id.
        id: u64,
    },
    /// Guest -> host: a request failed.
    Error {
        /// The request's id (0 if the request could not be read).
        id: u64,
        /// What went wrong.
        message: String,
    },
    /// Host -> guest: run a command.
    Exec {
        /// Request id, echoed in the answer.
        id: u64,
        /// The program and its arguments (the program is looked up on PATH).
        argv: Vec<String>,
        /// Killed (with its process group) after this long.
        timeout_ms: u64,
        /// Standard input, base64; `/dev/null` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin_b64: Option<String>,
    },
    /// Host -> guest: report processes, sockets and memory.
    TelemetryRequest {
        /// Request id, echoed in the answer.
        id: u64,
    },
    /// Host -> guest: answer with [`Message::Pong`].
    Ping {
        /// Request id, echoed in the answer.
        id: u64,
    },
    /// Host -> guest: stop the workload and power off.
    Shutdown,
    /// Host -> guest: run one invocation of a function (see the module doc).
    Invoke {
        /// Request id, echoed in the answer.
        id: u64,
        /// What handles it.
        handler: InvokeHandler,
        /// The request body, base64 (at most [`MAX_BODY`] bytes decoded).
        #[serde(default)]
        body_b64: String,
        /// The handler is stopped (a command killed with its process group, an HTTP exchange
        /// abandoned) after this long.
        timeout_ms: u64,
    },
    /// Guest -> host: the outcome of an [`Message::Invoke`].
    InvokeResult(InvokeResult),
}

/// What handles an invocation in the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InvokeHandler {
    /// Run `argv` per invocation: the body on stdin, stdout is the response body.
    Command {
        /// The program and its arguments (looked up on PATH).
        argv: Vec<String>,
    },
    /// POST the body to `http://127.0.0.1:<port><path>` inside the guest.
    Http {
        /// The TCP port the workload listens on.
        port: u16,
        /// The request path, starting with `/`.
        path: String,
    },
}

/// The outcome of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct InvokeResult {
    /// The request's id.
    pub id: u64,
    /// HTTP-style status: the workload's for an HTTP handler; 200/500 for a command (exit code 0
    /// or not); 502 when the handler could not be reached or run; 504 after a timeout.
    pub status: u16,
    /// The response body, base64 (at most [`MAX_BODY`] bytes decoded).
    #[serde(default)]
    pub body_b64: String,
    /// Why the handler produced no proper answer (connection refused, command not found, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A command's exit code (128+signal if killed by a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A command's standard error, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    /// Wall time in the guest, from receipt to answer.
    #[serde(default)]
    pub duration_ms: u64,
    /// The handler ran past its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// The body or stderr was cut to fit one line of the protocol.
    #[serde(default)]
    pub truncated: bool,
}

/// The outcome of an exec request.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ExecResult {
    /// The request's id.
    pub id: u64,
    /// Exit code, 128+signal if killed by a signal, -1 if unknown.
    pub exit_code: i32,
    /// Standard output, base64.
    pub stdout_b64: String,
    /// Standard error, base64.
    pub stderr_b64: String,
    /// Output was cut to fit one line of the protocol.
    pub truncated: bool,
    /// The command ran past its timeout and was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// Wall time from start to exit.
    pub duration_ms: u64,
}

/// A snapshot of the guest: processes, sockets, load and memory.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Telemetry {
    /// The request's id.
    pub id: u64,
    /// User processes (kernel threads are left out).
    pub processes: Vec<ProcessInfo>,
    /// Listening TCP sockets and bound, unconnected UDP sockets.
    pub listeners: Vec<Listener>,
    /// Other TCP sockets and connected UDP sockets.
    pub connections: Vec<Connection>,
    /// One-minute load average.
    pub load1: f64,
    /// `MemTotal` of /proc/meminfo.
    pub mem_total_kib: u64,
    /// `MemAvailable` of /proc/meminfo.
    pub mem_available_kib: u64,
    /// Since the guest kernel booted.
    pub uptime_ms: u64,
    /// Lists were cut to fit one line of the protocol.
    #[serde(default)]
    pub truncated: bool,
    /// User processes before any cut (the list may hold fewer).
    #[serde(default)]
    pub process_count: u64,
    /// TCP connection attempts started (`ActiveOpens` of /proc/net/snmp), cumulative.
    #[serde(default)]
    pub tcp_active_opens: u64,
    /// TCP connection attempts that failed (`AttemptFails`: refused or reset), cumulative.
    #[serde(default)]
    pub tcp_attempt_fails: u64,
}

/// One process of [`Telemetry`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: i32,
    /// Parent's pid.
    pub ppid: i32,
    /// `comm` (at most 15 bytes, from /proc/PID/stat).
    pub comm: String,
    /// argv (from /proc/PID/cmdline; cut if long).
    pub cmdline: Vec<String>,
    /// State letter (`R`, `S`, `D`, `Z`, ...).
    pub state: String,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size.
    pub rss_kib: u64,
    /// What fd 0 points to (a path, `socket:[inode]`, `pipe:[inode]`), if open.
    pub stdin: Option<String>,
    /// What fd 1 points to.
    pub stdout: Option<String>,
}

/// A listening socket of [`Telemetry`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Listener {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    /// Local address.
    pub addr: String,
    /// Local port.
    pub port: u16,
    /// Socket inode (matches `socket:[inode]` fd links).
    pub inode: u64,
}

/// A connected socket of [`Telemetry`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Connection {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    /// Local address.
    pub local_addr: String,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_addr: String,
    /// Remote port.
    pub remote_port: u16,
    /// TCP state name (`ESTABLISHED`, `TIME_WAIT`, ...).
    pub state: String,
    /// Socket inode.
    pub inode: u64,
}

/// A decoded line.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A message this build knows.
    Message(Message),
    /// A well-formed line of a kind this build does not know (ignore it).
    Unknown {
        /// The `type` field.
        kind: String,
    },
}

/// Why a line was dropped.
#[derive(Debug)]
pub enum DecodeError {
    /// The line is longer than the limit; its bytes were discarded.
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not a JSON object, or a known kind with bad fields.
    Malformed(serde_json::Error),
    /// No `type` string field.
    MissingType,
    /// A `v` other than [`PROTO_VERSION`].
    UnsupportedVersion(u64),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLong { max } => write!(f, "line longer than {max} bytes"),
            DecodeError::Malformed(_) => write!(f, "malformed message"),
            DecodeError::MissingType => write!(f, "message without a type"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

/// Encodes a message as one line, newline included.
pub fn encode(msg: &Message) -> Vec<u8> {
    // An internally tagged enum serializes as `{"type":...,fields}`: splice `"v":1,` in front so
    // the version comes first on the wire.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut line = format!("{{\"v\":{PROTO_VERSION},").into_bytes();
    match body.split_first() {
        Some((b'{', rest)) if rest.len() > 1 => line.extend_from_slice(rest),
        // Unreachable for Message: every variant has at least its tag.
        _ => line = format!("{{\"v\":{PROTO_VERSION}}}").into_bytes(),
    }
    line.push(b'\n');
    line
}

/// Decodes one line (without or with its trailing newline / carriage return).
pub fn decode(line: &[u8]) -> Result<Decoded, DecodeError> {
    let line = trim_eol(line);
    if line.len() > MAX_LINE {
        return Err(DecodeError::TooLong { max: MAX_LINE });
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(DecodeError::Malformed)?;
    let obj = match value {
        serde_json::Value::Object(obj) => obj,
        other => {
            // Produce a serde error that says what was wrong.
            let err = serde_json::from_value::<serde_json::Map<String, serde_json::Value>>(other)
                .err()
                .unwrap_or_else(|| serde::de::Error::custom("not an object"));
            return Err(DecodeError::Malformed(err));
        }
    };
    match obj.get("v").map(|v| v.as_u64()) {
        Some(Some(v)) if v == u64::from(PROTO_VERSION) => {}
        Some(Some(v)) => return Err(DecodeError::UnsupportedVersion(v)),
        Some(None) | None => {
            return Err(DecodeError::Malformed(serde::de::Error::custom(
                "missing or non-integer field `v`",
            )))
        }
    }
    let kind = match obj.get("type").and_then(|t| t.as_str()) {
        Some(k) => k.to_string(),
        None => return Err(DecodeError::MissingType),
    };
    if !KNOWN_KINDS.contains(&kind.as_str()) {
        return Ok(Decoded::Unknown { kind });
    }
    serde_json::from_value(serde_json::Value::Object(obj))
        .map(Decoded::Message)
        .map_err(DecodeError::Malformed)
}

fn trim_eol(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

/// What [`LineReader::read_line`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadLine {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A line longer than the limit was discarded (up to and including its newline).
    TooLong,
    /// The reader would block (non-blocking source); call again later.
    WouldBlock,
    /// End of input. A final unterminated line is returned as a [`ReadLine::Line`] first.
    Eof,
}

/// A buffered line reader with a maximum line length. Oversized lines are skipped, not buffered,
/// so a misbehaving peer cannot make it allocate without bound. Works with blocking and
/// non-blocking sources.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
    eof: bool,
}

impl<R: Read> LineReader<R> {
    /// A reader with the limit [`MAX_LINE`].
    pub fn new(inner: R) -> Self {
        Self::with_max(inner, MAX_LINE)
    }

    /// A reader with a custom limit.
    pub fn with_max(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max,
            discarding: false,
            eof: false,
        }
    }

    /// The underlying source.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying source, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Forgets buffered bytes and a seen end of input: for a source that a new peer can reopen
    /// (a virtio-serial port after the host reconnects).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
        self.eof = false;
    }

    /// Reads the next line. I/O errors other than `WouldBlock`/`Interrupted` are returned.
    pub fn read_line(&mut self) -> io::Result<ReadLine> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if self.discarding {
                    self.discarding = false;
                    return Ok(ReadLine::TooLong);
                }
                if line.len() > self.max {
                    return Ok(ReadLine::TooLong);
                }
                return Ok(ReadLine::Line(line));
            }
            if self.buf.len() > self.max {
                // No newline within the limit: drop what we have and skip to the next newline.
                self.buf.clear();
                self.discarding = true;
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(ReadLine::Eof);
                }
                let line = std::mem::take(&mut self.buf);
                if std::mem::take(&mut self.discarding) {
                    return Ok(ReadLine::TooLong);
                }
                return Ok(ReadLine::Line(line));
            }
            let mut chunk = [0u8; 4096];
            match self.inner.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadLine::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and decodes the next line; `Ok(None)` at end of input or when it would block.
    pub fn read_message(&mut self) -> io::Result<Option<Result<Decoded, DecodeError>>> {
        Ok(match self.read_line()? {
            ReadLine::Line(line) => Some(decode(&line)),
            ReadLine::TooLong => Some(Err(DecodeError::TooLong { max: self.max })),
            ReadLine::WouldBlock | ReadLine::Eof => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_versioned_lines() {
        let line = encode(&Message::Heartbeat {
            seq: 2,
            uptime_ms: 1500,
        });
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"v\":1,\"type\":\"heartbeat\",\"seq\":2,\"uptime_ms\":1500}\n"
        );
        assert_eq!(
            encode(&Message::Shutdown),
            b"{\"v\":1,\"type\":\"shutdown\"}\n"
        );
    }

    #[test]
    fn round_trips_every_message() {
        for msg in [
            Message::Hello {
                version: 1,
                vm_id: "vm".into(),
                capabilities: vec!["exec".into()],
            },
            Message::Ready,
            Message::Heartbeat {
                seq: 3,
                uptime_ms: 7,
            },
            Message::Exited { code: -1 },
            Message::Shutdown,
            Message::ExecResult(ExecResult {
                id: 9,
                exit_code: 4,
                stdout_b64: "aGkK".into(),
                stderr_b64: String::new(),
                truncated: false,
                timed_out: true,
                duration_ms: 12,
            }),
            Message::Telemetry(Telemetry {
                id: 2,
                processes: vec![ProcessInfo {
                    pid: 1,
                    comm: "init".into(),
                    cmdline: vec!["/init".into()],
                    stdin: Some("/dev/console".into()),
                    ..Default::default()
                }],
                listeners: vec![Listener {
                    proto: "tcp".into(),
                    addr: "0.0.0.0".into(),
                    port: 7777,
                    inode: 5,
                }],
                load1: 0.5,
                ..Default::default()
            }),
            Message::Pong { id: 1 },
            Message::Error {
                id: 1,
                message: "no".into(),
            },
            Message::Exec {
                id: 1,
                argv: vec!["true".into()],
                timeout_ms: 10,
                stdin_b64: None,
            },
            Message::Exec {
                id: 1,
                argv: vec!["cat".into()],
                timeout_ms: 10,
                stdin_b64: Some("eA==".into()),
            },
            Message::TelemetryRequest { id: 4 },
            Message::Ping { id: 5 },
            Message::Invoke {
                id: 6,
                handler: InvokeHandler::Command {
                    argv: vec!["cat".into()],
                },
                body_b64: "eA==".into(),
                timeout_ms: 100,
            },
            Message::Invoke {
                id: 7,
                handler: InvokeHandler::Http {
                    port: 8080,
                    path: "/fn".into(),
                },
                body_b64: String::new(),
                timeout_ms: 100,
            },
            Message::InvokeResult(InvokeResult {
                id: 6,
                status: 500,
                body_b64: "aGkK".into(),
                error: None,
                exit_code: Some(3),
                stderr_b64: Some("ZQ==".into()),
                duration_ms: 4,
                timed_out: false,
                truncated: true,
            }),
            Message::InvokeResult(InvokeResult {
                id: 7,
                status: 502,
                error: Some("connection refused".into()),
                ..Default::default()
            }),
        ] {
            assert_eq!(decode(&encode(&msg)).unwrap(), Decoded::Message(msg));
        }
    }

    #[test]
    fn decodes_lines_of_the_first_release() {
        assert_eq!(
            decode(br#"{"v":1,"type":"hello","version":1}"#).unwrap(),
            Decoded::Message(Message::Hello {
                version: 1,
                vm_id: String::new(),
                capabilities: vec![],
            })
        );
        assert_eq!(
            decode(br#"{"v":1,"type":"heartbeat","uptime_ms":5}"#).unwrap(),
            Decoded::Message(Message::Heartbeat {
                seq: 0,
                uptime_ms: 5
            })
        );
        assert!(matches!(
            decode(br#"{"v":1,"type":"exec_result","id":1}"#),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn invocation_lines_have_a_stable_shape_and_minimal_results_decode() {
        let line = encode(&Message::Invoke {
            id: 1,
            handler: InvokeHandler::Http {
                port: 80,
                path: "/".into(),
            },
            body_b64: "eA==".into(),
            timeout_ms: 5,
        });
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"v\":1,\"type\":\"invoke\",\"id\":1,\"handler\":{\"kind\":\"http\",\"port\":80,\
             \"path\":\"/\"},\"body_b64\":\"eA==\",\"timeout_ms\":5}\n"
        );
        assert_eq!(
            decode(br#"{"v":1,"type":"invoke_result","id":3,"status":200}"#).unwrap(),
            Decoded::Message(Message::InvokeResult(InvokeResult {
                id: 3,
                status: 200,
                ..Default::default()
            }))
        );
        assert_eq!(
            decode(br#"{"v":1,"type":"invoke","id":3,"timeout_ms":1,"handler":{"kind":"command","argv":["true"]}}"#)
                .unwrap(),
            Decoded::Message(Message::Invoke {
                id: 3,
                handler: InvokeHandler::Command {
                    argv: vec!["true".into()]
                },
                body_b64: String::new(),
                timeout_ms: 1,
            })
        );
        // An unknown handler kind is a malformed request, not a panic.
        assert!(matches!(
            decode(br#"{"v":1,"type":"invoke","id":3,"timeout_ms":1,"handler":{"kind":"wasm"}}"#),
            Err(DecodeError::Malformed(_))
        ));
        // The largest body fits a line with room for the rest of the answer.
        let big = InvokeResult {
            id: u64::MAX,
            status: 200,
            body_b64: "A".repeat(MAX_BODY.div_ceil(3) * 4),
            ..Default::default()
        };
        assert!(encode(&Message::InvokeResult(big)).len() < MAX_LINE - 8 * 1024);
    }

    #[test]
    fn tolerates_unknown_types() {
        let d = decode(br#"{"v":1,"type":"balloon","cpu":3}"#).unwrap();
        assert_eq!(
            d,
            Decoded::Unknown {
                kind: "balloon".into()
            }
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"v\":1}",
            b"{\"v\":1,\"type\":5}",
            b"{\"type\":\"ready\"}",
            b"{\"v\":2,\"type\":\"ready\"}",
            b"{\"v\":1,\"type\":\"exited\",\"code\":\"x\"}",
            b"\xff\xfe",
            b"",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            decode(b"{\"v\":9,\"type\":\"ready\"}"),
            Err(DecodeError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            decode(b"{\"v\":1}"),
            Err(DecodeError::MissingType)
        ));
    }

    #[test]
    fn skips_oversized_lines_and_keeps_going() {
        let mut input = Vec::new();
        input.extend_from_slice(&encode(&Message::Ready));
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.push(b'\n');
        input.extend_from_slice(&encode(&Message::Shutdown));
        input.extend_from_slice(b"{\"v\":1,\"type\":\"ready\"}"); // no final newline
        let mut r = LineReader::with_max(&input[..], 100);
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Ok(Decoded::Message(Message::Ready)))
        ));
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Err(DecodeError::TooLong { max: 100 }))
        ));
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Ok(Decoded::Message(Message::Shutdown)))
        ));
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Ok(Decoded::Message(Message::Ready)))
        ));
        assert!(r.read_message().unwrap().is_none());
        assert_eq!(r.read_line().unwrap(), ReadLine::Eof);
    }

    #[test]
    fn oversized_line_through_the_decoder_is_an_error() {
        let mut line = b"{\"v\":1,\"type\":\"ready\",\"pad\":\"".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_LINE));
        line.extend_from_slice(b"\"}");
        assert!(matches!(decode(&line), Err(DecodeError::TooLong { .. })));
    }
}
