//! The routing core of the guest channel, shared by both backends: one persistent connection
//! per VM, a reader thread that routes answers to the requests waiting for them by request id,
//! so any number of requests (exec, invoke, telemetry, ping) are in flight on one VM at once.
//!
//! Where the connection comes from is the only difference between the backends:
//! - **listen** ([`Channels::ensure`], Firecracker): the guest connects to the host (CID 2) on
//!   vsock port 1024, and Firecracker forwards that connection to the Unix socket
//!   `vsock.sock_1024` in the VM's state directory, where a listener thread per VM accepts it
//!   (the guest reconnects after a snapshot restore resets its vsock transport); the newest
//!   connection is the channel. A request with no connection waits briefly for one.
//! - **connect** ([`Channels::ensure_connect`], QEMU): QEMU's chardev socket `guest.sock`
//!   serves one client at a time, so this process holds one connection to it per VM, made on
//!   the first request and made again on the next request after it dropped (the VMM exited,
//!   was restarted or restored). A request that could not be written on a dropped connection is
//!   written again on a fresh one (it never reached the guest).
//!
//! The reader thread keeps what the guest said (hello, ready, heartbeats) so the socket never
//! fills up. A request fails with [`ChannelError::Closed`] if its connection ends before the
//! answer, with [`ChannelError::Timeout`] if the answer does not come in time. Malformed,
//! oversized and unknown lines are dropped and counted ([`ChannelStatus::dropped`]).
//!
//! The channels live in the process that owns the runtime. After a restart the new runtime
//! listens (or connects) again.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use firefleet_guest::proto::{self, DecodeError, Decoded, LineReader, Message, ReadLine};

use super::{
    encode_request, exec_output, exec_request, invoke_output, invoke_request, io_err, next_id,
    ChannelError, ChannelStats, ExecOutput, GuestTelemetry, InvokeHandler, InvokeOutput,
    EXEC_SLACK,
};

/// How long a request waits for a guest connection when there is none (the guest may be
/// reconnecting after a restore, or to a listener bound again after a restart; QEMU may be
/// creating its socket).
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How long writing one request may block (the guest drains the pipe as it reads).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What is known about a VM's guest channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStatus {
    /// A guest connection is open now.
    pub connected: bool,
    /// Connections made or accepted since the channel was set up.
    pub connections: u64,
    /// The guest said hello on some connection.
    pub hello: bool,
    /// The guest said it is ready.
    pub ready: bool,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Lines dropped on all connections.
    pub dropped: ChannelStats,
}

/// The current connection's write half, tagged with its number.
#[derive(Debug)]
struct Conn {
    generation: u64,
    stream: UnixStream,
}

/// What a waiting request receives.
#[derive(Debug)]
enum Reply {
    /// The guest's answer (or its `error`) for the request's id.
    Answer(Message),
    /// The connection the request was written to ended.
    Closed,
}

/// A request waiting for its answer.
#[derive(Debug)]
struct Pending {
    /// The connection it was written to.
    generation: u64,
    tx: mpsc::Sender<Reply>,
}

/// Where a channel's connections come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The guest connects to this listening socket.
    Listen(PathBuf),
    /// This process connects to the socket.
    Connect(PathBuf),
}

#[derive(Debug)]
struct Shared {
    source: Source,
    stop: AtomicBool,
    writer: Mutex<Option<Conn>>,
    /// Requests by id. Lock order: `writer` before `pending`.
    pending: Mutex<HashMap<u64, Pending>>,
    connections: AtomicU64,
    hello: AtomicBool,
    ready: AtomicBool,
    heartbeats: AtomicU64,
    malformed: AtomicU64,
    oversized: AtomicU64,
    unknown: AtomicU64,
}

impl Shared {
    fn new(source: Source) -> Self {
        Self {
            source,
            stop: AtomicBool::new(false),
            writer: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            hello: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            heartbeats: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
        }
    }

    /// The socket to connect to, in connect mode.
    fn connect_path(&self) -> Option<&Path> {
        match &self.source {
            Source::Connect(p) => Some(p),
            Source::Listen(_) => None,
        }
    }

    /// Fails the requests written to connection `generation` (all of them if `None`).
    fn fail_pending(&self, generation: Option<u64>) {
        lock(&self.pending).retain(|_, p| {
            if generation.is_none_or(|g| g == p.generation) {
                let _ = p.tx.send(Reply::Closed);
                false
            } else {
                true
            }
        });
    }

    /// Hands an answer to the request waiting for it; answers nobody waits for (any more) are
    /// dropped.
    fn route(&self, id: u64, msg: Message) {
        if let Some(p) = lock(&self.pending).remove(&id) {
            let _ = p.tx.send(Reply::Answer(msg));
        }
    }

    fn dropped(&self) -> ChannelStats {
        ChannelStats {
            malformed: self.malformed.load(Ordering::SeqCst),
            oversized: self.oversized.load(Ordering::SeqCst),
            unknown: self.unknown.load(Ordering::SeqCst),
        }
    }

    /// Makes `stream` the current connection and starts its reader. `Err` if the stream cannot
    /// be set up (it is then dropped).
    fn install(self: &Arc<Self>, w: &mut Option<Conn>, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        if self.connect_path().is_some() {
            // A virtio-serial port is one byte stream across host connections: end whatever
            // partial line an earlier client left, so our first request starts clean.
            writer.write_all(b"\n")?;
        }
        let generation = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(old) = w.replace(Conn {
            generation,
            stream: writer,
        }) {
            if self.connect_path().is_some() {
                let _ = old.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        let s2 = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("guest-channel".into())
            .spawn(move || read_loop(stream, &s2, generation));
        if let Err(e) = spawned {
            *w = None;
            return Err(e);
        }
        Ok(())
    }

    /// The current connection, waiting up to `wait` for one (listen mode) or making one
    /// (connect mode).
    fn writer(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<MutexGuard<'_, Option<Conn>>, ChannelError> {
        let deadline = Instant::now() + wait;
        loop {
            let mut w = lock(&self.writer);
            if w.is_some() {
                return Ok(w);
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(ChannelError::Closed { op: "connect" });
            }
            if let Some(path) = self.connect_path() {
                let failed = match UnixStream::connect(path) {
                    Ok(s) => match self.install(&mut w, s) {
                        Ok(()) => return Ok(w),
                        Err(e) => e,
                    },
                    Err(e) => e,
                };
                let retry = matches!(
                    failed.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                );
                if !retry || Instant::now() >= deadline {
                    return Err(ChannelError::Connect {
                        path: path.to_path_buf(),
                        source: failed,
                    });
                }
            }
            drop(w);
            if Instant::now() >= deadline {
                return Err(ChannelError::AcceptTimeout(wait));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The guest channels of a set of VMs, each under a key the owner chooses (the VM id, or the
/// socket path where VMs of several runtimes may share the registry).
#[derive(Debug, Default)]
pub struct Channels {
    vms: Mutex<HashMap<String, Arc<Shared>>>,
}

impl Channels {
    /// Listens on `path` for the guest of `key` unless already listening there. A stale socket
    /// file (from a process that is gone) is replaced.
    pub fn ensure(&self, key: &str, path: &Path) -> io::Result<()> {
        let mut vms = lock(&self.vms);
        if let Some(s) = vms.get(key) {
            let same = s.source == Source::Listen(path.to_path_buf());
            if same && !s.stop.load(Ordering::SeqCst) && path.exists() {
                return Ok(());
            }
            stop(s);
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::new(Source::Listen(path.to_path_buf())));
        let s2 = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("vsock-{key}"))
            .spawn(move || accept_loop(&listener, &s2))?;
        vms.insert(key.to_string(), shared);
        Ok(())
    }

    /// Connects to `path` (on the first request, and again after the connection dropped) for
    /// the guest of `key`, unless already set up so.
    pub fn ensure_connect(&self, key: &str, path: &Path) {
        let mut vms = lock(&self.vms);
        if let Some(s) = vms.get(key) {
            if s.connect_path() == Some(path) && !s.stop.load(Ordering::SeqCst) {
                return;
            }
            stop(s);
        }
        let shared = Arc::new(Shared::new(Source::Connect(path.to_path_buf())));
        vms.insert(key.to_string(), shared);
    }

    /// Stops listening for `key` and closes its channel; requests in flight fail as closed.
    pub fn close(&self, key: &str) {
        if let Some(s) = lock(&self.vms).remove(key) {
            stop(&s);
        }
    }

    /// The channel's status (all false/zero when not set up).
    pub fn status(&self, key: &str) -> ChannelStatus {
        let Some(s) = self.shared(key) else {
            return ChannelStatus::default();
        };
        let connected = lock(&s.writer).is_some();
        ChannelStatus {
            connected,
            connections: s.connections.load(Ordering::SeqCst),
            hello: s.hello.load(Ordering::SeqCst),
            ready: s.ready.load(Ordering::SeqCst),
            heartbeats: s.heartbeats.load(Ordering::SeqCst),
            dropped: s.dropped(),
        }
    }

    /// Sends a message to the guest on its current connection (in connect mode, making one if
    /// needed); false if there is none or the write failed.
    pub fn send(&self, key: &str, msg: &Message) -> bool {
        let Some(shared) = self.shared(key) else {
            return false;
        };
        let wait = if shared.connect_path().is_some() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let Ok(mut w) = shared.writer(wait) else {
            return false;
        };
        let Some(conn) = w.as_mut() else {
            return false;
        };
        let ok = conn.stream.write_all(&proto::encode(msg)).is_ok();
        if !ok {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            *w = None;
        }
        ok
    }

    /// Round trip to the guest agent; waits up to `timeout` for the answer.
    pub fn ping(&self, key: &str, timeout: Duration) -> Result<Duration, ChannelError> {
        let started = Instant::now();
        let req = next_id();
        match self.request(key, "ping", req, &Message::Ping { id: req }, timeout)? {
            Message::Pong { .. } => Ok(started.elapsed()),
            _ => Err(other_kind("ping")),
        }
    }

    /// Runs `argv` in the guest (killed there after `timeout`), with `stdin` as its input if
    /// given. Waits for the answer up to `timeout` plus a margin for the transfer.
    pub fn exec(
        &self,
        key: &str,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, ChannelError> {
        let req = next_id();
        let msg = exec_request(req, argv, timeout, stdin);
        match self.request(key, "exec", req, &msg, timeout.saturating_add(EXEC_SLACK))? {
            Message::ExecResult(r) => exec_output(r),
            _ => Err(other_kind("exec")),
        }
    }

    /// Runs one invocation of a function in the guest (see [`crate::channel`]): its handler is
    /// stopped there after `timeout`; waits for the answer up to `timeout` plus a margin.
    pub fn invoke(
        &self,
        key: &str,
        handler: &InvokeHandler,
        body: &[u8],
        timeout: Duration,
    ) -> Result<InvokeOutput, ChannelError> {
        let req = next_id();
        let msg = invoke_request(req, handler, body, timeout)?;
        match self.request(key, "invoke", req, &msg, timeout.saturating_add(EXEC_SLACK))? {
            Message::InvokeResult(r) => invoke_output(r),
            _ => Err(other_kind("invoke")),
        }
    }

    /// The guest's processes, sockets, load and memory; waits up to `timeout` for the answer.
    pub fn telemetry(&self, key: &str, timeout: Duration) -> Result<GuestTelemetry, ChannelError> {
        let req = next_id();
        let msg = Message::TelemetryRequest { id: req };
        match self.request(key, "telemetry", req, &msg, timeout)? {
            Message::Telemetry(t) => Ok(t),
            _ => Err(other_kind("telemetry")),
        }
    }

    fn shared(&self, key: &str) -> Option<Arc<Shared>> {
        lock(&self.vms).get(key).map(Arc::clone)
    }

    /// Writes request `req` to the current connection (waiting briefly for one, or making one)
    /// and waits up to `wait` for the answer carrying its id. A guest `error` for it becomes
    /// [`ChannelError::Guest`].
    fn request(
        &self,
        key: &str,
        op: &'static str,
        req: u64,
        msg: &Message,
        wait: Duration,
    ) -> Result<Message, ChannelError> {
        let line = encode_request(op, msg)?;
        let Some(shared) = self.shared(key) else {
            // No channel is set up for this VM here: no connection will come.
            return Err(ChannelError::AcceptTimeout(Duration::ZERO));
        };
        let (tx, rx) = mpsc::channel();
        // In connect mode a write that fails on a connection that dropped unnoticed is tried
        // once more on a fresh one: the request never reached the guest.
        let attempts = if shared.connect_path().is_some() {
            2
        } else {
            1
        };
        for attempt in 1..=attempts {
            let mut w = shared.writer(CONNECT_WAIT.min(wait))?;
            let Some(conn) = w.as_mut() else {
                return Err(ChannelError::AcceptTimeout(Duration::ZERO));
            };
            // Registered before the write, so the answer cannot overtake the registration.
            lock(&shared.pending).insert(
                req,
                Pending {
                    generation: conn.generation,
                    tx: tx.clone(),
                },
            );
            match conn.stream.write_all(&line) {
                Ok(()) => break,
                Err(e) => {
                    lock(&shared.pending).remove(&req);
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    *w = None;
                    if attempt == attempts {
                        return Err(io_err(op)(e));
                    }
                }
            }
        }
        drop(tx);
        let reply = rx.recv_timeout(wait);
        // Whatever happened, the entry is gone or must go (a late answer is then dropped).
        lock(&shared.pending).remove(&req);
        match reply {
            Ok(Reply::Answer(Message::Error { message, .. })) => {
                Err(ChannelError::Guest { op, message })
            }
            Ok(Reply::Answer(m)) => Ok(m),
            Ok(Reply::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(ChannelError::Closed { op })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ChannelError::Timeout { op, after: wait }),
        }
    }
}

/// Stops a channel: its listener and reader threads end, its requests in flight fail.
fn stop(s: &Arc<Shared>) {
    s.stop.store(true, Ordering::SeqCst);
    if let Some(c) = lock(&s.writer).take() {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
    s.fail_pending(None);
}

fn other_kind(op: &'static str) -> ChannelError {
    ChannelError::Guest {
        op,
        message: "answered with another kind of message".into(),
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let mut w = lock(&shared.writer);
                let _ = shared.install(&mut w, stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn read_loop(stream: UnixStream, shared: &Arc<Shared>, generation: u64) {
    // Wake up now and then to notice that the channel was closed.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reader = LineReader::new(stream);
    while !shared.stop.load(Ordering::SeqCst) {
        match reader.read_line() {
            Ok(ReadLine::Line(line)) => handle_line(shared, &line),
            Ok(ReadLine::TooLong) => {
                shared.oversized.fetch_add(1, Ordering::SeqCst);
            }
            Ok(ReadLine::WouldBlock) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Ok(ReadLine::Eof) | Err(_) => break,
        }
    }
    // This connection ended: forget its writer unless a newer connection replaced it, and fail
    // the requests that were written to it (their answers cannot come any more).
    let mut w = lock(&shared.writer);
    if w.as_ref().is_some_and(|c| c.generation == generation) {
        *w = None;
    }
    shared.fail_pending(Some(generation));
}

/// One line from the guest: status, an answer to route, or junk to count.
fn handle_line(shared: &Shared, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match proto::decode(line) {
        Ok(Decoded::Message(m)) => {
            let answers = match &m {
                Message::Hello { .. } => {
                    shared.hello.store(true, Ordering::SeqCst);
                    None
                }
                Message::Ready => {
                    shared.ready.store(true, Ordering::SeqCst);
                    None
                }
                Message::Heartbeat { .. } => {
                    shared.heartbeats.fetch_add(1, Ordering::SeqCst);
                    None
                }
                Message::ExecResult(r) => Some(r.id),
                Message::InvokeResult(r) => Some(r.id),
                Message::Telemetry(t) => Some(t.id),
                Message::Pong { id } | Message::Error { id, .. } => Some(*id),
                _ => None,
            };
            if let Some(id) = answers {
                shared.route(id, m);
            }
        }
        Ok(Decoded::Unknown { .. }) => {
            shared.unknown.fetch_add(1, Ordering::SeqCst);
        }
        Err(DecodeError::TooLong { .. }) => {
            shared.oversized.fetch_add(1, Ordering::SeqCst);
        }
        Err(_) => {
            shared.malformed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::MAX_BODY;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use firefleet_guest::proto::ExecResult;
    use std::io::{BufRead, BufReader};

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A guest as Firecracker forwards it: a stream connected to the listening socket.
    struct FakeGuest {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl FakeGuest {
        fn connect(path: &Path) -> Self {
            let s = UnixStream::connect(path).unwrap();
            // A request that never arrives fails the test instead of hanging it.
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut g = Self {
                reader: BufReader::new(s.try_clone().unwrap()),
                writer: s,
            };
            g.send(&Message::Hello {
                version: 1,
                vm_id: "vm".into(),
                capabilities: vec!["exec".into(), "telemetry".into()],
            });
            g
        }

        fn send(&mut self, m: &Message) {
            self.writer.write_all(&proto::encode(m)).unwrap();
        }

        fn raw(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).unwrap();
        }

        /// The next request from the host.
        fn request(&mut self) -> Message {
            let mut line = String::new();
            loop {
                line.clear();
                assert!(
                    self.reader.read_line(&mut line).unwrap() > 0,
                    "host hung up"
                );
                if !line.trim().is_empty() {
                    break;
                }
            }
            match proto::decode(line.as_bytes()).unwrap() {
                Decoded::Message(m) => m,
                other => panic!("unexpected line {other:?}"),
            }
        }
    }

    /// Answers `exec` with its argv[0] as stdout, `telemetry_request` with load1 = 0.25.
    fn answer(req: &Message) -> Message {
        match req {
            Message::Exec { id, argv, .. } => Message::ExecResult(ExecResult {
                id: *id,
                exit_code: 7,
                stdout_b64: STANDARD.encode(&argv[0]),
                stderr_b64: STANDARD.encode("e"),
                duration_ms: 3,
                ..Default::default()
            }),
            Message::TelemetryRequest { id } => Message::Telemetry(GuestTelemetry {
                id: *id,
                load1: 0.25,
                ..Default::default()
            }),
            other => panic!("unexpected request {other:?}"),
        }
    }

    fn listening() -> (tempfile::TempDir, PathBuf, Arc<Channels>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_1024");
        let ch = Arc::new(Channels::default());
        ch.ensure("vm", &path).unwrap();
        (dir, path, ch)
    }

    fn argv(a: &str) -> Vec<String> {
        vec![a.to_string()]
    }

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn answers_are_routed_by_id_and_junk_is_counted() {
        let (_dir, path, ch) = listening();
        let mut guest = FakeGuest::connect(&path);
        // Two requests in flight at once; the guest answers the second first, after junk and
        // an answer nobody asked for.
        let ch1 = Arc::clone(&ch);
        let first = std::thread::spawn(move || ch1.exec("vm", &argv("first"), Some(b"in"), LONG));
        let r1 = guest.request();
        let ch2 = Arc::clone(&ch);
        let second = std::thread::spawn(move || ch2.telemetry("vm", LONG));
        let r2 = guest.request();
        assert!(
            matches!(r1, Message::Exec { ref stdin_b64, .. } if stdin_b64.as_deref() == Some("aW4="))
        );
        assert!(matches!(r2, Message::TelemetryRequest { .. }));
        let mut huge = vec![b'x'; proto::MAX_LINE + 10];
        huge.push(b'\n');
        guest.raw(b"not json at all\n");
        guest.raw(&huge);
        guest.raw(b"{\"v\":1,\"type\":\"from_the_future\"}\n");
        guest.raw(b"{\"v\":1,\"type\":\"exec_result\",\"id\":\"x\"}\n");
        guest.send(&Message::Pong { id: 12345 });
        guest.send(&answer(&r2));
        guest.send(&Message::Heartbeat {
            seq: 1,
            uptime_ms: 1,
        });
        guest.send(&answer(&r1));
        let t = second.join().unwrap().unwrap();
        assert_eq!(t.load1, 0.25);
        let out = first.join().unwrap().unwrap();
        assert_eq!(
            (
                out.exit_code,
                &out.stdout[..],
                &out.stderr[..],
                out.duration_ms
            ),
            (7, &b"first"[..], &b"e"[..], 3)
        );
        let st = ch.status("vm");
        assert_eq!(
            st.dropped,
            ChannelStats {
                malformed: 2,
                oversized: 1,
                unknown: 1
            },
            "{st:?}"
        );
        assert!(st.hello && st.connected && st.heartbeats == 1, "{st:?}");

        // A guest error for the request is the caller's error; bad base64 is refused.
        let ch3 = Arc::clone(&ch);
        let failing = std::thread::spawn(move || ch3.exec("vm", &argv("x"), None, LONG));
        let Message::Exec { id, .. } = guest.request() else {
            panic!("not an exec");
        };
        guest.send(&Message::Error {
            id,
            message: "no such program".into(),
        });
        let err = failing.join().unwrap().unwrap_err();
        assert!(
            matches!(err, ChannelError::Guest { ref message, .. } if message == "no such program"),
            "{err}"
        );
        let ch4 = Arc::clone(&ch);
        let bad = std::thread::spawn(move || ch4.exec("vm", &argv("x"), None, LONG));
        let Message::Exec { id, .. } = guest.request() else {
            panic!("not an exec");
        };
        guest.send(&Message::ExecResult(ExecResult {
            id,
            stdout_b64: "!!!".into(),
            ..Default::default()
        }));
        let err = bad.join().unwrap().unwrap_err();
        assert!(matches!(err, ChannelError::BadPayload { .. }), "{err}");
    }

    #[test]
    fn a_silent_guest_times_out_and_its_late_answer_is_dropped() {
        let (_dir, path, ch) = listening();
        let mut guest = FakeGuest::connect(&path);
        let ch1 = Arc::clone(&ch);
        let started = Instant::now();
        let waiting = std::thread::spawn(move || ch1.telemetry("vm", Duration::from_millis(300)));
        let late = guest.request();
        let err = waiting.join().unwrap().unwrap_err();
        assert!(matches!(err, ChannelError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The late answer is not taken for the next request's.
        guest.send(&answer(&late));
        let ch2 = Arc::clone(&ch);
        let next = std::thread::spawn(move || ch2.exec("vm", &argv("next"), None, LONG));
        let req = guest.request();
        guest.send(&answer(&req));
        assert_eq!(next.join().unwrap().unwrap().stdout, b"next");
        assert!(lock(&ch.shared("vm").unwrap().pending).is_empty());
    }

    #[test]
    fn a_connection_closed_mid_request_fails_it_at_once() {
        let (_dir, path, ch) = listening();
        let mut guest = FakeGuest::connect(&path);
        let ch1 = Arc::clone(&ch);
        let started = Instant::now();
        let waiting = std::thread::spawn(move || ch1.exec("vm", &argv("x"), None, LONG));
        let _ = guest.request();
        drop(guest);
        let err = waiting.join().unwrap().unwrap_err();
        assert!(matches!(err, ChannelError::Closed { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // No connection now: a request waits briefly for one, then says so.
        assert!(wait(|| !ch.status("vm").connected));
        let err = ch.telemetry("vm", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ChannelError::AcceptTimeout(_)), "{err}");
        // Nobody listens for an unknown VM: no wait at all.
        let started = Instant::now();
        let err = ch.exec("other", &argv("x"), None, LONG).unwrap_err();
        assert!(matches!(err, ChannelError::AcceptTimeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_millis(100));
        // Closing the listener fails a request in flight.
        let mut guest = FakeGuest::connect(&path);
        let ch2 = Arc::clone(&ch);
        let waiting = std::thread::spawn(move || ch2.telemetry("vm", LONG));
        let _ = guest.request();
        ch.close("vm");
        let err = waiting.join().unwrap().unwrap_err();
        assert!(matches!(err, ChannelError::Closed { .. }), "{err}");
    }

    #[test]
    fn requests_go_to_the_newest_connection() {
        let (_dir, path, ch) = listening();
        let mut old = FakeGuest::connect(&path);
        assert!(wait(|| ch.status("vm").connections == 1));
        let mut new = FakeGuest::connect(&path);
        assert!(wait(|| ch.status("vm").connections == 2));
        let ch1 = Arc::clone(&ch);
        let waiting = std::thread::spawn(move || ch1.exec("vm", &argv("new"), None, LONG));
        let req = new.request();
        // Nothing went to the old connection.
        old.writer
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = String::new();
        let err = old.reader.read_line(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{buf}");
        // The old connection going away does not fail a request on the new one.
        drop(old);
        std::thread::sleep(Duration::from_millis(100));
        new.send(&answer(&req));
        assert_eq!(waiting.join().unwrap().unwrap().stdout, b"new");
        assert!(ch.status("vm").connected);
    }

    #[test]
    fn accepts_the_guest_tracks_it_and_sends_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_1024");
        std::fs::write(&path, b"stale").unwrap();
        let ch = Channels::default();
        ch.ensure("vm", &path).unwrap();
        ch.ensure("vm", &path).unwrap(); // idempotent
        assert!(!ch.send("vm", &Message::Shutdown), "no guest yet");

        let mut guest = UnixStream::connect(&path).unwrap();
        guest.write_all(&proto::encode(&Message::Ready)).unwrap();
        assert!(wait(|| ch.status("vm").ready), "{:?}", ch.status("vm"));
        assert!(ch.status("vm").connected);
        assert!(ch.send("vm", &Message::Shutdown));
        let mut line = String::new();
        BufReader::new(&guest).read_line(&mut line).unwrap();
        assert_eq!(line.as_bytes(), proto::encode(&Message::Shutdown));

        drop(guest);
        assert!(wait(|| !ch.status("vm").connected));
        ch.close("vm");
        assert_eq!(ch.status("vm"), ChannelStatus::default());
    }

    /// A QEMU chardev as the host sees it: a listening socket serving one client at a time.
    fn chardev() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    fn accept(listener: &UnixListener) -> FakeGuest {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        FakeGuest {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    #[test]
    fn connect_mode_runs_requests_concurrently_and_reconnects() {
        let (_dir, path, listener) = chardev();
        let ch = Arc::new(Channels::default());
        ch.ensure_connect("vm", &path);
        ch.ensure_connect("vm", &path); // idempotent
        assert!(!ch.status("vm").connected, "connects on first use only");
        // Two invocations in flight on one connection, answered in reverse order.
        let handler = InvokeHandler::Command {
            argv: vec!["cat".into()],
        };
        let calls: Vec<_> = ["one", "two"]
            .into_iter()
            .map(|body| {
                let (ch, handler) = (Arc::clone(&ch), handler.clone());
                std::thread::spawn(move || ch.invoke("vm", &handler, body.as_bytes(), LONG))
            })
            .collect();
        let mut guest = accept(&listener);
        let mut requests = vec![guest.request(), guest.request()];
        requests.reverse();
        for r in &requests {
            let Message::Invoke { id, body_b64, .. } = r else {
                panic!("not an invoke: {r:?}");
            };
            guest.send(&Message::InvokeResult(proto::InvokeResult {
                id: *id,
                status: 200,
                body_b64: body_b64.clone(),
                exit_code: Some(0),
                ..Default::default()
            }));
        }
        let mut bodies: Vec<Vec<u8>> = calls
            .into_iter()
            .map(|c| c.join().unwrap().unwrap().body)
            .collect();
        bodies.sort();
        assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(ch.status("vm").connections, 1);

        // The VMM goes away (restart, restore): a request in flight fails as closed, the next
        // one connects again.
        let ch1 = Arc::clone(&ch);
        let waiting = std::thread::spawn(move || ch1.telemetry("vm", LONG));
        let _ = guest.request();
        drop(guest);
        let err = waiting.join().unwrap().unwrap_err();
        assert!(matches!(err, ChannelError::Closed { .. }), "{err}");
        let ch2 = Arc::clone(&ch);
        let next = std::thread::spawn(move || ch2.exec("vm", &argv("again"), None, LONG));
        let mut guest = accept(&listener);
        let req = guest.request();
        guest.send(&answer(&req));
        assert_eq!(next.join().unwrap().unwrap().stdout, b"again");
        assert_eq!(ch.status("vm").connections, 2);
        assert!(ch.send("vm", &Message::Shutdown));
        assert!(matches!(guest.request(), Message::Shutdown));

        // Too large a body is refused before anything is sent.
        let err = ch
            .invoke("vm", &handler, &vec![0; MAX_BODY + 1], LONG)
            .unwrap_err();
        assert!(err.to_string().contains("32768-byte limit"), "{err}");

        // Nothing listens: a connect error naming the socket, after a short wait.
        drop(guest);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        assert!(wait(|| !ch.status("vm").connected));
        let err = ch.ping("vm", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, ChannelError::Connect { .. }), "{err}");
        ch.close("vm");
        assert_eq!(ch.status("vm"), ChannelStatus::default());
    }
}
