//! VMM runtimes (QEMU microvm; Firecracker later), accelerator probe, image kit and VM state
//! directories.
//!
//! This crate owns everything that touches a hypervisor process on one host: building guest
//! images ([`image`]), launching, observing, stopping and re-adopting VMs ([`Runtime`], with the
//! QEMU backend in [`qemu`]) and choosing KVM or TCG ([`probe_accel`]). The API is synchronous
//! (blocking); async callers use `spawn_blocking`. It must not depend on tokio, the store or the
//! server, and it makes no scheduling decisions.

pub mod image;
pub mod probe;
pub mod qemu;
mod runtime;

pub use firefleet_types::Accel;
pub use image::{build_image, default_guest_bin, BuildOptions, BuildProgress, BuildStage, Image, ImageError, ImageManifest, ImageStore};
pub use probe::{probe_accel, AccelProbe};
pub use qemu::QemuRuntime;
pub use runtime::{ConsoleChunk, LaunchConfig, Observation, Runtime, VmProcessInfo, VmmError};
