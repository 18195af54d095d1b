//! The guest channel end to end: a real guest under QEMU (TCG here) and [`GuestChannel`] over
//! the VM's `guest.sock`. Boots are serialised (`firefleet_testkit::vmm::serial`).

// Test helpers outside #[test] fns: clippy.toml's allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firefleet_guest::proto::{self, Message};
use firefleet_testkit::vmm::*;
use firefleet_vmm::channel::{ChannelError, GuestChannel, GuestTelemetry};
use firefleet_vmm::stats::host_stats;
use firefleet_vmm::{QemuRuntime, Runtime};

const TIMEOUT: Duration = Duration::from_secs(10);

fn sock(root: &tempfile::TempDir, id: &str) -> PathBuf {
    root.path().join(id).join("guest.sock")
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// One short-lived connection per operation, as QEMU's chardev takes one client at a time.
fn with_channel<T>(path: &Path, f: impl FnOnce(&mut GuestChannel) -> T) -> T {
    let mut ch = GuestChannel::connect(path, TIMEOUT).unwrap();
    f(&mut ch)
}

fn boot(root: &tempfile::TempDir, id: &str, cmd: Option<Vec<String>>) -> (QemuRuntime, VmGuard) {
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let guard = launch(&rt, id, cmd);
    wait_for("ready", Duration::from_secs(60), &rt, id, || {
        rt.observe(id).unwrap().guest_ready
    });
    // The first answer also proves the agent found its port.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match GuestChannel::connect(&sock(root, id), TIMEOUT).and_then(|mut c| c.ping()) {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no pong: {e}; console:\n{}",
                console_text(&rt, id)
            ),
        }
    }
    (rt, guard)
}

fn telemetry(path: &Path) -> GuestTelemetry {
    with_channel(path, |c| c.telemetry().unwrap())
}

#[test]
fn ping_exec_timeouts_reconnects_and_garbage() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let (rt, _g) = boot(&root, "chan", None);
    let path = sock(&root, "chan");

    // Ping, and the hello that greets a new connection (one that follows the last closely may
    // go unnoticed by the guest: give it a moment to see the hang-up).
    std::thread::sleep(Duration::from_millis(500));
    with_channel(&path, |c| {
        let rtt = c.ping().unwrap();
        eprintln!("ping round trip {rtt:?}");
        let hello = c.hello().expect("hello before the pong").clone();
        assert_eq!(hello.vm_id, "chan");
        assert!(
            hello.capabilities.contains(&"exec".to_string()),
            "{hello:?}"
        );
        assert_eq!(c.stats(), Default::default());
    });

    // Exit code and both outputs.
    let out = with_channel(&path, |c| {
        c.exec(&sh("echo hi; echo err >&2; exit 4"), TIMEOUT, None)
            .unwrap()
    });
    assert_eq!(out.exit_code, 4, "{out:?}");
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.timed_out && !out.truncated);

    // Standard input, and output past the line limit is cut.
    let out = with_channel(&path, |c| {
        c.exec(&["cat".into()], TIMEOUT, Some(b"from the host\n"))
            .unwrap()
    });
    assert_eq!(
        (out.exit_code, &out.stdout[..]),
        (0, &b"from the host\n"[..])
    );
    let out = with_channel(&path, |c| {
        c.exec(&sh("head -c 300000 /dev/zero"), TIMEOUT, None)
            .unwrap()
    });
    assert!(out.truncated && out.exit_code == 0, "{}", out.stdout.len());
    assert!(out.stdout.len() > 30_000, "{}", out.stdout.len());

    // A command past its timeout is killed with its process group and reported.
    let started = Instant::now();
    let out = with_channel(&path, |c| {
        c.exec(&sh("echo started; sleep 30"), Duration::from_secs(1), None)
            .unwrap()
    });
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, 128 + 9, "{out:?}");
    assert_eq!(out.stdout, b"started\n");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let t = telemetry(&path);
    assert!(
        !t.processes.iter().any(|p| p.cmdline == ["sleep", "30"]),
        "the group was killed: {:?}",
        t.processes
    );

    // A missing program is the guest's error, not a hang.
    let err = with_channel(&path, |c| {
        c.exec(&["no-such-program".into()], TIMEOUT, None)
            .unwrap_err()
    });
    assert!(matches!(err, ChannelError::Guest { .. }), "{err}");

    // Connect, disconnect, reconnect: also mid-request (the late answer goes to a later
    // connection, which skips it by id).
    for i in 0..5 {
        with_channel(&path, |c| c.ping().unwrap());
        if i % 2 == 0 {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(&proto::encode(&Message::Exec {
                id: 1,
                argv: sh("sleep 0.3; echo late"),
                timeout_ms: 5000,
                stdin_b64: None,
            }))
            .unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    with_channel(&path, |c| {
        let out = c
            .exec(&["echo".into(), "again".into()], TIMEOUT, None)
            .unwrap();
        assert_eq!(out.stdout, b"again\n");
    });

    // Garbage from the host side: junk, bad UTF-8, an endless line, bad requests, a line cut
    // by a disconnect.
    {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"garbage\n\xff\xfe\x00\n{\"v\":1}\n[1,2]\n")
            .unwrap();
        s.write_all(b"{\"v\":1,\"type\":\"exec\",\"id\":\"nan\"}\n")
            .unwrap();
        s.write_all(b"{\"v\":1,\"type\":\"from_the_future\"}\n")
            .unwrap();
        s.write_all(&vec![b'z'; 200_000]).unwrap();
        s.write_all(b"\n{\"v\":1,\"type\":\"pi").unwrap();
    }
    {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&vec![b'{'; 100_000]).unwrap(); // no newline before the disconnect
    }
    let rtt = with_channel(&path, |c| c.ping())
        .unwrap_or_else(|e| panic!("{e}; console:\n{}", console_text(&rt, "chan")));
    eprintln!("ping after garbage {rtt:?}");
    let out = with_channel(&path, |c| c.exec(&["true".into()], TIMEOUT, None).unwrap());
    assert_eq!(out.exit_code, 0);
    let console = console_text(&rt, "chan");
    assert!(
        console.contains("dropped"),
        "the guest counts junk: {console}"
    );

    // The existing stop path (shutdown over guest.sock) still powers the guest off.
    let started = Instant::now();
    rt.stop("chan", Duration::from_secs(10)).unwrap();
    let o = rt.observe("chan").unwrap();
    assert!(o.powered_off, "{o:?}\n{}", console_text(&rt, "chan"));
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn telemetry_lists_processes_and_sockets_and_host_stats_see_the_vmm() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let (rt, _g) = boot(
        &root,
        "telem",
        Some(sh("busybox nc -l -p 7777 & sleep 1000")),
    );
    let path = sock(&root, "telem");
    // A process started through exec, detached from the exec's pipes.
    let out = with_channel(&path, |c| {
        c.exec(&sh("sleep 77 </dev/null >/dev/null 2>&1 &"), TIMEOUT, None)
            .unwrap()
    });
    assert_eq!(out.exit_code, 0, "{out:?}");

    let t = telemetry(&path);
    eprintln!("{}", serde_json::to_string_pretty(&t).unwrap());
    let init = t.processes.iter().find(|p| p.pid == 1).expect("init");
    assert_eq!(init.stdout.as_deref(), Some("/dev/console"), "{init:?}");
    let sleep = t
        .processes
        .iter()
        .find(|p| p.cmdline == ["sleep", "1000"])
        .expect("the workload's sleep");
    assert_eq!(sleep.comm, "sleep");
    assert!(sleep.rss_kib > 0 && !sleep.state.is_empty(), "{sleep:?}");
    let exec_sleep = t
        .processes
        .iter()
        .find(|p| p.cmdline == ["sleep", "77"])
        .expect("the exec'd sleep");
    assert_eq!(exec_sleep.ppid, 1, "orphaned to init: {exec_sleep:?}");
    assert_eq!(exec_sleep.stdin.as_deref(), Some("/dev/null"));
    let l = t
        .listeners
        .iter()
        .find(|l| l.port == 7777)
        .unwrap_or_else(|| panic!("listener on 7777: {:?}", t.listeners));
    assert!(l.proto.starts_with("tcp") && l.inode > 0, "{l:?}");
    assert!(
        t.mem_total_kib > 100_000 && t.mem_available_kib > 0,
        "{t:?}"
    );
    assert!(t.uptime_ms > 0 && !t.truncated);

    // A connection shows up while it lasts.
    let out = with_channel(&path, |c| {
        c.exec(
            &sh("busybox ip link set lo up; \
                 (sleep 3 | busybox nc 127.0.0.1 7777 >/dev/null 2>&1 &); sleep 0.5"),
            TIMEOUT,
            None,
        )
        .unwrap()
    });
    assert_eq!(out.exit_code, 0, "{out:?}");
    let t = telemetry(&path);
    assert!(
        t.connections
            .iter()
            .any(|c| (c.remote_port == 7777 || c.local_port == 7777) && !c.state.is_empty()),
        "{:?}",
        t.connections
    );

    // The VMM process as the host sees it.
    let pid = rt.observe("telem").unwrap().pid.unwrap();
    let s = host_stats(pid).unwrap();
    eprintln!("host stats of QEMU: {s:?}");
    assert!(
        s.cpu_time_ms > 0 && s.rss_bytes > 50 << 20 && s.threads > 1,
        "{s:?}"
    );
}

/// Everything the guest agent starts runs in the workloads' cgroup, and an unbounded fork bomb
/// there stops at its pid limit while the agent keeps answering (telemetry included).
#[test]
fn workloads_run_in_their_cgroup_and_a_fork_bomb_leaves_the_agent_answering() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let (rt, _g) = boot(&root, "bomb", None);
    let path = sock(&root, "bomb");
    let out = with_channel(&path, |c| {
        c.exec(
            &sh("cat /proc/self/cgroup /sys/fs/cgroup/workloads/pids.max \
                 /sys/fs/cgroup/workloads/cpu.weight; grep -c . /sys/fs/cgroup/cgroup.procs"),
            TIMEOUT,
            None,
        )
        .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.get(..3),
        Some(&["0::/workloads", "1024", "100"][..]),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        console_text(&rt, "bomb")
    );

    // The classic bomb, unbounded but for the cgroup: it churns at the limit for good.
    with_channel(&path, |c| {
        c.exec(
            &sh(
                "(setsid sh -c 'b() { b & b & sleep 600; }; b' </dev/null >/dev/null 2>&1 &); true",
            ),
            TIMEOUT,
            None,
        )
        .unwrap()
    });
    let started = Instant::now();
    let (mut answers, mut most) = (0, 0);
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        let t = rt.telemetry("bomb").unwrap_or_else(|e| {
            panic!(
                "the agent stopped answering {:?} into the bomb: {e}",
                started.elapsed()
            )
        });
        slowest = slowest.max(asked.elapsed());
        answers += 1;
        most = most.max(t.process_count);
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{answers} telemetry answers in 30 s of fork bomb, slowest {slowest:?}, \
         at most {most} processes"
    );
    assert!(
        most > 900,
        "the bomb reached its limit: {most} processes at most"
    );
    // The workloads' limit plus the agent; past its read budget the guest counts pids unread,
    // kernel workers started since boot among them, hence the margin.
    assert!(
        most <= 1024 + 128,
        "{most} processes: the pid limit did not hold"
    );
    assert!(answers >= 10, "{answers} answers in 30 s");
}
