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
mod tests;
