//! Function invocations on this node: long-poll the server for the invocations the gateway
//! queued here, run each on its instance through the guest channel (in parallel, up to a
//! bound), and post each result back.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use firefleet_api::{AgentInvocation, AgentInvocationResult};
use firefleet_client::Client;
use firefleet_vmm::InvokeOutput;
use tokio::sync::{watch, Semaphore};

use crate::runtimes::Runtimes;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Invocations run at once on this node at most (each holds a blocking thread).
const MAX_PARALLEL: usize = 256;
/// How long one poll waits for invocations.
const POLL_WAIT: Duration = Duration::from_secs(20);

/// Serves invocations until `shutdown` turns true.
pub async fn serve(client: Client, runtimes: Arc<Runtimes>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_PARALLEL));
    loop {
        let polled = tokio::select! {
            r = client.invocations(POLL_WAIT) => r,
            _ = shutdown.changed() => return,
        };
        let list = match polled {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "fetching invocations failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for inv in list.items {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let client = client.clone();
            let runtimes = runtimes.clone();
            tokio::spawn(async move {
                let id = inv.id.clone();
                let result = tokio::task::spawn_blocking(move || run(&runtimes, &inv))
                    .await
                    .unwrap_or_else(|e| failed(502, format!("the invocation task failed: {e}")));
                if let Err(e) = client.invocation_result(&id, &result).await {
                    tracing::warn!(invocation = %id, error = %e, "reporting an invocation failed");
                }
                drop(permit);
            });
        }
    }
}

fn failed(status: u16, error: String) -> AgentInvocationResult {
    AgentInvocationResult {
        status,
        body_b64: String::new(),
        stderr_b64: String::new(),
        error: Some(error),
        duration_ms: 0,
    }
}

/// The guest's answer as the server wants it.
fn result_of(out: InvokeOutput) -> AgentInvocationResult {
    AgentInvocationResult {
        status: out.status,
        body_b64: B64.encode(&out.body),
        stderr_b64: B64.encode(&out.stderr),
        error: out.error,
        duration_ms: out.duration_ms,
    }
}

/// A workload that is not listening yet (an instance restored just as its server started):
/// worth trying again until the deadline.
fn not_listening_yet(out: &InvokeOutput) -> bool {
    out.status == 502
        && out
            .error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused"))
}

/// Runs one invocation on its instance (blocking).
fn run(runtimes: &Runtimes, inv: &AgentInvocation) -> AgentInvocationResult {
    let vm = inv.vm.as_str();
    let Ok(body) = B64.decode(&inv.body_b64) else {
        return failed(400, "the request body is not valid base64".to_owned());
    };
    let rt = runtimes.for_vm(vm, None);
    let timeout = Duration::from_millis(inv.timeout_ms.max(1));
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let t0 = std::time::Instant::now();
        let out = rt.invoke(vm, &inv.handler, &body, left.max(Duration::from_millis(1)));
        tracing::debug!(vm, ms = t0.elapsed().as_millis() as u64, "invoked");
        match out {
            Ok(out) if not_listening_yet(&out) && left > Duration::from_millis(200) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(out) => return result_of(out),
            Err(e) => {
                return failed(
                    502,
                    format!("instance {vm}: {}", firefleet_types::error_chain(&e)),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_connection_is_retried() {
        let refused = InvokeOutput {
            status: 502,
            error: Some("connection refused on 127.0.0.1:8080".into()),
            ..Default::default()
        };
        assert!(not_listening_yet(&refused));
        let failed = InvokeOutput {
            status: 500,
            error: Some("exit status 1".into()),
            ..Default::default()
        };
        assert!(!not_listening_yet(&failed));
        let r = result_of(InvokeOutput {
            status: 200,
            body: b"hi".to_vec(),
            ..Default::default()
        });
        assert_eq!(r.body_b64, "aGk=");
    }
}
