//! Scheduling: places Pending VMs with the scheduler engine and records the placement.

use firefleet_scheduler::{place, Placement, PlacementRequest, Weights};
use firefleet_types::{DesiredState, VmPhase};
use rand::SeedableRng;

use crate::app::{
    compliance,
    placement::{cluster_view, reasons_text, request_for},
    policy,
};
use crate::{now_ms, repo, ApiError, AppState};

/// Places the Pending VMs that may run (a passing compliance record at the current policy
/// version) and records each placement, or why there is none.
pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    // Prepare.
    let (vms, revision) = repo::list_vms(&state).await?;
    let waiting: Vec<_> = vms
        .iter()
        .filter(|vm| {
            vm.status.phase == VmPhase::Pending
                && vm.spec.desired == DesiredState::Running
                && !vm.deleting
        })
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    // Only VMs with a passing compliance record at the current policy version are placed (the
    // compliance controller evaluates the others, and stops those that fail).
    let version = policy::version(&state).await?;
    let mut pending = Vec::with_capacity(waiting.len());
    for vm in waiting {
        let key = format!("{}{}", repo::VM_RECORDS, vm.id);
        let record = repo::get_json::<policy::StoredRecord>(&state, &key).await?;
        if compliance::placeable(record.as_ref().map(|(r, _)| r), version) {
            pending.push(vm);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let view = cluster_view(&state, &vms).await?;
    let requests: Vec<PlacementRequest> = pending.iter().map(|vm| request_for(vm)).collect();

    // Plan (pure; seeded by the store revision so a rerun on the same state decides the same).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(revision);
    let placements = place(&view, &requests, &Weights::default(), &mut rng);

    // Execute.
    let (mut placed, mut unschedulable) = (0, 0);
    for p in placements {
        match p {
            Placement::Placed { vm, node } => {
                let now = now_ms();
                repo::update_vm(&state, &vm, |v| {
                    if v.status.phase != VmPhase::Pending
                        || v.spec.desired != DesiredState::Running
                        || v.deleting
                    {
                        return Ok(false);
                    }
                    v.status.phase = VmPhase::Scheduled;
                    v.status.node = Some(node.clone());
                    v.status.scheduled_ms = Some(now);
                    v.status.message = None;
                    Ok(true)
                })
                .await?;
                tracing::info!(%vm, %node, "placed");
                placed += 1;
            }
            Placement::Unschedulable { vm, reasons } => {
                let msg = format!("unschedulable: {}", reasons_text(&reasons));
                repo::update_vm(&state, &vm, |v| {
                    if v.status.phase != VmPhase::Pending
                        || v.status.message.as_deref() == Some(msg.as_str())
                    {
                        return Ok(false);
                    }
                    v.status.message = Some(msg.clone());
                    Ok(true)
                })
                .await?;
                unschedulable += 1;
            }
        }
    }
    state.metrics.placements(placed, unschedulable);
    Ok(())
}
