//! Block devices from the guest config, in order `/dev/vda`, `/dev/vdb`, ...
//!
//! A `root` disk (ext4) is mounted at `/newroot` (read-only if asked) with `/proc`, `/sys`,
//! `/dev` (and `/tmp` if the image has it) mounted inside, and the workload runs chrooted into
//! it ([`chroot_workload`]). `data` disks are mounted at `/mnt/<index>` (`<index>` is the
//! disk's position: `/dev/vdb` is `/mnt/1`), inside the new root when there is one. Any failure
//! is returned as one clear message; the caller prints it and powers off.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use firefleet_guest::config::{GuestDisk, GuestDiskRole};

/// Where the root disk is mounted.
pub const NEW_ROOT: &str = "/newroot";
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// `/dev/vd<letter>` of the disk at `index`.
fn device(index: usize) -> Option<PathBuf> {
    let letter = u8::try_from(index).ok().filter(|i| *i < 26)?;
    Some(PathBuf::from(format!(
        "/dev/vd{}",
        char::from(b'a' + letter)
    )))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount(src: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    mount_with(src, target, fstype, flags, None)
}

fn mount_with(
    src: &Path,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> io::Result<()> {
    let (src, target) = (cstr(src)?, cstr(target)?);
    let fstype =
        CString::new(fstype).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let data = data.map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: valid NUL-terminated strings; data is null or a NUL-terminated option string.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits for the device node (virtio-blk probes asynchronously after the module loads).
fn wait_for_device(dev: &Path) -> Result<(), String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !dev.exists() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not appear within {} s (is the disk attached?)",
                dev.display(),
                DEVICE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Mounts an ext4 disk. A read-only disk whose journal needs replaying (it was last used
/// read-write and not unmounted) cannot be mounted as is; it is then mounted without replaying
/// the journal (`noload`), with a warning.
fn mount_ext4(
    dev: &Path,
    target: &Path,
    read_only: bool,
    warn: &mut dyn FnMut(String),
) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let mut flags = libc::MS_NOATIME;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let mut result = mount(dev, target, "ext4", flags);
    if read_only && matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EROFS)) {
        warn(format!(
            "{} has an unreplayed journal; mounting it read-only without replaying it",
            dev.display()
        ));
        result = mount_with(dev, target, "ext4", flags, Some(c"noload"));
    }
    result.map_err(|e| {
        format!(
            "mounting {} (ext4{}) at {}: {e}",
            dev.display(),
            if read_only { ", read-only" } else { "" },
            target.display()
        )
    })
}

/// `/proc`, `/sys`, `/dev` and `/tmp` inside the new root. A directory that is missing and
/// cannot be created (read-only root) is skipped with a warning: the workload may not need it.
fn mount_inside(root: &Path, warn: &mut dyn FnMut(String)) -> Result<(), String> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (src, dir, fstype, flags, optional) in [
        ("proc", "proc", "proc", nosuid, false),
        ("sysfs", "sys", "sysfs", nosuid, false),
        ("/dev", "dev", "none", libc::MS_BIND | libc::MS_REC, false),
        (
            "tmpfs",
            "tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            true,
        ),
    ] {
        let target = root.join(dir);
        if !target.is_dir() {
            if optional {
                continue;
            }
            if let Err(e) = fs::create_dir(&target) {
                warn(format!("no /{dir} in the root disk ({e}); not mounting it"));
                continue;
            }
        }
        mount(Path::new(src), &target, fstype, flags)
            .map_err(|e| format!("mounting {src} at {}: {e}", target.display()))?;
    }
    Ok(())
}

/// Mounts the disks; returns the root to chroot the workload into, if there is a root disk.
pub fn setup(disks: &[GuestDisk], warn: &mut dyn FnMut(String)) -> Result<Option<PathBuf>, String> {
    if disks.is_empty() {
        return Ok(None);
    }
    let mut devices = Vec::with_capacity(disks.len());
    for i in 0..disks.len() {
        let dev = device(i).ok_or_else(|| format!("disk {i}: at most 26 disks are supported"))?;
        wait_for_device(&dev)?;
        devices.push(dev);
    }
    let root = match disks.iter().position(|d| d.role == GuestDiskRole::Root) {
        Some(i) => {
            let root = PathBuf::from(NEW_ROOT);
            mount_ext4(&devices[i], &root, disks[i].read_only, warn)?;
            mount_inside(&root, warn)?;
            Some(root)
        }
        None => None,
    };
    let mnt = root.as_deref().unwrap_or(Path::new("/")).join("mnt");
    for (i, d) in disks.iter().enumerate() {
        if d.role == GuestDiskRole::Data {
            mount_ext4(&devices[i], &mnt.join(i.to_string()), d.read_only, warn)?;
        }
    }
    Ok(root)
}

/// Makes the command chroot into `root` (and `chdir /`) just before exec; the program is looked
/// up on PATH inside the new root.
pub fn chroot_workload(command: &mut Command, root: &Path) -> io::Result<()> {
    let root = cstr(root)?;
    // SAFETY: chroot(2) and chdir(2) are async-signal-safe; the strings were allocated before
    // the fork and live in the closure.
    unsafe {
        command.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_devices_in_order() {
        assert_eq!(device(0), Some(PathBuf::from("/dev/vda")));
        assert_eq!(device(1), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(device(25), Some(PathBuf::from("/dev/vdz")));
        assert_eq!(device(26), None);
    }

    #[test]
    fn no_disks_no_root() {
        assert_eq!(setup(&[], &mut |_| {}).unwrap(), None);
    }
}
