//! VMs: create, list, read, stop, pause, resume, delete, console, exec and statistics.

use std::time::Duration;

use firefleet_api::{ConsoleChunk, CreateVmRequest, ExecRequest, ExecResult, VmList, VmStats};
use firefleet_types::Vm;
use reqwest::Method;

use crate::transport::{enc, page_path};
use crate::{Client, ClientError};

impl Client {
    /// Creates a VM.
    pub async fn vm_create(&self, req: &CreateVmRequest) -> Result<Vm, ClientError> {
        self.call_required_body(Method::POST, "/v1/vms", Some(req))
            .await
    }

    /// Lists VMs: every page, following `next`.
    pub async fn vm_list(&self) -> Result<Vec<Vm>, ClientError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.vm_list_page(None, after.as_deref()).await?;
            items.extend(page.items);
            match page.next {
                // A cursor that does not move would loop forever: stop there.
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return Ok(items),
            }
        }
    }

    /// One page of VMs: up to `limit` (server default without) after the cursor `after`.
    pub async fn vm_list_page(
        &self,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<VmList, ClientError> {
        self.call_required_body::<(), VmList>(
            Method::GET,
            &page_path("/v1/vms", limit, after),
            None,
        )
        .await
    }

    /// Gets a VM by id or name.
    pub async fn vm_get(&self, vm: &str) -> Result<Vm, ClientError> {
        self.call_required_body::<(), _>(Method::GET, &format!("/v1/vms/{}", enc(vm)), None)
            .await
    }

    /// Stops a VM.
    pub async fn vm_stop(&self, vm: &str) -> Result<Vm, ClientError> {
        self.call_required_body::<(), _>(Method::POST, &format!("/v1/vms/{}/stop", enc(vm)), None)
            .await
    }

    /// Pauses a VM.
    pub async fn vm_pause(&self, vm: &str) -> Result<Vm, ClientError> {
        self.call_required_body::<(), _>(Method::POST, &format!("/v1/vms/{}/pause", enc(vm)), None)
            .await
    }

    /// Resumes a VM.
    pub async fn vm_resume(&self, vm: &str) -> Result<Vm, ClientError> {
        self.call_required_body::<(), _>(Method::POST, &format!("/v1/vms/{}/resume", enc(vm)), None)
            .await
    }

    /// Deletes a VM; returns it while deletion is under way, None when it is gone.
    pub async fn vm_delete(&self, vm: &str) -> Result<Option<Vm>, ClientError> {
        self.call_optional_body::<(), _>(Method::DELETE, &format!("/v1/vms/{}", enc(vm)), None)
            .await
    }

    /// Reads a VM's console from `offset`.
    pub async fn vm_logs(&self, vm: &str, offset: u64) -> Result<ConsoleChunk, ClientError> {
        self.call_required_body::<(), _>(
            Method::GET,
            &format!("/v1/vms/{}/logs?offset={offset}", enc(vm)),
            None,
        )
        .await
    }

    /// Runs a command in a VM's guest.
    pub async fn vm_exec(&self, vm: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let url = self.url(&format!("/v1/vms/{}/exec", enc(vm)));
        // The call lasts as long as the command: give it the command's timeout and some slack.
        let wait =
            Duration::from_millis(req.timeout_ms.unwrap_or(30_000)) + Duration::from_secs(30);
        let req = self.with_token(self.http().post(&url).timeout(wait).json(req));
        self.finish_required_body(url, req).await
    }

    /// A VM's latest statistics.
    pub async fn vm_stats(&self, vm: &str) -> Result<VmStats, ClientError> {
        self.call_required_body::<(), _>(Method::GET, &format!("/v1/vms/{}/stats", enc(vm)), None)
            .await
    }
}
