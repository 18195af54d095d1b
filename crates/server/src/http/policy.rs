//! `/v1/policies`, `/v1/tenants`, `/v1/compliance`: the policy set (admins change it, anyone
//! may read it), tenants' attributes, and the compliance records and report.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use firefleet_api::{
    ApplyPolicyRequest, ComplianceList, ComplianceReport, ErrorBody, PolicyList, PolicyRecord,
    TenantList, TenantRecord,
};
use serde::Deserialize;

use super::{ValidJson, ValidQuery};
use crate::{
    app::{self, compliance, policy},
    auth::Caller,
    ApiError, AppState,
};

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
    Ok(Json(app::quota::tenants(&state).await?))
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

/// List compliance records (of VMs; an admin also sees nodes').
#[utoipa::path(get, path = "/v1/compliance", security(("bearer" = [])),
    responses((status = 200, body = ComplianceList), (status = 401, body = ErrorBody)))]
pub async fn records(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ComplianceList>, ApiError> {
    let admin = caller.role == firefleet_api::Role::Admin;
    let tenant = (!admin).then(|| caller.tenant.to_string());
    Ok(Json(
        compliance::list(&state, admin, tenant.as_deref()).await?,
    ))
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
    Ok(Json(compliance::report(&state, admin, tenant).await?))
}
