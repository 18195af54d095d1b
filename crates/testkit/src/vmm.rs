//! The QEMU fixture of the vmm tests: the image built once per test process into a temporary
//! store, boot serialisation, VM guards and console polling. The kernel package download is
//! cached in [`crate::cache_dir`] (`debs/` holds the verified .deb; it is reused while its SHA-256
//! matches the archive); the guest binary is [`crate::guest_bin`].

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use firefleet_vmm::image::{build_image, BuildOptions, Image, ImageStore};
use firefleet_vmm::{Accel, LaunchConfig, QemuRuntime, Runtime};

use crate::{cache_dir, guest_bin};

/// The image every test VM boots.
pub struct Fixture {
    /// The guest binary in the image.
    pub guest: PathBuf,
    /// The image.
    pub image: Image,
    /// Its digest.
    pub digest: String,
    _store: tempfile::TempDir,
}

/// Builds the image once per test process, into a temporary store.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let guest = guest_bin();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(store_dir.path()).unwrap();
        let mut stages = Vec::new();
        let m = build_image(
            &store,
            &BuildOptions {
                name: "default".into(),
                guest_bin: guest.clone(),
                work_dir: cache_dir(),
                kernel_package: None,
            },
            &mut |p| stages.push(p.stage),
        )
        .unwrap();
        assert!(stages.contains(&firefleet_vmm::BuildStage::Done));
        let image = store.resolve("default").unwrap();
        assert_eq!(image.digest, m.digest);
        Fixture {
            guest,
            digest: m.digest,
            image,
            _store: store_dir,
        }
    })
}

/// One VM test at a time in a test process (the machine has few cores; TCG boots are slow).
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the VM on drop, whatever happened in the test.
pub struct VmGuard<R: Runtime = QemuRuntime> {
    /// The runtime holding the VM.
    pub rt: R,
    /// The VM.
    pub id: String,
}

impl<R: Runtime> Drop for VmGuard<R> {
    fn drop(&mut self) {
        let _ = self.rt.stop(&self.id, Duration::ZERO);
    }
}

/// Launches VM `id` (with `cmd`) under a guard.
pub fn launch(rt: &QemuRuntime, id: &str, cmd: Option<Vec<String>>) -> VmGuard {
    let guard = VmGuard {
        rt: rt.clone(),
        id: id.into(),
    };
    rt.launch(&launch_config(id, cmd)).unwrap();
    guard
}

/// The config every test VM uses: 1 vCPU, 256 MiB, TCG, the fixture image.
pub fn launch_config(id: &str, cmd: Option<Vec<String>>) -> LaunchConfig {
    LaunchConfig {
        id: id.into(),
        vcpus: 1,
        memory_mib: 256,
        image: fixture().image.clone(),
        cmd,
        accel: Accel::Tcg,
        net: None,
        disks: Vec::new(),
    }
}

/// VM `id`'s console so far.
pub fn console_text(rt: &QemuRuntime, id: &str) -> String {
    let chunk = rt.console(id, 0, 1 << 20).unwrap();
    String::from_utf8_lossy(&chunk.data).to_string()
}

/// Polls `cond` every 50 ms; panics naming `what`, with VM `id`'s console, after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    rt: &QemuRuntime,
    id: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; console:\n{}",
            console_text(rt, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Launches `cfg` with a guard.
pub fn launch_cfg(rt: &QemuRuntime, cfg: &LaunchConfig) -> VmGuard {
    let guard = VmGuard {
        rt: rt.clone(),
        id: cfg.id.clone(),
    };
    rt.launch(cfg).unwrap();
    guard
}

/// PIDs of the QEMU processes of VM `id` (its `-name firefleet-<id>,debug-threads…`).
pub fn qemu_pids_for(id: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("firefleet-{id},debug-threads")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
