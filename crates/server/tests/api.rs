//! The API against bad input, with a real server (real TLS, real HTTP, real SQLite file). Each
//! bad request gets a clear 4xx (or a TLS refusal) and leaves the store unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_testkit::server::{client, copy_dir, Fixture};
use firefleet_testkit::spec::{vm_spec, TEST_IMAGE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Waits until the scheduling controller has recorded why a new VM waits (there are no nodes in
/// these tests), so that the only writer left is the request under test.
async fn settle(f: &Fixture, id: &str) {
    for _ in 0..100 {
        let (_, vm) = f.get(&f.admin, &format!("/v1/vms/{id}")).await;
        if vm["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unschedulable")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("vm {id} never got its unschedulable message");
}

fn vm_body() -> Value {
    vm_spec("web")
}

/// Asserts a 4xx whose error names `field`, and that the store did not change.
async fn assert_refused(
    f: &Fixture,
    token: Option<&str>,
    body: String,
    status: StatusCode,
    field_hint: &str,
) {
    let before = f.revision().await;
    let (s, v) = f.post(token, "/v1/vms", body.clone()).await;
    assert_eq!(s, status, "body {body} -> {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(field_hint),
        "error for {body} should name {field_hint:?}: {v}"
    );
    assert_eq!(
        f.revision().await,
        before,
        "store changed by a refused request: {body}"
    );
}

#[tokio::test]
async fn bad_vm_requests_are_refused_naming_the_field() {
    let f = Fixture::start().await;
    let t = f.tenant_token("acme").await;
    let t = Some(t.as_str());
    assert_refused(
        &f,
        t,
        "{\"name\": ".to_owned(),
        StatusCode::BAD_REQUEST,
        "invalid JSON",
    )
    .await;
    let mut unknown = vm_body();
    unknown["colour"] = json!("red");
    assert_refused(
        &f,
        t,
        unknown.to_string(),
        StatusCode::BAD_REQUEST,
        "colour",
    )
    .await;
    let mut nested_unknown = vm_body();
    nested_unknown["resources"]["gpus_please"] = json!(3);
    assert_refused(
        &f,
        t,
        nested_unknown.to_string(),
        StatusCode::BAD_REQUEST,
        "gpus_please",
    )
    .await;
    for (vcpus, mem, field) in [
        (json!(0), json!(256), "resources.vcpus"),
        (json!(-1), json!(256), "resources.vcpus"),
        (json!(1), json!(0), "resources.memory_mib"),
        (json!(1), json!(-5), "resources.memory_mib"),
        (json!(100000), json!(256), "resources.vcpus"),
        (json!(1), json!(1u64 << 40), "resources.memory_mib"),
        (json!(1), json!("many"), "resources.memory_mib"),
    ] {
        let mut b = vm_body();
        b["resources"] = json!({ "vcpus": vcpus, "memory_mib": mem });
        assert_refused(&f, t, b.to_string(), StatusCode::BAD_REQUEST, field).await;
    }
    for name in [
        "",
        "UPPER",
        "has space",
        "-dash",
        "x".repeat(64).as_str(),
        "a/b",
    ] {
        let mut b = vm_body();
        b["name"] = json!(name);
        assert_refused(&f, t, b.to_string(), StatusCode::BAD_REQUEST, "name").await;
    }
    let mut b = vm_body();
    b["image"] = json!("ubuntu:latest");
    assert_refused(&f, t, b.to_string(), StatusCode::BAD_REQUEST, "image").await;
    let mut b = vm_body();
    b["labels"] = json!({ "Bad Key": "v" });
    assert_refused(&f, t, b.to_string(), StatusCode::BAD_REQUEST, "labels").await;
    // Too large a body.
    let mut b = vm_body();
    b["labels"] = json!({ "k": "v".repeat(100_000) });
    assert_refused(
        &f,
        t,
        b.to_string(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than",
    )
    .await;
    // A tenant may not create for another tenant.
    let mut b = vm_body();
    b["tenant"] = json!("other");
    assert_refused(&f, t, b.to_string(), StatusCode::FORBIDDEN, "admin").await;
    // And a good one goes through.
    let (s, v) = f.post(t, "/v1/vms", vm_body().to_string()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["spec"]["resources"],
        json!({ "vcpus": 1, "memory_mib": 256 })
    );
    settle(&f, v["id"].as_str().unwrap()).await;
    // Same name again: conflict.
    assert_refused(
        &f,
        t,
        vm_body().to_string(),
        StatusCode::CONFLICT,
        "already exists",
    )
    .await;
}

#[tokio::test]
async fn tokens_are_required_and_tenants_are_isolated() {
    let f = Fixture::start().await;
    assert_refused(
        &f,
        None,
        vm_body().to_string(),
        StatusCode::UNAUTHORIZED,
        "bearer token",
    )
    .await;
    assert_refused(
        &f,
        Some("fft_wrong"),
        vm_body().to_string(),
        StatusCode::UNAUTHORIZED,
        "invalid token",
    )
    .await;

    let acme = f.tenant_token("acme").await;
    let globex = f.tenant_token("globex").await;
    let (s, vm) = f.post(Some(&acme), "/v1/vms", vm_body().to_string()).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = vm["id"].as_str().unwrap();
    settle(&f, id).await;

    // globex sees nothing of acme's VM, by id or by name, and cannot stop or delete it.
    let (s, list) = f.get(&globex, "/v1/vms").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    for path in [
        format!("/v1/vms/{id}"),
        "/v1/vms/web".to_owned(),
        format!("/v1/vms/{id}/logs"),
    ] {
        let (s, _) = f.get(&globex, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let before = f.revision().await;
    let (s, _) = f
        .post(Some(&globex), &format!("/v1/vms/{id}/stop"), String::new())
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let resp = f
        .http
        .delete(f.url(&format!("/v1/vms/{id}")))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(f.revision().await, before);
    // Tenants cannot mint tokens or see nodes.
    let (s, _) = f
        .post(
            Some(&globex),
            "/v1/tokens",
            json!({ "tenant": "acme" }).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = f.get(&globex, "/v1/nodes").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // acme sees its VM by name and id; the admin sees it too.
    assert_eq!(f.get(&acme, "/v1/vms/web").await.0, StatusCode::OK);
    assert_eq!(
        f.get(&f.admin, &format!("/v1/vms/{id}")).await.0,
        StatusCode::OK
    );
    // acme stops it (never placed, so it is stopped at once).
    let (s, v) = f
        .post(Some(&acme), &format!("/v1/vms/{id}/stop"), String::new())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"]["phase"], "stopped");
}

#[tokio::test]
async fn agents_need_a_client_certificate_and_join_tokens_work_once() {
    let f = Fixture::start().await;
    // No client certificate: the agent endpoints refuse.
    let before = f.revision().await;
    let resp = f.http.get(f.url("/v1/agent/intents")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = f
        .http
        .post(f.url("/v1/agent/heartbeat"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(f.revision().await, before);

    // Enroll with a join token.
    let (s, jt) = f
        .post(Some(&f.admin), "/v1/join-tokens", "{}".to_owned())
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let token = jt["token"].as_str().unwrap();
    let (csr, key) = firefleet_pki::make_agent_csr("node-a").unwrap();
    let enroll = json!({ "join_token": token, "node": "node-a", "labels": { "cloud": "aws" }, "csr_pem": csr });
    let (s, cert) = f.post(None, "/v1/agent/enroll", enroll.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{cert}");
    // The same token again (even for another node) is refused, and changes nothing.
    let before = f.revision().await;
    let (csr_b, _) = firefleet_pki::make_agent_csr("node-b").unwrap();
    let again = json!({ "join_token": token, "node": "node-b", "csr_pem": csr_b });
    let (s, v) = f.post(None, "/v1/agent/enroll", again.to_string()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already used"));
    assert_eq!(f.revision().await, before);

    // With its certificate the agent is let in.
    let agent = client(
        &f.server.ca_pem,
        Some((cert["cert_pem"].as_str().unwrap(), &key)),
    );
    let resp = agent.get(f.url("/v1/agent/intents")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A certificate from another CA is refused at the TLS handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let other = firefleet_pki::Ca::load_or_create(other_dir.path()).unwrap();
    let (csr_x, key_x) = firefleet_pki::make_agent_csr("node-a").unwrap();
    let forged = other
        .sign_agent_csr(&csr_x, "node-a", Duration::from_secs(3600))
        .unwrap()
        .cert_pem;
    let intruder = client(&f.server.ca_pem, Some((&forged, &key_x)));
    assert!(
        intruder
            .get(f.url("/v1/agent/intents"))
            .send()
            .await
            .is_err(),
        "handshake must fail"
    );
}

#[tokio::test]
async fn openapi_document_is_checked_in_and_current() {
    let generated = firefleet_server::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi.json is out of date with the code: run `UPDATE_OPENAPI=1 cargo test -p firefleet-server --test api openapi` and commit it"
    );
    // And the server serves the same document.
    let f = Fixture::start().await;
    let served = f
        .http
        .get(f.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, generated);
    let metrics = f
        .http
        .get(f.url("/metrics"))
        .bearer_auth(&f.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("firefleet_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("firefleet_store_revision"), "{metrics}");
}

/// Every operation in the OpenAPI document refuses an anonymous caller, except the few that are
/// public by design; agent operations refuse a token without a client certificate; admin
/// operations refuse a tenant token. A new endpoint is covered as soon as it is in the document.
#[tokio::test]
async fn every_endpoint_enforces_authorisation() {
    let f = Fixture::start().await;
    let tenant = f.tenant_token("acme").await;
    let doc: Value = serde_json::from_str(&firefleet_server::openapi_json()).unwrap();
    let public = [("get", "/healthz"), ("post", "/v1/agent/enroll")];
    let admin_only = [
        "/v1/nodes",
        "/v1/nodes/{node}",
        "/v1/tokens",
        "/v1/tokens/{id}",
        "/v1/join-tokens",
        "/metrics",
    ];
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if public.contains(&(method.as_str(), path.as_str())) {
                continue;
            }
            let url = f.url(
                &path
                    .replace("{vm}", "00000000-0000-0000-0000-000000000000")
                    .replace("{node}", "n1")
                    .replace("{id}", "0123456789abcdef"),
            );
            let url = if path.ends_with("/console") {
                format!("{url}?offset=0")
            } else {
                url
            };
            let send = |token: Option<&str>| {
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut r = f
                    .http
                    .request(m, &url)
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(t) = token {
                    r = r.bearer_auth(t);
                }
                r.send()
            };
            let anon = send(None).await.unwrap().status();
            assert_eq!(
                anon,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without credentials"
            );
            if path.starts_with("/v1/agent/") {
                let s = send(Some(&f.admin)).await.unwrap().status();
                assert_eq!(
                    s,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with a token but no client certificate"
                );
            }
            if admin_only.contains(&path.as_str()) {
                let s = send(Some(&tenant)).await.unwrap().status();
                assert_eq!(
                    s,
                    StatusCode::FORBIDDEN,
                    "{method} {path} with a tenant token"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} operations checked");
    // The public enroll endpoint still refuses a bad join token.
    let (csr, _) = firefleet_pki::make_agent_csr("n1").unwrap();
    let body = json!({ "join_token": "ffj_nope", "node": "n1", "csr_pem": csr });
    assert_eq!(
        f.post(None, "/v1/agent/enroll", body.to_string()).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn functions_refuse_bad_specs_and_bodies_and_stay_per_tenant() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    let other = f.tenant_token("other").await;
    let image = TEST_IMAGE;
    let good = json!({
        "name": "echo", "image": image, "cmd": ["cat"],
        "resources": { "vcpus": 1, "memory_mib": 128 }, "max": 2
    });
    for (patch, field) in [
        (json!({ "concurrency": 0 }), "concurrency"),
        (json!({ "min": 5 }), "min"),
        (json!({ "http_path": "/x" }), "http_path"),
        (json!({ "image": "latest" }), "image"),
        (json!({ "regions": ["Bad Region"] }), "regions[0]"),
        (json!({ "cmd": [] }), "cmd"),
    ] {
        let mut body = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let before = f.revision().await;
        let (s, v) = f.post(Some(&acme), "/v1/functions", body.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        assert_eq!(f.revision().await, before, "{field}: nothing stored");
    }
    let (s, v) = f
        .post(
            Some(&acme),
            "/v1/functions",
            json!({"name": "echo", "bogus": 1}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (s, v) = f.post(Some(&acme), "/v1/functions", good.to_string()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"]["phase"], "deploying");
    // Deploying the same spec again changes nothing.
    let (s, v2) = f.post(Some(&acme), "/v1/functions", good.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v2}");
    assert_eq!(v2["generation"], v["generation"]);
    // Another tenant neither sees nor invokes it.
    assert_eq!(
        f.get(&other, "/v1/functions/echo").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, list) = f.get(&other, "/v1/functions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let invoke = |token: String, body: Vec<u8>| {
        let r = f
            .http
            .post(f.url("/v1/functions/echo/invoke"))
            .bearer_auth(token)
            .body(body);
        async move {
            let resp = r.send().await.unwrap();
            let s = resp.status();
            (s, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(
        invoke(other.clone(), b"x".to_vec()).await.0,
        StatusCode::NOT_FOUND
    );
    // Too large a body is refused before anything waits.
    let (s, v) = invoke(
        acme.clone(),
        vec![b'x'; firefleet_api::MAX_INVOKE_BYTES + 1],
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // No node, no instance: the hold deadline passes with a clear error.
    let (s, v) = invoke(acme.clone(), b"x".to_vec()).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no instance of function echo was free within"),
        "{msg}"
    );
    // The end users' route needs a token for a function that is not public; without one the
    // function is as good as missing (names cannot be probed).
    let resp = f
        .http
        .post(f.url("/fn/acme/echo"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Removing it removes its template VM too.
    let r = f
        .http
        .delete(f.url("/v1/functions/echo"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        f.get(&acme, "/v1/functions/echo").await.0,
        StatusCode::NOT_FOUND
    );
    for _ in 0..50 {
        let (_, vms) = f.get(&acme, "/v1/vms").await;
        if vms["items"].as_array().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the function's template VM was not removed");
}

#[tokio::test]
async fn oversized_snapshot_uploads_are_refused_with_413_and_not_kept() {
    use firefleet_store::KvStore;
    let f = Fixture::start().await;
    let agent = f.heartbeating_node("node-a").await;
    let (s, vm) = f
        .post(Some(&f.admin), "/v1/vms", vm_body().to_string())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();

    // The VM runs on node-a and has a snapshot there (written into the store while the
    // server is down: no agent in this test runs VMs).
    let (_, mut vm) = f.get(&f.admin, &format!("/v1/vms/{id}")).await;
    vm["status"]["node"] = json!("node-a");
    vm["status"]["phase"] = json!("running");
    let snapshot = json!({ "vm": id, "name": "s1", "node": "node-a", "phase": "ready",
        "requested_ms": 1, "ready_ms": 1, "bytes": 1, "pause_ms": 1, "message": null });
    f.server.shutdown().await;
    // A copy of its data: connections of the stopped server may still hold the store open.
    let moved = tempfile::tempdir().unwrap();
    let data = moved.path().to_owned();
    copy_dir(f.dir.path(), &data);
    {
        let store = firefleet_store::SqliteStore::open(&data.join("store.db")).unwrap();
        store
            .put(&format!("/vms/{id}"), vm.to_string().into_bytes())
            .await
            .unwrap();
        store
            .put(
                &format!("/snapshots/{id}/s1"),
                snapshot.to_string().into_bytes(),
            )
            .await
            .unwrap();
        let migration = json!({ "vm": id, "from": "node-a", "to": "node-b", "generation": 1,
            "snapshot": "m1", "phase": "transferring", "requested_ms": 1 });
        store
            .put(
                &format!("/migrations/{id}"),
                migration.to_string().into_bytes(),
            )
            .await
            .unwrap();
    }
    let f = Fixture::start_in(moved).await;
    // 256 MiB of memory and no disks: at most 512 MiB. A body announcing 1 GiB is refused
    // before the server reads it.
    let limit = firefleet_api::max_snapshot_bytes(256, &[]);
    let oversized = |path: String| {
        // It sends 4 KiB and then nothing: the answer must come without reading the rest.
        let body = futures::StreamExt::chain(
            futures::stream::once(async { Ok::<_, std::io::Error>(vec![0u8; 4096]) }),
            futures::stream::pending(),
        );
        agent
            .put(f.url(&path))
            .header("content-type", "application/x-tar")
            .header("content-length", (limit + 1).to_string())
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };
    for path in [
        format!("/v1/agent/vms/{id}/snapshots/s1/data"),
        format!("/v1/agent/migrations/{id}/snapshot"),
    ] {
        let resp = oversized(path.clone()).await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {v}");
        assert_eq!(v["error"]["code"], json!("payload_too_large"), "{v}");
    }
    let copies = data.join("snapshots").join(&id);
    let transfers = data.join("transfers");
    for kept in [
        copies.join("s1.tar"),
        copies.join("s1.part"),
        transfers.join(format!("{id}-m1.tar")),
        transfers.join(format!("{id}-m1.part")),
    ] {
        assert!(!kept.exists(), "{} kept", kept.display());
    }
    // The migration waits for its snapshot still.
    let (_, m) = f.get(&f.admin, &format!("/v1/vms/{id}/migration")).await;
    assert_eq!(m["phase"], json!("transferring"), "{m}");

    // Within the limit it is stored.
    let resp = agent
        .put(f.url(&format!("/v1/agent/vms/{id}/snapshots/s1/data")))
        .header("content-type", "application/x-tar")
        .body(vec![1u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(std::fs::read(copies.join("s1.tar")).unwrap().len(), 4096);
    f.server.shutdown().await;
}
