//! A VM's statistics (`GET /v1/vms/{vm}/stats`, and what agents post): host and guest side.

use firefleet_types::UnixMillis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Host-side statistics of a VM's VMM process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HostVmStats {
    /// CPU time of the VMM process (all threads), ms.
    pub cpu_time_ms: u64,
    /// Resident memory of the VMM process, bytes.
    pub rss_bytes: u64,
    /// Threads of the VMM process.
    pub threads: u64,
    /// TAP counters, when the VM has a NIC.
    pub net: Option<NetStats>,
    /// Block I/O counters per disk, as the VMM counts them.
    #[serde(default)]
    pub disks: Vec<DiskStats>,
    /// The VMM's own counters where it keeps them (Firecracker's metrics, `group.name`).
    #[serde(default)]
    pub vmm_metrics: std::collections::BTreeMap<String, u64>,
}

/// Block I/O counters of one disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DiskStats {
    /// The device's name in the VMM.
    pub device: String,
    /// Bytes the guest read.
    pub read_bytes: u64,
    /// Bytes the guest wrote.
    pub write_bytes: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Write requests.
    pub write_ops: u64,
}

/// Network counters (host view of the VM's TAP: rx = from the guest).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NetStats {
    /// Bytes received from the guest.
    pub rx_bytes: u64,
    /// Bytes sent to the guest.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Guest-side statistics, from the guest channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GuestVmStats {
    /// One-minute load average.
    pub load1: f64,
    /// Guest memory, KiB.
    pub mem_total_kib: u64,
    /// Guest memory available, KiB.
    pub mem_available_kib: u64,
    /// Processes in the guest.
    pub processes: u64,
    /// Listening sockets in the guest.
    pub listeners: u64,
    /// Guest uptime, ms.
    pub uptime_ms: u64,
}

/// `GET /v1/vms/{vm}/stats` (and what agents post).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct VmStats {
    /// When the agent collected them.
    pub collected_ms: UnixMillis,
    /// Host side.
    pub host: HostVmStats,
    /// Guest side, when the guest channel answered.
    pub guest: Option<GuestVmStats>,
}
