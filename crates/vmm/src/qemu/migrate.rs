//! Live (pre-copy) migration of a QEMU VM: QEMU streams its state through a descriptor while
//! the guest runs; the source and destination each hand QEMU one end of a socket pair.
//! (Snapshots, which save the state to a file while the guest is paused, are in
//! [`super::snapshot`]; both drive QMP through [`super::vmctl`].)

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::cmdline::ArgOptions;
use super::vmctl::{
    migrate_through_fd, migration_state, wait_migration, MigrationState, QMP_TIMEOUT,
};
use super::QemuRuntime;
use crate::error::VmmError;
use crate::process::kill_and_reap;
use crate::statedir::{self, validate_id};
use crate::vm::{LaunchConfig, VmProcessInfo};

/// What a live migration out reported (QMP `query-migrate` when it completed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveStats {
    /// Total time of the migration, ms.
    pub total_ms: u64,
    /// How long the guest was stopped at the end, ms (QEMU's measure).
    pub downtime_ms: u64,
    /// RAM bytes sent.
    pub ram_bytes: u64,
}

const LIVE_FD: &str = "firefleet-live";

impl QemuRuntime {
    /// Live (pre-copy) migration out of a running VM: QEMU streams its state into `out` (one end
    /// of a stream whose other end the caller forwards to the destination) while the guest runs,
    /// stopping it only for the final round. Returns when QEMU reports the migration complete;
    /// the VM is then stopped here (postmigrate). VMs with writable disks are refused (their
    /// blocks would have to move too: use a snapshot migration).
    pub fn live_send(
        &self,
        id: &str,
        out: &std::os::unix::net::UnixStream,
    ) -> Result<LiveStats, VmmError> {
        self.require_running(id)?;
        let cfg = statedir::read_config(&self.vm_dir(id))?;
        if cfg.disks.iter().any(|d| !d.read_only) {
            return Err(VmmError::Unsupported {
                backend: "qemu",
                op: "live migration of a VM with writable disks",
                id: id.to_string(),
            });
        }
        let mut qmp = self.qmp_session(id, QMP_TIMEOUT)?;
        migrate_through_fd(&mut qmp, id, "migrate", LIVE_FD, out.as_fd())?;
        wait_migration(&mut qmp, id)?;
        let v = Self::qmp_run(&mut qmp, id, "query-migrate", None)?;
        let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        Ok(LiveStats {
            total_ms: num(&v["total-time"]),
            downtime_ms: num(&v["downtime"]),
            ram_bytes: num(&v["ram"]["transferred"]),
        })
    }

    /// The kernel command line VM `id` was booted with (a live migration's destination must
    /// pass the same).
    pub fn booted_kernel_cmdline(&self, id: &str) -> Result<String, VmmError> {
        let cfg = statedir::read_config(&self.vm_dir(id))?;
        Ok(super::cmdline::kernel_cmdline(&cfg, self.tsc_khz))
    }

    /// The destination of a live migration: starts a VMM for `cfg` waiting for incoming state
    /// on `input` (the caller feeds it the source's stream), booted with the source's
    /// `kernel_cmdline`. Returns once QEMU is reading; [`QemuRuntime::live_finish`] waits for
    /// the guest to run.
    pub fn live_receive(
        &self,
        cfg: &LaunchConfig,
        kernel_cmdline: &str,
        input: &std::os::unix::net::UnixStream,
    ) -> Result<VmProcessInfo, VmmError> {
        validate_id(&cfg.id)?;
        if let Some(p) = self.live_process(&cfg.id)? {
            return Err(VmmError::InvalidConfig {
                id: cfg.id.clone(),
                what: format!("the VM is running here already (pid {})", p.pid),
            });
        }
        self.check_disks(cfg)?;
        let dir = self.prepare_dir(cfg)?;
        let opts = ArgOptions {
            kernel_cmdline: Some(kernel_cmdline.to_string()),
            incoming: true,
            append_console: true,
            // Stopped once loaded: the caller puts the source's console in place first.
            start_paused: true,
        };
        let p = self.spawn(cfg, &dir, &opts)?;
        self.wait_for_qmp(cfg, p)?;
        let started = (|| {
            let mut qmp = self.qmp_session(&cfg.id, QMP_TIMEOUT)?;
            migrate_through_fd(
                &mut qmp,
                &cfg.id,
                "migrate-incoming",
                LIVE_FD,
                input.as_fd(),
            )
        })();
        if let Err(e) = started {
            kill_and_reap(p);
            return Err(e);
        }
        Ok(p.info(&cfg.id, dir, false))
    }

    /// Waits until an incoming live migration has loaded all the state (the VM stays stopped:
    /// [`Runtime::resume`] runs it), up to `timeout`.
    pub fn live_wait_incoming(&self, id: &str, timeout: Duration) -> Result<(), VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.live_process(id)?.is_none() {
                return Err(VmmError::Migration {
                    id: id.to_string(),
                    what: "the destination VMM exited during the migration".into(),
                });
            }
            let status = self
                .qmp_session(id, Duration::from_secs(2))
                .and_then(|mut q| Self::qmp_run(&mut q, id, "query-migrate", None));
            if let Ok(v) = status {
                match migration_state(&v) {
                    MigrationState::Completed => return Ok(()),
                    MigrationState::Failed(status) => {
                        return Err(VmmError::Migration {
                            id: id.to_string(),
                            what: format!("incoming migration {status}"),
                        })
                    }
                    MigrationState::Active => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Migration {
                    id: id.to_string(),
                    what: format!("incoming state not complete after {} s", timeout.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
