//! What a probe of the running server found (issue 14), each as a test against a real server:
//! bounded metrics labels, protected metrics, slow and idle connections, connection caps, rate
//! limits, token expiry and revocation, audited refusals, function names that cannot be probed,
//! private files, strict request bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use firefleet_testkit::server::Fixture;
use firefleet_testkit::spec::{vm_spec, TEST_IMAGE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn metrics(f: &Fixture, token: Option<&str>) -> (StatusCode, String) {
    let mut r = f.http.get(f.url("/metrics"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn create_token(f: &Fixture, body: Value) -> (StatusCode, Value) {
    f.post(Some(&f.admin), "/v1/tokens", body.to_string()).await
}

#[tokio::test]
async fn metrics_labels_come_from_a_closed_set_whatever_the_method() {
    let f = Fixture::start().await;
    for i in 0..40 {
        let method = Method::from_bytes(format!("PROBE{i}{}", "X".repeat(200)).as_bytes()).unwrap();
        let _ = f.http.request(method, f.url("/healthz")).send().await;
    }
    let (s, text) = metrics(&f, Some(&f.admin)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!text.contains("PROBE"), "a caller's method became a label");
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("firefleet_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    assert!(methods.len() <= 8, "{methods:?}");
}

#[tokio::test]
async fn metrics_need_an_admin_or_a_metrics_token_and_a_metrics_token_reads_nothing_else() {
    let f = Fixture::start().await;
    assert_eq!(metrics(&f, None).await.0, StatusCode::UNAUTHORIZED);
    let acme = f.tenant_token("acme").await;
    assert_eq!(metrics(&f, Some(&acme)).await.0, StatusCode::FORBIDDEN);
    let (s, v) = create_token(&f, json!({"tenant": "prometheus", "role": "metrics"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let scraper = v["token"].as_str().unwrap().to_owned();
    let (s, text) = metrics(&f, Some(&scraper)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("firefleet_store_revision"));
    let (s, _) = f.get(&scraper, "/v1/vms").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a metrics token lists no VMs");
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let f = Fixture::start().await;
    // Some traffic, so that every family has samples.
    let acme = f.tenant_token("acme").await;
    let _ = f.get(&acme, "/v1/vms").await;
    let (_, text) = metrics(&f, Some(&f.admin)).await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw TLS connection to the server (HTTP/1.1, no ALPN).
async fn tls_connect(
    f: &Fixture,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut f.server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(f.server.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Reads until the server closes the connection (or `limit` passes); true if it closed.
async fn closed_within(
    conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    false
}

fn short_timeouts(c: &mut firefleet_server::ServerConfig) {
    c.limits.header_timeout = Duration::from_secs(2);
    c.limits.idle_timeout = Duration::from_secs(2);
}

#[tokio::test]
async fn a_slowloris_sending_a_header_line_a_second_is_cut_off() {
    let f = Fixture::start_with(short_timeouts).await;
    let mut conn = tls_connect(&f).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut lines = 0;
    let cut = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if conn
            .write_all(format!("X-Slow-{lines}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            break true;
        }
        conn.flush().await.ok();
        lines += 1;
        if closed_within(&mut conn, Duration::from_millis(10)).await {
            break true;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break false;
        }
    };
    assert!(
        cut,
        "the slow request was still open after {lines} header lines"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let f = Fixture::start_with(short_timeouts).await;
    let mut conn = tls_connect(&f).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut conn, Duration::from_secs(10)).await,
        "an idle connection stayed open"
    );
}

#[tokio::test]
async fn a_client_cannot_hold_more_connections_than_its_limit() {
    let f = Fixture::start_with(|c| c.limits.max_connections_per_client = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(&f).await.unwrap());
    }
    // The fourth is closed before its handshake.
    assert!(
        tls_connect(&f).await.is_err(),
        "a fourth connection was served"
    );
    drop(held.pop());
    // The server sees the close shortly after; a new connection then gets the place.
    let mut ok = false;
    for _ in 0..50 {
        if tls_connect(&f).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a closed connection's place was not given back");
}

#[tokio::test]
async fn a_token_past_its_rate_gets_429_with_retry_after_and_others_are_not_held_back() {
    let f = Fixture::start_with(|c| {
        c.limits.requests_per_sec = 0.5;
        c.limits.burst = 3.0;
    })
    .await;
    let acme = f.tenant_token("acme").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let resp = f
            .http
            .get(f.url("/v1/vms"))
            .bearer_auth(&acme)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3], "{statuses:?}");
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "{retry_after:?}"
    );
    // Another token has its own bucket (the admin made a token above: 1 of its 3).
    let (s, _) = f.get(&f.admin, "/v1/vms").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn tokens_expire_can_be_listed_and_revoked_and_admin_is_reserved() {
    let f = Fixture::start().await;
    // The admin identity cannot be minted for a tenant token.
    let (s, v) = create_token(&f, json!({"tenant": "admin"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "tenant");

    let (s, short) = create_token(&f, json!({"tenant": "acme", "ttl_secs": 1, "note": "ci"})).await;
    assert_eq!(s, StatusCode::CREATED, "{short}");
    let short_token = short["token"].as_str().unwrap().to_owned();
    let (s, long) = create_token(&f, json!({"tenant": "acme"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let long_token = long["token"].as_str().unwrap().to_owned();
    let long_id = long["id"].as_str().unwrap().to_owned();
    assert_eq!(f.get(&short_token, "/v1/vms").await.0, StatusCode::OK);

    let (s, list) = f.get(&f.admin, "/v1/tokens?tenant=acme").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert!(
        !list.to_string().contains(&long_token),
        "a secret was listed"
    );
    assert!(items.iter().any(|t| t["note"] == "ci"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        f.get(&short_token, "/v1/vms").await.0,
        StatusCode::UNAUTHORIZED,
        "an expired token still works"
    );

    let resp = f
        .http
        .delete(f.url(&format!("/v1/tokens/{long_id}")))
        .bearer_auth(&f.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        f.get(&long_token, "/v1/vms").await.0,
        StatusCode::UNAUTHORIZED,
        "a revoked token still works"
    );
    // The audit log names the role and the token that acted.
    let (_, audit) = f.get(&f.admin, "/v1/audit").await;
    let revoke = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["action"] == "DELETE /v1/tokens/{id}")
        .expect("the revocation is audited");
    assert_eq!(revoke["event"]["actor"], "admin");
    assert_eq!(revoke["event"]["detail"]["role"], "admin");
    assert_eq!(
        revoke["event"]["detail"]["token"].as_str().unwrap().len(),
        16
    );
}

#[tokio::test]
async fn refused_calls_are_audited_aggregated() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    let globex = f.tenant_token("globex").await;
    let (s, vm) = f
        .post(Some(&acme), "/v1/vms", vm_spec("web").to_string())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let id = vm["id"].as_str().unwrap();
    for _ in 0..5 {
        assert_eq!(
            f.get(&globex, &format!("/v1/vms/{id}")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    for _ in 0..3 {
        let (s, _) = f.post(None, "/v1/vms", "{}".to_owned()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Refusals are written when aggregated (every 30 s) and at shutdown: restart to read them.
    let Fixture { dir, server, .. } = f;
    server.shutdown().await;
    let again = Fixture::start_in(dir).await;
    let (s, audit) = again.get(&again.admin, "/v1/audit").await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let probe = entries
        .iter()
        .find(|e| e["event"]["action"] == "refused GET /v1/vms/{vm}")
        .unwrap_or_else(|| panic!("no refusal entry: {audit}"));
    assert_eq!(probe["event"]["actor"], "tenant:globex");
    assert_eq!(probe["event"]["outcome"], "404");
    assert_eq!(probe["event"]["detail"]["count"], "5");
    let anon = entries
        .iter()
        .find(|e| e["event"]["action"] == "refused POST /v1/vms")
        .unwrap_or_else(|| panic!("no anonymous refusal: {audit}"));
    assert_eq!(anon["event"]["actor"], "anonymous");
    assert_eq!(anon["event"]["detail"]["count"], "3");
    let (_, verify) = again.get(&again.admin, "/v1/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
    again.server.shutdown().await;
}

#[tokio::test]
async fn a_private_function_answers_anonymous_callers_as_a_missing_one() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    let spec = json!({
        "name": "secret", "image": TEST_IMAGE, "cmd": ["cat"],
        "resources": { "vcpus": 1, "memory_mib": 128 }, "max": 1
    });
    let (s, v) = f.post(Some(&acme), "/v1/functions", spec.to_string()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let call = |path: &str, token: Option<&str>| {
        let mut r = f.http.post(f.url(path)).body("x");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    let globex = f.tenant_token("globex").await;
    let (s_existing, existing) = call("/fn/acme/secret", None).await;
    let (s_missing, missing) = call("/fn/acme/nosuch", None).await;
    let (s_other, other) = call("/fn/acme/secret", Some(&globex)).await;
    assert_eq!(s_existing, StatusCode::NOT_FOUND, "{existing}");
    assert_eq!(s_missing, StatusCode::NOT_FOUND);
    assert_eq!(s_other, StatusCode::NOT_FOUND);
    // Same answer but for the name asked for.
    assert_eq!(existing["error"]["code"], missing["error"]["code"]);
    assert_eq!(
        existing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("secret", "NAME"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("nosuch", "NAME")
    );
    assert_eq!(existing, other);
}

#[tokio::test]
async fn the_data_directory_and_the_store_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(f.dir.path()), 0o700);
    assert_eq!(mode(&f.dir.path().join("store.db")), 0o600);
    // Written since the start: the WAL too.
    f.tenant_token("acme").await;
    let wal = f.dir.path().join("store.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
}

#[tokio::test]
async fn a_tenant_cannot_read_another_tenants_compliance_report() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    let (s, v) = f.get(&acme, "/v1/compliance/report?tenant=globex").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = f.get(&acme, "/v1/compliance/report?tenant=acme").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["tenant"], "acme");
    let (s, v) = f.get(&acme, "/v1/compliance/report").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["tenant"], "acme");
}

#[tokio::test]
async fn bodies_must_be_json_objects_with_a_json_content_type() {
    let f = Fixture::start().await;
    let before = f.revision().await;
    let (s, v) = create_token(&f, json!(["x"])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for content_type in [None, Some("text/plain"), Some("application/jsonx")] {
        let mut r = f
            .http
            .post(f.url("/v1/tokens"))
            .bearer_auth(&f.admin)
            .body(json!({"tenant": "acme"}).to_string());
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    assert_eq!(
        f.revision().await,
        before,
        "a refused body changed the store"
    );
    let resp = f
        .http
        .post(f.url("/v1/tokens"))
        .bearer_auth(&f.admin)
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"tenant": "acme"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

/// curl over HTTP/2 with a body the server refuses before reading it (a bad token): before,
/// the server reset the stream and curl failed (exit 92) in about a third of the tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_over_http2_reaches_curl_as_an_answer() {
    let f = Fixture::start().await;
    let ca = f.dir.path().join("ca.pem");
    for (name, size) in [("small", 40_000), ("large", 300_000)] {
        let body = f.dir.path().join(format!("{name}.json"));
        std::fs::write(&body, format!("{{\"name\":\"{}\"}}", "x".repeat(size))).unwrap();
        for attempt in 0..15 {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--http2", "--cacert"])
                .arg(&ca)
                .args([
                    "-H",
                    "Authorization: Bearer not-a-token",
                    "-H",
                    "content-type: application/json",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{http_version}",
                    "--data-binary",
                ])
                .arg(format!("@{}", body.display()))
                .arg(f.url("/v1/vms"))
                .output()
                .await
                .expect("curl (scripts/setup.sh installs it)");
            assert!(
                out.status.success(),
                "{name} body, try {attempt}: curl {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "401 2",
                "{name}, try {attempt}"
            );
        }
    }
}

#[tokio::test]
async fn a_vm_with_default_settings_satisfies_the_built_in_policies() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    let create = |body: Value| {
        f.http
            .post(f.url("/v1/vms"))
            .bearer_auth(&acme)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let image = TEST_IMAGE;
    let resp = create(
        json!({"name": "plain", "image": image, "resources": {"vcpus": 1, "memory_mib": 128}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(
        resp.headers().get("warning").is_none(),
        "a default VM drew an admission warning: {:?}",
        resp.headers().get("warning")
    );
    let vm: Value = resp.json().await.unwrap();
    assert_eq!(vm["spec"]["network"]["egress_mbit"], 1000);
    // Unlimited egress, asked for explicitly, is admitted with the policy's warning.
    let resp = create(
        json!({"name": "open", "image": image, "resources": {"vcpus": 1, "memory_mib": 128},
        "network": {"egress_mbit": null}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let warning = resp.headers().get("warning").unwrap().to_str().unwrap();
    assert!(warning.contains("egress_limited"), "{warning}");
}
