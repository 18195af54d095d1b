//! The guest's configuration, passed on the kernel command line as
//! `firefleet.config=<base64url without padding of the JSON>`.
//!
//! JSON: `{"cmd": ["sh","-c","..."] | null, "vm_id": "..."}`. The decoder also accepts standard
//! base64 with padding. The kernel command line is limited (2048 bytes on x86), so keep commands
//! short; larger payloads belong on a disk or the channel.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// The kernel command line parameter that carries the configuration.
pub const CMDLINE_PARAM: &str = "firefleet.config";

/// What the guest is told to do.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GuestConfig {
    /// The workload: argv, run with stdin from /dev/null and output on the console. `None`: idle
    /// until asked to stop.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The VM's id, for logs.
    #[serde(default)]
    pub vm_id: String,
    /// Block devices in attachment order (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<GuestDisk>,
    /// The network interface to configure before the workload starts, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<GuestNet>,
}

/// The guest's network: the NIC with this MAC gets the address and the default route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestNet {
    /// Address with prefix length, e.g. `10.213.0.5/24`.
    pub address: String,
    /// The default gateway, e.g. `10.213.0.1`.
    pub gateway: String,
    /// The NIC's MAC address (lowercase, colon separated).
    pub mac: String,
}

/// A block device as the guest sees it (see `disks.rs` of the guest binary).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestDisk {
    /// `root`: mounted at /newroot, the workload runs chrooted into it; `data`: at /mnt/<index>.
    pub role: GuestDiskRole,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// What a guest disk is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestDiskRole {
    /// The workload's root filesystem.
    Root,
    /// A data disk.
    Data,
}

/// Why a configuration could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// The kernel command line has no `firefleet.config=` parameter.
    Missing,
    /// The value is not base64.
    Base64(base64::DecodeError),
    /// The decoded value is not the expected JSON.
    Json(serde_json::Error),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Missing => write!(f, "no {CMDLINE_PARAM}= on the kernel command line"),
            ConfigError::Base64(_) => write!(f, "{CMDLINE_PARAM} is not valid base64"),
            ConfigError::Json(_) => write!(f, "{CMDLINE_PARAM} is not valid guest config JSON"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Missing => None,
            ConfigError::Base64(e) => Some(e),
            ConfigError::Json(e) => Some(e),
        }
    }
}

impl GuestConfig {
    /// The parameter value: base64url (no padding) of the JSON.
    pub fn to_cmdline_value(&self) -> String {
        // Serializing a struct of strings cannot fail; fall back to an empty object regardless.
        let json = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        URL_SAFE_NO_PAD.encode(json)
    }

    /// The whole `firefleet.config=...` parameter.
    pub fn to_cmdline_param(&self) -> String {
        format!("{CMDLINE_PARAM}={}", self.to_cmdline_value())
    }

    /// Decodes a parameter value (base64url without padding, or standard base64).
    pub fn from_cmdline_value(value: &str) -> Result<Self, ConfigError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(value.trim())
            .or_else(|_| STANDARD.decode(value.trim()))
            .map_err(ConfigError::Base64)?;
        serde_json::from_slice(&bytes).map_err(ConfigError::Json)
    }

    /// Finds and decodes the parameter in a whole kernel command line (`/proc/cmdline`).
    pub fn from_kernel_cmdline(cmdline: &str) -> Result<Self, ConfigError> {
        let prefix = format!("{CMDLINE_PARAM}=");
        let value = cmdline
            .split_ascii_whitespace()
            .rev()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .ok_or(ConfigError::Missing)?;
        Self::from_cmdline_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_kernel_cmdline() {
        let cfg = GuestConfig {
            cmd: Some(vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()]),
            vm_id: "vm-1".into(),
            ..Default::default()
        };
        let line = format!("console=ttyS0 quiet {} panic=-1", cfg.to_cmdline_param());
        assert!(!cfg.to_cmdline_value().contains(['=', ' ', '+', '/']));
        assert_eq!(GuestConfig::from_kernel_cmdline(&line).unwrap(), cfg);
    }

    #[test]
    fn reports_missing_and_bad_values() {
        assert!(matches!(
            GuestConfig::from_kernel_cmdline("console=ttyS0"),
            Err(ConfigError::Missing)
        ));
        assert!(matches!(
            GuestConfig::from_cmdline_value("!!!"),
            Err(ConfigError::Base64(_))
        ));
        assert!(matches!(
            GuestConfig::from_cmdline_value(&URL_SAFE_NO_PAD.encode("[1]")),
            Err(ConfigError::Json(_))
        ));
        // Standard base64 is accepted too.
        let v = STANDARD.encode(r#"{"cmd":null,"vm_id":"a"}"#);
        assert_eq!(GuestConfig::from_cmdline_value(&v).unwrap().vm_id, "a");
    }
}
