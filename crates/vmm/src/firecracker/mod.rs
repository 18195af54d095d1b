//! The Firecracker backend of [`Runtime`].
//!
//! Each VM has a state directory `state_root/<id>/` with `config.json` (the [`LaunchConfig`]),
//! `pid` (`"<pid> <start time>"`), `api.sock` (Firecracker's REST API), `vsock.sock` (the vsock
//! device; the guest channel arrives on `vsock.sock_1024`, see [`channel`]), `console.log`
//! (Firecracker's stdout and stderr: the serial console, plus the few log lines Firecracker
//! prints before its logger is configured), `firecracker.log`, `metrics.json` and, once the
//! process that launched it reaped it, `exit`. Snapshots go to `snapshots/<name>/`.
//!
//! Firecracker runs in its own session (setsid) with the state directory as its working
//! directory, so the socket paths it binds are short relative names. It is configured over
//! its API (logger, metrics, machine, boot source, drives, network, vsock), then started with
//! `InstanceStart`. Firecracker needs KVM: a launch with `Accel::Tcg` is refused.
//!
//! While the launching process lives, a waiter thread per child reaps it (no zombies); after a
//! restart the VM is found again from the state directory (pid + start time) and driven over
//! its API socket.
//!
//! `exec`, `invoke` and `telemetry` go over the vsock guest channel ([`channel::Channels`]). `io_stats`
//! flushes the metrics and sums the file: Firecracker writes each counter as its increase since
//! the previous flush, so the file (started afresh for every new process) holds the whole
//! history, read incrementally ([`crate::stats::FcMetricsSums`]).

pub mod api;
pub mod channel;
pub mod config;
mod jailer;
mod metrics;
pub mod snapshot;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firefleet_guest::proto::Message;
use firefleet_types::Accel;

use crate::error::VmmError;
use crate::fsutil::{remove_file_if_exists, state_err};
use crate::guestlink::GuestLink;
use crate::observe;
use crate::process::ProcessId;
use crate::process::{alive, kill_and_reap, kill_if_alive, wait_gone, Launch};
use crate::runtime::Runtime;
use crate::statedir::{self, validate_id};
use crate::vm::{DiskRole, LaunchConfig, Observation, SnapshotInfo, VmProcessInfo, VmmIoStats};
use crate::wait::wait_until;
use api::{ApiClient, ApiError};
pub use channel::ChannelStatus;
use config::{
    Action, Logger, Metrics, VmState, API_SOCK, CONSOLE_LOG, EXIT_FILE, FC_LOG, MAX_CMDLINE,
    METRICS_FILE, PID_FILE, VSOCK_SOCK,
};
pub use jailer::JailerConfig;
use jailer::{jail_root, jailer_command};
use metrics::AllMetricSums;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// The Firecracker runtime. Holds no per-VM state in memory beyond the guest channel listeners
/// and the running sums of the metrics files (rebuilt from the file when missing): the state
/// directories are the truth, so a new instance on the same root re-adopts running VMs.
#[derive(Debug, Clone)]
pub struct FirecrackerRuntime {
    state_root: PathBuf,
    firecracker: PathBuf,
    jailer: Option<JailerConfig>,
    channels: Arc<channel::Channels>,
    /// Per VM: the process the sums belong to, and the sums.
    metric_sums: AllMetricSums,
}

/// Maps an API failure to the runtime error of the operation it was part of; the chain keeps
/// Firecracker's `fault_message`.
pub(crate) fn api_failed(id: &str, e: ApiError) -> VmmError {
    let command = match &e {
        ApiError::Io { method, path, .. }
        | ApiError::Status { method, path, .. }
        | ApiError::Malformed { method, path, .. } => format!("firecracker API {method} {path}"),
    };
    VmmError::Qmp {
        id: id.to_string(),
        command,
        source: io::Error::other(e),
    }
}

impl FirecrackerRuntime {
    /// A runtime keeping VM state under `state_root` (created if missing), running
    /// `firecracker_bin` directly or under the jailer.
    pub fn new(
        state_root: PathBuf,
        firecracker_bin: PathBuf,
        jailer: Option<JailerConfig>,
    ) -> Result<Self, VmmError> {
        statedir::create_root(&state_root)?;
        Ok(Self {
            state_root,
            firecracker: firecracker_bin,
            jailer,
            channels: Arc::default(),
            metric_sums: Arc::default(),
        })
    }

    /// The Firecracker binary in use.
    pub fn firecracker(&self) -> &Path {
        &self.firecracker
    }

    /// The state root.
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// A VM's state directory.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        statedir::vm_dir(&self.state_root, id)
    }

    /// Where Firecracker's relative paths (sockets, logs, snapshots) resolve: the state
    /// directory, or the chroot under the jailer.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        match &self.jailer {
            None => self.vm_dir(id),
            Some(j) => jail_root(j, &self.firecracker, id),
        }
    }

    /// The VM's API client.
    pub fn api(&self, id: &str) -> ApiClient {
        ApiClient::new(self.run_dir(id).join(API_SOCK), API_TIMEOUT)
    }

    /// The guest channel's state as this runtime sees it.
    pub fn guest_channel(&self, id: &str) -> ChannelStatus {
        self.channels.status(id)
    }

    /// Firecracker's `GET /` (describe-instance): `{"id", "state", "vmm_version", "app_name"}`.
    pub fn describe(&self, id: &str) -> Result<serde_json::Value, VmmError> {
        validate_id(id)?;
        self.api(id).get("/").map_err(|e| api_failed(id, e))
    }

    /// Checks that the VM exists and that this process listens for its guest channel (after a
    /// restart, the guest reconnects to the new listener).
    fn channel_for(&self, id: &str) -> Result<(), VmmError> {
        statedir::existing_vm_dir(&self.state_root, id)?;
        if self.live_process(id)?.is_some() {
            self.ensure_channel(id)?;
        }
        Ok(())
    }

    fn process(&self, id: &str) -> Result<Option<ProcessId>, VmmError> {
        ProcessId::recorded(&self.vm_dir(id))
    }

    /// The VM's process if it is alive (a zombie of ours is given a moment to be reaped).
    fn live_process(&self, id: &str) -> Result<Option<ProcessId>, VmmError> {
        Ok(alive(self.process(id)?))
    }

    fn ensure_channel(&self, id: &str) -> Result<(), VmmError> {
        let path = self.run_dir(id).join(config::guest_channel_sock());
        self.channels
            .ensure(id, &path)
            .map_err(|source| VmmError::State { path, source })
    }

    fn check(&self, cfg: &LaunchConfig) -> Result<PathBuf, VmmError> {
        validate_id(&cfg.id)?;
        let invalid = |what: String| VmmError::InvalidConfig {
            id: cfg.id.clone(),
            what,
        };
        if cfg.accel != Accel::Kvm {
            return Err(invalid(
                "firecracker runs on KVM only (accel must be kvm)".into(),
            ));
        }
        if cfg.vcpus == 0 || cfg.vcpus > 32 {
            return Err(invalid("vcpus must be 1..=32 for firecracker".into()));
        }
        if cfg.memory_mib < 32 {
            return Err(invalid("memory_mib must be at least 32".into()));
        }
        let kernel = match &cfg.image.vmlinux {
            Some(k) if k.is_file() => k.clone(),
            _ => {
                return Err(invalid(
                    "image has no uncompressed vmlinux (needed by firecracker)".into(),
                ))
            }
        };
        if !cfg.image.initrd.is_file() {
            return Err(invalid("image initrd missing".into()));
        }
        if config::boot_args(cfg).len() >= MAX_CMDLINE {
            return Err(invalid(
                "command too long for the kernel command line".into(),
            ));
        }
        if cfg
            .disks
            .iter()
            .filter(|d| d.role == DiskRole::Root)
            .count()
            > 1
        {
            return Err(invalid("at most one root disk".into()));
        }
        for (i, d) in cfg.disks.iter().enumerate() {
            if !d.path.is_file() {
                return Err(invalid(format!(
                    "disk {i}: {} is not a file",
                    d.path.display()
                )));
            }
        }
        Ok(kernel)
    }

    /// Creates the state directory, clears what a previous process left and records the config.
    /// `fresh_console`: truncate the console (a boot) rather than append (a restore).
    fn prepare_dir(&self, cfg: &LaunchConfig, fresh_console: bool) -> Result<PathBuf, VmmError> {
        let dir = self.vm_dir(&cfg.id);
        let run = self.run_dir(&cfg.id);
        statedir::prepare(
            &dir,
            [
                dir.join(PID_FILE),
                dir.join(EXIT_FILE),
                run.join(API_SOCK),
                run.join(VSOCK_SOCK),
            ],
        )?;
        snapshot::remove_stale_tmp(&dir);
        if fresh_console {
            let console = dir.join(CONSOLE_LOG);
            File::create(&console).map_err(state_err(&console))?;
        }
        statedir::write_config(&dir, cfg)?;
        Ok(dir)
    }

    /// Starts the Firecracker process (not yet configured) and waits for its API socket.
    fn spawn(&self, cfg: &LaunchConfig, dir: &Path) -> Result<ProcessId, VmmError> {
        let console_path = dir.join(CONSOLE_LOG);
        let console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console_path)
            .map_err(state_err(&console_path))?;
        let console2 = console.try_clone().map_err(state_err(&console_path))?;
        let run = self.run_dir(&cfg.id);
        let mut cmd = match &self.jailer {
            None => {
                let mut c = Command::new(&self.firecracker);
                c.args(["--api-sock", API_SOCK, "--id", &cfg.id])
                    .current_dir(dir);
                c
            }
            Some(j) => jailer_command(j, &self.firecracker, &cfg.id, self.jail_ids(j, &cfg.id)),
        };
        cmd.stdin(Stdio::null()).stdout(console).stderr(console2);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let binary = self
            .jailer
            .as_ref()
            .map_or_else(|| self.firecracker.clone(), |j| j.jailer_bin.clone());
        let launch = Launch {
            id: &cfg.id,
            binary: &binary,
            dir,
            log: &console_path,
        };
        let p = launch.start(&mut cmd, |_| Ok(()))?;
        launch.wait_for_socket(p, &run.join(API_SOCK), START_TIMEOUT)?;
        Ok(p)
    }

    /// Logger and metrics: the first requests to every new process (also before a snapshot
    /// load, which accepts nothing else before it).
    fn configure_observability(&self, id: &str) -> Result<(), VmmError> {
        let run = self.run_dir(id);
        // A new process starts a new metrics file (a new inode): its counters start at zero,
        // and Firecracker writes from offset 0 without truncating, which would otherwise leave
        // the old process's objects behind its own.
        remove_file_if_exists(&run.join(METRICS_FILE))?;
        for name in [FC_LOG, METRICS_FILE] {
            // Older Firecracker versions open these without O_CREAT.
            let p = run.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(state_err(&p))?;
            self.chown_for_jail(id, &p)?;
        }
        let api = self.api(id);
        api.put(
            "/logger",
            &Logger {
                log_path: FC_LOG.into(),
                level: "Info".into(),
                show_level: true,
                show_log_origin: false,
            },
        )
        .map_err(|e| api_failed(id, e))?;
        api.put(
            "/metrics",
            &Metrics {
                metrics_path: METRICS_FILE.into(),
            },
        )
        .map_err(|e| api_failed(id, e))
    }

    /// Configures a fresh process for a boot and starts the guest.
    fn configure_and_start(&self, cfg: &LaunchConfig, kernel: &Path) -> Result<(), VmmError> {
        let id = &cfg.id;
        self.configure_observability(id)?;
        let (kernel, cfg) = self.jail_files(cfg, kernel)?;
        let api = self.api(id);
        for (path, body) in config::boot_requests(&cfg, &kernel) {
            api.put(&path, &body).map_err(|e| VmmError::InvalidConfig {
                id: id.clone(),
                what: e.to_string(),
            })?;
        }
        self.ensure_channel(id)?;
        api.put(
            "/actions",
            &Action {
                action_type: "InstanceStart",
            },
        )
        .map_err(|e| api_failed(id, e))
    }

    fn set_state(&self, id: &str, state: &'static str) -> Result<(), VmmError> {
        validate_id(id)?;
        if self.live_process(id)?.is_none() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        self.api(id)
            .patch("/vm", &VmState { state })
            .map_err(|e| api_failed(id, e))
    }

    fn is_paused(&self, id: &str) -> bool {
        self.api(id)
            .get("/")
            .ok()
            .is_some_and(|v| v["state"] == "Paused")
    }
}

impl Runtime for FirecrackerRuntime {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn launch(&self, cfg: &LaunchConfig) -> Result<VmProcessInfo, VmmError> {
        let kernel = self.check(cfg)?;
        let dir = self.vm_dir(&cfg.id);
        if let Some(p) = self.live_process(&cfg.id)? {
            // Re-adopted: listen for the guest channel again in this process.
            self.ensure_channel(&cfg.id)?;
            return Ok(p.info(&cfg.id, dir, true));
        }
        self.channels.close(&cfg.id);
        self.prepare_dir(cfg, true)?;
        // A fresh boot: whatever a restore here said about readiness no longer holds.
        let _ = fs::remove_file(dir.join(crate::runtime::GUEST_READY_MARKER));
        let p = self.spawn(cfg, &dir)?;
        if let Err(e) = self.configure_and_start(cfg, &kernel) {
            kill_and_reap(p);
            self.channels.close(&cfg.id);
            return Err(e);
        }
        Ok(p.info(&cfg.id, dir, false))
    }

    fn observe(&self, id: &str) -> Result<Observation, VmmError> {
        let dir = statedir::existing_vm_dir(&self.state_root, id)?;
        let p = self.process(id)?;
        if p.is_some_and(|p| p.is_alive()) {
            // After a restart, listen for the guest channel again.
            let _ = self.ensure_channel(id);
        }
        let mut o = observe::from_state_dir(id, &dir, p)?;
        o.guest_ready |= self.channels.status(id).ready;
        o.paused = o.running && self.is_paused(id);
        Ok(o)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), VmmError> {
        validate_id(id)?;
        let Some(p) = self.process(id)? else {
            self.channels.close(id);
            return Ok(());
        };
        if !p.is_alive() {
            wait_gone(p, Duration::from_secs(2));
            self.channels.close(id);
            return Ok(());
        }
        if !grace.is_zero() {
            let deadline = Instant::now() + grace;
            if self.is_paused(id) {
                // A paused guest cannot act on a request: let it run to shut down.
                let _ = self.api(id).patch("/vm", &VmState { state: "Resumed" });
            }
            if !self.channels.send(id, &Message::Shutdown) {
                // No guest channel: Ctrl+Alt+Del through the i8042 (with `reboot=k` the guest
                // resets, and Firecracker exits on a guest reset).
                let _ = self.api(id).put(
                    "/actions",
                    &Action {
                        action_type: "SendCtrlAltDel",
                    },
                );
            }
            wait_until(deadline, || !p.is_alive());
        }
        kill_if_alive(id, p)?;
        self.channels.close(id);
        Ok(())
    }

    fn state_root(&self) -> &Path {
        &self.state_root
    }

    fn release(&self, id: &str) {
        self.metric_sums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if self.jailer.is_some() {
            if let Some(jail) = self.run_dir(id).parent() {
                let _ = fs::remove_dir_all(jail);
            }
        }
    }

    fn pause(&self, id: &str) -> Result<(), VmmError> {
        self.set_state(id, "Paused")
    }

    fn resume(&self, id: &str) -> Result<(), VmmError> {
        self.set_state(id, "Resumed")
    }

    fn snapshot(&self, id: &str, name: &str, leave_paused: bool) -> Result<SnapshotInfo, VmmError> {
        self.snapshot_vm(id, name, leave_paused)
    }

    fn restore(&self, cfg: &LaunchConfig, snapshot: &Path) -> Result<VmProcessInfo, VmmError> {
        self.restore_vm(cfg, snapshot)
    }

    fn guest_link(&self, id: &str, _op: &'static str) -> Result<GuestLink<'_>, VmmError> {
        self.channel_for(id)?;
        Ok(GuestLink::new(&self.channels, id, id))
    }

    fn io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        self.vmm_io_stats(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_vms_are_not_found_and_stop_remove_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FirecrackerRuntime::new(
            dir.path().to_path_buf(),
            "/nonexistent/firecracker".into(),
            None,
        )
        .unwrap();
        assert_eq!(rt.name(), "firecracker");
        assert!(matches!(rt.observe("nope"), Err(VmmError::NotFound(_))));
        assert!(matches!(rt.observe("a/b"), Err(VmmError::InvalidId(_))));
        rt.stop("nope", Duration::from_secs(1)).unwrap();
        rt.remove("nope").unwrap();
        assert!(rt.list().unwrap().is_empty());
        assert!(matches!(rt.pause("nope"), Err(VmmError::NotFound(_))));
        assert!(matches!(
            rt.exec("nope", &["true".into()], None, Duration::from_secs(1)),
            Err(VmmError::NotFound(_))
        ));
        assert!(matches!(rt.telemetry("nope"), Err(VmmError::NotFound(_))));
        let handler = crate::InvokeHandler::Command {
            argv: vec!["cat".into()],
        };
        assert!(matches!(
            rt.invoke("nope", &handler, b"x", Duration::from_secs(1)),
            Err(VmmError::NotFound(_))
        ));
        assert!(matches!(rt.io_stats("nope"), Err(VmmError::NotFound(_))));
        assert!(matches!(rt.io_stats("a/b"), Err(VmmError::InvalidId(_))));
        // A VM directory without a live process: a channel error at once (nobody listens),
        // and no counters.
        std::fs::create_dir(dir.path().join("idle")).unwrap();
        let started = Instant::now();
        let err = rt
            .exec("idle", &["true".into()], None, Duration::from_secs(30))
            .unwrap_err();
        assert!(matches!(err, VmmError::Channel { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(rt.io_stats("idle"), Err(VmmError::Qmp { .. })));
    }
}
