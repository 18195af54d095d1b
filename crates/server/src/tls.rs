//! The HTTPS accept loop: TLS with optional, CA-verified client certificates; the node name and
//! serial of a presented certificate are attached to every request of that connection (whether
//! that certificate is still the node's current one is checked per request, by `AgentNode`).
//!
//! Every connection is bounded ([`Limits`]): it needs a place among `max_connections` and its
//! client's `max_connections_per_client` (else it is closed before the handshake), the
//! handshake and each request's headers must arrive within `header_timeout` (a slowloris that
//! sends a header line a second is cut off), and a connection with no request in flight (a
//! response body still streaming counts as in flight) is closed after `idle_timeout`.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use axum::{body::Body, Router};
use http_body_util::BodyExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::{
    auth::{PeerCert, PeerIdentity, ReplicaPeer},
    limits::{Connections, Limits},
};

/// The client's address, in every request's extensions (rate limits of anonymous callers).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// Held while a request (and its response body) is in flight.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// How long the connection has been without a request in flight (zero while one is).
    fn idle_for(&self) -> std::time::Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return std::time::Duration::ZERO;
        }
        self.last.lock().map(|l| l.elapsed()).unwrap_or_default()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Connections::new(&limits);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(permit) = connections.admit(peer_addr.ip()) else {
            tracing::debug!(%peer_addr, "connection refused: at the connection limit");
            drop(tcp);
            continue;
        };
        // Small responses (invocation results, long-poll answers) go out at once instead of
        // waiting for the peer's delayed ACK (Nagle): ~40 ms per exchange otherwise.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut conn_shutdown = shutdown.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer_addr, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let peer_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first());
            let replica = ReplicaPeer(
                peer_cert.is_some_and(|der| firefleet_pki::is_replica_cert(der.as_ref())),
            );
            let identity = peer_cert
                .and_then(|der| firefleet_pki::node_cert_info(der.as_ref()).ok())
                .and_then(|info| {
                    Some(PeerCert {
                        node: info.node.parse().ok()?,
                        serial: info.serial,
                    })
                });
            let peer = PeerIdentity(identity);
            let client = ClientAddr(peer_addr.ip());
            let activity = Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last: Mutex::new(Instant::now()),
            });
            let svc_activity = activity.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    req.extensions_mut().insert(replica);
                    req.extensions_mut().insert(client);
                    let busy = svc_activity.begin();
                    let response = router.clone().oneshot(req);
                    async move {
                        let resp = response.await?;
                        // The request stays in flight until its body has been sent.
                        Ok::<_, std::convert::Infallible>(resp.map(|body| {
                            Body::new(body.map_frame(move |frame| {
                                let _ = &busy;
                                frame
                            }))
                        }))
                    }
                },
            );
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(256)
                .keep_alive_interval(Some(limits.idle_timeout / 2))
                .keep_alive_timeout(limits.header_timeout);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            // A connection asked to close gets this long to finish what is in flight.
            let mut closing: Option<tokio::time::Instant> = None;
            loop {
                let idle_left = limits.idle_timeout.saturating_sub(activity.idle_for());
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer_addr, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = conn_shutdown.changed(), if closing.is_none() => {
                        closing = Some(tokio::time::Instant::now() + limits.idle_timeout);
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tokio::time::sleep(idle_left.max(std::time::Duration::from_millis(100))), if closing.is_none() => {
                        if activity.idle_for() >= limits.idle_timeout {
                            tracing::debug!(%peer_addr, "closing an idle connection");
                            closing = Some(tokio::time::Instant::now() + limits.header_timeout);
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    _ = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => {
                        tracing::debug!(%peer_addr, "dropping a connection that did not close in time");
                        return;
                    }
                }
            }
        });
    }
}
