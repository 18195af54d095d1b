//! A VM's disks on this node, made from its spec: per VM under `<data dir>/disks/<vm>/`.
//!
//! - An image attached read-only: the shared image itself (read-only on disk).
//! - An image attached writable: the VM's own copy-on-write layer over the shared image: a
//!   qcow2 overlay for QEMU; Firecracker opens only raw files, so there it is a sparse copy.
//! - A blank disk: an empty ext4 filesystem of the requested size.
//!
//! Files are made once and kept (a relaunch or restore finds the VM's data again); each is built
//! under a temporary name and renamed, so a crash never leaves a half-made disk that looks
//! usable. They go when the VM is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use firefleet_types::{DiskSpec, VmRuntime};
use firefleet_vmm::{image::ImageStore, DiskConfig, DiskRole};

/// The directory holding VM `vm`'s disks.
pub fn vm_disk_dir(data_dir: &Path, vm: &str) -> PathBuf {
    data_dir.join("disks").join(vm)
}

/// Makes (or finds) the disks `specs` asks for, in order. The error names the disk.
pub fn prepare(
    data_dir: &Path,
    image_dir: &Path,
    vm: &str,
    runtime: VmRuntime,
    specs: &[DiskSpec],
) -> Result<Vec<DiskConfig>, String> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let dir = vm_disk_dir(data_dir, vm);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let store = ImageStore::open(image_dir)
        .map_err(|e| format!("image store: {}", firefleet_types::error_chain(&e)))?;
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let path =
            prepare_one(&store, &dir, i, runtime, spec).map_err(|e| format!("disk {i}: {e}"))?;
        out.push(DiskConfig {
            path,
            role: if spec.root {
                DiskRole::Root
            } else {
                DiskRole::Data
            },
            read_only: spec.read_only,
            vmm_path: None,
            vmm_backing: None,
        });
    }
    Ok(out)
}

fn prepare_one(
    store: &ImageStore,
    dir: &Path,
    index: usize,
    runtime: VmRuntime,
    spec: &DiskSpec,
) -> Result<PathBuf, String> {
    let chain = |e: &dyn std::error::Error| firefleet_types::error_chain(e);
    match (&spec.image, spec.size_mib) {
        (Some(image), _) => {
            let base = store
                .resolve_disk(image)
                .map_err(|e| format!("image {image}: {}", chain(&e)))?;
            if spec.read_only {
                return Ok(base.path);
            }
            match runtime {
                VmRuntime::Qemu => {
                    let path = dir.join(format!("disk{index}.qcow2"));
                    make_once(&path, |tmp| {
                        firefleet_vmm::disk::create_overlay(&base.path, tmp).map_err(|e| chain(&e))
                    })?;
                    Ok(path)
                }
                VmRuntime::Firecracker => {
                    let path = dir.join(format!("disk{index}.ext4"));
                    make_once(&path, |tmp| sparse_copy(&base.path, tmp))?;
                    Ok(path)
                }
            }
        }
        (None, Some(size_mib)) => {
            let path = dir.join(format!("disk{index}.ext4"));
            make_once(&path, |tmp| {
                // mkfs.ext4 -d needs a directory: an empty one, made for the purpose.
                let empty = dir.join(format!(".empty{index}"));
                fs::create_dir_all(&empty)
                    .map_err(|e| format!("creating {}: {e}", empty.display()))?;
                let r = firefleet_vmm::disk::build_ext4_from_dir(&empty, tmp, size_mib)
                    .map_err(|e| chain(&e));
                let _ = fs::remove_dir(&empty);
                r
            })?;
            Ok(path)
        }
        (None, None) => Err("neither an image nor a size".to_owned()),
    }
}

/// Runs `make` on a temporary path next to `path` and renames the result into place, unless
/// `path` exists already.
fn make_once(path: &Path, make: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    if let Err(e) = make(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let synced = fs::File::open(&tmp).and_then(|f| f.sync_all());
    synced
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // A private, writable file even if the source was read-only.
    set_writable(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn set_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Copies `from` to `to` keeping holes (`cp --sparse=always`, reflinked where the filesystem
/// can).
fn sparse_copy(from: &Path, to: &Path) -> Result<(), String> {
    let out = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| format!("running cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes VM `vm`'s disks.
pub fn remove(data_dir: &Path, vm: &str) -> io::Result<()> {
    match fs::remove_dir_all(vm_disk_dir(data_dir, vm)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_tools() -> bool {
        ["mkfs.ext4", "qemu-img"]
            .iter()
            .all(|t| std::process::Command::new(t).arg("--help").output().is_ok())
    }

    #[test]
    fn makes_each_kind_of_disk_once_and_removes_them() {
        if !have_tools() {
            eprintln!("skipped: mkfs.ext4 or qemu-img not installed");
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"x").unwrap();
        let store = ImageStore::open(images.path()).unwrap();
        let m = store.add_disk_from_dir(src.path(), 8, "base").unwrap();
        let specs = vec![
            DiskSpec {
                image: Some(m.digest.clone()),
                size_mib: None,
                read_only: false,
                root: true,
            },
            DiskSpec {
                image: Some(m.digest.clone()),
                size_mib: None,
                read_only: true,
                root: false,
            },
            DiskSpec {
                image: None,
                size_mib: Some(4),
                read_only: false,
                root: false,
            },
        ];
        let q = prepare(data.path(), images.path(), "vm1", VmRuntime::Qemu, &specs).unwrap();
        assert_eq!(q[0].role, DiskRole::Root);
        assert_eq!(
            firefleet_vmm::disk::backing_file(&q[0].path).unwrap(),
            Some(fs::canonicalize(store.resolve_disk("base").unwrap().path).unwrap())
        );
        assert_eq!(q[1].path, store.resolve_disk("base").unwrap().path);
        assert!(q[1].read_only);
        assert_eq!(fs::metadata(&q[2].path).unwrap().len(), 4 << 20);
        // Made once: a second prepare keeps the VM's files (its data).
        fs::write(&q[2].path, b"data").unwrap();
        let again = prepare(data.path(), images.path(), "vm1", VmRuntime::Qemu, &specs).unwrap();
        assert_eq!(again, q);
        assert_eq!(fs::read(&q[2].path).unwrap(), b"data");
        // Firecracker: a raw copy of the image, not an overlay.
        let f = prepare(
            data.path(),
            images.path(),
            "vm2",
            VmRuntime::Firecracker,
            &specs[..1],
        )
        .unwrap();
        assert_eq!(firefleet_vmm::disk::backing_file(&f[0].path).unwrap(), None);
        assert_eq!(
            fs::read(&f[0].path).unwrap(),
            fs::read(store.resolve_disk("base").unwrap().path).unwrap()
        );
        // An unknown image names the disk; nothing half-made stays.
        let bad = vec![DiskSpec {
            image: Some(format!("sha256:{}", "e".repeat(64))),
            ..specs[0].clone()
        }];
        let err = prepare(data.path(), images.path(), "vm3", VmRuntime::Qemu, &bad).unwrap_err();
        assert!(err.starts_with("disk 0: image sha256:eee"), "{err}");
        remove(data.path(), "vm1").unwrap();
        assert!(!vm_disk_dir(data.path(), "vm1").exists());
        remove(data.path(), "vm1").unwrap();
    }
}
