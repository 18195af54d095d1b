//! The values of the runtime contract: what to launch ([`LaunchConfig`] with its disks and
//! network), and what a runtime reports back (process, observation, console, snapshot, I/O
//! counters). Plain data, shared by every backend; no I/O.

use std::path::PathBuf;

use firefleet_types::Accel;

use crate::image::Image;

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

/// What [`crate::Runtime::io_stats`] reports.
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

/// A snapshot written by [`crate::Runtime::snapshot`].
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

#[cfg(test)]
impl LaunchConfig {
    /// A config for unit tests: VM `vm1`, 2 vCPUs, 256 MiB, TCG, image files under `/img`, no
    /// workload, network or disks (nothing is checked on disk).
    pub(crate) fn sample() -> Self {
        Self {
            id: "vm1".into(),
            vcpus: 2,
            memory_mib: 256,
            image: Image {
                digest: "sha256:00".into(),
                kernel: "/img/vmlinuz".into(),
                initrd: "/img/initrd.img".into(),
                vmlinux: None,
            },
            cmd: None,
            accel: Accel::Tcg,
            net: None,
            disks: Vec::new(),
        }
    }
}
