//! The host end of the guest channel ([`firefleet_guest::proto`], JSON lines).
//!
//! Two ends are offered:
//! - [`mux::Channels`], what the runtimes use: one persistent connection per VM with a reader
//!   thread routing answers by request id, so any number of requests (exec, invoke, telemetry,
//!   ping) run on one VM at once. Firecracker's guest connects to it (listen mode); for QEMU it
//!   connects to the chardev socket `guest.sock` (connect mode).
//! - [`GuestChannel`], one exclusive connection driven by one caller, a request at a time:
//!   QEMU's chardev socket `guest.sock` (a server that takes one client at a time, so while a
//!   `GuestChannel` is open the runtime's own connection waits) or a connection the guest made
//!   through Firecracker's vsock forwarding ([`GuestChannel::accept`]). Tools and tests use it.
//!
//! Requests carry ids unique in this process; the answer is found by id, and everything else on
//! the way (hello, heartbeats, answers to earlier connections) is skipped. A malformed, oversized
//! or unknown line is dropped and counted in [`ChannelStats`]; only a missing answer fails a call
//! ([`ChannelError::Timeout`]).
//!
//! # Invocations
//! [`InvokeHandler`] says what handles one invocation of a serverless function in the guest: a
//! command run per invocation (the body on stdin, stdout the response) or the VM's workload
//! listening on an HTTP port inside the guest (the body is POSTed to it). Request and response
//! bodies are limited to [`MAX_BODY`] bytes (32 KiB): they travel base64-encoded in one line of
//! at most [`proto::MAX_LINE`] bytes. A larger request body is refused before anything is sent
//! ([`ChannelError::BodyTooLarge`]); a larger response is cut by the guest and flagged
//! [`InvokeOutput::truncated`].

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use firefleet_guest::proto::{
    self, DecodeError, Decoded, ExecResult, InvokeResult, LineReader, Message, ReadLine,
};

pub use firefleet_guest::proto::{
    Connection, Listener, ProcessInfo, Telemetry as GuestTelemetry, MAX_BODY,
};

pub mod mux;

/// Extra time an exec call waits beyond the command's own timeout (guest scheduling, transfer).
pub(crate) const EXEC_SLACK: Duration = Duration::from_secs(10);

/// Lines dropped by a [`GuestChannel`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// Not JSON, not an object, no/odd version, or a known kind with bad fields.
    pub malformed: u64,
    /// Longer than [`proto::MAX_LINE`].
    pub oversized: u64,
    /// Well-formed lines of a kind this build does not know.
    pub unknown: u64,
}

/// What the guest said when the connection opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuestHello {
    /// Protocol version.
    pub version: u32,
    /// The VM's id, as the guest knows it.
    pub vm_id: String,
    /// What the guest serves.
    pub capabilities: Vec<String>,
}

/// The outcome of [`GuestChannel::exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutput {
    /// Exit code; 128+signal if killed by a signal (137 after a timeout); -1 if unknown.
    pub exit_code: i32,
    /// Standard output (possibly cut, see `truncated`).
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Output was cut to fit one protocol line.
    pub truncated: bool,
    /// The command ran past its timeout and was killed.
    pub timed_out: bool,
    /// Wall time in the guest.
    pub duration_ms: u64,
}

/// What handles one invocation of a function in the guest: the function's handler as the
/// control plane describes it (a command run per invocation, or an HTTP port of the workload).
pub use firefleet_types::FunctionHandler as InvokeHandler;

/// The wire form of a handler.
pub(crate) fn proto_handler(h: &InvokeHandler) -> proto::InvokeHandler {
    match h {
        InvokeHandler::Command { argv } => proto::InvokeHandler::Command { argv: argv.clone() },
        InvokeHandler::Http { port, path } => proto::InvokeHandler::Http {
            port: *port,
            path: path.clone(),
        },
    }
}

/// The outcome of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvokeOutput {
    /// HTTP-style status: the workload's for an HTTP handler; 200/500 for a command (exit code
    /// 0 or not); 502 when the handler could not be reached or run (see `error`); 504 after a
    /// timeout.
    pub status: u16,
    /// The response body (at most [`MAX_BODY`] bytes, see `truncated`).
    pub body: Vec<u8>,
    /// A command's standard error (empty for HTTP).
    pub stderr: Vec<u8>,
    /// A command's exit code (128+signal if killed by a signal).
    pub exit_code: Option<i32>,
    /// Why the handler gave no proper answer (e.g. `connection refused on 127.0.0.1:8080: ...`).
    pub error: Option<String>,
    /// Wall time in the guest.
    pub duration_ms: u64,
    /// The handler ran past its timeout (and a command was killed).
    pub timed_out: bool,
    /// The body or stderr was cut to fit the protocol.
    pub truncated: bool,
}

/// Channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket could not be reached.
    #[error("connecting to the guest channel {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No guest connected to the listener in time.
    #[error("no guest connection within {0:?}")]
    AcceptTimeout(Duration),
    /// Reading or writing failed.
    #[error("guest channel I/O during {op}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection before answering.
    #[error("guest channel closed during {op}")]
    Closed {
        /// The operation.
        op: &'static str,
    },
    /// No answer in time.
    #[error("no answer to {op} within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The guest answered with an error.
    #[error("guest refused {op}: {message}")]
    Guest {
        /// The operation.
        op: &'static str,
        /// The guest's message.
        message: String,
    },
    /// The request does not fit one protocol line.
    #[error("{op} request is {len} bytes, over the {max}-byte line limit")]
    TooLarge {
        /// The operation.
        op: &'static str,
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An invocation's body is larger than the protocol carries.
    #[error("the invocation body is {len} bytes, over the {max}-byte limit of the guest channel")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// The limit ([`MAX_BODY`]).
        max: usize,
    },
    /// The guest's output is not valid base64.
    #[error("guest sent invalid base64 in {op}")]
    BadPayload {
        /// The operation.
        op: &'static str,
    },
}

/// Request ids: unique within this process and unlikely to repeat across restarts, so an
/// answer left over from an earlier connection is never taken for a new request's.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let _ = NEXT.compare_exchange(
        0,
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            & 0x000F_FFFF_FFFF_FFFF)
            | 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A connection to a guest agent.
#[derive(Debug)]
pub struct GuestChannel {
    reader: LineReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    stats: ChannelStats,
    hello: Option<GuestHello>,
    /// A newline was sent ahead of the first request.
    started: bool,
}

impl GuestChannel {
    /// Connects to a Unix socket (QEMU's `guest.sock`). `timeout` bounds the connect retries
    /// (the socket may not exist yet) and is the default wait for answers.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Self::from_stream(s, timeout),
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(ChannelError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    /// Waits up to `timeout` for the guest to connect to `listener` (Firecracker forwards the
    /// guest's vsock connections to port 1024 to the Unix socket `<uds>_1024`).
    pub fn accept(listener: &UnixListener, timeout: Duration) -> Result<Self, ChannelError> {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc > 0 {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).map_err(io_err("accept"))?;
                        return Self::from_stream(s, timeout);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_err("accept")(e)),
                }
            } else if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(io_err("accept")(e));
                }
            }
            if Instant::now() >= deadline {
                return Err(ChannelError::AcceptTimeout(timeout));
            }
        }
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, ChannelError> {
        let writer = stream.try_clone().map_err(io_err("connect"))?;
        writer
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io_err("connect"))?;
        Ok(Self {
            reader: LineReader::new(stream),
            writer,
            timeout,
            stats: ChannelStats::default(),
            hello: None,
            started: false,
        })
    }

    /// The default wait for answers.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Lines dropped so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// The guest's `hello`, once one was read.
    pub fn hello(&self) -> Option<&GuestHello> {
        self.hello.as_ref()
    }

    /// Round trip to the guest agent.
    pub fn ping(&mut self) -> Result<Duration, ChannelError> {
        let started = Instant::now();
        let id = next_id();
        self.send("ping", &Message::Ping { id })?;
        self.wait_for("ping", id, self.timeout, |m| match m {
            Message::Pong { id: got } if got == id => Some(()),
            _ => None,
        })?;
        Ok(started.elapsed())
    }

    /// Runs `argv` in the guest (killed after `timeout`), with `stdin` as its input if given.
    pub fn exec(
        &mut self,
        argv: &[String],
        timeout: Duration,
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput, ChannelError> {
        let id = next_id();
        self.send("exec", &exec_request(id, argv, timeout, stdin))?;
        let wait = timeout.saturating_add(EXEC_SLACK.max(self.timeout));
        let r = self.wait_for("exec", id, wait, |m| match m {
            Message::ExecResult(r) if r.id == id => Some(r),
            _ => None,
        })?;
        exec_output(r)
    }

    /// Runs one invocation of a function in the guest (its handler is stopped there after
    /// `timeout`).
    pub fn invoke(
        &mut self,
        handler: &InvokeHandler,
        body: &[u8],
        timeout: Duration,
    ) -> Result<InvokeOutput, ChannelError> {
        let id = next_id();
        self.send("invoke", &invoke_request(id, handler, body, timeout)?)?;
        let wait = timeout.saturating_add(EXEC_SLACK.max(self.timeout));
        let r = self.wait_for("invoke", id, wait, |m| match m {
            Message::InvokeResult(r) if r.id == id => Some(r),
            _ => None,
        })?;
        invoke_output(r)
    }

    /// Processes, sockets, load and memory of the guest.
    pub fn telemetry(&mut self) -> Result<GuestTelemetry, ChannelError> {
        let id = next_id();
        self.send("telemetry", &Message::TelemetryRequest { id })?;
        self.wait_for("telemetry", id, self.timeout, |m| match m {
            Message::Telemetry(t) if t.id == id => Some(t),
            _ => None,
        })
    }

    /// Asks the guest to stop its workload and power off (no answer is expected). Keep the
    /// channel open a moment afterwards: closing at once can race QEMU forwarding the line.
    pub fn shutdown(&mut self) -> Result<(), ChannelError> {
        self.send("shutdown", &Message::Shutdown)
    }

    fn send(&mut self, op: &'static str, msg: &Message) -> Result<(), ChannelError> {
        let line = encode_request(op, msg)?;
        if !self.started {
            // A virtio-serial port is one byte stream across host connections: end whatever
            // partial line an earlier client left, so our first request starts clean.
            self.started = true;
            self.writer.write_all(b"\n").map_err(io_err(op))?;
        }
        self.writer
            .write_all(&line)
            .and_then(|()| self.writer.flush())
            .map_err(io_err(op))
    }

    /// Reads lines until `pick` accepts one or the guest reports an error for `id`.
    fn wait_for<T>(
        &mut self,
        op: &'static str,
        id: u64,
        wait: Duration,
        mut pick: impl FnMut(Message) -> Option<T>,
    ) -> Result<T, ChannelError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout { op, after: wait });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .map_err(io_err(op))?;
            let line = match self.reader.read_line() {
                Ok(ReadLine::Line(line)) => line,
                Ok(ReadLine::TooLong) => {
                    self.stats.oversized += 1;
                    continue;
                }
                Ok(ReadLine::WouldBlock) => continue,
                Ok(ReadLine::Eof) => return Err(ChannelError::Closed { op }),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) => return Err(io_err(op)(e)),
            };
            match proto::decode(&line) {
                Ok(Decoded::Message(Message::Hello {
                    version,
                    vm_id,
                    capabilities,
                })) => {
                    self.hello = Some(GuestHello {
                        version,
                        vm_id,
                        capabilities,
                    });
                }
                Ok(Decoded::Message(Message::Error { id: got, message })) if got == id => {
                    return Err(ChannelError::Guest { op, message });
                }
                Ok(Decoded::Message(m)) => {
                    if let Some(v) = pick(m) {
                        return Ok(v);
                    }
                }
                Ok(Decoded::Unknown { .. }) => self.stats.unknown += 1,
                Err(DecodeError::TooLong { .. }) => self.stats.oversized += 1,
                Err(_) => self.stats.malformed += 1,
            }
        }
    }
}

/// The `exec` request for `argv` (shared by every transport of the channel).
pub(crate) fn exec_request(
    id: u64,
    argv: &[String],
    timeout: Duration,
    stdin: Option<&[u8]>,
) -> Message {
    Message::Exec {
        id,
        argv: argv.to_vec(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        stdin_b64: stdin.map(|s| STANDARD.encode(s)),
    }
}

/// Decodes the guest's answer to an `exec` (its output travels base64-encoded).
pub(crate) fn exec_output(r: ExecResult) -> Result<ExecOutput, ChannelError> {
    let decode = |s: &str| {
        STANDARD
            .decode(s)
            .map_err(|_| ChannelError::BadPayload { op: "exec" })
    };
    Ok(ExecOutput {
        exit_code: r.exit_code,
        stdout: decode(&r.stdout_b64)?,
        stderr: decode(&r.stderr_b64)?,
        truncated: r.truncated,
        timed_out: r.timed_out,
        duration_ms: r.duration_ms,
    })
}

/// The `invoke` request, refused if the body is over [`MAX_BODY`].
pub(crate) fn invoke_request(
    id: u64,
    handler: &InvokeHandler,
    body: &[u8],
    timeout: Duration,
) -> Result<Message, ChannelError> {
    if body.len() > MAX_BODY {
        return Err(ChannelError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    Ok(Message::Invoke {
        id,
        handler: proto_handler(handler),
        body_b64: STANDARD.encode(body),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Decodes the guest's answer to an `invoke`.
pub(crate) fn invoke_output(r: InvokeResult) -> Result<InvokeOutput, ChannelError> {
    let decode = |s: &str| {
        STANDARD
            .decode(s)
            .map_err(|_| ChannelError::BadPayload { op: "invoke" })
    };
    Ok(InvokeOutput {
        status: r.status,
        body: decode(&r.body_b64)?,
        stderr: decode(r.stderr_b64.as_deref().unwrap_or(""))?,
        exit_code: r.exit_code,
        error: r.error,
        duration_ms: r.duration_ms,
        timed_out: r.timed_out,
        truncated: r.truncated,
    })
}

/// One request line, refused if it does not fit the protocol's line limit.
pub(crate) fn encode_request(op: &'static str, msg: &Message) -> Result<Vec<u8>, ChannelError> {
    let line = proto::encode(msg);
    if line.len() > proto::MAX_LINE {
        return Err(ChannelError::TooLarge {
            op,
            len: line.len(),
            max: proto::MAX_LINE,
        });
    }
    Ok(line)
}

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ChannelError {
    move |source| ChannelError::Io { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// A fake guest on the other end of a socket pair: answers each request after sending noise.
    fn fake_guest(stream: UnixStream, noise: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            w.write_all(&proto::encode(&Message::Hello {
                version: 1,
                vm_id: "fake".into(),
                capabilities: vec!["exec".into()],
            }))
            .unwrap();
            let mut lines = BufReader::new(stream);
            let mut buf = String::new();
            while lines.read_line(&mut buf).unwrap_or(0) > 0 {
                if buf.trim().is_empty() {
                    buf.clear();
                    continue;
                }
                for n in &noise {
                    w.write_all(n).unwrap();
                }
                let answer = match proto::decode(buf.as_bytes()) {
                    Ok(Decoded::Message(Message::Ping { id })) => {
                        // An answer to someone else first.
                        w.write_all(&proto::encode(&Message::Pong { id: id + 1000 }))
                            .unwrap();
                        Some(Message::Pong { id })
                    }
                    Ok(Decoded::Message(Message::Exec { id, argv, .. })) => {
                        if argv[0] == "fail" {
                            Some(Message::Error {
                                id,
                                message: "nope".into(),
                            })
                        } else {
                            Some(Message::ExecResult(ExecResult {
                                id,
                                exit_code: 4,
                                stdout_b64: STANDARD.encode("hi\n"),
                                stderr_b64: STANDARD.encode("err\n"),
                                ..Default::default()
                            }))
                        }
                    }
                    Ok(Decoded::Message(Message::TelemetryRequest { id })) => {
                        Some(Message::Telemetry(GuestTelemetry {
                            id,
                            load1: 0.5,
                            ..Default::default()
                        }))
                    }
                    _ => None,
                };
                if let Some(a) = answer {
                    w.write_all(&proto::encode(&a)).unwrap();
                }
                buf.clear();
            }
        })
    }

    fn noise() -> Vec<Vec<u8>> {
        let mut huge = vec![b'x'; proto::MAX_LINE + 10];
        huge.push(b'\n');
        vec![
            b"not json at all\n".to_vec(),
            b"{\"v\":1,\"type\":\"exec_result\",\"id\":\"x\"}\n".to_vec(),
            b"\xff\xfe\n".to_vec(),
            huge,
            b"{\"v\":1,\"type\":\"from_the_future\",\"x\":1}\n".to_vec(),
            proto::encode(&Message::Heartbeat {
                seq: 1,
                uptime_ms: 5,
            }),
        ]
    }

    #[test]
    fn counts_and_drops_junk_and_still_gets_the_answer() {
        let (host, guest) = UnixStream::pair().unwrap();
        let fake = fake_guest(guest, noise());
        let mut ch = GuestChannel::from_stream(host, Duration::from_secs(5)).unwrap();
        ch.ping().unwrap();
        assert_eq!(
            ch.stats(),
            ChannelStats {
                malformed: 3,
                oversized: 1,
                unknown: 1
            }
        );
        assert_eq!(ch.hello().unwrap().vm_id, "fake");
        let out = ch
            .exec(&["sh".into()], Duration::from_secs(1), Some(b"x"))
            .unwrap();
        assert_eq!(
            (out.exit_code, &out.stdout[..], &out.stderr[..]),
            (4, &b"hi\n"[..], &b"err\n"[..])
        );
        assert_eq!(ch.telemetry().unwrap().load1, 0.5);
        let err = ch
            .exec(&["fail".into()], Duration::from_secs(1), None)
            .unwrap_err();
        assert!(matches!(err, ChannelError::Guest { ref message, .. } if message == "nope"));
        assert_eq!(ch.stats().malformed, 12);
        drop(ch);
        fake.join().unwrap();
    }

    #[test]
    fn a_silent_guest_times_out_and_a_closed_one_is_reported() {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut ch = GuestChannel::from_stream(host, Duration::from_millis(300)).unwrap();
        let started = Instant::now();
        assert!(matches!(ch.ping(), Err(ChannelError::Timeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(guest);
        assert!(matches!(
            ch.ping(),
            Err(ChannelError::Closed { .. } | ChannelError::Io { .. })
        ));
    }

    #[test]
    fn accepts_a_guest_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_1024");
        let listener = UnixListener::bind(&path).unwrap();
        assert!(matches!(
            GuestChannel::accept(&listener, Duration::from_millis(100)),
            Err(ChannelError::AcceptTimeout(_))
        ));
        let p2 = path.clone();
        let guest = std::thread::spawn(move || {
            let s = UnixStream::connect(&p2).unwrap();
            fake_guest(s, vec![]).join().unwrap();
        });
        let mut ch = GuestChannel::accept(&listener, Duration::from_secs(5)).unwrap();
        ch.ping().unwrap();
        assert_eq!(ch.stats(), ChannelStats::default());
        drop(ch);
        guest.join().unwrap();
    }

    #[test]
    fn connect_waits_for_the_socket_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestChannel::connect(&dir.path().join("none"), Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, ChannelError::Connect { .. }), "{err}");
        let ids: Vec<u64> = (0..3).map(|_| next_id()).collect();
        assert!(ids[0] != 0 && ids[1] == ids[0] + 1 && ids[2] == ids[1] + 1);
    }

    #[test]
    fn refuses_requests_over_the_line_limit() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let mut ch = GuestChannel::from_stream(host, Duration::from_millis(100)).unwrap();
        let big = vec![0u8; proto::MAX_LINE];
        assert!(matches!(
            ch.exec(&["cat".into()], Duration::from_secs(1), Some(&big)),
            Err(ChannelError::TooLarge { .. })
        ));
    }
}
