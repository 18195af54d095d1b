//! The workloads' cgroup: everything the guest agent starts (the workload, `exec` commands,
//! function invocations) runs in `/sys/fs/cgroup/workloads`, a cgroup2 group with
//!
//! - `pids.max` = [`WORKLOAD_PIDS_MAX`]: the guest's pid limit for workloads, well under the
//!   kernel's `pid_max`, so a fork bomb stops there and the agent can still start threads;
//! - `cpu.weight` = [`WORKLOAD_CPU_WEIGHT`]: the whole group weighs as much as one agent thread
//!   in the root group, so the agent gets about half a vCPU when it needs one, however many
//!   processes the workload runs (it is otherwise idle and costs the workload nothing);
//! - `memory.max` = the memory available at boot (after the initramfs, which stays in memory)
//!   less [`AGENT_RESERVE_MIB`]: a workload that fills memory (a fork bomb does, at ~150 KiB of
//!   kernel and user memory a process) is OOM-killed inside its group, quickly, instead of
//!   driving the whole guest into global reclaim, where every allocation of the agent's stalls
//!   too.
//!
//! The agent itself (PID 1) stays in the root group. Children move themselves into the group
//! between fork and exec ([`enter`]) through a descriptor opened at boot, so nothing they fork
//! escapes the limits. Any step that fails (an old kernel without cgroup2) is reported, and
//! workloads then run unconfined.

use std::fs;
use std::io;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// Processes (and threads) the workloads may hold at once.
pub const WORKLOAD_PIDS_MAX: u32 = 1024;
/// The workloads' group weight: the default, 100, as much as one nice-0 thread of the root
/// group. (10 starved the workload's own network traffic: a TCG guest's egress fell from ~1 to
/// 0.2 MB/s in `firefleet-vmm`'s `net` test, the kernel's root-group threads winning every
/// round; the fork bomb is held by the pid and memory limits and the 1 s read budget anyway.)
pub const WORKLOAD_CPU_WEIGHT: u32 = 100;
/// Memory kept out of the workloads' reach for the agent and the kernel.
pub const AGENT_RESERVE_MIB: u64 = 32;

const ROOT: &str = "/sys/fs/cgroup";
const GROUP: &str = "/sys/fs/cgroup/workloads";

/// `cgroup.procs` of the workloads' group, opened for writing; -1 when there is none.
static PROCS_FD: AtomicI32 = AtomicI32::new(-1);

/// Mounts cgroup2, creates the workloads' group with its limits and opens its `cgroup.procs`.
/// Returns what could not be set (the group works without it); an error means no group.
pub fn setup() -> Result<Vec<String>, String> {
    fs::create_dir_all(ROOT).map_err(|e| format!("mkdir {ROOT}: {e}"))?;
    if !Path::new(ROOT).join("cgroup.controllers").exists() {
        crate::mount_fs("cgroup2", ROOT, "cgroup2", libc::MS_NOSUID | libc::MS_NODEV)
            .map_err(|e| format!("mount cgroup2 at {ROOT}: {e}"))?;
    }
    let mut missing = Vec::new();
    for controller in ["pids", "cpu", "memory"] {
        if let Err(e) = fs::write(
            Path::new(ROOT).join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            missing.push(format!("controller {controller}: {e}"));
        }
    }
    match fs::create_dir(GROUP) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {GROUP}: {e}")),
    }
    let mut limits = vec![
        ("pids.max", WORKLOAD_PIDS_MAX.to_string()),
        ("cpu.weight", WORKLOAD_CPU_WEIGHT.to_string()),
    ];
    if let Some(available) = meminfo_available_mib() {
        let max = available
            .saturating_sub(AGENT_RESERVE_MIB)
            .max(AGENT_RESERVE_MIB);
        limits.push(("memory.max", (max << 20).to_string()));
    }
    for (file, value) in limits {
        if let Err(e) = fs::write(Path::new(GROUP).join(file), &value) {
            missing.push(format!("{file} = {value}: {e}"));
        }
    }
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(Path::new(GROUP).join("cgroup.procs"))
        .map_err(|e| format!("opening {GROUP}/cgroup.procs: {e}"))?;
    PROCS_FD.store(procs.into_raw_fd(), Ordering::SeqCst);
    Ok(missing)
}

/// Moves the calling process into the workloads' group (nothing when there is none). Run between
/// fork and exec: only async-signal-safe calls. A failed move fails the spawn: a workload never
/// runs outside its limits when the group exists.
pub fn enter() -> io::Result<()> {
    let fd = PROCS_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return Ok(());
    }
    // SAFETY: write(2) on a descriptor this process owns, from a static buffer.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn meminfo_available_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
