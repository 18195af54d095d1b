//! The audit log against tampering with the stored file: mutating calls are recorded in a
//! signed hash chain; after the SQLite file is edited behind the server's back (an entry
//! edited, deleted, two swapped, one re-signed with another key, the last one deleted), a
//! restarted server's `GET /v1/audit/verify` names the first bad entry and why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use firefleet_audit::{sign_entry, Entry, SigningKey};
use firefleet_server::{Server, ServerConfig};
use firefleet_testkit::server::{client, copy_dir};
use firefleet_testkit::spec::vm_spec;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Running {
    server: Server,
    admin: String,
    http: reqwest::Client,
}

impl Running {
    async fn start(dir: &Path) -> Running {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = Server::start(ServerConfig::new(dir.to_owned(), listen))
            .await
            .unwrap();
        let admin = std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let http = client(&server.ca_pem, None);
        Running {
            server,
            admin,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.server.addr)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn verify(&self) -> Value {
        let (s, v) = self
            .call(reqwest::Method::GET, &self.admin, "/v1/audit/verify", None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }
}

fn key(seq: u64) -> String {
    format!("/audit/{seq:020}")
}

/// Direct access to the store file, as an attacker with the disk would have.
struct Db(rusqlite::Connection);

impl Db {
    fn open(dir: &Path) -> Db {
        Db(rusqlite::Connection::open(dir.join("store.db")).unwrap())
    }

    fn get(&self, k: &str) -> Vec<u8> {
        self.0
            .query_row("SELECT value FROM kv WHERE key = ?1", [k.as_bytes()], |r| {
                r.get(0)
            })
            .unwrap()
    }

    fn entry(&self, seq: u64) -> Entry {
        serde_json::from_slice(&self.get(&key(seq))).unwrap()
    }

    fn set(&self, k: &str, value: &[u8]) {
        let n = self
            .0
            .execute(
                "UPDATE kv SET value = ?2 WHERE key = ?1",
                rusqlite::params![k.as_bytes(), value],
            )
            .unwrap();
        assert_eq!(n, 1, "{k}");
    }

    fn set_entry(&self, seq: u64, e: &Entry) {
        self.set(&key(seq), &serde_json::to_vec(e).unwrap());
    }

    fn delete(&self, k: &str) {
        let n = self
            .0
            .execute("DELETE FROM kv WHERE key = ?1", [k.as_bytes()])
            .unwrap();
        assert_eq!(n, 1, "{k}");
    }
}

/// Restores the pristine copy into a fresh directory, tampers with it, restarts a server there
/// and returns what it says about its log.
async fn tampered(pristine: &Path, case: &str, tamper: impl FnOnce(&Db)) -> Value {
    let dir = pristine.with_file_name(case);
    copy_dir(pristine, &dir);
    {
        let db = Db::open(&dir);
        tamper(&db);
    }
    let r = Running::start(&dir).await;
    let v = r.verify().await;
    r.server.shutdown().await;
    v
}

fn assert_first_bad(v: &Value, seq: u64, kind: &str) {
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["first_bad"]["seq"], json!(seq), "{v}");
    assert_eq!(v["first_bad"]["reason"]["kind"], json!(kind), "{v}");
}

#[tokio::test]
async fn tampering_with_the_stored_log_is_named() {
    let root = tempfile::tempdir().unwrap();
    let data: PathBuf = root.path().join("data");
    let r = Running::start(&data).await;
    use reqwest::Method;

    // Some mutating calls: a token, two VMs (they stay Pending: no nodes), a delete.
    let (s, tok) = r
        .call(
            Method::POST,
            &r.admin,
            "/v1/tokens",
            Some(json!({"tenant": "acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{tok}");
    let acme = tok["token"].as_str().unwrap().to_owned();
    let mut ids = vec![];
    for name in ["web", "db"] {
        let body = vm_spec(name);
        let (s, vm) = r.call(Method::POST, &acme, "/v1/vms", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{vm}");
        ids.push(vm["id"].as_str().unwrap().to_owned());
    }
    let (s, v) = r
        .call(Method::DELETE, &acme, &format!("/v1/vms/{}", ids[1]), None)
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, _) = r
        .call(
            Method::POST,
            &r.admin,
            "/v1/tokens",
            Some(json!({"tenant": "globex"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // A refused call changes nothing; it is recorded aggregated, when the server flushes its
    // refusals (here at shutdown: entries 6 and 7).
    let (s, _) = r
        .call(
            Method::POST,
            &acme,
            "/v1/tokens",
            Some(json!({"tenant": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The log: five entries, in order, by whom, and it verifies.
    let (s, tenant_list) = r.call(Method::GET, &acme, "/v1/audit", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "admin only: {tenant_list}");
    let (s, list) = r.call(Method::GET, &r.admin, "/v1/audit", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let entries = list["entries"].as_array().unwrap();
    let got: Vec<(u64, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            let ev = &e["event"];
            (
                ev["seq"].as_u64().unwrap(),
                ev["actor"].as_str().unwrap(),
                ev["action"].as_str().unwrap(),
                ev["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "admin", "POST /v1/tokens", "201"),
            (2, "tenant:acme", "POST /v1/vms", "201"),
            (3, "tenant:acme", "POST /v1/vms", "201"),
            // Never placed: deleted at once.
            (4, "tenant:acme", "DELETE /v1/vms/{vm}", "204"),
            (5, "admin", "POST /v1/tokens", "201"),
        ],
        "{list}"
    );
    assert_eq!(
        entries[3]["event"]["target"],
        json!(format!("/v1/vms/{}", ids[1]))
    );
    let (_, page) = r
        .call(Method::GET, &r.admin, "/v1/audit?after=3&limit=1", None)
        .await;
    assert_eq!(page["entries"][0]["event"]["seq"], json!(4), "{page}");
    let v = r.verify().await;
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["entries"], json!(5), "{v}");
    r.server.shutdown().await;
    {
        let db = Db::open(&data);
        let refused: Vec<(String, String, String)> = [6, 7]
            .map(|seq| {
                let e = db.entry(seq).event;
                (e.actor, e.action, e.outcome)
            })
            .into();
        assert_eq!(
            refused,
            [
                (
                    "tenant:acme".into(),
                    "refused GET /v1/audit".into(),
                    "403".into()
                ),
                (
                    "tenant:acme".into(),
                    "refused POST /v1/tokens".into(),
                    "403".into()
                ),
            ]
        );
    }

    // The key files: the secret one private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("audit.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(data.join("audit.pub").exists());

    // (a) An entry's detail edited.
    let v = tampered(&data, "edit", |db| {
        let mut e = db.entry(3);
        e.event
            .detail
            .insert("note".into(), "nothing to see".into());
        db.set_entry(3, &e);
    })
    .await;
    assert_first_bad(&v, 3, "hash_mismatch");

    // (b) An entry deleted.
    let v = tampered(&data, "delete", |db| db.delete(&key(2))).await;
    assert_first_bad(&v, 2, "deleted");

    // (c) Two entries swapped.
    let v = tampered(&data, "swap", |db| {
        let (a, b) = (db.get(&key(3)), db.get(&key(4)));
        db.set(&key(3), &b);
        db.set(&key(4), &a);
    })
    .await;
    assert_first_bad(&v, 3, "reordered");

    // (d) An entry changed and re-signed with another key, hash recomputed, the old key id kept:
    // only the key is wrong.
    let v = tampered(&data, "resign", |db| {
        let e = db.entry(4);
        let mut event = e.event.clone();
        event.actor = "tenant:globex".into();
        let mut forged = sign_entry(&SigningKey::from_bytes(&[7; 32]), event, &e.prev_hash);
        forged.key_id = e.key_id.clone();
        db.set_entry(4, &forged);
    })
    .await;
    assert_first_bad(&v, 4, "bad_signature");

    // (e) The last entry deleted: seen against the head.
    let v = tampered(&data, "truncate", |db| db.delete(&key(7))).await;
    assert_first_bad(&v, 7, "truncated");

    // Garbage in place of an entry.
    let v = tampered(&data, "garbage", |db| db.set(&key(2), b"{not json")).await;
    assert_first_bad(&v, 2, "unreadable");

    // The untouched copy still verifies after a restart, and new calls go on the same chain.
    let r = Running::start(&data).await;
    let (s, _) = r
        .call(
            Method::POST,
            &r.admin,
            "/v1/tokens",
            Some(json!({"tenant": "initech"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let v = r.verify().await;
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["entries"], json!(8), "{v}");
    r.server.shutdown().await;
}

/// Concurrent mutating calls never fork the chain.
#[tokio::test]
async fn concurrent_calls_keep_the_chain_linear() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path()).await;
    let calls = (0..20).map(|i| {
        r.call(
            reqwest::Method::POST,
            &r.admin,
            "/v1/tokens",
            Some(json!({"tenant": format!("t{i}")})),
        )
    });
    for (s, v) in futures::future::join_all(calls).await {
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let v = r.verify().await;
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["entries"], json!(20), "{v}");
    r.server.shutdown().await;
}
