//! A VM's state directory, `<state root>/<id>/`, as every backend keeps it: the names of the
//! files all backends share, which ids may name a directory, and the launch config recorded in
//! it. A backend adds its own files (sockets, logs) beside these.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::VmmError;
use crate::fsutil::{remove_file_if_exists, state_err, write_atomic};
use crate::vm::LaunchConfig;

/// The launch config ([`LaunchConfig`] as JSON).
pub const CONFIG_FILE: &str = "config.json";
/// `"<pid> <start_time>"` of the VMM process ([`crate::process::ProcessId`]).
pub const PID_FILE: &str = "pid";
/// The serial console, written by the VMM itself (so capture survives an agent restart).
pub const CONSOLE_LOG: &str = "console.log";
/// How the VMM process ended, written by the process that reaped it.
pub const EXIT_FILE: &str = "exit";
/// Snapshots of the VM: `snapshots/<name>/`.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// `[A-Za-z0-9_.-]`, at most 64, not starting with `.` (VM ids and snapshot names). Pure.
pub fn valid_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// [`valid_name`] as a result: [`VmmError::InvalidId`] if `id` cannot name a state directory.
pub fn validate_id(id: &str) -> Result<(), VmmError> {
    if valid_name(id) {
        Ok(())
    } else {
        Err(VmmError::InvalidId(id.to_string()))
    }
}

/// The state directory of VM `id` under `root` (not checked).
pub fn vm_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// The state directory of VM `id`, which must be a valid id and have one, else
/// [`VmmError::InvalidId`] or [`VmmError::NotFound`].
pub fn existing_vm_dir(root: &Path, id: &str) -> Result<PathBuf, VmmError> {
    validate_id(id)?;
    let dir = vm_dir(root, id);
    if !dir.is_dir() {
        return Err(VmmError::NotFound(id.to_string()));
    }
    Ok(dir)
}

/// Creates `root` if missing.
pub fn create_root(root: &Path) -> Result<(), VmmError> {
    fs::create_dir_all(root).map_err(state_err(root))
}

/// The ids of the VMs under `root` that have a recorded config, sorted.
pub fn list_vms(root: &Path) -> Result<Vec<String>, VmmError> {
    let mut ids = Vec::new();
    for e in fs::read_dir(root).map_err(state_err(root))? {
        let e = e.map_err(state_err(root))?;
        let name = e.file_name().to_string_lossy().to_string();
        if valid_name(&name) && e.path().join(CONFIG_FILE).is_file() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Creates `dir` if missing and removes what a previous process left there (`stale`: the pid
/// file, exit record, sockets), before a new VMM process starts in it.
pub fn prepare(dir: &Path, stale: impl IntoIterator<Item = PathBuf>) -> Result<(), VmmError> {
    fs::create_dir_all(dir).map_err(state_err(dir))?;
    for p in stale {
        remove_file_if_exists(&p)?;
    }
    Ok(())
}

/// Records `cfg` in `dir` ([`CONFIG_FILE`], atomically).
pub fn write_config(dir: &Path, cfg: &LaunchConfig) -> Result<(), VmmError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = serde_json::to_vec_pretty(cfg).map_err(|source| VmmError::CorruptState {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &bytes)
}

/// The launch config recorded in `dir`.
pub fn read_config(dir: &Path) -> Result<LaunchConfig, VmmError> {
    let path = dir.join(CONFIG_FILE);
    serde_json::from_slice(&fs::read(&path).map_err(state_err(&path))?)
        .map_err(|source| VmmError::CorruptState { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ids() {
        for ok in ["vm-1", "a.b_c", "X"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_only_vms_with_a_config() {
        let root = tempfile::tempdir().unwrap();
        for (name, config) in [("b", true), ("a", true), ("none", false), (".hidden", true)] {
            fs::create_dir(root.path().join(name)).unwrap();
            if config {
                fs::write(root.path().join(name).join(CONFIG_FILE), "{}").unwrap();
            }
        }
        assert_eq!(list_vms(root.path()).unwrap(), ["a", "b"]);
        assert!(matches!(
            existing_vm_dir(root.path(), "nope"),
            Err(VmmError::NotFound(_))
        ));
        assert!(matches!(
            existing_vm_dir(root.path(), "a/b"),
            Err(VmmError::InvalidId(_))
        ));
        assert_eq!(
            existing_vm_dir(root.path(), "a").unwrap(),
            root.path().join("a")
        );
    }
}
