//! The QEMU sandbox's jail: the VM's state directory holds links to (or copies of) the kernel,
//! initrd and disks, owned by the VM's own uid, and QEMU gets jail-relative paths, the TAP as a
//! descriptor and the seccomp filter.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::QemuRuntime;
use crate::error::VmmError;
use crate::vm::LaunchConfig;

/// What a sandboxed spawn needs, prepared before the fork.
pub(super) struct Jail {
    /// The config with jail-relative kernel and initrd.
    pub(super) cfg: LaunchConfig,
    pub(super) vm: crate::sandbox::VmSandbox,
    pub(super) groups: Vec<libc::gid_t>,
    pub(super) tap: Option<std::os::fd::OwnedFd>,
}

impl Jail {
    /// QEMU's arguments under the sandbox: the TAP by descriptor, and the seccomp filter.
    pub(super) fn args(&self, mut args: Vec<String>) -> Vec<String> {
        if let Some(tap) = &self.tap {
            for a in &mut args {
                if a.starts_with("tap,id=n0,") {
                    *a = format!("tap,id=n0,fd={}", tap.as_raw_fd());
                }
            }
        }
        args.push("-sandbox".into());
        args.push(crate::sandbox::QEMU_SECCOMP.into());
        args
    }
}

impl QemuRuntime {
    /// Removes a stopped VM's cgroups (they are made again at its next launch or restore).
    pub(super) fn release_cgroups(&self, id: &str) {
        if let Some(vm) = crate::sandbox::read_vm_sandbox(&self.vm_dir(id)) {
            crate::sandbox::Sandbox::cleanup(&vm);
        }
    }

    pub(super) fn prepare_jail(
        &self,
        sb: &crate::sandbox::Sandbox,
        cfg: &LaunchConfig,
        dir: &Path,
    ) -> Result<Jail, VmmError> {
        let sandbox_err = |source| VmmError::Sandbox {
            id: cfg.id.clone(),
            source,
        };
        let vm = sb
            .prepare(&self.state_root, &cfg.id, dir, cfg.vcpus, cfg.memory_mib)
            .map_err(sandbox_err)?;
        let jail_err = |path: &Path| {
            let path = path.to_owned();
            move |source| VmmError::State { path, source }
        };
        let mut jailed = cfg.clone();
        for (src, name) in [
            (&cfg.image.kernel, "vmlinuz"),
            (&cfg.image.initrd, "initrd.img"),
        ] {
            let dst = dir.join(name);
            crate::sandbox::link_into_jail(src, &dst, &vm).map_err(jail_err(&dst))?;
        }
        jailed.image.kernel = PathBuf::from("vmlinuz");
        jailed.image.initrd = PathBuf::from("initrd.img");
        // Disks are opened from the jail: the VM's uid cannot reach the agent's directories.
        for (i, d) in cfg.disks.iter().enumerate() {
            let format =
                crate::disk::detect_format(&d.path).map_err(|e| VmmError::InvalidConfig {
                    id: cfg.id.clone(),
                    what: format!("disk {i}: {e}"),
                })?;
            let name = format!("disk-{i}.{}", format.as_str());
            let dst = dir.join(&name);
            if d.read_only {
                // Shared (a base image): a link when world-readable, else a private copy.
                crate::sandbox::link_into_jail(&d.path, &dst, &vm).map_err(jail_err(&dst))?;
            } else {
                // The VM's own file: the same inode (never a copy: writes must reach the file),
                // now owned by the VM's uid.
                match fs::remove_file(&dst) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(jail_err(&dst)(e)),
                }
                fs::hard_link(&d.path, &dst).map_err(|e| VmmError::InvalidConfig {
                    id: cfg.id.clone(),
                    what: format!(
                        "disk {i}: {} cannot be linked into the VM's jail (a writable disk must be on the filesystem of the state root): {e}",
                        d.path.display()
                    ),
                })?;
                crate::sandbox::give(&dst, &vm).map_err(jail_err(&dst))?;
            }
            jailed.disks[i].vmm_path = Some(PathBuf::from(&name));
            if let Ok(Some(base)) = crate::disk::backing_file(&d.path) {
                let bformat = crate::disk::detect_format(&base).unwrap_or(crate::DiskFormat::Raw);
                let bname = format!("disk-{i}-base.{}", bformat.as_str());
                let bdst = dir.join(&bname);
                crate::sandbox::link_into_jail(&base, &bdst, &vm).map_err(jail_err(&bdst))?;
                jailed.disks[i].vmm_backing = Some(PathBuf::from(bname));
            }
        }
        // A restore appends to the console the previous process wrote.
        let console = dir.join("console.log");
        if console.exists() {
            crate::sandbox::give(&console, &vm).map_err(jail_err(&console))?;
        }
        let tap = match &cfg.net {
            Some(n) => Some(crate::sandbox::open_tap(&n.tap).map_err(jail_err(Path::new(&n.tap)))?),
            None => None,
        };
        let groups = if cfg.accel == firefleet_types::Accel::Kvm {
            crate::sandbox::kvm_group().into_iter().collect()
        } else {
            Vec::new()
        };
        Ok(Jail {
            cfg: jailed,
            vm,
            groups,
            tap,
        })
    }
}
