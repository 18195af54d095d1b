//! The host end of the guest channel over vsock.
//!
//! The guest connects to the host (CID 2) on port 1024; Firecracker forwards that connection
//! to the Unix socket `vsock.sock_1024` in the VM's state directory, where this module listens.
//! A listener thread per VM accepts connections (the guest reconnects after a snapshot restore
//! resets its vsock transport); the newest connection is the channel. Its reader thread keeps
//! what the guest said (hello, ready, heartbeats) so the socket never fills up, and the write
//! half is kept for host-to-guest messages (shutdown).
//!
//! The listener lives in the process that owns the runtime. After a restart the new runtime
//! binds it again (`ensure`), and the guest's reconnect loop finds it.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use firefleet_guest::proto::{self, Decoded, LineReader, Message, ReadLine};

/// What is known about a VM's guest channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStatus {
    /// A guest connection is open now.
    pub connected: bool,
    /// Connections accepted since the listener started.
    pub connections: u64,
    /// The guest said hello on some connection.
    pub hello: bool,
    /// The guest said it is ready.
    pub ready: bool,
    /// Heartbeats received.
    pub heartbeats: u64,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    writer: Mutex<Option<UnixStream>>,
    connections: AtomicU64,
    hello: AtomicBool,
    ready: AtomicBool,
    heartbeats: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listeners of all VMs of one runtime.
#[derive(Debug, Default)]
pub struct Channels {
    vms: Mutex<HashMap<String, (PathBuf, Arc<Shared>)>>,
}

impl Channels {
    /// Listens on `path` for VM `id` unless already listening there. A stale socket file (from
    /// a process that is gone) is replaced.
    pub fn ensure(&self, id: &str, path: &Path) -> io::Result<()> {
        let mut vms = lock(&self.vms);
        if let Some((p, s)) = vms.get(id) {
            if p == path && !s.stop.load(Ordering::SeqCst) && path.exists() {
                return Ok(());
            }
            s.stop.store(true, Ordering::SeqCst);
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let s2 = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("vsock-{id}"))
            .spawn(move || accept_loop(&listener, &s2))?;
        vms.insert(id.to_string(), (path.to_path_buf(), shared));
        Ok(())
    }

    /// Stops listening for `id` and closes its channel.
    pub fn close(&self, id: &str) {
        if let Some((_, s)) = lock(&self.vms).remove(id) {
            s.stop.store(true, Ordering::SeqCst);
            if let Some(w) = lock(&s.writer).take() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The channel's status (all false/zero when not listening).
    pub fn status(&self, id: &str) -> ChannelStatus {
        let Some(s) = lock(&self.vms).get(id).map(|(_, s)| Arc::clone(s)) else {
            return ChannelStatus::default();
        };
        let connected = lock(&s.writer).is_some();
        ChannelStatus {
            connected,
            connections: s.connections.load(Ordering::SeqCst),
            hello: s.hello.load(Ordering::SeqCst),
            ready: s.ready.load(Ordering::SeqCst),
            heartbeats: s.heartbeats.load(Ordering::SeqCst),
        }
    }

    /// Sends a message to the guest on its current connection; false if there is none or the
    /// write failed.
    pub fn send(&self, id: &str, msg: &Message) -> bool {
        let shared = match lock(&self.vms).get(id) {
            Some((_, s)) => Arc::clone(s),
            None => return false,
        };
        let mut w = lock(&shared.writer);
        let Some(stream) = w.as_mut() else {
            return false;
        };
        let ok = stream.write_all(&proto::encode(msg)).is_ok();
        if !ok {
            *w = None;
        }
        ok
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let Ok(writer) = stream.try_clone() else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let generation = shared.connections.load(Ordering::SeqCst);
                *lock(&shared.writer) = Some(writer);
                let s2 = Arc::clone(shared);
                let _ = std::thread::Builder::new()
                    .name("vsock-reader".into())
                    .spawn(move || read_loop(stream, &s2, generation));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn read_loop(stream: UnixStream, shared: &Arc<Shared>, generation: u64) {
    // Wake up now and then to notice that the listener was closed.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reader = LineReader::new(stream);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match reader.read_line() {
            Ok(ReadLine::Line(line)) => match proto::decode(&line) {
                Ok(Decoded::Message(Message::Hello { .. })) => {
                    shared.hello.store(true, Ordering::SeqCst);
                }
                Ok(Decoded::Message(Message::Ready)) => shared.ready.store(true, Ordering::SeqCst),
                Ok(Decoded::Message(Message::Heartbeat { .. })) => {
                    shared.heartbeats.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            },
            Ok(ReadLine::WouldBlock | ReadLine::TooLong) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Ok(ReadLine::Eof) | Err(_) => break,
        }
    }
    // This connection ended; forget its writer unless a newer connection replaced it.
    if shared.connections.load(Ordering::SeqCst) == generation {
        *lock(&shared.writer) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
