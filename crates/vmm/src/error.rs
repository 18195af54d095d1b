//! [`VmmError`], the error of every runtime operation.

use std::io;
use std::path::PathBuf;

use crate::channel::ChannelError;

/// Runtime errors. Each names what failed; causes are chained with `source`.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// No QEMU binary.
    #[error("qemu-system-x86_64 not found on PATH (set FIREFLEET_QEMU)")]
    QemuNotFound,
    /// The id cannot name a state directory.
    #[error("invalid VM id {0:?}")]
    InvalidId(String),
    /// No such VM.
    #[error("no VM {0:?}")]
    NotFound(String),
    /// A launch parameter is unusable.
    #[error("invalid launch config for VM {id}: {what}")]
    InvalidConfig {
        /// The VM.
        id: String,
        /// What is wrong.
        what: String,
    },
    /// A state file could not be read or written.
    #[error("state file {path}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file has unexpected contents.
    #[error("corrupt state file {path}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The VMM could not be started.
    #[error("starting {binary} for VM {id}")]
    Spawn {
        /// The VM.
        id: String,
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The VMM exited while starting.
    #[error("VMM of VM {id} exited during startup ({status}): {log}")]
    EarlyExit {
        /// The VM.
        id: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// The VMM did not come up in time.
    #[error("VMM of VM {id} did not create its control socket within {secs} s")]
    StartTimeout {
        /// The VM.
        id: String,
        /// The wait.
        secs: u64,
    },
    /// The VMM could not be sandboxed (uid, cgroups, jail).
    #[error("sandboxing the VMM of VM {id}")]
    Sandbox {
        /// The VM.
        id: String,
        /// Cause.
        #[source]
        source: crate::sandbox::SandboxError,
    },
    /// The backend cannot do this operation.
    #[error("{backend} does not support {op} (VM {id})")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// The operation.
        op: &'static str,
        /// The VM.
        id: String,
    },
    /// A QMP (or Firecracker API) exchange failed.
    #[error("QMP {command} on VM {id}")]
    Qmp {
        /// The VM.
        id: String,
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A snapshot directory is incomplete, corrupt or does not fit the VM.
    #[error("snapshot {path} is not usable: {what}")]
    InvalidSnapshot {
        /// The snapshot directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Saving or loading a VM's state failed.
    #[error("migration of VM {id} failed: {what}")]
    Migration {
        /// The VM.
        id: String,
        /// What QEMU reported.
        what: String,
    },
    /// Talking to the guest over the guest channel failed.
    #[error("guest channel of VM {id}")]
    Channel {
        /// The VM.
        id: String,
        /// The cause.
        #[source]
        source: ChannelError,
    },
    /// The VMM process survived SIGKILL.
    #[error("VMM of VM {id} (pid {pid}) is still alive after SIGKILL")]
    Unkillable {
        /// The VM.
        id: String,
        /// The pid.
        pid: i32,
    },
}
