//! Node facts: what the agent reports about its host with each heartbeat.

use firefleet_types::{Accel, NodeFacts, Resources};
use firefleet_vmm::QemuRuntime;

use crate::AgentConfig;

/// Memory kept for the host and the agent, not offered to VMs.
const HOST_RESERVE_MIB: u64 = 512;

/// Gathers the facts, including the accelerator probe (a real probe boot, cached by the vmm
/// crate per host). Blocking.
pub fn gather_facts(config: &AgentConfig, runtime: &QemuRuntime) -> NodeFacts {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mem_mib = meminfo_total_mib().unwrap_or(1024);
    let capacity = config.capacity.unwrap_or(Resources {
        vcpus: cpus,
        memory_mib: mem_mib.saturating_sub(HOST_RESERVE_MIB),
    });
    let (accel, accel_probe) = probe(config, runtime);
    NodeFacts {
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        capacity,
        accel,
        accel_probe,
        runtimes: vec!["qemu".to_owned()],
        vmm_version: firefleet_vmm::qemu::qemu_version(runtime.qemu())
            .unwrap_or_else(|| "unknown".to_owned()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        network: None, // filled in by the caller, which owns the node network
        isolation: runtime.sandbox().map(|sb| sb.facts()),
    }
}

fn probe(config: &AgentConfig, runtime: &QemuRuntime) -> (Accel, String) {
    let store = match firefleet_vmm::image::ImageStore::open(&config.image_dir) {
        Ok(s) => s,
        Err(e) => return (Accel::Tcg, format!("not probed: image store: {e}")),
    };
    let image = match store.resolve("default") {
        Ok(i) => i,
        Err(e) => {
            return (
                Accel::Tcg,
                format!("not probed (no guest image to probe with: {e}); using tcg"),
            )
        }
    };
    let p = firefleet_vmm::probe_accel(
        runtime.state_root(),
        &image,
        std::time::Duration::from_secs(5),
    );
    (p.accel, p.detail)
}

fn meminfo_total_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
