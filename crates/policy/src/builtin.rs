//! The built-in bundle (`policies/` at the repository root), compiled in.

use crate::PolicyDoc;

/// `(name, source)` of each built-in policy, sorted by name.
const BUNDLE: &[(&str, &str)] = &[
    (
        "admission/data_residency",
        include_str!("../../../policies/admission/data_residency.rego"),
    ),
    (
        "admission/egress_limited",
        include_str!("../../../policies/admission/egress_limited.rego"),
    ),
    (
        "admission/gpu_tenants",
        include_str!("../../../policies/admission/gpu_tenants.rego"),
    ),
    (
        "admission/image_pinned",
        include_str!("../../../policies/admission/image_pinned.rego"),
    ),
    (
        "admission/resource_limits",
        include_str!("../../../policies/admission/resource_limits.rego"),
    ),
    (
        "admission/tenant_isolation",
        include_str!("../../../policies/admission/tenant_isolation.rego"),
    ),
    (
        "host/cpu_side_channels",
        include_str!("../../../policies/host/cpu_side_channels.rego"),
    ),
    (
        "host/memory_side_channels",
        include_str!("../../../policies/host/memory_side_channels.rego"),
    ),
    (
        "host/metadata_egress",
        include_str!("../../../policies/host/metadata_egress.rego"),
    ),
    (
        "host/vmm_isolation",
        include_str!("../../../policies/host/vmm_isolation.rego"),
    ),
];

/// The built-in bundle, each policy in its own `enforcement` mode (none given).
#[must_use]
pub fn builtin() -> Vec<PolicyDoc> {
    BUNDLE
        .iter()
        .map(|(name, source)| PolicyDoc {
            name: (*name).to_string(),
            source: (*source).to_string(),
            mode: None,
        })
        .collect()
}
