//! A QEMU runtime's QMP sessions: connecting to a VM's `qmp.sock`, running commands with errors
//! that name the VM and the command, `cont` and migrations (shared by snapshots and live
//! migration), and pause/resume.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::cmdline::QMP_SOCK;
use super::qmp::Qmp;
use super::QemuRuntime;
use crate::error::VmmError;
use crate::statedir;

/// How long a QMP session waits for QEMU's answers.
pub(super) const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration (to a snapshot file, or live) may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a migration stands, from QMP `query-migrate`'s `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MigrationState {
    /// `completed`.
    Completed,
    /// `failed` or `cancelled` (the status).
    Failed(&'static str),
    /// Anything else (setup, active, ...).
    Active,
}

/// The state of a `query-migrate` answer. Pure.
pub(super) fn migration_state(answer: &serde_json::Value) -> MigrationState {
    match answer.get("status").and_then(|s| s.as_str()) {
        Some("completed") => MigrationState::Completed,
        Some("failed") => MigrationState::Failed("failed"),
        Some("cancelled") => MigrationState::Failed("cancelled"),
        _ => MigrationState::Active,
    }
}

/// Polls `query-migrate` every 5 ms until the migration completes or fails.
pub(super) fn wait_migration(qmp: &mut Qmp, id: &str) -> Result<(), VmmError> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let v = qmp
            .execute("query-migrate", None)
            .map_err(|source| VmmError::Qmp {
                id: id.to_string(),
                command: "query-migrate".into(),
                source,
            })?;
        match migration_state(&v) {
            MigrationState::Completed => return Ok(()),
            MigrationState::Failed(status) => {
                let desc = v
                    .get("error-desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("no details");
                return Err(VmmError::Migration {
                    id: id.to_string(),
                    what: format!("{status}: {desc}"),
                });
            }
            MigrationState::Active => {}
        }
        if Instant::now() >= deadline {
            return Err(VmmError::Migration {
                id: id.to_string(),
                what: format!("not done after {} s", MIGRATION_TIMEOUT.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hands QEMU `fd` as `name` (QMP `getfd`), then starts `command` (`migrate` or
/// `migrate-incoming`) on it (`fd:<name>`): the migration stream goes through a descriptor we
/// opened, never `exec:`, which a sandboxed QEMU cannot run.
pub(super) fn migrate_through_fd(
    qmp: &mut Qmp,
    id: &str,
    command: &str,
    name: &str,
    fd: BorrowedFd<'_>,
) -> Result<serde_json::Value, VmmError> {
    qmp.send_fd(name, fd).map_err(|source| VmmError::Qmp {
        id: id.to_string(),
        command: "getfd".into(),
        source,
    })?;
    QemuRuntime::qmp_run(
        qmp,
        id,
        command,
        Some(serde_json::json!({ "uri": format!("fd:{name}") })),
    )
}

impl QemuRuntime {
    pub(super) fn qmp_session(&self, id: &str, timeout: Duration) -> Result<Qmp, VmmError> {
        Qmp::connect(&self.vm_dir(id).join(QMP_SOCK), timeout).map_err(|source| VmmError::Qmp {
            id: id.to_string(),
            command: "connect".into(),
            source,
        })
    }

    pub(super) fn qmp_run(
        qmp: &mut Qmp,
        id: &str,
        command: &str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmmError> {
        qmp.execute(command, args).map_err(|source| VmmError::Qmp {
            id: id.to_string(),
            command: command.to_string(),
            source,
        })
    }

    /// `cont`, retried while QEMU is still finishing the migration ("Migration is not finalized
    /// yet": query-migrate can say completed a moment before the run state leaves
    /// finish-migrate).
    pub(super) fn cont(qmp: &mut Qmp, id: &str) -> Result<(), VmmError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Self::qmp_run(qmp, id, "cont", None) {
                Ok(_) => return Ok(()),
                Err(VmmError::Qmp { source, .. })
                    if source.to_string().contains("not finalized")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn require_running(&self, id: &str) -> Result<(), VmmError> {
        statedir::existing_vm_dir(&self.state_root, id)?;
        match self.live_process(id)? {
            Some(_) => Ok(()),
            None => Err(VmmError::InvalidConfig {
                id: id.to_string(),
                what: "the VM is not running".into(),
            }),
        }
    }

    /// Whether the vCPUs are stopped (QMP `query-status`; short timeout, for `observe`).
    pub(crate) fn query_paused(&self, id: &str) -> Result<bool, VmmError> {
        let mut qmp = self.qmp_session(id, Duration::from_millis(500))?;
        let v = Self::qmp_run(&mut qmp, id, "query-status", None)?;
        Ok(!v.get("running").and_then(|r| r.as_bool()).unwrap_or(true))
    }

    pub(crate) fn pause_vm(&self, id: &str) -> Result<(), VmmError> {
        self.require_running(id)?;
        let mut qmp = self.qmp_session(id, QMP_TIMEOUT)?;
        Self::qmp_run(&mut qmp, id, "stop", None).map(|_| ())
    }

    pub(crate) fn resume_vm(&self, id: &str) -> Result<(), VmmError> {
        self.require_running(id)?;
        let mut qmp = self.qmp_session(id, QMP_TIMEOUT)?;
        Self::cont(&mut qmp, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_migration_state() {
        let state = |s: &str| migration_state(&serde_json::json!({ "status": s }));
        assert_eq!(state("completed"), MigrationState::Completed);
        assert_eq!(state("failed"), MigrationState::Failed("failed"));
        assert_eq!(state("cancelled"), MigrationState::Failed("cancelled"));
        assert_eq!(state("active"), MigrationState::Active);
        assert_eq!(
            migration_state(&serde_json::json!({})),
            MigrationState::Active
        );
    }
}
