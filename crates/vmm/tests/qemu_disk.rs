//! Block devices with real QEMU (TCG here): an ext4 root disk the workload is chrooted into,
//! read-only roots, data disks, qcow2 overlays of one shared base, and mount failures.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firefleet_testkit::vmm::*;
use firefleet_vmm::disk::{build_ext4_from_dir, create_overlay, detect_format};
use firefleet_vmm::{DiskConfig, DiskFormat, DiskRole, LaunchConfig, QemuRuntime, Runtime};
use sha2::{Digest, Sha256};

/// A root filesystem tree: busybox with a few applet links, /hello.txt, mount points.
fn rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "touch", "echo", "sync", "test"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("hello.txt"), "hello from the root disk\n").unwrap();
}

fn ext4_root(work: &Path, name: &str) -> PathBuf {
    let tree = work.join(format!("{name}-tree"));
    rootfs(&tree);
    let img = work.join(format!("{name}.ext4"));
    build_ext4_from_dir(&tree, &img, 64).unwrap();
    img
}

fn disk(path: &Path, role: DiskRole, read_only: bool) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        role,
        read_only,
        vmm_path: None,
        vmm_backing: None,
    }
}

fn sh(script: &str) -> Option<Vec<String>> {
    Some(vec!["sh".into(), "-c".into(), script.into()])
}

/// Boots `cfg`, waits for the guest to power off, returns (exit code, console).
fn run_to_completion(rt: &QemuRuntime, cfg: &LaunchConfig) -> (Option<i32>, String) {
    let _g = launch_cfg(rt, cfg);
    wait_for("power off", Duration::from_secs(40), rt, &cfg.id, || {
        rt.observe(&cfg.id).unwrap().powered_off
    });
    let console = console_text(rt, &cfg.id);
    eprintln!("--- console of {} ---\n{console}---", cfg.id);
    (rt.observe(&cfg.id).unwrap().guest_exit_code, console)
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

#[test]
fn root_disk_is_chrooted_into_and_read_only_roots_refuse_writes() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let root_img = ext4_root(work.path(), "root");
    let data_tree = work.path().join("data-tree");
    fs::create_dir(&data_tree).unwrap();
    fs::write(data_tree.join("data.txt"), "data disk contents\n").unwrap();
    let data_img = work.path().join("data.ext4");
    build_ext4_from_dir(&data_tree, &data_img, 16).unwrap();
    let rt = QemuRuntime::new(work.path().join("state")).unwrap();

    let mut cfg = launch_config(
        "rootdisk",
        sh("cat /hello.txt; cat /mnt/1/data.txt; test -e /init || echo chrooted"),
    );
    cfg.disks = vec![
        disk(&root_img, DiskRole::Root, false),
        disk(&data_img, DiskRole::Data, true),
    ];
    let (code, console) = run_to_completion(&rt, &cfg);
    assert_eq!(code, Some(0), "{console}");
    for line in ["hello from the root disk", "data disk contents", "chrooted"] {
        assert!(
            console.lines().any(|l| l.trim_end() == line),
            "{line}: {console}"
        );
    }

    let mut ro = launch_config("readonly", Some(vec!["touch".into(), "/x".into()]));
    ro.disks = vec![disk(&root_img, DiskRole::Root, true)];
    let (code, console) = run_to_completion(&rt, &ro);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {console}");
    assert!(console.contains("Read-only file system"), "{console}");
    assert!(qemu_pids_for("rootdisk").is_empty() && qemu_pids_for("readonly").is_empty());
}

#[test]
fn overlays_of_one_base_are_isolated_and_the_base_is_unchanged() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let base = ext4_root(work.path(), "base");
    let base_sum = sha256(&base);
    let (a, b) = (work.path().join("a.qcow2"), work.path().join("b.qcow2"));
    create_overlay(&base, &a).unwrap();
    create_overlay(&base, &b).unwrap();
    assert_eq!(detect_format(&a).unwrap(), DiskFormat::Qcow2);
    assert!(fs::metadata(&base).unwrap().permissions().readonly());
    let rt = QemuRuntime::new(work.path().join("state")).unwrap();
    let with = |id: &str, overlay: &Path, cmd| {
        let mut c = launch_config(id, cmd);
        c.disks = vec![disk(overlay, DiskRole::Root, false)];
        c
    };

    let (code, console) = run_to_completion(&rt, &with("a1", &a, sh("echo from-a > /written.txt")));
    assert_eq!(code, Some(0), "{console}");
    let (code, console) = run_to_completion(&rt, &with("b", &b, sh("cat /written.txt")));
    assert_ne!(code, Some(0), "B must not see A's file: {console}");
    assert!(!console.contains("from-a"), "{console}");
    let (code, console) = run_to_completion(&rt, &with("a2", &a, sh("cat /written.txt")));
    assert_eq!(code, Some(0), "A keeps its own write: {console}");
    assert!(
        console.lines().any(|l| l.trim_end() == "from-a"),
        "{console}"
    );
    assert_eq!(sha256(&base), base_sum, "the shared base is unchanged");
}

#[test]
fn an_unmountable_root_powers_off_with_a_clear_message() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let junk = work.path().join("junk.img");
    fs::write(&junk, vec![0u8; 4 << 20]).unwrap();
    let rt = QemuRuntime::new(work.path().join("state")).unwrap();
    let mut cfg = launch_config("junk", sh("echo should-not-run"));
    cfg.disks = vec![disk(&junk, DiskRole::Root, false)];
    let (_, console) = run_to_completion(&rt, &cfg);
    assert!(
        console.contains("disk setup failed") && console.contains("/dev/vda"),
        "{console}"
    );
    assert!(!console.contains("should-not-run"), "{console}");
    // A missing disk file is refused before QEMU starts.
    let mut missing = launch_config("missing", None);
    missing.disks = vec![disk(&work.path().join("nope.img"), DiskRole::Data, false)];
    let err = rt.launch(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.img"), "{err}");
}

#[test]
fn io_stats_count_the_guests_disk_writes() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data-tree");
    fs::create_dir(&tree).unwrap();
    let data = work.path().join("data.ext4");
    build_ext4_from_dir(&tree, &data, 32).unwrap();
    let rt = QemuRuntime::new(work.path().join("state")).unwrap();

    // No disks: an empty list (QMP answers before the guest is up).
    let _n = launch_cfg(&rt, &launch_config("nodisk", None));
    let none = rt.io_stats("nodisk").unwrap();
    assert!(none.disks.is_empty() && none.metrics.is_empty(), "{none:?}");
    rt.stop("nodisk", Duration::ZERO).unwrap();

    let mut cfg = launch_config(
        "io",
        sh("dd if=/dev/zero of=/mnt/0/f bs=1M count=4 conv=fsync && echo dd-done; sleep 600"),
    );
    cfg.disks = vec![disk(&data, DiskRole::Data, false)];
    let _g = launch_cfg(&rt, &cfg);
    let before = rt.io_stats("io").unwrap();
    assert_eq!(before.disks.len(), 1, "{before:?}");
    assert_eq!(before.disks[0].device, "d0");
    wait_for("dd", Duration::from_secs(60), &rt, "io", || {
        console_text(&rt, "io")
            .lines()
            .any(|l| l.trim_end() == "dd-done")
    });
    let after = rt.io_stats("io").unwrap();
    let d = &after.disks[0];
    eprintln!("io_stats after dd: {d:?}");
    assert!(d.write_bytes >= 4 << 20, "{d:?}");
    assert!(
        d.write_ops > 0 && d.read_ops > 0 && d.read_bytes > 0,
        "mount reads: {d:?}"
    );

    // Paused: QMP still answers, the counters stand still.
    rt.pause("io").unwrap();
    let paused = rt.io_stats("io").unwrap();
    assert_eq!(
        paused.disks[0].write_bytes,
        rt.io_stats("io").unwrap().disks[0].write_bytes
    );
    rt.resume("io").unwrap();

    // QMP takes one client at a time: while another holds it, a prompt error, not a hang.
    let holder =
        std::os::unix::net::UnixStream::connect(work.path().join("state/io/qmp.sock")).unwrap();
    let started = std::time::Instant::now();
    let err = rt.io_stats("io").unwrap_err();
    eprintln!(
        "io_stats while QMP is busy: {err} ({:?})",
        started.elapsed()
    );
    assert!(matches!(err, firefleet_vmm::VmmError::Qmp { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(holder);
    let again = rt.io_stats("io").unwrap();
    assert!(again.disks[0].write_bytes >= d.write_bytes);

    // Stopped: a clear error at once.
    rt.stop("io", Duration::ZERO).unwrap();
    let started = std::time::Instant::now();
    let err = rt.io_stats("io").unwrap_err();
    eprintln!(
        "io_stats of a stopped VM: {err}: {:?}",
        std::error::Error::source(&err)
    );
    assert!(matches!(err, firefleet_vmm::VmmError::Qmp { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        rt.io_stats("never"),
        Err(firefleet_vmm::VmmError::NotFound(_))
    ));
}
