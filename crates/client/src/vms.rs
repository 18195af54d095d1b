//! VMs: create, list, read, stop, pause, resume, delete, console, exec and statistics.
//!
//! A create is sent again on another replica after any failure that calls for failover, even
//! one after which the first attempt may have been applied: VM names are unique per tenant, so
//! a second VM cannot be made. When such a retried create is refused (`409 conflict`, or a
//! quota the first attempt used up), the VM of that name is read back and returned if its spec
//! is the one asked for; otherwise the refusal stands. Stop, pause and resume set the desired
//! state and are sent again freely; exec runs a command and is only sent again when no attempt
//! can have been applied (see `failover.rs`).

use std::time::Duration;

use firefleet_api::{ConsoleChunk, CreateVmRequest, ExecRequest, ExecResult, VmList, VmStats};
use firefleet_types::Vm;
use reqwest::Method;

use crate::failover::Replay;
use crate::transport::{enc, page_path};
use crate::{Client, ClientError};

/// Most pages of a tenant's VMs read when looking for the VM a retried create made.
const MAX_LOOKUP_PAGES: usize = 100;

impl Client {
    /// Creates a VM.
    pub async fn vm_create(&self, req: &CreateVmRequest) -> Result<Vm, ClientError> {
        self.vm_create_with_warnings(req).await.map(|(vm, _)| vm)
    }

    /// Creates a VM; also returns the warnings of policies in `warn` mode it violates (none
    /// when the VM was made by an earlier attempt whose answer was lost; see the module doc).
    pub async fn vm_create_with_warnings(
        &self,
        req: &CreateVmRequest,
    ) -> Result<(Vm, Vec<String>), ClientError> {
        let (vm, headers) = self
            .create_named("/v1/vms", req, || self.vm_created_by(req))
            .await?;
        Ok((vm, crate::policy::warnings(&headers)))
    }

    /// The VM named in `req`, if it exists with the spec `req` asks for (made by an attempt
    /// whose answer was lost).
    async fn vm_created_by(&self, req: &CreateVmRequest) -> Option<Vm> {
        if let Ok(vm) = self.vm_get(&req.name).await {
            if is_created_by(&vm, req) {
                return Some(vm);
            }
        }
        // An admin's create for another tenant: names resolve in the caller's tenant, so look
        // through that tenant's VMs.
        let tenant = req.tenant.as_ref()?;
        let mut after: Option<String> = None;
        for _ in 0..MAX_LOOKUP_PAGES {
            let mut path = format!("/v1/vms?tenant={}", enc(tenant.as_str()));
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", enc(a)));
            }
            let page: VmList = self
                .call_required_body::<(), _>(Method::GET, &path, None)
                .await
                .ok()?;
            if let Some(vm) = page.items.into_iter().find(|vm| is_created_by(vm, req)) {
                return Some(vm);
            }
            match page.next {
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return None,
            }
        }
        None
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

    /// Stops a VM (idempotent: sent again on failover).
    pub async fn vm_stop(&self, vm: &str) -> Result<Vm, ClientError> {
        self.idempotent_post::<(), _>(&format!("/v1/vms/{}/stop", enc(vm)), None)
            .await
    }

    /// Pauses a VM (idempotent: sent again on failover).
    pub async fn vm_pause(&self, vm: &str) -> Result<Vm, ClientError> {
        self.idempotent_post::<(), _>(&format!("/v1/vms/{}/pause", enc(vm)), None)
            .await
    }

    /// Resumes a VM (idempotent: sent again on failover).
    pub async fn vm_resume(&self, vm: &str) -> Result<Vm, ClientError> {
        self.idempotent_post::<(), _>(&format!("/v1/vms/{}/resume", enc(vm)), None)
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

    /// Runs a command in a VM's guest (sent again only when no attempt can have been applied).
    pub async fn vm_exec(&self, vm: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        // The call lasts as long as the command: give it the command's timeout and some slack.
        let wait =
            Duration::from_millis(req.timeout_ms.unwrap_or(30_000)) + Duration::from_secs(30);
        self.send_required_body(
            &format!("/v1/vms/{}/exec", enc(vm)),
            Replay::UnlessSent,
            |http, url| Ok(self.with_token(http.post(url).timeout(wait).json(req))),
        )
        .await
    }

    /// A VM's latest statistics.
    pub async fn vm_stats(&self, vm: &str) -> Result<VmStats, ClientError> {
        self.call_required_body::<(), _>(Method::GET, &format!("/v1/vms/{}/stats", enc(vm)), None)
            .await
    }
}

/// Whether `vm` is what `req` asks for: the VM a lost attempt of `req` made (a user's VM, not
/// being deleted, with every field of the request).
fn is_created_by(vm: &Vm, req: &CreateVmRequest) -> bool {
    let s = &vm.spec;
    !vm.deleting
        && s.function.is_none()
        && s.name == req.name
        && req.tenant.as_ref().is_none_or(|t| *t == s.tenant)
        && s.image == req.image
        && s.resources == req.resources
        && s.labels == req.labels
        && s.cmd == req.cmd
        && s.restart_policy == req.restart_policy
        && s.network == req.network
        && s.runtime == req.runtime
        && s.disks == req.disks
        && s.placement == req.placement
}
