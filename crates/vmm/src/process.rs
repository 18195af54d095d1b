//! VMM processes, for every backend: starting one in its own session with a reaper thread that
//! records how it ended, finding it again after a restart (pid + start time from /proc, so a
//! reused pid is never mistaken for ours), waiting for it to come up or go away, and killing it.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::error::VmmError;
use crate::fsutil::{log_tail, state_err, write_atomic};
use crate::statedir::{EXIT_FILE, PID_FILE};
use crate::vm::VmProcessInfo;
use crate::wait::wait_until;

/// The identity of a process: pid and start time (field 22 of /proc/PID/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// State and start time of a pid from /proc/PID/stat, or None if there is no such process.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses /proc/PID/stat: the command may contain spaces and parentheses, so split after the
/// last `)`. Fields after it start at field 3 (state); start time is field 22.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcessId {
    /// The identity of a live pid now.
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// The process exists (zombie or not) and is the same one.
    pub fn exists(&self) -> bool {
        matches!(stat(self.pid), Some((_, t)) if t == self.start_time)
    }

    /// The process exists, is the same one and is not a zombie.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, t)) if t == self.start_time && s != 'Z' && s != 'X')
    }

    /// Sends a signal if (and only if) the pid is still this process.
    pub fn signal(&self, sig: i32) -> bool {
        if !self.exists() {
            return false;
        }
        // SAFETY: kill(2) on a pid we just verified by start time; worst case a benign race
        // within microseconds of its exit.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }

    /// `"<pid> <start_time>\n"`, the pid file format.
    pub fn to_file_contents(&self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// Parses the pid file format.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_time = it.next()?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    /// Reads a pid file; `Ok(None)` if it does not exist or is unreadable garbage.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match fs::read_to_string(path) {
            Ok(t) => Ok(Self::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl ProcessId {
    /// The process recorded in the state directory `dir` (its pid file), if any.
    pub fn recorded(dir: &Path) -> Result<Option<Self>, VmmError> {
        let path = dir.join(PID_FILE);
        Self::read(&path).map_err(state_err(path))
    }

    /// The runtime's report of this process as VM `id`'s VMM.
    pub fn info(self, id: &str, state_dir: PathBuf, already_running: bool) -> VmProcessInfo {
        VmProcessInfo {
            id: id.to_string(),
            pid: self.pid,
            start_time: self.start_time,
            state_dir,
            already_running,
        }
    }
}

/// `p` if it is alive; a zombie of ours is given a moment to be reaped first.
pub fn alive(p: Option<ProcessId>) -> Option<ProcessId> {
    let p = p?;
    if !p.is_alive() {
        wait_gone(p, Duration::from_millis(500));
    }
    p.is_alive().then_some(p)
}

/// Pids of VMMs this process reaps whose exit is not recorded yet.
fn reaping() -> MutexGuard<'static, HashSet<i32>> {
    static REAPING: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    REAPING
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Takes its pid off [`reaping`] when the reaper is done (or gone).
struct ReapedGuard(i32);

impl Drop for ReapedGuard {
    fn drop(&mut self) {
        reaping().remove(&self.0);
    }
}

/// Waits until the process no longer exists and, when this process launched it, its exit has
/// been recorded (the reaper writes `exit` right after reaping it); a zombie we cannot reap
/// (another parent) is accepted after `timeout`.
pub fn wait_gone(p: ProcessId, timeout: Duration) {
    wait_until(Instant::now() + timeout, || {
        !p.exists() && !reaping().contains(&p.pid)
    });
}

/// SIGKILL, then waits (up to 5 s) for it to be reaped.
pub fn kill_and_reap(p: ProcessId) {
    p.signal(libc::SIGKILL);
    wait_gone(p, Duration::from_secs(5));
}

/// The end of a stop: SIGKILL if `p` is still alive ([`VmmError::Unkillable`] if it survives
/// 5 s of it), then waits for it to be reaped.
pub fn kill_if_alive(id: &str, p: ProcessId) -> Result<(), VmmError> {
    if p.is_alive() {
        p.signal(libc::SIGKILL);
        if !wait_until(Instant::now() + Duration::from_secs(5), || !p.is_alive()) {
            return Err(VmmError::Unkillable {
                id: id.to_string(),
                pid: p.pid,
            });
        }
    }
    wait_gone(p, Duration::from_secs(2));
    Ok(())
}

/// How the VMM process `p` ended, from the exit record in `dir`, if it is `p`'s.
pub fn exit_record(dir: &Path, p: Option<ProcessId>) -> Option<String> {
    let s = fs::read_to_string(dir.join(EXIT_FILE)).ok()?;
    let (who, text) = s.split_once('\n')?;
    (p.is_some() && ProcessId::parse(who) == p).then(|| text.trim().to_string())
}

/// A new VMM process: what to run and where it reports.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The VM.
    pub id: &'a str,
    /// The binary `cmd` runs (for errors).
    pub binary: &'a Path,
    /// The VM's state directory: the pid file and exit record go there.
    pub dir: &'a Path,
    /// The VMM's output, quoted when it exits early.
    pub log: &'a Path,
}

impl Launch<'_> {
    /// Starts `cmd` (set up to run in its own session), checks it is alive, lets `attach` act
    /// on it (e.g. move it into cgroups), records it in the pid file and hands it to a reaper
    /// thread that writes the exit record when it ends. On any failure the child is killed.
    pub fn start(
        &self,
        cmd: &mut Command,
        attach: impl FnOnce(ProcessId) -> Result<(), VmmError>,
    ) -> Result<ProcessId, VmmError> {
        let spawn_err = |source| VmmError::Spawn {
            id: self.id.to_string(),
            binary: self.binary.to_path_buf(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let Some(proc_id) = ProcessId::of(pid) else {
            // Gone already: reap it and report what it said.
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(VmmError::EarlyExit {
                id: self.id.to_string(),
                status,
                log: log_tail(self.log),
            });
        };
        let recorded = attach(proc_id).and_then(|()| {
            write_atomic(
                &self.dir.join(PID_FILE),
                proc_id.to_file_contents().as_bytes(),
            )
        });
        if let Err(e) = recorded {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let exit_path = self.dir.join(EXIT_FILE);
        reaping().insert(proc_id.pid);
        let spawned = std::thread::Builder::new()
            .name(format!("reap-{}", self.id))
            .spawn(move || {
                let _done = ReapedGuard(proc_id.pid);
                if let Ok(status) = child.wait() {
                    let text = match (status.code(), status.signal()) {
                        (Some(c), _) => format!("exit status: {c}"),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        _ => status.to_string(),
                    };
                    // Tagged with the process identity, so a record that lands after a
                    // relaunch is not mistaken for the new process's.
                    let tmp = exit_path.with_extension("tmp");
                    let record = format!("{}{text}\n", proc_id.to_file_contents());
                    if fs::write(&tmp, record).is_ok() {
                        let _ = fs::rename(&tmp, &exit_path);
                    }
                }
            });
        if let Err(e) = spawned {
            // Without a reaper thread the child would become a zombie when it exits; stop it.
            reaping().remove(&proc_id.pid);
            proc_id.signal(libc::SIGKILL);
            return Err(spawn_err(e));
        }
        Ok(proc_id)
    }

    /// Waits (up to `timeout`) until the new process `p` accepts connections on `socket`.
    /// If it exits first: [`VmmError::EarlyExit`] with its status and the end of its log; if
    /// it is not up in time it is killed: [`VmmError::StartTimeout`].
    pub fn wait_for_socket(
        &self,
        p: ProcessId,
        socket: &Path,
        timeout: Duration,
    ) -> Result<(), VmmError> {
        let up = wait_until(Instant::now() + timeout, || {
            !p.is_alive() || UnixStream::connect(socket).is_ok()
        });
        if !p.is_alive() {
            wait_gone(p, Duration::from_secs(2));
            let status = fs::read_to_string(self.dir.join(EXIT_FILE))
                .ok()
                .and_then(|s| s.split_once('\n').map(|(_, t)| t.trim().to_string()))
                .unwrap_or_else(|| "exited".into());
            return Err(VmmError::EarlyExit {
                id: self.id.to_string(),
                status,
                log: log_tail(self.log),
            });
        }
        if !up {
            kill_and_reap(p);
            return Err(VmmError::StartTimeout {
                id: self.id.to_string(),
                secs: timeout.as_secs(),
            });
        }
        Ok(())
    }
}

/// A live process (not a zombie) whose working directory is `dir`: the VMM of that VM.
pub fn find_by_cwd(dir: &Path) -> Option<ProcessId> {
    let dir = fs::canonicalize(dir).ok()?;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/cwd")).ok().as_deref() == Some(dir.as_path()) {
            if let Some(p) = ProcessId::of(pid).filter(|p| p.is_alive()) {
                return Some(p);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line =
            "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 100 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn knows_itself_and_round_trips_the_pid_file() {
        let me = ProcessId::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !other.exists(),
            "a different start time is a different process"
        );
        assert_eq!(ProcessId::parse(&me.to_file_contents()), Some(me));
        assert_eq!(ProcessId::parse("12"), None);
    }

    /// A state directory with a log for test processes.
    struct Fixture {
        dir: tempfile::TempDir,
        log: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("log");
            Self { dir, log }
        }

        fn launch(&self) -> Launch<'_> {
            Launch {
                id: "vm",
                binary: Path::new("test"),
                dir: self.dir.path(),
                log: &self.log,
            }
        }

        /// Starts `program args` (output to the log), with `attach`.
        fn start(
            &self,
            program: &str,
            args: &[&str],
            attach: impl FnOnce(ProcessId) -> Result<(), VmmError>,
        ) -> Result<ProcessId, VmmError> {
            let log = std::fs::File::create(&self.log).unwrap();
            let mut cmd = Command::new(program);
            cmd.args(args).stdout(log.try_clone().unwrap()).stderr(log);
            self.launch().start(&mut cmd, attach)
        }

        fn no_socket(&self) -> PathBuf {
            self.dir.path().join("none.sock")
        }
    }

    #[test]
    fn a_started_process_is_recorded_and_its_end_too() {
        let f = Fixture::new();
        let p = f.start("sleep", &["30"], |_| Ok(())).unwrap();
        assert_eq!(ProcessId::recorded(f.dir.path()).unwrap(), Some(p));
        assert_eq!(alive(Some(p)), Some(p));
        kill_and_reap(p);
        assert!(!p.exists());
        assert_eq!(alive(Some(p)), None);
        assert_eq!(
            exit_record(f.dir.path(), Some(p)).as_deref(),
            Some("killed by signal 9")
        );
        let other = ProcessId {
            start_time: p.start_time + 1,
            ..p
        };
        assert_eq!(exit_record(f.dir.path(), Some(other)), None);
    }

    #[test]
    fn an_early_exit_reports_its_status_and_log() {
        let f = Fixture::new();
        let err = match f.start("sh", &["-c", "echo boom >&2; exit 3"], |_| Ok(())) {
            Ok(p) => f
                .launch()
                .wait_for_socket(p, &f.no_socket(), Duration::from_secs(10))
                .unwrap_err(),
            Err(e) => e,
        };
        match err {
            VmmError::EarlyExit { status, log, .. } => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(log, "boom");
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_process_that_never_listens_is_killed() {
        let f = Fixture::new();
        let p = f.start("sleep", &["30"], |_| Ok(())).unwrap();
        let err = f
            .launch()
            .wait_for_socket(p, &f.no_socket(), Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, VmmError::StartTimeout { .. }), "{err}");
        assert!(!p.exists());
    }

    #[test]
    fn a_refused_attach_kills_the_process_and_records_nothing() {
        let f = Fixture::new();
        let mut seen = None;
        let err = f
            .start("sleep", &["30"], |p| {
                seen = Some(p);
                Err(VmmError::NotFound("vm".into()))
            })
            .unwrap_err();
        assert!(matches!(err, VmmError::NotFound(_)), "{err}");
        assert!(!seen.unwrap().exists(), "killed and reaped");
        assert_eq!(ProcessId::recorded(f.dir.path()).unwrap(), None);
    }
}
