//! `--server URL,URL,…` against a real server: a list whose first replica refuses connections
//! still reaches the second for reads and writes; a list of replicas that are all down ends
//! with an error naming each; a bad URL in the list (flag or `FIREFLEET_SERVER`) is named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use firefleet_server::{Server, ServerConfig};
use serde_json::Value;

use firefleet_testkit::cluster::cli_for as cli;

/// A URL where nothing listens.
fn refusing_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("https://{}", listener.local_addr().unwrap())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_with_a_dead_first_replica_reaches_the_live_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(ServerConfig::new(dir.clone(), listen))
        .await
        .unwrap();
    let live = format!("https://{}", server.addr);
    let list = format!("{},{live}", refusing_url());

    let out = cli(
        &dir,
        &list,
        &["token", "create", "--tenant", "acme", "--output", "json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(token["tenant"], "acme", "{token}");

    // The flag takes the same list as the variable.
    let out = tokio::process::Command::new(firefleet_testkit::cluster::firefleet_bin())
        .args(["token", "ls", "--output", "json", "--server", &list])
        .env_remove("FIREFLEET_SERVER")
        .arg("--token")
        .arg(format!("@{}", dir.join("admin.token").display()))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(tokens.to_string().contains("acme"), "{tokens}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_all_down_give_an_error_naming_each() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    // A CA and a token to read: a server started and stopped leaves them.
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Server::start(ServerConfig::new(dir.clone(), listen))
        .await
        .unwrap()
        .shutdown()
        .await;
    let (a, b) = (refusing_url(), refusing_url());
    let started = std::time::Instant::now();
    let out = cli(
        &dir,
        &format!("{a},{b}"),
        &["node", "ls", "--failover-secs", "2"],
    )
    .await;
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&a) && err.contains(&b), "{err}");
    assert!(err.contains("no server answered"), "{err}");
    // Refused connections fail at once: the budget is what the call took.
    assert!(took >= std::time::Duration::from_millis(1900), "{took:?}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_bad_url_in_the_list_is_named() {
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(firefleet_testkit::cluster::firefleet_bin());
        cmd.args(args)
            .env_remove("FIREFLEET_SERVER")
            .env("FIREFLEET_TOKEN", "t")
            .env("FIREFLEET_CA", "/nonexistent/ca.pem");
        if let Some(v) = env {
            cmd.env("FIREFLEET_SERVER", v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        stderr(&out)
    };
    let err = run(
        &["--server", "https://a:7443,http://b:7443", "vm", "ls"],
        None,
    );
    assert!(err.contains("\"http://b:7443\""), "{err}");
    let err = run(&["vm", "ls"], Some("https://a:7443,https://b:7443/x"));
    assert!(err.contains("\"https://b:7443/x\""), "{err}");
    let err = run(
        &[
            "agent",
            "--server",
            "https://a:7443,ftp://b",
            "--ca",
            "ca.pem",
            "--name",
            "n1",
            "--data-dir",
            "d",
        ],
        None,
    );
    assert!(err.contains("\"ftp://b\""), "{err}");
}
