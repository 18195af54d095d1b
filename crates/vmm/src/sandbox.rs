//! Sandboxing of VMM processes: a uid/gid of its own per VM, seccomp (QEMU's `-sandbox` with
//! the deny options), cgroup limits for CPU and memory (cgroup v2, or v1 where that is what the
//! host offers — hybrids are common: each controller is taken from where it works), and a
//! per-VM jail directory holding everything the VMM may touch.
//!
//! [`Sandbox::detect`] finds out what this host supports and [`Sandbox::facts`] says it in the
//! node facts, including what is *not* in force and why; nothing is assumed.

use firefleet_types::node::IsolationFacts;
use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// QEMU's seccomp options: deny obsolete syscalls, privilege changes, spawning processes and
/// resource control (`exec:` migration and `-runas` are incompatible with these; we use `fd:`
/// migration and drop privileges before exec instead).
pub const QEMU_SECCOMP: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Claims a uid for the VMM of the VM whose state directory is `state_dir`, host-wide: a uid is
/// claimed by creating `UID_CLAIMS/<uid>` naming the state directory; a claim whose directory
/// is gone (the VM was removed) is stale and reused; the same directory gets the same uid
/// again. `None` when not root or the registry cannot be written.
pub fn claim_uid(state_dir: &Path) -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    claim_uid_except(state_dir, &std::collections::HashSet::new())
}

fn claim_uid_except(state_dir: &Path, used: &std::collections::HashSet<u32>) -> Option<u32> {
    let claims = Path::new(UID_CLAIMS);
    let _ = std::fs::create_dir_all(claims);
    for uid in (UID_BASE..UID_BASE + UID_SLOTS).filter(|u| !used.contains(u)) {
        let claim = claims.join(uid.to_string());
        if let Ok(holder) = std::fs::read_to_string(&claim) {
            let holder = Path::new(holder.trim());
            if holder == state_dir {
                return Some(uid);
            }
            if holder.exists() {
                continue;
            }
            let _ = std::fs::remove_file(&claim);
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
        {
            Ok(mut f) => {
                use std::io::Write as _;
                let _ = f.write_all(state_dir.to_string_lossy().as_bytes());
                return Some(uid);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // No registry (read-only /run): the caller's own view only.
            Err(_) => return Some(uid),
        }
    }
    None
}

/// A VM's cgroup name: its id and a hash of the state root, so that two runtimes on one host
/// (two agents, or two backends) never share a cgroup, and with it a memory limit, for one id.
pub fn cgroup_name(state_root: &Path, id: &str) -> String {
    // FNV-1a: stable across builds and runs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_root.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{id}.{:08x}", h as u32)
}

/// First uid/gid handed to VMM processes; VM slot N runs as `UID_BASE + N`.
pub const UID_BASE: u32 = 3_000_000;
/// Number of uid slots.
pub const UID_SLOTS: u32 = 65_536;
/// Where uids are claimed host-wide (one file per uid, naming the VM's state directory).
pub const UID_CLAIMS: &str = "/run/firefleet/uids";
/// Memory a VMM process may use beyond the guest's RAM (device emulation, TCG's translation
/// cache, I/O buffers), in MiB.
pub const VMM_MEMORY_OVERHEAD_MIB: u64 = 384;

/// Which cgroup hierarchy a controller is used from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupController {
    /// 1 or 2.
    pub version: u8,
    /// The directory under which per-VM cgroups are made (our own cgroup + `firefleet`).
    pub parent: PathBuf,
}

/// What this host offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    /// Running as root (needed to switch uid and manage cgroups).
    pub root: bool,
    /// The CPU controller, if usable.
    pub cpu: Option<CgroupController>,
    /// The memory controller, if usable.
    pub memory: Option<CgroupController>,
    /// Why a controller is not usable.
    pub notes: Vec<String>,
}

/// A VM's sandbox as prepared (persisted in its state directory so it can be cleaned up after
/// an agent restart).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSandbox {
    /// uid of the VMM process (0: not switched).
    pub uid: u32,
    /// gid of the VMM process.
    pub gid: u32,
    /// The VM's cgroup directories (one per hierarchy used).
    pub cgroups: Vec<PathBuf>,
}

/// Sandbox errors.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A cgroup file could not be written.
    #[error("cgroup {path}")]
    Cgroup {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The jail directory could not be prepared.
    #[error("jail {path}")]
    Jail {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Every uid slot is taken.
    #[error("no free uid slot for VM {0}")]
    NoUid(String),
}

/// Parsed line of /proc/self/mountinfo for a cgroup mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    version: u8,
    mount_point: PathBuf,
    controllers: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        let (Some(mount_point), Some(fstype)) = (l.get(4), r.first()) else {
            continue;
        };
        match *fstype {
            "cgroup2" => out.push(CgroupMount {
                version: 2,
                mount_point: PathBuf::from(mount_point),
                controllers: vec![],
            }),
            "cgroup" => {
                let opts = r.get(2).copied().unwrap_or("");
                let controllers = opts
                    .split(',')
                    .filter(|o| ["cpu", "memory", "cpuacct", "pids"].contains(o))
                    .map(str::to_owned)
                    .collect();
                out.push(CgroupMount {
                    version: 1,
                    mount_point: PathBuf::from(mount_point),
                    controllers,
                });
            }
            _ => {}
        }
    }
    out
}

/// Our own cgroup path per hierarchy from /proc/self/cgroup: (hierarchy controllers, path).
fn parse_self_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            Some((
                ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path.to_owned(),
            ))
        })
        .collect()
}

impl Sandbox {
    /// Finds out what this host offers.
    pub fn detect() -> Sandbox {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let self_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let root = nix::unistd::geteuid().is_root();
        let mut s = Sandbox::from_host(
            &parse_mountinfo(&mountinfo),
            &parse_self_cgroup(&self_cg),
            root,
            &|p| std::fs::read_to_string(p).ok(),
        );
        // Prove each controller works: make and remove a probe cgroup.
        for (name, ctrl) in [("cpu", &mut s.cpu), ("memory", &mut s.memory)] {
            if let Some(c) = ctrl.as_ref() {
                let probe = c.parent.join(format!("probe-{}", std::process::id()));
                let ok = std::fs::create_dir_all(&probe).and_then(|_| std::fs::remove_dir(&probe));
                if let Err(e) = ok {
                    s.notes.push(format!(
                        "{name} cgroup (v{}) at {} not writable: {e}",
                        c.version,
                        c.parent.display()
                    ));
                    *ctrl = None;
                }
            }
        }
        s
    }

    /// The decision, from parsed host state (pure, for tests).
    fn from_host(
        mounts: &[CgroupMount],
        self_cg: &[(Vec<String>, String)],
        root: bool,
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> Sandbox {
        let mut notes = Vec::new();
        if !root {
            notes.push(
                "not running as root: VMMs run as the agent's uid, without cgroup limits"
                    .to_owned(),
            );
            return Sandbox {
                root,
                cpu: None,
                memory: None,
                notes,
            };
        }
        let v2 = mounts.iter().find(|m| m.version == 2);
        let v2_path = self_cg
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "/".into());
        let v2_controllers: Vec<String> = v2
            .and_then(|m| {
                read(
                    &m.mount_point
                        .join(v2_path.trim_start_matches('/'))
                        .join("cgroup.controllers"),
                )
            })
            .map(|t| t.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let pick = |name: &str, notes: &mut Vec<String>| -> Option<CgroupController> {
            if let Some(m) = v2.filter(|_| v2_controllers.iter().any(|c| c == name)) {
                return Some(CgroupController {
                    version: 2,
                    parent: m
                        .mount_point
                        .join(v2_path.trim_start_matches('/'))
                        .join("firefleet"),
                });
            }
            if let Some(m) = mounts
                .iter()
                .find(|m| m.version == 1 && m.controllers.iter().any(|c| c == name))
            {
                let path = self_cg
                    .iter()
                    .find(|(c, _)| c.iter().any(|c| c == name))
                    .map(|(_, p)| p.clone())
                    .unwrap_or_else(|| "/".into());
                return Some(CgroupController {
                    version: 1,
                    parent: m
                        .mount_point
                        .join(path.trim_start_matches('/'))
                        .join("firefleet"),
                });
            }
            notes.push(format!(
                "no usable {name} cgroup controller (neither cgroup v2 nor v1 offers it)"
            ));
            None
        };
        let cpu = pick("cpu", &mut notes);
        let memory = pick("memory", &mut notes);
        Sandbox {
            root,
            cpu,
            memory,
            notes,
        }
    }

    /// The facts for the node report.
    pub fn facts(&self) -> IsolationFacts {
        let cgroup = match (&self.cpu, &self.memory) {
            (None, None) => "none".to_owned(),
            (Some(c), Some(m)) if c.version == m.version => format!("v{}", c.version),
            (c, m) => format!(
                "hybrid (cpu: {}, memory: {})",
                c.as_ref()
                    .map_or("none".to_owned(), |c| format!("v{}", c.version)),
                m.as_ref()
                    .map_or("none".to_owned(), |m| format!("v{}", m.version))
            ),
        };
        IsolationFacts {
            uid_per_vm: self.root,
            seccomp: format!("qemu -sandbox {QEMU_SECCOMP}"),
            cgroup,
            cpu_limit: self.cpu.is_some(),
            memory_limit: self.memory.is_some(),
            jail: if self.root {
                "per-VM directory (mode 0700, owned by the VM's uid) holding links to its kernel, initrd and disks; no other host files are readable by that uid beyond world-readable system files".to_owned()
            } else {
                "per-VM directory (same uid as the agent)".to_owned()
            },
            notes: self.notes.clone(),
        }
    }

    /// Picks the VM's uid slot: the lowest one no other VM under `state_root` uses.
    pub fn allocate_uid(&self, state_root: &Path, id: &str) -> Result<u32, SandboxError> {
        if !self.root {
            return Ok(nix::unistd::geteuid().as_raw());
        }
        let mut used = std::collections::HashSet::new();
        if let Ok(rd) = std::fs::read_dir(state_root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy() == id {
                    if let Some(s) = read_vm_sandbox(&e.path()) {
                        return Ok(s.uid);
                    }
                    continue;
                }
                if let Some(s) = read_vm_sandbox(&e.path()) {
                    used.insert(s.uid);
                }
            }
        }
        // Other runtimes on this host (another agent, another backend) allocate from the same
        // range: the claim is host-wide.
        claim_uid_except(&state_root.join(id), &used)
            .ok_or_else(|| SandboxError::NoUid(id.to_owned()))
    }

    /// Prepares a VM's sandbox: its uid, its cgroups with limits (CPU: `vcpus` full CPUs; memory:
    /// guest RAM + [`VMM_MEMORY_OVERHEAD_MIB`]), and its jail directory `state_dir` (owned by the
    /// uid, mode 0700). Persists it as `state_dir/sandbox.json`. Idempotent.
    pub fn prepare(
        &self,
        state_root: &Path,
        id: &str,
        state_dir: &Path,
        vcpus: u32,
        memory_mib: u64,
    ) -> Result<VmSandbox, SandboxError> {
        let uid = self.allocate_uid(state_root, id)?;
        let gid = if self.root {
            uid
        } else {
            nix::unistd::getegid().as_raw()
        };
        let mut cgroups = Vec::new();
        if let Some(c) = &self.cpu {
            let dir = c.parent.join(cgroup_name(state_root, id));
            mkdir(&dir)?;
            let period = 100_000u64;
            let quota = period * u64::from(vcpus.max(1));
            if c.version == 2 {
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            cgroups.push(dir);
        }
        if let Some(m) = &self.memory {
            let dir = m.parent.join(cgroup_name(state_root, id));
            mkdir(&dir)?;
            let bytes = (memory_mib + VMM_MEMORY_OVERHEAD_MIB) * 1024 * 1024;
            let file = if m.version == 2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            write(&dir.join(file), &bytes.to_string())?;
            if !cgroups.contains(&dir) {
                cgroups.push(dir);
            }
        }
        let jail = |source| SandboxError::Jail {
            path: state_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(jail)?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(jail)?;
        let vm = VmSandbox { uid, gid, cgroups };
        let json = serde_json::to_vec_pretty(&vm).unwrap_or_default();
        std::fs::write(state_dir.join("sandbox.json"), json).map_err(jail)?;
        if self.root {
            chown_tree(state_dir, uid, gid).map_err(jail)?;
        }
        Ok(vm)
    }

    /// Puts `pid` into the VM's cgroups.
    pub fn attach(&self, vm: &VmSandbox, pid: i32) -> Result<(), SandboxError> {
        for dir in &vm.cgroups {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the VM's cgroups (after its process is gone). Idempotent.
    pub fn cleanup(vm: &VmSandbox) {
        for dir in &vm.cgroups {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Opens the persistent TAP device `name` (as root) for a VMM that may not open it itself:
/// the descriptor is handed to QEMU (`-netdev tap,fd=N`).
pub fn open_tap(name: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid TAP name {name:?}"),
        ));
    }
    // SAFETY: open(2) with a NUL-terminated literal path.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // struct ifreq: the name (IFNAMSIZ bytes) then a union whose first member is the flags.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough to hold.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The group owning /dev/kvm, when the device is not open to everyone (the VMM's uid joins it).
pub fn kvm_group() -> Option<libc::gid_t> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/dev/kvm").ok()?;
    (m.mode() & 0o006 != 0o006).then_some(m.gid())
}

/// Reads a VM's persisted sandbox.
pub fn read_vm_sandbox(state_dir: &Path) -> Option<VmSandbox> {
    let b = std::fs::read(state_dir.join("sandbox.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Gives a file in the jail to the VM's uid (for files made after [`Sandbox::prepare`]).
pub fn give(path: &Path, vm: &VmSandbox) -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(path, Some(vm.uid), Some(vm.gid))?;
    }
    Ok(())
}

/// Places `src` in the jail at `dst` so the VM's uid can read it without reaching anything
/// else: a hard link when on the same filesystem and world-readable (sharing the inode), else a
/// private copy owned by the VM's uid.
pub fn link_into_jail(src: &Path, dst: &Path, vm: &VmSandbox) -> io::Result<()> {
    if dst.exists() {
        std::fs::remove_file(dst)?;
    }
    let world_readable = std::fs::metadata(src)?.permissions().mode() & 0o004 != 0;
    if !(world_readable && std::fs::hard_link(src, dst).is_ok()) {
        std::fs::copy(src, dst)?;
        give(dst, vm)?;
    }
    Ok(())
}

/// In the child between fork and exec: drop to the VM's uid/gid with no supplementary groups
/// and forbid regaining privileges. Only async-signal-safe calls.
///
/// # Safety
/// To be called only from `CommandExt::pre_exec`.
pub unsafe fn drop_privileges(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: plain syscalls on integers and a borrowed slice; no allocation.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(|source| SandboxError::Cgroup {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(|source| SandboxError::Cgroup {
        path: path.to_owned(),
        source,
    })
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            chown_tree(&p, uid, gid)?;
        } else if !ft.is_symlink() {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_host_uses_v1_for_cpu_and_memory() {
        let s = Sandbox::from_host(
            &parse_mountinfo(HYBRID_MOUNTINFO),
            &parse_self_cgroup(HYBRID_SELF),
            true,
            &|p| {
                (p == Path::new("/sys/fs/cgroup/unified/cgroup.controllers"))
                    .then(|| "hugetlb\n".to_owned())
            },
        );
        let cpu = s.cpu.clone().unwrap();
        assert_eq!(
            (cpu.version, cpu.parent),
            (1, PathBuf::from("/sys/fs/cgroup/cpu/firefleet"))
        );
        let mem = s.memory.clone().unwrap();
        assert_eq!(
            (mem.version, mem.parent),
            (
                1,
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/firefleet")
            )
        );
        assert_eq!(s.facts().cgroup, "v1");
    }

    #[test]
    fn pure_v2_host_uses_v2() {
        let mi = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let s = Sandbox::from_host(
            &parse_mountinfo(mi),
            &parse_self_cgroup("0::/system.slice/agent\n"),
            true,
            &|p| {
                (p == Path::new("/sys/fs/cgroup/system.slice/agent/cgroup.controllers"))
                    .then(|| "cpu io memory pids".to_owned())
            },
        );
        assert_eq!(
            s.cpu.unwrap().parent,
            PathBuf::from("/sys/fs/cgroup/system.slice/agent/firefleet")
        );
        assert_eq!(s.memory.unwrap().version, 2);
    }

    #[test]
    fn missing_controllers_are_said_not_pretended() {
        let mi = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let s = Sandbox::from_host(
            &parse_mountinfo(mi),
            &parse_self_cgroup("0::/\n"),
            true,
            &|_| Some("pids".to_owned()),
        );
        let f = s.facts();
        assert_eq!(f.cgroup, "none");
        assert!(!f.cpu_limit && !f.memory_limit);
        assert_eq!(f.notes.len(), 2, "{:?}", f.notes);
        let unprivileged = Sandbox::from_host(&[], &[], false, &|_| None);
        assert!(!unprivileged.facts().uid_per_vm);
    }
}
