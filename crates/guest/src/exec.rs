//! `exec` requests: run argv in its own process group with a timeout, capture capped output.
//!
//! PID 1's main loop reaps every child with `waitpid(-1)`. An exec'd child's status must reach
//! its handler, so the handler registers the pid in [`WAITERS`] *while holding the lock across
//! the spawn*, and the reaper hands each reaped pid to [`deliver`], which takes the same lock:
//! the reaper can only look the pid up after the registration is complete, so no status is lost.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use firefleet_guest::proto::{self, ExecResult, Message, MAX_LINE};

/// Raw output bytes (stdout + stderr) that fit one protocol line once base64-encoded.
pub const OUTPUT_BUDGET: usize = (MAX_LINE - 1024) / 4 * 3;
/// Most exec and invoke requests running at once.
const MAX_CONCURRENT: usize = 32;
/// How long output is still read after the command exited (background children may hold the
/// pipes open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// How long to wait for the reaper after the process group was killed.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// pid -> where its exit code goes.
static WAITERS: Mutex<BTreeMap<libc::pid_t, Sender<i32>>> = Mutex::new(BTreeMap::new());
static RUNNING: AtomicUsize = AtomicUsize::new(0);

fn waiters() -> MutexGuard<'static, BTreeMap<libc::pid_t, Sender<i32>>> {
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called by the reaper for every reaped pid; true if it was an exec'd child (its handler gets
/// the code).
pub fn deliver(pid: libc::pid_t, code: i32) -> bool {
    match waiters().remove(&pid) {
        Some(tx) => {
            let _ = tx.send(code);
            true
        }
        None => false,
    }
}

/// Where workers put their answers: the channel thread's queue, plus a wake-up of that thread
/// (an eventfd it polls together with the channel) so an answer goes out at once rather than
/// at its next poll timeout.
#[derive(Clone)]
pub struct Replies {
    tx: Sender<Message>,
    wake: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl Replies {
    /// Answers go to `tx`; `wake` (an eventfd) is signalled after each.
    pub fn new(tx: Sender<Message>, wake: Option<std::sync::Arc<std::os::fd::OwnedFd>>) -> Self {
        Self { tx, wake }
    }

    /// Queues an answer and wakes the channel thread; false when the channel thread is gone.
    pub fn send(&self, msg: Message) -> bool {
        let r = self.tx.send(msg).is_ok();
        if let Some(fd) = &self.wake {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes from a live buffer to an eventfd we own.
            let _ = unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&**fd),
                    one.as_ptr().cast(),
                    one.len(),
                )
            };
        }
        r
    }
}

/// Handles one exec request in a thread of its own; the answer goes to `reply`.
pub fn spawn_exec(
    id: u64,
    argv: Vec<String>,
    timeout: Duration,
    stdin: Option<String>,
    reply: Replies,
) {
    spawn_worker(id, "exec", reply, move || run(id, &argv, timeout, stdin));
}

/// Runs `work` (which answers request `id`) in a thread of its own, so no request waits for
/// another; its answer goes to `reply`. At most [`MAX_CONCURRENT`] run at once (exec and invoke
/// together); past that, and if `work` panics, the answer is an `error`.
pub fn spawn_worker(
    id: u64,
    what: &'static str,
    reply: Replies,
    work: impl FnOnce() -> Message + Send + 'static,
) {
    if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        let _ = reply.send(error(id, &format!("too many {what} requests running")));
        return;
    }
    let reply2 = reply.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("{what}-{id}"))
        .spawn(move || {
            let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| error(id, &format!("{what} handler failed")));
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            let _ = reply2.send(msg);
        });
    if let Err(e) = spawned {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        let _ = reply.send(error(id, &format!("starting a {what} thread: {e}")));
    }
}

pub fn error(id: u64, message: &str) -> Message {
    Message::Error {
        id,
        message: message.to_string(),
    }
}

/// Finds `prog` the way execvp would (so a missing program is reported without spawning:
/// std's spawn would otherwise `wait` for a child our reaper may already have reaped).
fn resolve(prog: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return executable(&p).then_some(p);
    }
    crate::PATH
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| executable(p))
}

struct Spawned {
    pid: libc::pid_t,
    exit: Receiver<i32>,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

fn spawn(path: &Path, argv: &[String], with_stdin: bool) -> io::Result<Spawned> {
    let mut cmd = Command::new(path);
    cmd.arg0(&argv[0])
        .args(&argv[1..])
        .env("PATH", crate::PATH)
        .stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec: PID 1 blocks its stop signals
    // for the signal thread, the command must start with an empty mask.
    unsafe {
        cmd.pre_exec(child_defaults);
    }
    let (tx, exit) = mpsc::channel();
    let mut guard = waiters();
    let mut child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    guard.insert(pid, tx);
    drop(guard);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("missing pipes"));
    };
    // Dropping `child` neither waits nor kills; the reaper reaps it and calls `deliver`.
    Ok(Spawned {
        pid,
        exit,
        stdin: child.stdin.take(),
        stdout,
        stderr,
    })
}

fn run(id: u64, argv: &[String], timeout: Duration, stdin_b64: Option<String>) -> Message {
    let stdin = match stdin_b64.map(|s| STANDARD.decode(s)) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(_)) => return error(id, "stdin_b64 is not base64"),
    };
    match run_command(argv, timeout, stdin) {
        Ok(o) => result(id, o),
        Err(e) => error(id, &e),
    }
}

/// What a command that ran produced.
pub struct Outcome {
    /// Exit code, 128+signal if killed by a signal, -1 if unknown.
    pub exit_code: i32,
    /// Standard output, capped at [`OUTPUT_BUDGET`].
    pub stdout: Capture,
    /// Standard error, capped at [`OUTPUT_BUDGET`].
    pub stderr: Capture,
    /// It ran past its timeout and was killed with its process group.
    pub timed_out: bool,
    /// Wall time from start to exit.
    pub duration_ms: u64,
}

/// Runs `argv` in its own process group with `stdin` as its input (`/dev/null` if `None`),
/// killing the group after `timeout`. `Err` says why it could not start.
pub fn run_command(
    argv: &[String],
    timeout: Duration,
    stdin: Option<Vec<u8>>,
) -> Result<Outcome, String> {
    let Some(prog) = argv.first() else {
        return Err("empty argv".into());
    };
    let Some(path) = resolve(prog) else {
        return Err(format!("{prog}: not found"));
    };
    let started = Instant::now();
    let mut child = match spawn(&path, argv, stdin.is_some()) {
        Ok(c) => c,
        Err(e) => return Err(format!("starting {prog}: {e}")),
    };
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), stdin) {
        // A thread, so a command that does not read its input cannot block us.
        let _ = std::thread::Builder::new()
            .name(format!("stdin-{}", child.pid))
            .spawn(move || {
                let _ = pipe.write_all(&data);
            });
    }
    let deadline = started + timeout;
    let mut out = Capture::default();
    let mut err = Capture::default();
    let mut code = None;
    let mut timed_out = false;
    let mut exited_at = None;
    loop {
        if code.is_none() {
            code = child.exit.try_recv().ok();
            if code.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        let open = !out.eof || !err.eof;
        if !open && code.is_some() {
            break;
        }
        if exited_at.is_some_and(|t| t.elapsed() >= DRAIN_AFTER_EXIT) {
            break; // background children still hold the pipes
        }
        if code.is_none() && !timed_out && Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: signals the command's own process group.
            unsafe { libc::kill(-child.pid, libc::SIGKILL) };
            exited_at = None;
        }
        if timed_out && code.is_none() {
            code = child.exit.recv_timeout(REAP_WAIT).ok();
            break;
        }
        if open {
            poll_pipes(&mut child.stdout, &mut out, &mut child.stderr, &mut err, 50);
        } else {
            // Pipes closed but not reaped yet: wait for the reaper briefly.
            if let Ok(c) = child.exit.recv_timeout(Duration::from_millis(50)) {
                code = Some(c);
            }
        }
    }
    if code.is_none() {
        // Not reaped in time: stop listening for it.
        waiters().remove(&child.pid);
    }
    Ok(Outcome {
        exit_code: code.unwrap_or(-1),
        stdout: out,
        stderr: err,
        timed_out,
        duration_ms: millis(started.elapsed()),
    })
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Output of one pipe, capped at [`OUTPUT_BUDGET`].
#[derive(Default)]
pub struct Capture {
    /// What was read (at most the budget).
    pub data: Vec<u8>,
    /// More was written than kept.
    pub truncated: bool,
    eof: bool,
}

impl Capture {
    fn read_from(&mut self, src: &mut impl Read) {
        let mut buf = [0u8; 8192];
        match src.read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                let room = OUTPUT_BUDGET.saturating_sub(self.data.len());
                self.data.extend_from_slice(&buf[..n.min(room)]);
                self.truncated |= n > room;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.eof = true,
        }
    }
}

fn poll_pipes(
    out: &mut ChildStdout,
    out_cap: &mut Capture,
    err: &mut ChildStderr,
    err_cap: &mut Capture,
    timeout_ms: libc::c_int,
) {
    let fd = |eof: bool, fd: libc::c_int| if eof { -1 } else { fd };
    let mut fds = [
        libc::pollfd {
            fd: fd(out_cap.eof, out.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd(err_cap.eof, err.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds (negative fds are ignored by poll).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc <= 0 {
        return;
    }
    if fds[0].revents != 0 {
        out_cap.read_from(out);
    }
    if fds[1].revents != 0 {
        err_cap.read_from(err);
    }
}

/// Builds the answer, cutting output so the encoded line fits [`MAX_LINE`].
fn result(id: u64, o: Outcome) -> Message {
    let (stdout, stderr, cut) = fit(o.stdout.data, o.stderr.data, OUTPUT_BUDGET);
    let mut r = ExecResult {
        id,
        exit_code: o.exit_code,
        stdout_b64: STANDARD.encode(&stdout),
        stderr_b64: STANDARD.encode(&stderr),
        truncated: o.stdout.truncated || o.stderr.truncated || cut,
        timed_out: o.timed_out,
        duration_ms: o.duration_ms,
    };
    if proto::encode(&Message::ExecResult(r.clone())).len() > MAX_LINE {
        // Cannot happen with the budget above; be safe anyway.
        r.stdout_b64.clear();
        r.stderr_b64.clear();
        r.truncated = true;
    }
    Message::ExecResult(r)
}

/// Cuts two outputs to `budget` bytes together, each keeping at least half if it needs it.
pub fn fit(mut a: Vec<u8>, mut b: Vec<u8>, budget: usize) -> (Vec<u8>, Vec<u8>, bool) {
    if a.len() + b.len() <= budget {
        return (a, b, false);
    }
    let half = budget / 2;
    let a_len = if b.len() < half {
        budget - b.len()
    } else {
        half.max(budget.saturating_sub(b.len()))
    };
    a.truncate(a_len);
    b.truncate(budget - a.len());
    (a, b, true)
}

/// Run between fork and exec in every process the guest agent starts (async-signal-safe calls
/// only): an empty signal mask (PID 1 blocks the stop signals for its signal thread), and a
/// move into the workloads' cgroup (its pid, CPU and memory limits keep the agent answering
/// whatever the workload does; see `cgroup.rs`).
///
/// The agent keeps the workloads' priority: running it at nice -10 (to answer faster under a
/// fork bomb) cut a TCG guest's network throughput four times over (measured with
/// `cargo test -p firefleet-vmm --test net egress`); the cgroup's weight only matters when the
/// agent has work.
pub fn child_defaults() -> io::Result<()> {
    crate::cgroup::enter()?;
    // SAFETY: sigemptyset and pthread_sigmask are async-signal-safe and only touch this
    // process.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_shares_the_budget() {
        let (a, b, cut) = fit(vec![1; 10], vec![2; 10], 100);
        assert_eq!((a.len(), b.len(), cut), (10, 10, false));
        let (a, b, cut) = fit(vec![1; 100], vec![2; 10], 50);
        assert_eq!((a.len(), b.len(), cut), (40, 10, true));
        let (a, b, cut) = fit(vec![1; 10], vec![2; 100], 50);
        assert_eq!((a.len(), b.len(), cut), (10, 40, true));
        let (a, b, _) = fit(vec![1; 100], vec![2; 100], 50);
        assert_eq!((a.len(), b.len()), (25, 25));
    }

    #[test]
    fn a_full_result_fits_one_line() {
        let cap = |n| Capture {
            data: vec![0xff; n],
            truncated: true,
            eof: true,
        };
        let msg = result(
            u64::MAX,
            Outcome {
                exit_code: -1,
                stdout: cap(OUTPUT_BUDGET),
                stderr: cap(OUTPUT_BUDGET),
                timed_out: true,
                duration_ms: 1,
            },
        );
        assert!(proto::encode(&msg).len() <= MAX_LINE);
        let Message::ExecResult(r) = msg else {
            panic!("{msg:?}")
        };
        assert!(r.truncated && !r.stdout_b64.is_empty() && !r.stderr_b64.is_empty());
    }

    #[test]
    fn resolves_programs_on_path() {
        assert!(resolve("sh").is_some());
        assert!(resolve("/bin/sh").is_some());
        assert!(resolve("no-such-program-here").is_none());
    }

    #[test]
    fn runs_commands_and_reports_timeouts() {
        // Outside PID 1 nobody calls `deliver`: a stand-in reaper for our children.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let reaper = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let pids: Vec<_> = waiters().keys().copied().collect();
                for pid in pids {
                    let mut status = 0;
                    // SAFETY: waitpid on a child of this test process.
                    if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        deliver(pid, code);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let Message::ExecResult(r) = run(
            1,
            &argv("echo hi; cat; echo err >&2; exit 4"),
            Duration::from_secs(10),
            Some(STANDARD.encode("in\n")),
        ) else {
            panic!()
        };
        assert_eq!(r.exit_code, 4);
        assert_eq!(STANDARD.decode(&r.stdout_b64).unwrap(), b"hi\nin\n");
        assert_eq!(STANDARD.decode(&r.stderr_b64).unwrap(), b"err\n");
        assert!(!r.timed_out && !r.truncated);

        let started = Instant::now();
        let Message::ExecResult(r) = run(
            2,
            &argv("echo a; sleep 30"),
            Duration::from_millis(300),
            None,
        ) else {
            panic!()
        };
        assert!(r.timed_out && r.exit_code == 128 + libc::SIGKILL, "{r:?}");
        assert_eq!(STANDARD.decode(&r.stdout_b64).unwrap(), b"a\n");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A background child holding the pipes does not hold up the answer.
        let started = Instant::now();
        let Message::ExecResult(r) =
            run(3, &argv("sleep 5 & echo x"), Duration::from_secs(10), None)
        else {
            panic!()
        };
        assert_eq!(r.exit_code, 0);
        assert!(started.elapsed() < Duration::from_secs(3));

        let big = run(
            4,
            &argv("head -c 200000 /dev/zero"),
            Duration::from_secs(10),
            None,
        );
        assert!(proto::encode(&big).len() <= MAX_LINE);
        assert!(matches!(
            big,
            Message::ExecResult(ExecResult {
                truncated: true,
                ..
            })
        ));

        assert!(matches!(
            run(
                5,
                &["no-such-program-here".into()],
                Duration::from_secs(1),
                None
            ),
            Message::Error { id: 5, .. }
        ));
        stop.store(true, Ordering::SeqCst);
        reaper.join().unwrap();
    }
}
