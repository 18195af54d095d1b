//! Functions: deploy, list, read, delete, logs, invoke; the agent's invocation queue.

use std::time::Duration;

use firefleet_api::{
    AgentInvocationResult, AgentInvocations, DeployFunctionRequest, FunctionList, FunctionLogs,
    FunctionView, InvokeResponse,
};
use reqwest::Method;

use crate::failover::Replay;
use crate::transport::{enc, page_path};
use crate::{Client, ClientError};

impl Client {
    /// `POST /v1/functions`: an upsert (the same spec again changes nothing), sent again on
    /// failover.
    pub async fn deploy_function(
        &self,
        req: &DeployFunctionRequest,
    ) -> Result<FunctionView, ClientError> {
        self.idempotent_post("/v1/functions", Some(req)).await
    }

    /// `GET /v1/functions`: every page, following `next`.
    pub async fn list_functions(&self) -> Result<FunctionList, ClientError> {
        let mut all = FunctionList {
            items: Vec::new(),
            next: None,
        };
        let mut after: Option<String> = None;
        loop {
            let path = page_path("/v1/functions", None, after.as_deref());
            let page: FunctionList = self
                .call_required_body::<(), _>(Method::GET, &path, None)
                .await?;
            all.items.extend(page.items);
            match page.next {
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return Ok(all),
            }
        }
    }

    /// `GET /v1/functions/{name}`.
    pub async fn get_function(&self, name: &str) -> Result<FunctionView, ClientError> {
        self.call_required_body::<(), _>(Method::GET, &format!("/v1/functions/{}", enc(name)), None)
            .await
    }

    /// `DELETE /v1/functions/{name}`.
    pub async fn delete_function(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_body::<()>(
            Method::DELETE,
            &format!("/v1/functions/{}", enc(name)),
            None,
        )
        .await
    }

    /// `GET /v1/functions/{name}/logs`.
    pub async fn function_logs(&self, name: &str) -> Result<FunctionLogs, ClientError> {
        self.call_required_body::<(), _>(
            Method::GET,
            &format!("/v1/functions/{}/logs", enc(name)),
            None,
        )
        .await
    }

    /// `POST /v1/functions/{name}/invoke`: the body as is; waits as long as the server holds
    /// the request (cold start) plus the function's run time. Sent again only when no attempt can
    /// have been applied (an invocation is not idempotent).
    pub async fn invoke_function(
        &self,
        name: &str,
        body: Vec<u8>,
        region: Option<&str>,
    ) -> Result<InvokeResponse, ClientError> {
        let mut path = format!("/v1/functions/{}/invoke", enc(name));
        if let Some(r) = region {
            path.push_str(&format!("?region={}", enc(r)));
        }
        self.send_required_body(&path, Replay::UnlessSent, |http, url| {
            Ok(self.with_token(
                http.post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .timeout(Duration::from_secs(20 * 60))
                    .body(body.clone()),
            ))
        })
        .await
    }

    /// Agent: the invocations queued for this node (waits up to `wait` for some).
    pub async fn invocations(&self, wait: Duration) -> Result<AgentInvocations, ClientError> {
        self.call_required_body::<(), _>(
            Method::GET,
            &format!("/v1/agent/invocations?wait_ms={}", wait.as_millis()),
            None,
        )
        .await
    }

    /// Agent: an invocation's result.
    pub async fn invocation_result(
        &self,
        id: &str,
        result: &AgentInvocationResult,
    ) -> Result<(), ClientError> {
        self.call_ignoring_body(
            Method::POST,
            &format!("/v1/agent/invocations/{}", enc(id)),
            Some(result),
        )
        .await
    }
}
