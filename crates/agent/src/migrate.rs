//! This node's part in migrations (blocking; run by [`crate::ops::Ops`]).
//!
//! Source: pause the VM and snapshot it (kept paused: nothing may change after the snapshot),
//! pack the snapshot directory into a tar file and upload it to the server. Destination:
//! download it, unpack it into the VM's state directory as a complete snapshot (temporary name,
//! then rename), make the VM's disks and network attachment here, restore, re-address the
//! guest for this node's subnet, report. Each step finds the previous one's result on disk if
//! it was done before a crash, so a repeated attempt carries on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use firefleet_api::{MigrationIntent, MigrationReport};
use firefleet_client::Client;
use firefleet_types::MigrationPhase;
use firefleet_vmm::{LaunchConfig, Runtime};

/// The source's console, carried in the snapshot directory.
const CONSOLE_COPY: &str = "console.log";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn tar(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("tar")
        .args(args)
        .output()
        .map_err(|e| format!("running tar: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tar failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn report(handle: &tokio::runtime::Handle, client: &Client, vm: &str, r: &MigrationReport) {
    if let Err(e) = handle.block_on(client.migration_report(vm, r)) {
        tracing::warn!(vm, error = %e, "reporting a migration step failed");
    }
}

fn failed(message: String) -> MigrationReport {
    MigrationReport {
        phase: MigrationPhase::Failed,
        paused_ms: None,
        resumed_ms: None,
        message: Some(message),
    }
}

/// The source's part: snapshot (paused), pack, upload.
pub fn send(
    handle: &tokio::runtime::Handle,
    client: &Client,
    rt: &dyn Runtime,
    vm_dir: &Path,
    m: &MigrationIntent,
) {
    let vm = m.migration.vm.as_str();
    let name = &m.migration.snapshot;
    let dir = vm_dir.join("snapshots").join(name);
    let result = (|| -> Result<(), String> {
        if firefleet_vmm::completed_snapshot(&dir).is_none() {
            let paused = MigrationReport {
                phase: MigrationPhase::Transferring,
                paused_ms: Some(now_ms()),
                resumed_ms: None,
                message: None,
            };
            report(handle, client, vm, &paused);
            rt.snapshot(vm, name, true)
                .map_err(|e| format!("snapshot: {}", firefleet_types::error_chain(&e)))?;
        }
        let archive = vm_dir.join(format!("{name}.tar"));
        if !archive.exists() {
            // The console goes along, so that the destination appends to the same stream (the
            // server's copy is addressed by offsets into it).
            let console = vm_dir.join("console.log");
            if console.exists() {
                fs::copy(&console, dir.join(CONSOLE_COPY))
                    .map_err(|e| format!("{}: {e}", console.display()))?;
            }
            let part = archive.with_extension("tar.part");
            tar(&[
                "-C".as_ref(),
                dir.as_os_str(),
                "-cf".as_ref(),
                part.as_os_str(),
                ".".as_ref(),
            ])?;
            fs::rename(&part, &archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        }
        let len = fs::metadata(&archive)
            .map_err(|e| format!("{}: {e}", archive.display()))?
            .len();
        let r = handle.block_on(async {
            let f = tokio::fs::File::open(&archive)
                .await
                .map_err(|e| e.to_string())?;
            client
                .migration_upload(vm, f, len)
                .await
                .map_err(|e| firefleet_types::error_chain(&e))
        });
        let _ = fs::remove_file(&archive);
        r.map_err(|e| format!("upload: {e}"))
    })();
    match result {
        Ok(()) => tracing::info!(vm, "migration snapshot sent"),
        Err(e) => {
            tracing::warn!(vm, error = %e, "migration: sending failed");
            report(handle, client, vm, &failed(format!("source: {e}")));
        }
    }
}

/// Unpacks a downloaded snapshot into `snapshots/<name>` (complete or not at all).
fn receive(
    handle: &tokio::runtime::Handle,
    client: &Client,
    vm: &str,
    vm_dir: &Path,
    name: &str,
) -> Result<PathBuf, String> {
    let dir = vm_dir.join("snapshots").join(name);
    if firefleet_vmm::completed_snapshot(&dir).is_some() {
        return Ok(dir);
    }
    let snapshots = vm_dir.join("snapshots");
    fs::create_dir_all(&snapshots).map_err(|e| format!("{}: {e}", snapshots.display()))?;
    let archive = snapshots.join(format!(".{name}.tar"));
    let bytes = handle
        .block_on(async {
            let mut f = tokio::fs::File::create(&archive)
                .await
                .map_err(|e| e.to_string())?;
            let n = client
                .migration_download(vm, &mut f)
                .await
                .map_err(|e| firefleet_types::error_chain(&e))?;
            f.sync_all().await.map_err(|e| e.to_string())?;
            Ok::<u64, String>(n)
        })
        .map_err(|e| format!("download: {e}"))?;
    let tmp = snapshots.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let unpacked = tar(&[
        "-C".as_ref(),
        tmp.as_os_str(),
        "-xf".as_ref(),
        archive.as_os_str(),
    ]);
    let _ = fs::remove_file(&archive);
    unpacked?;
    if firefleet_vmm::completed_snapshot(&tmp).is_none() {
        // Checked under its final name too (QEMU's check refuses temporary names): rename first.
        tracing::debug!(vm, "snapshot checked after the rename");
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if firefleet_vmm::completed_snapshot(&dir).is_none() {
        let _ = fs::remove_dir_all(&dir);
        return Err(format!(
            "the received snapshot ({bytes} bytes) is incomplete"
        ));
    }
    tracing::info!(vm, bytes, "migration snapshot received");
    Ok(dir)
}

/// The destination's part: receive, restore with `cfg` (disks and network already made),
/// re-address the guest, report done. Failures are reported; the caller undoes local state.
pub fn restore(
    handle: &tokio::runtime::Handle,
    client: &Client,
    rt: &dyn Runtime,
    vm_dir: &Path,
    m: &MigrationIntent,
    cfg: &LaunchConfig,
) -> Result<(), String> {
    let vm = m.migration.vm.as_str();
    let result = (|| -> Result<u64, String> {
        let dir = receive(handle, client, vm, vm_dir, &m.migration.snapshot)?;
        let console = vm_dir.join("console.log");
        if !console.exists() && dir.join(CONSOLE_COPY).exists() {
            fs::copy(dir.join(CONSOLE_COPY), &console)
                .map_err(|e| format!("{}: {e}", console.display()))?;
        }
        if !rt.observe(vm).is_ok_and(|o| o.running) {
            rt.restore(cfg, &dir)
                .map_err(|e| format!("restore: {}", firefleet_types::error_chain(&e)))?;
        }
        let resumed = now_ms();
        if let Some(net) = &cfg.net {
            readdress(rt, vm, net);
        }
        Ok(resumed)
    })();
    match result {
        Ok(resumed) => {
            report(
                handle,
                client,
                vm,
                &MigrationReport {
                    phase: MigrationPhase::Done,
                    paused_ms: None,
                    resumed_ms: Some(resumed),
                    message: None,
                },
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(vm, error = %e, "migration: restoring failed");
            report(handle, client, vm, &failed(format!("destination: {e}")));
            Err(e)
        }
    }
}

/// The restored guest still has the source node's address: give it this node's, over the guest
/// channel. Best effort: a guest without a channel keeps its old address (and says so in logs).
fn readdress(rt: &dyn Runtime, vm: &str, net: &firefleet_vmm::net::NetAttachment) {
    let script = format!(
        "n=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); \
         ip addr flush dev $n && ip addr add {}/{} dev $n && ip link set dev $n up && \
         ip route replace default via {} dev $n",
        net.guest_ip, net.prefix_len, net.gateway
    );
    let argv = vec!["sh".to_owned(), "-c".to_owned(), script];
    match rt.exec(vm, &argv, None, Duration::from_secs(10)) {
        Ok(out) if out.exit_code == 0 => {
            tracing::info!(vm, ip = %net.guest_ip, "guest re-addressed after migration");
        }
        Ok(out) => tracing::warn!(
            vm,
            code = out.exit_code,
            stderr = %String::from_utf8_lossy(&out.stderr),
            "re-addressing the guest failed"
        ),
        Err(e) => {
            tracing::warn!(vm, error = %firefleet_types::error_chain(&e), "re-addressing the guest failed")
        }
    }
}
