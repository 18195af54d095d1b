//! Addresses: the server replicas a client or agent talks to (`--server URL[,URL…]`), and the
//! names and addresses a server's certificate covers (`--san NAME_OR_IP`).

use std::net::IpAddr;

/// The server replicas' URLs of `--server URL[,URL…]` (checked; at least one; duplicates
/// dropped). A client sends each call to the current one and fails over to the next on a
/// connection error or a 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrls(pub Vec<String>);

/// Parses `--server` (and `FIREFLEET_SERVER`): comma-separated `https://host:port`; the error
/// names the entry at fault.
pub fn parse_servers(list: &str) -> Result<ServerUrls, String> {
    firefleet_client::parse_server_list(list)
        .map(ServerUrls)
        .map_err(|e| e.to_string())
}

/// A subject alternative name for the server certificate: the name or address clients reach
/// a replica at (behind a load balancer: its name too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// A DNS name (`*.` wildcard allowed as the first label).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

/// Parses `--san`: an IP address, else a DNS name (labels of letters, digits and `-`, at most
/// 63 each and 253 in all; `*.` allowed in front). The error names the value.
pub fn parse_san(text: &str) -> Result<San, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(San::Ip(ip));
    }
    let bad = |why: &str| format!("{text:?} is neither an IP address nor a DNS name: {why}");
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return Err(bad("a name has 1 to 253 characters"));
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad(&format!(
                "label {label:?} must be 1 to 63 letters, digits or '-' (not first or last)"
            )));
        }
    }
    Ok(San::Dns(name.to_ascii_lowercase()))
}

/// The DNS names and the IP addresses of `sans`, each list without repeats, in order.
pub fn split_sans(sans: &[San]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    for san in sans {
        match san {
            San::Dns(n) if !dns.contains(n) => dns.push(n.clone()),
            San::Ip(ip) if !ips.contains(ip) => ips.push(*ip),
            _ => {}
        }
    }
    (dns, ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_addresses_or_dns_names() {
        assert_eq!(
            parse_san("10.0.0.5"),
            Ok(San::Ip("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            parse_san("fd00::5"),
            Ok(San::Ip("fd00::5".parse().unwrap()))
        );
        assert_eq!(
            parse_san("CP-1.Example.com."),
            Ok(San::Dns("cp-1.example.com".into()))
        );
        assert_eq!(
            parse_san("*.cp.example.com"),
            Ok(San::Dns("*.cp.example.com".into()))
        );
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a_b.com",
            "https://a",
            "10.0.0.5:7443",
        ] {
            let e = parse_san(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn server_takes_a_list_for_every_command_and_the_agent() {
        use clap::Parser;
        let cli = crate::args::Cli::try_parse_from([
            "firefleet",
            "node",
            "ls",
            "--server",
            "https://a:7443,https://10.0.0.2:7443/",
        ])
        .unwrap();
        assert_eq!(
            cli.global.server,
            ServerUrls(vec![
                "https://a:7443".into(),
                "https://10.0.0.2:7443".into()
            ])
        );
        let cli = crate::args::Cli::try_parse_from([
            "firefleet",
            "agent",
            "--server",
            "https://a:7443,https://b:7443",
            "--ca",
            "ca.pem",
            "--name",
            "n1",
            "--data-dir",
            "d",
        ])
        .unwrap();
        match cli.command {
            crate::args::Command::Agent(a) => assert_eq!(a.server.0.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_server_in_the_list_is_named() {
        use clap::Parser;
        for (list, bad) in [
            ("https://a:7443,http://b:7443", "\"http://b:7443\""),
            ("https://a:7443,,https://c:7443", "\"\""),
            ("https://a:7443,b:7443", "\"b:7443\""),
        ] {
            let e = crate::args::Cli::try_parse_from(["firefleet", "--server", list, "node", "ls"])
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad), "{list}: {e}");
            assert!(e.contains("--server"), "{list}: {e}");
        }
    }

    #[test]
    fn server_sans_reach_the_certificate_names() {
        use clap::Parser;
        let cli = crate::args::Cli::try_parse_from([
            "firefleet",
            "server",
            "--data-dir",
            "d",
            "--dns-name",
            "cp.example.com",
            "--san",
            "cp-1.example.com",
            "--san",
            "10.0.0.5",
            "--san",
            "cp.example.com",
        ])
        .unwrap();
        let crate::args::Command::Server(a) = cli.command else {
            panic!("not the server command");
        };
        let (dns, ips) = a.certificate_names();
        assert_eq!(dns, vec!["cp.example.com", "cp-1.example.com"]);
        assert_eq!(ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        let e = crate::args::Cli::try_parse_from([
            "firefleet",
            "server",
            "--data-dir",
            "d",
            "--san",
            "bad_name",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"bad_name\""), "{e}");
    }

    #[test]
    fn sans_split_into_names_and_addresses() {
        let sans = [
            San::Dns("a".into()),
            San::Ip("10.0.0.1".parse().unwrap()),
            San::Dns("a".into()),
            San::Dns("b".into()),
        ];
        let (dns, ips) = split_sans(&sans);
        assert_eq!(dns, vec!["a", "b"]);
        assert_eq!(ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
