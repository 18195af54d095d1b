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
