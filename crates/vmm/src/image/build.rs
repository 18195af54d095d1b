//! Building an image: kernel package -> vmlinuz + modules; busybox + firefleet-guest -> initramfs.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;

use super::apt::{self, run};
use super::cpio::CpioWriter;
use super::elf::{self, ExecutableKind};
use super::{
    image_digest, io_err, sha256_file, sync_dir, write_file_synced, ImageError, ImageManifest,
    ImageStore, INITRD_FILE, KERNEL_FILE, VMLINUX_FILE,
};

/// The kernel modules put into the initramfs. Their dependencies (from each module's
/// `depends=` in `.modinfo`) are added and ordered before them automatically. For the
/// `microvm` machine (virtio-mmio).
pub const GUEST_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_balloon",
    "virtio-rng",
    // The ACPI power button (QEMU `system_powerdown`) as an input device.
    "button",
    "evdev",
];

/// The default package: Debian's cloud kernel metapackage.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The image's name (e.g. `default`).
    pub name: String,
    /// The statically linked `firefleet-guest` to use as /init.
    pub guest_bin: PathBuf,
    /// Scratch space. Downloaded packages are cached in `work_dir/debs/` and reused while their
    /// checksum matches; extraction happens in a temporary directory under it.
    pub work_dir: PathBuf,
    /// The kernel package (a metapackage or a versioned one); default
    /// [`DEFAULT_KERNEL_PACKAGE`].
    pub kernel_package: Option<String>,
}

/// The stages of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStage {
    /// Resolving the kernel package with apt-cache (and apt-get update if there are no lists).
    Resolve,
    /// Downloading (or reusing) and verifying the package.
    Download,
    /// Unpacking it with dpkg-deb.
    Extract,
    /// Collecting (and decompressing) modules; `done`/`total` count modules.
    Modules,
    /// Writing the initramfs; `done`/`total` count entries.
    Initramfs,
    /// Extracting the uncompressed vmlinux.
    Vmlinux,
    /// Hashing and publishing into the store.
    Publish,
    /// Finished.
    Done,
}

impl BuildStage {
    /// A short name for progress displays.
    pub fn as_str(&self) -> &'static str {
        match self {
            BuildStage::Resolve => "resolve",
            BuildStage::Download => "download",
            BuildStage::Extract => "extract",
            BuildStage::Modules => "modules",
            BuildStage::Initramfs => "initramfs",
            BuildStage::Vmlinux => "vmlinux",
            BuildStage::Publish => "publish",
            BuildStage::Done => "done",
        }
    }
}

/// A progress report: the stage, steps or bytes done out of a total when known, and a message.
#[derive(Debug, Clone)]
pub struct BuildProgress {
    /// Current stage.
    pub stage: BuildStage,
    /// Units done in this stage.
    pub done: u64,
    /// Units in this stage, when known.
    pub total: Option<u64>,
    /// What is happening.
    pub message: String,
}

/// Finds the guest binary: `$FIREFLEET_GUEST_BIN`, else `firefleet-guest` next to the current
/// executable.
pub fn default_guest_bin() -> Result<PathBuf, ImageError> {
    if let Some(p) = std::env::var_os("FIREFLEET_GUEST_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ImageError::GuestBinaryNotFound(format!(
                "FIREFLEET_GUEST_BIN={} does not exist",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| ImageError::GuestBinaryNotFound(format!("current executable unknown: {e}")))?;
    let candidate = exe.with_file_name("firefleet-guest");
    if candidate.is_file() {
        return Ok(candidate);
    }
    Err(ImageError::GuestBinaryNotFound(format!(
        "FIREFLEET_GUEST_BIN unset and no {}",
        candidate.display()
    )))
}

/// Builds an image and publishes it into `store`. Requires apt-get/apt-cache/dpkg-deb, and
/// busybox (`$FIREFLEET_BUSYBOX` or `/bin/busybox`, statically linked).
pub fn build_image(
    store: &ImageStore,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(BuildProgress),
) -> Result<ImageManifest, ImageError> {
    let mut report = |stage: BuildStage, done: u64, total: Option<u64>, message: String| {
        progress(BuildProgress {
            stage,
            done,
            total,
            message,
        })
    };

    // Check the inputs first: fail fast on a dynamic guest.
    let guest = read_static(&opts.guest_bin)?;
    let busybox_path = std::env::var_os("FIREFLEET_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let busybox = read_static(&busybox_path)?;

    report(
        BuildStage::Resolve,
        0,
        Some(1),
        "resolving the kernel package".into(),
    );
    if apt::ensure_apt_lists()? {
        report(BuildStage::Resolve, 0, Some(1), "ran apt-get update".into());
    }
    let requested = opts
        .kernel_package
        .as_deref()
        .unwrap_or(DEFAULT_KERNEL_PACKAGE);
    let package = apt::resolve_package(requested)?;
    report(BuildStage::Resolve, 1, Some(1), package.clone());

    report(BuildStage::Download, 0, None, format!("fetching {package}"));
    let pkg = apt::fetch_verified(&package, &opts.work_dir.join("debs"), &mut |m| {
        progress(BuildProgress {
            stage: BuildStage::Download,
            done: 0,
            total: None,
            message: m.to_string(),
        })
    })?;
    let deb_size = fs::metadata(&pkg.deb).map(|m| m.len()).unwrap_or(0);
    progress(BuildProgress {
        stage: BuildStage::Download,
        done: deb_size,
        total: Some(deb_size),
        message: format!(
            "{} {} verified (sha256 {})",
            pkg.name, pkg.version, pkg.sha256
        ),
    });

    let scratch = ScratchDir::new(&opts.work_dir)?;
    progress(BuildProgress {
        stage: BuildStage::Extract,
        done: 0,
        total: Some(deb_size),
        message: format!("dpkg-deb -x {}", pkg.deb.display()),
    });
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&pkg.deb)
        .arg(&scratch.0))?;
    progress(BuildProgress {
        stage: BuildStage::Extract,
        done: deb_size,
        total: Some(deb_size),
        message: "extracted".into(),
    });

    let (vmlinuz, kernel_version) = find_kernel(&scratch.0, &pkg.name)?;
    let modules_dir = scratch.0.join("lib/modules").join(&kernel_version);
    let modules = collect_modules(&modules_dir, GUEST_MODULES, &mut |done, total, name| {
        progress(BuildProgress {
            stage: BuildStage::Modules,
            done,
            total: Some(total),
            message: name.to_string(),
        })
    })?;

    let tmp = TempImageDir::new(store)?;
    let kernel_dst = tmp.0.join(KERNEL_FILE);
    fs::copy(&vmlinuz, &kernel_dst).map_err(io_err(&kernel_dst))?;
    fs::File::open(&kernel_dst)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&kernel_dst))?;

    let applets = busybox_applets(&busybox_path)?;
    let initrd = write_initramfs(&guest, &busybox, &applets, &modules, &mut |done, total| {
        progress(BuildProgress {
            stage: BuildStage::Initramfs,
            done,
            total: Some(total),
            message: "writing initramfs".into(),
        })
    })?;
    let initrd_dst = tmp.0.join(INITRD_FILE);
    write_file_synced(&initrd_dst, &initrd)?;

    progress(BuildProgress {
        stage: BuildStage::Vmlinux,
        done: 0,
        total: Some(1),
        message: "extracting vmlinux".into(),
    });
    let bz = fs::read(&kernel_dst).map_err(io_err(&kernel_dst))?;
    let vmlinux_size = match elf::extract_vmlinux(&bz) {
        Some(v) => {
            write_file_synced(&tmp.0.join(VMLINUX_FILE), &v)?;
            Some(v.len() as u64)
        }
        None => None,
    };

    progress(BuildProgress {
        stage: BuildStage::Publish,
        done: 0,
        total: Some(1),
        message: "hashing".into(),
    });
    let digest = image_digest(&kernel_dst, &initrd_dst)?;
    let manifest = ImageManifest {
        digest: digest.clone(),
        name: opts.name.clone(),
        kernel_version,
        kernel_package: pkg.name,
        kernel_package_version: pkg.version,
        kernel_package_sha256: pkg.sha256,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        kernel_size: bz.len() as u64,
        initrd_size: initrd.len() as u64,
        vmlinux_size,
        modules: modules.iter().map(|(n, _)| n.clone()).collect(),
        guest_sha256: sha256_file(&opts.guest_bin)?,
    };
    sync_dir(&tmp.0)?;
    store.publish(&tmp.0, &manifest)?;
    tmp.disarm();
    progress(BuildProgress {
        stage: BuildStage::Done,
        done: 1,
        total: Some(1),
        message: digest,
    });
    Ok(manifest)
}

/// Reads a binary that must be a static ELF (it runs in an initramfs without a libc).
fn read_static(path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    match elf::inspect_executable(&bytes) {
        ExecutableKind::Static => Ok(bytes),
        ExecutableKind::Dynamic(interp) => Err(ImageError::GuestNotStatic {
            path: path.to_path_buf(),
            interp,
        }),
        ExecutableKind::NotElf => Err(ImageError::GuestNotElf(path.to_path_buf())),
    }
}

fn find_kernel(root: &Path, package: &str) -> Result<(PathBuf, String), ImageError> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(|_| ImageError::NoKernel(package.to_string()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            return Ok((e.path(), version.to_string()));
        }
    }
    Err(ImageError::NoKernel(package.to_string()))
}

/// The modules' files in load order: each module's dependencies (the `depends=` of its
/// `.modinfo`; the package ships no modules.dep we could trust to be present) come before it.
/// Modules built into the kernel are skipped.
fn collect_modules(
    dir: &Path,
    wanted: &[&str],
    progress: &mut dyn FnMut(u64, u64, &str),
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    fn visit(
        dir: &Path,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut Vec<(String, Vec<u8>)>,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<(), ImageError> {
        let key = name.replace('-', "_");
        if seen.contains(&key) || stack.contains(&key) {
            return Ok(());
        }
        let Some(path) = find_module(dir, name)? else {
            if is_builtin(dir, name) {
                seen.insert(key);
                return Ok(());
            }
            return Err(ImageError::ModuleMissing {
                module: name.to_string(),
                dir: dir.to_path_buf(),
            });
        };
        let bytes = read_module(&path)?;
        stack.push(key.clone());
        for dep in module_depends(&bytes) {
            visit(dir, &dep, stack, done, seen)?;
        }
        stack.pop();
        seen.insert(key);
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        let base = file.split(".ko").next().unwrap_or(name).to_string();
        done.push((format!("{base}.ko"), bytes));
        Ok(())
    }
    let mut done = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, name) in wanted.iter().enumerate() {
        visit(dir, name, &mut Vec::new(), &mut done, &mut seen)?;
        progress(i as u64 + 1, wanted.len() as u64, name);
    }
    Ok(done)
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated `key=value` strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Finds `<name>.ko[.xz|.zst|.gz]` anywhere under `dir` (also with `-`/`_` swapped).
fn find_module(dir: &Path, name: &str) -> Result<Option<PathBuf>, ImageError> {
    let alt = if name.contains('-') {
        name.replace('-', "_")
    } else {
        name.replace('_', "-")
    };
    let wanted: Vec<String> = [name, alt.as_str()]
        .iter()
        .flat_map(|n| ["ko", "ko.xz", "ko.zst", "ko.gz"].map(|ext| format!("{n}.{ext}")))
        .collect();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::Io { path: d, source: e }),
        };
        for e in entries.flatten() {
            let ft = e.file_type().map_err(io_err(e.path()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if wanted.iter().any(|w| *w == e.file_name().to_string_lossy()) {
                return Ok(Some(e.path()));
            }
        }
    }
    Ok(None)
}

fn is_builtin(dir: &Path, name: &str) -> bool {
    let alt = name.replace('-', "_");
    fs::read_to_string(dir.join("modules.builtin"))
        .map(|s| {
            s.lines().any(|l| {
                let base = l.rsplit('/').next().unwrap_or(l);
                base == format!("{name}.ko") || base == format!("{alt}.ko")
            })
        })
        .unwrap_or(false)
}

/// Reads a module, decompressing `.xz`/`.zst` (with the tools) and `.gz` (in process).
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko.xz") {
        return run_bytes(Command::new("xz").arg("-dc").arg(path));
    }
    if name.ends_with(".ko.zst") {
        return run_bytes(Command::new("zstd").arg("-dcq").arg(path));
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .map_err(io_err(path))?;
        return Ok(out);
    }
    Ok(bytes)
}

fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let out = cmd.output().map_err(|source| ImageError::ToolSpawn {
        tool: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            command: program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// `busybox --list-full`: applet paths like `bin/sh`, `usr/sbin/chroot`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = run(Command::new(busybox).arg("--list-full"))?;
    Ok(out
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| {
            !l.is_empty()
                && !l.contains("..")
                && l != "linuxrc"
                && l != "sbin/init"
                && l != "bin/busybox"
        })
        .collect())
}

/// The initramfs: gzip'd newc cpio. Reproducible: same inputs, same bytes.
fn write_initramfs(
    guest: &[u8],
    busybox: &[u8],
    applets: &[String],
    modules: &[(String, Vec<u8>)],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, ImageError> {
    let wrap = |e: io::Error| ImageError::Io {
        path: PathBuf::from("<initramfs>"),
        source: e,
    };
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let mut w = CpioWriter::new(gz);
    let dirs = [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "lib",
        "lib/modules",
        "root",
        "run",
        "var",
    ];
    let total = (dirs.len() + applets.len() + modules.len() + 6) as u64;
    let mut done = 0u64;
    for d in dirs {
        let perm = if d == "tmp" { 0o1777 } else { 0o755 };
        w.dir(d, perm).map_err(wrap)?;
        done += 1;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(wrap)?;
    w.char_dev("dev/null", 0o666, 1, 3).map_err(wrap)?;
    w.file("init", 0o755, guest).map_err(wrap)?;
    w.file("bin/busybox", 0o755, busybox).map_err(wrap)?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(wrap)?;
    w.file("etc/group", 0o644, b"root:x:0:\n").map_err(wrap)?;
    done += 6;
    progress(done, total);
    for a in applets {
        w.symlink(a, "/bin/busybox").map_err(wrap)?;
        done += 1;
    }
    progress(done, total);
    let mut order = String::new();
    for (name, bytes) in modules {
        w.file(&format!("lib/modules/{name}"), 0o644, bytes)
            .map_err(wrap)?;
        order.push_str(name);
        order.push('\n');
        done += 1;
    }
    w.file("lib/modules/order", 0o644, order.as_bytes())
        .map_err(wrap)?;
    progress(done, total);
    let gz = w.finish().map_err(wrap)?;
    let mut bytes = gz.finish().map_err(wrap)?;
    bytes.flush().map_err(wrap)?;
    Ok(bytes)
}

/// A scratch directory under the work dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(work_dir: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(work_dir).map_err(io_err(work_dir))?;
        let p = work_dir.join(format!(".extract-{}-{}", std::process::id(), unique()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(Self(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The store's temporary directory, removed on drop unless published.
struct TempImageDir(PathBuf, bool);

impl TempImageDir {
    fn new(store: &ImageStore) -> Result<Self, ImageError> {
        Ok(Self(store.temp_dir()?, true))
    }
    fn disarm(mut self) {
        self.1 = false;
    }
}

impl Drop for TempImageDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_modules_by_their_depends() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("kernel/drivers");
        fs::create_dir_all(&sub).unwrap();
        let ko = |deps: &str| format!("\0license=GPL\0depends={deps}\0name=x\0").into_bytes();
        fs::write(sub.join("virtio_ring.ko"), ko("")).unwrap();
        fs::write(sub.join("virtio.ko"), ko("virtio_ring")).unwrap();
        fs::write(sub.join("virtio-rng.ko"), ko("virtio,virtio_ring")).unwrap();
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/builtin_one.ko\n",
        )
        .unwrap();
        let got = collect_modules(
            dir.path(),
            &["virtio", "virtio-rng", "builtin_one"],
            &mut |_, _, _| {},
        )
        .unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["virtio_ring.ko", "virtio.ko", "virtio-rng.ko"]);
        assert!(matches!(
            collect_modules(dir.path(), &["nope"], &mut |_, _, _| {}),
            Err(ImageError::ModuleMissing { .. })
        ));
    }

    #[test]
    fn initramfs_is_reproducible_and_lists_modules_in_order() {
        let modules = vec![
            ("a.ko".to_string(), b"A".to_vec()),
            ("b.ko".to_string(), b"B".to_vec()),
        ];
        let applets = vec!["bin/sh".to_string(), "usr/bin/env".to_string()];
        let mk = || write_initramfs(b"guest", b"bb", &applets, &modules, &mut |_, _| {}).unwrap();
        let one = mk();
        assert_eq!(one, mk());
        let mut cpio = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&one[..]), &mut cpio).unwrap();
        let text = String::from_utf8_lossy(&cpio);
        assert!(text.contains("lib/modules/order\0"));
        assert!(text.contains("a.ko\nb.ko\n"));
        assert!(text.contains("usr/bin/env\0"));
    }
}
