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
//! from the state directory (pid + start time) and driven over QMP and the guest channel. The
//! process, state-directory and console handling is the crate's shared core ([`crate::process`]
//! and the private `statedir`, `console`, `observe` modules); this module adds QEMU's command
//! line ([`cmdline`]), QMP ([`qmp`], and the private `vmctl`), the sandbox jail, snapshots
//! ([`snapshot`]) and live migration ([`migrate`]).

mod blockstats;
mod channel;
pub mod cmdline;
mod jail;
pub mod migrate;
pub mod qmp;
pub mod snapshot;
mod vmctl;

/// The process helpers, at their old path (they serve every backend: [`crate::process`]).
pub use crate::process;

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firefleet_guest::proto::Message;

pub use crate::channel::mux::ChannelStatus;
use crate::error::VmmError;
use crate::fsutil::{state_err, write_atomic};
use crate::guestlink::GuestLink;
use crate::observe;
use crate::process::{alive, find_by_cwd, kill_if_alive, Launch};
use crate::process::{wait_gone, ProcessId};
use crate::runtime::Runtime;
use crate::statedir::{self, validate_id};
use crate::vm::{LaunchConfig, Observation, SnapshotInfo, VmProcessInfo, VmmIoStats};
use crate::wait::wait_until;
use channel::qemu_channels;
use cmdline::{ArgOptions, EXIT_FILE, GUEST_SOCK, PID_FILE, QEMU_LOG, QMP_SOCK};
use qmp::Qmp;

const START_TIMEOUT: Duration = Duration::from_secs(10);

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

impl QemuRuntime {
    /// A runtime keeping VM state under `state_root` (created if missing).
    pub fn new(state_root: PathBuf) -> Result<Self, VmmError> {
        let qemu = find_qemu().ok_or(VmmError::QemuNotFound)?;
        Self::with_qemu(state_root, qemu)
    }

    /// A runtime with an explicit QEMU binary.
    pub fn with_qemu(state_root: PathBuf, qemu: PathBuf) -> Result<Self, VmmError> {
        statedir::create_root(&state_root)?;
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
        statedir::vm_dir(&self.state_root, id)
    }

    fn process(&self, id: &str) -> Result<Option<ProcessId>, VmmError> {
        if let Some(p) = ProcessId::recorded(&self.vm_dir(id))? {
            return Ok(Some(p));
        }
        // No pid file: the launcher may have died between starting QEMU and recording it. QEMU
        // runs in the VM's directory, so find it by its working directory and record it now.
        let Some(p) = find_by_cwd(&self.vm_dir(id)) else {
            return Ok(None);
        };
        write_atomic(
            &self.vm_dir(id).join(PID_FILE),
            p.to_file_contents().as_bytes(),
        )?;
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
        let launch = Launch {
            id: &cfg.id,
            binary: &self.qemu,
            dir,
            log: &log_path,
        };
        launch.start(&mut cmd, |p| match (&self.sandbox, &jail) {
            (Some(sb), Some(j)) => sb.attach(&j.vm, p.pid).map_err(|e| VmmError::Sandbox {
                id: cfg.id.clone(),
                source: e,
            }),
            _ => Ok(()),
        })
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
        Ok(alive(self.process(id)?))
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
        statedir::prepare(
            &dir,
            [PID_FILE, EXIT_FILE, QMP_SOCK, GUEST_SOCK].map(|f| dir.join(f)),
        )?;
        snapshot::remove_stale_tmp(&dir, None);
        statedir::write_config(&dir, cfg)?;
        Ok(dir)
    }

    /// Waits until a new process answers on its QMP socket; kills it on timeout.
    fn wait_for_qmp(&self, cfg: &LaunchConfig, p: ProcessId) -> Result<(), VmmError> {
        let dir = self.vm_dir(&cfg.id);
        let launch = Launch {
            id: &cfg.id,
            binary: &self.qemu,
            dir: &dir,
            log: &dir.join(QEMU_LOG),
        };
        launch.wait_for_socket(p, &dir.join(QMP_SOCK), START_TIMEOUT)
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
            return Ok(p.info(&cfg.id, dir, true));
        }
        self.prepare_dir(cfg)?;
        // A fresh boot: whatever a restore here said about readiness no longer holds.
        let _ = fs::remove_file(dir.join(crate::runtime::GUEST_READY_MARKER));
        let p = self.spawn(cfg, &dir, &ArgOptions::default())?;
        self.wait_for_qmp(cfg, p)?;
        Ok(p.info(&cfg.id, dir, false))
    }

    fn observe(&self, id: &str) -> Result<Observation, VmmError> {
        let dir = statedir::existing_vm_dir(&self.state_root, id)?;
        let mut o = observe::from_state_dir(id, &dir, self.process(id)?)?;
        o.paused = o.running && self.query_paused(id).unwrap_or(false);
        Ok(o)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), VmmError> {
        validate_id(id)?;
        let Some(p) = self.process(id)? else {
            return Ok(());
        };
        if !p.is_alive() {
            wait_gone(p, Duration::from_secs(2));
            self.release(id);
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
        kill_if_alive(id, p)?;
        self.release(id);
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

    fn guest_link(&self, id: &str, _op: &'static str) -> Result<GuestLink<'_>, VmmError> {
        Ok(GuestLink::new(qemu_channels(), self.channel(id)?, id))
    }

    fn io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        self.block_io_stats(id)
    }

    fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// The shared guest channel and the VM's cgroups (made again at its next launch or
    /// restore).
    fn release(&self, id: &str) {
        self.release_cgroups(id);
        qemu_channels().close(&self.channel_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
