//! `firefleet audit`: list, verify on the server, export, and verify an export offline against
//! the public key; an edited, a deleted and a re-ordered line in the export are named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, path::Path};

use firefleet_server::{Server, ServerConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_firefleet");

async fn cli(dir: &Path, server: &Server, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .arg("--server")
        .arg(format!("https://{}", server.addr))
        .arg("--token")
        .arg(format!("@{}", dir.join("admin.token").display()))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .output()
        .await
        .unwrap()
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_ls_verify_export_and_an_edited_export() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(ServerConfig::new(dir.clone(), listen))
        .await
        .unwrap();

    for tenant in ["acme", "globex", "initech"] {
        let out = cli(&dir, &server, &["token", "create", "--tenant", tenant]).await;
        assert!(out.status.success(), "{out:?}");
    }

    let ls = json(&cli(&dir, &server, &["audit", "ls", "--output", "json"]).await);
    let entries = ls["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{ls}");
    assert_eq!(entries[0]["event"]["action"], "POST /v1/tokens");
    let page = json(
        &cli(
            &dir,
            &server,
            &[
                "audit", "ls", "--after", "1", "--limit", "1", "--output", "json",
            ],
        )
        .await,
    );
    assert_eq!(page["entries"][0]["event"]["seq"], 2, "{page}");
    let table = cli(&dir, &server, &["audit", "ls"]).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("admin"));

    let v = json(&cli(&dir, &server, &["audit", "verify", "--output", "json"]).await);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], 3, "{v}");

    let export = root.path().join("audit.jsonl");
    let out = cli(
        &dir,
        &server,
        &["audit", "export", "--out", export.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(text.lines().count(), 3);
    let public = dir.join("audit.pub");
    let offline = |file: &Path| {
        std::process::Command::new(BIN)
            .args(["audit", "verify", "--output", "json", "--file"])
            .arg(file)
            .arg("--public-key")
            .arg(&public)
            .output()
            .unwrap()
    };
    let v = json(&offline(&export));
    assert_eq!(v["ok"], true, "{v}");

    // Tampered exports: the check fails (non-zero), naming the first bad entry.
    let lines: Vec<&str> = text.lines().collect();
    let edited = lines[1].replace("\"actor\":\"admin\"", "\"actor\":\"tenant:acme\"");
    assert_ne!(edited, lines[1]);
    for (name, content, seq, kind) in [
        (
            "edited",
            [lines[0], &edited, lines[2]].join("\n"),
            2,
            "hash_mismatch",
        ),
        ("deleted", [lines[0], lines[2]].join("\n"), 2, "deleted"),
        (
            "swapped",
            [lines[0], lines[2], lines[1]].join("\n"),
            2,
            "reordered",
        ),
        ("garbage", [lines[0], "{oops"].join("\n"), 2, "unreadable"),
    ] {
        let file = root.path().join(format!("{name}.jsonl"));
        std::fs::write(&file, content).unwrap();
        let out = offline(&file);
        assert!(!out.status.success(), "{name}: accepted");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["first_bad"]["seq"], seq, "{name}: {v}");
        assert_eq!(v["first_bad"]["reason"]["kind"], kind, "{name}: {v}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("seq {seq}")), "{name}: {err}");
    }

    // Another key: every entry fails, the first is named.
    let other = root.path().join("other.pub");
    std::fs::write(
        &other,
        firefleet_audit::verifying_key_to_hex(
            &firefleet_audit::SigningKey::from_bytes(&[3; 32]).verifying_key(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify", "--output", "json", "--file"])
        .arg(&export)
        .arg("--public-key")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_bad"]["seq"], 1, "{v}");
    assert_eq!(v["first_bad"]["reason"]["kind"], "bad_signature", "{v}");

    // --file needs --public-key.
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify", "--file"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(!out.status.success());

    server.shutdown().await;
}
