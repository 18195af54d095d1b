//! What a VM costs the host, seen from outside the guest: CPU time, memory and threads of the
//! VMM process (`/proc/PID/task/*/stat`, `/proc/PID/statm`) and TAP counters
//! (`/sys/class/net/<if>/statistics`). The parsers are pure functions of the file text.

use std::fs;
use std::io;
use std::path::Path;

/// Resource use of a VMM process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostStats {
    /// utime + stime of all its threads (vCPUs included), in milliseconds.
    pub cpu_time_ms: u64,
    /// Resident set size.
    pub rss_bytes: u64,
    /// Number of threads.
    pub threads: u64,
}

/// Counters of a network interface, as the host sees them (for a TAP, `rx` is what the guest
/// sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Why [`host_stats`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The process is gone or its /proc files are unreadable.
    #[error("reading /proc/{pid}")]
    Proc {
        /// The process.
        pid: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("unexpected contents in /proc/{pid}/{file}")]
    Parse {
        /// The process.
        pid: i32,
        /// The file.
        file: &'static str,
    },
}

/// utime + stime (fields 14 and 15) of one /proc/PID/stat or /proc/PID/task/TID/stat, in ticks.
/// The command name may contain spaces and parentheses: fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace().skip(11); // field 3 is the first after `)`
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// Resident pages (second field) of /proc/PID/statm.
pub fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn sysconf(name: libc::c_int, default: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(default)
}

/// CPU time, RSS and threads of process `pid`.
pub fn host_stats(pid: i32) -> Result<HostStats, StatsError> {
    host_stats_in(Path::new("/proc"), pid)
}

fn host_stats_in(proc: &Path, pid: i32) -> Result<HostStats, StatsError> {
    let dir = proc.join(pid.to_string());
    let io = |source| StatsError::Proc { pid, source };
    let statm = fs::read_to_string(dir.join("statm")).map_err(io)?;
    let pages =
        parse_statm_resident_pages(&statm).ok_or(StatsError::Parse { pid, file: "statm" })?;
    let (mut ticks, mut threads) = (0u64, 0u64);
    for task in fs::read_dir(dir.join("task")).map_err(io)?.flatten() {
        // A thread may exit while we look: skip it.
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some(t) = parse_stat_cpu_ticks(&stat) {
            ticks = ticks.saturating_add(t);
            threads += 1;
        }
    }
    if threads == 0 {
        return Err(StatsError::Parse { pid, file: "task" });
    }
    let clk_tck = sysconf(libc::_SC_CLK_TCK, 100);
    Ok(HostStats {
        cpu_time_ms: ticks.saturating_mul(1000) / clk_tck,
        rss_bytes: pages.saturating_mul(sysconf(libc::_SC_PAGESIZE, 4096)),
        threads,
    })
}

/// Counters of interface `ifname`; `None` if it does not exist (or the name is not a plain
/// interface name).
pub fn tap_stats(ifname: &str) -> Option<NetCounters> {
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return None;
    }
    net_counters_in(&Path::new("/sys/class/net").join(ifname).join("statistics"))
}

fn net_counters_in(dir: &Path) -> Option<NetCounters> {
    let read = |name: &str| -> Option<u64> {
        fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    };
    Some(NetCounters {
        rx_bytes: read("rx_bytes")?,
        tx_bytes: read("tx_bytes")?,
        rx_packets: read("rx_packets")?,
        tx_packets: read("tx_packets")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_statm() {
        let stat = "4242 (CPU 0/TCG) R 1 4242 4242 0 -1 4194368 10 0 0 0 150 25 0 0 20 0 3 0 9 1 2";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(
            parse_stat_cpu_ticks("1 (a) b) S 0 0 0 0 0 0 0 0 0 0 7 8 0"),
            Some(15)
        );
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 0"), None);
        assert_eq!(
            parse_statm_resident_pages("1000 250 30 1 0 500 0\n"),
            Some(250)
        );
        assert_eq!(parse_statm_resident_pages("junk"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        // Burn a little CPU so the counters move.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let s = host_stats(me).unwrap();
        assert!(s.rss_bytes > 0 && s.threads >= 1, "{s:?} {x}");
        assert!(matches!(host_stats(i32::MAX), Err(StatsError::Proc { .. })));
    }

    #[test]
    fn reads_interface_counters() {
        let lo = tap_stats("lo").expect("lo exists");
        let _ = lo.rx_bytes;
        assert_eq!(tap_stats("no-such-if0"), None);
        assert_eq!(tap_stats("../lo"), None);
        let dir = tempfile::tempdir().unwrap();
        for (n, v) in [
            ("rx_bytes", "10\n"),
            ("tx_bytes", "20\n"),
            ("rx_packets", "1\n"),
            ("tx_packets", "2\n"),
        ] {
            fs::write(dir.path().join(n), v).unwrap();
        }
        assert_eq!(
            net_counters_in(dir.path()),
            Some(NetCounters {
                rx_bytes: 10,
                tx_bytes: 20,
                rx_packets: 1,
                tx_packets: 2
            })
        );
    }
}
