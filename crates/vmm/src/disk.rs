//! Block device images: ext4 filesystems built from a directory (`mkfs.ext4 -d`, no mounting, no
//! root needed) and qcow2 copy-on-write overlays of a shared read-only base (`qemu-img`).
//!
//! A base image is shared by many VMs and must never change: [`create_overlay`] marks it
//! read-only on disk, and QEMU opens backing files read-only. Each VM writes only its overlay.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The qcow2 magic, `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// The on-disk format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// A plain image (e.g. ext4 from [`build_ext4_from_dir`]).
    Raw,
    /// A qcow2 image, usually an overlay from [`create_overlay`].
    Qcow2,
}

impl DiskFormat {
    /// The name QEMU and qemu-img use (`raw`, `qcow2`).
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// The format of a file from its first bytes (qcow2 magic, else raw).
    pub fn from_header(header: &[u8]) -> Self {
        if header.starts_with(&QCOW2_MAGIC) {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

/// Errors of the disk helpers. Each names the file and, for tools, what they said.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file could not be read, created or changed.
    #[error("disk image I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tool could not be started (not installed?).
    #[error("running {tool} (is it installed?)")]
    ToolSpawn {
        /// The tool.
        tool: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed on {path} ({status}): {stderr}")]
    ToolFailed {
        /// The tool.
        tool: &'static str,
        /// The image it was making.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// An argument is unusable.
    #[error("{path}: {what}")]
    Invalid {
        /// The path concerned.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Detects the format of an image file.
pub fn detect_format(path: &Path) -> Result<DiskFormat, DiskError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match f.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(DiskFormat::from_header(&header[..got]))
}

/// The backing file recorded in a qcow2 header, if any (`None` for raw images).
pub fn backing_file(path: &Path) -> Result<Option<PathBuf>, DiskError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut header = [0u8; 20];
    if f.read_exact(&mut header).is_err() || DiskFormat::from_header(&header) != DiskFormat::Qcow2 {
        return Ok(None);
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&header[8..16]);
    let offset = u64::from_be_bytes(off);
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[16..20]);
    let len = u32::from_be_bytes(len);
    if offset == 0 || len == 0 || len > 4096 {
        return Ok(None);
    }
    let mut name = vec![0u8; len as usize];
    io::Seek::seek(&mut f, io::SeekFrom::Start(offset)).map_err(io_err(path))?;
    f.read_exact(&mut name).map_err(io_err(path))?;
    Ok(Some(PathBuf::from(
        String::from_utf8_lossy(&name).into_owned(),
    )))
}

fn run_tool(tool: &'static str, args: &[&std::ffi::OsStr], out: &Path) -> Result<(), DiskError> {
    let output = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskError::ToolSpawn { tool, source })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    Err(DiskError::ToolFailed {
        tool,
        path: out.to_path_buf(),
        status: output.status.to_string(),
        stderr: stderr[stderr.len().saturating_sub(2000)..].to_string(),
    })
}

/// Builds a raw ext4 image of `size_mib` MiB at `out` holding the contents of `dir` (a sparse
/// file filled by `mkfs.ext4 -q -d DIR -F OUT`). `out` is replaced if it exists; on failure it
/// is removed.
pub fn build_ext4_from_dir(dir: &Path, out: &Path, size_mib: u64) -> Result<(), DiskError> {
    if !dir.is_dir() {
        return Err(DiskError::Invalid {
            path: dir.to_path_buf(),
            what: "not a directory".into(),
        });
    }
    if size_mib == 0 {
        return Err(DiskError::Invalid {
            path: out.to_path_buf(),
            what: "size must be at least 1 MiB".into(),
        });
    }
    let file = File::create(out).map_err(io_err(out))?;
    file.set_len(size_mib << 20).map_err(io_err(out))?;
    drop(file);
    let result = run_tool(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-d".as_ref(),
            dir.as_os_str(),
            "-F".as_ref(),
            out.as_os_str(),
        ],
        out,
    );
    if result.is_err() {
        let _ = fs::remove_file(out);
    }
    result
}

/// Creates a qcow2 copy-on-write `overlay` over `base` (`qemu-img create -f qcow2 -F <fmt> -b
/// BASE OVERLAY`, the base referenced by its absolute path) and makes `base` read-only on disk.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<(), DiskError> {
    let base = fs::canonicalize(base).map_err(io_err(base))?;
    let format = detect_format(&base)?;
    let mut perms = fs::metadata(&base).map_err(io_err(&base))?.permissions();
    if !perms.readonly() {
        perms.set_readonly(true);
        fs::set_permissions(&base, perms).map_err(io_err(&base))?;
    }
    run_tool(
        "qemu-img",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            format.as_str().as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            overlay.as_os_str(),
        ],
        overlay,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_from_headers() {
        assert_eq!(
            DiskFormat::from_header(b"QFI\xfb\0\0\0\x03"),
            DiskFormat::Qcow2
        );
        assert_eq!(DiskFormat::from_header(b"\0\0\0\0"), DiskFormat::Raw);
        assert_eq!(DiskFormat::from_header(b""), DiskFormat::Raw);
        assert_eq!(DiskFormat::Qcow2.as_str(), "qcow2");
    }

    #[test]
    fn builds_ext4_and_overlays_with_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("hello.txt"), "hi\n").unwrap();
        let img = tmp.path().join("root.ext4");
        build_ext4_from_dir(&src, &img, 8).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 8 << 20);
        assert_eq!(detect_format(&img).unwrap(), DiskFormat::Raw);
        assert_eq!(backing_file(&img).unwrap(), None);

        let err = build_ext4_from_dir(&tmp.path().join("nope"), &img, 8).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        // Too small for mkfs: the tool's complaint is reported, the output removed.
        let bad = tmp.path().join("tiny.ext4");
        fs::write(src.join("big"), vec![1u8; 2 << 20]).unwrap();
        let err = build_ext4_from_dir(&src, &bad, 1).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::ToolFailed {
                    tool: "mkfs.ext4",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("tiny.ext4"), "{err}");
        assert!(!bad.exists());

        if Command::new("qemu-img").arg("--version").output().is_ok() {
            let ov = tmp.path().join("vm1.qcow2");
            create_overlay(&img, &ov).unwrap();
            assert_eq!(detect_format(&ov).unwrap(), DiskFormat::Qcow2);
            assert_eq!(
                backing_file(&ov).unwrap(),
                Some(fs::canonicalize(&img).unwrap())
            );
            assert!(fs::metadata(&img).unwrap().permissions().readonly());
        }
    }
}
