//! Test networks and traffic: TAPs from an agent's IPAM file, clean-up of a test agent's
//! network, and the rate at which a listener receives.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The TAP devices recorded in an agent's `ipam.json`, by VM id.
pub fn ipam_taps(ipam: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(ipam) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["allocations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(id, a)| Some((id.clone(), a["tap"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether network interface `name` exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Removes a test agent's bridge, the TAPs (and IFBs) in its `ipam.json` and its nft tables.
pub fn remove_network(bridge: &str, ipam: &Path) {
    let del = |dev: &str| {
        if link_exists(dev) {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", dev])
                .status();
        }
    };
    for (_, tap) in ipam_taps(ipam) {
        del(&tap);
        if let Some(rest) = tap.strip_prefix("fft") {
            del(&format!("ffi{rest}"));
        }
    }
    let table = format!("firefleet_{}", bridge.replace(['-', '.'], "_"));
    for family in ["bridge", "inet"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &table])
            .stderr(Stdio::null())
            .status();
    }
    del(bridge);
}

/// Accepts one connection on `l` (None if none comes within `timeout`), reads `n` bytes, returns
/// bytes/second from the first byte to the last.
pub fn receive_rate(l: &TcpListener, n: usize, timeout: Duration) -> Option<f64> {
    let mut s = accept_within(l, timeout)?.0;
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    let mut first = None;
    while got < n {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "EOF after {got} bytes");
        first.get_or_insert_with(Instant::now);
        got += k;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Some(got as f64 / secs)
}

/// A connection on `l` within `timeout` (the listener is left non-blocking).
pub fn accept_within(l: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true).unwrap();
    let start = Instant::now();
    while start.elapsed() < timeout {
        match l.accept() {
            Ok(c) => return Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}
