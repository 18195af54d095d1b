//! Function invocations end to end: real guests under QEMU (TCG here), [`Runtime::invoke`] over
//! the runtime's shared guest channel, command and HTTP handlers, concurrency on one VM, and
//! clones restored from one snapshot. Boots are serialised (`firefleet_testkit::vmm::serial`).

// Test helpers outside #[test] fns: clippy.toml's allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use firefleet_testkit::vmm::*;
use firefleet_vmm::channel::{ChannelError, MAX_BODY};
use firefleet_vmm::{InvokeHandler, InvokeOutput, QemuRuntime, Runtime, VmmError};

const TIMEOUT: Duration = Duration::from_secs(20);

fn sh(script: &str) -> InvokeHandler {
    InvokeHandler::Command {
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

/// Waits until the guest answers on its channel (the first answer proves the agent found its
/// port).
fn wait_answering(rt: &QemuRuntime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rt.ping(id) {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no pong: {e}; console:\n{}",
                console_text(rt, id)
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn boot(rt: &QemuRuntime, id: &str, cmd: Option<Vec<String>>) -> VmGuard {
    let guard = launch(rt, id, cmd);
    wait_for("ready", Duration::from_secs(60), rt, id, || {
        rt.observe(id).unwrap().guest_ready
    });
    wait_answering(rt, id);
    guard
}

fn invoke(rt: &QemuRuntime, id: &str, handler: &InvokeHandler, body: &[u8]) -> InvokeOutput {
    rt.invoke(id, handler, body, TIMEOUT)
        .unwrap_or_else(|e| panic!("invoke on {id}: {e:?}; console:\n{}", console_text(rt, id)))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn command_handler_answers_fails_times_out_and_runs_concurrently() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _g = boot(&rt, "fn-cmd", None);
    let id = "fn-cmd";

    // The body on stdin, stdout the response.
    let out = invoke(&rt, id, &sh("read x; echo hello-$x"), b"world\n");
    assert_eq!(
        (out.status, text(&out.body), out.exit_code),
        (200, "hello-world\n".into(), Some(0)),
        "{out:?}"
    );
    assert!(
        !out.timed_out && !out.truncated && out.error.is_none(),
        "{out:?}"
    );
    // A failing command: 500 with its stderr.
    let out = invoke(&rt, id, &sh("echo partial; echo oops >&2; exit 3"), b"");
    assert_eq!(
        (
            out.status,
            text(&out.body),
            text(&out.stderr),
            out.exit_code
        ),
        (500, "partial\n".into(), "oops\n".into(), Some(3)),
        "{out:?}"
    );
    // A missing program: 500 with an error saying so.
    let out = invoke(
        &rt,
        id,
        &InvokeHandler::Command {
            argv: vec!["no-such-handler".into()],
        },
        b"",
    );
    assert_eq!(out.status, 500, "{out:?}");
    assert!(
        out.error
            .as_deref()
            .is_some_and(|e| e.contains("no-such-handler: not found")),
        "{out:?}"
    );
    // Past its timeout: killed with its process group, 504, what it wrote so far.
    let started = Instant::now();
    let out = rt
        .invoke(
            id,
            &sh("echo started; sleep 30 & wait"),
            b"",
            Duration::from_secs(1),
        )
        .unwrap();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(
        (out.status, text(&out.body), out.exit_code),
        (504, "started\n".into(), Some(137)),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // No sleep was left behind by the killed handler.
    let ps = invoke(&rt, id, &sh("ps | grep -c '[s]leep 30' || true"), b"");
    assert_eq!(text(&ps.body).trim(), "0", "{ps:?}");

    // A response over the limit is cut and flagged; a request over it is refused on the host.
    let out = invoke(&rt, id, &sh("head -c 100000 /dev/zero"), b"");
    assert!(
        out.truncated && out.body.len() == MAX_BODY,
        "{}",
        out.body.len()
    );
    let err = rt
        .invoke(id, &sh("cat"), &vec![b'x'; MAX_BODY + 1], TIMEOUT)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmmError::Channel {
                source: ChannelError::BodyTooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    let out = invoke(&rt, id, &sh("wc -c"), &vec![b'x'; MAX_BODY]);
    assert_eq!(text(&out.body).trim(), MAX_BODY.to_string(), "{out:?}");

    // Nothing listens on the port: a clear error naming it.
    let out = invoke(
        &rt,
        id,
        &InvokeHandler::Http {
            port: 8080,
            path: "/".into(),
        },
        b"x",
    );
    assert_eq!(out.status, 502, "{out:?}");
    let e = out.error.clone().unwrap_or_default();
    assert!(
        e.contains("connection refused") && e.contains("8080"),
        "{out:?}"
    );

    // Four invocations at once on one VM, with exec and telemetry alongside on the same channel:
    // each reports when it started and ended on the guest's clock, and all four were running
    // at the same moment (every start before every end).
    let rt = Arc::new(rt);
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || {
                let h = sh("read a _ < /proc/uptime; sleep 1; read b _ < /proc/uptime; echo $a $b");
                (i, rt.invoke(id, &h, b"", TIMEOUT))
            })
        })
        .collect();
    let rt2 = Arc::clone(&rt);
    let side = std::thread::spawn(move || {
        let e = rt2.exec(id, &["echo".into(), "side".into()], None, TIMEOUT);
        let t = rt2.telemetry(id);
        (e, t)
    });
    let mut spans = Vec::new();
    for c in calls {
        let (i, out) = c.join().unwrap();
        let out = out.unwrap();
        assert_eq!(out.status, 200, "call {i}: {out:?}");
        let t: Vec<f64> = text(&out.body)
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(t.len(), 2, "call {i}: {out:?}");
        spans.push((t[0], t[1]));
    }
    let elapsed = started.elapsed();
    let (e, t) = side.join().unwrap();
    assert_eq!(e.unwrap().stdout, b"side\n");
    assert!(!t.unwrap().processes.is_empty());
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    eprintln!("4 concurrent 1 s invocations: {spans:?}, {elapsed:?} on the host");
    assert!(
        last_start < first_end,
        "the invocations did not overlap in the guest: {spans:?}"
    );
    let status = rt.channel_status(id);
    assert_eq!(status.connections, 1, "one shared connection: {status:?}");

    // Stopping with a grace period asks the guest over the same channel: it powers off.
    rt.stop(id, Duration::from_secs(20)).unwrap();
    assert!(
        rt.observe(id).unwrap().powered_off,
        "{}",
        console_text(&rt, id)
    );
    rt.remove(id).unwrap();
    assert!(qemu_pids_for(id).is_empty());
}

/// The function's workload: busybox httpd on port 8080 with two CGI handlers, `fn` (answers
/// `hello-<body> from <the VM's mark>`) and `busy` (a 503 with a Content-Length).
fn http_workload() -> Option<Vec<String>> {
    let hello = "#!/bin/sh\nbody=$(head -c \"$CONTENT_LENGTH\")\n\
                 printf 'Content-Type: text/plain\\r\\n\\r\\nhello-%s from %s' \
                 \"$body\" \"$(cat /tmp/mark 2>/dev/null)\"\n";
    let busy = "#!/bin/sh\nprintf 'HTTP/1.1 503 Busy\\r\\nContent-Length: 4\\r\\n\\r\\nbusy'\n";
    let setup = "mkdir -p /tmp/www/cgi-bin && printf '%s' \"$1\" > /tmp/www/cgi-bin/fn && \
                 printf '%s' \"$2\" > /tmp/www/cgi-bin/busy && chmod +x /tmp/www/cgi-bin/* && \
                 exec httpd -f -p 8080 -h /tmp/www";
    Some(vec![
        "sh".into(),
        "-c".into(),
        setup.into(),
        "sh".into(),
        hello.into(),
        busy.into(),
    ])
}

fn http(path: &str) -> InvokeHandler {
    InvokeHandler::Http {
        port: 8080,
        path: path.into(),
    }
}

/// Name -> (size, modification time) of every file in `dir`.
fn listing(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), m.modified().unwrap()),
            )
        })
        .collect()
}

#[test]
fn http_workload_answers_and_clones_restored_from_one_snapshot_answer_too() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _ga = boot(&rt, "fn-a", http_workload());
    // The workload needs a moment to listen after the guest is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = invoke(&rt, "fn-a", &http("/cgi-bin/fn"), b"first");
        if out.status != 502 || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (out.status, text(&out.body)),
        (200, "hello-first from ".into()),
        "{out:?}"
    );
    assert!(out.error.is_none() && out.exit_code.is_none(), "{out:?}");
    let out = invoke(&rt, "fn-a", &http("/cgi-bin/busy"), b"");
    assert_eq!(
        (out.status, text(&out.body)),
        (503, "busy".into()),
        "{out:?}"
    );
    let out = invoke(&rt, "fn-a", &http("/no-such-thing"), b"");
    assert!(out.status >= 400 && out.error.is_none(), "{out:?}");

    // The template: a snapshot of the running instance, restored as two new VMs at once.
    let info = rt.snapshot("fn-a", "template", false).unwrap();
    let before = listing(&info.dir);
    let rt = Arc::new(rt);
    let guards: Vec<VmGuard> = ["fn-b", "fn-c"]
        .iter()
        .map(|id| VmGuard {
            rt: (*rt).clone(),
            id: id.to_string(),
        })
        .collect();
    let restores: Vec<_> = ["fn-b", "fn-c"]
        .into_iter()
        .map(|id| {
            let (rt, dir) = (Arc::clone(&rt), info.dir.clone());
            std::thread::spawn(move || rt.restore(&launch_config(id, http_workload()), &dir))
        })
        .collect();
    let procs: Vec<_> = restores
        .into_iter()
        .map(|r| r.join().unwrap().unwrap())
        .collect();
    assert_ne!(procs[0].pid, procs[1].pid);
    assert_ne!(procs[0].state_dir, procs[1].state_dir);
    for p in &procs {
        assert!(p.state_dir.join("guest.sock").exists(), "{p:?}");
        assert!(p.state_dir.starts_with(root.path()), "{p:?}");
    }
    assert_eq!(
        listing(&info.dir),
        before,
        "a restore must not touch the snapshot"
    );

    // Each clone is its own VM: mark them apart, then invoke both at once.
    for id in ["fn-b", "fn-c"] {
        let mark = format!("echo {id} > /tmp/mark");
        let out = invoke(&rt, id, &sh(&mark), b"");
        assert_eq!(out.status, 200, "{id}: {out:?}");
    }
    let calls: Vec<_> = ["fn-b", "fn-c"]
        .into_iter()
        .map(|id| {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || {
                (
                    id,
                    rt.invoke(id, &http("/cgi-bin/fn"), id.as_bytes(), TIMEOUT),
                )
            })
        })
        .collect();
    for c in calls {
        let (id, out) = c.join().unwrap();
        let out = out.unwrap();
        assert_eq!(
            (out.status, text(&out.body)),
            (200, format!("hello-{id} from {id}")),
            "{id}: {out:?}"
        );
    }
    // The source runs on, unmarked.
    let out = invoke(&rt, "fn-a", &http("/cgi-bin/fn"), b"again");
    assert_eq!(
        (out.status, text(&out.body)),
        (200, "hello-again from ".into()),
        "{out:?}"
    );
    assert_eq!(listing(&info.dir), before);

    for id in ["fn-a", "fn-b", "fn-c"] {
        rt.stop(id, Duration::ZERO).unwrap();
        rt.remove(id).unwrap();
        assert!(qemu_pids_for(id).is_empty(), "{id}");
    }
    drop(guards);
}
