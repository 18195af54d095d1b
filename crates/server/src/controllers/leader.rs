//! Leadership: every replica campaigns; the one that wins runs the controllers, with a store
//! whose every write is fenced on its term, until it loses the leadership or shuts down.
//!
//! - Won: the controllers start on a copy of the state whose store is a
//!   [`FencedStore`](firefleet_store::fence::FencedStore): each write also compares the leader
//!   key's revision with this term, so a write of a deposed leader (one that was cut off and
//!   does not know yet) is refused by the store, not applied.
//! - Lost (the lease could not be renewed in time, or the leader key changed): the controller
//!   tasks are aborted at once (they are level-triggered, so stopping mid-pass is harmless)
//!   and the replica campaigns again.
//! - Shutdown: the controllers finish their pass, then the replica resigns so that another
//!   takes over without waiting for the lease to expire.
//! - On a shared store (etcd) the leader also follows the store's watch and kicks the
//!   controllers on every change, since the replica that took a request is often another one.

use std::sync::Arc;
use std::time::Duration;

use firefleet_store::fence::FencedStore;
use firefleet_store::KvStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::AppState;

/// What the controllers need beyond the state.
#[derive(Clone)]
pub(crate) struct ControllerConfig {
    pub rebalance_every: Option<Duration>,
    pub guard: crate::GuardConfig,
    /// Follow the store's watch and kick the controllers on changes (a shared store).
    pub follow_store: bool,
}

/// Campaigns for the leadership until `shutdown`, running the controllers while it leads.
pub(crate) fn spawn(
    state: AppState,
    config: ControllerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let cluster = Arc::clone(&state.cluster);
        loop {
            let campaign = cluster.election.campaign(&cluster.me);
            let leadership = tokio::select! {
                won = campaign => won,
                _ = shutdown.changed() => return,
            };
            let leadership = match leadership {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "campaigning for the leadership failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let (key, term) = leadership.fence();
            tracing::info!(replica = %cluster.me.id, term, "took the leadership: starting the controllers");
            cluster.took(term);
            let fenced: Arc<dyn KvStore> =
                Arc::new(FencedStore::new(Arc::clone(&state.store), key, term));
            let leader_state = AppState {
                store: fenced,
                ..state.clone()
            };
            let (stop, stop_rx) = watch::channel(false);
            let mut tasks = start(&leader_state, &config, stop_rx);
            let done = tokio::select! {
                _ = leadership.lost() => false,
                _ = shutdown.changed() => true,
            };
            cluster.stepped_down();
            if done {
                let _ = stop.send(true);
                for t in tasks {
                    let _ = t.await;
                }
                if let Err(e) = leadership.resign().await {
                    tracing::warn!(error = %e, "resigning the leadership");
                }
                return;
            }
            tracing::warn!(replica = %cluster.me.id, term, "lost the leadership: stopping the controllers");
            for t in tasks.drain(..) {
                t.abort();
                let _ = t.await;
            }
        }
    })
}

/// Starts every controller on `state` (whose store is fenced), stopping when `stop` fires.
fn start(
    state: &AppState,
    config: &ControllerConfig,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(period) = config.rebalance_every {
        tasks.push(super::rebalance::spawn(state.clone(), stop.clone(), period));
    }
    tasks.push(super::functions::spawn(state.clone(), stop.clone()));
    tasks.push(super::guard::spawn(
        state.clone(),
        config.guard.clone(),
        stop.clone(),
    ));
    if config.follow_store {
        tasks.push(follow(state.clone(), stop.clone()));
    }
    tasks.extend(super::spawn_all(state.clone(), stop));
    tasks
}

/// Kicks the controllers when the store changes (at most every 100 ms), so that a request
/// another replica took reaches them without waiting for their timers.
fn follow(state: AppState, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let from = match state.store.revision().await {
                Ok(r) => r + 1,
                Err(e) => {
                    tracing::debug!(error = %e, "following the store: no revision yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let mut watch = match state.store.watch("/", from).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "following the store");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            'events: loop {
                let event = tokio::select! {
                    e = watch.next() => e,
                    _ = stop.changed() => return,
                };
                let Some(Ok(_)) = event else { break };
                state.kick.notify_waiters();
                // What arrives in the next 100 ms makes one more kick, not one each.
                let until = tokio::time::Instant::now() + Duration::from_millis(100);
                let mut more = false;
                loop {
                    match tokio::time::timeout_at(until, watch.next()).await {
                        Ok(Some(Ok(_))) => more = true,
                        Ok(_) => break 'events,
                        Err(_) => break,
                    }
                }
                if more {
                    state.kick.notify_waiters();
                }
            }
        }
    })
}
