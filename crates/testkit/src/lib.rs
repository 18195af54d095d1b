//! The test kit: what every integration and end-to-end test of the workspace shares.
//!
//! - [`server`]: a real server (real TLS, real HTTP, a real SQLite file) in a temporary
//!   directory, and HTTPS clients that trust its CA.
//! - [`cluster`]: real `firefleet` processes (server, agents, the CLI) on loopback, torn down
//!   with every VMM they started when the harness is dropped.
//! - [`vmm`]: the QEMU fixture of the vmm tests (the image built once per test process, boot
//!   serialisation, VM guards, console polling).
//! - [`spec`]: VM spec fixtures.
//! - [`net`], [`procs`]: traffic-rate helpers, test networks' clean-up, processes.
//! - here: one [`now_ms`], [`wait_until`], the image and guest binary locations.
//!
//! Dev-only: no product crate depends on it, and it is used from integration tests only (a
//! crate's unit tests would link a second copy of the crate under test).

// Test helpers panic with a message where a test would: clippy.toml's allow-unwrap-in-tests does
// not reach a library.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cluster;
pub mod net;
pub mod procs;
pub mod server;
pub mod spec;
pub mod vmm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls `f` every 200 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The image store the suite uses (`FIREFLEET_IMAGE_DIR`, set up by `scripts/setup.sh`), else
/// `~/.cache/firefleet/images`.
pub fn image_dir() -> PathBuf {
    match std::env::var_os("FIREFLEET_IMAGE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/firefleet/images"),
    }
}

/// The target directory the running test binary was built into (`<target>/<profile>/deps/x`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// The directory the running test binary's profile builds into (`<target>/debug`), where cargo
/// puts the workspace's binaries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .expect("a test binary under <target>/<profile>/deps")
}

/// The cache of downloads and builds the vmm tests share: `$FIREFLEET_TEST_CACHE`, else
/// `$CARGO_TARGET_DIR/firefleet-test-cache`, else `<target>/tmp/firefleet-test-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREFLEET_TEST_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("firefleet-test-cache");
    }
    target_dir().join("tmp/firefleet-test-cache")
}

/// The static guest binary: `$FIREFLEET_GUEST_BIN`, else built by `crates/guest/build-static.sh`
/// into `<cache>/guest-target` (a separate target directory, so the nested cargo never waits on
/// the lock of the cargo running the tests).
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

/// The values of `counter=N` lines (the counter workload the tests run).
pub fn counters(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("counter=")?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_only_counter_lines() {
        assert_eq!(counters("counter=1\nnoise\n counter=2 \ncounter=x"), [1, 2]);
    }

    #[test]
    #[should_panic(expected = "waiting for never")]
    fn wait_until_names_what_it_waited_for() {
        wait_until(Duration::from_millis(10), "never", || false);
    }

    #[test]
    fn now_ms_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
