//! Node identity against takeover, with a real server (real TLS, real client certificates,
//! real SQLite file): a join token cannot enrol a name that is taken unless it was made for
//! that node; a re-enrolment, a renewal and a removal revoke the older certificates on every
//! agent endpoint; agent certificates are short-lived; enrolment is audited with the node name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_server::ServerConfig;
use firefleet_testkit::server::{self, client};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The certificate lifetime these servers issue.
const LIFETIME: Duration = Duration::from_secs(2 * 3600);

/// A node's key and certificate, as its agent holds them.
struct Agent {
    cert: String,
    key: String,
}

/// The test kit's server, issuing certificates of [`LIFETIME`].
struct Fixture(server::Fixture);

impl std::ops::Deref for Fixture {
    type Target = server::Fixture;

    fn deref(&self) -> &server::Fixture {
        &self.0
    }
}

fn lifetime(config: &mut ServerConfig) {
    config.agent_cert_lifetime = LIFETIME;
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture(server::Fixture::start_with(lifetime).await)
    }

    async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        json_of(
            self.http
                .request(method, self.url(path))
                .bearer_auth(&self.admin)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn join_token(&self, body: Value) -> String {
        let (s, v) = self
            .admin_call(reqwest::Method::POST, "/v1/join-tokens", body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Enrols `node` with `token`: the agent's key and certificate, or the refusal.
    async fn enroll(
        &self,
        token: &str,
        node: &str,
        labels: Value,
    ) -> Result<Agent, (StatusCode, Value)> {
        let (csr, key) = firefleet_pki::make_agent_csr(node).unwrap();
        let body = json!({ "join_token": token, "node": node, "labels": labels, "csr_pem": csr });
        let (s, v) = json_of(
            self.http
                .post(self.url("/v1/agent/enroll"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        if s != StatusCode::OK {
            return Err((s, v));
        }
        Ok(Agent {
            cert: v["cert_pem"].as_str().unwrap().to_owned(),
            key,
        })
    }

    /// What an agent endpoint (the intents) answers `agent`.
    async fn agent_call(&self, agent: &Agent) -> StatusCode {
        let http = client(&self.server.ca_pem, Some((&agent.cert, &agent.key)));
        http.get(self.url("/v1/agent/intents"))
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn node(&self, name: &str) -> (StatusCode, Value) {
        self.admin_call(
            reqwest::Method::GET,
            &format!("/v1/nodes/{name}"),
            Value::Null,
        )
        .await
    }
}

fn lifetime_of(cert_pem: &str) -> Duration {
    let info = firefleet_pki::node_cert_info_pem(cert_pem).unwrap();
    info.not_after.duration_since(info.not_before).unwrap()
}

#[tokio::test]
async fn a_second_join_token_cannot_take_over_an_enrolled_name() {
    let f = Fixture::start().await;
    let first = f.join_token(json!({})).await;
    let owner = f
        .enroll(&first, "edge-1", json!({ "zone": "a" }))
        .await
        .unwrap();
    let (s, _) = f
        .admin_call(
            reqwest::Method::POST,
            "/v1/nodes/edge-1/cordon",
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, before) = f.node("edge-1").await;

    // Any other join token: refused, saying how to re-enrol, and nothing changes.
    let second = f.join_token(json!({})).await;
    let (s, v) = f
        .enroll(&second, "edge-1", json!({ "zone": "evil" }))
        .await
        .err()
        .expect("the takeover must be refused");
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("already enrolled"), "{message}");
    assert!(
        message.contains("join-token create --node edge-1"),
        "{message}"
    );
    let (_, after) = f.node("edge-1").await;
    assert_eq!(after, before);
    assert_eq!(after["cordoned"], true);
    assert_eq!(after["labels"]["zone"], "a");
    assert_eq!(f.agent_call(&owner).await, StatusCode::OK);

    // The refused token was not spent: it still enrols a free name.
    f.enroll(&second, "edge-2", json!({})).await.unwrap();
    // A token made for one node enrols no other.
    let bound = f.join_token(json!({ "node": "edge-1" })).await;
    let (s, v) = f.enroll(&bound, "edge-3", json!({})).await.err().unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn a_join_token_made_for_the_node_re_enrols_it_and_the_old_certificate_is_refused() {
    let f = Fixture::start().await;
    let old = f
        .enroll(
            &f.join_token(json!({})).await,
            "edge-1",
            json!({ "zone": "a" }),
        )
        .await
        .unwrap();
    assert_eq!(f.agent_call(&old).await, StatusCode::OK);
    f.admin_call(
        reqwest::Method::POST,
        "/v1/nodes/edge-1/cordon",
        Value::Null,
    )
    .await;

    // The agent lost its disk: a token made for the node brings it back.
    let token = f.join_token(json!({ "node": "edge-1" })).await;
    let new = f
        .enroll(&token, "edge-1", json!({ "zone": "b" }))
        .await
        .unwrap();
    let (_, node) = f.node("edge-1").await;
    assert_eq!(node["cordoned"], true, "the admin's cordon is kept: {node}");
    assert_eq!(
        node["labels"]["zone"], "b",
        "labels are the agent's: {node}"
    );
    assert_eq!(f.agent_call(&new).await, StatusCode::OK);
    assert_eq!(f.agent_call(&old).await, StatusCode::UNAUTHORIZED);

    // A token for the node may also set its cordon.
    let token = f
        .join_token(json!({ "node": "edge-1", "cordon": false }))
        .await;
    f.enroll(&token, "edge-1", json!({})).await.unwrap();
    assert_eq!(f.node("edge-1").await.1["cordoned"], false);
}

#[tokio::test]
async fn a_removed_node_has_its_certificates_refused_and_its_name_free() {
    let f = Fixture::start().await;
    let agent = f
        .enroll(&f.join_token(json!({})).await, "edge-1", json!({}))
        .await
        .unwrap();
    assert_eq!(f.agent_call(&agent).await, StatusCode::OK);

    let (s, v) = f
        .admin_call(reqwest::Method::DELETE, "/v1/nodes/edge-1", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], "edge-1");
    assert_eq!(f.node("edge-1").await.0, StatusCode::NOT_FOUND);
    let s = f.agent_call(&agent).await;
    assert!(
        s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
        "{s}"
    );
    let (s, _) = f
        .admin_call(reqwest::Method::DELETE, "/v1/nodes/edge-1", Value::Null)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The name is free again for any join token; the old certificate stays dead.
    let again = f
        .enroll(&f.join_token(json!({})).await, "edge-1", json!({}))
        .await
        .unwrap();
    assert_eq!(f.agent_call(&again).await, StatusCode::OK);
    assert_eq!(f.agent_call(&agent).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn renewal_gives_a_short_lived_certificate_that_replaces_the_old_one() {
    let f = Fixture::start().await;
    let agent = f
        .enroll(&f.join_token(json!({})).await, "edge-1", json!({}))
        .await
        .unwrap();
    // Enrolment issues short-lived certificates (the configured lifetime, backdated 5 min).
    let backdate = Duration::from_secs(300);
    assert!(lifetime_of(&agent.cert) <= LIFETIME + backdate + Duration::from_secs(1));
    assert!(lifetime_of(&agent.cert) >= LIFETIME);

    let renew = |agent: &Agent| {
        let http = client(&f.server.ca_pem, Some((&agent.cert, &agent.key)));
        let (csr, key) = firefleet_pki::make_agent_csr("edge-1").unwrap();
        let url = f.url("/v1/agent/renew");
        async move {
            let (s, v) = json_of(
                http.post(url)
                    .json(&json!({ "csr_pem": csr }))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            Agent {
                cert: v["cert_pem"].as_str().unwrap().to_owned(),
                key,
            }
        }
    };
    let renewed = renew(&agent).await;
    let info = firefleet_pki::node_cert_info_pem(&renewed.cert).unwrap();
    assert_eq!(info.node, "edge-1");
    assert!(lifetime_of(&renewed.cert) <= LIFETIME + backdate + Duration::from_secs(1));
    // Until the new certificate is used, the old one still works (a crash before the agent
    // saved the new one costs nothing); once it is, the old one is refused.
    assert_eq!(f.agent_call(&agent).await, StatusCode::OK);
    assert_eq!(f.agent_call(&renewed).await, StatusCode::OK);
    assert_eq!(f.agent_call(&agent).await, StatusCode::UNAUTHORIZED);

    // The renewed certificate keeps working across a server restart (a copy of the data
    // directory: the first server's connections may hold the store a while after it stops).
    let Fixture(f) = f;
    let dir = f.dir;
    f.server.shutdown().await;
    let copy = tempfile::tempdir().unwrap();
    server::copy_dir(dir.path(), copy.path());
    let f = Fixture(server::Fixture::start_in_with(copy, lifetime).await);
    assert_eq!(f.agent_call(&renewed).await, StatusCode::OK);
    assert_eq!(f.agent_call(&agent).await, StatusCode::UNAUTHORIZED);
    drop(dir);
}

#[tokio::test]
async fn enrolment_renewal_and_removal_are_audited_with_the_node_name() {
    let f = Fixture::start().await;
    let agent = f
        .enroll(&f.join_token(json!({})).await, "edge-7", json!({}))
        .await
        .unwrap();
    let http = client(&f.server.ca_pem, Some((&agent.cert, &agent.key)));
    let (csr, _) = firefleet_pki::make_agent_csr("edge-7").unwrap();
    let s = http
        .post(f.url("/v1/agent/renew"))
        .json(&json!({ "csr_pem": csr }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::OK);
    let (s, _) = f
        .admin_call(reqwest::Method::DELETE, "/v1/nodes/edge-7", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, v) = f
        .admin_call(reqwest::Method::GET, "/v1/audit", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let find = |action: &str| {
        entries
            .iter()
            .find(|e| e["event"]["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {v}"))
    };
    assert_eq!(
        find("POST /v1/agent/enroll")["event"]["actor"],
        "node:edge-7"
    );
    assert_eq!(
        find("POST /v1/agent/renew")["event"]["actor"],
        "node:edge-7"
    );
    assert_eq!(
        find("DELETE /v1/nodes/{node}")["event"]["target"],
        "/v1/nodes/edge-7"
    );
}
