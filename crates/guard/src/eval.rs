//! Evaluating one rule's conditions against one VM's current sample and recent history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use crate::model::{Connection, GuestSample, Process};
use crate::rules::When;

/// Names that count as a shell (compared with `comm` and the executable's file name).
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish",
];

/// Most items listed in one evidence entry.
const EVIDENCE_ITEMS: usize = 8;

/// Evidence: a small ordered map of names to values.
pub type Evidence = BTreeMap<String, String>;

/// What the history keeps of one sample.
#[derive(Debug, Clone)]
pub(crate) struct Snap {
    pub at_ms: u64,
    pub process_count: Option<usize>,
    /// The guest's cumulative failed TCP connection attempts.
    pub tcp_attempt_fails: Option<u64>,
    /// When the guest booted (sample time less its uptime), if it reported.
    pub boot_ms: Option<u64>,
    /// Outbound (remote address, remote port), at most `max_outbound_per_sample`.
    pub outbound: Vec<(String, u16)>,
}

/// Everything a rule may look at for one sample.
pub(crate) struct Ctx<'a> {
    pub at_ms: u64,
    pub guest: Option<&'a GuestSample>,
    /// CPU share of one CPU per pid, over the last interval.
    pub proc_cpu: &'a BTreeMap<u32, f64>,
    /// Outbound connections of this sample.
    pub outbound: Vec<&'a Connection>,
    /// Guest egress bytes per second over the last interval.
    pub egress_rate: Option<f64>,
    /// Recent samples, oldest first, this one last.
    pub history: &'a VecDeque<Snap>,
}

/// Connections that are not inbound to one of the guest's own listeners.
pub(crate) fn outbound(guest: &GuestSample) -> Vec<&Connection> {
    let listening: BTreeSet<u16> = guest.listeners.iter().map(|l| l.port).collect();
    guest
        .connections
        .iter()
        .filter(|c| {
            c.remote_port != 0
                && !c.state.eq_ignore_ascii_case("LISTEN")
                && !listening.contains(&c.local_port)
        })
        .collect()
}

fn is_shell(p: &Process) -> bool {
    let [comm, exe] = p.names();
    if SHELLS.contains(&comm.as_str()) || SHELLS.contains(&exe.as_str()) {
        return true;
    }
    // `busybox sh ...`; busybox applets such as httpd are not shells.
    exe == "busybox"
        && p.cmdline
            .get(1)
            .is_some_and(|a| SHELLS.contains(&a.to_ascii_lowercase().as_str()))
}

/// Normalised address for comparison: IPv4-mapped IPv6 becomes IPv4.
fn norm_addr(a: &str) -> String {
    match a.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Ok(ip) => ip.to_string(),
        Err(_) => a.to_ascii_lowercase(),
    }
}

fn is_loopback(a: &str) -> bool {
    a.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) || a.eq_ignore_ascii_case("localhost")
}

fn list<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut v: Vec<String> = items.into_iter().take(EVIDENCE_ITEMS + 1).collect();
    if v.len() > EVIDENCE_ITEMS {
        v.truncate(EVIDENCE_ITEMS);
        v.push("...".into());
    }
    v.join(", ")
}

fn conn_text(c: &Connection) -> String {
    format!(
        "{}:{} ({} {})",
        c.remote_addr, c.remote_port, c.proto, c.state
    )
}

/// Whether all conditions of `when` hold now; the evidence if so.
pub(crate) fn evaluate(when: &When, ctx: &Ctx<'_>) -> Option<Evidence> {
    let mut ev = Evidence::new();
    let needs_guest = when.process_name_in.is_some()
        || when.process_cpu_above.is_some()
        || when.shell_stdio_socket == Some(true)
        || when.shell_outbound_connection == Some(true)
        || when.connect_port_in.is_some()
        || when.remote_addr_in.is_some()
        || when.distinct_remote_ports_above.is_some()
        || when.distinct_remote_hosts_above.is_some()
        || when.listener_port_not_in.is_some()
        || when.process_count_above.is_some()
        || when.process_growth_above.is_some()
        || when.failed_connects_above.is_some();
    let guest = match ctx.guest {
        Some(g) => Some(g),
        None if needs_guest => return None,
        None => None,
    };

    if let Some(guest) = guest {
        processes(when, ctx, guest, &mut ev)?;
        connections(when, ctx, &mut ev)?;
        windowed(when, ctx, &mut ev)?;
        if let Some(allowed) = &when.listener_port_not_in {
            let bad: Vec<String> = guest
                .listeners
                .iter()
                .filter(|l| !allowed.contains(&l.port) && !is_loopback(&l.addr))
                .map(|l| format!("{} {}:{}", l.proto, l.addr, l.port))
                .collect();
            if bad.is_empty() {
                return None;
            }
            ev.insert("listeners".into(), list(bad));
            ev.insert(
                "allowed_ports".into(),
                list(allowed.iter().map(u16::to_string)),
            );
        }
        if let Some(max) = when.process_count_above {
            let n = guest.processes.len();
            if n <= max {
                return None;
            }
            ev.insert("process_count".into(), format!("{n} > {max}"));
        }
    }

    if let Some(max) = when.egress_bytes_per_sec_above {
        let rate = ctx.egress_rate.filter(|r| *r > max)?;
        ev.insert(
            "egress_bytes_per_sec".into(),
            format!("{rate:.0} > {max:.0}"),
        );
    }
    Some(ev)
}

/// Process conditions, all on the same process.
fn processes(when: &When, ctx: &Ctx<'_>, guest: &GuestSample, ev: &mut Evidence) -> Option<()> {
    let shell_socket = when.shell_stdio_socket == Some(true);
    let shell_out = when.shell_outbound_connection == Some(true);
    if when.process_name_in.is_none()
        && when.process_cpu_above.is_none()
        && !shell_socket
        && !shell_out
    {
        return Some(());
    }
    let names: Option<Vec<String>> = when
        .process_name_in
        .as_ref()
        .map(|v| v.iter().map(|n| n.to_ascii_lowercase()).collect());
    let out_inodes: BTreeMap<u64, &Connection> = ctx
        .outbound
        .iter()
        .filter(|c| c.inode != 0)
        .map(|c| (c.inode, *c))
        .collect();
    let mut hits = Vec::new();
    for p in &guest.processes {
        if let Some(names) = &names {
            let [comm, exe] = p.names();
            if !names.iter().any(|n| *n == comm || *n == exe) {
                continue;
            }
        }
        let cpu = ctx.proc_cpu.get(&p.pid).copied();
        if let Some(min) = when.process_cpu_above {
            if !cpu.is_some_and(|c| c > min) {
                continue;
            }
        }
        if (shell_socket || shell_out) && !is_shell(p) {
            continue;
        }
        if shell_socket && p.stdio_sockets().next().is_none() {
            continue;
        }
        let mut text = format!("{} (pid {}", p.comm, p.pid);
        if shell_out {
            let Some(c) = p.stdio_sockets().find_map(|i| out_inodes.get(&i)) else {
                continue;
            };
            text.push_str(&format!(", stdio -> {}", conn_text(c)));
        } else if shell_socket {
            text.push_str(&format!(
                ", stdin {}, stdout {}",
                p.stdin.as_deref().unwrap_or("-"),
                p.stdout.as_deref().unwrap_or("-")
            ));
        }
        if let Some(c) = cpu {
            text.push_str(&format!(", cpu {c:.2}"));
        }
        text.push(')');
        hits.push(text);
    }
    if hits.is_empty() {
        return None;
    }
    ev.insert("processes".into(), list(hits));
    if let Some(min) = when.process_cpu_above {
        ev.insert("cpu_threshold".into(), format!("{min:.2}"));
    }
    Some(())
}

/// Connection conditions, all on the same outbound connection.
fn connections(when: &When, ctx: &Ctx<'_>, ev: &mut Evidence) -> Option<()> {
    if when.connect_port_in.is_none() && when.remote_addr_in.is_none() {
        return Some(());
    }
    let addrs: Option<Vec<String>> = when
        .remote_addr_in
        .as_ref()
        .map(|v| v.iter().map(|a| norm_addr(a)).collect());
    let hits: Vec<String> = ctx
        .outbound
        .iter()
        .filter(|c| {
            when.connect_port_in
                .as_ref()
                .is_none_or(|ports| ports.contains(&c.remote_port))
                && addrs
                    .as_ref()
                    .is_none_or(|a| a.contains(&norm_addr(&c.remote_addr)))
        })
        .map(|c| conn_text(c))
        .collect();
    if hits.is_empty() {
        return None;
    }
    ev.insert("connections".into(), list(hits));
    Some(())
}

/// Conditions over the last `window_secs`.
fn windowed(when: &When, ctx: &Ctx<'_>, ev: &mut Evidence) -> Option<()> {
    let from = ctx.at_ms.saturating_sub(when.window_ms());
    let window = || ctx.history.iter().filter(move |s| s.at_ms >= from);
    let secs = when.window_ms() / 1000;
    if let Some(max) = when.distinct_remote_ports_above {
        let ports: BTreeSet<u16> = window()
            .flat_map(|s| s.outbound.iter().map(|(_, p)| *p))
            .collect();
        if ports.len() <= max {
            return None;
        }
        ev.insert(
            "distinct_remote_ports".into(),
            format!("{} > {max} in {secs} s", ports.len()),
        );
        ev.insert("ports".into(), list(ports.iter().map(u16::to_string)));
    }
    if let Some(max) = when.distinct_remote_hosts_above {
        let hosts: BTreeSet<&str> = window()
            .flat_map(|s| s.outbound.iter().map(|(h, _)| h.as_str()))
            .collect();
        if hosts.len() <= max {
            return None;
        }
        ev.insert(
            "distinct_remote_hosts".into(),
            format!("{} > {max} in {secs} s", hosts.len()),
        );
        ev.insert("hosts".into(), list(hosts.iter().map(|h| (*h).to_string())));
    }
    if let Some(max) = when.process_growth_above {
        let now = ctx.history.back().and_then(|s| s.process_count)?;
        let low = window().filter_map(|s| s.process_count).min()?;
        let growth = now.saturating_sub(low);
        let over_gap = growth_over_gap(ctx, from, when.window_ms(), now as u64, |s| {
            s.process_count.map(|c| c as u64)
        });
        if growth > max {
            ev.insert(
                "process_growth".into(),
                format!("{low} -> {now} (+{growth} > {max}) in {secs} s"),
            );
        } else if let Some((before, gap_s, per_window)) =
            over_gap.filter(|(_, _, g)| *g > max as u64)
        {
            ev.insert(
                "process_growth".into(),
                format!("{before} -> {now} in {gap_s} s without a sample: {per_window} per {secs} s > {max}"),
            );
        } else {
            return None;
        }
    }
    if let Some(max) = when.failed_connects_above {
        let last = ctx.history.back()?;
        let now = last.tcp_attempt_fails?;
        // A counter that went down is a reset (the guest booted again): count from there.
        let mut low = now;
        for s in window().filter_map(|s| s.tcp_attempt_fails) {
            low = if s > now { now } else { low.min(s) };
        }
        // A guest that booted within the window counted from zero then, even if its first
        // sample came after the scan.
        if last.boot_ms.is_some_and(|b| b >= from) {
            low = 0;
        }
        let failed = now - low;
        let over_gap = growth_over_gap(ctx, from, when.window_ms(), now, |s| s.tcp_attempt_fails);
        if failed > max {
            ev.insert(
                "failed_connects".into(),
                format!("{failed} > {max} in {secs} s"),
            );
        } else if let Some((before, gap_s, per_window)) = over_gap.filter(|(_, _, g)| *g > max) {
            ev.insert(
                "failed_connects".into(),
                format!("{before} -> {now} in {gap_s} s without a sample: {per_window} per {secs} s > {max}"),
            );
        } else {
            return None;
        }
    }
    Some(())
}

/// When no sample lies in the window but the current one (the guest was silent for longer),
/// the growth of a counter since the last sample before the window, scaled to one window:
/// `(value then, gap in s, growth per window)`. None when the window has other samples, there
/// is no earlier sample, or the counter went down (a reset).
fn growth_over_gap(
    ctx: &Ctx<'_>,
    from: u64,
    window_ms: u64,
    now: u64,
    value: impl Fn(&Snap) -> Option<u64>,
) -> Option<(u64, u64, u64)> {
    let in_window = ctx.history.iter().filter(|s| s.at_ms >= from).count();
    if in_window > 1 {
        return None;
    }
    let before = ctx.history.iter().rev().find(|s| s.at_ms < from)?;
    let then = value(before)?;
    let gap = ctx.at_ms.saturating_sub(before.at_ms).max(1);
    let grown = now.checked_sub(then)?;
    Some((then, gap / 1000, grown.saturating_mul(window_ms) / gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise() {
        assert_eq!(norm_addr("::ffff:169.254.169.254"), "169.254.169.254");
        assert_eq!(norm_addr("FD00:EC2::254"), "fd00:ec2::254");
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && !is_loopback("0.0.0.0"));
    }

    #[test]
    fn busybox_httpd_is_not_a_shell() {
        let p = |cmd: &[&str]| Process {
            comm: cmd[0].into(),
            cmdline: cmd.iter().map(|s| (*s).to_string()).collect(),
            ..Process::default()
        };
        assert!(!is_shell(&p(&["busybox", "httpd", "-f"])));
        assert!(is_shell(&p(&["busybox", "sh", "-c", "x"])));
        assert!(is_shell(&p(&["/bin/bash", "-i"])));
    }

    #[test]
    fn evidence_lists_are_capped() {
        let s = list((0..20).map(|i| i.to_string()));
        assert_eq!(s, "0, 1, 2, 3, 4, 5, 6, 7, ...");
    }
}
