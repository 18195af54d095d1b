//! End-to-end tests with a real image and real QEMU (TCG here).
//!
//! The kernel package download is cached in `$FIREFLEET_TEST_CACHE`, else
//! `$CARGO_TARGET_DIR/firefleet-test-cache`, else `<target>/tmp/firefleet-test-cache`
//! (`debs/` holds the verified .deb; it is reused while its SHA-256 matches the archive).
//! The static guest binary is `$FIREFLEET_GUEST_BIN`, else built by
//! `crates/guest/build-static.sh` into `<cache>/guest-target` (a separate target directory, so
//! the nested cargo never waits on the lock of the cargo running these tests).
//! Boots are serialised with a mutex (2 cores); every VM is killed by a guard on drop.

// Test helpers outside #[test] fns: clippy.toml's allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firefleet_guest::proto::{Decoded, LineReader, Message};
use firefleet_testkit::cache_dir;
use firefleet_testkit::vmm::*;
use firefleet_vmm::image::{build_image, BuildOptions, ImageStore};
use firefleet_vmm::{probe_accel, Accel, QemuRuntime, Runtime};

#[test]
fn image_build_is_reproducible_and_checked() {
    let f = fixture();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(store_dir.path()).unwrap();
    let m = build_image(
        &store,
        &BuildOptions {
            name: "again".into(),
            guest_bin: f.guest.clone(),
            work_dir: cache_dir(),
            kernel_package: Some("linux-image-cloud-amd64".into()),
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.digest, f.digest, "same inputs, same digest");
    assert!(
        m.kernel_package.ends_with("-unsigned"),
        "{}",
        m.kernel_package
    );
    assert_eq!(m.kernel_package_sha256.len(), 64);
    assert!(m.modules.contains(&"virtio_console.ko".to_string()));
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let img = store.resolve(&m.digest).unwrap();
    assert!(img.kernel.is_file() && img.initrd.is_file());
    // The uncompressed ELF kernel (for Firecracker) was extracted from the LZ4 bzImage.
    let vmlinux = std::fs::read(img.vmlinux.as_ref().expect("vmlinux extracted")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    assert_eq!(m.vmlinux_size, Some(vmlinux.len() as u64));
    // No temporary leftovers in the store.
    let names: Vec<_> = std::fs::read_dir(store_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        vec![m.digest.trim_start_matches("sha256:").to_string()]
    );

    // A dynamically linked guest is refused with a clear error.
    let err = build_image(
        &store,
        &BuildOptions {
            name: "bad".into(),
            guest_bin: PathBuf::from("/bin/ls"),
            work_dir: cache_dir(),
            kernel_package: None,
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("not statically linked"), "{err}");
}

#[test]
fn boots_to_ready_and_stops_gracefully() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _g = launch(&rt, "idle", None);
    wait_for("ready", Duration::from_secs(30), &rt, "idle", || {
        rt.observe("idle").unwrap().guest_ready
    });
    let o = rt.observe("idle").unwrap();
    assert!(
        o.running && !o.powered_off && o.guest_exit_code.is_none(),
        "{o:?}"
    );

    // The guest channel speaks the protocol: hello, ready, then heartbeats.
    {
        let sock = root.path().join("idle").join("guest.sock");
        let stream = UnixStream::connect(&sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = LineReader::new(stream);
        let mut got = Vec::new();
        while got.len() < 3 {
            match reader.read_message().unwrap() {
                Some(Ok(Decoded::Message(m))) => got.push(m),
                other => panic!("unexpected {other:?} after {got:?}"),
            }
        }
        assert!(
            matches!(&got[0], Message::Hello { version: 1, vm_id, .. } if vm_id == "idle"),
            "{got:?}"
        );
        assert_eq!(got[1], Message::Ready);
        assert!(
            matches!(got[2], Message::Heartbeat { uptime_ms, .. } if uptime_ms > 0),
            "{got:?}"
        );
    }

    let started = Instant::now();
    rt.stop("idle", Duration::from_secs(10)).unwrap();
    let took = started.elapsed();
    let console = console_text(&rt, "idle");
    eprintln!("--- console of idle ---\n{console}---");
    assert!(
        console.contains("firefleet-guest powering off"),
        "{console}"
    );
    assert!(
        !console.contains("loading"),
        "modules load cleanly: {console}"
    );
    assert!(took < Duration::from_secs(8), "graceful stop took {took:?}");
    let o = rt.observe("idle").unwrap();
    assert!(!o.running && o.powered_off, "{o:?}");
    assert_eq!(o.vmm_exit.as_deref(), Some("exit status: 0"), "{o:?}");
    assert!(qemu_pids_for("idle").is_empty());
    rt.stop("idle", Duration::from_secs(1)).unwrap(); // idempotent
    rt.remove("idle").unwrap();
    assert!(rt.list().unwrap().is_empty());
}

#[test]
fn runs_a_command_and_reports_its_exit_status() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let cmd = vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()];
    let _g = launch(&rt, "cmd", Some(cmd));
    wait_for("power off", Duration::from_secs(30), &rt, "cmd", || {
        rt.observe("cmd").unwrap().powered_off
    });
    let o = rt.observe("cmd").unwrap();
    assert_eq!(o.guest_exit_code, Some(3), "{o:?}");
    assert!(o.guest_ready && !o.running, "{o:?}");
    let console = console_text(&rt, "cmd");
    assert!(console.lines().any(|l| l.trim_end() == "hi"), "{console}");
    // Paging through the console gives the same bytes.
    let first = rt.console("cmd", 0, 10).unwrap();
    assert_eq!(first.next_offset, 10);
    let rest = rt.console("cmd", first.next_offset, 1 << 20).unwrap();
    assert_eq!([first.data, rest.data].concat(), console.as_bytes());
    wait_for("reap", Duration::from_secs(5), &rt, "cmd", || {
        qemu_pids_for("cmd").is_empty()
    });
}

#[test]
fn sigterm_to_pid1_stops_the_guest_and_orphans_are_reaped() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let script = "for i in 1 2 3; do (sleep 0 &); done; sleep 1; \
                  echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); \
                  grep -E '^SigBlk' /proc/self/status; kill -TERM 1; exec sleep 100";
    let _g = launch(
        &rt,
        "sigterm",
        Some(vec!["sh".into(), "-c".into(), script.into()]),
    );
    wait_for("power off", Duration::from_secs(30), &rt, "sigterm", || {
        rt.observe("sigterm").unwrap().powered_off
    });
    let console = console_text(&rt, "sigterm");
    assert!(console.contains("zombies=0"), "{console}");
    assert!(
        console.contains("SigBlk:\t0000000000000000"),
        "workload starts unmasked: {console}"
    );
    let o = rt.observe("sigterm").unwrap();
    // The workload (sleep, exec'd by sh) was killed by the SIGTERM sent while stopping: 128 + 15.
    assert_eq!(o.guest_exit_code, Some(143), "{o:?}\n{console}");
}

#[test]
fn acpi_power_button_powers_the_guest_off() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _g = launch(&rt, "acpi", None);
    wait_for("ready", Duration::from_secs(30), &rt, "acpi", || {
        rt.observe("acpi").unwrap().guest_ready
    });
    // The button thread finds its device shortly after ready; press until the guest reacts.
    wait_for("power off", Duration::from_secs(20), &rt, "acpi", || {
        let _ = rt.qmp_command("acpi", "system_powerdown");
        std::thread::sleep(Duration::from_millis(500));
        rt.observe("acpi").unwrap().powered_off
    });
    let console = console_text(&rt, "acpi");
    assert!(console.contains("power button pressed"), "{console}");
}

#[test]
fn a_new_runtime_re_adopts_a_running_vm() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _g = launch(&rt, "adopt", None);
    let first = rt.observe("adopt").unwrap();
    drop(rt);

    let rt2 = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    assert_eq!(rt2.list().unwrap(), vec!["adopt".to_string()]);
    wait_for("ready", Duration::from_secs(30), &rt2, "adopt", || {
        rt2.observe("adopt").unwrap().guest_ready
    });
    let o = rt2.observe("adopt").unwrap();
    assert!(o.running && o.pid == first.pid, "{o:?}");
    assert_eq!(
        rt2.qmp_command("adopt", "query-status").unwrap()["status"],
        "running"
    );
    // launch is idempotent: it returns the live process.
    let again = rt2.launch(&launch_config("adopt", None)).unwrap();
    assert!(again.already_running && Some(again.pid) == o.pid);
    rt2.stop("adopt", Duration::from_secs(10)).unwrap();
    assert!(!rt2.observe("adopt").unwrap().running);
    assert!(qemu_pids_for("adopt").is_empty());
    rt2.remove("adopt").unwrap();
    assert!(!root.path().join("adopt").exists());
}

#[test]
fn probe_picks_tcg_here_and_caches_it() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // A working KVM boots this guest to ready in well under a second; 5 s is generous.
    let p = probe_accel(root.path(), &fixture().image, Duration::from_secs(5));
    eprintln!("probe: {p:?} in {:?}", started.elapsed());
    assert_eq!(p.accel, Accel::Tcg, "{p:?}");
    assert!(p.detail.starts_with("kvm probe:"), "{p:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    if Path::new("/dev/kvm").exists() {
        assert!(root.path().join("accel-probe.json").is_file());
        let again = Instant::now();
        assert_eq!(
            probe_accel(root.path(), &fixture().image, Duration::from_secs(5)),
            p
        );
        assert!(again.elapsed() < Duration::from_secs(2), "cached");
    }
    assert!(qemu_pids_for("probe").is_empty());
}

/// A launcher that died between starting QEMU and recording its pid: the VMM is found again by
/// its working directory (the VM's state directory), not lost or started twice.
#[test]
fn a_vmm_whose_pid_was_never_recorded_is_found_again() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _g = launch(&rt, "unrecorded", None);
    let pid = rt.observe("unrecorded").unwrap().pid.unwrap();
    std::fs::remove_file(root.path().join("unrecorded").join("pid")).unwrap();

    let again = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let o = again.observe("unrecorded").unwrap();
    assert_eq!((o.pid, o.running), (Some(pid), true), "{o:?}");
    let info = again.launch(&launch_config("unrecorded", None)).unwrap();
    assert!(info.already_running && info.pid == pid, "{info:?}");
    again.stop("unrecorded", Duration::ZERO).unwrap();
    assert!(qemu_pids_for("unrecorded").is_empty());
}
