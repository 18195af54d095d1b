use super::*;

fn manifest(files: Vec<SnapshotFile>) -> SnapshotManifest {
    SnapshotManifest {
        format: MANIFEST_FORMAT,
        name: "s".into(),
        vm_id: "vm".into(),
        config: LaunchConfig::sample(),
        kernel_cmdline: "console=ttyS0".into(),
        qemu_version: "QEMU 7.2".into(),
        created_unix_ms: 1,
        pause_ms: 1,
        files,
        disks: Vec::new(),
    }
}

#[test]
fn verification_refuses_incomplete_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("s");
    fs::create_dir(&snap).unwrap();
    fs::write(snap.join(VMSTATE_FILE), [0u8; 10]).unwrap();
    let err = verify_snapshot(&snap).unwrap_err().to_string();
    assert!(err.contains("no manifest.json"), "{err}");

    let write = |m: &SnapshotManifest| {
        fs::write(snap.join(MANIFEST_FILE), serde_json::to_vec(m).unwrap()).unwrap()
    };
    write(&manifest(vec![SnapshotFile {
        name: VMSTATE_FILE.into(),
        size: 11,
    }]));
    let err = verify_snapshot(&snap).unwrap_err().to_string();
    assert!(err.contains("has 10 bytes, the manifest says 11"), "{err}");

    let good = manifest(vec![SnapshotFile {
        name: VMSTATE_FILE.into(),
        size: 10,
    }]);
    write(&good);
    assert_eq!(verify_snapshot(&snap).unwrap(), good);

    fs::write(snap.join(MANIFEST_FILE), b"{\"format\":1").unwrap();
    let err = verify_snapshot(&snap).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");

    let dot = tmp.path().join(".tmp-s-1");
    fs::create_dir(&dot).unwrap();
    let err = verify_snapshot(&dot).unwrap_err().to_string();
    assert!(err.contains("unfinished snapshot"), "{err}");
}

#[test]
fn stale_temporary_directories_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join(SNAPSHOTS_DIR);
    let me = std::process::id();
    let dead = format!("{TMP_PREFIX}a-b-{}", i32::MAX);
    let mine_other = format!("{TMP_PREFIX}other-{me}");
    let mine_current = format!("{TMP_PREFIX}cur-{me}");
    for d in [&dead, &mine_other, &mine_current, &"done".to_string()] {
        fs::create_dir_all(snaps.join(d)).unwrap();
    }
    remove_stale_tmp(tmp.path(), Some("cur"));
    assert!(!snaps.join(&dead).exists());
    assert!(!snaps.join(&mine_current).exists());
    assert!(snaps.join(&mine_other).exists(), "maybe in progress");
    assert!(snaps.join("done").exists());
}

/// A snapshot directory with a good manifest listing `vmstate.bin` (10 bytes).
fn good_snapshot(root: &Path) -> PathBuf {
    let snap = root.join("s");
    fs::create_dir(&snap).unwrap();
    fs::write(snap.join(VMSTATE_FILE), [0u8; 10]).unwrap();
    let m = manifest(vec![SnapshotFile {
        name: VMSTATE_FILE.into(),
        size: 10,
    }]);
    fs::write(snap.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    verify_snapshot(&snap).unwrap();
    snap
}

#[test]
fn a_state_file_that_is_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = good_snapshot(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    fs::write(&elsewhere, [1u8; 10]).unwrap();
    fs::remove_file(snap.join(VMSTATE_FILE)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, snap.join(VMSTATE_FILE)).unwrap();
    let err = verify_snapshot(&snap).unwrap_err().to_string();
    assert!(err.contains("vmstate.bin: a symbolic link"), "{err}");
}

#[test]
fn a_manifest_listing_names_outside_the_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = good_snapshot(tmp.path());
    let up = "../".repeat(snap.components().count() + 2);
    fs::write(snap.join("authorized_keys"), [0u8; 3]).unwrap();
    for name in [
        format!("{up}etc/passwd"),
        "/etc/passwd".into(),
        "..".into(),
        "authorized_keys".into(),
        "disk-0.vmdk".into(),
    ] {
        let size = fs::metadata(snap.join(&name)).map_or(0, |m| m.len());
        let m = manifest(vec![
            SnapshotFile {
                name: VMSTATE_FILE.into(),
                size: 10,
            },
            SnapshotFile {
                name: name.clone(),
                size,
            },
        ]);
        fs::write(snap.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = verify_snapshot(&snap).unwrap_err().to_string();
        assert!(err.contains("bad file name"), "{name}: {err}");
    }
}

#[test]
fn an_oversized_manifest_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = good_snapshot(tmp.path());
    File::options()
        .write(true)
        .open(snap.join(MANIFEST_FILE))
        .unwrap()
        .set_len(MAX_MANIFEST_BYTES + 1)
        .unwrap();
    let err = verify_snapshot(&snap).unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
}

#[test]
fn snapshot_file_names_are_the_formats() {
    for ok in [
        "manifest.json",
        "vmstate.bin",
        "disk-0.raw",
        "disk-12.qcow2",
    ] {
        assert!(is_snapshot_file(ok), "{ok}");
    }
    for bad in [
        "disk-.raw",
        "disk-123.raw",
        "disk-1.img",
        "../vmstate.bin",
        "memory",
        "",
    ] {
        assert!(!is_snapshot_file(bad), "{bad}");
    }
}

#[test]
fn a_restore_writes_disk_copies_only_to_the_vms_writable_disks() {
    let disk = |path: &str, read_only| crate::DiskConfig {
        path: path.into(),
        role: crate::DiskRole::Data,
        read_only,
        vmm_path: None,
        vmm_backing: None,
    };
    let kept = |index, copy: Option<&str>| SnapshotDisk {
        index,
        source: "/old".into(),
        format: DiskFormat::Raw,
        read_only: copy.is_none(),
        copy: copy.map(str::to_owned),
        backing: None,
    };
    let mut cfg = manifest(Vec::new()).config;
    cfg.disks = vec![disk("/images/shared", true), disk("/d/data", false)];
    let with = |disks| SnapshotManifest {
        disks,
        ..manifest(Vec::new())
    };
    let good = with(vec![kept(0, None), kept(1, Some("disk-1.raw"))]);
    assert_eq!(
        disk_copies(&good, &cfg).unwrap(),
        vec![("disk-1.raw".to_string(), PathBuf::from("/d/data"))]
    );
    // A copy over the shared read-only image, a writable disk left as it is, a count that
    // differs: refused.
    for hostile in [
        vec![kept(0, Some("disk-0.raw")), kept(1, Some("disk-1.raw"))],
        vec![kept(0, None), kept(1, None)],
        vec![kept(0, None)],
    ] {
        assert!(
            disk_copies(&with(hostile.clone()), &cfg).is_err(),
            "{hostile:?}"
        );
    }
}
