//! The VMM backends a node offers, and which one holds a given VM.
//!
//! QEMU is always there; Firecracker when the agent was given its binary and the host has a
//! usable `/dev/kvm` (Firecracker has no software emulation). Each backend keeps its VMs' state
//! directories under its own root (`<data dir>/vms`, `<data dir>/fc-vms`), so a VM's backend is
//! found again from the disk after an agent restart: the spec says which backend a VM is
//! launched with, the state directory says which one runs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use firefleet_types::{Accel, VmRuntime};
use firefleet_vmm::{FirecrackerRuntime, JailerConfig, QemuRuntime, Runtime, VmmError};

/// How the agent runs Firecracker.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary.
    pub binary: PathBuf,
    /// Run it under this `jailer` binary (chroot, uid/gid, cgroups per VM).
    pub jailer: Option<PathBuf>,
}

/// The uid and gid jailed Firecracker processes run as (no account of the host has it).
const JAILED_ID: u32 = 3_100_000;

/// The backends of this node.
pub struct Runtimes {
    /// The QEMU backend (a fake one in unit tests).
    qemu: Arc<dyn Runtime>,
    /// The QEMU backend as itself, for what only it does (live migration); `None` with a fake.
    qemu_live: Option<Arc<QemuRuntime>>,
    qemu_accel: Accel,
    firecracker: Option<Arc<FirecrackerRuntime>>,
    /// Why Firecracker is not offered, when it was asked for.
    pub firecracker_unavailable: Option<String>,
    /// `firecracker --version`, when offered.
    pub firecracker_version: Option<String>,
}

/// `/dev/kvm` can be opened for reading and writing (what Firecracker needs).
fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// `firecracker --version`, first line.
fn firecracker_version(binary: &Path) -> Result<String, String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version exited with {}",
            binary.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("firecracker")
        .trim()
        .to_owned())
}

impl Runtimes {
    /// QEMU under `data_dir/vms` (using `qemu_accel`), and Firecracker under `data_dir/fc-vms`
    /// when configured and usable here (otherwise [`Runtimes::firecracker_unavailable`] says why).
    pub fn new(
        qemu: Arc<QemuRuntime>,
        qemu_accel: Accel,
        data_dir: &Path,
        firecracker: Option<&FirecrackerConfig>,
    ) -> Result<Self, VmmError> {
        let mut this = Self {
            qemu_live: Some(qemu.clone()),
            qemu,
            qemu_accel,
            firecracker: None,
            firecracker_unavailable: None,
            firecracker_version: None,
        };
        let Some(fc) = firecracker else {
            return Ok(this);
        };
        match kvm_usable().and_then(|()| firecracker_version(&fc.binary)) {
            Ok(v) => this.firecracker_version = Some(v),
            Err(why) => {
                this.firecracker_unavailable = Some(why);
                return Ok(this);
            }
        }
        let jailer = fc.jailer.as_ref().map(|j| JailerConfig {
            jailer_bin: j.clone(),
            uid: JAILED_ID,
            gid: JAILED_ID,
            chroot_base_dir: data_dir.join("jail"),
        });
        let rt = FirecrackerRuntime::new(data_dir.join("fc-vms"), fc.binary.clone(), jailer)?;
        this.firecracker = Some(Arc::new(rt));
        Ok(this)
    }

    /// `qemu` standing for the QEMU backend (its VMs' state directories under its
    /// `state_root`), TCG, no Firecracker: for unit tests with a fake backend.
    #[cfg(test)]
    pub fn with_backend(qemu: Arc<dyn Runtime>) -> Self {
        Self {
            qemu,
            qemu_live: None,
            qemu_accel: Accel::Tcg,
            firecracker: None,
            firecracker_unavailable: None,
            firecracker_version: None,
        }
    }

    /// The QEMU backend as itself (for live migration), unless it is a test's fake.
    pub fn qemu(&self) -> Option<Arc<QemuRuntime>> {
        self.qemu_live.clone()
    }

    /// The Firecracker backend, if offered.
    pub fn firecracker(&self) -> Option<&FirecrackerRuntime> {
        self.firecracker.as_deref()
    }

    /// The names of the backends offered, for the node facts.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![VmRuntime::Qemu.as_str().to_owned()];
        if self.firecracker.is_some() {
            v.push(VmRuntime::Firecracker.as_str().to_owned());
        }
        v
    }

    /// The accelerator a backend runs guests with.
    pub fn accel(&self, kind: VmRuntime) -> Accel {
        match kind {
            VmRuntime::Qemu => self.qemu_accel,
            VmRuntime::Firecracker => Accel::Kvm,
        }
    }

    /// The backend of `kind`, or why this node does not have it.
    pub fn get(&self, kind: VmRuntime) -> Result<Arc<dyn Runtime>, String> {
        match kind {
            VmRuntime::Qemu => Ok(self.qemu.clone()),
            VmRuntime::Firecracker => match &self.firecracker {
                Some(fc) => Ok(fc.clone()),
                None => Err(format!(
                    "this node does not offer firecracker ({})",
                    self.firecracker_unavailable
                        .as_deref()
                        .unwrap_or("the agent was started without --firecracker")
                )),
            },
        }
    }

    /// Which backend holds VM `id` (has its state directory), if any.
    pub fn holder(&self, id: &str) -> Option<VmRuntime> {
        if self.qemu.state_root().join(id).is_dir() {
            return Some(VmRuntime::Qemu);
        }
        match &self.firecracker {
            Some(fc) if fc.vm_dir(id).is_dir() => Some(VmRuntime::Firecracker),
            _ => None,
        }
    }

    /// The backend holding VM `id`, else the one its spec asks for (`wanted`), else QEMU.
    pub fn for_vm(&self, id: &str, wanted: Option<VmRuntime>) -> Arc<dyn Runtime> {
        self.holder(id)
            .or(wanted)
            .and_then(|k| self.get(k).ok())
            .unwrap_or_else(|| self.qemu.clone())
    }

    /// The state directory VM `id` has (or would have) under the backend holding it.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        match (self.holder(id), &self.firecracker) {
            (Some(VmRuntime::Firecracker), Some(fc)) => fc.vm_dir(id),
            _ => self.qemu.state_root().join(id),
        }
    }

    /// The state directory VM `id` has (or will have) under the backend of `kind`.
    pub fn dir_for(&self, kind: VmRuntime, id: &str) -> PathBuf {
        match (kind, &self.firecracker) {
            (VmRuntime::Firecracker, Some(fc)) => fc.vm_dir(id),
            _ => self.qemu.state_root().join(id),
        }
    }

    /// Every VM with a state directory, over all backends.
    pub fn list(&self) -> Result<Vec<String>, VmmError> {
        let mut ids = self.qemu.list()?;
        if let Some(fc) = &self.firecracker {
            ids.extend(fc.list()?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}
