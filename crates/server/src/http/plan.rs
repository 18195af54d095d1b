//! `firefleet plan`: what the migration planner would move, and why (dry run), and carrying it
//! out (the planning is [`crate::app::plan`]'s).

use axum::{extract::State, Json};
use firefleet_api::{ErrorBody, PlanQuery, PlanResponse};

use super::ValidQuery;
use crate::{app::plan, auth::Admin, ApiError, AppState};

/// The migrations the planner would make now, and why (admin; changes nothing).
#[utoipa::path(get, path = "/v1/plan", security(("bearer" = [])), params(PlanQuery),
    responses((status = 200, body = PlanResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<PlanQuery>,
) -> Result<Json<PlanResponse>, ApiError> {
    Ok(Json(plan::show(&state, &q).await?))
}

/// Plan, and start the planned migrations (admin).
#[utoipa::path(post, path = "/v1/plan/apply", security(("bearer" = [])), params(PlanQuery),
    responses((status = 200, body = PlanResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<PlanQuery>,
) -> Result<Json<PlanResponse>, ApiError> {
    Ok(Json(plan::apply(&state, &q).await?))
}
