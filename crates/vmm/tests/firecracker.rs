//! End-to-end tests of the Firecracker backend with the real binary.
//!
//! They run only when `FIRECRACKER_BIN` points to a `firecracker` binary (and `JAILER_BIN` to
//! a `jailer` for the jailer test); otherwise each prints why it is skipped and passes.
//!
//! Everything up to the guest is asserted everywhere: the process is up, the API took the
//! configuration, `InstanceStart` was accepted, pause/resume show in describe-instance,
//! snapshot files are published atomically, a snapshot loads into a new process, and stop
//! leaves no process. The guest-side checks (ready line, exit status, a counter that continues
//! after restore) need a host where a stock guest kernel boots under Firecracker: they run when
//! `FIREFLEET_FC_GUEST_BOOTS=1` (and then must pass), or when the guest's ready line shows up
//! within a short probe; otherwise the test prints exactly why they were skipped. (On the
//! nested `kvm_pvm` hosts of ../shared/RUNTIME-NOTES.md the guest never reaches init.)
//!
//! The image is `$FIREFLEET_TEST_IMAGE_DIR` (a directory with `vmlinux` and `initrd.img`), else
//! built like tests/qemu_vm.rs does (cached .debs, static guest binary).

// Test helpers outside #[test] fns: clippy.toml's allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use firefleet_testkit::vmm::serial;
use firefleet_vmm::image::Image;
use firefleet_vmm::qemu::process::ProcessId;
use firefleet_vmm::{Accel, FirecrackerRuntime, JailerConfig, LaunchConfig, Runtime};

fn firecracker_bin() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("FIRECRACKER_BIN")?);
    assert!(p.is_file(), "FIRECRACKER_BIN={} is not a file", p.display());
    Some(p)
}

macro_rules! require_firecracker {
    () => {
        match firecracker_bin() {
            Some(p) => p,
            None => {
                eprintln!("skipped: FIRECRACKER_BIN is not set");
                return;
            }
        }
    };
}

fn guest_must_boot() -> bool {
    std::env::var("FIREFLEET_FC_GUEST_BOOTS").is_ok_and(|v| v == "1")
}

struct Fixture {
    image: Image,
}

/// `$FIREFLEET_TEST_IMAGE_DIR`'s image, else the test kit's (built once per test process).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        if let Some(dir) = std::env::var_os("FIREFLEET_TEST_IMAGE_DIR") {
            let dir = PathBuf::from(dir);
            return Fixture {
                image: Image {
                    digest: "sha256:test".into(),
                    kernel: dir.join("vmlinuz"),
                    initrd: dir.join("initrd.img"),
                    vmlinux: Some(dir.join("vmlinux")),
                },
            };
        }
        Fixture {
            image: firefleet_testkit::vmm::fixture().image.clone(),
        }
    })
}

/// Kills the VM on drop, whatever happened in the test.
type VmGuard = firefleet_testkit::vmm::VmGuard<FirecrackerRuntime>;

fn cfg(id: &str, cmd: Option<Vec<String>>) -> LaunchConfig {
    LaunchConfig {
        id: id.into(),
        vcpus: 1,
        memory_mib: 256,
        image: fixture().image.clone(),
        cmd,
        accel: Accel::Kvm,
        net: None,
        disks: Vec::new(),
    }
}

fn launch(rt: &FirecrackerRuntime, id: &str, cmd: Option<Vec<String>>) -> (VmGuard, ProcessId) {
    let guard = VmGuard {
        rt: rt.clone(),
        id: id.into(),
    };
    let started = Instant::now();
    let info = rt.launch(&cfg(id, cmd)).unwrap();
    eprintln!("{id}: launched pid {} in {:?}", info.pid, started.elapsed());
    assert!(!info.already_running);
    let p = ProcessId {
        pid: info.pid,
        start_time: info.start_time,
    };
    assert!(p.is_alive());
    (guard, p)
}

fn console_text(rt: &FirecrackerRuntime, id: &str) -> String {
    let chunk = rt.console(id, 0, 1 << 20).unwrap();
    String::from_utf8_lossy(&chunk.data).to_string()
}

fn fc_log_problems(root: &Path, id: &str) -> String {
    let log = std::fs::read_to_string(root.join(id).join("firecracker.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("rror"))
        .collect();
    lines[lines.len().saturating_sub(5)..].join("\n  ")
}

/// Whether the guest reached its ready line: required when FIREFLEET_FC_GUEST_BOOTS=1,
/// otherwise probed for a few seconds and, if absent, the reason is printed.
fn guest_boots(rt: &FirecrackerRuntime, root: &Path, id: &str, what: &str) -> bool {
    let must = guest_must_boot();
    let deadline = Instant::now() + Duration::from_secs(if must { 30 } else { 6 });
    while Instant::now() < deadline {
        let o = rt.observe(id).unwrap();
        if o.guest_ready {
            return true;
        }
        if !o.running {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = rt.observe(id).unwrap();
    let console = console_text(rt, id);
    let guest_lines = console
        .lines()
        .filter(|l| !l.contains("[") || !l.contains(":main]") && !l.contains(":fc_api]"))
        .count();
    assert!(
        !must,
        "FIREFLEET_FC_GUEST_BOOTS=1 but no ready line: {o:?}\nconsole:\n{console}"
    );
    eprintln!(
        "skipped guest-side checks of {what}: no `firefleet-guest ready` within the probe \
         (VMM running={}, describe state={}, {} guest console lines; firecracker.log:\n  {}). \
         A stock guest kernel does not boot under this host's nested KVM (kvm_pvm, see \
         shared/RUNTIME-NOTES.md); set FIREFLEET_FC_GUEST_BOOTS=1 on a host where it does.",
        o.running,
        rt.describe(id)
            .map(|v| v["state"].to_string())
            .unwrap_or_else(|e| e.to_string()),
        guest_lines,
        fc_log_problems(root, id),
    );
    false
}

fn assert_gone(p: ProcessId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!p.exists(), "pid {} still exists (zombie or alive)", p.pid);
}

#[test]
fn boots_configures_and_stops() {
    let bin = require_firecracker!();
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(root.path().to_path_buf(), bin, None).unwrap();
    let (_g, p) = launch(&rt, "idle", None);
    let dir = root.path().join("idle");
    for f in [
        "config.json",
        "pid",
        "api.sock",
        "vsock.sock",
        "vsock.sock_1024",
        "console.log",
        "firecracker.log",
        "metrics.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing in the state dir");
    }
    let d = rt.describe("idle").unwrap();
    eprintln!("describe: {d}");
    assert_eq!(d["state"], "Running", "InstanceStart accepted: {d}");
    assert_eq!(d["id"], "idle");
    let vm = rt.api("idle").get("/vm/config").unwrap();
    assert_eq!(vm["machine-config"]["vcpu_count"], 1, "{vm}");
    assert_eq!(vm["machine-config"]["mem_size_mib"], 256, "{vm}");
    let boot_args = vm["boot-source"]["boot_args"].as_str().unwrap();
    assert!(
        boot_args.contains("console=ttyS0") && boot_args.contains("firefleet.config="),
        "{boot_args}"
    );
    assert_eq!(
        vm["boot-source"]["kernel_image_path"],
        fixture()
            .image
            .vmlinux
            .as_ref()
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
    assert_eq!(vm["vsock"]["guest_cid"], 3, "{vm}");
    assert_eq!(vm["vsock"]["uds_path"], "vsock.sock", "{vm}");
    let m = rt.metrics("idle").unwrap();
    assert!(m.get("utc_timestamp_ms").is_some(), "{m}");
    assert!(m["api_server"].is_object(), "{m}");
    // A second launch is refused as a pre-boot request by nobody: it finds the live process.
    let again = rt.launch(&cfg("idle", None)).unwrap();
    assert!(again.already_running && again.pid == p.pid);
    // An API refusal carries Firecracker's fault_message.
    let err = rt
        .api("idle")
        .put(
            "/machine-config",
            &serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256}),
        )
        .unwrap_err();
    eprintln!("post-boot PUT /machine-config: {err}");
    assert!(err.fault_message().is_some_and(|m| !m.is_empty()), "{err}");

    let booted = guest_boots(&rt, root.path(), "idle", "boot/stop");
    let started = Instant::now();
    rt.stop("idle", Duration::from_secs(if booted { 10 } else { 2 }))
        .unwrap();
    eprintln!("stop took {:?}", started.elapsed());
    assert_gone(p);
    let o = rt.observe("idle").unwrap();
    assert!(!o.running, "{o:?}");
    assert!(o.vmm_exit.is_some(), "reaped and recorded: {o:?}");
    if booted {
        let console = console_text(&rt, "idle");
        assert!(
            console.contains("firefleet-guest powering off"),
            "{console}"
        );
        assert!(o.powered_off, "{o:?}");
    }
    rt.stop("idle", Duration::from_secs(1)).unwrap(); // idempotent
    rt.remove("idle").unwrap();
    assert!(rt.list().unwrap().is_empty());
}

#[test]
fn runs_a_command_and_reports_its_exit_status() {
    let bin = require_firecracker!();
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(root.path().to_path_buf(), bin, None).unwrap();
    let cmd = vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()];
    let (_g, p) = launch(&rt, "cmd", Some(cmd));
    assert_eq!(rt.describe("cmd").unwrap()["state"], "Running");
    if guest_boots(&rt, root.path(), "cmd", "the command's exit status") {
        let deadline = Instant::now() + Duration::from_secs(30);
        while rt.observe("cmd").unwrap().guest_exit_code.is_none() {
            assert!(Instant::now() < deadline, "{}", console_text(&rt, "cmd"));
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = rt.observe("cmd").unwrap();
        assert_eq!(o.guest_exit_code, Some(3), "{o:?}");
        let console = console_text(&rt, "cmd");
        assert!(console.lines().any(|l| l.trim_end() == "hi"), "{console}");
    }
    rt.stop("cmd", Duration::from_secs(2)).unwrap();
    assert_gone(p);
}

#[test]
fn a_new_runtime_re_adopts_a_running_vm() {
    let bin = require_firecracker!();
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(root.path().to_path_buf(), bin.clone(), None).unwrap();
    let (_g, p) = launch(&rt, "adopt", None);
    drop(rt);

    let rt2 = FirecrackerRuntime::new(root.path().to_path_buf(), bin, None).unwrap();
    let _g2 = VmGuard {
        rt: rt2.clone(),
        id: "adopt".into(),
    };
    assert_eq!(rt2.list().unwrap(), vec!["adopt".to_string()]);
    let o = rt2.observe("adopt").unwrap();
    assert!(o.running && o.pid == Some(p.pid) && !o.paused, "{o:?}");
    assert_eq!(rt2.describe("adopt").unwrap()["state"], "Running");
    let again = rt2.launch(&cfg("adopt", None)).unwrap();
    assert!(again.already_running && again.pid == p.pid);
    // The new runtime listens for the guest channel again.
    assert!(root.path().join("adopt/vsock.sock_1024").exists());
    if guest_boots(&rt2, root.path(), "adopt", "re-adoption") {
        assert!(rt2.observe("adopt").unwrap().guest_ready);
    }
    rt2.stop("adopt", Duration::from_secs(2)).unwrap();
    // Not our child any more (rt2 did not spawn it) but the test process still reaps it.
    assert_gone(p);
    assert!(!rt2.observe("adopt").unwrap().running);
    rt2.remove("adopt").unwrap();
    assert!(!root.path().join("adopt").exists());
}

#[test]
fn pause_and_resume() {
    let bin = require_firecracker!();
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(root.path().to_path_buf(), bin, None).unwrap();
    let (_g, p) = launch(&rt, "pause", None);
    let booted = guest_boots(&rt, root.path(), "pause", "pause/resume (guest time)");
    rt.pause("pause").unwrap();
    assert_eq!(rt.describe("pause").unwrap()["state"], "Paused");
    assert!(rt.observe("pause").unwrap().paused);
    rt.pause("pause").unwrap(); // idempotent
    if booted {
        let before = console_text(&rt, "pause").len();
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            console_text(&rt, "pause").len(),
            before,
            "paused guest is silent"
        );
    }
    rt.resume("pause").unwrap();
    assert_eq!(rt.describe("pause").unwrap()["state"], "Running");
    assert!(!rt.observe("pause").unwrap().paused);
    rt.resume("pause").unwrap(); // idempotent
    rt.stop("pause", Duration::from_secs(2)).unwrap();
    assert_gone(p);
    assert!(rt.pause("pause").is_err(), "no process to pause");
}

fn counter_values(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count=")?.parse().ok())
        .collect()
}

#[test]
fn snapshot_and_restore_into_a_new_process() {
    let bin = require_firecracker!();
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(root.path().to_path_buf(), bin, None).unwrap();
    let script = "i=0; while true; do echo count=$i; i=$((i+1)); sleep 0.2; done";
    let cmd = vec!["sh".into(), "-c".into(), script.into()];
    let (_g, p) = launch(&rt, "snap", Some(cmd.clone()));
    let booted = guest_boots(&rt, root.path(), "snap", "the counter across restore");
    if booted {
        std::thread::sleep(Duration::from_secs(1));
    }
    let at_snapshot = counter_values(&console_text(&rt, "snap"));

    let info = rt.snapshot("snap", "s1", false).unwrap();
    eprintln!("snapshot: {info:?}");
    let dir = root.path().join("snap/snapshots/s1");
    assert_eq!(info.dir, dir);
    assert_eq!(
        std::fs::metadata(dir.join("memory")).unwrap().len(),
        256 << 20,
        "full memory file"
    );
    assert!(std::fs::metadata(dir.join("vmstate")).unwrap().len() > 0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["backend"], "firecracker");
    assert_eq!(manifest["info"]["name"], "s1");
    assert!(info.bytes >= 256 << 20);
    let leftovers: Vec<String> = std::fs::read_dir(root.path().join("snap/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["s1".to_string()], "published atomically");
    assert_eq!(
        rt.describe("snap").unwrap()["state"],
        "Running",
        "runs on after the snapshot"
    );
    assert!(
        rt.snapshot("snap", "s1", false).is_err(),
        "names are unique"
    );
    // leave_paused keeps it paused.
    rt.snapshot("snap", "s2", true).unwrap();
    assert!(rt.observe("snap").unwrap().paused);

    rt.stop("snap", Duration::ZERO).unwrap();
    assert_gone(p);

    // A directory without a manifest is refused.
    let partial = root.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(dir.join("vmstate"), partial.join("vmstate")).unwrap();
    let e = rt
        .restore(&cfg("snap", Some(cmd.clone())), &partial)
        .unwrap_err();
    assert!(e.to_string().contains("not usable"), "{e}");

    // Restore into a fresh process, in another runtime root (as if on another node).
    let root2 = tempfile::tempdir().unwrap();
    let rt2 =
        FirecrackerRuntime::new(root2.path().to_path_buf(), rt.firecracker().into(), None).unwrap();
    let _g2 = VmGuard {
        rt: rt2.clone(),
        id: "snap".into(),
    };
    let started = Instant::now();
    let restored = rt2.restore(&cfg("snap", Some(cmd)), &dir).unwrap();
    eprintln!(
        "restore to running took {:?} (pid {})",
        started.elapsed(),
        restored.pid
    );
    assert_ne!(restored.pid, p.pid);
    let d = rt2.describe("snap").unwrap();
    assert_eq!(
        d["state"], "Running",
        "snapshot load accepted, resumed: {d}"
    );
    assert!(rt2.observe("snap").unwrap().running);
    assert!(
        root2.path().join("snap/vsock.sock").exists(),
        "vsock overridden into the new dir"
    );
    if booted {
        let last = *at_snapshot.last().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let after = counter_values(&console_text(&rt2, "snap"));
            if after.iter().any(|&c| c > last + 1) {
                // The counter continues from where it was, not from 0.
                assert!(!after.contains(&0), "restarted: {after:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "counter did not continue: {after:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        assert!(at_snapshot.is_empty());
    }
    let rp = ProcessId {
        pid: restored.pid,
        start_time: restored.start_time,
    };
    rt2.stop("snap", Duration::from_secs(1)).unwrap();
    assert_gone(rp);
}

#[test]
fn jailed_firecracker_boots_and_stops() {
    let bin = require_firecracker!();
    let Some(jailer) = std::env::var_os("JAILER_BIN").map(PathBuf::from) else {
        eprintln!("skipped: JAILER_BIN is not set");
        return;
    };
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let chroot = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(
        root.path().to_path_buf(),
        bin,
        Some(JailerConfig {
            jailer_bin: jailer,
            uid: 65534,
            gid: 65534,
            chroot_base_dir: chroot.path().to_path_buf(),
        }),
    )
    .unwrap();
    let (_g, p) = launch(&rt, "jailed", None);
    let jail = rt.run_dir("jailed");
    assert!(jail.join("api.sock").exists() && jail.join("vmlinux").is_file());
    assert_eq!(rt.describe("jailed").unwrap()["state"], "Running");
    // A uid of its own, from the host-wide range (as root), else the configured one.
    let uid_of = |pid: i32| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .unwrap()
    };
    let want = firefleet_vmm::sandbox::claim_uid(&rt.vm_dir("jailed")).unwrap_or(65534);
    assert_eq!(uid_of(p.pid), want, "runs as the VM's jail uid");
    let (_g2, p2) = launch(&rt, "jailed2", None);
    if nix::unistd::geteuid().is_root() {
        assert!(want >= firefleet_vmm::sandbox::UID_BASE);
        assert_ne!(uid_of(p2.pid), want, "two jailed VMs share a uid");
    }
    rt.stop("jailed2", Duration::from_secs(1)).unwrap();
    assert_gone(p2);
    // The metrics file in the jail (made afresh for this process, owned by the jail uid).
    let io = rt.io_stats("jailed").unwrap();
    assert!(
        io.metrics.get("put_api_requests.actions_count") >= Some(&2),
        "{:?}",
        io.metrics
    );
    rt.pause("jailed").unwrap();
    assert!(rt.observe("jailed").unwrap().paused);
    rt.stop("jailed", Duration::from_secs(1)).unwrap();
    assert_gone(p);
    rt.remove("jailed").unwrap();
    assert!(!jail.exists());
}

/// Counters that only grow, from one `io_stats` to the next (values such as latencies may
/// go down).
fn counter(stats: &firefleet_vmm::VmmIoStats, key: &str) -> u64 {
    *stats
        .metrics
        .get(key)
        .unwrap_or_else(|| panic!("no metric {key}: {:?}", stats.metrics.keys()))
}

#[test]
fn io_stats_and_the_guest_channel() {
    let bin = require_firecracker!();
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = FirecrackerRuntime::new(root.path().to_path_buf(), bin, None).unwrap();
    let tree = root.path().join("data-tree");
    std::fs::create_dir(&tree).unwrap();
    let data = root.path().join("data.ext4");
    firefleet_vmm::disk::build_ext4_from_dir(&tree, &data, 16).unwrap();
    let mut c = cfg("io", None);
    c.disks = vec![firefleet_vmm::DiskConfig {
        path: data,
        role: firefleet_vmm::DiskRole::Data,
        read_only: false,
        vmm_path: None,
        vmm_backing: None,
    }];
    let _g = VmGuard {
        rt: rt.clone(),
        id: "io".into(),
    };
    let info = rt.launch(&c).unwrap();
    let p = ProcessId {
        pid: info.pid,
        start_time: info.start_time,
    };

    let first = rt.io_stats("io").unwrap();
    eprintln!(
        "io_stats: disks {:?}, {} metrics",
        first.disks,
        first.metrics.len()
    );
    assert!(first.metrics.len() > 50, "{:?}", first.metrics);
    assert!(!first.metrics.contains_key("utc_timestamp_ms"));
    let devices: Vec<&str> = first.disks.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(devices, ["disk0"], "{:?}", first.disks);
    // Every flush is a PUT /actions and Firecracker reports each flush's increase only: the
    // sums keep counting across flushes.
    let actions = counter(&first, "put_api_requests.actions_count");
    for _ in 0..3 {
        rt.io_stats("io").unwrap();
    }
    let later = rt.io_stats("io").unwrap();
    assert!(
        counter(&later, "put_api_requests.actions_count") >= actions + 4,
        "{actions} then {}",
        counter(&later, "put_api_requests.actions_count")
    );
    for (k, v) in &first.metrics {
        if !firefleet_vmm::stats::fc_metric_is_value(k) {
            assert!(
                later.metrics[k] >= *v,
                "{k} went down: {v} -> {}",
                later.metrics[k]
            );
        }
    }
    assert_eq!(
        counter(&later, "block_disk0.read_bytes"),
        later.disks[0].read_bytes
    );

    let booted = guest_boots(&rt, root.path(), "io", "exec, telemetry and disk writes");
    if booted {
        let out = rt
            .exec(
                "io",
                &["sh".into(), "-c".into(), "cat; echo err >&2; exit 5".into()],
                Some(b"over vsock\n"),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(
            (out.exit_code, &out.stdout[..], &out.stderr[..]),
            (5, &b"over vsock\n"[..], &b"err\n"[..]),
            "{out:?}"
        );
        let t = rt.telemetry("io").unwrap();
        assert!(t.processes.iter().any(|p| p.pid == 1), "{t:?}");
        let before = rt.io_stats("io").unwrap().disks[0].write_bytes;
        let dd = rt
            .exec(
                "io",
                &[
                    "sh".into(),
                    "-c".into(),
                    "dd if=/dev/zero of=/mnt/0/f bs=1M count=4 conv=fsync".into(),
                ],
                None,
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(dd.exit_code, 0, "{dd:?}");
        let after = rt.io_stats("io").unwrap().disks[0].write_bytes;
        assert!(after - before >= 4 << 20, "{before} -> {after}");
        let st = rt.guest_channel("io");
        assert!(st.connected && st.hello, "{st:?}");
    } else {
        // No guest on the other end: a prompt channel error, not a hang.
        for op in ["exec", "telemetry"] {
            let started = Instant::now();
            let err = if op == "exec" {
                rt.exec("io", &["true".into()], None, Duration::from_secs(30))
                    .map(|_| ())
                    .unwrap_err()
            } else {
                rt.telemetry("io").map(|_| ()).unwrap_err()
            };
            eprintln!("{op} without a guest: {err} ({:?})", started.elapsed());
            assert!(
                matches!(err, firefleet_vmm::VmmError::Channel { .. }),
                "{err}"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "{op}");
        }
    }

    // Paused: the VMM still answers.
    rt.pause("io").unwrap();
    let paused = rt.io_stats("io").unwrap();
    assert!(
        counter(&paused, "put_api_requests.actions_count")
            > counter(&later, "put_api_requests.actions_count")
    );
    rt.resume("io").unwrap();

    // Stopped: a clear error at once.
    rt.stop("io", Duration::from_secs(if booted { 10 } else { 1 }))
        .unwrap();
    assert_gone(p);
    let started = Instant::now();
    let err = rt.io_stats("io").unwrap_err();
    eprintln!("io_stats of a stopped VM: {err}");
    assert!(err.to_string().contains("io"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = rt
        .exec("io", &["true".into()], None, Duration::from_secs(1))
        .unwrap_err();
    assert!(
        matches!(err, firefleet_vmm::VmmError::Channel { .. }),
        "{err}"
    );
    rt.remove("io").unwrap();
    assert!(matches!(
        rt.io_stats("io"),
        Err(firefleet_vmm::VmmError::NotFound(_))
    ));
    assert!(matches!(
        rt.exec("io", &["true".into()], None, Duration::from_secs(1)),
        Err(firefleet_vmm::VmmError::NotFound(_))
    ));
}
