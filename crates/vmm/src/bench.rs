//! Restore from a snapshot against a cold boot, measured on this host with the real image.
//!
//! Cold boot: from the `launch` call until the console shows `firefleet-guest ready`.
//! Restore: from the `restore` call (a fresh VMM process loading the snapshot of a guest running a
//! counter) until the restored guest answers a ping on its channel, i.e. its PID 1 runs again;
//! the time until the VMM process runs the guest again (after `cont`) is reported too, and the
//! counter is checked to go on. Cold boot is measured to the guest's ready line, which its PID 1
//! prints when up (the channel opens at the same moment).
//! The console is polled every 5 ms. Runs sequentially; every VM it starts is removed.

use std::time::{Duration, Instant};

use firefleet_guest::console::READY_LINE;

use crate::image::Image;
use crate::probe::probe_accel;
use crate::qemu::QemuRuntime;
use crate::runtime::{LaunchConfig, Runtime, VmmError};

const POLL: Duration = Duration::from_millis(5);
const DEADLINE: Duration = Duration::from_secs(60);
const COUNTER_SCRIPT: &str = "i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.2; done";

/// The outcome of [`restore_vs_cold`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RestoreBench {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Guest memory of every VM, MiB.
    pub memory_mib: u64,
    /// Cold boots: launch to ready line, ms.
    pub cold_boot_ms: Vec<f64>,
    /// Restores: restore call to the first new console line, ms.
    pub restore_ms: Vec<f64>,
    /// Median of `cold_boot_ms`.
    pub cold_boot_median_ms: f64,
    /// Median of `restore_ms`.
    pub restore_median_ms: f64,
    /// Median time from the restore call until the new VMM process runs the guest again.
    pub restore_vmm_running_median_ms: f64,
    /// Size of the snapshot restored from.
    pub snapshot_bytes: u64,
    /// How long the source VM was paused to take it.
    pub snapshot_pause_ms: u64,
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Removes the VM (stopping it first) when dropped.
struct Cleanup<'a> {
    rt: &'a QemuRuntime,
    id: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.rt.stop(&self.id, Duration::ZERO);
        let _ = self.rt.remove(&self.id);
    }
}

/// Polls the console from offset 0 until `found` says yes; returns when it did.
fn wait_console(
    rt: &QemuRuntime,
    id: &str,
    what: &str,
    mut found: impl FnMut(&str) -> bool,
) -> Result<Instant, VmmError> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let chunk = rt.console(id, seen.len() as u64, 1 << 20)?;
        seen.extend_from_slice(&chunk.data);
        if found(&String::from_utf8_lossy(&seen)) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline || !rt.observe(id).is_ok_and(|o| o.running) {
            return Err(VmmError::InvalidConfig {
                id: id.to_string(),
                what: format!("benchmark: no {what} on the console"),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Pings the guest over its channel until it answers.
fn wait_guest_answers(rt: &QemuRuntime, id: &str) -> Result<Instant, VmmError> {
    let deadline = Instant::now() + DEADLINE;
    let sock = rt.vm_dir(id).join("guest.sock");
    loop {
        if let Ok(mut ch) = crate::channel::GuestChannel::connect(&sock, Duration::from_secs(1)) {
            if ch.ping().is_ok() {
                return Ok(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            return Err(VmmError::InvalidConfig {
                id: id.to_string(),
                what: "benchmark: the restored guest never answered on its channel".into(),
            });
        }
        std::thread::sleep(POLL);
    }
}

fn has_counter_line(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("counter="))
}

/// Measures `count` cold boots and `count` restores of one snapshot (see the module docs).
pub fn restore_vs_cold(
    runtime: &QemuRuntime,
    image: &Image,
    count: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<RestoreBench, VmmError> {
    let accel = probe_accel(runtime.state_root(), image, Duration::from_secs(5)).accel;
    let tag = std::process::id();
    let cfg = |id: String, cmd: Option<Vec<String>>| LaunchConfig {
        id,
        vcpus: 1,
        memory_mib: 256,
        image: image.clone(),
        cmd,
        accel,
        net: None,
        disks: Vec::new(),
    };

    let mut cold = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("bench-{tag}-cold-{i}");
        let _cleanup = Cleanup {
            rt: runtime,
            id: id.clone(),
        };
        let started = Instant::now();
        runtime.launch(&cfg(id.clone(), None))?;
        let at = wait_console(runtime, &id, "ready line", |t| {
            t.lines().any(|l| l.trim_end() == READY_LINE)
        })?;
        let ms = at.duration_since(started).as_secs_f64() * 1000.0;
        progress(&format!("cold boot {}/{count}: {ms:.0} ms", i + 1));
        cold.push(ms);
    }

    let src_id = format!("bench-{tag}-source");
    let _src_cleanup = Cleanup {
        rt: runtime,
        id: src_id.clone(),
    };
    let counter = Some(vec!["sh".into(), "-c".into(), COUNTER_SCRIPT.into()]);
    let src_cfg = cfg(src_id.clone(), counter);
    runtime.launch(&src_cfg)?;
    wait_console(runtime, &src_id, "counter line", has_counter_line)?;
    let snap = runtime.snapshot(&src_id, "bench", true)?;
    progress(&format!(
        "snapshot: {} bytes, paused {} ms",
        snap.bytes, snap.pause_ms
    ));
    runtime.stop(&src_id, Duration::ZERO)?;

    let mut restores = Vec::with_capacity(count);
    let mut restore_vmm = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("bench-{tag}-restore-{i}");
        let _cleanup = Cleanup {
            rt: runtime,
            id: id.clone(),
        };
        let mut c = src_cfg.clone();
        c.id = id.clone();
        let started = Instant::now();
        runtime.restore(&c, &snap.dir)?;
        let vmm_running = started.elapsed().as_secs_f64() * 1000.0;
        // Ready = the restored guest answers on its channel (its PID 1 runs again).
        let at = wait_guest_answers(runtime, &id)?;
        let ms = at.duration_since(started).as_secs_f64() * 1000.0;
        // And the workload goes on where it was (the counter continues; checked in the tests).
        wait_console(runtime, &id, "counter line", has_counter_line)?;
        progress(&format!(
            "restore {}/{count}: {ms:.0} ms (VMM running after {vmm_running:.0} ms)",
            i + 1
        ));
        restores.push(ms);
        restore_vmm.push(vmm_running);
    }

    Ok(RestoreBench {
        accel: accel.to_string(),
        memory_mib: src_cfg.memory_mib,
        cold_boot_median_ms: median(&cold),
        restore_median_ms: median(&restores),
        restore_vmm_running_median_ms: median(&restore_vmm),
        cold_boot_ms: cold,
        restore_ms: restores,
        snapshot_bytes: snap.bytes,
        snapshot_pause_ms: snap.pause_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
