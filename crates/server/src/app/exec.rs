//! Exec: a command run in a guest. The request is stored for the VM's agent, which runs it
//! through the guest channel and writes the result into the same record; the caller waits for
//! it (the exec's timeout plus time for the agent to notice and answer).

use std::time::Duration;

use firefleet_api::{ExecRequest, ExecRequestRecord, ExecResult};
use firefleet_types::{Vm, VmId, VmPhase};

use crate::{repo, ApiError, AppState};

/// Runs `req` in a running VM's guest and waits for its result (`Timeout` without an answer
/// in time, `Conflict` when the VM went away meanwhile).
pub async fn run(state: &AppState, vm: &Vm, req: ExecRequest) -> Result<ExecResult, ApiError> {
    if vm.status.phase != VmPhase::Running || vm.deleting {
        return Err(ApiError::Conflict(format!(
            "vm {} is {:?}, not running",
            vm.spec.name, vm.status.phase
        )));
    }
    let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(30_000));
    let rec = ExecRequestRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        vm: vm.id.clone(),
        request: req,
        result: None,
    };
    let key = repo::exec_key(&vm.id, &rec.id);
    let rev = repo::create_exec(state, &rec).await?;
    // Wait for the agent's result (exec timeout plus time for the agent to notice and answer).
    let wait = timeout + Duration::from_secs(15);
    let outcome = tokio::time::timeout(wait, async {
        let mut watch = state.store.watch(&key, rev + 1).await?;
        loop {
            if let Some((r, _)) = repo::get_json::<ExecRequestRecord>(state, &key).await? {
                if let Some(result) = r.result {
                    return Ok::<_, ApiError>(Some(result));
                }
            } else {
                return Ok(None);
            }
            match watch.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    watch = state
                        .store
                        .watch(&key, state.store.revision().await? + 1)
                        .await?
                }
            }
        }
    })
    .await;
    let _ = state.store.delete(&key, None).await;
    match outcome {
        Ok(Ok(Some(result))) => Ok(result),
        Ok(Ok(None)) => Err(ApiError::Conflict(
            "the exec was cancelled (the VM went away)".to_owned(),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Timeout(format!(
            "no answer from the VM's agent within {} s",
            wait.as_secs()
        ))),
    }
}

/// Records the result of exec `exec` in VM `vm`, for the caller waiting for it (nobody is
/// told when the caller gave up meanwhile: its record is gone).
pub async fn report(
    state: &AppState,
    vm: &VmId,
    exec: &str,
    result: &ExecResult,
) -> Result<(), ApiError> {
    let key = repo::exec_key(vm, exec);
    loop {
        // The waiting API call deletes the record when it gives up: then there is nobody to tell.
        let Some((mut rec, rev)) = repo::get_json::<ExecRequestRecord>(state, &key).await? else {
            return Ok(());
        };
        if rec.result.is_some() {
            return Ok(());
        }
        rec.result = Some(result.clone());
        let value = serde_json::to_vec(&rec).map_err(|e| ApiError::Internal(e.to_string()))?;
        match state.store.compare_and_swap(&key, rev, value).await {
            Ok(_) => return Ok(()),
            Err(firefleet_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
