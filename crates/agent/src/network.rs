//! The node's VM network, owned by the agent: the bridge and rules are ensured at start, a VM
//! is attached (address, TAP, tenant set, limits) just before its VMM starts and detached after
//! its VMM is removed. The IPAM state lives in `DATA/net/ipam.json`, so a restarted agent knows
//! every address it handed out.
//!
//! A node whose network cannot be set up (not root, tools or kernel modules missing) still runs
//! VMs, without network interfaces, and reports no network in its facts.

use std::net::Ipv4Addr;

use firefleet_types::{NetworkSpec, NodeNetworkFacts};
use firefleet_vmm::net::{
    Host, NetAttachment, NetConfig, NetError, NetLimits, NodeNetwork, SystemHost,
};

use firefleet_types::error_chain;

/// The subdirectory of the agent's data directory holding the IPAM state.
pub const STATE_SUBDIR: &str = "net";

/// What a VM asks of the node network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRequest {
    /// The VM's tenant: only its VMs share a segment.
    pub tenant: String,
    /// Whether it wants a NIC, and its limits.
    pub spec: NetworkSpec,
}

/// The node network if it could be set up, else nothing (VMs run without NICs).
#[derive(Debug)]
pub struct Network<H: Host = SystemHost> {
    net: Option<NodeNetwork<H>>,
}

impl Network<SystemHost> {
    /// Ensures the node network on this host (see [`Network::start_with`]).
    pub fn start(cfg: &NetConfig) -> Self {
        Self::start_with(cfg, SystemHost)
    }

    /// A network that attaches nothing, as on a node whose network could not be set up (for
    /// unit tests: it touches nothing of the host).
    #[cfg(test)]
    pub fn none() -> Self {
        Self { net: None }
    }
}

impl<H: Host> Network<H> {
    /// Ensures the node network through `host`; on failure logs a warning and returns a
    /// network that attaches nothing.
    pub fn start_with(cfg: &NetConfig, host: H) -> Self {
        match NodeNetwork::ensure_with(cfg, host) {
            Ok(net) => {
                tracing::info!(
                    bridge = %cfg.bridge,
                    subnet = %cfg.subnet,
                    gateway = %net.gateway(),
                    "node network ready"
                );
                Self { net: Some(net) }
            }
            Err(e) => {
                tracing::warn!(
                    bridge = %cfg.bridge,
                    error = %error_chain(&e),
                    "node network unavailable: VMs will run without network interfaces"
                );
                Self { net: None }
            }
        }
    }

    /// What the heartbeat reports.
    pub fn facts(&self) -> Option<NodeNetworkFacts> {
        self.net.as_ref().map(|n| {
            let c = n.config();
            NodeNetworkFacts {
                bridge: c.bridge.clone(),
                subnet: c.subnet.to_string(),
                gateway: n.gateway().to_string(),
            }
        })
    }

    /// Whether guests' traffic to the cloud metadata address (169.254.169.254) is dropped: the
    /// ruleset that [`NodeNetwork::ensure_with`] installed (see
    /// [`firefleet_vmm::net::rules`]) drops it from every TAP of the bridge, forwarded and
    /// delivered to the host, so this holds exactly when the network is up. A node without a
    /// network has no guest NICs and no rules.
    pub fn metadata_egress_blocked(&self) -> bool {
        self.net.is_some()
    }

    /// Attaches `vm` as `req` asks (idempotent). `None`: the VM runs without a NIC (it asked
    /// for none, or this node has no network).
    pub fn attach(&self, vm: &str, req: &NetRequest) -> Result<Option<NetAttachment>, NetError> {
        if !req.spec.enabled {
            return Ok(None);
        }
        let Some(net) = &self.net else {
            return Ok(None);
        };
        let limits = NetLimits {
            egress_mbit: req.spec.egress_mbit,
            ingress_mbit: req.spec.ingress_mbit,
        };
        let a = net.attach(vm, &req.tenant, &limits)?;
        if req.spec.isolated {
            net.set_isolated(vm, true)?;
        }
        Ok(Some(a))
    }

    /// Applies a running VM's network settings (limits, isolation) as `spec` now says.
    /// Nothing to do for a VM without a NIC here.
    pub fn update(&self, vm: &str, spec: &NetworkSpec) -> Result<(), NetError> {
        let Some(net) = &self.net else {
            return Ok(());
        };
        if net.attachment(vm)?.is_none() {
            return Ok(());
        }
        net.set_limits(
            vm,
            &NetLimits {
                egress_mbit: spec.egress_mbit,
                ingress_mbit: spec.ingress_mbit,
            },
        )?;
        net.set_isolated(vm, spec.isolated)
    }

    /// Removes `vm`'s TAP, rules and address (idempotent).
    pub fn detach(&self, vm: &str) -> Result<(), NetError> {
        match &self.net {
            Some(net) => net.detach(vm),
            None => Ok(()),
        }
    }

    /// `vm`'s address, if it has one.
    pub fn ip(&self, vm: &str) -> Option<Ipv4Addr> {
        let net = self.net.as_ref()?;
        match net.attachment(vm) {
            Ok(a) => a.map(|a| a.guest_ip),
            Err(e) => {
                tracing::debug!(vm, error = %error_chain(&e), "reading the IPAM state failed");
                None
            }
        }
    }

    /// The VMs holding an address on this node.
    pub fn allocated(&self) -> Vec<String> {
        let Some(net) = &self.net else {
            return Vec::new();
        };
        match net.allocations() {
            Ok(a) => a.into_keys().collect(),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "reading the IPAM state failed");
                Vec::new()
            }
        }
    }
}

/// The network configuration for an agent: `bridge` and `subnet` (defaults `ffbr0`,
/// `10.213.0.0/24`), state under `data_dir/net`. Refuses malformed names and subnets.
pub fn net_config(
    data_dir: &std::path::Path,
    bridge: Option<&str>,
    subnet: Option<&str>,
) -> Result<NetConfig, NetError> {
    let mut cfg = NetConfig::new(data_dir.join(STATE_SUBDIR));
    if let Some(b) = bridge {
        cfg.bridge = b.to_owned();
    }
    if let Some(s) = subnet {
        cfg.subnet = s.parse()?;
    }
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Keeps the links that `ip` creates and deletes and the last script given to `nft`;
    /// refuses everything when `broken`.
    #[derive(Debug, Clone, Default)]
    struct FakeHost {
        links: Arc<Mutex<BTreeSet<String>>>,
        nft: Arc<Mutex<String>>,
        broken: bool,
    }

    impl Host for FakeHost {
        fn run(
            &self,
            program: &str,
            args: &[String],
            stdin: Option<&str>,
        ) -> Result<String, NetError> {
            if self.broken {
                return Err(NetError::Command {
                    command: program.into(),
                    status: "exit status: 2".into(),
                    stderr: "Operation not permitted".into(),
                });
            }
            if program == "nft" {
                *self.nft.lock().unwrap() = stdin.unwrap_or_default().to_owned();
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut links = self.links.lock().unwrap();
            match (program, a.as_slice()) {
                ("ip", ["link", "add", "name", n, ..])
                | ("ip", ["tuntap", "add", "dev", n, ..]) => {
                    links.insert(n.to_string());
                }
                ("ip", ["link", "del", "dev", n]) => {
                    links.remove(*n);
                }
                _ => {}
            }
            Ok(String::new())
        }

        fn link_exists(&self, name: &str) -> bool {
            self.links.lock().unwrap().contains(name)
        }

        fn write_sysctl(&self, _: &str, _: &str) -> Result<(), NetError> {
            Ok(())
        }
    }

    fn req(tenant: &str, enabled: bool) -> NetRequest {
        NetRequest {
            tenant: tenant.into(),
            spec: NetworkSpec {
                enabled,
                egress_mbit: Some(5),
                ingress_mbit: None,
                isolated: false,
            },
        }
    }

    #[test]
    fn attaches_detaches_and_recovers_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = net_config(dir.path(), Some("ffagtest"), Some("10.213.7.0/24")).unwrap();
        assert_eq!(cfg.state_dir, dir.path().join("net"));
        let host = FakeHost::default();
        let net = Network::start_with(&cfg, host.clone());
        assert_eq!(
            net.facts(),
            Some(NodeNetworkFacts {
                bridge: "ffagtest".into(),
                subnet: "10.213.7.0/24".into(),
                gateway: "10.213.7.1".into(),
            })
        );
        assert!(net.metadata_egress_blocked());
        assert_eq!(net.attach("off", &req("a", false)).unwrap(), None);
        let a = net.attach("vm1", &req("a", true)).unwrap().unwrap();
        // Every guest's traffic to the metadata address is dropped, bridged and routed, before
        // any accept: the fact reported above is the rule installed.
        let rules = host.nft.lock().unwrap().clone();
        assert!(rules.contains(&a.tap), "{rules}");
        let bridge_drop = "iifname @taps ether type ip ip daddr 169.254.169.254 drop";
        assert_eq!(
            rules.matches(bridge_drop).count(),
            2,
            "forward and input: {rules}"
        );
        let first_accept = rules.find(" accept\n").unwrap();
        assert!(rules.find(bridge_drop).unwrap() < first_accept, "{rules}");
        assert_eq!(
            rules
                .matches("iifname \"ffagtest\" ip daddr 169.254.169.254 drop")
                .count(),
            2,
            "inet input and forward: {rules}"
        );
        assert_eq!(a.guest_ip, Ipv4Addr::new(10, 213, 7, 2));
        assert!(host.link_exists(&a.tap));
        assert_eq!(net.ip("vm1"), Some(a.guest_ip));
        assert_eq!(net.ip("off"), None);

        // A restarted agent: same state directory, same addresses, no address twice.
        drop(net);
        let net = Network::start_with(&cfg, host.clone());
        assert_eq!(net.allocated(), vec!["vm1".to_owned()]);
        let b = net.attach("vm2", &req("b", true)).unwrap().unwrap();
        assert_ne!(b.guest_ip, a.guest_ip);
        assert_eq!(net.attach("vm1", &req("a", true)).unwrap(), Some(a.clone()));

        net.detach("vm1").unwrap();
        net.detach("vm1").unwrap();
        assert!(!host.link_exists(&a.tap));
        assert_eq!(net.ip("vm1"), None);
        assert_eq!(net.allocated(), vec!["vm2".to_owned()]);
    }

    #[test]
    fn a_node_without_network_runs_vms_without_nics() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = net_config(dir.path(), None, None).unwrap();
        assert_eq!(cfg.bridge, "ffbr0");
        let host = FakeHost {
            broken: true,
            ..Default::default()
        };
        let net = Network::start_with(&cfg, host);
        assert_eq!(net.facts(), None);
        assert!(!net.metadata_egress_blocked());
        assert_eq!(net.attach("vm1", &req("a", true)).unwrap(), None);
        net.detach("vm1").unwrap();
        assert!(net.allocated().is_empty());
        assert_eq!(net.ip("vm1"), None);
    }

    #[test]
    fn malformed_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(net_config(dir.path(), Some("has space"), None).is_err());
        assert!(net_config(dir.path(), None, Some("10.0.0.1/24")).is_err());
        assert!(net_config(dir.path(), None, Some("nonsense")).is_err());
    }
}
