//! Guest networking: brings up `lo` (always) and the NIC whose MAC the host chose, with the
//! address and default route from the config, using busybox `ip` (`/sbin/ip`). Failures are
//! printed on the console and never stop the guest.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firefleet_guest::config::GuestNet;

/// Where busybox puts `ip` (`sbin/ip` in Debian's busybox-static), else PATH.
const IP_PATHS: &[&str] = &["/sbin/ip", "/bin/ip", "/usr/sbin/ip"];
/// How long to wait for the NIC to appear after `virtio_net` loaded.
const NIC_WAIT: Duration = Duration::from_secs(3);

fn say(msg: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "firefleet-guest: net: {msg}");
    let _ = out.flush();
}

/// Configures the network if the config has one; reports problems on the console.
pub fn configure(net: Option<&GuestNet>) {
    let Some(net) = net else {
        // Loopback is needed without a NIC too: the function runtime forwards invocations to
        // the workload on 127.0.0.1.
        if let Err(e) = ip(&[
            "link".into(),
            "set".into(),
            "dev".into(),
            "lo".into(),
            "up".into(),
        ]) {
            say(&e);
        }
        return;
    };
    if let Err(e) = try_configure(net, Path::new("/sys/class/net")) {
        say(&e);
    }
}

fn try_configure(net: &GuestNet, sys_class_net: &Path) -> Result<(), String> {
    let deadline = Instant::now() + NIC_WAIT;
    let nic = loop {
        if let Some(n) = find_nic(sys_class_net, &net.mac) {
            break n;
        }
        if Instant::now() >= deadline {
            return Err(format!("no interface with MAC {}", net.mac));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Independent steps: do all of them, report each failure.
    let mut errors = Vec::new();
    for args in commands(&nic, net) {
        if let Err(e) = ip(&args) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        say(&format!("{nic} {} via {}", net.address, net.gateway));
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The `ip` invocations, in order.
fn commands(nic: &str, net: &GuestNet) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
    vec![
        v(&["link", "set", "dev", "lo", "up"]),
        v(&["addr", "replace", &net.address, "dev", nic]),
        v(&["link", "set", "dev", nic, "up"]),
        v(&[
            "route",
            "replace",
            "default",
            "via",
            &net.gateway,
            "dev",
            nic,
        ]),
    ]
}

/// The interface under `sys_class_net` whose `address` is `mac` (case-insensitive).
fn find_nic(sys_class_net: &Path, mac: &str) -> Option<String> {
    let entries = fs::read_dir(sys_class_net).ok()?;
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    names.into_iter().find_map(|p| {
        let addr = fs::read_to_string(p.join("address")).ok()?;
        addr.trim()
            .eq_ignore_ascii_case(mac.trim())
            .then(|| p.file_name()?.to_str().map(str::to_string))?
    })
}

fn ip(args: &[String]) -> Result<(), String> {
    let program = IP_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .copied()
        .unwrap_or("ip");
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nic_by_mac() {
        let dir = std::env::temp_dir().join(format!("ffnet-{}", std::process::id()));
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "02:AA:bb:cc:dd:ee")] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(find_nic(&dir, "02:aa:bb:cc:dd:ee").as_deref(), Some("eth0"));
        assert_eq!(find_nic(&dir, "02:00:00:00:00:01"), None);
        assert_eq!(find_nic(&dir.join("missing"), "02:aa:bb:cc:dd:ee"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn builds_the_ip_commands() {
        let net = GuestNet {
            address: "10.213.0.5/24".into(),
            gateway: "10.213.0.1".into(),
            mac: "02:00:00:00:00:05".into(),
        };
        let lines: Vec<String> = commands("eth0", &net).iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "link set dev lo up",
                "addr replace 10.213.0.5/24 dev eth0",
                "link set dev eth0 up",
                "route replace default via 10.213.0.1 dev eth0",
            ]
        );
    }
}
