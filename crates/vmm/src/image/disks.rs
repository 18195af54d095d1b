//! Disk images: ext4 filesystems built from a directory (`mkfs.ext4 -d`), stored
//! content-addressed next to the boot images and shared by the VMs that use them (each VM
//! writes to its own copy-on-write layer, or reads the image itself when attached read-only).
//!
//! # Layout
//! `root/disks/<hex>/{disk.ext4, manifest.json}`, `<hex>` being the SHA-256 of `disk.ext4`.
//! Published like boot images: built in `root/disks/.tmp-<pid>-<n>/`, fsynced, renamed. The
//! image file is made read-only on disk: it is a shared base.

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    io_err, is_hex_digest, sha256_file, sync_dir, write_file_synced, ImageError, ImageStore,
};

/// The directory of disk images inside the store.
pub const DISKS_DIR: &str = "disks";
/// The image file inside a disk image's directory.
pub const DISK_FILE: &str = "disk.ext4";

/// What is known about a stored disk image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskImageManifest {
    /// `sha256:<hex>` of `disk.ext4`.
    pub digest: String,
    /// Human name; several images may share one (the newest wins when resolving it).
    pub name: String,
    /// Size of the filesystem, bytes.
    pub size_bytes: u64,
    /// The directory it was built from, as given.
    pub source: String,
    /// When it was built (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
}

/// A resolved disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The ext4 file (read-only on disk).
    pub path: PathBuf,
}

impl ImageStore {
    fn disks_store(&self) -> Result<ImageStore, ImageError> {
        ImageStore::open(&self.root.join(DISKS_DIR))
    }

    /// Builds an ext4 disk image of `size_mib` MiB from the contents of `dir` and stores it
    /// under `name`. Returns its manifest (the same digest again if identical bytes exist).
    pub fn add_disk_from_dir(
        &self,
        dir: &Path,
        size_mib: u64,
        name: &str,
    ) -> Result<DiskImageManifest, ImageError> {
        let disks = self.disks_store()?;
        let tmp = disks.temp_dir()?;
        let result = (|| {
            let file = tmp.join(DISK_FILE);
            crate::disk::build_ext4_from_dir(dir, &file, size_mib).map_err(|e| {
                ImageError::ToolFailed {
                    command: format!("mkfs.ext4 -d {}", dir.display()),
                    status: "error".into(),
                    stderr: firefleet_types::error_chain(&e),
                }
            })?;
            fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&file))?;
            let digest = sha256_file(&file)?;
            let mut perms = fs::metadata(&file).map_err(io_err(&file))?.permissions();
            perms.set_readonly(true);
            fs::set_permissions(&file, perms).map_err(io_err(&file))?;
            let manifest = DiskImageManifest {
                digest: format!("sha256:{digest}"),
                name: name.to_owned(),
                size_bytes: size_mib << 20,
                source: dir.display().to_string(),
                created_unix_ms: crate::fsutil::unix_ms(),
            };
            let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            write_file_synced(&tmp.join(super::MANIFEST_FILE), &bytes)?;
            sync_dir(&tmp)?;
            let final_dir = disks.root.join(&digest);
            if final_dir.join(super::MANIFEST_FILE).exists() {
                // Same bytes already stored: keep that one, take the new name.
                write_file_synced(&final_dir.join(super::MANIFEST_FILE), &bytes)?;
                fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
            } else {
                if final_dir.exists() {
                    fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
                }
                fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
                sync_dir(&disks.root)?;
            }
            Ok(manifest)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Every disk image, newest first.
    pub fn list_disks(&self) -> Result<Vec<DiskImageManifest>, ImageError> {
        let disks = self.disks_store()?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&disks.root).map_err(io_err(&disks.root))? {
            let entry = entry.map_err(io_err(&disks.root))?;
            if !is_hex_digest(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path().join(super::MANIFEST_FILE);
            match fs::read(&path) {
                Ok(bytes) => out.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|source| ImageError::Manifest { path, source })?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::Io { path, source: e }),
            }
        }
        out.sort_by(|a: &DiskImageManifest, b| {
            b.created_unix_ms
                .cmp(&a.created_unix_ms)
                .then(a.digest.cmp(&b.digest))
        });
        Ok(out)
    }

    /// Resolves a disk image like [`ImageStore::resolve`] does boot images: full digest, unique
    /// hex prefix (8 digits or more), or name.
    pub fn resolve_disk(&self, name_or_digest: &str) -> Result<DiskImage, ImageError> {
        let images = self.list_disks()?;
        let hex = name_or_digest
            .strip_prefix("sha256:")
            .unwrap_or(name_or_digest)
            .to_ascii_lowercase();
        let found = if hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<_> = images
                .iter()
                .filter(|m| m.digest.trim_start_matches("sha256:").starts_with(&hex))
                .collect();
            match matches.as_slice() {
                [one] => Some(*one),
                [] => None,
                _ => return Err(ImageError::Ambiguous(name_or_digest.to_owned())),
            }
        } else {
            None
        };
        let m = found
            .or_else(|| images.iter().find(|m| m.name == name_or_digest))
            .ok_or_else(|| ImageError::NotFound(format!("disk image {name_or_digest}")))?;
        Ok(DiskImage {
            digest: m.digest.clone(),
            path: self
                .root
                .join(DISKS_DIR)
                .join(m.digest.trim_start_matches("sha256:"))
                .join(DISK_FILE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_stores_and_resolves_disk_images() {
        if std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: mkfs.ext4 not installed");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("hello.txt"), b"hi").unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        let m = store.add_disk_from_dir(src.path(), 8, "web").unwrap();
        assert!(m.digest.starts_with("sha256:"));
        // Boot images do not see it; disks do.
        assert!(store.list().unwrap().is_empty());
        assert_eq!(store.list_disks().unwrap(), vec![m.clone()]);
        let by_name = store.resolve_disk("web").unwrap();
        let by_prefix = store.resolve_disk(&m.digest[7..19]).unwrap();
        assert_eq!(by_name, by_prefix);
        assert!(fs::metadata(&by_name.path)
            .unwrap()
            .permissions()
            .readonly());
        assert_eq!(
            sha256_file(&by_name.path).unwrap(),
            m.digest.trim_start_matches("sha256:")
        );
        assert!(matches!(
            store.resolve_disk("nope"),
            Err(ImageError::NotFound(_))
        ));
        // A directory that does not exist fails and leaves nothing behind.
        let err = store
            .add_disk_from_dir(&src.path().join("missing"), 8, "bad")
            .unwrap_err();
        assert!(
            firefleet_types::error_chain(&err).contains("missing"),
            "{err}"
        );
        assert_eq!(store.list_disks().unwrap().len(), 1);
        let leftovers = fs::read_dir(root.path().join(DISKS_DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('.'))
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
