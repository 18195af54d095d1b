//! The guest end of the channel, served by one thread for the guest's whole life.
//!
//! It finds a pipe ([`transport`]), greets every new host connection with `hello` + `ready`,
//! sends a heartbeat each second while a host is connected, answers `ping` and
//! `telemetry_request` itself, hands `exec` to [`exec`] and `invoke` to [`invoke`] (each runs
//! in a thread of its own, whose answer comes back on a queue) and turns `shutdown` into a
//! stop event for PID 1. The host may connect, disconnect and reconnect
//! at any time: on a hang-up the thread forgets partial input and waits in `poll`/`sleep`
//! (never spinning); it never blocks PID 1, which only talks to it through queues.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use firefleet_guest::proto::{
    self, Decoded, LineReader, Message, ReadLine, GUEST_CAPABILITIES, PROTO_VERSION,
};

use crate::transport::{self, Kind, Link, Written};
use crate::{exec, invoke, telemetry, warn, Event};

/// What PID 1 asks of the channel thread.
pub enum Outgoing {
    /// Report the workload's exit code.
    Exited(i32),
    /// Acknowledge once queued messages were written (or could not be).
    Flush(Sender<()>),
}

/// How long to look for the virtio-serial port before trying vsock as well.
const SERIAL_FIRST: Duration = Duration::from_secs(2);
/// Most messages kept while no host is connected.
const MAX_PENDING: usize = 64;
/// Most lines handled per wake-up (a flooding host cannot starve heartbeats and answers).
const MAX_LINES_PER_ROUND: usize = 256;
/// How long an answer may wait for room in the pipe.
const WRITE_PATIENCE: Duration = Duration::from_secs(2);
/// Cap on an exec timeout.
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Starts the channel thread; PID 1 keeps the returned sender.
pub fn spawn(events: Sender<Event>, start: Instant, vm_id: String) -> Sender<Outgoing> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("channel".into())
        .spawn(move || Channel::new(events, rx, start, vm_id).run());
    if let Err(e) = spawned {
        warn("starting the channel thread", e);
    }
    tx
}

/// Counters of lines the guest dropped.
#[derive(Debug, Default)]
struct Dropped {
    malformed: u64,
    oversized: u64,
    unknown: u64,
}

struct Channel {
    events: Sender<Event>,
    outgoing: Receiver<Outgoing>,
    replies_tx: exec::Replies,
    replies: Receiver<Message>,
    /// Signalled by workers after queuing an answer (an eventfd; none if it could not be made).
    wake: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    start: Instant,
    vm_id: String,
    reader: Option<LineReader<Link>>,
    connected: bool,
    pending: Vec<Message>,
    acks: Vec<Sender<()>>,
    heartbeat_seq: u64,
    last_heartbeat: Instant,
    dropped: Dropped,
    searching_since: Instant,
    backoff: Duration,
}

impl Channel {
    fn new(
        events: Sender<Event>,
        outgoing: Receiver<Outgoing>,
        start: Instant,
        vm_id: String,
    ) -> Self {
        let (replies_tx, replies) = mpsc::channel();
        // SAFETY: eventfd(2) returns a new descriptor we then own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        let wake = (fd >= 0).then(|| {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            std::sync::Arc::new(unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            })
        });
        Self {
            events,
            outgoing,
            replies_tx: exec::Replies::new(replies_tx, wake.clone()),
            replies,
            wake,
            start,
            vm_id,
            reader: None,
            connected: false,
            pending: Vec::new(),
            acks: Vec::new(),
            heartbeat_seq: 0,
            last_heartbeat: Instant::now(),
            dropped: Dropped::default(),
            searching_since: Instant::now(),
            backoff: Duration::from_millis(100),
        }
    }

    fn run(mut self) {
        loop {
            self.take_queued();
            if self.reader.is_none() && !self.open() {
                self.ack_flushes();
                std::thread::sleep(self.backoff);
                continue;
            }
            self.serve_once();
            self.ack_flushes();
        }
    }

    fn take_queued(&mut self) {
        while let Ok(msg) = self.outgoing.try_recv() {
            match msg {
                Outgoing::Exited(code) => self.queue(Message::Exited { code }),
                Outgoing::Flush(ack) => self.acks.push(ack),
            }
        }
        while let Ok(msg) = self.replies.try_recv() {
            self.queue(msg);
        }
    }

    fn queue(&mut self, msg: Message) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push(msg);
    }

    /// Acknowledges flush requests: queued messages were written, or there is no host to take
    /// them.
    fn ack_flushes(&mut self) {
        if self.pending.is_empty() || !self.connected {
            for ack in self.acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    /// Opens a pipe: the serial port if there is one, else (after a while) vsock, with backoff.
    fn open(&mut self) -> bool {
        let link = if let Some(path) = transport::find_serial_port() {
            match transport::open_serial(&path) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn(&format!("opening {}", path.display()), e);
                    None
                }
            }
        } else if self.searching_since.elapsed() >= SERIAL_FIRST && transport::vsock_available() {
            transport::connect_vsock(transport::VSOCK_PORT).ok()
        } else {
            None
        };
        match link {
            Some(link) => {
                if link.kind == Kind::Vsock {
                    // A connection is a connected host.
                    self.connected = false;
                }
                self.reader = Some(LineReader::new(link));
                self.backoff = Duration::from_millis(100);
                true
            }
            None => {
                self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                false
            }
        }
    }

    fn close(&mut self) {
        self.reader = None;
        self.connected = false;
        self.searching_since = Instant::now();
    }

    fn kind(&self) -> Option<Kind> {
        self.reader.as_ref().map(|r| r.get_ref().kind)
    }

    /// The host went away: serial ports stay open (forget partial input), vsock reconnects.
    fn hung_up(&mut self) {
        match self.kind() {
            Some(Kind::Serial) => {
                self.connected = false;
                if let Some(r) = self.reader.as_mut() {
                    r.reset();
                }
            }
            _ => self.close(),
        }
    }

    fn serve_once(&mut self) {
        let Some(reader) = self.reader.as_ref() else {
            return;
        };
        let wake = self.wake.as_deref().map(std::os::fd::AsRawFd::as_raw_fd);
        let ready = reader.get_ref().poll(100, wake);
        if ready.hangup && !ready.readable {
            self.hung_up();
            self.ack_flushes();
            // poll returns at once while hung up: wait here instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        if !self.connected && !ready.hangup {
            self.connected = true;
            self.greet();
        }
        if ready.readable {
            self.read_lines();
            if self.reader.is_none() || !self.connected {
                return;
            }
        }
        self.take_queued();
        if self.last_heartbeat.elapsed() >= Duration::from_secs(1) {
            self.last_heartbeat = Instant::now();
            self.heartbeat_seq += 1;
            let msg = Message::Heartbeat {
                seq: self.heartbeat_seq,
                uptime_ms: millis(self.start.elapsed()),
            };
            // Best effort: a host that is not reading must not stall the thread.
            self.write(&msg, Duration::ZERO);
        }
        let pending = std::mem::take(&mut self.pending);
        let mut rest = pending.into_iter();
        for msg in rest.by_ref() {
            if self.write(&msg, WRITE_PATIENCE) == Written::Nothing {
                self.pending.push(msg);
                break;
            }
        }
        self.pending.extend(rest);
    }

    fn greet(&mut self) {
        let hello = Message::Hello {
            version: PROTO_VERSION,
            vm_id: self.vm_id.clone(),
            capabilities: GUEST_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        };
        self.write(&hello, WRITE_PATIENCE);
        self.write(&Message::Ready, WRITE_PATIENCE);
    }

    fn write(&mut self, msg: &Message, patience: Duration) -> Written {
        let line = proto::encode(msg);
        match self.reader.as_mut() {
            Some(r) => r.get_mut().write_line(&line, patience),
            None => Written::Nothing,
        }
    }

    fn read_lines(&mut self) {
        for _ in 0..MAX_LINES_PER_ROUND {
            let Some(reader) = self.reader.as_mut() else {
                return;
            };
            match reader.read_line() {
                Ok(ReadLine::Line(line)) => self.handle_line(&line),
                Ok(ReadLine::TooLong) => self.drop_line("oversized", "line too long"),
                Ok(ReadLine::WouldBlock) => return,
                Ok(ReadLine::Eof) => return self.hung_up(),
                Err(e) => {
                    warn("reading the channel", e);
                    return self.close();
                }
            }
        }
    }

    fn drop_line(&mut self, kind: &str, why: impl std::fmt::Display) {
        let d = &mut self.dropped;
        let n = match kind {
            "oversized" => {
                d.oversized += 1;
                d.oversized
            }
            "unknown" => {
                d.unknown += 1;
                d.unknown
            }
            _ => {
                d.malformed += 1;
                d.malformed
            }
        };
        if n <= 5 || n.is_power_of_two() {
            warn(&format!("dropped {kind} channel line #{n}"), why);
        }
    }

    fn handle_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return; // separators the host sends to end a stale partial line
        }
        match proto::decode(line) {
            Ok(Decoded::Message(msg)) => self.handle(msg),
            Ok(Decoded::Unknown { kind }) => self.drop_line("unknown", kind),
            Err(e) => {
                let kind = match e {
                    proto::DecodeError::TooLong { .. } => "oversized",
                    _ => "malformed",
                };
                // A request we cannot read still gets an answer if it has an id.
                if let Some(id) = request_id(line) {
                    self.queue(Message::Error {
                        id,
                        message: format!("bad request: {e}"),
                    });
                }
                self.drop_line(kind, e);
            }
        }
    }

    fn handle(&mut self, msg: Message) {
        match msg {
            Message::Ping { id } => self.queue(Message::Pong { id }),
            Message::TelemetryRequest { id } => self.queue(Message::Telemetry(telemetry::collect(
                id,
                std::path::Path::new("/proc"),
            ))),
            Message::Exec {
                id,
                argv,
                timeout_ms,
                stdin_b64,
            } => {
                let timeout = Duration::from_millis(timeout_ms.max(1)).min(MAX_EXEC_TIMEOUT);
                exec::spawn_exec(id, argv, timeout, stdin_b64, self.replies_tx.clone());
            }
            Message::Invoke {
                id,
                handler,
                body_b64,
                timeout_ms,
            } => {
                let timeout = Duration::from_millis(timeout_ms.max(1)).min(MAX_EXEC_TIMEOUT);
                invoke::spawn_invoke(id, handler, body_b64, timeout, self.replies_tx.clone());
            }
            Message::Shutdown => {
                let _ = self.events.send(Event::Shutdown);
            }
            // Guest -> host kinds echoed back at us: nothing to do.
            Message::Hello { .. }
            | Message::Ready
            | Message::Heartbeat { .. }
            | Message::Exited { .. }
            | Message::ExecResult(_)
            | Message::InvokeResult(_)
            | Message::Telemetry(_)
            | Message::Pong { .. }
            | Message::Error { .. } => {}
        }
    }
}

/// The `id` of a request line that did not decode, if it has one.
fn request_id(line: &[u8]) -> Option<u64> {
    if line.len() > proto::MAX_LINE {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let kind = v.get("type")?.as_str()?;
    matches!(kind, "exec" | "telemetry_request" | "ping" | "invoke")
        .then(|| v.get("id")?.as_u64())
        .flatten()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_of_bad_requests() {
        assert_eq!(request_id(br#"{"v":1,"type":"exec","id":7}"#), Some(7));
        assert_eq!(request_id(br#"{"v":1,"type":"ready","id":7}"#), None);
        assert_eq!(request_id(b"junk"), None);
    }
}
