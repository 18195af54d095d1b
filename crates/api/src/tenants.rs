//! Tenants (`/v1/tenants`): the attributes policies see, quotas and usage.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tenant's attributes the policies see as `input.tenant` (`PUT /v1/tenants/{id}`, admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tenant.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub id: String,
    /// Its class (`standard` when never set; e.g. `restricted`, `gpu`).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub class: String,
    /// Data residency: the regions its VMs' data must stay in (empty: anywhere).
    #[serde(default)]
    #[schema(value_type = Vec<firefleet_types::schema::NameRequest>)]
    pub regions: Vec<String>,
    /// What it may hold; absent: the server's default quota (`admin` is never limited).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "quota_object"
    )]
    pub quota: Option<TenantQuota>,
}

/// A tenant's quota: each limit absent is unlimited. VMs, vCPUs and memory count the tenant's
/// own VMs (not its functions' template and instances, which each function's `max` bounds);
/// snapshots count those of its own VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<u64>,
    /// vCPUs of its VMs, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    /// Memory of its VMs together, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<u64>,
    /// Snapshots of its VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
}

/// A quota as a JSON object (or null): serde would also take a struct from an array.
fn quota_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TenantQuota>, D::Error> {
    use serde::de::Error as _;
    Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)?
        .map(|m| TenantQuota::deserialize(serde_json::Value::Object(m)).map_err(D::Error::custom))
        .transpose()
}

impl TenantQuota {
    /// The largest limit accepted (what the document's 64-bit integers can hold).
    pub const MAX: u64 = i64::MAX as u64;

    /// Refuses a limit above [`TenantQuota::MAX`], naming it.
    pub fn validate(&self) -> Result<(), firefleet_types::ValidationError> {
        for (field, v) in [
            ("quota.vms", self.vms),
            ("quota.vcpus", self.vcpus),
            ("quota.memory_mib", self.memory_mib),
            ("quota.functions", self.functions),
            ("quota.snapshots", self.snapshots),
        ] {
            if v.is_some_and(|v| v > Self::MAX) {
                return Err(firefleet_types::ValidationError::new(
                    field,
                    format!("at most {}", Self::MAX),
                ));
            }
        }
        Ok(())
    }
}

/// What a tenant holds, counted as its quota counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    /// VMs.
    pub vms: u64,
    /// vCPUs.
    pub vcpus: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Functions.
    pub functions: u64,
    /// Snapshots.
    pub snapshots: u64,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    /// The tenants with attributes set, by id.
    pub tenants: Vec<TenantRecord>,
    /// The quota of tenants whose record has none.
    #[serde(default)]
    pub default_quota: TenantQuota,
    /// What each listed tenant holds, by id.
    #[serde(default)]
    pub usage: std::collections::BTreeMap<String, QuotaUsage>,
}
