//! Node networking on this host for real: a bridge per test (unique name and subnet), TAPs,
//! nftables and tc, and real QEMU/TCG guests on them. Needs root, `ip`, `nft`, `tc`.
//!
//! All traffic stays on this machine: between the host and addresses in the test's own
//! 10.213.x.0/24 on its own bridge (and 169.254.169.254 on a dummy interface the metadata test
//! creates). Every bridge, TAP, IFB, nft table and dummy interface is removed by a guard, also
//! when a test fails. Boots are serialised; at most three guests run at once.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use firefleet_testkit::net::receive_rate;
use firefleet_testkit::vmm::*;
use firefleet_vmm::net::{rules, NetAttachment, NetConfig, NetLimits, NodeNetwork};
use firefleet_vmm::{QemuRuntime, Runtime};

const BOOT: Duration = Duration::from_secs(90);

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// A node network on a fresh bridge and subnet, torn down on drop.
struct TestNet {
    net: NodeNetwork,
    bridge: String,
    _state: tempfile::TempDir,
}

impl TestNet {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        static SUBNETS: Mutex<()> = Mutex::new(());
        let _g = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
        let n = N.fetch_add(1, Ordering::SeqCst);
        let bridge = format!("ffn{}x{n}", std::process::id() % 1_000_000);
        // A /24 no interface of this host uses yet.
        let (_, addrs) = sh("ip", &["-o", "-4", "addr", "show"]);
        let start = std::process::id() * 7 + n * 13;
        let third = (0..151u32)
            .map(|i| (start + i) % 151 + 100)
            .find(|x| !addrs.contains(&format!("10.213.{x}.")))
            .expect("a free 10.213.x.0/24");
        let state = tempfile::tempdir().unwrap();
        let cfg = NetConfig {
            bridge: bridge.clone(),
            subnet: format!("10.213.{third}.0/24").parse().unwrap(),
            ..NetConfig::new(state.path())
        };
        match NodeNetwork::ensure(&cfg) {
            Ok(net) => Self {
                net,
                bridge,
                _state: state,
            },
            Err(e) => {
                cleanup_by_name(&bridge);
                panic!("NodeNetwork::ensure on {bridge}: {e}");
            }
        }
    }

    fn gateway(&self) -> Ipv4Addr {
        self.net.gateway()
    }
}

fn cleanup_by_name(bridge: &str) {
    let table = rules::table_name(bridge);
    let _ = sh("nft", &["delete", "table", "bridge", &table]);
    let _ = sh("nft", &["delete", "table", "inet", &table]);
    if link_exists(bridge) {
        let _ = sh("ip", &["link", "del", "dev", bridge]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Err(e) = self.net.teardown() {
            eprintln!("teardown of {}: {e}", self.bridge);
        }
        // Whatever teardown could not do.
        if let Ok(allocs) = self.net.allocations() {
            for a in allocs.values() {
                for dev in [a.tap.clone(), rules::ifb_for(&a.tap)] {
                    if link_exists(&dev) {
                        let _ = sh("ip", &["link", "del", "dev", &dev]);
                    }
                }
            }
        }
        cleanup_by_name(&self.bridge);
    }
}

/// A dummy interface (or a port-less bridge) holding an address, removed on drop.
struct Dummy(String);

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", "dev", &self.0]);
    }
}

fn sh_cmd(script: &str) -> Option<Vec<String>> {
    Some(vec!["sh".into(), "-c".into(), script.into()])
}

fn boot(rt: &QemuRuntime, id: &str, att: &NetAttachment, script: &str) -> VmGuard {
    let mut cfg = launch_config(id, sh_cmd(script));
    cfg.net = Some(att.clone());
    launch_cfg(rt, &cfg)
}

fn wait_off(rt: &QemuRuntime, id: &str) -> String {
    wait_for("power off", BOOT, rt, id, || {
        rt.observe(id).unwrap().powered_off
    });
    console_text(rt, id)
}

/// `GET /` from the host; the body if it answered.
fn http_get(ip: Ipv4Addr, port: u16) -> Option<String> {
    let addr = SocketAddr::from((ip, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_http(rt: &QemuRuntime, id: &str, ip: Ipv4Addr, want: &str) -> Duration {
    let started = Instant::now();
    let mut last = None;
    wait_for("the guest's HTTP server", BOOT, rt, id, || {
        last = http_get(ip, 8080);
        last.as_deref().is_some_and(|b| b.contains(want))
    });
    started.elapsed()
}

const HTTPD: &str = "echo hello-$VM > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp";

#[test]
fn node_network_on_a_real_bridge() {
    let t = TestNet::new();
    let br = t.bridge.clone();
    let (_, link) = sh("ip", &["-d", "link", "show", "dev", &br]);
    assert!(link.contains("bridge") && link.contains("UP"), "{link}");
    let (_, addr) = sh("ip", &["-4", "addr", "show", "dev", &br]);
    assert!(addr.contains(&format!("{}/24", t.gateway())), "{addr}");
    let fwd = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{br}/forwarding")).unwrap();
    assert_eq!(fwd.trim(), "1");
    // ensure again: adopts, same rules, no error.
    NodeNetwork::ensure(t.net.config()).unwrap();

    let limits = NetLimits {
        egress_mbit: Some(8),
        ingress_mbit: Some(16),
    };
    let a = t.net.attach("real-a", "alpha", &limits).unwrap();
    let b = t
        .net
        .attach("real-b", "beta", &NetLimits::default())
        .unwrap();
    assert_ne!(a.guest_ip, b.guest_ip);
    assert_eq!(
        t.net.attach("real-a", "alpha", &limits).unwrap(),
        a,
        "idempotent"
    );
    let (_, tap) = sh("ip", &["-d", "link", "show", "dev", &a.tap]);
    assert!(
        tap.contains("tun") && tap.contains(&format!("master {br}")),
        "{tap}"
    );
    let (_, qd) = sh("tc", &["qdisc", "show", "dev", &a.tap]);
    assert!(qd.contains("tbf") && qd.contains("ingress"), "{qd}");
    let (_, qd) = sh("tc", &["qdisc", "show", "dev", &rules::ifb_for(&a.tap)]);
    assert!(qd.contains("tbf") && qd.contains("rate 8Mbit"), "{qd}");
    let table = rules::table_name(&br);
    let (ok, ruleset) = sh("nft", &["list", "table", "bridge", &table]);
    assert!(ok, "{ruleset}");
    let alpha = rules::tenant_set("alpha");
    assert!(ruleset.contains(&format!("set {alpha}")), "{ruleset}");
    assert!(
        ruleset.contains(&a.tap) && ruleset.contains(&b.tap),
        "{ruleset}"
    );
    assert!(ruleset.contains(&format!("iifname @{alpha} oifname @{alpha} accept")));

    // Limits removed on re-attach: the IFB goes away.
    t.net
        .attach("real-a", "alpha", &NetLimits::default())
        .unwrap();
    assert!(!link_exists(&rules::ifb_for(&a.tap)));

    // Agent restart: a new instance on the same state directory knows both.
    let again = NodeNetwork::ensure(t.net.config()).unwrap();
    assert_eq!(again.attachment("real-b").unwrap(), Some(b.clone()));

    t.net.detach("real-b").unwrap();
    t.net.detach("real-b").unwrap();
    assert!(!link_exists(&b.tap));
    let (_, ruleset) = sh("nft", &["list", "table", "bridge", &table]);
    assert!(!ruleset.contains(&b.tap), "{ruleset}");

    t.net.teardown().unwrap();
    assert!(!link_exists(&br) && !link_exists(&a.tap));
    let (ok, _) = sh("nft", &["list", "table", "bridge", &table]);
    assert!(!ok, "table removed");
}

#[test]
fn host_reaches_a_service_in_the_guest() {
    let _s = serial();
    let t = TestNet::new();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let att = t.net.attach("web", "alpha", &NetLimits::default()).unwrap();
    let _vm = boot(&rt, "web", &att, &HTTPD.replace("$VM", "web"));
    let took = wait_http(&rt, "web", att.guest_ip, "hello-web");
    let console = console_text(&rt, "web");
    eprintln!(
        "host reached http://{}:8080/ {took:?} after launch",
        att.guest_ip
    );
    assert!(
        console.contains(&format!("net: eth0 {}/24", att.guest_ip)),
        "{console}"
    );
}

#[test]
fn tenants_are_isolated_on_the_bridge() {
    let _s = serial();
    let t = TestNet::new();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let none = NetLimits::default();
    let a1 = t.net.attach("a1", "alpha", &none).unwrap();
    let a2 = t.net.attach("a2", "alpha", &none).unwrap();
    let b1 = t.net.attach("b1", "beta", &none).unwrap();
    let _v1 = boot(&rt, "a1", &a1, &HTTPD.replace("$VM", "a1"));
    wait_http(&rt, "a1", a1.guest_ip, "hello-a1");

    let probe = format!(
        "if timeout 8 wget -q -O - http://{}:8080/; then echo REACH=yes; else echo REACH=no; fi",
        a1.guest_ip
    );
    let _v2 = boot(&rt, "a2", &a2, &probe);
    let _v3 = boot(&rt, "b1", &b1, &probe);
    let same = wait_off(&rt, "a2");
    let other = wait_off(&rt, "b1");
    eprintln!("--- a2 (alpha) ---\n{same}--- b1 (beta) ---\n{other}---");
    assert!(
        same.contains("hello-a1") && same.contains("REACH=yes"),
        "{same}"
    );
    assert!(
        other.contains("REACH=no") && !other.contains("hello-a1"),
        "{other}"
    );
    // The host still reaches both tenants.
    assert!(http_get(a1.guest_ip, 8080).is_some_and(|b| b.contains("hello-a1")));
    // The default drop of the forward chain (its last rule; the isolated VMs' drops come
    // first) is what stopped b1 (its ARP requests, at least).
    let table = rules::table_name(&t.bridge);
    let (_, chain) = sh("nft", &["list", "chain", "bridge", &table, "forward"]);
    let dropped: u64 = chain
        .split("counter packets ")
        .last()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "{chain}");
    eprintln!("forward chain dropped {dropped} frames between tenants");
}

/// Accepts connections on `l` in a thread and reports each peer's address.
fn count_accepts(l: TcpListener) -> std::sync::mpsc::Receiver<Ipv4Addr> {
    let (tx, rx) = std::sync::mpsc::channel();
    l.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if let Ok(SocketAddr::V4(peer)) = s.peer_addr() {
                let _ = tx.send(*peer.ip());
            }
            drop(s);
        }
    });
    rx
}

#[test]
fn guests_cannot_reach_the_metadata_address() {
    let _s = serial();
    let t = TestNet::new();
    let dummy = Dummy(format!("ffm{}", std::process::id() % 1_000_000));
    // A dummy interface; kernels without the dummy driver get a port-less bridge instead.
    let (ok, out) = sh("ip", &["link", "add", "dev", &dummy.0, "type", "dummy"]);
    if !ok {
        let (ok, out2) = sh("ip", &["link", "add", "dev", &dummy.0, "type", "bridge"]);
        assert!(ok, "{out}{out2}");
    }
    let (ok, out) = sh(
        "ip",
        &["addr", "add", "169.254.169.254/32", "dev", &dummy.0],
    );
    assert!(ok, "{out}");
    let (ok, out) = sh("ip", &["link", "set", "dev", &dummy.0, "up"]);
    assert!(ok, "{out}");

    let meta = TcpListener::bind("169.254.169.254:8775").unwrap();
    let gw = TcpListener::bind((t.gateway(), 0)).unwrap();
    let gw_port = gw.local_addr().unwrap().port();
    let meta_seen = count_accepts(meta);
    let gw_seen = count_accepts(gw);
    // The host itself can connect.
    TcpStream::connect_timeout(
        &"169.254.169.254:8775".parse().unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(
        meta_seen.recv_timeout(Duration::from_secs(2)).unwrap(),
        Ipv4Addr::new(169, 254, 169, 254)
    );

    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let att = t
        .net
        .attach("meta", "alpha", &NetLimits::default())
        .unwrap();
    let script = format!(
        "echo x | timeout 5 nc {gw} {gw_port}; echo GW=$?; \
         echo x | timeout 5 nc 169.254.169.254 8775; echo META=$?",
        gw = t.gateway()
    );
    let _vm = boot(&rt, "meta", &att, &script);
    let console = wait_off(&rt, "meta");
    eprintln!("--- meta ---\n{console}---");
    // Control: the same guest reached the host on the gateway address.
    assert_eq!(
        gw_seen.recv_timeout(Duration::from_secs(2)).ok(),
        Some(att.guest_ip),
        "{console}"
    );
    assert!(
        meta_seen.recv_timeout(Duration::from_millis(500)).is_err(),
        "the guest reached the metadata listener: {console}"
    );
    assert!(
        console.contains("META=") && !console.contains("META=0"),
        "{console}"
    );
    drop(dummy);
}

/// [`receive_rate`] within a minute.
fn rate(l: &TcpListener, n: usize) -> f64 {
    receive_rate(l, n, Duration::from_secs(60)).expect("a connection within 60 s")
}

#[test]
fn egress_bandwidth_limit_holds() {
    // Low enough that a TCG guest on a loaded 2-core host is still clearly faster unlimited.
    const LIMIT_MBIT: u32 = 2;
    // 64 KiB blocks per transfer: free (4 MiB), limited (2 MiB, ~8 s), free again.
    const BLOCKS: [usize; 3] = [64, 32, 64];
    let _s = serial();
    let t = TestNet::new();
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind((t.gateway(), 0)).unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let limited = NetLimits {
        egress_mbit: Some(LIMIT_MBIT),
        ingress_mbit: None,
    };
    let att = t.net.attach("bw", "alpha", &NetLimits::default()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let rt = QemuRuntime::new(root.path().to_path_buf()).unwrap();
    let gw = t.gateway();
    // Three transfers, 3 s apart: free, limited, free again (the limit changes on the running
    // VM in between). Two free runs because a TCG guest's rate depends on the host's load.
    let script = ports
        .iter()
        .zip(BLOCKS)
        .map(|(p, n)| format!("dd if=/dev/zero bs=64k count={n} 2>/dev/null | nc {gw} {p}"))
        .collect::<Vec<_>>()
        .join("; sleep 3; ");
    let _vm = boot(&rt, "bw", &att, &format!("{script}; echo sent"));
    let free1 = rate(&listeners[0], BLOCKS[0] << 16);
    assert_eq!(t.net.attach("bw", "alpha", &limited).unwrap(), att);
    let limited_rate = rate(&listeners[1], BLOCKS[1] << 16);
    assert_eq!(
        t.net.attach("bw", "alpha", &NetLimits::default()).unwrap(),
        att
    );
    let free2 = rate(&listeners[2], BLOCKS[2] << 16);
    let free_rate = free1.max(free2);
    let limit_bytes = f64::from(LIMIT_MBIT) * 1e6 / 8.0;
    eprintln!(
        "egress limit {LIMIT_MBIT} Mbit/s ({:.2} MB/s): measured {:.2} MB/s ({:.2}x the limit); \
         without a limit {:.2} and {:.2} MB/s",
        limit_bytes / 1e6,
        limited_rate / 1e6,
        limited_rate / limit_bytes,
        free1 / 1e6,
        free2 / 1e6
    );
    assert!(
        limited_rate <= 1.25 * limit_bytes,
        "limited {limited_rate} B/s"
    );
    assert!(
        limited_rate >= 0.5 * limit_bytes,
        "limited {limited_rate} B/s is far below the limit"
    );
    assert!(
        free_rate > 2.0 * limited_rate,
        "unlimited {free_rate} B/s vs limited {limited_rate} B/s"
    );
    wait_off(&rt, "bw");
}
