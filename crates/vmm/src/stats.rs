//! What a VM costs the host, seen from outside the guest: CPU time, memory and threads of the
//! VMM process (`/proc/PID/task/*/stat`, `/proc/PID/statm`), TAP counters
//! (`/sys/class/net/<if>/statistics`) and Firecracker's metrics ([`FcMetricsSums`]). The
//! parsers are pure functions of the file text.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::runtime::DiskCounters;

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

/// Firecracker's metrics flattened to `group.name` (nested groups joined with dots, e.g.
/// `block_disk0.read_agg.sum_us`): every non-negative integer of one flushed object except
/// `utc_timestamp_ms`. Other values (strings, floats, arrays) are skipped.
pub fn flatten_fc_metrics(object: &serde_json::Value) -> BTreeMap<String, u64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, u64>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    out.insert(prefix.to_string(), n);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", object, &mut out);
    out.remove("utc_timestamp_ms");
    out
}

/// Whether a flattened Firecracker metric holds a value (its `SharedStoreMetric`s: latencies,
/// startup times, the minimum and maximum of latency aggregates, deadly signals, seccomp faults)
/// rather than counting events. Firecracker writes counters as the increase since its previous
/// flush, values as they are.
pub fn fc_metric_is_value(key: &str) -> bool {
    let (group, name) = key.split_once('.').unwrap_or(("", key));
    let leaf = key.rsplit('.').next().unwrap_or(key);
    group == "latencies_us"
        || leaf == "min_us"
        || leaf == "max_us"
        || matches!(
            leaf,
            "init_time_us" | "activate_time_us" | "config_change_time_us"
        )
        || matches!(
            key,
            "api_server.process_startup_time_us"
                | "api_server.process_startup_time_cpu_us"
                | "seccomp.num_faults"
        )
        || (group == "signals" && name != "sigpipe")
}

/// Adds one flush to running totals: counters are summed, values replaced.
pub fn add_fc_flush(totals: &mut BTreeMap<String, u64>, flush: BTreeMap<String, u64>) {
    for (k, v) in flush {
        if fc_metric_is_value(&k) {
            totals.insert(k, v);
        } else {
            let t = totals.entry(k).or_insert(0);
            *t = t.saturating_add(v);
        }
    }
}

/// Per-drive block counters from (summed) flattened metrics: one [`DiskCounters`] per
/// `block_<drive id>` group, ordered by drive id with numbers compared as numbers (`disk2`
/// before `disk10`). The aggregate `block` group is not a disk.
pub fn fc_disk_counters(metrics: &BTreeMap<String, u64>) -> Vec<DiskCounters> {
    let mut disks: BTreeMap<(String, u64, String), DiskCounters> = BTreeMap::new();
    for (key, &v) in metrics {
        let Some((drive, field)) = key
            .strip_prefix("block_")
            .and_then(|rest| rest.split_once('.'))
        else {
            continue;
        };
        if drive.is_empty() || field.contains('.') {
            continue;
        }
        let stem = drive.trim_end_matches(|c: char| c.is_ascii_digit());
        let number = drive[stem.len()..].parse().unwrap_or(0);
        let d = disks
            .entry((stem.to_string(), number, drive.to_string()))
            .or_insert_with(|| DiskCounters {
                device: drive.to_string(),
                ..DiskCounters::default()
            });
        match field {
            "read_bytes" => d.read_bytes = v,
            "write_bytes" => d.write_bytes = v,
            "read_count" => d.read_ops = v,
            "write_count" => d.write_ops = v,
            _ => {}
        }
    }
    disks.into_values().collect()
}

/// The complete JSON objects at the start of `buf` (a metrics file: one object per flush) and
/// how many bytes they take. An incomplete object at the end is left for later; a line that is
/// not JSON is skipped.
pub fn parse_fc_metrics_objects(buf: &[u8]) -> (Vec<serde_json::Value>, usize) {
    let mut objects = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let mut stream =
            serde_json::Deserializer::from_slice(&buf[pos..]).into_iter::<serde_json::Value>();
        match stream.next() {
            None => return (objects, buf.len()), // only whitespace left
            Some(Ok(v)) => {
                pos += stream.byte_offset();
                objects.push(v);
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(_)) => {
                // Skip the rest of the broken line, if it is complete.
                let from = pos + stream.byte_offset();
                match buf[from.min(buf.len())..].iter().position(|&b| b == b'\n') {
                    Some(nl) => pos = from + nl + 1,
                    None => break,
                }
            }
        }
    }
    (objects, pos)
}

/// How much of a metrics file is read at once.
const METRICS_CHUNK: usize = 1 << 20;

/// Running totals of one Firecracker metrics file, read incrementally: each call to
/// [`FcMetricsSums::update`] reads only what was appended since the last one. A different file
/// (another inode) or one that shrank starts the sums over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FcMetricsSums {
    file: Option<(u64, u64)>,
    offset: u64,
    totals: BTreeMap<String, u64>,
}

impl FcMetricsSums {
    /// Reads what was appended to `path` and adds it to the totals.
    pub fn update(&mut self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut f = fs::File::open(path)?;
        let meta = f.metadata()?;
        let id = Some((meta.dev(), meta.ino()));
        if self.file != id || meta.len() < self.offset {
            *self = Self {
                file: id,
                ..Self::default()
            };
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        loop {
            let got = (&mut f).take(METRICS_CHUNK as u64).read_to_end(&mut buf)?;
            let (objects, used) = parse_fc_metrics_objects(&buf);
            for o in &objects {
                add_fc_flush(&mut self.totals, flatten_fc_metrics(o));
            }
            self.offset += used as u64;
            buf.drain(..used);
            if got == 0 {
                release_read_part(path, self.offset);
                return Ok(());
            }
            if buf.len() > 4 * METRICS_CHUNK {
                // No object ends in megabytes: not a metrics file. Skip what was read.
                self.offset += buf.len() as u64;
                buf.clear();
            }
        }
    }

    /// The totals: counters summed over all flushes read, values as last flushed.
    pub fn totals(&self) -> &BTreeMap<String, u64> {
        &self.totals
    }
}

/// Frees the disk blocks of the first `upto` bytes of `path` (already read), keeping the size:
/// Firecracker appends a metrics object at every flush, so the file would grow without bound.
/// Best effort: filesystems without hole punching keep the blocks.
fn release_read_part(path: &Path, upto: u64) {
    use std::os::fd::AsRawFd;
    let len = upto & !4095;
    if len == 0 {
        return;
    }
    let Ok(f) = fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(len) = libc::off_t::try_from(len) else {
        return;
    };
    // SAFETY: a valid open descriptor; the range is within the file.
    unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_metrics_are_released_and_sums_go_on() {
        use std::io::Write as _;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let flush = |n: u64| {
            format!(
                "{{\"utc_timestamp_ms\":{n},\"api_server\":{{\"process_startup_time_us\":5}},\"put_api_requests\":{{\"actions_count\":{n},\"pad\":\"{}\"}}}}",
                "x".repeat(3000)
            )
        };
        let mut f = fs::File::create(&path).unwrap();
        for _ in 0..8 {
            f.write_all(flush(1).as_bytes()).unwrap();
        }
        f.sync_all().unwrap();
        let blocks_before = fs::metadata(&path).unwrap().blocks();
        let mut sums = FcMetricsSums::default();
        sums.update(&path).unwrap();
        assert_eq!(sums.totals()["put_api_requests.actions_count"], 8);
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.len() > 24_000, "the size is kept");
        if meta.blocks() >= blocks_before {
            eprintln!("this filesystem does not punch holes; sums checked only");
        }
        // Firecracker goes on appending at its offset; the sums go on.
        f.write_all(flush(2).as_bytes()).unwrap();
        sums.update(&path).unwrap();
        assert_eq!(sums.totals()["put_api_requests.actions_count"], 10);
    }

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

    /// One flush of Firecracker 1.16 with a drive `disk0` (groups trimmed, shapes as written).
    fn fc_flush(actions: u64, read_bytes: u64, max_us: u64, ts: u64) -> serde_json::Value {
        let block = serde_json::json!({
            "activate_fails": 0, "cfg_fails": 0, "event_fails": 0, "execute_fails": 0,
            "flush_count": 0, "invalid_reqs_count": 0, "io_engine_throttled_events": 0,
            "no_avail_buffer": 0, "queue_event_count": 2, "rate_limiter_event_count": 0,
            "rate_limiter_throttled_events": 0,
            "read_agg": {"max_us": max_us, "min_us": 3, "sum_us": 40},
            "read_bytes": read_bytes, "read_count": 2, "remaining_reqs_count": 0,
            "update_count": 0, "update_fails": 0,
            "write_agg": {"max_us": 0, "min_us": 0, "sum_us": 0},
            "write_bytes": 4096, "write_count": 1
        });
        serde_json::json!({
            "api_server": {"process_startup_time_cpu_us": 900, "process_startup_time_us": 1500},
            "block": block.clone(),
            "block_disk0": block,
            "latencies_us": {"load_snapshot": 0, "pause_vm": 120, "resume_vm": 80},
            "put_api_requests": {"actions_count": actions, "actions_fails": 0},
            "signals": {"sigbus": 0, "sigpipe": 1, "sigsegv": 0},
            "utc_timestamp_ms": ts,
            "vcpu": {"exit_io_in": 5, "exit_io_in_agg": {"max_us": 9, "min_us": 1, "sum_us": 20}},
            "note": "strings, floats and arrays are not counters",
            "ratio": 0.5,
            "list": [1, 2]
        })
    }

    #[test]
    fn flattens_firecracker_metrics() {
        let m = flatten_fc_metrics(&fc_flush(1, 512, 7, 1_700_000_000_000));
        assert_eq!(m["block_disk0.read_bytes"], 512);
        assert_eq!(m["block_disk0.read_agg.max_us"], 7);
        assert_eq!(m["put_api_requests.actions_count"], 1);
        assert_eq!(m["vcpu.exit_io_in_agg.sum_us"], 20);
        for absent in [
            "utc_timestamp_ms",
            "note",
            "ratio",
            "list",
            "block_disk0.read_agg",
        ] {
            assert!(!m.contains_key(absent), "{absent}");
        }
        for value in [
            "latencies_us.pause_vm",
            "block_disk0.read_agg.max_us",
            "vcpu.exit_io_in_agg.min_us",
            "api_server.process_startup_time_us",
            "signals.sigsegv",
            "seccomp.num_faults",
        ] {
            assert!(fc_metric_is_value(value), "{value}");
        }
        for counter in [
            "block_disk0.read_bytes",
            "block_disk0.read_agg.sum_us",
            "signals.sigpipe",
            "put_api_requests.actions_count",
            "vcpu.exit_io_in",
        ] {
            assert!(!fc_metric_is_value(counter), "{counter}");
        }
    }

    #[test]
    fn sums_flushes_and_lists_drives() {
        let mut totals = BTreeMap::new();
        add_fc_flush(&mut totals, flatten_fc_metrics(&fc_flush(1, 512, 7, 1)));
        add_fc_flush(&mut totals, flatten_fc_metrics(&fc_flush(2, 1024, 5, 2)));
        assert_eq!(totals["put_api_requests.actions_count"], 3);
        assert_eq!(totals["block_disk0.read_bytes"], 1536);
        assert_eq!(totals["block_disk0.read_agg.sum_us"], 80);
        assert_eq!(
            totals["block_disk0.read_agg.max_us"], 5,
            "a value is replaced"
        );
        assert_eq!(totals["latencies_us.pause_vm"], 120);
        assert_eq!(
            fc_disk_counters(&totals),
            vec![DiskCounters {
                device: "disk0".into(),
                read_bytes: 1536,
                write_bytes: 8192,
                read_ops: 4,
                write_ops: 2,
            }]
        );
        // Drives in attachment order (numbers as numbers); the aggregate is not a drive.
        let mut m = BTreeMap::new();
        for d in ["disk10", "disk2", "disk0", "data"] {
            m.insert(format!("block_{d}.write_bytes"), 1);
        }
        m.insert("block.write_bytes".into(), 4);
        m.insert("block_.write_bytes".into(), 4);
        let names: Vec<String> = fc_disk_counters(&m).into_iter().map(|d| d.device).collect();
        assert_eq!(names, ["data", "disk0", "disk2", "disk10"]);
        assert!(fc_disk_counters(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn parses_a_metrics_file_up_to_its_last_complete_object() {
        let a = fc_flush(1, 1, 1, 1).to_string();
        let b = fc_flush(2, 2, 2, 2).to_string();
        let text = format!("{a}\nnot json\n{b}\n{}", &a[..a.len() / 2]);
        let (objects, used) = parse_fc_metrics_objects(text.as_bytes());
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1]["put_api_requests"]["actions_count"], 2);
        // Up to the end of `b`: the partial object (and the newline before it) waits.
        assert_eq!(used, a.len() + "\nnot json\n".len() + b.len());
        assert_eq!(
            parse_fc_metrics_objects(&text.as_bytes()[used..]).0.len(),
            0
        );
        assert_eq!(parse_fc_metrics_objects(b" \n").1, 2);
        assert_eq!(parse_fc_metrics_objects(b"junk without end").1, 0);
        assert_eq!(parse_fc_metrics_objects(b"").1, 0);
    }

    #[test]
    fn sums_a_growing_metrics_file_incrementally() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut f = fs::File::create(&path).unwrap();
        let mut sums = FcMetricsSums::default();
        sums.update(&path).unwrap();
        assert!(sums.totals().is_empty());
        let first = format!("{}\n", fc_flush(1, 100, 1, 1));
        let second = format!("{}\n", fc_flush(1, 10, 1, 2));
        f.write_all(first.as_bytes()).unwrap();
        f.write_all(&second.as_bytes()[..20]).unwrap(); // being written
        sums.update(&path).unwrap();
        assert_eq!(sums.totals()["block_disk0.read_bytes"], 100);
        f.write_all(&second.as_bytes()[20..]).unwrap();
        sums.update(&path).unwrap();
        sums.update(&path).unwrap(); // nothing new: nothing counted twice
        assert_eq!(sums.totals()["block_disk0.read_bytes"], 110);
        assert_eq!(sums.totals()["put_api_requests.actions_count"], 2);
        // A new file (a new process) starts over.
        fs::remove_file(&path).unwrap();
        fs::write(&path, &first).unwrap();
        sums.update(&path).unwrap();
        assert_eq!(sums.totals()["block_disk0.read_bytes"], 100);
        fs::remove_file(&path).unwrap();
        assert!(sums.update(&path).is_err());
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
