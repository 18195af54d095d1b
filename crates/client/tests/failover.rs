//! A client over several server replicas fails over as `failover.rs` says. The replicas are
//! fakes (the unit under test is the client's failover): HTTPS servers with a real cluster CA
//! and server certificate, sharing one list of VMs as replicas share a store, each answering
//! in the way a test asks (serving, 503, a fixed status, dropping the connection before or
//! after applying a create) and counting the requests it got. The caller's tenant is `acme`:
//! a VM is found by name in that tenant only, as the server does.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use firefleet_api::{CreateTokenRequest, CreateVmRequest};
use firefleet_client::{Client, ClientError, Connection, Failover};
use firefleet_types::{
    fixtures, DesiredState, Generation, NodeId, Resources, Snapshot, TenantId, Vm, VmId, VmStatus,
};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Bytes, Incoming},
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// How a fake replica answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As the server would, over the shared VMs.
    Serve,
    /// 503 `store_unavailable` to everything (read, as the server does, after the body).
    Unavailable,
    /// 503 `not_leader` to everything, before reading the body (as a replica refuses a call
    /// only the leader serves).
    NotLeader,
    /// This status (with an error body) to everything.
    Status(u16),
    /// Applies a create (the VM is stored), then drops the connection without an answer.
    ApplyThenDrop,
    /// Drops every request's connection without applying it.
    Drop,
    /// Holds every request this long (a long-poll), then drops its connection.
    HoldThenDrop(Duration),
}

/// What the replicas share, as replicas share a store.
#[derive(Debug, Default)]
struct Shared {
    vms: Vec<Vm>,
    snapshots: Vec<Snapshot>,
    /// The bytes of live migration streams received.
    live: Vec<u8>,
}

type Store = Arc<Mutex<Shared>>;

/// The cluster CA's PEM and the replicas' TLS configuration (one certificate for all).
struct Pki {
    ca_pem: String,
    tls: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca = firefleet_pki::Ca::generate().unwrap();
    let cert = ca.issue_server_cert(&[], &[]).unwrap();
    let tls =
        firefleet_pki::server_tls_config(ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap();
    Pki {
        ca_pem: ca.cert_pem().to_owned(),
        tls: Arc::new(tls),
    }
}

/// A fake replica on a free port; stops accepting when dropped.
struct Replica {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replica {
    async fn start(pki: &Pki, store: &Store, mode: Mode) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.tls.clone());
        let hits = Arc::new(AtomicUsize::new(0));
        let (store, counter) = (store.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, store, hits) = (acceptor.clone(), store.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, mode, store.clone(), hits.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Replica { url, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A URL where nothing listens (connections are refused).
async fn refusing_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

fn json(status: u16, value: &impl serde::Serialize) -> Answer {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())))
        .unwrap())
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

/// An error from the service: hyper drops the connection (HTTP/1) or resets the stream
/// (HTTP/2) without an answer.
fn dropped() -> Answer {
    Err(std::io::Error::other("dropped by the test"))
}

async fn answer(
    req: Request<Incoming>,
    mode: Mode,
    store: Store,
    hits: Arc<AtomicUsize>,
) -> Answer {
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    if mode == Mode::NotLeader {
        return error(503, "not_leader", "this replica does not lead");
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    match mode {
        Mode::Unavailable => return error(503, "store_unavailable", "the store has no quorum"),
        Mode::NotLeader => return error(503, "not_leader", "this replica does not lead"),
        Mode::Status(s) => return error(s, "refused", "as the test asked"),
        Mode::Drop => return dropped(),
        Mode::HoldThenDrop(hold) => {
            tokio::time::sleep(hold).await;
            return dropped();
        }
        Mode::Serve | Mode::ApplyThenDrop => {}
    }
    let query = query.unwrap_or_default();
    let by_name = |name: &str| {
        let shared = store.lock().unwrap();
        let vms = &shared.vms;
        vms.iter()
            .find(|v| v.spec.name == name && v.spec.tenant.as_str() == CALLER_TENANT)
            .cloned()
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/v1/vms") => {
            let tenant = query.strip_prefix("tenant=").unwrap_or(CALLER_TENANT);
            let shared = store.lock().unwrap();
            let vms = &shared.vms;
            let items: Vec<&Vm> = vms
                .iter()
                .filter(|v| v.spec.tenant.as_str() == tenant)
                .collect();
            json(200, &serde_json::json!({ "items": items }))
        }
        ("GET", "/v1/nodes") => json(200, &serde_json::json!({"items": []})),
        ("POST", "/v1/vms") => {
            let req: CreateVmRequest = serde_json::from_slice(&body)?;
            let vm = {
                let mut shared = store.lock().unwrap();
                let vms = &mut shared.vms;
                let tenant = req.tenant.as_ref().map_or(CALLER_TENANT, |t| t.as_str());
                if vms
                    .iter()
                    .any(|v| v.spec.name == req.name && v.spec.tenant.as_str() == tenant)
                {
                    return error(409, "conflict", "a VM of that name already exists");
                }
                let vm = vm_from(req, vms.len());
                vms.push(vm.clone());
                vm
            };
            if mode == Mode::ApplyThenDrop {
                return dropped();
            }
            json(201, &vm)
        }
        ("POST", p) if p.starts_with("/v1/vms/") && p.ends_with("/stop") => {
            let name = &p["/v1/vms/".len()..p.len() - "/stop".len()];
            let mut shared = store.lock().unwrap();
            let vms = &mut shared.vms;
            match vms.iter_mut().find(|v| v.spec.name == name) {
                Some(vm) => {
                    vm.spec.desired = DesiredState::Stopped;
                    json(200, vm)
                }
                None => error(404, "not_found", "no such vm"),
            }
        }
        ("POST", p) if p.starts_with("/v1/vms/") && p.ends_with("/snapshots") => {
            let vm = by_name(&p["/v1/vms/".len()..p.len() - "/snapshots".len()]).unwrap();
            let name = serde_json::from_slice::<serde_json::Value>(&body)?["name"]
                .as_str()
                .unwrap()
                .to_owned();
            let snap = {
                let mut shared = store.lock().unwrap();
                if shared
                    .snapshots
                    .iter()
                    .any(|s| s.vm == vm.id && s.name == name)
                {
                    return error(409, "conflict", "a snapshot of that name already exists");
                }
                let node = NodeId::parse("node", "n1").unwrap();
                let snap = Snapshot::requested(vm.id.clone(), name, node, 0);
                shared.snapshots.push(snap.clone());
                snap
            };
            if mode == Mode::ApplyThenDrop {
                return dropped();
            }
            json(201, &snap)
        }
        ("GET", p) if p.starts_with("/v1/vms/") && p.ends_with("/snapshots") => {
            let vm = by_name(&p["/v1/vms/".len()..p.len() - "/snapshots".len()]).unwrap();
            let shared = store.lock().unwrap();
            let items: Vec<&Snapshot> = shared.snapshots.iter().filter(|s| s.vm == vm.id).collect();
            json(200, &serde_json::json!({ "items": items }))
        }
        ("GET", p) if p.starts_with("/v1/vms/") => match by_name(&p["/v1/vms/".len()..]) {
            Some(vm) => json(200, &vm),
            None => error(404, "not_found", "no such vm"),
        },
        ("PUT", p) if p.starts_with("/v1/agent/migrations/") && p.ends_with("/live") => {
            store.lock().unwrap().live.extend_from_slice(&body);
            json(200, &serde_json::json!({}))
        }
        ("GET", "/v1/agent/intents") => {
            // Answers at once, one revision past the caller's.
            let after: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("after="))
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            json(200, &serde_json::json!({"revision": after + 1, "vms": []}))
        }
        ("POST", "/v1/tokens") => json(
            201,
            &serde_json::json!({"token": "secret", "id": "t1", "tenant": "acme", "role": "tenant"}),
        ),
        _ => error(404, "not_found", "no such endpoint"),
    }
}

/// The VM the server would make of `req` (the `n`th).
fn vm_from(req: CreateVmRequest, n: usize) -> Vm {
    let mut spec = fixtures::vm_spec(&req.name, req.resources.memory_mib);
    spec.image = req.image;
    spec.resources = req.resources;
    spec.labels = req.labels;
    spec.cmd = req.cmd;
    if let Some(t) = req.tenant {
        spec.tenant = t;
    }
    Vm {
        id: VmId::parse("id", &format!("vm-{n}")).unwrap(),
        generation: Generation(1),
        spec,
        status: VmStatus::new(0),
        deleting: false,
    }
}

fn create_request(name: &str, image: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.to_owned(),
        image: image.to_owned(),
        resources: Resources {
            vcpus: 1,
            memory_mib: 256,
        },
        labels: Default::default(),
        cmd: None,
        restart_policy: Default::default(),
        tenant: None,
        network: Default::default(),
        runtime: Default::default(),
        disks: Vec::new(),
        placement: Default::default(),
    }
}

fn client(pki: &Pki, servers: &[&str], budget: Duration) -> Client {
    Client::with_failover(
        &Connection {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            ca_pem: pki.ca_pem.clone(),
            token: Some("token".to_owned()),
            identity: None,
        },
        Failover {
            budget,
            ..Failover::default()
        },
    )
    .unwrap()
}

/// The tenant the fake replicas take the caller to act for.
const CALLER_TENANT: &str = "acme";

const OTHER_IMAGE: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[tokio::test]
async fn a_refused_first_server_fails_over_to_the_second() {
    let (pki, store) = (pki(), Store::default());
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let down = refusing_url().await;
    let c = client(&pki, &[&down, &b.url], Duration::from_secs(5));
    assert!(c.node_list().await.unwrap().is_empty());
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn a_503_fails_over_and_the_server_that_answered_sticks() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::Unavailable).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    c.node_list().await.unwrap();
    assert_eq!((a.hits(), b.hits()), (1, 1));
    // The next calls (of this client and its clones) go to b at once.
    c.clone().node_list().await.unwrap();
    c.node_list().await.unwrap();
    assert_eq!((a.hits(), b.hits()), (1, 3));
}

#[tokio::test]
async fn a_cut_tls_handshake_fails_over_even_for_a_post() {
    let (pki, store) = (pki(), Store::default());
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    // Accepts TCP connections and closes them at once: the handshake never completes.
    let cutter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut = format!("https://{}", cutter.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = cutter.accept().await {
            drop(tcp);
        }
    });
    let c = client(&pki, &[&cut, &b.url], Duration::from_secs(5));
    let token = CreateTokenRequest {
        tenant: TenantId::parse("tenant", "acme").unwrap(),
        role: None,
        ttl_secs: None,
        note: None,
    };
    assert_eq!(c.token_create(&token).await.unwrap().id, "t1");
    assert_eq!(b.hits(), 1);
    task.abort();
}

#[tokio::test]
async fn client_errors_and_other_server_errors_are_not_retried() {
    let (pki, store) = (pki(), Store::default());
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    for status in [400, 401, 404, 409, 429, 500, 502] {
        let a = Replica::start(&pki, &store, Mode::Status(status)).await;
        let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
        let e = c.node_list().await.unwrap_err();
        assert_eq!(e.status(), Some(status), "{e}");
        assert!(matches!(e, ClientError::Api { .. }), "{status}: {e:?}");
        assert_eq!(a.hits(), 1);
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_returns_the_vm_it_made() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::ApplyThenDrop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let req = create_request("web", fixtures::TEST_IMAGE);
    let vm = c.vm_create(&req).await.unwrap();
    let stored = store.lock().unwrap().vms.clone();
    assert_eq!(stored.len(), 1, "one VM, not two: {stored:?}");
    assert_eq!(vm.id, stored[0].id);
    assert_eq!(a.hits(), 1);
    // b refused the second create (409) and was asked for the VM by name.
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn a_create_that_was_not_applied_is_made_on_the_next_server() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::Drop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let vm = c
        .vm_create(&create_request("web", fixtures::TEST_IMAGE))
        .await
        .unwrap();
    assert_eq!(store.lock().unwrap().vms.len(), 1);
    assert_eq!(vm.spec.name, "web");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_retried_create_does_not_take_over_another_vm_of_that_name() {
    let (pki, store) = (pki(), Store::default());
    store
        .lock()
        .unwrap()
        .vms
        .push(vm_from(create_request("web", OTHER_IMAGE), 0));
    let a = Replica::start(&pki, &store, Mode::Drop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let e = c
        .vm_create(&create_request("web", fixtures::TEST_IMAGE))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert_eq!(store.lock().unwrap().vms.len(), 1);
}

#[tokio::test]
async fn a_create_conflict_without_a_lost_attempt_stays_a_conflict() {
    let (pki, store) = (pki(), Store::default());
    let req = create_request("web", fixtures::TEST_IMAGE);
    store.lock().unwrap().vms.push(vm_from(req.clone(), 0));
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let down = refusing_url().await;
    // The refused connection cannot have created anything: the conflict is the caller's.
    let c = client(&pki, &[&down, &b.url], Duration::from_secs(5));
    let e = c.vm_create(&req).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert_eq!(b.hits(), 1, "no lookup by name");
}

#[tokio::test]
async fn an_admin_create_for_another_tenant_is_looked_up_in_that_tenant() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::ApplyThenDrop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    // The caller's own VM of that name is not the one it asked for.
    store
        .lock()
        .unwrap()
        .vms
        .push(vm_from(create_request("web", fixtures::TEST_IMAGE), 7));
    let mut req = create_request("web", fixtures::TEST_IMAGE);
    req.tenant = Some(TenantId::parse("tenant", "globex").unwrap());
    let vm = c.vm_create(&req).await.unwrap();
    assert_eq!(store.lock().unwrap().vms.len(), 2);
    assert_eq!(vm.spec.tenant.as_str(), "globex");
    assert_eq!(vm.id.as_str(), "vm-1");
}

#[tokio::test]
async fn a_snapshot_request_whose_answer_was_lost_returns_the_snapshot_it_made() {
    let (pki, store) = (pki(), Store::default());
    store
        .lock()
        .unwrap()
        .vms
        .push(vm_from(create_request("web", fixtures::TEST_IMAGE), 0));
    let a = Replica::start(&pki, &store, Mode::ApplyThenDrop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let snap = c.snapshot_create("web", "before-upgrade").await.unwrap();
    assert_eq!(snap.name, "before-upgrade");
    assert_eq!(store.lock().unwrap().snapshots.len(), 1);
    // The same name again, with no lost attempt, is the caller's conflict.
    let e = c
        .snapshot_create("web", "before-upgrade")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
}

#[tokio::test]
async fn an_idempotent_post_is_sent_again_after_a_reset() {
    let (pki, store) = (pki(), Store::default());
    store
        .lock()
        .unwrap()
        .vms
        .push(vm_from(create_request("web", fixtures::TEST_IMAGE), 0));
    let a = Replica::start(&pki, &store, Mode::Drop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let vm = c.vm_stop("web").await.unwrap();
    assert_eq!(vm.spec.desired, DesiredState::Stopped);
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_post_that_may_have_been_applied_is_not_sent_again() {
    let (pki, store) = (pki(), Store::default());
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let token = CreateTokenRequest {
        tenant: TenantId::parse("tenant", "acme").unwrap(),
        role: None,
        ttl_secs: None,
        note: None,
    };
    for mode in [Mode::Unavailable, Mode::Drop] {
        let a = Replica::start(&pki, &store, mode).await;
        let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
        let e = c.token_create(&token).await.unwrap_err();
        assert!(!matches!(e, ClientError::NoServer { .. }), "{e:?}");
        assert_eq!(a.hits(), 1);
        assert_eq!(b.hits(), 0, "{mode:?}: sent again");
        // The client moved on: its next call goes to b.
        c.node_list().await.unwrap();
        assert_eq!((a.hits(), b.hits()), (1, 1));
        b.hits.store(0, Ordering::SeqCst);
    }
    // Refused: it reached no server, so it is sent to the next.
    let down = refusing_url().await;
    let c = client(&pki, &[&down, &b.url], Duration::from_secs(5));
    assert_eq!(c.token_create(&token).await.unwrap().id, "t1");
}

#[tokio::test]
async fn a_not_leader_answer_lets_any_request_go_to_the_next_replica() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::NotLeader).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let token = CreateTokenRequest {
        tenant: TenantId::parse("tenant", "acme").unwrap(),
        role: None,
        ttl_secs: None,
        note: None,
    };
    // Not idempotent, but refused before anything was done.
    assert_eq!(c.token_create(&token).await.unwrap().id, "t1");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_live_stream_none_of_which_was_taken_goes_to_the_next_replica() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::NotLeader).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    // The VMM's first bytes come after a's answer.
    let first = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(vec![1u8, 2, 3])
    });
    let stream = futures::StreamExt::chain(first, futures::stream::iter([Ok(vec![4u8, 5])]));
    c.migration_live_send("web", stream).await.unwrap();
    assert_eq!(store.lock().unwrap().live, vec![1, 2, 3, 4, 5]);
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_live_stream_partly_taken_by_a_failed_replica_is_not_sent_again() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::Drop).await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(5));
    let stream = futures::stream::iter([Ok(vec![1u8, 2, 3]), Ok(vec![4u8, 5])]);
    c.migration_live_send("web", stream).await.unwrap_err();
    assert!(store.lock().unwrap().live.is_empty());
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_long_poll_cut_after_the_budget_resumes_on_the_next_replica_from_its_revision() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(
        &pki,
        &store,
        Mode::HoldThenDrop(Duration::from_millis(1500)),
    )
    .await;
    let b = Replica::start(&pki, &store, Mode::Serve).await;
    // The poll ran longer than the whole budget before its replica went away.
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(1));
    let r = c.intents(Some(41), Duration::from_secs(20)).await.unwrap();
    assert_eq!(r.revision, 42, "b was asked from revision 41");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn when_every_server_is_down_the_call_ends_in_its_budget_naming_each() {
    let pki = pki();
    let (x, y) = (refusing_url().await, refusing_url().await);
    let c = client(&pki, &[&x, &y], Duration::from_secs(1));
    let started = Instant::now();
    let e = c.node_list().await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "budget overrun: {took:?}");
    let text = e.to_string();
    assert!(matches!(e, ClientError::NoServer { .. }), "{e:?}");
    assert!(text.contains(&x) && text.contains(&y), "{text}");
}

#[tokio::test]
async fn replicas_that_all_answer_503_are_tried_in_rounds_until_the_budget() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::Unavailable).await;
    let b = Replica::start(&pki, &store, Mode::Unavailable).await;
    let c = client(&pki, &[&a.url, &b.url], Duration::from_secs(1));
    let started = Instant::now();
    let e = c.node_list().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(e.status(), Some(503));
    // Rounds 100, 200, 400 ms apart: a few each, not a busy loop.
    assert!((3..=6).contains(&a.hits()), "{}", a.hits());
    assert!((3..=6).contains(&b.hits()), "{}", b.hits());
}

#[tokio::test]
async fn a_single_server_is_not_retried() {
    let (pki, store) = (pki(), Store::default());
    let a = Replica::start(&pki, &store, Mode::Unavailable).await;
    let c = client(&pki, &[&a.url], Duration::from_secs(5));
    let e = c.node_list().await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 503, .. }), "{e:?}");
    assert_eq!(a.hits(), 1);
    let down = refusing_url().await;
    let c = client(&pki, &[&down], Duration::from_secs(5));
    let e = c.node_list().await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
}
