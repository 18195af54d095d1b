//! The runtime abstraction every VMM backend implements.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use firefleet_types::Accel;

use crate::image::Image;

/// A VMM backend. All methods are blocking and idempotent where stated.
pub trait Runtime: Send + Sync {
    /// The backend's name (`qemu`).
    fn name(&self) -> &'static str;
    /// Starts the VMM and returns once its process is up (not waiting for the guest). If the
    /// VM's state directory shows a live process, returns that one instead.
    fn launch(&self, cfg: &LaunchConfig) -> Result<VmProcessInfo, VmmError>;
    /// Ids of the VMs that have a state directory (to re-adopt after an agent restart).
    fn list(&self) -> Result<Vec<String>, VmmError>;
    /// What is known about a VM now.
    fn observe(&self, id: &str) -> Result<Observation, VmmError>;
    /// Graceful stop (guest channel, else ACPI), then forced after `grace`. Idempotent.
    fn stop(&self, id: &str, grace: Duration) -> Result<(), VmmError>;
    /// Captured console bytes from `offset`, at most `max`.
    fn console(&self, id: &str, offset: u64, max: usize) -> Result<ConsoleChunk, VmmError>;
    /// Stops the VM if running and deletes its state directory. Idempotent.
    fn remove(&self, id: &str) -> Result<(), VmmError>;
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaunchConfig {
    /// The VM's id: `[A-Za-z0-9_.-]`, at most 64 characters, not starting with `.`.
    pub id: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The image to boot.
    pub image: Image,
    /// The workload; `None` idles until stopped.
    pub cmd: Option<Vec<String>>,
    /// KVM or TCG.
    pub accel: Accel,
}

/// A running VMM process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmProcessInfo {
    /// The VM's id.
    pub id: String,
    /// The VMM's pid.
    pub pid: i32,
    /// The process start time (field 22 of /proc/PID/stat, in clock ticks since boot), which
    /// tells our process from a later one that reused the pid.
    pub start_time: u64,
    /// The VM's state directory.
    pub state_dir: PathBuf,
    /// True if `launch` found the VM already running instead of starting it.
    pub already_running: bool,
}

/// What `observe` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observation {
    /// The VM's id.
    pub id: String,
    /// The VMM's pid, if one was recorded.
    pub pid: Option<i32>,
    /// The VMM process is alive (pid and start time match, not a zombie).
    pub running: bool,
    /// The console shows the guest's ready line.
    pub guest_ready: bool,
    /// The workload's exit code, from the console.
    pub guest_exit_code: Option<i32>,
    /// The guest powered itself off (its power-off line is on the console) and the VMM is gone.
    pub powered_off: bool,
    /// How the VMM process ended, when this host saw it end (e.g. `exit status: 0`).
    pub vmm_exit: Option<String>,
}

/// A piece of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// The bytes.
    pub data: Vec<u8>,
    /// The offset to ask for next.
    pub next_offset: u64,
}

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
    /// A QMP exchange failed.
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
    /// The VMM process survived SIGKILL.
    #[error("VMM of VM {id} (pid {pid}) is still alive after SIGKILL")]
    Unkillable {
        /// The VM.
        id: String,
        /// The pid.
        pid: i32,
    },
}
