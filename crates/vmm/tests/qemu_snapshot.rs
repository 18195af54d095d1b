//! Pause/resume, snapshot and restore with real QEMU (TCG here), and the restore-vs-cold-boot
//! benchmark smoke test. Boots are serialised; every VM is killed by a guard on drop.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::{Duration, Instant};

use firefleet_guest::console::READY_LINE;
use firefleet_testkit::counters;
use firefleet_testkit::vmm::*;
use firefleet_vmm::qemu::snapshot::{verify_snapshot, MANIFEST_FILE, VMSTATE_FILE};
use firefleet_vmm::{QemuRuntime, Runtime, VmmError};

const COUNTER: &str = "i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.2; done";

fn counter_cmd() -> Option<Vec<String>> {
    Some(vec!["sh".into(), "-c".into(), COUNTER.into()])
}

/// The counter values printed in `text`, in order.
fn console_len(rt: &QemuRuntime, id: &str) -> u64 {
    rt.console(id, 0, 1 << 24).unwrap().next_offset
}

fn console_from(rt: &QemuRuntime, id: &str, offset: u64) -> String {
    String::from_utf8_lossy(&rt.console(id, offset, 1 << 24).unwrap().data).to_string()
}

#[test]
fn pause_resume_snapshot_and_restore_into_a_new_process() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let id = "snap";
    let _g = launch(&rt, id, counter_cmd());
    wait_for("counter=3", Duration::from_secs(40), &rt, id, || {
        counters(&console_text(&rt, id)).len() >= 4
    });

    // Pause: the console stops advancing and observe says so.
    rt.pause(id).unwrap();
    rt.pause(id).unwrap(); // idempotent
    let o = rt.observe(id).unwrap();
    assert!(o.running && o.paused, "{o:?}");
    std::thread::sleep(Duration::from_millis(200));
    let frozen = console_len(&rt, id);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        console_len(&rt, id),
        frozen,
        "console advanced while paused"
    );

    // Resume: it advances again.
    rt.resume(id).unwrap();
    assert!(!rt.observe(id).unwrap().paused);
    wait_for("advance", Duration::from_secs(5), &rt, id, || {
        console_len(&rt, id) > frozen
    });

    // A stale temporary directory of a dead snapshotter is cleaned up by the next snapshot.
    let snaps = root.path().join(id).join("snapshots");
    let stale = snaps.join(format!(".tmp-old-{}", i32::MAX));
    fs::create_dir_all(&stale).unwrap();

    // Snapshot, the VM running on.
    let last_before = *counters(&console_text(&rt, id)).last().unwrap();
    let info = rt.snapshot(id, "s1", false).unwrap();
    eprintln!("snapshot: {info:?}");
    assert_eq!(info.dir, snaps.join("s1"));
    assert!(!stale.exists(), "stale .tmp dir removed");
    assert!(info.bytes > 1 << 20 && info.pause_ms < 10_000, "{info:?}");
    let m = verify_snapshot(&info.dir).unwrap();
    assert_eq!(m.vm_id, id);
    assert!(m.qemu_version.contains("QEMU"), "{}", m.qemu_version);
    let names: Vec<_> = fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["s1".to_string()], "no temporary leftovers");
    let o = rt.observe(id).unwrap();
    assert!(o.running && !o.paused, "runs on after the snapshot: {o:?}");
    let after_snap = console_len(&rt, id);
    wait_for("advance", Duration::from_secs(5), &rt, id, || {
        console_len(&rt, id) > after_snap
    });
    // A second snapshot of the same name is refused.
    assert!(rt.snapshot(id, "s1", true).is_err());

    // Kill the VMM outright.
    let old_pid = rt.observe(id).unwrap().pid.unwrap();
    // SAFETY: a pid we started and that is still alive.
    unsafe { libc::kill(old_pid, libc::SIGKILL) };
    wait_for("death", Duration::from_secs(5), &rt, id, || {
        !rt.observe(id).unwrap().running
    });
    // Restoring into a running VM is refused; into this stopped one it works.
    let mark = console_len(&rt, id);
    let started = Instant::now();
    let p = rt
        .restore(&launch_config(id, counter_cmd()), &info.dir)
        .unwrap();
    eprintln!("restore returned after {:?}", started.elapsed());
    assert_ne!(p.pid, old_pid, "a new VMM process");
    wait_for(
        "counter after restore",
        Duration::from_secs(10),
        &rt,
        id,
        || !counters(&console_from(&rt, id, mark)).is_empty(),
    );
    eprintln!("first counter line {:?} after restore()", started.elapsed());
    let after = console_from(&rt, id, mark);
    let values = counters(&after);
    assert!(
        values[0] > last_before,
        "continues from the snapshot ({last_before}), not from 0: {after}"
    );
    assert!(!after.contains(READY_LINE), "no second boot: {after}");
    let o = rt.observe(id).unwrap();
    assert!(o.running && !o.paused && o.pid == Some(p.pid), "{o:?}");
    let err = rt
        .restore(&launch_config(id, counter_cmd()), &info.dir)
        .unwrap_err();
    assert!(err.to_string().contains("running"), "{err}");

    // The guest channel survived: a graceful stop goes through it.
    let started = Instant::now();
    rt.stop(id, Duration::from_secs(10)).unwrap();
    let took = started.elapsed();
    let console = console_text(&rt, id);
    assert!(
        console.contains("shutdown requested by the host"),
        "{console}"
    );
    assert!(took < Duration::from_secs(8), "graceful stop took {took:?}");
    let o = rt.observe(id).unwrap();
    assert_eq!(o.vmm_exit.as_deref(), Some("exit status: 0"), "{o:?}");
    assert!(qemu_pids_for(id).is_empty());
}

#[test]
fn leave_paused_snapshot_and_restore_under_another_id() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let _g = launch(&rt, "src", counter_cmd());
    wait_for("counter", Duration::from_secs(40), &rt, "src", || {
        counters(&console_text(&rt, "src")).len() >= 2
    });
    let info = rt.snapshot("src", "p", true).unwrap();
    assert!(rt.observe("src").unwrap().paused, "left paused");
    let frozen = console_len(&rt, "src");
    // Copy the snapshot elsewhere (as to another node) and restore there into a new id.
    let other = tempfile::tempdir().unwrap();
    let copy = other.path().join("p");
    fs::create_dir(&copy).unwrap();
    for e in fs::read_dir(&info.dir).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let rt2 = QemuRuntime::new(other.path().join("state")).unwrap();
    let _g2 = VmGuard {
        rt: rt2.clone(),
        id: "dst".into(),
    };
    rt2.restore(&launch_config("dst", counter_cmd()), &copy)
        .unwrap();
    wait_for(
        "counter on dst",
        Duration::from_secs(10),
        &rt2,
        "dst",
        || !counters(&console_text(&rt2, "dst")).is_empty(),
    );
    assert!(counters(&console_text(&rt2, "dst"))[0] >= 2);
    assert_eq!(console_len(&rt, "src"), frozen, "the source stays paused");
    rt.resume("src").unwrap();
    wait_for("src advances", Duration::from_secs(5), &rt, "src", || {
        console_len(&rt, "src") > frozen
    });
    rt2.stop("dst", Duration::from_secs(10)).unwrap();
    rt.stop("src", Duration::ZERO).unwrap();
    assert!(qemu_pids_for("src").is_empty() && qemu_pids_for("dst").is_empty());
}

#[test]
fn incomplete_snapshots_are_refused_by_restore() {
    // No QEMU is started: verification comes first.
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().join("state")).unwrap();
    let cfg = launch_config("victim", None);
    let tmp_dir = root.path().join(".tmp-s-12345");
    fs::create_dir(&tmp_dir).unwrap();
    fs::write(tmp_dir.join(VMSTATE_FILE), b"partial").unwrap();
    let err = rt.restore(&cfg, &tmp_dir).unwrap_err();
    assert!(matches!(err, VmmError::InvalidSnapshot { .. }), "{err}");
    assert!(err.to_string().contains("unfinished snapshot"), "{err}");

    let no_manifest = root.path().join("s");
    fs::create_dir(&no_manifest).unwrap();
    fs::write(no_manifest.join(VMSTATE_FILE), b"partial").unwrap();
    let err = rt.restore(&cfg, &no_manifest).unwrap_err();
    assert!(
        err.to_string().contains(&format!("no {MANIFEST_FILE}")),
        "{err}"
    );
    assert!(!root.path().join("state").join("victim").exists());
    assert!(qemu_pids_for("victim").is_empty());
}

#[test]
fn restore_vs_cold_boot_bench_smoke() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    // FIREFLEET_BENCH_COUNT=5 for real numbers; the smoke test does one of each.
    let count = std::env::var("FIREFLEET_BENCH_COUNT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let mut lines = Vec::new();
    let r = firefleet_vmm::bench::restore_vs_cold(&rt, &fixture().image, count, &mut |l| {
        eprintln!("{l}");
        lines.push(l.to_string())
    })
    .unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!((r.cold_boot_ms.len(), r.restore_ms.len()), (count, count));
    assert!(
        r.cold_boot_median_ms > 0.0 && r.restore_median_ms > 0.0,
        "{r:?}"
    );
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(rt.list().unwrap().is_empty(), "bench VMs removed");
}
