//! Level-triggered controllers. Each reads the current state (prepare), calls a pure engine
//! (plan) and writes the result with compare-and-swap (execute). Each is idempotent and runs on
//! a timer and whenever `AppState::kick` fires, so being killed at any point is harmless: the next
//! run sees the same state and finishes the work.

mod compaction;
pub(crate) mod compliance;
pub(crate) mod functions;
pub(crate) mod guard;
mod healing;
pub(crate) mod leader;
mod nodes;
pub(crate) mod rebalance;
pub(crate) mod scheduling;

use std::{future::Future, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

use crate::AppState;

/// Starts every controller.
pub(crate) fn spawn_all(state: AppState, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        spawn_loop(
            "scheduling",
            state.clone(),
            shutdown.clone(),
            Duration::from_secs(1),
            scheduling::reconcile,
        ),
        spawn_loop(
            "node-readiness",
            state.clone(),
            shutdown.clone(),
            Duration::from_secs(2),
            nodes::reconcile,
        ),
        spawn_loop(
            "compliance",
            state.clone(),
            shutdown.clone(),
            Duration::from_secs(2),
            compliance::reconcile,
        ),
        spawn_loop(
            "healing",
            state.clone(),
            shutdown.clone(),
            Duration::from_millis(500),
            healing::reconcile,
        ),
        spawn_loop(
            "compaction",
            state,
            shutdown,
            Duration::from_secs(60),
            compaction::reconcile,
        ),
    ]
}

fn spawn_loop<F, Fut>(
    name: &'static str,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    period: Duration,
    f: F,
) -> JoinHandle<()>
where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), crate::ApiError>> + Send,
{
    tokio::spawn(async move {
        loop {
            if let Err(e) = f(state.clone()).await {
                tracing::warn!(controller = name, error = %e, "reconcile failed; will retry");
            }
            let kicked = state.kick.notified();
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = kicked => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}
