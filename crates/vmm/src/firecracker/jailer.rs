//! Running Firecracker under its jailer: chroot `<base>/<exec name>/<id>/root`, uid/gid drop.
//! Firecracker sees only its chroot, so the kernel, initrd and disks are hard-linked into it
//! (copied across filesystems) and owned by the jail's uid. The jailer `exec`s Firecracker
//! (no `--daemonize`, no new pid namespace), so the pid we spawn is Firecracker's.
//! The jailer needs a statically linked Firecracker (nothing else exists in the chroot).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::config::API_SOCK;
use super::FirecrackerRuntime;
use crate::fsutil::state_err;
use crate::runtime::{LaunchConfig, VmmError};

/// Running Firecracker under its jailer (chroot, uid/gid drop, cgroups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` binary.
    pub jailer_bin: PathBuf,
    /// The uid Firecracker runs as.
    pub uid: u32,
    /// The gid Firecracker runs as.
    pub gid: u32,
    /// `--chroot-base-dir`; each VM's root is `<base>/firecracker/<id>/root`.
    pub chroot_base_dir: PathBuf,
}

pub(super) fn jail_root(j: &JailerConfig, firecracker: &Path, id: &str) -> PathBuf {
    let exec_name = firecracker.file_name().map_or_else(
        || "firecracker".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    j.chroot_base_dir.join(exec_name).join(id).join("root")
}

pub(super) fn jailer_command(
    j: &JailerConfig,
    firecracker: &Path,
    id: &str,
    (uid, gid): (u32, u32),
) -> Command {
    let mut c = Command::new(&j.jailer_bin);
    c.arg("--id")
        .arg(id)
        .arg("--exec-file")
        .arg(firecracker)
        .arg("--uid")
        .arg(uid.to_string())
        .arg("--gid")
        .arg(gid.to_string())
        .arg("--chroot-base-dir")
        .arg(&j.chroot_base_dir)
        .args(["--", "--api-sock", API_SOCK]);
    c
}

impl FirecrackerRuntime {
    /// The uid and gid VM `id`'s jailed Firecracker runs as: one of its own, claimed host-wide
    /// like the QEMU sandbox's (the same registry, so no two VMMs on the host share one), when
    /// running as root; else the configured ones.
    pub(super) fn jail_ids(&self, j: &JailerConfig, id: &str) -> (u32, u32) {
        match crate::sandbox::claim_uid(&self.vm_dir(id)) {
            Some(uid) => (uid, uid),
            None => (j.uid, j.gid),
        }
    }

    pub(super) fn chown_for_jail(&self, id: &str, p: &Path) -> Result<(), VmmError> {
        if let Some(j) = &self.jailer {
            let (uid, gid) = self.jail_ids(j, id);
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(state_err(p))?;
        }
        Ok(())
    }

    /// Under the jailer, Firecracker sees only its chroot: hard-links the kernel, initrd and
    /// disks into it and returns the config with paths as Firecracker sees them.
    pub(super) fn jail_files(
        &self,
        cfg: &LaunchConfig,
        kernel: &Path,
    ) -> Result<(PathBuf, LaunchConfig), VmmError> {
        if self.jailer.is_none() {
            return Ok((kernel.to_path_buf(), cfg.clone()));
        }
        let root = self.run_dir(&cfg.id);
        let link = |src: &Path, name: &str| -> Result<PathBuf, VmmError> {
            let dst = root.join(name);
            let _ = fs::remove_file(&dst);
            fs::hard_link(src, &dst)
                .or_else(|_| fs::copy(src, &dst).map(drop))
                .map_err(state_err(&dst))?;
            self.chown_for_jail(&cfg.id, &dst)?;
            Ok(PathBuf::from(name))
        };
        let kernel = link(kernel, "vmlinux")?;
        let mut jailed = cfg.clone();
        jailed.image.initrd = link(&cfg.image.initrd, "initrd.img")?;
        for (i, d) in jailed.disks.iter_mut().enumerate() {
            d.path = link(&d.path, &format!("disk{i}.img"))?;
        }
        Ok((kernel, jailed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_paths() {
        let j = JailerConfig {
            jailer_bin: "/usr/bin/jailer".into(),
            uid: 123,
            gid: 100,
            chroot_base_dir: "/srv/jailer".into(),
        };
        assert_eq!(
            jail_root(&j, Path::new("/usr/bin/firecracker"), "vm1"),
            PathBuf::from("/srv/jailer/firecracker/vm1/root")
        );
        let c = jailer_command(&j, Path::new("/usr/bin/firecracker"), "vm1", (123, 100));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--id vm1 --exec-file /usr/bin/firecracker --uid 123 --gid 100 \
             --chroot-base-dir /srv/jailer -- --api-sock api.sock"
        );
    }
}
