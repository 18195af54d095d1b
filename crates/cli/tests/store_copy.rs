//! Moving a fleet from SQLite to etcd (docs/ha.md): a server on SQLite with a VM, stopped;
//! `firefleet store copy` into a real etcd; a server on etcd started on the old data directory
//! with a secrets key serves the same VM, the same CA and the same admin token. A second copy
//! into the now non-empty prefix is refused, and a missing source is named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use firefleet_server::{SecretsKey, Server, ServerConfig, StoreConfig};
use firefleet_store::etcd::testing::EtcdCluster;
use firefleet_store::KvStore;

use firefleet_testkit::cluster::cli_for as cli;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_moves_from_sqlite_to_etcd_with_its_ca_tokens_and_vms() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let listen = "127.0.0.1:0".parse().unwrap();

    // A single server on SQLite, with a VM (no node: it stays pending).
    let server = Server::start(ServerConfig::new(&dir, listen))
        .await
        .unwrap();
    let url = format!("https://{}", server.addr);
    let out = cli(
        &dir,
        &url,
        &[
            "vm",
            "run",
            "--name",
            "kept",
            "--image",
            "sha256:abababababababababababababababababababababababababababababababab",
            "--memory",
            "128",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    server.shutdown().await;
    let ca_before = std::fs::read_to_string(dir.join("ca.pem")).unwrap();

    let etcd = EtcdCluster::start(1).await;
    let to = format!("etcd://{}", etcd.endpoints().join(","));
    let from = format!("sqlite:{}", dir.join("store.db").display());
    let out = cli(
        &dir,
        &url,
        &[
            "store", "copy", "--from", &from, "--to", &to, "--output", "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["copied"].as_u64().unwrap() > 3, "{summary}");

    // Into a prefix that now holds keys: refused, naming it.
    let out = cli(&dir, &url, &["store", "copy", "--from", &from, "--to", &to]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("already holds"), "{}", text(&out));
    // A source that does not exist is named, and not created.
    let missing = root.path().join("nothing.db");
    let out = cli(
        &dir,
        &url,
        &[
            "store",
            "copy",
            "--from",
            &format!("sqlite:{}", missing.display()),
            "--to",
            &to,
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    assert!(!missing.exists());

    // The first etcd replica, on the old data directory: same CA (sealed into etcd now),
    // same admin token, same VM.
    let mut config = ServerConfig::new(&dir, listen);
    let StoreConfig::Etcd(etcd_config) = StoreConfig::parse(&to).unwrap() else {
        panic!("{to} is not etcd");
    };
    config.store = StoreConfig::Etcd(etcd_config.clone());
    config.secrets_key = Some(SecretsKey::generate());
    let server = Server::start(config).await.unwrap();
    let url = format!("https://{}", server.addr);
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        ca_before
    );
    let out = cli(&dir, &url, &["vm", "get", "kept", "--output", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&dir, &url, &["cluster", "status", "--output", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["store"], "etcd", "{status}");
    server.shutdown().await;

    // The CA's key is in etcd only sealed.
    let store = firefleet_store::EtcdStore::connect(etcd_config)
        .await
        .unwrap();
    let (kvs, _) = store.list("/").await.unwrap();
    assert!(kvs.iter().any(|kv| kv.key == "/cluster/secrets"));
    for kv in &kvs {
        assert!(
            !String::from_utf8_lossy(&kv.value).contains("PRIVATE KEY"),
            "{} holds a private key in the clear",
            kv.key
        );
    }
}
