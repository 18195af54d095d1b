//! Resolving, downloading and verifying the kernel package with apt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_err, sha256_file, ImageError};

/// The package we resolved and where its verified file is.
#[derive(Debug, Clone)]
pub(crate) struct KernelPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub deb: PathBuf,
}

/// Runs a command and returns its stdout; a failure names the command and its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let line = std::iter::once(program.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(|source| ImageError::ToolSpawn {
        tool: program,
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ImageError::ToolFailed {
            command: line,
            status: out.status.to_string(),
            stderr: tail.trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs `apt-get update` when there are no package lists at all.
pub(crate) fn ensure_apt_lists() -> Result<bool, ImageError> {
    let lists = Path::new("/var/lib/apt/lists");
    let has_lists = fs::read_dir(lists)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if has_lists {
        return Ok(false);
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    Ok(true)
}

/// The first value of `field` in an `apt-cache show` stanza.
pub(crate) fn field(stanza: &str, field: &str) -> Option<String> {
    let prefix = format!("{field}:");
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
}

fn is_versioned_image(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|r| r.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

/// Turns a metapackage (`linux-image-cloud-amd64`) into the versioned package that ships the
/// bzImage, preferring its `-unsigned` variant (the kernel QEMU/Firecracker boot directly).
pub(crate) fn resolve_package(requested: &str) -> Result<String, ImageError> {
    let mut name = requested.to_string();
    if !is_versioned_image(&name) {
        let deps = run(Command::new("apt-cache").args(["depends", &name]))?;
        name = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(|d| {
                d.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
            .find(|d| is_versioned_image(d))
            .ok_or_else(|| ImageError::Package {
                package: requested.to_string(),
                what: "no versioned linux-image-* dependency".into(),
            })?;
    }
    if !name.ends_with("-unsigned") {
        let unsigned = format!("{name}-unsigned");
        let ok = Command::new("apt-cache")
            .args(["show", "--no-all-versions", &unsigned])
            .output()
            .map(|o| o.status.success() && !o.stdout.is_empty())
            .unwrap_or(false);
        if ok {
            name = unsigned;
        }
    }
    Ok(name)
}

/// Downloads (or reuses from `cache_dir`) the package and verifies its SHA-256 against the
/// archive metadata (`apt-cache show --no-all-versions <pkg>=<version>`).
pub(crate) fn fetch_verified(
    name: &str,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelPackage, ImageError> {
    let stanza = run(Command::new("apt-cache").args(["show", "--no-all-versions", name]))?;
    let version = field(&stanza, "Version").ok_or_else(|| ImageError::Package {
        package: name.to_string(),
        what: "no Version field".into(),
    })?;
    let pinned = format!("{name}={version}");
    let stanza = run(Command::new("apt-cache").args(["show", "--no-all-versions", &pinned]))?;
    let missing = |what: &str| ImageError::Package {
        package: pinned.clone(),
        what: format!("no {what} field"),
    };
    let expected = field(&stanza, "SHA256")
        .ok_or_else(|| missing("SHA256"))?
        .to_ascii_lowercase();
    let filename = field(&stanza, "Filename").ok_or_else(|| missing("Filename"))?;
    let base = filename.rsplit('/').next().unwrap_or(&filename).to_string();
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let deb = cache_dir.join(&base);

    if deb.exists() {
        let actual = sha256_file(&deb)?;
        if actual == expected {
            progress("reusing cached package");
            return Ok(KernelPackage {
                name: name.to_string(),
                version,
                sha256: actual,
                deb,
            });
        }
        progress("cached package has the wrong checksum; downloading again");
        fs::remove_file(&deb).map_err(io_err(&deb))?;
    }

    // Download into a private directory, then move into the cache: no partial file ever has
    // the final name.
    let partial = cache_dir.join(format!(".partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).map_err(io_err(&partial))?;
    progress("apt-get download");
    let result = run(Command::new("apt-get")
        .args(["download", "-q", &pinned])
        .current_dir(&partial));
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    let downloaded = fs::read_dir(&partial)
        .map_err(io_err(&partial))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ImageError::Package {
            package: pinned.clone(),
            what: format!("apt-get download left no .deb in {}", partial.display()),
        })?;
    let actual = sha256_file(&downloaded)?;
    if actual != expected {
        let _ = fs::remove_dir_all(&partial);
        return Err(ImageError::ChecksumMismatch {
            path: downloaded,
            expected,
            actual,
        });
    }
    fs::rename(&downloaded, &deb).map_err(io_err(&deb))?;
    let _ = fs::remove_dir_all(&partial);
    Ok(KernelPackage {
        name: name.to_string(),
        version,
        sha256: actual,
        deb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_recognises_versioned_packages() {
        let stanza = "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nSHA256: abc\n";
        assert_eq!(field(stanza, "Version").as_deref(), Some("6.1.192-2"));
        assert_eq!(field(stanza, "SHA256").as_deref(), Some("abc"));
        assert_eq!(field(stanza, "MD5sum"), None);
        assert!(is_versioned_image("linux-image-6.1.0-56-cloud-amd64"));
        assert!(!is_versioned_image("linux-image-cloud-amd64"));
    }
}
