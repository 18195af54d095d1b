//! Per-tenant quotas and paged lists, against a real server: creates past a quota are refused
//! naming it (and only for that tenant), concurrent creates do not overshoot, and lists come a
//! page at a time from the tenant's own keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use firefleet_api::TenantQuota;
use firefleet_store::KvStore;
use firefleet_testkit::server::{copy_dir, Fixture};
use firefleet_testkit::spec::{function_spec, vm_spec_with};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn vm(name: &str, vcpus: u32) -> String {
    vm_spec_with(
        name,
        json!({ "resources": { "vcpus": vcpus, "memory_mib": 256 } }),
    )
    .to_string()
}

fn function(name: &str) -> String {
    function_spec(name).to_string()
}

/// Asserts a 403 `quota_exceeded` whose message holds `says`.
fn assert_quota_refusal(s: StatusCode, v: &Value, says: &str) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(says), "{msg:?} should say {says:?}");
}

async fn put_tenant(f: &Fixture, body: Value) -> (StatusCode, Value) {
    let id = body["id"].as_str().unwrap().to_owned();
    let resp = f
        .http
        .put(f.url(&format!("/v1/tenants/{id}")))
        .bearer_auth(&f.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn delete(f: &Fixture, token: &str, path: &str) -> StatusCode {
    f.http
        .delete(f.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn vm_creates_past_a_quota_are_refused_naming_it_until_raised_or_freed() {
    let f = Fixture::start_with(|c| {
        c.default_quota = TenantQuota {
            vms: Some(3),
            vcpus: Some(4),
            ..TenantQuota::default()
        }
    })
    .await;
    let acme = f.tenant_token("acme").await;
    let other = f.tenant_token("other").await;
    for name in ["a", "b", "c"] {
        let (s, v) = f.post(Some(&acme), "/v1/vms", vm(name, 1)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = f.post(Some(&acme), "/v1/vms", vm("d", 1)).await;
    assert_quota_refusal(s, &v, "quota exceeded: vms 3 + 1 > 3 (tenant acme;");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("firefleet tenant set acme --quota vms="));
    let (_, list) = f.get(&acme, "/v1/vms").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        3,
        "a refusal stores no VM"
    );
    // An admin creating for acme is held to acme's quota too.
    let (s, v) = f
        .post(
            Some(&f.admin),
            "/v1/vms",
            vm_spec_with("d", json!({ "tenant": "acme" })).to_string(),
        )
        .await;
    assert_quota_refusal(s, &v, "vms 3 + 1 > 3");

    // Another tenant, and the admin tenant (unlimited), are unaffected.
    for name in ["a", "b", "c"] {
        let (s, v) = f.post(Some(&other), "/v1/vms", vm(name, 1)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    for i in 0..5 {
        let (s, v) = f
            .post(Some(&f.admin), "/v1/vms", vm(&format!("adm{i}"), 2))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    // Deleting a VM frees its share; the vCPU quota still holds.
    assert_eq!(delete(&f, &acme, "/v1/vms/c").await, StatusCode::NO_CONTENT);
    let (s, v) = f.post(Some(&acme), "/v1/vms", vm("d", 3)).await;
    assert_quota_refusal(s, &v, "quota exceeded: vcpus 2 + 3 > 4 (tenant acme;");
    let (s, v) = f.post(Some(&acme), "/v1/vms", vm("d", 2)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // The admin raises acme's quota (vCPUs unlimited now): the create goes through.
    let (s, v) = put_tenant(
        &f,
        json!({ "id": "acme", "class": "standard", "quota": { "vms": 10 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = f.post(Some(&acme), "/v1/vms", vm("e", 8)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // The tenant list shows the quota and what acme holds.
    let (s, v) = f.get(&f.admin, "/v1/tenants").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tenants"][0]["quota"], json!({ "vms": 10 }), "{v}");
    assert_eq!(v["default_quota"], json!({ "vms": 3, "vcpus": 4 }), "{v}");
    let u = &v["usage"]["acme"];
    assert_eq!(
        (u["vms"].as_u64(), u["vcpus"].as_u64()),
        (Some(4), Some(12)),
        "{v}"
    );
}

#[tokio::test]
async fn twenty_concurrent_creates_against_a_quota_of_five_make_exactly_five() {
    let f = Fixture::start_with(|c| {
        c.default_quota = TenantQuota {
            vms: Some(5),
            ..TenantQuota::default()
        }
    })
    .await;
    let acme = f.tenant_token("acme").await;
    let creates = (0..20).map(|i| {
        let (f, acme) = (&f, &acme);
        async move {
            f.post(Some(acme), "/v1/vms", vm(&format!("vm{i}"), 1))
                .await
        }
    });
    let answers = futures::future::join_all(creates).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 5, "{answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_quota_refusal(*s, v, "vms 5 + 1 > 5");
    }
    let (_, list) = f.get(&acme, "/v1/vms").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 5, "{list}");
}

#[tokio::test]
async fn new_functions_count_against_the_function_quota_and_updates_do_not() {
    let f = Fixture::start_with(|c| {
        c.default_quota = TenantQuota {
            functions: Some(1),
            ..TenantQuota::default()
        }
    })
    .await;
    let acme = f.tenant_token("acme").await;
    let other = f.tenant_token("other").await;
    let (s, v) = f.post(Some(&acme), "/v1/functions", function("echo")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Deploying it again changes it: no new function.
    let (s, v) = f.post(Some(&acme), "/v1/functions", function("echo")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = f
        .post(Some(&acme), "/v1/functions", function("echo2"))
        .await;
    assert_quota_refusal(s, &v, "quota exceeded: functions 1 + 1 > 1 (tenant acme;");
    let (s, v) = f
        .post(Some(&other), "/v1/functions", function("echo2"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A tenant's list shows its own functions only.
    let (s, v) = f.get(&acme, "/v1/functions?limit=10").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo"], "{v}");
    assert!(v.get("next").is_none(), "{v}");
}

/// Stops the server, writes `edits` into a copy of its store, and starts a server on the copy.
async fn restart_with(f: Fixture, edits: Vec<(String, Vec<u8>)>) -> Fixture {
    f.server.shutdown().await;
    let moved = tempfile::tempdir().unwrap();
    copy_dir(f.dir.path(), moved.path());
    {
        let store = firefleet_store::SqliteStore::open(&moved.path().join("store.db")).unwrap();
        for (key, value) in edits {
            store.put(&key, value).await.unwrap();
        }
    }
    Fixture::start_in(moved).await
}

#[tokio::test]
async fn snapshots_past_the_quota_are_refused() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    // A node that heartbeats, so that it is not taken for lost after the restart below.
    f.heartbeating_node("node-a").await;
    let (s, v) = put_tenant(
        &f,
        json!({ "id": "acme", "class": "standard", "quota": { "snapshots": 1 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Two VMs of acme, running on node-a (written into the store while the server is down:
    // no agent in this test runs VMs).
    let mut edits = Vec::new();
    for name in ["a", "b"] {
        let (s, mut v) = f.post(Some(&acme), "/v1/vms", vm(name, 1)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["status"]["node"] = json!("node-a");
        v["status"]["phase"] = json!("running");
        edits.push((
            format!("/vms/{}", v["id"].as_str().unwrap()),
            v.to_string().into_bytes(),
        ));
    }
    let f = restart_with(f, edits).await;
    let snap = |name: &str| json!({ "name": name }).to_string();
    let (s, v) = f.post(Some(&acme), "/v1/vms/a/snapshots", snap("s1")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = f.post(Some(&acme), "/v1/vms/b/snapshots", snap("s1")).await;
    assert_quota_refusal(s, &v, "quota exceeded: snapshots 1 + 1 > 1 (tenant acme;");
}

/// Follows `next` from `path` (which has a `limit=`), returning each page's names as
/// `tenant/name`.
async fn pages(f: &Fixture, token: &str, path: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{path}&after={}", a.replace('/', "%2F")),
            None => path.to_owned(),
        };
        let (s, v) = f.get(token, &url).await;
        assert_eq!(s, StatusCode::OK, "{url}: {v}");
        out.push(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|vm| {
                    format!("{}/{}", vm["spec"]["tenant"], vm["spec"]["name"]).replace('"', "")
                })
                .collect(),
        );
        match v.get("next").and_then(Value::as_str) {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
        assert!(out.len() < 20, "paging does not end");
    }
}

#[tokio::test]
async fn lists_come_in_pages_from_the_tenants_own_keys() {
    let f = Fixture::start().await;
    let acme = f.tenant_token("acme").await;
    let other = f.tenant_token("other").await;
    for i in 0..25 {
        let (s, v) = f
            .post(Some(&acme), "/v1/vms", vm(&format!("vm{i:02}"), 1))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let mut corrupt = Vec::new();
    for name in ["x", "y", "z"] {
        let (s, v) = f.post(Some(&other), "/v1/vms", vm(name, 1)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        corrupt.push((
            format!("/vms/{}", v["id"].as_str().unwrap()),
            b"not json".to_vec(),
        ));
    }

    // 25 VMs, 10 a page: 10, 10, 5, no repeats, no gaps, nothing of another tenant's.
    let got = pages(&f, &acme, "/v1/vms?limit=10").await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let all: Vec<String> = got.concat();
    let want: Vec<String> = (0..25).map(|i| format!("acme/vm{i:02}")).collect();
    assert_eq!(all, want);
    // The admin pages across tenants (cursor `tenant/name`).
    let got = pages(&f, &f.admin, "/v1/vms?limit=10").await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 8]);
    assert_eq!(got.concat().into_iter().collect::<BTreeSet<_>>().len(), 28);
    let got = pages(&f, &f.admin, "/v1/vms?limit=2&tenant=other").await;
    assert_eq!(got.concat(), ["other/x", "other/y", "other/z"]);
    // Without limit, one page of everything (old clients keep working).
    let (_, v) = f.get(&acme, "/v1/vms").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 25);
    assert!(v.get("next").is_none(), "{v}");

    // Bad parameters are refused naming them; a tenant lists no other tenant's VMs.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after=Not%20a%20name", "after"),
    ] {
        let (s, v) = f.get(&acme, &format!("/v1/vms?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }
    let (s, v) = f.get(&acme, "/v1/vms?tenant=other").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // acme's list never decodes the other tenant's VMs: with their records corrupt, it still
    // answers (an admin's list across tenants reads them, and fails).
    let f = restart_with(f, corrupt).await;
    let got = pages(&f, &acme, "/v1/vms?limit=10").await;
    assert_eq!(got.concat().len(), 25);
    let (s, v) = f.get(&f.admin, "/v1/vms").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
}
