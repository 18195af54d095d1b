//! What an [`super::EtcdStore`] connects to: endpoints, the cluster's key prefix, TLS files and
//! timeouts; and the parsing of `etcd://host:port,host:port` URLs.

use std::path::PathBuf;
use std::time::Duration;

use super::error::EtcdError;

/// The client certificate, its key and the CA that signed the etcd members' certificates.
/// With TLS, etcd must be run with `--client-cert-auth --trusted-ca-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM CA certificate the members' server certificates chain to.
    pub ca: PathBuf,
    /// PEM client certificate presented to etcd.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

/// How to reach etcd and where this cluster's keys live in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Member client endpoints: `host:port` (plain, or TLS when [`EtcdConfig::tls`] is set)
    /// or `https://host:port`.
    pub endpoints: Vec<String>,
    /// This cluster's key prefix, e.g. `/firefleet/prod`: starts with `/`, no trailing `/`,
    /// no empty segment and no segment named `kv` or `meta` (so that two prefixes never
    /// overlap). Several clusters may share one etcd under different prefixes.
    pub prefix: String,
    /// Client-certificate TLS; `None` for plain connections.
    pub tls: Option<EtcdTls>,
    /// Limit on establishing a connection to one member.
    pub connect_timeout: Duration,
    /// Limit on every call: a call that etcd does not answer within it (lost quorum,
    /// unreachable members) fails with [`crate::StoreError::Unavailable`].
    pub request_timeout: Duration,
    /// How long a watch keeps trying to resume after its connection broke before it ends with
    /// [`crate::StoreError::Unavailable`].
    pub watch_outage_limit: Duration,
    /// Events buffered per watch between etcd and the watch's reader.
    pub watch_buffer: usize,
}

impl EtcdConfig {
    /// A configuration with the default timeouts (connect 5 s, request 5 s, watch outage
    /// 30 s), plain connections.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            watch_outage_limit: Duration::from_secs(30),
            watch_buffer: 1024,
        }
    }

    /// The endpoints of an `etcd://host:port[,host:port...]` URL, as `host:port` strings.
    /// Hosts may be names, IPv4 addresses or bracketed IPv6 addresses; ports are required.
    /// Whether the connections use TLS is decided by [`EtcdConfig::tls`], not by the URL.
    pub fn parse_url(url: &str) -> Result<Vec<String>, EtcdError> {
        let invalid = |reason: String| EtcdError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| invalid("the scheme must be etcd://".into()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(invalid("no host:port given".into()));
        }
        rest.split(',')
            .map(|endpoint| parse_endpoint(endpoint).map_err(&invalid))
            .collect()
    }

    /// Checks everything that can be checked without the network.
    pub(super) fn validate(&self) -> Result<(), EtcdError> {
        validate_prefix(&self.prefix)?;
        if self.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        for endpoint in &self.endpoints {
            let invalid = |reason: String| EtcdError::InvalidEndpoint {
                endpoint: endpoint.clone(),
                reason,
            };
            let bare = if let Some(rest) = endpoint.strip_prefix("https://") {
                rest
            } else if let Some(rest) = endpoint.strip_prefix("http://") {
                if self.tls.is_some() {
                    return Err(invalid("http:// with TLS configured: use https://".into()));
                }
                rest
            } else {
                endpoint
            };
            let bare = bare.strip_suffix('/').unwrap_or(bare);
            parse_endpoint(bare).map_err(invalid)?;
        }
        Ok(())
    }

    /// The endpoints written out for display in errors.
    pub(super) fn endpoints_display(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Parses `host:port` (`[v6]:port` for IPv6) and returns it normalised.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{endpoint:?}: unclosed '[' in an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{endpoint:?}: no port after the IPv6 address"))?;
        (host, port)
    } else {
        endpoint
            .rsplit_once(':')
            .ok_or_else(|| format!("{endpoint:?}: no port (host:port expected)"))?
    };
    if host.is_empty() {
        return Err(format!("{endpoint:?}: empty host"));
    }
    if host.contains(['/', '@', ' ']) || (!endpoint.starts_with('[') && host.contains(':')) {
        return Err(format!("{endpoint:?}: invalid host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(endpoint.to_owned()),
        _ => Err(format!(
            "{endpoint:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

/// Longest accepted prefix, in bytes.
const MAX_PREFIX_LEN: usize = 256;

fn validate_prefix(prefix: &str) -> Result<(), EtcdError> {
    let invalid = |reason: &str| EtcdError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason: reason.to_owned(),
    };
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(invalid("longer than 256 bytes"));
    }
    let Some(rest) = prefix.strip_prefix('/') else {
        return Err(invalid("must start with '/'"));
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err(invalid(
            "must name at least one segment and not end with '/'",
        ));
    }
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(invalid("has an empty segment ('//')"));
        }
        if segment == "kv" || segment == "meta" {
            return Err(invalid(
                "has a segment named 'kv' or 'meta' (reserved: another cluster's keys live there)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints() {
        assert_eq!(
            EtcdConfig::parse_url("etcd://h1:2379,10.0.0.2:2380,[::1]:2379").ok(),
            Some(vec![
                "h1:2379".to_owned(),
                "10.0.0.2:2380".to_owned(),
                "[::1]:2379".to_owned()
            ])
        );
        assert_eq!(
            EtcdConfig::parse_url("etcd://h1:2379/").ok(),
            Some(vec!["h1:2379".to_owned()])
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("http://h1:2379", "scheme"),
            ("etcd://", "no host"),
            ("etcd://h1", "no port"),
            ("etcd://h1:2379,", "no port"),
            ("etcd://:2379", "empty host"),
            ("etcd://h1:abc", "not a number"),
            ("etcd://h1:0", "not a number"),
            ("etcd://h1:70000", "not a number"),
            ("etcd://[::1", "unclosed"),
            ("etcd://a/b:1", "invalid host"),
        ] {
            match EtcdConfig::parse_url(url) {
                Err(err) => {
                    let text = err.to_string();
                    assert!(text.contains(needle), "{url}: {text}");
                    assert!(text.contains(url), "{url}: {text}");
                }
                Ok(endpoints) => panic!("{url} parsed into {endpoints:?}"),
            }
        }
    }

    #[test]
    fn prefixes_are_checked() {
        for good in ["/firefleet/prod", "/a", "/kvx/metadata"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "/", "firefleet", "/a/", "/a//b", "/a/kv", "/meta/b"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_checked_against_tls() {
        let mut config = EtcdConfig::new(vec!["http://h:1".into()], "/p");
        assert!(config.validate().is_ok());
        config.tls = Some(EtcdTls {
            ca: "ca".into(),
            cert: "c".into(),
            key: "k".into(),
        });
        assert!(config.validate().is_err());
        config.endpoints = vec!["https://h:1".into(), "h2:2".into()];
        assert!(config.validate().is_ok());
        config.endpoints = vec![];
        assert!(matches!(config.validate(), Err(EtcdError::NoEndpoints)));
    }
}
