//! Functions: deploying (admission as a function and as one of its instances, the tenant's
//! quota, the record; the functions controller makes the template), the view with instances
//! and counters, removal, logs, invocation through the gateway ([`gateway`], with the agents'
//! [`relay`]), and what the functions controller needs to know of a function's VMs.

pub(crate) mod gateway;
pub(crate) mod relay;

use firefleet_api::{
    FunctionInstanceInfo, FunctionLog, FunctionLogs, FunctionView, MAX_INVOKE_BYTES,
};
use firefleet_types::{
    function::{FunctionInstance, TemplateRef},
    DesiredState, Function, FunctionPhase, FunctionSpec, FunctionStatus, Generation, NodeId,
    NodeInfo, TenantId, Vm, VmSpec,
};

use crate::{app, now_ms, repo, ApiError, AppState};

pub(crate) use gateway::{render_metrics, FnKey, Gateway, InvokeError, Invoked};

/// The VMs of a function: its template and instances.
pub(crate) fn function_vms<'a>(vms: &'a [Vm], f: &'a FunctionSpec) -> impl Iterator<Item = &'a Vm> {
    vms.iter().filter(move |vm| {
        vm.spec.tenant == f.tenant
            && vm
                .spec
                .function
                .as_ref()
                .is_some_and(|b| b.function == f.name)
    })
}

/// The spec of one of a function's VMs: its template (`template` None, booted) or an instance
/// (restored from `template`), in `regions` (empty: anywhere).
pub(crate) fn function_vm_spec(
    f: &Function,
    name: String,
    regions: Vec<String>,
    template: Option<TemplateRef>,
) -> VmSpec {
    VmSpec {
        name,
        tenant: f.spec.tenant.clone(),
        image: f.spec.image.clone(),
        resources: f.spec.resources,
        labels: Default::default(),
        // HTTP mode: the workload serves from boot. Command mode: the guest idles and runs the
        // command per invocation.
        cmd: f.spec.http_port.map(|_| f.spec.cmd.clone()),
        restart_policy: Default::default(),
        desired: DesiredState::Running,
        restore: None,
        network: Default::default(),
        runtime: f.spec.runtime,
        disks: Vec::new(),
        placement: firefleet_types::vm::PlacementSpec {
            allowed_regions: regions,
            ..Default::default()
        },
        function: Some(FunctionInstance {
            function: f.spec.name.clone(),
            template,
        }),
    }
}

/// The region label of `node` (empty when it has none, or is not in `nodes`).
pub(crate) fn node_region(nodes: &[firefleet_types::NodeInfo], node: &NodeId) -> String {
    nodes
        .iter()
        .find(|n| &n.id == node)
        .and_then(|n| n.labels.get("region").cloned())
        .unwrap_or_default()
}

/// The function `name` of `tenant`.
pub async fn find(state: &AppState, tenant: &TenantId, name: &str) -> Result<Function, ApiError> {
    firefleet_types::validate::check_name("function", name)?;
    repo::get_function(state, tenant, name)
        .await?
        .map(|(f, _)| f)
        .ok_or_else(|| ApiError::not_found("function", name))
}

/// The VMs and nodes a function's view is made from (read once per request): the VMs of the
/// functions' tenants, each read through its names' keys (never every VM in the store).
async fn fleet<'a>(
    state: &AppState,
    tenants: impl IntoIterator<Item = &'a TenantId>,
) -> Result<(Vec<Vm>, Vec<NodeInfo>), ApiError> {
    let tenants: std::collections::BTreeSet<&TenantId> = tenants.into_iter().collect();
    let mut vms = Vec::new();
    for t in tenants {
        vms.extend(crate::app::quota::tenant_vms(state, t).await?);
    }
    let (nodes, _) = repo::list_json::<NodeInfo>(state, "/nodes/").await?;
    Ok((vms, nodes))
}

/// What the gateway and the store know of a function.
fn view(state: &AppState, f: Function, vms: &[Vm], nodes: &[NodeInfo]) -> FunctionView {
    let key: FnKey = (f.spec.tenant.clone(), f.spec.name.clone());
    let (counters, wanted, reason, live) = state.gateway.with(&key, |st| {
        (
            st.counters.clone(),
            st.wanted.clone(),
            st.reason.clone(),
            st.instances
                .iter()
                .map(|(id, i)| {
                    (
                        id.clone(),
                        (i.in_flight, i.idle_since_ms, st.deadlines.get(id).copied()),
                    )
                })
                .collect::<std::collections::HashMap<_, _>>(),
        )
    });
    let instances = function_vms(vms, &f.spec)
        .filter(|vm| {
            vm.spec
                .function
                .as_ref()
                .is_some_and(|b| b.template.is_some())
        })
        .map(|vm| {
            let (in_flight, idle_since_ms, keep_alive_until_ms) =
                live.get(&vm.id).copied().unwrap_or((0, None, None));
            FunctionInstanceInfo {
                vm: vm.id.clone(),
                name: vm.spec.name.clone(),
                phase: vm.status.phase,
                node: vm.status.node.clone(),
                region: vm
                    .status
                    .node
                    .as_ref()
                    .map(|n| node_region(nodes, n))
                    .filter(|r| !r.is_empty()),
                in_flight,
                idle_since_ms,
                keep_alive_until_ms,
            }
        })
        .collect();
    FunctionView {
        function: f,
        instances,
        counters,
        wanted,
        reason,
    }
}

/// A function as the API shows it: its record, its instances (from the store) and what the
/// gateway knows (counters, wanted instances).
pub async fn view_of(state: &AppState, f: Function) -> Result<FunctionView, ApiError> {
    let (vms, nodes) = fleet(state, [&f.spec.tenant]).await?;
    Ok(view(state, f, &vms, &nodes))
}

/// The views of `functions` (the fleet read once for all).
pub async fn views(
    state: &AppState,
    functions: Vec<Function>,
) -> Result<Vec<FunctionView>, ApiError> {
    let (vms, nodes) = fleet(state, functions.iter().map(|f| &f.spec.tenant)).await?;
    Ok(functions
        .into_iter()
        .map(|f| view(state, f, &vms, &nodes))
        .collect())
}

/// One page of the functions of `tenant` (all: None) by tenant and name, as the API shows
/// them, and the next page's cursor.
pub async fn list(
    state: &AppState,
    tenant: Option<&TenantId>,
    page: &repo::Page,
) -> Result<(Vec<FunctionView>, Option<String>), ApiError> {
    let (functions, next) = repo::function_page(state, tenant, page).await?;
    Ok((views(state, functions).await?, next))
}

/// What [`deploy`] did.
pub struct Deployed {
    /// The function as it is now.
    pub view: FunctionView,
    /// Whether it is new (else: changed, or the same spec again).
    pub created: bool,
    /// The admission's warnings.
    pub warnings: Vec<String>,
}

/// Deploys a function (a validated spec), or changes one: a new spec makes a new template;
/// instances of the old one are replaced as they go idle.
pub async fn deploy(state: &AppState, spec: FunctionSpec) -> Result<Deployed, ApiError> {
    let fresh = Function {
        spec: spec.clone(),
        generation: Generation(1),
        status: FunctionStatus {
            phase: FunctionPhase::Deploying,
            message: None,
            template: None,
        },
        created_ms: now_ms(),
    };
    // Admitted as a function and as one of its instances (so VM policies hold for it too).
    let instance = function_vm_spec(
        &fresh,
        format!("{}-admission", spec.name),
        spec.regions.clone(),
        None,
    );
    let admission = app::policy::admit_function(state, &spec, &instance).await?;
    // A new function counts against the tenant's quota; counted and written under its lock.
    let quota = app::quota::admit(
        state,
        &spec.tenant,
        app::quota::Adding::Function(&spec.name),
    )
    .await?;
    let (func, created) = loop {
        match repo::get_function(state, &spec.tenant, &spec.name).await? {
            None => {
                let f = fresh.clone();
                if repo::put_function(state, &f, None).await? {
                    break (f, true);
                }
            }
            // The same spec again changes nothing (unless it failed: then it is a retry).
            Some((f, _)) if f.spec == spec && f.status.phase != FunctionPhase::Failed => {
                break (f, false)
            }
            Some((mut f, rev)) => {
                // What the template was made from changed: a new template. Scaling limits,
                // regions and timeouts apply to the running instances as they are.
                let remake = (
                    &f.spec.image,
                    &f.spec.cmd,
                    f.spec.http_port,
                    f.spec.resources,
                    f.spec.runtime,
                ) != (
                    &spec.image,
                    &spec.cmd,
                    spec.http_port,
                    spec.resources,
                    spec.runtime,
                );
                f.spec = spec.clone();
                f.generation = f.generation.next();
                if remake || f.status.phase == FunctionPhase::Failed {
                    f.status = FunctionStatus {
                        phase: FunctionPhase::Deploying,
                        message: None,
                        template: None,
                    };
                }
                if repo::put_function(state, &f, Some(rev)).await? {
                    break (f, false);
                }
            }
        }
    };
    drop(quota);
    state.gateway.demand.notify_one();
    let view = view_of(state, func).await?;
    Ok(Deployed {
        view,
        created,
        warnings: admission.warnings,
    })
}

/// Removes a function: its record at once; its template and instances are stopped and
/// removed (the controller removes any VM of a function that no longer exists).
pub async fn remove(state: &AppState, tenant: &TenantId, name: &str) -> Result<(), ApiError> {
    let f = find(state, tenant, name).await?;
    repo::delete_function(state, tenant, name).await?;
    let vms = app::quota::tenant_vms(state, tenant).await?;
    state.gateway.forget(&(tenant.clone(), name.to_owned()));
    for vm in function_vms(&vms, &f.spec) {
        app::vms::remove(state, vm).await?;
    }
    state.kick.notify_waiters();
    Ok(())
}

/// The consoles of a function's template and instances.
pub async fn logs(state: &AppState, f: &Function) -> Result<FunctionLogs, ApiError> {
    let vms = app::quota::tenant_vms(state, &f.spec.tenant).await?;
    let mut items = Vec::new();
    for vm in function_vms(&vms, &f.spec) {
        let rec = repo::get_console(state, &vm.id).await?;
        items.push(FunctionLog {
            vm: vm.id.clone(),
            name: vm.spec.name.clone(),
            data: String::from_utf8_lossy(&rec.data).into_owned(),
        });
    }
    Ok(FunctionLogs { items })
}

/// Invokes function `f` with `body`, from `region` if given (nearest instances first): held
/// until an instance takes it (`Timeout` past the hold, `Unavailable` when too many wait).
pub async fn invoke(
    state: &AppState,
    f: &Function,
    body: &[u8],
    region: Option<&str>,
) -> Result<Invoked, ApiError> {
    if body.len() > MAX_INVOKE_BYTES {
        return Err(ApiError::TooLarge {
            limit: MAX_INVOKE_BYTES,
        });
    }
    if f.status.phase == FunctionPhase::Failed {
        return Err(ApiError::Conflict(format!(
            "function {} failed to deploy: {}",
            f.spec.name,
            f.status.message.as_deref().unwrap_or("unknown cause")
        )));
    }
    let key: FnKey = (f.spec.tenant.clone(), f.spec.name.clone());
    state
        .gateway
        .invoke(&key, &f.spec, body, region, state.functions.hold)
        .await
        .map_err(|e| match e {
            e @ InvokeError::Busy { .. } => ApiError::Unavailable(e.to_string()),
            e @ InvokeError::NoInstance { .. } => ApiError::Timeout(e.to_string()),
            e @ InvokeError::Relay { .. } => ApiError::Timeout(firefleet_types::error_chain(&e)),
        })
}
