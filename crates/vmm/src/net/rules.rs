//! The packet-filter policy and traffic shaping of a node network, as text and argument lists:
//! pure functions of the configuration and the IPAM state. `NodeNetwork` hands them to `nft`
//! and `tc`.
//!
//! Policy (two tables named `firefleet_<bridge>`, replaced as a whole in one `nft -f`
//! transaction, so there is never a moment without rules):
//! - `table bridge`: frames forwarded between two of our TAPs pass only if both TAPs are in the
//!   same tenant's set (`tenant_<hash>`); frames between a TAP and another port (an uplink; the
//!   host itself never goes through `forward`) pass. IPv4 from a TAP to the metadata address is
//!   dropped, both forwarded and delivered to the host. A released TAP is deleted with its
//!   allocation, so no TAP of ours is outside the sets.
//! - `table inet`: IPv4 from the bridge to the metadata address is dropped on input and forward
//!   (covers guests that route through the gateway); optional masquerade of the subnet.
//!
//! Bridge-family hooks see the frames of every bridge on the host, so every rule names this
//! network's TAP sets: one node network never judges another's frames (the kernels we run on do
//! not all support `meta ibrname`).
//!
//! Host <-> guest traffic is not filtered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::ipam::{Ipam, Ipv4Net};
use super::NetLimits;

/// The cloud metadata address guests must not reach.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The name of both nft tables of a bridge.
pub fn table_name(bridge: &str) -> String {
    format!("firefleet_{}", bridge.replace(['-', '.'], "_"))
}

/// The nft set holding a tenant's TAPs (tenant names are hashed: set names are identifiers).
pub fn tenant_set(tenant: &str) -> String {
    let h = Sha256::digest(tenant.as_bytes());
    format!("tenant_{}", hex::encode(&h[..6]))
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_decl(out: &mut String, name: &str, members: &[&str]) {
    let _ = write!(out, "  set {name} {{ type ifname;");
    if !members.is_empty() {
        let _ = write!(out, " elements = {{ {} }};", quoted_list(members));
    }
    out.push_str(" }\n");
}

/// The whole nft script for a bridge: creates-or-keeps, deletes and re-creates both tables in
/// one transaction, so applying it is idempotent and atomic.
pub fn ruleset(bridge: &str, subnet: Ipv4Net, ipam: &Ipam, masquerade: bool) -> String {
    let table = table_name(bridge);
    let mut tenants: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for a in ipam.allocations.values() {
        tenants
            .entry(a.tenant.as_str())
            .or_default()
            .push(a.tap.as_str());
    }
    let all: Vec<&str> = ipam.allocations.values().map(|a| a.tap.as_str()).collect();
    let isolated: Vec<&str> = ipam
        .allocations
        .values()
        .filter(|a| a.isolated)
        .map(|a| a.tap.as_str())
        .collect();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "# FireFleet node network {bridge} ({subnet}); generated, do not edit"
    );
    for family in ["bridge", "inet"] {
        let _ = writeln!(s, "table {family} {table}");
        let _ = writeln!(s, "delete table {family} {table}");
    }

    let _ = writeln!(s, "table bridge {table} {{");
    set_decl(&mut s, "taps", &all);
    set_decl(&mut s, "isolated", &isolated);
    for (tenant, taps) in &tenants {
        let _ = writeln!(s, "  # tenant {tenant}");
        set_decl(&mut s, &tenant_set(tenant), taps);
    }
    s.push_str("  chain forward {\n");
    s.push_str("    type filter hook forward priority 0; policy accept;\n");
    // Bridge-family hooks see the frames of every bridge on the host: every rule here names
    // this network's TAPs, so it never judges another bridge's traffic.
    let _ = writeln!(
        s,
        "    iifname @taps ether type ip ip daddr {METADATA_ADDR} drop"
    );
    // Isolated VMs: nothing in or out, to other VMs or through the host.
    s.push_str("    iifname @isolated counter drop\n");
    s.push_str("    oifname @isolated counter drop\n");
    s.push_str("    iifname != @taps accept\n");
    s.push_str("    oifname != @taps accept\n");
    for tenant in tenants.keys() {
        let set = tenant_set(tenant);
        let _ = writeln!(s, "    iifname @{set} oifname @{set} accept");
    }
    s.push_str("    counter drop\n");
    s.push_str("  }\n");
    s.push_str("  chain input {\n");
    s.push_str("    type filter hook input priority 0; policy accept;\n");
    let _ = writeln!(
        s,
        "    iifname @taps ether type ip ip daddr {METADATA_ADDR} drop"
    );
    s.push_str("    iifname @isolated counter drop\n");
    s.push_str("  }\n");
    s.push_str("  chain output {\n");
    s.push_str("    type filter hook output priority 0; policy accept;\n");
    s.push_str("    oifname @isolated counter drop\n");
    s.push_str("  }\n");
    s.push_str("}\n");

    let _ = writeln!(s, "table inet {table} {{");
    for hook in ["input", "forward"] {
        let _ = writeln!(s, "  chain {hook} {{");
        let _ = writeln!(
            s,
            "    type filter hook {hook} priority 0; policy accept;\n    iifname \"{bridge}\" ip daddr {METADATA_ADDR} drop"
        );
        s.push_str("  }\n");
    }
    if masquerade {
        s.push_str("  chain postrouting {\n");
        s.push_str("    type nat hook postrouting priority srcnat; policy accept;\n");
        let _ = writeln!(
            s,
            "    ip saddr {subnet} oifname != \"{bridge}\" masquerade"
        );
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The nft script that removes both tables of a bridge (if present).
pub fn delete_ruleset(bridge: &str) -> String {
    let table = table_name(bridge);
    let mut s = String::new();
    for family in ["bridge", "inet"] {
        let _ = writeln!(s, "table {family} {table}");
        let _ = writeln!(s, "delete table {family} {table}");
    }
    s
}

/// Token bucket depth for a rate: 50 ms worth, at least 32 KiB.
pub fn burst_bytes(mbit: u32) -> u64 {
    (u64::from(mbit) * 1_000_000 / 8 / 20).max(32 * 1024)
}

/// The IFB device that carries a TAP's received traffic (the guest's egress) through a shaper.
pub fn ifb_for(tap: &str) -> String {
    match tap.strip_prefix("fft") {
        Some(rest) => format!("ffi{rest}"),
        None => format!("ffi{}", &tap[..tap.len().min(12)]),
    }
}

/// `tc` invocations that set a TAP's limits, in order. Each entry is (args, may_fail): removals
/// of what may not exist are allowed to fail.
///
/// The guest's ingress is the TAP's egress: a token bucket filter on the TAP. The guest's
/// egress is what the TAP receives: the ingress hook redirects it (`mirred`) to the IFB device
/// [`ifb_for`], whose egress has the token bucket filter; the IFB hands it back to the TAP's
/// receive path, so the bridge still sees it arrive on the TAP. This shapes (queues) rather
/// than polices (drops), which keeps TCP close to the limit; it needs `sch_ingress`, `cls_u32`,
/// `act_mirred`, `ifb` and `sch_tbf`, not `act_police`. The caller creates the IFB device
/// before and deletes it when there is no egress limit.
pub fn tc_commands(tap: &str, limits: &NetLimits) -> Vec<(Vec<String>, bool)> {
    let v = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let tbf = |dev: &str, mbit: u32| {
        let rate = format!("{mbit}mbit");
        let burst = burst_bytes(mbit).to_string();
        v(&[
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", "50ms",
        ])
    };
    let mut cmds = vec![(v(&["qdisc", "del", "dev", tap, "ingress"]), true)];
    if let Some(mbit) = limits.egress_mbit {
        let ifb = ifb_for(tap);
        cmds.push((tbf(&ifb, mbit), false));
        cmds.push((
            v(&["qdisc", "add", "dev", tap, "handle", "ffff:", "ingress"]),
            false,
        ));
        cmds.push((
            v(&[
                "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "all", "prio", "1",
                "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev",
                &ifb,
            ]),
            false,
        ));
    }
    match limits.ingress_mbit {
        Some(mbit) => cmds.push((tbf(tap, mbit), false)),
        None => cmds.push((v(&["qdisc", "del", "dev", tap, "root"]), true)),
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Ipam {
        let mut ipam = Ipam::new("10.213.0.0/24".parse().unwrap(), "ffbr0");
        ipam.allocate("a1", "alpha").unwrap();
        ipam.allocate("a2", "alpha").unwrap();
        ipam.allocate("b1", "beta").unwrap();
        ipam
    }

    #[test]
    fn isolated_taps_are_dropped_both_ways_and_to_the_host() {
        let mut ipam = state();
        let plain = ruleset("ffbr0", ipam.subnet, &ipam, false);
        assert!(plain.contains("set isolated { type ifname; }"), "{plain}");
        if let Some(a) = ipam.allocations.get_mut("a2") {
            a.isolated = true;
        }
        let tap = ipam.allocations["a2"].tap.clone();
        let text = ruleset("ffbr0", ipam.subnet, &ipam, false);
        assert!(text.contains(&format!(
            "set isolated {{ type ifname; elements = {{ \"{tap}\" }}; }}"
        )));
        // In the forward chain the drop comes before the tenant's accept.
        let drop_in = text.find("iifname @isolated counter drop").unwrap();
        let accept = text
            .find(&format!("iifname @{} oifname", tenant_set("alpha")))
            .unwrap();
        assert!(drop_in < accept);
        assert!(text.contains("oifname @isolated counter drop"));
        assert_eq!(
            text.matches("iifname @isolated counter drop").count(),
            2,
            "{text}"
        );
        assert!(text.contains("type filter hook output priority 0"));
    }

    #[test]
    fn renders_per_tenant_sets_and_a_default_drop() {
        let ipam = state();
        let text = ruleset("ffbr0", ipam.subnet, &ipam, false);
        let tap = |id: &str| ipam.allocations[id].tap.clone();
        let alpha = tenant_set("alpha");
        let beta = tenant_set("beta");
        assert!(text.starts_with("# FireFleet"));
        assert!(
            text.contains("table bridge firefleet_ffbr0\ndelete table bridge firefleet_ffbr0\n")
        );
        assert!(text.contains(&format!(
            "set {alpha} {{ type ifname; elements = {{ \"{}\", \"{}\" }}; }}",
            tap("a1"),
            tap("a2")
        )));
        assert!(text.contains(&format!(
            "set {beta} {{ type ifname; elements = {{ \"{}\" }}; }}",
            tap("b1")
        )));
        assert!(text.contains(&format!("iifname @{alpha} oifname @{alpha} accept")));
        assert!(text.contains("counter drop"));
        assert!(text.contains("iifname \"ffbr0\" ip daddr 169.254.169.254 drop"));
        assert!(!text.contains("masquerade"));
        assert!(ruleset("ffbr0", ipam.subnet, &ipam, true)
            .contains("ip saddr 10.213.0.0/24 oifname != \"ffbr0\" masquerade"));
        // Same state, same text (the tables are replaced only as a whole anyway).
        assert_eq!(text, ruleset("ffbr0", ipam.subnet, &ipam, false));
    }

    #[test]
    fn renders_an_empty_network() {
        let ipam = Ipam::new("10.213.0.0/24".parse().unwrap(), "br-x");
        let text = ruleset("br-x", ipam.subnet, &ipam, false);
        assert!(text.contains("table bridge firefleet_br_x {"));
        assert!(text.contains("set taps { type ifname; }"));
        assert!(!text.contains("tenant_"));
    }

    #[test]
    fn shapes_both_directions() {
        let cmds = tc_commands(
            "fft0123456789ab",
            &NetLimits {
                egress_mbit: Some(8),
                ingress_mbit: Some(16),
            },
        );
        let lines: Vec<String> = cmds.iter().map(|(a, _)| a.join(" ")).collect();
        assert_eq!(lines[0], "qdisc del dev fft0123456789ab ingress");
        assert_eq!(
            lines[1],
            "qdisc replace dev ffi0123456789ab root tbf rate 8mbit burst 50000 latency 50ms"
        );
        assert_eq!(
            lines[2],
            "qdisc add dev fft0123456789ab handle ffff: ingress"
        );
        assert!(lines[3]
            .ends_with("u32 match u32 0 0 action mirred egress redirect dev ffi0123456789ab"));
        assert!(lines[4]
            .starts_with("qdisc replace dev fft0123456789ab root tbf rate 16mbit burst 100000"));
        let none: Vec<bool> = tc_commands("fftx", &NetLimits::default())
            .iter()
            .map(|(_, may_fail)| *may_fail)
            .collect();
        assert_eq!(none, vec![true, true], "no limits: only removals");
    }
}
