//! Talking to a VM's guest through the guest channel, and collecting its statistics (blocking).

use std::time::Duration;

use base64::Engine as _;
use firefleet_api::{
    DiskStats, ExecRequestRecord, ExecResult, GuestVmStats, HostVmStats, NetStats, VmStats,
};
use firefleet_vmm::{LaunchConfig, Runtime};

/// Runs an exec request in the guest.
pub fn exec(rt: &dyn Runtime, vm: &str, rec: &ExecRequestRecord) -> ExecResult {
    let failed = |error: String| ExecResult {
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        duration_ms: 0,
        error: Some(error),
    };
    let stdin = match rec
        .request
        .stdin_b64
        .as_deref()
        .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
    {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return failed(format!("stdin_b64: {e}")),
        None => None,
    };
    let timeout = Duration::from_millis(rec.request.timeout_ms.unwrap_or(30_000));
    match rt.exec(vm, &rec.request.argv, stdin.as_deref(), timeout) {
        Ok(out) => ExecResult {
            exit_code: (!out.timed_out && out.exit_code >= 0).then_some(out.exit_code),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            truncated: out.truncated,
            duration_ms: out.duration_ms,
            error: None,
        },
        Err(e) => failed(format!("exec: {}", firefleet_types::error_chain(&e))),
    }
}

/// What the guard sees of a guest's telemetry.
pub fn guard_sample(t: &firefleet_vmm::GuestTelemetry) -> firefleet_guard::GuestSample {
    use firefleet_guard::{Connection, Listener, Process};
    firefleet_guard::GuestSample {
        processes: t
            .processes
            .iter()
            .map(|p| Process {
                pid: u32::try_from(p.pid).unwrap_or(0),
                ppid: u32::try_from(p.ppid).unwrap_or(0),
                comm: p.comm.clone(),
                cmdline: p.cmdline.clone(),
                state: p.state.clone(),
                cpu_ticks: p.cpu_ticks,
                rss_kib: p.rss_kib,
                stdin: p.stdin.clone(),
                stdout: p.stdout.clone(),
            })
            .collect(),
        listeners: t
            .listeners
            .iter()
            .map(|l| Listener {
                proto: l.proto.clone(),
                addr: l.addr.clone(),
                port: l.port,
                inode: l.inode,
            })
            .collect(),
        connections: t
            .connections
            .iter()
            .map(|c| Connection {
                proto: c.proto.clone(),
                local_addr: c.local_addr.clone(),
                local_port: c.local_port,
                remote_addr: c.remote_addr.clone(),
                remote_port: c.remote_port,
                state: c.state.clone(),
                inode: c.inode,
            })
            .collect(),
        load1: t.load1,
        mem_total_kib: t.mem_total_kib,
        mem_available_kib: t.mem_available_kib,
        uptime_ms: t.uptime_ms,
        process_count: t.process_count,
        tcp_active_opens: t.tcp_active_opens,
        tcp_attempt_fails: t.tcp_attempt_fails,
    }
}

/// Host-side and (when the guest answers) guest-side statistics of a running VM, with what
/// the guard looks at in the guest.
pub fn stats(
    rt: &dyn Runtime,
    vm_dir: &std::path::Path,
    vm: &str,
    now: u64,
) -> Option<(VmStats, Option<firefleet_guard::GuestSample>)> {
    let obs = rt.observe(vm).ok()?;
    let pid = obs.pid.filter(|_| obs.running)?;
    let hs = firefleet_vmm::stats::host_stats(pid).ok()?;
    let tap = std::fs::read(vm_dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<LaunchConfig>(&b).ok())
        .and_then(|c| c.net.map(|n| n.tap));
    let net = tap
        .and_then(|t| firefleet_vmm::stats::tap_stats(&t))
        .map(|n| NetStats {
            rx_bytes: n.rx_bytes,
            tx_bytes: n.tx_bytes,
            rx_packets: n.rx_packets,
            tx_packets: n.tx_packets,
        });
    // Counters the VMM keeps; none while it is busy (a snapshot holds QMP).
    let io = rt.io_stats(vm).unwrap_or_default();
    let telemetry = if obs.guest_ready && !obs.paused {
        rt.telemetry(vm)
            .map_err(|e| tracing::debug!(vm, error = %e, "no guest telemetry"))
            .ok()
    } else {
        None
    };
    let guest = telemetry.as_ref().map(|t| GuestVmStats {
        load1: t.load1,
        mem_total_kib: t.mem_total_kib,
        mem_available_kib: t.mem_available_kib,
        processes: t.process_count.max(t.processes.len() as u64),
        listeners: t.listeners.len() as u64,
        uptime_ms: t.uptime_ms,
    });
    let stats = VmStats {
        collected_ms: now,
        host: HostVmStats {
            cpu_time_ms: hs.cpu_time_ms,
            rss_bytes: hs.rss_bytes,
            threads: hs.threads,
            net,
            disks: io
                .disks
                .into_iter()
                .map(|d| DiskStats {
                    device: d.device,
                    read_bytes: d.read_bytes,
                    write_bytes: d.write_bytes,
                    read_ops: d.read_ops,
                    write_ops: d.write_ops,
                })
                .collect(),
            vmm_metrics: io.metrics,
        },
        guest,
    };
    Some((stats, telemetry.as_ref().map(guard_sample)))
}
