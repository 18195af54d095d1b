//! Opt-in automatic rebalancing (`firefleet server --rebalance-every-secs N`): every period,
//! plan migrations for the triggers in force (nodes on low battery, nodes above the utilisation
//! threshold) and start them. One round at a time: while any migration is under way, nothing
//! new is planned, so the planner's concurrency budget holds across rounds.

use std::time::Duration;

use firefleet_api::PlanQuery;
use firefleet_types::Migration;
use tokio::{sync::watch, task::JoinHandle};

use crate::app::{migrations, plan};
use crate::{repo, ApiError, AppState};

/// Runs [`tick`] every `period` until shutdown.
pub(crate) fn spawn(
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    period: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = tick(&state).await {
                tracing::warn!(error = %e, "rebalancing failed; will retry");
            }
        }
    })
}

async fn tick(state: &AppState) -> Result<(), ApiError> {
    let (migrations, _) = repo::list_json::<Migration>(state, "/migrations/").await?;
    if migrations.iter().any(|m| !m.phase.is_terminal()) {
        return Ok(());
    }
    let (plan, vms) = plan::make_plan(state, &PlanQuery::default()).await?;
    for m in &plan.moves {
        let Some(vm) = vms.iter().find(|v| v.id == m.vm) else {
            continue;
        };
        let mode = migrations::mode_for(vm);
        match migrations::start(state, vm, m.from.clone(), m.to.clone(), mode).await {
            Ok(_) => {
                tracing::info!(vm = %vm.id, from = %m.from, to = %m.to, reason = %m.reason, "rebalancing")
            }
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %e, "could not start a planned migration")
            }
        }
    }
    Ok(())
}
