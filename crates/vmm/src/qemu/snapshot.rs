//! Snapshots and restore for the QEMU backend (live migration is [`super::migrate`]).
//!
//! # Snapshot layout
//! `<state dir>/snapshots/<name>/` holds `vmstate.bin` (QEMU's migration stream: memory and
//! device state), `disk-<index>.<format>` (a copy of each writable disk, taken while the guest
//! was paused; read-only disks and the bases of qcow2 overlays are referenced by path, not
//! copied) and `manifest.json` ([`SnapshotManifest`]: the launch config, the exact kernel command
//! line, the QEMU version, creation time and the size of every file).
//!
//! # Crash safety
//! Everything is written into `snapshots/.tmp-<name>-<pid>/`; the manifest is written last,
//! the files and the directory are fsynced, and only then is the directory renamed to
//! `snapshots/<name>` (and `snapshots/` fsynced). A directory without a manifest, with a file
//! whose size differs from the manifest's, or whose name starts with `.` is refused by
//! [`verify_snapshot`] and so by restore. Stale `.tmp-*` directories (their pid is gone) are
//! removed by the next snapshot or launch of the VM.
//!
//! # Snapshots from elsewhere
//! A snapshot directory may come from another node (unpacked by [`crate::archive`]), so
//! [`verify_snapshot`] trusts nothing in it: the manifest is read only if it is a regular file
//! of at most [`MAX_MANIFEST_BYTES`], every file it lists must be one of [`is_snapshot_file`]'s
//! plain names and a regular file (never a link), and restore opens them with `O_NOFOLLOW`.
//!
//! # Saving and loading
//! The migration stream goes through a file descriptor we open and hand to QEMU with QMP
//! `getfd` (`fd:` URI), never `exec:`, which a `-sandbox spawn=deny` QEMU cannot run. Restore
//! starts QEMU with the same machine and device command line plus `-incoming defer`, then
//! `migrate-incoming`, then `cont`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::archive::MAX_MANIFEST_BYTES;
use crate::archive::{self, LocalFileError};
use crate::disk::{backing_file, detect_format, DiskFormat};
use crate::runtime::{LaunchConfig, SnapshotInfo, VmProcessInfo, VmmError};

use super::cmdline::{self, ArgOptions, SNAPSHOTS_DIR};
use super::qmp::Qmp;
use super::vmctl::{migrate_through_fd, wait_migration, QMP_TIMEOUT};
use super::{qemu_version, QemuRuntime};
use crate::fsutil::{fsync_dir, state_err, unix_ms};
use crate::process::kill_and_reap;
use crate::statedir::{self, validate_id};

/// The manifest, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The migration stream.
pub const VMSTATE_FILE: &str = "vmstate.bin";
/// The manifest format this code writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
const TMP_PREFIX: &str = ".tmp-";
/// `migrate-set-parameters max-bandwidth` for snapshots, bytes/s (the default, 32 MiB/s, would
/// make a 256 MiB guest take seconds).
const MAX_BANDWIDTH: u64 = 100 << 30;
const FD_NAME: &str = "firefleet-snapshot";

/// Whether `name` is a file a QEMU snapshot holds: [`MANIFEST_FILE`], [`VMSTATE_FILE`] or a
/// disk copy `disk-<N>.raw` / `disk-<N>.qcow2`. Pure.
pub fn is_snapshot_file(name: &str) -> bool {
    name == MANIFEST_FILE || is_data_file(name)
}

/// A file the manifest lists: the state or a disk copy.
fn is_data_file(name: &str) -> bool {
    name == VMSTATE_FILE
        || name
            .strip_prefix("disk-")
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(i, format)| {
                (1..=2).contains(&i.len())
                    && i.bytes().all(|b| b.is_ascii_digit())
                    && [DiskFormat::Raw, DiskFormat::Qcow2]
                        .iter()
                        .any(|f| f.as_str() == format)
            })
}

/// One file of a snapshot and its size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFile {
    /// The file name inside the snapshot directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// How a disk of the VM is kept in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotDisk {
    /// Position in the VM's disk list.
    pub index: usize,
    /// The disk's path when the snapshot was taken.
    pub source: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attached read-only (then referenced, not copied).
    pub read_only: bool,
    /// The copy inside the snapshot directory (writable disks).
    pub copy: Option<String>,
    /// The backing file of a qcow2 overlay, referenced.
    pub backing: Option<PathBuf>,
}

/// `manifest.json` of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The snapshot's name.
    pub name: String,
    /// The VM it was taken from.
    pub vm_id: String,
    /// The VM's launch config.
    pub config: LaunchConfig,
    /// The kernel command line the VM was booted with (restore passes it verbatim).
    pub kernel_cmdline: String,
    /// `qemu-system-x86_64 -version`, first line.
    pub qemu_version: String,
    /// When it was taken (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// How long the VM was paused for it.
    pub pause_ms: u64,
    /// Every file besides the manifest, with its size.
    pub files: Vec<SnapshotFile>,
    /// The VM's disks.
    pub disks: Vec<SnapshotDisk>,
}

fn invalid(path: &Path, what: impl Into<String>) -> VmmError {
    VmmError::InvalidSnapshot {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Copies `from` to `to` and fsyncs the copy.
fn copy_synced(from: &Path, to: &Path) -> Result<u64, VmmError> {
    let n = fs::copy(from, to).map_err(state_err(from))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(state_err(to))?;
    Ok(n)
}

/// Checks that `dir` is a complete snapshot: not a temporary directory, a readable manifest of
/// a known format, and every listed file present with its recorded size.
pub fn verify_snapshot(dir: &Path) -> Result<SnapshotManifest, VmmError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if name.starts_with('.') {
        return Err(invalid(
            dir,
            "an unfinished snapshot (temporary directory): it was never completed",
        ));
    }
    if !dir.is_dir() {
        return Err(invalid(dir, "no such directory"));
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = match archive::read_small(&manifest_path, MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(LocalFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(invalid(
                dir,
                format!("no {MANIFEST_FILE}: the snapshot is incomplete"),
            ))
        }
        Err(LocalFileError::Io(e)) => return Err(state_err(&manifest_path)(e)),
        Err(e) => return Err(invalid(dir, format!("{MANIFEST_FILE}: {e}"))),
    };
    let m: SnapshotManifest = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(dir, format!("{MANIFEST_FILE} is corrupt: {e}")))?;
    if m.format != MANIFEST_FORMAT {
        return Err(invalid(
            dir,
            format!("manifest format {} is not supported", m.format),
        ));
    }
    if !m.files.iter().any(|f| f.name == VMSTATE_FILE) {
        return Err(invalid(
            dir,
            format!("the manifest lists no {VMSTATE_FILE}"),
        ));
    }
    for f in &m.files {
        if !is_data_file(&f.name) {
            return Err(invalid(dir, format!("bad file name {:?}", f.name)));
        }
        let path = dir.join(&f.name);
        match archive::open_regular(&path).and_then(|file| Ok(file.metadata()?)) {
            Ok(md) if md.len() == f.size => {}
            Ok(md) => {
                return Err(invalid(
                    dir,
                    format!(
                        "{} has {} bytes, the manifest says {}: truncated or corrupt",
                        f.name,
                        md.len(),
                        f.size
                    ),
                ))
            }
            Err(LocalFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(dir, format!("{} is missing", f.name)))
            }
            Err(LocalFileError::Io(e)) => return Err(state_err(&path)(e)),
            Err(e) => return Err(invalid(dir, format!("{}: {e}", f.name))),
        }
    }
    for d in &m.disks {
        if let Some(copy) = &d.copy {
            if !m.files.iter().any(|f| &f.name == copy) {
                return Err(invalid(dir, format!("disk copy {copy} is not listed")));
            }
        }
    }
    Ok(m)
}

/// The disk copies a restore with `cfg` writes back, `(file in the snapshot, disk path)`: one
/// for each writable disk of `cfg`, none for a read-only one, whatever the manifest says (it
/// cannot make a restore overwrite a shared image). Pure.
pub fn disk_copies(
    m: &SnapshotManifest,
    cfg: &LaunchConfig,
) -> Result<Vec<(String, PathBuf)>, String> {
    if m.disks.len() != cfg.disks.len() {
        return Err(format!(
            "it holds {} disks, the VM has {}",
            m.disks.len(),
            cfg.disks.len()
        ));
    }
    let mut copies = Vec::new();
    for (i, (d, target)) in m.disks.iter().zip(&cfg.disks).enumerate() {
        match (&d.copy, target.read_only) {
            (Some(copy), false) => copies.push((copy.clone(), target.path.clone())),
            (None, true) => {}
            (Some(_), true) => return Err(format!("it holds a copy of read-only disk {i}")),
            (None, false) => return Err(format!("it holds no copy of writable disk {i}")),
        }
    }
    Ok(copies)
}

/// Removes `snapshots/.tmp-*` directories of `vm_dir` left by snapshots that never finished:
/// those whose process is gone, and the one of `current` (a snapshot name this process is about
/// to write) if it is ours. Best effort.
pub fn remove_stale_tmp(vm_dir: &Path, current: Option<&str>) {
    let Ok(entries) = fs::read_dir(vm_dir.join(SNAPSHOTS_DIR)) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
            continue;
        };
        let (snap, pid) = match rest.rsplit_once('-') {
            Some((snap, pid)) => (snap, pid.parse::<u32>().ok()),
            None => (rest, None),
        };
        let stale = match pid {
            None => true,
            Some(pid) if pid == me => current == Some(snap),
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        };
        if stale {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

impl QemuRuntime {
    pub(crate) fn snapshot_vm(
        &self,
        id: &str,
        name: &str,
        leave_paused: bool,
    ) -> Result<SnapshotInfo, VmmError> {
        self.require_running(id)?;
        validate_id(name).map_err(|_| VmmError::InvalidConfig {
            id: id.to_string(),
            what: format!("invalid snapshot name {name:?}"),
        })?;
        let dir = self.vm_dir(id);
        let cfg = statedir::read_config(&dir)?;
        let snaps = dir.join(SNAPSHOTS_DIR);
        fs::create_dir_all(&snaps).map_err(state_err(&snaps))?;
        remove_stale_tmp(&dir, Some(name));
        let final_dir = snaps.join(name);
        if final_dir.exists() {
            return Err(VmmError::InvalidConfig {
                id: id.to_string(),
                what: format!("snapshot {name:?} already exists"),
            });
        }
        let tmp = snaps.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        fs::create_dir(&tmp).map_err(state_err(&tmp))?;
        match self.write_snapshot(id, name, &cfg, &tmp, leave_paused) {
            Ok(mut info) => {
                fs::rename(&tmp, &final_dir).map_err(state_err(&final_dir))?;
                fsync_dir(&snaps)?;
                info.dir = final_dir;
                Ok(info)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Everything but the final rename: state, disk copies, manifest, fsyncs.
    fn write_snapshot(
        &self,
        id: &str,
        name: &str,
        cfg: &LaunchConfig,
        tmp: &Path,
        leave_paused: bool,
    ) -> Result<SnapshotInfo, VmmError> {
        let mut qmp = self.qmp_session(id, QMP_TIMEOUT)?;
        let status = Self::qmp_run(&mut qmp, id, "query-status", None)?;
        let was_running = status
            .get("running")
            .and_then(|r| r.as_bool())
            .unwrap_or(false);
        Self::qmp_run(
            &mut qmp,
            id,
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": MAX_BANDWIDTH })),
        )?;
        let state_path = tmp.join(VMSTATE_FILE);
        let state_file = File::create(&state_path).map_err(state_err(&state_path))?;

        let paused_at = Instant::now();
        if was_running {
            Self::qmp_run(&mut qmp, id, "stop", None)?;
        }
        let saved = self.save_paused(&mut qmp, id, cfg, tmp, &state_file);
        // A VM that was running runs on unless asked to stay paused (or the save failed).
        let resume = was_running && (!leave_paused || saved.is_err());
        if resume {
            Self::cont(&mut qmp, id)?;
        }
        let pause_ms = ms(paused_at.elapsed());
        drop(qmp);
        let disks = saved?;

        state_file.sync_all().map_err(state_err(&state_path))?;
        drop(state_file);
        let mut files = vec![SnapshotFile {
            name: VMSTATE_FILE.into(),
            size: fs::metadata(&state_path)
                .map_err(state_err(&state_path))?
                .len(),
        }];
        for d in &disks {
            if let Some(copy) = &d.copy {
                let p = tmp.join(copy);
                let size = fs::metadata(&p).map_err(state_err(&p))?.len();
                files.push(SnapshotFile {
                    name: copy.clone(),
                    size,
                });
            }
        }
        let created_unix_ms = unix_ms();
        let manifest = SnapshotManifest {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            vm_id: id.to_string(),
            config: cfg.clone(),
            kernel_cmdline: cmdline::kernel_cmdline(cfg, self.tsc_khz),
            qemu_version: qemu_version(&self.qemu).unwrap_or_else(|| "unknown".into()),
            created_unix_ms,
            pause_ms,
            files,
            disks,
        };
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|source| VmmError::CorruptState {
                path: tmp.join(MANIFEST_FILE),
                source,
            })?;
        let manifest_path = tmp.join(MANIFEST_FILE);
        let mut f = File::create(&manifest_path).map_err(state_err(&manifest_path))?;
        f.write_all(&json).map_err(state_err(&manifest_path))?;
        f.sync_all().map_err(state_err(&manifest_path))?;
        fsync_dir(tmp)?;
        let bytes = manifest.files.iter().map(|f| f.size).sum::<u64>() + json.len() as u64;
        Ok(SnapshotInfo {
            name: name.to_string(),
            dir: tmp.to_path_buf(),
            bytes,
            created_unix_ms,
            pause_ms,
        })
    }

    /// With the vCPUs stopped: migrate to the file, then copy the writable disks (QEMU has
    /// flushed them when the migration completed).
    fn save_paused(
        &self,
        qmp: &mut Qmp,
        id: &str,
        cfg: &LaunchConfig,
        tmp: &Path,
        state_file: &File,
    ) -> Result<Vec<SnapshotDisk>, VmmError> {
        migrate_through_fd(qmp, id, "migrate", FD_NAME, state_file.as_fd())?;
        wait_migration(qmp, id)?;
        let mut disks = Vec::new();
        for (index, d) in cfg.disks.iter().enumerate() {
            let format = detect_format(&d.path).map_err(|e| VmmError::Migration {
                id: id.to_string(),
                what: e.to_string(),
            })?;
            let copy = if d.read_only {
                None
            } else {
                let name = format!("disk-{index}.{}", format.as_str());
                copy_synced(&d.path, &tmp.join(&name))?;
                Some(name)
            };
            disks.push(SnapshotDisk {
                index,
                source: d.path.clone(),
                format,
                read_only: d.read_only,
                copy,
                backing: backing_file(&d.path).ok().flatten(),
            });
        }
        Ok(disks)
    }

    pub(crate) fn restore_vm(
        &self,
        cfg: &LaunchConfig,
        snapshot: &Path,
    ) -> Result<VmProcessInfo, VmmError> {
        validate_id(&cfg.id)?;
        let m = verify_snapshot(snapshot)?;
        let misfit =
            |what: String| invalid(snapshot, format!("does not fit VM {}: {what}", cfg.id));
        let saved = &m.config;
        if (cfg.vcpus, cfg.memory_mib, cfg.accel) != (saved.vcpus, saved.memory_mib, saved.accel) {
            return Err(misfit(format!(
                "it was taken with {} vCPUs, {} MiB, {:?}",
                saved.vcpus, saved.memory_mib, saved.accel
            )));
        }
        if cfg.image.digest != saved.image.digest {
            return Err(misfit(format!(
                "it was taken with image {}",
                saved.image.digest
            )));
        }
        if !cfg.image.kernel.is_file() || !cfg.image.initrd.is_file() {
            return Err(VmmError::InvalidConfig {
                id: cfg.id.clone(),
                what: "image kernel or initrd missing".into(),
            });
        }
        if cfg.disks.len() != m.disks.len()
            || cfg
                .disks
                .iter()
                .zip(&saved.disks)
                .any(|(a, b)| a.role != b.role || a.read_only != b.read_only)
        {
            return Err(misfit(
                "its disks differ in number, role or read-only".into(),
            ));
        }
        for d in &m.disks {
            if let Some(base) = &d.backing {
                if !base.is_file() {
                    return Err(misfit(format!(
                        "the base image {} of disk {} is missing",
                        base.display(),
                        d.index
                    )));
                }
            }
        }
        if let Some(p) = self.live_process(&cfg.id)? {
            return Err(VmmError::InvalidConfig {
                id: cfg.id.clone(),
                what: format!(
                    "the VM is running (pid {}); stop it before restoring",
                    p.pid
                ),
            });
        }
        // Writable disks go back to their state at the snapshot.
        for (copy, target) in disk_copies(&m, cfg).map_err(misfit)? {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(state_err(parent))?;
            }
            let part = target.with_extension("restore-tmp");
            let from = snapshot.join(&copy);
            archive::copy_regular(&from, &part).map_err(|e| match e {
                LocalFileError::Io(e) => state_err(&from)(e),
                e => invalid(snapshot, format!("{copy}: {e}")),
            })?;
            fs::rename(&part, &target).map_err(state_err(&target))?;
        }
        self.check_disks(cfg)?;
        let dir = self.prepare_dir(cfg)?;
        let opts = ArgOptions {
            kernel_cmdline: Some(m.kernel_cmdline.clone()),
            incoming: true,
            append_console: true,
            start_paused: false,
        };
        let p = self.spawn(cfg, &dir, &opts)?;
        self.wait_for_qmp(cfg, p)?;
        if let Err(e) = self.load_state(&cfg.id, snapshot) {
            kill_and_reap(p);
            return Err(e);
        }
        Ok(p.info(&cfg.id, dir, false))
    }

    /// `migrate-incoming` from the snapshot's state file, then `cont`.
    fn load_state(&self, id: &str, snapshot: &Path) -> Result<(), VmmError> {
        let state_path = snapshot.join(VMSTATE_FILE);
        let state_file = archive::open_regular(&state_path).map_err(|e| match e {
            LocalFileError::Io(e) => state_err(&state_path)(e),
            e => invalid(snapshot, format!("{VMSTATE_FILE}: {e}")),
        })?;
        let mut qmp = self.qmp_session(id, QMP_TIMEOUT)?;
        migrate_through_fd(
            &mut qmp,
            id,
            "migrate-incoming",
            FD_NAME,
            state_file.as_fd(),
        )?;
        drop(state_file);
        wait_migration(&mut qmp, id)?;
        Self::cont(&mut qmp, id)
    }
}

/// Live migration's report, at its old path (live migration is [`super::migrate`]).
pub use super::migrate::LiveStats;

#[cfg(test)]
mod tests;
