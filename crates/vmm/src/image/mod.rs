//! The image kit: a content-addressed local store of guest images, and the builder that makes
//! them from the distribution's cloud kernel package, busybox and `firefleet-guest`.
//!
//! # Layout
//! `root/<hex>/{vmlinuz, initrd.img, manifest.json}` and, when it could be extracted,
//! `root/<hex>/vmlinux` (the uncompressed ELF kernel, for Firecracker).
//!
//! # Digest
//! An image's digest is `sha256:<hex>` where `<hex>` is the lowercase hex SHA-256 of the bytes of
//! `vmlinuz` immediately followed by the bytes of `initrd.img` (a plain concatenation, no
//! separator or length prefix). `vmlinux` and `manifest.json` are derived data and not covered.
//! The initramfs is written reproducibly (fixed metadata, gzip mtime 0), so rebuilding from the
//! same kernel package, busybox and guest binary gives the same digest.
//!
//! # Atomic publication
//! A build writes everything into `root/.tmp-<pid>-<n>/`, fsyncs the files and the directory,
//! then renames it to `root/<hex>` and fsyncs `root`. Only directories whose name is a digest
//! and that contain `manifest.json` are images; dot-directories are ignored (and removed by
//! [`ImageStore::open`] when their builder process is gone).

mod apt;
mod build;
pub mod cpio;
pub mod disks;
pub mod elf;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

pub use build::{
    build_image, default_guest_bin, BuildOptions, BuildProgress, BuildStage, GUEST_MODULES,
};
pub use disks::{DiskImage, DiskImageManifest};

/// The file names inside an image directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs (gzip'd newc cpio).
pub const INITRD_FILE: &str = "initrd.img";
/// The uncompressed ELF kernel, when extracted.
pub const VMLINUX_FILE: &str = "vmlinux";
/// The manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything known about a stored image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageManifest {
    /// `sha256:<hex>`, see the module docs for the definition.
    pub digest: String,
    /// Human name (`default` unless told otherwise); several images may share a name.
    pub name: String,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The Debian package the kernel came from, e.g. `linux-image-6.1.0-56-cloud-amd64-unsigned`.
    pub kernel_package: String,
    /// That package's version.
    pub kernel_package_version: String,
    /// The verified SHA-256 of the package file (hex).
    pub kernel_package_sha256: String,
    /// When the image was built (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// Size of `vmlinuz` in bytes.
    pub kernel_size: u64,
    /// Size of `initrd.img` in bytes.
    pub initrd_size: u64,
    /// Size of `vmlinux` in bytes, when it was extracted.
    #[serde(default)]
    pub vmlinux_size: Option<u64>,
    /// The modules in the initramfs, in load order.
    #[serde(default)]
    pub modules: Vec<String>,
    /// SHA-256 (hex) of the `firefleet-guest` binary used as /init.
    #[serde(default)]
    pub guest_sha256: String,
}

/// A resolved image: what a VMM needs to boot it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The uncompressed kernel, when the image has one.
    #[serde(default)]
    pub vmlinux: Option<PathBuf>,
}

/// Errors of the image store and builder.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory of the store or the build could not be read or written.
    #[error("image kit I/O on {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A manifest is not valid JSON of the expected shape.
    #[error("corrupt image manifest {path}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No image has this name or digest.
    #[error("no image named or with digest {0:?}")]
    NotFound(String),
    /// A digest prefix matches several images.
    #[error("image reference {0:?} is ambiguous")]
    Ambiguous(String),
    /// An external tool (apt-get, apt-cache, dpkg-deb, xz, zstd, busybox) failed to run.
    #[error("running {tool}")]
    ToolSpawn {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An external tool ran but failed.
    #[error("{command} failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The package metadata lacks something we need.
    #[error("package {package}: {what}")]
    Package {
        /// The package.
        package: String,
        /// What is missing or odd.
        what: String,
    },
    /// The downloaded package does not match the archive's checksum.
    #[error("package file {path} has SHA-256 {actual}, but the archive says {expected}")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// From `apt-cache show`.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The kernel package has no /boot/vmlinuz-*.
    #[error("no /boot/vmlinuz-* in package {0}")]
    NoKernel(String),
    /// A module the guest needs is neither in the package nor built into the kernel.
    #[error("module {module} not found under {dir}")]
    ModuleMissing {
        /// Module name.
        module: String,
        /// Where we looked.
        dir: PathBuf,
    },
    /// The guest binary cannot be PID 1 of the initramfs.
    #[error("{path} is not statically linked (needs {interp}); build it with crates/guest/build-static.sh")]
    GuestNotStatic {
        /// The binary.
        path: PathBuf,
        /// Its PT_INTERP.
        interp: String,
    },
    /// The guest binary is not an ELF executable.
    #[error("{0} is not an x86-64 ELF executable")]
    GuestNotElf(PathBuf),
    /// No guest binary could be found.
    #[error("firefleet-guest binary not found ({0}); build it with `crates/guest/build-static.sh` and set FIREFLEET_GUEST_BIN to the path it prints")]
    GuestBinaryNotFound(String),
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

/// The local content-addressed image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) a store at `root`, and removes leftovers of dead builds.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let store = Self {
            root: root.to_path_buf(),
        };
        store.remove_stale_temp_dirs();
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every image in the store, newest first.
    pub fn list(&self) -> Result<Vec<ImageManifest>, ImageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !is_hex_digest(&name) {
                continue;
            }
            let path = entry.path().join(MANIFEST_FILE);
            match fs::read(&path) {
                Ok(bytes) => {
                    let m: ImageManifest = serde_json::from_slice(&bytes)
                        .map_err(|source| ImageError::Manifest { path, source })?;
                    out.push(m);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::Io { path, source: e }),
            }
        }
        out.sort_by(|a, b| {
            b.created_unix_ms
                .cmp(&a.created_unix_ms)
                .then(a.digest.cmp(&b.digest))
        });
        Ok(out)
    }

    /// Resolves `sha256:<hex>`, a unique hex prefix (at least 8 digits, with or without
    /// `sha256:`), or a name (the newest image with that name; `default` is just a name).
    pub fn resolve(&self, name_or_digest: &str) -> Result<Image, ImageError> {
        let images = self.list()?;
        let hex = name_or_digest
            .strip_prefix("sha256:")
            .unwrap_or(name_or_digest);
        let looks_like_digest = hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if looks_like_digest {
            let hex = hex.to_ascii_lowercase();
            let matches: Vec<_> = images
                .iter()
                .filter(|m| m.digest.trim_start_matches("sha256:").starts_with(&hex))
                .collect();
            match matches.as_slice() {
                [one] => return Ok(self.image_for(one)),
                [] => {}
                _ => return Err(ImageError::Ambiguous(name_or_digest.to_string())),
            }
        }
        // Newest first: the first with the name wins.
        images
            .iter()
            .find(|m| m.name == name_or_digest)
            .map(|m| self.image_for(m))
            .ok_or_else(|| ImageError::NotFound(name_or_digest.to_string()))
    }

    fn image_for(&self, m: &ImageManifest) -> Image {
        let dir = self.root.join(m.digest.trim_start_matches("sha256:"));
        Image {
            digest: m.digest.clone(),
            kernel: dir.join(KERNEL_FILE),
            initrd: dir.join(INITRD_FILE),
            vmlinux: m.vmlinux_size.map(|_| dir.join(VMLINUX_FILE)),
        }
    }

    /// A fresh temporary directory inside the store (same filesystem, so rename is atomic).
    pub(crate) fn temp_dir(&self) -> Result<PathBuf, ImageError> {
        for n in 0..1000u32 {
            let p = self.root.join(format!(".tmp-{}-{n}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::Io { path: p, source: e }),
            }
        }
        Err(ImageError::Io {
            path: self.root.clone(),
            source: io::Error::other("no free temporary directory name"),
        })
    }

    /// Publishes a complete temporary directory as image `manifest.digest`. If that image
    /// already exists (same content), only its manifest is replaced (atomically).
    pub(crate) fn publish(&self, tmp: &Path, manifest: &ImageManifest) -> Result<(), ImageError> {
        let hex = manifest.digest.trim_start_matches("sha256:");
        let final_dir = self.root.join(hex);
        write_file_synced(
            &tmp.join(MANIFEST_FILE),
            &serde_json::to_vec_pretty(manifest).unwrap_or_default(),
        )?;
        sync_dir(tmp)?;
        if final_dir.join(MANIFEST_FILE).exists() {
            let staged = final_dir.join(format!(".{MANIFEST_FILE}.tmp"));
            fs::copy(tmp.join(MANIFEST_FILE), &staged).map_err(io_err(&staged))?;
            File::open(&staged)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&staged))?;
            fs::rename(&staged, final_dir.join(MANIFEST_FILE)).map_err(io_err(&final_dir))?;
            sync_dir(&final_dir)?;
            fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
            return Ok(());
        }
        if final_dir.exists() {
            // A directory without a manifest is not an image: a leftover; replace it.
            fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        fs::rename(tmp, &final_dir).map_err(io_err(&final_dir))?;
        sync_dir(&self.root)
    }

    fn remove_stale_temp_dirs(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(".tmp-") else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

use std::fs::File;

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Computes the image digest of a kernel and an initramfs (see the module docs).
pub fn image_digest(kernel: &Path, initrd: &Path) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    for p in [kernel, initrd] {
        hash_file_into(p, &mut h)?;
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    hash_file_into(path, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn hash_file_into(path: &Path, h: &mut Sha256) -> Result<(), ImageError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

pub(crate) fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(digest: &str, name: &str, created: u64) -> ImageManifest {
        ImageManifest {
            digest: digest.into(),
            name: name.into(),
            kernel_version: "6.1".into(),
            kernel_package: "linux-image-x".into(),
            kernel_package_version: "1".into(),
            kernel_package_sha256: "00".into(),
            created_unix_ms: created,
            kernel_size: 1,
            initrd_size: 1,
            vmlinux_size: None,
            modules: vec![],
            guest_sha256: String::new(),
        }
    }

    #[test]
    fn digest_is_sha256_of_kernel_then_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let (k, i) = (dir.path().join("k"), dir.path().join("i"));
        fs::write(&k, b"kernel").unwrap();
        fs::write(&i, b"initrd").unwrap();
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(b"kernelinitrd")));
        assert_eq!(image_digest(&k, &i).unwrap(), expected);
        // Order matters.
        assert_ne!(image_digest(&i, &k).unwrap(), expected);
    }

    #[test]
    fn publishes_atomically_and_resolves_names_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "ab".repeat(32));
        for (d, created) in [(&a, 1), (&b, 2)] {
            let tmp = store.temp_dir().unwrap();
            fs::write(tmp.join(KERNEL_FILE), b"k").unwrap();
            fs::write(tmp.join(INITRD_FILE), b"i").unwrap();
            store
                .publish(&tmp, &manifest(d, "default", created))
                .unwrap();
            assert!(!tmp.exists());
        }
        // A half-written build is invisible.
        let half = store.temp_dir().unwrap();
        fs::write(half.join(KERNEL_FILE), b"k").unwrap();
        assert_eq!(store.list().unwrap().len(), 2);

        assert_eq!(store.resolve("default").unwrap().digest, b, "newest wins");
        assert_eq!(store.resolve(&a).unwrap().digest, a);
        assert_eq!(store.resolve("aaaaaaaaaa").unwrap().digest, a);
        assert!(matches!(store.resolve("abababab"), Ok(img) if img.digest == b));
        assert!(matches!(
            store.resolve("nope"),
            Err(ImageError::NotFound(_))
        ));
        let img = store.resolve(&b).unwrap();
        assert_eq!(
            img.kernel,
            dir.path().join("ab".repeat(32)).join(KERNEL_FILE)
        );

        // Re-publishing the same digest replaces the manifest only.
        let tmp = store.temp_dir().unwrap();
        store.publish(&tmp, &manifest(&a, "other", 3)).unwrap();
        assert_eq!(store.resolve("other").unwrap().digest, a);
        assert_eq!(store.list().unwrap().len(), 2);
        drop(store);
        // The stale temp dir of a "dead" builder is kept while we (its pid) live.
        assert!(half.exists());
    }
}
