//! Node facts: what the agent reports about its host with each heartbeat.

use firefleet_types::node::{PowerFacts, PowerSource};
use firefleet_types::{Accel, NodeFacts, Resources};
use firefleet_vmm::QemuRuntime;

use crate::AgentConfig;

/// Memory kept for the host and the agent, not offered to VMs.
const HOST_RESERVE_MIB: u64 = 512;

/// Gathers the facts, including the accelerator probe (a real probe boot, cached by the vmm
/// crate per host) and the host's security posture; `metadata_egress_blocked`: the node
/// network, whose ruleset drops guests' traffic to the metadata address, is up. Blocking.
pub fn gather_facts(
    config: &AgentConfig,
    runtime: &QemuRuntime,
    metadata_egress_blocked: bool,
) -> NodeFacts {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mem_mib = meminfo_total_mib().unwrap_or(1024);
    let capacity = config.capacity.unwrap_or(Resources {
        vcpus: cpus,
        memory_mib: mem_mib.saturating_sub(HOST_RESERVE_MIB),
    });
    let (accel, accel_probe) = probe(config, runtime);
    let isolation = runtime.sandbox().map(|sb| sb.facts());
    let posture = crate::posture::gather_posture(
        std::path::Path::new("/"),
        isolation.as_ref(),
        metadata_egress_blocked,
    );
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
        isolation,
        power: Some(config.power_override.clone().unwrap_or_else(|| {
            power_facts(
                std::path::Path::new("/sys/class/power_supply"),
                std::path::Path::new("/sys/class/powercap"),
            )
        })),
        posture: Some(posture),
    }
}

fn read_trim(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Power source, battery charge and draw from sysfs: a `Battery` supply that is discharging (or
/// no online `Mains` supply next to a battery) means battery; watts from the battery's
/// `power_now`, else from RAPL energy counters sampled over 200 ms. Nothing exposed: unknown.
pub fn power_facts(power_supply: &std::path::Path, powercap: &std::path::Path) -> PowerFacts {
    let mut mains_online = None;
    let mut battery: Option<(Option<u8>, bool, Option<u64>)> = None;
    if let Ok(rd) = std::fs::read_dir(power_supply) {
        for e in rd.flatten() {
            let p = e.path();
            match read_trim(&p.join("type")).as_deref() {
                Some("Mains") | Some("USB") => {
                    let online = read_trim(&p.join("online")).as_deref() == Some("1");
                    mains_online = Some(mains_online.unwrap_or(false) || online);
                }
                Some("Battery") => {
                    let percent = read_trim(&p.join("capacity")).and_then(|c| c.parse().ok());
                    let discharging =
                        read_trim(&p.join("status")).as_deref() == Some("Discharging");
                    let mw = read_trim(&p.join("power_now"))
                        .and_then(|u| u.parse::<u64>().ok())
                        .map(|uw| uw / 1000);
                    battery = Some((percent, discharging, mw));
                }
                _ => {}
            }
        }
    }
    let source = match (&battery, mains_online) {
        (Some((_, true, _)), _) | (Some(_), Some(false)) => PowerSource::Battery,
        (_, Some(_)) | (Some(_), None) => PowerSource::Mains,
        (None, None) => PowerSource::Unknown,
    };
    let milliwatts = battery
        .as_ref()
        .and_then(|b| b.2)
        .filter(|_| source == PowerSource::Battery)
        .or_else(|| rapl_milliwatts(powercap));
    PowerFacts {
        source,
        battery_percent: battery.and_then(|b| b.0),
        milliwatts,
    }
}

/// Package power from RAPL (`intel-rapl:N/energy_uj`), sampled over 200 ms.
fn rapl_milliwatts(powercap: &std::path::Path) -> Option<u64> {
    let zones: Vec<_> = std::fs::read_dir(powercap)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
        })
        .collect();
    if zones.is_empty() {
        return None;
    }
    let read = || -> Option<u64> {
        zones
            .iter()
            .map(|z| read_trim(&z.join("energy_uj"))?.parse::<u64>().ok())
            .sum()
    };
    let start = read()?;
    let t = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let end = read()?;
    let us = t.elapsed().as_micros().max(1) as u64;
    // µJ / µs = W; wraps are skipped.
    end.checked_sub(start).map(|uj| uj * 1000 / us)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &std::path::Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn reads_power_sources_from_sysfs() {
        let none = tempfile::tempdir().unwrap();
        let empty = power_facts(none.path(), none.path());
        assert_eq!(empty.source, PowerSource::Unknown);
        assert_eq!(empty.milliwatts, None);

        let laptop = tempfile::tempdir().unwrap();
        supply(laptop.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        supply(
            laptop.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "35"),
                ("status", "Discharging"),
                ("power_now", "7250000"),
            ],
        );
        let p = power_facts(laptop.path(), none.path());
        assert_eq!(
            (p.source, p.battery_percent, p.milliwatts),
            (PowerSource::Battery, Some(35), Some(7250))
        );

        supply(laptop.path(), "AC", &[("type", "Mains"), ("online", "1")]);
        supply(
            laptop.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "90"),
                ("status", "Charging"),
            ],
        );
        let p = power_facts(laptop.path(), none.path());
        assert_eq!(
            (p.source, p.battery_percent),
            (PowerSource::Mains, Some(90))
        );
    }
}
