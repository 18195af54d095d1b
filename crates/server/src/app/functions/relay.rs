//! Hands invocations to node agents and their results back to the waiting gateway call.
//!
//! Agents connect outbound only (edge nodes sit behind NAT), so the server cannot call them:
//! each agent long-polls `GET /v1/agent/invocations`, which takes what is queued for its node
//! (or waits for something), and posts each result to `POST /v1/agent/invocations/{id}`.
//! Nothing here is stored: an invocation lives as long as the call waiting for it, and a
//! server restart fails the calls in flight (their clients retry).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use firefleet_api::{AgentInvocation, AgentInvocationResult};
use firefleet_types::NodeId;
use tokio::sync::{oneshot, Notify};

/// Most invocations handed to an agent in one poll.
const BATCH: usize = 64;

/// Why an invocation got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The node's agent did not take it in time (it is down, or not polling).
    #[error("node {0}'s agent did not take the invocation in time")]
    NotTaken(NodeId),
    /// The agent took it but sent no result in time.
    #[error("node {0}'s agent took the invocation but sent no result in time")]
    NoResult(NodeId),
}

#[derive(Default)]
struct Inner {
    queues: HashMap<NodeId, VecDeque<AgentInvocation>>,
    wakers: HashMap<NodeId, Arc<Notify>>,
    pending: HashMap<String, (NodeId, oneshot::Sender<AgentInvocationResult>)>,
}

/// The per-node queues and the calls waiting for results.
#[derive(Default)]
pub struct Relay {
    inner: Mutex<Inner>,
}

impl Relay {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waker(inner: &mut Inner, node: &NodeId) -> Arc<Notify> {
        inner.wakers.entry(node.clone()).or_default().clone()
    }

    /// Queues `inv` for `node` and waits at most `timeout` for its result.
    pub async fn call(
        &self,
        node: &NodeId,
        inv: AgentInvocation,
        timeout: Duration,
    ) -> Result<AgentInvocationResult, RelayError> {
        let id = inv.id.clone();
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            inner.pending.insert(id.clone(), (node.clone(), tx));
            inner.queues.entry(node.clone()).or_default().push_back(inv);
            Self::waker(&mut inner, node).notify_one();
        }
        let got = tokio::time::timeout(timeout, rx).await;
        let mut inner = self.lock();
        inner.pending.remove(&id);
        let still_queued = inner.queues.get_mut(node).is_some_and(|q| {
            let before = q.len();
            q.retain(|i| i.id != id);
            q.len() != before
        });
        match got {
            Ok(Ok(r)) => Ok(r),
            _ if still_queued => Err(RelayError::NotTaken(node.clone())),
            _ => Err(RelayError::NoResult(node.clone())),
        }
    }

    /// What is queued for `node`, waiting up to `wait` for something to arrive.
    pub async fn take(&self, node: &NodeId, wait: Duration) -> Vec<AgentInvocation> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = {
                let mut inner = self.lock();
                let waker = Self::waker(&mut inner, node);
                if let Some(q) = inner.queues.get_mut(node) {
                    if !q.is_empty() {
                        let n = q.len().min(BATCH);
                        return q.drain(..n).collect();
                    }
                }
                waker
            };
            // `notify_one` stores a permit when nobody waits, so a call queued between the
            // check above and this wait is not missed.
            if tokio::time::timeout_at(deadline, notified.notified())
                .await
                .is_err()
            {
                return Vec::new();
            }
        }
    }

    /// Delivers a result from `node`'s agent; false if nobody waits for it (any more) or it was
    /// not this node's.
    pub fn complete(&self, node: &NodeId, id: &str, result: AgentInvocationResult) -> bool {
        let mut inner = self.lock();
        match inner.pending.get(id) {
            Some((n, _)) if n == node => {}
            _ => return false,
        }
        match inner.pending.remove(id) {
            Some((_, tx)) => tx.send(result).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firefleet_types::FunctionHandler;

    fn inv(id: &str) -> AgentInvocation {
        AgentInvocation {
            id: id.into(),
            vm: "vm-1".parse().unwrap(),
            handler: FunctionHandler::Command {
                argv: vec!["cat".into()],
            },
            body_b64: String::new(),
            timeout_ms: 1000,
        }
    }

    fn ok(body: &str) -> AgentInvocationResult {
        AgentInvocationResult {
            status: 200,
            body_b64: body.into(),
            stderr_b64: String::new(),
            error: None,
            duration_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_result_reaches_its_caller_and_only_from_its_node() {
        let relay = Arc::new(Relay::default());
        let a: NodeId = "node-a".parse().unwrap();
        let b: NodeId = "node-b".parse().unwrap();
        let r2 = relay.clone();
        let a2 = a.clone();
        let call =
            tokio::spawn(async move { r2.call(&a2, inv("i1"), Duration::from_secs(5)).await });
        let got = relay.take(&a, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "i1");
        assert!(relay.take(&b, Duration::from_millis(10)).await.is_empty());
        assert!(
            !relay.complete(&b, "i1", ok("x")),
            "another node cannot answer"
        );
        assert!(relay.complete(&a, "i1", ok("eA==")));
        assert_eq!(call.await.unwrap().unwrap().body_b64, "eA==");
        assert!(!relay.complete(&a, "i1", ok("x")), "answered once");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out_and_nothing_stays_queued() {
        let relay = Relay::default();
        let a: NodeId = "node-a".parse().unwrap();
        let err = relay
            .call(&a, inv("i1"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err, RelayError::NotTaken(a.clone()));
        assert!(relay.take(&a, Duration::from_millis(10)).await.is_empty());
    }

    #[tokio::test]
    async fn taken_but_unanswered_is_reported_as_such() {
        let relay = Arc::new(Relay::default());
        let a: NodeId = "node-a".parse().unwrap();
        let (r2, a2) = (relay.clone(), a.clone());
        let call =
            tokio::spawn(async move { r2.call(&a2, inv("i1"), Duration::from_millis(200)).await });
        assert_eq!(relay.take(&a, Duration::from_secs(5)).await.len(), 1);
        assert_eq!(call.await.unwrap().unwrap_err(), RelayError::NoResult(a));
    }
}
