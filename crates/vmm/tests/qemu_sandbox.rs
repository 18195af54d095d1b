//! Sandboxed VMMs, with real QEMU: each runs under a uid/gid of its own with no supplementary
//! groups and no way to regain privileges, under QEMU's seccomp filter, inside its cgroups with
//! CPU and memory limits where the host offers them; it still boots, snapshots and restores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_testkit::vmm::*;
use firefleet_vmm::{sandbox::Sandbox, QemuRuntime, Runtime};

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn sandboxed_vmm_runs_unprivileged_filtered_and_limited() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: sandboxing needs root (uid switch, cgroups)");
        return;
    }
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::detect();
    let facts = sandbox.facts();
    println!("sandbox facts: {facts:?}");
    let rt = QemuRuntime::new(root.path().to_path_buf())
        .unwrap()
        .with_sandbox(sandbox.clone());
    let counter = vec![
        "sh".into(),
        "-c".into(),
        "i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.2; done".into(),
    ];
    let g = launch(&rt, "jailed", Some(counter.clone()));
    wait_for("ready", Duration::from_secs(60), &rt, "jailed", || {
        rt.observe("jailed").unwrap().guest_ready
    });
    let pid = rt.observe("jailed").unwrap().pid.unwrap();

    let uid = status_field(pid, "Uid");
    let uids: Vec<u32> = uid.split(' ').map(|u| u.parse().unwrap()).collect();
    assert!(
        uids.iter()
            .all(|&u| u == uids[0] && u >= firefleet_vmm::sandbox::UID_BASE),
        "Uid: {uid}"
    );
    assert_eq!(status_field(pid, "Groups"), "", "no supplementary groups");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "QEMU's seccomp filter is in force"
    );
    let dir = root.path().join("jailed");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (uids[0], 0o700),
        "jail dir owned by the VM's uid"
    );

    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // Named after the VM and this runtime's state root: unique on the host.
    let cg = firefleet_vmm::sandbox::cgroup_name(root.path(), "jailed");
    assert!(cg.starts_with("jailed."), "{cg}");
    if let Some(mem) = &sandbox.memory {
        assert!(cgroups.contains(&format!("/firefleet/{cg}")), "{cgroups}");
        let file = if mem.version == 2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let limit: u64 = std::fs::read_to_string(mem.parent.join(&cg).join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            limit,
            (256 + firefleet_vmm::sandbox::VMM_MEMORY_OVERHEAD_MIB) * 1024 * 1024
        );
    }
    if let Some(cpu) = &sandbox.cpu {
        let quota = if cpu.version == 2 {
            std::fs::read_to_string(cpu.parent.join(&cg).join("cpu.max")).unwrap()
        } else {
            std::fs::read_to_string(cpu.parent.join(&cg).join("cpu.cfs_quota_us")).unwrap()
        };
        assert!(
            quota.starts_with("100000"),
            "one vCPU = one CPU of quota: {quota}"
        );
    }

    // Snapshot and restore work under the sandbox (fd: migration; the files stay root's).
    let before = console_text(&rt, "jailed").matches("counter=").count();
    rt.snapshot("jailed", "s", false).unwrap();
    rt.stop("jailed", Duration::ZERO).unwrap();
    rt.restore(
        &launch_config("jailed", Some(counter)),
        &dir.join("snapshots").join("s"),
    )
    .unwrap();
    wait_for(
        "counter continues",
        Duration::from_secs(30),
        &rt,
        "jailed",
        || console_text(&rt, "jailed").matches("counter=").count() > before + 3,
    );
    let pid2 = rt.observe("jailed").unwrap().pid.unwrap();
    assert_ne!(pid, pid2);
    assert_eq!(status_field(pid2, "Seccomp"), "2");

    rt.stop("jailed", Duration::from_secs(10)).unwrap();
    rt.remove("jailed").unwrap();
    drop(g);
    for c in [&sandbox.cpu, &sandbox.memory].into_iter().flatten() {
        assert!(
            !c.parent.join("jailed").exists(),
            "cgroup removed with the VM"
        );
    }
}
