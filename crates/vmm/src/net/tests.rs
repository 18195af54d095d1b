//! `NodeNetwork` against a fake host: which commands it runs, idempotence, recovery.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::*;

/// Records commands; keeps a set of links that `ip link add` / `ip tuntap add` / `ip link del`
/// change; fails commands that start with `fail_on`.
#[derive(Debug, Clone, Default)]
struct FakeHost {
    inner: Arc<Mutex<Fake>>,
}

#[derive(Debug, Default)]
struct Fake {
    commands: Vec<String>,
    links: BTreeSet<String>,
    sysctls: Vec<(String, String)>,
    last_nft: String,
    fail_on: Option<String>,
}

impl FakeHost {
    fn take_commands(&self) -> Vec<String> {
        std::mem::take(&mut self.inner.lock().unwrap().commands)
    }
    fn nft(&self) -> String {
        self.inner.lock().unwrap().last_nft.clone()
    }
    fn links(&self) -> BTreeSet<String> {
        self.inner.lock().unwrap().links.clone()
    }
}

impl Host for FakeHost {
    fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> Result<String, NetError> {
        let mut f = self.inner.lock().unwrap();
        let line = format!("{program} {}", args.join(" "));
        f.commands.push(line.clone());
        if f.fail_on.as_ref().is_some_and(|p| line.starts_with(p)) {
            return Err(NetError::Command {
                command: line,
                status: "exit status: 2".into(),
                stderr: "RTNETLINK answers: Operation not permitted".into(),
            });
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        match (program, a.as_slice()) {
            ("ip", ["link", "add", "name", n, ..]) | ("ip", ["tuntap", "add", "dev", n, ..]) => {
                assert!(f.links.insert(n.to_string()), "{n} created twice");
            }
            ("ip", ["link", "del", "dev", n]) => {
                assert!(f.links.remove(*n), "deleting missing {n}");
            }
            ("nft", _) => f.last_nft = stdin.unwrap_or_default().to_string(),
            _ => {}
        }
        Ok(String::new())
    }

    fn link_exists(&self, name: &str) -> bool {
        self.inner.lock().unwrap().links.contains(name)
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let mut f = self.inner.lock().unwrap();
        f.sysctls.push((key.into(), value.into()));
        Ok(())
    }
}

fn setup() -> (tempfile::TempDir, NetConfig, FakeHost) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NetConfig {
        bridge: "ffxtest".into(),
        ..NetConfig::new(dir.path())
    };
    (dir, cfg, FakeHost::default())
}

#[test]
fn ensure_creates_the_bridge_once() {
    let (_d, cfg, host) = setup();
    NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    let first = host.take_commands();
    assert_eq!(first[0], "ip link add name ffxtest type bridge");
    assert!(first.contains(&"ip addr replace 10.213.0.1/24 dev ffxtest".to_string()));
    assert!(first.contains(&"ip link set dev ffxtest up".to_string()));
    assert!(first.contains(&"nft -f -".to_string()));
    assert_eq!(
        host.inner.lock().unwrap().sysctls,
        vec![(
            "net/ipv4/conf/ffxtest/forwarding".to_string(),
            "1".to_string()
        )]
    );
    assert!(host.nft().contains("table bridge firefleet_ffxtest {"));
    // Again: adopts the bridge instead of creating it.
    NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    assert!(!host
        .take_commands()
        .iter()
        .any(|c| c.starts_with("ip link add")));
}

#[test]
fn attach_and_detach_are_idempotent() {
    let (_d, cfg, host) = setup();
    let net = NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    host.take_commands();
    let limits = NetLimits {
        egress_mbit: Some(8),
        ingress_mbit: None,
    };
    let a = net.attach("vm-a", "alpha", &limits).unwrap();
    assert_eq!(a.guest_ip, Ipv4Addr::new(10, 213, 0, 2));
    assert_eq!(a.gateway, Ipv4Addr::new(10, 213, 0, 1));
    assert_eq!(a.prefix_len, 24);
    let cmds = host.take_commands();
    let tap = a.tap.clone();
    let ifb = rules::ifb_for(&tap);
    assert!(cmds.contains(&format!("ip tuntap add dev {tap} mode tap")));
    assert!(cmds.contains(&format!("ip link set dev {tap} master ffxtest")));
    assert!(cmds.contains(&format!("ip link add name {ifb} type ifb")));
    assert!(cmds.iter().any(|c| c.contains("mirred egress redirect")));
    let set = rules::tenant_set("alpha");
    assert!(host.nft().contains(&format!(
        "set {set} {{ type ifname; elements = {{ \"{tap}\" }}; }}"
    )));

    // Again, now without limits: same attachment, no new TAP, the shaper goes away.
    let again = net.attach("vm-a", "alpha", &NetLimits::default()).unwrap();
    assert_eq!(again, a);
    let cmds = host.take_commands();
    assert!(!cmds.iter().any(|c| c.contains("tuntap add")), "{cmds:?}");
    assert!(cmds.contains(&format!("ip link del dev {ifb}")));
    assert_eq!(
        host.links(),
        BTreeSet::from(["ffxtest".to_string(), tap.clone()])
    );

    net.detach("vm-a").unwrap();
    assert!(!host.links().contains(&tap));
    assert!(!host.nft().contains(&tap));
    assert!(net.allocations().unwrap().is_empty());
    host.take_commands();
    net.detach("vm-a").unwrap();
    assert!(host.take_commands().is_empty(), "nothing left to do");

    // A different tenant for the same VM is refused.
    net.attach("vm-b", "alpha", &NetLimits::default()).unwrap();
    let err = net
        .attach("vm-b", "beta", &NetLimits::default())
        .unwrap_err();
    assert!(matches!(err, NetError::TenantMismatch { .. }), "{err}");
    let err = net
        .attach(
            "vm-c",
            "alpha",
            &NetLimits {
                egress_mbit: Some(0),
                ingress_mbit: None,
            },
        )
        .unwrap_err();
    assert!(matches!(err, NetError::InvalidConfig(_)), "{err}");
}

#[test]
fn a_new_instance_recovers_allocations() {
    let (dir, cfg, host) = setup();
    let net = NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    let a = net.allocate("one", "t").unwrap();
    let b = net.allocate("two", "t").unwrap();
    assert_ne!(a.guest_ip, b.guest_ip);
    drop(net);
    let net = NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    assert_eq!(net.allocate("one", "t").unwrap(), a);
    assert_eq!(net.attachment("two").unwrap(), Some(b.clone()));
    let c = net.allocate("three", "t").unwrap();
    assert!(c.guest_ip != a.guest_ip && c.guest_ip != b.guest_ip);
    net.release("one").unwrap();
    assert_eq!(net.allocate("four", "t").unwrap().guest_ip, a.guest_ip);
    // The file is plain JSON with what the brief promises.
    let text = std::fs::read_to_string(dir.path().join(IPAM_FILE)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let two = &v["allocations"]["two"];
    assert_eq!(two["ip"], b.guest_ip.to_string());
    assert_eq!(two["mac"], b.mac);
    assert_eq!(two["tap"], b.tap);
    assert_eq!(two["tenant"], "t");
    assert!(!dir.path().join("ipam.json.tmp").exists());

    // Another subnet on the same state is refused, as is a corrupt file.
    let other = NetConfig {
        subnet: "10.213.9.0/24".parse().unwrap(),
        ..cfg.clone()
    };
    let err = NodeNetwork::ensure_with(&other, host.clone()).unwrap_err();
    assert!(matches!(err, NetError::StateMismatch { .. }), "{err}");
    std::fs::write(dir.path().join(IPAM_FILE), b"{not json").unwrap();
    let err = NodeNetwork::ensure_with(&cfg, host).unwrap_err();
    assert!(matches!(err, NetError::CorruptState { .. }), "{err}");
}

#[test]
fn concurrent_allocations_across_instances_never_collide() {
    let (_d, cfg, host) = setup();
    NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (cfg, host) = (cfg.clone(), host.clone());
            std::thread::spawn(move || {
                // Each thread its own instance: only the file lock serialises them.
                let net = NodeNetwork::ensure_with(&cfg, host).unwrap();
                (0..20)
                    .map(|i| net.allocate(&format!("t{t}-{i}"), "x").unwrap().guest_ip)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in threads {
        for ip in t.join().unwrap() {
            assert!(all.insert(ip), "duplicate {ip}");
        }
    }
    assert_eq!(all.len(), 80);
}

#[test]
fn tool_failures_name_the_command_and_its_stderr() {
    let (_d, cfg, host) = setup();
    let net = NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    host.inner.lock().unwrap().fail_on = Some("ip tuntap".into());
    let err = net.attach("vm", "t", &NetLimits::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`ip tuntap add dev fft"), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    // Retry after the cause is gone: same allocation, completes.
    host.inner.lock().unwrap().fail_on = None;
    let a = net.attach("vm", "t", &NetLimits::default()).unwrap();
    assert_eq!(a.guest_ip, Ipv4Addr::new(10, 213, 0, 2));
    assert!(host.links().contains(&a.tap));
}

#[test]
fn teardown_removes_devices_and_tables_but_keeps_addresses() {
    let (_d, cfg, host) = setup();
    let net = NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    let a = net.attach("vm", "t", &NetLimits::default()).unwrap();
    net.teardown().unwrap();
    assert!(host.links().is_empty());
    assert!(host.nft().contains("delete table bridge firefleet_ffxtest"));
    assert!(!host.nft().contains('{'));
    let net = NodeNetwork::ensure_with(&cfg, host.clone()).unwrap();
    assert_eq!(net.attach("vm", "t", &NetLimits::default()).unwrap(), a);
}

#[test]
fn guest_net_and_qemu_arguments() {
    let a = NetAttachment {
        tap: "fft0123456789ab".into(),
        mac: "02:11:22:33:44:55".into(),
        guest_ip: Ipv4Addr::new(10, 213, 0, 5),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 213, 0, 1),
    };
    let g = guest_net(&a);
    assert_eq!(g.address, "10.213.0.5/24");
    assert_eq!(g.gateway, "10.213.0.1");
    assert_eq!(g.mac, "02:11:22:33:44:55");
    let cfg = crate::runtime::LaunchConfig {
        id: "vm1".into(),
        vcpus: 1,
        memory_mib: 256,
        image: crate::image::Image {
            digest: "sha256:00".into(),
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            vmlinux: None,
        },
        cmd: None,
        accel: firefleet_types::Accel::Tcg,
        net: Some(a),
        disks: Vec::new(),
    };
    let joined = crate::qemu::cmdline::qemu_args(&cfg, None).join(" ");
    assert!(
        joined.contains("-netdev tap,id=n0,ifname=fft0123456789ab,script=no,downscript=no"),
        "{joined}"
    );
    assert!(
        joined.contains("-device virtio-net-device,netdev=n0,mac=02:11:22:33:44:55"),
        "{joined}"
    );
    let line = crate::qemu::cmdline::kernel_cmdline(&cfg, None);
    let guest = firefleet_guest::config::GuestConfig::from_kernel_cmdline(&line).unwrap();
    assert_eq!(guest.net, Some(g));
    let no_net = crate::runtime::LaunchConfig { net: None, ..cfg };
    assert!(!crate::qemu::cmdline::qemu_args(&no_net, None)
        .join(" ")
        .contains("-netdev"));
}
