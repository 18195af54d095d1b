//! Per-node VM networking: one Linux bridge per node, a TAP per VM, addresses from a node
//! subnet, tenant isolation and metadata blocking with nftables, bandwidth limits with tc.
//!
//! - [`NodeNetwork::ensure`] creates the bridge (gateway = the subnet's first host address,
//!   fixed MAC), brings it up, enables IPv4 forwarding on it and installs the ruleset.
//! - [`NodeNetwork::attach`] allocates an address (IPAM, persisted in `state_dir/ipam.json`),
//!   creates the TAP (`ip tuntap add`), enslaves it, puts it in its tenant's nft set and applies
//!   the limits; QEMU then opens the TAP by name ([`NetAttachment::tap`]). [`NodeNetwork::detach`]
//!   undoes all of it. Both are idempotent and can be retried after a partial failure.
//! - The ruleset ([`rules::ruleset`]) is a pure function of the configuration and the IPAM
//!   state, re-rendered and replaced as a whole (one `nft -f` transaction) on every change.
//!
//! State changes are serialised by an exclusive `flock` on `state_dir/ipam.lock`, across threads
//! and processes; every operation re-reads the state file, so a new [`NodeNetwork`] on the same
//! directory (agent restart) sees every allocation. Commands go through the [`Host`] trait.
//!
//! The tools needed: `ip` (iproute2), `nft` (nftables), `tc`; kernel support for bridges, TUN,
//! nf_tables (bridge and inet families), IFB, `sch_ingress`, `cls_u32`, `act_mirred`, `sch_tbf`.

pub mod host;
pub mod ipam;
pub mod rules;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use firefleet_guest::config::GuestNet;
use sha2::{Digest, Sha256};

pub use host::{Host, SystemHost};
pub use ipam::{Allocation, Ipam, Ipv4Net};

pub use crate::runtime::NetAttachment;

/// The state file, in [`NetConfig::state_dir`].
pub const IPAM_FILE: &str = "ipam.json";
/// The lock file beside it.
pub const LOCK_FILE: &str = "ipam.lock";
/// The default bridge.
pub const DEFAULT_BRIDGE: &str = "ffbr0";
/// The default node subnet.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/24";
/// The largest bandwidth limit accepted, in Mbit/s.
pub const MAX_LIMIT_MBIT: u32 = 100_000;

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

fn default_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 213, 0, 0), 24).unwrap_or_else(|_| unreachable!())
}

/// A node network's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// The bridge (at most 15 characters of `[A-Za-z0-9_.-]`). Default `ffbr0`.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The node subnet; the bridge gets its first host address. Default `10.213.0.0/24`.
    #[serde(default = "default_subnet")]
    pub subnet: Ipv4Net,
    /// Where `ipam.json` lives.
    pub state_dir: PathBuf,
    /// Masquerade the subnet's traffic leaving through other interfaces (guest internet
    /// access). Default off.
    #[serde(default)]
    pub masquerade: bool,
}

impl NetConfig {
    /// The defaults, with state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            bridge: default_bridge(),
            subnet: default_subnet(),
            state_dir: state_dir.into(),
            masquerade: false,
        }
    }

    /// Checks what the types do not.
    pub fn validate(&self) -> Result<(), NetError> {
        let b = &self.bridge;
        let ok = !b.is_empty()
            && b.len() <= ipam::IFNAME_MAX
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
            && !b.starts_with("fft")
            && !b.starts_with("ffi");
        if !ok {
            return Err(NetError::InvalidConfig(format!(
                "bridge name {b:?}: 1..=15 of [A-Za-z0-9_.-], not starting with fft/ffi"
            )));
        }
        // Re-check the subnet in case it was built without `Ipv4Net::new`'s checks.
        Ipv4Net::new(self.subnet.addr(), self.subnet.prefix_len())?;
        Ok(())
    }
}

/// Bandwidth limits of one VM, in Mbit/s; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetLimits {
    /// From the guest (what the TAP receives).
    #[serde(default)]
    pub egress_mbit: Option<u32>,
    /// To the guest (what the TAP sends).
    #[serde(default)]
    pub ingress_mbit: Option<u32>,
}

impl NetLimits {
    /// Each limit must be 1..=[`MAX_LIMIT_MBIT`].
    pub fn validate(&self) -> Result<(), NetError> {
        for (what, v) in [("egress", self.egress_mbit), ("ingress", self.ingress_mbit)] {
            if let Some(m) = v {
                if m == 0 || m > MAX_LIMIT_MBIT {
                    return Err(NetError::InvalidConfig(format!(
                        "{what} limit {m} Mbit/s: must be 1..={MAX_LIMIT_MBIT}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Networking errors. A failing tool is named with its whole command line and its stderr.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration or a limit is unusable.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// A subnet is malformed or unusable.
    #[error("invalid subnet {0}")]
    InvalidSubnet(String),
    /// A VM id or tenant name is malformed.
    #[error("invalid {what} {value:?}: 1..=64 of [A-Za-z0-9_.-]")]
    InvalidName {
        /// What it names.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A VM is already allocated to another tenant.
    #[error("VM {vm_id} belongs to tenant {has}, not {asked}")]
    TenantMismatch {
        /// The VM.
        vm_id: String,
        /// Its recorded tenant.
        has: String,
        /// The tenant asked for.
        asked: String,
    },
    /// The VM has no allocation on this network.
    #[error("VM {0} has no network interface on this node")]
    NotAttached(String),
    /// No free address left.
    #[error("no free address left in {subnet}")]
    Exhausted {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// A tool exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A tool could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file could not be read or written.
    #[error("network state file {path}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file has unexpected contents.
    #[error("corrupt network state file {path}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A state file belongs to another configuration or breaks an invariant.
    #[error("network state file {path} does not fit: {why}")]
    StateMismatch {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// What the guest must be told to configure its NIC for an attachment.
pub fn guest_net(a: &NetAttachment) -> GuestNet {
    GuestNet {
        address: format!("{}/{}", a.guest_ip, a.prefix_len),
        gateway: a.gateway.to_string(),
        mac: a.mac.clone(),
    }
}

/// The bridge's fixed MAC (otherwise it follows the lowest port MAC and changes as TAPs come and
/// go, leaving guests with a stale ARP entry for their gateway).
pub fn bridge_mac(bridge: &str) -> String {
    let h = Sha256::digest(format!("bridge\0{bridge}").as_bytes());
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

/// The network of one node. Holds no state in memory beyond its configuration: the state file
/// is the truth.
#[derive(Debug)]
pub struct NodeNetwork<H: Host = SystemHost> {
    cfg: NetConfig,
    host: H,
}

/// An exclusive `flock` on the lock file, released on drop.
struct StateLock(#[allow(dead_code)] File);

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl NodeNetwork<SystemHost> {
    /// Creates (or adopts) the node network on this host: bridge, forwarding, rules, state.
    pub fn ensure(cfg: &NetConfig) -> Result<Self, NetError> {
        Self::ensure_with(cfg, SystemHost)
    }
}

impl<H: Host> NodeNetwork<H> {
    /// [`NodeNetwork::ensure`] with another [`Host`].
    pub fn ensure_with(cfg: &NetConfig, host: H) -> Result<Self, NetError> {
        cfg.validate()?;
        fs::create_dir_all(&cfg.state_dir).map_err(|source| NetError::State {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let me = Self {
            cfg: cfg.clone(),
            host,
        };
        let _lock = me.lock()?;
        let state = me.load()?;
        me.ensure_bridge()?;
        me.apply_rules(&state)?;
        Ok(me)
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The bridge's address, the guests' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.cfg.subnet.gateway()
    }

    /// Every allocation, by VM id.
    pub fn allocations(&self) -> Result<BTreeMap<String, Allocation>, NetError> {
        let _lock = self.lock()?;
        Ok(self.load()?.allocations)
    }

    /// A VM's attachment, if it has an allocation.
    pub fn attachment(&self, vm_id: &str) -> Result<Option<NetAttachment>, NetError> {
        let _lock = self.lock()?;
        let state = self.load()?;
        Ok(state.allocations.get(vm_id).map(|a| state.attachment(a)))
    }

    /// Allocates an address, MAC and TAP name for `vm_id` (the same ones again if it has them)
    /// without touching any device. The TAP is in its tenant's set from now on.
    pub fn allocate(&self, vm_id: &str, tenant: &str) -> Result<NetAttachment, NetError> {
        let _lock = self.lock()?;
        let (state, a) = self.allocate_locked(vm_id, tenant)?;
        Ok(state.attachment(&a))
    }

    /// Forgets `vm_id`'s allocation (its address may be handed out again). Devices are left
    /// alone; a TAP left behind is cut off from other VMs (see [`rules`]). Use [`Self::detach`]
    /// to remove everything.
    pub fn release(&self, vm_id: &str) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        if state.release(vm_id).is_some() {
            self.save(&state)?;
            self.apply_rules(&state)?;
        }
        Ok(())
    }

    /// Gives `vm_id` a network interface: allocation, TAP on the bridge, tenant isolation and
    /// `limits` (replacing earlier limits). Idempotent; retry after a failure.
    pub fn attach(
        &self,
        vm_id: &str,
        tenant: &str,
        limits: &NetLimits,
    ) -> Result<NetAttachment, NetError> {
        limits.validate()?;
        let _lock = self.lock()?;
        let (state, a) = self.allocate_locked(vm_id, tenant)?;
        let br = self.cfg.bridge.as_str();
        let tap = a.tap.as_str();
        if !self.host.link_exists(tap) {
            self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        }
        self.ip(&["link", "set", "dev", tap, "master", br])?;
        self.ip(&["link", "set", "dev", tap, "up"])?;
        self.apply_limits(tap, limits)?;
        Ok(state.attachment(&a))
    }

    /// Cuts `vm_id` off the network (all its traffic dropped, both ways, host included) or lets
    /// it back; the setting stays with the allocation (a relaunch keeps it). Idempotent; an
    /// unknown VM is an error.
    pub fn set_isolated(&self, vm_id: &str, isolated: bool) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let Some(a) = state.allocations.get_mut(vm_id) else {
            return Err(NetError::NotAttached(vm_id.to_string()));
        };
        if a.isolated != isolated {
            a.isolated = isolated;
            self.save(&state)?;
        }
        // Applied every time: the rules may have been lost (host reboot) while the state says so.
        self.apply_rules(&state)
    }

    /// Replaces `vm_id`'s bandwidth limits on its TAP (a running VM keeps running).
    pub fn set_limits(&self, vm_id: &str, limits: &NetLimits) -> Result<(), NetError> {
        limits.validate()?;
        let _lock = self.lock()?;
        let state = self.load()?;
        let Some(a) = state.allocations.get(vm_id) else {
            return Err(NetError::NotAttached(vm_id.to_string()));
        };
        self.apply_limits(&a.tap, limits)
    }

    /// Removes `vm_id`'s TAP (and shaper), its rules and its allocation. Idempotent.
    pub fn detach(&self, vm_id: &str) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let tap = match state.allocations.get(vm_id) {
            Some(a) => a.tap.clone(),
            None => ipam::tap_for(&self.cfg.bridge, vm_id, 0),
        };
        self.delete_links(&tap)?;
        if state.release(vm_id).is_some() {
            self.save(&state)?;
            self.apply_rules(&state)?;
        }
        Ok(())
    }

    /// Removes the bridge, every TAP and shaper of this network and its nft tables (a node
    /// leaving service, or a test cleaning up). The allocations stay in the state file, so a
    /// later [`NodeNetwork::ensure`] and [`Self::attach`] give VMs the same addresses back.
    pub fn teardown(&self) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let state = self.load()?;
        for a in state.allocations.values() {
            self.delete_links(&a.tap)?;
        }
        self.host.run(
            "nft",
            &args(&["-f", "-"]),
            Some(&rules::delete_ruleset(&self.cfg.bridge)),
        )?;
        if self.host.link_exists(&self.cfg.bridge) {
            self.ip(&["link", "del", "dev", &self.cfg.bridge])?;
        }
        Ok(())
    }

    fn allocate_locked(&self, vm_id: &str, tenant: &str) -> Result<(Ipam, Allocation), NetError> {
        let mut state = self.load()?;
        let before = state.allocations.len();
        let a = state.allocate(vm_id, tenant)?;
        if state.allocations.len() != before {
            self.save(&state)?;
            self.apply_rules(&state)?;
        }
        Ok((state, a))
    }

    fn ip(&self, a: &[&str]) -> Result<String, NetError> {
        self.host.run("ip", &args(a), None)
    }

    fn ensure_bridge(&self) -> Result<(), NetError> {
        let br = self.cfg.bridge.as_str();
        if !self.host.link_exists(br) {
            self.ip(&["link", "add", "name", br, "type", "bridge"])?;
        }
        self.ip(&["link", "set", "dev", br, "address", &bridge_mac(br)])?;
        let gw = format!("{}/{}", self.gateway(), self.cfg.subnet.prefix_len());
        self.ip(&["addr", "replace", &gw, "dev", br])?;
        self.ip(&["link", "set", "dev", br, "up"])?;
        self.host
            .write_sysctl(&format!("net/ipv4/conf/{br}/forwarding"), "1")
    }

    fn apply_rules(&self, state: &Ipam) -> Result<(), NetError> {
        let text = rules::ruleset(
            &self.cfg.bridge,
            self.cfg.subnet,
            state,
            self.cfg.masquerade,
        );
        self.host.run("nft", &args(&["-f", "-"]), Some(&text))?;
        Ok(())
    }

    fn apply_limits(&self, tap: &str, limits: &NetLimits) -> Result<(), NetError> {
        let ifb = rules::ifb_for(tap);
        if limits.egress_mbit.is_some() {
            if !self.host.link_exists(&ifb) {
                self.ip(&["link", "add", "name", &ifb, "type", "ifb"])?;
            }
            self.ip(&["link", "set", "dev", &ifb, "up"])?;
        }
        for (a, may_fail) in rules::tc_commands(tap, limits) {
            match self.host.run("tc", &a, None) {
                Ok(_) => {}
                Err(NetError::Command { .. }) if may_fail => {}
                Err(e) => return Err(e),
            }
        }
        if limits.egress_mbit.is_none() && self.host.link_exists(&ifb) {
            self.ip(&["link", "del", "dev", &ifb])?;
        }
        Ok(())
    }

    fn delete_links(&self, tap: &str) -> Result<(), NetError> {
        for dev in [tap.to_string(), rules::ifb_for(tap)] {
            if self.host.link_exists(&dev) {
                self.ip(&["link", "del", "dev", &dev])?;
            }
        }
        Ok(())
    }

    fn state_path(&self) -> PathBuf {
        self.cfg.state_dir.join(IPAM_FILE)
    }

    fn lock(&self) -> Result<StateLock, NetError> {
        let path = self.cfg.state_dir.join(LOCK_FILE);
        let err = |source| NetError::State {
            path: path.clone(),
            source,
        };
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        loop {
            // SAFETY: flock on a descriptor we own; it is released when the file is closed.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(StateLock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(err(e));
            }
        }
    }

    fn load(&self) -> Result<Ipam, NetError> {
        let path = self.state_path();
        let state = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Ipam>(&bytes).map_err(|source| NetError::CorruptState {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Ipam::new(self.cfg.subnet, &self.cfg.bridge))
            }
            Err(source) => return Err(NetError::State { path, source }),
        };
        state
            .check(self.cfg.subnet, &self.cfg.bridge)
            .map_err(|why| NetError::StateMismatch {
                path: path.clone(),
                why,
            })?;
        Ok(state)
    }

    fn save(&self, state: &Ipam) -> Result<(), NetError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| NetError::CorruptState {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }
}

/// Temp file, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    let tmp = path.with_extension("json.tmp");
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| NetError::State { path: p, source }
    };
    let mut f = File::create(&tmp).map_err(err(&tmp))?;
    f.write_all(bytes).map_err(err(&tmp))?;
    f.sync_all().map_err(err(&tmp))?;
    fs::rename(&tmp, path).map_err(err(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
