//! The runtime abstraction every VMM backend implements.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use firefleet_types::Accel;

use crate::channel::{ChannelError, ExecOutput, GuestTelemetry, InvokeHandler, InvokeOutput};
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
    /// Pauses the guest's vCPUs (guest time stops). Idempotent.
    fn pause(&self, id: &str) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "pause",
            id: id.to_owned(),
        })
    }
    /// Resumes a paused guest. Idempotent.
    fn resume(&self, id: &str) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "resume",
            id: id.to_owned(),
        })
    }
    /// Writes a snapshot (memory, device state, disks) of a running or paused VM to
    /// `<state dir>/snapshots/<name>/`, atomically: a crash never leaves a directory that looks
    /// complete but is not. The VM is left paused if `leave_paused`, else it runs on.
    fn snapshot(&self, id: &str, name: &str, leave_paused: bool) -> Result<SnapshotInfo, VmmError> {
        let _ = (name, leave_paused);
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "snapshot",
            id: id.to_owned(),
        })
    }
    /// Runs `argv` in the guest through the guest channel (killed after `timeout`), with `stdin`
    /// as its input if given.
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, VmmError> {
        let _ = (argv, stdin, timeout);
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "exec",
            id: id.to_owned(),
        })
    }
    /// Runs one invocation of a serverless function in the guest through the guest channel:
    /// `handler` (a command run per invocation, or the workload's HTTP port) gets `body` and is
    /// stopped after `timeout`. Invocations on one VM run concurrently. A `body` over
    /// [`crate::channel::MAX_BODY`] bytes is refused before anything is sent.
    fn invoke(
        &self,
        id: &str,
        handler: &InvokeHandler,
        body: &[u8],
        timeout: Duration,
    ) -> Result<InvokeOutput, VmmError> {
        let _ = (handler, body, timeout);
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "invoke",
            id: id.to_owned(),
        })
    }
    /// The guest's telemetry (processes, sockets, load, memory) through the guest channel.
    fn telemetry(&self, id: &str) -> Result<GuestTelemetry, VmmError> {
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "telemetry",
            id: id.to_owned(),
        })
    }
    /// The I/O counters the VMM keeps for a running VM: per disk, and the backend's own metrics
    /// where it has them. Empty where the backend keeps none.
    fn io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        let _ = id;
        Ok(VmmIoStats::default())
    }
    /// Starts a fresh VMM process for `cfg.id` from a complete snapshot directory (possibly
    /// copied from another node) and lets it run: the guest continues where it was snapshotted.
    /// The VM must not be running on this host.
    fn restore(
        &self,
        cfg: &LaunchConfig,
        snapshot: &std::path::Path,
    ) -> Result<VmProcessInfo, VmmError> {
        let _ = snapshot;
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "restore",
            id: cfg.id.clone(),
        })
    }
}

/// I/O counters of one disk, as the VMM counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskCounters {
    /// The device's name in the VMM (QEMU's node or device name, Firecracker's drive id).
    pub device: String,
    /// Bytes read by the guest.
    pub read_bytes: u64,
    /// Bytes written by the guest.
    pub write_bytes: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Write requests.
    pub write_ops: u64,
}

/// What [`Runtime::io_stats`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmmIoStats {
    /// Per disk, in attachment order.
    pub disks: Vec<DiskCounters>,
    /// The backend's own counters (Firecracker's metrics, flattened to `group.name`), if any.
    pub metrics: std::collections::BTreeMap<String, u64>,
}

/// A file in a VM's state directory saying its guest was ready before it came to this node
/// (restored or migrated here): its console here starts after the guest's ready line. A fresh
/// launch removes it.
pub const GUEST_READY_MARKER: &str = "guest-ready";

/// A snapshot written by [`Runtime::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// The complete snapshot directory.
    pub dir: PathBuf,
    /// Bytes on disk (memory, device state, disks).
    pub bytes: u64,
    /// When it was taken (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// How long the VM was paused for it, in milliseconds.
    pub pause_ms: u64,
}

/// A network interface for a VM, prepared on the host (bridge, TAP, address, rules) by the
/// `net` module before launch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetAttachment {
    /// The host TAP device's name.
    pub tap: String,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// The guest's address.
    pub guest_ip: std::net::Ipv4Addr,
    /// Prefix length of the node subnet.
    pub prefix_len: u8,
    /// The gateway (the bridge's address).
    pub gateway: std::net::Ipv4Addr,
}

/// What a block device is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskRole {
    /// The guest's root filesystem: the workload runs inside it.
    Root,
    /// A data disk, mounted under `/mnt/<index>`.
    Data,
}

/// A block device of a VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// The image file (raw ext4, or a qcow2 overlay of a shared base).
    pub path: PathBuf,
    /// Root or data.
    pub role: DiskRole,
    /// Attached read-only.
    pub read_only: bool,
    /// The path the VMM opens instead of `path`, when it differs (a link in the VM's jail);
    /// `path` stays the real file.
    #[serde(default)]
    pub vmm_path: Option<PathBuf>,
    /// The qcow2 backing file the VMM opens instead of the one recorded in the overlay, when it
    /// differs (a link in the VM's jail).
    #[serde(default)]
    pub vmm_backing: Option<PathBuf>,
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
    /// Network interface, if any.
    #[serde(default)]
    pub net: Option<NetAttachment>,
    /// Block devices, in attachment order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
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
    /// The guest's vCPUs are paused.
    #[serde(default)]
    pub paused: bool,
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
