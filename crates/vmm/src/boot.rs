//! What the guest is told at boot, built once from a [`LaunchConfig`] for every backend: its
//! [`GuestConfig`] (workload, VM id, disks, network), which each backend puts on the kernel
//! command line after its own options.

use firefleet_guest::config::{GuestConfig, GuestDisk, GuestDiskRole};

use crate::vm::{DiskRole, LaunchConfig};

/// The guest's configuration for `cfg`. Pure.
pub fn guest_config(cfg: &LaunchConfig) -> GuestConfig {
    GuestConfig {
        cmd: cfg.cmd.clone(),
        vm_id: cfg.id.clone(),
        disks: cfg
            .disks
            .iter()
            .map(|d| GuestDisk {
                role: match d.role {
                    DiskRole::Root => GuestDiskRole::Root,
                    DiskRole::Data => GuestDiskRole::Data,
                },
                read_only: d.read_only,
            })
            .collect(),
        net: cfg.net.as_ref().map(crate::net::guest_net),
    }
}

/// The kernel command line: the backend's `options`, then the guest's configuration. Pure.
pub fn kernel_cmdline(options: &str, guest: &GuestConfig) -> String {
    format!("{options} {}", guest.to_cmdline_param())
}
