//! Address management for one node subnet: pure (no I/O). [`Ipam`] is the state persisted in
//! `ipam.json`; `NodeNetwork` loads it, changes it and writes it back under a file lock.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::NetError;
use crate::runtime::NetAttachment;

/// An IPv4 network: address and prefix length, written `10.213.0.0/24`. The address is the
/// network address (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// A network from its address and prefix length: the prefix must be 8..=30 (room for the
    /// gateway and at least one guest) and the host bits of `addr` zero.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, NetError> {
        let invalid = |why: &str| NetError::InvalidSubnet(format!("{addr}/{prefix_len}: {why}"));
        if !(8..=30).contains(&prefix_len) {
            return Err(invalid("prefix length must be 8..=30"));
        }
        let net = Self { addr, prefix_len };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(invalid("host bits set (not a network address)"));
        }
        Ok(net)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The first host address: the bridge's (gateway's) address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// The addresses guests may get: all hosts but the gateway (no network, no broadcast).
    pub fn guest_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.addr) + 2;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::InvalidSubnet(format!("{s:?}: expected a.b.c.d/len"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix_len: u8 = p.parse().map_err(|_| bad())?;
        Self::new(addr, prefix_len)
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One VM's network identity on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The guest NIC's MAC (locally administered, derived from the VM id).
    pub mac: String,
    /// The host TAP device.
    pub tap: String,
    /// The tenant owning the VM: VMs of different tenants cannot talk to each other.
    pub tenant: String,
    /// All traffic to and from the VM is dropped (the guard isolated it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
}

/// The IPAM state of one node network (the contents of `ipam.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ipam {
    /// Format version (1).
    pub version: u32,
    /// The subnet the addresses come from.
    pub subnet: Ipv4Net,
    /// The bridge the TAPs join (part of each TAP name's hash).
    pub bridge: String,
    /// VM id -> allocation.
    pub allocations: BTreeMap<String, Allocation>,
}

/// The state file format version.
pub const IPAM_VERSION: u32 = 1;

/// Linux interface names are at most 15 bytes.
pub const IFNAME_MAX: usize = 15;

fn hash(parts: &[&str], salt: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    if salt > 0 {
        h.update(salt.to_be_bytes());
    }
    h.finalize().into()
}

/// The MAC of a VM's NIC: `02:` (locally administered, unicast) and 5 bytes of a hash of the id.
/// `salt` is 0 except to step around a collision.
pub fn mac_for(vm_id: &str, salt: u32) -> String {
    let h = hash(&["mac", vm_id], salt);
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

/// The TAP of a VM on `bridge`: `fft` and 12 hex digits of a hash of both (15 characters), so
/// two node networks on one host never share a TAP name.
pub fn tap_for(bridge: &str, vm_id: &str, salt: u32) -> String {
    let h = hash(&["tap", bridge, vm_id], salt);
    format!("fft{}", hex::encode(&h[..6]))
}

impl Ipam {
    /// An empty state.
    pub fn new(subnet: Ipv4Net, bridge: &str) -> Self {
        Self {
            version: IPAM_VERSION,
            subnet,
            bridge: bridge.to_string(),
            allocations: BTreeMap::new(),
        }
    }

    /// The attachment for an allocation.
    pub fn attachment(&self, a: &Allocation) -> NetAttachment {
        NetAttachment {
            tap: a.tap.clone(),
            mac: a.mac.clone(),
            guest_ip: a.ip,
            prefix_len: self.subnet.prefix_len(),
            gateway: self.subnet.gateway(),
        }
    }

    /// Allocates (or returns the existing allocation of) `vm_id`. The lowest free guest address
    /// is taken; MAC and TAP name are derived from the id and unique in this state.
    pub fn allocate(&mut self, vm_id: &str, tenant: &str) -> Result<Allocation, NetError> {
        validate_name("VM id", vm_id)?;
        validate_name("tenant", tenant)?;
        if let Some(a) = self.allocations.get(vm_id) {
            if a.tenant != tenant {
                return Err(NetError::TenantMismatch {
                    vm_id: vm_id.to_string(),
                    has: a.tenant.clone(),
                    asked: tenant.to_string(),
                });
            }
            return Ok(a.clone());
        }
        let used: std::collections::HashSet<Ipv4Addr> =
            self.allocations.values().map(|a| a.ip).collect();
        let ip = self
            .subnet
            .guest_addresses()
            .find(|ip| !used.contains(ip))
            .ok_or(NetError::Exhausted {
                subnet: self.subnet,
            })?;
        let mac = (0..)
            .map(|salt| mac_for(vm_id, salt))
            .find(|m| !self.allocations.values().any(|a| &a.mac == m))
            .unwrap_or_default();
        let tap = (0..)
            .map(|salt| tap_for(&self.bridge, vm_id, salt))
            .find(|t| !self.allocations.values().any(|a| &a.tap == t))
            .unwrap_or_default();
        let a = Allocation {
            ip,
            mac,
            tap,
            tenant: tenant.to_string(),
            isolated: false,
        };
        self.allocations.insert(vm_id.to_string(), a.clone());
        Ok(a)
    }

    /// Forgets `vm_id`'s allocation; returns it if there was one.
    pub fn release(&mut self, vm_id: &str) -> Option<Allocation> {
        self.allocations.remove(vm_id)
    }

    /// Checks a loaded state against the configuration it is used with.
    pub fn check(&self, subnet: Ipv4Net, bridge: &str) -> Result<(), String> {
        if self.version != IPAM_VERSION {
            return Err(format!("unknown version {}", self.version));
        }
        if self.subnet != subnet || self.bridge != bridge {
            return Err(format!(
                "state is for {} on {}, configured {} on {}",
                self.subnet, self.bridge, subnet, bridge
            ));
        }
        let mut ips = std::collections::HashSet::new();
        for (id, a) in &self.allocations {
            let usable = self.subnet.contains(a.ip)
                && a.ip != self.subnet.addr()
                && a.ip != self.subnet.gateway()
                && a.ip != self.subnet.broadcast();
            if !usable || !ips.insert(a.ip) {
                return Err(format!(
                    "VM {id} has an unusable or duplicate address {}",
                    a.ip
                ));
            }
        }
        Ok(())
    }
}

/// VM ids and tenant names: 1..=64 of `[A-Za-z0-9_.-]`.
pub fn validate_name(what: &'static str, s: &str) -> Result<(), NetError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidName {
            what,
            value: s.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_checks_subnets() {
        let n = net("10.213.0.0/24");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 213, 0, 255));
        assert_eq!(n.guest_addresses().count(), 253);
        assert_eq!(n.to_string(), "10.213.0.0/24");
        assert!(n.contains(Ipv4Addr::new(10, 213, 0, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 213, 1, 1)));
        for bad in [
            "10.213.0.1/24",
            "10.213.0.0/31",
            "10.213.0.0",
            "x/24",
            "10.0.0.0/7",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"10.213.0.0/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Net>(&json).unwrap(), n);
        assert!(serde_json::from_str::<Ipv4Net>("\"10.213.0.3/24\"").is_err());
    }

    #[test]
    fn macs_and_taps_are_deterministic_and_well_formed() {
        let m = mac_for("vm-1", 0);
        assert_eq!(m, mac_for("vm-1", 0));
        assert_ne!(m, mac_for("vm-2", 0));
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered unicast: {m}");
        assert_eq!(m.len(), 17);
        let t = tap_for("ffbr0", "vm-1", 0);
        assert!(t.starts_with("fft") && t.len() <= IFNAME_MAX, "{t}");
        assert_ne!(t, tap_for("ffbr1", "vm-1", 0), "bridge is part of the name");
    }

    #[test]
    fn allocation_is_idempotent_and_never_duplicates() {
        let mut ipam = Ipam::new(net("10.213.0.0/22"), "br");
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let a = ipam.allocate(&format!("vm{i}"), "t").unwrap();
            assert!(seen.insert(a.ip), "duplicate {}", a.ip);
            assert_ne!(a.ip, ipam.subnet.gateway());
            assert_eq!(ipam.allocate(&format!("vm{i}"), "t").unwrap(), a);
        }
        let macs: std::collections::HashSet<_> =
            ipam.allocations.values().map(|a| a.mac.clone()).collect();
        let taps: std::collections::HashSet<_> =
            ipam.allocations.values().map(|a| a.tap.clone()).collect();
        assert_eq!((macs.len(), taps.len()), (1000, 1000));
        ipam.check(net("10.213.0.0/22"), "br").unwrap();
        assert!(matches!(
            ipam.allocate("vm1", "other"),
            Err(NetError::TenantMismatch { .. })
        ));
        assert!(matches!(
            ipam.allocate("bad/id", "t"),
            Err(NetError::InvalidName { .. })
        ));
    }

    #[test]
    fn release_reuses_and_exhaustion_is_an_error() {
        let mut ipam = Ipam::new(net("10.213.0.0/29"), "br"); // .2 ..= .6
        let ips: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("vm{i}"), "t").unwrap().ip)
            .collect();
        assert_eq!(ips[0], Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(ips[4], Ipv4Addr::new(10, 213, 0, 6));
        let err = ipam.allocate("vm5", "t").unwrap_err();
        assert!(matches!(err, NetError::Exhausted { .. }), "{err}");
        assert!(ipam.release("vm2").is_some());
        assert!(ipam.release("vm2").is_none());
        assert_eq!(
            ipam.allocate("vm5", "t").unwrap().ip,
            Ipv4Addr::new(10, 213, 0, 4)
        );
    }

    #[test]
    fn check_refuses_foreign_or_broken_state() {
        let mut ipam = Ipam::new(net("10.213.0.0/24"), "br");
        ipam.allocate("a", "t").unwrap();
        assert!(ipam.check(net("10.213.1.0/24"), "br").is_err());
        assert!(ipam.check(net("10.213.0.0/24"), "br2").is_err());
        let mut dup = ipam.clone();
        let mut b = dup.allocations["a"].clone();
        b.tap = "other".into();
        dup.allocations.insert("b".into(), b);
        assert!(dup.check(net("10.213.0.0/24"), "br").is_err());
    }
}
