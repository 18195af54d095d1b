//! Helpers shared by the QEMU integration tests: the image fixture (built once per test
//! process), boot serialisation, VM guards and console polling.
//!
//! The kernel package download is cached in `$FIREFLEET_TEST_CACHE`, else
//! `$CARGO_TARGET_DIR/firefleet-test-cache`, else `<target>/tmp/firefleet-test-cache`
//! (`debs/` holds the verified .deb; it is reused while its SHA-256 matches the archive).
//! The static guest binary is `$FIREFLEET_GUEST_BIN`, else built by
//! `crates/guest/build-static.sh` into `<cache>/guest-target` (a separate target directory, so
//! the nested cargo never waits on the lock of the cargo running these tests).

// Test helpers outside #[test] fns: clippy.toml's allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use firefleet_vmm::image::{build_image, BuildOptions, Image, ImageStore};
use firefleet_vmm::{Accel, LaunchConfig, QemuRuntime, Runtime};

pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREFLEET_TEST_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("firefleet-test-cache");
    }
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("firefleet-test-cache")
}

pub fn guest_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREFLEET_GUEST_BIN") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/build-static.sh");
    let out = Command::new(&script)
        .env("CARGO_TARGET_DIR", cache_dir().join("guest-target"))
        .output()
        .expect("run build-static.sh");
    assert!(
        out.status.success(),
        "build-static.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct Fixture {
    pub guest: PathBuf,
    pub image: Image,
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

pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the VM on drop, whatever happened in the test.
pub struct VmGuard {
    pub rt: QemuRuntime,
    pub id: String,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let _ = self.rt.stop(&self.id, Duration::ZERO);
    }
}

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

pub fn console_text(rt: &QemuRuntime, id: &str) -> String {
    let chunk = rt.console(id, 0, 1 << 20).unwrap();
    String::from_utf8_lossy(&chunk.data).to_string()
}

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

/// Launches `cfg` with a guard.
pub fn launch_cfg(rt: &QemuRuntime, cfg: &LaunchConfig) -> VmGuard {
    let guard = VmGuard {
        rt: rt.clone(),
        id: cfg.id.clone(),
    };
    rt.launch(cfg).unwrap();
    guard
}
