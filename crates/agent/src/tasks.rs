//! The agent's long-running conversations with the server besides reconciling: heartbeats
//! (with the host posture read again now and then) and the long-poll on the intents.

use std::time::Duration;

use firefleet_api::{HeartbeatRequest, IntentsResponse};
use firefleet_client::Client;
use tokio::sync::{mpsc, watch};

use crate::posture;

/// How often the host posture is read again (and reported with the next heartbeat if it
/// changed).
const POSTURE_REFRESH: Duration = Duration::from_secs(30);

/// Sends `req` every `period` until `shutdown` changes, with the posture read again every
/// [`POSTURE_REFRESH`] (Firecracker's part in it as `firecracker_jailed` says).
pub async fn heartbeats(
    client: Client,
    mut req: HeartbeatRequest,
    period: Duration,
    firecracker_jailed: Option<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut posture_read = std::time::Instant::now();
    loop {
        // The posture is read again now and then: KSM switched on, swap added, a
        // microcode update change what the host policies see (and the node's taint).
        if posture_read.elapsed() >= POSTURE_REFRESH {
            posture_read = std::time::Instant::now();
            let f = &req.facts;
            let metadata = f
                .posture
                .as_ref()
                .is_some_and(|p| p.metadata_egress_blocked);
            let isolation = f.isolation.clone();
            if let Ok(p) = tokio::task::spawn_blocking(move || {
                posture::gather_posture(std::path::Path::new("/"), isolation.as_ref(), metadata)
            })
            .await
            {
                let p = match firecracker_jailed {
                    Some(jailed) => posture::with_firecracker(p, jailed),
                    None => p,
                };
                if req.facts.posture.as_ref() != Some(&p) {
                    tracing::info!("host posture changed");
                    req.facts.posture = Some(p);
                }
            }
        }
        if let Err(e) = client.heartbeat(&req).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Long-polls the intents for this node and sends each answer to `tx`, until `shutdown`
/// changes or the receiver is gone.
pub async fn poll_intents(
    client: Client,
    tx: mpsc::Sender<IntentsResponse>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut after_local: Option<u64> = None;
    loop {
        let r = tokio::select! {
            r = client.intents(after_local, Duration::from_secs(20)) => r,
            _ = shutdown.changed() => return,
        };
        match r {
            Ok(resp) => {
                after_local = Some(resp.revision);
                if tx.send(resp).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetching intents failed; retrying");
                after_local = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
