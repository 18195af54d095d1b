//! The HTTP layer: routes, extractors that turn bad input into errors naming the field, the
//! mapping of [`ApiError`] to status codes, and the OpenAPI document derived from the handlers.

mod admin;
mod agent;
pub(crate) mod audit;
mod forward;
mod functions;
mod meta;
pub(crate) mod migrations;
mod openapi;
mod paging;
mod plan;
mod policy;
mod threats;
mod upload;
mod vm_ops;
mod vms;

use axum::{
    extract::{FromRequest, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use firefleet_api::{ErrorBody, ErrorDetail, MAX_BODY_BYTES};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use self::openapi::{CommonAnswers, CrossFieldRules};

use crate::{ApiError, AppState};

/// Builds the router with every route.
pub(crate) fn router(state: AppState) -> Router {
    // The calls whose state lives in the leader's memory: a follower forwards them.
    let on_leader = Router::new()
        .route("/v1/vms/{vm}/stats", get(vm_ops::stats))
        .route("/v1/functions/{name}/invoke", post(functions::invoke))
        .route("/fn/{tenant}/{name}", axum::routing::any(functions::plain))
        .route("/v1/agent/invocations", get(functions::agent_take))
        .route("/v1/agent/invocations/{id}", post(functions::agent_result))
        .route(
            "/v1/agent/vms/{vm}/snapshots/{name}/data",
            put(agent::snapshot_data_put).get(agent::snapshot_data_get),
        )
        .route("/v1/agent/vms/{vm}/stats", put(agent::report_stats))
        .route("/v1/agent/telemetry", post(threats::telemetry))
        .route(
            "/v1/agent/migrations/{vm}/snapshot",
            put(migrations::upload).get(migrations::download),
        )
        .route(
            "/v1/agent/migrations/{vm}/live",
            put(migrations::live_send).get(migrations::live_receive),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            forward::to_leader,
        ));
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/v1/cluster", get(meta::cluster))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi))
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route("/v1/vms/{vm}", get(vms::get).delete(vms::delete))
        .route("/v1/vms/{vm}/stop", post(vms::stop))
        .route("/v1/vms/{vm}/logs", get(vms::logs))
        .route("/v1/vms/{vm}/pause", post(vm_ops::pause))
        .route("/v1/vms/{vm}/resume", post(vm_ops::resume))
        .route(
            "/v1/vms/{vm}/snapshots",
            post(vm_ops::create_snapshot).get(vm_ops::list_snapshots),
        )
        .route("/v1/vms/{vm}/restore", post(vm_ops::restore))
        .route("/v1/vms/{vm}/exec", post(vm_ops::exec))
        .route("/v1/vms/{vm}/migrate", post(migrations::migrate))
        .route("/v1/vms/{vm}/migration", get(migrations::get))
        .route(
            "/v1/functions",
            post(functions::deploy).get(functions::list),
        )
        .route(
            "/v1/functions/{name}",
            get(functions::get).delete(functions::remove),
        )
        .route("/v1/functions/{name}/logs", get(functions::logs))
        .route("/v1/nodes", get(admin::list_nodes))
        .route(
            "/v1/nodes/{node}",
            get(admin::get_node).delete(admin::remove_node),
        )
        .route("/v1/nodes/{node}/cordon", post(admin::cordon))
        .route("/v1/nodes/{node}/uncordon", post(admin::uncordon))
        .route("/v1/nodes/{node}/drain", post(migrations::drain))
        .route("/v1/plan", get(plan::show))
        .route("/v1/plan/apply", post(plan::apply))
        .route(
            "/v1/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route("/v1/join-tokens", post(admin::create_join_token))
        .route("/v1/agent/enroll", post(agent::enroll))
        .route("/v1/agent/renew", post(agent::renew))
        .route("/v1/agent/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/intents", get(agent::intents))
        .route("/v1/agent/vms/{vm}/status", put(agent::report_status))
        .route("/v1/agent/vms/{vm}/console", post(agent::upload_console))
        .route(
            "/v1/agent/vms/{vm}/snapshots/{name}",
            put(agent::report_snapshot),
        )
        .route("/v1/agent/vms/{vm}/execs/{exec}", put(agent::report_exec))
        .route("/v1/policies", get(policy::list).post(policy::apply))
        .route(
            "/v1/policies/{*name}",
            get(policy::get).delete(policy::remove),
        )
        .route("/v1/tenants", get(policy::tenants))
        .route("/v1/tenants/{id}", put(policy::put_tenant))
        .route("/v1/compliance", get(policy::records))
        .route("/v1/compliance/report", get(policy::report))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/threats", get(threats::list))
        .route("/v1/threats/{id}", get(threats::get))
        .route("/v1/threats/{id}/ack", post(threats::ack))
        .route("/v1/quarantine/images", get(threats::quarantined))
        .route(
            "/v1/quarantine/images/{image}",
            axum::routing::delete(threats::release),
        )
        .route("/v1/agent/migrations/{vm}/report", post(migrations::report))
        .merge(on_leader)
        .fallback(|| async {
            ApiError::NotFound {
                kind: "route",
                name: "this path".to_owned(),
            }
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            audit::record_calls,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate_and_limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_small_bodies,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    state
        .metrics
        .request(&method, route.as_deref(), resp.status().as_u16());
    resp
}

/// Middleware: a refusal never leaves the client's body half-sent. Over HTTP/2, answering
/// before the body was read made the server reset the stream, and curl reported a framing
/// error instead of the 401; over HTTP/1.1 the connection had to be closed. So a small body (a
/// `Content-Length` of at most [`MAX_BODY_BYTES`]) is read before anything answers, within the
/// header timeout (else 408: this also bounds how slowly a small body may come), and a larger
/// one that the handler drops unread is drained in the background, up to [`DRAIN_LIMIT`]
/// bytes within the header timeout.
async fn read_small_bodies(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let small = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= MAX_BODY_BYTES);
    let limit = state.limits.header_timeout;
    if !small {
        let (parts, body) = req.into_parts();
        let body = axum::body::Body::new(DrainOnDrop {
            inner: Some(body),
            limit,
        });
        return next.run(Request::from_parts(parts, body)).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => ApiError::BadRequest {
            message: "the request body could not be read (shorter or longer than its \
                      Content-Length?)"
                .to_owned(),
            field: None,
        }
        .into_response(),
        Err(_) => ApiError::SlowRequest(format!(
            "the request body did not arrive within {} s",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// The most bytes of an unread request body drained after its answer.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// A request body that, dropped before its end, hands the rest to a task that reads it (to
/// [`DRAIN_LIMIT`] bytes, within `limit`) so that the stream ends cleanly.
struct DrainOnDrop {
    inner: Option<axum::body::Body>,
    limit: std::time::Duration,
}

impl axum::body::HttpBody for DrainOnDrop {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(axum::body::HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map(axum::body::HttpBody::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if axum::body::HttpBody::is_end_stream(&body) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let limit = self.limit;
            rt.spawn(async move {
                let _ = tokio::time::timeout(limit, axum::body::to_bytes(body, DRAIN_LIMIT)).await;
            });
        }
    }
}

/// Middleware: resolves the bearer token once ([`crate::auth::Authn`] in the request's
/// extensions) and takes the request from its caller's rate bucket: the token's, or for
/// anonymous callers and bad tokens the client address's. Agents (a verified node certificate
/// and no token) are not rate-limited: their calls are paced by the agent itself.
async fn authenticate_and_limit(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let authn = match crate::auth::authenticate(&state, req.headers()).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    // Agents are not rate-limited by address (their node's calls are bounded by the agent), nor
    // are calls another replica forwards (it counted them already).
    let node = req
        .extensions()
        .get::<crate::auth::PeerIdentity>()
        .is_some_and(|p| p.0.is_some());
    let replica = req
        .extensions()
        .get::<crate::auth::ReplicaPeer>()
        .is_some_and(|r| r.0);
    let bucket = match &authn {
        _ if replica => None,
        crate::auth::Authn::Valid(c) => Some(format!("token:{}", c.token_id)),
        crate::auth::Authn::Anonymous if node => None,
        _ => req
            .extensions()
            .get::<crate::tls::ClientAddr>()
            .map(|a| format!("ip:{}", a.0)),
    };
    if let Some(bucket) = bucket {
        if let Err(retry_after_secs) = state.rate.take(&bucket, std::time::Instant::now()) {
            return ApiError::RateLimited { retry_after_secs }.into_response();
        }
    }
    req.extensions_mut().insert(authn);
    next.run(req).await
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Validation(_) | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::SlowRequest(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::PolicyDenied(_) | ApiError::QuotaExceeded(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::NotLeader(_) => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_retryable_store() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status.is_server_error()
            && status != StatusCode::GATEWAY_TIMEOUT
            && status != StatusCode::SERVICE_UNAVAILABLE
        {
            tracing::error!(error = %firefleet_types::error_chain(&self), "request failed");
            "internal error (see the server log)".to_owned()
        } else if let ApiError::Store(e) = &self {
            format!("{e}; retry (on another replica)")
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
                field: self.field().map(str::to_owned),
                reasons: match &self {
                    ApiError::PolicyDenied(reasons) => reasons.clone(),
                    _ => Vec::new(),
                },
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::RateLimited { retry_after_secs } = self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs),
            );
        }
        resp
    }
}

/// One `warning` header per admission warning (`299 - "<text>"`, quotes and backslashes
/// escaped, non-ASCII replaced).
pub(crate) fn warning_headers(warnings: &[String]) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let value = format!(
            "299 - \"{}\"",
            text.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            headers.append(firefleet_api::WARNING_HEADER, v);
        }
    }
    headers
}

/// A JSON body, size-limited, deserialised with the path of the failing field in the error.
pub struct ValidJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
        match ct.as_deref() {
            Some(ct) if is_json(ct) => {}
            Some(ct) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "content-type must be application/json, got {ct:?}"
                )))
            }
            None => {
                return Err(ApiError::UnsupportedMediaType(
                    "content-type must be application/json (the header is missing)".to_owned(),
                ))
            }
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            })?;
        // Every request body of this API is an object; serde would take an array for a struct.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest {
                message: "the body must be a JSON object".to_owned(),
                field: None,
            });
        }
        parse_json(&bytes).map(ValidJson)
    }
}

/// `application/json`, with parameters (`; charset=utf-8`) or not, in any case.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses JSON, naming the failing field. A number with a zero fraction (`2.0`) is taken as the
/// integer it is, as JSON Schema (and so the OpenAPI document) counts it an integer.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let mut value: serde_json::Value =
        serde_path_to_error::deserialize(de).map_err(|e| ApiError::BadRequest {
            message: format!("invalid JSON body: {}", e.into_inner()),
            field: None,
        })?;
    integral_floats_as_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != ".").then(|| path.clone());
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => format!("invalid JSON body: {inner}"),
        };
        ApiError::BadRequest { message, field }
    })
}

/// Rewrites every number with a zero fraction that fits an integer (`2.0`, `-3.0`) as that
/// integer.
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                // Exact: |f| < 2^63 fits i64 and 2^63 <= f < 2^64 fits u64.
                if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                    *v = Value::from(f as i64);
                } else if (0.0..1.844_674_407_370_955_2e19).contains(&f) {
                    *v = Value::from(f as u64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Query parameters, with errors as [`ApiError`].
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded_query(q).map(ValidQuery)
    }
}

fn serde_urlencoded_query<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{q}").parse().map_err(|_| {
        ApiError::BadRequest {
            message: "invalid query string".to_owned(),
            field: None,
        }
    })?)
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| ApiError::BadRequest {
        message: format!("invalid query: {}", e.body_text()),
        field: None,
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "FireFleet API", description = "Control plane for microVMs."),
    paths(
        meta::healthz,
        meta::cluster,
        meta::metrics,
        vms::create,
        vms::list,
        vms::get,
        vms::stop,
        vms::delete,
        vms::logs,
        vm_ops::pause,
        vm_ops::resume,
        vm_ops::create_snapshot,
        vm_ops::list_snapshots,
        vm_ops::restore,
        vm_ops::exec,
        vm_ops::stats,
        migrations::migrate,
        migrations::drain,
        plan::show,
        plan::apply,
        migrations::get,
        migrations::upload,
        migrations::download,
        migrations::report,
        migrations::live_send,
        migrations::live_receive,
        functions::deploy,
        functions::list,
        functions::get,
        functions::remove,
        functions::logs,
        functions::invoke,
        functions::agent_take,
        functions::agent_result,
        admin::list_nodes,
        admin::get_node,
        admin::remove_node,
        admin::cordon,
        admin::uncordon,
        admin::create_token,
        admin::list_tokens,
        admin::revoke_token,
        admin::create_join_token,
        agent::enroll,
        agent::renew,
        agent::heartbeat,
        agent::intents,
        agent::report_status,
        agent::upload_console,
        agent::report_snapshot,
        agent::snapshot_data_put,
        agent::snapshot_data_get,
        agent::report_exec,
        agent::report_stats,
        policy::list,
        policy::apply,
        policy::get,
        policy::remove,
        policy::tenants,
        policy::put_tenant,
        policy::records,
        policy::report,
        threats::telemetry,
        threats::list,
        threats::get,
        threats::ack,
        threats::quarantined,
        threats::release,
        audit::list,
        audit::verify,
    ),
    modifiers(&SecuritySchemes, &CommonAnswers, &CrossFieldRules)
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "mtls",
            SecurityScheme::MutualTls {
                description: Some("agent client certificate".to_owned()),
                extensions: None,
            },
        );
    }
}

/// The OpenAPI document, as pretty JSON (what `/openapi.json` serves and `openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
