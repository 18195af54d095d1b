//! Choosing KVM or TCG with a probe boot.
//!
//! `/dev/kvm` being present proves little (a nested paravirtual KVM can refuse stock kernels),
//! so the probe boots the real image with `accel=kvm` and waits for the guest's ready line. The
//! result is cached in `state_root/accel-probe.json`, keyed by the QEMU version line and the
//! image digest, so it runs once per host (delete the file to probe again). A host whose
//! /dev/kvm cannot be opened gets TCG without a probe and without caching.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use firefleet_types::Accel;

use crate::image::Image;
use crate::qemu::{qemu_version, QemuRuntime};
use crate::runtime::{LaunchConfig, Runtime};

/// The cache file under the state root.
pub const PROBE_CACHE_FILE: &str = "accel-probe.json";
const PROBE_ID: &str = "probe";

/// The outcome of a probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelProbe {
    /// The accelerator to use.
    pub accel: Accel,
    /// What happened (why KVM was or was not chosen).
    pub detail: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    qemu_version: String,
    kernel_digest: String,
    probe: AccelProbe,
}

/// Decides KVM or TCG for this host (see the module docs). Never fails: any problem yields TCG
/// with the problem in `detail`.
pub fn probe_accel(state_root: &Path, image: &Image, deadline: Duration) -> AccelProbe {
    let tcg = |detail: String| AccelProbe {
        accel: Accel::Tcg,
        detail,
    };
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("kvm probe: /dev/kvm not usable: {e}"));
    }
    let probe_root = state_root.join(".accel-probe");
    let rt = match QemuRuntime::new(probe_root.clone()) {
        Ok(rt) => rt,
        Err(e) => return tcg(format!("kvm probe: {e}")),
    };
    let version = qemu_version(rt.qemu()).unwrap_or_else(|| "unknown".into());
    let cache_path = state_root.join(PROBE_CACHE_FILE);
    if let Ok(bytes) = fs::read(&cache_path) {
        if let Ok(entry) = serde_json::from_slice::<CacheEntry>(&bytes) {
            if entry.qemu_version == version && entry.kernel_digest == image.digest {
                return entry.probe;
            }
        }
    }
    let result = run_probe(&rt, image, deadline);
    let entry = CacheEntry {
        qemu_version: version,
        kernel_digest: image.digest.clone(),
        probe: result.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec_pretty(&entry) {
        let tmp = cache_path.with_extension("tmp");
        if fs::write(&tmp, bytes).is_ok() {
            let _ = fs::rename(&tmp, &cache_path);
        }
    }
    let _ = fs::remove_dir_all(&probe_root);
    result
}

fn run_probe(rt: &QemuRuntime, image: &Image, deadline: Duration) -> AccelProbe {
    let tcg = |detail: String| AccelProbe {
        accel: Accel::Tcg,
        detail,
    };
    let _ = rt.remove(PROBE_ID);
    let cfg = LaunchConfig {
        id: PROBE_ID.into(),
        vcpus: 1,
        memory_mib: 256,
        image: image.clone(),
        cmd: None,
        accel: Accel::Kvm,
        net: None,
        disks: Vec::new(),
    };
    let started = Instant::now();
    if let Err(e) = rt.launch(&cfg) {
        let _ = rt.remove(PROBE_ID);
        if let crate::runtime::VmmError::EarlyExit { log, .. } = &e {
            let last = log.rsplit(" | ").next().unwrap_or(log);
            return tcg(format!("kvm probe: qemu exited: {}", last.trim()));
        }
        return tcg(format!("kvm probe: {}", firefleet_types::error_chain(&e)));
    }
    let result = loop {
        match rt.observe(PROBE_ID) {
            Ok(o) if o.guest_ready => {
                break AccelProbe {
                    accel: Accel::Kvm,
                    detail: format!(
                        "kvm probe: guest ready in {} ms",
                        started.elapsed().as_millis()
                    ),
                }
            }
            Ok(o) if !o.running => {
                let log =
                    fs::read_to_string(rt.vm_dir(PROBE_ID).join(crate::qemu::cmdline::QEMU_LOG))
                        .unwrap_or_default();
                let last = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                break tcg(format!("kvm probe: qemu exited: {}", last.trim()));
            }
            Ok(_) => {}
            Err(e) => break tcg(format!("kvm probe: {}", firefleet_types::error_chain(&e))),
        }
        if started.elapsed() >= deadline {
            break tcg(format!(
                "kvm probe: no ready line within {}s",
                deadline.as_secs_f32()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = rt.stop(PROBE_ID, Duration::ZERO);
    let _ = rt.remove(PROBE_ID);
    result
}
