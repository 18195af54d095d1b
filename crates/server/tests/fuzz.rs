//! The OpenAPI document is the contract: schemathesis (an OpenAPI fuzzer, installed by
//! `scripts/setup.sh`) generates requests from the document the server serves and runs all of
//! its checks (no 5xx, status codes, content types, headers and bodies as documented, invalid
//! data refused, authentication not ignored, ...) against a real server. Any failure fails the
//! test, with schemathesis's report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use firefleet_testkit::server::Fixture;

/// The schemathesis release `scripts/setup.sh` installs (keep the two in step).
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Test cases per operation and phase: bounds the run to about a minute.
const MAX_EXAMPLES: &str = "20";

/// The whole run, past which the test fails.
const WALL_CLOCK: Duration = Duration::from_secs(300);

/// `st`: `FIREFLEET_SCHEMATHESIS` (which `scripts/test.sh` exports), else where
/// `scripts/setup.sh` puts it.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREFLEET_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("FIREFLEET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/firefleet")
        });
    cache
        .join(format!("schemathesis-{SCHEMATHESIS_VERSION}"))
        .join("bin/st")
}

/// As a tenant: its own objects, and the refusals of everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_passes_every_schemathesis_check_as_a_tenant() {
    fuzz(false).await;
}

/// As the admin: the admin-only operations (nodes, tokens, tenants, policies, audit, plan)
/// answered for real, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_passes_every_schemathesis_check_as_the_admin() {
    fuzz(true).await;
}

/// Runs schemathesis against a fresh server as a tenant (`admin`: false) or as the admin.
async fn fuzz(admin: bool) {
    let st = schemathesis();
    assert!(
        st.is_file(),
        "schemathesis not found at {} (FIREFLEET_SCHEMATHESIS): run scripts/setup.sh",
        st.display()
    );
    // The fuzzer's thousands of requests come from one token: a rate limit it never meets.
    let f = Fixture::start_with(|c| {
        c.limits.requests_per_sec = 1_000_000.0;
        c.limits.burst = 1_000_000.0;
    })
    .await;
    let token = if admin {
        f.admin.clone()
    } else {
        f.tenant_token("fuzz").await
    };
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &f.server.ca_pem).unwrap();

    let mut cmd = tokio::process::Command::new(&st);
    cmd.current_dir(work.path())
        .arg("--config-file")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/schemathesis.toml"
        ))
        .arg("run")
        .arg(f.url("/openapi.json"))
        .args(["--url", &f.url("")])
        .arg("--tls-verify")
        .arg(&ca)
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--mode", "all"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", "1"])
        .args(["--generation-database", "none"])
        .args([
            "--request-timeout",
            "10",
            "--workers",
            "2",
            "--continue-on-failure",
        ])
        // The agent API (`/v1/agent/...`) answers only a node's client certificate, which a
        // token cannot stand in for; its authorisation is tested in `api.rs`.
        .args(["--exclude-path-regex", "^/v1/agent/"])
        // Exec waits for a node's agent (its timeout plus 15 s) and there are no nodes here.
        .args(["--exclude-path", "/v1/vms/{vm}/exec"])
        .arg("--no-color")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WALL_CLOCK, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran past {WALL_CLOCK:?}"))
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{report}",
        out.status
    );
    println!("{report}");
}
