//! Snapshots: `PATCH /vm Paused` + `PUT /snapshot/create` (Full), and restore into a fresh
//! process with `PUT /snapshot/load`.
//!
//! # Layout and atomicity
//! `snapshots/<name>/{vmstate, memory, disk<N>, manifest.json}`. Everything is written into
//! `snapshots/.tmp-<name>-<pid>/`, the files are fsynced, `manifest.json` is written last, then
//! the directory is renamed to `snapshots/<name>` and `snapshots/` fsynced. A directory without
//! `manifest.json`, or a dot-directory, is never a snapshot; leftovers of a crashed snapshot are
//! removed at the next launch.
//!
//! Firecracker does not snapshot disks, and cannot relocate drives on load (it reopens the
//! `path_on_host` recorded in the state file), so the writable disks are copied into the
//! snapshot while the VM is paused, and a restore writes them back to the same paths.
//!
//! # Snapshots from elsewhere
//! A snapshot directory may come from another node (unpacked by [`crate::archive`]), so
//! [`read_manifest`] trusts nothing in it: the manifest is read only if it is a regular file of
//! at most [`MAX_MANIFEST_BYTES`], every file it names must be one of [`is_snapshot_file`]'s
//! plain names and a regular file (never a link), and a restore writes disk copies back only to
//! the VM's own writable disks ([`disk_copies`]), never to a path the manifest names.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{self, SnapshotCreate, VmState, SNAPSHOTS_DIR};
use super::{api_failed, FirecrackerRuntime};
pub use crate::archive::MAX_MANIFEST_BYTES;
use crate::archive::{self, LocalFileError};
use crate::fsutil::{fsync_dir, state_err, unix_ms, write_atomic};
use crate::process::kill_and_reap;
use crate::runtime::{LaunchConfig, SnapshotInfo, VmProcessInfo, VmmError};
use crate::statedir::{self, valid_name, validate_id};

/// The device and vCPU state file.
pub const VMSTATE_FILE: &str = "vmstate";
/// The guest memory file.
pub const MEMORY_FILE: &str = "memory";
/// The manifest, written last.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Whether `name` is a file a Firecracker snapshot holds: [`VMSTATE_FILE`], [`MEMORY_FILE`],
/// [`MANIFEST_FILE`] or a disk copy `disk<N>`. Pure.
pub fn is_snapshot_file(name: &str) -> bool {
    matches!(name, VMSTATE_FILE | MEMORY_FILE | MANIFEST_FILE) || is_disk_copy(name)
}

/// `disk<N>`, N the disk's index (at most two digits).
fn is_disk_copy(name: &str) -> bool {
    name.strip_prefix("disk")
        .is_some_and(|i| (1..=2).contains(&i.len()) && i.bytes().all(|b| b.is_ascii_digit()))
}

/// The disk copies a restore with `cfg` writes back, `(file in the snapshot, disk path)`: one
/// `disk<i>` per writable disk `i` of `cfg`, and the manifest must list exactly those (a
/// manifest cannot choose where a restore writes). Pure.
pub fn disk_copies(
    m: &SnapshotManifest,
    cfg: &LaunchConfig,
) -> Result<Vec<(String, PathBuf)>, String> {
    let wanted: Vec<(String, PathBuf)> = cfg
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.read_only)
        .map(|(i, d)| (format!("disk{i}"), d.path.clone()))
        .collect();
    if m.disks != wanted {
        return Err(format!(
            "the manifest's disk copies {:?} are not the VM's writable disks {wanted:?}",
            m.disks
        ));
    }
    Ok(wanted)
}

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotManifest {
    /// `firecracker`.
    pub backend: String,
    /// The snapshot.
    pub info: SnapshotInfo,
    /// The VM's launch config when it was taken.
    pub config: LaunchConfig,
    /// Firecracker's version (`GET /version`), when known.
    #[serde(default)]
    pub vmm_version: Option<String>,
    /// Disk copies, `(file in the snapshot, path the VM uses)`.
    #[serde(default)]
    pub disks: Vec<(String, PathBuf)>,
}

/// Removes unfinished snapshot directories (`snapshots/.tmp-*`) of a VM.
pub(super) fn remove_stale_tmp(vm_dir: &Path) {
    let Ok(entries) = fs::read_dir(vm_dir.join(SNAPSHOTS_DIR)) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Reads and checks a snapshot directory.
pub fn read_manifest(dir: &Path) -> Result<SnapshotManifest, VmmError> {
    let invalid = |what: String| VmmError::InvalidSnapshot {
        path: dir.to_path_buf(),
        what,
    };
    let path = dir.join(MANIFEST_FILE);
    let bytes = match archive::read_small(&path, MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(LocalFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(invalid("no manifest.json (incomplete snapshot)".into()))
        }
        Err(LocalFileError::Io(e)) => return Err(VmmError::State { path, source: e }),
        Err(e) => return Err(invalid(format!("{MANIFEST_FILE}: {e}"))),
    };
    let m: SnapshotManifest =
        serde_json::from_slice(&bytes).map_err(|source| VmmError::CorruptState { path, source })?;
    if m.backend != "firecracker" {
        return Err(invalid(format!("taken by backend {:?}", m.backend)));
    }
    if let Some((f, _)) = m.disks.iter().find(|(f, _)| !is_disk_copy(f)) {
        return Err(invalid(format!(
            "the manifest names {f:?}, not a disk copy of the format"
        )));
    }
    for f in [VMSTATE_FILE, MEMORY_FILE]
        .into_iter()
        .chain(m.disks.iter().map(|(f, _)| f.as_str()))
    {
        match archive::open_regular(&dir.join(f)) {
            Ok(_) => {}
            Err(LocalFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(format!("{f} missing")))
            }
            Err(e) => return Err(invalid(format!("{f}: {e}"))),
        }
    }
    Ok(m)
}

impl FirecrackerRuntime {
    fn snapshot_unsupported_in_jail(&self, id: &str, op: &'static str) -> Result<(), VmmError> {
        if self.jailer.is_some() {
            return Err(VmmError::Unsupported {
                backend: "firecracker (jailed)",
                op,
                id: id.to_string(),
            });
        }
        Ok(())
    }

    pub(super) fn snapshot_vm(
        &self,
        id: &str,
        name: &str,
        leave_paused: bool,
    ) -> Result<SnapshotInfo, VmmError> {
        validate_id(id)?;
        self.snapshot_unsupported_in_jail(id, "snapshot")?;
        let dir = self.vm_dir(id);
        if !valid_name(name) {
            return Err(VmmError::InvalidSnapshot {
                path: dir.join(SNAPSHOTS_DIR).join(name),
                what: "invalid snapshot name".into(),
            });
        }
        if self.live_process(id)?.is_none() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        let cfg = statedir::read_config(&dir)?;
        let snaps = dir.join(SNAPSHOTS_DIR);
        let final_dir = snaps.join(name);
        if final_dir.exists() {
            return Err(VmmError::InvalidSnapshot {
                path: final_dir,
                what: "a snapshot with this name exists".into(),
            });
        }
        let tmp_name = format!(".tmp-{name}-{}", std::process::id());
        let tmp = snaps.join(&tmp_name);
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(state_err(&tmp))?;

        let api = self.api(id);
        let was_paused = self.is_paused(id);
        let started = Instant::now();
        let result = (|| -> Result<Vec<(String, PathBuf)>, VmmError> {
            if !was_paused {
                api.patch("/vm", &VmState { state: "Paused" })
                    .map_err(|e| api_failed(id, e))?;
            }
            // Relative to Firecracker's working directory, the state directory.
            let rel = Path::new(SNAPSHOTS_DIR).join(&tmp_name);
            api.put(
                "/snapshot/create",
                &SnapshotCreate {
                    snapshot_type: "Full",
                    snapshot_path: rel.join(VMSTATE_FILE).to_string_lossy().into_owned(),
                    mem_file_path: rel.join(MEMORY_FILE).to_string_lossy().into_owned(),
                },
            )
            .map_err(|e| VmmError::Migration {
                id: id.to_string(),
                what: e.to_string(),
            })?;
            let mut disks = Vec::new();
            for (i, d) in cfg.disks.iter().enumerate().filter(|(_, d)| !d.read_only) {
                let f = format!("disk{i}");
                fs::copy(&d.path, tmp.join(&f)).map_err(state_err(&d.path))?;
                disks.push((f, d.path.clone()));
            }
            Ok(disks)
        })();
        let pause_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !leave_paused && !was_paused {
            let resumed = api.patch("/vm", &VmState { state: "Resumed" });
            if let (Ok(_), Err(e)) = (&result, resumed) {
                let _ = fs::remove_dir_all(&tmp);
                return Err(api_failed(id, e));
            }
        }
        let disks = match result {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let publish = || -> Result<SnapshotInfo, VmmError> {
            let mut bytes = 0;
            for e in fs::read_dir(&tmp).map_err(state_err(&tmp))? {
                let e = e.map_err(state_err(&tmp))?;
                let p = e.path();
                let f = File::open(&p).map_err(state_err(&p))?;
                f.sync_all().map_err(state_err(&p))?;
                bytes += f.metadata().map_err(state_err(&p))?.len();
            }
            let info = SnapshotInfo {
                name: name.to_string(),
                dir: final_dir.clone(),
                bytes,
                created_unix_ms: unix_ms(),
                pause_ms,
            };
            let manifest = SnapshotManifest {
                backend: "firecracker".into(),
                info: info.clone(),
                config: cfg.clone(),
                vmm_version: api
                    .get("/version")
                    .ok()
                    .and_then(|v| v["firecracker_version"].as_str().map(str::to_string)),
                disks: disks.clone(),
            };
            let json =
                serde_json::to_vec_pretty(&manifest).map_err(|source| VmmError::CorruptState {
                    path: tmp.join(MANIFEST_FILE),
                    source,
                })?;
            write_atomic(&tmp.join(MANIFEST_FILE), &json)?;
            fsync_dir(&tmp)?;
            fs::rename(&tmp, &final_dir).map_err(state_err(&final_dir))?;
            fsync_dir(&snaps)?;
            Ok(info)
        };
        publish().inspect_err(|_| {
            let _ = fs::remove_dir_all(&tmp);
        })
    }

    pub(super) fn restore_vm(
        &self,
        cfg: &LaunchConfig,
        snapshot: &Path,
    ) -> Result<VmProcessInfo, VmmError> {
        validate_id(&cfg.id)?;
        self.snapshot_unsupported_in_jail(&cfg.id, "restore")?;
        let snapshot = fs::canonicalize(snapshot).map_err(state_err(snapshot))?;
        let m = read_manifest(&snapshot)?;
        let invalid = |what: String| VmmError::InvalidSnapshot {
            path: snapshot.clone(),
            what,
        };
        if m.config.memory_mib != cfg.memory_mib || m.config.vcpus != cfg.vcpus {
            return Err(invalid(format!(
                "taken with {} vCPUs and {} MiB, restore asks for {} and {}",
                m.config.vcpus, m.config.memory_mib, cfg.vcpus, cfg.memory_mib
            )));
        }
        let recorded: Vec<&Path> = m.config.disks.iter().map(|d| d.path.as_path()).collect();
        let asked: Vec<&Path> = cfg.disks.iter().map(|d| d.path.as_path()).collect();
        if recorded != asked {
            return Err(invalid(
                "firecracker reopens the disk paths recorded in the snapshot; the restore must \
                 use the same paths"
                    .into(),
            ));
        }
        if self.live_process(&cfg.id)?.is_some() {
            return Err(VmmError::InvalidConfig {
                id: cfg.id.clone(),
                what: "the VM is running on this host".into(),
            });
        }
        for (f, path) in disk_copies(&m, cfg).map_err(invalid)? {
            let from = snapshot.join(&f);
            archive::copy_regular(&from, &path).map_err(|e| match e {
                LocalFileError::Io(source) => VmmError::State { path, source },
                e => invalid(format!("{f}: {e}")),
            })?;
        }
        self.channels.close(&cfg.id);
        let dir = self.prepare_dir(cfg, false)?;
        let p = self.spawn(cfg, &dir)?;
        let load = || -> Result<(), VmmError> {
            self.configure_observability(&cfg.id)?;
            // Listen before the guest can reconnect (its vsock transport is reset on load).
            self.ensure_channel(&cfg.id)?;
            let body = config::snapshot_load(
                cfg,
                &snapshot.join(VMSTATE_FILE),
                &snapshot.join(MEMORY_FILE),
            );
            self.api(&cfg.id)
                .put("/snapshot/load", &body)
                .map_err(|e| VmmError::Migration {
                    id: cfg.id.clone(),
                    what: e.to_string(),
                })
        };
        if let Err(e) = load() {
            kill_and_reap(p);
            self.channels.close(&cfg.id);
            return Err(e);
        }
        Ok(p.info(&cfg.id, dir, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_snapshots_are_refused_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join(SNAPSHOTS_DIR).join("s1");
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join(VMSTATE_FILE), b"x").unwrap();
        fs::write(snap.join(MEMORY_FILE), b"x").unwrap();
        let e = read_manifest(&snap).unwrap_err();
        assert!(e.to_string().contains("no manifest.json"), "{e}");
        let tmp = dir.path().join(SNAPSHOTS_DIR).join(".tmp-s2-1");
        fs::create_dir_all(&tmp).unwrap();
        remove_stale_tmp(dir.path());
        assert!(!tmp.exists() && snap.exists());
    }

    fn launch_config(disks: Vec<crate::DiskConfig>) -> LaunchConfig {
        LaunchConfig {
            disks,
            ..LaunchConfig::sample()
        }
    }

    fn disk(path: &str, read_only: bool) -> crate::DiskConfig {
        crate::DiskConfig {
            path: path.into(),
            role: crate::DiskRole::Data,
            read_only,
            vmm_path: None,
            vmm_backing: None,
        }
    }

    /// A complete snapshot directory (as a restore finds it) whose manifest lists `disks`.
    fn snapshot_dir(root: &Path, disks: Vec<(String, PathBuf)>) -> PathBuf {
        let snap = root.join(SNAPSHOTS_DIR).join("s1");
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join(VMSTATE_FILE), b"state").unwrap();
        fs::write(snap.join(MEMORY_FILE), b"memory").unwrap();
        let m = SnapshotManifest {
            backend: "firecracker".into(),
            info: SnapshotInfo {
                name: "s1".into(),
                dir: snap.clone(),
                bytes: 11,
                created_unix_ms: 1,
                pause_ms: 1,
            },
            config: launch_config(Vec::new()),
            vmm_version: None,
            disks,
        };
        fs::write(snap.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        snap
    }

    #[test]
    fn a_manifest_naming_files_outside_the_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let up = "../".repeat(dir.path().components().count() + 3);
        for name in [
            format!("{up}etc/passwd"),
            "/etc/passwd".into(),
            "memory".into(),
        ] {
            let snap = snapshot_dir(dir.path(), vec![(name.clone(), "/tmp/x".into())]);
            let e = read_manifest(&snap).unwrap_err().to_string();
            assert!(e.contains("not a disk copy"), "{name}: {e}");
            fs::remove_dir_all(&snap).unwrap();
        }
        let snap = snapshot_dir(dir.path(), Vec::new());
        assert!(read_manifest(&snap).is_ok());
    }

    #[test]
    fn a_memory_file_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot_dir(dir.path(), Vec::new());
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, b"someone else's memory").unwrap();
        fs::remove_file(snap.join(MEMORY_FILE)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, snap.join(MEMORY_FILE)).unwrap();
        let e = read_manifest(&snap).unwrap_err().to_string();
        assert!(e.contains("memory: a symbolic link"), "{e}");
    }

    #[test]
    fn an_oversized_manifest_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot_dir(dir.path(), Vec::new());
        let f = File::options()
            .write(true)
            .open(snap.join(MANIFEST_FILE))
            .unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        let e = read_manifest(&snap).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn a_restore_writes_disk_copies_only_to_the_vms_writable_disks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = launch_config(vec![disk("/d/root", true), disk("/d/data", false)]);
        let wanted = vec![("disk1".to_string(), PathBuf::from("/d/data"))];
        let snap = snapshot_dir(dir.path(), wanted.clone());
        fs::write(snap.join("disk1"), b"blocks").unwrap();
        let m = read_manifest(&snap).unwrap();
        assert_eq!(disk_copies(&m, &cfg).unwrap(), wanted);

        for hostile in [
            vec![("disk1".to_string(), PathBuf::from("/etc/shadow"))],
            vec![("disk0".to_string(), PathBuf::from("/d/root"))],
            Vec::new(),
        ] {
            let m = SnapshotManifest {
                disks: hostile.clone(),
                ..m.clone()
            };
            assert!(disk_copies(&m, &cfg).is_err(), "{hostile:?}");
        }
    }
}
