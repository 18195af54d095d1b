//! The migration planner's input and output: triggers from the fleet as it is (nodes on
//! battery below a charge, nodes above a utilisation, and on request a rebalance of every VM
//! for cost, latency and availability), the plan explained, and carrying it out.

use firefleet_api::{PlanNote, PlanQuery, PlanResponse, PlannedMove};
use firefleet_scheduler::{
    plan_migrations, DeferReason, MigrationBudget, PlacedVm, Plan, Trigger, Triggers, Weights,
};
use firefleet_types::{node::PowerSource, Migration, NodeInfo, Vm, VmPhase};

use crate::app::{
    migrations,
    placement::{cluster_view, reasons_text, request_for},
};
use crate::{repo, ApiError, AppState};

/// Default utilisation above which a node is overloaded.
const DEFAULT_IMBALANCE: f64 = 0.9;
/// Default battery charge under which VMs leave a node.
const DEFAULT_BATTERY_BELOW: u8 = 30;

fn trigger_name(t: &Trigger) -> &'static str {
    match t {
        Trigger::Drain => "drain",
        Trigger::LowBattery { .. } => "low_battery",
        Trigger::Guard { .. } => "guard",
        Trigger::Imbalance { .. } => "imbalance",
        Trigger::Rebalance => "rebalance",
    }
}

/// Plans with the fleet as stored; returns the plan and the VMs it is about.
pub async fn make_plan(state: &AppState, q: &PlanQuery) -> Result<(Plan, Vec<Vm>), ApiError> {
    let imbalance = q.imbalance.unwrap_or(DEFAULT_IMBALANCE);
    if !(imbalance > 0.0 && imbalance <= 1.0) {
        return Err(ApiError::Validation(firefleet_types::ValidationError::new(
            "imbalance",
            format!("{imbalance}: must be in (0, 1]"),
        )));
    }
    let below = q.battery_below.unwrap_or(DEFAULT_BATTERY_BELOW);
    if below > 100 {
        return Err(ApiError::Validation(firefleet_types::ValidationError::new(
            "battery_below",
            format!("{below}: a percentage, at most 100"),
        )));
    }
    let (vms, _) = repo::list_vms(state).await?;
    let (nodes, _) = repo::list_json::<NodeInfo>(state, "/nodes/").await?;
    let (migrations, _) = repo::list_json::<Migration>(state, "/migrations/").await?;
    let view = cluster_view(state, &vms).await?;
    let mut triggers = Triggers {
        imbalance_threshold: Some(imbalance),
        rebalance_all: q.rebalance,
        ..Triggers::default()
    };
    for n in &nodes {
        let power = n.status.facts.as_ref().and_then(|f| f.power.as_ref());
        if let Some(p) = power {
            if p.source == PowerSource::Battery {
                if let Some(pct) = p.battery_percent.filter(|pct| *pct < below) {
                    triggers.low_battery.insert(n.id.clone(), pct);
                }
            }
        }
    }
    let placed: Vec<PlacedVm> = vms
        .iter()
        .filter(|vm| {
            matches!(vm.status.phase, VmPhase::Running | VmPhase::Paused)
                && !vm.deleting
                && !migrations
                    .iter()
                    .any(|m| m.vm == vm.id && !m.phase.is_terminal())
        })
        .filter_map(|vm| {
            Some(PlacedVm {
                node: vm.status.node.clone()?,
                request: request_for(vm),
                memory_mib: vm.spec.resources.memory_mib,
            })
        })
        .collect();
    let plan = plan_migrations(
        &view,
        &placed,
        &triggers,
        &Weights::default(),
        &MigrationBudget::default(),
    );
    Ok((plan, vms))
}

/// The plan as the API shows it.
fn response(plan: &Plan, vms: &[Vm]) -> PlanResponse {
    let name = |id: &firefleet_types::VmId| {
        vms.iter()
            .find(|v| &v.id == id)
            .map_or_else(|| id.to_string(), |v| v.spec.name.clone())
    };
    let mut notes = Vec::new();
    for d in &plan.deferred {
        notes.push(PlanNote {
            vm: name(&d.vm),
            node: d.from.to_string(),
            why: format!(
                "{} wanted, deferred: {}",
                trigger_name(&d.trigger),
                match d.why {
                    DeferReason::TotalBudget => "the concurrent migration budget is spent",
                    DeferReason::SourceBusy => "its node has as many migrations as allowed",
                    DeferReason::DestinationsBusy =>
                        "every node that fits has as many migrations as allowed",
                }
            ),
        });
    }
    for s in &plan.stuck {
        notes.push(PlanNote {
            vm: name(&s.vm),
            node: s.from.to_string(),
            why: format!("must leave but fits nowhere: {}", reasons_text(&s.reasons)),
        });
    }
    for k in &plan.kept {
        notes.push(PlanNote {
            vm: name(&k.vm),
            node: k.node.to_string(),
            why: match k.best_net {
                Some(n) => format!(
                    "{}: stays, the best move's net benefit is {n:.3}",
                    trigger_name(&k.trigger)
                ),
                None => format!("{}: stays, no other node fits", trigger_name(&k.trigger)),
            },
        });
    }
    PlanResponse {
        moves: plan
            .moves
            .iter()
            .map(|m| PlannedMove {
                vm: name(&m.vm),
                vm_id: m.vm.to_string(),
                from: m.from.to_string(),
                to: m.to.to_string(),
                trigger: trigger_name(&m.trigger).to_owned(),
                forced: m.forced,
                net: m.benefit.net,
                downtime_s: m.benefit.downtime_s,
                saves_per_hour: m.benefit.saves_per_hour,
                reason: m.reason.clone(),
            })
            .collect(),
        notes,
        started: Vec::new(),
    }
}

/// The migrations the planner would make now, and why (changes nothing).
pub async fn show(state: &AppState, q: &PlanQuery) -> Result<PlanResponse, ApiError> {
    let (plan, vms) = make_plan(state, q).await?;
    Ok(response(&plan, &vms))
}

/// Plans, and starts the planned migrations; what could not be started is in the notes.
pub async fn apply(state: &AppState, q: &PlanQuery) -> Result<PlanResponse, ApiError> {
    let (plan, vms) = make_plan(state, q).await?;
    let mut out = response(&plan, &vms);
    for m in &plan.moves {
        let Some(vm) = vms.iter().find(|v| v.id == m.vm) else {
            continue;
        };
        match migrations::start(
            state,
            vm,
            m.from.clone(),
            m.to.clone(),
            migrations::mode_for(vm),
        )
        .await
        {
            Ok(started) => out.started.push(started),
            Err(e) => out.notes.push(PlanNote {
                vm: vm.spec.name.clone(),
                node: m.from.to_string(),
                why: format!("not started: {e}"),
            }),
        }
    }
    state.kick.notify_waiters();
    Ok(out)
}
