//! `scripts/setup.sh --verify`: every command the project runs is checked after the install, and
//! a missing one stops the set-up with its name (a fresh machine once lost `qemu-img` when apt
//! removed a preinstalled newer `qemu-utils` to satisfy `qemu-system-x86`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{os::unix::fs::symlink, path::Path, process::Command};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// A directory of links to every program on this machine's PATH but those in `without`.
fn path_without(dir: &Path, without: &[&str]) {
    for p in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(entries) = std::fs::read_dir(p) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if without.iter().any(|w| name == *w) || dir.join(&name).exists() {
                continue;
            }
            let _ = symlink(e.path(), dir.join(&name));
        }
    }
}

fn verify(path: &Path, busybox: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(repo().join("scripts/setup.sh"))
        .arg("--verify")
        .env("PATH", path);
    match busybox {
        Some(b) => cmd.env("FIREFLEET_BUSYBOX", b),
        None => cmd.env_remove("FIREFLEET_BUSYBOX"),
    };
    cmd.output().unwrap()
}

#[test]
fn verification_passes_on_a_machine_that_has_everything() {
    let dir = tempfile_dir("all");
    path_without(&dir, &[]);
    let out = verify(&dir, None);
    assert!(
        out.status.success(),
        "scripts/setup.sh --verify on this machine (run scripts/setup.sh first): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_qemu_img_stops_the_set_up_naming_it() {
    let dir = tempfile_dir("no-qemu-img");
    path_without(&dir, &["qemu-img"]);
    let out = verify(&dir, None);
    assert!(
        !out.status.success(),
        "verification passed without qemu-img"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing command: qemu-img"), "{err}");
}

#[test]
fn a_missing_busybox_stops_the_set_up_naming_it() {
    let dir = tempfile_dir("no-busybox");
    path_without(&dir, &[]);
    let out = verify(&dir, Some("/nonexistent/busybox"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busybox"), "{err}");
}

/// A fresh directory under the target dir's tmp (no tempfile dependency in xtask).
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("setup-verify-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
