//! `telemetry_request`: processes from /proc/PID/{stat,cmdline,fd}, sockets from
//! /proc/net/{tcp,tcp6,udp,udp6}, load, memory and uptime. The parsers are pure functions of the
//! file text (unit tested with samples); [`collect`] does the reading.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use firefleet_guest::proto::{self, Connection, Listener, Message, ProcessInfo, Telemetry};

/// Most processes / sockets listed (the answer must fit one protocol line).
const MAX_ENTRIES: usize = 512;
/// Longest cmdline kept per process, in bytes.
const MAX_CMDLINE: usize = 512;
/// Time spent reading processes one by one, at most: past it the rest of `/proc`'s pids are
/// counted unread. Under a fork bomb each read of a forking process's files can wait on its
/// memory map for a long while (seconds per answer under TCG), and an answer that comes too
/// late is no answer.
const PROCESS_READ_BUDGET: std::time::Duration = std::time::Duration::from_millis(1000);

/// Fields of /proc/PID/stat that telemetry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: String,
    pub ppid: i32,
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Parses /proc/PID/stat. `comm` may contain spaces and parentheses: it ends at the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after comm, numbered from 3 (state) as in proc(5).
    let rest: Vec<&str> = text.get(close + 1..)?.split_ascii_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let num = |n: usize| field(n).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        pid,
        comm,
        state: field(3)?.to_string(),
        ppid: field(4)?.parse().ok()?,
        cpu_ticks: num(14)?.saturating_add(num(15)?),
        rss_pages: num(24).unwrap_or(0),
    })
}

/// Splits /proc/PID/cmdline (NUL-separated) into argv, keeping at most `max` bytes.
pub fn parse_cmdline(raw: &[u8], max: usize) -> Vec<String> {
    let raw = &raw[..raw.len().min(max)];
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// One line of /proc/net/{tcp,udp}[6].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLine {
    pub local: (String, u16),
    pub remote: (String, u16),
    pub state: u8,
    pub inode: u64,
}

/// Parses `ADDR:PORT` as printed by the kernel: the address is the in-memory (network order)
/// bytes printed as host-order 32-bit words, the port plain hex.
fn parse_endpoint(s: &str) -> Option<(String, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => Ipv4Addr::from(word(0)?).to_string(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => format!("::ffff:{v4}"),
                None => v6.to_string(),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Parses a whole /proc/net/{tcp,udp}[6] file (header line skipped, bad lines ignored).
pub fn parse_net(text: &str) -> Vec<SocketLine> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            Some(SocketLine {
                local: parse_endpoint(f.get(1)?)?,
                remote: parse_endpoint(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The kernel's TCP state names (include/net/tcp_states.h).
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Sorts socket lines into listeners and connections. TCP: `LISTEN` listens. UDP: an unconnected
/// socket (`CLOSE`, remote port 0) is a listener, a connected one a connection.
pub fn classify(proto: &str, lines: Vec<SocketLine>) -> (Vec<Listener>, Vec<Connection>) {
    let udp = proto.starts_with("udp");
    let (mut listeners, mut connections) = (Vec::new(), Vec::new());
    for s in lines {
        let listening = if udp {
            s.state == 0x07 && s.remote.1 == 0
        } else {
            s.state == 0x0A
        };
        if listening {
            listeners.push(Listener {
                proto: proto.to_string(),
                addr: s.local.0,
                port: s.local.1,
                inode: s.inode,
            });
        } else {
            connections.push(Connection {
                proto: proto.to_string(),
                local_addr: s.local.0,
                local_port: s.local.1,
                remote_addr: s.remote.0,
                remote_port: s.remote.1,
                state: tcp_state_name(s.state).to_string(),
                inode: s.inode,
            });
        }
    }
    (listeners, connections)
}

/// `MemTotal` and `MemAvailable` of /proc/meminfo, in KiB.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim_start_matches(':').split_ascii_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

/// First field of /proc/loadavg (0 if unreadable; never NaN, which JSON cannot carry).
pub fn parse_load1(text: &str) -> f64 {
    text.split_ascii_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

/// First field of /proc/uptime, in milliseconds.
pub fn parse_uptime_ms(text: &str) -> u64 {
    text.split_ascii_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(0, |s| (s * 1000.0) as u64)
}

fn page_kib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096) / 1024
}

/// A process's `stat`, unless it is a kernel thread (kthreadd and its children are not
/// interesting here).
fn user_stat(dir: &Path) -> Option<Stat> {
    let stat = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    (stat.pid != 2 && stat.ppid != 2).then_some(stat)
}

fn process(dir: &Path, stat: Stat, page_kib: u64) -> ProcessInfo {
    let link = |fd: &str| {
        fs::read_link(dir.join("fd").join(fd))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    };
    ProcessInfo {
        pid: stat.pid,
        ppid: stat.ppid,
        cmdline: parse_cmdline(
            &fs::read(dir.join("cmdline")).unwrap_or_default(),
            MAX_CMDLINE,
        ),
        comm: stat.comm,
        state: stat.state,
        cpu_ticks: stat.cpu_ticks,
        rss_kib: stat.rss_pages * page_kib,
        stdin: link("0"),
        stdout: link("1"),
    }
}

/// Reads everything from `proc` (normally `/proc`).
pub fn collect(id: u64, proc: &Path) -> Telemetry {
    let page_kib = page_kib();
    // Oldest first; only the first MAX_ENTRIES user processes are read in full (a fork bomb
    // makes thousands: past the limit one `stat` read each, to count them, keeps the guest
    // agent's answer fast while the guest is under attack).
    let mut pids: Vec<u32> = fs::read_dir(proc)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let mut processes: Vec<ProcessInfo> = Vec::new();
    let mut process_count = 0u64;
    let started = std::time::Instant::now();
    let mut out_of_time = false;
    for (i, pid) in pids.iter().enumerate() {
        if started.elapsed() > PROCESS_READ_BUDGET {
            out_of_time = true;
            // Kernel threads come first (low pids, started at boot): the rest are user
            // processes as far as a count goes.
            process_count += (pids.len() - i) as u64;
            break;
        }
        let dir = proc.join(pid.to_string());
        let Some(stat) = user_stat(&dir) else {
            continue;
        };
        process_count += 1;
        if processes.len() <= MAX_ENTRIES {
            processes.push(process(&dir, stat, page_kib));
        }
    }
    let (mut listeners, mut connections) = (Vec::new(), Vec::new());
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let text = fs::read_to_string(proc.join("net").join(proto)).unwrap_or_default();
        let (l, c) = classify(proto, parse_net(&text));
        listeners.extend(l);
        connections.extend(c);
    }
    let read = |name: &str| fs::read_to_string(proc.join(name)).unwrap_or_default();
    let (mem_total_kib, mem_available_kib) = parse_meminfo(&read("meminfo"));
    let (tcp_active_opens, tcp_attempt_fails) = parse_tcp_counters(&read("net/snmp"));
    let truncated = out_of_time
        || processes.len() > MAX_ENTRIES
        || listeners.len() > MAX_ENTRIES
        || connections.len() > MAX_ENTRIES;
    processes.truncate(MAX_ENTRIES);
    listeners.truncate(MAX_ENTRIES);
    connections.truncate(MAX_ENTRIES);
    fit(Telemetry {
        id,
        processes,
        listeners,
        connections,
        load1: parse_load1(&read("loadavg")),
        mem_total_kib,
        mem_available_kib,
        uptime_ms: parse_uptime_ms(&read("uptime")),
        truncated,
        process_count,
        tcp_active_opens,
        tcp_attempt_fails,
    })
}

/// `ActiveOpens` and `AttemptFails` from /proc/net/snmp (a `Tcp:` header line names the
/// columns, the next `Tcp:` line holds the values); zeros when absent.
pub fn parse_tcp_counters(text: &str) -> (u64, u64) {
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let pairs: Vec<(&str, u64)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
        .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    (get("ActiveOpens"), get("AttemptFails"))
}

/// Drops entries from the end (connections first, then processes, then listeners) until the
/// encoded message fits one protocol line.
pub fn fit(mut t: Telemetry) -> Telemetry {
    loop {
        let len = proto::encode(&Message::Telemetry(t.clone())).len();
        if len <= proto::MAX_LINE {
            return t;
        }
        t.truncated = true;
        // Remove about the excess per round, by the average entry size (at least one entry).
        let entries = t.connections.len() + t.processes.len() + t.listeners.len();
        let avg = (len / entries.max(1)).max(1);
        let n = (len - proto::MAX_LINE).div_ceil(avg).max(1);
        if !t.connections.is_empty() {
            let keep = t.connections.len().saturating_sub(n);
            t.connections.truncate(keep);
        } else if !t.processes.is_empty() {
            let keep = t.processes.len().saturating_sub(n);
            t.processes.truncate(keep);
        } else if !t.listeners.is_empty() {
            let keep = t.listeners.len().saturating_sub(n);
            t.listeners.truncate(keep);
        } else {
            return t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1E61 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 0F02000A:C350 01 00000000:00000000 02:000A7B5F 00000000     0        0 5678 2 0000000000000000 20 4 30 10 -1
   bogus line
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:D431 06 00000000:00000000 03:00001771 00000000     0        0 0 3 0000000000000000
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 0000000000000000 0
  124: 0F02000A:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 1000 2 0000000000000000 0
";

    #[test]
    fn parses_proc_net_tcp() {
        let (l, c) = classify("tcp", parse_net(TCP));
        assert_eq!(
            l,
            vec![Listener {
                proto: "tcp".into(),
                addr: "0.0.0.0".into(),
                port: 7777,
                inode: 1234
            }]
        );
        assert_eq!(
            c,
            vec![Connection {
                proto: "tcp".into(),
                local_addr: "127.0.0.1".into(),
                local_port: 22,
                remote_addr: "10.0.2.15".into(),
                remote_port: 50000,
                state: "ESTABLISHED".into(),
                inode: 5678
            }]
        );
    }

    #[test]
    fn parses_proc_net_tcp6() {
        let (l, c) = classify("tcp6", parse_net(TCP6));
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].addr.as_str(), l[0].port, l[0].inode),
            ("::", 8080, 42)
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].local_addr, "::1");
        assert_eq!(c[0].remote_addr, "::ffff:127.0.0.1");
        assert_eq!(
            (c[0].remote_port, c[0].state.as_str()),
            (54321, "TIME_WAIT")
        );
    }

    #[test]
    fn parses_proc_net_udp() {
        let (l, c) = classify("udp", parse_net(UDP));
        assert_eq!((l.len(), l[0].port, l[0].inode), (1, 68, 999));
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].remote_addr.as_str(), c[0].remote_port),
            ("8.8.8.8", 53)
        );
        assert!(parse_net("").is_empty());
        assert!(parse_net("header\n 0: zz:zz 00:00 0A x x x 0 0 1\n").is_empty());
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = parse_stat(
            "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 300 1000000 321 184467 0",
        )
        .unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 42,
                comm: "my (odd) name".into(),
                state: "S".into(),
                ppid: 1,
                cpu_ticks: 12,
                rss_pages: 321
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x)").is_none());
    }

    #[test]
    fn parses_small_files() {
        assert_eq!(
            parse_cmdline(b"sleep\x001000\x00", 100),
            vec!["sleep".to_string(), "1000".to_string()]
        );
        assert_eq!(parse_cmdline(b"abcdef\x00gh", 4), vec!["abcd".to_string()]);
        assert_eq!(
            parse_meminfo("MemTotal:  250000 kB\nMemFree: 1 kB\nMemAvailable:   200000 kB\n"),
            (250000, 200000)
        );
        assert_eq!(parse_load1("0.25 0.10 0.01 1/50 99\n"), 0.25);
        assert_eq!(parse_load1("nan"), 0.0);
        assert_eq!(parse_uptime_ms("12.34 10.00\n"), 12340);
    }

    #[test]
    fn tcp_counters_come_from_the_tcp_lines() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\nTcp: 1 200 120000 -1 42 3 17\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_tcp_counters(text), (42, 17));
        assert_eq!(parse_tcp_counters(""), (0, 0));
    }

    #[test]
    fn collects_this_host_and_fits_one_line() {
        let t = collect(7, Path::new("/proc"));
        assert_eq!(t.id, 7);
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(
            t.processes.iter().any(|p| p.pid == me && p.rss_kib > 0),
            "{t:?}"
        );
        assert!(t.mem_total_kib > 0 && t.uptime_ms > 0);
        assert!(proto::encode(&Message::Telemetry(t)).len() <= proto::MAX_LINE);

        let many = Telemetry {
            processes: vec![
                ProcessInfo {
                    cmdline: vec!["x".repeat(400)],
                    ..Default::default()
                };
                1000
            ],
            ..Default::default()
        };
        let fitted = fit(many);
        assert!(fitted.truncated && !fitted.processes.is_empty());
        assert!(proto::encode(&Message::Telemetry(fitted)).len() <= proto::MAX_LINE);
    }
}
