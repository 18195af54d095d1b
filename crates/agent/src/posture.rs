//! Host security posture: what the host policies check about a node (Firecracker's production
//! host setup guide), read from sysfs and procfs and from what the VMM sandbox reports.
//!
//! Reading is all this module does: a file that cannot be read gives `None` (or leaves its
//! entry out), never an error, and nothing is assumed. Judging the facts is the policies' job.

use std::collections::BTreeMap;
use std::path::Path;

use firefleet_types::node::IsolationFacts;
use firefleet_types::PostureFacts;

/// The host's posture, reading under `root` (`/` on a host; a fake tree in tests).
///
/// `isolation` is what the QEMU sandbox puts in force (`None`: no sandbox, so none of the VMM
/// protections hold); `metadata_blocked` says whether the node network, whose ruleset drops
/// guests' traffic to the metadata address, is up.
pub fn gather_posture(
    root: &Path,
    isolation: Option<&IsolationFacts>,
    metadata_blocked: bool,
) -> PostureFacts {
    let cpu = root.join("sys/devices/system/cpu");
    let vulnerabilities = read_vulnerabilities(&cpu.join("vulnerabilities"));
    let vulnerable = vulnerabilities
        .iter()
        .filter(|(_, text)| text.starts_with("Vulnerable"))
        .map(|(name, _)| name.clone())
        .collect();
    PostureFacts {
        smt_control: read_trim(&cpu.join("smt/control")),
        smt_active: read_trim(&cpu.join("smt/active")).and_then(|s| match s.as_str() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }),
        // 0: stopped, 1: merging, 2: stopped after unmerging everything.
        ksm_enabled: read_trim(&root.join("sys/kernel/mm/ksm/run")).and_then(|s| {
            match s.as_str() {
                "1" => Some(true),
                "0" | "2" => Some(false),
                _ => None,
            }
        }),
        swap_total_kib: swap_total_kib(&root.join("proc/meminfo")),
        vulnerabilities,
        vulnerable,
        metadata_egress_blocked: metadata_blocked,
        vmm_sandboxed: isolation.is_some_and(sandboxed),
        seccomp: isolation.is_some_and(seccomp_in_force),
        cgroup_limits: isolation.is_some_and(cgroup_limits),
    }
}

/// `posture` narrowed to what also holds for Firecracker VMMs, for a node that offers that
/// backend: every VMM must be protected for a protection to count. Firecracker applies its
/// own seccomp filters (we never pass `--no-seccomp`), runs in the jailer's chroot under a uid
/// of its own only when `jailed`, and gets no cgroup limits either way (we pass no `--cgroup`).
pub fn with_firecracker(posture: PostureFacts, jailed: bool) -> PostureFacts {
    PostureFacts {
        vmm_sandboxed: posture.vmm_sandboxed && jailed,
        cgroup_limits: false,
        ..posture
    }
}

/// A uid per VM and a jail directory (the sandbox reports `uid_per_vm: false` when not root:
/// then every VMM runs as the agent).
fn sandboxed(iso: &IsolationFacts) -> bool {
    let jail = iso.jail.trim();
    iso.uid_per_vm && !jail.is_empty() && !jail.eq_ignore_ascii_case("none")
}

/// The sandbox names the filter it passes (`qemu -sandbox on,...`); empty, `none`, `off`, a
/// sentence saying it is not in force, or a note about seccomp all mean no filter.
fn seccomp_in_force(iso: &IsolationFacts) -> bool {
    let s = iso.seccomp.trim().to_ascii_lowercase();
    let off = s.is_empty()
        || ["none", "off", "disabled", "unavailable"].contains(&s.as_str())
        || ["none", "not ", "no ", "off", "disabled", "unavailable"]
            .iter()
            .any(|p| s.starts_with(p))
        || s.contains("-sandbox off")
        || s.contains("sandbox=off");
    let noted = iso
        .notes
        .iter()
        .any(|n| n.to_ascii_lowercase().contains("seccomp"));
    !off && !noted
}

/// A cgroup hierarchy in use and both CPU and memory limits enforced.
fn cgroup_limits(iso: &IsolationFacts) -> bool {
    let cg = iso.cgroup.trim();
    iso.cpu_limit && iso.memory_limit && !cg.is_empty() && !cg.eq_ignore_ascii_case("none")
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn swap_total_kib(meminfo: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(meminfo).ok()?;
    let line = text.lines().find(|l| l.starts_with("SwapTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every readable file in `dir`: name -> trimmed text (nothing when `dir` cannot be read).
fn read_vulnerabilities(dir: &Path) -> BTreeMap<String, String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name, read_trim(&e.path())?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const VULNS: &str = "sys/devices/system/cpu/vulnerabilities";

    /// What `Sandbox::facts` reports as root on a cgroup v2 host.
    fn root_sandbox() -> IsolationFacts {
        IsolationFacts {
            uid_per_vm: true,
            seccomp: format!("qemu -sandbox {}", firefleet_vmm::sandbox::QEMU_SECCOMP),
            cgroup: "v2".into(),
            cpu_limit: true,
            memory_limit: true,
            jail: "per-VM directory (mode 0700, owned by the VM's uid)".into(),
            notes: vec![],
        }
    }

    /// What it reports unprivileged, without a writable cgroup.
    fn user_sandbox() -> IsolationFacts {
        IsolationFacts {
            uid_per_vm: false,
            seccomp: "none".into(),
            cgroup: "none".into(),
            cpu_limit: false,
            memory_limit: false,
            jail: "per-VM directory (same uid as the agent)".into(),
            notes: vec!["no usable cpu cgroup controller".into()],
        }
    }

    #[test]
    fn a_hardened_host() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "sys/devices/system/cpu/smt/control", "forceoff\n");
        write(root, "sys/devices/system/cpu/smt/active", "0\n");
        write(root, "sys/kernel/mm/ksm/run", "2\n");
        write(
            root,
            "proc/meminfo",
            "MemTotal:       16315708 kB\nSwapCached:            0 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n",
        );
        write(
            root,
            &format!("{VULNS}/spectre_v2"),
            "Mitigation: Retpolines; IBPB: conditional; STIBP: disabled; RSB filling\n",
        );
        write(root, &format!("{VULNS}/meltdown"), "Not affected\n");
        write(
            root,
            &format!("{VULNS}/l1tf"),
            "Mitigation: PTE Inversion; VMX: cache flushes, SMT disabled\n",
        );

        let p = gather_posture(root, Some(&root_sandbox()), true);
        assert_eq!(
            p,
            PostureFacts {
                smt_control: Some("forceoff".into()),
                smt_active: Some(false),
                ksm_enabled: Some(false),
                swap_total_kib: Some(0),
                vulnerabilities: [
                    (
                        "l1tf",
                        "Mitigation: PTE Inversion; VMX: cache flushes, SMT disabled"
                    ),
                    ("meltdown", "Not affected"),
                    (
                        "spectre_v2",
                        "Mitigation: Retpolines; IBPB: conditional; STIBP: disabled; RSB filling"
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
                vulnerable: vec![],
                metadata_egress_blocked: true,
                vmm_sandboxed: true,
                seccomp: true,
                cgroup_limits: true,
            }
        );
        // A jailed Firecracker keeps the sandbox but has no cgroup limits.
        let fc = with_firecracker(p.clone(), true);
        assert!(fc.vmm_sandboxed && fc.seccomp && !fc.cgroup_limits);
        assert!(!with_firecracker(p, false).vmm_sandboxed);
    }

    #[test]
    fn a_weak_host() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "sys/devices/system/cpu/smt/control", "on\n");
        write(root, "sys/devices/system/cpu/smt/active", "1\n");
        write(root, "sys/kernel/mm/ksm/run", "1\n");
        write(
            root,
            "proc/meminfo",
            "MemTotal:       16315708 kB\nSwapTotal:       8388604 kB\n",
        );
        write(
            root,
            &format!("{VULNS}/mds"),
            "Vulnerable; SMT vulnerable\n",
        );
        write(
            root,
            &format!("{VULNS}/spectre_v1"),
            "Vulnerable: __user pointer sanitization and usercopy barriers only; no swapgs barriers\n",
        );
        write(root, &format!("{VULNS}/meltdown"), "Not affected\n");
        write(root, &format!("{VULNS}/empty"), "\n");

        let p = gather_posture(root, Some(&user_sandbox()), false);
        assert_eq!(p.smt_control.as_deref(), Some("on"));
        assert_eq!(p.smt_active, Some(true));
        assert_eq!(p.ksm_enabled, Some(true));
        assert_eq!(p.swap_total_kib, Some(8_388_604));
        assert_eq!(
            p.vulnerabilities.keys().collect::<Vec<_>>(),
            ["mds", "meltdown", "spectre_v1"],
            "an empty file says nothing and is left out"
        );
        assert_eq!(p.vulnerabilities["mds"], "Vulnerable; SMT vulnerable");
        assert_eq!(p.vulnerable, ["mds", "spectre_v1"]);
        assert!(!p.metadata_egress_blocked);
        assert!(!p.vmm_sandboxed);
        assert!(!p.seccomp);
        assert!(!p.cgroup_limits);
    }

    #[test]
    fn nothing_readable_and_no_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/kernel/mm/ksm/run", "garbage\n");
        write(dir.path(), "proc/meminfo", "MemTotal: 1 kB\n");
        let p = gather_posture(dir.path(), None, false);
        assert_eq!(p, PostureFacts::default());
    }

    #[test]
    fn each_protection_needs_all_its_parts() {
        let full = root_sandbox();
        let with = |f: &dyn Fn(&mut IsolationFacts)| {
            let mut iso = full.clone();
            f(&mut iso);
            gather_posture(Path::new("/nonexistent"), Some(&iso), false)
        };
        assert!(!with(&|i| i.uid_per_vm = false).vmm_sandboxed);
        assert!(!with(&|i| i.jail = "none".into()).vmm_sandboxed);
        for off in [
            "",
            "none",
            "off",
            "not in force: kernel without seccomp",
            "qemu -sandbox off",
        ] {
            assert!(!with(&|i| i.seccomp = off.into()).seccomp, "{off:?}");
        }
        assert!(!with(&|i| i.notes = vec!["seccomp unavailable".into()]).seccomp);
        assert!(!with(&|i| i.cpu_limit = false).cgroup_limits);
        assert!(!with(&|i| i.memory_limit = false).cgroup_limits);
        assert!(!with(&|i| i.cgroup = "none".into()).cgroup_limits);
        let hybrid = with(&|i| i.cgroup = "hybrid (cpu: v1, memory: v2)".into());
        assert!(hybrid.cgroup_limits && hybrid.vmm_sandboxed && hybrid.seccomp);
    }

    /// The posture of the host the tests run on (`cargo test -p firefleet-agent posture --
    /// --nocapture` prints it); only checks that reading the real tree does not fail. (No
    /// sandbox: detecting one probes the host's cgroups.)
    #[test]
    fn this_host() {
        let p = gather_posture(Path::new("/"), None, false);
        println!("{}", serde_json::to_string_pretty(&p).unwrap());
        // Every Linux host has SwapTotal in /proc/meminfo.
        assert!(p.swap_total_kib.is_some(), "{p:?}");
        assert_eq!(
            p.vulnerable,
            p.vulnerabilities
                .iter()
                .filter(|(_, t)| t.starts_with("Vulnerable"))
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
        );
    }
}
