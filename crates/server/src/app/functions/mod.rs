//! Functions: the invocation gateway ([`gateway`], with the agents' [`relay`]), and what the
//! HTTP handlers and the functions controller both need to know of a function's VMs.

pub(crate) mod gateway;
pub(crate) mod relay;

use firefleet_types::{
    function::{FunctionInstance, TemplateRef},
    DesiredState, Function, FunctionSpec, NodeId, Vm, VmSpec,
};

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
