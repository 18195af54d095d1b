//! The request bodies sent to Firecracker's API (shapes from its
//! `src/firecracker/swagger/firecracker.yaml`, v1.16), built from a [`LaunchConfig`] by pure
//! functions, and the names of the files in a VM's state directory.

use std::path::Path;

use serde::Serialize;

use crate::boot;
use crate::vm::LaunchConfig;

/// The names every backend shares (launch config, pid file, console, exit record, snapshots).
pub use crate::statedir::{CONFIG_FILE, CONSOLE_LOG, EXIT_FILE, PID_FILE, SNAPSHOTS_DIR};
/// Firecracker's API socket.
pub const API_SOCK: &str = "api.sock";
/// The vsock device's Unix socket (host-initiated connections).
pub const VSOCK_SOCK: &str = "vsock.sock";
/// Firecracker's own log (`PUT /logger`).
pub const FC_LOG: &str = "firecracker.log";
/// Firecracker's metrics, one JSON object per flush (`PUT /metrics`).
pub const METRICS_FILE: &str = "metrics.json";
/// The guest's CID on its vsock device.
pub const GUEST_CID: u32 = 3;
/// The vsock port the guest connects to on the host (CID 2) for its channel; Firecracker
/// forwards it to the Unix socket `<uds_path>_<port>`.
pub const GUEST_CHANNEL_PORT: u32 = 1024;
/// The kernel command line limit on x86.
pub const MAX_CMDLINE: usize = 2048;
/// The id of the (only) network interface.
pub const IFACE_ID: &str = "eth0";

/// The host-side socket the guest's channel arrives on.
pub fn guest_channel_sock() -> String {
    format!("{VSOCK_SOCK}_{GUEST_CHANNEL_PORT}")
}

/// `PUT /logger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logger {
    /// The log file (must exist).
    pub log_path: String,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    pub level: String,
    /// Prefix lines with their level.
    pub show_level: bool,
    /// Prefix lines with their origin.
    pub show_log_origin: bool,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metrics {
    /// The metrics file (must exist).
    pub metrics_path: String,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfig {
    /// 1..=32.
    pub vcpu_count: u32,
    /// Guest memory.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading.
    pub smt: bool,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    /// The uncompressed ELF kernel.
    pub kernel_image_path: String,
    /// The initramfs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// The kernel command line.
    pub boot_args: String,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    /// `disk<N>`, in attachment order (the guest sees `/dev/vda`, `/dev/vdb`, ...).
    pub drive_id: String,
    /// Always false: the guest boots from its initramfs and mounts the root disk itself
    /// (true would make Firecracker append `root=/dev/vda` to the command line).
    pub is_root_device: bool,
    /// Read-only.
    pub is_read_only: bool,
    /// The image file.
    pub path_on_host: String,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    /// `eth0`.
    pub iface_id: String,
    /// The TAP device.
    pub host_dev_name: String,
    /// The guest NIC's MAC.
    pub guest_mac: String,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    /// The guest's CID (>= 3).
    pub guest_cid: u32,
    /// The Unix socket Firecracker listens on (relative to its working directory).
    pub uds_path: String,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// `InstanceStart`, `SendCtrlAltDel` or `FlushMetrics`.
    pub action_type: &'static str,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmState {
    /// `Paused` or `Resumed`.
    pub state: &'static str,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCreate {
    /// `Full`.
    pub snapshot_type: &'static str,
    /// Where the device and vCPU state goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
}

/// The memory backend of a snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemBackend {
    /// `File`.
    pub backend_type: &'static str,
    /// The memory file.
    pub backend_path: String,
}

/// A TAP device override on snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// The vsock socket override on snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockOverride {
    /// The new socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoad {
    /// The device and vCPU state.
    pub snapshot_path: String,
    /// Guest memory.
    pub mem_backend: MemBackend,
    /// Resume once loaded.
    pub resume_vm: bool,
    /// TAP devices of the new host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// The vsock socket in the new state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// The kernel command line: Firecracker's usual options plus the guest's configuration (its MAC
/// in lower case, as Firecracker's API is given it).
pub fn boot_args(cfg: &LaunchConfig) -> String {
    let mut guest = boot::guest_config(cfg);
    if let Some(n) = &mut guest.net {
        n.mac.make_ascii_lowercase();
    }
    boot::kernel_cmdline("console=ttyS0 reboot=k panic=1 pci=off quiet", &guest)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Everything to PUT before `InstanceStart`, in order, as (path, body).
pub fn boot_requests(cfg: &LaunchConfig, kernel: &Path) -> Vec<(String, serde_json::Value)> {
    let mut reqs: Vec<(String, serde_json::Value)> = Vec::new();
    let mut put = |path: String, body: serde_json::Value| reqs.push((path, body));
    put(
        "/machine-config".into(),
        json(&MachineConfig {
            vcpu_count: cfg.vcpus,
            mem_size_mib: cfg.memory_mib,
            smt: false,
        }),
    );
    put(
        "/boot-source".into(),
        json(&BootSource {
            kernel_image_path: path_str(kernel),
            initrd_path: Some(path_str(&cfg.image.initrd)),
            boot_args: boot_args(cfg),
        }),
    );
    for (i, d) in cfg.disks.iter().enumerate() {
        let drive = Drive {
            drive_id: format!("disk{i}"),
            is_root_device: false,
            is_read_only: d.read_only,
            path_on_host: path_str(&d.path),
        };
        put(format!("/drives/{}", drive.drive_id), json(&drive));
    }
    if let Some(n) = &cfg.net {
        put(
            format!("/network-interfaces/{IFACE_ID}"),
            json(&NetworkInterface {
                iface_id: IFACE_ID.into(),
                host_dev_name: n.tap.clone(),
                guest_mac: n.mac.to_ascii_lowercase(),
            }),
        );
    }
    put(
        "/vsock".into(),
        json(&Vsock {
            guest_cid: GUEST_CID,
            uds_path: VSOCK_SOCK.into(),
        }),
    );
    reqs
}

/// The snapshot load request for a VM restored from `vmstate` and `memory`.
pub fn snapshot_load(cfg: &LaunchConfig, vmstate: &Path, memory: &Path) -> SnapshotLoad {
    SnapshotLoad {
        snapshot_path: path_str(vmstate),
        mem_backend: MemBackend {
            backend_type: "File",
            backend_path: path_str(memory),
        },
        resume_vm: true,
        network_overrides: cfg
            .net
            .iter()
            .map(|n| NetworkOverride {
                iface_id: IFACE_ID.into(),
                host_dev_name: n.tap.clone(),
            })
            .collect(),
        vsock_override: Some(VsockOverride {
            uds_path: VSOCK_SOCK.into(),
        }),
    }
}

fn json(v: &impl Serialize) -> serde_json::Value {
    // These structs hold only strings, numbers and bools: serialisation cannot fail.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    //! Contract tests: our bodies against small examples hand-copied from Firecracker's
    //! swagger (v1.16.1) and its getting-started guide. Every key we send must be a property
    //! of the schema, every required property must be present, and the types must agree.
    use super::*;
    use crate::runtime::{DiskConfig, NetAttachment};
    use crate::vm::DiskRole;
    use firefleet_guest::config::{GuestConfig, GuestDiskRole};
    use firefleet_types::Accel;
    use serde_json::{json, Value};

    fn cfg() -> LaunchConfig {
        let mut sample = LaunchConfig::sample();
        sample.image.vmlinux = Some("/img/vmlinux".into());
        LaunchConfig {
            cmd: Some(vec!["sh".into(), "-c".into(), "echo hi".into()]),
            accel: Accel::Kvm,
            net: Some(NetAttachment {
                tap: "fftap0".into(),
                mac: "06:00:AC:10:00:02".into(),
                guest_ip: "10.213.0.5".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.213.0.1".parse().unwrap(),
            }),
            disks: vec![DiskConfig {
                path: "/d/root.ext4".into(),
                role: DiskRole::Root,
                read_only: false,
                vmm_path: None,
                vmm_backing: None,
            }],
            ..sample
        }
    }

    /// Swagger examples: (schema, required keys, an example body in the documented shape).
    fn swagger() -> Vec<(&'static str, Vec<&'static str>, Value)> {
        vec![
            (
                "Logger",
                vec![],
                json!({"log_path": "/tmp/fc.log", "level": "Info", "show_level": false, "show_log_origin": false}),
            ),
            (
                "Metrics",
                vec!["metrics_path"],
                json!({"metrics_path": "/tmp/metrics"}),
            ),
            (
                "MachineConfiguration",
                vec!["mem_size_mib", "vcpu_count"],
                json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false}),
            ),
            (
                "BootSource",
                vec!["kernel_image_path"],
                json!({"kernel_image_path": "./vmlinux", "initrd_path": "./initrd", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}),
            ),
            (
                "Drive",
                vec!["drive_id", "is_root_device"],
                json!({"drive_id": "rootfs", "path_on_host": "./rootfs.ext4", "is_root_device": true, "is_read_only": false}),
            ),
            (
                "NetworkInterface",
                vec!["host_dev_name", "iface_id"],
                json!({"iface_id": "eth0", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}),
            ),
            (
                "Vsock",
                vec!["guest_cid", "uds_path"],
                json!({"guest_cid": 3, "uds_path": "./v.sock"}),
            ),
            (
                "InstanceActionInfo",
                vec!["action_type"],
                json!({"action_type": "InstanceStart"}),
            ),
            ("Vm", vec!["state"], json!({"state": "Paused"})),
            (
                "SnapshotCreateParams",
                vec!["mem_file_path", "snapshot_path"],
                json!({"snapshot_type": "Full", "snapshot_path": "./snapshot_file", "mem_file_path": "./mem_file"}),
            ),
            (
                "SnapshotLoadParams",
                vec!["snapshot_path"],
                json!({"snapshot_path": "./snapshot_file", "mem_backend": {"backend_path": "./mem_file", "backend_type": "File"}, "resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}], "vsock_override": {"uds_path": "./v2.sock"}}),
            ),
        ]
    }

    fn same_shape(ours: &Value, theirs: &Value, at: &str) {
        match (ours, theirs) {
            (Value::Object(o), Value::Object(t)) => {
                for (k, v) in o {
                    let tv = t
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}.{k} is not in the schema example"));
                    same_shape(v, tv, &format!("{at}.{k}"));
                }
            }
            (Value::Array(o), Value::Array(t)) => {
                if let (Some(o), Some(t)) = (o.first(), t.first()) {
                    same_shape(o, t, &format!("{at}[]"));
                }
            }
            (Value::String(_), Value::String(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Number(_), Value::Number(_)) => {}
            _ => panic!("{at}: type differs: ours {ours}, swagger {theirs}"),
        }
    }

    fn check(schema: &str, ours: &Value) {
        let (_, required, example) = swagger().into_iter().find(|s| s.0 == schema).unwrap();
        for r in required {
            assert!(
                ours.get(r).is_some(),
                "{schema}: required {r} missing in {ours}"
            );
        }
        same_shape(ours, &example, schema);
    }

    #[test]
    fn request_bodies_match_the_swagger_shapes() {
        let c = cfg();
        check(
            "Logger",
            &json(&Logger {
                log_path: FC_LOG.into(),
                level: "Info".into(),
                show_level: true,
                show_log_origin: false,
            }),
        );
        check(
            "Metrics",
            &json(&Metrics {
                metrics_path: METRICS_FILE.into(),
            }),
        );
        let reqs = boot_requests(&c, Path::new("/img/vmlinux"));
        let paths: Vec<&str> = reqs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/machine-config",
                "/boot-source",
                "/drives/disk0",
                "/network-interfaces/eth0",
                "/vsock"
            ]
        );
        let schemas = [
            "MachineConfiguration",
            "BootSource",
            "Drive",
            "NetworkInterface",
            "Vsock",
        ];
        for ((_, body), schema) in reqs.iter().zip(schemas) {
            check(schema, body);
        }
        assert_eq!(
            reqs[0].1,
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false})
        );
        assert_eq!(reqs[1].1["kernel_image_path"], "/img/vmlinux");
        assert_eq!(reqs[1].1["initrd_path"], "/img/initrd.img");
        assert_eq!(
            reqs[2].1,
            json!({"drive_id": "disk0", "is_root_device": false, "is_read_only": false, "path_on_host": "/d/root.ext4"})
        );
        assert_eq!(
            reqs[3].1,
            json!({"iface_id": "eth0", "host_dev_name": "fftap0", "guest_mac": "06:00:ac:10:00:02"})
        );
        assert_eq!(reqs[4].1, json!({"guest_cid": 3, "uds_path": "vsock.sock"}));
        check(
            "InstanceActionInfo",
            &json(&Action {
                action_type: "InstanceStart",
            }),
        );
        check("Vm", &json(&VmState { state: "Resumed" }));
        check(
            "SnapshotCreateParams",
            &json(&SnapshotCreate {
                snapshot_type: "Full",
                snapshot_path: "s/vmstate".into(),
                mem_file_path: "s/memory".into(),
            }),
        );
        let load = json(&snapshot_load(
            &c,
            Path::new("/s/vmstate"),
            Path::new("/s/memory"),
        ));
        check("SnapshotLoadParams", &load);
        assert_eq!(
            load["mem_backend"],
            json!({"backend_type": "File", "backend_path": "/s/memory"})
        );
        assert_eq!(load["network_overrides"][0]["host_dev_name"], "fftap0");
        assert_eq!(load["resume_vm"], true);
    }

    #[test]
    fn boot_args_carry_the_guest_config() {
        let c = cfg();
        let args = boot_args(&c);
        assert!(
            args.starts_with("console=ttyS0 reboot=k panic=1 pci=off "),
            "{args}"
        );
        let guest = GuestConfig::from_kernel_cmdline(&args).unwrap();
        assert_eq!(guest.vm_id, "vm1");
        assert_eq!(guest.cmd, c.cmd);
        assert_eq!(guest.disks.len(), 1);
        assert_eq!(guest.disks[0].role, GuestDiskRole::Root);
        let net = guest.net.unwrap();
        assert_eq!(
            (net.address.as_str(), net.gateway.as_str()),
            ("10.213.0.5/24", "10.213.0.1")
        );
        assert_eq!(guest_channel_sock(), "vsock.sock_1024");
    }
}
