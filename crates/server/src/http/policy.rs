//! `/v1/policies`, `/v1/tenants`, `/v1/compliance`: the policy set (admins change it, anyone
//! may read it), tenants' attributes, and the compliance records and report.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    ApplyPolicyRequest, ComplianceList, ComplianceRecord, ComplianceReport, ControlSummary,
    ErrorBody, PolicyList, PolicyRecord, TenantList, TenantRecord,
};
use serde::Deserialize;

use super::{ValidJson, ValidQuery};
use crate::{app::policy, auth::Caller, now_ms, ApiError, AppState};

/// List the policies in force and the set's version.
#[utoipa::path(get, path = "/v1/policies", security(("bearer" = [])),
    responses((status = 200, body = PolicyList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<PolicyList>, ApiError> {
    let (version, policies) = policy::list(&state).await?;
    Ok(Json(PolicyList { version, policies }))
}

/// Add or replace a policy (admin): checked alone and with the whole set (a Rego error names
/// its line and column), stored with a new set version; what already runs is re-evaluated.
#[utoipa::path(post, path = "/v1/policies", request_body = ApplyPolicyRequest, security(("bearer" = [])),
    responses((status = 201, body = PolicyRecord), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<ApplyPolicyRequest>,
) -> Result<(StatusCode, Json<PolicyRecord>), ApiError> {
    caller.require_admin()?;
    let record = policy::apply(&state, &req).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn find(state: &AppState, name: &str) -> Result<PolicyRecord, ApiError> {
    policy::list(state)
        .await?
        .1
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::not_found("policy", name))
}

/// Get a policy by name (names may hold slashes: `admission/resource_limits`).
#[utoipa::path(get, path = "/v1/policies/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "policy name", pattern = "^[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,127}$")),
    responses((status = 200, body = PolicyRecord), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PolicyRecord>, ApiError> {
    Ok(Json(find(&state, &name).await?))
}

/// Remove a policy (admin; a new set version).
#[utoipa::path(delete, path = "/v1/policies/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "policy name", pattern = "^[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,127}$")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    policy::remove(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List tenants' attributes (admin), the default quota, and what each listed tenant holds.
#[utoipa::path(get, path = "/v1/tenants", security(("bearer" = [])),
    responses((status = 200, body = TenantList), (status = 403, body = ErrorBody)))]
pub async fn tenants(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TenantList>, ApiError> {
    caller.require_admin()?;
    let tenants = policy::tenants(&state).await?;
    let mut usage = BTreeMap::new();
    for t in &tenants {
        let id: firefleet_types::TenantId = t.id.parse().map_err(ApiError::Validation)?;
        usage.insert(t.id.clone(), crate::app::quota::usage(&state, &id).await?);
    }
    Ok(Json(TenantList {
        tenants,
        default_quota: state.default_quota,
        usage,
    }))
}

/// Set a tenant's attributes (admin): what the policies see as `input.tenant`, and its quota
/// (lowering it below what the tenant holds refuses only new creates).
#[utoipa::path(put, path = "/v1/tenants/{id}", request_body = TenantRecord, security(("bearer" = [])),
    params(("id" = String, Path, description = "tenant (the body's id must be the same)", pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)),
    responses((status = 200, body = TenantRecord), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_tenant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ValidJson(t): ValidJson<TenantRecord>,
) -> Result<Json<TenantRecord>, ApiError> {
    caller.require_admin()?;
    if let Some(q) = &t.quota {
        q.validate()?;
    }
    if t.id != id {
        return Err(ApiError::BadRequest {
            message: format!("the body's id {:?} is not the path's {id:?}", t.id),
            field: Some("id".to_owned()),
        });
    }
    policy::put_tenant(&state, &t).await?;
    Ok(Json(t))
}

/// The records the caller may see: a tenant its VMs'; an admin every VM's and node's.
async fn visible(
    state: &AppState,
    caller: &Caller,
    tenant: Option<&str>,
) -> Result<Vec<ComplianceRecord>, ApiError> {
    let admin = caller.role == firefleet_api::Role::Admin;
    let tenant = if admin {
        tenant.map(str::to_owned)
    } else {
        Some(caller.tenant.to_string())
    };
    let mut out: Vec<ComplianceRecord> = policy::records(state, policy::VM_RECORDS)
        .await?
        .into_iter()
        .map(|r| r.record)
        .filter(|r| tenant.is_none() || r.tenant == tenant)
        .collect();
    if admin {
        out.extend(
            policy::records(state, policy::NODE_RECORDS)
                .await?
                .into_iter()
                .map(|r| r.record),
        );
    }
    Ok(out)
}

/// List compliance records (of VMs; an admin also sees nodes').
#[utoipa::path(get, path = "/v1/compliance", security(("bearer" = [])),
    responses((status = 200, body = ComplianceList), (status = 401, body = ErrorBody)))]
pub async fn records(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ComplianceList>, ApiError> {
    let policy_version = policy::version(&state).await?;
    Ok(Json(ComplianceList {
        policy_version,
        records: visible(&state, &caller, None).await?,
    }))
}

/// Query of the compliance report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Only this tenant's VMs (and no nodes).
    pub tenant: Option<String>,
}

/// The compliance report: pass/fail per control over every subject, with each subject's
/// controls and their evidence.
#[utoipa::path(get, path = "/v1/compliance/report", security(("bearer" = [])), params(ReportQuery),
    responses((status = 200, body = ComplianceReport), (status = 401, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ReportQuery>,
) -> Result<Json<ComplianceReport>, ApiError> {
    let admin = caller.role == firefleet_api::Role::Admin;
    // The report is labelled with the tenant whose records it holds: a tenant's own, always.
    let tenant = match q.tenant {
        Some(t) if !admin && t != caller.tenant.as_str() => {
            return Err(ApiError::Forbidden(format!(
                "a tenant token reads only its own tenant's report, not {t:?}"
            )))
        }
        Some(t) => Some(t),
        None => (!admin).then(|| caller.tenant.to_string()),
    };
    let policy_version = policy::version(&state).await?;
    let mut records = visible(&state, &caller, tenant.as_deref()).await?;
    if tenant.is_some() {
        records.retain(|r| r.kind == "vm");
    }
    records.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(Json(ComplianceReport {
        generated_ms: now_ms(),
        policy_version,
        tenant,
        controls: summarise(&records),
        records,
    }))
}

/// Passes and failures per control: the records' controls, and for a policy without controls
/// one control named after it (failed by its violations).
pub fn summarise(records: &[ComplianceRecord]) -> Vec<ControlSummary> {
    let mut by: BTreeMap<(String, String), ControlSummary> = BTreeMap::new();
    for r in records {
        for c in &r.controls {
            let s = by
                .entry((c.policy.clone(), c.id.clone()))
                .or_insert_with(|| ControlSummary {
                    policy: c.policy.clone(),
                    id: c.id.clone(),
                    name: c.name.clone(),
                    passed: 0,
                    failed: 0,
                });
            if c.passed {
                s.passed += 1;
            } else {
                s.failed += 1;
            }
        }
    }
    by.into_values().collect()
}
