//! The QEMU `microvm` backend of [`Runtime`].
//!
//! Each VM has a state directory `state_root/<id>/` with `config.json` (the [`LaunchConfig`]),
//! `pid` (`"<pid> <start time>"`), `qmp.sock`, `guest.sock` (the guest channel), `console.log`
//! (written by QEMU itself, so capture survives an agent restart), `qemu.log` (QEMU's stderr)
//! and, once the process that launched it reaped it, `exit`.
//!
//! The guest channel is one persistent connection per VM to `guest.sock` (QEMU's chardev takes
//! one client at a time), shared by every runtime of this process and by every request (exec,
//! invoke, telemetry, ping, shutdown), which run concurrently with answers routed by id
//! ([`crate::channel::mux`], connect mode). It is made on first use and made again after it
//! dropped (QEMU exited, was restarted or restored).
//!
//! QEMU runs in its own session (setsid) so it outlives the agent. While the launching process
//! lives, a waiter thread per child reaps it (no zombies); after a restart the VM is found again
//! from the state directory (pid + start time) and driven over QMP and the guest channel.

mod blockstats;
pub mod cmdline;
pub mod process;
pub mod qmp;
pub mod snapshot;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firefleet_guest::console::{parse_line, ConsoleEvent};
use firefleet_guest::proto::Message;

use crate::channel::mux::{ChannelStatus, Channels};
use crate::channel::{ExecOutput, GuestChannel, GuestTelemetry, InvokeHandler, InvokeOutput};
use crate::runtime::{
    ConsoleChunk, LaunchConfig, Observation, Runtime, SnapshotInfo, VmProcessInfo, VmmError,
    VmmIoStats,
};
use cmdline::{
    ArgOptions, CONFIG_FILE, CONSOLE_LOG, EXIT_FILE, GUEST_SOCK, PID_FILE, QEMU_LOG, QMP_SOCK,
};
use process::ProcessId;
use qmp::Qmp;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const REMOVE_GRACE: Duration = Duration::from_secs(5);

/// The QEMU runtime. Cheap to create; holds no per-VM state in memory (the state directories
/// are the truth; the guest channel connections are shared by all runtimes of the process), so a
/// new instance on the same root re-adopts running VMs.
#[derive(Debug, Clone)]
pub struct QemuRuntime {
    state_root: PathBuf,
    qemu: PathBuf,
    tsc_khz: Option<u64>,
    sandbox: Option<crate::sandbox::Sandbox>,
}

/// Finds `qemu-system-x86_64`: `$FIREFLEET_QEMU`, else the first on PATH.
pub fn find_qemu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FIREFLEET_QEMU") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// `qemu-system-x86_64 -version`, first line.
pub fn qemu_version(qemu: &Path) -> Option<String> {
    let out = Command::new(qemu)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn state_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VmmError {
    let path = path.into();
    move |source| VmmError::State { path, source }
}

fn validate_id(id: &str) -> Result<(), VmmError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VmmError::InvalidId(id.to_string()))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VmmError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(state_err(&tmp))?;
    f.write_all(bytes).map_err(state_err(&tmp))?;
    f.sync_all().map_err(state_err(&tmp))?;
    fs::rename(&tmp, path).map_err(state_err(path))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl QemuRuntime {
    /// A runtime keeping VM state under `state_root` (created if missing).
    pub fn new(state_root: PathBuf) -> Result<Self, VmmError> {
        let qemu = find_qemu().ok_or(VmmError::QemuNotFound)?;
        Self::with_qemu(state_root, qemu)
    }

    /// A runtime with an explicit QEMU binary.
    pub fn with_qemu(state_root: PathBuf, qemu: PathBuf) -> Result<Self, VmmError> {
        fs::create_dir_all(&state_root).map_err(state_err(&state_root))?;
        Ok(Self {
            state_root,
            qemu,
            tsc_khz: cmdline::host_tsc_khz(),
            sandbox: None,
        })
    }

    /// Runs every VMM of this runtime sandboxed: its own uid/gid, QEMU's seccomp filter with the
    /// deny options, cgroup limits where the host offers them, and its state directory as its
    /// jail (kernel and initrd linked in; TAP handed over as a descriptor).
    pub fn with_sandbox(mut self, sandbox: crate::sandbox::Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// The sandbox in force, if any.
    pub fn sandbox(&self) -> Option<&crate::sandbox::Sandbox> {
        self.sandbox.as_ref()
    }

    /// The QEMU binary in use.
    pub fn qemu(&self) -> &Path {
        &self.qemu
    }

    /// The state root.
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// A VM's state directory.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.state_root.join(id)
    }

    fn process(&self, id: &str) -> Result<Option<ProcessId>, VmmError> {
        let path = self.vm_dir(id).join(PID_FILE);
        if let Some(p) = ProcessId::read(&path).map_err(state_err(&path))? {
            return Ok(Some(p));
        }
        // No pid file: the launcher may have died between starting QEMU and recording it. QEMU
        // runs in the VM's directory, so find it by its working directory and record it now.
        let Some(p) = find_by_cwd(&self.vm_dir(id)) else {
            return Ok(None);
        };
        write_atomic(&path, p.to_file_contents().as_bytes())?;
        Ok(Some(p))
    }

    fn spawn(
        &self,
        cfg: &LaunchConfig,
        dir: &Path,
        opts: &ArgOptions,
    ) -> Result<ProcessId, VmmError> {
        let log_path = dir.join(QEMU_LOG);
        let log = File::create(&log_path).map_err(state_err(&log_path))?;
        let log2 = log.try_clone().map_err(state_err(&log_path))?;
        let jail = match &self.sandbox {
            Some(sb) => Some(self.prepare_jail(sb, cfg, dir)?),
            None => None,
        };
        let args = match &jail {
            Some(j) => j.args(cmdline::qemu_args_with(&j.cfg, self.tsc_khz, opts)),
            None => cmdline::qemu_args_with(cfg, self.tsc_khz, opts),
        };
        let mut cmd = Command::new(&self.qemu);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let drop_to = jail.as_ref().map(|j| {
            (
                j.vm.uid,
                j.vm.gid,
                j.groups.clone(),
                j.tap.as_ref().map(|t| t.as_raw_fd()),
            )
        });
        // SAFETY: only async-signal-safe calls (setsid, fcntl, setgroups/setresgid/setresuid,
        // prctl) on values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some((uid, gid, groups, tap)) = &drop_to {
                    if let Some(fd) = tap {
                        // Let the TAP descriptor survive exec (it was opened close-on-exec).
                        if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    crate::sandbox::drop_privileges(*uid, *gid, groups)?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
            id: cfg.id.clone(),
            binary: self.qemu.clone(),
            source,
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let Some(proc_id) = ProcessId::of(pid) else {
            // Gone already: reap it and report what it said.
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(VmmError::EarlyExit {
                id: cfg.id.clone(),
                status,
                log: log_tail(&log_path),
            });
        };
        if let (Some(sb), Some(j)) = (&self.sandbox, &jail) {
            if let Err(e) = sb.attach(&j.vm, proc_id.pid) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VmmError::Sandbox {
                    id: cfg.id.clone(),
                    source: e,
                });
            }
        }
        drop(jail);
        let pid_path = dir.join(PID_FILE);
        if let Err(e) = write_atomic(&pid_path, proc_id.to_file_contents().as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // The reaper: waits for the child, records how it ended.
        let exit_path = dir.join(EXIT_FILE);
        reaping().insert(proc_id.pid);
        let spawned = std::thread::Builder::new()
            .name(format!("reap-{}", cfg.id))
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
            return Err(VmmError::Spawn {
                id: cfg.id.clone(),
                binary: self.qemu.clone(),
                source: e,
            });
        }
        Ok(proc_id)
    }

    /// Asks the guest to shut down over its channel (which stays open while we wait: closing
    /// at once could race with QEMU forwarding the line); false if there is no channel.
    fn send_guest_shutdown(&self, id: &str) -> bool {
        self.channel(id)
            .is_ok_and(|key| qemu_channels().send(&key, &Message::Shutdown))
    }

    fn qmp(&self, id: &str, command: &str) -> Result<serde_json::Value, VmmError> {
        let path = self.vm_dir(id).join(QMP_SOCK);
        Qmp::connect(&path, Duration::from_secs(2))
            .and_then(|mut q| q.execute(command, None))
            .map_err(|source| VmmError::Qmp {
                id: id.to_string(),
                command: command.to_string(),
                source,
            })
    }

    /// Runs a QMP command without arguments on a VM (e.g. `query-status`).
    pub fn qmp_command(&self, id: &str, command: &str) -> Result<serde_json::Value, VmmError> {
        validate_id(id)?;
        self.qmp(id, command)
    }

    /// The VM's process if it is alive (a zombie of ours is given a moment to be reaped).
    fn live_process(&self, id: &str) -> Result<Option<ProcessId>, VmmError> {
        let Some(p) = self.process(id)? else {
            return Ok(None);
        };
        if !p.is_alive() {
            // A zombie of ours is about to be reaped by its waiter thread: let it finish.
            Self::wait_gone(p, Duration::from_millis(500));
        }
        Ok(p.is_alive().then_some(p))
    }

    /// At most one root disk, and every disk image exists.
    fn check_disks(&self, cfg: &LaunchConfig) -> Result<(), VmmError> {
        let invalid = |what: String| VmmError::InvalidConfig {
            id: cfg.id.clone(),
            what,
        };
        let roots = cfg
            .disks
            .iter()
            .filter(|d| d.role == crate::runtime::DiskRole::Root)
            .count();
        if roots > 1 {
            return Err(invalid("at most one root disk".into()));
        }
        if cfg.disks.len() > 26 {
            return Err(invalid("at most 26 disks".into()));
        }
        for (i, d) in cfg.disks.iter().enumerate() {
            if !d.path.is_file() {
                return Err(invalid(format!(
                    "disk {i}: {} is not a file",
                    d.path.display()
                )));
            }
        }
        Ok(())
    }

    /// Creates the state directory, clears what a previous process left (pid, sockets, exit
    /// record, unfinished snapshots) and records the config.
    fn prepare_dir(&self, cfg: &LaunchConfig) -> Result<PathBuf, VmmError> {
        let dir = self.vm_dir(&cfg.id);
        fs::create_dir_all(&dir).map_err(state_err(&dir))?;
        for stale in [PID_FILE, EXIT_FILE, QMP_SOCK, GUEST_SOCK] {
            let p = dir.join(stale);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(VmmError::State { path: p, source: e }),
            }
        }
        snapshot::remove_stale_tmp(&dir, None);
        let config = serde_json::to_vec_pretty(cfg).map_err(|e| VmmError::CorruptState {
            path: dir.join(CONFIG_FILE),
            source: e,
        })?;
        write_atomic(&dir.join(CONFIG_FILE), &config)?;
        Ok(dir)
    }

    /// Waits until a new process answers on its QMP socket; kills it on timeout.
    fn wait_for_qmp(&self, cfg: &LaunchConfig, p: ProcessId) -> Result<(), VmmError> {
        let dir = self.vm_dir(&cfg.id);
        let qmp_path = dir.join(QMP_SOCK);
        let deadline = Instant::now() + START_TIMEOUT;
        let up = wait_until(deadline, || {
            !p.is_alive() || UnixStream::connect(&qmp_path).is_ok()
        });
        if !p.is_alive() {
            Self::wait_gone(p, Duration::from_secs(2));
            let status = fs::read_to_string(dir.join(EXIT_FILE))
                .ok()
                .and_then(|s| s.split_once('\n').map(|(_, t)| t.trim().to_string()))
                .unwrap_or_else(|| "exited".into());
            return Err(VmmError::EarlyExit {
                id: cfg.id.clone(),
                status,
                log: log_tail(&dir.join(QEMU_LOG)),
            });
        }
        if !up {
            p.signal(libc::SIGKILL);
            Self::wait_gone(p, Duration::from_secs(5));
            return Err(VmmError::StartTimeout {
                id: cfg.id.clone(),
                secs: START_TIMEOUT.as_secs(),
            });
        }
        Ok(())
    }

    /// Waits until the process no longer exists (reaped), accepting a zombie we cannot reap
    /// (another parent) after a while.
    /// Waits until the process is gone and, when this process launched it, its exit has been
    /// recorded (the reaper writes `exit` right after reaping it).
    fn wait_gone(p: ProcessId, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        wait_until(deadline, || !p.exists() && !reaping().contains(&p.pid));
    }
}

/// Pids of VMMs this process reaps that are not recorded yet.
fn reaping() -> std::sync::MutexGuard<'static, std::collections::HashSet<i32>> {
    static REAPING: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<i32>>> =
        std::sync::OnceLock::new();
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

/// How long to wait for QEMU's guest channel socket to accept a connection.
const CHANNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `telemetry` and `ping` wait for the guest's answer.
const CHANNEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a guest may take to gather its telemetry (a guest under attack, e.g. thousands of
/// processes, is slow to list them: that is when its answer matters most).
const TELEMETRY_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The guest channels of the VMs of every QEMU runtime of this process, keyed by socket path: a
/// runtime is cheap to create and several may drive one VM, but QEMU serves one client at a
/// time, so they must share one connection.
fn qemu_channels() -> &'static Channels {
    static CHANNELS: std::sync::OnceLock<Channels> = std::sync::OnceLock::new();
    CHANNELS.get_or_init(Channels::default)
}

impl QemuRuntime {
    /// The key of the VM's channel in [`qemu_channels`] (its socket path).
    fn channel_key(&self, id: &str) -> String {
        self.vm_dir(id)
            .join(GUEST_SOCK)
            .to_string_lossy()
            .into_owned()
    }

    /// The VM's channel, set up (not connected yet) if it was not.
    fn channel(&self, id: &str) -> Result<String, VmmError> {
        validate_id(id)?;
        let dir = self.vm_dir(id);
        if !dir.is_dir() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        let key = self.channel_key(id);
        qemu_channels().ensure_connect(&key, &dir.join(GUEST_SOCK));
        Ok(key)
    }

    fn channel_err(id: &str) -> impl FnOnce(crate::channel::ChannelError) -> VmmError + '_ {
        move |source| VmmError::Channel {
            id: id.to_owned(),
            source,
        }
    }

    /// An exclusive connection to the VM's guest channel (`guest.sock`), for tools that drive
    /// the channel themselves. QEMU serves one client at a time: the runtime's own shared
    /// connection is closed first (requests in flight on it fail as closed), and the runtime's
    /// requests wait until the returned channel is dropped. Prefer [`Runtime::exec`],
    /// [`Runtime::invoke`], [`Runtime::telemetry`] and [`QemuRuntime::ping`].
    pub fn guest_channel(&self, id: &str) -> Result<GuestChannel, VmmError> {
        validate_id(id)?;
        let dir = self.vm_dir(id);
        if !dir.is_dir() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        qemu_channels().close(&self.channel_key(id));
        GuestChannel::connect(&dir.join(GUEST_SOCK), CHANNEL_CONNECT_TIMEOUT)
            .map_err(Self::channel_err(id))
    }

    /// Round trip to the guest agent over the shared channel.
    pub fn ping(&self, id: &str) -> Result<Duration, VmmError> {
        let key = self.channel(id)?;
        qemu_channels()
            .ping(&key, CHANNEL_ANSWER_TIMEOUT)
            .map_err(Self::channel_err(id))
    }

    /// The state of the VM's shared guest channel in this process (all zero before its first
    /// use).
    pub fn channel_status(&self, id: &str) -> ChannelStatus {
        qemu_channels().status(&self.channel_key(id))
    }
}

impl Runtime for QemuRuntime {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn launch(&self, cfg: &LaunchConfig) -> Result<VmProcessInfo, VmmError> {
        validate_id(&cfg.id)?;
        let invalid = |what: &str| VmmError::InvalidConfig {
            id: cfg.id.clone(),
            what: what.to_string(),
        };
        if cfg.vcpus == 0 || cfg.vcpus > 255 {
            return Err(invalid("vcpus must be 1..=255"));
        }
        if cfg.memory_mib < 32 {
            return Err(invalid("memory_mib must be at least 32"));
        }
        if !cfg.image.kernel.is_file() || !cfg.image.initrd.is_file() {
            return Err(invalid("image kernel or initrd missing"));
        }
        if cmdline::kernel_cmdline(cfg, self.tsc_khz).len() > 2000 {
            return Err(invalid("command too long for the kernel command line"));
        }
        self.check_disks(cfg)?;
        let dir = self.vm_dir(&cfg.id);
        if let Some(p) = self.live_process(&cfg.id)? {
            return Ok(VmProcessInfo {
                id: cfg.id.clone(),
                pid: p.pid,
                start_time: p.start_time,
                state_dir: dir,
                already_running: true,
            });
        }
        self.prepare_dir(cfg)?;
        // A fresh boot: whatever a restore here said about readiness no longer holds.
        let _ = fs::remove_file(dir.join(crate::runtime::GUEST_READY_MARKER));
        let p = self.spawn(cfg, &dir, &ArgOptions::default())?;
        self.wait_for_qmp(cfg, p)?;
        Ok(VmProcessInfo {
            id: cfg.id.clone(),
            pid: p.pid,
            start_time: p.start_time,
            state_dir: dir,
            already_running: false,
        })
    }

    fn list(&self) -> Result<Vec<String>, VmmError> {
        let mut ids = Vec::new();
        let entries = fs::read_dir(&self.state_root).map_err(state_err(&self.state_root))?;
        for e in entries {
            let e = e.map_err(state_err(&self.state_root))?;
            let name = e.file_name().to_string_lossy().to_string();
            if validate_id(&name).is_ok() && e.path().join(CONFIG_FILE).is_file() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn observe(&self, id: &str) -> Result<Observation, VmmError> {
        validate_id(id)?;
        let dir = self.vm_dir(id);
        if !dir.is_dir() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        let p = self.process(id)?;
        let running = p.is_some_and(|p| p.is_alive());
        let console_path = dir.join(CONSOLE_LOG);
        let console = match fs::read(&console_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(VmmError::State {
                    path: console_path,
                    source: e,
                })
            }
        };
        let (mut ready, mut exit_code, mut powering_off) = (false, None, false);
        for line in String::from_utf8_lossy(&console).lines() {
            match parse_line(line) {
                Some(ConsoleEvent::Ready) => ready = true,
                Some(ConsoleEvent::ExitStatus(c)) => exit_code = Some(c),
                Some(ConsoleEvent::PoweringOff) => powering_off = true,
                None => {}
            }
        }
        let vmm_exit = fs::read_to_string(dir.join(EXIT_FILE)).ok().and_then(|s| {
            let (who, text) = s.split_once('\n')?;
            (p.is_some() && ProcessId::parse(who) == p).then(|| text.trim().to_string())
        });
        Ok(Observation {
            id: id.to_string(),
            pid: p.map(|p| p.pid),
            running,
            guest_ready: ready || dir.join(crate::runtime::GUEST_READY_MARKER).exists(),
            guest_exit_code: exit_code,
            powered_off: powering_off && !running,
            vmm_exit,
            paused: running && self.query_paused(id).unwrap_or(false),
        })
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), VmmError> {
        validate_id(id)?;
        let Some(p) = self.process(id)? else {
            return Ok(());
        };
        if !p.is_alive() {
            Self::wait_gone(p, Duration::from_secs(2));
            self.release_cgroups(id);
            qemu_channels().close(&self.channel_key(id));
            return Ok(());
        }
        if !grace.is_zero() {
            let deadline = Instant::now() + grace;
            if !self.send_guest_shutdown(id) {
                // No guest channel: try the ACPI power button.
                let _ = self.qmp(id, "system_powerdown");
            }
            wait_until(deadline, || !p.is_alive());
        }
        if p.is_alive() {
            // Ask QEMU to quit; the reply may be cut short by the exit.
            let _ = self.qmp(id, "quit");
            wait_until(Instant::now() + Duration::from_secs(1), || !p.is_alive());
        }
        if p.is_alive() {
            p.signal(libc::SIGKILL);
            if !wait_until(Instant::now() + Duration::from_secs(5), || !p.is_alive()) {
                return Err(VmmError::Unkillable {
                    id: id.to_string(),
                    pid: p.pid,
                });
            }
        }
        Self::wait_gone(p, Duration::from_secs(2));
        self.release_cgroups(id);
        qemu_channels().close(&self.channel_key(id));
        Ok(())
    }

    fn pause(&self, id: &str) -> Result<(), VmmError> {
        self.pause_vm(id)
    }

    fn resume(&self, id: &str) -> Result<(), VmmError> {
        self.resume_vm(id)
    }

    fn snapshot(&self, id: &str, name: &str, leave_paused: bool) -> Result<SnapshotInfo, VmmError> {
        self.snapshot_vm(id, name, leave_paused)
    }

    fn restore(&self, cfg: &LaunchConfig, snapshot: &Path) -> Result<VmProcessInfo, VmmError> {
        self.restore_vm(cfg, snapshot)
    }

    fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, VmmError> {
        let key = self.channel(id)?;
        qemu_channels()
            .exec(&key, argv, stdin, timeout)
            .map_err(Self::channel_err(id))
    }

    fn invoke(
        &self,
        id: &str,
        handler: &InvokeHandler,
        body: &[u8],
        timeout: Duration,
    ) -> Result<InvokeOutput, VmmError> {
        let key = self.channel(id)?;
        qemu_channels()
            .invoke(&key, handler, body, timeout)
            .map_err(Self::channel_err(id))
    }

    fn telemetry(&self, id: &str) -> Result<GuestTelemetry, VmmError> {
        let key = self.channel(id)?;
        qemu_channels()
            .telemetry(&key, TELEMETRY_ANSWER_TIMEOUT)
            .map_err(Self::channel_err(id))
    }

    fn io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        self.block_io_stats(id)
    }

    fn console(&self, id: &str, offset: u64, max: usize) -> Result<ConsoleChunk, VmmError> {
        validate_id(id)?;
        let dir = self.vm_dir(id);
        if !dir.is_dir() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        let path = dir.join(CONSOLE_LOG);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ConsoleChunk {
                    data: Vec::new(),
                    next_offset: offset,
                })
            }
            Err(e) => return Err(VmmError::State { path, source: e }),
        };
        f.seek(SeekFrom::Start(offset)).map_err(state_err(&path))?;
        let mut data = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64)
            .read_to_end(&mut data)
            .map_err(state_err(&path))?;
        Ok(ConsoleChunk {
            next_offset: offset + data.len() as u64,
            data,
        })
    }

    fn remove(&self, id: &str) -> Result<(), VmmError> {
        validate_id(id)?;
        let dir = self.vm_dir(id);
        if !dir.exists() {
            return Ok(());
        }
        self.stop(id, REMOVE_GRACE)?;
        qemu_channels().close(&self.channel_key(id));
        if let Some(vm) = crate::sandbox::read_vm_sandbox(&dir) {
            crate::sandbox::Sandbox::cleanup(&vm);
        }
        // A reaper thread may still be writing the exit record: retry briefly.
        let mut attempt = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(VmmError::State {
                        path: dir,
                        source: e,
                    })
                }
            }
        }
    }
}

/// A live process (not a zombie) whose working directory is `dir`: the VMM of that VM.
fn find_by_cwd(dir: &Path) -> Option<ProcessId> {
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

/// What a sandboxed spawn needs, prepared before the fork.
struct Jail {
    /// The config with jail-relative kernel and initrd.
    cfg: LaunchConfig,
    vm: crate::sandbox::VmSandbox,
    groups: Vec<libc::gid_t>,
    tap: Option<std::os::fd::OwnedFd>,
}

impl Jail {
    /// QEMU's arguments under the sandbox: the TAP by descriptor, and the seccomp filter.
    fn args(&self, mut args: Vec<String>) -> Vec<String> {
        if let Some(tap) = &self.tap {
            for a in &mut args {
                if a.starts_with("tap,id=n0,") {
                    *a = format!("tap,id=n0,fd={}", tap.as_raw_fd());
                }
            }
        }
        args.push("-sandbox".into());
        args.push(crate::sandbox::QEMU_SECCOMP.into());
        args
    }
}

impl QemuRuntime {
    /// Removes a stopped VM's cgroups (they are made again at its next launch or restore).
    fn release_cgroups(&self, id: &str) {
        if let Some(vm) = crate::sandbox::read_vm_sandbox(&self.vm_dir(id)) {
            crate::sandbox::Sandbox::cleanup(&vm);
        }
    }

    fn prepare_jail(
        &self,
        sb: &crate::sandbox::Sandbox,
        cfg: &LaunchConfig,
        dir: &Path,
    ) -> Result<Jail, VmmError> {
        let sandbox_err = |source| VmmError::Sandbox {
            id: cfg.id.clone(),
            source,
        };
        let vm = sb
            .prepare(&self.state_root, &cfg.id, dir, cfg.vcpus, cfg.memory_mib)
            .map_err(sandbox_err)?;
        let jail_err = |path: &Path| {
            let path = path.to_owned();
            move |source| VmmError::State { path, source }
        };
        let mut jailed = cfg.clone();
        for (src, name) in [
            (&cfg.image.kernel, "vmlinuz"),
            (&cfg.image.initrd, "initrd.img"),
        ] {
            let dst = dir.join(name);
            crate::sandbox::link_into_jail(src, &dst, &vm).map_err(jail_err(&dst))?;
        }
        jailed.image.kernel = PathBuf::from("vmlinuz");
        jailed.image.initrd = PathBuf::from("initrd.img");
        // Disks are opened from the jail: the VM's uid cannot reach the agent's directories.
        for (i, d) in cfg.disks.iter().enumerate() {
            let format =
                crate::disk::detect_format(&d.path).map_err(|e| VmmError::InvalidConfig {
                    id: cfg.id.clone(),
                    what: format!("disk {i}: {e}"),
                })?;
            let name = format!("disk-{i}.{}", format.as_str());
            let dst = dir.join(&name);
            if d.read_only {
                // Shared (a base image): a link when world-readable, else a private copy.
                crate::sandbox::link_into_jail(&d.path, &dst, &vm).map_err(jail_err(&dst))?;
            } else {
                // The VM's own file: the same inode (never a copy: writes must reach the file),
                // now owned by the VM's uid.
                match fs::remove_file(&dst) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(jail_err(&dst)(e)),
                }
                fs::hard_link(&d.path, &dst).map_err(|e| VmmError::InvalidConfig {
                    id: cfg.id.clone(),
                    what: format!(
                        "disk {i}: {} cannot be linked into the VM's jail (a writable disk must be on the filesystem of the state root): {e}",
                        d.path.display()
                    ),
                })?;
                crate::sandbox::give(&dst, &vm).map_err(jail_err(&dst))?;
            }
            jailed.disks[i].vmm_path = Some(PathBuf::from(&name));
            if let Ok(Some(base)) = crate::disk::backing_file(&d.path) {
                let bformat = crate::disk::detect_format(&base).unwrap_or(crate::DiskFormat::Raw);
                let bname = format!("disk-{i}-base.{}", bformat.as_str());
                let bdst = dir.join(&bname);
                crate::sandbox::link_into_jail(&base, &bdst, &vm).map_err(jail_err(&bdst))?;
                jailed.disks[i].vmm_backing = Some(PathBuf::from(bname));
            }
        }
        // A restore appends to the console the previous process wrote.
        let console = dir.join("console.log");
        if console.exists() {
            crate::sandbox::give(&console, &vm).map_err(jail_err(&console))?;
        }
        let tap = match &cfg.net {
            Some(n) => Some(crate::sandbox::open_tap(&n.tap).map_err(jail_err(Path::new(&n.tap)))?),
            None => None,
        };
        let groups = if cfg.accel == firefleet_types::Accel::Kvm {
            crate::sandbox::kvm_group().into_iter().collect()
        } else {
            Vec::new()
        };
        Ok(Jail {
            cfg: jailed,
            vm,
            groups,
            tap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ids() {
        for ok in ["vm-1", "a.b_c", "X"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_vms_are_not_found_and_stop_remove_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let rt =
            QemuRuntime::with_qemu(dir.path().to_path_buf(), "/nonexistent/qemu".into()).unwrap();
        assert!(matches!(rt.observe("nope"), Err(VmmError::NotFound(_))));
        rt.stop("nope", Duration::from_secs(1)).unwrap();
        rt.remove("nope").unwrap();
        assert!(rt.list().unwrap().is_empty());
    }
}
