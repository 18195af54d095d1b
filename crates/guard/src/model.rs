//! What the guard sees: one [`Sample`] per VM per telemetry tick.
//!
//! The guest fields mirror what the guest agent reports (from `/proc`); the host fields are the
//! VMM process and tap counters that the node agent reads. The server maps agent telemetry into
//! these types; `firefleet guard rules test` reads them as JSON lines.
//!
//! Linking processes to connections: a process's socket file descriptors are only visible here
//! through its `stdin`/`stdout` targets (`socket:[INODE]`). A connection carries its socket
//! inode, so a process whose stdin or stdout *is* a connection can be linked to it (that is how
//! a reverse shell is recognised). A socket held on any other descriptor (fd 3 and up, e.g.
//! `exec 3<>/dev/tcp/...`, or any ordinary client) cannot be attributed to a process: rules that
//! combine process and connection conditions only say "this VM has such a process and such a
//! connection", not that one belongs to the other.

use serde::{Deserialize, Serialize};

/// One observation of one VM at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The VM.
    pub vm: String,
    /// When the sample was taken, in milliseconds on the caller's clock (monotonic per VM).
    pub at_ms: u64,
    /// The peer group: instances of the same function, or of the same image digest.
    #[serde(default)]
    pub group: Option<String>,
    /// Host-side counters of the VMM process and the VM's tap device.
    pub host: HostSample,
    /// Guest telemetry, when the guest reported in time.
    #[serde(default)]
    pub guest: Option<GuestSample>,
}

/// Host-side counters for one VM. All counters are cumulative; a counter that goes down is a
/// reset (VMM restarted), after which the next interval has no rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// CPU time of the VMM process (all threads), cumulative milliseconds.
    pub cpu_time_ms: u64,
    /// Resident memory of the VMM process in bytes.
    #[serde(default)]
    pub rss_bytes: u64,
    /// Bytes sent *by the guest* (the tap device's rx counter on the host side).
    #[serde(default)]
    pub tx_bytes: u64,
    /// Bytes received by the guest (the tap device's tx counter on the host side).
    #[serde(default)]
    pub rx_bytes: u64,
    /// Packets sent by the guest.
    #[serde(default)]
    pub tx_packets: u64,
    /// Packets received by the guest.
    #[serde(default)]
    pub rx_packets: u64,
}

/// What the guest reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestSample {
    /// Processes.
    #[serde(default)]
    pub processes: Vec<Process>,
    /// Listening sockets.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Connections (every socket that is not listening).
    #[serde(default)]
    pub connections: Vec<Connection>,
    /// 1-minute load average.
    #[serde(default)]
    pub load1: f64,
    /// `MemTotal` in KiB.
    #[serde(default)]
    pub mem_total_kib: u64,
    /// `MemAvailable` in KiB.
    #[serde(default)]
    pub mem_available_kib: u64,
    /// Guest uptime in milliseconds.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Processes before the guest cut its list to fit (0: unknown, count `processes`).
    #[serde(default)]
    pub process_count: u64,
    /// TCP connection attempts started, cumulative (`ActiveOpens`).
    #[serde(default)]
    pub tcp_active_opens: u64,
    /// TCP connection attempts refused or reset, cumulative (`AttemptFails`): a connect scan
    /// of closed ports shows here even though its sockets live too briefly to be listed.
    #[serde(default)]
    pub tcp_attempt_fails: u64,
}

impl GuestSample {
    /// Processes in the guest: the guest's own count, or the list's length.
    #[must_use]
    pub fn process_total(&self) -> usize {
        (self.process_count as usize).max(self.processes.len())
    }
}

/// One guest process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    #[serde(default)]
    pub ppid: u32,
    /// `comm` (at most 15 characters on Linux).
    pub comm: String,
    /// Command line.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// State letter (`R`, `S`, `Z`, ...).
    #[serde(default)]
    pub state: String,
    /// User + system CPU time, cumulative, in clock ticks (100 Hz).
    #[serde(default)]
    pub cpu_ticks: u64,
    /// Resident memory in KiB.
    #[serde(default)]
    pub rss_kib: u64,
    /// Target of fd 0 (`socket:[123]`, `/dev/null`, `pipe:[456]`, ...).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Target of fd 1.
    #[serde(default)]
    pub stdout: Option<String>,
}

impl Process {
    /// The names a rule matches: `comm` and the file name of `cmdline[0]`, lowercased.
    pub(crate) fn names(&self) -> [String; 2] {
        let exe = self
            .cmdline
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_ascii_lowercase())
            .unwrap_or_default();
        [self.comm.to_ascii_lowercase(), exe]
    }

    /// Socket inodes of stdin and stdout.
    pub(crate) fn stdio_sockets(&self) -> impl Iterator<Item = u64> + '_ {
        [&self.stdin, &self.stdout]
            .into_iter()
            .filter_map(|t| t.as_deref().and_then(socket_inode))
    }
}

/// `socket:[123]` -> 123.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A listening socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    /// Local address.
    pub addr: String,
    /// Local port.
    pub port: u16,
    /// Socket inode.
    #[serde(default)]
    pub inode: u64,
}

/// A connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    /// Local address.
    pub local_addr: String,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_addr: String,
    /// Remote port.
    pub remote_port: u16,
    /// TCP state (`ESTABLISHED`, `SYN_SENT`, ...).
    #[serde(default)]
    pub state: String,
    /// Socket inode (0 when unknown).
    #[serde(default)]
    pub inode: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_inode_parses_only_sockets() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn names_are_comm_and_exe_basename() {
        let p = Process {
            comm: "XMRig".into(),
            cmdline: vec!["/tmp/.x/kinsing".into(), "-o".into()],
            ..Process::default()
        };
        assert_eq!(p.names(), ["xmrig".to_string(), "kinsing".to_string()]);
    }
}
