//! End to end: disks through the CLI, the server and a (sandboxed, when root) agent with real
//! QEMU guests: a disk image built from a directory, a root disk the workload runs in with its
//! own copy-on-write layer (the shared image stays unchanged), a read-only root, blank data
//! disks, block I/O counters in `vm stats` and `/metrics`, and the per-VM disk files removed
//! with the VM. Also: a runtime no node offers leaves the VM pending with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firefleet_testkit::{cluster::Cluster, image_dir};

const BOOT: Duration = Duration::from_secs(120);

/// A root filesystem tree: busybox with a few applets, /hello.txt, mount points.
fn rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "sync", "dd", "sleep", "test"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("hello.txt"), "hello from the disk image\n").unwrap();
}

/// Removes the test's disk image from the shared store, also when the test fails.
struct DiskImageGuard(PathBuf);

impl Drop for DiskImageGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sha256(path: &Path) -> String {
    firefleet_vmm::image::sha256_file(path).unwrap()
}

#[test]
fn disks_from_images_and_blank_disks_through_the_api() {
    let mut c = Cluster::start();
    c.start_agent("node-1", &[], 2);
    c.wait_nodes_ready(1);

    // A disk image from a directory.
    let tree = c.path("rootfs");
    rootfs(&tree);
    let name = format!("e2e-root-{}", std::process::id());
    let m = c.json(&[
        "image",
        "build-disk",
        "--name",
        &name,
        "--from",
        tree.to_str().unwrap(),
    ]);
    let digest = m["digest"].as_str().unwrap().to_owned();
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let base = image_dir().join("disks").join(&hex).join("disk.ext4");
    let _guard = DiskImageGuard(image_dir().join("disks").join(&hex));
    assert_eq!(sha256(&base), hex);
    let listed = c.json(&["image", "ls"]);
    assert!(listed["disks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["digest"] == digest.as_str()));

    // Writable root (its own layer over the image) plus a blank data disk.
    let root_disk = format!("image={name},root");
    c.ok(
        &[
            "vm",
            "run",
            "--name",
            "rw",
            "--disk",
            &root_disk,
            "--disk",
            "size=16",
            "--cmd",
            "cat /hello.txt; echo changed > /hello.txt; cat /hello.txt; echo kept > /mnt/1/f; cat /mnt/1/f; sync",
        ],
    );
    let vm = c.wait_phase("rw", "stopped", BOOT);
    assert_eq!(vm["status"]["exit_code"], 0, "{vm}");
    let out = c.console("rw");
    for line in ["hello from the disk image", "changed", "kept"] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    assert_eq!(
        vm["spec"]["disks"][0]["image"], digest,
        "the CLI resolved the name to the digest"
    );
    // The shared image is untouched: the write went to the VM's own layer.
    assert_eq!(sha256(&base), hex, "the shared disk image changed");

    // Read-only root: writes are refused, reads work.
    let ro_disk = format!("image={name},root,ro");
    c.ok(&[
        "vm",
        "run",
        "--name",
        "ro",
        "--disk",
        &ro_disk,
        "--cmd",
        "cat /hello.txt; if echo x > /hello.txt; then echo WROTE; else echo REFUSED; fi",
    ]);
    c.wait_phase("ro", "stopped", BOOT);
    let out = c.console("ro");
    assert!(
        out.contains("hello from the disk image") && out.contains("REFUSED"),
        "{out}"
    );
    assert!(!out.contains("WROTE"), "{out}");

    // Block I/O counters: a guest writing 4 MiB to a data disk shows up in stats and /metrics.
    c.ok(&[
        "vm",
        "run",
        "--name",
        "io",
        "--disk",
        "size=32",
        "--cmd",
        "dd if=/dev/zero of=/mnt/0/z bs=1M count=4 conv=fsync && echo WRITTEN; sleep 600",
    ]);
    c.wait_phase("io", "running", BOOT);
    c.wait(Duration::from_secs(60), "the guest wrote", || {
        c.console("io").contains("WRITTEN")
    });
    c.wait(Duration::from_secs(60), "disk counters in stats", || {
        let out = c.cli(&["vm", "stats", "io", "--output", "json"]);
        if !out.status.success() {
            return false;
        }
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        s["host"]["disks"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["write_bytes"].as_u64().unwrap_or(0) >= 4 << 20)
        })
    });
    let metrics = c.metrics();
    assert!(
        metrics.contains("firefleet_vm_disk_write_bytes_total{vm="),
        "{metrics}"
    );

    // Deleting the VMs removes their disk files.
    let disks_dir = c.path("agent-node-1").join("disks");
    assert!(disks_dir.join(vm_id(&c, "io")).is_dir());
    for vm in ["rw", "ro", "io"] {
        c.ok(&["vm", "rm", vm, "--wait"]);
    }
    let left: Vec<_> = fs::read_dir(&disks_dir)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "disk files left: {left:?}");
    assert_eq!(sha256(&base), hex);
}

fn vm_id(c: &Cluster, name: &str) -> String {
    c.vm(name)["id"].as_str().unwrap().to_owned()
}

#[test]
fn bad_disks_and_unoffered_runtimes_are_refused_with_the_reason() {
    let mut c = Cluster::start();
    c.start_agent("node-1", &[], 2);
    c.wait_nodes_ready(1);

    // Resolved on the client: an unknown disk image names the flag.
    let out = c.cli(&["vm", "run", "--name", "x", "--disk", "image=no-such-disk"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-disk"), "{err}");
    let out = c.cli(&["vm", "run", "--name", "x", "--disk", "size=lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("size"));

    // Checked by the server: the error names the field.
    let out = c.cli(&["vm", "run", "--name", "x", "--disk", "size=0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disks[0].size_mib"), "{err}");
    let out = c.cli(&["vm", "run", "--name", "x", "--runtime", "kvmtool"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runtime"));

    // A runtime no node offers: pending, and the reason says which.
    c.ok(&["vm", "run", "--name", "fc", "--runtime", "firecracker"]);
    c.wait(Duration::from_secs(20), "the unschedulable reason", || {
        let vm = c.vm("fc");
        vm["status"]["phase"] == "pending"
            && vm["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("firecracker"))
    });
    assert!(c.vmm_pids().is_empty());
}
