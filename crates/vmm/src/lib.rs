//! VMM runtimes (QEMU microvm; Firecracker later), accelerator probe, image kit and VM state
//! directories.
//!
//! This crate owns everything that touches a hypervisor process on one host: building guest
//! images ([`image`]), launching, observing, stopping and re-adopting VMs ([`Runtime`], with the
//! QEMU backend in [`qemu`] and the Firecracker one in [`firecracker`]) and choosing KVM or TCG ([`probe_accel`]). The API is synchronous
//! (blocking); async callers use `spawn_blocking`. It must not depend on tokio, the store or the
//! server, and it makes no scheduling decisions.
//!
//! # Building a guest image
//! 1. The guest binary (static, no PT_INTERP): `crates/guest/build-static.sh` prints its path
//!    (`$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/firefleet-guest`).
//! 2. An image, with apt, dpkg-deb and busybox-static installed:
//!
//! ```no_run
//! use firefleet_vmm::image::{build_image, BuildOptions, ImageStore};
//! let store = ImageStore::open("/var/lib/firefleet/images".as_ref())?;
//! let manifest = build_image(
//!     &store,
//!     &BuildOptions {
//!         name: "default".into(),
//!         guest_bin: firefleet_vmm::default_guest_bin()?, // or the path from build-static.sh
//!         work_dir: "/var/cache/firefleet".into(),        // .deb cache lives in work_dir/debs
//!         kernel_package: None,                           // linux-image-cloud-amd64
//!     },
//!     &mut |p| eprintln!("{} {}/{:?} {}", p.stage.as_str(), p.done, p.total, p.message),
//! )?;
//! let image = store.resolve("default")?;
//! # let _ = (manifest, image);
//! # Ok::<(), firefleet_vmm::ImageError>(())
//! ```
//!
//! # Running a VM
//! `QemuRuntime::new(state_root)?.launch(&LaunchConfig { .. })`, then `observe`, `console`,
//! `stop`, `remove`. Choose `accel` with [`probe_accel`] (cached per host).
//!
//! # Layout
//! - The contract: `runtime` ([`Runtime`]), `vm` (the values it takes and returns), `error`
//!   ([`VmmError`]).
//! - The shared core both backends are built on, which knows no backend: `statedir` (a VM's
//!   state directory: shared file names, ids, the recorded config), [`process`] (starting a VMM
//!   with its reaper, finding it again, waiting for it, killing it), `console` (the captured
//!   console and the guest's lines on it), `observe` (what a state directory tells), `boot`
//!   (the guest config built once from a [`LaunchConfig`]), `guestlink` ([`GuestLink`]: a VM's
//!   guest channel), `fsutil` (atomic writes, fsyncs, log tails) and `wait` (polling).
//!   [`Runtime`]'s default `console`, `remove`, `list`, `exec`, `invoke` and `telemetry` are
//!   written on it, so a backend implements only what its VMM does differently.
//! - The backends: [`qemu`] and [`firecracker`]. Each uses the contract and the shared core
//!   and never the other backend.
//! - Around them: [`channel`] (the guest channel protocol and its multiplexer), [`sandbox`],
//!   [`net`], [`disk`], [`image`], [`archive`], [`stats`], [`probe`], [`bench`].

pub mod archive;
pub mod bench;
mod boot;
pub mod channel;
mod console;
pub mod disk;
mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod firecracker;
mod fsutil;
mod guestlink;
pub mod image;
pub mod net;
mod observe;
pub mod probe;
pub mod process;
pub mod qemu;
mod runtime;
pub mod sandbox;
mod statedir;
pub mod stats;
mod vm;
mod wait;

pub use channel::{GuestTelemetry, InvokeHandler, InvokeOutput};
pub use disk::{DiskError, DiskFormat};
pub use firecracker::{FirecrackerRuntime, JailerConfig};
pub use firefleet_types::Accel;
pub use fsutil::unix_ms;
pub use guestlink::GuestLink;
pub use image::{
    build_image, default_guest_bin, BuildOptions, BuildProgress, BuildStage, Image, ImageError,
    ImageManifest, ImageStore,
};
pub use probe::{probe_accel, AccelProbe};
pub use qemu::QemuRuntime;
pub use runtime::{ConsoleChunk, LaunchConfig, Observation, Runtime, VmProcessInfo, VmmError};
pub use runtime::{
    DiskConfig, DiskCounters, DiskRole, SnapshotInfo, VmmIoStats, GUEST_READY_MARKER,
};

/// What a complete snapshot directory on this host holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Bytes on disk.
    pub bytes: u64,
    /// How long the VM was paused for it, in milliseconds.
    pub pause_ms: u64,
}

/// Whether `name` is a file a snapshot directory of either backend holds (the allow-list for
/// unpacking a snapshot archive from another node). Pure.
pub fn is_snapshot_file(name: &str) -> bool {
    qemu::snapshot::is_snapshot_file(name) || firecracker::snapshot::is_snapshot_file(name)
}

/// The summary of `dir` if it is a complete snapshot of either backend (checked as that backend
/// checks it before a restore), else `None`.
pub fn completed_snapshot(dir: &std::path::Path) -> Option<SnapshotSummary> {
    if let Ok(m) = qemu::snapshot::verify_snapshot(dir) {
        return Some(SnapshotSummary {
            bytes: m.files.iter().map(|f| f.size).sum(),
            pause_ms: m.pause_ms,
        });
    }
    firecracker::snapshot::read_manifest(dir)
        .ok()
        .map(|m| SnapshotSummary {
            bytes: m.info.bytes,
            pause_ms: m.info.pause_ms,
        })
}
